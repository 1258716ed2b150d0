//! Model-based test: random sequences of hypercalls and accesses, legal and illegal, on the
//! real hypervisor in the simulator; after every step the concrete state must match the spec
//! and the structural invariants must hold.
//!
//! `PKVM_MODEL_CASES` sets the number of cases (default 10,000).

use pkvm_abi::PAGE_SHIFT;
use pkvm_abi::guest::vm_flags;
use pkvm_sim::scenarios::checked;
use pkvm_sim::{SimConfig, with_machine};
use pkvm_spec::{Call, Checker, GuestOp};
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
    VmInit {
        desc: usize,
        desc_off: u64,
        mc: usize,
        mc_nr: u64,
        ipa_bits: u64,
        nr_vcpus: u64,
        flags: u64,
    },
    VcpuInit {
        vm: usize,
        state: usize,
        state_off: u64,
        fp: usize,
        fp_off: u64,
    },
    VcpuRun(usize),
    VmTeardown(usize),
    VmReclaim(usize),
    /// Share a descriptor page with EL2, then create a VM on it with a well-formed
    /// descriptor (the memcache may still be refused).
    CreateVm {
        desc: usize,
        mc: usize,
        mc_nr: u64,
        protected: bool,
    },
    /// Share a page with EL2, then give the VM a vCPU with both structures in it.
    CreateVcpu {
        vm: usize,
        page: usize,
    },
    /// Unshare from its guest the last range a `ShareGuest` named (whatever came of it), or
    /// `nr` pages of it.
    UnshareLastGuest {
        nr: u64,
    },
    ShareGuest {
        vm: usize,
        page: usize,
        gfn: usize,
        nr: u64,
    },
    UnshareGuest {
        vm: usize,
        page: usize,
        gfn: usize,
        nr: u64,
    },
    DonateGuest {
        vm: usize,
        page: usize,
        gfn: usize,
        nr: u64,
    },
    /// A guest memory call at a guest frame of [`gfns`], plus `off` bytes.
    GuestMem {
        vm: usize,
        op: GuestOp,
        page: usize,
        gfn: usize,
        off: u64,
    },
    /// A guest memory call on the last frame a `DonateGuest` named (or the one after it).
    GuestMemLast {
        op: GuestOp,
        next: bool,
    },
}

/// VM slots the ops name: the model VMs' (0: non-protected, 1: protected), two more, and one
/// that stays free.
const SLOTS: usize = 5;

/// Guest frames the guest ops use, for page `i` of the page list: 0, a small one, the page's
/// own pfn (gfn = pfn), the last frame of a 32-bit IPA space, the first beyond it, one far beyond any
/// IPA space, and an overflowing one.
fn gfns(p: &[u64], i: usize) -> [u64; 7] {
    [
        0,
        0x10,
        p[i % p.len()],
        (1 << 20) - 1,
        1 << 20,
        1 << 40,
        u64::MAX - 1,
    ]
}

