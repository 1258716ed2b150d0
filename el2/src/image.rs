//! Checks the arm64 `Image` header of the host image before EL2 enters it.

use pkvm_abi::boot::{
    IMAGE_MAGIC, IMAGE_MAGIC_OFFSET, IMAGE_SIZE_OFFSET, IMAGE_TEXT_OFFSET_OFFSET,
};

/// What the host image header says.
#[derive(Clone, Copy, Debug)]
pub struct HostImage {
    /// Bytes the image occupies once loaded (`.bss` included).
    pub image_size: u64,
    /// `text_offset` from the header.
    pub text_offset: u64,
}

/// Why a host image was refused.
#[derive(Clone, Copy, Debug)]
pub enum ImageError {
    /// No arm64 `Image` magic (the loader did not put an image there).
    BadMagic(u32),
    /// `image_size` is zero.
    NoSize,
}

impl core::fmt::Display for ImageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ImageError::BadMagic(m) => {
                write!(
                    f,
                    "bad arm64 Image magic {m:#010x} (want {IMAGE_MAGIC:#010x}, \"ARM\\x64\")"
                )
            }
            ImageError::NoSize => write!(f, "arm64 Image header has image_size 0"),
        }
    }
}

/// Reads and checks the header of the image at `addr`.
///
/// The caller must have checked that the first 64 bytes at `addr` are RAM.
pub fn check_host_image(addr: u64) -> Result<HostImage, ImageError> {
    let base = addr as usize as *const u8;
    // SAFETY: the caller checked that the 64-byte header at `addr` lies in RAM (per the device
    // tree); with the MMU off EL2 reads physical memory directly. The offsets are 4- and
    // 8-byte aligned within the header and `addr` is page aligned, so the reads are aligned.
    let (magic, image_size, text_offset) = unsafe {
        (
            base.add(IMAGE_MAGIC_OFFSET).cast::<u32>().read_volatile(),
            base.add(IMAGE_SIZE_OFFSET).cast::<u64>().read_volatile(),
            base.add(IMAGE_TEXT_OFFSET_OFFSET)
                .cast::<u64>()
                .read_volatile(),
        )
    };
    if magic != IMAGE_MAGIC {
        return Err(ImageError::BadMagic(magic));
    }
    if image_size == 0 {
        return Err(ImageError::NoSize);
    }
    Ok(HostImage {
        image_size,
        text_offset,
    })
}
