//! The simulator's [`Platform`]: simulated RAM, a recorded stream of barriers and TLB
//! maintenance, and a TLB model that the maintenance acts on.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use pkvm_hyp::platform::{PhysMem, Platform};

use crate::mem::SimMemory;
use crate::mmu::{Regime, Tlb};

/// One architectural effect the hypervisor asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchEvent {
    /// `dsb ishst`.
    DsbIshst,
    /// `dsb ish`.
    DsbIsh,
    /// `isb`.
    Isb,
    /// TLBI by VA at EL2.
    TlbiEl2Va {
        /// Address.
        va: u64,
        /// TTL hint.
        level: u8,
        /// Last-level-only variant.
        last_level_only: bool,
    },
    /// TLBI by IPA for a VMID.
    TlbiS2Ipa {
        /// VMID.
        vmid: u16,
        /// Address.
        ipa: u64,
        /// TTL hint.
        level: u8,
    },
    /// TLBI of a whole VMID.
    TlbiVmid(u16),
    /// TLBI of every EL2 entry.
    TlbiEl2All,
}

/// Counters of architectural effects.
#[derive(Debug, Default)]
pub struct ArchCounts {
    /// DSBs of either kind.
    pub dsb: AtomicU64,
    /// ISBs.
    pub isb: AtomicU64,
    /// TLB invalidations.
    pub tlbi: AtomicU64,
}

/// The simulated platform.
#[derive(Debug)]
pub struct SimPlatform {
    /// Physical memory.
    pub mem: SimMemory,
    /// The TLB shared by the simulated CPUs (TLBIs are broadcast, as with the `IS` variants).
    pub tlb: Mutex<Tlb>,
    /// Effect counters.
    pub counts: ArchCounts,
    /// The most recent effects (bounded), for tests that inspect the sequence.
    pub recent: Mutex<Vec<ArchEvent>>,
    /// Lines the hypervisor logged.
    pub log: Mutex<Vec<String>>,
}

const RECENT_MAX: usize = 4096;

impl SimPlatform {
    /// A platform with RAM regions `(base, size)`.
    #[must_use]
    pub fn new(ram: &[(u64, u64)]) -> Self {
        SimPlatform {
            mem: SimMemory::new(ram),
            tlb: Mutex::new(Tlb::default()),
            counts: ArchCounts::default(),
            recent: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
        }
    }

    fn record(&self, e: ArchEvent) {
        let mut r = self.recent.lock().unwrap();
        if r.len() >= RECENT_MAX {
            r.drain(..RECENT_MAX / 2);
        }
        r.push(e);
    }

    /// Takes the recorded effects.
    pub fn take_events(&self) -> Vec<ArchEvent> {
        std::mem::take(&mut *self.recent.lock().unwrap())
    }
}

impl PhysMem for SimPlatform {
    fn read_u64(&self, pa: u64) -> u64 {
        self.mem.read_u64(pa)
    }

    fn write_u64(&self, pa: u64, val: u64) {
        self.mem.write_u64(pa, val);
    }

    fn zero(&self, pa: u64, len: u64) {
        self.mem.zero(pa, len);
    }
}

impl Platform for SimPlatform {
    fn dsb_ishst(&self) {
        self.counts.dsb.fetch_add(1, Ordering::Relaxed);
        self.record(ArchEvent::DsbIshst);
    }

    fn dsb_ish(&self) {
        self.counts.dsb.fetch_add(1, Ordering::Relaxed);
        self.record(ArchEvent::DsbIsh);
    }

    fn isb(&self) {
        self.counts.isb.fetch_add(1, Ordering::Relaxed);
        self.record(ArchEvent::Isb);
    }

    fn tlbi_el2_va(&self, va: u64, level: u8, last_level_only: bool) {
        self.counts.tlbi.fetch_add(1, Ordering::Relaxed);
        self.record(ArchEvent::TlbiEl2Va {
            va,
            level,
            last_level_only,
        });
        self.tlb.lock().unwrap().invalidate_addr(Regime::El2, va);
    }

    fn tlbi_s2_ipa(&self, vmid: u16, ipa: u64, level: u8) {
        self.counts.tlbi.fetch_add(1, Ordering::Relaxed);
        self.record(ArchEvent::TlbiS2Ipa { vmid, ipa, level });
        self.tlb
            .lock()
            .unwrap()
            .invalidate_addr(Regime::Stage2(vmid), ipa);
    }

    fn tlbi_vmid(&self, vmid: u16) {
        self.counts.tlbi.fetch_add(1, Ordering::Relaxed);
        self.record(ArchEvent::TlbiVmid(vmid));
        self.tlb
            .lock()
            .unwrap()
            .invalidate_regime(Regime::Stage2(vmid));
    }

    fn tlbi_el2_all(&self) {
        self.counts.tlbi.fetch_add(1, Ordering::Relaxed);
        self.record(ArchEvent::TlbiEl2All);
        self.tlb.lock().unwrap().invalidate_regime(Regime::El2);
    }

    fn log(&self, args: std::fmt::Arguments<'_>) {
        self.log.lock().unwrap().push(args.to_string());
    }
}
