//! Protected VMs in the simulator: donation, the guest-side memory calls, discovery, and
//! teardown in bounded batches — each step checked against the spec and the structural
//! invariants, and the page contents checked where the spec does not look (zeroing).

use pkvm_abi::guest::{RECLAIM_BATCH, smccc, vm_flags};
use pkvm_abi::{Error, PAGE_SHIFT, PAGE_SIZE, Stat, psci};
use pkvm_client::HcallError;
use pkvm_hyp::platform::PhysMem;
use pkvm_sim::platform::SimGuestAction;
use pkvm_sim::scenarios::{checked, expect_ok as ok, expect_refused as refused};
use pkvm_sim::{Machine, SimConfig, with_machine};
use pkvm_spec::{Call, Checker, GuestOp, Outcome};

/// Slot 0: a non-protected VM; slot 1: a protected one (16-page memcache). Both have a vCPU.
fn setup(m: &mut Machine<'_>) -> (u64, Checker) {
    let r0 = m.config().ram[0].0 >> PAGE_SHIFT;
    m.create_model_vm(r0 + 0x140, r0 + 0x100, Some(r0 + 0x141));
    m.create_model_vm_flags(
        r0 + 0x142,
        (r0 + 0x180, 16),
        Some(r0 + 0x143),
        vm_flags::PROTECTED,
    );
    let c = Checker::with_state(m.spec_machine(), m.abstract_state().unwrap());
    (r0 + 0x200, c)
}

fn donate(vm: usize, pfn: u64, gfn: u64, nr: u64) -> Call {
    Call::DonateGuest { vm, pfn, gfn, nr }
}

fn guest(vm: usize, op: GuestOp, gfn: u64) -> Call {
    Call::GuestMem {
        vm,
        op,
        ipa: gfn << PAGE_SHIFT,
    }
}

fn host_reads(m: &Machine<'_>, pfn: u64) -> Outcome {
    m.host_access(pfn << PAGE_SHIFT, false)
}

/// Fills page `pfn` with a recognisable pattern (as its owner would).
fn fill(m: &Machine<'_>, pfn: u64, v: u64) {
    for off in (0..PAGE_SIZE).step_by(8) {
        m.plat.write_u64((pfn << PAGE_SHIFT) + off, v ^ off);
    }
}

fn is_zero(m: &Machine<'_>, pfn: u64) -> bool {
    (0..PAGE_SIZE)
        .step_by(8)
        .all(|off| m.plat.read_u64((pfn << PAGE_SHIFT) + off) == 0)
}

#[test]
fn a_donated_page_is_out_of_the_hosts_reach_until_the_guest_shares_it() {
    with_machine(&SimConfig::small(), |m| {
        let (p, mut c) = setup(m);
        assert_eq!(host_reads(m, p), Outcome::Access);
        ok(m, &mut c, donate(1, p, 0x10, 4));
        for i in 0..4 {
            assert_eq!(host_reads(m, p + i), Outcome::Abort, "donated page {i}");
        }
        assert_eq!(m.client().stat(Stat::GuestOwnedPages), Ok(4));
        // The guest shares one back: the host may read it; the others stay out of reach.
        ok(m, &mut c, guest(1, GuestOp::Share, 0x11));
        assert_eq!(host_reads(m, p + 1), Outcome::Access);
        assert_eq!(m.host_access((p + 1) << PAGE_SHIFT, true), Outcome::Access);
        assert_eq!(host_reads(m, p + 2), Outcome::Abort);
        // ... and takes it back: the host's mapping goes (its TLB entry with it).
        ok(m, &mut c, guest(1, GuestOp::Unshare, 0x11));
        assert_eq!(host_reads(m, p + 1), Outcome::Abort);
        assert_eq!(m.client().stat(Stat::GuestOwnedPages), Ok(4));
        assert!(checked(m, &mut c, Call::VmTeardown { vm: 1 }).is_ok());
        assert_eq!(m.client().stat(Stat::GuestOwnedPages), Ok(0));
    });
}

