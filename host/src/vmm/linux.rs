//! Debian's arm64 Linux as a guest of the test host: the VM (non-protected, RAM shared in
//! place), its boot (kernel, initramfs and device tree placed by `pkvm-vmm-core`), and the run
//! loop that emulates its devices and delivers its interrupts.
//!
//! # Interrupts
//!
//! The guest's GIC is `pkvm_vmm_core::gic::Gic` (its distributor and redistributor registers on
//! MMIO exits) plus EL2's list registers (`VcpuState.vgic`, loaded for every run). Before each
//! run the VMM samples the guest's virtual timer (`CNTV_CTL_EL0`/`CNTV_CVAL_EL0`, saved by the
//! world switch: its PPI 27 line is high while the timer is enabled, unmasked and expired),
//! puts the highest-priority pending interrupts in free list registers and acknowledges them in
//! the model; after the run, a list register the guest EOId (state 0) is deactivated in the
//! model. SGIs the guest sends (`ICC_SGI1R_EL1`, trapped by `HCR_EL2.IMO`: a `FAULT` exit) go
//! through the model too. A `WFI` (an `IDLE` exit) waits for the guest's timer deadline when
//! nothing is pending.

use alloc::vec::Vec;

use pkvm_abi::guest::{
    PROT_RWX, PSTATE_EL1H_DAIF, VcpuState, VgicState, VmDesc, sys, vgic::lr,
};
use pkvm_abi::{PAGE_SHIFT, Stat, psci};
use pkvm_client::{Exit, HcallError, VmHandle};
use pkvm_vmm_core::fdt::GuestFdt;
use pkvm_vmm_core::gic::Gic;
use pkvm_vmm_core::image::{self, Header};
use pkvm_vmm_core::layout::{Device, Layout};
use pkvm_vmm_core::uart::Uart;

use super::bundle::Bundle;
use crate::env::Env;
use crate::pkvm::{self, PKVM};
use crate::vm::{self, Structs};

/// Guest RAM: what a 64-page memcache can map with 4 KiB pages (one level-3 table per 2 MiB,
/// plus the upper levels).
pub const RAM_BYTES: u64 = 112 << 20;
/// The stage-2 memcache (the largest EL2 accepts).
const MEMCACHE_PAGES: u64 = pkvm_abi::guest::MEMCACHE_MAX_PAGES;
/// SPIs of the guest's GIC.
const NR_SPIS: u32 = 64;
/// The virtual timer's INTID.
const VTIMER_INTID: u32 = 27;
/// The kernel command line.
pub const BOOTARGS: &str =
    "console=ttyS0 earlycon=uart8250,mmio,0x9000000 rdinit=/init panic=-1 cma=0";

/// `CNTV_CTL_EL0` bits.
mod cntv {
    pub const ENABLE: u64 = 1;
    pub const IMASK: u64 = 1 << 1;
}

/// How a guest's run ended.
#[derive(Debug)]
pub enum End {
    /// PSCI SYSTEM_OFF or SYSTEM_RESET (the function id).
    PowerOff(u64),
    /// An exit the VMM cannot handle.
    Fault(&'static str, u64, u64),
    /// A hypercall failed.
    Hcall(HcallError),
}

impl core::fmt::Display for End {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            End::PowerOff(fid) => write!(f, "PSCI power-off ({fid:#x})"),
            End::Fault(what, a, b) => write!(f, "{what} ({a:#x}, {b:#x})"),
            End::Hcall(e) => write!(f, "VcpuRun failed: {e}"),
        }
    }
}

/// What the guest printed, line by line, and the markers the scenario looks for.
#[derive(Debug, Default)]
pub struct Console {
    /// Print every line (else only those with a marker).
    pub echo: bool,
    line: Vec<u8>,
    /// Lines printed.
    pub lines: u64,
    /// Lines containing each of the scenario's markers.
    pub seen: [bool; 4],
}

impl Console {
    /// A console printing every line (`echo`) or only the marked ones.
    pub fn new(echo: bool) -> Self {
        Console {
            echo,
            ..Console::default()
        }
    }

