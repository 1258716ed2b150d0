//! The `protected` scenario: the test guest as a **protected VM**, N times (`pkvm.guests=N`,
//! default 1,000; four alive at once in part of the run): its RAM is donated, it speaks pKVM's
//! guest-side ABI (discovery, a bounce buffer it shares to print through, a page it
//! relinquishes), and the host checks what it must never see and what it must get back:
//!
//! - before the run, a read of the guest's RAM aborts (EL2 injects it; the host survives it
//!   through a probe);
//! - after the run, exactly one page of the guest's RAM is readable — the one it relinquished
//!   — and it reads zero; the bounce buffer, unshared again, aborts;
//! - after teardown, every page of the guest's RAM is the host's again and reads zero;
//! - at the end, EL2's leak counters are back where they started (no VM, no page owned by a
//!   guest, nothing pinned or shared).

use crate::checks::Checks;
use crate::env::Env;
use crate::fault::probe_read;
use crate::pkvm::{HcallError, PKVM};
use crate::scenarios::guests;
use crate::scenarios::lifecycles::{Cycle, Failures, expect_err, have_guest_image, run_blocks};
use crate::vm::{self, RunEnd, SLOTS, SlotMem, Vm, flags};
use pkvm_abi::guest::{GUEST_RAM_IPA, GUEST_RAM_PAGES, PROT_RWX};
use pkvm_abi::{Error, PAGE_SHIFT, PAGE_SIZE};

/// Pings each guest makes.
const PINGS: u64 = 2;
/// Memcache of a protected VM: its stage-2 root and tables, and its vCPU's private state.
pub const PVM_MEMCACHE_PAGES: u64 = 8;

