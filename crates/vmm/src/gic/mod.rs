//! GICv3 distributor and redistributor emulation, written from the Arm GICv3 architecture
//! specification (IHI 0069): the public API ([`Gic`]), its state, interrupt injection and
//! delivery. The MMIO decoding is in `dist` (GICD) and `redist` (GICR), the per-interrupt state
//! in `irq`, the register layout in `regs`.
//!
//! # What is emulated
//!
//! The guest reaches the distributor (one [`GICD_SIZE`] frame) and one redistributor per vCPU
//! ([`GICR_FRAME_SIZE`] each: RD_base, then SGI_base) through MMIO exits; its CPU interface is
//! the hardware virtual CPU interface (`ICV_*`), driven by the hypervisor's list registers, so
//! it is not emulated here. The GIC has a single security state (`GICD_CTLR.DS` = 1),
//! affinity routing always on (`ARE` RAO/WI), no LPIs or ITS, no extended SPI/PPI ranges,
//! 10-bit INTIDs. vCPU `i` has affinity `0.0.0.i` (its MPIDR is `i`).
//!
//! Register accesses follow the architecture's rules: 32-bit accesses to every register, byte
//! accesses to the `IPRIORITYR`s too, 64-bit or 32-bit-half accesses to the 64-bit registers
//! (`GICD_IROUTER<n>`, `GICR_TYPER`). Anything else — another size, a misaligned access, a
//! reserved or unimplemented offset, an offset past the frame or past the last vCPU's
//! redistributor — reads as zero and ignores writes (RAZ/WI). No input panics.
//!
//! Implementation choices the architecture leaves open:
//!
//! * `GICD_IIDR`/`GICR_IIDR` = `0x5200_043b`: Implementer `0x43b` (Arm's JEP106 code),
//!   ProductID `0x52` ('R', this emulation), Variant 0, Revision 0; `PIDR2` = `0x3b` (GICv3).
//! * Priorities: all 8 bits are implemented (256 levels); the virtual CPU interface keeps only
//!   its `ICH_VTR_EL2.PRIbits` top bits of what the hypervisor puts in a list register.
//! * `GICR_ICFGR1` (PPIs) is writable (edge or level per PPI), reset level-sensitive; SPIs
//!   also reset level-sensitive; SGIs are always edge (`GICR_ICFGR0` reads `0xAAAA_AAAA`).
//! * `GICD_IGRPMODR<n>`, `GICR_IGRPMODR0`, the `NSACR`s, `GICD_STATUSR`, `GICR_STATUSR`,
//!   `GICR_CTLR` are RAZ/WI (single security state, no LPIs, no error reporting).
//! * `GICD_IROUTER<n>` resets to 0 (vCPU 0). 1-of-N routing (`Interrupt_Routing_Mode` = 1)
//!   delivers to vCPU 0.
//! * `GICR_WAKER.ChildrenAsleep` reads as `ProcessorSleep` (the wake handshake completes at
//!   once); a sleeping redistributor still delivers (whether a vCPU runs is the VMM's matter).
//! * SGIs from [`Gic::send_sgi`] are made pending whatever the target's group.
//!
//! # The delivery model
//!
//! The VMM asks [`Gic::highest_pending`] for the interrupt to give a vCPU, puts it in a free
//! list register as pending and calls [`Gic::acknowledge`]: from then on the list register
//! holds the interrupt's pending/active state as the guest sees it (its `ICV_IAR` read, its
//! EOI), and this model holds it as active so that it is not delivered twice. When the list
//! register empties (the guest deactivated it), the VMM calls [`Gic::deactivate`]: the
//! interrupt becomes inactive, and a level-sensitive one whose line is still high is pending
//! again and will be delivered again.

mod dist;
mod irq;
mod redist;
mod regs;
#[cfg(test)]
mod tests;

use alloc::vec::Vec;

use crate::Error;
use irq::IrqBank;

/// The size of the distributor's MMIO frame.
pub const GICD_SIZE: u64 = 0x1_0000;
/// The size of one vCPU's redistributor frame: RD_base (64 KiB) then SGI_base (64 KiB).
pub const GICR_FRAME_SIZE: u64 = 0x2_0000;
/// The most vCPUs (redistributors) a [`Gic`] has.
pub const MAX_VCPUS: usize = 8;
/// The most SPIs a [`Gic`] has (INTIDs 32..=1019).
pub const MAX_SPIS: u32 = 988;