    fn putc(&mut self, c: u8, markers: &[&str; 4]) {
        if c == b'\n' {
            let text = core::str::from_utf8(&self.line).unwrap_or("<not UTF-8>");
            let mut marked = false;
            for (seen, m) in self.seen.iter_mut().zip(markers) {
                marked |= text.contains(m);
                *seen |= text.contains(m);
            }
            if self.echo || marked {
                println!("linux-guest| {}", text.trim_end_matches('\r'));
            }
            self.lines += 1;
            self.line.clear();
        } else if self.line.len() < 1024 {
            self.line.push(c);
        }
    }
}

/// Exit counts by kind.
#[derive(Clone, Copy, Debug, Default)]
pub struct Exits {
    /// MMIO exits (UART, GIC, other).
    pub mmio: u64,
    /// Of those, the UART's.
    pub uart: u64,
    /// Hypercall exits (SMCCC/PSCI).
    pub hvc: u64,
    /// `WFI`.
    pub idle: u64,
    /// Physical interrupts.
    pub irq: u64,
    /// SGIs sent.
    pub sgi: u64,
    /// Interrupts delivered through list registers.
    pub injected: u64,
}

/// A Linux guest's RAM and stage-2 memcache, allocated once and reused by every boot (the
/// teardown gives both back to the host).
#[derive(Clone, Copy, Debug)]
pub struct GuestMem {
    ram: u64,
    memcache: u64,
}

impl GuestMem {
    /// The guest RAM's first host physical address.
    pub fn ram(&self) -> u64 {
        self.ram
    }

    /// Takes [`RAM_BYTES`] of RAM (2 MiB aligned) and the memcache from `env`.
    pub fn alloc(env: &mut Env) -> Self {
        GuestMem {
            ram: env.pages(RAM_BYTES >> PAGE_SHIFT, 2 << 20),
            memcache: env.pages(MEMCACHE_PAGES, MEMCACHE_PAGES << PAGE_SHIFT),
        }
    }
}

/// How a vCPU stands, for the VMM's scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Power {
    /// Not started (PSCI `CPU_ON` starts it) or turned off (`CPU_OFF`).
    Off,
    /// Runs when its turn comes.
    On,
    /// In `WFI`: runs again once an interrupt is pending for it.
    Idle,
    /// A protected VM's vCPU that EL2 starts when the guest asks (PSCI `CPU_ON` is answered
    /// at EL2): tried in its turn, off while `VcpuRun` says `EPERM`.
    Probe,
}

/// One vCPU: its structures (slot `i` of `crate::vm`), its list registers as the VMM filled
/// them, its power state.
#[derive(Debug)]
struct VcpuCtx {
    structs: Structs,
    /// The INTID each list register holds (as the VMM put it there).
    lrs: [Option<u32>; 16],
    power: Power,
}

/// A Linux guest, created and ready to run.
#[derive(Debug)]
pub struct LinuxVm {
    handle: VmHandle,
    vcpus: Vec<VcpuCtx>,
    layout: Layout,
    gic: Gic,
    uart: Uart,
    nr_lrs: usize,
    protected: bool,
    /// Exit counts.
    pub exits: Exits,
}

/// The host timer's quantum while several vCPUs share the CPU (EL2's `CNTHP` preempts a guest
/// at the host's deadline): 2 ms.
fn quantum() -> u64 {
    use aarch64_cpu::registers::{CNTFRQ_EL0, Readable};
    CNTFRQ_EL0.get() / 500
}

/// Copies `len` bytes from host physical `src` to `dst` (guest RAM, host memory), then cleans
/// them to the point of coherency: the guest starts with its MMU off, reading memory, not the
/// host's caches.
fn copy_clean(dst: u64, src: u64, len: u64) {
    // SAFETY: `src` is the bundle QEMU loaded (reserved from the host's free memory), `dst`
    // the guest's RAM the host allocated for it and no one else uses yet; both identity-mapped
    // and disjoint.
    unsafe { core::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len as usize) };
    clean(dst, len);
}

fn clean(start: u64, len: u64) {
    let mut a = start & !63;
    while a < start + len {
        // SAFETY: cache maintenance by VA of host memory mapped by the identity map; no effect
        // on memory contents.
        unsafe { core::arch::asm!("dc cvac, {}", in(reg) a, options(nostack, preserves_flags)) };
        a += 64;
    }
    // SAFETY: a barrier.
    unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
}

