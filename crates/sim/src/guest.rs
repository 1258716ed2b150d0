//! The simulated guest: what it does on each run ([`SimGuestAction`], scripted by the tests),
//! and the world switch that plays it — writing the guest's registers into the vCPU structure
//! and returning the exit a real CPU would take, `ESR_EL2`/`FAR_EL2`/`HPFAR_EL2` included
//! (left stale where the architecture leaves them).

use std::sync::Mutex;

use pkvm_abi::guest::vgic;
use pkvm_arch::esr::{DataAbort, Ec, Esr};
use pkvm_hyp::platform::{GuestEntry, GuestExit, GuestRunner, PhysMem, VgicInfo, VgicRegs};

use crate::platform::SimPlatform;

/// One thing the simulated guest does before it exits (the world switch itself is EL2-only:
/// the simulator writes the guest's registers into the vCPU structure as the real one would).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimGuestAction {
    /// `HVC #0` with `x0`, `x1`.
    Hvc(u64, u64),
    /// `HVC #0` with `x0..x3`.
    Call([u64; 4]),
    /// A store of `size` bytes of `value` (from register `reg`) to `ipa` with a valid syndrome.
    MmioWrite {
        ipa: u64,
        size: u8,
        reg: u8,
        value: u64,
    },
    /// A load of `size` bytes from `ipa` into register `reg`, with a valid syndrome.
    MmioRead { ipa: u64, size: u8, reg: u8 },
    /// A sign-extending load (`LDRSB`/`LDRSH`/`LDRSW`) of `size` bytes from `ipa` into `reg`,
    /// a 64-bit register if `sf` (else its 32-bit view), with a valid syndrome.
    MmioReadSigned {
        ipa: u64,
        size: u8,
        reg: u8,
        sf: bool,
    },
    /// A synchronous exception with this ESR (a trapped instruction, a fault without syndrome).
    Sync(u64),
    /// A physical interrupt.
    Irq,
    /// The guest acknowledges and EOIs every interrupt its list registers hold (state 0; those
    /// with `EOI` set raise their `ICH_EISR_EL2` bit and are not yet empty in
    /// `ICH_ELRSR_EL2`; the active priorities are all dropped), then powers off.
    EoiAll,
    /// The guest stops at `gate` (the vCPU is running: EL2 is inside `VcpuRun`) until the
    /// test releases it, then powers off. Lets a test call EL2 from another CPU meanwhile.
    Pause(&'static PauseGate),
}

/// A rendezvous between a test and a simulated guest run ([`SimGuestAction::Pause`]).
#[derive(Debug, Default)]
pub struct PauseGate {
    /// 0: idle, 1: a run is paused here, 2: released.
    state: Mutex<u8>,
    cv: std::sync::Condvar,
}

impl PauseGate {
    /// An idle gate (usable in a `static`).
    #[must_use]
    pub const fn new() -> Self {
        PauseGate {
            state: Mutex::new(0),
            cv: std::sync::Condvar::new(),
        }
    }

    /// Blocks until a run is paused at the gate.
    ///
    /// # Panics
    /// If no run arrives within 10 s (a test bug, not a hang).
    pub fn wait_paused(&self) {
        let s = self.state.lock().unwrap();
        let (s, t) = self
            .cv
            .wait_timeout_while(s, std::time::Duration::from_secs(10), |s| *s != 1)
            .unwrap();
        assert!(!t.timed_out() && *s == 1, "no guest run paused at the gate");
    }

    /// Lets the paused run go on.
    pub fn release(&self) {
        *self.state.lock().unwrap() = 2;
        self.cv.notify_all();
    }

    fn pause(&self) {
        let mut s = self.state.lock().unwrap();
        *s = 1;
        self.cv.notify_all();
        let (mut s, t) = self
            .cv
            .wait_timeout_while(s, std::time::Duration::from_secs(10), |s| *s != 2)
            .unwrap();
        assert!(!t.timed_out(), "the test never released the paused guest");
        *s = 0;
    }
}

impl PartialEq for PauseGate {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for PauseGate {}

/// A level-3 translation fault with a valid syndrome (what an access to unmapped guest MMIO
/// gives); the access's fields are filled in per action.
const TRANSLATION_L3: DataAbort = DataAbort {
    isv: true,
    sas: 0,
    sse: false,
    srt: 0,
    sf: false,
    ar: false,
    fnv: false,
    ea: false,
    cm: false,
    s1ptw: false,
    wnr: false,
    dfsc: 0b000111,
};

/// The `ESR_EL2` of a data abort from the guest with syndrome `d`.
fn mmio_esr(d: DataAbort) -> u64 {
    Esr::new(Ec::DabtLow, true, d.iss()).0
}

impl GuestRunner for SimPlatform {
    fn vgic_info(&self) -> Option<VgicInfo> {
        *self.vgic_info.lock().unwrap()
    }

    /// Every feature field at its maximum: what a guest reads is what EL2 leaves of it.
    fn read_id_reg(&self, _crm: u8, _op2: u8) -> u64 {
        u64::MAX
    }

