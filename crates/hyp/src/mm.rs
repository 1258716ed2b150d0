//! The components' page tables — the host stage-2 ([`HostMmu`]) and EL2's stage-1
//! ([`HypMmu`]), each with the pool its tables come from — the reservation that lets a
//! transition's commit not fail, and the glue to `pkvm-pgtable` (architecture effects, error
//! conversion).

use pkvm_abi::Error;
use pkvm_abi::PAGE_SIZE;
use pkvm_arch::regs::Vttbr;
use pkvm_pgtable::{MapFlags, PageTable, Prot, WalkFlags, desc};

use crate::mem_protect::HYP_SHARED_PROT;
use crate::page_alloc::HypPool;
use crate::platform::{ArchOps, Platform};

/// Upper bound on the table pages a page-granular change of `[start, end)` can allocate in a
/// 4-level table: one per 2 MiB, 1 GiB and 512 GiB window touched (levels 3, 2 and 1).
pub(crate) fn table_pages_bound(start: u64, end: u64) -> u64 {
    let last = end - 1;
    ((last >> 21) - (start >> 21) + 1)
        + ((last >> 30) - (start >> 30) + 1)
        + ((last >> 39) - (start >> 39) + 1)
}

/// Proof that a pool holds every table page a page-granular change of a range can need.
///
/// Made only by a component's `reserve` in a transition's check phase and asked for by the
/// commit that changes the table: the commit then cannot run out of memory, because the
/// component's lock is held from the check to the commit and nothing else allocates from its
/// pool meanwhile.
#[derive(Debug)]
#[must_use]
pub(crate) struct Reservation(());

/// Reserves table memory for a change of `[start, end)` in `pool`.
#[inline]
fn reserve<P: Platform>(pool: &HypPool<'_, P>, start: u64, end: u64) -> Result<Reservation, Error> {
    if pool.free_pages() < table_pages_bound(start, end) {
        Err(Error::NoMem)
    } else {
        Ok(Reservation(()))
    }
}

/// The host's stage-2 and the pool its tables come from. Guarded by the host lock.
#[derive(Debug)]
pub struct HostMmu<'a, P: Platform> {
    pub(crate) pgt: PageTable,
    pub(crate) pool: HypPool<'a, P>,
}

impl<P: Platform> HostMmu<'_, P> {
    /// Reserves the table pages a page-granular change of `[start, end)` can need.
    ///
    /// # Errors
    /// `ENOMEM` if the pool cannot hold them.
    #[inline]
    pub(crate) fn reserve(&self, start: u64, end: u64) -> Result<Reservation, Error> {
        reserve(&self.pool, start, end)
    }

    /// Makes `[start, start + size)` invalid in the host stage-2, annotated with `owner`
    /// (splitting blocks with break-before-make): the fault path never maps it again.
    pub(crate) fn annotate(
        &mut self,
        _: &Reservation,
        start: u64,
        size: u64,
        owner: u8,
    ) -> Result<(), Error> {
        let plat = self.pool.mem();
        self.pgt
            .set_owner(&mut self.pool, plat, start, size, owner.into())
            .map_err(pt_err)
    }

    /// Clears `[start, start + size)` of the host stage-2 (mappings and annotations): the
    /// host re-faults what it may access.
    pub(crate) fn clear(&mut self, start: u64, size: u64) -> Result<(), Error> {
        let plat = self.pool.mem();
        self.pgt
            .unmap(&mut self.pool, plat, start, size)
            .map(|_| ())
            .map_err(pt_err)
    }
}

/// EL2 virtual address of the **window**: a page of EL2's stage-1 through which EL2 reaches,
/// one page at a time and with the hyp lock held, memory its identity map does not cover (a
/// guest's pages, to zero them before the host gets them back). Above every physical address
/// the identity map can use (the last 2 MiB of the 48-bit VA space): `HYP_WINDOW_VA` itself
/// maps an anchor page of EL2's own (read-only) for EL2's whole life, which keeps the level-3
/// table of the window's slot, `HYP_WINDOW_VA + PAGE_SIZE`, in place — so using the window
/// never allocates.
pub const HYP_WINDOW_VA: u64 = (1 << 48) - (2 << 20);
/// The window's slot (see [`HYP_WINDOW_VA`]): invalid except while a page is being reached.
pub const HYP_WINDOW_SLOT: u64 = HYP_WINDOW_VA + PAGE_SIZE;

/// The hypervisor's stage-1 and its page pool. Guarded by the hyp lock; the pool is only ever
/// used with that lock held, which is what makes "reserve, then commit" race-free.
#[derive(Debug)]
pub struct HypMmu<'a, P: Platform> {
    pub(crate) pgt: PageTable,
    pub(crate) pool: HypPool<'a, P>,
    /// Physical address of the window slot's descriptor ([`HYP_WINDOW_SLOT`]).
    pub(crate) window_ptep: u64,
}

