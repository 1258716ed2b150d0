//! Running arbitrary instructions at EL1 and at EL0 and surviving them: what the `hostile`
//! scenario needs to throw every trapping instruction class at EL2.
//!
//! **The sandbox** (`.sandbox`, 16 KiB mapped read-write-execute at EL1): the scenario writes
//! a chunk of instructions there, ending with `br x19`, and [`run`] branches to it. An
//! exception an instruction takes at EL1 (an UNDEF — native, or injected by EL2 —, a trap to
//! EL1, an abort) lands in the host's current-EL vector, which sees `ELR_EL1` inside the
//! sandbox and jumps to `pkvm_sandbox_exception`: it counts the exception (`x11`: UNDEFs,
//! EC 0; `x12`: anything else), sets `x9 = 1` (so generated code can test "did the last
//! instruction fault"), steps over the instruction and `eret`s. It clobbers `x1`..`x5`.
//!
//! Conventions for generated code: `x0`..`x8` are free (the chunk loads what an instruction
//! needs right before it), `x9`..`x12` belong to the exception path, `x19` is the return
//! address, and nothing may change `SP`, `SPSel` or `x19`–`x29`. [`run`] saves and restores
//! the callee-saved registers (`d8`–`d15` included: generated FP code may write them), `DAIF`
//! and `FPCR`.
//!
//! **EL0** ([`el0_call`]): drops to EL0 at an entry of `.el0_text` (AArch64 or AArch32 code,
//! mapped for EL0 only) with a chosen `SPSR`; the first exception EL0 takes comes back to EL1
//! on a lower-EL vector, which returns from [`el0_call`] with the vector number and the
//! syndrome.

use core::arch::{asm, global_asm};

