//! Regression tests for the escapes an adversarial review reproduced on main at 437c5c9
//! (issue "Nothing the host does can break EL2"), where the simulator reaches them. Each test
//! replays the attack through the hypercall dispatcher with the spec checker and the structural
//! invariants as the oracle, and asserts that the step that used to succeed is refused and
//! changes nothing.
//!
//! The escapes that live in the EL2 image (trap handling, the world switch, the GIC) are tested
//! by the `hostile` and `guests` QEMU scenarios; see docs/SECURITY.md for the full map.

use pkvm_abi::{Error, HostHcall, PAGE_SHIFT, PAGE_SIZE};
use pkvm_arch::addr::Ipa;
use pkvm_hyp::platform::{PhysMem, Platform};
use pkvm_sim::scenarios::checked;
use pkvm_sim::{Machine, SimConfig, with_machine};
use pkvm_spec::{Call, Checker, Outcome};

/// First RAM page the tests use (well below the carve-out).
fn r0(m: &Machine<'_>) -> u64 {
    m.config().ram[0].0 >> PAGE_SHIFT
}

use pkvm_sim::scenarios::{expect_ok as ok, expect_refused as refused};

/// Escape 1 (critical): `VmInit` with a 4-page memcache, then `DebugHypDonateHost` of a free
/// memcache page used to succeed (its "unused" test was `refcount == 0`, which free pool pages
/// also pass); the host then forged a level-1 table in it that became the guest's. Now only
/// pages the host donated with `HostDonateHyp` and that EL2 does not use go back.
#[test]
fn escape1_debug_reclaim_of_a_live_vms_memcache_page_is_refused() {
    with_machine(&SimConfig::small(), |m| {
        let base = r0(m) + 0x100;
        let (desc_pfn, mc) = (base, base + 0x10);
        let desc = desc_pfn << PAGE_SHIFT;
        m.call(HostHcall::HostShareHyp, &[desc_pfn, 1]).unwrap();
        m.plat.write_u64(desc, 32);
        m.plat.write_u64(desc + 8, 1);
        let r = m.hvc(HostHcall::VmInit, &[desc, mc, 4]);
        assert_eq!(r[1], 0, "VmInit");
        let vm = r[2];

        let mut c = Checker::with_state(m.spec_machine(), m.abstract_state().unwrap());
        for pfn in [mc, mc + 1, mc + 3] {
            refused(m, &mut c, Call::HypDonateHost { pfn, nr: 1 }, Error::Perm);
        }
        refused(
            m,
            &mut c,
            Call::HypDonateHost { pfn: mc, nr: 4 },
            Error::Perm,
        );
        // The host cannot write the page either: it is still EL2's.
        assert_eq!(
            checked(
                m,
                &mut c,
                Call::HostAccess {
                    pa: (mc + 1) << PAGE_SHIFT,
                    write: true
                }
            )
            .unwrap(),
            Outcome::Abort
        );
        // The guest's next share builds its tables in the untouched memcache.
        let data = base + 0x40;
        m.call(HostHcall::HostShareGuest, &[vm, data, 0x8_0000, 1, 7])
            .unwrap();
        m.call(HostHcall::HostUnshareGuest, &[vm, 0x8_0000, 1])
            .unwrap();
        // An idle donated page still goes back.
        let mut c = Checker::with_state(m.spec_machine(), m.abstract_state().unwrap());
        ok(
            m,
            &mut c,
            Call::DonateHyp {
                pfn: base + 0x50,
                nr: 1,
            },
        );
        ok(
            m,
            &mut c,
            Call::HypDonateHost {
                pfn: base + 0x50,
                nr: 1,
            },
        );
        m.call(HostHcall::VmTeardown, &[vm]).unwrap();
    });
}

