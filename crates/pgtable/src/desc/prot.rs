//! The portable [`Prot`] and its encoding per [`Format`]: the leaf attribute bits for a `Prot`
//! ([`Format::leaf_attrs`], looked up in a table built at compile time by a field-by-field
//! encoder), whole leaf descriptors ([`Format::leaf_pte`]) and the decoding of a descriptor's
//! attributes back into a `Prot` ([`Format::pte_prot`]).

use super::{
    LEAF_LEVEL, MAIR_IDX_DEVICE_NGNRE, MAIR_IDX_NORMAL, PA_BITS, PTE_AF, PTE_SH_INNER, PTE_SW_MASK,
    PTE_TYPE, PTE_VALID, PTE_XN, S1_AP_RES1, S1_AP_RO, S1_ATTRINDX_MASK, S1_ATTRINDX_SHIFT,
    S2_MEMATTR_DEVICE_NGNRE, S2_MEMATTR_MASK, S2_MEMATTR_NORMAL_WB, S2_MEMATTR_SHIFT, S2AP_R,
    S2AP_W, granule, is_valid,
};
use crate::{Error, Format};

bitflags::bitflags! {
    /// Portable permissions and attributes of a mapping.
    ///
    /// `R`, `W`, `X` are the access permissions, `DEVICE` selects Device-nGnRE instead of normal
    /// write-back memory, and `SW0..=SW3` are the descriptor's software bits (they *are* PTE bits
    /// 55..=58, so they pass through the encoders unchanged).
    ///
    /// Valid combinations: any, except `X | DEVICE` (both formats), and for the EL2 stage-1 `R`
    /// is required and `W | X` is refused (W^X). Anything else gives [`Error::InvalidProt`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct Prot: u64 {
        /// Executable.
        const X = 1 << 0;
        /// Writable.
        const W = 1 << 1;
        /// Readable.
        const R = 1 << 2;
        /// Device-nGnRE memory (otherwise normal write-back memory).
        const DEVICE = 1 << 3;
        /// Software bit 0 (PTE bit 55).
        const SW0 = 1 << 55;
        /// Software bit 1 (PTE bit 56).
        const SW1 = 1 << 56;
        /// Software bit 2 (PTE bit 57).
        const SW2 = 1 << 57;
        /// Software bit 3 (PTE bit 58).
        const SW3 = 1 << 58;
    }
}

impl Prot {
    /// Read/write.
    pub const RW: Prot = Prot::R.union(Prot::W);
    /// Read/execute.
    pub const RX: Prot = Prot::R.union(Prot::X);
    /// Read/write/execute (stage-2 only; W^X forbids it at EL2 stage-1).
    pub const RWX: Prot = Prot::RW.union(Prot::X);
    /// Mask of the software bits.
    pub const SW_MASK: Prot = Prot::SW0.union(Prot::SW1).union(Prot::SW2).union(Prot::SW3);

    /// Only the software bits of `self`.
    #[inline]
    #[must_use]
    pub const fn sw(self) -> Prot {
        self.intersection(Prot::SW_MASK)
    }
}

impl Format {
    /// Checks that `prot` is a valid combination for this format.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidProt`] for unknown bits, `X | DEVICE`, and at EL2 stage-1 a missing `R`
    /// or `W | X`.
    #[inline]
    pub const fn check_prot(self, prot: Prot) -> Result<(), Error> {
        let p = prot.bits();
        if p & !Prot::all().bits() != 0 {
            return Err(Error::InvalidProt);
        }
        if prot.contains(Prot::X) && prot.contains(Prot::DEVICE) {
            return Err(Error::InvalidProt);
        }
        if let Format::Stage1El2 = self
            && (!prot.contains(Prot::R) || prot.contains(Prot::W.union(Prot::X)))
        {
            return Err(Error::InvalidProt);
        }
        Ok(())
    }

    /// Attribute bits of a leaf descriptor mapping with `prot` (no valid/type bits, no address).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidProt`] as for [`Format::check_prot`].
    #[inline]
    pub const fn leaf_attrs(self, prot: Prot) -> Result<u64, Error> {
        // A table lookup on R/W/X/DEVICE (what `encode_attrs` computes), plus the SW bits.
        let p = prot.bits();
        if p & !Prot::all().bits() != 0 {
            return Err(Error::InvalidProt);
        }
        let table = match self {
            Format::Stage1El2 => &S1_ATTRS,
            Format::Stage2 { .. } => &S2_ATTRS,
        };
        let a = table[(p & 0xf) as usize];
        if a == NO_ATTRS {
            return Err(Error::InvalidProt);
        }
        Ok(a | (p & PTE_SW_MASK))
    }

