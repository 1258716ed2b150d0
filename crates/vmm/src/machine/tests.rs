use core::cell::RefCell;

use super::*;
use pkvm_abi::guest::vgic::lr;

/// A vCPU structure in plain memory.
#[derive(Default)]
struct Regs(RefCell<VcpuState>);

impl VcpuRegs for Regs {
    fn reg(&self, n: u8) -> u64 {
        self.0.borrow().regs[usize::from(n)]
    }
    fn set_reg(&self, n: u8, v: u64) {
        self.0.borrow_mut().regs[usize::from(n)] = v;
    }
    fn sys(&self, i: usize) -> u64 {
        self.0.borrow().sys[i]
    }
    fn vgic(&self) -> VgicState {
        self.0.borrow().vgic
    }
    fn set_vgic(&self, v: &VgicState) {
        self.0.borrow_mut().vgic = *v;
    }
    fn set_mmio_data(&self, v: u64) {
        self.0.borrow_mut().exit.mmio_data = v;
    }
    fn init(&self, st: &VcpuState) {
        *self.0.borrow_mut() = *st;
    }
}

fn machine(n: usize, protected: bool) -> Machine {
    Machine::new(Layout::new(n, 64 << 20).unwrap(), protected, 4).unwrap()
}

fn call(m: &mut Machine, i: usize, v: &Regs, args: [u64; 4]) -> (Step, u64) {
    for (n, a) in (0u8..).zip(args) {
        v.set_reg(n, a);
    }
    let s = m.handle(i, v, Exit::Hypercall);
    (s, v.reg(0))
}

#[test]
fn vcpu_0_starts_on_and_the_others_as_their_kind_says() {
    let m = machine(3, false);
    assert_eq!(
        (m.power(0), m.power(1), m.power(2)),
        (Power::On, Power::Off, Power::Off)
    );
    let p = machine(2, true);
    assert_eq!((p.power(0), p.power(1)), (Power::On, Power::Probe));
    assert_eq!(p.power(7), Power::Off);
}

#[test]
fn cpu_on_starts_an_off_vcpu_of_a_non_protected_vm_once() {
    let mut m = machine(2, false);
    let v = Regs::default();
    let (s, r) = call(
        &mut m,
        0,
        &v,
        [u64::from(psci::CPU_ON_64), 1, 0x8020_0000, 0x55],
    );
    assert_eq!(r, 0);
    let Step::CpuOn {
        target,
        entry,
        context,
    } = s
    else {
        panic!("{s:?}");
    };
    let state = entry_state(entry, context);
    assert_eq!(
        (target, state.pc, state.regs[0], state.pstate),
        (1, 0x8020_0000, 0x55, PSTATE_EL1H_DAIF)
    );
    assert_eq!(m.power(1), Power::On);
    // The target's structure is written whole (its virtual GIC off); its first run turns the
    // interface on again, even after an earlier life.
    let t = Regs::default();
    m.prepare(1, &t, 0);
    assert_eq!(t.vgic().nr_lrs, 1);
    t.init(&state);
    m.handle(1, &t, Exit::SystemEvent(u64::from(psci::CPU_OFF)));
    assert_eq!(m.power(1), Power::Off);
    let (s, _) = call(&mut m, 0, &v, [u64::from(psci::CPU_ON_64), 1, 0, 0]);
    assert!(matches!(s, Step::CpuOn { target: 1, .. }));
    t.init(&state);
    m.prepare(1, &t, 0);
    assert_eq!(
        t.vgic().nr_lrs,
        1,
        "the restarted vCPU's interface is on again"
    );
    let (s, r) = call(&mut m, 0, &v, [u64::from(psci::CPU_ON_64), 1, 0, 0]);
    assert_eq!((s, r), (Step::Continue, psci::ALREADY_ON as i64 as u64));
    // A target that does not exist, or with affinity bits above Aff0.
    for mpidr in [2, 0x100, u64::MAX] {
        let (s, r) = call(&mut m, 0, &v, [u64::from(psci::CPU_ON_64), mpidr, 0, 0]);
        assert_eq!(
            (s, r),
            (Step::Continue, psci::INVALID_PARAMETERS as i64 as u64)
        );
    }
}

