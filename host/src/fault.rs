//! Memory accesses that may abort, and survive it: [`probe_read`], [`probe_write`] and
//! [`probe_exec`].
//!
//! Each data probe is one load or store instruction at a known address (`pkvm_probe_ld`,
//! `pkvm_probe_st`). When it aborts — for the host, typically because EL2 injected a
//! synchronous external abort for memory the host does not own — the exception arrives at
//! `VBAR_EL1 + 0x200` with `ELR_EL1` pointing at that instruction. The vector in
//! [`crate::boot`] recognises it, puts `ESR_EL1`, `FAR_EL1`, `SPSR_EL1` and `ELR_EL1` in
//! `x2..=x5`, sets `x1 = 1`, and resumes at `pkvm_probe_done`, which returns to the caller.
//! The exec probe branches (`blr`) to a page of its own in `.text`
//! ([`exec_page`]: `mov x1, #0; ret`); if fetching from it aborts, `ELR_EL1` is that page and
//! the vector resumes at the return address in `x30`. Any other exception still fails the run.

use core::arch::{asm, global_asm};
pub use pkvm_arch::esr::FSC_SEA;
use pkvm_arch::esr::{Ec, Esr};

global_asm!(
    r#"
    .section .text.probe, "ax"
    .balign 16
    .global pkvm_probe_read
    .global pkvm_probe_ld
    .global pkvm_probe_write
    .global pkvm_probe_st
    .global pkvm_probe_done
/* x0 = address -> x0 = value, x1 = 0 (done) or 1 (aborted: x2..x5 = ESR, FAR, SPSR, ELR) */
pkvm_probe_read:
    mov     x1, #0
pkvm_probe_ld:
    ldr     x0, [x0]
pkvm_probe_done:
    ret

/* x0 = address, x6 = value -> x1 as above */
pkvm_probe_write:
    mov     x1, #0
pkvm_probe_st:
    str     x6, [x0]
    b       pkvm_probe_done

/* 32-bit variants (device registers): x0 = address -> w0; x0 = address, w6 = value */
    .global pkvm_probe_read32
    .global pkvm_probe_ld32
    .global pkvm_probe_write32
    .global pkvm_probe_st32
pkvm_probe_read32:
    mov     x1, #0
pkvm_probe_ld32:
    ldr     w0, [x0]
    b       pkvm_probe_done
pkvm_probe_write32:
    mov     x1, #0
pkvm_probe_st32:
    str     w6, [x0]
    b       pkvm_probe_done

/* x7 = target (also in pkvm_probe_exec_target) -> x1 as above; uses x6 */
    .global pkvm_probe_exec
pkvm_probe_exec:
    mov     x6, x30
    blr     x7
    mov     x30, x6
    ret

    .section .text.probe_exec_page, "ax"
    .balign 4096
    .global pkvm_probe_exec_page
pkvm_probe_exec_page:
    mov     x1, #0
    ret
    .balign 4096
"#
);

/// What an aborted probe saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Abort {
    /// `ESR_EL1`.
    pub esr: u64,
    /// `FAR_EL1`.
    pub far: u64,
    /// `SPSR_EL1`: the PSTATE the abort interrupted.
    pub spsr: u64,
    /// `ELR_EL1`: the instruction that aborted (a probe's load or store).
    pub elr: u64,
}

impl Abort {
    /// The syndrome (`ESR_EL1`), typed.
    pub fn syndrome(&self) -> Esr {
        Esr(self.esr)
    }

    /// Exception class (`ESR_EL1.EC`).
    pub fn ec(&self) -> Ec {
        self.syndrome().ec()
    }

    /// Fault status code (`ESR_EL1.ISS.DFSC`/`IFSC`, bits 5:0 of the ISS of both aborts).
    pub fn fsc(&self) -> u64 {
        u64::from(self.syndrome().fsc())
    }

    /// For a data abort: whether it was a write (`ISS.WnR`).
    pub fn is_write(&self) -> Option<bool> {
        self.syndrome().data_abort().map(|d| d.wnr)
    }

    /// Whether this is what EL2 injects for an illegal host data access: a synchronous
    /// external abort on a data access, taken at EL1.
    pub fn is_injected_data_abort(&self) -> bool {
        self.ec() == Ec::DabtCur && self.fsc() == FSC_SEA
    }

    /// Whether this is what EL2 injects for an illegal host instruction fetch.
    pub fn is_injected_instruction_abort(&self) -> bool {
        self.ec() == Ec::IabtCur && self.fsc() == FSC_SEA
    }
}

impl core::fmt::Display for Abort {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "abort ESR {:#x} (EC {:#x}, FSC {:#x}) FAR {:#x} ELR {:#x} SPSR {:#x}",
            self.esr,
            self.syndrome().ec_bits(),
            self.fsc(),
            self.far,
            self.elr,
            self.spsr
        )
    }
}

/// Address of the probe's load instruction (what `ELR_EL1` must hold when it aborts).
pub fn load_insn() -> u64 {
    let a: u64;
    // SAFETY: only computes the address of a symbol.
    unsafe { asm!("adr {}, pkvm_probe_ld", out(reg) a, options(nomem, nostack, preserves_flags)) };
    a
}

/// Address of the probe's store instruction.
pub fn store_insn() -> u64 {
    let a: u64;
    // SAFETY: only computes the address of a symbol.
    unsafe { asm!("adr {}, pkvm_probe_st", out(reg) a, options(nomem, nostack, preserves_flags)) };
    a
}

unsafe extern "C" {
    fn pkvm_probe_read();
    fn pkvm_probe_read32();
    fn pkvm_probe_write();
    fn pkvm_probe_write32();
}

