//! Executable specification of pkvm-rs memory ownership.
//!
//! The specification is deliberately *not* written in terms of page tables: it keeps, per page,
//! the abstract ownership state of the host and of the hypervisor, the EL2 share count and the
//! pin count, and the set of EL2 stage-1 mappings of host memory. For every hypercall it says, as
//! a pure function of the pre-state, what the call must return and what the post-state must be.
//!
//! A test harness (the simulator in `crates/sim`) computes the same abstract state from the
//! concrete one — the real page tables and the real vmemmap — after each call and compares the
//! two with [`Checker`]. Any divergence is reported with the whole call trace.
//!
//! The spec has its own, naive, address-range logic: it does not share code with the hypervisor,
//! so the two are checked against each other.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod checker;
mod vm;

pub use checker::{Checker, Divergence};
pub use vm::{GuestOp, Vm};

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

pub use pkvm_abi::Error;
use pkvm_abi::PAGE_SHIFT;

/// The real limits (the EL2 image's): largest share count / count of EL2's own pins, and
/// largest count of host (debug) pins. One more is refused with [`Error::Busy`]. A
/// [`Machine`] says which limits it has (the simulator runs with small ones).
pub const MAX_COUNT: u16 = u16::MAX;
/// See [`MAX_COUNT`].
pub const MAX_HOST_PINS: u8 = u8::MAX;

/// Per-component page state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// Owned exclusively.
    Owned,
    /// Owned, and shared with another component.
    SharedOwned,
    /// Not owned, but shared with this component.
    SharedBorrowed,
    /// Not accessible to this component.
    NoPage,
}

/// What EL2 uses a page it owns for (where the page came from).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Use {
    /// Not owned by EL2.
    None,
    /// EL2's own memory from boot: never given away.
    Own,
    /// Donated by the host and unused: the only pages `hyp_donate_host` gives back.
    Idle,
    /// A VM's memcache (its stage-2 tables): given back only by the VM's teardown.
    Vm,
}

/// Abstract state of one physical page of memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Page {
    /// The host's state.
    pub host: State,
    /// The hypervisor's state.
    pub hyp: State,
    /// EL2 share count (pages shared host→hyp: one unshare per share).
    pub shares: u16,
    /// EL2's own pins (structures of live VMs). Only EL2 takes and drops them.
    pub pins: u16,
    /// Pins the host took with the debug pin call; the debug unpin call drops only these.
    pub host_pins: u8,
    /// For a page EL2 owns, what for.
    pub hyp_use: Use,
}

impl Page {
    /// A page of host memory that nobody else has touched.
    pub const HOST_OWNED: Page = Page {
        host: State::Owned,
        hyp: State::NoPage,
        shares: 0,
        pins: 0,
        host_pins: 0,
        hyp_use: Use::None,
    };
    /// A host page shared with a guest (not with EL2).
    pub const GUEST_SHARED: Page = Page {
        host: State::SharedOwned,
        hyp: State::NoPage,
        shares: 1,
        ..Page::HOST_OWNED
    };
    /// A host page donated to a guest: neither the host nor EL2 has it (the guest stage-2
    /// maps it, the host stage-2 carries the VM's annotation).
    pub const GUEST_OWNED: Page = Page {
        host: State::NoPage,
        ..Page::HOST_OWNED
    };
    /// A guest's page that the guest shares back with the host (`MEM_SHARE`).
    pub const GUEST_SHARED_BACK: Page = Page {
        host: State::SharedBorrowed,
        ..Page::HOST_OWNED
    };
    /// A page of the hypervisor's own memory.
    pub const HYP_OWNED: Page = Page {
        host: State::NoPage,
        hyp: State::Owned,
        hyp_use: Use::Own,
        ..Page::HOST_OWNED
    };
    /// A page the host donated to EL2, which EL2 does not use.
    pub const HYP_IDLE: Page = Page {
        hyp_use: Use::Idle,
        ..Page::HYP_OWNED
    };
}

/// Permission of an abstract EL2 mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HypProt {
    /// Read/write, never executable (everything the host shares or donates).
    ReadWrite,
}

