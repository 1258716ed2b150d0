//! Property test: random map / unmap / set_owner / set_prot sequences against an interval model,
//! with the structure (refcounts, leaks) and the break-before-make / TLB maintenance checked
//! after every step.

mod common;
mod persistence;

use common::{Harness, MEntry, Model, TestMm, check_structure, table_runs};
use pkvm_pgtable::desc::{self, granule, is_valid};
use pkvm_pgtable::{Config, Error, Format, MapFlags, MmOps, PageTable, Prot};
use proptest::prelude::*;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;

#[derive(Clone, Debug)]
enum Op {
    Map {
        addr: u64,
        size: u64,
        phys: u64,
        prot: Prot,
        flags: MapFlags,
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
    SetProt {
        addr: u64,
        size: u64,
        prot: Prot,
    },
}

fn configs() -> impl Strategy<Value = Config> {
    prop_oneof![
        3 => Just(Config::stage2(5, 40)),
        1 => Just(Config::stage2(1, 32)),
        1 => Just(Config::stage2(2, 30)),
        3 => Just(Config::stage1_el2()),
        1 => Just(Config { format: Format::Stage1El2, ia_bits: 39 }),
    ]
}

fn addr_strategy() -> impl Strategy<Value = u64> {
    let gib = prop_oneof![Just(0u64), Just(1), Just(3)];
    let mib2 = prop_oneof![2 => 0..4u64, 1 => Just(510u64), 1 => Just(511u64)];
    let page = prop_oneof![2 => Just(0u64), 2 => 0..512u64, 1 => Just(511u64), 1 => 0..4u64];
    (gib, mib2, page).prop_map(|(g, m, p)| g * G1 + m * M2 + p * K4)
}

fn size_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (1..=8u64).prop_map(|n| n * K4),
        1 => Just(M2 - K4),
        2 => Just(M2),
        1 => Just(M2 + K4),
        1 => Just(2 * M2),
        1 => Just(G1),
        1 => Just(G1 + M2),
    ]
}

fn prot_strategy(stage2: bool) -> BoxedStrategy<Prot> {
    let sw = prop_oneof![4 => Just(Prot::empty()), 1 => Just(Prot::SW0), 1 => Just(Prot::SW2 | Prot::SW3)];
    if stage2 {
        let base = prop_oneof![
            Just(Prot::RWX),
            Just(Prot::RW),
            Just(Prot::R),
            Just(Prot::RX),
            Just(Prot::W),
            Just(Prot::empty()),
            Just(Prot::RW | Prot::DEVICE),
            Just(Prot::R | Prot::DEVICE),
        ];
        (base, sw).prop_map(|(b, s)| b | s).boxed()
    } else {
        let base = prop_oneof![
            Just(Prot::RW),
            Just(Prot::R),
            Just(Prot::RX),
            Just(Prot::RW | Prot::DEVICE),
            Just(Prot::R | Prot::DEVICE),
        ];
        (base, sw).prop_map(|(b, s)| b | s).boxed()
    }
}

fn flags_strategy() -> impl Strategy<Value = MapFlags> {
    (any::<bool>(), any::<bool>(), prop::bool::weighted(0.2)).prop_map(
        |(force, replace, nosplit)| {
            let mut f = MapFlags::empty();
            if force {
                f |= MapFlags::FORCE_PAGES;
            }
            if replace {
                f |= MapFlags::REPLACE;
            }
            if nosplit {
                f |= MapFlags::NO_SPLIT;
            }
            f
        },
    )
}

/// Clamps `[addr, addr + size)` into the first `window` bytes.
fn clamp(addr: u64, size: u64, window: u64) -> (u64, u64) {
    let addr = addr % window;
    (addr, size.min(window - addr))
}

