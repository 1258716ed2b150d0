//! pkvm-rs guest: a small EL1 payload for the VMs that later issues create. For now it only
//! builds: its entry parks the CPU.
//!
//! On any other target it is an empty `main`, so that `cargo test --workspace` builds it.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .section .text._start, "ax"
    .global _start
_start:
    wfe
    b       _start
"#
);

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
