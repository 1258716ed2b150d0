//! Memory ownership: page states, the building blocks of every transition, and the host ↔ hyp
//! transitions (share, unshare, donate, give back, pin).
//!
//! # The transition framework
//!
//! Every transition runs in two phases under the components' locks, always taken in the order
//! host → hyp (→ vms) ([`Hyp::lock_host_hyp`]):
//!
//! 1. **check**: validate the arguments from the address and the memory map (never from page
//!    table contents: [`Hyp::host_range`]), then read the state of *both* sides of every page
//!    of the range from the vmemmap ([`check_pages`] with one of the predicates below), and
//!    reserve the page-table memory the commit will need (a [`Reservation`](crate::mm::Reservation), which the commit
//!    asks for). Nothing is written. The first wrong page decides the error (`EPERM` beats
//!    `EBUSY`), and the call returns with nothing changed.
//! 2. **commit**: update the vmemmap states and counts and the page tables. The commit cannot
//!    fail: every way it could (no table memory, a mapping already present) was ruled out by the
//!    check. If it does fail anyway, that is an internal invariant broken: it is logged and the
//!    call returns `EFAULT` ([`Hyp::commit_failed`]).
//!
//! Page states live in the vmemmap, so sharing never touches the host stage-2 (no block is ever
//! split to share). Only pages that leave the host (donation) are written into the host stage-2,
//! as invalid entries annotated with their owner: that is what keeps the lazy fault path from
//! mapping them, and from mapping any block that would cover them.
//!
//! The blocks ([`Hyp::donate_locked`], [`Hyp::give_back_locked`], [`Hyp::hyp_pin_locked`]) take
//! the locked components, so that a larger operation (creating a VM: pin its descriptor, donate
//! its memcache) composes them under one lock.

use pkvm_abi::{Error, PAGE_SHIFT, PAGE_SIZE};
use pkvm_pgtable::Prot;

use pkvm_arch::addr::Pfn;

use crate::hyp::Hyp;
use crate::mm::{HostMmu, HypMmu};
use crate::platform::Platform;
use crate::sync::AtomicFamily;
use crate::vmemmap::{HypPage, HypUse, PageState};

/// Owner id written into host stage-2 annotations for pages the hypervisor owns (memory, and
/// device ranges hidden from the host).
pub const HYP_OWNER_ID: u8 = 1;
/// Owner id of host stage-2 annotations over device registers EL2 traps and emulates for the
/// host ([`crate::devices::DeviceKind::GicrRdBase`]).
pub const EMULATED_MMIO_OWNER_ID: u8 = 2;

/// Largest share count, and largest count of EL2's own pins; one more is refused with `EBUSY`.
/// (8 with the `small-counts` feature, for the simulator.)
pub const MAX_COUNT: u16 = if cfg!(feature = "small-counts") {
    8
} else {
    u16::MAX
};
/// Largest count of host (debug) pins of a page; one more is refused with `EBUSY`. (4 with
/// the `small-counts` feature.)
pub const MAX_HOST_PINS: u8 = if cfg!(feature = "small-counts") {
    4
} else {
    u8::MAX
};

#[cfg(all(feature = "small-counts", target_os = "none"))]
compile_error!("`small-counts` is for the simulator: the EL2 image needs the real limits");

/// Prot of EL2's mappings of host memory shared with or donated to it.
pub const HYP_SHARED_PROT: Prot = Prot::R.union(Prot::W);

// ---- Page predicates: what a page must look like for a transition. ----

/// Whether the page is shared by the host with EL2: (SHARED_OWNED, SHARED_BORROWED), count > 0.
#[inline]
pub(crate) fn is_shared_with_hyp<A: AtomicFamily>(p: &HypPage<A>) -> bool {
    p.host_state() == PageState::SharedOwned
        && p.hyp_state() == PageState::SharedBorrowed
        && p.share_count() > 0
}

/// Whether the page is shared by the host into a guest: (SHARED_OWNED, NOPAGE), count 1 (the
/// guest side is a software bit of the guest's stage-2 leaf).
#[inline]
pub(crate) fn is_guest_shared<A: AtomicFamily>(p: &HypPage<A>) -> bool {
    p.host_state() == PageState::SharedOwned
        && p.hyp_state() == PageState::NoPage
        && p.share_count() == 1
}

/// Whether anyone — EL2 for a structure it uses, or the host through the debug pin call —
/// pins the page (then it cannot be unshared).
#[inline]
pub(crate) fn is_pinned<A: AtomicFamily>(p: &HypPage<A>) -> bool {
    p.refcount() != 0 || p.host_pins() != 0
}