global_asm!(
    r#"
    .section .text.sandbox, "ax"
    .global pkvm_sandbox_run
pkvm_sandbox_run:
    stp     x29, x30, [sp, #-176]!
    mov     x29, sp
    stp     x19, x20, [sp, #16]
    stp     x21, x22, [sp, #32]
    stp     x23, x24, [sp, #48]
    stp     x25, x26, [sp, #64]
    stp     x27, x28, [sp, #80]
    stp     d8, d9, [sp, #96]
    stp     d10, d11, [sp, #112]
    stp     d12, d13, [sp, #128]
    stp     d14, d15, [sp, #144]
    mrs     x1, daif
    mrs     x2, fpcr
    stp     x1, x2, [sp, #160]
    mov     x9, #0
    mov     x11, #0
    mov     x12, #0
    adr     x19, 1f
    br      x0
1:  ldp     x1, x2, [sp, #160]
    msr     daif, x1
    msr     fpcr, x2
    mov     x0, x11
    mov     x1, x12
    ldp     d14, d15, [sp, #144]
    ldp     d12, d13, [sp, #128]
    ldp     d10, d11, [sp, #112]
    ldp     d8, d9, [sp, #96]
    ldp     x27, x28, [sp, #80]
    ldp     x25, x26, [sp, #64]
    ldp     x23, x24, [sp, #48]
    ldp     x21, x22, [sp, #32]
    ldp     x19, x20, [sp, #16]
    ldp     x29, x30, [sp], #176
    ret

    /* From the current-EL synchronous vector: x1 = ELR_EL1, inside the sandbox. */
    .global pkvm_sandbox_exception
pkvm_sandbox_exception:
    mrs     x2, esr_el1
    lsr     x2, x2, #26
    cmp     x2, #0x15               /* SVC: ELR_EL1 is already past it */
    b.eq    1f
    add     x1, x1, #4
    msr     elr_el1, x1
1:  mov     x9, #1
    cbnz    x2, 2f
    add     x11, x11, #1
"#,
    pkvm_rt::eret_sb!(),
    r#"
2:  add     x12, x12, #1
"#,
    pkvm_rt::eret_sb!(),
    r#"

    /* x0 = EL0 entry, x1 = EL0's x1 (r1), x2 = SPSR -> x0 = vector, x1..x4 = ESR, FAR, ELR,
       SPSR of the first exception EL0 takes. */
    .global pkvm_el0_call
pkvm_el0_call:
    stp     x29, x30, [sp, #-96]!
    stp     x19, x20, [sp, #16]
    stp     x21, x22, [sp, #32]
    stp     x23, x24, [sp, #48]
    stp     x25, x26, [sp, #64]
    stp     x27, x28, [sp, #80]
    msr     elr_el1, x0
    msr     spsr_el1, x2
    mov     x0, #0
    isb
"#,
    pkvm_rt::eret_sb!(),
    r#"

    /* From a lower-EL vector, on SP_EL1 as it was at the `eret` above; x0 = vector number. */
    .global pkvm_el0_return
pkvm_el0_return:
    mrs     x1, esr_el1
    mrs     x2, far_el1
    mrs     x3, elr_el1
    mrs     x4, spsr_el1
    ldp     x27, x28, [sp, #80]
    ldp     x25, x26, [sp, #64]
    ldp     x23, x24, [sp, #48]
    ldp     x21, x22, [sp, #32]
    ldp     x19, x20, [sp, #16]
    ldp     x29, x30, [sp], #96
    ret

    /* EL0 code (.el0_text: executable at EL0 only). */
    .section .el0_text, "ax"
    .balign 4096
    .global pkvm_el0_a64_load
pkvm_el0_a64_load:              /* A64: load from x1, then SVC back */
    ldr     x0, [x1]
    svc     #0
    .global pkvm_el0_a64_scxtnum
pkvm_el0_a64_scxtnum:           /* A64: read SCXTNUM_EL0, then SVC back */
    mrs     x0, S3_3_C13_C0_7
    svc     #0
    .balign 16
    .global pkvm_el0_a32_load
pkvm_el0_a32_load:              /* A32 (ARM state): ldr r0, [r1]; svc #0 */
    .inst   0xe5910000
    .inst   0xef000000
"#
);

/// Runs the chunk of instructions at `entry` (inside the sandbox, ending with `br x19`).
/// Returns the exceptions its instructions took at EL1: (UNDEFs, others).
///
/// # Safety
/// `entry` must hold code that follows the module's conventions and ends with `br x19`: it
/// runs at EL1 with the host's privileges.
pub unsafe fn run(entry: u64) -> (u64, u64) {
    let (undefs, others): (u64, u64);
    // SAFETY: `pkvm_sandbox_run` saves every callee-saved register (FP ones included), DAIF
    // and FPCR, and restores them; the generated code only changes x0-x18 and x30 (declared
    // clobbered: the caller vouches for the code), and does not touch memory the compiler
    // knows about.
    unsafe {
        asm!(
            "bl pkvm_sandbox_run",
            inout("x0") entry => undefs,
            inout("x1") 0u64 => others,
            out("x2") _, out("x3") _, out("x4") _, out("x5") _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
            out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
            out("x18") _, out("x30") _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
            out("v6") _, out("v7") _, out("v16") _, out("v17") _, out("v18") _, out("v19") _,
            out("v20") _, out("v21") _, out("v22") _, out("v23") _, out("v24") _,
            out("v25") _, out("v26") _, out("v27") _, out("v28") _, out("v29") _,
            out("v30") _, out("v31") _,
        );
    }
    (undefs, others)
}

/// What EL0 did: the first exception it took back to EL1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct El0Exit {
    /// The vector entry (8..=11: from AArch64, 12..=15: from AArch32; 8 and 12 synchronous).
    pub vector: u64,
    /// `ESR_EL1`.
    pub esr: u64,
    /// `FAR_EL1`.
    pub far: u64,
    /// `ELR_EL1`.
    pub elr: u64,
    /// `SPSR_EL1`.
    pub spsr: u64,
}

/// Runs EL0 at `entry` with `x1` (`r1`) = `arg` and PSTATE `spsr` until its first exception.
///
/// # Safety
/// `entry` must be code in `.el0_text` that ends in an exception (an `SVC`, at the latest);
/// `spsr` must describe EL0 (AArch64 EL0t or AArch32 User).
pub unsafe fn el0_call(entry: u64, arg: u64, spsr: u64) -> El0Exit {
    let (vector, esr, far, elr, spsr_out): (u64, u64, u64, u64, u64);
    // SAFETY: `pkvm_el0_call` saves the callee-saved registers on the stack and `eret`s to
    // EL0; the lower-EL vector comes back on the same SP_EL1 and restores them. EL0 code
    // (ours, in `.el0_text`) changes only general registers, which are declared clobbered;
    // the exception entry changes ELR/SPSR/ESR/FAR_EL1, which only the exception paths use.
    unsafe {
        asm!(
            "bl pkvm_el0_call",
            inout("x0") entry => vector,
            inout("x1") arg => esr,
            inout("x2") spsr => far,
            out("x3") elr,
            out("x4") spsr_out,
            out("x5") _, out("x6") _, out("x7") _, out("x8") _, out("x9") _, out("x10") _,
            out("x11") _, out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _, out("x18") _, out("x30") _,
        );
    }
    El0Exit {
        vector,
        esr,
        far,
        elr,
        spsr: spsr_out,
    }
}

/// Addresses of the EL0 code entries.
pub mod el0 {
    macro_rules! sym_addr {
        ($name:ident, $sym:literal) => {
            /// Address of the EL0 entry `
            #[doc = $sym]
            /// `.
            pub fn $name() -> u64 {
                let a: u64;
                // SAFETY: only computes the address of a symbol.
                unsafe {
                    core::arch::asm!(
                        concat!("adrp {a}, ", $sym, "\n add {a}, {a}, :lo12:", $sym),
                        a = out(reg) a,
                        options(nomem, nostack, preserves_flags)
                    )
                };
                a
            }
        };
    }
    sym_addr!(a64_load, "pkvm_el0_a64_load");
    sym_addr!(a64_scxtnum, "pkvm_el0_a64_scxtnum");
    sym_addr!(a32_load, "pkvm_el0_a32_load");
}

/// Makes `[start, start + len)` (just written as instructions) visible to instruction fetch.
pub fn sync_icache(start: u64, len: u64) {
    let mut a = start & !63;
    while a < start + len {
        // SAFETY: cache maintenance by VA of memory the host maps; no architectural effect on
        // data.
        unsafe { asm!("dc cvau, {}", in(reg) a, options(nostack, preserves_flags)) };
        a += 64;
    }
    // SAFETY: barriers only.
    unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
    let mut a = start & !63;
    while a < start + len {
        // SAFETY: as above, for the instruction cache.
        unsafe { asm!("ic ivau, {}", in(reg) a, options(nostack, preserves_flags)) };
        a += 64;
    }
    // SAFETY: barriers only.
    unsafe { asm!("dsb ish", "isb", options(nostack, preserves_flags)) };
}
