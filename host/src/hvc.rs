//! Hypercalls to EL2: SMCCC over `HVC #0` (function id in `x0`, arguments in `x1..=x6`,
//! results in `x0..=x3`). [`Hvc`] is the host's [`Transport`] for the typed client
//! ([`crate::pkvm::PKVM`]); [`FpChecked`] is the same with a pattern in the host's own `d16`
//! across the call (what a world switch must not lose).

use core::arch::asm;
use core::cell::Cell;
use pkvm_client::Transport;

/// `HVC #0` with `x0 = $fid`, `x1..=x6 = $args`, and `x7 = $x7` (which EL2 ignores: it is the
/// caller's scratch register around the call); `$before`/`$after` are instructions run just
/// before and after the `hvc`, `$clobber` what they change besides `x7`. Evaluates to
/// `([x0, x1, x2, x3], x7)`.
///
/// Treats `x4..=x17` as clobbered even though SMCCC 1.1 says EL2 preserves them — the `boot`
/// scenario checks that promise separately (see [`preserved_after_hvc`]).
macro_rules! hvc_asm {
    ($fid:expr, $args:expr, $x7:expr, [$($before:literal),*], [$($after:literal),*]
     $(, $($clobber:tt)+)?) => {{
        let a: [u64; 6] = $args;
        let (r0, r1, r2, r3, x7): (u64, u64, u64, u64, u64);
        // SAFETY: `hvc #0` traps to EL2, which follows SMCCC: it changes only x0-x3 (declared
        // as outputs; the other caller-saved registers are declared clobbered) and returns to
        // the next instruction. It may read or write memory the host shared with it, so no
        // `nomem`. The instructions around it change only x7 and what `$clobber` declares.
        unsafe {
            asm!(
                $($before,)* "hvc #0", $($after,)*
                inout("x0") $fid => r0,
                inout("x1") a[0] => r1,
                inout("x2") a[1] => r2,
                inout("x3") a[2] => r3,
                inout("x4") a[3] => _,
                inout("x5") a[4] => _,
                inout("x6") a[5] => _,
                inout("x7") $x7 => x7,
                out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
                out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
                $($($clobber)+,)?
                options(nostack)
            );
        }
        ([r0, r1, r2, r3], x7)
    }};
}

/// The host's hypercall instruction, `HVC #0`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hvc;

impl Transport for Hvc {
    #[inline(always)]
    fn smccc(&self, fid: u64, args: [u64; 6]) -> [u64; 4] {
        hvc(fid, args)
    }
}

/// `HVC #0` with `pattern` in the host's `d16` across the call; [`FpChecked::survived`] says
/// whether it came back. A guest puts its own pattern in its `d16`, so a world switch that
/// failed to restore the host's FP registers shows up here.
#[derive(Debug)]
pub struct FpChecked {
    pattern: u64,
    survived: Cell<bool>,
}

impl FpChecked {
    /// A transport that keeps `pattern` in `d16`.
    pub const fn new(pattern: u64) -> Self {
        FpChecked {
            pattern,
            survived: Cell::new(true),
        }
    }

    /// Whether `d16` held the pattern after every call since the last time this was asked.
    pub fn survived(&self) -> bool {
        self.survived.replace(true)
    }
}

impl Transport for FpChecked {
    fn smccc(&self, fid: u64, args: [u64; 6]) -> [u64; 4] {
        let (r, back) = hvc_asm!(
            fid,
            args,
            self.pattern,
            ["fmov d16, x7"],
            ["fmov x7, d16"],
            out("v16") _
        );
        if back != self.pattern {
            self.survived.set(false);
        }
        r
    }
}

/// Calls EL2: `x0 = fid`, `x1..=x6 = args`; returns `x0..=x3`.
#[inline(always)]
pub fn hvc(fid: u64, args: [u64; 6]) -> [u64; 4] {
    hvc_asm!(fid, args, 0u64, [], []).0
}

