//! Instruction-count driver for the one-page fast paths (no hardware counters needed):
//!
//! ```text
//! cargo build --release -p pkvm-pgtable --example icount
//! valgrind --tool=callgrind target/release/examples/icount pair 10000   # then with 0
//! ```
//!
//! (instructions(n) - instructions(0)) / n is the cost of one iteration. Modes: `pair` (map a
//! page into existing tables, then unmap it), `mapnoop` (map the identical mapping again),
//! `unmapnoop` (unmap a hole), `leaf` (`get_leaf`), anything else: the empty loop. The arena
//! `MmOps` is the benchmark's (bounds-checked `Vec` accesses), the `ArchOps` does nothing.

use pkvm_pgtable::{Config, MapFlags, PageTable, Prot};
use std::hint::black_box;
#[path = "../benches/support/mod.rs"]
mod support;
use support::{ArenaMm, NopArch};

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let n: u64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut mm = ArenaMm::new(16);
    let arch = NopArch;
    let mut pt = PageTable::new(&mut mm, Config::stage1_el2()).unwrap();
    let va = 0x40_0020_0000u64;
    pt.map(
        &mut mm,
        &arch,
        va,
        4096,
        0x8000_0000,
        Prot::RW,
        MapFlags::FORCE_PAGES,
    )
    .unwrap();
    let one = va + 0x4000;
    let mut acc = 0u64;
    for _ in 0..n {
        match mode.as_str() {
            "pair" => {
                pt.map(
                    &mut mm,
                    &arch,
                    black_box(one),
                    4096,
                    0x8000_4000,
                    Prot::RW,
                    MapFlags::FORCE_PAGES,
                )
                .unwrap();
                acc ^= pt.unmap(&mut mm, &arch, black_box(one), 4096).unwrap();
            }
            "mapnoop" => pt
                .map(
                    &mut mm,
                    &arch,
                    black_box(va),
                    4096,
                    0x8000_0000,
                    Prot::RW,
                    MapFlags::FORCE_PAGES,
                )
                .unwrap(),
            "unmapnoop" => acc ^= pt.unmap(&mut mm, &arch, black_box(one), 4096).unwrap(),
            "leaf" => acc ^= pt.get_leaf(&mm, black_box(va)).unwrap().0,
            _ => {}
        }
    }
    println!("{acc}");
}
