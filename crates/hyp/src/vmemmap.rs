//! The hyp vmemmap: one [`HypPage`] per 4 KiB page of **every** memory region.
//!
//! # Layout
//!
//! Physical memory can be sparse (a region at 1 GiB and another at 512 GiB), so a flat array
//! indexed by pfn would cost memory in proportion to the *span*. Instead the vmemmap is two
//! caller-provided arrays:
//!
//! - a **directory** of `u32`, one slot per 2 MiB window of the span
//!   `[first_pfn, last_pfn]` (`first_pfn` rounded down to 512 pages). A slot holds the index of
//!   the chunk that backs that window, or [`DIR_NONE`] when no memory region touches it;
//! - a dense array of **chunks** of [`ENTRIES_PER_CHUNK`] (512) entries: 512 × 8 bytes is exactly
//!   one 4 KiB page of [`HypPage`]s. One chunk exists per window touched by memory.
//!
//! So the entries cost 8 bytes per page of memory (rounded up to 2 MiB windows), and the
//! directory 4 bytes per 2 MiB of span. [`VmemmapLayout::for_map`] says how much of each the
//! caller must provide; at EL2 both are carved out of the hypervisor's memory, in tests they are
//! `Vec`s.
//!
//! Chunks are numbered in increasing address order and every window of a region has a chunk, so
//! the entries of any pfn range inside one memory region are contiguous: [`Vmemmap::slice`]
//! hands them out as one slice.
//!
//! # Concurrency
//!
//! Several CPUs use the vmemmap at once under different locks: the host lock guards
//! `host_state`, the hyp lock `hyp_state`, a pool's lock the `refcount` and `order` of that pool's
//! pages, both host and hyp locks the `share_count`. Every field is therefore its own atomic, so
//! writes to one field never disturb another. Each field has exactly one writer at a time (the
//! holder of its lock), so updates are plain `Relaxed` loads and stores: the locks provide the
//! ordering. A caller that writes a field without holding the lock that owns it can lose updates
//! to that field (never to other fields) — that is a caller bug, not undefined behaviour.

use crate::sync::{AtomicCell, AtomicFamily, AtomicU8, AtomicU16, HypAtomics, Ordering::Relaxed};

use pkvm_abi::{Error, PAGE_SHIFT, PAGE_SIZE};

use crate::memory::{MemoryMap, pfn_range_to_bytes};

/// `order` of a page that is not the head of a buddy block (upstream's `HYP_NO_ORDER`).
pub const NO_ORDER: u8 = 0xFF;

/// Per-component ownership state of a page.
///
/// The encodings follow upstream's software-bit meaning: bit 0 "shared, owned",
/// bit 1 "shared, borrowed", both bits "no page".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PageState {
    /// Owned exclusively.
    Owned = 0,
    /// Owned, and shared with another component.
    SharedOwned = 1,
    /// Not owned, but shared with this component.
    SharedBorrowed = 2,
    /// Not accessible to this component.
    NoPage = 3,
}

impl PageState {
    /// Decodes the low two bits of `bits` (every value decodes; higher bits are ignored).
    #[must_use]
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => PageState::Owned,
            1 => PageState::SharedOwned,
            2 => PageState::SharedBorrowed,
            _ => PageState::NoPage,
        }
    }

    /// The 2-bit encoding.
    #[must_use]
    pub const fn bits(self) -> u8 {
        self as u8
    }
}

/// The hyp state is stored XOR-ed with this (its 2-bit complement), so that a zeroed entry
/// decodes as `NoPage` for EL2 while the host state, stored as is, decodes as `Owned`.
const HYP_STATE_XOR: u8 = 0b11;
/// Where [`HypUse`] sits in the `hyp_state` byte (bits 3:2; bits 1:0 are the state).
const HYP_USE_SHIFT: u32 = 2;

/// What EL2 uses a page it owns for: where the page came from, and so whether it may ever go
/// back to the host. Stored beside the hyp state (same byte, same lock).
///
/// Only [`HypUse::Idle`] pages may be given back by `hyp_donate_host`: EL2's own memory never
/// leaves it, and a VM's pages (its memcache, holding its stage-2 tables) go back only through
/// that VM's teardown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HypUse {
    /// Not a page EL2 owns (or owned before provenance was recorded: treated as in use).
    None = 0,
    /// EL2's own memory from boot: its image and carve-out.
    Own = 1,
    /// Donated by the host (`host_donate_hyp`) and not used by EL2 for anything.
    Idle = 2,
    /// Donated for a VM (its memcache): page-table or pool memory of a live guest.
    Vm = 3,
}

