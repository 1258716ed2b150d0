//! The host console is the shared one of `pkvm_rt::console` (the PL011 named by
//! `/chosen/stdout-path`; `print!`/`println!` come from `pkvm_rt`); the host adds its panic
//! handler.

/// Takes the device tree's console PL011 at `base` as the console.
pub fn init(base: usize) {
    // SAFETY: `base` is the PL011's register block from the device tree; with the MMU off it is
    // accessed as Device memory (and the host's stage-1 maps it as Device). `init` runs once
    // and nothing else in the host uses the UART.
    unsafe { pkvm_rt::console::init(base) }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    pkvm_rt::console::print_panic(format_args!("\nHOST PANIC: {info}\n"));
    pkvm_rt::console::print_panic(format_args!("PKVM-RESULT fail host panic\n"));
    crate::psci::system_off()
}
