//! One VM's devices, interrupts and vCPU power states as the VMM keeps them, and what each
//! exit does to them: the part of a VMM's run loop that does not depend on where the VMM runs
//! (the bare-metal test host and `pkvm-vmm` on Linux both drive a [`Machine`]).
//!
//! # Interrupts
//!
//! The guest's GIC is [`Gic`] (its distributor and redistributor registers on MMIO exits) plus
//! EL2's list registers (`VcpuState.vgic`, loaded for every run). Before each run
//! [`Machine::prepare`] samples the vCPU's virtual timer (`CNTV_CTL_EL0`/`CNTV_CVAL_EL0`, saved
//! by the world switch: its PPI 27 line is high while the timer is enabled, unmasked and
//! expired), puts the highest-priority pending interrupts in free list registers and
//! acknowledges them in the model; after the run [`Machine::handle`] first deactivates, in the
//! model, the list registers the guest EOId (state 0). SGIs the guest sends come as `SGI`
//! exits and go through the model.
//!
//! # Hostile guests
//!
//! Everything here is guest-controlled input: exit fields, register values, PSCI arguments.
//! Nothing panics on it: a vCPU index out of range is `INVALID_PARAMETERS`, an unknown device
//! address reads as zero.

use alloc::vec;
use alloc::vec::Vec;

use pkvm_abi::guest::{PSTATE_EL1H_DAIF, VcpuState, VgicState, sys, vgic::lr};
use pkvm_abi::psci;
use pkvm_client::Exit;

use crate::Error;
use crate::gic::Gic;
use crate::layout::{Device, Layout};
use crate::uart::Uart;

/// The virtual timer's INTID.
pub const VTIMER_INTID: u32 = 27;
/// SPIs of the guest's GIC.
pub const NR_SPIS: u32 = 64;
/// List registers the VMM tracks (the architecture's most).
const MAX_LRS: usize = pkvm_abi::guest::vgic::MAX_LRS;

/// `CNTV_CTL_EL0` bits.
mod cntv {
    pub const ENABLE: u64 = 1;
    pub const IMASK: u64 = 1 << 1;
}

/// A vCPU's state structure, shared with EL2: the VMM reads what the last exit published and
/// writes what the next run needs. How it is reached (a physical address on bare metal, an
/// `mmap` of `/dev/pkvm` on Linux) is the implementer's business.
pub trait VcpuRegs {
    /// General register `x<n>`.
    fn reg(&self, n: u8) -> u64;
    /// Sets `x<n>`.
    fn set_reg(&self, n: u8, v: u64);
    /// EL1 system register `i` (a [`sys`] index) as the last exit saved it.
    fn sys(&self, i: usize) -> u64;
    /// The virtual CPU interface, read whole.
    fn vgic(&self) -> VgicState;
    /// Writes the virtual CPU interface EL2 loads on the next run.
    fn set_vgic(&self, v: &VgicState);
    /// The value an MMIO read gets (EL2 puts it in the target register on the next run).
    fn set_mmio_data(&self, v: u64);
    /// Writes a whole state (registers, PC, PSTATE, system registers).
    fn init(&self, st: &VcpuState);
}

/// How a vCPU stands, for the VMM's scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Power {
    /// Not started (PSCI `CPU_ON` starts it) or turned off (`CPU_OFF`).
    Off,
    /// Runs.
    On,
    /// In `WFI`: runs again once an interrupt is pending for it ([`Machine::has_work`]).
    Idle,
    /// A protected VM's vCPU that EL2 starts when the guest asks (PSCI `CPU_ON` is answered at
    /// EL2): tried from time to time, off while `VcpuRun` says `EPERM`.
    Probe,
}

/// Exit counts by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

/// See [`Machine::console_fast_path`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleFastPath {
    /// Byte writes here only print their byte (0: none).
    pub write_ipa: u64,
    /// Byte reads here read [`ConsoleFastPath::read_value`] and change nothing (0: none).
    pub read_ipa: u64,
    /// What they read.
    pub read_value: u64,
}

/// What an exit asks of the VMM's loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Run the vCPU again (or, if it went idle or off, the next one).
    Continue,
    /// The guest wrote this byte to its console; then as [`Step::Continue`].
    Console(u8),
    /// PSCI `CPU_ON` of a non-protected VM: write [`entry_state`]`(entry, context)` into vCPU
    /// `target`'s structure (already marked [`Power::On`]) before it runs; then as
    /// [`Step::Continue`].
    CpuOn {
        /// The vCPU to start.
        target: usize,
        /// Its entry point.
        entry: u64,
        /// Its `x0`.
        context: u64,
    },
    /// The guest is over.
    End(End),
}

