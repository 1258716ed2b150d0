//! Copies a flattened device tree, adding `/memreserve/` entries: how EL2 hides its own memory
//! from the host without moving or resizing any node. [`hide_nodes`] then removes, in place,
//! the nodes of devices EL2 keeps from the host, and every `msi-parent` or `msi-map` that
//! pointed at one of them (their bytes are cut out of the structure block, which shrinks; `FDT_NOP` tokens would
//! be simpler, but the `fdt` crate the host and EL2 parse with stops at them).
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

const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
/// Header offset of `size_dt_struct`.
const HDR_SIZE_STRUCT: usize = 36;
/// Deepest node nesting [`hide_nodes`] follows.
const MAX_DEPTH: usize = 16;
/// Most nodes [`hide_nodes`] removes in one call.
const MAX_HIDDEN: usize = 8;

/// Cuts the byte ranges `cuts` (sorted, disjoint, inside the structure block) out of the FDT
/// in `b`: the rest of the structure block and the strings block after it move down, and the
/// header's sizes and offsets follow.
fn cut(b: &mut [u8], cuts: &mut [(usize, usize)]) {
    cuts.sort_unstable();
    let off_struct = be32(b, 8).unwrap_or(0) as usize;
    let size_struct = be32(b, HDR_SIZE_STRUCT).unwrap_or(0) as usize;
    let off_strings = be32(b, 12).unwrap_or(0) as usize;
    let total = be32(b, 4).unwrap_or(0) as usize;
    let struct_end = off_struct + size_struct;
    // Compact the structure block.
    let (mut dst, mut src, mut removed) = (cuts[0].0, cuts[0].0, 0);
    for &(s, e) in cuts.iter() {
        b.copy_within(src..s, dst);
        dst += s - src;
        src = e;
        removed += e - s;
    }
    b.copy_within(src..struct_end, dst);
    // Everything after the structure block (the strings) moves down with it.
    b.copy_within(struct_end..total, struct_end - removed);
    put32(b, HDR_SIZE_STRUCT, (size_struct - removed) as u32);
    put32(b, 4, (total - removed) as u32);
    if off_strings >= struct_end {
        put32(b, 12, (off_strings - removed) as u32);
    }
}

/// Walks the structure block of the FDT in `b` and calls `f(kind, token_offset, end_offset,
/// name, value)` for every node start (`name` = node name) and property (`name` = property
/// name, `value` = its bytes); `end_offset` is where the token's data ends.
fn walk_tokens(
    b: &[u8],
    mut f: impl FnMut(u32, usize, usize, &[u8], &[u8]),
) -> Result<(), FdtPatchError> {
    let h = |off| be32(b, off).ok_or(FdtPatchError::BadHeader);
    if h(0)? != MAGIC {
        return Err(FdtPatchError::BadHeader);
    }
    let (off_struct, off_strings) = (h(8)? as usize, h(12)? as usize);
    let (size_strings, size_struct) = (h(32)? as usize, h(36)? as usize);
    let end = off_struct
        .checked_add(size_struct)
        .filter(|&e| e <= b.len())
        .ok_or(FdtPatchError::BadHeader)?;
    let strings = b
        .get(off_strings..off_strings.saturating_add(size_strings))
        .ok_or(FdtPatchError::BadHeader)?;
    let cstr =
        |bytes: &[u8]| -> usize { bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len()) };
    let mut at = off_struct;
    while at + 4 <= end {
        let tok = be32(b, at).ok_or(FdtPatchError::BadHeader)?;
        match tok {
            FDT_BEGIN_NODE => {
                let name = b.get(at + 4..end).ok_or(FdtPatchError::BadHeader)?;
                let n = cstr(name);
                let next = (at + 4 + n + 1).next_multiple_of(4);
                f(tok, at, next, &name[..n], &[]);
                at = next;
            }
            FDT_PROP => {
                let len = be32(b, at + 4).ok_or(FdtPatchError::BadHeader)? as usize;
                let nameoff = be32(b, at + 8).ok_or(FdtPatchError::BadHeader)? as usize;
                let value = b
                    .get(at + 12..(at + 12).saturating_add(len))
                    .filter(|_| at + 12 + len <= end)
                    .ok_or(FdtPatchError::BadHeader)?;
                let pname = strings.get(nameoff..).ok_or(FdtPatchError::BadHeader)?;
                let next = (at + 12 + len).next_multiple_of(4);
                f(tok, at, next, &pname[..cstr(pname)], value);
                at = next;
            }
            FDT_END_NODE | FDT_NOP => {
                f(tok, at, at + 4, &[], &[]);
                at += 4;
            }
            FDT_END => return Ok(()),
            _ => return Err(FdtPatchError::BadHeader),
        }
    }
    Err(FdtPatchError::BadHeader)
}

