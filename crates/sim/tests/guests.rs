//! Guests in the simulator: VM init, vCPU init, share/unshare into the guest, run (with a
//! scripted guest: the world switch itself is EL2-only), teardown, and the bad inputs; after
//! every test the machine must be back at its boot state (nothing leaked).

use pkvm_abi::guest::{
    self as g, FpState, PSTATE_EL1H_DAIF, VcpuState, VmDesc, exit, sys, vcpu_off,
};
use pkvm_abi::{Error, HostHcall, PAGE_SHIFT, PAGE_SIZE, Stat, psci};
use pkvm_arch::esr::{Ec, Esr};
use pkvm_arch::regs::Vttbr;
use pkvm_client::{Exit, HcallError, VmHandle};
use pkvm_hyp::platform::PhysMem;
use pkvm_sim::platform::{ArchEvent, SimGuestAction};
use pkvm_sim::{Machine, SimConfig, with_machine};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

struct Host {
    base: u64,
}

/// Page `i` of the host's test memory.
impl Host {
    fn page(&self, i: u64) -> u64 {
        self.base + i * PAGE_SIZE
    }
    fn pfn(&self, i: u64) -> u64 {
        self.page(i) >> PAGE_SHIFT
    }
}

fn stats(m: &Machine<'_>) -> [u64; 6] {
    [
        m.hyp.stat(Stat::HypMappedHostPages),
        m.hyp.stat(Stat::PoolFreePages),
        m.hyp.stat(Stat::SharedPages),
        m.hyp.stat(Stat::DonatedPages),
        m.hyp.stat(Stat::GuestSharedPages),
        m.hyp.stat(Stat::LiveVms) + m.hyp.stat(Stat::PinnedPages),
    ]
}

/// A VM with its structures at `desc_pa`/`vcpu_pa`/`fp_pa` (shared with EL2 first).
fn create(m: &Machine<'_>, h: &Host, desc_pa: u64, vcpu_pa: u64, fp_pa: u64, mc: u64) -> u64 {
    m.plat.write_u64(desc_pa, 32);
    m.plat.write_u64(desc_pa + 8, 1);
    let st = VcpuState::default();
    m.plat
        .write_u64(vcpu_pa + vcpu_off::PSTATE as u64, st.pstate);
    m.plat
        .write_u64(vcpu_pa + vcpu_off::PC as u64, g::GUEST_RAM_IPA);
    m.plat.write_u64(
        vcpu_pa + (vcpu_off::SYS + 8 * sys::SCTLR_EL1) as u64,
        st.sys[0],
    );
    let c = m.client();
    for (pa, len) in [
        (desc_pa, 32),
        (vcpu_pa, size_of::<VcpuState>() as u64),
        (fp_pa, 528),
    ] {
        let (first, last) = (pa >> PAGE_SHIFT, (pa + len - 1) >> PAGE_SHIFT);
        c.share_hyp(first, last - first + 1).unwrap();
    }
    let vm = c
        .vm_init(desc_pa, h.pfn(mc), g::VM_MEMCACHE_PAGES)
        .expect("vm_init");
    c.vcpu_init(vm, vcpu_pa, fp_pa).unwrap();
    vm.raw()
}

fn destroy(m: &Machine<'_>, handle: u64, structs: &[u64]) {
    let c = m.client();
    c.vm_destroy(VmHandle::from_raw(handle)).unwrap();
    for pa in structs {
        c.unshare_hyp(pa >> PAGE_SHIFT, 1).unwrap();
    }
}

/// One run through the typed client: the exit reason, or the errno.
fn run(m: &Machine<'_>, handle: u64) -> Result<u64, Error> {
    match m.client().vcpu_run(VmHandle::from_raw(handle)) {
        Ok(reason) => Ok(reason),
        Err(HcallError::Errno(e)) => Err(e),
        Err(e) => panic!("VcpuRun not dispatched: {e}"),
    }
}

/// One run, its exit decoded from the reason and the vCPU structure's exit record.
fn run_exit(m: &Machine<'_>, handle: u64, vcpu: u64) -> Result<Exit, Error> {
    run(m, handle).map(|reason| Exit::decode(reason, &exit_of(m, vcpu)))
}

/// The vCPU's last exit, read whole.
fn exit_of(m: &Machine<'_>, vcpu: u64) -> g::VcpuExit {
    m.plat.read_obj(vcpu + vcpu_off::EXIT as u64)
}