impl<P: Platform> HypMmu<'_, P> {
    /// Maps the window's anchor (`anchor_pa`, a page of EL2's own, read-only) at
    /// [`HYP_WINDOW_VA`] and finds the slot's descriptor.
    ///
    /// # Errors
    /// `ENOMEM` if the pool cannot hold the tables; `EFAULT` if the slot's descriptor is not
    /// found after that (a broken invariant).
    pub(crate) fn open_window(&mut self, anchor_pa: u64) -> Result<(), Error> {
        let plat = self.pool.mem();
        self.pgt
            .map(
                &mut self.pool,
                plat,
                HYP_WINDOW_VA,
                PAGE_SIZE,
                anchor_pa,
                Prot::R,
                MapFlags::FORCE_PAGES,
            )
            .map_err(pt_err)?;
        let mut ptep = None;
        self.pgt
            .walk_mut(
                &mut self.pool,
                HYP_WINDOW_SLOT,
                PAGE_SIZE,
                WalkFlags::LEAF,
                |_, v| {
                    if v.level == desc::LEAF_LEVEL && v.pte == 0 {
                        ptep = Some(v.ptep);
                    }
                    Ok::<(), pkvm_pgtable::Error>(())
                },
            )
            .map_err(pt_err)?;
        self.window_ptep = ptep.ok_or(Error::Fault)?;
        Ok(())
    }

    /// Zeroes the page at `pa` — one EL2's identity map does not cover, a guest's — through the
    /// window: map it in the slot, zero it, clean the zeroes to the point of coherency (the
    /// host may map the page non-cacheable next: it must not read the old contents from
    /// memory behind EL2's cache lines), unmap it with a TLB invalidation of the slot. The
    /// hyp lock (`&mut self`) keeps the slot to one user.
    ///
    /// Returns `false` (nothing done) only for an address no descriptor can hold: the caller
    /// must then keep the page from the host.
    #[must_use]
    pub(crate) fn zero_foreign(&mut self, pa: u64) -> bool {
        self.through_window(pa, |plat| {
            plat.zero(HYP_WINDOW_SLOT, PAGE_SIZE);
            plat.clean_dcache_to_poc(HYP_WINDOW_SLOT, PAGE_SIZE);
        })
    }

    /// Cleans and invalidates the page at `pa` to the point of coherency through the window,
    /// as [`HypMmu::zero_foreign`] (its contents unchanged): for a page the host may have left
    /// dirty lines of, before a guest that may read it uncached (its MMU off, or a
    /// non-cacheable mapping) gets it — otherwise the guest reads stale memory, and a later
    /// eviction of the host's lines overwrites what the guest wrote.
    ///
    /// Returns `false` (nothing done) only for an address no descriptor can hold.
    #[must_use]
    pub(crate) fn clean_foreign(&mut self, pa: u64) -> bool {
        self.through_window(pa, |plat| {
            plat.clean_dcache_to_poc(HYP_WINDOW_SLOT, PAGE_SIZE)
        })
    }

    /// Maps `pa` at the window, runs `f`, unmaps it (break-before-make: TLBI, DSB).
    fn through_window(&mut self, pa: u64, f: impl FnOnce(&P)) -> bool {
        let plat = self.pool.mem();
        let Ok(pte) = self
            .pgt
            .config()
            .format
            .leaf_pte(pa, HYP_SHARED_PROT, desc::LEAF_LEVEL)
        else {
            return false;
        };
        // The slot is invalid: a new entry needs no invalidation, only to be visible.
        plat.write_u64(self.window_ptep, pte);
        plat.dsb_ishst();
        plat.isb();
        f(plat);
        plat.write_u64(self.window_ptep, 0);
        plat.dsb_ishst();
        plat.tlbi_el2_va(HYP_WINDOW_SLOT, desc::LEAF_LEVEL, true);
        plat.dsb_ish();
        plat.isb();
        true
    }

    /// Reserves the table pages a page-granular change of `[start, end)` can need.
    ///
    /// # Errors
    /// `ENOMEM` if the pool cannot hold them.
    #[inline]
    pub(crate) fn reserve(&self, start: u64, end: u64) -> Result<Reservation, Error> {
        reserve(&self.pool, start, end)
    }

    /// Maps host memory `[pa, pa + size)` into EL2's stage-1 at VA == PA, read/write, page by
    /// page.
    pub(crate) fn map(&mut self, _: &Reservation, pa: u64, size: u64) -> Result<(), Error> {
        let plat = self.pool.mem();
        self.pgt
            .map(
                &mut self.pool,
                plat,
                pa,
                size,
                pa,
                HYP_SHARED_PROT,
                MapFlags::FORCE_PAGES,
            )
            .map_err(pt_err)
    }

    /// Unmaps `[pa, pa + size)` from EL2's stage-1 (with TLB invalidation); all of it must
    /// have been mapped.
    pub(crate) fn unmap(&mut self, pa: u64, size: u64) -> Result<(), Error> {
        let plat = self.pool.mem();
        let done = self
            .pgt
            .unmap(&mut self.pool, plat, pa, size)
            .map_err(pt_err)?;
        if done == size {
            Ok(())
        } else {
            Err(Error::Fault)
        }
    }
}

