//! Memory map, vmemmap and `HypPage` tests.

mod common;
// Failing proptest seeds go under target/, never into the source tree.
#[path = "../../pgtable/tests/persistence/mod.rs"]
mod persistence;

use std::sync::Barrier;

use common::{VmemmapStore, map_of};
use pkvm_abi::{Error, PAGE_SIZE};
use pkvm_hyp::memory::{Gap, MAX_MEM_REGIONS, MemRegion, MemoryMap};
use pkvm_hyp::vmemmap::{ENTRIES_PER_CHUNK, HypPage, NO_ORDER, PageState, Vmemmap, VmemmapLayout};
use proptest::prelude::*;

const G: u64 = 1 << 30;
const M2: u64 = 2 << 20;

// ------------------------------------------------------------------ MemoryMap

#[test]
fn map_validation() {
    let r = MemRegion::new;
    assert!(MemoryMap::new(&[]).unwrap().is_empty());
    assert_eq!(MemoryMap::new(&[r(0, 0)]).err(), Some(Error::Inval));
    assert_eq!(
        MemoryMap::new(&[r(0x800, 0x1000)]).err(),
        Some(Error::Inval)
    );
    assert_eq!(
        MemoryMap::new(&[r(0x1000, 0x1800)]).err(),
        Some(Error::Inval)
    );
    assert_eq!(
        MemoryMap::new(&[r(u64::MAX - 0xfff, 0x1000)]).err(),
        Some(Error::Range)
    );
    // Overlap, given out of order.
    assert_eq!(
        MemoryMap::new(&[r(0x10_0000, 0x2000), r(0x10_1000, 0x1000)]).err(),
        Some(Error::Inval)
    );
    assert_eq!(
        MemoryMap::new(&[r(0x20_0000, 0x1000), r(0x10_0000, 0x10_1000)]).err(),
        Some(Error::Inval)
    );
    // Adjacent is fine and stays two regions.
    let m = MemoryMap::new(&[r(0x10_1000, 0x1000), r(0x10_0000, 0x1000)]).unwrap();
    assert_eq!(m.regions(), &[r(0x10_0000, 0x1000), r(0x10_1000, 0x1000)]);
    assert_eq!(m.total_pages(), 2);
    assert!(!m.is_empty());
    // Capacity.
    let many: Vec<MemRegion> = (0..=MAX_MEM_REGIONS as u64)
        .map(|i| r(i * 0x2000, 0x1000))
        .collect();
    assert_eq!(MemoryMap::new(&many).err(), Some(Error::TooBig));
    let m = MemoryMap::new(&many[..MAX_MEM_REGIONS]).unwrap();
    assert_eq!(m.len(), MAX_MEM_REGIONS);
    assert!(m.is_memory(0x2000 * 127 + 0xfff));
    assert!(!m.is_memory(0x2000 * 127 + 0x1000));
}

#[test]
fn find_region_and_gaps() {
    let m = map_of(&[(G, G), (4 * G, M2), (0x80_0000_0000, M2)]);
    let r1 = MemRegion::new(G, G);
    let r2 = MemRegion::new(4 * G, M2);
    let r3 = MemRegion::new(0x80_0000_0000, M2);
    let gap = |start, end| Err(Gap { start, end });
    assert_eq!(m.find_region(0), gap(0, G));
    assert_eq!(m.find_region(G - 1), gap(0, G));
    assert_eq!(m.find_region(G), Ok(r1));
    assert_eq!(m.find_region(2 * G - 1), Ok(r1));
    assert_eq!(m.find_region(2 * G), gap(2 * G, 4 * G));
    assert_eq!(m.find_region(4 * G - 1), gap(2 * G, 4 * G));
    assert_eq!(m.find_region(4 * G), Ok(r2));
    assert_eq!(m.find_region(4 * G + M2 - 1), Ok(r2));
    assert_eq!(m.find_region(4 * G + M2), gap(4 * G + M2, 0x80_0000_0000));
    assert_eq!(m.find_region(0x80_0000_0000), Ok(r3));
    assert_eq!(
        m.find_region(0x80_0000_0000 + M2),
        gap(0x80_0000_0000 + M2, u64::MAX)
    );
    assert_eq!(m.find_region(u64::MAX), gap(0x80_0000_0000 + M2, u64::MAX));
    let Err(g) = m.find_region(u64::MAX) else {
        panic!()
    };
    assert!(g.contains(u64::MAX));
    // A hole holds its first byte and not its end.
    let hole = Gap {
        start: 2 * G,
        end: 4 * G,
    };
    assert!(hole.contains(2 * G) && hole.contains(4 * G - 1));
    assert!(!hole.contains(2 * G - 1) && !hole.contains(4 * G) && !hole.contains(u64::MAX));

    let empty = MemoryMap::empty();
    assert_eq!(empty.find_region(0), gap(0, u64::MAX));
    assert_eq!(empty.find_region(u64::MAX), gap(0, u64::MAX));
    assert!(!empty.is_memory(0));
    assert!(!empty.range_is_memory(0, 1));
}

