//! `cargo xtask`: builds the pkvm-rs images, boots them in QEMU and runs the project's checks.
//!
//! ```text
//! cargo xtask run   [options]   build EL2 + host (release), boot them in QEMU, exit with the result
//! cargo xtask test              fmt, clippy (host and bare-metal targets), cargo test, QEMU system tests
//! cargo xtask bench [options]   boot the `bench` scenario twice under -icount, check both boots
//!                               measured the same, print the table of EL2 instructions per operation
//! ```
//!
//! Plain std Rust, no dependencies beyond the workspace's ABI crate (for the boot layout).

mod bench;
mod cpio;
mod elf;
mod fuzz;
mod linux;
mod prereq;
mod qemu;
mod test;

use qemu::{Images, Outcome, RunOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;
use std::{env, fs};

/// Target of the EL2 image: no FP/SIMD code at all (the registers belong to the host).
pub const EL2_TARGET: &str = "aarch64-unknown-none-softfloat";
/// Target of the host and guest images and of the bare-metal library crates.
pub const BARE_TARGET: &str = "aarch64-unknown-none";

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  run     build the EL2 and host images (release) and boot them in QEMU; exits 0 iff the
          host reports `PKVM-RESULT pass`
  test    cargo fmt --check, clippy (host and bare-metal targets), cargo test --workspace,
          then the QEMU system tests
  bench   boots `--icount --scenario bench` twice, fails unless both boots measured the same
          EL2 instruction counts, and prints them beside Linux 6.1 pKVM's and our targets

run/bench options:
  --cpu <max|cortex-a72|...>  QEMU CPU model (default max; max means max,pauth-impdef=on)
  --smp <N>                   number of CPUs, 1..=8 (default 1)
  --mem <SIZE>                RAM size, e.g. 512M, 1G (default 1G)
  --icount                    deterministic instruction counting (-icount shift=0)
  --timeout <SECS>            wall-clock limit for QEMU (default 60)
  --scenario <NAME>           host scenario, passed as pkvm.scenario=NAME (default selftest)
  --guests <N>                guest lifecycles for the `guests` scenario (pkvm.guests=N; selects
                              that scenario unless --scenario names another; default 1000)
  --parts <a,b,...>           run only these parts of the scenario (pkvm.parts=; the hostile
                              scenario: sysregs, classes, random, el0, devices, guests)
  --hang                      tell the host to hang instead of finishing (tests the timeout)
  --debug-el2                 boot the test build of EL2 (pkvm-el2-debug: with the debug
                              hypercalls; every other run boots the production EL2)
  --no-host                   leave the host image out (EL2 must refuse to boot)
  --host linux                run Debian's arm64 Linux as the host (downloaded with apt, cached
                              in target/linux/; defaults --smp 4 --timeout 180) with the
                              linux/pkvm_test.c driver in its initramfs
  --kernel <Image>            (with --host linux) boot this arm64 Image instead of Debian's
  --initrd <FILE>             (with --host linux) use this initramfs; its /init must print
                              the PKVM-RESULT line
  --bench-linux [--reps N]    (with --host linux) time boot-to-/init: direct, under pkvm-rs,
                              under Linux's pKVM (kvm-arm.mode=protected)
  --measure                   (with --host linux) print the driver's EL2 instruction counts
                              (use with --icount --smp 1)
  -- <ARGS>...                extra QEMU arguments
