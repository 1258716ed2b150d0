//! A valid entry removed from a live table and what its invalidation has done so far; which
//! by-address TLBI covers it (rule 3 of the [module documentation](super)).

use crate::mmu::{Regime, level_shift};

/// A live (or unlinked) table page: its regime, level and the first input address it maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Table {
    pub(super) regime: Regime,
    pub(super) level: u8,
    pub(super) base: u64,
}

impl Table {
    /// The input address where the entry at `pa` (in this page) begins.
    pub(super) fn entry_base(self, pa: u64) -> u64 {
        self.base + ((pa & 0xfff) >> 3) * granule(self.level)
    }
}

pub(super) fn granule(level: u8) -> u64 {
    1 << level_shift(level)
}

/// How far a pending entry's invalidation has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// Cleared (or unlinked); no `DSB` since.
    Written,
    /// A `DSB` made the write visible; no covering TLBI yet.
    Synced,
    /// A covering TLBI was issued; no `DSB ISH` yet.
    Invalidated,
}

/// A valid entry removed from a live table, waiting for its invalidation.
#[derive(Clone, Debug)]
pub(super) struct Pending {
    pub(super) regime: Regime,
    pub(super) level: u8,
    pub(super) base: u64,
    pub(super) ptep: u64,
    pub(super) old: u64,
    /// The table page the entry pointed to, if it was a table descriptor.
    pub(super) child: Option<u64>,
    pub(super) stage: Stage,
    /// The event that removed it.
    pub(super) event: u64,
    /// The last TLBI that came close but did not cover it, and why.
    pub(super) miss: Option<String>,
}

impl Pending {
    pub(super) fn describe(&self) -> String {
        let what = match self.child {
            Some(c) => format!("table entry (-> table {c:#x})"),
            None => "leaf".to_string(),
        };
        format!(
            "{:?} L{} {what} for [{:#x}, {:#x}) at {:#x} (was {:#x}, removed at event {})",
            self.regime,
            self.level,
            self.base,
            self.base + granule(self.level),
            self.ptep,
            self.old,
            self.event
        )
    }

    /// Whether a by-address TLBI of `regime` at `ia` with hint `ttl` invalidates this entry;
    /// otherwise why not (`None`: the TLBI is about something else).
    pub(super) fn covered_by(
        &self,
        regime: Regime,
        ia: u64,
        ttl: u8,
        last_level_only: bool,
    ) -> Result<(), Option<String>> {
        if ia < self.base || ia - self.base >= granule(self.level) {
            return Err(None);
        }
        if regime != self.regime {
            return Err(Some(format!(
                "the TLBI at {ia:#x} was for {regime:?}, the entry is {:?}",
                self.regime
            )));
        }
        if self.stage == Stage::Written {
            return Err(Some(format!(
                "the TLBI at {ia:#x} was issued before a DSB made the write visible"
            )));
        }
        match self.child {
            Some(_) if last_level_only => Err(Some(format!(
                "the TLBI at {ia:#x} was last-level only (VALE2IS): it leaves the walk caches of a table entry"
            ))),
            Some(_) if ttl != 0 => Err(Some(format!(
                "the TLBI at {ia:#x} had level hint {ttl}: a hint names a leaf's level, a table entry needs hint 0"
            ))),
            None if ttl != 0 && ttl != self.level => Err(Some(format!(
                "the TLBI at {ia:#x} had level hint {ttl}, the entry is a level-{} leaf",
                self.level
            ))),
            _ => Ok(()),
        }
    }
}
