//! The EL2 buddy page pool (upstream's `hyp_pool`).
//!
//! A [`HypPool`] manages the pages `[pfn, pfn + nr_pages)` of one memory region. Its per-page
//! metadata (`refcount`, `order`) lives in the [`Vmemmap`]; its free lists live in the free pages
//! themselves.
//!
//! # Invariants (checked by the property tests after every operation)
//!
//! - A **free block** of order `o` is `2^o` pages, aligned to `2^o` pages in *physical* address,
//!   inside the pool, with `o < max_order`. Its head page has `order == o` and `refcount == 0`;
//!   its other pages have `order == NO_ORDER` and `refcount == 0`. It is linked on free list `o`
//!   and its memory is zero apart from the list node (the first 16 bytes of the head page:
//!   `next` at [`NODE_NEXT`], `prev` at [`NODE_PREV`], [`NIL`] for "none").
//! - An **allocated block** of order `o` has a head with `order == o` and `refcount >= 1`; its
//!   other pages have `order == NO_ORDER` and `refcount == 0`, until [`HypPool::split_page`]
//!   makes each of them an order-0 allocation with refcount 1.
//! - `order == NO_ORDER` implies `refcount == 0`; otherwise `order < max_order`.
//! - No page is covered by two free blocks, and free blocks are maximal: two free buddies of
//!   order `o` with `o + 1 < max_order` are always merged.
//! - [`HypPool::free_pages`] equals the number of pages covered by free blocks.
//!
//! Blocks are zeroed when they are freed, so allocation hands out zeroed memory and only has
//! to clear the 16-byte list node.
//!
//! # Locking
//!
//! The pool is a plain struct with `&mut self` methods that never allocate: the caller puts it
//! behind a lock (e.g. [`crate::sync::Mutex`]`<HypPool>`), and that lock also owns the `refcount` and
//! `order` fields of the pool's vmemmap entries. [`LockedPoolMmOps`] takes the lock around each
//! page-table operation.

use pkvm_abi::{Error, PAGE_SHIFT, PAGE_SIZE};
use pkvm_pgtable::MmOps;

use crate::memory::pfn_range_to_bytes;
use crate::platform::PhysMem;
use crate::sync::Mutex;
use crate::vmemmap::{HypPage, NO_ORDER, Vmemmap};

#[cfg(feature = "snapshot")]
mod state;
#[cfg(feature = "snapshot")]
pub use state::PoolState;

/// Number of buddy orders: blocks are `2^0 ..= 2^(MAX_ORDER - 1)` pages (4 KiB to 4 MiB).
pub const MAX_ORDER: u8 = 11;
/// Offset of the `next` pointer of a free block's list node, in its head page.
pub const NODE_NEXT: u64 = 0;
/// Offset of the `prev` pointer of a free block's list node, in its head page.
pub const NODE_PREV: u64 = 8;
/// "No block" in a list node (not page aligned, so never a block address).
pub const NIL: u64 = u64::MAX;

/// Size of the free-list array: a power of two ≥ `MAX_ORDER`, so that a masked order index is
/// always in bounds.
const LISTS: usize = 16;
const _: () = assert!(MAX_ORDER as usize <= LISTS && LISTS.is_power_of_two());

#[inline]
const fn slot(order: u8) -> usize {
    order as usize & (LISTS - 1)
}

/// `max_order` of a pool of `nr_pages`: the smallest `k` with `2^k > nr_pages`, capped at
/// [`MAX_ORDER`].
///
/// This is upstream's `get_order((nr_pages + 1) << PAGE_SHIFT)` (the fixed formula): a pool whose
/// size is an exact power of two `2^n` gets `max_order = n + 1`, so its top block of order `n`
/// can form. 0 pages give `max_order` 0 (nothing can ever be allocated).
#[must_use]
pub const fn pool_max_order(nr_pages: u64) -> u8 {
    let k = (u64::BITS - nr_pages.leading_zeros()) as u8;
    if k < MAX_ORDER { k } else { MAX_ORDER }
}