";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match cmd.as_str() {
        "run" if linux::wanted(rest) => linux::cmd_run(rest),
        "run" => parse_run_options(rest, RunOptions::default()).and_then(|o| cmd_run(&o)),
        "bench" => {
            let defaults = RunOptions {
                icount: true,
                scenario: "bench".into(),
                ..Default::default()
            };
            parse_run_options(rest, defaults).and_then(|o| bench::cmd_bench(&o))
        }
        "test" if rest.is_empty() => test::cmd_test(),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(Error::Usage(format!(
            "unknown command or arguments: {}",
            args.join(" ")
        ))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Usage(msg)) => {
            eprintln!("xtask: {msg}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Error::Failed(msg)) => {
            eprintln!("xtask: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Why a command did not succeed.
#[derive(Debug)]
pub enum Error {
    /// Bad command line.
    Usage(String),
    /// Something failed (the message says what).
    Failed(String),
}

/// Shorthand for a failure.
pub fn failed<T>(msg: impl Into<String>) -> Result<T, Error> {
    Err(Error::Failed(msg.into()))
}

fn parse_run_options(args: &[String], mut o: RunOptions) -> Result<RunOptions, Error> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| Error::Usage(format!("{name} needs a value")))
        };
        match a.as_str() {
            "--cpu" => o.cpu = value("--cpu")?,
            "--smp" => {
                let v = value("--smp")?;
                o.smp = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=8).contains(n))
                    .ok_or_else(|| {
                        Error::Usage(format!("--smp {v}: want 1..=8 (EL2 has 8 stacks)"))
                    })?;
            }
            "--mem" => o.mem = value("--mem")?,
            "--icount" => o.icount = true,
            "--timeout" => {
                let v = value("--timeout")?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s < 1e6)
                    .ok_or_else(|| {
                        Error::Usage(format!("--timeout {v}: want a number of seconds"))
                    })?;
                o.timeout = Duration::from_secs_f64(secs);
            }
            "--scenario" => o.scenario = value("--scenario")?,
            "--guests" => {
                let v = value("--guests")?;
                o.guests = Some(
                    v.parse()
                        .map_err(|_| Error::Usage(format!("bad --guests {v:?}")))?,
                );
                if o.scenario == "selftest" {
                    o.scenario = "guests".into();
                }
            }
            "--parts" => {
                let v = value("--parts")?;
                if v.is_empty() || v.contains(char::is_whitespace) {
                    return Err(Error::Usage(format!("bad --parts {v:?}")));
                }
                o.parts = Some(v);
            }
            "--hang" => o.hang = true,
            "--debug-el2" => o.debug_el2 = true,
            "--no-host" => o.no_host = true,
            "--" => {
                o.extra.extend(it.by_ref().cloned());
            }
            other => return Err(Error::Usage(format!("unknown option {other}"))),
        }
    }
    if o.scenario.is_empty() || o.scenario.contains(char::is_whitespace) {
        return Err(Error::Usage(format!("bad scenario name {:?}", o.scenario)));
    }
    Ok(o)
}

