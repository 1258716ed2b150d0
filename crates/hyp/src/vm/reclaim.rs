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
use pkvm_pgtable::{MmOps, VisitKind, WalkFlags, desc};

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

/// Clears the host stage-2 annotations of `[start, end)` (nothing if empty): 1 if that failed.
fn clear_run<P: Platform>(host: &mut HostMmu<'_, P>, (start, end): (u64, u64)) -> u64 {
    u64::from(start < end && host.clear(start, end - start).is_err())
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
        if vm.running() {
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

    /// One page of a dying VM back to the host (its leaf `pte`): a page the host shared in,
    /// or one the guest shared back, as it is; a page the guest owned zeroed first (its host
    /// annotation is cleared with the rest of `run`, the current run of consecutive such
    /// pages). Returns 1 for a page in a state it cannot be in (a broken invariant).
    /// Out of line: inlined into the walk's closure it makes the walk itself slower (the
    /// non-protected teardown measured 2,815 EL2 instructions out of line, 3,469 inlined).
    #[inline(never)]
    fn give_back(
        &self,
        host: &mut HostMmu<'a, P>,
        hyp: &mut HypMmu<'a, P>,
        pte: u64,
        run: &mut (u64, u64),
    ) -> u64 {
        let pa = desc::output_address(pte);
        let Some(p) = self.vmemmap.page(pa) else {
            return 1;
        };
        if pte & GUEST_SHARED_BORROWED.bits() != 0 {
            if !is_guest_shared(p) {
                return 1;
            }
            end_guest_share(p);
        } else if pte & GUEST_SHARED_OWNED.bits() != 0 {
            if !is_guest_shared_back(p) {
                return 1;
            }
            p.reset();
        } else {
            if !is_guest_owned(p) || !hyp.zero_foreign(pa) {
                // (A page that could not be zeroed stays out of the host's reach.)
                return 1;
            }
            p.reset();
            let mut bad = 0;
            if run.1 != pa {
                bad = clear_run(host, *run);
                run.0 = pa;
            }
            run.1 = pa + PAGE_SIZE;
            return bad;
        }
        0
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
        // 1. One walk over the next guest leaves, in IPA order: each page goes back to the
        //    host as it is met (`give_back`). The VM is dying: it never runs again, so its
        //    stage-2 is dead already, and nobody sees a page both in it and back with the
        //    host (all locks are held until its entries are gone and invalidated, below).
        //    When the leaves left all fit in this batch, the walk also clears every non-zero
        //    entry left (leaves, then each table descriptor after its subtree; earlier batches
        //    emptied and freed what lies below `lo`), which leaves the table pages zero.
        let mut n = 0u64;
        // The IPA of the batch's last leaf; the current run of owned pages whose host
        // annotations go.
        let mut last_ipa = 0;
        let mut run = (0u64, 0u64);
        let last = vm.pages <= RECLAIM_BATCH;
        // The walk went to the end of the span without finding anything wrong.
        let mut complete = true;
        let (lo, hi) = (vm.reclaim_from.max(vm.span.0), vm.span.1);
        // (A VM without pages is always on its last batch: its walk clears the tables.)
        if lo < hi {
            let flags = if last {
                WalkFlags::LEAF | WalkFlags::TABLE_POST
            } else {
                WalkFlags::LEAF
            };
            let r = vm.pgt.walk_mut(&mut vm.pool, lo, hi - lo, flags, |mm, v| {
                if v.pte == 0 {
                    return Ok(());
                }
                if v.kind == VisitKind::Leaf && desc::is_valid(v.pte) {
                    if n == RECLAIM_BATCH {
                        return Err(Stop::Full);
                    }
                    if v.level != desc::LEAF_LEVEL {
                        return Err(Stop::Broken);
                    }
                    last_ipa = v.addr;
                    n += 1;
                    bad += self.give_back(host, hyp, v.pte, &mut run);
                }
                if last {
                    mm.write_pte(v.ptep, 0);
                }
                Ok(())
            });
            // A full batch is an error only when it was to be the last one.
            if r.is_err() && (last || matches!(r, Err(Stop::Broken))) {
                bad += 1;
                complete = false;
            }
        }
        bad += clear_run(host, run);
        // 2. The entries go, invalidated: the whole VMID after the last batch (it may be
        //    reused, and the memcache handed back, only once no TLB entry of it survives);
        //    otherwise `[lo, last]`, which holds exactly this batch's leaves, in one unmap
        //    (invalidations batched, emptied tables back to the pool).
        if last {
            self.plat.dsb_ishst();
            self.plat.tlbi_guest_vmid(vm.vttbr());
            self.plat.dsb_ish();
            self.plat.isb();
        } else if n > 0 {
            let arch = GuestArch {
                plat: self.plat,
                vttbr: vm.vttbr(),
            };
            // (From `lo`: annotations — MMIO guard — before the first leaf go too, so that
            // nothing is left below `reclaim_from`.)
            let size = last_ipa + PAGE_SIZE - lo;
            let want = n * PAGE_SIZE;
            if !matches!(vm.pgt.unmap(&mut vm.pool, &arch, lo, size), Ok(s) if s == want) {
                bad += 1;
            }
        }
        vm.pages = vm.pages.saturating_sub(n);
        if n > 0 {
            vm.reclaim_from = last_ipa + PAGE_SIZE;
        }
        if last && vm.pages != 0 {
            // The count said this batch would empty the VM, the walk found fewer pages.
            bad += 1;
        }
        if last && !complete {
            // A broken invariant: the VM keeps what is left (dying), rather than handing back
            // a memcache with live guest entries in it.
            return Err(self.commit_failed("vm teardown", bad));
        }
        if !last {
            if n == 0 {
                // The count says pages are left, the walk found none: a broken invariant
                // (reported, rather than a host looping on the same answer forever).
                bad += 1;
            }
            return if bad == 0 {
                Ok(vm.pages)
            } else {
                Err(self.commit_failed("vm reclaim", bad))
            };
        }
        // 4. Nothing left: the memcache is a pool of zero pages (but for the free blocks'
        //    list nodes) around a zero root.
        if vm.span.0 >= vm.span.1 {
            self.plat.zero(vm.pgt.root(), PAGE_SIZE);
        }
        // A protected vCPU's private state (a page of the memcache) goes back zeroed too, the
        // zeroes cleaned to memory.
        for p in vm.vcpus.iter().flatten().filter_map(|v| v.private) {
            self.plat.zero(p.get(), PAGE_SIZE);
            self.plat.clean_dcache_to_poc(p.get(), PAGE_SIZE);
        }
        let r = self.return_locked(host, hyp, vm.memcache, true);
        self.hyp_unpin_locked(vm.desc_pin);
        for v in vm.vcpus.iter().flatten() {
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
