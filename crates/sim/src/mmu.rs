//! An MMU model: an independent descriptor walker (written from the Arm ARM field layout, not
//! shared with `pkvm-pgtable`) plus a TLB that keeps translations until they are invalidated.
//!
//! Accesses in the simulator go through the TLB first, like hardware. A hypervisor that changes
//! a valid entry without the right TLBI therefore leaves a stale translation behind, and the
//! next access through it succeeds where the spec says it must fault; `Machine::check_tlb`
//! also compares every cached entry with the tables after each call.
//!
//! # What the TLB keeps, and what a TLBI removes
//!
//! The model keeps what the architecture allows an implementation to keep (Arm ARM, "Translation
//! Lookaside Buffers" and the TLBI instruction descriptions), and removes only what a TLBI is
//! required to remove, so that maintenance which works on *some* hardware but not all fails here:
//!
//! - **Regimes.** Entries are tagged with their regime: the EL2 stage-1, or a stage-2 under one
//!   VMID (the host's is VMID 0). A TLBI acts on one regime only.
//! - **Leaf entries** remember the level of the descriptor they came from (a level-1 or level-2
//!   block, or a level-3 page) and cover that descriptor's whole range.
//! - **Walk caches.** Every table descriptor a walk reads is cached too, keyed by the range of
//!   input addresses it covers: a later walk that misses the leaf entries resumes from the
//!   deepest cached table instead of reading the levels above again, so a table that was
//!   unlinked but whose walk-cache entry survived is still used (and, once freed and reused,
//!   read as garbage).
//! - **TLBI by address** (`TLBI VAE2IS`/`VALE2IS` for EL2, `TLBI IPAS2E1IS` for a stage-2)
//!   removes the entries whose range contains the address:
//!   - the **level hint** (TTL, FEAT_TTL) names the level of the *leaf* being invalidated;
//!     with a hint of level L only level-L leaf entries are removed (an entry of another level
//!     is missed: with a wrong hint the architecture requires nothing to be invalidated), and
//!     walk-cache entries are not (TTL is defined for leaf entries only; Linux and pkvm-rs
//!     pass 0 when a table is removed). A hint of 0 means "unknown": any level;
//!   - the **last-level-only** form (`VALE2IS`) removes leaf entries only: walk-cache entries
//!     survive it. The non-last-level form with no hint removes walk-cache entries of every
//!     level whose range contains the address.
//! - **Whole-regime TLBIs** (`TLBI ALLE2IS`, `TLBI VMALLS12E1IS` for the VMID) remove every
//!   entry of the regime, leaf and walk cache.
//!
//! Invalid descriptors are never cached (a translation fault is not), and nothing is evicted
//! spontaneously: the model is the worst case of an implementation that caches everything.
//!
//! The simulated CPUs share one TLB: every TLBI the hypervisor issues is a broadcast (`IS`)
//! one, and the simulator's CPUs only translate for the host and EL2, so sharing the cache
//! loses nothing a per-CPU TLB would catch.

use std::collections::HashMap;

use crate::mem::SimMemory;
use pkvm_hyp::platform::PhysMem;

/// Which translation regime an access uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Regime {
    /// The EL2 stage-1 (hyp).
    El2,
    /// A stage-2 under a VMID (the host's is VMID 0).
    Stage2(u16),
}

/// A translation: output address and permissions, and the tables the walk read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Output address of the accessed byte.
    pub pa: u64,
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// Device memory.
    pub device: bool,
    /// Level of the leaf (1, 2 or 3).
    pub level: u8,
    /// The table the walk read at each level (index = level): the table it started from, then
    /// each table a table descriptor pointed to; `None` above the start. The TLB's walk caches
    /// are filled from it.
    pub tables: [Option<u64>; 4],
}

/// Why a walk failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkFault {
    /// Level at which the walk found an invalid entry (or a malformed one).
    pub level: u8,
    /// The descriptor found there.
    pub desc: u64,
}

/// Output-address field of a descriptor (bits 47:12).
pub const OA_MASK: u64 = 0x0000_FFFF_FFFF_F000;

