//! The console of EL2 and the host: the PL011 UART named by the device tree's
//! `/chosen/stdout-path` ([`crate::dt::console_pl011`]), driven by the `arm-pl011-uart` crate
//! (QEMU's PL011 needs no set-up, so the images only write to it). [`print!`](crate::print) and
//! [`println!`](crate::println) write to it. (The guest has no UART: it prints through MMIO
//! exits to the host.)
//!
//! Several CPUs print: the console is a lock that records **which CPU** holds it (its
//! `MPIDR_EL1` affinity), so that the panic path can tell "this CPU panicked while printing"
//! (it takes the console over: the interrupted print will never finish) from "another CPU is
//! printing" (it waits, and only after a long bounded wait — a CPU stuck with the lock — takes
//! it over anyway: a garbled line beats a silent hang). Neither image takes interrupts, so a
//! CPU never re-enters the console except through a panic.
#![allow(unsafe_code)]

use arm_pl011_uart::{PL011Registers, Uart, UniqueMmioPointer};
use core::cell::UnsafeCell;
use core::fmt::{self, Write};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

/// How many times the panic path polls a console another CPU holds before it takes it over.
const PANIC_WAIT_SPINS: u64 = 50_000_000;

/// The console: the UART, and the CPU that holds it.
struct Console {
    /// 0 = free, else the holder's [`cpu_tag`].
    owner: AtomicU64,
    uart: UnsafeCell<Option<Uart<'static>>>,
}

// SAFETY: `uart` is only touched by the CPU whose tag is in `owner` (taken with an acquiring
// compare-exchange, released with a releasing store), or by the panic path once it has taken
// `owner` over (see `print_panic`).
unsafe impl Sync for Console {}

static CONSOLE: Console = Console {
    owner: AtomicU64::new(0),
    uart: UnsafeCell::new(None),
};

/// This CPU's tag: its MPIDR affinity fields, plus one (never 0).
fn cpu_tag() -> u64 {
    crate::regs::mpidr_affinity() + 1
}

/// Runs `f` on the UART slot with the console held by this CPU. `takeover`: the caller is the
/// panic path, which may take the console from a holder that will never release it.
fn with_console(takeover: bool, f: impl FnOnce(&mut Option<Uart<'static>>)) {
    let me = cpu_tag();
    let mut spins: u64 = 0;
    loop {
        match CONSOLE
            .owner
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => break,
            // This CPU holds it: only the panic path can get here (no interrupts are taken;
            // an exception while printing ends in a panic).
            Err(holder) if holder == me && takeover => break,
            Err(_) if takeover && spins > PANIC_WAIT_SPINS => {
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
    // UART slot exists while `f` runs.
    f(unsafe { &mut *CONSOLE.uart.get() });
    CONSOLE.owner.store(0, Ordering::Release);
}

/// Takes the PL011 at `base` as the console. Called once, by the boot CPU, before anything is
/// printed; a null `base` leaves the console silent.
///
/// # Safety
///
/// `base` must be the physical address of a PL011's register block, accessible as Device memory
/// (the MMU off, or an identity map of that page as Device), that nothing else uses as long as
/// the image runs; `init` must not be called twice.
pub unsafe fn init(base: usize) {
    let Some(ptr) = NonNull::new(base as *mut PL011Registers) else {
        return;
    };
    // SAFETY: the caller guarantees that `base` is a PL011 register block only the console
    // uses, so this is the only pointer to it.
    let regs = unsafe { UniqueMmioPointer::new(ptr) };
    let uart = Uart::new(regs);
    with_console(false, |slot| *slot = Some(uart));
}

/// Prints to the console (no-op before [`init`]). Never inlined: every `println!` is a call.
#[inline(never)]
pub fn print(args: fmt::Arguments<'_>) {
    with_console(false, |slot| {
        if let Some(uart) = slot {
            let _ = uart.write_fmt(args);
        }
    });
}

/// Prints from a panic handler: takes the console over if this CPU was printing when it
/// panicked, waits (boundedly) if another CPU is.
#[inline(never)]
pub fn print_panic(args: fmt::Arguments<'_>) {
    with_console(true, |slot| {
        if let Some(uart) = slot {
            let _ = uart.write_fmt(args);
        }
    });
}

/// `print!` to the console ([`console::print`](crate::console::print)).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

/// `println!` to the console ([`console::print`](crate::console::print)).
#[macro_export]
macro_rules! println {
    () => { $crate::console::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}
