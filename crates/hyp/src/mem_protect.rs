//! Memory ownership: the host and hypervisor components, their page states, and the
//! transitions between them (share, unshare, donate, pin), plus the host stage-2 fault path.
//!
//! # The transition framework
//!
//! Every transition runs in two phases under the components' locks, always taken in the order
//! host → hyp (→ guest):
//!
//! 1. **check**: validate the arguments from the address and the memory map (never from page
//!    table contents), then read the state of *both* sides of every page of the range from the
//!    vmemmap, and reserve the page-table memory the commit will need. Nothing is written.
//!    The first wrong page decides the error (`EPERM` beats `EBUSY`), and the call returns with
//!    nothing changed.
//! 2. **commit**: update the vmemmap states and counts and the page tables. The commit cannot
//!    fail: every way it could (no table memory, a mapping already present) was ruled out by the
//!    check. If it does fail anyway, that is an internal invariant broken: it is logged and the
//!    call returns `EFAULT`.
//!
//! Page states live in the vmemmap, so sharing never touches the host stage-2 (no block is ever
//! split to share). Only pages that leave the host (donation) are written into the host stage-2,
//! as invalid entries annotated with their owner: that is what keeps the lazy fault path from
//! mapping them, and from mapping any block that would cover them.

use core::sync::atomic::{AtomicU64, Ordering};

use pkvm_abi::{Error, PAGE_SHIFT, PAGE_SIZE};
pub use pkvm_arch::esr::FaultClass;
use pkvm_pgtable::{MapFlags, PageTable, Prot};
use spin::Mutex;

use crate::devices::{DeviceRange, MAX_DEVICE_RANGES};
use crate::memory::MemoryMap;
use crate::mm::{Arch, pt_err};
use crate::page_alloc::HypPool;
use crate::platform::{PhysMem, Platform};
use crate::vmemmap::{HypPage, HypUse, PageState, Vmemmap};

/// Owner id written into host stage-2 annotations for pages the hypervisor owns (memory, and
/// device ranges hidden from the host).
pub const HYP_OWNER_ID: u8 = 1;
/// Owner id of host stage-2 annotations over device registers EL2 traps and emulates for the
/// host ([`crate::devices::DeviceKind::GicrRdBase`]).
pub const EMULATED_MMIO_OWNER_ID: u8 = 2;

/// Largest share count, and largest count of EL2's own pins; one more is refused with `EBUSY`.
pub const MAX_COUNT: u16 = u16::MAX;
/// Largest count of host (debug) pins of a page; one more is refused with `EBUSY`.
pub const MAX_HOST_PINS: u8 = u8::MAX;

/// Prot of the host's default identity mapping of RAM.
pub const HOST_MEM_PROT: Prot = Prot::R.union(Prot::W).union(Prot::X);
/// Prot of the host's default identity mapping of MMIO.
pub const HOST_MMIO_PROT: Prot = Prot::R.union(Prot::W).union(Prot::DEVICE);
/// Prot of EL2's mappings of host memory shared with or donated to it.
pub const HYP_SHARED_PROT: Prot = Prot::R.union(Prot::W);

/// The host's stage-2 and the pool its tables come from. Guarded by the host lock.
#[derive(Debug)]
pub struct HostMmu<'a, M: PhysMem> {
    pub(crate) pgt: PageTable,
    pub(crate) pool: HypPool<'a, M>,
}

/// The hypervisor's stage-1 and its page pool. Guarded by the hyp lock; the pool is only ever
/// used with that lock held, which is what makes "reserve, then commit" race-free.
#[derive(Debug)]
pub struct HypMmu<'a, M: PhysMem> {
    pub(crate) pgt: PageTable,
    pub(crate) pool: HypPool<'a, M>,
}

/// What the host stage-2 fault handler decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostFault {
    /// The address is now mapped (or already was: a benign race); retry the access.
    Mapped,
    /// The host may not access this address: inject a synchronous external abort.
    InjectAbort,
    /// A device register EL2 emulates: decode the access and call
    /// [`Hyp::host_mmio_access`].
    Emulate,
}

