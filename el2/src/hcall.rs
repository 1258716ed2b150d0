//! Which standard-service (PSCI) calls from the host EL2 relays to the firmware. Pure code,
//! unit-tested on the development machine. The vendor-hypervisor calls (pkvm-rs's own ABI) are
//! dispatched by the portable core, `pkvm_hyp::mem_protect::Hyp::handle_host_hcall`.

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
}