    /// [`Format::leaf_attrs`] computed field by field (used to build the lookup tables).
    const fn encode_attrs(self, prot: Prot) -> Result<u64, Error> {
        if let Err(e) = self.check_prot(prot) {
            return Err(e);
        }
        let sw = prot.bits() & PTE_SW_MASK;
        let xn = if prot.contains(Prot::X) { 0 } else { PTE_XN };
        let device = prot.contains(Prot::DEVICE);
        let attrs = match self {
            Format::Stage1El2 => {
                let idx = if device {
                    MAIR_IDX_DEVICE_NGNRE
                } else {
                    MAIR_IDX_NORMAL
                } as u64;
                let ro = if prot.contains(Prot::W) { 0 } else { S1_AP_RO };
                (idx << S1_ATTRINDX_SHIFT) | S1_AP_RES1 | ro
            }
            Format::Stage2 { .. } => {
                let memattr = if device {
                    S2_MEMATTR_DEVICE_NGNRE
                } else {
                    S2_MEMATTR_NORMAL_WB
                };
                let r = if prot.contains(Prot::R) { S2AP_R } else { 0 };
                let w = if prot.contains(Prot::W) { S2AP_W } else { 0 };
                (memattr << S2_MEMATTR_SHIFT) | r | w
            }
        };
        Ok(attrs | PTE_SH_INNER | PTE_AF | xn | sw)
    }

    /// A valid leaf descriptor at `level` (page at L3, block at L1/L2) mapping `pa` with `prot`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidProt`] as for [`Format::check_prot`]; [`Error::Misaligned`] if `pa` is not
    /// aligned to the level's granule or `level` cannot hold a leaf (L0, or above L3);
    /// [`Error::OutOfRange`] if `pa` does not fit in [`PA_BITS`] bits.
    #[inline]
    pub const fn leaf_pte(self, pa: u64, prot: Prot, level: u8) -> Result<u64, Error> {
        if level == 0 || level > LEAF_LEVEL || pa & (granule(level) - 1) != 0 {
            return Err(Error::Misaligned);
        }
        if pa >> PA_BITS != 0 {
            return Err(Error::OutOfRange);
        }
        let attrs = match self.leaf_attrs(prot) {
            Ok(a) => a,
            Err(e) => return Err(e),
        };
        let ty = if level == LEAF_LEVEL { PTE_TYPE } else { 0 };
        Ok(pa | attrs | PTE_VALID | ty)
    }

    /// The [`Prot`] a descriptor grants: R/W/X/DEVICE and the software bits for a valid leaf,
    /// only the software bits for an invalid entry (as upstream's `*_pte_prot`).
    ///
    /// Stage-1: every valid EL2 leaf is readable; W unless AP\[2\]; DEVICE when AttrIndx is
    /// [`MAIR_IDX_DEVICE_NGNRE`]. Stage-2: R and W from S2AP; DEVICE when MemAttr\[3:2\] = 0b00
    /// (any Device type).
    #[inline]
    #[must_use]
    pub const fn pte_prot(self, pte: u64) -> Prot {
        let mut p = Prot::from_bits_retain(pte & PTE_SW_MASK);
        if !is_valid(pte) {
            return p;
        }
        if pte & PTE_XN == 0 {
            p = p.union(Prot::X);
        }
        match self {
            Format::Stage1El2 => {
                p = p.union(Prot::R);
                if pte & S1_AP_RO == 0 {
                    p = p.union(Prot::W);
                }
                if (pte & S1_ATTRINDX_MASK) >> S1_ATTRINDX_SHIFT == MAIR_IDX_DEVICE_NGNRE as u64 {
                    p = p.union(Prot::DEVICE);
                }
            }
            Format::Stage2 { .. } => {
                if pte & S2AP_R != 0 {
                    p = p.union(Prot::R);
                }
                if pte & S2AP_W != 0 {
                    p = p.union(Prot::W);
                }
                if (pte & S2_MEMATTR_MASK) >> S2_MEMATTR_SHIFT & 0b1100 == 0 {
                    p = p.union(Prot::DEVICE);
                }
            }
        }
        p
    }
}

/// Marks an invalid R/W/X/DEVICE combination in the attribute tables.
const NO_ATTRS: u64 = u64::MAX;

/// Leaf attributes per R/W/X/DEVICE combination (`Prot` bits 3:0) for `format`.
const fn attrs_table(format: Format) -> [u64; 16] {
    let mut t = [NO_ATTRS; 16];
    let mut i = 0;
    while i < 16 {
        if let Ok(a) = format.encode_attrs(Prot::from_bits_retain(i as u64)) {
            t[i] = a;
        }
        i += 1;
    }
    t
}

