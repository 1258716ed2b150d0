//! The CPU's ID registers for a guest's trapped reads (`HCR_EL2.TID3`; the portable core
//! takes features out: `crates/hyp/src/vm/idregs.rs`). Every encoding of `Op0` = 3, `Op1` = 0,
//! `CRn` = 0, `CRm` 1..=7 is readable at EL2 (the unallocated ones read as zero), and each needs
//! its own `MRS`: one match arm per encoding.

use core::arch::asm;

/// `ID` register (`crm`, `op2`); 0 outside `CRm` 1..=7.
pub fn read(crm: u8, op2: u8) -> u64 {
    macro_rules! read {
        ($reg:literal) => {{
            let v: u64;
            // SAFETY: an ID register (or a reserved ID encoding, RAZ) of Op0 3, Op1 0, CRn 0:
            // readable at EL2, no side effect.
            unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }};
    }
    match (crm, op2) {
        (1, 0) => read!("S3_0_C0_C1_0"),
        (1, 1) => read!("S3_0_C0_C1_1"),
        (1, 2) => read!("S3_0_C0_C1_2"),
        (1, 3) => read!("S3_0_C0_C1_3"),
        (1, 4) => read!("S3_0_C0_C1_4"),
        (1, 5) => read!("S3_0_C0_C1_5"),
        (1, 6) => read!("S3_0_C0_C1_6"),
        (1, 7) => read!("S3_0_C0_C1_7"),
        (2, 0) => read!("S3_0_C0_C2_0"),
        (2, 1) => read!("S3_0_C0_C2_1"),
        (2, 2) => read!("S3_0_C0_C2_2"),
        (2, 3) => read!("S3_0_C0_C2_3"),
        (2, 4) => read!("S3_0_C0_C2_4"),
        (2, 5) => read!("S3_0_C0_C2_5"),
        (2, 6) => read!("S3_0_C0_C2_6"),
        (2, 7) => read!("S3_0_C0_C2_7"),
        (3, 0) => read!("S3_0_C0_C3_0"),
        (3, 1) => read!("S3_0_C0_C3_1"),
        (3, 2) => read!("S3_0_C0_C3_2"),
        (3, 3) => read!("S3_0_C0_C3_3"),
        (3, 4) => read!("S3_0_C0_C3_4"),
        (3, 5) => read!("S3_0_C0_C3_5"),
        (3, 6) => read!("S3_0_C0_C3_6"),
        (3, 7) => read!("S3_0_C0_C3_7"),
        (4, 0) => read!("S3_0_C0_C4_0"),
        (4, 1) => read!("S3_0_C0_C4_1"),
        (4, 2) => read!("S3_0_C0_C4_2"),
        (4, 3) => read!("S3_0_C0_C4_3"),
        (4, 4) => read!("S3_0_C0_C4_4"),
        (4, 5) => read!("S3_0_C0_C4_5"),
        (4, 6) => read!("S3_0_C0_C4_6"),
        (4, 7) => read!("S3_0_C0_C4_7"),
        (5, 0) => read!("S3_0_C0_C5_0"),
        (5, 1) => read!("S3_0_C0_C5_1"),
        (5, 2) => read!("S3_0_C0_C5_2"),
        (5, 3) => read!("S3_0_C0_C5_3"),
        (5, 4) => read!("S3_0_C0_C5_4"),
        (5, 5) => read!("S3_0_C0_C5_5"),
        (5, 6) => read!("S3_0_C0_C5_6"),
        (5, 7) => read!("S3_0_C0_C5_7"),
        (6, 0) => read!("S3_0_C0_C6_0"),
        (6, 1) => read!("S3_0_C0_C6_1"),
        (6, 2) => read!("S3_0_C0_C6_2"),
        (6, 3) => read!("S3_0_C0_C6_3"),
        (6, 4) => read!("S3_0_C0_C6_4"),
        (6, 5) => read!("S3_0_C0_C6_5"),
        (6, 6) => read!("S3_0_C0_C6_6"),
        (6, 7) => read!("S3_0_C0_C6_7"),
        (7, 0) => read!("S3_0_C0_C7_0"),
        (7, 1) => read!("S3_0_C0_C7_1"),
        (7, 2) => read!("S3_0_C0_C7_2"),
        (7, 3) => read!("S3_0_C0_C7_3"),
        (7, 4) => read!("S3_0_C0_C7_4"),
        (7, 5) => read!("S3_0_C0_C7_5"),
        (7, 6) => read!("S3_0_C0_C7_6"),
        (7, 7) => read!("S3_0_C0_C7_7"),
        _ => 0,
    }
}
