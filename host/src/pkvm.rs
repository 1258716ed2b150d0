//! EL2 for the host: the typed client of `pkvm_client` over the host's `HVC #0` ([`PKVM`]), and
//! the host's `share_hyp(obj)` / `unshare_hyp(obj)` helpers, which turn an object's bytes into
//! the page range covering them (VA == PA in the host) and issue one ranged hypercall.

use crate::hvc::Hvc;
use crate::ranges::pfn_range;
use pkvm_abi::{Error, Stat};
use pkvm_client::Client;

pub use pkvm_client::HcallError;

/// EL2's hypercalls, through `HVC #0`.
pub const PKVM: Client<Hvc> = Client::new(Hvc);

/// One EL2 statistic, or `u64::MAX` if EL2 does not answer (a check comparing it then fails).
pub fn stat(s: Stat) -> u64 {
    PKVM.stat(s).unwrap_or(u64::MAX)
}

/// The pages covering `[addr, addr + len)`; `EINVAL` (without a hypercall) when empty or
/// wrapping.
pub fn byte_pages(addr: u64, len: u64) -> Result<(u64, u64), HcallError> {
    pfn_range(addr, len).ok_or(HcallError::Errno(Error::Inval))
}

/// Shares the pages holding the bytes `[addr, addr + len)` with EL2, in one hypercall.
pub fn share_hyp_bytes(addr: u64, len: u64) -> Result<(), HcallError> {
    let (pfn, nr) = byte_pages(addr, len)?;
    PKVM.share_hyp(pfn, nr)
}

/// Drops one share of the pages holding `[addr, addr + len)`, in one hypercall.
pub fn unshare_hyp_bytes(addr: u64, len: u64) -> Result<(), HcallError> {
    let (pfn, nr) = byte_pages(addr, len)?;
    PKVM.unshare_hyp(pfn, nr)
}

fn obj_bytes<T: ?Sized>(obj: &T) -> (u64, u64) {
    (
        core::ptr::from_ref(obj).cast::<u8>() as u64,
        core::mem::size_of_val(obj) as u64,
    )
}

/// Shares the pages holding `obj` with EL2 (like Linux's `kvm_share_hyp(from, to)`): EL2
/// refcounts them, so two objects in one page are shared and unshared independently.
pub fn share_hyp<T: ?Sized>(obj: &T) -> Result<(), HcallError> {
    let (a, n) = obj_bytes(obj);
    share_hyp_bytes(a, n)
}

/// Undoes one [`share_hyp`] of `obj`.
pub fn unshare_hyp<T: ?Sized>(obj: &T) -> Result<(), HcallError> {
    let (a, n) = obj_bytes(obj);
    unshare_hyp_bytes(a, n)
}
