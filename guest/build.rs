//! The guest's linker script: the shared image layout of `pkvm_rt::build`, linked at
//! `pkvm_abi::guest::GUEST_RAM_IPA`, with the stack at the end of the guest's RAM.

fn main() {
    let ram_size = pkvm_abi::guest::GUEST_RAM_PAGES * pkvm_abi::PAGE_SIZE;
    pkvm_rt::build::LinkerScript {
        name: "pkvm-guest",
        base: pkvm_abi::guest::GUEST_RAM_IPA,
        align: 16,
        notes: " *
 * The host copies the raw image to the start of the guest's RAM, which it shares into the
 * guest at IPA @BASE@; the guest runs with its MMU off (PC = IPA). Its stack is at the end of
 * its RAM.
",
        after_bss: &format!("    __stack_top = @BASE@ + {ram_size:#x};\n"),
        asserts: concat!(
            "ASSERT(__bss_end + 0x4000 <= __stack_top, ",
            "\"guest image + 16 KiB stack do not fit in guest RAM\")"
        ),
        ..pkvm_rt::build::LinkerScript::PAGE_ALIGNED
    }
    .link();
}
