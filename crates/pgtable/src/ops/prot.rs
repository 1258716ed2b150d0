//! [`PageTable::set_prot`]'s walk: new attributes for the valid leaves of a range.

use super::maint::{Maint, replace_leaf};
use super::split::{Cover, Entry};
use crate::desc::{self, LEAF_LEVEL, is_valid};
use crate::walk::{Visit, Visitor, walk_range};
use crate::{ArchOps, Error, MmOps, PageTable};

/// The set_prot walk.
struct ProtVisitor<'a, A: ArchOps> {
    maint: Maint<'a, A, 1>,
    attrs: u64,
    changed: u64,
}

impl<M: MmOps, A: ArchOps> Visitor<M> for ProtVisitor<'_, A> {
    type Err = Error;
    const LEAF: bool = true;
    const PRE: bool = false;
    const POST: bool = false;

    #[inline(always)]
    fn visit(&mut self, mm: &mut M, v: &Visit) -> Result<(), Error> {
        let old = v.pte;
        if !is_valid(old) {
            return Ok(());
        }
        let new = (old & !desc::PTE_LEAF_ATTR_MASK) | self.attrs;
        if v.level == LEAF_LEVEL || v.covers_entry() {
            self.changed += v.granule();
            if new != old {
                replace_leaf(mm, self.maint.arch, self.maint.vmid, Entry::of(v), new);
                self.maint.dirty = true;
            }
            return Ok(());
        }
        if new == old {
            // The covered part already has these attributes.
            self.changed += v.part_end() - v.addr;
            return Ok(());
        }
        let cover = Cover::Reattr(self.attrs);
        self.maint.split(mm, Entry::of(v), (v.addr, v.end), cover)?;
        Ok(())
    }
}

impl PageTable {
    /// Gives the valid leaves of `[addr, end)` (checked) the leaf attributes `attrs`; returns
    /// the bytes of valid mappings in the range.
    #[inline(always)]
    pub(super) fn prot_walk<M: MmOps, A: ArchOps>(
        &mut self,
        mm: &mut M,
        arch: &A,
        addr: u64,
        end: u64,
        attrs: u64,
    ) -> Result<u64, Error> {
        let mut v = ProtVisitor {
            maint: Maint::new(arch, self.cfg.format),
            attrs,
            changed: 0,
        };
        let r = walk_range(mm, self.root, self.start_level(), addr, end, &mut v);
        v.maint.finish();
        r.map(|()| v.changed)
    }
}
