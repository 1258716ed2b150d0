//! Brings the portable core (`pkvm-hyp`) up at EL2 on QEMU `virt`:
//!
//! 1. size the carve-out with the core's sizing functions and take it from the top of RAM:
//!    `[vmemmap directory + entries][EL2 page pool][host stage-2 table pool]`;
//! 2. build the vmemmap over all of memory, EL2's stage-1 (image text RX, rodata RO,
//!    data/bss/stacks RW, the carve-out RW, the UART as device) and the host stage-2 with every
//!    page EL2 owns annotated — all by `Hyp::new`;
//! 3. copy the device tree below the carve-out with `/memreserve/` entries for EL2's memory,
//!    for the host, without the nodes of the devices EL2 hides (the GICv3 ITS, fw_cfg: they
//!    write memory behind stage-2; `pkvm_hyp::devices`);
//! 4. turn on EL2's MMU and caches, then (after the EL1 set-up) the host stage-2.

use core::arch::asm;

use pkvm_abi::PAGE_SIZE;
use pkvm_abi::boot::{HOST_LOAD_ADDR, QEMU_VIRT_RAM_BASE};
use pkvm_hyp::devices::{DeviceKind, DeviceRange, GICR_RD_FRAME, MAX_DEVICE_RANGES};
use pkvm_hyp::hyp::Hyp;
use pkvm_hyp::memory::{MemRegion, MemoryMap};
use pkvm_hyp::platform::PhysMem;
use pkvm_hyp::setup::{BootParams, HypMapping};
use pkvm_hyp::sizing::{self, PlanError};
use pkvm_hyp::vmemmap::{HypPage, Vmemmap};
use pkvm_pgtable::Prot;
use spin::Once;

use crate::boot::{MAX_CPUS, STACK_SIZE, STACK_STRIDE};
use crate::dt::Platform as Dt;
use crate::fdt_patch;
use crate::platform::{El2Platform, PLATFORM};

static MEMORY_MAP: Once<MemoryMap> = Once::new();
static HYP: Once<Hyp<'static, El2Platform>> = Once::new();

/// Extra pages in EL2's pool beyond its stage-1 tables (guest structures, later).
const HYP_POOL_EXTRA_PAGES: u64 = 256;
/// Room for the host's copy of the device tree, below the carve-out.
const DTB_SLOT: u64 = 2 << 20;

/// The running hypervisor. `None` until [`init`] has run.
#[inline(always)]
pub fn hyp() -> Option<&'static Hyp<'static, El2Platform>> {
    HYP.get()
}

/// What the host gets.
#[derive(Debug)]
pub struct HostBoot {
    /// Address of the host's device tree.
    pub dtb: u64,
}

unsafe extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __data_end: u8;
    static el2_stacks: u8;
}

fn sym(s: &u8) -> u64 {
    core::ptr::from_ref(s) as u64
}

/// Device-tree `compatible`s of the devices EL2 hides from the host.
const HIDDEN_COMPATIBLES: [&str; 3] = ["arm,gic-v3-its", "qemu,fw-cfg-mmio", "arm,smmu-v3"];

/// Reads the 64-bit register at `pa` (MMU off: a Device access).
fn mmio_read64(pa: u64) -> u64 {
    // SAFETY: only called at boot, with EL2's MMU off (so a Device-nGnRnE access), on
    // registers of a redistributor the walk below knows exists (the device tree's region,
    // frame by frame until `GICR_TYPER.Last`); reading them has no side effect.
    unsafe { core::ptr::read_volatile(pa as *const u64) }
}

/// Writes the 32-bit register at `pa` (MMU off), as [`mmio_read64`].
fn mmio_write32(pa: u64, v: u32) {
    // SAFETY: as in `mmio_read64`; clearing `GICR_CTLR.EnableLPIs` of a redistributor no one
    // uses yet.
    unsafe { core::ptr::write_volatile(pa as *mut u32, v) }
}

