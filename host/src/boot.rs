//! Entry, stacks and exception vectors of the host image: all of its start-up assembly.
//!
//! `_start` is the shared entry of [`pkvm_rt::image_entry!`] at EL1: a 64-byte arm64 `Image`
//! header (`text_offset` 0) so that EL2 can check it and enter the image exactly as it will
//! enter a Linux kernel; then it masks interrupts, enables FP/SIMD for EL1 (`CPACR_EL1.FPEN`:
//! Rust on `aarch64-unknown-none` uses the SIMD registers), zeroes `.bss`, takes its stack,
//! points `SP_EL0` at a separate exception stack and installs `VBAR_EL1`, then calls
//! `host_main(dtb)`.
//!
//! The vectors: a synchronous exception at EL1 whose `ELR_EL1` is one of the probe
//! instructions of [`crate::fault`] (or its exec probe page) is an expected abort — the entry
//! records ESR/FAR/SPSR/ELR in `x2..=x5`, sets `x1 = 1`, resumes after the probe and `eret`s
//! (with the speculation barrier of [`pkvm_rt::eret_sb!`]), without touching memory. One in
//! the hostile scenario's sandbox is counted and skipped ([`crate::sandbox`]); an exception
//! from EL0 returns from the scenario's EL0 call. Every other exception switches to the
//! exception stack (`SPSel = 0`: the main stack may be what overflowed into its guard page)
//! and reports through [`host_exception`], which fails the run.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, Ordering};

pub use pkvm_rt::regs::{current_el, hang};

/// Size of the host's main stack.
pub const STACK_SIZE: usize = 64 * 1024;
/// Size of the stack unexpected exceptions are reported on.
pub const EXC_STACK_SIZE: usize = 16 * 1024;

// The shared entry (`pkvm_rt::entry`) at EL1. The stacks are sections of their own, which the
// linker script (`build.rs`) puts each above an unmapped guard page.
pkvm_rt::image_entry! {
    el: 1,
    text_offset: 0,
    stack_top: "__stack_top",
    sp_el0: "__exc_stack_top",
    vectors: "host_vectors",
    main: crate::host_main,
    tail: r#"
    .section .stacks.main, "aw", %nobits
    .balign 4096
    .space  {stack_size}

    .section .stacks.exception, "aw", %nobits
    .balign 4096
    .space  {exc_stack_size}
"#,
    consts: { stack_size = STACK_SIZE, exc_stack_size = EXC_STACK_SIZE },
}

global_asm!(
    r#"
    .macro host_vector kind
    .balign 128
    mov     x0, #\kind
    b       host_unexpected
    .endm

    .section .text.vectors, "ax"
    .balign 2048
    .global host_vectors
host_vectors:
    host_vector 0
    host_vector 1
    host_vector 2
    host_vector 3

    /* Current EL with SP_ELx, synchronous: a probe's abort, or a bug. */
    .balign 128
    b       host_sync_current

    host_vector 5
    host_vector 6
    host_vector 7

    /* Lower EL (AArch64, then AArch32): only the hostile scenario runs EL0 code, inside
       `pkvm_el0_call`, which these entries return from (crate::sandbox). */
    .macro lower_vector kind
    .balign 128
    mov     x0, #\kind
    b       pkvm_el0_return
    .endm
    lower_vector 8
    lower_vector 9
    lower_vector 10
    lower_vector 11
    lower_vector 12
    lower_vector 13
    lower_vector 14
    lower_vector 15

/*
 * A probe's abort: x1..x5 = 1, ESR, FAR, SPSR, ELR, then resume after the probe. Anything
 * else: report it. Only x0..x5 are used before deciding (the probes declare them clobbered).
 */
host_sync_current:
    mrs     x1, elr_el1
    adr     x2, pkvm_probe_ld
    cmp     x1, x2
    b.eq    5f
    adr     x2, pkvm_probe_st
    cmp     x1, x2
    b.eq    5f
    adrp    x2, pkvm_probe_exec_target
    ldr     x2, [x2, :lo12:pkvm_probe_exec_target]
    cmp     x1, x2
    b.eq    6f
    adr     x2, pkvm_probe_ld32
    cmp     x1, x2
    b.eq    5f
    adr     x2, pkvm_probe_st32
    cmp     x1, x2
    b.eq    5f
    /* An instruction of the hostile scenario's sandbox (crate::sandbox). */
    adrp    x2, __sandbox_start
    add     x2, x2, :lo12:__sandbox_start
    cmp     x1, x2
    b.lo    8f
    adrp    x2, __sandbox_end
    add     x2, x2, :lo12:__sandbox_end
    cmp     x1, x2
    b.lo    pkvm_sandbox_exception
8:  mov     x0, #4
    b       host_unexpected
5:  adr     x0, pkvm_probe_done     /* a load or store: resume at the probe's `ret` */
    b       7f
6:  mov     x0, x30                 /* a branch into the exec probe page: resume after it */
7:  mov     x5, x1
    mrs     x2, esr_el1
    mrs     x3, far_el1
    mrs     x4, spsr_el1
    msr     elr_el1, x0
    mov     x1, #1
"#,
    pkvm_rt::eret_sb!(),
    r#"
host_unexpected:
    msr     spsel, #0
    mrs     x1, esr_el1
    mrs     x2, elr_el1
    mrs     x3, far_el1
    mrs     x4, spsr_el1
    bl      host_exception
4:  wfi
    b       4b
"#
);

static IN_EXCEPTION: AtomicBool = AtomicBool::new(false);

/// Every exception except a probe's expected abort lands here, on the exception stack: it is a
/// bug, reported with the syndrome, and the run fails.
#[unsafe(no_mangle)]
extern "C" fn host_exception(kind: u64, esr: u64, elr: u64, far: u64, spsr: u64) -> ! {
    if IN_EXCEPTION.swap(true, Ordering::Relaxed) {
        // An exception while reporting one: give up quietly (xtask reports the missing result
        // line if the first report did not get out).
        crate::psci::system_off();
    }
    let name = pkvm_rt::vectors::vector_name(kind);
    let syndrome = pkvm_arch::esr::Esr(esr);
    panic!(
        "unexpected exception at EL1 ({name}): ESR_EL1={esr:#x} (EC {:#x}, ISS {:#x}) \
         ELR_EL1={elr:#x} FAR_EL1={far:#x} SPSR_EL1={spsr:#x}",
        syndrome.ec_bits(),
        syndrome.iss()
    );
}