#[test]
fn relinquished_and_reclaimed_pages_come_back_zeroed_but_shared_ones_as_they_are() {
    with_machine(&SimConfig::small(), |m| {
        let (p, mut c) = setup(m);
        let cleaned = |pfn: u64| {
            m.plat
                .cleaned
                .lock()
                .unwrap()
                .contains(&(pfn << PAGE_SHIFT, PAGE_SIZE))
        };
        m.plat.cleaned.lock().unwrap().clear();
        ok(m, &mut c, donate(1, p, 0x10, 4));
        // Donation: what the host left in its cache reaches memory before the guest, which
        // may read uncached, gets the pages.
        assert!((0..4).all(|i| cleaned(p + i)), "every donated page cleaned");
        m.plat.cleaned.lock().unwrap().clear();
        for i in 0..4 {
            fill(m, p + i, 0x5eed_0000 + i);
        }
        // Relinquish: zeroed, the host's again.
        ok(m, &mut c, guest(1, GuestOp::Relinquish, 0x10));
        assert_eq!(host_reads(m, p), Outcome::Access);
        assert!(is_zero(m, p), "a relinquished page reaches the host zeroed");
        assert!(cleaned(p), "... and its zeroes cleaned to memory");
        // Unshare: the page the host had is cleaned before it is the guest's alone again.
        ok(m, &mut c, guest(1, GuestOp::Share, 0x11));
        ok(m, &mut c, guest(1, GuestOp::Unshare, 0x11));
        assert!(cleaned(p + 1), "an unshared page cleaned");
        m.plat.cleaned.lock().unwrap().clear();
        // Teardown: the owned pages zeroed, the shared-back one as the guest left it.
        ok(m, &mut c, guest(1, GuestOp::Share, 0x12));
        ok(m, &mut c, Call::VmTeardown { vm: 1 });
        assert_eq!(
            m.abstract_state().unwrap().vms.get(&1),
            None,
            "the VM is gone"
        );
        assert!(is_zero(m, p + 1) && is_zero(m, p + 3));
        assert!(cleaned(p + 1) && cleaned(p + 3) && !cleaned(p + 2));
        // The vCPU's private state page (in the memcache) went back zeroed and cleaned.
        let r0 = m.config().ram[0].0 >> PAGE_SHIFT;
        let private = (r0 + 0x180..r0 + 0x190).filter(|&q| cleaned(q)).count();
        assert_eq!(
            private, 1,
            "one memcache page (the private vCPU state) cleaned"
        );
        assert!(
            !is_zero(m, p + 2),
            "the page the guest shared keeps its contents"
        );
        for i in 0..4 {
            assert_eq!(host_reads(m, p + i), Outcome::Access);
        }
    });
}

#[test]
fn teardown_reclaims_in_bounded_batches() {
    with_machine(&SimConfig::small(), |m| {
        let (p, mut c) = setup(m);
        let n = 2 * RECLAIM_BATCH + 8;
        ok(m, &mut c, donate(1, p, 0x100, n));
        let vm = m.vm_handle(1);
        assert_eq!(
            m.client().vm_reclaim(vm),
            Err(HcallError::Errno(Error::Perm)),
            "reclaim from a live VM"
        );
        assert_eq!(m.client().vm_teardown(vm), Ok(n - RECLAIM_BATCH));
        c.check(
            Call::VmTeardown { vm: 1 },
            Outcome::Ret(Ok(())),
            &m.abstract_state().unwrap(),
        )
        .unwrap();
        // Dying: it runs no more and takes no new pages.
        refused(m, &mut c, Call::VcpuRun { vm: 1 }, Error::Perm);
        refused(m, &mut c, donate(1, p + n, 0x1000, 1), Error::Perm);
        refused(m, &mut c, guest(1, GuestOp::Share, 0x100), Error::Perm);
        let state = m.abstract_state().unwrap();
        assert_eq!(state.vms[&1].owned.len() as u64, n - RECLAIM_BATCH);
        // The first batch is the lowest frames, back with the host and zeroed.
        assert!(is_zero(m, p) && host_reads(m, p) == Outcome::Access);
        assert_eq!(host_reads(m, p + RECLAIM_BATCH), Outcome::Abort);
        ok(m, &mut c, Call::VmReclaim { vm: 1 });
        ok(m, &mut c, Call::VmReclaim { vm: 1 });
        assert_eq!(m.abstract_state().unwrap().vms.get(&1), None);
        refused(m, &mut c, Call::VmReclaim { vm: 1 }, Error::NoEnt);
        assert_eq!(m.client().stat(Stat::GuestOwnedPages), Ok(0));
        assert_eq!(m.client().stat(Stat::LiveVms), Ok(1));
    });
}

