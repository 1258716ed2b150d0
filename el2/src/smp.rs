//! Secondary CPUs: PSCI CPU_ON / CPU_OFF on behalf of the host.
//!
//! The host never gets to start a CPU directly in its own code: EL2 records the host's entry
//! point and context id, asks the firmware to start the CPU at EL2's secondary entry
//! (`el2_secondary_entry` in `boot.rs`) with the CPU's index as context id, and that entry
//! takes the CPU's own EL2 stack, installs the vectors and turns on the EL2 MMU with the
//! primary's tables and translation registers. [`el2_secondary_main`] then configures EL1 and
//! the host stage-2 exactly as on the primary, and only then enters the host's entry point at
//! EL1 with `x0` = its context id.
//!
//! Arguments are checked before anything happens: an MPIDR that is not a CPU of the device
//! tree gets INVALID_PARAMETERS, a CPU that is on (or being started) ALREADY_ON (ON_PENDING),
//! an entry point outside memory the host owns INVALID_ADDRESS.

use core::arch::asm;
use core::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use pkvm_abi::psci;
use pkvm_hyp::vmemmap::PageState;

use pkvm_rt::regs::MPIDR_AFF_MASK;

use crate::boot::MAX_CPUS;
use crate::hyp_init;

const OFF: u8 = 0;
const PENDING: u8 = 1;
const ON: u8 = 2;

