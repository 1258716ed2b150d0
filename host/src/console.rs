//! The host console: the PL011 UART named by `/chosen/stdout-path`, driven by the
//! `arm-pl011-uart` crate. `print!`/`println!` write to it.

use arm_pl011_uart::{PL011Registers, Uart, UniqueMmioPointer};
use core::fmt::{self, Write};
use core::ptr::NonNull;
use spin::mutex::SpinMutex;

static CONSOLE: SpinMutex<Option<Uart<'static>>> = SpinMutex::new(None);

/// Takes the PL011 at `base` as the console. Called once, before anything is printed.
pub fn init(base: usize) {
    let Some(ptr) = NonNull::new(base as *mut PL011Registers) else {
        return;
    };
    // SAFETY: `base` is the PL011's register block from the device tree; with the MMU off it is
    // accessed as Device memory. `init` runs once and nothing else uses the UART, so this is the
    // only pointer to it.
    let regs = unsafe { UniqueMmioPointer::new(ptr) };
    *CONSOLE.lock() = Some(Uart::new(regs));
}

/// Prints to the console (no-op before [`init`]).
pub fn print(args: fmt::Arguments<'_>) {
    if let Some(uart) = CONSOLE.lock().as_mut() {
        let _ = uart.write_fmt(args);
    }
}

/// Prints from the panic handler without waiting for a lock the panicking code may hold.
pub fn print_panic(args: fmt::Arguments<'_>) {
    if CONSOLE.is_locked() {
        // SAFETY: the host runs on one CPU with interrupts masked, so a held lock means this CPU
        // panicked while printing; that print will never finish.
        unsafe { CONSOLE.force_unlock() };
    }
    print(args);
}

/// `print!` to the host console.
#[allow(unused_macros)]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

/// `println!` to the host console.
macro_rules! println {
    () => { $crate::console::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    print_panic(format_args!("\nHOST PANIC: {info}\n"));
    print_panic(format_args!("PKVM-RESULT fail host panic\n"));
    crate::psci::system_off()
}
