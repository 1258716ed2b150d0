//! The `selftest` scenario: the ownership state machine exercised over real hypercalls with real
//! addresses, checked against the documented contract (BRIEF §1/§3, `crates/sim` shows the
//! exact expected behaviour):
//!
//! 1. the brief's transition script on one page;
//! 2. the negative catalogue of `crates/sim/tests/catalogue.rs`, each refused call with its
//!    exact error and an unchanged EL2 state (Stat before and after), followed by the
//!    legal operation to show nothing was left half-done;
//! 3. `share_hyp(obj)` of two objects in one page, and of one straddling two pages;
//! 4. host writes seen by EL2 through its own mapping (DebugRead);
//! 5. illegal host accesses (a donated page, EL2's carve-out and image) answered by an injected
//!    synchronous external abort that the host survives;
//! 6. at the end, nothing left behind: no host page mapped at EL2 or shared, the EL2 pool back
//!    to its size at the start.

use crate::checks::Checks;
use crate::env::Env;
use crate::fault::{self, Abort, probe_read, probe_write};
use crate::pkvm::{self, HcallError};
use core::sync::atomic::{AtomicU64, Ordering};
use pkvm_abi::{Error, PAGE_SHIFT, PAGE_SIZE, Stat, features};

/// Largest EL2 share count (`u16::MAX` in `crates/hyp`); one more share is `EBUSY`.
const MAX_SHARE_COUNT: u64 = u16::MAX as u64;

/// Whether EL2 offers the debug hypercalls (the test build).
static DEBUG_EL2: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// The EL2 statistics a refused call must leave unchanged.
const WATCHED: [Stat; 5] = [
    Stat::HypMappedHostPages,
    Stat::SharedPages,
    Stat::PoolFreePages,
    Stat::TablePages,
    Stat::InjectedAborts,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Snapshot([u64; WATCHED.len()]);

impl Snapshot {
    fn take() -> Result<Self, HcallError> {
        let mut s = [0; WATCHED.len()];
        for (v, &st) in s.iter_mut().zip(&WATCHED) {
            *v = pkvm::stat(st)?;
        }
        Ok(Snapshot(s))
    }

    fn get(&self, s: Stat) -> u64 {
        WATCHED
            .iter()
            .position(|&w| w == s)
            .map_or(0, |i| self.0[i])
    }
}

impl core::fmt::Display for Snapshot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "mapped {} shared {} pool-free {} tables {} aborts {}",
            self.0[0], self.0[1], self.0[2], self.0[3], self.0[4]
        )
    }
}

/// The page-range operations of the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Share,
    Unshare,
    Donate,
    HypDonateHost,
    Pin,
    Unpin,
}

impl Op {
    fn run(self, pfn: u64, nr: u64) -> Result<(), HcallError> {
        match self {
            Op::Share => pkvm::share_hyp_pfns(pfn, nr),
            Op::Unshare => pkvm::unshare_hyp_pfns(pfn, nr),
            Op::Donate => pkvm::donate_hyp_pfns(pfn, nr),
            Op::HypDonateHost => pkvm::hyp_donate_host_pfns(pfn, nr),
            Op::Pin => pkvm::pin_pfns(pfn, nr),
            Op::Unpin => pkvm::unpin_pfns(pfn, nr),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Op::Share => "share_hyp",
            Op::Unshare => "unshare_hyp",
            Op::Donate => "donate_hyp",
            Op::HypDonateHost => "hyp_donate_host",
            Op::Pin => "pin",
            Op::Unpin => "unpin",
        }
    }
}

fn show(r: Result<(), HcallError>) -> &'static str {
    match r {
        Ok(()) => "0",
        Err(HcallError::Errno(e)) => e.name(),
        Err(HcallError::NotSupported(_)) => "NOT_SUPPORTED",
    }
}

/// Runs `op(pfn, nr)`, which must succeed.
fn ok(c: &mut Checks, name: &'static str, op: Op, pfn: u64, nr: u64) -> bool {
    let r = op.run(pfn, nr);
    c.check(
        name,
        r.is_ok(),
        format_args!("{}({pfn:#x}, {nr}) -> {}", op.name(), show(r)),
    )
}

/// Runs `op(pfn, nr)`, which must fail with `want` and leave EL2's state unchanged.
fn refused(c: &mut Checks, name: &'static str, op: Op, pfn: u64, nr: u64, want: Error) -> bool {
    let before = Snapshot::take();
    let r = op.run(pfn, nr);
    let after = Snapshot::take();
    let call_ok = r == Err(HcallError::Errno(want));
    match (before, after) {
        (Ok(b), Ok(a)) if a == b => c.check(
            name,
            call_ok,
            format_args!(
                "{}({pfn:#x}, {nr}) -> {} (want {}), state unchanged",
                op.name(),
                show(r),
                want.name()
            ),
        ),
        (Ok(b), Ok(a)) => c.check(
            name,
            false,
            format_args!(
                "{}({pfn:#x}, {nr}) -> {} (want {}), state CHANGED: before {b}, after {a}",
                op.name(),
                show(r),
                want.name()
            ),
        ),
        (b, a) => c.check(
            name,
            false,
            format_args!(
                "{}({pfn:#x}, {nr}) -> {} (want {}); Stat failed: {:?} / {:?}",
                op.name(),
                show(r),
                want.name(),
                b.err(),
                a.err()
            ),
        ),
    }
}

