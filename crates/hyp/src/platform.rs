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
pub trait Platform: PhysMem {
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
    /// `tlbi alle2is`: invalidates every EL2 stage-1 entry.
    fn tlbi_el2_all(&self);
    /// Writes a diagnostic line (EL2 console or the simulator's log).
    fn log(&self, args: core::fmt::Arguments<'_>);
}