#[test]
fn range_is_memory_cases() {
    let m = map_of(&[(G, G), (2 * G, M2), (4 * G, M2)]);
    assert!(m.range_is_memory(G, 2 * G));
    assert!(m.range_is_memory(G + 5, G + 6));
    assert!(!m.range_is_memory(G, G));
    assert!(!m.range_is_memory(G + 10, G));
    // Adjacent regions: not one region.
    assert!(!m.range_is_memory(2 * G - PAGE_SIZE, 2 * G + PAGE_SIZE));
    assert!(m.range_is_memory(2 * G, 2 * G + M2));
    // Straddling memory and a hole.
    assert!(!m.range_is_memory(2 * G + M2 - PAGE_SIZE, 2 * G + M2 + PAGE_SIZE));
    assert!(!m.range_is_memory(G - PAGE_SIZE, G + PAGE_SIZE));
    // Spanning a hole between two regions.
    assert!(!m.range_is_memory(G, 4 * G + M2));
    // In a hole.
    assert!(!m.range_is_memory(3 * G, 3 * G + PAGE_SIZE));
    assert!(!m.range_is_memory(u64::MAX - 1, u64::MAX));
    // pfn ranges and overflow.
    let pfn = G / PAGE_SIZE;
    assert!(m.pfn_range_is_memory(pfn, G / PAGE_SIZE));
    assert!(!m.pfn_range_is_memory(pfn, G / PAGE_SIZE + 1));
    assert!(!m.pfn_range_is_memory(pfn, 0));
    assert!(!m.pfn_range_is_memory(pfn, u64::MAX));
    assert!(!m.pfn_range_is_memory(u64::MAX, 2));
    assert!(!m.pfn_range_is_memory(1 << 60, 1));
}

/// Naive reference for the map lookups.
fn naive_find(regions: &[MemRegion], addr: u64) -> Result<MemRegion, Gap> {
    if let Some(r) = regions.iter().find(|r| r.contains(addr)) {
        return Ok(*r);
    }
    let start = regions
        .iter()
        .filter(|r| r.end() <= addr)
        .map(|r| r.end())
        .max()
        .unwrap_or(0);
    let end = regions
        .iter()
        .filter(|r| r.base > addr)
        .map(|r| r.base)
        .min()
        .unwrap_or(u64::MAX);
    Err(Gap { start, end })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: persistence::out_of_tree(), ..ProptestConfig::default() })]

    #[test]
    fn map_lookups_match_naive(
        raw in prop::collection::vec((0..64u64, 1..8u64), 0..12),
        probes in prop::collection::vec((0..72u64, 0..3u64, 0..20u64), 1..32),
    ) {
        // Build non-overlapping regions on a 16 KiB grid (in units of pages).
        let mut regions = Vec::new();
        let mut used = [false; 80];
        for (b, s) in raw {
            if (b..b + s).all(|p| !used[p as usize]) {
                (b..b + s).for_each(|p| used[p as usize] = true);
                regions.push(MemRegion::new(b * PAGE_SIZE, s * PAGE_SIZE));
            }
        }
        let m = MemoryMap::new(&regions).unwrap();
        for w in m.regions().windows(2) {
            prop_assert!(w[0].end() <= w[1].base);
        }
        for (p, sub, len) in probes {
            let addr = p * PAGE_SIZE + sub * 0x7ff;
            prop_assert_eq!(m.find_region(addr), naive_find(&regions, addr));
            prop_assert_eq!(m.is_memory(addr), naive_find(&regions, addr).is_ok());
            let end = addr + len * 0x800;
            let naive = len > 0
                && regions.iter().any(|r| r.contains(addr) && end <= r.end());
            prop_assert_eq!(m.range_is_memory(addr, end), naive);
        }
    }
}

// ------------------------------------------------------------------ HypPage

