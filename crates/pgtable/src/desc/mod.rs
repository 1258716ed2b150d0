//! VMSAv8-64 descriptor layout for the 4 KiB granule: field positions, geometry, descriptor
//! predicates and builders, owner annotations.
//!
//! The portable [`Prot`] and its encoding per [`Format`](crate::Format)
//! ([`Format::leaf_attrs`](crate::Format::leaf_attrs),
//! [`Format::pte_prot`](crate::Format::pte_prot), ...) live in `desc/prot.rs`.
//!
//! Field positions follow the Arm ARM (DDI 0487, "VMSAv8-64 translation table format
//! descriptors"):
//!
//! | bits    | table (L0–L2)     | block (L1–L2) / page (L3), stage-1 EL2 | stage-2            |
//! |---------|-------------------|----------------------------------------|--------------------|
//! | 0       | valid             | valid                                  | valid              |
//! | 1       | 1 = table         | 0 = block (L1–L2), 1 = page (L3)       | same               |
//! | 4:2     |                   | AttrIndx (MAIR_EL2 index)              | MemAttr\[3:0\] (5:2) |
//! | 7:6     |                   | AP\[2:1\]: bit 7 = read-only, bit 6 RES1 | S2AP: 6 = R, 7 = W |
//! | 9:8     |                   | SH (3 = inner shareable)               | SH                 |
//! | 10      |                   | AF                                     | AF                 |
//! | 47:12   | next-level table  | output address                         | output address     |
//! | 54      |                   | XN                                     | XN                 |
//! | 58:55   |                   | software bits (ignored by hardware)    | same               |
//!
//! An invalid entry (bit 0 clear) of a stage-2 table may carry an *owner annotation*: the owner
//! id in bits \[9:2\]; owner 0 is the all-zero entry.

mod prot;

pub use prot::Prot;

/// log2 of the granule (and page) size.
pub const PAGE_SHIFT: u32 = 12;
/// Page (granule) size: 4 KiB.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Entries in a table page.
pub const PTES_PER_TABLE: u64 = 512;
/// Level of page (last-level) descriptors.
pub const LEAF_LEVEL: u8 = 3;
/// Output (physical) address size supported by the descriptors built here.
pub const PA_BITS: u32 = 48;

/// Descriptor bit 0: valid.
pub const PTE_VALID: u64 = 1 << 0;
/// Descriptor bit 1: table (at L0–L2) or page (at L3); clear for a block.
pub const PTE_TYPE: u64 = 1 << 1;
/// Output address / next-level table address, bits \[47:12\].
pub const PTE_OA_MASK: u64 = 0x0000_ffff_ffff_f000;
/// Access flag (bit 10). Always set: hardware AF management is not used.
pub const PTE_AF: u64 = 1 << 10;
/// Shareability (bits \[9:8\]) inner shareable (SH = 0b11).
pub const PTE_SH_INNER: u64 = 3 << 8;
/// Execute-never (bit 54; for the EL2 stage-1 this is XN, for stage-2 XN\[1\] without FEAT_XNX).
pub const PTE_XN: u64 = 1 << 54;
/// Software bits \[58:55\], ignored by hardware.
pub const PTE_SW_MASK: u64 = 0xf << 55;

/// Stage-1: AttrIndx field, bits \[4:2\].
pub const S1_ATTRINDX_SHIFT: u32 = 2;
/// Stage-1: mask of AttrIndx.
pub const S1_ATTRINDX_MASK: u64 = 7 << S1_ATTRINDX_SHIFT;
/// Stage-1: AP\[1\] (bit 6). In the EL2 (single privilege level) regime this bit is RES1, so
/// every EL2 leaf has it set: "RW" is AP\[2:1\] = 0b01 and "RO" is 0b11.
pub const S1_AP_RES1: u64 = 1 << 6;
/// Stage-1: AP\[2\] (bit 7), read-only.
pub const S1_AP_RO: u64 = 1 << 7;

