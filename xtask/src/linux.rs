//! `cargo xtask run --host linux`: Debian's unmodified arm64 Linux as the host under pkvm-rs.
//!
//! Everything comes from Debian's package archive, through apt, and is cached under
//! `target/linux/`:
//!
//! 1. the `arm64` foreign architecture is added if missing (`dpkg --add-architecture`,
//!    `apt-get update`);
//! 2. the kernel ABI (`6.1.0-NN`) is the one the `linux-image-arm64:arm64` metapackage depends
//!    on (`apt-cache depends`); `apt-get download` fetches
//!    `linux-image-<abi>-arm64-unsigned:arm64` (or the plain `linux-image-<abi>-arm64` when
//!    there is no unsigned one), `linux-headers-<abi>-arm64:arm64`,
//!    `linux-headers-<abi>-common`, the native `linux-kbuild-*` those headers depend on, and
//!    `busybox-static:arm64`; `dpkg-deb -x` extracts them;
//! 3. `gcc-aarch64-linux-gnu` is installed with `apt-get` if missing;
//! 4. `linux/pkvm_test.c` is built out of tree against the extracted headers (whose Makefile
//!    names `/usr/src/...`: it is pointed at the extracted tree);
//! 5. the initramfs is a `newc` cpio written by [`crate::cpio`]: busybox, `/init` (below) and
//!    the module.
//!
//! The kernel (`boot/vmlinuz-<abi>-arm64`, an uncompressed arm64 `Image`) is loaded by QEMU's
//! generic loader at `HOST_LOAD_ADDR`, like our own test host; the initramfs goes through
//! `-initrd` (QEMU puts it at RAM base + min(RAM/2, 128 MiB) and names it in `/chosen`) and the
//! command line through `-append`. EL2 enters the kernel at EL1 with the device tree it
//! rewrote. `/init` loads the driver, judges its `N passed, M failed` line, has a child
//! process read a page donated to EL2 (it oopses on the injected abort), checks the system
//! still works, prints `PKVM-RESULT pass|fail` and powers off.

use crate::cpio::Cpio;
use crate::qemu::{self, Images, Outcome, RunOptions};
use crate::{Error, failed, run_cmd, workspace_root};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use std::{fs, thread};

/// The cross compiler the Debian headers' Makefile asks for (`$(CROSS_COMPILE)gcc-12`).
const CROSS_COMPILE: &str = "aarch64-linux-gnu-";
/// The Debian package providing it.
const CROSS_PACKAGE: &str = "gcc-aarch64-linux-gnu";

/// Kernel command line for Linux under pkvm-rs (and for the benchmarks' other modes).
pub fn cmdline(smp: u32) -> String {
    format!("console=ttyAMA0 earlycon=pl011,0x9000000 panic=-1 rdinit=/init pkvm.cpus={smp}")
}

/// The cache directory, `target/linux/`.
fn cache_dir() -> PathBuf {
    workspace_root().join("target").join("linux")
}