/// How a guest's run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// PSCI `SYSTEM_OFF` or `SYSTEM_RESET` (the function id), or `CPU_OFF` of the last vCPU.
    PowerOff(u64),
    /// An exit the VMM cannot handle: what, and two values (ESR and FAR, the IPA...).
    Fault(&'static str, u64, u64),
}

impl core::fmt::Display for End {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            End::PowerOff(fid) => write!(f, "PSCI power-off ({fid:#x})"),
            End::Fault(what, a, b) => write!(f, "{what} ({a:#x}, {b:#x})"),
        }
    }
}

/// The state a vCPU started by PSCI `CPU_ON` enters with: at `entry`, `x0` = `context`, EL1h
/// with every exception masked, everything else zero.
pub fn entry_state(entry: u64, context: u64) -> VcpuState {
    let mut state = VcpuState {
        pc: entry,
        pstate: PSTATE_EL1H_DAIF,
        ..VcpuState::default()
    };
    state.regs[0] = context;
    state
}

/// A vCPU as the VMM sees it.
#[derive(Clone, Copy, Debug)]
struct VcpuInfo {
    power: Power,
    /// The INTID each list register holds (as the VMM put it there).
    lrs: [Option<u32>; MAX_LRS],
    /// Whether the vCPU structure's virtual GIC has been written once (interface on).
    interface_on: bool,
}

/// One VM's emulated devices and interrupt state, and its vCPUs' power states.
#[derive(Debug)]
pub struct Machine {
    layout: Layout,
    /// The guest's GIC model.
    pub gic: Gic,
    /// The guest's console.
    pub uart: Uart,
    protected: bool,
    nr_lrs: usize,
    vcpus: Vec<VcpuInfo>,
    /// Exit counts.
    pub exits: Exits,
}

impl Machine {
    /// A machine for `layout`'s vCPUs: vCPU 0 on, the others off (a protected VM's: probed,
    /// EL2 starts them), `nr_lrs` list registers (EL2's `Stat::VgicListRegs`).
    ///
    /// # Errors
    /// [`Error::BadConfig`] for a vCPU count the GIC model does not support.
    pub fn new(layout: Layout, protected: bool, nr_lrs: usize) -> Result<Self, Error> {
        let n = layout.nr_vcpus();
        let mut vcpus = vec![
            VcpuInfo {
                power: if protected { Power::Probe } else { Power::Off },
                lrs: [None; MAX_LRS],
                interface_on: false,
            };
            n
        ];
        if let Some(v) = vcpus.first_mut() {
            v.power = Power::On;
        }
        Ok(Machine {
            gic: Gic::new(n, NR_SPIS)?,
            layout,
            uart: Uart::new(),
            protected,
            nr_lrs: nr_lrs.min(MAX_LRS),
            vcpus,
            exits: Exits::default(),
        })
    }

    /// The number of vCPUs.
    pub fn nr_vcpus(&self) -> usize {
        self.vcpus.len()
    }

    /// vCPU `i`'s power state ([`Power::Off`] for an index out of range).
    pub fn power(&self, i: usize) -> Power {
        self.vcpus.get(i).map_or(Power::Off, |v| v.power)
    }

    /// Sets vCPU `i`'s power state (ignored out of range).
    pub fn set_power(&mut self, i: usize, p: Power) {
        if let Some(v) = self.vcpus.get_mut(i) {
            v.power = p;
        }
    }

    /// Whether any vCPU can still run (on, idle or probed).
    pub fn any_alive(&self) -> bool {
        self.vcpus.iter().any(|v| v.power != Power::Off)
    }

    /// The console accesses a VMM may let its kernel answer (the `/dev/pkvm` console page):
    /// the IPA of the UART's transmit register while a write there only prints its byte, and
    /// the IPA and value of its line status while reading it changes nothing; 0 for none.
    /// Recomputed after every exit the VMM handles (the UART's state changes only then).
    pub fn console_fast_path(&self) -> ConsoleFastPath {
        let (tx, lsr) = self.uart.fast_path();
        let base = crate::layout::UART_BASE;
        ConsoleFastPath {
            write_ipa: if tx { base } else { 0 },
            read_ipa: if lsr.is_some() { base + 5 } else { 0 },
            read_value: lsr.map_or(0, u64::from),
        }
    }

    /// Console accesses a VMM's kernel answered through [`Machine::console_fast_path`],
    /// counted as the MMIO exits they replace.
    pub fn count_console_exits(&mut self, n: u64) {
        self.exits.mmio += n;
        self.exits.uart += n;
    }

