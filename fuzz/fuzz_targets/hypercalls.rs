//! Fuzzes raw hypercall sequences against the simulated hypervisor, with the executable spec
//! and the structural invariants as the oracle after every call. The calls are issued through
//! the typed client (`pkvm_client`, the host's own) over the simulator's register transport.
//!
//! One machine is booted per fuzzing process, and after each input it is reset to its
//! just-booted state (`pkvm_sim::reset`: the RAM pages written since boot copied back, the
//! vmemmap, the hypervisor's own state and the simulator's tables restored) instead of booting
//! a new one. `crates/sim/tests/reset.rs` checks that a reset machine is a freshly booted one.
//!
//! Each 3-byte record is one call: `[kind, a, b]`. `kind % 16` picks the call, `x = kind >> 4`
//! its variants: the VM slot (bit 0: two slots), whether to share a structure's page with EL2
//! first, the guest frame.
//!
//! | kind | call | `a` | `b` |
//! |------|------|-----|-----|
//! | 0..=5 | share/unshare/donate/reclaim/pin/unpin | page | length |
//! | 6 | host access | page | write |
//! | 7 | debug read | page | offset |
//! | 8 | EL2 access | page | |
//! | 9 | (share the descriptor page,) VM init, any descriptor | descriptor page, IPA bits, vCPUs | memcache and its length, bad values |
//! | 15 | share the descriptor page, VM init with a well-formed descriptor | descriptor page | memcache and its length |
//! | 10 | (share the vCPU page,) vCPU init | state page | offsets, FP page |
//! | 11, 12 | vCPU run, VM teardown | | |
//! | 13 | share with a guest | page | length |
//! | 14, `x & 0xc` = 0 | unshare from a guest | page (for the guest frame) | length |
//! | 14, `x & 0xc` = 4 | unshare from a guest: the last share's guest and frame | | length |
//! | 14, `x & 0xc` = 8 | donate to a (protected) guest | page | length |
//! | 14, `x & 0xc` = 12 | a guest's memory call (share, unshare, relinquish) at the last donation's frame (or the next), or a reclaim of a dying VM | | call, frame |
//!
//! VM inits ask for a protected VM when `b & 3 == 1` (kind 9: and an unknown flag when
//! `b & 3 == 3`), and when `x & 1` (kind 15).
//!
//! The argument domains are small, so that calls build on each other (and succeed) often and
//! fail in every way the ABI allows: misaligned and page-crossing structures, memcaches of bad
//! sizes or over EL2's memory, MMIO, the end of RAM or overflowing ranges, guest frames past
//! the IPA space. A VM init is not issued while both slots hold a VM: at most two VMs live,
//! and every call can reach them.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use pkvm_abi::guest::{MEMCACHE_MAX_PAGES, MEMCACHE_MIN_PAGES, vm_flags};
use pkvm_abi::{PAGE_SHIFT, features};
use pkvm_client::catalogue::{Op, Resolved};
use pkvm_sim::machine::VIRT_UART;
use pkvm_sim::reset::Snapshot;
use pkvm_sim::scenarios::{checked, spec_call};
use pkvm_sim::{Machine, SimConfig, boot_static};
use pkvm_spec::{Call, Checker, GuestOp};

/// Record kinds 0..=5: the page-range operations, in this order.
const RANGE_OPS: [Op; 6] = [
    Op::ShareHyp,
    Op::UnshareHyp,
    Op::DonateHyp,
    Op::HypDonateHost,
    Op::Pin,
    Op::Unpin,
];

/// Records per input, at most (a record is a call, or a share with EL2 and a call).
const MAX_RECORDS: usize = 64;

/// The VM slots the calls name (at most this many VMs are alive: see `calls`).
const SLOTS: usize = 2;

/// The machine, booted once, and its state right after boot.
struct Booted {
    m: Machine<'static>,
    boot: Snapshot,
}

thread_local! {
    static BOOTED: RefCell<Option<Booted>> = const { RefCell::new(None) };
}

/// Where the calls point: page frames of the small machine and guest frames.
struct Domains {
    r0: u64,
    r1: u64,
    r1_end: u64,
    co: u64,
    pa_end: u64,
}

impl Domains {
    fn new(m: &Machine<'_>) -> Self {
        let cfg = m.config();
        Domains {
            r0: cfg.ram[0].0 >> PAGE_SHIFT,
            r1: cfg.ram[1].0 >> PAGE_SHIFT,
            r1_end: (cfg.ram[1].0 + cfg.ram[1].1) >> PAGE_SHIFT,
            co: m.carveout.0 >> PAGE_SHIFT,
            pa_end: 1 << (cfg.pa_bits - PAGE_SHIFT),
        }
    }

