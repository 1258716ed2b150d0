//! The host side of the pkvm-rs hypercall ABI, typed: one place for the wrappers of every
//! [`HostHcall`], their error ([`HcallError`]), VM handles ([`VmHandle`]) and the decoded vCPU
//! exit ([`Exit`]), over any [`Transport`].
//!
//! Three users share it: the EL1 test host (`host/`, whose transport is a real `HVC #0`), the
//! simulator (`crates/sim`, whose `Machine` hands the registers to the same portable dispatcher
//! EL2 runs) and the fuzz target. So the register encoding of every call is exercised off the
//! target too. [`catalogue`] holds the negative catalogue as data, run by both the simulator
//! and the host.
//!
//! ```
//! use pkvm_client::{Client, HcallError, Transport};
//! use pkvm_abi::Error;
//!
//! /// A transport that refuses every share with `EPERM`.
//! struct Refuse;
//! impl Transport for Refuse {
//!     fn smccc(&self, _fid: u64, _args: [u64; 6]) -> [u64; 4] {
//!         [0, Error::Perm.errno() as u64, 0, 0]
//!     }
//! }
//! assert_eq!(Client::new(Refuse).share_hyp(0x40000, 1), Err(HcallError::Errno(Error::Perm)));
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod catalogue;
mod exit;

pub use exit::Exit;

use pkvm_abi::{Error, HostHcall, SMCCC_SUCCESS, Stat, decode_result, hvc_fid};

/// How a client reaches EL2: one SMCCC call.
pub trait Transport {
    /// Issues SMCCC function `fid` with `x1..=x6 = args`; returns `x0..=x3`.
    fn smccc(&self, fid: u64, args: [u64; 6]) -> [u64; 4];
}

impl<T: Transport + ?Sized> Transport for &T {
    #[inline(always)]
    fn smccc(&self, fid: u64, args: [u64; 6]) -> [u64; 4] {
        (**self).smccc(fid, args)
    }
}

/// Why a hypercall did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HcallError {
    /// `x0` was not `SMCCC_SUCCESS`: not dispatched (an unknown id, a boot-only id after
    /// finalisation, or a debug call on the production EL2). Carries `x0`.
    NotSupported(u64),
    /// Dispatched, and the handler returned this error in `x1`.
    Errno(Error),
}

impl HcallError {
    /// Short name: the errno's (`"EPERM"`, ...) or `"NOT_SUPPORTED"`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            HcallError::NotSupported(_) => "NOT_SUPPORTED",
            HcallError::Errno(e) => e.name(),
        }
    }
}

impl core::fmt::Display for HcallError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HcallError::NotSupported(x0) => write!(f, "not dispatched (x0 = {x0:#x})"),
            HcallError::Errno(e) => write!(f, "{e}"),
        }
    }
}

impl From<Error> for HcallError {
    fn from(e: Error) -> Self {
        HcallError::Errno(e)
    }
}

/// A VM as EL2 names it: the handle [`HostHcall::VmInit`] returned. Stale handles stay
/// representable on purpose (a call with one is `ENOENT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VmHandle(u64);

impl VmHandle {
    /// A handle from its wire value.
    #[must_use]
    pub const fn from_raw(raw: u64) -> Self {
        VmHandle(raw)
    }

    /// The wire value.
    #[must_use]
    pub const fn raw(self) -> u64 {
        self.0
    }
}

/// What [`HostHcall::Version`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    /// `major << 16 | minor` ([`pkvm_abi::ABI_VERSION`]).
    pub abi: u64,
    /// Feature bits ([`pkvm_abi::features`]).
    pub features: u64,
}

impl Version {
    /// Whether every bit of `features` is offered.
    #[must_use]
    pub const fn has(&self, features: u64) -> bool {
        self.features & features == features
    }
}

/// The typed hypercalls, over transport `T`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Client<T>(T);

impl<T> Client<T> {
    /// A client issuing its calls through `transport`.
    pub const fn new(transport: T) -> Self {
        Client(transport)
    }

    /// The transport.
    pub const fn transport(&self) -> &T {
        &self.0
    }
}

impl<T: Transport> Client<T> {
    /// Issues `id` with `x1.. = args` (at most six): `Ok([x2, x3])`, or why not.
    ///
    /// # Errors
    /// [`HcallError::NotSupported`] when `x0` is not `SMCCC_SUCCESS`, else the errno in `x1`
    /// (an unknown negative value is [`Error::Fault`]).
    #[inline(always)]
    pub fn call<const N: usize>(
        &self,
        id: HostHcall,
        args: [u64; N],
    ) -> Result<[u64; 2], HcallError> {
        const { assert!(N <= 6, "SMCCC passes at most six arguments") };
        let mut a = [0; 6];
        a[..N].copy_from_slice(&args);
        decode(self.0.smccc(hvc_fid(id), a))
    }