/// Makes the EL2 physical timer's interrupt (PPI 26, [`pkvm_arch::regs::CNTHP_INTID`]) one the
/// CPU interface signals, in the redistributor at `rd_base` (MMU off, at boot): Group 1, priority
/// 0x80 (above any mask a host leaves open), level-sensitive, enabled. The world switch arms
/// the timer at the host's next deadline: the interrupt ends a guest's run.
fn enable_preemption_ppi(rd_base: u64) {
    use pkvm_arch::regs::CNTHP_INTID as ID;
    let sgi = rd_base + GICR_RD_FRAME;
    let bit = 1u32 << ID;
    // SAFETY: the redistributor's SGI_base frame, right after the RD_base frame the walk
    // found (the GIC architecture's layout), MMU off (Device accesses); these registers only
    // configure PPI 26, which nothing else uses (the host's and the guests' timers are PPIs 27
    // and 30).
    unsafe {
        let igroupr0 = (sgi + 0x80) as *mut u32;
        igroupr0.write_volatile(igroupr0.read_volatile() | bit);
        ((sgi + 0x400 + u64::from(ID)) as *mut u8).write_volatile(0x80);
        let icfgr1 = (sgi + 0xc04) as *mut u32;
        icfgr1.write_volatile(icfgr1.read_volatile() & !(3 << (2 * (ID - 16))));
        ((sgi + 0x100) as *mut u32).write_volatile(bit);
    }
}

/// The device ranges EL2 keeps from the host: the ITS and fw_cfg hidden, and every
/// redistributor the machine has, found by walking each redistributor region frame by frame
/// as the GIC architecture defines it (not guessed from the CPU count): its `RD_base` frame
/// emulated; with virtual LPIs (`GICR_TYPER.VLPIS`, GICv4) the frame pair after it (the
/// `VLPI_base` frame, whose `GICR_VPROPBASER`/`GICR_VPENDBASER` name memory the GIC uses, and
/// the reserved frame) hidden and the stride 256 KiB instead of 128 KiB; until
/// `GICR_TYPER.Last`. A device-tree `redistributor-stride` wins, as it does for Linux. LPIs
/// left enabled by firmware are switched off, and EL2 refuses to boot if they stay on.
fn device_ranges(dt: &Dt) -> ([DeviceRange; MAX_DEVICE_RANGES], usize) {
    use pkvm_hyp::devices::RedistFrames;
    let mut out = [DeviceRange {
        start: 0,
        end: 0,
        kind: DeviceKind::Hidden,
    }; MAX_DEVICE_RANGES];
    let mut n = 0;
    let mut push = |base: u64, size: u64, kind| {
        let start = base & !(PAGE_SIZE - 1);
        let end = base.saturating_add(size).next_multiple_of(PAGE_SIZE);
        if n == MAX_DEVICE_RANGES {
            result_fail!("too many device ranges to keep from the host");
        }
        out[n] = DeviceRange { start, end, kind };
        n += 1;
    };
    if let Some(g) = &dt.gic {
        for r in &g.its[..g.nr_its] {
            push(r.base, r.size, DeviceKind::Hidden);
        }
        'regions: for r in &g.redist[..g.nr_redist] {
            let mut frame = r.base;
            while frame + GICR_RD_FRAME <= r.base + r.size {
                let typer = mmio_read64(frame + pkvm_hyp::devices::gicr::TYPER);
                if mmio_read64(frame + pkvm_hyp::devices::gicr::CTLR) & 1 != 0 {
                    mmio_write32(frame + pkvm_hyp::devices::gicr::CTLR, 0);
                    if mmio_read64(frame + pkvm_hyp::devices::gicr::CTLR) & 1 != 0 {
                        result_fail!("LPIs enabled on the redistributor at {frame:#x} and stuck");
                    }
                }
                push(frame, GICR_RD_FRAME, DeviceKind::GicrRdBase);
                enable_preemption_ppi(frame);
                let f = RedistFrames::of(typer, g.redist_stride);
                if let Some((off, size)) = f.hidden {
                    push(frame + off, size, DeviceKind::Hidden);
                }
                if f.last {
                    continue 'regions;
                }
                frame += f.next;
            }
        }
    }
    if let Some(r) = dt.fw_cfg {
        push(r.base, r.size, DeviceKind::Hidden);
    }
    for r in &dt.hidden[..dt.nr_hidden] {
        push(r.base, r.size, DeviceKind::Hidden);
    }
    (out, n)
}

