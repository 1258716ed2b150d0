//! Buddy pool and boot allocator tests, including property tests of the buddy invariants.

mod common;
// Failing proptest seeds go under target/, never into the source tree.
#[path = "../../pgtable/tests/persistence/mod.rs"]
mod persistence;

use std::collections::BTreeSet;

use common::{SimRam, VmemmapStore, check_pool, free_blocks, map_of, snapshot};
use pkvm_abi::{Error, PAGE_SIZE};
use pkvm_hyp::early_alloc::EarlyAlloc;
use pkvm_hyp::page_alloc::{HypPool, LockedPoolMmOps, MAX_ORDER, pool_max_order};
use pkvm_hyp::platform::PhysMem;
use pkvm_hyp::vmemmap::{NO_ORDER, Vmemmap};
use pkvm_pgtable::MmOps;
use proptest::prelude::*;

const BASE: u64 = 0x4000_0000;
const REGION: u64 = 0x10_0000; // 1 MiB = 256 pages
const PFN: u64 = BASE / PAGE_SIZE;

fn ram_for(pfn: u64, nr: u64) -> SimRam {
    SimRam::new(pfn * PAGE_SIZE, nr * PAGE_SIZE)
}

/// Runs `f` on a pool of `nr` pages at `pfn` (the first `reserved` of them allocated), with
/// its vmemmap and memory, in the test region.
fn with_pool<R>(
    (pfn, nr, reserved): (u64, u64, u64),
    f: impl FnOnce(&mut HypPool<'_, SimRam>, &Vmemmap<'_>, &SimRam) -> R,
) -> R {
    let map = map_of(&[(BASE, REGION)]);
    let mut store = VmemmapStore::new(&map);
    let vm = store.build(&map);
    let ram = ram_for(pfn, nr);
    let mut pool = HypPool::new(&vm, &ram, pfn, nr, reserved).unwrap();
    f(&mut pool, &vm, &ram)
}

#[test]
fn max_order_formula() {
    let cases = [
        (0, 0),
        (1, 1),
        (2, 2),
        (3, 2),
        (4, 3),
        (7, 3),
        (8, 4),
        (1023, 10),
        (1024, 11),
        (2048, 11),
        (u64::MAX, MAX_ORDER),
    ];
    for (nr, want) in cases {
        assert_eq!(pool_max_order(nr), want, "nr_pages {nr}");
    }
}

/// The upstream off-by-one: a pool of exactly 2^n pages must be able to form its order-n block.
#[test]
fn power_of_two_pool_forms_top_block() {
    let map = map_of(&[(BASE, REGION)]);
    for n in 0..=8u8 {
        let nr = 1u64 << n;
        let mut store = VmemmapStore::new(&map);
        let vm = store.build(&map);
        let ram = ram_for(PFN, nr);
        let mut pool = HypPool::new(&vm, &ram, PFN, nr, 0).unwrap();
        assert_eq!(pool.max_order(), n + 1);
        assert_eq!(free_blocks(&pool), BTreeSet::from([(n, BASE)]));
        check_pool(&pool, &vm, &ram, true).unwrap();
        assert_eq!(pool.alloc_pages(n), Ok(BASE));
        assert_eq!(pool.free_pages(), 0);
        assert_eq!(pool.alloc_pages(0), Err(Error::NoMem));
        assert_eq!(pool.put_page(BASE), Ok(0));
        assert_eq!(free_blocks(&pool), BTreeSet::from([(n, BASE)]));
        check_pool(&pool, &vm, &ram, true).unwrap();
    }
}

#[test]
fn max_order_caps_at_max_order() {
    let map = map_of(&[(BASE, 0x80_0000)]); // 8 MiB = 2048 pages
    let mut store = VmemmapStore::new(&map);
    let vm = store.build(&map);
    let ram = ram_for(PFN, 2048);
    let mut pool = HypPool::new(&vm, &ram, PFN, 2048, 0).unwrap();
    assert_eq!(pool.max_order(), MAX_ORDER);
    assert_eq!(free_blocks(&pool).len(), 2);
    assert_eq!(pool.alloc_pages(MAX_ORDER), Err(Error::Inval));
    let a = pool.alloc_pages(MAX_ORDER - 1).unwrap();
    let b = pool.alloc_pages(MAX_ORDER - 1).unwrap();
    assert_eq!(a.abs_diff(b), PAGE_SIZE << (MAX_ORDER - 1));
    pool.put_page(a).unwrap();
    pool.put_page(b).unwrap();
    // Two top-order buddies are not merged beyond max_order.
    check_pool(&pool, &vm, &ram, false).unwrap();
    assert_eq!(free_blocks(&pool).len(), 2);
}

