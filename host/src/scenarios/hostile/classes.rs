//! Every other trapping instruction class, each tried exhaustively or many times, then a
//! seeded random run of 100,000 words from those classes.

use super::chunk::{Chunk, enc, flush_if, insn};
use super::sysregs::{SWEPT, readable};
use super::{RANDOM_WORDS, Rng, SEED, bad_addr, el2_alive, stat};
use crate::checks::Checks;
use core::sync::atomic::Ordering;
use pkvm_abi::{HostHcall, Stat, hvc_fid, psci};

/// A PSCI/SMCCC function id EL2 would act on in a way that ends the scenario (power off,
/// reset, suspend, this CPU off).
fn ends_the_run(fid: u64) -> bool {
    matches!(
        fid as u32,
        psci::SYSTEM_OFF
            | psci::SYSTEM_RESET
            | psci::CPU_OFF
            | psci::CPU_SUSPEND_32
            | psci::CPU_SUSPEND_64
            | 0x8400_000b // CPU_FREEZE
            | 0x8400_000c // CPU_DEFAULT_SUSPEND
            | 0xc400_000c
            | 0x8400_000e // SYSTEM_SUSPEND
            | 0xc400_000e
            | 0x8400_0012 // SYSTEM_RESET2
            | 0xc400_0012
    )
}

/// A random function id: the vendor range (pkvm-rs's own calls), the PSCI and SMCCC ranges,
/// or anything.
fn random_fid(rng: &mut Rng) -> u64 {
    let fid = match rng.below(4) {
        0 => 0xc600_0000 | rng.below(0x48),
        1 => [0x8000_0000u64, 0x8400_0000, 0xc400_0000][rng.below(3) as usize] | rng.below(0x20),
        2 => (rng.next() as u32 | 0x8000_0000).into(),
        _ => rng.next(),
    };
    if ends_the_run(fid) {
        hvc_fid(HostHcall::Version)
    } else {
        fid
    }
}

/// `HVC`/`SMC` with random function ids and arguments (invalid addresses: bit 63 set).
fn push_call(chunk: &mut Chunk, rng: &mut Rng, smc: bool) {
    let fid = random_fid(rng);
    chunk.load(0, fid);
    for r in 1..8 {
        let v = bad_addr(rng);
        chunk.load(r, v);
    }
    let imm = rng.next() as u16;
    chunk.push(if smc { insn::smc(imm) } else { insn::hvc(imm) });
}

