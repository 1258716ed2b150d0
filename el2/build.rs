//! The EL2 linker script: the shared image layout of `pkvm_rt::build`, linked at
//! `pkvm_abi::boot::EL2_LOAD_ADDR`, plus the per-CPU stacks, and a check that the image (its
//! `.bss` and stacks included) ends below the host's load address.

fn main() {
    pkvm_rt::build::LinkerScript {
        name: "pkvm-el2",
        base: pkvm_abi::boot::EL2_LOAD_ADDR,
        notes: " *
 * EL2 maps itself at VA == PA (text RX, rodata RO, data/bss RW) and each CPU's stack RW with
 * an unmapped guard page below it (.el2_stacks: [guard][stack 0][guard][stack 1]...).
",
        after_bss: "
    .el2_stacks (NOLOAD) : ALIGN(4096) {
        KEEP(*(.el2_stacks))
    }
",
        asserts: &format!(
            "ASSERT(__image_end <= {:#x}, \"{}\")",
            pkvm_abi::boot::HOST_LOAD_ADDR,
            "the EL2 image (with .bss) overlaps the host image load address"
        ),
        ..pkvm_rt::build::LinkerScript::PAGE_ALIGNED
    }
    .link();
}
