//! The simulator's [`Platform`]: simulated RAM, a recorded stream of barriers and TLB
//! maintenance, a TLB model that the maintenance acts on, and the page-table protocol monitor
//! ([`crate::protocol`]) that every store, barrier and TLBI is reported to.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};

use pkvm_arch::regs::Vttbr;
use pkvm_hyp::hyp::LockState;
use pkvm_hyp::platform::{ArchOps, GuestEntry, PhysMem, Platform};

pub use crate::guest::{PauseGate, SimGuestAction};

use crate::mem::SimMemory;
use crate::mmu::{Regime, Tlb};
use crate::protocol::{Effect, Event, Monitor, Root, Stats};

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
    /// What the simulated guest does on its next runs (front first); when empty it calls
    /// PSCI SYSTEM_OFF.
    pub guest_script: Mutex<std::collections::VecDeque<SimGuestAction>>,
    /// Every guest entry the world switch was asked for.
    pub guest_entries: Mutex<Vec<GuestEntry>>,
    /// The vCPU's `x0..x3` at each guest entry (after a guest call EL2 answered: its results).
    pub guest_x: Mutex<Vec<[u64; 4]>>,
    /// The virtual CPU interface each guest entry loaded (`None`: left off).
    pub guest_vgic: Mutex<Vec<Option<pkvm_hyp::platform::VgicRegs>>>,
    /// The simulated CPU's GICv3 virtual CPU interface (4 list registers, 1 active-priority
    /// register per group, unless a test changes it).
    pub vgic_info: Mutex<Option<pkvm_hyp::platform::VgicInfo>>,
    /// EL2's stage-1 root, once booted ([`SimPlatform::set_el2_root`]).
    el2_root: AtomicU64,
    /// `ESR_EL2`, `FAR_EL2`, `HPFAR_EL2` of the last synchronous guest exit (what an
    /// interrupt exit still finds there).
    pub(crate) last_sync: Mutex<(u64, u64, u64)>,
    /// Every `(pa, len)` EL2 cleaned to the point of coherency
    /// ([`Platform::clean_dcache_to_poc`]).
    pub cleaned: Mutex<Vec<(u64, u64)>>,
    /// Device registers EL2 reads and writes for the host (the emulated GIC redistributor
    /// frames): a register file by physical address; unset registers read as zero.
    pub device_regs: Mutex<std::collections::BTreeMap<u64, u64>>,
    /// Every device-register write EL2 made, in order: `(pa, size, value)`.
    pub device_writes: Mutex<Vec<(u64, u8, u64)>>,
    /// The page-table protocol monitor, and whether it is synchronised (before that, effects
    /// are not reported to it).
    monitor: Mutex<Monitor>,
    monitoring: AtomicBool,
    /// Where to ask which hypervisor locks are held ([`crate::protocol::with_lock_probe`]).
    lock_probe: Mutex<Option<LockProbe>>,
    probing: AtomicBool,
}

/// A lock probe: send it a reply channel, get the [`LockState`] back.
pub(crate) type LockProbe = mpsc::Sender<mpsc::SyncSender<LockState>>;

/// A small number naming the running thread: the simulated CPU of an effect.
fn cpu_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    thread_local!(static ID: u32 = NEXT.fetch_add(1, Ordering::Relaxed));
    ID.with(|id| *id)
}

const RECENT_MAX: usize = 4096;

