//! The PMU cycle counter, set to count at EL2 only. Under QEMU's `-icount shift=0` it advances
//! by one per retired instruction, so a delta around a hypercall is the number of EL2
//! instructions it cost. Without icount the numbers mean nothing.

use core::arch::asm;

/// PMCCFILTR_EL0: P (do not count EL1), U (do not count EL0), NSH (count EL2).
const PMCCFILTR_EL2_ONLY: u64 = (1 << 31) | (1 << 30) | (1 << 27);
/// PMCR_EL0: E (enable) and LC (64-bit cycle counter).
const PMCR_E_LC: u64 = (1 << 0) | (1 << 6);
/// PMCNTENSET_EL0.C: enable the cycle counter.
const PMCNTEN_C: u64 = 1 << 31;

/// Whether a PMUv3 is implemented (ID_AA64DFR0_EL1.PMUVer is neither 0 nor IMPDEF).
pub fn available() -> bool {
    use aarch64_cpu::registers::{ID_AA64DFR0_EL1, Readable};
    let ver = (ID_AA64DFR0_EL1.get() >> 8) & 0xf;
    ver != 0 && ver != 0xf
}

/// Starts the cycle counter, counting at EL2 only. Call only if [`available`].
pub fn start_el2_cycle_counter() {
    use crate::cpu::{pmcr, set_pmccfiltr, set_pmcntenset, set_pmcr};
    set_pmccfiltr(PMCCFILTR_EL2_ONLY);
    set_pmcr(pmcr() | PMCR_E_LC);
    set_pmcntenset(PMCNTEN_C);
}

/// Reads the cycle counter (after an `isb`, so earlier instructions have retired).
#[inline(always)]
pub fn read() -> u64 {
    let v: u64;
    // SAFETY: reading PMCCNTR_EL0 has no side effect; see `start_el2_cycle_counter`.
    unsafe { asm!("isb", "mrs {}, pmccntr_el0", out(reg) v, options(nomem, nostack)) };
    v
}
