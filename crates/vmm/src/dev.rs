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
    /// MMIO writes the module buffered in the console ring.
    pub console_writes: u64,
    /// MMIO reads the module answered from the console page.
    pub console_reads: u64,
}

/// Byte offset, in each vCPU page, of the VMM's word past the [`pkvm_abi::guest::VcpuState`]
/// EL2 uses: the counter value at which the VMM last sampled the guest's virtual timer before
/// `PKVM_RUN`. The module returns a timer that became due after it to user space (an `IRQ`
/// exit) instead of running the guest with the timer's interrupt held.
pub const VCPU_TIMER_SAMPLED: usize = 3072;

/// The console page's ring size in bytes.
pub const CONSOLE_RING: usize = 2048;
/// The console page's `mmap` page index.
pub const CONSOLE_PAGE: usize = 4;

/// The console page (`struct pkvm_console`): user space names a byte register whose writes
/// the module buffers here instead of exiting, and one whose reads it answers with a fixed
/// byte (KVM's coalesced MMIO, for the guest's console).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Console {
    /// User space: buffer 1-byte writes at this IPA (0: none).
    pub write_ipa: u64,
    /// User space: answer 1-byte reads at this IPA (0: none)...
    pub read_ipa: u64,
    /// ... with this byte.
    pub read_value: u64,
    /// The module: bytes put in the ring so far.
    pub head: u64,
    /// User space: bytes taken so far.
    pub tail: u64,
    /// Unused.
    pub reserved: [u64; 3],
    /// Byte `n` at `ring[n % CONSOLE_RING]`.
    pub ring: [u8; CONSOLE_RING],
}

/// Byte offsets of [`Console`]'s fields.
pub mod console_off {
    use core::mem::offset_of;

    use super::Console;

    /// `write_ipa`.
    pub const WRITE_IPA: usize = offset_of!(Console, write_ipa);
    /// `read_ipa`.
    pub const READ_IPA: usize = offset_of!(Console, read_ipa);
    /// `read_value`.
    pub const READ_VALUE: usize = offset_of!(Console, read_value);
    /// `head`.
    pub const HEAD: usize = offset_of!(Console, head);
    /// `tail`.
    pub const TAIL: usize = offset_of!(Console, tail);
    /// `ring`.
    pub const RING: usize = offset_of!(Console, ring);
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
        assert_eq!(COUNTS, 0x8030_b706);
    }

    /// Every hypercall id `linux/pkvm_hcalls.h` names is the Rust ABI's.
    #[test]
    fn the_modules_hypercall_ids_are_the_abi_s() {
        use pkvm_abi::HostHcall as H;
        let h = include_str!("../../../linux/pkvm_hcalls.h");
        let ids = [
            ("HC_VERSION", H::Version),
            ("HC_SHARE_HYP", H::HostShareHyp),
            ("HC_UNSHARE_HYP", H::HostUnshareHyp),
            ("HC_DONATE_HYP", H::HostDonateHyp),
            ("HC_DBG_HYP_DONATE_HOST", H::DebugHypDonateHost),
            ("HC_DBG_READ", H::DebugRead),
            ("HC_STAT", H::Stat),
            ("HC_VM_INIT", H::VmInit),
            ("HC_VCPU_INIT", H::VcpuInit),
            ("HC_SHARE_GUEST", H::HostShareGuest),
            ("HC_VCPU_RUN", H::VcpuRun),
            ("HC_VM_TEARDOWN", H::VmTeardown),
            ("HC_DONATE_GUEST", H::HostDonateGuest),
            ("HC_VM_RECLAIM", H::VmReclaim),
        ];
        assert_eq!(
            h.matches(" = 0x").count(),
            ids.len(),
            "every id in the header is checked"
        );
        for (name, id) in ids {
            let want = alloc::format!("\t{name} = {:#04x},\n", pkvm_abi::hvc_fid(id) & 0xffff);
            assert!(h.contains(&want), "{want:?}");
        }
        assert!(
            h.contains(
                &alloc::format!("#define PKVM_HVC_BASE {:#X}UL", pkvm_abi::HVC_BASE)
                    .replace("0X", "0x")
            )
        );
    }

    /// The console page as `linux/pkvm_uapi.h` lays it out.
    #[test]
    fn the_console_page() {
        use console_off::*;
        assert_eq!(
            (WRITE_IPA, READ_IPA, READ_VALUE, HEAD, TAIL, RING),
            (0, 8, 16, 24, 32, 64)
        );
        assert!(size_of::<Console>() <= 4096);
        assert!(CONSOLE_PAGE as u64 >= MAX_VCPUS);
        let h = include_str!("../../../linux/pkvm_uapi.h");
        assert!(h.contains("#define PKVM_CONSOLE_RING 2048"));
        assert!(h.contains("#define PKVM_CONSOLE_PAGE 4"));
    }

    /// The offsets `linux/pkvm.c` reads the saved virtual timer and the exit record at.
    #[test]
    fn the_module_s_view_of_the_vcpu_page() {
        use core::mem::offset_of;
        use pkvm_abi::guest::VcpuExit;
        let c = include_str!("../../../linux/pkvm.c");
        for (name, off) in [
            ("VCPU_EXIT_REASON", vcpu_off::EXIT),
            ("VCPU_EXIT_IPA", vcpu_off::EXIT + offset_of!(VcpuExit, ipa)),
            (
                "VCPU_EXIT_SIZE",
                vcpu_off::EXIT + offset_of!(VcpuExit, mmio_size),
            ),
            (
                "VCPU_EXIT_WRITE",
                vcpu_off::EXIT + offset_of!(VcpuExit, mmio_write),
            ),
            ("VCPU_EXIT_DATA", vcpu_off::EXIT_MMIO_DATA),
            ("VCPU_SYS_OFF", vcpu_off::SYS),
        ] {
            assert!(
                c.contains(&alloc::format!("#define {name} {off}\n")),
                "{name} {off}"
            );
        }
        assert_eq!(vcpu_off::SYS, 264);
        assert_eq!(vcpu_off::sys(sys::CNTV_CTL_EL0), 264 + 22 * 8);
        assert_eq!(vcpu_off::sys(sys::CNTV_CVAL_EL0), 264 + 23 * 8);
        assert!(size_of::<VcpuState>() <= VCPU_TIMER_SAMPLED);
        let h = include_str!("../../../linux/pkvm_uapi.h");
        assert!(h.contains(&alloc::format!(
            "#define PKVM_VCPU_TIMER_SAMPLED {VCPU_TIMER_SAMPLED}\n"
        )));
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
