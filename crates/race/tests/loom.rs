//! The vmemmap entry's counters under `loom`: the share count, EL2's own pins (`refcount`) and
//! the host's pins, changed by the real kernels (`pkvm_hyp::mem_protect::kernel`, run by
//! `check_pages` as the transitions run them) on a real entry (`HypPage`, instantiated with
//! `loom`'s atomics).
//!
//! These counters are never touched without locks: each is written only with the host **and**
//! hyp locks held (`crates/hyp/src/vmemmap.rs`, "Concurrency"), and their loads and stores are
//! `Relaxed` because the locks order them. So the model has the two locks too (`loom` mutexes,
//! taken in the documented order), and checks the documented protocol: whatever the
//! interleaving — `loom` explores every one, with the weak-memory behaviours `Relaxed` allows —
//! the results and the final entry are those of some sequential order of the same calls
//! (computed with the default build's atomics). `wrong_lock_is_caught` shows that the check
//! fails when a caller holds only one of the two locks.

use std::sync::Arc;

use loom::sync::Mutex;
use loom::sync::atomic::{AtomicU8, AtomicU16};
use pkvm_abi::Error;
use pkvm_hyp::mem_protect::{MAX_COUNT, MAX_HOST_PINS, check_pages, kernel};
use pkvm_hyp::sync::{AtomicCell, AtomicFamily, Ordering};
use pkvm_hyp::vmemmap::{HypPage, PageState};

/// `loom`'s atomics as the entry's.
struct Loom;

struct L8(AtomicU8);
struct L16(AtomicU16);

impl AtomicCell<u8> for L8 {
    fn new(v: u8) -> Self {
        L8(AtomicU8::new(v))
    }
    fn load(&self, o: Ordering) -> u8 {
        self.0.load(o)
    }
    fn store(&self, v: u8, o: Ordering) {
        self.0.store(v, o);
    }
}

impl AtomicCell<u16> for L16 {
    fn new(v: u16) -> Self {
        L16(AtomicU16::new(v))
    }
    fn load(&self, o: Ordering) -> u16 {
        self.0.load(o)
    }
    fn store(&self, v: u16, o: Ordering) {
        self.0.store(v, o);
    }
}

impl AtomicFamily for Loom {
    type U8 = L8;
    type U16 = L16;
}

/// A counting transition, as the hypervisor runs it over a range (check every page, then
/// step every page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum K {
    Share,
    Unshare,
    HostPin,
    HostUnpin,
    /// EL2 pins a structure it uses (VM creation).
    HypPin,
    /// EL2 drops that pin (teardown).
    HypUnpin,
}

fn apply<A: AtomicFamily>(k: K, pages: &[HypPage<A>]) -> Result<(), Error> {
    match k {
        K::Share => {
            let mut fresh = false;
            check_pages(pages, |p| kernel::share_check(p, &mut fresh))?;
            for p in pages {
                if fresh {
                    kernel::share_step(p);
                } else {
                    kernel::reshare_step(p);
                }
            }
        }
        K::Unshare => {
            check_pages(pages, kernel::unshare_check)?;
            for p in pages {
                kernel::unshare_step(p);
            }
        }
        K::HostPin => {
            check_pages(pages, kernel::host_pin_check)?;
            pages.iter().for_each(kernel::host_pin_step);
        }
        K::HostUnpin => {
            check_pages(pages, kernel::host_unpin_check)?;
            pages.iter().for_each(kernel::host_unpin_step);
        }
        K::HypPin => {
            check_pages(pages, kernel::hyp_pin_check)?;
            pages.iter().for_each(kernel::hyp_pin_step);
        }
        K::HypUnpin => pages.iter().for_each(kernel::hyp_unpin_step),
    }
    Ok(())
}

/// What a page looks like: (host state, hyp state, share count, EL2 pins, host pins).
type Snap = (PageState, PageState, u16, u16, u8);

fn snap<A: AtomicFamily>(p: &HypPage<A>) -> Snap {
    (
        p.host_state(),
        p.hyp_state(),
        p.share_count(),
        p.refcount(),
        p.host_pins(),
    )
}

/// Which locks a thread takes around its transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Locks {
    /// Host, then hyp: the documented protocol.
    Both,
    /// Only the host lock.
    HostOnly,
    /// Only the hyp lock.
    HypOnly,
}

/// A test: `pages` entries brought to their start by `setup` (run alone), then one thread per
/// element of `threads`, each running its transitions in order over the whole range.
struct Case {
    pages: usize,
    setup: &'static [K],
    threads: &'static [(Locks, &'static [K])],
}

type Observation = (Vec<Vec<Result<(), Error>>>, Vec<Snap>);

