//! Named scenarios, each run with the spec checker after every step.

use std::fmt::Write as _;

use pkvm_abi::{Error, PAGE_SHIFT};
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

/// The brief's transition script (adapted upstream boot selftest), on one page that starts
/// (NOPAGE, OWNED) after a host donation.
///
/// # Errors
/// Any divergence from the spec or from the script's expected results.
pub fn transition_script(m: &Machine<'_>, out: &mut String) -> Result<(), String> {
    use Call::*;
    let mut c = Checker::new(m.spec_machine());
    let pfn = test_pfn(m) + 1;
    let nr = 1;
    let script: &[(Call, Result<(), Error>)] = &[
        (DonateHyp { pfn, nr }, Ok(())),
        // 1. (NOPAGE, OWNED)
        (DonateHyp { pfn, nr }, Err(Error::Perm)),
        (ShareHyp { pfn, nr }, Err(Error::Perm)),
        (UnshareHyp { pfn, nr }, Err(Error::Perm)),
        (Pin { pfn, nr }, Err(Error::Perm)),
        // 2.
        (HypDonateHost { pfn, nr }, Ok(())),
        (HypDonateHost { pfn, nr }, Err(Error::Perm)),
        (UnshareHyp { pfn, nr }, Err(Error::Perm)),
        (Pin { pfn, nr }, Err(Error::Perm)),
        // 3.
        (ShareHyp { pfn, nr }, Ok(())),
        (DonateHyp { pfn, nr }, Err(Error::Perm)),
        (HypDonateHost { pfn, nr }, Err(Error::Perm)),
        (ShareHyp { pfn, nr }, Ok(())),
        (UnshareHyp { pfn, nr }, Ok(())),
        // 4.
        (Pin { pfn, nr }, Ok(())),
        (Pin { pfn, nr }, Ok(())),
        (Unpin { pfn, nr }, Ok(())),
        (UnshareHyp { pfn, nr }, Err(Error::Busy)),
        // 5.
        (Unpin { pfn, nr }, Ok(())),
        (UnshareHyp { pfn, nr }, Ok(())),
        // 6.
        (UnshareHyp { pfn, nr }, Err(Error::Perm)),
        (DonateHyp { pfn, nr }, Ok(())),
    ];
    for (i, &(call, want)) in script.iter().enumerate() {
        let got = checked(m, &mut c, call)?;
        if got != Outcome::Ret(want) {
            return Err(format!("step {i} {call:?}: expected {want:?}, got {got}"));
        }
        let _ = writeln!(out, "{i:2} {call:x?} -> {got}: {}", describe_page(m, pfn));
    }
    Ok(())
}
