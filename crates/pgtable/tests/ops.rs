//! Scenario tests of the operations: block selection, splitting, annotations, refcounts, TLB
//! maintenance details, configuration.

mod common;

use common::{Event, Harness, TestArch, TestMm, check_structure};
use pkvm_pgtable::desc::{self, granule, output_address, pte_owner};
use pkvm_pgtable::{ArchOps, Config, Error, Format, MapFlags, MmOps, PageTable, Prot, WalkFlags};

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;

fn s2() -> Config {
    Config::stage2(7, 40)
}

fn s1() -> Config {
    Config::stage1_el2()
}

fn leaf(h: &Harness, addr: u64) -> (u64, u8) {
    h.pt.get_leaf(&h.mm, addr).unwrap()
}

/// Output address `addr` translates to, or None.
fn translate(h: &Harness, addr: u64) -> Option<(u64, Prot)> {
    let (pte, level) = leaf(h, addr);
    if !desc::is_valid(pte) {
        return None;
    }
    let off = addr & (granule(level) - 1);
    Some((output_address(pte) + off, h.pt.format().pte_prot(pte)))
}

fn events(h: &Harness) -> Vec<Event> {
    h.log.borrow().clone()
}

fn map(
    h: &mut Harness,
    addr: u64,
    size: u64,
    phys: u64,
    prot: Prot,
    flags: MapFlags,
) -> Result<(), Error> {
    h.op(|pt, mm, arch| pt.map(mm, arch, addr, size, phys, prot, flags))
}

fn unmap(h: &mut Harness, addr: u64, size: u64) -> Result<u64, Error> {
    h.op(|pt, mm, arch| pt.unmap(mm, arch, addr, size))
}

fn set_owner(h: &mut Harness, addr: u64, size: u64, owner: u32) -> Result<(), Error> {
    h.op(|pt, mm, arch| pt.set_owner(mm, arch, addr, size, owner))
}

/// The table page holding the entry for `addr` at `level`.
fn table_of(h: &Harness, addr: u64, level: u8) -> u64 {
    let mut table = h.pt.root();
    for l in h.pt.start_level()..level {
        table = output_address(h.mm.read_pte(table + desc::table_index(addr, l) * 8));
    }
    table
}

#[test]
fn config_geometry() {
    for (bits, level, sl0) in [
        (48, 0, 2),
        (44, 0, 2),
        (40, 0, 2),
        (39, 1, 1),
        (32, 1, 1),
        (31, 1, 1),
        (30, 2, 0),
        (25, 2, 0),
    ] {
        let c = Config::stage2(1, bits);
        assert_eq!(c.start_level(), level, "ia_bits {bits}");
        assert_eq!(c.vtcr_sl0(), sl0);
        assert_eq!(c.t0sz(), 64 - bits);
        assert_eq!(c.validate(), Ok(()));
    }
    let mut mm = TestMm::new();
    for bits in [0u8, 24, 49, 64] {
        assert_eq!(
            PageTable::new(&mut mm, Config::stage2(1, bits)),
            Err(Error::InvalidConfig)
        );
    }
    assert_eq!(mm.allocs, 0);
    assert_eq!(
        PageTable::from_root(0x1000, s1()).map(|p| p.root()),
        Ok(0x1000)
    );
    assert_eq!(
        PageTable::from_root(0x1800, s1()),
        Err(Error::InvalidConfig)
    );
    assert_eq!(
        PageTable::from_root(1 << 48, s1()),
        Err(Error::InvalidConfig)
    );
    let pt = PageTable::new(&mut mm, s2()).unwrap();
    assert_eq!(mm.page_count(pt.root()), 1);
    assert_eq!(pt.config(), s2());
    mm.budget = Some(0);
    assert_eq!(PageTable::new(&mut mm, s2()), Err(Error::NoMemory));
}

#[test]
fn largest_blocks_are_used() {
    for cfg in [s1(), s2(), Config::stage2(1, 32)] {
        let mut h = Harness::new(cfg);
        let prot = if cfg.format.is_stage2() {
            Prot::RWX
        } else {
            Prot::RW
        };
        // 1 GiB + 2 MiB + 4 KiB, all congruent: one of each size.
        map(&mut h, G1, G1 + M2 + K4, 2 * G1, prot, MapFlags::empty()).unwrap();
        assert_eq!(h.pt.count_leaves(&h.mm, 0, 4 * G1).unwrap(), [0, 1, 1, 1]);
        assert_eq!(leaf(&h, G1).1, 1);
        assert_eq!(leaf(&h, 2 * G1 + 4096).1, 2);
        assert_eq!(leaf(&h, 2 * G1 + M2).1, 3);
        assert_eq!(translate(&h, 2 * G1 + M2).unwrap().0, 3 * G1 + M2);
        // Start at a 2 MiB boundary that is not 1 GiB aligned: 2 MiB blocks only.
        let mut h = Harness::new(cfg);
        map(
            &mut h,
            G1 - M2,
            2 * M2,
            0x8000_0000 - M2,
            prot,
            MapFlags::empty(),
        )
        .unwrap();
        assert_eq!(h.pt.count_leaves(&h.mm, 0, 4 * G1).unwrap(), [0, 0, 2, 0]);
        // Physical address aligned only to 4 KiB: pages.
        let mut h = Harness::new(cfg);
        map(&mut h, 0, M2, 0x4000_1000, prot, MapFlags::empty()).unwrap();
        assert_eq!(h.pt.count_leaves(&h.mm, 0, 4 * G1).unwrap(), [0, 0, 0, 512]);
        // Forced pages.
        let mut h = Harness::new(cfg);
        map(&mut h, 0, M2 + K4, 0x4000_0000, prot, MapFlags::FORCE_PAGES).unwrap();
        assert_eq!(h.pt.count_leaves(&h.mm, 0, 4 * G1).unwrap(), [0, 0, 0, 513]);
    }
}

