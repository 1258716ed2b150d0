//! Bad inputs return their error and change nothing: no descriptor, no count, no allocation,
//! no barrier or TLBI.

mod common;

use common::Harness;
use pkvm_pgtable::{Config, Error, Format, MapFlags, Prot, WalkFlags};

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;

/// A table with a bit of everything in it.
fn populated(cfg: Config) -> Harness {
    let mut h = Harness::new(cfg);
    let prot = Prot::R;
    h.op(|pt, mm, arch| pt.map(mm, arch, 0, G1, 0, prot, MapFlags::empty()))
        .unwrap();
    h.op(|pt, mm, arch| pt.map(mm, arch, G1, M2 + 3 * K4, 0, prot, MapFlags::empty()))
        .unwrap();
    if cfg.format.is_stage2() {
        h.op(|pt, mm, arch| pt.set_owner(mm, arch, G1 + 2 * M2, 2 * K4, 4))
            .unwrap();
    }
    h
}

fn assert_unchanged<T: std::fmt::Debug + PartialEq>(
    cfg: Config,
    what: &str,
    want: Error,
    f: impl Fn(&mut Harness) -> Result<T, Error>,
) {
    let mut h = populated(cfg);
    let snap = h.mm.snapshot();
    h.log.borrow_mut().clear();
    let r = f(&mut h);
    assert_eq!(r, Err(want), "{what} on {cfg:?}");
    assert_eq!(h.mm.snapshot(), snap, "{what} changed memory");
    assert!(
        h.log.borrow().is_empty(),
        "{what} did something: {:?}",
        h.log.borrow()
    );
}

/// Bad (addr, size) pairs and their error, for a space of `ia` bytes.
fn bad_ranges(ia: u64) -> Vec<(u64, u64, Error, &'static str)> {
    vec![
        (0x800, K4, Error::Misaligned, "unaligned addr"),
        (0, 0x800, Error::Misaligned, "unaligned size"),
        (K4, K4 + 1, Error::Misaligned, "unaligned size 2"),
        (0, 0, Error::Misaligned, "zero size"),
        (
            K4 + 1,
            K4 + 1,
            Error::Misaligned,
            "address and size misaligned alike",
        ),
        (ia - K4, 2 * K4, Error::OutOfRange, "past the end"),
        (ia, K4, Error::OutOfRange, "starts at the end"),
        (
            !0xfffu64,
            2 * K4,
            Error::OutOfRange,
            "overflowing addr + size",
        ),
        (K4, !0xfffu64, Error::OutOfRange, "overflowing size"),
    ]
}

fn configs() -> [Config; 4] {
    [
        Config::stage1_el2(),
        Config {
            format: Format::Stage1El2,
            ia_bits: 39,
        },
        Config::stage2(3, 40),
        Config::stage2(3, 32),
    ]
}

#[test]
fn bad_ranges_change_nothing() {
    for cfg in configs() {
        let ia = cfg.ia_size();
        for (addr, size, err, what) in bad_ranges(ia) {
            let flags = [MapFlags::empty(), MapFlags::REPLACE | MapFlags::FORCE_PAGES];
            for f in flags {
                assert_unchanged(cfg, &format!("map {what}"), err, |h| {
                    h.pt.map(&mut h.mm, &h.arch, addr, size, 0, Prot::R, f)
                });
            }
            assert_unchanged(cfg, &format!("unmap {what}"), err, |h| {
                h.pt.unmap(&mut h.mm, &h.arch, addr, size)
            });
            assert_unchanged(cfg, &format!("set_prot {what}"), err, |h| {
                h.pt.set_prot(&mut h.mm, &h.arch, addr, size, Prot::R)
            });
            if cfg.format.is_stage2() {
                for owner in [0, 1] {
                    assert_unchanged(cfg, &format!("set_owner({owner}) {what}"), err, |h| {
                        h.pt.set_owner(&mut h.mm, &h.arch, addr, size, owner)
                    });
                }
            }
            assert_unchanged(cfg, &format!("count_leaves {what}"), err, |h| {
                h.pt.count_leaves(&h.mm, addr, size)
            });
            assert_unchanged(cfg, &format!("walk {what}"), err, |h| {
                h.pt.walk(&h.mm, addr, size, WalkFlags::all(), |_| Ok::<(), Error>(()))
            });
            assert_unchanged(cfg, &format!("walk_mut {what}"), err, |h| {
                let pt = &h.pt;
                pt.walk_mut(&mut h.mm, addr, size, WalkFlags::all(), |_, _| {
                    Ok::<(), Error>(())
                })
            });
        }
        assert_unchanged(cfg, "get_leaf past the end", Error::OutOfRange, |h| {
            h.pt.get_leaf(&h.mm, ia)
        });
    }
}

