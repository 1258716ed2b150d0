//! Pure address arithmetic of the host, unit-tested on the development machine: byte ranges to
//! page ranges (for `share_hyp(obj)`), sets of disjoint physical ranges (RAM minus what is
//! reserved), and the page allocator the scenarios take test pages from.

use pkvm_abi::{PAGE_SHIFT, PAGE_SIZE};

/// A half-open physical range `[start, end)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Range {
    /// `[start, end)`.
    pub const fn new(start: u64, end: u64) -> Self {
        Range { start, end }
    }

    /// `[start, start + size)`, saturating at the top of the address space.
    pub const fn sized(start: u64, size: u64) -> Self {
        Range {
            start,
            end: start.saturating_add(size),
        }
    }

    /// Size in bytes.
    pub const fn size(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the range is empty.
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// Whether `addr` is inside.
    pub const fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr < self.end
    }

    /// The smallest page-aligned range containing this one.
    pub const fn page_outer(&self) -> Range {
        Range {
            start: self.start & !(PAGE_SIZE - 1),
            end: match self.end.checked_next_multiple_of(PAGE_SIZE) {
                Some(e) => e,
                None => !(PAGE_SIZE - 1),
            },
        }
    }

    /// The largest page-aligned range inside this one (possibly empty).
    pub const fn page_inner(&self) -> Range {
        Range {
            start: match self.start.checked_next_multiple_of(PAGE_SIZE) {
                Some(s) => s,
                None => !(PAGE_SIZE - 1),
            },
            end: self.end & !(PAGE_SIZE - 1),
        }
    }
}

impl core::fmt::Display for Range {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.start, self.end)
    }
}

/// The pages `(pfn, nr_pages)` covering the bytes `[addr, addr + len)`: what `share_hyp(obj)`
/// sends for an object of `len` bytes at `addr` (VA == PA in the host). `None` for an empty
/// range or one that wraps around the address space.
pub const fn pfn_range(addr: u64, len: u64) -> Option<(u64, u64)> {
    if len == 0 {
        return None;
    }
    let Some(last) = addr.checked_add(len - 1) else {
        return None;
    };
    let first_pfn = addr >> PAGE_SHIFT;
    Some((first_pfn, (last >> PAGE_SHIFT) - first_pfn + 1))
}

/// Capacity of a [`RangeSet`].
pub const MAX_RANGES: usize = 32;

/// A [`RangeSet`] ran out of room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// Up to [`MAX_RANGES`] disjoint, non-adjacent, sorted non-empty ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeSet {
    r: [Range; MAX_RANGES],
    n: usize,
}

impl Default for RangeSet {
    fn default() -> Self {
        Self::new()
    }
}

impl RangeSet {
    /// The empty set.
    pub const fn new() -> Self {
        RangeSet {
            r: [Range::new(0, 0); MAX_RANGES],
            n: 0,
        }
    }

    /// The ranges, sorted.
    pub fn ranges(&self) -> &[Range] {
        &self.r[..self.n]
    }

    /// Total bytes.
    pub fn total(&self) -> u64 {
        self.ranges().iter().map(Range::size).sum()
    }

    /// Whether `addr` is in the set.
    pub fn contains(&self, addr: u64) -> bool {
        self.ranges().iter().any(|r| r.contains(addr))
    }

    /// Whether all of `range` is in the set (an empty range is).
    #[cfg(test)]
    pub fn covers(&self, range: Range) -> bool {
        range.is_empty()
            || self
                .ranges()
                .iter()
                .any(|r| r.start <= range.start && range.end <= r.end)
    }

    /// Adds `range` (merging with what it overlaps or touches).
    ///
    /// # Errors
    /// [`Full`] if the set would need more than [`MAX_RANGES`] ranges; it is then unchanged.
    pub fn add(&mut self, range: Range) -> Result<(), Full> {
        if range.is_empty() {
            return Ok(());
        }
        let mut merged = range;
        let mut out = [Range::new(0, 0); MAX_RANGES];
        let mut n = 0;
        let mut placed = false;
        for &r in self.ranges() {
            if r.end < merged.start {
                out[n] = r;
                n += 1;
            } else if merged.end < r.start {
                if !placed {
                    if n == MAX_RANGES {
                        return Err(Full);
                    }
                    out[n] = merged;
                    n += 1;
                    placed = true;
                }
                if n == MAX_RANGES {
                    return Err(Full);
                }
                out[n] = r;
                n += 1;
            } else {
                merged = Range::new(merged.start.min(r.start), merged.end.max(r.end));
            }
        }
        if !placed {
            if n == MAX_RANGES {
                return Err(Full);
            }
            out[n] = merged;
            n += 1;
        }
        self.r = out;
        self.n = n;
        Ok(())
    }

