//! Guests from the host's side: the VM lifecycle API (create, load image, add vCPU, run until
//! exit, destroy) over the VM hypercalls, and the `guests` scenario — the seed's "spawn and
//! power off a guest" test at scale, with a leak report.
//!
//! # Where the structures live
//!
//! The VM descriptor, vCPU state and FP/SIMD area of **two** guests share one page
//! ([`PairPage`]), on purpose: each structure is shared with EL2 by `share_hyp(&obj)` (the
//! seed's refcounted share), so a page's count goes up to 6 while both guests live, and the
//! page leaves EL2's stage-1 only when the last structure on it is unshared. EL2 pins each
//! structure while the VM exists (unshare → `EBUSY`); teardown unpins, then the host unshares.
//!
//! Guest RAM ([`GUEST_RAM_PAGES`] pages) and the stage-2 memcache ([`VM_MEMCACHE_PAGES`]
//! pages) of each slot are allocated once and reused: teardown gives both back to the host.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::checks::Checks;
use crate::env::Env;
use crate::hvc::hvc;
use crate::pkvm::{self, HcallError};
use pkvm_abi::guest::{
    FpState, GUEST_CONSOLE_IPA, GUEST_HVC_PING, GUEST_ID_REG_IPA, GUEST_RAM_IPA, GUEST_RAM_PAGES,
    PROT_RWX, PSTATE_EL1H_DAIF, VM_MEMCACHE_PAGES, VcpuState, VmDesc, exit,
};
use pkvm_abi::{
    Error, HostHcall, PAGE_SHIFT, PAGE_SIZE, SMCCC_SUCCESS, Stat, decode_result, hvc_fid, psci,
};

/// The guest image `xtask` built (`guest/`), embedded by `host/build.rs`.
static GUEST_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest.bin"));

/// Guests alive at once in the concurrent part of the run.
pub const SLOTS: usize = 4;
/// Default number of lifecycles (`pkvm.guests=N` overrides).
pub const DEFAULT_CYCLES: u64 = 1000;
/// Pings each guest makes (hypercall exits with FP state checked across them).
const PINGS: u64 = 2;

static CYCLES: AtomicU64 = AtomicU64::new(DEFAULT_CYCLES);
/// IDLE exits (trapped `WFI`) seen by [`run`].
static IDLE_EXITS: AtomicU64 = AtomicU64::new(0);

/// Sets the number of lifecycles (`pkvm.guests=N`).
pub fn set_cycles(n: u64) {
    CYCLES.store(n, Ordering::Relaxed);
}

/// The structures of two guests, in one page.
#[repr(C, align(4096))]
pub struct PairPage {
    vcpu: [VcpuState; 2],
    fp: [FpState; 2],
    desc: [VmDesc; 2],
}

const _: () = assert!(size_of::<PairPage>() == PAGE_SIZE as usize);

/// Zero-initialised in `.bss`; only reached through raw pointers.
static mut PAIRS: [PairPage; SLOTS / 2] = [const {
    PairPage {
        vcpu: [VcpuState {
            regs: [0; 31],
            pc: 0,
            pstate: 0,
            sys: [0; pkvm_abi::guest::NR_SYSREGS],
            exit: pkvm_abi::guest::VcpuExit {
                reason: 0,
                esr: 0,
                far: 0,
                ipa: 0,
                mmio_size: 0,
                mmio_write: 0,
                mmio_data: 0,
                code: 0,
            },
        }; 2],
        fp: [FpState {
            v: [[0; 2]; 32],
            fpsr: 0,
            fpcr: 0,
        }; 2],
        desc: [VmDesc {
            ipa_bits: 0,
            nr_vcpus: 0,
            host_cookie: 0,
            reserved: 0,
        }; 2],
    }
}; SLOTS / 2];

fn desc_ptr(slot: usize) -> *mut VmDesc {
    // SAFETY: only the address is computed; `slot < SLOTS`.
    unsafe { &raw mut PAIRS[slot / 2].desc[slot % 2] }
}
fn vcpu_ptr(slot: usize) -> *mut VcpuState {
    // SAFETY: as above.
    unsafe { &raw mut PAIRS[slot / 2].vcpu[slot % 2] }
}
fn fp_ptr(slot: usize) -> *mut FpState {
    // SAFETY: as above.
    unsafe { &raw mut PAIRS[slot / 2].fp[slot % 2] }
}

/// Memory of one guest slot, allocated once.
#[derive(Clone, Copy, Debug)]
pub struct SlotMem {
    /// First pfn of the guest's RAM.
    pub ram_pfn: u64,
    /// First pfn of the memcache.
    pub memcache_pfn: u64,
}

impl SlotMem {
    /// Allocates a slot's RAM and memcache from the host's free memory.
    pub fn alloc(env: &mut Env) -> Self {
        SlotMem {
            ram_pfn: env.pages(GUEST_RAM_PAGES, PAGE_SIZE) >> PAGE_SHIFT,
            // Aligned to its size: EL2 builds one buddy block over it then, wherever the
            // host image ends (which keeps the VM-lifecycle benchmark independent of it).
            memcache_pfn: env.pages(VM_MEMCACHE_PAGES, VM_MEMCACHE_PAGES * PAGE_SIZE)
                >> PAGE_SHIFT,
        }
    }
}

/// A hypercall with up to five arguments: `Ok(x2)`.
fn call5(id: HostHcall, a: [u64; 5]) -> Result<u64, HcallError> {
    let [x0, x1, x2, _] = hvc(hvc_fid(id), [a[0], a[1], a[2], a[3], a[4], 0]);
    if x0 != SMCCC_SUCCESS {
        return Err(HcallError::NotSupported(x0));
    }
    decode_result(x1).map_err(HcallError::Errno)?;
    Ok(x2)
}

/// A live VM.
#[derive(Debug)]
pub struct Vm {
    /// EL2's handle.
    pub handle: u64,
    /// Which slot's structures and memory it uses.
    pub slot: usize,
    /// Its cycle number.
    pub id: u64,
}

/// Guest options (the guest's `x2`).
pub mod flags {
    /// Skip the console, the id read, the memory test and the WFI; pings do not use FP.
    pub const QUIET: u64 = 1;
    /// Pings keep a pattern in `d16` across the exit even when quiet.
    pub const FP_PINGS: u64 = 2;
    /// Hostile mode: the guest performs hostile test `test` (one of [`super::hostile`]).
    pub const fn hostile(test: u64) -> u64 {
        (test & 0xff) << 8
    }
}

pub use pkvm_abi::guest::hostile;

