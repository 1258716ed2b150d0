//! Unit tests of the GICv3 emulation: register layout and reset values against the
//! architecture specification (offsets written out literally here, not taken from `regs`),
//! the set/clear register pairs, routing, delivery order, level and edge semantics, SGI
//! decoding, RAZ/WI of undefined accesses and a randomized no-panic run.

use alloc::vec::Vec;

use super::{GICD_SIZE, GICR_FRAME_SIZE, Gic, Pending};
use crate::Error;

const GICD_CTLR: u64 = 0x0000;
const GICD_TYPER: u64 = 0x0004;
const GICD_IIDR: u64 = 0x0008;
const GICD_TYPER2: u64 = 0x000c;
const IGROUPR: u64 = 0x0080;
const ISENABLER: u64 = 0x0100;
const ICENABLER: u64 = 0x0180;
const ISPENDR: u64 = 0x0200;
const ICPENDR: u64 = 0x0280;
const ISACTIVER: u64 = 0x0300;
const ICACTIVER: u64 = 0x0380;
const IPRIORITYR: u64 = 0x0400;
const ICFGR: u64 = 0x0c00;
const IGRPMODR: u64 = 0x0d00;
const IROUTER: u64 = 0x6000;
const PIDR2: u64 = 0xffe8;

const GICR_CTLR: u64 = 0x0000;
const GICR_IIDR: u64 = 0x0004;
const GICR_TYPER: u64 = 0x0008;
const GICR_WAKER: u64 = 0x0014;
const SGI: u64 = 0x1_0000;

/// A GIC with 4 vCPUs and 64 SPIs.
fn gic() -> Gic {
    Gic::new(4, 64).unwrap()
}

/// Offset of `reg` in vCPU `vcpu`'s redistributor frame.
fn rd(vcpu: u64, reg: u64) -> u64 {
    vcpu * GICR_FRAME_SIZE + reg
}

/// Enables both groups in GICD_CTLR.
fn enable_groups(g: &mut Gic) {
    g.dist_write(GICD_CTLR, 4, 0b11);
}

/// Makes SPI `intid` Group 1, enabled, with `prio`.
fn setup_spi(g: &mut Gic, intid: u32, prio: u8) {
    let (word, bit) = (u64::from(intid / 32) * 4, 1u64 << (intid % 32));
    let group = g.dist_read(IGROUPR + word, 4);
    g.dist_write(IGROUPR + word, 4, group | bit);
    g.dist_write(ISENABLER + word, 4, bit);
    g.dist_write(IPRIORITYR + u64::from(intid), 1, prio.into());
}

/// Makes SGI/PPI `intid` of `vcpu` Group 1, enabled, with `prio`.
fn setup_private(g: &mut Gic, vcpu: u64, intid: u32, prio: u8) {
    let bit = 1u64 << intid;
    let group = g.redist_read(rd(vcpu, SGI + IGROUPR), 4);
    g.redist_write(rd(vcpu, SGI + IGROUPR), 4, group | bit);
    g.redist_write(rd(vcpu, SGI + ISENABLER), 4, bit);
    g.redist_write(
        rd(vcpu, SGI + IPRIORITYR + u64::from(intid)),
        1,
        prio.into(),
    );
}

/// Every 32-bit register of both frames, as the guest reads it.
fn dump(g: &Gic) -> Vec<u64> {
    let d = (0..GICD_SIZE).step_by(4).map(|o| g.dist_read(o, 4));
    let r = (0..g.nr_vcpus() as u64 * GICR_FRAME_SIZE)
        .step_by(4)
        .map(|o| g.redist_read(o, 4));
    d.chain(r).collect()
}