/// Checks whether EL2 reads `pa` for the host (DebugRead succeeds: the page is shared with
/// EL2) or not (`EPERM`: not shared, whether it is the host's, donated, or EL2's own).
fn hyp_maps(c: &mut Checks, name: &'static str, pa: u64, want: bool) -> bool {
    if !DEBUG_EL2.load(Ordering::Relaxed) {
        // Production EL2: no debug read (its refusal is checked once, in `production`).
        return true;
    }
    let r = pkvm::hyp_read(pa);
    let got = match r {
        Ok(_) => Some(true),
        Err(HcallError::Errno(Error::Perm)) => Some(false),
        Err(_) => None,
    };
    c.check(
        name,
        got == Some(want),
        format_args!(
            "DebugRead({pa:#x}) -> {}, want {}",
            match r {
                Ok(_) => "mapped",
                Err(HcallError::Errno(e)) => e.name(),
                Err(HcallError::NotSupported(_)) => "NOT_SUPPORTED",
            },
            if want { "mapped" } else { "EPERM" }
        ),
    )
}

fn stat_or_max(s: Stat) -> u64 {
    pkvm::stat(s).unwrap_or(u64::MAX)
}

/// Host write to memory it owns; an abort is reported as a failed check by the caller.
fn write(pa: u64, v: u64) -> Result<(), Abort> {
    // SAFETY: `pa` is 8-byte aligned, in a page the scenario took from the allocator (or a
    // static this module owns); no Rust reference to it exists.
    unsafe { probe_write(pa, v) }
}

fn read(pa: u64) -> Result<u64, Abort> {
    // SAFETY: as in `write`; reading RAM has no side effect.
    unsafe { probe_read(pa) }
}

/// Runs the scenario: all of it against the debug EL2 (`cargo xtask run --debug-el2`); against
/// the production EL2 (`cargo xtask run`), the parts that do not need the debug hypercalls,
/// after checking that every one of them is refused.
pub fn run(c: &mut Checks, env: &mut Env) {
    let features = pkvm::version().map(|(_, f)| f);
    let want = features::RANGES | features::EL2_REFCOUNT;
    c.check(
        "EL2 advertises ranges and EL2 refcounts",
        features.is_ok_and(|f| f & want == want),
        format_args!("VERSION features {features:x?}"),
    );
    let debug = features.is_ok_and(|f| f & features::DEBUG_HCALLS != 0);
    DEBUG_EL2.store(debug, Ordering::Relaxed);
    println!(
        "selftest: EL2 features {:#x}: {} build",
        features.unwrap_or(0),
        if debug { "debug (test)" } else { "production" }
    );
    print_layout(env);
    if !debug {
        production(c, env);
        return;
    }

    let start = Snapshot::take();
    match start {
        Ok(s) => println!("selftest: EL2 state at start: {s}"),
        Err(e) => println!("selftest: Stat failed: {e}"),
    }
    c.eq(
        "at start: no host page mapped at EL2",
        stat_or_max(Stat::HypMappedHostPages),
        0,
    );
    c.eq(
        "at start: no page shared with EL2",
        stat_or_max(Stat::SharedPages),
        0,
    );

    stage1(c, env);
    transition_script(c, env);
    catalogue(c, env);
    saturation(c, env);
    objects(c, env);
    host_writes_el2_reads(c, env);
    donated_page_aborts(c, env);
    el2_memory_aborts(c, env);

    let end = Snapshot::take();
    println!(
        "selftest: EL2 state at end: {}",
        end.unwrap_or(Snapshot([u64::MAX; 5]))
    );
    c.eq(
        "at end: no host page mapped at EL2",
        stat_or_max(Stat::HypMappedHostPages),
        0,
    );
    c.eq(
        "at end: no page shared with EL2",
        stat_or_max(Stat::SharedPages),
        0,
    );
    c.eq(
        "at end: EL2 pool free pages as at start",
        stat_or_max(Stat::PoolFreePages),
        start.map_or(u64::MAX - 1, |s| s.get(Stat::PoolFreePages)),
    );
}

/// The selftest against the production EL2: the debug hypercalls are refused, and what needs
/// no debug call still holds (stage-1 and injected aborts, share-count saturation, a share
/// round trip with the statistics, a donation the host can no longer touch).
fn production(c: &mut Checks, env: &mut Env) {
    use pkvm_abi::{HostHcall, SMCCC_NOT_SUPPORTED, hvc_fid};
    for id in [
        HostHcall::DebugHypDonateHost,
        HostHcall::DebugPin,
        HostHcall::DebugUnpin,
        HostHcall::DebugRead,
    ] {
        let p = env.pfn();
        let [x0, ..] = crate::hvc::hvc(hvc_fid(id), [p, 1, 0, 0, 0, 0]);
        c.check(
            "production EL2: debug hypercall refused (NOT_SUPPORTED)",
            x0 == SMCCC_NOT_SUPPORTED,
            format_args!("{id:?} -> x0 = {x0:#x}"),
        );
    }
    stage1(c, env);
    saturation(c, env);
    let p = env.pfn();
    let shared0 = stat_or_max(Stat::SharedPages);
    ok(c, "production: share_hyp a page", Op::Share, p, 1);
    c.eq(
        "production: one more page shared",
        stat_or_max(Stat::SharedPages),
        shared0 + 1,
    );
    ok(c, "production: unshare_hyp it", Op::Unshare, p, 1);
    refused(
        c,
        "production: unshare again",
        Op::Unshare,
        p,
        1,
        Error::Perm,
    );
    let pa = env.pages(1, 0);
    let w = write(pa, 1);
    c.check(
        "production: the host writes its page",
        w.is_ok(),
        format_args!("{w:x?}"),
    );
    ok(
        c,
        "production: donate_hyp it (it stays EL2's: no give-back without the debug call)",
        Op::Donate,
        pa >> PAGE_SHIFT,
        1,
    );
    injected(
        c,
        "production: host read of the donated page gets an injected abort",
        read(pa),
        pa,
        Access::Read,
    );
    el2_memory_aborts(c, env);
    c.eq(
        "production: at end, no page shared with EL2",
        stat_or_max(Stat::SharedPages),
        0,
    );
    println!(
        "selftest: production EL2: the transition script, the catalogue, read-back and \
         give-back checks need the debug hypercalls (cargo xtask run --debug-el2)"
    );
}

