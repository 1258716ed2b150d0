//! EL2 system-register configuration for an AArch64 EL1 host.
//!
//! Registers that `aarch64-cpu` models are accessed through it (safe API); the few it does not
//! know (`VPIDR_EL2`, `ZCR_EL2`, `HCRX_EL2`, `PMCR_EL0`) use `mrs`/`msr` by encoding below.

use aarch64_cpu::registers::*;
use core::arch::asm;
use pkvm_arch::exception::{self, PstateFeatures};
use pkvm_arch::regs::{cnthctl, cptr, hcr, mdcr};

/// `SPSR_EL2` for entering the host: EL1h (EL1 with `SP_EL1`), AArch64, D, A, I and F masked.
pub const SPSR_EL1H_DAIF_MASKED: u64 = 0x3c5;

/// `SCTLR_EL1` reset value for the host: RES1 bits only, MMU and caches off, little-endian.
pub const SCTLR_EL1_RESET: u64 = 0x30d0_0800;

/// ESR_EL2, ELR_EL2, FAR_EL2 and SPSR_EL2, for reports.
pub fn fault_regs() -> (u64, u64, u64, u64) {
    (ESR_EL2.get(), ELR_EL2.get(), FAR_EL2.get(), SPSR_EL2.get())
}

/// ESR_EL2.
#[inline(always)]
pub fn esr() -> u64 {
    ESR_EL2.get()
}

/// Moves the host past the instruction that trapped (`len` bytes: a trapped `SMC` or an
/// emulated access reports its own address).
#[inline(always)]
pub fn skip_host_instruction(len: u64) {
    ELR_EL2.set(ELR_EL2.get().wrapping_add(len));
}

fn field(value: u64, shift: u32, width: u32) -> u64 {
    (value >> shift) & ((1 << width) - 1)
}

/// `HCR_EL2` for the host (stage-2 off until `hyp_init::enable_host_stage2` sets `VM`). Every
/// bit is a decision; docs/SECURITY.md has the table. Set:
/// - `RW`: EL1 is AArch64;
/// - `TSC`: host `SMC`s trap (EL2 relays PSCI and keeps CPU_ON's entry point its own);
/// - `API`, `APK`: pointer authentication works at EL1/EL0 without trapping (the keys are the
///   host's; guests get them switched or trapped).
///
/// Left clear: `FMO`/`IMO`/`AMO` (the host owns the interrupt controller and its SErrors),
/// `TWI`/`TWE` (the host's idle is its own business), the ID traps `TID*` (nothing to hide),
/// `TACR`/`TIDCP` (the host's ACTLR and implementation-defined EL1 registers are its own; they
/// configure its CPU, not EL2), `TSW`/`TPCP`/`TPU` (cache maintenance is by address or
/// set/way of the host's own view; EL2's memory is never mapped for it), `TVM`/`TRVM`,
/// `TTLB` (host TLBIs only reach VMID 0), `TDZ`, `HCD` (HVC is the hypercall conduit),
/// `TLOR` (LORegions only order the host's own accesses), `TERR`/`TEA`/`FIEN`, `ATA` (MTE
/// registers trap: EL2 does not switch them; QEMU without `mte=on` has none), `EnSCXT`
/// (`SCXTNUM_EL0/1` trap, and the host gets an UNDEF: EL2 does not switch them for guests
/// either, so nobody owns them), `E2H`/`TGE`/`NV*` (no VHE, no nesting), `FWB`, `DC`.
pub const HCR_HOST: u64 = hcr::RW | hcr::TSC | hcr::API | hcr::APK;