#[test]
fn new_validates_configuration() {
    for (v, s) in [
        (0, 32),
        (9, 32),
        (1, 0),
        (1, 31),
        (1, 33),
        (1, 992),
        (1, 1024),
        (1, 961),
    ] {
        assert_eq!(
            Gic::new(v, s).unwrap_err(),
            Error::BadConfig,
            "{v} vCPUs, {s} SPIs"
        );
    }
    for (v, s) in [(1, 32), (8, 960), (2, 988), (3, 96)] {
        let g = Gic::new(v, s).unwrap();
        assert_eq!((g.nr_vcpus(), g.nr_spis()), (v, s));
    }
}

#[test]
fn typer_reports_it_lines_and_10_bit_intids() {
    for (spis, lines) in [(32, 1), (64, 2), (256, 8), (960, 30), (988, 31)] {
        let t = Gic::new(1, spis).unwrap().dist_read(GICD_TYPER, 4);
        assert_eq!(t & 0x1f, lines, "{spis} SPIs");
        assert_eq!((t >> 19) & 0x1f, 9, "IDbits");
        assert_eq!((t >> 5) & 7, 0, "CPUNumber");
        assert_eq!(
            t & (1 << 17 | 1 << 16 | 1 << 8 | 1 << 10),
            0,
            "no LPIs, MBIS, ESPI, security"
        );
    }
    assert_eq!(gic().dist_read(GICD_TYPER2, 4), 0);
}

#[test]
fn ctlr_group_enables_and_fixed_bits() {
    let mut g = gic();
    assert_eq!(g.dist_read(GICD_CTLR, 4), 0x50, "ARE and DS read as one");
    g.dist_write(GICD_CTLR, 4, 0xffff_ffff);
    assert_eq!(
        g.dist_read(GICD_CTLR, 4),
        0x53,
        "RWP reads 0, only the group enables stick"
    );
    g.dist_write(GICD_CTLR, 4, 0);
    assert_eq!(
        g.dist_read(GICD_CTLR, 4),
        0x50,
        "ARE and DS cannot be cleared"
    );
}

#[test]
fn identification_registers() {
    let g = gic();
    assert_eq!(g.dist_read(GICD_IIDR, 4), 0x5200_043b);
    assert_eq!(g.dist_read(PIDR2, 4), 0x3b);
    assert_eq!((g.dist_read(PIDR2, 4) >> 4) & 0xf, 3, "ArchRev GICv3");
    let cidr: Vec<u64> = (0..4).map(|i| g.dist_read(0xfff0 + 4 * i, 4)).collect();
    assert_eq!(cidr, [0x0d, 0xf0, 0x05, 0xb1]);
    for v in 0..4 {
        assert_eq!(g.redist_read(rd(v, PIDR2), 4), 0x3b);
        assert_eq!(g.redist_read(rd(v, GICR_IIDR), 4), 0x5200_043b);
        assert_eq!(
            g.redist_read(rd(v, SGI + PIDR2), 4),
            0,
            "SGI_base has no ID registers"
        );
    }
}

#[test]
fn gicr_typer_affinity_processor_number_last() {
    let g = gic();
    for v in 0..4u64 {
        let t = g.redist_read(rd(v, GICR_TYPER), 8);
        assert_eq!(t >> 32, v, "Affinity_Value");
        assert_eq!((t >> 8) & 0xffff, v, "Processor_Number");
        assert_eq!(t & (1 << 4) != 0, v == 3, "Last only on the last vCPU");
        assert_eq!(t & 0b1011, 0, "PLPIS, VLPIS, DirectLPI");
        let lo = g.redist_read(rd(v, GICR_TYPER), 4);
        let hi = g.redist_read(rd(v, GICR_TYPER + 4), 4);
        assert_eq!(hi << 32 | lo, t, "32-bit halves");
    }
    assert_eq!(Gic::new(1, 32).unwrap().redist_read(GICR_TYPER, 8), 1 << 4);
    assert_eq!(g.redist_read(rd(0, GICR_CTLR), 4), 0);
}

