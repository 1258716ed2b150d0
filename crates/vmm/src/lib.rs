//! The portable core of a pkvm-rs VMM: everything a virtual machine monitor needs to boot an
//! unmodified arm64 Linux in a pkvm-rs VM that does not depend on where the VMM runs. The
//! bare-metal test host and `pkvm-vmm`, the Linux user-space VMM on `/dev/pkvm`, both use it. `no_std` + `alloc`, no `unsafe`.
//!
//! | module | what |
//! |---|---|
//! | [`layout`] | the guest physical memory map (QEMU `virt`'s, so Linux is at home) |
//! | [`image`] | the arm64 `Image` header: parsing, validation, placement of kernel, DTB, initramfs |
//! | [`fdt`] | the guest device tree, written with `vm-fdt` |
//! | [`uart`] | a 16550A UART model (the guest console, on MMIO exits) |
//! | [`gic`] | GICv3 distributor and redistributor emulation for N vCPUs |
//! | [`machine`] | one VM's devices, interrupts and vCPU power states, and what each exit does to them |
//! | [`dev`] | the `/dev/pkvm` ioctl ABI of `linux/pkvm.c` (numbers and structures) |
//!
//! Every register a guest writes and every byte of an image the VMM loads is untrusted input:
//! nothing here panics on it; bad images and layouts are [`Error`]s, bad register accesses read
//! as zero and ignore writes (as the architecture's RAZ/WI).
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod dev;
pub mod fdt;
pub mod gic;
pub mod image;
pub mod layout;
pub mod machine;
pub mod uart;

use core::fmt;

/// Why the VMM core refused an image or a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The kernel image is shorter than its header, or its magic is not arm64's.
    NotAnImage,
    /// The image is big-endian, or asks for a page size the guest's RAM layout cannot give.
    UnsupportedImage,
    /// The kernel, DTB and initramfs do not fit in guest RAM.
    TooBig,
    /// The configuration is outside what the emulation supports (vCPU count, SPI count).
    BadConfig,
    /// The device tree writer failed (an internal error: the tree is built from validated
    /// values only).
    Fdt,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotAnImage => "not an arm64 Image (short, or bad magic)",
            Self::UnsupportedImage => "unsupported arm64 Image (big-endian or page size)",
            Self::TooBig => "kernel, DTB and initramfs do not fit in guest RAM",
            Self::BadConfig => "unsupported VM configuration",
            Self::Fdt => "device tree writer failed",
        })
    }
}

impl core::error::Error for Error {}