/// Creates a VM in `slot`: shares its descriptor, donates the memcache, adds the vCPU (state
/// and FP area shared), loads the guest image and shares the guest RAM into it.
///
/// # Errors
/// The first hypercall that failed (everything done so far is undone by the caller's
/// [`destroy`], or here for the structures shared before `vm_init`).
pub fn create(
    slot: usize,
    mem: SlotMem,
    id: u64,
    loops: u64,
    guest_flags: u64,
) -> Result<Vm, HcallError> {
    let (desc, vcpu, fp) = (desc_ptr(slot), vcpu_ptr(slot), fp_ptr(slot));
    // SAFETY: the slot's structures are not shared with EL2 right now (the previous VM of this
    // slot was destroyed and they were unshared), so the host alone writes them.
    unsafe {
        desc.write_volatile(VmDesc {
            ipa_bits: 32,
            nr_vcpus: 1,
            host_cookie: id,
            reserved: 0,
        });
        let mut st = VcpuState::default();
        st.regs[0] = id;
        st.regs[1] = loops;
        st.regs[2] = guest_flags;
        st.pc = GUEST_RAM_IPA;
        st.pstate = PSTATE_EL1H_DAIF;
        vcpu.write_volatile(st);
        fp.write_volatile(FpState::default());
    }
    load_image(mem);
    // SAFETY: only the references' addresses and sizes are used by `share_hyp`.
    let (d, v, f) = unsafe { (&*desc, &*vcpu, &*fp) };
    pkvm::share_hyp(d)?;
    let handle = match call5(
        HostHcall::VmInit,
        [desc as u64, mem.memcache_pfn, VM_MEMCACHE_PAGES, 0, 0],
    ) {
        Ok(h) => h,
        Err(e) => {
            let _ = pkvm::unshare_hyp(d);
            return Err(e);
        }
    };
    let vm = Vm { handle, slot, id };
    let r = pkvm::share_hyp(v)
        .and_then(|()| pkvm::share_hyp(f))
        .and_then(|()| call5(HostHcall::VcpuInit, [handle, vcpu as u64, fp as u64, 0, 0]))
        .and_then(|_| {
            call5(
                HostHcall::HostShareGuest,
                [
                    handle,
                    mem.ram_pfn,
                    GUEST_RAM_IPA >> PAGE_SHIFT,
                    GUEST_RAM_PAGES,
                    PROT_RWX,
                ],
            )
        });
    match r {
        Ok(_) => Ok(vm),
        Err(e) => {
            let _ = destroy(vm);
            Err(e)
        }
    }
}

/// Copies the guest image to the start of the slot's RAM and zeroes the rest.
fn load_image(mem: SlotMem) {
    let base = (mem.ram_pfn << PAGE_SHIFT) as *mut u8;
    let len = (GUEST_RAM_PAGES * PAGE_SIZE) as usize;
    // SAFETY: the slot's RAM is host memory from the allocator, not shared with anyone now
    // (the previous guest's teardown gave it back), identity-mapped read-write.
    unsafe {
        core::ptr::copy_nonoverlapping(GUEST_IMAGE.as_ptr(), base, GUEST_IMAGE.len());
        core::ptr::write_bytes(base.add(GUEST_IMAGE.len()), 0, len - GUEST_IMAGE.len());
    }
}

/// Destroys a VM: teardown at EL2 (which unpins its structures), then the host unshares
/// them ([`release`]).
///
/// # Errors
/// The first failure (the rest is still attempted).
pub fn destroy(vm: Vm) -> Result<(), HcallError> {
    let slot = vm.slot;
    teardown(vm).and(release(slot))
}

/// Tears a VM down at EL2: every guest page goes back to the host, the memcache comes back
/// zeroed, the structures are unpinned.
///
/// # Errors
/// The hypercall's error.
pub fn teardown(vm: Vm) -> Result<(), HcallError> {
    call5(HostHcall::VmTeardown, [vm.handle, 0, 0, 0, 0]).map(|_| ())
}

/// Unshares a slot's structures from EL2 (after its VM's teardown).
///
/// Pins are per page: while another live VM's structure on the same page is pinned, the page
/// cannot be unshared (`EBUSY`), so with two guests per page the host releases a page's
/// structures once both guests are torn down.
///
/// # Errors
/// The first failure (the rest is still attempted).
pub fn release(slot: usize) -> Result<(), HcallError> {
    // SAFETY: only the addresses and sizes are used.
    let (d, v, f) = unsafe { (&*desc_ptr(slot), &*vcpu_ptr(slot), &*fp_ptr(slot)) };
    let r2 = pkvm::unshare_hyp(f);
    let r3 = pkvm::unshare_hyp(v);
    let r4 = pkvm::unshare_hyp(d);
    r2.and(r3).and(r4)
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// PSCI SYSTEM_OFF.
    PowerOff,
    /// PSCI SYSTEM_RESET (the test guest's way of reporting a failed check).
    Reset,
    /// A fault exit: ESR.
    Fault(u64),
    /// A run hypercall failed.
    Error(HcallError),
}

/// One `VcpuRun`: the exit reason.
///
/// # Errors
/// The hypercall's error.
pub fn run_once(vm: &Vm) -> Result<u64, HcallError> {
    call5(HostHcall::VcpuRun, [vm.handle, 0, 0, 0, 0])
}

/// Answers a ping hypercall exit the way [`run`] does (`x0 = x1 + 1`).
pub fn answer_ping(vm: &Vm, ping: u64) {
    // SAFETY: the vCPU is not running (no run hypercall in progress); the host owns the
    // structure's contents.
    let st = unsafe { &mut *vcpu_ptr(vm.slot) };
    if st.regs[0] == ping {
        st.regs[0] = st.regs[1] + 1;
    }
}

/// `VcpuRun` with a pattern in the host's own `d16` across the hypercall: `Ok((reason,
/// d16 survived))`. The guest puts its own pattern in `d16`, so a world switch that failed to
/// restore the host's FP registers shows up here.
fn run_once_fp_checked(vm: &Vm) -> Result<(u64, bool), HcallError> {
    let pattern = 0x0f0f_1234_5678_0000 ^ vm.id;
    let (x0, x1, x2, back): (u64, u64, u64, u64);
    // SAFETY: as `hvc::hvc` (SMCCC: only x0..x3 change; x4..x17 declared clobbered), plus
    // `v16`, which the block writes and reads itself.
    unsafe {
        core::arch::asm!(
            "fmov d16, {p}",
            "hvc #0",
            "fmov {b}, d16",
            p = in(reg) pattern,
            b = out(reg) back,
            inout("x0") hvc_fid(HostHcall::VcpuRun) => x0,
            inout("x1") vm.handle => x1,
            inout("x2") 0u64 => x2,
            inout("x3") 0u64 => _,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _, out("x9") _,
            out("x10") _, out("x11") _, out("x12") _, out("x13") _, out("x14") _,
            out("x15") _, out("x16") _, out("x17") _, out("v16") _,
            options(nostack)
        );
    }
    if x0 != SMCCC_SUCCESS {
        return Err(HcallError::NotSupported(x0));
    }
    decode_result(x1).map_err(HcallError::Errno)?;
    Ok((x2, back == pattern))
}

