//! Simulator benchmarks of the ownership core: share+unshare of 1, 16 and 512 pages (reported
//! per page), and the host stage-2 fault path. Run with `cargo bench -p pkvm-sim`.
//!
//! These time the portable code on this machine's CPU with simulated memory; the EL2
//! instruction counts on QEMU come from `cargo xtask bench`.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pkvm_abi::{HostHcall, PAGE_SHIFT};
use pkvm_sim::{SimConfig, with_machine};

fn share_unshare(c: &mut Criterion) {
    with_machine(&SimConfig::sized(64), |m| {
        let pfn = (m.config().ram[0].0 >> PAGE_SHIFT) + 0x1000;
        let mut g = c.benchmark_group("share+unshare");
        for nr in [1u64, 16, 512] {
            g.throughput(Throughput::Elements(nr));
            g.bench_with_input(BenchmarkId::from_parameter(nr), &nr, |b, &nr| {
                b.iter(|| {
                    m.call(HostHcall::HostShareHyp, &[pfn, nr]).unwrap();
                    m.call(HostHcall::HostUnshareHyp, &[pfn, nr]).unwrap();
                });
            });
        }
        g.finish();
        c.bench_function("second share (refcount path)", |b| {
            m.call(HostHcall::HostShareHyp, &[pfn, 1]).unwrap();
            b.iter(|| {
                m.call(HostHcall::HostShareHyp, &[pfn, 1]).unwrap();
                m.call(HostHcall::HostUnshareHyp, &[pfn, 1]).unwrap();
            });
            m.call(HostHcall::HostUnshareHyp, &[pfn, 1]).unwrap();
        });
    });
}

fn host_fault(c: &mut Criterion) {
    with_machine(&SimConfig::sized(64), |m| {
        // First touch of an MMIO address: the fault path maps the largest block of the gap.
        // The mapping is dropped (untimed) before the next iteration.
        c.bench_function("host stage-2 fault (first touch)", |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let r = m.hyp.handle_host_mem_abort(
                        pkvm_arch::addr::Ipa(0x0900_0000),
                        pkvm_hyp::host_fault::FaultClass::Translation,
                    );
                    t += start.elapsed();
                    assert_eq!(r, pkvm_hyp::host_fault::HostFault::Mapped);
                    m.hyp.host_stage2_unmap_mmio();
                }
                t
            });
        });
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500)).sample_size(30);
    targets = share_unshare, host_fault
}
criterion_main!(benches);
