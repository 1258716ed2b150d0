//! The [`Monitor`]: every event checked against the rules of the
//! [module documentation](super), as it happens.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;

use pkvm_arch::regs::Vttbr;
use pkvm_hyp::hyp::LockState;
use pkvm_hyp::platform::PhysMem;

use super::pending::{Pending, Stage, Table, granule};
use super::{Effect, Event, Root, SW_BITS, Stats, for_each_table};
use crate::mem::SimMemory;
use crate::mmu::{OA_MASK, Regime, is_table_desc};

/// What the monitor keeps per simulated CPU.
#[derive(Debug, Default)]
struct Cpu {
    pending: Vec<Pending>,
    /// A valid descriptor written (event, address) with no `DSB` since.
    valid_unsynced: Option<(u64, u64)>,
    /// Pages outside the live tables written since this CPU's last `DSB`.
    fresh: HashSet<u64>,
    /// The guest `VTTBR_EL2` loaded, if any (the host's otherwise).
    vttbr: Option<Vttbr>,
}

/// Events kept for the report of a violation.
const CONTEXT: usize = 16;
/// Violations kept per window (the first is what matters).
const MAX_VIOLATIONS: usize = 8;

/// The protocol monitor (see the [module documentation](self)).
#[derive(Debug, Default)]
pub struct Monitor {
    /// Whether [`Monitor::sync`] has run: before that, events are ignored.
    synced: bool,
    roots: Vec<Root>,
    /// Live table pages.
    tables: HashMap<u64, Table>,
    /// Unlinked table pages whose unlink is not yet invalidated, with the event that unlinked
    /// them.
    unlinked: HashMap<u64, (Table, u64)>,
    /// Guest regimes whose (empty) root stopped being tracked after a whole-VMID TLBI.
    retired: HashSet<Regime>,
    cpus: HashMap<u32, Cpu>,
    /// Events seen so far.
    n: u64,
    recent: VecDeque<(u64, Event)>,
    violations: Vec<String>,
    stats: Stats,
}

impl Monitor {
    /// A monitor that ignores events until [`Monitor::sync`].
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the monitor checks events (it has been synchronised).
    #[must_use]
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// What the monitor has seen.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Starts a window from the tables at `roots` in `mem` (as they are now). If a window was
    /// open, it is ended first: its end-of-call rules are checked, and the tables the monitor
    /// followed are compared with those in memory (a difference means a table changed without
    /// a store the monitor saw). Violations are kept for [`Monitor::take`].
    pub fn sync(&mut self, mem: &SimMemory, roots: &[Root]) {
        let mut tables = HashMap::new();
        for r in roots {
            for_each_table(mem, r.pa, r.start_level, |pa, level, base| {
                tables.insert(
                    pa,
                    Table {
                        regime: r.regime,
                        level,
                        base,
                    },
                );
            });
        }
        if self.synced {
            self.end_of_call();
            for r in roots {
                if self.retired.contains(&r.regime) || !self.roots.contains(r) {
                    continue;
                }
                let of = |t: &HashMap<u64, Table>| {
                    let mut v: Vec<_> = t
                        .iter()
                        .filter(|(_, x)| x.regime == r.regime)
                        .map(|(&p, &x)| (p, x))
                        .collect();
                    v.sort_by_key(|x| x.0);
                    v
                };
                let (seen, now) = (of(&self.tables), of(&tables));
                if seen != now {
                    self.violation(format!(
                        "the {:?} tables the monitor followed ({} pages) are not those in memory ({} pages): a table changed without a store the platform saw",
                        r.regime,
                        seen.len(),
                        now.len()
                    ));
                }
            }
        }
        self.tables = tables;
        self.roots = roots.to_vec();
        self.unlinked.clear();
        self.retired.clear();
        self.synced = true;
    }

    /// Ends a window (the end-of-call rules: nothing pending, every valid descriptor written
    /// made visible, the host's `VTTBR_EL2` back) and returns every violation found since the
    /// last [`Monitor::take`]. The monitor keeps following the tables.
    ///
    /// # Errors
    /// The violations, each with the events that led to it.
    pub fn finish(&mut self) -> Result<(), String> {
        self.end_of_call();
        self.take()
    }