    /// Removes `range` from the set.
    ///
    /// # Errors
    /// [`Full`] if splitting a range would need more than [`MAX_RANGES`]; it is then unchanged.
    pub fn remove(&mut self, range: Range) -> Result<(), Full> {
        if range.is_empty() {
            return Ok(());
        }
        let mut out = [Range::new(0, 0); MAX_RANGES];
        let mut n = 0;
        for &r in self.ranges() {
            for piece in [
                Range::new(r.start, r.end.min(range.start)),
                Range::new(r.start.max(range.end), r.end),
            ] {
                if piece.is_empty() {
                    continue;
                }
                if n == MAX_RANGES {
                    return Err(Full);
                }
                out[n] = piece;
                n += 1;
            }
        }
        self.r = out;
        self.n = n;
        Ok(())
    }
}

/// Free RAM: the page-aligned insides of `ram` minus (the page-aligned outsides of) every range
/// in `used`.
///
/// # Errors
/// [`Full`] if the result does not fit in a [`RangeSet`].
pub fn free_ram(ram: &[Range], used: &[Range]) -> Result<RangeSet, Full> {
    let mut set = RangeSet::new();
    for r in ram {
        set.add(r.page_inner())?;
    }
    for u in used {
        set.remove(u.page_outer())?;
    }
    Ok(set)
}

/// A page allocator that never frees: hands out page runs from a set of free ranges, lowest
/// address first. The host takes its test pages from it; memory it has not handed out is never
/// touched by the host, so an aligned block it hands out has never been accessed.
#[derive(Clone, Copy, Debug)]
pub struct PageAlloc {
    free: RangeSet,
}

impl PageAlloc {
    /// An allocator over `free` (page-aligned ranges).
    pub const fn new(free: RangeSet) -> Self {
        PageAlloc { free }
    }

    /// What is still free.
    pub fn free(&self) -> &RangeSet {
        &self.free
    }

    /// `nr` contiguous pages whose first address is a multiple of `align` (a power of two,
    /// at least a page): the physical address of the first.
    pub fn alloc(&mut self, nr: u64, align: u64) -> Option<u64> {
        let align = align.max(PAGE_SIZE);
        if nr == 0 || !align.is_power_of_two() {
            return None;
        }
        let size = nr.checked_mul(PAGE_SIZE)?;
        let at = self.free.ranges().iter().find_map(|r| {
            let start = r.start.checked_next_multiple_of(align)?;
            let end = start.checked_add(size)?;
            (end <= r.end).then_some(start)
        })?;
        self.free.remove(Range::sized(at, size)).ok()?;
        Some(at)
    }

