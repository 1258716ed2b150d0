//! Fuzzes raw hypercall sequences against the simulated hypervisor, with the executable spec
//! and the structural invariants as the oracle after every call.
//!
//! Each 3-byte record is one call: `[kind, page selector, length selector]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pkvm_abi::PAGE_SHIFT;
use pkvm_sim::scenarios::checked;
use pkvm_sim::{SimConfig, with_machine};
use pkvm_spec::{Call, Checker};

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
                0 => Call::ShareHyp { pfn, nr },
                1 => Call::UnshareHyp { pfn, nr },
                2 => Call::DonateHyp { pfn, nr },
                3 => Call::HypDonateHost { pfn, nr },
                4 => Call::Pin { pfn, nr },
                5 => Call::Unpin { pfn, nr },
                6 => Call::HostAccess { pa: pfn.wrapping_shl(PAGE_SHIFT), write: rec[2] & 1 != 0 },
                7 => Call::DebugRead { pa: pfn.wrapping_shl(PAGE_SHIFT) | u64::from(rec[2] & 0xf) },
                _ => Call::HypRead { pa: pfn.wrapping_shl(PAGE_SHIFT) },
            };
            if let Err(e) = checked(m, &mut c, call) {
                panic!("{e}");
            }
        }
    });
});
