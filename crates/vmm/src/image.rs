//! The arm64 Linux `Image` and where a VMM puts it.
//!
//! The header (Linux's `Documentation/arch/arm64/booting.rst`, facts only): 64 bytes,
//! little-endian — `code0`, `code1` (u32 each), `text_offset` (u64, +8), `image_size` (u64,
//! +16: the bytes the kernel uses from its load address, `.bss` included; 0 in kernels before
//! 3.17), `flags` (u64, +24: bit 0 big-endian, bits 1–2 page size 0 unspecified / 1 4K / 2 16K /
//! 3 64K, bit 3 "may be placed anywhere in RAM"), three reserved words, `magic` (u32, +56,
//! `ARM\x64`), and the PE header offset (u32, +60).
//!
//! The boot protocol: the kernel at `text_offset` from a 2 MiB-aligned base in RAM, with
//! `image_size` bytes free from there; the DTB 8-byte aligned, at most 2 MiB, in a 2 MiB region
//! of its own; the initramfs anywhere in RAM (named by `/chosen`); entry at the load address
//! with `x0` = the DTB, `x1..x3` = 0, EL1h, DAIF masked, MMU off.

use crate::Error;
use crate::layout::Layout;

/// `ARM\x64`, little-endian, at byte 56.
pub const MAGIC: u32 = 0x644d_5241;
/// The header's size.
pub const HEADER_SIZE: usize = 64;
/// `text_offset` of kernels whose `image_size` is 0 (before 3.17).
pub const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;
/// The largest DTB the boot protocol allows.
pub const MAX_DTB: u64 = 2 << 20;
const SZ_2M: u64 = 2 << 20;
const PAGE: u64 = 4096;

/// What the header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Where the kernel goes relative to a 2 MiB-aligned base.
    pub text_offset: u64,
    /// Bytes the kernel needs from its load address (`.bss` included); at least the file's
    /// length.
    pub image_size: u64,
    /// The page size the kernel was built for, if it says (4096, 16384 or 65536).
    pub page_size: Option<u64>,
    /// The kernel may be placed anywhere in RAM (flags bit 3), not only near its start.
    pub anywhere: bool,
}

fn le_u64(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

impl Header {
    /// Parses and validates the header of `image` (the whole file).
    ///
    /// # Errors
    /// [`Error::NotAnImage`] for a file shorter than the header or with the wrong magic;
    /// [`Error::UnsupportedImage`] for a big-endian kernel, a `text_offset` that is not
    /// page-aligned or not below 2 MiB, or an `image_size` smaller than the file.
    pub fn parse(image: &[u8]) -> Result<Self, Error> {
        let h = image.get(..HEADER_SIZE).ok_or(Error::NotAnImage)?;
        let magic = u32::from_le_bytes([h[56], h[57], h[58], h[59]]);
        if magic != MAGIC {
            return Err(Error::NotAnImage);
        }
        let (mut text_offset, image_size, flags) = (le_u64(h, 8), le_u64(h, 16), le_u64(h, 24));
        if image_size == 0 {
            text_offset = LEGACY_TEXT_OFFSET;
        }
        let len = image.len() as u64;
        let image_size = if image_size == 0 { len } else { image_size };
        if flags & 1 != 0
            || !text_offset.is_multiple_of(PAGE)
            || text_offset >= SZ_2M
            || image_size < len
        {
            return Err(Error::UnsupportedImage);
        }
        let page_size = match (flags >> 1) & 3 {
            0 => None,
            n => Some(PAGE << (2 * (n - 1))),
        };
        Ok(Self {
            text_offset,
            image_size,
            page_size,
            anywhere: flags & (1 << 3) != 0,
        })
    }
}

/// Where everything goes in guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The kernel's load address, also its entry point.
    pub kernel: u64,
    /// The end of the kernel's `image_size` bytes.
    pub kernel_end: u64,
    /// The DTB's address (`x0` at entry): the start of the last 2 MiB of RAM.
    pub dtb: u64,
    /// The initramfs: `(start, end)`, just below the DTB's region, page-aligned.
    pub initrd: Option<(u64, u64)>,
}