fn op_strategy(cfg: Config, max_size: u64) -> BoxedStrategy<Op> {
    let stage2 = cfg.format.is_stage2();
    let window = cfg.ia_size().min(4 * G1);
    let clampf = move |a: u64, s: u64, w: u64| clamp(a, s.min(max_size), w);
    let phys_base = prop_oneof![
        Just(0x4000_0000u64),
        Just(0x1_0000_0000),
        Just(0x2_4000_0000)
    ];
    // Physical offset from "congruent with addr at 1 GiB": 0 keeps every block possible.
    let phys_skew =
        prop_oneof![3 => Just(0u64), 1 => Just(M2), 1 => (1..4u64).prop_map(|n| n * K4)];
    let map = (
        addr_strategy(),
        size_strategy(),
        phys_base,
        phys_skew,
        prot_strategy(stage2),
        flags_strategy(),
    )
        .prop_map(move |(a, s, pb, skew, prot, mut flags)| {
            let (addr, size) = clampf(a, s, window);
            let mut skew = skew;
            if size > 4 * M2 {
                // Keep big mappings at block granularity: no 262144-page maps in a test.
                skew &= !(M2 - 1);
                flags.remove(MapFlags::FORCE_PAGES);
            }
            let phys = pb + (addr & (G1 - 1)) + skew;
            Op::Map {
                addr,
                size,
                phys,
                prot,
                flags,
            }
        });
    let unmap = (addr_strategy(), size_strategy()).prop_map(move |(a, s)| {
        let (addr, size) = clampf(a, s, window);
        Op::Unmap { addr, size }
    });
    let prot =
        (addr_strategy(), size_strategy(), prot_strategy(stage2)).prop_map(move |(a, s, prot)| {
            let (addr, size) = clampf(a, s, window);
            Op::SetProt { addr, size, prot }
        });
    if stage2 {
        let owner = (
            addr_strategy(),
            size_strategy(),
            prop_oneof![Just(0u32), Just(1), Just(2), Just(255)],
        )
            .prop_map(move |(a, s, owner)| {
                // Annotations are page granular: keep them small.
                let (addr, size) = clampf(a, s.min(4 * M2), window);
                Op::SetOwner { addr, size, owner }
            });
        prop_oneof![5 => map, 3 => unmap, 2 => owner, 1 => prot].boxed()
    } else {
        prop_oneof![5 => map, 3 => unmap, 1 => prot].boxed()
    }
}

fn case_strategy(max_ops: usize) -> impl Strategy<Value = (Config, Vec<Op>)> {
    configs().prop_flat_map(move |cfg| {
        (
            Just(cfg),
            prop::collection::vec(op_strategy(cfg, u64::MAX), 1..max_ops),
        )
    })
}

#[expect(
    clippy::too_many_arguments,
    reason = "the model, the tables and the map's arguments"
)]
/// Predicts the result of a map from the model and the pre-state leaves; returns the expected
/// result and the end of the part that gets mapped.
fn predict_map(
    model: &Model,
    pt: &PageTable,
    mm: &TestMm,
    addr: u64,
    size: u64,
    phys: u64,
    prot: Prot,
    flags: MapFlags,
) -> (Result<(), Error>, u64) {
    let end = addr + size;
    let mut p = addr;
    while p < end {
        let (pte, level) = pt.get_leaf(mm, p).unwrap();
        let g = granule(level);
        let base = p & !(g - 1);
        let seg_end = (base + g).min(end);
        if is_valid(pte) {
            let cur = model.lookup(p).expect("model and table disagree");
            let target = MEntry::Mapped {
                pa: phys + (p - addr),
                prot,
            };
            if cur != target {
                if !flags.contains(MapFlags::REPLACE) {
                    return (Err(Error::AlreadyMapped), p);
                }
                if flags.contains(MapFlags::NO_SPLIT) && level < 3 {
                    let eligible = base >= addr
                        && base + g <= end
                        && (phys + (base - addr)).is_multiple_of(g)
                        && !flags.contains(MapFlags::FORCE_PAGES);
                    if !eligible {
                        return (Err(Error::WouldSplitBlock), p);
                    }
                }
            }
        }
        p = seg_end;
    }
    (Ok(()), end)
}

