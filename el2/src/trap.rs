//! Traps from the host into EL2.
//!
//! [`handle_host_trap`] is the Rust entry of the host's trap path (lower-EL synchronous
//! exceptions, AArch64 and AArch32). Nothing the host does reaches a panic from here:
//!
//! - `HVC`: vendor-hypervisor calls go to the portable dispatcher, the rest to the PSCI relay;
//! - `SMC` (trapped by `HCR_EL2.TSC`): the PSCI relay;
//! - stage-2 aborts: mapped lazily, refused with an injected synchronous external abort, or —
//!   for the device registers EL2 emulates — emulated on the slow path
//!   ([`handle_host_trap_all`], which has every host register);
//! - anything else EL2 traps and does not emulate (a system register `HCR_EL2.EnSCXT` = 0
//!   traps, an AArch32 coprocessor access, ...): an UNDEF injected into the host, exactly as
//!   if the instruction did not exist.

use crate::boot::FullFrame;
use crate::context::{HighRegs, HostContext, host_reg, set_host_reg};
use crate::{hyp_init, psci, sysregs};
use core::sync::atomic::{AtomicU64, Ordering};
use pkvm_abi::HVC_BASE;
use pkvm_arch::addr::Ipa;
use pkvm_arch::esr::{Ec, Esr};
use pkvm_hyp::devices::MmioAccess;
use pkvm_hyp::host_fault::HostFault;

/// [`handle_host_trap`]'s answer: the trap is handled.
const DONE: u64 = 0;
/// [`handle_host_trap`]'s answer: call [`handle_host_trap_all`] with every register saved.
const NEED_ALL_REGS: u64 = 1;

// The names of the 16 vector entries, shared by the three images.
use pkvm_rt::vectors::VECTOR_NAMES;

/// Handles a synchronous exception from the host. `ctx` holds the host's `x0..=x18` and `x30`;
/// what is left there is what the host sees after `eret`. Returns [`NEED_ALL_REGS`] when the
/// trap needs [`handle_host_trap_all`].
#[inline(always)]
pub fn handle_host_trap(ctx: &mut HostContext) -> u64 {
    let esr = Esr(sysregs::esr());
    match esr.ec() {
        Ec::Hvc64 => {
            if ctx.reg(0) & !0xffff == HVC_BASE
                && let Some(hyp) = hyp_init::hyp()
            {
                let (x, _) = ctx
                    .regs
                    .split_first_chunk_mut::<8>()
                    .expect("19 saved registers");
                hyp.handle_host_hcall(x);
            } else {
                psci::relay_host_call(ctx);
            }
            DONE
        }
        Ec::Smc64 => {
            psci::relay_host_call(ctx);
            sysregs::skip_host_instruction(4);
            DONE
        }
        Ec::DabtLow | Ec::IabtLow => host_mem_abort(esr),
        _ => {
            host_undef(esr);
            DONE
        }
    }
}

/// A host access faulted at stage 2: map it lazily, emulate it, or inject a synchronous
/// external abort into the host if it may not access that address. EL2 keeps running.
#[inline(never)]
fn host_mem_abort(esr: Esr) -> u64 {
    let far = sysregs::far();
    // Translation, access-flag and permission faults come with a valid HPFAR_EL2; anything
    // else (an external abort from a device, say) is reflected to the host as it is.
    let decision = match (esr.fault_class().hpfar_valid(), hyp_init::hyp()) {
        (true, Some(hyp)) => hyp.handle_host_mem_abort(fault_ipa(far), esr.fault_class()),
        _ => HostFault::InjectAbort,
    };
    match decision {
        HostFault::Mapped => DONE,
        HostFault::Emulate if esr.data_abort().is_some_and(|d| d.is_emulatable()) => NEED_ALL_REGS,
        HostFault::Emulate | HostFault::InjectAbort => {
            refuse_access(esr, far, decision == HostFault::Emulate);
            DONE
        }
    }
}

