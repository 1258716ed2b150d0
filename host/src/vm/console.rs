//! The test guest's devices, emulated by the host at each exit: its console (byte stores at
//! [`GUEST_CONSOLE_IPA`], echoed line by line), its id register (a load at
//! [`GUEST_ID_REG_IPA`]: the guest's cycle number), and its "ping" hypercall.

use super::{RunEnd, Vcpu, Vm};
use pkvm_abi::guest::{GUEST_CONSOLE_IPA, GUEST_HVC_PING, GUEST_ID_REG_IPA};
use pkvm_arch::esr::Esr;
use pkvm_client::Exit;

/// Console line buffer for one guest.
#[derive(Debug)]
pub struct Console {
    line: [u8; 80],
    len: usize,
    echo: bool,
}

impl Console {
    /// An empty line; `echo`: print each line.
    pub fn new(echo: bool) -> Self {
        Console {
            line: [0; 80],
            len: 0,
            echo,
        }
    }

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

/// Handles one exit of `vm` (whose vCPU structure is `vcpu`): `Some` when the run is over.
pub fn emulate(vm: &Vm, vcpu: Vcpu, exit: Exit, con: &mut Console) -> Option<RunEnd> {
    match exit {
        Exit::Mmio {
            ipa: GUEST_CONSOLE_IPA,
            write: true,
            data,
            ..
        } => con.put(data as u8),
        Exit::Mmio {
            ipa: GUEST_ID_REG_IPA,
            write: false,
            ..
        } => vcpu.set_mmio_data(vm.id),
        Exit::Mmio { .. } => vcpu.set_mmio_data(0),
        Exit::Hypercall if vcpu.reg(0) == GUEST_HVC_PING => vcpu.set_reg(0, vcpu.reg(1).wrapping_add(1)),
        Exit::Hypercall => vcpu.set_reg(0, u64::MAX),
        Exit::Irq | Exit::Idle => {}
        Exit::SystemEvent(_) if exit.is_power_off() => return Some(RunEnd::PowerOff),
        // SYSTEM_RESET: how the test guest reports a failed check of its own.
        Exit::SystemEvent(_) => return Some(RunEnd::Reset),
        Exit::Fault { esr, .. } => return Some(RunEnd::Fault(Esr(esr))),
        Exit::Unknown(reason) => return Some(RunEnd::Unknown(reason)),
    }
    None
}
