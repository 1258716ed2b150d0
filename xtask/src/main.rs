//! `cargo xtask`: builds the pkvm-rs images, boots them in QEMU and runs the project's checks.
//!
//! ```text
//! cargo xtask run   [options]   build EL2 + host (release), boot them in QEMU, exit with the result
//! cargo xtask test              fmt, clippy (host and bare-metal targets), cargo test, QEMU system tests
//! cargo xtask bench [options]   boot the `bench` scenario twice under -icount, check both boots
//!                               measured the same, print the table of EL2 instructions per operation
//! cargo xtask mutants [options] mutation testing of pgtable and hyp (cargo-mutants; hours)
//! cargo xtask deep [options]    the long verification runs (model, exhaustive, Shuttle, loom, fuzz)
//! cargo xtask help [command]    the commands, or one command's options
//! ```
//!
//! Where things are:
//!
//! | file | what |
//! |---|---|
//! | `cli.rs` | the command line (clap), its validation and defaults |
//! | `images.rs`, `elf.rs` | building EL2, host and guest, ELF to raw arm64 `Image` |
//! | `qemu.rs` | the QEMU command line, the timeout, the `PKVM-RESULT` line |
//! | `test.rs`, `fuzz.rs` | `cargo xtask test`: the static checks and the QEMU system tests |
//! | `bench.rs` | `cargo xtask bench`: the `PKVM-BENCH` figures and their table |
//! | `mutants.rs` | `cargo xtask mutants`: cargo-mutants over pgtable and hyp |
//! | `deep.rs` | `cargo xtask deep`: the long versions of the verification runs |
//! | `linux/` | `run --host linux`: Debian's kernel, the driver, the initramfs, the boots |
//! | `cpio.rs` | the initramfs writer |
//! | `prereq.rs` | installing the Rust targets and QEMU when missing |
//! | `../templates/` | files embedded in the images (the initramfs's `/init`) |
//!
//! Dependencies: the workspace's ABI crate (for the boot layout) and clap (the command line).

mod bench;
mod cli;
mod cpio;
mod deep;
mod elf;
mod fuzz;
mod images;
mod linux;
mod mutants;
mod prereq;
mod qemu;
mod test;

use cli::Action;
use qemu::{Outcome, RunOptions};
use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Target of the EL2 image: no FP/SIMD code at all (the registers belong to the host).
pub const EL2_TARGET: &str = "aarch64-unknown-none-softfloat";
/// Target of the host and guest images and of the bare-metal library crates.
pub const BARE_TARGET: &str = "aarch64-unknown-none";

fn main() -> ExitCode {
    let result = match cli::parse() {
        Action::Run(o) => cmd_run(&o),
        Action::RunLinux(r) => linux::cmd_run(&r),
        Action::Test => test::cmd_test(),
        Action::Bench(o) => bench::cmd_bench(&o),
        Action::Mutants(o) => mutants::cmd_mutants(&o),
        Action::Deep(o) => deep::cmd_deep(&o),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error(msg)) => {
            eprintln!("xtask: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Why a command did not succeed (the message says what failed). Bad command lines never get
/// this far: [`cli`] reports them and exits with status 2.
#[derive(Debug)]
pub struct Error(pub String);

/// Shorthand for a failure.
pub fn failed<T>(msg: impl Into<String>) -> Result<T, Error> {
    Err(Error(msg.into()))
}

/// `cargo xtask run`: our own host under EL2.
fn cmd_run(o: &RunOptions) -> Result<(), Error> {
    prereq::ensure_targets()?;
    prereq::ensure_qemu()?;
    let mut o = o.clone();
    if o.scenario == LINUX_GUEST && o.initrd.is_none() {
        o.initrd = Some(linux::guest::bundle()?);
    }
    let o = &o;
    let images = images::build_image_set(o.debug_el2)?;
    let (outcome, ran) = qemu::run(&images, o);
    let verdict = outcome.describe(o.timeout);
    println!("xtask: {verdict} ({:.1} s in QEMU)", ran.as_secs_f64());
    if outcome == Outcome::Pass {
        Ok(())
    } else {
        failed("run failed")
    }
}

/// The host scenario that boots Debian's Linux as a guest: xtask hands it the kernel and an
/// initramfs ([`linux::guest`]).
pub const LINUX_GUEST: &str = "linux-guest";

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
