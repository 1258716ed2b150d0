//! The `guests` scenario: the seed's "spawn and power off a guest" test at scale, with the bad
//! inputs first and a leak report at the end (docs/ARCHITECTURE.md, "The `guests` scenario").

use core::sync::atomic::{AtomicU64, Ordering};

use crate::checks::Checks;
use crate::cpu;
use crate::env::Env;
use crate::pkvm::{HcallError, PKVM};
use crate::scenarios::lifecycles::{Cycle, Failures, expect_err, have_guest_image, run_blocks};
use crate::vm::{self, RunEnd, SLOTS, SlotMem, Vm, flags};
use pkvm_abi::guest::{GUEST_RAM_IPA, PROT_RWX, PSTATE_EL1H_DAIF, VM_MEMCACHE_PAGES};
use pkvm_abi::{Error, PAGE_SHIFT};
use pkvm_arch::esr::Ec;

/// Default number of lifecycles (`pkvm.guests=N` overrides).
pub const DEFAULT_CYCLES: u64 = 1000;
/// Pings each guest makes (hypercall exits with FP state checked across them).
const PINGS: u64 = 2;

static CYCLES: AtomicU64 = AtomicU64::new(DEFAULT_CYCLES);

/// Sets the number of lifecycles (`pkvm.guests=N`; the `protected` scenario's too).
pub fn set_cycles(n: u64) {
    CYCLES.store(n, Ordering::Relaxed);
}

/// The number of lifecycles.
pub fn cycles() -> u64 {
    CYCLES.load(Ordering::Relaxed)
}

/// The bad inputs, each a check (EL2 must refuse them and keep working).
fn bad_inputs(c: &mut Checks, mem: &[SlotMem; SLOTS], env: &mut Env) {
    let vm = match vm::create(0, mem[0], 0, 0, flags::QUIET) {
        Ok(vm) => vm,
        Err(e) => {
            c.check("bad inputs: create", false, format_args!("{e}"));
            return;
        }
    };
    let h = vm.handle;
    let share = |pfn, gfn, nr| PKVM.share_guest(h, pfn, gfn, nr, PROT_RWX);
    // A page the host does not own: the slot's memcache (donated to EL2), EL2's own memory.
    expect_err(
        c,
        "share into a guest a page donated to EL2",
        share(mem[0].memcache_pfn, 0, 1),
        Error::Perm,
    );
    let el2 = env.el2_image().start >> PAGE_SHIFT;
    expect_err(
        c,
        "share into a guest EL2's memory",
        share(el2, 0, 1),
        Error::Perm,
    );
    let p = env.pfn();
    expect_err(
        c,
        "gfn beyond the guest IPA space",
        share(p, 1 << 20, 1),
        Error::Range,
    );
    expect_err(
        c,
        "gfn range crossing the end of the IPA space",
        share(p, (1 << 20) - 1, 2),
        Error::Range,
    );
    // Guest RAM is shared with the guest, not with EL2: share/unshare_hyp refused.
    let ram = mem[0].ram_pfn;
    expect_err(
        c,
        "share_hyp of a page shared with a guest",
        PKVM.share_hyp(ram, 1),
        Error::Perm,
    );
    expect_err(
        c,
        "unshare_hyp of a page shared with a guest",
        PKVM.unshare_hyp(ram, 1),
        Error::Perm,
    );
    expect_err(
        c,
        "share of a page already in the guest",
        share(ram, 0, 1),
        Error::Perm,
    );
    // The vCPU structure is pinned while the VM lives.
    let vcpu = vm::structs(0).vcpu;
    expect_err(
        c,
        "unshare of a live vCPU structure",
        vm::unshare(vcpu.shared()),
        Error::Busy,
    );
    // Corrupted PSTATE: AArch32, EL2h, a stray bit. Rejected; nothing runs.
    for bad in [0x10u64, 0x9, PSTATE_EL1H_DAIF | 1 << 20] {
        vcpu.set_pstate(bad);
        expect_err(
            c,
            "vCPU with a corrupted PSTATE",
            vm::run_once(&vm),
            Error::Inval,
        );
    }
    vcpu.set_pstate(PSTATE_EL1H_DAIF);
    // A guest jumping to an address with no memory: an instruction abort, a fault exit.
    vcpu.set_pc(0x1000_0000);
    let r = vm::run(&vm, false, |_, _| {});
    c.check(
        "guest fetching from unmapped IPA: fault exit",
        matches!(r, RunEnd::Fault(esr) if esr.ec() == Ec::IabtLow),
        format_args!("{r:x?}"),
    );
    vcpu.set_pc(GUEST_RAM_IPA);
    let r = vm::run(&vm, false, |_, _| {});
    c.check(
        "guest runs after the refused inputs",
        r == RunEnd::PowerOff,
        format_args!("{r:?}"),
    );
    let r = vm::destroy(vm);
    c.check("destroy", r.is_ok(), format_args!("{r:?}"));
    expect_err(c, "teardown twice", PKVM.vm_teardown(h), Error::NoEnt);
    expect_err(
        c,
        "run after teardown (vCPU structure since unshared)",
        PKVM.vcpu_run(h),
        Error::NoEnt,
    );
    let desc = vm::structs(0).desc.pa();
    expect_err(
        c,
        "VM init with a descriptor not shared",
        PKVM.vm_init(desc, mem[0].memcache_pfn, VM_MEMCACHE_PAGES),
        Error::Perm,
    );
}