/// Removes, in place, every node of the FDT in `b` whose `compatible` list contains one of
/// `compatibles` (with its subnodes), and every `msi-parent` or `msi-map` property that
/// referenced one of them by phandle (QEMU `virt`'s PCIe node has `msi-map = <0 &its 0
/// 0x10000>`). Returns how many nodes were removed; the blob shrinks (its new size is in
/// the header), the memory reservation block does not move.
///
/// # Errors
/// [`FdtPatchError::BadHeader`] if `b` is not a consistent FDT, or nests deeper than EL2
/// follows (16 levels) or holds more matching nodes than it removes at once (8); nothing is
/// changed then.
pub fn hide_nodes(b: &mut [u8], compatibles: &[&str]) -> Result<usize, FdtPatchError> {
    // Pass 1: the token ranges and phandles of the matching nodes.
    let mut hidden = [(0usize, 0usize, 0u32); MAX_HIDDEN];
    let mut n = 0;
    let mut stack = [(0usize, false, 0u32); MAX_DEPTH];
    let mut depth = 0usize;
    let mut bad = false;
    walk_tokens(b, |tok, at, next, name, value| match tok {
        FDT_BEGIN_NODE => {
            if depth == MAX_DEPTH {
                bad = true;
            } else {
                stack[depth] = (at, false, 0);
                depth += 1;
            }
        }
        FDT_PROP if depth > 0 => {
            let top = &mut stack[depth - 1];
            if name == b"compatible" {
                top.1 |= value
                    .split(|&c| c == 0)
                    .any(|c| compatibles.iter().any(|w| w.as_bytes() == c));
            } else if name == b"phandle" && value.len() == 4 {
                top.2 = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
            }
        }
        FDT_END_NODE if depth > 0 => {
            depth -= 1;
            let (start, matched, phandle) = stack[depth];
            // A match inside a node that is removed anyway needs no entry of its own.
            let inside = hidden[..n].iter().any(|&(s, e, _)| start >= s && start < e);
            if matched && !inside {
                if n == MAX_HIDDEN {
                    bad = true;
                } else {
                    hidden[n] = (start, next, phandle);
                    n += 1;
                }
            }
        }
        _ => {}
    })?;
    if bad || depth != 0 {
        return Err(FdtPatchError::BadHeader);
    }
    // Pass 2: the msi-parent / msi-map properties that point at a removed node. An
    // msi-parent starts with the phandle; each msi-map entry is (rid-base, phandle, msi-base,
    // length).
    let mut refs = [(0usize, 0usize); MAX_HIDDEN * 4];
    let mut nrefs = 0;
    let cell = |v: &[u8], i: usize| {
        v.get(4 * i..4 * i + 4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    };
    walk_tokens(b, |tok, at, next, name, value| {
        let phandles = match name {
            b"msi-parent" => (0..1).step_by(1),
            b"msi-map" => (1..value.len() / 4).step_by(4),
            _ => (0..0).step_by(1),
        };
        if tok == FDT_PROP {
            let gone = phandles
                .filter_map(|i| cell(value, i))
                .any(|ph| hidden[..n].iter().any(|&(_, _, p)| p != 0 && p == ph));
            // A reference inside a node that is removed anyway goes with it.
            let inside = hidden[..n].iter().any(|&(s, e, _)| at >= s && at < e);
            if gone && !inside && nrefs < refs.len() {
                refs[nrefs] = (at, next);
                nrefs += 1;
            }
        }
    })?;
    let mut cuts = [(0usize, 0usize); MAX_HIDDEN * 5];
    for (c, &(s, e, _)) in cuts.iter_mut().zip(&hidden[..n]) {
        *c = (s, e);
    }
    for (c, &r) in cuts[n..].iter_mut().zip(&refs[..nrefs]) {
        *c = r;
    }
    if n + nrefs > 0 {
        // Strings before the structure block would be overwritten by nothing, but the
        // blob's layout must be the one `add_memreserve` writes: header, reservations,
        // structure, strings.
        if be32(b, 12).unwrap_or(0) < be32(b, 8).unwrap_or(0) {
            return Err(FdtPatchError::BadHeader);
        }
        cut(b, &mut cuts[..n + nrefs]);
    }
    Ok(n)
}

#[cfg(test)]
#[path = "fdt_patch_tests.rs"]
mod tests;