/// Places a kernel with header `h`, a DTB of at most [`MAX_DTB`] bytes and an initramfs of
/// `initrd_len` bytes (0: none) in the RAM of `layout`: the kernel at the start of RAM plus
/// `text_offset`, the DTB in the last 2 MiB, the initramfs just below it.
///
/// # Errors
/// [`Error::TooBig`] if they overlap or do not fit.
pub fn place(layout: &Layout, h: &Header, initrd_len: u64) -> Result<Placement, Error> {
    let (base, _) = layout.ram();
    let kernel = base + h.text_offset;
    let kernel_end = kernel.checked_add(h.image_size).ok_or(Error::TooBig)?;
    let dtb = layout.ram_end() - SZ_2M;
    let initrd = match initrd_len {
        0 => None,
        n => {
            let start = dtb.checked_sub(n).ok_or(Error::TooBig)? & !(PAGE - 1);
            Some((start, start + n))
        }
    };
    let free_from = initrd.map_or(dtb, |(s, _)| s);
    if kernel_end > free_from {
        return Err(Error::TooBig);
    }
    Ok(Placement {
        kernel,
        kernel_end,
        dtb,
        initrd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn image(text_offset: u64, image_size: u64, flags: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[8..16].copy_from_slice(&text_offset.to_le_bytes());
        b[16..24].copy_from_slice(&image_size.to_le_bytes());
        b[24..32].copy_from_slice(&flags.to_le_bytes());
        b[56..60].copy_from_slice(&MAGIC.to_le_bytes());
        b
    }

    #[test]
    fn a_modern_header_is_read() {
        // Debian's 6.1 arm64 kernel: text_offset 0, flags 0xa (4K pages, anywhere).
        let h = Header::parse(&image(0, 0x200_0000, 0xa, 4096)).unwrap();
        assert_eq!(
            h,
            Header {
                text_offset: 0,
                image_size: 0x200_0000,
                page_size: Some(4096),
                anywhere: true
            }
        );
        assert_eq!(
            Header::parse(&image(0, 1 << 20, 0x4, 4096))
                .unwrap()
                .page_size,
            Some(16384)
        );
        assert_eq!(
            Header::parse(&image(0, 1 << 20, 0x6, 4096))
                .unwrap()
                .page_size,
            Some(65536)
        );
        assert_eq!(
            Header::parse(&image(0, 1 << 20, 0, 4096))
                .unwrap()
                .page_size,
            None
        );
    }

    #[test]
    fn a_legacy_header_gets_the_old_text_offset_and_the_file_length() {
        let h = Header::parse(&image(0x1234, 0, 0, 8192)).unwrap();
        assert_eq!((h.text_offset, h.image_size), (LEGACY_TEXT_OFFSET, 8192));
    }

    #[test]
    fn bad_images_are_refused() {
        assert_eq!(Header::parse(&[0; 63]), Err(Error::NotAnImage));
        let mut b = image(0, 1 << 20, 0, 4096);
        b[59] ^= 1;
        assert_eq!(Header::parse(&b), Err(Error::NotAnImage));
        for (off, size, flags) in [
            (0, 1 << 20, 1),       // big-endian
            (0x100, 1 << 20, 0),   // text_offset not page-aligned
            (2 << 20, 1 << 20, 0), // text_offset past 2 MiB
            (0, 1024, 0),          // image_size below the file's length
        ] {
            assert_eq!(
                Header::parse(&image(off, size, flags, 4096)),
                Err(Error::UnsupportedImage),
                "{off:#x} {size:#x} {flags:#x}"
            );
        }
    }

    #[test]
    fn placement_follows_the_boot_protocol() {
        let l = Layout::new(1, 64 << 20).unwrap();
        let h = Header::parse(&image(0x8_0000, 30 << 20, 0, 4096)).unwrap();
        let p = place(&l, &h, 10_000).unwrap();
        assert_eq!(p.kernel, crate::layout::RAM_BASE + 0x8_0000);
        assert_eq!(p.kernel_end, p.kernel + (30 << 20));
        assert_eq!(p.dtb, l.ram_end() - (2 << 20));
        assert!(p.dtb.is_multiple_of(2 << 20));
        let (s, e) = p.initrd.unwrap();
        assert!(s.is_multiple_of(4096) && e - s == 10_000 && e <= p.dtb && s >= p.kernel_end);
        assert_eq!(place(&l, &h, 0).unwrap().initrd, None);
        // Too big: the kernel reaching the DTB, or the initramfs reaching the kernel.
        let fits = Header::parse(&image(0, 62 << 20, 0, 4096)).unwrap();
        assert_eq!(
            place(&l, &fits, 0).unwrap().kernel_end,
            l.ram_end() - (2 << 20)
        );
        let big = Header::parse(&image(0, (62 << 20) + 4096, 0, 4096)).unwrap();
        assert_eq!(place(&l, &big, 0), Err(Error::TooBig));
        assert_eq!(place(&l, &h, 33 << 20), Err(Error::TooBig));
        assert_eq!(place(&l, &h, u64::MAX), Err(Error::TooBig));
        let huge = Header::parse(&image(0, u64::MAX, 0, 4096)).unwrap();
        assert_eq!(place(&l, &huge, 0), Err(Error::TooBig));
    }
}
