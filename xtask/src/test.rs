//! `cargo xtask test`: the whole check, as CI runs it.
//!
//! 1. `cargo fmt --all --check`
//! 2. `cargo clippy --workspace --all-targets -- -D warnings` (development machine)
//! 3. clippy `-D warnings` for the bare-metal crates on their own targets
//! 4. `cargo test --workspace` (the simulator's model test runs 10,000 hypercall sequences),
//!    then `cargo fuzz` on the hypercall fuzz target for 60 s (`PKVM_FUZZ_SECONDS`)
//! 5. QEMU system tests: the `selftest` scenario (the default) on the production EL2 and, in
//!    full, on the debug EL2 (`max`, and `cortex-a72` with 2 CPUs, 2 GiB) must pass, the `boot`
//!    scenario (ABI smoke test) must pass, the `bench` scenario must pass under `-icount` and
//!    measure the same figures on two boots, the guest lifecycles, the protected VMs (1,000 on
//!    `max`, 200 on the debug EL2 and `cortex-a72` with 2 CPUs), the `hostile` scenario on
//!    `max` and `cortex-a72`, a host stack overflow must be reported (guard page), a run with
//!    no host image must be refused by EL2, a `--hang --timeout 5` run must fail by timing
//!    out, and Debian's Linux must boot as the host (production EL2) and pass its driver.
//!
//! Every step runs even if an earlier one failed; the summary lists them all and ends with the
//! system tests' `N passed, M failed` line. The exit status is non-zero if anything failed.

use crate::images::build_image_set;
use crate::qemu::{self, Images, Outcome, RunOptions};
use crate::{BARE_TARGET, EL2_TARGET, Error, bench, cargo, failed, prereq, run_cmd};
use std::time::{Duration, Instant};

/// The images of both EL2 builds (the host and guest are the same).
struct ImageSets {
    production: Images,
    debug: Images,
}

struct Step {
    name: String,
    ok: bool,
    took: Duration,
    note: String,
}

fn timed(name: &str, f: impl FnOnce() -> Result<String, Error>) -> Step {
    println!("\n==> {name}");
    let start = Instant::now();
    let r = f();
    let took = start.elapsed();
    let (ok, note) = match r {
        Ok(note) => (true, note),
        Err(Error(m)) => (false, m),
    };
    Step {
        name: name.to_string(),
        ok,
        took,
        note,
    }
}

fn cargo_step(args: &[&str]) -> Result<String, Error> {
    run_cmd(cargo().args(args)).map(|()| String::new())
}

/// How a system test is judged.
enum Judge {
    /// One boot; `expect` decides from the outcome, `want` says what was expected.
    Outcome {
        expect: fn(&Outcome) -> bool,
        want: &'static str,
    },
    /// [`bench::BOOTS`] boots that pass and print identical figures.
    BenchBoots,
}

/// A system test: run QEMU with `opts` and judge the outcome.
struct SystemTest {
    name: &'static str,
    opts: RunOptions,
    judge: Judge,
}

const PASS: Judge = Judge::Outcome {
    expect: Outcome::passed,
    want: "PKVM-RESULT pass",
};