/// The greedy initial carving equals what freeing the pages one by one converges to.
#[test]
fn init_matches_page_by_page_free() {
    let map = map_of(&[(BASE, REGION)]);
    for (off, nr, reserved) in [
        (0, 256, 0),
        (3, 200, 5),
        (1, 1, 0),
        (7, 100, 100),
        (5, 77, 13),
    ] {
        let pfn = PFN + off;
        let mut s1 = VmemmapStore::new(&map);
        let vm1 = s1.build(&map);
        let ram1 = ram_for(pfn, nr);
        let greedy = HypPool::new(&vm1, &ram1, pfn, nr, reserved).unwrap();
        check_pool(&greedy, &vm1, &ram1, true).unwrap();
        assert_eq!(greedy.free_pages(), nr - reserved);

        let mut s2 = VmemmapStore::new(&map);
        let vm2 = s2.build(&map);
        let ram2 = ram_for(pfn, nr);
        let mut one_by_one = HypPool::new(&vm2, &ram2, pfn, nr, nr).unwrap();
        assert_eq!(one_by_one.free_pages(), 0);
        for i in reserved..nr {
            let pa = (pfn + i) * PAGE_SIZE;
            ram2.scribble_page(pa);
            assert_eq!(one_by_one.put_page(pa), Ok(0));
            check_pool(&one_by_one, &vm2, &ram2, false).unwrap();
        }
        check_pool(&one_by_one, &vm2, &ram2, true).unwrap();
        assert_eq!(free_blocks(&greedy), free_blocks(&one_by_one));
        for i in 0..reserved {
            let p = vm1.get(pfn + i).unwrap();
            assert_eq!((p.refcount(), p.order()), (1, 0));
        }
    }
}

#[test]
fn init_rejects_bad_ranges() {
    let map = map_of(&[(BASE, REGION), (BASE + 2 * REGION, REGION)]);
    let mut store = VmemmapStore::new(&map);
    let vm = store.build(&map);
    let ram = ram_for(PFN, 1024);
    let nr_region = REGION / PAGE_SIZE;
    // More reserved than pages.
    assert_eq!(HypPool::new(&vm, &ram, PFN, 4, 5).err(), Some(Error::Inval));
    // Runs past the region into the hole.
    assert_eq!(
        HypPool::new(&vm, &ram, PFN + 1, nr_region, 0).err(),
        Some(Error::Inval)
    );
    // Entirely in the hole.
    assert_eq!(
        HypPool::new(&vm, &ram, PFN + nr_region, 1, 0).err(),
        Some(Error::Inval)
    );
    // Overflow.
    assert_eq!(
        HypPool::new(&vm, &ram, u64::MAX - 1, 4, 0).err(),
        Some(Error::Range)
    );
    assert_eq!(
        HypPool::new(&vm, &ram, 1 << 60, 1, 0).err(),
        Some(Error::Range)
    );
    // An empty pool is fine and can never allocate.
    let mut empty = HypPool::new(&vm, &ram, PFN, 0, 0).unwrap();
    assert_eq!(empty.alloc_pages(0), Err(Error::NoMem));
    assert_eq!(empty.put_page(BASE), Err(Error::Inval));
}

