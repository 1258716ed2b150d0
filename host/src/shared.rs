//! Memory the host shares with EL2, touched only as whole 64-bit words with volatile accesses.
//!
//! EL2 reads and writes a shared structure (a VM descriptor, a vCPU's registers and exit
//! record, its FP/SIMD state) whenever the host hands it over in a hypercall, so the host never
//! holds a Rust reference into it: a [`SharedPage`] is a page of `AtomicU64` words (no
//! `static mut`, no raw pointer), and [`Shared`] is a run of them read and written word by word
//! through [`volatile`], the one `unsafe` access. Structures made of words
//! ([`pkvm_abi::shared::Words`]: `VmDesc`, `VcpuExit`) are read and written whole, as values.

use core::sync::atomic::AtomicU64;
use pkvm_abi::PAGE_SIZE;
use pkvm_abi::shared::Words;

/// Words in a page.
pub const PAGE_WORDS: usize = PAGE_SIZE as usize / 8;

/// A page of host memory for structures shared with EL2 (zero-initialised: in `.bss`).
#[repr(C, align(4096))]
#[derive(Debug)]
pub struct SharedPage([AtomicU64; PAGE_WORDS]);

impl SharedPage {
    /// A zeroed page.
    pub const fn new() -> Self {
        SharedPage([const { AtomicU64::new(0) }; PAGE_WORDS])
    }

    /// Words `[first, first + len)` of the page.
    ///
    /// # Panics
    /// If they are not inside the page (a layout bug of the caller's constants).
    pub fn words(&self, first: usize, len: usize) -> Shared<'_> {
        Shared(&self.0[first..first + len])
    }
}

/// A run of words of a [`SharedPage`]: one structure the host shares with EL2.
#[derive(Clone, Copy, Debug)]
pub struct Shared<'a>(&'a [AtomicU64]);

impl Shared<'_> {
    /// Physical address of the first word (the host's VA == PA).
    pub fn pa(&self) -> u64 {
        self.0.as_ptr() as u64
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        8 * self.0.len() as u64
    }

    /// Word `i`.
    pub fn get(&self, i: usize) -> u64 {
        volatile(&self.0[i], None)
    }

    /// Sets word `i`.
    pub fn set(&self, i: usize, v: u64) {
        volatile(&self.0[i], Some(v));
    }

    /// The structure whose first word is word `at`, read whole.
    pub fn read<T: Words>(&self, at: usize) -> T {
        T::read_with(|i| self.get(at + i))
    }

    /// Writes the structure `v` whole from word `at` on.
    pub fn write<T: Words>(&self, at: usize, v: &T) {
        v.write_with(|i, w| self.set(at + i, w));
    }

    /// Sets every word to `v`.
    pub fn fill(&self, v: u64) {
        for i in 0..self.0.len() {
            self.set(i, v);
        }
    }
}

/// The one access to memory shared with EL2: a volatile load of one word (`write` = `None`),
/// or a volatile store of `write`'s value. Returns the word.
fn volatile(w: &AtomicU64, write: Option<u64>) -> u64 {
    let p = w.as_ptr();
    // SAFETY: `p` comes from a live `AtomicU64`, so it is valid and aligned for a `u64`, and
    // `AtomicU64` permits writes through a shared reference. In Rust, these words are only
    // ever accessed here, one whole word at a time on the host's one CPU; EL2 accesses them
    // only while the host waits in a hypercall (whose `asm!` is a compiler barrier), so no
    // access races with another. Volatile keeps the compiler from caching, merging or
    // dropping any of them.
    unsafe {
        match write {
            Some(v) => {
                p.write_volatile(v);
                v
            }
            None => p.read_volatile(),
        }
    }
}
