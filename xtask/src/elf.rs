//! A minimal ELF64 (little-endian, AArch64) reader that turns the `PT_LOAD` segments of an
//! executable into the raw memory image a boot loader copies to RAM (what
//! `objcopy -O binary` does), so that xtask needs no external tool.

use std::fmt;

const PT_LOAD: u32 = 1;
const EM_AARCH64: u16 = 183;
/// Largest image we are willing to produce (guards against bogus segment addresses).
const MAX_IMAGE: u64 = 64 << 20;

/// A flat image: `bytes` belong at physical address `base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatImage {
    /// Load address of `bytes[0]` (lowest `p_paddr` of the loadable segments).
    pub base: u64,
    /// ELF entry point.
    pub entry: u64,
    /// The image; gaps between segments are zero.
    pub bytes: Vec<u8>,
}

/// Why an ELF file could not be converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfError(pub String);

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ElfError> {
    Err(ElfError(msg.into()))
}

fn bytes<const N: usize>(data: &[u8], off: u64) -> Result<[u8; N], ElfError> {
    usize::try_from(off)
        .ok()
        .and_then(|o| data.get(o..o.checked_add(N)?))
        .map(|s| s.try_into().expect("slice of length N"))
        .ok_or_else(|| {
            ElfError(format!(
                "truncated ELF file (reading {N} bytes at {off:#x})"
            ))
        })
}

fn u16_at(data: &[u8], off: u64) -> Result<u16, ElfError> {
    bytes::<2>(data, off).map(u16::from_le_bytes)
}

fn u32_at(data: &[u8], off: u64) -> Result<u32, ElfError> {
    bytes::<4>(data, off).map(u32::from_le_bytes)
}

fn u64_at(data: &[u8], off: u64) -> Result<u64, ElfError> {
    bytes::<8>(data, off).map(u64::from_le_bytes)
}

/// Converts an AArch64 ELF64 executable into a flat image of its loadable segments, placed by
/// physical address. Segments with no file contents (`.bss`) are left out: the image's own
/// start-up code zeroes them.
pub fn to_flat_image(data: &[u8]) -> Result<FlatImage, ElfError> {
    if data.get(..4) != Some(b"\x7fELF".as_slice()) {
        return err("not an ELF file");
    }
    if data.get(4) != Some(&2) || data.get(5) != Some(&1) {
        return err("not a little-endian ELF64 file");
    }
    if u16_at(data, 0x12)? != EM_AARCH64 {
        return err("not an AArch64 ELF file");
    }
    let entry = u64_at(data, 0x18)?;
    let phoff = u64_at(data, 0x20)?;
    let phentsize = u64::from(u16_at(data, 0x36)?);
    let phnum = u64::from(u16_at(data, 0x38)?);
    if phentsize < 56 {
        return err(format!("bad program header size {phentsize}"));
    }

    // (paddr, file offset, file size)
    let mut segments = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(data, ph)? != PT_LOAD {
            continue;
        }
        let offset = u64_at(data, ph + 8)?;
        let paddr = u64_at(data, ph + 24)?;
        let filesz = u64_at(data, ph + 32)?;
        if filesz == 0 {
            continue;
        }
        let end = offset
            .checked_add(filesz)
            .filter(|&e| e <= data.len() as u64);
        if end.is_none() {
            return err(format!("segment {i} lies outside the file"));
        }
        segments.push((paddr, offset, filesz));
    }
    let Some(base) = segments.iter().map(|s| s.0).min() else {
        return err("no loadable segment with contents");
    };
    let mut top = base;
    for &(paddr, _, filesz) in &segments {
        let end = paddr
            .checked_add(filesz)
            .ok_or_else(|| ElfError("segment address overflows".into()))?;
        top = top.max(end);
    }
    if top - base > MAX_IMAGE {
        return err(format!(
            "image would be {} bytes (segments too far apart)",
            top - base
        ));
    }

    let mut bytes = vec![0u8; (top - base) as usize];
    segments.sort_unstable();
    let mut filled = base;
    for (paddr, offset, filesz) in segments {
        if paddr < filled {
            return err(format!("overlapping segments at {paddr:#x}"));
        }
        let dst = (paddr - base) as usize;
        let src = offset as usize;
        bytes[dst..dst + filesz as usize].copy_from_slice(&data[src..src + filesz as usize]);
        filled = paddr + filesz;
    }
    Ok(FlatImage { base, entry, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a minimal ELF64 with the given (type, paddr, contents, memsz) segments.
    fn elf(entry: u64, segs: &[(u32, u64, &[u8], u64)]) -> Vec<u8> {
        let phoff = 64u64;
        let data_off = phoff + 56 * segs.len() as u64;
        let mut out = vec![0u8; data_off as usize];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[0x10..0x12].copy_from_slice(&2u16.to_le_bytes());
        out[0x12..0x14].copy_from_slice(&EM_AARCH64.to_le_bytes());
        out[0x18..0x20].copy_from_slice(&entry.to_le_bytes());
        out[0x20..0x28].copy_from_slice(&phoff.to_le_bytes());
        out[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        out[0x38..0x3a].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        let mut off = data_off;
        for (i, (ty, paddr, contents, memsz)) in segs.iter().enumerate() {
            let ph = (phoff + 56 * i as u64) as usize;
            out[ph..ph + 4].copy_from_slice(&ty.to_le_bytes());
            out[ph + 8..ph + 16].copy_from_slice(&off.to_le_bytes());
            out[ph + 16..ph + 24].copy_from_slice(&(paddr + 0x1000_0000).to_le_bytes()); // vaddr
            out[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            out[ph + 32..ph + 40].copy_from_slice(&(contents.len() as u64).to_le_bytes());
            out[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
            off += contents.len() as u64;
        }
        for (_, _, contents, _) in segs {
            out.extend_from_slice(contents);
        }
        out
    }

    #[test]
    fn flattens_by_physical_address_with_gaps() {
        let f = elf(
            0x4000_0000,
            &[
                (PT_LOAD, 0x4000_0010, b"world", 5),
                (PT_LOAD, 0x4000_0000, b"hello", 5),
                (6, 0x0, b"ignored", 7),             // PT_PHDR: not loaded
                (PT_LOAD, 0x4000_0100, b"", 0x1000), // .bss only: left out
            ],
        );
        let img = to_flat_image(&f).unwrap();
        assert_eq!(img.base, 0x4000_0000);
        assert_eq!(img.entry, 0x4000_0000);
        assert_eq!(img.bytes.len(), 0x15);
        assert_eq!(&img.bytes[..5], b"hello");
        assert!(img.bytes[5..0x10].iter().all(|&b| b == 0));
        assert_eq!(&img.bytes[0x10..], b"world");
    }

    #[test]
    fn rejects_bad_input() {
        assert!(to_flat_image(b"not an elf").is_err());
        assert!(to_flat_image(&elf(0, &[])).is_err());
        let overlap = elf(
            0,
            &[(PT_LOAD, 0x100, b"abcd", 4), (PT_LOAD, 0x102, b"xy", 2)],
        );
        assert!(
            to_flat_image(&overlap)
                .unwrap_err()
                .0
                .contains("overlapping")
        );
        let far = elf(0, &[(PT_LOAD, 0, b"a", 1), (PT_LOAD, 1 << 40, b"b", 1)]);
        assert!(to_flat_image(&far).is_err());
        let mut truncated = elf(0, &[(PT_LOAD, 0x100, b"abcd", 4)]);
        truncated.truncate(truncated.len() - 2);
        assert!(to_flat_image(&truncated).unwrap_err().0.contains("outside"));
    }
}
