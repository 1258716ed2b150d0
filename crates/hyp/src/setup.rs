//! Boot: from a memory map and a carve-out to a running [`Hyp`].
//!
//! The order:
//!
//! 1. the boot (bump) allocator hands out zeroed pages from the start of EL2's pool; the
//!    hypervisor's stage-1 is built with it, and since its `MmOps` cannot count, table pages
//!    are not refcounted yet;
//! 2. the buddy pool takes over the same pages, marking those the bump allocator used as
//!    allocated;
//! 3. a walk over the **whole** EL2 input range gives every table page its count
//!    (1 + valid entries) — upstream first walked only part of it, and later unmaps freed tables
//!    still in use;
//! 4. the host stage-2 gets its root from its own pool, and every page EL2 owns is annotated
//!    in it, so that the lazy host fault path never maps it.

use pkvm_abi::{Error, PAGE_SHIFT, PAGE_SIZE};
use pkvm_pgtable::{Config, MapFlags, PageTable, Prot};

use crate::devices::{DeviceKind, DeviceRange, MAX_DEVICE_RANGES};
use crate::early_alloc::EarlyAlloc;
use crate::hyp::Hyp;
use crate::mem_protect::{EMULATED_MMIO_OWNER_ID, HYP_OWNER_ID};
use crate::memory::MemoryMap;
use crate::mm::{HostMmu, HypMmu, pt_err};
use crate::page_alloc::HypPool;
use crate::platform::Platform;
use crate::stats::Counters;
use crate::sync::{AtomicBool, Mutex};
use crate::vmemmap::{HypUse, PageState, Vmemmap};

/// Input size of EL2's stage-1 (48-bit VA, 4 levels).
pub const HYP_VA_BITS: u32 = 48;

/// One mapping EL2 wants in its own stage-1 at boot (image sections, the carve-out, devices).
#[derive(Clone, Copy, Debug)]
pub struct HypMapping {
    /// Virtual address.
    pub va: u64,
    /// Physical address.
    pub pa: u64,
    /// Size in bytes (page multiple).
    pub size: u64,
    /// Permissions.
    pub prot: Prot,
}

/// What [`Hyp::new`] needs besides the platform, the memory map and the vmemmap.
#[derive(Clone, Copy, Debug)]
pub struct BootParams<'p> {
    /// Memory EL2 owns from boot (image, carve-out), `[start, end)`, page aligned; at most 4.
    pub hyp_ranges: &'p [(u64, u64)],
    /// EL2's page pool `[start, end)`; the bump allocator uses its first pages.
    pub pool: (u64, u64),
    /// The pool for host stage-2 tables `[start, end)`.
    pub host_pool: (u64, u64),
    /// EL2 stage-1 mappings to create.
    pub hyp_maps: &'p [HypMapping],
    /// Host physical address space size in bits (the host stage-2 input size).
    pub pa_bits: u32,
    /// Device ranges EL2 keeps from the host: hidden, or trapped and emulated (at most
    /// [`MAX_DEVICE_RANGES`], page aligned, outside memory, disjoint).
    pub devices: &'p [DeviceRange],
}

/// Why boot failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootError {
    /// The step that failed.
    pub step: &'static str,
    /// Its error.
    pub error: Error,
}

fn step<T>(step: &'static str, r: Result<T, Error>) -> Result<T, BootError> {
    r.map_err(|error| BootError { step, error })
}

