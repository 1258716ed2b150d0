//! The `bench` scenario: EL2 instructions per operation, from the PMU cycle counter filtered to
//! EL2 (exact only under `-icount shift=0`).
//!
//! Every figure is the delta of `PMCCNTR_EL0` around one operation, sampled several times; the
//! line printed is `PKVM-BENCH <name> <min> samples=[...]`, which `cargo xtask bench` collects
//! from two boots and compares. Operations:
//!
//! | name | what is counted |
//! |---|---|
//! | `hvc_version` | an empty hypercall (`Version`): trap, dispatch, return |
//! | `hvc_unknown` | an unknown id (refused at the first check) |
//! | `share_1` / `unshare_1` | `host_share_hyp` / `host_unshare_hyp` of one page (count 0 ↔ 1: EL2 maps/unmaps it) |
//! | `share_again` | a second share of a page already shared (count 1 → 2: no mapping change) |
//! | `share_512` / `unshare_512` | one ranged call over 512 pages (a 2 MiB-aligned run) |
//! | `host_fault` | one host load from a 2 MiB block it never touched: the host stage-2 fault that maps the block, then the retried load |
//! | `vm_lifecycle` | one whole guest lifecycle: share the VM structure, `VmInit` (memcache donation), share the vCPU and FP structures, `VcpuInit`, share 16 pages of RAM into the guest, `VcpuRun` until the (quiet) guest powers off, `VmTeardown`, three unshares |
//! | `guest_hvc_roundtrip` | one `VcpuRun` that resumes a guest stopped at a hypercall exit and returns at its next hypercall: host HVC, world switch in, guest HVC, world switch out |
//! | `guest_hvc_roundtrip_fp` | the same with the guest using FP between the exits: plus its FP-access trap and the lazy FP/SIMD switch both ways |
//! | `guest_hvc_roundtrip_vgic` | `guest_hvc_roundtrip` with the guest's virtual GIC on (one list register): its validation and loading on entry, its saving and publishing on exit |
//! | `pvm_lifecycle` | one whole protected-VM lifecycle: as `vm_lifecycle`, with the 16 pages of RAM donated, and reclaimed zeroed at teardown |
//! | `donate_guest_128` | one `HostDonateGuest` of 128 pages to a protected VM (host stage-2 annotations, guest stage-2 mappings) |
//! | `reclaim_64` | one `VmReclaim` of a dying protected VM that reclaims a full batch of 64 donated pages: unmap from the guest, zero each through EL2's window, give back to the host |
//! | `guest_mem_share_roundtrip` | a `guest_hvc_roundtrip` whose guest makes a `MEM_SHARE` and a `MEM_UNSHARE` (answered at EL2, no exit) before its hypercall exit |

use crate::checks::Checks;
use crate::env::Env;
use crate::fault::probe_read;
use crate::hvc::hvc;
use crate::pkvm::{self, HcallError, PKVM};
use crate::pmu;
use crate::vm::{self, RunEnd, SlotMem, flags};
use pkvm_abi::guest::{GUEST_HVC_PING, GUEST_RAM_IPA, GUEST_RAM_PAGES, PROT_RWX, VM_MEMCACHE_PAGES};
use pkvm_abi::{HVC_BASE, HostHcall, PAGE_SHIFT, hvc_fid};
use pkvm_client::{Exit, VmHandle};

const SAMPLES: usize = 5;

/// Counts EL2 instructions spent in `f`.
#[inline(always)]
fn count<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let before = pmu::read();
    let r = f();
    let after = pmu::read();
    (after.wrapping_sub(before), r)
}

/// `N` rounds of `share_hyp(pfn, nr)` then `unshare_hyp(pfn, nr)`: the EL2 instructions of
/// each share and each unshare, and the first failure.
fn share_unshare<const N: usize>(pfn: u64, nr: u64) -> ([u64; N], [u64; N], Result<(), HcallError>) {
    let (mut sh, mut un) = ([0; N], [0; N]);
    let mut res = Ok(());
    for i in 0..N {
        let (n, r) = count(|| PKVM.share_hyp(pfn, nr));
        sh[i] = n;
        res = res.and(r);
        let (n, r) = count(|| PKVM.unshare_hyp(pfn, nr));
        un[i] = n;
        res = res.and(r);
    }
    (sh, un, res)
}

/// Prints the `PKVM-BENCH` line and records a check: the operations succeeded (`error` is the
/// first failure, if any) and cost EL2 something.
fn report<E: core::fmt::Debug>(
    c: &mut Checks,
    name: &'static str,
    samples: &[u64],
    error: Option<E>,
) {
    let min = samples.iter().copied().min().unwrap_or(0);
    println!("PKVM-BENCH {name} {min} samples={samples:?}");
    match error {
        None => c.check(name, min > 0, format_args!("{min} EL2 instructions")),
        Some(e) => c.check(
            name,
            false,
            format_args!("{min} EL2 instructions, but {e:?}"),
        ),
    };
}