fn system_tests() -> Vec<SystemTest> {
    let base = RunOptions {
        timeout: Duration::from_secs(60),
        ..RunOptions::default()
    };
    let debug = RunOptions {
        debug_el2: true,
        ..base.clone()
    };
    vec![
        SystemTest {
            name: "selftest on the production EL2 (debug calls refused), -cpu max",
            opts: base.clone(),
            judge: PASS,
        },
        SystemTest {
            name: "selftest on the debug EL2 (whole catalogue), -cpu max",
            opts: debug.clone(),
            judge: PASS,
        },
        SystemTest {
            name: "selftest on the debug EL2, -cpu cortex-a72, 2 CPUs, 2 GiB",
            opts: RunOptions {
                cpu: "cortex-a72".into(),
                smp: 2,
                mem: "2G".into(),
                ..debug
            },
            judge: PASS,
        },
        SystemTest {
            name: "boot scenario (hypercall ABI smoke test) on -cpu max",
            opts: RunOptions {
                scenario: "boot".into(),
                ..base.clone()
            },
            judge: PASS,
        },
        SystemTest {
            name: "bench under -icount: two boots, identical figures",
            opts: RunOptions {
                icount: true,
                scenario: "bench".into(),
                ..base.clone()
            },
            judge: Judge::BenchBoots,
        },
        SystemTest {
            name: "guests: 1,000 lifecycles (4 alive at once in part), bad inputs, leak report all zero",
            opts: RunOptions {
                scenario: "guests".into(),
                guests: Some(1000),
                timeout: Duration::from_secs(120),
                ..base.clone()
            },
            judge: PASS,
        },
        SystemTest {
            name: "guests on -cpu cortex-a72, 2 CPUs: 200 lifecycles, leak report all zero",
            opts: RunOptions {
                cpu: "cortex-a72".into(),
                smp: 2,
                scenario: "guests".into(),
                guests: Some(200),
                ..base.clone()
            },
            judge: PASS,
        },
        SystemTest {
            name: "protected: 1,000 protected VMs (donated RAM unreadable, guest-side ABI, pages back zeroed), leak report all zero",
            opts: RunOptions {
                scenario: "protected".into(),
                guests: Some(1000),
                timeout: Duration::from_secs(120),
                ..base.clone()
            },
            judge: PASS,
        },
        SystemTest {
            name: "protected on -cpu cortex-a72, 2 CPUs, debug EL2: 200 protected VMs",
            opts: RunOptions {
                cpu: "cortex-a72".into(),
                smp: 2,
                scenario: "protected".into(),
                guests: Some(200),
                debug_el2: true,
                ..base.clone()
            },
            judge: PASS,
        },
        SystemTest {
            name: "hostile host on the production EL2, -cpu max: every sysreg and trap class, 100,000 random words, EL0, devices, guests",
            opts: RunOptions {
                scenario: "hostile".into(),
                timeout: Duration::from_secs(180),
                ..base.clone()
            },
            judge: PASS,
        },
        SystemTest {
            name: "hostile host on -cpu cortex-a72, 2 CPUs",
            opts: RunOptions {
                cpu: "cortex-a72".into(),
                smp: 2,
                scenario: "hostile".into(),
                timeout: Duration::from_secs(180),
                ..base.clone()
            },
            judge: PASS,
        },
        SystemTest {
            name: "host stack overflow hits the guard page and is reported",
            opts: RunOptions {
                scenario: "overflow".into(),
                ..base.clone()
            },
            judge: Judge::Outcome {
                expect: |o| matches!(o, Outcome::Fail(r) if r.contains("host panic")),
                want: "PKVM-RESULT fail host panic (unexpected exception)",
            },
        },
        SystemTest {
            name: "EL2 refuses to boot without a host image",
            opts: RunOptions {
                no_host: true,
                ..base.clone()
            },
            judge: Judge::Outcome {
                expect: |o| matches!(o, Outcome::Fail(r) if r.contains("no host image")),
                want: "PKVM-RESULT fail el2: no host image ...",
            },
        },
        SystemTest {
            name: "--hang --timeout 5 fails by timing out",
            opts: RunOptions {
                hang: true,
                scenario: "boot".into(),
                timeout: Duration::from_secs(5),
                ..base
            },
            judge: Judge::Outcome {
                expect: |o| *o == Outcome::TimedOut,
                want: "a timeout (QEMU killed)",
            },
        },
    ]
}

fn run_system_test(t: &SystemTest, images: &ImageSets) -> Result<String, Error> {
    let images = if t.opts.debug_el2 {
        &images.debug
    } else {
        &images.production
    };
    match &t.judge {
        Judge::Outcome { expect, want } => {
            let (outcome, ran) = qemu::run(images, &t.opts);
            let got = outcome.describe(t.opts.timeout);
            if expect(&outcome) {
                Ok(format!("{got} ({:.1} s in QEMU)", ran.as_secs_f64()))
            } else {
                failed(format!("{got}; wanted {want}"))
            }
        }
        Judge::BenchBoots => {
            let figs = bench::bench_boots(images, &t.opts)?;
            println!("{}", bench::table(&figs));
            Ok(format!(
                "{} figures, identical on {} boots",
                figs.len(),
                bench::BOOTS
            ))
        }
    }
}

