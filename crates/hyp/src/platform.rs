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
