//! Simulated physical memory.
//!
//! Every store marks its page dirty and bumps the page's version:
//!
//! - the dirty bits let a [`MemSnapshot`] (taken once, after boot) be restored by copying back
//!   only the pages written since, which is what lets the fuzz target reuse one machine
//!   ([`crate::reset`]);
//! - the versions let the checks keep what they read of a table page until the page changes
//!   ([`SimMemory::page_version`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pkvm_abi::{PAGE_SHIFT, PAGE_SIZE};
use pkvm_hyp::platform::PhysMem;

/// Words per page.
pub const PAGE_WORDS: usize = 1 << (PAGE_SHIFT - 3);

/// One RAM region backed by host memory.
#[derive(Debug)]
struct Region {
    base: u64,
    /// Size in bytes.
    size: u64,
    words: Box<[AtomicU64]>,
    /// One bit per page of the region: written since the last [`SimMemory::snapshot`] or
    /// [`SimMemory::restore`].
    dirty: Box<[AtomicU64]>,
    /// Per page: how many times it was written (stores and restores).
    versions: Box<[AtomicU64]>,
}

impl Region {
    /// Records a store to word `idx`, after the store: its page is dirty and has a new version.
    #[inline]
    fn stored(&self, idx: usize) {
        let page = idx / PAGE_WORDS;
        let (w, bit) = (&self.dirty[page / 64], 1u64 << (page % 64));
        if w.load(Ordering::Relaxed) & bit == 0 {
            w.fetch_or(bit, Ordering::Relaxed);
        }
        self.versions[page].fetch_add(1, Ordering::Release);
    }
}

/// The RAM several [`SimMemory`] handles share.
#[derive(Debug)]
struct Ram {
    regions: Box<[Region]>,
    /// The snapshot the dirty bits are relative to (0: none).
    current: AtomicU64,
    /// The last snapshot's number.
    last: AtomicU64,
}

/// Physical memory of the simulated machine: RAM regions, everything else is MMIO (reads as 0,
/// writes ignored when the host does them; a hypervisor access outside RAM is a bug and panics).
///
/// Several handles may refer to the same RAM ([`SimMemory::handle`]): the MMU model keeps one
/// to walk tables from its walk caches, as the hardware's table walker reads memory.
#[derive(Debug)]
pub struct SimMemory {
    ram: Arc<Ram>,
}

/// A copy of every RAM word ([`SimMemory::snapshot`]).
#[derive(Clone, Debug)]
pub struct MemSnapshot {
    regions: Vec<(u64, Box<[u64]>)>,
    id: u64,
}

impl SimMemory {
    /// RAM regions as `(base, size)`, page aligned.
    #[must_use]
    pub fn new(regions: &[(u64, u64)]) -> Self {
        let regions = regions
            .iter()
            .map(|&(base, size)| {
                let pages = usize::try_from(size >> PAGE_SHIFT).expect("region size");
                let zeroes = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
                Region {
                    base,
                    size,
                    words: zeroes(pages * PAGE_WORDS),
                    dirty: zeroes(pages.div_ceil(64)),
                    versions: zeroes(pages),
                }
            })
            .collect();
        SimMemory {
            ram: Arc::new(Ram {
                regions,
                current: AtomicU64::new(0),
                last: AtomicU64::new(0),
            }),
        }
    }

    /// Another handle to the same RAM (not a copy).
    #[must_use]
    pub fn handle(&self) -> SimMemory {
        SimMemory {
            ram: Arc::clone(&self.ram),
        }
    }

    /// The region holding `pa` and the index of its word. (Every table walk of the checks
    /// reads through here: kept to a few comparisons and loads.)
    #[inline]
    fn locate(&self, pa: u64) -> Option<(&Region, usize)> {
        for r in &*self.ram.regions {
            let off = pa.wrapping_sub(r.base);
            if off < r.size {
                // `off < size`, and the size of a region fits in `usize` (it is allocated).
                return Some((r, (off / 8) as usize));
            }
        }
        None
    }

    fn word(&self, pa: u64) -> Option<&AtomicU64> {
        self.locate(pa).map(|(r, i)| &r.words[i])
    }

    /// Stores through `f` to the word at `pa` if it is RAM, then records the store.
    #[inline]
    fn store<T>(&self, pa: u64, f: impl FnOnce(&AtomicU64) -> T) -> Option<T> {
        let (r, i) = self.locate(pa)?;
        let t = f(&r.words[i]);
        r.stored(i);
        Some(t)
    }

    /// The words of the RAM page at `pa` (page aligned): for walkers that read a whole table
    /// (one lookup instead of one per descriptor).
    #[must_use]
    pub fn page_words(&self, pa: u64) -> Option<&[AtomicU64; PAGE_WORDS]> {
        if !pa.is_multiple_of(PAGE_SIZE) {
            return None;
        }
        let (r, i) = self.locate(pa)?;
        r.words.get(i..i + PAGE_WORDS)?.try_into().ok()
    }

    /// The version of the RAM page holding `pa`: it changes whenever a word of the page is
    /// written (it is bumped after the store), so what was read of the page after reading
    /// version `v` is still what the page holds while its version is `v`.
    #[must_use]
    pub fn page_version(&self, pa: u64) -> Option<u64> {
        let (r, i) = self.locate(pa)?;
        Some(r.versions[i / PAGE_WORDS].load(Ordering::Acquire))
    }

