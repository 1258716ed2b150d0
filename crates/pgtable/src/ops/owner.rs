//! The general case of [`PageTable::set_owner`] for a non-zero owner: the annotation walk.

use super::maint::{Maint, bbm};
use super::split::{Cover, Entry};
use crate::desc::{LEAF_LEVEL, is_valid};
use crate::walk::{Visit, Visitor, walk_range};
use crate::{ArchOps, Error, MmOps, PageTable};

/// The set_owner walk for a non-zero owner: page-granular annotations.
struct OwnerVisitor<'a, A: ArchOps> {
    maint: Maint<'a, A, 1>,
    annotation: u64,
}

impl<M: MmOps, A: ArchOps> Visitor<M> for OwnerVisitor<'_, A> {
    type Err = Error;
    const LEAF: bool = true;
    const PRE: bool = false;
    const POST: bool = false;

    #[inline(always)]
    fn visit(&mut self, mm: &mut M, v: &Visit) -> Result<(), Error> {
        let old = v.pte;
        if v.level < LEAF_LEVEL {
            let cover = Cover::Annotate(self.annotation);
            self.maint.split(mm, Entry::of(v), (v.addr, v.end), cover)?;
            return Ok(());
        }
        let new = self.annotation;
        if old == new {
            return Ok(());
        }
        if is_valid(old) {
            bbm(
                mm,
                self.maint.arch,
                self.maint.vmid,
                v.ptep,
                old,
                new,
                v.base(),
                v.level,
            );
        } else {
            mm.write_pte(v.ptep, new);
            if old == 0 {
                mm.get_page(v.ptep);
            }
        }
        Ok(())
    }
}

impl PageTable {
    /// Annotates `[addr, end)` (checked) with the non-zero owner annotation `annotation`.
    #[inline(always)]
    pub(super) fn owner_walk<M: MmOps, A: ArchOps>(
        &mut self,
        mm: &mut M,
        arch: &A,
        addr: u64,
        end: u64,
        annotation: u64,
    ) -> Result<(), Error> {
        let mut v = OwnerVisitor {
            maint: Maint::new(arch, self.cfg.format),
            annotation,
        };
        let r = walk_range(mm, self.root, self.start_level(), addr, end, &mut v);
        v.maint.finish();
        r
    }
}