impl SimPlatform {
    /// A platform with RAM regions `(base, size)`.
    #[must_use]
    pub fn new(ram: &[(u64, u64)]) -> Self {
        let mem = SimMemory::new(ram);
        let tlb = Tlb::new(mem.handle());
        SimPlatform {
            mem,
            tlb: Mutex::new(tlb),
            counts: ArchCounts::default(),
            recent: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            guest_script: Mutex::new(std::collections::VecDeque::new()),
            guest_entries: Mutex::new(Vec::new()),
            guest_x: Mutex::new(Vec::new()),
            guest_vgic: Mutex::new(Vec::new()),
            vgic_info: Mutex::new(Some(pkvm_hyp::platform::VgicInfo {
                nr_lrs: 4,
                nr_aprs: 1,
            })),
            el2_root: AtomicU64::new(0),
            last_sync: Mutex::new((0, 0, 0)),
            cleaned: Mutex::new(Vec::new()),
            device_regs: Mutex::new(std::collections::BTreeMap::new()),
            device_writes: Mutex::new(Vec::new()),
            monitor: Mutex::new(Monitor::new()),
            monitoring: AtomicBool::new(false),
            lock_probe: Mutex::new(None),
            probing: AtomicBool::new(false),
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

    /// Reports `effect` of the running CPU to the protocol monitor, if it is synchronised.
    fn observe(&self, effect: Effect) {
        if self.monitoring.load(Ordering::Acquire) {
            let ev = Event {
                cpu: cpu_id(),
                effect,
            };
            self.monitor.lock().unwrap().step(&self.mem, ev);
        }
    }

    /// The hypervisor's locks now, if a probe is installed.
    fn locks(&self) -> Option<LockState> {
        if !self.probing.load(Ordering::Acquire) {
            return None;
        }
        let probe = self.lock_probe.lock().unwrap().clone()?;
        let (tx, rx) = mpsc::sync_channel(1);
        probe.send(tx).ok()?;
        rx.recv().ok()
    }

    /// Installs (or, with `None`, removes) the lock probe.
    pub(crate) fn set_lock_probe(&self, probe: Option<LockProbe>) {
        let mut p = self.lock_probe.lock().unwrap();
        self.probing.store(probe.is_some(), Ordering::Release);
        *p = probe;
    }

    /// Starts a window of the protocol monitor from the tables at `roots` (see
    /// [`Monitor::sync`]); from now on every effect is checked. Returns the violations of the
    /// window it ends, if one was open.
    ///
    /// # Errors
    /// Those violations.
    pub fn protocol_sync(&self, roots: &[Root]) -> Result<(), String> {
        let mut m = self.monitor.lock().unwrap();
        m.sync(&self.mem, roots);
        self.monitoring.store(true, Ordering::Release);
        m.take()
    }

    /// Ends the monitor's window without re-reading the roots ([`Monitor::finish`]).
    ///
    /// # Errors
    /// The violations of the window.
    pub fn protocol_finish(&self) -> Result<(), String> {
        self.monitor.lock().unwrap().finish()
    }

    /// What the monitor has checked so far.
    #[must_use]
    pub fn protocol_stats(&self) -> Stats {
        self.monitor.lock().unwrap().stats()
    }
}

impl SimPlatform {
    /// Records EL2's stage-1 root (after boot), for [`SimPlatform::el2_translate`].
    pub fn set_el2_root(&self, root: u64) {
        self.el2_root.store(root, Ordering::Relaxed);
    }

    /// The physical address EL2's stage-1 maps `va` to, by a walk of its tables.
    ///
    /// # Panics
    /// If it maps nothing there: EL2 touched an address it did not map (an EL2 bug the
    /// simulator reports, where the real CPU would take a data abort at EL2).
    fn el2_translate(&self, va: u64) -> u64 {
        let root = self.el2_root.load(Ordering::Relaxed);
        match crate::mmu::walk(&self.mem, Regime::El2, root, 0, va) {
            Ok(t) if t.write => t.pa | (va & (pkvm_abi::PAGE_SIZE - 1)),
            r => panic!("EL2 wrote {va:#x}, which its stage-1 does not map writable: {r:?}"),
        }
    }

    /// `tlbi ipas2e1is` (+ `vmalle1is`) with `vmid` in `VTTBR_EL2`.
    fn s2_tlbi_ipa(&self, vmid: u16, ipa: u64, level: u8) {
        self.counts.tlbi.fetch_add(1, Ordering::Relaxed);
        self.record(ArchEvent::TlbiS2Ipa { vmid, ipa, level });
        self.tlb
            .lock()
            .unwrap()
            .invalidate_va(Regime::Stage2(vmid), ipa, level, false);
        self.observe(Effect::TlbiS2 { ipa, ttl: level });
    }

    /// `tlbi vmalls12e1is` with `vmid` in `VTTBR_EL2`.
    fn s2_tlbi_vmid(&self, vmid: u16) {
        self.counts.tlbi.fetch_add(1, Ordering::Relaxed);
        self.record(ArchEvent::TlbiVmid(vmid));
        self.tlb
            .lock()
            .unwrap()
            .invalidate_regime(Regime::Stage2(vmid));
        self.observe(Effect::TlbiS2All);
    }

    /// Runs `tlbi` with the guest's `vttbr` loaded, as EL2 does: load it, `ISB`, the TLBI,
    /// `DSB ISH` (completing it), the host's back, `ISB`. The barriers are the platform's own:
    /// only the monitor sees them, not [`SimPlatform::recent`] or the counts.
    fn with_guest_vttbr(&self, vttbr: Vttbr, tlbi: impl FnOnce()) {
        self.observe(Effect::LoadVttbr(vttbr));
        self.observe(Effect::Isb);
        tlbi();
        self.observe(Effect::DsbIsh);
        self.observe(Effect::RestoreVttbr);
        self.observe(Effect::Isb);
    }
}

/// Every store is reported to the protocol monitor (once it is synchronised) with the value it
/// replaced; a `zero` as the stores that change a word.
impl PhysMem for SimPlatform {
    fn read_u64(&self, pa: u64) -> u64 {
        self.mem.read_u64(pa)
    }

    fn write_u64(&self, pa: u64, val: u64) {
        if !self.monitoring.load(Ordering::Acquire) {
            self.mem.write_u64(pa, val);
            return;
        }
        let locks = self.locks();
        let old = self.mem.swap(pa, val);
        self.observe(Effect::Write {
            pa,
            old,
            new: val,
            locks,
        });
    }

    fn zero(&self, pa: u64, len: u64) {
        // EL2's window (`pkvm_hyp::mm::HYP_WINDOW_SLOT`): a virtual address, translated
        // through EL2's stage-1 as the CPU would (a page EL2 did not map there is an EL2 bug).
        let pa = if self.mem.is_ram(pa) {
            pa
        } else {
            self.el2_translate(pa)
        };
        if !self.monitoring.load(Ordering::Acquire) {
            self.mem.zero(pa, len);
            return;
        }
        let locks = self.locks();
        for a in (pa..pa + len).step_by(8) {
            let old = self.mem.swap(a, 0);
            if old != 0 {
                self.observe(Effect::Write {
                    pa: a,
                    old,
                    new: 0,
                    locks,
                });
            }
        }
    }
}

impl Platform for SimPlatform {
    fn tlbi_guest_s2_ipa(&self, vttbr: Vttbr, ipa: u64, level: u8) {
        self.with_guest_vttbr(vttbr, || self.s2_tlbi_ipa(vttbr.vmid(), ipa, level));
    }

    fn tlbi_guest_vmid(&self, vttbr: Vttbr) {
        self.with_guest_vttbr(vttbr, || self.s2_tlbi_vmid(vttbr.vmid()));
    }

    fn mmio_read(&self, pa: u64, size: u8) -> u64 {
        let v = self
            .device_regs
            .lock()
            .unwrap()
            .get(&pa)
            .copied()
            .unwrap_or(0);
        if size >= 8 { v } else { v & 0xffff_ffff }
    }

    fn mmio_write(&self, pa: u64, size: u8, val: u64) {
        let val = if size >= 8 { val } else { val & 0xffff_ffff };
        self.device_regs.lock().unwrap().insert(pa, val);
        self.device_writes.lock().unwrap().push((pa, size, val));
    }

    fn log(&self, args: std::fmt::Arguments<'_>) {
        self.log.lock().unwrap().push(args.to_string());
    }

    fn pstate_features(&self) -> pkvm_arch::exception::PstateFeatures {
        // The simulated CPU has FEAT_PAN (so a test sees PAN set at an injected vector when
        // the guest's SCTLR_EL1.SPAN is 0), none of the others.
        pkvm_arch::exception::PstateFeatures {
            pan: true,
            ..Default::default()
        }
    }

    fn clean_dcache_to_poc(&self, va: u64, len: u64) {
        // No cache to clean: recorded (by physical address, the window translated), so that
        // tests can check every page EL2 zeroed for the host was cleaned.
        let pa = if self.mem.is_ram(va) {
            va
        } else {
            self.el2_translate(va)
        };
        self.cleaned.lock().unwrap().push((pa, len));
    }
}

impl ArchOps for SimPlatform {
    fn dsb_ishst(&self) {
        self.counts.dsb.fetch_add(1, Ordering::Relaxed);
        self.record(ArchEvent::DsbIshst);
        self.observe(Effect::DsbIshst);
    }

    fn dsb_ish(&self) {
        self.counts.dsb.fetch_add(1, Ordering::Relaxed);
        self.record(ArchEvent::DsbIsh);
        self.observe(Effect::DsbIsh);
    }

    fn isb(&self) {
        self.counts.isb.fetch_add(1, Ordering::Relaxed);
        self.record(ArchEvent::Isb);
        self.observe(Effect::Isb);
    }

    fn tlbi_el2_va(&self, va: u64, level: u8, last_level_only: bool) {
        self.counts.tlbi.fetch_add(1, Ordering::Relaxed);
        self.record(ArchEvent::TlbiEl2Va {
            va,
            level,
            last_level_only,
        });
        self.tlb
            .lock()
            .unwrap()
            .invalidate_va(Regime::El2, va, level, last_level_only);
        self.observe(Effect::TlbiEl2 {
            va,
            ttl: level,
            last_level_only,
        });
    }

    // As at EL2, the platform's own stage-2 TLBIs act on the VMID loaded in `VTTBR_EL2`,
    // which is the host's whenever EL2 runs for the host: a guest table handed the platform
    // instead of its `GuestArch` would invalidate the wrong VMID on hardware, so it fails here.
    fn tlbi_s2_ipa(&self, vmid: u16, ipa: u64, level: u8) {
        assert_eq!(
            vmid, 0,
            "stage-2 TLBI for VMID {vmid} without its VTTBR loaded"
        );
        self.s2_tlbi_ipa(0, ipa, level);
    }

    fn tlbi_vmid(&self, vmid: u16) {
        assert_eq!(
            vmid, 0,
            "stage-2 TLBI for VMID {vmid} without its VTTBR loaded"
        );
        self.s2_tlbi_vmid(0);
    }

    fn tlbi_el2_all(&self) {
        self.counts.tlbi.fetch_add(1, Ordering::Relaxed);
        self.record(ArchEvent::TlbiEl2All);
        self.tlb.lock().unwrap().invalidate_regime(Regime::El2);
        self.observe(Effect::TlbiEl2All);
    }
}
