//! The test guest's devices, emulated by the host at each exit: its console (byte stores at
//! [`GUEST_CONSOLE_IPA`], echoed line by line), its id register (a load at
//! [`GUEST_ID_REG_IPA`]: the guest's cycle number), its "ping" hypercall, and its "print"
//! hypercall ([`GUEST_HVC_PRINT`]: a line in a page the guest shares with the host, read with
//! probes — a page the guest did not share aborts, and the host says so instead of dying).

use core::sync::atomic::{AtomicU64, Ordering};

use super::{RunEnd, Vcpu, Vm};
use crate::fault::probe_read;
use pkvm_abi::guest::{
    GUEST_CONSOLE_IPA, GUEST_HVC_PING, GUEST_HVC_PRINT, GUEST_ID_REG_IPA, GUEST_PRINT_MAX,
};

/// Lines printed through [`GUEST_HVC_PRINT`].
pub static PRINTED: AtomicU64 = AtomicU64::new(0);
/// [`GUEST_HVC_PRINT`] requests the host could not read (outside the guest's RAM, or a page
/// the guest does not share: the probe aborted).
pub static PRINT_REFUSED: AtomicU64 = AtomicU64::new(0);

/// Prints `len` bytes at the guest's `ipa` from a page it shares with the host: `Some(len)`,
/// or `None` if they are not all inside one readable page of its RAM.
fn print_shared(vm: &Vm, ipa: u64, len: u64, echo: bool) -> Option<u64> {
    if len > GUEST_PRINT_MAX || ipa / 4096 != (ipa + len.max(1) - 1) / 4096 {
        return None;
    }
    let pa = vm.ram_pa(ipa, len)?;
    let mut buf = [0u8; GUEST_PRINT_MAX as usize];
    let first = pa & !7;
    let mut word = first;
    while word < pa + len {
        // SAFETY: an aligned word of the guest's RAM, which the host allocated for it and
        // holds no reference to; reading it has no side effect. If the guest does not share
        // the page, EL2 injects an abort and the probe reports it.
        let v = unsafe { probe_read(word) }.ok()?;
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            let a = word + i as u64;
            if a >= pa && a < pa + len {
                buf[(a - pa) as usize] = b;
            }
        }
        word += 8;
    }
    if echo {
        let s = core::str::from_utf8(&buf[..len as usize]).unwrap_or("<binary>");
        println!("  | {s}");
    }
    Some(len)
}
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
        Exit::Hypercall if vcpu.reg(0) == GUEST_HVC_PRINT => {
            let r = print_shared(vm, vcpu.reg(1), vcpu.reg(2), con.echo);
            let counter = if r.is_some() { &PRINTED } else { &PRINT_REFUSED };
            counter.fetch_add(1, Ordering::Relaxed);
            vcpu.set_reg(0, r.unwrap_or(u64::MAX));
        }
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
        // (The test guest sends no SGI; one would need no more than running on.)
        Exit::Irq | Exit::Idle | Exit::Sgi { .. } => {}
        Exit::SystemEvent(_) if exit.is_power_off() => return Some(RunEnd::PowerOff),
        // SYSTEM_RESET: how the test guest reports a failed check of its own.
        Exit::SystemEvent(_) => return Some(RunEnd::Reset),
        Exit::Fault { esr, .. } => return Some(RunEnd::Fault(Esr(esr))),
        // The test guests have all their RAM from the start: a missing page is a failure.
        Exit::MemFault { ipa, .. } => return Some(RunEnd::MemFault(ipa)),
        Exit::Unknown(reason) => return Some(RunEnd::Unknown(reason)),
    }
    None
}