/// An interrupt ready for delivery to a vCPU, from [`Gic::highest_pending`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Its INTID: SGI 0..16, PPI 16..32, SPI 32..1020.
    pub intid: u32,
    /// Its priority (lower is more urgent), all 8 bits.
    pub priority: u8,
    /// Its group: 0 (a vFIQ) or 1 (a vIRQ).
    pub group: u8,
}

/// One vCPU's redistributor: its SGIs and PPIs, and its wake state.
#[derive(Clone, Debug)]
struct Redist {
    /// INTIDs 0..32.
    private: IrqBank,
    /// `GICR_WAKER.ProcessorSleep`.
    sleep: bool,
}

/// A GICv3 distributor and the redistributors of `nr_vcpus` vCPUs: their registers and the
/// state of every interrupt (see the [module documentation](self)).
#[derive(Clone, Debug)]
pub struct Gic {
    /// `GICD_CTLR.EnableGrp0` and `EnableGrp1`.
    ctlr: u32,
    /// `GICD_TYPER.ITLinesNumber`.
    it_lines: u32,
    /// The SPIs' state (INTIDs 32..32 + nr_spis).
    spis: IrqBank,
    /// `GICD_IROUTER<n>`, indexed by INTID - 32.
    irouter: Vec<u64>,
    /// The redistributors, indexed by vCPU.
    redists: Vec<Redist>,
}

impl Gic {
    /// A GIC for `nr_vcpus` vCPUs and `nr_spis` SPIs, in its reset state: both groups disabled,
    /// every interrupt Group 0, disabled, inactive, not pending, priority 0, every SPI routed
    /// to vCPU 0, every redistributor asleep (`GICR_WAKER.ProcessorSleep` = 1).
    ///
    /// `nr_spis` is what `GICD_TYPER.ITLinesNumber` can express: a multiple of 32 from 32 to
    /// 960 (ITLinesNumber = `nr_spis / 32`), or [`MAX_SPIS`] (988, ITLinesNumber 31: INTIDs
    /// 1020..1024 are special, not SPIs).
    ///
    /// # Errors
    ///
    /// [`Error::BadConfig`] if `nr_vcpus` is not in `1..=`[`MAX_VCPUS`] or `nr_spis` is not one
    /// of the values above.
    pub fn new(nr_vcpus: usize, nr_spis: u32) -> Result<Self, Error> {
        if !(1..=MAX_VCPUS).contains(&nr_vcpus) {
            return Err(Error::BadConfig);
        }
        let it_lines = match nr_spis {
            MAX_SPIS => 31,
            32..=960 if nr_spis.is_multiple_of(32) => nr_spis / 32,
            _ => return Err(Error::BadConfig),
        };
        let redist = Redist {
            private: IrqBank::new(0, 32),
            sleep: true,
        };
        Ok(Self {
            ctlr: 0,
            it_lines,
            spis: IrqBank::new(32, 32 + nr_spis),
            irouter: alloc::vec![0; nr_spis as usize],
            redists: alloc::vec![redist; nr_vcpus],
        })
    }

    /// The number of vCPUs (redistributors).
    pub fn nr_vcpus(&self) -> usize {
        self.redists.len()
    }

    /// The number of SPIs (INTIDs `32..32 + nr_spis`).
    pub fn nr_spis(&self) -> u32 {
        self.irouter.len() as u32
    }

    /// Drives the input line of SPI `intid` (32..32 + nr_spis; others are ignored). A
    /// level-sensitive SPI is pending while its line is high; an edge-triggered one becomes
    /// pending on a rising edge.
    pub fn set_spi_level(&mut self, intid: u32, level: bool) {
        self.spis.set_line(intid, level);
    }

    /// Pulses the input line of SPI `intid` (high, then low): an edge-triggered SPI becomes
    /// pending; a level-sensitive one is left as it was (its line is low again). Out-of-range
    /// INTIDs are ignored.
    pub fn pulse_spi(&mut self, intid: u32) {
        self.spis.set_line(intid, true);
        self.spis.set_line(intid, false);
    }

    /// Drives the input line of PPI `intid` (16..32) of vCPU `vcpu`, with the same level/edge
    /// semantics as [`Gic::set_spi_level`]. Out-of-range arguments are ignored.
    pub fn set_ppi_level(&mut self, vcpu: usize, intid: u32, level: bool) {
        if (16..32).contains(&intid)
            && let Some(r) = self.redists.get_mut(vcpu)
        {
            r.private.set_line(intid, level);
        }
    }

