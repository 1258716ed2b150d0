//! Host hypercall dispatch, on a saved-register context shared by the EL2 image and the
//! simulator.
//!
//! The host's `x0..x7` come in as an array; on return `x0` holds the SMCCC status
//! (`SMCCC_SUCCESS` once dispatched, `SMCCC_NOT_SUPPORTED` for an unknown id or a boot-only id
//! after finalisation), `x1` the handler's result (0 or a negative errno) and `x2..x3` any data.
//! Every other register is left as the host passed it.

use pkvm_abi::{
    ABI_VERSION, Error, HostHcall, SMCCC_NOT_SUPPORTED, SMCCC_SUCCESS, Stat, encode_result,
    features, hvc_fid,
};

use pkvm_arch::addr::{Gfn, Pfn, PhysAddr};

use crate::hyp::Hyp;
use crate::platform::Platform;
use crate::sync::Ordering;

/// Feature bits this build advertises.
pub const FEATURES: u64 = features::RANGES
    | features::EL2_REFCOUNT
    | features::GUESTS
    | features::PROTECTED_VMS
    | if cfg!(feature = "debug-hcalls") {
        features::DEBUG_HCALLS
    } else {
        0
    };

impl<P: Platform> Hyp<'_, P> {
    /// Handles one host hypercall on the host's saved `x0..x7`.
    ///
    /// `Version` is answered inline (it is the empty-hypercall benchmark and needs no lock);
    /// everything else goes through one out-of-line function, so that the trap path itself
    /// saves no callee-saved registers.
    #[inline]
    pub fn handle_host_hcall(&self, x: &mut [u64; 8]) {
        if x[0] == hvc_fid(HostHcall::Version) {
            x[0] = SMCCC_SUCCESS;
            x[1] = 0;
            x[2] = ABI_VERSION;
            x[3] = FEATURES;
            return;
        }
        self.handle_host_hcall_slow(x);
    }

    #[inline(never)]
    fn handle_host_hcall_slow(&self, x: &mut [u64; 8]) {
        let Some(id) = HostHcall::from_fid(x[0]) else {
            x[0] = SMCCC_NOT_SUPPORTED;
            return;
        };
        if id.boot_only() && self.is_finalised() {
            x[0] = SMCCC_NOT_SUPPORTED;
            return;
        }
        let r = match id {
            HostHcall::Version => {
                x[2] = ABI_VERSION;
                x[3] = FEATURES;
                Ok(())
            }
            HostHcall::Finalize => self.finalise(),
            // The registers get their types here, at the boundary.
            HostHcall::HostShareHyp => self.host_share_hyp(Pfn(x[1]), x[2]),
            HostHcall::HostUnshareHyp => self.host_unshare_hyp(Pfn(x[1]), x[2]),
            HostHcall::HostDonateHyp => self.host_donate_hyp(Pfn(x[1]), x[2]),
            HostHcall::VmInit => self
                .vm_init(PhysAddr(x[1]), Pfn(x[2]), x[3])
                .map(|h| x[2] = h),
            HostHcall::VcpuInit => self.vcpu_init(x[1], PhysAddr(x[2]), PhysAddr(x[3]), x[4]),
            HostHcall::HostShareGuest => {
                self.host_share_guest(x[1], Pfn(x[2]), Gfn(x[3]), x[4], x[5])
            }
            HostHcall::HostUnshareGuest => self.host_unshare_guest(x[1], Gfn(x[2]), x[3]),
            HostHcall::VcpuRun => self.vcpu_run(x[1], x[2]).map(|r| x[2] = r),
            HostHcall::VmTeardown => self.vm_teardown(x[1]).map(|n| x[2] = n),
            HostHcall::HostDonateGuest => self.host_donate_guest(x[1], Pfn(x[2]), Gfn(x[3]), x[4]),
            HostHcall::VmReclaim => self.vm_reclaim(x[1]).map(|n| x[2] = n),
            HostHcall::Stat => match Stat::from_u64(x[1]) {
                Some(s) => {
                    x[2] = self.stat(s);
                    Ok(())
                }
                None => Err(Error::Inval),
            },
            _ if !cfg!(feature = "debug-hcalls") => {
                x[0] = SMCCC_NOT_SUPPORTED;
                return;
            }
            HostHcall::DebugHypDonateHost => self.hyp_donate_host(Pfn(x[1]), x[2]),
            HostHcall::DebugPin => self.pin_shared(Pfn(x[1]), x[2]),
            HostHcall::DebugUnpin => self.unpin_shared(Pfn(x[1]), x[2]),
            HostHcall::DebugRead => self.hyp_read(PhysAddr(x[1])).map(|v| x[2] = v),
        };
        x[0] = SMCCC_SUCCESS;
        x[1] = encode_result(r);
    }

    /// One statistic (walks page tables for some: debug use only).
    pub fn stat(&self, s: Stat) -> u64 {
        match s {
            Stat::HostFaults => self.counters.host_faults.load(Ordering::Relaxed),
            Stat::InjectedAborts => self.counters.injected_aborts.load(Ordering::Relaxed),
            Stat::InjectedUndefs => self.counters.injected_undefs.load(Ordering::Relaxed),
            Stat::EmulatedMmio => self.counters.emulated_mmio.load(Ordering::Relaxed),
            Stat::RefusedDeviceWrites => {
                self.counters.refused_device_writes.load(Ordering::Relaxed)
            }
            Stat::PoolFreePages => self.hyp.lock().pool.free_pages(),
            Stat::SharedPages => self.count_pages(|p| p.share_count() != 0),
            Stat::HypMappedHostPages => self.hyp_mapped_host_pages(),
            Stat::HostLeavesL1 => self.host_leaves()[1],
            Stat::HostLeavesL2 => self.host_leaves()[2],
            Stat::HostLeavesL3 => self.host_leaves()[3],
            Stat::TablePages => self.table_pages(),
            Stat::DonatedPages => self.donated_pages(),
            Stat::GuestSharedPages => self.count_pages(|p| {
                p.host_state() == crate::vmemmap::PageState::SharedOwned
                    && p.hyp_state() == crate::vmemmap::PageState::NoPage
            }),
            Stat::LiveVms => self.live_vms(),
            Stat::GuestOwnedPages => self.count_pages(|p| {
                p.host_state() != crate::vmemmap::PageState::Owned
                    && p.hyp_state() == crate::vmemmap::PageState::NoPage
                    && p.share_count() == 0
            }),
            Stat::VgicListRegs => self.plat.vgic_info().map_or(0, |i| u64::from(i.nr_lrs)),
            Stat::PinnedPages => self.count_pages(|p| {
                crate::mem_protect::is_shared_with_hyp(p) && crate::mem_protect::is_pinned(p)
            }),
        }
    }
}
