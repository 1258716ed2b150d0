//! The table walker: depth-first over `[start, end)` with leaf, table-pre and table-post visits.
//!
//! Semantics (the same as upstream's walker after its 6.4 fix):
//! - each entry intersecting the range is read; if it is a table and pre-visits are enabled, the
//!   visitor is called and the entry is **re-read**;
//! - if it is not a table (a block, a page or an invalid entry) and leaf visits are enabled, the
//!   visitor is called and the entry is **re-read** — so a leaf visitor that installs a table
//!   makes the walk descend into it, and a pre visitor that replaced a table by something else
//!   never makes the walk descend into the old (possibly freed) table;
//! - a table is then walked recursively, and afterwards the entry is re-read and, if it still is
//!   a table, post-visited;
//! - an error from the visitor aborts the walk and is returned (no further visit, post visits
//!   included).
//!
//! At the last level an entry can never be a table, so nothing is re-read there (it could not
//! change the walk). Entries are visited in address order; a visit gets the entry's value as read
//! just before the call.
//!
//! Internally the walk is iterative (a 4-entry stack of table addresses), with a tight loop for a
//! run of entries of one table, and a "fast descent" through tables that wholly contain the range
//! when no pre visit is wanted.

use crate::desc::{
    self, LEAF_LEVEL, PTES_PER_TABLE, granule, is_table, level_shift, output_address,
};
use crate::{Error, MmOps, PageTable};

bitflags::bitflags! {
    /// Which visits a walk makes.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct WalkFlags: u8 {
        /// Visit non-table entries: blocks, pages and invalid entries.
        const LEAF = 1 << 0;
        /// Visit table entries before their subtree.
        const TABLE_PRE = 1 << 1;
        /// Visit table entries after their subtree.
        const TABLE_POST = 1 << 2;
    }
}

/// Kind of a visit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VisitKind {
    /// A non-table entry (block, page, or invalid entry).
    Leaf,
    /// A table entry, before its subtree is walked.
    TablePre,
    /// A table entry, after its subtree was walked.
    TablePost,
}

/// One visited entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Visit {
    /// Kind of the visit.
    pub kind: VisitKind,
    /// First input address of the entry that lies inside the walked range: the entry's base
    /// address, or the walk's start if the entry began before it.
    pub addr: u64,
    /// End (exclusive) of the walked range.
    pub end: u64,
    /// Level of the table holding the entry (0..=3).
    pub level: u8,
    /// Physical address of the descriptor.
    pub ptep: u64,
    /// The descriptor's value when it was visited.
    pub pte: u64,
}

impl Visit {
    /// Size of the input range the entry maps ([`desc::granule`] of its level).
    #[inline]
    #[must_use]
    pub const fn granule(&self) -> u64 {
        granule(self.level)
    }

    /// Input address where the entry's range begins (aligned to its granule).
    #[inline]
    #[must_use]
    pub const fn base(&self) -> u64 {
        self.addr & !(self.granule() - 1)
    }

    /// End (exclusive) of the part of the entry inside the walked range.
    #[inline]
    #[must_use]
    pub const fn part_end(&self) -> u64 {
        let e = self.base() + self.granule();
        if e < self.end { e } else { self.end }
    }

    /// Whether the whole entry lies inside the walked range.
    #[inline]
    #[must_use]
    pub const fn covers_entry(&self) -> bool {
        self.addr & (self.granule() - 1) == 0 && self.end - self.addr >= self.granule()
    }
}

/// Reading descriptors; every [`MmOps`] does it, and so does a shared reference to one.
pub(crate) trait PteRead {
    fn read(&self, pa: u64) -> u64;
}

impl<M: MmOps> PteRead for M {
    #[inline(always)]
    fn read(&self, pa: u64) -> u64 {
        self.read_pte(pa)
    }
}

/// Read-only access to an [`MmOps`], for walks that must not change anything.
pub(crate) struct Ro<'a, M>(pub &'a M);

impl<M: MmOps> PteRead for Ro<'_, M> {
    #[inline(always)]
    fn read(&self, pa: u64) -> u64 {
        self.0.read_pte(pa)
    }
}

