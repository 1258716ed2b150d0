//! Test support: an arena MmOps with refcounts and a leak check, a recording ArchOps, a
//! break-before-make / TLB-maintenance checker, an independent structure checker and an
//! interval model of the expected mappings.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use pkvm_pgtable::desc::{self, granule, is_table, is_valid};
use pkvm_pgtable::{ArchOps, Format, MmOps, PageTable, Prot};

/// A cheap hasher for page addresses (the default SipHash dominates the test run time).
#[derive(Default, Clone, Copy)]
pub struct PageHasher(u64);

impl std::hash::Hasher for PageHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (x ^ (x >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<PageHasher>>;

/// Table pages are allocated upwards from here (inside the 48-bit output space).
pub const TABLE_BASE: u64 = 0x0000_7000_0000_0000;

/// Everything the code under test did, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Write { pa: u64, old: u64, new: u64 },
    Alloc(u64),
    Free(u64),
    DsbIshst,
    DsbIsh,
    Isb,
    TlbiVa { va: u64, level: u8, last: bool },
    TlbiIpa { vmid: u16, ipa: u64, level: u8 },
    TlbiVmid(u16),
    TlbiEl2All,
}

pub type Log = Rc<RefCell<Vec<Event>>>;

/// Pages with their contents, counts, allocation and free counters.
pub type Snapshot = (Vec<(u64, Vec<u64>)>, Vec<(u64, u32)>, u64, u64);

/// Table pages in a map, with counts. Freed pages are never reused and any access to a page
/// that is not allocated panics, which catches use-after-free.
#[derive(Debug, Default)]
pub struct TestMm {
    pub pages: FastMap<u64, Box<[u64; 512]>>,
    pub counts: FastMap<u64, u32>,
    next: u64,
    pub allocs: u64,
    pub frees: u64,
    /// Allocations still allowed (None = unlimited).
    pub budget: Option<u64>,
    pub log: Option<Log>,
    /// Descriptor reads so far (what a walk costs).
    pub reads: std::cell::Cell<u64>,
}

impl TestMm {
    pub fn new() -> Self {
        TestMm {
            next: TABLE_BASE,
            ..Default::default()
        }
    }

    pub fn with_log(log: &Log) -> Self {
        TestMm {
            log: Some(log.clone()),
            ..Self::new()
        }
    }

    fn page(pa: u64) -> u64 {
        pa & !0xfff
    }

    fn record(&self, e: Event) {
        if let Some(l) = &self.log {
            l.borrow_mut().push(e);
        }
    }

    /// The 512 entries of an allocated table page.
    pub fn table(&self, page: u64) -> &[u64; 512] {
        self.pages
            .get(&page)
            .unwrap_or_else(|| panic!("table page {page:#x} not allocated"))
    }

    /// Pages currently allocated.
    pub fn live(&self) -> usize {
        self.pages.len()
    }

    /// A copy of all state that an operation may change.
    pub fn snapshot(&self) -> Snapshot {
        let mut p: Vec<_> = self.pages.iter().map(|(k, v)| (*k, v.to_vec())).collect();
        p.sort();
        let mut c: Vec<_> = self.counts.iter().map(|(k, v)| (*k, *v)).collect();
        c.sort();
        (p, c, self.allocs, self.frees)
    }
}

impl MmOps for TestMm {
    fn zalloc_page(&mut self) -> Option<u64> {
        if let Some(b) = &mut self.budget {
            if *b == 0 {
                return None;
            }
            *b -= 1;
        }
        let pa = self.next;
        self.next += 4096;
        self.pages.insert(pa, Box::new([0; 512]));
        self.counts.insert(pa, 1);
        self.allocs += 1;
        self.record(Event::Alloc(pa));
        Some(pa)
    }

    fn get_page(&mut self, pa: u64) {
        let c = self
            .counts
            .get_mut(&Self::page(pa))
            .unwrap_or_else(|| panic!("get_page on unallocated {pa:#x}"));
        assert!(*c <= 513, "count overflow on {pa:#x}");
        *c += 1;
    }

    fn put_page(&mut self, pa: u64) {
        let page = Self::page(pa);
        let c = self
            .counts
            .get_mut(&page)
            .unwrap_or_else(|| panic!("put_page on unallocated {pa:#x}"));
        assert!(*c > 0);
        *c -= 1;
        if *c == 0 {
            self.counts.remove(&page);
            self.pages.remove(&page);
            self.frees += 1;
            self.record(Event::Free(page));
        }
    }

    fn put_zeroed_table(&mut self, pa: u64) {
        let page = Self::page(pa);
        let table = self
            .pages
            .get(&page)
            .unwrap_or_else(|| panic!("put_zeroed_table on unallocated {pa:#x}"));
        assert!(
            table.iter().all(|&d| d == 0),
            "put_zeroed_table on a table that is not all zero: {pa:#x}"
        );
        self.put_page(pa);
    }

    fn page_count(&self, pa: u64) -> u32 {
        *self
            .counts
            .get(&Self::page(pa))
            .unwrap_or_else(|| panic!("page_count on unallocated {pa:#x}"))
    }

    fn read_pte(&self, pa: u64) -> u64 {
        assert_eq!(pa & 7, 0, "misaligned pte read {pa:#x}");
        self.reads.set(self.reads.get() + 1);
        let p = self
            .pages
            .get(&Self::page(pa))
            .unwrap_or_else(|| panic!("read of unallocated page {pa:#x}"));
        p[((pa & 0xfff) >> 3) as usize]
    }

    fn write_pte(&mut self, pa: u64, pte: u64) {
        assert_eq!(pa & 7, 0, "misaligned pte write {pa:#x}");
        let page = Self::page(pa);
        let p = self
            .pages
            .get_mut(&page)
            .unwrap_or_else(|| panic!("write to unallocated page {pa:#x}"));
        let slot = &mut p[((pa & 0xfff) >> 3) as usize];
        let old = *slot;
        *slot = pte;
        self.record(Event::Write { pa, old, new: pte });
    }
}

/// An ArchOps that records into the shared log.
#[derive(Debug, Default)]
pub struct TestArch {
    pub log: Option<Log>,
    pub count: std::cell::Cell<u64>,
}

impl TestArch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn with_log(log: &Log) -> Self {
        TestArch {
            log: Some(log.clone()),
            count: std::cell::Cell::new(0),
        }
    }
    fn record(&self, e: Event) {
        self.count.set(self.count.get() + 1);
        if let Some(l) = &self.log {
            l.borrow_mut().push(e);
        }
    }
}