/// A buddy allocator over the pages `[pfn, pfn + nr_pages)` of one memory region.
///
/// It holds the physical memory accessor and the vmemmap entries of its pages, so it is
/// usable on its own (and as [`MmOps`]) once the caller has locked it.
pub struct HypPool<'a, M: PhysMem> {
    mem: &'a M,
    /// The vmemmap entries of `[start, end)`, in order.
    pages: &'a [HypPage],
    start: u64,
    end: u64,
    free_head: [u64; LISTS],
    /// Bit `o` set iff `free_head[o] != NIL`.
    nonempty: u16,
    max_order: u8,
    nr_free: u64,
    reserved: u64,
    mmops_errors: u64,
}

impl<M: PhysMem> core::fmt::Debug for HypPool<'_, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HypPool")
            .field("start", &self.start)
            .field("end", &self.end)
            .field("max_order", &self.max_order)
            .field("nr_free", &self.nr_free)
            .field("nonempty", &self.nonempty)
            .finish_non_exhaustive()
    }
}

impl<'a, M: PhysMem> HypPool<'a, M> {
    /// Creates the pool over `[pfn, pfn + nr_pages)`.
    ///
    /// The first `reserved_pages` pages (those the boot allocator used) become order-0
    /// allocations with refcount 1; the rest are zeroed and put on the free lists as the
    /// largest aligned blocks that fit (the same state as freeing them one by one). The pool's
    /// vmemmap entries are overwritten; their host/hyp states and share counts are left alone.
    ///
    /// # Errors
    /// - [`Error::Inval`] if `reserved_pages > nr_pages`, or the pages are not inside one memory
    ///   region of the vmemmap's memory map;
    /// - [`Error::Range`] if the range overflows the address space.
    pub fn new(
        vmemmap: &Vmemmap<'a>,
        mem: &'a M,
        pfn: u64,
        nr_pages: u64,
        reserved_pages: u64,
    ) -> Result<Self, Error> {
        if reserved_pages > nr_pages {
            return Err(Error::Inval);
        }
        let (start, end) = pfn_range_to_bytes(pfn, nr_pages).ok_or(Error::Range)?;
        let pages = if nr_pages == 0 {
            &[]
        } else {
            vmemmap.slice(pfn, nr_pages).ok_or(Error::Inval)?
        };
        let mut pool = Self {
            mem,
            pages,
            start,
            end,
            free_head: [NIL; LISTS],
            nonempty: 0,
            max_order: pool_max_order(nr_pages),
            nr_free: 0,
            reserved: reserved_pages,
            mmops_errors: 0,
        };
        for (i, p) in (0..).zip(pages) {
            let (count, order) = if i < reserved_pages {
                (1, 0)
            } else {
                (0, NO_ORDER)
            };
            p.set_refcount(count);
            p.set_order(order);
        }
        // Carve the unreserved pages into maximal aligned blocks (what coalescing converges to).
        let end_pfn = pfn + nr_pages;
        let mut cur = pfn + reserved_pages;
        while cur < end_pfn {
            let mut order = (cur.trailing_zeros() as u8).min(pool.max_order - 1);
            while (1u64 << order) > end_pfn - cur {
                order -= 1;
            }
            let pa = cur << PAGE_SHIFT;
            mem.zero(pa, PAGE_SIZE << order);
            pool.entry(pa).ok_or(Error::Fault)?.set_order(order);
            pool.push(pa, order);
            pool.nr_free += 1 << order;
            cur += 1 << order;
        }
        Ok(pool)
    }