/// Runs in which the host's `d16` did not survive (must stay 0).
static HOST_FP_LOST: AtomicU64 = AtomicU64::new(0);

/// Console line buffer for one guest.
struct Console {
    line: [u8; 80],
    len: usize,
    echo: bool,
}

impl Console {
    fn put(&mut self, c: u8) {
        if c != b'\n' && self.len < self.line.len() {
            self.line[self.len] = c;
            self.len += 1;
        }
        if c == b'\n' || self.len == self.line.len() {
            if self.echo {
                let s = core::str::from_utf8(&self.line[..self.len]).unwrap_or("<binary>");
                println!("  | {s}");
            }
            self.len = 0;
        }
    }
}

/// Runs the vCPU until it powers off or faults, emulating the console and the id register
/// and answering pings. `on_exit` is called after every exit (the scenario tries an unshare
/// of the running vCPU's structure there).
pub fn run(vm: &Vm, echo: bool, mut on_exit: impl FnMut(&Vm, u64)) -> RunEnd {
    let vcpu = vcpu_ptr(vm.slot);
    let mut con = Console {
        line: [0; 80],
        len: 0,
        echo,
    };
    loop {
        let reason = match run_once_fp_checked(vm) {
            Ok((r, fp_ok)) => {
                if !fp_ok {
                    HOST_FP_LOST.fetch_add(1, Ordering::Relaxed);
                }
                r
            }
            Err(e) => return RunEnd::Error(e),
        };
        on_exit(vm, reason);
        // SAFETY: the vCPU structure is host memory; EL2 is not running this vCPU now (the
        // run hypercall returned), so reading and writing it races with nobody.
        let st = unsafe { &mut *vcpu };
        let ex = st.exit;
        match reason {
            exit::MMIO if ex.mmio_write == 1 && ex.ipa == GUEST_CONSOLE_IPA => {
                con.put(ex.mmio_data as u8);
            }
            exit::MMIO if ex.mmio_write == 0 && ex.ipa == GUEST_ID_REG_IPA => {
                st.exit.mmio_data = vm.id;
            }
            exit::MMIO => st.exit.mmio_data = 0,
            exit::HYPERCALL if st.regs[0] == GUEST_HVC_PING => st.regs[0] = st.regs[1] + 1,
            exit::HYPERCALL => st.regs[0] = u64::MAX,
            exit::IRQ => {}
            exit::IDLE => {
                IDLE_EXITS.fetch_add(1, Ordering::Relaxed);
            }
            exit::SYSTEM_EVENT if ex.code == u64::from(psci::SYSTEM_OFF) => {
                return RunEnd::PowerOff;
            }
            exit::SYSTEM_EVENT => return RunEnd::Reset,
            _ => return RunEnd::Fault(ex.esr),
        }
    }
}

fn stat(s: Stat) -> u64 {
    pkvm::stat(s).unwrap_or(u64::MAX)
}

/// EL2 counters that must come back to their start values (the leak report of the `guests`
/// and `hostile` scenarios).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaks {
    /// Host pages EL2's stage-1 maps.
    pub hyp_mapped: u64,
    /// Free pages in EL2's pool.
    pub pool_free: u64,
    /// Pages shared with EL2.
    pub shared: u64,
    /// Pages donated to EL2.
    pub donated: u64,
    /// Pages shared with a guest.
    pub guest_shared: u64,
    /// Pinned pages.
    pub pinned: u64,
    /// Live VMs.
    pub vms: u64,
}

/// EL2's leak counters now.
pub fn leaks() -> Leaks {
    Leaks {
        hyp_mapped: stat(Stat::HypMappedHostPages),
        pool_free: stat(Stat::PoolFreePages),
        shared: stat(Stat::SharedPages),
        donated: stat(Stat::DonatedPages),
        guest_shared: stat(Stat::GuestSharedPages),
        pinned: stat(Stat::PinnedPages),
        vms: stat(Stat::LiveVms),
    }
}

fn counter() -> (u64, u64) {
    let (c, f): (u64, u64);
    // SAFETY: reading the virtual counter and its frequency has no side effect.
    unsafe {
        core::arch::asm!("isb", "mrs {c}, cntvct_el0", "mrs {f}, cntfrq_el0", c = out(reg) c, f = out(reg) f,
                         options(nomem, nostack))
    };
    (c, f)
}

fn expect_err(c: &mut Checks, name: &'static str, r: Result<u64, HcallError>, want: Error) {
    c.check(
        name,
        r == Err(HcallError::Errno(want)),
        format_args!("got {r:?}, want {want}"),
    );
}