fn cmd_run(o: &RunOptions) -> Result<(), Error> {
    prereq::ensure_targets()?;
    prereq::ensure_qemu()?;
    let images = build_image_set(o.debug_el2)?;
    let (outcome, ran) = qemu::run(&images, o);
    let verdict = outcome.describe(o.timeout);
    println!("xtask: {verdict} ({:.1} s in QEMU)", ran.as_secs_f64());
    if outcome == Outcome::Pass {
        Ok(())
    } else {
        Err(Error::Failed("run failed".into()))
    }
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    let manifest = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` if set, else `target/` in the workspace.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => workspace_root().join(d),
        _ => workspace_root().join("target"),
    }
}

/// A `cargo` command run from the workspace root (the same cargo that runs xtask).
pub fn cargo() -> Command {
    let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// Runs a command, echoing it; `Ok` iff it exits 0.
pub fn run_cmd(cmd: &mut Command) -> Result<(), Error> {
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    println!("xtask: $ {shown}");
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => failed(format!("`{shown}` failed ({s})")),
        Err(e) => failed(format!("cannot run `{shown}`: {e}")),
    }
}

/// Builds the EL2 image (`debug`: the test build with the debug hypercalls) and the host image
/// (release) and converts them to raw arm64 `Image`s.
pub fn build_image_set(debug: bool) -> Result<Images, Error> {
    use pkvm_abi::boot::HOST_LOAD_ADDR;
    let el2 = build_el2(debug)?;
    let guest = build_guest_image()?;
    let host = build_image_env(
        "pkvm-host",
        BARE_TARGET,
        HOST_LOAD_ADDR,
        &[],
        "pkvm-host.bin",
        &[("PKVM_GUEST_BIN", guest.as_os_str())],
    )?;
    Ok(Images { el2, host })
}

/// Builds EL2 (release): the production image `pkvm-el2.bin` (no debug hypercalls: what
/// every user-facing command boots), or with `debug` the test build `pkvm-el2-debug.bin`
/// (feature `debug-hcalls`, which the self-tests need to pin, read back and reclaim pages).
pub fn build_el2(debug: bool) -> Result<PathBuf, Error> {
    use pkvm_abi::boot::EL2_LOAD_ADDR;
    let (features, bin): (&[&str], _) = if debug {
        (&["--features", "debug-hcalls"], "pkvm-el2-debug.bin")
    } else {
        (&[], "pkvm-el2.bin")
    };
    build_image_env("pkvm-el2", EL2_TARGET, EL2_LOAD_ADDR, features, bin, &[])
}

/// Builds the test guest (`guest/`) and converts it to a raw image linked at
/// `pkvm_abi::guest::GUEST_RAM_IPA`; the host build embeds it (`PKVM_GUEST_BIN`, read by
/// `host/build.rs`, then `include_bytes!`).
fn build_guest_image() -> Result<PathBuf, Error> {
    use pkvm_abi::guest::{GUEST_RAM_IPA, GUEST_RAM_PAGES};
    let package = "pkvm-guest";
    run_cmd(cargo().args([
        "build",
        "--release",
        "-p",
        package,
        "--bin",
        package,
        "--target",
        BARE_TARGET,
    ]))?;
    let dir = target_dir().join(BARE_TARGET).join("release");
    let elf_path = dir.join(package);
    let data = fs::read(&elf_path)
        .or_else(|e| failed(format!("cannot read {}: {e}", elf_path.display())))?;
    let image =
        elf::to_flat_image(&data).or_else(|e| failed(format!("{}: {e}", elf_path.display())))?;
    if image.base != GUEST_RAM_IPA || image.entry != GUEST_RAM_IPA {
        return failed(format!(
            "{package} is linked at {:#x} (entry {:#x}), expected {GUEST_RAM_IPA:#x}",
            image.base, image.entry
        ));
    }
    if image.bytes.len() as u64 > GUEST_RAM_PAGES * pkvm_abi::PAGE_SIZE / 2 {
        return failed(format!("{package} is too large for the guest's RAM"));
    }
    let bin = dir.join(format!("{package}.bin"));
    fs::write(&bin, &image.bytes)
        .or_else(|e| failed(format!("cannot write {}: {e}", bin.display())))?;
    println!(
        "xtask: {} ({} bytes at IPA {GUEST_RAM_IPA:#x})",
        bin.display(),
        image.bytes.len()
    );
    Ok(bin)
}

/// Builds `package` for `target` (release, with `cargo_args` and `envs`), checks it is an arm64
/// `Image` linked at `load_addr`, and writes the raw image as `bin` next to the ELF.
fn build_image_env(
    package: &str,
    target: &str,
    load_addr: u64,
    cargo_args: &[&str],
    bin: &str,
    envs: &[(&str, &std::ffi::OsStr)],
) -> Result<PathBuf, Error> {
    use pkvm_abi::boot::{IMAGE_MAGIC, IMAGE_MAGIC_OFFSET};
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--release",
        "-p",
        package,
        "--bin",
        package,
        "--target",
        target,
    ]);
    cmd.args(cargo_args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    run_cmd(&mut cmd)?;
    let dir = target_dir().join(target).join("release");
    let elf_path = dir.join(package);
    let data = fs::read(&elf_path)
        .or_else(|e| failed(format!("cannot read {}: {e}", elf_path.display())))?;
    let image =
        elf::to_flat_image(&data).or_else(|e| failed(format!("{}: {e}", elf_path.display())))?;
    if image.base != load_addr || image.entry != load_addr {
        return failed(format!(
            "{package} is linked at {:#x} (entry {:#x}), expected {load_addr:#x}",
            image.base, image.entry
        ));
    }
    let magic = image.bytes.get(IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4);
    if magic != Some(IMAGE_MAGIC.to_le_bytes().as_slice()) {
        return failed(format!("{package} has no arm64 Image header"));
    }
    let bin = dir.join(bin);
    fs::write(&bin, &image.bytes)
        .or_else(|e| failed(format!("cannot write {}: {e}", bin.display())))?;
    println!(
        "xtask: {} ({} bytes at {load_addr:#x})",
        bin.display(),
        image.bytes.len()
    );
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunOptions, Error> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse_run_options(&args, RunOptions::default())
    }

    #[test]
    fn run_options() {
        let o = parse(&[]).unwrap();
        assert_eq!((o.cpu.as_str(), o.smp, o.timeout.as_secs()), ("max", 1, 60));
        let o = parse(&[
            "--cpu",
            "cortex-a72",
            "--smp",
            "4",
            "--mem",
            "2G",
            "--icount",
            "--timeout",
            "5",
            "--scenario",
            "bench",
            "--hang",
            "--",
            "-d",
            "int",
        ])
        .unwrap();
        assert_eq!(o.cpu, "cortex-a72");
        assert_eq!(
            (o.smp, o.mem.as_str(), o.icount, o.hang),
            (4, "2G", true, true)
        );
        assert_eq!((o.timeout.as_secs(), o.scenario.as_str()), (5, "bench"));
        assert_eq!(o.extra, ["-d", "int"]);
        for bad in [
            &["--smp", "9"][..],
            &["--timeout", "x"],
            &["--cpu"],
            &["--frob"],
            &["--scenario", "a b"],
        ] {
            assert!(matches!(parse(bad), Err(Error::Usage(_))), "{bad:?}");
        }
    }
}