#[test]
fn bad_inputs_are_refused_and_change_nothing() {
    with_machine(&SimConfig::small(), |m| {
        let (p, mut c) = setup(m);
        ok(m, &mut c, donate(1, p, 0x10, 2));
        // Donation: to a non-protected VM; a page the host does not own (donated already,
        // shared with EL2); a frame already mapped; beyond the IPA space; across regions;
        // no pages; an unknown VM.
        refused(m, &mut c, donate(0, p + 4, 0x10, 1), Error::Perm);
        refused(m, &mut c, donate(1, p, 0x20, 1), Error::Perm);
        ok(m, &mut c, Call::ShareHyp { pfn: p + 5, nr: 1 });
        refused(m, &mut c, donate(1, p + 5, 0x20, 1), Error::Perm);
        refused(m, &mut c, donate(1, p + 4, 0x11, 1), Error::Perm);
        refused(m, &mut c, donate(1, p + 4, 1 << 40, 1), Error::Range);
        // The IPA space's last page is inside it, the one after it outside.
        let top = 1u64 << (m.config().pa_bits - PAGE_SHIFT);
        refused(m, &mut c, donate(1, p + 0x20, top - 1, 2), Error::Range);
        ok(m, &mut c, donate(1, p + 0x20, top - 1, 1));
        let r0_end = (m.config().ram[0].0 + m.config().ram[0].1) >> PAGE_SHIFT;
        refused(m, &mut c, donate(1, r0_end - 1, 0x20, 2), Error::Inval);
        refused(m, &mut c, donate(1, p + 4, 0x20, 0), Error::Inval);
        refused(m, &mut c, donate(3, p + 4, 0x20, 1), Error::NoEnt);
        // Next to what is mapped: a range running into it is refused, the free frame after
        // it is fine (both inside one last-level table of the guest stage-2).
        refused(m, &mut c, donate(1, p + 12, 0x0f, 2), Error::Perm);
        ok(m, &mut c, donate(1, p + 12, 0x12, 1));
        // A range starting inside an empty 2 MiB block (its level-2 table exists: the frames
        // above are mapped) and running past it: every block it crosses is checked once.
        let big = p + 0x40;
        ok(m, &mut c, donate(1, big, 0x401, 0x200));
        // A range starting inside an empty 2 MiB block (gfns 0x800..0xa00) runs into the next
        // block, whose first page only is mapped: the check resumes at that block's start,
        // not at the same offset in it.
        ok(m, &mut c, donate(1, p + 0x2f0, 0xa00, 1));
        refused(m, &mut c, donate(1, p + 0x300, 0x801, 0x200), Error::Perm);
        // A page donated to one VM cannot be shared into another.
        refused(
            m,
            &mut c,
            Call::ShareGuest {
                vm: 0,
                pfn: p,
                gfn: 0x30,
                nr: 1,
            },
            Error::Perm,
        );
        // Host pages are never shared into a protected VM.
        refused(
            m,
            &mut c,
            Call::ShareGuest {
                vm: 1,
                pfn: p + 4,
                gfn: 0x30,
                nr: 1,
            },
            Error::Perm,
        );
        // Guest calls: a frame it has nothing at; outside its IPA space; unaligned; unshare
        // what it did not share; share twice; relinquish a page it shares.
        refused(m, &mut c, guest(1, GuestOp::Share, 0x40), Error::Perm);
        refused(m, &mut c, guest(1, GuestOp::Share, 1 << 40), Error::Range);
        let unaligned = Call::GuestMem {
            vm: 1,
            op: GuestOp::Share,
            ipa: (0x10 << PAGE_SHIFT) + 8,
        };
        refused(m, &mut c, unaligned, Error::Inval);
        refused(m, &mut c, guest(1, GuestOp::Unshare, 0x10), Error::Perm);
        ok(m, &mut c, guest(1, GuestOp::Share, 0x10));
        refused(m, &mut c, guest(1, GuestOp::Share, 0x10), Error::Perm);
        refused(m, &mut c, guest(1, GuestOp::Relinquish, 0x10), Error::Perm);
        // A non-protected guest cannot share back the host's own page.
        ok(
            m,
            &mut c,
            Call::ShareGuest {
                vm: 0,
                pfn: p + 6,
                gfn: 0x30,
                nr: 1,
            },
        );
        refused(m, &mut c, guest(0, GuestOp::Share, 0x30), Error::Perm);
        // ... but may give it up (balloon): the host's alone again, nothing to zero.
        fill(m, p + 6, 7);
        ok(m, &mut c, guest(0, GuestOp::Relinquish, 0x30));
        assert!(!is_zero(m, p + 6));
        // VmInit with an unknown flag.
        let desc = (p + 7) << PAGE_SHIFT;
        ok(m, &mut c, Call::ShareHyp { pfn: p + 7, nr: 1 });
        let vm_init = |flags| Call::VmInit {
            desc_pa: desc,
            mc_pfn: p + 8,
            mc_nr: 2,
            ipa_bits: 32,
            nr_vcpus: 1,
            flags,
        };
        refused(m, &mut c, vm_init(1 << 1), Error::Inval);
        refused(m, &mut c, vm_init(1 << 63), Error::Inval);
        ok(m, &mut c, vm_init(vm_flags::PROTECTED));
    });
}

/// The registers a guest call leaves, through a run of the protected VM.
fn call_regs(m: &Machine<'_>, x: [u64; 4]) -> [u64; 4] {
    call_regs_of(m, m.vm_handle(1), x)
}

#[test]
fn discovery_answers_with_upstreams_ids() {
    with_machine(&SimConfig::small(), |m| {
        let _ = setup(m);
        assert_eq!(
            call_regs(m, [smccc::VENDOR_HYP_CALL_UID, 0, 0, 0]),
            smccc::KVM_UID
        );
        let f = call_regs(m, [smccc::VENDOR_HYP_KVM_FEATURES, 9, 9, 9]);
        assert_eq!(f, [smccc::KVM_FEATURES_BITMAP, 0, 0, 0]);
        for func in [0, 2, 3, 4, 9] {
            assert_ne!(f[0] & (1 << func), 0, "function {func} advertised");
        }
        assert_eq!(
            call_regs(m, [smccc::HYP_MEMINFO, 0, 0, 0])[..2],
            [PAGE_SIZE, 0]
        );
        for args in [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]] {
            assert_eq!(
                call_regs(m, [smccc::HYP_MEMINFO, args[0], args[1], args[2]])[0],
                smccc::INVALID_PARAMETER,
                "HYP_MEMINFO{args:?}"
            );
        }
        assert_eq!(
            call_regs(m, [smccc::VERSION, 0, 0, 0])[0],
            u64::from(psci::SMCCC_VERSION_1_1)
        );
        assert_eq!(
            call_regs(m, [smccc::ARCH_FEATURES, smccc::VERSION, 0, 0])[0],
            0
        );
        assert_eq!(
            call_regs(m, [smccc::ARCH_FEATURES, 0x8000_8000, 0, 0])[0],
            smccc::NOT_SUPPORTED
        );
        // Share with a granule count of 2, or a non-zero x3: refused.
        let r = call_regs(m, [smccc::MEM_SHARE, 0x10 << PAGE_SHIFT, 2, 0]);
        assert_eq!(
            r[..3],
            [smccc::INVALID_PARAMETER, 0, Error::Inval.errno() as u64]
        );
        // Relinquish takes no granule count and nothing in x3.
        for (x2, x3) in [(1, 0), (0, 1)] {
            let r = call_regs(m, [smccc::MEM_RELINQUISH, 0x10 << PAGE_SHIFT, x2, x3]);
            assert_eq!(
                r[..3],
                [smccc::INVALID_PARAMETER, 0, Error::Inval.errno() as u64]
            );
        }
        // The hypercalls EL2 does not answer still reach the host.
        m.plat
            .guest_script
            .lock()
            .unwrap()
            .push_back(SimGuestAction::Hvc(0xC600_0100, 5));
        let exit = m.client().vcpu_run(m.vm_handle(1)).unwrap();
        assert_eq!(exit, pkvm_abi::guest::exit::HYPERCALL);
    });
}

