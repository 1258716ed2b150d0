//! The world switch: from the host's hypercall into a guest and back.
//!
//! `VcpuRun` reaches [`run_guest`] through the portable core (`crates/hyp/src/vm.rs`), which
//! has validated the guest's PC and PSTATE (read once from the host-shared vCPU structure).
//! `el2_guest_run` (assembly below) then, on the EL2 stack of the host's hypercall:
//!
//! 1. saves the host's callee-saved registers and `SP_EL2` in a [`WorldCtx`] on the stack,
//!    the host's EL1 system registers and FP/SIMD registers in it too, and the EL2 registers
//!    that describe the host (`ELR_EL2`/`SPSR_EL2` of its `HVC`, `HCR_EL2`, `VTTBR_EL2`,
//!    `VBAR_EL2`, `CNTHCTL_EL2`);
//! 2. loads the guest's FP/SIMD registers, EL1 system registers and general registers straight
//!    from the host-shared structures (no value of those is invalid), `ELR_EL2`/`SPSR_EL2` =
//!    the validated PC/PSTATE, `VTTBR_EL2` = guest root | VMID << 48, the guest `HCR_EL2`,
//!    `VBAR_EL2` = [`el2_guest_vectors`] and `CNTHCTL_EL2` without EL1 physical-timer access,
//!    puts the context's address in `TPIDR_EL2` and `eret`s;
//! 3. any exception from the guest lands in `el2_guest_vectors` (the host's vector table, and
//!    so the host's hypercall fast path, is untouched): the guest's general registers, PC,
//!    PSTATE, EL1 system registers and FP/SIMD registers are stored back into the shared
//!    structures, `ESR_EL2`/`FAR_EL2`/`HPFAR_EL2` into the context, the host's state is
//!    reloaded, and `el2_guest_run` returns to its Rust caller as if it were a normal call.
//!
//! The guest's `HCR_EL2`: VM (stage-2), RW (AArch64 EL1), TSC (its SMCs trap), TID3 (its ID
//! register reads trap: EL2 answers with the features it does not switch hidden), TWI (a `WFI`
//! ends the run instead of stopping the host's CPU), IMO/FMO/AMO (physical interrupts and
//! SErrors come to EL2 and end the run), PTW; no DC (it would make the guest's stage-1 MMU
//! behave as off even once the guest turns it on, which no real OS survives: a guest with its
//! MMU off sees Device memory for data and manages its caches itself, as on bare metal); and
//! the traps that keep it off state the world switch does not switch (each
//! ends the run with a `FAULT` exit): TACR (`ACTLR_EL1`), TIDCP (implementation-defined EL1
//! registers), TSW (set/way cache maintenance, which acts on the host's caches too), TLOR
//! (LORegion registers), TERR (RAS error records); no API/APK (pointer-auth keys and
//! instructions trap: the keys are the host's), no ATA (MTE registers trap), no EnSCXT
//! (`SCXTNUM_EL0/1` trap).
//!
//! Beyond the EL1 registers in `VcpuState::sys` (`CSSELR_EL1` among them, and `TPIDR2_EL0`
//! when the CPU has SME: nothing can trap it), the guest must not reach host state through:
//! - FP/SIMD/SVE/SME: `CPTR_EL2` TFP (switched lazily: the first access traps and the trap
//!   clears **only** TFP), TZ and TSM stay set for the whole run (SVE/SME and `ZCR_EL1`,
//!   `SMCR_EL1`, `SVCR` trap and end it), TTA (trace: its registers are debug-space ones, answered
//!   as below), TAM (activity monitors);
//! - debug: `MDCR_EL2` TDA/TDOSA/TDRA trap every debug register (breakpoints, watchpoints,
//!   `MDSCR_EL1`, the OS lock), and `MDSCR_EL1` is 0 while the guest runs (the host's
//!   breakpoints, watchpoints and single-step are off in the guest; the host's value is
//!   restored on exit), so a guest can neither arm a breakpoint the host then hits nor step;
//! - the PMU: `MDCR_EL2` TPM/TPMCR trap every PMU register; the trace filter (TTRF) traps.
//!
//! The trapped debug and PMU accesses do not end the run: the portable core answers them
//! (`vm/run.rs`, `emulate_sysreg`: reads as zero, writes ignored), so a guest OS that resets
//! them at boot runs on, with no self-hosted debug and no PMU.

