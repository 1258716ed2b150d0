//! The `boot` scenario: a smoke test of the hypercall ABI itself, on raw registers (the typed
//! client would hide what it checks): `Version`, an unknown and a boot-only id, SMCCC 1.1
//! register preservation, and the PSCI relay.

use crate::checks::Checks;
use crate::env::Env;
use crate::hvc::{hvc, preserved_after_hvc};
use crate::{boot, psci};
use pkvm_abi::{
    ABI_VERSION, HVC_BASE, HostHcall, SMCCC_NOT_SUPPORTED, features, hvc_fid, psci as ids,
};

/// An id in the vendor-hypervisor range that is not assigned.
const UNKNOWN_FID: u64 = HVC_BASE | 0x7fff;
/// Pattern `preserved_after_hvc` loads into `xn`.
const fn pattern(n: usize) -> u64 {
    0x5a5a_0000 + n as u64
}

/// Runs the scenario.
pub fn run(c: &mut Checks, _env: &mut Env) {
    c.eq("host runs at EL1", boot::current_el(), 1);

    let [x0, x1, x2, x3] = hvc(hvc_fid(HostHcall::Version), [0; 6]);
    c.eq("VERSION: x0 = SMCCC_SUCCESS", x0, 0);
    c.eq("VERSION: x1 = 0", x1, 0);
    c.eq("VERSION: x2 = ABI_VERSION", x2, ABI_VERSION);
    let known =
        features::RANGES
            | features::EL2_REFCOUNT
            | features::DEBUG_HCALLS
            | features::GUESTS
            | features::PROTECTED_VMS;
    c.check(
        "VERSION: x3 has only known feature bits",
        x3 & !known == 0,
        format_args!("x3 = {x3:#x}"),
    );

    let [x0, ..] = hvc(UNKNOWN_FID, [1, 2, 3, 4, 5, 6]);
    c.eq(
        "unknown id HVC_BASE|0x7fff: NOT_SUPPORTED",
        x0,
        SMCCC_NOT_SUPPORTED,
    );
    let [x0, ..] = hvc(hvc_fid(HostHcall::Finalize), [0; 6]);
    c.eq(
        "FINALIZE after boot: NOT_SUPPORTED",
        x0,
        SMCCC_NOT_SUPPORTED,
    );

    // SMCCC 1.1: results only in x0-x3; everything else comes back as it went in.
    for (name, fid, first) in [
        ("VERSION preserves x4-x30", hvc_fid(HostHcall::Version), 4),
        ("unknown id preserves x1-x30", UNKNOWN_FID, 1),
    ] {
        let regs = preserved_after_hvc(fid);
        let bad = (first..=30).find(|&n| regs[n - 1] != pattern(n));
        match bad {
            None => c.check(name, true, format_args!("x{first}-x30 unchanged")),
            Some(n) => c.check(
                name,
                false,
                format_args!("x{n} = {:#x}, want {:#x}", regs[n - 1], pattern(n)),
            ),
        };
    }

    // PSCI goes through EL2: the host's SMC traps (HCR_EL2.TSC) and EL2 relays it.
    let [v, ..] = psci::call(ids::VERSION, [0; 3]);
    c.check(
        "PSCI_VERSION relayed by EL2",
        v as u32 as i32 >= 0,
        format_args!(
            "PSCI {}.{} via {}",
            (v >> 16) & 0x7fff,
            v & 0xffff,
            psci::conduit().name()
        ),
    );
    let [f, ..] = psci::call(ids::FEATURES, [u64::from(ids::SYSTEM_OFF), 0, 0]);
    c.eq(
        "PSCI_FEATURES(SYSTEM_OFF) relayed: supported",
        f as u32 as u64,
        0,
    );
    let [m, ..] = psci::call(ids::MIGRATE_INFO_TYPE, [0; 3]);
    c.check(
        "PSCI MIGRATE_INFO_TYPE relayed: a PSCI answer",
        (0..=2).contains(&(m as u32 as i32)),
        format_args!("{}", m as u32 as i32),
    );
    let [s, ..] = psci::call(ids::CPU_SUSPEND_64, [0; 3]);
    c.eq(
        "PSCI call EL2 does not handle (CPU_SUSPEND): NOT_SUPPORTED",
        s as u32 as i32 as i64 as u64,
        ids::NOT_SUPPORTED as i64 as u64,
    );
    let [f, ..] = psci::call(ids::FEATURES, [u64::from(ids::CPU_SUSPEND_64), 0, 0]);
    c.eq(
        "PSCI_FEATURES(CPU_SUSPEND): NOT_SUPPORTED, as EL2 refuses it",
        f as u32 as i32 as i64 as u64,
        ids::NOT_SUPPORTED as i64 as u64,
    );
}