/// Escape 2 (critical): `DebugUnpin` used to drop EL2's own pin of a live vCPU structure (the
/// same count held both), so the host could unshare the page under the running VM and hand it
/// to EL2 again as another VM's memcache. EL2's pins are now counted apart from host pins.
#[test]
fn escape2_debug_unpin_cannot_drop_el2_pins() {
    with_machine(&SimConfig::small(), |m| {
        let base = r0(m) + 0x100;
        let vm = vm_with_vcpu(m, base, base + 0x10, base + 1);
        let vcpu_pfn = base + 1;

        let mut c = Checker::with_state(m.spec_machine(), m.abstract_state().unwrap());
        for pfn in [vcpu_pfn, base] {
            refused(m, &mut c, Call::Unpin { pfn, nr: 1 }, Error::Perm);
            refused(m, &mut c, Call::UnshareHyp { pfn, nr: 1 }, Error::Busy);
        }
        // A host pin on top comes and goes; EL2's stays.
        ok(
            m,
            &mut c,
            Call::Pin {
                pfn: vcpu_pfn,
                nr: 1,
            },
        );
        ok(
            m,
            &mut c,
            Call::Unpin {
                pfn: vcpu_pfn,
                nr: 1,
            },
        );
        refused(
            m,
            &mut c,
            Call::Unpin {
                pfn: vcpu_pfn,
                nr: 1,
            },
            Error::Perm,
        );
        refused(
            m,
            &mut c,
            Call::UnshareHyp {
                pfn: vcpu_pfn,
                nr: 1,
            },
            Error::Busy,
        );
        // The page cannot become another VM's memcache while the first VM lives.
        let desc2 = (base + 0x30) << PAGE_SHIFT;
        m.call(HostHcall::HostShareHyp, &[base + 0x30, 1]).unwrap();
        m.plat.write_u64(desc2, 32);
        m.plat.write_u64(desc2 + 8, 1);
        let r = m.hvc(HostHcall::VmInit, &[desc2, vcpu_pfn, 2]);
        assert_eq!(
            r[1] as i64,
            Error::Perm.errno(),
            "VmInit over a pinned page"
        );

        // After teardown EL2's pins are gone and the host unshares normally.
        m.call(HostHcall::VmTeardown, &[vm]).unwrap();
        let mut c = Checker::with_state(m.spec_machine(), m.abstract_state().unwrap());
        refused(
            m,
            &mut c,
            Call::Unpin {
                pfn: vcpu_pfn,
                nr: 1,
            },
            Error::Perm,
        );
        ok(
            m,
            &mut c,
            Call::UnshareHyp {
                pfn: vcpu_pfn,
                nr: 1,
            },
        );
    });
}

/// Escape 6 (medium): `DebugRead` used to read any word EL2 maps — its page tables, pools,
/// stacks, the vmemmap, a VM's stage-2. Now only pages the host shares with EL2.
#[test]
fn escape6_debug_read_only_reads_pages_shared_with_el2() {
    with_machine(&SimConfig::small(), |m| {
        let base = r0(m) + 0x100;
        let _vm = vm_with_vcpu(m, base, base + 0x10, base + 1);
        let mut c = Checker::with_state(m.spec_machine(), m.abstract_state().unwrap());
        let targets = [
            m.hyp.hyp_pgd(),             // EL2's stage-1 root
            m.hyp.host_pgd(),            // the host stage-2 root
            m.carveout.0,                // the EL2 pool
            m.carveout.1 - PAGE_SIZE,    // the last carve-out page
            (base + 0x10) << PAGE_SHIFT, // the VM's stage-2 root (memcache)
            (base + 0x11) << PAGE_SHIFT, // a free memcache page
        ];
        for pa in targets {
            refused(m, &mut c, Call::DebugRead { pa }, Error::Perm);
        }
        ok(
            m,
            &mut c,
            Call::DonateHyp {
                pfn: base + 0x50,
                nr: 1,
            },
        );
        refused(
            m,
            &mut c,
            Call::DebugRead {
                pa: (base + 0x50) << PAGE_SHIFT,
            },
            Error::Perm,
        );
        // What the host shares it can read back, through the same call.
        let pa = (base + 0x60) << PAGE_SHIFT;
        ok(
            m,
            &mut c,
            Call::ShareHyp {
                pfn: base + 0x60,
                nr: 1,
            },
        );
        m.plat.write_u64(pa + 16, 0x1234_5678);
        let r = m.hvc(HostHcall::DebugRead, &[pa + 16]);
        assert_eq!((r[1], r[2]), (0, 0x1234_5678));
        ok(
            m,
            &mut c,
            Call::UnshareHyp {
                pfn: base + 0x60,
                nr: 1,
            },
        );
        refused(m, &mut c, Call::DebugRead { pa }, Error::Perm);
    });
}