fn print_layout(env: &Env) {
    for r in env.ram.ranges() {
        println!("selftest: RAM {r}");
    }
    for (i, r) in env.reserved().iter().enumerate() {
        let kind = if i < env.memreserve().len() {
            "/memreserve/"
        } else {
            "/reserved-memory"
        };
        println!("selftest: {kind} {r}");
    }
    println!(
        "selftest: host image {}, DTB {}, EL2 image region {}, {}-bit PA",
        env.image.image,
        env.dtb,
        env.el2_image(),
        env.pa_bits
    );
    println!(
        "selftest: free RAM for test pages: {} MiB in {} ranges",
        env.free().total() >> 20,
        env.free().ranges().len()
    );
    match env.carveout() {
        Some(co) => println!("selftest: EL2 carve-out {co} (highest /memreserve/ entry)"),
        None => println!("selftest: no EL2 carve-out in /memreserve/"),
    }
}

/// The host's own stage-1: MMU and caches on, guard pages unmapped, code read-only. These
/// faults are the host's (stage-1 translation/permission faults), not EL2's.
fn stage1(c: &mut Checks, env: &mut Env) {
    println!("selftest: host stage-1");
    let sctlr = {
        use aarch64_cpu::registers::{Readable, SCTLR_EL1};
        SCTLR_EL1.get()
    };
    c.check(
        "stage-1: MMU, data and instruction caches on",
        sctlr & 0b1_0000_0000_0101 == 0b1_0000_0000_0101,
        format_args!("SCTLR_EL1 {sctlr:#x}"),
    );
    let aborts0 = stat_or_max(Stat::InjectedAborts);
    for (name, guard) in [
        (
            "stage-1: main stack guard page unmapped",
            env.image.stack_guard,
        ),
        (
            "stage-1: exception stack guard page unmapped",
            env.image.exc_stack_guard,
        ),
    ] {
        let r = read(guard.start);
        c.check(
            name,
            matches!(r, Err(a) if a.ec() == fault::EC_DABT_CUR && a.fsc() == 0b00_0111
                && a.far == guard.start),
            format_args!(
                "read {:#x}: {r:x?} (want a level-3 translation fault)",
                guard.start
            ),
        );
    }
    // Writing back the word that is there: harmless if the mapping were wrongly writable.
    let text = fault::exec_page();
    let r = read(text).and_then(|v| write(text, v));
    c.check(
        "stage-1: host code is read-only",
        matches!(r, Err(a) if a.ec() == fault::EC_DABT_CUR && a.fsc() == 0b00_1111
            && a.esr & fault::ESR_WNR != 0),
        format_args!("write {text:#x}: {r:x?} (want a level-3 permission fault)"),
    );
    c.eq(
        "stage-1: those faults were the host's own, not injected by EL2",
        stat_or_max(Stat::InjectedAborts).wrapping_sub(aborts0),
        0,
    );
}