/// log2 of the size mapped by one entry at `level`.
#[must_use]
pub fn level_shift(level: u8) -> u32 {
    12 + 9 * (3 - u32::from(level))
}

/// `ia` rounded down to the range one entry at `level` covers.
#[must_use]
pub fn align_down(ia: u64, level: u8) -> u64 {
    ia & !((1u64 << level_shift(level)) - 1)
}

/// Whether `desc`, found at `level`, is a table descriptor (valid, type bit set, above level 3).
#[must_use]
pub fn is_table_desc(desc: u64, level: u8) -> bool {
    level < 3 && desc & 3 == 3
}

/// Walks the tables rooted at `root` (start level `start_level`) for input address `ia`.
///
/// # Errors
///
/// The level and descriptor where translation stops.
pub fn walk(
    mem: &SimMemory,
    regime: Regime,
    root: u64,
    start_level: u8,
    ia: u64,
) -> Result<Translation, WalkFault> {
    walk_from(mem, regime, root, start_level, ia)
}

/// Walks from `table`, a table of `level`, for input address `ia` (what a walk resumed from a
/// walk-cache entry does).
fn walk_from(
    mem: &SimMemory,
    regime: Regime,
    mut table: u64,
    mut level: u8,
    ia: u64,
) -> Result<Translation, WalkFault> {
    let mut tables = [None; 4];
    loop {
        tables[usize::from(level)] = Some(table);
        let idx = (ia >> level_shift(level)) & 511;
        let desc = mem.read_u64(table + idx * 8);
        if desc & 1 == 0 {
            return Err(WalkFault { level, desc });
        }
        let is_table = desc & 2 != 0;
        if level < 3 && is_table {
            table = desc & OA_MASK;
            level += 1;
            continue;
        }
        if level == 3 && !is_table {
            // Reserved encoding at level 3.
            return Err(WalkFault { level, desc });
        }
        if level == 0 {
            // No block descriptors at level 0 with a 4K granule.
            return Err(WalkFault { level, desc });
        }
        if desc & (1 << 10) == 0 {
            // Access flag clear: we never use hardware AF management, so this is a fault.
            return Err(WalkFault { level, desc });
        }
        let size_mask = (1u64 << level_shift(level)) - 1;
        let pa = (desc & OA_MASK & !size_mask) | (ia & size_mask);
        let xn = desc & (1 << 54) != 0;
        let t = match regime {
            Regime::El2 => {
                let attr_idx = (desc >> 2) & 7;
                Translation {
                    pa,
                    read: true,
                    write: desc & (1 << 7) == 0,
                    exec: !xn,
                    device: attr_idx == u64::from(pkvm_pgtable_attr_device()),
                    level,
                    tables,
                }
            }
            Regime::Stage2(_) => {
                let memattr = (desc >> 2) & 0xF;
                Translation {
                    pa,
                    read: desc & (1 << 6) != 0,
                    write: desc & (1 << 7) != 0,
                    exec: !xn,
                    device: memattr & 0b1100 == 0,
                    level,
                    tables,
                }
            }
        };
        return Ok(t);
    }
}

/// MAIR index the EL2 image programs for device memory (see `pkvm-pgtable`).
fn pkvm_pgtable_attr_device() -> u8 {
    1
}

/// A cached translation, covering the whole range of the leaf it came from.
#[derive(Clone, Copy, Debug)]
struct TlbEntry {
    out_base: u64,
    t: Translation,
}

/// Key of a cached entry: regime, level of the descriptor, first input address of its range.
type Key = (Regime, u8, u64);

/// A TLB with walk caches (see the [module documentation](self) for what it keeps and what each
/// TLBI removes).
#[derive(Default)]
pub struct Tlb {
    /// Leaf entries (blocks and pages).
    leaves: HashMap<Key, TlbEntry>,
    /// Walk-cache entries: a table descriptor, as the next-level table it points to.
    walks: HashMap<Key, u64>,
    /// The RAM walks read: without it (a [`Tlb::default`]) the walk caches are kept and
    /// invalidated but not walked from.
    mem: Option<SimMemory>,
}

impl std::fmt::Debug for Tlb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tlb")
            .field("leaves", &self.leaves.len())
            .field("walks", &self.walks.len())
            .finish_non_exhaustive()
    }
}

