//! The command line, defined once (clap's derive API) and validated here: `cargo xtask run |
//! test | bench [options] [-- <extra QEMU args>]` and `cargo xtask mutants [options] [--
//! <extra cargo-mutants args>]`, turned into an [`Action`] that says what to run and with which
//! [`RunOptions`] (or [`MutantsOptions`]). Nothing else in xtask looks at argv.
//!
//! Defaults differ between the commands (`run --host linux` boots 4 CPUs for up to 180 s,
//! `bench` counts instructions in the `bench` scenario), so the options are optional here and
//! fill in the command's [`RunOptions`] defaults.

use crate::deep::DeepOptions;
use crate::mutants::{self, MutantsOptions};
use crate::qemu::RunOptions;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// `cargo xtask`: builds the pkvm-rs images, boots them in QEMU and runs the project's checks.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    subcommand_required = true,
    arg_required_else_help = true,
    after_help = "`cargo xtask help run`, `cargo xtask help bench`, `cargo xtask help mutants` and `cargo xtask help deep` list the options."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// build the EL2 and host images (release) and boot them in QEMU; exits 0 iff the
    /// host reports `PKVM-RESULT pass`
    #[command(verbatim_doc_comment, args_override_self = true)]
    Run(RunArgs),
    /// cargo fmt --check, clippy (host and bare-metal targets), cargo test --workspace,
    /// then the QEMU system tests
    #[command(verbatim_doc_comment)]
    Test,
    /// boots `--icount --scenario bench` twice, fails unless both boots measured the same
    /// EL2 instruction counts, and prints them beside Linux 6.1 pKVM's and our targets
    #[command(
        verbatim_doc_comment,
        args_override_self = true,
        mut_arg("icount", |a| a.help(BENCH_ICOUNT_HELP)),
        mut_arg("scenario", |a| a.help(BENCH_SCENARIO_HELP)),
    )]
    Bench(QemuArgs),
    /// mutation testing (cargo-mutants) of pkvm-pgtable and pkvm-hyp against the
    /// tests of pgtable, hyp and the simulator; not part of `test` (hours:
    /// narrow it with --package, --file or --shard); docs/VERIFICATION.md
    #[command(verbatim_doc_comment, args_override_self = true)]
    Mutants(MutantsArgs),
    /// the long versions of the verification runs `test` runs short (release): model
    /// test, exhaustive small worlds, Shuttle races, loom, fuzzing; each prints what it
    /// explored (about 1.5 h with the defaults); docs/VERIFICATION.md
    #[command(verbatim_doc_comment)]
    Deep(DeepArgs),
}

/// `deep`: how long each run goes.
#[derive(Debug, Args)]
struct DeepArgs {
    /// cases of the simulator's model test (default 100000)
    #[arg(long, value_name = "N")]
    model_cases: Option<u64>,
    /// depth of the exhaustive small worlds (default 7)
    #[arg(long, value_name = "K")]
    exhaustive_depth: Option<u32>,
    /// Shuttle executions per scenario, scheduler and granularity (default 20000)
    #[arg(long, value_name = "N")]
    shuttle_iters: Option<u64>,
    /// minutes of fuzzing, 0 for none (default 60)
    #[arg(long, value_name = "MIN")]
    fuzz_minutes: Option<u64>,
}

impl DeepArgs {
    fn over(self, mut o: DeepOptions) -> DeepOptions {
        if let Some(v) = self.model_cases {
            o.model_cases = v;
        }
        if let Some(v) = self.exhaustive_depth {
            o.exhaustive_depth = v;
        }
        if let Some(v) = self.shuttle_iters {
            o.shuttle_iters = v;
        }
        if let Some(v) = self.fuzz_minutes {
            o.fuzz_minutes = v;
        }
        o
    }
}

