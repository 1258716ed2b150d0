//! `PageTable::leaf`: the typed lookup, in scenarios and against an interval model of random
//! map / unmap / set_owner sequences; and its agreement with `get_leaf`.

mod common;
mod persistence;

use common::{MEntry, Model, TestArch, TestMm, check_structure};
use pkvm_pgtable::desc::{self, granule, output_address};
use pkvm_pgtable::{Config, Error, Format, Leaf, MapFlags, MmOps, PageTable, Prot, WalkFlags};
use proptest::prelude::*;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;

fn new(cfg: Config) -> (PageTable, TestMm, TestArch) {
    let mut mm = TestMm::new();
    let pt = PageTable::new(&mut mm, cfg).unwrap();
    (pt, mm, TestArch::new())
}

/// `leaf` is `get_leaf` decoded, with the same level and (for a valid entry) the same pte.
fn check_agrees(pt: &PageTable, mm: &TestMm, addr: u64) -> Leaf {
    let l = pt.leaf(mm, addr).unwrap();
    let (pte, level) = pt.get_leaf(mm, addr).unwrap();
    assert_eq!(l, Leaf::decode(pt.format(), pte, level), "{addr:#x}");
    assert_eq!(l.level(), level);
    assert_eq!(l.size(), granule(level));
    l
}

#[test]
fn empty_table_gives_empty_at_the_root_level() {
    for (cfg, level) in [
        (Config::stage2(1, 40), 0),
        (Config::stage2(1, 36), 1),
        (Config::stage2(1, 30), 2),
        (Config::stage1_el2(), 0),
    ] {
        let (pt, mm, _) = new(cfg);
        assert_eq!(pt.leaf(&mm, 0).unwrap(), Leaf::Empty { level });
        assert_eq!(
            pt.leaf(&mm, cfg.ia_size() - K4).unwrap(),
            Leaf::Empty { level }
        );
        assert_eq!(pt.leaf(&mm, cfg.ia_size()), Err(Error::OutOfRange));
        assert_eq!(pt.leaf(&mm, u64::MAX), Err(Error::OutOfRange));
    }
}

#[test]
fn stage2_blocks_pages_and_annotations() {
    let (mut pt, mut mm, arch) = new(Config::stage2(3, 40));
    // A 1 GiB block, a 2 MiB block and a page.
    pt.map(
        &mut mm,
        &arch,
        G1,
        G1,
        0x8000_0000,
        Prot::RW,
        MapFlags::empty(),
    )
    .unwrap();
    pt.map(
        &mut mm,
        &arch,
        4 * G1,
        M2 + K4,
        0x1_0000_0000,
        Prot::RX,
        MapFlags::empty(),
    )
    .unwrap();
    let Leaf::Valid { pte, level: 1 } = check_agrees(&pt, &mm, G1 + 0x1234_5000) else {
        panic!("no 1 GiB block");
    };
    assert_eq!(output_address(pte), 0x8000_0000);
    assert_eq!(pt.format().pte_prot(pte), Prot::RW);
    let Leaf::Valid { pte, level: 2 } = check_agrees(&pt, &mm, 4 * G1 + 0x1000) else {
        panic!("no 2 MiB block");
    };
    assert_eq!(output_address(pte), 0x1_0000_0000);
    let Leaf::Valid { pte, level: 3 } = check_agrees(&pt, &mm, 4 * G1 + M2) else {
        panic!("no page");
    };
    assert_eq!(output_address(pte), 0x1_0020_0000);
    assert_eq!(pt.format().pte_prot(pte), Prot::RX);
    // The rest of the last-level table, of the L2 table, of the L1 table, of the L0 table.
    assert_eq!(
        check_agrees(&pt, &mm, 4 * G1 + M2 + K4),
        Leaf::Empty { level: 3 }
    );
    assert_eq!(
        check_agrees(&pt, &mm, 4 * G1 + 2 * M2),
        Leaf::Empty { level: 2 }
    );
    assert_eq!(check_agrees(&pt, &mm, 2 * G1), Leaf::Empty { level: 1 });
    assert_eq!(check_agrees(&pt, &mm, 512 * G1), Leaf::Empty { level: 0 });

    // Annotations: one page of the 2 MiB block (split), owner 255 for a page of nothing.
    pt.set_owner(&mut mm, &arch, 4 * G1 + 5 * K4, K4, 7)
        .unwrap();
    pt.set_owner(&mut mm, &arch, 8 * G1, K4, 255).unwrap();
    assert_eq!(
        check_agrees(&pt, &mm, 4 * G1 + 5 * K4),
        Leaf::Annotated { owner: 7, level: 3 }
    );
    assert!(matches!(
        check_agrees(&pt, &mm, 4 * G1 + 6 * K4),
        Leaf::Valid { level: 3, .. }
    ));
    assert_eq!(
        check_agrees(&pt, &mm, 8 * G1),
        Leaf::Annotated {
            owner: 255,
            level: 3
        }
    );
    // Owner 0 is no annotation.
    pt.set_owner(&mut mm, &arch, 8 * G1, K4, 0).unwrap();
    assert_eq!(check_agrees(&pt, &mm, 8 * G1), Leaf::Empty { level: 1 });
    check_structure(&pt, &mm).unwrap();
}

