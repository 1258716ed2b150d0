//! Map, unmap, set_owner, set_prot and destroy, built on the walker.

use crate::desc::{
    self, LEAF_LEVEL, PTE_SW_MASK, PTE_TYPE, PTE_VALID, PTES_PER_TABLE, granule, is_valid,
    output_address, table_pte,
};
use crate::walk::{Visit, VisitKind, Visitor, walk_range};
use crate::{ArchOps, Error, Format, MmOps, PageTable, Prot};

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

/// Barrier and TLB maintenance state of one operation.
///
/// Invalidations of cleared entries are queued (up to `N`) and issued in batches: one
/// `DSB ISHST` for the batch, then the TLBIs, and a single `DSB ISH` (+ `ISB` for the EL2
/// stage-1) when the operation needs them complete — before a table page is freed and before
/// the operation returns. A break-before-make of a single entry completes its own invalidation
/// at once ([`bbm`]).
///
/// Everything here is inlined and nothing takes the struct by reference out of line, so that its
/// counters stay in registers in the hot loops.
struct Maint<'a, A: ArchOps, const N: usize> {
    arch: &'a mut A,
    /// `Some(vmid)` for stage-2.
    vmid: Option<u16>,
    /// Queued invalidations: VA | level hint (bits 1:0) | leaf flag (bit 2).
    pending: [u64; N],
    n: usize,
    /// TLBIs were issued and not yet completed by a `DSB ISH`.
    need_ish: bool,
    /// Descriptors were written since the last DSB.
    dirty: bool,
    /// Batches issued so far; past [`FLUSH_ALL_AFTER`] the operation invalidates everything.
    batches: u32,
    /// The operation switched to invalidating everything (the whole EL2 stage-1, or the whole
    /// VMID) instead of queueing entries.
    all: bool,
    /// An entry was cleared since the last full invalidation.
    all_pending: bool,
}

/// After this many full batches of TLBIs, an operation switches to one invalidation of the
/// whole regime: unmapping a large range then costs one TLBI instead of one per page (the
/// threshold keeps small and medium unmaps precise, so other EL2 mappings stay cached).
const FLUSH_ALL_AFTER: u32 = 8;

const PENDING_LEAF: u64 = 1 << 2;

impl<'a, A: ArchOps, const N: usize> Maint<'a, A, N> {
    #[inline(always)]
    fn new(arch: &'a mut A, format: Format) -> Self {
        let vmid = match format {
            Format::Stage1El2 => None,
            Format::Stage2 { vmid } => Some(vmid),
        };
        Maint {
            arch,
            vmid,
            pending: [0; N],
            n: 0,
            need_ish: false,
            dirty: false,
            batches: 0,
            all: false,
            all_pending: false,
        }
    }

    /// Queues the invalidation of the entry mapping `va` at `level`, just cleared. For a leaf
    /// the level is passed as TTL hint; for a table entry the hint is 0 (unknown) and the
    /// non-last-level TLBI is used.
    #[inline(always)]
    fn invalidate(&mut self, va: u64, level: u8, leaf: bool) {
        if self.all {
            self.all_pending = true;
            return;
        }
        if self.n >= N {
            if self.batches + 1 >= FLUSH_ALL_AFTER {
                // Everything queued is covered by the one invalidation `sync` will issue.
                self.all = true;
                self.all_pending = true;
                self.n = 0;
                return;
            }
            self.flush();
        }
        let tag = if leaf {
            u64::from(level) | PENDING_LEAF
        } else {
            0
        };
        self.pending[self.n] = va | tag;
        self.n += 1;
    }

    /// `DSB ISHST`, then the queued TLBIs.
    #[inline(always)]
    fn flush(&mut self) {
        if self.n != 0 {
            issue_tlbis(self.arch, self.vmid, &self.pending[..self.n]);
            self.n = 0;
            self.batches += 1;
            self.need_ish = true;
            self.dirty = false;
        }
    }

    /// Completes every queued invalidation.
    #[inline(always)]
    fn sync(&mut self) {
        self.flush();
        if self.all_pending {
            // The mode is sticky for the rest of the operation: later invalidations are
            // covered by the next sync's full invalidation.
            self.all_pending = false;
            self.arch.dsb_ishst();
            match self.vmid {
                None => self.arch.tlbi_el2_all(),
                Some(vmid) => self.arch.tlbi_vmid(vmid),
            }
            self.need_ish = true;
            self.dirty = false;
        }
        if self.need_ish {
            self.arch.dsb_ish();
            if self.vmid.is_none() {
                self.arch.isb();
            }
            self.need_ish = false;
            self.dirty = false;
        }
    }

    /// End of an operation: every invalidation complete, every write visible.
    #[inline(always)]
    fn finish(&mut self) {
        self.sync();
        if self.dirty {
            self.arch.dsb_ishst();
            if self.vmid.is_none() {
                self.arch.isb();
            }
            self.dirty = false;
        }
    }
}

