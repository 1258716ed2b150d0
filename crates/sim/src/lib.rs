//! The pkvm-rs simulator: the real portable hypervisor (`pkvm-hyp`) on a simulated machine,
//! checked against the executable specification (`pkvm-spec`) after every hypercall.
//!
//! - [`mem`]: simulated RAM;
//! - [`mmu`]: an independent descriptor walker and a TLB model;
//! - [`platform`]: the [`pkvm_hyp::platform::Platform`] implementation recording barriers and TLBIs;
//! - [`guest`]: the scripted guest and the world switch that plays it;
//! - [`machine`]: boot, host hypercalls and accesses;
//! - [`checks`]: the abstraction function and the invariants;
//! - [`protocol`]: the page-table protocol checker (break-before-make, TLBIs, barriers, locks);
//! - [`reset`]: snapshots of a machine, and resetting it to one (the fuzz target's reuse);
//! - [`scenarios`]: named scenarios shared by the CLI and the tests.

pub mod checks;
pub mod guest;
pub mod machine;
pub mod mem;
pub mod mmu;
pub mod platform;
pub mod protocol;
pub mod reset;
pub mod scenarios;

pub use machine::{Machine, SimConfig, boot_static, with_machine, with_unfinalised_machine};