/// A VM with its descriptor in page `desc_pfn`, a 4-page memcache at `mc`, and its vCPU
/// state and FP structures in page `vcpu_pfn` (all pinned by EL2).
fn vm_with_vcpu(m: &Machine<'_>, desc_pfn: u64, mc: u64, vcpu_pfn: u64) -> u64 {
    let desc = desc_pfn << PAGE_SHIFT;
    m.call(HostHcall::HostShareHyp, &[desc_pfn, 1]).unwrap();
    m.plat.write_u64(desc, 32);
    m.plat.write_u64(desc + 8, 1);
    let r = m.hvc(HostHcall::VmInit, &[desc, mc, 4]);
    assert_eq!(r[1], 0, "VmInit");
    m.call(HostHcall::HostShareHyp, &[vcpu_pfn, 1]).unwrap();
    let st = vcpu_pfn << PAGE_SHIFT;
    m.call(HostHcall::VcpuInit, &[r[2], st, st + 0x400])
        .unwrap();
    r[2]
}

/// Escape 3 (high), the ITS: the host used to reach the ITS through the lazy identity map of
/// the MMIO gaps, point its device table at EL2's carve-out and have it write there. The ITS
/// (and fw_cfg, whose DMA interface is the same class) is now hidden: annotated as EL2's in
/// the host stage-2, so every host access aborts — also after the fault path recycles the
/// MMIO mappings when its table pool runs dry.
#[test]
fn escape3_its_and_fw_cfg_are_hidden_from_the_host() {
    use pkvm_sim::machine::{VIRT_FW_CFG, VIRT_ITS};
    with_machine(&SimConfig::small(), |m| {
        let mut c = Checker::new(m.spec_machine());
        let targets = [
            VIRT_ITS.0,           // GITS_CTLR
            VIRT_ITS.0 + 0x100,   // GITS_BASER0
            VIRT_ITS.0 + 0x80,    // GITS_CBASER
            VIRT_ITS.1 - 8,       // GITS_TRANSLATER frame
            VIRT_FW_CFG.0 + 0x10, // fw_cfg DMA address register
        ];
        for round in 0..2 {
            for pa in targets {
                for write in [false, true] {
                    let got = checked(m, &mut c, Call::HostAccess { pa, write }).unwrap();
                    assert_eq!(got, Outcome::Abort, "round {round}: {pa:#x} write={write}");
                }
            }
            // MMIO next to them is still the host's.
            let got = checked(
                m,
                &mut c,
                Call::HostAccess {
                    pa: VIRT_ITS.0 - 8,
                    write: true,
                },
            )
            .unwrap();
            assert_eq!(got, Outcome::Access);
            // What EL2 does when the host stage-2 pool runs dry: the annotations survive.
            m.hyp.host_stage2_unmap_mmio();
            m.check_invariants().unwrap();
        }
        assert!(m.plat.device_writes.lock().unwrap().is_empty());
    });
}