/// Whether the page is the host's alone: (OWNED, NOPAGE), shared with nobody, pinned by
/// nobody. The precondition of every transition that takes a page away from the host.
#[inline]
pub(crate) fn is_host_exclusive<A: AtomicFamily>(p: &HypPage<A>) -> bool {
    p.host_state() == PageState::Owned
        && p.hyp_state() == PageState::NoPage
        && p.share_count() == 0
        && !is_pinned(p)
}

/// Whether EL2 holds the page donated and unused ([`HypUse::Idle`]): the only pages it gives
/// back on request.
#[inline]
fn is_hyp_idle(p: &HypPage) -> bool {
    p.host_state() == PageState::NoPage
        && p.hyp_state() == PageState::Owned
        && p.hyp_use() == HypUse::Idle
        && p.share_count() == 0
        && p.refcount() == 0
}

/// `EPERM` unless `ok`.
#[inline]
pub(crate) fn perm_unless(ok: bool) -> Result<(), Error> {
    if ok { Ok(()) } else { Err(Error::Perm) }
}

/// `EBUSY` if `saturated` (a count that cannot grow), else `Ok`.
#[inline]
pub(crate) fn busy_if(saturated: bool) -> Result<(), Error> {
    if saturated { Err(Error::Busy) } else { Ok(()) }
}

/// Checks every page of a range with `check`: any error but `EBUSY` stops at the first page
/// that fails it; `EBUSY` (a count that would saturate) is reported only if no page fails
/// otherwise — so `EPERM` beats `EBUSY` whatever the order of the pages.
#[inline(always)]
pub fn check_pages<A: AtomicFamily>(
    pages: &[HypPage<A>],
    mut check: impl FnMut(&HypPage<A>) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut busy = false;
    for p in pages {
        match check(p) {
            Ok(()) => {}
            Err(Error::Busy) => busy = true,
            Err(e) => return Err(e),
        }
    }
    busy_if(busy)
}

/// The per-page kernels of the counting transitions: what each checks of a page, and how it
/// changes the page's counts and states. A transition runs them over its range with both
/// locks held — [`check_pages`] with the check, then the step on every page — which is the
/// whole of their synchronisation: every field they read or write is written only with both
/// locks held (the module documentation of [`crate::vmemmap`]), so each is a plain load or
/// store. The `loom` tests of `crates/race` run these same functions over `loom`'s atomics
/// under modelled locks.
pub mod kernel {
    use pkvm_abi::Error;

    use super::{MAX_COUNT, MAX_HOST_PINS, busy_if, is_pinned, is_shared_with_hyp, perm_unless};
    use crate::sync::AtomicFamily;
    use crate::vmemmap::{HypPage, PageState};

    /// `host_share_hyp`'s check: (OWNED, NOPAGE) with count 0 (then `*fresh` is set), or
    /// shared with EL2 with a count that can grow (`EBUSY` at [`MAX_COUNT`]); else `EPERM`.
    ///
    /// # Errors
    /// As above.
    #[inline(always)]
    pub fn share_check<A: AtomicFamily>(p: &HypPage<A>, fresh: &mut bool) -> Result<(), Error> {
        match (p.host_state(), p.hyp_state(), p.share_count()) {
            (PageState::Owned, PageState::NoPage, 0) => {
                *fresh = true;
                Ok(())
            }
            (PageState::SharedOwned, PageState::SharedBorrowed, n) if n > 0 => {
                busy_if(n == MAX_COUNT)
            }
            _ => Err(Error::Perm),
        }
    }

    /// `host_share_hyp`'s step for a range with a fresh page: count + 1, a fresh page becomes
    /// (SHARED_OWNED, SHARED_BORROWED). Returns whether it was fresh (EL2 must map it).
    #[inline(always)]
    pub fn share_step<A: AtomicFamily>(p: &HypPage<A>) -> bool {
        let n = p.share_count();
        p.set_share_count(n + 1);
        if n == 0 {
            p.set_host_state(PageState::SharedOwned);
            p.set_hyp_state(PageState::SharedBorrowed);
        }
        n == 0
    }

    /// `host_share_hyp`'s step when every page of the range is shared already: count + 1.
    #[inline(always)]
    pub fn reshare_step<A: AtomicFamily>(p: &HypPage<A>) {
        p.set_share_count(p.share_count() + 1);
    }

    /// `host_unshare_hyp`'s check: shared with EL2 (`EPERM`), pinned by nobody (`EBUSY`).
    ///
    /// # Errors
    /// As above.
    #[inline(always)]
    pub fn unshare_check<A: AtomicFamily>(p: &HypPage<A>) -> Result<(), Error> {
        perm_unless(is_shared_with_hyp(p))?;
        busy_if(is_pinned(p))
    }

    /// `host_unshare_hyp`'s step: count − 1; at 0 the page is the host's alone again.
    /// Returns whether it reached 0 (EL2 must unmap it).
    #[inline(always)]
    pub fn unshare_step<A: AtomicFamily>(p: &HypPage<A>) -> bool {
        let n = p.share_count() - 1;
        p.set_share_count(n);
        if n == 0 {
            p.set_host_state(PageState::Owned);
            p.set_hyp_state(PageState::NoPage);
        }
        n == 0
    }

