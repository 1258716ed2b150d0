//! Instruction words, and the chunks of them the scenario writes into the sandbox and runs.

use crate::env::Env;
use crate::sandbox;

/// Instruction words (A64).
pub mod insn {
    /// `MRS Xt, S<op0>_<op1>_C<n>_C<m>_<op2>` for a 14-bit system-register encoding.
    pub const fn mrs(enc: u32, rt: u32) -> u32 {
        0xd530_0000 | (enc << 5) | rt
    }
    /// `MSR S<...>, Xt`.
    pub const fn msr(enc: u32, rt: u32) -> u32 {
        0xd510_0000 | (enc << 5) | rt
    }
    /// `SYS #op1, Cn, Cm, #op2, Xt` (`sysl` = 1: `SYSL`) for an 14-bit encoding with op0 = 1.
    pub const fn sys(enc: u32, rt: u32, sysl: bool) -> u32 {
        (if sysl { 0xd528_0000 } else { 0xd508_0000 }) | ((enc & 0x3fff) << 5) | rt
    }
    /// `MSR <pstatefield>, #imm`.
    pub const fn msr_imm(op1: u32, crm: u32, op2: u32) -> u32 {
        0xd500_401f | (op1 << 16) | (crm << 8) | (op2 << 5)
    }
    /// `MOVZ Xd, #imm16, LSL #(16 * hw)`.
    pub const fn movz(rd: u32, imm: u16, hw: u32) -> u32 {
        0xd280_0000 | (hw << 21) | ((imm as u32) << 5) | rd
    }
    /// `MOVK Xd, #imm16, LSL #(16 * hw)`.
    pub const fn movk(rd: u32, imm: u16, hw: u32) -> u32 {
        0xf280_0000 | (hw << 21) | ((imm as u32) << 5) | rd
    }
    /// `STRB W9, [X8], #1`.
    pub const STRB_W9_X8_POST: u32 = 0x3800_1509;
    /// `CBNZ X9, .+8`.
    pub const CBNZ_X9_SKIP1: u32 = 0xb500_0049;
    /// `BR X19`: back to `pkvm_sandbox_run`.
    pub const BR_X19: u32 = 0xd61f_0260;
    /// `HVC #imm`.
    pub const fn hvc(imm: u16) -> u32 {
        0xd400_0002 | ((imm as u32) << 5)
    }
    /// `SMC #imm`.
    pub const fn smc(imm: u16) -> u32 {
        0xd400_0003 | ((imm as u32) << 5)
    }
    /// `ADR X8, .+20`: the instruction after the `ERET` of [`ERET_SEQ`].
    pub const ADR_X8_P20: u32 = 0x1000_00a8;
    /// `MSR ELR_EL1, X8`, `MOVZ X8, #0x3c5`, `MSR SPSR_EL1, X8`, `ERET`.
    pub const ERET_TAIL: [u32; 4] = [0xd518_4028, 0xd280_78a8, 0xd518_4008, 0xd69f_03e0];
    /// `SEVL`, `WFE`.
    pub const SEVL: u32 = 0xd503_20bf;
    pub const WFE: u32 = 0xd503_205f;
    pub const WFI: u32 = 0xd503_207f;
    /// `WFET X8`, `WFIT X8` (FEAT_WFxT).
    pub const WFET_X8: u32 = 0xd503_1008;
    pub const WFIT_X8: u32 = 0xd503_1028;
}

/// The system-register encoding of (op0, op1, CRn, CRm, op2), op0 in 2..=3, as the 15 bits
/// `o0:op1:CRn:CRm:op2` the `MRS`/`MSR` word holds above `Rt` (bit 19 is `op0 - 2`).
pub const fn enc(op0: u32, op1: u32, crn: u32, crm: u32, op2: u32) -> u32 {
    ((op0 - 2) << 14) | (op1 << 11) | (crn << 7) | (crm << 3) | op2
}

/// Writes a chunk of instructions into the sandbox and runs it.
pub struct Chunk {
    base: u64,
    cap: usize,
    pub len: usize,
}

impl Chunk {
    pub fn new(env: &Env) -> Self {
        let s = env.image.sandbox;
        Chunk {
            base: s.start,
            cap: (s.size() / 4) as usize - 1,
            len: 0,
        }
    }

    pub fn room(&self) -> usize {
        self.cap - self.len
    }

    pub fn push(&mut self, w: u32) {
        if self.len < self.cap {
            // SAFETY: the sandbox is this module's, mapped read-write at EL1, and no reference
            // to it exists; `len < cap` keeps the write inside it.
            unsafe { core::ptr::write_volatile((self.base as *mut u32).add(self.len), w) };
            self.len += 1;
        }
    }

    /// `MOVZ`/`MOVK` of a 64-bit value into `xd`.
    pub fn load(&mut self, rd: u32, v: u64) {
        self.push(insn::movz(rd, v as u16, 0));
        for hw in 1..4 {
            self.push(insn::movk(rd, (v >> (16 * hw)) as u16, hw));
        }
    }

    /// Runs what was pushed (with `br x19` appended) and empties the chunk: (UNDEFs, other
    /// exceptions) the instructions took at EL1.
    pub fn run(&mut self) -> (u64, u64) {
        self.push_end();
        sandbox::sync_icache(self.base, (self.len * 4) as u64);
        // SAFETY: the chunk follows the sandbox conventions: generated code writes only
        // x0-x12, uses addresses that fault (non-canonical) or the result buffer, and ends
        // with `br x19`.
        let r = unsafe { sandbox::run(self.base) };
        self.len = 0;
        r
    }

    fn push_end(&mut self) {
        // SAFETY: as in `push`; index `cap` is the last word of the sandbox, kept for this.
        unsafe { core::ptr::write_volatile((self.base as *mut u32).add(self.len), insn::BR_X19) };
        self.len += 1;
    }
}

/// Runs `chunk` if fewer than `need` words are left; returns the counts.
pub fn flush_if(chunk: &mut Chunk, need: usize, acc: &mut (u64, u64)) {
    if chunk.room() < need {
        let (u, o) = chunk.run();
        acc.0 += u;
        acc.1 += o;
    }
}