/// Escape 3 (high), the LPI tables: a redistributor reads and writes its LPI tables behind
/// stage-2 once `GICR_CTLR.EnableLPIs` is set. EL2 traps the `RD_base` frame: LPI support is
/// hidden, `EnableLPIs` never reaches the device, and a table base outside the host's RAM is
/// refused (the device register keeps its value).
#[test]
fn escape3_lpis_stay_off_and_lpi_tables_stay_in_host_ram() {
    use pkvm_abi::Stat;
    use pkvm_hyp::devices::{MmioAccess, gicr};
    use pkvm_hyp::host_fault::HostFault;
    use pkvm_sim::machine::VIRT_GICR_RD;
    with_machine(&SimConfig::small(), |m| {
        let rd = VIRT_GICR_RD.0;
        // What QEMU's redistributor reports: LPIs and DirectLPI supported, last frame.
        m.plat.device_regs.lock().unwrap().insert(
            rd + gicr::TYPER,
            (1 << 32) | (1 << 4) | gicr::TYPER_PLPIS | gicr::TYPER_DIRECT_LPI,
        );
        let access = |off: u64, write: bool, size: u8, value: u64| {
            assert_eq!(
                m.hyp.handle_host_mem_abort(
                    Ipa(rd + off),
                    pkvm_hyp::host_fault::FaultClass::Translation
                ),
                HostFault::Emulate
            );
            m.hyp
                .host_mmio_access(Ipa(rd + off), MmioAccess { write, size, value })
                .unwrap()
        };
        let typer = access(gicr::TYPER, false, 8, 0);
        assert_eq!(
            typer,
            (1 << 32) | (1 << 4),
            "LPI support hidden, the rest kept"
        );
        access(gicr::CTLR, true, 4, gicr::CTLR_ENABLE_LPIS);
        assert_eq!(
            m.plat.mmio_read(rd + gicr::CTLR, 4),
            0,
            "EnableLPIs held at 0"
        );

        let carveout_table = m.carveout.1 - 0x1_0000;
        let host_table = (r0(m) + 0x200) << PAGE_SHIFT;
        let refused0 = m.hyp.stat(Stat::RefusedDeviceWrites);
        for bad in [
            carveout_table,
            m.hyp.hyp_pgd(),
            0x0900_0000,                                        // MMIO
            m.config().ram[0].0 + m.config().ram[0].1 - 0x4000, // runs into the carve-out
        ] {
            access(gicr::PROPBASER, true, 8, bad | 15);
            access(gicr::PENDBASER, true, 8, bad & !0xffff);
        }
        assert!(
            m.plat
                .device_writes
                .lock()
                .unwrap()
                .iter()
                .all(|&(pa, _, _)| { pa != rd + gicr::PROPBASER && pa != rd + gicr::PENDBASER })
        );
        assert_eq!(m.hyp.stat(Stat::RefusedDeviceWrites), refused0 + 8);
        // More LPI ID bits than a 64 KiB pending table covers: refused, even in host RAM.
        access(gicr::PROPBASER, true, 8, host_table | 31);
        assert_eq!(m.hyp.stat(Stat::RefusedDeviceWrites), refused0 + 9);
        // Tables in the host's own RAM are accepted (LPIs stay off regardless).
        access(gicr::PROPBASER, true, 8, host_table | 15);
        access(gicr::PENDBASER, true, 8, host_table + 0x1_0000);
        assert_eq!(m.plat.mmio_read(rd + gicr::PROPBASER, 8), host_table | 15);
        assert_eq!(access(gicr::PENDBASER, false, 8, 0), host_table + 0x1_0000);
        // A page the host gave away is no longer its RAM.
        m.call(HostHcall::HostDonateHyp, &[r0(m) + 0x300, 1])
            .unwrap();
        access(
            gicr::PROPBASER,
            true,
            8,
            ((r0(m) + 0x300) << PAGE_SHIFT) | 13,
        );
        assert_eq!(m.plat.mmio_read(rd + gicr::PROPBASER, 8), host_table | 15);
        // The pages right after it are the host's: a table starting there (IDbits 14: six
        // pages) is accepted — only the table's own pages are checked.
        let after = (r0(m) + 0x301) << PAGE_SHIFT;
        access(gicr::PROPBASER, true, 8, after | 14);
        assert_eq!(m.plat.mmio_read(rd + gicr::PROPBASER, 8), after | 14);
        m.check_invariants().unwrap();
    });
}