#[test]
fn exhaustion_leaves_pool_unchanged() {
    let map = map_of(&[(BASE, REGION)]);
    let mut store = VmemmapStore::new(&map);
    let vm = store.build(&map);
    let (pfn, nr) = (PFN + 1, 37);
    let ram = ram_for(pfn, nr);
    let mut pool = HypPool::new(&vm, &ram, pfn, nr, 2).unwrap();
    // 35 free pages: 1+2+32 style blocks; no order-6 block can exist.
    let before = snapshot(&pool, &vm);
    assert_eq!(pool.alloc_pages(6), Err(Error::NoMem));
    assert_eq!(snapshot(&pool, &vm), before);
    let mut got = Vec::new();
    while let Ok(pa) = pool.alloc_pages(0) {
        assert!(ram.range_zero(pa, PAGE_SIZE, 0));
        got.push(pa);
    }
    assert_eq!(got.len(), 35);
    assert_eq!(pool.free_pages(), 0);
    let before = snapshot(&pool, &vm);
    for o in 0..MAX_ORDER {
        assert_eq!(pool.alloc_pages(o), Err(Error::NoMem));
    }
    assert_eq!(pool.alloc_pages_exact(1), Err(Error::NoMem));
    assert_eq!(snapshot(&pool, &vm), before);
    check_pool(&pool, &vm, &ram, true).unwrap();
    for pa in got {
        ram.scribble_page(pa);
        pool.put_page(pa).unwrap();
    }
    check_pool(&pool, &vm, &ram, true).unwrap();
    assert_eq!(pool.free_pages(), 35);
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    let map = map_of(&[(BASE, REGION)]);
    let mut store = VmemmapStore::new(&map);
    let vm = store.build(&map);
    let ram = ram_for(PFN, 64);
    let mut pool = HypPool::new(&vm, &ram, PFN, 64, 1).unwrap();
    let a = pool.alloc_pages(2).unwrap();
    let free_page = (PFN + 63) * PAGE_SIZE;
    assert_eq!(pool.page_count(free_page), 0);
    let before = snapshot(&pool, &vm);
    // Tail pages of an unsplit block are not allocations of their own.
    assert_eq!(pool.put_page(a + PAGE_SIZE), Err(Error::Fault));
    assert_eq!(pool.get_page(a + PAGE_SIZE), Err(Error::Fault));
    assert_eq!(pool.split_page(a + PAGE_SIZE), Err(Error::Fault));
    // A block whose tail page claims an order, or a reference, of its own is not split.
    let tail = vm.page(a + PAGE_SIZE).unwrap();
    tail.set_order(0);
    assert_eq!(pool.split_page(a), Err(Error::Fault));
    tail.set_order(NO_ORDER);
    tail.set_refcount(1);
    assert_eq!(pool.split_page(a), Err(Error::Fault));
    tail.set_refcount(0);
    // Free pages.
    assert_eq!(pool.put_page(free_page), Err(Error::Fault));
    assert_eq!(pool.get_page(free_page), Err(Error::Fault));
    assert_eq!(pool.split_page(free_page), Err(Error::Fault));
    // The head of a free block (a valid order, but no refcount).
    let free_head = (0..MAX_ORDER).find_map(|o| pool.free_list_head(o)).unwrap();
    assert_eq!(pool.split_page(free_head), Err(Error::Fault));
    // Outside the pool.
    for pa in [0, BASE - PAGE_SIZE, BASE + 64 * PAGE_SIZE, u64::MAX] {
        assert_eq!(pool.put_page(pa), Err(Error::Inval));
        assert_eq!(pool.get_page(pa), Err(Error::Inval));
        assert_eq!(pool.page_count(pa), 0);
    }
    assert_eq!(pool.split_page(a + 8), Err(Error::Inval));
    assert_eq!(pool.alloc_pages(200), Err(Error::Inval));
    assert_eq!(pool.alloc_pages_exact(0), Err(Error::Inval));
    assert_eq!(pool.alloc_pages_exact(u64::MAX), Err(Error::Inval));
    assert_eq!(snapshot(&pool, &vm), before);
    // Double free.
    assert_eq!(pool.put_page(a + 123), Ok(0));
    let before = snapshot(&pool, &vm);
    assert_eq!(pool.put_page(a), Err(Error::Fault));
    assert_eq!(snapshot(&pool, &vm), before);
    check_pool(&pool, &vm, &ram, true).unwrap();
}

#[test]
fn refcount_saturates() {
    let map = map_of(&[(BASE, REGION)]);
    let mut store = VmemmapStore::new(&map);
    let vm = store.build(&map);
    let ram = ram_for(PFN, 8);
    let mut pool = HypPool::new(&vm, &ram, PFN, 8, 0).unwrap();
    let pa = pool.alloc_pages(0).unwrap();
    for want in 2..=u16::MAX {
        assert_eq!(pool.get_page(pa), Ok(want));
    }
    let before = snapshot(&pool, &vm);
    assert_eq!(pool.get_page(pa), Err(Error::Busy));
    assert_eq!(snapshot(&pool, &vm), before);
    for want in (0..u16::MAX).rev() {
        assert_eq!(pool.put_page(pa), Ok(want));
    }
    assert_eq!(pool.free_pages(), 8);
    check_pool(&pool, &vm, &ram, true).unwrap();
}

#[test]
fn split_and_exact() {
    let map = map_of(&[(BASE, REGION)]);
    let mut store = VmemmapStore::new(&map);
    let vm = store.build(&map);
    let ram = ram_for(PFN, 32);
    let mut pool = HypPool::new(&vm, &ram, PFN, 32, 0).unwrap();
    let initial = free_blocks(&pool);
    let pa = pool.alloc_pages(3).unwrap();
    pool.get_page(pa).unwrap();
    pool.split_page(pa).unwrap();
    assert_eq!(pool.page_count(pa), 2);
    for i in 1..8 {
        assert_eq!(pool.page_count(pa + i * PAGE_SIZE), 1);
        assert_eq!(vm.page(pa + i * PAGE_SIZE).unwrap().order(), 0);
    }
    check_pool(&pool, &vm, &ram, false).unwrap();
    // Free in a scrambled order; everything coalesces back.
    for i in [5, 0, 7, 2, 1, 6, 3, 4, 0] {
        ram.scribble_spots(pa + i * PAGE_SIZE);
        pool.put_page(pa + i * PAGE_SIZE).unwrap();
        check_pool(&pool, &vm, &ram, false).unwrap();
    }
    assert_eq!(free_blocks(&pool), initial);

    let pa = pool.alloc_pages_exact(5).unwrap();
    assert_eq!(pool.free_pages(), 27);
    for i in 0..5 {
        assert_eq!(pool.page_count(pa + i * PAGE_SIZE), 1);
    }
    for i in 5..8 {
        assert_eq!(pool.page_count(pa + i * PAGE_SIZE), 0);
    }
    check_pool(&pool, &vm, &ram, true).unwrap();
    for i in 0..5 {
        pool.put_page(pa + i * PAGE_SIZE).unwrap();
    }
    assert_eq!(free_blocks(&pool), initial);
}

