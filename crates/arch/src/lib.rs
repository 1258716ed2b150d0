//! The AArch64 vocabulary pkvm-rs speaks: exception syndromes (`ESR_ELx`) decoded into typed
//! values, typed addresses, PSTATE as saved in `SPSR_ELx`, the EL2 control-register bits EL2 sets, and the
//! architectural effect of taking an exception to EL1 (what EL2 emulates when it injects one).
//!
//! Pure, portable code (`no_std`, no `unsafe`): the EL2 image, the portable core and the test
//! host all use it, and it is unit-tested on the development machine. Facts come from the Arm
//! Architecture Reference Manual (DDI 0487); each item names the register field it encodes.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod addr;
pub mod esr;
pub mod exception;
pub mod regs;
pub mod spsr;
