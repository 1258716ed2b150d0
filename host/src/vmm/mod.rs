//! A VMM for an unmodified arm64 Linux guest, on the portable core of `crates/vmm`
//! (`pkvm-vmm-core`): the guest's RAM, kernel, initramfs and device tree ([`linux`]), its
//! devices emulated on MMIO exits (16550A console, GICv3 distributor and redistributor), its
//! interrupts delivered through EL2's list registers, its SMCCC/PSCI calls answered.
//!
//! The kernel and initramfs come from a bundle xtask loads with `-initrd` ([`bundle`]). The
//! VMM core needs `alloc`: [`init_heap`] gives the host a heap (a first-fit allocator from
//! `linked_list_allocator` over pages of free RAM) the first time a scenario needs one.

pub mod bundle;
pub mod linux;

use core::sync::atomic::{AtomicBool, Ordering};

use linked_list_allocator::LockedHeap;

use crate::env::Env;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

static HEAP_READY: AtomicBool = AtomicBool::new(false);

/// The heap's size: the guest's device tree and the GIC model need a few tens of KiB.
const HEAP_PAGES: u64 = 256;

/// Gives the host its heap (once; later calls do nothing).
pub fn init_heap(env: &mut Env) {
    if HEAP_READY.swap(true, Ordering::AcqRel) {
        return;
    }
    let base = env.pages(HEAP_PAGES, 4096);
    // SAFETY: `base` is HEAP_PAGES pages of free RAM the allocator handed out only now, mapped
    // read-write by the host's identity map, used by nothing else from now on; `init` runs once
    // (HEAP_READY).
    unsafe {
        HEAP.lock()
            .init(base as *mut u8, (HEAP_PAGES * 4096) as usize)
    };
}

/// The host's side of interrupt delivery, for a guest's preemption at the host's deadline: the distributor with affinity
/// routing and Group 1 on, its redistributor awake, its CPU interface taking Group 1 at any
/// priority (`enable`), or back off (its interrupts stay masked in PSTATE throughout: the host
/// never takes one, EL2 does while a guest runs).
pub fn host_gic(gic: (u64, u64), enable: bool) {
    let (gicd, gicr) = gic;
    // SAFETY: the GIC's distributor control and this CPU's redistributor WAKER (its first
    // redistributor: the host runs on CPU 0), MMIO identity-mapped; the host owns its GIC. The
    // CPU interface registers configure only which interrupts this CPU is signalled.
    unsafe {
        if enable {
            let ctlr = gicd as *mut u32;
            ctlr.write_volatile(ctlr.read_volatile() | (1 << 4) | (1 << 1)); // ARE, EnableGrp1
            let waker = (gicr + 0x14) as *mut u32;
            waker.write_volatile(waker.read_volatile() & !(1 << 1)); // ProcessorSleep
            for _ in 0..1_000_000 {
                if waker.read_volatile() & (1 << 2) == 0 {
                    break;
                }
            }
        }
        let (pmr, grpen) = if enable { (0xffu64, 1u64) } else { (0, 0) };
        core::arch::asm!(
            "msr S3_0_C4_C6_0, {p}",   // ICC_PMR_EL1
            "msr S3_0_C12_C12_7, {g}", // ICC_IGRPEN1_EL1
            "isb",
            p = in(reg) pmr,
            g = in(reg) grpen,
            options(nostack),
        );
    }
}
