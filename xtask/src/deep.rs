//! `cargo xtask deep`: the long versions of the verification runs that `cargo xtask test`
//! runs short (docs/VERIFICATION.md). Each prints what it explored; the command fails if any
//! of them finds something. Release builds; about an hour and a half on two cores with the
//! defaults, most of it the fuzz run (`--fuzz-minutes`).

use std::process::Command;
use std::time::Instant;

use crate::{Error, cargo, failed, run_cmd, workspace_root};

/// How long each run goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeepOptions {
    /// Cases of the simulator's model test.
    pub model_cases: u64,
    /// Depth of the exhaustive small worlds.
    pub exhaustive_depth: u32,
    /// Shuttle executions per scenario, scheduler and granularity.
    pub shuttle_iters: u64,
    /// Minutes of fuzzing (0: none).
    pub fuzz_minutes: u64,
}

impl Default for DeepOptions {
    fn default() -> Self {
        DeepOptions {
            model_cases: 100_000,
            exhaustive_depth: 7,
            shuttle_iters: 20_000,
            fuzz_minutes: 60,
        }
    }
}

impl DeepOptions {
    /// The runs: a name and the command.
    #[must_use]
    pub fn runs(&self) -> Vec<(String, Command)> {
        let mut v = Vec::new();
        let mut model = cargo();
        model
            .env("PKVM_MODEL_CASES", self.model_cases.to_string())
            .args(["test", "--release", "-p", "pkvm-sim", "--test", "model"]);
        v.push((format!("model test, {} cases", self.model_cases), model));
        let mut exhaustive = cargo();
        exhaustive
            .env("PKVM_EXHAUSTIVE_DEPTH", self.exhaustive_depth.to_string())
            .args([
                "test",
                "--release",
                "-p",
                "pkvm-sim",
                "--test",
                "exhaustive",
            ])
            .args(["--", "--nocapture"]);
        v.push((
            format!("exhaustive small worlds, depth {}", self.exhaustive_depth),
            exhaustive,
        ));
        let mut shuttle = cargo();
        shuttle
            .env("PKVM_SHUTTLE_ITERS", self.shuttle_iters.to_string())
            .args(["test", "--release", "-p", "pkvm-race", "--test", "shuttle"])
            .args(["--", "--nocapture"]);
        v.push((
            format!(
                "Shuttle races, {} executions per scenario, scheduler and granularity",
                self.shuttle_iters
            ),
            shuttle,
        ));
        let mut loom = cargo();
        loom.args(["test", "--release", "-p", "pkvm-race", "--test", "loom"]);
        v.push(("loom kernels".to_string(), loom));
        if self.fuzz_minutes > 0 {
            let mut fuzz = Command::new("cargo");
            fuzz.current_dir(workspace_root())
                .args(["+nightly", "fuzz", "run", "hypercalls", "--"])
                .arg(format!("-max_total_time={}", self.fuzz_minutes * 60))
                .arg("-print_final_stats=1");
            v.push((format!("fuzzing, {} min", self.fuzz_minutes), fuzz));
        }
        v
    }
}

/// Runs every long run, then prints how long each took and whether it passed.
///
/// # Errors
/// If any run fails.
pub fn cmd_deep(o: &DeepOptions) -> Result<(), Error> {
    let mut results = Vec::new();
    for (name, mut cmd) in o.runs() {
        println!("\n==> {name}");
        let start = Instant::now();
        let r = run_cmd(&mut cmd);
        results.push((name, r.is_ok(), start.elapsed()));
    }
    println!("\nlong runs:");
    for (name, ok, took) in &results {
        let verdict = if *ok { "ok  " } else { "FAIL" };
        println!("  {verdict} {name:<75} {:>7.0} s", took.as_secs_f64());
    }
    if results.iter().all(|r| r.1) {
        Ok(())
    } else {
        failed("a long run failed (see above)")
    }
}
