//! Guests: the structures the host shares with EL2 for a VM and its vCPU, exit reasons, and
//! the guest-side constants (memory layout of the test guest, its console).
//!
//! Every structure here is `#[repr(C)]` and lives in host memory shared with EL2 through
//! `host_share_hyp`. The host may change it at any time: EL2 reads each field it needs **once**
//! per use into its own memory and validates it there; fields with no validity constraint
//! (general and FP/SIMD registers) are loaded straight into the CPU by the world switch.

/// Most VMs alive at once.
pub const MAX_VMS: usize = 8;

/// Pages the test host donates at VM init for the guest stage-2 (root and tables): the root
/// and one table per level below it, enough for up to 512 shared pages inside one 2 MiB
/// window with a 4-level table. `VmInit` accepts 2..=64; a share that needs more tables than
/// are left fails with `ENOMEM`.
pub const VM_MEMCACHE_PAGES: u64 = 4;

/// Fewest pages `VmInit` accepts for a memcache (`EINVAL` below).
pub const MEMCACHE_MIN_PAGES: u64 = 2;
/// Most pages `VmInit` accepts for a memcache (`EINVAL` above).
pub const MEMCACHE_MAX_PAGES: u64 = 64;

/// Smallest and largest guest IPA sizes accepted in [`VmDesc::ipa_bits`].
pub const MIN_IPA_BITS: u64 = 32;
/// Largest guest IPA size (the host stage-2 size caps it further).
pub const MAX_IPA_BITS: u64 = 48;

/// `prot` of [`crate::HostHcall::HostShareGuest`]: readable.
pub const PROT_R: u64 = 1 << 0;
/// Writable.
pub const PROT_W: u64 = 1 << 1;
/// Executable.
pub const PROT_X: u64 = 1 << 2;
/// Everything.
pub const PROT_RWX: u64 = PROT_R | PROT_W | PROT_X;

/// The VM structure the host shares with EL2 at [`crate::HostHcall::VmInit`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmDesc {
    /// Guest IPA size in bits ([`MIN_IPA_BITS`]..=min([`MAX_IPA_BITS`], host PA bits)).
    pub ipa_bits: u64,
    /// Number of vCPUs (1).
    pub nr_vcpus: u64,
    /// Free for the host.
    pub host_cookie: u64,
    /// [`vm_flags`]; any other bit makes `VmInit` fail with `EINVAL`.
    pub flags: u64,
    /// First IPA of the guest's memory (page aligned): a stage-2 translation fault inside
    /// `[mem_ipa, mem_ipa + mem_size)` where the guest has no page is a
    /// [`exit::MEM_FAULT`] (the host gives it a page and runs it again), not an MMIO access.
    pub mem_ipa: u64,
    /// Size of the guest's memory in bytes (page aligned; 0: none). The range must lie inside
    /// the IPA space (`EINVAL` otherwise).
    pub mem_size: u64,
}

crate::words!(VmDesc {
    ipa_bits,
    nr_vcpus,
    host_cookie,
    flags,
    mem_ipa,
    mem_size
});

/// Bits of [`VmDesc::flags`].
pub mod vm_flags {
    /// A protected VM. What differs from a non-protected one: its memory is donated
    /// ([`crate::HostHcall::HostDonateGuest`]); the guest-side memory calls
    /// ([`super::smccc`]) are answered for both kinds, but only a protected VM's pages are
    /// zeroed before they go back to the host.
    pub const PROTECTED: u64 = 1 << 0;
    /// Every flag `VmInit` accepts.
    pub const ALL: u64 = PROTECTED;
}

/// Most guest pages one [`crate::HostHcall::VmTeardown`] or [`crate::HostHcall::VmReclaim`]
/// reclaims: the bound on the work (page zeroing) of one EL2 call.
pub const RECLAIM_BATCH: u64 = 64;

