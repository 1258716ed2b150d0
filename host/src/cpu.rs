//! The host's CPU: the features scenarios depend on (from the ID registers), accessors of the
//! system registers the hostile scenario checks (typed `aarch64-cpu` ones where the crate
//! models the register, by encoding otherwise), and time from the virtual counter.

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{
    CNTFRQ_EL0, CNTVCT_EL0, CSSELR_EL1, ID_AA64MMFR1_EL1, ID_AA64PFR0_EL1, ID_AA64PFR1_EL1,
    MDSCR_EL1, OSLAR_EL1, Readable, Writeable,
};

/// The CPU features scenarios depend on.
#[derive(Clone, Copy, Debug)]
pub struct Features {
    /// SVE (`ID_AA64PFR0_EL1.SVE`).
    pub sve: bool,
    /// SME (`ID_AA64PFR1_EL1.SME`).
    pub sme: bool,
    /// A PMUv3.
    pub pmu: bool,
    /// FEAT_CSV2_2 (`ID_AA64PFR0_EL1.CSV2 >= 2`): `SCXTNUM_ELx` exist for EL1.
    pub csv2_2: bool,
    /// `SCXTNUM_EL0/EL1` exist: FEAT_CSV2_2, or FEAT_CSV2_1p2 (`CSV2 = 1`, `CSV2_frac >= 2`).
    pub scxtnum: bool,
    /// FEAT_LOR (`ID_AA64MMFR1_EL1.LO`).
    pub lor: bool,
    /// EL0 can run AArch32 (`ID_AA64PFR0_EL1.EL0 = 2`).
    pub aarch32_el0: bool,
}

impl Features {
    /// Reads the ID registers.
    pub fn read() -> Self {
        let field = |r: u64, shift: u32| (r >> shift) & 0xf;
        let (pfr0, pfr1, mmfr1) = (
            ID_AA64PFR0_EL1.get(),
            ID_AA64PFR1_EL1.get(),
            ID_AA64MMFR1_EL1.get(),
        );
        let csv2 = field(pfr0, 56);
        Features {
            sve: field(pfr0, 32) != 0,
            sme: field(pfr1, 24) != 0,
            pmu: crate::pmu::available(),
            csv2_2: csv2 >= 2,
            scxtnum: csv2 >= 2 || (csv2 == 1 && field(pfr1, 32) >= 2),
            lor: field(mmfr1, 16) != 0,
            aarch32_el0: field(pfr0, 0) == 2,
        }
    }
}

/// A system register `aarch64-cpu` does not model, named `$name`, by its assembler name or
/// encoding `$enc`: `read $get` defines `$get()`, which reads it, `write $set` defines
/// `$set(v)`, which writes it, then `isb`. The host
/// owns each (EL2 traps none of them for the host: `MDCR_EL2` TDA/TDOSA/TPM/TPMCR clear,
/// `TPIDR2_EL0` untrapped with SME).
macro_rules! sysreg {
    ($name:literal, $enc:literal $(, read $get:ident)? $(, write $set:ident)?) => {
        $(
            #[doc = concat!("`", $name, "` (callers check the feature where it is optional).")]
            pub fn $get() -> u64 {
                let v: u64;
                // SAFETY: the register exists on this CPU (callers check the feature where it
                // is optional) and is not trapped for the host; reading it has no side effect.
                unsafe {
                    core::arch::asm!(concat!("mrs {}, ", $enc), out(reg) v, options(nomem, nostack))
                };
                v
            }
        )?
        $(
            #[doc = concat!("Writes `", $name, "`.")]
            pub fn $set(v: u64) {
                // SAFETY: as above; the host writes only its own earlier value or one that
                // affects nothing it relies on (a disabled breakpoint, a thread register, the
                // PMU's configuration, which only configures counting).
                unsafe {
                    core::arch::asm!(concat!("msr ", $enc, ", {}"), "isb", in(reg) v, options(nomem, nostack))
                };
            }
        )?
    };
}

sysreg!("TPIDR2_EL0", "S3_3_C13_C0_5", read tpidr2, write set_tpidr2);
sysreg!("DBGBVR0_EL1", "dbgbvr0_el1", read dbgbvr0, write set_dbgbvr0);
sysreg!("DBGBCR0_EL1", "dbgbcr0_el1", read dbgbcr0, write set_dbgbcr0);
sysreg!("PMCR_EL0", "pmcr_el0", read pmcr, write set_pmcr);
sysreg!("PMCCFILTR_EL0", "pmccfiltr_el0", write set_pmccfiltr);
sysreg!("PMCNTENSET_EL0", "pmcntenset_el0", write set_pmcntenset);
sysreg!("OSLSR_EL1", "oslsr_el1", read oslsr);

/// `MDSCR_EL1`.
pub fn mdscr() -> u64 {
    MDSCR_EL1.get()
}

/// Sets `MDSCR_EL1` (the host uses no debug feature it controls).
pub fn set_mdscr(v: u64) {
    MDSCR_EL1.set(v);
    barrier::isb(barrier::SY);
}

/// `CSSELR_EL1`.
pub fn csselr() -> u64 {
    CSSELR_EL1.get()
}

/// Sets `CSSELR_EL1` (only selects which cache `CCSIDR_EL1` describes).
pub fn set_csselr(v: u64) {
    CSSELR_EL1.set(v);
    barrier::isb(barrier::SY);
}

/// The OS lock (`OSLSR_EL1.OSLK`).
pub fn os_lock() -> u64 {
    (oslsr() >> 1) & 1
}

/// Sets the OS lock to `lk` (0 or 1): it only gates debug exceptions and external debug,
/// neither of which the host uses.
pub fn set_os_lock(lk: u64) {
    OSLAR_EL1.set(lk);
    barrier::isb(barrier::SY);
}

/// The virtual counter (EL2 sets `CNTVOFF_EL2` = 0), for timing.
pub fn ticks() -> u64 {
    CNTVCT_EL0.get()
}

/// `ticks` of the virtual counter in milliseconds.
pub fn ms(ticks: u64) -> u64 {
    ticks.saturating_mul(1000) / CNTFRQ_EL0.get().max(1)
}

/// `ticks` of the virtual counter in microseconds.
pub fn us(ticks: u64) -> u64 {
    ticks.saturating_mul(1_000_000) / CNTFRQ_EL0.get().max(1)
}
