//! Boot-layout contract between `xtask`, the EL2 image and the host image on QEMU `virt`.
//!
//! This is the one place that says where the images live. `xtask` hands the host image to
//! QEMU's generic loader at [`HOST_LOAD_ADDR`]; the host image is linked there; EL2 checks the
//! arm64 `Image` header found there and enters it.

/// Base of RAM on QEMU's `virt` machine.
pub const QEMU_VIRT_RAM_BASE: u64 = 0x4000_0000;

/// `text_offset` of the EL2 image: QEMU's `-kernel` loads an arm64 `Image` at RAM base + this.
pub const EL2_TEXT_OFFSET: u64 = 0x8_0000;

/// Where QEMU places (and enters) the EL2 image.
pub const EL2_LOAD_ADDR: u64 = QEMU_VIRT_RAM_BASE + EL2_TEXT_OFFSET;

/// Offset of the host image from the RAM base (2 MiB, the arm64 `Image` alignment).
pub const HOST_LOAD_OFFSET: u64 = 0x20_0000;

/// Where the host image is loaded, linked and entered.
pub const HOST_LOAD_ADDR: u64 = QEMU_VIRT_RAM_BASE + HOST_LOAD_OFFSET;

/// Offset of the magic number in an arm64 `Image` header.
pub const IMAGE_MAGIC_OFFSET: usize = 0x38;

/// The arm64 `Image` magic, `"ARM\x64"` read as a little-endian `u32`.
pub const IMAGE_MAGIC: u32 = u32::from_le_bytes(*b"ARM\x64");

/// Offset of the `image_size` field (bytes the image occupies once loaded, `.bss` included).
pub const IMAGE_SIZE_OFFSET: usize = 0x10;

/// Offset of the `text_offset` field.
pub const IMAGE_TEXT_OFFSET_OFFSET: usize = 0x08;
