//! Typed host → EL2 hypercalls over [`crate::hvc::hvc`], and the host's `share_hyp(obj)` /
//! `unshare_hyp(obj)` helpers, which turn an object's bytes into the page range covering them
//! (VA == PA in the host) and issue one ranged hypercall.

use crate::hvc::hvc;
use crate::ranges::pfn_range;
use pkvm_abi::{Error, HostHcall, SMCCC_SUCCESS, Stat, decode_result, hvc_fid};

/// Why a hypercall did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HcallError {
    /// `x0` was not `SMCCC_SUCCESS` (not dispatched: unknown id, or debug calls disabled).
    NotSupported(u64),
    /// Dispatched, and the handler returned this error in `x1`.
    Errno(Error),
}

impl core::fmt::Display for HcallError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HcallError::NotSupported(x0) => write!(f, "not dispatched (x0 = {:#x})", x0),
            HcallError::Errno(e) => write!(f, "{e}"),
        }
    }
}

impl From<Error> for HcallError {
    fn from(e: Error) -> Self {
        HcallError::Errno(e)
    }
}

/// A hypercall's outcome: `Ok((x2, x3))` or why not.
pub type HcallResult = Result<(u64, u64), HcallError>;

/// Issues hypercall `id` with `x1 = a1`, `x2 = a2`.
#[inline(always)]
pub fn call(id: HostHcall, a1: u64, a2: u64) -> HcallResult {
    let [x0, x1, x2, x3] = hvc(hvc_fid(id), [a1, a2, 0, 0, 0, 0]);
    if x0 != SMCCC_SUCCESS {
        return Err(HcallError::NotSupported(x0));
    }
    decode_result(x1).map_err(HcallError::Errno)?;
    Ok((x2, x3))
}

/// A page-range hypercall (`pfn`, `nr_pages`), result only.
#[inline(always)]
pub fn range_call(id: HostHcall, pfn: u64, nr: u64) -> Result<(), HcallError> {
    call(id, pfn, nr).map(|_| ())
}

/// `host_share_hyp(pfn, nr)`.
pub fn share_hyp_pfns(pfn: u64, nr: u64) -> Result<(), HcallError> {
    range_call(HostHcall::HostShareHyp, pfn, nr)
}

/// `host_unshare_hyp(pfn, nr)`.
pub fn unshare_hyp_pfns(pfn: u64, nr: u64) -> Result<(), HcallError> {
    range_call(HostHcall::HostUnshareHyp, pfn, nr)
}

/// `host_donate_hyp(pfn, nr)`.
pub fn donate_hyp_pfns(pfn: u64, nr: u64) -> Result<(), HcallError> {
    range_call(HostHcall::HostDonateHyp, pfn, nr)
}

/// Debug: `hyp_donate_host(pfn, nr)`.
pub fn hyp_donate_host_pfns(pfn: u64, nr: u64) -> Result<(), HcallError> {
    range_call(HostHcall::DebugHypDonateHost, pfn, nr)
}

/// Debug: pin shared pages.
pub fn pin_pfns(pfn: u64, nr: u64) -> Result<(), HcallError> {
    range_call(HostHcall::DebugPin, pfn, nr)
}

/// Debug: undo one pin.
pub fn unpin_pfns(pfn: u64, nr: u64) -> Result<(), HcallError> {
    range_call(HostHcall::DebugUnpin, pfn, nr)
}

/// Debug: EL2 reads the `u64` at `pa` through its own stage-1.
pub fn hyp_read(pa: u64) -> Result<u64, HcallError> {
    call(HostHcall::DebugRead, pa, 0).map(|(v, _)| v)
}

/// Debug: one EL2 statistic.
pub fn stat(s: Stat) -> Result<u64, HcallError> {
    call(HostHcall::Stat, s as u64, 0).map(|(v, _)| v)
}

/// `Version`: `(ABI version, feature bits)`.
pub fn version() -> HcallResult {
    call(HostHcall::Version, 0, 0)
}

/// The pages covering `[addr, addr + len)`; `EINVAL` (without a hypercall) when empty or
/// wrapping.
pub fn byte_pages(addr: u64, len: u64) -> Result<(u64, u64), HcallError> {
    pfn_range(addr, len).ok_or(HcallError::Errno(Error::Inval))
}

/// Shares the pages holding the bytes `[addr, addr + len)` with EL2, in one hypercall.
pub fn share_hyp_bytes(addr: u64, len: u64) -> Result<(), HcallError> {
    let (pfn, nr) = byte_pages(addr, len)?;
    share_hyp_pfns(pfn, nr)
}

/// Drops one share of the pages holding `[addr, addr + len)`, in one hypercall.
pub fn unshare_hyp_bytes(addr: u64, len: u64) -> Result<(), HcallError> {
    let (pfn, nr) = byte_pages(addr, len)?;
    unshare_hyp_pfns(pfn, nr)
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
