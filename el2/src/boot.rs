//! Entry, stacks and exception vectors of the EL2 image: all of EL2's assembly lives here.
//!
//! * `_start` is the shared entry of [`pkvm_rt::image_entry!`] at EL2: the 64-byte arm64
//!   `Image` header (so QEMU's `-kernel` loads the image at RAM base + `text_offset` and enters
//!   it with `x0` = DTB), then EL2's own checks (it runs at EL2, at its link address), a known
//!   MMU-off `SCTLR_EL2`, `.bss` zeroed, CPU 0's stack, `VBAR_EL2`, and
//!   [`crate::el2_main`].
//! * `el2_vectors` is the full 16-entry table. The lower-EL synchronous entry is the host's
//!   trap path (for its AArch32 EL0 too: the group is chosen by EL1's state, AArch64): it saves
//!   the caller-saved registers into a [`HostContext`] frame (layout in [`crate::context`]),
//!   calls [`crate::trap::handle_host_trap`] and `eret`s — 26 instructions around the handler,
//!   plus the speculation barrier after the `eret` ([`pkvm_rt::eret_sb!`], never executed).
//!   When the handler asks for it (an emulated device access, whose transfer register may be
//!   any of `x0`–`x30`), a slow path also saves `x19`–`x29` ([`HighRegs`]) and calls
//!   [`crate::trap::handle_host_trap_all`]. Every other entry saves all of `x0`–`x30` and
//!   reports the exception through [`crate::trap::unexpected_exception`], which panics: those
//!   are EL2's own exceptions, or interrupts EL2 never routes to itself for the host.
//! * `el2_secondary_entry` is where a secondary CPU started through PSCI CPU_ON begins.
//! * [`enter_host`] and [`enter_host_secondary`] drop to the host at EL1.
//!
//! The frames are stored and loaded with `pkvm_rt`'s `pkvm_pairs` assembler macro
//! ([`pkvm_rt::frame_macros!`]): one line lists a frame's registers in layout order.

use crate::context::{HIGH_REGS_SIZE, HOST_CONTEXT_SIZE, HighRegs, HostContext};
use core::arch::global_asm;
use pkvm_abi::boot::EL2_TEXT_OFFSET;

pub use pkvm_rt::entry::SCTLR_EL2_MMU_OFF;

/// Maximum number of CPUs EL2 reserves a stack for.
pub const MAX_CPUS: usize = 8;
/// Size of each CPU's EL2 stack.
pub const STACK_SIZE: usize = 32 * 1024;
/// The unmapped guard page below each stack: an overflow faults instead of writing `.bss`.
pub const STACK_GUARD: usize = 4096;
/// Distance between two CPUs' stack tops: a guard page and a stack.
pub const STACK_STRIDE: usize = STACK_GUARD + STACK_SIZE;
/// Size of the frame the unexpected-exception entries push (`x0`–`x30` + padding).
const FULL_FRAME_SIZE: usize = 32 * 8;
/// PSCI SYSTEM_OFF, for the early failure path that has no console yet.
const PSCI_SYSTEM_OFF: u32 = pkvm_abi::psci::SYSTEM_OFF;

// The shared entry (`pkvm_rt::entry`) at EL2, after EL2's own checks: it runs only at EL2, at
// its link address (the image is not relocatable); otherwise it powers off through PSCI (no
// console yet). The stacks: `el2_stacks` holds `MAX_CPUS` of them, each above its guard page
// ([guard][stack 0][guard][stack 1]...); the primary takes CPU 0's, which ends at
// `el2_stack0_top`.
pkvm_rt::image_entry! {
    el: 2,
    text_offset: EL2_TEXT_OFFSET,
    early: r#"
    mrs     x1, CurrentEL
    cmp     x1, #(2 << 2)
    b.ne    .Learly_fail
    adr     x1, _start
    ldr     x2, =_start
    cmp     x1, x2
    b.ne    .Learly_fail
"#,
    stack_top: "el2_stack0_top",
    vectors: "el2_vectors",
    main: crate::el2_main,
    tail: r#"
.Learly_fail:
    ldr     x0, ={system_off}
    smc     #0
3:  wfe
    b       3b
    .ltorg

    .section .el2_stacks, "aw", %nobits
    .balign 4096
    .global el2_stacks
el2_stacks:
    .space  {stride}
    .global el2_stack0_top
el2_stack0_top:
    .space  {stride} * ({max_cpus} - 1)
"#,
    consts: { system_off = PSCI_SYSTEM_OFF, stride = STACK_STRIDE, max_cpus = MAX_CPUS },
}

