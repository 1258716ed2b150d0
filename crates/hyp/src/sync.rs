//! Every synchronisation primitive of the portable core, in one place: the [`Mutex`] that
//! guards each component, the atomics of the vmemmap entries ([`crate::vmemmap::HypPage`]),
//! the counters and the flags.
//!
//! # Builds
//!
//! - **Default** (the EL2 image, the simulator): plain re-exports of `spin`'s mutex and
//!   `core`'s atomics, nothing else — the code generated is the code without this module.
//! - **`shuttle` feature** (host builds only; the race tests in `crates/race`): the same API,
//!   but inside a [Shuttle](https://docs.rs/shuttle) execution every lock acquisition and every
//!   atomic operation is a scheduling point, so that Shuttle's schedulers (random, PCT) choose
//!   which simulated CPU runs at each of them. A lock is a `spin` mutex behind a Shuttle mutex
//!   (the *gate*): Shuttle sees who waits for whom (and reports deadlocks), the data is still in
//!   the `spin` mutex, which the gate holder always finds free. Outside a Shuttle execution (the
//!   simulator's own tests, which get this feature too when the whole workspace is built
//!   together) both behave exactly as the default build, at the cost of a thread-local read per
//!   operation.
//!
//! What Shuttle does *not* see: the simulator's memory (`crates/sim/src/mem.rs`: page-table
//! words and page contents are `std` atomics). Every page-table write happens under the lock of
//! the component that owns the table, so between two scheduling points a table is changed only
//! by the lock holder, and the other CPUs' code that reads tables without a lock — the
//! simulated MMU's walks of the host stage-2 in `Machine::host_access` — runs between
//! scheduling points too: it sees each critical section whole, as a hardware walk sees a
//! break-before-make sequence that the TLB invalidations make atomic for it. Making those words
//! scheduling points would multiply the schedules by the thousands of words a boot writes for
//! no interleaving the locks allow.
//!
//! [`AtomicCell`] and [`AtomicFamily`] let the vmemmap entry be instantiated with other atomics:
//! the `loom` tests of `crates/race` run the real entry and its counter kernels
//! ([`crate::mem_protect::kernel`]) over `loom`'s atomics.

pub use core::sync::atomic::Ordering;

#[cfg(all(feature = "shuttle", target_os = "none"))]
compile_error!("`shuttle` is for the race tests on the build machine (it needs std)");

#[cfg(not(feature = "shuttle"))]
pub use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU64};
#[cfg(not(feature = "shuttle"))]
pub use spin::{Mutex, MutexGuard};

#[cfg(feature = "shuttle")]
mod model;
#[cfg(feature = "shuttle")]
pub use model::{AtomicBool, AtomicU8, AtomicU16, AtomicU64, Mutex, MutexGuard, in_shuttle, quiet};

/// A point where this CPU can spend an unbounded time outside the hypervisor's locks (a guest
/// runs): nothing in the default build; under Shuttle, a scheduling point, so that the other
/// CPUs can run while the guest does.
#[inline(always)]
pub fn preemption_point() {
    #[cfg(feature = "shuttle")]
    model::point();
}

/// An atomic cell of `T` with the operations the vmemmap entry uses (each field is written only
/// under the lock that owns it, so loads and stores are enough).
pub trait AtomicCell<T: Copy>: Send + Sync {
    /// A cell holding `v`.
    fn new(v: T) -> Self;
    /// Loads the value.
    fn load(&self, order: Ordering) -> T;
    /// Stores `v`.
    fn store(&self, v: T, order: Ordering);
}

/// The atomic types of a vmemmap entry's fields.
pub trait AtomicFamily {
    /// An atomic `u8`.
    type U8: AtomicCell<u8>;
    /// An atomic `u16`.
    type U16: AtomicCell<u16>;
}

/// This build's atomics ([`AtomicU8`], [`AtomicU16`]): those of every real vmemmap entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HypAtomics;

impl AtomicFamily for HypAtomics {
    type U8 = AtomicU8;
    type U16 = AtomicU16;
}

macro_rules! atomic_cell {
    ($atomic:ty, $t:ty) => {
        impl AtomicCell<$t> for $atomic {
            #[inline(always)]
            fn new(v: $t) -> Self {
                <$atomic>::new(v)
            }
            #[inline(always)]
            fn load(&self, order: Ordering) -> $t {
                <$atomic>::load(self, order)
            }
            #[inline(always)]
            fn store(&self, v: $t, order: Ordering) {
                <$atomic>::store(self, v, order)
            }
        }
    };
}

atomic_cell!(AtomicU8, u8);
atomic_cell!(AtomicU16, u16);
