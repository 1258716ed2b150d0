//! The layout of an AArch64 exception vector table, for the images' reports of unexpected
//! exceptions: their vector entries pass the entry's number (0..16, table order).

/// Size of one vector entry: 32 instructions.
pub const VECTOR_ENTRY_SIZE: usize = 0x80;

/// Alignment of a vector table (`VBAR_ELx` bits 10:0 are RES0).
pub const VECTOR_TABLE_ALIGN: usize = 0x800;

/// Names of the 16 vector entries, in table order.
pub const VECTOR_NAMES: [&str; 16] = [
    "current EL with SP_EL0, synchronous",
    "current EL with SP_EL0, IRQ",
    "current EL with SP_EL0, FIQ",
    "current EL with SP_EL0, SError",
    "current EL with SP_ELx, synchronous",
    "current EL with SP_ELx, IRQ",
    "current EL with SP_ELx, FIQ",
    "current EL with SP_ELx, SError",
    "lower EL AArch64, synchronous",
    "lower EL AArch64, IRQ",
    "lower EL AArch64, FIQ",
    "lower EL AArch64, SError",
    "lower EL AArch32, synchronous",
    "lower EL AArch32, IRQ",
    "lower EL AArch32, FIQ",
    "lower EL AArch32, SError",
];

/// The name of vector entry `kind`, `"?"` outside the table.
pub fn vector_name(kind: u64) -> &'static str {
    usize::try_from(kind)
        .ok()
        .and_then(|k| VECTOR_NAMES.get(k))
        .copied()
        .unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_table_order() {
        assert_eq!(vector_name(0), "current EL with SP_EL0, synchronous");
        assert_eq!(vector_name(8), "lower EL AArch64, synchronous");
        assert_eq!(vector_name(15), "lower EL AArch32, SError");
        assert_eq!(vector_name(16), "?");
        assert_eq!(vector_name(u64::MAX), "?");
    }
}
