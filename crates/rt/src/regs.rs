//! Small register helpers every image uses, through `aarch64-cpu`'s typed accessors (no
//! `unsafe` here). They read only registers that exist and are readable at EL1 and EL2.

use aarch64_cpu::registers::{CurrentEL, ID_AA64MMFR0_EL1, MPIDR_EL1, Readable};

/// The exception level the CPU runs at (1 or 2 in pkvm-rs).
pub fn current_el() -> u64 {
    CurrentEL.read(CurrentEL::EL)
}

/// The affinity fields of `MPIDR_EL1` (Aff3 at 39:32, Aff2..Aff0 at 23:0).
pub const MPIDR_AFF_MASK: u64 = 0xff_00ff_ffff;

/// This CPU's affinity fields of `MPIDR_EL1` (Aff3, Aff2, Aff1, Aff0): what PSCI's CPU_ON and
/// the device tree's `/cpus` nodes call the CPU. At EL1 under EL2 it reads `VMPIDR_EL2`.
pub fn mpidr_affinity() -> u64 {
    MPIDR_EL1.get() & MPIDR_AFF_MASK
}

/// The physical address size from `ID_AA64MMFR0_EL1.PARange`: (bits, the 3-bit encoding that
/// `TCR_ELx.{I}PS` and `VTCR_EL2.PS` take), capped at 48 bits (the 4 KiB granule without LPA2
/// cannot output more).
pub fn pa_range() -> (u32, u64) {
    match ID_AA64MMFR0_EL1.get() & 0xf {
        0 => (32, 0),
        1 => (36, 1),
        2 => (40, 2),
        3 => (42, 3),
        4 => (44, 4),
        _ => (48, 5),
    }
}

/// Waits for interrupts forever (with all of them masked: forever).
pub fn hang() -> ! {
    loop {
        aarch64_cpu::asm::wfi();
    }
}