    /// The vmemmap entry of the page at (page-aligned) `pa`, if it is in the pool.
    #[inline]
    fn entry(&self, pa: u64) -> Option<&'a HypPage> {
        let off = pa.wrapping_sub(self.start);
        if off >= self.end - self.start {
            return None;
        }
        self.pages.get(usize::try_from(off >> PAGE_SHIFT).ok()?)
    }

    /// Whether `x` may appear in a list node: [`NIL`] or a page address inside the pool.
    #[inline]
    fn node_ok(&self, x: u64) -> bool {
        x == NIL
            || (x.wrapping_sub(self.start) < self.end - self.start && x.is_multiple_of(PAGE_SIZE))
    }

    #[inline]
    fn push(&mut self, pa: u64, order: u8) {
        let head = self.free_head[slot(order)];
        self.mem.write_u64(pa + NODE_NEXT, head);
        self.mem.write_u64(pa + NODE_PREV, NIL);
        if head != NIL {
            self.mem.write_u64(head + NODE_PREV, pa);
        }
        self.free_head[slot(order)] = pa;
        self.nonempty |= 1 << order;
    }

    /// Removes the free block at `pa` from list `order` and zeroes its node.
    ///
    /// Fails with [`Error::Fault`], changing nothing, if the node's links are corrupt.
    #[inline]
    fn unlink(&mut self, pa: u64, order: u8) -> Result<(), Error> {
        let next = self.mem.read_u64(pa + NODE_NEXT);
        let prev = self.mem.read_u64(pa + NODE_PREV);
        if !self.node_ok(next) || !self.node_ok(prev) {
            return Err(Error::Fault);
        }
        if prev == NIL {
            if self.free_head[slot(order)] != pa {
                return Err(Error::Fault);
            }
            self.free_head[slot(order)] = next;
            if next == NIL {
                self.nonempty &= !(1 << order);
            }
        } else {
            self.mem.write_u64(prev + NODE_NEXT, next);
        }
        if next != NIL {
            self.mem.write_u64(next + NODE_PREV, prev);
        }
        self.mem.write_u64(pa + NODE_NEXT, 0);
        self.mem.write_u64(pa + NODE_PREV, 0);
        Ok(())
    }

    /// Allocates a zeroed block of `2^order` pages with refcount 1 and returns its address.
    ///
    /// # Errors
    /// - [`Error::Inval`] if `order >= MAX_ORDER`;
    /// - [`Error::NoMem`] if no free block of that order or above exists (always when
    ///   `order >= max_order`); the pool is unchanged;
    /// - [`Error::Fault`] if the pool's metadata is found corrupt.
    #[inline]
    pub fn alloc_pages(&mut self, order: u8) -> Result<u64, Error> {
        if order >= MAX_ORDER {
            return Err(Error::Inval);
        }
        let avail = self.nonempty >> order;
        if avail == 0 {
            return Err(Error::NoMem);
        }
        let mut cur = order + avail.trailing_zeros() as u8;
        let pa = self.free_head[slot(cur)];
        let page = self.entry(pa).ok_or(Error::Fault)?;
        if page.refcount() != 0 || page.order() != cur {
            return Err(Error::Fault);
        }
        self.unlink(pa, cur)?;
        // Split down, pushing the upper halves.
        while cur > order {
            cur -= 1;
            let buddy = pa + (PAGE_SIZE << cur);
            self.entry(buddy).ok_or(Error::Fault)?.set_order(cur);
            self.push(buddy, cur);
        }
        page.set_order(order);
        page.set_refcount(1);
        self.nr_free = self.nr_free.saturating_sub(1 << order);
        Ok(pa)
    }

    /// Allocates `nr_pages` contiguous zeroed pages, **each** an order-0 allocation with
    /// refcount 1 (a power-of-two allocation, split, with the excess freed again), and returns
    /// the address of the first. Use it when the pages are refcounted individually (e.g.
    /// concatenated page-table roots).
    ///
    /// # Errors
    /// - [`Error::Inval`] if `nr_pages == 0` or needs an order `>= MAX_ORDER`;
    /// - otherwise as [`Self::alloc_pages`].
    pub fn alloc_pages_exact(&mut self, nr_pages: u64) -> Result<u64, Error> {
        if nr_pages == 0 {
            return Err(Error::Inval);
        }
        let pow2 = nr_pages.checked_next_power_of_two().ok_or(Error::Inval)?;
        let order = u8::try_from(pow2.trailing_zeros()).map_err(|_| Error::Inval)?;
        let pa = self.alloc_pages(order)?;
        self.split_page(pa)?;
        for i in nr_pages..(1u64 << order) {
            self.put_page(pa + i * PAGE_SIZE)?;
        }
        Ok(pa)
    }

    /// Takes one more reference on the page containing `pa` and returns the new count.
    ///
    /// # Errors
    /// - [`Error::Inval`] if the page is not in the pool;
    /// - [`Error::Fault`] if the page is not allocated (refcount 0: free, or a tail page of an
    ///   unsplit block);
    /// - [`Error::Busy`] if the count is saturated at `u16::MAX`.
    ///
    /// Nothing changes on error.
    #[inline]
    pub fn get_page(&mut self, pa: u64) -> Result<u16, Error> {
        let page = self.entry(pa & !(PAGE_SIZE - 1)).ok_or(Error::Inval)?;
        if page.refcount() == 0 {
            return Err(Error::Fault);
        }
        page.try_inc_refcount()
    }

    /// Drops one reference on the page containing `pa` and returns the new count; at 0 the
    /// block it heads is zeroed, merged with its free buddies and put on a free list.
    ///
    /// # Errors
    /// - [`Error::Inval`] if the page is not in the pool;
    /// - [`Error::Fault`] if the page is not allocated (double free, put of a free page or of a
    ///   tail page of an unsplit block); nothing changes.
    #[inline]
    pub fn put_page(&mut self, pa: u64) -> Result<u16, Error> {
        self.put_page_inner(pa, false)
    }

    /// [`HypPool::put_page`] for a page the caller guarantees is all zero (an empty page-table
    /// page): freeing it skips the zeroing.
    ///
    /// # Errors
    /// As [`HypPool::put_page`].
    #[inline]
    pub fn put_zeroed_page(&mut self, pa: u64) -> Result<u16, Error> {
        self.put_page_inner(pa, true)
    }

    #[inline(always)]
    fn put_page_inner(&mut self, pa: u64, zeroed: bool) -> Result<u16, Error> {
        let pa = pa & !(PAGE_SIZE - 1);
        let page = self.entry(pa).ok_or(Error::Inval)?;
        let order = page.order();
        // The block must be a plausible one (its order field is shared memory): aligned and
        // inside the pool, so that freeing it can never zero memory the pool does not own.
        if order >= self.max_order
            || !pa.is_multiple_of(PAGE_SIZE << order)
            || (PAGE_SIZE << order) > self.end - pa
        {
            return Err(Error::Fault);
        }
        let count = page.dec_refcount()?;
        if count == 0 {
            self.attach(pa, page, order, zeroed)?;
        }
        Ok(count)
    }

    /// Frees the block `[pa, pa + 2^order pages)` whose head's refcount just dropped to 0,
    /// zeroing it first unless the caller guarantees it already is zero.
    #[inline]
    fn attach(
        &mut self,
        mut pa: u64,
        page: &'a HypPage,
        mut order: u8,
        zeroed: bool,
    ) -> Result<(), Error> {
        if !zeroed {
            self.mem.zero(pa, PAGE_SIZE << order);
        }
        self.nr_free += 1 << order;
        let mut head = page;
        let mut result = Ok(());
        while order + 1 < self.max_order {
            let buddy = pa ^ (PAGE_SIZE << order);
            let Some(bp) = self.entry(buddy) else { break };
            if bp.order() != order || bp.refcount() != 0 {
                break;
            }
            if let Err(e) = self.unlink(buddy, order) {
                result = Err(e);
                break;
            }
            if buddy < pa {
                head.set_order(NO_ORDER);
                (pa, head) = (buddy, bp);
            } else {
                bp.set_order(NO_ORDER);
            }
            order += 1;
        }
        head.set_order(order);
        self.push(pa, order);
        result
    }

    /// Turns the allocated block headed at `pa` (order `n`) into `2^n` order-0 allocations: the
    /// head keeps its count, every other page gets refcount 1. A no-op for order 0.
    ///
    /// # Errors
    /// - [`Error::Inval`] if `pa` is not a page address inside the pool;
    /// - [`Error::Fault`] if `pa` is not the head of an allocated block (or a tail page is not
    ///   in the unsplit state); nothing changes.
    pub fn split_page(&mut self, pa: u64) -> Result<(), Error> {
        if !pa.is_multiple_of(PAGE_SIZE) {
            return Err(Error::Inval);
        }
        let head = self.entry(pa).ok_or(Error::Inval)?;
        let order = head.order();
        if order >= self.max_order || head.refcount() == 0 {
            return Err(Error::Fault);
        }
        let first = usize::try_from((pa - self.start) >> PAGE_SHIFT).map_err(|_| Error::Fault)?;
        let tails = self
            .pages
            .get(first + 1..first + (1 << order))
            .ok_or(Error::Fault)?;
        if tails
            .iter()
            .any(|p| p.order() != NO_ORDER || p.refcount() != 0)
        {
            return Err(Error::Fault);
        }
        for p in tails {
            p.set_order(0);
            p.set_refcount(1);
        }
        head.set_order(0);
        Ok(())
    }

    /// Refcount of the page containing `pa` (0 if it is free or outside the pool).
    #[inline]
    #[must_use]
    pub fn page_count(&self, pa: u64) -> u16 {
        self.entry(pa & !(PAGE_SIZE - 1))
            .map_or(0, HypPage::refcount)
    }

    /// Whether `pa` lies inside the pool.
    #[must_use]
    pub const fn contains(&self, pa: u64) -> bool {
        pa >= self.start && pa < self.end
    }

    /// Number of free pages.
    #[must_use]
    pub const fn free_pages(&self) -> u64 {
        self.nr_free
    }

    /// Number of pages in the pool.
    #[must_use]
    pub const fn nr_pages(&self) -> u64 {
        (self.end - self.start) / PAGE_SIZE
    }

    /// Number of pages reserved at creation.
    #[must_use]
    pub const fn reserved_pages(&self) -> u64 {
        self.reserved
    }

    /// The pool's byte range `[start, end)`.
    #[must_use]
    pub const fn range(&self) -> (u64, u64) {
        (self.start, self.end)
    }

    /// One more than the highest order a block can have here (see [`pool_max_order`]).
    #[must_use]
    pub const fn max_order(&self) -> u8 {
        self.max_order
    }

    /// Head of free list `order` (its nodes are linked through [`NODE_NEXT`]/[`NODE_PREV`]),
    /// for inspection and checkers.
    #[must_use]
    pub fn free_list_head(&self, order: u8) -> Option<u64> {
        if order >= MAX_ORDER {
            return None;
        }
        let head = self.free_head[slot(order)];
        (head != NIL).then_some(head)
    }

    /// The physical memory accessor the pool uses.
    #[must_use]
    pub const fn mem(&self) -> &'a M {
        self.mem
    }

    /// How many [`MmOps`] `get_page`/`put_page` calls failed (they cannot report errors). Any
    /// non-zero value is a page-table refcounting bug.
    #[must_use]
    pub const fn mmops_errors(&self) -> u64 {
        self.mmops_errors
    }

    /// Whether every free block is zero apart from its list node (the invariant that lets
    /// allocations skip zeroing). It reads every free page: for tests and checkers. A list
    /// longer than the pool has pages (a corrupted link) ends there.
    #[must_use]
    pub fn free_memory_is_zero(&self) -> bool {
        (0..MAX_ORDER).all(|order| {
            let mut at = self.free_list_head(order);
            for _ in 0..=self.nr_pages() {
                let Some(pa) = at else { break };
                // Past the node (`next`, `prev`).
                if !(NODE_PREV + 8..PAGE_SIZE << order)
                    .step_by(8)
                    .all(|off| self.mem.read_u64(pa + off) == 0)
                {
                    return false;
                }
                let next = self.mem.read_u64(pa + NODE_NEXT);
                at = (next != NIL).then_some(next);
            }
            true
        })
    }
}

