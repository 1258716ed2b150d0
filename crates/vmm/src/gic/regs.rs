//! Register offsets, field encodings and identification values of the emulated GICv3
//! distributor (GICD) and redistributor (GICR) frames, as the Arm GICv3 architecture
//! specification (IHI 0069) lays them out, and the decoding both frames share: the
//! set/clear bitmap registers and the CoreSight-style ID registers at `0xFFD0..=0xFFFC`.

// ---- Distributor (GICD), offsets in its 64 KiB frame ----

/// `GICD_CTLR`: group enables, ARE, DS, RWP.
pub(super) const GICD_CTLR: u64 = 0x0000;
/// `GICD_TYPER`: what the distributor implements.
pub(super) const GICD_TYPER: u64 = 0x0004;
/// `GICD_IIDR`: implementer and product.
pub(super) const GICD_IIDR: u64 = 0x0008;
/// `GICD_TYPER2`: vPE / extended features (all absent: 0).
pub(super) const GICD_TYPER2: u64 = 0x000c;
/// `GICD_IPRIORITYR<n>`: one priority byte per INTID, from here.
pub(super) const GICD_IPRIORITYR: u64 = 0x0400;
/// End (exclusive) of the `GICD_IPRIORITYR<n>` block.
pub(super) const GICD_IPRIORITYR_END: u64 = 0x0800;
/// `GICD_ICFGR<n>`: two configuration bits per INTID, from here.
pub(super) const GICD_ICFGR: u64 = 0x0c00;
/// End (exclusive) of the `GICD_ICFGR<n>` block.
pub(super) const GICD_ICFGR_END: u64 = 0x0d00;
/// `GICD_IROUTER<n>`: one 64-bit routing register per SPI, `n` = INTID, at `0x6000 + 8n`.
pub(super) const GICD_IROUTER: u64 = 0x6000;

/// `GICD_CTLR.EnableGrp0`.
pub(super) const CTLR_ENABLE_GRP0: u32 = 1 << 0;
/// `GICD_CTLR.EnableGrp1` (single security state).
pub(super) const CTLR_ENABLE_GRP1: u32 = 1 << 1;
/// `GICD_CTLR.ARE`: affinity routing, always on (RAO/WI).
pub(super) const CTLR_ARE: u32 = 1 << 4;
/// `GICD_CTLR.DS`: single security state (RAO/WI).
pub(super) const CTLR_DS: u32 = 1 << 6;

/// `GICD_TYPER.IDbits` (bits \[23:19\]): INTIDs are `IDbits + 1` = 10 bits wide.
pub(super) const TYPER_IDBITS: u32 = 9 << 19;
/// `GICD_TYPER.A3V`: affinity level 3 is supported (stored in `GICD_IROUTER<n>.Aff3`).
pub(super) const TYPER_A3V: u32 = 1 << 24;

/// `GICD_IROUTER<n>.Interrupt_Routing_Mode`: 1 of N.
pub(super) const IROUTER_IRM: u64 = 1 << 31;
/// The implemented `GICD_IROUTER<n>` bits: Aff0..2 \[23:0\], IRM \[31\], Aff3 \[39:32\].
pub(super) const IROUTER_MASK: u64 = 0xff_0000_0000 | IROUTER_IRM | 0xff_ffff;

/// `GICD_IIDR` and `GICR_IIDR`: ProductID `0x52` ('R', chosen for this emulation), Variant 0,
/// Revision 0, Implementer `0x43b` (Arm's JEP106 code).
pub(super) const IIDR: u32 = 0x5200_043b;

// ---- Redistributor (GICR), offsets in one vCPU's 128 KiB frame ----

/// Start of the SGI_base page inside a redistributor frame (after the 64 KiB RD_base page).
pub(super) const SGI_BASE: u64 = 0x1_0000;
/// `GICR_CTLR` (RD_base): no LPIs, no DPG bits: reads 0.
pub(super) const GICR_CTLR: u64 = 0x0000;
/// `GICR_IIDR` (RD_base).
pub(super) const GICR_IIDR: u64 = 0x0004;
/// `GICR_TYPER` (RD_base), 64 bits.
pub(super) const GICR_TYPER: u64 = 0x0008;
/// `GICR_STATUSR` (RD_base): no error reporting: reads 0.
pub(super) const GICR_STATUSR: u64 = 0x0010;
/// `GICR_WAKER` (RD_base).
pub(super) const GICR_WAKER: u64 = 0x0014;
/// End (exclusive) of `GICR_IPRIORITYR0..7` (SGI_base, from [`GICD_IPRIORITYR`]).
pub(super) const GICR_IPRIORITYR_END: u64 = 0x0420;
/// `GICR_ICFGR0` (SGI_base): SGIs, always edge.
pub(super) const GICR_ICFGR0: u64 = 0x0c00;
/// `GICR_ICFGR1` (SGI_base): PPIs.
pub(super) const GICR_ICFGR1: u64 = 0x0c04;

