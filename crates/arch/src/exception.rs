//! Taking a synchronous exception to AArch64 EL1, as EL2 emulates it when it injects an
//! UNDEF or an external abort into the host (or a guest).
//!
//! The architecture, on an exception taken to EL1 (Arm ARM D1.3, "PSTATE on exception
//! entry"): `SPSR_EL1` = the interrupted PSTATE, `ELR_EL1` = the preferred return address,
//! `ESR_EL1` = the syndrome; the new PSTATE is EL1h with `D`, `A`, `I`, `F` set, `SS`, `IL`,
//! `UAO` and `BTYPE` cleared, `NZCV` and `DIT` kept, `PAN` set if `SCTLR_EL1.SPAN` is 0 (else
//! kept), `SSBS` = `SCTLR_EL1.DSSBS` (FEAT_SSBS), `TCO` set (FEAT_MTE), `ALLINT` = NOT
//! `SCTLR_EL1.SPINTMASK` (FEAT_NMI, else kept); execution continues at `VBAR_EL1` + the
//! offset of the source group ([`crate::spsr::Source`]).

use crate::esr::{Ec, FSC_SEA, IL};
use crate::spsr::{self, Source};

/// `SCTLR_EL1.SPAN` (bit 23): 0 = set PAN on exception entry to EL1.
pub const SCTLR_SPAN: u64 = 1 << 23;
/// `SCTLR_EL1.DSSBS` (bit 44): the `SSBS` value on exception entry.
pub const SCTLR_DSSBS: u64 = 1 << 44;
/// `SCTLR_EL1.SPINTMASK` (bit 62): 0 = set `ALLINT` on exception entry (FEAT_NMI).
pub const SCTLR_SPINTMASK: u64 = 1 << 62;

/// The optional PSTATE features that change what exception entry writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PstateFeatures {
    /// FEAT_PAN (`ID_AA64MMFR1_EL1.PAN` != 0).
    pub pan: bool,
    /// FEAT_SSBS (`ID_AA64PFR1_EL1.SSBS` != 0).
    pub ssbs: bool,
    /// FEAT_MTE, any level (`ID_AA64PFR1_EL1.MTE` != 0).
    pub mte: bool,
    /// FEAT_NMI (`ID_AA64PFR1_EL1.NMI` != 0).
    pub nmi: bool,
}

impl PstateFeatures {
    /// Reads the features from the ID register values.
    #[must_use]
    #[inline]
    pub const fn from_id_regs(mmfr1: u64, pfr1: u64) -> Self {
        PstateFeatures {
            pan: (mmfr1 >> 20) & 0xf != 0,
            ssbs: (pfr1 >> 4) & 0xf != 0,
            mte: (pfr1 >> 8) & 0xf != 0,
            nmi: (pfr1 >> 36) & 0xf != 0,
        }
    }
}

/// The register writes that make the interrupted context take an exception at EL1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct El1Entry {
    /// `ESR_EL1`.
    pub esr: u64,
    /// `ELR_EL1`: where the exception returns to.
    pub elr: u64,
    /// `SPSR_EL1`: the interrupted PSTATE.
    pub spsr: u64,
    /// The new `ELR_EL2`: the EL1 vector entry.
    pub vector: u64,
    /// The new `SPSR_EL2`: PSTATE at the vector entry.
    pub pstate: u64,
}

/// PSTATE at the EL1 vector entry of an exception taken from the context `spsr` (any layout).
#[must_use]
#[inline]
pub const fn entry_pstate(spsr: u64, sctlr_el1: u64, f: PstateFeatures) -> u64 {
    let mut p = (spsr & (spsr::NZCV | spsr::DIT)) | spsr::DAIF | spsr::M_EL1H;
    if f.pan && (sctlr_el1 & SCTLR_SPAN == 0 || spsr & spsr::PAN != 0) {
        p |= spsr::PAN;
    }
    if f.ssbs && sctlr_el1 & SCTLR_DSSBS != 0 {
        p |= spsr::SSBS;
    }
    if f.mte {
        p |= spsr::TCO;
    }
    if f.nmi {
        let kept = spsr & spsr::M_AARCH32 == 0 && spsr & spsr::ALLINT != 0;
        if sctlr_el1 & SCTLR_SPINTMASK == 0 || kept {
            p |= spsr::ALLINT;
        }
    }
    p
}

/// A synchronous exception at EL1 for the context interrupted with `spsr` at `elr`, with
/// syndrome `esr`: the registers to write.
#[must_use]
#[inline]
pub const fn el1_sync(
    esr: u64,
    elr: u64,
    spsr: u64,
    vbar_el1: u64,
    sctlr_el1: u64,
    f: PstateFeatures,
) -> El1Entry {
    El1Entry {
        esr,
        elr,
        spsr,
        vector: vbar_el1.wrapping_add(spsr::source_for_el1(spsr).vector_offset()),
        pstate: entry_pstate(spsr, sctlr_el1, f),
    }
}

/// The `ESR_EL1` of an UNDEF: "unknown reason" (EC 0), `ISS` 0, and `IL` 1 — for EC 0 the
/// architecture defines `IL` as 1 whatever the instruction's length.
pub const UNDEF_ESR: u64 = IL;