impl<'a, P: Platform> Hyp<'a, P> {
    /// Builds EL2's stage-1 and the host stage-2, and the pools behind them.
    ///
    /// The caller switches the CPU to [`Hyp::hyp_pgd`] (and later [`Hyp::host_pgd`]) itself.
    ///
    /// # Errors
    /// A [`BootError`] naming the step that failed (bad parameters, pool too small, ...).
    pub fn new(
        plat: &'a P,
        map: &'a MemoryMap,
        vmemmap: Vmemmap<'a>,
        params: &BootParams<'_>,
    ) -> Result<Self, BootError> {
        if params.hyp_ranges.len() > 4 || !(32..=48).contains(&params.pa_bits) {
            return Err(BootError {
                step: "parameters",
                error: Error::Inval,
            });
        }
        // EL2's window (crate::mm::HYP_WINDOW_VA) sits above every address the identity map
        // may use: memory (which the host can share with EL2) must end below it.
        if map
            .regions()
            .iter()
            .any(|r| r.end() > crate::mm::HYP_WINDOW_VA)
        {
            return Err(BootError {
                step: "memory map (RAM overlaps EL2's window)",
                error: Error::Inval,
            });
        }
        let (pool_start, pool_end) = params.pool;
        let pool_pages = (pool_end - pool_start) / PAGE_SIZE;

        // 1. EL2 stage-1 from the bump allocator.
        let mut early = step(
            "early allocator",
            EarlyAlloc::new(plat, pool_start, pool_pages),
        )?;
        let s1_cfg = Config::stage1_el2();
        let mut hyp_pgt = step(
            "hyp stage-1 root",
            PageTable::new(&mut early, s1_cfg).map_err(pt_err),
        )?;
        for m in params.hyp_maps {
            step(
                "hyp stage-1 mapping",
                hyp_pgt
                    .map(
                        &mut early,
                        plat,
                        m.va,
                        m.size,
                        m.pa,
                        m.prot,
                        MapFlags::empty(),
                    )
                    .map_err(pt_err),
            )?;
        }
        let used = early.nr_used_pages();

        // 2. The buddy pool takes over.
        let mut pool = step(
            "hyp pool",
            HypPool::new(&vmemmap, plat, pool_start >> PAGE_SHIFT, pool_pages, used),
        )?;

        // 3. Refcount fix-up over the whole EL2 input range.
        hyp_pgt.fixup_refcounts(&mut pool);
        // The window (crate::mm::HYP_WINDOW_VA), anchored on the stage-1's root page.
        let mut hyp_mmu = HypMmu {
            pgt: hyp_pgt,
            pool,
            window_ptep: 0,
        };
        let root = hyp_mmu.pgt.root();
        step("hyp window", hyp_mmu.open_window(root))?;

        // 4. Host stage-2.
        let (hp_start, hp_end) = params.host_pool;
        let mut host_pool = step(
            "host pool",
            HypPool::new(
                &vmemmap,
                plat,
                hp_start >> PAGE_SHIFT,
                (hp_end - hp_start) / PAGE_SIZE,
                0,
            ),
        )?;
        let s2_cfg = Config::stage2(0, params.pa_bits as u8);
        let mut host_pgt = step(
            "host stage-2 root",
            PageTable::new(&mut host_pool, s2_cfg).map_err(pt_err),
        )?;
        let mut hyp_ranges = [(0, 0); 4];
        for (i, &(s, e)) in params.hyp_ranges.iter().enumerate() {
            hyp_ranges[i] = (s, e);
            if s >= e || s % PAGE_SIZE != 0 || e % PAGE_SIZE != 0 || !map.range_is_memory(s, e) {
                return Err(BootError {
                    step: "hyp range",
                    error: Error::Inval,
                });
            }
            let mm = &mut host_pool;
            step(
                "host stage-2 annotation",
                host_pgt
                    .set_owner(mm, plat, s, e - s, u32::from(HYP_OWNER_ID))
                    .map_err(pt_err),
            )?;
            let pages = step(
                "vmemmap",
                vmemmap
                    .slice(s >> PAGE_SHIFT, (e - s) >> PAGE_SHIFT)
                    .ok_or(Error::Fault),
            )?;
            for p in pages {
                p.set_host_state(PageState::NoPage);
                p.set_hyp_owned(HypUse::Own);
            }
        }

        let mut devices = [DeviceRange {
            start: 0,
            end: 0,
            kind: DeviceKind::Hidden,
        }; MAX_DEVICE_RANGES];
        if params.devices.len() > MAX_DEVICE_RANGES {
            return Err(BootError {
                step: "device ranges",
                error: Error::TooBig,
            });
        }
        for (i, d) in params.devices.iter().enumerate() {
            let overlaps = params.devices[..i]
                .iter()
                .any(|o| d.start < o.end && o.start < d.end);
            if d.start >= d.end
                || d.start % PAGE_SIZE != 0
                || d.end % PAGE_SIZE != 0
                || d.end > 1u64 << params.pa_bits
                || overlaps
                || (d.start..d.end)
                    .step_by(PAGE_SIZE as usize)
                    .any(|pa| map.is_memory(pa))
            {
                return Err(BootError {
                    step: "device range",
                    error: Error::Inval,
                });
            }
            let owner = match d.kind {
                DeviceKind::Hidden => HYP_OWNER_ID,
                DeviceKind::GicrRdBase => EMULATED_MMIO_OWNER_ID,
            };
            let mm = &mut host_pool;
            step(
                "host stage-2 device annotation",
                host_pgt
                    .set_owner(mm, plat, d.start, d.end - d.start, owner.into())
                    .map_err(pt_err),
            )?;
            devices[i] = *d;
        }

        Ok(Hyp {
            plat,
            map,
            vmemmap,
            hyp_ranges,
            nr_hyp_ranges: params.hyp_ranges.len(),
            devices,
            nr_devices: params.devices.len(),
            pa_bits: params.pa_bits,
            host: Mutex::new(HostMmu {
                pgt: host_pgt,
                pool: host_pool,
            }),
            hyp: Mutex::new(hyp_mmu),
            finalised: AtomicBool::new(false),
            counters: Counters::default(),
            vms: Mutex::new(crate::vm::VmTable::new()),
        })
    }
}
