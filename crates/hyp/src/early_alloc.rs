//! The boot-time bump allocator, used to build EL2's page tables before the vmemmap exists.
//!
//! It hands out zeroed pages from the hypervisor carve-out `[base, base + nr_pages * 4 KiB)` in
//! address order and never frees. Its [`MmOps`] implementation therefore has no-op
//! `get_page`/`put_page` and reports every page count as 1: the table refcounts are fixed up by
//! a page-table walk once the buddy pool takes over the carve-out (the first
//! [`EarlyAlloc::nr_used_pages`] pages become the pool's reserved pages).

use pkvm_abi::{Error, PAGE_SIZE};
use pkvm_pgtable::MmOps;

use crate::memory::pfn_range_to_bytes;
use crate::platform::PhysMem;

/// Bump allocator over `[base, base + nr_pages * PAGE_SIZE)`.
pub struct EarlyAlloc<'m, M: PhysMem> {
    mem: &'m M,
    base: u64,
    end: u64,
    cur: u64,
}

impl<M: PhysMem> core::fmt::Debug for EarlyAlloc<'_, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EarlyAlloc")
            .field("base", &self.base)
            .field("end", &self.end)
            .field("cur", &self.cur)
            .finish_non_exhaustive()
    }
}

impl<'m, M: PhysMem> EarlyAlloc<'m, M> {
    /// An allocator over the pages `[base, base + nr_pages * PAGE_SIZE)`, zeroed through `mem`
    /// as they are handed out.
    ///
    /// # Errors
    /// - [`Error::Inval`] if `base` is not page aligned;
    /// - [`Error::Range`] if the range overflows the address space.
    pub fn new(mem: &'m M, base: u64, nr_pages: u64) -> Result<Self, Error> {
        if !base.is_multiple_of(PAGE_SIZE) {
            return Err(Error::Inval);
        }
        let (base, end) = pfn_range_to_bytes(base / PAGE_SIZE, nr_pages).ok_or(Error::Range)?;
        Ok(Self {
            mem,
            base,
            end,
            cur: base,
        })
    }

    /// Allocates `nr_pages` physically contiguous zeroed pages and returns the address of the
    /// first.
    ///
    /// # Errors
    /// - [`Error::Inval`] if `nr_pages == 0`;
    /// - [`Error::NoMem`] if fewer than `nr_pages` pages are left (nothing is allocated).
    pub fn alloc_contig(&mut self, nr_pages: u64) -> Result<u64, Error> {
        if nr_pages == 0 {
            return Err(Error::Inval);
        }
        let len = nr_pages.checked_mul(PAGE_SIZE).ok_or(Error::NoMem)?;
        if len > self.end - self.cur {
            return Err(Error::NoMem);
        }
        let pa = self.cur;
        self.mem.zero(pa, len);
        self.cur += len;
        Ok(pa)
    }

    /// Allocates one zeroed page.
    ///
    /// # Errors
    /// [`Error::NoMem`] when the carve-out is used up.
    pub fn alloc_page(&mut self) -> Result<u64, Error> {
        self.alloc_contig(1)
    }

    /// Pages handed out so far (they are the first pages of the carve-out).
    #[must_use]
    pub const fn nr_used_pages(&self) -> u64 {
        (self.cur - self.base) / PAGE_SIZE
    }

    /// Pages still available.
    #[must_use]
    pub const fn nr_free_pages(&self) -> u64 {
        (self.end - self.cur) / PAGE_SIZE
    }

    /// First address of the carve-out.
    #[must_use]
    pub const fn base(&self) -> u64 {
        self.base
    }

    /// Size of the carve-out in pages.
    #[must_use]
    pub const fn nr_pages(&self) -> u64 {
        (self.end - self.base) / PAGE_SIZE
    }
}

impl<M: PhysMem> MmOps for EarlyAlloc<'_, M> {
    fn zalloc_page(&mut self) -> Option<u64> {
        self.alloc_page().ok()
    }

    /// No-op: boot-time tables are never freed; counts are fixed up later.
    fn get_page(&mut self, _pa: u64) {}

    /// No-op: boot-time tables are never freed; counts are fixed up later.
    fn put_page(&mut self, _pa: u64) {}

    /// Always 1 (the allocation reference): nothing is refcounted before the fix-up walk.
    fn page_count(&self, _pa: u64) -> u32 {
        1
    }

    fn read_pte(&self, pa: u64) -> u64 {
        self.mem.read_u64(pa)
    }

    fn write_pte(&mut self, pa: u64, pte: u64) {
        self.mem.write_u64(pa, pte);
    }
}
