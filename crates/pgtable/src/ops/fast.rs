//! Walk-free paths for one page and for small runs of pages inside one last-level table: the
//! common cases of map, unmap and set_owner (a share, a donation, a host fault). Each either
//! completes the operation with the same effects (descriptors, counts, barriers, TLB
//! maintenance) as the general walk would have, or leaves the table as it found it (apart from
//! empty tables linked on the way down) and returns `None` / `false` for the walk to take over
//! (the map's one calls the walk itself).

use super::MapFlags;
use super::counted;
use super::maint::{Maint, dsb_isb, tlbi_one, tlbi_tag, vmid_of};
use super::unmap::UNMAP_BATCH;
use crate::desc::{self, LEAF_LEVEL, PTE_TYPE, PTE_VALID, granule, is_valid, output_address};
use crate::{ArchOps, Error, MmOps, PageTable};

impl PageTable {
    /// [`PageTable::map`] once its arguments are checked (`end = addr + size`, `attrs` the
    /// encoded `prot`): one page whose slot is empty (or already holds the identical mapping),
    /// or a few pages inside one last-level table, all empty, are written without a walk;
    /// anything else takes the general walk, [`PageTable::map_walk`]. (The fast paths and the
    /// call of the walk stay in one function: returning a "done" flag to `map` instead changed
    /// the code generated for it.)
    #[inline(always)]
    #[expect(clippy::too_many_arguments, reason = "the checked arguments of `map`")]
    pub(super) fn map_checked<M: MmOps, A: ArchOps>(
        &mut self,
        mm: &mut M,
        arch: &A,
        addr: u64,
        size: u64,
        end: u64,
        phys: u64,
        attrs: u64,
        flags: MapFlags,
    ) -> Result<(), Error> {
        if size == desc::PAGE_SIZE
            && let Some(ptep) = self.last_level_entry_alloc(mm, arch, addr)
        {
            // One page: the common case (a share, a donation's EL2 mapping). Missing tables on
            // the way down were just linked in (invalid→valid table entries need no TLBI).
            // Anything but an empty slot or the identical mapping takes the general walk below.
            let old = mm.read_pte(ptep);
            let new = phys | attrs | PTE_VALID | PTE_TYPE;
            if old == new {
                return Ok(());
            }
            if !is_valid(old) {
                let stage2 = self.cfg.format.is_stage2();
                mm.write_pte(ptep, new);
                if !counted(stage2, old) {
                    mm.get_page(ptep);
                }
                dsb_isb!(arch, dsb_ishst, stage1: !stage2);
                return Ok(());
            }
        } else if let Some(first) = self.small_run(mm, arch, addr, size) {
            // A few pages inside one last-level table, all empty: written in one loop.
            let new0 = phys | attrs | PTE_VALID | PTE_TYPE;
            let n = size / desc::PAGE_SIZE;
            if (0..n).all(|i| mm.read_pte(first + i * 8) == 0) {
                for i in 0..n {
                    mm.write_pte(first + i * 8, new0 + i * desc::PAGE_SIZE);
                    mm.get_page(first);
                }
                dsb_isb!(arch, dsb_ishst, stage1: !self.cfg.format.is_stage2());
                return Ok(());
            }
        }
        self.map_walk(mm, arch, addr, end, phys.wrapping_sub(addr), attrs, flags)
    }

    /// [`PageTable::set_owner`] (stage-2, non-zero owner) of one page or of a few pages inside
    /// one last-level table, all empty, without a walk: `annotation` is the owner's
    /// annotation. Returns whether the annotation is done.
    #[inline(always)]
    pub(super) fn owner_fast<M: MmOps, A: ArchOps>(
        &self,
        mm: &mut M,
        arch: &A,
        addr: u64,
        size: u64,
        annotation: u64,
    ) -> bool {
        if let Some(first) = self.small_run(mm, arch, addr, size).or_else(|| {
            (size == desc::PAGE_SIZE)
                .then(|| self.last_level_entry_alloc(mm, arch, addr))
                .flatten()
        }) {
            // Pages inside one last-level table, all empty: annotate them in one loop (no valid
            // entry changes, so no TLB maintenance; the final barrier orders the writes).
            let n = size / desc::PAGE_SIZE;
            if (0..n).all(|i| mm.read_pte(first + i * 8) == 0) {
                for i in 0..n {
                    mm.write_pte(first + i * 8, annotation);
                    mm.get_page(first);
                }
                arch.dsb_ishst();
                return true;
            }
        }
        false
    }