/// Found by the second review: an instruction fetch from MMIO (which the host stage-2 maps
/// execute-never) is a stage-2 *permission* fault on a valid entry; the fault path used to
/// treat every valid entry as "another CPU mapped it first" and let the host retry — forever.
/// A permission fault is now answered with an abort.
#[test]
fn permission_fault_on_a_mapped_page_is_an_abort_not_a_retry() {
    use pkvm_abi::Stat;
    use pkvm_hyp::host_fault::{FaultClass, HostFault};
    with_machine(&SimConfig::small(), |m| {
        let mmio = 0x0903_0000;
        assert_eq!(m.host_access(mmio, false), Outcome::Access, "mapped now");
        let aborts = m.hyp.stat(Stat::InjectedAborts);
        assert_eq!(
            m.hyp
                .handle_host_mem_abort(Ipa(mmio), FaultClass::Permission),
            HostFault::InjectAbort
        );
        assert_eq!(m.hyp.stat(Stat::InjectedAborts), aborts + 1);
        // A translation fault on a mapped page is still the benign race.
        assert_eq!(
            m.hyp
                .handle_host_mem_abort(Ipa(mmio), FaultClass::Translation),
            HostFault::Mapped
        );
        m.check_invariants().unwrap();
    });
}

/// The L3 descriptor address of `ipa` in the host stage-2 (read with the simulator's own view
/// of memory, not through the hypervisor's walker).
fn host_l3_ptep(m: &Machine<'_>, ipa: u64) -> u64 {
    let mut table = m.hyp.host_pgd();
    let mut level = m.hyp.host_s2_config().start_level();
    loop {
        let ptep = table + ((ipa >> (12 + 9 * (3 - u32::from(level)))) & 511) * 8;
        if level == 3 {
            return ptep;
        }
        let pte = m.plat.read_u64(ptep);
        assert_eq!(pte & 3, 3, "no table at level {level}");
        table = pte & 0x0000_ffff_ffff_f000;
        level += 1;
    }
}

/// The host fault path fails closed: a non-zero invalid host stage-2 entry that is not an
/// annotation EL2 writes (here: a hidden device's annotation that lost its owner bits) is
/// refused, never mapped over. (Found by review of the `Leaf` lookup: it once decoded such an
/// entry as empty.)
#[test]
fn an_unknown_invalid_entry_is_refused_not_mapped_over() {
    use pkvm_hyp::host_fault::{FaultClass, HostFault};
    with_machine(&SimConfig::small(), |m| {
        let its = pkvm_sim::machine::VIRT_ITS.0;
        assert_eq!(
            m.hyp
                .handle_host_mem_abort(Ipa(its), FaultClass::Translation),
            HostFault::InjectAbort,
            "the ITS is hidden"
        );
        let ptep = host_l3_ptep(m, its);
        assert_ne!(m.plat.read_u64(ptep), 0, "annotated");
        for stray in [0x2, 0x400, 1 << 55] {
            m.plat.write_u64(ptep, stray);
            assert_eq!(
                m.hyp
                    .handle_host_mem_abort(Ipa(its), FaultClass::Translation),
                HostFault::InjectAbort,
                "{stray:#x} over the ITS was mapped for the host"
            );
            assert_eq!(m.plat.read_u64(ptep), stray, "nothing written");
        }
    });
}

