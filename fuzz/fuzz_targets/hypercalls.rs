//! Fuzzes raw hypercall sequences against the simulated hypervisor, with the executable spec
//! and the structural invariants as the oracle after every call. The calls are issued through
//! the typed client (`pkvm_client`, the host's own) over the simulator's register transport.
//!
//! Each 3-byte record is one call: `[kind, page selector, length selector]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pkvm_abi::{PAGE_SHIFT, features};
use pkvm_client::catalogue::{Op, Resolved};
use pkvm_sim::scenarios::{checked, spec_call};
use pkvm_sim::{SimConfig, with_machine};
use pkvm_spec::{Call, Checker};

/// Record kinds 0..=5: the page-range operations, in this order.
const RANGE_OPS: [Op; 6] = [
    Op::ShareHyp,
    Op::UnshareHyp,
    Op::DonateHyp,
    Op::HypDonateHost,
    Op::Pin,
    Op::Unpin,
];

fuzz_target!(|data: &[u8]| {
    let cfg = SimConfig::small();
    with_machine(&cfg, |m| {
        let r0 = cfg.ram[0].0 >> PAGE_SHIFT;
        let r1 = cfg.ram[1].0 >> PAGE_SHIFT;
        let co = m.carveout.0 >> PAGE_SHIFT;
        let pfn_of = |sel: u8| -> u64 {
            match sel % 16 {
                0..=7 => r0 + 0x200 + u64::from(sel % 8) * 0x101,
                8 => co - 1,
                9 => co,
                10 => r1 + u64::from(sel >> 4),
                11 => (cfg.ram[1].0 + cfg.ram[1].1) >> PAGE_SHIFT,
                12 => 0x0900_0000 >> PAGE_SHIFT,
                13 => 1 << (cfg.pa_bits - PAGE_SHIFT),
                14 => u64::MAX - u64::from(sel >> 4),
                _ => r0 + u64::from(sel) * 3,
            }
        };
        let nr_of = |sel: u8| -> u64 {
            match sel % 8 {
                0 => 0,
                6 => 512 + u64::from(sel >> 3),
                7 => u64::MAX - u64::from(sel >> 3),
                n => u64::from(n),
            }
        };
        let mut c = Checker::new(m.spec_machine());
        for rec in data.chunks_exact(3).take(64) {
            let (pfn, nr) = (pfn_of(rec[1]), nr_of(rec[2]));
            let call = match rec[0] % 9 {
                k @ 0..=5 => spec_call(&Resolved {
                    op: RANGE_OPS[usize::from(k)],
                    addr: pfn,
                    arg: nr,
                }),
                6 => Call::HostAccess {
                    pa: pfn.wrapping_shl(PAGE_SHIFT),
                    write: rec[2] & 1 != 0,
                },
                7 => spec_call(&Resolved {
                    op: Op::DebugRead,
                    addr: pfn.wrapping_shl(PAGE_SHIFT) | u64::from(rec[2] & 0xf),
                    arg: 0,
                }),
                _ => Call::HypRead {
                    pa: pfn.wrapping_shl(PAGE_SHIFT),
                },
            };
            if let Err(e) = checked(m, &mut c, call) {
                panic!("{e}");
            }
        }
        // Whatever happened, EL2 still answers, with the debug build's features.
        let v = m.client().version();
        assert!(
            v.is_ok_and(|v| v.has(features::DEBUG_HCALLS)),
            "Version after the run: {v:?}"
        );
    });
});