#[test]
fn freed_memory_comes_back_zeroed() {
    let map = map_of(&[(BASE, REGION)]);
    let mut store = VmemmapStore::new(&map);
    let vm = store.build(&map);
    let ram = ram_for(PFN, 16);
    for i in 0..16 {
        ram.scribble_page((PFN + i) * PAGE_SIZE);
    }
    let mut pool = HypPool::new(&vm, &ram, PFN, 16, 0).unwrap();
    for order in [0, 2, 4, 1, 3] {
        let pa = pool.alloc_pages(order).unwrap();
        assert!(ram.range_zero(pa, PAGE_SIZE << order, 0));
        for i in 0..(1 << order) {
            ram.scribble_page(pa + i * PAGE_SIZE);
        }
        pool.put_page(pa).unwrap();
        check_pool(&pool, &vm, &ram, true).unwrap();
    }
}

#[test]
fn pool_as_mmops() {
    let map = map_of(&[(BASE, REGION)]);
    let mut store = VmemmapStore::new(&map);
    let vm = store.build(&map);
    let ram = ram_for(PFN, 4);
    let mut pool = HypPool::new(&vm, &ram, PFN, 4, 0).unwrap();
    {
        let ops: &mut dyn MmOps = &mut pool;
        let t = ops.zalloc_page().unwrap();
        assert_eq!(ops.page_count(t + 0x18), 1);
        ops.write_pte(t + 8, 0x1234);
        assert_eq!(ops.read_pte(t + 8), 0x1234);
        ops.get_page(t + 8);
        assert_eq!(ops.page_count(t), 2);
        ops.put_page(t + 8);
        ops.put_page(t + 0xff8);
        assert_eq!(ops.page_count(t), 0);
        // Errors cannot be returned through MmOps: they are counted.
        ops.put_page(t);
        ops.get_page(0);
    }
    assert_eq!(pool.mmops_errors(), 2);
    assert_eq!(pool.free_pages(), 4);
    check_pool(&pool, &vm, &ram, true).unwrap();

    let locked = pkvm_hyp::sync::Mutex::new(pool);
    let mut ops = LockedPoolMmOps::new(&locked);
    let pages: Vec<u64> = (0..4).map(|_| ops.zalloc_page().unwrap()).collect();
    assert_eq!(ops.zalloc_page(), None);
    // PTE accesses go to memory.
    ops.write_pte(pages[0] + 8, 0x4000_0403);
    assert_eq!(ram.read_u64(pages[0] + 8), 0x4000_0403);
    ram.write_u64(pages[0] + 16, 0x4000_1403);
    assert_eq!(ops.read_pte(pages[0] + 16), 0x4000_1403);
    ops.write_pte(pages[0] + 8, 0);
    ops.write_pte(pages[0] + 16, 0);
    ops.get_page(pages[1]);
    assert_eq!(ops.page_count(pages[1]), 2);
    for &p in &pages[..3] {
        ops.put_page(p);
    }
    // An empty table page goes back through `put_zeroed_table` too.
    ops.put_zeroed_table(pages[3]);
    assert_eq!(locked.lock().free_pages(), 3);
    ops.put_page(pages[1]);
    let pool = locked.into_inner();
    assert_eq!(pool.free_pages(), 4);
    assert_eq!(pool.mmops_errors(), 2);
    check_pool(&pool, &vm, &ram, true).unwrap();
}

#[test]
fn early_alloc_then_pool() {
    let map = map_of(&[(BASE, REGION)]);
    let (pfn, nr) = (PFN + 2, 20);
    let ram = ram_for(pfn, nr);
    for i in 0..nr {
        ram.scribble_page((pfn + i) * PAGE_SIZE);
    }
    assert_eq!(EarlyAlloc::new(&ram, BASE + 8, 1).err(), Some(Error::Inval));
    assert_eq!(
        EarlyAlloc::new(&ram, 0xFFFF_FFFF_FFFF_F000, 2).err(),
        Some(Error::Range)
    );
    let mut early = EarlyAlloc::new(&ram, pfn * PAGE_SIZE, nr).unwrap();
    assert_eq!((early.base(), early.nr_pages()), (pfn * PAGE_SIZE, nr));
    let a = early.alloc_page().unwrap();
    assert_eq!(a, pfn * PAGE_SIZE);
    assert!(ram.range_zero(a, PAGE_SIZE, 0));
    let b = early.alloc_contig(3).unwrap();
    assert_eq!(b, a + PAGE_SIZE);
    assert!(ram.range_zero(b, 3 * PAGE_SIZE, 0));
    assert_eq!(early.alloc_contig(0), Err(Error::Inval));
    assert_eq!(early.alloc_contig(17), Err(Error::NoMem));
    assert_eq!(early.alloc_contig(u64::MAX), Err(Error::NoMem));
    assert_eq!(early.nr_used_pages(), 4);
    {
        let ops: &mut dyn MmOps = &mut early;
        let t = ops.zalloc_page().unwrap();
        ops.get_page(t);
        ops.put_page(t);
        ops.put_page(t);
        assert_eq!(ops.page_count(t), 1);
        ops.write_pte(t + 16, 7);
        assert_eq!(ops.read_pte(t + 16), 7);
        assert_eq!(ram.read_u64(t + 16), 7);
    }
    assert_eq!(early.nr_used_pages(), 5);
    assert_eq!(early.nr_free_pages(), 15);
    // Hand over to the buddy pool: used pages are reserved.
    let mut store = VmemmapStore::new(&map);
    let vm = store.build(&map);
    let used = early.nr_used_pages();
    let pool = HypPool::new(&vm, &ram, pfn, nr, used).unwrap();
    assert_eq!(pool.free_pages(), nr - used);
    assert_eq!(
        ram.read_u64(a + 4 * PAGE_SIZE + 16),
        7,
        "reserved pages untouched"
    );
    check_pool(&pool, &vm, &ram, true).unwrap();
    while early.alloc_page().is_ok() {}
    assert_eq!(early.nr_used_pages(), nr);
    assert_eq!(early.alloc_page(), Err(Error::NoMem));
    assert_eq!(early.nr_used_pages(), nr);
}