impl HypUse {
    /// Decodes two bits.
    #[must_use]
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => HypUse::None,
            1 => HypUse::Own,
            2 => HypUse::Idle,
            _ => HypUse::Vm,
        }
    }
}

/// One vmemmap entry: the EL2 metadata of one 4 KiB physical page. 8 bytes.
///
/// A zeroed entry is the boot state: refcount 0, order 0, host `Owned`, hyp `NoPage` (use
/// `None`), no host pins, share count 0.
///
/// Field owners (see the module documentation): `refcount` and `order` belong to the pool that
/// owns the page (for a host page shared with EL2, `refcount` is the count of **EL2's own**
/// pins: the VM and vCPU structures it uses); `host_state` to the host lock, `hyp_state` (and
/// the [`HypUse`] stored with it) to the hyp lock; `share_count` (EL2's share count of a host
/// page shared with it) and `host_pins` (pins the host asked for with the debug pin call,
/// counted apart so that the host can never drop one of EL2's) to the host and hyp locks
/// together.
///
/// The atomics are this build's ([`HypAtomics`]); the race tests instantiate the entry with
/// `loom`'s to check the counters' locking protocol ([`crate::mem_protect::kernel`]).
#[repr(C)]
pub struct HypPage<A: AtomicFamily = HypAtomics> {
    refcount: A::U16,
    order: A::U8,
    host_state: A::U8,
    /// Stored as `(state ^ HYP_STATE_XOR) | use << HYP_USE_SHIFT`.
    hyp_state: A::U8,
    host_pins: A::U8,
    share_count: A::U16,
}

const _: () = assert!(size_of::<HypPage>() <= 8);
const _: () = assert!(size_of::<HypPage>() * ENTRIES_PER_CHUNK == PAGE_SIZE as usize);

impl Default for HypPage {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: AtomicFamily> core::fmt::Debug for HypPage<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HypPage")
            .field("refcount", &self.refcount())
            .field("order", &self.order())
            .field("host_state", &self.host_state())
            .field("hyp_state", &self.hyp_state())
            .field("hyp_use", &self.hyp_use())
            .field("host_pins", &self.host_pins())
            .field("share_count", &self.share_count())
            .finish()
    }
}

impl HypPage {
    /// A zeroed (boot-state) entry.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            refcount: AtomicU16::new(0),
            order: AtomicU8::new(0),
            host_state: AtomicU8::new(0),
            hyp_state: AtomicU8::new(0),
            host_pins: AtomicU8::new(0),
            share_count: AtomicU16::new(0),
        }
    }
}

impl<A: AtomicFamily> HypPage<A> {
    /// A zeroed (boot-state) entry over the atomics of `A` (for [`HypAtomics`], the same as
    /// [`HypPage::new`], which is `const`).
    #[must_use]
    pub fn new_in() -> Self {
        Self {
            refcount: AtomicCell::new(0),
            order: AtomicCell::new(0),
            host_state: AtomicCell::new(0),
            hyp_state: AtomicCell::new(0),
            host_pins: AtomicCell::new(0),
            share_count: AtomicCell::new(0),
        }
    }

    /// Puts the entry back to the boot state (all zero).
    pub fn reset(&self) {
        self.refcount.store(0, Relaxed);
        self.order.store(0, Relaxed);
        self.host_state.store(0, Relaxed);
        self.hyp_state.store(0, Relaxed);
        self.host_pins.store(0, Relaxed);
        self.share_count.store(0, Relaxed);
    }

    /// The pool refcount (or, for a host page shared with EL2, the pin count).
    #[inline]
    #[must_use]
    pub fn refcount(&self) -> u16 {
        self.refcount.load(Relaxed)
    }

    /// Overwrites the refcount.
    #[inline]
    pub fn set_refcount(&self, count: u16) {
        self.refcount.store(count, Relaxed);
    }

    /// Increments the refcount and returns the new value.
    ///
    /// # Errors
    /// [`Error::Busy`] if it is already `u16::MAX` (nothing changes).
    #[inline]
    pub fn try_inc_refcount(&self) -> Result<u16, Error> {
        inc(&self.refcount)
    }

