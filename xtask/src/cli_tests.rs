//! Tests of the command line: every command and option parses to the action it names.

use super::*;
use clap::CommandFactory;
use clap::error::ErrorKind;

fn action(args: &[&str]) -> Result<Action, clap::Error> {
    Cli::try_parse_from(std::iter::once("cargo-xtask").chain(args.iter().copied())).map(Cli::action)
}

fn run(args: &[&str]) -> Result<RunOptions, clap::Error> {
    let mut all = vec!["run"];
    all.extend(args);
    match action(&all)? {
        Action::Run(o) => Ok(o),
        other => panic!("{args:?}: {other:?}"),
    }
}

fn linux(args: &[&str]) -> LinuxRun {
    let mut all = vec!["run"];
    all.extend(args);
    match action(&all) {
        Ok(Action::RunLinux(l)) => l,
        other => panic!("{args:?}: {other:?}"),
    }
}

#[test]
fn definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn run_options() {
    let o = run(&[]).unwrap();
    assert_eq!((o.cpu.as_str(), o.smp, o.timeout.as_secs()), ("max", 1, 60));
    let o = run(&[
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
        &["--smp", "0"],
        &["--timeout", "x"],
        &["--timeout", "0"],
        &["--cpu"],
        &["--frob"],
        &["--scenario", "a b"],
        &["--scenario", ""],
        &["--parts", "a, b"],
        &["--guests", "many"],
        &["stray"],
        &["--measure"],
        &["--reps", "2"],
        &["--host", "windows"],
    ] {
        assert!(run(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn more_run_options() {
    let o = run(&["--timeout", "0.5", "--parts", "el0,devices", "--no-host"]).unwrap();
    assert_eq!(o.timeout, Duration::from_millis(500));
    assert_eq!(o.parts.as_deref(), Some("el0,devices"));
    assert!(o.no_host && !o.debug_el2 && !o.icount && !o.hang);
    assert!(run(&["--debug-el2"]).unwrap().debug_el2);
    // A repeated option: the last one counts.
    assert_eq!(run(&["--smp", "2", "--smp", "3"]).unwrap().smp, 3);
    // --guests selects the guests scenario unless --scenario names another.
    let o = run(&["--guests", "200"]).unwrap();
    assert_eq!((o.scenario.as_str(), o.guests), ("guests", Some(200)));
    let o = run(&["--guests", "5", "--scenario", "hostile"]).unwrap();
    assert_eq!((o.scenario.as_str(), o.guests), ("hostile", Some(5)));
    // Everything after `--` goes to QEMU, options included.
    let o = run(&["--", "--smp", "x", "-S"]).unwrap();
    assert_eq!(o.smp, 1);
    assert_eq!(o.extra, ["--smp", "x", "-S"]);
}

#[test]
fn linux_options() {
    let l = linux(&["--host", "linux"]);
    assert_eq!((l.opts.smp, l.opts.timeout.as_secs()), (4, 180));
    assert_eq!(
        (l.kernel, l.initrd, l.bench_reps, l.measure),
        (None, None, None, false)
    );
    let l = linux(&[
        "--host",
        "linux",
        "--measure",
        "--icount",
        "--smp",
        "1",
        "--",
        "-s",
    ]);
    assert!(l.measure && l.opts.icount);
    assert_eq!((l.opts.smp, l.opts.extra), (1, vec!["-s".to_string()]));
    let l = linux(&["--kernel", "/k/Image", "--initrd", "/k/initrd"]);
    assert_eq!(l.kernel.as_deref(), Some(std::path::Path::new("/k/Image")));
    assert_eq!(l.initrd.as_deref(), Some(std::path::Path::new("/k/initrd")));
    assert_eq!(linux(&["--bench-linux"]).bench_reps, Some(3));
    let l = linux(&["--host", "linux", "--bench-linux", "--reps", "5"]);
    assert_eq!(l.bench_reps, Some(5));
    for bad in [
        &["--host", "linux", "--reps", "0"][..],
        &["--host", "linux", "--reps", "21"],
        &["--host"],
        &["--kernel"],
    ] {
        assert!(run(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn bench_and_test() {
    let Ok(Action::Bench(o)) = action(&["bench"]) else {
        panic!("bench");
    };
    assert!(o.icount);
    assert_eq!((o.scenario.as_str(), o.smp), ("bench", 1));
    let Ok(Action::Bench(o)) = action(&["bench", "--cpu", "cortex-a72", "--guests", "3"]) else {
        panic!("bench with options");
    };
    assert_eq!(
        (o.cpu.as_str(), o.scenario.as_str()),
        ("cortex-a72", "bench")
    );
    assert!(action(&["bench", "--host", "linux"]).is_err());
    assert!(matches!(action(&["test"]), Ok(Action::Test)));
    assert!(action(&["test", "--smp", "2"]).is_err());
    assert!(action(&["frob"]).is_err());
}

#[test]
fn deep_options() {
    let d = |args: &[&str]| {
        let mut all = vec!["deep"];
        all.extend(args);
        match action(&all) {
            Ok(Action::Deep(o)) => Ok(o),
            Ok(other) => panic!("{args:?}: {other:?}"),
            Err(e) => Err(e),
        }
    };
    let o = d(&[]).unwrap();
    assert_eq!(o, DeepOptions::default());
    assert_eq!(o.runs().len(), 5);
    let o = d(&[
        "--model-cases",
        "5",
        "--exhaustive-depth",
        "3",
        "--fuzz-minutes",
        "0",
    ])
    .unwrap();
    assert_eq!(
        (o.model_cases, o.exhaustive_depth, o.fuzz_minutes),
        (5, 3, 0)
    );
    assert_eq!(o.shuttle_iters, DeepOptions::default().shuttle_iters);
    // No fuzzing: four runs, the model test's with its case count.
    let runs = o.runs();
    assert_eq!(runs.len(), 4);
    let envs: Vec<_> = runs[0].1.get_envs().collect();
    assert_eq!(
        envs,
        [(
            std::ffi::OsStr::new("PKVM_MODEL_CASES"),
            Some(std::ffi::OsStr::new("5"))
        )]
    );
    assert!(d(&["--shuttle-iters", "many"]).is_err());
}

#[test]
fn mutants_options() {
    let m = |args: &[&str]| {
        let mut all = vec!["mutants"];
        all.extend(args);
        match action(&all) {
            Ok(Action::Mutants(o)) => Ok(o),
            Ok(other) => panic!("{args:?}: {other:?}"),
            Err(e) => Err(e),
        }
    };
    let o = m(&[]).unwrap();
    assert_eq!(o, MutantsOptions::default());
    assert_eq!(o.packages, ["pkvm-pgtable", "pkvm-hyp"]);
    let a = o.args();
    for want in [
        "--package pkvm-pgtable --package pkvm-hyp",
        "--test-package pkvm-pgtable --test-package pkvm-hyp --test-package pkvm-sim",
        "--jobs 1 --timeout 120",
        "--output target/mutants",
    ] {
        assert!(a.join(" ").contains(want), "{want} not in {a:?}");
    }
    let o = m(&[
        "-p",
        "hyp",
        "--file",
        "crates/hyp/src/vm/*",
        "-j",
        "2",
        "--timeout",
        "60",
        "--cases",
        "50",
        "--shard",
        "1/4",
        "--",
        "--iterate",
    ])
    .unwrap();
    assert_eq!(o.packages, ["pkvm-hyp"]);
    assert_eq!((o.jobs, o.timeout.as_secs(), o.cases), (2, 60, 50));
    let a = o.args().join(" ");
    assert!(a.contains("--file crates/hyp/src/vm/*") && a.contains("--shard 1/4"));
    assert!(a.ends_with("--iterate") && !a.contains("pkvm-pgtable --package"));
    // pgtable's tests cannot catch a mutant of hyp: they run only when pgtable is mutated.
    assert!(a.contains("--test-package pkvm-hyp --test-package pkvm-sim"));
    assert!(!a.contains("--test-package pkvm-pgtable"));
    let o = m(&["-p", "pgtable"]).unwrap();
    assert_eq!(o.test_packages(), mutants::TEST_PACKAGES);
    // A first pass over pgtable runs its own tests only; over hyp it changes nothing.
    assert_eq!(
        m(&["-p", "pgtable", "--first-pass"])
            .unwrap()
            .test_packages(),
        ["pkvm-pgtable"]
    );
    assert_eq!(
        m(&["-p", "hyp", "--first-pass"]).unwrap().test_packages(),
        ["pkvm-hyp", "pkvm-sim"]
    );
    assert!(m(&["--record"]).unwrap().record && m(&["--score"]).unwrap().score);
    let o = m(&["-p", "pgtable", "--untested", "--first-pass"]).unwrap();
    assert!(o.untested && o.first_pass && !o.survivors);
    let o = m(&["--merge", "/work/mut/docs/mutants.tsv"]).unwrap();
    assert_eq!(
        o.merge.unwrap().to_str(),
        Some("/work/mut/docs/mutants.tsv")
    );
    assert!(m(&["--merge", "x", "--record"]).is_err());
    assert!(m(&["--untested", "--survivors"]).is_err() && m(&["--untested", "--list"]).is_err());
    assert!(m(&["--record", "--score"]).is_err() && m(&["--list", "--record"]).is_err());
    // Both crates, in the order cargo-mutants is given them, whatever the order here.
    let o = m(&["-p", "hyp", "-p", "pgtable"]).unwrap();
    assert_eq!(o.packages, ["pkvm-pgtable", "pkvm-hyp"]);
    let a = m(&["--list"]).unwrap().args().join(" ");
    assert!(a.contains("--list") && !a.contains("--jobs") && !a.contains("--test-package"));
    for bad in [
        &["-p", "spec"][..],
        &["-j", "0"],
        &["--shard", "4/4"],
        &["--shard", "x"],
        &["--timeout", "0"],
        &["--smp", "2"],
    ] {
        assert!(m(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn help() {
    for args in [
        &["help"][..],
        &["--help"],
        &["-h"],
        &["help", "run"],
        &["run", "-h"],
        &["help", "mutants"],
    ] {
        let e = action(args).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DisplayHelp, "{args:?}");
    }
    let e = action(&[]).unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    // Every option of today's usage text is in the help of `run`.
    let help = Cli::command()
        .find_subcommand_mut("run")
        .expect("run")
        .render_long_help()
        .to_string();
    for opt in [
        "--cpu",
        "--smp",
        "--mem",
        "--icount",
        "--timeout",
        "--scenario",
        "--guests",
        "--parts",
        "--hang",
        "--no-host",
        "--debug-el2",
        "--host",
        "--kernel",
        "--initrd",
        "--bench-linux",
        "--reps",
        "--measure",
        "[-- <ARGS>...]",
    ] {
        assert!(help.contains(opt), "{opt} missing from\n{help}");
    }
}
