//! The abstraction function (the concrete state read back into the spec's terms) and the
//! structural invariants the spec does not express, checked after every simulated call.

use pkvm_abi::{PAGE_SHIFT, PAGE_SIZE};
use pkvm_arch::addr::Pfn;
use pkvm_hyp::devices::DeviceKind;
use pkvm_hyp::vmemmap::{HypUse, PageState};
use pkvm_spec::{AbsState, HypProt, Page, State, Use, Vm};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::machine::{Machine, start_level};
use crate::mem::{PAGE_WORDS, SimMemory};
use crate::mmu::{self, Regime};

/// The software bit EL2 sets in a guest stage-2 leaf of a page the host shared (bit 55).
const GUEST_SHARED_BORROWED_BIT: u64 = 1 << 55;
/// The software bit EL2 sets in a guest stage-2 leaf of a guest's page it shares back with
/// the host (bit 56).
const GUEST_SHARED_OWNED_BIT: u64 = 1 << 56;

/// What the checks read of a table page, at one version of the page.
#[derive(Debug)]
struct TableSummary {
    /// The page's version ([`SimMemory::page_version`]) when it was read.
    version: u64,
    /// `(index, descriptor)` of every valid descriptor, in order.
    valid: Vec<(u64, u64)>,
    /// How many descriptors are non-zero.
    nonzero: u64,
}

/// The table pages the checks read, kept from one check to the next while the page does not
/// change (its version stays the same): a check reads again only the tables the call wrote.
#[derive(Debug, Default)]
pub(crate) struct TableCache {
    pages: HashMap<u64, Arc<TableSummary>>,
}

impl TableCache {
    /// The table page at `table`, read now or when it last changed.
    ///
    /// # Errors
    /// If it is not a page of RAM.
    fn get(&mut self, mem: &SimMemory, table: u64) -> Result<Arc<TableSummary>, String> {
        let not_ram = || format!("table at {table:#x}, which is not a page of RAM");
        let version = mem.page_version(table).ok_or_else(not_ram)?;
        if let Some(s) = self.pages.get(&table)
            && s.version == version
        {
            return Ok(Arc::clone(s));
        }
        // The version first, then the words: a store after the version was read gives the
        // page a new version, so this summary is never taken for newer contents.
        let words: &[AtomicU64; PAGE_WORDS] = mem.page_words(table).ok_or_else(not_ram)?;
        let mut valid = Vec::new();
        let mut nonzero = 0;
        for (i, w) in (0u64..).zip(words) {
            let d = w.load(Relaxed);
            if d != 0 {
                nonzero += 1;
                if d & 1 != 0 {
                    valid.push((i, d));
                }
            }
        }
        let s = Arc::new(TableSummary {
            version,
            valid,
            nonzero,
        });
        self.pages.insert(table, Arc::clone(&s));
        Ok(s)
    }
}

/// A valid leaf descriptor found by [`walk_tables`].
#[derive(Clone, Copy, Debug)]
struct Leaf {
    /// First input address it maps.
    ia: u64,
    /// The descriptor.
    desc: u64,
    /// Its level.
    level: u8,
    /// The table holding it: a walk for an address in the leaf's range started from this
    /// table at `level` reads what a walk from the root reads there (the descriptors above it
    /// are the table descriptors that led here), so it gives the same translation.
    table: u64,
}

impl Leaf {
    fn size(&self) -> u64 {
        1 << mmu::level_shift(self.level)
    }

    /// The output address of the leaf's first byte.
    fn oa(&self) -> u64 {
        self.desc & mmu::OA_MASK & !(self.size() - 1)
    }
}

type OnTable<'f> = dyn FnMut(u64, &TableSummary) -> Result<(), String> + 'f;
type OnLeaf<'f> = dyn FnMut(Leaf) -> Result<(), String> + 'f;