/// The guest-side calls EL2 answers itself (SMCCC over `HVC #0` from the guest), with
/// upstream KVM's ids and return conventions so that unmodified clients (Linux's pKVM guest
/// driver, Android's vmbase) work. Every other guest HVC exits to the host
/// ([`exit::HYPERCALL`]).
///
/// Results go in the guest's `x0..x3`; a memory call returns [`SUCCESS`] or
/// [`INVALID_PARAMETER`] in `x0` (and, for share/unshare, the granules done in `x1`), and
/// changes nothing when it fails.
pub mod smccc {
    /// SMCCC_VERSION: `x0` = [`crate::psci::SMCCC_VERSION_1_1`].
    pub const VERSION: u64 = 0x8000_0000;
    /// SMCCC_ARCH_FEATURES(`x1` = function id): `x0` = 0 for [`VERSION`] and this call,
    /// [`NOT_SUPPORTED`] for everything else (no architectural workaround is offered).
    pub const ARCH_FEATURES: u64 = 0x8000_0001;
    /// Vendor-hypervisor service Call UID: `x0..x3` = [`KVM_UID`].
    pub const VENDOR_HYP_CALL_UID: u64 = 0x8600_FF01;
    /// KVM's vendor-hypervisor features: `x0` = bitmap of the function numbers offered
    /// ([`KVM_FEATURES_BITMAP`]), `x1..x3` = 0.
    pub const VENDOR_HYP_KVM_FEATURES: u64 = 0x8600_0000;
    /// `HYP_MEMINFO` (`x1..x3` must be 0): `x0` = the protection granule (4096), `x1` = 0
    /// (share and unshare take one granule).
    pub const HYP_MEMINFO: u64 = 0xC600_0002;
    /// `MEM_SHARE(ipa)`: a page the guest owns becomes shared with the host (guest
    /// SHARED_OWNED, host SHARED_BORROWED: the host may map it). `x2` (granules) must be 0 or
    /// 1, `x3` 0. `x1` = 1 on success.
    pub const MEM_SHARE: u64 = 0xC600_0003;
    /// `MEM_UNSHARE(ipa)`: the reverse of [`MEM_SHARE`]; the host loses access before the
    /// call returns. Same argument rules.
    pub const MEM_UNSHARE: u64 = 0xC600_0004;
    /// `MMIO_GUARD_INFO`: `x0` = the MMIO guard granule (4096).
    pub const MMIO_GUARD_INFO: u64 = 0xC600_0005;
    /// `MMIO_GUARD_ENROLL`: from now on only the pages the guest maps with
    /// [`MMIO_GUARD_MAP`] produce MMIO exits; any other access outside its memory gets a
    /// synchronous external abort injected into the guest (the host sees nothing of it).
    /// Protected VMs only (a non-protected VM's host sees its memory anyway).
    pub const MMIO_GUARD_ENROLL: u64 = 0xC600_0006;
    /// `MMIO_GUARD_MAP(ipa)`: the page at `ipa` (outside the guest's memory) may produce MMIO
    /// exits. `x2` (attributes) is ignored. Mapping a page twice is not an error.
    pub const MMIO_GUARD_MAP: u64 = 0xC600_0007;
    /// `MMIO_GUARD_UNMAP(ipa)`: the reverse of [`MMIO_GUARD_MAP`].
    pub const MMIO_GUARD_UNMAP: u64 = 0xC600_0008;
    /// `MEM_RELINQUISH(ipa)` (`x2`, `x3` must be 0): the guest gives the page at `ipa` up:
    /// unmapped from the guest; a page the guest owned is zeroed and returned to the host
    /// OWNED, a page the host shared in simply goes back to the host alone.
    pub const MEM_RELINQUISH: u64 = 0xC600_0009;

