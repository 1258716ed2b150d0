//! Benchmarks of pkvm-pgtable against aarch64-paging on the same workloads:
//! - map then unmap 1 GiB with 4 KiB pages (timed separately and together);
//! - map 1 GiB with 2 MiB blocks;
//! - 100k random lookups (`get_leaf`; aarch64-paging has no lookup call, its `walk_range` over
//!   one page is the equivalent).
//!
//! Run with `cargo bench -p pkvm-pgtable`. After criterion's report, a summary prints the
//! per-page (or per-lookup) times of both libraries and their ratio (pkvm / aarch64-paging).
//!
//! Both use an EL2 stage-1 format. pkvm-pgtable goes through a realistic arena `MmOps` (pages in
//! a `Vec`, refcounts in another) and a no-op `ArchOps` (on hardware each barrier/TLBI is one
//! instruction; their count is reported by the tests, not here). aarch64-paging uses its
//! `IdTranslation` (heap pages) on an inactive table, its cheapest mode: no BBM checks and no
//! TLB maintenance; its unmap is `map_range` with invalid flags followed by
//! `compact_subtables` so that both free the emptied tables.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aarch64_paging::Mapping;
use aarch64_paging::descriptor::{El23Attributes, PhysicalAddress};
use aarch64_paging::idmap::IdTranslation;
use aarch64_paging::paging::{Constraints, El2, MemoryRegion};
use criterion::Criterion;
use pkvm_pgtable::{Config, MapFlags, PageTable, Prot};

const K4: u64 = 4096;
const G1: u64 = 1 << 30;
/// Where the mapped range starts (not 1 GiB aligned, so the 2 MiB workload gets 512 blocks).
const VA: u64 = 0x40_0020_0000;
const PA: u64 = 0x8020_0000;
const LOOKUPS: usize = 100_000;

mod support;
use support::{ArenaMm, NopArch};

struct Pkvm {
    mm: ArenaMm,
    arch: NopArch,
    pt: PageTable,
}

impl Pkvm {
    fn new() -> Self {
        Self::with_pages(8)
    }
    fn with_pages(n: usize) -> Self {
        let mut mm = ArenaMm::new(n);
        let pt = PageTable::new(&mut mm, Config::stage1_el2()).unwrap();
        Pkvm {
            mm,
            arch: NopArch,
            pt,
        }
    }
    fn map(&mut self, size: u64, flags: MapFlags) {
        self.pt
            .map(&mut self.mm, &self.arch, VA, size, PA, Prot::RW, flags)
            .unwrap();
    }
    fn unmap(&mut self, size: u64) {
        let n = self.pt.unmap(&mut self.mm, &self.arch, VA, size).unwrap();
        assert_eq!(n, size);
    }
    fn lookup(&self, va: u64) -> u64 {
        self.pt.get_leaf(&self.mm, va).unwrap().0
    }
}

type ApMapping = Mapping<IdTranslation<El23Attributes>, El2>;

struct Ap {
    m: ApMapping,
}

impl Drop for Ap {
    fn drop(&mut self) {
        if self.m.active() {
            self.m.mark_inactive();
        }
    }
}

fn ap_flags() -> El23Attributes {
    El23Attributes::VALID
        | El23Attributes::ACCESSED
        | El23Attributes::INNER_SHAREABLE
        | El23Attributes::USER_RES1
        | El23Attributes::XN
        | El23Attributes::ATTRIBUTE_INDEX_0
}

impl Ap {
    /// An inactive table: no BBM checks, no TLB maintenance (building tables offline).
    fn new() -> Self {
        Ap {
            m: Mapping::new(IdTranslation::new(), 0, El2),
        }
    }
    /// A table marked live (`mark_active`), as the tables pkvm-pgtable manages always are: the
    /// library then checks BBM and visits what it must invalidate (the TLBI instructions
    /// themselves compile to nothing off aarch64, like our no-op `ArchOps`).
    fn new_live() -> Self {
        let a = Self::new();
        a.m.mark_active();
        a
    }
    fn region(size: u64) -> MemoryRegion {
        MemoryRegion::new(VA as usize, (VA + size) as usize)
    }
    fn map(&mut self, size: u64, pages: bool) {
        let mut c = Constraints::NO_CONTIGUOUS_HINT;
        if pages {
            c |= Constraints::NO_BLOCK_MAPPINGS;
        }
        self.m
            .map_range(
                &Self::region(size),
                PhysicalAddress(PA as usize),
                ap_flags(),
                c,
            )
            .unwrap();
    }
    fn unmap(&mut self, size: u64) {
        let c = Constraints::NO_CONTIGUOUS_HINT;
        self.m
            .map_range(
                &Self::region(size),
                PhysicalAddress(PA as usize),
                El23Attributes::empty(),
                c,
            )
            .unwrap();
        self.m.compact_subtables();
    }
    fn map_one(&mut self, va: u64) {
        let r = MemoryRegion::new(va as usize, (va + K4) as usize);
        let c = Constraints::NO_CONTIGUOUS_HINT | Constraints::NO_BLOCK_MAPPINGS;
        self.m
            .map_range(&r, PhysicalAddress(PA as usize), ap_flags(), c)
            .unwrap();
    }
    fn unmap_one(&mut self, va: u64) {
        let r = MemoryRegion::new(va as usize, (va + K4) as usize);
        let c = Constraints::NO_CONTIGUOUS_HINT;
        self.m
            .map_range(&r, PhysicalAddress(PA as usize), El23Attributes::empty(), c)
            .unwrap();
    }
    fn lookup(&self, va: u64) -> u64 {
        let mut out = 0;
        let r = MemoryRegion::new(va as usize, va as usize + 1);
        self.m
            .walk_range(&r, &mut |_, d, _| {
                out = d.output_address().0 as u64;
                Ok(())
            })
            .unwrap();
        out
    }
}