    /// vCPU `v`'s virtual timer at counter value `now`: its interrupt line is high (enabled,
    /// unmasked, expired), and its deadline if it is armed.
    pub fn timer(v: &impl VcpuRegs, now: u64) -> (bool, Option<u64>) {
        let (ctl, cval) = (v.sys(sys::CNTV_CTL_EL0), v.sys(sys::CNTV_CVAL_EL0));
        let armed = ctl & cntv::ENABLE != 0 && ctl & cntv::IMASK == 0;
        (armed && now >= cval, armed.then_some(cval))
    }

    /// Whether vCPU `i` has an interrupt to take (pending in the model, its timer's included,
    /// or in its list registers): what wakes it from `WFI`.
    pub fn has_work(&mut self, i: usize, v: &impl VcpuRegs, now: u64) -> bool {
        if i >= self.vcpus.len() {
            return false;
        }
        let (level, _) = Self::timer(v, now);
        self.gic.set_ppi_level(i, VTIMER_INTID, level);
        self.gic.highest_pending(i).is_some() || self.vcpus[i].lrs.iter().any(Option::is_some)
    }

    /// Before vCPU `i` runs: its timer's level into the model, then its free list registers
    /// filled with its highest-priority pending interrupts. The vCPU structure's virtual GIC is
    /// read and written only when an interrupt goes in (or on the first run, which turns the
    /// interface on): most exits (a console byte) change nothing there.
    pub fn prepare(&mut self, i: usize, v: &impl VcpuRegs, now: u64) {
        let Some(info) = self.vcpus.get_mut(i) else {
            return;
        };
        let (level, _) = Self::timer(v, now);
        self.gic.set_ppi_level(i, VTIMER_INTID, level);
        let free = (0..self.nr_lrs).any(|l| info.lrs[l].is_none());
        let pending = free && self.gic.highest_pending(i).is_some();
        if !pending && info.interface_on {
            return;
        }
        let mut g: VgicState = v.vgic();
        for l in 0..self.nr_lrs {
            if info.lrs[l].is_some() {
                continue;
            }
            let Some(p) = self.gic.highest_pending(i) else {
                break;
            };
            if !self.gic.acknowledge(i, p.intid) {
                break;
            }
            let group = if p.group == 1 { lr::GROUP } else { 0 };
            g.lr[l] = lr::PENDING
                | group
                | (u64::from(p.priority) << lr::PRIORITY_SHIFT)
                | u64::from(p.intid);
            info.lrs[l] = Some(p.intid);
            self.exits.injected += 1;
        }
        // The list registers in use are loaded and saved, and at least one: the interface
        // stays on, so the guest's priority mask and group enables live on in ICH_VMCR_EL2.
        // Once the guest has emptied the last one, EL2 keeps loading it as the guest left it
        // (state 0): nothing to rewrite until the next interrupt.
        let used = info
            .lrs
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |l| l + 1);
        g.nr_lrs = used.max(1) as u64;
        v.set_vgic(&g);
        info.interface_on = true;
    }

    /// After vCPU `i`'s run: list registers the guest deactivated are deactivated in the model
    /// (nothing to read when the VMM put none there).
    fn sync_lrs(&mut self, i: usize, v: &impl VcpuRegs) {
        let info = &mut self.vcpus[i];
        if info.lrs.iter().all(Option::is_none) {
            return;
        }
        let g = v.vgic();
        for l in 0..(g.nr_lrs as usize).min(self.nr_lrs) {
            if let Some(intid) = info.lrs[l]
                && g.lr[l] >> lr::STATE_SHIFT == 0
            {
                self.gic.deactivate(i, intid);
                info.lrs[l] = None;
            }
        }
    }

    /// Emulates an MMIO access: the value for a read, and a byte the console printed.
    fn mmio(&mut self, ipa: u64, size: u64, write: bool, data: u64) -> (u64, Option<u8>) {
        self.exits.mmio += 1;
        match self.layout.device_at(ipa) {
            Some(Device::Uart(off)) => {
                self.exits.uart += 1;
                if write {
                    (0, self.uart.write(off, data as u8))
                } else {
                    (u64::from(self.uart.read(off)), None)
                }
            }
            Some(Device::Gicd(off)) if write => {
                self.gic.dist_write(off, size as u8, data);
                (0, None)
            }
            Some(Device::Gicd(off)) => (self.gic.dist_read(off, size as u8), None),
            Some(Device::Gicr(off)) if write => {
                self.gic.redist_write(off, size as u8, data);
                (0, None)
            }
            Some(Device::Gicr(off)) => (self.gic.redist_read(off, size as u8), None),
            None => (0, None),
        }
    }

    /// Answers vCPU `i`'s SMCCC call: PSCI 1.0 (with `CPU_ON` and `AFFINITY_INFO` for a
    /// non-protected VM: a protected vCPU's entry point is EL2's to set), SMCCC 1.1 with no
    /// architectural workarounds, nothing vendor-specific.
    fn smccc(&mut self, v: &impl VcpuRegs) -> Step {
        self.exits.hvc += 1;
        let (fid, arg) = (v.reg(0) as u32, v.reg(1));
        let not_supported = psci::NOT_SUPPORTED as i64 as u64;
        let invalid = psci::INVALID_PARAMETERS as i64 as u64;
        let n = self.vcpus.len();
        let target =
            |mpidr: u64| (mpidr & !0xff == 0 && (mpidr as usize) < n).then_some(mpidr as usize);
        let mut step = Step::Continue;
        let r = match fid {
            psci::VERSION => 0x1_0000,
            psci::FEATURES => match arg as u32 {
                psci::VERSION
                | psci::FEATURES
                | psci::CPU_OFF
                | psci::SYSTEM_OFF
                | psci::SYSTEM_RESET
                | psci::AFFINITY_INFO_64
                | psci::MIGRATE_INFO_TYPE => 0,
                psci::CPU_ON_64 if !self.protected => 0,
                _ => not_supported,
            },
            psci::MIGRATE_INFO_TYPE => 2,
            psci::AFFINITY_INFO_64 | psci::AFFINITY_INFO_32 => match target(arg) {
                Some(t) => u64::from(self.vcpus[t].power == Power::Off),
                None => invalid,
            },
            psci::CPU_ON_64 if !self.protected => match target(arg) {
                Some(t) if self.vcpus[t].power == Power::Off => {
                    // Its structure is rewritten whole (virtual GIC off): turn it on again.
                    self.vcpus[t].power = Power::On;
                    self.vcpus[t].interface_on = false;
                    step = Step::CpuOn {
                        target: t,
                        entry: v.reg(2),
                        context: v.reg(3),
                    };
                    0
                }
                Some(_) => psci::ALREADY_ON as i64 as u64,
                None => invalid,
            },
            psci::SMCCC_VERSION => u64::from(psci::SMCCC_VERSION_1_1),
            _ => not_supported,
        };
        v.set_reg(0, r);
        step
    }

    /// What vCPU `i`'s `exit` does: its list registers synchronised with the model, its device
    /// access emulated, its call answered, its power state moved.
    pub fn handle(&mut self, i: usize, v: &impl VcpuRegs, exit: Exit) -> Step {
        if i >= self.vcpus.len() {
            return Step::End(End::Fault("vCPU index", i as u64, 0));
        }
        if self.vcpus[i].power == Power::Probe {
            self.vcpus[i].power = Power::On;
        }
        self.sync_lrs(i, v);
        match exit {
            Exit::Mmio {
                ipa,
                size,
                write,
                data,
            } => {
                let (r, out) = self.mmio(ipa, size, write, data);
                if !write {
                    v.set_mmio_data(r);
                }
                out.map_or(Step::Continue, Step::Console)
            }
            Exit::Hypercall => self.smccc(v),
            Exit::Idle => {
                self.exits.idle += 1;
                self.vcpus[i].power = Power::Idle;
                Step::Continue
            }
            Exit::Irq => {
                self.exits.irq += 1;
                Step::Continue
            }
            Exit::SystemEvent(code) if code == u64::from(psci::CPU_OFF) => {
                // A protected vCPU may be started again by the guest, at EL2.
                self.vcpus[i].power = if self.protected {
                    Power::Probe
                } else {
                    Power::Off
                };
                Step::Continue
            }
            Exit::SystemEvent(code) => Step::End(End::PowerOff(code)),
            Exit::Sgi { value, op2 } => {
                // ICC_SGI0R_EL1 (op2 7) would raise Group 0 SGIs: none in a Linux guest.
                if op2 != 7 {
                    self.gic.send_sgi(i, value);
                    self.exits.sgi += 1;
                }
                Step::Continue
            }
            Exit::Fault { esr, far, .. } => Step::End(End::Fault("fault exit", esr, far)),
            Exit::MemFault { ipa, .. } => Step::End(End::Fault("memory fault", ipa, 0)),
            Exit::Unknown(r) => Step::End(End::Fault("unknown exit", r, 0)),
        }
    }
}

#[cfg(test)]
mod tests;
