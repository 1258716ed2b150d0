//! Resetting a machine to its just-booted state (what the fuzz target does between inputs,
//! `pkvm_sim::reset`) must give exactly a freshly booted machine: a sequence of calls that
//! leaves every kind of state behind (pages shared, pinned and donated, host stage-2 blocks
//! mapped by faults, TLB entries, a guest that ran, with pages shared into it, a VM torn
//! down, emulated device registers written, counters moved), then a reset, then everything
//! the machine has compared with a fresh boot: RAM word by word, the vmemmap entry by entry,
//! the hypervisor's own state (pools, VM table, counters), the simulator's tables, the
//! abstract state, the invariants, the statistics; and the same sequence run again gives the
//! same results and the same states, call by call.
//!
//! Each kind of state is first checked to differ from the boot state before the reset, so a
//! reset that forgot one would fail here.

use pkvm_abi::{PAGE_SHIFT, Stat};
use pkvm_hyp::platform::Platform;
use pkvm_hyp::snapshot::HypSnapshot;
use pkvm_sim::machine::{SlotVm, VIRT_GICR_RD, VIRT_ITS, VIRT_UART};
use pkvm_sim::mem::SimMemory;
use pkvm_sim::platform::{ArchEvent, SimGuestAction};
use pkvm_sim::reset::PageMeta;
use pkvm_sim::scenarios::checked;
use pkvm_sim::{Machine, SimConfig, boot_static, with_machine};
use pkvm_spec::{AbsState, Call, Checker, Outcome};

/// Everything observable about a machine between calls.
#[derive(Debug, PartialEq)]
struct Observed {
    ram: Vec<u64>,
    vmemmap: Vec<PageMeta>,
    /// `None` while a VM is alive (a hypervisor snapshot keeps no VM).
    hyp: Option<HypSnapshot>,
    vms: [Option<u64>; pkvm_abi::guest::MAX_VMS],
    stats: Vec<u64>,
    table_pages: u64,
    abs: AbsState,
    tlb_entries: usize,
    counts: [u64; 3],
    recent: Vec<ArchEvent>,
    log: Vec<String>,
    guest_script: Vec<SimGuestAction>,
    guest_entries: usize,
    device_regs: Vec<(u64, u64)>,
    device_writes: usize,
    slots: Vec<(u64, Option<u64>)>,
}

fn ram(mem: &SimMemory, cfg: &SimConfig) -> Vec<u64> {
    cfg.ram
        .iter()
        .flat_map(|&(b, s)| (b..b + s).step_by(8))
        .map(|pa| mem.try_read(pa).expect("RAM"))
        .collect()
}

fn observe(m: &Machine<'_>) -> Observed {
    use std::sync::atomic::Ordering::Relaxed;
    let p = m.plat;
    let slot = |s: &SlotVm| (s.handle, s.vcpu_state);
    Observed {
        ram: ram(&p.mem, m.config()),
        vmemmap: m.vmemmap_meta(),
        hyp: m.hyp.snapshot().ok(),
        vms: m.hyp.vm_snapshots().map(|v| v.map(|v| v.handle)),
        stats: (0..)
            .map_while(Stat::from_u64)
            .map(|s| m.hyp.stat(s))
            .collect(),
        table_pages: m.hyp.table_pages(),
        abs: m.abstract_state().expect("abstract state"),
        tlb_entries: p.tlb.lock().unwrap().len(),
        counts: [&p.counts.dsb, &p.counts.isb, &p.counts.tlbi].map(|c| c.load(Relaxed)),
        recent: p.recent.lock().unwrap().clone(),
        log: p.log.lock().unwrap().clone(),
        guest_script: p.guest_script.lock().unwrap().iter().copied().collect(),
        guest_entries: p.guest_entries.lock().unwrap().len(),
        device_regs: p
            .device_regs
            .lock()
            .unwrap()
            .iter()
            .map(|(&a, &v)| (a, v))
            .collect(),
        device_writes: p.device_writes.lock().unwrap().len(),
        slots: m.vms.lock().unwrap().iter().map(slot).collect(),
    }
}

