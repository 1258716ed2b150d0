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
