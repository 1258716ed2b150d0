//! Guests: VMs with an EL2-owned stage-2, their vCPU, sharing host pages into them, running
//! the vCPU (through the platform's world switch) and teardown.
//!
//! # State
//!
//! - The host shares its `VmDesc`, `VcpuState` and `FpState` with EL2 (`host_share_hyp`,
//!   refcounted, so structures of two guests may share a page); EL2 **pins** the pages covering
//!   each structure while the VM exists, so the host cannot unshare them (`EBUSY`). Teardown
//!   unpins; then the host unshares.
//! - The guest stage-2 lives in pages the host donated at VM init (a small memcache, host →
//!   hyp donation: host NOPAGE/annotated, hyp OWNED); EL2 builds a buddy pool over them. The
//!   host never writes guest tables. Teardown frees the tables, zeroes the pages and gives them
//!   back (hyp → host).
//! - A host page shared into a guest is (host SHARED_OWNED, hyp NOPAGE) with share count 1 in
//!   the vmemmap; the guest side (SHARED_BORROWED) is software bit 0 of the guest stage-2
//!   leaf. Since hyp is NOPAGE, `host_share_hyp`/`host_unshare_hyp`/`host_donate_hyp`/pin of
//!   such a page fail with `EPERM` (both sides checked).
//! - VMID = slot + 1 (VMID 0 is the host); a slot is reused only after teardown invalidated
//!   every TLB entry of its VMID.
//!
//! - **Protected VMs** ([`g::vm_flags::PROTECTED`]) get their memory by donation
//!   ([`donate`]): the host page goes to (NOPAGE, NOPAGE) in the vmemmap, its host stage-2
//!   entry is annotated with the VM's owner id ([`guest_owner_id`]), and the guest stage-2
//!   leaf carries no software bit (guest OWNED). The guest may share such a page back
//!   ([`guest_call`]): the leaf gets [`GUEST_SHARED_OWNED`], the host state SHARED_BORROWED
//!   and the annotation is cleared (the host faults it in). Non-protected VMs get host pages
//!   shared in ([`share`]); neither kind accepts the other's way in.
//! - Teardown ([`reclaim`]) marks the VM dying, then reclaims its guest pages in batches of at
//!   most [`g::RECLAIM_BATCH`] per call (pages the guest owned are zeroed before the host gets
//!   them) and finally frees the stage-2, the VMID and the memcache.
//!
//! Lock order: host → hyp → vms.
//!
//! Files: this one (the VM table, creation, the vCPU), [`share`] (host pages into a
//! non-protected guest and back), [`donate`] (host pages given to a protected guest),
//! [`guest_call`] (the guest-side calls EL2 answers), [`reclaim`] (teardown), [`run`]
//! (running the vCPU and decoding its exits).

mod donate;
mod guest_call;
pub mod idregs;
mod reclaim;
mod run;
mod share;
mod vgic;

use pkvm_abi::guest::{self as g, MAX_VMS, PSTATE_ALLOWED, PSTATE_MODES, VmDesc};
use pkvm_abi::{Error, PAGE_SHIFT, PAGE_SIZE};
use pkvm_arch::addr::{Gfn, Pfn, PhysAddr};
use pkvm_arch::regs::Vttbr;
use pkvm_pgtable::{Config, MmOps, PageTable, Prot};

use crate::hyp::Hyp;
use crate::mm::{HostMmu, HypMmu, pt_err};
use crate::page_alloc::{HypPool, NODE_NEXT, NODE_PREV};
use crate::platform::Platform;
use crate::vmemmap::{HypPage, HypUse, NO_ORDER, PageState};

/// Software bit marking a guest stage-2 leaf as SHARED_BORROWED (the page belongs to the host).
pub const GUEST_SHARED_BORROWED: Prot = Prot::SW0;
/// Software bit marking a guest stage-2 leaf as SHARED_OWNED: the guest's page, which it
/// shares with the host (`MEM_SHARE`).
pub const GUEST_SHARED_OWNED: Prot = Prot::SW1;
/// Prot of a page donated to a guest (guest OWNED).
const GUEST_OWNED_PROT: Prot = Prot::R.union(Prot::W).union(Prot::X);