/// Configures EL2 for an AArch64 EL1 host. Stage-2 translation stays off (`enable_host_stage2`
/// turns it on once EL2's tables are ready).
pub fn init_for_host() {
    let pfr0 = ID_AA64PFR0_EL1.get();
    let pfr1 = ID_AA64PFR1_EL1.get();
    let dfr0 = ID_AA64DFR0_EL1.get();
    let mmfr0 = ID_AA64MMFR0_EL1.get();
    let mmfr1 = ID_AA64MMFR1_EL1.get();

    HCR_EL2.set(HCR_HOST);

    // CPTR_EL2: no trap for the host (FP/SIMD, SVE, SME, trace, activity monitors, CPACR):
    // its registers are its own and EL2 never touches them (softfloat). TZ/TSM are RES1
    // where SVE/SME are absent.
    let sve = field(pfr0, 32, 4) != 0;
    let sme = field(pfr1, 24, 4) != 0;
    CPTR_EL2.set(cptr::RES1 | if sve { 0 } else { cptr::TZ } | if sme { 0 } else { cptr::TSM });
    if sve {
        // SVE: let the host use the largest vector length.
        // SAFETY: ZCR_EL2 (S3_4_C1_C2_0) exists when ID_AA64PFR0_EL1.SVE != 0; writing it only
        // limits the vector length seen below EL2.
        unsafe { asm!("msr S3_4_C1_C2_0, {}", in(reg) 0x1ffu64, options(nomem, nostack)) };
    }
    if sme {
        // SME: the largest streaming vector length, and the full A64 instruction set in
        // streaming mode when the CPU has it (SMCR_EL2 resets to an UNKNOWN value).
        let smfr0: u64;
        // SAFETY: ID_AA64SMFR0_EL1 (S3_0_C0_C4_5) exists with SME; reading has no effect.
        unsafe { asm!("mrs {}, S3_0_C0_C4_5", out(reg) smfr0, options(nomem, nostack)) };
        let fa64 = (smfr0 >> 63) << 31;
        // SAFETY: SMCR_EL2 (S3_4_C1_C2_6) exists with SME; it only limits SME below EL2.
        unsafe { asm!("msr S3_4_C1_C2_6, {}", in(reg) 0xf | fa64, options(nomem, nostack)) };
    }
    // EL2 itself is never traced, sampled or branch-recorded: the controls of those features
    // reset to UNKNOWN values and the host owns the units (statistical profiling buffer and
    // trace buffer excepted, below).
    if field(dfr0, 40, 4) != 0 {
        // SAFETY: TRFCR_EL2 (S3_4_C1_C2_1) exists with FEAT_TRF; 0 prohibits trace at EL2.
        unsafe { asm!("msr S3_4_C1_C2_1, xzr", options(nomem, nostack)) };
    }
    if field(dfr0, 32, 4) != 0 {
        // SAFETY: PMSCR_EL2 (S3_4_C9_C9_0) exists with FEAT_SPE; 0 disables sampling at EL2.
        unsafe { asm!("msr S3_4_C9_C9_0, xzr", options(nomem, nostack)) };
    }
    if field(dfr0, 52, 4) != 0 {
        // SAFETY: BRBCR_EL2 (S2_4_C9_C0_0) exists with FEAT_BRBE; 0 records no branch at EL2.
        unsafe { asm!("msr S2_4_C9_C0_0, xzr", options(nomem, nostack)) };
    }

    // EL1 may read the physical counter and use the physical timer; no virtual offset.
    CNTHCTL_EL2.set(cnthctl::EL1PCTEN | cnthctl::EL1PCEN);
    // The EL2 timer (its PPI 26 is enabled at boot for preemption) resets UNKNOWN: off until
    // a guest run arms it.
    CNTHP_CTL_EL2.set(0);
    CNTVOFF_EL2.set(0);

    // The host stage-2 is installed by `hyp_init` once it is built; until then none.
    VTTBR_EL2.set(0);

    // The host sees the real MIDR/MPIDR.
    let midr = MIDR_EL1.get();
    // SAFETY: VPIDR_EL2 (S3_4_C0_C0_0) always exists at EL2; it only changes what EL1 reads
    // back from MIDR_EL1.
    unsafe { asm!("msr S3_4_C0_C0_0, {}", in(reg) midr, options(nomem, nostack)) };
    VMPIDR_EL2.set(MPIDR_EL1.get());

    // MDCR_EL2: the host owns its debug registers and its PMU (HPMN = PMCR_EL0.N: every
    // counter; nothing trapped; counting at EL2 allowed, so the host can measure EL2's cost
    // — a timing side channel, out of scope). The statistical-profiling and trace buffers,
    // which write memory, stay EL2's (E2PB = E2TB = 0b00) and their registers trap (TPMS):
    // an UNDEF for the host. QEMU implements neither.
    let pmuver = field(dfr0, 8, 4);
    let hpmn = if pmuver != 0 && pmuver != 0xf {
        let pmcr: u64;
        // SAFETY: PMCR_EL0 exists when a PMUv3 is implemented (checked above); reading it has
        // no side effect.
        unsafe { asm!("mrs {}, S3_3_C9_C12_0", out(reg) pmcr, options(nomem, nostack)) };
        field(pmcr, 11, 5)
    } else {
        0
    };
    MDCR_EL2.set((hpmn & mdcr::HPMN_MASK) | mdcr::TPMS);

    // GICv3 system-register interface: let EL1 use it; the virtual interface off between
    // guest runs (its registers reset UNKNOWN: `vgic` clears them).
    if field(pfr0, 24, 4) != 0 {
        ICC_SRE_EL2.set(ICC_SRE_EL2.get() | 0b1001); // SRE | Enable
        aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
        let usable = ICC_SRE_EL2.get() & 1 != 0;
        if usable {
            ICH_HCR_EL2.set(0);
        }
        crate::vgic::probe(usable);
        crate::vgic::reset_cpu();
    }

    // Fine-grained traps (FEAT_FGT) reset to UNKNOWN values. Positive bits 0: no trap. The
    // "n" bits trap when 0: with SME, nSMPRI_EL1 and nTPIDR2_EL0 are set (the host's SME
    // state is its own); n-bits of features EL2 does not know stay 0 (RES0 when absent,
    // a trap — hence an UNDEF — when present). QEMU 7.2 has no FGT.
    if field(mmfr0, 56, 4) != 0 {
        let n = if sme { (1 << 54) | (1 << 55) } else { 0 };
        HFGRTR_EL2.set(n);
        HFGWTR_EL2.set(n);
        HFGITR_EL2.set(0);
        HDFGRTR_EL2.set(0);
        HDFGWTR_EL2.set(0);
    }
    if field(mmfr1, 40, 4) != 0 {
        // HCRX_EL2 (FEAT_HCX): 0 enables none of the extensions it gates (their registers
        // and instructions trap: UNDEF for the host) and traps nothing else.
        // SAFETY: HCRX_EL2 (S3_4_C1_C2_2) exists when ID_AA64MMFR1_EL1.HCX != 0.
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

/// The PSTATE features that change what an exception entry writes, from the ID registers.
pub fn pstate_features() -> PstateFeatures {
    PstateFeatures::from_id_regs(ID_AA64MMFR1_EL1.get(), ID_AA64PFR1_EL1.get())
}

/// Makes the host take the synchronous exception `esr` at EL1 when EL2 returns: the entry the
/// architecture would have made, emulated (ESR/ELR/SPSR_EL1, then `eret` into the host's
/// vector with the entry PSTATE). Vectors by where the host was: EL1t +0x000, EL1h +0x200,
/// AArch64 EL0 +0x400, AArch32 EL0 +0x600.
fn inject_host_sync(esr: u64) {
    let e = exception::el1_sync(
        esr,
        ELR_EL2.get(),
        SPSR_EL2.get(),
        VBAR_EL1.get(),
        SCTLR_EL1.get(),
        pstate_features(),
    );
    ESR_EL1.set(e.esr);
    ELR_EL1.set(e.elr);
    SPSR_EL1.set(e.spsr);
    ELR_EL2.set(e.vector);
    SPSR_EL2.set(e.pstate);
}

/// Makes the host take a synchronous external abort for the access that trapped with
/// `esr_el2` at `far`.
pub fn inject_host_sea(esr_el2: u64, far: u64) {
    FAR_EL1.set(far);
    inject_host_sync(exception::sea_esr(esr_el2, SPSR_EL2.get()));
}

/// Makes the host take an UNDEF for the instruction that trapped.
pub fn inject_host_undef() {
    inject_host_sync(exception::UNDEF_ESR);
}