/// The host's vCPU structure of a protected VM: the state EL2 runs it from is its own copy;
/// the host sees the exit record and, for a hypercall exit, `x0..x3`, and nothing else.
#[test]
fn a_protected_vcpus_registers_stay_at_el2() {
    use pkvm_abi::guest::{GUEST_CONSOLE_IPA, GUEST_HVC_PING, VcpuExit, exit, vcpu_off};
    with_machine(&SimConfig::small(), |m| {
        let r0 = m.config().ram[0].0 >> PAGE_SHIFT;
        let st = (r0 + 0x143) << PAGE_SHIFT;
        // The host's initial state: a PC and a register the guest starts with.
        m.plat.write_u64(st + vcpu_off::PC as u64, 0x8000_0000);
        m.plat.write_u64(st + vcpu_off::reg(7) as u64, 0x7777);
        let _ = setup(m);
        let vm = m.vm_handle(1);
        let host_reg = |n: u8| m.plat.read_u64(st + vcpu_off::reg(n) as u64);
        let host_exit = || -> VcpuExit { m.plat.read_obj(st + vcpu_off::EXIT as u64) };
        let secret = 0x5ec2_e75e_c2e7;
        let script = |a: SimGuestAction| m.plat.guest_script.lock().unwrap().push_back(a);
        // An MMIO store of a secret register: the host gets the value stored, not the
        // register file.
        script(SimGuestAction::MmioWrite {
            ipa: GUEST_CONSOLE_IPA,
            size: 8,
            reg: 5,
            value: secret,
        });
        assert_eq!(m.client().vcpu_run(vm), Ok(exit::MMIO));
        let e = host_exit();
        assert_eq!(
            (e.reason, e.mmio_data, e.mmio_write),
            (exit::MMIO, secret, 1)
        );
        assert_eq!(
            host_reg(5),
            0,
            "the guest's x5 reached the host's structure"
        );
        // The host cannot steer the vCPU: a PC or PSTATE it writes is ignored (EL2 runs the
        // private copy), an invalid PSTATE no longer stops the run.
        m.plat.write_u64(st + vcpu_off::PSTATE as u64, 0x9); // EL2h
        m.plat.write_u64(st + vcpu_off::PC as u64, 0xdead_0000);
        // A hypercall exit: its arguments are published; the host's answer goes back in.
        script(SimGuestAction::Hvc(GUEST_HVC_PING, 41));
        let before = m.plat.guest_entries.lock().unwrap().len();
        assert_eq!(m.client().vcpu_run(vm), Ok(exit::HYPERCALL));
        let entry = m.plat.guest_entries.lock().unwrap()[before];
        assert_eq!(
            entry.pc,
            0x8000_0000 + 4,
            "the private PC (past the MMIO store)"
        );
        assert_ne!(
            entry.vcpu_pa >> PAGE_SHIFT,
            st >> PAGE_SHIFT,
            "runs from EL2's copy"
        );
        assert_eq!((host_reg(0), host_reg(1)), (GUEST_HVC_PING, 41));
        assert_eq!(
            host_reg(7),
            0x7777,
            "the host's own initial value, untouched"
        );
        m.plat.write_u64(st + vcpu_off::reg(0) as u64, 42);
        assert_eq!(m.client().vcpu_run(vm), Ok(exit::SYSTEM_EVENT));
        // That run entered the guest with the host's answer in x0 (and its own x1).
        let x = *m.plat.guest_x.lock().unwrap().last().unwrap();
        assert_eq!(x[..2], [42, 41]);
        // The power-off's arguments are not a hypercall exit's: not published.
        assert_eq!(host_reg(0), 42);
        assert_eq!(host_exit().reason, exit::SYSTEM_EVENT);
    });
}