/// Where the model VM's pages are, relative to the first RAM page: its 64-page memcache, its
/// descriptor page, and the page holding its vCPU state and FP structures.
const VM_MEMCACHE: u64 = 0x100;
const VM_DESC: u64 = 0x140;
const VM_VCPU: u64 = 0x141;
/// The same for the protected model VM (a 16-page memcache).
const PVM_MEMCACHE: u64 = 0x180;
const PVM_DESC: u64 = 0x142;
const PVM_VCPU: u64 = 0x143;

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
    // Mostly the cluster of ordinary pages (where sequences build on each other), sometimes
    // any interesting frame.
    let idx = prop_oneof![3 => 0usize..4, 2 => 0usize..22];
    let nr = prop_oneof![8 => 1u64..4, 1 => Just(0u64), 1 => 512u64..514];
    let gfn = prop_oneof![4 => Just(2usize), 2 => Just(0), 2 => 0usize..7];
    // Mostly the protected model VM for donations and guest calls.
    let pvm = prop_oneof![3 => Just(1usize), 1 => 0..SLOTS];
    let guest_op = prop_oneof![
        Just(GuestOp::Share),
        Just(GuestOp::Unshare),
        Just(GuestOp::Relinquish)
    ];
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
        2 => (
            idx.clone(),
            prop_oneof![4 => Just(0u64), 1 => Just(8), 1 => Just(0xfe8), 1 => Just(4)],
            idx.clone(),
            prop_oneof![4 => Just(2u64), 2 => Just(4), 1 => Just(1), 1 => Just(65)],
            prop_oneof![4 => Just(32u64), 2 => Just(40), 1 => Just(31), 1 => Just(48)],
            prop_oneof![6 => Just(1u64), 1 => Just(0), 1 => Just(2)],
            prop_oneof![3 => Just(0u64), 2 => Just(vm_flags::PROTECTED), 1 => Just(2), 1 => Just(1 << 63)],
        )
            .prop_map(|(desc, desc_off, mc, mc_nr, ipa_bits, nr_vcpus, flags)| Op::VmInit {
                desc,
                desc_off,
                mc,
                mc_nr,
                ipa_bits,
                nr_vcpus,
                flags,
            }),
        2 => (
            0..SLOTS,
            idx.clone(),
            prop_oneof![3 => Just(0u64), 1 => Just(0x400), 1 => Just(0xf00), 1 => Just(4)],
            idx.clone(),
            prop_oneof![3 => Just(0x800u64), 1 => Just(0), 1 => Just(0xf00), 1 => Just(8)],
        )
            .prop_map(|(vm, state, state_off, fp, fp_off)| Op::VcpuInit {
                vm,
                state,
                state_off,
                fp,
                fp_off,
            }),
        3 => (idx.clone(), idx.clone(), prop_oneof![Just(2u64), Just(3), Just(8)], any::<bool>())
            .prop_map(|(desc, mc, mc_nr, protected)| Op::CreateVm { desc, mc, mc_nr, protected }),
        2 => (0..SLOTS, idx.clone()).prop_map(|(vm, page)| Op::CreateVcpu { vm, page }),
        2 => prop_oneof![Just(1u64), Just(2), Just(0)].prop_map(|nr| Op::UnshareLastGuest { nr }),
        1 => (0..SLOTS).prop_map(Op::VcpuRun),
        1 => (0..SLOTS).prop_map(Op::VmTeardown),
        2 => (0..SLOTS).prop_map(Op::VmReclaim),
        4 => (0..SLOTS, idx.clone(), gfn.clone(), nr.clone())
            .prop_map(|(vm, page, gfn, nr)| Op::ShareGuest { vm, page, gfn, nr }),
        3 => (0..SLOTS, idx.clone(), gfn.clone(), nr.clone())
            .prop_map(|(vm, page, gfn, nr)| Op::UnshareGuest { vm, page, gfn, nr }),
        4 => (pvm.clone(), idx.clone(), gfn.clone(), nr)
            .prop_map(|(vm, page, gfn, nr)| Op::DonateGuest { vm, page, gfn, nr }),
        3 => (pvm, guest_op.clone(), idx, gfn, prop_oneof![6 => Just(0u64), 1 => Just(8)])
            .prop_map(|(vm, op, page, gfn, off)| Op::GuestMem { vm, op, page, gfn, off }),
        4 => (guest_op, proptest::bool::weighted(0.2))
            .prop_map(|(op, next)| Op::GuestMemLast { op, next }),
    ]
}