/// Walks the tables at `root` (a table of `start_level`): `on_table(table, summary)` for every
/// table page, root included (the pages [`mmu::for_each_table`] visits), and `on_leaf` for
/// every valid leaf (those [`mmu::for_each_leaf`] visits). The checks walk every table after
/// every call, so this is their hot loop: a table page is read again only if it changed since
/// the last walk ([`TableCache`]), and one walk does what took the checks up to three.
///
/// # Errors
/// The first error of a callback, or a table page outside RAM.
fn walk_tables(
    mem: &SimMemory,
    cache: &mut TableCache,
    root: u64,
    start_level: u8,
    on_table: &mut OnTable<'_>,
    on_leaf: &mut OnLeaf<'_>,
) -> Result<(), String> {
    fn rec(
        mem: &SimMemory,
        cache: &mut TableCache,
        table: u64,
        level: u8,
        base: u64,
        on_table: &mut OnTable<'_>,
        on_leaf: &mut OnLeaf<'_>,
    ) -> Result<(), String> {
        let summary = cache.get(mem, table)?;
        on_table(table, &summary)?;
        for &(i, desc) in &summary.valid {
            let ia = base + (i << mmu::level_shift(level));
            if level < 3 && desc & 2 != 0 {
                rec(
                    mem,
                    cache,
                    desc & mmu::OA_MASK,
                    level + 1,
                    ia,
                    on_table,
                    on_leaf,
                )?;
            } else {
                on_leaf(Leaf {
                    ia,
                    desc,
                    level,
                    table,
                })?;
            }
        }
        Ok(())
    }
    rec(mem, cache, root, start_level, 0, on_table, on_leaf)
}

/// Walks of one stage-2 for many addresses in increasing order, sharing the part of the walk
/// above the level-3 table of each 2 MiB range: when the level-2 descriptor is a table
/// descriptor, the walk from that level-3 table gives what the walk from the root gives;
/// otherwise the walk starts from the root.
struct Stage2Walks<'m> {
    mem: &'m SimMemory,
    root: u64,
    start_level: u8,
    /// The last 2 MiB range asked for, and its level-3 table if the walk reaches one.
    range: Option<(u64, Option<u64>)>,
}

impl<'m> Stage2Walks<'m> {
    fn new(mem: &'m SimMemory, root: u64, start_level: u8) -> Self {
        Stage2Walks {
            mem,
            root,
            start_level,
            range: None,
        }
    }

