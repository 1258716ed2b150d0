//! The general case of [`PageTable::map`]: the map walk.

use super::MapFlags;
use super::counted;
use super::maint::{Maint, replace_leaf};
use super::split::{Cover, Entry};
use crate::desc::{self, LEAF_LEVEL, PTE_TYPE, PTE_VALID, granule, is_valid, output_address};
use crate::walk::{Visit, Visitor, walk_range};
use crate::{ArchOps, Error, MmOps, PageTable};

/// The map walk.
struct MapVisitor<'a, A: ArchOps> {
    maint: Maint<'a, A, 1>,
    stage2: bool,
    /// `phys - addr` (wrapping): the output address of input address `x` is `x + delta`.
    delta: u64,
    attrs: u64,
    flags: MapFlags,
    /// Blocks may be used (no [`MapFlags::FORCE_PAGES`]).
    blocks: bool,
    /// References to take on the current table page (batched, see `Visitor::table_done`).
    gets: u32,
}

impl<M: MmOps, A: ArchOps> Visitor<M> for MapVisitor<'_, A> {
    type Err = Error;
    const LEAF: bool = true;
    const PRE: bool = false;
    const POST: bool = false;

    #[inline(always)]
    fn visit(&mut self, mm: &mut M, v: &Visit) -> Result<(), Error> {
        let level = v.level;
        let old = v.pte;
        let pa = v.addr.wrapping_add(self.delta);
        if level == LEAF_LEVEL {
            let new = pa | self.attrs | PTE_VALID | PTE_TYPE;
            return self.set_leaf(mm, v, new);
        }
        let g = granule(level);
        // A block: allowed at this level, the entry wholly inside the range, and input and
        // output addresses aligned to it.
        if self.blocks && level > 0 && (v.addr | pa) & (g - 1) == 0 && v.end - v.addr >= g {
            let new = pa | self.attrs | PTE_VALID;
            return self.set_leaf(mm, v, new);
        }
        // A smaller mapping is needed here.
        if is_valid(old) {
            // A valid block, of which [v.addr, v.part_end()) is to be mapped.
            let same = output_address(old) + (v.addr - v.base()) == pa
                && old & desc::PTE_LEAF_ATTR_MASK == self.attrs;
            if same {
                return Ok(());
            }
            if !self.flags.contains(MapFlags::REPLACE) {
                return Err(Error::AlreadyMapped);
            }
            if self.flags.contains(MapFlags::NO_SPLIT) {
                return Err(Error::WouldSplitBlock);
            }
        }
        self.maint.split(mm, Entry::of(v), (0, 0), Cover::Keep)?;
        Ok(())
    }

    #[inline(always)]
    fn table_done(&mut self, mm: &mut M, table: u64) {
        for _ in 0..self.gets {
            mm.get_page(table);
        }
        self.gets = 0;
    }
}

impl<A: ArchOps> MapVisitor<'_, A> {
    /// Installs the leaf `new` over the non-table entry `v.pte`.
    #[inline(always)]
    fn set_leaf<M: MmOps>(&mut self, mm: &mut M, v: &Visit, new: u64) -> Result<(), Error> {
        let old = v.pte;
        if old == new {
            return Ok(());
        }
        if !is_valid(old) {
            mm.write_pte(v.ptep, new);
            self.maint.dirty = true;
            if !counted(self.stage2, old) {
                self.gets += 1;
            }
            return Ok(());
        }
        if !self.flags.contains(MapFlags::REPLACE) {
            return Err(Error::AlreadyMapped);
        }
        replace_leaf(mm, self.maint.arch, self.maint.vmid, Entry::of(v), new);
        self.maint.dirty = true;
        Ok(())
    }
}

impl PageTable {
    /// The general case of [`PageTable::map`] (out of line, so that the one-page path stays
    /// small).
    #[inline(never)]
    #[expect(clippy::too_many_arguments, reason = "the checked arguments of `map`")]
    pub(super) fn map_walk<M: MmOps, A: ArchOps>(
        &mut self,
        mm: &mut M,
        arch: &A,
        addr: u64,
        end: u64,
        delta: u64,
        attrs: u64,
        flags: MapFlags,
    ) -> Result<(), Error> {
        let mut v = MapVisitor {
            maint: Maint::new(arch, self.cfg.format),
            stage2: self.cfg.format.is_stage2(),
            delta,
            attrs,
            flags,
            blocks: !flags.contains(MapFlags::FORCE_PAGES),
            gets: 0,
        };
        let r = walk_range(mm, self.root, self.start_level(), addr, end, &mut v);
        v.maint.finish();
        r
    }
}
