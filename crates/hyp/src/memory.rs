//! The physical memory map EL2 works from: the host's memory regions, sorted, stored inline.
//!
//! "Is this memory?" is decided from the **address** and this map, never from page-table
//! contents. The lookups are on the hypercall fast path: they are a binary search
//! over at most [`MAX_MEM_REGIONS`] inline entries, with no allocation and no panics.

use pkvm_abi::{Error, PAGE_SIZE};

/// Most regions a [`MemoryMap`] holds (upstream's `HYP_MEMBLOCK_REGIONS`).
pub const MAX_MEM_REGIONS: usize = 128;

/// One region of RAM: `[base, base + size)`, both page aligned, `size > 0` once validated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MemRegion {
    /// First byte of the region.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

impl MemRegion {
    /// A region `[base, base + size)` (not validated; [`MemoryMap::new`] validates).
    #[must_use]
    pub const fn new(base: u64, size: u64) -> Self {
        Self { base, size }
    }

    /// One past the last byte. Inside a [`MemoryMap`] this never overflows; on an unvalidated
    /// region it saturates at `u64::MAX`.
    #[must_use]
    pub const fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }

    /// Whether `addr` lies in `[base, end)`.
    #[must_use]
    pub const fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.size
    }

    /// First page frame number of the region.
    #[must_use]
    pub const fn base_pfn(&self) -> u64 {
        self.base / PAGE_SIZE
    }

    /// Number of pages in the region.
    #[must_use]
    pub const fn nr_pages(&self) -> u64 {
        self.size / PAGE_SIZE
    }
}

/// The hole around an address that is not memory: `[start, end)`.
///
/// `start` is the end of the region below the address, or `0` when there is none; `end` is the
/// base of the region above it, or `u64::MAX` when there is none (the end of the address space:
/// the last byte, `u64::MAX` itself, is treated as belonging to the gap even though `end` is
/// exclusive). With an empty map the gap is `[0, u64::MAX)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Gap {
    /// First byte of the hole.
    pub start: u64,
    /// One past the last byte of the hole (`u64::MAX` for "to the end of the address space").
    pub end: u64,
}

impl Gap {
    /// Whether `addr` lies in the hole (`u64::MAX` counts as inside a hole ending at `u64::MAX`).
    #[must_use]
    pub const fn contains(&self, addr: u64) -> bool {
        addr >= self.start && (addr < self.end || (self.end == u64::MAX && addr == u64::MAX))
    }
}

/// A sorted, non-overlapping list of up to [`MAX_MEM_REGIONS`] memory regions, stored inline.
///
/// Adjacent regions (one ending where the next starts) are kept as two regions: a range is
/// "memory" only if it lies inside **one** region, as upstream's `range_is_memory`.
#[derive(Clone)]
pub struct MemoryMap {
    regions: [MemRegion; MAX_MEM_REGIONS],
    nr: usize,
}

impl core::fmt::Debug for MemoryMap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.regions()).finish()
    }
}

impl Default for MemoryMap {
    fn default() -> Self {
        Self::empty()
    }
}

impl MemoryMap {
    /// A map with no memory at all.
    #[must_use]
    pub const fn empty() -> Self {
        Self {
            regions: [MemRegion::new(0, 0); MAX_MEM_REGIONS],
            nr: 0,
        }
    }