/// A VM declares its memory (`VmDesc::mem_ipa`/`mem_size`): a translation fault there where
/// it has no page is a memory-fault exit — the host donates a page and runs it again — and
/// anywhere else it is what it was (MMIO with a syndrome, else a fault). Bad ranges are refused.
#[test]
fn a_fault_in_guest_memory_asks_the_host_for_a_page() {
    use pkvm_abi::guest::exit;
    use pkvm_arch::esr::{DataAbort, Ec, Esr};
    with_machine(&SimConfig::small(), |m| {
        let (p, _) = setup(m);
        let r0 = m.config().ram[0].0 >> PAGE_SHIFT;
        // A third VM, protected, whose memory is [0x1234_0000, +64 KiB), with a vCPU.
        let desc_pfn = r0 + 0x144;
        let desc = desc_pfn << PAGE_SHIFT;
        let cl = m.client();
        cl.share_hyp(desc_pfn, 1).unwrap();
        let write_desc = |mem_ipa: u64, mem_size: u64| {
            for (off, v) in [
                (0, 32),
                (8, 1),
                (24, vm_flags::PROTECTED),
                (32, mem_ipa),
                (40, mem_size),
            ] {
                m.plat.write_u64(desc + off, v);
            }
        };
        let mc = r0 + 0x1c0;
        for (ipa, size) in [
            (0x1234_0800, 0x1_0000), // unaligned start
            (0x1234_0000, 0x800),    // unaligned size
            (0xffff_f000, 0x2000),   // beyond the 32-bit IPA space
            (!0xfff, 0x2000),        // overflows
        ] {
            write_desc(ipa, size);
            assert_eq!(
                cl.vm_init(desc, mc, 16),
                Err(HcallError::Errno(Error::Inval)),
                "memory {ipa:#x}+{size:#x}"
            );
        }
        // Memory that ends exactly at the top of the IPA space fits.
        write_desc(0xffff_0000, 0x1_0000);
        let top = cl
            .vm_init(desc, r0 + 0x1e0, 16)
            .expect("memory up to the top of the IPA space");
        assert_eq!(cl.vm_destroy(top), Ok(()));
        write_desc(0x1234_0000, 0x1_0000);
        let vm = cl
            .vm_init(desc, mc, 16)
            .expect("VmInit with a memory range");
        let vp = r0 + 0x145;
        cl.share_hyp(vp, 1).unwrap();
        // The host's FP registers for the vCPU: V0 (where the simulated guest counts its
        // runs) starts at 0x100.
        m.plat.write_u64((vp << PAGE_SHIFT) + 0x800, 0x100);
        cl.vcpu_init(vm, vp << PAGE_SHIFT, (vp << PAGE_SHIFT) + 0x800)
            .unwrap();
        let st = vp << PAGE_SHIFT;
        let read_exit = || -> pkvm_abi::guest::VcpuExit {
            m.plat.read_obj(st + pkvm_abi::guest::vcpu_off::EXIT as u64)
        };
        let script = |a: SimGuestAction| m.plat.guest_script.lock().unwrap().push_back(a);
        // A store with a syndrome inside its memory: not MMIO, a memory fault (write).
        script(SimGuestAction::MmioWrite {
            ipa: 0x1234_5008,
            size: 8,
            reg: 3,
            value: 9,
        });
        assert_eq!(cl.vcpu_run(vm), Ok(exit::MEM_FAULT));
        let e = read_exit();
        assert_eq!((e.ipa, e.mmio_write, e.mmio_data), (0x1234_5000, 1, 0));
        // It ran from EL2's private copy of the FP registers, which started as the host's.
        let entry = *m.plat.guest_entries.lock().unwrap().last().unwrap();
        assert_ne!(entry.fp_pa, (vp << PAGE_SHIFT) + 0x800);
        assert_eq!(m.plat.read_u64(entry.fp_pa), 0x101);
        // A load there: a memory fault, not a write.
        script(SimGuestAction::MmioRead {
            ipa: 0x1234_6010,
            size: 8,
            reg: 3,
        });
        assert_eq!(cl.vcpu_run(vm), Ok(exit::MEM_FAULT));
        let e = read_exit();
        assert_eq!((e.ipa, e.mmio_write), (0x1234_6000, 0));
        // An instruction fetch there (no syndrome): a memory fault too, not a write.
        let iabt = Esr::new(Ec::IabtLow, true, 0b000111).0;
        script(SimGuestAction::Sync(iabt));
        assert_eq!(cl.vcpu_run(vm), Ok(exit::MEM_FAULT));
        let e = read_exit();
        assert_eq!((e.ipa, e.mmio_write), (0x1234_5000, 0));
        // Its last page is inside, the first page after it outside (MMIO).
        script(SimGuestAction::MmioWrite {
            ipa: 0x1234_f000,
            size: 8,
            reg: 3,
            value: 9,
        });
        assert_eq!(cl.vcpu_run(vm), Ok(exit::MEM_FAULT));
        script(SimGuestAction::MmioWrite {
            ipa: 0x1235_0000,
            size: 8,
            reg: 3,
            value: 9,
        });
        assert_eq!(cl.vcpu_run(vm), Ok(exit::MMIO));
        // The host gives it the page; outside its memory an access is still MMIO.
        cl.donate_guest(vm, p + 0x40, 0x1_2345, 1).unwrap();
        script(SimGuestAction::MmioWrite {
            ipa: 0x0900_0000,
            size: 1,
            reg: 3,
            value: 9,
        });
        assert_eq!(cl.vcpu_run(vm), Ok(exit::MMIO));
        // A permission fault in its memory is not a missing page: a plain fault exit.
        let perm = Esr::new(
            Ec::DabtLow,
            true,
            DataAbort {
                dfsc: 0b001111,
                ..DataAbort::default()
            }
            .iss(),
        )
        .0;
        script(SimGuestAction::Sync(perm));
        assert_eq!(cl.vcpu_run(vm), Ok(exit::FAULT));
        // PSCI discovery is answered at EL2 for a protected VM; CPU_OFF ends its run.
        let r = call_regs_of(m, vm, [u64::from(psci::VERSION), 0, 0, 0]);
        assert_eq!(r[0], 0x1_0001);
        let f =
            |fid: u32| call_regs_of(m, vm, [u64::from(psci::FEATURES), u64::from(fid), 0, 0])[0];
        assert_eq!(f(psci::SMCCC_VERSION), 0);
        assert_eq!(f(psci::SYSTEM_OFF), 0);
        assert_eq!(f(psci::CPU_ON_64), 0, "CPU_ON is answered at EL2");
        assert_eq!(f(psci::CPU_SUSPEND_64), smccc::NOT_SUPPORTED);
        script(SimGuestAction::Hvc(u64::from(psci::CPU_OFF), 0));
        assert_eq!(cl.vcpu_run(vm), Ok(exit::SYSTEM_EVENT));
        assert_eq!(read_exit().code, u64::from(psci::CPU_OFF));
        // Off now: the host cannot run it until the guest starts it again (it has no other
        // vCPU to do so: it stays off).
        assert_eq!(cl.vcpu_run(vm), Err(HcallError::Errno(Error::Perm)));
        assert_eq!(cl.vm_destroy(vm), Ok(()));
    });
}

