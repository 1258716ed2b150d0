//! Instruction-count driver for the one-page fast paths (no hardware counters needed):
//!
//! ```text
//! cargo build --release -p pkvm-pgtable --example icount
//! valgrind --tool=callgrind target/release/examples/icount pair 10000   # then with 0
//! ```
//!
//! (instructions(n) - instructions(0)) / n is the cost of one iteration. Modes: `pair` (map a
//! page into existing tables, then unmap it), `mapnoop` (map the identical mapping again),
//! `unmapnoop` (unmap a hole), `leaf` (`get_leaf`), anything else: the empty loop. The arena
//! `MmOps` is the benchmark's (bounds-checked `Vec` accesses), the `ArchOps` does nothing.

use pkvm_pgtable::{ArchOps, Config, MapFlags, MmOps, PageTable, Prot};
use std::hint::black_box;
/// Table pages in a `Vec`, refcounts in another, a free list.
struct ArenaMm {
    pages: Vec<[u64; 512]>,
    counts: Vec<u32>,
    free: Vec<u32>,
}

const ARENA_BASE: u64 = 0x10_0000_0000;

impl ArenaMm {
    /// An arena with `n` zeroed, already touched pages on its free list (like the EL2 page
    /// pool: its memory is mapped and in use, not demand-faulted).
    fn new(n: usize) -> Self {
        ArenaMm {
            pages: vec![[0; 512]; n],
            counts: vec![0; n],
            free: (0..n as u32).rev().collect(),
        }
    }
    #[inline(always)]
    fn idx(pa: u64) -> usize {
        ((pa - ARENA_BASE) >> 12) as usize
    }
}

impl MmOps for ArenaMm {
    #[inline]
    fn zalloc_page(&mut self) -> Option<u64> {
        let i = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                self.pages.push([0; 512]);
                self.counts.push(0);
                self.pages.len() - 1
            }
        };
        self.counts[i] = 1;
        Some(ARENA_BASE + ((i as u64) << 12))
    }
    #[inline(always)]
    fn get_page(&mut self, pa: u64) {
        self.counts[Self::idx(pa)] += 1;
    }
    #[inline(always)]
    fn put_page(&mut self, pa: u64) {
        let i = Self::idx(pa);
        self.counts[i] -= 1;
        if self.counts[i] == 0 {
            self.pages[i] = [0; 512];
            self.free.push(i as u32);
        }
    }
    #[inline(always)]
    fn page_count(&self, pa: u64) -> u32 {
        self.counts[Self::idx(pa)]
    }
    #[inline(always)]
    fn read_pte(&self, pa: u64) -> u64 {
        self.pages[Self::idx(pa)][((pa >> 3) & 511) as usize]
    }
    #[inline(always)]
    fn write_pte(&mut self, pa: u64, pte: u64) {
        self.pages[Self::idx(pa)][((pa >> 3) & 511) as usize] = pte;
    }
}

struct NopArch;

impl ArchOps for NopArch {
    #[inline(always)]
    fn dsb_ishst(&mut self) {}
    #[inline(always)]
    fn dsb_ish(&mut self) {}
    #[inline(always)]
    fn isb(&mut self) {}
    #[inline(always)]
    fn tlbi_el2_va(&mut self, _: u64, _: u8, _: bool) {}
    #[inline(always)]
    fn tlbi_s2_ipa(&mut self, _: u16, _: u64, _: u8) {}
    #[inline(always)]
    fn tlbi_vmid(&mut self, _: u16) {}
    #[inline(always)]
    fn tlbi_el2_all(&mut self) {}
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let n: u64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut mm = ArenaMm::new(16);
    let mut arch = NopArch;
    let mut pt = PageTable::new(&mut mm, Config::stage1_el2()).unwrap();
    let va = 0x40_0020_0000u64;
    pt.map(
        &mut mm,
        &mut arch,
        va,
        4096,
        0x8000_0000,
        Prot::RW,
        MapFlags::FORCE_PAGES,
    )
    .unwrap();
    let one = va + 0x4000;
    let mut acc = 0u64;
    for _ in 0..n {
        match mode.as_str() {
            "pair" => {
                pt.map(
                    &mut mm,
                    &mut arch,
                    black_box(one),
                    4096,
                    0x8000_4000,
                    Prot::RW,
                    MapFlags::FORCE_PAGES,
                )
                .unwrap();
                acc ^= pt.unmap(&mut mm, &mut arch, black_box(one), 4096).unwrap();
            }
            "mapnoop" => pt
                .map(
                    &mut mm,
                    &mut arch,
                    black_box(va),
                    4096,
                    0x8000_0000,
                    Prot::RW,
                    MapFlags::FORCE_PAGES,
                )
                .unwrap(),
            "unmapnoop" => acc ^= pt.unmap(&mut mm, &mut arch, black_box(one), 4096).unwrap(),
            "leaf" => acc ^= pt.get_leaf(&mm, black_box(va)).unwrap().0,
            _ => {}
        }
    }
    println!("{acc}");
}
