//! The virtual GIC's CPU interface through `VcpuRun`: what the host puts in its `VgicState` is
//! loaded for the run exactly (with `ICH_HCR_EL2.En`), what the guest did to it comes back to
//! the host's structure, and whatever could reach past the guest is refused before anything
//! runs.

use pkvm_abi::guest::vgic::{HCR_EN, lr};
use pkvm_abi::guest::{VgicState, exit, vcpu_off, vm_flags};
use pkvm_abi::{Error, PAGE_SHIFT, Stat};
use pkvm_client::{HcallError, VmHandle};
use pkvm_hyp::platform::{PhysMem, VgicRegs};
use pkvm_sim::platform::SimGuestAction;
use pkvm_sim::{Machine, SimConfig, with_machine};

/// A VM (protected if asked) with its vCPU structure at the returned address.
fn vm(m: &mut Machine<'_>, protected: bool) -> (VmHandle, u64) {
    let r0 = m.config().ram[0].0 >> PAGE_SHIFT;
    let flags = if protected { vm_flags::PROTECTED } else { 0 };
    let h = m.create_model_vm_flags(r0 + 0x140, (r0 + 0x100, 16), Some(r0 + 0x141), flags);
    (h, (r0 + 0x141) << PAGE_SHIFT)
}

fn write_vgic(m: &Machine<'_>, st: u64, v: &VgicState) {
    m.plat.write_obj(st + vcpu_off::VGIC as u64, v);
}

fn read_vgic(m: &Machine<'_>, st: u64) -> VgicState {
    m.plat.read_obj(st + vcpu_off::VGIC as u64)
}

fn run(m: &Machine<'_>, h: VmHandle) -> Result<u64, HcallError> {
    m.client().vcpu_run(h)
}

fn loaded(m: &Machine<'_>) -> Vec<Option<VgicRegs>> {
    m.plat.guest_vgic.lock().unwrap().clone()
}

/// Two list registers in use: a pending timer interrupt asking for an EOI maintenance event,
/// and a pending SPI.
fn two_pending() -> VgicState {
    let mut v = VgicState {
        nr_lrs: 2,
        vmcr: 0xf000_0001,
        ..VgicState::default()
    };
    v.ap1r[0] = 0x8;
    v.ap0r[0] = 0x4;
    v.lr[0] = lr::pending_group1(27, 0xa0) | lr::EOI;
    v.lr[1] = lr::pending_group1(33, 0x80);
    v
}

#[test]
fn without_a_vgic_the_interface_stays_off() {
    with_machine(&SimConfig::small(), |m| {
        let (h, st) = vm(m, false);
        assert_eq!(run(m, h), Ok(exit::SYSTEM_EVENT));
        assert_eq!(loaded(m), [None]);
        assert_eq!(read_vgic(m, st), VgicState::default(), "nothing published");
        assert_eq!(m.client().stat(Stat::VgicListRegs), Ok(4));
    });
}

#[test]
fn the_hosts_list_registers_are_loaded_and_the_guests_eoi_comes_back() {
    for protected in [false, true] {
        with_machine(&SimConfig::small(), |m| {
            let (h, st) = vm(m, protected);
            let v = two_pending();
            write_vgic(m, st, &v);
            m.plat
                .guest_script
                .lock()
                .unwrap()
                .push_back(SimGuestAction::EoiAll);
            assert_eq!(run(m, h), Ok(exit::SYSTEM_EVENT), "protected: {protected}");
            let mut want = VgicRegs {
                nr_lrs: 2,
                hcr: HCR_EN,
                vmcr: v.vmcr,
                ..VgicRegs::default()
            };
            want.ap0r[0] = v.ap0r[0];
            want.ap1r[0] = v.ap1r[0];
            want.lr[..2].copy_from_slice(&v.lr[..2]);
            assert_eq!(loaded(m), [Some(want)], "protected: {protected}");
            // Both were EOId: empty, the first with its EOI maintenance event.
            let after = read_vgic(m, st);
            assert_eq!(after.lr[0] >> lr::STATE_SHIFT, 0);
            assert_eq!(after.lr[1] >> lr::STATE_SHIFT, 0);
            assert_eq!(after.lr[0] & lr::VINTID, 27, "the rest of the LR is kept");
            // LR 0 asked for an EOI maintenance event: not empty until the host clears it;
            // LR 1 and the two unused ones are.
            assert_eq!((after.elrsr, after.eisr), (0b1110, 0b0001));
            assert_eq!(after.misr, 1, "MISR.EOI published");
            assert_eq!(after.hcr, HCR_EN);
            assert_eq!(after.vmcr, v.vmcr);
            // The EOIs dropped the active priority the host had set: published as the run left
            // it, in its own slot (the CPU has one APR per group).
            assert_eq!(after.ap1r, [0; 4]);
            assert_eq!(after.ap0r, [0; 4]);
        });
    }
}

