//! The entry of an image: the arm64 `Image` header and the code that gets Rust running.
//!
//! [`image_entry!`](crate::image_entry) expands, in the image that invokes it, to one
//! `global_asm!` block holding `_start` in section `.text.head` (which the linker script of
//! `pkvm_rt::build` puts first):
//!
//! 1. the 64-byte arm64 `Image` header (`Documentation/arch/arm64/booting.rst`): `code0` a
//!    branch to the entry, `text_offset`, `image_size` = `__image_size` (from the linker
//!    script, `.bss` and stacks included), flags = little-endian with 4 KiB pages, magic
//!    `ARM\x64` at 0x38;
//! 2. interrupts masked, `x0`–`x2` kept in `x19`–`x21` (the DTB for EL2 and the host, the
//!    cycle number, loop count and flags for the guest);
//! 3. the image's `early` assembly, if any (EL2's checks of its exception level and link
//!    address), which may branch to labels of its `tail`;
//! 4. at EL2, `SCTLR_EL2` = [`SCTLR_EL2_MMU_OFF`] (MMU, caches and alignment checks off, a
//!    known state whatever the loader left); at EL1, FP/SIMD enabled (`CPACR_EL1.FPEN` = 0b11:
//!    the host and guest are built for `aarch64-unknown-none`, whose code uses the SIMD
//!    registers; EL2 is softfloat and leaves FP/SIMD to the host);
//! 5. `.bss` zeroed (`__bss_start`..`__bss_end`, 16-byte aligned by the linker script);
//! 6. `SP` = `stack_top`, and `SP_EL0` = `sp_el0` if given (the host's exception stack);
//! 7. `VBAR_EL2` or `VBAR_EL1` = `vectors`;
//! 8. `main(x0, x1, x2)` called with the registers of step 2; it must not return (if it does,
//!    the CPU waits for interrupts forever);
//! 9. the image's `tail` assembly, if any (failure paths, literal pools, stack sections).
//!
//! The EL is a parameter of the assembly (`.if`), so the three images run one entry.

/// `SCTLR_EL2` while the EL2 MMU is off: the RES1 bits only (little-endian, MMU, caches and
/// alignment checks off).
pub const SCTLR_EL2_MMU_OFF: u64 = 0x30c5_0830;

/// `CPACR_EL1.FPEN` = 0b11: FP/SIMD at EL1 and EL0 without trapping.
pub const CPACR_EL1_FPEN: u64 = 3 << 20;

/// `flags` of the arm64 `Image` header: little-endian (bit 0 = 0), 4 KiB pages (bits 2:1 =
/// 0b01).
pub const IMAGE_FLAGS: u64 = 0x2;

pub use pkvm_abi::boot::IMAGE_MAGIC;

/// `eret` followed by a speculation barrier, as a string for `global_asm!`/`asm!` templates.
///
/// The CPU may speculate past an `eret` into the instructions after it (straight-line
/// speculation) with the privileges of the level it is leaving; `dsb nsh; isb` stops that (the
/// `sb` instruction would too, but needs FEAT_SB). Architecturally nothing after the `eret`
/// runs, so the barrier costs no executed instruction. Use it for every `eret`: drops to a
/// lower EL and returns from exceptions alike.
///
/// ```ignore
/// core::arch::global_asm!("...", pkvm_rt::eret_sb!(), "...");
/// ```
#[macro_export]
macro_rules! eret_sb {
    () => {
        "    eret\n    dsb     nsh\n    isb"
    };
}