#[test]
fn hyp_page_layout_and_boot_state() {
    assert!(size_of::<HypPage>() <= 8);
    let p = HypPage::new();
    assert_eq!(p.refcount(), 0);
    assert_eq!(p.order(), 0);
    assert_eq!(p.host_state(), PageState::Owned);
    assert_eq!(p.hyp_state(), PageState::NoPage);
    assert_eq!(p.share_count(), 0);
    for s in [
        PageState::Owned,
        PageState::SharedOwned,
        PageState::SharedBorrowed,
        PageState::NoPage,
    ] {
        p.set_host_state(s);
        p.set_hyp_state(s);
        assert_eq!((p.host_state(), p.hyp_state()), (s, s));
        assert_eq!(PageState::from_bits(s.bits()), s);
    }
    p.set_order(NO_ORDER);
    p.set_refcount(7);
    p.set_share_count(9);
    p.reset();
    assert_eq!(format!("{p:?}"), format!("{:?}", HypPage::new()));
    assert_eq!(p.hyp_state(), PageState::NoPage);
}

#[test]
fn hyp_page_counters_saturate() {
    let p = HypPage::new();
    assert_eq!(p.dec_refcount(), Err(Error::Fault));
    assert_eq!(p.dec_share_count(), Err(Error::Fault));
    assert_eq!(p.refcount(), 0);
    assert_eq!(p.try_inc_refcount(), Ok(1));
    assert_eq!(p.try_inc_share_count(), Ok(1));
    p.set_refcount(u16::MAX - 1);
    p.set_share_count(u16::MAX - 1);
    assert_eq!(p.try_inc_refcount(), Ok(u16::MAX));
    assert_eq!(p.try_inc_share_count(), Ok(u16::MAX));
    assert_eq!(p.try_inc_refcount(), Err(Error::Busy));
    assert_eq!(p.try_inc_share_count(), Err(Error::Busy));
    assert_eq!(p.refcount(), u16::MAX);
    assert_eq!(p.share_count(), u16::MAX);
    assert_eq!(p.dec_refcount(), Ok(u16::MAX - 1));
    assert_eq!(p.dec_share_count(), Ok(u16::MAX - 1));
}

/// Different CPUs update different fields of the same entries at once (each field under its
/// own lock, here: each field has a single writer thread): no update to one field may be lost
/// or disturb another.
#[test]
fn fields_are_independent_under_concurrency() {
    const N: usize = 64;
    const ROUNDS: u16 = 2000;
    let pages: Vec<HypPage> = (0..N).map(|_| HypPage::new()).collect();
    let barrier = Barrier::new(5);
    let states = [
        PageState::Owned,
        PageState::SharedOwned,
        PageState::SharedBorrowed,
        PageState::NoPage,
    ];
    std::thread::scope(|s| {
        s.spawn(|| {
            barrier.wait();
            for _ in 0..ROUNDS {
                for p in &pages {
                    p.try_inc_refcount().unwrap();
                }
            }
        });
        s.spawn(|| {
            barrier.wait();
            for _ in 0..ROUNDS {
                for p in &pages {
                    p.try_inc_share_count().unwrap();
                }
            }
        });
        s.spawn(|| {
            barrier.wait();
            for r in 0..ROUNDS {
                for p in &pages {
                    p.set_host_state(states[usize::from(r) % 4]);
                }
            }
        });
        s.spawn(|| {
            barrier.wait();
            for r in 0..ROUNDS {
                for p in &pages {
                    p.set_hyp_state(states[usize::from(r + 1) % 4]);
                    p.set_order((r % 11) as u8);
                }
            }
        });
        barrier.wait();
    });
    for p in &pages {
        assert_eq!(p.refcount(), ROUNDS);
        assert_eq!(p.share_count(), ROUNDS);
        assert_eq!(p.host_state(), states[usize::from(ROUNDS - 1) % 4]);
        assert_eq!(p.hyp_state(), states[usize::from(ROUNDS) % 4]);
        assert_eq!(p.order(), ((ROUNDS - 1) % 11) as u8);
    }
}

// ------------------------------------------------------------------ Vmemmap