/// `GICR_TYPER.Last`: the last redistributor of the region.
pub(super) const GICR_TYPER_LAST: u64 = 1 << 4;
/// `GICR_TYPER.Processor_Number` shift (bits \[23:8\]).
pub(super) const GICR_TYPER_PROC_SHIFT: u32 = 8;
/// `GICR_TYPER.Affinity_Value` shift (bits \[63:32\], Aff3.Aff2.Aff1.Aff0).
pub(super) const GICR_TYPER_AFF_SHIFT: u32 = 32;

/// `GICR_WAKER.ProcessorSleep`.
pub(super) const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
/// `GICR_WAKER.ChildrenAsleep` (read-only, follows ProcessorSleep here).
pub(super) const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;

// ---- Shared decoding ----

/// The block of one-bit-per-INTID registers: `IGROUPR`, `IS/ICENABLER`, `IS/ICPENDR`,
/// `IS/ICACTIVER`, each 0x80 bytes (32 words) long, from `0x0080` to `0x0400` in the GICD
/// frame and (word 0 only) in the GICR SGI_base page.
const BITMAP_START: u64 = 0x0080;
/// End (exclusive) of the bitmap block.
const BITMAP_END: u64 = 0x0400;

/// Which one-bit-per-INTID register an offset names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BitReg {
    /// `IGROUPR`: 1 = Group 1.
    Group,
    /// `ISENABLER`: write 1 to enable, reads the enables.
    SetEnable,
    /// `ICENABLER`: write 1 to disable, reads the enables.
    ClearEnable,
    /// `ISPENDR`: write 1 to set pending, reads the pending state.
    SetPending,
    /// `ICPENDR`: write 1 to clear the pending latch, reads the pending state.
    ClearPending,
    /// `ISACTIVER`: write 1 to activate, reads the active state.
    SetActive,
    /// `ICACTIVER`: write 1 to deactivate, reads the active state.
    ClearActive,
}

/// Decodes a word-aligned offset in the bitmap block into its register and word index
/// (word `n` covers INTIDs `32n..32n+32`).
pub(super) fn decode_bitmap(offset: u64) -> Option<(BitReg, usize)> {
    if !(BITMAP_START..BITMAP_END).contains(&offset) {
        return None;
    }
    let reg = match (offset - BITMAP_START) / 0x80 {
        0 => BitReg::Group,
        1 => BitReg::SetEnable,
        2 => BitReg::ClearEnable,
        3 => BitReg::SetPending,
        4 => BitReg::ClearPending,
        5 => BitReg::SetActive,
        _ => BitReg::ClearActive,
    };
    Some((reg, ((offset % 0x80) / 4) as usize))
}

/// The part number reported in `PIDR0`/`PIDR1` of both frames (matches the IIDR ProductID).
const PART_NUMBER: u32 = 0x052;

/// The identification registers of both frames at `0xFFD0..=0xFFFC` (word offsets):
/// `PIDR4` = `0x44` (64 KiB frame, JEP106 continuation code 4), `PIDR5..7` = 0,
/// `PIDR0`/`PIDR1` = part number [`PART_NUMBER`] and JEP106 identity low bits (`0xb`),
/// `PIDR2` = `0x3b` (ArchRev 3 = GICv3, JEDEC, identity high bits), `PIDR3` = 0,
/// `CIDR0..3` = `0x0d, 0xf0, 0x05, 0xb1` (the CoreSight component preamble).
pub(super) fn id_register(offset: u64) -> Option<u32> {
    Some(match offset {
        0xffd0 => 0x44,
        0xffd4 | 0xffd8 | 0xffdc => 0,
        0xffe0 => PART_NUMBER & 0xff,
        0xffe4 => 0xb0 | ((PART_NUMBER >> 8) & 0xf),
        0xffe8 => 0x3b,
        0xffec => 0,
        0xfff0 => 0x0d,
        0xfff4 => 0xf0,
        0xfff8 => 0x05,
        0xfffc => 0xb1,
        _ => return None,
    })
}
