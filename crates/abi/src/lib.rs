//! The pkvm-rs hypercall ABI, shared by the EL2 hypervisor, the EL1 host and guests.
//!
//! Calls use SMCCC over `HVC #0`: `x0` holds [`hvc_fid`]`(id)` (fast call, 64-bit convention,
//! vendor-specific hypervisor service), arguments go in `x1..=x6`. On return `x0` is
//! [`SMCCC_SUCCESS`] when the call was dispatched, or [`SMCCC_NOT_SUPPORTED`] for an unknown id or
//! a boot-only id used after protection was finalised; `x1` carries the handler's result
//! (0 or a negative errno, see [`Error`]); some calls return data in `x2..=x3`.
//!
//! Every id lives in [`HostHcall`]; nowhere else in the project spells a number.
#![no_std]
#![forbid(unsafe_code)]

pub mod boot;
pub mod guest;
pub mod shared;

/// Size of a page (4 KiB granule) everywhere in pkvm-rs.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// SMCCC function-id base for fast, 64-bit, vendor-specific hypervisor calls.
pub const HVC_BASE: u64 = 0xC600_0000;
/// SMCCC "success" in `x0`.
pub const SMCCC_SUCCESS: u64 = 0;
/// SMCCC "not supported" (-1) in `x0`.
pub const SMCCC_NOT_SUPPORTED: u64 = u64::MAX;

/// Version of this ABI, returned by [`HostHcall::Version`] in `x2` (major << 16 | minor).
pub const ABI_VERSION: u64 = 1 << 16;

/// Feature bits returned by [`HostHcall::Version`] in `x3`.
pub mod features {
    /// Page ranges in share/unshare/donate.
    pub const RANGES: u64 = 1 << 0;
    /// EL2 refcounts pages shared more than once (a page shared twice needs two unshares).
    pub const EL2_REFCOUNT: u64 = 1 << 1;
    /// Debug hypercalls ([`super::HostHcall::DebugPin`] and friends) are enabled. Only the
    /// test build of EL2 (`pkvm-el2-debug`) sets this; every image a user runs leaves it clear
    /// and answers the debug ids with `NOT_SUPPORTED`.
    pub const DEBUG_HCALLS: u64 = 1 << 2;
    /// Guests (VM/vCPU hypercalls) are supported.
    pub const GUESTS: u64 = 1 << 3;
    /// Protected VMs: [`super::HostHcall::HostDonateGuest`], dying VMs reclaimed in batches
    /// ([`super::HostHcall::VmReclaim`]) and the guest-side memory ABI
    /// ([`super::guest::smccc`]).
    pub const PROTECTED_VMS: u64 = 1 << 4;
}

/// Builds the SMCCC function id for host hypercall `id`.
#[must_use]
pub const fn hvc_fid(id: HostHcall) -> u64 {
    HVC_BASE | id as u64
}

