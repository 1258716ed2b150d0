//! `linux-guest`: Debian's unmodified arm64 Linux boots as a guest of the test host, under
//! pkvm-rs, to its `/init` and to power-off, N times in a row (`pkvm.guests=N`, default 1), as a
//! protected VM on even boots (its RAM donated) and a non-protected one on odd boots. The
//! kernel and initramfs come from the bundle xtask loads with `-initrd` (`cargo xtask run
//! --scenario linux-guest`); the VMM is `crate::vmm::linux`.
//!
//! First a guest that crashes (its kernel panics: no `/init`) must end in a PSCI reset and
//! tear down cleanly; then each boot must show the banner (`Linux version`), the guest `/init`'s marker and its own
//! result line (its uptime advances across a `sleep 1`: the virtual timer and its interrupt
//! work), no kernel panic, and end in PSCI SYSTEM_OFF; after the last teardown EL2's leak
//! counters must be back where they were.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::checks::Checks;
use crate::env::Env;
use crate::vm;
use crate::vmm::linux::{BOOTARGS, Console, End, Exits, GuestMem, LinuxVm};
use crate::vmm::{bundle, init_heap};

/// The markers looked for in the guest's console: the banner, `/init`'s start, its pass line,
/// a kernel panic.
const MARKERS: [&str; 4] = [
    "Linux version",
    "PKVM-GUEST-INIT",
    "PKVM-GUEST-RESULT pass",
    "Kernel panic",
];

/// Boots (`pkvm.guests=N`).
static BOOTS: AtomicU64 = AtomicU64::new(1);
/// Run the crashing guest first (`pkvm.parts=` without `crash` skips it: the benchmark).
static CRASH: AtomicU64 = AtomicU64::new(1);

/// `pkvm.parts=a,b`: `crash` (the crashing guest) and `boots`; every part when absent.
pub fn set_parts(parts: &str) {
    CRASH.store(u64::from(parts.split(',').any(|p| p == "crash")), Ordering::Relaxed);
}

/// Sets the number of boots.
pub fn set_boots(n: u64) {
    BOOTS.store(n, Ordering::Relaxed);
}

/// One boot: its verdict (`Err`: why it failed) and its exits.
fn boot(mem: GuestMem, b: &bundle::Bundle, n: u64) -> (Result<u64, alloc::string::String>, Exits) {
    use alloc::format;
    // Even boots protected, odd ones not; one vCPU on every third boot, two on the others —
    // so both kinds run both ways within six boots, and CI's three (0, 1, 2) include a
    // protected two-vCPU guest.
    let protected = n.is_multiple_of(2);
    let nr_vcpus = if n.is_multiple_of(3) { 1 } else { 2 };
    let c0 = crate::cpu::ticks();
    // `/init` checks that many CPUs came online.
    let bootargs = format!("{BOOTARGS} pkvm.cpus={nr_vcpus}");
    let mut guest = match LinuxVm::create(mem, b, protected, nr_vcpus, &bootargs) {
        Ok(g) => g,
        Err(e) => return (Err(format!("create: {e}")), Exits::default()),
    };
    println!(
        "linux-guest: boot {n}: VM built in {} ms ({} ms since the counter started)",
        crate::cpu::ms(crate::cpu::ticks() - c0),
        crate::cpu::ms(c0)
    );
    // A protected guest's RAM is out of the host's reach from its donation on (the kernel's
    // first page, say): the read aborts.
    // SAFETY: an aligned word of the guest's RAM, which the host allocated and holds no
    // reference to; if EL2 refuses the read, the probe reports the injected abort.
    let readable = unsafe { crate::fault::probe_read(mem.ram()) }.is_ok();
    if readable == protected {
        let _ = guest.destroy();
        return (
            Err(format!("host read of guest RAM: readable {readable}")),
            Exits::default(),
        );
    }
    let t0 = crate::cpu::ticks();
    let pmu = crate::pmu::available();
    if pmu {
        crate::pmu::start_el2_cycle_counter();
    }
    let el2_0 = if pmu { crate::pmu::read() } else { 0 };
    // The whole console of the first boot; the marker lines of the others.
    let mut con = Console::new(n == 0);
    let end = guest.run(&mut con, &MARKERS);
    let el2 = if pmu { crate::pmu::read() - el2_0 } else { 0 };
    let ms = crate::cpu::ms(crate::cpu::ticks() - t0);
    let exits = guest.exits();
    // EL2's share of the boot (meaningful under `-icount shift=0`: instructions), and the
    // exits by reason (`cargo xtask bench --scenario linux-guest`).
    println!(
        "PKVM-LINUX-GUEST-BENCH boot={n} protected={protected} el2_instructions={el2} \
         exits_mmio={} exits_uart={} exits_hvc={} exits_idle={} exits_irq={} injected={} \
         guest_ms={ms}",
        exits.mmio, exits.uart, exits.hvc, exits.idle, exits.irq, exits.injected
    );
    println!(
        "linux-guest: boot {n} ({}): {end} after {ms} ms, {} console lines, exits {exits:?}",
        if protected { "protected" } else { "non-protected" },
        con.lines
    );
    let destroyed = guest.destroy();
    let verdict = if !con.seen[0] {
        Err(format!("no banner ({end})"))
    } else if con.seen[3] {
        Err("kernel panic".into())
    } else if !con.seen[1] {
        Err(format!("no /init ({end})"))
    } else if !con.seen[2] {
        Err(format!("/init's checks failed ({end})"))
    } else if !matches!(end, End::PowerOff(f) if f == u64::from(pkvm_abi::psci::SYSTEM_OFF)) {
        Err(format!("{end}"))
    } else if let Err(e) = destroyed {
        Err(format!("teardown: {e}"))
    } else {
        Ok(ms)
    };
    (verdict, exits)
}

