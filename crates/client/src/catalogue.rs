//! The negative catalogue as data: every request EL2 must refuse, with its exact error, the
//! calls that set the stage before it and the calls that clean up after it. The simulator
//! (`crates/sim/tests/catalogue.rs`: the spec checker and the structural invariants after every
//! call) and the test host's `selftest` (an unchanged-statistics check around every refused
//! call, on QEMU) both iterate [`CATALOGUE`]; [`TRANSITION_SCRIPT`] is the transition
//! script, run by both the same way.
//!
//! A case names pages by [`Place`]: its own fresh host pages, or places every machine has
//! (EL2's memory, a device page, the end of RAM, the end of the PA space, ...). A machine
//! describes its places in a [`Places`]; a case naming a place the machine lacks is skipped
//! there (the runners say which, and check the list).

use crate::{Client, HcallError, Transport};
use pkvm_abi::{Error, PAGE_SHIFT};

/// The page-range (and debug-read) operations of the ownership state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `host_share_hyp(pfn, nr)`.
    ShareHyp,
    /// `host_unshare_hyp(pfn, nr)`.
    UnshareHyp,
    /// `host_donate_hyp(pfn, nr)`.
    DonateHyp,
    /// Debug `hyp_donate_host(pfn, nr)`.
    HypDonateHost,
    /// Debug pin.
    Pin,
    /// Debug unpin.
    Unpin,
    /// Debug read of the `u64` at `pa`; the call's `arg` is the byte offset into the page.
    DebugRead,
}

impl Op {
    /// The hypercall's name as the logs spell it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Op::ShareHyp => "share_hyp",
            Op::UnshareHyp => "unshare_hyp",
            Op::DonateHyp => "donate_hyp",
            Op::HypDonateHost => "hyp_donate_host",
            Op::Pin => "pin",
            Op::Unpin => "unpin",
            Op::DebugRead => "debug_read",
        }
    }

    /// Whether only the debug (test) build of EL2 offers it.
    #[must_use]
    pub const fn is_debug(self) -> bool {
        !matches!(self, Op::ShareHyp | Op::UnshareHyp | Op::DonateHyp)
    }

    /// Issues the operation: `(pfn, nr)`, or for [`Op::DebugRead`] `pa` (`pfn` is then a
    /// physical address) with `nr` unused.
    ///
    /// # Errors
    /// The hypercall's.
    pub fn issue<T: Transport>(self, c: &Client<T>, pfn: u64, nr: u64) -> Result<(), HcallError> {
        match self {
            Op::ShareHyp => c.share_hyp(pfn, nr),
            Op::UnshareHyp => c.unshare_hyp(pfn, nr),
            Op::DonateHyp => c.donate_hyp(pfn, nr),
            Op::HypDonateHost => c.hyp_donate_host(pfn, nr),
            Op::Pin => c.pin(pfn, nr),
            Op::Unpin => c.unpin(pfn, nr),
            Op::DebugRead => c.hyp_read(pfn).map(|_| ()),
        }
    }
}

/// A page a case names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Page `n` of the case's own run of fresh host pages ([`Case::pages`] of them).
    Own(u64),
    /// The first page of EL2's carve-out (EL2's own memory).
    Carveout,
    /// The first page of EL2's image region (below the host image on QEMU `virt`).
    El2Image,
    /// A device page (the console UART).
    Mmio,
    /// The page right after the last RAM region, when it is inside the PA space and not RAM.
    RamEnd,
    /// The page right after a RAM region that another RAM region follows (a hole).
    RamGap,
    /// The first page of the last RAM region.
    LastRamStart,
    /// The first page frame beyond the physical address space.
    PaEnd,
    /// A page frame number, as is.
    Pfn(u64),
}

/// Where a machine has the [`Place`]s (`None`: it has no such place).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Places {
    /// [`Place::Carveout`].
    pub carveout: Option<u64>,
    /// [`Place::El2Image`].
    pub el2_image: Option<u64>,
    /// [`Place::Mmio`].
    pub mmio: Option<u64>,
    /// [`Place::RamEnd`].
    pub ram_end: Option<u64>,
    /// [`Place::RamGap`].
    pub ram_gap: Option<u64>,
    /// [`Place::LastRamStart`].
    pub last_ram_start: Option<u64>,
    /// [`Place::PaEnd`].
    pub pa_end: Option<u64>,
}

