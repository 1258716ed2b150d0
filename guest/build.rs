//! Generates the guest linker script from `pkvm_abi::guest` (bare-metal builds only).

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
    let g = &pkvm_abi::guest::GUEST_RAM_IPA;
    let size = pkvm_abi::guest::GUEST_RAM_PAGES * pkvm_abi::PAGE_SIZE;
    let script = template
        .replace("@BASE@", &format!("{g:#x}"))
        .replace("@SIZE@", &format!("{size:#x}"));
    let path = out.join("pkvm-guest.ld");
    fs::write(&path, script).expect("write linker script");
    println!("cargo:rustc-link-arg-bins=-T{}", path.display());
}
