//! VMSAv8-64 page tables for pkvm-rs: the EL2 stage-1 and the stage-2 formats, 4 KiB granule.
//!
//! - [`PageTable`] holds a root table page and a [`Config`] (format and input-address size);
//!   every operation gets the memory through an [`MmOps`] and the barriers / TLB maintenance
//!   through an [`ArchOps`], so that the same code runs at EL2 and in the simulator, where both
//!   are checked.
//! - Operations: [`PageTable::map`] (largest blocks that fit, optional forced pages, splitting of
//!   partially covered blocks, replace), [`PageTable::unmap`] (frees emptied tables bottom-up),
//!   [`PageTable::set_owner`] (stage-2 owner annotations), [`PageTable::set_prot`],
//!   [`PageTable::get_leaf`] / [`PageTable::leaf`] (the entry mapping an address, raw or as a
//!   [`Leaf`]), [`PageTable::destroy`], and the generic walkers
//!   [`PageTable::walk`] / [`PageTable::walk_mut`].
//! - Table pages are refcounted: the count of a table page is 1 (its allocation) plus the number
//!   of *counted* entries in it — valid entries for the EL2 stage-1, non-zero entries for
//!   stage-2 (so owner annotations count). A valid→valid replacement does not take another
//!   reference.
//! - Break-before-make: every change of a valid entry to a different valid entry (other than a
//!   change of software bits only) goes through an invalid entry, with `DSB ISHST`, TLBI and
//!   `DSB ISH` before the new value is written. TLBI level hints are given for leaf entries only.
//!
//! # Geometry
//!
//! The input-address size `ia_bits` (25..=48) selects the start level as the architecture does
//! without concatenated tables: `ia_bits > 39` starts at L0, `31..=39` at L1, `25..=30` at L2.
//! The root is always **one** page; concatenated stage-2 roots (which upstream uses, e.g. two L1
//! pages for a 40-bit IPA) are not supported — a 40-bit stage-2 starts at L0 instead, so the EL2
//! image programs `VTCR_EL2.SL0` from [`Config::vtcr_sl0`] and `T0SZ` from [`Config::t0sz`].
//!
//! Output addresses are limited to 48 bits ([`desc::PA_BITS`]); blocks exist at L1 (1 GiB) and
//! L2 (2 MiB), never at L0.
//!
//! # Attributes
//!
//! [`Prot`] is encoded per [`Format`] by [`Format::leaf_attrs`] and decoded by
//! [`Format::pte_prot`]. EL2 stage-1 leaves use `MAIR_EL2` index [`MAIR_IDX_NORMAL`] (normal
//! write-back) or [`MAIR_IDX_DEVICE_NGNRE`]; the EL2 image programs [`MAIR_EL2_VALUE`]. Stage-2
//! leaves carry MemAttr directly (normal write-back 0b1111 or Device-nGnRE 0b0001, without
//! FEAT_S2FWB).
//!
//! # Failures
//!
//! Bad arguments are refused before anything is touched. Conflicts and allocation failures found
//! during a walk stop it at the offending entry, with the tables consistent and every started
//! TLB invalidation completed; see each operation's `# Errors`.
//!
//! # Example
//!
//! ```
//! use pkvm_pgtable::{ArchOps, Config, Leaf, MapFlags, MmOps, PageTable, Prot};
//!
//! /// Table pages in a vector, at physical addresses 0x1000, 0x2000, ...
//! #[derive(Default)]
//! struct Mem { pages: Vec<[u64; 512]>, counts: Vec<u32> }
//! impl MmOps for Mem {
//!     fn zalloc_page(&mut self) -> Option<u64> {
//!         self.pages.push([0; 512]);
//!         self.counts.push(1);
//!         Some(self.pages.len() as u64 * 4096)
//!     }
//!     fn get_page(&mut self, pa: u64) { self.counts[(pa >> 12) as usize - 1] += 1; }
//!     fn put_page(&mut self, pa: u64) { self.counts[(pa >> 12) as usize - 1] -= 1; }
//!     fn page_count(&self, pa: u64) -> u32 { self.counts[(pa >> 12) as usize - 1] }
//!     fn read_pte(&self, pa: u64) -> u64 { self.pages[(pa >> 12) as usize - 1][(pa as usize & 0xfff) / 8] }
//!     fn write_pte(&mut self, pa: u64, pte: u64) { self.pages[(pa >> 12) as usize - 1][(pa as usize & 0xfff) / 8] = pte; }
//! }
//! struct NoTlb;
//! impl ArchOps for NoTlb {
//!     fn dsb_ishst(&self) {}
//!     fn dsb_ish(&self) {}
//!     fn isb(&self) {}
//!     fn tlbi_el2_va(&self, _: u64, _: u8, _: bool) {}
//!     fn tlbi_s2_ipa(&self, _: u16, _: u64, _: u8) {}
//!     fn tlbi_vmid(&self, _: u16) {}
//!     fn tlbi_el2_all(&self) {}
//! }
//!
//! let (mut mm, arch) = (Mem::default(), NoTlb);
//! let mut s2 = PageTable::new(&mut mm, Config::stage2(1, 40))?;
//! // 2 MiB + 4 KiB: one block and one page.
//! s2.map(&mut mm, &arch, 0x4000_0000, 0x20_1000, 0x8000_0000, Prot::RWX, MapFlags::empty())?;
//! assert_eq!(s2.count_leaves(&mm, 0, 1 << 32)?, [0, 0, 1, 1]);
//! let (pte, level) = s2.get_leaf(&mm, 0x4000_1234)?;
//! assert_eq!((pkvm_pgtable::desc::output_address(pte), level), (0x8000_1000 & !0x1f_ffff, 2));
//! // Unmapping a page of the block splits it and removes just that page.
//! assert_eq!(s2.unmap(&mut mm, &arch, 0x4000_1000, 0x1000)?, 0x1000);
//! assert_eq!(s2.count_leaves(&mm, 0, 1 << 32)?, [0, 0, 0, 512]);
//! s2.set_owner(&mut mm, &arch, 0x4000_1000, 0x1000, 1)?;
//! assert_eq!(pkvm_pgtable::desc::pte_owner(s2.get_leaf(&mm, 0x4000_1000)?.0), Some(1));
//! // The same lookups, decoded.
//! assert_eq!(s2.leaf(&mm, 0x4000_1000)?, Leaf::Annotated { owner: 1, level: 3 });
//! assert!(matches!(s2.leaf(&mm, 0x4000_2000)?, Leaf::Valid { level: 3, .. }));
//! assert_eq!(s2.leaf(&mm, 0x4040_0000)?, Leaf::Empty { level: 2 });
//! # Ok::<(), pkvm_pgtable::Error>(())
//! ```
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod desc;
mod leaf;
mod ops;
mod walk;

