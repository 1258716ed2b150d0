//! `/dev/pkvm`'s user-space ABI: the ioctl numbers and structures of `linux/pkvm_uapi.h`
//! (the header is the C side; the tests below pin both to the same numbers).
//!
//! One open file is one VM: [`CREATE`] its shape, `mmap` each vCPU's state page (offset =
//! index × 4096, `MAP_SHARED`; a [`pkvm_abi::guest::VcpuState`]), write the initial registers
//! there, [`LOAD`] the kernel and initramfs, [`START`] (the VM is created at EL2 and given its
//! RAM), then [`RUN`] each vCPU from its own thread. Closing the file destroys the VM.

/// The ioctl type byte.
pub const IOCTL_TYPE: u32 = 0xB7;

const NONE: u32 = 0;
const WRITE: u32 = 1;
const READ: u32 = 2;

/// Linux's `_IOC(dir, type, nr, size)` (the generic layout arm64 uses).
#[must_use]
pub const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (IOCTL_TYPE << 8) | nr
}

/// `PKVM_CREATE`'s flag: a protected VM (RAM donated, unreadable by the host).
pub const CREATE_PROTECTED: u64 = 1;
/// The largest RAM `PKVM_CREATE` accepts: what EL2's stage-2 memcache (64 pages at most) maps
/// with 4 KiB pages.
pub const MAX_MEM: u64 = 112 << 20;
/// The RAM size and IPA granule `PKVM_CREATE` accepts: 2 MiB.
pub const MEM_ALIGN: u64 = 2 << 20;
/// Most vCPUs.
pub const MAX_VCPUS: u64 = 4;

/// `PKVM_CREATE`'s argument.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Create {
    /// Bytes of RAM: a multiple of [`MEM_ALIGN`], at most [`MAX_MEM`].
    pub mem_size: u64,
    /// The RAM's first IPA ([`MEM_ALIGN`]-aligned).
    pub mem_ipa: u64,
    /// vCPUs, 1..=[`MAX_VCPUS`].
    pub nr_vcpus: u64,
    /// [`CREATE_PROTECTED`] or 0.
    pub flags: u64,
}

/// `PKVM_LOAD`'s argument: `len` bytes from user address `addr` to guest RAM at `ipa`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Where in guest RAM.
    pub ipa: u64,
    /// The user-space source.
    pub addr: u64,
    /// How many bytes.
    pub len: u64,
}

/// `PKVM_STAT`'s argument: one of EL2's statistics ([`pkvm_abi::Stat`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatArg {
    /// In: the selector.
    pub selector: u64,
    /// Out: the value.
    pub value: u64,
}

/// `PKVM_COUNTS`: what the module counted for the VM.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// `VcpuRun` hypercalls.
    pub runs: u64,
    /// Of those, physical-interrupt exits the module handled without going back to user space.
    pub irq_exits: u64,
    /// `PKVM_RUN` calls that returned an exit.
    pub returns: u64,
    /// EL2 instructions of the `VcpuRun` calls (module parameter `measure=1`, under `-icount`).
    pub el2_instructions: u64,
}

/// `PKVM_CREATE`.
pub const CREATE: u32 = ioc(WRITE, 1, size_of::<Create>());
/// `PKVM_LOAD`.
pub const LOAD: u32 = ioc(WRITE, 2, size_of::<Load>());
/// `PKVM_START` (no argument).
pub const START: u32 = ioc(NONE, 3, 0);
/// `PKVM_RUN` (argument: the vCPU index; result: the exit reason, [`pkvm_abi::guest::exit`]).
pub const RUN: u32 = ioc(NONE, 4, 0);
/// `PKVM_STAT`.
pub const STAT: u32 = ioc(READ | WRITE, 5, size_of::<StatArg>());
/// `PKVM_COUNTS`.
pub const COUNTS: u32 = ioc(READ, 6, size_of::<Counts>());

#[cfg(test)]
mod tests {
    use super::*;
    use pkvm_abi::guest::{VcpuState, sys, vcpu_off};

    /// The numbers `linux/pkvm_uapi.h` gives (`_IOW(0xB7, 1, struct pkvm_create)` etc.).
    #[test]
    fn ioctl_numbers_match_the_c_header() {
        assert_eq!(CREATE, 0x4020_b701);
        assert_eq!(LOAD, 0x4018_b702);
        assert_eq!(START, 0x0000_b703);
        assert_eq!(RUN, 0x0000_b704);
        assert_eq!(STAT, 0xc010_b705);
        assert_eq!(COUNTS, 0x8020_b706);
    }

    /// The offsets `linux/pkvm.c` reads the saved virtual timer at, and the page it maps.
    #[test]
    fn the_module_s_view_of_the_vcpu_page() {
        assert_eq!(vcpu_off::SYS, 264);
        assert_eq!(vcpu_off::sys(sys::CNTV_CTL_EL0), 264 + 22 * 8);
        assert_eq!(vcpu_off::sys(sys::CNTV_CVAL_EL0), 264 + 23 * 8);
        assert!(size_of::<VcpuState>() <= 4096);
    }

    #[test]
    fn the_header_s_limits() {
        let h = include_str!("../../../linux/pkvm_uapi.h");
        assert!(h.contains("#define PKVM_IOCTL_TYPE 0xB7"));
        assert!(h.contains("#define PKVM_MAX_MEM (112ULL << 20)"));
        assert!(h.contains("#define PKVM_MAX_VCPUS 4"));
        assert!(h.contains("#define PKVM_CREATE_PROTECTED (1ULL << 0)"));
        assert_eq!(MAX_MEM, 112 << 20);
        assert_eq!(MEM_ALIGN, 2 << 20);
        let c = include_str!("../../../linux/pkvm.c");
        assert!(c.contains("c.mem_size % SZ_2M") && c.contains("c.mem_ipa % SZ_2M"));
    }
}
