//! PSCI from the host, through the conduit the device tree names. Under pkvm-rs that is `SMC`,
//! which EL2 traps (`HCR_EL2.TSC`) and relays.

use core::sync::atomic::{AtomicBool, Ordering};
use smccc::{Hvc, Smc};

/// How PSCI calls are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conduit {
    /// `SMC #0`.
    Smc,
    /// `HVC #0`.
    Hvc,
}

impl Conduit {
    /// `"smc"` or `"hvc"`, as in the device tree.
    pub fn name(self) -> &'static str {
        match self {
            Conduit::Smc => "smc",
            Conduit::Hvc => "hvc",
        }
    }
}

static USE_HVC: AtomicBool = AtomicBool::new(false);

/// Selects the conduit (default: SMC).
pub fn set_conduit(c: Conduit) {
    USE_HVC.store(c == Conduit::Hvc, Ordering::Relaxed);
}

/// The selected conduit.
pub fn conduit() -> Conduit {
    if USE_HVC.load(Ordering::Relaxed) {
        Conduit::Hvc
    } else {
        Conduit::Smc
    }
}

/// A raw PSCI/SMCCC call `fid(args...)` through the conduit; returns `x0..=x3`.
pub fn call(fid: u32, args: [u64; 3]) -> [u64; 4] {
    let mut a = [0u64; 17];
    a[..3].copy_from_slice(&args);
    let r = match conduit() {
        Conduit::Smc => smccc::smc64(fid, a),
        Conduit::Hvc => smccc::hvc64(fid, a),
    };
    [r[0], r[1], r[2], r[3]]
}

/// PSCI SYSTEM_OFF: QEMU exits. Never returns.
pub fn system_off() -> ! {
    let _ = match conduit() {
        Conduit::Smc => smccc::psci::system_off::<Smc>(),
        Conduit::Hvc => smccc::psci::system_off::<Hvc>(),
    };
    crate::boot::hang()
}
