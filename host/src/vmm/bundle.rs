//! The Linux guest's files as xtask bundles them (`xtask/src/linux/guest.rs`): the magic
//! `PKVMGST1`, then kernel offset and length, initramfs offset and length (`u64`s,
//! little-endian), the kernel at 4 KiB. QEMU loads the bundle with `-initrd`, so the host finds
//! it at `/chosen/linux,initrd-start` and its RAM is kept out of the host's free memory.

use crate::ranges::Range;

/// The magic.
pub const MAGIC: u64 = u64::from_le_bytes(*b"PKVMGST1");

/// Where the kernel and the initramfs are, in host physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// The kernel `Image`.
    pub kernel: Range,
    /// The initramfs (a `newc` cpio).
    pub initrd: Range,
}

/// Reads the bundle header at `r` (memory QEMU loaded, identity-mapped).
///
/// # Errors
/// Why the range does not hold a bundle.
pub fn parse(r: Range) -> Result<Bundle, &'static str> {
    if r.end - r.start < 40 {
        return Err("too short for a bundle header");
    }
    let word = |i: u64| {
        // SAFETY: a word of the initrd range QEMU loaded, inside `r` (checked above),
        // identity-mapped and never written by anyone.
        unsafe { core::ptr::read_volatile((r.start + 8 * i) as *const u64) }
    };
    if word(0) != MAGIC {
        return Err("no PKVMGST1 magic: not a guest bundle");
    }
    let part = |off: u64, len: u64| {
        let start = r.start.checked_add(off)?;
        let end = start.checked_add(len)?;
        (end <= r.end && len > 0).then(|| Range::new(start, end))
    };
    let kernel = part(word(1), word(2)).ok_or("kernel outside the bundle")?;
    let initrd = part(word(3), word(4)).ok_or("initramfs outside the bundle")?;
    Ok(Bundle { kernel, initrd })
}
