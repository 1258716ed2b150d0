//! The `selftest` scenario: the ownership state machine exercised over real hypercalls with real
//! addresses, checked against the documented contract (`crates/sim` shows the
//! exact expected behaviour):
//!
//! 1. the transition script on one page, and the negative catalogue
//!    (`pkvm_client::catalogue`, which the simulator runs too), each refused call with its
//!    exact error and an unchanged EL2 state (Stat before and after), each case followed by
//!    the legal operations that show nothing was left half-done ([`catalogue`]);
//! 2. `share_hyp(obj)` of two objects in one page, and of one straddling two pages; host
//!    writes seen by EL2 through its own mapping (DebugRead) ([`objects`]);
//! 3. illegal host accesses (a donated page, EL2's carve-out and image) answered by an injected
//!    synchronous external abort that the host survives ([`aborts`]);
//! 4. at the end, nothing left behind: no host page mapped at EL2 or shared, the EL2 pool back
//!    to its size at the start.

mod aborts;
mod catalogue;
mod objects;

use crate::checks::Checks;
use crate::env::Env;
use crate::fault::{self, Abort, probe_read, probe_write};
use crate::pkvm::{self, HcallError, PKVM};
use core::sync::atomic::{AtomicBool, Ordering};
use pkvm_abi::{Error, PAGE_SHIFT, Stat, features};
use pkvm_arch::esr::Ec;
use pkvm_client::catalogue::{Op, Resolved};

/// Whether EL2 offers the debug hypercalls (the test build).
static DEBUG_EL2: AtomicBool = AtomicBool::new(false);

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
            *v = PKVM.stat(st)?;
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


/// `op(pfn, nr)` (for [`Op::DebugRead`], `pfn` is the physical address).
fn at(op: Op, pfn: u64, nr: u64) -> Resolved {
    Resolved { op, addr: pfn, arg: nr }
}

fn show(r: Result<(), HcallError>) -> &'static str {
    match r {
        Ok(()) => "0",
        Err(e) => e.name(),
    }
}

/// Issues `call`, which must succeed.
fn ok(c: &mut Checks, name: &'static str, call: Resolved) -> bool {
    let r = call.issue(&PKVM);
    c.check(name, r.is_ok(), format_args!("{call} -> {}", show(r)))
}

/// Issues `call`, which must fail with `want` and leave EL2's state unchanged.
fn refused(c: &mut Checks, name: &'static str, call: Resolved, want: Error) -> bool {
    let before = Snapshot::take();
    let r = call.issue(&PKVM);
    let after = Snapshot::take();
    let call_ok = r == Err(HcallError::Errno(want));
    let (r, want) = (show(r), want.name());
    match (before, after) {
        (Ok(b), Ok(a)) if a == b => c.check(
            name,
            call_ok,
            format_args!("{call} -> {r} (want {want}), state unchanged"),
        ),
        (Ok(b), Ok(a)) => c.check(
            name,
            false,
            format_args!("{call} -> {r} (want {want}), state CHANGED: before {b}, after {a}"),
        ),
        (b, a) => c.check(
            name,
            false,
            format_args!(
                "{call} -> {r} (want {want}); Stat failed: {:?} / {:?}",
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
    let r = PKVM.hyp_read(pa);
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
            r.map_or_else(HcallError::name, |_| "mapped"),
            if want { "mapped" } else { "EPERM" }
        ),
    )
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
    let features = PKVM.version().map(|v| v.features);
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
    nothing_shared(
        c,
        [
            "at start: no host page mapped at EL2",
            "at start: no page shared with EL2",
        ],
    );

    stage1(c, env);
    catalogue::transition_script(c, env);
    catalogue::run(c, env);
    catalogue::overlapping_ranges(c, env);
    catalogue::saturation(c, env);
    objects::objects(c, env);
    objects::host_writes_el2_reads(c, env);
    aborts::donated_page(c, env);
    aborts::el2_memory(c, env);

    let end = Snapshot::take();
    println!(
        "selftest: EL2 state at end: {}",
        end.unwrap_or(Snapshot([u64::MAX; 5]))
    );
    nothing_shared(
        c,
        [
            "at end: no host page mapped at EL2",
            "at end: no page shared with EL2",
        ],
    );
    c.eq(
        "at end: EL2 pool free pages as at start",
        pkvm::stat(Stat::PoolFreePages),
        start.map_or(u64::MAX - 1, |s| s.get(Stat::PoolFreePages)),
    );
}

/// Checks `names`: no host page is mapped at EL2, and none is shared with it.
fn nothing_shared(c: &mut Checks, names: [&'static str; 2]) {
    c.eq(names[0], pkvm::stat(Stat::HypMappedHostPages), 0);
    c.eq(names[1], pkvm::stat(Stat::SharedPages), 0);
}

/// The selftest against the production EL2: the debug hypercalls are refused, and what needs
/// no debug call still holds (stage-1 and injected aborts, share-count saturation, a share
/// round trip with the statistics, a donation the host can no longer touch).
fn production(c: &mut Checks, env: &mut Env) {
    use pkvm_abi::{HostHcall, SMCCC_NOT_SUPPORTED};
    for id in [
        HostHcall::DebugHypDonateHost,
        HostHcall::DebugPin,
        HostHcall::DebugUnpin,
        HostHcall::DebugRead,
    ] {
        let p = env.pfn();
        let r = PKVM.call(id, [p, 1]);
        c.check(
            "production EL2: debug hypercall refused (NOT_SUPPORTED)",
            r == Err(HcallError::NotSupported(SMCCC_NOT_SUPPORTED)),
            format_args!("{id:?} -> {r:x?}"),
        );
    }
    stage1(c, env);
    catalogue::saturation(c, env);
    let p = env.pfn();
    let shared0 = pkvm::stat(Stat::SharedPages);
    ok(c, "production: share_hyp a page", at(Op::ShareHyp, p, 1));
    c.eq(
        "production: one more page shared",
        pkvm::stat(Stat::SharedPages),
        shared0 + 1,
    );
    ok(c, "production: unshare_hyp it", at(Op::UnshareHyp, p, 1));
    refused(c, "production: unshare again", at(Op::UnshareHyp, p, 1), Error::Perm);
    let pa = env.pages(1, 0);
    let w = write(pa, 1);
    c.check(
        "production: the host writes its page",
        w.is_ok(),
        format_args!("{w:x?}"),
    );
    ok(c, "production: donate_hyp it (it stays EL2's: no give-back without the debug call)", at(Op::DonateHyp, pa >> PAGE_SHIFT, 1));
    aborts::injected(
        c,
        "production: host read of the donated page gets an injected abort",
        read(pa),
        pa,
        aborts::Access::Read,
    );
    aborts::el2_memory(c, env);
    c.eq(
        "production: at end, no page shared with EL2",
        pkvm::stat(Stat::SharedPages),
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
    let aborts0 = pkvm::stat(Stat::InjectedAborts);
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
            matches!(r, Err(a) if a.ec() == Ec::DabtCur && a.fsc() == 0b00_0111
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
        matches!(r, Err(a) if a.ec() == Ec::DabtCur && a.fsc() == 0b00_1111
            && a.is_write() == Some(true)),
        format_args!("write {text:#x}: {r:x?} (want a level-3 permission fault)"),
    );
    c.eq(
        "stage-1: those faults were the host's own, not injected by EL2",
        pkvm::stat(Stat::InjectedAborts).wrapping_sub(aborts0),
        0,
    );
}