fn machine(f: impl FnOnce(&Machine<'_>, &Host)) {
    with_machine(&SimConfig::small(), |m| {
        let h = Host {
            base: m.config().ram[0].0 + 0x10_0000,
        };
        let before = stats(m);
        f(m, &h);
        assert_eq!(
            stats(m),
            before,
            "leak: [hyp-mapped, pool free, shared, donated, guest-shared, vms+pins]"
        );
        m.check_invariants().unwrap();
        // Every memcache the tests used (pages 16..80) came back zeroed.
        for off in (16 * PAGE_SIZE..80 * PAGE_SIZE).step_by(8) {
            assert_eq!(m.plat.read_u64(h.base + off), 0, "memcache page not zeroed");
        }
    });
}

#[test]
fn lifecycle_runs_to_power_off_and_leaks_nothing() {
    machine(|m, h| {
        // Two guests' structures in the same pages (refcount path).
        let (desc, vcpu, fp) = (h.page(0), h.page(1), h.page(2));
        let a = create(m, h, desc, vcpu, fp, 16);
        let b = create(m, h, desc + 64, vcpu + 0x400, fp + 0x400, 32);
        assert_eq!(m.hyp.stat(Stat::LiveVms), 2);
        // Both share the pages: the page counts are 2.
        assert_eq!(m.hyp.vmemmap().page(desc).unwrap().share_count(), 2);
        m.call(
            HostHcall::HostShareGuest,
            &[
                a,
                h.pfn(100),
                g::GUEST_RAM_IPA >> PAGE_SHIFT,
                16,
                g::PROT_RWX,
            ],
        )
        .unwrap();
        m.call(
            HostHcall::HostShareGuest,
            &[
                b,
                h.pfn(200),
                g::GUEST_RAM_IPA >> PAGE_SHIFT,
                16,
                g::PROT_RWX,
            ],
        )
        .unwrap();
        assert_eq!(m.hyp.stat(Stat::GuestSharedPages), 32);

        m.plat.guest_script.lock().unwrap().extend([
            SimGuestAction::MmioWrite {
                ipa: g::GUEST_CONSOLE_IPA,
                size: 1,
                reg: 3,
                value: 0x141,
            },
            SimGuestAction::MmioRead {
                ipa: g::GUEST_ID_REG_IPA,
                size: 4,
                reg: 5,
            },
            SimGuestAction::Hvc(g::GUEST_HVC_PING, 7),
            SimGuestAction::Irq,
        ]);
        let pc0 = g::GUEST_RAM_IPA;
        assert_eq!(
            run_exit(m, a, vcpu),
            Ok(Exit::Mmio {
                ipa: g::GUEST_CONSOLE_IPA,
                size: 1,
                write: true,
                data: 0x41
            }),
            "write data, 1 byte"
        );
        assert!(matches!(
            run_exit(m, a, vcpu),
            Ok(Exit::Mmio {
                ipa: g::GUEST_ID_REG_IPA,
                size: 4,
                write: false,
                ..
            })
        ));
        // The host answers the read; the next entry writes x5 and skips the load.
        m.plat
            .write_u64(vcpu + vcpu_off::EXIT_MMIO_DATA as u64, 0x1_2345_6789);
        assert_eq!(run(m, a), Ok(exit::HYPERCALL));
        assert_eq!(exit_of(m, vcpu).ipa, 0, "no IPA for a hypercall exit");
        assert_eq!(m.plat.read_u64(vcpu + vcpu_off::reg(5) as u64), 0x2345_6789);
        let entries = m.plat.guest_entries.lock().unwrap().clone();
        assert_eq!(entries[0].pc, pc0);
        assert_eq!(entries[1].pc, pc0 + 4, "MMIO write skipped");
        assert_eq!(entries[2].pc, pc0 + 8, "MMIO read skipped");
        assert_eq!(
            Vttbr::from_bits(entries[0].vttbr).vmid(),
            1,
            "VMID of the first slot"
        );
        assert_eq!(run_exit(m, a, vcpu), Ok(Exit::Irq));
        assert_eq!(
            run_exit(m, a, vcpu),
            Ok(Exit::SystemEvent(u64::from(psci::SYSTEM_OFF)))
        );
        assert_eq!(run(m, b), Ok(exit::SYSTEM_EVENT));

        // While the VMs live their structures are pinned.
        assert_eq!(
            m.call(HostHcall::HostUnshareHyp, &[vcpu >> PAGE_SHIFT, 1]),
            Err(Error::Busy)
        );
        m.plat.take_events();
        m.call(
            HostHcall::HostUnshareGuest,
            &[a, g::GUEST_RAM_IPA >> PAGE_SHIFT, 4],
        )
        .unwrap();
        // The unmapped IPAs are invalidated for a's VMID (1), never the host's.
        let ev = m.plat.take_events();
        for i in 0..4 {
            let ipa = g::GUEST_RAM_IPA + i * PAGE_SIZE;
            assert!(
                ev.iter().any(
                    |e| matches!(e, ArchEvent::TlbiS2Ipa { vmid: 1, ipa: x, .. } if *x == ipa)
                        || *e == ArchEvent::TlbiVmid(1)
                ),
                "no TLBI of {ipa:#x} for VMID 1 in {ev:?}"
            );
        }
        assert!(!ev.iter().any(|e| matches!(
            e,
            ArchEvent::TlbiS2Ipa { vmid: 0, .. } | ArchEvent::TlbiVmid(0)
        )));
        m.call(HostHcall::VmTeardown, &[a]).unwrap();
        // Teardown invalidated the whole VMID before the slot can be reused.
        assert!(m.plat.take_events().contains(&ArchEvent::TlbiVmid(1)));
        for off in (0..g::VM_MEMCACHE_PAGES * PAGE_SIZE).step_by(8) {
            assert_eq!(
                m.plat.read_u64(h.page(16) + off),
                0,
                "memcache returned zeroed"
            );
        }
        assert_eq!(m.hyp.stat(Stat::LiveVms), 1);
        // Teardown twice, run after teardown.
        assert_eq!(m.call(HostHcall::VmTeardown, &[a]), Err(Error::NoEnt));
        assert_eq!(run(m, a), Err(Error::NoEnt));
        // The first teardown unpinned a's structures; b still pins the shared pages.
        assert_eq!(
            m.call(HostHcall::HostUnshareHyp, &[vcpu >> PAGE_SHIFT, 1]),
            Err(Error::Busy)
        );
        destroy(m, b, &[desc, vcpu, fp]);
        for pa in [desc, vcpu, fp] {
            m.call(HostHcall::HostUnshareHyp, &[pa >> PAGE_SHIFT, 1])
                .unwrap();
        }
        // A new VM reuses slot 1 with a new handle; the old handle stays dead.
        let c = create(m, h, desc, vcpu, fp, 16);
        assert_ne!(c, a);
        assert_eq!(run(m, a), Err(Error::NoEnt));
        destroy(m, c, &[desc, vcpu, fp]);
        m.check_invariants().unwrap();
    });
}

#[test]
fn bad_inputs() {
    machine(|m, h| {
        let (desc, vcpu, fp) = (h.page(0), h.page(1), h.page(2));
        // VM descriptor not shared.
        assert_eq!(
            m.hvc(HostHcall::VmInit, &[desc, h.pfn(16), 8])[1],
            Error::Perm.errno() as u64
        );
        let a = create(m, h, desc, vcpu, fp, 16);
        let gfn = g::GUEST_RAM_IPA >> PAGE_SHIFT;
        // Run on a vCPU that is not there: unknown handle.
        assert_eq!(run(m, a + 1), Err(Error::NoEnt));
        // Share a page the host does not own: the memcache (donated), EL2's own memory, a page
        // shared with EL2.
        assert_eq!(
            m.call(
                HostHcall::HostShareGuest,
                &[a, h.pfn(16), gfn, 1, g::PROT_RWX]
            ),
            Err(Error::Perm)
        );
        let co = m.carveout.0 >> PAGE_SHIFT;
        assert_eq!(
            m.call(HostHcall::HostShareGuest, &[a, co, gfn, 1, g::PROT_RWX]),
            Err(Error::Perm)
        );
        assert_eq!(
            m.call(
                HostHcall::HostShareGuest,
                &[a, h.pfn(1), gfn, 1, g::PROT_RWX]
            ),
            Err(Error::Perm)
        );
        // The 4-page memcache holds the tables of one 2 MiB window (the first share made
        // them): a page in another 1 GiB window needs two more tables.
        m.call(
            HostHcall::HostShareGuest,
            &[a, h.pfn(120), gfn, 1, g::PROT_RWX],
        )
        .unwrap();
        assert_eq!(
            m.call(
                HostHcall::HostShareGuest,
                &[a, h.pfn(121), 0x4000_0000 >> PAGE_SHIFT, 1, g::PROT_RWX]
            ),
            Err(Error::NoMem)
        );
        m.call(HostHcall::HostUnshareGuest, &[a, gfn, 1]).unwrap();
        // gfn beyond the guest IPA space (32 bits).
        assert_eq!(
            m.call(
                HostHcall::HostShareGuest,
                &[a, h.pfn(100), 1 << 20, 1, g::PROT_RWX]
            ),
            Err(Error::Range)
        );
        assert_eq!(
            m.call(
                HostHcall::HostShareGuest,
                &[a, h.pfn(100), (1 << 20) - 1, 2, g::PROT_RWX]
            ),
            Err(Error::Range)
        );
        assert_eq!(
            m.call(HostHcall::HostShareGuest, &[a, h.pfn(100), gfn, 1, 0]),
            Err(Error::Inval)
        );
        // A page shared into the guest is not shared with EL2: share_hyp/unshare_hyp/pin EPERM.
        m.call(
            HostHcall::HostShareGuest,
            &[a, h.pfn(100), gfn, 2, g::PROT_RWX],
        )
        .unwrap();
        assert_eq!(
            m.call(
                HostHcall::HostShareGuest,
                &[a, h.pfn(100), gfn + 4, 1, g::PROT_RWX]
            ),
            Err(Error::Perm)
        );
        assert_eq!(
            m.call(
                HostHcall::HostShareGuest,
                &[a, h.pfn(110), gfn + 1, 1, g::PROT_RWX]
            ),
            Err(Error::Perm),
            "gfn in use"
        );
        assert_eq!(
            m.call(HostHcall::HostShareHyp, &[h.pfn(100), 1]),
            Err(Error::Perm)
        );
        assert_eq!(
            m.call(HostHcall::HostUnshareHyp, &[h.pfn(100), 1]),
            Err(Error::Perm)
        );
        assert_eq!(
            m.call(HostHcall::HostDonateHyp, &[h.pfn(100), 1]),
            Err(Error::Perm)
        );
        assert_eq!(
            m.call(HostHcall::DebugPin, &[h.pfn(100), 1]),
            Err(Error::Perm)
        );
        // Unshare of gfns not shared.
        assert_eq!(
            m.call(HostHcall::HostUnshareGuest, &[a, gfn + 1, 2]),
            Err(Error::Perm)
        );
        // Corrupted PSTATE: AArch32, EL2h, a stray bit; nothing runs.
        let ps = vcpu + vcpu_off::PSTATE as u64;
        for bad in [0x10, 0x9, 0x3c5 | 1 << 20, 0x3c8, 0x1] {
            m.plat.write_u64(ps, bad);
            assert_eq!(run(m, a), Err(Error::Inval), "pstate {bad:#x}");
        }
        assert!(m.plat.guest_entries.lock().unwrap().is_empty());
        m.plat.write_u64(ps, PSTATE_EL1H_DAIF);
        // Unshare of the vCPU structure while the VM lives: EBUSY.
        assert_eq!(
            m.call(HostHcall::HostUnshareHyp, &[vcpu >> PAGE_SHIFT, 1]),
            Err(Error::Busy)
        );
        // A second vCPU.
        assert_eq!(
            m.call(HostHcall::VcpuInit, &[a, vcpu + 0x800, fp]),
            Err(Error::Busy)
        );
        // A guest fault and a trapped instruction come back as FAULT exits.
        // WFI: an IDLE exit, the PC advanced.
        m.plat
            .guest_script
            .lock()
            .unwrap()
            .push_back(SimGuestAction::Sync(Esr::new(Ec::Wfx, true, 0).0));
        let pc = m.plat.read_u64(vcpu + vcpu_off::PC as u64);
        assert_eq!(run(m, a), Ok(exit::IDLE));
        assert_eq!(m.plat.read_u64(vcpu + vcpu_off::PC as u64), pc + 4);
        m.plat.guest_script.lock().unwrap().extend([
            SimGuestAction::Sync(Esr::new(Ec::Sysreg64, true, 0).0),
            // Translation fault, level 3, no valid syndrome: not MMIO, a fault with its IPA.
            SimGuestAction::Sync(Esr::new(Ec::DabtLow, false, 0x07).0),
            // Instruction abort, permission fault: its IPA too.
            SimGuestAction::Sync(Esr::new(Ec::IabtLow, false, 0x0f).0),
            // Synchronous external abort: HPFAR_EL2 is UNKNOWN, no IPA.
            SimGuestAction::Sync(Esr::new(Ec::DabtLow, false, 0x10).0),
        ]);
        assert!(
            matches!(run_exit(m, a, vcpu), Ok(Exit::Fault { esr, ipa: 0, .. })
                if Esr(esr).ec() == Ec::Sysreg64),
            "no IPA for a trapped instruction"
        );
        for ec in [Ec::DabtLow, Ec::IabtLow] {
            assert!(
                matches!(
                    run_exit(m, a, vcpu),
                    Ok(Exit::Fault { esr, far: 0x678, ipa: 0x1234_5678 }) if Esr(esr).ec() == ec
                ),
                "the FAR and IPA of a stage-2 translation or permission fault"
            );
        }
        assert!(
            matches!(run_exit(m, a, vcpu), Ok(Exit::Fault { esr, ipa: 0, .. })
                if Esr(esr).ec() == Ec::DabtLow),
            "no IPA for an external abort (HPFAR_EL2 is UNKNOWN then)"
        );
        assert_eq!(run(m, a), Ok(exit::SYSTEM_EVENT));
        destroy(m, a, &[desc, vcpu, fp]);
        // Run on a since-unshared vCPU structure / after teardown.
        assert_eq!(run(m, a), Err(Error::NoEnt));
        // A VM without a vCPU cannot run; bad descriptor fields are refused.
        m.call(HostHcall::HostShareHyp, &[desc >> PAGE_SHIFT, 1])
            .unwrap();
        m.plat.write_u64(desc, 32);
        m.plat.write_u64(desc + 8, 1);
        let r = m.hvc(HostHcall::VmInit, &[desc, h.pfn(16), 8]);
        assert_eq!(r[1], 0);
        assert_eq!(run(m, r[2]), Err(Error::NoEnt));
        // vCPU structure not shared.
        assert_eq!(
            m.call(HostHcall::VcpuInit, &[r[2], vcpu, fp]),
            Err(Error::Perm)
        );
        m.call(HostHcall::VmTeardown, &[r[2]]).unwrap();
        m.plat.write_u64(desc, 60);
        assert_eq!(
            m.hvc(HostHcall::VmInit, &[desc + 32, h.pfn(16), 8])[1],
            Error::Inval.errno() as u64
        );
        m.plat.write_u64(desc + 32, 32);
        m.plat.write_u64(desc + 40, 5); // more vCPUs than MAX_VCPUS_PER_VM
        assert_eq!(
            m.hvc(HostHcall::VmInit, &[desc + 32, h.pfn(16), 8])[1],
            Error::Inval.errno() as u64
        );
        assert_eq!(
            m.hvc(HostHcall::VmInit, &[desc, h.pfn(16), 1])[1],
            Error::Inval.errno() as u64
        );
        m.call(HostHcall::HostUnshareHyp, &[desc >> PAGE_SHIFT, 1])
            .unwrap();
        let _ = FpState::default();
        let _ = VmDesc::default();
    });
}

/// PSTATE bits a guest sets for itself (PAN, UAO, DIT, TCO, SSBS, BTYPE, ALLINT) do not make
/// its next run fail: they only affect the guest. IL and SS still do.
#[test]
fn guest_pstate_bits_of_its_own_are_accepted() {
    machine(|m, h| {
        let (desc, vcpu, fp) = (h.page(0), h.page(1), h.page(2));
        let a = create(m, h, desc, vcpu, fp, 16);
        let ps = vcpu + vcpu_off::PSTATE as u64;
        let own = (1u64 << 22) | (1 << 23) | (1 << 24) | (1 << 25) | (1 << 12) | (1 << 13);
        for extra in [own, 0b10 << 10, own | (0b11 << 10)] {
            m.plat.write_u64(ps, PSTATE_EL1H_DAIF | extra);
            m.plat
                .write_u64(vcpu + vcpu_off::PC as u64, g::GUEST_RAM_IPA);
            assert_eq!(run(m, a), Ok(exit::SYSTEM_EVENT), "pstate bits {extra:#x}");
            let entry = *m.plat.guest_entries.lock().unwrap().last().unwrap();
            assert_eq!(entry.pstate, PSTATE_EL1H_DAIF | extra);
        }
        for bad in [1u64 << 20, 1 << 21, 1 << 4, 1 << 5, 1 << 26] {
            m.plat.write_u64(ps, PSTATE_EL1H_DAIF | bad);
            assert_eq!(run(m, a), Err(Error::Inval), "pstate bit {bad:#x}");
        }
        destroy(m, a, &[desc, vcpu, fp]);
    });
}

/// An MMIO read completes as the load instruction would have: sign-extended for `LDRSB`/
/// `LDRSH`/`LDRSW`, zero-extended to 64 bits for a 32-bit register.
#[test]
fn mmio_reads_complete_with_the_loads_extension() {
    machine(|m, h| {
        let (desc, vcpu, fp) = (h.page(0), h.page(1), h.page(2));
        let a = create(m, h, desc, vcpu, fp, 16);
        let reg = |r: u64| m.plat.read_u64(vcpu + (vcpu_off::REGS as u64) + 8 * r);
        for (size, sf, host, want) in [
            (1u8, true, 0x80u64, 0xffff_ffff_ffff_ff80u64),
            (1, true, 0x7f, 0x7f),
            (2, false, 0x8000, 0xffff_8000),
            (4, true, 0x8000_0000, 0xffff_ffff_8000_0000),
        ] {
            m.plat
                .guest_script
                .lock()
                .unwrap()
                .push_back(SimGuestAction::MmioReadSigned {
                    ipa: g::GUEST_ID_REG_IPA,
                    size,
                    reg: 9,
                    sf,
                });
            assert_eq!(run(m, a), Ok(exit::MMIO));
            m.plat
                .write_u64(vcpu + vcpu_off::EXIT_MMIO_DATA as u64, host);
            m.plat
                .guest_script
                .lock()
                .unwrap()
                .push_back(SimGuestAction::Irq);
            assert_eq!(run(m, a), Ok(exit::IRQ));
            assert_eq!(reg(9), want, "size {size} sf {sf} value {host:#x}");
        }
        // A store's completion leaves its source register alone, whatever the host left in
        // the exit's data.
        let script = |a| m.plat.guest_script.lock().unwrap().push_back(a);
        script(SimGuestAction::MmioWrite {
            ipa: g::GUEST_ID_REG_IPA,
            size: 8,
            reg: 9,
            value: 0x5107e,
        });
        assert_eq!(run(m, a), Ok(exit::MMIO));
        m.plat
            .write_u64(vcpu + vcpu_off::EXIT_MMIO_DATA as u64, 0xbad);
        script(SimGuestAction::Irq);
        assert_eq!(run(m, a), Ok(exit::IRQ));
        assert_eq!(reg(9), 0x5107e);
        // A load into XZR (register 31) loads nothing: the PC after it is the next
        // instruction, not the data.
        let pc = || m.plat.read_u64(vcpu + vcpu_off::PC as u64);
        script(SimGuestAction::MmioRead {
            ipa: g::GUEST_ID_REG_IPA,
            size: 8,
            reg: 31,
        });
        assert_eq!(run(m, a), Ok(exit::MMIO));
        let at = pc();
        m.plat
            .write_u64(vcpu + vcpu_off::EXIT_MMIO_DATA as u64, 0xbad0);
        script(SimGuestAction::Irq);
        assert_eq!(run(m, a), Ok(exit::IRQ));
        assert_eq!(pc(), at + 4);
        // A trapped SMC is a hypercall exit that reports its own address: EL2 moves the PC
        // past it; an HVC's exit PC is past it already and stays.
        for (ec, step) in [(Ec::Smc64, 4), (Ec::Hvc64, 0)] {
            let at = pc();
            script(SimGuestAction::Sync(Esr::new(ec, true, 0).0));
            assert_eq!(run(m, a), Ok(exit::HYPERCALL), "{ec:?}");
            assert_eq!(pc(), at + step, "{ec:?}");
        }
        // The host answers with a function id EL2 would answer itself in x0; an interrupt
        // next leaves the HVC's syndrome in ESR_EL2, but is no call: an IRQ exit.
        m.plat
            .write_u64(vcpu + vcpu_off::REGS as u64, u64::from(psci::SMCCC_VERSION));
        script(SimGuestAction::Irq);
        assert_eq!(run(m, a), Ok(exit::IRQ));
        destroy(m, a, &[desc, vcpu, fp]);
    });
}

#[test]
fn eight_vms_then_enomem() {
    machine(|m, h| {
        let mut vms = Vec::new();
        for i in 0..g::MAX_VMS as u64 {
            vms.push(create(
                m,
                h,
                h.page(0) + 64 * i,
                h.page(1) + 0x210 * i,
                h.page(3) + 0x240 * i,
                16 + 8 * i,
            ));
        }
        // Structures of 8 guests share a page: count 8.
        assert_eq!(m.hyp.vmemmap().page(h.page(0)).unwrap().share_count(), 8);
        m.call(HostHcall::HostShareHyp, &[h.pfn(10), 1]).unwrap();
        m.plat.write_u64(h.page(10), 32);
        m.plat.write_u64(h.page(10) + 8, 1);
        assert_eq!(
            m.hvc(HostHcall::VmInit, &[h.page(10), h.pfn(100), 8])[1],
            Error::NoMem.errno() as u64
        );
        m.call(HostHcall::HostUnshareHyp, &[h.pfn(10), 1]).unwrap();
        for (i, v) in vms.iter().enumerate() {
            m.call(
                HostHcall::HostShareGuest,
                &[
                    *v,
                    h.pfn(200 + 16 * i as u64),
                    g::GUEST_RAM_IPA >> PAGE_SHIFT,
                    16,
                    g::PROT_RWX,
                ],
            )
            .unwrap();
            assert_eq!(run(m, *v), Ok(exit::SYSTEM_EVENT));
        }
        let vmids: Vec<u64> = m
            .plat
            .guest_entries
            .lock()
            .unwrap()
            .iter()
            .map(|e| u64::from(Vttbr::from_bits(e.vttbr).vmid()))
            .collect();
        assert_eq!(vmids, (1..=8).collect::<Vec<_>>());
        for v in vms.iter().rev() {
            m.call(HostHcall::VmTeardown, &[*v]).unwrap();
        }
        for i in 0..6 {
            while m.call(HostHcall::HostUnshareHyp, &[h.pfn(i), 1]).is_ok() {}
        }
    });
}

/// Set when a thread of a concurrent test panics, so that the others stop instead of waiting
/// forever for something the dead thread will never do (a failure, not a CI timeout).
struct Abort(AtomicBool);

impl Abort {
    /// Whether another thread has panicked.
    fn raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Raises the flag if the current thread unwinds while the guard lives.
    fn guard(&self) -> AbortOnPanic<'_> {
        AbortOnPanic(self)
    }
}