/// Output of a command, or a failure naming it.
fn output(cmd: &mut Command) -> Result<String, Error> {
    let shown = format!("{cmd:?}");
    match cmd.stderr(Stdio::inherit()).output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => failed(format!("{shown} failed ({})", o.status)),
        Err(e) => failed(format!("cannot run {shown}: {e}")),
    }
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Adds the arm64 foreign architecture (and refreshes the package lists) when missing.
fn ensure_arm64_arch() -> Result<(), Error> {
    let native = output(Command::new("dpkg").arg("--print-architecture"))?;
    let foreign = output(Command::new("dpkg").arg("--print-foreign-architectures"))?;
    if native.trim() == "arm64" || foreign.lines().any(|l| l.trim() == "arm64") {
        return Ok(());
    }
    if !is_root() {
        return failed(
            "the arm64 foreign architecture is missing: run `dpkg --add-architecture arm64 && \
             apt-get update` as root",
        );
    }
    run_cmd(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
    run_cmd(Command::new("apt-get").args(["update", "-q"]))
}

/// The first `Depends:` of `pkg` in `apt-cache depends` whose name starts with `prefix`.
fn depends_on(pkg: &str, prefix: &str) -> Result<Option<String>, Error> {
    let out = output(Command::new("apt-cache").args(["depends", pkg]))?;
    Ok(out.lines().find_map(|l| {
        let dep = l.trim().strip_prefix("Depends:")?.trim();
        let name = dep
            .split(':')
            .next()?
            .trim_start_matches('<')
            .trim_end_matches('>');
        name.starts_with(prefix).then(|| name.to_string())
    }))
}

fn apt_knows(pkg: &str) -> bool {
    Command::new("apt-cache")
        .args(["show", "-q", pkg])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The package set for one kernel ABI.
#[derive(Debug)]
struct Packages {
    abi: String,
    /// `(package[:arch] to download, file-name prefix)`.
    debs: Vec<(String, String)>,
}

/// Resolves what to download from the archive's metapackage.
fn resolve_packages() -> Result<Packages, Error> {
    let image_dep = match depends_on("linux-image-arm64:arm64", "linux-image-") {
        Ok(Some(d)) => d,
        Ok(None) => return failed("linux-image-arm64:arm64 depends on no linux-image-* package"),
        Err(_) if is_root() => {
            run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
            depends_on("linux-image-arm64:arm64", "linux-image-")?
                .ok_or_else(|| Error::Failed("cannot resolve linux-image-arm64:arm64".into()))?
        }
        Err(e) => return Err(e),
    };
    // linux-image-6.1.0-56-arm64 (or ...-arm64-unsigned) -> 6.1.0-56
    let abi = image_dep
        .strip_prefix("linux-image-")
        .and_then(|s| s.strip_suffix("-unsigned").or(Some(s)))
        .and_then(|s| s.strip_suffix("-arm64"))
        .ok_or_else(|| Error::Failed(format!("unexpected kernel package {image_dep}")))?
        .to_string();
    let unsigned = format!("linux-image-{abi}-arm64-unsigned");
    let image = if apt_knows(&format!("{unsigned}:arm64")) {
        unsigned
    } else {
        format!("linux-image-{abi}-arm64")
    };
    let headers = format!("linux-headers-{abi}-arm64");
    let kbuild = depends_on(&format!("{headers}:arm64"), "linux-kbuild-")?
        .ok_or_else(|| Error::Failed(format!("{headers} depends on no linux-kbuild-*")))?;
    let common = format!("linux-headers-{abi}-common");
    let debs = vec![
        (format!("{image}:arm64"), image),
        (format!("{headers}:arm64"), headers),
        (common.clone(), common),
        (kbuild.clone(), kbuild),
        ("busybox-static:arm64".into(), "busybox-static".into()),
    ];
    Ok(Packages { abi, debs })
}

/// The cached `.deb` whose file name starts with `prefix_`.
fn cached_deb(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let want = format!("{prefix}_");
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&want) && n.ends_with(".deb"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// What the Linux run needs, all built or cached.
#[derive(Debug)]
pub struct LinuxFiles {
    /// The kernel `Image`.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
}

/// Downloads (or reuses) the Debian packages and extracts them; returns the ABI and the root
/// of the extracted tree.
fn fetch_debian() -> Result<(String, PathBuf), Error> {
    let cache = cache_dir();
    let debs_dir = cache.join("debs");
    fs::create_dir_all(&debs_dir).or_else(|e| failed(format!("{}: {e}", debs_dir.display())))?;
    ensure_arm64_arch()?;
    let pkgs = resolve_packages()?;
    println!("xtask: Debian arm64 kernel ABI {}", pkgs.abi);
    let root = cache.join(&pkgs.abi).join("root");
    let stamp = cache.join(&pkgs.abi).join("extracted");
    let mut files = Vec::new();
    for (pkg, prefix) in &pkgs.debs {
        if let Some(f) = cached_deb(&debs_dir, prefix) {
            files.push(f);
            continue;
        }
        run_cmd(
            Command::new("apt-get")
                .args(["download", "-q", pkg])
                .current_dir(&debs_dir),
        )?;
        match cached_deb(&debs_dir, prefix) {
            Some(f) => files.push(f),
            None => return failed(format!("apt-get download {pkg} left no {prefix}_*.deb")),
        }
    }
    if !stamp.is_file() {
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).or_else(|e| failed(format!("{}: {e}", root.display())))?;
        for f in &files {
            run_cmd(Command::new("dpkg-deb").arg("-x").arg(f).arg(&root))?;
        }
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        fs::write(&stamp, names.join("\n"))
            .or_else(|e| failed(format!("{}: {e}", stamp.display())))?;
    }
    // The headers' Makefile includes the common tree by its installed path.
    let hdr = root.join(format!("usr/src/linux-headers-{}-arm64", pkgs.abi));
    let mk = hdr.join("Makefile");
    let text = fs::read_to_string(&mk).or_else(|e| failed(format!("{}: {e}", mk.display())))?;
    if text.contains("include /usr/src/") {
        let fixed = text.replace(
            "include /usr/src/",
            &format!("include {}/usr/src/", root.display()),
        );
        fs::write(&mk, fixed).or_else(|e| failed(format!("{}: {e}", mk.display())))?;
    }
    Ok((pkgs.abi, root))
}

fn ensure_cross_compiler() -> Result<(), Error> {
    let gcc = format!("{CROSS_COMPILE}gcc-12");
    if have(&gcc) {
        return Ok(());
    }
    if is_root() && have("apt-get") {
        run_cmd(Command::new("apt-get").args(["install", "-y", "-q", CROSS_PACKAGE]))?;
        if have(&gcc) {
            return Ok(());
        }
    }
    failed(format!(
        "{gcc} is missing: install the Debian package {CROSS_PACKAGE}"
    ))
}

/// Builds `linux/pkvm_test.c` against the extracted headers.
fn build_module(abi: &str, root: &Path) -> Result<PathBuf, Error> {
    ensure_cross_compiler()?;
    let src = workspace_root().join("linux");
    let dir = cache_dir().join(abi).join("module");
    fs::create_dir_all(&dir).or_else(|e| failed(format!("{}: {e}", dir.display())))?;
    for f in ["pkvm_test.c", "Kbuild"] {
        let data = fs::read(src.join(f)).or_else(|e| failed(format!("linux/{f}: {e}")))?;
        if fs::read(dir.join(f)).ok().as_deref() != Some(data.as_slice()) {
            fs::write(dir.join(f), data).or_else(|e| failed(format!("{f}: {e}")))?;
        }
    }
    let hdr = root.join(format!("usr/src/linux-headers-{abi}-arm64"));
    run_cmd(
        Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(&hdr)
            .arg(format!("M={}", dir.display()))
            .arg("ARCH=arm64")
            .arg(format!("CROSS_COMPILE={CROSS_COMPILE}"))
            .arg("modules"),
    )?;
    Ok(dir.join("pkvm_test.ko"))
}

/// The `/init` of the initramfs.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
fail() { echo "PKVM-RESULT fail $*"; poweroff -f; sleep 30; }
echo "PKVM-INIT /init started at $(cut -d' ' -f1 /proc/uptime) s uptime"
want=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^pkvm.cpus=//p')
cpus=$(grep -c ^processor /proc/cpuinfo)
echo "init: $cpus CPUs online, $(grep MemTotal /proc/meminfo)"
if grep -q pkvm.bench /proc/cmdline; then echo "PKVM-RESULT pass"; poweroff -f; sleep 30; fi
[ -z "$want" ] || [ "$cpus" = "$want" ] || fail "$cpus CPUs online, wanted $want"
[ -e /pkvm_test.ko ] || fail "no pkvm_test.ko in the initramfs"
insmod /pkvm_test.ko || fail "insmod pkvm_test.ko failed"
[ -r /proc/pkvm_test ] || fail "no /proc/pkvm_test"
summary=$(head -n 1 /proc/pkvm_test)
echo "init: driver: $summary"
case "$summary" in
    *" passed, 0 failed") ;;
    *) fail "driver: $summary" ;;