/// [`call_regs`] for the VM `vm`.
fn call_regs_of(m: &Machine<'_>, vm: pkvm_client::VmHandle, x: [u64; 4]) -> [u64; 4] {
    m.plat
        .guest_script
        .lock()
        .unwrap()
        .push_back(SimGuestAction::Call(x));
    let before = m.plat.guest_x.lock().unwrap().len();
    m.client().vcpu_run(vm).expect("run");
    let xs = m.plat.guest_x.lock().unwrap();
    assert_eq!(
        xs.len(),
        before + 2,
        "answered at EL2: re-entered without an exit"
    );
    xs[before + 1]
}

/// A donation the memcache cannot hold the tables of is refused with `ENOMEM` and changes
/// nothing; the same donation fits a VM with room.
#[test]
fn a_donation_without_table_memory_is_refused() {
    with_machine(&SimConfig::small(), |m| {
        let r0 = m.config().ram[0].0 >> PAGE_SHIFT;
        // A protected VM with a 2-page memcache: its root, and one page its vCPU's private
        // state takes — no page left for a table.
        m.create_model_vm_flags(
            r0 + 0x142,
            (r0 + 0x180, 2),
            Some(r0 + 0x143),
            vm_flags::PROTECTED,
        );
        let mut c = Checker::with_state(m.spec_machine(), m.abstract_state().unwrap());
        let p = r0 + 0x200;
        refused(m, &mut c, donate(0, p, 0x10, 1), Error::NoMem);
        assert_eq!(
            host_reads(m, p),
            Outcome::Access,
            "the page is still the host's"
        );
        let r0p = r0;
        m.create_model_vm_flags(
            r0p + 0x144,
            (r0p + 0x1c0, 16),
            Some(r0p + 0x145),
            vm_flags::PROTECTED,
        );
        let mut c = Checker::with_state(m.spec_machine(), m.abstract_state().unwrap());
        ok(m, &mut c, donate(1, p, 0x10, 1));
    });
}

