//! The model of VMs: their lifecycle (init, vCPU init, run, teardown in batches), the pages
//! EL2 pins or owns for them, host pages shared into them (non-protected) or donated to them
//! (protected) at any guest frame, and the guest's own memory calls (share back, unshare,
//! relinquish).
//!
//! Each call checks its arguments in the order the ABI documents, and the first failing check
//! decides the error; a refused call changes nothing.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use pkvm_abi::guest::{
    FP_STATE_SIZE, MAX_IPA_BITS, MAX_VMS, MEMCACHE_MAX_PAGES, MEMCACHE_MIN_PAGES, MIN_IPA_BITS,
    RECLAIM_BATCH, VcpuState, VmDesc, vm_flags,
};
use pkvm_abi::{Error, PAGE_SHIFT, PAGE_SIZE};

use crate::{Page, Range, Spec, Use};

/// A VM in the model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Vm {
    /// IPA size in bits.
    pub ipa_bits: u32,
    /// The pages of its descriptor `[start, end)` (pfns), pinned by EL2.
    pub desc: (u64, u64),
    /// Its memcache `[start, end)` (pfns), owned by EL2 for it ([`Use::Vm`]).
    pub memcache: (u64, u64),
    /// The pages of its vCPU's state and FP structures (pfn ranges), pinned by EL2.
    pub vcpu: Option<[(u64, u64); 2]>,
    /// Host pages shared into it: guest frame → host frame.
    pub guest: BTreeMap<u64, u64>,
    /// A protected VM.
    pub protected: bool,
    /// Teardown has started.
    pub dying: bool,
    /// Pages it owns (donated): guest frame → (host frame, whether the guest shares it back
    /// with the host).
    pub owned: BTreeMap<u64, (u64, bool)>,
}

/// A guest memory call ([`crate::Call::GuestMem`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuestOp {
    /// `MEM_SHARE`.
    Share,
    /// `MEM_UNSHARE`.
    Unshare,
    /// `MEM_RELINQUISH`.
    Relinquish,
}

/// The pfn range `[first, end)` covering `[pa, pa + len)`, or `EINVAL` on overflow.
fn pfns_of(pa: u64, len: u64) -> Result<Range, Error> {
    let end = pa.checked_add(len).ok_or(Error::Inval)?;
    Ok((pa >> PAGE_SHIFT, ((end - 1) >> PAGE_SHIFT) + 1))
}

impl Spec {
    fn vm(&self, slot: usize) -> Result<&Vm, Error> {
        self.state.vms.get(&slot).ok_or(Error::NoEnt)
    }

    /// The VM in `slot` if it exists (`ENOENT`) and is not dying (`EPERM`).
    fn live_vm(&self, slot: usize) -> Result<&Vm, Error> {
        let vm = self.vm(slot)?;
        if vm.dying { Err(Error::Perm) } else { Ok(vm) }
    }

    /// EL2 pins `r` for a structure it uses: range checks, then every page shared with EL2
    /// (`EPERM`), then no pin count saturated (`EBUSY`). Nothing changes on error.
    fn hyp_pin(&mut self, (pfn, end): Range) -> Result<(), Error> {
        let r = self.check_range(pfn, end - pfn)?;
        if !self.all(r, Self::is_shared) {
            return Err(Error::Perm);
        }
        let max = self.machine.max_count;
        if !self.all(r, |p| p.pins < max) {
            return Err(Error::Busy);
        }
        for pfn in r.0..r.1 {
            let mut p = self.page(pfn);
            p.pins += 1;
            self.set_page(pfn, p);
        }
        Ok(())
    }

    fn hyp_unpin(&mut self, (s, e): Range) {
        for pfn in s..e {
            let mut p = self.page(pfn);
            p.pins = p.pins.saturating_sub(1);
            self.set_page(pfn, p);
        }
    }

    pub(crate) fn vm_init(
        &mut self,
        desc_pa: u64,
        (mc_pfn, mc_nr): (u64, u64),
        ipa_bits: u64,
        nr_vcpus: u64,
        flags: u64,
    ) -> Result<(), Error> {
        if !desc_pa.is_multiple_of(8) || !(MEMCACHE_MIN_PAGES..=MEMCACHE_MAX_PAGES).contains(&mc_nr)
        {
            return Err(Error::Inval);
        }
        let desc = pfns_of(desc_pa, size_of::<VmDesc>() as u64)?;
        let Some(slot) = (0..MAX_VMS).find(|s| !self.state.vms.contains_key(s)) else {
            return Err(Error::NoMem);
        };
        self.hyp_pin(desc)?;
        let max_ipa = MAX_IPA_BITS.min(u64::from(self.machine.pa_bits));
        if !(MIN_IPA_BITS..=max_ipa).contains(&ipa_bits)
            || !(1..=pkvm_abi::guest::MAX_VCPUS_PER_VM as u64).contains(&nr_vcpus)
            || flags & !vm_flags::ALL != 0
        {
            self.hyp_unpin(desc);
            return Err(Error::Inval);
        }
        let mc = match self.check_range(mc_pfn, mc_nr) {
            Ok(r) if self.all(r, |p| p == Page::HOST_OWNED) => r,
            r => {
                self.hyp_unpin(desc);
                return Err(r.err().unwrap_or(Error::Perm));
            }
        };
        for pfn in mc.0..mc.1 {
            self.set_page(
                pfn,
                Page {
                    hyp_use: Use::Vm,
                    ..Page::HYP_OWNED
                },
            );
            self.state.hyp_maps.insert(pfn, crate::HypProt::ReadWrite);
        }
        self.state.vms.insert(
            slot,
            Vm {
                ipa_bits: ipa_bits as u32,
                desc,
                memcache: mc,
                vcpu: None,
                guest: BTreeMap::new(),
                protected: flags & vm_flags::PROTECTED != 0,
                dying: false,
                owned: BTreeMap::new(),
            },
        );
        Ok(())
    }