#[test]
fn an_interface_reaching_past_the_guest_is_refused_before_anything_runs() {
    let hw = {
        let mut v = two_pending();
        v.lr[1] |= lr::HW | (40 << 32);
        v
    };
    let with_lr = |l: u64| {
        let mut v = two_pending();
        v.lr[1] = l;
        v
    };
    let too_many = VgicState {
        nr_lrs: 5,
        ..two_pending()
    };
    let tsei = VgicState {
        hcr: 1 << 13,
        ..two_pending()
    };
    let duplicate = with_lr(lr::ACTIVE | lr::GROUP | 27);
    let cases = [
        ("a hardware interrupt", hw),
        ("HW alone", with_lr(lr::pending_group1(40, 0) | lr::HW)),
        ("a special INTID", with_lr(lr::pending_group1(1023, 0))),
        ("an LPI", with_lr(lr::pending_group1(8192, 0))),
        (
            "reserved bits",
            with_lr(lr::pending_group1(40, 0) | 1 << 58),
        ),
        ("more list registers than the CPU has", too_many),
        ("ICH_HCR_EL2.TSEI", tsei),
        ("one INTID in two list registers", duplicate),
    ];
    for (what, bad) in cases {
        with_machine(&SimConfig::small(), |m| {
            let (h, st) = vm(m, false);
            write_vgic(m, st, &bad);
            let state = m.abstract_state().unwrap();
            assert_eq!(run(m, h), Err(HcallError::Errno(Error::Inval)), "{what}");
            assert!(
                m.plat.guest_entries.lock().unwrap().is_empty(),
                "{what}: it ran"
            );
            assert_eq!(read_vgic(m, st), bad, "{what}: the structure changed");
            assert_eq!(m.abstract_state().unwrap(), state, "{what}");
            // The vCPU is not left running: a valid interface runs.
            write_vgic(m, st, &two_pending());
            assert_eq!(run(m, h), Ok(exit::SYSTEM_EVENT), "{what}");
        });
    }
}

#[test]
fn an_empty_list_register_may_repeat_an_intid_and_a_cpu_without_a_vgic_refuses_one() {
    with_machine(&SimConfig::small(), |m| {
        let (h, st) = vm(m, false);
        // LR 1 names INTID 27 too, but is empty (state 0): no conflict — nor the other way
        // round (an empty LR 0, a pending LR 1).
        let mut v = two_pending();
        v.lr[1] = lr::GROUP | 27;
        write_vgic(m, st, &v);
        assert_eq!(run(m, h), Ok(exit::SYSTEM_EVENT));
        v.lr[0] = lr::GROUP | 27;
        v.lr[1] = lr::pending_group1(27, 0xa0);
        write_vgic(m, st, &v);
        assert_eq!(run(m, h), Ok(exit::SYSTEM_EVENT));
        // A CPU with two active-priority registers per group: both are loaded, in order.
        *m.plat.vgic_info.lock().unwrap() = Some(pkvm_hyp::platform::VgicInfo {
            nr_lrs: 4,
            nr_aprs: 2,
        });
        v.ap0r = [0x10, 0x11, 0, 0];
        v.ap1r = [0x20, 0x22, 0, 0];
        // As many list registers as the CPU has: all of them in use is fine.
        v.nr_lrs = 4;
        write_vgic(m, st, &v);
        assert_eq!(run(m, h), Ok(exit::SYSTEM_EVENT));
        let l = loaded(m).last().unwrap().unwrap();
        assert_eq!((l.ap0r, l.ap1r), ([0x10, 0x11, 0, 0], [0x20, 0x22, 0, 0]));
        // ... and published back to the host in order after the run.
        let back = read_vgic(m, st);
        assert_eq!(
            (back.ap0r, back.ap1r),
            ([0x10, 0x11, 0, 0], [0x20, 0x22, 0, 0])
        );
        assert_eq!(back.vmcr, v.vmcr, "nothing else written over");
        // The host may pass En itself (as EL2 published it), with a maintenance enable: kept.
        v.hcr = HCR_EN | (1 << 1);
        write_vgic(m, st, &v);
        assert_eq!(run(m, h), Ok(exit::SYSTEM_EVENT));
        assert_eq!(loaded(m).last().unwrap().unwrap().hcr, HCR_EN | (1 << 1));
        *m.plat.vgic_info.lock().unwrap() = None;
        assert_eq!(m.client().stat(Stat::VgicListRegs), Ok(0));
        assert_eq!(run(m, h), Err(HcallError::Errno(Error::Inval)));
        // Left off, the vCPU still runs.
        write_vgic(m, st, &VgicState::default());
        assert_eq!(run(m, h), Ok(exit::SYSTEM_EVENT));
        assert_eq!(loaded(m).last(), Some(&None));
    });
}
