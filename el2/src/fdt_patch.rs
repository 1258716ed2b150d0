//! Copies a flattened device tree, adding `/memreserve/` entries: how EL2 hides its own memory
//! from the host without moving or resizing any node.
//!
//! The memory reservation block sits between the header and the structure block; the copy
//! is laid out as header, reservation block (old entries, then the new ones, then the
//! terminator), structure block, strings block, with the header's offsets and total size
//! updated. Pure code: unit-tested on the development machine.

/// FDT header magic.
const MAGIC: u32 = 0xd00d_feed;
/// Size of the version-17 header.
const HEADER_SIZE: usize = 40;

/// Why a device tree could not be patched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdtPatchError {
    /// Not a device tree, or its header is inconsistent.
    BadHeader,
    /// The destination buffer is too small.
    TooSmall,
}

fn be32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

/// Copies the DTB in `src` into `dst`, adding one reservation per `(base, size)` in `extra`.
/// Returns the size of the new blob.
///
/// # Errors
/// [`FdtPatchError::BadHeader`] if `src` is not a consistent FDT; [`FdtPatchError::TooSmall`]
/// if `dst` cannot hold the result.
pub fn add_memreserve(
    src: &[u8],
    dst: &mut [u8],
    extra: &[(u64, u64)],
) -> Result<usize, FdtPatchError> {
    let h = |off| be32(src, off).ok_or(FdtPatchError::BadHeader);
    if h(0)? != MAGIC {
        return Err(FdtPatchError::BadHeader);
    }
    let total = h(4)? as usize;
    let off_struct = h(8)? as usize;
    let off_strings = h(12)? as usize;
    let off_rsv = h(16)? as usize;
    let size_strings = h(32)? as usize;
    let size_struct = h(36)? as usize;
    if total > src.len()
        || off_rsv < HEADER_SIZE
        || off_struct
            .checked_add(size_struct)
            .is_none_or(|e| e > total)
        || off_strings
            .checked_add(size_strings)
            .is_none_or(|e| e > total)
    {
        return Err(FdtPatchError::BadHeader);
    }
    // Existing reservations, up to the (0, 0) terminator.
    let mut n_old = 0;
    loop {
        let at = off_rsv + n_old * 16;
        let (a, s) = (
            be64(src, at).ok_or(FdtPatchError::BadHeader)?,
            be64(src, at + 8).ok_or(FdtPatchError::BadHeader)?,
        );
        if a == 0 && s == 0 {
            break;
        }
        n_old += 1;
        if at + 16 > total {
            return Err(FdtPatchError::BadHeader);
        }
    }

    let new_rsv = HEADER_SIZE.next_multiple_of(8);
    let rsv_len = (n_old + extra.len() + 1) * 16;
    let new_struct = new_rsv + rsv_len;
    let new_strings = new_struct + size_struct;
    let new_total = new_strings + size_strings;
    if dst.len() < new_total {
        return Err(FdtPatchError::TooSmall);
    }
    dst[..new_total].fill(0);
    dst[..HEADER_SIZE].copy_from_slice(&src[..HEADER_SIZE]);
    dst[new_rsv..new_rsv + n_old * 16].copy_from_slice(&src[off_rsv..off_rsv + n_old * 16]);
    for (i, &(base, size)) in extra.iter().enumerate() {
        let at = new_rsv + (n_old + i) * 16;
        dst[at..at + 8].copy_from_slice(&base.to_be_bytes());
        dst[at + 8..at + 16].copy_from_slice(&size.to_be_bytes());
    }
    dst[new_struct..new_strings].copy_from_slice(&src[off_struct..off_struct + size_struct]);
    dst[new_strings..new_total].copy_from_slice(&src[off_strings..off_strings + size_strings]);
    put32(dst, 4, new_total as u32);
    put32(dst, 8, new_struct as u32);
    put32(dst, 12, new_strings as u32);
    put32(dst, 16, new_rsv as u32);
    Ok(new_total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid DTB: root node with one property, one existing reservation.
    fn sample() -> Vec<u8> {
        let mut strings = b"model\0".to_vec();
        strings.push(0);
        let mut st = Vec::new();
        let tok = |v: &mut Vec<u8>, t: u32| v.extend_from_slice(&t.to_be_bytes());
        tok(&mut st, 1); // BEGIN_NODE ""
        st.extend_from_slice(&[0, 0, 0, 0]);
        tok(&mut st, 3); // PROP
        tok(&mut st, 4); // len
        tok(&mut st, 0); // nameoff
        st.extend_from_slice(b"abc\0");
        tok(&mut st, 2); // END_NODE
        tok(&mut st, 9); // END
        let rsv_off = 40u32;
        let mut rsv = Vec::new();
        rsv.extend_from_slice(&0x1234_0000u64.to_be_bytes());
        rsv.extend_from_slice(&0x1000u64.to_be_bytes());
        rsv.extend_from_slice(&[0; 16]);
        let struct_off = rsv_off + rsv.len() as u32;
        let strings_off = struct_off + st.len() as u32;
        let total = strings_off + strings.len() as u32;
        let mut b = Vec::new();
        for v in [
            MAGIC,
            total,
            struct_off,
            strings_off,
            rsv_off,
            17,
            16,
            0,
            strings.len() as u32,
            st.len() as u32,
        ] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&rsv);
        b.extend_from_slice(&st);
        b.extend_from_slice(&strings);
        // Padding after the blob, as QEMU leaves.
        b.extend_from_slice(&[0; 64]);
        b
    }

    fn reservations(b: &[u8]) -> Vec<(u64, u64)> {
        let off = be32(b, 16).unwrap() as usize;
        let mut v = Vec::new();
        for i in 0.. {
            let (a, s) = (
                be64(b, off + i * 16).unwrap(),
                be64(b, off + i * 16 + 8).unwrap(),
            );
            if a == 0 && s == 0 {
                return v;
            }
            v.push((a, s));
        }
        unreachable!()
    }

    #[test]
    fn adds_reservations_and_keeps_the_tree() {
        let src = sample();
        let mut dst = vec![0xAAu8; 512];
        let n = add_memreserve(
            &src,
            &mut dst,
            &[(0x4000_0000, 0x20_0000), (0x7f00_0000, 0x100_0000)],
        )
        .unwrap();
        let dst = &dst[..n];
        assert_eq!(be32(dst, 4).unwrap() as usize, n);
        assert_eq!(
            reservations(dst),
            vec![
                (0x1234_0000, 0x1000),
                (0x4000_0000, 0x20_0000),
                (0x7f00_0000, 0x100_0000)
            ]
        );
        // Structure and strings blocks are byte-identical, at their new offsets.
        let (so, ss) = (
            be32(&src, 8).unwrap() as usize,
            be32(&src, 36).unwrap() as usize,
        );
        let (no, _) = (be32(dst, 8).unwrap() as usize, 0);
        assert_eq!(&dst[no..no + ss], &src[so..so + ss]);
        let (sso, sss) = (
            be32(&src, 12).unwrap() as usize,
            be32(&src, 32).unwrap() as usize,
        );
        let nso = be32(dst, 12).unwrap() as usize;
        assert_eq!(&dst[nso..nso + sss], &src[sso..sso + sss]);
        // The fdt crate agrees.
        let fdt = fdt::Fdt::new(dst).unwrap();
        let r: Vec<_> = fdt
            .memory_reservations()
            .map(|r| (r.address() as u64, r.size() as u64))
            .collect();
        assert_eq!(r.len(), 3);
        assert_eq!(r[2], (0x7f00_0000, 0x100_0000));
    }

    #[test]
    fn rejects_garbage_and_small_buffers() {
        let mut dst = vec![0u8; 512];
        assert_eq!(
            add_memreserve(&[0u8; 64], &mut dst, &[]),
            Err(FdtPatchError::BadHeader)
        );
        let mut src = sample();
        src[4..8].copy_from_slice(&10_000u32.to_be_bytes()); // total size past the buffer
        assert_eq!(
            add_memreserve(&src, &mut dst, &[]),
            Err(FdtPatchError::BadHeader)
        );
        let src = sample();
        let mut tiny = vec![0u8; 64];
        assert_eq!(
            add_memreserve(&src, &mut tiny, &[(1, 1)]),
            Err(FdtPatchError::TooSmall)
        );
    }
}
