//! Why a vCPU run ended, decoded from `VcpuRun`'s reason and the vCPU structure's exit record.

use pkvm_abi::guest::{VcpuExit, exit};
use pkvm_abi::psci;

/// How a `VcpuRun` ended (the `exit` reasons of [`pkvm_abi::guest::exit`], with their fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The guest called PSCI SYSTEM_OFF or SYSTEM_RESET: the PSCI function id.
    SystemEvent(u64),
    /// Any other guest hypercall: its `x0..=x3` are in the vCPU registers; the host writes the
    /// results there before the next run.
    Hypercall,
    /// A guest access to an address with no memory, with a valid syndrome: emulate it.
    Mmio {
        /// The guest physical address accessed.
        ipa: u64,
        /// Access size in bytes (1, 2, 4, 8).
        size: u64,
        /// A store (else a load, whose value the host supplies in the exit record).
        write: bool,
        /// The stored value (for a store).
        data: u64,
    },
    /// Any other exception the guest took to EL2; the vCPU is not advanced.
    Fault {
        /// `ESR_EL2`.
        esr: u64,
        /// `FAR_EL2`.
        far: u64,
        /// The faulting IPA of a stage-2 abort (else 0).
        ipa: u64,
    },
    /// A physical interrupt arrived: run again.
    Irq,
    /// The guest executed `WFI` (PC already past it).
    Idle,
    /// The guest touched its memory where it has no page: give it one, run again.
    MemFault {
        /// The page's IPA.
        ipa: u64,
        /// A write (else a read or an instruction fetch).
        write: bool,
    },
    /// The guest wrote an SGI register; the PC is past it.
    Sgi {
        /// The value written (`ICC_SGI1R_EL1` layout).
        value: u64,
        /// The register: 5 `ICC_SGI1R_EL1`, 6 `ICC_ASGI1R_EL1`, 7 `ICC_SGI0R_EL1`.
        op2: u64,
    },
    /// A reason this client does not know (newer EL2, or a broken one): the raw value.
    Unknown(u64),
}

impl Exit {
    /// Decodes `reason` (`VcpuRun`'s `x2`) with the exit record `e` that EL2 wrote.
    #[must_use]
    pub const fn decode(reason: u64, e: &VcpuExit) -> Self {
        match reason {
            exit::SYSTEM_EVENT => Exit::SystemEvent(e.code),
            exit::HYPERCALL => Exit::Hypercall,
            exit::MMIO => Exit::Mmio {
                ipa: e.ipa,
                size: e.mmio_size,
                write: e.mmio_write != 0,
                data: e.mmio_data,
            },
            exit::FAULT => Exit::Fault {
                esr: e.esr,
                far: e.far,
                ipa: e.ipa,
            },
            exit::IRQ => Exit::Irq,
            exit::IDLE => Exit::Idle,
            exit::MEM_FAULT => Exit::MemFault {
                ipa: e.ipa,
                write: e.mmio_write != 0,
            },
            exit::SGI => Exit::Sgi {
                value: e.mmio_data,
                op2: e.code,
            },
            other => Exit::Unknown(other),
        }
    }

    /// The wire value of the reason.
    #[must_use]
    pub const fn reason(&self) -> u64 {
        match *self {
            Exit::SystemEvent(_) => exit::SYSTEM_EVENT,
            Exit::Hypercall => exit::HYPERCALL,
            Exit::Mmio { .. } => exit::MMIO,
            Exit::Fault { .. } => exit::FAULT,
            Exit::Irq => exit::IRQ,
            Exit::Idle => exit::IDLE,
            Exit::MemFault { .. } => exit::MEM_FAULT,
            Exit::Sgi { .. } => exit::SGI,
            Exit::Unknown(r) => r,
        }
    }

    /// Whether the guest powered off (PSCI SYSTEM_OFF).
    #[must_use]
    pub const fn is_power_off(&self) -> bool {
        matches!(*self, Exit::SystemEvent(code) if code == psci::SYSTEM_OFF as u64)
    }
}