esac
before=$(sed -n 's/^injected_aborts //p' /proc/pkvm_test)
echo "init: a child process reads a page donated to EL2"
sh -c 'echo read-donated > /proc/pkvm_test'
echo "init: the child ended (status $?); /init carries on"
after=$(sed -n 's/^injected_aborts //p' /proc/pkvm_test)
[ "$after" -gt "$before" ] || fail "no abort injected (before $before, after $after)"
dmesg | grep -q 'synchronous external abort' || fail "Linux did not report the external abort"
echo "init: a child process writes to EL2's carve-out"
sh -c 'echo write-carveout > /proc/pkvm_test'
echo "init: the child ended (status $?); /init carries on"
after2=$(sed -n 's/^injected_aborts //p' /proc/pkvm_test)
[ "$after2" -gt "$after" ] || fail "no abort injected for the carve-out write"
echo recheck > /proc/pkvm_test || fail "recheck"
summary=$(head -n 1 /proc/pkvm_test)
case "$summary" in
    *" passed, 0 failed") ;;
    *) fail "driver after the aborts: $summary" ;;
esac
if grep -q pkvm.measure /proc/cmdline; then echo measure > /proc/pkvm_test; fi
echo survived > /tmp/check && [ "$(cat /tmp/check)" = survived ] || fail "tmpfs broken after the abort"
for c in $(seq 0 $((cpus - 1))); do
    taskset -c "$c" true 2>/dev/null || fail "cannot run on CPU $c after the abort"