/// `mutants`: which mutants, and how to run their tests.
#[derive(Debug, Args)]
struct MutantsArgs {
    /// mutate only this crate (repeatable; default both)
    #[arg(short = 'p', long, value_name = "pgtable|hyp")]
    package: Vec<Crate>,
    /// only mutants in files matching this glob, e.g. 'crates/hyp/src/vm/*'
    /// (repeatable)
    #[arg(short = 'f', long, value_name = "GLOB", verbatim_doc_comment)]
    file: Vec<String>,
    /// mutants built and tested at once, each in its own copy (default 1)
    #[arg(short = 'j', long, value_name = "N", value_parser = jobs)]
    jobs: Option<u32>,
    /// test timeout per mutant; a mutant that runs past it counts as caught
    /// (default 120)
    #[arg(long, value_name = "SECS", value_parser = seconds, verbatim_doc_comment)]
    timeout: Option<Duration>,
    /// PKVM_MODEL_CASES, the simulator's model-test cases per mutant
    /// (default 200)
    #[arg(long, value_name = "N", verbatim_doc_comment)]
    cases: Option<u32>,
    /// only shard k of n (k/n, k from 0), to split the run across machines
    #[arg(long, value_name = "k/n", value_parser = shard)]
    shard: Option<String>,
    /// list the mutants instead of testing them
    #[arg(long)]
    list: bool,
    /// merge the last run's results into the ledger docs/mutants.tsv
    #[arg(long, conflicts_with_all = ["list", "score"])]
    record: bool,
    /// print the ledger's score against the current tree
    #[arg(long, conflicts_with = "list")]
    score: bool,
    /// test again only the mutants the ledger has as missed and not
    /// equivalent (after adding tests for them)
    #[arg(long, conflicts_with_all = ["list", "record", "score"], verbatim_doc_comment)]
    survivors: bool,
    /// test only the mutants the ledger has no result for (resumes the
    /// whole run; combines with -p, -f and --first-pass)
    #[arg(long, conflicts_with_all = ["list", "record", "score", "survivors"], verbatim_doc_comment)]
    untested: bool,
    /// merge another worktree's ledger (its docs/mutants.tsv, where its runs
    /// were recorded) into this one; a record of ours tested at a later commit
    /// stays
    #[arg(long, value_name = "LEDGER", conflicts_with_all = ["list", "record", "score", "survivors", "untested"], verbatim_doc_comment)]
    merge: Option<std::path::PathBuf>,
    /// with -p pgtable: a first pass with pgtable's own tests only (one crate
    /// rebuilt per mutant); test what it misses again with --survivors
    #[arg(long, conflicts_with_all = ["list", "record", "score", "survivors"], verbatim_doc_comment)]
    first_pass: bool,
    /// extra cargo-mutants arguments (e.g. -- --iterate)
    #[arg(last = true, value_name = "ARGS")]
    extra: Vec<String>,
}

/// The crates `mutants --package` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Crate {
    /// pkvm-pgtable
    Pgtable,
    /// pkvm-hyp
    Hyp,
}

/// `run`: the QEMU options, and the ones that boot Linux as the host.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("linux")
        .multiple(true)
        .args(["host", "kernel", "initrd", "bench_linux"])
))]
struct RunArgs {
    #[command(flatten)]
    qemu: QemuArgs,
    #[command(flatten)]
    linux: LinuxArgs,
}

/// The options of `run` and `bench`: the machine, the scenario, the EL2 build.
#[derive(Debug, Args)]
struct QemuArgs {
    /// QEMU CPU model (default max; max means max,pauth-impdef=on)
    #[arg(long, value_name = "max|cortex-a72|...")]
    cpu: Option<String>,
    /// number of CPUs, 1..=8 (default 1)
    #[arg(long, value_name = "N", value_parser = smp)]
    smp: Option<u32>,
    /// RAM size, e.g. 512M, 1G (default 1G)
    #[arg(long, value_name = "SIZE")]
    mem: Option<String>,
    /// deterministic instruction counting (-icount shift=0)
    #[arg(long)]
    icount: bool,
    /// wall-clock limit for QEMU (default 60)
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    timeout: Option<Duration>,
    /// host scenario, passed as pkvm.scenario=NAME (default selftest)
    #[arg(long, value_name = "NAME", value_parser = word)]
    scenario: Option<String>,
    /// guest lifecycles for the `guests` scenario (pkvm.guests=N; selects
    /// that scenario unless --scenario names another; default 1000)
    #[arg(long, value_name = "N", verbatim_doc_comment)]
    guests: Option<u64>,
    /// run only these parts of the scenario (pkvm.parts=; the hostile
    /// scenario: sysregs, classes, random, el0, devices, guests)
    #[arg(long, value_name = "a,b,...", value_parser = word, verbatim_doc_comment)]
    parts: Option<String>,
    /// tell the host to hang instead of finishing (tests the timeout)
    #[arg(long)]
    hang: bool,
    /// boot the test build of EL2 (pkvm-el2-debug: with the debug
    /// hypercalls; every other run boots the production EL2)
    #[arg(long, verbatim_doc_comment)]
    debug_el2: bool,
    /// leave the host image out (EL2 must refuse to boot)
    #[arg(long)]
    no_host: bool,
    /// extra QEMU arguments
    #[arg(last = true, value_name = "ARGS")]
    extra: Vec<String>,
}

