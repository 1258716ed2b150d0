//! The `shuttle` build of [`crate::sync`]: inside a Shuttle execution every lock acquisition
//! and atomic operation is a scheduling point; outside one, the default build's behaviour.

use core::fmt;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::Ordering;
use std::cell::Cell;
use std::sync::PoisonError;

use shuttle::current::{TaskId, try_get_current_task};

std::thread_local! {
    /// The Shuttle task (on this OS thread: Shuttle runs an execution's tasks on the thread
    /// that runs the execution) whose atomics are not scheduling points (see [`quiet`]).
    static QUIET: Cell<Option<TaskId>> = const { Cell::new(None) };
}

/// Whether the caller runs as a task of a Shuttle execution.
#[must_use]
pub fn in_shuttle() -> bool {
    try_get_current_task().is_some()
}

/// Runs `f` with the atomics this module provides not being scheduling points for the current
/// Shuttle task (its lock acquisitions still are: a lock must be modelled to block). For a
/// test's set-up and final checks, which run alone and touch thousands of vmemmap entries:
/// scheduling points there only dilute the schedules that matter (PCT spreads its priority
/// changes over every step). Tasks the caller spawns are not affected.
pub fn quiet<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(Option<TaskId>);
    impl Drop for Restore {
        fn drop(&mut self) {
            QUIET.with(|q| q.set(self.0));
        }
    }
    let _restore = Restore(QUIET.with(|q| q.replace(try_get_current_task())));
    f()
}

/// A scheduling point for the current task, if it is a Shuttle task that is not [`quiet`].
#[inline]
pub(crate) fn point() {
    if let Some(me) = try_get_current_task()
        && QUIET.with(Cell::get) != Some(me)
    {
        // A Shuttle atomic's operation is exactly one plain scheduling point (unlike
        // `yield_now`, which PCT takes as a hint to lower the task's priority).
        let _ = shuttle::sync::atomic::AtomicBool::new(false).load(Ordering::SeqCst);
    }
}

/// A mutex with `spin`'s API (`lock` without poisoning, `is_locked`): a `spin` mutex holding
/// the data behind a Shuttle mutex (the gate) that Shuttle schedules.
pub struct Mutex<T: ?Sized> {
    gate: shuttle::sync::Mutex<()>,
    inner: spin::Mutex<T>,
}

/// The guard of a [`Mutex`]: the `spin` guard is released before the gate.
pub struct MutexGuard<'a, T: ?Sized + 'a> {
    // Field order is drop order.
    inner: spin::MutexGuard<'a, T>,
    _gate: Option<shuttle::sync::MutexGuard<'a, ()>>,
}

impl<T> Mutex<T> {
    /// An unlocked mutex holding `value`.
    pub const fn new(value: T) -> Self {
        Self {
            gate: shuttle::sync::Mutex::new(()),
            inner: spin::Mutex::new(value),
        }
    }

    /// The data.
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Takes the lock (spinning outside Shuttle; blocking this task inside it).
    ///
    /// # Panics
    /// Inside Shuttle, if the `spin` mutex is held although the gate was free: the lock was
    /// taken by code that Shuttle does not schedule.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        if !in_shuttle() {
            return MutexGuard {
                inner: self.inner.lock(),
                _gate: None,
            };
        }
        let gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        let inner = self
            .inner
            .try_lock()
            .expect("lock held outside Shuttle's view");
        MutexGuard {
            inner,
            _gate: Some(gate),
        }
    }

    /// Whether the lock is held (a scheduling point under Shuttle, as an atomic load).
    pub fn is_locked(&self) -> bool {
        point();
        self.inner.is_locked()
    }

    /// The data, through exclusive access.
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.inner, f)
    }
}

macro_rules! atomic {
    ($name:ident, $t:ty) => {
        #[doc = concat!("`core`'s `", stringify!($name), "`, each operation a scheduling point under Shuttle.")]
        #[derive(Debug, Default)]
        #[repr(transparent)]
        pub struct $name(core::sync::atomic::$name);

        impl $name {
            /// An atomic holding `v`.
            #[must_use]
            pub const fn new(v: $t) -> Self {
                Self(core::sync::atomic::$name::new(v))
            }

            /// Loads the value.
            #[inline]
            pub fn load(&self, order: Ordering) -> $t {
                point();
                self.0.load(order)
            }

            /// Stores `v`.
            #[inline]
            pub fn store(&self, v: $t, order: Ordering) {
                point();
                self.0.store(v, order);
            }

            /// Stores `v` and returns the previous value.
            #[inline]
            pub fn swap(&self, v: $t, order: Ordering) -> $t {
                point();
                self.0.swap(v, order)
            }

            /// `compare_exchange`, as `core`'s.
            ///
            /// # Errors
            /// The current value, if it is not `current`.
            #[inline]
            pub fn compare_exchange(
                &self,
                current: $t,
                new: $t,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$t, $t> {
                point();
                self.0.compare_exchange(current, new, success, failure)
            }

            /// The value, through exclusive access.
            pub fn get_mut(&mut self) -> &mut $t {
                self.0.get_mut()
            }

            /// The value.
            pub fn into_inner(self) -> $t {
                self.0.into_inner()
            }
        }
    };
    ($name:ident, $t:ty, int) => {
        atomic!($name, $t);

        impl $name {
            /// Adds `v` (wrapping) and returns the previous value.
            #[inline]
            pub fn fetch_add(&self, v: $t, order: Ordering) -> $t {
                point();
                self.0.fetch_add(v, order)
            }

            /// Subtracts `v` (wrapping) and returns the previous value.
            #[inline]
            pub fn fetch_sub(&self, v: $t, order: Ordering) -> $t {
                point();
                self.0.fetch_sub(v, order)
            }
        }
    };
}

atomic!(AtomicBool, bool);
atomic!(AtomicU8, u8, int);
atomic!(AtomicU16, u16, int);
atomic!(AtomicU64, u64, int);
