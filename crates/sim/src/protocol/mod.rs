//! The page-table protocol checker: a monitor of what the hypervisor does to live page tables,
//! in the style of casemate (a runtime checker of how pKVM uses its page tables, run alongside
//! it on a trace of its stores, barriers, TLBIs and locks), fed by the simulator's platform.
//!
//! The platform ([`crate::platform::SimPlatform`]) reports every effect as it happens: each
//! 64-bit store to physical memory (with the value it replaced and, when a probe is installed,
//! which hypervisor locks were held), `DSB`s and `ISB`s, TLBIs, and the `VTTBR_EL2` loads around a
//! guest's TLBIs. The [`Monitor`] knows which pages are tables of a live table (it walks the roots
//! when it is synchronised, then follows every table descriptor written or removed) and checks
//! each event against the rules below.
//!
//! Checking is by *windows*. Nothing is checked before the first [`Machine::check_protocol`]
//! (boot, and whatever a test runs before its first check); each later one ends the window:
//! the end-of-call rules are checked, the tables the monitor followed are compared with memory,
//! and the roots are read again (a guest created in a window is followed from the next one on;
//! a guest whose stage-2 is empty when its VMID is invalidated as a whole, a teardown, stops
//! being followed, so that its pages may be reused). `Machine::check_tlb` does this, so on the
//! checked path (`scenarios::checked`, the model test, the fuzz target) a window is one call.
//!
//! # The rules
//!
//! An *entry* is a descriptor in a live table: its regime (EL2 stage-1, or a stage-2 under a
//! VMID), level and the input-address range it covers. A valid entry that is cleared, changed,
//! or unlinked with the table holding it becomes *pending*: translations of it may be cached
//! (leaf entries, and walk caches for a table descriptor) until its invalidation completes.
//!
//! 1. **Break-before-make.** A valid entry never changes directly into a different valid entry
//!    (software bits \[58:55\] excepted): it goes invalid, then `DSB`, TLBI, `DSB ISH`, and only
//!    then may the entry be made valid again. (Stricter than the architecture, which lets some
//!    permission changes skip the break: pkvm-rs's own rule, `pkvm_pgtable` docs.)
//! 2. **No table reused before its unlink is invalidated.** A table page whose table descriptor
//!    was removed may still be read through walk caches until a TLBI that removes walk-cache
//!    entries covers that descriptor, and a `DSB ISH` completes it. Until then the page must not
//!    change (freeing it writes the pool's list node into it, reusing it writes new contents)
//!    nor be linked again. Unlinking a table whose subtree still holds valid entries leaves
//!    every one of them pending too. A table page must also not be linked twice, and must hold
//!    RAM.
//! 3. **The right TLBI.** A pending entry is invalidated only by a TLBI of its regime (for a
//!    stage-2: under its VMID, the one in `VTTBR_EL2`, which must hold that VMID's real root),
//!    covering an address in its range, with a level hint (TTL) that is 0 or the entry's level
//!    — and for a table descriptor, hint 0 and not the last-level-only form (`VALE2IS`), or a
//!    TLBI of the whole regime.
//! 4. **DSBs around the TLBI.** A TLBI counts only if a `DSB` made the clearing write visible
//!    first; the invalidation is complete only at the next `DSB ISH` (a `DSB ISHST` does not
//!    wait for TLBIs). When a call returns, nothing is pending, every valid descriptor it wrote
//!    was made visible by a `DSB`, and the host's `VTTBR_EL2` is back.
//! 5. **Publication.** A new table's contents are made visible by a `DSB` before the table is
//!    linked.
//! 6. **Locks.** A table is written only with its owner's lock held: the host's stage-2 under
//!    the host lock, EL2's stage-1 under the hyp lock, a guest's under the VM table's lock
//!    (checked when a lock probe is installed, [`with_lock_probe`]).
//! 7. **Hand-over.** Memory a pending leaf maps is mapped by no other regime until that leaf's
//!    invalidation completes: a page taken from a guest (or the host, or EL2) may still be
//!    reached through its TLB until then, so giving it to anyone else — or mapping it in EL2's
//!    window to zero it — must wait for the `DSB ISH` after the TLBI.
//!
//! Barriers and pending entries are per simulated CPU (thread): a `DSB` completes only what the
//! CPU that issues it started, and a CPU must invalidate what it cleared itself (the hypervisor
//! always does; the architecture would also accept another CPU's broadcast TLBI).
//!
//! Not checked: `ISB`s (recorded, but the simulator's EL2 never translates through its own
//! stage-1 within a call, and the exception return is context synchronising), and what the
//! hypervisor reads.
//!
//! The checker is split by concern: `pending.rs` (what a removed entry waits for and
//! which TLBI covers it), the [`Monitor`] (`monitor.rs`: the rules, event by event), and here
//! the events, the lock probe and the machine's roots.

use pkvm_arch::regs::Vttbr;
use pkvm_hyp::hyp::LockState;
use pkvm_hyp::platform::PhysMem;

use crate::machine::{Machine, start_level};
use crate::mem::SimMemory;
use crate::mmu::{OA_MASK, Regime, is_table_desc};

mod monitor;
mod pending;

pub use monitor::Monitor;
use pending::granule;

/// Software bits of a descriptor (\[58:55\]): hardware ignores them, so they may change without
/// break-before-make.
const SW_BITS: u64 = 0xf << 55;

/// A table the monitor starts from: `pa` is a root of `regime` at `start_level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Root {
    /// The regime the table translates for.
    pub regime: Regime,
    /// Physical address of the root table.
    pub pa: u64,
    /// Level of the root table.
    pub start_level: u8,
}

