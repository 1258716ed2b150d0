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
    vm_flags(m, nr, 0)
}

/// [`vm`] with these `VmDesc` flags.
fn vm_flags(m: &Machine<'_>, nr: u64, flags: u64) -> (VmHandle, u64) {
    let r0 = m.config().ram[0].0 >> PAGE_SHIFT;
    let c = m.client();
    let desc = (r0 + 0x140) << PAGE_SHIFT;
    c.share_hyp(r0 + 0x140, 1).unwrap();
    for (off, v) in [(0, 32), (8, nr), (24, flags), (32, 0), (40, 0)] {
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

/// A protected VM's vCPUs but the first start off: the guest starts one with PSCI `CPU_ON`
/// (answered at EL2, which sets the entry point and context in the private state), the host
/// cannot run it before; `CPU_OFF` turns it off again; `AFFINITY_INFO` reports it.
#[test]
fn a_protected_vm_starts_its_vcpus_with_psci_cpu_on_at_el2() {
    use pkvm_abi::guest::vm_flags;
    use pkvm_abi::psci;
    with_machine(&SimConfig::small(), |m| {
        let c = m.client();
        let (h, first) = vm_flags(m, 2, vm_flags::PROTECTED);
        add(m, h, first, 0).unwrap();
        add(m, h, first, 1).unwrap();
        assert_eq!(
            c.vcpu_run_at(h, 1).map(|_| ()),
            e(Error::Perm),
            "vCPU 1 is off"
        );
        // vCPU 0's PSCI calls, each answered at EL2 (x0 at the next entry), then power-off.
        let call = |x: [u64; 4]| -> i64 {
            m.plat
                .guest_script
                .lock()
                .unwrap()
                .push_back(SimGuestAction::Call(x));
            assert_eq!(c.vcpu_run_at(h, 0), Ok(exit::SYSTEM_EVENT));
            let xs = m.plat.guest_x.lock().unwrap();
            xs[xs.len() - 1][0] as i64
        };
        let cpu_on = u64::from(psci::CPU_ON_64);
        let affinity = u64::from(psci::AFFINITY_INFO_64);
        assert_eq!(call([affinity, 1, 0, 0]), 1, "off");
        assert_eq!(
            call([cpu_on, 7, 0x8000_1000, 0x42]),
            psci::INVALID_PARAMETERS.into()
        );
        assert_eq!(
            call([cpu_on, 0x100, 0x8000_1000, 0x42]),
            psci::INVALID_PARAMETERS.into()
        );
        assert_eq!(call([cpu_on, 1, 0x8000_1000, 0x42]), psci::SUCCESS.into());
        assert_eq!(call([cpu_on, 1, 0x8000_2000, 0]), psci::ALREADY_ON.into());
        assert_eq!(call([affinity, 1, 0, 0]), 0, "on");
        // Only Aff0 names a vCPU: a lowest affinity level above 0 is refused.
        assert_eq!(
            call([affinity, 1, 1, 0]),
            psci::INVALID_PARAMETERS.into(),
            "level 1"
        );
        // vCPU 1 starts where vCPU 0 asked, with its context in x0.
        let before = m.plat.guest_entries.lock().unwrap().len();
        assert_eq!(c.vcpu_run_at(h, 1), Ok(exit::SYSTEM_EVENT));
        let entry = m.plat.guest_entries.lock().unwrap()[before];
        assert_eq!((entry.pc, entry.vmpidr), (0x8000_1000, vcpu_mpidr(1)));
        assert_eq!(m.plat.guest_x.lock().unwrap()[before][0], 0x42);
        // CPU_OFF: off again.
        m.plat
            .guest_script
            .lock()
            .unwrap()
            .push_back(SimGuestAction::Hvc(u64::from(psci::CPU_OFF), 0));
        assert_eq!(c.vcpu_run_at(h, 1), Ok(exit::SYSTEM_EVENT));
        assert_eq!(c.vcpu_run_at(h, 1).map(|_| ()), e(Error::Perm));
        assert_eq!(call([affinity, 1, 0, 0]), 1, "off again");
        assert_eq!(c.vm_destroy(h), Ok(()));
    });
}