#[test]
fn never_an_l0_block() {
    let mut h = Harness::new(s1());
    let size = 512 * G1;
    map(&mut h, size, size, size, Prot::R, MapFlags::empty()).unwrap();
    assert_eq!(
        h.pt.count_leaves(&h.mm, 0, 1 << 48).unwrap(),
        [0, 512, 0, 0]
    );
    assert_eq!(leaf(&h, size + 5 * G1 + 3 * K4).1, 1);
    assert_eq!(
        translate(&h, size + 5 * G1 + 3 * K4).unwrap().0,
        size + 5 * G1 + 3 * K4
    );
}

#[test]
fn starts_at_l2_for_small_spaces() {
    let mut h = Harness::new(Config::stage2(3, 30));
    assert_eq!(h.pt.start_level(), 2);
    map(&mut h, 0, G1, 0, Prot::RW, MapFlags::empty()).unwrap();
    assert_eq!(h.pt.count_leaves(&h.mm, 0, G1).unwrap(), [0, 0, 512, 0]);
    assert_eq!(h.mm.live(), 1);
    assert_eq!(unmap(&mut h, 0, G1), Ok(G1));
}

#[test]
fn identical_map_is_a_silent_noop() {
    for cfg in [s1(), s2()] {
        let mut h = Harness::new(cfg);
        map(&mut h, 0, 3 * K4, 0x8000_0000, Prot::R, MapFlags::empty()).unwrap();
        map(&mut h, G1, G1, G1, Prot::R, MapFlags::empty()).unwrap();
        let snap = h.mm.snapshot();
        h.arch.count.set(0);
        map(&mut h, 0, 3 * K4, 0x8000_0000, Prot::R, MapFlags::empty()).unwrap();
        // Pages inside an identical block: the block stays, nothing is written.
        map(
            &mut h,
            G1 + M2,
            K4,
            G1 + M2,
            Prot::R,
            MapFlags::FORCE_PAGES | MapFlags::NO_SPLIT,
        )
        .unwrap();
        assert_eq!(h.mm.snapshot(), snap);
        assert_eq!(h.arch.count.get(), 0, "no barrier or TLBI for a no-op");
    }
}

#[test]
fn different_mapping_needs_replace() {
    let mut h = Harness::new(s2());
    map(&mut h, 0, K4, 0x1000_0000, Prot::RW, MapFlags::empty()).unwrap();
    assert_eq!(
        map(&mut h, 0, K4, 0x2000_0000, Prot::RW, MapFlags::empty()),
        Err(Error::AlreadyMapped)
    );
    assert_eq!(
        map(&mut h, 0, K4, 0x1000_0000, Prot::R, MapFlags::empty()),
        Err(Error::AlreadyMapped)
    );
    assert_eq!(
        map(
            &mut h,
            0,
            K4,
            0x1000_0000,
            Prot::RW | Prot::SW1,
            MapFlags::empty()
        ),
        Err(Error::AlreadyMapped)
    );
    assert_eq!(translate(&h, 0), Some((0x1000_0000, Prot::RW)));
    map(&mut h, 0, K4, 0x2000_0000, Prot::R, MapFlags::REPLACE).unwrap();
    assert_eq!(translate(&h, 0), Some((0x2000_0000, Prot::R)));
    // Break-before-make: the log of the replace (checked by the harness) has a TLBI.
    assert_eq!(h.mm.page_count(h.pt.root()), 2);
}

#[test]
fn replace_of_software_bits_only_needs_no_tlbi() {
    let log_events = |h: &mut Harness| {
        let tables = common::table_pages(&h.pt, &h.mm);
        h.log.borrow_mut().clear();
        h.pt.map(
            &mut h.mm,
            &h.arch,
            0,
            K4,
            0x1000_0000,
            Prot::RW | Prot::SW0,
            MapFlags::REPLACE,
        )
        .unwrap();
        let ev = std::mem::take(&mut *h.log.borrow_mut());
        common::check_maintenance(&ev, tables, h.pt.format()).unwrap();
        ev
    };
    let mut h = Harness::new(s1());
    map(&mut h, 0, K4, 0x1000_0000, Prot::RW, MapFlags::empty()).unwrap();
    let ev = log_events(&mut h);
    assert!(
        !ev.iter().any(|e| matches!(e, Event::TlbiVa { .. })),
        "{ev:x?}"
    );
    assert_eq!(translate(&h, 0), Some((0x1000_0000, Prot::RW | Prot::SW0)));
}