impl LinuxVm {
    /// Builds the guest in `mem` with `nr_vcpus` vCPUs: the kernel and initramfs of `b` copied
    /// in, the device tree written, the VM created at EL2 — `protected`: its RAM **donated**
    /// (the host cannot read it from then on, and gets it back zeroed), else shared in place —
    /// and vCPU 0 entering the kernel with `x0` = the device tree (the others wait for PSCI
    /// `CPU_ON`).
    ///
    /// # Errors
    /// What went wrong (a bad kernel, a refused hypercall, more vCPUs than structure slots).
    pub fn create(
        mem: GuestMem,
        b: &Bundle,
        protected: bool,
        nr_vcpus: usize,
        bootargs: &str,
    ) -> Result<Self, &'static str> {
        if !(1..=vm::SLOTS).contains(&nr_vcpus) {
            return Err("vCPU count");
        }
        let layout = Layout::new(nr_vcpus, RAM_BYTES).map_err(|_| "layout")?;
        // SAFETY: the kernel range of the bundle QEMU loaded (checked inside its range),
        // identity-mapped, never written.
        let kernel = unsafe {
            core::slice::from_raw_parts(
                b.kernel.start as *const u8,
                (b.kernel.end - b.kernel.start) as usize,
            )
        };
        let header = Header::parse(kernel).map_err(|_| "not an arm64 Image")?;
        let initrd_len = b.initrd.end - b.initrd.start;
        let place = image::place(&layout, &header, initrd_len).map_err(|_| "does not fit")?;
        let (ram_ipa, _) = layout.ram();
        let ram = mem.ram;
        let pa = |ipa: u64| ram + (ipa - ram_ipa);
        // The rest of the RAM is left as it is: the kernel clears what it needs (its `.bss`),
        // and what it finds there is the host's own memory, or zeroes after a protected boot.
        copy_clean(pa(place.kernel), b.kernel.start, kernel.len() as u64);
        let initrd = place.initrd.ok_or("no initramfs placement")?;
        copy_clean(pa(initrd.0), b.initrd.start, initrd_len);
        let dtb = GuestFdt {
            layout: &layout,
            bootargs,
            initrd: Some(initrd),
        }
        .build()
        .map_err(|_| "device tree")?;
        // SAFETY: as for the copies: the DTB's 2 MiB region of the guest's RAM.
        unsafe {
            core::ptr::copy_nonoverlapping(dtb.as_ptr(), pa(place.dtb) as *mut u8, dtb.len());
        }
        clean(pa(place.dtb), dtb.len() as u64);