// ---------------------------------------------------------------------------------------------
// Property tests.

#[derive(Clone, Debug)]
enum Op {
    Alloc(u8),
    Exact(u64),
    Get(usize, u64),
    Put(usize, u64),
    Split(usize),
    /// Misuse at page index `start + k` (may be outside the pool): put, get, then split.
    Bad(i64, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..=MAX_ORDER + 1).prop_map(Op::Alloc),
        4 => (0..4u8).prop_map(Op::Alloc),
        1 => (1..20u64).prop_map(Op::Exact),
        2 => (any::<usize>(), 0..PAGE_SIZE).prop_map(|(i, o)| Op::Get(i, o)),
        5 => (any::<usize>(), 0..PAGE_SIZE).prop_map(|(i, o)| Op::Put(i, o)),
        1 => any::<usize>().prop_map(Op::Split),
        2 => (-4..200i64, 0..3u8).prop_map(|(k, w)| Op::Bad(k, w)),
    ]
}

#[derive(Clone, Copy, Debug)]
struct Block {
    pa: u64,
    order: u8,
    rc: u16,
}

fn allocated_pages(blocks: &[Block]) -> BTreeSet<u64> {
    blocks
        .iter()
        .flat_map(|b| (0..1u64 << b.order).map(move |i| b.pa + i * PAGE_SIZE))
        .collect()
}

