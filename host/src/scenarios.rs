//! The scenario registry: what the host does once it is up, selected by `pkvm.scenario=NAME`.

use crate::checks::Checks;
use crate::env::Env;
use crate::hvc::{hvc, preserved_after_hvc};
use crate::{bench, boot, psci, selftest};
use pkvm_abi::{
    ABI_VERSION, HVC_BASE, HostHcall, SMCCC_NOT_SUPPORTED, features, hvc_fid, psci as ids,
};

/// One scenario.
#[derive(Debug)]
pub struct Scenario {
    /// Name used on the command line.
    pub name: &'static str,
    /// One-line description.
    pub about: &'static str,
    /// Runs the scenario, recording its checks.
    pub run: fn(&mut Checks, &mut Env),
}

/// The scenario run when the command line names none.
pub const DEFAULT: &str = "selftest";

/// Every scenario.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "selftest",
        about: "ownership transitions over real hypercalls: the brief's transition script, the \
                negative catalogue, share_hyp(obj), EL2 reads of host writes, injected aborts",
        run: selftest::run,
    },
    Scenario {
        name: "boot",
        about: "hypercall ABI smoke test: VERSION, unknown and boot-only ids, SMCCC register \
                preservation, PSCI relay",
        run: boot_checks,
    },
    Scenario {
        name: "bench",
        about: "EL2 instructions per hypercall and per host stage-2 fault, from the PMU cycle \
                counter (meaningful under -icount shift=0 only)",
        run: bench::run,
    },
    Scenario {
        name: "guests",
        about: "guest lifecycles at scale (pkvm.guests=N, default 1000): create, run to PSCI \
                power-off, destroy; several alive at once; bad inputs; leak report",
        run: crate::guests::scenario,
    },
    Scenario {
        name: "hostile",
        about: "a host that attacks EL2: every MRS encoding, every trapping instruction class, \
                100,000 random trap-prone instructions, EL0 (AArch64 and AArch32) accesses, the \
                ITS, fw_cfg and LPI tables, guests reaching for host state; EL2 must survive, \
                refuse, and leak nothing",
        run: crate::hostile::run,
    },
    Scenario {
        name: "overflow",
        about: "overflows the host stack on purpose: the guard page must turn it into a \
                reported failure (exception stack), never a hang or silent corruption",
        run: overflow,
    },
];

/// Looks a scenario up by name.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// An id in the vendor-hypervisor range that is not assigned.
const UNKNOWN_FID: u64 = HVC_BASE | 0x7fff;
/// Pattern `preserved_after_hvc` loads into `xn`.
const fn pattern(n: usize) -> u64 {
    0x5a5a_0000 + n as u64
}

fn boot_checks(c: &mut Checks, _env: &mut Env) {
    c.eq("host runs at EL1", boot::current_el(), 1);

    let [x0, x1, x2, x3] = hvc(hvc_fid(HostHcall::Version), [0; 6]);
    c.eq("VERSION: x0 = SMCCC_SUCCESS", x0, 0);
    c.eq("VERSION: x1 = 0", x1, 0);
    c.eq("VERSION: x2 = ABI_VERSION", x2, ABI_VERSION);
    let known =
        features::RANGES | features::EL2_REFCOUNT | features::DEBUG_HCALLS | features::GUESTS;
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
    let [s, ..] = psci::call(PSCI_CPU_SUSPEND_64, [0; 3]);
    c.eq(
        "PSCI call EL2 does not handle (CPU_SUSPEND): NOT_SUPPORTED",
        s as u32 as i32 as i64 as u64,
        ids::NOT_SUPPORTED as i64 as u64,
    );
    let [f, ..] = psci::call(ids::FEATURES, [u64::from(PSCI_CPU_SUSPEND_64), 0, 0]);
    c.eq(
        "PSCI_FEATURES(CPU_SUSPEND): NOT_SUPPORTED, as EL2 refuses it",
        f as u32 as i32 as i64 as u64,
        ids::NOT_SUPPORTED as i64 as u64,
    );
}

/// PSCI CPU_SUSPEND (SMC64), which EL2 does not relay.
const PSCI_CPU_SUSPEND_64: u32 = 0xC400_0001;

fn overflow(c: &mut Checks, _env: &mut Env) {
    /// Uses 1 KiB of stack per level: far more levels than the 64 KiB stack holds.
    #[inline(never)]
    fn recurse(depth: u64) -> u64 {
        let frame = core::hint::black_box([depth; 128]);
        if depth > 1 << 20 {
            return depth;
        }
        recurse(depth + 1).wrapping_add(frame[(depth % 128) as usize])
    }
    println!("overflow: recursing until the stack guard page stops it");
    let r = recurse(0);
    c.check(
        "overflow: the recursion never returns",
        false,
        format_args!("returned {r}"),
    );
}