#[test]
fn waker_handshake() {
    let mut g = gic();
    assert_eq!(
        g.redist_read(rd(1, GICR_WAKER), 4),
        0b110,
        "asleep at reset"
    );
    g.redist_write(rd(1, GICR_WAKER), 4, 0);
    assert_eq!(
        g.redist_read(rd(1, GICR_WAKER), 4) & 0b100,
        0,
        "ChildrenAsleep follows"
    );
    assert_eq!(
        g.redist_read(rd(0, GICR_WAKER), 4),
        0b110,
        "other vCPUs unaffected"
    );
    g.redist_write(rd(1, GICR_WAKER), 4, 0b100);
    assert_eq!(
        g.redist_read(rd(1, GICR_WAKER), 4),
        0,
        "ChildrenAsleep is read-only"
    );
    g.redist_write(rd(1, GICR_WAKER), 4, 0b010);
    assert_eq!(g.redist_read(rd(1, GICR_WAKER), 4), 0b110);
}

#[test]
fn set_clear_pairs_on_spis() {
    let mut g = gic();
    for (set, clear) in [
        (ISENABLER, ICENABLER),
        (ISPENDR, ICPENDR),
        (ISACTIVER, ICACTIVER),
    ] {
        g.dist_write(set + 4, 4, 0x8000_0001);
        g.dist_write(set + 4, 4, 0x10);
        assert_eq!(g.dist_read(set + 4, 4), 0x8000_0011, "set ORs in");
        assert_eq!(
            g.dist_read(clear + 4, 4),
            0x8000_0011,
            "both read the state"
        );
        g.dist_write(clear + 4, 4, 0x8000_0000);
        assert_eq!(g.dist_read(set + 4, 4), 0x11, "clear removes only its ones");
        g.dist_write(clear + 4, 4, 0);
        assert_eq!(
            g.dist_read(set + 4, 4),
            0x11,
            "writing zeros changes nothing"
        );
        assert_eq!(g.dist_read(set + 12, 4), 0, "SPIs past 96 do not exist");
        g.dist_write(set + 12, 4, u64::MAX);
        assert_eq!(g.dist_read(set + 12, 4), 0);
    }
    g.dist_write(IGROUPR + 8, 4, 0xdead_beef);
    assert_eq!(
        g.dist_read(IGROUPR + 8, 4),
        0xdead_beef,
        "IGROUPR is plain read/write"
    );
}

#[test]
fn set_clear_pairs_on_sgis_and_ppis() {
    let mut g = gic();
    for (set, clear) in [
        (ISENABLER, ICENABLER),
        (ISPENDR, ICPENDR),
        (ISACTIVER, ICACTIVER),
    ] {
        g.redist_write(rd(2, SGI + set), 4, 0x0001_0002);
        assert_eq!(g.redist_read(rd(2, SGI + clear), 4), 0x0001_0002);
        assert_eq!(g.redist_read(rd(1, SGI + set), 4), 0, "banked per vCPU");
        g.redist_write(rd(2, SGI + clear), 4, 0x2);
        assert_eq!(g.redist_read(rd(2, SGI + set), 4), 0x0001_0000);
        assert_eq!(
            g.redist_read(rd(2, SGI + set + 4), 4),
            0,
            "only word 0 in a GICR"
        );
    }
}

#[test]
fn distributor_sgi_ppi_words_are_raz_wi() {
    let mut g = gic();
    for reg in [IGROUPR, ISENABLER, ISPENDR, ISACTIVER] {
        g.dist_write(reg, 4, u64::MAX);
        assert_eq!(g.dist_read(reg, 4), 0);
        assert_eq!(
            g.redist_read(rd(0, SGI + reg), 4),
            0,
            "does not reach the redistributor"
        );
    }
    g.dist_write(IPRIORITYR, 4, u64::MAX);
    g.dist_write(IPRIORITYR + 31, 1, 0xff);
    assert_eq!(g.dist_read(IPRIORITYR, 4), 0);
    assert_eq!(g.dist_read(IPRIORITYR + 31, 1), 0);
    assert_eq!(g.dist_read(ICFGR, 4), 0);
    assert_eq!(g.dist_read(ICFGR + 4, 4), 0);
}

