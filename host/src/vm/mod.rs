//! Guests from the host's side: the VM lifecycle (create, load the image, add the vCPU, run
//! until it powers off, destroy) over the typed client, with the guest's devices emulated
//! ([`console`]), and EL2's leak counters ([`leaks`]).
//!
//! # Where the structures live
//!
//! The VM descriptor, vCPU state and FP/SIMD area of **two** guests share one page (a
//! [`SharedPage`] laid out as [`PairLayout`]), on purpose: each structure is shared with EL2 by
//! its own `share_hyp` of its bytes (refcounted at EL2), so a page's count goes up to 6 while
//! both guests live, and the page leaves EL2's stage-1 only when the last structure on it is
//! unshared. EL2 pins each structure while the VM exists (unshare → `EBUSY`); teardown unpins,
//! then the host unshares. The host touches them only through [`crate::shared`].
//!
//! Guest RAM ([`GUEST_RAM_PAGES`] pages) and the stage-2 memcache ([`VM_MEMCACHE_PAGES`]
//! pages) of each slot are allocated once and reused: teardown gives both back to the host.

mod console;

use core::sync::atomic::{AtomicU64, Ordering};

use crate::env::Env;
use crate::hvc::FpChecked;
use crate::pkvm::{self, HcallError, PKVM};
use crate::shared::{Shared, SharedPage};
use pkvm_abi::guest::{
    FpState, GUEST_RAM_IPA, GUEST_RAM_PAGES, PROT_RWX, PSTATE_EL1H_DAIF, VM_MEMCACHE_PAGES,
    VcpuExit, VcpuState, VgicState, VmDesc, vcpu_off,
};
use pkvm_abi::{PAGE_SHIFT, PAGE_SIZE, Stat};
use pkvm_arch::esr::Esr;
use pkvm_client::{Client, Exit, VmHandle};

pub use pkvm_abi::guest::hostile;

/// The guest image `xtask` built (`guest/`), embedded by `host/build.rs`; empty when the host
/// was built on its own.
pub static GUEST_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest.bin"));

/// Guests alive at once at most (two structure pages).
pub const SLOTS: usize = 4;

/// Guest options (the guest's `x2`).
pub mod flags {
    /// Skip the console, the id read, the memory test and the WFI; pings do not use FP.
    pub const QUIET: u64 = 1;
    /// Pings keep a pattern in `d16` across the exit even when quiet.
    pub const FP_PINGS: u64 = 2;
    /// Protected mode: the guest speaks pKVM's guest-side ABI first (discovery, a shared
    /// bounce buffer it prints through, a relinquished page; `guest/src/main.rs`).
    pub const PROTECTED_ABI: u64 = 4;
    /// Each ping is preceded by a `MEM_SHARE` and a `MEM_UNSHARE` of the guest's bounce
    /// buffer (protected guests only: the page must be the guest's).
    pub const SHARE_PINGS: u64 = 8;
    /// Virtual GIC: before its pings the guest acknowledges and EOIs the interrupt the host
    /// put in its list registers, and reports the INTID with a ping (`guest/src/main.rs`).
    pub const VGIC: u64 = 16;
    /// Spin: the guest loops forever with its interrupts masked, never exiting.
    pub const SPIN: u64 = 32;
    /// The guest's first ping carries its `MPIDR_EL1`.
    pub const MPIDR: u64 = 64;
    /// Hostile mode: the guest performs hostile test `test` (one of [`super::hostile`]).
    pub const fn hostile(test: u64) -> u64 {
        (test & 0xff) << 8
    }
}

/// How the structures of two guests sit in one page (only its layout is used).
#[repr(C)]
pub struct PairLayout {
    vcpu: [VcpuState; 2],
    fp: [FpState; 2],
    desc: [VmDesc; 2],
}

const _: () = assert!(size_of::<PairLayout>() <= PAGE_SIZE as usize);

/// The structure pages, in `.bss`.
static PAIRS: [SharedPage; SLOTS / 2] = [const { SharedPage::new() }; SLOTS / 2];