#[test]
fn a_protected_vm_gets_no_cpu_on_from_the_vmm() {
    let mut m = machine(2, true);
    let v = Regs::default();
    let (s, r) = call(&mut m, 0, &v, [u64::from(psci::CPU_ON_64), 1, 0, 0]);
    assert_eq!((s, r), (Step::Continue, psci::NOT_SUPPORTED as i64 as u64));
    let (_, r) = call(
        &mut m,
        0,
        &v,
        [u64::from(psci::FEATURES), u64::from(psci::CPU_ON_64), 0, 0],
    );
    assert_eq!(r, psci::NOT_SUPPORTED as i64 as u64);
    let mut n = machine(2, false);
    let (_, r) = call(
        &mut n,
        0,
        &v,
        [u64::from(psci::FEATURES), u64::from(psci::CPU_ON_64), 0, 0],
    );
    assert_eq!(r, 0);
}

#[test]
fn affinity_info_and_cpu_off() {
    let mut m = machine(2, false);
    let v = Regs::default();
    let (_, r) = call(&mut m, 0, &v, [u64::from(psci::AFFINITY_INFO_64), 1, 0, 0]);
    assert_eq!(r, 1, "vCPU 1 is off");
    let (_, r) = call(&mut m, 0, &v, [u64::from(psci::AFFINITY_INFO_64), 0, 0, 0]);
    assert_eq!(r, 0, "vCPU 0 is on");
    assert_eq!(
        m.handle(0, &v, Exit::SystemEvent(u64::from(psci::CPU_OFF))),
        Step::Continue
    );
    assert_eq!(m.power(0), Power::Off);
    assert!(!m.any_alive());
    let mut p = machine(1, true);
    p.handle(0, &v, Exit::SystemEvent(u64::from(psci::CPU_OFF)));
    assert_eq!(
        p.power(0),
        Power::Probe,
        "EL2 may start a protected vCPU again"
    );
}

#[test]
fn system_off_and_reset_end_the_guest() {
    let mut m = machine(1, false);
    let v = Regs::default();
    for fid in [psci::SYSTEM_OFF, psci::SYSTEM_RESET] {
        assert_eq!(
            m.handle(0, &v, Exit::SystemEvent(u64::from(fid))),
            Step::End(End::PowerOff(u64::from(fid)))
        );
    }
}

#[test]
fn the_console_prints_and_unknown_devices_read_zero() {
    let mut m = machine(1, false);
    let v = Regs::default();
    let uart = crate::layout::UART_BASE;
    let w = Exit::Mmio {
        ipa: uart,
        size: 1,
        write: true,
        data: u64::from(b'x'),
    };
    assert_eq!(m.handle(0, &v, w), Step::Console(b'x'));
    v.set_mmio_data(0x77);
    let r = Exit::Mmio {
        ipa: 0x1234_0000,
        size: 4,
        write: false,
        data: 0,
    };
    assert_eq!(m.handle(0, &v, r), Step::Continue);
    assert_eq!(v.0.borrow().exit.mmio_data, 0);
    assert_eq!((m.exits.mmio, m.exits.uart), (2, 1));
}

#[test]
fn faults_end_the_guest_and_a_bad_index_is_refused() {
    let mut m = machine(1, false);
    let v = Regs::default();
    assert_eq!(
        m.handle(
            0,
            &v,
            Exit::Fault {
                esr: 1,
                far: 2,
                ipa: 3
            }
        ),
        Step::End(End::Fault("fault exit", 1, 2))
    );
    assert_eq!(
        m.handle(
            0,
            &v,
            Exit::MemFault {
                ipa: 0x8000_0000,
                write: false
            }
        ),
        Step::End(End::Fault("memory fault", 0x8000_0000, 0))
    );
    assert_eq!(
        m.handle(0, &v, Exit::Unknown(99)),
        Step::End(End::Fault("unknown exit", 99, 0))
    );
    assert_eq!(
        m.handle(5, &v, Exit::Irq),
        Step::End(End::Fault("vCPU index", 5, 0))
    );
    assert!(!m.has_work(5, &v, 0));
}

