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
//!
//! The whole run is done a shard at a time: `--record` merges the last run's results into the
//! ledger `docs/mutants.tsv` ([`ledger`]), and `--score` reads the ledger against the current
//! tree (what is tested, the score, the missed mutants with and without a verdict).

pub mod ledger;

use crate::{Error, cargo, failed, run_cmd};
use ledger::Outcome;
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
    /// Merge the last run's results into the ledger instead of testing.
    pub record: bool,
    /// Print the ledger's score instead of testing.
    pub score: bool,
    /// Test only the mutants the ledger has as missed and not equivalent.
    pub survivors: bool,
    /// Test only the mutants the ledger has no record of.
    pub untested: bool,
    /// Merge this ledger (another worktree's) into ours instead of testing.
    pub merge: Option<std::path::PathBuf>,
    /// A first pass: pgtable's mutants against pgtable's own tests only. What it misses must
    /// be tested again with every test (`survivors`) before it counts as missed.
    pub first_pass: bool,
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
            record: false,
            score: false,
            survivors: false,
            untested: false,
            merge: None,
            first_pass: false,
            extra: Vec::new(),
        }
    }
}

impl MutantsOptions {
    /// The packages whose tests run against each mutant: pkvm-pgtable's own tests cannot
    /// catch a mutant of pkvm-hyp (pgtable does not use hyp), so a run that mutates hyp alone
    /// skips them (a third of every mutant's test time).
    ///
    /// A first pass over pgtable alone ([`MutantsOptions::first_pass`]) runs only pgtable's
    /// own tests: each mutant then rebuilds one crate, not three.
    #[must_use]
    pub fn test_packages(&self) -> Vec<&'static str> {
        let pgtable_only = self.packages == ["pkvm-pgtable"];
        TEST_PACKAGES
            .into_iter()
            .filter(|t| *t != "pkvm-pgtable" || self.packages.contains(&"pkvm-pgtable"))
            .filter(|t| !(self.first_pass && pgtable_only) || *t == "pkvm-pgtable")
            .collect()
    }

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
            for t in self.test_packages() {
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
    if o.record {
        return cmd_record();
    }
    if o.score {
        return cmd_score();
    }
    if let Some(from) = &o.merge {
        return cmd_merge(from);
    }
    if !ok(Command::new("cargo").args(["mutants", "--version"])) {
        println!("xtask: installing cargo-mutants from crates.io");
        run_cmd(Command::new("cargo").args(["install", "cargo-mutants", "--locked"]))?;
    }
    let mut o = o.clone();
    if o.survivors || o.untested {
        let names = if o.survivors {
            survivors()?
        } else {
            untested(&o.packages)?
        };
        if names.is_empty() {
            println!("xtask: no mutant to test: the ledger has them all");
            return Ok(());
        }
        println!("xtask: testing {} mutants", names.len());
        for n in names {
            o.extra
                .extend(["--re".to_string(), format!("^{}$", regex_escape(&n))]);
        }
    }
    let o = &o;
    let start = Instant::now();
    // `target/` is there unless `CARGO_TARGET_DIR` puts the build elsewhere: cargo-mutants
    // creates only the last component of its output directory.
    let parent = crate::workspace_root().join("target");
    std::fs::create_dir_all(&parent)
        .map_err(|e| Error(format!("creating {}: {e}", parent.display())))?;
    if !o.list {
        // `--record` says which commit the results are of.
        write(&parent.join("mutants-commit"), &format!("{}\n", commit()))?;
    }
    let r = run_cmd(
        cargo()
            .env("PKVM_MODEL_CASES", o.cases.to_string())
            // No debug info: every mutant links some twenty test binaries, and smaller
            // binaries link faster. (The scratch copies have their own target directories.)
            .env("CARGO_PROFILE_DEV_DEBUG", "0")
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

/// The ledger, under the workspace root.
pub const LEDGER: &str = "docs/mutants.tsv";

fn write(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|e| Error(format!("writing {}: {e}", path.display())))
}

/// `git args`, run in the workspace.
fn git(args: &[&str]) -> Command {
    let mut c = Command::new("git");
    c.args(args).current_dir(crate::workspace_root());
    c
}

/// The short hash of HEAD, with `-dirty` if the mutated crates differ from it.
fn commit() -> String {
    let out = |args: &[&str]| {
        git(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = out(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    match out(&[
        "status",
        "--porcelain",
        "--",
        "crates/pgtable",
        "crates/hyp",
    ]) {
        Some(s) if s.is_empty() => head,
        _ => format!("{head}-dirty"),
    }
}

/// Every mutant of the current tree, in cargo-mutants' order.
fn listing() -> Result<Vec<String>, Error> {
    let mut c = cargo();
    c.arg("mutants");
    for p in PACKAGES {
        c.args(["--package", p]);
    }
    let out = c
        .arg("--list")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error(format!("cargo mutants --list: {e}")))?;
    if !out.status.success() {
        return failed("cargo mutants --list failed (is cargo-mutants installed?)");
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// The ledger keys of `listing`, with the lines of the source files as they are now.
fn current_keys(listing: &[String]) -> std::collections::HashMap<String, String> {
    let root = crate::workspace_root();
    let mut files: std::collections::HashMap<String, Vec<String>> =
        std::collections::HashMap::new();
    // Read each file once.
    for name in listing {
        if let Some(file) = name.split(':').next()
            && !files.contains_key(file)
        {
            let text = std::fs::read_to_string(root.join(file)).unwrap_or_default();
            files.insert(file.to_string(), text.lines().map(str::to_string).collect());
        }
    }
    ledger::keys(listing, &|file, line| {
        files
            .get(file)
            .and_then(|lines| lines.get(line.checked_sub(1)?))
            .cloned()
    })
}

fn read_ledger() -> Result<ledger::Ledger, Error> {
    let path = crate::workspace_root().join(LEDGER);
    match std::fs::read_to_string(&path) {
        Ok(text) => ledger::parse(&text).map_err(|e| Error(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ledger::Ledger::new()),
        Err(e) => failed(format!("reading {}: {e}", path.display())),
    }
}

/// The current names of the mutants the ledger has as missed and not equivalent.
fn survivors() -> Result<Vec<String>, Error> {
    let l = read_ledger()?;
    let listing = listing()?;
    let keys = current_keys(&listing);
    Ok(listing
        .into_iter()
        .filter(|n| {
            keys.get(n).and_then(|k| l.get(k)).is_some_and(|r| {
                r.outcome == Outcome::Missed && !r.verdict.starts_with(ledger::EQUIVALENT)
            })
        })
        .collect())
}

/// The current names of the mutants of `packages` the ledger has no record of.
fn untested(packages: &[&str]) -> Result<Vec<String>, Error> {
    let l = read_ledger()?;
    let listing = listing()?;
    let keys = current_keys(&listing);
    Ok(untested_of(listing, &keys, &l, packages))
}

/// The names in `listing` (with their ledger `keys`) of the mutants of `packages` that `l`
/// has no record of.
fn untested_of(
    listing: Vec<String>,
    keys: &std::collections::HashMap<String, String>,
    l: &ledger::Ledger,
    packages: &[&str],
) -> Vec<String> {
    // `crates/hyp/src/...` is pkvm-hyp's.
    let dirs: Vec<String> = packages
        .iter()
        .map(|p| format!("crates/{}/", p.trim_start_matches("pkvm-")))
        .collect();
    listing
        .into_iter()
        .filter(|n| dirs.iter().any(|d| n.starts_with(d.as_str())))
        .filter(|n| keys.get(n).is_none_or(|k| !l.contains_key(k)))
        .collect()
}

/// `s` as a regular expression that matches exactly it.
fn regex_escape(s: &str) -> String {
    let mut r = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            r.push('\\');
        }
        r.push(c);
    }
    r
}

/// `--merge`: another worktree's ledger into ours.
fn cmd_merge(from: &Path) -> Result<(), Error> {
    let text = std::fs::read_to_string(from)
        .map_err(|e| Error(format!("reading {}: {e}", from.display())))?;
    let from_l = ledger::parse(&text).map_err(|e| Error(format!("{}: {e}", from.display())))?;
    let mut l = read_ledger()?;
    let mut known = std::collections::HashMap::new();
    let mut ancestor = |a: &str, b: &str| {
        *known
            .entry((a.to_string(), b.to_string()))
            .or_insert_with(|| is_ancestor(a, b))
    };
    let n = ledger::absorb(&mut l, from_l, &mut ancestor);
    write(&crate::workspace_root().join(LEDGER), &ledger::render(&l))?;
    println!(
        "xtask: {n} records of {} merged into {LEDGER}",
        from.display()
    );
    cmd_score()
}

/// Whether commit `a` is an ancestor of commit `b` (`git merge-base --is-ancestor`); false
/// for a dirty tree's commit (`-dirty`) or one git does not know.
fn is_ancestor(a: &str, b: &str) -> bool {
    if a.ends_with("-dirty") || b.ends_with("-dirty") {
        return false;
    }
    git(&["merge-base", "--is-ancestor", a, b])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `--record`: the last run's results into the ledger.
fn cmd_record() -> Result<(), Error> {
    let root = crate::workspace_root();
    let out = root.join(OUTPUT).join("mutants.out");
    let mut results = Vec::new();
    for o in Outcome::ALL {
        let path = out.join(o.file());
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error(format!(
                "reading {}: {e} (run the mutants first)",
                path.display()
            ))
        })?;
        results.extend(
            text.lines()
                .filter(|l| !l.is_empty())
                .map(|l| (l.to_string(), o)),
        );
    }
    let commit = std::fs::read_to_string(root.join("target/mutants-commit"))
        .map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string());
    let mut l = read_ledger()?;
    let unknown = ledger::merge(&mut l, &current_keys(&listing()?), &results, &commit);
    write(&root.join(LEDGER), &ledger::render(&l))?;
    println!(
        "xtask: {} results of {commit} recorded in {LEDGER}",
        results.len() - unknown.len()
    );
    if !unknown.is_empty() {
        println!(
            "xtask: {} results name no mutant of this tree (record them at the commit they ran on):",
            unknown.len()
        );
        for u in &unknown {
            println!("  {u}");
        }
    }
    cmd_score()
}

/// `--score`: the ledger against the current tree.
fn cmd_score() -> Result<(), Error> {
    let s = ledger::score(&read_ledger()?, &current_keys(&listing()?));
    let [caught, timeout, missed, unviable] = s.counts;
    println!(
        "mutants of this tree: {}; tested: {} (caught {caught}, timeout {timeout}, missed {missed}, \
         unviable {unviable}); not yet tested: {}; stale records: {}",
        s.mutants,
        s.mutants - s.untested(),
        s.untested(),
        s.stale
    );
    let (killed, viable) = s.killed();
    println!(
        "killed {killed} of {viable} viable; {} missed with a verdict ({} equivalent), {} without",
        s.explained.len(),
        s.equivalent(),
        s.unexplained.len()
    );
    println!(
        "mutation score, killed / (viable - equivalent): {:.1} %",
        s.score()
    );
    for k in &s.unexplained {
        println!("  unexplained: {k}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untested_is_what_the_ledger_has_no_record_of_in_the_chosen_crates() {
        let listing: Vec<String> = [
            "crates/hyp/src/a.rs:1:1: replace + with -",
            "crates/hyp/src/a.rs:2:1: replace + with -",
            "crates/pgtable/src/b.rs:1:1: replace + with -",
        ]
        .map(String::from)
        .to_vec();
        let keys: std::collections::HashMap<String, String> = listing
            .iter()
            .map(|n| (n.clone(), format!("key of {n}")))
            .collect();
        let mut l = ledger::Ledger::new();
        let rec = ledger::parse(&format!("caught\tc1\tkey of {}\n", listing[0])).unwrap();
        l.extend(rec);
        assert_eq!(
            untested_of(listing.clone(), &keys, &l, &["pkvm-hyp"]),
            [listing[1].clone()]
        );
        assert_eq!(
            untested_of(listing.clone(), &keys, &l, &PACKAGES),
            [listing[1].clone(), listing[2].clone()]
        );
        // A name without a key (its file unreadable) is untested.
        assert_eq!(
            untested_of(
                listing.clone(),
                &std::collections::HashMap::new(),
                &l,
                &["pkvm-hyp"]
            )
            .len(),
            2
        );
    }

    #[test]
    fn regex_escape_escapes_what_a_mutant_name_holds() {
        assert_eq!(
            super::regex_escape(
                "a.rs:1:2: replace <impl X for Y<'_>>::f -> Result<(), E> with Ok(())"
            ),
            "a\\.rs:1:2: replace <impl X for Y<'_>>::f -> Result<\\(\\), E> with Ok\\(\\(\\)\\)"
        );
        assert_eq!(
            super::regex_escape("| with ^ [x] {y} $ +*?"),
            "\\| with \\^ \\[x\\] \\{y\\} \\$ \\+\\*\\?"
        );
    }
}
