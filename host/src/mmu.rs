//! The host's stage-1: an identity map built with the `aarch64-paging` crate, then the MMU and
//! caches turned on.
//!
//! | range | mapping |
//! |---|---|
//! | `[0, lowest RAM)` and the console UART | Device-nGnRE, never executable |
//! | RAM from the device tree | Normal write-back, read-write, never executable |
//! | host `.text` | Normal, read-only, executable |
//! | host `.el0_text` | Normal, read-only, executable at EL0 only (the hostile scenario's EL0 code) |
//! | host `.rodata` | Normal, read-only |
//! | host `.sandbox` | Normal, read-write **and** executable at EL1 (generated code) |
//! | the last page of RAM (EL2's) | Normal, read-write **at EL0** too (an EL0 access EL2 must refuse) |
//! | the guard pages below both stacks | unmapped |
//!
//! All RAM is mapped, EL2's memory included: whether the host may touch it is the host
//! stage-2's business, and touching it must end in the abort EL2 injects, not in a stage-1
//! fault. Table pages come from a static pool in `.bss` (no heap); the mapping is never changed
//! after the MMU is on. Translation: 4 KiB granule, 39-bit VA (`T0SZ` = 25, walks start at
//! level 1), `TTBR1_EL1` walks disabled, `IPS` = the CPU's physical address size (up to 48).
//!
//! Caches: the tables are written with the MMU off (non-cacheable accesses) into `.bss` that
//! nothing has accessed through a cacheable mapping before, so no stale line can shadow them
//! when the walker starts reading through the (write-back) cache; `ic iallu` drops any
//! instruction-cache lines before `SCTLR_EL1.I` is set.

use aarch64_paging::Mapping;
use aarch64_paging::descriptor::{El1Attributes, PhysicalAddress};
use aarch64_paging::paging::{Constraints, El1And0, MemoryRegion, PageTable, Translation, VaRange};
use core::arch::asm;
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::ranges::{Range, RangeSet};

/// Virtual address bits (identity map: physical addresses up to this are mappable).
pub const VA_BITS: u32 = 39;
/// Table pages in the static pool: a root, one level-2 table per GiB that needs splitting, and
/// level-3 tables around the image and its guard pages.
const POOL_PAGES: usize = 16;

/// MAIR_EL1: attribute 0 Device-nGnRE, attribute 1 Normal inner/outer write-back
/// read/write-allocate.
const MAIR: u64 = 0x04 | (0xff << 8);
const DEVICE: El1Attributes = El1Attributes::ATTRIBUTE_INDEX_0
    .union(El1Attributes::VALID)
    .union(El1Attributes::ACCESSED)
    .union(El1Attributes::PXN)
    .union(El1Attributes::UXN);
const NORMAL: El1Attributes = El1Attributes::ATTRIBUTE_INDEX_1
    .union(El1Attributes::INNER_SHAREABLE)
    .union(El1Attributes::VALID)
    .union(El1Attributes::ACCESSED);
const RAM_RW: El1Attributes = NORMAL.union(El1Attributes::PXN).union(El1Attributes::UXN);
const TEXT: El1Attributes = NORMAL
    .union(El1Attributes::READ_ONLY)
    .union(El1Attributes::UXN);
const RODATA: El1Attributes = RAM_RW.union(El1Attributes::READ_ONLY);
/// No `VALID`: unmapped.
const GUARD: El1Attributes = El1Attributes::empty();
/// EL0 code: read-only for both, executable at EL0 only.
const EL0_TEXT: El1Attributes = NORMAL
    .union(El1Attributes::USER)
    .union(El1Attributes::READ_ONLY)
    .union(El1Attributes::PXN);
/// Generated code: read-write and executable at EL1.
const SANDBOX: El1Attributes = NORMAL.union(El1Attributes::UXN);
/// Data EL0 may read and write (never execute).
const EL0_DATA: El1Attributes = RAM_RW.union(El1Attributes::USER);
/// Device memory EL1 may fetch from (stage-1): the hostile scenario's instruction fetch from
/// MMIO, which the host stage-2 must refuse.
const EXEC_MMIO: El1Attributes = El1Attributes::ATTRIBUTE_INDEX_0
    .union(El1Attributes::VALID)
    .union(El1Attributes::ACCESSED)
    .union(El1Attributes::UXN);
