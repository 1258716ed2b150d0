//! EL2 system-register configuration for an AArch64 EL1 host.
//!
//! Registers that `aarch64-cpu` models are accessed through it (safe API); the few it does not
//! know (`VPIDR_EL2`, `ZCR_EL2`, `HCRX_EL2`, `PMCR_EL0`) use `mrs`/`msr` by encoding below.

use aarch64_cpu::registers::*;
use core::arch::asm;

/// `SPSR_EL2` for entering the host: EL1h (EL1 with `SP_EL1`), AArch64, D, A, I and F masked.
pub const SPSR_EL1H_DAIF_MASKED: u64 = 0x3c5;

/// `SCTLR_EL1` reset value for the host: RES1 bits only, MMU and caches off, little-endian.
pub const SCTLR_EL1_RESET: u64 = 0x30d0_0800;

/// `CPTR_EL2` (nVHE layout): RES1 bits 13, 9 and 7:0. `TFP` (bit 10), `TZ` (bit 8), `TSM`
/// (bit 12, RES1 without SME) and `TTA`/`TAM`/`TCPAC` clear: the host uses FP, SIMD, SVE, SME
/// and the trace/activity-monitor registers without trapping.
const CPTR_EL2_RES1: u64 = (1 << 13) | (1 << 9) | 0xff;
const CPTR_EL2_TSM: u64 = 1 << 12;

/// The exception level we are running at.
pub fn current_el() -> u64 {
    CurrentEL.read(CurrentEL::EL)
}

/// ESR_EL2, ELR_EL2, FAR_EL2 and SPSR_EL2, for reports.
pub fn fault_regs() -> (u64, u64, u64, u64) {
    (ESR_EL2.get(), ELR_EL2.get(), FAR_EL2.get(), SPSR_EL2.get())
}

/// ESR_EL2.
#[inline(always)]
pub fn esr() -> u64 {
    ESR_EL2.get()
}

/// Moves the host past the instruction that trapped (a trapped `SMC` reports its own address).
#[inline(always)]
pub fn skip_host_instruction() {
    ELR_EL2.set(ELR_EL2.get() + 4);
}

fn field(value: u64, shift: u32, width: u32) -> u64 {
    (value >> shift) & ((1 << width) - 1)
}