/// The options of `run` that boot Debian's Linux (or the user's) as the host.
#[derive(Debug, Args)]
#[command(next_help_heading = "Linux as the host")]
struct LinuxArgs {
    /// run Debian's arm64 Linux as the host (downloaded with apt, cached
    /// in target/linux/; defaults --smp 4 --timeout 180) with the
    /// linux/pkvm_test.c driver in its initramfs
    #[arg(
        long,
        value_name = "linux",
        hide_possible_values = true,
        verbatim_doc_comment
    )]
    host: Option<Host>,
    /// (with --host linux) boot this arm64 Image instead of Debian's
    #[arg(long, value_name = "Image")]
    kernel: Option<PathBuf>,
    /// (with --host linux) use this initramfs; its /init must print
    /// the PKVM-RESULT line
    #[arg(long, value_name = "FILE", verbatim_doc_comment)]
    initrd: Option<PathBuf>,
    /// (with --host linux) time boot-to-/init: direct, under pkvm-rs,
    /// under Linux's pKVM (kvm-arm.mode=protected)
    #[arg(long, verbatim_doc_comment)]
    bench_linux: bool,
    /// (with --bench-linux) boots of each kind, 1..=20 (default 3)
    #[arg(long, value_name = "N", value_parser = reps, requires = "linux")]
    reps: Option<u32>,
    /// (with --host linux) print the driver's EL2 instruction counts
    /// (use with --icount --smp 1)
    #[arg(long, requires = "linux", verbatim_doc_comment)]
    measure: bool,
}

/// The hosts `--host` knows besides our own test host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Host {
    // Debian's arm64 Linux (no doc comment: it would become the value's help).
    Linux,
}

/// Boots of each kind for `--bench-linux` without `--reps`.
const DEFAULT_REPS: u32 = 3;

// `bench` shares the options of `run` but always counts instructions, in its own scenario: these
// replace the help of `--icount` and `--scenario` there.
const BENCH_ICOUNT_HELP: &str = "deterministic instruction counting (-icount shift=0; always on)";
const BENCH_SCENARIO_HELP: &str = "host scenario, passed as pkvm.scenario=NAME (default bench)";

fn smp(v: &str) -> Result<u32, String> {
    v.parse()
        .ok()
        .filter(|n| (1..=8).contains(n))
        .ok_or_else(|| "want 1..=8 (EL2 has 8 stacks)".into())
}

fn seconds(v: &str) -> Result<Duration, String> {
    v.parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s < 1e6)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| "want a number of seconds".into())
}

/// A word for the host's command line: not empty, no white space.
fn word(v: &str) -> Result<String, String> {
    if v.is_empty() || v.contains(char::is_whitespace) {
        Err("want a word without spaces".into())
    } else {
        Ok(v.to_string())
    }
}

fn jobs(v: &str) -> Result<u32, String> {
    v.parse()
        .ok()
        .filter(|n| (1..=16).contains(n))
        .ok_or_else(|| "want 1..=16".into())
}

/// `k/n` with `k < n`.
fn shard(v: &str) -> Result<String, String> {
    let parsed = v
        .split_once('/')
        .and_then(|(k, n)| Some((k.parse::<u32>().ok()?, n.parse::<u32>().ok()?)));
    match parsed {
        Some((k, n)) if k < n => Ok(v.to_string()),
        _ => Err("want k/n with 0 <= k < n".into()),
    }
}