/// Every result the sequential orders of `case`'s transitions (each thread's in order) give,
/// with the default build's entries.
fn sequential(case: &Case) -> Vec<Observation> {
    fn go(
        case: &Case,
        pos: &mut Vec<usize>,
        res: &mut Vec<Vec<Result<(), Error>>>,
        pages: &[HypPage],
        out: &mut Vec<Observation>,
    ) {
        let mut done = true;
        for t in 0..case.threads.len() {
            let Some(&k) = case.threads[t].1.get(pos[t]) else {
                continue;
            };
            done = false;
            let saved: Vec<Snap> = pages.iter().map(snap).collect();
            let r = apply(k, pages);
            res[t].push(r);
            pos[t] += 1;
            go(case, pos, res, pages, out);
            pos[t] -= 1;
            res[t].pop();
            // Restore the entries.
            for (p, s) in pages.iter().zip(saved) {
                p.set_host_state(s.0);
                p.set_hyp_state(s.1);
                p.set_share_count(s.2);
                p.set_refcount(s.3);
                p.set_host_pins(s.4);
            }
        }
        if done {
            out.push((res.clone(), pages.iter().map(snap).collect()));
        }
    }
    let pages: Vec<HypPage> = (0..case.pages).map(|_| HypPage::new()).collect();
    for &k in case.setup {
        apply(k, &pages).expect("setup");
    }
    let mut out = Vec::new();
    go(
        case,
        &mut vec![0; case.threads.len()],
        &mut vec![Vec::new(); case.threads.len()],
        &pages,
        &mut out,
    );
    out
}

fn locked<R>(host: &Mutex<()>, hyp: &Mutex<()>, l: Locks, f: impl FnOnce() -> R) -> R {
    let _host = (l != Locks::HypOnly).then(|| host.lock().unwrap());
    let _hyp = (l != Locks::HostOnly).then(|| hyp.lock().unwrap());
    f()
}

/// Runs `case` under `loom` and checks every execution against [`sequential`].
fn model(case: &'static Case) {
    let allowed = Arc::new(sequential(case));
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(move || {
        let pages: Arc<Vec<HypPage<Loom>>> =
            Arc::new((0..case.pages).map(|_| HypPage::new_in()).collect());
        for &k in case.setup {
            apply(k, &pages).expect("setup");
        }
        let host = Arc::new(Mutex::new(()));
        let hyp = Arc::new(Mutex::new(()));
        let handles: Vec<_> = case
            .threads
            .iter()
            .map(|&(l, ks)| {
                let (pages, host, hyp) = (pages.clone(), host.clone(), hyp.clone());
                loom::thread::spawn(move || {
                    ks.iter()
                        .map(|&k| locked(&host, &hyp, l, || apply(k, &pages)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let res: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let obs = (res, pages.iter().map(snap).collect::<Vec<_>>());
        assert!(
            allowed.contains(&obs),
            "not the result of any sequential order: {obs:?}\nallowed: {allowed:?}"
        );
    });
}

const B: Locks = Locks::Both;

/// A page shared to one below the limit: of two shares, exactly one succeeds.
#[test]
fn share_saturates_once() {
    static SETUP: [K; MAX_COUNT as usize - 1] = [K::Share; MAX_COUNT as usize - 1];
    static CASE: Case = Case {
        pages: 1,
        setup: &SETUP,
        threads: &[(B, &[K::Share]), (B, &[K::Share])],
    };
    model(&CASE);
}

/// Host pins near their limit: of two pins, exactly one succeeds; an unpin races them.
#[test]
fn host_pins_saturate_once() {
    static SETUP: [K; MAX_HOST_PINS as usize] = {
        let mut s = [K::HostPin; MAX_HOST_PINS as usize];
        s[0] = K::Share;
        s
    };
    static CASE: Case = Case {
        pages: 1,
        setup: &SETUP,
        threads: &[(B, &[K::HostPin]), (B, &[K::HostPin, K::HostUnpin])],
    };
    model(&CASE);
}

/// A pin and an unshare of a page shared once: pinned and still shared, or unshared and the
/// pin refused — never both.
#[test]
fn pin_vs_unshare() {
    static CASE: Case = Case {
        pages: 1,
        setup: &[K::Share],
        threads: &[(B, &[K::HostPin]), (B, &[K::Unshare])],
    };
    model(&CASE);
}

/// EL2's own pin (VM creation), the host's unpin and an unshare, over two pages.
#[test]
fn hyp_pin_host_unpin_unshare() {
    static CASE: Case = Case {
        pages: 2,
        setup: &[K::Share, K::HostPin],
        threads: &[
            (B, &[K::HypPin, K::HypUnpin]),
            (B, &[K::HostUnpin]),
            (B, &[K::Unshare]),
        ],
    };
    model(&CASE);
}

/// A share and an unshare of a page shared once, and a second share: the count is never lost.
#[test]
fn share_unshare_count() {
    static CASE: Case = Case {
        pages: 2,
        setup: &[K::Share],
        threads: &[(B, &[K::Share, K::Unshare]), (B, &[K::Unshare, K::Share])],
    };
    model(&CASE);
}

/// The check can fail: a pin under the hyp lock alone races an unshare under the host lock
/// alone (each "holds a lock", neither the pair the counters need), and `loom` finds the
/// interleaving in which the page ends unshared yet pinned.
#[test]
fn wrong_lock_is_caught() {
    static CASE: Case = Case {
        pages: 1,
        setup: &[K::Share],
        threads: &[
            (Locks::HypOnly, &[K::HostPin]),
            (Locks::HostOnly, &[K::Unshare]),
        ],
    };
    let r = std::panic::catch_unwind(|| model(&CASE));
    assert!(
        r.is_err(),
        "loom missed a pin racing an unshare without the common lock"
    );
}