use core::arch::global_asm;

use aarch64_cpu::registers::{
    CNTHP_CTL_EL2, CNTV_CTL_EL0, CNTV_CVAL_EL0, MPIDR_EL1, Readable, VMPIDR_EL2, Writeable,
};
use core::mem::offset_of;

use pkvm_abi::guest::{NR_SYSREGS, vcpu_off};
use pkvm_arch::regs::{cnthctl, cptr, hcr, mdcr};
use pkvm_hyp::platform::{GuestEntry, GuestExit};

/// `HCR_EL2` while a guest runs (see the module documentation).
pub const HCR_GUEST: u64 = hcr::VM
    | hcr::PTW
    | hcr::FMO
    | hcr::IMO
    | hcr::AMO
    | hcr::TWI
    | hcr::TID3
    | hcr::TSC
    | hcr::TIDCP
    | hcr::TACR
    | hcr::TSW
    | hcr::RW
    | hcr::TLOR
    | hcr::TERR;
/// `CPTR_EL2` bits added while a guest runs: TZ (SVE), TFP (FP/SIMD: switched lazily on the
/// first access, which clears TFP alone), TSM (SME), TTA (trace), TAM (activity monitors).
pub const CPTR_GUEST_TRAPS: u64 = cptr::TZ | cptr::TFP | cptr::TSM | cptr::TTA | cptr::TAM;
/// `MDCR_EL2` bits added while a guest runs: every debug, PMU and trace-filter register traps.
pub const MDCR_GUEST_TRAPS: u64 =
    mdcr::TDA | mdcr::TDOSA | mdcr::TDRA | mdcr::TPM | mdcr::TPMCR | mdcr::TTRF;
/// `CNTHCTL_EL2` while a guest runs: EL1PCTEN (counter readable), physical timer trapped.
pub const CNTHCTL_GUEST: u64 = cnthctl::EL1PCTEN;

/// The world switch's private context, on the EL2 stack for the duration of one run.
#[repr(C, align(16))]
#[derive(Debug)]
pub struct WorldCtx {
    vcpu_pa: u64,
    fp_pa: u64,
    pc: u64,
    pstate: u64,
    vttbr: u64,
    hcr: u64,
    esr: u64,
    far: u64,
    hpfar: u64,
    vector: u64,
    host_elr: u64,
    host_spsr: u64,
    host_hcr: u64,
    host_vttbr: u64,
    host_vbar: u64,
    host_cnthctl: u64,
    host_cptr: u64,
    /// Non-zero once the guest's FP/SIMD registers are loaded (its first FP access this run).
    fp_loaded: u64,
    host_mdcr: u64,
    host_mdscr: u64,
    /// Non-zero when the CPU has SME: `TPIDR2_EL0` exists and is switched.
    sme: u64,
    _pad: u64,
    /// `x19..=x30`, then `sp`.
    host_gprs: [u64; 14],
    host_sys: [u64; NR_SYSREGS],
    host_fp: [u64; 66],
}

unsafe extern "C" {
    fn el2_guest_run(ctx: *mut WorldCtx);
}

/// Whether the CPU implements SME (`ID_AA64PFR1_EL1.SME`): then `TPIDR2_EL0` exists.
fn has_sme() -> bool {
    use aarch64_cpu::registers::{ID_AA64PFR1_EL1, Readable};
    (ID_AA64PFR1_EL1.get() >> 24) & 0xf != 0
}

/// Arms the EL2 physical timer (`CNTHP`, PPI 26) at the host's next deadline: its virtual
/// timer, which the guest's replaces for the run, if enabled and unmasked (the host's `CNTVOFF`
/// is 0, so its compare value is a physical count). The host's physical timer is not switched
/// and keeps interrupting as it was. An interrupt during the run ends it (`HCR_EL2.IMO`), so a
/// guest cannot keep the CPU past the host's deadline, even spinning with its interrupts
/// masked — provided the host leaves PPI 26 enabled (EL2 enables it at boot in every
/// redistributor) and its CPU interface takes group 1 interrupts.
#[inline(always)]
fn arm_preemption() {
    use pkvm_arch::regs::cntctl::{ENABLE, IMASK};
    let ctl = CNTV_CTL_EL0.get();
    if ctl & (ENABLE | IMASK) == ENABLE {
        let cval = CNTV_CVAL_EL0.get();
        // SAFETY: CNTHP_CVAL_EL2 (S3_4_C14_C2_2) is EL2's own timer compare value: writing it
        // affects only when the EL2 timer fires.
        unsafe {
            core::arch::asm!("msr S3_4_C14_C2_2, {}", in(reg) cval, options(nomem, nostack, preserves_flags))
        };
        CNTHP_CTL_EL2.set(ENABLE);
    }
}

