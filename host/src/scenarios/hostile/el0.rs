//! EL0 code (AArch64 and AArch32) that touches EL2's memory or traps to EL2: the injected
//! abort or UNDEF must come through the right vector.

use super::stat;
use crate::checks::Checks;
use crate::cpu;
use crate::env::Env;
use crate::fault::FSC_SEA;
use crate::sandbox::{self, el0};
use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{Readable, SCTLR_EL1, Writeable};
use pkvm_abi::Stat;
use pkvm_arch::esr::{Ec, Esr};
use pkvm_arch::spsr;

/// `SCTLR_EL1.TSCXT`: EL0 accesses to `SCXTNUM_EL0` trap to EL1.
const SCTLR_TSCXT: u64 = 1 << 20;

/// Whether `esr` is the abort EL2 injects for an illegal EL0 load: a synchronous external
/// abort on a data access from EL0.
fn injected_abort(esr: u64) -> bool {
    let e = Esr(esr);
    e.ec() == Ec::DabtLow && e.data_abort().is_some_and(|d| u64::from(d.dfsc) == FSC_SEA)
}

/// EL0 code that touches EL2's memory, or traps to EL2.
pub fn run(c: &mut Checks, env: &Env) {
    // AArch64 EL0t, DAIF masked; AArch32 User, ARM state, A/I/F masked.
    const SPSR_EL0T: u64 = spsr::DAIF | spsr::M_EL0T;
    const SPSR_USR32: u64 = spsr::A | spsr::I | spsr::F | spsr::M32_USR;
    let cpu = cpu::Features::read();
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
        x.vector == 8 && injected_abort(x.esr) && x.far == target,
        format_args!(
            "vector {} ESR {:#x} FAR {:#x} ELR {:#x}",
            x.vector, x.esr, x.far, x.elr
        ),
    );

    if cpu.aarch32_el0 {
        // SAFETY: as above; AArch32 User mode, ARM state.
        let x = unsafe { sandbox::el0_call(el0::a32_load(), target, SPSR_USR32) };
        c.check(
            "EL0 (AArch32) load from EL2's memory: abort injected at VBAR_EL1 + 0x600",
            x.vector == 12
                && injected_abort(x.esr)
                && x.far & 0xffff_ffff == target & 0xffff_ffff
                && x.spsr & (spsr::M_AARCH32 | spsr::M_MASK) == spsr::M32_USR,
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

    if cpu.scxtnum {
        // SCTLR_EL1.TSCXT = 0 for the duration of the call: EL0 may reach SCXTNUM_EL0 as far
        // as EL1 is concerned, so the access traps to EL2 (HCR_EL2.EnSCXT = 0), which injects
        // an UNDEF for EL0.
        let sctlr = SCTLR_EL1.get();
        SCTLR_EL1.set(sctlr & !SCTLR_TSCXT);
        barrier::isb(barrier::SY);
        let u0 = stat(Stat::InjectedUndefs);
        // SAFETY: as above.
        let x = unsafe { sandbox::el0_call(el0::a64_scxtnum(), 0, SPSR_EL0T) };
        SCTLR_EL1.set(sctlr);
        barrier::isb(barrier::SY);
        c.check(
            "EL0 read of SCXTNUM_EL0: UNDEF injected by EL2 at VBAR_EL1 + 0x400",
            x.vector == 8 && Esr(x.esr).ec() == Ec::Unknown && stat(Stat::InjectedUndefs) == u0 + 1,
            format_args!("vector {} ESR {:#x} ELR {:#x}", x.vector, x.esr, x.elr),
        );
    }
}

