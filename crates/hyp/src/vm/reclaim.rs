//! Tearing a VM down without unbounded work in one EL2 call: `vm_teardown` marks the VM dying,
//! then each call (`vm_teardown`'s own first one, then `vm_reclaim`) reclaims at most
//! [`RECLAIM_BATCH`] guest pages in IPA order; the call that reclaims the last one frees the
//! stage-2, invalidates the VMID, returns the memcache and unpins the VM's structures.
//!
//! What each page becomes:
//! - a page the guest owned (donated to it): zeroed, then the host's again (OWNED, its
//!   annotation cleared — the host re-faults it);
//! - a page the guest shared back (`MEM_SHARE`): returned as it is. The guest made it
//!   readable by the host itself, and the host may be using it this very moment; zeroing it
//!   would hide nothing and would race with the host's own accesses;
//! - a page the host shared in (non-protected VM): the host's alone again.
//!
//! Every page leaves the guest stage-2 (with TLB invalidation for the VMID) before the host
//! gets it back.

use pkvm_abi::guest::RECLAIM_BATCH;
use pkvm_abi::{Error, PAGE_SIZE};
use pkvm_pgtable::{WalkFlags, desc};

use super::{GUEST_SHARED_BORROWED, GUEST_SHARED_OWNED, VmTable, end_guest_share};
use crate::hyp::Hyp;
use crate::mem_protect::is_guest_shared;
use crate::mm::{GuestArch, HostMmu, HypMmu};
use crate::platform::Platform;
use crate::vmemmap::{HypPage, PageState};

/// Why the batch's walk stopped early.
#[derive(Debug)]
enum Stop {
    /// The batch is full.
    Full,
    /// The walk itself failed, or found a block (guests are mapped page by page).
    Broken,
}

impl From<pkvm_pgtable::Error> for Stop {
    fn from(_: pkvm_pgtable::Error) -> Self {
        Stop::Broken
    }
}

/// Whether `p` is a page a guest owns: nobody else has it.
#[inline]
pub(crate) fn is_guest_owned(p: &HypPage) -> bool {
    p.host_state() == PageState::NoPage
        && p.hyp_state() == PageState::NoPage
        && p.share_count() == 0
}

/// Whether `p` is a page a guest owns and shares with the host.
#[inline]
pub(crate) fn is_guest_shared_back(p: &HypPage) -> bool {
    p.host_state() == PageState::SharedBorrowed
        && p.hyp_state() == PageState::NoPage
        && p.share_count() == 0
}

impl<'a, P: Platform> Hyp<'a, P> {
    /// `vm_teardown(handle) -> guest pages left`: marks the VM dying and reclaims a first
    /// batch; 0 left means the VM is gone.
    ///
    /// # Errors
    /// `ENOENT` unknown handle (or a VM already gone); `EBUSY` while the vCPU runs.
    pub fn vm_teardown(&self, handle: u64) -> Result<u64, Error> {
        let (mut host, mut hyp) = self.lock_host_hyp();
        let mut vms = self.vms.lock();
        let vm = vms.get(handle)?;
        if vm.vcpu.as_ref().is_some_and(|v| v.running) {
            return Err(Error::Busy);
        }
        vm.dying = true;
        self.reclaim_locked(&mut host, &mut hyp, &mut vms, handle)
    }

    /// `vm_reclaim(handle) -> guest pages left`: the next batch of a dying VM.
    ///
    /// # Errors
    /// `ENOENT` unknown handle; `EPERM` for a VM whose teardown has not started.
    pub fn vm_reclaim(&self, handle: u64) -> Result<u64, Error> {
        let (mut host, mut hyp) = self.lock_host_hyp();
        let mut vms = self.vms.lock();
        if !vms.get(handle)?.dying {
            return Err(Error::Perm);
        }
        self.reclaim_locked(&mut host, &mut hyp, &mut vms, handle)
    }

