//! The portable pkvm-rs EL2 core.
//!
//! Everything here is safe Rust that runs unchanged at EL2 (the `el2/` image) and inside the
//! host-side simulator (`crates/sim`). The machine is reached only through the traits in
//! [`platform`].
#![no_std]
#![forbid(unsafe_code)]

// The `shuttle` build (race tests, host only) uses `std` for Shuttle's runtime.
#[cfg(feature = "shuttle")]
extern crate std;

pub mod debug;
pub mod devices;
pub mod early_alloc;
pub mod hcall;
pub mod host_fault;
pub mod hyp;
pub mod mem_protect;
pub mod memory;
pub mod mm;
pub mod page_alloc;
pub mod platform;
pub mod setup;
pub mod sizing;
#[cfg(feature = "snapshot")]
pub mod snapshot;
pub mod stats;
pub mod sync;
pub mod vm;
pub mod vmemmap;
