//! The changing operations — map, unmap, set_owner, set_prot and destroy — built on the walker.
//!
//! This file holds the public [`PageTable`] methods (argument checks, then a walk-free fast path
//! where one applies, then the walk). The rest is split by concern:
//!
//! - `maint`: barriers and TLB maintenance — the batched invalidations of an operation, the one
//!   break-before-make of a single entry, the `DSB; ISB` sequences;
//! - `split`: replacing a block (or an annotation, or an empty entry) by a table one level down,
//!   with the covered part changed in the same break-before-make;
//! - `map`, `unmap` (and destroy), `owner`, `prot`: the walk visitors of each operation;
//! - `fast`: the walk-free paths for one page and for small runs inside one last-level table.

use crate::desc::{self, is_valid};
use crate::walk::walk_range;
use crate::{ArchOps, Error, MmOps, PageTable, Prot};

mod fast;
mod maint;
mod map;
mod owner;
mod prot;
mod split;
mod unmap;

bitflags::bitflags! {
    /// Options of [`PageTable::map`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct MapFlags: u32 {
        /// Map with pages only, never blocks (the EL2 stage-1 convention; also lets a later
        /// partial unmap proceed without splitting).
        const FORCE_PAGES = 1 << 0;
        /// Replace valid mappings that differ from the requested one (break-before-make),
        /// instead of failing with [`Error::AlreadyMapped`].
        const REPLACE = 1 << 1;
        /// Never split an existing block; fail with [`Error::WouldSplitBlock`] instead.
        const NO_SPLIT = 1 << 2;
    }
}

/// Whether `pte` counts towards its table page's refcount.
#[inline(always)]
fn counted(stage2: bool, pte: u64) -> bool {
    if stage2 { pte != 0 } else { is_valid(pte) }
}