/// MMIO guard: once the guest enrolls, an access outside its memory produces an MMIO exit
/// only at a page it mapped for MMIO; anywhere else the guest takes a synchronous external
/// abort (its EL1 registers as the architecture's exception entry leaves them) and the host
/// sees nothing.
#[test]
fn mmio_guard_keeps_unmapped_accesses_from_the_host() {
    use pkvm_abi::guest::{GUEST_CONSOLE_IPA, PSTATE_EL1H_DAIF, exit, sys, vcpu_off};
    with_machine(&SimConfig::small(), |m| {
        let r0 = m.config().ram[0].0 >> PAGE_SHIFT;
        let st = (r0 + 0x143) << PAGE_SHIFT;
        let vbar = 0x8000_1000;
        m.plat.write_u64(st + vcpu_off::PC as u64, 0x8000_0040);
        m.plat
            .write_u64(st + vcpu_off::PSTATE as u64, PSTATE_EL1H_DAIF);
        m.plat
            .write_u64(st + vcpu_off::sys(sys::VBAR_EL1) as u64, vbar);
        let (p, mut c) = setup(m);
        let vm = m.vm_handle(1);
        let cl = m.client();
        let store = || SimGuestAction::MmioWrite {
            ipa: GUEST_CONSOLE_IPA + 8,
            size: 8,
            reg: 4,
            value: 0x5ec2e7,
        };
        let script = |a: SimGuestAction| m.plat.guest_script.lock().unwrap().push_back(a);
        // Not enrolled: MMIO as before.
        script(store());
        assert_eq!(cl.vcpu_run(vm), Ok(exit::MMIO));
        assert_eq!(
            call_regs(m, [smccc::MMIO_GUARD_INFO, 0, 0, 0])[0],
            PAGE_SIZE
        );
        assert_eq!(
            call_regs(m, [smccc::MMIO_GUARD_ENROLL, 0, 0, 0])[0],
            smccc::SUCCESS
        );
        // Enrolled, the page not mapped: the guest takes the abort, no exit.
        script(store());
        let before = m.plat.guest_entries.lock().unwrap().len();
        assert_eq!(cl.vcpu_run(vm), Ok(exit::SYSTEM_EVENT), "no MMIO exit");
        let entries = m.plat.guest_entries.lock().unwrap().clone();
        let (faulted, after) = (entries[before], entries[before + 1]);
        assert_eq!(
            after.pc,
            vbar + 0x200,
            "the current-EL, SP_ELx synchronous vector"
        );
        // EL1h, DAIF masked; PAN set (the simulated CPU has FEAT_PAN, SCTLR_EL1.SPAN is 0).
        assert_eq!(after.pstate, PSTATE_EL1H_DAIF | 1 << 22);
        let sysreg = |i: usize| m.plat.read_u64(after.vcpu_pa + vcpu_off::sys(i) as u64);
        assert_eq!(sysreg(sys::ESR_EL1) >> 26, 0x25, "data abort, current EL");
        assert_eq!(
            sysreg(sys::ESR_EL1) & 0x3f,
            0x10,
            "synchronous external abort"
        );
        assert_eq!(sysreg(sys::FAR_EL1), GUEST_CONSOLE_IPA + 8);
        assert_eq!(sysreg(sys::ELR_EL1), faulted.pc);
        assert_eq!(sysreg(sys::SPSR_EL1), PSTATE_EL1H_DAIF);
        // The next exit (an interrupt) tells the host nothing of the refused access: no
        // syndrome, no address.
        script(store());
        script(SimGuestAction::Irq);
        assert_eq!(cl.vcpu_run(vm), Ok(exit::IRQ));
        let e: pkvm_abi::guest::VcpuExit = m.plat.read_obj(st + vcpu_off::EXIT as u64);
        assert_eq!((e.esr, e.far, e.ipa), (0, 0, 0), "{e:?}");
        // The guard refuses only a data access that finds no translation: an instruction
        // fetch, or a permission fault, outside its memory is a fault exit as before.
        {
            use pkvm_arch::esr::{DataAbort, Ec, Esr};
            let iabt = Esr::new(Ec::IabtLow, true, 0b000111).0;
            let perm = DataAbort {
                dfsc: 0b001111,
                ..DataAbort::default()
            };
            for esr in [iabt, Esr::new(Ec::DabtLow, true, perm.iss()).0] {
                script(SimGuestAction::Sync(esr));
                assert_eq!(cl.vcpu_run(vm), Ok(exit::FAULT), "{esr:#x}");
            }
        }
        // Mapped (twice is fine): MMIO again.
        let guard = |f: u64, ipa: u64| call_regs(m, [f, ipa, 0, 0]);
        for _ in 0..2 {
            assert_eq!(
                guard(smccc::MMIO_GUARD_MAP, GUEST_CONSOLE_IPA)[0],
                smccc::SUCCESS
            );
        }
        script(store());
        assert_eq!(cl.vcpu_run(vm), Ok(exit::MMIO));
        // Refused: unaligned, beyond the IPA space, over a page of its own, unmapping what
        // is not mapped; a donation over a guarded page.
        let refused_with = |r: [u64; 4], e: Error| {
            assert_eq!(r[0], smccc::INVALID_PARAMETER);
            assert_eq!(r[2], e.errno() as u64);
        };
        refused_with(
            guard(smccc::MMIO_GUARD_MAP, GUEST_CONSOLE_IPA + 8),
            Error::Inval,
        );
        refused_with(guard(smccc::MMIO_GUARD_MAP, 1 << 40), Error::Range);
        ok(m, &mut c, donate(1, p, 0x10, 1));
        refused_with(
            guard(smccc::MMIO_GUARD_MAP, 0x10 << PAGE_SHIFT),
            Error::Perm,
        );
        refused_with(guard(smccc::MMIO_GUARD_UNMAP, 0x0a00_0000), Error::Perm);
        // (The spec does not model MMIO guard: this one is checked without it.)
        assert_eq!(
            cl.donate_guest(vm, p + 1, GUEST_CONSOLE_IPA >> PAGE_SHIFT, 1),
            Err(HcallError::Errno(Error::Perm))
        );
        assert_eq!(host_reads(m, p + 1), Outcome::Access);
        // Unmapped again: the abort again.
        assert_eq!(
            guard(smccc::MMIO_GUARD_UNMAP, GUEST_CONSOLE_IPA)[0],
            smccc::SUCCESS
        );
        script(store());
        assert_eq!(cl.vcpu_run(vm), Ok(exit::SYSTEM_EVENT));
        // The teardown takes the guest stage-2 whole, annotations included: the memcache
        // comes back zero (the console page lies below every page the guest owns).
        assert_eq!(
            guard(smccc::MMIO_GUARD_MAP, GUEST_CONSOLE_IPA)[0],
            smccc::SUCCESS
        );
        ok(m, &mut c, Call::VmTeardown { vm: 1 });
        for pfn in r0 + 0x180..r0 + 0x190 {
            assert!(is_zero(m, pfn), "memcache page {pfn:#x} came back dirty");
        }
        // A non-protected VM is not offered MMIO guard: its calls exit to the host.
        let np = m.vm_handle(0);
        let f = call_regs_of(m, np, [smccc::VENDOR_HYP_KVM_FEATURES, 0, 0, 0])[0];
        assert_eq!(f & smccc::MMIO_GUARD_BITS, 0);
        assert_ne!(f & (1 << 3), 0, "MEM_SHARE still offered");
        for fid in [
            smccc::MMIO_GUARD_INFO,
            smccc::MMIO_GUARD_ENROLL,
            smccc::MMIO_GUARD_MAP,
            smccc::MMIO_GUARD_UNMAP,
        ] {
            m.plat
                .guest_script
                .lock()
                .unwrap()
                .push_back(SimGuestAction::Call([fid, GUEST_CONSOLE_IPA, 0, 0]));
            assert_eq!(cl.vcpu_run(np), Ok(exit::HYPERCALL), "{fid:#x}");
        }
    });
}

