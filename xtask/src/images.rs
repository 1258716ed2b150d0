//! Building the bare-metal images: cargo builds the ELF files, [`crate::elf`] turns each into a
//! raw arm64 `Image` checked to be linked where QEMU loads it (`pkvm_abi::boot`), written next
//! to the ELF as `<package>.bin`.

use crate::qemu::Images;
use crate::{BARE_TARGET, EL2_TARGET, Error, cargo, elf, failed, run_cmd, target_dir};
use std::fs;
use std::path::PathBuf;

/// Whether `image` starts with an arm64 `Image` header (the `ARM\x64` magic).
pub fn has_image_magic(image: &[u8]) -> bool {
    use pkvm_abi::boot::{IMAGE_MAGIC, IMAGE_MAGIC_OFFSET};
    image.get(IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4)
        == Some(IMAGE_MAGIC.to_le_bytes().as_slice())
}

/// Builds the EL2 image (`debug`: the test build with the debug hypercalls) and the host image
/// (release) and converts them to raw arm64 `Image`s.
pub fn build_image_set(debug: bool) -> Result<Images, Error> {
    use pkvm_abi::boot::HOST_LOAD_ADDR;
    let el2 = build_el2(debug)?;
    let guest = build_guest_image()?;
    let host = build_image_env(
        "pkvm-host",
        BARE_TARGET,
        HOST_LOAD_ADDR,
        &[],
        "pkvm-host.bin",
        &[("PKVM_GUEST_BIN", guest.as_os_str())],
    )?;
    Ok(Images { el2, host })
}

/// Builds EL2 (release): the production image `pkvm-el2.bin` (no debug hypercalls: what
/// every user-facing command boots), or with `debug` the test build `pkvm-el2-debug.bin`
/// (feature `debug-hcalls`, which the self-tests need to pin, read back and reclaim pages).
pub fn build_el2(debug: bool) -> Result<PathBuf, Error> {
    use pkvm_abi::boot::EL2_LOAD_ADDR;
    let (features, bin): (&[&str], _) = if debug {
        (&["--features", "debug-hcalls"], "pkvm-el2-debug.bin")
    } else {
        (&[], "pkvm-el2.bin")
    };
    build_image_env("pkvm-el2", EL2_TARGET, EL2_LOAD_ADDR, features, bin, &[])
}

/// Builds the test guest (`guest/`) and converts it to a raw image linked at
/// `pkvm_abi::guest::GUEST_RAM_IPA`; the host build embeds it (`PKVM_GUEST_BIN`, read by
/// `host/build.rs`, then `include_bytes!`).
fn build_guest_image() -> Result<PathBuf, Error> {
    use pkvm_abi::guest::{GUEST_RAM_IPA, GUEST_RAM_PAGES};
    let bin = build_image_env(
        "pkvm-guest",
        BARE_TARGET,
        GUEST_RAM_IPA,
        &[],
        "pkvm-guest.bin",
        &[],
    )?;
    let len = fs::metadata(&bin)
        .or_else(|e| failed(format!("cannot stat {}: {e}", bin.display())))?
        .len();
    if len > GUEST_RAM_PAGES * pkvm_abi::PAGE_SIZE / 2 {
        return failed(format!(
            "{} is too large for the guest's RAM",
            bin.display()
        ));
    }
    Ok(bin)
}

/// Builds `package` for `target` (release, with `cargo_args` and `envs`), checks it is an arm64
/// `Image` linked at `load_addr`, and writes the raw image as `bin` next to the ELF.
fn build_image_env(
    package: &str,
    target: &str,
    load_addr: u64,
    cargo_args: &[&str],
    bin: &str,
    envs: &[(&str, &std::ffi::OsStr)],
) -> Result<PathBuf, Error> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--release",
        "-p",
        package,
        "--bin",
        package,
        "--target",
        target,
    ]);
    cmd.args(cargo_args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    run_cmd(&mut cmd)?;
    let dir = target_dir().join(target).join("release");
    let elf_path = dir.join(package);
    let data = fs::read(&elf_path)
        .or_else(|e| failed(format!("cannot read {}: {e}", elf_path.display())))?;
    let image =
        elf::to_flat_image(&data).or_else(|e| failed(format!("{}: {e}", elf_path.display())))?;
    if image.base != load_addr || image.entry != load_addr {
        return failed(format!(
            "{package} is linked at {:#x} (entry {:#x}), expected {load_addr:#x}",
            image.base, image.entry
        ));
    }
    if !has_image_magic(&image.bytes) {
        return failed(format!("{package} has no arm64 Image header"));
    }
    let bin = dir.join(bin);
    fs::write(&bin, &image.bytes)
        .or_else(|e| failed(format!("cannot write {}: {e}", bin.display())))?;
    println!(
        "xtask: {} ({} bytes at {load_addr:#x})",
        bin.display(),
        image.bytes.len()
    );
    Ok(bin)
}
