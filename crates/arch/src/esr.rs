//! Exception syndromes: `ESR_ELx` decoded into an exception class and, for the classes EL2
//! acts on, a typed instruction-specific syndrome.

use crate::addr::Ipa;

/// `ESR_ELx.EC`: why an exception was taken. Only the classes pkvm-rs names; everything else
/// decodes to [`Ec::Other`] with the raw value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ec {
    /// 0x00: unknown reason (what an UNDEF reports).
    Unknown,
    /// 0x01: trapped `WFI`/`WFE`.
    Wfx,
    /// 0x03..=0x06, 0x0C: trapped AArch32 coprocessor / system-register access.
    Aarch32Sysreg,
    /// 0x07: trapped SVE, Advanced SIMD or floating-point access (`CPTR_ELx.TFP`).
    FpSimd,
    /// 0x15: `SVC` from AArch64.
    Svc64,
    /// 0x16: `HVC` from AArch64.
    Hvc64,
    /// 0x17: `SMC` from AArch64 (trapped by `HCR_EL2.TSC`).
    Smc64,
    /// 0x18: trapped `MSR`, `MRS` or System instruction (AArch64).
    Sysreg64,
    /// 0x19: trapped SVE access (`CPTR_ELx.TZ`).
    Sve,
    /// 0x1D: trapped SME access (`CPTR_ELx.TSM`).
    Sme,
    /// 0x20: instruction abort from a lower exception level.
    IabtLow,
    /// 0x21: instruction abort without a change in exception level.
    IabtCur,
    /// 0x24: data abort from a lower exception level.
    DabtLow,
    /// 0x25: data abort without a change in exception level.
    DabtCur,
    /// Any other class (raw `EC` value).
    Other(u8),
}

impl Ec {
    /// Decodes the 6-bit `EC` field.
    #[must_use]
    #[inline(always)]
    pub const fn from_bits(ec: u8) -> Self {
        match ec & 0x3f {
            0x00 => Ec::Unknown,
            0x01 => Ec::Wfx,
            0x03..=0x06 | 0x0c => Ec::Aarch32Sysreg,
            0x07 => Ec::FpSimd,
            0x15 => Ec::Svc64,
            0x16 => Ec::Hvc64,
            0x17 => Ec::Smc64,
            0x18 => Ec::Sysreg64,
            0x19 => Ec::Sve,
            0x1d => Ec::Sme,
            0x20 => Ec::IabtLow,
            0x21 => Ec::IabtCur,
            0x24 => Ec::DabtLow,
            0x25 => Ec::DabtCur,
            other => Ec::Other(other),
        }
    }

    /// The 6-bit `EC` value, for classes with one value (the AArch32 sysreg group reports
    /// 0x03, `MCR`/`MRC` to CP15).
    #[must_use]
    #[inline]
    pub const fn bits(self) -> u8 {
        match self {
            Ec::Unknown => 0x00,
            Ec::Wfx => 0x01,
            Ec::Aarch32Sysreg => 0x03,
            Ec::FpSimd => 0x07,
            Ec::Svc64 => 0x15,
            Ec::Hvc64 => 0x16,
            Ec::Smc64 => 0x17,
            Ec::Sysreg64 => 0x18,
            Ec::Sve => 0x19,
            Ec::Sme => 0x1d,
            Ec::IabtLow => 0x20,
            Ec::IabtCur => 0x21,
            Ec::DabtLow => 0x24,
            Ec::DabtCur => 0x25,
            Ec::Other(v) => v,
        }
    }
}

/// `ESR_ELx.IL`: the trapped instruction was 32 bits long (always for A64).
pub const IL: u64 = 1 << 25;

/// An exception syndrome register value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Esr(pub u64);

impl Esr {
    /// The syndrome of class `ec` with `ISS` `iss` (bits 24:0 kept), for a 32-bit instruction
    /// if `il`.
    #[must_use]
    #[inline]
    pub const fn new(ec: Ec, il: bool, iss: u32) -> Self {
        let il = if il { IL } else { 0 };
        Self(((ec.bits() as u64) << 26) | il | (iss as u64 & 0x1ff_ffff))
    }

    /// The exception class.
    #[must_use]
    #[inline(always)]
    pub const fn ec(self) -> Ec {
        Ec::from_bits((self.0 >> 26) as u8)
    }