struct AbortOnPanic<'a>(&'a Abort);

impl Drop for AbortOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.0.store(true, Ordering::Relaxed);
        }
    }
}

/// How long a thread waits for another thread's VM to let go of a shared page before it fails.
const BUSY_LIMIT: Duration = Duration::from_secs(20);

/// Four simulated CPUs create, run and destroy VMs at once, the structures of two threads'
/// VMs sharing one page, while the host shares and unshares other pages with EL2: every call
/// returns a legal result and nothing is left afterwards.
///
/// A thread that panics (a failed check) raises an abort flag: the others stop at their next
/// round or while waiting on `EBUSY` (its VM will never be torn down), so the test fails at
/// once; a wait on `EBUSY` is also bounded ([`BUSY_LIMIT`]).
#[test]
fn concurrent_lifecycles_leave_nothing_behind() {
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 300;
    let abort = &Abort(AtomicBool::new(false));
    machine(|m, h| {
        std::thread::scope(|s| {
            for t in 0..THREADS {
                s.spawn(move || {
                    let _guard = abort.guard();
                    // Threads 0/1 put their structures in pages 0..2, threads 2/3 in 3..5.
                    let pair = (t / 2) * 3;
                    let half = (t % 2) * 0x800;
                    let (desc, vcpu, fp) = (
                        h.page(pair) + half,
                        h.page(pair + 1) + half,
                        h.page(pair + 2) + half,
                    );
                    let mc = 16 + 8 * t;
                    let ram = 100 + 32 * t;
                    let other = 300 + t;
                    for i in 0..ROUNDS {
                        if abort.raised() {
                            return;
                        }
                        let vm = create(m, h, desc, vcpu, fp, mc);
                        let gfn = g::GUEST_RAM_IPA >> PAGE_SHIFT;
                        m.call(
                            HostHcall::HostShareGuest,
                            &[vm, h.pfn(ram), gfn, 16, g::PROT_RWX],
                        )
                        .unwrap();
                        if i % 2 == 0 {
                            m.call(HostHcall::HostUnshareGuest, &[vm, gfn + 4, 4])
                                .unwrap();
                        }
                        // Another thread's VM may own this page's pins; our own run works.
                        assert_eq!(run(m, vm), Ok(exit::SYSTEM_EVENT));
                        m.call(HostHcall::HostShareHyp, &[h.pfn(other), 1]).unwrap();
                        m.call(HostHcall::VmTeardown, &[vm]).unwrap();
                        assert_eq!(run(m, vm), Err(Error::NoEnt));
                        m.call(HostHcall::HostUnshareHyp, &[h.pfn(other), 1])
                            .unwrap();
                        // Release our structures: EBUSY while the other thread's VM on the
                        // same pages lives.
                        for (pa, len) in [
                            (desc, 32u64),
                            (vcpu, size_of::<VcpuState>() as u64),
                            (fp, 528),
                        ] {
                            let (first, last) = (pa >> PAGE_SHIFT, (pa + len - 1) >> PAGE_SHIFT);
                            let start = Instant::now();
                            loop {
                                match m.call(HostHcall::HostUnshareHyp, &[first, last - first + 1])
                                {
                                    Ok(()) => break,
                                    // The other VM on the page will never go: its thread died.
                                    Err(Error::Busy) if abort.raised() => return,
                                    Err(Error::Busy) => {
                                        assert!(
                                            start.elapsed() < BUSY_LIMIT,
                                            "thread {t}: unshare of {pa:#x} still EBUSY after \
                                             {BUSY_LIMIT:?}"
                                        );
                                        std::thread::yield_now();
                                    }
                                    Err(e) => panic!("unshare of our structure: {e:?}"),
                                }
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(m.hyp.mmops_errors(), 0);
        assert!(m.hyp.pools_free_memory_is_zero());
    });
}

/// `HostShareGuest` with a protection the ABI does not define (none, or bits outside RWX) is
/// `EINVAL` and changes nothing; a read-only share is accepted and shows in the guest's view.
#[test]
fn share_guest_refuses_bad_protections() {
    machine(|m, h| {
        let (desc, vcpu, fp) = (h.page(0), h.page(1), h.page(2));
        let a = create(m, h, desc, vcpu, fp, 16);
        let gfn = g::GUEST_RAM_IPA >> PAGE_SHIFT;
        let before = m.abstract_state().unwrap();
        for prot in [0, 1 << 3, g::PROT_RWX | 1 << 3, u64::MAX] {
            assert_eq!(
                m.call(HostHcall::HostShareGuest, &[a, h.pfn(100), gfn, 1, prot]),
                Err(Error::Inval),
                "prot {prot:#x}"
            );
            assert_eq!(m.abstract_state().unwrap(), before, "prot {prot:#x}");
        }
        m.check_invariants().unwrap();
        assert_eq!(
            m.call(
                HostHcall::HostShareGuest,
                &[a, h.pfn(100), gfn, 1, g::PROT_R]
            ),
            Ok(())
        );
        assert_ne!(m.abstract_state().unwrap(), before);
        assert_eq!(m.call(HostHcall::HostUnshareGuest, &[a, gfn, 1]), Ok(()));
        destroy(m, a, &[desc, vcpu, fp]);
    });
}

/// Unsharing more pages from a guest than the TLBI batches of one operation hold (8 batches
/// of 8) invalidates the guest's whole VMID instead: the page-table protocol checker sees
/// every removed entry invalidated under the guest's VMID by the end of the call.
#[test]
fn large_guest_unshare_invalidates_the_whole_vmid() {
    machine(|m, h| {
        let (desc, vcpu, fp) = (h.page(0), h.page(1), h.page(2));
        let a = create(m, h, desc, vcpu, fp, 16);
        let gfn = g::GUEST_RAM_IPA >> PAGE_SHIFT;
        let nr = 100;
        assert_eq!(
            m.call(
                HostHcall::HostShareGuest,
                &[a, h.pfn(200), gfn, nr, g::PROT_RWX]
            ),
            Ok(())
        );
        m.check_protocol().unwrap();
        let before = m.plat.protocol_stats();
        assert_eq!(m.call(HostHcall::HostUnshareGuest, &[a, gfn, nr]), Ok(()));
        m.check_protocol().unwrap();
        let after = m.plat.protocol_stats();
        assert!(
            after.invalidations >= before.invalidations + nr,
            "{before:?} -> {after:?}"
        );
        destroy(m, a, &[desc, vcpu, fp]);
    });
}

/// Structures that end exactly at the end of a page pin that page alone: the next page, not
/// shared with EL2, is not asked for.
#[test]
fn structures_ending_at_a_page_end_pin_that_page_only() {
    machine(|m, h| {
        let end_of = |page: u64, len: usize| h.page(page) + PAGE_SIZE - len as u64;
        let desc = end_of(2, size_of::<VmDesc>());
        let vcpu = end_of(4, size_of::<VcpuState>());
        let fp = end_of(6, g::FP_STATE_SIZE);
        let vm = create(m, h, desc, vcpu, fp, 16);
        assert!(run(m, vm).is_ok());
        destroy(m, vm, &[desc, vcpu, fp]);
    });
}

/// What `HostShareGuest` grants is what the guest's stage-2 leaf says: each of the seven
/// protections, read back from the guest's tables (which have the host stage-2's geometry:
/// one `VTCR_EL2` for both).
#[test]
fn share_guest_maps_the_protection_asked_for() {
    use pkvm_sim::machine::start_level;
    use pkvm_sim::mmu::{Regime, walk};
    machine(|m, h| {
        let (desc, vcpu, fp) = (h.page(0), h.page(1), h.page(2));
        let a = create(m, h, desc, vcpu, fp, 16);
        let gfn = g::GUEST_RAM_IPA >> PAGE_SHIFT;
        let vm = m
            .hyp
            .vm_snapshots()
            .into_iter()
            .flatten()
            .find(|s| s.handle == a)
            .unwrap();
        let (root, vmid) = (vm.vttbr.root(), vm.vttbr.vmid());
        for prot in 1..=g::PROT_RWX {
            m.call(HostHcall::HostShareGuest, &[a, h.pfn(100), gfn, 1, prot])
                .unwrap();
            let t = walk(
                &m.plat.mem,
                Regime::Stage2(vmid),
                root,
                start_level(m.config().pa_bits),
                g::GUEST_RAM_IPA,
            )
            .unwrap();
            assert_eq!(t.pa, h.page(100));
            let want = (
                prot & g::PROT_R != 0,
                prot & g::PROT_W != 0,
                prot & g::PROT_X != 0,
            );
            assert_eq!((t.read, t.write, t.exec), want, "prot {prot:#x}");
            m.call(HostHcall::HostUnshareGuest, &[a, gfn, 1]).unwrap();
        }
        destroy(m, a, &[desc, vcpu, fp]);
    });
}
