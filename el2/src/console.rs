//! The EL2 console is the shared one of `pkvm_rt::console` (an SMP- and panic-safe PL011
//! console; `print!`/`println!` come from `pkvm_rt`); EL2 adds the failure report below.

pub use pkvm_rt::console::{print, print_panic};

/// Takes the device tree's console PL011 at `base` as the console.
pub fn init(base: usize) {
    // SAFETY: `base` is the PL011's register block from the device tree; with the MMU off it is
    // accessed as Device memory (and EL2's stage-1 maps it as Device). Nothing else in EL2 maps
    // or uses it, and the primary CPU calls this once, at boot.
    unsafe { pkvm_rt::console::init(base) }
}

/// Prints `PKVM-RESULT fail <reason>` (the line xtask looks for) and powers off.
macro_rules! result_fail {
    ($($arg:tt)*) => {{
        $crate::console::print(format_args!("EL2: {}\n", format_args!($($arg)*)));
        $crate::console::print(format_args!("PKVM-RESULT fail el2: {}\n", format_args!($($arg)*)));
        $crate::psci::system_off()
    }};
}