/// Counters kept by EL2.
#[derive(Debug, Default)]
pub struct Counters {
    /// Host stage-2 faults handled.
    pub host_faults: AtomicU64,
    /// Aborts injected into the host.
    pub injected_aborts: AtomicU64,
    /// UNDEFs injected into the host (trapped instructions EL2 does not emulate).
    pub injected_undefs: AtomicU64,
    /// Host accesses to device registers EL2 emulated.
    pub emulated_mmio: AtomicU64,
    /// Host writes to device registers EL2 refused (a table base outside the host's RAM).
    pub refused_device_writes: AtomicU64,
}

/// The portable hypervisor: memory map, vmemmap, components and their locks.
pub struct Hyp<'a, P: Platform> {
    pub(crate) plat: &'a P,
    pub(crate) map: &'a MemoryMap,
    pub(crate) vmemmap: Vmemmap<'a>,
    /// Memory EL2 owns from boot (its image, its carve-out): never given to anyone.
    pub(crate) hyp_ranges: [(u64, u64); 4],
    pub(crate) nr_hyp_ranges: usize,
    /// Device ranges EL2 keeps from the host (hidden or emulated).
    pub(crate) devices: [DeviceRange; MAX_DEVICE_RANGES],
    pub(crate) nr_devices: usize,
    /// Host physical address space size in bits.
    pub(crate) pa_bits: u32,
    pub(crate) host: Mutex<HostMmu<'a, P>>,
    pub(crate) hyp: Mutex<HypMmu<'a, P>>,
    pub(crate) finalised: core::sync::atomic::AtomicBool,
    pub(crate) counters: Counters,
    /// The VMs. Lock order: host → hyp → vms.
    pub(crate) vms: Mutex<crate::vm::VmTable<'a, P>>,
}

impl<P: Platform> core::fmt::Debug for Hyp<'_, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Hyp")
            .field("pa_bits", &self.pa_bits)
            .finish_non_exhaustive()
    }
}

/// Upper bound on the table pages a page-granular change of `[start, end)` can allocate in a
/// 4-level table: one per 2 MiB, 1 GiB and 512 GiB window touched (levels 3, 2 and 1).
pub(crate) fn table_pages_bound(start: u64, end: u64) -> u64 {
    let last = end - 1;
    ((last >> 21) - (start >> 21) + 1)
        + ((last >> 30) - (start >> 30) + 1)
        + ((last >> 39) - (start >> 39) + 1)
}