fn run_ops(off: u64, nr: u64, reserved: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let map = map_of(&[(BASE, REGION)]);
    let mut store = VmemmapStore::new(&map);
    let vm = store.build(&map);
    let pfn = PFN + off;
    let ram = ram_for(pfn, nr);
    let mut pool = HypPool::new(&vm, &ram, pfn, nr, reserved).unwrap();
    let (start, end) = pool.range();
    let initial = free_blocks(&pool);
    let mut blocks: Vec<Block> = (0..reserved)
        .map(|i| Block {
            pa: start + i * PAGE_SIZE,
            order: 0,
            rc: 1,
        })
        .collect();
    let check = |pool: &HypPool<'_, SimRam>, blocks: &[Block]| -> Result<(), TestCaseError> {
        check_pool(pool, &vm, &ram, false).map_err(TestCaseError::fail)?;
        let alloc: u64 = blocks.iter().map(|b| 1u64 << b.order).sum();
        prop_assert_eq!(pool.free_pages() + alloc, nr);
        Ok(())
    };
    check(&pool, &blocks)?;

    for op in ops {
        match *op {
            Op::Alloc(order) => {
                let possible =
                    order < pool.max_order() && free_blocks(&pool).iter().any(|&(o, _)| o >= order);
                let before = snapshot(&pool, &vm);
                match pool.alloc_pages(order) {
                    Ok(pa) => {
                        prop_assert!(possible);
                        let size = PAGE_SIZE << order;
                        prop_assert_eq!(pa % size, 0);
                        prop_assert!(pa >= start && pa + size <= end);
                        let taken = allocated_pages(&blocks);
                        for i in 0..(1u64 << order) {
                            prop_assert!(!taken.contains(&(pa + i * PAGE_SIZE)));
                        }
                        prop_assert!(ram.range_zero(pa, size, 0), "allocation not zeroed");
                        for i in 0..(1u64 << order) {
                            ram.scribble_spots(pa + i * PAGE_SIZE);
                        }
                        prop_assert_eq!(pool.page_count(pa), 1);
                        blocks.push(Block { pa, order, rc: 1 });
                    }
                    Err(e) => {
                        prop_assert!(!possible);
                        let want = if order >= MAX_ORDER {
                            Error::Inval
                        } else {
                            Error::NoMem
                        };
                        prop_assert_eq!(e, want);
                        prop_assert_eq!(snapshot(&pool, &vm), before);
                    }
                }
            }
            Op::Exact(n) => {
                let order = n.next_power_of_two().trailing_zeros() as u8;
                let possible =
                    order < pool.max_order() && free_blocks(&pool).iter().any(|&(o, _)| o >= order);
                let before = snapshot(&pool, &vm);
                match pool.alloc_pages_exact(n) {
                    Ok(pa) => {
                        prop_assert!(possible);
                        prop_assert_eq!(pa % (PAGE_SIZE << order), 0);
                        prop_assert!(ram.range_zero(pa, n * PAGE_SIZE, 0));
                        let taken = allocated_pages(&blocks);
                        for i in 0..n {
                            let p = pa + i * PAGE_SIZE;
                            prop_assert!(!taken.contains(&p));
                            prop_assert_eq!(pool.page_count(p), 1);
                            ram.scribble_spots(p);
                            blocks.push(Block {
                                pa: p,
                                order: 0,
                                rc: 1,
                            });
                        }
                    }
                    Err(e) => {
                        prop_assert!(!possible);
                        prop_assert_eq!(e, Error::NoMem);
                        prop_assert_eq!(snapshot(&pool, &vm), before);
                    }
                }
            }
            Op::Get(i, byte) => {
                if blocks.is_empty() {
                    continue;
                }
                let n = blocks.len();
                let b = &mut blocks[i % n];
                prop_assert_eq!(pool.get_page(b.pa + byte), Ok(b.rc + 1));
                b.rc += 1;
            }
            Op::Put(i, byte) => {
                if blocks.is_empty() {
                    continue;
                }
                let idx = i % blocks.len();
                let b = &mut blocks[idx];
                prop_assert_eq!(pool.put_page(b.pa + byte), Ok(b.rc - 1));
                b.rc -= 1;
                if b.rc == 0 {
                    blocks.swap_remove(idx);
                }
            }
            Op::Split(i) => {
                if blocks.is_empty() {
                    continue;
                }
                let idx = i % blocks.len();
                let b = blocks[idx];
                prop_assert_eq!(pool.split_page(b.pa), Ok(()));
                blocks[idx].order = 0;
                for k in 1..(1u64 << b.order) {
                    blocks.push(Block {
                        pa: b.pa + k * PAGE_SIZE,
                        order: 0,
                        rc: 1,
                    });
                }
            }
            Op::Bad(k, what) => {
                let pa = start.wrapping_add_signed(k * PAGE_SIZE as i64);
                if blocks.iter().any(|b| b.pa == pa) {
                    continue;
                }
                let inside = pa >= start && pa < end;
                let want = if inside { Error::Fault } else { Error::Inval };
                let before = snapshot(&pool, &vm);
                let got = match what {
                    0 => pool.put_page(pa).map(|_| ()),
                    1 => pool.get_page(pa).map(|_| ()),
                    _ => pool.split_page(pa),
                };
                prop_assert_eq!(got, Err(want));
                prop_assert_eq!(snapshot(&pool, &vm), before);
            }
        }
        check(&pool, &blocks)?;
    }

    // Release everything but untouched reserved pages: the initial free lists come back.
    let reserved_end = start + reserved * PAGE_SIZE;
    let untouched_reserved = blocks
        .iter()
        .filter(|b| b.pa < reserved_end && b.rc == 1 && b.order == 0)
        .count() as u64;
    let mut kept = Vec::new();
    for b in blocks.drain(..) {
        if b.pa < reserved_end && b.rc == 1 && b.order == 0 {
            kept.push(b);
            continue;
        }
        for _ in 0..b.rc {
            pool.put_page(b.pa)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
    }
    check_pool(&pool, &vm, &ram, false).map_err(TestCaseError::fail)?;
    if untouched_reserved == reserved {
        prop_assert_eq!(free_blocks(&pool), initial);
    }
    // Release the rest: the pool looks like a fresh pool with nothing reserved.
    for b in kept {
        prop_assert_eq!(pool.put_page(b.pa), Ok(0));
    }
    check_pool(&pool, &vm, &ram, true).map_err(TestCaseError::fail)?;
    prop_assert_eq!(pool.free_pages(), nr);
    let final_blocks = free_blocks(&pool);
    let fresh = HypPool::new(&vm, &ram, pfn, nr, 0).unwrap();
    prop_assert_eq!(final_blocks, free_blocks(&fresh));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: persistence::out_of_tree(), ..ProptestConfig::default() })]

    #[test]
    fn buddy_invariants_hold(
        off in 0..64u64,
        nr in 0..=160u64,
        reserved_frac in 0..=8u64,
        ops in prop::collection::vec(op(), 0..48),
    ) {
        let reserved = (nr * reserved_frac / 32).min(nr);
        run_ops(off, nr, reserved, &ops)?;
    }

    #[test]
    fn buddy_invariants_hold_aligned_pools(
        log in 0..=7u32,
        ops in prop::collection::vec(op(), 0..48),
    ) {
        run_ops(0, 1 << log, 0, &ops)?;
    }
}

