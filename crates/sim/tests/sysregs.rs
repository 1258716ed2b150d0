//! Trapped system-register accesses of a guest: debug and PMU registers are emulated at EL2
//! (read as zero, writes ignored, the guest resumed past the instruction, no exit), everything
//! else EL2 traps ends the run with a `FAULT` exit and the PC where it was.

use pkvm_abi::PAGE_SHIFT;
use pkvm_abi::guest::{PSTATE_EL1H_DAIF, exit, vcpu_off, vm_flags};
use pkvm_arch::esr::{Ec, Esr, SysregAccess};
use pkvm_hyp::platform::PhysMem;
use pkvm_sim::platform::SimGuestAction;
use pkvm_sim::{Machine, SimConfig, with_machine};

/// `PSTATE.BTYPE` = 0b01 (a `BR` landed here).
const BTYPE_JUMP: u64 = 1 << 10;

fn sysreg(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8, rt: u8, read: bool) -> SimGuestAction {
    let a = SysregAccess {
        op0,
        op1,
        crn,
        crm,
        op2,
        rt,
        read,
    };
    SimGuestAction::Sync(Esr::new(Ec::Sysreg64, true, a.iss()).0)
}

fn vm(m: &mut Machine<'_>, protected: bool) -> (pkvm_client::VmHandle, u64) {
    let r0 = m.config().ram[0].0 >> PAGE_SHIFT;
    let flags = if protected { vm_flags::PROTECTED } else { 0 };
    let h = m.create_model_vm_flags(r0 + 0x140, (r0 + 0x100, 16), Some(r0 + 0x141), flags);
    (h, (r0 + 0x141) << PAGE_SHIFT)
}

#[test]
fn debug_and_pmu_registers_read_as_zero_and_ignore_writes_without_an_exit() {
    for protected in [false, true] {
        with_machine(&SimConfig::small(), |m| {
            let r0 = m.config().ram[0].0 >> PAGE_SHIFT;
            let st = (r0 + 0x141) << PAGE_SHIFT;
            // x7 holds a value the emulated read must replace (set before VcpuInit: a
            // protected vCPU runs from EL2's copy).
            m.plat.write_u64(st + vcpu_off::reg(7) as u64, 0x5555);
            m.plat.write_u64(st + vcpu_off::PC as u64, 0x8000_0000);
            // The first access is a branch target (PSTATE.BTYPE set).
            m.plat
                .write_u64(st + vcpu_off::PSTATE as u64, PSTATE_EL1H_DAIF | BTYPE_JUMP);
            let (h, st) = vm(m, protected);
            m.plat.guest_script.lock().unwrap().extend([
                sysreg(2, 0, 0, 2, 2, 1, false),  // msr mdscr_el1, x1
                sysreg(2, 0, 1, 0, 4, 1, false),  // msr oslar_el1, x1
                sysreg(3, 3, 9, 12, 0, 7, true),  // mrs x7, pmcr_el0
                sysreg(3, 3, 9, 14, 0, 31, true), // mrs xzr, pmuserenr_el0
            ]);
            // One run: the four accesses are answered at EL2, then the guest powers off.
            assert_eq!(
                m.client().vcpu_run(h),
                Ok(exit::SYSTEM_EVENT),
                "protected {protected}"
            );
            let pcs: Vec<u64> = m
                .plat
                .guest_entries
                .lock()
                .unwrap()
                .iter()
                .map(|e| e.pc)
                .collect();
            assert_eq!(
                pcs,
                [
                    0x8000_0000,
                    0x8000_0004,
                    0x8000_0008,
                    0x8000_000c,
                    0x8000_0010
                ],
                "each access resumed past its instruction"
            );
            // ... with PSTATE as it was, but BTYPE consumed.
            let entries = m.plat.guest_entries.lock().unwrap().clone();
            assert_eq!(entries[0].pstate, PSTATE_EL1H_DAIF | BTYPE_JUMP);
            assert!(entries[1..].iter().all(|e| e.pstate == PSTATE_EL1H_DAIF));
            // The read left 0 in x7: in the host's structure for a non-protected vCPU; a
            // protected vCPU's registers stay at EL2 (the host's copy keeps its 0x5555).
            let x7 = m.plat.read_u64(st + vcpu_off::reg(7) as u64);
            assert_eq!(x7, if protected { 0x5555 } else { 0 });
        });
    }
}