macro_rules! hcalls {
    ($( $(#[$m:meta])* $name:ident = $val:expr, boot_only = $boot:expr ;)*) => {
        /// Host → EL2 hypercall ids (the low 16 bits of the SMCCC function id).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum HostHcall {
            $( $(#[$m])* $name = $val, )*
        }

        impl HostHcall {
            /// Every id, in table order.
            pub const ALL: &'static [HostHcall] = &[$(HostHcall::$name,)*];

            /// Decodes an SMCCC function id, or `None` when it is not one of ours.
            #[must_use]
            pub const fn from_fid(fid: u64) -> Option<Self> {
                if fid & !0xFFFF != HVC_BASE {
                    return None;
                }
                match (fid & 0xFFFF) as u16 {
                    $( $val => Some(HostHcall::$name), )*
                    _ => None,
                }
            }

            /// Whether the call is only accepted before protection is finalised.
            #[must_use]
            pub const fn boot_only(self) -> bool {
                match self {
                    $( HostHcall::$name => $boot, )*
                }
            }
        }
    };
}

hcalls! {
    /// `() -> (x2 = ABI_VERSION, x3 = feature bits)`.
    Version = 0x00, boot_only = false;
    /// Finalise protection (boot only). Our EL2 finalises before it enters the host, so from a
    /// host this always gets `NOT_SUPPORTED`; the simulator calls it during its boot.
    Finalize = 0x01, boot_only = true;
    /// `(pfn, nr_pages)`: share host pages with EL2 (refcounted at EL2).
    HostShareHyp = 0x02, boot_only = false;
    /// `(pfn, nr_pages)`: drop one share of each page; the last one unmaps it from EL2.
    HostUnshareHyp = 0x03, boot_only = false;
    /// `(pfn, nr_pages)`: give host pages to EL2.
    HostDonateHyp = 0x04, boot_only = false;
    /// `(pfn, nr_pages)`, debug: EL2 gives back pages the host donated with
    /// [`HostHcall::HostDonateHyp`] and that it does not use (never its own memory, never a
    /// VM's memcache).
    DebugHypDonateHost = 0x20, boot_only = false;
    /// `(pfn, nr_pages)`, debug: the host pins pages it shares with EL2 (unshare then fails
    /// with `EBUSY`). Host pins are counted apart from EL2's own pins.
    DebugPin = 0x21, boot_only = false;
    /// `(pfn, nr_pages)`, debug: undo one [`HostHcall::DebugPin`] (never one of EL2's pins).
    DebugUnpin = 0x22, boot_only = false;
    /// `(pa) -> x2 = value`, debug: EL2 reads a u64 of a page the host shares with it.
    DebugRead = 0x23, boot_only = false;
    /// `(selector) -> x2 = value`: one EL2 statistic, see [`Stat`]. Read-only; available in
    /// every build (the leak counters a host checks after tearing guests down).
    Stat = 0x24, boot_only = false;
    /// `(vm_desc_pa, memcache_pfn, memcache_nr) -> x2 = handle`: create a VM. The host has
    /// shared the [`guest::VmDesc`] at `vm_desc_pa` with EL2 (EL2 pins it until teardown) and
    /// donates the `memcache_nr` contiguous pages at `memcache_pfn` for the guest stage-2.
    VmInit = 0x30, boot_only = false;
    /// `(handle, vcpu_pa, fp_pa, idx)`: add the VM's vCPU `idx` (below its `nr_vcpus`, at most
    /// [`guest::MAX_VCPUS_PER_VM`]); its [`guest::VcpuState`] and [`guest::FpState`] are host
    /// memory shared with EL2 (pinned until teardown).
    VcpuInit = 0x31, boot_only = false;
    /// `(handle, pfn, gfn, nr_pages, prot)`: map host pages into the guest (host keeps
    /// SHARED_OWNED, the guest gets SHARED_BORROWED). `prot`: [`guest::PROT_R`] etc.
    HostShareGuest = 0x32, boot_only = false;
    /// `(handle, gfn, nr_pages)`: undo [`HostHcall::HostShareGuest`].
    HostUnshareGuest = 0x33, boot_only = false;
    /// `(handle, idx) -> x2 = exit reason`: run vCPU `idx` until it exits; the details are in
    /// the vCPU structure's [`guest::VcpuExit`]. Several vCPUs of a VM run at once on several
    /// CPUs; each reads [`guest::vcpu_mpidr`]`(idx)` as its `MPIDR_EL1`.
    VcpuRun = 0x34, boot_only = false;
    /// `(handle) -> x2 = guest pages left`: start destroying the VM (refused with `EBUSY`
    /// while its vCPU runs). The VM is marked dying (it never runs again and takes no new
    /// pages) and a first batch of at most [`guest::RECLAIM_BATCH`] guest pages is reclaimed
    /// as [`HostHcall::VmReclaim`] does. `x2 = 0`: the VM is gone (stage-2 freed, VMID
    /// invalidated, memcache returned zeroed, VM and vCPU structures unpinned); otherwise call
    /// [`HostHcall::VmReclaim`] until it reports 0.
    VmTeardown = 0x35, boot_only = false;
    /// `(handle, pfn, gfn, nr_pages)`: donate host pages to the guest at `gfn`: host OWNED →
    /// NOPAGE (its stage-2 annotated with the VM's owner id: any host access aborts), guest
    /// OWNED (read/write/execute). The pages come back only zeroed, through
    /// `MEM_RELINQUISH` or the VM's teardown.
    HostDonateGuest = 0x36, boot_only = false;
    /// `(handle) -> x2 = guest pages left`: reclaim the next batch (at most
    /// [`guest::RECLAIM_BATCH`] pages) of a dying VM: pages the guest owned are zeroed, then
    /// returned to the host OWNED; pages the host shared in go back to it alone; pages the
    /// guest shared back are returned as they are. When nothing is left the teardown
    /// completes (`x2 = 0`, the handle is dead). `EPERM` for a VM that is not dying.
    VmReclaim = 0x37, boot_only = false;
}

/// Selectors for [`HostHcall::Stat`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Stat {
    /// Pages of host memory currently mapped in EL2's stage-1 (shared with or donated to EL2).
    HypMappedHostPages = 0,
    /// Free pages in EL2's page pool.
    PoolFreePages = 1,
    /// Pages whose EL2 share count is non-zero.
    SharedPages = 2,
    /// Host stage-2 faults handled so far.
    HostFaults = 3,
    /// Host stage-2 valid leaves at level 1 (1 GiB blocks).
    HostLeavesL1 = 4,
    /// Host stage-2 valid leaves at level 2 (2 MiB blocks).
    HostLeavesL2 = 5,
    /// Host stage-2 valid leaves at level 3 (4 KiB pages).
    HostLeavesL3 = 6,
    /// Page-table pages in use (hyp stage-1 and host stage-2).
    TablePages = 7,
    /// Aborts injected into the host.
    InjectedAborts = 8,
    /// Host pages donated to EL2 (NOPAGE, OWNED) outside EL2's own memory.
    DonatedPages = 9,
    /// Host pages shared with a guest (SHARED_OWNED, EL2 NOPAGE).
    GuestSharedPages = 10,
    /// Live VMs.
    LiveVms = 11,
    /// Pages pinned (by EL2 for a structure it uses, or by the host) among those shared with
    /// EL2.
    PinnedPages = 12,
    /// UNDEFs injected into the host: trapped instructions EL2 does not emulate.
    InjectedUndefs = 13,
    /// Host accesses to device registers EL2 trapped and emulated (the GIC redistributors'
    /// `RD_base` frames).
    EmulatedMmio = 14,
    /// Host writes to device registers EL2 refused (an LPI table outside the host's RAM).
    RefusedDeviceWrites = 15,
    /// Host pages donated to guests (host NOPAGE, EL2 NOPAGE), including pages a guest shares
    /// back with the host.
    GuestOwnedPages = 16,
    /// List registers of the GICv3 virtual CPU interface (`ICH_VTR_EL2.ListRegs` + 1; 0 on a
    /// CPU without one): the most [`guest::VgicState::nr_lrs`] may be.
    VgicListRegs = 17,
}

impl Stat {
    /// Decodes a selector.
    #[must_use]
    pub const fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            0 => Stat::HypMappedHostPages,
            1 => Stat::PoolFreePages,
            2 => Stat::SharedPages,
            3 => Stat::HostFaults,
            4 => Stat::HostLeavesL1,
            5 => Stat::HostLeavesL2,
            6 => Stat::HostLeavesL3,
            7 => Stat::TablePages,
            8 => Stat::InjectedAborts,
            9 => Stat::DonatedPages,
            10 => Stat::GuestSharedPages,
            11 => Stat::LiveVms,
            12 => Stat::PinnedPages,
            13 => Stat::InjectedUndefs,
            14 => Stat::EmulatedMmio,
            15 => Stat::RefusedDeviceWrites,
            16 => Stat::GuestOwnedPages,
            17 => Stat::VgicListRegs,
            _ => return None,
        })
    }
}