impl ArchOps for TestArch {
    fn dsb_ishst(&self) {
        self.record(Event::DsbIshst);
    }
    fn dsb_ish(&self) {
        self.record(Event::DsbIsh);
    }
    fn isb(&self) {
        self.record(Event::Isb);
    }
    fn tlbi_el2_va(&self, va: u64, level: u8, last_level_only: bool) {
        self.record(Event::TlbiVa {
            va,
            level,
            last: last_level_only,
        });
    }
    fn tlbi_s2_ipa(&self, vmid: u16, ipa: u64, level: u8) {
        self.record(Event::TlbiIpa { vmid, ipa, level });
    }
    fn tlbi_vmid(&self, vmid: u16) {
        self.record(Event::TlbiVmid(vmid));
    }
    fn tlbi_el2_all(&self) {
        self.record(Event::TlbiEl2All);
    }
}

/// Whether `pte` is counted in its table page's refcount.
pub fn counted(format: Format, pte: u64) -> bool {
    match format {
        Format::Stage1El2 => is_valid(pte),
        Format::Stage2 { .. } => pte != 0,
    }
}

/// Every table page reachable from the root, with its level and base input address.
/// Independent of the crate's walker.
pub fn table_pages(pt: &PageTable, mm: &TestMm) -> HashMap<u64, (u8, u64)> {
    let mut out = HashMap::new();
    let mut stack = vec![(pt.root(), pt.start_level(), 0u64)];
    while let Some((page, level, base)) = stack.pop() {
        assert!(
            out.insert(page, (level, base)).is_none(),
            "table page {page:#x} linked twice"
        );
        for (i, &pte) in (0u64..).zip(mm.table(page).iter()) {
            if is_table(pte, level) {
                stack.push((
                    pte & desc::PTE_OA_MASK,
                    level + 1,
                    base + i * granule(level),
                ));
            }
        }
    }
    out
}