/// A sequence that leaves a bit of everything behind.
fn sequence(m: &Machine<'_>) -> Vec<Call> {
    let cfg = m.config();
    let r0 = cfg.ram[0].0 >> PAGE_SHIFT;
    let r1 = cfg.ram[1].0 >> PAGE_SHIFT;
    let co = m.carveout.0 >> PAGE_SHIFT;
    let vm_init = |desc: u64, mc: u64| Call::VmInit {
        desc_pa: desc << PAGE_SHIFT,
        mc_pfn: mc,
        mc_nr: 4,
        ipa_bits: 32,
        nr_vcpus: 1,
        flags: 0,
    };
    let vcpu_init = |vm: usize, page: u64| Call::VcpuInit {
        vm,
        state_pa: page << PAGE_SHIFT,
        fp_pa: (page << PAGE_SHIFT) + 0x800,
    };
    vec![
        // Host accesses: faults map blocks, fill the TLB; MMIO, a hidden device, an emulated
        // redistributor register (read and written).
        Call::HostAccess {
            pa: (r0 + 0x300) << PAGE_SHIFT,
            write: true,
        },
        Call::HostAccess {
            pa: r1 << PAGE_SHIFT,
            write: false,
        },
        Call::HostAccess {
            pa: VIRT_UART,
            write: true,
        },
        Call::HostAccess {
            pa: VIRT_ITS.0,
            write: false,
        },
        Call::HostAccess {
            pa: VIRT_GICR_RD.0 + 0x14,
            write: true,
        },
        Call::HostAccess {
            pa: VIRT_GICR_RD.0,
            write: false,
        },
        // Sharing (twice), pinning, donating, reclaiming, a refused call.
        Call::ShareHyp {
            pfn: r0 + 0x200,
            nr: 2,
        },
        Call::ShareHyp {
            pfn: r0 + 0x200,
            nr: 1,
        },
        Call::Pin {
            pfn: r0 + 0x201,
            nr: 1,
        },
        Call::DonateHyp {
            pfn: r0 + 0x210,
            nr: 3,
        },
        Call::HypDonateHost {
            pfn: r0 + 0x212,
            nr: 1,
        },
        Call::DonateHyp { pfn: co - 1, nr: 2 },
        Call::DebugRead {
            pa: (r0 + 0x200) << PAGE_SHIFT,
        },
        Call::HypRead {
            pa: (r0 + 0x210) << PAGE_SHIFT,
        },
        // A VM with a vCPU that runs, pages shared into it.
        Call::ShareHyp {
            pfn: r0 + 0x80,
            nr: 1,
        },
        vm_init(r0 + 0x80, r0 + 0xc0),
        Call::ShareHyp {
            pfn: r0 + 0x81,
            nr: 1,
        },
        vcpu_init(0, r0 + 0x81),
        Call::VcpuRun { vm: 0 },
        Call::ShareGuest {
            vm: 0,
            pfn: r0 + 0x220,
            gfn: 0x10,
            nr: 2,
        },
        Call::ShareGuest {
            vm: 0,
            pfn: r1 + 4,
            gfn: 0x20,
            nr: 1,
        },
        Call::UnshareGuest {
            vm: 0,
            gfn: 0x11,
            nr: 1,
        },
        // A second VM, torn down (its handle stays in its slot: stale), its descriptor
        // unshared.
        Call::ShareHyp {
            pfn: r0 + 0x82,
            nr: 1,
        },
        vm_init(r0 + 0x82, r0 + 0xd0),
        Call::ShareGuest {
            vm: 1,
            pfn: r0 + 0x230,
            gfn: 0x10,
            nr: 1,
        },
        Call::VmTeardown { vm: 1 },
        Call::UnshareHyp {
            pfn: r0 + 0x82,
            nr: 1,
        },
        Call::VcpuRun { vm: 1 },
        // More host accesses after all that (the TLB again).
        Call::HostAccess {
            pa: (r0 + 0x220) << PAGE_SHIFT,
            write: true,
        },
        Call::HostAccess {
            pa: (r0 + 0x210) << PAGE_SHIFT,
            write: false,
        },
    ]
}

/// Runs the sequence through the checker; returns each call's result and the abstract state
/// after it. The guest's script gets two interrupts (the guest's one run takes one), and the
/// log a line (the hypervisor logs only when a commit fails).
fn run(m: &Machine<'_>) -> Vec<(Call, Outcome, AbsState)> {
    m.plat
        .guest_script
        .lock()
        .unwrap()
        .extend([SimGuestAction::Irq; 2]);
    m.plat.log(format_args!("a line"));
    let mut c = Checker::new(m.spec_machine());
    sequence(m)
        .into_iter()
        .map(|call| {
            let got = checked(m, &mut c, call).unwrap_or_else(|e| panic!("{e}"));
            (call, got, m.abstract_state().unwrap())
        })
        .collect()
}

