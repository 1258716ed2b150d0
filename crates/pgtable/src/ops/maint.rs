//! Barriers and TLB maintenance: the batched invalidations of one operation ([`Maint`]), the
//! one break-before-make of a single entry ([`bbm`], [`replace_leaf`]) and the barrier
//! sequence every path ends with (`dsb_isb!`).
//!
//! Everything here is generic over [`ArchOps`]; at EL2 each `ArchOps` method is one instruction,
//! so the helpers are `#[inline(always)]` unless they are deliberately out of line (the cold
//! break-before-make and the TLBI loop).

use super::split::Entry;
use crate::desc::{self, PTE_SW_MASK};
use crate::{ArchOps, Format, MmOps};

/// The barrier sequence every path ends with: a DSB, then an `ISB` for the EL2 stage-1 (whose
/// translations this CPU uses itself; a stage-2 is used after the next exception return, which
/// is context synchronizing).
///
/// - `dsb_isb!(arch, dsb_ishst, stage1: cond)`: the descriptors written so far are visible to
///   the table walkers (and, at EL2, to the instructions that follow);
/// - `dsb_isb!(arch, dsb_ish, stage1: cond)`: the TLBIs issued so far are complete.
///
/// `arch` is an `&impl ArchOps` (or a place holding one), `cond` whether the table is the
/// EL2 stage-1, written as the caller has it at hand (`vmid.is_none()`, `!stage2`, ...).
///
/// A macro rather than a function: a function here, even `#[inline(always)]`, changed the code
/// LLVM generates around it (the branch layout of the one-page map and of the unmap walk),
/// whereas the macro expands to exactly the sequence each site used to spell out.
macro_rules! dsb_isb {
    ($arch:expr, $dsb:ident, stage1: $stage1:expr) => {{
        $arch.$dsb();
        if $stage1 {
            $arch.isb();
        }
    }};
}
pub(super) use dsb_isb;

/// The VMID TLB maintenance of `format` is issued for: `Some(vmid)` for stage-2, `None` for the
/// EL2 stage-1.
#[inline(always)]
pub(super) const fn vmid_of(format: Format) -> Option<u16> {
    match format {
        Format::Stage1El2 => None,
        Format::Stage2 { vmid } => Some(vmid),
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
pub(super) struct Maint<'a, A: ArchOps, const N: usize> {
    pub(super) arch: &'a A,
    /// `Some(vmid)` for stage-2.
    pub(super) vmid: Option<u16>,
    /// Queued invalidations: VA | level hint (bits 1:0) | leaf flag (bit 2).
    pending: [u64; N],
    n: usize,
    /// TLBIs were issued and not yet completed by a `DSB ISH`.
    need_ish: bool,
    /// Descriptors were written since the last DSB.
    pub(super) dirty: bool,
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

/// Tag bit of a queued invalidation: the entry was a leaf (block or page).
const PENDING_LEAF: u64 = 1 << 2;

/// The tag of a queued invalidation of an entry at `level`: the level as TTL hint and the leaf
/// flag for a leaf, 0 (no hint, not last level) for a table entry.
#[inline(always)]
pub(super) fn tlbi_tag(level: u8, leaf: bool) -> u64 {
    if leaf {
        u64::from(level) | PENDING_LEAF
    } else {
        0
    }
}

impl<'a, A: ArchOps, const N: usize> Maint<'a, A, N> {
    #[inline(always)]
    pub(super) fn new(arch: &'a A, format: Format) -> Self {
        Maint {
            arch,
            vmid: vmid_of(format),
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
    pub(super) fn invalidate(&mut self, va: u64, level: u8, leaf: bool) {
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
        self.pending[self.n] = va | tlbi_tag(level, leaf);
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
    pub(super) fn sync(&mut self) {
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
            dsb_isb!(self.arch, dsb_ish, stage1: self.vmid.is_none());
            self.need_ish = false;
            self.dirty = false;
        }
    }

    /// End of an operation: every invalidation complete, every write visible.
    #[inline(always)]
    pub(super) fn finish(&mut self) {
        self.sync();
        if self.dirty {
            dsb_isb!(self.arch, dsb_ishst, stage1: self.vmid.is_none());
            self.dirty = false;
        }
    }
}

/// One TLBI for a cleared entry: `p` is its address with a [`tlbi_tag`].
#[inline(always)]
pub(super) fn tlbi_one<A: ArchOps>(arch: &A, vmid: Option<u16>, p: u64) {
    let va = p & !0xfff;
    let level = (p & 3) as u8;
    match vmid {
        None => arch.tlbi_el2_va(va, level, p & PENDING_LEAF != 0),
        Some(vmid) => arch.tlbi_s2_ipa(vmid, va, level),
    }
}

/// `DSB ISHST` (orders the clearing stores before the invalidations), then the TLBIs.
#[inline(never)]
fn issue_tlbis<A: ArchOps>(arch: &A, vmid: Option<u16>, pending: &[u64]) {
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
pub(super) fn bbm<M: MmOps, A: ArchOps>(
    mm: &mut M,
    arch: &A,
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
    tlbi_one(arch, vmid, va | tlbi_tag(level, leaf));
    dsb_isb!(arch, dsb_ish, stage1: vmid.is_none());
    mm.write_pte(ptep, new);
}

/// Replaces the valid leaf `e.pte` by the valid leaf `new` of the same level: a direct write if
/// only software bits differ (hardware ignores them), break-before-make otherwise.
#[inline(never)]
pub(super) fn replace_leaf<M: MmOps, A: ArchOps>(
    mm: &mut M,
    arch: &A,
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
