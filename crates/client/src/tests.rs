//! The register encoding and decoding of every call, against a fake transport.

extern crate std;

use super::*;
use crate::catalogue::{CATALOGUE, MAX_STEPS, Op, Place, Places, TRANSITION_SCRIPT};
use core::cell::{Cell, RefCell};
use pkvm_abi::guest::{self, VcpuExit};
use pkvm_abi::{HVC_BASE, SMCCC_NOT_SUPPORTED, psci};
use std::vec::Vec;

/// Records every call and answers with `reply`.
struct Fake {
    calls: RefCell<Vec<(u64, [u64; 6])>>,
    reply: Cell<[u64; 4]>,
}

impl Fake {
    fn new(reply: [u64; 4]) -> Self {
        Fake {
            calls: RefCell::new(Vec::new()),
            reply: Cell::new(reply),
        }
    }

    /// The one call made since the last `take`.
    fn take(&self) -> (HostHcall, [u64; 6]) {
        let mut calls = self.calls.borrow_mut();
        assert_eq!(calls.len(), 1, "one hypercall per wrapper: {calls:x?}");
        let (fid, args) = calls.pop().unwrap();
        (HostHcall::from_fid(fid).expect("one of our ids"), args)
    }
}

impl Transport for Fake {
    fn smccc(&self, fid: u64, args: [u64; 6]) -> [u64; 4] {
        self.calls.borrow_mut().push((fid, args));
        self.reply.get()
    }
}

/// A wrapper call (true if it returned what it must), its id and its argument registers.
type WrapperCase<'a> = (&'a dyn Fn() -> bool, HostHcall, [u64; 6]);

const OK: [u64; 4] = [SMCCC_SUCCESS, 0, 0x22, 0x33];

#[test]
fn every_wrapper_encodes_its_id_and_arguments() {
    let c = Client::new(Fake::new(OK));
    let vm = VmHandle::from_raw(0x0102);
    let unit = Ok(());
    let x2 = Ok(0x22);
    // Each wrapper, with what it must return for the reply OK and the call it must make.
    #[rustfmt::skip]
    let cases: [WrapperCase<'_>; 18] = [
        (&|| c.version() == Ok(Version { abi: 0x22, features: 0x33 }), HostHcall::Version, [0; 6]),
        (&|| c.finalize() == unit, HostHcall::Finalize, [0; 6]),
        (&|| c.share_hyp(0x4_0001, 3) == unit, HostHcall::HostShareHyp, [0x4_0001, 3, 0, 0, 0, 0]),
        (&|| c.unshare_hyp(0x4_0002, 4) == unit, HostHcall::HostUnshareHyp, [0x4_0002, 4, 0, 0, 0, 0]),
        (&|| c.donate_hyp(0x4_0003, 5) == unit, HostHcall::HostDonateHyp, [0x4_0003, 5, 0, 0, 0, 0]),
        (&|| c.hyp_donate_host(0x4_0004, 6) == unit, HostHcall::DebugHypDonateHost,
            [0x4_0004, 6, 0, 0, 0, 0]),
        (&|| c.pin(0x4_0005, 7) == unit, HostHcall::DebugPin, [0x4_0005, 7, 0, 0, 0, 0]),
        (&|| c.unpin(0x4_0006, 8) == unit, HostHcall::DebugUnpin, [0x4_0006, 8, 0, 0, 0, 0]),
        (&|| c.hyp_read(0x4000_0008) == x2, HostHcall::DebugRead, [0x4000_0008, 0, 0, 0, 0, 0]),
        (&|| c.stat(Stat::PinnedPages) == x2, HostHcall::Stat, [12, 0, 0, 0, 0, 0]),
        (&|| c.vm_init(0x4000_1000, 0x4_0010, 4) == Ok(VmHandle::from_raw(0x22)),
            HostHcall::VmInit, [0x4000_1000, 0x4_0010, 4, 0, 0, 0]),
        (&|| c.vcpu_init(vm, 0x4000_2000, 0x4000_2400) == unit, HostHcall::VcpuInit,
            [0x0102, 0x4000_2000, 0x4000_2400, 0, 0, 0]),
        (&|| c.share_guest(vm, 0x4_0020, 0x8_0000, 16, guest::PROT_RWX) == unit,
            HostHcall::HostShareGuest, [0x0102, 0x4_0020, 0x8_0000, 16, 7, 0]),
        (&|| c.unshare_guest(vm, 0x8_0000, 16) == unit, HostHcall::HostUnshareGuest,
            [0x0102, 0x8_0000, 16, 0, 0, 0]),
        (&|| c.vcpu_run(vm) == x2, HostHcall::VcpuRun, [0x0102, 0, 0, 0, 0, 0]),
        (&|| c.vm_teardown(vm) == x2, HostHcall::VmTeardown, [0x0102, 0, 0, 0, 0, 0]),
        (&|| c.donate_guest(vm, 0x4_0030, 0x8_0010, 9) == unit, HostHcall::HostDonateGuest,
            [0x0102, 0x4_0030, 0x8_0010, 9, 0, 0]),
        (&|| c.vm_reclaim(vm) == x2, HostHcall::VmReclaim, [0x0102, 0, 0, 0, 0, 0]),
    ];
    for (call, id, args) in &cases {
        assert!(call(), "{id:?}: result");
        assert_eq!(c.transport().take(), (*id, *args), "{id:?}: registers");
    }
    // Every id has its wrapper.
    for id in HostHcall::ALL {
        assert!(
            cases.iter().any(|(_, i, _)| i == id),
            "no wrapper issues {id:?}"
        );
    }
}