/// Every field of `after` differs from `boot` where the sequence must have changed it (else
/// the comparison after the reset would prove nothing about that field).
fn assert_changed(boot: &Observed, after: &Observed) {
    let differs: [(&str, bool); 15] = [
        ("RAM", boot.ram != after.ram),
        ("vmemmap", boot.vmemmap != after.vmemmap),
        ("hypervisor state", boot.hyp != after.hyp),
        ("VM table", boot.vms != after.vms),
        ("statistics", boot.stats != after.stats),
        ("table pages", boot.table_pages != after.table_pages),
        ("abstract state", boot.abs != after.abs),
        ("TLB", boot.tlb_entries != after.tlb_entries),
        ("effect counts", boot.counts != after.counts),
        ("recent effects", boot.recent != after.recent),
        ("log", boot.log != after.log),
        ("guest script", boot.guest_script != after.guest_script),
        ("guest entries", boot.guest_entries != after.guest_entries),
        ("device registers", boot.device_regs != after.device_regs),
        ("slot table", boot.slots != after.slots),
    ];
    for (what, changed) in differs {
        assert!(changed, "the sequence left the {what} as at boot");
    }
    assert!(after.hyp.is_none(), "a VM is alive after the sequence");
    assert!(after.device_writes > boot.device_writes);
    assert!(after.abs.vms.contains_key(&0) && !after.abs.vms.contains_key(&1));
    assert!(!after.abs.hyp_maps.is_empty());
}

#[test]
fn reset_gives_a_freshly_booted_machine() {
    let cfg = SimConfig::small();
    // What a freshly booted machine has, and what the sequence does to it.
    let (fresh, fresh_run) = with_machine(&cfg, |m| {
        let boot = observe(m);
        (boot, run(m))
    });
    with_machine(&cfg, |m| {
        let snap = m.snapshot().unwrap();
        let boot = observe(m);
        assert_eq!(boot, fresh, "two boots differ");
        let first = run(m);
        assert_eq!(first, fresh_run);
        let after = observe(m);
        assert_changed(&boot, &after);

        let stats = m.reset(&snap).unwrap();
        assert!(stats.pages > 0 && stats.entries > 0, "{stats:?}");
        let reset = observe(m);
        assert_eq!(reset, boot);
        m.check_invariants().unwrap();
        assert!(m.hyp.pools_free_memory_is_zero());
        assert_eq!(m.plat.mem.dirty_pages(), 0);

        // The same sequence on the reset machine: the same results, the same states.
        let second = run(m);
        assert_eq!(second, first);
        assert_eq!(observe(m), after);

        // And again (a reset after a reset).
        m.reset(&snap).unwrap();
        assert_eq!(observe(m), boot);
        assert_eq!(run(m), first);
    });
}

/// A machine booted once and reset between runs (the fuzz target's way): each run sees a
/// freshly booted machine, the protocol monitor included (it checks the first call after a
/// reset), and a reset reports nothing when the run was clean.
#[test]
fn a_static_machine_reset_between_runs() {
    let m = boot_static(&SimConfig::small());
    m.check_protocol().unwrap();
    let snap = m.snapshot().unwrap();
    let boot = observe(&m);
    let first = run(&m);
    for _ in 0..3 {
        m.reset(&snap).unwrap();
        assert_eq!(observe(&m), boot);
        let windows = m.plat.protocol_stats().windows;
        assert_eq!(run(&m), first);
        assert!(m.plat.protocol_stats().windows >= windows + first.len() as u64);
    }
}

/// A snapshot cannot be taken with a VM alive, nor with TLB entries.
#[test]
fn snapshots_need_no_vm_and_an_empty_tlb() {
    with_machine(&SimConfig::small(), |m| {
        let r0 = m.config().ram[0].0 >> PAGE_SHIFT;
        let _ = m.apply(Call::HostAccess {
            pa: (r0 + 0x300) << PAGE_SHIFT,
            write: false,
        });
        assert!(m.snapshot().is_err());
        m.create_model_vm(r0 + 0x80, r0 + 0xc0, None);
        m.plat
            .tlb
            .lock()
            .unwrap()
            .invalidate_regime(pkvm_sim::mmu::Regime::Stage2(0));
        assert!(m.snapshot().is_err());
    });
}

/// RAM snapshots: a reset copies back only the pages written since, and restoring an older
/// snapshot (the dirty pages are relative to the newest) copies everything.
#[test]
fn memory_snapshots() {
    use pkvm_hyp::platform::PhysMem;
    let cfg = SimConfig {
        ram: vec![(0x4000_0000, 64 << 12), (0x8000_0000, 8 << 12)],
        ..SimConfig::small()
    };
    let mem = SimMemory::new(&cfg.ram);
    mem.write_u64(0x4000_0008, 1);
    let s1 = mem.snapshot();
    let at1 = ram(&mem, &cfg);
    assert_eq!(mem.dirty_pages(), 0);
    let v = mem.page_version(0x4000_1000).unwrap();
    mem.write_u64(0x4000_1000, 2);
    assert!(mem.page_version(0x4000_1000).unwrap() > v);
    mem.zero(0x4000_0000, 16);
    assert!(mem.try_write(0x8000_7ff8, 3));
    assert!(!mem.try_write(0x9000_0000, 3));
    assert_eq!(mem.dirty_pages(), 3);
    let s2 = mem.snapshot();
    let at2 = ram(&mem, &cfg);
    let _ = mem.swap(0x4003_f000, 4);
    assert_eq!(mem.restore(&s2), 1);
    assert_eq!(ram(&mem, &cfg), at2);
    assert_eq!(
        mem.restore(&s1),
        72,
        "an older snapshot is restored in full"
    );
    assert_eq!(ram(&mem, &cfg), at1);
    mem.write_u64(0x4000_2000, 5);
    assert_eq!(
        mem.restore(&s1),
        1,
        "dirty pages are relative to the last restore"
    );
    assert_eq!(ram(&mem, &cfg), at1);
    assert_eq!(mem.restore(&s2), 72);
    assert_eq!(ram(&mem, &cfg), at2);
}

