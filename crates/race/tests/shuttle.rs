//! Every race scenario under Shuttle's random and PCT schedulers, bounded for CI. Long runs:
//! `PKVM_SHUTTLE_ITERS=20000 cargo test --release -p pkvm-race --test shuttle -- --nocapture`
//! (see `pkvm_race::harness` for the other variables).

use pkvm_race::harness::{Sched, explore};
use pkvm_race::scenarios;

/// Executions per scenario and scheduler in CI.
const ITERS: usize = 100;

fn run(name: &str) {
    let sc = scenarios::get(name);
    for sched in [Sched::Random, Sched::Pct] {
        explore(&sc, sched, ITERS);
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