/// A walk visitor. The flags are constants so that unused visits compile away.
pub(crate) trait Visitor<M: PteRead> {
    type Err;
    const LEAF: bool;
    const PRE: bool;
    const POST: bool;
    fn visit(&mut self, mm: &mut M, v: &Visit) -> Result<(), Self::Err>;
    /// Called whenever the walk leaves the table page `table` — to descend into a child, to
    /// return to the parent, at the end of the walk, or because a visit failed — before any
    /// other visit. Visitors that batch the refcount changes of the current table page (one
    /// `get_page`/`put_page` loop instead of one call per entry) apply them here, so that the
    /// count is right whenever anyone (a post visit, the caller) can look at it.
    #[inline(always)]
    fn table_done(&mut self, _mm: &mut M, _table: u64) {}
}

/// Walks `[start, end)` (page aligned, `start < end <= ia size`) of the table rooted at `root`.
#[inline(always)]
pub(crate) fn walk_range<M: PteRead, V: Visitor<M>>(
    mm: &mut M,
    root: u64,
    start_level: u8,
    start: u64,
    end: u64,
    v: &mut V,
) -> Result<(), V::Err> {
    debug_assert!(start < end);
    let mut tables = [0u64; 4];
    let mut level = start_level;
    tables[usize::from(level & 3)] = root;
    let mut addr = start;
    if !V::PRE {
        // Fast descent: while the whole range lies inside one table entry, that entry gets no
        // visit (tables only get pre visits), so go straight down. A one-page operation thus
        // reaches its last-level table in a few instructions per level.
        while level < LEAF_LEVEL {
            let shift = level_shift(level);
            if addr >> shift != (end - 1) >> shift {
                break;
            }
            let pte = mm.read(
                tables[usize::from(level & 3)] + ((addr >> shift) & (PTES_PER_TABLE - 1)) * 8,
            );
            if !is_table(pte, level) {
                break;
            }
            level += 1;
            tables[usize::from(level & 3)] = output_address(pte);
        }
    }
    loop {
        // A run of entries of the table at `level`, from `addr` to the end of that table's range
        // (or of the walk).
        let table = tables[usize::from(level & 3)];
        let stop = if level == start_level {
            end
        } else {
            let table_end = (addr | (granule(level - 1) - 1)) + 1;
            if table_end < end { table_end } else { end }
        };
        if level == LEAF_LEVEL {
            // Last level: nothing here can be a table, so there is no pre/post visit and no
            // descent; re-reading after the visit would have no effect.
            if V::LEAF {
                while addr < stop {
                    let ptep = table + ((addr >> desc::PAGE_SHIFT) & (PTES_PER_TABLE - 1)) * 8;
                    let pte = mm.read(ptep);
                    let vis = Visit {
                        kind: VisitKind::Leaf,
                        addr,
                        end,
                        level: LEAF_LEVEL,
                        ptep,
                        pte,
                    };
                    if let Err(e) = v.visit(mm, &vis) {
                        v.table_done(mm, table);
                        return Err(e);
                    }
                    addr += desc::PAGE_SIZE;
                }
            } else {
                addr = stop;
            }
        } else {
            let shift = level_shift(level);
            let mut child = None;
            while addr < stop {
                match visit_entry(mm, table, level, shift, addr, end, v) {
                    Ok(None) => addr = (addr | ((1u64 << shift) - 1)) + 1,
                    Ok(Some(c)) => {
                        child = Some(c);
                        break;
                    }
                    Err(e) => {
                        v.table_done(mm, table);
                        return Err(e);
                    }
                }
            }
            if let Some(c) = child {
                // Entering the child: the parent's batched changes are applied first.
                v.table_done(mm, table);
                level += 1;
                tables[usize::from(level & 3)] = c;
                continue;
            }
        }
        if !V::POST && addr >= end {
            // Nothing to visit on the way up; the batches of the tables above were applied
            // when the walk descended from them.
            v.table_done(mm, tables[usize::from(level & 3)]);
            return Ok(());
        }
        // Leave every table whose range is finished (or all of them at the end of the walk).
        while level > start_level && (addr >= end || addr & (granule(level - 1) - 1) == 0) {
            v.table_done(mm, tables[usize::from(level & 3)]);
            level -= 1;
            if V::POST {
                let last = addr - 1;
                let ptep = tables[usize::from(level & 3)]
                    + ((last >> level_shift(level)) & (PTES_PER_TABLE - 1)) * 8;
                let pte = mm.read(ptep);
                if is_table(pte, level) {
                    let base = last & !(granule(level) - 1);
                    let vis = Visit {
                        kind: VisitKind::TablePost,
                        addr: if base > start { base } else { start },
                        end,
                        level,
                        ptep,
                        pte,
                    };
                    if let Err(e) = v.visit(mm, &vis) {
                        v.table_done(mm, tables[usize::from(level & 3)]);
                        return Err(e);
                    }
                }
            }
        }
        if addr >= end {
            v.table_done(mm, tables[usize::from(level & 3)]);
            return Ok(());
        }
    }
}