/// Words of a structure of type `T` at byte `offset` (plus `i` of them) in a structure page.
fn words_of<T>(page: &'static SharedPage, offset: usize, i: usize) -> Shared<'static> {
    let size = size_of::<T>();
    page.words((offset + i * size) / 8, size / 8)
}

/// One guest's structures, shared with EL2.
#[derive(Clone, Copy, Debug)]
pub struct Structs {
    /// The [`VmDesc`].
    pub desc: Shared<'static>,
    /// The [`VcpuState`].
    pub vcpu: Vcpu,
    /// The [`FpState`].
    pub fp: Shared<'static>,
}

/// The structures of slot `slot` (`< SLOTS`).
pub fn structs(slot: usize) -> Structs {
    let (page, i) = (&PAIRS[slot / 2], slot % 2);
    Structs {
        desc: words_of::<VmDesc>(page, core::mem::offset_of!(PairLayout, desc), i),
        vcpu: Vcpu(words_of::<VcpuState>(
            page,
            core::mem::offset_of!(PairLayout, vcpu),
            i,
        )),
        fp: words_of::<FpState>(page, core::mem::offset_of!(PairLayout, fp), i),
    }
}

impl Structs {
    /// Shares each structure with EL2 (one ranged call each), stopping at the first error.
    pub fn share(&self, which: &[Shared<'_>]) -> Result<(), HcallError> {
        which
            .iter()
            .try_for_each(|s| pkvm::share_hyp_bytes(s.pa(), s.bytes()))
    }
}

/// Drops one share of a structure.
pub fn unshare(s: Shared<'_>) -> Result<(), HcallError> {
    pkvm::unshare_hyp_bytes(s.pa(), s.bytes())
}

/// A vCPU's [`VcpuState`] in shared memory, field by field.
#[derive(Clone, Copy, Debug)]
pub struct Vcpu(Shared<'static>);

impl Vcpu {
    /// The words of the structure.
    pub fn shared(&self) -> Shared<'static> {
        self.0
    }

    /// `x<n>`.
    pub fn reg(&self, n: u8) -> u64 {
        self.0.get(vcpu_off::reg(n) / 8)
    }

    /// Sets `x<n>`.
    pub fn set_reg(&self, n: u8, v: u64) {
        self.0.set(vcpu_off::reg(n) / 8, v);
    }

    /// EL1 system register `i` (a [`pkvm_abi::guest::sys`] index) as the last exit saved it.
    pub fn sys(&self, i: usize) -> u64 {
        self.0.get(vcpu_off::sys(i) / 8)
    }

    /// Sets the PC.
    pub fn set_pc(&self, v: u64) {
        self.0.set(vcpu_off::PC / 8, v);
    }

    /// Sets PSTATE.
    pub fn set_pstate(&self, v: u64) {
        self.0.set(vcpu_off::PSTATE / 8, v);
    }

    /// The last exit record, read whole.
    pub fn exit(&self) -> VcpuExit {
        self.0.read(vcpu_off::EXIT / 8)
    }

    /// The value an MMIO read gets (EL2 puts it in the target register on the next run).
    pub fn set_mmio_data(&self, v: u64) {
        self.0.set(vcpu_off::EXIT_MMIO_DATA / 8, v);
    }

    /// The virtual CPU interface, read whole.
    pub fn vgic(&self) -> VgicState {
        self.0.read(vcpu_off::VGIC / 8)
    }

    /// Writes the virtual CPU interface EL2 loads on the next run.
    pub fn set_vgic(&self, v: &VgicState) {
        self.0.write(vcpu_off::VGIC / 8, v);
    }

    /// Writes a whole state.
    pub fn init(&self, st: &VcpuState) {
        for (n, &r) in (0u8..).zip(&st.regs) {
            self.set_reg(n, r);
        }
        self.set_pc(st.pc);
        self.set_pstate(st.pstate);
        for (i, &v) in st.sys.iter().enumerate() {
            self.0.set(vcpu_off::sys(i) / 8, v);
        }
        self.0.write(vcpu_off::EXIT / 8, &st.exit);
        self.set_vgic(&st.vgic);
    }
}

/// Memory of one guest slot, allocated once.
#[derive(Clone, Copy, Debug)]
pub struct SlotMem {
    /// First pfn of the guest's RAM.
    pub ram_pfn: u64,
    /// First pfn of the memcache.
    pub memcache_pfn: u64,
    /// Its length in pages.
    pub memcache_nr: u64,
}

impl SlotMem {
    /// Allocates a slot's RAM and memcache ([`VM_MEMCACHE_PAGES`]) from the host's free
    /// memory.
    pub fn alloc(env: &mut Env) -> Self {
        Self::with_memcache(env, VM_MEMCACHE_PAGES)
    }

    /// [`SlotMem::alloc`] with a memcache of `nr` pages (a power of two).
    pub fn with_memcache(env: &mut Env, nr: u64) -> Self {
        SlotMem {
            ram_pfn: env.pages(GUEST_RAM_PAGES, PAGE_SIZE) >> PAGE_SHIFT,
            // Aligned to its size: EL2 builds one buddy block over it then, wherever the
            // host image ends (which keeps the VM-lifecycle benchmark independent of it).
            memcache_pfn: env.pages(nr, nr * PAGE_SIZE) >> PAGE_SHIFT,
            memcache_nr: nr,
        }
    }
}

/// A live VM.
#[derive(Debug)]
pub struct Vm {
    /// EL2's handle.
    pub handle: VmHandle,
    /// Which slot's structures and memory it uses.
    pub slot: usize,
    /// Its cycle number (the guest's `x0`; the id register reads it).
    pub id: u64,
    /// First pfn of its RAM (IPA [`GUEST_RAM_IPA`]).
    pub ram_pfn: u64,
}

impl Vm {
    /// The host physical address of the guest's `[ipa, ipa + len)`, if inside its RAM.
    pub fn ram_pa(&self, ipa: u64, len: u64) -> Option<u64> {
        let off = ipa.checked_sub(GUEST_RAM_IPA)?;
        (off.checked_add(len)? <= GUEST_RAM_PAGES * PAGE_SIZE)
            .then_some((self.ram_pfn << PAGE_SHIFT) + off)
    }
}

/// Writes a fresh VM's structures in `slot` (not shared with EL2 now) and loads the guest
/// image into `mem`: guest `id` makes `loops` pings with options `guest_flags`; `vm_flags` are
/// the descriptor's ([`pkvm_abi::guest::vm_flags`]).
pub fn prepare(
    slot: usize,
    mem: SlotMem,
    id: u64,
    (loops, guest_flags): (u64, u64),
    vm_flags: u64,
) -> Structs {
    let s = structs(slot);
    s.desc.write(
        0,
        &VmDesc {
            ipa_bits: 32,
            nr_vcpus: 1,
            host_cookie: id,
            flags: vm_flags,
            mem_ipa: GUEST_RAM_IPA,
            mem_size: GUEST_RAM_PAGES * PAGE_SIZE,
        },
    );
    let mut st = VcpuState::default();
    st.regs[..3].copy_from_slice(&[id, loops, guest_flags]);
    st.pc = GUEST_RAM_IPA;
    st.pstate = PSTATE_EL1H_DAIF;
    s.vcpu.init(&st);
    s.fp.fill(0);
    load_image(mem);
    s
}

/// Creates a VM in `slot` ([`prepare`]), shares its descriptor, donates the memcache, adds the
/// vCPU (state and FP area shared) and shares the guest RAM into it.
///
/// # Errors
/// The first hypercall that failed (everything done so far is undone).
pub fn create(
    slot: usize,
    mem: SlotMem,
    id: u64,
    loops: u64,
    guest_flags: u64,
) -> Result<Vm, HcallError> {
    create_with(false, slot, mem, id, (loops, guest_flags))
}

/// [`create`], as a protected VM when `protected`: its RAM is **donated** (the host cannot
/// read it until the guest shares a page back, and gets it back zeroed).
///
/// # Errors
/// The first hypercall that failed (everything done so far is undone).
pub fn create_with(
    protected: bool,
    slot: usize,
    mem: SlotMem,
    id: u64,
    (loops, guest_flags): (u64, u64),
) -> Result<Vm, HcallError> {
    let vm_flags = if protected { pkvm_abi::guest::vm_flags::PROTECTED } else { 0 };
    let s = prepare(slot, mem, id, (loops, guest_flags), vm_flags);
    s.share(&[s.desc])?;
    let handle = match PKVM.vm_init(s.desc.pa(), mem.memcache_pfn, mem.memcache_nr) {
        Ok(h) => h,
        Err(e) => {
            let _ = unshare(s.desc);
            return Err(e);
        }
    };
    let vm = Vm {
        handle,
        slot,
        id,
        ram_pfn: mem.ram_pfn,
    };
    let r = s
        .share(&[s.vcpu.shared(), s.fp])
        .and_then(|()| PKVM.vcpu_init(handle, s.vcpu.shared().pa(), s.fp.pa()))
        .and_then(|()| {
            let gfn = GUEST_RAM_IPA >> PAGE_SHIFT;
            if protected {
                PKVM.donate_guest(handle, mem.ram_pfn, gfn, GUEST_RAM_PAGES)
            } else {
                PKVM.share_guest(handle, mem.ram_pfn, gfn, GUEST_RAM_PAGES, PROT_RWX)
            }
        });
    match r {
        Ok(()) => Ok(vm),
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
    let image = &GUEST_IMAGE[..GUEST_IMAGE.len().min(len)];
    // SAFETY: the slot's RAM is `len` bytes of host memory from the allocator, not shared with
    // anyone now (the previous guest's teardown gave it back), identity-mapped read-write, and
    // no Rust reference to it exists.
    unsafe {
        core::ptr::copy_nonoverlapping(image.as_ptr(), base, image.len());
        core::ptr::write_bytes(base.add(image.len()), 0, len - image.len());
    }
}

/// Destroys a VM: [`teardown`] at EL2 (which unpins its structures), then the host unshares
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
    PKVM.vm_destroy(vm.handle)
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
    let s = structs(slot);
    let fp = unshare(s.fp);
    let vcpu = unshare(s.vcpu.shared());
    let desc = unshare(s.desc);
    fp.and(vcpu).and(desc)
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// PSCI SYSTEM_OFF.
    PowerOff,
    /// PSCI SYSTEM_RESET (the test guest's way of reporting a failed check).
    Reset,
    /// A fault exit: its syndrome.
    Fault(Esr),
    /// The guest touched its memory where it has no page (the IPA).
    MemFault(u64),
    /// An exit reason the host does not know.
    Unknown(u64),
    /// A run hypercall failed.
    Error(HcallError),
}

/// One `VcpuRun`, its exit decoded.
///
/// # Errors
/// The hypercall's error.
pub fn run_once(vm: &Vm) -> Result<Exit, HcallError> {
    let vcpu = structs(vm.slot).vcpu;
    PKVM.run(vm.handle, || vcpu.exit())
}

/// Answers a ping hypercall exit the way [`run`] does (`x0 = x1 + 1`).
pub fn answer_ping(vm: &Vm, ping: u64) {
    let v = structs(vm.slot).vcpu;
    if v.reg(0) == ping {
        v.set_reg(0, v.reg(1).wrapping_add(1));
    }
}

/// IDLE exits (trapped `WFI`) seen by [`run`].
static IDLE_EXITS: AtomicU64 = AtomicU64::new(0);
/// Runs in which the host's `d16` did not survive (must stay 0).
static HOST_FP_LOST: AtomicU64 = AtomicU64::new(0);

/// IDLE exits [`run`] has seen so far.
pub fn idle_exits() -> u64 {
    IDLE_EXITS.load(Ordering::Relaxed)
}

/// Lines guests printed through a page they share ([`pkvm_abi::guest::GUEST_HVC_PRINT`]).
pub fn printed() -> u64 {
    console::PRINTED.load(Ordering::Relaxed)
}

/// Print requests the host could not read (not in a page the guest shares).
pub fn print_refused() -> u64 {
    console::PRINT_REFUSED.load(Ordering::Relaxed)
}

/// Runs of [`run`] so far in which the host's `d16` did not survive.
pub fn host_fp_lost() -> u64 {
    HOST_FP_LOST.load(Ordering::Relaxed)
}

/// Runs the vCPU until it powers off or faults, emulating its console and id register and
/// answering pings ([`console`]), with a pattern in the host's own `d16` across every run.
/// `on_exit` is called after every exit (the scenario tries an unshare of the running vCPU's
/// structure there).
pub fn run(vm: &Vm, echo: bool, mut on_exit: impl FnMut(&Vm, &Exit)) -> RunEnd {
    let vcpu = structs(vm.slot).vcpu;
    let mut con = console::Console::new(echo);
    let el2 = Client::new(FpChecked::new(0x0f0f_1234_5678_0000 ^ vm.id));
    loop {
        let exit = match el2.run(vm.handle, || vcpu.exit()) {
            Ok(e) => e,
            Err(e) => return RunEnd::Error(e),
        };
        if !el2.transport().survived() {
            HOST_FP_LOST.fetch_add(1, Ordering::Relaxed);
        }
        on_exit(vm, &exit);
        if exit == Exit::Idle {
            IDLE_EXITS.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(end) = console::emulate(vm, vcpu, exit, &mut con) {
            return end;
        }
    }
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
    /// Pages donated to guests.
    pub guest_owned: u64,
}

/// EL2's leak counters now.
pub fn leaks() -> Leaks {
    use pkvm::stat;
    Leaks {
        hyp_mapped: stat(Stat::HypMappedHostPages),
        pool_free: stat(Stat::PoolFreePages),
        shared: stat(Stat::SharedPages),
        donated: stat(Stat::DonatedPages),
        guest_shared: stat(Stat::GuestSharedPages),
        pinned: stat(Stat::PinnedPages),
        vms: stat(Stat::LiveVms),
        guest_owned: stat(Stat::GuestOwnedPages),
    }
}
