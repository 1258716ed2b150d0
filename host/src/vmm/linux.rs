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
use pkvm_arch::esr::{Ec, Esr, SysregAccess};
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
/// The vCPU structures' slot in `crate::vm` (the scenario runs no other guest meanwhile).
const SLOT: usize = 0;

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

/// A Linux guest, created and ready to run.
#[derive(Debug)]
pub struct LinuxVm {
    handle: VmHandle,
    structs: Structs,
    layout: Layout,
    gic: Gic,
    uart: Uart,
    /// The INTID each list register holds (as the VMM put it there).
    lrs: [Option<u32>; 16],
    nr_lrs: usize,
    /// Exit counts.
    pub exits: Exits,
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
    /// Builds the guest in `mem`: the kernel and initramfs of `b` copied in, the device tree
    /// written, the VM created at EL2 — `protected`: its RAM **donated** (the host cannot read
    /// it from then on, and gets it back zeroed), else shared in place — and its vCPU entering
    /// the kernel with `x0` = the device tree.
    ///
    /// # Errors
    /// What went wrong (a bad kernel, a refused hypercall).
    pub fn create(
        mem: GuestMem,
        b: &Bundle,
        protected: bool,
        bootargs: &str,
    ) -> Result<Self, &'static str> {
        let layout = Layout::new(1, RAM_BYTES).map_err(|_| "layout")?;
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

