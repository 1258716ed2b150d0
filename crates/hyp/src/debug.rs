//! The debug hypercalls' portable side (built into the debug EL2 only): the host pins pages it
//! shares with EL2, and reads words of them through EL2. Both are confined to pages the host
//! shares with EL2: never EL2's own memory, nor donated or guest pages.

use pkvm_abi::Error;
use pkvm_arch::addr::{Pfn, PhysAddr};

use crate::hyp::Hyp;
use crate::mem_protect::{check_pages, is_shared_with_hyp, kernel};
use crate::platform::Platform;

impl<P: Platform> Hyp<'_, P> {
    /// The debug pin call: the host pins pages it shares with EL2, so that it cannot unshare
    /// them (`EBUSY`) until it unpins them. Counted apart from EL2's own pins.
    ///
    /// # Errors
    /// `EINVAL`/`ERANGE` for a bad range; `EPERM` if any page is not shared with EL2; `EBUSY`
    /// if a host pin count would overflow ([`MAX_HOST_PINS`](crate::mem_protect::MAX_HOST_PINS)).
    pub fn pin_shared(&self, pfn: Pfn, nr: u64) -> Result<(), Error> {
        let pages = self.host_range(pfn, nr)?;
        let _locks = self.lock_host_hyp();
        check_pages(pages, kernel::host_pin_check)?;
        for p in pages {
            kernel::host_pin_step(p);
        }
        Ok(())
    }

    /// Undoes one [`Hyp::pin_shared`]. It never touches EL2's own pins.
    ///
    /// # Errors
    /// `EINVAL`/`ERANGE` for a bad range; `EPERM` if any page is not shared with EL2 or holds
    /// no host pin.
    pub fn unpin_shared(&self, pfn: Pfn, nr: u64) -> Result<(), Error> {
        let pages = self.host_range(pfn, nr)?;
        let _locks = self.lock_host_hyp();
        check_pages(pages, kernel::host_unpin_check)?;
        for p in pages {
            kernel::host_unpin_step(p);
        }
        Ok(())
    }

    /// The debug read call: the `u64` at `pa`, which must lie in a page the host currently
    /// shares with EL2 (never EL2's own memory, its tables, pools or stacks, nor donated or
    /// guest pages). The hyp lock is held across the check and the read, so the page cannot be
    /// unshared (and unmapped) in between.
    ///
    /// # Errors
    /// `EINVAL` if `pa` is misaligned; `EPERM` unless its page is shared with EL2.
    pub fn hyp_read(&self, pa: PhysAddr) -> Result<u64, Error> {
        if !pa.is_aligned(8) {
            return Err(Error::Inval);
        }
        let _hyp = self.hyp.lock();
        let pa = pa.get();
        match self.vmemmap.page(pa) {
            Some(p) if self.map.is_memory(pa) && is_shared_with_hyp(p) => {
                Ok(self.plat.read_u64(pa))
            }
            _ => Err(Error::Perm),
        }
    }
}