/// Checks the refcount invariant of every table page, that no allocated page is unreachable
/// (leak) and that every descriptor is well-formed.
pub fn check_structure(pt: &PageTable, mm: &TestMm) -> Result<(), String> {
    let fmt = pt.format();
    let tables = table_pages(pt, mm);
    for (&page, &(level, base)) in &tables {
        let mut n = 0;
        for (i, &pte) in (0u64..).zip(mm.table(page).iter()) {
            if counted(fmt, pte) {
                n += 1;
            }
            let va = base + i * granule(level);
            if is_valid(pte) {
                if level == 0 && !is_table(pte, 0) {
                    return Err(format!("block at L0, va {va:#x}: {pte:#x}"));
                }
                if level == 3 && pte & desc::PTE_TYPE == 0 {
                    return Err(format!("reserved L3 encoding at {va:#x}: {pte:#x}"));
                }
                if !is_table(pte, level) && pte & desc::PTE_AF == 0 {
                    return Err(format!("leaf without AF at {va:#x}"));
                }
                if !is_table(pte, level) && desc::output_address(pte) & (granule(level) - 1) != 0 {
                    return Err(format!("misaligned block OA at {va:#x}: {pte:#x}"));
                }
            } else if pte != 0 {
                if matches!(fmt, Format::Stage1El2) {
                    return Err(format!(
                        "non-zero invalid stage-1 entry at {va:#x}: {pte:#x}"
                    ));
                }
                if level != 3 || pte & !desc::PTE_OWNER_MASK != 0 {
                    return Err(format!("bad annotation at L{level} {va:#x}: {pte:#x}"));
                }
            }
        }
        let c = mm.page_count(page);
        if c != 1 + n {
            return Err(format!(
                "table {page:#x} (L{level}, base {base:#x}): count {c}, expected 1 + {n}"
            ));
        }
    }
    if tables.len() != mm.live() {
        let leaked: Vec<_> = mm
            .pages
            .keys()
            .filter(|p| !tables.contains_key(p))
            .collect();
        return Err(format!(
            "{} pages allocated, {} reachable; leaked {leaked:x?}",
            mm.live(),
            tables.len()
        ));
    }
    Ok(())
}

/// What a page (or a run of pages) holds in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MEntry {
    /// Valid mapping; `pa` is the output address of the first page of the run.
    Mapped { pa: u64, prot: Prot },
    /// Stage-2 annotation with a non-zero owner.
    Owner(u8),
}

impl MEntry {
    /// The entry for the page `off` bytes into the run.
    pub fn at(self, off: u64) -> MEntry {
        match self {
            MEntry::Mapped { pa, prot } => MEntry::Mapped { pa: pa + off, prot },
            o => o,
        }
    }
}

/// Disjoint runs `start -> (end, entry)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub runs: BTreeMap<u64, (u64, MEntry)>,
}

impl Model {
    /// Removes `[a, b)`, keeping the parts of runs outside it.
    pub fn clear(&mut self, a: u64, b: u64) {
        let keys: Vec<u64> = self
            .runs
            .range(..b)
            .rev()
            .take_while(|(_, (e, _))| *e > a)
            .map(|(s, _)| *s)
            .collect();
        for s in keys {
            let (e, m) = self.runs.remove(&s).unwrap();
            if s < a {
                self.runs.insert(s, (a, m));
            }
            if e > b {
                self.runs.insert(b, (e, m.at(b - s)));
            }
        }
    }

