//! The guest-side calls EL2 answers itself, without an exit to the host: SMCCC discovery
//! (version, features, KVM's call UID and features bitmap), PSCI discovery for protected VMs
//! (`PSCI_VERSION`, `PSCI_FEATURES`), and the memory calls with which a guest shares its pages
//! with the host, takes them back, or gives them up ([`pkvm_abi::guest::smccc`]).
//!
//! The guest's registers are read once; every check runs before anything changes, and a
//! failed call changes nothing (`x0` = `INVALID_PARAMETER`, `x1` = 0 granules done, `x2` = the
//! reason as a negative errno — a pkvm-rs addition that clients may ignore).

use pkvm_abi::guest::smccc::{self, INVALID_PARAMETER, KVM_FEATURES_BITMAP, KVM_UID, SUCCESS};
use pkvm_abi::guest::{self as g, vcpu_off};
use pkvm_abi::{Error, PAGE_SHIFT, PAGE_SIZE, psci};
use pkvm_arch::addr::Gfn;
use pkvm_pgtable::{Leaf, desc};

use super::guest_owner_id;
use super::reclaim::{is_guest_owned, is_guest_shared_back};
use super::run::SharedVcpu;
use super::{
    GUEST_OWNED_PROT, GUEST_SHARED_BORROWED, GUEST_SHARED_OWNED, MMIO_GUARD_OWNER, end_guest_share,
};
use crate::hyp::Hyp;
use crate::mem_protect::{is_guest_shared, perm_unless};
use crate::mm::GuestArch;
use crate::platform::Platform;
use crate::vmemmap::PageState;

/// PSCI 1.1, as `PSCI_VERSION` reports it.
const PSCI_1_1: u64 = 0x1_0001;

/// A guest call EL2 answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GuestCall {
    PsciVersion,
    PsciFeatures,
    Version,
    ArchFeatures,
    CallUid,
    /// For a protected VM (MMIO guard offered) or not.
    KvmFeatures(bool),
    MemInfo,
    Mem(MemOp),
    /// PSCI `CPU_ON` (64-bit) of a protected VM: EL2 starts the target vCPU.
    CpuOn,
    /// PSCI `AFFINITY_INFO` (64-bit) of a protected VM.
    AffinityInfo,
    GuardInfo,
    GuardEnroll,
    /// `MMIO_GUARD_MAP` (`true`) or `MMIO_GUARD_UNMAP`.
    Guard(bool),
}

/// A guest memory call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MemOp {
    Share,
    Unshare,
    Relinquish,
}

impl GuestCall {
    /// The call the guest's function id (`w0`) names, if EL2 answers it; PSCI's discovery
    /// only for a protected VM (a non-protected VM's PSCI is the host's).
    #[inline(always)]
    pub(super) fn decode(fid: u32, protected: bool) -> Option<Self> {
        if protected {
            match fid {
                psci::VERSION => return Some(GuestCall::PsciVersion),
                psci::FEATURES => return Some(GuestCall::PsciFeatures),
                psci::CPU_ON_64 => return Some(GuestCall::CpuOn),
                psci::AFFINITY_INFO_64 => return Some(GuestCall::AffinityInfo),
                _ => {}
            }
        }
        Some(match u64::from(fid) {
            smccc::VERSION => GuestCall::Version,
            smccc::ARCH_FEATURES => GuestCall::ArchFeatures,
            smccc::VENDOR_HYP_CALL_UID => GuestCall::CallUid,
            smccc::VENDOR_HYP_KVM_FEATURES => GuestCall::KvmFeatures(protected),
            smccc::HYP_MEMINFO => GuestCall::MemInfo,
            smccc::MEM_SHARE => GuestCall::Mem(MemOp::Share),
            smccc::MEM_UNSHARE => GuestCall::Mem(MemOp::Unshare),
            smccc::MEM_RELINQUISH => GuestCall::Mem(MemOp::Relinquish),
            // MMIO guard only for protected VMs (a non-protected VM's host sees its memory
            // anyway): for the others these ids exit to the host as any other call.
            smccc::MMIO_GUARD_INFO if protected => GuestCall::GuardInfo,
            smccc::MMIO_GUARD_ENROLL if protected => GuestCall::GuardEnroll,
            smccc::MMIO_GUARD_MAP if protected => GuestCall::Guard(true),
            smccc::MMIO_GUARD_UNMAP if protected => GuestCall::Guard(false),
            _ => return None,
        })
    }
}