#[test]
fn other_trapped_registers_end_the_run_where_they_are() {
    with_machine(&SimConfig::small(), |m| {
        let (h, st) = vm(m, false);
        let pc = m.plat.read_u64(st + vcpu_off::PC as u64);
        for action in [
            sysreg(3, 0, 1, 0, 1, 0, true),   // mrs x0, actlr_el1 (TACR)
            sysreg(3, 0, 10, 4, 7, 0, true),  // mrs x0, lorid_el1 (TLOR)
            sysreg(1, 0, 7, 6, 2, 31, false), // dc isw, xzr (TSW)
            sysreg(3, 3, 14, 3, 1, 0, true),  // CNTV_CTL_EL0: CRn 14 as the PMU counters
        ] {
            m.plat.guest_script.lock().unwrap().push_back(action);
            assert_eq!(m.client().vcpu_run(h), Ok(exit::FAULT), "{action:?}");
            assert_eq!(m.plat.read_u64(st + vcpu_off::PC as u64), pc, "{action:?}");
        }
    });
}

/// `HCR_EL2.TID3`: a guest's ID register read is answered at EL2 with the CPU's value less the
/// features guests do not get (the simulated CPU has every field at its maximum).
#[test]
fn id_registers_read_as_the_cpu_without_the_hidden_features() {
    with_machine(&SimConfig::small(), |m| {
        let (h, st) = vm(m, false);
        let x = |n: u8| m.plat.read_u64(st + vcpu_off::reg(n) as u64);
        m.plat.guest_script.lock().unwrap().extend([
            sysreg(3, 0, 0, 4, 0, 5, true), // mrs x5, id_aa64pfr0_el1
            sysreg(3, 0, 0, 6, 1, 6, true), // mrs x6, id_aa64isar1_el1
            sysreg(3, 0, 0, 4, 4, 7, true), // mrs x7, id_aa64zfr0_el1
            sysreg(3, 0, 0, 7, 0, 8, true), // mrs x8, id_aa64mmfr0_el1
        ]);
        assert_eq!(m.client().vcpu_run(h), Ok(exit::SYSTEM_EVENT));
        assert_eq!(x(5) >> 32 & 0xf, 0, "SVE hidden");
        assert_eq!(x(5) & 0xff, 0x11, "EL0 and EL1: AArch64 only");
        assert_eq!(
            x(5) & 0xffff_ff00,
            0xffff_ff00,
            "EL2, EL3, FP, AdvSIMD, GIC kept"
        );
        assert_eq!(x(6) & 0xf000_0ff0, 0, "pointer authentication hidden");
        assert_eq!(x(7), 0, "no SVE features");
        assert_eq!(x(8), u64::MAX, "nothing hidden in ID_AA64MMFR0_EL1");
    });
}

/// A guest's write of an SGI register is an `SGI` exit with the value and the register, the
/// PC already past it — for a protected vCPU too, whose registers the host cannot read.
#[test]
fn sgi_register_writes_exit_with_their_value() {
    use pkvm_abi::guest::VcpuExit;
    for protected in [false, true] {
        with_machine(&SimConfig::small(), |m| {
            let r0 = m.config().ram[0].0 >> PAGE_SHIFT;
            let st = (r0 + 0x141) << PAGE_SHIFT;
            m.plat
                .write_u64(st + vcpu_off::reg(5) as u64, 0x0100_0000_0002);
            m.plat.write_u64(st + vcpu_off::PC as u64, 0x8000_0000);
            let (h, st) = vm(m, protected);
            m.plat
                .guest_script
                .lock()
                .unwrap()
                .push_back(sysreg(3, 0, 12, 11, 5, 5, false)); // msr icc_sgi1r_el1, x5
            assert_eq!(
                m.client().vcpu_run(h),
                Ok(exit::SGI),
                "protected {protected}"
            );
            let e: VcpuExit = m.plat.read_obj(st + vcpu_off::EXIT as u64);
            assert_eq!((e.mmio_data, e.code), (0x0100_0000_0002, 5));
            // The next run resumes after the write.
            assert_eq!(m.client().vcpu_run(h), Ok(exit::SYSTEM_EVENT));
            let entries = m.plat.guest_entries.lock().unwrap();
            assert_eq!(entries[entries.len() - 1].pc, 0x8000_0004);
            // Not SGI writes: a read of ICC_SGI1R_EL1's encoding, another register of CRm 11
            // (ICC_DIR_EL1), another register with an Op2 of 5 to 7 (SCXTNUM_EL1).
            drop(entries);
            for other in [
                sysreg(3, 0, 12, 11, 5, 5, true),
                sysreg(3, 0, 12, 11, 1, 5, false),
                sysreg(3, 0, 13, 0, 7, 5, false),
            ] {
                m.plat.guest_script.lock().unwrap().push_back(other);
                assert_eq!(m.client().vcpu_run(h), Ok(exit::FAULT), "{other:?}");
            }
        });
    }
}
