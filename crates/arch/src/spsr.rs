//! PSTATE as saved in `SPSR_ELx`: the bits EL2 reads and writes, for an interrupted AArch64
//! context and for an AArch32 one (`M[4]` = 1), whose layout differs above bit 20.

/// `N`, `Z`, `C`, `V` (bits 31:28), the same in both layouts.
pub const NZCV: u64 = 0xf << 28;
/// `D` (AArch64 only): debug exceptions masked.
pub const D: u64 = 1 << 9;
/// `A`: SError masked.
pub const A: u64 = 1 << 8;
/// `I`: IRQ masked.
pub const I: u64 = 1 << 7;
/// `F`: FIQ masked.
pub const F: u64 = 1 << 6;
/// `D`, `A`, `I` and `F` together.
pub const DAIF: u64 = D | A | I | F;
/// `M[4]`: the interrupted context was AArch32.
pub const M_AARCH32: u64 = 1 << 4;
/// `M[3:0]` (AArch64): exception level and stack pointer.
pub const M_MASK: u64 = 0xf;
/// `M[3:0]` = EL0t.
pub const M_EL0T: u64 = 0b0000;
/// `M[3:0]` = EL1t (EL1 on `SP_EL0`).
pub const M_EL1T: u64 = 0b0100;
/// `M[3:0]` = EL1h (EL1 on `SP_EL1`).
pub const M_EL1H: u64 = 0b0101;
/// `M[4:0]` of AArch32 User mode.
pub const M32_USR: u64 = 0b1_0000;

/// `PAN` (bit 22 in both layouts): privileged access never.
pub const PAN: u64 = 1 << 22;
/// `DIT` (bit 24 in both layouts as saved in `SPSR_ELx`): data-independent timing.
pub const DIT: u64 = 1 << 24;
/// `SS` (bit 21 in both layouts): software step.
pub const SS: u64 = 1 << 21;
/// `IL` (bit 20 in both layouts): illegal execution state.
pub const IL: u64 = 1 << 20;
/// AArch64 `UAO` (bit 23): user access override.
pub const UAO: u64 = 1 << 23;
/// AArch64 `TCO` (bit 25): tag check override (FEAT_MTE).
pub const TCO: u64 = 1 << 25;
/// AArch64 `SSBS` (bit 12): speculative store bypass safe.
pub const SSBS: u64 = 1 << 12;
/// AArch64 `ALLINT` (bit 13): all interrupts masked (FEAT_NMI).
pub const ALLINT: u64 = 1 << 13;
/// AArch64 `BTYPE` (bits 11:10): branch type (FEAT_BTI).
pub const BTYPE: u64 = 0b11 << 10;

/// Where an exception came from, as the vector table distinguishes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// The same exception level, on `SP_EL0` (vector offset 0x000).
    CurrentSp0,
    /// The same exception level, on `SP_ELx` (0x200).
    CurrentSpx,
    /// A lower exception level in AArch64 (0x400).
    LowerAarch64,
    /// A lower exception level in AArch32 (0x600).
    LowerAarch32,
}

impl Source {
    /// Offset of this group's synchronous entry from the vector base.
    #[must_use]
    #[inline]
    pub const fn vector_offset(self) -> u64 {
        match self {
            Source::CurrentSp0 => 0x000,
            Source::CurrentSpx => 0x200,
            Source::LowerAarch64 => 0x400,
            Source::LowerAarch32 => 0x600,
        }
    }
}

/// How an exception taken to EL1 from the context `spsr` describes is vectored: EL1 on
/// `SP_EL0` or `SP_EL1`, EL0 in AArch64 or in AArch32 (any `M[4]` = 1 mode is AArch32: at EL1
/// only User mode is possible, since EL1 itself is AArch64 under pkvm-rs).
#[must_use]
#[inline]
pub const fn source_for_el1(spsr: u64) -> Source {
    if spsr & M_AARCH32 != 0 {
        Source::LowerAarch32
    } else {
        match spsr & M_MASK {
            M_EL1T => Source::CurrentSp0,
            M_EL1H => Source::CurrentSpx,
            _ => Source::LowerAarch64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_vectors() {
        assert_eq!(source_for_el1(0x3c5), Source::CurrentSpx);
        assert_eq!(source_for_el1(0x3c4), Source::CurrentSp0);
        assert_eq!(source_for_el1(0x0), Source::LowerAarch64);
        // AArch32 User mode: M[4:0] = 0b10000, whatever M[3:0] says.
        assert_eq!(source_for_el1(0x10), Source::LowerAarch32);
        assert_eq!(source_for_el1(0x1d5), Source::LowerAarch32);
        assert_eq!(Source::LowerAarch32.vector_offset(), 0x600);
        assert_eq!(Source::LowerAarch64.vector_offset(), 0x400);
    }
}