static S1_ATTRS: [u64; 16] = attrs_table(Format::Stage1El2);
static S2_ATTRS: [u64; 16] = attrs_table(Format::Stage2 { vmid: 0 });

#[cfg(test)]
mod tests {
    use super::super::{is_valid_leaf, output_address, owner_pte};
    use super::*;

    const S1: Format = Format::Stage1El2;
    const S2: Format = Format::Stage2 { vmid: 3 };

    /// Builds a descriptor from named Arm ARM fields, independently of the encoder.
    #[allow(clippy::too_many_arguments)]
    fn fields(
        pa: u64,
        page: bool,
        attr_lo_5_2: u64,
        ap_or_s2ap: u64,
        sh: u64,
        af: bool,
        xn: bool,
        sw: u64,
    ) -> u64 {
        let mut d = 1 | (u64::from(page) << 1);
        d |= attr_lo_5_2 << 2;
        d |= ap_or_s2ap << 6;
        d |= sh << 8;
        d |= u64::from(af) << 10;
        d |= pa;
        d |= u64::from(xn) << 54;
        d |= sw << 55;
        d
    }

    #[test]
    fn stage1_encodings() {
        let pa = 0x4000_0000;
        // RW normal page: AttrIndx 0, AP = 0b01, SH = 0b11, AF, XN.
        let rw = S1.leaf_pte(pa, Prot::RW, 3).unwrap();
        assert_eq!(rw, fields(pa, true, 0, 0b01, 0b11, true, true, 0));
        assert_eq!(rw, 0x0040_0000_4000_0743);
        // RO page: AP = 0b11.
        let ro = S1.leaf_pte(pa, Prot::R, 3).unwrap();
        assert_eq!(ro, fields(pa, true, 0, 0b11, 0b11, true, true, 0));
        assert_eq!(ro, 0x0040_0000_4000_07c3);
        // RX page: AP = 0b11, no XN.
        let rx = S1.leaf_pte(pa, Prot::RX, 3).unwrap();
        assert_eq!(rx, fields(pa, true, 0, 0b11, 0b11, true, false, 0));
        assert_eq!(rx, 0x0000_0000_4000_07c3);
        // RW device page: AttrIndx 1.
        let dev = S1
            .leaf_pte(0x0900_0000, Prot::RW | Prot::DEVICE, 3)
            .unwrap();
        assert_eq!(dev, fields(0x0900_0000, true, 1, 0b01, 0b11, true, true, 0));
        assert_eq!(dev, 0x0040_0000_0900_0747);
        // 2 MiB block: type bit clear.
        let blk = S1.leaf_pte(0x8020_0000, Prot::RW, 2).unwrap();
        assert_eq!(
            blk,
            fields(0x8020_0000, false, 0, 0b01, 0b11, true, true, 0)
        );
        assert_eq!(blk, 0x0040_0000_8020_0741);
        // 1 GiB block with software bits 0 and 3.
        let sw = S1
            .leaf_pte(0x1_4000_0000, Prot::R | Prot::SW0 | Prot::SW3, 1)
            .unwrap();
        assert_eq!(
            sw,
            fields(0x1_4000_0000, false, 0, 0b11, 0b11, true, true, 0b1001)
        );
        assert_eq!(sw, 0x04c0_0001_4000_07c1);
    }

    #[test]
    fn stage2_encodings() {
        let pa = 0x8000_0000;
        // RWX normal page: MemAttr 0b1111, S2AP 0b11, SH 0b11, AF, no XN.
        let rwx = S2.leaf_pte(pa, Prot::RWX, 3).unwrap();
        assert_eq!(rwx, fields(pa, true, 0b1111, 0b11, 0b11, true, false, 0));
        assert_eq!(rwx, 0x0000_0000_8000_07ff);
        // R only: S2AP 0b01, XN.
        let r = S2.leaf_pte(pa, Prot::R, 3).unwrap();
        assert_eq!(r, fields(pa, true, 0b1111, 0b01, 0b11, true, true, 0));
        assert_eq!(r, 0x0040_0000_8000_077f);
        // W only: S2AP 0b10.
        let w = S2.leaf_pte(pa, Prot::W, 3).unwrap();
        assert_eq!(w, 0x0040_0000_8000_07bf);
        // No access at all is a valid stage-2 mapping (S2AP 0b00).
        let none = S2.leaf_pte(pa, Prot::empty(), 3).unwrap();
        assert_eq!(none, 0x0040_0000_8000_073f);
        // RW device 2 MiB block: MemAttr 0b0001.
        let dev = S2
            .leaf_pte(0x0800_0000 + 0x20_0000, Prot::RW | Prot::DEVICE, 2)
            .unwrap();
        assert_eq!(
            dev,
            fields(0x0820_0000, false, 0b0001, 0b11, 0b11, true, true, 0)
        );
        assert_eq!(dev, 0x0040_0000_0820_07c5);
        // SW bits pass through.
        let sw = S2
            .leaf_pte(pa, Prot::RW | Prot::SW1 | Prot::SW2, 1)
            .unwrap();
        assert_eq!(sw, 0x0340_0000_8000_07fd);
    }