#[test]
fn priority_byte_and_word_access() {
    let mut g = gic();
    g.dist_write(IPRIORITYR + 32, 4, 0x4433_2211);
    assert_eq!(g.dist_read(IPRIORITYR + 34, 1), 0x33);
    g.dist_write(IPRIORITYR + 35, 1, 0xff);
    assert_eq!(
        g.dist_read(IPRIORITYR + 32, 4),
        0xff33_2211,
        "all 8 bits kept"
    );
    g.dist_write(IPRIORITYR + 32, 2, 0);
    assert_eq!(g.dist_read(IPRIORITYR + 32, 2), 0, "no halfword access");
    assert_eq!(g.dist_read(IPRIORITYR + 32, 4), 0xff33_2211);
    g.dist_write(IPRIORITYR + 33, 4, 0);
    assert_eq!(
        g.dist_read(IPRIORITYR + 32, 4),
        0xff33_2211,
        "misaligned word ignored"
    );
    assert_eq!(g.dist_read(IPRIORITYR + 96, 1), 0, "past the last SPI");

    g.redist_write(rd(3, SGI + IPRIORITYR + 28), 4, 0xa0b0_c0d0);
    assert_eq!(g.redist_read(rd(3, SGI + IPRIORITYR + 29), 1), 0xc0);
    g.redist_write(rd(3, SGI + IPRIORITYR + 5), 1, 0x80);
    assert_eq!(g.redist_read(rd(3, SGI + IPRIORITYR + 4), 4), 0x8000);
    assert_eq!(g.redist_read(rd(2, SGI + IPRIORITYR + 4), 4), 0, "banked");
    assert_eq!(
        g.redist_read(rd(3, SGI + IPRIORITYR + 32), 1),
        0,
        "only 8 registers"
    );
}

#[test]
fn icfgr_sgis_fixed_ppis_and_spis_writable() {
    let mut g = gic();
    assert_eq!(g.redist_read(rd(0, SGI + ICFGR), 4), 0xaaaa_aaaa);
    g.redist_write(rd(0, SGI + ICFGR), 4, 0);
    assert_eq!(
        g.redist_read(rd(0, SGI + ICFGR), 4),
        0xaaaa_aaaa,
        "SGIs are read-only edge"
    );
    assert_eq!(
        g.redist_read(rd(0, SGI + ICFGR + 4), 4),
        0,
        "PPIs reset level"
    );
    g.redist_write(rd(0, SGI + ICFGR + 4), 4, 0xffff_ffff);
    assert_eq!(
        g.redist_read(rd(0, SGI + ICFGR + 4), 4),
        0xaaaa_aaaa,
        "reserved bits RAZ"
    );
    g.dist_write(ICFGR + 8, 4, 0x5555_0008);
    assert_eq!(g.dist_read(ICFGR + 8, 4), 0x0000_0008, "SPI 33 edge");
    assert_eq!(g.dist_read(ICFGR + 24, 4), 0, "past the last SPI");
    assert_eq!(g.redist_read(rd(0, SGI + IGRPMODR), 4), 0);
    g.dist_write(IGRPMODR + 4, 4, u64::MAX);
    assert_eq!(g.dist_read(IGRPMODR + 4, 4), 0, "IGRPMODR RAZ/WI");
}