        let s0 = vm::structs(0);
        s0.desc.write(
            0,
            &VmDesc {
                ipa_bits: 40,
                nr_vcpus: nr_vcpus as u64,
                host_cookie: 0x11_0000,
                flags: if protected {
                    pkvm_abi::guest::vm_flags::PROTECTED
                } else {
                    0
                },
                mem_ipa: ram_ipa,
                mem_size: RAM_BYTES,
            },
        );
        s0.share(&[s0.desc])
            .map_err(|_| "share the descriptor")?;
        let handle = PKVM
            .vm_init(s0.desc.pa(), mem.memcache >> PAGE_SHIFT, MEMCACHE_PAGES)
            .map_err(|_| "VmInit")?;
        let mut vcpus = Vec::with_capacity(nr_vcpus);
        for i in 0..nr_vcpus {
            let s = vm::structs(i);
            let mut st = VcpuState::default();
            if i == 0 {
                st.regs[0] = place.dtb;
                st.pc = place.kernel;
            }
            st.pstate = PSTATE_EL1H_DAIF;
            s.vcpu.init(&st);
            s.fp.fill(0);
            s.share(&[s.vcpu.shared(), s.fp])
                .map_err(|_| "share a vCPU")?;
            PKVM.vcpu_init_at(handle, i as u64, s.vcpu.shared().pa(), s.fp.pa())
                .map_err(|_| "VcpuInit")?;
            vcpus.push(VcpuCtx {
                structs: s,
                lrs: [None; 16],
                power: match (i, protected) {
                    (0, _) => Power::On,
                    (_, true) => Power::Probe,
                    (_, false) => Power::Off,
                },
            });
        }
        let (pfn, gfn, nr) = (ram >> PAGE_SHIFT, ram_ipa >> PAGE_SHIFT, RAM_BYTES >> PAGE_SHIFT);
        if protected {
            PKVM.donate_guest(handle, pfn, gfn, nr)
                .map_err(|_| "HostDonateGuest of the RAM")?;
        } else {
            PKVM.share_guest(handle, pfn, gfn, nr, PROT_RWX)
                .map_err(|_| "HostShareGuest of the RAM")?;
        }
        let nr_lrs = pkvm::stat(Stat::VgicListRegs).min(16) as usize;
        println!(
            "linux-guest: {} VM, {nr_vcpus} vCPU(s), {} MiB RAM at PA {ram:#x} (IPA \
             {ram_ipa:#x}), kernel {} bytes at IPA {:#x} (text_offset {:#x}, image_size {:#x}), \
             initramfs {initrd_len} bytes at IPA {:#x}, DTB {} bytes at IPA {:#x}, {nr_lrs} list \
             registers",
            if protected { "protected" } else { "non-protected" },
            RAM_BYTES >> 20,
            kernel.len(),
            place.kernel,
            header.text_offset,
            header.image_size,
            initrd.0,
            dtb.len(),
            place.dtb
        );
        Ok(Self {
            handle,
            vcpus,
            layout,
            gic: Gic::new(nr_vcpus, NR_SPIS).map_err(|_| "GIC")?,
            uart: Uart::new(),
            nr_lrs,
            protected,
            exits: Exits::default(),
        })
    }

    /// Tears the VM down and unshares its structures.
    ///
    /// # Errors
    /// The first failure.
    pub fn destroy(self) -> Result<(), HcallError> {
        PKVM.vm_destroy(self.handle)?;
        let mut r = vm::release(0);
        for v in &self.vcpus[1..] {
            r = r
                .and(vm::unshare(v.structs.fp))
                .and(vm::unshare(v.structs.vcpu.shared()));
        }
        r
    }

    /// vCPU `i`'s virtual timer: its interrupt line is high (enabled, unmasked, expired), and
    /// its deadline if it is armed.
    fn timer(&self, i: usize) -> (bool, Option<u64>) {
        let v = self.vcpus[i].structs.vcpu;
        let (ctl, cval) = (v.sys(sys::CNTV_CTL_EL0), v.sys(sys::CNTV_CVAL_EL0));
        let armed = ctl & cntv::ENABLE != 0 && ctl & cntv::IMASK == 0;
        (armed && crate::cpu::ticks() >= cval, armed.then_some(cval))
    }

    /// Whether vCPU `i` has an interrupt to take (pending in the model or in its list
    /// registers): what wakes it from `WFI`.
    fn has_work(&mut self, i: usize) -> bool {
        let (level, _) = self.timer(i);
        self.gic.set_ppi_level(i, VTIMER_INTID, level);
        self.gic.highest_pending(i).is_some() || self.vcpus[i].lrs.iter().any(Option::is_some)
    }

    /// Fills vCPU `i`'s free list registers with its highest-priority pending interrupts.
    fn fill_lrs(&mut self, i: usize) {
        let v = self.vcpus[i].structs.vcpu;
        let mut g: VgicState = v.vgic();
        for l in 0..self.nr_lrs {
            if self.vcpus[i].lrs[l].is_some() {
                continue;
            }
            let Some(p) = self.gic.highest_pending(i) else {
                break;
            };
            if !self.gic.acknowledge(i, p.intid) {
                break;
            }
            let group = if p.group == 1 { lr::GROUP } else { 0 };
            g.lr[l] = lr::PENDING | group | (u64::from(p.priority) << lr::PRIORITY_SHIFT)
                | u64::from(p.intid);
            self.vcpus[i].lrs[l] = Some(p.intid);
            self.exits.injected += 1;
        }
        // Only the list registers in use are loaded and saved (at least one: the interface
        // stays on, so the guest's priority mask and group enables live on in ICH_VMCR_EL2).
        let used = self.vcpus[i]
            .lrs
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |l| l + 1);
        g.nr_lrs = used.max(1) as u64;
        v.set_vgic(&g);
    }

    /// After vCPU `i`'s run: list registers the guest deactivated are deactivated in the model.
    fn sync_lrs(&mut self, i: usize) {
        let g = self.vcpus[i].structs.vcpu.vgic();
        for l in 0..(g.nr_lrs as usize).min(self.nr_lrs) {
            if let Some(intid) = self.vcpus[i].lrs[l]
                && g.lr[l] >> lr::STATE_SHIFT == 0
            {
                self.gic.deactivate(i, intid);
                self.vcpus[i].lrs[l] = None;
            }
        }
    }

    /// Emulates an MMIO access; the value for a read.
    fn mmio(&mut self, ipa: u64, size: u64, write: bool, data: u64, con: &mut Console, markers: &[&str; 4]) -> u64 {
        self.exits.mmio += 1;
        match self.layout.device_at(ipa) {
            Some(Device::Uart(off)) => {
                self.exits.uart += 1;
                if write {
                    if let Some(c) = self.uart.write(off, data as u8) {
                        con.putc(c, markers);
                    }
                    0
                } else {
                    u64::from(self.uart.read(off))
                }
            }
            Some(Device::Gicd(off)) => {
                if write {
                    self.gic.dist_write(off, size as u8, data);
                    0
                } else {
                    self.gic.dist_read(off, size as u8)
                }
            }
            Some(Device::Gicr(off)) => {
                if write {
                    self.gic.redist_write(off, size as u8, data);
                    0
                } else {
                    self.gic.redist_read(off, size as u8)
                }
            }
            None => 0,
        }
    }

    /// Answers vCPU `i`'s SMCCC call: PSCI 1.0 (with `CPU_ON` and `AFFINITY_INFO` for a
    /// non-protected VM: a protected vCPU's entry point is EL2's to set), SMCCC 1.1 with no
    /// architectural workarounds, nothing vendor-specific.
    fn smccc(&mut self, i: usize) {
        self.exits.hvc += 1;
        let v = self.vcpus[i].structs.vcpu;
        let (fid, arg) = (v.reg(0) as u32, v.reg(1));
        let not_supported = psci::NOT_SUPPORTED as i64 as u64;
        let target = |mpidr: u64| {
            (mpidr & !0xff == 0 && (mpidr as usize) < self.vcpus.len()).then_some(mpidr as usize)
        };
        let r = match fid {
            psci::VERSION => 0x1_0000,
            psci::FEATURES => match arg as u32 {
                psci::VERSION | psci::FEATURES | psci::CPU_OFF | psci::SYSTEM_OFF
                | psci::SYSTEM_RESET | psci::AFFINITY_INFO_64 | psci::MIGRATE_INFO_TYPE => 0,
                psci::CPU_ON_64 if !self.protected => 0,
                _ => not_supported,
            },
            psci::MIGRATE_INFO_TYPE => 2,
            psci::AFFINITY_INFO_64 | psci::AFFINITY_INFO_32 => match target(arg) {
                Some(t) => u64::from(self.vcpus[t].power == Power::Off),
                None => psci::INVALID_PARAMETERS as i64 as u64,
            },
            psci::CPU_ON_64 if !self.protected => match target(arg) {
                Some(t) if self.vcpus[t].power == Power::Off => {
                    let mut st = VcpuState {
                        pc: v.reg(2),
                        pstate: PSTATE_EL1H_DAIF,
                        ..VcpuState::default()
                    };
                    st.regs[0] = v.reg(3);
                    self.vcpus[t].structs.vcpu.init(&st);
                    self.vcpus[t].power = Power::On;
                    0
                }
                Some(_) => psci::ALREADY_ON as i64 as u64,
                None => psci::INVALID_PARAMETERS as i64 as u64,
            },
            psci::SMCCC_VERSION => u64::from(psci::SMCCC_VERSION_1_1),
            _ => not_supported,
        };
        v.set_reg(0, r);
    }

    /// The next vCPU to run after `last` (round robin among those on, or idle with work);
    /// with every one idle, waits for the earliest timer deadline first. `None`: all off.
    fn next(&mut self, last: usize) -> Option<usize> {
        let n = self.vcpus.len();
        loop {
            let mut any = false;
            for k in 1..=n {
                let i = (last + k) % n;
                match self.vcpus[i].power {
                    Power::Off => {}
                    Power::On | Power::Probe => return Some(i),
                    Power::Idle => {
                        any = true;
                        if self.has_work(i) {
                            self.vcpus[i].power = Power::On;
                            return Some(i);
                        }
                    }
                }
            }
            if !any {
                return None;
            }
            // All idle: sleep until the earliest armed timer (or, with none, just poll).
            let wake = (0..n)
                .filter(|&i| self.vcpus[i].power == Power::Idle)
                .filter_map(|i| self.timer(i).1)
                .min();
            if let Some(t) = wake {
                while crate::cpu::ticks() < t {
                    core::hint::spin_loop();
                }
            }
        }
    }

    /// Runs the guest until it powers off, faults, or a hypercall fails; its console lines go
    /// through `con` (with `markers` noted). With several vCPUs they take turns on this CPU,
    /// each for at most a [`quantum`] (the host's timer, which EL2 turns into the guest's
    /// preemption: the caller enables the host's GIC CPU interface).
    pub fn run(&mut self, con: &mut Console, markers: &[&str; 4]) -> End {
        use aarch64_cpu::registers::{CNTV_CTL_EL0, CNTV_CVAL_EL0, Writeable};
        let smp = self.vcpus.len() > 1;
        let mut i = self.vcpus.len() - 1;
        loop {
            let Some(next) = self.next(i) else {
                return End::PowerOff(u64::from(psci::CPU_OFF));
            };
            i = next;
            let (level, _) = self.timer(i);
            self.gic.set_ppi_level(i, VTIMER_INTID, level);
            self.fill_lrs(i);
            let v = self.vcpus[i].structs.vcpu;
            if smp {
                CNTV_CVAL_EL0.set(crate::cpu::ticks() + quantum());
                CNTV_CTL_EL0.set(1);
            }
            let exit = PKVM.run_at(self.handle, i as u64, || v.exit());
            if smp {
                CNTV_CTL_EL0.set(0);
            }
            let exit = match exit {
                Ok(e) => e,
                Err(HcallError::Errno(pkvm_abi::Error::Perm))
                    if self.vcpus[i].power == Power::Probe =>
                {
                    // Not started yet; with every other vCPU idle, wait a little.
                    if self.vcpus.iter().all(|v| v.power != Power::On) {
                        let until = crate::cpu::ticks() + quantum();
                        while crate::cpu::ticks() < until {
                            core::hint::spin_loop();
                        }
                    }
                    continue;
                }
                Err(e) => return End::Hcall(e),
            };
            if self.vcpus[i].power == Power::Probe {
                self.vcpus[i].power = Power::On;
            }
            self.sync_lrs(i);
            match exit {
                Exit::Mmio {
                    ipa,
                    size,
                    write,
                    data,
                } => {
                    let r = self.mmio(ipa, size, write, data, con, markers);
                    if !write {
                        v.set_mmio_data(r);
                    }
                }
                Exit::Hypercall => self.smccc(i),
                Exit::Idle => {
                    self.exits.idle += 1;
                    self.vcpus[i].power = Power::Idle;
                }
                Exit::Irq => self.exits.irq += 1,
                Exit::SystemEvent(code) if code == u64::from(psci::CPU_OFF) => {
                    // A protected vCPU may be started again by the guest, at EL2.
                    self.vcpus[i].power = if self.protected {
                        Power::Probe
                    } else {
                        Power::Off
                    };
                }
                Exit::SystemEvent(code) => return End::PowerOff(code),
                Exit::Sgi { value, op2 } => {
                    // ICC_SGI0R_EL1 (op2 7) would raise Group 0 SGIs: none in a Linux guest.
                    if op2 != 7 {
                        self.gic.send_sgi(i, value);
                        self.exits.sgi += 1;
                    }
                }
                Exit::Fault { esr, far, .. } => return End::Fault("fault exit", esr, far),
                Exit::MemFault { ipa, .. } => return End::Fault("memory fault", ipa, 0),
                Exit::Unknown(r) => return End::Fault("unknown exit", r, 0),
            }
        }
    }
}
