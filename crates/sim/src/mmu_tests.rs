//! Tests of the TLB model and the descriptor walker (walk caches, level hints, regimes).

use super::*;

const RAM: u64 = 0x4000_0000;
/// Tables: L0 at +0x1000, L1 at +0x2000, L2 at +0x3000, L3 at +0x4000.
const L0: u64 = RAM + 0x1000;
const L1: u64 = RAM + 0x2000;
const L2: u64 = RAM + 0x3000;
const L3: u64 = RAM + 0x4000;
/// A page mapped at level 3 (VA 0x4020_0000 -> PA 0x4000_8000) and its neighbour
/// (0x4020_1000 -> 0x4000_9000), a 2 MiB block at level 2 (0x4040_0000 -> 0x4000_0000).
const PAGE_VA: u64 = 0x4020_0000;
const NEXT_VA: u64 = 0x4020_1000;
const BLOCK_VA: u64 = 0x4040_0000;

fn ptep(table: u64, ia: u64, level: u8) -> u64 {
    table + ((ia >> level_shift(level)) & 511) * 8
}

/// EL2 stage-1 tables with a page, its neighbour and a block.
fn tables() -> SimMemory {
    let mem = SimMemory::new(&[(RAM, 1 << 20)]);
    let table = |pa: u64| pa | 3;
    let page = |pa: u64| pa | (1 << 10) | 3;
    mem.write_u64(ptep(L0, PAGE_VA, 0), table(L1));
    mem.write_u64(ptep(L1, PAGE_VA, 1), table(L2));
    mem.write_u64(ptep(L2, PAGE_VA, 2), table(L3));
    mem.write_u64(ptep(L3, PAGE_VA, 3), page(RAM + 0x8000));
    mem.write_u64(ptep(L3, NEXT_VA, 3), page(RAM + 0x9000));
    mem.write_u64(ptep(L2, BLOCK_VA, 2), RAM | (1 << 10) | 1);
    mem
}

fn tlb(mem: &SimMemory) -> Tlb {
    Tlb::new(mem.handle())
}

#[test]
fn a_walk_caches_its_leaf_and_every_table_descriptor() {
    let mem = tables();
    let mut tlb = tlb(&mem);
    let t = tlb.translate(Regime::El2, L0, 0, PAGE_VA + 8).unwrap();
    assert_eq!((t.pa, t.level), (RAM + 0x8008, 3));
    assert_eq!(t.tables, [Some(L0), Some(L1), Some(L2), Some(L3)]);
    let mut walks: Vec<_> = tlb.walk_entries().collect();
    walks.sort_by_key(|w| w.1);
    assert_eq!(
        walks,
        [
            (Regime::El2, 0, 0, L1),
            (Regime::El2, 1, 0x4000_0000, L2),
            (Regime::El2, 2, 0x4020_0000, L3)
        ]
    );
    assert_eq!(tlb.len(), 4);
}

#[test]
fn a_level_hint_only_invalidates_leaves_of_that_level() {
    let mem = tables();
    let mut tlb = tlb(&mem);
    tlb.translate(Regime::El2, L0, 0, PAGE_VA).unwrap();
    tlb.translate(Regime::El2, L0, 0, BLOCK_VA).unwrap();
    // Wrong hints miss.
    tlb.invalidate_va(Regime::El2, PAGE_VA, 2, true);
    tlb.invalidate_va(Regime::El2, BLOCK_VA + 0x1000, 3, true);
    assert!(tlb.lookup(Regime::El2, PAGE_VA).is_some());
    assert!(tlb.lookup(Regime::El2, BLOCK_VA).is_some());
    // The right ones, or none, hit (anywhere in the block).
    tlb.invalidate_va(Regime::El2, PAGE_VA, 3, true);
    tlb.invalidate_va(Regime::El2, BLOCK_VA + 0x1000, 0, true);
    assert!(tlb.entries().next().is_none());
}