    pub(crate) fn vcpu_init(
        &mut self,
        slot: usize,
        state_pa: u64,
        fp_pa: u64,
    ) -> Result<(), Error> {
        if !state_pa.is_multiple_of(8) || !fp_pa.is_multiple_of(16) {
            return Err(Error::Inval);
        }
        let sp = pfns_of(state_pa, size_of::<VcpuState>() as u64)?;
        let fp = pfns_of(fp_pa, FP_STATE_SIZE as u64)?;
        if self.live_vm(slot)?.vcpu.is_some() {
            return Err(Error::Busy);
        }
        self.hyp_pin(sp)?;
        self.hyp_pin(fp).inspect_err(|_| self.hyp_unpin(sp))?;
        if let Some(vm) = self.state.vms.get_mut(&slot) {
            vm.vcpu = Some([sp, fp]);
        }
        Ok(())
    }

    pub(crate) fn vcpu_run(&self, slot: usize) -> Result<(), Error> {
        match self.live_vm(slot)?.vcpu {
            Some(_) => Ok(()),
            None => Err(Error::NoEnt),
        }
    }

    pub(crate) fn vm_teardown(&mut self, slot: usize) -> Result<(), Error> {
        let vm = self.state.vms.get_mut(&slot).ok_or(Error::NoEnt)?;
        vm.dying = true;
        self.reclaim_batch(slot);
        Ok(())
    }

    pub(crate) fn vm_reclaim(&mut self, slot: usize) -> Result<(), Error> {
        if !self.vm(slot)?.dying {
            return Err(Error::Perm);
        }
        self.reclaim_batch(slot);
        Ok(())
    }

    /// The next batch of the dying VM in `slot`: its first [`RECLAIM_BATCH`] guest frames
    /// (shared in or owned alike, in gfn order) go back to the host alone; with none left the
    /// VM is gone.
    fn reclaim_batch(&mut self, slot: usize) {
        let Some(vm) = self.state.vms.get_mut(&slot) else {
            return;
        };
        let mut frames: Vec<(u64, u64)> = vm
            .guest
            .iter()
            .map(|(&g, &p)| (g, p))
            .chain(vm.owned.iter().map(|(&g, &(p, _))| (g, p)))
            .collect();
        frames.sort_unstable();
        frames.truncate(RECLAIM_BATCH as usize);
        for &(gfn, _) in &frames {
            vm.guest.remove(&gfn);
            vm.owned.remove(&gfn);
        }
        let done = vm.guest.is_empty() && vm.owned.is_empty();
        for (_, pfn) in frames {
            self.set_page(pfn, Page::HOST_OWNED);
        }
        if !done {
            return;
        }
        let Some(vm) = self.state.vms.remove(&slot) else {
            return;
        };
        for pfn in vm.memcache.0..vm.memcache.1 {
            self.set_page(pfn, Page::HOST_OWNED);
            self.state.hyp_maps.remove(&pfn);
        }
        self.hyp_unpin(vm.desc);
        for r in vm.vcpu.into_iter().flatten() {
            self.hyp_unpin(r);
        }
    }

    /// Whether guest frames `[g, g_end)` are all unmapped in `vm`.
    fn frames_free(vm: &Vm, g: u64, g_end: u64) -> bool {
        vm.guest.range(g..g_end).next().is_none() && vm.owned.range(g..g_end).next().is_none()
    }

    /// The checks of a host range `[pfn, pfn + nr)` going into the VM in `slot` at `gfn`, in
    /// the ABI's order: the host range; the VM (`ENOENT`, dying: `EPERM`); its kind
    /// (`protected` for a donation, not for a share: `EPERM`); the guest range (`ERANGE`);
    /// every page the host's alone and every frame free (`EPERM`).
    fn check_new_guest_pages(
        &self,
        slot: usize,
        (pfn, gfn, nr): (u64, u64, u64),
        protected: bool,
    ) -> Result<(), Error> {
        let r = self.check_range(pfn, nr)?;
        let vm = self.live_vm(slot)?;
        if vm.protected != protected {
            return Err(Error::Perm);
        }
        let (g, g_end) = Self::guest_range(vm, gfn, nr)?;
        if !self.all(r, |p| p == Page::HOST_OWNED) || !Self::frames_free(vm, g, g_end) {
            return Err(Error::Perm);
        }
        Ok(())
    }

