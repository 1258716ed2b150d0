//! The selftest's ownership checks from tables: the transition script and the negative
//! catalogue (`pkvm_client::catalogue`, the tables the simulator runs too), then overlapping
//! ranges and share-count saturation.

use super::{at, hyp_maps, ok, refused};
use crate::checks::Checks;
use crate::cpu;
use crate::env::Env;
use crate::pkvm::{self, HcallError, PKVM};
use pkvm_abi::{Error, PAGE_SHIFT, Stat};
use pkvm_client::catalogue::{CATALOGUE, Op, Places, TRANSITION_SCRIPT};

/// Largest EL2 share count (`u16::MAX` in `crates/hyp`); one more share is `EBUSY`.
const MAX_SHARE_COUNT: u64 = u16::MAX as u64;

/// The transition script on one fresh page, as `crates/sim` runs it.
pub fn transition_script(c: &mut Checks, env: &mut Env) {
    println!("selftest: transition script");
    let pfn = env.pfn();
    for s in TRANSITION_SCRIPT {
        let call = at(s.op, pfn, 1);
        match s.want {
            Ok(()) => ok(c, s.name, call),
            Err(e) => refused(c, s.name, call, e),
        };
        if let Some(readable) = s.readable {
            hyp_maps(c, s.name, pfn << PAGE_SHIFT, readable);
        }
    }
    // Give the page back for the end-of-scenario accounting.
    let reclaim = at(Op::HypDonateHost, pfn, 1);
    ok(c, "script: reclaim the page (hyp_donate_host)", reclaim);
}

/// Where this machine has the catalogue's places.
fn places(env: &Env) -> Places {
    let ram = env.ram.ranges();
    let pa_end = 1u64 << (env.pa_bits - PAGE_SHIFT);
    let ram_end = ram.last().map_or(0, |r| r.end);
    let hole = (ram_end >> PAGE_SHIFT) < pa_end && !env.ram.contains(ram_end);
    Places {
        carveout: env.carveout().map(|co| co.start >> PAGE_SHIFT),
        el2_image: Some(pkvm_abi::boot::EL2_LOAD_ADDR >> PAGE_SHIFT),
        mmio: Some(env.uart >> PAGE_SHIFT),
        ram_end: hole.then_some(ram_end >> PAGE_SHIFT),
        ram_gap: ram
            .windows(2)
            .find(|w| w[0].end < w[1].start)
            .map(|w| w[0].end >> PAGE_SHIFT),
        last_ram_start: ram.last().map(|r| r.start >> PAGE_SHIFT),
        pa_end: Some(pa_end),
    }
}

/// The negative catalogue, each case on fresh pages: its setup, the refused call (its error
/// and an unchanged EL2 state), its cleanup.
pub fn run(c: &mut Checks, env: &mut Env) {
    println!("selftest: negative catalogue ({} cases)", CATALOGUE.len());
    let places = places(env);
    if places.carveout.is_none() {
        c.check(
            "EL2's carve-out is in /memreserve/",
            false,
            format_args!("no /memreserve/ entry above the host image"),
        );
    }
    let mut skipped = 0;
    for case in CATALOGUE {
        let own = match case.pages {
            0 => 0,
            n => env.pages(n, 0) >> PAGE_SHIFT,
        };
        let Some(steps) = case.steps(&places, own) else {
            println!("selftest: skipped, this machine has no such place: {}", case.name);
            skipped += 1;
            continue;
        };
        for (call, want) in steps {
            match want {
                Ok(()) => ok(c, case.name, call),
                Err(e) => refused(c, case.name, call, e),
            };
        }
    }
    println!(
        "selftest: catalogue: {} cases run, {skipped} skipped",
        CATALOGUE.len() - skipped
    );
}

/// Overlapping ranges, refcounted per page, unwound in reverse.
pub fn overlapping_ranges(c: &mut Checks, env: &mut Env) {
    let b = env.pages(1024, 0) >> PAGE_SHIFT;
    let mapped0 = pkvm::stat(Stat::HypMappedHostPages);
    let ranges = [(b, 3), (b + 1, 1), (b + 600, 512), (b + 1, 700)];
    for &(pfn, nr) in &ranges {
        ok(c, "overlapping ranges: share", at(Op::ShareHyp, pfn, nr));
    }
    c.eq(
        "overlapping ranges: EL2 maps each page once (1,112 pages)",
        pkvm::stat(Stat::HypMappedHostPages).wrapping_sub(mapped0),
        1112,
    );
    for &(pfn, nr) in ranges.iter().rev() {
        ok(c, "overlapping ranges: unshare", at(Op::UnshareHyp, pfn, nr));
    }
    c.eq(
        "overlapping ranges: all unmapped at EL2 again",
        pkvm::stat(Stat::HypMappedHostPages),
        mapped0,
    );
}

/// A share count at saturation: 65,535 shares, one more is `EBUSY`, then all unwound.
pub fn saturation(c: &mut Checks, env: &mut Env) {
    println!("selftest: share count saturation ({MAX_SHARE_COUNT} shares of one page)");
    let p = env.pfn();
    let t0 = cpu::ticks();
    let (n, first_err) = repeat(MAX_SHARE_COUNT, || PKVM.share_hyp(p, 1));
    let t1 = cpu::ticks();
    c.check(
        "saturation: 65535 shares of one page succeed",
        first_err.is_none(),
        format_args!("{n} succeeded, then {first_err:?}; {} ms", cpu::ms(t1 - t0)),
    );
    if first_err.is_none() {
        refused(c, "saturation: share number 65536 -> EBUSY", at(Op::ShareHyp, p, 1), Error::Busy);
        hyp_maps(c, "saturation: page mapped at EL2", p << PAGE_SHIFT, true);
    }
    let t2 = cpu::ticks();
    let (m, unshare_err) = repeat(n, || PKVM.unshare_hyp(p, 1));
    let t3 = cpu::ticks();
    c.check(
        "saturation: every share unwinds",
        unshare_err.is_none() && m == n,
        format_args!(
            "{m} of {n} unshares succeeded ({unshare_err:?}); {} ms",
            cpu::ms(t3 - t2)
        ),
    );
    refused(c, "saturation: one unshare too many -> EPERM", at(Op::UnshareHyp, p, 1), Error::Perm);
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
        cpu::ms(t3 - t0),
        cpu::us(t3 - t0).checked_div(n + m).unwrap_or(0)
    );
}


/// Calls `f` up to `n` times, stopping at its first error: how many calls succeeded, and the
/// error.
fn repeat(n: u64, mut f: impl FnMut() -> Result<(), HcallError>) -> (u64, Option<HcallError>) {
    for i in 0..n {
        if let Err(e) = f() {
            return (i, Some(e));
        }
    }
    (n, None)
}