    /// Builds a map from regions in any order: sorts them by base and validates them.
    ///
    /// # Errors
    /// - [`Error::TooBig`] if there are more than [`MAX_MEM_REGIONS`] regions;
    /// - [`Error::Inval`] if a region is empty, not page aligned (base or size), or two regions
    ///   overlap;
    /// - [`Error::Range`] if `base + size` overflows `u64`.
    pub fn new(regions: &[MemRegion]) -> Result<Self, Error> {
        if regions.len() > MAX_MEM_REGIONS {
            return Err(Error::TooBig);
        }
        let mut map = Self::empty();
        for (slot, r) in map.regions.iter_mut().zip(regions) {
            if r.size == 0 || !r.base.is_multiple_of(PAGE_SIZE) || !r.size.is_multiple_of(PAGE_SIZE)
            {
                return Err(Error::Inval);
            }
            if r.base.checked_add(r.size).is_none() {
                return Err(Error::Range);
            }
            *slot = *r;
        }
        map.nr = regions.len();
        let sorted = &mut map.regions[..map.nr];
        sorted.sort_unstable_by_key(|r| r.base);
        if sorted.windows(2).any(|w| w[0].end() > w[1].base) {
            return Err(Error::Inval);
        }
        Ok(map)
    }

    /// The regions, sorted by base.
    #[must_use]
    pub fn regions(&self) -> &[MemRegion] {
        // `nr <= MAX_MEM_REGIONS` always holds; `get` keeps this panic-free regardless.
        self.regions.get(..self.nr).unwrap_or(&[])
    }

    /// Number of regions.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.nr
    }

    /// Whether the map holds no memory.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.nr == 0
    }

    /// Total number of pages of memory.
    #[must_use]
    pub fn total_pages(&self) -> u64 {
        self.regions().iter().map(MemRegion::nr_pages).sum()
    }

    /// Index of the last region whose base is `<= addr`, if any.
    #[inline]
    fn index_below(&self, addr: u64) -> Option<usize> {
        let regions = self.regions();
        regions.partition_point(|r| r.base <= addr).checked_sub(1)
    }

    /// The region containing `addr`, or the gap around it.
    ///
    /// # Errors
    /// `Err(gap)` when `addr` is not memory; see [`Gap`] for the exact bounds.
    #[inline]
    pub fn find_region(&self, addr: u64) -> Result<MemRegion, Gap> {
        let regions = self.regions();
        let above = regions.partition_point(|r| r.base <= addr);
        let below = above.checked_sub(1).and_then(|i| regions.get(i));
        if let Some(r) = below
            && r.contains(addr)
        {
            return Ok(*r);
        }
        Err(Gap {
            start: below.map_or(0, MemRegion::end),
            end: regions.get(above).map_or(u64::MAX, |r| r.base),
        })
    }

    /// Whether `addr` is memory.
    #[inline]
    #[must_use]
    pub fn is_memory(&self, addr: u64) -> bool {
        self.index_below(addr)
            .and_then(|i| self.regions().get(i))
            .is_some_and(|r| r.contains(addr))
    }

    /// Whether the whole of `[start, end)` lies inside **one** memory region.
    ///
    /// False when the range is empty (`start >= end`).
    #[inline]
    #[must_use]
    pub fn range_is_memory(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return false;
        }
        self.index_below(start)
            .and_then(|i| self.regions().get(i))
            .is_some_and(|r| r.contains(start) && end <= r.end())
    }

    /// Whether the pages `[pfn, pfn + nr_pages)` lie inside one memory region.
    ///
    /// False when `nr_pages == 0` or when the byte range overflows `u64`.
    #[inline]
    #[must_use]
    pub fn pfn_range_is_memory(&self, pfn: u64, nr_pages: u64) -> bool {
        match pfn_range_to_bytes(pfn, nr_pages) {
            Some((start, end)) => self.range_is_memory(start, end),
            None => false,
        }
    }
}

/// `[pfn, pfn + nr_pages)` as a byte range `[start, end)`, or `None` on overflow.
#[inline]
#[must_use]
pub const fn pfn_range_to_bytes(pfn: u64, nr_pages: u64) -> Option<(u64, u64)> {
    let Some(end_pfn) = pfn.checked_add(nr_pages) else {
        return None;
    };
    let Some(start) = pfn.checked_mul(PAGE_SIZE) else {
        return None;
    };
    let Some(end) = end_pfn.checked_mul(PAGE_SIZE) else {
        return None;
    };
    Some((start, end))
}