#[test]
fn irouter_round_trip() {
    let mut g = gic();
    let at = |n: u64| IROUTER + 8 * n;
    assert_eq!(g.dist_read(at(40), 8), 0);
    g.dist_write(at(40), 8, 0xffff_ffff_ffff_ffff);
    assert_eq!(
        g.dist_read(at(40), 8),
        0x0000_00ff_80ff_ffff,
        "Aff3, IRM, Aff2..0"
    );
    g.dist_write(at(40), 4, 0x0000_0203);
    assert_eq!(
        g.dist_read(at(40), 8),
        0x0000_00ff_0000_0203,
        "low half alone"
    );
    g.dist_write(at(40) + 4, 4, 0);
    assert_eq!(g.dist_read(at(40), 4), 0x203);
    assert_eq!(g.dist_read(at(40) + 4, 4), 0);
    g.dist_write(at(95), 8, 3);
    assert_eq!(g.dist_read(at(95), 8), 3, "last SPI");
    for n in [0, 31, 96, 1019] {
        g.dist_write(at(n), 8, 3);
        assert_eq!(g.dist_read(at(n), 8), 0, "IROUTER{n} is not implemented");
    }
    g.dist_write(at(41) + 4, 8, 3);
    assert_eq!(g.dist_read(at(41), 8), 0, "misaligned 64-bit");
}

#[test]
fn irouter_routes_spis() {
    let mut g = gic();
    enable_groups(&mut g);
    setup_spi(&mut g, 40, 0x80);
    g.dist_write(ICFGR + 4 * 2, 4, 0xaaaa_aaaa);
    g.pulse_spi(40);
    let p = Some(Pending {
        intid: 40,
        priority: 0x80,
        group: 1,
    });
    assert_eq!(g.highest_pending(0), p, "reset routing: vCPU 0");
    g.dist_write(IROUTER + 8 * 40, 8, 2);
    assert_eq!(g.highest_pending(0), None);
    assert_eq!(g.highest_pending(2), p);
    g.dist_write(IROUTER + 8 * 40, 8, 0x102);
    assert!(
        (0..4).all(|v| g.highest_pending(v).is_none()),
        "Aff1 = 1: nobody"
    );
    g.dist_write(IROUTER + 8 * 40, 8, 1 << 31 | 3);
    assert_eq!(g.highest_pending(0), p, "1 of N: vCPU 0");
    assert_eq!(g.highest_pending(3), None);
}

#[test]
fn disabled_groups_and_interrupts_are_not_delivered() {
    let mut g = gic();
    setup_spi(&mut g, 50, 0);
    g.dist_write(IGROUPR + 4, 4, 0); // back to Group 0
    g.dist_write(ISPENDR + 4, 4, 1 << 18);
    assert_eq!(g.highest_pending(0), None, "no group enabled");
    g.dist_write(GICD_CTLR, 4, 0b10);
    assert_eq!(
        g.highest_pending(0),
        None,
        "Group 1 enabled, interrupt is Group 0"
    );
    g.dist_write(GICD_CTLR, 4, 0b01);
    assert_eq!(
        g.highest_pending(0),
        Some(Pending {
            intid: 50,
            priority: 0,
            group: 0
        })
    );
    g.dist_write(ICENABLER + 4, 4, 1 << 18);
    assert_eq!(g.highest_pending(0), None, "disabled");
    assert_eq!(g.highest_pending(4), None, "no such vCPU");
}

#[test]
fn priority_order_and_ties() {
    let mut g = gic();
    enable_groups(&mut g);
    setup_spi(&mut g, 70, 0x40);
    setup_spi(&mut g, 60, 0x40);
    setup_spi(&mut g, 33, 0x90);
    setup_private(&mut g, 0, 20, 0x40);
    setup_private(&mut g, 0, 5, 0x60);
    g.dist_write(ISPENDR + 4, 4, 1 << 1);
    g.dist_write(ISPENDR + 8, 4, 1 << 6);
    assert_eq!(g.highest_pending(0).map(|p| p.intid), Some(70));
    g.dist_write(ISPENDR + 4, 4, 1 << 28);
    assert_eq!(
        g.highest_pending(0).map(|p| p.intid),
        Some(60),
        "tie: lowest INTID"
    );
    g.redist_write(rd(0, SGI + ISPENDR), 4, 1 << 5);
    assert_eq!(
        g.highest_pending(0).map(|p| p.intid),
        Some(60),
        "SGI 5 has lower priority"
    );
    g.set_ppi_level(0, 20, true);
    assert_eq!(
        g.highest_pending(0).map(|p| p.intid),
        Some(20),
        "tie with a PPI"
    );
    let order: Vec<u32> = core::iter::from_fn(|| {
        let p = g.highest_pending(0)?;
        assert!(g.acknowledge(0, p.intid));
        Some(p.intid)
    })
    .collect();
    assert_eq!(order, [20, 60, 70, 5, 33]);
}