/// First owner id of guest annotations in the host stage-2: the VM with VMID `v` annotates
/// the pages it owns with `GUEST_OWNER_ID_BASE + v`.
pub const GUEST_OWNER_ID_BASE: u8 = 16;

/// The host stage-2 owner id of pages the VM with `vmid` owns.
#[must_use]
pub const fn guest_owner_id(vmid: u16) -> u8 {
    GUEST_OWNER_ID_BASE + vmid as u8
}

const _: () =
    assert!(GUEST_OWNER_ID_BASE as usize + MAX_VMS <= pkvm_pgtable::desc::MAX_OWNER_ID as usize);

/// Smallest and largest memcache (pages donated for the guest stage-2).
const MEMCACHE_MIN: u64 = g::MEMCACHE_MIN_PAGES;
const MEMCACHE_MAX: u64 = g::MEMCACHE_MAX_PAGES;

/// An MMIO access waiting for the host's emulation: completed on the next entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PendingMmio {
    /// The access's syndrome (`ESR_EL2.ISS`): size, target register, sign extension, register
    /// width. Kept raw (4 bytes) and decoded only when the access completes: the vCPU's
    /// pending-access slot is copied on every run.
    iss: u32,
}

#[derive(Debug)]
struct Vcpu {
    state_pa: PhysAddr,
    fp_pa: PhysAddr,
    /// Pinned pages of the state and FP structures.
    pins: [(Pfn, u64); 2],
    pending_mmio: Option<PendingMmio>,
    running: bool,
    /// A protected VM's vCPU state at EL2: a page of its memcache holding the
    /// [`g::VcpuState`] (at 0) and the [`g::FpState`] (at [`PRIVATE_FP_OFFSET`]) the world
    /// switch runs it from. The host's structures then only carry what each exit needs.
    private: Option<PhysAddr>,
    /// The last exit was a hypercall the host answers: its `x0..x3` come back on the next run
    /// (protected VMs).
    pending_hvc: bool,
    /// Powered on: it may run. A protected VM's vCPUs but the first start off and are
    /// started by the guest (PSCI `CPU_ON`, answered at EL2); `CPU_OFF` turns one off again.
    /// A non-protected VM's are always on (its host handles its PSCI).
    on: bool,
}

/// Where the FP/SIMD state sits in a protected vCPU's private page.
const PRIVATE_FP_OFFSET: u64 = 0x800;
const _: () = assert!(size_of::<g::VcpuState>() as u64 <= PRIVATE_FP_OFFSET);
const _: () = assert!(PRIVATE_FP_OFFSET + g::FP_STATE_SIZE as u64 <= PAGE_SIZE);

struct Vm<'a, P: Platform> {
    handle: u64,
    vmid: u16,
    ipa_bits: u32,
    desc_pin: (Pfn, u64),
    memcache: (Pfn, u64),
    pgt: PageTable,
    pool: HypPool<'a, P>,
    /// `VmDesc::nr_vcpus`.
    nr_vcpus: usize,
    /// The vCPUs `VcpuInit` added, by index.
    vcpus: [Option<Vcpu>; g::MAX_VCPUS_PER_VM],
    /// Bounding IPA range `[lo, hi)` of everything ever shared into or donated to the guest:
    /// reclaim walks only this part of the stage-2.
    span: (u64, u64),
    /// A protected VM ([`g::vm_flags::PROTECTED`]).
    protected: bool,
    /// Teardown has started: the VM never runs again and takes no new pages.
    dying: bool,
    /// Guest pages its stage-2 maps (shared in, or owned).
    pages: u64,
    /// Reclaim has emptied the stage-2 below this IPA.
    reclaim_from: u64,
    /// The guest's memory `[start, end)` (IPAs; empty if none): a translation fault inside
    /// is a memory-fault exit.
    mem: (u64, u64),
    /// The guest enrolled in MMIO guard: only pages it mapped (guest stage-2 annotations
    /// with [`MMIO_GUARD_OWNER`]) produce MMIO exits.
    mmio_guard: bool,
}