#[test]
fn errors_decode() {
    let f = Fake::new([SMCCC_NOT_SUPPORTED, 0, 0, 0]);
    let c = Client::new(&f);
    assert_eq!(
        c.pin(1, 1),
        Err(HcallError::NotSupported(SMCCC_NOT_SUPPORTED))
    );
    // x0 other than success or NOT_SUPPORTED is still "not dispatched", with its value.
    f.reply.set([5, 0, 0, 0]);
    assert_eq!(c.stat(Stat::LiveVms), Err(HcallError::NotSupported(5)));
    for e in [
        Error::Perm,
        Error::Busy,
        Error::Range,
        Error::Inval,
        Error::NoEnt,
    ] {
        f.reply.set([SMCCC_SUCCESS, e.errno() as u64, 0x22, 0]);
        assert_eq!(c.share_hyp(1, 1), Err(HcallError::Errno(e)));
        assert_eq!(
            c.vm_init(0, 0, 0),
            Err(HcallError::Errno(e)),
            "no handle on error"
        );
    }
    // An errno EL2 does not define is an internal fault, never success.
    f.reply.set([SMCCC_SUCCESS, -999i64 as u64, 0, 0]);
    assert_eq!(c.unshare_hyp(1, 1), Err(HcallError::Errno(Error::Fault)));
    assert_eq!(HcallError::Errno(Error::Busy).name(), "EBUSY");
    assert_eq!(HcallError::NotSupported(7).name(), "NOT_SUPPORTED");
    assert_eq!(
        std::format!("{}", HcallError::NotSupported(u64::MAX)),
        "not dispatched (x0 = 0xffffffffffffffff)"
    );
}

#[test]
fn raw_call_passes_up_to_six_arguments() {
    let c = Client::new(Fake::new(OK));
    assert_eq!(
        c.call(HostHcall::Version, [1, 2, 3, 4, 5, 6]),
        Ok([0x22, 0x33])
    );
    assert_eq!(
        c.transport().take(),
        (HostHcall::Version, [1, 2, 3, 4, 5, 6])
    );
    assert_eq!(
        decode([HVC_BASE, 0, 0, 0]),
        Err(HcallError::NotSupported(HVC_BASE))
    );
}

