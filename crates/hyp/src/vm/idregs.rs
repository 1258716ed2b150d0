//! The ID registers a guest reads (`HCR_EL2.TID3` traps every `ID_*` register of
//! `Op0` = 3, `Op1` = 0, `CRn` = 0, `CRm` 1..=7): the CPU's own values, with the features whose
//! state the world switch does not switch taken out, so that a guest OS never turns on what
//! would then trap and end its run (or leak the host's state). As an OS reads them, the
//! emulation is one trap and back, with no exit.
//!
//! Hidden: SVE and SME (`CPTR_EL2.TZ/TSM` trap them for the whole run), MTE (`HCR_EL2.ATA` = 0),
//! pointer authentication (its keys are the host's: `HCR_EL2.API/APK` = 0), the activity
//! monitors (`CPTR_EL2.TAM`), MPAM, LORegions (`HCR_EL2.TLOR`), the PMU (also its AArch32
//! view), statistical profiling, trace and branch records (`MDCR_EL2`: the guest's PMU and
//! debug registers read as zero), FEAT_NMI (`ALLINT` is not switched), GCS and MOPS (their
//! registers and instructions need `HCRX_EL2` and fine-grained-trap bits EL2 leaves at 0), and
//! AArch32 at EL0 and EL1 (such a PSTATE is refused on entry). Registers that only describe
//! features newer than this list (`ID_AA64PFR2_EL1`, `ID_AA64FPFR0_EL1`, `ID_AA64ISAR3_EL1`,
//! `ID_AA64MMFR3_EL1`: FPMR, FP8, TCR2, SCTLR2, permission indirection, ...) read as zero:
//! a deny-list with the unknown future denied. Everything else is the CPU's.

/// A 4-bit ID field at bit `lsb`.
const fn field(lsb: u32) -> u64 {
    0xf << lsb
}

/// The fields each ID register loses, by (`CRm`, `Op2`).
const HIDDEN: &[((u8, u8), u64)] = &[
    // ID_DFR0_EL1 (AArch32 view): PerfMon (27:24).
    ((1, 2), field(24)),
    // ID_AA64PFR0_EL1: EL0 (3:0) and EL1 (7:4) (set to "AArch64 only" below), SVE (35:32),
    // MPAM (43:40), AMU (47:44).
    (
        (4, 0),
        field(0) | field(4) | field(32) | field(40) | field(44),
    ),
    // ID_AA64PFR1_EL1: MTE (11:8), SME (27:24), MPAM_frac (19:16), NMI (39:36), MTE_frac
    // (43:40), GCS (47:44).
    (
        (4, 1),
        field(8) | field(16) | field(24) | field(36) | field(40) | field(44),
    ),
    // ID_AA64PFR2_EL1 (FPMR, MTE extensions), ID_AA64ZFR0_EL1, ID_AA64SMFR0_EL1 (SVE and SME
    // details), ID_AA64FPFR0_EL1 (FP8): all of them.
    ((4, 2), u64::MAX),
    ((4, 4), u64::MAX),
    ((4, 5), u64::MAX),
    ((4, 7), u64::MAX),
    // ID_AA64DFR0_EL1: PMUVer (11:8), TraceVer (7:4), PMSVer (35:32), TraceFilt (43:40),
    // TraceBuffer (47:44), MTPMU (51:48), BRBE (55:52).
    (
        (5, 0),
        field(4) | field(8) | field(32) | field(40) | field(44) | field(48) | field(52),
    ),
    // ID_AA64ISAR1_EL1: APA (7:4), API (11:8), GPA (27:24), GPI (31:28).
    ((6, 1), field(4) | field(8) | field(24) | field(28)),
    // ID_AA64ISAR2_EL1: GPA3 (11:8), APA3 (15:12), MOPS (19:16).
    ((6, 2), field(8) | field(12) | field(16)),
    // ID_AA64ISAR3_EL1: all of it.
    ((6, 3), u64::MAX),
    // ID_AA64MMFR1_EL1: LO (19:16).
    ((7, 1), field(16)),
    // ID_AA64MMFR3_EL1 (TCR2, SCTLR2, S1PIE, S1POE, ...): all of it.
    ((7, 3), u64::MAX),
];

/// `ID_AA64PFR0_EL1.EL0` and `.EL1` as a guest sees them: AArch64 only.
const PFR0_AARCH64_ONLY: u64 = 0x11;

/// The value a guest reads for ID register (`crm`, `op2`) whose CPU value is `v`.
#[must_use]
pub fn sanitize(crm: u8, op2: u8, v: u64) -> u64 {
    let v = HIDDEN
        .iter()
        .find(|(at, _)| *at == (crm, op2))
        .map_or(v, |&(_, mask)| v & !mask);
    if (crm, op2) == (4, 0) {
        v | PFR0_AARCH64_ONLY
    } else {
        v
    }
}