impl Places {
    /// The pfn of `place` for a case whose own pages start at `own`.
    #[must_use]
    pub const fn pfn(&self, place: Place, own: u64) -> Option<u64> {
        match place {
            Place::Own(n) => Some(own + n),
            Place::Carveout => self.carveout,
            Place::El2Image => self.el2_image,
            Place::Mmio => self.mmio,
            Place::RamEnd => self.ram_end,
            Place::RamGap => self.ram_gap,
            Place::LastRamStart => self.last_ram_start,
            Place::PaEnd => self.pa_end,
            Place::Pfn(p) => Some(p),
        }
    }
}

/// One call as data: `op` on the page at `at` (moved by `delta` pages), with `arg` (the
/// number of pages, or for [`Op::DebugRead`] the byte offset into the page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// The operation.
    pub op: Op,
    /// The page.
    pub at: Place,
    /// Pages to move from `at` (wrapping), e.g. `-1` for the page before it.
    pub delta: i64,
    /// Number of pages, or the debug read's byte offset.
    pub arg: u64,
}

impl Call {
    /// `op(at, arg)`.
    #[must_use]
    pub const fn new(op: Op, at: Place, arg: u64) -> Self {
        Call {
            op,
            at,
            delta: 0,
            arg,
        }
    }

    /// The same call `delta` pages further.
    #[must_use]
    pub const fn moved(self, delta: i64) -> Self {
        Call { delta, ..self }
    }

    /// The call with its page resolved on a machine, or `None` if it lacks the place.
    #[must_use]
    pub const fn resolve(&self, places: &Places, own: u64) -> Option<Resolved> {
        let Some(pfn) = places.pfn(self.at, own) else {
            return None;
        };
        let pfn = pfn.wrapping_add_signed(self.delta);
        Some(match self.op {
            Op::DebugRead => Resolved {
                op: self.op,
                addr: (pfn << PAGE_SHIFT).wrapping_add(self.arg),
                arg: 0,
            },
            op => Resolved {
                op,
                addr: pfn,
                arg: self.arg,
            },
        })
    }
}

/// A call with real numbers: `op(addr, arg)`, `addr` a pfn (a physical address for
/// [`Op::DebugRead`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The operation.
    pub op: Op,
    /// Pfn, or physical address for [`Op::DebugRead`].
    pub addr: u64,
    /// Number of pages (0 for [`Op::DebugRead`]).
    pub arg: u64,
}

impl Resolved {
    /// Issues it.
    ///
    /// # Errors
    /// The hypercall's.
    pub fn issue<T: Transport>(&self, c: &Client<T>) -> Result<(), HcallError> {
        self.op.issue(c, self.addr, self.arg)
    }
}

impl core::fmt::Display for Resolved {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.op {
            Op::DebugRead => write!(f, "debug_read({:#x})", self.addr),
            op => write!(f, "{}({:#x}, {})", op.name(), self.addr, self.arg),
        }
    }
}

/// One negative case: `setup` (each call must succeed), then `call`, which must fail with
/// `want` and change nothing, then `cleanup` (each must succeed, and leaves the case's pages
/// as it found them: the host's, unshared).
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// The check's name.
    pub name: &'static str,
    /// Fresh host pages the case needs (contiguous, never touched; [`Place::Own`]).
    pub pages: u64,
    /// Calls that set the stage.
    pub setup: &'static [Call],
    /// The refused call.
    pub call: Call,
    /// Its error.
    pub want: Error,
    /// Calls that undo the setup (and show nothing was left half-done).
    pub cleanup: &'static [Call],
}