/// The bad inputs, each a check (EL2 must refuse them and keep working).
fn bad_inputs(c: &mut Checks, mem: &[SlotMem; SLOTS], env: &mut Env) {
    let vm = match create(0, mem[0], 0, 0, flags::QUIET) {
        Ok(vm) => vm,
        Err(e) => {
            c.check("bad inputs: create", false, format_args!("{e}"));
            return;
        }
    };
    let h = vm.handle;
    // A page the host does not own: the slot's memcache (donated to EL2), EL2's own memory.
    expect_err(
        c,
        "share into a guest a page donated to EL2",
        call5(
            HostHcall::HostShareGuest,
            [h, mem[0].memcache_pfn, 0, 1, PROT_RWX],
        ),
        Error::Perm,
    );
    let el2 = env.el2_image().start >> PAGE_SHIFT;
    expect_err(
        c,
        "share into a guest EL2's memory",
        call5(HostHcall::HostShareGuest, [h, el2, 0, 1, PROT_RWX]),
        Error::Perm,
    );
    let p = env.pfn();
    expect_err(
        c,
        "gfn beyond the guest IPA space",
        call5(HostHcall::HostShareGuest, [h, p, 1 << 20, 1, PROT_RWX]),
        Error::Range,
    );
    expect_err(
        c,
        "gfn range crossing the end of the IPA space",
        call5(
            HostHcall::HostShareGuest,
            [h, p, (1 << 20) - 1, 2, PROT_RWX],
        ),
        Error::Range,
    );
    // Guest RAM is shared with the guest, not with EL2: share/unshare_hyp refused.
    let ram = mem[0].ram_pfn;
    expect_err(
        c,
        "share_hyp of a page shared with a guest",
        pkvm::share_hyp_pfns(ram, 1).map(|()| 0),
        Error::Perm,
    );
    expect_err(
        c,
        "unshare_hyp of a page shared with a guest",
        pkvm::unshare_hyp_pfns(ram, 1).map(|()| 0),
        Error::Perm,
    );
    expect_err(
        c,
        "share of a page already in the guest",
        call5(HostHcall::HostShareGuest, [h, ram, 0, 1, PROT_RWX]),
        Error::Perm,
    );
    // The vCPU structure is pinned while the VM lives.
    // SAFETY: only the address and size are used.
    let v = unsafe { &*vcpu_ptr(0) };
    expect_err(
        c,
        "unshare of a live vCPU structure",
        pkvm::unshare_hyp(v).map(|()| 0),
        Error::Busy,
    );
    // Corrupted PSTATE: AArch32, EL2h, a stray bit. Rejected; nothing runs.
    for bad in [0x10u64, 0x9, PSTATE_EL1H_DAIF | 1 << 20] {
        // SAFETY: the host owns the vCPU structure; EL2 reads it only inside a run.
        unsafe { (&raw mut (*vcpu_ptr(0)).pstate).write_volatile(bad) };
        expect_err(
            c,
            "vCPU with a corrupted PSTATE",
            run_once(&vm),
            Error::Inval,
        );
    }
    // SAFETY: as above.
    unsafe { (&raw mut (*vcpu_ptr(0)).pstate).write_volatile(PSTATE_EL1H_DAIF) };
    // A guest jumping to an address with no memory: an instruction abort, a fault exit.
    // SAFETY: as above.
    unsafe { (&raw mut (*vcpu_ptr(0)).pc).write_volatile(0x1000_0000) };
    let r = run(&vm, false, |_, _| {});
    c.check(
        "guest fetching from unmapped IPA: fault exit",
        matches!(r, RunEnd::Fault(esr) if esr >> 26 == 0x20),
        format_args!("{r:x?}"),
    );
    // SAFETY: as above.
    unsafe { (&raw mut (*vcpu_ptr(0)).pc).write_volatile(GUEST_RAM_IPA) };
    let r = run(&vm, false, |_, _| {});
    c.check(
        "guest runs after the refused inputs",
        r == RunEnd::PowerOff,
        format_args!("{r:?}"),
    );
    let h = vm.handle;
    let r = destroy(vm);
    c.check("destroy", r.is_ok(), format_args!("{r:?}"));
    expect_err(
        c,
        "teardown twice",
        call5(HostHcall::VmTeardown, [h, 0, 0, 0, 0]),
        Error::NoEnt,
    );
    expect_err(
        c,
        "run after teardown (vCPU structure since unshared)",
        call5(HostHcall::VcpuRun, [h, 0, 0, 0, 0]),
        Error::NoEnt,
    );
    expect_err(
        c,
        "VM init with a descriptor not shared",
        call5(
            HostHcall::VmInit,
            [
                desc_ptr(0) as u64,
                mem[0].memcache_pfn,
                VM_MEMCACHE_PAGES,
                0,
                0,
            ],
        ),
        Error::Perm,
    );
}

fn note(failures: &mut u64, what: &str, id: u64, detail: &dyn core::fmt::Debug) {
    *failures += 1;
    if *failures <= 5 {
        println!("guests: cycle {id}: {what}: {detail:?}");
    }
}

/// The `guests` scenario.
pub fn scenario(c: &mut Checks, env: &mut Env) {
    if GUEST_IMAGE.is_empty() {
        c.check(
            "guest image",
            false,
            format_args!("the host was built without PKVM_GUEST_BIN (use cargo xtask)"),
        );
        return;
    }
    let n = CYCLES.load(Ordering::Relaxed);
    let start = leaks();
    println!("guests: EL2 before: {start:?}");
    let mem: [SlotMem; SLOTS] = core::array::from_fn(|_| SlotMem::alloc(env));
    bad_inputs(c, &mem, env);

    // The main loop: blocks of 10 lifecycles, 6 one at a time, then 4 alive at once (two per
    // structure page).
    let idle0 = IDLE_EXITS.load(Ordering::Relaxed);
    let (t0, freq) = counter();
    let mut done = 0u64;
    let mut failures = 0u64;
    let mut busy_checked = false;
    while done < n {
        let batch = if done % 10 >= 6 { (n - done).min(4) } else { 1 };
        let mut live: [Option<Vm>; SLOTS] = [const { None }; SLOTS];
        for (i, l) in live.iter_mut().enumerate().take(batch as usize) {
            let slot = if batch == 1 { (done % 2) as usize } else { i };
            let id = done + i as u64;
            match create(slot, mem[slot], id, PINGS, 0) {
                Ok(vm) => *l = Some(vm),
                Err(e) => note(&mut failures, "create", id, &e),
            }
        }
        for vm in live.iter().flatten() {
            let echo = vm.id < 2 || vm.id % 250 == 0;
            let r = run(vm, echo, |vm, _| {
                if !busy_checked {
                    busy_checked = true;
                    // SAFETY: only the address and size are used.
                    let v = unsafe { &*vcpu_ptr(vm.slot) };
                    let r = pkvm::unshare_hyp(v);
                    println!("guests: unshare of the vCPU structure from its exit handler: {r:?}");
                    if r != Err(HcallError::Errno(Error::Busy)) {
                        failures += 1;
                    }
                }
            });
            if r != RunEnd::PowerOff {
                note(&mut failures, "run", vm.id, &r);
            }
        }
        // Tear down in a different order than created, then release the structures (a
        // structure page is pinned until both of its guests are torn down).
        let mut slots = [None; SLOTS];
        for i in [1, 0, 3, 2] {
            if let Some(vm) = live[i].take() {
                let id = vm.id;
                slots[i] = Some((vm.slot, id));
                if let Err(e) = teardown(vm) {
                    note(&mut failures, "teardown", id, &e);
                }
            }
        }
        for (slot, id) in slots.into_iter().flatten() {
            if let Err(e) = release(slot) {
                note(&mut failures, "release", id, &e);
            }
        }
        done += batch;
    }
    let (t1, _) = counter();
    let ms = (t1 - t0) * 1000 / freq.max(1);
    c.check(
        "guest lifecycles",
        failures == 0,
        format_args!("{done} created, run to power-off and destroyed, {failures} failures"),
    );
    let lost = HOST_FP_LOST.load(Ordering::Relaxed);
    c.check(
        "host FP/SIMD registers survive every run",
        lost == 0,
        format_args!("{lost} runs lost the host's d16"),
    );
    let idle = IDLE_EXITS.load(Ordering::Relaxed) - idle0;
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
    let end = leaks();
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

// ---------------------------------------------------------------------------------------
// Hostile guests: regression tests of what EL2 keeps from a guest.

/// Exception classes of the FAULT exits the hostile guests expect.
const EC_SYSREG: u64 = 0x18;
const EC_SVE: u64 = 0x19;
const EC_SME: u64 = 0x1d;

/// What a hostile test needs from the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Nothing,
    Sve,
    Sme,
    Pmu,
    /// FEAT_CSV2_2 (`ID_AA64PFR0_EL1.CSV2 >= 2`): `SCXTNUM_ELx` exist.
    Csv2_2,
    /// FEAT_LOR (`ID_AA64MMFR1_EL1.LO != 0`).
    Lor,
}

