//! An MMU model: an independent descriptor walker (written from the Arm ARM field layout, not
//! shared with `pkvm-pgtable`) plus a TLB that keeps translations until they are invalidated.
//!
//! Accesses in the simulator go through the TLB first, like hardware. A hypervisor that changes
//! a valid entry without the right TLBI therefore leaves a stale translation behind, and the
//! next access through it succeeds where the spec says it must fault.

use std::collections::HashMap;

use crate::mem::SimMemory;
use pkvm_hyp::platform::PhysMem;

/// Which translation regime an access uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Regime {
    /// The EL2 stage-1 (hyp).
    El2,
    /// A stage-2 (host: VMID 0).
    Stage2(u16),
}

/// A translation: output address and permissions.
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
}

/// Why a walk failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkFault {
    /// Level at which the walk found an invalid entry (or a malformed one).
    pub level: u8,
    /// The descriptor found there.
    pub desc: u64,
}

const OA_MASK: u64 = 0x0000_FFFF_FFFF_F000;

/// log2 of the size mapped by one entry at `level`.
#[must_use]
pub fn level_shift(level: u8) -> u32 {
    12 + 9 * (3 - u32::from(level))
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
    let mut table = root;
    let mut level = start_level;
    loop {
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

/// A cached translation, covering `[base, base + size)` of input addresses.
#[derive(Clone, Copy, Debug)]
struct TlbEntry {
    out_base: u64,
    t: Translation,
}

/// A TLB: translations keyed by regime and block-aligned input address, per block size.
#[derive(Debug, Default)]
pub struct Tlb {
    entries: HashMap<(Regime, u8, u64), TlbEntry>,
}

impl Tlb {
    /// Looks up a cached translation for `ia`.
    #[must_use]
    pub fn lookup(&self, regime: Regime, ia: u64) -> Option<Translation> {
        for level in [3u8, 2, 1] {
            let mask = (1u64 << level_shift(level)) - 1;
            if let Some(e) = self.entries.get(&(regime, level, ia & !mask)) {
                let mut t = e.t;
                t.pa = e.out_base | (ia & mask);
                return Some(t);
            }
        }
        None
    }

    /// Caches `t`, the translation of `ia`.
    pub fn fill(&mut self, regime: Regime, ia: u64, t: Translation) {
        let mask = (1u64 << level_shift(t.level)) - 1;
        self.entries.insert(
            (regime, t.level, ia & !mask),
            TlbEntry {
                out_base: t.pa & !mask,
                t,
            },
        );
    }

    /// `TLBI` by input address: drops every cached entry whose range contains `ia`.
    pub fn invalidate_addr(&mut self, regime: Regime, ia: u64) {
        for level in [3u8, 2, 1] {
            let mask = (1u64 << level_shift(level)) - 1;
            self.entries.remove(&(regime, level, ia & !mask));
        }
    }

    /// Drops every entry of `regime`.
    pub fn invalidate_regime(&mut self, regime: Regime) {
        self.entries.retain(|k, _| k.0 != regime);
    }

    /// Every cached entry as `(regime, first input address, translation of that address)`.
    pub fn entries(&self) -> impl Iterator<Item = (Regime, u64, Translation)> + '_ {
        self.entries.iter().map(|(&(regime, _, ia), e)| {
            let mut t = e.t;
            t.pa = e.out_base;
            (regime, ia, t)
        })
    }

    /// Number of cached entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the TLB is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
