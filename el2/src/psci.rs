//! PSCI from EL2: EL2 is the one that talks to the firmware (QEMU's PSCI emulation, reached
//! with `SMC` because QEMU runs with `secure=off`), for itself and on behalf of the host.

use crate::context::HostContext;
use crate::hcall::{PsciAction, psci_action};
use crate::smp;

/// Powers the machine off (QEMU exits). Never returns.
pub fn system_off() -> ! {
    let _ = smccc::psci::system_off::<smccc::Smc>();
    loop {
        aarch64_cpu::asm::wfe();
    }
}

/// Calls the firmware with `SMC #0`: `x0` = `fid`, `x1..=x3` = `args`; returns `x0`.
pub fn firmware_call(fid: u32, args: [u64; 3]) -> i64 {
    let mut a = [0u64; 17];
    a[..3].copy_from_slice(&args);
    smccc::smc64(fid, a)[0] as i64
}

/// Handles a standard-service (PSCI) or SMCCC-architecture call that the host made with `SMC`
/// (trapped by `HCR_EL2.TSC`) or `HVC`, as [`psci_action`] decides: relayed to the firmware
/// with `SMC #0` (results `x0..=x3` copied back), emulated (CPU_ON, CPU_OFF) or answered.
pub fn relay_host_call(ctx: &mut HostContext) {
    let fid = ctx.reg(0) as u32;
    match psci_action(fid, ctx.reg(1)) {
        PsciAction::Relay => {
            let mut args = [0u64; 17];
            for (n, a) in args.iter_mut().enumerate() {
                *a = ctx.reg(n + 1);
            }
            let ret = smccc::smc64(fid, args);
            for (n, r) in ret.iter().take(4).enumerate() {
                ctx.set_reg(n, *r);
            }
        }
        PsciAction::CpuOn => {
            // The 32-bit call passes its arguments in w1..w3.
            let m = if fid == pkvm_abi::psci::CPU_ON_32 {
                u64::from(u32::MAX)
            } else {
                u64::MAX
            };
            let r = smp::cpu_on(ctx.reg(1) & m, ctx.reg(2) & m, ctx.reg(3) & m);
            ctx.set_reg(0, r as u64);
        }
        PsciAction::CpuOff => {
            let r = smp::cpu_off();
            ctx.set_reg(0, r as u64);
        }
        PsciAction::Answer(v) => ctx.set_reg(0, v as u64),
    }
}