    fn run_guest(&self, e: &GuestEntry, mut vgic: Option<&mut VgicRegs>) -> GuestExit {
        use pkvm_abi::guest::vcpu_off;
        self.guest_entries.lock().unwrap().push(*e);
        self.guest_vgic
            .lock()
            .unwrap()
            .push(vgic.as_deref().copied());
        let regs = e.vcpu_pa + vcpu_off::REGS as u64;
        let x = core::array::from_fn(|i| self.read_u64(regs + 8 * i as u64));
        self.guest_x.lock().unwrap().push(x);
        // Like the real world switch, the guest's PC and PSTATE come back in the structure,
        // and its FP registers in the FP area: the simulated guest counts its runs in the low
        // half of V0 (so that the FP area EL2 names is written, as by hardware).
        let v0 = self.read_u64(e.fp_pa);
        self.write_u64(e.fp_pa, v0.wrapping_add(1));
        self.write_u64(e.vcpu_pa + vcpu_off::PC as u64, e.pc);
        self.write_u64(e.vcpu_pa + vcpu_off::PSTATE as u64, e.pstate);
        let off = SimGuestAction::Hvc(u64::from(pkvm_abi::psci::SYSTEM_OFF), 0);
        let mut action = self.guest_script.lock().unwrap().pop_front().unwrap_or(off);
        if let SimGuestAction::Pause(gate) = action {
            gate.pause();
            action = off;
        }
        if let SimGuestAction::EoiAll = action {
            if let Some(v) = vgic.as_deref_mut() {
                // Each EOI drops the running priority: no active priority left.
                v.ap0r = [0; 4];
                v.ap1r = [0; 4];
                for (i, lr) in v.lr[..usize::from(v.nr_lrs)].iter_mut().enumerate() {
                    if *lr >> vgic::lr::STATE_SHIFT != 0 && *lr & vgic::lr::EOI != 0 {
                        v.eisr |= 1 << i;
                    }
                    *lr &= !(3 << vgic::lr::STATE_SHIFT);
                }
                // ICH_MISR_EL2.EOI: some list register has its EOI maintenance event.
                v.misr = u64::from(v.eisr != 0);
            }
            action = off;
        }
        // As the hardware keeps them: the empty list registers, among all the CPU has (those
        // past `nr_lrs` are 0). One whose interrupt was deactivated but asked for an EOI
        // maintenance event (`EOI` set) is not empty until the host clears it.
        if let (Some(v), Some(info)) = (vgic, self.vgic_info()) {
            v.elrsr = (0..usize::from(info.nr_lrs))
                .filter(|&i| {
                    let lr = if i < usize::from(v.nr_lrs) {
                        v.lr[i]
                    } else {
                        0
                    };
                    lr >> vgic::lr::STATE_SHIFT == 0 && lr & vgic::lr::EOI == 0
                })
                .fold(0, |m, i| m | 1 << i);
        }
        let hpfar = |ipa: u64| (ipa >> 12) << 4;
        if let SimGuestAction::Call(x) = action {
            for (i, v) in x.into_iter().enumerate().skip(2) {
                self.write_u64(regs + 8 * i as u64, v);
            }
            action = SimGuestAction::Hvc(x[0], x[1]);
        }
        // The exit of a stage-2 data abort with syndrome `d` at `ipa`.
        let mmio_exit = |d: DataAbort, ipa: u64| GuestExit {
            vector: 0,
            esr: mmio_esr(d),
            far: ipa,
            hpfar: hpfar(ipa),
        };
        let ex = match action {
            SimGuestAction::Hvc(x0, x1) => {
                self.write_u64(regs, x0);
                self.write_u64(regs + 8, x1);
                self.write_u64(e.vcpu_pa + vcpu_off::PC as u64, e.pc + 4);
                // Stale FAR/HPFAR from an earlier abort: not the hypercall's.
                GuestExit {
                    vector: 0,
                    esr: Esr::new(Ec::Hvc64, true, 0).0,
                    far: 0x678,
                    hpfar: hpfar(0x1234_5000),
                }
            }
            SimGuestAction::MmioWrite {
                ipa,
                size,
                reg,
                value,
            } => {
                if reg < 31 {
                    self.write_u64(regs + 8 * u64::from(reg), value);
                }
                let d = DataAbort {
                    sas: size.trailing_zeros() as u8,
                    srt: reg,
                    wnr: true,
                    ..TRANSLATION_L3
                };
                mmio_exit(d, ipa)
            }
            SimGuestAction::MmioRead { ipa, size, reg } => {
                // A 64-bit register for an 8-byte load (SF), a 32-bit one otherwise.
                let d = DataAbort {
                    sas: size.trailing_zeros() as u8,
                    srt: reg,
                    sf: size == 8,
                    ..TRANSLATION_L3
                };
                mmio_exit(d, ipa)
            }
            SimGuestAction::MmioReadSigned { ipa, size, reg, sf } => {
                let d = DataAbort {
                    sas: size.trailing_zeros() as u8,
                    sse: true,
                    srt: reg,
                    sf,
                    ..TRANSLATION_L3
                };
                mmio_exit(d, ipa)
            }
            // FAR and HPFAR as a stage-2 abort at IPA 0x1234_5678 would leave them (whatever
            // the class: the core must use them only for aborts).
            SimGuestAction::Sync(esr) => GuestExit {
                vector: 0,
                esr,
                far: 0x678,
                hpfar: hpfar(0x1234_5000),
            },
            // An interrupt changes neither ESR_EL2 nor FAR_EL2 nor HPFAR_EL2: they still hold
            // the last synchronous exception's, as on a real CPU.
            SimGuestAction::Irq => {
                let (esr, far, hpfar) = *self.last_sync.lock().unwrap();
                GuestExit {
                    vector: 1,
                    esr,
                    far,
                    hpfar,
                }
            }
            SimGuestAction::Pause(_) | SimGuestAction::Call(_) | SimGuestAction::EoiAll => {
                unreachable!("a pause or EOI became its power-off, a call its HVC, above")
            }
        };
        if ex.vector == 0 {
            *self.last_sync.lock().unwrap() = (ex.esr, ex.far, ex.hpfar);
        }
        ex
    }
}