    /// The violations found since the last call.
    ///
    /// # Errors
    /// The violations, each with the events that led to it.
    pub fn take(&mut self) -> Result<(), String> {
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(std::mem::take(&mut self.violations).join("\n"))
        }
    }

    fn end_of_call(&mut self) {
        if !self.synced {
            return;
        }
        self.stats.windows += 1;
        let mut cpus: Vec<_> = self.cpus.drain().collect();
        cpus.sort_by_key(|c| c.0);
        for (id, cpu) in cpus {
            for p in &cpu.pending {
                let why = match p.stage {
                    Stage::Written => {
                        "no DSB made the write visible, so no TLBI after one could count"
                            .to_string()
                    }
                    Stage::Synced => match &p.miss {
                        Some(m) => format!("no TLBI covered it ({m})"),
                        None => "no TLBI covered it".to_string(),
                    },
                    Stage::Invalidated => "its TLBI was not completed by a DSB ISH".to_string(),
                };
                self.violation(format!(
                    "cpu {id} returned with the invalidation of the {} incomplete: {why}",
                    p.describe()
                ));
            }
            if let Some((e, pa)) = cpu.valid_unsynced {
                self.violation(format!(
                    "cpu {id} returned without a DSB after the valid descriptor written at {pa:#x} (event {e})"
                ));
            }
            if let Some(v) = cpu.vttbr {
                self.violation(format!(
                    "cpu {id} returned with the guest VTTBR {:#x} (VMID {}) still loaded",
                    v.bits(),
                    v.vmid()
                ));
            }
        }
        // Whatever was unlinked and not invalidated has been reported.
        self.unlinked.clear();
    }

    fn violation(&mut self, what: String) {
        self.stats.violations += 1;
        if self.violations.len() >= MAX_VIOLATIONS {
            return;
        }
        let mut s = format!("page-table protocol: {what}");
        // The events that led to the first violation; the others follow from the same ones.
        if self.violations.is_empty() && !self.recent.is_empty() {
            s.push_str("\n  events before it:");
            for (i, e) in &self.recent {
                let _ = write!(s, "\n    #{i} cpu {}: {:x?}", e.cpu, e.effect);
            }
        }
        self.violations.push(s);
    }

    /// Checks one event. `mem` is the memory after it (the monitor reads the contents of a
    /// table page when it is linked or unlinked).
    pub fn step(&mut self, mem: &SimMemory, ev: Event) {
        if !self.synced {
            return;
        }
        self.n += 1;
        self.stats.events += 1;
        if self.recent.len() >= CONTEXT {
            self.recent.pop_front();
        }
        self.recent.push_back((self.n, ev));
        let cpu = ev.cpu;
        match ev.effect {
            Effect::Write {
                pa,
                old,
                new,
                locks,
            } => self.write(mem, cpu, pa, old, new, locks),
            Effect::DsbIshst => self.dsb(cpu, false),
            Effect::DsbIsh => self.dsb(cpu, true),
            Effect::Isb => {}
            Effect::TlbiEl2 {
                va,
                ttl,
                last_level_only,
            } => self.tlbi_va(cpu, Regime::El2, va, ttl, last_level_only),
            Effect::TlbiS2 { ipa, ttl } => {
                let regime = self.s2_regime(cpu);
                self.tlbi_va(cpu, regime, ipa, ttl, false);
            }
            Effect::TlbiEl2All => self.tlbi_all(mem, cpu, Regime::El2),
            Effect::TlbiS2All => {
                let regime = self.s2_regime(cpu);
                self.tlbi_all(mem, cpu, regime);
            }
            Effect::LoadVttbr(v) => self.load_vttbr(cpu, v),
            Effect::RestoreVttbr => self.cpus.entry(cpu).or_default().vttbr = None,
        }
    }

    /// The stage-2 regime a TLBI on `cpu` acts on: the VMID in its `VTTBR_EL2`.
    fn s2_regime(&mut self, cpu: u32) -> Regime {
        Regime::Stage2(
            self.cpus
                .entry(cpu)
                .or_default()
                .vttbr
                .map_or(0, Vttbr::vmid),
        )
    }

    fn load_vttbr(&mut self, cpu: u32, v: Vttbr) {
        let regime = Regime::Stage2(v.vmid());
        let known = self.roots.iter().find(|r| r.regime == regime).map(|r| r.pa);
        let other = self
            .roots
            .iter()
            .find(|r| r.pa == v.root() && r.regime != regime)
            .map(|r| r.regime);
        if let Some(root) = known
            && root != v.root()
        {
            self.violation(format!(
                "VTTBR {:#x} loaded for VMID {}: its stage-2 root is {root:#x}, not {:#x}",
                v.bits(),
                v.vmid(),
                v.root()
            ));
        } else if let Some(o) = other {
            self.violation(format!(
                "VTTBR {:#x} loaded for VMID {} with the root of {o:?}",
                v.bits(),
                v.vmid()
            ));
        }
        let c = self.cpus.entry(cpu).or_default();
        if let Some(prev) = c.vttbr {
            let msg = format!(
                "VTTBR for VMID {} loaded while VMID {}'s was (not restored)",
                v.vmid(),
                prev.vmid()
            );
            c.vttbr = Some(v);
            self.violation(msg);
        } else {
            c.vttbr = Some(v);
        }
    }

    fn write(
        &mut self,
        mem: &SimMemory,
        cpu: u32,
        pa: u64,
        old: u64,
        new: u64,
        locks: Option<LockState>,
    ) {
        let page = pa & !0xfff;
        if let Some(&(t, e)) = self.unlinked.get(&page) {
            self.check_lock(t.regime, locks, pa);
            if old != new {
                self.violation(format!(
                    "table page {page:#x} ({:?} L{}, unlinked at event {e}) written ({pa:#x}: {old:#x} -> {new:#x}) before its unlink was invalidated: freed or reused too early",
                    t.regime, t.level
                ));
            }
            return;
        }
        let Some(&t) = self.tables.get(&page) else {
            self.cpus.entry(cpu).or_default().fresh.insert(page);
            return;
        };
        self.stats.descriptor_writes += 1;
        self.check_lock(t.regime, locks, pa);
        let level = t.level;
        let base = t.entry_base(pa);
        let valid = |d: u64| d & 1 != 0;
        if valid(new)
            && let Some(p) = self
                .cpus
                .values()
                .flat_map(|c| &c.pending)
                .find(|p| p.ptep == pa)
        {
            let p = p.describe();
            self.violation(format!(
                "{pa:#x} made valid ({new:#x}) before the invalidation of the {p} completed"
            ));
        }
        if valid(new) && !is_table_desc(new, level) && !(valid(old) && (old ^ new) & OA_MASK == 0) {
            self.check_hand_over(t.regime, level, pa, new);
        }
        if valid(old) && (old ^ new) & !SW_BITS != 0 {
            if valid(new) {
                self.violation(format!(
                    "valid {:?} L{level} entry for {base:#x} at {pa:#x} changed {old:#x} -> {new:#x} without break-before-make",
                    t.regime
                ));
            }
            let child = is_table_desc(old, level).then_some(old & OA_MASK);
            self.remove(mem, cpu, t.regime, level, base, pa, old, child);
        }
        if valid(new) {
            self.cpus.entry(cpu).or_default().valid_unsynced = Some((self.n, pa));
        }
        if is_table_desc(new, level)
            && !(is_table_desc(old, level) && old & OA_MASK == new & OA_MASK)
        {
            self.link(mem, cpu, t, base, pa, new & OA_MASK);
        }
    }

    /// Rule 7: the leaf `new` written at `pa` (at `level` of a `regime` table) maps memory
    /// that a pending leaf of another regime may still reach.
    fn check_hand_over(&mut self, regime: Regime, level: u8, pa: u64, new: u64) {
        let size = granule(level);
        let oa = new & OA_MASK & !(size - 1);
        let Some(p) = self.cpus.values().flat_map(|c| &c.pending).find(|p| {
            let psize = granule(p.level);
            let poa = p.old & OA_MASK & !(psize - 1);
            p.regime != regime && p.child.is_none() && poa < oa + size && oa < poa + psize
        }) else {
            return;
        };
        let p = p.describe();
        self.violation(format!(
            "{regime:?} L{level} leaf at {pa:#x} maps [{oa:#x}, {:#x}) ({new:#x}) while the invalidation of the {p} is incomplete: the memory is handed over while a TLB may still reach it",
            oa + size
        ));
    }

    fn check_lock(&mut self, regime: Regime, locks: Option<LockState>, pa: u64) {
        let Some(l) = locks else { return };
        let (held, name) = match regime {
            Regime::El2 => (l.hyp, "hyp"),
            Regime::Stage2(0) => (l.host, "host"),
            Regime::Stage2(_) => (l.vms, "VM table"),
        };
        if !held {
            self.violation(format!(
                "{regime:?} table written at {pa:#x} without the {name} lock (locks: {l:?})"
            ));
        }
    }

    /// The valid entry at `ptep` (`old`, covering `base` at `level`) was removed: it is
    /// pending, and so is every valid entry below it if it was a table descriptor.
    #[expect(clippy::too_many_arguments, reason = "one entry's coordinates")]
    fn remove(
        &mut self,
        mem: &SimMemory,
        cpu: u32,
        regime: Regime,
        level: u8,
        base: u64,
        ptep: u64,
        old: u64,
        child: Option<u64>,
    ) {
        let event = self.n;
        self.cpus.entry(cpu).or_default().pending.push(Pending {
            regime,
            level,
            base,
            ptep,
            old,
            child,
            stage: Stage::Written,
            event,
            miss: None,
        });
        let Some(child) = child else { return };
        let Some(t) = self.tables.remove(&child) else {
            return;
        };
        self.unlinked.insert(child, (t, event));
        // What the unlinked table still maps stays cached until invalidated too.
        for i in 0..512u64 {
            let ptep = child + i * 8;
            let d = mem.read_u64(ptep);
            if d & 1 != 0 {
                let c = is_table_desc(d, t.level).then_some(d & OA_MASK);
                self.remove(mem, cpu, regime, t.level, t.entry_base(ptep), ptep, d, c);
            }
        }
    }

    /// `child` was linked at `ptep` in `parent` (covering `base`).
    fn link(&mut self, mem: &SimMemory, cpu: u32, parent: Table, base: u64, ptep: u64, child: u64) {
        if let Some(&(t, e)) = self.unlinked.get(&child) {
            self.violation(format!(
                "table page {child:#x} ({:?} L{}, unlinked at event {e}) linked again at {ptep:#x} before its unlink was invalidated",
                t.regime, t.level
            ));
            return;
        }
        if let Some(t) = self.tables.get(&child) {
            let t = *t;
            self.violation(format!(
                "table page {child:#x} linked at {ptep:#x} while it is a live {:?} L{} table for {:#x}",
                t.regime, t.level, t.base
            ));
            return;
        }
        if !mem.is_ram(child) {
            self.violation(format!(
                "table descriptor at {ptep:#x} points to {child:#x}, which is not RAM"
            ));
            return;
        }
        if self.cpus.entry(cpu).or_default().fresh.contains(&child) {
            self.violation(format!(
                "table page {child:#x} linked at {ptep:#x} before a DSB made its contents visible"
            ));
        }
        let t = Table {
            regime: parent.regime,
            level: parent.level + 1,
            base,
        };
        // A table linked with tables already below it brings them along.
        for_each_table(mem, child, t.level, |pa, level, off| {
            self.tables.insert(
                pa,
                Table {
                    regime: t.regime,
                    level,
                    base: base + off,
                },
            );
        });
    }

    fn dsb(&mut self, cpu: u32, ish: bool) {
        let c = self.cpus.entry(cpu).or_default();
        let mut done = Vec::new();
        if ish {
            c.pending.retain(|p| {
                if p.stage == Stage::Invalidated {
                    done.push(p.child);
                    false
                } else {
                    true
                }
            });
        }
        for p in &mut c.pending {
            if p.stage == Stage::Written {
                p.stage = Stage::Synced;
            }
        }
        c.fresh.clear();
        c.valid_unsynced = None;
        self.stats.invalidations += done.len() as u64;
        for child in done.into_iter().flatten() {
            self.unlinked.remove(&child);
        }
    }

    fn tlbi_va(&mut self, cpu: u32, regime: Regime, ia: u64, ttl: u8, last_level_only: bool) {
        let n = self.n;
        let c = self.cpus.entry(cpu).or_default();
        for p in &mut c.pending {
            if p.stage == Stage::Invalidated {
                continue;
            }
            match p.covered_by(regime, ia, ttl, last_level_only) {
                Ok(()) => p.stage = Stage::Invalidated,
                Err(Some(why)) => p.miss = Some(format!("event {n}: {why}")),
                Err(None) => {}
            }
        }
    }

    fn tlbi_all(&mut self, mem: &SimMemory, cpu: u32, regime: Regime) {
        let n = self.n;
        let c = self.cpus.entry(cpu).or_default();
        for p in &mut c.pending {
            if p.regime != regime {
                continue;
            }
            match p.stage {
                Stage::Synced => p.stage = Stage::Invalidated,
                Stage::Written => {
                    p.miss = Some(format!(
                        "event {n}: the TLBI of all {regime:?} was issued before a DSB made the write visible"
                    ));
                }
                _ => {}
            }
        }
        // A guest whose stage-2 is empty when its whole VMID is invalidated is being torn down
        // (or has nothing mapped): its root stops being tracked until the next sync, so that
        // the memcache pages, once returned, may be reused without looking like tables.
        if let Regime::Stage2(vmid) = regime
            && vmid != 0
            && let Some(r) = self.roots.iter().find(|r| r.regime == regime)
            && self.tables.get(&r.pa).is_some_and(|t| t.regime == regime)
            && (0..512).all(|i| mem.read_u64(r.pa + i * 8) == 0)
        {
            self.tables.remove(&r.pa);
            self.retired.insert(regime);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_entry_is_covered_only_by_a_non_leaf_unhinted_tlbi() {
        let p = Pending {
            regime: Regime::El2,
            level: 2,
            base: 0x4000_0000,
            ptep: 0,
            old: 0,
            child: Some(0x1000),
            stage: Stage::Synced,
            event: 0,
            miss: None,
        };
        assert_eq!(p.covered_by(Regime::El2, 0x4000_1000, 0, false), Ok(()));
        assert!(p.covered_by(Regime::El2, 0x4000_1000, 0, true).is_err());
        assert!(p.covered_by(Regime::El2, 0x4000_1000, 3, false).is_err());
        assert!(
            p.covered_by(Regime::Stage2(0), 0x4000_1000, 0, false)
                .is_err()
        );
        assert_eq!(p.covered_by(Regime::El2, 0x4020_0000, 0, false), Err(None));
    }
}
