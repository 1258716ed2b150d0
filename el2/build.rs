//! Generates the EL2 linker script from the boot layout in `pkvm_abi::boot`, for bare-metal
//! builds only (a build for the development machine links the stub `main` normally).

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=linker.ld.in");
    println!("cargo:rerun-if-changed=build.rs");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let template = fs::read_to_string(manifest.join("linker.ld.in")).expect("read linker.ld.in");
    let script = template
        .replace("@BASE@", &format!("{:#x}", pkvm_abi::boot::EL2_LOAD_ADDR))
        .replace("@LIMIT@", &format!("{:#x}", pkvm_abi::boot::HOST_LOAD_ADDR));
    let path = out.join("pkvm-el2.ld");
    fs::write(&path, script).expect("write linker script");
    println!("cargo:rustc-link-arg-bins=-T{}", path.display());
}