/// One effect of a simulated CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// A 64-bit store at `pa` replacing `old` by `new`; `locks`: the hypervisor's locks at the
    /// time, if a probe was installed.
    Write {
        /// Physical address.
        pa: u64,
        /// The value replaced.
        old: u64,
        /// The value stored.
        new: u64,
        /// The locks held.
        locks: Option<LockState>,
    },
    /// `DSB ISHST`.
    DsbIshst,
    /// `DSB ISH`.
    DsbIsh,
    /// `ISB`.
    Isb,
    /// `TLBI VAE2IS` (or `VALE2IS` with `last_level_only`) with level hint `ttl` (0: none).
    TlbiEl2 {
        /// Virtual address.
        va: u64,
        /// Level hint.
        ttl: u8,
        /// The last-level-only form.
        last_level_only: bool,
    },
    /// `TLBI ALLE2IS`.
    TlbiEl2All,
    /// `TLBI IPAS2E1IS` (+ `VMALLE1IS`) with level hint `ttl`, for the VMID in `VTTBR_EL2`.
    TlbiS2 {
        /// Intermediate physical address.
        ipa: u64,
        /// Level hint.
        ttl: u8,
    },
    /// `TLBI VMALLS12E1IS`, for the VMID in `VTTBR_EL2`.
    TlbiS2All,
    /// A guest's `VTTBR_EL2` loaded (for TLB maintenance under its VMID).
    LoadVttbr(Vttbr),
    /// The host's `VTTBR_EL2` restored.
    RestoreVttbr,
}

/// An effect and the simulated CPU that had it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The CPU (a small number per thread).
    pub cpu: u32,
    /// What it did.
    pub effect: Effect,
}

/// What the monitor has seen (for tests that must know it checked something).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Windows checked (ended by [`Monitor::finish`] after a [`Monitor::sync`]).
    pub windows: u64,
    /// Events checked.
    pub events: u64,
    /// Stores to live tables.
    pub descriptor_writes: u64,
    /// Pending entries whose invalidation completed.
    pub invalidations: u64,
    /// Violations found.
    pub violations: u64,
}

/// Calls `f(table_pa, level, first input address)` for every table page of the tables at
/// `root` (a table of `start_level`), root included.
fn for_each_table(mem: &SimMemory, root: u64, start_level: u8, mut f: impl FnMut(u64, u8, u64)) {
    fn rec(mem: &SimMemory, table: u64, level: u8, base: u64, f: &mut dyn FnMut(u64, u8, u64)) {
        f(table, level, base);
        if level == 3 {
            return;
        }
        for i in 0..512u64 {
            let d = mem.read_u64(table + i * 8);
            if is_table_desc(d, level) && mem.is_ram(d & OA_MASK) {
                rec(mem, d & OA_MASK, level + 1, base + i * granule(level), f);
            }
        }
    }
    rec(mem, root, start_level, 0, &mut f);
}

/// Runs `f` with a lock probe installed: every store the platform reports carries the
/// hypervisor's [`LockState`] at that moment, so rule 6 is checked.
///
/// The platform cannot hold a reference to the hypervisor that runs on it (the hypervisor
/// borrows the platform), so the probe is a helper thread, scoped to `f`, that borrows the
/// hypervisor and answers each store's question over a channel: a round trip per store, cheap
/// enough for the tests that use it.
pub fn with_lock_probe<R>(m: &Machine<'_>, f: impl FnOnce() -> R) -> R {
    use std::sync::mpsc;
    let (tx, rx) = mpsc::channel::<mpsc::SyncSender<LockState>>();
    std::thread::scope(|s| {
        let hyp = &m.hyp;
        s.spawn(move || {
            for reply in rx {
                let _ = reply.send(hyp.lock_state());
            }
        });
        /// Uninstalls the probe however `f` ends, so that the helper thread ends too.
        struct Uninstall<'p>(&'p crate::platform::SimPlatform);
        impl Drop for Uninstall<'_> {
            fn drop(&mut self) {
                self.0.set_lock_probe(None);
            }
        }
        m.plat.set_lock_probe(Some(tx));
        let _uninstall = Uninstall(m.plat);
        f()
    })
}

impl Machine<'_> {
    /// The roots of every live table: EL2's stage-1, the host's stage-2 and each guest's.
    #[must_use]
    pub fn protocol_roots(&self) -> Vec<Root> {
        let s2 = start_level(self.cfg.pa_bits);
        let mut roots = vec![
            Root {
                regime: Regime::El2,
                pa: self.hyp.hyp_pgd(),
                start_level: start_level(48),
            },
            Root {
                regime: Regime::Stage2(0),
                pa: self.hyp.host_pgd(),
                start_level: s2,
            },
        ];
        // A guest's stage-2 is configured with the host's PA size (`vm_init`).
        for vm in self.hyp.vm_snapshots().iter().flatten() {
            roots.push(Root {
                regime: Regime::Stage2(vm.vttbr.vmid()),
                pa: vm.vttbr.root(),
                start_level: s2,
            });
        }
        roots
    }

    /// Ends the protocol monitor's window (the end-of-call rules, the tables it followed
    /// compared with memory) and starts the next one from the tables as they are now. The
    /// first call only starts checking.
    ///
    /// # Errors
    /// The violations of the window.
    pub fn check_protocol(&self) -> Result<(), String> {
        self.plat.protocol_sync(&self.protocol_roots())
    }
}