/// One entry at a level above the last: pre visit, leaf visit (each followed by a re-read);
/// returns the child table to descend into, if the entry is (now) a table.
#[inline(always)]
fn visit_entry<M: PteRead, V: Visitor<M>>(
    mm: &mut M,
    table: u64,
    level: u8,
    shift: u32,
    addr: u64,
    end: u64,
    v: &mut V,
) -> Result<Option<u64>, V::Err> {
    let ptep = table + ((addr >> shift) & (PTES_PER_TABLE - 1)) * 8;
    let mut pte = mm.read(ptep);
    let mut is_tbl = is_table(pte, level);
    if V::PRE && is_tbl {
        v.visit(
            mm,
            &Visit {
                kind: VisitKind::TablePre,
                addr,
                end,
                level,
                ptep,
                pte,
            },
        )?;
        pte = mm.read(ptep);
        is_tbl = is_table(pte, level);
    }
    if V::LEAF && !is_tbl {
        v.visit(
            mm,
            &Visit {
                kind: VisitKind::Leaf,
                addr,
                end,
                level,
                ptep,
                pte,
            },
        )?;
        pte = mm.read(ptep);
        is_tbl = is_table(pte, level);
    }
    Ok(if is_tbl {
        Some(output_address(pte))
    } else {
        None
    })
}

/// Adapter from a closure getting `&mut M` to a [`Visitor`].
struct FnVisitor<F> {
    flags: WalkFlags,
    f: F,
}

impl<M: MmOps, E, F: FnMut(&mut M, &Visit) -> Result<(), E>> Visitor<M> for FnVisitor<F> {
    type Err = E;
    const LEAF: bool = true;
    const PRE: bool = true;
    const POST: bool = true;
    #[inline(always)]
    fn visit(&mut self, mm: &mut M, v: &Visit) -> Result<(), E> {
        let wanted = match v.kind {
            VisitKind::Leaf => WalkFlags::LEAF,
            VisitKind::TablePre => WalkFlags::TABLE_PRE,
            VisitKind::TablePost => WalkFlags::TABLE_POST,
        };
        if self.flags.contains(wanted) {
            (self.f)(mm, v)
        } else {
            Ok(())
        }
    }
}

/// Adapter from a read-only closure to a [`Visitor`].
struct RoFnVisitor<F> {
    flags: WalkFlags,
    f: F,
}

impl<M: MmOps, E, F: FnMut(&Visit) -> Result<(), E>> Visitor<Ro<'_, M>> for RoFnVisitor<F> {
    type Err = E;
    const LEAF: bool = true;
    const PRE: bool = true;
    const POST: bool = true;
    #[inline(always)]
    fn visit(&mut self, _mm: &mut Ro<'_, M>, v: &Visit) -> Result<(), E> {
        let wanted = match v.kind {
            VisitKind::Leaf => WalkFlags::LEAF,
            VisitKind::TablePre => WalkFlags::TABLE_PRE,
            VisitKind::TablePost => WalkFlags::TABLE_POST,
        };
        if self.flags.contains(wanted) {
            (self.f)(v)
        } else {
            Ok(())
        }
    }
}

/// Counts valid leaves per level.
struct CountLeaves([u64; 4]);

impl<M: PteRead> Visitor<M> for CountLeaves {
    type Err = Error;
    const LEAF: bool = true;
    const PRE: bool = false;
    const POST: bool = false;
    #[inline(always)]
    fn visit(&mut self, _mm: &mut M, v: &Visit) -> Result<(), Error> {
        if desc::is_valid(v.pte) {
            self.0[usize::from(v.level & 3)] += 1;
        }
        Ok(())
    }
}

/// Takes the entry references of a table built without refcounts.
struct Fixup {
    stage2: bool,
}