/// Enables the virtual timer's PPI (group 1, priority 0xa0) in vCPU `i`'s redistributor the way
/// Linux does.
fn enable_vtimer(m: &mut Machine, i: usize) {
    let sgi = 0x10000 + 0x20000 * i as u64;
    m.gic.redist_write(sgi + 0x80, 4, 0xffff_ffff); // IGROUPR0
    m.gic.redist_write(sgi + 0x400 + 24, 4, 0xa0 << 24); // IPRIORITYR6: INTID 27
    m.gic.redist_write(sgi + 0x100, 4, 1 << VTIMER_INTID); // ISENABLER0
    m.gic.dist_write(0, 4, (1 << 4) | (1 << 1)); // ARE, EnableGrp1
}

#[test]
fn the_timer_goes_through_a_list_register_until_the_guest_deactivates_it() {
    let mut m = machine(1, false);
    let v = Regs::default();
    enable_vtimer(&mut m, 0);
    {
        let mut s = v.0.borrow_mut();
        s.sys[sys::CNTV_CTL_EL0] = 1;
        s.sys[sys::CNTV_CVAL_EL0] = 100;
    }
    assert_eq!(Machine::timer(&v, 99), (false, Some(100)));
    assert!(!m.has_work(0, &v, 99));
    assert!(m.has_work(0, &v, 100));
    m.prepare(0, &v, 100);
    let g = v.vgic();
    assert_eq!(g.nr_lrs, 1);
    assert_eq!(
        g.lr[0],
        lr::PENDING | lr::GROUP | (0xa0 << lr::PRIORITY_SHIFT) | 27
    );
    assert_eq!(m.exits.injected, 1);
    // Still in the list register (pending): nothing new is injected, nothing rewritten.
    v.0.borrow_mut().vgic.hcr = 0x1234;
    m.prepare(0, &v, 200);
    assert_eq!(m.exits.injected, 1);
    assert_eq!(
        v.vgic().hcr,
        0x1234,
        "an unchanged interface is not rewritten"
    );
    v.0.borrow_mut().vgic.hcr = 0;
    // The guest masks the timer and EOIs: the list register empties, the model deactivates.
    {
        let mut s = v.0.borrow_mut();
        s.sys[sys::CNTV_CTL_EL0] = 3;
        s.vgic.lr[0] = 27 | lr::GROUP;
    }
    m.handle(0, &v, Exit::Irq);
    assert!(!m.has_work(0, &v, 300));
    // A masked timer has no deadline.
    assert_eq!(Machine::timer(&v, 300), (false, None));
}

#[test]
fn sgis_reach_the_target_vcpu() {
    let mut m = machine(2, false);
    let v = Regs::default();
    let sgi = 0x10000 + 0x20000;
    m.gic.redist_write(sgi + 0x80, 4, 0xffff_ffff);
    m.gic.redist_write(sgi + 0x100, 4, 1 << 1);
    m.gic.dist_write(0, 4, (1 << 4) | (1 << 1));
    let send = |m: &mut Machine, value: u64, op2: u64| {
        m.handle(0, &v, Exit::Sgi { value, op2 });
    };
    // ICC_SGI1R_EL1: INTID 1, target list bit 1 (vCPU 1), Aff1..3 = 0.
    send(&mut m, (1 << 24) | 0b10, 5);
    assert_eq!(m.exits.sgi, 1);
    assert!(m.has_work(1, &Regs::default(), 0));
    // Group 0 SGIs (ICC_SGI0R_EL1) are ignored.
    send(&mut m, (2 << 24) | 0b10, 7);
    assert_eq!(m.exits.sgi, 1);
}

#[test]
fn the_end_says_what_happened() {
    use alloc::string::ToString;
    assert_eq!(
        End::PowerOff(0x8400_0008).to_string(),
        "PSCI power-off (0x84000008)"
    );
    assert_eq!(
        End::Fault("fault exit", 0x96, 0x10).to_string(),
        "fault exit (0x96, 0x10)"
    );
}