impl<P: Platform> Hyp<'_, P> {
    /// Answers `call` into the guest's registers (the vCPU is running: the VM exists and is
    /// not dying).
    #[inline(never)]
    pub(super) fn guest_call(&self, handle: u64, call: GuestCall, st: SharedVcpu<'_, P>) {
        // Read once.
        let (x1, x2, x3) = (st.reg(1), st.reg(2), st.reg(3));
        match call {
            // PSCI 1.1: CPU_OFF, SYSTEM_OFF and SYSTEM_RESET end the vCPU's run (a
            // SYSTEM_EVENT exit; CPU_OFF also turns it off); CPU_ON and AFFINITY_INFO are
            // answered here (a protected vCPU's entry point is EL2's to set).
            GuestCall::PsciVersion => st.set_reg(0, PSCI_1_1),
            GuestCall::PsciFeatures => {
                let known = matches!(
                    x1 as u32,
                    psci::VERSION
                        | psci::FEATURES
                        | psci::CPU_ON_64
                        | psci::CPU_OFF
                        | psci::AFFINITY_INFO_64
                        | psci::SYSTEM_OFF
                        | psci::SYSTEM_RESET
                        | psci::SMCCC_VERSION
                );
                st.set_reg(0, if known { SUCCESS } else { smccc::NOT_SUPPORTED });
            }
            GuestCall::Version => st.set_reg(0, u64::from(psci::SMCCC_VERSION_1_1)),
            GuestCall::ArchFeatures => {
                let known = matches!(u64::from(x1 as u32), smccc::VERSION | smccc::ARCH_FEATURES);
                st.set_reg(0, if known { SUCCESS } else { smccc::NOT_SUPPORTED });
            }
            GuestCall::CallUid => {
                for (i, w) in KVM_UID.into_iter().enumerate() {
                    st.set_reg(i as u8, w);
                }
            }
            GuestCall::KvmFeatures(protected) => {
                let bitmap = if protected {
                    KVM_FEATURES_BITMAP
                } else {
                    KVM_FEATURES_BITMAP & !smccc::MMIO_GUARD_BITS
                };
                for (i, w) in [bitmap, 0, 0, 0].into_iter().enumerate() {
                    st.set_reg(i as u8, w);
                }
            }
            GuestCall::MemInfo => {
                if x1 | x2 | x3 != 0 {
                    st.set_reg(0, INVALID_PARAMETER);
                } else {
                    st.set_reg(0, PAGE_SIZE);
                    st.set_reg(1, 0);
                }
            }
            GuestCall::Mem(op) => {
                // Share and unshare take a granule count of 0 (legacy: one) or 1; relinquish
                // none.
                let args_ok = match op {
                    MemOp::Share | MemOp::Unshare => x2 <= 1 && x3 == 0,
                    MemOp::Relinquish => x2 == 0 && x3 == 0,
                };
                let r = if args_ok {
                    self.guest_mem(handle, op, x1)
                } else {
                    Err(Error::Inval)
                };
                let (x0, x1, x2) = match r {
                    Ok(()) => (SUCCESS, u64::from(op != MemOp::Relinquish), 0),
                    Err(e) => (INVALID_PARAMETER, 0, e.errno() as u64),
                };
                st.set_reg(0, x0);
                st.set_reg(1, x1);
                st.set_reg(2, x2);
            }
            GuestCall::CpuOn => {
                let r = self.cpu_on(handle, x1, x2, x3);
                st.set_reg(0, r as i64 as u64);
            }
            GuestCall::AffinityInfo => {
                // Only Aff0 names a vCPU (`lowest_affinity_level` 0).
                let r = match self.vcpu_power(handle, x1) {
                    _ if x2 != 0 => psci::INVALID_PARAMETERS,
                    Some(true) => 0,
                    Some(false) => 1,
                    None => psci::INVALID_PARAMETERS,
                };
                st.set_reg(0, r as i64 as u64);
            }
            GuestCall::GuardInfo => st.set_reg(0, PAGE_SIZE),
            GuestCall::GuardEnroll => {
                if let Ok(vm) = self.vms.lock().get(handle) {
                    vm.mmio_guard = true;
                }
                st.set_reg(0, SUCCESS);
            }
            GuestCall::Guard(map) => {
                let (x0, x2) = match self.guest_guard(handle, map, x1) {
                    Ok(()) => (SUCCESS, 0),
                    Err(e) => (INVALID_PARAMETER, e.errno() as u64),
                };
                st.set_reg(0, x0);
                st.set_reg(2, x2);
            }
        }
    }

    /// The vCPU a PSCI target affinity names (`mpidr`: Aff0 the index, the rest 0).
    fn target_vcpu(mpidr: u64) -> Option<usize> {
        let idx = mpidr as usize;
        (mpidr & !0xff == 0 && idx < g::MAX_VCPUS_PER_VM).then_some(idx)
    }

    /// Whether the protected VM's vCPU named by `mpidr` is on (`None`: no such vCPU).
    fn vcpu_power(&self, handle: u64, mpidr: u64) -> Option<bool> {
        let idx = Self::target_vcpu(mpidr)?;
        let mut vms = self.vms.lock();
        let vm = vms.get(handle).ok()?;
        vm.vcpus.get(idx)?.as_ref().map(|v| v.on)
    }

    /// PSCI `CPU_ON` from a protected vCPU: the target (added by the host, off) starts at
    /// `entry` with `x0` = `context`, at EL1h with DAIF masked, the rest of its registers as
    /// `VcpuInit` left them; the host runs it from then on (`VcpuRun` of an off vCPU is
    /// `EPERM`). Returns the PSCI status.
    fn cpu_on(&self, handle: u64, mpidr: u64, entry: u64, context: u64) -> i32 {
        let Some(idx) = Self::target_vcpu(mpidr) else {
            return psci::INVALID_PARAMETERS;
        };
        let mut vms = self.vms.lock();
        let Ok(vm) = vms.get(handle) else {
            return psci::INTERNAL_FAILURE;
        };
        let Some(Some(v)) = vm.vcpus.get_mut(idx) else {
            return psci::INVALID_PARAMETERS;
        };
        if v.on {
            return psci::ALREADY_ON;
        }
        let Some(private) = v.private else {
            return psci::INTERNAL_FAILURE;
        };
        let st = self.shared_vcpu(private.get());
        st.write(vcpu_off::PC, entry);
        st.write(vcpu_off::PSTATE, g::PSTATE_EL1H_DAIF);
        st.set_reg(0, context);
        v.on = true;
        psci::SUCCESS
    }

    /// `MMIO_GUARD_MAP` / `MMIO_GUARD_UNMAP` of the page at `ipa`: a guest stage-2
    /// annotation with [`MMIO_GUARD_OWNER`] (tables from the VM's memcache).
    ///
    /// # Errors
    /// `EINVAL` for an unaligned IPA; `ERANGE` outside the IPA space; `EPERM` for a page of
    /// the guest's memory or one a page is mapped at (map), or one not mapped for MMIO
    /// (unmap); `ENOMEM` if the memcache cannot hold the table the annotation needs.
    fn guest_guard(&self, handle: u64, map: bool, ipa: u64) -> Result<(), Error> {
        if !ipa.is_multiple_of(PAGE_SIZE) {
            return Err(Error::Inval);
        }
        let mut vms = self.vms.lock();
        let vm = vms.get(handle)?;
        vm.ipa_range(Gfn(ipa >> PAGE_SHIFT), 1)?;
        let guarded = matches!(
            vm.pgt.leaf(&vm.pool, ipa),
            Ok(Leaf::Annotated {
                owner: MMIO_GUARD_OWNER,
                ..
            })
        );
        let arch = GuestArch {
            plat: self.plat,
            vttbr: vm.vttbr(),
        };
        let r = match (map, guarded) {
            (true, true) => return Ok(()),
            (true, false) => {
                if (vm.mem.0..vm.mem.1).contains(&ipa) {
                    return Err(Error::Perm);
                }
                vm.check_unmapped(ipa, PAGE_SIZE)?;
                // Teardown must walk over it (its table pages go back zero).
                vm.cover(ipa, PAGE_SIZE);
                let owner = u32::from(MMIO_GUARD_OWNER);
                vm.pgt
                    .set_owner(&mut vm.pool, &arch, ipa, PAGE_SIZE, owner)
                    .is_ok()
            }
            (false, true) => vm.pgt.unmap(&mut vm.pool, &arch, ipa, PAGE_SIZE).is_ok(),
            (false, false) => return Err(Error::Perm),
        };
        if r {
            Ok(())
        } else {
            Err(self.commit_failed("mmio guard", ipa))
        }
    }

    /// One guest memory call on the page at `ipa`.
    ///
    /// # Errors
    /// `EINVAL` for an unaligned IPA; `ERANGE` outside the guest's IPA space; `EPERM` unless
    /// the page is in the state the call needs (share: the guest's own; unshare: the guest's,
    /// shared; relinquish: the guest's own, or the host's shared in); `ENOMEM` if the host
    /// stage-2 cannot get the table a re-annotation needs (unshare).
    fn guest_mem(&self, handle: u64, op: MemOp, ipa: u64) -> Result<(), Error> {
        if !ipa.is_multiple_of(PAGE_SIZE) {
            return Err(Error::Inval);
        }
        let (mut host, mut hyp) = self.lock_host_hyp();
        let mut vms = self.vms.lock();
        let vm = vms.get(handle)?;
        vm.ipa_range(Gfn(ipa >> PAGE_SHIFT), 1)?;
        let pte = match vm.pgt.leaf(&vm.pool, ipa) {
            Ok(Leaf::Valid { pte, level: 3 }) => pte,
            _ => return Err(Error::Perm),
        };
        let pa = desc::output_address(pte);
        let p = self.vmemmap.page(pa).ok_or(Error::Perm)?;
        let sw = pte & (GUEST_SHARED_BORROWED.bits() | GUEST_SHARED_OWNED.bits());
        let arch = GuestArch {
            plat: self.plat,
            vttbr: vm.vttbr(),
        };
        let r = match op {
            MemOp::Share => {
                perm_unless(sw == 0 && is_guest_owned(p))?;
                // Guest first (a software bit: written in place), then the host may fault
                // the page in.
                let r1 = vm.pgt.set_prot(
                    &mut vm.pool,
                    &arch,
                    ipa,
                    PAGE_SIZE,
                    GUEST_OWNED_PROT | GUEST_SHARED_OWNED,
                );
                let r2 = host.clear(pa, PAGE_SIZE);
                p.set_host_state(PageState::SharedBorrowed);
                matches!(r1, Ok(PAGE_SIZE)) && r2.is_ok()
            }
            MemOp::Unshare => {
                perm_unless(sw == GUEST_SHARED_OWNED.bits() && is_guest_shared_back(p))?;
                let rsv = host.reserve(pa, pa + PAGE_SIZE)?;
                // The host loses access (break-before-make of its mapping, if any) first.
                let r1 = host.annotate(&rsv, pa, PAGE_SIZE, guest_owner_id(vm.vmid));
                p.set_host_state(PageState::NoPage);
                // What the host left in its cache reaches memory before the page is the
                // guest's alone again (as at donation).
                let cleaned = hyp.clean_foreign(pa);
                let r2 = vm
                    .pgt
                    .set_prot(&mut vm.pool, &arch, ipa, PAGE_SIZE, GUEST_OWNED_PROT);
                r1.is_ok() && cleaned && matches!(r2, Ok(PAGE_SIZE))
            }
            MemOp::Relinquish => {
                let owned = sw == 0 && is_guest_owned(p);
                perm_unless(owned || (sw == GUEST_SHARED_BORROWED.bits() && is_guest_shared(p)))?;
                // Out of the guest (invalidated) before anything else sees the page.
                let r1 = vm.pgt.unmap(&mut vm.pool, &arch, ipa, PAGE_SIZE);
                vm.pages = vm.pages.saturating_sub(1);
                let r2 = if owned {
                    if !hyp.zero_foreign(pa) {
                        // Not zeroed: it stays out of the host's reach.
                        return Err(self.commit_failed("guest memory call", op));
                    }
                    let r = host.clear(pa, PAGE_SIZE);
                    p.reset();
                    r
                } else {
                    end_guest_share(p);
                    Ok(())
                };
                matches!(r1, Ok(PAGE_SIZE)) && r2.is_ok()
            }
        };
        if r {
            Ok(())
        } else {
            Err(self.commit_failed("guest memory call", op))
        }
    }
}
