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

/// Where EL2's memory goes at boot (see [`plan_carveout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CarveoutPlan {
    /// The vmemmap's layout.
    pub layout: VmemmapLayout,
    /// The whole carve-out `[start, end)`: the vmemmap, then EL2's pool, then the host
    /// stage-2 pool (the pools end where the next begins; any slack from the 2 MiB alignment
    /// is at the end).
    pub carveout: (u64, u64),
    /// The vmemmap (directory, then entry chunks).
    pub vmemmap: (u64, u64),
    /// EL2's page pool (its stage-1 tables, guest structures).
    pub hyp_pool: (u64, u64),
    /// The host stage-2 table pool.
    pub host_pool: (u64, u64),
    /// Where the host's copy of the device tree goes: the `dtb_slot` bytes below the
    /// carve-out.
    pub dtb: u64,
}

/// Why the carve-out cannot be placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// The memory map is too large for the vmemmap ([`VmemmapLayout::for_map`]).
    MapTooLarge,
    /// No RAM region holds the host's load address.
    NoRamAtHost,
    /// The carve-out and the device-tree slot do not fit between the host image (plus 2 MiB)
    /// and the top of its RAM region, or would overlap a range that must stay (the boot
    /// device tree, an initrd); `bytes` is the carve-out's size.
    NoRoom {
        /// Size of the carve-out in bytes.
        bytes: u64,
    },
}

const SZ_2M: u64 = 2 << 20;