/// Owner id of the guest stage-2 annotations that mark a page the guest mapped with
/// `MMIO_GUARD_MAP` (the guest stage-2 has no other annotation).
pub const MMIO_GUARD_OWNER: u8 = 1;

impl<P: Platform> Vm<'_, P> {
    /// Whether one of its vCPUs is running.
    fn running(&self) -> bool {
        self.vcpus.iter().flatten().any(|v| v.running)
    }

    /// `(ipa, size)` of the guest pages `[gfn, gfn + nr)` (`nr` > 0, checked by the caller).
    ///
    /// # Errors
    /// `ERANGE` if the range leaves the guest's IPA space.
    fn ipa_range(&self, gfn: Gfn, nr: u64) -> Result<(u64, u64), Error> {
        let end_gfn = gfn.checked_add(nr).ok_or(Error::Range)?;
        if end_gfn.get() > 1u64 << (self.ipa_bits - PAGE_SHIFT) {
            return Err(Error::Range);
        }
        Ok((gfn.ipa().get(), nr << PAGE_SHIFT))
    }

    /// The guest's `VTTBR_EL2` value: its stage-2 root under its VMID.
    fn vttbr(&self) -> Vttbr {
        Vttbr::new(self.pgt.root(), self.vmid)
    }

    /// Checks that `[ipa, ipa + size)` maps nothing in the guest stage-2 (`EPERM`) and that
    /// the memcache can hold the tables a page-granular mapping of it needs (`ENOMEM`).
    ///
    /// # Errors
    /// As above.
    fn check_unmapped(&self, ipa: u64, size: u64) -> Result<(), Error> {
        let mut a = ipa;
        while a < ipa + size {
            match self.pgt.leaf(&self.pool, a) {
                Ok(l @ pkvm_pgtable::Leaf::Empty { .. }) => a = (a | (l.size() - 1)) + 1,
                _ => return Err(Error::Perm),
            }
        }
        if self.pool.free_pages() < crate::mm::table_pages_bound(ipa, ipa + size) {
            return Err(Error::NoMem);
        }
        Ok(())
    }

    /// `EPERM` once teardown has started: a dying VM takes no new pages and never runs.
    fn live(&mut self) -> Result<&mut Self, Error> {
        if self.dying {
            Err(Error::Perm)
        } else {
            Ok(self)
        }
    }

    /// Widens the span reclaim walks to cover `[ipa, ipa + size)`.
    fn cover(&mut self, ipa: u64, size: u64) {
        self.span = (self.span.0.min(ipa), self.span.1.max(ipa + size));
    }
}

/// Every VM EL2 knows about.
pub struct VmTable<'a, P: Platform> {
    slots: [Option<Vm<'a, P>>; MAX_VMS],
    generation: u64,
}

impl<P: Platform> core::fmt::Debug for VmTable<'_, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VmTable")
            .field("live", &self.slots.iter().filter(|s| s.is_some()).count())
            .finish_non_exhaustive()
    }
}

impl<P: Platform> Default for VmTable<'_, P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a, P: Platform> VmTable<'a, P> {
    /// No VM.
    #[must_use]
    pub fn new() -> Self {
        Self {
            slots: [const { None }; MAX_VMS],
            generation: 0,
        }
    }

    fn get(&mut self, handle: u64) -> Result<&mut Vm<'a, P>, Error> {
        let slot = (handle & 0xff).wrapping_sub(1) as usize;
        match self.slots.get_mut(slot) {
            Some(Some(vm)) if vm.handle == handle => Ok(vm),
            _ => Err(Error::NoEnt),
        }
    }

    /// Number of live VMs.
    pub fn live(&self) -> u64 {
        self.slots.iter().filter(|s| s.is_some()).count() as u64
    }

    /// The generation the last VM's handle was built from.
    #[cfg(feature = "snapshot")]
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Forgets every VM (nothing is freed: their memory is the caller's to restore) and sets
    /// the handle generation ([`crate::snapshot`]).
    #[cfg(feature = "snapshot")]
    pub(crate) fn clear(&mut self, generation: u64) {
        let Self {
            slots,
            generation: g,
        } = self;
        *slots = [const { None }; MAX_VMS];
        *g = generation;
    }
}