/// MAIR_EL2 index used for normal memory (write-back cacheable).
pub const MAIR_IDX_NORMAL: u8 = 0;
/// MAIR_EL2 index used for device memory (Device-nGnRE).
pub const MAIR_IDX_DEVICE_NGNRE: u8 = 1;
/// MAIR attribute byte for normal memory: inner and outer write-back, read/write-allocate,
/// non-transient (0xff).
pub const MAIR_ATTR_NORMAL_WB: u8 = 0xff;
/// MAIR attribute byte for Device-nGnRE (0x04).
pub const MAIR_ATTR_DEVICE_NGNRE: u8 = 0x04;
/// The value the EL2 image must program into `MAIR_EL2` for the stage-1 descriptors built by
/// this crate: attribute [`MAIR_IDX_NORMAL`] = [`MAIR_ATTR_NORMAL_WB`], attribute
/// [`MAIR_IDX_DEVICE_NGNRE`] = [`MAIR_ATTR_DEVICE_NGNRE`], the others 0 (Device-nGnRnE, unused).
pub const MAIR_EL2_VALUE: u64 = ((MAIR_ATTR_NORMAL_WB as u64) << (8 * MAIR_IDX_NORMAL as u32))
    | ((MAIR_ATTR_DEVICE_NGNRE as u64) << (8 * MAIR_IDX_DEVICE_NGNRE as u32));

/// Stage-2: MemAttr field, bits \[5:2\] (without FEAT_S2FWB).
pub const S2_MEMATTR_SHIFT: u32 = 2;
/// Stage-2: mask of MemAttr.
pub const S2_MEMATTR_MASK: u64 = 0xf << S2_MEMATTR_SHIFT;
/// Stage-2 MemAttr for normal memory, outer and inner write-back (0b1111).
pub const S2_MEMATTR_NORMAL_WB: u64 = 0b1111;
/// Stage-2 MemAttr for Device-nGnRE (0b0001).
pub const S2_MEMATTR_DEVICE_NGNRE: u64 = 0b0001;
/// Stage-2: S2AP\[0\] (bit 6), read allowed.
pub const S2AP_R: u64 = 1 << 6;
/// Stage-2: S2AP\[1\] (bit 7), write allowed.
pub const S2AP_W: u64 = 1 << 7;

/// Owner annotation of an invalid stage-2 entry: bits \[9:2\].
pub const PTE_OWNER_SHIFT: u32 = 2;
/// Mask of the owner annotation.
pub const PTE_OWNER_MASK: u64 = 0xff << PTE_OWNER_SHIFT;
/// Largest owner id an annotation can hold.
pub const MAX_OWNER_ID: u32 = 0xff;

/// Bits of a leaf descriptor that are attributes (neither valid/type nor output address).
pub const PTE_LEAF_ATTR_MASK: u64 = !(PTE_OA_MASK | PTE_VALID | PTE_TYPE);

/// Shift of the input-address bits that index a table at `level` (L0 39, L1 30, L2 21, L3 12).
#[inline]
#[must_use]
pub const fn level_shift(level: u8) -> u32 {
    PAGE_SHIFT + 9 * (LEAF_LEVEL - level) as u32
}

/// Size of the input range one entry at `level` maps: L0 512 GiB, L1 1 GiB, L2 2 MiB, L3 4 KiB.
#[inline]
#[must_use]
pub const fn granule(level: u8) -> u64 {
    1 << level_shift(level)
}

/// Index of `addr` in a table at `level`.
#[inline]
#[must_use]
pub const fn table_index(addr: u64, level: u8) -> u64 {
    (addr >> level_shift(level)) & (PTES_PER_TABLE - 1)
}

/// Whether `pte` is valid.
#[inline]
#[must_use]
pub const fn is_valid(pte: u64) -> bool {
    pte & PTE_VALID != 0
}

