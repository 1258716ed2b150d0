//! PSCI from EL2: EL2 is the one that talks to the firmware (QEMU's PSCI emulation, reached
//! with `SMC` because QEMU runs with `secure=off`), for itself and on behalf of the host.

use crate::context::HostContext;
use pkvm_abi::{SMCCC_NOT_SUPPORTED, psci};

/// Powers the machine off (QEMU exits). Never returns.
pub fn system_off() -> ! {
    let _ = smccc::psci::system_off::<smccc::Smc>();
    loop {
        aarch64_cpu::asm::wfe();
    }
}

/// Whether EL2 forwards host PSCI call `fid` to the firmware. Everything else is refused for
/// now (CPU_ON and friends need EL2's own entry point first).
fn relayed(fid: u32) -> bool {
    matches!(
        fid,
        psci::VERSION | psci::FEATURES | psci::SYSTEM_OFF | psci::SYSTEM_RESET
    )
}

/// Handles a standard-service call (PSCI) that the host made with `SMC` (trapped by
/// `HCR_EL2.TSC`) or `HVC`: relays the allowed ones to the firmware with `SMC #0` and copies the
/// results (`x0..=x3`) back; refuses the others with NOT_SUPPORTED.
pub fn relay_host_call(ctx: &mut HostContext) {
    let fid = ctx.reg(0) as u32;
    // PSCI_FEATURES must not advertise calls that we would refuse.
    let allowed = relayed(fid) && (fid != psci::FEATURES || relayed(ctx.reg(1) as u32));
    if !allowed {
        ctx.set_reg(0, SMCCC_NOT_SUPPORTED);
        return;
    }
    let mut args = [0u64; 17];
    for (n, a) in args.iter_mut().enumerate() {
        *a = ctx.reg(n + 1);
    }
    let ret = smccc::smc64(fid, args);
    for (n, r) in ret.iter().take(4).enumerate() {
        ctx.set_reg(n, *r);
    }
}