    /// For a range of pages inside one last-level table and smaller than a block (so that it
    /// can only be mapped with pages), the address of its first descriptor, linking missing
    /// tables on the way down; `None` otherwise.
    #[inline(always)]
    fn small_run<M: MmOps, A: ArchOps>(
        &self,
        mm: &mut M,
        arch: &A,
        addr: u64,
        size: u64,
    ) -> Option<u64> {
        if !in_one_leaf_table(addr, size) {
            return None;
        }
        self.last_level_entry_alloc(mm, arch, addr)
    }

    /// The address of the last-level descriptor for `addr`, linking a new, empty table for every
    /// zero entry on the way down. `None` if an entry on the way is a block or an annotation
    /// (the general walk handles those), or if a table page cannot be allocated (the general
    /// walk then reports `NoMemory`; a table linked before that stays linked, empty and
    /// correctly counted).
    #[inline(always)]
    fn last_level_entry_alloc<M: MmOps, A: ArchOps>(
        &self,
        mm: &mut M,
        arch: &A,
        addr: u64,
    ) -> Option<u64> {
        let mut table = self.root;
        let mut level = self.start_level();
        let mut linked = false;
        while level < LEAF_LEVEL {
            let ptep = table + desc::table_index(addr, level) * 8;
            let mut pte = mm.read_pte(ptep);
            if pte == 0 {
                let Some(child) = mm.zalloc_page() else {
                    if linked {
                        // What was linked stays: make it visible before giving up.
                        dsb_isb!(arch, dsb_ishst, stage1: !self.cfg.format.is_stage2());
                    }
                    return None;
                };
                linked = true;
                pte = desc::table_pte(child);
                // The new table's (zero) contents must be visible before the table is.
                arch.dsb_ishst();
                mm.write_pte(ptep, pte);
                mm.get_page(ptep);
            } else if !desc::is_table(pte, level) {
                return None;
            }
            table = output_address(pte);
            level += 1;
        }
        Some(table + desc::table_index(addr, LEAF_LEVEL) * 8)
    }

    /// Unmaps the one page at `addr` without a walk when every table on the way exists and
    /// the page is mapped (or annotated): clears it, then unlinks and frees the tables it
    /// leaves empty, bottom-up, with the same maintenance as the walk. `None` when the general
    /// walk is needed (a block on the way, an empty slot, a stage-1 entry that is invalid).
    #[inline(always)]
    pub(super) fn unmap_one_page<M: MmOps, A: ArchOps>(
        &mut self,
        mm: &mut M,
        arch: &A,
        addr: u64,
    ) -> Option<u64> {
        let start = self.start_level();
        let (path, table) = self.table_path(mm, addr)?;
        let ptep = table + desc::table_index(addr, LEAF_LEVEL) * 8;
        let old = mm.read_pte(ptep);
        let stage2 = self.cfg.format.is_stage2();
        if !counted(stage2, old) {
            return None;
        }
        let vmid = vmid_of(self.cfg.format);
        let page = addr & !(desc::PAGE_SIZE - 1);
        mm.write_pte(ptep, 0);
        // The leaf's TLBI is issued with the first freed table's, or at the end.
        let mut leaf_pending = is_valid(old);
        let unmapped = if leaf_pending { desc::PAGE_SIZE } else { 0 };
        mm.put_page(ptep);
        // Free the tables left empty, bottom-up; the root never. Each unlinked table's
        // invalidation completes before the table is freed.
        let mut child = table;
        let mut level = LEAF_LEVEL;
        while level > start && mm.page_count(child) == 1 {
            let parent_ptep = path[level as usize - 1];
            mm.write_pte(parent_ptep, 0);
            arch.dsb_ishst();
            if leaf_pending {
                tlbi_one(arch, vmid, page | tlbi_tag(LEAF_LEVEL, true));
                leaf_pending = false;
            }
            tlbi_one(arch, vmid, addr & !(granule(level - 1) - 1));
            dsb_isb!(arch, dsb_ish, stage1: vmid.is_none());
            mm.put_page(parent_ptep);
            mm.put_zeroed_table(child);
            child = parent_ptep & !(desc::PAGE_SIZE - 1);
            level -= 1;
        }
        if leaf_pending {
            arch.dsb_ishst();
            tlbi_one(arch, vmid, page | tlbi_tag(LEAF_LEVEL, true));
            dsb_isb!(arch, dsb_ish, stage1: vmid.is_none());
        }
        Some(unmapped)
    }