/// One step of the transition script: name, call, expected result, and whether EL2 must map
/// the page afterwards (checked with DebugRead when `Some`).
type Step = (&'static str, Op, Result<(), Error>, Option<bool>);

#[rustfmt::skip]
const SCRIPT: &[Step] = &[
    ("script 0: donate_hyp a host page -> 0 (not shared: no debug read)", Op::Donate, Ok(()), Some(false)),
    ("script 1: (NOPAGE, OWNED) donate_hyp -> EPERM", Op::Donate, Err(Error::Perm), None),
    ("script 1: (NOPAGE, OWNED) share_hyp -> EPERM", Op::Share, Err(Error::Perm), None),
    ("script 1: (NOPAGE, OWNED) unshare_hyp -> EPERM", Op::Unshare, Err(Error::Perm), None),
    ("script 1: (NOPAGE, OWNED) pin -> EPERM", Op::Pin, Err(Error::Perm), None),
    ("script 2: hyp_donate_host -> 0, (OWNED, NOPAGE)", Op::HypDonateHost, Ok(()), Some(false)),
    ("script 2: hyp_donate_host again -> EPERM", Op::HypDonateHost, Err(Error::Perm), None),
    ("script 2: (OWNED, NOPAGE) unshare_hyp -> EPERM", Op::Unshare, Err(Error::Perm), None),
    ("script 2: (OWNED, NOPAGE) pin -> EPERM", Op::Pin, Err(Error::Perm), None),
    ("script 3: share_hyp -> 0, count 1", Op::Share, Ok(()), Some(true)),
    ("script 3: (SHARED_OWNED, SHARED_BORROWED) donate_hyp -> EPERM",
        Op::Donate, Err(Error::Perm), None),
    ("script 3: (SHARED_OWNED, SHARED_BORROWED) hyp_donate_host -> EPERM",
        Op::HypDonateHost, Err(Error::Perm), None),
    ("script 3: share_hyp again -> 0, count 2", Op::Share, Ok(()), Some(true)),
    ("script 3: unshare_hyp -> 0, count 1, still mapped at EL2", Op::Unshare, Ok(()), Some(true)),
    ("script 4: pin -> 0", Op::Pin, Ok(()), None),
    ("script 4: pin again -> 0", Op::Pin, Ok(()), None),
    ("script 4: unpin -> 0 (pinned once)", Op::Unpin, Ok(()), None),
    ("script 4: unshare_hyp while pinned -> EBUSY", Op::Unshare, Err(Error::Busy), Some(true)),
    ("script 5: unpin -> 0", Op::Unpin, Ok(()), None),
    ("script 5: unshare_hyp -> 0, (OWNED, NOPAGE), EL2 mapping gone",
        Op::Unshare, Ok(()), Some(false)),
    ("script 6: unshare_hyp -> EPERM", Op::Unshare, Err(Error::Perm), None),
    ("script 6: donate_hyp -> 0, (NOPAGE, OWNED)", Op::Donate, Ok(()), Some(false)),
];

/// The brief's transition script (BRIEF §1), as `crates/sim`'s `transition_script` runs it.
fn transition_script(c: &mut Checks, env: &mut Env) {
    println!("selftest: transition script");
    let pfn = env.pfn();
    let pa = pfn << PAGE_SHIFT;
    for &(name, op, want, mapped) in SCRIPT {
        match want {
            Ok(()) => ok(c, name, op, pfn, 1),
            Err(e) => refused(c, name, op, pfn, 1, e),
        };
        if let Some(m) = mapped {
            hyp_maps(c, name, pa, m);
        }
    }
    // Give the page back for the end-of-scenario accounting.
    ok(
        c,
        "script: reclaim the page (hyp_donate_host)",
        Op::HypDonateHost,
        pfn,
        1,
    );
}

/// `crates/sim/tests/catalogue.rs`, over real hypercalls.
fn catalogue(c: &mut Checks, env: &mut Env) {
    println!("selftest: negative catalogue");
    let p = env.pfn();

    // Double unshare; unshare of a page never shared.
    ok(c, "double unshare: share", Op::Share, p, 1);
    ok(c, "double unshare: unshare", Op::Unshare, p, 1);
    refused(
        c,
        "double unshare: second unshare -> EPERM",
        Op::Unshare,
        p,
        1,
        Error::Perm,
    );
    let q = env.pfn();
    refused(
        c,
        "unshare a page never shared -> EPERM",
        Op::Unshare,
        q,
        1,
        Error::Perm,
    );
    ok(
        c,
        "unshare never shared: legal share afterwards",
        Op::Share,
        q,
        1,
    );
    ok(
        c,
        "unshare never shared: legal unshare afterwards",
        Op::Unshare,
        q,
        1,
    );

    // EL2's own memory.
    match env.carveout() {
        Some(co) => {
            let cpfn = co.start >> PAGE_SHIFT;
            refused(
                c,
                "share EL2's carve-out -> EPERM",
                Op::Share,
                cpfn,
                1,
                Error::Perm,
            );
            refused(
                c,
                "donate EL2's carve-out -> EPERM",
                Op::Donate,
                cpfn,
                1,
                Error::Perm,
            );
            refused(
                c,
                "hyp_donate_host EL2's carve-out -> EPERM",
                Op::HypDonateHost,
                cpfn,
                1,
                Error::Perm,
            );
        }
        None => {
            c.check(
                "EL2's carve-out is in /memreserve/",
                false,
                format_args!("no /memreserve/ entry above the host image"),
            );
        }
    }
    let el2 = pkvm_abi::boot::EL2_LOAD_ADDR >> PAGE_SHIFT;
    refused(
        c,
        "share EL2's image region -> EPERM",
        Op::Share,
        el2,
        1,
        Error::Perm,
    );
    refused(
        c,
        "hyp_donate_host EL2's image region -> EPERM",
        Op::HypDonateHost,
        el2,
        1,
        Error::Perm,
    );
    let d = env.pfn();
    ok(c, "share a donated page: donate", Op::Donate, d, 1);
    refused(
        c,
        "share a page donated to EL2 -> EPERM",
        Op::Share,
        d,
        1,
        Error::Perm,
    );
    ok(c, "share a donated page: reclaim", Op::HypDonateHost, d, 1);

    // Not memory, or not in the address space.
    let uart = env.uart >> PAGE_SHIFT;
    refused(
        c,
        "share MMIO (the UART page) -> EINVAL",
        Op::Share,
        uart,
        1,
        Error::Inval,
    );
    refused(
        c,
        "donate MMIO (the UART page) -> EINVAL",
        Op::Donate,
        uart,
        1,
        Error::Inval,
    );
    let ram_end = env.ram.ranges().last().map_or(0, |r| r.end);
    let top = 1u64 << (env.pa_bits - PAGE_SHIFT);
    if (ram_end >> PAGE_SHIFT) < top && !env.ram.contains(ram_end) {
        refused(
            c,
            "share a hole with no RAM (just above RAM) -> EINVAL",
            Op::Share,
            ram_end >> PAGE_SHIFT,
            1,
            Error::Inval,
        );
    }
    refused(
        c,
        "share beyond the PA space -> ERANGE",
        Op::Share,
        top,
        1,
        Error::Range,
    );
    refused(
        c,
        "share a range ending beyond the PA space -> ERANGE",
        Op::Share,
        top - 1,
        2,
        Error::Range,
    );
    refused(
        c,
        "share a range straddling the end of RAM -> EINVAL",
        Op::Share,
        (ram_end >> PAGE_SHIFT) - 1,
        2,
        Error::Inval,
    );
    let ram_start = env.ram.ranges().first().map_or(0, |r| r.start) >> PAGE_SHIFT;
    refused(
        c,
        "share a range straddling MMIO and RAM -> EINVAL",
        Op::Share,
        ram_start - 1,
        2,
        Error::Inval,
    );

    // A range whose last page is bad.
    let r = env.pages(4, 0) >> PAGE_SHIFT;
    ok(
        c,
        "last page bad: donate the 4th page",
        Op::Donate,
        r + 3,
        1,
    );
    refused(
        c,
        "share a range whose last page is donated -> EPERM",
        Op::Share,
        r,
        4,
        Error::Perm,
    );
    ok(c, "last page bad: share the first 3 pages", Op::Share, r, 3);
    ok(c, "last page bad: pin the 3rd page", Op::Pin, r + 2, 1);
    refused(
        c,
        "unshare a range whose last page is pinned -> EBUSY",
        Op::Unshare,
        r,
        3,
        Error::Busy,
    );
    refused(
        c,
        "unshare a range with a pinned page and an unshared one -> EPERM (beats EBUSY)",
        Op::Unshare,
        r,
        4,
        Error::Perm,
    );
    ok(c, "last page bad: unpin", Op::Unpin, r + 2, 1);
    ok(c, "last page bad: unshare the 3 pages", Op::Unshare, r, 3);
    ok(
        c,
        "last page bad: reclaim the 4th page",
        Op::HypDonateHost,
        r + 3,
        1,
    );

    // Overflow and zero length.
    refused(
        c,
        "share pfn u64::MAX -> EINVAL",
        Op::Share,
        u64::MAX,
        1,
        Error::Inval,
    );
    refused(
        c,
        "share nr u64::MAX (pfn + nr overflows) -> EINVAL",
        Op::Share,
        1,
        u64::MAX,
        Error::Inval,
    );
    refused(
        c,
        "donate pfn + nr overflow -> EINVAL",
        Op::Donate,
        u64::MAX - 1,
        4,
        Error::Inval,
    );
    refused(
        c,
        "share zero pages -> EINVAL",
        Op::Share,
        p,
        0,
        Error::Inval,
    );
    refused(
        c,
        "unshare zero pages -> EINVAL",
        Op::Unshare,
        p,
        0,
        Error::Inval,
    );
    refused(
        c,
        "donate zero pages -> EINVAL",
        Op::Donate,
        p,
        0,
        Error::Inval,
    );

    // Unshare while pinned.
    ok(c, "pinned: share", Op::Share, p, 1);
    ok(c, "pinned: pin", Op::Pin, p, 1);
    refused(
        c,
        "unshare while pinned -> EBUSY",
        Op::Unshare,
        p,
        1,
        Error::Busy,
    );
    refused(
        c,
        "donate a shared, pinned page -> EPERM",
        Op::Donate,
        p,
        1,
        Error::Perm,
    );
    ok(c, "pinned: unpin", Op::Unpin, p, 1);
    refused(
        c,
        "unpin a page not pinned -> EPERM",
        Op::Unpin,
        p,
        1,
        Error::Perm,
    );
    ok(c, "pinned: unshare after unpin", Op::Unshare, p, 1);

    // Donating a shared page.
    ok(c, "donate shared: share", Op::Share, p, 1);
    refused(
        c,
        "donate a shared page -> EPERM",
        Op::Donate,
        p,
        1,
        Error::Perm,
    );
    refused(
        c,
        "hyp_donate_host a shared page -> EPERM",
        Op::HypDonateHost,
        p,
        1,
        Error::Perm,
    );
    ok(c, "donate shared: unshare", Op::Unshare, p, 1);
    refused(
        c,
        "hyp_donate_host a host page -> EPERM",
        Op::HypDonateHost,
        p,
        1,
        Error::Perm,
    );
    ok(
        c,
        "donate shared: legal donate afterwards",
        Op::Donate,
        p,
        1,
    );
    ok(c, "donate shared: reclaim", Op::HypDonateHost, p, 1);

    // Overlapping ranges, refcounted per page, unwound in reverse.
    let b = env.pages(1024, 0) >> PAGE_SHIFT;
    let mapped0 = stat_or_max(Stat::HypMappedHostPages);
    let ranges = [(b, 3), (b + 1, 1), (b + 600, 512), (b + 1, 700)];
    for &(pfn, nr) in &ranges {
        ok(c, "overlapping ranges: share", Op::Share, pfn, nr);
    }
    c.eq(
        "overlapping ranges: EL2 maps each page once (1,112 pages)",
        stat_or_max(Stat::HypMappedHostPages).wrapping_sub(mapped0),
        1112,
    );
    for &(pfn, nr) in ranges.iter().rev() {
        ok(c, "overlapping ranges: unshare", Op::Unshare, pfn, nr);
    }
    c.eq(
        "overlapping ranges: all unmapped at EL2 again",
        stat_or_max(Stat::HypMappedHostPages),
        mapped0,
    );

    // DebugRead argument checks.
    let misaligned = pkvm::hyp_read((p << PAGE_SHIFT) + 4);
    c.check(
        "DebugRead of a misaligned address -> EINVAL",
        misaligned == Err(HcallError::Errno(Error::Inval)),
        format_args!("{misaligned:x?}"),
    );
}

/// A share count at saturation: 65,535 shares, one more is `EBUSY`, then all unwound.
fn saturation(c: &mut Checks, env: &mut Env) {
    println!("selftest: share count saturation ({MAX_SHARE_COUNT} shares of one page)");
    let p = env.pfn();
    let t0 = now();
    let mut first_err = None;
    let mut n = 0;
    while n < MAX_SHARE_COUNT {
        if let Err(e) = pkvm::share_hyp_pfns(p, 1) {
            first_err = Some(e);
            break;
        }
        n += 1;
    }
    let t1 = now();
    c.check(
        "saturation: 65535 shares of one page succeed",
        first_err.is_none(),
        format_args!("{n} succeeded, then {first_err:?}; {} ms", ms(t1 - t0)),
    );
    if first_err.is_none() {
        refused(
            c,
            "saturation: share number 65536 -> EBUSY",
            Op::Share,
            p,
            1,
            Error::Busy,
        );
        hyp_maps(c, "saturation: page mapped at EL2", p << PAGE_SHIFT, true);
    }
    let t2 = now();
    let mut m = 0;
    let mut unshare_err = None;
    while m < n {
        if let Err(e) = pkvm::unshare_hyp_pfns(p, 1) {
            unshare_err = Some(e);
            break;
        }
        m += 1;
    }
    let t3 = now();
    c.check(
        "saturation: every share unwinds",
        unshare_err.is_none() && m == n,
        format_args!(
            "{m} of {n} unshares succeeded ({unshare_err:?}); {} ms",
            ms(t3 - t2)
        ),
    );
    refused(
        c,
        "saturation: one unshare too many -> EPERM",
        Op::Unshare,
        p,
        1,
        Error::Perm,
    );
    hyp_maps(
        c,
        "saturation: page unmapped at EL2 after the last unshare",
        p << PAGE_SHIFT,
        false,
    );
    println!(
        "selftest: {} shares + {} unshares took {} ms ({} us per call)",
        n,
        m,
        ms(t3 - t0),
        us(t3 - t0).checked_div(n + m).unwrap_or(0)
    );
}

/// Two objects sharing a page, shared independently.
#[repr(C, align(4096))]
struct TwoInOnePage {
    a: AtomicU64,
    b: AtomicU64,
}

static PAIR: TwoInOnePage = TwoInOnePage {
    a: AtomicU64::new(0),
    b: AtomicU64::new(0),
};

fn objects(c: &mut Checks, env: &mut Env) {
    println!("selftest: share_hyp(obj) of two objects in one page");
    let a_pa = core::ptr::from_ref(&PAIR.a) as u64;
    let b_pa = core::ptr::from_ref(&PAIR.b) as u64;
    PAIR.a.store(0xaaaa_0001, Ordering::SeqCst);
    PAIR.b.store(0xbbbb_0002, Ordering::SeqCst);
    let shared0 = stat_or_max(Stat::SharedPages);
    let r = pkvm::share_hyp(&PAIR.a);
    c.check("objects: share_hyp(&a)", r.is_ok(), format_args!("{r:?}"));
    let r = pkvm::share_hyp(&PAIR.b);
    c.check("objects: share_hyp(&b)", r.is_ok(), format_args!("{r:?}"));
    c.eq(
        "objects: one page shared for both",
        stat_or_max(Stat::SharedPages).wrapping_sub(shared0),
        1,
    );
    let r = pkvm::hyp_read(a_pa);
    c.check(
        "objects: EL2 reads a",
        r == Ok(0xaaaa_0001),
        format_args!("DebugRead({a_pa:#x}) -> {r:x?}"),
    );
    let r = pkvm::unshare_hyp(&PAIR.a);
    c.check("objects: unshare_hyp(&a)", r.is_ok(), format_args!("{r:?}"));
    PAIR.b.store(0xbbbb_0003, Ordering::SeqCst);
    let r = pkvm::hyp_read(b_pa);
    c.check(
        "objects: b still mapped at EL2 after a's unshare, new value seen",
        r == Ok(0xbbbb_0003),
        format_args!("DebugRead({b_pa:#x}) -> {r:x?}"),
    );
    let r = pkvm::unshare_hyp(&PAIR.b);
    c.check("objects: unshare_hyp(&b)", r.is_ok(), format_args!("{r:?}"));
    hyp_maps(
        c,
        "objects: page unmapped at EL2 after the last unshare",
        b_pa,
        false,
    );
    let r = pkvm::unshare_hyp(&PAIR.a);
    c.check(
        "objects: unshare_hyp(&a) again -> EPERM",
        r == Err(HcallError::Errno(Error::Perm)),
        format_args!("{r:?}"),
    );

    // An object straddling a page boundary covers two pages.
    let two = env.pages(2, 0);
    let obj = two + PAGE_SIZE - 8;
    let r = pkvm::share_hyp_bytes(obj, 16);
    c.check(
        "objects: 16 bytes across a page boundary: one share call",
        r.is_ok(),
        format_args!("{r:?}"),
    );
    c.eq(
        "objects: ... shares two pages",
        stat_or_max(Stat::SharedPages).wrapping_sub(shared0),
        2,
    );
    let r = pkvm::unshare_hyp_bytes(obj, 16);
    c.check(
        "objects: ... and unshares them",
        r.is_ok(),
        format_args!("{r:?}"),
    );
    let r = pkvm::share_hyp_bytes(obj, 0);
    c.check(
        "objects: an empty object is refused without a hypercall",
        r == Err(HcallError::Errno(Error::Inval)),
        format_args!("{r:?}"),
    );
}

fn host_writes_el2_reads(c: &mut Checks, env: &mut Env) {
    println!("selftest: host writes, EL2 reads");
    let pa = env.page();
    let w = write(pa + 0x80, 0x5eed_f00d_1234_5678);
    c.check(
        "write: host writes its page",
        w.is_ok(),
        format_args!("{w:x?}"),
    );
    let r = pkvm::share_hyp_pfns(pa >> PAGE_SHIFT, 1);
    c.check("write: share the page", r.is_ok(), format_args!("{r:?}"));
    let v = pkvm::hyp_read(pa + 0x80);
    c.check(
        "write: EL2 reads the value the host wrote",
        v == Ok(0x5eed_f00d_1234_5678),
        format_args!("DebugRead -> {v:x?}"),
    );
    let w = write(pa + 0xff8, 0x0123_4567_89ab_cdef);
    let v = pkvm::hyp_read(pa + 0xff8);
    c.check(
        "write: a write while shared is seen by EL2",
        w.is_ok() && v == Ok(0x0123_4567_89ab_cdef),
        format_args!("write {w:x?}, DebugRead -> {v:x?}"),
    );
    let r = pkvm::unshare_hyp_pfns(pa >> PAGE_SHIFT, 1);
    c.check("write: unshare the page", r.is_ok(), format_args!("{r:?}"));
    hyp_maps(c, "write: EL2 no longer maps the page", pa, false);
}

/// What an access probe did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    Exec,
}