#[test]
fn map_over_annotation_replaces_it() {
    let mut h = Harness::new(s2());
    set_owner(&mut h, 0, 4 * K4, 3).unwrap();
    assert_eq!(
        h.mm.page_count(table_of(&h, 0, 3)),
        5,
        "annotations are counted"
    );
    map(&mut h, K4, 2 * K4, 0x5000_0000, Prot::RW, MapFlags::empty()).unwrap();
    assert_eq!(pte_owner(leaf(&h, 0).0), Some(3));
    assert_eq!(translate(&h, K4), Some((0x5000_0000, Prot::RW)));
    assert_eq!(translate(&h, 2 * K4), Some((0x5000_1000, Prot::RW)));
    assert_eq!(pte_owner(leaf(&h, 3 * K4).0), Some(3));
    // Unmap clears annotations too, and then the tables go.
    assert_eq!(unmap(&mut h, 0, 4 * K4), Ok(2 * K4));
    assert_eq!(h.mm.live(), 1);
}

#[test]
fn unmap_inside_a_block_annotation_removes_no_mapping() {
    // The crate annotates pages only, but a `walk_mut` user may annotate a whole block. Unmapping
    // part of it splits the annotation (the rest stays annotated) and, since nothing was
    // mapped, reports 0 bytes unmapped.
    let mut h = Harness::new(s2());
    set_owner(&mut h, 0, K4, 1).unwrap();
    h.pt.walk_mut(&mut h.mm, M2, M2, WalkFlags::LEAF, |mm, v| {
        assert_eq!((v.level, v.pte), (2, 0));
        mm.write_pte(v.ptep, desc::owner_pte(9));
        mm.get_page(v.ptep);
        Ok::<(), Error>(())
    })
    .unwrap();
    assert_eq!(unmap(&mut h, M2 + 3 * K4, 2 * K4), Ok(0));
    assert_eq!(leaf(&h, M2 + 3 * K4), (0, 3));
    assert_eq!(leaf(&h, M2 + 4 * K4), (0, 3));
    assert_eq!(leaf(&h, M2 + 2 * K4), (desc::owner_pte(9), 3));
    assert_eq!(leaf(&h, M2 + 5 * K4), (desc::owner_pte(9), 3));
    // A mapped page next to it counts, the annotated ones around it do not.
    map(
        &mut h,
        M2 + 3 * K4,
        K4,
        0x7000_0000,
        Prot::R,
        MapFlags::empty(),
    )
    .unwrap();
    assert_eq!(unmap(&mut h, M2, M2), Ok(K4));
    assert_eq!(leaf(&h, M2 + 3 * K4).0, 0);
}

#[test]
fn partial_map_splits_a_block_with_replace_only() {
    for cfg in [s1(), s2()] {
        let mut h = Harness::new(cfg);
        map(&mut h, 0, G1, 0x4000_0000, Prot::R, MapFlags::empty()).unwrap();
        let snap = h.mm.snapshot();
        // Different mapping of one page: refused without REPLACE, refused with NO_SPLIT.
        assert_eq!(
            map(&mut h, 5 * K4, K4, 0x9000_0000, Prot::R, MapFlags::empty()),
            Err(Error::AlreadyMapped)
        );
        assert_eq!(
            map(
                &mut h,
                5 * K4,
                K4,
                0x9000_0000,
                Prot::R,
                MapFlags::REPLACE | MapFlags::NO_SPLIT
            ),
            Err(Error::WouldSplitBlock)
        );
        assert_eq!(h.mm.snapshot(), snap);
        map(&mut h, 5 * K4, K4, 0x9000_0000, Prot::R, MapFlags::REPLACE).unwrap();
        // 1 GiB → 511 × 2 MiB + 511 × 4 KiB + the new page.
        assert_eq!(
            h.pt.count_leaves(&h.mm, 0, 4 * G1).unwrap(),
            [0, 0, 511, 512]
        );
        assert_eq!(translate(&h, 5 * K4), Some((0x9000_0000, Prot::R)));
        for a in [0, 4 * K4, 6 * K4, M2 - K4, M2, 77 * M2 + 12 * K4, G1 - K4] {
            assert_eq!(translate(&h, a), Some((0x4000_0000 + a, Prot::R)), "{a:#x}");
        }
    }
}