impl Tlb {
    /// An empty TLB whose walks read `mem`.
    #[must_use]
    pub fn new(mem: SimMemory) -> Self {
        Tlb {
            mem: Some(mem),
            ..Tlb::default()
        }
    }

    fn leaf(&self, regime: Regime, ia: u64) -> Option<Translation> {
        for level in [3u8, 2, 1] {
            if let Some(e) = self.leaves.get(&(regime, level, align_down(ia, level))) {
                let mut t = e.t;
                t.pa = e.out_base | (ia & ((1u64 << level_shift(level)) - 1));
                return Some(t);
            }
        }
        None
    }

    /// The walk the MMU does on a leaf miss when a walk-cache entry covers `ia`: from the
    /// deepest cached table. `None` if no walk-cache entry covers `ia`.
    fn resume(&mut self, regime: Regime, ia: u64) -> Option<Result<Translation, WalkFault>> {
        let mem = self.mem.as_ref()?;
        let (level, table) = [2u8, 1, 0].into_iter().find_map(|l| {
            self.walks
                .get(&(regime, l, align_down(ia, l)))
                .map(|&t| (l, t))
        })?;
        let r = walk_from(mem, regime, table, level + 1, ia);
        if let Ok(t) = r {
            self.insert(regime, ia, t);
        }
        Some(r)
    }

    /// Looks `ia` up as the MMU would without reading the root: a cached leaf entry, or else a
    /// walk resumed from the deepest walk-cache entry covering `ia` (which fills the TLB). `None`
    /// on a miss, and when the resumed walk faults (the caller then walks from the root, which a
    /// stale walk-cache entry may make succeed where the hardware would fault:
    /// [`Tlb::translate`] has no such fallback).
    pub fn lookup(&mut self, regime: Regime, ia: u64) -> Option<Translation> {
        if let Some(t) = self.leaf(regime, ia) {
            return Some(t);
        }
        self.resume(regime, ia)?.ok()
    }

    /// Translates `ia` as the MMU does: a cached leaf entry, else a walk from the deepest
    /// walk-cache entry covering `ia`, else from `root` (a table of `start_level`); what the
    /// walk read is cached.
    ///
    /// # Errors
    /// Where the walk stopped.
    pub fn translate(
        &mut self,
        regime: Regime,
        root: u64,
        start_level: u8,
        ia: u64,
    ) -> Result<Translation, WalkFault> {
        if let Some(t) = self.leaf(regime, ia) {
            return Ok(t);
        }
        if let Some(r) = self.resume(regime, ia) {
            return r;
        }
        let mem = self
            .mem
            .as_ref()
            .expect("Tlb::translate needs a TLB made by Tlb::new");
        let t = walk(mem, regime, root, start_level, ia)?;
        self.insert(regime, ia, t);
        Ok(t)
    }

    /// Caches `t`, the translation of `ia` that the caller walked, and the table descriptors
    /// its walk read. With memory to read, the walk is first done again under the TLB's lock:
    /// if the tables changed since (another CPU unlinked them and already issued its TLBI),
    /// nothing is cached, as on hardware a walk in flight cannot outlive the TLBI that
    /// removes what it read.
    pub fn fill(&mut self, regime: Regime, ia: u64, t: Translation) {
        if let Some(mem) = &self.mem {
            let Some(start) = t.tables.iter().position(Option::is_some) else {
                return;
            };
            let again = t.tables[start].map(|table| walk_from(mem, regime, table, start as u8, ia));
            if again != Some(Ok(t)) {
                return;
            }
        }
        self.insert(regime, ia, t);
    }

    fn insert(&mut self, regime: Regime, ia: u64, t: Translation) {
        let level = t.level;
        self.leaves.insert(
            (regime, level, align_down(ia, level)),
            TlbEntry {
                out_base: align_down(t.pa, level),
                t,
            },
        );
        for l in 0..level {
            if let (Some(_), Some(next)) = (t.tables[usize::from(l)], t.tables[usize::from(l) + 1])
            {
                self.walks.insert((regime, l, align_down(ia, l)), next);
            }
        }
    }

