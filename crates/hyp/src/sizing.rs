//! How many pages EL2 must reserve for its metadata and page tables.
//!
//! Pure functions of the [`MemoryMap`]. All page-table counts are for the 4 KiB granule, a
//! 48-bit input address space and 4 levels (L0..L3), mapping at **page granularity** (the worst
//! case: no blocks):
//!
//! - the L0 root is one page;
//! - an L1 table covers 512 GiB (2^39), an L2 table 1 GiB (2^30), an L3 table 2 MiB (2^21).
//!
//! A range needs, at each of L1..L3, one table per window of that table's span that it touches.
//! For a known placement (the host stage-2 is an identity map, IPA == PA) that count is exact:
//! `((end - 1) >> shift) - (start >> shift) + 1` ([`tables_for_range`]). For an unknown placement
//! (the hyp stage-1 maps memory at an offset chosen at boot) the worst case over all
//! page-aligned placements of `n` pages is `ceil((n - 1) / W) + 1` windows of `W` pages
//! ([`tables_for_size`]).

use pkvm_abi::{Error, PAGE_SHIFT, PAGE_SIZE};

use crate::memory::MemoryMap;
use crate::vmemmap::VmemmapLayout;

/// 1 GiB.
pub const SZ_1G: u64 = 1 << 30;
/// MMIO the host stage-2 pool is sized for (upstream: 1 GiB at page granularity).
pub const HOST_S2_MMIO_BYTES: u64 = SZ_1G;
/// Private hyp VA range the hyp stage-1 pool is sized for (upstream: 1 GiB).
pub const HYP_PRIVATE_BYTES: u64 = SZ_1G;

/// Address shift of the span of one table at L1, L2 and L3.
const TABLE_SPAN_SHIFTS: [u32; 3] = [39, 30, 21];

/// Pages of vmemmap backing (entry chunks + directory) for `map`; see [`VmemmapLayout`].
///
/// # Errors
/// As [`VmemmapLayout::for_map`].
pub fn vmemmap_pages(map: &MemoryMap) -> Result<u64, Error> {
    VmemmapLayout::for_map(map).map(|l| l.pages())
}

/// Exact number of L1..L3 tables (root excluded) needed to map `[start, start + size)` at page
/// granularity. 0 for an empty range; the end saturates at `u64::MAX`.
#[must_use]
pub const fn tables_for_range(start: u64, size: u64) -> u64 {
    if size == 0 {
        return 0;
    }
    let last = start.saturating_add(size - 1);
    let mut total = 0;
    let mut i = 0;
    while i < TABLE_SPAN_SHIFTS.len() {
        let s = TABLE_SPAN_SHIFTS[i];
        total += (last >> s) - (start >> s) + 1;
        i += 1;
    }
    total
}

/// Worst-case number of L1..L3 tables (root excluded) needed to map `size` bytes (rounded up to
/// pages) at any page-aligned placement: per level `ceil((n - 1) / W) + 1` for `n` pages and
/// `W` pages per table span.
#[must_use]
pub const fn tables_for_size(size: u64) -> u64 {
    let n = size.div_ceil(PAGE_SIZE);
    if n == 0 {
        return 0;
    }
    let mut total = 0;
    let mut i = 0;
    while i < TABLE_SPAN_SHIFTS.len() {
        let w = 1u64 << (TABLE_SPAN_SHIFTS[i] - PAGE_SHIFT);
        total += (n - 1).div_ceil(w) + 1;
        i += 1;
    }
    total
}

/// Exact number of L1..L3 tables needed to identity-map every region of `map` at page
/// granularity, counting a table shared by neighbouring regions once.
#[must_use]
pub fn tables_for_map(map: &MemoryMap) -> u64 {
    let mut total = 0;
    for s in TABLE_SPAN_SHIFTS {
        let mut next: Option<u64> = None;
        for r in map.regions() {
            let hi = (r.end() - 1) >> s;
            let lo = match next {
                Some(n) => (r.base >> s).max(n),
                None => r.base >> s,
            };
            if hi >= lo {
                total += hi - lo + 1;
                next = Some(hi + 1);
            }
        }
    }
    total
}

/// Pages of host stage-2 page tables: the root, plus every memory region identity-mapped at
/// page granularity ([`tables_for_map`], exact), plus [`HOST_S2_MMIO_BYTES`] of MMIO at any
/// placement ([`tables_for_size`]).
///
/// For 1 GiB at `0x4000_0000`: 1 + (1 + 1 + 512) + (2 + 2 + 513) = 1032.
#[must_use]
pub fn host_s2_pgtable_pages(map: &MemoryMap) -> u64 {
    1 + tables_for_map(map) + tables_for_size(HOST_S2_MMIO_BYTES)
}

