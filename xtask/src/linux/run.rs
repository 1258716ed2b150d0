//! Booting Linux under pkvm-rs: `cargo xtask run --host linux` and the `cargo xtask test` step.

use super::{LinuxFiles, MEASURE_PARAM, boot_bench, cmdline, default_options, prepare};
use crate::cli::LinuxRun;
use crate::images::{build_el2, has_image_magic};
use crate::qemu::{self, Images, Outcome, RunOptions};
use crate::{Error, failed};
use std::fs;
use std::path::Path;
use std::time::Duration;

/// Checks the kernel is an arm64 `Image`.
pub(super) fn check_image(kernel: &Path) -> Result<(), Error> {
    let data = fs::read(kernel).or_else(|e| failed(format!("{}: {e}", kernel.display())))?;
    if !has_image_magic(&data) {
        return failed(format!(
            "{} is not an uncompressed arm64 Image (no ARM\\x64 magic)",
            kernel.display()
        ));
    }
    Ok(())
}

/// QEMU options for Linux under pkvm-rs: `o.extra` gets `-initrd` and the Linux `-append`
/// (QEMU keeps the last `-append`, so it replaces the test host's).
pub(super) fn run_options(
    files: &LinuxFiles,
    mut o: RunOptions,
    extra_cmdline: &str,
) -> RunOptions {
    let mut cmd = cmdline(o.smp);
    if !extra_cmdline.is_empty() {
        cmd.push(' ');
        cmd.push_str(extra_cmdline);
    }
    let mut extra = vec![
        "-initrd".to_string(),
        files.initrd.display().to_string(),
        "-append".to_string(),
        cmd,
    ];
    extra.append(&mut o.extra);
    o.extra = extra;
    o
}

/// Builds EL2 and boots Linux under it; `Ok` iff `PKVM-RESULT pass`.
fn run(
    files: &LinuxFiles,
    o: &RunOptions,
    extra_cmdline: &str,
) -> Result<(Outcome, Duration), Error> {
    check_image(&files.kernel)?;
    let el2 = build_el2(o.debug_el2)?;
    let images = Images {
        el2,
        host: files.kernel.clone(),
    };
    let opts = run_options(files, o.clone(), extra_cmdline);
    Ok(qemu::run(&images, &opts))
}

/// `cargo xtask run --host linux [--kernel Image] [--initrd file] [--measure] [run options]`,
/// and `--bench-linux [--reps N]`. `--measure` makes `/init` ask the driver for the EL2
/// instruction counts of share/unshare (meaningful with `--icount`, which QEMU runs well only
/// with `--smp 1`).
pub fn cmd_run(r: &LinuxRun) -> Result<(), Error> {
    let o = &r.opts;
    if o.scenario == super::vmm::SCENARIO {
        return super::vmm::cmd_run(o);
    }
    crate::prereq::ensure_targets()?;
    crate::prereq::ensure_qemu()?;
    let files = prepare(r.kernel.as_deref(), r.initrd.as_deref())?;
    if let Some(reps) = r.bench_reps {
        return boot_bench::bench_boot(&files, o, reps);
    }
    let (outcome, ran) = run(&files, o, if r.measure { MEASURE_PARAM } else { "" })?;
    println!(
        "xtask: Linux under pkvm-rs: {} ({:.1} s in QEMU)",
        outcome.describe(o.timeout),
        ran.as_secs_f64()
    );
    if outcome.passed() {
        Ok(())
    } else {
        failed("run failed")
    }
}

/// The `cargo xtask test` step: Debian's kernel with the driver, `-smp 4`, `-cpu max`, 1 GiB,
/// under pkvm-rs; must print `PKVM-RESULT pass` within 180 s.
pub fn system_test() -> Result<String, Error> {
    let files = prepare(None, None)?;
    let o = default_options();
    let (outcome, ran) = run(&files, &o, "")?;
    verdict(&outcome, ran, o.timeout)
}

/// A system test's verdict: its outcome and QEMU time, or a failure wanting a pass.
///
/// # Errors
/// The run did not pass.
pub fn verdict(
    outcome: &qemu::Outcome,
    ran: std::time::Duration,
    timeout: std::time::Duration,
) -> Result<String, Error> {
    let got = outcome.describe(timeout);
    if outcome.passed() {
        Ok(format!("{got} ({:.1} s in QEMU)", ran.as_secs_f64()))
    } else {
        failed(format!("{got}; wanted PKVM-RESULT pass"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_command_line() {
        let files = LinuxFiles {
            kernel: "/c/vmlinuz".into(),
            initrd: "/c/initramfs.cpio".into(),
        };
        let images = Images {
            el2: "/t/pkvm-el2.bin".into(),
            host: files.kernel.clone(),
        };
        let o = RunOptions {
            extra: vec!["-s".into()],
            ..default_options()
        };
        let a = qemu::args(&images, &run_options(&files, o, MEASURE_PARAM));
        assert_eq!(
            qemu::shell_line(qemu::QEMU, &a),
            "qemu-system-aarch64 -M virt,virtualization=on,gic-version=3,secure=off \
             -cpu max,pauth-impdef=on -smp 4 -m 1G -nographic -no-reboot -nic none \
             -kernel /t/pkvm-el2.bin \
             -device loader,file=/c/vmlinuz,addr=0x40200000,force-raw=on \
             -append pkvm.scenario=selftest -initrd /c/initramfs.cpio \
             -append 'console=ttyAMA0 earlycon=pl011,0x9000000 panic=-1 rdinit=/init \
             pkvm.cpus=4 pkvm.measure' -s"
        );
    }
}
