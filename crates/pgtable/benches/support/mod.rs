//! The arena `MmOps` (table pages in a `Vec`, counts in another, a free list) and the no-op
//! `ArchOps` shared by the benchmark and the `icount` example.

use pkvm_pgtable::{ArchOps, MmOps};

/// Table pages in a `Vec`, refcounts in another, a free list.
pub struct ArenaMm {
    pub pages: Vec<[u64; 512]>,
    counts: Vec<u32>,
    pub free: Vec<u32>,
}

const ARENA_BASE: u64 = 0x10_0000_0000;

impl ArenaMm {
    /// An arena with `n` zeroed, already touched pages on its free list (like the EL2 page
    /// pool: its memory is mapped and in use, not demand-faulted).
    pub fn new(n: usize) -> Self {
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

pub struct NopArch;

impl ArchOps for NopArch {
    #[inline(always)]
    fn dsb_ishst(&self) {}
    #[inline(always)]
    fn dsb_ish(&self) {}
    #[inline(always)]
    fn isb(&self) {}
    #[inline(always)]
    fn tlbi_el2_va(&self, _: u64, _: u8, _: bool) {}
    #[inline(always)]
    fn tlbi_s2_ipa(&self, _: u16, _: u64, _: u8) {}
    #[inline(always)]
    fn tlbi_vmid(&self, _: u16) {}
    #[inline(always)]
    fn tlbi_el2_all(&self) {}
}
