//! Exhaustive small worlds: every sequence of up to `k` calls from a small vocabulary — the
//! ownership calls on three pages (one and two at a time), host accesses, two VMs' lifecycles
//! and guest sharing at two guest frames — run on the real hypervisor in the simulator and
//! checked against the spec after every call. Sequences that reach an abstract state already
//! seen are not extended (breadth first, so each state is reached by a shortest sequence).
//!
//! CI runs depth 5 (`PKVM_EXHAUSTIVE_DEPTH`, a few seconds); the long run is
//! `PKVM_EXHAUSTIVE_DEPTH=7 cargo test -p pkvm-sim --test exhaustive -- --nocapture`, which
//! prints the states and sequences explored per depth.

use std::collections::HashSet;
use std::sync::Mutex;

use pkvm_abi::PAGE_SHIFT;
use pkvm_sim::scenarios::checked;
use pkvm_sim::{Machine, SimConfig, with_machine};
use pkvm_spec::{AbsState, Call, Checker};

/// A tight machine: one 4 MiB region, small table pools (`ENOMEM` is reachable).
fn config() -> SimConfig {
    SimConfig {
        ram: vec![(0x4000_0000, 4 << 20)],
        ..SimConfig::tight()
    }
}

/// One step of a sequence: one call, or a short fixed sequence (a VM's creation shares its
/// descriptor first).
type Step = Vec<Call>;

fn vocabulary() -> Vec<Step> {
    let base = config().ram[0].0 >> PAGE_SHIFT;
    // Three data pages in one 2 MiB window, and for each of two VMs a descriptor page, a
    // two-page memcache and a vCPU page elsewhere.
    let pages = [base + 0x10, base + 0x11, base + 0x12];
    let vm_pages = |vm: u64| {
        (
            base + 0x40 + 8 * vm,
            base + 0x42 + 8 * vm,
            base + 0x41 + 8 * vm,
        )
    };
    let mut v: Vec<Step> = Vec::new();
    for &pfn in &pages {
        for c in [
            Call::ShareHyp { pfn, nr: 1 },
            Call::UnshareHyp { pfn, nr: 1 },
            Call::DonateHyp { pfn, nr: 1 },
            Call::HypDonateHost { pfn, nr: 1 },
            Call::Pin { pfn, nr: 1 },
            Call::Unpin { pfn, nr: 1 },
            Call::HostAccess {
                pa: pfn << PAGE_SHIFT,
                write: true,
            },
        ] {
            v.push(vec![c]);
        }
    }
    let pfn = pages[0];
    for c in [
        Call::ShareHyp { pfn, nr: 2 },
        Call::UnshareHyp { pfn, nr: 2 },
        Call::DonateHyp { pfn, nr: 2 },
    ] {
        v.push(vec![c]);
    }
    for vm in 0..2usize {
        let (desc, mc, vcpu) = vm_pages(vm as u64);
        v.push(vec![
            Call::ShareHyp { pfn: desc, nr: 1 },
            Call::VmInit {
                desc_pa: desc << PAGE_SHIFT,
                mc_pfn: mc,
                mc_nr: 2,
                ipa_bits: 32,
                nr_vcpus: 1,
                flags: 0,
            },
        ]);
        v.push(vec![
            Call::ShareHyp { pfn: vcpu, nr: 1 },
            Call::VcpuInit {
                vm,
                state_pa: vcpu << PAGE_SHIFT,
                fp_pa: (vcpu << PAGE_SHIFT) + 0x800,
            },
        ]);
        v.push(vec![Call::VcpuRun { vm }]);
        v.push(vec![Call::VmTeardown { vm }]);
        // The host giving up the structures EL2 pins (refused while the VM lives).
        v.push(vec![Call::UnshareHyp { pfn: desc, nr: 1 }]);
        v.push(vec![Call::UnshareHyp { pfn: vcpu, nr: 1 }]);
        for gfn in [0x10, 0x20] {
            for &pfn in &pages[..2] {
                v.push(vec![Call::ShareGuest {
                    vm,
                    pfn,
                    gfn,
                    nr: 1,
                }]);
            }
            v.push(vec![Call::UnshareGuest { vm, gfn, nr: 1 }]);
        }
    }
    v
}

/// Boots a machine, replays `prefix` (already checked when it was found), then runs and checks
/// `step`. Returns the abstract state reached.
fn explore(vocab: &[Step], prefix: &[usize], step: usize) -> Result<AbsState, String> {
    with_machine(&config(), |m: &mut Machine<'_>| {
        for &i in prefix {
            for &c in &vocab[i] {
                m.apply(c);
            }
        }
        let mut checker = Checker::with_state(m.spec_machine(), m.abstract_state()?);
        for &c in &vocab[step] {
            checked(m, &mut checker, c).map_err(|e| {
                let names: Vec<_> = prefix.iter().chain([&step]).map(|&i| &vocab[i]).collect();
                format!("{e}\nsequence: {names:?}")
            })?;
        }
        m.abstract_state()
    })
}

fn depth() -> usize {
    std::env::var("PKVM_EXHAUSTIVE_DEPTH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

#[test]
fn every_short_sequence_follows_the_spec() {
    let vocab = vocabulary();
    let boot = with_machine(&config(), |m| m.abstract_state()).unwrap();
    let seen = Mutex::new(HashSet::from([boot]));
    let mut frontier: Vec<Vec<usize>> = vec![Vec::new()];
    let mut sequences = 0u64;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    for d in 1..=depth() {
        let next = Mutex::new(Vec::new());
        let work: Vec<(usize, usize)> = (0..frontier.len())
            .flat_map(|p| (0..vocab.len()).map(move |s| (p, s)))
            .collect();
        sequences += work.len() as u64;
        let chunk = work.len().div_ceil(workers).max(1);
        let failure = Mutex::new(None);
        std::thread::scope(|s| {
            let (vocab, frontier, seen, next, failure) =
                (&vocab, &frontier, &seen, &next, &failure);
            for part in work.chunks(chunk) {
                s.spawn(move || {
                    for &(p, step) in part {
                        match explore(vocab, &frontier[p], step) {
                            Ok(state) => {
                                if seen.lock().unwrap().insert(state) {
                                    let mut seq = frontier[p].clone();
                                    seq.push(step);
                                    next.lock().unwrap().push(seq);
                                }
                            }
                            Err(e) => {
                                failure.lock().unwrap().get_or_insert(e);
                                return;
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().unwrap() {
            panic!("depth {d}: {e}");
        }
        frontier = next.into_inner().unwrap();
        frontier.sort();
        eprintln!(
            "exhaustive: depth {d}: {} new states, {} states in all, {sequences} sequences run",
            frontier.len(),
            seen.lock().unwrap().len()
        );
        if frontier.is_empty() {
            break;
        }
    }
    // The vocabulary reaches more than a trivial world (a vacuous run would pass too).
    assert!(seen.into_inner().unwrap().len() > 100);
}