/// One TLBI for a cleared entry (see [`Maint::invalidate`] for the encoding).
#[inline(always)]
fn tlbi_one<A: ArchOps>(arch: &mut A, vmid: Option<u16>, p: u64) {
    let va = p & !0xfff;
    let level = (p & 3) as u8;
    match vmid {
        None => arch.tlbi_el2_va(va, level, p & PENDING_LEAF != 0),
        Some(vmid) => arch.tlbi_s2_ipa(vmid, va, level),
    }
}

/// `DSB ISHST` (orders the clearing stores before the invalidations), then the TLBIs.
#[inline(never)]
fn issue_tlbis<A: ArchOps>(arch: &mut A, vmid: Option<u16>, pending: &[u64]) {
    arch.dsb_ishst();
    for &p in pending {
        tlbi_one(arch, vmid, p);
    }
}

/// Break-before-make of one entry: `ptep` (mapping `va` at `level`, currently the valid `old`)
/// becomes `new`: clear, `DSB ISHST`, TLBI, `DSB ISH` (+ `ISB` at EL2 stage-1), write.
/// The caller marks the operation dirty (a DSB is still due for `new`).
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn bbm<M: MmOps, A: ArchOps>(
    mm: &mut M,
    arch: &mut A,
    vmid: Option<u16>,
    ptep: u64,
    old: u64,
    new: u64,
    va: u64,
    level: u8,
) {
    mm.write_pte(ptep, 0);
    arch.dsb_ishst();
    let leaf = !desc::is_table(old, level);
    let tag = if leaf {
        u64::from(level) | PENDING_LEAF
    } else {
        0
    };
    tlbi_one(arch, vmid, va | tag);
    arch.dsb_ish();
    if vmid.is_none() {
        arch.isb();
    }
    mm.write_pte(ptep, new);
}

/// Whether `pte` counts towards its table page's refcount.
#[inline(always)]
fn counted(stage2: bool, pte: u64) -> bool {
    if stage2 { pte != 0 } else { is_valid(pte) }
}

/// What the entries of a new table that lie wholly inside the operation's range become (see
/// [`install_table`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cover {
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
fn install_table<M: MmOps, A: ArchOps>(
    mm: &mut M,
    arch: &mut A,
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

/// Replaces the valid leaf `v.pte` by the valid leaf `new` of the same level: a direct write if
/// only software bits differ (hardware ignores them), break-before-make otherwise.
#[inline(never)]
fn replace_leaf<M: MmOps, A: ArchOps>(
    mm: &mut M,
    arch: &mut A,
    vmid: Option<u16>,
    e: Entry,
    new: u64,
) {
    let old = e.pte;
    if (old ^ new) & !PTE_SW_MASK == 0 {
        mm.write_pte(e.ptep, new);
    } else {
        bbm(mm, arch, vmid, e.ptep, old, new, e.base, e.level);
    }
}

/// What the out-of-line helpers need of a visited entry (small enough to go in registers).
#[derive(Clone, Copy)]
struct Entry {
    ptep: u64,
    pte: u64,
    base: u64,
    level: u8,
}

impl Entry {
    #[inline(always)]
    fn of(v: &Visit) -> Self {
        Entry {
            ptep: v.ptep,
            pte: v.pte,
            base: v.base(),
            level: v.level,
        }
    }
}

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
        install_table(
            mm,
            self.maint.arch,
            self.maint.vmid,
            Entry::of(v),
            (0, 0),
            Cover::Keep,
        )?;
        self.maint.dirty = true;
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

/// Number of invalidations an unmap queues before issuing them.
const UNMAP_BATCH: usize = 8;

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
        self.unmapped += install_table(
            mm,
            self.maint.arch,
            self.maint.vmid,
            e,
            (v.addr, v.end),
            Cover::Clear,
        )?;
        self.maint.dirty = true;
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
            install_table(
                mm,
                self.maint.arch,
                self.maint.vmid,
                Entry::of(v),
                (v.addr, v.end),
                cover,
            )?;
            self.maint.dirty = true;
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
        install_table(
            mm,
            self.maint.arch,
            self.maint.vmid,
            Entry::of(v),
            (v.addr, v.end),
            cover,
        )?;
        self.maint.dirty = true;
        Ok(())
    }
}

