//! Walker semantics: visit order, invalid leaves, re-reading after callbacks, abort.

mod common;

use common::{Harness, TestMm};
use pkvm_pgtable::desc::{self, output_address, table_pte};
use pkvm_pgtable::{
    Config, Error, Format, MapFlags, MmOps, PageTable, Prot, Visit, VisitKind, WalkFlags,
};

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;

fn cfg39() -> Config {
    Config {
        format: Format::Stage1El2,
        ia_bits: 39,
    }
}

#[test]
fn visit_order_and_contents() {
    let mut h = Harness::new(cfg39());
    h.op(|pt, mm, arch| pt.map(mm, arch, 0, 2 * K4, 0x1000, Prot::R, MapFlags::empty()))
        .unwrap();
    let mut seen = Vec::new();
    h.pt.walk(&h.mm, 0, 2 * K4, WalkFlags::all(), |v: &Visit| {
        seen.push((v.kind, v.level, v.addr, v.pte));
        Ok::<(), Error>(())
    })
    .unwrap();
    let root = h.pt.root();
    let l2 = output_address(h.mm.read_pte(root));
    let l3 = output_address(h.mm.read_pte(l2));
    let p0 = h.mm.read_pte(l3);
    let p1 = h.mm.read_pte(l3 + 8);
    assert_eq!(
        seen,
        vec![
            (VisitKind::TablePre, 1, 0, table_pte(l2)),
            (VisitKind::TablePre, 2, 0, table_pte(l3)),
            (VisitKind::Leaf, 3, 0, p0),
            (VisitKind::Leaf, 3, K4, p1),
            (VisitKind::TablePost, 2, 0, table_pte(l3)),
            (VisitKind::TablePost, 1, 0, table_pte(l2)),
        ]
    );
    // Only leaves, starting in the middle of a table: the post visit reports the walk start.
    let mut seen = Vec::new();
    h.pt.walk(
        &h.mm,
        K4,
        K4,
        WalkFlags::LEAF | WalkFlags::TABLE_POST,
        |v: &Visit| {
            seen.push((v.kind, v.level, v.addr, v.ptep));
            Ok::<(), Error>(())
        },
    )
    .unwrap();
    assert_eq!(
        seen,
        vec![
            (VisitKind::Leaf, 3, K4, l3 + 8),
            (VisitKind::TablePost, 2, K4, l2),
            (VisitKind::TablePost, 1, K4, root),
        ]
    );
}

#[test]
fn invalid_entries_are_leaves() {
    let h = Harness::new(Config::stage2(1, 32));
    let mut seen = Vec::new();
    h.pt.walk(&h.mm, 0, 3 * G1, WalkFlags::LEAF, |v: &Visit| {
        seen.push((v.level, v.addr, v.pte));
        Ok::<(), Error>(())
    })
    .unwrap();
    assert_eq!(seen, vec![(1, 0, 0), (1, G1, 0), (1, 2 * G1, 0)]);
}

#[test]
fn visit_geometry_helpers() {
    let mut h = Harness::new(cfg39());
    h.op(|pt, mm, arch| pt.map(mm, arch, 0, M2, 0, Prot::R, MapFlags::empty()))
        .unwrap();
    let mut n = 0;
    h.pt.walk(&h.mm, K4, 2 * K4, WalkFlags::LEAF, |v: &Visit| {
        n += 1;
        assert_eq!((v.level, v.addr, v.end), (2, K4, 3 * K4));
        assert_eq!((v.base(), v.granule(), v.part_end()), (0, M2, 3 * K4));
        assert!(!v.covers_entry());
        Ok::<(), Error>(())
    })
    .unwrap();
    assert_eq!(n, 1);
    h.pt.walk(&h.mm, K4, 2 * M2 - K4, WalkFlags::LEAF, |v: &Visit| {
        // [4K, 2M) of the first entry, all of the second.
        assert_eq!(v.covers_entry(), v.addr == M2);
        assert_eq!(v.part_end(), if v.addr == M2 { 2 * M2 } else { M2 });
        Ok::<(), Error>(())
    })
    .unwrap();
}

#[test]
fn leaf_callback_installing_a_table_is_descended() {
    let mut mm = TestMm::new();
    let pt = PageTable::new(&mut mm, cfg39()).unwrap();
    let mut pages = 0;
    pt.walk_mut(
        &mut mm,
        0,
        M2 + K4,
        WalkFlags::LEAF,
        |mm: &mut TestMm, v: &Visit| {
            if v.level < 3 {
                assert_eq!(v.pte, 0);
                let child = mm.zalloc_page().ok_or(Error::NoMemory)?;
                mm.write_pte(v.ptep, table_pte(child));
                mm.get_page(v.ptep);
            } else {
                pages += 1;
                mm.write_pte(
                    v.ptep,
                    Format::Stage1El2.leaf_pte(v.addr, Prot::R, 3).unwrap(),
                );
                mm.get_page(v.ptep);
            }
            Ok::<(), Error>(())
        },
    )
    .unwrap();
    assert_eq!(pages, 513);
    assert_eq!(pt.count_leaves(&mm, 0, 4 * M2).unwrap(), [0, 0, 0, 513]);
    common::check_structure(&pt, &mm).unwrap();
}

