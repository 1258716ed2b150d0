//! The catalogue of named negative cases (the table in `pkvm_client::catalogue`): each asserts
//! the exact error and that nothing changed (the spec checker and the structural invariants
//! run after every call), plus the positive properties of the ownership core (transition
//! script, share-count saturation, clean teardown, no splits).

use pkvm_abi::{Error, HostHcall, PAGE_SHIFT, PAGE_SIZE, SMCCC_NOT_SUPPORTED, Stat};
use pkvm_client::catalogue::CATALOGUE;
use pkvm_sim::scenarios::{self, checked};
use pkvm_sim::{Machine, SimConfig, with_machine};
use pkvm_spec::{Call, Checker, Outcome};

fn small<R>(f: impl FnOnce(&Machine<'_>, &mut Checker) -> R) -> R {
    with_machine(&SimConfig::small(), |m| {
        let mut c = Checker::new(m.spec_machine());
        f(m, &mut c)
    })
}

fn base(m: &Machine<'_>) -> u64 {
    (m.config().ram[0].0 >> PAGE_SHIFT) + 0x100
}

use pkvm_sim::scenarios::{expect_ok as ok, expect_refused as refused};

/// The negative catalogue (`pkvm_client::catalogue`, which the QEMU host's `selftest` runs
/// too): every case on fresh pages of one machine, the spec checker and the structural
/// invariants after every call, the state unchanged by every refused call; at the end the
/// machine is back in its boot state.
#[test]
fn negative_catalogue() {
    small(|m, c| {
        let places = scenarios::places(m);
        let boot = m.abstract_state().unwrap();
        let mut own = base(m);
        let (mut ran, mut refusals, mut skipped) = (0, 0, Vec::new());
        for case in CATALOGUE {
            let Some(steps) = case.steps(&places, own) else {
                skipped.push(case.name);
                continue;
            };
            println!("case: {}", case.name);
            for (call, want) in steps {
                match want {
                    Ok(()) => ok(m, c, scenarios::spec_call(&call)),
                    Err(e) => {
                        refused(m, c, scenarios::spec_call(&call), e);
                        refusals += 1;
                    }
                }
            }
            assert_eq!(
                m.abstract_state().unwrap(),
                boot,
                "{}: its cleanup left the pages changed",
                case.name
            );
            own += case.pages;
            ran += 1;
        }
        // Only the cases aimed at EL2's image region, which the simulated machine lacks.
        assert_eq!(
            skipped,
            [
                "share EL2's image region -> EPERM",
                "hyp_donate_host EL2's image region -> EPERM"
            ]
        );
        assert_eq!((ran, refusals), (CATALOGUE.len() - 2, CATALOGUE.len() - 2));
        m.check_invariants().unwrap();
    });
}

/// The share count saturates at the machine's limit (small in the simulator, 65,535 at EL2,
/// where the QEMU selftest checks it) and unwinds all the way down; host pins likewise.
#[test]
fn share_count_and_host_pin_saturation() {
    use pkvm_hyp::mem_protect::{MAX_COUNT, MAX_HOST_PINS};
    small(|m, c| {
        let pfn = base(m);
        for _ in 0..MAX_COUNT {
            ok(m, c, Call::ShareHyp { pfn, nr: 1 });
        }
        refused(m, c, Call::ShareHyp { pfn, nr: 1 }, Error::Busy);
        assert_eq!(m.hyp.vmemmap().get(pfn).unwrap().share_count(), MAX_COUNT);
        for _ in 0..MAX_HOST_PINS {
            ok(m, c, Call::Pin { pfn, nr: 1 });
        }
        refused(m, c, Call::Pin { pfn, nr: 1 }, Error::Busy);
        for _ in 0..MAX_HOST_PINS {
            ok(m, c, Call::Unpin { pfn, nr: 1 });
        }
        for _ in 0..MAX_COUNT {
            ok(m, c, Call::UnshareHyp { pfn, nr: 1 });
        }
        refused(m, c, Call::UnshareHyp { pfn, nr: 1 }, Error::Perm);
        m.check_invariants().unwrap();
    });
}

#[test]
fn host_access_to_donated_page_aborts() {
    small(|m, c| {
        let pfn = base(m);
        let pa = pfn << PAGE_SHIFT;
        // First touch maps a block around it.
        assert_eq!(
            checked(m, c, Call::HostAccess { pa, write: true }).unwrap(),
            Outcome::Access
        );
        ok(m, c, Call::DonateHyp { pfn, nr: 1 });
        // The TLB entry from the first touch must have been invalidated.
        assert_eq!(
            checked(m, c, Call::HostAccess { pa, write: false }).unwrap(),
            Outcome::Abort
        );
        // Neighbours in the old block are still the host's.
        assert_eq!(
            checked(
                m,
                c,
                Call::HostAccess {
                    pa: pa + PAGE_SIZE,
                    write: true
                }
            )
            .unwrap(),
            Outcome::Access
        );
        assert!(m.hyp.stat(Stat::InjectedAborts) >= 1);
        // The hypervisor's own memory is out of reach too.
        assert_eq!(
            checked(
                m,
                c,
                Call::HostAccess {
                    pa: m.carveout.0,
                    write: true
                }
            )
            .unwrap(),
            Outcome::Abort
        );
    });
}

#[test]
fn transition_script() {
    with_machine(&SimConfig::small(), |m| {
        let mut out = String::new();
        scenarios::transition_script(m, &mut out).unwrap_or_else(|e| panic!("{out}\n{e}"));
    });
}

#[test]
fn share_twice_keeps_mapping_until_last_unshare() {
    with_machine(&SimConfig::small(), |m| {
        let mut out = String::new();
        scenarios::share_twice(m, &mut out).unwrap_or_else(|e| panic!("{out}\n{e}"));
    });
}

#[test]
fn boot_only_calls_refused_after_finalise() {
    small(|m, _| {
        assert_eq!(m.hvc(HostHcall::Finalize, &[])[0], SMCCC_NOT_SUPPORTED);
        assert_eq!(m.hvc(HostHcall::Version, &[])[0], 0);
        let mut x = [0xC600_7FFFu64, 0, 0, 0, 0, 0, 0, 0];
        m.hyp.handle_host_hcall(&mut x);
        assert_eq!(x[0], SMCCC_NOT_SUPPORTED);
    });
}

/// Before finalise the boot-only call is open: the host's `Finalize` finalises, once.
#[test]
fn finalize_is_taken_once_before_finalise() {
    pkvm_sim::with_unfinalised_machine(&SimConfig::small(), |m| {
        assert!(!m.hyp.is_finalised());
        assert_eq!(m.hvc(HostHcall::Finalize, &[])[0], 0);
        assert!(m.hyp.is_finalised());
        assert_eq!(m.hvc(HostHcall::Finalize, &[])[0], SMCCC_NOT_SUPPORTED);
    });
}

/// After a sequence that ends with everything unshared: no EL2 mapping of host memory, no
/// table page left behind, the pool back where it started.
#[test]
fn everything_unshared_leaves_nothing_behind() {
    small(|m, c| {
        let free0 = m.hyp.stat(Stat::PoolFreePages);
        let tables0 = m.hyp.stat(Stat::TablePages);
        let pfn = base(m);
        for (p, n) in [(pfn, 3), (pfn + 1, 1), (pfn + 600, 512), (pfn + 1, 700)] {
            ok(m, c, Call::ShareHyp { pfn: p, nr: n });
        }
        ok(
            m,
            c,
            Call::DonateHyp {
                pfn: pfn + 1500,
                nr: 5,
            },
        );
        assert!(m.hyp.stat(Stat::HypMappedHostPages) > 0);
        for (p, n) in [(pfn + 1, 700), (pfn + 600, 512), (pfn + 1, 1), (pfn, 3)] {
            ok(m, c, Call::UnshareHyp { pfn: p, nr: n });
        }
        ok(
            m,
            c,
            Call::HypDonateHost {
                pfn: pfn + 1500,
                nr: 5,
            },
        );
        assert_eq!(m.hyp.stat(Stat::HypMappedHostPages), 0);
        assert_eq!(m.hyp.stat(Stat::SharedPages), 0);
        assert_eq!(m.hyp.stat(Stat::PoolFreePages), free0);
        assert_eq!(m.hyp.stat(Stat::TablePages), tables0);
        // Freed table pages went back zeroed (empty tables skip the zeroing: they are zero).
        assert!(m.hyp.pools_free_memory_is_zero());
        assert_eq!(m.hyp.mmops_errors(), 0);
    });
}

/// Sharing 1,000 scattered pages must not split a single host block.
#[test]
fn sharing_does_not_split_host_blocks() {
    with_machine(&SimConfig::sized(64), |m| {
        let ram = m.config().ram[0].0;
        // Touch the first 32 MiB so that the host maps it with 2 MiB blocks.
        for off in (0..32u64 << 20).step_by(2 << 20) {
            assert_eq!(m.host_access(ram + off, true), Outcome::Access);
        }
        let leaves = |m: &Machine<'_>| {
            [Stat::HostLeavesL1, Stat::HostLeavesL2, Stat::HostLeavesL3].map(|s| m.hyp.stat(s))
        };
        let before = leaves(m);
        assert!(before[1] >= 16, "expected 2 MiB blocks, got {before:?}");
        for i in 0..1000u64 {
            let pfn = (ram >> PAGE_SHIFT) + (i * 7919) % 8192;
            let _ = m.call(HostHcall::HostShareHyp, &[pfn, 1]);
        }
        assert_eq!(leaves(m), before, "sharing changed the host stage-2");
        m.check_invariants().unwrap();
    });
}

