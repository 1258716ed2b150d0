//! The scenarios: what the host does once it is up, selected by `pkvm.scenario=NAME`. Each
//! is a module here, built on the host's library modules (the typed client [`crate::pkvm`],
//! shared memory [`crate::shared`], guests [`crate::vm`], probes [`crate::fault`], the
//! sandbox [`crate::sandbox`], ...).

pub mod abi;
pub mod bench;
pub mod guests;
pub mod hostile;
pub mod linux_guest;
pub mod lifecycles;
pub mod protected;
pub mod selftest;

use crate::checks::Checks;
use crate::env::Env;

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
        about: "ownership transitions over real hypercalls: the transition script, the \
                negative catalogue, share_hyp(obj), EL2 reads of host writes, injected aborts",
        run: selftest::run,
    },
    Scenario {
        name: "boot",
        about: "hypercall ABI smoke test: VERSION, unknown and boot-only ids, SMCCC register \
                preservation, PSCI relay",
        run: abi::run,
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
        run: guests::run,
    },
    Scenario {
        name: "protected",
        about: "the test guest as a protected VM (pkvm.guests=N, default 1000): donated RAM the \
                host cannot read, the guest-side ABI (discovery, MEM_SHARE bounce buffer, \
                MEM_RELINQUISH), teardown in batches, pages back zeroed; leak report",
        run: protected::run,
    },
    Scenario {
        name: "linux-guest",
        about: "Debian's arm64 Linux boots as a guest (kernel and initramfs from the -initrd \
                bundle xtask loads): banner, /init, its timer check, power-off; leak report",
        run: linux_guest::run,
    },
    Scenario {
        name: "hostile",
        about: "a host that attacks EL2: every MRS encoding, every trapping instruction class, \
                100,000 random trap-prone instructions, EL0 (AArch64 and AArch32) accesses, the \
                ITS, fw_cfg and LPI tables, guests reaching for host state; EL2 must survive, \
                refuse, and leak nothing",
        run: hostile::run,
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