/// A guest that crashes: its kernel panics (no `/init` to run) and, with `panic=-1`, resets
/// through PSCI. Its VM must end cleanly (torn down, nothing leaked) and the next boot work.
fn crash(c: &mut Checks, mem: GuestMem, b: &bundle::Bundle) {
    let bootargs = alloc::format!("{BOOTARGS} rdinit=/no-such-init init=/no-such-init");
    let mut guest = match LinuxVm::create(mem, b, true, 1, &bootargs) {
        Ok(g) => g,
        Err(e) => {
            c.check("linux-guest: crash: create", false, format_args!("{e}"));
            return;
        }
    };
    let mut con = Console::new(false);
    let end = guest.run(&mut con, &MARKERS);
    let destroyed = guest.destroy();
    c.check(
        "linux-guest: a guest whose kernel panics ends in a PSCI reset, and its VM tears down",
        con.seen[3]
            && matches!(end, End::PowerOff(f) if f == u64::from(pkvm_abi::psci::SYSTEM_RESET))
            && destroyed.is_ok(),
        format_args!("panic seen {}, {end}, teardown {destroyed:?}", con.seen[3]),
    );
}

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
    let mem = GuestMem::alloc(env);
    // The host's GIC takes Group 1: EL2's timer then ends a vCPU's turn at the VMM's quantum.
    if let Some(gic) = env.gic {
        crate::vmm::host_gic(gic, true);
    }
    let start = vm::leaks();
    if CRASH.load(Ordering::Relaxed) != 0 {
        crash(c, mem, &b);
    }
    let n = BOOTS.load(Ordering::Relaxed);
    let (mut passed, mut first_failure) = (0, None);
    let mut total_ms = 0;
    for i in 0..n {
        let (v, _) = boot(mem, &b, i);
        match v {
            Ok(ms) => {
                passed += 1;
                total_ms += ms;
            }
            Err(e) => {
                println!("linux-guest: boot {i} FAILED: {e}");
                first_failure.get_or_insert((i, e));
            }
        }
    }
    c.check(
        "linux-guest: Debian's Linux boots to /init, its timer advances, it powers off",
        passed == n,
        format_args!(
            "{passed} of {n} boots (mean {} ms in the guest); first failure: {first_failure:?}",
            total_ms / passed.max(1)
        ),
    );
    if let Some(gic) = env.gic {
        crate::vmm::host_gic(gic, false);
    }
    let now = vm::leaks();
    println!("PKVM-LINUX-GUEST boots={n} passed={passed} leak_free={}", now == start);
    c.check(
        "linux-guest: leak report all zero",
        now == start,
        format_args!("before {start:?}, after {now:?}"),
    );
}