/// Reads the host can make of the guest's RAM pages: `(readable pages, of which zero)`,
/// every word read through a probe (an injected abort is counted, not fatal).
fn readable_pages(vm: &Vm) -> (u64, u64) {
    let (mut readable, mut zero) = (0, 0);
    for page in 0..GUEST_RAM_PAGES {
        let pa = (vm.ram_pfn + page) << PAGE_SHIFT;
        let mut all_zero = true;
        let mut ok = true;
        for off in (0..PAGE_SIZE).step_by(8) {
            // SAFETY: an aligned word of the guest slot's RAM, which the host allocated and
            // holds no reference to; reading has no side effect (an abort is reported).
            match unsafe { probe_read(pa + off) } {
                Ok(v) => all_zero &= v == 0,
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            readable += 1;
            zero += u64::from(all_zero);
        }
    }
    (readable, zero)
}

/// The refused inputs of protected VMs on the real machine (the simulator's catalogue has the
/// rest): each must fail with its errno and leave EL2 working.
fn bad_inputs(c: &mut Checks, mem: &[SlotMem; SLOTS]) {
    let vm = match vm::create_with(true, 0, mem[0], 0, (0, flags::QUIET)) {
        Ok(vm) => vm,
        Err(e) => {
            c.check("protected: create", false, format_args!("{e}"));
            return;
        }
    };
    let h = vm.handle;
    let gfn = GUEST_RAM_IPA >> PAGE_SHIFT;
    expect_err(
        c,
        "share a host page into a protected VM",
        PKVM.share_guest(h, mem[1].ram_pfn, gfn + 0x100, 1, PROT_RWX),
        Error::Perm,
    );
    expect_err(
        c,
        "donate a page already donated to the VM",
        PKVM.donate_guest(h, mem[0].ram_pfn, gfn + 0x100, 1),
        Error::Perm,
    );
    expect_err(
        c,
        "donate to an IPA already mapped",
        PKVM.donate_guest(h, mem[1].ram_pfn, gfn, 1),
        Error::Perm,
    );
    expect_err(
        c,
        "donate the VM's own memcache (EL2's)",
        PKVM.donate_guest(h, mem[0].memcache_pfn, gfn + 0x100, 1),
        Error::Perm,
    );
    expect_err(c, "reclaim from a live VM", PKVM.vm_reclaim(h), Error::Perm);
    expect_err(
        c,
        "share_hyp of a page donated to a guest",
        PKVM.share_hyp(mem[0].ram_pfn, 1),
        Error::Perm,
    );
    let r = vm::run(&vm, false, |_, _| {});
    c.check(
        "protected guest runs after the refused inputs",
        r == RunEnd::PowerOff,
        format_args!("{r:?}"),
    );
    let r = vm::destroy(vm);
    c.check("protected: destroy", r.is_ok(), format_args!("{r:?}"));
    expect_err(c, "reclaim after the VM is gone", PKVM.vm_reclaim(h), Error::NoEnt);
}

/// The lifecycles of this scenario, with what each checks of the host's view.
struct Protected {
    mem: [SlotMem; SLOTS],
    /// Runs before which a host read of the donated RAM aborted.
    aborted_before: u64,
    /// Runs after which exactly the relinquished page was readable, and zero.
    relinquished_zero: u64,
    /// Teardowns after which every page of the guest's RAM read zero.
    zero_after: u64,
}

impl Cycle for Protected {
    fn create(&mut self, slot: usize, id: u64) -> Result<Vm, HcallError> {
        vm::create_with(true, slot, self.mem[slot], id, (PINGS, flags::PROTECTED_ABI))
    }

    fn run(&mut self, vm: &Vm, f: &mut Failures) {
        // The host cannot read what it donated.
        // SAFETY: as in `readable_pages`.
        match unsafe { probe_read(vm.ram_pfn << PAGE_SHIFT) } {
            Err(a) if a.is_injected_data_abort() => self.aborted_before += 1,
            r => f.note("read of donated RAM", vm.id, &r),
        }
        let echo = vm.id < 2 || vm.id.is_multiple_of(250);
        let r = vm::run(vm, echo, |_, _| {});
        if r != RunEnd::PowerOff {
            f.note("run", vm.id, &r);
        }
        // Only the relinquished page came back, zeroed.
        match readable_pages(vm) {
            (1, 1) => self.relinquished_zero += 1,
            r => f.note("pages readable after the run (readable, zero)", vm.id, &r),
        }
    }

    fn after_teardown(&mut self, vm: &Vm, f: &mut Failures) {
        // Everything back, and zero.
        match readable_pages(vm) {
            (r, z) if r == GUEST_RAM_PAGES && z == GUEST_RAM_PAGES => self.zero_after += 1,
            r => f.note("pages after teardown (readable, zero)", vm.id, &r),
        }
    }
}

/// Runs the scenario.
pub fn run(c: &mut Checks, env: &mut Env) {
    if !have_guest_image(c) {
        return;
    }
    let n = guests::cycles();
    let start = vm::leaks();
    println!("protected: EL2 before: {start:?}");
    // 8-page memcaches: the stage-2 tables and the page EL2 keeps each vCPU's state in.
    let mem: [SlotMem; SLOTS] =
        core::array::from_fn(|_| SlotMem::with_memcache(env, PVM_MEMCACHE_PAGES));
    bad_inputs(c, &mem);

    let printed0 = vm::printed();
    let mut f = Failures::new("protected");
    let mut cycle = Protected {
        mem,
        aborted_before: 0,
        relinquished_zero: 0,
        zero_after: 0,
    };
    let done = run_blocks(n, &mut cycle, &mut f);
    let failures = f.count;
    let Protected {
        aborted_before,
        relinquished_zero,
        zero_after,
        ..
    } = cycle;
    let printed = vm::printed() - printed0;
    c.check(
        "protected lifecycles",
        failures == 0,
        format_args!("{done} protected VMs created, run to power-off and reclaimed, {failures} failures"),
    );
    c.check(
        "the host cannot read donated memory (injected abort)",
        aborted_before == done,
        format_args!("{aborted_before} of {done}"),
    );
    c.check(
        "each guest printed through its shared page",
        printed == done,
        format_args!("{printed} lines for {done} guests ({} refused)", vm::print_refused()),
    );
    c.check(
        "relinquished pages reach the host zeroed, nothing else is readable",
        relinquished_zero == done,
        format_args!("{relinquished_zero} of {done}"),
    );
    c.check(
        "after teardown every guest page is the host's and zero",
        zero_after == done,
        format_args!("{zero_after} of {done}"),
    );
    let end = vm::leaks();
    let d = |a: u64, b: u64| a as i64 - b as i64;
    println!(
        "PKVM-PROTECTED cycles={done} leak: guest_owned_pages={} hyp_mapped_host_pages={:+} \
         donated_pages={} shared_pages={} pinned_pages={} live_vms={} pool_free_delta={:+}",
        end.guest_owned,
        d(end.hyp_mapped, start.hyp_mapped),
        end.donated,
        end.shared,
        end.pinned,
        end.vms,
        d(end.pool_free, start.pool_free),
    );
    c.check(
        "leak report all zero",
        end == start && end.guest_owned == 0 && end.vms == 0 && end.shared == 0,
        format_args!("before {start:?}, after {end:?}"),
    );
}