/// The faulting IPA of a stage-2 abort (HPFAR_EL2 gives the page, FAR_EL2 the offset).
fn fault_ipa(far: u64) -> Ipa {
    pkvm_arch::esr::fault_ipa(sysregs::hpfar(), far)
}

/// Refused host accesses so far (for the log's rate limit).
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Injects the synchronous external abort for a refused access (counted as injected unless
/// the fault path already did). Logged for the first 8 refusals and then at every power of
/// two: the host decides how many there are, and must not be able to keep EL2 printing.
fn refuse_access(esr: Esr, far: u64, count: bool) {
    if count && let Some(hyp) = hyp_init::hyp() {
        hyp.counters()
            .injected_aborts
            .fetch_add(1, Ordering::Relaxed);
    }
    let n = REFUSED.fetch_add(1, Ordering::Relaxed) + 1;
    if n <= 8 || n.is_power_of_two() {
        let elr = sysregs::fault_regs().1;
        crate::console::print(format_args!(
            "EL2: host access to {far:#x} (pc {elr:#x}) refused: abort injected into the host (refusal {n})\n"
        ));
    }
    sysregs::inject_host_sea(esr.0, far);
}

/// The slow path: an access to a device register EL2 emulates, with every host register at
/// hand (the transfer register may be any of them). A load's value lands in the register
/// (sign-extended and sized as the instruction says), the host resumes after the instruction.
pub fn handle_host_trap_all(ctx: &mut HostContext, high: &mut HighRegs) {
    let esr = Esr(sysregs::esr());
    let far = sysregs::far();
    let (Some(hyp), Some(d)) = (hyp_init::hyp(), esr.data_abort()) else {
        refuse_access(esr, far, true);
        return;
    };
    let acc = MmioAccess {
        write: d.wnr,
        size: d.size(),
        value: if d.wnr {
            d.store_value(host_reg(ctx, high, d.srt))
        } else {
            0
        },
    };
    match hyp.host_mmio_access(fault_ipa(far), acc) {
        Ok(v) => {
            if !d.wnr {
                set_host_reg(ctx, high, d.srt, d.load_value(v));
            }
            sysregs::skip_host_instruction(esr.insn_len());
        }
        Err(_) => refuse_access(esr, far, true),
    }
}

/// A trapped instruction EL2 does not emulate: the host gets an UNDEF, as if it did not
/// exist. The first few are logged (the `hostile` scenario makes tens of thousands).
#[inline(never)]
#[cold]
fn host_undef(esr: Esr) {
    let n = hyp_init::hyp().map_or(0, |hyp| {
        hyp.counters()
            .injected_undefs
            .fetch_add(1, Ordering::Relaxed)
    });
    if n < 4 || n.is_power_of_two() {
        let (_, elr, _, spsr) = sysregs::fault_regs();
        crate::console::print(format_args!(
            "EL2: host instruction at {elr:#x} trapped (ESR_EL2 {:#x}, EC {:#x}, SPSR {spsr:#x}): \
             UNDEF injected (#{})\n",
            esr.0,
            esr.ec_bits(),
            n + 1
        ));
    }
    sysregs::inject_host_undef();
}

/// Reports an exception on any vector other than the host's synchronous ones.
pub fn unexpected_exception(kind: u64, frame: &FullFrame) -> ! {
    let (esr, elr, far, spsr) = sysregs::fault_regs();
    let name = VECTOR_NAMES.get(kind as usize).copied().unwrap_or("?");
    let r = &frame.regs;
    panic!(
        "unexpected exception ({name}): ESR_EL2={esr:#x} (EC {:#x}) ELR_EL2={elr:#x} \
         FAR_EL2={far:#x} SPSR_EL2={spsr:#x} x0={:#x} x1={:#x} x2={:#x} x3={:#x} lr={:#x}",
        Esr(esr).ec_bits(),
        r[0],
        r[1],
        r[2],
        r[3],
        r[30]
    );
}