/// The one error type of pkvm-rs, carried on the wire as a negative errno in `x1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Error {
    /// `EPERM`: the page is in the wrong state for this transition.
    Perm = -1,
    /// `ENOENT`: nothing is there (e.g. an unknown VM handle).
    NoEnt = -2,
    /// `E2BIG`: the request is larger than the operation supports.
    TooBig = -7,
    /// `EAGAIN`: benign race, retry.
    Again = -11,
    /// `ENOMEM`: a pool is empty.
    NoMem = -12,
    /// `EFAULT`: an internal invariant was found broken.
    Fault = -14,
    /// `EBUSY`: pinned, in use, or a counter is saturated.
    Busy = -16,
    /// `EINVAL`: bad argument, not memory, or a range straddling memory and MMIO.
    Inval = -22,
    /// `ERANGE`: beyond the address space.
    Range = -34,
}

impl Error {
    /// The negative errno.
    #[must_use]
    pub const fn errno(self) -> i64 {
        self as i32 as i64
    }

    /// Decodes a negative errno.
    #[must_use]
    pub const fn from_errno(v: i64) -> Option<Self> {
        Some(match v {
            -1 => Error::Perm,
            -2 => Error::NoEnt,
            -7 => Error::TooBig,
            -11 => Error::Again,
            -12 => Error::NoMem,
            -14 => Error::Fault,
            -16 => Error::Busy,
            -22 => Error::Inval,
            -34 => Error::Range,
            _ => return None,
        })
    }