/// `Version` reports ABI 1.0 and exactly the features of the simulator's build (ranges, EL2
/// refcounts, debug hypercalls, guests, protected VMs: the ABI's bits 0-4), nothing more.
#[test]
fn version_reports_the_abi_and_exactly_the_built_features() {
    small(|m, _| {
        let v = m.client().version().expect("Version");
        assert_eq!((v.abi, v.features), (0x1_0000, 0b1_1111));
    });
}

/// The page statistics count what they name: donating, sharing and pinning move exactly
/// their own counters by the number of pages, and undoing them moves them back.
#[test]
fn page_statistics_count_what_they_name() {
    small(|m, _| {
        let c = m.client();
        let stats = |names: &[Stat]| -> Vec<u64> {
            names.iter().map(|&s| c.stat(s).expect("Stat")).collect()
        };
        let names = [
            Stat::DonatedPages,
            Stat::SharedPages,
            Stat::HypMappedHostPages,
            Stat::PinnedPages,
            Stat::GuestSharedPages,
            Stat::LiveVms,
        ];
        let b = base(m);
        let before = stats(&names);
        // A fresh machine: nothing donated, shared, pinned or in a guest (EL2's own memory is
        // not "donated").
        assert_eq!(before, [0, 0, 0, 0, 0, 0], "{names:?}");
        c.donate_hyp(b, 3).expect("donate");
        c.share_hyp(b + 3, 2).expect("share");
        c.share_hyp(b + 3, 1).expect("share again: the same pages");
        c.pin(b + 4, 1).expect("pin");
        let after = stats(&names);
        let moved: Vec<i64> = after
            .iter()
            .zip(&before)
            .map(|(a, b)| *a as i64 - *b as i64)
            .collect();
        assert_eq!(moved, [3, 2, 5, 1, 0, 0], "{names:?}");
        c.unpin(b + 4, 1).expect("unpin");
        c.unshare_hyp(b + 3, 1).expect("unshare");
        c.unshare_hyp(b + 3, 2).expect("unshare");
        c.hyp_donate_host(b, 3).expect("give back");
        assert_eq!(stats(&names), before);
    });
}

