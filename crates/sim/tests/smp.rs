//! Several simulated CPUs (threads) share, unshare, pin and fault at the same time on
//! overlapping ranges: the same pages, adjacent pages, one refcounted page. Every call must
//! return a legal result, and once every thread has undone what it did, nothing may be left:
//! no share count, no EL2 mapping of host memory, no table page, no stale TLB entry.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pkvm_abi::{Error, HostHcall, PAGE_SHIFT, Stat};
use pkvm_sim::{SimConfig, with_machine};
use pkvm_spec::Outcome;

const THREADS: u64 = 4;
const ROUNDS: u64 = 2_000;

/// How long a thread retries an unshare refused with `EBUSY` (another thread's pin) before it
/// fails: pins are dropped at once, so only a bug (or a dead thread) makes it wait this long.
const BUSY_LIMIT: Duration = Duration::from_secs(20);

/// Raised when a thread panics, so that the others stop instead of waiting forever for a pin
/// the dead thread will never drop (the test fails instead of timing out).
struct AbortOnPanic<'a>(&'a AtomicBool);

impl Drop for AbortOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

#[test]
fn concurrent_share_unshare_leaves_nothing_behind() {
    with_machine(&SimConfig::sized(16), |m| {
        let m = &*m;
        let free0 = m.hyp.stat(Stat::PoolFreePages);
        let tables0 = m.hyp.stat(Stat::TablePages);
        let base = (m.config().ram[0].0 >> PAGE_SHIFT) + 0x400;
        let abort = &AtomicBool::new(false);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                s.spawn(move || {
                    let _guard = AbortOnPanic(abort);
                    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ t;
                    for i in 0..ROUNDS {
                        if abort.load(Ordering::Relaxed) {
                            return;
                        }
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        // Same page for everyone, overlapping ranges, adjacent pages per thread.
                        let (pfn, nr) = match rng % 4 {
                            0 => (base, 1),
                            1 => (base + (rng >> 8) % 8, 1 + (rng >> 16) % 8),
                            2 => (base + 16 + t, 1),
                            _ => (base + 512 - 2, 4), // crosses a 2 MiB table boundary
                        };
                        let shared = m.call(HostHcall::HostShareHyp, &[pfn, nr]);
                        assert!(
                            matches!(shared, Ok(()) | Err(Error::Busy)),
                            "share: {shared:?}"
                        );
                        if shared.is_ok() {
                            if i % 3 == 0 && m.call(HostHcall::DebugPin, &[pfn, nr]).is_ok() {
                                // While pinned by us, an unshare of this range must be refused
                                // or succeed only because someone else holds another share.
                                assert_eq!(m.call(HostHcall::DebugUnpin, &[pfn, nr]), Ok(()));
                            }
                            let pa = pfn << PAGE_SHIFT;
                            assert_eq!(m.host_access(pa, true), Outcome::Access);
                            // Unshare; EBUSY only if another thread has a pin right now.
                            let start = Instant::now();
                            loop {
                                match m.call(HostHcall::HostUnshareHyp, &[pfn, nr]) {
                                    Ok(()) => break,
                                    Err(Error::Busy) if abort.load(Ordering::Relaxed) => return,
                                    Err(Error::Busy) => {
                                        assert!(
                                            start.elapsed() < BUSY_LIMIT,
                                            "thread {t}: unshare of {pfn:#x}+{nr} still EBUSY \
                                             after {BUSY_LIMIT:?}"
                                        );
                                        std::thread::yield_now();
                                    }
                                    Err(e) => panic!("unshare of what this thread shared: {e:?}"),
                                }
                            }
                        }
                        // Faults on fresh MMIO (below fw_cfg, which EL2 hides) and memory.
                        assert_eq!(
                            m.host_access(0x0900_0000 + (rng % 32) * 0x1000, false),
                            Outcome::Access
                        );
                        assert_eq!(
                            m.host_access(m.config().ram[0].0 + (rng % 0x800) * 0x1000, false),
                            Outcome::Access
                        );
                    }
                });
            }
        });
        assert_eq!(m.hyp.stat(Stat::SharedPages), 0);
        assert_eq!(m.hyp.stat(Stat::HypMappedHostPages), 0);
        assert_eq!(m.hyp.stat(Stat::PoolFreePages), free0);
        assert_eq!(m.hyp.mmops_errors(), 0);
        assert!(m.hyp.pools_free_memory_is_zero());
        m.check_invariants().unwrap();
        // Host stage-2 tables may have grown (faults); EL2's own pool is back where it was.
        assert!(m.hyp.stat(Stat::TablePages) >= tables0);
        let spec = pkvm_spec::Checker::new(m.spec_machine());
        assert_eq!(
            m.abstract_state().unwrap(),
            *spec.spec().state(),
            "state differs from boot"
        );
    });
}