/// Whether (`op0`, `op1`, `crn`, `crm`) names a register `HCR_EL2.TID3` traps.
#[must_use]
pub const fn is_id_reg(op0: u8, op1: u8, crn: u8, crm: u8) -> bool {
    op0 == 3 && op1 == 0 && crn == 0 && crm >= 1 && crm <= 7
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_features_read_as_absent_and_the_rest_as_the_cpu_has_them() {
        let all = u64::MAX;
        // ID_AA64PFR0_EL1: no SVE, MPAM, AMU; EL0..EL3, FP, AdvSIMD, GIC, RAS kept.
        let pfr0 = sanitize(4, 0, all);
        assert_eq!((pfr0 >> 32) & 0xf, 0);
        assert_eq!((pfr0 >> 44) & 0xf, 0);
        assert_eq!(pfr0 & 0xff, 0x11, "EL0 and EL1: AArch64 only");
        assert_eq!(
            sanitize(4, 0, 0x22) & 0xff,
            0x11,
            "AArch32 at EL0/EL1 hidden"
        );
        assert_eq!(
            pfr0 & 0xffff_ff00,
            0xffff_ff00,
            "EL2, EL3, FP, AdvSIMD, GIC, RAS kept"
        );
        // ID_AA64PFR1_EL1: no MTE, SME; BT (3:0) and SSBS (7:4) kept.
        let pfr1 = sanitize(4, 1, all);
        assert_eq!(((pfr1 >> 8) & 0xf, (pfr1 >> 24) & 0xf), (0, 0));
        assert_eq!(pfr1 & 0xff, 0xff);
        assert_eq!(sanitize(4, 4, all), 0);
        assert_eq!(sanitize(4, 5, all), 0);
        // ID_AA64DFR0_EL1: no PMU; DebugVer (3:0), BRPs (15:12), WRPs (23:20) kept.
        let dfr0 = sanitize(5, 0, all);
        assert_eq!((dfr0 >> 8) & 0xf, 0);
        for (lsb, what) in [
            (4, "TraceVer"),
            (32, "PMSVer"),
            (40, "TraceFilt"),
            (44, "TraceBuffer"),
            (48, "MTPMU"),
            (52, "BRBE"),
        ] {
            assert_eq!((dfr0 >> lsb) & 0xf, 0, "{what}");
        }
        assert_eq!(dfr0 & 0xf, 0xf);
        assert_eq!((dfr0 >> 12) & 0xf, 0xf);
        // ID_AA64ISAR1_EL1: no pointer authentication; DPB (3:0), JSCVT (15:12) kept.
        let isar1 = sanitize(6, 1, all);
        assert_eq!(isar1 & 0xff00_0ff0, 0, "APA, API, GPA, GPI");
        assert_eq!(
            isar1 & 0x00ff_f00f,
            0x00ff_f00f,
            "DPB, JSCVT, FCMA, LRCPC, FRINTTS kept"
        );
        assert_eq!(sanitize(6, 2, all) & 0xf_ff00, 0, "APA3, GPA3, MOPS");
        for (lsb, what) in [
            (16, "MPAM_frac"),
            (36, "NMI"),
            (40, "MTE_frac"),
            (44, "GCS"),
        ] {
            assert_eq!((sanitize(4, 1, all) >> lsb) & 0xf, 0, "{what}");
        }
        for (crm, op2) in [(4, 2), (4, 7), (6, 3), (7, 3)] {
            assert_eq!(sanitize(crm, op2, all), 0, "({crm}, {op2}): newer features");
        }
        assert_eq!((sanitize(1, 2, all) >> 24) & 0xf, 0, "ID_DFR0_EL1.PerfMon");
        assert_eq!(sanitize(7, 1, all) & field(16), 0);
        // Registers with nothing hidden: the CPU's value.
        assert_eq!(sanitize(7, 0, 0x1234_5678), 0x1234_5678);
        assert_eq!(sanitize(6, 0, all), all);
        assert_eq!(sanitize(1, 0, 0x11), 0x11);
    }

    #[test]
    fn tid3_covers_crm_1_to_7_of_crn_0() {
        assert!(is_id_reg(3, 0, 0, 4));
        assert!(is_id_reg(3, 0, 0, 1) && is_id_reg(3, 0, 0, 7));
        assert!(
            !is_id_reg(3, 0, 0, 0),
            "MIDR, MPIDR: CRm 0 (TID3 does not trap them)"
        );
        assert!(!is_id_reg(3, 1, 0, 0), "CCSIDR");
        assert!(!is_id_reg(3, 0, 1, 4));
        assert!(!is_id_reg(2, 0, 0, 4));
    }
}
