//! What the portable core needs from the machine it runs on.

use pkvm_abi::shared::Words;
use pkvm_arch::regs::Vttbr;
pub use pkvm_pgtable::ArchOps;

/// Access to physical memory that EL2 owns (its page pool, page tables, vmemmap backing).
///
/// At EL2 this goes through the hypervisor's linear map; in the simulator it indexes the
/// simulated RAM. All methods take `&self`: several CPUs use the same memory at once, and the
/// callers' locks say who may touch what.
pub trait PhysMem: Sync {
    /// Reads the naturally aligned `u64` at physical address `pa`.
    fn read_u64(&self, pa: u64) -> u64;
    /// Writes the naturally aligned `u64` at physical address `pa`.
    fn write_u64(&self, pa: u64, val: u64);
    /// Zeroes `len` bytes from `pa`; both are multiples of 8 (in practice of the page size).
    fn zero(&self, pa: u64, len: u64);

    /// Reads the structure at `pa` (8-byte aligned) whole, as a value: for memory another
    /// party shares, read once, then validate the copy.
    #[inline(always)]
    fn read_obj<T: Words>(&self, pa: u64) -> T {
        T::read_with(|i| self.read_u64(pa + 8 * i as u64))
    }

    /// Writes `v` whole at `pa` (8-byte aligned).
    #[inline(always)]
    fn write_obj<T: Words>(&self, pa: u64, v: &T) {
        v.write_with(|i, w| self.write_u64(pa + 8 * i as u64, w));
    }
}

/// Everything else the core needs from the CPU: barriers and TLB maintenance (the one
/// [`ArchOps`] trait `pkvm-pgtable` asks for too, so a `&Platform` is what the page tables
/// are handed), guest-VMID invalidations, device registers and a log.
///
/// At EL2 these are single instructions; the simulator records them and models a TLB so that a
/// missing invalidation shows up as a stale translation. [`ArchOps::tlbi_s2_ipa`] and
/// [`ArchOps::tlbi_vmid`] act on the host's stage-2 (VMID 0, whose `VTTBR_EL2` is loaded
/// whenever EL2 runs for the host); a guest's go through the `tlbi_guest_*` methods.
pub trait Platform: PhysMem + GuestRunner + ArchOps {
    /// `tlbi ipas2e1is` + `vmalle1is` for a guest: `vttbr` (its stage-2 root and VMID) is
    /// the `VTTBR_EL2` loaded around the invalidation (the real root, so that no speculative
    /// walk under that VMID can see another table), then the host's is restored.
    fn tlbi_guest_s2_ipa(&self, vttbr: Vttbr, ipa: u64, level: u8);
    /// `tlbi vmalls12e1is` for a guest, with `vttbr` loaded as in
    /// [`Platform::tlbi_guest_s2_ipa`].
    fn tlbi_guest_vmid(&self, vttbr: Vttbr);
    /// Reads the `size`-byte (4 or 8) device register at `pa` (a device range EL2 emulates
    /// for the host and maps for itself).
    fn mmio_read(&self, pa: u64, size: u8) -> u64;
    /// Writes the `size`-byte (4 or 8) device register at `pa`.
    fn mmio_write(&self, pa: u64, size: u8, val: u64);
    /// Writes a diagnostic line (EL2 console or the simulator's log).
    fn log(&self, args: core::fmt::Arguments<'_>);
    /// Cleans and invalidates the data cache for `[va, va + len)` to the point of coherency
    /// (`DC CIVAC` per line, then `DSB ISH`). For memory EL2 zeroed (or wrote a secret to)
    /// before another party may map it with other attributes: a non-cacheable mapping reads
    /// the memory, not EL2's dirty cache lines.
    fn clean_dcache_to_poc(&self, va: u64, len: u64);
    /// The optional PSTATE features of this CPU (FEAT_PAN, FEAT_SSBS, FEAT_MTE, FEAT_NMI),
    /// which decide what taking an exception to EL1 writes when EL2 injects one into a guest.
    fn pstate_features(&self) -> pkvm_arch::exception::PstateFeatures;
}

/// One guest entry, prepared and validated by the core ([`crate::vm`]).
///
/// The world switch loads the guest's general registers, EL1 system registers and FP/SIMD
/// registers straight from the host-shared vCPU structure at `vcpu_pa` and FP area at `fp_pa`
/// (no value of those is invalid) and saves them back there on exit. The fields that need
/// validation — `pc` and `pstate` — were read once by the core and are taken from here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestEntry {
    /// Physical address of the host-shared `pkvm_abi::guest::VcpuState` (pinned).
    pub vcpu_pa: u64,
    /// Physical address of the host-shared `pkvm_abi::guest::FpState` (pinned).
    pub fp_pa: u64,
    /// Validated guest PC.
    pub pc: u64,
    /// Validated guest PSTATE.
    pub pstate: u64,
    /// `VTTBR_EL2`: guest stage-2 root | VMID << 48.
    pub vttbr: u64,
    /// `VMPIDR_EL2`: the `MPIDR_EL1` the vCPU reads (`pkvm_abi::guest::vcpu_mpidr`).
    pub vmpidr: u64,
}