/// A protected vCPU runs from the copy EL2 takes at `VcpuInit` and nothing else: an initial
/// PSTATE no guest may run with (EL2h here, or a descriptor's field the state structure
/// overlaps, as the fuzzer found) is refused then, with the memcache page taken for the copy
/// given back, instead of making every later run `EINVAL`.
#[test]
fn a_protected_vcpu_with_an_invalid_initial_pstate_is_refused_at_init() {
    use pkvm_abi::guest::{PSTATE_EL1H_DAIF, exit, vcpu_off};
    with_machine(&SimConfig::small(), |m| {
        let r0 = m.config().ram[0].0 >> PAGE_SHIFT;
        // A two-page memcache: the stage-2 root and, once, the private vCPU state.
        let vm = m.create_model_vm_flags(r0 + 0x142, (r0 + 0x180, 2), None, vm_flags::PROTECTED);
        let cl = m.client();
        let st = (r0 + 0x143) << PAGE_SHIFT;
        cl.share_hyp(r0 + 0x143, 1).unwrap();
        let before = m.abstract_state().unwrap();
        for bad in [0x9, 0x28, 0x10, PSTATE_EL1H_DAIF | 1 << 20] {
            m.plat.write_u64(st + vcpu_off::PSTATE as u64, bad);
            assert_eq!(
                cl.vcpu_init(vm, st, st + 0x400),
                Err(HcallError::Errno(Error::Inval)),
                "PSTATE {bad:#x}"
            );
            assert_eq!(m.abstract_state().unwrap(), before, "PSTATE {bad:#x}");
            m.check_invariants().unwrap();
        }
        // The page went back: the memcache still has one for a valid vCPU, which runs.
        m.plat
            .write_u64(st + vcpu_off::PSTATE as u64, PSTATE_EL1H_DAIF);
        assert_eq!(cl.vcpu_init(vm, st, st + 0x400), Ok(()));
        m.plat.guest_script.lock().unwrap().clear();
        assert_eq!(cl.vcpu_run(vm), Ok(exit::SYSTEM_EVENT));
    });
}

/// A protected vCPU's virtual timer (`CNTV_CTL_EL0`, `CNTV_CVAL_EL0`) is published at every
/// exit — the host's VMM delivers its interrupt — and no other EL1 register is.
#[test]
fn a_protected_vcpus_timer_is_published_and_nothing_else() {
    use pkvm_abi::guest::{exit, sys, vcpu_off};
    with_machine(&SimConfig::small(), |m| {
        let r0 = m.config().ram[0].0 >> PAGE_SHIFT;
        let st = (r0 + 0x143) << PAGE_SHIFT;
        let at = |r: usize| st + vcpu_off::sys(r) as u64;
        // The initial state EL2 copies at VcpuInit.
        m.plat.write_u64(at(sys::CNTV_CTL_EL0), 1);
        m.plat.write_u64(at(sys::CNTV_CVAL_EL0), 0x1234_5678);
        m.plat.write_u64(at(sys::TTBR1_EL1), 0x7777_0000);
        let _ = setup(m);
        // The host's structure no longer says anything true.
        for r in [sys::CNTV_CTL_EL0, sys::CNTV_CVAL_EL0, sys::TTBR1_EL1] {
            m.plat.write_u64(at(r), 0xdead);
        }
        assert_eq!(m.client().vcpu_run(m.vm_handle(1)), Ok(exit::SYSTEM_EVENT));
        assert_eq!(m.plat.read_u64(at(sys::CNTV_CTL_EL0)), 1);
        assert_eq!(m.plat.read_u64(at(sys::CNTV_CVAL_EL0)), 0x1234_5678);
        assert_eq!(
            m.plat.read_u64(at(sys::TTBR1_EL1)),
            0xdead,
            "TTBR1_EL1 published"
        );
    });
}