    /// Any page: ordinary pages of the first region, the carve-out and the page below it, the
    /// second region and its end, MMIO, the end of the PA space, overflowing frames, and the
    /// low pages where the VM structures live.
    fn pfn(&self, sel: u8) -> u64 {
        match sel % 16 {
            0..=7 => self.r0 + 0x200 + u64::from(sel % 8) * 0x101,
            8 => self.co - 1,
            9 => self.co,
            10 => self.r1 + u64::from(sel >> 4),
            11 => self.r1_end,
            12 => VIRT_UART >> PAGE_SHIFT,
            13 => self.pa_end,
            14 => u64::MAX - u64::from(sel >> 4),
            _ => self.r0 + u64::from(sel) * 3,
        }
    }

    /// A page for a VM descriptor or vCPU structures: four pages kept for them, a page of the
    /// ordinary ones, the carve-out's edge and the carve-out, the second region.
    fn vm_pfn(&self, sel: u8) -> u64 {
        match sel % 8 {
            s @ 0..=3 => self.r0 + 0x80 + u64::from(s),
            4 => self.r0 + 0x200,
            5 => self.co - 1,
            6 => self.co,
            _ => self.r1,
        }
    }

    /// A memcache's first page: three windows of 16 pages kept for them, an ordinary page,
    /// the carve-out's edge, the end of the second region, the VM structures' pages, and (by
    /// `bad`) MMIO or an overflowing frame.
    fn memcache_pfn(&self, sel: u8, bad: bool) -> u64 {
        match sel % 8 {
            s @ 0..=2 => self.r0 + 0xc0 + 0x10 * u64::from(s),
            3 => self.r0 + 0x200,
            4 => self.co - 2,
            5 => self.r1_end - 2,
            6 => self.r0 + 0x80,
            _ if bad => VIRT_UART >> PAGE_SHIFT,
            _ => u64::MAX - 1,
        }
    }

    /// A guest frame: 0, small ones, the host frame's own number, the last of a 32-bit IPA
    /// space and the first beyond it, the first beyond the largest IPA space, overflowing.
    fn gfn(sel: u8, pfn: u64) -> u64 {
        match sel % 8 {
            0 => 0,
            1 => 0x10,
            2 => pfn,
            3 => 0x11,
            4 => (1 << 20) - 1,
            5 => 1 << 20,
            6 => 1 << 36,
            _ => u64::MAX - 1,
        }
    }
}

/// A length: 0, small ones, a 2 MiB block and more, overflowing ones.
fn nr_of(sel: u8) -> u64 {
    match sel % 8 {
        0 => 0,
        6 => 512 + u64::from(sel >> 3),
        7 => u64::MAX - u64::from(sel >> 3),
        n => u64::from(n),
    }
}

/// A memcache's length: mostly valid ones (2 to 64 pages), one too short, one too long.
fn memcache_nr(sel: u8) -> u64 {
    [
        MEMCACHE_MIN_PAGES,
        MEMCACHE_MIN_PAGES,
        MEMCACHE_MIN_PAGES + 1,
        4,
        8,
        MEMCACHE_MAX_PAGES,
        MEMCACHE_MIN_PAGES - 1,
        MEMCACHE_MAX_PAGES + 1,
    ][usize::from(sel % 8)]
}

/// What the records of one input remember.
#[derive(Default)]
struct Memory {
    /// The VM slot, guest frame and length of the last share with a guest.
    last_share: (usize, u64, u64),
    /// The VM slot and guest frame of the last donation to a guest.
    last_donation: (usize, u64),
}