/// Static description of the machine the spec reasons about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// RAM regions as `[start, end)` physical addresses, page aligned, any order, disjoint.
    pub memory: Vec<(u64, u64)>,
    /// The hypervisor's own memory (image, carve-out), owned by hyp from boot: `[start, end)`.
    pub hyp_memory: Vec<(u64, u64)>,
    /// Size of the host's physical address space in bits (the host stage-2 input size).
    pub pa_bits: u32,
    /// Device ranges hidden from the host, `[start, end)`: every host access aborts (the
    /// devices that could write memory behind stage-2). Other MMIO is the host's, or
    /// emulated for it by EL2.
    pub hidden_mmio: Vec<(u64, u64)>,
    /// Largest share count and largest count of EL2's own pins of a page ([`MAX_COUNT`] on
    /// the real machine).
    pub max_count: u16,
    /// Largest count of host (debug) pins of a page ([`MAX_HOST_PINS`] on the real machine).
    pub max_host_pins: u8,
}

impl Machine {
    fn in_one_region(&self, start: u64, end: u64) -> bool {
        self.memory.iter().any(|&(s, e)| start >= s && end <= e)
    }

    fn is_memory(&self, pa: u64) -> bool {
        self.memory.iter().any(|&(s, e)| pa >= s && pa < e)
    }

    fn is_hyp_memory(&self, pa: u64) -> bool {
        self.hyp_memory.iter().any(|&(s, e)| pa >= s && pa < e)
    }
}

/// A call the spec knows about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// `host_share_hyp(pfn, nr_pages)`.
    ShareHyp { pfn: u64, nr: u64 },
    /// `host_unshare_hyp(pfn, nr_pages)`.
    UnshareHyp { pfn: u64, nr: u64 },
    /// `host_donate_hyp(pfn, nr_pages)`.
    DonateHyp { pfn: u64, nr: u64 },
    /// `hyp_donate_host(pfn, nr_pages)` for pages the host donated earlier.
    HypDonateHost { pfn: u64, nr: u64 },
    /// The host pins shared pages (debug pin call).
    Pin { pfn: u64, nr: u64 },
    /// The host drops one of its pins (debug unpin call).
    Unpin { pfn: u64, nr: u64 },
    /// The debug read call: EL2 reads the `u64` at `pa` for the host, only from a page the host
    /// shares with it.
    DebugRead { pa: u64 },
    /// The host reads (or writes) one byte at a physical address through its stage-2.
    HostAccess { pa: u64, write: bool },
    /// EL2 reads one byte through its stage-1 (its own memory, or host memory it was given).
    HypRead { pa: u64 },
    /// `vm_init(desc_pa, mc_pfn, mc_nr)` with a descriptor holding `ipa_bits`, `nr_vcpus` and
    /// `flags` (the harness writes them there first when the host may). The new VM takes the
    /// lowest free slot; the harness maps slots to the handles the implementation returns.
    VmInit {
        desc_pa: u64,
        mc_pfn: u64,
        mc_nr: u64,
        ipa_bits: u64,
        nr_vcpus: u64,
        flags: u64,
    },
    /// `vcpu_init` of the VM in slot `vm` with its state and FP structures at `state_pa` and
    /// `fp_pa` (a free slot stands for a handle that names no VM).
    VcpuInit {
        vm: usize,
        state_pa: u64,
        fp_pa: u64,
    },
    /// `vcpu_run` of the VM in slot `vm` (the harness gives the vCPU a valid PSTATE and a
    /// guest that powers off): ownership does not change.
    VcpuRun { vm: usize },
    /// `vm_teardown` of the VM in slot `vm`: it becomes dying and a first batch of its guest
    /// pages is reclaimed ([`Call::VmReclaim`]).
    VmTeardown { vm: usize },
    /// `vm_reclaim` of the VM in slot `vm`: the next [`pkvm_abi::guest::RECLAIM_BATCH`]
    /// guest pages in gfn order go back to the host; when none is left the VM is gone.
    VmReclaim { vm: usize },
    /// `host_donate_guest`: host pages `[pfn, pfn + nr)` given to the (protected) VM in slot
    /// `vm` at `gfn`: host (OWNED, NOPAGE) → (NOPAGE, NOPAGE), guest OWNED.
    DonateGuest {
        vm: usize,
        pfn: u64,
        gfn: u64,
        nr: u64,
    },
    /// The vCPU of the VM in slot `vm` runs a guest that makes the memory call `op` on the
    /// page at `ipa` (its other arguments zero), then powers off. The outcome is the run's
    /// error, or the guest call's (`Ok` for SUCCESS, else the reason EL2 reports).
    GuestMem { vm: usize, op: GuestOp, ipa: u64 },
    /// `host_share_guest`: host pages `[pfn, pfn + nr)` into the VM in slot `vm` at `gfn`
    /// (read/write/execute): host (OWNED, NOPAGE) → host SHARED_OWNED with share count 1, EL2
    /// NOPAGE (the guest side, SHARED_BORROWED, is in the guest stage-2).
    ShareGuest {
        vm: usize,
        pfn: u64,
        gfn: u64,
        nr: u64,
    },
    /// `host_unshare_guest` of guest pages `[gfn, gfn + nr)` of the VM in slot `vm`.
    UnshareGuest { vm: usize, gfn: u64, nr: u64 },
}