/// Issues hypercall `fid` with every general register except `x0` and `sp` set to a known
/// pattern (`xn = 0x5a5a_0000 + n`) and returns what `x1..=x30` hold afterwards, to check
/// which ones EL2 preserves. Index `n - 1` of the result is `xn`.
pub fn preserved_after_hvc(fid: u64) -> [u64; 30] {
    // buf[0..11]: the caller's x19..x29, saved and restored around the call.
    // buf[11..41]: x1..x30 after the call.
    let mut buf = [0u64; 41];
    // SAFETY: the block saves the callee-saved registers x19-x29 into `buf` before it changes
    // them and restores them before it ends; x1-x18 and x30 are declared clobbered; `buf` is
    // found again through the 16-byte stack slot it pushes (and pops before the end), so a
    // misbehaving EL2 cannot make it write anywhere else. `hvc #0` is as in [`hvc`].
    unsafe {
        asm!(
            "stp x19, x20, [{buf}, #0]",
            "stp x21, x22, [{buf}, #16]",
            "stp x23, x24, [{buf}, #32]",
            "stp x25, x26, [{buf}, #48]",
            "stp x27, x28, [{buf}, #64]",
            "str x29, [{buf}, #80]",
            "str {buf}, [sp, #-16]!",
            "movz x1, #0x5a5a, lsl #16", "movk x1, #1",
            "movz x2, #0x5a5a, lsl #16", "movk x2, #2",
            "movz x3, #0x5a5a, lsl #16", "movk x3, #3",
            "movz x4, #0x5a5a, lsl #16", "movk x4, #4",
            "movz x5, #0x5a5a, lsl #16", "movk x5, #5",
            "movz x6, #0x5a5a, lsl #16", "movk x6, #6",
            "movz x7, #0x5a5a, lsl #16", "movk x7, #7",
            "movz x8, #0x5a5a, lsl #16", "movk x8, #8",
            "movz x9, #0x5a5a, lsl #16", "movk x9, #9",
            "movz x10, #0x5a5a, lsl #16", "movk x10, #10",
            "movz x11, #0x5a5a, lsl #16", "movk x11, #11",
            "movz x12, #0x5a5a, lsl #16", "movk x12, #12",
            "movz x13, #0x5a5a, lsl #16", "movk x13, #13",
            "movz x14, #0x5a5a, lsl #16", "movk x14, #14",
            "movz x15, #0x5a5a, lsl #16", "movk x15, #15",
            "movz x16, #0x5a5a, lsl #16", "movk x16, #16",
            "movz x17, #0x5a5a, lsl #16", "movk x17, #17",
            "movz x18, #0x5a5a, lsl #16", "movk x18, #18",
            "movz x19, #0x5a5a, lsl #16", "movk x19, #19",
            "movz x20, #0x5a5a, lsl #16", "movk x20, #20",
            "movz x21, #0x5a5a, lsl #16", "movk x21, #21",
            "movz x22, #0x5a5a, lsl #16", "movk x22, #22",
            "movz x23, #0x5a5a, lsl #16", "movk x23, #23",
            "movz x24, #0x5a5a, lsl #16", "movk x24, #24",
            "movz x25, #0x5a5a, lsl #16", "movk x25, #25",
            "movz x26, #0x5a5a, lsl #16", "movk x26, #26",
            "movz x27, #0x5a5a, lsl #16", "movk x27, #27",
            "movz x28, #0x5a5a, lsl #16", "movk x28, #28",
            "movz x29, #0x5a5a, lsl #16", "movk x29, #29",
            "movz x30, #0x5a5a, lsl #16", "movk x30, #30",
            "hvc #0",
            "str x30, [sp, #8]",
            "ldr x30, [sp]",
            "stp x1, x2, [x30, #88]",
            "stp x3, x4, [x30, #104]",
            "stp x5, x6, [x30, #120]",
            "stp x7, x8, [x30, #136]",
            "stp x9, x10, [x30, #152]",
            "stp x11, x12, [x30, #168]",
            "stp x13, x14, [x30, #184]",
            "stp x15, x16, [x30, #200]",
            "stp x17, x18, [x30, #216]",
            "stp x19, x20, [x30, #232]",
            "stp x21, x22, [x30, #248]",
            "stp x23, x24, [x30, #264]",
            "stp x25, x26, [x30, #280]",
            "stp x27, x28, [x30, #296]",
            "str x29, [x30, #312]",
            "ldr x1, [sp, #8]",
            "str x1, [x30, #320]",
            "add sp, sp, #16",
            "ldp x19, x20, [x30, #0]",
            "ldp x21, x22, [x30, #16]",
            "ldp x23, x24, [x30, #32]",
            "ldp x25, x26, [x30, #48]",
            "ldp x27, x28, [x30, #64]",
            "ldr x29, [x30, #80]",
            buf = in(reg) buf.as_mut_ptr(),
            inout("x0") fid => _,
            out("x1") _, out("x2") _, out("x3") _, out("x4") _, out("x5") _, out("x6") _,
            out("x7") _, out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
            out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
            out("x18") _, out("x30") _,
        );
    }
    let mut out = [0u64; 30];
    out.copy_from_slice(&buf[11..41]);
    out
}