#[test]
fn level_semantics_across_acknowledge_and_deactivate() {
    let mut g = gic();
    enable_groups(&mut g);
    setup_spi(&mut g, 45, 0x10);
    let pending = |g: &Gic| g.dist_read(ISPENDR + 4, 4) & (1 << 13) != 0;
    g.set_spi_level(45, true);
    assert!(pending(&g));
    g.dist_write(ICPENDR + 4, 4, 1 << 13);
    assert!(pending(&g), "ICPENDR cannot clear an asserted level");
    assert!(g.acknowledge(0, 45));
    assert!(pending(&g), "active and pending while the line is high");
    assert_eq!(g.dist_read(ISACTIVER + 4, 4), 1 << 13);
    assert_eq!(g.highest_pending(0), None, "active: not delivered twice");
    assert!(!g.acknowledge(0, 45));
    g.deactivate(0, 45);
    assert_eq!(
        g.highest_pending(0).map(|p| p.intid),
        Some(45),
        "still high: again"
    );
    g.set_spi_level(45, false);
    assert!(
        !pending(&g) && g.highest_pending(0).is_none(),
        "line low: gone"
    );
    g.pulse_spi(45);
    assert!(!pending(&g), "a pulse leaves no trace on a level interrupt");
    g.dist_write(ISPENDR + 4, 4, 1 << 13);
    assert!(g.acknowledge(0, 45));
    assert!(
        !pending(&g),
        "acknowledge clears a software-set pending state"
    );
}

#[test]
fn edge_semantics_across_acknowledge_and_deactivate() {
    let mut g = gic();
    enable_groups(&mut g);
    setup_spi(&mut g, 45, 0x10);
    g.dist_write(ICFGR + 8, 4, 2 << 26); // INTID 45 = ICFGR2 field 13
    let pending = |g: &Gic| g.dist_read(ISPENDR + 4, 4) & (1 << 13) != 0;
    g.set_spi_level(45, true);
    assert!(pending(&g), "rising edge");
    assert!(g.acknowledge(0, 45));
    assert!(
        !pending(&g),
        "acknowledge consumes the edge although the line is high"
    );
    g.set_spi_level(45, true);
    assert!(!pending(&g), "no new edge");
    g.set_spi_level(45, false);
    g.pulse_spi(45);
    assert!(pending(&g), "active and pending");
    assert_eq!(g.highest_pending(0), None);
    g.deactivate(0, 45);
    assert_eq!(g.highest_pending(0).map(|p| p.intid), Some(45));
    g.dist_write(ICPENDR + 4, 4, 1 << 13);
    assert_eq!(g.highest_pending(0), None, "ICPENDR clears an edge");
}

#[test]
fn ppi_lines_are_per_vcpu() {
    let mut g = gic();
    enable_groups(&mut g);
    setup_private(&mut g, 1, 27, 0xa0);
    setup_private(&mut g, 2, 27, 0xa0);
    g.set_ppi_level(1, 27, true);
    assert_eq!(g.highest_pending(1).map(|p| p.intid), Some(27));
    assert_eq!(g.highest_pending(2), None);
    g.set_ppi_level(1, 27, false);
    assert_eq!(g.highest_pending(1), None);
    g.set_ppi_level(9, 27, true);
    g.set_ppi_level(1, 15, true);
    g.set_ppi_level(1, 32, true);
    assert_eq!(
        g.redist_read(rd(1, SGI + ISPENDR), 4),
        0,
        "bad vCPU/INTIDs ignored"
    );
}