/// Runs everything; see the module documentation.
pub fn cmd_test() -> Result<(), Error> {
    let mut steps = Vec::new();
    steps.push(timed(
        "prerequisites (Rust targets and components, QEMU)",
        || {
            prereq::ensure_targets()?;
            prereq::ensure_components()?;
            prereq::ensure_qemu()?;
            Ok(String::new())
        },
    ));
    steps.push(timed("cargo fmt --all --check", || {
        cargo_step(&["fmt", "--all", "--check"])
    }));
    steps.push(timed(
        "clippy: workspace, all targets (development machine)",
        || {
            cargo_step(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
        },
    ));
    steps.push(timed(&format!("clippy: el2 on {EL2_TARGET}"), || {
        cargo_step(&[
            "clippy", "-p", "pkvm-el2", "--bins", "--target", EL2_TARGET, "--", "-D", "warnings",
        ])
    }));
    steps.push(timed(
        &format!("clippy: el2 with debug-hcalls on {EL2_TARGET}"),
        || {
            cargo_step(&[
                "clippy",
                "-p",
                "pkvm-el2",
                "--bins",
                "--features",
                "debug-hcalls",
                "--target",
                EL2_TARGET,
                "--",
                "-D",
                "warnings",
            ])
        },
    ));
    steps.push(timed(
        &format!("clippy: host, guest, rt on {BARE_TARGET}"),
        || {
            cargo_step(&[
                "clippy",
                "-p",
                "pkvm-host",
                "-p",
                "pkvm-guest",
                "-p",
                "pkvm-rt",
                "--target",
                BARE_TARGET,
                "--",
                "-D",
                "warnings",
            ])
        },
    ));
    steps.push(timed(
        &format!("clippy: abi, arch, pgtable, hyp, spec, client, vmm-core (lib) on {BARE_TARGET}"),
        || {
            cargo_step(&[
                "clippy",
                "-p",
                "pkvm-abi",
                "-p",
                "pkvm-arch",
                "-p",
                "pkvm-pgtable",
                "-p",
                "pkvm-hyp",
                "-p",
                "pkvm-spec",
                "-p",
                "pkvm-client",
                "-p",
                "pkvm-vmm-core",
                "--lib",
                "--target",
                BARE_TARGET,
                "--",
                "-D",
                "warnings",
            ])
        },
    ));
    steps.push(timed(
        &format!("clippy: pkvm-vmm on {}", crate::linux::vmm::VMM_TARGET),
        || {
            cargo_step(&[
                "clippy",
                "-p",
                "pkvm-vmm",
                "--all-targets",
                "--target",
                crate::linux::vmm::VMM_TARGET,
                "--",
                "-D",
                "warnings",
            ])
        },
    ));
    // The race tests build pkvm-hyp with its `shuttle` feature (every lock and atomic asks
    // whether it runs under Shuttle); built in the same invocation, feature unification would
    // give every other test that build too, five times slower. Two invocations, two builds.
    steps.push(timed(
        "cargo test --workspace (all but the race tests)",
        || cargo_step(&["test", "--workspace", "--exclude", "pkvm-race"]),
    ));
    steps.push(timed(
        "cargo test -p pkvm-race: shuttle scenarios (random and PCT), loom kernels",
        || cargo_step(&["test", "-p", "pkvm-race"]),
    ));
    steps.push(timed(
        "cargo fuzz: hypercall sequences against the spec (bounded)",
        crate::fuzz::run_bounded,
    ));

    let mut images = None;
    steps.push(timed(
        "build the images: EL2 (production and debug), host, guest (release)",
        || {
            images = Some(ImageSets {
                production: build_image_set(false)?,
                debug: build_image_set(true)?,
            });
            Ok(String::new())
        },
    ));

    let mut sys = Vec::new();
    for t in system_tests() {
        sys.push(timed(&format!("system test: {}", t.name), || {
            let Some(images) = &images else {
                return failed("images did not build");
            };
            run_system_test(&t, images)
        }));
    }
    sys.push(timed(
        "system test: Debian arm64 Linux host, driver checks (-smp 4, max, 1 GiB)",
        crate::linux::system_test,
    ));
    sys.push(timed(
        "system test: Debian arm64 Linux as a guest, 3 boots (2 protected) to /init and power-off",
        crate::linux::guest::system_test,
    ));
    sys.push(timed(
        "system test: Debian's Linux host starts guests with pkvm-vmm through /dev/pkvm: 2 \
         protected at once (one SIGKILLed mid-boot), 10 in sequence, leak counters back to zero",
        crate::linux::vmm::system_test,
    ));

    println!("\n==> summary");
    for s in steps.iter().chain(&sys) {
        let mark = if s.ok { "ok  " } else { "FAIL" };
        let note = if s.note.is_empty() {
            String::new()
        } else {
            format!(" — {}", s.note)
        };
        println!(
            "  {mark} {:<60} {:>6.1} s{note}",
            s.name,
            s.took.as_secs_f64()
        );
    }
    let other_failed = steps.iter().filter(|s| !s.ok).count();
    let sys_passed = sys.iter().filter(|s| s.ok).count();
    let sys_failed = sys.len() - sys_passed;
    let qemu_time: Duration = sys.iter().map(|s| s.took).sum();
    if other_failed > 0 {
        println!("{other_failed} non-QEMU step(s) FAILED (see above)");
    }
    println!("system tests ({:.1} s):", qemu_time.as_secs_f64());
    println!("{sys_passed} passed, {sys_failed} failed");
    if other_failed + sys_failed > 0 {
        failed("test failed")
    } else {
        Ok(())
    }
}
