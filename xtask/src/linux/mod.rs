//! `cargo xtask run --host linux`: Debian's unmodified arm64 Linux as the host under pkvm-rs.
//!
//! Everything comes from Debian's package archive, through apt, and is cached under
//! `target/linux/`:
//!
//! 1. [`debian`]: the `arm64` foreign architecture is added if missing (`dpkg
//!    --add-architecture`, `apt-get update`); the kernel ABI (`6.1.0-NN`) is the one the
//!    `linux-image-arm64:arm64` metapackage depends on (`apt-cache depends`); `apt-get
//!    download` fetches `linux-image-<abi>-arm64-unsigned:arm64` (or the plain
//!    `linux-image-<abi>-arm64` when there is no unsigned one), `linux-headers-<abi>-arm64:arm64`,
//!    `linux-headers-<abi>-common`, the native `linux-kbuild-*` those headers depend on, and
//!    `busybox-static:arm64`; `dpkg-deb -x` extracts them;
//! 2. [`driver`]: `gcc-aarch64-linux-gnu` is installed with `apt-get` if missing, and
//!    `linux/pkvm_test.c` is built out of tree against the extracted headers (whose Makefile
//!    names `/usr/src/...`: it is pointed at the extracted tree);
//! 3. [`initramfs`]: a `newc` cpio written by [`crate::cpio`]: busybox, `/init`
//!    (`xtask/templates/init.sh`) and the module.
//!
//! [`run`]: the kernel (`boot/vmlinuz-<abi>-arm64`, an uncompressed arm64 `Image`) is loaded
//! by QEMU's generic loader at `HOST_LOAD_ADDR`, like our own test host; the initramfs goes
//! through `-initrd` (QEMU puts it at RAM base + min(RAM/2, 128 MiB) and names it in `/chosen`)
//! and the command line through `-append`. EL2 enters the kernel at EL1 with the device tree it
//! rewrote. `/init` loads the driver, judges its `N passed, M failed` line, has a child
//! process read a page donated to EL2 (it oopses on the injected abort), checks the system
//! still works, prints `PKVM-RESULT pass|fail` and powers off.
//!
//! [`boot_bench`] (`--bench-linux`) times the boot to `/init` of the same kernel entered
//! directly, under pkvm-rs and under Linux's own pKVM.

mod boot_bench;
mod debian;
mod driver;
pub mod guest;
pub mod guest_bench;
mod initramfs;
mod run;
pub mod vmm;

pub use run::{cmd_run, system_test};

use crate::qemu::RunOptions;
use crate::workspace_root;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Kernel parameter telling `/init` how many CPUs must be online.
const CPUS_PARAM: &str = "pkvm.cpus";
/// Kernel parameter telling `/init` to power off as soon as it starts (the boot benchmark).
const BENCH_PARAM: &str = "pkvm.bench";
/// Kernel parameter telling `/init` to have the driver print its EL2 instruction counts.
const MEASURE_PARAM: &str = "pkvm.measure";
/// What `/init` prints first, with the uptime: the boot benchmark's finish line.
const INIT_MARKER: &str = "PKVM-INIT";

/// Kernel command line for Linux under pkvm-rs (and for the benchmarks' other modes).
fn cmdline(smp: u32) -> String {
    format!("console=ttyAMA0 earlycon=pl011,0x9000000 panic=-1 rdinit=/init {CPUS_PARAM}={smp}")
}

/// The cache directory, `target/linux/`.
fn cache_dir() -> PathBuf {
    workspace_root().join("target").join("linux")
}

/// The kernel and its extracted packages (fetched and cached): its ABI and root.
fn debian_root() -> Result<(String, PathBuf), crate::Error> {
    debian::fetch()
}

/// Default options of a Linux run: 4 CPUs, 180 s.
pub fn default_options() -> RunOptions {
    RunOptions {
        smp: 4,
        timeout: Duration::from_secs(180),
        ..RunOptions::default()
    }
}

/// What the Linux run needs, all built or cached.
#[derive(Debug)]
struct LinuxFiles {
    /// The kernel `Image`.
    kernel: PathBuf,
    /// The initramfs.
    initrd: PathBuf,
}

/// Gets the kernel and builds the driver and initramfs (or takes the user's files).
fn prepare(kernel: Option<&Path>, initrd: Option<&Path>) -> Result<LinuxFiles, crate::Error> {
    if let (Some(k), Some(i)) = (kernel, initrd) {
        return Ok(LinuxFiles {
            kernel: k.to_path_buf(),
            initrd: i.to_path_buf(),
        });
    }
    let (abi, root) = debian::fetch()?;
    let kernel = match kernel {
        Some(k) => k.to_path_buf(),
        None => root.join(format!("boot/vmlinuz-{abi}-arm64")),
    };
    let initrd = match initrd {
        Some(i) => i.to_path_buf(),
        None => {
            let ko = driver::build(&abi, &root)?;
            initramfs::build(
                &abi,
                &root,
                &ko,
                &initramfs::init_script(),
                &[],
                "initramfs.cpio",
            )?
        }
    };
    Ok(LinuxFiles { kernel, initrd })
}