    /// Function numbers (low 16 bits) in KVM's vendor-hypervisor range.
    pub mod func {
        /// FEATURES.
        pub const FEATURES: u32 = 0;
        /// HYP_MEMINFO.
        pub const HYP_MEMINFO: u32 = 2;
        /// MEM_SHARE.
        pub const MEM_SHARE: u32 = 3;
        /// MEM_UNSHARE.
        pub const MEM_UNSHARE: u32 = 4;
        /// MMIO_GUARD_INFO.
        pub const MMIO_GUARD_INFO: u32 = 5;
        /// MMIO_GUARD_ENROLL.
        pub const MMIO_GUARD_ENROLL: u32 = 6;
        /// MMIO_GUARD_MAP.
        pub const MMIO_GUARD_MAP: u32 = 7;
        /// MMIO_GUARD_UNMAP.
        pub const MMIO_GUARD_UNMAP: u32 = 8;
        /// MEM_RELINQUISH.
        pub const MEM_RELINQUISH: u32 = 9;
    }

    /// The MMIO guard bits of [`KVM_FEATURES_BITMAP`] (offered to protected VMs only).
    pub const MMIO_GUARD_BITS: u64 = (1 << func::MMIO_GUARD_INFO)
        | (1 << func::MMIO_GUARD_ENROLL)
        | (1 << func::MMIO_GUARD_MAP)
        | (1 << func::MMIO_GUARD_UNMAP);

    /// What [`VENDOR_HYP_KVM_FEATURES`] returns in `x0` to a protected VM (a non-protected one
    /// gets it without [`MMIO_GUARD_BITS`], and its MMIO guard calls exit to the host).
    pub const KVM_FEATURES_BITMAP: u64 = (1 << func::FEATURES)
        | (1 << func::HYP_MEMINFO)
        | (1 << func::MEM_SHARE)
        | (1 << func::MEM_UNSHARE)
        | (1 << func::MMIO_GUARD_INFO)
        | (1 << func::MMIO_GUARD_ENROLL)
        | (1 << func::MMIO_GUARD_MAP)
        | (1 << func::MMIO_GUARD_UNMAP)
        | (1 << func::MEM_RELINQUISH);

    /// KVM's vendor-hypervisor UID, 28b46fb6-2ec5-11e9-a9ca-4b564d003a74, as the four
    /// registers of the Call UID answer.
    pub const KVM_UID: [u64; 4] = [0xb66f_b428, 0xe911_c52e, 0x564b_caa9, 0x743a_004d];

    /// SMCCC SUCCESS.
    pub const SUCCESS: u64 = 0;
    /// SMCCC NOT_SUPPORTED (-1).
    pub const NOT_SUPPORTED: u64 = u64::MAX;
    /// SMCCC INVALID_PARAMETER (-3).
    pub const INVALID_PARAMETER: u64 = -3i64 as u64;
}

/// Number of EL1 system registers in [`VcpuState::sys`].
pub const NR_SYSREGS: usize = 26;

