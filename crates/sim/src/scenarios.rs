//! Named scenarios, each run with the spec checker after every step.

use std::fmt::Write as _;

use pkvm_abi::{Error, PAGE_SHIFT};
use pkvm_client::catalogue::{Op, Places, Resolved, TRANSITION_SCRIPT};
use pkvm_spec::{Call, Checker, Outcome};

use crate::machine::Machine;

/// Runs `call` on the machine and checks it against the spec and the structural invariants.
///
/// # Errors
/// The divergence or violated invariant, with the call trace.
pub fn checked(m: &Machine<'_>, checker: &mut Checker, call: Call) -> Result<Outcome, String> {
    let got = m.apply(call);
    let now = m.abstract_state()?;
    checker.check(call, got, &now).map_err(|d| d.report)?;
    m.check_invariants()
        .map_err(|e| format!("after {call:?}: {e}"))?;
    Ok(got)
}

/// Runs `call`, which must fail with `err` and change nothing (checked against the spec and
/// the structural invariants, and by comparing the abstract state before and after).
///
/// # Panics
/// If it does not (a test helper).
pub fn expect_refused(m: &Machine<'_>, c: &mut Checker, call: Call, err: Error) {
    let before = m.abstract_state().unwrap();
    let got = checked(m, c, call).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, Outcome::Ret(Err(err)), "{call:?}");
    assert_eq!(
        m.abstract_state().unwrap(),
        before,
        "{call:?} changed the state"
    );
}

/// Runs `call`, which must succeed (checked as [`expect_refused`]).
///
/// # Panics
/// If it does not (a test helper).
pub fn expect_ok(m: &Machine<'_>, c: &mut Checker, call: Call) {
    let got = checked(m, c, call).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, Outcome::Ret(Ok(())), "{call:?}");
}

/// One line describing a page: host and hyp states, counts, whether EL2 maps it.
#[must_use]
pub fn describe_page(m: &Machine<'_>, pfn: u64) -> String {
    let e = m.hyp.vmemmap().get(pfn).expect("memory page");
    let mapped = m.hyp_access(pfn << PAGE_SHIFT) == Outcome::Access;
    format!(
        "host={:?} hyp={:?} shares={} pins={} el2-mapped={}",
        e.host_state(),
        e.hyp_state(),
        e.share_count(),
        e.refcount(),
        if mapped { "yes" } else { "no" }
    )
}

/// A page of host memory the scenarios use.
#[must_use]
pub fn test_pfn(m: &Machine<'_>) -> u64 {
    (m.config().ram[0].0 >> PAGE_SHIFT) + 16
}

/// Share one page twice, unshare it twice: EL2 keeps it mapped until the second unshare.
///
/// # Errors
/// Any divergence from the spec or from the expected results.
pub fn share_twice(m: &Machine<'_>, out: &mut String) -> Result<(), String> {
    let mut c = Checker::new(m.spec_machine());
    let pfn = test_pfn(m);
    let _ = writeln!(out, "page pfn {pfn:#x}");
    let mut step =
        |name: &str, call: Call, want: Result<(), Error>, mapped: bool| -> Result<(), String> {
            let got = checked(m, &mut c, call)?;
            if got != Outcome::Ret(want) {
                return Err(format!("{name}: expected {want:?}, got {got}"));
            }
            let is_mapped = m.hyp_access(pfn << PAGE_SHIFT) == Outcome::Access;
            if is_mapped != mapped {
                return Err(format!(
                    "{name}: EL2 mapping present = {is_mapped}, expected {mapped}"
                ));
            }
            let _ = writeln!(out, "{name:<12} -> {got:<6} {}", describe_page(m, pfn));
            Ok(())
        };
    step("share", Call::ShareHyp { pfn, nr: 1 }, Ok(()), true)?;
    step("share", Call::ShareHyp { pfn, nr: 1 }, Ok(()), true)?;
    step("unshare", Call::UnshareHyp { pfn, nr: 1 }, Ok(()), true)?;
    step("unshare", Call::UnshareHyp { pfn, nr: 1 }, Ok(()), false)?;
    step(
        "unshare",
        Call::UnshareHyp { pfn, nr: 1 },
        Err(Error::Perm),
        false,
    )?;
    Ok(())
}

/// The transition script ([`pkvm_client::catalogue::TRANSITION_SCRIPT`], which the
/// QEMU host's `selftest` runs too) on one page that starts (OWNED, NOPAGE), with the debug
/// read the script asks for after a step.
///
/// # Errors
/// Any divergence from the spec or from the script's expected results.
pub fn transition_script(m: &Machine<'_>, out: &mut String) -> Result<(), String> {
    let mut c = Checker::new(m.spec_machine());
    let pfn = test_pfn(m) + 1;
    for (i, s) in TRANSITION_SCRIPT.iter().enumerate() {
        let call = spec_call(&Resolved {
            op: s.op,
            addr: pfn,
            arg: 1,
        });
        let got = checked(m, &mut c, call)?;
        if got != Outcome::Ret(s.want) {
            return Err(format!(
                "{}: {call:?}: expected {:?}, got {got}",
                s.name, s.want
            ));
        }
        if let Some(want) = s.readable {
            let read = checked(
                m,
                &mut c,
                Call::DebugRead {
                    pa: pfn << PAGE_SHIFT,
                },
            )?;
            if read != Outcome::Ret(if want { Ok(()) } else { Err(Error::Perm) }) {
                return Err(format!("{}: debug read of the page -> {read}", s.name));
            }
        }
        let _ = writeln!(out, "{i:2} {call:x?} -> {got}: {}", describe_page(m, pfn));
    }
    Ok(())
}

/// The spec's name for a catalogue call.
#[must_use]
pub fn spec_call(r: &Resolved) -> Call {
    let (pfn, nr) = (r.addr, r.arg);
    match r.op {
        Op::ShareHyp => Call::ShareHyp { pfn, nr },
        Op::UnshareHyp => Call::UnshareHyp { pfn, nr },
        Op::DonateHyp => Call::DonateHyp { pfn, nr },
        Op::HypDonateHost => Call::HypDonateHost { pfn, nr },
        Op::Pin => Call::Pin { pfn, nr },
        Op::Unpin => Call::Unpin { pfn, nr },
        Op::DebugRead => Call::DebugRead { pa: r.addr },
    }
}

/// Where the simulated machine has the catalogue's places. It has no EL2 image region (EL2's
/// memory is the carve-out alone), so the cases aimed at one are skipped.
#[must_use]
pub fn places(m: &Machine<'_>) -> Places {
    let cfg = m.config();
    let pa_end = 1u64 << (cfg.pa_bits - PAGE_SHIFT);
    let end = |&(b, s): &(u64, u64)| (b + s) >> PAGE_SHIFT;
    let is_ram = |pfn: u64| {
        cfg.ram
            .iter()
            .any(|&(b, s)| (b..b + s).contains(&(pfn << PAGE_SHIFT)))
    };
    let last = cfg.ram.iter().max_by_key(|r| r.0);
    Places {
        carveout: Some(m.carveout.0 >> PAGE_SHIFT),
        el2_image: None,
        mmio: Some(crate::machine::VIRT_UART >> PAGE_SHIFT),
        ram_end: last.map(end).filter(|&p| p < pa_end && !is_ram(p)),
        ram_gap: cfg
            .ram
            .iter()
            .map(end)
            .find(|&p| !is_ram(p) && cfg.ram.iter().any(|&(b, _)| b >> PAGE_SHIFT > p)),
        last_ram_start: last.map(|&(b, _)| b >> PAGE_SHIFT),
        pa_end: Some(pa_end),
    }
}