/// The pool as page-table memory: `zalloc_page` allocates order 0, `get_page`/`put_page`/
/// `page_count` use the vmemmap refcount. The caller holds the pool's lock for as long as it
/// uses this (it has `&mut`). Failed `get_page`/`put_page` calls are counted in
/// [`HypPool::mmops_errors`].
impl<M: PhysMem> MmOps for HypPool<'_, M> {
    #[inline]
    fn zalloc_page(&mut self) -> Option<u64> {
        self.alloc_pages(0).ok()
    }

    #[inline]
    fn get_page(&mut self, pa: u64) {
        if HypPool::get_page(self, pa).is_err() {
            self.mmops_errors = self.mmops_errors.saturating_add(1);
        }
    }

    #[inline(always)]
    fn put_page(&mut self, pa: u64) {
        if HypPool::put_page(self, pa).is_err() {
            self.mmops_errors = self.mmops_errors.saturating_add(1);
        }
    }

    #[inline]
    fn put_zeroed_table(&mut self, pa: u64) {
        if HypPool::put_zeroed_page(self, pa).is_err() {
            self.mmops_errors = self.mmops_errors.saturating_add(1);
        }
    }

    #[inline]
    fn page_count(&self, pa: u64) -> u32 {
        u32::from(HypPool::page_count(self, pa))
    }

    #[inline]
    fn read_pte(&self, pa: u64) -> u64 {
        self.mem.read_u64(pa)
    }

    #[inline]
    fn write_pte(&mut self, pa: u64, pte: u64) {
        self.mem.write_u64(pa, pte);
    }
}

