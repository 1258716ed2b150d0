//! Every `MRS` encoding of the op0 = 2/3 space, each read value written back; the encodings
//! that trap to EL2 found by EL2's injected-UNDEF counter.

use super::chunk::{Chunk, enc, insn};
use super::{el2_alive, stat};
use crate::checks::Checks;
use crate::cpu;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use pkvm_abi::Stat;

/// `SCXTNUM_EL1` and `SCXTNUM_EL0`.
const SCXTNUM_EL1: u32 = enc(3, 0, 13, 0, 7);
const SCXTNUM_EL0: u32 = enc(3, 3, 13, 0, 7);

fn name_of(e: u32) -> (u32, u32, u32, u32, u32) {
    (
        (e >> 14) + 2,
        (e >> 11) & 7,
        (e >> 7) & 15,
        (e >> 3) & 15,
        e & 7,
    )
}

/// Readable system-register encodings (bit per encoding), from the sweep.
static READABLE: [AtomicU8; 4096] = [const { AtomicU8::new(0) }; 4096];
/// Whether the sweep ran (and so READABLE is known).
pub static SWEPT: AtomicBool = AtomicBool::new(false);
/// Per-encoding results of one sweep chunk, written by the generated code (`strb`): 1 = the
/// read faulted. Atomics (same layout as `u8`) so that no `static mut` is needed; the sandbox
/// call is opaque to the compiler, so the loads after it see what the code stored.
static FAULTED: [AtomicU8; 512] = [const { AtomicU8::new(0) }; 512];

pub fn readable(e: u32) -> bool {
    READABLE[(e >> 3) as usize].load(Ordering::Relaxed) & (1 << (e & 7)) != 0
}

/// Every `MRS` encoding of op0 = 2/3, each read value written back.
pub fn sweep(c: &mut Checks, chunk: &mut Chunk) {
    const PER_CHUNK: u32 = 512;
    println!(
        "hostile: system-register sweep: 32768 MRS encodings (op0 = 2, 3), read values written back"
    );
    let mut n_readable = 0u64;
    let mut undefs = 0u64;
    let mut others = 0u64;
    let mut trapped = [0u32; 32];
    let mut n_trapped = 0usize;
    let el2_undefs0 = stat(Stat::InjectedUndefs);
    let faulted = FAULTED.as_ptr() as u64;
    for first in (0..1u32 << 15).step_by(PER_CHUNK as usize) {
        let before = stat(Stat::InjectedUndefs);
        chunk.load(8, faulted);
        for e in first..first + PER_CHUNK {
            chunk.push(insn::movz(9, 0, 0));
            chunk.push(insn::mrs(e, 0));
            chunk.push(insn::STRB_W9_X8_POST);
            chunk.push(insn::CBNZ_X9_SKIP1);
            chunk.push(insn::msr(e, 0));
        }
        let (u, o) = chunk.run();
        undefs += u;
        others += o;
        for i in 0..PER_CHUNK {
            if FAULTED[i as usize].load(Ordering::Relaxed) == 0 {
                let e = first + i;
                READABLE[(e >> 3) as usize].fetch_or(1 << (e & 7), Ordering::Relaxed);
                n_readable += 1;
            }
        }
        if stat(Stat::InjectedUndefs) != before {
            // Which of them trapped to EL2: one at a time (reads only).
            for e in first..first + PER_CHUNK {
                let b = stat(Stat::InjectedUndefs);
                chunk.push(insn::mrs(e, 0));
                chunk.run();
                if stat(Stat::InjectedUndefs) != b && n_trapped < trapped.len() {
                    trapped[n_trapped] = e;
                    n_trapped += 1;
                }
            }
        }
    }
    SWEPT.store(true, Ordering::Relaxed);
    let el2_undefs = stat(Stat::InjectedUndefs) - el2_undefs0;
    println!(
        "hostile: sweep: {n_readable} encodings readable, {} faulted on read; {undefs} UNDEFs \
         and {others} other exceptions taken at EL1 (reads and write-backs); EL2 injected \
         {el2_undefs} of the UNDEFs",
        32768 - n_readable
    );
    for &e in &trapped[..n_trapped] {
        let (o0, o1, n, m, o2) = name_of(e);
        println!("hostile:   trapped to EL2, answered with UNDEF: S{o0}_{o1}_C{n}_C{m}_{o2}");
    }
    c.check(
        "sysreg sweep: all 32768 MRS encodings executed, EL2 alive",
        el2_alive() && n_readable > 100,
        format_args!("{n_readable} readable, {undefs} UNDEFs at EL1, {el2_undefs} from EL2"),
    );
    let listed = |e| trapped[..n_trapped].contains(&e);
    if cpu::Features::read().scxtnum {
        c.check(
            "SCXTNUM_EL1 and SCXTNUM_EL0 trap to EL2 and get an UNDEF (HCR_EL2.EnSCXT = 0)",
            listed(SCXTNUM_EL1) && listed(SCXTNUM_EL0) && !readable(SCXTNUM_EL1),
            format_args!("{n_trapped} encodings trapped to EL2"),
        );
    } else {
        c.check(
            "no SCXTNUM on this CPU: its encodings UNDEF without reaching EL2",
            !listed(SCXTNUM_EL1) && !readable(SCXTNUM_EL1),
            format_args!("{n_trapped} encodings trapped to EL2"),
        );
    }
}
