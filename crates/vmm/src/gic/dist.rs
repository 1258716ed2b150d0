//! The distributor (GICD) frame: decoding of guest reads and writes at an offset in the
//! [`GICD_SIZE`] frame into the [`Gic`]'s state. With affinity routing on, the SGI/PPI parts
//! of the distributor's per-INTID registers (INTIDs 0..32) are RAZ/WI: those live in the
//! redistributors.

use super::regs::{self, decode_bitmap, id_register};
use super::{GICD_SIZE, Gic};

impl Gic {
    /// A guest read of `size` bytes (1, 2, 4 or 8) at `offset` in the distributor frame.
    /// Accesses the architecture does not define (size, alignment, reserved offset, past the
    /// frame) read as 0.
    pub fn dist_read(&self, offset: u64, size: u8) -> u64 {
        if offset >= GICD_SIZE {
            return 0;
        }
        match size {
            1 => self.dist_read8(offset).into(),
            4 if offset.is_multiple_of(4) => self.dist_read32(offset).into(),
            8 if offset.is_multiple_of(8) => {
                self.irouter_index(offset).map_or(0, |i| self.irouter[i])
            }
            _ => 0,
        }
    }

    /// A guest write of the low `size` bytes (1, 2, 4 or 8) of `value` at `offset` in the
    /// distributor frame. Accesses the architecture does not define are ignored.
    pub fn dist_write(&mut self, offset: u64, size: u8, value: u64) {
        if offset >= GICD_SIZE {
            return;
        }
        match size {
            1 => self.dist_write8(offset, value as u8),
            4 if offset.is_multiple_of(4) => self.dist_write32(offset, value as u32),
            8 if offset.is_multiple_of(8) => {
                if let Some(i) = self.irouter_index(offset) {
                    self.irouter[i] = value & regs::IROUTER_MASK;
                }
            }
            _ => {}
        }
    }

    /// The index in `irouter` of the SPI whose `GICD_IROUTER<n>` is at the 8-byte aligned
    /// `offset` (`None` for `n` < 32 and unimplemented SPIs).
    fn irouter_index(&self, offset: u64) -> Option<usize> {
        let n = offset.checked_sub(regs::GICD_IROUTER)? / 8;
        let i = usize::try_from(n.checked_sub(32)?).ok()?;
        (i < self.irouter.len()).then_some(i)
    }

    /// The INTID whose `GICD_IPRIORITYR` byte is at `offset`, if in that block.
    fn priority_intid(offset: u64) -> Option<u32> {
        (regs::GICD_IPRIORITYR..regs::GICD_IPRIORITYR_END)
            .contains(&offset)
            .then(|| (offset - regs::GICD_IPRIORITYR) as u32)
    }

    /// A byte read: only the `IPRIORITYR`s are byte-accessible.
    fn dist_read8(&self, offset: u64) -> u8 {
        Self::priority_intid(offset).map_or(0, |intid| self.spis.priority(intid))
    }

    /// A byte write: only the `IPRIORITYR`s are byte-accessible.
    fn dist_write8(&mut self, offset: u64, value: u8) {
        if let Some(intid) = Self::priority_intid(offset) {
            self.spis.set_priority(intid, value);
        }
    }

    /// A 32-bit read at a word-aligned offset in the frame.
    fn dist_read32(&self, offset: u64) -> u32 {
        if let Some((reg, word)) = decode_bitmap(offset) {
            return self.spis.read_bits(reg, word);
        }
        if let Some(intid) = Self::priority_intid(offset) {
            return (0..4).fold(0, |acc, k| {
                acc | u32::from(self.spis.priority(intid + k)) << (8 * k)
            });
        }
        if (regs::GICD_ICFGR..regs::GICD_ICFGR_END).contains(&offset) {
            return self.spis.read_cfg(((offset - regs::GICD_ICFGR) / 4) as u32);
        }
        if let Some(i) = self.irouter_index(offset & !7) {
            let r = self.irouter[i];
            return if offset.is_multiple_of(8) {
                r as u32
            } else {
                (r >> 32) as u32
            };
        }
        match offset {
            regs::GICD_CTLR => self.ctlr | regs::CTLR_ARE | regs::CTLR_DS,
            regs::GICD_TYPER => self.it_lines | regs::TYPER_IDBITS | regs::TYPER_A3V,
            regs::GICD_IIDR => regs::IIDR,
            regs::GICD_TYPER2 => 0,
            _ => id_register(offset).unwrap_or(0),
        }
    }

    /// A 32-bit write at a word-aligned offset in the frame.
    fn dist_write32(&mut self, offset: u64, value: u32) {
        if let Some((reg, word)) = decode_bitmap(offset) {
            self.spis.write_bits(reg, word, value);
        } else if let Some(intid) = Self::priority_intid(offset) {
            for (k, byte) in (0..4).zip(value.to_le_bytes()) {
                self.spis.set_priority(intid + k, byte);
            }
        } else if (regs::GICD_ICFGR..regs::GICD_ICFGR_END).contains(&offset) {
            self.spis
                .write_cfg(((offset - regs::GICD_ICFGR) / 4) as u32, value);
        } else if let Some(i) = self.irouter_index(offset & !7) {
            let r = &mut self.irouter[i];
            *r = if offset.is_multiple_of(8) {
                (*r & !0xffff_ffff) | u64::from(value)
            } else {
                (*r & 0xffff_ffff) | u64::from(value) << 32
            } & regs::IROUTER_MASK;
        } else if offset == regs::GICD_CTLR {
            self.ctlr = value & (regs::CTLR_ENABLE_GRP0 | regs::CTLR_ENABLE_GRP1);
        }
    }
}
