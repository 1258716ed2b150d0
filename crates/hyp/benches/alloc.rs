//! Buddy pool hot path: an allocation followed by its free, in a loop.
//!
//! `cargo bench -p pkvm-hyp --bench alloc`
//!
//! Variants:
//! - `cascade`: a fresh pool of 1024 pages (one order-10 block): every order-0 allocation splits
//!   10 times and its free merges 10 times (the worst case);
//! - `steady`: every other page allocated, so the order-0 free list is used directly and a free
//!   cannot merge (the common case for page-table pages);
//! - RAM flavours: `memset` zeroes with `write_bytes` as EL2 does; `atomic` is the simulator's
//!   word-by-word atomic RAM; `nozero` skips zeroing, isolating the allocator's bookkeeping.
#![allow(missing_docs)]

use std::cell::UnsafeCell;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use pkvm_abi::PAGE_SIZE;
use pkvm_hyp::memory::{MemRegion, MemoryMap};
use pkvm_hyp::page_alloc::HypPool;
use pkvm_hyp::platform::PhysMem;
use pkvm_hyp::vmemmap::{HypPage, Vmemmap, VmemmapLayout};

const BASE: u64 = 0x4000_0000;
const NR: u64 = 1024;

/// Plain RAM, zeroed with `memset` (what EL2's linear-map accessor does).
struct MemsetRam {
    base: u64,
    words: UnsafeCell<Box<[u64]>>,
}

// SAFETY: the benchmark is single-threaded; no two threads ever touch `words`.
unsafe impl Sync for MemsetRam {}

impl MemsetRam {
    fn new(base: u64, len: u64) -> Self {
        Self {
            base,
            words: UnsafeCell::new(vec![0u64; (len / 8) as usize].into_boxed_slice()),
        }
    }

    fn idx(&self, pa: u64) -> usize {
        ((pa - self.base) / 8) as usize
    }
}

impl PhysMem for MemsetRam {
    fn read_u64(&self, pa: u64) -> u64 {
        let i = self.idx(pa);
        // SAFETY: single-threaded; the reference lives only for this statement.
        unsafe { (&*self.words.get())[i] }
    }
    fn write_u64(&self, pa: u64, val: u64) {
        let i = self.idx(pa);
        // SAFETY: single-threaded; the reference lives only for this statement.
        unsafe { (&mut *self.words.get())[i] = val };
    }
    fn zero(&self, pa: u64, len: u64) {
        let i = self.idx(pa);
        // SAFETY: single-threaded; the reference lives only for this statement.
        unsafe { (&mut *self.words.get())[i..i + (len / 8) as usize].fill(0) };
    }
}

/// The simulator's style of RAM: one atomic per word.
struct AtomicRam {
    base: u64,
    words: Box<[AtomicU64]>,
}

impl AtomicRam {
    fn new(base: u64, len: u64) -> Self {
        Self {
            base,
            words: (0..len / 8).map(|_| AtomicU64::new(0)).collect(),
        }
    }
    fn idx(&self, pa: u64) -> usize {
        ((pa - self.base) / 8) as usize
    }
}

impl PhysMem for AtomicRam {
    fn read_u64(&self, pa: u64) -> u64 {
        self.words[self.idx(pa)].load(Relaxed)
    }
    fn write_u64(&self, pa: u64, val: u64) {
        self.words[self.idx(pa)].store(val, Relaxed);
    }
    fn zero(&self, pa: u64, len: u64) {
        let i = self.idx(pa);
        for w in &self.words[i..i + (len / 8) as usize] {
            w.store(0, Relaxed);
        }
    }
}

/// RAM that does not zero: measures the allocator alone.
struct NoZeroRam(MemsetRam);

impl PhysMem for NoZeroRam {
    fn read_u64(&self, pa: u64) -> u64 {
        self.0.read_u64(pa)
    }
    fn write_u64(&self, pa: u64, val: u64) {
        self.0.write_u64(pa, val);
    }
    fn zero(&self, _pa: u64, _len: u64) {}
}

struct Setup {
    map: MemoryMap,
    dir: Vec<u32>,
    pages: Vec<HypPage>,
}

impl Setup {
    fn new() -> Self {
        let map = MemoryMap::new(&[MemRegion::new(BASE, 16 << 20)]).unwrap();
        let layout = VmemmapLayout::for_map(&map).unwrap();
        Self {
            map,
            dir: vec![0; layout.dir_slots],
            pages: (0..layout.entries()).map(|_| HypPage::new()).collect(),
        }
    }
}

fn pair<M: PhysMem>(c: &mut Criterion, name: &str, mem: &M, order: u8, steady: bool) {
    let mut s = Setup::new();
    let vm = Vmemmap::new(&s.map, &mut s.dir, &s.pages).unwrap();
    let mut pool = HypPool::new(&vm, mem, BASE / PAGE_SIZE, NR, 0).unwrap();
    if steady {
        let all: Vec<u64> = (0..NR).map(|_| pool.alloc_pages(0).unwrap()).collect();
        for pa in all.iter().skip(1).step_by(2) {
            pool.put_page(*pa).unwrap();
        }
    }
    c.bench_function(name, |b| {
        b.iter(|| {
            let pa = pool.alloc_pages(black_box(order)).unwrap();
            pool.put_page(black_box(pa)).unwrap();
        })
    });
}

fn benches(c: &mut Criterion) {
    let len = NR * PAGE_SIZE;
    let memset = MemsetRam::new(BASE, len);
    let atomic = AtomicRam::new(BASE, len);
    let nozero = NoZeroRam(MemsetRam::new(BASE, len));
    c.bench_function("baseline/zero_4k/memset", |b| {
        b.iter(|| memset.zero(black_box(BASE), PAGE_SIZE))
    });
    pair(c, "order0/steady/memset", &memset, 0, true);
    pair(c, "order0/steady/nozero", &nozero, 0, true);
    pair(c, "order0/cascade/memset", &memset, 0, false);
    pair(c, "order0/steady/atomic", &atomic, 0, true);
    pair(c, "order0/cascade/nozero", &nozero, 0, false);
    pair(c, "order9/cascade/memset", &memset, 9, false);
    pair(c, "order9/cascade/nozero", &nozero, 9, false);
}

criterion_group! {
    name = alloc;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(alloc);