#[test]
fn exits_decode() {
    let e = VcpuExit {
        reason: 0,
        esr: 0x9200_0046,
        far: 0x1234,
        ipa: 0x0900_0000,
        mmio_size: 1,
        mmio_write: 1,
        mmio_data: 0x41,
        code: u64::from(psci::SYSTEM_OFF),
    };
    let mmio = Exit::Mmio {
        ipa: 0x0900_0000,
        size: 1,
        write: true,
        data: 0x41,
    };
    let fault = Exit::Fault {
        esr: 0x9200_0046,
        far: 0x1234,
        ipa: 0x0900_0000,
    };
    for (reason, want) in [
        (
            guest::exit::SYSTEM_EVENT,
            Exit::SystemEvent(u64::from(psci::SYSTEM_OFF)),
        ),
        (guest::exit::HYPERCALL, Exit::Hypercall),
        (guest::exit::MMIO, mmio),
        (guest::exit::FAULT, fault),
        (guest::exit::IRQ, Exit::Irq),
        (guest::exit::IDLE, Exit::Idle),
        (
            guest::exit::MEM_FAULT,
            Exit::MemFault {
                ipa: 0x0900_0000,
                write: true,
            },
        ),
        (
            guest::exit::SGI,
            Exit::Sgi {
                value: e.mmio_data,
                op2: e.code,
            },
        ),
        (0, Exit::Unknown(0)),
        (9, Exit::Unknown(9)),
        (u64::MAX, Exit::Unknown(u64::MAX)),
    ] {
        let got = Exit::decode(reason, &e);
        assert_eq!(got, want, "reason {reason}");
        assert_eq!(got.reason(), reason);
    }
    assert!(Exit::decode(guest::exit::SYSTEM_EVENT, &e).is_power_off());
    let reset = VcpuExit {
        code: u64::from(psci::SYSTEM_RESET),
        ..e
    };
    assert!(!Exit::decode(guest::exit::SYSTEM_EVENT, &reset).is_power_off());
    let read = VcpuExit { mmio_write: 0, ..e };
    assert!(matches!(
        Exit::decode(guest::exit::MMIO, &read),
        Exit::Mmio { write: false, .. }
    ));
}

#[test]
fn run_reads_the_exit_record_after_the_call() {
    let f = Fake::new([SMCCC_SUCCESS, 0, guest::exit::IDLE, 0]);
    let c = Client::new(&f);
    let vm = VmHandle::from_raw(9);
    let mut reads = 0;
    let r = c.run(vm, || {
        reads += 1;
        VcpuExit::default()
    });
    assert_eq!((r, reads), (Ok(Exit::Idle), 1));
    f.reply
        .set([SMCCC_SUCCESS, Error::NoEnt.errno() as u64, 0, 0]);
    let r = c.run(vm, || unreachable!("no exit record after a failed run"));
    assert_eq!(r, Err(HcallError::Errno(Error::NoEnt)));
}

fn places() -> Places {
    Places {
        carveout: Some(0x4_7f00),
        el2_image: Some(0x4_0000),
        mmio: Some(0x9000),
        ram_end: Some(0x8_0000),
        ram_gap: None,
        last_ram_start: Some(0x4_0000),
        pa_end: Some(1 << 28),
    }
}

