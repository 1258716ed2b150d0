//! The general case of [`PageTable::unmap`] (the unmap walk, which also serves
//! `set_owner(.., 0)`), and the destroy walk that drops every reference of a table.

use super::counted;
use super::maint::Maint;
use super::split::{Cover, Entry};
use crate::desc::{LEAF_LEVEL, is_valid, output_address};
use crate::walk::{Visit, VisitKind, Visitor, walk_range};
use crate::{ArchOps, Error, MmOps, PageTable};

/// Number of invalidations an unmap queues before issuing them.
pub(super) const UNMAP_BATCH: usize = 8;

/// The unmap walk (also `set_owner(.., 0)`).
struct UnmapVisitor<'a, A: ArchOps> {
    maint: Maint<'a, A, UNMAP_BATCH>,
    stage2: bool,
    unmapped: u64,
    /// References to drop on the current table page (batched, see `Visitor::table_done`).
    puts: u32,
}

impl<M: MmOps, A: ArchOps> Visitor<M> for UnmapVisitor<'_, A> {
    type Err = Error;
    const LEAF: bool = true;
    const PRE: bool = false;
    const POST: bool = true;

    #[inline(always)]
    fn visit(&mut self, mm: &mut M, v: &Visit) -> Result<(), Error> {
        let old = v.pte;
        if v.kind == VisitKind::TablePost {
            let child = output_address(old);
            if mm.page_count(child) == 1 {
                // Unlink, complete the invalidations, then free.
                mm.write_pte(v.ptep, 0);
                self.maint.invalidate(v.base(), 0, false);
                self.maint.sync();
                mm.put_page(v.ptep);
                mm.put_zeroed_table(child);
            }
            return Ok(());
        }
        if old == 0 {
            return Ok(());
        }
        if v.level == LEAF_LEVEL || v.covers_entry() {
            mm.write_pte(v.ptep, 0);
            if is_valid(old) {
                self.maint.invalidate(v.base(), v.level, true);
                self.unmapped += v.granule();
            }
            if counted(self.stage2, old) {
                self.puts += 1;
            }
            return Ok(());
        }
        if !is_valid(old) && !self.stage2 {
            // Not counted and meaningless at stage-1: just clear it.
            mm.write_pte(v.ptep, 0);
            return Ok(());
        }
        // Part of a block (or of a block-level annotation): split with the covered part cleared;
        // the walk then descends for what is only partly covered.
        let e = Entry::of(v);
        self.unmapped += self.maint.split(mm, e, (v.addr, v.end), Cover::Clear)?;
        Ok(())
    }

    #[inline(always)]
    fn table_done(&mut self, mm: &mut M, table: u64) {
        for _ in 0..self.puts {
            mm.put_page(table);
        }
        self.puts = 0;
    }
}

/// The destroy walk: drops every reference.
pub(super) struct DestroyVisitor {
    pub(super) stage2: bool,
}

impl<M: MmOps> Visitor<M> for DestroyVisitor {
    type Err = Error;
    const LEAF: bool = true;
    const PRE: bool = false;
    const POST: bool = true;

    #[inline(always)]
    fn visit(&mut self, mm: &mut M, v: &Visit) -> Result<(), Error> {
        if v.kind == VisitKind::TablePost {
            mm.put_page(v.ptep);
            mm.put_page(output_address(v.pte));
        } else if counted(self.stage2, v.pte) {
            mm.put_page(v.ptep);
        }
        Ok(())
    }
}

impl PageTable {
    /// The general case of [`PageTable::unmap`].
    #[inline(never)]
    pub(super) fn unmap_walk<M: MmOps, A: ArchOps>(
        &mut self,
        mm: &mut M,
        arch: &A,
        addr: u64,
        end: u64,
    ) -> Result<u64, Error> {
        let mut v = UnmapVisitor {
            maint: Maint::new(arch, self.cfg.format),
            stage2: self.cfg.format.is_stage2(),
            unmapped: 0,
            puts: 0,
        };
        let r = walk_range(mm, self.root, self.start_level(), addr, end, &mut v);
        v.maint.finish();
        r.map(|()| v.unmapped)
    }
}