#[test]
fn partial_unmap_splits_and_counts_bytes() {
    let mut h = Harness::new(s2());
    map(&mut h, G1, G1, 0, Prot::RWX, MapFlags::empty()).unwrap();
    assert_eq!(unmap(&mut h, G1 + M2 + K4, 2 * K4), Ok(2 * K4));
    assert_eq!(
        h.pt.count_leaves(&h.mm, 0, 4 * G1).unwrap(),
        [0, 0, 511, 510]
    );
    assert_eq!(translate(&h, G1 + M2), Some((M2, Prot::RWX)));
    assert_eq!(translate(&h, G1 + M2 + K4), None);
    assert_eq!(
        translate(&h, G1 + M2 + 3 * K4),
        Some((M2 + 3 * K4, Prot::RWX))
    );
    // Unmap of a range with holes keeps going and counts only what was mapped.
    assert_eq!(unmap(&mut h, G1, 2 * M2), Ok(2 * M2 - 2 * K4));
    assert_eq!(unmap(&mut h, 0, 4 * G1), Ok(G1 - 2 * M2));
    assert_eq!(unmap(&mut h, 0, 4 * G1), Ok(0));
    assert_eq!(h.mm.live(), 1);
}

#[test]
fn unmap_skips_holes() {
    let mut h = Harness::new(s1());
    map(&mut h, 0, K4, 0x1000, Prot::R, MapFlags::empty()).unwrap();
    map(&mut h, 3 * K4, K4, 0x3000, Prot::R, MapFlags::empty()).unwrap();
    map(&mut h, 5 * G1, K4, 0x3000, Prot::R, MapFlags::empty()).unwrap();
    assert_eq!(unmap(&mut h, 0, 6 * G1), Ok(3 * K4));
    assert_eq!(h.mm.live(), 1);
}

#[test]
fn set_owner_is_page_granular_and_splits() {
    let mut h = Harness::new(s2());
    map(&mut h, 0, G1, 0, Prot::RWX, MapFlags::empty()).unwrap();
    set_owner(&mut h, M2 - K4, 2 * K4, 1).unwrap();
    assert_eq!(h.pt.count_leaves(&h.mm, 0, G1).unwrap(), [0, 0, 510, 1022]);
    assert_eq!(leaf(&h, M2 - K4), (desc::owner_pte(1), 3));
    assert_eq!(leaf(&h, M2), (desc::owner_pte(1), 3));
    assert_eq!(translate(&h, M2 - 2 * K4), Some((M2 - 2 * K4, Prot::RWX)));
    // Over an empty range: tables down to L3 with one annotation per page.
    set_owner(&mut h, 2 * G1, M2, 255).unwrap();
    assert_eq!(leaf(&h, 2 * G1 + 17 * K4), (desc::owner_pte(255), 3));
    // Owner 0 is the zero entry: it is an unmap, which frees the tables again.
    let before = h.mm.live();
    set_owner(&mut h, 2 * G1, M2, 0).unwrap();
    assert_eq!(h.mm.live(), before - 2);
    assert_eq!(leaf(&h, 2 * G1).0, 0);
    // Annotation → annotation rewrites in place; counts stay.
    set_owner(&mut h, M2, K4, 2).unwrap();
    assert_eq!(leaf(&h, M2), (desc::owner_pte(2), 3));
}

#[test]
fn owner_arguments() {
    let mut h = Harness::new(s1());
    assert_eq!(set_owner(&mut h, 0, K4, 1), Err(Error::InvalidConfig));
    let mut h = Harness::new(s2());
    assert_eq!(set_owner(&mut h, 0, K4, 256), Err(Error::InvalidOwner));
    assert_eq!(set_owner(&mut h, 0, K4, u32::MAX), Err(Error::InvalidOwner));
    assert_eq!(h.mm.live(), 1);
    set_owner(&mut h, 0, K4, desc::MAX_OWNER_ID).unwrap();
}

#[test]
fn set_prot_changes_valid_leaves_only() {
    let mut h = Harness::new(s1());
    map(&mut h, 0, 2 * K4, 0x7000_0000, Prot::RW, MapFlags::empty()).unwrap();
    map(&mut h, M2, M2, 0x8000_0000, Prot::RW, MapFlags::empty()).unwrap();
    assert_eq!(
        h.op(|pt, mm, arch| pt.set_prot(mm, arch, 0, 4 * M2, Prot::R)),
        Ok(M2 + 2 * K4)
    );
    assert_eq!(translate(&h, K4), Some((0x7000_1000, Prot::R)));
    assert_eq!(translate(&h, M2 + K4), Some((0x8000_1000, Prot::R)));
    assert_eq!(leaf(&h, M2).1, 2);
    // Part of a block: split.
    assert_eq!(
        h.op(|pt, mm, arch| pt.set_prot(mm, arch, M2 + K4, K4, Prot::RX)),
        Ok(K4)
    );
    assert_eq!(translate(&h, M2 + K4), Some((0x8000_1000, Prot::RX)));
    assert_eq!(translate(&h, M2 + 2 * K4), Some((0x8000_2000, Prot::R)));
    // Part of a block, same attributes: no split.
    map(&mut h, 4 * M2, M2, 0x9000_0000, Prot::R, MapFlags::empty()).unwrap();
    assert_eq!(
        h.op(|pt, mm, arch| pt.set_prot(mm, arch, 4 * M2 + K4, K4, Prot::R)),
        Ok(K4)
    );
    assert_eq!(leaf(&h, 4 * M2).1, 2);
    assert_eq!(
        h.op(|pt, mm, arch| pt.set_prot(mm, arch, 0, K4, Prot::RWX)),
        Err(Error::InvalidProt)
    );
}