    /// A TLBI by input address `ia` in `regime`: `ttl` is the level hint (0 = none),
    /// `last_level_only` the `VALE2IS` form (see the [module documentation](self)).
    pub fn invalidate_va(&mut self, regime: Regime, ia: u64, ttl: u8, last_level_only: bool) {
        for level in 1..=3u8 {
            if ttl == 0 || ttl == level {
                self.leaves.remove(&(regime, level, align_down(ia, level)));
            }
        }
        if ttl == 0 && !last_level_only {
            for level in 0..3u8 {
                self.walks.remove(&(regime, level, align_down(ia, level)));
            }
        }
    }

    /// Drops every entry of `regime`, leaf and walk cache (`TLBI ALLE2IS`, `TLBI
    /// VMALLS12E1IS`).
    pub fn invalidate_regime(&mut self, regime: Regime) {
        self.leaves.retain(|k, _| k.0 != regime);
        self.walks.retain(|k, _| k.0 != regime);
    }

    /// Every cached leaf entry as `(regime, first input address, translation of that address)`.
    pub fn entries(&self) -> impl Iterator<Item = (Regime, u64, Translation)> + '_ {
        self.leaves.iter().map(|(&(regime, _, ia), e)| {
            let mut t = e.t;
            t.pa = e.out_base;
            (regime, ia, t)
        })
    }

    /// Every walk-cache entry as `(regime, level of the table descriptor, first input address
    /// of its range, the next-level table it points to)`.
    pub fn walk_entries(&self) -> impl Iterator<Item = (Regime, u8, u64, u64)> + '_ {
        self.walks
            .iter()
            .map(|(&(regime, level, ia), &table)| (regime, level, ia, table))
    }

    /// Number of cached entries, leaf and walk cache.
    #[must_use]
    pub fn len(&self) -> usize {
        self.leaves.len() + self.walks.len()
    }

    /// Whether the TLB is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty() && self.walks.is_empty()
    }
}

/// The descriptor at `level` that a walk from `root` (a table of `start_level`) reads for `ia`,
/// if the walk gets that far (every descriptor above it is a table descriptor).
#[must_use]
pub fn descriptor_at(
    mem: &SimMemory,
    root: u64,
    start_level: u8,
    ia: u64,
    level: u8,
) -> Option<u64> {
    if level < start_level {
        return None;
    }
    let mut table = root;
    let mut l = start_level;
    loop {
        let desc = mem.read_u64(table + ((ia >> level_shift(l)) & 511) * 8);
        if l == level {
            return Some(desc);
        }
        if !is_table_desc(desc, l) {
            return None;
        }
        table = desc & OA_MASK;
        l += 1;
    }
}

/// Calls `f(input_address, descriptor, level)` for every valid leaf of the tables at `root`.
pub fn for_each_leaf(mem: &SimMemory, root: u64, start_level: u8, mut f: impl FnMut(u64, u64, u8)) {
    fn rec(mem: &SimMemory, table: u64, level: u8, base: u64, f: &mut dyn FnMut(u64, u64, u8)) {
        for i in 0..512u64 {
            let desc = mem.read_u64(table + i * 8);
            if desc & 1 == 0 {
                continue;
            }
            let ia = base + (i << level_shift(level));
            if level < 3 && desc & 2 != 0 {
                rec(mem, desc & OA_MASK, level + 1, ia, f);
            } else {
                f(ia, desc, level);
            }
        }
    }
    rec(mem, root, start_level, 0, &mut f);
}

/// Calls `f(table_pa)` for every table page (root included) of the tables at `root`.
pub fn for_each_table(mem: &SimMemory, root: u64, start_level: u8, mut f: impl FnMut(u64)) {
    fn rec(mem: &SimMemory, table: u64, level: u8, f: &mut dyn FnMut(u64)) {
        f(table);
        if level == 3 {
            return;
        }
        for i in 0..512u64 {
            let desc = mem.read_u64(table + i * 8);
            if desc & 3 == 3 {
                rec(mem, desc & OA_MASK, level + 1, f);
            }
        }
    }
    rec(mem, root, start_level, &mut f);
}

#[cfg(test)]
#[path = "mmu_tests.rs"]
mod tests;
