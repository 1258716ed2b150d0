//! Host hypercall dispatch (SMCCC over `HVC #0`), independent of the hardware so that it is
//! unit-tested on the development machine.
//!
//! A later issue replaces this with the portable dispatcher of `crates/hyp`; the contract with
//! the trap path stays [`dispatch`]`(&mut HostContext)`.

use crate::context::HostContext;
use pkvm_abi::{ABI_VERSION, HVC_BASE, HostHcall, SMCCC_NOT_SUPPORTED, SMCCC_SUCCESS};

/// Feature bits this EL2 advertises in `x3` of [`HostHcall::Version`]: none of the optional
/// features exist yet.
pub const FEATURES: u64 = 0;

/// What happened to a trapped `HVC`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered; the results are in the context.
    Done,
    /// Not a vendor-hypervisor call: the caller may treat it as a standard-service call (PSCI)
    /// or answer `NOT_SUPPORTED`.
    NotOurs,
}

/// Handles an `HVC` from the host: `x0` = function id, arguments in `x1..=x6`, results in
/// `x0..=x3`; `x4..=x17` are preserved (SMCCC 1.1).
#[inline(always)]
pub fn dispatch(ctx: &mut HostContext) -> Outcome {
    let fid = ctx.reg(0);
    if fid & !0xffff != HVC_BASE {
        return Outcome::NotOurs;
    }
    match HostHcall::from_fid(fid) {
        Some(HostHcall::Version) => {
            ctx.set_reg(0, SMCCC_SUCCESS);
            ctx.set_reg(1, 0);
            ctx.set_reg(2, ABI_VERSION);
            ctx.set_reg(3, FEATURES);
        }
        // Protection counts as finalised once the host runs, so boot-only calls are refused;
        // everything else is not implemented yet.
        Some(_) | None => ctx.set_reg(0, SMCCC_NOT_SUPPORTED),
    }
    Outcome::Done
}

/// Whether EL2 forwards the host's PSCI call `fid` (first argument `x1`) to the firmware.
/// Only VERSION, FEATURES, SYSTEM_OFF and SYSTEM_RESET are relayed for now (CPU_ON and friends
/// need EL2's own secondary entry point first), and PSCI_FEATURES only about those, so that it
/// never advertises a call EL2 would refuse.
pub fn psci_relayed(fid: u32, x1: u64) -> bool {
    use pkvm_abi::psci;
    let relayed = |f: u32| {
        matches!(
            f,
            psci::VERSION | psci::FEATURES | psci::SYSTEM_OFF | psci::SYSTEM_RESET
        )
    };
    relayed(fid) && (fid != psci::FEATURES || relayed(x1 as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pkvm_abi::hvc_fid;

    fn ctx_with(x0: u64) -> HostContext {
        let mut ctx = HostContext::default();
        for (n, r) in ctx.regs.iter_mut().enumerate() {
            *r = 0x1000 + n as u64;
        }
        ctx.lr = 0xdead;
        ctx.set_reg(0, x0);
        ctx
    }

    fn assert_preserved_from(ctx: &HostContext, first: usize) {
        for n in first..super::super::context::SAVED_GPRS {
            assert_eq!(ctx.reg(n), 0x1000 + n as u64, "x{n} clobbered");
        }
        assert_eq!(ctx.lr, 0xdead);
    }

    #[test]
    fn version() {
        let mut ctx = ctx_with(hvc_fid(HostHcall::Version));
        assert_eq!(dispatch(&mut ctx), Outcome::Done);
        assert_eq!(&ctx.regs[..4], &[0, 0, ABI_VERSION, FEATURES]);
        assert_preserved_from(&ctx, 4);
    }

    #[test]
    fn boot_only_and_unknown_are_refused() {
        for fid in [
            hvc_fid(HostHcall::Finalize),
            HVC_BASE | 0x7fff,
            HVC_BASE | 0xffff,
        ] {
            let mut ctx = ctx_with(fid);
            assert_eq!(dispatch(&mut ctx), Outcome::Done);
            assert_eq!(ctx.reg(0), SMCCC_NOT_SUPPORTED);
            assert_preserved_from(&ctx, 1);
        }
    }

    #[test]
    fn psci_relay_policy() {
        use pkvm_abi::psci;
        for fid in [psci::VERSION, psci::SYSTEM_OFF, psci::SYSTEM_RESET] {
            assert!(psci_relayed(fid, 0));
        }
        assert!(psci_relayed(psci::FEATURES, psci::SYSTEM_OFF.into()));
        assert!(!psci_relayed(psci::FEATURES, psci::CPU_ON_64.into()));
        for fid in [
            psci::CPU_ON_64,
            psci::CPU_OFF,
            psci::MIGRATE_INFO_TYPE,
            0xC600_0000,
        ] {
            assert!(!psci_relayed(fid, 0));
        }
    }

    #[test]
    fn other_services_are_not_ours() {
        for fid in [0x8400_0000, 0xC400_0003, 0x8000_0000, HVC_BASE | 0x1_0000] {
            let mut ctx = ctx_with(fid);
            assert_eq!(dispatch(&mut ctx), Outcome::NotOurs);
            assert_eq!(ctx.reg(0), fid);
            assert_preserved_from(&ctx, 1);
        }
    }
}