/// Runs the scenario.
pub fn run(c: &mut Checks, env: &mut Env) {
    if !c.check(
        "PMUv3 present",
        pmu::available(),
        format_args!("ID_AA64DFR0_EL1.PMUVer"),
    ) {
        return;
    }
    pmu::start_el2_cycle_counter();
    println!(
        "bench: EL2 instructions per operation (PMCCNTR_EL0 counting EL2 only; exact under \
         -icount)"
    );

    for (name, fid) in [
        ("hvc_version", hvc_fid(HostHcall::Version)),
        ("hvc_unknown", HVC_BASE | 0x7fff),
    ] {
        let mut s = [0; SAMPLES];
        for v in &mut s {
            *v = count(|| core::hint::black_box(hvc(fid, [0; 6]))).0;
        }
        report(c, name, &s, None::<HcallError>);
    }

    // One page, count 0 -> 1 -> 0, repeatedly.
    let p = env.pfn();
    let (sh, un, res) = share_unshare::<SAMPLES>(p, 1);
    report(c, "share_1", &sh, res.err());
    report(c, "unshare_1", &un, res.err());

    // A second share of a shared page (count 1 -> 2).
    let mut again = [0; SAMPLES];
    let mut res = PKVM.share_hyp(p, 1);
    for v in &mut again {
        let (n, r) = count(|| PKVM.share_hyp(p, 1));
        *v = n;
        res = res.and(r).and(PKVM.unshare_hyp(p, 1));
    }
    res = res.and(PKVM.unshare_hyp(p, 1));
    report(c, "share_again", &again, res.err());

    // 512 pages in one call.
    let b = env.pages(512, 2 << 20) >> PAGE_SHIFT;
    let (sh, un, res) = share_unshare::<3>(b, 512);
    report(c, "share_512", &sh, res.err());
    report(c, "unshare_512", &un, res.err());

    // First touch of never-touched 2 MiB blocks.
    let mut faults = [0; SAMPLES];
    let mut res = None;
    for v in &mut faults {
        let blk = env.pages(512, 2 << 20);
        // SAFETY: `blk` is a free, aligned RAM page from the allocator; reading it has no side
        // effect and no reference to it exists.
        let (n, r) = count(|| unsafe { probe_read(blk) });
        *v = n;
        if let Err(a) = r {
            res.get_or_insert(a);
        }
    }
    report(c, "host_fault", &faults, res);

    guests(c, env);
}

/// The guest figures: a whole lifecycle, and a hypercall-exit round trip.
fn guests(c: &mut Checks, env: &mut Env) {
    let mem = SlotMem::alloc(env);
    let (life, err) = lifecycles(false, mem);
    report(c, "vm_lifecycle", &life, err);
    lifecycle_breakdown(mem);
    protected(c, env);

    // A quiet guest that pings many times: each sample is one run from one ping to the next;
    // with FP_PINGS the guest uses FP each time, so each run also switches FP lazily.
    // With the virtual GIC on, each entry validates and loads it and each exit saves and
    // publishes it.
    for (name, gflags, vgic) in [
        ("guest_hvc_roundtrip", flags::QUIET, false),
        ("guest_hvc_roundtrip_fp", flags::QUIET | flags::FP_PINGS, false),
        ("guest_hvc_roundtrip_vgic", flags::QUIET, true),
    ] {
        let created = vm::create(0, mem, 0, 1000, gflags);
        if vgic && created.is_ok() {
            vm::structs(0).vcpu.set_vgic(&pkvm_abi::guest::VgicState {
                nr_lrs: 1,
                ..pkvm_abi::guest::VgicState::default()
            });
        }
        let (rt, err) = roundtrips(created);
        report(c, name, &rt, err);
    }
}

/// The protected-VM figures.
fn protected(c: &mut Checks, env: &mut Env) {
    let mem = SlotMem::with_memcache(env, super::protected::PVM_MEMCACHE_PAGES);
    let (life, err) = lifecycles(true, mem);
    report(c, "pvm_lifecycle", &life, err);

    // 128 more pages after the guest's RAM, then a teardown (its first batch) and one full
    // batch.
    let big = mem;
    let extra = env.pages(128, 4096) >> PAGE_SHIFT;
    let gfn = (GUEST_RAM_IPA >> PAGE_SHIFT) + GUEST_RAM_PAGES;
    let (mut donate, mut reclaim) = ([0; 3], [0; 3]);
    let mut err = None;
    for i in 0..3 {
        let vm = match vm::create_with(true, 0, big, i, (0, flags::QUIET)) {
            Ok(vm) => vm,
            Err(e) => {
                err.get_or_insert(Err(e));
                break;
            }
        };
        let (n, r) = count(|| PKVM.donate_guest(vm.handle, extra, gfn, 128));
        donate[i as usize] = n;
        let left = r.and_then(|()| PKVM.vm_teardown(vm.handle));
        let (n, after) = count(|| PKVM.vm_reclaim(vm.handle));
        reclaim[i as usize] = n;
        // Whatever happened, the VM goes (and its RAM comes back) before the next one.
        let gone = vm::destroy(vm);
        match (left, after, gone) {
            (Ok(80), Ok(16), Ok(())) => {}
            other => {
                err.get_or_insert(Ok(other));
            }
        }
    }
    report(c, "donate_guest_128", &donate, err);
    report(c, "reclaim_64", &reclaim, err);

    let vm = vm::create_with(true, 0, mem, 0, (1000, flags::QUIET | flags::SHARE_PINGS));
    let (rt, err) = roundtrips(vm);
    report(c, "guest_mem_share_roundtrip", &rt, err);
}

