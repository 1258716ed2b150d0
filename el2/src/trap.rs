//! Traps from the host into EL2.
//!
//! [`handle_host_trap`] is the single Rust entry of the host's trap path (lower-EL AArch64
//! synchronous exceptions); a later issue swaps its body for the portable dispatcher in
//! `crates/hyp`.

use crate::boot::FullFrame;
use crate::context::HostContext;
use crate::hcall::{self, Outcome};
use crate::{psci, sysregs};

/// ESR_EL2.EC: HVC executed in AArch64 state.
const EC_HVC64: u64 = 0x16;
/// ESR_EL2.EC: SMC executed in AArch64 state (trapped by HCR_EL2.TSC).
const EC_SMC64: u64 = 0x17;

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
            if hcall::dispatch(ctx) == Outcome::NotOurs {
                psci::relay_host_call(ctx);
            }
        }
        EC_SMC64 => {
            psci::relay_host_call(ctx);
            sysregs::skip_host_instruction();
        }
        _ => unexpected_host_trap(esr),
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