/// The calls of one record (a composite shares a structure's page with EL2 first). `full`: both
/// VM slots the calls name hold a VM.
fn calls(d: &Domains, mem: &mut Memory, rec: &[u8], full: bool) -> Vec<Call> {
    let (kind, x, a, b) = (rec[0] % 16, rec[0] >> 4, rec[1], rec[2]);
    let vm = usize::from(x) % SLOTS;
    let (pfn, nr) = (d.pfn(a), nr_of(b));
    let call = match kind {
        k @ 0..=5 => spec_call(&Resolved {
            op: RANGE_OPS[usize::from(k)],
            addr: pfn,
            arg: nr,
        }),
        6 => Call::HostAccess {
            pa: pfn.wrapping_shl(PAGE_SHIFT),
            write: b & 1 != 0,
        },
        7 => spec_call(&Resolved {
            op: Op::DebugRead,
            addr: pfn.wrapping_shl(PAGE_SHIFT) | u64::from(b & 0xf),
            arg: 0,
        }),
        8 => Call::HypRead {
            pa: pfn.wrapping_shl(PAGE_SHIFT),
        },
        // A VM init takes the first free slot: with both named slots taken, the VM would be
        // one the other calls cannot reach (and every later check would walk its tables).
        9 | 15 if full => return Vec::new(),
        // Any descriptor: misaligned or crossing its page's end, a bad IPA size, no or two
        // vCPUs, its page shared with EL2 first or not.
        9 => {
            let desc = d.vm_pfn(a);
            let bad_off = if b & 0x40 != 0 { 0xff8 } else { 4 };
            let desc_off = [0, 0, 0, bad_off][usize::from(x >> 2)];
            let init = Call::VmInit {
                desc_pa: (desc << PAGE_SHIFT) + desc_off,
                mc_pfn: d.memcache_pfn(b, b & 0x40 != 0),
                mc_nr: memcache_nr(b >> 3),
                ipa_bits: [32, 32, 32, 36, 40, 40, 31, 48][usize::from((a >> 3) % 8)],
                nr_vcpus: [1, 1, 1, u64::from(b >> 7) * 2][usize::from(a >> 6)],
                flags: [0, vm_flags::PROTECTED, 0, 1 << 5][usize::from(b & 3)],
            };
            return if x & 3 != 0 {
                vec![Call::ShareHyp { pfn: desc, nr: 1 }, init]
            } else {
                vec![init]
            };
        }
        // A VM as the host creates one: a well-formed descriptor at the start of a page it
        // shares with EL2 first; only the memcache may be refused.
        15 => {
            let desc = d.vm_pfn(a);
            return vec![
                Call::ShareHyp { pfn: desc, nr: 1 },
                Call::VmInit {
                    desc_pa: desc << PAGE_SHIFT,
                    mc_pfn: d.memcache_pfn(b, b & 0x40 != 0),
                    mc_nr: memcache_nr(b >> 3),
                    ipa_bits: if x & 2 != 0 { 40 } else { 32 },
                    nr_vcpus: 1,
                    flags: if x & 1 != 0 { vm_flags::PROTECTED } else { 0 },
                },
            ];
        }
        10 => {
            let page = d.vm_pfn(a);
            let state_pa = (page << PAGE_SHIFT) + [0, 0x400, 0xf00, 4][usize::from(b % 4)];
            let fp_page = if b & 0x10 != 0 {
                d.vm_pfn(b >> 5)
            } else {
                page
            };
            let fp_pa = (fp_page << PAGE_SHIFT) + [0x800, 0, 0xf00, 8][usize::from((b >> 2) % 4)];
            let init = Call::VcpuInit {
                vm,
                state_pa,
                fp_pa,
            };
            return if x & 2 != 0 {
                vec![Call::ShareHyp { pfn: page, nr: 1 }, init]
            } else {
                vec![init]
            };
        }
        11 => Call::VcpuRun { vm },
        12 => Call::VmTeardown { vm },
        13 => {
            let gfn = Domains::gfn(x >> 1, pfn);
            mem.last_share = (vm, gfn, nr);
            Call::ShareGuest { vm, pfn, gfn, nr }
        }
        // At the frame of the last share, all of it or `nr` pages.
        _ if x & 0xc == 4 => {
            let (vm, gfn, shared) = mem.last_share;
            Call::UnshareGuest {
                vm,
                gfn,
                nr: if b & 1 == 0 { shared } else { nr_of(b >> 1) },
            }
        }
        _ if x & 0xc == 8 => {
            let gfn = Domains::gfn(a >> 5 | (b >> 7 << 2), pfn);
            mem.last_donation = (vm, gfn);
            Call::DonateGuest { vm, pfn, gfn, nr }
        }
        _ if x & 0xc == 12 => {
            let (vm, gfn) = mem.last_donation;
            let gfn = gfn.wrapping_add(u64::from(b >> 2 & 1));
            let op = match b % 4 {
                0 => GuestOp::Share,
                1 => GuestOp::Unshare,
                2 => GuestOp::Relinquish,
                _ => return vec![Call::VmReclaim { vm }],
            };
            Call::GuestMem {
                vm,
                op,
                ipa: gfn.wrapping_shl(PAGE_SHIFT),
            }
        }
        _ => Call::UnshareGuest {
            vm,
            gfn: Domains::gfn((x >> 1) | (b >> 7 << 2), pfn),
            nr,
        },
    };
    vec![call]
}

fn run(m: &Machine<'_>, data: &[u8]) {
    let d = Domains::new(m);
    let mut c = Checker::new(m.spec_machine());
    let mut mem = Memory::default();
    for rec in data.chunks_exact(3).take(MAX_RECORDS) {
        let vms = &c.spec().state().vms;
        let full = (0..SLOTS).all(|s| vms.contains_key(&s));
        for call in calls(&d, &mut mem, rec, full) {
            if let Err(e) = checked(m, &mut c, call) {
                panic!("{e}");
            }
        }
    }
    // Whatever happened, EL2 still answers, with the debug build's features.
    let v = m.client().version();
    assert!(
        v.is_ok_and(|v| v.has(features::DEBUG_HCALLS)),
        "Version after the run: {v:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    BOOTED.with_borrow_mut(|b| {
        let b = b.get_or_insert_with(|| {
            let m = boot_static(&SimConfig::small());
            // The protocol monitor checks from the first call on (as after every reset).
            m.check_protocol().unwrap_or_else(|e| panic!("{e}"));
            let boot = m.snapshot().unwrap_or_else(|e| panic!("{e}"));
            Booted { m, boot }
        });
        run(&b.m, data);
        // Back to the just-booted state for the next input. The reset ends the protocol
        // monitor's last window of this input: its violations are this input's.
        if let Err(e) = b.m.reset(&b.boot) {
            panic!("after the run: {e}");
        }
    });
});