/// Plans EL2's memory: the carve-out holds the vmemmap, EL2's page pool
/// ([`hyp_s1_pgtable_pages`] + `hyp_extra_pages`) and the host stage-2 table pool
/// ([`host_s2_pgtable_pages`]), and is taken from the top of the RAM region that holds the
/// host image `[host.0, host.1)`, its start 2 MiB aligned; the `dtb_slot` bytes below it take
/// the host's copy of the device tree. At least 2 MiB must stay free above the host image, and
/// `[dtb, carve-out end)` must not overlap any of `keep` (what the firmware left in RAM).
///
/// # Errors
/// [`PlanError`] when it does not fit; nothing is placed then.
pub fn plan_carveout(
    map: &MemoryMap,
    host: (u64, u64),
    dtb_slot: u64,
    hyp_extra_pages: u64,
    keep: &[(u64, u64)],
) -> Result<CarveoutPlan, PlanError> {
    let layout = VmemmapLayout::for_map(map).map_err(|_| PlanError::MapTooLarge)?;
    let vm_pages = layout.pages();
    let hyp_pages = hyp_s1_pgtable_pages(map, HYP_PRIVATE_BYTES) + hyp_extra_pages;
    let host_pages = host_s2_pgtable_pages(map);
    let bytes = (vm_pages + hyp_pages + host_pages) * PAGE_SIZE;
    let region = map
        .regions()
        .iter()
        .find(|r| r.contains(host.0))
        .ok_or(PlanError::NoRamAtHost)?;
    let top = region.end();
    let no_room = PlanError::NoRoom { bytes };
    let start = top.checked_sub(bytes).ok_or(no_room)? & !(SZ_2M - 1);
    let dtb = start.checked_sub(dtb_slot).ok_or(no_room)?;
    let overlaps = keep.iter().any(|&(s, e)| s < top && dtb < e);
    if dtb < host.1.saturating_add(SZ_2M) || overlaps {
        return Err(no_room);
    }
    let vm_end = start + vm_pages * PAGE_SIZE;
    let hyp_end = vm_end + hyp_pages * PAGE_SIZE;
    Ok(CarveoutPlan {
        layout,
        carveout: (start, top),
        vmemmap: (start, vm_end),
        hyp_pool: (vm_end, hyp_end),
        host_pool: (hyp_end, hyp_end + host_pages * PAGE_SIZE),
        dtb,
    })
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
        // Two regions in different 1 GiB windows share only the L1 table: 1 + 2 + 2.
        let m = map(&[(GIB_1, 0x20_0000), (4 * GIB_1, 0x20_0000)]);
        assert_eq!(tables_for_map(&m), 5);
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

    #[test]
    fn carveout_at_the_top_of_the_host_region() {
        let m = map(&[(GIB_1, SZ_1G)]);
        let host = (GIB_1 + 0x20_0000, GIB_1 + 0x30_0000);
        let p = plan_carveout(&m, host, 2 << 20, 256, &[]).unwrap();
        assert_eq!(p.carveout.1, GIB_1 + SZ_1G);
        assert_eq!(p.carveout.0 % (2 << 20), 0);
        assert_eq!(p.dtb, p.carveout.0 - (2 << 20));
        // Back to back, in order, all inside the carve-out.
        assert_eq!(p.vmemmap.0, p.carveout.0);
        assert_eq!(p.vmemmap.1, p.hyp_pool.0);
        assert_eq!(p.hyp_pool.1, p.host_pool.0);
        assert!(p.host_pool.1 <= p.carveout.1);
        assert_eq!((p.vmemmap.1 - p.vmemmap.0) / PAGE_SIZE, p.layout.pages());
        assert_eq!(
            (p.hyp_pool.1 - p.hyp_pool.0) / PAGE_SIZE,
            hyp_s1_pgtable_pages(&m, HYP_PRIVATE_BYTES) + 256
        );
        assert_eq!(
            (p.host_pool.1 - p.host_pool.0) / PAGE_SIZE,
            host_s2_pgtable_pages(&m)
        );
        // 1 GiB of RAM: 12 MiB, as the boot log says.
        assert_eq!(p.carveout.1 - p.carveout.0, 12 << 20);
    }

    #[test]
    fn carveout_refusals() {
        let m = map(&[(GIB_1, SZ_1G), (4 * SZ_1G, SZ_1G)]);
        let host = (GIB_1 + 0x20_0000, GIB_1 + 0x30_0000);
        // The host image is not in RAM.
        assert_eq!(
            plan_carveout(&m, (0x1000, 0x2000), 2 << 20, 0, &[]),
            Err(PlanError::NoRamAtHost)
        );
        // The host image reaches too close to the top.
        let big = (GIB_1 + 0x20_0000, GIB_1 + SZ_1G - (15 << 20));
        assert!(matches!(
            plan_carveout(&m, big, 2 << 20, 0, &[]),
            Err(PlanError::NoRoom { .. })
        ));
        // A range that must stay (the boot DTB) inside the slot or the carve-out.
        let ok = plan_carveout(&m, host, 2 << 20, 0, &[]).unwrap();
        for keep in [(ok.dtb, ok.dtb + 8), (ok.carveout.1 - 8, ok.carveout.1)] {
            assert!(matches!(
                plan_carveout(&m, host, 2 << 20, 0, &[keep]),
                Err(PlanError::NoRoom { .. })
            ));
        }
        // The host image may end 2 MiB below the DTB slot, not a page closer.
        let edge = (host.0, ok.dtb - (2 << 20));
        assert_eq!(
            plan_carveout(&m, edge, 2 << 20, 0, &[]).unwrap().dtb,
            ok.dtb
        );
        assert!(matches!(
            plan_carveout(&m, (host.0, edge.1 + PAGE_SIZE), 2 << 20, 0, &[]),
            Err(PlanError::NoRoom { .. })
        ));
        // Just outside is fine.
        let outside = [(ok.dtb - 8, ok.dtb), (ok.carveout.1, ok.carveout.1 + 8)];
        assert_eq!(plan_carveout(&m, host, 2 << 20, 0, &outside), Ok(ok));
        // A small region: the sizes underflow the region, no wrap-around.
        let tiny = map(&[(0x20_0000, 0x20_0000)]);
        assert!(matches!(
            plan_carveout(&tiny, (0x20_0000, 0x20_1000), 2 << 20, 0, &[]),
            Err(PlanError::NoRoom { .. })
        ));
    }
}
