//! Races explored, not hoped away.
//!
//! The portable core (`pkvm-hyp`, built with its `shuttle` feature: every lock and atomic of
//! `pkvm_hyp::sync` is a Shuttle scheduling point) runs on the simulator (`pkvm-sim`) with one
//! Shuttle thread per simulated CPU. Shuttle's random and PCT schedulers pick the interleaving;
//! every execution's history of calls and results must be **linearizable** against the
//! executable specification (`pkvm-spec`, extended in [`model`] with the model guest's
//! lifecycle), and the machine must keep its structural invariants.
//!
//! - [`model`]: the sequential model (spec + guest lifecycle), operations as atomic steps;
//! - [`lin`]: histories and the linearizability check;
//! - [`harness`]: one Shuttle execution of a scenario, exploring with a scheduler;
//! - [`scenarios`]: the scenarios.
//!
//! The tests: `tests/shuttle.rs` (each scenario under both schedulers, bounded for CI;
//! `PKVM_SHUTTLE_ITERS` for long runs, see [`harness`]), `tests/loom.rs` (the vmemmap
//! entry's counter kernels under `loom`, with the locks that guard them modelled).

pub mod harness;
pub mod lin;
pub mod model;
pub mod scenarios;
