//! Calls that race a running vCPU: the guest pauses inside `VcpuRun` (the simulated world
//! switch waits at a gate) while another CPU calls EL2.

use pkvm_abi::guest::{PSTATE_EL1H_DAIF, vcpu_off};
use pkvm_abi::{Error, PAGE_SHIFT};
use pkvm_client::HcallError;
use pkvm_hyp::platform::PhysMem;
use pkvm_sim::platform::{PauseGate, SimGuestAction};
use pkvm_sim::{SimConfig, with_machine};

static GATE: PauseGate = PauseGate::new();

/// A VM cannot be torn down, nor its vCPU entered a second time, while the vCPU runs; both
/// get `EBUSY`, and both work once the run has ended. Nothing leaks.
#[test]
fn teardown_and_a_second_run_wait_for_the_running_vcpu() {
    with_machine(&SimConfig::small(), |m| {
        let r0 = m.config().ram[0].0 >> PAGE_SHIFT;
        let (desc, mc, vcpu) = (r0 + 0x140, r0 + 0x100, r0 + 0x141);
        let vm = m.create_model_vm(desc, mc, Some(vcpu));
        m.plat.write_u64(
            (vcpu << PAGE_SHIFT) + vcpu_off::PSTATE as u64,
            PSTATE_EL1H_DAIF,
        );
        m.plat
            .guest_script
            .lock()
            .unwrap()
            .push_back(SimGuestAction::Pause(&GATE));
        let busy = Err(HcallError::Errno(Error::Busy));
        std::thread::scope(|s| {
            let runner = s.spawn(|| m.client().vcpu_run(vm));
            GATE.wait_paused();
            let c = m.client();
            assert_eq!(
                c.vm_teardown(vm).map(|_| ()),
                busy,
                "teardown of a running VM"
            );
            assert_eq!(c.vcpu_run(vm).map(|_| ()), busy, "a second entry");
            // Sharing into the running guest is allowed (its stage-2 is EL2's, under locks).
            assert_eq!(c.share_guest(vm, r0 + 0x200, 0x10, 1, 7), Ok(()));
            GATE.release();
            assert!(runner.join().unwrap().is_ok(), "the paused run completes");
        });
        let c = m.client();
        assert!(
            c.vcpu_run(vm).is_ok(),
            "runs again once the first run ended"
        );
        assert_eq!(c.vm_teardown(vm), Ok(0));
        assert_eq!(m.hyp.live_vms(), 0);
        for pfn in [desc, vcpu] {
            assert_eq!(c.unshare_hyp(pfn, 1), Ok(()), "unpinned after teardown");
        }
        m.check_invariants().unwrap();
        let start = pkvm_spec::Spec::new(m.spec_machine());
        assert_eq!(
            m.abstract_state().unwrap(),
            *start.state(),
            "back to the boot state"
        );
    });
}
