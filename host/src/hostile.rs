//! The `hostile` scenario: a host that throws everything it can at EL2 and checks that EL2
//! survives, refuses what it must, and leaks nothing (`cargo xtask run --scenario hostile`).
//!
//! 1. **System registers**: every `MRS` encoding of the op0 = 2/3 space (32,768), each read
//!    value written back with `MSR` (only what was read: the host must survive its own
//!    writes). Encodings that trap to EL2 are found (EL2's injected-UNDEF counter) and listed;
//!    `SCXTNUM_EL0/EL1` must be among them on CPUs that have them (`HCR_EL2.EnSCXT` = 0).
//! 2. **Every other trapping class**: every `SYS`/`SYSL` encoding (TLBI, DC, AT, IC, ...) with
//!    a non-canonical address, every `MSR` (immediate), `HVC` and `SMC` with random function
//!    ids and arguments, `WFE`/`WFET`/`WFIT`, `ERET` at EL1, exception-generating
//!    instructions, SVE, SME and FP/SIMD encodings with their EL1 traps set.
//! 3. **A seeded random-instruction run**: 100,000 words from those classes, executed in the
//!    sandbox ([`crate::sandbox`]).
//! 4. **EL0**: AArch64 and AArch32 EL0 loads from EL2's memory (the injected abort must come
//!    through the right vector: +0x400 / +0x600), an EL0 read of `SCXTNUM_EL0`.
//! 5. **Devices**: the ITS and fw_cfg are gone (device tree) and abort (MMIO); the
//!    redistributors hide LPIs, hold `EnableLPIs` at 0, refuse LPI tables in EL2's memory.
//! 6. **Guests** that try to reach host state ([`crate::guests::hostile_guests`]).
//!
//! It ends with EL2 alive (it answers `Version`) and every leak counter at its start value.

use crate::checks::Checks;
use crate::env::Env;
use crate::fault::{self, probe_read, probe_read32, probe_write, probe_write32};
use crate::guests::leaks;
use crate::pkvm;
use crate::sandbox::{self, el0};
use core::sync::atomic::{AtomicU8, Ordering};
use pkvm_abi::{HostHcall, Stat, hvc_fid, psci};

/// Instructions the random run executes.
pub const RANDOM_WORDS: u64 = 100_000;
/// The random run's seed (printed; the run is reproducible from it).
const SEED: u64 = 0x7068_6f73_7469_6c65;

/// QEMU `virt`'s GICv3 ITS and fw_cfg (the host no longer finds them in its device tree).
const VIRT_ITS: u64 = 0x0808_0000;
const VIRT_FW_CFG: u64 = 0x0902_0000;

/// Instruction words (A64).
mod insn {
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
const fn enc(op0: u32, op1: u32, crn: u32, crm: u32, op2: u32) -> u32 {
    ((op0 - 2) << 14) | (op1 << 11) | (crn << 7) | (crm << 3) | op2
}

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

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Writes a chunk of instructions into the sandbox and runs it.
struct Chunk {
    base: u64,
    cap: usize,
    len: usize,
}

impl Chunk {
    fn new(env: &Env) -> Self {
        let s = env.image.sandbox;
        Chunk {
            base: s.start,
            cap: (s.size() / 4) as usize - 1,
            len: 0,
        }
    }

    fn room(&self) -> usize {
        self.cap - self.len
    }

    fn push(&mut self, w: u32) {
        if self.len < self.cap {
            // SAFETY: the sandbox is this module's, mapped read-write at EL1, and no reference
            // to it exists; `len < cap` keeps the write inside it.
            unsafe { core::ptr::write_volatile((self.base as *mut u32).add(self.len), w) };
            self.len += 1;
        }
    }

    /// `MOVZ`/`MOVK` of a 64-bit value into `xd`.
    fn load(&mut self, rd: u32, v: u64) {
        self.push(insn::movz(rd, v as u16, 0));
        for hw in 1..4 {
            self.push(insn::movk(rd, (v >> (16 * hw)) as u16, hw));
        }
    }

