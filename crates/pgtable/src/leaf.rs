//! Looking up the entry that maps one input address: [`PageTable::get_leaf`] (the raw
//! descriptor and its level) and [`PageTable::leaf`] (the same, decoded into a [`Leaf`]).

use crate::desc::{self, LEAF_LEVEL, is_table, is_valid, output_address, pte_owner};
use crate::{Error, Format, MmOps, PageTable};

/// The entry that maps an input address, as [`PageTable::leaf`] finds it: the first non-table
/// entry on the way down from the root, decoded.
///
/// `level` is always the level of the table holding that entry (a [`Leaf::Empty`] or
/// [`Leaf::Annotated`] entry above the last level stands for the whole range of that entry:
/// 2 MiB at L2, 1 GiB at L1, 512 GiB at L0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Leaf {
    /// A valid block (L1, L2) or page (L3): `pte` is the descriptor, with the output address
    /// ([`desc::output_address`]) of the entry's first byte and its attributes
    /// ([`Format::pte_prot`]).
    Valid {
        /// The descriptor.
        pte: u64,
        /// Level of the table holding it (1..=3 in the tables this crate builds: there are no
        /// L0 blocks).
        level: u8,
    },
    /// An invalid stage-2 entry carrying the owner annotation of a non-zero `owner` (see
    /// [`PageTable::set_owner`]).
    Annotated {
        /// The owner id the annotation carries (1..=[`desc::MAX_OWNER_ID`]).
        owner: u8,
        /// Level of the table holding it (0..=3).
        level: u8,
    },
    /// Nothing maps the address: the zero entry.
    Empty {
        /// Level of the table holding the entry (0..=3).
        level: u8,
    },
    /// A non-zero invalid entry that is no annotation this crate writes (an invalid stage-1
    /// entry with bits set, a stage-2 one with software bits or an owner of 0). Nothing this
    /// crate does leaves one; callers treat it as taken (fail closed), never as empty.
    Unknown {
        /// The descriptor.
        pte: u64,
        /// Level of the table holding it (0..=3).
        level: u8,
    },
}

impl Leaf {
    /// Decodes `pte`, the non-table entry found at `level` of a table of format `format` (what
    /// [`PageTable::get_leaf`] returns).
    #[inline]
    #[must_use]
    pub const fn decode(format: Format, pte: u64, level: u8) -> Leaf {
        if is_valid(pte) {
            return Leaf::Valid { pte, level };
        }
        if pte == 0 {
            return Leaf::Empty { level };
        }
        if format.is_stage2()
            && let Some(owner) = pte_owner(pte)
            && owner != 0
            && pte == desc::owner_pte(owner)
        {
            return Leaf::Annotated { owner, level };
        }
        Leaf::Unknown { pte, level }
    }

    /// Level of the table holding the entry.
    #[inline]
    #[must_use]
    pub const fn level(self) -> u8 {
        match self {
            Leaf::Valid { level, .. }
            | Leaf::Annotated { level, .. }
            | Leaf::Empty { level }
            | Leaf::Unknown { level, .. } => level,
        }
    }

    /// Size of the input range the entry covers ([`desc::granule`] of its level).
    #[inline]
    #[must_use]
    pub const fn size(self) -> u64 {
        desc::granule(self.level())
    }
}

impl PageTable {
    /// Looks up the entry that maps `addr`: the first non-table entry on the way down, with its
    /// level. An unmapped address gives the invalid entry found (0, or an owner annotation) and
    /// its level. [`PageTable::leaf`] gives the same entry decoded.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfRange`] if `addr` is outside the input-address space.
    #[inline]
    pub fn get_leaf<M: MmOps>(&self, mm: &M, addr: u64) -> Result<(u64, u8), Error> {
        if addr >= self.cfg.ia_size() {
            return Err(Error::OutOfRange);
        }
        let mut table = self.root;
        let mut level = self.start_level();
        loop {
            let pte = mm.read_pte(table + desc::table_index(addr, level) * 8);
            if !is_table(pte, level) {
                return Ok((pte, level));
            }
            table = output_address(pte);
            level += 1;
            debug_assert!(level <= LEAF_LEVEL);
        }
    }

    /// Looks up the entry that maps `addr` (as [`PageTable::get_leaf`] does) and decodes it: a
    /// valid block or page, an owner annotation (stage-2), or nothing — each with the level of
    /// the table holding the entry.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfRange`] if `addr` is outside the input-address space.
    #[inline]
    pub fn leaf<M: MmOps>(&self, mm: &M, addr: u64) -> Result<Leaf, Error> {
        let (pte, level) = self.get_leaf(mm, addr)?;
        Ok(Leaf::decode(self.cfg.format, pte, level))
    }
}
