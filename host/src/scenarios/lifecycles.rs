//! What the `guests` and `protected` scenarios share: guest lifecycles at scale in blocks,
//! errno checks, and failure notes that print only the first few.

use crate::checks::Checks;
use crate::pkvm::HcallError;
use crate::vm::{self, GUEST_IMAGE, SLOTS, Vm};
use pkvm_abi::Error;

/// Checks that `r` failed with `want`.
pub fn expect_err<T: core::fmt::Debug>(
    c: &mut Checks,
    name: &'static str,
    r: Result<T, HcallError>,
    want: Error,
) {
    let ok = matches!(r, Err(HcallError::Errno(e)) if e == want);
    c.check(name, ok, format_args!("got {r:?}, want {want}"));
}

/// Whether the host has a guest image (else a failed check says how to build one).
pub fn have_guest_image(c: &mut Checks) -> bool {
    if GUEST_IMAGE.is_empty() {
        c.check(
            "guest image",
            false,
            format_args!("the host was built without PKVM_GUEST_BIN (use cargo xtask)"),
        )
    } else {
        c.check(
            "guest image",
            true,
            format_args!("{} bytes embedded", GUEST_IMAGE.len()),
        )
    }
}

/// Failures of a long run: all counted, the first five printed.
#[derive(Debug)]
pub struct Failures {
    scenario: &'static str,
    /// How many so far.
    pub count: u64,
}

impl Failures {
    /// None yet, for `scenario` (the prefix of the printed notes).
    pub fn new(scenario: &'static str) -> Self {
        Failures { scenario, count: 0 }
    }

    /// One more failure of cycle `id`.
    pub fn note(&mut self, what: &str, id: u64, detail: &dyn core::fmt::Debug) {
        self.count += 1;
        if self.count <= 5 {
            println!("{}: cycle {id}: {what}: {detail:?}", self.scenario);
        }
    }
}

/// What a scenario does in each lifecycle.
pub trait Cycle {
    /// Creates guest `id` in `slot`.
    ///
    /// # Errors
    /// The hypercall's.
    fn create(&mut self, slot: usize, id: u64) -> Result<Vm, HcallError>;
    /// Runs it (and checks what it must around the run).
    fn run(&mut self, vm: &Vm, f: &mut Failures);
    /// Checks after its teardown (`vm` is the torn-down VM's description).
    fn after_teardown(&mut self, _vm: &Vm, _f: &mut Failures) {}
}

/// Runs `n` lifecycles in blocks of ten: six one at a time (alternating between the two
/// halves of a structure page), then four alive at once (two structure pages, two guests
/// each), torn down in a different order than created, their structures released once both
/// guests of a page are gone. Returns the number of lifecycles.
pub fn run_blocks(n: u64, cycle: &mut impl Cycle, f: &mut Failures) -> u64 {
    let mut done = 0u64;
    while done < n {
        let batch = if done % 10 >= 6 { (n - done).min(4) } else { 1 };
        let mut live: [Option<Vm>; SLOTS] = [const { None }; SLOTS];
        for (i, l) in live.iter_mut().enumerate().take(batch as usize) {
            let slot = if batch == 1 { (done % 2) as usize } else { i };
            let id = done + i as u64;
            match cycle.create(slot, id) {
                Ok(vm) => *l = Some(vm),
                Err(e) => f.note("create", id, &e),
            }
        }
        for vm in live.iter().flatten() {
            cycle.run(vm, f);
        }
        let mut slots = [None; SLOTS];
        for i in [1, 0, 3, 2] {
            if let Some(vm) = live[i].take() {
                let gone = Vm { ..vm };
                slots[i] = Some((vm.slot, vm.id));
                if let Err(e) = vm::teardown(vm) {
                    f.note("teardown", gone.id, &e);
                }
                cycle.after_teardown(&gone, f);
            }
        }
        for (slot, id) in slots.into_iter().flatten() {
            if let Err(e) = vm::release(slot) {
                f.note("release", id, &e);
            }
        }
        done += batch;
    }
    done
}
