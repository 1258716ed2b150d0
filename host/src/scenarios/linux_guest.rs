//! `linux-guest`: Debian's unmodified arm64 Linux boots as a guest of the test host, under
//! pkvm-rs, to its `/init` and to power-off. The kernel and initramfs come from the bundle
//! xtask loads with `-initrd` (`cargo xtask run --scenario linux-guest`); the VMM is
//! `crate::vmm::linux`.
//!
//! Checks: the banner (`Linux version`), the guest `/init`'s marker and its own result line
//! (its uptime advances across a `sleep 1`: the virtual timer and its interrupt work), a PSCI
//! SYSTEM_OFF, and EL2's leak counters back where they were after the teardown.

use crate::checks::Checks;
use crate::env::Env;
use crate::vm;
use crate::vmm::linux::{Console, End, LinuxVm};
use crate::vmm::{bundle, init_heap};

/// The markers looked for in the guest's console: the banner, `/init`'s start, its pass line,
/// a kernel panic.
const MARKERS: [&str; 4] = [
    "Linux version",
    "PKVM-GUEST-INIT",
    "PKVM-GUEST-RESULT pass",
    "Kernel panic",
];

/// Runs the scenario.
pub fn run(c: &mut Checks, env: &mut Env) {
    let Some(range) = env.initrd else {
        c.check(
            "linux-guest: the guest bundle",
            false,
            format_args!("no -initrd (run it with cargo xtask run --scenario linux-guest)"),
        );
        return;
    };
    let b = match bundle::parse(range) {
        Ok(b) => b,
        Err(e) => {
            c.check("linux-guest: the guest bundle", false, format_args!("{e}"));
            return;
        }
    };
    init_heap(env);
    let start = vm::leaks();
    let mut guest = match LinuxVm::create(env, &b) {
        Ok(g) => g,
        Err(e) => {
            c.check("linux-guest: create the VM", false, format_args!("{e}"));
            return;
        }
    };
    let t0 = crate::cpu::ticks();
    let mut con = Console::default();
    let end = guest.run(&mut con, &MARKERS);
    let ms = crate::cpu::ms(crate::cpu::ticks() - t0);
    let exits = guest.exits;
    println!(
        "linux-guest: {end} after {ms} ms, {} console lines, exits {exits:?}",
        con.lines
    );
    c.check(
        "linux-guest: the kernel's banner",
        con.seen[0],
        format_args!("{} lines", con.lines),
    );
    c.check(
        "linux-guest: its /init runs",
        con.seen[1] && !con.seen[3],
        format_args!("marker {}, panic {}", con.seen[1], con.seen[3]),
    );
    c.check(
        "linux-guest: /init's checks pass (the timer advances)",
        con.seen[2],
        format_args!("{}", con.seen[2]),
    );
    c.check(
        "linux-guest: it powers off",
        matches!(end, End::PowerOff(f) if f == u64::from(pkvm_abi::psci::SYSTEM_OFF)),
        format_args!("{end}"),
    );
    let r = guest.destroy();
    c.check("linux-guest: teardown", r.is_ok(), format_args!("{r:?}"));
    let now = vm::leaks();
    c.check(
        "linux-guest: leak report all zero",
        now == start,
        format_args!("before {start:?}, after {now:?}"),
    );
}