/// The virtual GIC on the real CPU interface: EL2 loads the list register the host asks for, the
/// guest acknowledges and EOIs the interrupt through its virtual CPU interface, and the list
/// register comes back empty with its EOI maintenance event; a list register naming a hardware
/// interrupt is refused.
fn vgic(c: &mut Checks, mem: &[SlotMem; SLOTS]) {
    use pkvm_abi::Stat;
    use pkvm_abi::guest::VgicState;
    use pkvm_abi::guest::vgic::lr;
    const INTID: u32 = 27;
    let nr = crate::pkvm::stat(Stat::VgicListRegs);
    c.check(
        "vGIC: EL2 reports the CPU's list registers",
        nr > 0,
        format_args!("{nr} list registers"),
    );
    let vm = match vm::create(0, mem[0], 7, 1, flags::QUIET | flags::VGIC) {
        Ok(vm) => vm,
        Err(e) => {
            c.check("vGIC: create", false, format_args!("{e}"));
            return;
        }
    };
    let vcpu = vm::structs(0).vcpu;
    let mut v = VgicState {
        nr_lrs: 1,
        ..VgicState::default()
    };
    v.lr[0] = lr::pending_group1(INTID, 0xa0) | lr::HW | (40 << 32);
    vcpu.set_vgic(&v);
    expect_err(
        c,
        "vGIC: a list register naming a hardware interrupt",
        vm::run_once(&vm),
        Error::Inval,
    );
    v.lr[0] = lr::pending_group1(INTID, 0xa0) | lr::EOI;
    vcpu.set_vgic(&v);
    let mut reported = None;
    let r = vm::run(&vm, false, |vm, e| {
        if *e == pkvm_client::Exit::Hypercall && reported.is_none() {
            reported = Some(vm::structs(vm.slot).vcpu.reg(1));
        }
    });
    let after = vcpu.vgic();
    c.check(
        "vGIC: the guest acknowledges the injected interrupt through its virtual CPU interface",
        r == RunEnd::PowerOff && reported == Some(u64::from(INTID)),
        format_args!("{r:?}, the guest read INTID {reported:?}"),
    );
    c.check(
        "vGIC: its EOI deactivates the list register and raises the EOI maintenance event",
        // ELRSR: LR0 is not empty until the host handles the event (EOI set); the others are.
        after.lr[0] >> lr::STATE_SHIFT == 0
            && after.eisr == 1
            && after.elrsr == ((1 << nr) - 1) & !1,
        format_args!(
            "LR0 {:#x}, ELRSR {:#x}, EISR {:#x}",
            after.lr[0], after.elrsr, after.eisr
        ),
    );
    let r = vm::destroy(vm);
    c.check("vGIC: destroy", r.is_ok(), format_args!("{r:?}"));
}