/// The table TLBIs of an unmap that empties its tables name each unlinked entry's base, as
/// the general walk's do, also on the walk-free path for a run of pages (here starting at
/// the second page of its tables, so that a page address would not be a table's base).
#[test]
fn small_run_unmap_invalidates_tables_by_their_base() {
    let va = 0x40_0060_1000;
    for cfg in [s1(), s2()] {
        let mut h = Harness::new(cfg);
        map(&mut h, va, 2 * K4, 0x1000, Prot::R, MapFlags::empty()).unwrap();
        h.log.borrow_mut().clear();
        assert_eq!(h.pt.unmap(&mut h.mm, &h.arch, va, 2 * K4), Ok(2 * K4));
        let tlbis: Vec<(u64, u8)> = events(&h)
            .iter()
            .filter_map(|e| match *e {
                Event::TlbiVa { va, level, .. } => Some((va, level)),
                Event::TlbiIpa { ipa, level, .. } => Some((ipa, level)),
                _ => None,
            })
            .collect();
        // The two pages with their level hint, then the L2, L1 and L0 entries with none.
        let want = [
            (va, 3),
            (va + K4, 3),
            (0x40_0060_0000, 0),
            (0x40_0000_0000, 0),
            (0, 0),
        ];
        assert_eq!(tlbis, want, "{cfg:?}");
        assert_eq!(h.mm.live(), 1);
    }
}

#[test]
fn stage1_tlbi_details() {
    let mut h = Harness::new(s1());
    map(
        &mut h,
        0x40_0000_0000,
        K4,
        0x1000,
        Prot::R,
        MapFlags::empty(),
    )
    .unwrap();
    h.log.borrow_mut().clear();
    h.pt.unmap(&mut h.mm, &h.arch, 0x40_0000_0000, K4).unwrap();
    let ev = events(&h);
    let tlbis: Vec<_> = ev
        .iter()
        .filter(|e| matches!(e, Event::TlbiVa { .. }))
        .copied()
        .collect();
    // The page with its level hint and the last-level variant, then the three tables with no
    // hint and the all-levels variant.
    assert_eq!(
        tlbis,
        vec![
            Event::TlbiVa {
                va: 0x40_0000_0000,
                level: 3,
                last: true
            },
            Event::TlbiVa {
                va: 0x40_0000_0000,
                level: 0,
                last: false
            },
            Event::TlbiVa {
                va: 0x40_0000_0000,
                level: 0,
                last: false
            },
            // The L0 entry covers [0, 512 GiB): its base address.
            Event::TlbiVa {
                va: 0,
                level: 0,
                last: false
            },
        ]
    );
    assert!(matches!(ev.last(), Some(Event::Free(_))));
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::Free(_))).count(), 3);
    assert_eq!(h.mm.live(), 1);
    // Mapping new entries: no TLBI, and it ends with DSB ISHST + ISB.
    h.log.borrow_mut().clear();
    h.pt.map(
        &mut h.mm,
        &h.arch,
        0,
        K4,
        0x1000,
        Prot::R,
        MapFlags::empty(),
    )
    .unwrap();
    let ev = events(&h);
    assert!(
        !ev.iter()
            .any(|e| matches!(e, Event::TlbiVa { .. } | Event::DsbIsh))
    );
    assert_eq!(ev[ev.len() - 2..], [Event::DsbIshst, Event::Isb]);
}

#[test]
fn stage2_tlbi_uses_the_vmid_and_no_isb() {
    let mut h = Harness::new(Config::stage2(42, 40));
    map(&mut h, M2, M2, 0, Prot::RW, MapFlags::empty()).unwrap();
    h.log.borrow_mut().clear();
    h.pt.unmap(&mut h.mm, &h.arch, M2, M2).unwrap();
    let ev = events(&h);
    assert!(
        ev.contains(&Event::TlbiIpa {
            vmid: 42,
            ipa: M2,
            level: 2
        }),
        "{ev:x?}"
    );
    assert!(!ev.contains(&Event::Isb));
    let ev_map = {
        h.log.borrow_mut().clear();
        h.pt.map(&mut h.mm, &h.arch, 0, K4, 0, Prot::RW, MapFlags::empty())
            .unwrap();
        events(&h)
    };
    assert_eq!(ev_map.last(), Some(&Event::DsbIshst));
}

