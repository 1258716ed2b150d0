//! The checker: runs the [`Spec`] beside an implementation and compares the two after every
//! call.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::{AbsState, Call, Error, Machine, Outcome, Spec};

/// One divergence between the implementation and the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// Human-readable report, including the call trace.
    pub report: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.report)
    }
}

/// Runs the spec beside an implementation and compares after every call.
#[derive(Debug)]
pub struct Checker {
    spec: Spec,
    trace: Vec<(Call, Outcome)>,
}

impl Checker {
    /// A checker starting from the boot state of `machine`.
    #[must_use]
    pub fn new(machine: Machine) -> Self {
        Checker {
            spec: Spec::new(machine),
            trace: Vec::new(),
        }
    }

    /// A checker starting from `state` (see [`Spec::with_state`]).
    #[must_use]
    pub fn with_state(machine: Machine, state: AbsState) -> Self {
        Checker {
            spec: Spec::with_state(machine, state),
            trace: Vec::new(),
        }
    }

    /// The model.
    #[must_use]
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The calls checked so far with the outcome the implementation gave.
    #[must_use]
    pub fn trace(&self) -> &[(Call, Outcome)] {
        &self.trace
    }

    /// Records that the implementation answered `call` with `got` and is now in state `now`
    /// (computed from the real page tables and vmemmap); compares both with the spec.
    ///
    /// # Errors
    ///
    /// A [`Divergence`] describing the first difference, with the call trace.
    ///
    /// `ENOMEM` is accepted where the model succeeds for a call that needs page-table memory
    /// the model does not count ([`Call::may_run_out_of_memory`]), provided nothing changed:
    /// the implementation's state must then be the state before the call.
    pub fn check(&mut self, call: Call, got: Outcome, now: &AbsState) -> Result<(), Divergence> {
        let before = (got == Outcome::Ret(Err(Error::NoMem)) && call.may_run_out_of_memory())
            .then(|| self.spec.clone());
        let mut expected = self.spec.step(call);
        if let Some(before) = before
            && expected == Outcome::Ret(Ok(()))
        {
            self.spec = before;
            expected = got;
        }
        self.trace.push((call, got));
        let mut problems = Vec::new();
        if expected != got {
            problems.push(format!("result: expected {expected}, got {got}"));
        }
        diff_states(&self.spec.state, now, &mut problems);
        if problems.is_empty() {
            return Ok(());
        }
        let mut report = String::from("implementation diverged from the spec\n");
        for p in &problems {
            report.push_str("  ");
            report.push_str(p);
            report.push('\n');
        }
        report.push_str("call trace (implementation's results):\n");
        for (i, (c, o)) in self.trace.iter().enumerate() {
            report.push_str(&format!("  {i:4}: {c:?} -> {o}\n"));
        }
        Err(Divergence { report })
    }
}

fn diff_states(want: &AbsState, got: &AbsState, out: &mut Vec<String>) {
    for (pfn, w) in &want.pages {
        match got.pages.get(pfn) {
            Some(g) if g == w => {}
            g => out.push(format!(
                "pfn {pfn:#x}: expected {w:?}, got {g:?} (None = boot state)"
            )),
        }
    }
    for (pfn, g) in &got.pages {
        if !want.pages.contains_key(pfn) {
            out.push(format!("pfn {pfn:#x}: expected boot state, got {g:?}"));
        }
    }
    for (pfn, w) in &want.hyp_maps {
        if got.hyp_maps.get(pfn) != Some(w) {
            out.push(format!(
                "EL2 mapping of pfn {pfn:#x}: expected {w:?}, got {:?}",
                got.hyp_maps.get(pfn)
            ));
        }
    }
    for pfn in got.hyp_maps.keys() {
        if !want.hyp_maps.contains_key(pfn) {
            out.push(format!(
                "EL2 maps pfn {pfn:#x} but the spec has no such mapping (dangling)"
            ));
        }
    }
    for (slot, w) in &want.vms {
        match got.vms.get(slot) {
            Some(g) if g == w => {}
            g => out.push(format!("VM slot {slot}: expected {w:?}, got {g:?}")),
        }
    }
    for (slot, g) in &got.vms {
        if !want.vms.contains_key(slot) {
            out.push(format!("VM slot {slot}: expected none, got {g:?}"));
        }
    }
}
