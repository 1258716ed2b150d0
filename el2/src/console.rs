//! The EL2 console: the PL011 UART named by the device tree's `/chosen/stdout-path`, driven by
//! the `arm-pl011-uart` crate (QEMU's PL011 needs no set-up, so EL2 only writes to it).

use arm_pl011_uart::{PL011Registers, Uart, UniqueMmioPointer};
use core::fmt::{self, Write};
use core::ptr::NonNull;
use spin::mutex::SpinMutex;

static CONSOLE: SpinMutex<Option<Uart<'static>>> = SpinMutex::new(None);

/// Takes the PL011 at `base` as the console. Called once, by the primary CPU, before anything
/// is printed.
pub fn init(base: usize) {
    let Some(ptr) = NonNull::new(base as *mut PL011Registers) else {
        return;
    };
    // SAFETY: `base` is the PL011's register block from the device tree; with the MMU off it is
    // accessed as Device memory. Nothing else in EL2 maps or uses it, and `init` runs once, so
    // this is the only pointer to it.
    let regs = unsafe { UniqueMmioPointer::new(ptr) };
    *CONSOLE.lock() = Some(Uart::new(regs));
}

/// Prints to the console (no-op before [`init`]).
pub fn print(args: fmt::Arguments<'_>) {
    if let Some(uart) = CONSOLE.lock().as_mut() {
        let _ = uart.write_fmt(args);
    }
}

/// Prints from the panic handler: does not wait for a lock that the panicking code may hold.
pub fn print_panic(args: fmt::Arguments<'_>) {
    if CONSOLE.is_locked() {
        // SAFETY: EL2 runs on one CPU for now and does not take interrupts, so a held lock means
        // this very CPU panicked while printing; that print will never finish.
        unsafe { CONSOLE.force_unlock() };
    }
    print(args);
}

/// `print!` to the EL2 console.
#[allow(unused_macros)]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

/// `println!` to the EL2 console.
macro_rules! println {
    () => { $crate::console::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Prints `PKVM-RESULT fail <reason>` (the line xtask looks for) and powers off.
macro_rules! result_fail {
    ($($arg:tt)*) => {{
        $crate::console::print(format_args!("EL2: {}\n", format_args!($($arg)*)));
        $crate::console::print(format_args!("PKVM-RESULT fail el2: {}\n", format_args!($($arg)*)));
        $crate::psci::system_off()
    }};
}