impl PageTable {
    /// Maps `[addr, addr + size)` to `[phys, phys + size)` with `prot`.
    ///
    /// Each part of the range gets the largest mapping that fits: a 1 GiB block at L1 or a
    /// 2 MiB block at L2 when the input range covers the whole block and `phys` is aligned to it
    /// (never at L0), a page otherwise; [`MapFlags::FORCE_PAGES`] forces pages. Missing tables
    /// are allocated. An existing table is never replaced by a block: the map descends into it.
    ///
    /// Per existing entry:
    /// - empty, or an owner annotation: replaced by the new mapping;
    /// - a valid mapping identical to the requested one (address, attributes, software bits):
    ///   left alone — a block is kept even where pages were asked for;
    /// - a different valid mapping: [`Error::AlreadyMapped`], unless [`MapFlags::REPLACE`], which
    ///   replaces it with break-before-make (or a direct write if only software bits differ);
    /// - a valid block of which only part is (re)mapped with something different: with
    ///   [`MapFlags::REPLACE`] the block is split into a next-level table preserving the rest of
    ///   the mapping (break-before-make), unless [`MapFlags::NO_SPLIT`] (then
    ///   [`Error::WouldSplitBlock`]).
    ///
    /// New entries need no TLB maintenance; the operation ends with `DSB ISHST` (+ `ISB` for the
    /// EL2 stage-1) when it wrote anything.
    ///
    /// # Errors
    ///
    /// Argument errors, with nothing changed: [`Error::Misaligned`] (`addr`, `size` or `phys`
    /// not page aligned, or `size == 0`), [`Error::OutOfRange`] (beyond `ia_bits`, overflow, or
    /// `phys + size` beyond 48 bits), [`Error::InvalidProt`].
    ///
    /// Errors found during the walk — [`Error::AlreadyMapped`], [`Error::WouldSplitBlock`],
    /// [`Error::NoMemory`] — stop it at the entry where they occur: the part of the range before
    /// that entry is mapped as requested, that entry and the rest are unchanged, and the tables
    /// are consistent (refcounts hold, no pending TLB maintenance). Callers that must not fail
    /// midway check the range first and reserve enough pages for the tables.
    #[inline]
    #[expect(
        clippy::too_many_arguments,
        reason = "the memory and arch contexts plus the mapping's own five parameters"
    )]
    pub fn map<M: MmOps, A: ArchOps>(
        &mut self,
        mm: &mut M,
        arch: &A,
        addr: u64,
        size: u64,
        phys: u64,
        prot: Prot,
        flags: MapFlags,
    ) -> Result<(), Error> {
        let end = self.check_range(addr, size)?;
        if phys & (desc::PAGE_SIZE - 1) != 0 {
            return Err(Error::Misaligned);
        }
        match phys.checked_add(size) {
            Some(e) if e <= 1 << desc::PA_BITS => {}
            _ => return Err(Error::OutOfRange),
        }
        let attrs = self.cfg.format.leaf_attrs(prot)?;
        self.map_checked(mm, arch, addr, size, end, phys, attrs, flags)
    }

    /// Unmaps `[addr, addr + size)` and returns how many bytes of valid mappings it removed.
    ///
    /// Holes are skipped. Valid leaves are cleared (their invalidations batched: `DSB ISHST`,
    /// TLBI with the leaf's level as hint, and a final `DSB ISH`), owner annotations (stage-2)
    /// are cleared too. A valid block only partly inside the range is split: in one
    /// break-before-make it becomes a next-level table that keeps the rest of its mapping and
    /// leaves the covered part unmapped (recursively for a part that is not a whole next-level
    /// entry). Tables left empty are unlinked (TLBI without level hint) and freed, bottom-up;
    /// the root never is.
    ///
    /// # Errors
    ///
    /// [`Error::Misaligned`] / [`Error::OutOfRange`] for a bad range (nothing changed);
    /// [`Error::NoMemory`] if a block to split needs a table page that cannot be allocated — the
    /// walk stops at that block, the part before it is unmapped, the tables are consistent.
    #[inline]
    pub fn unmap<M: MmOps, A: ArchOps>(
        &mut self,
        mm: &mut M,
        arch: &A,
        addr: u64,
        size: u64,
    ) -> Result<u64, Error> {
        let end = self.check_range(addr, size)?;
        if size == desc::PAGE_SIZE
            && let Some(unmapped) = self.unmap_one_page(mm, arch, addr)
        {
            return Ok(unmapped);
        }
        if let Some(unmapped) = self.unmap_small_run(mm, arch, addr, size) {
            return Ok(unmapped);
        }
        self.unmap_walk(mm, arch, addr, end)
    }

    /// Marks every page of `[addr, addr + size)` as owned by `owner` (stage-2 only): each entry
    /// becomes the invalid annotation carrying `owner` in bits \[9:2\], page granular (tables are
    /// allocated and blocks split as needed; valid mappings are removed with break-before-make —
    /// one for a whole block, whose covered pages become annotations in the same step).
    ///
    /// Owner 0 is the all-zero entry, so `set_owner(.., 0)` is exactly [`PageTable::unmap`] of the
    /// range (including the freeing of emptied tables).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] on a stage-1 table, [`Error::InvalidOwner`] for
    /// `owner > desc::MAX_OWNER_ID`, [`Error::Misaligned`] / [`Error::OutOfRange`] for a bad
    /// range — all with nothing changed; [`Error::NoMemory`] as for [`PageTable::map`] (the part
    /// of the range before the failing entry is annotated).
    #[inline]
    pub fn set_owner<M: MmOps, A: ArchOps>(
        &mut self,
        mm: &mut M,
        arch: &A,
        addr: u64,
        size: u64,
        owner: u32,
    ) -> Result<(), Error> {
        if !self.cfg.format.is_stage2() {
            return Err(Error::InvalidConfig);
        }
        if owner > desc::MAX_OWNER_ID {
            return Err(Error::InvalidOwner);
        }
        if owner == 0 {
            return self.unmap(mm, arch, addr, size).map(|_| ());
        }
        let end = self.check_range(addr, size)?;
        let annotation = desc::owner_pte(owner as u8);
        if self.owner_fast(mm, arch, addr, size, annotation) {
            return Ok(());
        }
        self.owner_walk(mm, arch, addr, end, annotation)
    }

    /// Changes the attributes of every valid leaf in `[addr, addr + size)` to `prot` (output
    /// addresses are kept), and returns how many bytes of valid mappings the range holds.
    ///
    /// Invalid entries are skipped. A changed entry goes through break-before-make (a direct
    /// write when only software bits change); a block partly inside the range whose attributes
    /// change is split, the covered part getting the new attributes in the same
    /// break-before-make.
    ///
    /// # Errors
    ///
    /// [`Error::Misaligned`] / [`Error::OutOfRange`] / [`Error::InvalidProt`] with nothing
    /// changed; [`Error::NoMemory`] when a split fails (the walk stops there, the part before
    /// is changed).
    #[inline]
    pub fn set_prot<M: MmOps, A: ArchOps>(
        &mut self,
        mm: &mut M,
        arch: &A,
        addr: u64,
        size: u64,
        prot: Prot,
    ) -> Result<u64, Error> {
        let end = self.check_range(addr, size)?;
        let attrs = self.cfg.format.leaf_attrs(prot)?;
        self.prot_walk(mm, arch, addr, end, attrs)
    }

    /// Frees the whole table: drops the reference of every counted entry and of every table
    /// page, root included (which the counts then free). No descriptor is written and no TLB
    /// maintenance is done: the table must no longer be in use (for a stage-2, the caller
    /// invalidates the VMID before reusing it). The counts must follow the invariant.
    pub fn destroy<M: MmOps>(self, mm: &mut M) {
        let mut v = unmap::DestroyVisitor {
            stage2: self.cfg.format.is_stage2(),
        };
        // Cannot fail: the range is the whole space and the visitor never errors.
        let _ = walk_range(
            mm,
            self.root,
            self.start_level(),
            0,
            self.cfg.ia_size(),
            &mut v,
        );
        mm.put_page(self.root);
    }
}
