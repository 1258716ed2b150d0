//! Simulated physical memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pkvm_hyp::platform::PhysMem;

/// One RAM region backed by host memory.
#[derive(Debug)]
struct Region {
    base: u64,
    words: Box<[AtomicU64]>,
}

/// Physical memory of the simulated machine: RAM regions, everything else is MMIO (reads as 0,
/// writes ignored when the host does them; a hypervisor access outside RAM is a bug and panics).
///
/// Several handles may refer to the same RAM ([`SimMemory::handle`]): the MMU model keeps one
/// to walk tables from its walk caches, as the hardware's table walker reads memory.
#[derive(Debug)]
pub struct SimMemory {
    regions: Arc<[Region]>,
}

impl SimMemory {
    /// RAM regions as `(base, size)`, page aligned.
    #[must_use]
    pub fn new(regions: &[(u64, u64)]) -> Self {
        let regions = regions
            .iter()
            .map(|&(base, size)| Region {
                base,
                words: (0..size / 8).map(|_| AtomicU64::new(0)).collect(),
            })
            .collect();
        SimMemory { regions }
    }

    /// Another handle to the same RAM (not a copy).
    #[must_use]
    pub fn handle(&self) -> SimMemory {
        SimMemory {
            regions: Arc::clone(&self.regions),
        }
    }

    fn word(&self, pa: u64) -> Option<&AtomicU64> {
        self.regions.iter().find_map(|r| {
            let off = pa.checked_sub(r.base)?;
            r.words.get(usize::try_from(off / 8).ok()?)
        })
    }

    /// Whether `pa` is backed by RAM.
    #[must_use]
    pub fn is_ram(&self, pa: u64) -> bool {
        self.word(pa).is_some()
    }

    /// Reads a word if `pa` is RAM.
    #[must_use]
    pub fn try_read(&self, pa: u64) -> Option<u64> {
        self.word(pa & !7).map(|w| w.load(Ordering::Relaxed))
    }

    /// Writes a word if `pa` is RAM; returns whether it was.
    pub fn try_write(&self, pa: u64, val: u64) -> bool {
        self.word(pa & !7)
            .map(|w| w.store(val, Ordering::Relaxed))
            .is_some()
    }

    /// Stores `val` at `pa` (RAM, 8-byte aligned) and returns the value it replaced, in one
    /// atomic step: what the platform reports to the protocol monitor.
    ///
    /// # Panics
    /// As [`PhysMem::write_u64`].
    pub fn swap(&self, pa: u64, val: u64) -> u64 {
        self.expect(pa).swap(val, Ordering::Relaxed)
    }

    fn expect(&self, pa: u64) -> &AtomicU64 {
        assert!(
            pa.is_multiple_of(8),
            "misaligned physical access at {pa:#x}"
        );
        self.word(pa)
            .unwrap_or_else(|| panic!("hypervisor touched non-RAM physical address {pa:#x}"))
    }
}

impl PhysMem for SimMemory {
    fn read_u64(&self, pa: u64) -> u64 {
        self.expect(pa).load(Ordering::Relaxed)
    }

    fn write_u64(&self, pa: u64, val: u64) {
        self.expect(pa).store(val, Ordering::Relaxed);
    }

    fn zero(&self, pa: u64, len: u64) {
        for off in (0..len).step_by(8) {
            self.expect(pa + off).store(0, Ordering::Relaxed);
        }
    }
}
