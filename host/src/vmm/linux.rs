//! Debian's arm64 Linux as a guest of the test host: the VM (non-protected, RAM shared in
//! place), its boot (kernel, initramfs and device tree placed by `pkvm-vmm-core`), and the run
//! loop that emulates its devices and delivers its interrupts.
//!
//! What each exit does to the guest's devices, interrupts and vCPU power states is
//! `pkvm_vmm_core::machine::Machine`, shared with `pkvm-vmm` on Linux; this file is the
//! bare-metal side: the VM's memory and structures, and a scheduler running the vCPUs round
//! robin on the host's one CPU. A `WFI` (an `IDLE` exit) waits for the guest's timer deadline
//! when nothing is pending.

use alloc::vec::Vec;

use pkvm_abi::guest::{PROT_RWX, PSTATE_EL1H_DAIF, VcpuState, VgicState, VmDesc};
use pkvm_abi::{PAGE_SHIFT, Stat, psci};
use pkvm_client::{HcallError, VmHandle};
use pkvm_vmm_core::fdt::GuestFdt;
use pkvm_vmm_core::image::{self, Header};
use pkvm_vmm_core::layout::Layout;
pub use pkvm_vmm_core::machine::Exits;
use pkvm_vmm_core::machine::{Machine, Power, Step, VcpuRegs, entry_state};

use super::bundle::Bundle;
use crate::env::Env;
use crate::pkvm::{self, PKVM};
use crate::vm::{self, Structs};

/// Guest RAM: what a 64-page memcache can map with 4 KiB pages (one level-3 table per 2 MiB,
/// plus the upper levels).
pub const RAM_BYTES: u64 = 112 << 20;
/// The stage-2 memcache (the largest EL2 accepts).
const MEMCACHE_PAGES: u64 = pkvm_abi::guest::MEMCACHE_MAX_PAGES;
/// The kernel command line.
pub const BOOTARGS: &str =
    "console=ttyS0 earlycon=uart8250,mmio,0x9000000 rdinit=/init panic=-1 cma=0";

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

impl From<pkvm_vmm_core::machine::End> for End {
    fn from(e: pkvm_vmm_core::machine::End) -> Self {
        match e {
            pkvm_vmm_core::machine::End::PowerOff(f) => End::PowerOff(f),
            pkvm_vmm_core::machine::End::Fault(w, a, b) => End::Fault(w, a, b),
        }
    }
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

impl VcpuRegs for crate::vm::Vcpu {
    fn reg(&self, n: u8) -> u64 {
        crate::vm::Vcpu::reg(self, n)
    }
    fn set_reg(&self, n: u8, v: u64) {
        crate::vm::Vcpu::set_reg(self, n, v);
    }
    fn sys(&self, i: usize) -> u64 {
        crate::vm::Vcpu::sys(self, i)
    }
    fn vgic(&self) -> VgicState {
        crate::vm::Vcpu::vgic(self)
    }
    fn set_vgic(&self, v: &VgicState) {
        crate::vm::Vcpu::set_vgic(self, v);
    }
    fn set_mmio_data(&self, v: u64) {
        crate::vm::Vcpu::set_mmio_data(self, v);
    }
    fn init(&self, st: &VcpuState) {
        crate::vm::Vcpu::init(self, st);
    }
}

/// A Linux guest, created and ready to run.
#[derive(Debug)]
pub struct LinuxVm {
    handle: VmHandle,
    vcpus: Vec<Structs>,
    machine: Machine,
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
            vcpus.push(s);
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
            machine: Machine::new(layout, protected, nr_lrs).map_err(|_| "GIC")?,
        })
    }

    /// Exit counts so far.
    pub fn exits(&self) -> Exits {
        self.machine.exits
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
                .and(vm::unshare(v.fp))
                .and(vm::unshare(v.vcpu.shared()));
        }
        r
    }

    /// The next vCPU to run after `last` (round robin among those on, or idle with work);
    /// with every one idle, waits for the earliest timer deadline first. `None`: all off.
    fn next(&mut self, last: usize) -> Option<usize> {
        let n = self.vcpus.len();
        let m = &mut self.machine;
        loop {
            let mut any = false;
            let now = crate::cpu::ticks();
            for k in 1..=n {
                let i = (last + k) % n;
                match m.power(i) {
                    Power::Off => {}
                    Power::On | Power::Probe => return Some(i),
                    Power::Idle => {
                        any = true;
                        if m.has_work(i, &self.vcpus[i].vcpu, now) {
                            m.set_power(i, Power::On);
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
                .filter(|&i| m.power(i) == Power::Idle)
                .filter_map(|i| Machine::timer(&self.vcpus[i].vcpu, now).1)
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
                break End::PowerOff(u64::from(psci::CPU_OFF));
            };
            i = next;
            let v = self.vcpus[i].vcpu;
            self.machine.prepare(i, &v, crate::cpu::ticks());
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
                    if self.machine.power(i) == Power::Probe =>
                {
                    // Not started yet; with every other vCPU idle, wait a little.
                    if (0..self.vcpus.len()).all(|k| self.machine.power(k) != Power::On) {
                        let until = crate::cpu::ticks() + quantum();
                        while crate::cpu::ticks() < until {
                            core::hint::spin_loop();
                        }
                    }
                    continue;
                }
                Err(e) => break End::Hcall(e),
            };
            match self.machine.handle(i, &v, exit) {
                Step::Continue => {}
                Step::Console(c) => con.putc(c, markers),
                Step::CpuOn {
                    target,
                    entry,
                    context,
                } => self.vcpus[target].vcpu.init(&entry_state(entry, context)),
                Step::End(e) => break e.into(),
            }
        }
    }
}
