//! The GICv3 virtual CPU interface at EL2 (`ICH_*_EL2`): probed once, reset on every CPU at
//! boot, loaded before a guest run and saved — then switched off — after it. What is loaded
//! was validated by the portable core (`crates/hyp/src/vm/vgic.rs`); this file only moves
//! registers. One concern per file, as the rest of the arch layer.
//!
//! Invariant between runs, on every CPU: `ICH_HCR_EL2` = 0 (the interface off, no maintenance
//! interrupt), every list register and active-priority register 0. A run loads only the
//! `nr_lrs` list registers the host uses, so the others are empty while the guest runs.

use core::arch::asm;
use core::sync::atomic::{AtomicU8, Ordering};

use pkvm_hyp::platform::{VgicInfo, VgicRegs};

/// `ICH_VTR_EL2.ListRegs` + 1 (0: no usable virtual interface), and the APR count.
static NR_LRS: AtomicU8 = AtomicU8::new(0);
static NR_APRS: AtomicU8 = AtomicU8::new(0);

/// Generates `fn $name(i, v)` / `fn $name(i) -> u64` over registers indexed by `i`, one `msr`
/// or `mrs` per index (system register numbers are immediates).
macro_rules! indexed {
    (write $name:ident: $($i:literal => $reg:literal),+ $(,)?) => {
        /// Writes the register of index `i` (callers keep `i` below what the CPU implements).
        fn $name(i: usize, v: u64) {
            match i {
                $(
                    // SAFETY: the register exists (`i` is below the count ICH_VTR_EL2 reports,
                    // checked by the caller) and is EL2's own: writing it affects only the
                    // virtual CPU interface, which is off or the current guest's.
                    $i => unsafe { asm!(concat!("msr ", $reg, ", {}"), in(reg) v, options(nomem, nostack, preserves_flags)) },
                )+
                _ => {}
            }
        }
    };
    (read $name:ident: $($i:literal => $reg:literal),+ $(,)?) => {
        /// Reads the register of index `i` (callers keep `i` below what the CPU implements).
        fn $name(i: usize) -> u64 {
            let v: u64;
            match i {
                $(
                    // SAFETY: as for the writes; reading has no side effect.
                    $i => unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) },
                )+
                _ => v = 0,
            }
            v
        }
    };
}

