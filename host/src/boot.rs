//! Entry, stack and exception vectors of the host image: all of its start-up assembly.
//!
//! `_start` begins with a 64-byte arm64 `Image` header (`text_offset` 0) so that EL2 can check
//! it and enter the image exactly as it will enter a Linux kernel. The entry masks interrupts,
//! enables FP/SIMD for EL1 (`CPACR_EL1.FPEN`: Rust on `aarch64-unknown-none` uses the SIMD
//! registers), zeroes `.bss`, takes its stack and installs `VBAR_EL1`, then calls
//! `host_main(dtb)`. Every vector entry reports the exception through [`host_exception`].

use core::arch::global_asm;
use pkvm_abi::boot::IMAGE_MAGIC;

/// Size of the host's (only) stack.
pub const STACK_SIZE: usize = 64 * 1024;

global_asm!(
    r#"
    .section .text.head, "ax"
    .global _start
_start:
    /* arm64 Image header */
    b       .Lentry                 /* code0 */
    .word   0                       /* code1 */
    .quad   0                       /* text_offset */
    .quad   __image_size            /* image_size, .bss included */
    .quad   0x2                     /* flags: little-endian, 4 KiB pages */
    .quad   0, 0, 0                 /* res2..res4 */
    .word   {magic}                 /* "ARM\x64" */
    .word   0                       /* res5 */

.Lentry:
    msr     daifset, #0xf
    mov     x19, x0                 /* DTB */

    /* FP/SIMD at EL1 and EL0 without trapping (CPACR_EL1.FPEN = 0b11). */
    mov     x1, #(3 << 20)
    msr     cpacr_el1, x1
    isb

    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
0:  cmp     x1, x2
    b.hs    1f
    stp     xzr, xzr, [x1], #16
    b       0b
1:
    adrp    x1, host_stack
    add     x1, x1, :lo12:host_stack
    add     sp, x1, #{stack_size}

    adrp    x1, host_vectors
    add     x1, x1, :lo12:host_vectors
    msr     vbar_el1, x1
    isb

    mov     x0, x19
    bl      host_main
2:  wfi
    b       2b

    .section .bss.host_stack, "aw", %nobits
    .balign 16
host_stack:
    .space  {stack_size}
"#,
    magic = const IMAGE_MAGIC,
    stack_size = const STACK_SIZE,
);

global_asm!(
    r#"
    .macro host_vector kind
    .balign 128
    mov     x0, #\kind
    mrs     x1, esr_el1
    mrs     x2, elr_el1
    mrs     x3, far_el1
    b       host_exception
    .endm

    .section .text.vectors, "ax"
    .balign 2048
    .global host_vectors
host_vectors:
    host_vector 0
    host_vector 1
    host_vector 2
    host_vector 3
    host_vector 4
    host_vector 5
    host_vector 6
    host_vector 7
    host_vector 8
    host_vector 9
    host_vector 10
    host_vector 11
    host_vector 12
    host_vector 13
    host_vector 14
    host_vector 15
"#
);

/// Names of the 16 vector entries, in table order.
const VECTOR_NAMES: [&str; 16] = [
    "current EL with SP_EL0, synchronous",
    "current EL with SP_EL0, IRQ",
    "current EL with SP_EL0, FIQ",
    "current EL with SP_EL0, SError",
    "current EL with SP_ELx, synchronous",
    "current EL with SP_ELx, IRQ",
    "current EL with SP_ELx, FIQ",
    "current EL with SP_ELx, SError",
    "lower EL AArch64, synchronous",
    "lower EL AArch64, IRQ",
    "lower EL AArch64, FIQ",
    "lower EL AArch64, SError",
    "lower EL AArch32, synchronous",
    "lower EL AArch32, IRQ",
    "lower EL AArch32, FIQ",
    "lower EL AArch32, SError",
];

/// Every host vector lands here: the host takes no exception on purpose (yet), so any is a bug.
#[unsafe(no_mangle)]
extern "C" fn host_exception(kind: u64, esr: u64, elr: u64, far: u64) -> ! {
    let name = VECTOR_NAMES.get(kind as usize).copied().unwrap_or("?");
    panic!(
        "unexpected exception at EL1 ({name}): ESR_EL1={esr:#x} (EC {:#x}) ELR_EL1={elr:#x} \
         FAR_EL1={far:#x}",
        esr >> 26
    );
}

/// The exception level we are running at.
pub fn current_el() -> u64 {
    use aarch64_cpu::registers::{CurrentEL, Readable};
    CurrentEL.read(CurrentEL::EL)
}

/// Waits for interrupts forever (with all of them masked: forever).
pub fn hang() -> ! {
    loop {
        aarch64_cpu::asm::wfi();
    }
}