/// The destroy walk: drops every reference.
struct DestroyVisitor {
    stage2: bool,
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
        arch: &mut A,
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
                arch.dsb_ishst();
                if !stage2 {
                    arch.isb();
                }
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
                arch.dsb_ishst();
                if !self.cfg.format.is_stage2() {
                    arch.isb();
                }
                return Ok(());
            }
        }
        self.map_walk(mm, arch, addr, end, phys.wrapping_sub(addr), attrs, flags)
    }

    /// The general case of [`PageTable::map`] (out of line, so that the one-page path stays
    /// small).
    #[inline(never)]
    #[expect(clippy::too_many_arguments, reason = "the checked arguments of `map`")]
    fn map_walk<M: MmOps, A: ArchOps>(
        &mut self,
        mm: &mut M,
        arch: &mut A,
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
        arch: &mut A,
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

    /// The general case of [`PageTable::unmap`].
    #[inline(never)]
    fn unmap_walk<M: MmOps, A: ArchOps>(
        &mut self,
        mm: &mut M,
        arch: &mut A,
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

    /// For a range of pages inside one last-level table and smaller than a block (so that it
    /// can only be mapped with pages), the address of its first descriptor, linking missing
    /// tables on the way down; `None` otherwise.
    #[inline(always)]
    fn small_run<M: MmOps, A: ArchOps>(
        &self,
        mm: &mut M,
        arch: &mut A,
        addr: u64,
        size: u64,
    ) -> Option<u64> {
        let last = addr + size - desc::PAGE_SIZE;
        if size >= granule(LEAF_LEVEL - 1)
            || addr >> desc::level_shift(LEAF_LEVEL - 1)
                != last >> desc::level_shift(LEAF_LEVEL - 1)
        {
            return None;
        }
        self.last_level_entry_alloc(mm, arch, addr)
    }

    /// The address of the last-level descriptor for `addr`, linking a new, empty table for every zero entry on the way
    /// down. `None` if an entry on the way is a block or an annotation (the general walk
    /// handles those), or if a table page cannot be allocated (the general walk then reports
    /// `NoMemory`; a table linked before that stays linked, empty and correctly counted).
    #[inline(always)]
    fn last_level_entry_alloc<M: MmOps, A: ArchOps>(
        &self,
        mm: &mut M,
        arch: &mut A,
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
                        arch.dsb_ishst();
                        if !self.cfg.format.is_stage2() {
                            arch.isb();
                        }
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
    fn unmap_one_page<M: MmOps, A: ArchOps>(
        &mut self,
        mm: &mut M,
        arch: &mut A,
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
        let vmid = match self.cfg.format {
            Format::Stage1El2 => None,
            Format::Stage2 { vmid } => Some(vmid),
        };
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
                tlbi_one(arch, vmid, page | u64::from(LEAF_LEVEL) | PENDING_LEAF);
                leaf_pending = false;
            }
            tlbi_one(arch, vmid, addr & !(granule(level - 1) - 1));
            arch.dsb_ish();
            if vmid.is_none() {
                arch.isb();
            }
            mm.put_page(parent_ptep);
            mm.put_zeroed_table(child);
            child = parent_ptep & !(desc::PAGE_SIZE - 1);
            level -= 1;
        }
        if leaf_pending {
            arch.dsb_ishst();
            tlbi_one(arch, vmid, page | u64::from(LEAF_LEVEL) | PENDING_LEAF);
            arch.dsb_ish();
            if vmid.is_none() {
                arch.isb();
            }
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
    fn unmap_small_run<M: MmOps, A: ArchOps>(
        &mut self,
        mm: &mut M,
        arch: &mut A,
        addr: u64,
        size: u64,
    ) -> Option<u64> {
        let last = addr + size - desc::PAGE_SIZE;
        if size >= granule(LEAF_LEVEL - 1)
            || addr >> desc::level_shift(LEAF_LEVEL - 1)
                != last >> desc::level_shift(LEAF_LEVEL - 1)
        {
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
        arch: &mut A,
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
                return Ok(());
            }
        }
        let mut v = OwnerVisitor {
            maint: Maint::new(arch, self.cfg.format),
            annotation,
        };
        let r = walk_range(mm, self.root, self.start_level(), addr, end, &mut v);
        v.maint.finish();
        r
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
        arch: &mut A,
        addr: u64,
        size: u64,
        prot: Prot,
    ) -> Result<u64, Error> {
        let end = self.check_range(addr, size)?;
        let attrs = self.cfg.format.leaf_attrs(prot)?;
        let mut v = ProtVisitor {
            maint: Maint::new(arch, self.cfg.format),
            attrs,
            changed: 0,
        };
        let r = walk_range(mm, self.root, self.start_level(), addr, end, &mut v);
        v.maint.finish();
        r.map(|()| v.changed)
    }

    /// Frees the whole table: drops the reference of every counted entry and of every table
    /// page, root included (which the counts then free). No descriptor is written and no TLB
    /// maintenance is done: the table must no longer be in use (for a stage-2, the caller
    /// invalidates the VMID before reusing it). The counts must follow the invariant.
    pub fn destroy<M: MmOps>(self, mm: &mut M) {
        let mut v = DestroyVisitor {
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
