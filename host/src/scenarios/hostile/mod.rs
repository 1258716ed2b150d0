//! The `hostile` scenario: a host that throws everything it can at EL2 and checks that EL2
//! survives, refuses what it must, and leaks nothing (`cargo xtask run --scenario hostile`).
//!
//! 1. **System registers**: every `MRS` encoding of the op0 = 2/3 space (32,768), each read
//!    value written back with `MSR` (only what was read: the host must survive its own
//!    writes). Encodings that trap to EL2 are found (EL2's injected-UNDEF counter) and listed;
//!    `SCXTNUM_EL0/EL1` must be among them on CPUs that have them (`HCR_EL2.EnSCXT` = 0).
//! 2. **Every other trapping class**: every `SYS`/`SYSL` encoding (TLBI, DC, AT, IC, ...) with
//!    a non-canonical address, every `MSR` (immediate), `HVC` and `SMC` with random function
//!    ids and arguments, `WFE`/`WFET`/`WFIT`, `ERET` at EL1, exception-generating
//!    instructions, SVE, SME and FP/SIMD encodings with their EL1 traps set.
//! 3. **A seeded random-instruction run**: 100,000 words from those classes, executed in the
//!    sandbox ([`crate::sandbox`]).
//! 4. **EL0**: AArch64 and AArch32 EL0 loads from EL2's memory (the injected abort must come
//!    through the right vector: +0x400 / +0x600), an EL0 read of `SCXTNUM_EL0`.
//! 5. **Devices**: the ITS and fw_cfg are gone (device tree) and abort (MMIO); the
//!    redistributors hide LPIs, hold `EnableLPIs` at 0, refuse LPI tables in EL2's memory.
//! 6. **Guests** that try to reach host state ([`guests`]).
//!
//! It ends with EL2 alive (it answers `Version`) and every leak counter at its start value.

mod chunk;
mod classes;
mod devices;
mod el0;
mod guests;
mod sysregs;

use crate::checks::Checks;
use crate::env::Env;
use crate::pkvm::{self, PKVM};
use crate::vm::leaks;
use chunk::Chunk;
use core::sync::atomic::{AtomicU32, Ordering};
use pkvm_abi::Stat;

/// Instructions the random run executes.
pub const RANDOM_WORDS: u64 = 100_000;
/// The random run's seed (printed; the run is reproducible from it).
const SEED: u64 = 0x7068_6f73_7469_6c65;

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A register value that is never a mapped address: bit 63 set with `TTBR1` walks disabled.
fn bad_addr(rng: &mut Rng) -> u64 {
    rng.next() | (1 << 63)
}

use pkvm::stat;

fn el2_alive() -> bool {
    PKVM.version().is_ok()
}

/// The parts of the scenario, in order; `pkvm.parts=` on the command line picks some.
const PARTS: [&str; 6] = ["sysregs", "classes", "random", "el0", "devices", "guests"];
/// Bit `i` set: run `PARTS[i]`.
static PARTS_SELECTED: AtomicU32 = AtomicU32::new(!0);

/// Selects the parts to run from a comma-separated list (`pkvm.parts=el0,devices`); unknown
/// names are reported and ignored.
pub fn set_parts(list: &str) {
    let mut bits = 0;
    for w in list.split(',') {
        match PARTS.iter().position(|p| *p == w) {
            Some(i) => bits |= 1 << i,
            None => println!("hostile: unknown part {w:?} (known: {PARTS:?})"),
        }
    }
    PARTS_SELECTED.store(bits, Ordering::Relaxed);
}

fn part(name: &str) -> bool {
    let bits = PARTS_SELECTED.load(Ordering::Relaxed);
    let on = PARTS
        .iter()
        .position(|p| *p == name)
        .is_some_and(|i| bits & (1 << i) != 0);
    if !on {
        println!("hostile: part '{name}' not selected (pkvm.parts)");
    }
    on
}

/// Runs the scenario.
pub fn run(c: &mut Checks, env: &mut Env) {
    let start = leaks();
    println!("hostile: EL2 state at start: {start:?}");
    let features = PKVM.version().map(|v| v.features);
    println!("hostile: EL2 features {features:x?}");

    let mut chunk = Chunk::new(env);
    if part("sysregs") {
        sysregs::sweep(c, &mut chunk);
    }
    if part("classes") {
        classes::trap_classes(c, &mut chunk);
    }
    if part("random") {
        classes::random_run(c, &mut chunk);
    }
    if part("el0") {
        el0::run(c, env);
    }
    if part("devices") {
        devices::run(c, env);
    }
    if part("guests") {
        guests::run(c, env);
    }

    c.check(
        "EL2 is alive at the end (Version answers)",
        el2_alive(),
        format_args!("{:x?}", PKVM.version()),
    );
    let end = leaks();
    println!("hostile: EL2 state at end: {end:?}");
    c.check(
        "leak counters back at their start values",
        end == start && end.shared == 0 && end.guest_shared == 0 && end.vms == 0,
        format_args!("start {start:?}, end {end:?}"),
    );
    println!(
        "hostile: EL2 injected {} UNDEFs and {} aborts, emulated {} device accesses and \
         refused {} device writes in this run",
        stat(Stat::InjectedUndefs),
        stat(Stat::InjectedAborts),
        stat(Stat::EmulatedMmio),
        stat(Stat::RefusedDeviceWrites)
    );
}