/// Indices into [`VcpuState::sys`].
pub mod sys {
    /// `SCTLR_EL1`.
    pub const SCTLR_EL1: usize = 0;
    /// `CPACR_EL1`.
    pub const CPACR_EL1: usize = 1;
    /// `TTBR0_EL1`.
    pub const TTBR0_EL1: usize = 2;
    /// `TTBR1_EL1`.
    pub const TTBR1_EL1: usize = 3;
    /// `TCR_EL1`.
    pub const TCR_EL1: usize = 4;
    /// `ESR_EL1`.
    pub const ESR_EL1: usize = 5;
    /// `AFSR0_EL1`.
    pub const AFSR0_EL1: usize = 6;
    /// `AFSR1_EL1`.
    pub const AFSR1_EL1: usize = 7;
    /// `FAR_EL1`.
    pub const FAR_EL1: usize = 8;
    /// `MAIR_EL1`.
    pub const MAIR_EL1: usize = 9;
    /// `VBAR_EL1`.
    pub const VBAR_EL1: usize = 10;
    /// `CONTEXTIDR_EL1`.
    pub const CONTEXTIDR_EL1: usize = 11;
    /// `AMAIR_EL1`.
    pub const AMAIR_EL1: usize = 12;
    /// `CNTKCTL_EL1`.
    pub const CNTKCTL_EL1: usize = 13;
    /// `PAR_EL1`.
    pub const PAR_EL1: usize = 14;
    /// `TPIDR_EL1`.
    pub const TPIDR_EL1: usize = 15;
    /// `SP_EL1`.
    pub const SP_EL1: usize = 16;
    /// `ELR_EL1`.
    pub const ELR_EL1: usize = 17;
    /// `SPSR_EL1`.
    pub const SPSR_EL1: usize = 18;
    /// `SP_EL0`.
    pub const SP_EL0: usize = 19;
    /// `TPIDR_EL0`.
    pub const TPIDR_EL0: usize = 20;
    /// `TPIDRRO_EL0`.
    pub const TPIDRRO_EL0: usize = 21;
    /// `CNTV_CTL_EL0`.
    pub const CNTV_CTL_EL0: usize = 22;
    /// `CNTV_CVAL_EL0`.
    pub const CNTV_CVAL_EL0: usize = 23;
    /// `CSSELR_EL1` (selects the cache `CCSIDR_EL1` describes).
    pub const CSSELR_EL1: usize = 24;
    /// `TPIDR2_EL0` (SME's thread register; switched only when the CPU has SME, which
    /// offers no trap for it without fine-grained traps).
    pub const TPIDR2_EL0: usize = 25;
}

/// `SCTLR_EL1` reset value for a guest: RES1 bits only (MMU and caches off).
pub const SCTLR_EL1_RESET: u64 = 0x30d0_0800;

/// PSTATE of a guest entering at EL1h with DAIF masked.
pub const PSTATE_EL1H_DAIF: u64 = 0x3c5;
/// PSTATE.M values EL2 accepts: EL0t, EL1t, EL1h (AArch64).
pub const PSTATE_MODES: [u64; 3] = [0b0000, 0b0100, 0b0101];
/// PSTATE bits EL2 accepts besides M: NZCV (31:28), TCO (25), DIT (24), UAO (23), PAN (22),
/// ALLINT (13), SSBS (12), BTYPE (11:10) and DAIF (9:6) — states a guest reaches on its own
/// (`msr pan, #1`, ...) and that only affect the guest. Refused: the execution state and
/// exception level (M\[4\], EL2/EL3 modes), IL and SS (an illegal-state or software-step
/// return the guest did not set up), and every reserved bit.
pub const PSTATE_ALLOWED: u64 = (0xf << 28) | (0xf << 22) | (0xf << 10) | (0xf << 6) | 0xf;

/// Exit reasons ([`VcpuExit::reason`], also returned in `x2` by `VcpuRun`).
pub mod exit {
    /// PSCI SYSTEM_OFF, SYSTEM_RESET or CPU_OFF (of this vCPU): [`super::VcpuExit::code`]
    /// holds the PSCI function id.
    pub const SYSTEM_EVENT: u64 = 1;
    /// Any other guest HVC: the guest's `x0..x3` are in the vCPU registers; the host writes
    /// the results into them before the next run.
    pub const HYPERCALL: u64 = 2;
    /// A stage-2 data abort outside guest memory with a valid syndrome: emulate it. For a
    /// read, put the value in [`super::VcpuExit::mmio_data`]; EL2 writes it into the target
    /// register and skips the instruction on the next run.
    pub const MMIO: u64 = 3;
    /// Any other exception the guest took to EL2 (stage-2 fault without a usable syndrome,
    /// a trapped instruction, an SError): `esr`, `far`, `ipa` say what. The vCPU is not
    /// advanced; running it again retakes the fault.
    pub const FAULT: u64 = 4;
    /// A physical interrupt arrived while the guest ran; run again.
    pub const IRQ: u64 = 5;
    /// The guest executed `WFI` (trapped by `HCR_EL2.TWI`): it waits for an interrupt. The PC
    /// is already past the instruction; run again when there is a reason to.
    pub const IDLE: u64 = 6;
    /// The guest touched its own memory ([`super::VmDesc::mem_ipa`]) where it has no page:
    /// [`super::VcpuExit::ipa`] is the page's IPA, [`super::VcpuExit::mmio_write`] 1 for a
    /// write (0 for a read or an instruction fetch). Give it a page there
    /// (`HostDonateGuest` for a protected VM, `HostShareGuest` otherwise) and run it again:
    /// the access is retried.
    pub const MEM_FAULT: u64 = 7;
    /// The guest wrote a GICv3 SGI register (`ICC_SGI1R_EL1`, `ICC_ASGI1R_EL1` or
    /// `ICC_SGI0R_EL1`, trapped by `HCR_EL2.IMO`): [`super::VcpuExit::mmio_data`] holds the
    /// value written, [`super::VcpuExit::code`] the register's `Op2` (5, 6 or 7). EL2 has
    /// moved the PC past the write: the host's VMM makes the SGIs pending and runs on.
    pub const SGI: u64 = 8;
}