done
echo "init: EL2 statistics at the end:"
sed 's/^/init:   /' /proc/pkvm_test
echo "init: $summary; survived the illegal accesses"
echo "PKVM-RESULT pass"
poweroff -f
sleep 30
"#;

/// Writes the initramfs: busybox, `/init`, the module.
fn build_initramfs(abi: &str, root: &Path, module: &Path) -> Result<PathBuf, Error> {
    let busybox = root.join("bin/busybox");
    let bb = fs::read(&busybox).or_else(|e| failed(format!("{}: {e}", busybox.display())))?;
    let ko = fs::read(module).or_else(|e| failed(format!("{}: {e}", module.display())))?;
    let mut c = Cpio::new();
    for d in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp",
    ] {
        c.dir(d, 0o755);
    }
    c.char_dev("dev/console", 0o600, 5, 1);
    c.file("bin/busybox", 0o755, &bb);
    c.symlink("bin/sh", "busybox");
    c.file("init", 0o755, INIT.as_bytes());
    c.file("pkvm_test.ko", 0o644, &ko);
    let out = cache_dir().join(abi).join("initramfs.cpio");
    fs::write(&out, c.finish()).or_else(|e| failed(format!("{}: {e}", out.display())))?;
    println!("xtask: initramfs {}", out.display());
    Ok(out)
}

/// Gets the kernel and builds the driver and initramfs (or takes the user's files).
pub fn prepare(kernel: Option<&Path>, initrd: Option<&Path>) -> Result<LinuxFiles, Error> {
    if let (Some(k), Some(i)) = (kernel, initrd) {
        return Ok(LinuxFiles {
            kernel: k.to_path_buf(),
            initrd: i.to_path_buf(),
        });
    }
    let (abi, root) = fetch_debian()?;
    let kernel = match kernel {
        Some(k) => k.to_path_buf(),
        None => root.join(format!("boot/vmlinuz-{abi}-arm64")),
    };
    let initrd = match initrd {
        Some(i) => i.to_path_buf(),
        None => {
            let ko = build_module(&abi, &root)?;
            build_initramfs(&abi, &root, &ko)?
        }
    };
    Ok(LinuxFiles { kernel, initrd })
}

/// Checks the kernel is an arm64 `Image`.
fn check_image(kernel: &Path) -> Result<(), Error> {
    use pkvm_abi::boot::{IMAGE_MAGIC, IMAGE_MAGIC_OFFSET};
    let data = fs::read(kernel).or_else(|e| failed(format!("{}: {e}", kernel.display())))?;
    if data.get(IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4)
        != Some(IMAGE_MAGIC.to_le_bytes().as_slice())
    {
        return failed(format!(
            "{} is not an uncompressed arm64 Image (no ARM\\x64 magic)",
            kernel.display()
        ));
    }
    Ok(())
}