/// Runs one step on both the tables and the model and compares.
fn step(h: &mut Harness, model: &mut Model, op: &Op) {
    match *op {
        Op::Map {
            addr,
            size,
            phys,
            prot,
            flags,
        } => {
            let (want, upto) = predict_map(model, &h.pt, &h.mm, addr, size, phys, prot, flags);
            let got = h.op(|pt, mm, arch| pt.map(mm, arch, addr, size, phys, prot, flags));
            assert_eq!(got, want, "{op:x?}");
            model.set(addr, upto, MEntry::Mapped { pa: phys, prot });
        }
        Op::Unmap { addr, size } => {
            let want = model.mapped_bytes(addr, addr + size);
            let got = h.op(|pt, mm, arch| pt.unmap(mm, arch, addr, size));
            assert_eq!(got, Ok(want), "{op:x?}");
            model.clear(addr, addr + size);
        }
        Op::SetOwner { addr, size, owner } => {
            let got = h.op(|pt, mm, arch| pt.set_owner(mm, arch, addr, size, owner));
            assert_eq!(got, Ok(()), "{op:x?}");
            if owner == 0 {
                model.clear(addr, addr + size);
            } else {
                model.set(addr, addr + size, MEntry::Owner(owner as u8));
            }
        }
        Op::SetProt { addr, size, prot } => {
            let want = model.mapped_bytes(addr, addr + size);
            let got = h.op(|pt, mm, arch| pt.set_prot(mm, arch, addr, size, prot));
            assert_eq!(got, Ok(want), "{op:x?}");
            for (s, e, m) in model.pieces(addr, addr + size) {
                if let MEntry::Mapped { pa, .. } = m {
                    model.set(s, e, MEntry::Mapped { pa, prot });
                }
            }
        }
    }
    let got = table_runs(&h.pt, &h.mm);
    let want = model.canonical();
    assert_eq!(got, want, "tables differ from the model after {op:x?}");
}

fn run_case(cfg: Config, ops: &[Op]) {
    let mut h = Harness::new(cfg);
    let mut model = Model::default();
    for op in ops {
        step(&mut h, &mut model, op);
    }
    // count_leaves agrees with an independent count.
    let window = cfg.ia_size().min(4 * G1);
    let counts = h.pt.count_leaves(&h.mm, 0, window).unwrap();
    let mut want = [0u64; 4];
    for (&page, &(level, _)) in &common::table_pages(&h.pt, &h.mm) {
        for &pte in h.mm.table(page) {
            if desc::is_valid_leaf(pte, level) {
                want[usize::from(level)] += 1;
            }
        }
    }
    assert_eq!(counts, want);
    // Unmapping everything leaves only the root, with count 1.
    let ia = cfg.ia_size();
    let want_bytes = model.mapped_bytes(0, ia);
    let got = h.op(|pt, mm, arch| pt.unmap(mm, arch, 0, ia));
    assert_eq!(got, Ok(want_bytes));
    assert_eq!(
        h.mm.live(),
        1,
        "table pages left after unmapping everything"
    );
    assert_eq!(h.mm.page_count(h.pt.root()), 1);
    let root = h.pt.root();
    h.pt.destroy(&mut h.mm);
    assert_eq!(h.mm.live(), 0);
    assert_eq!(h.mm.allocs, h.mm.frees);
    assert!(!h.mm.pages.contains_key(&root));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: persistence::out_of_tree(), ..ProptestConfig::default() })]

    #[test]
    fn random_ops_match_model((cfg, ops) in case_strategy(14)) {
        run_case(cfg, &ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: persistence::out_of_tree(), ..ProptestConfig::default() })]

    /// The same sequences, but destroy is used on the populated table: every page is freed.
    #[test]
    fn destroy_frees_everything((cfg, ops) in case_strategy(6)) {
        let mut h = Harness::new(cfg);
        let mut model = Model::default();
        for op in &ops {
            step(&mut h, &mut model, op);
        }
        h.pt.destroy(&mut h.mm);
        prop_assert_eq!(h.mm.live(), 0);
        prop_assert_eq!(h.mm.allocs, h.mm.frees);
    }
}