// The vector table. Entry numbers (0..16) are what `unexpected_exception` receives; each entry
// is placed with `.org`, so an entry that outgrows its 32 instructions fails the build.
global_asm!(
    pkvm_rt::frame_macros!(),
    r#"
    .macro unexpected_vector kind
    .org    el2_vectors + \kind * 0x80
    sub     sp, sp, #{full}
    stp     x0, x1, [sp, #0]
    mov     x0, #\kind
    b       el2_unexpected_entry
    .endm

    .section .text.vectors, "ax"
    .balign 2048
    .global el2_vectors
el2_vectors:
    /* Current EL with SP_EL0 */
    unexpected_vector 0
    unexpected_vector 1
    unexpected_vector 2
    unexpected_vector 3
    /* Current EL with SP_ELx */
    unexpected_vector 4
    unexpected_vector 5
    unexpected_vector 6
    unexpected_vector 7

    /* Lower EL, AArch64, synchronous: the host's trap path (HVC, SMC, aborts, ...). The
       handler returns non-zero when it needs x19-x29 too (an emulated MMIO access whose
       register may be any): then the slow path saves them and calls the full handler. */
    .org    el2_vectors + 8 * 0x80
.Lhost_sync:
    sub     sp, sp, #{ctx}
    pkvm_pairs stp, sp, 0x00, x0, x1, x2, x3, x4, x5, x6, x7, x8, x9
    pkvm_pairs stp, sp, 0x50, x10, x11, x12, x13, x14, x15, x16, x17, x18, x30
    mov     x0, sp
    bl      el2_host_sync
    cbnz    x0, el2_host_sync_slow
    .global el2_host_sync_return
el2_host_sync_return:
    pkvm_pairs ldp, sp, 0x00, x0, x1, x2, x3, x4, x5, x6, x7, x8, x9
    pkvm_pairs ldp, sp, 0x50, x10, x11, x12, x13, x14, x15, x16, x17, x18, x30
    add     sp, sp, #{ctx}
"#,
    pkvm_rt::eret_sb!(),
    r#"
    unexpected_vector 9
    unexpected_vector 10
    unexpected_vector 11
    /* Lower EL, AArch32: the vector group is picked by the state of the EL below EL2, and
       HCR_EL2.RW = 1 keeps EL1 in AArch64, so nothing arrives here (the host's AArch32 EL0
       traps through the AArch64 entry above). Should it ever, it takes the same path. */
    .org    el2_vectors + 12 * 0x80
    b       .Lhost_sync
    unexpected_vector 13
    unexpected_vector 14
    unexpected_vector 15

    .section .text.el2_host_sync_slow, "ax"
el2_host_sync_slow:
    sub     sp, sp, #{high}
    pkvm_pairs stp, sp, 0, x19, x20, x21, x22, x23, x24, x25, x26, x27, x28
    str     x29, [sp, #0x50]
    add     x0, sp, #{high}
    mov     x1, sp
    bl      el2_host_sync_all
    pkvm_pairs ldp, sp, 0, x19, x20, x21, x22, x23, x24, x25, x26, x27, x28
    ldr     x29, [sp, #0x50]
    add     sp, sp, #{high}
    b       el2_host_sync_return

    .section .text.el2_unexpected, "ax"
    .global el2_unexpected_entry
el2_unexpected_entry:
    pkvm_pairs stp, sp, 0x10, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15
    pkvm_pairs stp, sp, 0x80, x16, x17, x18, x19, x20, x21, x22, x23, x24, x25, x26, x27, x28, x29
    str     x30, [sp, #0xf0]
    mov     x1, sp
    bl      el2_unexpected
3:  wfe
    b       3b
    .purgem unexpected_vector
"#,
    pkvm_rt::frame_macros_end!(),
    full = const FULL_FRAME_SIZE,
    ctx = const HOST_CONTEXT_SIZE,
    high = const HIGH_REGS_SIZE,
);

// Entry of a secondary CPU started by `smp::cpu_on` through the firmware's CPU_ON: at EL2,
// MMU off, x0 = the CPU's index. It takes that CPU's stack, installs the vectors, turns on the
// EL2 MMU with the primary's translation registers (`smp::el2_secondary_mmu`, cleaned to the
// point of coherency, so readable with the MMU off) and calls `smp::el2_secondary_main`.
global_asm!(
    r#"
    .section .text.el2_secondary_entry, "ax"
    .global el2_secondary_entry
el2_secondary_entry:
    msr     daifset, #0xf
    mov     x19, x0
    ldr     x1, ={sctlr}
    msr     sctlr_el2, x1
    isb
    cmp     x19, #{max_cpus}
    b.hs    9f
    adrp    x1, el2_stacks
    add     x1, x1, :lo12:el2_stacks
    add     x2, x19, #1
    mov     x3, #{stack_size}
    madd    x1, x2, x3, x1
    mov     sp, x1
    adrp    x1, el2_vectors
    add     x1, x1, :lo12:el2_vectors
    msr     vbar_el2, x1
    adrp    x1, el2_secondary_mmu
    add     x1, x1, :lo12:el2_secondary_mmu
    ldp     x2, x3, [x1]
    ldp     x4, x5, [x1, #16]
    cbz     x4, 9f
    dsb     ish
    msr     mair_el2, x2
    msr     tcr_el2, x3
    msr     ttbr0_el2, x4
    isb
    tlbi    alle2
    dsb     ish
    isb
    msr     sctlr_el2, x5
    isb
    mov     x0, x19
    bl      el2_secondary_main
9:  wfe
    b       9b
    .ltorg
"#,
    sctlr = const SCTLR_EL2_MMU_OFF,
    stack_size = const STACK_STRIDE,
    max_cpus = const MAX_CPUS,
);

/// Drops a secondary CPU (`idx`) to the host at EL1h with interrupts masked, `x0` =
/// `context_id`, every other general register zero and `SP_EL2` reset to the top of that CPU's
/// stack.
pub fn enter_host_secondary(idx: usize, entry: u64, context_id: u64) -> ! {
    unsafe extern "C" {
        fn el2_enter_host_sp(entry: u64, x0: u64, spsr: u64, sp: u64) -> !;
    }
    unsafe extern "C" {
        static el2_stacks: u8;
    }
    // SAFETY: only the address of the stack area is taken.
    let base = unsafe { core::ptr::from_ref(&el2_stacks) as u64 };
    let sp = base + ((idx as u64 + 1) * STACK_STRIDE as u64);
    // SAFETY: as in `enter_host`: never returns; the old stack frames are dead.
    unsafe { el2_enter_host_sp(entry, context_id, crate::sysregs::SPSR_EL1H_DAIF_MASKED, sp) }
}

global_asm!(
    r#"
    .section .text.el2_enter_host_sp, "ax"
    .global el2_enter_host_sp
el2_enter_host_sp:
    msr     elr_el2, x0
    msr     spsr_el2, x2
    mov     sp, x3
    mov     x0, x1
    b       el2_enter_host_zero
"#
);

/// All general registers at an unexpected exception, as `el2_unexpected_entry` stores them.
#[repr(C)]
#[derive(Debug)]
pub struct FullFrame {
    /// `x0`..=`x30`.
    pub regs: [u64; 31],
    _pad: u64,
}

const _: () = assert!(core::mem::size_of::<FullFrame>() == FULL_FRAME_SIZE);

/// Called by the lower-EL synchronous vectors with the host's saved caller-saved registers.
/// A non-zero result sends the vector to [`el2_host_sync_all`].
#[unsafe(no_mangle)]
extern "C" fn el2_host_sync(ctx: &mut HostContext) -> u64 {
    crate::trap::handle_host_trap(ctx)
}

/// The slow path of the host's trap: with every general register saved.
#[unsafe(no_mangle)]
extern "C" fn el2_host_sync_all(ctx: &mut HostContext, high: &mut HighRegs) {
    crate::trap::handle_host_trap_all(ctx, high);
}

/// Called by every other vector entry; never returns.
#[unsafe(no_mangle)]
extern "C" fn el2_unexpected(kind: u64, frame: &FullFrame) -> ! {
    crate::trap::unexpected_exception(kind, frame)
}

/// Drops to the host at EL1h with interrupts masked, `x0` = `dtb` and every other general
/// register zero. The EL2 stack pointer is reset to the top of CPU 0's stack, so the next trap
/// starts from an empty stack.
pub fn enter_host(entry: u64, dtb: u64) -> ! {
    unsafe extern "C" {
        fn el2_enter_host(entry: u64, dtb: u64, spsr: u64) -> !;
    }
    // SAFETY: `el2_enter_host` never returns and touches no Rust-visible memory. Throwing away
    // the current stack is fine: nothing on it is live once we leave EL2 for good.
    unsafe { el2_enter_host(entry, dtb, crate::sysregs::SPSR_EL1H_DAIF_MASKED) }
}

global_asm!(
    r#"
    .section .text.el2_enter_host, "ax"
    .global el2_enter_host
el2_enter_host:
    msr     elr_el2, x0
    msr     spsr_el2, x2
    mov     x0, x1
    adrp    x1, el2_stack0_top
    add     x1, x1, :lo12:el2_stack0_top
    mov     sp, x1
    .global el2_enter_host_zero
el2_enter_host_zero:
    mov     x1, xzr
    mov     x2, xzr
    mov     x3, xzr
    mov     x4, xzr
    mov     x5, xzr
    mov     x6, xzr
    mov     x7, xzr
    mov     x8, xzr
    mov     x9, xzr
    mov     x10, xzr
    mov     x11, xzr
    mov     x12, xzr
    mov     x13, xzr
    mov     x14, xzr
    mov     x15, xzr
    mov     x16, xzr
    mov     x17, xzr
    mov     x18, xzr
    mov     x19, xzr
    mov     x20, xzr
    mov     x21, xzr
    mov     x22, xzr
    mov     x23, xzr
    mov     x24, xzr
    mov     x25, xzr
    mov     x26, xzr
    mov     x27, xzr
    mov     x28, xzr
    mov     x29, xzr
    mov     x30, xzr
"#,
    pkvm_rt::eret_sb!(),
);