/// QEMU options for Linux under pkvm-rs: `o.extra` gets `-initrd` and the Linux `-append`
/// (QEMU keeps the last `-append`, so it replaces the test host's).
pub fn run_options(files: &LinuxFiles, mut o: RunOptions, extra_cmdline: &str) -> RunOptions {
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
pub fn run(
    files: &LinuxFiles,
    o: &RunOptions,
    extra_cmdline: &str,
) -> Result<(Outcome, Duration), Error> {
    check_image(&files.kernel)?;
    let el2 = crate::build_el2(o.debug_el2)?;
    let images = Images {
        el2,
        host: files.kernel.clone(),
    };
    let opts = run_options(files, o.clone(), extra_cmdline);
    Ok(qemu::run(&images, &opts))
}

/// Default options of a Linux run: 4 CPUs, 180 s.
pub fn default_options() -> RunOptions {
    RunOptions {
        smp: 4,
        timeout: Duration::from_secs(180),
        ..RunOptions::default()
    }
}

/// Whether `run` was asked for Linux (`--host linux`, `--kernel`, `--initrd`).
pub fn wanted(args: &[String]) -> bool {
    let before_dashes = args.iter().take_while(|a| *a != "--");
    before_dashes
        .clone()
        .zip(args.iter().skip(1))
        .any(|(a, v)| a == "--host" && v == "linux")
        || args
            .iter()
            .take_while(|a| *a != "--")
            .any(|a| a == "--kernel" || a == "--initrd" || a == "--bench-linux")
}

/// `cargo xtask run --host linux [--kernel Image] [--initrd file] [--measure] [run options]`,
/// and `--bench-linux [--reps N]`. `--measure` makes `/init` ask the driver for the EL2
/// instruction counts of share/unshare (meaningful with `--icount`, which QEMU runs well only
/// with `--smp 1`).
pub fn cmd_run(args: &[String]) -> Result<(), Error> {
    let mut kernel = None;
    let mut initrd = None;
    let mut bench = false;
    let mut measure = false;
    let mut reps = 3u32;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| Error::Usage(format!("{name} needs a value")))
        };
        match a.as_str() {
            "--host" => {
                let v = value("--host")?;
                if v != "linux" {
                    return Err(Error::Usage(format!("--host {v}: only `linux` is known")));
                }
            }
            "--kernel" => kernel = Some(PathBuf::from(value("--kernel")?)),
            "--initrd" => initrd = Some(PathBuf::from(value("--initrd")?)),
            "--bench-linux" => bench = true,
            "--measure" => measure = true,
            "--reps" => {
                let v = value("--reps")?;
                reps = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=20).contains(n))
                    .ok_or_else(|| Error::Usage(format!("--reps {v}: want 1..=20")))?;
            }
            "--" => {
                rest.push(a.clone());
                rest.extend(it.by_ref().cloned());
            }
            _ => rest.push(a.clone()),
        }
    }
    let o = crate::parse_run_options(&rest, default_options())?;
    crate::prereq::ensure_targets()?;
    crate::prereq::ensure_qemu()?;
    let files = prepare(kernel.as_deref(), initrd.as_deref())?;
    if bench {
        return bench_boot(&files, &o, reps);
    }
    let (outcome, ran) = run(&files, &o, if measure { "pkvm.measure" } else { "" })?;
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

/// One timed boot: QEMU start to the `PKVM-INIT` line, and to QEMU's exit.
fn timed_boot(args: &[String], timeout: Duration) -> Result<(f64, f64, bool), Error> {
    let start = Instant::now();
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
            if line.contains("PKVM-INIT") {
                let _ = tx.send(1u8);
            } else if line.starts_with("PKVM-RESULT pass") {
                let _ = tx.send(2u8);
            }
        }
    });
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
fn bench_boot(files: &LinuxFiles, o: &RunOptions, reps: u32) -> Result<(), Error> {
    check_image(&files.kernel)?;
    let el2 = crate::build_el2(o.debug_el2)?;
    let pkvm_rs = {
        let images = Images {
            el2,
            host: files.kernel.clone(),
        };
        let opts = run_options(files, o.clone(), "pkvm.bench");
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
            format!("{} pkvm.bench {extra}", cmdline(o.smp)),
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

/// The `cargo xtask test` step: Debian's kernel with the driver, `-smp 4`, `-cpu max`, 1 GiB,
/// under pkvm-rs; must print `PKVM-RESULT pass` within 180 s.
pub fn system_test() -> Result<String, Error> {
    let files = prepare(None, None)?;
    let o = default_options();
    let (outcome, ran) = run(&files, &o, "")?;
    let got = outcome.describe(o.timeout);
    if outcome.passed() {
        Ok(format!("{got} ({:.1} s in QEMU)", ran.as_secs_f64()))
    } else {
        failed(format!("{got}; wanted PKVM-RESULT pass"))
    }
}