/// Runs ops with a small page budget: NoMemory may happen anywhere; the tables must stay
/// consistent and every page must hold either its old or its new content.
fn run_nomem_case(cfg: Config, ops: &[Op], budget: u64) {
    let mut h = Harness::new(cfg);
    h.mm.budget = Some(budget);
    let mut model = Model::default();
    for op in ops {
        let before = model.clone();
        let (addr, size) = match *op {
            Op::Map { addr, size, .. }
            | Op::Unmap { addr, size }
            | Op::SetOwner { addr, size, .. }
            | Op::SetProt { addr, size, .. } => (addr, size),
        };
        let mut full = before.clone();
        let r = match *op {
            Op::Map {
                addr,
                size,
                phys,
                prot,
                flags,
            } => {
                let flags = (flags | MapFlags::REPLACE) - MapFlags::NO_SPLIT;
                full.set(addr, addr + size, MEntry::Mapped { pa: phys, prot });
                h.op(|pt, mm, arch| pt.map(mm, arch, addr, size, phys, prot, flags))
            }
            Op::Unmap { addr, size } => {
                full.clear(addr, addr + size);
                h.op(|pt, mm, arch| pt.unmap(mm, arch, addr, size).map(|_| ()))
            }
            Op::SetOwner { addr, size, owner } => {
                if owner == 0 {
                    full.clear(addr, addr + size);
                } else {
                    full.set(addr, addr + size, MEntry::Owner(owner as u8));
                }
                h.op(|pt, mm, arch| pt.set_owner(mm, arch, addr, size, owner))
            }
            Op::SetProt { addr, size, prot } => {
                for (s, e, m) in before.pieces(addr, addr + size) {
                    if let MEntry::Mapped { pa, .. } = m {
                        full.set(s, e, MEntry::Mapped { pa, prot });
                    }
                }
                h.op(|pt, mm, arch| pt.set_prot(mm, arch, addr, size, prot).map(|_| ()))
            }
        };
        let got = common::canonicalize(table_runs(&h.pt, &h.mm));
        match r {
            Ok(()) => assert_eq!(got, full.canonical(), "{op:x?}"),
            Err(Error::NoMemory) => {
                // Outside the range: unchanged. Inside: old or new, with a prefix property:
                // every page before the first "old-only" page is new.
                let mut actual = Model::default();
                for (s, e, m) in &got {
                    actual.set(*s, *e, *m);
                }
                let canon = |m: &Model, a, b| common::canonicalize(m.pieces(a, b));
                assert_eq!(canon(&actual, 0, addr), canon(&before, 0, addr));
                let end = addr + size;
                assert_eq!(
                    canon(&actual, end, u64::MAX / 2),
                    canon(&before, end, u64::MAX / 2)
                );
                let mut p = addr;
                let mut seen_old = false;
                while p < end {
                    let a = actual.lookup(p);
                    let (o, n) = (before.lookup(p), full.lookup(p));
                    assert!(
                        a == o || a == n,
                        "page {p:#x}: {a:?} is neither {o:?} nor {n:?}"
                    );
                    if a != n {
                        seen_old = true;
                    } else if seen_old && a != o {
                        panic!(
                            "page {p:#x} changed after an unchanged page: the walk did not stop"
                        );
                    }
                    p += K4;
                }
                model = actual;
                continue;
            }
            Err(e) => panic!("unexpected {e:?} for {op:x?}"),
        }
        model = full;
    }
    check_structure(&h.pt, &h.mm).unwrap();
    h.mm.budget = None;
    let ia = cfg.ia_size();
    h.op(|pt, mm, arch| pt.unmap(mm, arch, 0, ia)).unwrap();
    assert_eq!(h.mm.live(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: persistence::out_of_tree(), ..ProptestConfig::default() })]

    #[test]
    fn no_memory_leaves_consistent_tables(
        (cfg, ops, budget) in configs().prop_flat_map(|cfg| {
            (Just(cfg), prop::collection::vec(op_strategy(cfg, M2 + K4), 1..10), 0..8u64)
        })
    ) {
        run_nomem_case(cfg, &ops, budget);
    }
}