/// Sets up everything; on failure prints the reason, a fail result line, and powers off.
pub fn init(dt: &Dt, host_image_size: u64) -> HostBoot {
    PLATFORM.probe_features();
    let mut regions = [MemRegion::default(); crate::dt::MAX_MEMORY_REGIONS];
    for (r, m) in regions.iter_mut().zip(dt.memory()) {
        *r = MemRegion::new(m.base, m.size);
    }
    let map = match MemoryMap::new(&regions[..dt.memory().len()]) {
        Ok(m) => MEMORY_MAP.call_once(|| m),
        Err(e) => result_fail!("bad memory map in the device tree: {e}"),
    };
    let (pa_bits, ps) = pkvm_rt::regs::pa_range();

    // 1. Carve-out sizes and place (planned by the portable core, unit-tested there).
    let host_end = HOST_LOAD_ADDR + host_image_size;
    let plan = match sizing::plan_carveout(
        map,
        (HOST_LOAD_ADDR, host_end),
        DTB_SLOT,
        HYP_POOL_EXTRA_PAGES,
        &dt.firmware_ranges(),
    ) {
        Ok(p) => p,
        Err(PlanError::MapTooLarge) => result_fail!("memory map too large for the vmemmap"),
        Err(PlanError::NoRamAtHost) => result_fail!("no RAM at the host load address"),
        Err(PlanError::NoRoom { bytes }) => result_fail!(
            "not enough RAM for the host image, its DTB and EL2's {} KiB carve-out",
            bytes / 1024
        ),
    };
    let layout = plan.layout;
    let (co_start, co_end) = plan.carveout;
    let dtb_dst = plan.dtb;
    let vm_start = plan.vmemmap.0;
    let vm_pages = layout.pages();
    let (pool, host_pool) = (plan.hyp_pool, plan.host_pool);
    println!(
        "EL2: carve-out {co_start:#x}..{co_end:#x} ({} KiB): vmemmap {vm_pages} pages, EL2 pool {}, host stage-2 pool {}; {pa_bits}-bit PA",
        (co_end - co_start) / 1024,
        (pool.1 - pool.0) / PAGE_SIZE,
        (host_pool.1 - host_pool.0) / PAGE_SIZE,
    );

    // 2. The vmemmap, over zeroed carve-out memory.
    PLATFORM.zero(vm_start, vm_pages * PAGE_SIZE);
    let dir_pa = vm_start;
    let entries_pa = vm_start + layout.dir_pages() * PAGE_SIZE;
    // SAFETY: `[dir_pa, dir_pa + dir_pages)` and `[entries_pa, entries_pa + entry_pages)` are
    // disjoint, zeroed, page-aligned parts of the carve-out, which nothing else uses and which
    // stays mapped (VA == PA) for EL2's whole life. Zero is a valid `u32` and a valid
    // `HypPage` (all-atomic fields). These are the only references ever made to that memory.
    let (dir, pages) = unsafe {
        (
            core::slice::from_raw_parts_mut(dir_pa as *mut u32, layout.dir_slots),
            core::slice::from_raw_parts(entries_pa as *const HypPage, layout.entries()),
        )
    };
    let vmemmap = match Vmemmap::new(map, dir, pages) {
        Ok(v) => v,
        Err(e) => result_fail!("vmemmap: {e}"),
    };

    // SAFETY: the linker script defines these symbols; only their addresses are used.
    let (text, text_end, ro, ro_end, data, data_end, stacks) = unsafe {
        (
            sym(&__text_start),
            sym(&__text_end),
            sym(&__rodata_start),
            sym(&__rodata_end),
            sym(&__data_start),
            sym(&__data_end),
            sym(&el2_stacks),
        )
    };
    let uart = (dt.uart_base as u64) & !(PAGE_SIZE - 1);
    let (devices, nr_devices) = device_ranges(dt);
    let devices = &devices[..nr_devices];
    let image_maps = [
        HypMapping {
            va: text,
            pa: text,
            size: text_end - text,
            prot: Prot::R | Prot::X,
        },
        HypMapping {
            va: ro,
            pa: ro,
            size: ro_end - ro,
            prot: Prot::R,
        },
        HypMapping {
            va: data,
            pa: data,
            size: data_end - data,
            prot: Prot::R | Prot::W,
        },
        HypMapping {
            va: co_start,
            pa: co_start,
            size: co_end - co_start,
            prot: Prot::R | Prot::W,
        },
        HypMapping {
            va: uart,
            pa: uart,
            size: PAGE_SIZE,
            prot: Prot::R | Prot::W | Prot::DEVICE,
        },
    ];
    // Each CPU's stack, without the guard page below it; then the registers EL2 emulates for
    // the host (device, never executable).
    let mut maps = [image_maps[0]; 5 + MAX_CPUS + MAX_DEVICE_RANGES];
    maps[..5].copy_from_slice(&image_maps);
    let mut nr_maps = 5;
    for i in 0..MAX_CPUS as u64 {
        let top = stacks + (i + 1) * STACK_STRIDE as u64;
        maps[nr_maps] = HypMapping {
            va: top - STACK_SIZE as u64,
            pa: top - STACK_SIZE as u64,
            size: STACK_SIZE as u64,
            prot: Prot::R | Prot::W,
        };
        nr_maps += 1;
    }
    for d in devices.iter().filter(|d| d.kind == DeviceKind::GicrRdBase) {
        maps[nr_maps] = HypMapping {
            va: d.start,
            pa: d.start,
            size: d.end - d.start,
            prot: Prot::R | Prot::W | Prot::DEVICE,
        };
        nr_maps += 1;
    }
    for d in devices {
        println!(
            "EL2: device {:#x}..{:#x} kept from the host: {}",
            d.start,
            d.end,
            match d.kind {
                DeviceKind::Hidden => "hidden (writes memory behind stage-2)",
                DeviceKind::GicrRdBase => "redistributor RD_base, trapped and emulated",
            }
        );
    }
    let hyp_ranges = [(QEMU_VIRT_RAM_BASE, HOST_LOAD_ADDR), (co_start, co_end)];
    let params = BootParams {
        hyp_ranges: &hyp_ranges,
        pool,
        host_pool,
        hyp_maps: &maps[..nr_maps],
        pa_bits,
        devices,
    };
    let hyp = match Hyp::new(&PLATFORM, map, vmemmap, &params) {
        Ok(h) => HYP.call_once(|| h),
        Err(e) => result_fail!("hypervisor set-up failed at {}: {}", e.step, e.error),
    };
    if hyp.finalise().is_err() {
        result_fail!("finalise refused");
    }

    // 3. The host's device tree.
    let (src, src_len) = dt.dtb;
    // SAFETY: QEMU's DTB is `src_len` bytes at `src`, in RAM, and nothing writes it; the
    // destination slot below the carve-out is RAM no one uses yet and does not overlap it
    // (checked above). Both are plain byte buffers.
    let (src_buf, dst_buf) = unsafe {
        (
            core::slice::from_raw_parts(src as *const u8, src_len as usize),
            core::slice::from_raw_parts_mut(dtb_dst as *mut u8, DTB_SLOT as usize),
        )
    };
    let reserved = [
        (QEMU_VIRT_RAM_BASE, HOST_LOAD_ADDR - QEMU_VIRT_RAM_BASE),
        (co_start, co_end - co_start),
    ];
    let len = match fdt_patch::add_memreserve(src_buf, dst_buf, &reserved) {
        Ok(len) => len,
        Err(e) => result_fail!("cannot copy the device tree for the host: {e:?}"),
    };
    match fdt_patch::hide_nodes(&mut dst_buf[..len], &HIDDEN_COMPATIBLES) {
        Ok(n) => println!("EL2: host device tree: {n} device node(s) removed (ITS, fw_cfg, SMMU)"),
        Err(e) => result_fail!("cannot remove hidden devices from the host's device tree: {e:?}"),
    }

    // 4. EL2's MMU.
    enable_el2_mmu(hyp.hyp_pgd(), ps);
    PLATFORM.set_mmu_on();
    println!(
        "EL2: MMU on (TTBR0_EL2 {:#x}); host stage-2 root {:#x}",
        hyp.hyp_pgd(),
        hyp.host_pgd()
    );
    HostBoot { dtb: dtb_dst }
}

