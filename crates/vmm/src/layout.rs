//! The guest physical memory map: QEMU `virt`'s device addresses (so an unmodified Linux finds
//! what it expects where it usually is), RAM at [`RAM_BASE`] like the test guest's
//! (`pkvm_abi::guest::GUEST_RAM_IPA`).
//!
//! | IPA | what |
//! |---|---|
//! | `0x0800_0000` | GICv3 distributor (64 KiB) |
//! | `0x080a_0000` | GICv3 redistributors, 128 KiB per vCPU |
//! | `0x0900_0000` | 16550A UART (4 KiB) |
//! | `0x8000_0000` | RAM |

use crate::Error;
pub use crate::gic::MAX_VCPUS;
use crate::gic::{GICD_SIZE, GICR_FRAME_SIZE};

/// The distributor's IPA.
pub const GICD_BASE: u64 = 0x0800_0000;
/// The first redistributor's IPA (one [`GICR_FRAME_SIZE`] frame per vCPU follows).
pub const GICR_BASE: u64 = 0x080a_0000;
/// The UART's IPA.
pub const UART_BASE: u64 = 0x0900_0000;
/// The UART's MMIO window.
pub const UART_SIZE: u64 = 0x1000;
/// Where guest RAM starts (2 MiB aligned: the kernel is placed from it).
pub const RAM_BASE: u64 = 0x8000_0000;
/// The smallest guest RAM: the kernel's 2 MiB region and the DTB's.
pub const MIN_RAM: u64 = 4 << 20;

/// A VM's shape: its vCPUs and RAM; every address the VMM needs follows from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    nr_vcpus: usize,
    ram_size: u64,
}

/// What an MMIO address falls on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The distributor, at this offset.
    Gicd(u64),
    /// The redistributor region, at this offset from its start.
    Gicr(u64),
    /// The UART, at this offset.
    Uart(u64),
}

impl Layout {
    /// A VM of `nr_vcpus` vCPUs and `ram_size` bytes of RAM at [`RAM_BASE`].
    ///
    /// # Errors
    /// [`Error::BadConfig`] for 0 or more than [`MAX_VCPUS`] vCPUs, RAM smaller than
    /// [`MIN_RAM`], not a multiple of 2 MiB, or reaching past the 40-bit IPA space.
    pub fn new(nr_vcpus: usize, ram_size: u64) -> Result<Self, Error> {
        let fits = RAM_BASE
            .checked_add(ram_size)
            .is_some_and(|end| end <= 1 << 40);
        if !(1..=MAX_VCPUS).contains(&nr_vcpus)
            || ram_size < MIN_RAM
            || !ram_size.is_multiple_of(2 << 20)
            || !fits
        {
            return Err(Error::BadConfig);
        }
        Ok(Self { nr_vcpus, ram_size })
    }

    /// The vCPUs.
    #[must_use]
    pub const fn nr_vcpus(&self) -> usize {
        self.nr_vcpus
    }

    /// Guest RAM: `(base, size)`.
    #[must_use]
    pub const fn ram(&self) -> (u64, u64) {
        (RAM_BASE, self.ram_size)
    }

    /// The end of guest RAM (exclusive).
    #[must_use]
    pub const fn ram_end(&self) -> u64 {
        RAM_BASE + self.ram_size
    }

    /// The redistributor region: `(base, size)`.
    #[must_use]
    pub const fn gicr(&self) -> (u64, u64) {
        (GICR_BASE, GICR_FRAME_SIZE * self.nr_vcpus as u64)
    }

    /// The device at `ipa`, if any (RAM and holes are `None`).
    #[must_use]
    pub fn device_at(&self, ipa: u64) -> Option<Device> {
        let within = |base: u64, size: u64| ipa.checked_sub(base).filter(|&off| off < size);
        let (gicr, gicr_size) = self.gicr();
        if let Some(off) = within(GICD_BASE, GICD_SIZE) {
            Some(Device::Gicd(off))
        } else if let Some(off) = within(gicr, gicr_size) {
            Some(Device::Gicr(off))
        } else {
            within(UART_BASE, UART_SIZE).map(Device::Uart)
        }
    }
}

// The regions must not overlap, for the largest VM.
const _: () = {
    assert!(GICD_BASE + GICD_SIZE <= GICR_BASE);
    assert!(GICR_BASE + GICR_FRAME_SIZE * MAX_VCPUS as u64 <= UART_BASE);
    assert!(UART_BASE + UART_SIZE <= RAM_BASE);
    assert!(RAM_BASE.is_multiple_of(2 << 20));
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_shapes_are_refused() {
        for (vcpus, ram) in [
            (0, 64 << 20),
            (MAX_VCPUS + 1, 64 << 20),
            (1, 2 << 20),
            (1, (64 << 20) + 4096),
            (1, 1 << 40),
            (1, u64::MAX - (2 << 20) + 1),
        ] {
            assert_eq!(
                Layout::new(vcpus, ram),
                Err(Error::BadConfig),
                "{vcpus} {ram:#x}"
            );
        }
        let l = Layout::new(MAX_VCPUS, 256 << 20).unwrap();
        assert_eq!(l.ram(), (RAM_BASE, 256 << 20));
        assert_eq!(l.ram_end(), RAM_BASE + (256 << 20));
    }

    #[test]
    fn addresses_decode_to_their_device() {
        let l = Layout::new(2, 64 << 20).unwrap();
        assert_eq!(l.device_at(GICD_BASE), Some(Device::Gicd(0)));
        assert_eq!(l.device_at(GICD_BASE + 0xffe8), Some(Device::Gicd(0xffe8)));
        assert_eq!(l.device_at(GICD_BASE + GICD_SIZE), None);
        assert_eq!(
            l.device_at(GICR_BASE + 0x2_0008),
            Some(Device::Gicr(0x2_0008))
        );
        // Two vCPUs: the third frame is a hole.
        assert_eq!(l.device_at(GICR_BASE + 2 * GICR_FRAME_SIZE), None);
        assert_eq!(l.device_at(UART_BASE + 5), Some(Device::Uart(5)));
        assert_eq!(l.device_at(UART_BASE + UART_SIZE), None);
        assert_eq!(l.device_at(RAM_BASE), None);
        assert_eq!(l.device_at(0), None);
        assert_eq!(l.device_at(u64::MAX), None);
    }
}