    /// Whether `pa` is backed by RAM.
    #[must_use]
    pub fn is_ram(&self, pa: u64) -> bool {
        self.locate(pa).is_some()
    }

    /// Reads a word if `pa` is RAM.
    #[must_use]
    pub fn try_read(&self, pa: u64) -> Option<u64> {
        self.word(pa & !7).map(|w| w.load(Ordering::Relaxed))
    }

    /// Writes a word if `pa` is RAM; returns whether it was.
    pub fn try_write(&self, pa: u64, val: u64) -> bool {
        self.store(pa & !7, |w| w.store(val, Ordering::Relaxed))
            .is_some()
    }

    /// Stores `val` at `pa` (RAM, 8-byte aligned) and returns the value it replaced, in one
    /// atomic step: what the platform reports to the protocol monitor.
    ///
    /// # Panics
    /// As [`PhysMem::write_u64`].
    pub fn swap(&self, pa: u64, val: u64) -> u64 {
        self.expect_store(pa, |w| w.swap(val, Ordering::Relaxed))
    }

    #[inline]
    fn expect(&self, pa: u64) -> &AtomicU64 {
        match self.word(pa) {
            Some(w) if pa.is_multiple_of(8) => w,
            _ => bad_access(pa),
        }
    }

    #[inline]
    fn expect_store<T>(&self, pa: u64, f: impl FnOnce(&AtomicU64) -> T) -> T {
        if !pa.is_multiple_of(8) {
            bad_access(pa);
        }
        self.store(pa, f).unwrap_or_else(|| bad_access(pa))
    }

    /// A copy of all RAM; from now on the dirty bits say which pages differ from it (at most
    /// those), so that [`SimMemory::restore`] copies back only those. Taking a snapshot makes
    /// earlier ones restore in full (slower, still exact).
    #[must_use]
    pub fn snapshot(&self) -> MemSnapshot {
        let id = self.ram.last.fetch_add(1, Ordering::Relaxed) + 1;
        self.ram.current.store(id, Ordering::Relaxed);
        let regions = self
            .ram
            .regions
            .iter()
            .map(|r| {
                for d in &r.dirty {
                    d.store(0, Ordering::Relaxed);
                }
                let words = r.words.iter().map(|w| w.load(Ordering::Relaxed)).collect();
                (r.base, words)
            })
            .collect();
        MemSnapshot { regions, id }
    }

    /// Puts RAM back to `s`, and returns the number of pages copied: those written since the
    /// snapshot or the last restore (every page if `s` is not the latest snapshot). Each page
    /// copied gets a new version. Not to be called while something else accesses the memory.
    ///
    /// # Panics
    /// If `s` is a snapshot of another memory (other regions).
    pub fn restore(&self, s: &MemSnapshot) -> u64 {
        let layout = |r: &Region| (r.base, r.words.len());
        assert!(
            self.ram
                .regions
                .iter()
                .map(layout)
                .eq(s.regions.iter().map(|(b, w)| (*b, w.len()))),
            "memory snapshot of another memory"
        );
        let all = self.ram.current.load(Ordering::Relaxed) != s.id;
        let mut copied = 0;
        for (r, (_, saved)) in self.ram.regions.iter().zip(&s.regions) {
            for (i, d) in r.dirty.iter().enumerate() {
                let mut bits = if all {
                    u64::MAX
                } else {
                    d.swap(0, Ordering::Relaxed)
                };
                while bits != 0 {
                    let page = i * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let words = page * PAGE_WORDS..(page + 1) * PAGE_WORDS;
                    let (Some(now), Some(then)) = (r.words.get(words.clone()), saved.get(words))
                    else {
                        continue;
                    };
                    for (w, &v) in now.iter().zip(then) {
                        w.store(v, Ordering::Relaxed);
                    }
                    r.versions[page].fetch_add(1, Ordering::Release);
                    copied += 1;
                }
                if all {
                    d.store(0, Ordering::Relaxed);
                }
            }
        }
        if all {
            // The dirty bits are relative to `s` from now on.
            self.ram.current.store(s.id, Ordering::Relaxed);
        }
        copied
    }

    /// Pages written since the last snapshot or restore.
    #[must_use]
    pub fn dirty_pages(&self) -> u64 {
        self.ram
            .regions
            .iter()
            .flat_map(|r| r.dirty.iter())
            .map(|d| u64::from(d.load(Ordering::Relaxed).count_ones()))
            .sum()
    }
}

/// A hypervisor access the simulated machine does not have.
#[cold]
#[inline(never)]
fn bad_access(pa: u64) -> ! {
    assert!(
        pa.is_multiple_of(8),
        "misaligned physical access at {pa:#x}"
    );
    panic!("hypervisor touched non-RAM physical address {pa:#x}")
}

impl PhysMem for SimMemory {
    fn read_u64(&self, pa: u64) -> u64 {
        self.expect(pa).load(Ordering::Relaxed)
    }

    fn write_u64(&self, pa: u64, val: u64) {
        self.expect_store(pa, |w| w.store(val, Ordering::Relaxed));
    }

    fn zero(&self, pa: u64, len: u64) {
        for off in (0..len).step_by(8) {
            self.expect_store(pa + off, |w| w.store(0, Ordering::Relaxed));
        }
    }
}
