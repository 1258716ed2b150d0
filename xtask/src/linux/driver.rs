//! The modules of `linux/`: the test driver `pkvm_test.c` and `/dev/pkvm` (`pkvm.c`), built out
//! of tree with Debian's cross compiler against the extracted headers, in
//! `target/linux/<abi>/module/`.

use super::cache_dir;
use super::debian::{have, is_root};
use crate::{Error, failed, run_cmd, workspace_root};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The cross compiler the Debian headers' Makefile asks for (`$(CROSS_COMPILE)gcc-12`).
const CROSS_COMPILE: &str = "aarch64-linux-gnu-";
/// The Debian package providing it.
const CROSS_PACKAGE: &str = "gcc-aarch64-linux-gnu";

/// Installs the cross compiler with apt-get when it is missing.
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

/// The files of `linux/` the build reads.
const SOURCES: [&str; 6] = [
    "pkvm_test.c",
    "pkvm.c",
    "pkvm_uapi.h",
    "pkvm_el2_count.h",
    "pkvm_hcalls.h",
    "Kbuild",
];

/// The two modules, built.
#[derive(Debug)]
pub(super) struct Modules {
    /// `pkvm_test.ko`: the ownership checks over real kernel memory.
    pub test: PathBuf,
    /// `pkvm.ko`: `/dev/pkvm`.
    pub dev: PathBuf,
}

/// Builds the modules of `linux/` against the extracted headers; returns their paths.
pub(super) fn build(abi: &str, root: &Path) -> Result<Modules, Error> {
    ensure_cross_compiler()?;
    let src = workspace_root().join("linux");
    let dir = cache_dir().join(abi).join("module");
    fs::create_dir_all(&dir).or_else(|e| failed(format!("{}: {e}", dir.display())))?;
    for f in SOURCES {
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
    Ok(Modules {
        test: dir.join("pkvm_test.ko"),
        dev: dir.join("pkvm.ko"),
    })
}