/// The [`ArchOps`] a guest stage-2 is handed: the platform's, except that its stage-2 TLB
/// maintenance runs with the guest's `VTTBR_EL2` loaded (the platform's own acts on the
/// host's VMID).
#[derive(Debug)]
pub struct GuestArch<'p, P: Platform> {
    /// The platform.
    pub plat: &'p P,
    /// The guest's `VTTBR_EL2` value.
    pub vttbr: Vttbr,
}

impl<P: Platform> ArchOps for GuestArch<'_, P> {
    #[inline]
    fn dsb_ishst(&self) {
        self.plat.dsb_ishst();
    }
    #[inline]
    fn dsb_ish(&self) {
        self.plat.dsb_ish();
    }
    #[inline]
    fn isb(&self) {
        self.plat.isb();
    }
    #[inline]
    fn tlbi_el2_va(&self, va: u64, level: u8, last_level_only: bool) {
        self.plat.tlbi_el2_va(va, level, last_level_only);
    }
    #[inline]
    fn tlbi_s2_ipa(&self, _vmid: u16, ipa: u64, level: u8) {
        self.plat.tlbi_guest_s2_ipa(self.vttbr, ipa, level);
    }
    #[inline]
    fn tlbi_vmid(&self, _vmid: u16) {
        self.plat.tlbi_guest_vmid(self.vttbr);
    }
    #[inline]
    fn tlbi_el2_all(&self) {
        self.plat.tlbi_el2_all();
    }
}

/// Maps a page-table error onto the ABI's error codes.
#[must_use]
pub fn pt_err(e: pkvm_pgtable::Error) -> Error {
    use pkvm_pgtable::Error as E;
    match e {
        E::NoMemory => Error::NoMem,
        E::OutOfRange => Error::Range,
        E::AlreadyMapped => Error::Perm,
        _ => Error::Inval,
    }
}

#[cfg(test)]
mod tests {
    use super::{pt_err, table_pages_bound};
    use pkvm_abi::Error;
    use pkvm_pgtable::Error as E;

    /// Each page-table error the host can provoke has its own ABI error; the rest (bugs,
    /// which the checks before a call rule out) are `EINVAL`.
    #[test]
    fn page_table_errors_map_onto_the_abi() {
        for (e, want) in [
            (E::NoMemory, Error::NoMem),
            (E::OutOfRange, Error::Range),
            (E::AlreadyMapped, Error::Perm),
            (E::Misaligned, Error::Inval),
            (E::WouldSplitBlock, Error::Inval),
            (E::InvalidProt, Error::Inval),
            (E::InvalidOwner, Error::Inval),
            (E::InvalidConfig, Error::Inval),
        ] {
            assert_eq!(pt_err(e), want, "{e:?}");
        }
    }

    const M2: u64 = 2 << 20;
    const G: u64 = 1 << 30;
    const T512: u64 = 1 << 39;

    /// The bound counts each 2 MiB, 1 GiB and 512 GiB window the range touches, no more: a
    /// looser bound answers `ENOMEM` with table memory to spare (which the spec accepts).
    #[test]
    fn table_pages_bound_counts_the_windows_touched() {
        // One page, anywhere: one window of each size.
        for start in [0, G + M2, 3 * T512] {
            assert_eq!(table_pages_bound(start, start + 4096), 3, "{start:#x}");
        }
        // Up to the end of a window, not into the next.
        assert_eq!(table_pages_bound(G + M2 - 4096, G + M2), 3);
        assert_eq!(table_pages_bound(G, G + M2), 3);
        // Across a 2 MiB edge, a 1 GiB edge, a 512 GiB edge.
        assert_eq!(table_pages_bound(G + M2 - 4096, G + M2 + 4096), 4);
        assert_eq!(table_pages_bound(2 * G - 4096, 2 * G + 4096), 5);
        assert_eq!(table_pages_bound(T512 - 4096, T512 + 4096), 6);
        // Windows above the first: the counts are differences, not sums.
        assert_eq!(table_pages_bound(5 * G, 7 * G), 1024 + 2 + 1);
    }
}