#[test]
fn bad_phys_changes_nothing() {
    for cfg in configs() {
        let cases = [
            (0x800, Error::Misaligned, "unaligned phys"),
            ((1 << 48) - K4, Error::OutOfRange, "phys past 48 bits"),
            (1 << 48, Error::OutOfRange, "phys at 48 bits"),
            (!0xfffu64, Error::OutOfRange, "phys + size overflows"),
        ];
        for (phys, err, what) in cases {
            assert_unchanged(cfg, what, err, |h| {
                h.pt.map(
                    &mut h.mm,
                    &h.arch,
                    2 * G1,
                    2 * K4,
                    phys,
                    Prot::R,
                    MapFlags::empty(),
                )
            });
        }
    }
}

#[test]
fn bad_prot_changes_nothing() {
    for cfg in configs() {
        let mut bad = vec![
            Prot::RX | Prot::DEVICE,
            Prot::from_bits_retain(1 << 4),
            Prot::from_bits_retain(1 << 63),
        ];
        if !cfg.format.is_stage2() {
            bad.extend([
                Prot::RWX,
                Prot::W,
                Prot::X,
                Prot::empty(),
                Prot::W | Prot::DEVICE,
            ]);
        }
        for prot in bad {
            assert_unchanged(cfg, "map bad prot", Error::InvalidProt, |h| {
                h.pt.map(&mut h.mm, &h.arch, 0, K4, 0, prot, MapFlags::REPLACE)
            });
            assert_unchanged(cfg, "set_prot bad prot", Error::InvalidProt, |h| {
                h.pt.set_prot(&mut h.mm, &h.arch, 0, G1, prot)
            });
        }
    }
}

#[test]
fn bad_owner_changes_nothing() {
    for cfg in configs() {
        if cfg.format.is_stage2() {
            for owner in [256, 1000, u32::MAX] {
                assert_unchanged(cfg, "bad owner", Error::InvalidOwner, |h| {
                    h.pt.set_owner(&mut h.mm, &h.arch, 0, K4, owner)
                });
            }
        } else {
            for owner in [0, 1] {
                assert_unchanged(cfg, "stage-1 owner", Error::InvalidConfig, |h| {
                    h.pt.set_owner(&mut h.mm, &h.arch, 0, K4, owner)
                });
            }
        }
    }
}

#[test]
fn conflicts_found_at_the_first_entry_change_nothing() {
    for cfg in configs() {
        assert_unchanged(
            cfg,
            "map over a different mapping",
            Error::AlreadyMapped,
            |h| {
                h.pt.map(&mut h.mm, &h.arch, 0, G1, K4, Prot::R, MapFlags::empty())
            },
        );
        assert_unchanged(cfg, "split forbidden", Error::WouldSplitBlock, |h| {
            h.pt.map(
                &mut h.mm,
                &h.arch,
                0,
                K4,
                K4,
                Prot::R,
                MapFlags::REPLACE | MapFlags::NO_SPLIT,
            )
        });
    }
}

/// Every error has a message of its own (what a log line or a failed test shows).
#[test]
fn every_error_says_what_it_is() {
    let all = [
        Error::Misaligned,
        Error::OutOfRange,
        Error::WouldSplitBlock,
        Error::NoMemory,
        Error::InvalidProt,
        Error::AlreadyMapped,
        Error::InvalidOwner,
        Error::InvalidConfig,
    ];
    let msgs: std::collections::BTreeSet<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(msgs.len(), all.len(), "{msgs:?}");
    assert!(msgs.iter().all(|m| m.len() > 8), "{msgs:?}");
    assert_eq!(Error::NoMemory.to_string(), "out of page-table memory");
}
