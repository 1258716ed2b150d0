//! `cargo xtask mutants`: mutation testing of the portable core with cargo-mutants.
//!
//! Every mutant of `pkvm-pgtable` and `pkvm-hyp` (an operator flipped, a function body
//! replaced by a constant...) is built in a scratch copy of the tree and tested with the tests of
//! `pkvm-pgtable`, `pkvm-hyp` and `pkvm-sim` (`.cargo/mutants.toml`); a mutant no test fails is
//! *missed*: either an equivalent mutant or a gap in the tests. The simulator's model test runs
//! `PKVM_MODEL_CASES` cases per mutant (default here 200 instead of 10,000) so that one mutant's
//! tests take seconds; a mutant whose tests run past `--timeout` counts as caught (it hangs or
//! slows the hypervisor down). Results: `target/mutants/mutants.out/` (`missed.txt`,
//! `caught.txt`, `timeout.txt`, `unviable.txt`, `outcomes.json`, a log per mutant).
//!
//! Not part of `cargo xtask test`: the whole run takes hours on two cores. docs/VERIFICATION.md
//! has the scores and the review of every surviving mutant.

use crate::{Error, cargo, failed, run_cmd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The crates that are mutated.
pub const PACKAGES: [&str; 2] = ["pkvm-pgtable", "pkvm-hyp"];

/// The packages whose tests run against every mutant (also in `.cargo/mutants.toml`, for a
/// plain `cargo mutants`).
pub const TEST_PACKAGES: [&str; 3] = ["pkvm-pgtable", "pkvm-hyp", "pkvm-sim"];

/// Where cargo-mutants writes `mutants.out/` (under the workspace root).
pub const OUTPUT: &str = "target/mutants";

/// What `cargo xtask mutants` runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MutantsOptions {
    /// Packages to mutate (a subset of [`PACKAGES`]).
    pub packages: Vec<&'static str>,
    /// Only mutants in files matching these globs (`--file`).
    pub files: Vec<String>,
    /// Mutants built and tested at once (each in its own scratch copy and target directory).
    pub jobs: u32,
    /// Test timeout per mutant.
    pub timeout: Duration,
    /// `PKVM_MODEL_CASES` for the simulator's model test.
    pub cases: u32,
    /// Only this shard, `k/n`.
    pub shard: Option<String>,
    /// List the mutants instead of testing them.
    pub list: bool,
    /// Further arguments for cargo-mutants.
    pub extra: Vec<String>,
}

impl Default for MutantsOptions {
    fn default() -> Self {
        MutantsOptions {
            packages: PACKAGES.to_vec(),
            files: Vec::new(),
            jobs: 1,
            timeout: Duration::from_secs(120),
            cases: 200,
            shard: None,
            list: false,
            extra: Vec::new(),
        }
    }
}

impl MutantsOptions {
    /// The arguments after `cargo` (the environment is [`MutantsOptions::cases`]).
    #[must_use]
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["mutants".to_string()];
        for p in &self.packages {
            a.extend(["--package".into(), (*p).to_string()]);
        }
        for f in &self.files {
            a.extend(["--file".into(), f.clone()]);
        }
        if self.list {
            a.push("--list".into());
        } else {
            for t in TEST_PACKAGES {
                a.extend(["--test-package".into(), t.to_string()]);
            }
            a.extend([
                "--jobs".into(),
                self.jobs.to_string(),
                "--timeout".into(),
                self.timeout.as_secs().max(1).to_string(),
            ]);
        }
        if let Some(s) = &self.shard {
            a.extend(["--shard".into(), s.clone()]);
        }
        a.extend(["--output".into(), OUTPUT.into()]);
        a.extend(self.extra.iter().cloned());
        a
    }
}

fn ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs cargo-mutants (installing it first if needed); fails if a mutant was missed or timed
/// out, or if the unmutated tree fails its tests.
pub fn cmd_mutants(o: &MutantsOptions) -> Result<(), Error> {
    if !ok(Command::new("cargo").args(["mutants", "--version"])) {
        println!("xtask: installing cargo-mutants from crates.io");
        run_cmd(Command::new("cargo").args(["install", "cargo-mutants", "--locked"]))?;
    }
    let start = Instant::now();
    // `target/` is there unless `CARGO_TARGET_DIR` puts the build elsewhere: cargo-mutants
    // creates only the last component of its output directory.
    let parent = crate::workspace_root().join("target");
    std::fs::create_dir_all(&parent)
        .map_err(|e| Error(format!("creating {}: {e}", parent.display())))?;
    let r = run_cmd(
        cargo()
            .env("PKVM_MODEL_CASES", o.cases.to_string())
            .args(o.args()),
    );
    if o.list {
        return r;
    }
    let out = crate::workspace_root().join(OUTPUT).join("mutants.out");
    println!(
        "xtask: {:.0} min; results in {}",
        start.elapsed().as_secs_f64() / 60.0,
        out.display()
    );
    for f in ["missed.txt", "timeout.txt"] {
        print_file(&out.join(f));
    }
    // cargo-mutants' exit status says what it found.
    match r {
        Ok(()) => Ok(()),
        Err(Error(e)) if e.contains("exit status: 2") => {
            failed("some mutants were missed: review them in docs/VERIFICATION.md")
        }
        Err(Error(e)) if e.contains("exit status: 3") => {
            println!("xtask: some mutants timed out: they hang or slow the tests, caught");
            Ok(())
        }
        Err(Error(e)) if e.contains("exit status: 4") => {
            failed("the unmodified tree fails its tests: fix that first")
        }
        Err(e) => Err(e),
    }
}

fn print_file(path: &Path) {
    if let Ok(s) = std::fs::read_to_string(path)
        && !s.is_empty()
    {
        println!("{}:\n{s}", path.display());
    }
}