    /// Decrements the refcount and returns the new value.
    ///
    /// # Errors
    /// [`Error::Fault`] if it is already 0 (nothing changes).
    #[inline]
    pub fn dec_refcount(&self) -> Result<u16, Error> {
        dec(&self.refcount)
    }

    /// The buddy order of the block this page heads, or [`NO_ORDER`].
    #[inline]
    #[must_use]
    pub fn order(&self) -> u8 {
        self.order.load(Relaxed)
    }

    /// Sets the buddy order.
    #[inline]
    pub fn set_order(&self, order: u8) {
        self.order.store(order, Relaxed);
    }

    /// The host's state for this page.
    #[inline]
    #[must_use]
    pub fn host_state(&self) -> PageState {
        PageState::from_bits(self.host_state.load(Relaxed))
    }

    /// Sets the host's state for this page.
    #[inline]
    pub fn set_host_state(&self, state: PageState) {
        self.host_state.store(state.bits(), Relaxed);
    }

    /// EL2's state for this page.
    #[inline]
    #[must_use]
    pub fn hyp_state(&self) -> PageState {
        PageState::from_bits(self.hyp_state.load(Relaxed) ^ HYP_STATE_XOR)
    }

    /// Sets EL2's state for this page, with use [`HypUse::None`] (use
    /// [`HypPage::set_hyp_owned`] for a page EL2 owns).
    #[inline]
    pub fn set_hyp_state(&self, state: PageState) {
        self.hyp_state.store(state.bits() ^ HYP_STATE_XOR, Relaxed);
    }

    /// Makes EL2 the page's owner ([`PageState::Owned`]) for `usage`.
    #[inline]
    pub fn set_hyp_owned(&self, usage: HypUse) {
        self.hyp_state.store(
            (PageState::Owned.bits() ^ HYP_STATE_XOR) | ((usage as u8) << HYP_USE_SHIFT),
            Relaxed,
        );
    }

    /// What EL2 uses the page for ([`HypUse::None`] unless EL2 owns it).
    #[inline]
    #[must_use]
    pub fn hyp_use(&self) -> HypUse {
        HypUse::from_bits(self.hyp_state.load(Relaxed) >> HYP_USE_SHIFT)
    }

    /// Pins the host holds on this page (debug pin call), apart from EL2's own
    /// ([`HypPage::refcount`]).
    #[inline]
    #[must_use]
    pub fn host_pins(&self) -> u8 {
        self.host_pins.load(Relaxed)
    }

    /// Overwrites the host pin count.
    #[inline]
    pub fn set_host_pins(&self, count: u8) {
        self.host_pins.store(count, Relaxed);
    }

    /// EL2's share count of this (host) page.
    #[inline]
    #[must_use]
    pub fn share_count(&self) -> u16 {
        self.share_count.load(Relaxed)
    }

    /// Overwrites the share count.
    #[inline]
    pub fn set_share_count(&self, count: u16) {
        self.share_count.store(count, Relaxed);
    }

    /// Increments the share count and returns the new value.
    ///
    /// # Errors
    /// [`Error::Busy`] if it is already `u16::MAX` (nothing changes).
    #[inline]
    pub fn try_inc_share_count(&self) -> Result<u16, Error> {
        inc(&self.share_count)
    }

    /// Decrements the share count and returns the new value.
    ///
    /// # Errors
    /// [`Error::Fault`] if it is already 0 (nothing changes).
    #[inline]
    pub fn dec_share_count(&self) -> Result<u16, Error> {
        dec(&self.share_count)
    }
}

#[inline]
fn inc(field: &impl AtomicCell<u16>) -> Result<u16, Error> {
    let new = field.load(Relaxed).checked_add(1).ok_or(Error::Busy)?;
    field.store(new, Relaxed);
    Ok(new)
}

#[inline]
fn dec(field: &impl AtomicCell<u16>) -> Result<u16, Error> {
    let new = field.load(Relaxed).checked_sub(1).ok_or(Error::Fault)?;
    field.store(new, Relaxed);
    Ok(new)
}

/// Entries per chunk: one 4 KiB page of [`HypPage`]s, backing one 2 MiB window.
pub const ENTRIES_PER_CHUNK: usize = 512;
/// log2 of [`ENTRIES_PER_CHUNK`].
const CHUNK_SHIFT: u32 = 9;
/// Directory slot value for a window with no memory.
pub const DIR_NONE: u32 = u32::MAX;