#[test]
fn sgi_decoding() {
    let mut g = gic();
    let sgis = |g: &Gic| -> Vec<u64> {
        (0..4)
            .map(|v| g.redist_read(rd(v, SGI + ISPENDR), 4))
            .collect()
    };
    g.send_sgi(0, 3 << 24 | 0b1010);
    assert_eq!(sgis(&g), [0, 1 << 3, 0, 1 << 3], "TargetList");
    g.send_sgi(1, 1 << 40 | 7 << 24);
    assert_eq!(
        sgis(&g),
        [1 << 7, 1 << 3, 1 << 7, 1 << 3 | 1 << 7],
        "IRM: all but self"
    );
    let before = sgis(&g);
    g.send_sgi(0, 1 << 16 | 2 << 24 | 0xffff); // Aff1 = 1
    g.send_sgi(0, 1 << 32 | 2 << 24 | 0xffff); // Aff2 = 1
    g.send_sgi(0, 1 << 48 | 2 << 24 | 0xffff); // Aff3 = 1
    g.send_sgi(0, 1 << 44 | 2 << 24 | 0xffff); // RS = 1: Aff0 16..32
    g.send_sgi(4, 1 << 40 | 2 << 24); // no such sender
    assert_eq!(sgis(&g), before, "targets that are not vCPUs");
    g.send_sgi(3, 0xf << 24 | 0xfff0 | 1 << 2);
    assert_eq!(
        sgis(&g)[2],
        1 << 7 | 1 << 15,
        "INTID 15, out-of-range targets ignored"
    );

    enable_groups(&mut g);
    setup_private(&mut g, 2, 15, 0);
    assert_eq!(
        g.highest_pending(2),
        Some(Pending {
            intid: 15,
            priority: 0,
            group: 1
        })
    );
    assert!(g.acknowledge(2, 15));
    assert_eq!(g.redist_read(rd(2, SGI + ISPENDR), 4), 1 << 7);
    assert_eq!(g.redist_read(rd(2, SGI + ISACTIVER), 4), 1 << 15);
    g.deactivate(2, 15);
    assert_eq!(g.redist_read(rd(2, SGI + ISACTIVER), 4), 0);
}

#[test]
fn acknowledge_and_deactivate_ignore_bad_arguments() {
    let mut g = gic();
    g.pulse_spi(32);
    g.dist_write(ICFGR + 8, 4, 2);
    g.pulse_spi(32);
    assert!(!g.acknowledge(4, 32), "no such vCPU");
    assert!(!g.acknowledge(0, 33), "not pending");
    assert!(!g.acknowledge(0, 1023));
    assert!(
        g.acknowledge(0, 32),
        "ack does not look at enables or routing"
    );
    g.deactivate(7, 32);
    assert_eq!(g.dist_read(ISACTIVER + 4, 4), 1, "no such vCPU");
    g.deactivate(0, u32::MAX);
    g.set_spi_level(u32::MAX, true);
    g.set_spi_level(31, true);
    g.pulse_spi(96);
    assert_eq!(g.dist_read(ISPENDR + 8, 4), 0);
}