#[test]
fn vmemmap_memory_scales_with_memory_not_span() {
    let map = map_of(&[(G, G), (4 * G, M2), (0x80_0000_0000, M2)]);
    let layout = VmemmapLayout::for_map(&map).unwrap();
    // 1 GiB = 512 windows, plus one each for the two 2 MiB regions.
    assert_eq!(layout.chunks, 514);
    assert_eq!(layout.entries(), 514 * ENTRIES_PER_CHUNK);
    assert_eq!(layout.first_pfn, G / PAGE_SIZE);
    // Directory: one slot per 2 MiB from 1 GiB to 512 GiB + 2 MiB.
    let span = 0x80_0000_0000 + M2 - G;
    assert_eq!(layout.dir_slots as u64, span / M2);
    assert_eq!(layout.entry_pages(), 514);
    assert_eq!(layout.dir_pages(), (span / M2 * 4).div_ceil(PAGE_SIZE));
    // Entries are memory-sized: 8 bytes per page of memory.
    let mem_pages = map.total_pages();
    assert_eq!(layout.entries() as u64, mem_pages);
    assert!((layout.entries() * size_of::<HypPage>()) as u64 <= mem_pages * 8);
}

#[test]
fn vmemmap_lookups_at_boundaries() {
    // Regions not 2 MiB aligned, two sharing a window, and a far one.
    let map = map_of(&[
        (G, G),
        (4 * G + 0x1000, 0x3000),
        (4 * G + 0x8000, 0x1000),
        (4 * G + M2 - 0x1000, 0x2000),
        (0x80_0000_0000, M2),
    ]);
    let layout = VmemmapLayout::for_map(&map).unwrap();
    // Windows: 512 for the first region, 4G window (shared by three regions), 4G+2M window
    // (the straddling region's second page), and the far one.
    assert_eq!(layout.chunks, 512 + 1 + 1 + 1);
    let mut store = VmemmapStore::new(&map);
    let vm = store.build(&map);
    assert_eq!(store_dir_used(&vm, &map), 515);

    let mut seen = std::collections::HashSet::new();
    for r in map.regions() {
        let first = r.base_pfn();
        let last = first + r.nr_pages() - 1;
        for pfn in [
            first,
            (first + 1).min(last),
            last.saturating_sub(1).max(first),
            last,
        ] {
            let p = vm.get(pfn).expect("memory has an entry");
            assert!(std::ptr::eq(p, vm.page(pfn * PAGE_SIZE + 0x123).unwrap()));
            seen.insert(p as *const HypPage as usize);
        }
        // Neighbours just outside the region are holes (or belong to another region).
        if !map.is_memory((first - 1) * PAGE_SIZE) {
            assert!(vm.get(first - 1).is_none());
        }
        if !map.is_memory((last + 1) * PAGE_SIZE) {
            assert!(vm.get(last + 1).is_none());
        }
        // The whole region is one contiguous slice of entries.
        let s = vm.slice(first, r.nr_pages()).unwrap();
        assert_eq!(s.len() as u64, r.nr_pages());
        assert!(std::ptr::eq(&s[0], vm.get(first).unwrap()));
        assert!(std::ptr::eq(s.last().unwrap(), vm.get(last).unwrap()));
    }
    // Distinct pages have distinct entries.
    assert_eq!(seen.len(), 4 + 3 + 1 + 2 + 4); // small regions repeat probes
    // Holes.
    for pfn in [
        0,
        G / PAGE_SIZE - 1,
        2 * G / PAGE_SIZE,
        3 * G / PAGE_SIZE,
        u64::MAX,
        1 << 52,
    ] {
        assert!(vm.get(pfn).is_none(), "pfn {pfn:#x}");
    }
    assert!(vm.page(3 * G).is_none());
    assert!(vm.page(0).is_none());
    assert!(vm.page(u64::MAX).is_none());
    // A hole page inside a backed window has an entry through page() but not through get().
    assert!(vm.get((4 * G) / PAGE_SIZE).is_none());
    assert!(vm.page(4 * G).is_some());
    // Slices: across a hole, zero-length, overflow.
    assert!(vm.slice(4 * G / PAGE_SIZE + 1, 5).is_none());
    assert!(vm.slice(G / PAGE_SIZE, 0).is_none());
    assert!(vm.slice(u64::MAX, 2).is_none());
    assert!(vm.slice(G / PAGE_SIZE, G / PAGE_SIZE + 1).is_none());
    // Boot state everywhere.
    let p = vm.get(0x80_0000_0000 / PAGE_SIZE + 7).unwrap();
    assert_eq!(
        (p.host_state(), p.hyp_state()),
        (PageState::Owned, PageState::NoPage)
    );
}

