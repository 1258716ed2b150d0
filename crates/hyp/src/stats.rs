//! Statistics for the debug hypercall and for tests: they walk tables, so they are slow and
//! never on a hot path.

use pkvm_abi::{PAGE_SHIFT, PAGE_SIZE};
use pkvm_pgtable::{WalkFlags, desc};

use crate::hyp::Hyp;
use crate::platform::Platform;
use crate::sync::AtomicU64;
use crate::vmemmap::{HypPage, PageState};

/// Counters kept by EL2.
#[derive(Debug, Default)]
pub struct Counters {
    /// Host stage-2 faults handled.
    pub host_faults: AtomicU64,
    /// Aborts injected into the host.
    pub injected_aborts: AtomicU64,
    /// UNDEFs injected into the host (trapped instructions EL2 does not emulate).
    pub injected_undefs: AtomicU64,
    /// Host accesses to device registers EL2 emulated.
    pub emulated_mmio: AtomicU64,
    /// Host writes to device registers EL2 refused (a table base outside the host's RAM).
    pub refused_device_writes: AtomicU64,
}

impl<P: Platform> Hyp<'_, P> {
    /// Number of memory pages whose vmemmap entry satisfies `f`.
    pub fn count_pages(&self, f: impl Fn(&HypPage) -> bool) -> u64 {
        let mut n = 0;
        for r in self.map.regions() {
            if let Some(pages) = self.vmemmap.slice(r.base_pfn(), r.nr_pages()) {
                n += pages.iter().filter(|p| f(p)).count() as u64;
            }
        }
        n
    }

    /// Pages donated to EL2 outside its own memory.
    pub fn donated_pages(&self) -> u64 {
        let mut n = 0;
        for r in self.map.regions() {
            if let Some(pages) = self.vmemmap.slice(r.base_pfn(), r.nr_pages()) {
                for (i, p) in pages.iter().enumerate() {
                    let pa = (r.base_pfn() + i as u64) << PAGE_SHIFT;
                    if p.host_state() == PageState::NoPage
                        && p.hyp_state() == PageState::Owned
                        && !self.is_hyp_memory(pa)
                    {
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// Pages of host memory (memory outside EL2's own ranges) that EL2's stage-1 maps.
    pub fn hyp_mapped_host_pages(&self) -> u64 {
        let hyp = self.hyp.lock();
        let mut n = 0u64;
        let size = hyp.pgt.config().ia_size();
        let _ = hyp.pgt.walk(
            &hyp.pool,
            0,
            size,
            WalkFlags::LEAF,
            |v| -> Result<(), pkvm_pgtable::Error> {
                if desc::is_valid(v.pte) {
                    let oa = desc::output_address(v.pte);
                    for off in (0..v.granule()).step_by(PAGE_SIZE as usize) {
                        let pa = oa + off;
                        if self.map.is_memory(pa) && !self.is_hyp_memory(pa) {
                            n += 1;
                        }
                    }
                }
                Ok(())
            },
        );
        n
    }

    /// Valid leaves of the host stage-2 per level.
    pub fn host_leaves(&self) -> [u64; 4] {
        let host = self.host.lock();
        let size = host.pgt.config().ia_size();
        host.pgt.count_leaves(&host.pool, 0, size).unwrap_or([0; 4])
    }

    /// Pages allocated from EL2's two pools (tables of its stage-1 and of the host stage-2,
    /// plus the boot allocator's pages).
    pub fn table_pages(&self) -> u64 {
        let host = self.host.lock();
        let hyp = self.hyp.lock();
        (host.pool.nr_pages() - host.pool.free_pages())
            + (hyp.pool.nr_pages() - hyp.pool.free_pages())
    }

    /// Failed refcount operations the pools saw through the page-table interface (must be 0).
    pub fn mmops_errors(&self) -> u64 {
        self.host.lock().pool.mmops_errors() + self.hyp.lock().pool.mmops_errors()
    }
}

impl<P: Platform> Hyp<'_, P> {
    /// Whether every free block of both pools is zero apart from its free-list node (what lets
    /// allocations skip zeroing; checked by tests, it reads every free page).
    pub fn pools_free_memory_is_zero(&self) -> bool {
        self.host.lock().pool.free_memory_is_zero() && self.hyp.lock().pool.free_memory_is_zero()
    }
}
