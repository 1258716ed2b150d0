//! Hostile guests: regression tests of what EL2 keeps from a guest. One fresh VM per hostile
//! test (`guest/src/main.rs`, hostile mode) runs under the real EL2; each trapped instruction
//! must end the run with a FAULT exit of the expected class, the switched registers
//! (`CSSELR_EL1`, `TPIDR2_EL0`) must keep the guest's and the host's values apart, the host's
//! own `MDSCR_EL1`, `CSSELR_EL1`, `TPIDR2_EL0`, breakpoint 0, OS lock, `PMCR_EL0`, `d16` and
//! (with SVE) `p7` must be unchanged, and every VM is torn down with EL2's counters back where
//! they started. Tests whose feature the CPU lacks are skipped with a note.

use crate::checks::Checks;
use crate::cpu::{self, Features};
use crate::env::Env;
use crate::vm::{self, GUEST_IMAGE, RunEnd, SlotMem, flags, hostile};
use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{CPACR_EL1, Readable, Writeable};
use pkvm_arch::esr::Ec;

/// What a hostile test needs from the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Nothing,
    Sve,
    Sme,
    Pmu,
    /// FEAT_CSV2_2: `SCXTNUM_EL1` exists.
    Csv2_2,
    Lor,
}

/// The missing feature's name, if the CPU lacks what `need` asks for.
fn missing(cpu: &Features, need: Need) -> Option<&'static str> {
    match need {
        Need::Nothing => None,
        Need::Sve => (!cpu.sve).then_some("SVE"),
        Need::Sme => (!cpu.sme).then_some("SME"),
        Need::Pmu => (!cpu.pmu).then_some("PMUv3"),
        Need::Csv2_2 => (!cpu.csv2_2).then_some("FEAT_CSV2_2 (SCXTNUM_EL1)"),
        Need::Lor => (!cpu.lor).then_some("FEAT_LOR"),
    }
}

/// One hostile guest: its test, the FAULT exit class it must end with (`None`: it must power
/// off cleanly), what it needs from the CPU, and its check's name.
struct Case {
    test: u64,
    ec: Option<Ec>,
    need: Need,
    name: &'static str,
}

const fn case(test: u64, ec: Option<Ec>, need: Need, name: &'static str) -> Case {
    Case {
        test,
        ec,
        need,
        name,
    }
}

const SYSREG: Option<Ec> = Some(Ec::Sysreg64);

#[rustfmt::skip]
const CASES: &[Case] = &[
    case(hostile::SVE_RDVL, Some(Ec::Sve), Need::Sve,
        "hostile guest: SVE (rdvl) after its first FP access traps (EC 0x19)"),
    case(hostile::SVE_PFALSE, Some(Ec::Sve), Need::Sve,
        "hostile guest: SVE (pfalse p7.b) after its first FP access traps (EC 0x19)"),
    case(hostile::SME_SMSTART, Some(Ec::Sme), Need::Sme,
        "hostile guest: SME (smstart) after its first FP access traps (EC 0x1D)"),
    case(hostile::MDSCR_WRITE, None, Need::Nothing,
        "hostile guest: MDSCR_EL1 write (KDE|MDE|SS) emulated at EL2: ignored, reads 0"),
    case(hostile::DBGBVR0_WRITE, None, Need::Nothing,
        "hostile guest: DBGBVR0_EL1 write emulated at EL2: ignored, reads 0"),
    case(hostile::DBGBCR0_WRITE, None, Need::Nothing,
        "hostile guest: DBGBCR0_EL1 write emulated at EL2: ignored, reads 0"),
    case(hostile::OSLAR_WRITE, None, Need::Nothing,
        "hostile guest: OSLAR_EL1 (OS lock) write emulated at EL2: ignored, OSLSR reads 0"),
    case(hostile::PMCR_READ, None, Need::Pmu, "hostile guest: PMCR_EL0 emulated at EL2: reads 0"),
    case(hostile::PMCCNTR_READ, None, Need::Pmu,
        "hostile guest: PMCCNTR_EL0 emulated at EL2: reads 0"),
    case(hostile::PMCR_WRITE, None, Need::Pmu,
        "hostile guest: PMCR_EL0 write emulated at EL2: ignored, reads 0"),
    case(hostile::ACTLR_READ, SYSREG, Need::Nothing, "hostile guest: ACTLR_EL1 read traps (EC 0x18)"),
    case(hostile::SCXTNUM_WRITE, SYSREG, Need::Csv2_2, "hostile guest: SCXTNUM_EL1 write traps (EC 0x18)"),
    case(hostile::DC_ISW, SYSREG, Need::Nothing,
        "hostile guest: DC ISW (set/way maintenance) traps (EC 0x18)"),
    case(hostile::LORID_READ, SYSREG, Need::Lor, "hostile guest: LORID_EL1 read traps (EC 0x18)"),
    case(hostile::ICC_PMR_WRITE, SYSREG, Need::Nothing,
        "hostile guest: ICC_PMR_EL1 write with the virtual GIC off traps (EC 0x18)"),
    case(hostile::CSSELR_SWITCH, None, Need::Nothing,
        "hostile guest: its CSSELR_EL1 survives an exit (switched) and it powers off"),
    case(hostile::TPIDR2_SWITCH, None, Need::Sme,
        "hostile guest: its TPIDR2_EL0 survives an exit (switched) and it powers off"),
];