/// A page shared into a guest goes back to the host alone (its guest mapping is being
/// removed).
fn end_guest_share(p: &HypPage) {
    p.set_share_count(0);
    p.set_host_state(PageState::Owned);
}

/// The pfn range covering `[pa, pa + len)`.
fn pfns_of(pa: PhysAddr, len: u64) -> Result<(Pfn, u64), Error> {
    let end = pa.get().checked_add(len).ok_or(Error::Inval)?;
    let first = pa.pfn();
    Ok((first, ((end - 1) >> PAGE_SHIFT) - first.get() + 1))
}

fn prot_from_abi(prot: u64) -> Result<Prot, Error> {
    if prot == 0 || prot & !g::PROT_RWX != 0 {
        return Err(Error::Inval);
    }
    let mut p = GUEST_SHARED_BORROWED;
    if prot & g::PROT_R != 0 {
        p |= Prot::R;
    }
    if prot & g::PROT_W != 0 {
        p |= Prot::W;
    }
    if prot & g::PROT_X != 0 {
        p |= Prot::X;
    }
    Ok(p)
}

/// Whether `pstate` is an AArch64 EL0t/EL1t/EL1h state with only NZCV, DAIF and M set.
#[must_use]
pub fn pstate_is_valid(pstate: u64) -> bool {
    pstate & !PSTATE_ALLOWED == 0 && PSTATE_MODES.contains(&(pstate & 0xf))
}

impl<'a, P: Platform> Hyp<'a, P> {
    /// Hyp → host return of donated pages (zeroed, vmemmap entries reset), both locks held.
    ///
    /// `was_pool`: the pages are a guest memcache whose buddy pool is being dropped. Its free
    /// memory is zero apart from the list node of each free block (the pool's invariant), and
    /// teardown has cleared every entry of the stage-2 tables, so only those nodes are zeroed.
    fn return_locked(
        &self,
        host: &mut HostMmu<'a, P>,
        hyp: &mut HypMmu<'a, P>,
        (pfn, nr): (Pfn, u64),
        was_pool: bool,
    ) -> Result<(), Error> {
        let pages = self.host_range(pfn, nr)?;
        let (start, size) = (pfn.addr().get(), nr << PAGE_SHIFT);
        if was_pool {
            for (i, p) in pages.iter().enumerate() {
                let pa = start + i as u64 * PAGE_SIZE;
                if p.refcount() == 0 && p.order() != NO_ORDER {
                    self.plat.write_u64(pa + NODE_NEXT, 0);
                    self.plat.write_u64(pa + NODE_PREV, 0);
                }
            }
        } else {
            self.plat.zero(start, size);
        }
        self.give_back_locked(host, hyp, pfn, nr)
    }

