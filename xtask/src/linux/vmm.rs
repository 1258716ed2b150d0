//! `cargo xtask run --host linux --scenario vmm`: Debian's Linux as pkvm-rs's host starts Linux
//! guests itself — `linux/pkvm.ko` (`/dev/pkvm`) and `pkvm-vmm` (the workspace's user-space
//! VMM, built for `aarch64-unknown-linux-musl`) in the host's initramfs, with the guest's
//! kernel (Debian's, the same `Image` as the host's) and initramfs
//! (`xtask/templates/guest-init.sh`) as files.
//!
//! `/init` (`xtask/templates/vmm-init.sh`): loads the module; starts a host process whose
//! progress it checks; runs two protected 2-vCPU guests at once and kills the second VMM with
//! `SIGKILL` once its guest has printed its banner; runs [`SEQUENTIAL`] guests one after the
//! other (protected and not, 1 and 2 vCPUs); checks refusals; compares EL2's leak counters
//! before and after; prints `N passed, M failed` and `PKVM-RESULT pass|fail`.
//!
//! With `pkvm.bench` on the command line (`cargo xtask bench --scenario vmm`) it runs
//! `pkvm-vmm bench` (the run round trip through the module) and one timed protected boot instead.

use super::driver;
use super::guest::{GUEST_MARKER, GUEST_RESULT};
use super::initramfs;
use super::run::{check_image, verdict};
use super::{BENCH_PARAM, INIT_MARKER};
use crate::images::build_el2;
use crate::qemu::{self, Images, Outcome, RESULT_PREFIX, RunOptions};
use crate::{Error, cargo, failed, run_cmd, target_dir};
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

/// The scenario's name.
pub const SCENARIO: &str = "vmm";
/// Guests booted one after the other (`--guests N` changes it).
pub const SEQUENTIAL: u64 = 10;
/// Each guest's RAM (`pkvm-vmm --mem`): the most one VM has (EL2's memcache).
const GUEST_MEM: &str = "112M";
/// Round trips `pkvm-vmm bench` measures.
const BENCH_ITERATIONS: u64 = 2000;
/// The user-space target.
pub const VMM_TARGET: &str = "aarch64-unknown-linux-musl";
/// `/init`'s template.
const INIT_TEMPLATE: &str = include_str!("../../templates/vmm-init.sh");

/// `/init` for `sequential` guests; `measure` loads the module with `measure=1`.
fn init_script(sequential: u64, measure: bool) -> String {
    initramfs::render(
        INIT_TEMPLATE,
        &[
            ("RESULT", RESULT_PREFIX),
            ("INIT_MARKER", INIT_MARKER),
            ("BENCH_PARAM", BENCH_PARAM),
            ("GUEST_MARKER", GUEST_MARKER),
            ("GUEST_RESULT", GUEST_RESULT),
            ("GUEST_MEM", GUEST_MEM),
            ("SEQUENTIAL", &sequential.to_string()),
            ("BENCH_ITERATIONS", &BENCH_ITERATIONS.to_string()),
            ("MODULE_PARAMS", if measure { "measure=1" } else { "" }),
        ],
    )
}

/// Builds `pkvm-vmm` for the Linux host (static musl, release, no debug info); its path.
///
/// # Errors
/// The build failed.
pub fn build_vmm() -> Result<PathBuf, Error> {
    run_cmd(
        cargo()
            .args([
                "build",
                "--release",
                "-p",
                "pkvm-vmm",
                "--target",
                VMM_TARGET,
            ])
            .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo"),
    )?;
    Ok(target_dir()
        .join(VMM_TARGET)
        .join("release")
        .join("pkvm-vmm"))
}

/// The host's kernel and the scenario's initramfs (module, VMM, guest), built or cached.
fn prepare(sequential: u64, measure: bool) -> Result<(PathBuf, PathBuf), Error> {
    let (abi, root) = super::debian_root()?;
    let kernel = root.join(format!("boot/vmlinuz-{abi}-arm64"));
    check_image(&kernel)?;
    let modules = driver::build(&abi, &root)?;
    let vmm = build_vmm()?;
    let g = super::guest::files()?;
    let read = |p: &PathBuf| fs::read(p).or_else(|e| failed(format!("{}: {e}", p.display())));
    let extra = [
        ("bin/pkvm-vmm", read(&vmm)?),
        ("guest/Image", read(&g.kernel)?),
        ("guest/initramfs.cpio", read(&g.initramfs)?),
    ];
    let name = if measure {
        "initramfs-vmm-measure.cpio"
    } else {
        "initramfs-vmm.cpio"
    };
    let initrd = initramfs::build(
        &abi,
        &root,
        &modules,
        &init_script(sequential, measure),
        &extra,
        name,
    )?;
    Ok((kernel, initrd))
}