#[test]
fn unmap_batches_invalidations() {
    let mut h = Harness::new(s2());
    map(&mut h, 0, M2, 0, Prot::RW, MapFlags::FORCE_PAGES).unwrap();
    h.log.borrow_mut().clear();
    assert_eq!(h.pt.unmap(&mut h.mm, &h.arch, 0, M2), Ok(M2));
    let ev = events(&h);
    let n = |f: fn(&Event) -> bool| ev.iter().filter(|e| f(e)).count();
    // 512 pages and the L3, L2 and L1 tables: after 7 batches of 8 per-page TLBIs the unmap
    // switches to invalidating the whole VMID, once per freed table (each free must complete
    // its invalidation first).
    assert_eq!(n(|e| matches!(e, Event::TlbiIpa { .. })), 7 * 8);
    assert_eq!(n(|e| matches!(e, Event::TlbiVmid(_))), 3);
    // One DSB ISHST per batch, not per page; a DSB ISH per freed table.
    assert!(
        n(|e| *e == Event::DsbIshst) <= 7 + 3 + 1,
        "{}",
        n(|e| *e == Event::DsbIshst)
    );
    assert_eq!(n(|e| *e == Event::DsbIsh), 3);
}

#[test]
fn small_unmaps_stay_precise() {
    // Up to 7 batches of 8 pages, every page gets its own TLBI and nothing is flushed
    // wholesale (other mappings stay cached).
    let mut h = Harness::new(s2());
    map(&mut h, 0, M2, 0, Prot::RW, MapFlags::FORCE_PAGES).unwrap();
    h.log.borrow_mut().clear();
    assert_eq!(h.pt.unmap(&mut h.mm, &h.arch, 0, 56 * K4), Ok(56 * K4));
    let ev = events(&h);
    let n = |f: fn(&Event) -> bool| ev.iter().filter(|e| f(e)).count();
    assert_eq!(n(|e| matches!(e, Event::TlbiIpa { .. })), 56);
    assert_eq!(n(|e| matches!(e, Event::TlbiVmid(_))), 0);
}

#[test]
fn valid_to_valid_keeps_counts() {
    let mut h = Harness::new(s2());
    map(&mut h, 0, K4, 0x1000, Prot::RW, MapFlags::empty()).unwrap();
    let l3 = table_of(&h, 0, 3);
    assert_eq!(h.mm.page_count(l3), 2);
    for i in 0..5 {
        map(&mut h, 0, K4, 0x1000 * (i + 2), Prot::RW, MapFlags::REPLACE).unwrap();
        assert_eq!(h.mm.page_count(l3), 2);
    }
    set_owner(&mut h, 0, K4, 9).unwrap();
    assert_eq!(h.mm.page_count(l3), 2);
    h.op(|pt, mm, arch| pt.set_prot(mm, arch, 0, K4, Prot::R))
        .unwrap();
    assert_eq!(h.mm.page_count(l3), 2);
}

#[test]
fn no_memory_in_the_middle_is_consistent() {
    let mut h = Harness::new(s2());
    h.mm.budget = Some(3);
    // Tables for the first GiB: L1 + L2 + L3, then the next 2 MiB needs another L3.
    let r = map(
        &mut h,
        G1 - K4,
        3 * M2,
        0x1000_0000,
        Prot::RW,
        MapFlags::FORCE_PAGES,
    );
    assert_eq!(r, Err(Error::NoMemory));
    check_structure(&h.pt, &h.mm).unwrap();
    // Root (L0) → L1 → L2 → L3 for the first GiB took the budget; the second GiB's L2 failed.
    assert_eq!(translate(&h, G1 - K4), Some((0x1000_0000, Prot::RW)));
    assert_eq!(translate(&h, G1), None);
    h.mm.budget = None;
    map(&mut h, 0, K4, 0, Prot::RW, MapFlags::empty()).unwrap();
    let mut h = Harness::new(s2());
    map(&mut h, 0, G1, 0, Prot::RW, MapFlags::empty()).unwrap();
    h.mm.budget = Some(0);
    let snap = h.mm.snapshot();
    assert_eq!(unmap(&mut h, K4, K4), Err(Error::NoMemory));
    assert_eq!(set_owner(&mut h, K4, K4, 1), Err(Error::NoMemory));
    assert_eq!(h.mm.snapshot(), snap);
}

/// An MmOps with no-op get/put, like the boot-time bump allocator.
struct NoRefs(TestMm);

impl MmOps for NoRefs {
    fn zalloc_page(&mut self) -> Option<u64> {
        self.0.zalloc_page()
    }
    fn get_page(&mut self, _pa: u64) {}
    fn put_page(&mut self, _pa: u64) {}
    fn page_count(&self, pa: u64) -> u32 {
        self.0.page_count(pa)
    }
    fn read_pte(&self, pa: u64) -> u64 {
        self.0.read_pte(pa)
    }
    fn write_pte(&mut self, pa: u64, pte: u64) {
        self.0.write_pte(pa, pte)
    }
}

