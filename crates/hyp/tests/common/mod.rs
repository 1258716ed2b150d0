//! Test support: simulated RAM, map/vmemmap builders and a buddy-pool invariant checker.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use pkvm_abi::PAGE_SIZE;
use pkvm_hyp::memory::{MemRegion, MemoryMap};
use pkvm_hyp::page_alloc::{HypPool, NIL, NODE_NEXT, NODE_PREV};
use pkvm_hyp::platform::PhysMem;
use pkvm_hyp::vmemmap::{HypPage, NO_ORDER, Vmemmap, VmemmapLayout};

pub const WORDS_PER_PAGE: usize = (PAGE_SIZE / 8) as usize;

/// Simulated RAM over `[base, base + len)`; out-of-range or misaligned accesses panic (that is a
/// bug in the code under test).
pub struct SimRam {
    base: u64,
    words: Vec<AtomicU64>,
}

impl SimRam {
    pub fn new(base: u64, len: u64) -> Self {
        assert_eq!(base % PAGE_SIZE, 0);
        Self {
            base,
            words: (0..len / 8).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn idx(&self, pa: u64) -> usize {
        assert_eq!(pa % 8, 0, "misaligned access at {pa:#x}");
        let off = pa
            .checked_sub(self.base)
            .unwrap_or_else(|| panic!("access below RAM at {pa:#x}"));
        let i = usize::try_from(off / 8).unwrap();
        assert!(i < self.words.len(), "access beyond RAM at {pa:#x}");
        i
    }

    /// Fills the page at `pa` with a recognisable non-zero pattern.
    pub fn scribble_page(&self, pa: u64) {
        for w in 0..PAGE_SIZE / 8 {
            self.write_u64(pa + w * 8, 0xDEAD_0000_0000_0000 | pa | w);
        }
    }

    /// Writes non-zero values at a few fixed word positions of the page at `pa` (and at the
    /// positions [`Self::page_spot_zero`] checks).
    pub fn scribble_spots(&self, pa: u64) {
        for w in SPOTS {
            self.write_u64(pa + w * 8, 0xBAD0_0000_0000_0000 | pa | w);
        }
    }

    /// Whether the spot-checked words of the page at `pa` (skipping the first `skip` words) are
    /// zero.
    pub fn page_spot_zero(&self, pa: u64, skip: u64) -> bool {
        SPOTS
            .iter()
            .filter(|&&w| w >= skip)
            .all(|&w| self.read_u64(pa + w * 8) == 0)
    }

    /// Whether every word of `[pa, pa + len)` from byte `skip` on is zero.
    pub fn range_zero(&self, pa: u64, len: u64, skip: u64) -> bool {
        if len <= skip {
            return true;
        }
        let first = self.idx(pa + skip);
        let last = self.idx(pa + len - 8);
        self.words[first..=last]
            .iter()
            .all(|w| w.load(Relaxed) == 0)
    }
}

const SPOTS: [u64; 6] = [0, 1, 2, 3, 257, 511];

impl PhysMem for SimRam {
    fn read_u64(&self, pa: u64) -> u64 {
        self.words[self.idx(pa)].load(Relaxed)
    }
    fn write_u64(&self, pa: u64, val: u64) {
        self.words[self.idx(pa)].store(val, Relaxed);
    }
    fn zero(&self, pa: u64, len: u64) {
        assert_eq!(len % 8, 0);
        if len == 0 {
            return;
        }
        let first = self.idx(pa);
        let last = self.idx(pa + len - 8);
        for w in &self.words[first..=last] {
            w.store(0, Relaxed);
        }
    }
}

pub fn map_of(regions: &[(u64, u64)]) -> MemoryMap {
    let r: Vec<MemRegion> = regions.iter().map(|&(b, s)| MemRegion::new(b, s)).collect();
    MemoryMap::new(&r).expect("valid map")
}

/// Backing storage for a vmemmap, sized from the map's layout.
pub struct VmemmapStore {
    pub layout: VmemmapLayout,
    pub dir: Vec<u32>,
    pub pages: Vec<HypPage>,
}

impl VmemmapStore {
    pub fn new(map: &MemoryMap) -> Self {
        let layout = VmemmapLayout::for_map(map).expect("layout");
        Self {
            layout,
            dir: vec![0; layout.dir_slots],
            pages: (0..layout.entries()).map(|_| HypPage::new()).collect(),
        }
    }

    pub fn build<'a>(&'a mut self, map: &'a MemoryMap) -> Vmemmap<'a> {
        Vmemmap::new(map, &mut self.dir, &self.pages).expect("vmemmap")
    }
}

/// What a checker sees of a pool: every free block, by order, and per-page metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSnapshot {
    pub free_pages: u64,
    /// (order, pa) of every free block, with its (next, prev) node.
    pub lists: Vec<Vec<(u64, u64, u64)>>,
    pub meta: Vec<(u16, u8)>,
}

pub fn snapshot<M: PhysMem>(pool: &HypPool<'_, M>, vm: &Vmemmap<'_>) -> PoolSnapshot {
    let mem = pool.mem();
    let mut lists = Vec::new();
    for o in 0..pkvm_hyp::page_alloc::MAX_ORDER {
        let mut l = Vec::new();
        let mut cur = pool.free_list_head(o).unwrap_or(NIL);
        let mut guard = 0;
        while cur != NIL && guard <= pool.nr_pages() {
            let next = mem.read_u64(cur + NODE_NEXT);
            l.push((cur, next, mem.read_u64(cur + NODE_PREV)));
            cur = next;
            guard += 1;
        }
        lists.push(l);
    }
    let (start, end) = pool.range();
    let meta = (start..end)
        .step_by(PAGE_SIZE as usize)
        .map(|pa| {
            let p = vm.page(pa).unwrap();
            (p.refcount(), p.order())
        })
        .collect();
    PoolSnapshot {
        free_pages: pool.free_pages(),
        lists,
        meta,
    }
}

/// Free blocks as a set of (order, pa).
pub fn free_blocks<M: PhysMem>(pool: &HypPool<'_, M>) -> BTreeSet<(u8, u64)> {
    let mem = pool.mem();
    let mut set = BTreeSet::new();
    for o in 0..pkvm_hyp::page_alloc::MAX_ORDER {
        let mut cur = pool.free_list_head(o).unwrap_or(NIL);
        let mut guard = 0;
        while cur != NIL && guard <= pool.nr_pages() {
            set.insert((o, cur));
            cur = mem.read_u64(cur + NODE_NEXT);
            guard += 1;
        }
    }
    set
}

/// Checks every buddy invariant of `pool`. `deep` also checks that free blocks are entirely
/// zero (otherwise only spot words). Returns a description of the first violation.
pub fn check_pool(
    pool: &HypPool<'_, SimRam>,
    vm: &Vmemmap<'_>,
    ram: &SimRam,
    deep: bool,
) -> Result<(), String> {
    let (start, end) = pool.range();
    let nr = pool.nr_pages();
    let max_order = pool.max_order();
    // Per page of the pool: the head of the free block covering it, or NIL.
    let mut covered = vec![NIL; nr as usize];
    let mut is_head = vec![false; nr as usize];
    let mut free = 0u64;
    for o in 0..pkvm_hyp::page_alloc::MAX_ORDER {
        let head = pool.free_list_head(o);
        if o >= max_order {
            if head.is_some() {
                return Err(format!("list {o} non-empty but max_order is {max_order}"));
            }
            continue;
        }
        let mut prev = NIL;
        let mut cur = head.unwrap_or(NIL);
        let mut steps = 0;
        while cur != NIL {
            steps += 1;
            if steps > nr + 1 {
                return Err(format!("list {o} has a cycle"));
            }
            let size = PAGE_SIZE << o;
            if !cur.is_multiple_of(size) {
                return Err(format!("free block {cur:#x} order {o} misaligned"));
            }
            if cur < start || cur.checked_add(size).is_none_or(|e| e > end) {
                return Err(format!("free block {cur:#x} order {o} outside pool"));
            }
            let next = ram.read_u64(cur + NODE_NEXT);
            let p = ram.read_u64(cur + NODE_PREV);
            if p != prev {
                return Err(format!(
                    "free block {cur:#x}: prev {p:#x}, expected {prev:#x}"
                ));
            }
            let hp = vm.page(cur).unwrap();
            if hp.order() != o || hp.refcount() != 0 {
                return Err(format!(
                    "free head {cur:#x} on list {o} has order {} refcount {}",
                    hp.order(),
                    hp.refcount()
                ));
            }
            for i in 0..(1u64 << o) {
                let pa = cur + i * PAGE_SIZE;
                let slot = &mut covered[((pa - start) / PAGE_SIZE) as usize];
                if *slot != NIL {
                    return Err(format!(
                        "page {pa:#x} in free blocks {slot:#x} and {cur:#x}"
                    ));
                }
                *slot = cur;
                if i > 0 {
                    let tp = vm.page(pa).unwrap();
                    if tp.order() != NO_ORDER || tp.refcount() != 0 {
                        return Err(format!("free tail {pa:#x} has order/refcount set"));
                    }
                }
                let skip = if i == 0 { 16 } else { 0 };
                let zero = if deep {
                    ram.range_zero(pa, PAGE_SIZE, skip)
                } else {
                    ram.page_spot_zero(pa, skip / 8)
                };
                if !zero {
                    return Err(format!("free page {pa:#x} (block {cur:#x}) is not zero"));
                }
            }
            // Maximality: the buddy of a free block must not be a free block of the same order.
            if o + 1 < max_order {
                let buddy = cur ^ size;
                if buddy >= start && buddy < end {
                    let bp = vm.page(buddy).unwrap();
                    if bp.order() == o && bp.refcount() == 0 {
                        return Err(format!("free buddies {cur:#x} and {buddy:#x} not merged"));
                    }
                }
            }
            is_head[((cur - start) / PAGE_SIZE) as usize] = true;
            free += 1 << o;
            prev = cur;
            cur = next;
        }
    }
    if free != pool.free_pages() {
        return Err(format!(
            "free count {} but lists hold {free}",
            pool.free_pages()
        ));
    }
    for i in 0..nr {
        let pa = start + i * PAGE_SIZE;
        let p = vm.page(pa).unwrap();
        let (rc, ord) = (p.refcount(), p.order());
        if ord == NO_ORDER {
            if rc != 0 {
                return Err(format!("page {pa:#x}: NO_ORDER with refcount {rc}"));
            }
        } else if ord >= max_order {
            return Err(format!(
                "page {pa:#x}: order {ord} >= max_order {max_order}"
            ));
        } else if rc == 0 && !is_head[i as usize] {
            return Err(format!(
                "page {pa:#x}: free head (order {ord}) not on a list"
            ));
        }
    }
    Ok(())
}
