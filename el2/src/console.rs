//! The EL2 console: the PL011 UART named by the device tree's `/chosen/stdout-path`, driven by
//! the `arm-pl011-uart` crate (QEMU's PL011 needs no set-up, so EL2 only writes to it).
//!
//! Several CPUs print: the console is a lock that records **which CPU** holds it, so that the
//! panic path can tell "this CPU panicked while printing" (it takes the console over: the
//! interrupted print will never finish) from "another CPU is printing" (it waits, and only
//! after a long bounded wait — a CPU stuck with the lock — takes it over anyway: a garbled
//! line beats a silent hang).

use arm_pl011_uart::{PL011Registers, Uart, UniqueMmioPointer};
use core::cell::UnsafeCell;
use core::fmt::{self, Write};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

/// The console: the UART, and the CPU that holds it.
struct Console {
    /// 0 = free, else the holder's [`cpu_tag`].
    owner: AtomicU64,
    uart: UnsafeCell<Option<Uart<'static>>>,
}

// SAFETY: `uart` is only touched by the CPU whose tag is in `owner` (taken with an acquiring
// compare-exchange, released with a releasing store), or by the panic path once it has
// taken `owner` over (see `print_panic`).
unsafe impl Sync for Console {}

static CONSOLE: Console = Console {
    owner: AtomicU64::new(0),
    uart: UnsafeCell::new(None),
};

/// This CPU's tag: its MPIDR affinity fields, plus one (never 0).
fn cpu_tag() -> u64 {
    use aarch64_cpu::registers::{MPIDR_EL1, Readable};
    (MPIDR_EL1.get() & 0xff_00ff_ffff) + 1
}

/// Runs `f` on the UART with the console held by this CPU. `takeover`: the caller is the
/// panic path, which may take the console from a holder that will never release it.
fn with_uart(takeover: bool, f: impl FnOnce(&mut Uart<'static>)) {
    let me = cpu_tag();
    let mut spins: u64 = 0;
    loop {
        match CONSOLE
            .owner
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => break,
            // This CPU holds it: only the panic path can get here (EL2 takes no interrupts;
            // an exception while printing ends in a panic).
            Err(holder) if holder == me && takeover => break,
            Err(_) if takeover && spins > 50_000_000 => {
                CONSOLE.owner.store(me, Ordering::SeqCst);
                break;
            }
            Err(_) => {
                spins += 1;
                core::hint::spin_loop();
            }
        }
    }
    // SAFETY: this CPU holds the console (see `Console`'s `Sync`): no other reference to the
    // UART exists while `f` runs.
    if let Some(uart) = unsafe { (*CONSOLE.uart.get()).as_mut() } {
        f(uart);
    }
    CONSOLE.owner.store(0, Ordering::Release);
}

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
    let uart = Uart::new(regs);
    with_uart_slot(|slot| *slot = Some(uart));
}

/// Installs the UART, holding the console.
fn with_uart_slot(f: impl FnOnce(&mut Option<Uart<'static>>)) {
    let me = cpu_tag();
    while CONSOLE
        .owner
        .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    // SAFETY: this CPU holds the console (see `Console`'s `Sync`).
    f(unsafe { &mut *CONSOLE.uart.get() });
    CONSOLE.owner.store(0, Ordering::Release);
}

/// Prints to the console (no-op before [`init`]).
pub fn print(args: fmt::Arguments<'_>) {
    with_uart(false, |uart| {
        let _ = uart.write_fmt(args);
    });
}

/// Prints from the panic handler: takes the console over if this CPU was printing when it
/// panicked, waits (boundedly) if another CPU is.
pub fn print_panic(args: fmt::Arguments<'_>) {
    with_uart(true, |uart| {
        let _ = uart.write_fmt(args);
    });
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