// ICH_LR<n>_EL2: S3_4_C12_C12_<n> (n < 8), S3_4_C12_C13_<n - 8>.
indexed!(write write_lr:
    0 => "S3_4_C12_C12_0", 1 => "S3_4_C12_C12_1", 2 => "S3_4_C12_C12_2", 3 => "S3_4_C12_C12_3",
    4 => "S3_4_C12_C12_4", 5 => "S3_4_C12_C12_5", 6 => "S3_4_C12_C12_6", 7 => "S3_4_C12_C12_7",
    8 => "S3_4_C12_C13_0", 9 => "S3_4_C12_C13_1", 10 => "S3_4_C12_C13_2", 11 => "S3_4_C12_C13_3",
    12 => "S3_4_C12_C13_4", 13 => "S3_4_C12_C13_5", 14 => "S3_4_C12_C13_6", 15 => "S3_4_C12_C13_7",
);
indexed!(read read_lr:
    0 => "S3_4_C12_C12_0", 1 => "S3_4_C12_C12_1", 2 => "S3_4_C12_C12_2", 3 => "S3_4_C12_C12_3",
    4 => "S3_4_C12_C12_4", 5 => "S3_4_C12_C12_5", 6 => "S3_4_C12_C12_6", 7 => "S3_4_C12_C12_7",
    8 => "S3_4_C12_C13_0", 9 => "S3_4_C12_C13_1", 10 => "S3_4_C12_C13_2", 11 => "S3_4_C12_C13_3",
    12 => "S3_4_C12_C13_4", 13 => "S3_4_C12_C13_5", 14 => "S3_4_C12_C13_6", 15 => "S3_4_C12_C13_7",
);
// Register 0 of a kind, without the index's dispatch (the hot path).
indexed!(write write_lr0_at: 0 => "S3_4_C12_C12_0");
indexed!(write write_ap0r0_at: 0 => "S3_4_C12_C8_0");
indexed!(write write_ap1r0_at: 0 => "S3_4_C12_C9_0");
#[inline(always)]
fn write_lr0(v: u64) {
    write_lr0_at(0, v);
}
#[inline(always)]
fn write_ap0r0(v: u64) {
    write_ap0r0_at(0, v);
}
#[inline(always)]
fn write_ap1r0(v: u64) {
    write_ap1r0_at(0, v);
}
// ICH_AP0R<n>_EL2: S3_4_C12_C8_<n>; ICH_AP1R<n>_EL2: S3_4_C12_C9_<n>.
indexed!(write write_ap0r: 0 => "S3_4_C12_C8_0", 1 => "S3_4_C12_C8_1", 2 => "S3_4_C12_C8_2", 3 => "S3_4_C12_C8_3");
indexed!(read read_ap0r: 0 => "S3_4_C12_C8_0", 1 => "S3_4_C12_C8_1", 2 => "S3_4_C12_C8_2", 3 => "S3_4_C12_C8_3");
indexed!(write write_ap1r: 0 => "S3_4_C12_C9_0", 1 => "S3_4_C12_C9_1", 2 => "S3_4_C12_C9_2", 3 => "S3_4_C12_C9_3");
indexed!(read read_ap1r: 0 => "S3_4_C12_C9_0", 1 => "S3_4_C12_C9_1", 2 => "S3_4_C12_C9_2", 3 => "S3_4_C12_C9_3");
// The control registers (index 0 only): ICH_HCR_EL2, ICH_VTR_EL2, ICH_MISR_EL2, ICH_EISR_EL2,
// ICH_ELRSR_EL2, ICH_VMCR_EL2.
indexed!(write write_hcr: 0 => "S3_4_C12_C11_0");
indexed!(read read_hcr: 0 => "S3_4_C12_C11_0");
indexed!(read read_vtr: 0 => "S3_4_C12_C11_1");
indexed!(read read_misr: 0 => "S3_4_C12_C11_2");
indexed!(read read_eisr: 0 => "S3_4_C12_C11_3");
indexed!(read read_elrsr: 0 => "S3_4_C12_C11_5");
indexed!(write write_vmcr: 0 => "S3_4_C12_C11_7");
indexed!(read read_vmcr: 0 => "S3_4_C12_C11_7");

/// Records the virtual interface's shape as each CPU sets up its GIC system registers
/// (`usable`: the CPU has a GICv3 CPU interface and `ICC_SRE_EL2.SRE` stuck at 1): the
/// smallest over the CPUs, so that no CPU is asked for a register it lacks.
pub fn probe(usable: bool) {
    if !usable {
        return;
    }
    let vtr = read_vtr(0);
    // ListRegs (4:0) + 1, at most the 16 the architecture defines.
    let nr_lrs = ((vtr & 0x1f) as u8 + 1).min(16);
    // The active-priority registers follow the preemption bits, PREbits (28:26) + 1:
    // 5 → 1 APR per group, 6 → 2, 7 → 4.
    let pre_bits = ((vtr >> 26) & 7) as u8 + 1;
    let nr_aprs = 1 << pre_bits.saturating_sub(5).min(2);
    let _ = NR_APRS.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        Some(if n == 0 { nr_aprs } else { n.min(nr_aprs) })
    });
    let _ = NR_LRS.fetch_update(Ordering::Release, Ordering::Relaxed, |n| {
        Some(if n == 0 { nr_lrs } else { n.min(nr_lrs) })
    });
}