/// Per-CPU boot state. Only touched with EL2's MMU on (Normal, cacheable memory).
struct Cpu {
    mpidr: AtomicU64,
    state: AtomicU8,
    entry: AtomicU64,
    context_id: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const CPU_INIT: Cpu = Cpu {
    mpidr: AtomicU64::new(u64::MAX),
    state: AtomicU8::new(OFF),
    entry: AtomicU64::new(0),
    context_id: AtomicU64::new(0),
};

static CPUS: [Cpu; MAX_CPUS] = [CPU_INIT; MAX_CPUS];
static NR_CPUS: AtomicUsize = AtomicUsize::new(0);

/// What a secondary needs before its MMU is on, read by `el2_secondary_entry` with the MMU
/// off: `MAIR_EL2`, `TCR_EL2`, `TTBR0_EL2`, `SCTLR_EL2` of the primary. Cleaned to the point
/// of coherency after it is written.
#[repr(C, align(64))]
pub struct SecondaryMmu {
    regs: [AtomicU64; 4],
}

/// Read by the assembly in `boot.rs`.
#[unsafe(no_mangle)]
pub static el2_secondary_mmu: SecondaryMmu = SecondaryMmu {
    regs: [const { AtomicU64::new(0) }; 4],
};

fn current_mpidr() -> u64 {
    let v: u64;
    // SAFETY: MPIDR_EL1 is always readable at EL2; no side effect.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v & MPIDR_AFF_MASK
}

/// Records the CPUs of the device tree (the boot CPU is on). Call on the primary before the
/// EL2 MMU is on (QEMU's device tree is not in EL2's stage-1).
///
/// The boot CPU is always index 0, whatever its place in `/cpus`: index `i` is also the EL2
/// stack slot the CPU runs on (`boot.rs`), and the primary took slot 0 before it knew its
/// index. The other CPUs follow in device-tree order.
pub fn probe(dtb: u64) {
    // SAFETY: `dtb` is QEMU's device tree, already parsed by `dt::Platform::probe`; it stays
    // in place and unmodified.
    let Ok(fdt) = (unsafe { fdt::Fdt::from_ptr(dtb as *const u8) }) else {
        return;
    };
    let me = current_mpidr();
    CPUS[0].mpidr.store(me, Ordering::Relaxed);
    CPUS[0].state.store(ON, Ordering::Relaxed);
    let mut n = 1;
    for cpu in fdt.cpus() {
        let mpidr = cpu.ids().first() as u64 & MPIDR_AFF_MASK;
        if mpidr == me {
            continue;
        }
        if n == MAX_CPUS {
            println!("EL2: more than {MAX_CPUS} CPUs in the device tree; the rest stay off");
            break;
        }
        CPUS[n].mpidr.store(mpidr, Ordering::Relaxed);
        n += 1;
    }
    NR_CPUS.store(n, Ordering::Release);
}

/// Records the EL2 translation registers the secondaries copy. Call on the primary with the
/// EL2 MMU on.
pub fn init() {
    let regs: [u64; 4];
    // SAFETY: reading EL2 system registers has no side effect.
    unsafe {
        let (mair, tcr, ttbr, sctlr): (u64, u64, u64, u64);
        asm!(
            "mrs {0}, mair_el2",
            "mrs {1}, tcr_el2",
            "mrs {2}, ttbr0_el2",
            "mrs {3}, sctlr_el2",
            out(reg) mair, out(reg) tcr, out(reg) ttbr, out(reg) sctlr,
            options(nomem, nostack, preserves_flags)
        );
        regs = [mair, tcr, ttbr, sctlr];
    }
    for (r, v) in el2_secondary_mmu.regs.iter().zip(regs) {
        r.store(v, Ordering::Relaxed);
    }
    // SAFETY: cleaning a cache line to the point of coherency only writes back data; the
    // secondaries read this structure with their MMU (and caches) off.
    unsafe {
        asm!(
            "dsb ish",
            "dc cvac, {0}",
            "dsb sy",
            in(reg) core::ptr::from_ref(&el2_secondary_mmu) as u64,
            options(nostack, preserves_flags)
        );
    }
}

fn index_of(mpidr: u64) -> Option<usize> {
    let n = NR_CPUS.load(Ordering::Acquire);
    CPUS[..n]
        .iter()
        .position(|c| c.mpidr.load(Ordering::Relaxed) == mpidr)
}

/// Whether the host may start a CPU at `entry`: a page of RAM the host owns (alone or shared).
fn host_owns(entry: u64) -> bool {
    let Some(hyp) = hyp_init::hyp() else {
        return false;
    };
    matches!(
        hyp.vmemmap().page(entry).map(|p| p.host_state()),
        Some(PageState::Owned | PageState::SharedOwned)
    )
}

/// PSCI CPU_ON for the host: returns the PSCI status for `x0`.
pub fn cpu_on(target: u64, entry: u64, context_id: u64) -> i64 {
    unsafe extern "C" {
        fn el2_secondary_entry();
    }
    if target & !MPIDR_AFF_MASK != 0 {
        return psci::INVALID_PARAMETERS.into();
    }
    let Some(idx) = index_of(target) else {
        return psci::INVALID_PARAMETERS.into();
    };
    if !host_owns(entry) {
        println!("EL2: CPU_ON({target:#x}) refused: entry {entry:#x} is not host memory");
        return psci::INVALID_ADDRESS.into();
    }
    let cpu = &CPUS[idx];
    if let Err(s) = cpu
        .state
        .compare_exchange(OFF, PENDING, Ordering::Acquire, Ordering::Relaxed)
    {
        return if s == ON {
            psci::ALREADY_ON.into()
        } else {
            psci::ON_PENDING.into()
        };
    }
    cpu.entry.store(entry, Ordering::Relaxed);
    cpu.context_id.store(context_id, Ordering::Relaxed);
    // The secondary reads these with its MMU on, through the same (coherent) mapping; the
    // firmware call below is ordered after the stores by the DSB.
    // SAFETY: a barrier has no memory-safety effect.
    unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
    let r = crate::psci::firmware_call(
        psci::CPU_ON_64,
        [target, el2_secondary_entry as *const () as u64, idx as u64],
    );
    if r != 0 {
        println!("EL2: firmware CPU_ON({target:#x}) failed: {r}");
        cpu.state.store(OFF, Ordering::Release);
    }
    r
}

/// PSCI CPU_OFF for the calling CPU: only returns on failure.
pub fn cpu_off() -> i64 {
    let idx = index_of(current_mpidr());
    if let Some(i) = idx {
        CPUS[i].state.store(OFF, Ordering::Release);
    }
    let r = crate::psci::firmware_call(psci::CPU_OFF, [0; 3]);
    if let Some(i) = idx {
        CPUS[i].state.store(ON, Ordering::Release);
    }
    r
}

/// Rust entry of a secondary CPU, called by `el2_secondary_entry` on the CPU's own stack with
/// VBAR_EL2 set and the EL2 MMU on. `idx` is the context id EL2 gave the firmware.
#[unsafe(no_mangle)]
extern "C" fn el2_secondary_main(idx: u64) -> ! {
    let idx = idx as usize;
    let cpu = &CPUS[idx];
    crate::sysregs::init_for_host();
    hyp_init::enable_host_stage2();
    let (entry, context_id) = (
        cpu.entry.load(Ordering::Relaxed),
        cpu.context_id.load(Ordering::Relaxed),
    );
    cpu.state.store(ON, Ordering::Release);
    println!(
        "EL2: CPU {idx} (MPIDR {:#x}) up: entering host at {entry:#x}, x0 = {context_id:#x}",
        cpu.mpidr.load(Ordering::Relaxed)
    );
    crate::boot::enter_host_secondary(idx, entry, context_id)
}