/// How the last run ended; written by EL2 before `VcpuRun` returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuExit {
    /// One of [`exit`].
    pub reason: u64,
    /// `ESR_EL2` of the exit.
    pub esr: u64,
    /// `FAR_EL2` of the exit.
    pub far: u64,
    /// Faulting IPA (from `HPFAR_EL2` and `FAR_EL2`) for MMIO exits and stage-2 aborts whose
    /// class reports it (translation, access flag, permission); 0 for every other exit.
    pub ipa: u64,
    /// MMIO access size in bytes (1, 2, 4, 8).
    pub mmio_size: u64,
    /// 1 for an MMIO write, 0 for a read.
    pub mmio_write: u64,
    /// The written value (write), or the value the host supplies (read).
    pub mmio_data: u64,
    /// System event: the PSCI function id.
    pub code: u64,
}

crate::words!(VcpuExit {
    reason,
    esr,
    far,
    ipa,
    mmio_size,
    mmio_write,
    mmio_data,
    code
});

/// The GICv3 virtual CPU interface of a vCPU: what the host's VMM wants in EL2's `ICH_*_EL2`
/// registers while the vCPU runs (pKVM's split: the host manages the virtual GIC, EL2 only
/// loads and saves it). EL2 reads it once per entry, validates the copy (`VcpuRun` fails with
/// `EINVAL` otherwise) and writes the interface's state back at every exit, so the host sees
/// what the guest acknowledged and deactivated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VgicState {
    /// List registers in use: `lr[..nr_lrs]`, at most `Stat::VgicListRegs`. 0 with `hcr` 0: the
    /// virtual CPU interface stays off for the run, and nothing is loaded or saved.
    pub nr_lrs: u64,
    /// `ICH_HCR_EL2`: only [`vgic::HCR_ALLOWED`] bits; EL2 sets `En` whenever the interface is
    /// on. Saved back (`EOIcount`).
    pub hcr: u64,
    /// `ICH_VMCR_EL2`: the guest's own interface controls (priority mask, group enables).
    pub vmcr: u64,
    /// `ICH_AP0R<n>_EL2`, those the CPU implements (1, 2 or 4).
    pub ap0r: [u64; 4],
    /// `ICH_AP1R<n>_EL2`, those the CPU implements.
    pub ap1r: [u64; 4],
    /// `ICH_LR<n>_EL2`: [`vgic::lr`] layout; a hardware interrupt (`HW`), an LPI or a reserved
    /// INTID is refused.
    pub lr: [u64; vgic::MAX_LRS],
    /// Written by EL2 at exit: `ICH_MISR_EL2` (why a maintenance interrupt is raised).
    pub misr: u64,
    /// Written by EL2 at exit: `ICH_EISR_EL2` (list registers with an EOI maintenance event).
    pub eisr: u64,
    /// Written by EL2 at exit: `ICH_ELRSR_EL2` (empty list registers).
    pub elrsr: u64,
}