/// How much backing a [`Vmemmap`] needs for a given [`MemoryMap`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VmemmapLayout {
    /// First pfn of the first window (the lowest memory pfn rounded down to 512).
    pub first_pfn: u64,
    /// Directory slots: one per 2 MiB window from `first_pfn` to the end of memory.
    pub dir_slots: usize,
    /// Chunks of [`ENTRIES_PER_CHUNK`] entries: one per window touched by memory.
    pub chunks: usize,
}

impl VmemmapLayout {
    /// Computes the layout for `map`. An empty map needs nothing.
    ///
    /// # Errors
    /// [`Error::TooBig`] if the directory or the chunk count does not fit the index types
    /// (`usize`, and chunk indices below [`DIR_NONE`]).
    pub fn for_map(map: &MemoryMap) -> Result<Self, Error> {
        let regions = map.regions();
        let (Some(first), Some(last)) = (regions.first(), regions.last()) else {
            return Ok(Self::default());
        };
        let first_pfn = first.base_pfn() & !((1 << CHUNK_SHIFT) - 1);
        let end_pfn = last.end() >> PAGE_SHIFT;
        let dir_slots = (end_pfn - first_pfn).div_ceil(1 << CHUNK_SHIFT);
        let mut chunks: u64 = 0;
        let mut next_window: u64 = 0;
        for r in regions {
            let (lo, hi) = windows_of(r.base_pfn(), r.nr_pages(), first_pfn);
            let lo = lo.max(next_window);
            if hi >= lo {
                chunks += hi - lo + 1;
                next_window = hi + 1;
            }
        }
        if chunks >= u64::from(DIR_NONE) {
            return Err(Error::TooBig);
        }
        Ok(Self {
            first_pfn,
            dir_slots: usize::try_from(dir_slots).map_err(|_| Error::TooBig)?,
            chunks: usize::try_from(chunks).map_err(|_| Error::TooBig)?,
        })
    }

    /// Number of [`HypPage`] entries to provide (`chunks * 512`).
    #[must_use]
    pub const fn entries(&self) -> usize {
        self.chunks * ENTRIES_PER_CHUNK
    }

    /// Pages of backing for the entries (one per chunk).
    #[must_use]
    pub const fn entry_pages(&self) -> u64 {
        self.chunks as u64
    }

    /// Pages of backing for the directory (`ceil(dir_slots * 4 / 4096)`).
    #[must_use]
    pub const fn dir_pages(&self) -> u64 {
        (self.dir_slots as u64 * size_of::<u32>() as u64).div_ceil(PAGE_SIZE)
    }

    /// Total pages of backing: [`Self::entry_pages`] + [`Self::dir_pages`].
    #[must_use]
    pub const fn pages(&self) -> u64 {
        self.entry_pages() + self.dir_pages()
    }
}

/// First and last window index (relative to `first_pfn`) touched by a non-empty pfn range.
fn windows_of(base_pfn: u64, nr_pages: u64, first_pfn: u64) -> (u64, u64) {
    let lo = (base_pfn - first_pfn) >> CHUNK_SHIFT;
    let hi = (base_pfn + nr_pages - 1 - first_pfn) >> CHUNK_SHIFT;
    (lo, hi)
}

/// O(1) pfn → [`HypPage`] lookup over every page of memory (see the module documentation).
pub struct Vmemmap<'a> {
    map: &'a MemoryMap,
    first_pfn: u64,
    dir: &'a [u32],
    pages: &'a [HypPage],
}

