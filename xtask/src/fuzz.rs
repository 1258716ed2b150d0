//! The bounded fuzz run of `cargo xtask test`: `cargo fuzz` (libFuzzer, nightly) over raw
//! hypercall sequences on the simulated machine, with the executable spec and the structural
//! invariants as the oracle after every call (`fuzz/fuzz_targets/hypercalls.rs`).
//!
//! `PKVM_FUZZ_SECONDS` sets the duration (default 60). Longer runs: `cd fuzz && cargo +nightly
//! fuzz run hypercalls -- -max_total_time=3600`.

use crate::{Error, failed, run_cmd, workspace_root};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What libFuzzer's `-print_final_stats=1` reports at the end of a run.
#[derive(Debug, Default, PartialEq, Eq)]
struct FinalStats {
    /// `stat::number_of_executed_units`.
    runs: Option<u64>,
    /// `stat::average_exec_per_sec`.
    exec_per_sec: Option<u64>,
}

impl FinalStats {
    /// Takes what `line` says, if it is one of the final statistics.
    fn parse(&mut self, line: &str) {
        let value = |key: &str| {
            line.strip_prefix(key)?
                .strip_prefix(':')?
                .trim()
                .parse::<u64>()
                .ok()
        };
        if let Some(v) = value("stat::number_of_executed_units") {
            self.runs = Some(v);
        }
        if let Some(v) = value("stat::average_exec_per_sec") {
            self.exec_per_sec = Some(v);
        }
    }

    fn describe(&self) -> String {
        match (self.runs, self.exec_per_sec) {
            (Some(r), Some(e)) => format!("{r} inputs, {e} exec/s"),
            _ => "libFuzzer printed no final statistics".into(),
        }
    }
}

/// Runs the fuzz target for a bounded time; fails on any crash (a divergence from the spec is a
/// panic in the target). The summary gives the inputs run and the executions per second.
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
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .args(["+nightly", "fuzz", "run", "hypercalls", "--"])
        .arg(format!("-max_total_time={secs}"))
        .arg("-print_final_stats=1")
        .stderr(Stdio::piped());
    println!(
        "xtask: $ cargo +nightly fuzz run hypercalls -- -max_total_time={secs} -print_final_stats=1"
    );
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot run cargo fuzz: {e}")),
    };
    // libFuzzer reports on stderr: pass it through, keeping the final statistics.
    let mut stats = FinalStats::default();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("{line}");
            stats.parse(&line);
        }
    }
    match child.wait() {
        Ok(s) if s.success() => Ok(format!("{secs} s without a crash: {}", stats.describe())),
        Ok(s) => failed(format!(
            "cargo fuzz failed ({s}; {}): see its output above (a crash leaves its input in \
             fuzz/artifacts/hypercalls/)",
            stats.describe()
        )),
        Err(e) => failed(format!("cargo fuzz: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::FinalStats;

    #[test]
    fn final_stats() {
        let mut s = FinalStats::default();
        for line in [
            "#17611\tDONE   cov: 4314 ft: 19462 corp: 1321/33Kb lim: 58 exec/s: 568 rss: 503Mb",
            "stat::number_of_executed_units: 17611",
            "stat::average_exec_per_sec:     568",
            "stat::new_units_added:          236",
        ] {
            s.parse(line);
        }
        assert_eq!(
            s,
            FinalStats {
                runs: Some(17611),
                exec_per_sec: Some(568),
            }
        );
        assert_eq!(s.describe(), "17611 inputs, 568 exec/s");
        assert_eq!(
            FinalStats::default().describe(),
            "libFuzzer printed no final statistics"
        );
    }
}
