//! PSCI from EL2: EL2 is the one that talks to the firmware (QEMU's PSCI emulation, reached
//! with `SMC` because QEMU runs with `secure=off`), for itself and on behalf of the host.

use crate::context::HostContext;
use crate::hcall;
use pkvm_abi::SMCCC_NOT_SUPPORTED;

/// Powers the machine off (QEMU exits). Never returns.
pub fn system_off() -> ! {
    let _ = smccc::psci::system_off::<smccc::Smc>();
    loop {
        aarch64_cpu::asm::wfe();
    }
}

/// Handles a standard-service call (PSCI) that the host made with `SMC` (trapped by
/// `HCR_EL2.TSC`) or `HVC`: relays the allowed ones to the firmware with `SMC #0` and copies the
/// results (`x0..=x3`) back; refuses the others with NOT_SUPPORTED.
pub fn relay_host_call(ctx: &mut HostContext) {
    let fid = ctx.reg(0) as u32;
    if !hcall::psci_relayed(fid, ctx.reg(1)) {
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