impl core::fmt::Debug for Vmemmap<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vmemmap")
            .field("first_pfn", &self.first_pfn)
            .field("dir_slots", &self.dir.len())
            .field("entries", &self.pages.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Vmemmap<'a> {
    /// Builds the vmemmap for `map` over caller-provided backing: `dir` needs at least
    /// [`VmemmapLayout::dir_slots`] slots and `pages` at least [`VmemmapLayout::entries`]
    /// entries (extra space is left unused). Fills the directory and resets every used entry to
    /// the boot state.
    ///
    /// # Errors
    /// - [`Error::Inval`] if `dir` or `pages` is too small;
    /// - [`Error::TooBig`] as [`VmemmapLayout::for_map`].
    pub fn new(
        map: &'a MemoryMap,
        dir: &'a mut [u32],
        pages: &'a [HypPage],
    ) -> Result<Self, Error> {
        let layout = VmemmapLayout::for_map(map)?;
        let dir = dir.get_mut(..layout.dir_slots).ok_or(Error::Inval)?;
        let pages = pages.get(..layout.entries()).ok_or(Error::Inval)?;
        dir.fill(DIR_NONE);
        let mut next: u32 = 0;
        for r in map.regions() {
            let (lo, hi) = windows_of(r.base_pfn(), r.nr_pages(), layout.first_pfn);
            for w in lo..=hi {
                let slot = usize::try_from(w)
                    .ok()
                    .and_then(|w| dir.get_mut(w))
                    .ok_or(Error::Fault)?;
                if *slot == DIR_NONE {
                    *slot = next;
                    next = next.checked_add(1).ok_or(Error::TooBig)?;
                }
            }
        }
        for p in pages {
            p.reset();
        }
        Ok(Self {
            map,
            first_pfn: layout.first_pfn,
            dir,
            pages,
        })
    }

    /// The memory map this vmemmap covers.
    #[must_use]
    pub const fn memory_map(&self) -> &'a MemoryMap {
        self.map
    }

    /// Index into the entry array of `pfn`'s entry, if its window is backed.
    #[inline]
    fn index(&self, pfn: u64) -> Option<usize> {
        // Below `first_pfn` this wraps to a huge offset, whose slot is out of range.
        let off = pfn.wrapping_sub(self.first_pfn);
        let slot = usize::try_from(off >> CHUNK_SHIFT).ok()?;
        let chunk = *self.dir.get(slot)?;
        if chunk == DIR_NONE {
            return None;
        }
        (chunk as usize)
            .checked_mul(ENTRIES_PER_CHUNK)?
            .checked_add((off as usize) & (ENTRIES_PER_CHUNK - 1))
    }

    /// The entry of page frame `pfn`, or `None` if that page is not memory.
    #[inline]
    #[must_use]
    pub fn get(&self, pfn: u64) -> Option<&'a HypPage> {
        if !self.map.is_memory(pfn.checked_mul(PAGE_SIZE)?) {
            return None;
        }
        self.pages.get(self.index(pfn)?)
    }

    /// Fast lookup of the entry of the page containing `pa`, for pages known to be memory: it
    /// does not consult the memory map, only the directory. Returns `None` if `pa`'s 2 MiB
    /// window has no backing; a non-memory page inside a backed window gets its (unused) entry.
    #[inline]
    #[must_use]
    pub fn page(&self, pa: u64) -> Option<&'a HypPage> {
        self.pages.get(self.index(pa >> PAGE_SHIFT)?)
    }

    /// The entries of `[pfn, pfn + nr_pages)` for a caller that has already checked the range
    /// lies inside one memory region (the hypercall fast path, which must not search the memory
    /// map twice). Without that check it is still memory-safe (it may then return entries of
    /// other pages, never out-of-bounds ones); `None` if the first page has no entry.
    #[inline]
    #[must_use]
    pub fn slice_checked_range(&self, pfn: u64, nr_pages: u64) -> Option<&'a [HypPage]> {
        // Inside one region, the chunks of consecutive windows are consecutive (see the module
        // documentation), so the entries run on from the first page's.
        let first = self.index(pfn)?;
        self.pages
            .get(first..first.checked_add(usize::try_from(nr_pages).ok()?)?)
    }

    /// The entries of the pages `[pfn, pfn + nr_pages)`, as one slice, if that range lies inside
    /// one memory region (`None` otherwise, and for `nr_pages == 0` or overflow).
    #[must_use]
    pub fn slice(&self, pfn: u64, nr_pages: u64) -> Option<&'a [HypPage]> {
        let (start, end) = pfn_range_to_bytes(pfn, nr_pages)?;
        if !self.map.range_is_memory(start, end) {
            return None;
        }
        let first = self.index(pfn)?;
        let last = self.index(pfn + nr_pages - 1)?;
        // Guaranteed by the numbering (consecutive windows of a region have consecutive
        // chunks); checked anyway so that a broken directory cannot hand out wrong entries.
        if u64::try_from(last.checked_sub(first)?).ok()? != nr_pages - 1 {
            return None;
        }
        self.pages.get(first..=last)
    }
}
