//! The host's saved registers while EL2 handles one of its traps.
//!
//! # Frame layout
//!
//! The lower-EL AArch64 synchronous vector (see `boot.rs`) pushes exactly the registers that
//! the Rust handler may clobber under AAPCS64 — `x0`–`x18` and `x30` — and nothing else, as one
//! 160-byte, 16-byte-aligned frame on the EL2 stack:
//!
//! | offset | contents |
//! |---|---|
//! | `0x00 + 8*n` | `xn`, n = 0..=18 |
//! | `0x98` | `x30` (the host's link register) |
//!
//! `x19`–`x29` are callee-saved: the compiled handler preserves them itself, so the host gets
//! them back unchanged without EL2 ever storing them here. `SP_EL1`, `ELR_EL2`, `SPSR_EL2`
//! and the FP/SIMD registers stay in the CPU (EL2 never touches FP/SIMD). After the handler
//! returns, the vector reloads the frame and `eret`s, so whatever the handler wrote into
//! `x0`–`x18` is what the host sees.

/// Number of general registers in the frame that are stored by number (`x0..=x18`).
pub const SAVED_GPRS: usize = 19;

/// Size of [`HostContext`] in bytes; the vector code uses the same number.
pub const HOST_CONTEXT_SIZE: usize = 160;

/// The host's caller-saved general registers, as stored by the trap vector.
#[repr(C, align(16))]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostContext {
    /// `x0`..=`x18`.
    pub regs: [u64; SAVED_GPRS],
    /// `x30`.
    pub lr: u64,
}

const _: () = assert!(core::mem::size_of::<HostContext>() == HOST_CONTEXT_SIZE);

impl HostContext {
    /// Register `xn`, `n <= 18`.
    #[inline(always)]
    pub fn reg(&self, n: usize) -> u64 {
        self.regs[n]
    }

    /// Sets register `xn`, `n <= 18`.
    #[inline(always)]
    pub fn set_reg(&mut self, n: usize, value: u64) {
        self.regs[n] = value;
    }
}

/// The host's callee-saved registers `x19`–`x29`, saved (below the [`HostContext`]) only on
/// the slow path of a trap whose handler reads or writes an arbitrary host register.
#[repr(C, align(16))]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HighRegs {
    /// `x19`..=`x29`.
    pub regs: [u64; 11],
    _pad: u64,
}

/// Size of [`HighRegs`] in bytes; the vector code uses the same number.
pub const HIGH_REGS_SIZE: usize = 96;

const _: () = assert!(core::mem::size_of::<HighRegs>() == HIGH_REGS_SIZE);

/// Register `xn` of the host (`n` = 31 is the zero register).
pub fn host_reg(ctx: &HostContext, high: &HighRegs, n: u8) -> u64 {
    match n {
        0..=18 => ctx.regs[usize::from(n)],
        19..=29 => high.regs[usize::from(n - 19)],
        30 => ctx.lr,
        _ => 0,
    }
}

/// Sets register `xn` of the host (writes to `n` = 31, the zero register, are dropped).
pub fn set_host_reg(ctx: &mut HostContext, high: &mut HighRegs, n: u8, v: u64) {
    match n {
        0..=18 => ctx.regs[usize::from(n)] = v,
        19..=29 => high.regs[usize::from(n - 19)] = v,
        30 => ctx.lr = v,
        _ => {}
    }
}
