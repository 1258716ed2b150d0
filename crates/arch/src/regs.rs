//! Bits of the EL2 control registers pkvm-rs programs (non-VHE layouts, `HCR_EL2.E2H` = 0).
//! Which bits EL2 sets for the host and for guests, and why, is documented where the values
//! are built (`el2/src/sysregs.rs`, `el2/src/world.rs`) and in docs/SECURITY.md.

/// `HCR_EL2`: hypervisor configuration.
pub mod hcr {
    /// Stage-2 translation for EL1&0.
    pub const VM: u64 = 1 << 0;
    /// Protected table walk: a stage-1 walk that hits Device memory at stage 2 faults.
    pub const PTW: u64 = 1 << 2;
    /// Physical FIQs to EL2.
    pub const FMO: u64 = 1 << 3;
    /// Physical IRQs to EL2.
    pub const IMO: u64 = 1 << 4;
    /// SErrors to EL2.
    pub const AMO: u64 = 1 << 5;
    /// Default cacheability: stage-1 off means Normal write-back at stage 2.
    pub const DC: u64 = 1 << 12;
    /// Trap `WFI`.
    pub const TWI: u64 = 1 << 13;
    /// Trap `WFE`.
    pub const TWE: u64 = 1 << 14;
    /// Trap the ID group 3 registers.
    pub const TID3: u64 = 1 << 18;
    /// Trap `SMC`.
    pub const TSC: u64 = 1 << 19;
    /// Trap the implementation-defined system registers (`S3_x_C11`, `S3_x_C15`).
    pub const TIDCP: u64 = 1 << 20;
    /// Trap `ACTLR_EL1`.
    pub const TACR: u64 = 1 << 21;
    /// Trap data-cache maintenance by set/way.
    pub const TSW: u64 = 1 << 22;
    /// EL1 is AArch64.
    pub const RW: u64 = 1 << 31;
    /// Trap the LORegion registers.
    pub const TLOR: u64 = 1 << 35;
    /// Trap the RAS error-record registers.
    pub const TERR: u64 = 1 << 36;
    /// Pointer-authentication key registers do not trap.
    pub const APK: u64 = 1 << 40;
    /// Pointer-authentication instructions do not trap.
    pub const API: u64 = 1 << 41;
    /// Error-record fault-injection registers do not trap (FEAT_RASv1p1).
    pub const FIEN: u64 = 1 << 47;
    /// `SCXTNUM_EL0`/`SCXTNUM_EL1` do not trap (FEAT_CSV2_2 / FEAT_CSV2_1p2).
    pub const ENSCXT: u64 = 1 << 53;
    /// MTE tag registers and instructions do not trap.
    pub const ATA: u64 = 1 << 56;
}

/// `MDCR_EL2`: debug and performance-monitor configuration.
pub mod mdcr {
    /// `HPMN` (bits 4:0): event counters EL1 and EL0 may use.
    pub const HPMN_MASK: u64 = 0x1f;
    /// Trap `PMCR_EL0`.
    pub const TPMCR: u64 = 1 << 5;
    /// Trap every performance-monitor register.
    pub const TPM: u64 = 1 << 6;
    /// Route debug exceptions to EL2 (and trap debug registers).
    pub const TDE: u64 = 1 << 8;
    /// Trap the debug registers (breakpoints, watchpoints, `MDSCR_EL1`, DCC, claim tags).
    pub const TDA: u64 = 1 << 9;
    /// Trap the OS lock and power-down registers (`OSLAR_EL1`, `OSLSR_EL1`, `OSDLR_EL1`,
    /// `DBGPRCR_EL1`).
    pub const TDOSA: u64 = 1 << 10;
    /// Trap the debug ROM registers.
    pub const TDRA: u64 = 1 << 11;
    /// `E2PB` (bits 13:12) = 0b00: the statistical-profiling buffer belongs to EL2 and EL1
    /// accesses to it trap.
    pub const E2PB_MASK: u64 = 0b11 << 12;
    /// Trap the statistical-profiling control registers.
    pub const TPMS: u64 = 1 << 14;
    /// Trap `TRFCR_EL1` (trace filter).
    pub const TTRF: u64 = 1 << 19;
    /// `E2TB` (bits 25:24) = 0b00: the trace buffer belongs to EL2 and EL1 accesses trap.
    pub const E2TB_MASK: u64 = 0b11 << 24;
}

