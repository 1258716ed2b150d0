//! The sequential model the histories are checked against: the executable specification
//! (`pkvm_spec::Spec`), whose calls are atomic, and the one thing a concurrent history can see
//! that a sequential one cannot — a vCPU *inside* its run.
//!
//! An operation is one or more **atomic steps**. Every call is one step, except `VcpuRun`,
//! which is what the hypervisor makes it: *enter* (a critical section marks the vCPU running,
//! the guest is entered) and *exit* (another marks it running no more), with the guest running
//! in between, when a teardown of its VM or another run of its vCPU is refused with `EBUSY`.

use std::collections::BTreeSet;

use pkvm_abi::Error;
use pkvm_spec::{Call, Outcome, Spec};

/// One operation a simulated CPU performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// A call the specification describes, through `Machine::apply` (hypercalls through the
    /// real dispatcher, host accesses through the real host stage-2 fault path).
    Spec(Call),
    /// The host stores `val` at `pa`: a host access for writing through the host stage-2
    /// (the spec's `HostAccess`), then, if it was allowed, the store itself. Lets a scenario
    /// check afterwards that EL2 did not write a page the host had taken back.
    HostStore {
        /// Physical address (8-byte aligned).
        pa: u64,
        /// The value stored.
        val: u64,
    },
}

/// The model's state: the spec, and the VM slots whose vCPU is between *enter* and *exit*.
#[derive(Clone, Debug)]
pub struct Model {
    /// The specification.
    pub spec: Spec,
    /// VM slots whose vCPU runs.
    pub running: BTreeSet<usize>,
}

/// What one atomic step produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepResult {
    /// The operation's outcome, and whether more steps follow.
    Outcome(Outcome, bool),
    /// A later step, producing nothing visible; no more steps follow.
    Done,
}

impl Model {
    /// A model starting from `spec`, no vCPU running.
    #[must_use]
    pub fn new(spec: Spec) -> Self {
        Model {
            spec,
            running: BTreeSet::new(),
        }
    }

    /// Runs step `step` (0 for the first) of `op`, which returned `observed`, and says what the
    /// model produced. `ENOMEM` where the model succeeds is what the implementation may
    /// answer for a call that needs table memory the model does not count: then the model
    /// produces it too and does not change (as the spec's checker rules).
    pub fn step(&mut self, op: Op, step: usize, observed: Outcome) -> StepResult {
        let call = match op {
            Op::Spec(c) => c,
            Op::HostStore { pa, .. } => Call::HostAccess { pa, write: true },
        };
        match (call, step) {
            (Call::VcpuRun { vm }, 0) => {
                let mut r = self.spec.clone().step(call);
                if r == Outcome::Ret(Ok(())) && self.running.contains(&vm) {
                    r = Outcome::Ret(Err(Error::Busy));
                }
                let entered = r == Outcome::Ret(Ok(()));
                if entered {
                    self.running.insert(vm);
                }
                StepResult::Outcome(r, entered)
            }
            (Call::VcpuRun { vm }, _) => {
                self.running.remove(&vm);
                StepResult::Done
            }
            (Call::VmTeardown { vm }, _)
                if self.running.contains(&vm) && self.spec.state().vms.contains_key(&vm) =>
            {
                StepResult::Outcome(Outcome::Ret(Err(Error::Busy)), false)
            }
            _ => {
                let before = self.spec.clone();
                let r = self.spec.step(call);
                if observed == Outcome::Ret(Err(Error::NoMem))
                    && r == Outcome::Ret(Ok(()))
                    && call.may_run_out_of_memory()
                {
                    self.spec = before;
                    return StepResult::Outcome(observed, false);
                }
                StepResult::Outcome(r, false)
            }
        }
    }
}