/// Checks that `r` is the abort EL2 injects for the probe access `kind` to `addr`: EC and FSC,
/// FAR = `addr`, ELR = the probe's instruction (for a fetch: `addr` itself), SPSR = the
/// interrupted EL1h state with its DAIF, and for data accesses WnR.
fn injected(
    c: &mut Checks,
    name: &'static str,
    r: Result<u64, Abort>,
    addr: u64,
    kind: Access,
) -> bool {
    let spsr_bits = fault::expected_spsr_mode_bits();
    let (ec, insn) = match kind {
        Access::Read => (fault::EC_DABT_CUR, fault::load_insn()),
        Access::Write => (fault::EC_DABT_CUR, fault::store_insn()),
        Access::Exec => (fault::EC_IABT_CUR, addr),
    };
    match r {
        Ok(v) => c.check(
            name,
            false,
            format_args!("no abort: the {kind:?} access to {addr:#x} succeeded ({v:#x})"),
        ),
        Err(a) => {
            let class_ok = match kind {
                Access::Exec => a.is_injected_instruction_abort(),
                Access::Read => a.is_injected_data_abort() && a.esr & fault::ESR_WNR == 0,
                Access::Write => a.is_injected_data_abort() && a.esr & fault::ESR_WNR != 0,
            };
            c.check(
                name,
                class_ok
                    && a.far == addr
                    && a.elr == insn
                    && a.spsr & fault::SPSR_MODE_MASK == spsr_bits,
                format_args!(
                    "{a}; want EC {ec:#x} FSC {:#x}{} FAR {addr:#x} ELR {insn:#x} SPSR \
                     mode/DAIF {spsr_bits:#x}",
                    fault::FSC_SEA,
                    match kind {
                        Access::Read => " WnR 0",
                        Access::Write => " WnR 1",
                        Access::Exec => "",
                    }
                ),
            )
        }
    }
}