/// Loads EL2's stage-1 and turns on the MMU and caches. The identity map keeps the PC valid.
fn enable_el2_mmu(root: u64, ps: u64) {
    // TCR_EL2 (E2H = 0): RES1 bits 31 and 23; PS; TG0 = 4 KiB; inner-shareable, write-back
    // walks; T0SZ = 16 (48-bit VA).
    let tcr = (1 << 31) | (1 << 23) | (ps << 16) | (3 << 12) | (1 << 10) | (1 << 8) | 16;
    let sctlr = crate::boot::SCTLR_EL2_MMU_OFF | (1 << 0) | (1 << 2) | (1 << 12);
    // SAFETY: the tables at `root` map this code, its stack, the console and all memory EL2
    // touches at VA == PA with the right attributes (built by `Hyp::new`), so execution
    // continues seamlessly once SCTLR_EL2.M is set. The TLB is invalidated first.
    unsafe {
        asm!(
            "dsb ish",
            "msr mair_el2, {mair}",
            "msr tcr_el2, {tcr}",
            "msr ttbr0_el2, {root}",
            "isb",
            "tlbi alle2",
            "dsb ish",
            "isb",
            "msr sctlr_el2, {sctlr}",
            "isb",
            mair = in(reg) pkvm_pgtable::desc::MAIR_EL2_VALUE,
            tcr = in(reg) tcr,
            root = in(reg) root,
            sctlr = in(reg) sctlr,
            options(nostack)
        );
    }
}