/// 100k page-aligned addresses spread over the 1 GiB (xorshift, fixed seed).
fn lookup_addrs() -> Vec<u64> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..LOOKUPS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            VA + (x % (G1 / K4)) * K4 + (x >> 60)
        })
        .collect()
}

/// Times `f` (the part between setup and teardown) `iters` times.
fn timed<S>(
    iters: u64,
    mut setup: impl FnMut() -> S,
    mut f: impl FnMut(&mut S),
    mut teardown: impl FnMut(S),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let mut s = setup();
        let t = Instant::now();
        f(&mut s);
        total += t.elapsed();
        teardown(s);
    }
    total
}

/// The aarch64-paging variants: (name, constructor).
/// A named aarch64-paging constructor.
type ApVariant = (&'static str, fn() -> Ap);

const AP_VARIANTS: [ApVariant; 2] = [
    ("aarch64-paging live", Ap::new_live),
    ("aarch64-paging inactive", Ap::new),
];

fn bench(c: &mut Criterion) {
    let pages = G1 / K4;
    let mut g = c.benchmark_group("map+unmap 1GiB 4K pages");
    g.throughput(criterion::Throughput::Elements(pages));
    g.bench_function("pkvm", |b| {
        let mut p = Pkvm::with_pages(600);
        b.iter(|| {
            p.map(G1, MapFlags::FORCE_PAGES);
            p.unmap(G1);
        });
        assert_eq!(p.mm.pages.len() - p.mm.free.len(), 1);
        assert_eq!(p.mm.pages.len(), 600);
    });
    for (name, new) in AP_VARIANTS {
        g.bench_function(name, |b| {
            let mut a = new();
            b.iter(|| {
                a.map(G1, true);
                a.unmap(G1);
            });
        });
    }
    g.finish();

    let mut g = c.benchmark_group("map 1GiB 2M blocks");
    g.throughput(criterion::Throughput::Elements(512));
    g.bench_function("pkvm", |b| {
        b.iter_custom(|iters| timed(iters, Pkvm::new, |p| p.map(G1, MapFlags::empty()), drop));
    });
    for (name, new) in AP_VARIANTS {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| timed(iters, new, |a| a.map(G1, false), drop));
        });
    }
    g.finish();

    // One page into existing tables (the hypervisor's common case: share one page), and back.
    let mut g = c.benchmark_group("map+unmap one page, tables present");
    g.throughput(criterion::Throughput::Elements(1));
    let one = VA + 4 * K4;
    {
        let mut p = Pkvm::new();
        p.pt.map(
            &mut p.mm,
            &p.arch,
            VA,
            K4,
            PA,
            Prot::RW,
            MapFlags::FORCE_PAGES,
        )
        .unwrap();
        g.bench_function("pkvm", |b| {
            b.iter(|| {
                p.pt.map(
                    &mut p.mm,
                    &p.arch,
                    black_box(one),
                    K4,
                    PA,
                    Prot::RW,
                    MapFlags::FORCE_PAGES,
                )
                .unwrap();
                p.pt.unmap(&mut p.mm, &p.arch, black_box(one), K4).unwrap()
            });
        });
    }
    for (name, new) in AP_VARIANTS {
        let mut a = new();
        a.map(K4, true);
        g.bench_function(name, |b| {
            b.iter(|| {
                a.map_one(black_box(one));
                a.unmap_one(black_box(one));
            });
        });
    }
    g.finish();

    let addrs = lookup_addrs();
    let mut g = c.benchmark_group("100k random get_leaf");
    g.throughput(criterion::Throughput::Elements(LOOKUPS as u64));
    let mut p = Pkvm::with_pages(600);
    p.map(G1, MapFlags::FORCE_PAGES);
    g.bench_function("pkvm", |b| {
        b.iter(|| {
            addrs
                .iter()
                .fold(0u64, |acc, &va| acc ^ p.lookup(black_box(va)))
        });
    });
    for (name, new) in AP_VARIANTS {
        let mut a = new();
        a.map(G1, true);
        g.bench_function(name, |b| {
            b.iter(|| {
                addrs
                    .iter()
                    .fold(0u64, |acc, &va| acc ^ a.lookup(black_box(va)))
            });
        });
    }
    g.finish();
}

/// Median of `runs` measurements of `f`, in nanoseconds per `units`.
fn median_ns(runs: usize, units: u64, mut f: impl FnMut() -> Duration) -> f64 {
    let mut v: Vec<f64> = (0..runs)
        .map(|_| f().as_nanos() as f64 / units as f64)
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[runs / 2]
}

