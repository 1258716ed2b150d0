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

/// Wall-clock figures of [`REPS`] boots of each kind: (QEMU start → `/init` in seconds, the
/// guest's uptime there).
#[derive(Debug, Default)]
pub struct Walls {
    /// The kernel booted directly by QEMU at EL1.
    pub direct: Vec<(f64, f64)>,
    /// The same kernel as a protected guest of the bare-metal test host.
    pub bare_metal: Vec<(f64, f64)>,
}

impl Walls {
    /// The means of `which`: (wall, uptime).
    pub fn mean(which: &[(f64, f64)]) -> (f64, f64) {
        let w: Vec<f64> = which.iter().map(|x| x.0).collect();
        let u: Vec<f64> = which.iter().map(|x| x.1).collect();
        (mean(&w), mean(&u))
    }
}

/// The bare-metal run of one protected boot (no crash test first).
fn under_options(o: &RunOptions, bundle: &std::path::Path) -> RunOptions {
    RunOptions {
        scenario: crate::LINUX_GUEST.into(),
        guests: Some(1),
        parts: Some("boots".into()),
        initrd: Some(bundle.to_path_buf()),
        icount: false,
        timeout: Duration::from_secs(300),
        ..o.clone()
    }
}

/// Boots the guest kernel [`REPS`] times directly and [`REPS`] times under the bare-metal host.
///
/// # Errors
/// A boot that did not reach `/init`, a missing kernel, a failed build.
pub fn walls(o: &RunOptions) -> Result<Walls, Error> {
    let b = files()?;
    let images = build_image_set(false)?;
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
    let pkvm = qemu::args(&images, &under_options(o, &b.bundle));
    let timeout = Duration::from_secs(300);
    let mut w = Walls::default();
    for i in 1..=REPS {
        w.direct.push(time_to(&direct, GUEST_MARKER, timeout)?);
        w.bare_metal.push(time_to(&pkvm, GUEST_MARKER, timeout)?);
        let (d, p) = (
            w.direct[w.direct.len() - 1],
            w.bare_metal[w.bare_metal.len() - 1],
        );
        println!(
            "xtask: boot {i}: direct {:.2} s ({:.2} s uptime at /init), under pkvm-rs {:.2} s \
             ({:.2} s uptime)",
            d.0, d.1, p.0, p.1
        );
    }
    Ok(w)
}

/// The benchmark; see the module documentation.
///
/// # Errors
/// A boot that did not reach `/init`, a missing kernel, a failed build.
pub fn bench(o: &RunOptions) -> Result<(), Error> {
    let w = walls(o)?;
    let b = files()?;
    let images = build_image_set(false)?;
    let under = under_options(o, &b.bundle);
    let d: Vec<f64> = w.direct.iter().map(|x| x.0).collect();
    let du: Vec<f64> = w.direct.iter().map(|x| x.1).collect();
    let p: Vec<f64> = w.bare_metal.iter().map(|x| x.0).collect();
    let pu: Vec<f64> = w.bare_metal.iter().map(|x| x.1).collect();
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