    /// Short name (`"EPERM"`, ...).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Error::Perm => "EPERM",
            Error::NoEnt => "ENOENT",
            Error::TooBig => "E2BIG",
            Error::Again => "EAGAIN",
            Error::NoMem => "ENOMEM",
            Error::Fault => "EFAULT",
            Error::Busy => "EBUSY",
            Error::Inval => "EINVAL",
            Error::Range => "ERANGE",
        }
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Encodes a handler result for `x1`.
#[must_use]
pub const fn encode_result(r: Result<(), Error>) -> u64 {
    match r {
        Ok(()) => 0,
        Err(e) => e.errno() as u64,
    }
}

/// Decodes `x1` into a result; unknown negative values become [`Error::Fault`].
pub const fn decode_result(x1: u64) -> Result<(), Error> {
    if x1 == 0 {
        return Ok(());
    }
    match Error::from_errno(x1 as i64) {
        Some(e) => Err(e),
        None => Err(Error::Fault),
    }
}

/// PSCI function ids (SMC32/SMC64 as Linux issues them) that EL2 relays or answers.
pub mod psci {
    /// PSCI_VERSION.
    pub const VERSION: u32 = 0x8400_0000;
    /// CPU_OFF.
    pub const CPU_OFF: u32 = 0x8400_0002;
    /// CPU_ON (64-bit).
    pub const CPU_ON_64: u32 = 0xC400_0003;
    /// AFFINITY_INFO (64-bit).
    pub const AFFINITY_INFO_64: u32 = 0xC400_0004;
    /// MIGRATE_INFO_TYPE.
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    /// SYSTEM_OFF.
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    /// SYSTEM_RESET.
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    /// PSCI_FEATURES.
    pub const FEATURES: u32 = 0x8400_000A;
    /// SMCCC_VERSION.
    pub const SMCCC_VERSION: u32 = 0x8000_0000;
    /// SMCCC_ARCH_FEATURES.
    pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
    /// PSCI "not supported".
    pub const NOT_SUPPORTED: i32 = -1;
    /// PSCI "invalid parameters".
    pub const INVALID_PARAMETERS: i32 = -2;
    /// PSCI "denied".
    pub const DENIED: i32 = -3;
    /// PSCI "already on".
    pub const ALREADY_ON: i32 = -4;
    /// PSCI "on pending".
    pub const ON_PENDING: i32 = -5;
    /// PSCI "internal failure".
    pub const INTERNAL_FAILURE: i32 = -6;
    /// PSCI "invalid address".
    pub const INVALID_ADDRESS: i32 = -9;
    /// PSCI "success".
    pub const SUCCESS: i32 = 0;
    /// CPU_ON (32-bit).
    pub const CPU_ON_32: u32 = 0x8400_0003;
    /// AFFINITY_INFO (32-bit).
    pub const AFFINITY_INFO_32: u32 = 0x8400_0004;
    /// CPU_SUSPEND (32-bit and 64-bit).
    pub const CPU_SUSPEND_32: u32 = 0x8400_0001;
    /// CPU_SUSPEND (64-bit).
    pub const CPU_SUSPEND_64: u32 = 0xC400_0001;
    /// SMCCC version EL2 reports (`SMCCC_VERSION`): 1.1.
    pub const SMCCC_VERSION_1_1: u32 = 0x1_0001;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fid_round_trip() {
        for &id in HostHcall::ALL {
            assert_eq!(HostHcall::from_fid(hvc_fid(id)), Some(id));
        }
        assert_eq!(HostHcall::from_fid(HVC_BASE | 0xFFFF), None);
        // Not our service: a standard-service PSCI id.
        assert_eq!(HostHcall::from_fid(0x8400_0008), None);
        assert!(HostHcall::Finalize.boot_only());
        assert!(!HostHcall::HostShareHyp.boot_only());
    }

    #[test]
    fn errno_round_trip() {
        for e in [
            Error::Perm,
            Error::NoEnt,
            Error::TooBig,
            Error::Again,
            Error::NoMem,
            Error::Fault,
            Error::Busy,
            Error::Inval,
            Error::Range,
        ] {
            assert_eq!(decode_result(encode_result(Err(e))), Err(e));
            assert!(e.errno() < 0);
        }
        assert_eq!(decode_result(0), Ok(()));
        assert_eq!(decode_result(-999i64 as u64), Err(Error::Fault));
        assert_eq!(Error::Busy.errno(), -16);
        assert_eq!(Error::Range.name(), "ERANGE");
    }

    #[test]
    fn stat_selectors_decode() {
        for v in 0..18 {
            assert_eq!(Stat::from_u64(v).map(|s| s as u64), Some(v));
        }
        assert_eq!(Stat::from_u64(18), None);
    }
}
