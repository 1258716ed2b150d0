//! What EL2 does with the host's standard-service (PSCI) and SMCCC-architecture calls. Pure
//! code, unit-tested on the development machine. The vendor-hypervisor calls (pkvm-rs's own
//! ABI) are dispatched by the portable core, `pkvm_hyp::hyp::Hyp::handle_host_hcall`.

use pkvm_abi::psci;

/// How EL2 handles one PSCI / SMCCC call from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciAction {
    /// Forward to the firmware with `SMC #0` and copy `x0..=x3` back.
    Relay,
    /// CPU_ON: EL2 starts the CPU in its own secondary entry (see `smp.rs`).
    CpuOn,
    /// CPU_OFF: EL2 forgets the CPU, then asks the firmware to power it off.
    CpuOff,
    /// EL2 answers `x0` itself.
    Answer(i64),
}

/// Calls EL2 handles at all (relayed, emulated or answered); PSCI_FEATURES reports exactly
/// these as supported, so it never advertises a call EL2 would refuse.
fn supported(fid: u32) -> bool {
    matches!(
        fid,
        psci::VERSION
            | psci::FEATURES
            | psci::CPU_ON_32
            | psci::CPU_ON_64
            | psci::CPU_OFF
            | psci::AFFINITY_INFO_32
            | psci::AFFINITY_INFO_64
            | psci::MIGRATE_INFO_TYPE
            | psci::SYSTEM_OFF
            | psci::SYSTEM_RESET
            | psci::SMCCC_VERSION
    )
}

/// Decides what EL2 does with the host's call `fid` (first argument `x1`).
///
/// * VERSION, AFFINITY_INFO, MIGRATE_INFO_TYPE, SYSTEM_OFF, SYSTEM_RESET: relayed.
/// * CPU_ON / CPU_OFF: emulated by EL2 on top of the firmware's (secondaries must start in
///   EL2's own entry, never directly in the host's).
/// * PSCI_FEATURES: answered, 0 for the calls above, NOT_SUPPORTED for the rest.
/// * SMCCC_VERSION: answered, 1.1. SMCCC_ARCH_FEATURES: 0 for SMCCC_ARCH_FEATURES itself,
///   NOT_SUPPORTED for everything else (the CPU-erratum workaround calls included: EL2
///   implements none of them).
/// * Anything else: NOT_SUPPORTED.
pub fn psci_action(fid: u32, x1: u64) -> PsciAction {
    const NOT_SUPPORTED: PsciAction = PsciAction::Answer(psci::NOT_SUPPORTED as i64);
    match fid {
        psci::VERSION
        | psci::AFFINITY_INFO_32
        | psci::AFFINITY_INFO_64
        | psci::MIGRATE_INFO_TYPE
        | psci::SYSTEM_OFF
        | psci::SYSTEM_RESET => PsciAction::Relay,
        psci::CPU_ON_32 | psci::CPU_ON_64 => PsciAction::CpuOn,
        psci::CPU_OFF => PsciAction::CpuOff,
        psci::FEATURES => {
            if supported(x1 as u32) && x1 >> 32 == 0 {
                PsciAction::Answer(0)
            } else {
                NOT_SUPPORTED
            }
        }
        psci::SMCCC_VERSION => PsciAction::Answer(psci::SMCCC_VERSION_1_1.into()),
        psci::SMCCC_ARCH_FEATURES => {
            if x1 as u32 == psci::SMCCC_ARCH_FEATURES {
                PsciAction::Answer(0)
            } else {
                NOT_SUPPORTED
            }
        }
        _ => NOT_SUPPORTED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psci_policy() {
        for fid in [
            psci::VERSION,
            psci::SYSTEM_OFF,
            psci::SYSTEM_RESET,
            psci::AFFINITY_INFO_64,
            psci::MIGRATE_INFO_TYPE,
        ] {
            assert_eq!(psci_action(fid, 0), PsciAction::Relay);
        }
        assert_eq!(psci_action(psci::CPU_ON_64, 1), PsciAction::CpuOn);
        assert_eq!(psci_action(psci::CPU_ON_32, 1), PsciAction::CpuOn);
        assert_eq!(psci_action(psci::CPU_OFF, 0), PsciAction::CpuOff);
        assert_eq!(
            psci_action(psci::FEATURES, psci::CPU_ON_64.into()),
            PsciAction::Answer(0)
        );
        assert_eq!(
            psci_action(psci::FEATURES, psci::SMCCC_VERSION.into()),
            PsciAction::Answer(0)
        );
        assert_eq!(
            psci_action(psci::FEATURES, psci::CPU_SUSPEND_64.into()),
            PsciAction::Answer(-1)
        );
        assert_eq!(
            psci_action(psci::SMCCC_VERSION, 0),
            PsciAction::Answer(0x1_0001)
        );
        assert_eq!(
            psci_action(psci::SMCCC_ARCH_FEATURES, 0x8000_8000),
            PsciAction::Answer(-1)
        );
        for fid in [psci::CPU_SUSPEND_64, 0x8600_ff01, 0xC600_0000, 0x8400_0050] {
            assert_eq!(psci_action(fid, 0), PsciAction::Answer(-1));
        }
    }
}
