//! Every race scenario under Shuttle's random and PCT schedulers, each at both granularities
//! (`Points`: every atomic a scheduling point, or only the locks and the guest running),
//! bounded for CI. Long runs:
//! `PKVM_SHUTTLE_ITERS=20000 cargo test --release -p pkvm-race --test shuttle -- --nocapture`
//! (see `pkvm_race::harness` for the other variables).

use pkvm_race::harness::{Points, Sched, explore};
use pkvm_race::scenarios;

/// Executions per scenario and scheduler in CI.
const ITERS: usize = 100;

fn run(name: &str) {
    run_n(name, ITERS);
}

fn run_n(name: &str, iters: usize) {
    let sc = scenarios::get(name);
    for points in [Points::Atomics, Points::Locks] {
        for sched in [Sched::Random, Sched::Pct] {
            explore(&sc, sched, points, iters);
        }
    }
}

#[test]
fn share_same_page() {
    run("share_same_page");
}

#[test]
fn share_adjacent_pages() {
    run("share_adjacent_pages");
}

#[test]
fn saturation() {
    run("saturation");
}

#[test]
fn donate_vs_share() {
    run("donate_vs_share");
}

#[test]
fn fault_vs_donate() {
    run("fault_vs_donate");
}

#[test]
fn teardown_vs_guest() {
    run("teardown_vs_guest");
}

/// The focused teardown race, with more executions: a teardown that does not wait for the
/// running vCPU is found here (see the scenario).
#[test]
fn teardown_vs_run() {
    run_n("teardown_vs_run", 500);
}
