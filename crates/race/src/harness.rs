//! Running a [`Scenario`] under Shuttle: each execution boots a fresh simulated machine, sets
//! it up, starts one Shuttle thread per simulated CPU, records the history of calls and
//! results, and checks it (linearizability against [`Model`], the machine's structural
//! invariants, the scenario's own check).
//!
//! Environment (all optional):
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `PKVM_SHUTTLE_ITERS` | executions per scenario and scheduler | the test's bound |
//! | `PKVM_SHUTTLE_SEED` | seed of the schedulers (a number, or `random`) | fixed per test |
//! | `PKVM_SHUTTLE_PCT_DEPTH` | PCT's bug depth (preemptions + 1) | 3 |
//! | `PKVM_SHUTTLE_REPLAY` | `scenario=schedule`: replay one failing schedule Shuttle printed | |
//! | `PKVM_SHUTTLE_POINTS` | `locks` if that schedule was recorded at [`Points::Locks`] granularity (the failure says) | `atomics` |
//!
//! Every run prints one line: scenario, scheduler, granularity ([`Points`]), seed, executions,
//! distinct histories, time.

use std::collections::HashSet;
use std::collections::hash_map::DefaultHasher;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pkvm_hyp::sync::quiet;
use pkvm_sim::machine::virt_devices;
use pkvm_sim::{Machine, SimConfig, with_machine};
use pkvm_spec::{Outcome, Spec};
use shuttle::scheduler::{PctScheduler, RandomScheduler, ReplayScheduler};
use shuttle::{Config, Runner};

use crate::lin::{self, Event, History};
use crate::model::{Model, Op};

/// A race scenario: a machine set up by `setup`, then one thread per simulated CPU, each
/// performing its operations in order.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Name (for reports and `PKVM_SHUTTLE_REPLAY`).
    pub name: &'static str,
    /// Brings the freshly booted machine to the scenario's start (run alone, no scheduling
    /// points at atomics).
    pub setup: fn(&mut Machine<'_>),
    /// The operations of each simulated CPU.
    pub cpus: Vec<Vec<Op>>,
    /// A check of its own, after the common ones.
    pub check: Option<ScenarioCheck>,
}

/// A scenario's own check of the machine and the history, after the common ones.
pub type ScenarioCheck = fn(&Machine<'_>, &History) -> Result<(), String>;

/// Where a simulated CPU may be preempted.
///
/// Every vmemmap field is written only under the locks that own it, so an interleaving at an
/// atomic rarely shows anything the locks allow; but every call makes hundreds of atomic
/// accesses, and PCT places its few priority changes uniformly over all the scheduling points
/// of an execution, so the points that matter (a lock, the guest running) are rarely chosen.
/// Each scenario is therefore explored at both granularities: [`Points::Atomics`] for races on
/// the fields themselves, [`Points::Locks`] to reach deep lock-level interleavings (a
/// teardown while the vCPU runs is found by PCT within 100 executions at this granularity,
/// and needs thousands at the other).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Points {
    /// Every lock acquisition, every atomic operation of `pkvm_hyp::sync`, and the guest
    /// running (`pkvm_hyp::sync::preemption_point`).
    Atomics,
    /// Lock acquisitions and the guest running only (the CPUs run
    /// [`quiet`](pkvm_hyp::sync::quiet)).
    Locks,
}

/// Which Shuttle scheduler explores the schedules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sched {
    /// Uniformly random choice at every scheduling point.
    Random,
    /// Probabilistic concurrency testing: random priorities, `depth - 1` priority changes.
    Pct,
}

/// The machine every scenario runs on: 4 MiB of RAM at 1 GiB (two 2 MiB blocks; EL2's 512 KiB
/// carve-out at the top), 40-bit PA, the `virt` devices.
#[must_use]
pub fn race_config() -> SimConfig {
    SimConfig {
        ram: vec![(RAM_BASE, 4 << 20)],
        pa_bits: 40,
        hyp_pool_pages: 64,
        host_pool_pages: 64,
        devices: virt_devices(),
    }
}

/// Base of the race machine's RAM.
pub const RAM_BASE: u64 = 0x4000_0000;

/// What a set of executions saw.
#[derive(Debug, Default)]
pub struct Stats {
    histories: HashSet<u64>,
    executions: u64,
}

impl Stats {
    /// Executions run.
    #[must_use]
    pub fn executions(&self) -> u64 {
        self.executions
    }

    /// Distinct histories (results and call/return interleavings) among them.
    #[must_use]
    pub fn distinct_histories(&self) -> usize {
        self.histories.len()
    }
}

/// Runs one execution of `sc` (inside a Shuttle execution) and checks it.
///
/// # Panics
/// On any failed check, with the history and the reason.
pub fn execute(sc: &Scenario, points: Points, stats: &Mutex<Stats>) {
    quiet(|| {
        with_machine(&race_config(), |m| {
            (sc.setup)(m);
            let init = Model::new(Spec::with_state(
                m.spec_machine(),
                m.abstract_state().expect("abstract state"),
            ));
            let m = &*m;
            let clock = &AtomicU64::new(0);
            let history: History = shuttle::thread::scope(|s| {
                let cpus: Vec<_> = sc
                    .cpus
                    .iter()
                    .map(|ops| {
                        s.spawn(move || match points {
                            Points::Atomics => run_cpu(m, ops, clock),
                            Points::Locks => quiet(|| run_cpu(m, ops, clock)),
                        })
                    })
                    .collect();
                cpus.into_iter()
                    .map(|h| h.join().expect("a simulated CPU panicked"))
                    .collect()
            });
            if let Err(e) = check(sc, m, &init, &history) {
                panic!("scenario {} ({points:?} granularity): {e}", sc.name);
            }
            let mut h = DefaultHasher::new();
            history.hash(&mut h);
            let mut st = stats.lock().unwrap();
            st.executions += 1;
            st.histories.insert(h.finish());
        });
    });
}

