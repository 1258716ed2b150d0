//! pkvm-rs EL2: the bare-metal hypervisor image for QEMU `virt`.
//!
//! QEMU's `-kernel` loads this arm64 `Image` at RAM base + `text_offset` and enters it at EL2
//! with `x0` = DTB address. [`boot`] (the shared entry of `pkvm_rt`, the bare-metal runtime of
//! all three images) sets up a stack, zeroes `.bss` and installs the exception vectors;
//! [`el2_main`] brings up the console from the device tree, checks the host image that
//! `xtask` placed at [`pkvm_abi::boot::HOST_LOAD_ADDR`], configures EL2 for an AArch64 EL1 host
//! and drops into it. From then on EL2 only runs when the host traps: `HVC` (hypercalls, see
//! [`trap::handle_host_trap`]) and `SMC` (PSCI, relayed to QEMU's firmware emulation).
//!
//! The image is built for `aarch64-unknown-none-softfloat`: EL2 must never touch the FP/SIMD
//! registers, because they hold the host's live state (EL2 does not save or restore them on a
//! trap) — the softfloat target guarantees the compiler never uses them, not even for `memcpy`.
//!
//! On any other target only the pure, testable modules are built (plus an empty `main`) so that
//! `cargo test --workspace` works on the development machine.
#![cfg_attr(target_os = "none", no_std, no_main)]

// `print!`/`println!` (bare metal only) for every module.
#[cfg_attr(target_os = "none", macro_use)]
extern crate pkvm_rt;

#[cfg(target_os = "none")]
#[macro_use]
mod console;

pkvm_rt::image_mods! {
    testable: [fdt_patch, hcall],
    bare_metal: [
        boot, context, dt, hyp_init, idregs, image, panic, platform, psci, smp, sysregs, trap,
        vgic,
        world,
    ],
}

#[cfg(not(target_os = "none"))]
fn main() {}

/// Prints the feature bits `Version` reports, by name: a production build never shows
/// `debug-hcalls`.
#[cfg(target_os = "none")]
fn print_features() {
    use pkvm_abi::features as f;
    let bits = pkvm_hyp::hcall::FEATURES;
    print!("  features: {bits:#x} =");
    for (bit, name) in [
        (f::RANGES, "ranges"),
        (f::EL2_REFCOUNT, "el2-refcount"),
        (f::GUESTS, "guests"),
        (f::DEBUG_HCALLS, "debug-hcalls"),
    ] {
        if bits & bit != 0 {
            print!(" {name}");
        }
    }
    println!(
        "{}",
        if bits & f::DEBUG_HCALLS == 0 {
            " (production build: no debug hypercalls)"
        } else {
            " (TEST BUILD: debug hypercalls enabled)"
        }
    );
}

/// Rust entry of the primary CPU, called by [`boot`] with a stack, zeroed `.bss` and `VBAR_EL2`
/// set. `dtb` is the device-tree address QEMU passed in `x0`.
#[cfg(target_os = "none")]
extern "C" fn el2_main(dtb: usize) -> ! {
    use pkvm_abi::boot::HOST_LOAD_ADDR;

    let Some(platform) = dt::Platform::probe(dtb) else {
        // No usable device tree, hence no console: all we can do is power off. xtask reports
        // "QEMU exited without a result line".
        psci::system_off();
    };
    console::init(platform.uart_base);

    println!();
    println!(
        "pkvm-rs EL2 {} (ABI {}.{}), running at EL{}",
        env!("CARGO_PKG_VERSION"),
        pkvm_abi::ABI_VERSION >> 16,
        pkvm_abi::ABI_VERSION & 0xffff,
        pkvm_rt::regs::current_el()
    );
    platform.print_banner();
    print_features();

    if !platform.psci_conduit_is_smc {
        println!(
            "EL2: warning: the device tree's PSCI conduit is not SMC; EL2 relays PSCI with SMC"
        );
    }
    if platform.memory_containing(HOST_LOAD_ADDR, 64).is_none() {
        result_fail!("host load address {HOST_LOAD_ADDR:#x} is not in RAM");
    }
    let host = match image::check_host_image(HOST_LOAD_ADDR) {
        Ok(h) => h,
        Err(e) => result_fail!("no host image at {HOST_LOAD_ADDR:#x}: {e}"),
    };
    if platform
        .memory_containing(HOST_LOAD_ADDR, host.image_size)
        .is_none()
    {
        result_fail!(
            "host image ({:#x} bytes) does not fit in RAM",
            host.image_size
        );
    }
    if platform.dtb_overlaps(HOST_LOAD_ADDR, host.image_size) {
        result_fail!("host image ({:#x} bytes) overlaps the DTB", host.image_size);
    }
    if platform.initrd_overlaps(HOST_LOAD_ADDR, host.image_size) {
        result_fail!(
            "host image ({:#x} bytes) overlaps the initrd",
            host.image_size
        );
    }
    println!(
        "EL2: host image at {:#x}: {} KiB (arm64 Image, text_offset {:#x})",
        HOST_LOAD_ADDR,
        host.image_size / 1024,
        host.text_offset
    );

    smp::probe(platform.dtb.0);
    let hb = hyp_init::init(&platform, host.image_size);
    sysregs::init_for_host();
    hyp_init::enable_host_stage2();
    smp::init();
    println!(
        "EL2: entering host at {HOST_LOAD_ADDR:#x} (EL1h, DAIF masked, stage-2 on), x0 = DTB {:#x}",
        hb.dtb
    );
    boot::enter_host(HOST_LOAD_ADDR, hb.dtb)
}