/// Pages of hyp stage-1 page tables: the root, plus each memory region mapped at page
/// granularity at an unknown offset ([`tables_for_size`] per region), plus a private range of
/// `private_bytes` (vectors, stacks, vmemmap, fixmap; upstream reserves [`HYP_PRIVATE_BYTES`]).
///
/// For 1 GiB of memory and 1 GiB private: 1 + 517 + 517 = 1035.
#[must_use]
pub fn hyp_s1_pgtable_pages(map: &MemoryMap, private_bytes: u64) -> u64 {
    let memory: u64 = map.regions().iter().map(|r| tables_for_size(r.size)).sum();
    1 + memory + tables_for_size(private_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemRegion;

    fn map(regions: &[(u64, u64)]) -> MemoryMap {
        let r: [MemRegion; 4] = core::array::from_fn(|i| {
            regions
                .get(i)
                .map_or(MemRegion::new(0, 0), |&(b, s)| MemRegion::new(b, s))
        });
        MemoryMap::new(&r[..regions.len()]).unwrap()
    }

    const GIB_1: u64 = 0x4000_0000;

    #[test]
    fn one_gib_at_1g() {
        let m = map(&[(GIB_1, SZ_1G)]);
        // L1: 1 (window 0 of 512 GiB), L2: 1 (window 1), L3: 1 GiB / 2 MiB = 512.
        assert_eq!(tables_for_range(GIB_1, SZ_1G), 514);
        assert_eq!(tables_for_map(&m), 514);
        // Any placement of 262144 pages: L1 ceil(262143/2^27)+1 = 2, L2 ceil(262143/2^18)+1 = 2,
        // L3 ceil(262143/512)+1 = 513.
        assert_eq!(tables_for_size(SZ_1G), 517);
        assert_eq!(host_s2_pgtable_pages(&m), 1 + 514 + 517);
        assert_eq!(hyp_s1_pgtable_pages(&m, HYP_PRIVATE_BYTES), 1 + 517 + 517);
        // vmemmap: 512 chunks (one per 2 MiB), directory 512 slots * 4 B = 1 page.
        assert_eq!(vmemmap_pages(&m), Ok(513));
    }

    #[test]
    fn four_gib_at_1g() {
        let m = map(&[(GIB_1, 4 * SZ_1G)]);
        // [1 GiB, 5 GiB): L1 1, L2 windows 1..=4 = 4, L3 2048.
        assert_eq!(tables_for_map(&m), 1 + 4 + 2048);
        assert_eq!(host_s2_pgtable_pages(&m), 1 + 2053 + 517);
        // 2^20 pages anywhere: L1 2, L2 ceil((2^20-1)/2^18)+1 = 5, L3 ceil((2^20-1)/512)+1 = 2049.
        assert_eq!(tables_for_size(4 * SZ_1G), 2 + 5 + 2049);
        assert_eq!(hyp_s1_pgtable_pages(&m, HYP_PRIVATE_BYTES), 1 + 2056 + 517);
        // 2048 chunks, directory 2048 slots * 4 B = 2 pages.
        assert_eq!(vmemmap_pages(&m), Ok(2050));
    }

    #[test]
    fn shared_tables_counted_once() {
        // Two 1 MiB regions in the same 2 MiB window: one L3, one L2, one L1 table.
        let m = map(&[(GIB_1, 0x10_0000), (GIB_1 + 0x10_0000, 0x10_0000)]);
        assert_eq!(tables_for_map(&m), 3);
        // A region straddling a 2 MiB boundary needs two L3 tables.
        assert_eq!(tables_for_range(GIB_1 + 0x1F_F000, 0x2000), 1 + 1 + 2);
    }

    #[test]
    fn worst_case_bounds_every_placement() {
        for pages in [
            1u64, 2, 511, 512, 513, 1024, 1025, 262_143, 262_144, 262_145,
        ] {
            let size = pages * PAGE_SIZE;
            let worst = tables_for_size(size);
            // Brute force over start offsets within one 1 GiB period (covers L2/L3 phases).
            let mut max = 0;
            for off in (0..(1u64 << 18))
                .step_by(37)
                .chain([511, 512, (1 << 18) - 1])
            {
                max = max.max(tables_for_range(
                    (1 << 39) - (1 << 30) + off * PAGE_SIZE,
                    size,
                ));
            }
            assert!(max <= worst, "{pages} pages: {max} > {worst}");
        }
        assert_eq!(tables_for_size(0), 0);
        assert_eq!(tables_for_size(1), 3);
        assert_eq!(tables_for_range(0, 0), 0);
    }
}