fn check(sc: &Scenario, m: &Machine<'_>, init: &Model, history: &History) -> Result<(), String> {
    lin::check(init, history, &m.abstract_state()?)?;
    let log = m.plat.log.lock().unwrap().clone();
    if !log.is_empty() {
        return Err(format!("EL2 logged {log:?}\n{}", lin::describe(history)));
    }
    if m.hyp.mmops_errors() != 0 {
        return Err(format!(
            "page-table refcount errors\n{}",
            lin::describe(history)
        ));
    }
    m.check_invariants()
        .map_err(|e| format!("invariant: {e}\n{}", lin::describe(history)))?;
    if !m.hyp.pools_free_memory_is_zero() {
        return Err(format!(
            "a pool's free memory is not zero\n{}",
            lin::describe(history)
        ));
    }
    if let Some(f) = sc.check {
        f(m, history).map_err(|e| format!("{e}\n{}", lin::describe(history)))?;
    }
    Ok(())
}

fn run_cpu(m: &Machine<'_>, ops: &[Op], clock: &AtomicU64) -> Vec<Event> {
    ops.iter()
        .map(|&op| {
            // A `std` atomic: not a scheduling point, so nothing runs between the time stamp
            // and the call's first scheduling point.
            let start = clock.fetch_add(1, Ordering::Relaxed);
            let outcome = perform(m, op);
            let end = clock.fetch_add(1, Ordering::Relaxed);
            Event {
                op,
                outcome,
                start,
                end,
            }
        })
        .collect()
}

fn perform(m: &Machine<'_>, op: Op) -> Outcome {
    match op {
        Op::Spec(call) => m.apply(call),
        Op::HostStore { pa, val } => {
            let o = m.host_access(pa, true);
            if o == Outcome::Access {
                assert!(m.plat.mem.try_write(pa, val), "host store outside RAM");
            }
            o
        }
    }
}

/// Explores `sc` with `sched` for `iters` executions (or `PKVM_SHUTTLE_ITERS`) and prints
/// what it explored. Returns the statistics.
///
/// # Panics
/// If an execution fails its checks (Shuttle prints the schedule to replay).
pub fn explore(sc: &Scenario, sched: Sched, points: Points, iters: usize) -> Stats {
    let iters = env_usize("PKVM_SHUTTLE_ITERS").unwrap_or(iters);
    let depth = env_usize("PKVM_SHUTTLE_PCT_DEPTH").unwrap_or(3);
    let seed = match std::env::var("PKVM_SHUTTLE_SEED").ok().as_deref() {
        Some("random") => RandomState::new().build_hasher().finish(),
        Some(s) => s.parse().expect("PKVM_SHUTTLE_SEED: a number or `random`"),
        None => {
            // Fixed per scenario and scheduler, so that CI explores the same schedules.
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            for b in sc.name.bytes().chain([sched as u8, points as u8]) {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            h
        }
    };
    let stats = Arc::new(Mutex::new(Stats::default()));
    let body = {
        let sc = Arc::new(sc.clone());
        let stats = Arc::clone(&stats);
        move || execute(&sc, points, &stats)
    };
    let t0 = Instant::now();
    if let Some(replay) = std::env::var("PKVM_SHUTTLE_REPLAY").ok()
        && let Some((name, schedule)) = replay.split_once('=')
    {
        // The schedule was recorded at one granularity: replay it at the same one.
        let recorded = match std::env::var("PKVM_SHUTTLE_POINTS").ok().as_deref() {
            Some("locks") => Points::Locks,
            _ => Points::Atomics,
        };
        if name == sc.name && recorded == points {
            Runner::new(ReplayScheduler::new_from_encoded(schedule), config()).run(body);
        }
        return Arc::try_unwrap(stats).unwrap().into_inner().unwrap();
    }
    let n = match sched {
        Sched::Random => {
            Runner::new(RandomScheduler::new_from_seed(seed, iters), config()).run(body)
        }
        Sched::Pct => {
            Runner::new(PctScheduler::new_from_seed(seed, depth, iters), config()).run(body)
        }
    };
    let stats = Arc::try_unwrap(stats).unwrap().into_inner().unwrap();
    println!(
        "shuttle {:<22} {:<6} {:<7} seed {seed:<20} {n:>6} executions, {:>5} distinct histories, {:.1} s",
        sc.name,
        format!("{sched:?}"),
        format!("{points:?}"),
        stats.distinct_histories(),
        t0.elapsed().as_secs_f64()
    );
    stats
}

fn config() -> Config {
    let mut c = Config::new();
    // The main task boots a machine on its stack.
    c.stack_size = 1 << 20;
    c
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: a number")))
}