impl Call {
    /// Whether the implementation may refuse the call with `ENOMEM` where the model succeeds
    /// (it needs page-table memory the model does not count): then nothing may change.
    #[must_use]
    pub fn may_run_out_of_memory(&self) -> bool {
        matches!(
            self,
            Call::ShareHyp { .. }
                | Call::DonateHyp { .. }
                | Call::VmInit { .. }
                | Call::VcpuInit { .. }
                | Call::ShareGuest { .. }
                | Call::DonateGuest { .. }
                | Call::GuestMem {
                    op: GuestOp::Unshare,
                    ..
                }
        )
    }
}

/// What a call is expected to produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A hypercall's return value.
    Ret(Result<(), Error>),
    /// An access that succeeds.
    Access,
    /// An access that faults (the host gets an abort injected; EL2 a failed read).
    Abort,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ret(Ok(())) => f.write_str("0"),
            Outcome::Ret(Err(e)) => write!(f, "{e}"),
            Outcome::Access => f.write_str("access"),
            Outcome::Abort => f.write_str("abort"),
        }
    }
}

/// The abstract ownership state of the whole machine.
///
/// Pages absent from `pages` are in their boot state: [`Page::HYP_OWNED`] inside
/// [`Machine::hyp_memory`], [`Page::HOST_OWNED`] elsewhere in memory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AbsState {
    /// Pages whose state differs from their boot state, by pfn.
    pub pages: BTreeMap<u64, Page>,
    /// EL2 stage-1 mappings of host memory (outside the hypervisor's own memory), by pfn.
    /// EL2 maps host memory at VA == PA, so one pfn stands for both.
    pub hyp_maps: BTreeMap<u64, HypProt>,
    /// The VMs, by slot.
    pub vms: BTreeMap<usize, Vm>,
}

/// The reference model: a machine and its abstract state.
#[derive(Clone, Debug)]
pub struct Spec {
    machine: Machine,
    state: AbsState,
}

pub(crate) type Range = (u64, u64);

impl Spec {
    /// The boot state of `machine`.
    #[must_use]
    pub fn new(machine: Machine) -> Self {
        Spec {
            machine,
            state: AbsState {
                pages: BTreeMap::new(),
                hyp_maps: BTreeMap::new(),
                vms: BTreeMap::new(),
            },
        }
    }

    /// A model starting from `state` (for example one read back from an implementation after
    /// a set-up the model does not describe, such as creating a VM).
    #[must_use]
    pub fn with_state(machine: Machine, state: AbsState) -> Self {
        Spec { machine, state }
    }

    /// The machine.
    #[must_use]
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The current abstract state.
    #[must_use]
    pub fn state(&self) -> &AbsState {
        &self.state
    }

    /// Abstract state of one page (boot state if untouched). Not meaningful outside memory.
    #[must_use]
    pub fn page(&self, pfn: u64) -> Page {
        if let Some(p) = self.state.pages.get(&pfn) {
            return *p;
        }
        self.boot_page(pfn)
    }

    fn boot_page(&self, pfn: u64) -> Page {
        if self.machine.is_hyp_memory(pfn << PAGE_SHIFT) {
            Page::HYP_OWNED
        } else {
            Page::HOST_OWNED
        }
    }

    fn set_page(&mut self, pfn: u64, p: Page) {
        if p == self.boot_page(pfn) {
            self.state.pages.remove(&pfn);
        } else {
            self.state.pages.insert(pfn, p);
        }
    }

