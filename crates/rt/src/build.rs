//! Linker scripts for the images, from their `build.rs` (built off bare metal only, with `std`):
//!
//! ```ignore
//! // el2/build.rs
//! fn main() {
//!     pkvm_rt::build::LinkerScript {
//!         name: "pkvm-el2",
//!         base: pkvm_abi::boot::EL2_LOAD_ADDR,
//!         ..pkvm_rt::build::LinkerScript::PAGE_ALIGNED
//!     }
//!     .link();
//! }
//! ```
//!
//! Every image gets the same layout (template `image.ld.in`): `.text` (the entry's
//! `.text.head` first, then `.text.vectors`), `.rodata`, `.data`, `.bss`, each starting on an
//! [`align`](LinkerScript::align) boundary, and the symbols the runtime and the images use
//! (`__image_start`/`__image_end`/`__image_size` for the `Image` header, `__bss_start`/
//! `__bss_end` for the entry, `__text_start`/`__text_end`, `__rodata_start`/`__rodata_end`,
//! `__data_start`/`__data_end` for the images' own page tables). An image adds its own
//! sections (stacks, sandboxes) and checks through the fragments.

use std::string::String;
use std::{env, fs, path::PathBuf, println};

/// The template every image's linker script is made from.
const TEMPLATE: &str = include_str!("image.ld.in");

/// The parameters of one image's linker script. The fragments may use `@BASE@`.
#[derive(Clone, Copy, Debug)]
pub struct LinkerScript<'a> {
    /// The image's name: the script is written to `$OUT_DIR/<name>.ld`.
    pub name: &'a str,
    /// The link (and load) address.
    pub base: u64,
    /// Alignment of each of `.text`'s end, `.rodata`, `.data`, the end of `.bss` and the end
    /// of the image: the page size for images that map their sections with different
    /// permissions, 16 otherwise.
    pub align: u64,
    /// Lines for the header comment (each starting with ` * `), describing the image's own
    /// sections.
    pub notes: &'a str,
    /// Sections between `.text` and `.rodata`.
    pub after_text: &'a str,
    /// Sections after `.bss` (`NOLOAD` stacks and the like), still inside the image (covered
    /// by `image_size`).
    pub after_bss: &'a str,
    /// Statements after `SECTIONS` (`ASSERT`s).
    pub asserts: &'a str,
}

impl LinkerScript<'static> {
    /// An image whose sections start on page boundaries, with nothing of its own: fill in
    /// `name` and `base`.
    pub const PAGE_ALIGNED: Self = LinkerScript {
        name: "",
        base: 0,
        align: 4096,
        notes: "",
        after_text: "",
        after_bss: "",
        asserts: "",
    };
}

impl LinkerScript<'_> {
    /// The script's text.
    pub fn render(&self) -> String {
        TEMPLATE
            .replace("@NOTES@", self.notes)
            .replace("@AFTER_TEXT@", self.after_text)
            .replace("@AFTER_BSS@", self.after_bss)
            .replace("@ASSERTS@", self.asserts)
            .replace("@NAME@", self.name)
            .replace("@BASE@", &std::format!("{:#x}", self.base))
            .replace("@ALIGN@", &std::format!("{}", self.align))
    }

    /// For a bare-metal build (`target_os = "none"`): writes the script to `OUT_DIR` and has
    /// Cargo link the image's binaries with it. A build for the development machine links its
    /// stub `main` normally, so this does nothing then.
    pub fn link(&self) {
        println!("cargo:rerun-if-changed=build.rs");
        if !is_bare_metal() {
            return;
        }
        let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
        let path = out.join(std::format!("{}.ld", self.name));
        fs::write(&path, self.render()).expect("write the linker script");
        println!("cargo:rustc-link-arg-bins=-T{}", path.display());
    }
}

/// Whether the build script runs for a bare-metal image (`target_os = "none"`) rather than for
/// the development machine's tests.
pub fn is_bare_metal() -> bool {
    env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled() {
        let script = LinkerScript {
            name: "pkvm-test",
            base: 0x4020_0000,
            after_bss: "    __top = @BASE@ + 0x1000;\n",
            asserts: "ASSERT(__image_end <= 0x40400000, \"too big\")",
            ..LinkerScript::PAGE_ALIGNED
        }
        .render();
        assert!(!script.contains('@'), "{script}");
        assert!(script.contains(". = 0x40200000;"));
        assert!(script.contains("__top = 0x40200000 + 0x1000;"));
        assert!(script.contains(". = ALIGN(4096);"));
        assert!(script.contains("KEEP(*(.text.head))"));
        assert!(script.contains("__image_size = __image_end - __image_start;"));
    }
}