/// `ICH_HCR_EL2` for a run with the interface off: TC, TALL0, TALL1 — every `ICV_*` access
/// of the guest traps (and ends its run), so nothing it could leave in `ICH_VMCR_EL2`, the
/// active-priority registers or `EOIcount` reaches the next guest on this CPU.
const HCR_OFF_TRAPS: u64 = (1 << 10) | (1 << 11) | (1 << 12);

/// Runs `run` (the world switch) with the interface off and every guest access to it
/// trapped (see [`HCR_OFF_TRAPS`]); nothing to do on a CPU without one.
#[inline(always)]
pub fn run_off<R>(run: impl FnOnce() -> R) -> R {
    if NR_LRS.load(Ordering::Relaxed) == 0 {
        return run();
    }
    write_hcr(0, HCR_OFF_TRAPS);
    let r = run();
    write_hcr(0, 0);
    r
}

/// The shape [`probe`] recorded.
pub fn info() -> Option<VgicInfo> {
    match NR_LRS.load(Ordering::Acquire) {
        0 => None,
        nr_lrs => Some(VgicInfo {
            nr_lrs,
            nr_aprs: NR_APRS.load(Ordering::Relaxed),
        }),
    }
}

/// This CPU's interface to the between-runs invariant (its registers reset UNKNOWN).
pub fn reset_cpu() {
    let Some(info) = info() else { return };
    write_hcr(0, 0);
    write_vmcr(0, 0);
    for i in 0..usize::from(info.nr_aprs) {
        write_ap0r(i, 0);
        write_ap1r(i, 0);
    }
    for i in 0..usize::from(info.nr_lrs) {
        write_lr(i, 0);
    }
}

/// Runs `run` (the world switch) with `v` loaded, and saves it back. Out of line: off the
/// path of guests that leave the interface off.
#[inline(never)]
pub fn run_with<R>(v: &mut VgicRegs, run: impl FnOnce() -> R) -> R {
    let Some(info) = info() else {
        return run();
    };
    load(v, info);
    let r = run();
    save(v, info);
    r
}

/// Loads `v` (the world switch's `isb` before `eret` makes it take effect). Register 0 of
/// each kind (every CPU has it) is written directly, the others through their index: one
/// active-priority register per group and one or two list registers are the common case.
fn load(v: &VgicRegs, info: VgicInfo) {
    write_ap0r0(v.ap0r[0]);
    write_ap1r0(v.ap1r[0]);
    for i in 1..usize::from(info.nr_aprs) {
        write_ap0r(i, v.ap0r[i]);
        write_ap1r(i, v.ap1r[i]);
    }
    let nr = usize::from(v.nr_lrs.min(info.nr_lrs));
    if nr > 0 {
        write_lr0(v.lr[0]);
    }
    for i in 1..nr {
        write_lr(i, v.lr[i]);
    }
    write_vmcr(0, v.vmcr);
    write_hcr(0, v.hcr);
}

/// Saves the interface into `v` and switches it off, back to the between-runs invariant.
fn save(v: &mut VgicRegs, info: VgicInfo) {
    v.hcr = read_hcr(0);
    v.vmcr = read_vmcr(0);
    v.misr = read_misr(0);
    v.eisr = read_eisr(0);
    v.elrsr = read_elrsr(0);
    write_hcr(0, 0);
    v.ap0r[0] = read_ap0r(0);
    v.ap1r[0] = read_ap1r(0);
    write_ap0r0(0);
    write_ap1r0(0);
    for i in 1..usize::from(info.nr_aprs) {
        v.ap0r[i] = read_ap0r(i);
        v.ap1r[i] = read_ap1r(i);
        write_ap0r(i, 0);
        write_ap1r(i, 0);
    }
    let nr = usize::from(v.nr_lrs.min(info.nr_lrs));
    if nr > 0 {
        v.lr[0] = read_lr(0);
        write_lr0(0);
    }
    for i in 1..nr {
        v.lr[i] = read_lr(i);
        write_lr(i, 0);
    }
    write_vmcr(0, 0);
}