    /// The debug pin call's check: shared with EL2 (`EPERM`), host pins below
    /// [`MAX_HOST_PINS`] (`EBUSY`).
    ///
    /// # Errors
    /// As above.
    #[inline(always)]
    pub fn host_pin_check<A: AtomicFamily>(p: &HypPage<A>) -> Result<(), Error> {
        perm_unless(is_shared_with_hyp(p))?;
        busy_if(p.host_pins() == MAX_HOST_PINS)
    }

    /// The debug pin call's step: host pins + 1.
    #[inline(always)]
    pub fn host_pin_step<A: AtomicFamily>(p: &HypPage<A>) {
        p.set_host_pins(p.host_pins() + 1);
    }

    /// The debug unpin call's check: shared with EL2 and holding a host pin (`EPERM`).
    ///
    /// # Errors
    /// As above.
    #[inline(always)]
    pub fn host_unpin_check<A: AtomicFamily>(p: &HypPage<A>) -> Result<(), Error> {
        perm_unless(is_shared_with_hyp(p) && p.host_pins() > 0)
    }

    /// The debug unpin call's step: host pins − 1.
    #[inline(always)]
    pub fn host_unpin_step<A: AtomicFamily>(p: &HypPage<A>) {
        p.set_host_pins(p.host_pins() - 1);
    }

    /// EL2's own pin's check (a VM structure): shared with EL2 (`EPERM`), pins below
    /// [`MAX_COUNT`] (`EBUSY`).
    ///
    /// # Errors
    /// As above.
    #[inline(always)]
    pub fn hyp_pin_check<A: AtomicFamily>(p: &HypPage<A>) -> Result<(), Error> {
        perm_unless(is_shared_with_hyp(p))?;
        busy_if(p.refcount() == MAX_COUNT)
    }

    /// EL2's own pin's step: refcount + 1.
    #[inline(always)]
    pub fn hyp_pin_step<A: AtomicFamily>(p: &HypPage<A>) {
        p.set_refcount(p.refcount() + 1);
    }

    /// Dropping one of EL2's own pins (teardown): refcount − 1, never below 0.
    #[inline(always)]
    pub fn hyp_unpin_step<A: AtomicFamily>(p: &HypPage<A>) {
        p.set_refcount(p.refcount().saturating_sub(1));
    }
}

/// Commits a count change over a range: `step` updates each page and says whether its EL2
/// mapping changes; `on_run(pa, size)` is then called once per maximal run of consecutive such
/// pages (the range starts at `start`). Every page is stepped even if a run fails; the first
/// failure is returned.
#[inline(always)]
fn commit_runs(
    start: u64,
    pages: &[HypPage],
    mut step: impl FnMut(&HypPage) -> bool,
    mut on_run: impl FnMut(u64, u64) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut res = Ok(());
    let mut run: Option<usize> = None;
    let mut flush = |first: usize, end: usize, res: &mut Result<(), Error>| {
        let r = on_run(
            start + first as u64 * PAGE_SIZE,
            (end - first) as u64 * PAGE_SIZE,
        );
        if res.is_ok() {
            *res = r;
        }
    };
    for (i, p) in pages.iter().enumerate() {
        if step(p) {
            run.get_or_insert(i);
        } else if let Some(first) = run.take() {
            flush(first, i, &mut res);
        }
    }
    if let Some(first) = run {
        flush(first, pages.len(), &mut res);
    }
    res
}

/// `[start, end)` of the pages `[pfn, pfn + nr)` (a range [`Hyp::host_range`] accepted, so
/// nothing overflows).
#[inline]
const fn byte_range(pfn: Pfn, nr: u64) -> (u64, u64) {
    (pfn.get() << PAGE_SHIFT, (pfn.get() + nr) << PAGE_SHIFT)
}

impl<'a, P: Platform> Hyp<'a, P> {
    /// `host_share_hyp(pfn, nr_pages)`: shares host pages with EL2.
    ///
    /// A page owned by the host alone goes to (SHARED_OWNED, SHARED_BORROWED) with share count 1
    /// and is mapped read/write at EL2; a page already shared with EL2 gets share count + 1.
    ///
    /// # Errors
    /// `EINVAL`/`ERANGE` for a bad range; `EPERM` if any page is in another state; `EBUSY` if a
    /// share count would overflow; `ENOMEM` if EL2 has no table memory for the new mappings.
    pub fn host_share_hyp(&self, pfn: Pfn, nr: u64) -> Result<(), Error> {
        let pages = self.host_range(pfn, nr)?;
        let (_host, mut hyp) = self.lock_host_hyp();

        let mut fresh = false;
        check_pages(pages, |p| kernel::share_check(p, &mut fresh))?;
        if !fresh {
            // Every page is shared already: only the counts change, no mapping.
            for p in pages {
                kernel::reshare_step(p);
            }
            return Ok(());
        }
        let (start, end) = byte_range(pfn, nr);
        let rsv = hyp.reserve(start, end)?;

        let r = commit_runs(start, pages, kernel::share_step, |pa, size| {
            hyp.map(&rsv, pa, size)
        });
        r.map_err(|e| self.commit_failed("share", e))
    }