/// Every other trapping instruction class, each tried exhaustively or many times.
pub fn trap_classes(c: &mut Checks, chunk: &mut Chunk) {
    let mut rng = Rng(SEED ^ 1);
    let el2_undefs0 = stat(Stat::InjectedUndefs);

    // SYS and SYSL: TLBI, DC, AT, IC, prediction restriction, ... (op0 = 1), every encoding,
    // with an address that faults; SYSL results land in x7, which nothing uses.
    let mut acc = (0, 0);
    chunk.load(8, bad_addr(&mut rng));
    for e in 0..1u32 << 14 {
        flush_if(chunk, 8, &mut acc);
        if chunk.len == 0 {
            chunk.load(8, bad_addr(&mut rng));
        }
        chunk.push(insn::sys(e, 8, false));
    }
    for e in 0..1u32 << 14 {
        flush_if(chunk, 2, &mut acc);
        chunk.push(insn::sys(e, 7, true));
    }
    let (u, o) = chunk.run();
    acc = (acc.0 + u, acc.1 + o);
    c.check(
        "SYS/SYSL (TLBI, DC, AT, IC, ...): all 32768 encodings executed, EL2 alive",
        el2_alive(),
        format_args!("{} UNDEFs, {} other exceptions at EL1", acc.0, acc.1),
    );

    // MSR (immediate): every PSTATE field encoding except SPSel (which would move the stack).
    let mut n = 0;
    for op1 in 0..8 {
        for crm in 0..16 {
            for op2 in 0..8 {
                if op1 == 0 && op2 == 5 {
                    continue;
                }
                chunk.push(insn::msr_imm(op1, crm, op2));
                n += 1;
            }
        }
    }
    let (u, o) = chunk.run();
    c.check(
        "MSR (immediate): every PSTATE-field encoding but SPSel, EL2 alive",
        el2_alive(),
        format_args!("{n} executed: {u} UNDEFs, {o} other exceptions"),
    );

    // HVC and SMC with random ids and arguments.
    for smc in [false, true] {
        let mut acc = (0, 0);
        for _ in 0..512 {
            flush_if(chunk, 40, &mut acc);
            push_call(chunk, &mut rng, smc);
        }
        let (u, o) = chunk.run();
        c.check(
            if smc {
                "SMC: 512 random function ids and arguments (PSCI relay), EL2 alive"
            } else {
                "HVC: 512 random function ids and arguments (hypercalls, PSCI), EL2 alive"
            },
            el2_alive(),
            format_args!("{} UNDEFs, {} other exceptions", acc.0 + u, acc.1 + o),
        );
    }

    // WFx (never blocking: SEVL before WFE, a timeout in the past for WFET/WFIT).
    chunk.load(8, 0);
    for _ in 0..32 {
        chunk.push(insn::SEVL);
        chunk.push(insn::WFE);
        chunk.push(insn::WFET_X8);
        chunk.push(insn::WFIT_X8);
    }
    let (u, o) = chunk.run();
    c.check(
        "WFE, WFET, WFIT at EL1, EL2 alive",
        el2_alive(),
        format_args!("{u} UNDEFs, {o} other exceptions"),
    );

    // ERET at EL1, to the next instruction.
    for _ in 0..64 {
        chunk.push(insn::ADR_X8_P20);
        for w in insn::ERET_TAIL {
            chunk.push(w);
        }
    }
    let (u, o) = chunk.run();
    c.check(
        "ERET at EL1 (64 times), EL2 alive",
        el2_alive() && u == 0 && o == 0,
        format_args!("{u} UNDEFs, {o} other exceptions"),
    );

    // Exception-generating instructions: SVC, BRK, HLT, DCPS1-3, UDF.
    for _ in 0..64 {
        let imm = u32::from(rng.next() as u16) << 5;
        for base in [
            0xd400_0001u32,
            0xd420_0000,
            0xd440_0000,
            0xd4a0_0001,
            0xd4a0_0002,
            0xd4a0_0003,
        ] {
            chunk.push(base | imm);
        }
        chunk.push(rng.next() as u32 & 0xffff);
    }
    let (u, o) = chunk.run();
    c.check(
        "SVC, BRK, HLT, DCPS1-3, UDF at EL1, EL2 alive",
        el2_alive() && u + o >= 64 * 7,
        format_args!("{u} UNDEFs, {o} other exceptions"),
    );

    // SVE, SME and FP/SIMD encodings with their EL1 traps set (CPACR_EL1.ZEN/SMEN = 0).
    for (name, word) in [
        ("SVE", sve_word as fn(&mut Rng) -> u32),
        ("SME", sme_word),
        ("FP/SIMD", fp_word),
    ] {
        for _ in 0..1024 {
            chunk.push(word(&mut rng));
        }
        let (u, o) = chunk.run();
        c.check(
            "SVE, SME, FP/SIMD encodings (1024 each), EL2 alive",
            el2_alive(),
            format_args!("{name}: {u} UNDEFs, {o} other exceptions"),
        );
    }
    println!(
        "hostile: trap classes: EL2 injected {} UNDEFs",
        stat(Stat::InjectedUndefs) - el2_undefs0
    );
}

fn sve_word(rng: &mut Rng) -> u32 {
    (rng.next() as u32 & 0x01ff_ffff) | 0x0400_0000
}

fn sme_word(rng: &mut Rng) -> u32 {
    (rng.next() as u32 & !(0xf << 25)) | (1 << 31)
}

fn fp_word(rng: &mut Rng) -> u32 {
    let r = rng.next() as u32;
    (r & !(0xf << 25)) | (0b0111 << 25) | (r & (1 << 28))
}