/// The arm64 `Image` header and entry of an image (see [the module](crate::entry)), as a
/// `global_asm!` block in the invoking crate:
///
/// ```ignore
/// pkvm_rt::image_entry! {
///     el: 2,                          // exception level the image runs at: 1 or 2
///     text_offset: EL2_TEXT_OFFSET,   // the header's text_offset
///     early: "...",                   // optional: assembly right after step 2
///     stack_top: "el2_stack0_top",    // symbol (or symbol + constant) for SP
///     sp_el0: "__exc_stack_top",      // optional: symbol for SP_EL0
///     vectors: "el2_vectors",         // the vector table's symbol
///     main: crate::el2_main,          // extern "C" fn(x0, x1, x2) -> !
///     tail: "...",                    // optional: assembly after the entry
///     consts: { name = VALUE, ... },  // optional: `const` operands for early and tail
/// }
/// ```
///
/// The assembly fragments use the registers freely except `x19`–`x21` (the arguments for
/// `main`); `{name}` in them is a `const` operand from `consts`.
#[macro_export]
macro_rules! image_entry {
    (
        el: $el:literal,
        text_offset: $text_offset:expr,
        $(early: $early:literal,)?
        stack_top: $stack_top:literal,
        $(sp_el0: $sp_el0:literal,)?
        vectors: $vectors:literal,
        main: $main:path,
        $(tail: $tail:literal,)?
        $(consts: { $($name:ident = $value:expr),* $(,)? } $(,)?)?
    ) => {
        ::core::arch::global_asm!(
            r#"
    .section .text.head, "ax"
    .global _start
_start:
    /* arm64 Image header (Documentation/arch/arm64/booting.rst) */
    b       .Lpkvm_rt_entry         /* code0 */
    .word   0                       /* code1 */
    .quad   {pkvm_rt_text_offset}   /* text_offset */
    .quad   __image_size            /* image_size: .bss and stacks included */
    .quad   {pkvm_rt_flags}         /* flags: little-endian, 4 KiB pages */
    .quad   0, 0, 0                 /* res2..res4 */
    .word   {pkvm_rt_magic}         /* "ARM\x64" */
    .word   0                       /* res5 */

.Lpkvm_rt_entry:
    msr     daifset, #0xf
    mov     x19, x0
    mov     x20, x1
    mov     x21, x2
"#,
            $($early,)?
            r#"
    .if {pkvm_rt_el} == 2
    movz    x1, #({pkvm_rt_sctlr} & 0xffff)
    movk    x1, #({pkvm_rt_sctlr} >> 16), lsl #16
    msr     sctlr_el2, x1
    .else
    mov     x1, #{pkvm_rt_fpen}
    msr     cpacr_el1, x1
    .endif
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
"#,
            concat!("    adrp    x1, ", $stack_top),
            concat!("    add     x1, x1, :lo12:", $stack_top),
            "    mov     sp, x1",
            $(
                concat!("    adrp    x1, ", $sp_el0),
                concat!("    add     x1, x1, :lo12:", $sp_el0),
                "    msr     sp_el0, x1",
            )?
            concat!("    adrp    x1, ", $vectors),
            concat!("    add     x1, x1, :lo12:", $vectors),
            r#"
    msr     vbar_el{pkvm_rt_el}, x1
    isb

    mov     x0, x19
    mov     x1, x20
    mov     x2, x21
    bl      {pkvm_rt_main}
2:  wfi
    b       2b
"#,
            $($tail,)?
            pkvm_rt_el = const $el,
            pkvm_rt_text_offset = const $text_offset,
            pkvm_rt_flags = const $crate::entry::IMAGE_FLAGS,
            pkvm_rt_magic = const $crate::entry::IMAGE_MAGIC,
            pkvm_rt_sctlr = const $crate::entry::SCTLR_EL2_MMU_OFF,
            pkvm_rt_fpen = const $crate::entry::CPACR_EL1_FPEN,
            pkvm_rt_main = sym $main,
            $($($name = const $value,)*)?
        );
    };
}

/// An assembler macro that stores or loads registers in pairs, for saving and restoring
/// exception frames, as a string for a `global_asm!` template:
/// `pkvm_pairs op, base, offset, ra, rb, rc, rd, ...` is `op ra, rb, [base, #offset]`, then
/// `op rc, rd, [base, #(offset + 16)]`, ... with `op` = `stp` or `ldp` (an even number of
/// registers). One line then lists a frame's registers in layout order, and the same list
/// restores them.
///
/// Put [`frame_macros_end!`](crate::frame_macros_end) at the end of the same template: the
/// assembler sees all `global_asm!` blocks of a codegen unit as one file, and a macro may be
/// defined only once in it.
#[macro_export]
macro_rules! frame_macros {
    () => {
        r#"
    .macro pkvm_pairs op, base, off, ra, rb, rest:vararg
    \op     \ra, \rb, [\base, #(\off)]
    .ifnb \rest
    pkvm_pairs \op, \base, (\off + 16), \rest
    .endif
    .endm
"#
    };
}

/// Ends the scope of [`frame_macros!`](crate::frame_macros).
#[macro_export]
macro_rules! frame_macros_end {
    () => {
        "    .purgem pkvm_pairs"
    };
}