    pub(crate) fn donate_guest(
        &mut self,
        slot: usize,
        pfn: u64,
        gfn: u64,
        nr: u64,
    ) -> Result<(), Error> {
        self.check_new_guest_pages(slot, (pfn, gfn, nr), true)?;
        for i in 0..nr {
            self.set_page(pfn + i, Page::GUEST_OWNED);
        }
        if let Some(vm) = self.state.vms.get_mut(&slot) {
            vm.owned
                .extend((0..nr).map(|i| (gfn + i, (pfn + i, false))));
        }
        Ok(())
    }

    /// A guest memory call from a run of the vCPU of `slot`: first the run's own checks, then
    /// the call's — alignment (`EINVAL`), the IPA space (`ERANGE`), the page's state
    /// (`EPERM`).
    pub(crate) fn guest_mem(&mut self, slot: usize, op: GuestOp, ipa: u64) -> Result<(), Error> {
        self.vcpu_run(slot)?;
        if !ipa.is_multiple_of(PAGE_SIZE) {
            return Err(Error::Inval);
        }
        let gfn = ipa >> PAGE_SHIFT;
        let vm = self.vm(slot)?;
        Self::guest_range(vm, gfn, 1)?;
        let owned = vm.owned.get(&gfn).copied();
        let shared_in = vm.guest.get(&gfn).copied();
        let (pfn, new_page, new_owned) = match (op, owned, shared_in) {
            (GuestOp::Share, Some((pfn, false)), _) if self.page(pfn) == Page::GUEST_OWNED => {
                (pfn, Page::GUEST_SHARED_BACK, Some((pfn, true)))
            }
            (GuestOp::Unshare, Some((pfn, true)), _)
                if self.page(pfn) == Page::GUEST_SHARED_BACK =>
            {
                (pfn, Page::GUEST_OWNED, Some((pfn, false)))
            }
            (GuestOp::Relinquish, Some((pfn, false)), _) if self.page(pfn) == Page::GUEST_OWNED => {
                (pfn, Page::HOST_OWNED, None)
            }
            (GuestOp::Relinquish, None, Some(pfn)) if self.page(pfn) == Page::GUEST_SHARED => {
                (pfn, Page::HOST_OWNED, None)
            }
            _ => return Err(Error::Perm),
        };
        self.set_page(pfn, new_page);
        if let Some(vm) = self.state.vms.get_mut(&slot) {
            match new_owned {
                Some(o) => {
                    vm.owned.insert(gfn, o);
                }
                None => {
                    vm.owned.remove(&gfn);
                    vm.guest.remove(&gfn);
                }
            }
        }
        Ok(())
    }

    /// `(gfn, end)` of `[gfn, gfn + nr)` inside the VM's IPA space, or `ERANGE`.
    fn guest_range(vm: &Vm, gfn: u64, nr: u64) -> Result<Range, Error> {
        let end = gfn.checked_add(nr).ok_or(Error::Range)?;
        if end > 1u64 << (vm.ipa_bits - PAGE_SHIFT) {
            return Err(Error::Range);
        }
        Ok((gfn, end))
    }

    pub(crate) fn share_guest(
        &mut self,
        slot: usize,
        pfn: u64,
        gfn: u64,
        nr: u64,
    ) -> Result<(), Error> {
        self.check_new_guest_pages(slot, (pfn, gfn, nr), false)?;
        for i in 0..nr {
            self.set_page(pfn + i, Page::GUEST_SHARED);
        }
        if let Some(vm) = self.state.vms.get_mut(&slot) {
            vm.guest.extend((0..nr).map(|i| (gfn + i, pfn + i)));
        }
        Ok(())
    }

    pub(crate) fn unshare_guest(&mut self, slot: usize, gfn: u64, nr: u64) -> Result<(), Error> {
        if nr == 0 {
            return Err(Error::Inval);
        }
        let vm = self.live_vm(slot)?;
        let (g, g_end) = Self::guest_range(vm, gfn, nr)?;
        let mut pfns = alloc::vec::Vec::new();
        for gfn in g..g_end {
            match vm.guest.get(&gfn) {
                Some(&pfn) if self.page(pfn) == Page::GUEST_SHARED => pfns.push(pfn),
                _ => return Err(Error::Perm),
            }
        }
        for pfn in pfns {
            self.set_page(pfn, Page::HOST_OWNED);
        }
        if let Some(vm) = self.state.vms.get_mut(&slot) {
            for gfn in g..g_end {
                vm.guest.remove(&gfn);
            }
        }
        Ok(())
    }
}