    /// The raw 6-bit `EC` field.
    #[must_use]
    #[inline]
    pub const fn ec_bits(self) -> u8 {
        ((self.0 >> 26) & 0x3f) as u8
    }

    /// `IL`: the instruction that caused it was 32 bits (false: a 16-bit T32 instruction).
    #[must_use]
    #[inline]
    pub const fn il(self) -> bool {
        self.0 & IL != 0
    }

    /// Length in bytes of the instruction the syndrome describes (4, or 2 for 16-bit T32).
    #[must_use]
    #[inline]
    pub const fn insn_len(self) -> u64 {
        if self.il() { 4 } else { 2 }
    }

    /// The fault status code (`ISS` bits 5:0) of an abort syndrome.
    #[must_use]
    #[inline]
    pub const fn fsc(self) -> u8 {
        (self.0 & 0x3f) as u8
    }

    /// `ISS`, bits 24:0.
    #[must_use]
    #[inline]
    pub const fn iss(self) -> u32 {
        (self.0 & 0x1ff_ffff) as u32
    }

    /// The syndrome of a data abort ([`Ec::DabtLow`] or [`Ec::DabtCur`]), else `None`.
    #[must_use]
    #[inline]
    pub const fn data_abort(self) -> Option<DataAbort> {
        match self.ec() {
            Ec::DabtLow | Ec::DabtCur => Some(DataAbort::from_iss(self.iss())),
            _ => None,
        }
    }

    /// The fault status class of an instruction or data abort (`DFSC`/`IFSC` bits 5:2).
    #[must_use]
    #[inline]
    pub const fn fault_class(self) -> FaultClass {
        FaultClass::from_fsc(self.fsc())
    }
}

/// What kind of fault an abort's status code (`DFSC`/`IFSC`) reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultClass {
    /// Address size fault (0b0000xx).
    AddressSize,
    /// Translation fault (0b0001xx): `HPFAR_EL2` is valid for a stage-2 fault.
    Translation,
    /// Access flag fault (0b0010xx): `HPFAR_EL2` is valid.
    AccessFlag,
    /// Permission fault (0b0011xx): `HPFAR_EL2` is valid.
    Permission,
    /// Anything else: external aborts, alignment, TLB conflict, ...
    Other,
}

impl FaultClass {
    /// Classifies a 6-bit fault status code.
    #[must_use]
    #[inline]
    pub const fn from_fsc(fsc: u8) -> Self {
        match (fsc & 0x3f) >> 2 {
            0 => FaultClass::AddressSize,
            1 => FaultClass::Translation,
            2 => FaultClass::AccessFlag,
            3 => FaultClass::Permission,
            _ => FaultClass::Other,
        }
    }

    /// Whether `HPFAR_EL2` holds the faulting IPA for a stage-2 abort of this class.
    #[must_use]
    #[inline]
    pub const fn hpfar_valid(self) -> bool {
        matches!(
            self,
            FaultClass::Translation | FaultClass::AccessFlag | FaultClass::Permission
        )
    }
}

/// The faulting IPA of a stage-2 abort: `HPFAR_EL2.FIPA` (bits 47:4, the IPA's bits 51:12)
/// gives the page, `FAR_EL2` the offset inside it.
#[must_use]
#[inline]
pub const fn fault_ipa(hpfar: u64, far: u64) -> Ipa {
    Ipa(((hpfar >> 4) << 12) | (far & 0xfff))
}

/// `DFSC` of a synchronous external abort not on a table walk: what EL2 injects.
pub const FSC_SEA: u64 = 0b01_0000;

/// The instruction-specific syndrome of a trapped `MSR`/`MRS`/system instruction (`ISS` for
/// EC 0x18): the register's encoding, the transfer register and the direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SysregAccess {
    /// `Op0` (2: debug registers, 3: the others; 1: a system instruction).
    pub op0: u8,
    /// `Op1`.
    pub op1: u8,
    /// `CRn`.
    pub crn: u8,
    /// `CRm`.
    pub crm: u8,
    /// `Op2`.
    pub op2: u8,
    /// `Rt`: the transfer register (31 = `xzr`).
    pub rt: u8,
    /// `Direction`: an `MRS` (a read), else an `MSR` (a write).
    pub read: bool,
}