    /// Generates the SGIs a write of `icc_sgi1r` to `ICC_SGI1R_EL1` by vCPU `from` asks for:
    /// SGI `INTID` \[27:24\] becomes pending on every vCPU but `from` if `IRM` \[40\] is set,
    /// else on the vCPUs with affinity `Aff3.Aff2.Aff1.(RS * 16 + n)` for each bit `n` of
    /// `TargetList` \[15:0\] (Aff1 \[23:16\], Aff2 \[39:32\], RS \[47:44\], Aff3 \[55:48\]).
    /// Targets that are not vCPUs of this GIC, and an unknown `from`, are ignored.
    pub fn send_sgi(&mut self, from: usize, icc_sgi1r: u64) {
        if from >= self.redists.len() {
            return;
        }
        let field = |shift: u32, bits: u32| (icc_sgi1r >> shift) & ((1 << bits) - 1);
        let intid = field(24, 4) as u32;
        let irm = field(40, 1) != 0;
        let upper = (field(48, 8), field(32, 8), field(16, 8)); // Aff3, Aff2, Aff1
        let (rs, targets) = (field(44, 4), field(0, 16));
        for (i, r) in self.redists.iter_mut().enumerate() {
            let hit = if irm {
                i != from
            } else {
                let aff0 = i as u64;
                upper == (0, 0, 0) && aff0 >> 4 == rs && targets & (1 << (aff0 & 0xf)) != 0
            };
            if hit {
                r.private.set_pending(intid);
            }
        }
    }

    /// Whether SPI `intid`'s `GICD_IROUTER` routes it to vCPU `vcpu`: its affinity is
    /// `0.0.0.vcpu`, or 1-of-N routing, which this model resolves to vCPU 0.
    fn spi_routed_to(&self, intid: u32, vcpu: usize) -> bool {
        let Some(&r) = self.irouter.get((intid as usize).wrapping_sub(32)) else {
            return false;
        };
        if r & regs::IROUTER_IRM != 0 {
            return vcpu == 0;
        }
        let affinity = (r & 0xff_ffff) | ((r >> 32) & 0xff) << 24;
        affinity == vcpu as u64
    }

    /// The interrupt to deliver to vCPU `vcpu` next: of those pending, enabled, not active,
    /// of a group enabled in `GICD_CTLR` and routed to `vcpu` (its SGIs and PPIs; the SPIs its
    /// `GICD_IROUTER` names), the one with the highest priority (lowest value; ties: lowest
    /// INTID). `None` if there is none or `vcpu` is not a vCPU of this GIC.
    pub fn highest_pending(&self, vcpu: usize) -> Option<Pending> {
        let r = self.redists.get(vcpu)?;
        let grp0 = self.ctlr & regs::CTLR_ENABLE_GRP0 != 0;
        let grp1 = self.ctlr & regs::CTLR_ENABLE_GRP1 != 0;
        let private = r.private.best(grp0, grp1, |_| true);
        let shared = self
            .spis
            .best(grp0, grp1, |intid| self.spi_routed_to(intid, vcpu));
        match (private, shared) {
            (Some(p), Some(s)) => Some(if s.priority < p.priority { s } else { p }),
            (p, s) => p.or(s),
        }
    }

    /// vCPU `vcpu` takes interrupt `intid` (the VMM put it in a list register): a pending,
    /// inactive interrupt becomes active; an edge-triggered one stops being pending, a
    /// level-sensitive one stays pending while its line is high. Returns whether `intid` was
    /// pending and inactive (and is now active); out-of-range arguments do nothing.
    pub fn acknowledge(&mut self, vcpu: usize, intid: u32) -> bool {
        if intid >= 32 {
            return self.redists.get(vcpu).is_some() && self.spis.acknowledge(intid);
        }
        self.redists
            .get_mut(vcpu)
            .is_some_and(|r| r.private.acknowledge(intid))
    }

    /// vCPU `vcpu` is done with interrupt `intid` (its list register emptied): it is no longer
    /// active. Out-of-range arguments are ignored.
    pub fn deactivate(&mut self, vcpu: usize, intid: u32) {
        if intid >= 32 {
            if vcpu < self.redists.len() {
                self.spis.deactivate(intid);
            }
        } else if let Some(r) = self.redists.get_mut(vcpu) {
            r.private.deactivate(intid);
        }
    }
}