    /// [`Client::call`] for a call that returns nothing.
    #[inline(always)]
    fn unit<const N: usize>(&self, id: HostHcall, args: [u64; N]) -> Result<(), HcallError> {
        self.call(id, args).map(|_| ())
    }

    /// `Version`.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn version(&self) -> Result<Version, HcallError> {
        self.call(HostHcall::Version, [])
            .map(|[abi, features]| Version { abi, features })
    }

    /// `Finalize` (boot only: after boot, always [`HcallError::NotSupported`]).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn finalize(&self) -> Result<(), HcallError> {
        self.unit(HostHcall::Finalize, [])
    }

    /// `host_share_hyp(pfn, nr)`.
    ///
    /// # Errors
    /// As [`Client::call`].
    #[inline(always)]
    pub fn share_hyp(&self, pfn: u64, nr: u64) -> Result<(), HcallError> {
        self.unit(HostHcall::HostShareHyp, [pfn, nr])
    }

    /// `host_unshare_hyp(pfn, nr)`.
    ///
    /// # Errors
    /// As [`Client::call`].
    #[inline(always)]
    pub fn unshare_hyp(&self, pfn: u64, nr: u64) -> Result<(), HcallError> {
        self.unit(HostHcall::HostUnshareHyp, [pfn, nr])
    }

    /// `host_donate_hyp(pfn, nr)`.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn donate_hyp(&self, pfn: u64, nr: u64) -> Result<(), HcallError> {
        self.unit(HostHcall::HostDonateHyp, [pfn, nr])
    }

    /// Debug: `hyp_donate_host(pfn, nr)`.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn hyp_donate_host(&self, pfn: u64, nr: u64) -> Result<(), HcallError> {
        self.unit(HostHcall::DebugHypDonateHost, [pfn, nr])
    }

    /// Debug: pin shared pages.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn pin(&self, pfn: u64, nr: u64) -> Result<(), HcallError> {
        self.unit(HostHcall::DebugPin, [pfn, nr])
    }

    /// Debug: undo one [`Client::pin`].
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn unpin(&self, pfn: u64, nr: u64) -> Result<(), HcallError> {
        self.unit(HostHcall::DebugUnpin, [pfn, nr])
    }

    /// Debug: EL2 reads the `u64` at `pa` through its own stage-1.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn hyp_read(&self, pa: u64) -> Result<u64, HcallError> {
        self.call(HostHcall::DebugRead, [pa]).map(|[v, _]| v)
    }

    /// One EL2 statistic.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn stat(&self, s: Stat) -> Result<u64, HcallError> {
        self.call(HostHcall::Stat, [s as u64]).map(|[v, _]| v)
    }

    /// `VmInit`: a VM described by the [`pkvm_abi::guest::VmDesc`] at `desc_pa` (shared with
    /// EL2), with the `memcache_nr` pages at `memcache_pfn` donated for its stage-2.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn vm_init(
        &self,
        desc_pa: u64,
        memcache_pfn: u64,
        memcache_nr: u64,
    ) -> Result<VmHandle, HcallError> {
        self.call(HostHcall::VmInit, [desc_pa, memcache_pfn, memcache_nr])
            .map(|[h, _]| VmHandle(h))
    }

    /// `VcpuInit`: the VM's vCPU, its state and FP structures at `vcpu_pa` / `fp_pa` (shared
    /// with EL2).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn vcpu_init(&self, vm: VmHandle, vcpu_pa: u64, fp_pa: u64) -> Result<(), HcallError> {
        self.vcpu_init_at(vm, 0, vcpu_pa, fp_pa)
    }

    /// `VcpuInit` of vCPU `idx` (`x4`; below the VM's `nr_vcpus`).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn vcpu_init_at(
        &self,
        vm: VmHandle,
        idx: u64,
        vcpu_pa: u64,
        fp_pa: u64,
    ) -> Result<(), HcallError> {
        self.unit(HostHcall::VcpuInit, [vm.0, vcpu_pa, fp_pa, idx])
    }

    /// `HostShareGuest`: host pages `[pfn, pfn + nr)` at guest frames `[gfn, gfn + nr)`.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn share_guest(
        &self,
        vm: VmHandle,
        pfn: u64,
        gfn: u64,
        nr: u64,
        prot: u64,
    ) -> Result<(), HcallError> {
        self.unit(HostHcall::HostShareGuest, [vm.0, pfn, gfn, nr, prot])
    }

    /// `HostUnshareGuest`.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn unshare_guest(&self, vm: VmHandle, gfn: u64, nr: u64) -> Result<(), HcallError> {
        self.unit(HostHcall::HostUnshareGuest, [vm.0, gfn, nr])
    }

    /// `VcpuRun`: the raw exit reason (`x2`; [`Exit::decode`] turns it and the vCPU
    /// structure's exit record into an [`Exit`]).
    ///
    /// # Errors
    /// As [`Client::call`].
    #[inline(always)]
    pub fn vcpu_run(&self, vm: VmHandle) -> Result<u64, HcallError> {
        self.vcpu_run_at(vm, 0)
    }

    /// `VcpuRun` of vCPU `idx` (`x2`).
    ///
    /// # Errors
    /// As [`Client::call`].
    #[inline(always)]
    pub fn vcpu_run_at(&self, vm: VmHandle, idx: u64) -> Result<u64, HcallError> {
        self.call(HostHcall::VcpuRun, [vm.0, idx]).map(|[r, _]| r)
    }

    /// [`Client::run`] of vCPU `idx`.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn run_at(
        &self,
        vm: VmHandle,
        idx: u64,
        exit_record: impl FnOnce() -> pkvm_abi::guest::VcpuExit,
    ) -> Result<Exit, HcallError> {
        let reason = self.vcpu_run_at(vm, idx)?;
        Ok(Exit::decode(reason, &exit_record()))
    }

    /// `VcpuRun`, decoded: `exit_record` reads the vCPU structure's
    /// [`pkvm_abi::guest::VcpuExit`] (shared memory: the caller knows how to read it) once
    /// the run has returned.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn run(
        &self,
        vm: VmHandle,
        exit_record: impl FnOnce() -> pkvm_abi::guest::VcpuExit,
    ) -> Result<Exit, HcallError> {
        let reason = self.vcpu_run(vm)?;
        Ok(Exit::decode(reason, &exit_record()))
    }

    /// `HostDonateGuest`: host pages `[pfn, pfn + nr)` given to the (protected) VM at guest
    /// frames `[gfn, gfn + nr)`.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn donate_guest(
        &self,
        vm: VmHandle,
        pfn: u64,
        gfn: u64,
        nr: u64,
    ) -> Result<(), HcallError> {
        self.unit(HostHcall::HostDonateGuest, [vm.0, pfn, gfn, nr])
    }

    /// `VmTeardown`: marks the VM dying and reclaims a first batch; returns the guest pages
    /// left (0: the VM is gone; otherwise go on with [`Client::vm_reclaim`]).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn vm_teardown(&self, vm: VmHandle) -> Result<u64, HcallError> {
        self.call(HostHcall::VmTeardown, [vm.0]).map(|[n, _]| n)
    }

    /// `VmReclaim`: the next batch of a dying VM; returns the guest pages left (0: the VM is
    /// gone).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn vm_reclaim(&self, vm: VmHandle) -> Result<u64, HcallError> {
        self.call(HostHcall::VmReclaim, [vm.0]).map(|[n, _]| n)
    }

    /// The whole teardown: [`Client::vm_teardown`], then [`Client::vm_reclaim`] until nothing
    /// is left. Each call is bounded work at EL2; this loop is the host's.
    ///
    /// # Errors
    /// The first call that fails.
    pub fn vm_destroy(&self, vm: VmHandle) -> Result<(), HcallError> {
        let mut left = self.vm_teardown(vm)?;
        while left != 0 {
            left = self.vm_reclaim(vm)?;
        }
        Ok(())
    }
}

/// Decodes `x0..=x3` of a hypercall: `Ok([x2, x3])`, or why not.
///
/// # Errors
/// [`HcallError::NotSupported`] when `x0` is not `SMCCC_SUCCESS`, else the errno in `x1`.
#[inline(always)]
pub fn decode([x0, x1, x2, x3]: [u64; 4]) -> Result<[u64; 2], HcallError> {
    if x0 != SMCCC_SUCCESS {
        return Err(HcallError::NotSupported(x0));
    }
    decode_result(x1).map_err(HcallError::Errno)?;
    Ok([x2, x3])
}

#[cfg(test)]
mod tests;