#[test]
fn annotation_above_the_last_level() {
    // This crate annotates pages only; an annotation in a block-level entry, which a `walk_mut`
    // user could write, is decoded the same way (written here by hand).
    let (mut pt, mut mm, arch) = new(Config::stage2(3, 40));
    pt.set_owner(&mut mm, &arch, 0, K4, 1).unwrap();
    pt.walk_mut(&mut mm, M2, M2, WalkFlags::LEAF, |mm, v| {
        assert_eq!((v.level, v.pte), (2, 0));
        mm.write_pte(v.ptep, desc::owner_pte(9));
        mm.get_page(v.ptep);
        Ok::<(), Error>(())
    })
    .unwrap();
    assert_eq!(
        check_agrees(&pt, &mm, M2 + 0x1000),
        Leaf::Annotated { owner: 9, level: 2 }
    );
    assert_eq!(
        pt.leaf(&mm, M2 + 0x1000).unwrap().size(),
        M2,
        "the annotation stands for its whole block"
    );
}

#[test]
fn stage1_has_no_annotations() {
    let (mut pt, mut mm, arch) = new(Config::stage1_el2());
    pt.map(
        &mut mm,
        &arch,
        0x40_0000_0000,
        2 * K4,
        0x4000_0000,
        Prot::RW | Prot::SW1,
        MapFlags::FORCE_PAGES,
    )
    .unwrap();
    let Leaf::Valid { pte, level: 3 } = check_agrees(&pt, &mm, 0x40_0000_1000) else {
        panic!("no page");
    };
    assert_eq!(output_address(pte), 0x4000_1000);
    assert_eq!(pt.format().pte_prot(pte), Prot::RW | Prot::SW1);
    // An invalid stage-1 entry with bits in the annotation field is no annotation (stage-1
    // has none), and not empty either: unknown, which callers refuse.
    pt.walk_mut(&mut mm, 0x40_0000_2000, K4, WalkFlags::LEAF, |mm, v| {
        mm.write_pte(v.ptep, desc::owner_pte(5));
        Ok::<(), Error>(())
    })
    .unwrap();
    assert_eq!(
        check_agrees(&pt, &mm, 0x40_0000_2000),
        Leaf::Unknown {
            pte: desc::owner_pte(5),
            level: 3
        }
    );
    assert_eq!(
        Leaf::decode(Format::Stage1El2, desc::owner_pte(5), 3),
        Leaf::Unknown {
            pte: desc::owner_pte(5),
            level: 3
        }
    );
    assert_eq!(
        Leaf::decode(Format::Stage2 { vmid: 0 }, desc::owner_pte(5), 3),
        Leaf::Annotated { owner: 5, level: 3 }
    );
    // Anything else non-zero and invalid is no annotation, and not empty either (fail
    // closed): software bits, a stray type bit, an owner of 0, an annotation with extra bits.
    for pte in [1 << 55, 0x2, 0x400, desc::owner_pte(5) | 1 << 55] {
        assert_eq!(
            Leaf::decode(Format::Stage2 { vmid: 0 }, pte, 2),
            Leaf::Unknown { pte, level: 2 },
            "{pte:#x}"
        );
    }
}

#[derive(Clone, Debug)]
enum Op {
    Map {
        addr: u64,
        size: u64,
        phys: u64,
        prot: Prot,
        pages: bool,
    },
    Unmap {
        addr: u64,
        size: u64,
    },
    SetOwner {
        addr: u64,
        size: u64,
        owner: u32,
    },
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    let addr = (
        0..2u64,
        0..4u64,
        prop_oneof![Just(0u64), 0..512u64, Just(511u64)],
    )
        .prop_map(|(g, m, p)| g * G1 + m * M2 + p * K4);
    let size = prop_oneof![
        4 => (1..=8u64).prop_map(|n| n * K4),
        1 => Just(M2),
        1 => Just(M2 + K4),
        1 => Just(G1),
    ];
    (addr, size).prop_map(|(a, s)| (a, s.min(2 * G1 - a)))
}