/// One hostile guest: its test, the FAULT EC it must end with (`None`: it must power off
/// cleanly), what it needs from the CPU, and its check's name.
struct HostileCase {
    test: u64,
    ec: Option<u64>,
    need: Need,
    name: &'static str,
}

const HOSTILE_CASES: &[HostileCase] = &[
    HostileCase {
        test: hostile::SVE_RDVL,
        ec: Some(EC_SVE),
        need: Need::Sve,
        name: "hostile guest: SVE (rdvl) after its first FP access traps (EC 0x19)",
    },
    HostileCase {
        test: hostile::SVE_PFALSE,
        ec: Some(EC_SVE),
        need: Need::Sve,
        name: "hostile guest: SVE (pfalse p7.b) after its first FP access traps (EC 0x19)",
    },
    HostileCase {
        test: hostile::SME_SMSTART,
        ec: Some(EC_SME),
        need: Need::Sme,
        name: "hostile guest: SME (smstart) after its first FP access traps (EC 0x1D)",
    },
    HostileCase {
        test: hostile::MDSCR_WRITE,
        ec: Some(EC_SYSREG),
        need: Need::Nothing,
        name: "hostile guest: MDSCR_EL1 write (KDE|MDE|SS) traps (EC 0x18)",
    },
    HostileCase {
        test: hostile::DBGBVR0_WRITE,
        ec: Some(EC_SYSREG),
        need: Need::Nothing,
        name: "hostile guest: DBGBVR0_EL1 write traps (EC 0x18)",
    },
    HostileCase {
        test: hostile::DBGBCR0_WRITE,
        ec: Some(EC_SYSREG),
        need: Need::Nothing,
        name: "hostile guest: DBGBCR0_EL1 write traps (EC 0x18)",
    },
    HostileCase {
        test: hostile::OSLAR_WRITE,
        ec: Some(EC_SYSREG),
        need: Need::Nothing,
        name: "hostile guest: OSLAR_EL1 (OS lock) write traps (EC 0x18)",
    },
    HostileCase {
        test: hostile::PMCR_READ,
        ec: Some(EC_SYSREG),
        need: Need::Pmu,
        name: "hostile guest: PMCR_EL0 read traps (EC 0x18)",
    },
    HostileCase {
        test: hostile::PMCCNTR_READ,
        ec: Some(EC_SYSREG),
        need: Need::Pmu,
        name: "hostile guest: PMCCNTR_EL0 read traps (EC 0x18)",
    },
    HostileCase {
        test: hostile::PMCR_WRITE,
        ec: Some(EC_SYSREG),
        need: Need::Pmu,
        name: "hostile guest: PMCR_EL0 write traps (EC 0x18)",
    },
    HostileCase {
        test: hostile::ACTLR_READ,
        ec: Some(EC_SYSREG),
        need: Need::Nothing,
        name: "hostile guest: ACTLR_EL1 read traps (EC 0x18)",
    },
    HostileCase {
        test: hostile::SCXTNUM_WRITE,
        ec: Some(EC_SYSREG),
        need: Need::Csv2_2,
        name: "hostile guest: SCXTNUM_EL1 write traps (EC 0x18)",
    },
    HostileCase {
        test: hostile::DC_ISW,
        ec: Some(EC_SYSREG),
        need: Need::Nothing,
        name: "hostile guest: DC ISW (set/way maintenance) traps (EC 0x18)",
    },
    HostileCase {
        test: hostile::LORID_READ,
        ec: Some(EC_SYSREG),
        need: Need::Lor,
        name: "hostile guest: LORID_EL1 read traps (EC 0x18)",
    },
    HostileCase {
        test: hostile::CSSELR_SWITCH,
        ec: None,
        need: Need::Nothing,
        name: "hostile guest: its CSSELR_EL1 survives an exit (switched) and it powers off",
    },
    HostileCase {
        test: hostile::TPIDR2_SWITCH,
        ec: None,
        need: Need::Sme,
        name: "hostile guest: its TPIDR2_EL0 survives an exit (switched) and it powers off",
    },
];

/// The CPU features the hostile tests depend on, from the ID registers.
#[derive(Clone, Copy, Debug)]
struct CpuFeatures {
    sve: bool,
    sme: bool,
    pmu: bool,
    csv2_2: bool,
    lor: bool,
}

impl CpuFeatures {
    fn read() -> Self {
        use aarch64_cpu::registers::{
            ID_AA64MMFR1_EL1, ID_AA64PFR0_EL1, ID_AA64PFR1_EL1, Readable,
        };
        let field = |r: u64, shift: u32| (r >> shift) & 0xf;
        let (pfr0, pfr1, mmfr1) = (
            ID_AA64PFR0_EL1.get(),
            ID_AA64PFR1_EL1.get(),
            ID_AA64MMFR1_EL1.get(),
        );
        CpuFeatures {
            sve: field(pfr0, 32) != 0,
            sme: field(pfr1, 24) != 0,
            pmu: crate::pmu::available(),
            csv2_2: field(pfr0, 56) >= 2,
            lor: field(mmfr1, 16) != 0,
        }
    }

    /// `None` if the CPU has what `need` asks for, else the missing feature's name.
    fn missing(&self, need: Need) -> Option<&'static str> {
        match need {
            Need::Nothing => None,
            Need::Sve => (!self.sve).then_some("SVE"),
            Need::Sme => (!self.sme).then_some("SME"),
            Need::Pmu => (!self.pmu).then_some("PMUv3"),
            Need::Csv2_2 => (!self.csv2_2).then_some("FEAT_CSV2_2 (SCXTNUM_EL1)"),
            Need::Lor => (!self.lor).then_some("FEAT_LOR"),
        }
    }
}