impl SysregAccess {
    /// Decodes an EC 0x18 `ISS`.
    #[must_use]
    #[inline]
    pub const fn from_iss(iss: u32) -> Self {
        SysregAccess {
            op0: ((iss >> 20) & 3) as u8,
            op2: ((iss >> 17) & 7) as u8,
            op1: ((iss >> 14) & 7) as u8,
            crn: ((iss >> 10) & 0xf) as u8,
            rt: ((iss >> 5) & 0x1f) as u8,
            crm: ((iss >> 1) & 0xf) as u8,
            read: iss & 1 != 0,
        }
    }

    /// Encodes the `ISS` (the inverse of [`SysregAccess::from_iss`]; fields truncated to their
    /// width).
    #[must_use]
    #[inline]
    pub const fn iss(&self) -> u32 {
        ((self.op0 as u32 & 3) << 20)
            | ((self.op2 as u32 & 7) << 17)
            | ((self.op1 as u32 & 7) << 14)
            | ((self.crn as u32 & 0xf) << 10)
            | ((self.rt as u32 & 0x1f) << 5)
            | ((self.crm as u32 & 0xf) << 1)
            | self.read as u32
    }

    /// A debug register (`Op0` = 2: breakpoints, watchpoints, `MDSCR_EL1`, the OS lock, the
    /// debug communication channel, ...).
    #[must_use]
    #[inline]
    pub const fn is_debug(&self) -> bool {
        self.op0 == 2
    }

    /// A PMUv3 register: `PMCR_EL0` .. `PMOVSSET_EL0` (`Op1` = 3, `CRn` = 9, `CRm` 12..=14),
    /// the event counters and types (`Op1` = 3, `CRn` = 14, `CRm` 8..=15), `PMINTENSET_EL1`,
    /// `PMINTENCLR_EL1` and `PMMIR_EL1` (`Op1` = 0, `CRn` = 9, `CRm` = 14).
    #[must_use]
    #[inline]
    pub const fn is_pmu(&self) -> bool {
        self.op0 == 3
            && ((self.op1 == 3 && self.crn == 9 && self.crm >= 12 && self.crm <= 14)
                || (self.op1 == 3 && self.crn == 14 && self.crm >= 8)
                || (self.op1 == 0 && self.crn == 9 && self.crm == 14))
    }
}

/// The instruction-specific syndrome of a data abort (`ISS` for EC 0x24/0x25).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DataAbort {
    /// `ISV`: the fields `sas`..`ar` are valid (a single load or store of one register).
    pub isv: bool,
    /// `SAS`: access size, log2 bytes (0..=3).
    pub sas: u8,
    /// `SSE`: a load whose value is sign-extended.
    pub sse: bool,
    /// `SRT`: the transfer register (31 = `xzr`/`wzr`).
    pub srt: u8,
    /// `SF`: the transfer register is 64 bits wide (else 32: the upper half is zeroed).
    pub sf: bool,
    /// `AR`: acquire/release semantics.
    pub ar: bool,
    /// `FnV`: `FAR` is not valid.
    pub fnv: bool,
    /// `EA`: external abort type.
    pub ea: bool,
    /// `CM`: the fault came from a cache-maintenance or address-translation instruction.
    pub cm: bool,
    /// `S1PTW`: the fault was on a stage-2 access made by a stage-1 table walk.
    pub s1ptw: bool,
    /// `WnR`: a write (or a read-modify-write).
    pub wnr: bool,
    /// `DFSC`: the fault status code.
    pub dfsc: u8,
}

impl DataAbort {
    /// Decodes a data-abort `ISS`.
    #[must_use]
    #[inline]
    pub const fn from_iss(iss: u32) -> Self {
        DataAbort {
            isv: iss & (1 << 24) != 0,
            sas: ((iss >> 22) & 3) as u8,
            sse: iss & (1 << 21) != 0,
            srt: ((iss >> 16) & 0x1f) as u8,
            sf: iss & (1 << 15) != 0,
            ar: iss & (1 << 14) != 0,
            fnv: iss & (1 << 10) != 0,
            ea: iss & (1 << 9) != 0,
            cm: iss & (1 << 8) != 0,
            s1ptw: iss & (1 << 7) != 0,
            wnr: iss & (1 << 6) != 0,
            dfsc: (iss & 0x3f) as u8,
        }
    }

