//! The bounded fuzz run of `cargo xtask test`: `cargo fuzz` (libFuzzer, nightly) over raw
//! hypercall sequences on the simulated machine, with the executable spec and the structural
//! invariants as the oracle after every call (`fuzz/fuzz_targets/hypercalls.rs`).
//!
//! `PKVM_FUZZ_SECONDS` sets the duration (default 60). Longer runs: `cd fuzz && cargo +nightly
//! fuzz run hypercalls -- -max_total_time=3600`.

use crate::{Error, failed, run_cmd, workspace_root};
use std::process::{Command, Stdio};

fn ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs the fuzz target for a bounded time; fails on any crash (a divergence from the spec is a
/// panic in the target).
pub fn run_bounded() -> Result<String, Error> {
    let secs: u64 = std::env::var("PKVM_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    if !ok(Command::new("cargo").args(["+nightly", "--version"])) {
        return failed(
            "the nightly toolchain is missing (cargo fuzz needs it): rustup toolchain install nightly",
        );
    }
    if !ok(Command::new("cargo").args(["fuzz", "--version"])) {
        println!("xtask: installing cargo-fuzz from crates.io");
        run_cmd(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    run_cmd(
        Command::new("cargo")
            .current_dir(workspace_root())
            .args(["+nightly", "fuzz", "run", "hypercalls", "--"])
            .arg(format!("-max_total_time={secs}"))
            .arg("-print_final_stats=1"),
    )?;
    Ok(format!("{secs} s without a crash"))
}