/// The MMIO page mapped [`EXEC_MMIO`] (QEMU `virt`'s PL061 GPIO).
pub const EXEC_MMIO_PAGE: u64 = 0x0903_0000;

#[repr(C, align(4096))]
struct Pool(UnsafeCell<[[u64; 512]; POOL_PAGES]>);

// SAFETY: the pool is only reached through `PoolTranslation::allocate_table`, which hands each
// page out exactly once (an atomic counter), so no two owners ever share a page.
unsafe impl Sync for Pool {}

static POOL: Pool = Pool(UnsafeCell::new([[0; 512]; POOL_PAGES]));
static POOL_NEXT: AtomicUsize = AtomicUsize::new(0);

/// Hands out zeroed pages of [`POOL`]; never takes them back (the map is built once).
#[derive(Debug)]
struct PoolTranslation;

impl Translation<El1Attributes> for PoolTranslation {
    fn allocate_table(&mut self) -> (NonNull<PageTable<El1Attributes>>, PhysicalAddress) {
        let i = POOL_NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(i < POOL_PAGES, "host stage-1: out of page-table pages");
        // `i` is in bounds, so this stays inside the pool array; nothing else holds a pointer
        // into page `i` (see the `Sync` impl), and `.bss` starts zeroed.
        let page = POOL.0.get().cast::<[u64; 512]>().wrapping_add(i);
        let ptr = NonNull::new(page.cast::<PageTable<El1Attributes>>()).expect("pool address");
        (ptr, PhysicalAddress(page as usize))
    }

    unsafe fn deallocate_table(&mut self, _table: NonNull<PageTable<El1Attributes>>) {
        // Leaked: the host never unmaps anything that frees a table.
    }

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<El1Attributes>> {
        NonNull::new(pa.0 as *mut PageTable<El1Attributes>).expect("table at PA 0")
    }
}

// Linker-script symbols describing the image (only their addresses are used).
unsafe extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __el0_text_start: u8;
    static __el0_text_end: u8;
    static __sandbox_start: u8;
    static __sandbox_end: u8;
    static __rodata_end: u8;
    static __stack_guard: u8;
    static __exc_stack_guard: u8;
    static __image_end: u8;
}

fn sym(s: *const u8) -> u64 {
    s as u64
}

/// Where the host image's parts are.
#[derive(Clone, Copy, Debug)]
pub struct ImageLayout {
    /// The whole image, stacks included.
    pub image: Range,
    /// `.text`.
    pub text: Range,
    /// `.rodata`.
    pub rodata: Range,
    /// `.el0_text`: code the hostile scenario runs at EL0.
    pub el0_text: Range,
    /// `.sandbox`: memory the hostile scenario writes instructions into and runs.
    pub sandbox: Range,
    /// The guard page below the main stack.
    pub stack_guard: Range,
    /// The guard page below the exception stack.
    pub exc_stack_guard: Range,
}

impl ImageLayout {
    /// The layout of this image, from the linker script's symbols.
    pub fn get() -> Self {
        let (start, text_end, rodata_end, guard, exc_guard, end) = (
            sym(&raw const __image_start),
            sym(&raw const __text_end),
            sym(&raw const __rodata_end),
            sym(&raw const __stack_guard),
            sym(&raw const __exc_stack_guard),
            sym(&raw const __image_end),
        );
        ImageLayout {
            image: Range::new(start, end),
            text: Range::new(start, text_end),
            rodata: Range::new(text_end, rodata_end),
            el0_text: Range::new(
                sym(&raw const __el0_text_start),
                sym(&raw const __el0_text_end),
            ),
            sandbox: Range::new(
                sym(&raw const __sandbox_start),
                sym(&raw const __sandbox_end),
            ),
            stack_guard: Range::sized(guard, 4096),
            exc_stack_guard: Range::sized(exc_guard, 4096),
        }
    }
}

