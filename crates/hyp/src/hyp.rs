//! [`Hyp`], the portable hypervisor: the memory map and vmemmap, its components (the host
//! stage-2 and EL2's own stage-1, each behind its lock; the VM table), and what it keeps from
//! the host at boot.
//!
//! Its methods live with their concern: [`crate::setup`] (boot), [`crate::mem_protect`]
//! (ownership transitions), [`crate::host_fault`] (the host stage-2 fault path),
//! [`crate::devices`] (device registers EL2 keeps or emulates), [`crate::vm`] (guests),
//! [`crate::hcall`] (the hypercall table), [`crate::debug`] and [`crate::stats`].

use pkvm_abi::{Error, PAGE_SHIFT};
use pkvm_arch::addr::Pfn;
use pkvm_pgtable::Config;

use crate::devices::{DeviceRange, MAX_DEVICE_RANGES};
use crate::memory::MemoryMap;
use crate::mm::{HostMmu, HypMmu};
use crate::platform::Platform;
use crate::stats::Counters;
use crate::sync::{AtomicBool, Mutex, MutexGuard, Ordering};
use crate::vm::VmTable;
use crate::vmemmap::{HypPage, Vmemmap};

/// Largest number of memory ranges EL2 owns from boot (its image, its carve-out).
pub const MAX_HYP_RANGES: usize = 4;

/// The portable hypervisor: memory map, vmemmap, components and their locks.
///
/// Lock order, everywhere: host → hyp → vms.
pub struct Hyp<'a, P: Platform> {
    pub(crate) plat: &'a P,
    pub(crate) map: &'a MemoryMap,
    pub(crate) vmemmap: Vmemmap<'a>,
    /// Memory EL2 owns from boot (its image, its carve-out): never given to anyone.
    pub(crate) hyp_ranges: [(u64, u64); MAX_HYP_RANGES],
    pub(crate) nr_hyp_ranges: usize,
    /// Device ranges EL2 keeps from the host (hidden or emulated).
    pub(crate) devices: [DeviceRange; MAX_DEVICE_RANGES],
    pub(crate) nr_devices: usize,
    /// Host physical address space size in bits.
    pub(crate) pa_bits: u32,
    pub(crate) host: Mutex<HostMmu<'a, P>>,
    pub(crate) hyp: Mutex<HypMmu<'a, P>>,
    pub(crate) finalised: AtomicBool,
    pub(crate) counters: Counters,
    pub(crate) vms: Mutex<VmTable<'a, P>>,
}

/// Which of [`Hyp`]'s locks are held ([`Hyp::lock_state`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockState {
    /// The host lock (host stage-2, its pool, host page states).
    pub host: bool,
    /// The hyp lock (EL2's stage-1, its pool, hyp page states).
    pub hyp: bool,
    /// The VM table's lock (guests, their stage-2 tables and memcaches).
    pub vms: bool,
}

impl<P: Platform> core::fmt::Debug for Hyp<'_, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Hyp")
            .field("pa_bits", &self.pa_bits)
            .finish_non_exhaustive()
    }
}

impl<'a, P: Platform> Hyp<'a, P> {
    /// The platform.
    pub fn platform(&self) -> &'a P {
        self.plat
    }

    /// The memory map.
    pub fn memory_map(&self) -> &'a MemoryMap {
        self.map
    }

    /// The vmemmap.
    pub fn vmemmap(&self) -> &Vmemmap<'a> {
        &self.vmemmap
    }

    /// Memory EL2 owns from boot, as `[start, end)` ranges.
    pub fn hyp_ranges(&self) -> &[(u64, u64)] {
        &self.hyp_ranges[..self.nr_hyp_ranges]
    }

    /// Whether `pa` lies in memory EL2 owns from boot.
    pub fn is_hyp_memory(&self, pa: u64) -> bool {
        self.hyp_ranges().iter().any(|&(s, e)| pa >= s && pa < e)
    }

    /// Counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Physical address of EL2's stage-1 root (for `TTBR0_EL2`).
    pub fn hyp_pgd(&self) -> u64 {
        self.hyp.lock().pgt.root()
    }

    /// Configuration of the host stage-2 (for `VTCR_EL2`).
    pub fn host_s2_config(&self) -> Config {
        self.host.lock().pgt.config()
    }

    /// Physical address of the host stage-2 root (for `VTTBR_EL2`, VMID 0).
    pub fn host_pgd(&self) -> u64 {
        self.host.lock().pgt.root()
    }

    /// Which of the three locks are held right now, by any CPU: a test and diagnostic accessor
    /// (the simulator's page-table protocol checker asks it at every descriptor write; in a
    /// single-threaded test "held" means held by the running call). Never a basis for a
    /// locking decision: the answer may be stale as soon as it is returned.
    pub fn lock_state(&self) -> LockState {
        LockState {
            host: self.host.is_locked(),
            hyp: self.hyp.is_locked(),
            vms: self.vms.is_locked(),
        }
    }

    /// Whether protection has been finalised (boot-only hypercalls are refused from then on).
    pub fn is_finalised(&self) -> bool {
        self.finalised.load(Ordering::Acquire)
    }

    /// Finalises protection: from now on boot-only hypercalls are refused.
    ///
    /// # Errors
    /// `EPERM` if already finalised.
    pub fn finalise(&self) -> Result<(), Error> {
        if self.finalised.swap(true, Ordering::AcqRel) {
            Err(Error::Perm)
        } else {
            Ok(())
        }
    }

    /// Takes the host and hyp locks, in the one order every path takes them.
    #[inline]
    pub(crate) fn lock_host_hyp(
        &self,
    ) -> (
        MutexGuard<'_, HostMmu<'a, P>>,
        MutexGuard<'_, HypMmu<'a, P>>,
    ) {
        let host = self.host.lock();
        (host, self.hyp.lock())
    }

    /// Validates a host page range: `EINVAL` for zero pages, `pfn + nr` overflow, or a range
    /// not inside one memory region (MMIO, holes, straddling); `ERANGE` beyond the host's
    /// address space. Returns the vmemmap entries of the range.
    #[inline]
    pub(crate) fn host_range(&self, pfn: Pfn, nr: u64) -> Result<&'a [HypPage], Error> {
        let pfn = pfn.get();
        if nr == 0 {
            return Err(Error::Inval);
        }
        let end_pfn = pfn.checked_add(nr).ok_or(Error::Inval)?;
        if end_pfn > 1u64 << (self.pa_bits - PAGE_SHIFT) {
            return Err(Error::Range);
        }
        // In range of the address space, so the shifts below cannot overflow.
        if !self
            .map
            .range_is_memory(pfn << PAGE_SHIFT, end_pfn << PAGE_SHIFT)
        {
            return Err(Error::Inval);
        }
        self.vmemmap
            .slice_checked_range(pfn, nr)
            .ok_or(Error::Fault)
    }

    /// A commit phase failed: an internal invariant is broken (the check phase ruled out every
    /// way a commit can fail). Logged; the call returns `EFAULT`.
    #[cold]
    pub(crate) fn commit_failed(&self, what: &str, e: impl core::fmt::Debug) -> Error {
        self.plat.log(format_args!(
            "pkvm: commit phase of {what} failed: {e:?} (internal bug)"
        ));
        Error::Fault
    }
}