#[test]
fn power_states_are_set_and_counted() {
    let mut m = machine(3, false);
    assert_eq!(m.nr_vcpus(), 3);
    assert!(m.any_alive());
    m.set_power(2, Power::Idle);
    assert_eq!(m.power(2), Power::Idle);
    m.set_power(9, Power::On);
    assert_eq!(m.power(9), Power::Off, "out of range: ignored");
    m.set_power(0, Power::Off);
    assert!(m.any_alive(), "vCPU 2 is idle: still alive");
    m.set_power(2, Power::Off);
    assert!(!m.any_alive());
    // A probed vCPU of a protected VM that exits was started by its guest: on.
    let mut p = machine(2, true);
    p.handle(1, &Regs::default(), Exit::Irq);
    assert_eq!(p.power(1), Power::On);
}

#[test]
fn a_disabled_or_masked_timer_has_no_line_and_no_deadline() {
    let v = Regs::default();
    for ctl in [0, 2, 3] {
        v.0.borrow_mut().sys[sys::CNTV_CTL_EL0] = ctl;
        assert_eq!(Machine::timer(&v, u64::MAX), (false, None), "CTL {ctl}");
    }
    v.0.borrow_mut().sys[sys::CNTV_CTL_EL0] = 5; // ENABLE, ISTATUS
    v.0.borrow_mut().sys[sys::CNTV_CVAL_EL0] = 10;
    assert_eq!(Machine::timer(&v, 10), (true, Some(10)));
}

#[test]
fn the_first_run_turns_the_interface_on_and_later_runs_leave_it() {
    let mut m = machine(1, false);
    let v = Regs::default();
    m.prepare(0, &v, 0);
    assert_eq!(v.vgic().nr_lrs, 1, "on, with one (empty) list register");
    v.0.borrow_mut().vgic.nr_lrs = 3;
    m.prepare(0, &v, 0);
    assert_eq!(v.vgic().nr_lrs, 3, "nothing pending: not rewritten");
}

#[test]
fn two_pending_interrupts_take_two_list_registers() {
    let mut m = machine(1, false);
    let v = Regs::default();
    enable_vtimer(&mut m, 0);
    m.gic
        .redist_write(0x10000 + 0x100, 4, (1 << 1) | (1 << VTIMER_INTID));
    m.handle(
        0,
        &v,
        Exit::Sgi {
            value: (1 << 24) | 1,
            op2: 5,
        },
    );
    {
        let mut s = v.0.borrow_mut();
        s.sys[sys::CNTV_CTL_EL0] = 1;
        s.sys[sys::CNTV_CVAL_EL0] = 0;
    }
    m.prepare(0, &v, 1);
    let g = v.vgic();
    assert_eq!(g.nr_lrs, 2);
    assert_eq!(m.exits.injected, 2);
    let mut ids = [g.lr[0] & 0xffff_ffff, g.lr[1] & 0xffff_ffff];
    ids.sort_unstable();
    assert_eq!(ids, [1, 27]);
    // The guest EOIs the SGI only (its register goes to state 0): the model deactivates it,
    // the other stays.
    let sgi_lr = usize::from(g.lr[1] & 0xffff_ffff == 1);
    v.0.borrow_mut().vgic.lr[sgi_lr] = 1 | lr::GROUP;
    m.handle(0, &v, Exit::Irq);
    assert!(m.has_work(0, &v, 1), "the timer's register is still held");
}

#[test]
fn gic_registers_go_to_the_distributor_and_redistributor_models() {
    use crate::layout::{GICD_BASE, GICR_BASE};
    let mut m = machine(1, false);
    let v = Regs::default();
    let ctlr = GICD_BASE;
    m.handle(
        0,
        &v,
        Exit::Mmio {
            ipa: ctlr,
            size: 4,
            write: true,
            data: 0x12,
        },
    );
    m.handle(
        0,
        &v,
        Exit::Mmio {
            ipa: ctlr,
            size: 4,
            write: false,
            data: 0,
        },
    );
    assert_eq!(v.0.borrow().exit.mmio_data, m.gic.dist_read(0, 4));
    assert_ne!(v.0.borrow().exit.mmio_data & 0x2, 0, "EnableGrp1 written");
    // GICR_ISENABLER0 of vCPU 0 (SGI_base + 0x100).
    let isenabler = GICR_BASE + 0x10000 + 0x100;
    m.handle(
        0,
        &v,
        Exit::Mmio {
            ipa: isenabler,
            size: 4,
            write: true,
            data: 1 << 27,
        },
    );
    m.handle(
        0,
        &v,
        Exit::Mmio {
            ipa: isenabler,
            size: 4,
            write: false,
            data: 0,
        },
    );
    assert_eq!(v.0.borrow().exit.mmio_data, 1 << 27);
    assert_eq!((m.exits.mmio, m.exits.uart), (4, 0));
}

