//! `cargo xtask bench --scenario linux-guest`: the Linux guest's boot, measured.
//!
//! - **Wall clock** (noisy: the development machine is shared; [`REPS`] boots each, the mean):
//!   QEMU's start to the guest `/init`'s `PKVM-GUEST-INIT` line, for the same kernel and
//!   initramfs booted directly by QEMU at EL1 (its own PL011 console and device tree, 112 MiB),
//!   and as a guest under pkvm-rs (EL2's boot, the test host's, the VMM's copy of the kernel,
//!   then the guest's boot; one protected boot, no crash test first).
//! - **EL2 instructions** (one more pkvm-rs boot under `-icount shift=0`, the host's EL2-only
//!   cycle counter around the guest's whole run) and the exits by reason, from the scenario's
//!   `PKVM-LINUX-GUEST-BENCH` line.

use super::guest::{GUEST_MARKER, files};
use crate::images::build_image_set;
use crate::qemu::{self, RunOptions};
use crate::{Error, failed};
use std::time::{Duration, Instant};

/// Boots of each kind for the wall-clock figures.
pub const REPS: u32 = 3;

/// QEMU start to the first line containing `marker`, in seconds (QEMU is killed then), and
/// the guest's own uptime the line reports (`... at <s> s uptime`: the kernel's clock, from its
/// timekeeping's start).
fn time_to(args: &[String], marker: &str, timeout: Duration) -> Result<(f64, f64), Error> {
    let start = Instant::now();
    let marker = marker.to_string();
    let (mut child, rx, reader) = super::boot_bench::spawn_watched(args, move |line| {
        line.contains(&marker).then(|| {
            line.split(" at ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        })
    })?;
    let got = rx.recv_timeout(timeout).ok();
    let t = start.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    if let Some(uptime) = got {
        Ok((t, uptime))
    } else {
        failed(format!(
            "no {GUEST_MARKER} line within {} s",
            timeout.as_secs()
        ))
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The benchmark; see the module documentation.
///
/// # Errors
/// A boot that did not reach `/init`, a missing kernel, a failed build.
pub fn bench(o: &RunOptions) -> Result<(), Error> {
    let b = files()?;
    let images = build_image_set(false)?;
    let under = RunOptions {
        scenario: crate::LINUX_GUEST.into(),
        guests: Some(1),
        parts: Some("boots".into()),
        initrd: Some(b.bundle.clone()),
        icount: false,
        timeout: Duration::from_secs(300),
        ..o.clone()
    };
    let cpu = if o.cpu == "max" {
        "max,pauth-impdef=on".to_string()
    } else {
        o.cpu.clone()
    };
    let direct: Vec<String> = [
        "-M",
        "virt,gic-version=3",
        "-cpu",
        &cpu,
        "-m",
        "112M",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
        "-kernel",
        &b.kernel.display().to_string(),
        "-initrd",
        &b.initramfs.display().to_string(),
        "-append",
        "console=ttyAMA0 earlycon=pl011,0x9000000 rdinit=/init panic=-1 cma=0",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let pkvm = qemu::args(&images, &under);
    let timeout = Duration::from_secs(300);
    let (mut d, mut p, mut du, mut pu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 1..=REPS {
        let (t, u) = time_to(&direct, GUEST_MARKER, timeout)?;
        d.push(t);
        du.push(u);
        let (t, u) = time_to(&pkvm, GUEST_MARKER, timeout)?;
        p.push(t);
        pu.push(u);
        println!(
            "xtask: boot {i}: direct {:.2} s ({:.2} s uptime at /init), under pkvm-rs {:.2} s \
             ({:.2} s uptime)",
            d[d.len() - 1],
            du[du.len() - 1],
            p[p.len() - 1],
            pu[pu.len() - 1]
        );
    }
    let counted = RunOptions {
        icount: true,
        ..under
    };
    let (outcome, _, lines) = qemu::run_capture(&images, &counted);
    if !outcome.passed() {
        return failed(format!(
            "the -icount boot: {}",
            outcome.describe(counted.timeout)
        ));
    }
    let Some(line) = lines
        .iter()
        .find(|l| l.starts_with("PKVM-LINUX-GUEST-BENCH"))
    else {
        return failed("the -icount boot printed no PKVM-LINUX-GUEST-BENCH line");
    };
    let field = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let el2 = field("el2_instructions");
    let exits = field("exits_mmio") + field("exits_hvc") + field("exits_idle") + field("exits_irq");
    println!(
        "\nLinux guest boot (-cpu {}, 112 MiB, 1 vCPU, protected):\n",
        o.cpu
    );
    println!("| figure | value |");
    println!("|---|---:|");
    println!(
        "| QEMU start → guest `/init`, direct boot at EL1 (mean of {REPS}) | {:.2} s |",
        mean(&d)
    );
    println!(
        "| the same under pkvm-rs (EL2, host, VMM, guest) (mean of {REPS}) | {:.2} s |",
        mean(&p)
    );
    println!("| ratio | {:.2}× |", mean(&p) / mean(&d));
    println!(
        "| the guest kernel's own uptime at `/init`: direct / under pkvm-rs (mean of {REPS}) | \
         {:.2} s / {:.2} s ({:.2}×) |",
        mean(&du),
        mean(&pu),
        mean(&pu) / mean(&du)
    );
    println!(
        "| exits per boot (to power-off): MMIO / of which UART / hypercall / WFI / IRQ | {} / {} / {} / {} / {} |",
        field("exits_mmio"),
        field("exits_uart"),
        field("exits_hvc"),
        field("exits_idle"),
        field("exits_irq")
    );
    println!(
        "| interrupts injected through list registers | {} |",
        field("injected")
    );
    println!("| EL2 instructions for the whole guest run (-icount) | {el2} |");
    println!(
        "| EL2 instructions per exit (mean over all exits) | {} |",
        el2 / exits.max(1)
    );
    Ok(())
}