/// Calls the data probe `entry` with `x0` = `addr`, `x6` = `value`: `Ok(x0)`, or the abort.
///
/// # Safety
/// `entry` is one of the four data probes; the caller vouches for the access it makes.
unsafe fn probe(entry: unsafe extern "C" fn(), addr: u64, value: u64) -> Result<u64, Abort> {
    let (out, aborted, esr, far, spsr, elr): (u64, u64, u64, u64, u64, u64);
    // SAFETY: each probe makes one load or store at `addr` (the caller vouches for it) and
    // changes only x0-x5 and x30 (declared); if the access aborts, the vector writes x1-x5 and
    // resumes at the probe's `ret`. It uses no stack.
    unsafe {
        asm!(
            "blr {entry}",
            entry = in(reg) entry,
            inout("x0") addr => out,
            out("x1") aborted,
            out("x2") esr,
            out("x3") far,
            out("x4") spsr,
            out("x5") elr,
            in("x6") value,
            out("x30") _,
            options(nostack)
        );
    }
    if aborted == 0 {
        Ok(out)
    } else {
        Err(Abort {
            esr,
            far,
            spsr,
            elr,
        })
    }
}

/// Reads the `u64` at `addr` (VA == PA), reporting an abort instead of dying of it.
///
/// # Safety
/// `addr` must be 8-byte aligned, and reading it must not break Rust's rules (no concurrent
/// non-atomic writer) and must have no side effect the caller did not intend (MMIO).
pub unsafe fn probe_read(addr: u64) -> Result<u64, Abort> {
    // SAFETY: the caller's contract is the probe's.
    unsafe { probe(pkvm_probe_read, addr, 0) }
}

/// Reads the `u32` at `addr` (a 32-bit device register), reporting an abort instead of dying.
///
/// # Safety
/// As [`probe_read`], for a 4-byte-aligned `addr`.
pub unsafe fn probe_read32(addr: u64) -> Result<u32, Abort> {
    // SAFETY: as above.
    unsafe { probe(pkvm_probe_read32, addr, 0).map(|v| v as u32) }
}

/// Writes `value` to the `u64` at `addr` (VA == PA), reporting an abort instead of dying of it.
///
/// # Safety
/// `addr` must be 8-byte aligned and writable without breaking Rust's rules: no reference to
/// that memory may be alive, and nothing else may rely on its contents.
pub unsafe fn probe_write(addr: u64, value: u64) -> Result<(), Abort> {
    // SAFETY: as above.
    unsafe { probe(pkvm_probe_write, addr, value).map(|_| ()) }
}

/// Writes the `u32` at `addr` (a 32-bit device register), reporting an abort instead of dying.
///
/// # Safety
/// As [`probe_write`], for a 4-byte-aligned `addr`.
pub unsafe fn probe_write32(addr: u64, value: u32) -> Result<(), Abort> {
    // SAFETY: as above.
    unsafe { probe(pkvm_probe_write32, addr, u64::from(value)).map(|_| ()) }
}

/// The page the exec probe branches to (in `.text`: host-owned, executable in the stage-1).
pub fn exec_page() -> u64 {
    let a: u64;
    // SAFETY: only computes the address of a symbol.
    unsafe {
        asm!("adr {}, pkvm_probe_exec_page", out(reg) a, options(nomem, nostack, preserves_flags))
    };
    a
}

/// Where the exec probe branches to: the vector recognises an instruction abort at this
/// address as the probe's.
#[unsafe(no_mangle)]
static pkvm_probe_exec_target: core::sync::atomic::AtomicU64 =
    core::sync::atomic::AtomicU64::new(0);

/// Branches to [`exec_page`] and back, reporting an instruction abort instead of dying of it.
pub fn probe_exec() -> Result<(), Abort> {
    // SAFETY: the exec page holds `mov x1, #0; ret`.
    unsafe { probe_exec_at(exec_page()) }
}

/// Branches to `target` and back, reporting an instruction abort instead of dying of it.
///
/// # Safety
/// Fetching at `target` must either abort or run code that returns to `x30` with `x1 = 0`
/// and changes nothing else (the exec page; or memory that cannot be fetched).
pub unsafe fn probe_exec_at(target: u64) -> Result<(), Abort> {
    pkvm_probe_exec_target.store(target, core::sync::atomic::Ordering::SeqCst);
    let (aborted, esr, far, spsr, elr): (u64, u64, u64, u64, u64);
    // SAFETY: `pkvm_probe_exec` branches to `target` (the caller vouches for what runs there)
    // and changes only x1-x7 and x30 (declared); if the fetch aborts, the vector writes x1-x5
    // and resumes at the return address of the `blr`. It uses no stack.
    unsafe {
        asm!(
            "bl pkvm_probe_exec",
            out("x0") _,
            out("x1") aborted,
            out("x2") esr,
            out("x3") far,
            out("x4") spsr,
            out("x5") elr,
            out("x6") _,
            inout("x7") target => _,
            out("x30") _,
            options(nostack)
        );
    }
    if aborted == 0 {
        Ok(())
    } else {
        Err(Abort {
            esr,
            far,
            spsr,
            elr,
        })
    }
}

/// The current `DAIF` and `CurrentEL`|`SPSel` bits, as they would appear in an `SPSR_EL1` that
/// interrupted this code: `M[3:0]` = EL1h (0b0101), `DAIF` in bits 9:6.
pub fn expected_spsr_mode_bits() -> u64 {
    let daif: u64;
    // SAFETY: reading DAIF has no side effect.
    unsafe { asm!("mrs {}, daif", out(reg) daif, options(nomem, nostack, preserves_flags)) };
    (daif & 0x3c0) | 0b0101
}

/// The bits of an `SPSR_EL1` that [`expected_spsr_mode_bits`] predicts.
pub const SPSR_MODE_MASK: u64 = 0x3c0 | 0xf | 0x10;