/// QEMU options: Debian's kernel as the host, the scenario's initramfs, its own command line;
/// `bench`: the benchmark's mode, with that many timed guest boots.
fn options(o: &RunOptions, initrd: &std::path::Path, bench: Option<u32>) -> RunOptions {
    let mut cmd = super::cmdline(o.smp);
    if let Some(boots) = bench {
        cmd.push_str(&format!(" {BENCH_PARAM} pkvm.boots={boots}"));
    }
    let mut extra = vec![
        "-initrd".to_string(),
        initrd.display().to_string(),
        "-append".to_string(),
        cmd,
    ];
    extra.extend(o.extra.iter().cloned());
    RunOptions { extra, ..o.clone() }
}

/// Boots the scenario: `Ok` with its outcome and QEMU time.
///
/// # Errors
/// A build or fetch failed.
pub fn boot(o: &RunOptions, sequential: u64) -> Result<(Outcome, Duration), Error> {
    let (outcome, ran, _) = boot_capture(o, sequential, None, false)?;
    Ok((outcome, ran))
}

/// [`boot`] with the console's lines; `bench`: the benchmark's mode with that many boots,
/// `measure`: the module counts EL2 instructions.
fn boot_capture(
    o: &RunOptions,
    sequential: u64,
    bench: Option<u32>,
    measure: bool,
) -> Result<(Outcome, Duration, Vec<String>), Error> {
    crate::prereq::ensure_targets()?;
    let (kernel, initrd) = prepare(sequential, measure)?;
    let images = Images {
        el2: build_el2(o.debug_el2)?,
        host: kernel,
    };
    Ok(qemu::run_capture(&images, &options(o, &initrd, bench)))
}

