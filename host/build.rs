//! The host's build script: the guest image it embeds, and its linker script (the shared image
//! layout of `pkvm_rt::build`, linked at `pkvm_abi::boot::HOST_LOAD_ADDR`, plus its EL0 code,
//! the hostile scenario's sandbox and its two stacks).

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=PKVM_GUEST_BIN");
    if pkvm_rt::build::is_bare_metal() {
        // The test guest's raw image (built by `cargo xtask`), embedded with `include_bytes!`;
        // an empty file when the host is built on its own (clippy), and the `guests` scenario
        // then reports that it has no guest.
        let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
        let guest = match env::var_os("PKVM_GUEST_BIN") {
            Some(p) => {
                println!("cargo:rerun-if-changed={}", PathBuf::from(&p).display());
                fs::read(&p).expect("read PKVM_GUEST_BIN")
            }
            None => Vec::new(),
        };
        fs::write(out_dir.join("guest.bin"), guest).expect("write guest.bin");
    }
    pkvm_rt::build::LinkerScript {
        name: "pkvm-host",
        base: pkvm_abi::boot::HOST_LOAD_ADDR,
        notes: LAYOUT_NOTES,
        after_text: EL0_TEXT,
        after_bss: SANDBOX_AND_STACKS,
        ..pkvm_rt::build::LinkerScript::PAGE_ALIGNED
    }
    .link();
}

/// What the host's stage-1 (`host/src/mmu.rs`) does with its sections.
const LAYOUT_NOTES: &str = " *
 * xtask has QEMU's generic loader put the raw image at @BASE@; EL2 enters it at EL1 with
 * x0 = DTB address. The host then turns on its own identity-mapped stage-1, which maps:
 *
 *   .text            read-only, executable
 *   .el0_text        EL0 code of the hostile scenario: EL0 read-only and executable, EL1 never
 *                    executes it
 *   .rodata          read-only
 *   .data .bss       read-write
 *   .sandbox         16 KiB the hostile scenario writes instructions into and runs (RWX at EL1)
 *   .stacks          [guard page][main stack][guard page][exception stack], guards unmapped
";

/// The hostile scenario's EL0 code, on pages of its own.
const EL0_TEXT: &str = "
    .el0_text : ALIGN(4096) {
        __el0_text_start = .;
        KEEP(*(.el0_text))
        . = ALIGN(4096);
        __el0_text_end = .;
    }
";

/// The sandbox, then each stack above an unmapped guard page.
const SANDBOX_AND_STACKS: &str = "
    .sandbox (NOLOAD) : ALIGN(4096) {
        __sandbox_start = .;
        . += 16384;
        __sandbox_end = .;
    }

    .stacks (NOLOAD) : ALIGN(4096) {
        __stack_guard = .;
        . += 4096;
        KEEP(*(.stacks.main))
        __stack_top = .;
        __exc_stack_guard = .;
        . += 4096;
        KEEP(*(.stacks.exception))
        __exc_stack_top = .;
    }
";