#[test]
fn no_order_marks_tails() {
    let map = map_of(&[(BASE, REGION)]);
    let mut store = VmemmapStore::new(&map);
    let vm = store.build(&map);
    let ram = ram_for(PFN, 16);
    let mut pool = HypPool::new(&vm, &ram, PFN, 16, 0).unwrap();
    let pa = pool.alloc_pages(2).unwrap();
    assert_eq!(vm.page(pa).unwrap().order(), 2);
    for i in 1..4 {
        let p = vm.page(pa + i * PAGE_SIZE).unwrap();
        assert_eq!((p.order(), p.refcount()), (NO_ORDER, 0));
    }
}

/// The pool can sit behind the hypervisor's lock shared between CPUs.
#[test]
fn pool_is_shareable_behind_a_lock() {
    fn shareable<T: Send + Sync>() {}
    shareable::<pkvm_hyp::sync::Mutex<HypPool<'static, SimRam>>>();
    shareable::<pkvm_hyp::vmemmap::Vmemmap<'static>>();
}

/// A corrupted order field (vmemmap entries are shared memory) cannot make a free reach
/// outside the pool.
#[test]
fn corrupted_order_is_refused() {
    let map = map_of(&[(BASE, REGION)]);
    let mut store = VmemmapStore::new(&map);
    let vm = store.build(&map);
    let (pfn, nr) = (PFN + 1, 8);
    let ram = ram_for(pfn, nr);
    let mut pool = HypPool::new(&vm, &ram, pfn, nr, 0).unwrap();
    let a = pool.alloc_pages(0).unwrap();
    let page = vm.page(a).unwrap();
    for bad in [1, 2, 3] {
        page.set_order(bad);
        let before = snapshot(&pool, &vm);
        assert_eq!(pool.put_page(a), Err(Error::Fault), "order {bad}");
        assert_eq!(snapshot(&pool, &vm), before);
    }
    page.set_order(0);
    assert_eq!(pool.put_page(a), Ok(0));
    // Aligned, but the block would run past the end of the pool.
    let all: Vec<u64> = (0..nr).map(|_| pool.alloc_pages(0).unwrap()).collect();
    let last = (pfn + 7) * PAGE_SIZE;
    assert!(last.is_multiple_of(8 * PAGE_SIZE) && all.contains(&last));
    vm.page(last).unwrap().set_order(3);
    assert_eq!(pool.put_page(last), Err(Error::Fault));
    vm.page(last).unwrap().set_order(0);
    // Inside the pool, but not aligned to its order.
    let first = pfn * PAGE_SIZE;
    assert!(!first.is_multiple_of(2 * PAGE_SIZE) && all.contains(&first));
    vm.page(first).unwrap().set_order(1);
    let before = snapshot(&pool, &vm);
    assert_eq!(pool.put_page(first), Err(Error::Fault));
    assert_eq!(snapshot(&pool, &vm), before);
    vm.page(first).unwrap().set_order(0);
    for pa in all {
        assert_eq!(pool.put_page(pa), Ok(0));
    }
    check_pool(&pool, &vm, &ram, true).unwrap();
}

/// A free-list link that points inside the pool but not at a page (EL2's own memory is never
/// the host's to write, but a stray write must not turn into a write through a bad link):
/// the allocation that would follow it fails with `EFAULT` and changes nothing.
#[test]
fn corrupted_free_list_link_is_refused() {
    use pkvm_hyp::page_alloc::NODE_NEXT;
    let map = map_of(&[(BASE, REGION)]);
    let mut store = VmemmapStore::new(&map);
    let vm = store.build(&map);
    let (pfn, nr) = (PFN, 8);
    let ram = ram_for(pfn, nr);
    let mut pool = HypPool::new(&vm, &ram, pfn, nr, 0).unwrap();
    let all: Vec<u64> = (0..nr).map(|_| pool.alloc_pages(0).unwrap()).collect();
    // Two pages that are not buddies: both on the order-0 list, whichever is at its head
    // linking to the other.
    let (a, c) = (all[0], all[2]);
    assert_eq!(pool.put_page(a), Ok(0));
    assert_eq!(pool.put_page(c), Ok(0));
    let links = [ram.read_u64(a + NODE_NEXT), ram.read_u64(c + NODE_NEXT)];
    for bad in [
        BASE + 8,
        BASE + PAGE_SIZE + 0x10,
        BASE + 7 * PAGE_SIZE + 0xff8,
        // The pool's end: a page address, one past the last page.
        BASE + 8 * PAGE_SIZE,
    ] {
        ram.write_u64(a + NODE_NEXT, bad);
        ram.write_u64(c + NODE_NEXT, bad);
        // (The snapshot helper would follow the bad link: compare the raw state instead.)
        let state = |pool: &HypPool<'_, SimRam>| {
            let words: Vec<u64> = (0..nr * PAGE_SIZE / 8)
                .map(|i| ram.read_u64(BASE + i * 8))
                .collect();
            let meta: Vec<_> = all
                .iter()
                .map(|&pa| {
                    (
                        vm.page(pa).unwrap().refcount(),
                        vm.page(pa).unwrap().order(),
                    )
                })
                .collect();
            (words, meta, pool.free_pages(), pool.free_list_head(0))
        };
        let before = state(&pool);
        assert_eq!(pool.alloc_pages(0), Err(Error::Fault), "link {bad:#x}");
        assert!(state(&pool) == before, "link {bad:#x}: the pool changed");
    }
    ram.write_u64(a + NODE_NEXT, links[0]);
    ram.write_u64(c + NODE_NEXT, links[1]);
    let got = BTreeSet::from([pool.alloc_pages(0).unwrap(), pool.alloc_pages(0).unwrap()]);
    assert_eq!(got, BTreeSet::from([a, c]));
    for pa in all {
        assert_eq!(pool.put_page(pa), Ok(0));
    }
    check_pool(&pool, &vm, &ram, true).unwrap();
}

