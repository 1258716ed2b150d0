//! Host pages shared into a non-protected guest (`host_share_guest`) and back
//! (`host_unshare_guest`).

use pkvm_abi::{Error, PAGE_SHIFT};
use pkvm_arch::addr::{Gfn, Pfn};
use pkvm_pgtable::{Leaf, MapFlags, desc};

use super::{GUEST_SHARED_BORROWED, end_guest_share, prot_from_abi};
use crate::hyp::Hyp;
use crate::mem_protect::{check_pages, is_guest_shared, is_host_exclusive, perm_unless};
use crate::mm::{GuestArch, pt_err};
use crate::platform::Platform;
use crate::vmemmap::PageState;

impl<P: Platform> Hyp<'_, P> {
    /// `host_share_guest(handle, pfn, gfn, nr, prot)`: maps host pages into the guest.
    ///
    /// # Errors
    /// `EINVAL`/`ERANGE` bad host range or bad `prot`; `ENOENT` unknown handle; `EPERM` for a
    /// protected or dying VM; `ERANGE` if the gfn range leaves the guest IPA space; `EPERM`
    /// unless every host page is the host's alone and every gfn unmapped; `ENOMEM` if the
    /// memcache cannot hold the tables.
    pub fn host_share_guest(
        &self,
        handle: u64,
        pfn: Pfn,
        gfn: Gfn,
        nr: u64,
        prot: u64,
    ) -> Result<(), Error> {
        let pages = self.host_range(pfn, nr)?;
        let prot = prot_from_abi(prot)?;
        let _locks = self.lock_host_hyp();
        let mut vms = self.vms.lock();
        let vm = vms.get(handle)?.live()?;
        if vm.protected {
            // A protected VM's memory is donated: the host keeps no access to it.
            return Err(Error::Perm);
        }
        let (ipa, size) = vm.ipa_range(gfn, nr)?;
        check_pages(pages, |p| perm_unless(is_host_exclusive(p)))?;
        vm.check_unmapped(ipa, size)?;
        let vttbr = vm.vttbr();
        let r = {
            let mm = &mut vm.pool;
            vm.pgt
                .map(
                    mm,
                    &GuestArch {
                        plat: self.plat,
                        vttbr,
                    },
                    ipa,
                    size,
                    pfn.addr().get(),
                    prot,
                    MapFlags::FORCE_PAGES,
                )
                .map_err(pt_err)
        };
        for p in pages {
            p.set_host_state(PageState::SharedOwned);
            p.set_share_count(1);
        }
        vm.cover(ipa, size);
        vm.pages += nr;
        r.map_err(|e| self.commit_failed("share guest", e))
    }

    /// `host_unshare_guest(handle, gfn, nr)`: unmaps pages shared into the guest (with TLB
    /// invalidation for its VMID) and gives them back to the host alone.
    ///
    /// # Errors
    /// `EINVAL` zero pages; `ENOENT` unknown handle; `EPERM` for a dying VM (its pages come
    /// back through reclaim); `ERANGE` outside the guest IPA space; `EPERM` unless every gfn
    /// maps a page the host shared (both sides checked).
    pub fn host_unshare_guest(&self, handle: u64, gfn: Gfn, nr: u64) -> Result<(), Error> {
        if nr == 0 {
            return Err(Error::Inval);
        }
        let _locks = self.lock_host_hyp();
        let mut vms = self.vms.lock();
        let vm = vms.get(handle)?.live()?;
        let (ipa, size) = vm.ipa_range(gfn, nr)?;
        for i in 0..nr {
            let page = match vm.pgt.leaf(&vm.pool, ipa + (i << PAGE_SHIFT)) {
                Ok(Leaf::Valid { pte, level: 3 }) if pte & GUEST_SHARED_BORROWED.bits() != 0 => {
                    self.vmemmap.page(desc::output_address(pte))
                }
                _ => None,
            };
            if !page.is_some_and(is_guest_shared) {
                return Err(Error::Perm);
            }
        }
        for i in 0..nr {
            if let Ok(Leaf::Valid { pte, .. }) = vm.pgt.leaf(&vm.pool, ipa + (i << PAGE_SHIFT))
                && let Some(p) = self.vmemmap.page(desc::output_address(pte))
            {
                end_guest_share(p);
            }
        }
        vm.pages = vm.pages.saturating_sub(nr);
        let vttbr = vm.vttbr();
        let mm = &mut vm.pool;
        let arch = GuestArch {
            plat: self.plat,
            vttbr,
        };
        match vm.pgt.unmap(mm, &arch, ipa, size) {
            Ok(n) if n == size => Ok(()),
            r => Err(self.commit_failed("unshare guest", r)),
        }
    }
}
