//! The host stage-2 fault path: the host runs with a lazily built identity map, and each
//! first touch of a page or a device traps here. EL2 maps the largest block around the address
//! that lies inside one memory region (or one MMIO gap) and that nobody else owns, or decides
//! the access is refused (an abort for the host), or hands a device register it emulates to
//! [`crate::devices`].

use pkvm_abi::{Error, PAGE_SHIFT, PAGE_SIZE};
use pkvm_arch::addr::Ipa;
pub use pkvm_arch::esr::FaultClass;
use pkvm_pgtable::{Format, Leaf, MapFlags, Prot};

use crate::devices::MAX_DEVICE_RANGES;
use crate::hyp::Hyp;
use crate::mem_protect::EMULATED_MMIO_OWNER_ID;
use crate::mm::{HostMmu, pt_err};
use crate::platform::Platform;
use crate::sync::Ordering;
use crate::vmemmap::PageState;

/// Prot of the host's default identity mapping of RAM.
pub const HOST_MEM_PROT: Prot = Prot::R.union(Prot::W).union(Prot::X);
/// Prot of the host's default identity mapping of MMIO.
pub const HOST_MMIO_PROT: Prot = Prot::R.union(Prot::W).union(Prot::DEVICE);

/// What the host stage-2 fault handler decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostFault {
    /// The address is now mapped (or already was: a benign race); retry the access.
    Mapped,
    /// The host may not access this address: inject a synchronous external abort.
    InjectAbort,
    /// A device register EL2 emulates: decode the access and call
    /// [`Hyp::host_mmio_access`].
    Emulate,
}

impl<'a, P: Platform> Hyp<'a, P> {
    /// Handles a host stage-2 fault of class `class` at `ipa`: maps the largest block around
    /// it that lies inside one memory region (or one MMIO gap) and is not owned by anyone else,
    /// or decides to inject an abort. Never panics, whatever the address.
    ///
    /// A permission fault means the page is mapped and the access is not allowed (an
    /// instruction fetch from MMIO, which the host stage-2 maps execute-never): an abort, not
    /// a retry — retrying would loop forever.
    pub fn handle_host_mem_abort(&self, ipa: Ipa, class: FaultClass) -> HostFault {
        self.counters.host_faults.fetch_add(1, Ordering::Relaxed);
        let r = if class == FaultClass::Permission {
            HostFault::InjectAbort
        } else {
            self.host_fault(ipa.get())
        };
        if r == HostFault::InjectAbort {
            self.counters
                .injected_aborts
                .fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn host_fault(&self, ipa: u64) -> HostFault {
        if ipa >> self.pa_bits != 0 {
            return HostFault::InjectAbort;
        }
        let ipa = ipa & !(PAGE_SIZE - 1);
        let mut host = self.host.lock();
        match self.host_idmap(&mut host, ipa) {
            Err(Error::NoMem) => {
                // Recycle the table pages of MMIO mappings (they re-fault lazily), then retry once.
                self.host_unmap_mmio(&mut host);
                match self.host_idmap(&mut host, ipa) {
                    Ok(f) => f,
                    Err(_) => HostFault::InjectAbort,
                }
            }
            Ok(f) => f,
            Err(_) => HostFault::InjectAbort,
        }
    }

    fn host_idmap(&self, host: &mut HostMmu<'a, P>, ipa: u64) -> Result<HostFault, Error> {
        let host = &mut *host;
        let mm = &mut host.pool;
        // Decoded as the stage-2 it is (a constant format: no run-time check on this path).
        let (pte, level) = host.pgt.get_leaf(&*mm, ipa).map_err(pt_err)?;
        let level = match Leaf::decode(Format::Stage2 { vmid: 0 }, pte, level) {
            // Another CPU mapped it first.
            Leaf::Valid { .. } => return Ok(HostFault::Mapped),
            // A device register EL2 emulates.
            Leaf::Annotated {
                owner: EMULATED_MMIO_OWNER_ID,
                ..
            } => return Ok(HostFault::Emulate),
            // Owned by someone else; or an entry EL2 never writes: refused, never mapped over.
            Leaf::Annotated { .. } | Leaf::Unknown { .. } => return Ok(HostFault::InjectAbort),
            Leaf::Empty { level } => level,
        };
        let (lo, hi, prot) = match self.map.find_region(ipa) {
            Ok(r) => {
                match self.vmemmap.page(ipa) {
                    Some(p) if p.host_state() != PageState::NoPage => {}
                    _ => return Ok(HostFault::InjectAbort),
                }
                (r.base, r.end(), HOST_MEM_PROT)
            }
            Err(g) => (g.start, g.end.min(1u64 << self.pa_bits), HOST_MMIO_PROT),
        };
        // The entry at `level` is zero, so nothing below it is annotated: any block inside it
        // that stays inside [lo, hi) may be mapped.
        let mut lvl = level.max(1);
        loop {
            let size = 1u64 << (PAGE_SHIFT + 9 * (3 - u32::from(lvl)));
            let start = ipa & !(size - 1);
            if lvl == 3 || (start >= lo && start.checked_add(size).is_some_and(|e| e <= hi)) {
                host.pgt
                    .map(mm, self.plat, start, size, start, prot, MapFlags::empty())
                    .map_err(pt_err)?;
                return Ok(HostFault::Mapped);
            }
            lvl += 1;
        }
    }

    /// Drops every MMIO mapping of the host stage-2: they are re-created on demand by the fault
    /// path. EL2 does this by itself when the host table pool runs dry; benchmarks use it to
    /// measure first-touch faults repeatedly.
    pub fn host_stage2_unmap_mmio(&self) {
        let mut host = self.host.lock();
        self.host_unmap_mmio(&mut host);
    }

    /// Unmaps every MMIO mapping of the host stage-2 (they are re-created on demand). The
    /// annotations of the device ranges EL2 keeps from the host stay: `unmap` would clear
    /// them, so those ranges are stepped over.
    fn host_unmap_mmio(&self, host: &mut HostMmu<'a, P>) {
        let host = &mut *host;
        let mm = &mut host.pool;
        let top = 1u64 << self.pa_bits;
        let mut unmap = |lo: u64, hi: u64| {
            if hi > lo {
                let _ = host.pgt.unmap(mm, self.plat, lo, hi - lo);
            }
        };
        // The regions to keep, sorted: memory and the device ranges.
        let mut keep = [(0u64, 0u64); crate::memory::MAX_MEM_REGIONS + MAX_DEVICE_RANGES];
        let mut n = 0;
        for (s, e) in self
            .map
            .regions()
            .iter()
            .map(|r| (r.base, r.end()))
            .chain(self.devices().iter().map(|d| (d.start, d.end)))
        {
            keep[n] = (s, e);
            n += 1;
        }
        let keep = &mut keep[..n];
        keep.sort_unstable();
        let mut prev = 0;
        for &(s, e) in keep.iter() {
            unmap(prev, s.min(top));
            prev = prev.max(e);
            if prev >= top {
                return;
            }
        }
        unmap(prev, top);
    }
}