fn op(stage2: bool) -> BoxedStrategy<Op> {
    let prot = if stage2 {
        prop_oneof![
            Just(Prot::RWX),
            Just(Prot::R),
            Just(Prot::RW | Prot::DEVICE)
        ]
        .boxed()
    } else {
        prop_oneof![Just(Prot::RW), Just(Prot::RX), Just(Prot::R | Prot::SW0)].boxed()
    };
    let skew = prop_oneof![Just(0u64), Just(M2), Just(K4)];
    let map = (range(), skew, prot, any::<bool>()).prop_map(|((addr, size), skew, prot, pages)| {
        // Congruent with `addr` modulo 1 GiB (plus a skew), so that blocks are possible.
        let phys = 0x1_0000_0000 + (addr & (G1 - 1)) + skew;
        let pages = pages && size <= 4 * M2;
        Op::Map {
            addr,
            size,
            phys,
            prot,
            pages,
        }
    });
    let unmap = range().prop_map(|(addr, size)| Op::Unmap { addr, size });
    if stage2 {
        let owner = (range(), prop_oneof![Just(0u32), Just(1), Just(255)]).prop_map(
            |((addr, size), owner)| Op::SetOwner {
                addr,
                size: size.min(4 * M2),
                owner,
            },
        );
        prop_oneof![3 => map, 2 => unmap, 2 => owner].boxed()
    } else {
        prop_oneof![3 => map, 2 => unmap].boxed()
    }
}

fn case() -> impl Strategy<Value = (Config, Vec<Op>)> {
    prop_oneof![Just(Config::stage2(4, 40)), Just(Config::stage1_el2())].prop_flat_map(|cfg| {
        (
            Just(cfg),
            prop::collection::vec(op(cfg.format.is_stage2()), 1..12),
        )
    })
}

/// Checks `leaf` at `addr` against the model.
fn check_model(pt: &PageTable, mm: &TestMm, model: &Model, addr: u64) -> Result<(), TestCaseError> {
    let l = check_agrees(pt, mm, addr);
    let off = addr & (l.size() - 1);
    match (l, model.lookup(addr & !(K4 - 1))) {
        (Leaf::Valid { pte, .. }, Some(MEntry::Mapped { pa, prot })) => {
            prop_assert_eq!(output_address(pte) + (off & !(K4 - 1)), pa, "{:#x}", addr);
            prop_assert_eq!(pt.format().pte_prot(pte), prot, "{:#x}", addr);
        }
        (Leaf::Annotated { owner, .. }, Some(MEntry::Owner(o))) => {
            prop_assert_eq!(owner, o, "{:#x}", addr);
        }
        (Leaf::Empty { .. }, None) => {}
        (l, m) => prop_assert!(false, "{:#x}: leaf {:x?}, model {:x?}", addr, l, m),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: persistence::out_of_tree(), ..ProptestConfig::default() })]

    /// After random map / unmap / set_owner sequences, `leaf` of every page near the touched
    /// ranges says what the model says: the mapping (output address and prot), the owner, or
    /// nothing.
    #[test]
    fn leaf_matches_the_model((cfg, ops) in case()) {
        let (mut pt, mut mm, arch) = new(cfg);
        let mut model = Model::default();
        let mut probes = vec![0, G1, 2 * G1 - K4];
        for op in &ops {
            let (addr, size) = match *op {
                Op::Map { addr, size, phys, prot, pages } => {
                    let flags = if pages {
                        MapFlags::REPLACE | MapFlags::FORCE_PAGES
                    } else {
                        MapFlags::REPLACE
                    };
                    pt.map(&mut mm, &arch, addr, size, phys, prot, flags).unwrap();
                    model.set(addr, addr + size, MEntry::Mapped { pa: phys, prot });
                    (addr, size)
                }
                Op::Unmap { addr, size } => {
                    pt.unmap(&mut mm, &arch, addr, size).unwrap();
                    model.clear(addr, addr + size);
                    (addr, size)
                }
                Op::SetOwner { addr, size, owner } => {
                    pt.set_owner(&mut mm, &arch, addr, size, owner).unwrap();
                    if owner == 0 {
                        model.clear(addr, addr + size);
                    } else {
                        model.set(addr, addr + size, MEntry::Owner(owner as u8));
                    }
                    (addr, size)
                }
            };
            for p in [addr.wrapping_sub(K4), addr, addr + size / 2, addr + size - K4, addr + size] {
                if p < 2 * G1 {
                    probes.push(p & !(K4 - 1));
                }
            }
        }
        for &p in &probes {
            check_model(&pt, &mm, &model, p)?;
            check_model(&pt, &mm, &model, p + 0x123)?;
        }
    }
}

/// A leaf exists at levels 1 to 3 only: level 0 (even at an address aligned to its 512 GiB)
/// and anything past the last level are refused, whatever the address.
#[test]
fn leaf_pte_refuses_levels_without_leaves() {
    let s2 = Format::Stage2 { vmid: 0 };
    for f in [Format::Stage1El2, s2] {
        for level in [0, 4, 5, u8::MAX] {
            assert_eq!(
                f.leaf_pte(0, Prot::R, level),
                Err(Error::Misaligned),
                "{level}"
            );
            assert_eq!(f.leaf_pte(1 << 39, Prot::R, level), Err(Error::Misaligned));
        }
        for level in 1..=3 {
            let pa = granule(level);
            let pte = f.leaf_pte(pa, Prot::R, level).unwrap();
            assert_eq!(output_address(pte), pa, "level {level}");
        }
    }
}