fn donated_page_aborts(c: &mut Checks, env: &mut Env) {
    println!("selftest: host access to a donated page");
    let pa = env.pages(2, 0);
    let next = pa + PAGE_SIZE;
    let w = write(pa, 1).and(write(next, 2));
    c.check(
        "donated: host touches two pages first",
        w.is_ok(),
        format_args!("{w:x?}"),
    );
    let aborts0 = stat_or_max(Stat::InjectedAborts);
    let r = pkvm::donate_hyp_pfns(pa >> PAGE_SHIFT, 1);
    c.check(
        "donated: donate the first page",
        r.is_ok(),
        format_args!("{r:?}"),
    );
    injected(
        c,
        "donated: host read gets an injected synchronous external abort",
        read(pa + 8),
        pa + 8,
        Access::Read,
    );
    injected(
        c,
        "donated: host write gets an injected synchronous external abort",
        write(pa + 16, 3).map(|()| 0),
        pa + 16,
        Access::Write,
    );
    let v = read(next);
    let w = write(next, 4);
    c.check(
        "donated: the neighbouring page is still the host's",
        v == Ok(2) && w.is_ok(),
        format_args!("read {v:x?}, write {w:x?}"),
    );
    c.eq(
        "donated: EL2 counted two injected aborts",
        stat_or_max(Stat::InjectedAborts).wrapping_sub(aborts0),
        2,
    );
    let ver = pkvm::version();
    c.check(
        "donated: EL2 still answers hypercalls",
        ver.is_ok(),
        format_args!("{ver:x?}"),
    );
    let r = pkvm::hyp_donate_host_pfns(pa >> PAGE_SHIFT, 1);
    c.check(
        "donated: reclaim with hyp_donate_host",
        r.is_ok(),
        format_args!("{r:?}"),
    );
    let w = write(pa + 8, 0xfeed);
    let v = read(pa + 8);
    c.check(
        "donated: the host writes the reclaimed page again",
        w.is_ok() && v == Ok(0xfeed),
        format_args!("write {w:x?}, read {v:x?}"),
    );

    // A page donated before the host ever touched its block: the lazy fault path must map the
    // rest of the block around it, never over it.
    let blk = env.pages(512, 2 << 20);
    let pfn = (blk >> PAGE_SHIFT) + 5;
    let r = pkvm::donate_hyp_pfns(pfn, 1);
    c.check(
        "donated (untouched block): donate a page",
        r.is_ok(),
        format_args!("{r:?}"),
    );
    injected(
        c,
        "donated (untouched block): first host touch aborts",
        read(pfn << PAGE_SHIFT),
        pfn << PAGE_SHIFT,
        Access::Read,
    );
    let around = [
        blk,
        (pfn - 1) << PAGE_SHIFT,
        (pfn + 1) << PAGE_SHIFT,
        blk + (2 << 20) - 8,
    ];
    let bad = around
        .iter()
        .map(|&a| (a, write(a, a).and_then(|()| read(a))))
        .find(|(a, r)| *r != Ok(*a));
    c.check(
        "donated (untouched block): the rest of the block is the host's",
        bad.is_none(),
        format_args!("{bad:x?}"),
    );
    let r = pkvm::hyp_donate_host_pfns(pfn, 1);
    c.check(
        "donated (untouched block): reclaim",
        r.is_ok(),
        format_args!("{r:?}"),
    );
    let w = write(pfn << PAGE_SHIFT, 7).and_then(|()| read(pfn << PAGE_SHIFT));
    c.check(
        "donated (untouched block): reclaimed page usable",
        w == Ok(7),
        format_args!("{w:x?}"),
    );

    // Instruction fetches: a page of host code donated to EL2.
    let code = fault::exec_page();
    let r = fault::probe_exec();
    c.check(
        "donated code: the host runs its exec probe page",
        r.is_ok(),
        format_args!("{r:x?}"),
    );
    let r = pkvm::donate_hyp_pfns(code >> PAGE_SHIFT, 1);
    c.check(
        "donated code: donate the page",
        r.is_ok(),
        format_args!("{r:?}"),
    );
    injected(
        c,
        "donated code: executing it gets an injected instruction abort",
        fault::probe_exec().map(|()| 0),
        code,
        Access::Exec,
    );
    let r = pkvm::hyp_donate_host_pfns(code >> PAGE_SHIFT, 1);
    c.check("donated code: reclaim", r.is_ok(), format_args!("{r:?}"));
    let r = fault::probe_exec();
    c.check(
        "donated code: the host runs the reclaimed page again",
        r.is_ok(),
        format_args!("{r:x?}"),
    );
}

