//! The bare-metal runtime of the three pkvm-rs images: the EL2 hypervisor (`el2/`), the EL1
//! test host (`host/`) and the EL1 test guest (`guest/`). What they all need to run on a bare
//! arm64 CPU lives here once:
//!
//! * [`image_entry!`]: the arm64 `Image` header and the entry code (mask interrupts, put the
//!   exception level in a known state, zero `.bss`, take a stack, install the vectors, call
//!   the image's Rust `main`), one `global_asm!` parameterised by exception level, with hooks
//!   for each image's specifics (EL2's early checks and per-CPU stacks, the host's exception
//!   stack in `SP_EL0`, the guest's arguments in `x0`–`x2`);
//! * [`eret_sb!`]: `eret` followed by a speculation barrier, for every place an image drops
//!   to a lower exception level or returns from an exception;
//! * [`frame_macros!`]: an assembler macro that saves or restores a register frame in one line;
//! * [`vectors::VECTOR_NAMES`]: the names of the 16 entries of an exception vector table;
//! * `console` (bare metal only): an SMP-safe, panic-safe PL011 console with `print!` and
//!   `println!`;
//! * `regs` (bare metal only): small register helpers (`CurrentEL`, `MPIDR`, PA range, ...);
//! * [`dt`]: the device-tree questions every image asks (the console UART, RAM, PSCI method);
//! * [`image_mods!`]: an image's list of modules, testable or bare metal only;
//! * `build` (off bare metal, for the images' `build.rs`): the linker script, one template
//!   with parameters.
//!
//! # Why not the ecosystem crates
//!
//! * [`aarch64-rt`](https://crates.io/crates/aarch64-rt) provides an entry point and vectors,
//!   but its entry has no arm64 `Image` header (QEMU's `-kernel` needs it to load EL2 at
//!   `text_offset` and enter it at EL2; EL2 checks the host's before entering it, as it would
//!   a Linux kernel's), it brings its own linker script and a single boot stack, and its
//!   vectors save a fixed register frame and call fixed handlers: EL2's host trap path needs
//!   its own 160-byte frame (`el2/src/context.rs`) in a 26-instruction vector, and the host
//!   needs probe-aware vectors that touch no memory. The entry here is about 40 lines.
//! * [`aarch64-cpu`](https://crates.io/crates/aarch64-cpu) is used (the typed register
//!   accessors of `regs` and `console`); it has no entry or vector code.
//! * [`arm-pl011-uart`](https://crates.io/crates/arm-pl011-uart) drives the UART of
//!   `console`; what it does not have is the lock that several CPUs and a panic can share.
//!
//! # Unsafe code
//!
//! The crate denies `unsafe_code` except where hardware is touched: the console's MMIO pointer
//! and its lock's `Sync` (`console`), and the device-tree blob read from a physical address
//! ([`dt::from_addr`]). Each block carries a `// SAFETY:` comment. The assembly is in the
//! macros, which expand in the images.
//!
//! # EL2 and FP/SIMD
//!
//! EL2 is built for `aarch64-unknown-none-softfloat` and must never touch the FP/SIMD
//! registers (they hold the host's state). Nothing here uses them explicitly, and everything is
//! compiled for the target of the image that uses it, so the compiler never does either in EL2.
#![no_std]
#![deny(unsafe_code)]

#[cfg(not(target_os = "none"))]
extern crate std;

#[cfg(not(target_os = "none"))]
pub mod build;
#[cfg(target_os = "none")]
pub mod console;
pub mod dt;
pub mod entry;
#[cfg(target_os = "none")]
pub mod regs;
pub mod vectors;

/// Declares an image's modules: the `testable` ones are built for the bare-metal image and for
/// the unit tests on the development machine (`cargo test --workspace`), the `bare_metal` ones
/// only for the image (`#[cfg(target_os = "none")]`: they hold its assembly, MMIO and
/// hardware access).
///
/// ```ignore
/// pkvm_rt::image_mods! {
///     testable: [cmdline, ranges],
///     bare_metal: [boot, console, dt],
/// }
/// ```
#[macro_export]
macro_rules! image_mods {
    (testable: [$($t:ident),* $(,)?], bare_metal: [$($b:ident),* $(,)?] $(,)?) => {
        $(
            #[cfg(any(test, target_os = "none"))]
            mod $t;
        )*
        $(
            #[cfg(target_os = "none")]
            mod $b;
        )*
    };
}