impl<M: MmOps> Visitor<M> for Fixup {
    type Err = Error;
    const LEAF: bool = true;
    const PRE: bool = false;
    const POST: bool = true;
    #[inline(always)]
    fn visit(&mut self, mm: &mut M, v: &Visit) -> Result<(), Error> {
        let counted = if self.stage2 {
            v.pte != 0
        } else {
            desc::is_valid(v.pte)
        };
        if counted {
            mm.get_page(v.ptep);
        }
        Ok(())
    }
}

impl PageTable {
    /// Checks `[addr, addr + size)` against the input-address space; returns the end.
    #[inline(always)]
    pub(crate) fn check_range(&self, addr: u64, size: u64) -> Result<u64, Error> {
        if size == 0 || (addr | size) & (desc::PAGE_SIZE - 1) != 0 {
            return Err(Error::Misaligned);
        }
        match addr.checked_add(size) {
            Some(end) if end <= self.cfg.ia_size() => Ok(end),
            _ => Err(Error::OutOfRange),
        }
    }

    /// Walks `[addr, addr + size)` read-only, calling `f` for the visits selected by `flags`.
    ///
    /// `f` sees each entry once per selected visit kind, in address order (pre before the
    /// subtree, post after it). Returning an error aborts the walk.
    ///
    /// # Errors
    ///
    /// [`Error::Misaligned`] / [`Error::OutOfRange`] (converted into `E`) for a bad range, or
    /// the first error `f` returns.
    pub fn walk<M, E, F>(
        &self,
        mm: &M,
        addr: u64,
        size: u64,
        flags: WalkFlags,
        f: F,
    ) -> Result<(), E>
    where
        M: MmOps,
        E: From<Error>,
        F: FnMut(&Visit) -> Result<(), E>,
    {
        let end = self.check_range(addr, size)?;
        let mut v = RoFnVisitor { flags, f };
        walk_range(
            &mut Ro(mm),
            self.root,
            self.start_level(),
            addr,
            end,
            &mut v,
        )
    }

    /// Walks `[addr, addr + size)`, calling `f(mm, visit)` for the visits selected by `flags`.
    ///
    /// `f` may change the entry it visits through `mm`: the walker re-reads the entry after every
    /// call, so a leaf visitor that installs a table makes the walk descend into it, and a
    /// pre-visitor that removes a table does not make the walk enter it. `f` is responsible for
    /// refcounts, barriers and TLB maintenance of what it changes.
    ///
    /// # Errors
    ///
    /// [`Error::Misaligned`] / [`Error::OutOfRange`] (converted into `E`) for a bad range, or
    /// the first error `f` returns.
    pub fn walk_mut<M, E, F>(
        &self,
        mm: &mut M,
        addr: u64,
        size: u64,
        flags: WalkFlags,
        f: F,
    ) -> Result<(), E>
    where
        M: MmOps,
        E: From<Error>,
        F: FnMut(&mut M, &Visit) -> Result<(), E>,
    {
        let end = self.check_range(addr, size)?;
        let mut v = FnVisitor { flags, f };
        walk_range(mm, self.root, self.start_level(), addr, end, &mut v)
    }

    /// Counts the valid leaves (blocks and pages) intersecting `[addr, addr + size)`, per level:
    /// `result[level]`.
    ///
    /// # Errors
    ///
    /// [`Error::Misaligned`] / [`Error::OutOfRange`] for a bad range.
    pub fn count_leaves<M: MmOps>(&self, mm: &M, addr: u64, size: u64) -> Result<[u64; 4], Error> {
        let end = self.check_range(addr, size)?;
        let mut v = CountLeaves([0; 4]);
        walk_range(
            &mut Ro(mm),
            self.root,
            self.start_level(),
            addr,
            end,
            &mut v,
        )?;
        Ok(v.0)
    }

    /// Takes, for every counted entry of the whole table (valid entries for stage-1, non-zero
    /// entries for stage-2, including table entries), a reference on the table page holding it.
    ///
    /// This turns a table built with no-op refcounting (the boot-time bump allocator) into one
    /// that follows the invariant, provided every table page had count 1 before. It walks the
    /// **whole** input-address space (upstream once fixed only part of it, and later unmaps
    /// freed tables still in use).
    pub fn fixup_refcounts<M: MmOps>(&self, mm: &mut M) {
        let mut v = Fixup {
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
    }
}