impl Case {
    /// Every call of the case in order, each with the result it must have; `None` if the
    /// machine lacks one of the places it names.
    pub fn steps(
        &self,
        places: &Places,
        own: u64,
    ) -> Option<impl Iterator<Item = (Resolved, Result<(), Error>)> + use<>> {
        let ok = |c: &Call| c.resolve(places, own).map(|r| (r, Ok(())));
        let mut all = [None; MAX_STEPS];
        let calls = self.setup.iter().map(ok).chain(core::iter::once(
            self.call.resolve(places, own).map(|r| (r, Err(self.want))),
        ));
        for (slot, s) in all.iter_mut().zip(calls.chain(self.cleanup.iter().map(ok))) {
            *slot = Some(s?);
        }
        Some(all.into_iter().flatten())
    }

    /// Whether any call of the case needs the debug hypercalls.
    #[must_use]
    pub fn needs_debug(&self) -> bool {
        self.setup
            .iter()
            .chain(self.cleanup)
            .chain(core::iter::once(&self.call))
            .any(|c| c.op.is_debug())
    }
}

/// Most calls in one case (setup, the refused call, cleanup).
pub const MAX_STEPS: usize = 8;

const _: () = {
    let mut i = 0;
    while i < CATALOGUE.len() {
        let c = &CATALOGUE[i];
        assert!(
            c.setup.len() + 1 + c.cleanup.len() <= MAX_STEPS,
            "a case longer than MAX_STEPS"
        );
        i += 1;
    }
};

use Op::{DebugRead, DonateHyp, HypDonateHost, Pin, ShareHyp, Unpin, UnshareHyp};
use Place::{Carveout, El2Image, LastRamStart, Mmio, Own, PaEnd, Pfn, RamEnd, RamGap};

const fn c(op: Op, at: Place, arg: u64) -> Call {
    Call::new(op, at, arg)
}

/// The pages of its own a list of calls uses: one past the highest [`Place::Own`] index.
const fn own_pages(calls: &[Call]) -> u64 {
    let (mut n, mut i) = (0, 0);
    while i < calls.len() {
        if let Place::Own(k) = calls[i].at {
            let end = k + if calls[i].arg > 1 && !matches!(calls[i].op, Op::DebugRead) {
                calls[i].arg
            } else {
                1
            };
            if end > n {
                n = end;
            }
        }
        i += 1;
    }
    n
}

const fn max(a: u64, b: u64) -> u64 {
    if a > b { a } else { b }
}

/// A case; its [`Case::pages`] are what its calls name.
const fn case(
    name: &'static str,
    setup: &'static [Call],
    call: Call,
    want: Error,
    cleanup: &'static [Call],
) -> Case {
    let pages = max(
        max(own_pages(setup), own_pages(cleanup)),
        own_pages(&[call]),
    );
    Case {
        name,
        pages,
        setup,
        call,
        want,
        cleanup,
    }
}

const SHARE: Call = c(ShareHyp, Own(0), 1);
const UNSHARE: Call = c(UnshareHyp, Own(0), 1);
const DONATE: Call = c(DonateHyp, Own(0), 1);
const RECLAIM: Call = c(HypDonateHost, Own(0), 1);
const PIN: Call = c(Pin, Own(0), 1);
const UNPIN: Call = c(Unpin, Own(0), 1);
/// Page 3 donated, pages 0..3 shared, page 2 pinned; and back.
const LAST_BAD: &[Call] = &[
    c(DonateHyp, Own(3), 1),
    c(ShareHyp, Own(0), 3),
    c(Pin, Own(2), 1),
];
const LAST_BAD_UNDO: &[Call] = &[
    c(Unpin, Own(2), 1),
    c(UnshareHyp, Own(0), 3),
    c(HypDonateHost, Own(3), 1),
];
const PERM: Error = Error::Perm;
const INVAL: Error = Error::Inval;