/// Accessors of the host's own system registers that the hostile guests go for. The host
/// owns them (EL2 traps none of them for the host: `MDCR_EL2` TDA/TDOSA/TPM/TPMCR clear, no
/// TSC-like trap for `CSSELR_EL1`, `TPIDR2_EL0` untrapped with SME).
macro_rules! host_sysreg {
    ($(#[$m:meta])* $get:ident, $set:ident, $reg:literal) => {
        $(#[$m])*
        fn $get() -> u64 {
            let v: u64;
            // SAFETY: the register exists on this CPU (callers check the feature where it is
            // optional) and is not trapped for the host; reading it has no side effect.
            unsafe { core::arch::asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nomem, nostack)) };
            v
        }
        $(#[$m])*
        fn $set(v: u64) {
            // SAFETY: as above; the host writes only its own earlier value or one that
            // affects nothing it relies on (a disabled breakpoint, EL0 DCC trap, a cache
            // selection, a thread register, the PMU's DP bit, the OS lock it does not use).
            unsafe {
                core::arch::asm!(concat!("msr ", $reg, ", {}"), "isb", in(reg) v, options(nomem, nostack))
            };
        }
    };
}

host_sysreg!(mdscr, set_mdscr, "mdscr_el1");
host_sysreg!(csselr, set_csselr, "csselr_el1");
host_sysreg!(
    /// `TPIDR2_EL0`: only with SME.
    tpidr2,
    set_tpidr2,
    "S3_3_C13_C0_5"
);
host_sysreg!(dbgbvr0, set_dbgbvr0, "dbgbvr0_el1");
host_sysreg!(dbgbcr0, set_dbgbcr0, "dbgbcr0_el1");
host_sysreg!(
    /// `PMCR_EL0`: only with a PMUv3.
    pmcr,
    set_pmcr,
    "pmcr_el0"
);

/// `OSLSR_EL1.OSLK`: the OS lock.
fn os_lock() -> u64 {
    let v: u64;
    // SAFETY: OSLSR_EL1 always exists in AArch64 and is not trapped for the host; a read has
    // no side effect.
    unsafe { core::arch::asm!("mrs {}, oslsr_el1", out(reg) v, options(nomem, nostack)) };
    (v >> 1) & 1
}

/// Sets the OS lock to `lk` (0 or 1).
fn set_os_lock(lk: u64) {
    // SAFETY: OSLAR_EL1 always exists and is not trapped for the host; the OS lock only gates
    // debug exceptions and external debug, neither of which the host uses.
    unsafe { core::arch::asm!("msr oslar_el1, {}", "isb", in(reg) lk, options(nomem, nostack)) };
}

/// `MDSCR_EL1.TDCC`: EL0 access to the debug communication channel traps (the host has no
/// EL0, so it is a harmless non-zero value for the host's `MDSCR_EL1`).
const MDSCR_TDCC: u64 = 1 << 12;
/// `PMCR_EL0` bits: P and C (write-only resets), DP (cycle counter disabled where event
/// counting is prohibited).
const PMCR_P: u64 = 1 << 1;
const PMCR_C: u64 = 1 << 2;
const PMCR_DP: u64 = 1 << 5;
/// The host's values while the hostile guests run, and the guests' own.
const HOST_CSSELR: u64 = 0;
const HOST_TPIDR2: u64 = 0x7e57_0000_7091_d200;
const GUEST_TPIDR2: u64 = 0x6b6b_1111_2222_3333;
/// A disabled breakpoint for the host (E = 0), and the guest's armed one: enabled (E), at EL1
/// and EL0 (PMC = 0b11), all bytes (BAS = 0xf).
const HOST_DBGBVR0: u64 = 0x1234_5678;
const HOST_DBGBCR0: u64 = 0;
const GUEST_DBGBVR0: u64 = 0x7777_0000;
const GUEST_DBGBCR0: u64 = 0x1e7;

/// The host's registers the hostile guests must not change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HostRegs {
    mdscr: u64,
    csselr: u64,
    /// With SME.
    tpidr2: Option<u64>,
    dbgbvr0: u64,
    dbgbcr0: u64,
    os_lock: u64,
    /// With a PMU.
    pmcr: Option<u64>,
}

impl HostRegs {
    fn read(cpu: &CpuFeatures) -> Self {
        HostRegs {
            mdscr: mdscr(),
            csselr: csselr(),
            tpidr2: cpu.sme.then(tpidr2),
            dbgbvr0: dbgbvr0(),
            dbgbcr0: dbgbcr0(),
            os_lock: os_lock(),
            pmcr: cpu.pmu.then(pmcr),
        }
    }

    fn write(&self) {
        set_mdscr(self.mdscr);
        set_csselr(self.csselr);
        if let Some(v) = self.tpidr2 {
            set_tpidr2(v);
        }
        set_dbgbvr0(self.dbgbvr0);
        set_dbgbcr0(self.dbgbcr0);
        set_os_lock(self.os_lock);
        if let Some(v) = self.pmcr {
            set_pmcr(v & !(PMCR_P | PMCR_C));
        }
    }
}

/// Enables SVE for the host's EL1 (`CPACR_EL1.ZEN = 0b11`) and sets every element of its
/// `p7`; returns the previous `CPACR_EL1`. Only with SVE.
fn host_p7_set() -> u64 {
    let old: u64;
    // SAFETY: the CPU has SVE and EL2 does not trap it for the host; enabling it at EL1 and
    // writing p7 affect no state the compiled code uses (this target has no SVE: the compiler
    // never allocates p registers).
    unsafe {
        core::arch::asm!(
            ".arch_extension sve",
            "mrs {old}, cpacr_el1",
            "orr {t}, {old}, #(3 << 16)",
            "msr cpacr_el1, {t}",
            "isb",
            "ptrue p7.b",
            old = out(reg) old,
            t = out(reg) _,
            options(nomem, nostack)
        )
    };
    old
}

/// The number of set byte elements of the host's `p7` and the vector length in bytes, then
/// `CPACR_EL1` back to `cpacr`. Only after [`host_p7_set`].
fn host_p7_check(cpacr: u64) -> (u64, u64) {
    let (n, vl): (u64, u64);
    // SAFETY: SVE is enabled for EL1 (host_p7_set); counting p7 and reading the vector length
    // have no side effect; CPACR_EL1 gets the value it had before host_p7_set.
    unsafe {
        core::arch::asm!(
            ".arch_extension sve",
            "cntp {n}, p7, p7.b",
            "rdvl {vl}, #1",
            "msr cpacr_el1, {c}",
            "isb",
            n = out(reg) n,
            vl = out(reg) vl,
            c = in(reg) cpacr,
            options(nomem, nostack)
        )
    };
    (n, vl)
}

