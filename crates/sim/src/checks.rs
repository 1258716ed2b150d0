//! The abstraction function (the concrete state read back into the spec's terms) and the
//! structural invariants the spec does not express, checked after every simulated call.

use pkvm_abi::{PAGE_SHIFT, PAGE_SIZE};
use pkvm_arch::addr::Pfn;
use pkvm_hyp::devices::DeviceKind;
use pkvm_hyp::platform::PhysMem;
use pkvm_hyp::vmemmap::{HypUse, PageState};
use pkvm_spec::{AbsState, HypProt, Page, State, Use, Vm};

use std::collections::BTreeMap;

use crate::machine::{Machine, start_level};
use crate::mmu::{self, Regime};

/// The software bit EL2 sets in a guest stage-2 leaf of a page the host shared (bit 55).
const GUEST_SHARED_BORROWED_BIT: u64 = 1 << 55;

impl Machine<'_> {
    fn is_hyp_memory(&self, pa: u64) -> bool {
        pa >= self.carveout.0 && pa < self.carveout.1
    }

    /// Reads the concrete state (vmemmap + EL2 stage-1) back into the spec's terms.
    ///
    /// # Errors
    /// A description of a concrete state the spec cannot even express (an EL2 mapping of host
    /// memory at VA != PA, or with the wrong permissions, or a state encoding that is invalid).
    pub fn abstract_state(&self) -> Result<AbsState, String> {
        let conv = |s: PageState| match s {
            PageState::Owned => State::Owned,
            PageState::SharedOwned => State::SharedOwned,
            PageState::SharedBorrowed => State::SharedBorrowed,
            PageState::NoPage => State::NoPage,
        };
        let mut pages = BTreeMap::new();
        for &(base, size) in &self.cfg.ram {
            for pfn in base >> PAGE_SHIFT..(base + size) >> PAGE_SHIFT {
                let e = self
                    .hyp
                    .vmemmap()
                    .get(pfn)
                    .ok_or_else(|| format!("no vmemmap entry for pfn {pfn:#x}"))?;
                let hyp_mem = self.is_hyp_memory(pfn << PAGE_SHIFT);
                let p = Page {
                    host: conv(e.host_state()),
                    hyp: conv(e.hyp_state()),
                    shares: e.share_count(),
                    host_pins: e.host_pins(),
                    hyp_use: match e.hyp_use() {
                        HypUse::None => Use::None,
                        HypUse::Own => Use::Own,
                        HypUse::Idle => Use::Idle,
                        HypUse::Vm => Use::Vm,
                    },
                    // For EL2's own pages, and pages donated to it (a guest's memcache is
                    // a buddy pool), the refcount is the pool's, not a pin count.
                    pins: if hyp_mem
                        || (e.host_state() == PageState::NoPage
                            && e.hyp_state() == PageState::Owned)
                    {
                        0
                    } else {
                        e.refcount()
                    },
                };
                let boot = if hyp_mem {
                    Page::HYP_OWNED
                } else {
                    Page::HOST_OWNED
                };
                if p != boot {
                    pages.insert(pfn, p);
                }
            }
        }
        let mut hyp_maps = BTreeMap::new();
        let mut bad = None;
        mmu::for_each_leaf(&self.plat.mem, self.hyp.hyp_pgd(), 0, |va, desc, level| {
            let size = 1u64 << mmu::level_shift(level);
            let oa = desc & 0x0000_FFFF_FFFF_F000 & !(size - 1);
            for off in (0..size).step_by(PAGE_SIZE as usize) {
                let pa = oa + off;
                if self.is_hyp_memory(pa) || !self.plat.mem.is_ram(pa) {
                    continue;
                }
                let t =
                    mmu::walk(&self.plat.mem, Regime::El2, self.hyp.hyp_pgd(), 0, va + off).ok();
                match t {
                    Some(t) if va + off == pa && t.read && t.write && !t.exec && !t.device => {
                        hyp_maps.insert(pa >> PAGE_SHIFT, HypProt::ReadWrite);
                    }
                    _ => {
                        bad = Some(format!(
                            "EL2 maps host page {pa:#x} at {:#x} as {t:?}",
                            va + off
                        ))
                    }
                }
            }
        });
        if let Some(b) = bad {
            return Err(b);
        }
        let vms = self.abstract_vms()?;
        Ok(AbsState {
            pages,
            hyp_maps,
            vms,
        })
    }

    /// The VMs in the spec's terms: what EL2 pins and owns for each, and the host pages each
    /// guest stage-2 maps (read with the simulator's own walker).
    fn abstract_vms(&self) -> Result<BTreeMap<usize, Vm>, String> {
        let range = |(pfn, nr): (Pfn, u64)| (pfn.get(), pfn.get() + nr);
        let mut vms = BTreeMap::new();
        for (slot, s) in self.hyp.vm_snapshots().into_iter().enumerate() {
            let Some(s) = s else { continue };
            let mut guest = BTreeMap::new();
            let mut bad = None;
            let root = s.vttbr.root();
            // A guest stage-2 has the host stage-2's geometry (one VTCR_EL2 for both); its
            // IPA size only bounds what may be shared into it.
            let sl = start_level(self.cfg.pa_bits);
            mmu::for_each_leaf(&self.plat.mem, root, sl, |ipa, desc, level| {
                let size = 1u64 << mmu::level_shift(level);
                if level != 3 || desc & GUEST_SHARED_BORROWED_BIT == 0 {
                    bad = Some(format!(
                        "VM slot {slot}: guest leaf {desc:#x} at IPA {ipa:#x}, level {level}: not a page the host shared"
                    ));
                }
                let oa = desc & 0x0000_FFFF_FFFF_F000 & !(size - 1);
                for off in (0..size).step_by(PAGE_SIZE as usize) {
                    guest.insert((ipa + off) >> PAGE_SHIFT, (oa + off) >> PAGE_SHIFT);
                }
            });
            if let Some(b) = bad {
                return Err(b);
            }
            vms.insert(
                slot,
                Vm {
                    ipa_bits: s.ipa_bits,
                    desc: range(s.desc_pin),
                    memcache: range(s.memcache),
                    vcpu: s.vcpu_pins.map(|p| p.map(range)),
                    guest,
                },
            );
        }
        Ok(vms)
    }

    /// Structural invariants of the concrete state that the spec does not talk about:
    /// table-page refcounts, the host stage-2 (identity, never mapping what the host does not
    /// own, annotations exactly where it does not), and no stale TLB entry.
    ///
    /// # Errors
    /// The first violation found.
    pub fn check_invariants(&self) -> Result<(), String> {
        // Table refcounts: 1 + counted entries (valid for stage-1, non-zero for stage-2).
        for (root, stage2) in [(self.hyp.hyp_pgd(), false), (self.hyp.host_pgd(), true)] {
            let mut err = None;
            mmu::for_each_table(
                &self.plat.mem,
                root,
                start_level(if stage2 { self.cfg.pa_bits } else { 48 }),
                |table| {
                    let counted = (0..512)
                        .filter(|i| {
                            let d = self.plat.mem.read_u64(table + i * 8);
                            if stage2 { d != 0 } else { d & 1 != 0 }
                        })
                        .count() as u64;
                    let rc = self
                        .hyp
                        .vmemmap()
                        .page(table)
                        .map_or(0, |p| u64::from(p.refcount()));
                    if rc != counted + 1 && err.is_none() {
                        err = Some(format!(
                            "{} table page {table:#x}: refcount {rc}, expected 1 + {counted}",
                            if stage2 { "stage-2" } else { "stage-1" }
                        ));
                    }
                },
            );
            if let Some(e) = err {
                return Err(e);
            }
        }
        // Host stage-2 leaves.
        let mut err: Option<String> = None;
        let host_root = self.hyp.host_pgd();
        let sl = start_level(self.cfg.pa_bits);
        mmu::for_each_leaf(&self.plat.mem, host_root, sl, |ipa, desc, level| {
            let size = 1u64 << mmu::level_shift(level);
            let oa = desc & 0x0000_FFFF_FFFF_F000 & !(size - 1);
            if oa != ipa && err.is_none() {
                err = Some(format!("host stage-2 maps {ipa:#x} to {oa:#x}"));
            }
            let map = self.hyp.memory_map();
            if map.is_memory(ipa) {
                if !map.range_is_memory(ipa, ipa + size) && err.is_none() {
                    err = Some(format!("host block {ipa:#x}+{size:#x} straddles memory"));
                }
                for off in (0..size).step_by(PAGE_SIZE as usize) {
                    let p = self.hyp.vmemmap().page(ipa + off).expect("memory page");
                    if p.host_state() == PageState::NoPage && err.is_none() {
                        err = Some(format!(
                            "host stage-2 maps {:#x} which the host does not own",
                            ipa + off
                        ));
                    }
                }
            } else if (0..size)
                .step_by(PAGE_SIZE as usize)
                .any(|off| map.is_memory(ipa + off))
                && err.is_none()
            {
                err = Some(format!("host MMIO block {ipa:#x}+{size:#x} covers memory"));
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        // Every page of a device range EL2 keeps from the host carries its annotation.
        for d in &self.cfg.devices {
            let want = match d.kind {
                DeviceKind::Hidden => pkvm_hyp::mem_protect::HYP_OWNER_ID,
                DeviceKind::GicrRdBase => pkvm_hyp::mem_protect::EMULATED_MMIO_OWNER_ID,
            };
            for pa in (d.start..d.end).step_by(PAGE_SIZE as usize) {
                match mmu::walk(&self.plat.mem, Regime::Stage2(0), host_root, sl, pa) {
                    Err(f) if f.level == 3 && (f.desc >> 2) & 0xFF == u64::from(want) => {}
                    r => {
                        return Err(format!(
                            "device page {pa:#x} ({:?}) not annotated {want}: {r:?}",
                            d.kind
                        ));
                    }
                }
            }
        }
        for &(base, size) in &self.cfg.ram {
            for pa in (base..base + size).step_by(PAGE_SIZE as usize) {
                let p = self.hyp.vmemmap().page(pa).expect("memory page");
                if p.host_state() != PageState::NoPage {
                    continue;
                }
                match mmu::walk(&self.plat.mem, Regime::Stage2(0), host_root, sl, pa) {
                    Ok(t) => {
                        return Err(format!(
                            "host can reach {pa:#x} which it does not own: {t:?}"
                        ));
                    }
                    Err(f) if f.level == 3 && f.desc != 0 && (f.desc >> 2) & 0xFF != 0 => {}
                    Err(f) => {
                        return Err(format!(
                            "page {pa:#x} not owned by the host lacks its annotation: {f:?}"
                        ));
                    }
                }
            }
        }
        self.check_tlb()
    }

    /// Every cached translation must still match the tables, otherwise a TLBI was missed: a
    /// leaf entry must give what a walk gives now, a walk-cache entry must be the table
    /// descriptor a walk reads now. Before that, the page-table protocol monitor ends its
    /// window (everything since the last check) and starts the next
    /// ([`crate::protocol`]); its violations are reported first, as they name the cause of a
    /// stale entry.
    ///
    /// # Errors
    /// The protocol violations, then the stale entries.
    pub fn check_tlb(&self) -> Result<(), String> {
        let roots = self.protocol_roots();
        let mut errors: Vec<String> = self.plat.protocol_sync(&roots).err().into_iter().collect();
        let root = |regime| roots.iter().find(|r| r.regime == regime);
        let mem = &self.plat.mem;
        let tlb = self.plat.tlb.lock().unwrap();
        for (regime, ia, t) in tlb.entries() {
            let Some(r) = root(regime) else {
                errors.push(format!(
                    "TLB entry for {regime:?}, which has no table: {ia:#x} -> {t:?}"
                ));
                break;
            };
            let now = mmu::walk(mem, regime, r.pa, r.start_level, ia).ok();
            if now.map(|n| (n.pa, n.write, n.level)) != Some((t.pa, t.write, t.level)) {
                errors.push(format!(
                    "stale TLB entry {regime:?} {ia:#x} -> {t:?}, tables now say {now:?}"
                ));
                break;
            }
        }
        for (regime, level, ia, table) in tlb.walk_entries() {
            let now =
                root(regime).and_then(|r| mmu::descriptor_at(mem, r.pa, r.start_level, ia, level));
            if !now.is_some_and(|d| mmu::is_table_desc(d, level) && d & mmu::OA_MASK == table) {
                errors.push(format!(
                    "stale walk-cache entry {regime:?} L{level} {ia:#x} -> table {table:#x}, tables now hold {now:#x?} there"
                ));
                break;
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }
}
