//! The EL2 panic handler: report, emit a failing result line, power off.

use core::panic::PanicInfo;

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    crate::console::print_panic(format_args!("\nEL2 PANIC: {info}\n"));
    crate::console::print_panic(format_args!("PKVM-RESULT fail el2 panic\n"));
    crate::psci::system_off()
}