const RUNS: usize = 9;

/// (map, unmap, map+unmap) ns/page of 1 GiB in pages: medians over `RUNS`.
fn pages_workload(mut map: impl FnMut(), mut unmap: impl FnMut()) -> [f64; 3] {
    let pages = (G1 / K4) as f64;
    let mut m = Vec::new();
    let mut u = Vec::new();
    let mut mu = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        map();
        let t1 = t.elapsed();
        let t = Instant::now();
        unmap();
        let t2 = t.elapsed();
        m.push(t1.as_nanos() as f64 / pages);
        u.push(t2.as_nanos() as f64 / pages);
        mu.push((t1 + t2).as_nanos() as f64 / pages);
    }
    [m, u, mu].map(|mut v| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[RUNS / 2]
    })
}

/// The ratio table: each workload timed for each library, median of `RUNS`.
fn summary() {
    let p = std::cell::RefCell::new(Pkvm::with_pages(600));
    let pk = pages_workload(
        || p.borrow_mut().map(G1, MapFlags::FORCE_PAGES),
        || p.borrow_mut().unmap(G1),
    );
    let mut ap = Vec::new();
    for (_, new) in AP_VARIANTS {
        let a = std::cell::RefCell::new(new());
        ap.push(pages_workload(
            || a.borrow_mut().map(G1, true),
            || a.borrow_mut().unmap(G1),
        ));
    }
    let mut rows: Vec<(&str, &str, f64, Vec<f64>)> = vec![
        (
            "map 1 GiB, 4 KiB pages",
            "ns/page",
            pk[0],
            ap.iter().map(|x| x[0]).collect(),
        ),
        (
            "unmap 1 GiB, 4 KiB pages, tables freed",
            "ns/page",
            pk[1],
            ap.iter().map(|x| x[1]).collect(),
        ),
        (
            "map+unmap 1 GiB, 4 KiB pages",
            "ns/page",
            pk[2],
            ap.iter().map(|x| x[2]).collect(),
        ),
    ];

    let pb = median_ns(RUNS, 512, || {
        timed(1, Pkvm::new, |p| p.map(G1, MapFlags::empty()), drop)
    });
    let ab = AP_VARIANTS
        .map(|(_, new)| median_ns(RUNS, 512, || timed(1, new, |a| a.map(G1, false), drop)));
    rows.push(("map 1 GiB, 2 MiB blocks", "ns/block", pb, ab.to_vec()));

    const ONES: u64 = 100_000;
    let one = VA + 4 * K4;
    let mut p = Pkvm::new();
    p.pt.map(
        &mut p.mm,
        &p.arch,
        VA,
        K4,
        PA,
        Prot::RW,
        MapFlags::FORCE_PAGES,
    )
    .unwrap();
    let po = median_ns(RUNS, ONES, || {
        let t = Instant::now();
        for _ in 0..ONES {
            p.pt.map(
                &mut p.mm,
                &p.arch,
                black_box(one),
                K4,
                PA,
                Prot::RW,
                MapFlags::FORCE_PAGES,
            )
            .unwrap();
            black_box(p.pt.unmap(&mut p.mm, &p.arch, black_box(one), K4).unwrap());
        }
        t.elapsed()
    });
    let ao = AP_VARIANTS.map(|(_, new)| {
        let mut a = new();
        a.map(K4, true);
        median_ns(RUNS, ONES, || {
            let t = Instant::now();
            for _ in 0..ONES {
                a.map_one(black_box(one));
                a.unmap_one(black_box(one));
            }
            t.elapsed()
        })
    });
    rows.push((
        "map+unmap one page, tables present",
        "ns/pair",
        po,
        ao.to_vec(),
    ));

    let addrs = lookup_addrs();
    let mut p = Pkvm::with_pages(600);
    p.map(G1, MapFlags::FORCE_PAGES);
    let lookup_all = |f: &dyn Fn(u64) -> u64| {
        median_ns(RUNS, LOOKUPS as u64, || {
            let t = Instant::now();
            black_box(addrs.iter().fold(0u64, |acc, &va| acc ^ f(black_box(va))));
            t.elapsed()
        })
    };
    let pl = lookup_all(&|va| p.lookup(va));
    let al = AP_VARIANTS.map(|(_, new)| {
        let mut a = new();
        a.map(G1, true);
        lookup_all(&|va| a.lookup(va))
    });
    rows.push((
        "100k random get_leaf (1 GiB of pages)",
        "ns/lookup",
        pl,
        al.to_vec(),
    ));

    println!();
    println!(
        "| workload | unit | pkvm-pgtable | aarch64-paging live | aarch64-paging inactive | ratio vs live | ratio vs inactive |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (w, u, x, y) in rows {
        println!(
            "| {w} | {u} | {x:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            y[0],
            y[1],
            x / y[0],
            x / y[1]
        );
    }
}

fn main() {
    let test_mode = std::env::args().any(|a| a == "--test");
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
    if !test_mode {
        summary();
    }
}
