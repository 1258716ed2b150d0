//! Installs what the commands need when it is missing: the bare-metal Rust targets and
//! components (through rustup) and QEMU (through apt-get, Debian package `qemu-system-arm`).

use crate::{BARE_TARGET, EL2_TARGET, Error, failed, run_cmd};
use std::process::{Command, Stdio};

fn quiet_ok(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Adds the bare-metal targets with rustup if they are not installed.
pub fn ensure_targets() -> Result<(), Error> {
    let out = match Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    {
        Ok(o) if o.status.success() => o,
        // No rustup: the toolchain is managed some other way; let cargo report what is missing.
        _ => return Ok(()),
    };
    let installed = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = [BARE_TARGET, EL2_TARGET, crate::linux::vmm::VMM_TARGET]
        .into_iter()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing Rust targets {}", missing.join(", "));
    run_cmd(
        Command::new("rustup")
            .args(["target", "add"])
            .args(&missing),
    )
}

/// Adds rustfmt and clippy with rustup if cargo cannot find them.
pub fn ensure_components() -> Result<(), Error> {
    for (sub, component) in [("fmt", "rustfmt"), ("clippy", "clippy")] {
        if !quiet_ok("cargo", &[sub, "--version"]) {
            println!("xtask: installing {component}");
            run_cmd(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    Ok(())
}

/// Makes sure `qemu-system-aarch64` runs; installs `qemu-system-arm` with apt-get when we are
/// root on a Debian-like system.
pub fn ensure_qemu() -> Result<(), Error> {
    if quiet_ok(crate::qemu::QEMU, &["--version"]) {
        return Ok(());
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if is_root && quiet_ok("apt-get", &["--version"]) {
        println!(
            "xtask: {} not found; installing qemu-system-arm",
            crate::qemu::QEMU
        );
        run_cmd(Command::new("apt-get").arg("update"))?;
        run_cmd(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "qemu-system-arm"]),
        )?;
        if quiet_ok(crate::qemu::QEMU, &["--version"]) {
            return Ok(());
        }
    }
    failed(format!(
        "{} not found: install QEMU's Arm system emulator (Debian/Ubuntu package qemu-system-arm)",
        crate::qemu::QEMU
    ))
}
