//! `pkvm-vmm bench`: the cost of one vCPU run round trip through the module — `PKVM_RUN`
//! (ioctl), `VcpuRun` (EL2), the guest's MMIO read, and back — with a three-instruction guest
//! that reads a device register forever.

use std::io;

use pkvm_abi::guest::{PSTATE_EL1H_DAIF, VcpuState, exit};
use pkvm_vmm_core::dev::{CREATE_PROTECTED, Counts, Create, MEM_ALIGN};
use pkvm_vmm_core::layout::{RAM_BASE, UART_BASE};
use pkvm_vmm_core::machine::VcpuRegs;

use crate::dev::{self, Vm};

/// The guest: `movz x0, #0x0900, lsl #16; 1: ldr w1, [x0]; b 1b` — an MMIO read of the UART's
/// first register at every iteration.
const LOOP: [u32; 3] = [0xd2a1_2000, 0xb940_0001, 0x17ff_ffff];

/// What one bench run measured.
#[derive(Debug)]
pub struct Figures {
    /// Round trips measured.
    pub round_trips: u64,
    /// Counter ticks they took, and the counter's frequency.
    pub ticks: (u64, u64),
    /// The module's counts over them.
    pub counts: Counts,
}

/// Runs `warmup` then `n` round trips; with `vgic`, the guest's virtual GIC interface on (one
/// list register, empty), as `pkvm-vmm run` has it for a Linux guest: EL2 then validates,
/// loads, saves and publishes it on every run.
///
/// # Errors
/// A refused ioctl, or an exit that is not the expected MMIO read.
pub fn run(
    device: &std::path::Path,
    protected: bool,
    vgic: bool,
    warmup: u64,
    n: u64,
) -> io::Result<Figures> {
    const { assert!(UART_BASE == 0x0900_0000) };
    let vm = Vm::open(device)?;
    vm.create(&Create {
        mem_size: MEM_ALIGN,
        mem_ipa: RAM_BASE,
        nr_vcpus: 1,
        flags: if protected { CREATE_PROTECTED } else { 0 },
    })?;
    let code: Vec<u8> = LOOP.iter().flat_map(|w| w.to_le_bytes()).collect();
    vm.load(RAM_BASE, &code)?;
    let page = vm.map_vcpu(0)?;
    let mut st = VcpuState {
        pc: RAM_BASE,
        pstate: PSTATE_EL1H_DAIF,
        ..VcpuState::default()
    };
    st.vgic.nr_lrs = u64::from(vgic);
    page.init(&st);
    vm.start()?;
    let round_trip = || -> io::Result<()> {
        loop {
            match vm.run(0) {
                Ok(exit::MMIO) => {
                    page.set_mmio_data(0);
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Ok(r) => {
                    return Err(io::Error::other(format!(
                        "unexpected exit {r} ({:?})",
                        page.exit()
                    )));
                }
                Err(e) => return Err(e),
            }
        }
    };
    for _ in 0..warmup {
        round_trip()?;
    }
    let c0 = vm.counts()?;
    let (t0, freq) = dev::counter();
    for _ in 0..n {
        round_trip()?;
    }
    let t1 = dev::counter().0;
    let c1 = vm.counts()?;
    Ok(Figures {
        round_trips: n,
        ticks: (t1 - t0, freq),
        counts: Counts {
            runs: c1.runs - c0.runs,
            irq_exits: c1.irq_exits - c0.irq_exits,
            returns: c1.returns - c0.returns,
            el2_instructions: c1.el2_instructions - c0.el2_instructions,
            console_writes: c1.console_writes - c0.console_writes,
            console_reads: c1.console_reads - c0.console_reads,
        },
    })
}