/// What [`enable`] did.
#[derive(Debug)]
pub struct Stage1 {
    /// Table pages used.
    pub table_pages: usize,
    /// Physical address size used for `TCR_EL1.IPS`.
    pub pa_bits: u32,
}

/// Builds the identity map for `ram`, the console at `uart`, and this image, then turns the
/// MMU and caches on. Runs once, early, with the MMU off.
///
/// # Panics
/// If the map cannot be built (RAM beyond the 39-bit VA space, pool exhausted).
pub fn enable(ram: &RangeSet, uart: u64) -> Stage1 {
    let img = ImageLayout::get();
    let mut map = Mapping::with_asid_and_va_range(PoolTranslation, 0, 1, El1And0, VaRange::Lower);
    let mut put = |r: Range, flags: El1Attributes| {
        assert!(
            r.end <= 1 << VA_BITS,
            "host stage-1: {r} is beyond the {VA_BITS}-bit VA space"
        );
        map.map_range(
            &MemoryRegion::new(r.start as usize, r.end as usize),
            PhysicalAddress(r.start as usize),
            flags,
            Constraints::empty(),
        )
        .unwrap_or_else(|e| panic!("host stage-1: mapping {r}: {e:?}"));
    };
    let low_ram = ram.ranges().first().map_or(0, |r| r.start);
    if low_ram > 0 {
        put(Range::new(0, low_ram), DEVICE);
    }
    if uart >= low_ram {
        put(Range::sized(uart, 4096), DEVICE);
    }
    for &r in ram.ranges() {
        put(r, RAM_RW);
    }
    put(img.text, TEXT);
    put(img.rodata, RODATA);
    if !img.el0_text.is_empty() {
        put(img.el0_text, EL0_TEXT);
    }
    put(img.sandbox, SANDBOX);
    if EXEC_MMIO_PAGE + 4096 <= low_ram && uart != EXEC_MMIO_PAGE {
        put(Range::sized(EXEC_MMIO_PAGE, 4096), EXEC_MMIO);
    }
    if let Some(last) = ram.ranges().last().filter(|r| r.end - r.start >= 4096) {
        put(Range::sized(last.end - 4096, 4096), EL0_DATA);
    }
    put(img.stack_guard, GUARD);
    put(img.exc_stack_guard, GUARD);

    let (pa_bits, ips) = pkvm_rt::regs::pa_range();
    // TCR_EL1: T0SZ = 25, IRGN0/ORGN0 = write-back write-allocate, SH0 = inner shareable,
    // TG0 = 4 KiB, EPD1 = 1 (no TTBR1 walks), IPS.
    let tcr: u64 = u64::from(64 - VA_BITS)
        | (0b01 << 8)
        | (0b01 << 10)
        | (0b11 << 12)
        | (1 << 23)
        | (ips << 32);
    // SAFETY: with the MMU still off, MAIR_EL1 and TCR_EL1 configure nothing live yet.
    unsafe {
        asm!(
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "isb",
            mair = in(reg) MAIR,
            tcr = in(reg) tcr,
            options(nostack, preserves_flags)
        );
    }
    // SAFETY: the MMU is off, so loading TTBR0_EL1 changes no translation yet. Once it is on,
    // the map covers everything the host uses (RAM, this image, the console) at VA == PA; the
    // table pages are static and the mapping is never dropped (forgotten below).
    unsafe { map.activate() };
    // SAFETY: invalidates stale EL1 TLB entries and instruction-cache lines, then sets SCTLR_EL1
    // M (MMU), C (data cache), I (instruction cache). The identity map keeps the next
    // instruction and the stack where they were.
    unsafe {
        asm!(
            "dsb ish",
            "tlbi vmalle1",
            "ic iallu",
            "dsb nsh",
            "isb",
            "mrs {tmp}, sctlr_el1",
            "orr {tmp}, {tmp}, {bits}",
            "msr sctlr_el1, {tmp}",
            "isb",
            tmp = out(reg) _,
            bits = in(reg) (1u64 << 0) | (1 << 2) | (1 << 12),
            options(nostack, preserves_flags)
        );
    }
    core::mem::forget(map);
    Stage1 {
        table_pages: POOL_NEXT.load(Ordering::Relaxed),
        pa_bits,
    }
}