/// Whether `pte`, found at `level`, points to a next-level table.
#[inline]
#[must_use]
pub const fn is_table(pte: u64, level: u8) -> bool {
    level != LEAF_LEVEL && pte & (PTE_VALID | PTE_TYPE) == PTE_VALID | PTE_TYPE
}

/// Whether `pte`, found at `level`, is a valid block or page (a valid leaf).
#[inline]
#[must_use]
pub const fn is_valid_leaf(pte: u64, level: u8) -> bool {
    is_valid(pte) && !is_table(pte, level)
}

/// Output address (or next-level table address) of `pte`.
#[inline]
#[must_use]
pub const fn output_address(pte: u64) -> u64 {
    pte & PTE_OA_MASK
}

/// Table descriptor pointing to the table page at `table_pa`.
#[inline]
#[must_use]
pub const fn table_pte(table_pa: u64) -> u64 {
    (table_pa & PTE_OA_MASK) | PTE_VALID | PTE_TYPE
}

/// The invalid stage-2 entry annotating "owned by `owner`" (owner 0 is the zero entry).
///
/// Only the low 8 bits of `owner` fit; callers check [`MAX_OWNER_ID`].
#[inline]
#[must_use]
pub const fn owner_pte(owner: u8) -> u64 {
    (owner as u64) << PTE_OWNER_SHIFT
}

/// The owner id an invalid stage-2 entry carries (0 for the zero entry), or `None` for a valid
/// entry.
#[inline]
#[must_use]
pub const fn pte_owner(pte: u64) -> Option<u8> {
    if is_valid(pte) {
        None
    } else {
        Some(((pte & PTE_OWNER_MASK) >> PTE_OWNER_SHIFT) as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `MAIR_EL2_VALUE` holds each attribute in the byte its index names, zero elsewhere.
    #[test]
    fn mair_bytes() {
        let byte = |i: u8| (MAIR_EL2_VALUE >> (8 * u32::from(i))) as u8;
        assert_eq!(byte(MAIR_IDX_NORMAL), MAIR_ATTR_NORMAL_WB);
        assert_eq!(byte(MAIR_IDX_DEVICE_NGNRE), MAIR_ATTR_DEVICE_NGNRE);
        let others = (0..8).filter(|&i| i != MAIR_IDX_NORMAL && i != MAIR_IDX_DEVICE_NGNRE);
        assert!(others.into_iter().all(|i| byte(i) == 0));
    }

    #[test]
    fn geometry() {
        assert_eq!(granule(0), 512 << 30);
        assert_eq!(granule(1), 1 << 30);
        assert_eq!(granule(2), 2 << 20);
        assert_eq!(granule(3), 4096);
        assert_eq!(table_index(0x0000_8040_2010_0000 | 0x3000, 0), 0x100);
        assert_eq!(table_index(0x0000_0000_4000_0000, 1), 1);
        assert_eq!(table_index(0x0000_0000_0060_0000, 2), 3);
        assert_eq!(table_index(0x0000_0000_0000_5fff, 3), 5);
    }

    #[test]
    fn mair_value() {
        // Attr0 = 0xff (normal WB), Attr1 = 0x04 (Device-nGnRE).
        assert_eq!(MAIR_EL2_VALUE, 0x04ff);
    }

    #[test]
    fn table_and_owner_descriptors() {
        assert_eq!(table_pte(0x1234_5000), 0x1234_5003);
        assert!(is_table(0x1234_5003, 0));
        assert!(is_table(0x1234_5003, 2));
        assert!(!is_table(0x1234_5003, 3)); // a page at L3
        assert!(!is_table(0x1234_5001, 1)); // a block
        assert_eq!(owner_pte(0), 0);
        assert_eq!(owner_pte(0xff), 0x3fc);
        assert_eq!(owner_pte(1), 0b100);
        assert_eq!(pte_owner(0x3fc), Some(0xff));
        assert_eq!(pte_owner(0), Some(0));
        assert_eq!(pte_owner(0x1000_0003), None);
    }
}