/// Configures EL2 for an AArch64 EL1 host. Stage-2 translation stays off (a later issue adds
/// the host stage-2).
pub fn init_for_host() {
    let pfr0 = ID_AA64PFR0_EL1.get();
    let pfr1 = ID_AA64PFR1_EL1.get();
    let dfr0 = ID_AA64DFR0_EL1.get();
    let mmfr0 = ID_AA64MMFR0_EL1.get();
    let mmfr1 = ID_AA64MMFR1_EL1.get();

    // RW: EL1 is AArch64. TSC: host SMCs trap to EL2, which relays PSCI. API/APK: pointer
    // authentication instructions and key registers do not trap. VM=0: no stage-2 yet.
    // IMO/FMO/AMO=0: physical interrupts and SErrors go straight to EL1.
    HCR_EL2.write(
        HCR_EL2::RW::EL1IsAarch64 + HCR_EL2::TSC::SET + HCR_EL2::API::SET + HCR_EL2::APK::SET,
    );

    let sme = field(pfr1, 24, 4) != 0;
    CPTR_EL2.set(CPTR_EL2_RES1 | if sme { 0 } else { CPTR_EL2_TSM });
    if field(pfr0, 32, 4) != 0 {
        // SVE: let the host use the largest vector length.
        // SAFETY: ZCR_EL2 (S3_4_C1_C2_0) exists when ID_AA64PFR0_EL1.SVE != 0; writing it only
        // limits the vector length seen below EL2.
        unsafe { asm!("msr S3_4_C1_C2_0, {}", in(reg) 0x1ffu64, options(nomem, nostack)) };
    }

    // EL1 may read the physical counter and use the physical timer; no virtual offset.
    CNTHCTL_EL2.write(CNTHCTL_EL2::EL1PCTEN::SET + CNTHCTL_EL2::EL1PCEN::SET);
    CNTVOFF_EL2.set(0);

    // No stage-2 for now.
    VTTBR_EL2.set(0);

    // The host sees the real MIDR/MPIDR.
    let midr = MIDR_EL1.get();
    // SAFETY: VPIDR_EL2 (S3_4_C0_C0_0) always exists at EL2; it only changes what EL1 reads
    // back from MIDR_EL1.
    unsafe { asm!("msr S3_4_C0_C0_0, {}", in(reg) midr, options(nomem, nostack)) };
    VMPIDR_EL2.set(MPIDR_EL1.get());

    // PMU: give every event counter to EL1 (HPMN = PMCR_EL0.N), trap nothing, and leave
    // counting at EL2 allowed (HPMD=0, HCCD=0) so the host can measure EL2's cost.
    let pmuver = field(dfr0, 8, 4);
    if pmuver != 0 && pmuver != 0xf {
        let pmcr: u64;
        // SAFETY: PMCR_EL0 exists when a PMUv3 is implemented (checked above); reading it has
        // no side effect.
        unsafe { asm!("mrs {}, S3_3_C9_C12_0", out(reg) pmcr, options(nomem, nostack)) };
        MDCR_EL2.set(field(pmcr, 11, 5));
    } else {
        MDCR_EL2.set(0);
    }

    // GICv3 system-register interface: let EL1 use it, no virtual interrupts.
    if field(pfr0, 24, 4) != 0 {
        ICC_SRE_EL2.set(ICC_SRE_EL2.get() | 0b1001); // SRE | Enable
        aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
        if ICC_SRE_EL2.get() & 1 != 0 {
            ICH_HCR_EL2.set(0);
        }
    }

    // Fine-grained traps (FEAT_FGT) and HCRX_EL2 (FEAT_HCX) reset to UNKNOWN values: clear
    // them when present so nothing the host does traps unexpectedly.
    if field(mmfr0, 56, 4) != 0 {
        HFGRTR_EL2.set(0);
        HFGWTR_EL2.set(0);
        HFGITR_EL2.set(0);
        HDFGRTR_EL2.set(0);
        HDFGWTR_EL2.set(0);
    }
    if field(mmfr1, 40, 4) != 0 {
        // SAFETY: HCRX_EL2 (S3_4_C1_C2_2) exists when ID_AA64MMFR1_EL1.HCX != 0; zero enables
        // no extra trap.
        unsafe { asm!("msr S3_4_C1_C2_2, xzr", options(nomem, nostack)) };
    }

    // A known, MMU-off EL1.
    SCTLR_EL1.set(SCTLR_EL1_RESET);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}

/// FAR_EL2.
#[inline(always)]
pub fn far() -> u64 {
    FAR_EL2.get()
}

/// HPFAR_EL2.
#[inline(always)]
pub fn hpfar() -> u64 {
    HPFAR_EL2.get()
}

/// `ESR_ELx.ISS` fault status code of a synchronous external abort, not on a table walk.
const FSC_SEA: u64 = 0b01_0000;

/// Makes the host take a synchronous external abort for the access that trapped with
/// `esr_el2` at `far` when EL2 returns: the exception entry an EL1 data/instruction abort
/// would have had, emulated (ESR/FAR/ELR/SPSR_EL1, then `eret` into the host's vector).
pub fn inject_host_sea(esr_el2: u64, far: u64) {
    let spsr = SPSR_EL2.get();
    let elr = ELR_EL2.get();
    // SPSR.M[3:0]: 0b0000 EL0t, 0b0100 EL1t, 0b0101 EL1h.
    let (vector, same_el) = match spsr & 0xf {
        0b0000 => (0x400, false),
        0b0100 => (0x000, true),
        _ => (0x200, true),
    };
    let instruction = esr_el2 >> 26 == 0x20;
    let ec: u64 = match (instruction, same_el) {
        (false, true) => 0x25,
        (false, false) => 0x24,
        (true, true) => 0x21,
        (true, false) => 0x20,
    };
    // Keep WnR (bit 6) of a data abort; IL = 1 (32-bit instruction).
    let wnr = if instruction { 0 } else { esr_el2 & (1 << 6) };
    ESR_EL1.set((ec << 26) | (1 << 25) | wnr | FSC_SEA);
    FAR_EL1.set(far);
    ELR_EL1.set(elr);
    SPSR_EL1.set(spsr);
    ELR_EL2.set(VBAR_EL1.get() + vector);
    SPSR_EL2.set(SPSR_EL1H_DAIF_MASKED);
}