#[test]
fn catalogue_resolves_and_issues_what_it_says() {
    let own = 0x4_1000;
    let mut names: Vec<&str> = CATALOGUE.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), CATALOGUE.len(), "case names are unique");
    let mut skipped = Vec::new();
    for case in CATALOGUE {
        assert!(
            case.setup.len() + 1 + case.cleanup.len() <= MAX_STEPS,
            "{}",
            case.name
        );
        let Some(steps) = case.steps(&places(), own) else {
            skipped.push(case.name);
            continue;
        };
        let steps: Vec<_> = steps.collect();
        assert_eq!(steps.len(), case.setup.len() + 1 + case.cleanup.len());
        let refused: Vec<_> = steps.iter().filter(|(_, w)| w.is_err()).collect();
        assert_eq!(refused.len(), 1, "{}: one refused call", case.name);
        assert_eq!(refused[0].1, Err(case.want));
        // Own pages stay inside the case's run.
        for (r, _) in &steps {
            if r.op != Op::DebugRead && (own..own + case.pages).contains(&r.addr) {
                assert!(r.addr + r.arg <= own + case.pages, "{}: {r}", case.name);
            }
        }
    }
    assert_eq!(skipped, ["share a hole between two RAM regions -> EINVAL"]);

    // Resolution: deltas, wrapping, the debug read's byte offset.
    let r = |at, delta, op, arg| {
        catalogue::Call::new(op, at, arg)
            .moved(delta)
            .resolve(&places(), own)
            .unwrap()
    };
    assert_eq!(r(Place::PaEnd, -1, Op::ShareHyp, 2).addr, (1 << 28) - 1);
    assert_eq!(r(Place::Pfn(u64::MAX), 1, Op::ShareHyp, 1).addr, 0);
    let read = r(Place::Own(0), 0, Op::DebugRead, 4);
    assert_eq!((read.addr, read.arg), ((own << 12) + 4, 0));
    assert_eq!(std::format!("{read}"), "debug_read(0x41000004)");
    let share = r(Place::Own(2), 0, Op::ShareHyp, 3);
    assert_eq!(std::format!("{share}"), "share_hyp(0x41002, 3)");

    // Issued through the client: the right call with the right registers.
    let c = Client::new(Fake::new(OK));
    read.issue(&c).unwrap();
    assert_eq!(
        c.transport().take(),
        (HostHcall::DebugRead, [(own << 12) + 4, 0, 0, 0, 0, 0])
    );
    share.issue(&c).unwrap();
    assert_eq!(
        c.transport().take(),
        (HostHcall::HostShareHyp, [own + 2, 3, 0, 0, 0, 0])
    );
}

#[test]
fn debug_cases_are_marked() {
    let debug: Vec<_> = CATALOGUE
        .iter()
        .filter(|c| c.needs_debug())
        .map(|c| c.name)
        .collect();
    assert!(debug.contains(&"unshare while pinned -> EBUSY"));
    assert!(
        debug.contains(&"share a page donated to EL2 -> EPERM"),
        "reclaim is a debug call"
    );
    assert!(!debug.contains(&"share beyond the PA space -> ERANGE"));
    assert!(Op::DebugRead.is_debug() && !Op::DonateHyp.is_debug());
}

#[test]
fn transition_script_ends_donated_and_balances_pins() {
    // Replayed on a one-page model of (shares, pins, donated): the script is self-consistent.
    let (mut shares, mut pins, mut donated) = (0u32, 0u32, false);
    for s in TRANSITION_SCRIPT {
        let ok = match s.op {
            Op::DonateHyp => !donated && shares == 0,
            Op::HypDonateHost => donated,
            Op::ShareHyp => !donated,
            Op::UnshareHyp => shares > 0 && pins == 0,
            Op::Pin => shares > 0,
            Op::Unpin => pins > 0,
            Op::DebugRead => unreachable!(),
        };
        assert_eq!(ok, s.want.is_ok(), "{}", s.name);
        if ok {
            match s.op {
                Op::DonateHyp => donated = true,
                Op::HypDonateHost => donated = false,
                Op::ShareHyp => shares += 1,
                Op::UnshareHyp => shares -= 1,
                Op::Pin => pins += 1,
                Op::Unpin => pins -= 1,
                Op::DebugRead => {}
            }
        }
        if let Some(m) = s.readable {
            assert_eq!(m, shares > 0, "{}", s.name);
        }
    }
    assert!(donated && shares == 0 && pins == 0);
}
