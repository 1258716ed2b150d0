//! Resetting a machine to a snapshot instead of booting a new one: the fuzz target boots once
//! ([`crate::machine::boot_static`]), takes a [`Snapshot`] right after boot and resets the
//! machine to it after each input.
//!
//! A snapshot holds everything that a run can change:
//!
//! - **RAM** ([`crate::mem::MemSnapshot`]): a copy of every word; RAM marks the pages written
//!   since, so a reset copies back only those;
//! - **the vmemmap**: every entry of every memory page (compared, and rewritten where it
//!   differs);
//! - **the hypervisor's own state** ([`pkvm_hyp::snapshot::HypSnapshot`]): its pools' fields,
//!   the VM table (empty at a snapshot) and its handle generation, the finalised flag, the
//!   counters;
//! - **the simulator's tables**: the TLB (empty at a snapshot: it cannot be copied), the
//!   effect counters and records, the log, the guest script and the guest entries, the
//!   emulated device registers and their writes, and the harness's VM slot table.
//!
//! The page-table protocol monitor ([`crate::protocol`]) is not copied (the platform keeps it
//! private): a reset ends its window, reporting that window's violations (they belong to the
//! run before the reset), follows no table while memory is put back, and starts the next
//! window from the restored tables. So the first call after a reset is checked by the monitor,
//! where a freshly booted machine's first call is not (its monitor starts at its first check):
//! a reset machine is checked at least as strictly. What the checks keep of table pages
//! between calls needs nothing: a restored page gets a new version
//! ([`crate::mem::SimMemory::page_version`]).
//!
//! `tests/reset.rs` checks that a reset machine is indistinguishable from a freshly booted one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;

use pkvm_abi::PAGE_SHIFT;
use pkvm_abi::guest::MAX_VMS;
use pkvm_hyp::platform::GuestEntry;
use pkvm_hyp::snapshot::HypSnapshot;
use pkvm_hyp::vmemmap::{HypPage, HypUse, PageState};

use crate::machine::{Machine, SlotVm};
use crate::mem::MemSnapshot;
use crate::mmu::Tlb;
use crate::platform::{ArchEvent, SimGuestAction};

/// One vmemmap entry's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageMeta {
    refcount: u16,
    order: u8,
    host_state: PageState,
    hyp_state: PageState,
    hyp_use: HypUse,
    host_pins: u8,
    share_count: u16,
}

impl PageMeta {
    /// The fields of `p` now.
    #[must_use]
    pub fn of(p: &HypPage) -> Self {
        PageMeta {
            refcount: p.refcount(),
            order: p.order(),
            host_state: p.host_state(),
            hyp_state: p.hyp_state(),
            hyp_use: p.hyp_use(),
            host_pins: p.host_pins(),
            share_count: p.share_count(),
        }
    }

    fn store(&self, p: &HypPage) {
        p.set_refcount(self.refcount);
        p.set_order(self.order);
        p.set_host_state(self.host_state);
        if self.hyp_state == PageState::Owned {
            p.set_hyp_owned(self.hyp_use);
        } else {
            p.set_hyp_state(self.hyp_state);
        }
        p.set_host_pins(self.host_pins);
        p.set_share_count(self.share_count);
    }
}

/// A machine's state at one point ([`Machine::snapshot`]), to reset it to ([`Machine::reset`]).
#[derive(Clone, Debug)]
pub struct Snapshot {
    mem: MemSnapshot,
    vmemmap: Vec<PageMeta>,
    hyp: HypSnapshot,
    counts: [u64; 3],
    recent: Vec<ArchEvent>,
    log: Vec<String>,
    guest_script: VecDeque<SimGuestAction>,
    guest_entries: Vec<GuestEntry>,
    guest_x: Vec<[u64; 4]>,
    device_regs: BTreeMap<u64, u64>,
    device_writes: Vec<(u64, u8, u64)>,
    slots: [SlotVm; MAX_VMS],
}

/// What a [`Machine::reset`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetStats {
    /// RAM pages copied back.
    pub pages: u64,
    /// Vmemmap entries rewritten.
    pub entries: u64,
}

