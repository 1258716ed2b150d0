//! `cargo xtask run --host linux --bench-linux [--reps N]`: wall time from QEMU's start to
//! `/init` (its `PKVM-INIT` line) and to QEMU's exit, for the same kernel and initramfs booted
//! three ways: directly by QEMU's boot stub, under pkvm-rs, and under Linux's own pKVM
//! (`kvm-arm.mode=protected`).

use super::run::{check_image, run_options};
use super::{BENCH_PARAM, INIT_MARKER, LinuxFiles, cmdline};
use crate::images::build_el2;
use crate::qemu::{self, Images, RESULT_PREFIX, RunOptions};
use crate::{Error, failed};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Starts QEMU with `args`, its stdout read by a thread that sends `event(line)` for each line
/// where it is `Some`. The caller kills the child and joins the thread.
///
/// # Errors
/// QEMU did not start.
pub(super) fn spawn_watched<T: Send + 'static>(
    args: &[String],
    event: impl Fn(&str) -> Option<T> + Send + 'static,
) -> Result<(Child, mpsc::Receiver<T>, thread::JoinHandle<()>), Error> {
    let mut child = Command::new(qemu::QEMU)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .or_else(|e| failed(format!("cannot start QEMU: {e}")))?;
    let out = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(e) = event(&line) {
                let _ = tx.send(e);
            }
        }
    });
    Ok((child, rx, reader))
}

/// One timed boot: QEMU start to the `PKVM-INIT` line, and to QEMU's exit.
fn timed_boot(args: &[String], timeout: Duration) -> Result<(f64, f64, bool), Error> {
    let start = Instant::now();
    let pass_line = format!("{RESULT_PREFIX} pass");
    let (mut child, rx, reader) = spawn_watched(args, move |line| {
        if line.contains(INIT_MARKER) {
            Some(1u8)
        } else if line.starts_with(&pass_line) {
            Some(2u8)
        } else {
            None
        }
    })?;
    let mut init = None;
    let mut pass = false;
    while let Ok(ev) = rx.recv_timeout(timeout.saturating_sub(start.elapsed())) {
        match ev {
            1 if init.is_none() => init = Some(start.elapsed().as_secs_f64()),
            2 => pass = true,
            _ => {}
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let total = start.elapsed().as_secs_f64();
    Ok((init.unwrap_or(f64::NAN), total, pass && init.is_some()))
}

/// Boot-to-`/init` and whole-run wall time of the same kernel and initramfs: entered directly
/// by QEMU's boot stub, under pkvm-rs, and under Linux's own pKVM (`kvm-arm.mode=protected`).
pub(super) fn bench_boot(files: &LinuxFiles, o: &RunOptions, reps: u32) -> Result<(), Error> {
    check_image(&files.kernel)?;
    let el2 = build_el2(o.debug_el2)?;
    let pkvm_rs = {
        let images = Images {
            el2,
            host: files.kernel.clone(),
        };
        let opts = run_options(files, o.clone(), BENCH_PARAM);
        qemu::args(&images, &opts)
    };
    let direct = |extra: &str| {
        let cpu = if o.cpu == "max" {
            "max,pauth-impdef=on".to_string()
        } else {
            o.cpu.clone()
        };
        let mut a: Vec<String> = [
            "-M",
            qemu::MACHINE,
            "-cpu",
            &cpu,
            "-smp",
            &o.smp.to_string(),
            "-m",
            &o.mem,
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-kernel",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push(files.kernel.display().to_string());
        a.extend(["-initrd".into(), files.initrd.display().to_string()]);
        a.extend([
            "-append".into(),
            format!("{} {BENCH_PARAM} {extra}", cmdline(o.smp)),
        ]);
        a
    };
    let modes = [
        ("direct (QEMU boot stub, Linux at EL2)", direct("")),
        ("under pkvm-rs", pkvm_rs),
        (
            "Linux's pKVM (kvm-arm.mode=protected)",
            direct("kvm-arm.mode=protected"),
        ),
    ];
    let mut results = Vec::new();
    for (name, args) in &modes {
        println!(
            "xtask: bench {name}: {}",
            qemu::shell_line(qemu::QEMU, args)
        );
        let mut runs = Vec::new();
        for r in 0..reps {
            let (init, total, ok) = timed_boot(args, o.timeout)?;
            println!("xtask:   rep {r}: /init at {init:.2} s, whole run {total:.2} s, pass={ok}");
            if !ok {
                return failed(format!("bench boot {name} did not reach /init and pass"));
            }
            runs.push((init, total));
        }
        let mean = |f: fn(&(f64, f64)) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
        results.push((*name, mean(|r| r.0), mean(|r| r.1)));
    }
    println!(
        "\nLinux boot, {} CPUs, {}, -cpu {}, mean of {reps}:",
        o.smp, o.mem, o.cpu
    );
    let base = results[0].1;
    for (name, init, total) in &results {
        println!(
            "  {name:<42} /init {init:6.2} s ({:5.3}x direct)   whole run {total:6.2} s",
            init / base
        );
    }
    Ok(())
}