/// Word `i` of a [`VgicState`] is the `u64` at byte `8 * i`: its arrays are laid out in line.
impl crate::shared::Words for VgicState {
    const WORDS: usize = size_of::<VgicState>() / 8;

    fn read_with(mut read: impl FnMut(usize) -> u64) -> Self {
        let mut words = [0u64; Self::WORDS];
        for (i, w) in words.iter_mut().enumerate() {
            *w = read(i);
        }
        let at = |i: usize| words[i];
        let arr = |start: usize| -> [u64; 4] { core::array::from_fn(|k| words[start + k]) };
        Self {
            nr_lrs: at(0),
            hcr: at(1),
            vmcr: at(2),
            ap0r: arr(3),
            ap1r: arr(7),
            lr: core::array::from_fn(|k| words[11 + k]),
            misr: at(27),
            eisr: at(28),
            elrsr: at(29),
        }
    }

    fn write_with(&self, mut write: impl FnMut(usize, u64)) {
        let words = [self.nr_lrs, self.hcr, self.vmcr]
            .into_iter()
            .chain(self.ap0r)
            .chain(self.ap1r)
            .chain(self.lr)
            .chain([self.misr, self.eisr, self.elrsr]);
        for (i, w) in words.enumerate() {
            write(i, w);
        }
    }
}

// The word numbers above.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(VgicState, ap0r) == 3 * 8);
    assert!(offset_of!(VgicState, ap1r) == 7 * 8);
    assert!(offset_of!(VgicState, lr) == 11 * 8);
    assert!(offset_of!(VgicState, misr) == 27 * 8);
    assert!(offset_of!(VgicState, elrsr) == 29 * 8);
    assert!(size_of::<VgicState>() == 30 * 8);
};

/// The virtual GIC's register layouts (facts from the GICv3 architecture, IHI 0069).
pub mod vgic {
    /// The most list registers a GICv3 has.
    pub const MAX_LRS: usize = 16;
    /// `ICH_HCR_EL2.En`: the virtual CPU interface is enabled.
    pub const HCR_EN: u64 = 1;
    /// `ICH_HCR_EL2` bits the host may set: En, UIE, LRENPIE, NPIE, VGrp0EIE, VGrp0DIE,
    /// VGrp1EIE, VGrp1DIE (maintenance interrupt enables), TC, TALL0, TALL1, TDIR (traps of the
    /// guest's interface accesses, which end the run), EOIcount (31:27).
    pub const HCR_ALLOWED: u64 =
        0xff | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 14) | (0x1f << 27);

    /// `ICH_LR<n>_EL2` fields.
    pub mod lr {
        /// `vINTID` (31:0).
        pub const VINTID: u64 = 0xffff_ffff;
        /// With `HW` = 0, bit 41 (in `pINTID`): an EOI raises a maintenance interrupt.
        pub const EOI: u64 = 1 << 41;
        /// `Priority` (55:48).
        pub const PRIORITY_SHIFT: u32 = 48;
        /// `Group` (60): 1 for a Group 1 interrupt (an IRQ).
        pub const GROUP: u64 = 1 << 60;
        /// `HW` (61): the virtual interrupt is a physical one's (refused: EL2 owns those).
        pub const HW: u64 = 1 << 61;
        /// `State` (63:62) shift: 0 invalid, 1 pending, 2 active, 3 both.
        pub const STATE_SHIFT: u32 = 62;
        /// State: pending.
        pub const PENDING: u64 = 1 << STATE_SHIFT;
        /// State: active.
        pub const ACTIVE: u64 = 2 << STATE_SHIFT;
        /// The bits a host may set: state, group, priority, EOI, a vINTID below 1020.
        pub const ALLOWED: u64 =
            (3 << STATE_SHIFT) | GROUP | (0xff << PRIORITY_SHIFT) | EOI | VINTID;

        /// An LR holding `intid` pending, Group 1, at `priority`.
        #[must_use]
        pub const fn pending_group1(intid: u32, priority: u8) -> u64 {
            PENDING | GROUP | ((priority as u64) << PRIORITY_SHIFT) | intid as u64
        }
    }
}