/// `CPTR_EL2` (non-VHE): architectural feature traps.
pub mod cptr {
    /// RES1 bits of the non-VHE layout (13, 9, 7:0). Bit 8 (`TZ`) and 12 (`TSM`) are RES1
    /// when SVE / SME are absent.
    pub const RES1: u64 = (1 << 13) | (1 << 9) | 0xff;
    /// Trap SVE (and `ZCR_EL1`).
    pub const TZ: u64 = 1 << 8;
    /// Trap FP/SIMD (and SVE, SME).
    pub const TFP: u64 = 1 << 10;
    /// Trap SME (and `SMCR_EL1`, `SVCR`, `SMPRI_EL1`).
    pub const TSM: u64 = 1 << 12;
    /// Trap the trace registers.
    pub const TTA: u64 = 1 << 20;
    /// Trap the activity-monitor registers.
    pub const TAM: u64 = 1 << 30;
    /// Trap `CPACR_EL1`.
    pub const TCPAC: u64 = 1 << 31;
}

/// `CNTHCTL_EL2` (non-VHE).
pub mod cnthctl {
    /// EL1 and EL0 may read the physical counter.
    pub const EL1PCTEN: u64 = 1 << 0;
    /// EL1 and EL0 may use the physical timer.
    pub const EL1PCEN: u64 = 1 << 1;
}

/// `CNT*_CTL` fields of the generic timers (`CNTV_CTL_EL0`, `CNTHP_CTL_EL2`, ...).
pub mod cntctl {
    /// The timer is enabled.
    pub const ENABLE: u64 = 1 << 0;
    /// Its interrupt is masked.
    pub const IMASK: u64 = 1 << 1;
    /// Its condition is met (read-only).
    pub const ISTATUS: u64 = 1 << 2;
}

/// The EL2 physical timer's interrupt (PPI 10): what preempts a guest.
pub const CNTHP_INTID: u32 = 26;

/// ID-register fields EL2 tests.
pub mod id {
    /// A 4-bit ID field.
    #[must_use]
    #[inline]
    pub const fn field(reg: u64, shift: u32) -> u64 {
        (reg >> shift) & 0xf
    }
}

/// `VTTBR_EL2`: the stage-2 root and VMID of the guest (or host) whose stage-2 is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Vttbr(u64);

impl Vttbr {
    /// `VMID` field shift (bits 63:48, 16-bit VMIDs; 8-bit VMIDs use bits 55:48).
    const VMID_SHIFT: u32 = 48;
    /// `BADDR` field: the root table's physical address (bits 47:1).
    const BADDR_MASK: u64 = ((1 << 48) - 1) & !1;

    /// The value for the stage-2 rooted at `root` under `vmid`. `root` is a table's physical
    /// address, so page aligned and below 2^48: it is not masked (the world switch runs this
    /// on every entry), only checked in debug builds.
    #[must_use]
    #[inline]
    pub const fn new(root: u64, vmid: u16) -> Self {
        debug_assert!(root & !Self::BADDR_MASK == 0);
        Vttbr(root | ((vmid as u64) << Self::VMID_SHIFT))
    }

    /// The register value.
    #[must_use]
    #[inline]
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Decodes a register value.
    #[must_use]
    #[inline]
    pub const fn from_bits(bits: u64) -> Self {
        Vttbr(bits)
    }

    /// The VMID.
    #[must_use]
    #[inline]
    pub const fn vmid(self) -> u16 {
        (self.0 >> Self::VMID_SHIFT) as u16
    }

    /// The root table's physical address.
    #[must_use]
    #[inline]
    pub const fn root(self) -> u64 {
        self.0 & Self::BADDR_MASK
    }
}

#[cfg(test)]
mod tests {
    use super::Vttbr;

    #[test]
    fn vttbr_round_trip() {
        let v = Vttbr::new(0x4123_4000, 7);
        assert_eq!(v.bits(), 0x0007_0000_4123_4000);
        assert_eq!((v.root(), v.vmid()), (0x4123_4000, 7));
        assert_eq!(Vttbr::from_bits(v.bits()), v);
        assert_eq!(Vttbr::new(0x1000, 0).bits(), 0x1000);
    }
}