pub use desc::{MAIR_EL2_VALUE, MAIR_IDX_DEVICE_NGNRE, MAIR_IDX_NORMAL, PAGE_SIZE, Prot};
pub use leaf::Leaf;
pub use ops::MapFlags;
pub use walk::{Visit, VisitKind, WalkFlags};

/// Errors of the page-table operations. Every failing operation documents which ones it returns.
///
/// Argument errors ([`Misaligned`](Error::Misaligned), [`OutOfRange`](Error::OutOfRange),
/// [`InvalidProt`](Error::InvalidProt), [`InvalidOwner`](Error::InvalidOwner),
/// [`InvalidConfig`](Error::InvalidConfig)) are detected before any table is touched: the tables,
/// the page counts and the TLB are then exactly as before the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// An address, size or physical address is not page aligned, or a size is zero (a zero size
    /// is not a positive multiple of the page size; there is no separate "zero size" error).
    Misaligned,
    /// The range goes beyond the input-address size (`addr + size > 1 << ia_bits`), `addr + size`
    /// overflows, or a physical range goes beyond 48 bits.
    OutOfRange,
    /// The operation would have to split a block mapping and [`MapFlags::NO_SPLIT`] forbids it.
    WouldSplitBlock,
    /// [`MmOps::zalloc_page`] returned `None`.
    NoMemory,
    /// The [`Prot`] is not valid for the format.
    InvalidProt,
    /// The range holds a valid mapping different from the requested one and
    /// [`MapFlags::REPLACE`] was not given.
    AlreadyMapped,
    /// The owner id does not fit in an annotation (`> desc::MAX_OWNER_ID`).
    InvalidOwner,
    /// Unsupported configuration (`ia_bits` outside 25..=48, a misaligned root), or an operation
    /// the format does not have (owner annotations on a stage-1 table).
    InvalidConfig,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self {
            Error::Misaligned => "misaligned address or size",
            Error::OutOfRange => "range outside the address space",
            Error::WouldSplitBlock => "operation would split a block mapping",
            Error::NoMemory => "out of page-table memory",
            Error::InvalidProt => "invalid protection",
            Error::AlreadyMapped => "range already mapped differently",
            Error::InvalidOwner => "invalid owner id",
            Error::InvalidConfig => "invalid page-table configuration",
        };
        f.write_str(s)
    }
}