/// `TablePages` moves with the tables EL2 allocates: sharing a page in a 2 MiB window EL2 maps
/// nothing of takes new stage-1 tables from EL2's pool, and the statistic grows by exactly the
/// pages the pool lost; unsharing gives them back.
#[test]
fn table_pages_follow_the_pool() {
    small(|m, _| {
        let c = m.client();
        let stat = |s| c.stat(s).expect("Stat");
        let pfn = (m.config().ram[0].0 >> PAGE_SHIFT) + 0x500;
        let (tables, free) = (stat(Stat::TablePages), stat(Stat::PoolFreePages));
        c.share_hyp(pfn, 1).expect("share");
        let grew = stat(Stat::TablePages) - tables;
        assert!(grew >= 1, "no new table for a page in an unmapped window");
        assert_eq!(free - stat(Stat::PoolFreePages), grew);
        c.unshare_hyp(pfn, 1).expect("unshare");
        assert_eq!(
            (stat(Stat::TablePages), stat(Stat::PoolFreePages)),
            (tables, free)
        );
        // The host's first touch of its second RAM region (a 1 GiB window of its own) takes
        // host stage-2 tables from the host's pool: the statistic grows, EL2's pool does not move.
        assert_eq!(m.host_access(m.config().ram[1].0, false), Outcome::Access);
        assert!(
            stat(Stat::TablePages) > tables,
            "no host stage-2 table counted"
        );
        assert_eq!(stat(Stat::PoolFreePages), free);
    });
}