/// Runs the guest described by `e` until it exits; see the module documentation.
pub fn run_guest(e: &GuestEntry) -> GuestExit {
    let mut slot = core::mem::MaybeUninit::<WorldCtx>::uninit();
    let ctx = slot.as_mut_ptr();
    // SAFETY: writes to fields of a local, properly aligned `WorldCtx`; the save areas stay
    // uninitialised: the assembly fills them before it reads them.
    unsafe {
        (&raw mut (*ctx).vcpu_pa).write(e.vcpu_pa);
        (&raw mut (*ctx).fp_pa).write(e.fp_pa);
        (&raw mut (*ctx).pc).write(e.pc);
        (&raw mut (*ctx).pstate).write(e.pstate);
        (&raw mut (*ctx).vttbr).write(e.vttbr);
        (&raw mut (*ctx).hcr).write(HCR_GUEST);
        (&raw mut (*ctx).sme).write(u64::from(has_sme()));
    }
    arm_preemption();
    // The vCPU's own MPIDR (its index as Aff0), not the physical CPU's.
    VMPIDR_EL2.set(e.vmpidr);
    // SAFETY: `el2_guest_run` behaves as an AAPCS64 function to its caller: it preserves
    // x19..x30 and SP (saved in `ctx`, restored on the guest's exit) and returns normally.
    // It reads and writes only `ctx` and the vCPU and FP structures, which the core has
    // pinned (host memory shared with EL2, mapped in EL2's stage-1 at VA == PA). The host's
    // EL1, FP/SIMD and EL2 control state it changes is restored before it returns, and it
    // always writes `vector`, `esr`, `far` and `hpfar`.
    unsafe { el2_guest_run(ctx) };
    // The EL2 timer's job is done: its interrupt deasserts. The host reads its CPU's MPIDR.
    CNTHP_CTL_EL2.set(0);
    VMPIDR_EL2.set(MPIDR_EL1.get());
    // SAFETY: the exit fields were written by the assembly (see above).
    unsafe {
        GuestExit {
            vector: (&raw const (*ctx).vector).read(),
            esr: (&raw const (*ctx).esr).read(),
            far: (&raw const (*ctx).far).read(),
            hpfar: (&raw const (*ctx).hpfar).read(),
        }
    }
}