#[test]
fn walk_caches_survive_leaf_only_and_hinted_tlbis_and_are_used() {
    let mem = tables();
    let mut tlb = tlb(&mem);
    tlb.translate(Regime::El2, L0, 0, PAGE_VA).unwrap();
    // Unlink the level-3 table; invalidate with the last-level form and with a hint.
    mem.write_u64(ptep(L2, PAGE_VA, 2), 0);
    tlb.invalidate_va(Regime::El2, PAGE_VA, 0, true);
    tlb.invalidate_va(Regime::El2, PAGE_VA, 2, false);
    assert!(tlb.entries().next().is_none(), "the leaf is gone");
    assert_eq!(tlb.walk_entries().count(), 3, "the walk caches are not");
    // A later walk still goes through the unlinked table, even for a page never looked
    // up before...
    assert_eq!(
        tlb.translate(Regime::El2, L0, 0, NEXT_VA).map(|t| t.pa),
        Ok(RAM + 0x9000)
    );
    assert!(tlb.lookup(Regime::El2, NEXT_VA).is_some());
    // ...and sees whatever the page holds once it is reused.
    mem.write_u64(ptep(L3, NEXT_VA, 3), (RAM + 0xa000) | (1 << 10) | 3);
    tlb.invalidate_va(Regime::El2, NEXT_VA, 3, true);
    assert_eq!(
        tlb.translate(Regime::El2, L0, 0, NEXT_VA).map(|t| t.pa),
        Ok(RAM + 0xa000)
    );
    // The non-last-level TLBI without a hint removes the leaf and the walk caches on its
    // path.
    tlb.invalidate_va(Regime::El2, NEXT_VA, 0, false);
    assert_eq!(tlb.walk_entries().count(), 0);
    assert_eq!(
        tlb.translate(Regime::El2, L0, 0, NEXT_VA)
            .map_err(|f| f.level),
        Err(2)
    );
}

#[test]
fn tlbis_act_on_their_regime_only() {
    let mem = tables();
    let mut tlb = tlb(&mem);
    tlb.translate(Regime::El2, L0, 0, PAGE_VA).unwrap();
    tlb.translate(Regime::Stage2(1), L0, 0, PAGE_VA).unwrap();
    tlb.invalidate_va(Regime::Stage2(0), PAGE_VA, 0, false);
    tlb.invalidate_regime(Regime::Stage2(2));
    assert_eq!(tlb.len(), 8);
    tlb.invalidate_regime(Regime::Stage2(1));
    assert_eq!(tlb.len(), 4);
    tlb.invalidate_regime(Regime::El2);
    assert!(tlb.is_empty());
}

#[test]
fn a_walk_whose_tables_changed_before_the_fill_is_not_cached() {
    let mem = tables();
    let mut tlb = tlb(&mem);
    let t = walk(&mem, Regime::El2, L0, 0, PAGE_VA).unwrap();
    mem.write_u64(ptep(L2, PAGE_VA, 2), 0);
    tlb.fill(Regime::El2, PAGE_VA, t);
    assert!(tlb.is_empty());
    mem.write_u64(ptep(L2, PAGE_VA, 2), L3 | 3);
    tlb.fill(Regime::El2, PAGE_VA, t);
    assert_eq!(tlb.len(), 4);
}

#[test]
fn descriptor_at_follows_table_descriptors_only() {
    let mem = tables();
    assert_eq!(descriptor_at(&mem, L0, 0, PAGE_VA, 2), Some(L3 | 3));
    assert_eq!(
        descriptor_at(&mem, L0, 0, BLOCK_VA, 2),
        Some(RAM | (1 << 10) | 1)
    );
    assert_eq!(descriptor_at(&mem, L0, 0, BLOCK_VA, 3), None);
    assert_eq!(descriptor_at(&mem, L1, 1, PAGE_VA, 0), None);
}