/// Guest RAM and memcache of the hostile guests, in the host image ([`hostile_guests`] has no
/// [`Env`] to allocate from): one slot's worth, reused by each hostile VM in turn.
#[repr(C, align(4096))]
struct HostileMem([u8; ((GUEST_RAM_PAGES + VM_MEMCACHE_PAGES) * PAGE_SIZE) as usize]);
static mut HOSTILE_MEM: HostileMem = HostileMem([0; _]);

/// Runs one fresh VM per hostile test (`guest/src/main.rs`, hostile mode) under the real EL2
/// and checks that each trapped instruction ends the run with a FAULT exit of the expected
/// EC, that the switched registers (`CSSELR_EL1`, `TPIDR2_EL0`) keep the guest's and the
/// host's values apart, that the host's own `MDSCR_EL1`, `CSSELR_EL1`, `TPIDR2_EL0`,
/// breakpoint 0, OS lock, `PMCR_EL0`, `d16` and (with SVE) `p7` are unchanged, and that every
/// VM is torn down with EL2's counters back where they started. Tests whose feature the CPU
/// lacks are skipped with a note.
pub fn hostile_guests(c: &mut Checks) {
    if GUEST_IMAGE.is_empty() {
        c.check(
            "hostile guests: guest image",
            false,
            format_args!("the host was built without PKVM_GUEST_BIN (use cargo xtask)"),
        );
        return;
    }
    let cpu = CpuFeatures::read();
    println!("hostile guests: CPU {cpu:?}");
    let start = leaks();
    let base = (&raw const HOSTILE_MEM) as u64;
    let mem = SlotMem {
        ram_pfn: base >> PAGE_SHIFT,
        memcache_pfn: (base >> PAGE_SHIFT) + GUEST_RAM_PAGES,
    };

    // The host's registers: known values where that is harmless, checked after every run.
    let orig = HostRegs::read(&cpu);
    let known = HostRegs {
        mdscr: orig.mdscr | MDSCR_TDCC,
        csselr: HOST_CSSELR,
        tpidr2: cpu.sme.then_some(HOST_TPIDR2),
        dbgbvr0: HOST_DBGBVR0,
        dbgbcr0: HOST_DBGBCR0,
        ..orig
    };
    known.write();
    let before = HostRegs::read(&cpu);
    let fp_lost0 = HOST_FP_LOST.load(Ordering::Relaxed);
    let (mut ran, mut skipped, mut teardown_failures) = (0u32, 0u32, 0u32);
    // Exits after which the host's CSSELR_EL1 / TPIDR2_EL0 were not its own.
    let (mut csselr_bad, mut tpidr2_bad) = (0u32, 0u32);
    let mut after_bad: Option<(&'static str, HostRegs)> = None;
    let mut p7 = None;

    for (i, case) in HOSTILE_CASES.iter().enumerate() {
        if let Some(what) = cpu.missing(case.need) {
            println!(
                "hostile guests: skipped ({}): the CPU has no {what}",
                case.name
            );
            skipped += 1;
            continue;
        }
        // What a writing test writes: always a value other than the host's.
        let arg = match case.test {
            hostile::DBGBVR0_WRITE => GUEST_DBGBVR0,
            hostile::DBGBCR0_WRITE => GUEST_DBGBCR0,
            hostile::OSLAR_WRITE => before.os_lock ^ 1,
            hostile::PMCR_WRITE => (before.pmcr.unwrap_or(0) ^ PMCR_DP) & !(PMCR_P | PMCR_C),
            hostile::SCXTNUM_WRITE => 0x5c5c_5c5c,
            hostile::TPIDR2_SWITCH => GUEST_TPIDR2,
            _ => 0,
        };
        let id = 0x4000 + i as u64;
        let vm = match create(0, mem, id, arg, flags::hostile(case.test)) {
            Ok(vm) => vm,
            Err(e) => {
                c.check(case.name, false, format_args!("create: {e}"));
                continue;
            }
        };
        ran += 1;
        let cpacr = (case.test == hostile::SVE_PFALSE).then(host_p7_set);
        let r = run(&vm, false, |_, _| {
            // The host's values must be back at every exit; put them there again anyway, so
            // that a guest whose own value was not switched reads the host's.
            if csselr() != HOST_CSSELR {
                csselr_bad += 1;
                set_csselr(HOST_CSSELR);
            }
            if cpu.sme && tpidr2() != HOST_TPIDR2 {
                tpidr2_bad += 1;
                set_tpidr2(HOST_TPIDR2);
            }
        });
        if let Some(cpacr) = cpacr {
            p7 = Some(host_p7_check(cpacr));
        }
        let now = HostRegs::read(&cpu);
        if now != before && after_bad.is_none() {
            after_bad = Some((case.name, now));
        }
        // SAFETY: the run is over (no run hypercall in progress): the host alone reads the
        // vCPU structure.
        let guest_x1 = unsafe { (*vcpu_ptr(vm.slot)).regs[1] };
        let name = case.name;
        match (case.ec, r) {
            (Some(want), RunEnd::Fault(esr)) => c.check(
                name,
                esr >> 26 == want,
                format_args!(
                    "FAULT exit, EC {:#x} (ESR {esr:#x}), want EC {want:#x}",
                    esr >> 26
                ),
            ),
            (Some(_), RunEnd::PowerOff) => c.check(
                name,
                false,
                format_args!("NOT trapped: the guest executed it, pinged and powered off"),
            ),
            (None, RunEnd::PowerOff) => c.check(
                name,
                true,
                format_args!("powered off, its own checks passed"),
            ),
            (None, RunEnd::Fault(esr)) => {
                c.check(name, false, format_args!("FAULT exit, ESR {esr:#x}"))
            }
            (_, RunEnd::Reset) if guest_x1 == 0 => c.check(
                name,
                false,
                format_args!("SYSTEM_RESET: a check of the guest's own failed"),
            ),
            (_, RunEnd::Reset) => c.check(
                name,
                false,
                format_args!(
                    "the guest took an exception at its own EL1 (ESR_EL1 {guest_x1:#x}), \
                     reported with SYSTEM_RESET"
                ),
            ),
            (_, RunEnd::Error(e)) => c.check(name, false, format_args!("run: {e}")),
        };
        if let Err(e) = destroy(vm) {
            println!("hostile guests: destroy after test {}: {e}", case.test);
            teardown_failures += 1;
        }
    }
    println!("hostile guests: {ran} run, {skipped} skipped");

    let after = HostRegs::read(&cpu);
    orig.write();
    if let Some((vl, n)) = p7.map(|(n, vl)| (vl, n)) {
        c.check(
            "hostile guest: host's SVE p7 survives the guest's pfalse p7.b",
            n == vl,
            format_args!("{n} of {vl} byte elements of p7 still set"),
        );
    }
    c.check(
        "hostile guests: host's MDSCR_EL1 unchanged",
        after.mdscr == before.mdscr,
        format_args!("before {:#x}, after {:#x}", before.mdscr, after.mdscr),
    );
    c.check(
        "hostile guests: host's CSSELR_EL1 back at every exit",
        csselr_bad == 0 && after.csselr == before.csselr,
        format_args!(
            "{csselr_bad} exits with another value; before {:#x}, after {:#x}",
            before.csselr, after.csselr
        ),
    );
    if cpu.sme {
        c.check(
            "hostile guests: host's TPIDR2_EL0 back at every exit",
            tpidr2_bad == 0 && after.tpidr2 == before.tpidr2,
            format_args!(
                "{tpidr2_bad} exits with another value; before {:x?}, after {:x?}",
                before.tpidr2, after.tpidr2
            ),
        );
    }
    c.check(
        "hostile guests: host's breakpoint 0 (DBGBVR0_EL1, DBGBCR0_EL1) unchanged",
        (after.dbgbvr0, after.dbgbcr0) == (before.dbgbvr0, before.dbgbcr0),
        format_args!(
            "before {:#x}/{:#x}, after {:#x}/{:#x}",
            before.dbgbvr0, before.dbgbcr0, after.dbgbvr0, after.dbgbcr0
        ),
    );
    c.check(
        "hostile guests: host's OS lock (OSLSR_EL1.OSLK) unchanged",
        after.os_lock == before.os_lock,
        format_args!("before {}, after {}", before.os_lock, after.os_lock),
    );
    if cpu.pmu {
        c.check(
            "hostile guests: host's PMCR_EL0 unchanged",
            after.pmcr == before.pmcr,
            format_args!("before {:x?}, after {:x?}", before.pmcr, after.pmcr),
        );
    }
    c.check(
        "hostile guests: host's registers unchanged after every run",
        after_bad.is_none(),
        format_args!("first change: {after_bad:x?}; before {before:x?}"),
    );
    let lost = HOST_FP_LOST.load(Ordering::Relaxed) - fp_lost0;
    c.check(
        "hostile guests: host's d16 survives every run",
        lost == 0,
        format_args!("{lost} runs lost the host's d16"),
    );
    c.check(
        "hostile guests: every VM torn down",
        teardown_failures == 0,
        format_args!("{ran} VMs, {teardown_failures} teardown/release failures"),
    );
    let end = leaks();
    let d = |a: u64, b: u64| a as i64 - b as i64;
    println!(
        "hostile guests: leak: hyp_mapped_host_pages={:+} donated_pages={:+} shared_pages={:+} \
         guest_shared_pages={} pinned_pages={:+} live_vms={} pool_free_delta={:+}",
        d(end.hyp_mapped, start.hyp_mapped),
        d(end.donated, start.donated),
        d(end.shared, start.shared),
        end.guest_shared,
        d(end.pinned, start.pinned),
        end.vms,
        d(end.pool_free, start.pool_free),
    );
    c.check(
        "hostile guests: leak report all zero",
        end == start && end.vms == 0 && end.guest_shared == 0,
        format_args!("before {start:?}, after {end:?}"),
    );
}

/// One step of [`lifecycle_breakdown`].
pub type Step<'a> = &'a mut dyn FnMut() -> Result<u64, HcallError>;

/// Prints the EL2 cost of each step of one quiet lifecycle (`count` measures a closure).
pub fn lifecycle_breakdown(
    mem: SlotMem,
    count: impl Fn(Step<'_>) -> (u64, Result<u64, HcallError>),
) {
    let slot = 0;
    let (desc, vcpu, fp) = (desc_ptr(slot), vcpu_ptr(slot), fp_ptr(slot));
    // SAFETY: as in `create`.
    unsafe {
        desc.write_volatile(VmDesc {
            ipa_bits: 32,
            nr_vcpus: 1,
            host_cookie: 0,
            reserved: 0,
        });
        let mut st = VcpuState::default();
        st.regs[2] = flags::QUIET;
        st.pc = GUEST_RAM_IPA;
        vcpu.write_volatile(st);
        fp.write_volatile(FpState::default());
    }
    load_image(mem);
    // SAFETY: only addresses and sizes are used.
    let (d, v, f) = unsafe { (&*desc, &*vcpu, &*fp) };
    let handle = core::cell::Cell::new(0);
    let steps: [(&str, Step<'_>); 10] = [
        ("share_hyp(desc)", &mut || pkvm::share_hyp(d).map(|()| 0)),
        ("vm_init", &mut || {
            call5(
                HostHcall::VmInit,
                [desc as u64, mem.memcache_pfn, VM_MEMCACHE_PAGES, 0, 0],
            )
            .inspect(|h| handle.set(*h))
        }),
        ("share_hyp(vcpu)", &mut || pkvm::share_hyp(v).map(|()| 0)),
        ("share_hyp(fp)", &mut || pkvm::share_hyp(f).map(|()| 0)),
        ("vcpu_init", &mut || {
            call5(
                HostHcall::VcpuInit,
                [handle.get(), vcpu as u64, fp as u64, 0, 0],
            )
        }),
        ("share_guest(16)", &mut || {
            call5(
                HostHcall::HostShareGuest,
                [
                    handle.get(),
                    mem.ram_pfn,
                    GUEST_RAM_IPA >> PAGE_SHIFT,
                    GUEST_RAM_PAGES,
                    PROT_RWX,
                ],
            )
        }),
        ("vcpu_run", &mut || {
            call5(HostHcall::VcpuRun, [handle.get(), 0, 0, 0, 0])
        }),
        ("vm_teardown", &mut || {
            call5(HostHcall::VmTeardown, [handle.get(), 0, 0, 0, 0])
        }),
        ("unshare_hyp(fp)", &mut || pkvm::unshare_hyp(f).map(|()| 0)),
        ("unshare_hyp(vcpu)+(desc)", &mut || {
            pkvm::unshare_hyp(v)
                .and_then(|()| pkvm::unshare_hyp(d))
                .map(|()| 0)
        }),
    ];
    for (name, f) in steps {
        let (n, r) = count(f);
        println!("bench: lifecycle step {name}: {n} EL2 instructions ({r:?})");
    }
}