#[test]
fn fixup_refcounts_after_boot() {
    for cfg in [s1(), s2()] {
        let mut mm = NoRefs(TestMm::new());
        let arch = TestArch::new();
        let mut pt = PageTable::new(&mut mm, cfg).unwrap();
        let prot = if cfg.format.is_stage2() {
            Prot::RWX
        } else {
            Prot::RW
        };
        pt.map(&mut mm, &arch, 0, 8 * K4, 0, prot, MapFlags::empty())
            .unwrap();
        pt.map(
            &mut mm,
            &arch,
            0x7f_0000_0000,
            M2,
            0,
            prot,
            MapFlags::FORCE_PAGES,
        )
        .unwrap();
        pt.map(&mut mm, &arch, 3 * G1, G1, G1, prot, MapFlags::empty())
            .unwrap();
        if cfg.format.is_stage2() {
            pt.set_owner(&mut mm, &arch, 8 * K4, K4, 4).unwrap();
        }
        let mut mm = mm.0;
        assert!(check_structure(&pt, &mm).is_err());
        pt.fixup_refcounts(&mut mm);
        check_structure(&pt, &mm).unwrap();
        let ia = cfg.ia_size();
        pt.unmap(&mut mm, &arch, 0, ia).unwrap();
        assert_eq!(mm.live(), 1);
    }
}

#[test]
fn get_leaf_bounds() {
    let mut h = Harness::new(Config::stage2(1, 32));
    assert_eq!(h.pt.get_leaf(&h.mm, 1 << 32), Err(Error::OutOfRange));
    assert_eq!(h.pt.get_leaf(&h.mm, (1 << 32) - 1), Ok((0, 1)));
    map(&mut h, 0, K4, 0x1000, Prot::R, MapFlags::empty()).unwrap();
    assert_eq!(h.pt.get_leaf(&h.mm, 0xfff).unwrap().1, 3);
    assert_eq!(h.pt.get_leaf(&h.mm, 0x1000), Ok((0, 3)));
    assert_eq!(h.pt.get_leaf(&h.mm, M2), Ok((0, 2)));
}

#[test]
fn destroy_frees_all_and_root() {
    let mut h = Harness::new(s2());
    map(&mut h, 0, 3 * G1, 0, Prot::RW, MapFlags::empty()).unwrap();
    map(&mut h, 3 * G1, 4 * M2, 0, Prot::RW, MapFlags::FORCE_PAGES).unwrap();
    set_owner(&mut h, 3 * G1 + 8 * M2, K4, 2).unwrap();
    let before = h.arch.count.get();
    let Harness {
        pt, mut mm, arch, ..
    } = h;
    pt.destroy(&mut mm);
    assert_eq!(mm.live(), 0);
    assert_eq!(mm.allocs, mm.frees);
    assert_eq!(arch.count.get(), before);
}

#[test]
fn trait_objects_are_not_required() {
    // The operations are generic: a plain struct implementing both traits works, and the
    // arch calls can be counted without a log.
    #[derive(Default)]
    struct Counting(std::cell::Cell<u32>);
    impl ArchOps for Counting {
        fn dsb_ishst(&self) {
            self.0.set(self.0.get() + 1);
        }
        fn dsb_ish(&self) {
            self.0.set(self.0.get() + 1);
        }
        fn isb(&self) {
            self.0.set(self.0.get() + 1);
        }
        fn tlbi_el2_va(&self, _: u64, _: u8, _: bool) {
            self.0.set(self.0.get() + 1);
        }
        fn tlbi_s2_ipa(&self, _: u16, _: u64, _: u8) {
            self.0.set(self.0.get() + 1);
        }
        fn tlbi_vmid(&self, _: u16) {
            self.0.set(self.0.get() + 1);
        }
        fn tlbi_el2_all(&self) {
            self.0.set(self.0.get() + 1);
        }
    }
    let mut mm = TestMm::new();
    let arch = Counting::default();
    let mut pt = PageTable::new(
        &mut mm,
        Config {
            format: Format::Stage1El2,
            ia_bits: 39,
        },
    )
    .unwrap();
    pt.map(&mut mm, &arch, 0, K4, 0, Prot::R, MapFlags::empty())
        .unwrap();
    assert_eq!(
        arch.0.get(),
        4,
        "DSB before linking each of two tables, final DSB + ISB"
    );
}

/// Runs `f` on the harness and returns its events (the harness checks still run).
fn events_of<R>(
    h: &mut Harness,
    f: impl FnOnce(&mut PageTable, &mut TestMm, &TestArch) -> R,
) -> (R, Vec<Event>) {
    let tables = common::table_pages(&h.pt, &h.mm);
    h.log.borrow_mut().clear();
    let r = f(&mut h.pt, &mut h.mm, &h.arch);
    let ev = std::mem::take(&mut *h.log.borrow_mut());
    common::check_maintenance(&ev, tables, h.pt.format()).unwrap();
    check_structure(&h.pt, &h.mm).unwrap();
    (r, ev)
}

fn tlbis(ev: &[Event]) -> Vec<Event> {
    ev.iter()
        .filter(|e| matches!(e, Event::TlbiIpa { .. } | Event::TlbiVa { .. }))
        .copied()
        .collect()
}

