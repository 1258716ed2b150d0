//! The components' page tables — the host stage-2 ([`HostMmu`]) and EL2's stage-1
//! ([`HypMmu`]), each with the pool its tables come from — the reservation that lets a
//! transition's commit not fail, and the glue to `pkvm-pgtable` (architecture effects, error
//! conversion).

use pkvm_abi::Error;
use pkvm_arch::regs::Vttbr;
use pkvm_pgtable::{MapFlags, PageTable};

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

/// The hypervisor's stage-1 and its page pool. Guarded by the hyp lock; the pool is only ever
/// used with that lock held, which is what makes "reserve, then commit" race-free.
#[derive(Debug)]
pub struct HypMmu<'a, P: Platform> {
    pub(crate) pgt: PageTable,
    pub(crate) pool: HypPool<'a, P>,
}

impl<P: Platform> HypMmu<'_, P> {
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