/// Installs the host stage-2 (VMID 0) and sets `HCR_EL2.VM`: from here on every host access
/// goes through it. Called after the EL1 set-up, just before entering the host.
pub fn enable_host_stage2() {
    let Some(hyp) = hyp() else { return };
    let (_, ps) = pkvm_rt::regs::pa_range();
    let cfg = hyp.host_s2_config();
    let vtcr = (1u64 << 31)
        | (ps << 16)
        | (3 << 12)
        | (1 << 10)
        | (1 << 8)
        | (u64::from(cfg.vtcr_sl0()) << 6)
        | u64::from(cfg.t0sz());
    // SAFETY: the host stage-2 at `host_pgd` is complete (everything EL2 owns is annotated,
    // the rest faults in lazily); enabling it only restricts what EL1 can reach. Stale stage-1+2
    // TLB entries of VMID 0 are dropped.
    unsafe {
        asm!(
            "msr vtcr_el2, {vtcr}",
            "msr vttbr_el2, {vttbr}",
            "isb",
            "mrs {tmp}, hcr_el2",
            "orr {tmp}, {tmp}, #1",
            "msr hcr_el2, {tmp}",
            "isb",
            "tlbi vmalls12e1is",
            "dsb ish",
            "isb",
            vtcr = in(reg) vtcr,
            vttbr = in(reg) hyp.host_pgd(),
            tmp = out(reg) _,
            options(nostack)
        );
    }
}