        let s = vm::structs(SLOT);
        s.desc.write(
            0,
            &VmDesc {
                ipa_bits: 40,
                nr_vcpus: 1,
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
        let mut st = VcpuState::default();
        st.regs[0] = place.dtb;
        st.pc = place.kernel;
        st.pstate = PSTATE_EL1H_DAIF;
        s.vcpu.init(&st);
        s.fp.fill(0);
        let memcache = mem.memcache;
        s.share(&[s.desc]).map_err(|_| "share the descriptor")?;
        let handle = PKVM
            .vm_init(s.desc.pa(), memcache >> PAGE_SHIFT, MEMCACHE_PAGES)
            .map_err(|_| "VmInit")?;
        s.share(&[s.vcpu.shared(), s.fp])
            .map_err(|_| "share the vCPU")?;
        PKVM.vcpu_init(handle, s.vcpu.shared().pa(), s.fp.pa())
            .map_err(|_| "VcpuInit")?;
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
            "linux-guest: {} VM, {} MiB RAM at PA {ram:#x} (IPA {ram_ipa:#x}), kernel {} bytes at IPA \
             {:#x} (text_offset {:#x}, image_size {:#x}), initramfs {initrd_len} bytes at IPA \
             {:#x}, DTB {} bytes at IPA {:#x}, {nr_lrs} list registers",
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
            structs: s,
            layout,
            gic: Gic::new(1, NR_SPIS).map_err(|_| "GIC")?,
            uart: Uart::new(),
            lrs: [None; 16],
            nr_lrs,
            exits: Exits::default(),
        })
    }

    /// Tears the VM down and unshares its structures.
    ///
    /// # Errors
    /// The first failure.
    pub fn destroy(self) -> Result<(), HcallError> {
        PKVM.vm_destroy(self.handle)?;
        vm::release(SLOT)
    }

    /// Samples the guest's virtual timer into the GIC model (its PPI line).
    fn sample_timer(&mut self) {
        let v = self.structs.vcpu;
        let (ctl, cval) = (v.sys(sys::CNTV_CTL_EL0), v.sys(sys::CNTV_CVAL_EL0));
        let level = ctl & cntv::ENABLE != 0 && ctl & cntv::IMASK == 0 && crate::cpu::ticks() >= cval;
        self.gic.set_ppi_level(0, VTIMER_INTID, level);
    }

    /// Fills free list registers with the highest-priority pending interrupts.
    fn fill_lrs(&mut self) {
        let v = self.structs.vcpu;
        let mut g: VgicState = v.vgic();
        for i in 0..self.nr_lrs {
            if self.lrs[i].is_some() {
                continue;
            }
            let Some(p) = self.gic.highest_pending(0) else {
                break;
            };
            if !self.gic.acknowledge(0, p.intid) {
                break;
            }
            let group = if p.group == 1 { lr::GROUP } else { 0 };
            g.lr[i] = lr::PENDING | group | (u64::from(p.priority) << lr::PRIORITY_SHIFT)
                | u64::from(p.intid);
            self.lrs[i] = Some(p.intid);
            self.exits.injected += 1;
        }
        // Only the list registers in use are loaded and saved (at least one: the interface
        // stays on, so the guest's priority mask and group enables live on in ICH_VMCR_EL2).
        let used = self.lrs.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
        g.nr_lrs = used.max(1) as u64;
        v.set_vgic(&g);
    }

    /// After a run: list registers the guest deactivated are deactivated in the model.
    fn sync_lrs(&mut self) {
        let g = self.structs.vcpu.vgic();
        for i in 0..(g.nr_lrs as usize).min(self.nr_lrs) {
            if let Some(intid) = self.lrs[i]
                && g.lr[i] >> lr::STATE_SHIFT == 0
            {
                self.gic.deactivate(0, intid);
                self.lrs[i] = None;
            }
        }
    }

    /// Emulates an MMIO access; `Some(value)` for a read.
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

    /// Answers an SMCCC call (PSCI 1.0 for one vCPU, SMCCC 1.1 with no architectural
    /// workarounds, nothing vendor-specific).
    fn smccc(&mut self) {
        self.exits.hvc += 1;
        let v = self.structs.vcpu;
        let (fid, arg) = (v.reg(0) as u32, v.reg(1) as u32);
        let not_supported = psci::NOT_SUPPORTED as i64 as u64;
        let r = match fid {
            psci::VERSION => 0x1_0000,
            psci::FEATURES => match arg {
                psci::VERSION | psci::FEATURES | psci::CPU_OFF | psci::SYSTEM_OFF
                | psci::SYSTEM_RESET | psci::AFFINITY_INFO_64 | psci::MIGRATE_INFO_TYPE => 0,
                _ => not_supported,
            },
            psci::MIGRATE_INFO_TYPE => 2,
            psci::AFFINITY_INFO_64 | psci::AFFINITY_INFO_32 if v.reg(1) == 0 => 0,
            psci::SMCCC_VERSION => u64::from(psci::SMCCC_VERSION_1_1),
            _ => not_supported,
        };
        v.set_reg(0, r);
    }

    /// Handles a `FAULT` exit the VMM emulates (an SGI register write); false for others.
    fn fault(&mut self, esr: u64) -> bool {
        let esr = Esr(esr);
        if esr.ec() != Ec::Sysreg64 {
            return false;
        }
        let a = SysregAccess::from_iss(esr.iss());
        // ICC_SGI1R_EL1 (op2 5), ICC_ASGI1R_EL1 (6), ICC_SGI0R_EL1 (7): Op0 3, Op1 0, CRn 12,
        // CRm 11.
        if a.read || (a.op0, a.op1, a.crn, a.crm) != (3, 0, 12, 11) || !(5..=7).contains(&a.op2) {
            return false;
        }
        let v = self.structs.vcpu;
        // (A protected vCPU's registers and PC are EL2's: its SGIs cannot be emulated here.)
        let value = if a.rt == 31 { 0 } else { v.reg(a.rt) };
        if a.op2 != 7 {
            self.gic.send_sgi(0, value);
            self.exits.sgi += 1;
        }
        v.set_pc(v.pc() + 4);
        true
    }

    /// A `WFI`: waits for the guest's timer deadline, unless an interrupt is pending already.
    fn idle(&mut self) {
        self.exits.idle += 1;
        if self.gic.highest_pending(0).is_some() || self.lrs.iter().any(Option::is_some) {
            return;
        }
        let v = self.structs.vcpu;
        let (ctl, cval) = (v.sys(sys::CNTV_CTL_EL0), v.sys(sys::CNTV_CVAL_EL0));
        if ctl & cntv::ENABLE == 0 || ctl & cntv::IMASK != 0 {
            return;
        }
        while crate::cpu::ticks() < cval {
            core::hint::spin_loop();
        }
    }

    /// Runs the guest until it powers off, faults, or a hypercall fails; its console lines go
    /// through `con` (with `markers` noted).
    pub fn run(&mut self, con: &mut Console, markers: &[&str; 4]) -> End {
        let v = self.structs.vcpu;
        loop {
            self.sample_timer();
            self.fill_lrs();
            let exit = match PKVM.run(self.handle, || v.exit()) {
                Ok(e) => e,
                Err(e) => return End::Hcall(e),
            };
            self.sync_lrs();
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
                Exit::Hypercall => self.smccc(),
                Exit::Idle => self.idle(),
                Exit::Irq => self.exits.irq += 1,
                Exit::SystemEvent(code) => return End::PowerOff(code),
                Exit::Fault { esr, far, .. } => {
                    if !self.fault(esr) {
                        return End::Fault("fault exit", esr, far);
                    }
                }
                Exit::MemFault { ipa, .. } => return End::Fault("memory fault", ipa, 0),
                Exit::Unknown(r) => return End::Fault("unknown exit", r, 0),
            }
        }
    }
}