impl Machine<'_> {
    /// Every memory page's vmemmap entry, in address order.
    fn vmemmap_entries(&self) -> impl Iterator<Item = &HypPage> + '_ {
        let vmemmap = self.hyp.vmemmap();
        self.cfg.ram.iter().flat_map(move |&(base, size)| {
            vmemmap
                .slice(base >> PAGE_SHIFT, size >> PAGE_SHIFT)
                .expect("vmemmap entries of a RAM region")
        })
    }

    /// The vmemmap entry of every memory page, in address order (for comparisons).
    #[must_use]
    pub fn vmemmap_meta(&self) -> Vec<PageMeta> {
        self.vmemmap_entries().map(PageMeta::of).collect()
    }

    /// The machine's state now, to [`Machine::reset`] it to later. Take it between calls, with
    /// no VM alive (right after boot, typically).
    ///
    /// # Errors
    /// If a VM is alive, or the TLB holds entries (neither can be kept).
    pub fn snapshot(&self) -> Result<Snapshot, String> {
        if !self.plat.tlb.lock().unwrap().is_empty() {
            return Err("a snapshot needs an empty TLB".into());
        }
        let hyp = self
            .hyp
            .snapshot()
            .map_err(|e| format!("hypervisor snapshot: {e:?} (a VM is alive)"))?;
        let p = self.plat;
        let c = &p.counts;
        Ok(Snapshot {
            mem: p.mem.snapshot(),
            vmemmap: self.vmemmap_meta(),
            hyp,
            counts: [&c.dsb, &c.isb, &c.tlbi].map(|a| a.load(Relaxed)),
            recent: p.recent.lock().unwrap().clone(),
            log: p.log.lock().unwrap().clone(),
            guest_script: p.guest_script.lock().unwrap().clone(),
            guest_entries: p.guest_entries.lock().unwrap().clone(),
            guest_x: p.guest_x.lock().unwrap().clone(),
            device_regs: p.device_regs.lock().unwrap().clone(),
            device_writes: p.device_writes.lock().unwrap().clone(),
            slots: *self.vms.lock().unwrap(),
        })
    }

    /// Puts the machine back to `s`, a snapshot of this machine: afterwards it behaves as it
    /// did when `s` was taken (see the [module documentation](self) for the protocol monitor).
    /// Not to be called while another thread uses the machine.
    ///
    /// # Errors
    /// The protocol monitor's violations in the window the reset ends (the machine is reset
    /// all the same), or a snapshot of another machine.
    pub fn reset(&self, s: &Snapshot) -> Result<ResetStats, String> {
        let p = self.plat;
        // End the monitor's window and follow no table while memory is put back behind its
        // back; then follow the restored tables.
        let ended = p.protocol_sync(&[]);
        self.hyp
            .restore(&s.hyp)
            .map_err(|e| format!("hypervisor restore: {e:?} (a snapshot of another machine?)"))?;
        let pages = p.mem.restore(&s.mem);
        let mut entries = 0;
        let mut saved = s.vmemmap.iter();
        for e in self.vmemmap_entries() {
            let want = saved.next().ok_or("a snapshot of another machine")?;
            if PageMeta::of(e) != *want {
                want.store(e);
                entries += 1;
            }
        }
        *p.tlb.lock().unwrap() = Tlb::new(p.mem.handle());
        for (a, &v) in [&p.counts.dsb, &p.counts.isb, &p.counts.tlbi]
            .into_iter()
            .zip(&s.counts)
        {
            a.store(v, Relaxed);
        }
        restore(&p.recent, &s.recent);
        restore(&p.log, &s.log);
        restore(&p.guest_script, &s.guest_script);
        restore(&p.guest_entries, &s.guest_entries);
        restore(&p.guest_x, &s.guest_x);
        p.cleaned.lock().unwrap().clear();
        *p.last_sync.lock().unwrap() = (0, 0, 0);
        restore(&p.device_regs, &s.device_regs);
        restore(&p.device_writes, &s.device_writes);
        *self.vms.lock().unwrap() = s.slots;
        let started = self.check_protocol();
        ended
            .and(started)
            .map_err(|e| format!("protocol monitor, in the window the reset ended: {e}"))?;
        Ok(ResetStats { pages, entries })
    }
}

fn restore<T: Clone>(now: &Mutex<T>, saved: &T) {
    now.lock().unwrap().clone_from(saved);
}
