//! Traps from the host into EL2.
//!
//! [`handle_host_trap`] is the single Rust entry of the host's trap path (lower-EL AArch64
//! synchronous exceptions); a later issue swaps its body for the portable dispatcher in
//! `crates/hyp`.

use crate::boot::FullFrame;
use crate::context::HostContext;
use crate::{hyp_init, psci, sysregs};
use pkvm_abi::HVC_BASE;
use pkvm_hyp::mem_protect::HostFault;

/// ESR_EL2.EC: HVC executed in AArch64 state.
const EC_HVC64: u64 = 0x16;
/// ESR_EL2.EC: SMC executed in AArch64 state (trapped by HCR_EL2.TSC).
const EC_SMC64: u64 = 0x17;
/// ESR_EL2.EC: instruction abort from a lower EL.
const EC_IABT_LOW: u64 = 0x20;
/// ESR_EL2.EC: data abort from a lower EL.
const EC_DABT_LOW: u64 = 0x24;

/// Names of the 16 vector entries, in table order.
const VECTOR_NAMES: [&str; 16] = [
    "current EL with SP_EL0, synchronous",
    "current EL with SP_EL0, IRQ",
    "current EL with SP_EL0, FIQ",
    "current EL with SP_EL0, SError",
    "current EL with SP_ELx, synchronous",
    "current EL with SP_ELx, IRQ",
    "current EL with SP_ELx, FIQ",
    "current EL with SP_ELx, SError",
    "lower EL AArch64, synchronous",
    "lower EL AArch64, IRQ",
    "lower EL AArch64, FIQ",
    "lower EL AArch64, SError",
    "lower EL AArch32, synchronous",
    "lower EL AArch32, IRQ",
    "lower EL AArch32, FIQ",
    "lower EL AArch32, SError",
];

/// Handles a synchronous exception from the host. `ctx` holds the host's `x0..=x18` and `x30`;
/// what is left there is what the host sees after `eret`.
#[inline(always)]
pub fn handle_host_trap(ctx: &mut HostContext) {
    let esr = sysregs::esr();
    match esr >> 26 {
        EC_HVC64 => {
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
        }
        EC_SMC64 => {
            psci::relay_host_call(ctx);
            sysregs::skip_host_instruction();
        }
        EC_DABT_LOW | EC_IABT_LOW => host_mem_abort(esr),
        _ => unexpected_host_trap(esr),
    }
}

/// A host access faulted at stage 2: map it lazily, or inject a synchronous external abort
/// into the host if it may not access that address. EL2 keeps running either way.
#[inline(never)]
fn host_mem_abort(esr: u64) {
    let far = sysregs::far();
    // DFSC/IFSC: translation (0b0001xx), access flag (0b0010xx) and permission (0b0011xx)
    // faults come with a valid HPFAR_EL2; anything else (an external abort from a device, say)
    // is reflected to the host as it is.
    let fsc = esr & 0x3f;
    let decision = match (fsc >> 2, hyp_init::hyp()) {
        (1..=3, Some(hyp)) => {
            let ipa = ((sysregs::hpfar() >> 4) << 12) | (far & 0xfff);
            hyp.handle_host_mem_abort(ipa)
        }
        _ => HostFault::InjectAbort,
    };
    if decision == HostFault::InjectAbort {
        let elr = sysregs::fault_regs().1;
        crate::console::print(format_args!(
            "EL2: host access to {far:#x} (pc {elr:#x}) refused: abort injected into the host\n"
        ));
        sysregs::inject_host_sea(esr, far);
    }
}

#[inline(never)]
#[cold]
fn unexpected_host_trap(esr: u64) -> ! {
    let (_, elr, far, spsr) = sysregs::fault_regs();
    panic!(
        "unexpected exception from the host ({}): ESR_EL2={esr:#x} (EC {:#x}) \
         ELR_EL2={elr:#x} FAR_EL2={far:#x} SPSR_EL2={spsr:#x}",
        VECTOR_NAMES[8],
        esr >> 26
    );
}

/// Reports an exception on any vector other than the host's synchronous one.
pub fn unexpected_exception(kind: u64, frame: &FullFrame) -> ! {
    let (esr, elr, far, spsr) = sysregs::fault_regs();
    let name = VECTOR_NAMES.get(kind as usize).copied().unwrap_or("?");
    let r = &frame.regs;
    panic!(
        "unexpected exception ({name}): ESR_EL2={esr:#x} (EC {:#x}) ELR_EL2={elr:#x} \
         FAR_EL2={far:#x} SPSR_EL2={spsr:#x} x0={:#x} x1={:#x} x2={:#x} x3={:#x} lr={:#x}",
        esr >> 26,
        r[0],
        r[1],
        r[2],
        r[3],
        r[30]
    );
}