    /// `host_unshare_hyp(pfn, nr_pages)`: drops one EL2 share of each page; a page whose count
    /// reaches zero goes back to (OWNED, NOPAGE) and is unmapped from EL2 (with TLB
    /// invalidation) before the call returns.
    ///
    /// # Errors
    /// `EINVAL`/`ERANGE` for a bad range; `EPERM` if any page is not shared with EL2 (both
    /// sides are checked); `EBUSY` if any page is pinned.
    pub fn host_unshare_hyp(&self, pfn: Pfn, nr: u64) -> Result<(), Error> {
        let pages = self.host_range(pfn, nr)?;
        let (_host, mut hyp) = self.lock_host_hyp();

        check_pages(pages, kernel::unshare_check)?;

        let (start, _) = byte_range(pfn, nr);
        let r = commit_runs(start, pages, kernel::unshare_step, |pa, size| {
            hyp.unmap(pa, size)
        });
        r.map_err(|e| self.commit_failed("unshare", e))
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
        pfn: Pfn,
        nr: u64,
        usage: HypUse,
    ) -> Result<(), Error> {
        let pages = self.host_range(pfn, nr)?;
        check_pages(pages, |p| perm_unless(is_host_exclusive(p)))?;
        let (start, end) = byte_range(pfn, nr);
        let host_rsv = host.reserve(start, end)?;
        let hyp_rsv = hyp.reserve(start, end)?;

        let r1 = host.annotate(&host_rsv, start, end - start, HYP_OWNER_ID);
        let r2 = hyp.map(&hyp_rsv, start, end - start);
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
        pfn: Pfn,
        nr: u64,
    ) -> Result<(), Error> {
        let pages = self.host_range(pfn, nr)?;
        let (start, end) = byte_range(pfn, nr);
        let r1 = hyp.unmap(start, end - start);
        let r2 = host.clear(start, end - start);
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
    pub fn host_donate_hyp(&self, pfn: Pfn, nr: u64) -> Result<(), Error> {
        let (mut host, mut hyp) = self.lock_host_hyp();
        self.donate_locked(&mut host, &mut hyp, pfn, nr, HypUse::Idle)
    }

    /// `hyp_donate_host(pfn, nr_pages)` (debug hypercall): EL2 gives back pages the host donated
    /// to it with `host_donate_hyp` and that it does not use ([`HypUse::Idle`]). EL2's own
    /// memory, a VM's memcache (even its free pages) and anything else are refused.
    ///
    /// # Errors
    /// `EINVAL`/`ERANGE` for a bad range; `EPERM` unless every page is (NOPAGE, OWNED) and
    /// idle.
    pub fn hyp_donate_host(&self, pfn: Pfn, nr: u64) -> Result<(), Error> {
        let pages = self.host_range(pfn, nr)?;
        let (start, end) = byte_range(pfn, nr);
        perm_unless(!self.hyp_ranges().iter().any(|&(s, e)| start < e && s < end))?;
        let (mut host, mut hyp) = self.lock_host_hyp();
        check_pages(pages, |p| perm_unless(is_hyp_idle(p)))?;
        self.give_back_locked(&mut host, &mut hyp, pfn, nr)
    }

    /// EL2 pins `[pfn, pfn + nr)` (shared with it) for a structure it uses, with both locks held.
    /// These pins are EL2's own ([`HypPage::refcount`]): nothing the host does can drop them.
    ///
    /// # Errors
    /// Range errors; `EPERM` if any page is not shared with EL2; `EBUSY` if a count would
    /// overflow.
    pub(crate) fn hyp_pin_locked(&self, pfn: Pfn, nr: u64) -> Result<(), Error> {
        let pages = self.host_range(pfn, nr)?;
        check_pages(pages, kernel::hyp_pin_check)?;
        for p in pages {
            kernel::hyp_pin_step(p);
        }
        Ok(())
    }

    /// Drops one of EL2's own pins of `[pfn, pfn + nr)`, both locks held.
    pub(crate) fn hyp_unpin_locked(&self, (pfn, nr): (Pfn, u64)) {
        if let Ok(pages) = self.host_range(pfn, nr) {
            for p in pages {
                kernel::hyp_unpin_step(p);
            }
        }
    }
}