/// The host's MMIO mappings: a fault maps the largest block that stays inside its gap between
/// memory regions and below the top of the address space, and dropping the MMIO mappings (what
/// EL2 does when the host stage-2 pool runs dry) removes every one of them — below memory,
/// between regions and above the last — while memory stays mapped.
#[test]
fn host_mmio_mappings_are_blocks_and_all_go_when_dropped() {
    with_machine(&SimConfig::small(), |m| {
        let mut c = Checker::new(m.spec_machine());
        let top = 1u64 << m.config().pa_bits;
        // Some memory, mapped on first touch.
        let ram = m.config().ram[0].0 + 0x10_0000;
        assert_eq!(
            checked(
                m,
                &mut c,
                Call::HostAccess {
                    pa: ram,
                    write: true
                }
            )
            .unwrap(),
            Outcome::Access
        );
        let memory_only = m.hyp.host_leaves();
        // Far from everything, above the last region: a whole 1 GiB block; the last GiB
        // below the top of the address space too.
        for (pa, level) in [(0x80_0000_0000, 1), (top - 8, 1), (0x2_0000_0000 + 8, 1)] {
            let before = m.hyp.host_leaves();
            let got = checked(m, &mut c, Call::HostAccess { pa, write: false }).unwrap();
            assert_eq!(got, Outcome::Access, "{pa:#x}");
            let after = m.hyp.host_leaves();
            let mut want = before;
            want[level] += 1;
            assert_eq!(after, want, "{pa:#x}: one level-{level} block");
        }
        // Below memory, next to the hidden devices: smaller blocks or pages.
        for pa in [0x0900_0000, VIRT_ITS_BELOW] {
            let got = checked(m, &mut c, Call::HostAccess { pa, write: true }).unwrap();
            assert_eq!(got, Outcome::Access, "{pa:#x}");
        }
        assert_ne!(m.hyp.host_leaves(), memory_only);
        m.hyp.host_stage2_unmap_mmio();
        m.check_invariants().unwrap();
        assert_eq!(
            m.hyp.host_leaves(),
            memory_only,
            "every MMIO mapping dropped"
        );
        // And they come back on the next touch.
        let got = checked(
            m,
            &mut c,
            Call::HostAccess {
                pa: top - 8,
                write: false,
            },
        )
        .unwrap();
        assert_eq!(got, Outcome::Access);
    });
}

/// Just below the ITS frames EL2 hides: MMIO the host may use.
const VIRT_ITS_BELOW: u64 = pkvm_sim::machine::VIRT_ITS.0 - 8;

/// Dropping the host's MMIO mappings with as many memory regions and device ranges as EL2
/// accepts: the ranges to keep are gathered in a fixed-size array, which must hold them all.
#[test]
fn host_mmio_mappings_drop_with_the_most_regions_and_devices() {
    use pkvm_hyp::devices::{DeviceKind, DeviceRange, MAX_DEVICE_RANGES};
    use pkvm_hyp::memory::MAX_MEM_REGIONS;
    // The first region holds EL2's carve-out; the others are 64 KiB each, 1 MiB apart.
    let mut ram = vec![(0x4000_0000, 16 << 20)];
    ram.extend((1..MAX_MEM_REGIONS as u64).map(|i| (0x1_0000_0000 + (i << 20), 0x1_0000)));
    // Device ranges 64 KiB each, 1 MiB apart, below memory.
    let devices = (0..MAX_DEVICE_RANGES as u64)
        .map(|i| DeviceRange {
            start: 0x1000_0000 + (i << 20),
            end: 0x1000_0000 + (i << 20) + 0x1_0000,
            kind: DeviceKind::Hidden,
        })
        .collect();
    let cfg = SimConfig {
        ram,
        devices,
        hyp_pool_pages: 512,
        host_pool_pages: 512,
        ..SimConfig::small()
    };
    with_machine(&cfg, |m| {
        let last = m.config().ram.last().unwrap().0 + 0x1_0000;
        let before = m.hyp.host_leaves();
        assert_eq!(m.host_access(last + 8, false), Outcome::Access);
        assert_ne!(m.hyp.host_leaves(), before);
        m.hyp.host_stage2_unmap_mmio();
        m.check_invariants().unwrap();
        assert_eq!(m.hyp.host_leaves(), before);
    });
}