fn run(tight: bool, ops: &[Op]) -> Result<(), String> {
    let cfg = if tight {
        SimConfig::tight()
    } else {
        SimConfig::small()
    };
    with_machine(&cfg, |m| {
        let p = pfns(&cfg, m.carveout.0);
        // A guest for the guest calls: its descriptor and memcache live below the pages the
        // ops use; the checker starts from the state the VM creation left.
        let r0 = cfg.ram[0].0 >> PAGE_SHIFT;
        m.create_model_vm(r0 + VM_DESC, r0 + VM_MEMCACHE, Some(r0 + VM_VCPU));
        // The protected one only when the pools have room for it (in the tight runs slot 1
        // is free for `CreateVm` to fill).
        if !tight {
            m.create_model_vm_flags(
                r0 + PVM_DESC,
                (r0 + PVM_MEMCACHE, 16),
                Some(r0 + PVM_VCPU),
                vm_flags::PROTECTED,
            );
        }
        let start = m.abstract_state()?;
        let mut c = Checker::with_state(m.spec_machine(), start);
        let mut last_guest_share = (0, 0);
        let mut last_donation = (1, 0);
        for &o in ops {
            let call = match o {
                Op::DonateGuest { vm, page, gfn, nr } => {
                    let gfn = gfns(&p, page)[gfn];
                    last_donation = (vm, gfn);
                    Call::DonateGuest {
                        vm,
                        pfn: p[page],
                        gfn,
                        nr,
                    }
                }
                Op::GuestMem {
                    vm,
                    op,
                    page,
                    gfn,
                    off,
                } => Call::GuestMem {
                    vm,
                    op,
                    ipa: gfns(&p, page)[gfn]
                        .wrapping_shl(PAGE_SHIFT)
                        .wrapping_add(off),
                },
                Op::GuestMemLast { op, next } => Call::GuestMem {
                    vm: last_donation.0,
                    op,
                    ipa: (last_donation.1 + u64::from(next)).wrapping_shl(PAGE_SHIFT),
                },
                Op::VmReclaim(vm) => Call::VmReclaim { vm },
                Op::UnshareLastGuest { nr } => Call::UnshareGuest {
                    vm: last_guest_share.0,
                    gfn: last_guest_share.1,
                    nr,
                },
                Op::CreateVm {
                    desc,
                    mc,
                    mc_nr,
                    protected,
                } => {
                    checked(
                        m,
                        &mut c,
                        Call::ShareHyp {
                            pfn: p[desc],
                            nr: 1,
                        },
                    )?;
                    Call::VmInit {
                        desc_pa: p[desc].wrapping_shl(PAGE_SHIFT),
                        mc_pfn: p[mc],
                        mc_nr,
                        ipa_bits: 32,
                        nr_vcpus: 1,
                        flags: if protected { vm_flags::PROTECTED } else { 0 },
                    }
                }
                Op::CreateVcpu { vm, page } => {
                    checked(
                        m,
                        &mut c,
                        Call::ShareHyp {
                            pfn: p[page],
                            nr: 1,
                        },
                    )?;
                    let st = p[page].wrapping_shl(PAGE_SHIFT);
                    Call::VcpuInit {
                        vm,
                        state_pa: st,
                        fp_pa: st.wrapping_add(0x800),
                    }
                }
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
                Op::VmInit {
                    desc,
                    desc_off,
                    mc,
                    mc_nr,
                    ipa_bits,
                    nr_vcpus,
                    flags,
                } => Call::VmInit {
                    desc_pa: p[desc].wrapping_shl(PAGE_SHIFT).wrapping_add(desc_off),
                    mc_pfn: p[mc],
                    mc_nr,
                    ipa_bits,
                    nr_vcpus,
                    flags,
                },
                Op::VcpuInit {
                    vm,
                    state,
                    state_off,
                    fp,
                    fp_off,
                } => Call::VcpuInit {
                    vm,
                    state_pa: p[state].wrapping_shl(PAGE_SHIFT).wrapping_add(state_off),
                    fp_pa: p[fp].wrapping_shl(PAGE_SHIFT).wrapping_add(fp_off),
                },
                Op::VcpuRun(vm) => Call::VcpuRun { vm },
                Op::VmTeardown(vm) => Call::VmTeardown { vm },
                Op::ShareGuest { vm, page, gfn, nr } => {
                    let gfn = gfns(&p, page)[gfn];
                    last_guest_share = (vm, gfn);
                    Call::ShareGuest {
                        vm,
                        pfn: p[page],
                        gfn,
                        nr,
                    }
                }
                Op::UnshareGuest { vm, page, gfn, nr } => Call::UnshareGuest {
                    vm,
                    gfn: gfns(&p, page)[gfn],
                    nr,
                },
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
    fn hypercalls_follow_the_spec(
        tight in proptest::bool::weighted(0.3),
        ops in proptest::collection::vec(op(), 1..32),
    ) {
        if let Err(e) = run(tight, &ops) {
            prop_assert!(false, "{}", e);
        }
    }
}
