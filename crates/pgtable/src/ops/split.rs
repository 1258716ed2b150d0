//! Replacing a block, an annotation or an empty entry by a table one level down: the split that
//! map, unmap, set_owner and set_prot share ([`install_table`]), with the covered part of the
//! old entry changed in the same step ([`Cover`]).

use super::counted;
use super::maint::{Maint, bbm};
use crate::desc::{self, LEAF_LEVEL, PTE_TYPE, PTES_PER_TABLE, granule, is_valid, table_pte};
use crate::walk::Visit;
use crate::{ArchOps, Error, MmOps};

/// What the out-of-line helpers need of a visited entry (small enough to go in registers).
#[derive(Clone, Copy)]
pub(super) struct Entry {
    /// Physical address of the descriptor.
    pub(super) ptep: u64,
    /// The descriptor's value.
    pub(super) pte: u64,
    /// Input address where the entry's range begins.
    pub(super) base: u64,
    /// Level of the table holding the entry.
    pub(super) level: u8,
}

impl Entry {
    #[inline(always)]
    pub(super) fn of(v: &Visit) -> Self {
        Entry {
            ptep: v.ptep,
            pte: v.pte,
            base: v.base(),
            level: v.level,
        }
    }
}

/// What the entries of a new table that lie wholly inside the operation's range become (see
/// [`install_table`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Cover {
    /// The same as the others: a copy of the old entry's mapping (map: the walk then maps them).
    Keep,
    /// Zero (unmap).
    Clear,
    /// This owner annotation at the last level, zero above (set_owner: the walk then fills
    /// the zero entries page by page).
    Annotate(u64),
    /// The old mapping with these attributes (set_prot).
    Reattr(u64),
}

/// Replaces the non-table entry `e` (level < 3) by a table one level down that keeps the old
/// contents outside `[start, end)` — a valid block becomes 512 smaller blocks/pages, an
/// annotation (stage-2) 512 copies, an empty (or, at stage-1, any invalid) entry an empty table —
/// and whose entries wholly inside `[start, end)` become what `cover` says. So a partly covered
/// block is split and its covered part changed in one break-before-make of the parent entry
/// (one TLBI for the block), instead of a split followed by a break-before-make per new entry.
///
/// Returns the bytes of valid mapping the new table no longer maps (`Cover::Clear` /
/// `Cover::Annotate`). The caller marks the operation dirty.
#[inline(never)]
pub(super) fn install_table<M: MmOps, A: ArchOps>(
    mm: &mut M,
    arch: &A,
    vmid: Option<u16>,
    e: Entry,
    (start, end): (u64, u64),
    cover: Cover,
) -> Result<u64, Error> {
    let stage2 = vmid.is_some();
    let old = e.pte;
    let level = e.level;
    debug_assert!(level < LEAF_LEVEL && !desc::is_table(old, level));
    let child = mm.zalloc_page().ok_or(Error::NoMemory)?;
    let child_level = level + 1;
    let g = granule(child_level);
    let valid = is_valid(old);
    let (first, step) = if valid {
        let ty = if child_level == LEAF_LEVEL {
            PTE_TYPE
        } else {
            0
        };
        ((old & !PTE_TYPE) | ty, g)
    } else if stage2 {
        (old, 0)
    } else {
        (0, 0)
    };
    let mut removed = 0;
    if first != 0 || cover != Cover::Keep {
        for i in 0..PTES_PER_TABLE {
            let mut pte = first + i * step;
            let va = e.base + i * g;
            if va >= start && va + g <= end {
                match cover {
                    Cover::Keep => {}
                    Cover::Clear => pte = 0,
                    Cover::Annotate(a) => pte = if child_level == LEAF_LEVEL { a } else { 0 },
                    Cover::Reattr(attrs) => {
                        if is_valid(pte) {
                            pte = (pte & !desc::PTE_LEAF_ATTR_MASK) | attrs;
                        }
                    }
                }
                if valid && !is_valid(pte) {
                    removed += g;
                }
            }
            if pte != 0 {
                mm.write_pte(child + i * 8, pte);
                if counted(stage2, pte) {
                    mm.get_page(child);
                }
            }
        }
    }
    if valid {
        // The DSB of the break also publishes the child's contents.
        bbm(mm, arch, vmid, e.ptep, old, table_pte(child), e.base, level);
    } else {
        // Make the zeroed (or filled) child visible to the walkers before linking it.
        arch.dsb_ishst();
        mm.write_pte(e.ptep, table_pte(child));
        if !counted(stage2, old) {
            mm.get_page(e.ptep);
        }
    }
    Ok(removed)
}

impl<A: ArchOps, const N: usize> Maint<'_, A, N> {
    /// [`install_table`] under this operation's maintenance: splits the block (or fills the
    /// empty entry) `e`, covering `range` per `cover`; the final barrier is left pending.
    /// Returns what `install_table` returns.
    #[inline(always)]
    pub(super) fn split<M: MmOps>(
        &mut self,
        mm: &mut M,
        e: Entry,
        range: (u64, u64),
        cover: Cover,
    ) -> Result<u64, Error> {
        let r = install_table(mm, self.arch, self.vmid, e, range, cover)?;
        self.dirty = true;
        Ok(r)
    }
}