/// Memory operations the page-table code needs. Addresses are physical.
///
/// At EL2 the implementation reaches table pages through the hypervisor's linear map and
/// refcounts them in the vmemmap; tests and the simulator use arrays.
pub trait MmOps {
    /// A zeroed page with page count 1, or None when out of memory.
    fn zalloc_page(&mut self) -> Option<u64>; // returns physical address
    /// +1 on the count of the page containing `pa`.
    fn get_page(&mut self, pa: u64);
    /// -1 on the count of the page containing `pa`; the page is freed when it reaches 0.
    fn put_page(&mut self, pa: u64);
    /// Drops the last reference of an empty table page: every descriptor in it is zero (an
    /// empty stage-2 table has no non-zero entry by the refcount invariant; this crate never
    /// leaves a non-zero invalid entry in a stage-1 table). An allocator that zeroes pages when
    /// they are freed may skip that work here. The default is [`MmOps::put_page`].
    fn put_zeroed_table(&mut self, pa: u64) {
        self.put_page(pa);
    }
    /// Count of the page containing `pa`.
    fn page_count(&self, pa: u64) -> u32;
    /// Reads the descriptor at physical address `pa` (8-byte aligned, inside a table page).
    fn read_pte(&self, pa: u64) -> u64;
    /// Writes the descriptor at physical address `pa` (a single 64-bit store).
    fn write_pte(&mut self, pa: u64, pte: u64);
}

/// Barriers and TLB maintenance. At EL2 each method is one instruction; the simulator records
/// them and models a TLB.
pub trait ArchOps {
    /// `DSB ISHST`.
    fn dsb_ishst(&self);
    /// `DSB ISH`.
    fn dsb_ish(&self);
    /// `ISB`.
    fn isb(&self);
    /// TLBI by VA for the EL2 stage-1. `level` is the TTL hint (0 = unknown; only pass a real level for leaf entries). `last_level_only` = the `vale2is` variant (leaf entries only).
    fn tlbi_el2_va(&self, va: u64, level: u8, last_level_only: bool);
    /// TLBI by IPA for stage-2 of `vmid` (the implementation also invalidates combined stage-1 entries for that VMID).
    fn tlbi_s2_ipa(&self, vmid: u16, ipa: u64, level: u8);
    /// Invalidate all TLB entries of `vmid`.
    fn tlbi_vmid(&self, vmid: u16);
    /// Invalidate every EL2 stage-1 TLB entry (`tlbi alle2is`): what a large unmap issues
    /// instead of one TLBI per page.
    fn tlbi_el2_all(&self);
}

/// Descriptor format of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// The EL2 stage-1 (single VA range, no EL0): AttrIndx/AP/XN attributes, TLBI by VA.
    Stage1El2,
    /// A stage-2 (host or guest) with its VMID: MemAttr/S2AP/XN attributes, owner annotations,
    /// TLBI by IPA for that VMID.
    Stage2 {
        /// The VMID TLB maintenance is issued for.
        vmid: u16,
    },
}

impl Format {
    /// Whether this is a stage-2 format.
    #[inline]
    #[must_use]
    pub const fn is_stage2(self) -> bool {
        matches!(self, Format::Stage2 { .. })
    }
}

/// Smallest supported input-address size (start level L2, `T0SZ` = 39).
pub const MIN_IA_BITS: u8 = 25;
/// Largest supported input-address size (48 bits, start level L0).
pub const MAX_IA_BITS: u8 = 48;

/// Configuration of a [`PageTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// Descriptor format (and VMID for stage-2).
    pub format: Format,
    /// Input-address size in bits: the VA size for the EL2 stage-1 (48), the IPA size for a
    /// stage-2 (40, 44, 48 typically). Supported: [`MIN_IA_BITS`]..=[`MAX_IA_BITS`].
    pub ia_bits: u8,
}