#[test]
fn pre_callback_removing_a_table_is_not_descended() {
    // A pre visitor replaces a table by a block and frees the table at once (no RCU, as in
    // pKVM). The walker must re-read the entry: descending into the stale table would read the
    // freed page, which TestMm turns into a panic.
    let mut h = Harness::new(cfg39());
    h.op(|pt, mm, arch| pt.map(mm, arch, 0, 4 * K4, 0, Prot::R, MapFlags::empty()))
        .unwrap();
    let block = Format::Stage1El2.leaf_pte(0, Prot::R, 2).unwrap();
    let mut leaves = Vec::new();
    let pt = &h.pt;
    pt.walk_mut(
        &mut h.mm,
        0,
        M2,
        WalkFlags::TABLE_PRE | WalkFlags::LEAF,
        |mm: &mut TestMm, v: &Visit| {
            match v.kind {
                VisitKind::TablePre if v.level == 2 => {
                    let child = output_address(v.pte);
                    mm.write_pte(v.ptep, block);
                    for i in 0..4 {
                        mm.write_pte(child + i * 8, 0);
                        mm.put_page(child);
                    }
                    mm.put_page(child); // frees it
                }
                VisitKind::Leaf => leaves.push((v.level, v.pte)),
                _ => {}
            }
            Ok::<(), Error>(())
        },
    )
    .unwrap();
    assert_eq!(leaves, vec![(2, block)]);
    common::check_structure(&h.pt, &h.mm).unwrap();
}

#[test]
fn errors_abort_the_walk() {
    let mut h = Harness::new(Config::stage2(1, 40));
    h.op(|pt, mm, arch| pt.map(mm, arch, 0, 8 * K4, 0, Prot::R, MapFlags::empty()))
        .unwrap();
    #[derive(Debug, PartialEq)]
    enum E {
        Pg(Error),
        Stop(u64),
    }
    impl From<Error> for E {
        fn from(e: Error) -> Self {
            E::Pg(e)
        }
    }
    let mut n = 0;
    let r = h.pt.walk(
        &h.mm,
        0,
        8 * K4,
        WalkFlags::LEAF | WalkFlags::TABLE_POST,
        |v: &Visit| {
            n += 1;
            if v.addr == 2 * K4 {
                Err(E::Stop(v.addr))
            } else {
                Ok(())
            }
        },
    );
    assert_eq!(r, Err(E::Stop(2 * K4)));
    assert_eq!(n, 3, "no visit after the error, not even post visits");
    let r =
        h.pt.walk(&h.mm, 0, 0, WalkFlags::LEAF, |_: &Visit| Ok::<(), E>(()));
    assert_eq!(r, Err(E::Pg(Error::Misaligned)));
    let r =
        h.pt.walk_mut(&mut h.mm, 1 << 40, K4, WalkFlags::LEAF, |_, _: &Visit| {
            Ok::<(), E>(())
        });
    assert_eq!(r, Err(E::Pg(Error::OutOfRange)));
}

#[test]
fn walk_and_walk_mut_agree() {
    let mut h = Harness::new(Config::stage2(1, 40));
    h.op(|pt, mm, arch| {
        pt.map(
            mm,
            arch,
            G1 - M2,
            G1 + 2 * M2 + 3 * K4,
            0,
            Prot::R,
            MapFlags::empty(),
        )
    })
    .unwrap();
    h.op(|pt, mm, arch| pt.set_owner(mm, arch, 5 * G1, 3 * K4, 6))
        .unwrap();
    let mut a = Vec::new();
    let mut b = Vec::new();
    let size = 8 * G1;
    h.pt.walk(&h.mm, 0, size, WalkFlags::all(), |v: &Visit| {
        a.push(*v);
        Ok::<(), Error>(())
    })
    .unwrap();
    let pt = &h.pt;
    pt.walk_mut(
        &mut h.mm,
        0,
        size,
        WalkFlags::all(),
        |_: &mut TestMm, v: &Visit| {
            b.push(*v);
            Ok::<(), Error>(())
        },
    )
    .unwrap();
    assert_eq!(a, b);
    assert!(
        a.iter()
            .any(|v| v.kind == VisitKind::Leaf && desc::pte_owner(v.pte) == Some(6))
    );
}