/// The vmemmap entry of the block at the head of a free list says it is in use (a refcount),
/// or of another order: the allocation refuses with `EFAULT` and changes nothing — each of
/// the two checks on its own.
#[test]
fn corrupted_free_head_entry_is_refused() {
    with_pool((PFN, 8, 0), |pool, vm, ram| {
        // The whole pool is one free order-3 block.
        let head = pool.free_list_head(3).expect("one order-3 block");
        let page = vm.page(head).unwrap();
        assert_eq!((page.refcount(), page.order()), (0, 3));
        for (refcount, order) in [(1, 3), (0, 2), (0, 0)] {
            page.set_refcount(refcount);
            page.set_order(order);
            let before = (
                pool.free_pages(),
                pool.free_list_head(3),
                ram.read_u64(head),
            );
            assert_eq!(
                pool.alloc_pages(0),
                Err(Error::Fault),
                "({refcount}, {order})"
            );
            let after = (
                pool.free_pages(),
                pool.free_list_head(3),
                ram.read_u64(head),
            );
            assert_eq!(after, before, "({refcount}, {order}): the pool changed");
        }
        page.set_refcount(0);
        page.set_order(3);
        let a = pool.alloc_pages(0).unwrap();
        assert_eq!(pool.put_page(a), Ok(0));
        check_pool(pool, vm, ram, true).unwrap();
    });
}

/// The pool's extent and its reservation, as created.
#[test]
fn pool_reports_its_range_and_reservation() {
    let (pfn, nr) = (PFN, 8);
    with_pool((pfn, nr, 3), |pool, _, _| {
        let (start, end) = (pfn * PAGE_SIZE, (pfn + nr) * PAGE_SIZE);
        assert_eq!(pool.range(), (start, end));
        assert_eq!((pool.nr_pages(), pool.reserved_pages()), (nr, 3));
        assert_eq!(pool.free_pages(), nr - 3);
        assert!(pool.contains(start) && pool.contains(end - 1));
        assert!(!pool.contains(start - 1) && !pool.contains(end) && !pool.contains(u64::MAX));
    });
}

/// `free_memory_is_zero` reads every free block of every list, not only the first of each:
/// one non-zero word past the list node of a page makes it false exactly when the page is
/// free. A word in the node itself is not free memory.
#[test]
fn the_free_memory_check_reads_every_free_block() {
    with_pool((PFN, 16, 0), |pool, _, ram| {
        // Single pages, every other one freed again: no two are buddies, so list 0 holds
        // several blocks (and the rest of the pool is one larger block).
        let pages: Vec<u64> = (0..4).map(|_| pool.alloc_pages(0).unwrap()).collect();
        for &pa in pages.iter().step_by(2) {
            pool.put_page(pa).unwrap();
        }
        let head = pool.free_list_head(0).expect("list 0 has blocks");
        assert_ne!(ram.read_u64(head), u64::MAX, "list 0 has a second block");
        assert!(pool.free_memory_is_zero());
        let prev = head + 8;
        ram.write_u64(prev, ram.read_u64(prev) ^ 1);
        assert!(pool.free_memory_is_zero(), "a word of a list node");
        ram.write_u64(prev, ram.read_u64(prev) ^ 1);
        let (start, end) = pool.range();
        let mut seen = 0;
        // The first word after a node and the last word of a page.
        for pa in (start..end).step_by(PAGE_SIZE as usize) {
            for w in [pa + 16, pa + PAGE_SIZE - 8] {
                let old = ram.read_u64(w);
                ram.write_u64(w, old ^ 1);
                if !pool.free_memory_is_zero() {
                    seen += 1;
                    assert_eq!(pool.page_count(pa), 0, "{pa:#x} is free");
                }
                ram.write_u64(w, old);
            }
        }
        assert_eq!(seen, 2 * pool.free_pages());
        assert!(pool.free_memory_is_zero());
    });
}