    /// Sets `[a, b)` to `m` (for a mapping, `m`'s pa is that of `a`).
    pub fn set(&mut self, a: u64, b: u64, m: MEntry) {
        if a >= b {
            return;
        }
        self.clear(a, b);
        self.runs.insert(a, (b, m));
    }

    /// The pieces of runs inside `[a, b)`, clipped.
    pub fn pieces(&self, a: u64, b: u64) -> Vec<(u64, u64, MEntry)> {
        let mut v: Vec<_> = self
            .runs
            .range(..b)
            .rev()
            .take_while(|(_, (e, _))| *e > a)
            .map(|(&s, &(e, m))| {
                let cs = s.max(a);
                (cs, e.min(b), m.at(cs - s))
            })
            .collect();
        v.reverse();
        v
    }

    /// The entry of the page at `p`.
    pub fn lookup(&self, p: u64) -> Option<MEntry> {
        self.pieces(p, p + 4096).first().map(|x| x.2)
    }

    /// Bytes of valid mappings in `[a, b)`.
    pub fn mapped_bytes(&self, a: u64, b: u64) -> u64 {
        self.pieces(a, b)
            .iter()
            .filter(|p| matches!(p.2, MEntry::Mapped { .. }))
            .map(|p| p.1 - p.0)
            .sum()
    }

    /// Canonical form: adjacent runs merged where they continue each other.
    pub fn canonical(&self) -> Vec<(u64, u64, MEntry)> {
        canonicalize(self.runs.iter().map(|(&s, &(e, m))| (s, e, m)))
    }
}

/// Merges adjacent runs that continue each other.
pub fn canonicalize(it: impl IntoIterator<Item = (u64, u64, MEntry)>) -> Vec<(u64, u64, MEntry)> {
    let mut out: Vec<(u64, u64, MEntry)> = Vec::new();
    for (s, e, m) in it {
        if let Some(last) = out.last_mut()
            && last.1 == s
            && last.2.at(s - last.0) == m
        {
            last.1 = e;
            continue;
        }
        out.push((s, e, m));
    }
    out
}

/// The mappings the tables hold, as canonical runs. Independent of the crate's walker.
pub fn table_runs(pt: &PageTable, mm: &TestMm) -> Vec<(u64, u64, MEntry)> {
    let fmt = pt.format();
    let mut runs = Vec::new();
    fn rec(
        mm: &TestMm,
        fmt: Format,
        page: u64,
        level: u8,
        base: u64,
        runs: &mut Vec<(u64, u64, MEntry)>,
    ) {
        for (i, &pte) in (0u64..).zip(mm.table(page).iter()) {
            let va = base + i * granule(level);
            if is_table(pte, level) {
                rec(mm, fmt, pte & desc::PTE_OA_MASK, level + 1, va, runs);
            } else if is_valid(pte) {
                let m = MEntry::Mapped {
                    pa: desc::output_address(pte),
                    prot: fmt.pte_prot(pte),
                };
                runs.push((va, va + granule(level), m));
            } else if pte != 0 {
                let o = desc::pte_owner(pte).unwrap();
                runs.push((va, va + granule(level), MEntry::Owner(o)));
            }
        }
    }
    rec(mm, fmt, pt.root(), pt.start_level(), 0, &mut runs);
    canonicalize(runs)
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    ptep: u64,
    base: u64,
    size: u64,
    level: u8,
    table: bool,
    child: u64,
}

/// Cleared valid entries awaiting their TLB invalidation, by stage: written (needs a DSB),
/// DSB done (needs a TLBI covering it), TLBI issued (needs a DSB ISH).
#[derive(Default)]
struct PendingSet {
    written: Vec<Pending>,
    dsbed: Vec<Pending>,
    tlbid: Vec<Pending>,
    pteps: FastMap<u64, u32>,
}