/// How a guest run ended: which EL2 vector took the exception and its syndrome. The guest's
/// registers, PC and PSTATE were saved into the vCPU structure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestExit {
    /// 0 synchronous, 1 IRQ, 2 FIQ, 3 SError.
    pub vector: u64,
    /// `ESR_EL2`.
    pub esr: u64,
    /// `FAR_EL2`.
    pub far: u64,
    /// `HPFAR_EL2`.
    pub hpfar: u64,
}

/// The shape of the CPU's GICv3 virtual CPU interface (`ICH_VTR_EL2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VgicInfo {
    /// List registers (`ListRegs` + 1), 1..=16.
    pub nr_lrs: u8,
    /// Active-priority registers per group (`ICH_AP0R<n>`/`ICH_AP1R<n>`): 1, 2 or 4, from
    /// `PRIbits`.
    pub nr_aprs: u8,
}

/// The virtual CPU interface of one run: validated by the core from the host's
/// `pkvm_abi::guest::VgicState` (read once), loaded into `ICH_*_EL2` by the world switch, and
/// saved back into it at the exit (`misr`, `eisr`, `elrsr` too) for the core to publish.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VgicRegs {
    /// List registers to load and save: `lr[..nr_lrs]` (at most [`VgicInfo::nr_lrs`]).
    pub nr_lrs: u8,
    /// `ICH_HCR_EL2`, `En` set.
    pub hcr: u64,
    /// `ICH_VMCR_EL2`.
    pub vmcr: u64,
    /// `ICH_AP0R<n>_EL2`, the first [`VgicInfo::nr_aprs`] used.
    pub ap0r: [u64; 4],
    /// `ICH_AP1R<n>_EL2`, the first [`VgicInfo::nr_aprs`] used.
    pub ap1r: [u64; 4],
    /// `ICH_LR<n>_EL2`.
    pub lr: [u64; 16],
    /// At exit: `ICH_MISR_EL2`.
    pub misr: u64,
    /// At exit: `ICH_EISR_EL2`.
    pub eisr: u64,
    /// At exit: `ICH_ELRSR_EL2`.
    pub elrsr: u64,
}

/// The world switch: runs a guest until it exits to EL2.
pub trait GuestRunner {
    /// Saves the host's EL1 state, loads the guest's (registers, EL1 system registers,
    /// FP/SIMD, `VTTBR_EL2`, the guest `HCR_EL2`, and with `vgic` its virtual CPU interface),
    /// runs it until an exception takes it to EL2, saves it (the virtual CPU interface into
    /// `vgic`, which is then turned off) and restores the host.
    fn run_guest(&self, entry: &GuestEntry, vgic: Option<&mut VgicRegs>) -> GuestExit;

    /// The CPU's GICv3 virtual CPU interface, if it has one EL2 can use.
    fn vgic_info(&self) -> Option<VgicInfo>;

    /// The CPU's ID register `Op0` = 3, `Op1` = 0, `CRn` = 0, `CRm` = `crm` (1..=7), `Op2` =
    /// `op2` (reserved encodings read as zero), as EL2 reads it.
    fn read_id_reg(&self, crm: u8, op2: u8) -> u64;
}