    /// `vm_init(desc_pa, memcache_pfn, memcache_nr) -> handle`.
    ///
    /// # Errors
    /// `EINVAL` for a misaligned descriptor, a bad `ipa_bits`/`nr_vcpus`/`flags`, a memory
    /// range that is unaligned or leaves the IPA space, or a bad memcache size;
    /// `EPERM` if the descriptor is not shared with EL2 or the memcache pages are not the
    /// host's alone; `ENOMEM` if every VM slot is in use; range errors as for sharing.
    pub fn vm_init(&self, desc_pa: PhysAddr, mc_pfn: Pfn, mc_nr: u64) -> Result<u64, Error> {
        if !desc_pa.is_aligned(8) || !(MEMCACHE_MIN..=MEMCACHE_MAX).contains(&mc_nr) {
            return Err(Error::Inval);
        }
        let desc_pin = pfns_of(desc_pa, size_of::<VmDesc>() as u64)?;
        let (mut host, mut hyp) = self.lock_host_hyp();
        let mut vms = self.vms.lock();
        let slot = vms
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(Error::NoMem)?;
        self.hyp_pin_locked(desc_pin.0, desc_pin.1)?;
        // Pinned: read the descriptor once.
        let desc: VmDesc = self.plat.read_obj(desc_pa.get());
        let ipa_bits = desc.ipa_bits;
        let mem_end = desc.mem_ipa.checked_add(desc.mem_size);
        // (`1 << ipa_bits` is reached only once `ipa_bits` is known to be at most 48.)
        if !(g::MIN_IPA_BITS..=g::MAX_IPA_BITS.min(u64::from(self.pa_bits))).contains(&ipa_bits)
            || !(1..=g::MAX_VCPUS_PER_VM as u64).contains(&desc.nr_vcpus)
            || desc.flags & !g::vm_flags::ALL != 0
            || !desc.mem_ipa.is_multiple_of(PAGE_SIZE)
            || !desc.mem_size.is_multiple_of(PAGE_SIZE)
            || mem_end.is_none_or(|e| e > 1u64 << ipa_bits)
        {
            self.hyp_unpin_locked(desc_pin);
            return Err(Error::Inval);
        }
        if let Err(e) = self.donate_locked(&mut host, &mut hyp, mc_pfn, mc_nr, HypUse::Vm) {
            self.hyp_unpin_locked(desc_pin);
            return Err(e);
        }
        let vmid = slot as u16 + 1;
        let cfg = Config::stage2(vmid, self.pa_bits as u8);
        let generation = vms.generation.wrapping_add(1) & 0x00ff_ffff_ffff_ffff;
        vms.generation = generation;
        let handle = (generation << 8) | (slot as u64 + 1);
        // Built in place in its slot (the VM is a few hundred bytes: no moves through the
        // stack), the root table taken from the new pool afterwards.
        let built =
            HypPool::new(&self.vmemmap, self.plat, mc_pfn.get(), mc_nr, 0).and_then(|pool| {
                let vm = vms.slots[slot].insert(Vm {
                    handle: 0,
                    vmid,
                    ipa_bits: ipa_bits as u32,
                    desc_pin,
                    memcache: (mc_pfn, mc_nr),
                    pgt: PageTable::from_root(0, cfg).map_err(pt_err)?,
                    pool,
                    nr_vcpus: desc.nr_vcpus as usize,
                    vcpus: [const { None }; g::MAX_VCPUS_PER_VM],
                    span: (u64::MAX, 0),
                    protected: desc.flags & g::vm_flags::PROTECTED != 0,
                    dying: false,
                    pages: 0,
                    reclaim_from: 0,
                    mem: (desc.mem_ipa, desc.mem_ipa + desc.mem_size),
                    mmio_guard: false,
                });
                vm.pgt = PageTable::new(&mut vm.pool, cfg).map_err(pt_err)?;
                Ok(vm)
            });
        let vm = match built {
            Ok(vm) => vm,
            Err(e) => {
                vms.slots[slot] = None;
                let _ = self.return_locked(&mut host, &mut hyp, (mc_pfn, mc_nr), false);
                self.hyp_unpin_locked(desc_pin);
                return Err(self.commit_failed("vm init", e));
            }
        };
        vm.handle = handle;
        Ok(handle)
    }