    /// One batch of a dying VM, all locks held; the last one finishes the teardown.
    fn reclaim_locked(
        &self,
        host: &mut HostMmu<'a, P>,
        hyp: &mut HypMmu<'a, P>,
        vms: &mut VmTable<'a, P>,
        handle: u64,
    ) -> Result<u64, Error> {
        let vm = vms.get(handle)?;
        let mut bad = 0u64;
        // 1. The next guest leaves in IPA order (read only).
        let mut batch = [(0u64, 0u64); RECLAIM_BATCH as usize];
        let mut n = 0;
        let (lo, hi) = (vm.reclaim_from.max(vm.span.0), vm.span.1);
        if vm.pages > 0 && lo < hi {
            let r = vm
                .pgt
                .walk_mut(&mut vm.pool, lo, hi - lo, WalkFlags::LEAF, |_, v| {
                    if !desc::is_valid(v.pte) {
                        return Ok(());
                    }
                    if n == batch.len() {
                        return Err(Stop::Full);
                    }
                    if v.level != desc::LEAF_LEVEL {
                        return Err(Stop::Broken);
                    }
                    batch[n] = (v.addr, v.pte);
                    n += 1;
                    Ok(())
                });
            if let Err(Stop::Broken) = r {
                bad += 1;
            }
        }
        let batch = &batch[..n];
        // 2. Out of the guest stage-2, run by run of consecutive IPAs (one batched
        //    invalidation each).
        let arch = GuestArch {
            plat: self.plat,
            vttbr: vm.vttbr(),
        };
        let mut i = 0;
        while i < batch.len() {
            let mut j = i + 1;
            while j < batch.len() && batch[j].0 == batch[j - 1].0 + PAGE_SIZE {
                j += 1;
            }
            let (ipa, size) = (batch[i].0, (j - i) as u64 * PAGE_SIZE);
            if !matches!(vm.pgt.unmap(&mut vm.pool, &arch, ipa, size), Ok(s) if s == size) {
                bad += 1;
            }
            i = j;
        }
        // 3. Back to the host.
        for &(_, pte) in batch {
            let pa = desc::output_address(pte);
            let Some(p) = self.vmemmap.page(pa) else {
                bad += 1;
                continue;
            };
            if pte & GUEST_SHARED_BORROWED.bits() != 0 {
                if is_guest_shared(p) {
                    end_guest_share(p);
                } else {
                    bad += 1;
                }
            } else if pte & GUEST_SHARED_OWNED.bits() != 0 {
                if is_guest_shared_back(p) {
                    p.reset();
                } else {
                    bad += 1;
                }
            } else if is_guest_owned(p) {
                hyp.zero_foreign(pa);
                if host.clear(pa, PAGE_SIZE).is_err() {
                    bad += 1;
                }
                p.reset();
            } else {
                bad += 1;
            }
        }
        vm.pages = vm.pages.saturating_sub(n as u64);
        if let Some(&(last, _)) = batch.last() {
            vm.reclaim_from = last + PAGE_SIZE;
        }
        if vm.pages > 0 && n > 0 {
            return if bad == 0 {
                Ok(vm.pages)
            } else {
                Err(self.commit_failed("vm reclaim", bad))
            };
        }
        if vm.pages > 0 {
            // The walk found nothing where the count says pages are: broken invariant.
            bad += 1;
        }
        // 4. Nothing left: every leaf is gone and the emptied tables went back to the pool,
        //    so the memcache is a pool of zero pages (but for the free blocks' list nodes)
        //    around a zero root. The VMID may be reused (and the memcache handed back) only
        //    once no TLB entry of it survives.
        self.plat.dsb_ishst();
        self.plat.tlbi_guest_vmid(vm.vttbr());
        self.plat.dsb_ish();
        self.plat.isb();
        if vm.span.0 >= vm.span.1 {
            self.plat.zero(vm.pgt.root(), PAGE_SIZE);
        }
        let r = self.return_locked(host, hyp, vm.memcache, true);
        self.hyp_unpin_locked(vm.desc_pin);
        if let Some(v) = &vm.vcpu {
            for &pin in &v.pins {
                self.hyp_unpin_locked(pin);
            }
        }
        let slot = (handle & 0xff) as usize - 1;
        vms.slots[slot] = None;
        if bad != 0 {
            return Err(self.commit_failed("vm teardown", bad));
        }
        r.map(|()| 0)
    }
}