#[test]
fn psci_and_smccc_versions_and_features() {
    let mut m = machine(1, false);
    let v = Regs::default();
    let ns = psci::NOT_SUPPORTED as i64 as u64;
    for (fid, arg, want) in [
        (psci::VERSION, 0, 0x1_0000),
        (psci::MIGRATE_INFO_TYPE, 0, 2),
        (psci::SMCCC_VERSION, 0, u64::from(psci::SMCCC_VERSION_1_1)),
        (psci::FEATURES, u64::from(psci::VERSION), 0),
        (psci::FEATURES, u64::from(psci::SYSTEM_RESET), 0),
        (psci::FEATURES, u64::from(psci::CPU_SUSPEND_64), ns),
        (psci::CPU_SUSPEND_64, 0, ns),
        (0xC600_0000, 0, ns),
    ] {
        let (s, r) = call(&mut m, 0, &v, [u64::from(fid), arg, 0, 0]);
        assert_eq!((s, r), (Step::Continue, want), "{fid:#x}({arg:#x})");
    }
    assert_eq!(m.exits.hvc, 8);
}

#[test]
fn exits_are_counted_by_kind() {
    let mut m = machine(2, false);
    let v = Regs::default();
    m.handle(0, &v, Exit::Irq);
    m.handle(0, &v, Exit::Irq);
    m.handle(0, &v, Exit::Idle);
    m.handle(1, &v, Exit::Idle);
    m.handle(
        0,
        &v,
        Exit::Sgi {
            value: 0b10,
            op2: 5,
        },
    );
    m.handle(
        0,
        &v,
        Exit::Sgi {
            value: 0b10,
            op2: 6,
        },
    );
    let e = m.exits;
    assert_eq!((e.irq, e.idle, e.sgi), (2, 2, 2));
    assert_eq!((m.power(0), m.power(1)), (Power::Idle, Power::Idle));
}

#[test]
fn the_console_fast_path_follows_the_uart() {
    use crate::layout::UART_BASE;
    let mut m = machine(1, false);
    let v = Regs::default();
    let fast = ConsoleFastPath {
        write_ipa: UART_BASE,
        read_ipa: UART_BASE + 5,
        read_value: 0x60,
    };
    assert_eq!(m.console_fast_path(), fast, "after reset");
    let w = |m: &mut Machine, off: u64, val: u64| {
        m.handle(
            0,
            &v,
            Exit::Mmio {
                ipa: UART_BASE + off,
                size: 1,
                write: true,
                data: val,
            },
        );
    };
    // The divisor latch: THR is DLL, no fast write (the status still reads the same).
    w(&mut m, 3, 0x83);
    assert_eq!(
        m.console_fast_path(),
        ConsoleFastPath {
            write_ipa: 0,
            ..fast
        }
    );
    w(&mut m, 3, 0x03);
    assert_eq!(m.console_fast_path(), fast);
    // Loopback: a write is received, and then LSR has data ready.
    w(&mut m, 4, 0x10);
    assert_eq!(m.console_fast_path().write_ipa, 0);
    w(&mut m, 0, u64::from(b'x'));
    assert_eq!(m.console_fast_path(), ConsoleFastPath::default());
    w(&mut m, 4, 0);
    m.handle(
        0,
        &v,
        Exit::Mmio {
            ipa: UART_BASE,
            size: 1,
            write: false,
            data: 0,
        },
    );
    assert_eq!(v.0.borrow().exit.mmio_data, u64::from(b'x'));
    assert_eq!(m.console_fast_path(), fast);
    // The THR-empty interrupt enabled: a write sets its pending state, so not fast.
    w(&mut m, 1, 0x2);
    assert_eq!(m.console_fast_path().write_ipa, 0);
    let before = m.exits;
    m.count_console_exits(5);
    assert_eq!(
        (m.exits.mmio, m.exits.uart),
        (before.mmio + 5, before.uart + 5)
    );
}