/// The free-memory oracle the tests above rely on (`pools_free_memory_is_zero`) sees a free
/// pool page that is not zero, in either pool: one non-zero word past the list node of every
/// page of one pool that has a zero there (so, among them, every free page of that pool)
/// makes it false, and taking the words back makes it true again.
#[test]
fn the_free_memory_oracle_sees_a_dirty_free_page() {
    use pkvm_hyp::platform::PhysMem;
    small(|m, _| {
        assert!(m.hyp.pools_free_memory_is_zero());
        // The carve-out is EL2's pool, then the host's (for its stage-2 tables).
        let (start, end) = m.carveout;
        let split = start + m.config().hyp_pool_pages * PAGE_SIZE;
        for (what, lo, hi) in [
            ("EL2's pool", start, split),
            ("the host's pool", split, end),
        ] {
            // An even value: were the word in a table, an invalid descriptor.
            let dirty: Vec<u64> = (lo..hi)
                .step_by(PAGE_SIZE as usize)
                .map(|pa| pa + 0xff0)
                .filter(|&w| m.plat.read_u64(w) == 0)
                .collect();
            assert!(!dirty.is_empty(), "{what}");
            for &w in &dirty {
                m.plat.mem.write_u64(w, 2);
            }
            assert!(!m.hyp.pools_free_memory_is_zero(), "{what}");
            for &w in &dirty {
                m.plat.mem.write_u64(w, 0);
            }
            assert!(m.hyp.pools_free_memory_is_zero(), "{what}");
        }
    });
}

/// Ranges at the top of the host's address space: one that ends exactly there is inside it
/// (not memory: `EINVAL`); one page further is outside (`ERANGE`).
#[test]
fn ranges_at_the_top_of_the_address_space() {
    small(|m, c| {
        let top = 1u64 << (m.config().pa_bits - PAGE_SHIFT);
        refused(
            m,
            c,
            Call::ShareHyp {
                pfn: top - 1,
                nr: 1,
            },
            Error::Inval,
        );
        refused(
            m,
            c,
            Call::ShareHyp {
                pfn: top - 2,
                nr: 2,
            },
            Error::Inval,
        );
        refused(
            m,
            c,
            Call::ShareHyp {
                pfn: top - 1,
                nr: 2,
            },
            Error::Range,
        );
        refused(m, c, Call::ShareHyp { pfn: top, nr: 1 }, Error::Range);
    });
}

/// `hyp_donate_host` refuses pages inside EL2's own memory, not the pages next to it: with
/// RAM right after the carve-out, pages the host donated there (donated pages, outside EL2's
/// memory) come back, as does the page right before the carve-out; the carve-out's own first
/// and last pages do not.
#[test]
fn hyp_donate_host_takes_the_pages_right_around_el2s_memory() {
    let small = SimConfig::small();
    let (b, s) = small.ram[0];
    let cfg = SimConfig {
        ram: vec![(b, s), (b + s, 2 << 20)],
        ..small
    };
    with_machine(&cfg, |m| {
        let mut c = Checker::new(m.spec_machine());
        let donated = || m.client().stat(Stat::DonatedPages).unwrap();
        let before = m.carveout.0 >> PAGE_SHIFT;
        ok(
            m,
            &mut c,
            Call::DonateHyp {
                pfn: before - 1,
                nr: 1,
            },
        );
        assert_eq!(donated(), 1);
        ok(
            m,
            &mut c,
            Call::HypDonateHost {
                pfn: before - 1,
                nr: 1,
            },
        );
        refused(
            m,
            &mut c,
            Call::HypDonateHost { pfn: before, nr: 1 },
            Error::Perm,
        );
        let pfn = m.carveout.1 >> PAGE_SHIFT;
        ok(m, &mut c, Call::DonateHyp { pfn, nr: 2 });
        assert_eq!(donated(), 2);
        ok(
            m,
            &mut c,
            Call::HypDonateHost {
                pfn: pfn + 1,
                nr: 1,
            },
        );
        ok(m, &mut c, Call::HypDonateHost { pfn, nr: 1 });
        assert_eq!(donated(), 0);
        refused(
            m,
            &mut c,
            Call::HypDonateHost {
                pfn: pfn - 1,
                nr: 1,
            },
            Error::Perm,
        );
    });
}
