//! What scenarios know about the machine: RAM, what is reserved in it, where the host image and
//! the device tree are, and the page allocator test pages come from.
//!
//! Free RAM = RAM from the device tree, minus its `/memreserve/` and `/reserved-memory` ranges
//! (EL2's memory), minus everything below the host image (EL2's image region, which EL2 owns
//! whether or not the device tree says so), minus the host image (stacks and page tables
//! included) and the device tree blob itself.

use crate::dt::{DeviceTree, MAX_RESERVED};
use crate::mmu::ImageLayout;
use crate::ranges::{PageAlloc, Range, RangeSet, free_ram};
use pkvm_abi::PAGE_SHIFT;
use pkvm_abi::boot::HOST_LOAD_ADDR;

/// The machine as the host's scenarios see it.
#[derive(Debug)]
pub struct Env {
    /// RAM.
    pub ram: RangeSet,
    reserved: [Range; MAX_RESERVED],
    nr_reserved: usize,
    nr_memreserve: usize,
    /// The host image.
    pub image: ImageLayout,
    /// The device tree blob.
    pub dtb: Range,
    /// The console UART's registers.
    pub uart: u64,
    /// What QEMU loaded with `-initrd` (kept out of the free RAM).
    pub initrd: Option<Range>,
    /// The GICv3 distributor and first redistributor, if the device tree has a GICv3.
    pub gic: Option<(u64, u64)>,
    /// Physical address size (bits) the host and EL2 use.
    pub pa_bits: u32,
    alloc: PageAlloc,
}

impl Env {
    /// Gathers the environment. `None` if free RAM is too fragmented to describe.
    pub fn new(dt: &DeviceTree, image: ImageLayout, pa_bits: u32) -> Option<Self> {
        let low = dt.ram.ranges().first().map_or(0, |r| r.start);
        let mut used = [Range::default(); MAX_RESERVED + 4];
        used[..dt.nr_reserved].copy_from_slice(dt.reserved());
        used[dt.nr_reserved] = image.image;
        used[dt.nr_reserved + 1] = dt.blob;
        used[dt.nr_reserved + 2] = Range::new(low, HOST_LOAD_ADDR);
        used[dt.nr_reserved + 3] = dt.initrd.unwrap_or_default();
        let free = free_ram(dt.ram.ranges(), &used[..dt.nr_reserved + 4]).ok()?;
        Some(Env {
            ram: dt.ram,
            reserved: dt.reserved,
            nr_reserved: dt.nr_reserved,
            nr_memreserve: dt.nr_memreserve,
            image,
            dtb: dt.blob,
            uart: dt.uart_base as u64,
            initrd: dt.initrd,
            gic: dt.gicd_base.zip(dt.gicr_base),
            pa_bits,
            alloc: PageAlloc::new(free),
        })
    }

    /// Reserved ranges from the device tree (`/memreserve/` first).
    pub fn reserved(&self) -> &[Range] {
        &self.reserved[..self.nr_reserved]
    }

    /// The `/memreserve/` entries.
    pub fn memreserve(&self) -> &[Range] {
        &self.reserved[..self.nr_memreserve]
    }

    /// EL2's carve-out: the highest `/memreserve/` range above the host image.
    pub fn carveout(&self) -> Option<Range> {
        self.memreserve()
            .iter()
            .filter(|r| r.start >= self.image.image.end && !r.is_empty())
            .max_by_key(|r| r.start)
            .copied()
    }

    /// EL2's image region: from the start of RAM up to the host image.
    pub fn el2_image(&self) -> Range {
        let low = self.ram.ranges().first().map_or(0, |r| r.start);
        Range::new(low, HOST_LOAD_ADDR)
    }

    /// Free RAM not handed out yet.
    pub fn free(&self) -> &RangeSet {
        self.alloc.free()
    }

    /// `nr` contiguous free pages aligned to `align` bytes; their first physical address. The
    /// host has never touched them.
    ///
    /// # Panics
    /// When RAM runs out (scenarios use a bounded amount).
    pub fn pages(&mut self, nr: u64, align: u64) -> u64 {
        self.alloc
            .alloc(nr, align)
            .unwrap_or_else(|| panic!("host: out of free RAM for {nr} pages aligned to {align:#x}"))
    }

    /// One free page's physical address.
    pub fn page(&mut self) -> u64 {
        self.alloc
            .page()
            .unwrap_or_else(|| panic!("host: out of free RAM"))
    }

    /// One free page's pfn.
    pub fn pfn(&mut self) -> u64 {
        self.page() >> PAGE_SHIFT
    }
}