/// `PMCR_EL0` bits: P and C (write-only resets), DP (cycle counter disabled where event
/// counting is prohibited).
mod pmcr {
    pub const P: u64 = 1 << 1;
    pub const C: u64 = 1 << 2;
    pub const DP: u64 = 1 << 5;
}

/// `MDSCR_EL1.TDCC`: EL0 access to the debug communication channel traps (the host has no
/// EL0, so it is a harmless non-zero value for the host's `MDSCR_EL1`).
const MDSCR_TDCC: u64 = 1 << 12;

/// The host's registers the hostile guests must not change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HostRegs {
    mdscr: u64,
    csselr: u64,
    /// With SME.
    tpidr2: Option<u64>,
    dbgbvr0: u64,
    dbgbcr0: u64,
    os_lock: u64,
    /// With a PMU.
    pmcr: Option<u64>,
}

/// The host's values while the hostile guests run (a disabled breakpoint, E = 0); the fields
/// left at 0 here keep the host's own values.
const HOST: HostRegs = HostRegs {
    mdscr: MDSCR_TDCC,
    csselr: 0,
    tpidr2: Some(0x7e57_0000_7091_d200),
    dbgbvr0: 0x1234_5678,
    dbgbcr0: 0,
    os_lock: 0,
    pmcr: None,
};

/// What the writing tests write: values other than the host's (the breakpoint armed: E, at
/// EL1 and EL0 (PMC = 0b11), all bytes (BAS = 0xf)).
const GUEST_DBGBVR0: u64 = 0x7777_0000;
const GUEST_DBGBCR0: u64 = 0x1e7;
const GUEST_TPIDR2: u64 = 0x6b6b_1111_2222_3333;
const GUEST_SCXTNUM: u64 = 0x5c5c_5c5c;

impl HostRegs {
    fn read(cpu: &Features) -> Self {
        HostRegs {
            mdscr: cpu::mdscr(),
            csselr: cpu::csselr(),
            tpidr2: cpu.sme.then(cpu::tpidr2),
            dbgbvr0: cpu::dbgbvr0(),
            dbgbcr0: cpu::dbgbcr0(),
            os_lock: cpu::os_lock(),
            pmcr: cpu.pmu.then(cpu::pmcr),
        }
    }

    fn write(&self) {
        cpu::set_mdscr(self.mdscr);
        cpu::set_csselr(self.csselr);
        if let Some(v) = self.tpidr2 {
            cpu::set_tpidr2(v);
        }
        cpu::set_dbgbvr0(self.dbgbvr0);
        cpu::set_dbgbcr0(self.dbgbcr0);
        cpu::set_os_lock(self.os_lock);
        if let Some(v) = self.pmcr {
            cpu::set_pmcr(v & !(pmcr::P | pmcr::C));
        }
    }
}

/// `CPACR_EL1.ZEN = 0b11`: SVE enabled at EL1.
const CPACR_ZEN: u64 = 3 << 16;

/// Enables SVE for the host's EL1 and sets every element of its `p7`; returns the previous
/// `CPACR_EL1`. Only with SVE.
fn host_p7_set() -> u64 {
    let old = CPACR_EL1.get();
    CPACR_EL1.set(old | CPACR_ZEN);
    barrier::isb(barrier::SY);
    // SAFETY: the CPU has SVE, enabled for EL1 just above, and EL2 does not trap it for the
    // host; writing p7 affects no state the compiled code uses (this target has no SVE: the
    // compiler never allocates p registers).
    unsafe { core::arch::asm!(".arch_extension sve", "ptrue p7.b", options(nomem, nostack)) };
    old
}

/// The number of set byte elements of the host's `p7` and the vector length in bytes, then
/// `CPACR_EL1` back to `cpacr`. Only after [`host_p7_set`].
fn host_p7_check(cpacr: u64) -> (u64, u64) {
    let (n, vl): (u64, u64);
    // SAFETY: SVE is enabled for EL1 (host_p7_set); counting p7 and reading the vector length
    // have no side effect.
    unsafe {
        core::arch::asm!(".arch_extension sve", "cntp {n}, p7, p7.b", "rdvl {vl}, #1",
            n = out(reg) n, vl = out(reg) vl, options(nomem, nostack))
    };
    CPACR_EL1.set(cpacr);
    barrier::isb(barrier::SY);
    (n, vl)
}