impl Config {
    /// The EL2 stage-1 configuration with a 48-bit VA.
    #[must_use]
    pub const fn stage1_el2() -> Self {
        Config {
            format: Format::Stage1El2,
            ia_bits: 48,
        }
    }

    /// A stage-2 configuration for `vmid` with an `ia_bits`-bit IPA space.
    #[must_use]
    pub const fn stage2(vmid: u16, ia_bits: u8) -> Self {
        Config {
            format: Format::Stage2 { vmid },
            ia_bits,
        }
    }

    /// Checks that `ia_bits` is supported.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if `ia_bits` is outside [`MIN_IA_BITS`]..=[`MAX_IA_BITS`].
    pub const fn validate(self) -> Result<(), Error> {
        if self.ia_bits < MIN_IA_BITS || self.ia_bits > MAX_IA_BITS {
            Err(Error::InvalidConfig)
        } else {
            Ok(())
        }
    }

    /// Level of the root table: 0 for `ia_bits > 39`, 1 for 31..=39, 2 for 30 and below.
    #[must_use]
    pub const fn start_level(self) -> u8 {
        if self.ia_bits > 39 {
            0
        } else if self.ia_bits > 30 {
            1
        } else {
            2
        }
    }

    /// Size of the input-address space, `1 << ia_bits`.
    #[must_use]
    pub const fn ia_size(self) -> u64 {
        1 << self.ia_bits
    }

    /// `TCR_EL2.T0SZ` / `VTCR_EL2.T0SZ` for this size: `64 - ia_bits`.
    #[must_use]
    pub const fn t0sz(self) -> u8 {
        64 - self.ia_bits
    }

    /// `VTCR_EL2.SL0` for the 4 KiB granule and a single root page: 2 for a start at L0, 1 for
    /// L1, 0 for L2.
    #[must_use]
    pub const fn vtcr_sl0(self) -> u8 {
        2 - self.start_level()
    }
}

/// A page table: the physical address of its root page and its configuration.
///
/// The value is only a handle: the table lives in memory reached through [`MmOps`]. Operations
/// that change the table take `&mut self`; callers serialise them (the component locks). Dropping
/// a `PageTable` does not free anything, see [`PageTable::destroy`].
#[derive(Debug, PartialEq, Eq)]
pub struct PageTable {
    root: u64,
    cfg: Config,
}

impl PageTable {
    /// Allocates a root page for a new, empty table.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for an unsupported `cfg`; [`Error::NoMemory`] if no page is
    /// available.
    pub fn new<M: MmOps>(mm: &mut M, cfg: Config) -> Result<Self, Error> {
        cfg.validate()?;
        let root = mm.zalloc_page().ok_or(Error::NoMemory)?;
        Ok(PageTable { root, cfg })
    }

    /// Wraps an existing root (for example one built at boot, or a stage-2 whose handle was
    /// stored elsewhere). The page counts must follow the invariant (see the crate docs) before
    /// any operation that frees tables is used; [`PageTable::fixup_refcounts`] establishes it for
    /// tables built without counts.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for an unsupported `cfg` or a root that is not a page-aligned
    /// 48-bit physical address.
    pub const fn from_root(root: u64, cfg: Config) -> Result<Self, Error> {
        if let Err(e) = cfg.validate() {
            return Err(e);
        }
        if root & (PAGE_SIZE - 1) != 0 || root >> desc::PA_BITS != 0 {
            return Err(Error::InvalidConfig);
        }
        Ok(PageTable { root, cfg })
    }

    /// Physical address of the root table page (for `TTBR0_EL2` / `VTTBR_EL2.BADDR`).
    #[inline]
    #[must_use]
    pub const fn root(&self) -> u64 {
        self.root
    }

    /// The configuration.
    #[inline]
    #[must_use]
    pub const fn config(&self) -> Config {
        self.cfg
    }

    /// The descriptor format.
    #[inline]
    #[must_use]
    pub const fn format(&self) -> Format {
        self.cfg.format
    }

    /// Level of the root table.
    #[inline]
    #[must_use]
    pub const fn start_level(&self) -> u8 {
        self.cfg.start_level()
    }
}