#[test]
fn covered_part_of_a_block_changes_with_one_break() {
    // set_owner over a whole 2 MiB block: one break-before-make of the block, not one per page.
    let mut h = Harness::new(s2());
    map(&mut h, M2, M2, 0, Prot::RWX, MapFlags::empty()).unwrap();
    let (r, ev) = events_of(&mut h, |pt, mm, arch| pt.set_owner(mm, arch, M2, M2, 5));
    r.unwrap();
    assert_eq!(
        tlbis(&ev),
        vec![Event::TlbiIpa {
            vmid: 7,
            ipa: M2,
            level: 2
        }]
    );
    assert_eq!(h.pt.count_leaves(&h.mm, 0, G1).unwrap(), [0, 0, 0, 0]);
    assert_eq!(leaf(&h, M2 + 77 * K4), (desc::owner_pte(5), 3));
    // Unmap of all but one page of a block: the block's TLBI only.
    let mut h = Harness::new(s2());
    map(&mut h, M2, M2, 0, Prot::RWX, MapFlags::empty()).unwrap();
    let (r, ev) = events_of(&mut h, |pt, mm, arch| pt.unmap(mm, arch, M2 + K4, M2 - K4));
    assert_eq!(r, Ok(M2 - K4));
    assert_eq!(
        tlbis(&ev),
        vec![Event::TlbiIpa {
            vmid: 7,
            ipa: M2,
            level: 2
        }]
    );
    assert_eq!(translate(&h, M2), Some((0, Prot::RWX)));
    assert_eq!(translate(&h, M2 + K4), None);
    // set_prot on part of a 1 GiB block: one break for the 1 GiB block, one for the 2 MiB
    // block holding the partly covered end.
    let mut h = Harness::new(s1());
    map(&mut h, G1, G1, G1, Prot::RW, MapFlags::empty()).unwrap();
    let (r, ev) = events_of(&mut h, |pt, mm, arch| {
        pt.set_prot(mm, arch, G1, 3 * M2 + K4, Prot::R)
    });
    assert_eq!(r, Ok(3 * M2 + K4));
    assert_eq!(
        tlbis(&ev),
        vec![
            Event::TlbiVa {
                va: G1,
                level: 1,
                last: true
            },
            Event::TlbiVa {
                va: G1 + 3 * M2,
                level: 2,
                last: true
            }
        ]
    );
    assert_eq!(
        translate(&h, G1 + 3 * M2 - K4),
        Some((G1 + 3 * M2 - K4, Prot::R))
    );
    assert_eq!(translate(&h, G1 + 3 * M2), Some((G1 + 3 * M2, Prot::R)));
    assert_eq!(
        translate(&h, G1 + 3 * M2 + K4),
        Some((G1 + 3 * M2 + K4, Prot::RW))
    );
    assert_eq!(
        h.pt.count_leaves(&h.mm, 0, 4 * G1).unwrap(),
        [0, 0, 511, 512]
    );
}

/// What one-page and small operations cost in descriptor reads, once their tables exist: the
/// fast paths (one descent to the last-level table, no walk) must be taken.
#[test]
fn small_operations_take_their_fast_paths() {
    for cfg in [s2(), s1()] {
        let mut h = Harness::new(cfg);
        let base = 0x4000_0000;
        let stage2 = cfg.format.is_stage2();
        // The tables down to the last level exist (a neighbouring page stays mapped).
        map(&mut h, base, 4096, base, Prot::RW, MapFlags::empty()).unwrap();
        let cost = |h: &mut Harness, f: &dyn Fn(&mut Harness)| {
            let before = h.mm.reads.get();
            f(h);
            h.mm.reads.get() - before
        };
        let page = base + 0x1000;
        let run = base + 0x10_000;
        let m = cost(&mut h, &|h| {
            map(h, page, 4096, page, Prot::RW, MapFlags::empty()).unwrap()
        });
        let u = cost(&mut h, &|h| assert_eq!(unmap(h, page, 4096), Ok(4096)));
        let r = cost(&mut h, &|h| {
            map(h, run, 0x4000, run, Prot::RW, MapFlags::empty()).unwrap()
        });
        let ur = cost(&mut h, &|h| assert_eq!(unmap(h, run, 0x4000), Ok(0x4000)));
        let o = if stage2 {
            cost(&mut h, &|h| set_owner(h, page, 4096, 3).unwrap())
        } else {
            0
        };
        let or = if stage2 {
            cost(&mut h, &|h| set_owner(h, run, 0x4000, 3).unwrap())
        } else {
            0
        };
        let l = cost(&mut h, &|h| {
            leaf(h, page);
        });
        // One read per level for a page (four levels), plus one per further entry of a run
        // and the checks of the tables a run's unmap might empty.
        let (o_max, or_max) = if stage2 { (4, 7) } else { (0, 0) };
        let got = [m, u, r, ur, o, or, l];
        let max = [4, 4, 7, 11, o_max, or_max, 4];
        assert!(
            got.iter().zip(max).all(|(g, m)| *g <= m),
            "{:?}: reads {got:?}, at most {max:?} (map, unmap, map 4, unmap 4, owner, owner 4, leaf)",
            cfg.format
        );
    }
}