    /// Encodes the `ISS` (the inverse of [`DataAbort::from_iss`]; out-of-range fields are
    /// truncated to their width).
    #[must_use]
    #[inline]
    pub const fn iss(&self) -> u32 {
        const fn bit(b: bool, n: u32) -> u32 {
            (b as u32) << n
        }
        bit(self.isv, 24)
            | ((self.sas as u32 & 3) << 22)
            | bit(self.sse, 21)
            | ((self.srt as u32 & 0x1f) << 16)
            | bit(self.sf, 15)
            | bit(self.ar, 14)
            | bit(self.fnv, 10)
            | bit(self.ea, 9)
            | bit(self.cm, 8)
            | bit(self.s1ptw, 7)
            | bit(self.wnr, 6)
            | (self.dfsc as u32 & 0x3f)
    }

    /// Access size in bytes.
    #[must_use]
    #[inline]
    pub const fn size(&self) -> u8 {
        1 << self.sas
    }

    /// The access a trap-and-emulate path can carry out: a plain single-register load or
    /// store with a valid syndrome, not from a table walk or a cache-maintenance instruction.
    #[must_use]
    #[inline]
    pub const fn is_emulatable(&self) -> bool {
        self.isv && !self.s1ptw && !self.cm
    }

    /// The register value a load of `raw` (the `size()`-byte value read) leaves in `SRT`:
    /// sign-extended if `SSE`, truncated to 32 bits unless `SF`.
    #[must_use]
    #[inline]
    pub const fn load_value(&self, raw: u64) -> u64 {
        let bits = 8 * self.size() as u32;
        let mut v = if bits >= 64 {
            raw
        } else {
            raw & ((1u64 << bits) - 1)
        };
        if self.sse && bits < 64 && v & (1 << (bits - 1)) != 0 {
            v |= !((1u64 << bits) - 1);
        }
        if !self.sf {
            v &= 0xffff_ffff;
        }
        v
    }