/// `key=value` of a `PKVM-VMM-BENCH` line, as a number.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// `cargo xtask bench --scenario vmm`: the vCPU run round trip through `/dev/pkvm` (EL2
/// instructions with the module's `measure=1`; all instructions from the virtual counter under
/// `-icount shift=0`, where one instruction is one nanosecond), on one host CPU; then the boot
/// of a protected 1-vCPU guest from the Linux host ([`guest_bench::REPS`] boots: `pkvm-vmm`'s
/// start to the guest's `/init`, and the guest's own uptime there), beside the same kernel
/// booted directly by QEMU and as a guest of the bare-metal host.
///
/// # Errors
/// A boot failed or printed no figures.
pub fn bench(o: &RunOptions) -> Result<(), Error> {
    use super::guest_bench::{self, REPS, Walls};
    let counted = RunOptions {
        smp: 1,
        icount: true,
        timeout: Duration::from_secs(600),
        ..o.clone()
    };
    let (outcome, _, lines) = boot_capture(&counted, 0, Some(0), true)?;
    if !outcome.passed() {
        return failed(format!(
            "the -icount boot: {}",
            outcome.describe(counted.timeout)
        ));
    }
    let mut trips = Vec::new();
    for l in lines.iter().filter(|l| l.starts_with("PKVM-VMM-BENCH")) {
        let (Some(ns), Some(el2)) = (
            field(l, "ns_per_round_trip"),
            field(l, "el2_instructions_per_round_trip"),
        ) else {
            return failed(format!("unreadable bench line: {l}"));
        };
        trips.push((
            l.contains("protected=true"),
            l.contains("vgic=true"),
            ns,
            el2,
        ));
    }
    if trips.len() != 4 {
        return failed(format!("{} PKVM-VMM-BENCH lines, wanted 4", trips.len()));
    }
    let timed = RunOptions {
        smp: 4,
        icount: false,
        timeout: Duration::from_secs(900),
        ..o.clone()
    };
    let (outcome, _, lines) = boot_capture(&timed, 0, Some(REPS), false)?;
    if !outcome.passed() {
        return failed(format!(
            "the timed boots: {}",
            outcome.describe(timed.timeout)
        ));
    }
    let mut linux_host = Vec::new();
    for k in 1..=REPS {
        let p = format!("b{k}| ");
        let vmm = lines.iter().find_map(|l| {
            let rest = l.strip_prefix(&p)?.strip_prefix("pkvm-vmm: '")?;
            let ms = rest.split(" after ").nth(1)?.strip_suffix(" ms")?;
            ms.parse::<f64>().ok()
        });
        let uptime = lines.iter().find_map(|l| {
            let rest = l.strip_prefix(&p)?;
            rest.contains(GUEST_MARKER).then_some(())?;
            rest.split(" at ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        });
        match (vmm, uptime) {
            (Some(ms), Some(u)) => linux_host.push((ms / 1000.0, u)),
            _ => return failed(format!("boot b{k}: no timing lines")),
        }
    }
    let w = guest_bench::walls(o)?;
    let (d, b, l) = (
        Walls::mean(&w.direct),
        Walls::mean(&w.bare_metal),
        Walls::mean(&linux_host),
    );
    println!("\nLinux host, /dev/pkvm, pkvm-vmm (-cpu {}):\n", o.cpu);
    println!("| figure | value |");
    println!("|---|---:|");
    for (protected, vgic, ns, el2) in &trips {
        let kind = if *protected {
            "protected"
        } else {
            "non-protected"
        };
        let gic = if *vgic { "on" } else { "off" };
        println!(
            "| vCPU run round trip (MMIO read) through the module, {kind}, virtual GIC {gic}: \
             all instructions / EL2 instructions (-icount, 1 CPU) | {ns} / {el2} |"
        );
    }
    println!(
        "| guest boot to `/init`, direct QEMU boot: QEMU start → `/init` (mean of {REPS}) | \
         {:.2} s |",
        d.0
    );
    println!(
        "| the same guest from the bare-metal test host: QEMU start → `/init` | {:.2} s |",
        b.0
    );
    println!(
        "| the same guest from the Linux host: `pkvm-vmm` start → `/init` (host on 4 CPUs) | \
         {:.2} s ({:.2}× direct) |",
        l.0,
        l.0 / d.0
    );
    println!(
        "| the guest kernel's own uptime at `/init`: direct / bare-metal host / Linux host | \
         {:.2} / {:.2} / {:.2} s |",
        d.1, b.1, l.1
    );
    Ok(())
}

/// `cargo xtask run --host linux --scenario vmm [--guests N]`.
///
/// # Errors
/// The run failed.
pub fn cmd_run(o: &RunOptions) -> Result<(), Error> {
    let o = RunOptions {
        timeout: o.timeout.max(Duration::from_secs(900)),
        ..o.clone()
    };
    let (outcome, ran) = boot(&o, o.guests.unwrap_or(SEQUENTIAL))?;
    println!(
        "xtask: Linux host running guests through /dev/pkvm: {}",
        verdict(&outcome, ran, o.timeout).unwrap_or_else(|e| e.0)
    );
    if outcome.passed() {
        Ok(())
    } else {
        failed("run failed")
    }
}

/// The system test: the whole scenario (2 guests at once, one killed, 10 in sequence).
///
/// # Errors
/// The run failed.
pub fn system_test() -> Result<String, Error> {
    let o = RunOptions {
        timeout: Duration::from_secs(900),
        ..super::default_options()
    };
    let (outcome, ran) = boot(&o, SEQUENTIAL)?;
    verdict(&outcome, ran, o.timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_is_complete() {
        let s = init_script(3, true);
        assert!(!s.contains("{{"), "{s}");
        assert!(s.contains("insmod /pkvm.ko measure=1 ||"), "{s}");
        assert!(s.contains("n=3\n"), "{s}");
        assert!(s.contains("--mem 112M"), "{s}");
        assert!(s.contains("grep -q 'PKVM-GUEST-RESULT pass'"), "{s}");
        assert!(
            s.ends_with("echo \"PKVM-RESULT pass\"\npoweroff -f\nsleep 30\n"),
            "{s}"
        );
        assert!(init_script(10, false).contains("insmod /pkvm.ko  ||"));
    }
}