impl PendingSet {
    fn all(&self) -> impl Iterator<Item = &Pending> {
        self.written.iter().chain(&self.dsbed).chain(&self.tlbid)
    }
    fn drop_completed(&mut self) {
        for p in self.tlbid.drain(..) {
            let c = self.pteps.get_mut(&p.ptep).unwrap();
            *c -= 1;
            if *c == 0 {
                self.pteps.remove(&p.ptep);
            }
        }
    }
    /// Moves the DSB'd entries that `covers` accepts to the TLBI'd stage.
    fn tlbi(&mut self, covers: impl Fn(&Pending) -> bool) {
        let mut i = 0;
        while i < self.dsbed.len() {
            if covers(&self.dsbed[i]) {
                let p = self.dsbed.swap_remove(i);
                self.tlbid.push(p);
            } else {
                i += 1;
            }
        }
    }
}

/// Checks the events of one operation for break-before-make and TLB maintenance:
/// - a valid entry is never changed into a different valid entry directly (except a change of
///   software bits only);
/// - every valid entry that is cleared or changed is followed, before it is made valid again,
///   before a table it pointed to is freed, and before the operation returns, by a DSB, a TLBI
///   covering it (right regime / VMID; level hint 0 or its level for a leaf, 0 and not
///   last-level-only for a table) and a DSB ISH;
/// - a new table page is made visible (DSB) before it is linked;
/// - every valid entry written is followed by a DSB before the return, and by an ISB after it
///   for the EL2 stage-1.
///
/// `tables` maps the live table pages (before the operation) to their level and base address.
pub fn check_maintenance(
    events: &[Event],
    mut tables: HashMap<u64, (u8, u64)>,
    format: Format,
) -> Result<(), String> {
    let stage1 = matches!(format, Format::Stage1El2);
    let mut pending = PendingSet::default();
    // Pages written (or allocated) while not linked, and not yet ordered by a DSB.
    let mut unpublished: HashSet<u64> = HashSet::new();
    let mut unsynced_valid_write = false;
    let mut need_isb = false;
    for (i, ev) in events.iter().enumerate() {
        match *ev {
            Event::Alloc(p) => {
                unpublished.insert(p);
            }
            Event::Write { pa, old, new } => {
                let page = pa & !0xfff;
                let Some(&(level, tbase)) = tables.get(&page) else {
                    unpublished.insert(page);
                    continue;
                };
                let idx = (pa & 0xfff) / 8;
                let base = tbase + idx * granule(level);
                if is_valid(new) && pending.pteps.contains_key(&pa) {
                    return Err(format!(
                        "event {i}: {pa:#x} made valid before its invalidation completed"
                    ));
                }
                if is_valid(old)
                    && is_valid(new)
                    && old != new
                    && (old ^ new) & !desc::PTE_SW_MASK != 0
                {
                    return Err(format!(
                        "event {i}: valid->valid change without break-before-make at {base:#x} L{level}: {old:#x} -> {new:#x}"
                    ));
                }
                if is_valid(old) && !is_valid(new) {
                    pending.written.push(Pending {
                        ptep: pa,
                        base,
                        size: granule(level),
                        level,
                        table: is_table(old, level),
                        child: if is_table(old, level) {
                            old & desc::PTE_OA_MASK
                        } else {
                            u64::MAX
                        },
                    });
                    *pending.pteps.entry(pa).or_default() += 1;
                }
                if is_valid(new) {
                    unsynced_valid_write = true;
                    need_isb = false;
                }
                if is_table(new, level) {
                    let child = new & desc::PTE_OA_MASK;
                    if unpublished.contains(&child) {
                        return Err(format!(
                            "event {i}: table {child:#x} linked at {base:#x} before a DSB made its contents visible"
                        ));
                    }
                    tables.insert(child, (level + 1, base));
                }
            }
            Event::DsbIshst | Event::DsbIsh => {
                let ish = *ev == Event::DsbIsh;
                if ish {
                    pending.drop_completed();
                }
                let w = std::mem::take(&mut pending.written);
                pending.dsbed.extend(w);
                unpublished.clear();
                if unsynced_valid_write || ish {
                    need_isb = stage1;
                }
                unsynced_valid_write = false;
            }
            Event::Isb => need_isb = false,
            Event::TlbiVa { va, level, last } => {
                if !stage1 {
                    return Err(format!("event {i}: EL2 TLBI on a stage-2 table"));
                }
                // A TLBI with a level hint (or the last-level variant) does not invalidate a
                // table entry; a hint of another level misses a leaf.
                pending.tlbi(|p| {
                    let ok = if p.table {
                        level == 0 && !last
                    } else {
                        level == 0 || level == p.level
                    };
                    ok && va >= p.base && va < p.base + p.size
                });
            }
            Event::TlbiIpa { vmid, ipa, level } => {
                let Format::Stage2 { vmid: want } = format else {
                    return Err(format!("event {i}: stage-2 TLBI on a stage-1 table"));
                };
                if vmid != want {
                    return Err(format!("event {i}: TLBI for VMID {vmid}, table has {want}"));
                }
                pending.tlbi(|p| {
                    let ok = if p.table {
                        level == 0
                    } else {
                        level == 0 || level == p.level
                    };
                    ok && ipa >= p.base && ipa < p.base + p.size
                });
            }
            Event::TlbiVmid(vmid) => {
                let Format::Stage2 { vmid: want } = format else {
                    return Err(format!("event {i}: VMID TLBI on a stage-1 table"));
                };
                if vmid == want {
                    pending.tlbi(|_| true);
                }
            }
            Event::TlbiEl2All => {
                if !stage1 {
                    return Err(format!("event {i}: EL2 TLBI on a stage-2 table"));
                }
                pending.tlbi(|_| true);
            }
            Event::Free(page) => {
                if let Some(p) = pending
                    .all()
                    .find(|p| p.child == page || p.ptep & !0xfff == page)
                {
                    return Err(format!(
                        "event {i}: page {page:#x} freed before the invalidation of {:#x} completed",
                        p.base
                    ));
                }
                tables.remove(&page);
            }
        }
    }
    if let Some(p) = pending.all().next() {
        return Err(format!(
            "operation returned with the invalidation of {:#x} (L{}) incomplete",
            p.base, p.level
        ));
    }
    if unsynced_valid_write {
        return Err("operation returned without a DSB after writing valid entries".into());
    }
    if need_isb {
        return Err("stage-1 operation returned without an ISB after its DSB".into());
    }
    Ok(())
}

