//! VMs with several vCPUs: `VmDesc::nr_vcpus` up to `MAX_VCPUS_PER_VM`, each vCPU added and run
//! by its index (`VcpuInit` `x4`, `VcpuRun` `x2`) with its own structures and its own
//! `MPIDR_EL1`; bad indices refused; teardown waits for every vCPU and unpins them all.

use pkvm_abi::guest::{MAX_VCPUS_PER_VM, PSTATE_EL1H_DAIF, exit, vcpu_mpidr, vcpu_off};
use pkvm_abi::{Error, PAGE_SHIFT, Stat};
use pkvm_client::{HcallError, VmHandle};
use pkvm_hyp::platform::PhysMem;
use pkvm_sim::platform::{PauseGate, SimGuestAction};
use pkvm_sim::{Machine, SimConfig, with_machine};

const fn e(err: Error) -> Result<(), HcallError> {
    Err(HcallError::Errno(err))
}

/// A VM of `nr` vCPUs (none added yet); the pfn of its structure pages' first.
fn vm(m: &Machine<'_>, nr: u64) -> (VmHandle, u64) {
    let r0 = m.config().ram[0].0 >> PAGE_SHIFT;
    let c = m.client();
    let desc = (r0 + 0x140) << PAGE_SHIFT;
    c.share_hyp(r0 + 0x140, 1).unwrap();
    for (off, v) in [(0, 32), (8, nr), (24, 0), (32, 0), (40, 0)] {
        m.plat.write_u64(desc + off, v);
    }
    let h = c.vm_init(desc, r0 + 0x100, 16).unwrap();
    (h, r0 + 0x141)
}

/// vCPU `i`'s structures: its own page (state at 0, FP at 0x400), shared with EL2.
fn add(m: &Machine<'_>, h: VmHandle, first: u64, i: u64) -> Result<(), HcallError> {
    let pfn = first + i;
    let st = pfn << PAGE_SHIFT;
    let _ = m.client().share_hyp(pfn, 1);
    m.plat
        .write_u64(st + vcpu_off::PSTATE as u64, PSTATE_EL1H_DAIF);
    m.client().vcpu_init_at(h, i, st, st + 0x400)
}

#[test]
fn each_vcpu_has_its_index_structures_and_mpidr() {
    with_machine(&SimConfig::small(), |m| {
        let c = m.client();
        // nr_vcpus 0 and past the maximum are refused.
        let r0 = m.config().ram[0].0 >> PAGE_SHIFT;
        let desc = (r0 + 0x140) << PAGE_SHIFT;
        c.share_hyp(r0 + 0x140, 1).unwrap();
        for bad in [0, MAX_VCPUS_PER_VM as u64 + 1] {
            m.plat.write_u64(desc, 32);
            m.plat.write_u64(desc + 8, bad);
            assert_eq!(
                c.vm_init(desc, r0 + 0x100, 16).map(|_| ()),
                e(Error::Inval),
                "nr_vcpus {bad}"
            );
        }
        c.unshare_hyp(r0 + 0x140, 1).unwrap();
        let (h, first) = vm(m, 3);
        assert_eq!(add(m, h, first, 1), Ok(()), "vCPU 1 before vCPU 0");
        assert_eq!(add(m, h, first, 1), e(Error::Busy), "vCPU 1 twice");
        assert_eq!(add(m, h, first, 3), e(Error::Inval), "past nr_vcpus");
        assert_eq!(add(m, h, first, 64), e(Error::Inval), "past the maximum");
        assert_eq!(add(m, h, first, 0), Ok(()));
        // vCPU 2 was never added; 7 does not exist.
        assert_eq!(c.vcpu_run_at(h, 2).map(|_| ()), e(Error::NoEnt));
        assert_eq!(c.vcpu_run_at(h, 7).map(|_| ()), e(Error::Inval));
        // Each runs from its own structure, with its own MPIDR.
        for i in [1, 0] {
            let before = m.plat.guest_entries.lock().unwrap().len();
            assert_eq!(c.vcpu_run_at(h, i), Ok(exit::SYSTEM_EVENT));
            let entry = m.plat.guest_entries.lock().unwrap()[before];
            assert_eq!(entry.vcpu_pa, (first + i) << PAGE_SHIFT, "vCPU {i}");
            assert_eq!(entry.vmpidr, vcpu_mpidr(i as usize), "vCPU {i}");
        }
        // Every vCPU's pins go at teardown.
        assert_eq!(c.vm_destroy(h), Ok(()));
        for pfn in [r0 + 0x140, first, first + 1] {
            assert_eq!(c.unshare_hyp(pfn, 1), Ok(()), "pfn {pfn:#x} still pinned");
        }
        assert_eq!(m.hyp.stat(Stat::PinnedPages), 0);
        assert_eq!(m.hyp.stat(Stat::LiveVms), 0);
        m.check_invariants().unwrap();
    });
}

#[test]
fn teardown_waits_for_every_vcpu() {
    static GATE: PauseGate = PauseGate::new();
    with_machine(&SimConfig::small(), |m| {
        let (h, first) = vm(m, 2);
        add(m, h, first, 0).unwrap();
        add(m, h, first, 1).unwrap();
        m.plat
            .guest_script
            .lock()
            .unwrap()
            .push_back(SimGuestAction::Pause(&GATE));
        std::thread::scope(|s| {
            let runner = s.spawn(|| m.client().vcpu_run_at(h, 1));
            GATE.wait_paused();
            // vCPU 1 runs: no teardown, and it cannot run twice; vCPU 0 may run meanwhile.
            assert_eq!(m.client().vm_teardown(h).map(|_| ()), e(Error::Busy));
            assert_eq!(m.client().vcpu_run_at(h, 1).map(|_| ()), e(Error::Busy));
            assert_eq!(m.client().vcpu_run_at(h, 0), Ok(exit::SYSTEM_EVENT));
            GATE.release();
            assert_eq!(runner.join().unwrap(), Ok(exit::SYSTEM_EVENT));
        });
        assert_eq!(m.client().vm_destroy(h), Ok(()));
    });
}