/// Preemption: a guest spinning forever with its interrupts masked gives the CPU back at the
/// host's next timer deadline (EL2 arms its own timer there for the run), within one period.
fn preemption(c: &mut Checks, mem: &[SlotMem; SLOTS], env: &Env) {
    use aarch64_cpu::registers::{CNTFRQ_EL0, CNTV_CTL_EL0, CNTV_CVAL_EL0, Readable, Writeable};
    let Some(gic) = env.gic else {
        c.check("preemption", false, format_args!("no GICv3"));
        return;
    };
    let vm = match vm::create(0, mem[0], 9, 0, flags::SPIN) {
        Ok(vm) => vm,
        Err(e) => {
            c.check("preemption: create", false, format_args!("{e}"));
            return;
        }
    };
    crate::vmm::host_gic(gic, true);
    let period = CNTFRQ_EL0.get() / 100; // 10 ms
    let t0 = cpu::ticks();
    CNTV_CVAL_EL0.set(t0 + period);
    CNTV_CTL_EL0.set(1); // enabled, unmasked
    let r = vm::run_once(&vm);
    let took = cpu::ticks() - t0;
    CNTV_CTL_EL0.set(0);
    crate::vmm::host_gic(gic, false);
    c.check(
        "preemption: a guest spinning with interrupts masked returns at the host's deadline",
        r == Ok(pkvm_client::Exit::Irq) && took >= period && took < 10 * period,
        format_args!(
            "{r:?} after {} us (the host's timer: {} us)",
            cpu::us(took),
            cpu::us(period)
        ),
    );
    let r = vm::destroy(vm);
    c.check("preemption: destroy", r.is_ok(), format_args!("{r:?}"));
}

/// A VM with two vCPUs (its descriptor and vCPU 0 in slot 0's structures, vCPU 1 in slot
/// 1's): each runs by its index to power-off and reads its own MPIDR (`vcpu_mpidr`), then one
/// teardown unpins both.
fn two_vcpus(c: &mut Checks, mem: &[SlotMem; SLOTS]) {
    use pkvm_abi::guest::{GUEST_HVC_PING, GUEST_RAM_PAGES, vcpu_mpidr};
    let guest_flags = flags::QUIET | flags::MPIDR;
    let s0 = vm::prepare(0, mem[0], 5, (1, guest_flags), 0);
    let s1 = vm::prepare(1, mem[1], 5, (1, guest_flags), 0);
    s0.desc.set(1, 2); // nr_vcpus
    let created = s0.share(&[s0.desc]).and_then(|()| {
        let h = PKVM.vm_init(s0.desc.pa(), mem[0].memcache_pfn, mem[0].memcache_nr)?;
        s0.share(&[s0.vcpu.shared(), s0.fp])?;
        PKVM.vcpu_init_at(h, 0, s0.vcpu.shared().pa(), s0.fp.pa())?;
        s1.share(&[s1.vcpu.shared(), s1.fp])?;
        PKVM.vcpu_init_at(h, 1, s1.vcpu.shared().pa(), s1.fp.pa())?;
        let gfn = GUEST_RAM_IPA >> PAGE_SHIFT;
        PKVM.share_guest(h, mem[0].ram_pfn, gfn, GUEST_RAM_PAGES, PROT_RWX)?;
        Ok(h)
    });
    let h = match created {
        Ok(h) => h,
        Err(e) => {
            c.check("two vCPUs: create", false, format_args!("{e}"));
            return;
        }
    };
    // One after the other (they share the guest's RAM, and its stack).
    let mut seen = [None; 2];
    for (i, s) in [s0, s1].iter().enumerate() {
        let v = s.vcpu;
        let end = loop {
            match PKVM.run_at(h, i as u64, || v.exit()) {
                Ok(pkvm_client::Exit::Hypercall) if v.reg(0) == GUEST_HVC_PING => {
                    seen[i].get_or_insert(v.reg(1));
                    v.set_reg(0, v.reg(1) + 1);
                }
                other => break other,
            }
        };
        c.check(
            "two vCPUs: each runs by its index and reads its own MPIDR",
            seen[i] == Some(vcpu_mpidr(i)) && end == Ok(pkvm_client::Exit::SystemEvent(u64::from(pkvm_abi::psci::SYSTEM_OFF))),
            format_args!("vCPU {i}: MPIDR {:x?}, then {end:?}", seen[i]),
        );
    }
    let r = PKVM
        .vm_destroy(h)
        .and(vm::release(0))
        .and(vm::unshare(s1.fp))
        .and(vm::unshare(s1.vcpu.shared()));
    c.check("two vCPUs: destroy", r.is_ok(), format_args!("{r:?}"));
}