    fn walk(&mut self, ipa: u64) -> Result<mmu::Translation, mmu::WalkFault> {
        let r = ipa >> mmu::level_shift(2);
        let l3 = match self.range {
            Some((at, l3)) if at == r => l3,
            _ => {
                let l3 = mmu::descriptor_at(self.mem, self.root, self.start_level, ipa, 2)
                    .filter(|&d| mmu::is_table_desc(d, 2))
                    .map(|d| d & mmu::OA_MASK);
                self.range = Some((r, l3));
                l3
            }
        };
        let regime = Regime::Stage2(0);
        match l3 {
            Some(t) if self.start_level <= 2 => mmu::walk(self.mem, regime, t, 3, ipa),
            _ => mmu::walk(self.mem, regime, self.root, self.start_level, ipa),
        }
    }
}

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
            let first = base >> PAGE_SHIFT;
            let entries = self
                .hyp
                .vmemmap()
                .slice(first, size >> PAGE_SHIFT)
                .ok_or_else(|| format!("no vmemmap entries for the RAM at {base:#x}"))?;
            for (pfn, e) in (first..).zip(entries) {
                let hyp_mem = self.is_hyp_memory(pfn << PAGE_SHIFT);
                // Most pages are host pages in their boot state: `p == Page::HOST_OWNED` below,
                // tested without building `p`.
                if !hyp_mem
                    && e.host_state() == PageState::Owned
                    && e.hyp_state() == PageState::NoPage
                    && e.refcount() == 0
                    && e.share_count() == 0
                    && e.host_pins() == 0
                    && e.hyp_use() == HypUse::None
                {
                    continue;
                }
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
        let hyp_root = self.hyp.hyp_pgd();
        let mut cache = self.table_cache.lock().unwrap();
        let no_table = &mut |_, _: &TableSummary| Ok(());
        walk_tables(
            &self.plat.mem,
            &mut cache,
            hyp_root,
            0,
            no_table,
            &mut |leaf| {
                let (va, oa) = (leaf.ia, leaf.oa());
                for off in (0..leaf.size()).step_by(PAGE_SIZE as usize) {
                    let pa = oa + off;
                    if self.is_hyp_memory(pa) || !self.plat.mem.is_ram(pa) {
                        continue;
                    }
                    let t = mmu::walk(
                        &self.plat.mem,
                        Regime::El2,
                        leaf.table,
                        leaf.level,
                        va + off,
                    )
                    .ok();
                    match t {
                        Some(t) if va + off == pa && t.read && t.write && !t.exec && !t.device => {
                            hyp_maps.insert(pa >> PAGE_SHIFT, HypProt::ReadWrite);
                        }
                        _ => {
                            bad = Some(format!(
                                "EL2 maps host page {pa:#x} at {:#x} as {t:?}",
                                va + off
                            ));
                        }
                    }
                }
                Ok(())
            },
        )?;
        drop(cache);
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
            let mut owned = BTreeMap::new();
            let mut bad = None;
            let root = s.vttbr.root();
            // A guest stage-2 has the host stage-2's geometry (one VTCR_EL2 for both); its
            // IPA size only bounds what may be shared into it.
            let sl = start_level(self.cfg.pa_bits);
            let mut cache = self.table_cache.lock().unwrap();
            let no_table = &mut |_, _: &TableSummary| Ok(());
            walk_tables(
                &self.plat.mem,
                &mut cache,
                root,
                sl,
                no_table,
                &mut |leaf| {
                    let Leaf {
                        ia: ipa,
                        desc,
                        level,
                        ..
                    } = leaf;
                    let sw = desc & (GUEST_SHARED_BORROWED_BIT | GUEST_SHARED_OWNED_BIT);
                    if level != 3 || sw == GUEST_SHARED_BORROWED_BIT | GUEST_SHARED_OWNED_BIT {
                        bad = Some(format!(
                            "VM slot {slot}: guest leaf {desc:#x} at IPA {ipa:#x}, level {level}: neither shared in, owned nor shared back"
                        ));
                    }
                    let (gfn, pfn) = (ipa >> PAGE_SHIFT, leaf.oa() >> PAGE_SHIFT);
                    if sw == GUEST_SHARED_BORROWED_BIT {
                        guest.insert(gfn, pfn);
                    } else {
                        owned.insert(gfn, (pfn, sw == GUEST_SHARED_OWNED_BIT));
                    }
                    Ok(())
                },
            )?;
            drop(cache);
            if let Some(b) = bad {
                return Err(b);
            }
            // Every page it owns, and does not share back, carries its annotation in the host
            // stage-2 (a shared-back page carries none: the host may map it).
            // (Computed here from the ABI's rule, 16 + VMID, not with EL2's own function.)
            let want = pkvm_hyp::vm::GUEST_OWNER_ID_BASE + s.vttbr.vmid() as u8;
            let mut walks = Stage2Walks::new(&self.plat.mem, self.hyp.host_pgd(), sl);
            for (&gfn, &(pfn, shared)) in &owned {
                let r = walks.walk(pfn << PAGE_SHIFT);
                let ok = match r {
                    Err(f) if !shared => f.level == 3 && (f.desc >> 2) & 0xFF == u64::from(want),
                    Err(f) => f.desc == 0,
                    Ok(_) => shared,
                };
                if !ok {
                    return Err(format!(
                        "VM slot {slot}: its page {pfn:#x} (gfn {gfn:#x}, shared back: {shared}) is {r:?} in the host stage-2, not annotated {want}"
                    ));
                }
            }
            if s.pages != (guest.len() + owned.len()) as u64 {
                return Err(format!(
                    "VM slot {slot}: EL2 counts {} guest pages, its stage-2 maps {}",
                    s.pages,
                    guest.len() + owned.len()
                ));
            }
            vms.insert(
                slot,
                Vm {
                    ipa_bits: s.ipa_bits,
                    desc: range(s.desc_pin),
                    memcache: range(s.memcache),
                    vcpu: s.vcpu_pins.map(|p| p.map(range)),
                    guest,
                    protected: s.protected,
                    dying: s.dying,
                    owned,
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
        let mem = &self.plat.mem;
        let vmemmap = self.hyp.vmemmap();
        let refcount = |table: u64, stage2: bool, s: &TableSummary| {
            let counted = if stage2 {
                s.nonzero
            } else {
                s.valid.len() as u64
            };
            let rc = vmemmap.page(table).map_or(0, |p| u64::from(p.refcount()));
            if rc == counted + 1 {
                Ok(())
            } else {
                Err(format!(
                    "{} table page {table:#x}: refcount {rc}, expected 1 + {counted}",
                    if stage2 { "stage-2" } else { "stage-1" }
                ))
            }
        };
        let mut cache = self.table_cache.lock().unwrap();
        walk_tables(
            mem,
            &mut cache,
            self.hyp.hyp_pgd(),
            start_level(48),
            &mut |table, s| refcount(table, false, s),
            &mut |_| Ok(()),
        )?;
        // Host stage-2: refcounts, and leaves (identity, never mapping what the host does
        // not own, no MMIO block over memory).
        let host_root = self.hyp.host_pgd();
        let sl = start_level(self.cfg.pa_bits);
        let map = self.hyp.memory_map();
        walk_tables(
            mem,
            &mut cache,
            host_root,
            sl,
            &mut |table, s| refcount(table, true, s),
            &mut |leaf| {
                let (ipa, size, oa) = (leaf.ia, leaf.size(), leaf.oa());
                if oa != ipa {
                    return Err(format!("host stage-2 maps {ipa:#x} to {oa:#x}"));
                }
                if map.is_memory(ipa) {
                    if !map.range_is_memory(ipa, ipa + size) {
                        return Err(format!("host block {ipa:#x}+{size:#x} straddles memory"));
                    }
                    let pages = vmemmap
                        .slice(ipa >> PAGE_SHIFT, size >> PAGE_SHIFT)
                        .ok_or_else(|| format!("no vmemmap entries for {ipa:#x}+{size:#x}"))?;
                    if let Some(off) = pages
                        .iter()
                        .position(|p| p.host_state() == PageState::NoPage)
                    {
                        return Err(format!(
                            "host stage-2 maps {:#x} which the host does not own",
                            ipa + ((off as u64) << PAGE_SHIFT)
                        ));
                    }
                } else if map
                    .regions()
                    .iter()
                    .any(|r| r.base < ipa + size && ipa < r.end())
                {
                    // (Regions are page aligned: a region overlaps the block iff one of the
                    // block's pages is memory.)
                    return Err(format!("host MMIO block {ipa:#x}+{size:#x} covers memory"));
                }
                Ok(())
            },
        )?;
        drop(cache);
        // Every page of a device range EL2 keeps from the host carries its annotation.
        for d in &self.cfg.devices {
            let want = match d.kind {
                DeviceKind::Hidden => pkvm_hyp::mem_protect::HYP_OWNER_ID,
                DeviceKind::GicrRdBase => pkvm_hyp::mem_protect::EMULATED_MMIO_OWNER_ID,
            };
            let mut walks = Stage2Walks::new(mem, host_root, sl);
            for pa in (d.start..d.end).step_by(PAGE_SIZE as usize) {
                match walks.walk(pa) {
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
        let mut walks = Stage2Walks::new(mem, host_root, sl);
        for &(base, size) in &self.cfg.ram {
            let pages = vmemmap
                .slice(base >> PAGE_SHIFT, size >> PAGE_SHIFT)
                .ok_or_else(|| format!("no vmemmap entries for the RAM at {base:#x}"))?;
            for (pa, p) in (base..).step_by(PAGE_SIZE as usize).zip(pages) {
                if p.host_state() != PageState::NoPage {
                    continue;
                }
                match walks.walk(pa) {
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
