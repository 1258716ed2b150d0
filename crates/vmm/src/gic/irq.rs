//! The state of a bank of interrupts — one vCPU's SGIs and PPIs (INTIDs 0..32) or the
//! distributor's SPIs — as bitmaps of 32-bit words indexed by INTID, and the architecture's
//! pending semantics over them (IHI 0069, "Interrupt handling state machine"):
//!
//! * an **edge-triggered** interrupt is pending while its pending latch is set: a rising edge
//!   of its input, an `ISPENDR` write or an SGI sets it, an `ICPENDR` write or the acknowledge
//!   clears it;
//! * a **level-sensitive** interrupt is pending while its input line is asserted *or* its latch
//!   (set by an `ISPENDR` write) is set; `ICPENDR` and acknowledge clear only the latch, so a
//!   level interrupt whose line is still high stays pending (active and pending once
//!   acknowledged).

use alloc::vec;
use alloc::vec::Vec;

use super::Pending;
use super::regs::BitReg;

/// One bank of interrupts: INTIDs `first..end` are implemented, the others of its words are
/// RAZ/WI.
#[derive(Clone, Debug)]
pub(super) struct IrqBank {
    /// First implemented INTID.
    first: u32,
    /// One past the last implemented INTID.
    end: u32,
    /// `IGROUPR`: 1 = Group 1.
    group: Vec<u32>,
    /// `IS/ICENABLER`.
    enable: Vec<u32>,
    /// The pending latch (edge events, `ISPENDR` writes, SGIs).
    latch: Vec<u32>,
    /// The input lines (meaningful for level-sensitive interrupts).
    line: Vec<u32>,
    /// `IS/ICACTIVER`.
    active: Vec<u32>,
    /// `ICFGR` Int_config: 1 = edge-triggered.
    edge: Vec<u32>,
    /// `IPRIORITYR`: all 8 bits implemented.
    priority: Vec<u8>,
}

/// The word and bit of an INTID.
const fn bit(intid: u32) -> (usize, u32) {
    ((intid / 32) as usize, 1 << (intid % 32))
}

impl IrqBank {
    /// A bank implementing INTIDs `first..end`, in its reset state: Group 0, disabled, not
    /// pending, not active, priority 0, level-sensitive except the SGIs (always edge).
    pub(super) fn new(first: u32, end: u32) -> Self {
        let words = end.div_ceil(32) as usize;
        let mut bank = Self {
            first,
            end,
            group: vec![0; words],
            enable: vec![0; words],
            latch: vec![0; words],
            line: vec![0; words],
            active: vec![0; words],
            edge: vec![0; words],
            priority: vec![0; words * 32],
        };
        for intid in first..end.min(16) {
            let (w, b) = bit(intid);
            bank.edge[w] |= b;
        }
        bank
    }

    /// Whether `intid` is implemented in this bank.
    pub(super) fn contains(&self, intid: u32) -> bool {
        (self.first..self.end).contains(&intid)
    }

    /// The implemented bits of word `word` (0 past the bank).
    fn mask(&self, word: usize) -> u32 {
        let Ok(word) = u32::try_from(word) else {
            return 0;
        };
        let (lo, hi) = (
            word.saturating_mul(32),
            word.saturating_mul(32).saturating_add(32),
        );
        let (from, to) = (lo.max(self.first), hi.min(self.end));
        if from >= to {
            return 0;
        }
        let width = to - from;
        let ones = if width == 32 {
            u32::MAX
        } else {
            (1 << width) - 1
        };
        ones << (from - lo)
    }

    /// The pending state of word `word`: the latch, and the line of level-sensitive ones.
    fn pending_word(&self, word: usize) -> u32 {
        (self.latch[word] | (self.line[word] & !self.edge[word])) & self.mask(word)
    }

    /// Reads word `word` of a bitmap register (0 for words outside the bank).
    pub(super) fn read_bits(&self, reg: BitReg, word: usize) -> u32 {
        if self.mask(word) == 0 {
            return 0;
        }
        let value = match reg {
            BitReg::Group => self.group[word],
            BitReg::SetEnable | BitReg::ClearEnable => self.enable[word],
            BitReg::SetPending | BitReg::ClearPending => self.pending_word(word),
            BitReg::SetActive | BitReg::ClearActive => self.active[word],
        };
        value & self.mask(word)
    }

    /// Writes word `word` of a bitmap register (ignored outside the bank; unimplemented bits
    /// ignored).
    pub(super) fn write_bits(&mut self, reg: BitReg, word: usize, value: u32) {
        let mask = self.mask(word);
        if mask == 0 {
            return;
        }
        let v = value & mask;
        match reg {
            BitReg::Group => self.group[word] = (self.group[word] & !mask) | v,
            BitReg::SetEnable => self.enable[word] |= v,
            BitReg::ClearEnable => self.enable[word] &= !v,
            BitReg::SetPending => self.latch[word] |= v,
            BitReg::ClearPending => self.latch[word] &= !v,
            BitReg::SetActive => self.active[word] |= v,
            BitReg::ClearActive => self.active[word] &= !v,
        }
    }