    /// Argument validation shared by all range calls, in the order the ABI documents:
    /// zero pages or `pfn + nr` overflow → `EINVAL`; past the address space → `ERANGE`;
    /// not wholly inside one memory region → `EINVAL`.
    fn check_range(&self, pfn: u64, nr: u64) -> Result<Range, Error> {
        if nr == 0 {
            return Err(Error::Inval);
        }
        let end_pfn = pfn.checked_add(nr).ok_or(Error::Inval)?;
        let limit = 1u64 << (self.machine.pa_bits - PAGE_SHIFT);
        if end_pfn > limit {
            return Err(Error::Range);
        }
        if !self
            .machine
            .in_one_region(pfn << PAGE_SHIFT, end_pfn << PAGE_SHIFT)
        {
            return Err(Error::Inval);
        }
        Ok((pfn, end_pfn))
    }

    fn all(&self, (s, e): Range, f: impl Fn(Page) -> bool) -> bool {
        (s..e).all(|pfn| f(self.page(pfn)))
    }

    /// Applies `call` to the model and returns what it must produce.
    pub fn step(&mut self, call: Call) -> Outcome {
        match call {
            Call::ShareHyp { pfn, nr } => Outcome::Ret(self.share_hyp(pfn, nr)),
            Call::UnshareHyp { pfn, nr } => Outcome::Ret(self.unshare_hyp(pfn, nr)),
            Call::DonateHyp { pfn, nr } => Outcome::Ret(self.donate_hyp(pfn, nr)),
            Call::HypDonateHost { pfn, nr } => Outcome::Ret(self.hyp_donate_host(pfn, nr)),
            Call::Pin { pfn, nr } => Outcome::Ret(self.pin(pfn, nr)),
            Call::Unpin { pfn, nr } => Outcome::Ret(self.unpin(pfn, nr)),
            Call::DebugRead { pa } => Outcome::Ret(self.debug_read(pa)),
            Call::HostAccess { pa, .. } => self.host_access(pa),
            Call::VmInit {
                desc_pa,
                mc_pfn,
                mc_nr,
                ipa_bits,
                nr_vcpus,
                flags,
            } => Outcome::Ret(self.vm_init(desc_pa, (mc_pfn, mc_nr), ipa_bits, nr_vcpus, flags)),
            Call::VcpuInit {
                vm,
                state_pa,
                fp_pa,
            } => Outcome::Ret(self.vcpu_init(vm, state_pa, fp_pa)),
            Call::VcpuRun { vm } => Outcome::Ret(self.vcpu_run(vm)),
            Call::VmTeardown { vm } => Outcome::Ret(self.vm_teardown(vm)),
            Call::VmReclaim { vm } => Outcome::Ret(self.vm_reclaim(vm)),
            Call::DonateGuest { vm, pfn, gfn, nr } => {
                Outcome::Ret(self.donate_guest(vm, pfn, gfn, nr))
            }
            Call::GuestMem { vm, op, ipa } => Outcome::Ret(self.guest_mem(vm, op, ipa)),
            Call::ShareGuest { vm, pfn, gfn, nr } => {
                Outcome::Ret(self.share_guest(vm, pfn, gfn, nr))
            }
            Call::UnshareGuest { vm, gfn, nr } => Outcome::Ret(self.unshare_guest(vm, gfn, nr)),
            Call::HypRead { pa } => {
                // EL2 always maps its own memory; host memory only while shared or donated.
                if self.machine.is_hyp_memory(pa)
                    || self.state.hyp_maps.contains_key(&(pa >> PAGE_SHIFT))
                {
                    Outcome::Access
                } else {
                    Outcome::Abort
                }
            }
        }
    }

    fn is_shared(p: Page) -> bool {
        p.host == State::SharedOwned && p.hyp == State::SharedBorrowed && p.shares > 0
    }

    fn share_hyp(&mut self, pfn: u64, nr: u64) -> Result<(), Error> {
        let r = self.check_range(pfn, nr)?;
        // Both sides of every page: fresh (OWNED, NOPAGE) or already shared with hyp.
        if !self.all(r, |p| {
            (p.host == State::Owned && p.hyp == State::NoPage) || Self::is_shared(p)
        }) {
            return Err(Error::Perm);
        }
        let max = self.machine.max_count;
        if !self.all(r, |p| p.shares < max) {
            return Err(Error::Busy);
        }
        for pfn in r.0..r.1 {
            let mut p = self.page(pfn);
            if p.shares == 0 {
                p.host = State::SharedOwned;
                p.hyp = State::SharedBorrowed;
                self.state.hyp_maps.insert(pfn, HypProt::ReadWrite);
            }
            p.shares += 1;
            self.set_page(pfn, p);
        }
        Ok(())
    }