/// The EL2 instructions of [`SAMPLES`] whole lifecycles of a quiet guest in slot 0 of `mem`
/// (protected or not), and the first run that did not end in a power-off.
fn lifecycles(
    protected: bool,
    mem: SlotMem,
) -> ([u64; SAMPLES], Option<Result<RunEnd, HcallError>>) {
    let mut life = [0; SAMPLES];
    let mut err = None;
    for (i, v) in life.iter_mut().enumerate() {
        let (n, r) = count(|| {
            let vm = vm::create_with(protected, 0, mem, i as u64, (0, flags::QUIET))?;
            let end = vm::run(&vm, false, |_, _| {});
            vm::destroy(vm)?;
            Ok::<_, HcallError>(end)
        });
        *v = n;
        if r != Ok(RunEnd::PowerOff) {
            err.get_or_insert(r);
        }
    }
    (life, err)
}

/// The EL2 instructions of [`SAMPLES`] runs of `vm` (a quiet guest that pings many times),
/// each from one ping to the next, and the first failure; the VM is destroyed after.
fn roundtrips(
    vm: Result<vm::Vm, HcallError>,
) -> ([u64; SAMPLES], Option<Result<(), HcallError>>) {
    let mut rt = [0; SAMPLES];
    let vm = match vm {
        Ok(vm) => vm,
        Err(e) => return (rt, Some(Err(e))),
    };
    let mut err = None;
    let first = vm::run_once(&vm);
    for v in &mut rt {
        vm::answer_ping(&vm, GUEST_HVC_PING);
        let (n, r) = count(|| vm::run_once(&vm));
        *v = n;
        if r != Ok(Exit::Hypercall) {
            err.get_or_insert(r.map(|_| ()));
        }
    }
    if first != Ok(Exit::Hypercall) {
        err.get_or_insert(first.map(|_| ()));
    }
    if let Err(e) = vm::destroy(vm) {
        err.get_or_insert(Err(e));
    }
    (rt, err)
}

/// One step of [`lifecycle_breakdown`].
type Step<'a> = &'a mut dyn FnMut() -> Result<u64, HcallError>;

/// Prints the EL2 cost of each step of one quiet lifecycle in slot 0.
fn lifecycle_breakdown(mem: SlotMem) {
    let s = vm::prepare(0, mem, 0, (0, flags::QUIET), 0);
    let (desc, vcpu, fp) = (s.desc, s.vcpu.shared(), s.fp);
    let share = |x: crate::shared::Shared<'_>| pkvm::share_hyp_bytes(x.pa(), x.bytes());
    let handle = core::cell::Cell::new(VmHandle::from_raw(0));
    let steps: [(&str, Step<'_>); 10] = [
        ("share_hyp(desc)", &mut || share(desc).map(|()| 0)),
        ("vm_init", &mut || {
            let h = PKVM.vm_init(desc.pa(), mem.memcache_pfn, VM_MEMCACHE_PAGES)?;
            handle.set(h);
            Ok(h.raw())
        }),
        ("share_hyp(vcpu)", &mut || share(vcpu).map(|()| 0)),
        ("share_hyp(fp)", &mut || share(fp).map(|()| 0)),
        ("vcpu_init", &mut || {
            PKVM.vcpu_init(handle.get(), vcpu.pa(), fp.pa()).map(|()| 0)
        }),
        ("share_guest(16)", &mut || {
            let gfn = GUEST_RAM_IPA >> PAGE_SHIFT;
            PKVM.share_guest(handle.get(), mem.ram_pfn, gfn, GUEST_RAM_PAGES, PROT_RWX)
                .map(|()| 0)
        }),
        ("vcpu_run", &mut || PKVM.vcpu_run(handle.get())),
        ("vm_teardown", &mut || PKVM.vm_teardown(handle.get())),
        ("unshare_hyp(fp)", &mut || vm::unshare(fp).map(|()| 0)),
        ("unshare_hyp(vcpu)+(desc)", &mut || {
            vm::unshare(vcpu).and_then(|()| vm::unshare(desc)).map(|()| 0)
        }),
    ];
    for (name, f) in steps {
        let (n, r) = count(f);
        println!("bench: lifecycle step {name}: {n} EL2 instructions ({r:?})");
    }
}