/// The `ESR_EL1` of a synchronous external abort for the aborted access the trap's syndrome
/// `trap_esr` (a data or instruction abort taken to EL2) describes, taken at EL1 from the
/// context `spsr`: EC 0x25/0x21 from EL1, 0x24/0x20 from EL0; `WnR` kept for data; `DFSC` =
/// synchronous external abort; `IL` = 1.
#[must_use]
#[inline]
pub const fn sea_esr(trap_esr: u64, spsr: u64) -> u64 {
    let same_el = matches!(
        spsr::source_for_el1(spsr),
        Source::CurrentSp0 | Source::CurrentSpx
    );
    let instruction = matches!(crate::esr::Esr(trap_esr).ec(), Ec::IabtLow | Ec::IabtCur);
    let ec = match (instruction, same_el) {
        (false, true) => Ec::DabtCur,
        (false, false) => Ec::DabtLow,
        (true, true) => Ec::IabtCur,
        (true, false) => Ec::IabtLow,
    };
    let wnr = if instruction { 0 } else { trap_esr & (1 << 6) };
    ((ec.bits() as u64) << 26) | IL | wnr | FSC_SEA
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: PstateFeatures = PstateFeatures {
        pan: true,
        ssbs: true,
        mte: true,
        nmi: false,
    };

    #[test]
    fn entry_from_el1h() {
        // EL1h, NZCV = 0b0110, DAIF clear, DIT and UAO and SS and BTYPE set.
        let spsr = (0b0110 << 28) | spsr::DIT | spsr::UAO | spsr::SS | spsr::BTYPE | 0b0101;
        let e = el1_sync(0, 0x1000, spsr, 0x8000, SCTLR_SPAN, ALL);
        assert_eq!(e.vector, 0x8200);
        assert_eq!(
            e.pstate,
            (0b0110 << 28) | spsr::DIT | spsr::DAIF | spsr::M_EL1H | spsr::TCO
        );
        assert_eq!((e.spsr, e.elr), (spsr, 0x1000));
    }

    #[test]
    fn pan_and_ssbs_follow_sctlr() {
        // SPAN = 0: PAN set on entry. SPAN = 1: PAN kept (here from the interrupted state).
        assert_ne!(entry_pstate(0x5, 0, ALL) & spsr::PAN, 0);
        assert_eq!(entry_pstate(0x5, SCTLR_SPAN, ALL) & spsr::PAN, 0);
        assert_ne!(
            entry_pstate(0x5 | spsr::PAN, SCTLR_SPAN, ALL) & spsr::PAN,
            0
        );
        assert_ne!(entry_pstate(0x5, SCTLR_DSSBS, ALL) & spsr::SSBS, 0);
        assert_eq!(entry_pstate(0x5 | spsr::SSBS, 0, ALL) & spsr::SSBS, 0);
        // Without the features those bits stay clear.
        let none = PstateFeatures::default();
        assert_eq!(entry_pstate(0x5, SCTLR_DSSBS, none), spsr::DAIF | 0b0101);
    }

    #[test]
    fn vectors_by_source() {
        let f = ALL;
        assert_eq!(el1_sync(0, 0, 0x3c4, 0x1_0000, 0, f).vector, 0x1_0000);
        assert_eq!(el1_sync(0, 0, 0x0, 0x1_0000, 0, f).vector, 0x1_0400);
        // AArch32 User mode (M = 0b10000): the lower-EL AArch32 group, +0x600.
        let e = el1_sync(0, 0x8000, 0x10 | (1 << 5), 0x1_0000, SCTLR_SPAN, f);
        assert_eq!(e.vector, 0x1_0600);
        assert_eq!(e.pstate & spsr::M_MASK, spsr::M_EL1H);
        assert_eq!(e.pstate & spsr::M_AARCH32, 0);
    }

    #[test]
    fn nmi_allint() {
        let f = PstateFeatures { nmi: true, ..ALL };
        assert_ne!(entry_pstate(0x5, 0, f) & spsr::ALLINT, 0);
        assert_eq!(entry_pstate(0x5, SCTLR_SPINTMASK, f) & spsr::ALLINT, 0);
        assert_ne!(
            entry_pstate(0x5 | spsr::ALLINT, SCTLR_SPINTMASK, f) & spsr::ALLINT,
            0
        );
    }

    #[test]
    fn syndromes() {
        assert_eq!(crate::esr::Esr(UNDEF_ESR).ec(), Ec::Unknown);
        assert!(crate::esr::Esr(UNDEF_ESR).il());
        // Data abort write from EL1h -> EC 0x25, WnR; from AArch32 EL0 -> EC 0x24.
        let dabt = (0x24 << 26) | IL | (1 << 6) | 0b000111;
        assert_eq!(sea_esr(dabt, 0x5), (0x25 << 26) | IL | (1 << 6) | FSC_SEA);
        assert_eq!(sea_esr(dabt, 0x10), (0x24 << 26) | IL | (1 << 6) | FSC_SEA);
        assert_eq!(sea_esr(0x20 << 26, 0x0), (0x20 << 26) | IL | FSC_SEA);
        assert_eq!(sea_esr(0x20 << 26, 0x4), (0x21 << 26) | IL | FSC_SEA);
    }
}