    /// Runs what was pushed (with `br x19` appended) and empties the chunk: (UNDEFs, other
    /// exceptions) the instructions took at EL1.
    fn run(&mut self) -> (u64, u64) {
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

/// A register value that is never a mapped address: bit 63 set with `TTBR1` walks disabled.
fn bad_addr(rng: &mut Rng) -> u64 {
    rng.next() | (1 << 63)
}

fn stat(s: Stat) -> u64 {
    pkvm::stat(s).unwrap_or(u64::MAX)
}

fn el2_alive() -> bool {
    pkvm::version().is_ok()
}

/// Readable system-register encodings (bit per encoding), from the sweep.
static READABLE: [AtomicU8; 4096] = [const { AtomicU8::new(0) }; 4096];
/// Whether the sweep ran (and so READABLE is known).
static SWEPT: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// Per-encoding results of one sweep chunk, written by the generated code (`strb`): 1 = the
/// read faulted. Atomics (same layout as `u8`) so that no `static mut` is needed; the sandbox
/// call is opaque to the compiler, so the loads after it see what the code stored.
static FAULTED: [AtomicU8; 512] = [const { AtomicU8::new(0) }; 512];

fn readable(e: u32) -> bool {
    READABLE[(e >> 3) as usize].load(Ordering::Relaxed) & (1 << (e & 7)) != 0
}

/// The parts of the scenario, in order; `pkvm.parts=` on the command line picks some.
const PARTS: [&str; 6] = ["sysregs", "classes", "random", "el0", "devices", "guests"];
/// Bit `i` set: run `PARTS[i]`.
static PARTS_SELECTED: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(!0);

/// Selects the parts to run from a comma-separated list (`pkvm.parts=el0,devices`); unknown
/// names are reported and ignored.
pub fn set_parts(list: &str) {
    let mut bits = 0;
    for w in list.split(',') {
        match PARTS.iter().position(|p| *p == w) {
            Some(i) => bits |= 1 << i,
            None => println!("hostile: unknown part {w:?} (known: {PARTS:?})"),
        }
    }
    PARTS_SELECTED.store(bits, Ordering::Relaxed);
}

fn part(name: &str) -> bool {
    let bits = PARTS_SELECTED.load(Ordering::Relaxed);
    let on = PARTS
        .iter()
        .position(|p| *p == name)
        .is_some_and(|i| bits & (1 << i) != 0);
    if !on {
        println!("hostile: part '{name}' not selected (pkvm.parts)");
    }
    on
}

/// Runs the scenario.
pub fn run(c: &mut Checks, env: &mut Env) {
    let start = leaks();
    println!("hostile: EL2 state at start: {start:?}");
    let features = pkvm::version().map(|(_, f)| f);
    println!("hostile: EL2 features {features:x?}");

    let mut chunk = Chunk::new(env);
    if part("sysregs") {
        sysreg_sweep(c, &mut chunk);
    }
    if part("classes") {
        trap_classes(c, &mut chunk);
    }
    if part("random") {
        random_run(c, &mut chunk);
    }
    if part("el0") {
        el0_tests(c, env);
    }
    if part("devices") {
        devices(c, env);
    }
    if part("guests") {
        crate::guests::hostile_guests(c);
    }

    c.check(
        "EL2 is alive at the end (Version answers)",
        el2_alive(),
        format_args!("{:x?}", pkvm::version()),
    );
    let end = leaks();
    println!("hostile: EL2 state at end: {end:?}");
    c.check(
        "leak counters back at their start values",
        end == start && end.shared == 0 && end.guest_shared == 0 && end.vms == 0,
        format_args!("start {start:?}, end {end:?}"),
    );
    println!(
        "hostile: EL2 injected {} UNDEFs and {} aborts, emulated {} device accesses and \
         refused {} device writes in this run",
        stat(Stat::InjectedUndefs),
        stat(Stat::InjectedAborts),
        stat(Stat::EmulatedMmio),
        stat(Stat::RefusedDeviceWrites)
    );
}

/// Whether the CPU has `SCXTNUM_EL0/EL1` (FEAT_CSV2_2, or FEAT_CSV2_1p2).
fn has_scxtnum() -> bool {
    let (pfr0, pfr1): (u64, u64);
    // SAFETY: ID registers are readable at EL1; no side effect.
    unsafe {
        core::arch::asm!("mrs {}, id_aa64pfr0_el1", "mrs {}, id_aa64pfr1_el1",
                         out(reg) pfr0, out(reg) pfr1, options(nomem, nostack))
    };
    let csv2 = (pfr0 >> 56) & 0xf;
    csv2 >= 2 || (csv2 == 1 && (pfr1 >> 32) & 0xf >= 2)
}

/// Every `MRS` encoding of op0 = 2/3, each read value written back.
fn sysreg_sweep(c: &mut Checks, chunk: &mut Chunk) {
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
    if has_scxtnum() {
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

/// Runs `chunk` if fewer than `need` words are left; returns the counts.
fn flush_if(chunk: &mut Chunk, need: usize, acc: &mut (u64, u64)) {
    if chunk.room() < need {
        let (u, o) = chunk.run();
        acc.0 += u;
        acc.1 += o;
    }
}

/// Every other trapping instruction class, each tried exhaustively or many times.
fn trap_classes(c: &mut Checks, chunk: &mut Chunk) {
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
fn random_run(c: &mut Checks, chunk: &mut Chunk) {
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

/// EL0 code that touches EL2's memory, or traps to EL2.
fn el0_tests(c: &mut Checks, env: &Env) {
    const SPSR_EL0T: u64 = 0x3c0; // AArch64 EL0t, DAIF masked
    const SPSR_USR32: u64 = 0x1d0; // AArch32 User, ARM state, A/I/F masked
    let Some(last) = env.ram.ranges().last() else {
        return;
    };
    // The last page of RAM is EL2's (its carve-out); the host's stage-1 maps it for EL0.
    let target = last.end - 4096 + 0x40;
    let aborts0 = stat(Stat::InjectedAborts);

    // SAFETY: the entry is EL0 code of ours that ends in an SVC; EL0t.
    let x = unsafe { sandbox::el0_call(el0::a64_load(), target, SPSR_EL0T) };
    c.check(
        "EL0 (AArch64) load from EL2's memory: abort injected at VBAR_EL1 + 0x400",
        x.vector == 8 && x.esr >> 26 == 0x24 && x.esr & 0x3f == fault::FSC_SEA && x.far == target,
        format_args!(
            "vector {} ESR {:#x} FAR {:#x} ELR {:#x}",
            x.vector, x.esr, x.far, x.elr
        ),
    );

    let pfr0: u64;
    // SAFETY: reading an ID register has no side effect.
    unsafe { core::arch::asm!("mrs {}, id_aa64pfr0_el1", out(reg) pfr0, options(nomem, nostack)) };
    if pfr0 & 0xf == 2 {
        // SAFETY: as above; AArch32 User mode, ARM state.
        let x = unsafe { sandbox::el0_call(el0::a32_load(), target, SPSR_USR32) };
        c.check(
            "EL0 (AArch32) load from EL2's memory: abort injected at VBAR_EL1 + 0x600",
            x.vector == 12
                && x.esr >> 26 == 0x24
                && x.esr & 0x3f == fault::FSC_SEA
                && x.far & 0xffff_ffff == target & 0xffff_ffff
                && x.spsr & 0x1f == 0x10,
            format_args!(
                "vector {} ESR {:#x} FAR {:#x} ELR {:#x} SPSR {:#x}",
                x.vector, x.esr, x.far, x.elr, x.spsr
            ),
        );
    } else {
        println!("hostile: this CPU has no AArch32 EL0: skipping the AArch32 test");
    }
    c.check(
        "EL2 counted each injected abort",
        stat(Stat::InjectedAborts) > aborts0,
        format_args!("{} -> {}", aborts0, stat(Stat::InjectedAborts)),
    );

    if has_scxtnum() {
        // SCTLR_EL1.TSCXT (bit 20) = 0: EL0 may reach SCXTNUM_EL0 as far as EL1 is concerned,
        // so the access traps to EL2 (HCR_EL2.EnSCXT = 0), which injects an UNDEF for EL0.
        let sctlr: u64;
        // SAFETY: clears one EL0 trap control for the duration of the call, then restores it.
        unsafe {
            core::arch::asm!("mrs {s}, sctlr_el1", "bic {t}, {s}, #(1 << 20)", "msr sctlr_el1, {t}",
                             "isb", s = out(reg) sctlr, t = out(reg) _, options(nostack))
        };
        let u0 = stat(Stat::InjectedUndefs);
        // SAFETY: as above.
        let x = unsafe { sandbox::el0_call(el0::a64_scxtnum(), 0, SPSR_EL0T) };
        // SAFETY: restores SCTLR_EL1.
        unsafe { core::arch::asm!("msr sctlr_el1, {}", "isb", in(reg) sctlr, options(nostack)) };
        c.check(
            "EL0 read of SCXTNUM_EL0: UNDEF injected by EL2 at VBAR_EL1 + 0x400",
            x.vector == 8 && x.esr >> 26 == 0 && stat(Stat::InjectedUndefs) == u0 + 1,
            format_args!("vector {} ESR {:#x} ELR {:#x}", x.vector, x.esr, x.elr),
        );
    }
}

/// The devices that write memory behind stage-2.
fn devices(c: &mut Checks, env: &Env) {
    let Some(dt) = crate::dt::DeviceTree::probe(env.dtb.start as usize) else {
        c.check("devices: the device tree parses", false, format_args!(""));
        return;
    };
    c.check(
        "the host's device tree has no ITS and no fw_cfg node",
        !dt.has_compatible("arm,gic-v3-its") && !dt.has_compatible("qemu,fw-cfg-mmio"),
        format_args!("GIC redistributors at {:x?}", dt.gicr_base),
    );
    // An instruction fetch from MMIO (stage-1 lets it, the host stage-2 maps MMIO
    // execute-never): an injected instruction abort, not a fault the host retries forever.
    // SAFETY: the fetch is refused at stage 2 (checked); nothing runs there.
    let x = unsafe { fault::probe_exec_at(crate::mmu::EXEC_MMIO_PAGE) };
    c.check(
        "instruction fetch from MMIO: instruction abort injected (no livelock)",
        x.is_err_and(|a| a.is_injected_instruction_abort()),
        format_args!("{x:x?}"),
    );
    // The attack of the review: program the ITS device table into EL2's memory, enable it.
    let carveout_page = env.ram.ranges().last().map_or(0, |r| r.end - 4096);
    for (name, pa, v) in [
        (
            "GITS_BASER0 <- EL2's last page",
            VIRT_ITS + 0x100,
            carveout_page | (1 << 63),
        ),
        ("GITS_CTLR <- Enabled", VIRT_ITS, 1),
        (
            "fw_cfg DMA address <- EL2's last page",
            VIRT_FW_CFG + 0x10,
            carveout_page.swap_bytes(),
        ),
    ] {
        // SAFETY: a store to MMIO the host may not reach; it aborts (checked).
        let w = unsafe { probe_write(pa, v) };
        // SAFETY: as above, a load.
        let r = unsafe { probe_read(pa) };
        c.check(
            "hidden device: host write and read abort (injected)",
            w.is_err_and(|a| a.is_injected_data_abort())
                && r.is_err_and(|a| a.is_injected_data_abort()),
            format_args!("{name}: write {w:x?}, read {r:x?}"),
        );
    }

    let Some(first) = dt.gicr_base else {
        println!("hostile: no GICv3 redistributors: skipping the LPI checks");
        return;
    };
    let refused0 = stat(Stat::RefusedDeviceWrites);
    let emulated0 = stat(Stat::EmulatedMmio);
    // Every redistributor, as the GIC architecture lays them out (Linux's walk): the review's
    // exploit used a frame EL2 had not found (GICv4's 256 KiB stride).
    let mut frame = first;
    let mut frames = 0u64;
    let mut bad = 0u64;
    loop {
        // SAFETY: GICR_TYPER, a read-only 64-bit register (EL2 emulates it).
        let Ok(typer) = (unsafe { probe_read(frame + 0x8) }) else {
            bad += 1;
            break;
        };
        frames += 1;
        bad += u64::from(!redistributor_attack(c, env, frame, typer));
        if typer & (1 << 1) != 0 {
            // GICv4: the VLPI frame (GICR_VPROPBASER/VPENDBASER name memory) is hidden.
            // SAFETY: a store to a frame the host may not reach; it aborts (checked).
            let w = unsafe { probe_write(frame + 0x2_0000 + 0x70, carveout_page) };
            bad += u64::from(!w.is_err_and(|a| a.is_injected_data_abort()));
        }
        if typer & (1 << 4) != 0 || frames == 64 {
            break;
        }
        frame += if typer & (1 << 1) != 0 {
            0x4_0000
        } else {
            0x2_0000
        };
    }
    c.check(
        "every redistributor (one per CPU) found and defended",
        bad == 0 && frames == dt.cpus as u64,
        format_args!("{frames} redistributors for {} CPUs, {bad} failed", dt.cpus),
    );
    c.eq(
        "EL2 counted the refused table bases (two per redistributor)",
        stat(Stat::RefusedDeviceWrites) - refused0,
        2 * frames,
    );
    c.check(
        "EL2 emulated the redistributor accesses",
        stat(Stat::EmulatedMmio) - emulated0 >= 9 * frames,
        format_args!("{}", stat(Stat::EmulatedMmio) - emulated0),
    );
}

/// The LPI attack on one redistributor's `RD_base` frame at `rd`: LPI support must be hidden,
/// `EnableLPIs` must not stick, table bases in EL2's memory must be refused and one in the
/// host's RAM accepted. Returns whether every check passed.
fn redistributor_attack(c: &mut Checks, env: &Env, rd: u64, typer: u64) -> bool {
    let carveout_page = env.ram.ranges().last().map_or(0, |r| r.end - 4096);
    let mut ok = c.check(
        "GICR_TYPER: LPIs hidden (PLPIS = DirectLPI = 0)",
        typer & 0b1001 == 0,
        format_args!("{rd:#x}: {typer:#x}"),
    );
    // SAFETY: GICR_CTLR; LPIs are never enabled (EL2 holds EnableLPIs at 0).
    let w = unsafe { probe_write32(rd, 1) };
    // SAFETY: as above.
    let ctlr = unsafe { probe_read32(rd) };
    ok &= c.check(
        "GICR_CTLR.EnableLPIs stays 0 after the host sets it",
        w.is_ok() && ctlr.is_ok_and(|v| v & 1 == 0),
        format_args!("{rd:#x}: write {w:x?}, read {ctlr:x?}"),
    );
    for (name, off, v) in [
        (
            "GICR_PROPBASER <- EL2's memory",
            0x70u64,
            carveout_page | 15,
        ),
        (
            "GICR_PENDBASER <- EL2's memory",
            0x78,
            carveout_page & !0xffff,
        ),
    ] {
        // SAFETY: the redistributor's table-base registers; EL2 validates them.
        let before = unsafe { probe_read(rd + off) };
        // SAFETY: as above.
        let w = unsafe { probe_write(rd + off, v) };
        // SAFETY: as above.
        let after = unsafe { probe_read(rd + off) };
        ok &= c.check(
            "LPI table base in EL2's memory refused (register unchanged)",
            w.is_ok() && before.is_ok() && after == before && after != Ok(v),
            format_args!("{rd:#x} {name}: before {before:x?}, after {after:x?}"),
        );
    }
    // A table in the host's own RAM is accepted (EnableLPIs stays 0 regardless), then the
    // register goes back to 0 (no table: fewer than 14 ID bits).
    let own = env.image.sandbox.start;
    // SAFETY: as above; the value names a page of the host's image, never used as a table.
    let r = unsafe { probe_write(rd + 0x70, own | 13).and_then(|()| probe_read(rd + 0x70)) };
    // SAFETY: as above.
    let back = unsafe { probe_write(rd + 0x70, 0).and_then(|()| probe_read(rd + 0x70)) };
    ok &= c.check(
        "LPI table base in the host's RAM accepted (the emulation forwards legitimate writes)",
        r == Ok(own | 13) && back == Ok(0),
        format_args!("{rd:#x}: read back {r:x?}, then {back:x?}"),
    );
    ok
}