fn reps(v: &str) -> Result<u32, String> {
    v.parse()
        .ok()
        .filter(|n| (1..=20).contains(n))
        .ok_or_else(|| "want 1..=20".into())
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Action {
    /// `run`: our own host under EL2.
    Run(RunOptions),
    /// `run --host linux` (or `--kernel`, `--initrd`, `--bench-linux`).
    RunLinux(LinuxRun),
    /// `test`.
    Test,
    /// `bench`.
    Bench(RunOptions),
    /// `mutants`.
    Mutants(MutantsOptions),
    /// `deep`.
    Deep(DeepOptions),
}

/// `run` with Linux as the host.
#[derive(Debug)]
pub struct LinuxRun {
    /// The QEMU options (defaults: [`crate::linux::default_options`]).
    pub opts: RunOptions,
    /// The user's kernel `Image` instead of Debian's.
    pub kernel: Option<PathBuf>,
    /// The user's initramfs instead of ours.
    pub initrd: Option<PathBuf>,
    /// `--bench-linux`: time this many boots of each kind instead of running the checks.
    pub bench_reps: Option<u32>,
    /// `--measure`: have `/init` print the driver's EL2 instruction counts.
    pub measure: bool,
}

impl QemuArgs {
    /// The options given, over `o` (the command's defaults).
    fn over(self, mut o: RunOptions) -> RunOptions {
        if let Some(cpu) = self.cpu {
            o.cpu = cpu;
        }
        if let Some(n) = self.smp {
            o.smp = n;
        }
        if let Some(mem) = self.mem {
            o.mem = mem;
        }
        o.icount |= self.icount;
        if let Some(t) = self.timeout {
            o.timeout = t;
        }
        // --guests selects the guests scenario unless --scenario names another.
        if let Some(n) = self.guests {
            o.guests = Some(n);
            if o.scenario == "selftest" {
                o.scenario = "guests".into();
            }
        }
        if let Some(s) = self.scenario {
            o.scenario = s;
        }
        if self.parts.is_some() {
            o.parts = self.parts;
        }
        o.hang |= self.hang;
        o.debug_el2 |= self.debug_el2;
        o.no_host |= self.no_host;
        o.extra.extend(self.extra);
        o
    }
}

impl MutantsArgs {
    /// The options given, over the defaults `o`.
    fn over(self, mut o: MutantsOptions) -> MutantsOptions {
        if !self.package.is_empty() {
            o.packages = mutants::PACKAGES
                .into_iter()
                .filter(|p| {
                    self.package.iter().any(|c| match c {
                        Crate::Pgtable => *p == "pkvm-pgtable",
                        Crate::Hyp => *p == "pkvm-hyp",
                    })
                })
                .collect();
        }
        o.files = self.file;
        if let Some(j) = self.jobs {
            o.jobs = j;
        }
        if let Some(t) = self.timeout {
            o.timeout = t;
        }
        if let Some(c) = self.cases {
            o.cases = c;
        }
        o.shard = self.shard;
        o.list = self.list;
        o.record = self.record;
        o.score = self.score;
        o.survivors = self.survivors;
        o.untested = self.untested;
        o.merge = self.merge;
        o.first_pass = self.first_pass;
        o.extra = self.extra;
        o
    }
}

impl Cli {
    /// What to do, with every option applied over the command's defaults.
    pub fn action(self) -> Action {
        match self.command {
            Command::Run(RunArgs { qemu, linux: l }) => {
                if l.host.is_some() || l.kernel.is_some() || l.initrd.is_some() || l.bench_linux {
                    Action::RunLinux(LinuxRun {
                        opts: qemu.over(crate::linux::default_options()),
                        kernel: l.kernel,
                        initrd: l.initrd,
                        bench_reps: l.bench_linux.then_some(l.reps.unwrap_or(DEFAULT_REPS)),
                        measure: l.measure,
                    })
                } else {
                    Action::Run(qemu.over(RunOptions::default()))
                }
            }
            Command::Test => Action::Test,
            Command::Bench(qemu) => Action::Bench(qemu.over(crate::bench::default_options())),
            Command::Mutants(m) => Action::Mutants(m.over(MutantsOptions::default())),
            Command::Deep(d) => Action::Deep(d.over(DeepOptions::default())),
        }
    }
}

/// Parses the process's arguments; prints the help or the usage error and exits when that is
/// what they ask for or are.
pub fn parse() -> Action {
    Cli::parse().action()
}

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;