    /// One page.
    pub fn page(&mut self) -> Option<u64> {
        self.alloc(1, PAGE_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pfn_ranges() {
        assert_eq!(pfn_range(0x1000, 8), Some((1, 1)));
        assert_eq!(pfn_range(0x1ff8, 8), Some((1, 1)));
        assert_eq!(pfn_range(0x1ffc, 8), Some((1, 2)));
        assert_eq!(pfn_range(0x1000, 0x1000), Some((1, 1)));
        assert_eq!(pfn_range(0x1000, 0x1001), Some((1, 2)));
        assert_eq!(pfn_range(0x1800, 0x2000), Some((1, 3)));
        assert_eq!(pfn_range(0x1000, 0), None);
        assert_eq!(pfn_range(u64::MAX, 1), Some((u64::MAX >> 12, 1)));
        assert_eq!(pfn_range(u64::MAX, 2), None);
    }

    #[test]
    fn set_add_merges_and_sorts() {
        let mut s = RangeSet::new();
        s.add(Range::new(0x5000, 0x6000)).unwrap();
        s.add(Range::new(0x1000, 0x2000)).unwrap();
        s.add(Range::new(0x3000, 0x4000)).unwrap();
        assert_eq!(
            s.ranges(),
            [
                Range::new(0x1000, 0x2000),
                Range::new(0x3000, 0x4000),
                Range::new(0x5000, 0x6000)
            ]
        );
        s.add(Range::new(0x2000, 0x3000)).unwrap();
        assert_eq!(
            s.ranges(),
            [Range::new(0x1000, 0x4000), Range::new(0x5000, 0x6000)]
        );
        s.add(Range::new(0x800, 0x7000)).unwrap();
        assert_eq!(s.ranges(), [Range::new(0x800, 0x7000)]);
        assert!(s.covers(Range::new(0x800, 0x7000)));
        assert!(!s.covers(Range::new(0x700, 0x900)));
    }

    #[test]
    fn set_full_is_unchanged() {
        let mut s = RangeSet::new();
        for i in 0..MAX_RANGES as u64 {
            s.add(Range::sized(i * 0x2000, 0x1000)).unwrap();
        }
        let before = s;
        assert_eq!(
            s.add(Range::sized(MAX_RANGES as u64 * 0x2000, 0x10)),
            Err(Full)
        );
        assert_eq!(s, before);
        assert_eq!(s.remove(Range::new(0x100, 0x200)), Err(Full));
        assert_eq!(s, before);
        // Removing a whole range always fits.
        s.remove(Range::new(0, 0x1000)).unwrap();
        assert_eq!(s.ranges().len(), MAX_RANGES - 1);
    }

    #[test]
    fn free_ram_subtracts_reserved() {
        // QEMU virt with 1 GiB: EL2 image, host image, DTB copy, carve-out at the top.
        let ram = [Range::sized(0x4000_0000, 0x4000_0000)];
        let used = [
            Range::new(0x4000_0000, 0x4020_0000),
            Range::new(0x4020_0000, 0x4023_1234),
            Range::sized(0x7fe0_0010, 0x1_0000),
            Range::new(0x7ff0_0000, 0x8000_0000),
        ];
        let s = free_ram(&ram, &used).unwrap();
        assert_eq!(
            s.ranges(),
            [
                Range::new(0x4023_2000, 0x7fe0_0000),
                Range::new(0x7fe1_1000, 0x7ff0_0000)
            ]
        );
        assert!(!s.contains(0x4023_1fff));
        assert!(s.contains(0x4023_2000));
    }

    #[test]
    fn allocator_aligns_and_never_reuses() {
        let mut set = RangeSet::new();
        set.add(Range::new(0x4023_2000, 0x4080_0000)).unwrap();
        set.add(Range::new(0x4100_0000, 0x4140_0000)).unwrap();
        let mut a = PageAlloc::new(set);
        assert_eq!(a.page(), Some(0x4023_2000));
        assert_eq!(a.page(), Some(0x4023_3000));
        assert_eq!(a.alloc(512, 0x20_0000), Some(0x4040_0000));
        assert_eq!(a.alloc(512, 0x20_0000), Some(0x4060_0000));
        // The gap left below the aligned blocks is still used for small requests.
        assert_eq!(a.alloc(4, 0), Some(0x4023_4000));
        assert_eq!(a.alloc(512, 0x20_0000), Some(0x4100_0000));
        assert_eq!(a.alloc(512, 0x20_0000), Some(0x4120_0000));
        assert_eq!(a.alloc(512, 0x20_0000), None);
        assert_eq!(a.alloc(0, 0), None);
        assert_eq!(a.alloc(1, 0x3000), None);
        assert_eq!(a.free().total(), 0x4040_0000 - 0x4023_8000);
    }

    #[test]
    fn page_rounding() {
        let r = Range::new(0x1001, 0x2fff);
        assert_eq!(r.page_outer(), Range::new(0x1000, 0x3000));
        assert_eq!(r.page_inner(), Range::new(0x2000, 0x2000));
        assert!(r.page_inner().is_empty());
        assert_eq!(Range::new(0, u64::MAX).page_outer(), Range::new(0, !0xfff));
    }
}