fn el2_memory_aborts(c: &mut Checks, env: &mut Env) {
    println!("selftest: host access to EL2's memory");
    let aborts0 = stat_or_max(Stat::InjectedAborts);
    let mut expected = 0;
    if let Some(co) = env.carveout() {
        for (name, addr) in [
            (
                "EL2 memory: host read of the carve-out's first page aborts",
                co.start,
            ),
            (
                "EL2 memory: host read of the carve-out's last word aborts",
                co.end - 8,
            ),
        ] {
            injected(c, name, read(addr), addr, Access::Read);
            expected += 1;
        }
    }
    let img = pkvm_abi::boot::EL2_LOAD_ADDR;
    injected(
        c,
        "EL2 memory: host read of EL2's image aborts",
        read(img),
        img,
        Access::Read,
    );
    expected += 1;
    c.eq(
        "EL2 memory: EL2 counted each injected abort",
        stat_or_max(Stat::InjectedAborts).wrapping_sub(aborts0),
        expected,
    );
}

/// The virtual counter (EL2 sets `CNTVOFF_EL2` = 0), for timing.
fn now() -> u64 {
    use aarch64_cpu::registers::{CNTVCT_EL0, Readable};
    CNTVCT_EL0.get()
}

fn freq() -> u64 {
    use aarch64_cpu::registers::{CNTFRQ_EL0, Readable};
    CNTFRQ_EL0.get().max(1)
}

fn ms(ticks: u64) -> u64 {
    ticks.saturating_mul(1000) / freq()
}

fn us(ticks: u64) -> u64 {
    ticks.saturating_mul(1_000_000) / freq()
}