/// The lifecycles of this scenario: each guest prints, pings and powers off; the first exit
/// handler also tries to unshare the running vCPU's structure (`EBUSY`).
struct Guests {
    mem: [SlotMem; SLOTS],
    busy_checked: bool,
}

impl Cycle for Guests {
    fn create(&mut self, slot: usize, id: u64) -> Result<Vm, HcallError> {
        vm::create(slot, self.mem[slot], id, PINGS, 0)
    }

    fn run(&mut self, vm: &Vm, f: &mut Failures) {
        let echo = vm.id < 2 || vm.id.is_multiple_of(250);
        let mut busy_wrong = false;
        let busy_checked = &mut self.busy_checked;
        let r = vm::run(vm, echo, |vm, _| {
            if !*busy_checked {
                *busy_checked = true;
                let r = vm::unshare(vm::structs(vm.slot).vcpu.shared());
                println!("guests: unshare of the vCPU structure from its exit handler: {r:?}");
                busy_wrong = r != Err(HcallError::Errno(Error::Busy));
            }
        });
        if busy_wrong {
            f.note("unshare from the exit handler", vm.id, &"not EBUSY");
        }
        if r != RunEnd::PowerOff {
            f.note("run", vm.id, &r);
        }
    }
}

/// Runs the scenario.
pub fn run(c: &mut Checks, env: &mut Env) {
    if !have_guest_image(c) {
        return;
    }
    let n = cycles();
    let start = vm::leaks();
    println!("guests: EL2 before: {start:?}");
    let mem: [SlotMem; SLOTS] = core::array::from_fn(|_| SlotMem::alloc(env));
    bad_inputs(c, &mem, env);
    vgic(c, &mem);
    preemption(c, &mem, env);
    two_vcpus(c, &mem);

    let idle0 = vm::idle_exits();
    let t0 = cpu::ticks();
    let mut f = Failures::new("guests");
    let mut cycle = Guests {
        mem,
        busy_checked: false,
    };
    let done = run_blocks(n, &mut cycle, &mut f);
    let (failures, busy_checked) = (f.count, cycle.busy_checked);
    let ms = cpu::ms(cpu::ticks() - t0);
    c.check(
        "guest lifecycles",
        failures == 0,
        format_args!("{done} created, run to power-off and destroyed, {failures} failures"),
    );
    let lost = vm::host_fp_lost();
    c.check(
        "host FP/SIMD registers survive every run",
        lost == 0,
        format_args!("{lost} runs lost the host's d16"),
    );
    let idle = vm::idle_exits() - idle0;
    c.check(
        "each guest's WFI came back as an IDLE exit",
        idle == done,
        format_args!("{idle} IDLE exits for {done} guests"),
    );
    c.check(
        "unshare from the exit handler",
        busy_checked,
        format_args!("EBUSY while the VM lives"),
    );
    let end = vm::leaks();
    let d = |a: u64, b: u64| a as i64 - b as i64;
    println!(
        "PKVM-GUESTS cycles={done} time_ms={ms} leak: hyp_mapped_host_pages={:+} \
         donated_pages={} shared_pages={} guest_shared_pages={} pinned_pages={} live_vms={} \
         pool_free_delta={:+}",
        d(end.hyp_mapped, start.hyp_mapped),
        end.donated,
        end.shared,
        end.guest_shared,
        end.pinned,
        end.vms,
        d(end.pool_free, start.pool_free),
    );
    c.check(
        "leak report all zero",
        end == start && end.donated == 0 && end.shared == 0 && end.vms == 0,
        format_args!("before {start:?}, after {end:?}"),
    );
}
