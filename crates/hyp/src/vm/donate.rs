//! Host pages given to a protected guest (`host_donate_guest`): the way memory enters a
//! protected VM. The host keeps no access: its stage-2 entries become annotations carrying the
//! VM's owner id, so a host access aborts and the lazy fault path never maps the page (nor a
//! block covering it).

use pkvm_abi::{Error, PAGE_SIZE};
use pkvm_arch::addr::{Gfn, Pfn};
use pkvm_pgtable::MapFlags;

use super::{GUEST_OWNED_PROT, guest_owner_id};
use crate::hyp::Hyp;
use crate::mem_protect::{check_pages, is_host_exclusive, perm_unless};
use crate::mm::{GuestArch, pt_err};
use crate::platform::Platform;
use crate::vmemmap::PageState;

impl<P: Platform> Hyp<'_, P> {
    /// `host_donate_guest(handle, pfn, gfn, nr)`: host OWNED → NOPAGE (annotated with the
    /// VM's owner id), guest OWNED at `gfn` (read/write/execute, page by page).
    ///
    /// # Errors
    /// `EINVAL`/`ERANGE` bad host range; `ENOENT` unknown handle; `EPERM` for a VM that is not
    /// protected or is dying; `ERANGE` if the gfn range leaves the guest IPA space; `EPERM`
    /// unless every host page is the host's alone and every gfn unmapped; `ENOMEM` if the
    /// memcache (guest tables) or the host pool (host stage-2 tables) cannot hold the change.
    pub fn host_donate_guest(&self, handle: u64, pfn: Pfn, gfn: Gfn, nr: u64) -> Result<(), Error> {
        let pages = self.host_range(pfn, nr)?;
        let (mut host, mut hyp) = self.lock_host_hyp();
        let mut vms = self.vms.lock();
        let vm = vms.get(handle)?.live()?;
        if !vm.protected {
            return Err(Error::Perm);
        }
        let (ipa, size) = vm.ipa_range(gfn, nr)?;
        check_pages(pages, |p| perm_unless(is_host_exclusive(p)))?;
        vm.check_unmapped(ipa, size)?;
        let (start, end) = (pfn.addr().get(), pfn.addr().get() + size);
        let rsv = host.reserve(start, end)?;

        // Commit: the host loses the pages first, then the guest gets them.
        let r1 = host.annotate(&rsv, start, size, guest_owner_id(vm.vmid));
        for p in pages {
            p.set_host_state(PageState::NoPage);
        }
        // The host can no longer write the pages: its dirty cache lines go to memory now, so
        // a guest reading uncached sees what the host wrote before donating, and no later
        // eviction overwrites what the guest writes. (An address no descriptor holds cannot
        // be RAM the host owns: checked above.)
        for pa in (start..end).step_by(PAGE_SIZE as usize) {
            let _ = hyp.clean_foreign(pa);
        }
        let vttbr = vm.vttbr();
        let r2 = vm
            .pgt
            .map(
                &mut vm.pool,
                &GuestArch {
                    plat: self.plat,
                    vttbr,
                },
                ipa,
                size,
                start,
                GUEST_OWNED_PROT,
                MapFlags::FORCE_PAGES,
            )
            .map_err(pt_err);
        vm.cover(ipa, size);
        vm.pages += nr;
        r1.and(r2)
            .map_err(|e| self.commit_failed("donate guest", e))
    }
}