    fn unshare_hyp(&mut self, pfn: u64, nr: u64) -> Result<(), Error> {
        let r = self.check_range(pfn, nr)?;
        if !self.all(r, Self::is_shared) {
            return Err(Error::Perm);
        }
        if !self.all(r, |p| p.pins == 0 && p.host_pins == 0) {
            return Err(Error::Busy);
        }
        for pfn in r.0..r.1 {
            let mut p = self.page(pfn);
            p.shares -= 1;
            if p.shares == 0 {
                p.host = State::Owned;
                p.hyp = State::NoPage;
                self.state.hyp_maps.remove(&pfn);
            }
            self.set_page(pfn, p);
        }
        Ok(())
    }

    fn donate_hyp(&mut self, pfn: u64, nr: u64) -> Result<(), Error> {
        let r = self.check_range(pfn, nr)?;
        if !self.all(r, |p| p == Page::HOST_OWNED) {
            return Err(Error::Perm);
        }
        for pfn in r.0..r.1 {
            self.set_page(pfn, Page::HYP_IDLE);
            self.state.hyp_maps.insert(pfn, HypProt::ReadWrite);
        }
        Ok(())
    }

    fn hyp_donate_host(&mut self, pfn: u64, nr: u64) -> Result<(), Error> {
        let r = self.check_range(pfn, nr)?;
        // Only pages the host donated and EL2 does not use: never EL2's own memory, never a
        // VM's memcache (free or not).
        let own = (r.0..r.1).any(|pfn| self.machine.is_hyp_memory(pfn << PAGE_SHIFT));
        if own || !self.all(r, |p| p == Page::HYP_IDLE) {
            return Err(Error::Perm);
        }
        for pfn in r.0..r.1 {
            self.set_page(pfn, Page::HOST_OWNED);
            self.state.hyp_maps.remove(&pfn);
        }
        Ok(())
    }

    fn pin(&mut self, pfn: u64, nr: u64) -> Result<(), Error> {
        let r = self.check_range(pfn, nr)?;
        if !self.all(r, Self::is_shared) {
            return Err(Error::Perm);
        }
        let max = self.machine.max_host_pins;
        if !self.all(r, |p| p.host_pins < max) {
            return Err(Error::Busy);
        }
        for pfn in r.0..r.1 {
            let mut p = self.page(pfn);
            p.host_pins += 1;
            self.set_page(pfn, p);
        }
        Ok(())
    }

    fn unpin(&mut self, pfn: u64, nr: u64) -> Result<(), Error> {
        let r = self.check_range(pfn, nr)?;
        // Only the host's own pins: EL2's pins of a live VM's structures stay.
        if !self.all(r, |p| Self::is_shared(p) && p.host_pins > 0) {
            return Err(Error::Perm);
        }
        for pfn in r.0..r.1 {
            let mut p = self.page(pfn);
            p.host_pins -= 1;
            self.set_page(pfn, p);
        }
        Ok(())
    }

    fn debug_read(&self, pa: u64) -> Result<(), Error> {
        if !pa.is_multiple_of(8) {
            return Err(Error::Inval);
        }
        if self.machine.is_memory(pa) && Self::is_shared(self.page(pa >> PAGE_SHIFT)) {
            Ok(())
        } else {
            Err(Error::Perm)
        }
    }

    fn host_access(&self, pa: u64) -> Outcome {
        if pa >> self.machine.pa_bits != 0 {
            return Outcome::Abort;
        }
        if !self.machine.is_memory(pa) {
            // MMIO: identity-mapped for the host on demand (or emulated for it), except the
            // devices EL2 hides.
            if self
                .machine
                .hidden_mmio
                .iter()
                .any(|&(s, e)| pa >= s && pa < e)
            {
                return Outcome::Abort;
            }
            return Outcome::Access;
        }
        match self.page(pa >> PAGE_SHIFT).host {
            State::Owned | State::SharedOwned | State::SharedBorrowed => Outcome::Access,
            State::NoPage => Outcome::Abort,
        }
    }
}

#[cfg(test)]
mod tests;
