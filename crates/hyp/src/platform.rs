//! What the portable core needs from the machine it runs on.

/// Access to physical memory that EL2 owns (its page pool, page tables, vmemmap backing).
///
/// At EL2 this goes through the hypervisor's linear map; in the simulator it indexes the
/// simulated RAM. All methods take `&self`: several CPUs use the same memory at once, and the
/// callers' locks say who may touch what.
pub trait PhysMem: Sync {
    /// Reads the naturally aligned `u64` at physical address `pa`.
    fn read_u64(&self, pa: u64) -> u64;
    /// Writes the naturally aligned `u64` at physical address `pa`.
    fn write_u64(&self, pa: u64, val: u64);
    /// Zeroes `len` bytes from `pa`; both are multiples of 8 (in practice of the page size).
    fn zero(&self, pa: u64, len: u64);
}

/// Everything else the core needs from the CPU: barriers, TLB maintenance and a log.
///
/// At EL2 these are single instructions; the simulator records them and models a TLB so that a
/// missing invalidation shows up as a stale translation.
pub trait Platform: PhysMem + GuestRunner {
    /// `dsb ishst`.
    fn dsb_ishst(&self);
    /// `dsb ish`.
    fn dsb_ish(&self);
    /// `isb`.
    fn isb(&self);
    /// `tlbi vae2is` (or `vale2is` when `last_level_only`) for `va`, with TTL hint `level`
    /// (0 = unknown).
    fn tlbi_el2_va(&self, va: u64, level: u8, last_level_only: bool);
    /// `tlbi ipas2e1is` for `ipa` in `vmid` (TTL hint `level`), then the stage-1 entries of that
    /// VMID (`vmalle1is`).
    fn tlbi_s2_ipa(&self, vmid: u16, ipa: u64, level: u8);
    /// Invalidates every TLB entry of `vmid`.
    fn tlbi_vmid(&self, vmid: u16);
    /// `tlbi ipas2e1is` + `vmalle1is` for a guest: `vttbr` (its stage-2 root | VMID << 48) is
    /// the `VTTBR_EL2` loaded around the invalidation (the real root, so that no speculative
    /// walk under that VMID can see another table), then the host's is restored.
    fn tlbi_guest_s2_ipa(&self, vttbr: u64, ipa: u64, level: u8);
    /// `tlbi vmalls12e1is` for a guest, with `vttbr` loaded as in
    /// [`Platform::tlbi_guest_s2_ipa`].
    fn tlbi_guest_vmid(&self, vttbr: u64);
    /// `tlbi alle2is`: invalidates every EL2 stage-1 entry.
    fn tlbi_el2_all(&self);
    /// Reads the `size`-byte (4 or 8) device register at `pa` (a device range EL2 emulates
    /// for the host and maps for itself).
    fn mmio_read(&self, pa: u64, size: u8) -> u64;
    /// Writes the `size`-byte (4 or 8) device register at `pa`.
    fn mmio_write(&self, pa: u64, size: u8, val: u64);
    /// Writes a diagnostic line (EL2 console or the simulator's log).
    fn log(&self, args: core::fmt::Arguments<'_>);
}

/// One guest entry, prepared and validated by the core ([`crate::vm`]).
///
/// The world switch loads the guest's general registers, EL1 system registers and FP/SIMD
/// registers straight from the host-shared vCPU structure at `vcpu_pa` and FP area at `fp_pa`
/// (no value of those is invalid) and saves them back there on exit. The fields that need
/// validation — `pc` and `pstate` — were read once by the core and are taken from here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestEntry {
    /// Physical address of the host-shared `pkvm_abi::guest::VcpuState` (pinned).
    pub vcpu_pa: u64,
    /// Physical address of the host-shared `pkvm_abi::guest::FpState` (pinned).
    pub fp_pa: u64,
    /// Validated guest PC.
    pub pc: u64,
    /// Validated guest PSTATE.
    pub pstate: u64,
    /// `VTTBR_EL2`: guest stage-2 root | VMID << 48.
    pub vttbr: u64,
}

/// How a guest run ended: which EL2 vector took the exception and its syndrome. The guest's
/// registers, PC and PSTATE were saved into the vCPU structure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestExit {
    /// 0 synchronous, 1 IRQ, 2 FIQ, 3 SError.
    pub vector: u64,
    /// `ESR_EL2`.
    pub esr: u64,
    /// `FAR_EL2`.
    pub far: u64,
    /// `HPFAR_EL2`.
    pub hpfar: u64,
}

/// The world switch: runs a guest until it exits to EL2.
pub trait GuestRunner {
    /// Saves the host's EL1 state, loads the guest's (registers, EL1 system registers,
    /// FP/SIMD, `VTTBR_EL2`, the guest `HCR_EL2`), runs it until an exception takes it to
    /// EL2, saves it and restores the host.
    fn run_guest(&self, entry: &GuestEntry) -> GuestExit;
}