/// Runs every hostile guest.
pub fn run(c: &mut Checks, env: &mut Env) {
    if GUEST_IMAGE.is_empty() {
        c.check(
            "hostile guests: guest image",
            false,
            format_args!("the host was built without PKVM_GUEST_BIN (use cargo xtask)"),
        );
        return;
    }
    let cpu = Features::read();
    println!("hostile guests: CPU {cpu:?}");
    let start = vm::leaks();
    let mem = SlotMem::alloc(env);

    // The host's registers: known values where that is harmless, checked after every run.
    let orig = HostRegs::read(&cpu);
    let known = HostRegs {
        mdscr: orig.mdscr | HOST.mdscr,
        tpidr2: HOST.tpidr2.filter(|_| cpu.sme),
        os_lock: orig.os_lock,
        pmcr: orig.pmcr,
        ..HOST
    };
    known.write();
    let before = HostRegs::read(&cpu);
    let fp_lost0 = vm::host_fp_lost();
    let (mut ran, mut skipped, mut teardown_failures) = (0u32, 0u32, 0u32);
    // Exits after which the host's CSSELR_EL1 / TPIDR2_EL0 were not its own.
    let (mut csselr_bad, mut tpidr2_bad) = (0u32, 0u32);
    let mut after_bad: Option<(&'static str, HostRegs)> = None;
    let mut p7 = None;

    for (i, case) in CASES.iter().enumerate() {
        if let Some(what) = missing(&cpu, case.need) {
            println!("hostile guests: skipped ({}): the CPU has no {what}", case.name);
            skipped += 1;
            continue;
        }
        // What a writing test writes: always a value other than the host's.
        let arg = match case.test {
            hostile::DBGBVR0_WRITE => GUEST_DBGBVR0,
            hostile::DBGBCR0_WRITE => GUEST_DBGBCR0,
            hostile::OSLAR_WRITE => before.os_lock ^ 1,
            hostile::PMCR_WRITE => (before.pmcr.unwrap_or(0) ^ pmcr::DP) & !(pmcr::P | pmcr::C),
            hostile::SCXTNUM_WRITE => GUEST_SCXTNUM,
            hostile::TPIDR2_SWITCH => GUEST_TPIDR2,
            _ => 0,
        };
        let id = 0x4000 + i as u64;
        let vm = match vm::create(0, mem, id, arg, flags::hostile(case.test)) {
            Ok(vm) => vm,
            Err(e) => {
                c.check(case.name, false, format_args!("create: {e}"));
                continue;
            }
        };
        ran += 1;
        let cpacr = (case.test == hostile::SVE_PFALSE).then(host_p7_set);
        let r = vm::run(&vm, false, |_, _| {
            // The host's values must be back at every exit; put them there again anyway, so
            // that a guest whose own value was not switched reads the host's.
            if cpu::csselr() != known.csselr {
                csselr_bad += 1;
                cpu::set_csselr(known.csselr);
            }
            if let Some(t) = known.tpidr2.filter(|&t| cpu::tpidr2() != t) {
                tpidr2_bad += 1;
                cpu::set_tpidr2(t);
            }
        });
        if let Some(cpacr) = cpacr {
            p7 = Some(host_p7_check(cpacr));
        }
        let now = HostRegs::read(&cpu);
        if now != before && after_bad.is_none() {
            after_bad = Some((case.name, now));
        }
        // The run is over: the guest's x1 says why it reset, if it did.
        let guest_x1 = vm::structs(vm.slot).vcpu.reg(1);
        check_end(c, case, r, guest_x1);
        if let Err(e) = vm::destroy(vm) {
            println!("hostile guests: destroy after test {}: {e}", case.test);
            teardown_failures += 1;
        }
    }
    println!("hostile guests: {ran} run, {skipped} skipped");

    let after = HostRegs::read(&cpu);
    orig.write();
    if let Some((n, vl)) = p7 {
        c.check(
            "hostile guest: host's SVE p7 survives the guest's pfalse p7.b",
            n == vl,
            format_args!("{n} of {vl} byte elements of p7 still set"),
        );
    }
    check_host_regs(c, &cpu, &before, &after, (csselr_bad, tpidr2_bad));
    c.check(
        "hostile guests: host's registers unchanged after every run",
        after_bad.is_none(),
        format_args!("first change: {after_bad:x?}; before {before:x?}"),
    );
    let lost = vm::host_fp_lost() - fp_lost0;
    c.check(
        "hostile guests: host's d16 survives every run",
        lost == 0,
        format_args!("{lost} runs lost the host's d16"),
    );
    c.check(
        "hostile guests: every VM torn down",
        teardown_failures == 0,
        format_args!("{ran} VMs, {teardown_failures} teardown/release failures"),
    );
    let end = vm::leaks();
    let d = |a: u64, b: u64| a as i64 - b as i64;
    println!(
        "hostile guests: leak: hyp_mapped_host_pages={:+} donated_pages={:+} shared_pages={:+} \
         guest_shared_pages={} pinned_pages={:+} live_vms={} pool_free_delta={:+}",
        d(end.hyp_mapped, start.hyp_mapped),
        d(end.donated, start.donated),
        d(end.shared, start.shared),
        end.guest_shared,
        d(end.pinned, start.pinned),
        end.vms,
        d(end.pool_free, start.pool_free),
    );
    c.check(
        "hostile guests: leak report all zero",
        end == start && end.vms == 0 && end.guest_shared == 0,
        format_args!("before {start:?}, after {end:?}"),
    );
}

/// Checks how a hostile guest's run ended.
fn check_end(c: &mut Checks, case: &Case, r: RunEnd, guest_x1: u64) {
    let name = case.name;
    match (case.ec, r) {
        (Some(want), RunEnd::Fault(esr)) => c.check(
            name,
            esr.ec() == want,
            format_args!(
                "FAULT exit, EC {:#x} (ESR {:#x}), want EC {:#x}",
                esr.ec_bits(),
                esr.0,
                want.bits()
            ),
        ),
        (Some(_), RunEnd::PowerOff) => c.check(
            name,
            false,
            format_args!("NOT trapped: the guest executed it, pinged and powered off"),
        ),
        (None, RunEnd::PowerOff) => c.check(
            name,
            true,
            format_args!("powered off, its own checks passed"),
        ),
        (None, RunEnd::Fault(esr)) => {
            c.check(name, false, format_args!("FAULT exit, ESR {:#x}", esr.0))
        }
        (_, RunEnd::Reset) if guest_x1 == 0 => c.check(
            name,
            false,
            format_args!("SYSTEM_RESET: a check of the guest's own failed"),
        ),
        (_, RunEnd::Reset) => c.check(
            name,
            false,
            format_args!(
                "the guest took an exception at its own EL1 (ESR_EL1 {guest_x1:#x}), \
                 reported with SYSTEM_RESET"
            ),
        ),
        (_, RunEnd::Unknown(reason)) => {
            c.check(name, false, format_args!("unknown exit reason {reason}"))
        }
        (_, RunEnd::MemFault(ipa)) => c.check(
            name,
            false,
            format_args!("memory-fault exit at IPA {ipa:#x} (its RAM is all there)"),
        ),
        (_, RunEnd::Error(e)) => c.check(name, false, format_args!("run: {e}")),
    };
}

/// The host's registers before and after all the runs; `bad`: exits after which its
/// `CSSELR_EL1` / `TPIDR2_EL0` were not its own.
fn check_host_regs(
    c: &mut Checks,
    cpu: &Features,
    before: &HostRegs,
    after: &HostRegs,
    (csselr_bad, tpidr2_bad): (u32, u32),
) {
    c.check(
        "hostile guests: host's MDSCR_EL1 unchanged",
        after.mdscr == before.mdscr,
        format_args!("before {:#x}, after {:#x}", before.mdscr, after.mdscr),
    );
    c.check(
        "hostile guests: host's CSSELR_EL1 back at every exit",
        csselr_bad == 0 && after.csselr == before.csselr,
        format_args!(
            "{csselr_bad} exits with another value; before {:#x}, after {:#x}",
            before.csselr, after.csselr
        ),
    );
    if cpu.sme {
        c.check(
            "hostile guests: host's TPIDR2_EL0 back at every exit",
            tpidr2_bad == 0 && after.tpidr2 == before.tpidr2,
            format_args!(
                "{tpidr2_bad} exits with another value; before {:x?}, after {:x?}",
                before.tpidr2, after.tpidr2
            ),
        );
    }
    c.check(
        "hostile guests: host's breakpoint 0 (DBGBVR0_EL1, DBGBCR0_EL1) unchanged",
        (after.dbgbvr0, after.dbgbcr0) == (before.dbgbvr0, before.dbgbcr0),
        format_args!(
            "before {:#x}/{:#x}, after {:#x}/{:#x}",
            before.dbgbvr0, before.dbgbcr0, after.dbgbvr0, after.dbgbcr0
        ),
    );
    c.check(
        "hostile guests: host's OS lock (OSLSR_EL1.OSLK) unchanged",
        after.os_lock == before.os_lock,
        format_args!("before {}, after {}", before.os_lock, after.os_lock),
    );
    if cpu.pmu {
        c.check(
            "hostile guests: host's PMCR_EL0 unchanged",
            after.pmcr == before.pmcr,
            format_args!("before {:x?}, after {:x?}", before.pmcr, after.pmcr),
        );
    }
}