/// A vCPU's register state, shared by the host with EL2.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuState {
    /// `x0..=x30`.
    pub regs: [u64; 31],
    /// Program counter (IPA while the guest MMU is off).
    pub pc: u64,
    /// PSTATE (SPSR format). Validated on every entry: AArch64 EL0t/EL1t/EL1h, only NZCV,
    /// DAIF and M set; anything else makes `VcpuRun` fail with `EINVAL`.
    pub pstate: u64,
    /// EL1 system registers, indexed by [`sys`].
    pub sys: [u64; NR_SYSREGS],
    /// The last exit.
    pub exit: VcpuExit,
    /// The virtual CPU interface.
    pub vgic: VgicState,
}

impl Default for VcpuState {
    fn default() -> Self {
        let mut sys = [0; NR_SYSREGS];
        sys[sys::SCTLR_EL1] = SCTLR_EL1_RESET;
        Self {
            regs: [0; 31],
            pc: 0,
            pstate: PSTATE_EL1H_DAIF,
            sys,
            exit: VcpuExit::default(),
            vgic: VgicState::default(),
        }
    }
}

/// Byte offsets inside [`VcpuState`] (the world switch's assembly uses them).
pub mod vcpu_off {
    /// `regs`.
    pub const REGS: usize = core::mem::offset_of!(super::VcpuState, regs);
    /// `pc`.
    pub const PC: usize = core::mem::offset_of!(super::VcpuState, pc);
    /// `pstate`.
    pub const PSTATE: usize = core::mem::offset_of!(super::VcpuState, pstate);
    /// `sys`.
    pub const SYS: usize = core::mem::offset_of!(super::VcpuState, sys);
    /// `exit`.
    pub const EXIT: usize = core::mem::offset_of!(super::VcpuState, exit);
    /// `exit.reason`.
    pub const EXIT_REASON: usize = EXIT;
    /// `exit.mmio_data`.
    pub const EXIT_MMIO_DATA: usize = EXIT + core::mem::offset_of!(super::VcpuExit, mmio_data);
    /// `vgic`.
    pub const VGIC: usize = core::mem::offset_of!(super::VcpuState, vgic);

    /// `regs[n]`.
    #[must_use]
    pub const fn reg(n: u8) -> usize {
        REGS + 8 * n as usize
    }

    /// `sys[i]`.
    #[must_use]
    pub const fn sys(i: usize) -> usize {
        SYS + 8 * i
    }
}

/// A vCPU's FP/SIMD registers, shared by the host with EL2 (the world switch loads and saves
/// them directly: no value is invalid).
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FpState {
    /// `q0..=q31` as (low, high) halves.
    pub v: [[u64; 2]; 32],
    /// `FPSR`.
    pub fpsr: u64,
    /// `FPCR`.
    pub fpcr: u64,
}

/// Size of [`FpState`].
pub const FP_STATE_SIZE: usize = core::mem::size_of::<FpState>();

const _: () = assert!(core::mem::size_of::<VmDesc>() == 48);
const _: () = assert!(FP_STATE_SIZE == 528);
const _: () = assert!(vcpu_off::PC == 0xf8 && vcpu_off::SYS == 0x108);

/// vCPUs a VM may have (`VmDesc::nr_vcpus`); `VcpuInit` and `VcpuRun` name one by its index.
pub const MAX_VCPUS_PER_VM: usize = 4;