#[test]
fn undefined_accesses_are_raz_wi() {
    let mut g = gic();
    let reset = dump(&g);
    for (off, size) in [
        (GICD_CTLR, 1),
        (GICD_CTLR, 2),
        (GICD_CTLR, 8),
        (GICD_CTLR, 3),
        (GICD_CTLR, 0),
        (ISENABLER + 6, 4),
        (ISENABLER + 8, 8),
        (0x0800 + 32, 4), // ITARGETSR: RAZ/WI with ARE
        (0x0f00, 4),      // SGIR
        (0x0040, 4),      // SETSPI_NSR: no MBIS
        (0xfffc, 8),
        (GICD_SIZE, 4),
        (u64::MAX - 3, 4),
    ] {
        g.dist_write(off, size, u64::MAX);
        assert_eq!(g.dist_read(off, size), 0, "GICD {off:#x}/{size}");
    }
    for (off, size) in [
        (rd(0, GICR_WAKER), 1),
        (rd(0, GICR_WAKER), 8),
        (rd(0, GICR_CTLR), 8),
        (rd(0, GICR_TYPER + 4), 8),
        (rd(0, GICR_TYPER), 2),
        (rd(1, SGI + ISENABLER + 1), 4),
        (rd(1, SGI + ISENABLER), 8),
        (rd(1, SGI + IPRIORITYR + 2), 2),
        (rd(2, 0x0070), 8), // GICR_PROPBASER: no LPIs
        (rd(4, GICR_WAKER), 4),
        (rd(4, SGI + ISENABLER), 4),
        (u64::MAX - 7, 8),
    ] {
        g.redist_write(off, size, u64::MAX);
        assert_eq!(g.redist_read(off, size), 0, "GICR {off:#x}/{size}");
    }
    g.redist_write(rd(0, GICR_TYPER), 8, 0);
    g.redist_write(rd(0, GICR_TYPER), 4, 0);
    assert_eq!(dump(&g), reset, "nothing changed");
}

/// A xorshift64 generator: deterministic, no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_accesses_never_panic() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut g = Gic::new(3, 988).unwrap();
    let region = 4 * GICR_FRAME_SIZE; // one frame past the last vCPU
    let mut delivered = 0;
    for _ in 0..100_000 {
        let (r, value, pick) = (rng.next(), rng.next(), rng.next());
        let mut size = [1, 2, 4, 8, 3, 0, 16, 255][(r % 8) as usize];
        let offset = match pick % 5 {
            0 => (pick >> 8) % GICD_SIZE,
            1 => ((pick >> 8) % (GICD_SIZE / 4)) * 4,
            2 => (pick >> 8) % region,
            3 => pick,
            _ => {
                // The registers that make interrupts deliverable, in either frame.
                size = 4;
                let hot = [
                    GICD_CTLR, IGROUPR, ISENABLER, ISPENDR, ICACTIVER, ICFGR, GICR_WAKER,
                ];
                let frame = if r & 8 == 0 {
                    0
                } else {
                    ((pick >> 8) % 4) * GICR_FRAME_SIZE + SGI
                };
                frame + hot[((pick >> 16) % 7) as usize] + ((pick >> 24) % 4) * 4
            }
        };
        let vcpu = ((r >> 20) % 5) as usize;
        let intid = (value >> 40) as u32 % 1100;
        match (r >> 5) % 8 {
            0 => g.dist_write(offset, size, value),
            1 => g.redist_write(offset, size, value),
            2 => assert!(g.dist_read(offset, size) <= size_max(size)),
            3 => assert!(g.redist_read(offset, size) <= size_max(size)),
            4 => g.set_spi_level(intid, value & 1 != 0),
            5 => g.set_ppi_level(vcpu, intid % 40, value & 1 != 0),
            6 => g.send_sgi(vcpu, value),
            _ => {
                if let Some(p) = g.highest_pending(vcpu) {
                    assert!(p.group <= 1 && p.intid < 1020);
                    assert!(g.acknowledge(vcpu, p.intid), "a deliverable interrupt acks");
                    delivered += 1;
                }
                g.deactivate(vcpu, intid);
                g.pulse_spi(intid);
            }
        }
    }
    assert!(delivered > 100, "the run reached delivery ({delivered})");
}

/// The largest value a read of `size` bytes can return.
fn size_max(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}