    /// The bytes a store of register value `reg` writes (its low `size()` bytes).
    #[must_use]
    #[inline]
    pub const fn store_value(&self, reg: u64) -> u64 {
        let bits = 8 * self.size() as u32;
        if bits >= 64 {
            reg
        } else {
            reg & ((1u64 << bits) - 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_classes_round_trip() {
        for v in 0u8..64 {
            let ec = Ec::from_bits(v);
            if !matches!(ec, Ec::Aarch32Sysreg) {
                assert_eq!(ec.bits(), v, "{ec:?}");
            }
        }
        assert_eq!(Esr(0x5a00_0000).ec(), Ec::Hvc64);
        assert_eq!(Esr(0x6200_0000).ec(), Ec::Sysreg64);
        assert_eq!(Esr(0x6200_0000).insn_len(), 4);
        assert_eq!(Esr(0x0c00_0000).ec(), Ec::Aarch32Sysreg);
        assert_eq!(Esr(0x0c00_0000).insn_len(), 2);
        let e = Esr::new(Ec::DabtLow, true, 0x1f0_0010 | 0xfe00_0000);
        assert_eq!((e.ec(), e.il(), e.iss()), (Ec::DabtLow, true, 0x1f0_0010));
        assert_eq!(Esr::new(Ec::Hvc64, true, 0), Esr(0x5a00_0000 | IL));
        assert_eq!(Esr::new(Ec::Unknown, false, 0).0, 0);
    }

    #[test]
    fn data_abort_iss_round_trips() {
        for iss in [0u32, 0x1ff_ffff, 0x1c5_8047, 0x93_0007, 0x1_4000] {
            // Bits 13:11 (VNCR, SET) are not decoded.
            assert_eq!(DataAbort::from_iss(iss).iss(), iss & !0x3800, "{iss:#x}");
        }
    }

    #[test]
    fn stage2_fault_ipa() {
        assert_eq!(
            fault_ipa(0x0008_0a00 << 4 >> 4 << 4, 0x1234_5678),
            Ipa(0x80a0_0678)
        );
        assert_eq!(
            fault_ipa(0x4_0000_0000 >> 8, 0xfff),
            Ipa((0x4_0000_0000 >> 12 << 12) | 0xfff)
        );
    }

    #[test]
    fn data_abort_syndrome() {
        // ldr w3, [x1]: ISV, SAS=2 (4 bytes), SRT=3, SF=0, translation fault level 3, read.
        let esr = Esr((0x24 << 26) | IL | (1 << 24) | (2 << 22) | (3 << 16) | 0b00_0111);
        let d = esr.data_abort().unwrap();
        assert!(d.isv && !d.wnr && !d.sf && d.is_emulatable());
        assert_eq!((d.size(), d.srt), (4, 3));
        assert_eq!(esr.fault_class(), FaultClass::Translation);
        assert!(esr.fault_class().hpfar_valid());
        // 32-bit load: upper half zero; signed byte load into x: sign-extended.
        assert_eq!(d.load_value(0xdead_beef_8000_0001), 0x8000_0001);
        let ldrsb = DataAbort {
            isv: true,
            sas: 0,
            sse: true,
            sf: true,
            ..DataAbort::default()
        };
        assert_eq!(ldrsb.load_value(0x80), 0xffff_ffff_ffff_ff80);
        assert_eq!(ldrsb.load_value(0x7f), 0x7f);
        let ldrsh_w = DataAbort {
            sas: 1,
            sse: true,
            sf: false,
            ..ldrsb
        };
        assert_eq!(ldrsh_w.load_value(0x8000), 0xffff_8000);
        assert_eq!(ldrsb.store_value(0x1234), 0x34);
        // A table-walk fault or a CMO is never emulated.
        let walk = DataAbort::from_iss((1 << 24) | (1 << 7));
        assert!(!walk.is_emulatable());
        assert!(!DataAbort::from_iss(0).is_emulatable());
        assert_eq!(Esr(0x24 << 26 | 0x10).fault_class(), FaultClass::Other);
        assert_eq!(Esr(0x16 << 26).data_abort(), None);
    }

    #[test]
    fn sysreg_syndromes_decode_and_classify() {
        let a = |op0, op1, crn, crm, op2| SysregAccess {
            op0,
            op1,
            crn,
            crm,
            op2,
            rt: 7,
            read: true,
        };
        // `mrs x7, pmcr_el0`: as a CPU reports it (Op0 3, Op2 0, Op1 3, CRn 9, Rt 7, CRm 12).
        let iss = (3 << 20) | (3 << 14) | (9 << 10) | (7 << 5) | (12 << 1) | 1;
        assert_eq!(SysregAccess::from_iss(iss), a(3, 3, 9, 12, 0));
        assert_eq!(a(3, 3, 9, 12, 0).iss(), iss);
        let mdscr = SysregAccess {
            read: false,
            rt: 1,
            ..a(2, 0, 0, 2, 2)
        };
        assert_eq!(SysregAccess::from_iss(mdscr.iss()), mdscr);
        assert!(mdscr.is_debug() && !mdscr.is_pmu());
        for pmu in [
            a(3, 3, 9, 12, 0),  // PMCR_EL0
            a(3, 3, 9, 13, 0),  // PMCCNTR_EL0
            a(3, 3, 9, 14, 0),  // PMUSERENR_EL0
            a(3, 3, 14, 8, 0),  // PMEVCNTR0_EL0
            a(3, 3, 14, 15, 7), // PMCCFILTR_EL0
            a(3, 0, 9, 14, 1),  // PMINTENSET_EL1
        ] {
            assert!(pmu.is_pmu() && !pmu.is_debug(), "{pmu:?}");
        }
        for other in [
            a(3, 0, 1, 0, 1),  // ACTLR_EL1
            a(3, 3, 14, 3, 1), // CNTV_CTL_EL0: CRn 14 too, but a timer register
            a(3, 3, 14, 0, 1), // CNTPCT_EL0
            a(3, 3, 13, 2, 0), // AMCNTENCLR0_EL0
            a(3, 0, 9, 9, 0),  // PMSCR_EL1 (SPE), not PMUv3
            a(1, 0, 7, 6, 2),  // DC ISW: a system instruction
        ] {
            assert!(!other.is_pmu() && !other.is_debug(), "{other:?}");
        }
    }
}