/// Number of distinct chunks behind the memory pages, checking that every 2 MiB window's
/// entries form one 4 KiB chunk (entry address = chunk base + (pfn % 512) * 8).
fn store_dir_used(vm: &Vmemmap<'_>, map: &MemoryMap) -> usize {
    let mut chunk_of_window = std::collections::HashMap::new();
    for r in map.regions() {
        for pfn in r.base_pfn()..r.base_pfn() + r.nr_pages() {
            let addr = vm.get(pfn).unwrap() as *const HypPage as usize;
            let base = addr - (pfn as usize % ENTRIES_PER_CHUNK) * size_of::<HypPage>();
            let prev = chunk_of_window.insert(pfn >> 9, base);
            assert!(
                prev.is_none_or(|p| p == base),
                "window {:#x} split",
                pfn >> 9
            );
        }
    }
    let bases: std::collections::HashSet<usize> = chunk_of_window.values().copied().collect();
    assert_eq!(
        bases.len(),
        chunk_of_window.len(),
        "two windows share a chunk"
    );
    let min = bases.iter().min().copied().unwrap_or(0);
    assert!(bases.iter().all(|b| (b - min) % 4096 == 0));
    bases.len()
}

#[test]
fn vmemmap_backing_checks() {
    let map = map_of(&[(G, M2)]);
    let layout = VmemmapLayout::for_map(&map).unwrap();
    assert_eq!((layout.dir_slots, layout.chunks), (1, 1));
    let pages: Vec<HypPage> = (0..layout.entries()).map(|_| HypPage::new()).collect();
    let mut dir = vec![0u32; 0];
    assert_eq!(
        Vmemmap::new(&map, &mut dir, &pages).err(),
        Some(Error::Inval)
    );
    let mut dir = vec![0u32; 1];
    assert_eq!(
        Vmemmap::new(&map, &mut dir, &pages[..511]).err(),
        Some(Error::Inval)
    );
    // Entries are reset to the boot state.
    pages[3].set_refcount(5);
    pages[3].set_hyp_state(PageState::Owned);
    let vm = Vmemmap::new(&map, &mut dir, &pages).unwrap();
    assert_eq!(vm.get(G / PAGE_SIZE + 3).unwrap().refcount(), 0);
    assert_eq!(
        vm.get(G / PAGE_SIZE + 3).unwrap().hyp_state(),
        PageState::NoPage
    );
    // Empty map: nothing needed, nothing found.
    let empty = MemoryMap::empty();
    assert_eq!(
        VmemmapLayout::for_map(&empty).unwrap(),
        VmemmapLayout::default()
    );
    let vm = Vmemmap::new(&empty, &mut [], &[]).unwrap();
    assert!(vm.get(0).is_none());
    assert!(vm.page(0).is_none());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: persistence::out_of_tree(), ..ProptestConfig::default() })]

    /// Over random sparse maps: every memory page has its own entry, holes have none, and the
    /// backing is exactly one chunk per touched 2 MiB window.
    #[test]
    fn vmemmap_random_maps(
        raw in prop::collection::vec((0..4096u64, 1..700u64), 1..6),
        probes in prop::collection::vec(0..5000u64, 1..64),
    ) {
        let mut regions: Vec<MemRegion> = Vec::new();
        for (b, s) in raw {
            let r = MemRegion::new(G + b * 4 * PAGE_SIZE, s * PAGE_SIZE);
            if regions.iter().all(|o| r.end() <= o.base || o.end() <= r.base) {
                regions.push(r);
            }
        }
        let map = MemoryMap::new(&regions).unwrap();
        let mut store = VmemmapStore::new(&map);
        let layout = store.layout;
        let vm = store.build(&map);
        let windows: std::collections::BTreeSet<u64> = regions
            .iter()
            .flat_map(|r| (r.base_pfn()..r.base_pfn() + r.nr_pages()).map(|p| p >> 9))
            .collect();
        prop_assert_eq!(layout.chunks, windows.len());
        let mut seen = std::collections::HashMap::new();
        for probe in probes {
            let pfn = G / PAGE_SIZE + probe * 4 - 64;
            let mem = map.is_memory(pfn * PAGE_SIZE);
            let e = vm.get(pfn);
            prop_assert_eq!(e.is_some(), mem);
            if let Some(e) = e {
                prop_assert!(std::ptr::eq(e, vm.page(pfn * PAGE_SIZE).unwrap()));
                let addr = e as *const HypPage as usize;
                if let Some(&other) = seen.get(&addr) {
                    prop_assert_eq!(other, pfn);
                }
                seen.insert(addr, pfn);
            }
        }
    }
}