    /// The priority of `intid` (0 if not implemented).
    pub(super) fn priority(&self, intid: u32) -> u8 {
        if self.contains(intid) {
            self.priority[intid as usize]
        } else {
            0
        }
    }

    /// Sets the priority of `intid` (ignored if not implemented).
    pub(super) fn set_priority(&mut self, intid: u32, priority: u8) {
        if self.contains(intid) {
            self.priority[intid as usize] = priority;
        }
    }

    /// Reads `ICFGR<n>` (INTIDs `16n..16n+16`): Int_config (bit `2F+1`) is 1 for edge; the
    /// reserved bit `2F` reads 0.
    pub(super) fn read_cfg(&self, n: u32) -> u32 {
        (0..16).fold(0, |acc, f| {
            let intid = n.saturating_mul(16).saturating_add(f);
            if self.contains(intid) && self.edge[bit(intid).0] & bit(intid).1 != 0 {
                acc | 1 << (2 * f + 1)
            } else {
                acc
            }
        })
    }

    /// Writes `ICFGR<n>`: sets each implemented INTID's Int_config; SGIs (INTIDs 0..16) stay
    /// edge-triggered, reserved bits are ignored.
    pub(super) fn write_cfg(&mut self, n: u32, value: u32) {
        for f in 0..16 {
            let intid = n.saturating_mul(16).saturating_add(f);
            if intid < 16 || !self.contains(intid) {
                continue;
            }
            let (w, b) = bit(intid);
            if value & (1 << (2 * f + 1)) != 0 {
                self.edge[w] |= b;
            } else {
                self.edge[w] &= !b;
            }
        }
    }

    /// Drives the input line of `intid`: a rising edge latches an edge-triggered interrupt; a
    /// level-sensitive one is pending while the line is high.
    pub(super) fn set_line(&mut self, intid: u32, level: bool) {
        if !self.contains(intid) {
            return;
        }
        let (w, b) = bit(intid);
        if level {
            if self.line[w] & b == 0 && self.edge[w] & b != 0 {
                self.latch[w] |= b;
            }
            self.line[w] |= b;
        } else {
            self.line[w] &= !b;
        }
    }

    /// Sets the pending latch of `intid` (an SGI, or a software-generated pending state).
    pub(super) fn set_pending(&mut self, intid: u32) {
        if self.contains(intid) {
            let (w, b) = bit(intid);
            self.latch[w] |= b;
        }
    }

    /// Acknowledges `intid` if it is pending and not active: it becomes active and its latch
    /// clears (a level interrupt whose line is high stays pending). Returns whether it did.
    pub(super) fn acknowledge(&mut self, intid: u32) -> bool {
        if !self.contains(intid) {
            return false;
        }
        let (w, b) = bit(intid);
        if self.pending_word(w) & b == 0 || self.active[w] & b != 0 {
            return false;
        }
        self.active[w] |= b;
        self.latch[w] &= !b;
        true
    }

    /// Clears the active state of `intid`.
    pub(super) fn deactivate(&mut self, intid: u32) {
        if self.contains(intid) {
            let (w, b) = bit(intid);
            self.active[w] &= !b;
        }
    }

    /// The highest-priority (lowest value; ties: lowest INTID) interrupt of this bank that is
    /// pending, enabled, not active, of an enabled group (`grp0`, `grp1`) and accepted by
    /// `routed`.
    pub(super) fn best(
        &self,
        grp0: bool,
        grp1: bool,
        routed: impl Fn(u32) -> bool,
    ) -> Option<Pending> {
        let mut best: Option<Pending> = None;
        for word in 0..self.group.len() {
            let groups = match (grp0, grp1) {
                (true, true) => u32::MAX,
                (true, false) => !self.group[word],
                (false, true) => self.group[word],
                (false, false) => return None,
            };
            let mut candidates =
                self.pending_word(word) & self.enable[word] & !self.active[word] & groups;
            while candidates != 0 {
                let b = candidates.trailing_zeros();
                candidates &= candidates - 1;
                let intid = word as u32 * 32 + b;
                let priority = self.priority[intid as usize];
                if best.is_some_and(|p| p.priority <= priority) || !routed(intid) {
                    continue;
                }
                let group = u8::from(self.group[word] & (1 << b) != 0);
                best = Some(Pending {
                    intid,
                    priority,
                    group,
                });
            }
        }
        best
    }
}