/// The negative catalogue: name, setup, the refused call, its error, cleanup.
#[rustfmt::skip]
pub const CATALOGUE: &[Case] = &[
    // Unshares of what is not shared.
    case("double unshare: second unshare -> EPERM", &[SHARE, UNSHARE], UNSHARE, PERM, &[]),
    case("unshare a page never shared -> EPERM", &[], UNSHARE, PERM, &[SHARE, UNSHARE]),
    // EL2's own memory.
    case("share EL2's carve-out -> EPERM", &[], c(ShareHyp, Carveout, 1), PERM, &[]),
    case("donate EL2's carve-out -> EPERM", &[], c(DonateHyp, Carveout, 1), PERM, &[]),
    case("hyp_donate_host EL2's carve-out -> EPERM", &[], c(HypDonateHost, Carveout, 1), PERM, &[]),
    case("share EL2's image region -> EPERM", &[], c(ShareHyp, El2Image, 1), PERM, &[]),
    case("hyp_donate_host EL2's image region -> EPERM", &[], c(HypDonateHost, El2Image, 1), PERM, &[]),
    case("share a page donated to EL2 -> EPERM", &[DONATE], SHARE, PERM, &[RECLAIM]),
    // Not memory, or not in the address space.
    case("share MMIO (the UART page) -> EINVAL", &[], c(ShareHyp, Mmio, 1), INVAL, &[]),
    case("donate MMIO (the UART page) -> EINVAL", &[], c(DonateHyp, Mmio, 1), INVAL, &[]),
    case("share a hole with no RAM (just above RAM) -> EINVAL", &[], c(ShareHyp, RamEnd, 1), INVAL, &[]),
    case("share a hole between two RAM regions -> EINVAL", &[], c(ShareHyp, RamGap, 1), INVAL, &[]),
    case("share beyond the PA space -> ERANGE", &[], c(ShareHyp, PaEnd, 1), Error::Range, &[]),
    case("share a range ending beyond the PA space -> ERANGE",
        &[], c(ShareHyp, PaEnd, 2).moved(-1), Error::Range, &[]),
    case("share a range straddling the end of RAM -> EINVAL",
        &[], c(ShareHyp, RamEnd, 2).moved(-1), INVAL, &[]),
    case("share a range straddling MMIO and RAM -> EINVAL",
        &[], c(ShareHyp, LastRamStart, 2).moved(-1), INVAL, &[]),
    // A range whose last page is bad.
    case("share a range whose last page is donated -> EPERM",
        &[c(DonateHyp, Own(3), 1)], c(ShareHyp, Own(0), 4), PERM, &[c(HypDonateHost, Own(3), 1)]),
    case("unshare a range whose last page is pinned -> EBUSY",
        LAST_BAD, c(UnshareHyp, Own(0), 3), Error::Busy, LAST_BAD_UNDO),
    case("unshare a range with a pinned page and an unshared one -> EPERM (beats EBUSY)",
        LAST_BAD, c(UnshareHyp, Own(0), 4), PERM, LAST_BAD_UNDO),
    // Overflow and zero length.
    case("share pfn u64::MAX -> EINVAL", &[], c(ShareHyp, Pfn(u64::MAX), 1), INVAL, &[]),
    case("share nr u64::MAX (pfn + nr overflows) -> EINVAL", &[], c(ShareHyp, Pfn(1), u64::MAX), INVAL, &[]),
    case("donate pfn + nr overflow -> EINVAL", &[], c(DonateHyp, Pfn(u64::MAX - 1), 4), INVAL, &[]),
    case("share zero pages -> EINVAL", &[], c(ShareHyp, Own(0), 0), INVAL, &[]),
    case("unshare zero pages -> EINVAL", &[], c(UnshareHyp, Own(0), 0), INVAL, &[]),
    case("donate zero pages -> EINVAL", &[], c(DonateHyp, Own(0), 0), INVAL, &[]),
    // Pins.
    case("unshare while pinned -> EBUSY", &[SHARE, PIN], UNSHARE, Error::Busy, &[UNPIN, UNSHARE]),
    case("donate a shared, pinned page -> EPERM", &[SHARE, PIN], DONATE, PERM, &[UNPIN, UNSHARE]),
    case("unpin a page not pinned -> EPERM", &[SHARE, PIN, UNPIN], UNPIN, PERM, &[UNSHARE]),
    // Donations of what the host does not own alone.
    case("donate a shared page -> EPERM", &[SHARE], DONATE, PERM, &[UNSHARE]),
    case("hyp_donate_host a shared page -> EPERM", &[SHARE], RECLAIM, PERM, &[UNSHARE]),
    case("hyp_donate_host a host page -> EPERM", &[], RECLAIM, PERM, &[DONATE, RECLAIM]),
    // Debug-call arguments.
    case("DebugRead of a misaligned address -> EINVAL", &[], c(DebugRead, Own(0), 4), INVAL, &[]),
];