impl<'a, P: Platform> Hyp<'a, P> {
    /// The platform.
    pub fn platform(&self) -> &'a P {
        self.plat
    }

    /// The memory map.
    pub fn memory_map(&self) -> &'a MemoryMap {
        self.map
    }

    /// The vmemmap.
    pub fn vmemmap(&self) -> &Vmemmap<'a> {
        &self.vmemmap
    }

    /// Size of the host's physical address space, in bits.
    pub fn pa_bits(&self) -> u32 {
        self.pa_bits
    }

    /// Memory EL2 owns from boot, as `[start, end)` ranges.
    pub fn hyp_ranges(&self) -> &[(u64, u64)] {
        &self.hyp_ranges[..self.nr_hyp_ranges]
    }

    /// Whether `pa` lies in memory EL2 owns from boot.
    pub fn is_hyp_memory(&self, pa: u64) -> bool {
        self.hyp_ranges().iter().any(|&(s, e)| pa >= s && pa < e)
    }

    /// Counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Validates a host page range: `EINVAL` for zero pages, `pfn + nr` overflow, or a range
    /// not inside one memory region (MMIO, holes, straddling); `ERANGE` beyond the host's
    /// address space. Returns the vmemmap entries of the range.
    #[inline]
    pub(crate) fn host_range(&self, pfn: u64, nr: u64) -> Result<&'a [HypPage], Error> {
        if nr == 0 {
            return Err(Error::Inval);
        }
        let end_pfn = pfn.checked_add(nr).ok_or(Error::Inval)?;
        if end_pfn > 1u64 << (self.pa_bits - PAGE_SHIFT) {
            return Err(Error::Range);
        }
        // In range of the address space, so the shifts below cannot overflow.
        if !self
            .map
            .range_is_memory(pfn << PAGE_SHIFT, end_pfn << PAGE_SHIFT)
        {
            return Err(Error::Inval);
        }
        self.vmemmap
            .slice_checked_range(pfn, nr)
            .ok_or(Error::Fault)
    }

    pub(crate) fn commit_failed(&self, what: &str, e: impl core::fmt::Debug) -> Error {
        self.plat.log(format_args!(
            "pkvm: commit phase of {what} failed: {e:?} (internal bug)"
        ));
        Error::Fault
    }

    /// Maps `[pa, pa + size)` into EL2's stage-1 at VA == PA. Hyp lock held, memory reserved.
    pub(crate) fn hyp_map(&self, hyp: &mut HypMmu<'a, P>, pa: u64, size: u64) -> Result<(), Error> {
        let mm = &mut hyp.pool;
        hyp.pgt
            .map(
                mm,
                &mut Arch(self.plat),
                pa,
                size,
                pa,
                HYP_SHARED_PROT,
                MapFlags::FORCE_PAGES,
            )
            .map_err(pt_err)
    }

    /// Unmaps `[pa, pa + size)` from EL2's stage-1; all of it must have been mapped.
    pub(crate) fn hyp_unmap(
        &self,
        hyp: &mut HypMmu<'a, P>,
        pa: u64,
        size: u64,
    ) -> Result<(), Error> {
        let mm = &mut hyp.pool;
        let done = hyp
            .pgt
            .unmap(mm, &mut Arch(self.plat), pa, size)
            .map_err(pt_err)?;
        if done == size {
            Ok(())
        } else {
            Err(Error::Fault)
        }
    }

    /// `host_share_hyp(pfn, nr_pages)`: shares host pages with EL2.
    ///
    /// A page owned by the host alone goes to (SHARED_OWNED, SHARED_BORROWED) with share count 1
    /// and is mapped read/write at EL2; a page already shared with EL2 gets share count + 1.
    ///
    /// # Errors
    /// `EINVAL`/`ERANGE` for a bad range; `EPERM` if any page is in another state; `EBUSY` if a
    /// share count would overflow; `ENOMEM` if EL2 has no table memory for the new mappings.
    pub fn host_share_hyp(&self, pfn: u64, nr: u64) -> Result<(), Error> {
        let pages = self.host_range(pfn, nr)?;
        let _host = self.host.lock();
        let mut hyp = self.hyp.lock();

        let mut fresh = false;
        let mut saturated = false;
        for p in pages {
            match (p.host_state(), p.hyp_state(), p.share_count()) {
                (PageState::Owned, PageState::NoPage, 0) => fresh = true,
                (PageState::SharedOwned, PageState::SharedBorrowed, n) if n > 0 => {
                    saturated |= n == MAX_COUNT
                }
                _ => return Err(Error::Perm),
            }
        }
        if saturated {
            return Err(Error::Busy);
        }
        let (start, end) = (pfn << PAGE_SHIFT, (pfn + nr) << PAGE_SHIFT);
        if fresh && hyp.pool.free_pages() < table_pages_bound(start, end) {
            return Err(Error::NoMem);
        }

        // Commit, in one pass: bump the counts, and map each run of pages shared afresh.
        let mut res = Ok(());
        let mut run: Option<usize> = None;
        let mut map_run = |first: usize, end: usize, hyp: &mut HypMmu<'a, P>| {
            let pa = start + first as u64 * PAGE_SIZE;
            if let Err(e) = self.hyp_map(hyp, pa, (end - first) as u64 * PAGE_SIZE) {
                res = Err(e);
            }
        };
        for (i, p) in pages.iter().enumerate() {
            let n = p.share_count();
            p.set_share_count(n + 1);
            if n == 0 {
                p.set_host_state(PageState::SharedOwned);
                p.set_hyp_state(PageState::SharedBorrowed);
                run.get_or_insert(i);
            } else if let Some(first) = run.take() {
                map_run(first, i, &mut hyp);
            }
        }
        if let Some(first) = run {
            map_run(first, pages.len(), &mut hyp);
        }
        res.map_err(|e| self.commit_failed("share", e))
    }

    /// `host_unshare_hyp(pfn, nr_pages)`: drops one EL2 share of each page; a page whose count
    /// reaches zero goes back to (OWNED, NOPAGE) and is unmapped from EL2 (with TLB
    /// invalidation) before the call returns.
    ///
    /// # Errors
    /// `EINVAL`/`ERANGE` for a bad range; `EPERM` if any page is not shared with EL2 (both
    /// sides are checked); `EBUSY` if any page is pinned.
    pub fn host_unshare_hyp(&self, pfn: u64, nr: u64) -> Result<(), Error> {
        let pages = self.host_range(pfn, nr)?;
        let _host = self.host.lock();
        let mut hyp = self.hyp.lock();

        let mut pinned = false;
        for p in pages {
            if !Self::is_shared_with_hyp(p) {
                return Err(Error::Perm);
            }
            pinned |= Self::is_pinned(p);
        }
        if pinned {
            return Err(Error::Busy);
        }

        // One pass: drop the counts, and unmap each run of pages whose count reached zero.
        let start = pfn << PAGE_SHIFT;
        let mut res = Ok(());
        let mut run: Option<usize> = None;
        let mut unmap_run = |first: usize, end: usize, hyp: &mut HypMmu<'a, P>| {
            let pa = start + first as u64 * PAGE_SIZE;
            if let Err(e) = self.hyp_unmap(hyp, pa, (end - first) as u64 * PAGE_SIZE) {
                res = Err(e);
            }
        };
        for (i, p) in pages.iter().enumerate() {
            let n = p.share_count() - 1;
            p.set_share_count(n);
            if n == 0 {
                p.set_host_state(PageState::Owned);
                p.set_hyp_state(PageState::NoPage);
                run.get_or_insert(i);
            } else if let Some(first) = run.take() {
                unmap_run(first, i, &mut hyp);
            }
        }
        if let Some(first) = run {
            unmap_run(first, pages.len(), &mut hyp);
        }
        res.map_err(|e| self.commit_failed("unshare", e))
    }

    pub(crate) fn is_shared_with_hyp(p: &HypPage) -> bool {
        p.host_state() == PageState::SharedOwned
            && p.hyp_state() == PageState::SharedBorrowed
            && p.share_count() > 0
    }

    /// Whether anyone — EL2 for a structure it uses, or the host through the debug pin call —
    /// pins the page (then it cannot be unshared).
    pub(crate) fn is_pinned(p: &HypPage) -> bool {
        p.refcount() != 0 || p.host_pins() != 0
    }

    /// Whether the page is the host's alone: (OWNED, NOPAGE), shared with nobody, pinned by
    /// nobody. The precondition of every transition that takes a page away from the host.
    pub(crate) fn is_host_exclusive(p: &HypPage) -> bool {
        p.host_state() == PageState::Owned
            && p.hyp_state() == PageState::NoPage
            && p.share_count() == 0
            && !Self::is_pinned(p)
    }

    /// Host → hyp donation of `[pfn, pfn + nr)` for `usage`, with both locks held: check that
    /// every page is the host's alone and that both sides have table memory, then annotate the
    /// host stage-2 with EL2's owner id, map the pages at EL2 and record what they are for.
    ///
    /// The one donation block: `host_donate_hyp` ([`HypUse::Idle`]) and VM creation
    /// ([`HypUse::Vm`], the memcache) both go through it.
    ///
    /// # Errors
    /// Range errors; `EPERM` unless every page is the host's alone; `ENOMEM`.
    pub(crate) fn donate_locked(
        &self,
        host: &mut HostMmu<'a, P>,
        hyp: &mut HypMmu<'a, P>,
        pfn: u64,
        nr: u64,
        usage: HypUse,
    ) -> Result<(), Error> {
        let pages = self.host_range(pfn, nr)?;
        if !pages.iter().all(Self::is_host_exclusive) {
            return Err(Error::Perm);
        }
        let (start, end) = (pfn << PAGE_SHIFT, (pfn + nr) << PAGE_SHIFT);
        let bound = table_pages_bound(start, end);
        if host.pool.free_pages() < bound || hyp.pool.free_pages() < bound {
            return Err(Error::NoMem);
        }
        let size = end - start;
        let r1 = {
            let mm = &mut host.pool;
            host.pgt
                .set_owner(
                    mm,
                    &mut Arch(self.plat),
                    start,
                    size,
                    u32::from(HYP_OWNER_ID),
                )
                .map_err(pt_err)
        };
        let r2 = self.hyp_map(hyp, start, size);
        for p in pages {
            p.set_host_state(PageState::NoPage);
            p.set_hyp_owned(usage);
        }
        r1.and(r2).map_err(|e| self.commit_failed("donate", e))
    }

    /// Hyp → host return of `[pfn, pfn + nr)` with both locks held, after the caller checked
    /// the pages may go: EL2 unmaps them, the host stage-2 annotations are cleared (the host
    /// re-faults them lazily) and the vmemmap entries go back to the boot state (OWNED, NOPAGE).
    /// Cannot fail but for a broken invariant (`EFAULT`).
    pub(crate) fn give_back_locked(
        &self,
        host: &mut HostMmu<'a, P>,
        hyp: &mut HypMmu<'a, P>,
        pfn: u64,
        nr: u64,
    ) -> Result<(), Error> {
        let pages = self.host_range(pfn, nr)?;
        let (start, size) = (pfn << PAGE_SHIFT, nr << PAGE_SHIFT);
        let r1 = self.hyp_unmap(hyp, start, size);
        let r2 = {
            let mm = &mut host.pool;
            host.pgt
                .unmap(mm, &mut Arch(self.plat), start, size)
                .map(|_| ())
                .map_err(pt_err)
        };
        for p in pages {
            p.reset();
        }
        r1.and(r2).map_err(|e| self.commit_failed("give back", e))
    }

    /// `host_donate_hyp(pfn, nr_pages)`: gives host pages to EL2. The host stage-2 entries become
    /// invalid and annotated with EL2's owner id (splitting host blocks as needed, with
    /// break-before-make), and EL2 maps the pages read/write. EL2 records them as
    /// [`HypUse::Idle`]: donated, unused, the only pages `hyp_donate_host` may return.
    ///
    /// # Errors
    /// `EINVAL`/`ERANGE` for a bad range; `EPERM` unless every page is (OWNED, NOPAGE),
    /// unshared and unpinned; `ENOMEM` if either side has no table memory for the change.
    pub fn host_donate_hyp(&self, pfn: u64, nr: u64) -> Result<(), Error> {
        let mut host = self.host.lock();
        let mut hyp = self.hyp.lock();
        self.donate_locked(&mut host, &mut hyp, pfn, nr, HypUse::Idle)
    }

    /// `hyp_donate_host(pfn, nr_pages)` (debug hypercall): EL2 gives back pages the host donated
    /// to it with `host_donate_hyp` and that it does not use ([`HypUse::Idle`]). EL2's own
    /// memory, a VM's memcache (even its free pages) and anything else are refused.
    ///
    /// # Errors
    /// `EINVAL`/`ERANGE` for a bad range; `EPERM` unless every page is (NOPAGE, OWNED) and
    /// idle.
    pub fn hyp_donate_host(&self, pfn: u64, nr: u64) -> Result<(), Error> {
        let pages = self.host_range(pfn, nr)?;
        let (start, end) = (pfn << PAGE_SHIFT, (pfn + nr) << PAGE_SHIFT);
        if self.hyp_ranges().iter().any(|&(s, e)| start < e && s < end) {
            return Err(Error::Perm);
        }
        let mut host = self.host.lock();
        let mut hyp = self.hyp.lock();
        let idle = |p: &HypPage| {
            p.host_state() == PageState::NoPage
                && p.hyp_state() == PageState::Owned
                && p.hyp_use() == HypUse::Idle
                && p.share_count() == 0
                && p.refcount() == 0
        };
        if !pages.iter().all(idle) {
            return Err(Error::Perm);
        }
        self.give_back_locked(&mut host, &mut hyp, pfn, nr)
    }

    /// EL2 pins `[pfn, pfn + nr)` (shared with it) for a structure it uses, with both locks held.
    /// These pins are EL2's own ([`HypPage::refcount`]): nothing the host does can drop them.
    ///
    /// # Errors
    /// Range errors; `EPERM` if any page is not shared with EL2; `EBUSY` if a count would
    /// overflow.
    pub(crate) fn hyp_pin_locked(&self, pfn: u64, nr: u64) -> Result<(), Error> {
        let pages = self.host_range(pfn, nr)?;
        let mut saturated = false;
        for p in pages {
            if !Self::is_shared_with_hyp(p) {
                return Err(Error::Perm);
            }
            saturated |= p.refcount() == MAX_COUNT;
        }
        if saturated {
            return Err(Error::Busy);
        }
        for p in pages {
            p.set_refcount(p.refcount() + 1);
        }
        Ok(())
    }

    /// Drops one of EL2's own pins of `[pfn, pfn + nr)`, both locks held.
    pub(crate) fn hyp_unpin_locked(&self, (pfn, nr): (u64, u64)) {
        if let Ok(pages) = self.host_range(pfn, nr) {
            for p in pages {
                p.set_refcount(p.refcount().saturating_sub(1));
            }
        }
    }

    /// The debug pin call: the host pins pages it shares with EL2, so that it cannot unshare
    /// them (`EBUSY`) until it unpins them. Counted apart from EL2's own pins.
    ///
    /// # Errors
    /// `EINVAL`/`ERANGE` for a bad range; `EPERM` if any page is not shared with EL2; `EBUSY`
    /// if a host pin count would overflow ([`MAX_HOST_PINS`]).
    pub fn pin_shared(&self, pfn: u64, nr: u64) -> Result<(), Error> {
        let pages = self.host_range(pfn, nr)?;
        let _host = self.host.lock();
        let _hyp = self.hyp.lock();
        let mut saturated = false;
        for p in pages {
            if !Self::is_shared_with_hyp(p) {
                return Err(Error::Perm);
            }
            saturated |= p.host_pins() == MAX_HOST_PINS;
        }
        if saturated {
            return Err(Error::Busy);
        }
        for p in pages {
            p.set_host_pins(p.host_pins() + 1);
        }
        Ok(())
    }

    /// Undoes one [`Hyp::pin_shared`]. It never touches EL2's own pins.
    ///
    /// # Errors
    /// `EINVAL`/`ERANGE` for a bad range; `EPERM` if any page is not shared with EL2 or holds
    /// no host pin.
    pub fn unpin_shared(&self, pfn: u64, nr: u64) -> Result<(), Error> {
        let pages = self.host_range(pfn, nr)?;
        let _host = self.host.lock();
        let _hyp = self.hyp.lock();
        if !pages
            .iter()
            .all(|p| Self::is_shared_with_hyp(p) && p.host_pins() > 0)
        {
            return Err(Error::Perm);
        }
        for p in pages {
            p.set_host_pins(p.host_pins() - 1);
        }
        Ok(())
    }

    /// The debug read call: the `u64` at `pa`, which must lie in a page the host currently
    /// shares with EL2 (never EL2's own memory, its tables, pools or stacks, nor donated or
    /// guest pages). The hyp lock is held across the check and the read, so the page cannot be
    /// unshared (and unmapped) in between.
    ///
    /// # Errors
    /// `EINVAL` if `pa` is misaligned; `EPERM` unless its page is shared with EL2.
    pub fn hyp_read(&self, pa: u64) -> Result<u64, Error> {
        if !pa.is_multiple_of(8) {
            return Err(Error::Inval);
        }
        let _hyp = self.hyp.lock();
        match self.vmemmap.page(pa) {
            Some(p) if self.map.is_memory(pa) && Self::is_shared_with_hyp(p) => {
                Ok(self.plat.read_u64(pa))
            }
            _ => Err(Error::Perm),
        }
    }

    /// Handles a host stage-2 fault of class `class` at `ipa`: maps the largest block around
    /// it that lies inside one memory region (or one MMIO gap) and is not owned by anyone else,
    /// or decides to inject an abort. Never panics, whatever the address.
    ///
    /// A permission fault means the page is mapped and the access is not allowed (an
    /// instruction fetch from MMIO, which the host stage-2 maps execute-never): an abort, not
    /// a retry — retrying would loop forever.
    pub fn handle_host_mem_abort(&self, ipa: u64, class: FaultClass) -> HostFault {
        self.counters.host_faults.fetch_add(1, Ordering::Relaxed);
        let r = if class == FaultClass::Permission {
            HostFault::InjectAbort
        } else {
            self.host_fault(ipa)
        };
        if r == HostFault::InjectAbort {
            self.counters
                .injected_aborts
                .fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn host_fault(&self, ipa: u64) -> HostFault {
        if ipa >> self.pa_bits != 0 {
            return HostFault::InjectAbort;
        }
        let ipa = ipa & !(PAGE_SIZE - 1);
        let mut host = self.host.lock();
        match self.host_idmap(&mut host, ipa) {
            Err(Error::NoMem) => {
                // Recycle the table pages of MMIO mappings (they re-fault lazily), then retry once.
                self.host_unmap_mmio(&mut host);
                match self.host_idmap(&mut host, ipa) {
                    Ok(f) => f,
                    Err(_) => HostFault::InjectAbort,
                }
            }
            Ok(f) => f,
            Err(_) => HostFault::InjectAbort,
        }
    }

    fn host_idmap(&self, host: &mut HostMmu<'a, P>, ipa: u64) -> Result<HostFault, Error> {
        let host = &mut *host;
        let mm = &mut host.pool;
        let (pte, level) = host.pgt.get_leaf(&*mm, ipa).map_err(pt_err)?;
        if pte & 1 != 0 {
            // Another CPU mapped it first.
            return Ok(HostFault::Mapped);
        }
        if pte != 0 {
            // Annotated: owned by someone else, or a device register EL2 emulates.
            return Ok(
                if pkvm_pgtable::desc::pte_owner(pte) == Some(EMULATED_MMIO_OWNER_ID) {
                    HostFault::Emulate
                } else {
                    HostFault::InjectAbort
                },
            );
        }
        let (lo, hi, prot) = match self.map.find_region(ipa) {
            Ok(r) => {
                match self.vmemmap.page(ipa) {
                    Some(p) if p.host_state() != PageState::NoPage => {}
                    _ => return Ok(HostFault::InjectAbort),
                }
                (r.base, r.end(), HOST_MEM_PROT)
            }
            Err(g) => (g.start, g.end.min(1u64 << self.pa_bits), HOST_MMIO_PROT),
        };
        // The entry at `level` is zero, so nothing below it is annotated: any block inside it
        // that stays inside [lo, hi) may be mapped.
        let mut lvl = level.max(1);
        loop {
            let size = 1u64 << (PAGE_SHIFT + 9 * (3 - u32::from(lvl)));
            let start = ipa & !(size - 1);
            if lvl == 3 || (start >= lo && start.checked_add(size).is_some_and(|e| e <= hi)) {
                host.pgt
                    .map(
                        mm,
                        &mut Arch(self.plat),
                        start,
                        size,
                        start,
                        prot,
                        MapFlags::empty(),
                    )
                    .map_err(pt_err)?;
                return Ok(HostFault::Mapped);
            }
            lvl += 1;
        }
    }

    /// Drops every MMIO mapping of the host stage-2: they are re-created on demand by the fault
    /// path. EL2 does this by itself when the host table pool runs dry; benchmarks use it to
    /// measure first-touch faults repeatedly.
    pub fn host_stage2_unmap_mmio(&self) {
        let mut host = self.host.lock();
        self.host_unmap_mmio(&mut host);
    }

    /// Unmaps every MMIO mapping of the host stage-2 (they are re-created on demand). The
    /// annotations of the device ranges EL2 keeps from the host stay: `unmap` would clear
    /// them, so those ranges are stepped over.
    fn host_unmap_mmio(&self, host: &mut HostMmu<'a, P>) {
        let host = &mut *host;
        let mm = &mut host.pool;
        let top = 1u64 << self.pa_bits;
        let mut unmap = |lo: u64, hi: u64| {
            if hi > lo {
                let _ = host.pgt.unmap(mm, &mut Arch(self.plat), lo, hi - lo);
            }
        };
        // The regions to keep, sorted: memory and the device ranges.
        let mut keep = [(0u64, 0u64); crate::memory::MAX_MEM_REGIONS + MAX_DEVICE_RANGES];
        let mut n = 0;
        for (s, e) in self
            .map
            .regions()
            .iter()
            .map(|r| (r.base, r.end()))
            .chain(self.devices().iter().map(|d| (d.start, d.end)))
        {
            keep[n] = (s, e);
            n += 1;
        }
        let keep = &mut keep[..n];
        keep.sort_unstable();
        let mut prev = 0;
        for &(s, e) in keep.iter() {
            unmap(prev, s.min(top));
            prev = prev.max(e);
            if prev >= top {
                return;
            }
        }
        unmap(prev, top);
    }
}