/// A snapshot restores only into the hypervisor it was taken of: one whose host stage-2 has
/// another shape (a wider address space, the same pools), or whose pools are larger (both, or
/// EL2's only), is refused with `EINVAL`, and nothing changes.
#[test]
fn a_snapshot_of_another_hypervisor_is_refused() {
    let wider = SimConfig {
        pa_bits: 44,
        ..SimConfig::small()
    };
    // Or the same table shapes with larger pools.
    let larger = SimConfig {
        hyp_pool_pages: 80,
        host_pool_pages: 80,
        ..SimConfig::small()
    };
    // Or only EL2's pool larger: the host's pool has our range, but holds other tables (a
    // host fault far away took some). (In the simulated machine EL2's tables start its pool,
    // so pools of another range come with another root: the first check refuses them all.)
    let hyp_larger = SimConfig {
        hyp_pool_pages: 80,
        ..SimConfig::small()
    };
    let theirs: Vec<HypSnapshot> = [wider, larger, hyp_larger]
        .iter()
        .map(|cfg| {
            with_machine(cfg, |m| {
                assert_eq!(m.host_access(0x80_0000_0000, false), Outcome::Access);
                m.hyp.snapshot().unwrap()
            })
        })
        .collect();
    with_machine(&SimConfig::small(), |m| {
        let ours = m.hyp.snapshot().unwrap();
        let free = m.hyp.stat(Stat::PoolFreePages);
        let tables = m.hyp.stat(Stat::TablePages);
        for (i, s) in theirs.iter().enumerate() {
            assert_eq!(m.hyp.restore(s), Err(pkvm_abi::Error::Inval), "{i}");
            assert_eq!(m.hyp.stat(Stat::PoolFreePages), free);
            assert_eq!(m.hyp.stat(Stat::TablePages), tables, "{i}");
            m.check_invariants().unwrap();
        }
        assert_eq!(m.hyp.restore(&ours), Ok(()));
        m.check_invariants().unwrap();
    });
}

/// A snapshot keeps EL2's event counters as they were when it was taken, not zeroed.
#[test]
fn a_snapshot_restores_the_counters_it_saw() {
    with_machine(&SimConfig::small(), |m| {
        let ram = m.config().ram[0].0 + 0x10_0000;
        // Host faults (memory and MMIO) before the snapshot.
        assert_eq!(m.host_access(ram, true), Outcome::Access);
        assert_eq!(m.host_access(0x80_0000_0000, false), Outcome::Access);
        let faults = m.hyp.stat(Stat::HostFaults);
        assert!(faults > 0);
        let s = m.hyp.snapshot().unwrap();
        assert_eq!(m.host_access(0x90_0000_0000, false), Outcome::Access);
        assert!(m.hyp.stat(Stat::HostFaults) > faults);
        m.hyp.restore(&s).unwrap();
        assert_eq!(m.hyp.stat(Stat::HostFaults), faults);
    });
}

/// A snapshot keeps the VM handle generation: taken after VMs came and went, a reset gives
/// the next VM the handle it got after the snapshot the first time — not one of a VM from
/// before the snapshot, which a host may still hold.
#[test]
fn a_snapshot_keeps_the_vm_handle_generation() {
    with_machine(&SimConfig::small(), |m| {
        let r0 = m.config().ram[0].0 >> PAGE_SHIFT;
        for _ in 0..3 {
            let h = m.create_model_vm(r0 + 0x300, r0 + 0x310, None);
            m.client().vm_destroy(h).unwrap();
        }
        {
            use pkvm_sim::mmu::Regime;
            let mut tlb = m.plat.tlb.lock().unwrap();
            for r in [Regime::El2].into_iter().chain((0..=8).map(Regime::Stage2)) {
                tlb.invalidate_regime(r);
            }
        }
        let snap = m.snapshot().unwrap();
        let first = m.create_model_vm(r0 + 0x300, r0 + 0x310, None);
        m.reset(&snap).unwrap();
        let again = m.create_model_vm(r0 + 0x300, r0 + 0x310, None);
        assert_eq!(again.raw(), first.raw());
        assert!(first.raw() >> 8 > 1, "{:#x}: VMs came before", first.raw());
    });
}