/// [`MmOps`] over a pool shared behind a [`Mutex`]: each allocation or refcount operation
/// takes the pool's lock for just that operation; PTE accesses do not lock.
pub struct LockedPoolMmOps<'p, 'a, M: PhysMem> {
    pool: &'p Mutex<HypPool<'a, M>>,
    mem: &'a M,
}

impl<M: PhysMem> core::fmt::Debug for LockedPoolMmOps<'_, '_, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LockedPoolMmOps").finish_non_exhaustive()
    }
}

impl<'p, 'a, M: PhysMem> LockedPoolMmOps<'p, 'a, M> {
    /// Wraps a locked pool.
    pub fn new(pool: &'p Mutex<HypPool<'a, M>>) -> Self {
        let mem = pool.lock().mem;
        Self { pool, mem }
    }
}

impl<M: PhysMem> MmOps for LockedPoolMmOps<'_, '_, M> {
    fn zalloc_page(&mut self) -> Option<u64> {
        self.pool.lock().alloc_pages(0).ok()
    }

    fn get_page(&mut self, pa: u64) {
        MmOps::get_page(&mut *self.pool.lock(), pa);
    }

    fn put_page(&mut self, pa: u64) {
        MmOps::put_page(&mut *self.pool.lock(), pa);
    }

    fn page_count(&self, pa: u64) -> u32 {
        u32::from(self.pool.lock().page_count(pa))
    }

    fn read_pte(&self, pa: u64) -> u64 {
        self.mem.read_u64(pa)
    }

    fn write_pte(&mut self, pa: u64, pte: u64) {
        self.mem.write_u64(pa, pte);
    }
}