/// One step of [`TRANSITION_SCRIPT`]: the operation on the script's page, its result, and
/// whether EL2 then reads the page for the host (`None`: not checked).
#[derive(Clone, Copy, Debug)]
pub struct ScriptStep {
    /// The check's name.
    pub name: &'static str,
    /// The operation, on one page.
    pub op: Op,
    /// Its result.
    pub want: Result<(), Error>,
    /// Whether a debug read of the page then succeeds (it does exactly while the page is
    /// shared with EL2; a donated page is EL2's and mapped there, but not readable for the
    /// host).
    pub readable: Option<bool>,
}

const fn step(
    name: &'static str,
    op: Op,
    want: Result<(), Error>,
    readable: Option<bool>,
) -> ScriptStep {
    ScriptStep {
        name,
        op,
        want,
        readable,
    }
}

const EPERM: Result<(), Error> = Err(Error::Perm);

/// The transition script (the upstream boot selftest, adapted) on one host page; the
/// page ends donated to EL2 (a runner gives it back).
#[rustfmt::skip]
pub const TRANSITION_SCRIPT: &[ScriptStep] = &[
    step("script 0: donate_hyp a host page -> 0 (not shared: no debug read)", DonateHyp, Ok(()), Some(false)),
    step("script 1: (NOPAGE, OWNED) donate_hyp -> EPERM", DonateHyp, EPERM, None),
    step("script 1: (NOPAGE, OWNED) share_hyp -> EPERM", ShareHyp, EPERM, None),
    step("script 1: (NOPAGE, OWNED) unshare_hyp -> EPERM", UnshareHyp, EPERM, None),
    step("script 1: (NOPAGE, OWNED) pin -> EPERM", Pin, EPERM, None),
    step("script 2: hyp_donate_host -> 0, (OWNED, NOPAGE)", HypDonateHost, Ok(()), Some(false)),
    step("script 2: hyp_donate_host again -> EPERM", HypDonateHost, EPERM, None),
    step("script 2: (OWNED, NOPAGE) unshare_hyp -> EPERM", UnshareHyp, EPERM, None),
    step("script 2: (OWNED, NOPAGE) pin -> EPERM", Pin, EPERM, None),
    step("script 3: share_hyp -> 0, count 1", ShareHyp, Ok(()), Some(true)),
    step("script 3: (SHARED_OWNED, SHARED_BORROWED) donate_hyp -> EPERM", DonateHyp, EPERM, None),
    step("script 3: (SHARED_OWNED, SHARED_BORROWED) hyp_donate_host -> EPERM", HypDonateHost, EPERM, None),
    step("script 3: share_hyp again -> 0, count 2", ShareHyp, Ok(()), Some(true)),
    step("script 3: unshare_hyp -> 0, count 1, still mapped at EL2", UnshareHyp, Ok(()), Some(true)),
    step("script 4: pin -> 0", Pin, Ok(()), None),
    step("script 4: pin again -> 0", Pin, Ok(()), None),
    step("script 4: unpin -> 0 (pinned once)", Unpin, Ok(()), None),
    step("script 4: unshare_hyp while pinned -> EBUSY", UnshareHyp, Err(Error::Busy), Some(true)),
    step("script 5: unpin -> 0", Unpin, Ok(()), None),
    step("script 5: unshare_hyp -> 0, (OWNED, NOPAGE), EL2 mapping gone", UnshareHyp, Ok(()), Some(false)),
    step("script 6: unshare_hyp -> EPERM", UnshareHyp, EPERM, None),
    step("script 6: donate_hyp -> 0, (NOPAGE, OWNED)", DonateHyp, Ok(()), Some(false)),
];