    /// The descriptor addresses of the table entries leading to `addr`'s last-level table
    /// (`path[level]` for each level above the last) and that table's address, if every table
    /// on the way exists.
    #[inline(always)]
    fn table_path<M: MmOps>(&self, mm: &M, addr: u64) -> Option<([u64; 4], u64)> {
        let mut path = [0u64; 4];
        let mut table = self.root;
        let mut level = self.start_level();
        while level < LEAF_LEVEL {
            let ptep = table + desc::table_index(addr, level) * 8;
            let pte = mm.read_pte(ptep);
            if !desc::is_table(pte, level) {
                return None;
            }
            path[level as usize] = ptep;
            table = output_address(pte);
            level += 1;
        }
        Some((path, table))
    }

    /// Unmaps a range of pages inside one last-level table, smaller than a block, without a
    /// walk when every table on the way exists and each entry is empty, mapped or annotated:
    /// clears them (TLBIs queued and batched as in the walk), drops their references, then
    /// unlinks and frees the tables left empty, bottom-up. `None` when the walk is needed.
    #[inline(never)]
    pub(super) fn unmap_small_run<M: MmOps, A: ArchOps>(
        &mut self,
        mm: &mut M,
        arch: &A,
        addr: u64,
        size: u64,
    ) -> Option<u64> {
        if !in_one_leaf_table(addr, size) {
            return None;
        }
        let start = self.start_level();
        let (path, table) = self.table_path(mm, addr)?;
        let stage2 = self.cfg.format.is_stage2();
        let first = table + desc::table_index(addr, LEAF_LEVEL) * 8;
        let n = size / desc::PAGE_SIZE;
        if !(0..n).all(|i| {
            let pte = mm.read_pte(first + i * 8);
            pte == 0 || counted(stage2, pte)
        }) {
            return None;
        }
        let mut maint: Maint<'_, A, UNMAP_BATCH> = Maint::new(arch, self.cfg.format);
        let mut unmapped = 0;
        let mut puts = 0;
        for i in 0..n {
            let pte = mm.read_pte(first + i * 8);
            if pte == 0 {
                continue;
            }
            mm.write_pte(first + i * 8, 0);
            if is_valid(pte) {
                maint.invalidate(addr + i * desc::PAGE_SIZE, LEAF_LEVEL, true);
                unmapped += desc::PAGE_SIZE;
            }
            puts += 1;
        }
        for _ in 0..puts {
            mm.put_page(first);
        }
        let mut child = table;
        let mut level = LEAF_LEVEL;
        while level > start && mm.page_count(child) == 1 {
            let parent_ptep = path[level as usize - 1];
            mm.write_pte(parent_ptep, 0);
            maint.invalidate(addr & !(granule(level - 1) - 1), 0, false);
            maint.sync();
            mm.put_page(parent_ptep);
            mm.put_zeroed_table(child);
            child = parent_ptep & !(desc::PAGE_SIZE - 1);
            level -= 1;
        }
        maint.finish();
        Some(unmapped)
    }
}

/// Whether the pages of `[addr, addr + size)` (`size` ≥ one page) all sit in one last-level
/// table: what the walk-free small-run paths handle.
#[inline(always)]
fn in_one_leaf_table(addr: u64, size: u64) -> bool {
    let last = addr + size - desc::PAGE_SIZE;
    size < granule(LEAF_LEVEL - 1)
        && addr >> desc::level_shift(LEAF_LEVEL - 1) == last >> desc::level_shift(LEAF_LEVEL - 1)
}
