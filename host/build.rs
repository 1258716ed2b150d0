//! Generates the host linker script from the boot layout in `pkvm_abi::boot`, for bare-metal
//! builds only (a build for the development machine links the stub `main` normally).

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=linker.ld.in");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PKVM_GUEST_BIN");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    // The test guest's raw image (built by `cargo xtask`), embedded with `include_bytes!`; an
    // empty file when the host is built on its own (clippy), and the `guests` scenario then
    // reports that it has no guest.
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let guest = match env::var_os("PKVM_GUEST_BIN") {
        Some(p) => {
            println!("cargo:rerun-if-changed={}", PathBuf::from(&p).display());
            fs::read(&p).expect("read PKVM_GUEST_BIN")
        }
        None => Vec::new(),
    };
    fs::write(out_dir.join("guest.bin"), guest).expect("write guest.bin");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let template = fs::read_to_string(manifest.join("linker.ld.in")).expect("read linker.ld.in");
    let script = template.replace("@BASE@", &format!("{:#x}", pkvm_abi::boot::HOST_LOAD_ADDR));
    let path = out.join("pkvm-host.ld");
    fs::write(&path, script).expect("write linker script");
    println!("cargo:rustc-link-arg-bins=-T{}", path.display());
}