/// The `MPIDR_EL1` a guest's vCPU `i` reads (`VMPIDR_EL2` for its runs): bit 31 (RES1), Aff0 =
/// `i`, as the guest's device tree numbers its CPUs.
#[must_use]
pub const fn vcpu_mpidr(i: usize) -> u64 {
    (1 << 31) | i as u64
}

/// Test-guest layout: guest RAM starts at this IPA; the image is linked there.
pub const GUEST_RAM_IPA: u64 = 0x8000_0000;
/// Test-guest RAM size in pages (image, data, stack).
pub const GUEST_RAM_PAGES: u64 = 16;
/// The emulated console: a byte written at this IPA is one character of output.
pub const GUEST_CONSOLE_IPA: u64 = 0x0900_0000;
/// A readable emulated register (the host answers with the guest's cycle number).
pub const GUEST_ID_REG_IPA: u64 = 0x0900_0008;
/// Guest → host "ping" hypercall id (answered by the host with `x1 + 1` in `x0`).
pub const GUEST_HVC_PING: u64 = 0xC600_0100;
/// Guest → host "print" hypercall id of the test guest: `x1` = IPA of bytes in a page the
/// guest shares with the host (`MEM_SHARE`), `x2` = their length (at most
/// [`GUEST_PRINT_MAX`], inside that page). The host prints them, reading nothing but that
/// page, and answers `x0` = the length, or `u64::MAX` if it could not read them.
pub const GUEST_HVC_PRINT: u64 = 0xC600_0101;
/// Longest [`GUEST_HVC_PRINT`] line.
pub const GUEST_PRINT_MAX: u64 = 256;

/// The test guest's hostile tests (its `x2` bits 15:8, the host's `vm::flags::hostile`); the table in
/// `guest/src/main.rs` says what each does. `x1` is the value a writing test writes.
pub mod hostile {
    /// `CPACR_EL1.ZEN = 0b11`, `rdvl x0, #1`.
    pub const SVE_RDVL: u64 = 1;
    /// `CPACR_EL1.ZEN = 0b11`, `pfalse p7.b`.
    pub const SVE_PFALSE: u64 = 2;
    /// `CPACR_EL1.SMEN = 0b11`, `smstart`.
    pub const SME_SMSTART: u64 = 3;
    /// `msr mdscr_el1` with KDE, MDE and SS.
    pub const MDSCR_WRITE: u64 = 4;
    /// `msr dbgbvr0_el1, x1`.
    pub const DBGBVR0_WRITE: u64 = 5;
    /// `msr dbgbcr0_el1, x1`.
    pub const DBGBCR0_WRITE: u64 = 6;
    /// `msr oslar_el1, x1`.
    pub const OSLAR_WRITE: u64 = 7;
    /// `mrs x0, pmcr_el0`.
    pub const PMCR_READ: u64 = 8;
    /// `mrs x0, pmccntr_el0`.
    pub const PMCCNTR_READ: u64 = 9;
    /// `msr pmcr_el0, x1`.
    pub const PMCR_WRITE: u64 = 10;
    /// `mrs x0, actlr_el1`.
    pub const ACTLR_READ: u64 = 11;
    /// `msr SCXTNUM_EL1, x1`.
    pub const SCXTNUM_WRITE: u64 = 12;
    /// `dc isw, xzr`.
    pub const DC_ISW: u64 = 13;
    /// `mrs x0, LORID_EL1`.
    pub const LORID_READ: u64 = 14;
    /// `CSSELR_EL1 = 2`, ping, read back (must be 2), power off.
    pub const CSSELR_SWITCH: u64 = 15;
    /// `TPIDR2_EL0 = x1`, ping, read back (must be `x1`), power off.
    pub const TPIDR2_SWITCH: u64 = 16;
    /// `msr ICC_PMR_EL1, x1` with the virtual GIC left off by the host (its `ICV_*` state
    /// would otherwise reach the next guest on the CPU).
    pub const ICC_PMR_WRITE: u64 = 17;
}
