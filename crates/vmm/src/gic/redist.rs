//! The redistributor (GICR) frames: decoding of guest reads and writes at an offset in the
//! redistributor region (one [`GICR_FRAME_SIZE`] frame per vCPU, RD_base then SGI_base) into
//! the [`Gic`]'s state.

use super::regs::{self, decode_bitmap, id_register};
use super::{GICR_FRAME_SIZE, Gic, Redist};

impl Gic {
    /// A guest read of `size` bytes (1, 2, 4 or 8) at `offset` in the redistributor region
    /// (vCPU `offset / GICR_FRAME_SIZE`). Accesses the architecture does not define (size,
    /// alignment, reserved offset, past the last vCPU's frame) read as 0.
    pub fn redist_read(&self, offset: u64, size: u8) -> u64 {
        let Some((vcpu, off)) = self.redist_frame(offset) else {
            return 0;
        };
        let r = &self.redists[vcpu];
        match size {
            1 => Self::sgi_priority_intid(off).map_or(0, |intid| r.private.priority(intid).into()),
            4 if off.is_multiple_of(4) => self.redist_read32(vcpu, off).into(),
            8 if off == regs::GICR_TYPER => self.gicr_typer(vcpu),
            _ => 0,
        }
    }

    /// A guest write of the low `size` bytes (1, 2, 4 or 8) of `value` at `offset` in the
    /// redistributor region (vCPU `offset / GICR_FRAME_SIZE`). Accesses the architecture does
    /// not define are ignored (`GICR_TYPER` is read-only: no 64-bit register is writable).
    pub fn redist_write(&mut self, offset: u64, size: u8, value: u64) {
        let Some((vcpu, off)) = self.redist_frame(offset) else {
            return;
        };
        let r = &mut self.redists[vcpu];
        match size {
            1 => {
                if let Some(intid) = Self::sgi_priority_intid(off) {
                    r.private.set_priority(intid, value as u8);
                }
            }
            4 if off.is_multiple_of(4) => Self::redist_write32(r, off, value as u32),
            _ => {}
        }
    }

    /// The vCPU whose frame `offset` falls in, and the offset in that frame.
    fn redist_frame(&self, offset: u64) -> Option<(usize, u64)> {
        let vcpu = usize::try_from(offset / GICR_FRAME_SIZE).ok()?;
        (vcpu < self.redists.len()).then_some((vcpu, offset % GICR_FRAME_SIZE))
    }

    /// `GICR_TYPER` of vCPU `vcpu`: Affinity_Value `0.0.0.vcpu`, Processor_Number `vcpu`, Last
    /// on the last vCPU; no LPIs (PLPIS, VLPIS, DirectLPI 0), no extended PPIs.
    fn gicr_typer(&self, vcpu: usize) -> u64 {
        let last = if vcpu + 1 == self.redists.len() {
            regs::GICR_TYPER_LAST
        } else {
            0
        };
        (vcpu as u64) << regs::GICR_TYPER_AFF_SHIFT
            | (vcpu as u64) << regs::GICR_TYPER_PROC_SHIFT
            | last
    }

    /// The INTID whose `GICR_IPRIORITYR` byte is at frame offset `off`, if in that block.
    fn sgi_priority_intid(off: u64) -> Option<u32> {
        let start = regs::SGI_BASE + regs::GICD_IPRIORITYR;
        let end = regs::SGI_BASE + regs::GICR_IPRIORITYR_END;
        (start..end).contains(&off).then(|| (off - start) as u32)
    }

    /// A 32-bit read at a word-aligned frame offset of vCPU `vcpu`.
    fn redist_read32(&self, vcpu: usize, off: u64) -> u32 {
        let r = &self.redists[vcpu];
        if off < regs::SGI_BASE {
            return match off {
                regs::GICR_CTLR | regs::GICR_STATUSR => 0,
                regs::GICR_IIDR => regs::IIDR,
                regs::GICR_TYPER => self.gicr_typer(vcpu) as u32,
                o if o == regs::GICR_TYPER + 4 => (self.gicr_typer(vcpu) >> 32) as u32,
                regs::GICR_WAKER if r.sleep => {
                    regs::WAKER_PROCESSOR_SLEEP | regs::WAKER_CHILDREN_ASLEEP
                }
                regs::GICR_WAKER => 0,
                _ => id_register(off).unwrap_or(0),
            };
        }
        let sgi = off - regs::SGI_BASE;
        if let Some(intid) = Self::sgi_priority_intid(off) {
            return (0..4).fold(0, |acc, k| {
                acc | u32::from(r.private.priority(intid + k)) << (8 * k)
            });
        }
        match (decode_bitmap(sgi), sgi) {
            (Some((reg, 0)), _) => r.private.read_bits(reg, 0),
            (_, regs::GICR_ICFGR0) => r.private.read_cfg(0),
            (_, regs::GICR_ICFGR1) => r.private.read_cfg(1),
            _ => 0,
        }
    }

    /// A 32-bit write at a word-aligned frame offset of redistributor `r`.
    fn redist_write32(r: &mut Redist, off: u64, value: u32) {
        if off == regs::GICR_WAKER {
            r.sleep = value & regs::WAKER_PROCESSOR_SLEEP != 0;
            return;
        }
        let Some(sgi) = off.checked_sub(regs::SGI_BASE) else {
            return;
        };
        if let Some(intid) = Self::sgi_priority_intid(off) {
            for (k, byte) in (0..4).zip(value.to_le_bytes()) {
                r.private.set_priority(intid + k, byte);
            }
            return;
        }
        match (decode_bitmap(sgi), sgi) {
            (Some((reg, 0)), _) => r.private.write_bits(reg, 0, value),
            (_, regs::GICR_ICFGR1) => r.private.write_cfg(1, value),
            _ => {} // GICR_ICFGR0 (SGIs always edge), IGRPMODR0, NSACR, reserved: WI.
        }
    }
}
