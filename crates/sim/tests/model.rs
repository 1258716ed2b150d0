//! Model-based test: random sequences of hypercalls and accesses, legal and illegal, on the
//! real hypervisor in the simulator; after every step the concrete state must match the spec
//! and the structural invariants must hold.
//!
//! `PKVM_MODEL_CASES` sets the number of cases (default 10,000).

use pkvm_abi::PAGE_SHIFT;
use pkvm_sim::scenarios::checked;
use pkvm_sim::{SimConfig, with_machine};
use pkvm_spec::{Call, Checker};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
enum Op {
    Share(usize, u64),
    Unshare(usize, u64),
    Donate(usize, u64),
    Reclaim(usize, u64),
    Pin(usize, u64),
    Unpin(usize, u64),
    Access(usize, bool),
    HypRead(usize),
    DebugRead(usize, u64),
    ShareGuest(usize, u64),
    UnshareGuest(usize, u64),
}

/// Where the model VM's pages are, relative to the first RAM page: its 64-page memcache, its
/// descriptor page, and the page holding its vCPU state and FP structures.
const VM_MEMCACHE: u64 = 0x100;
const VM_DESC: u64 = 0x140;
const VM_VCPU: u64 = 0x141;

/// Interesting page frames: a cluster of ordinary pages, the model VM's pages (EL2-pinned
/// structures, its memcache: the host must not be able to unpin, reclaim or read them), the
/// last pages below the carve-out, the carve-out, the end of the first region, the second
/// region, MMIO, a hole, beyond the address space, and an overflowing pfn.
fn pfns(cfg: &SimConfig, carveout: u64) -> Vec<u64> {
    let r0 = cfg.ram[0].0 >> PAGE_SHIFT;
    let r0_end = (cfg.ram[0].0 + cfg.ram[0].1) >> PAGE_SHIFT;
    let r1 = cfg.ram[1].0 >> PAGE_SHIFT;
    let r1_end = (cfg.ram[1].0 + cfg.ram[1].1) >> PAGE_SHIFT;
    let co = carveout >> PAGE_SHIFT;
    vec![
        r0 + 0x200,
        r0 + 0x201,
        r0 + 0x202,
        r0 + 0x203,
        r0 + 0x3FF, // last page of a 2 MiB block
        r0 + 0x400, // first page of the next
        r0 + VM_DESC,
        r0 + VM_VCPU,
        r0 + VM_MEMCACHE,     // the VM's stage-2 root
        r0 + VM_MEMCACHE + 1, // a free memcache page
        r0 + VM_MEMCACHE + 63,
        co - 2,
        co,
        r0_end - 1,
        r1,
        r1_end - 1,
        0x0900_0000 >> PAGE_SHIFT,       // MMIO
        0x0808_0000 >> PAGE_SHIFT,       // the ITS (hidden from the host)
        0x080a_0000 >> PAGE_SHIFT,       // a redistributor's RD_base (emulated)
        0x8000_0000 >> PAGE_SHIFT,       // hole between regions
        1 << (cfg.pa_bits - PAGE_SHIFT), // beyond the address space
        u64::MAX - 1,                    // pfn + nr overflows
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let idx = 0usize..22;
    let nr = prop_oneof![8 => 1u64..4, 1 => Just(0u64), 1 => 512u64..514];
    prop_oneof![
        4 => (idx.clone(), nr.clone()).prop_map(|(i, n)| Op::Share(i, n)),
        4 => (idx.clone(), nr.clone()).prop_map(|(i, n)| Op::Unshare(i, n)),
        2 => (idx.clone(), nr.clone()).prop_map(|(i, n)| Op::Donate(i, n)),
        2 => (idx.clone(), nr.clone()).prop_map(|(i, n)| Op::Reclaim(i, n)),
        2 => (idx.clone(), nr.clone()).prop_map(|(i, n)| Op::Pin(i, n)),
        2 => (idx.clone(), nr.clone()).prop_map(|(i, n)| Op::Unpin(i, n)),
        3 => (idx.clone(), any::<bool>()).prop_map(|(i, w)| Op::Access(i, w)),
        1 => idx.clone().prop_map(Op::HypRead),
        2 => (idx.clone(), prop_oneof![Just(0u64), Just(8), Just(4), Just(0xff8)])
            .prop_map(|(i, o)| Op::DebugRead(i, o)),
        3 => (idx.clone(), nr.clone()).prop_map(|(i, n)| Op::ShareGuest(i, n)),
        3 => (idx, nr).prop_map(|(i, n)| Op::UnshareGuest(i, n)),
    ]
}

fn run(ops: &[Op]) -> Result<(), String> {
    let cfg = SimConfig::small();
    with_machine(&cfg, |m| {
        let p = pfns(&cfg, m.carveout.0);
        // A guest for the guest calls: its descriptor and memcache live below the pages the
        // ops use; the checker starts from the state the VM creation left.
        let r0 = cfg.ram[0].0 >> PAGE_SHIFT;
        m.create_model_vm(r0 + VM_DESC, r0 + VM_MEMCACHE, Some(r0 + VM_VCPU));
        let start = m.abstract_state()?;
        let mut c = Checker::with_state(m.spec_machine(), start);
        for &o in ops {
            let call = match o {
                Op::Share(i, nr) => Call::ShareHyp { pfn: p[i], nr },
                Op::Unshare(i, nr) => Call::UnshareHyp { pfn: p[i], nr },
                Op::Donate(i, nr) => Call::DonateHyp { pfn: p[i], nr },
                Op::Reclaim(i, nr) => Call::HypDonateHost { pfn: p[i], nr },
                Op::Pin(i, nr) => Call::Pin { pfn: p[i], nr },
                Op::Unpin(i, nr) => Call::Unpin { pfn: p[i], nr },
                Op::Access(i, write) => Call::HostAccess {
                    pa: p[i].wrapping_shl(PAGE_SHIFT) + 8,
                    write,
                },
                Op::HypRead(i) => Call::HypRead {
                    pa: p[i].wrapping_shl(PAGE_SHIFT),
                },
                Op::DebugRead(i, off) => Call::DebugRead {
                    pa: p[i].wrapping_shl(PAGE_SHIFT).wrapping_add(off),
                },
                Op::ShareGuest(i, nr) => Call::ShareGuest { pfn: p[i], nr },
                Op::UnshareGuest(i, nr) => Call::UnshareGuest { pfn: p[i], nr },
            };
            checked(m, &mut c, call)?;
        }
        Ok(())
    })
}

fn cases() -> u32 {
    std::env::var("PKVM_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hypercalls_follow_the_spec(ops in proptest::collection::vec(op(), 1..24)) {
        if let Err(e) = run(&ops) {
            prop_assert!(false, "{}", e);
        }
    }
}