/// A table, its memory and a recording arch, with the checks wired in.
pub struct Harness {
    pub pt: PageTable,
    pub mm: TestMm,
    pub arch: TestArch,
    pub log: Log,
}

impl Harness {
    pub fn new(cfg: pkvm_pgtable::Config) -> Self {
        let log: Log = Rc::default();
        let mut mm = TestMm::with_log(&log);
        let arch = TestArch::with_log(&log);
        let pt = PageTable::new(&mut mm, cfg).unwrap();
        log.borrow_mut().clear();
        Harness { pt, mm, arch, log }
    }

    /// Runs `f` and checks its maintenance events and the structure afterwards.
    pub fn op<R>(&mut self, f: impl FnOnce(&mut PageTable, &mut TestMm, &TestArch) -> R) -> R {
        let tables = table_pages(&self.pt, &self.mm);
        self.log.borrow_mut().clear();
        let r = f(&mut self.pt, &mut self.mm, &self.arch);
        let events = std::mem::take(&mut *self.log.borrow_mut());
        if let Err(e) = check_maintenance(&events, tables, self.pt.format()) {
            panic!("maintenance check failed: {e}\nevents: {events:x?}");
        }
        if let Err(e) = check_structure(&self.pt, &self.mm) {
            panic!("structure check failed: {e}");
        }
        r
    }
}