/// 100,000 words from the trap-prone classes, seeded.
pub fn random_run(c: &mut Checks, chunk: &mut Chunk) {
    let mut rng = Rng(SEED);
    println!("hostile: random run: {RANDOM_WORDS} words, seed {SEED:#x}");
    // Encodings a random MSR may target: those the sweep could not read (write-only,
    // trapped, absent). Readable ones only ever get their own value back (the sweep).
    // A pseudo-random sample of about a thirtieth of them (all of the GIC's write-only
    // ICC_* registers included), so that the list fits.
    let mut wo = [0u32; 1024];
    let mut n_wo = 0;
    let icc = |e: u32| e >> 7 == enc(3, 0, 12, 0, 0) >> 7;
    // Without the sweep nothing is known to be safe to write: no random MSR then.
    let swept = SWEPT.load(Ordering::Relaxed);
    for e in (0..1u32 << 15).filter(|_| swept) {
        let sampled = e.wrapping_mul(0x9e37_79b9) >> 27 == 0;
        if !readable(e) && n_wo < wo.len() && (sampled || icc(e)) {
            wo[n_wo] = e;
            n_wo += 1;
        }
    }
    let el2_undefs0 = stat(Stat::InjectedUndefs);
    let mut acc = (0u64, 0u64);
    let mut words = 0u64;
    let mut per_class = [0u64; 10];
    while words < RANDOM_WORDS {
        flush_if(chunk, 48, &mut acc);
        let class = rng.below(10) as usize;
        per_class[class] += 1;
        match class {
            // MRS of anything, into x1..x7.
            0 | 1 => chunk.push(insn::mrs(
                rng.below(1 << 15) as u32,
                1 + rng.below(7) as u32,
            )),
            // MSR of an encoding that is not readable, from x1..x7.
            2 if n_wo > 0 => chunk.push(insn::msr(
                wo[rng.below(n_wo as u64) as usize],
                1 + rng.below(7) as u32,
            )),
            // SYS with a faulting address in x8; SYSL into x7.
            2 | 3 => {
                chunk.load(8, bad_addr(&mut rng));
                chunk.push(insn::sys(rng.below(1 << 14) as u32, 8, false));
            }
            4 => chunk.push(insn::sys(rng.below(1 << 14) as u32, 7, true)),
            // Hints (never WFI; WFE after SEVL) and barriers.
            5 => {
                let w = 0xd503_201f | ((rng.below(0x100) as u32) << 5);
                match w {
                    insn::WFI => chunk.push(insn::SEVL),
                    insn::WFE => {
                        chunk.push(insn::SEVL);
                        chunk.push(insn::WFE);
                    }
                    w => chunk.push(w),
                }
            }
            // MSR (immediate), never SPSel.
            6 => {
                let (op1, op2) = (rng.below(8) as u32, rng.below(8) as u32);
                if !(op1 == 0 && op2 == 5) {
                    chunk.push(insn::msr_imm(op1, rng.below(16) as u32, op2));
                }
            }
            // HVC / SMC with random ids and arguments.
            7 => {
                let smc = rng.below(2) == 0;
                push_call(chunk, &mut rng, smc);
            }
            // Exception-generating and UDF.
            8 => {
                let imm = u32::from(rng.next() as u16) << 5;
                let base =
                    [0xd400_0001u32, 0xd420_0000, 0xd440_0000, 0xd4a0_0001][rng.below(4) as usize];
                chunk.push(base | imm);
            }
            // SVE / SME / FP-SIMD data processing.
            _ => {
                let w = match rng.below(3) {
                    0 => sve_word(&mut rng),
                    1 => sme_word(&mut rng),
                    _ => fp_word(&mut rng),
                };
                chunk.push(w);
            }
        }
        words += 1;
        if words.is_multiple_of(20_000) {
            let alive = el2_alive();
            println!("hostile: random run: {words} words, EL2 alive: {alive}");
        }
    }
    let (u, o) = chunk.run();
    acc = (acc.0 + u, acc.1 + o);
    c.check(
        "random run: 100,000 trap-prone words executed, EL2 alive",
        el2_alive() && words >= RANDOM_WORDS,
        format_args!(
            "{} UNDEFs and {} other exceptions at EL1, {} UNDEFs from EL2; per class {per_class:?}",
            acc.0,
            acc.1,
            stat(Stat::InjectedUndefs) - el2_undefs0
        ),
    );
}