global_asm!(
    r#"
    .arch_extension fp
    .arch_extension simd

    /* EL1 system registers <-> [\base] in pkvm_abi::guest::sys order; clobbers x3, x4;
       x0 is the WorldCtx (its `sme` flag says whether TPIDR2_EL0 exists). */
    .macro el1_save base
    mrs     x3, sctlr_el1
    mrs     x4, cpacr_el1
    stp     x3, x4, [\base, #0x00]
    mrs     x3, ttbr0_el1
    mrs     x4, ttbr1_el1
    stp     x3, x4, [\base, #0x10]
    mrs     x3, tcr_el1
    mrs     x4, esr_el1
    stp     x3, x4, [\base, #0x20]
    mrs     x3, afsr0_el1
    mrs     x4, afsr1_el1
    stp     x3, x4, [\base, #0x30]
    mrs     x3, far_el1
    mrs     x4, mair_el1
    stp     x3, x4, [\base, #0x40]
    mrs     x3, vbar_el1
    mrs     x4, contextidr_el1
    stp     x3, x4, [\base, #0x50]
    mrs     x3, amair_el1
    mrs     x4, cntkctl_el1
    stp     x3, x4, [\base, #0x60]
    mrs     x3, par_el1
    mrs     x4, tpidr_el1
    stp     x3, x4, [\base, #0x70]
    mrs     x3, sp_el1
    mrs     x4, elr_el1
    stp     x3, x4, [\base, #0x80]
    mrs     x3, spsr_el1
    mrs     x4, sp_el0
    stp     x3, x4, [\base, #0x90]
    mrs     x3, tpidr_el0
    mrs     x4, tpidrro_el0
    stp     x3, x4, [\base, #0xa0]
    mrs     x3, cntv_ctl_el0
    mrs     x4, cntv_cval_el0
    stp     x3, x4, [\base, #0xb0]
    mrs     x3, csselr_el1
    str     x3, [\base, #0xc0]
    ldr     x4, [x0, #{sme}]
    cbz     x4, 8f
    mrs     x3, S3_3_C13_C0_5       /* TPIDR2_EL0 */
    str     x3, [\base, #0xc8]
8:
    .endm

    .macro el1_load base
    ldp     x3, x4, [\base, #0x00]
    msr     sctlr_el1, x3
    msr     cpacr_el1, x4
    ldp     x3, x4, [\base, #0x10]
    msr     ttbr0_el1, x3
    msr     ttbr1_el1, x4
    ldp     x3, x4, [\base, #0x20]
    msr     tcr_el1, x3
    msr     esr_el1, x4
    ldp     x3, x4, [\base, #0x30]
    msr     afsr0_el1, x3
    msr     afsr1_el1, x4
    ldp     x3, x4, [\base, #0x40]
    msr     far_el1, x3
    msr     mair_el1, x4
    ldp     x3, x4, [\base, #0x50]
    msr     vbar_el1, x3
    msr     contextidr_el1, x4
    ldp     x3, x4, [\base, #0x60]
    msr     amair_el1, x3
    msr     cntkctl_el1, x4
    ldp     x3, x4, [\base, #0x70]
    msr     par_el1, x3
    msr     tpidr_el1, x4
    ldp     x3, x4, [\base, #0x80]
    msr     sp_el1, x3
    msr     elr_el1, x4
    ldp     x3, x4, [\base, #0x90]
    msr     spsr_el1, x3
    msr     sp_el0, x4
    ldp     x3, x4, [\base, #0xa0]
    msr     tpidr_el0, x3
    msr     tpidrro_el0, x4
    ldp     x3, x4, [\base, #0xb0]
    msr     cntv_ctl_el0, x3
    msr     cntv_cval_el0, x4
    ldr     x3, [\base, #0xc0]
    msr     csselr_el1, x3
    ldr     x4, [x0, #{sme}]
    cbz     x4, 8f
    ldr     x3, [\base, #0xc8]
    msr     S3_3_C13_C0_5, x3       /* TPIDR2_EL0 */
8:
    .endm

    /* q0..q31, FPSR, FPCR <-> [\base] (pkvm_abi::guest::FpState); clobbers x3, x4. */
    .macro fp_save base
    stp     q0, q1, [\base, #0x000]
    stp     q2, q3, [\base, #0x020]
    stp     q4, q5, [\base, #0x040]
    stp     q6, q7, [\base, #0x060]
    stp     q8, q9, [\base, #0x080]
    stp     q10, q11, [\base, #0x0a0]
    stp     q12, q13, [\base, #0x0c0]
    stp     q14, q15, [\base, #0x0e0]
    stp     q16, q17, [\base, #0x100]
    stp     q18, q19, [\base, #0x120]
    stp     q20, q21, [\base, #0x140]
    stp     q22, q23, [\base, #0x160]
    stp     q24, q25, [\base, #0x180]
    stp     q26, q27, [\base, #0x1a0]
    stp     q28, q29, [\base, #0x1c0]
    stp     q30, q31, [\base, #0x1e0]
    mrs     x3, fpsr
    mrs     x4, fpcr
    str     x3, [\base, #0x200]
    str     x4, [\base, #0x208]
    .endm

    .macro fp_load base
    ldp     q0, q1, [\base, #0x000]
    ldp     q2, q3, [\base, #0x020]
    ldp     q4, q5, [\base, #0x040]
    ldp     q6, q7, [\base, #0x060]
    ldp     q8, q9, [\base, #0x080]
    ldp     q10, q11, [\base, #0x0a0]
    ldp     q12, q13, [\base, #0x0c0]
    ldp     q14, q15, [\base, #0x0e0]
    ldp     q16, q17, [\base, #0x100]
    ldp     q18, q19, [\base, #0x120]
    ldp     q20, q21, [\base, #0x140]
    ldp     q22, q23, [\base, #0x160]
    ldp     q24, q25, [\base, #0x180]
    ldp     q26, q27, [\base, #0x1a0]
    ldp     q28, q29, [\base, #0x1c0]
    ldp     q30, q31, [\base, #0x1e0]
    ldr     x3, [\base, #0x200]
    ldr     x4, [\base, #0x208]
    msr     fpsr, x3
    msr     fpcr, x4
    .endm

    .section .text.el2_guest_run, "ax"
    .global el2_guest_run
el2_guest_run:
    stp     x19, x20, [x0, #{gprs} + 0x00]
    stp     x21, x22, [x0, #{gprs} + 0x10]
    stp     x23, x24, [x0, #{gprs} + 0x20]
    stp     x25, x26, [x0, #{gprs} + 0x30]
    stp     x27, x28, [x0, #{gprs} + 0x40]
    stp     x29, x30, [x0, #{gprs} + 0x50]
    mov     x1, sp
    str     x1, [x0, #{gprs} + 0x60]

    add     x2, x0, #{host_sys}
    el1_save x2
    /* FP/SIMD is switched lazily: the guest's first FP access traps (CPTR_EL2.TFP). SVE and
       SME trap too (TZ, TSM) and end the run: their state is not switched. */
    mrs     x3, cptr_el2
    ldr     x4, ={cptr_guest_traps}
    orr     x4, x3, x4
    stp     x3, xzr, [x0, #{host_cptr}]
    msr     cptr_el2, x4
    /* Debug, PMU and trace filter trap; the host's breakpoints and step are off. */
    mrs     x3, mdcr_el2
    mrs     x4, mdscr_el1
    stp     x3, x4, [x0, #{host_mdcr}]
    ldr     x4, ={mdcr_guest_traps}
    orr     x3, x3, x4
    msr     mdcr_el2, x3
    msr     mdscr_el1, xzr
    ldr     x1, [x0, #{vcpu_pa}]
    add     x2, x1, #{sys}
    el1_load x2

    mrs     x3, elr_el2
    mrs     x4, spsr_el2
    stp     x3, x4, [x0, #{host_elr}]
    mrs     x3, hcr_el2
    mrs     x4, vttbr_el2
    stp     x3, x4, [x0, #{host_hcr}]
    mrs     x3, vbar_el2
    mrs     x4, cnthctl_el2
    stp     x3, x4, [x0, #{host_vbar}]

    ldp     x3, x4, [x0, #{pc}]
    msr     elr_el2, x3
    msr     spsr_el2, x4
    ldp     x3, x4, [x0, #{vttbr}]
    msr     vttbr_el2, x3
    msr     hcr_el2, x4
    adrp    x3, el2_guest_vectors
    add     x3, x3, :lo12:el2_guest_vectors
    msr     vbar_el2, x3
    mov     x3, #{cnthctl}
    msr     cnthctl_el2, x3
    msr     tpidr_el2, x0
    isb

    /* Guest general registers, x1 (the structure's address) last. */
    ldr     x30, [x1, #{regs} + 0xf0]
    ldp     x28, x29, [x1, #{regs} + 0xe0]
    ldp     x26, x27, [x1, #{regs} + 0xd0]
    ldp     x24, x25, [x1, #{regs} + 0xc0]
    ldp     x22, x23, [x1, #{regs} + 0xb0]
    ldp     x20, x21, [x1, #{regs} + 0xa0]
    ldp     x18, x19, [x1, #{regs} + 0x90]
    ldp     x16, x17, [x1, #{regs} + 0x80]
    ldp     x14, x15, [x1, #{regs} + 0x70]
    ldp     x12, x13, [x1, #{regs} + 0x60]
    ldp     x10, x11, [x1, #{regs} + 0x50]
    ldp     x8, x9, [x1, #{regs} + 0x40]
    ldp     x6, x7, [x1, #{regs} + 0x30]
    ldp     x4, x5, [x1, #{regs} + 0x20]
    ldp     x2, x3, [x1, #{regs} + 0x10]
    ldp     x0, x1, [x1, #{regs} + 0x00]
"#,
    pkvm_rt::eret_sb!(),
    r#"

    /* Exit: x1 = vector kind, guest x0/x1 on the stack. */
el2_guest_exit:
    mrs     x0, tpidr_el2
    str     x1, [x0, #{vector}]
    ldr     x1, [x0, #{vcpu_pa}]
    stp     x2, x3, [x1, #{regs} + 0x10]
    stp     x4, x5, [x1, #{regs} + 0x20]
    stp     x6, x7, [x1, #{regs} + 0x30]
    stp     x8, x9, [x1, #{regs} + 0x40]
    stp     x10, x11, [x1, #{regs} + 0x50]
    stp     x12, x13, [x1, #{regs} + 0x60]
    stp     x14, x15, [x1, #{regs} + 0x70]
    stp     x16, x17, [x1, #{regs} + 0x80]
    stp     x18, x19, [x1, #{regs} + 0x90]
    stp     x20, x21, [x1, #{regs} + 0xa0]
    stp     x22, x23, [x1, #{regs} + 0xb0]
    stp     x24, x25, [x1, #{regs} + 0xc0]
    stp     x26, x27, [x1, #{regs} + 0xd0]
    stp     x28, x29, [x1, #{regs} + 0xe0]
    str     x30, [x1, #{regs} + 0xf0]
    ldp     x2, x3, [sp], #16
    stp     x2, x3, [x1, #{regs} + 0x00]
    mrs     x2, elr_el2
    mrs     x3, spsr_el2
    stp     x2, x3, [x1, #{vpc}]
    mrs     x2, esr_el2
    mrs     x3, far_el2
    stp     x2, x3, [x0, #{esr}]
    mrs     x2, hpfar_el2
    str     x2, [x0, #{hpfar}]

    add     x2, x1, #{sys}
    el1_save x2
    ldp     x2, x3, [x0, #{host_mdcr}]
    msr     mdcr_el2, x2
    msr     mdscr_el1, x3
    ldp     x2, x3, [x0, #{host_cptr}]
    msr     cptr_el2, x2
    isb
    cbz     x3, 1f
    ldr     x2, [x0, #{fp_pa}]
    fp_save x2
    add     x2, x0, #{host_fp}
    fp_load x2
1:
    add     x2, x0, #{host_sys}
    el1_load x2

    ldp     x2, x3, [x0, #{host_elr}]
    msr     elr_el2, x2
    msr     spsr_el2, x3
    ldp     x2, x3, [x0, #{host_hcr}]
    msr     hcr_el2, x2
    msr     vttbr_el2, x3
    ldp     x2, x3, [x0, #{host_vbar}]
    msr     vbar_el2, x2
    msr     cnthctl_el2, x3
    isb

    ldr     x1, [x0, #{gprs} + 0x60]
    mov     sp, x1
    ldp     x19, x20, [x0, #{gprs} + 0x00]
    ldp     x21, x22, [x0, #{gprs} + 0x10]
    ldp     x23, x24, [x0, #{gprs} + 0x20]
    ldp     x25, x26, [x0, #{gprs} + 0x30]
    ldp     x27, x28, [x0, #{gprs} + 0x40]
    ldp     x29, x30, [x0, #{gprs} + 0x50]
    ret

    /* The guest's synchronous exceptions: a trapped FP/SIMD access (EC 0x07) loads its FP
       state and resumes it; anything else ends the run. x0/x1 are on the stack. */
el2_guest_sync:
    mrs     x0, esr_el2
    lsr     x0, x0, #26
    cmp     x0, #0x07
    b.eq    2f
    mov     x1, #0
    b       el2_guest_exit
2:  stp     x2, x3, [sp, #-32]!
    str     x4, [sp, #16]
    mrs     x0, tpidr_el2
    /* Clear TFP only: TZ and TSM stay set, SVE/SME keep trapping for the whole run. */
    mrs     x2, cptr_el2
    bic     x2, x2, #{cptr_tfp}
    msr     cptr_el2, x2
    isb
    add     x2, x0, #{host_fp}
    fp_save x2
    ldr     x2, [x0, #{fp_pa}]
    fp_load x2
    mov     x2, #1
    str     x2, [x0, #{fp_loaded}]
    ldr     x4, [sp, #16]
    ldp     x2, x3, [sp], #32
    ldp     x0, x1, [sp], #16
"#,
    pkvm_rt::eret_sb!(),
    r#"

    /* Vectors while a guest runs. Exceptions taken at EL2 itself are bugs: report them. */
    .macro guest_exit_vector kind
    .balign 128
    stp     x0, x1, [sp, #-16]!
    mov     x1, #\kind
    b       el2_guest_exit
    .endm

    .macro guest_el2_vector kind
    .balign 128
    sub     sp, sp, #256
    stp     x0, x1, [sp, #0]
    mov     x0, #\kind
    b       el2_unexpected_entry
    .endm

    .section .text.guest_vectors, "ax"
    .balign 2048
    .global el2_guest_vectors
el2_guest_vectors:
    guest_el2_vector 0
    guest_el2_vector 1
    guest_el2_vector 2
    guest_el2_vector 3
    guest_el2_vector 4
    guest_el2_vector 5
    guest_el2_vector 6
    guest_el2_vector 7
    .balign 128
    stp     x0, x1, [sp, #-16]!
    b       el2_guest_sync
    guest_exit_vector 1
    guest_exit_vector 2
    guest_exit_vector 3
    guest_exit_vector 0
    guest_exit_vector 1
    guest_exit_vector 2
    guest_exit_vector 3
"#,
    gprs = const offset_of!(WorldCtx, host_gprs),
    host_sys = const offset_of!(WorldCtx, host_sys),
    host_fp = const offset_of!(WorldCtx, host_fp),
    host_cptr = const offset_of!(WorldCtx, host_cptr),
    fp_loaded = const offset_of!(WorldCtx, fp_loaded),
    cptr_guest_traps = const CPTR_GUEST_TRAPS,
    cptr_tfp = const cptr::TFP,
    mdcr_guest_traps = const MDCR_GUEST_TRAPS,
    host_mdcr = const offset_of!(WorldCtx, host_mdcr),
    sme = const offset_of!(WorldCtx, sme),
    fp_pa = const offset_of!(WorldCtx, fp_pa),
    vcpu_pa = const offset_of!(WorldCtx, vcpu_pa),
    host_elr = const offset_of!(WorldCtx, host_elr),
    host_hcr = const offset_of!(WorldCtx, host_hcr),
    host_vbar = const offset_of!(WorldCtx, host_vbar),
    pc = const offset_of!(WorldCtx, pc),
    vttbr = const offset_of!(WorldCtx, vttbr),
    esr = const offset_of!(WorldCtx, esr),
    hpfar = const offset_of!(WorldCtx, hpfar),
    vector = const offset_of!(WorldCtx, vector),
    cnthctl = const CNTHCTL_GUEST,
    sys = const vcpu_off::SYS,
    regs = const vcpu_off::REGS,
    vpc = const vcpu_off::PC,
);

// The assembly stores pairs: keep the pairs adjacent.
const _: () = {
    assert!(offset_of!(WorldCtx, pstate) == offset_of!(WorldCtx, pc) + 8);
    assert!(offset_of!(WorldCtx, hcr) == offset_of!(WorldCtx, vttbr) + 8);
    assert!(offset_of!(WorldCtx, far) == offset_of!(WorldCtx, esr) + 8);
    assert!(offset_of!(WorldCtx, host_spsr) == offset_of!(WorldCtx, host_elr) + 8);
    assert!(offset_of!(WorldCtx, host_vttbr) == offset_of!(WorldCtx, host_hcr) + 8);
    assert!(offset_of!(WorldCtx, host_cnthctl) == offset_of!(WorldCtx, host_vbar) + 8);
    assert!(offset_of!(WorldCtx, host_fp).is_multiple_of(16));
    assert!(offset_of!(WorldCtx, fp_loaded) == offset_of!(WorldCtx, host_cptr) + 8);
    assert!(vcpu_off::PSTATE == vcpu_off::PC + 8);
    assert!(NR_SYSREGS * 8 == 0xd0);
    assert!(offset_of!(WorldCtx, host_mdscr) == offset_of!(WorldCtx, host_mdcr) + 8);
};