    /// `vcpu_init(handle, state_pa, fp_pa, idx)`: vCPU `idx` of the VM. For a protected VM, EL2
    /// copies the initial state the host wrote there (read once) into a page of the VM's
    /// memcache, and runs the vCPU from that copy from now on.
    ///
    /// # Errors
    /// `EINVAL` for misaligned structures, an index at or past the VM's `nr_vcpus`, or a
    /// protected vCPU whose initial PSTATE is not one a guest may run with (EL1h/EL1t/EL0t,
    /// AArch64); `ENOENT` for an unknown handle; `EPERM` for a dying VM; `EBUSY` if the VM has
    /// that vCPU already; `EPERM` if they are not shared with EL2; `ENOMEM` if a protected
    /// VM's memcache has no page left for the private state.
    pub fn vcpu_init(
        &self,
        handle: u64,
        state_pa: PhysAddr,
        fp_pa: PhysAddr,
        idx: u64,
    ) -> Result<(), Error> {
        if !state_pa.is_aligned(8) || !fp_pa.is_aligned(16) || idx >= g::MAX_VCPUS_PER_VM as u64 {
            return Err(Error::Inval);
        }
        let idx = idx as usize;
        let sp = pfns_of(state_pa, size_of::<g::VcpuState>() as u64)?;
        let fp = pfns_of(fp_pa, g::FP_STATE_SIZE as u64)?;
        let _locks = self.lock_host_hyp();
        let mut vms = self.vms.lock();
        let vm = vms.get(handle)?.live()?;
        if idx >= vm.nr_vcpus {
            return Err(Error::Inval);
        }
        if vm.vcpus[idx].is_some() {
            return Err(Error::Busy);
        }
        self.hyp_pin_locked(sp.0, sp.1)?;
        if let Err(e) = self.hyp_pin_locked(fp.0, fp.1) {
            self.hyp_unpin_locked(sp);
            return Err(e);
        }
        let private = if vm.protected {
            let Some(page) = vm.pool.zalloc_page() else {
                self.hyp_unpin_locked(sp);
                self.hyp_unpin_locked(fp);
                return Err(Error::NoMem);
            };
            self.copy_words(page, state_pa.get(), size_of::<g::VcpuState>());
            self.copy_words(page + PRIVATE_FP_OFFSET, fp_pa.get(), g::FP_STATE_SIZE);
            // The copy is all the vCPU will ever run from: an invalid PSTATE in it would make
            // every run fail, so it is refused now (the page goes back zeroed).
            if !pstate_is_valid(self.shared_vcpu(page).pstate()) {
                let _ = vm.pool.put_page(page);
                self.hyp_unpin_locked(sp);
                self.hyp_unpin_locked(fp);
                return Err(Error::Inval);
            }
            Some(PhysAddr(page))
        } else {
            None
        };
        vm.vcpus[idx] = Some(Vcpu {
            state_pa,
            fp_pa,
            pins: [sp, fp],
            pending_mmio: None,
            running: false,
            private,
            pending_hvc: false,
            on: !vm.protected || idx == 0,
        });
        Ok(())
    }

    /// Copies `len` bytes (whole words) from `src` to `dst`, each word read once.
    fn copy_words(&self, dst: u64, src: u64, len: usize) {
        for off in (0..len as u64).step_by(8) {
            self.plat
                .write_u64(dst + off, self.plat.read_u64(src + off));
        }
    }

    /// Number of live VMs.
    pub fn live_vms(&self) -> u64 {
        self.vms.lock().live()
    }

    /// What EL2 holds for each VM slot (`None`: free), for statistics and for the simulator's
    /// abstraction function. Takes the VM table's lock only.
    pub fn vm_snapshots(&self) -> [Option<VmSnapshot>; MAX_VMS] {
        let vms = self.vms.lock();
        core::array::from_fn(|i| {
            vms.slots[i].as_ref().map(|vm| VmSnapshot {
                handle: vm.handle,
                ipa_bits: vm.ipa_bits,
                desc_pin: vm.desc_pin,
                memcache: vm.memcache,
                vcpu_pins: vm.vcpus[0].as_ref().map(|v| v.pins),
                vttbr: vm.vttbr(),
                running: vm.running(),
                protected: vm.protected,
                dying: vm.dying,
                pages: vm.pages,
            })
        })
    }
}

/// One VM as [`Hyp::vm_snapshots`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmSnapshot {
    /// Its handle.
    pub handle: u64,
    /// Its IPA size in bits.
    pub ipa_bits: u32,
    /// The pages of its descriptor, which EL2 pins.
    pub desc_pin: (Pfn, u64),
    /// Its memcache (donated; its stage-2 tables live there).
    pub memcache: (Pfn, u64),
    /// The pages of its vCPU's state and FP structures, which EL2 pins, if it has a vCPU.
    pub vcpu_pins: Option<[(Pfn, u64); 2]>,
    /// Its stage-2 root and VMID.
    pub vttbr: Vttbr,
    /// Whether its vCPU is running.
    pub running: bool,
    /// Whether it is a protected VM.
    pub protected: bool,
    /// Whether its teardown has started.
    pub dying: bool,
    /// Guest pages its stage-2 maps.
    pub pages: u64,
}