    #[test]
    fn lookup_tables_match_the_field_encoder() {
        for f in [S1, S2] {
            for bits in 0..16u64 {
                for sw in [0, 1 << 55, 0xf << 55] {
                    let p = Prot::from_bits_retain(bits | sw);
                    assert_eq!(f.leaf_attrs(p), f.encode_attrs(p), "{f:?} {p:?}");
                }
            }
        }
    }

    #[test]
    fn invalid_prots() {
        for f in [S1, S2] {
            assert_eq!(
                f.leaf_attrs(Prot::RX | Prot::DEVICE),
                Err(Error::InvalidProt)
            );
            assert_eq!(
                f.leaf_attrs(Prot::from_bits_retain(1 << 20)),
                Err(Error::InvalidProt)
            );
        }
        assert_eq!(S1.leaf_attrs(Prot::RWX), Err(Error::InvalidProt));
        assert_eq!(S1.leaf_attrs(Prot::W), Err(Error::InvalidProt));
        assert_eq!(S1.leaf_attrs(Prot::X), Err(Error::InvalidProt));
        assert_eq!(S1.leaf_attrs(Prot::empty()), Err(Error::InvalidProt));
        assert!(S2.leaf_attrs(Prot::RWX).is_ok());
        assert!(S2.leaf_attrs(Prot::W).is_ok());
        assert!(S2.leaf_attrs(Prot::empty()).is_ok());
    }

    #[test]
    fn leaf_pte_argument_checks() {
        assert_eq!(S1.leaf_pte(0x1000, Prot::R, 0), Err(Error::Misaligned));
        assert_eq!(S1.leaf_pte(0x1000, Prot::R, 2), Err(Error::Misaligned));
        assert_eq!(S1.leaf_pte(0x1800, Prot::R, 3), Err(Error::Misaligned));
        assert_eq!(S1.leaf_pte(1 << 48, Prot::R, 3), Err(Error::OutOfRange));
    }

    #[test]
    fn decode_roundtrip_all_valid_prots() {
        let sw_combos = [
            Prot::empty(),
            Prot::SW0,
            Prot::SW1 | Prot::SW3,
            Prot::SW_MASK,
        ];
        for f in [S1, S2] {
            for bits in 0..16u64 {
                for sw in sw_combos {
                    let prot = Prot::from_bits_retain(bits) | sw;
                    for level in 1..=3 {
                        let pa = granule(level) * 5;
                        match f.leaf_pte(pa, prot, level) {
                            Ok(pte) => {
                                assert_eq!(output_address(pte), pa);
                                assert!(is_valid_leaf(pte, level));
                                let mut want = prot;
                                if f == S1 {
                                    want |= Prot::R;
                                }
                                assert_eq!(f.pte_prot(pte), want, "{f:?} {prot:?} {pte:#x}");
                            }
                            Err(e) => {
                                assert_eq!(e, Error::InvalidProt);
                                assert!(f.check_prot(prot).is_err());
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn decode_invalid_gives_sw_only() {
        assert_eq!(S2.pte_prot(owner_pte(5)), Prot::empty());
        assert_eq!(S2.pte_prot(1 << 55), Prot::SW0);
        assert_eq!(S1.pte_prot(0), Prot::empty());
    }

    #[test]
    fn decode_foreign_attributes() {
        // Stage-2 Device-nGnRnE (MemAttr 0b0000) and Device-GRE (0b0011) decode as DEVICE;
        // normal non-cacheable (0b0101) does not.
        let base = 0x1000 | 0b11 | S2AP_R | PTE_AF;
        assert!(S2.pte_prot(base).contains(Prot::DEVICE));
        assert!(S2.pte_prot(base | (0b0011 << 2)).contains(Prot::DEVICE));
        assert!(!S2.pte_prot(base | (0b0101 << 2)).contains(Prot::DEVICE));
        // Stage-1 AttrIndx 2 is not the device index.
        let s1 = 0x1000 | 0b11 | S1_AP_RES1 | PTE_AF | (2 << 2);
        assert_eq!(S1.pte_prot(s1), Prot::RWX);
    }
}
