//! A pool's own fields, saved and put back (the `snapshot` feature: the simulator's fuzz target
//! resets its machine between inputs; see [`crate::snapshot`]).

use pkvm_abi::Error;

use super::{HypPool, LISTS};
use crate::platform::PhysMem;

/// A pool's own fields, without its memory (the free lists' nodes live in the free pages, the
/// per-page metadata in the vmemmap): what [`crate::snapshot::HypSnapshot`] keeps of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolState {
    start: u64,
    end: u64,
    free_head: [u64; LISTS],
    nonempty: u16,
    max_order: u8,
    nr_free: u64,
    reserved: u64,
    mmops_errors: u64,
}

impl PoolState {
    /// The pool's byte range `[start, end)`.
    pub(crate) const fn range(&self) -> (u64, u64) {
        (self.start, self.end)
    }
}

impl<M: PhysMem> HypPool<'_, M> {
    /// The pool's own fields now.
    pub(crate) fn state(&self) -> PoolState {
        // Destructured, so that a new field cannot be forgotten here.
        let Self {
            mem: _,
            pages: _,
            start,
            end,
            free_head,
            nonempty,
            max_order,
            nr_free,
            reserved,
            mmops_errors,
        } = *self;
        PoolState {
            start,
            end,
            free_head,
            nonempty,
            max_order,
            nr_free,
            reserved,
            mmops_errors,
        }
    }

    /// Puts back fields [`HypPool::state`] returned for this pool (the caller restores its
    /// memory and vmemmap entries).
    ///
    /// # Errors
    /// [`Error::Inval`] if `s` is another pool's (another range).
    pub(crate) fn restore_state(&mut self, s: &PoolState) -> Result<(), Error> {
        if (s.start, s.end) != (self.start, self.end) {
            return Err(Error::Inval);
        }
        let PoolState {
            start: _,
            end: _,
            free_head,
            nonempty,
            max_order,
            nr_free,
            reserved,
            mmops_errors,
        } = *s;
        self.free_head = free_head;
        self.nonempty = nonempty;
        self.max_order = max_order;
        self.nr_free = nr_free;
        self.reserved = reserved;
        self.mmops_errors = mmops_errors;
        Ok(())
    }
}
