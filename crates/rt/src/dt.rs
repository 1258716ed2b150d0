//! The device-tree questions every image asks at boot, answered with the `fdt` crate: where the
//! blob is, which PL011 is the console, where RAM is, how PSCI is called.

use fdt::Fdt;

/// The device tree at physical address `dtb` (what the boot protocol passes in `x0`), or
/// `None` if the address is 0, misaligned (the blob is 8-byte aligned) or holds no valid
/// header.
///
/// # Safety
///
/// If `dtb` is non-zero and 8-byte aligned, it must be readable (the MMU off, or identity
/// mapped) and hold a flattened device tree that stays in place and unmodified for the rest of
/// the image's life.
#[allow(unsafe_code)]
pub unsafe fn from_addr(dtb: usize) -> Option<Fdt<'static>> {
    if dtb == 0 || !dtb.is_multiple_of(8) {
        return None;
    }
    // SAFETY: the caller guarantees a valid, unchanging device tree at `dtb`; `from_ptr` reads
    // the header to learn the size before it reads anything else.
    unsafe { Fdt::from_ptr(dtb as *const u8) }.ok()
}

/// Whether `node` is compatible with `c`.
pub fn is_compatible(node: &fdt::node::FdtNode<'_, '_>, c: &str) -> bool {
    node.compatible()
        .is_some_and(|list| list.all().any(|s| s == c))
}

/// The base address of the console: the PL011 `/chosen/stdout-path` names, else the first
/// `arm,pl011` node.
pub fn console_pl011(fdt: &Fdt<'_>) -> Option<usize> {
    let uart = fdt
        .chosen()
        .stdout()
        .filter(|n| is_compatible(n, "arm,pl011"))
        .or_else(|| fdt.find_compatible(&["arm,pl011"]))?;
    Some(uart.reg()?.next()?.starting_address as usize)
}

/// `/psci`'s `method` (`"smc"` or `"hvc"`), if the node says.
pub fn psci_method<'a>(fdt: &Fdt<'a>) -> Option<&'a str> {
    fdt.find_node("/psci")?.property("method")?.as_str()
}

/// The RAM regions `(base, size)`: every non-empty `reg` entry of every node with
/// `device_type = "memory"`, in device-tree order.
pub fn memory_regions<'f, 'a>(fdt: &'f Fdt<'a>) -> impl Iterator<Item = (u64, u64)> + use<'f, 'a> {
    fdt.all_nodes()
        .filter(|n| {
            n.property("device_type")
                .and_then(|p| p.as_str())
                .is_some_and(|s| s == "memory")
        })
        .flat_map(|n| n.reg().into_iter().flatten())
        .map(|r| (r.starting_address as u64, r.size.unwrap_or(0) as u64))
        .filter(|&(_, size)| size != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// A node's properties: (name, value).
    type Props<'a> = &'a [(&'a str, &'a [u8])];

    /// A flattened device tree, built by hand: `nodes` are (name, properties) with `None` for
    /// an end of node.
    fn build(nodes: &[Option<(&str, Props<'_>)>]) -> Vec<u64> {
        fn pad(v: &mut Vec<u8>) {
            while !v.len().is_multiple_of(4) {
                v.push(0);
            }
        }
        let (mut dt, mut strings) = (Vec::new(), Vec::new());
        for node in nodes {
            match node {
                Some((name, props)) => {
                    dt.extend(1u32.to_be_bytes());
                    dt.extend(name.as_bytes());
                    dt.push(0);
                    pad(&mut dt);
                    for (prop, value) in *props {
                        dt.extend(3u32.to_be_bytes());
                        dt.extend((value.len() as u32).to_be_bytes());
                        dt.extend((strings.len() as u32).to_be_bytes());
                        strings.extend(prop.as_bytes());
                        strings.push(0);
                        dt.extend(*value);
                        pad(&mut dt);
                    }
                }
                None => dt.extend(2u32.to_be_bytes()),
            }
        }
        dt.extend(9u32.to_be_bytes());
        let (rsv, off_dt) = (40, 56);
        let off_strings = off_dt + dt.len();
        let total = off_strings + strings.len();
        let header = [0xd00d_feed, total, off_dt, off_strings, rsv, 17, 16, 0];
        let mut blob = Vec::new();
        for v in header.into_iter().chain([strings.len(), dt.len()]) {
            blob.extend((v as u32).to_be_bytes());
        }
        blob.extend([0; 16]);
        blob.extend(dt);
        blob.extend(strings);
        blob.resize(blob.len().next_multiple_of(8), 0);
        blob.chunks(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn cells(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|c| c.to_be_bytes()).collect()
    }

    #[test]
    fn console_memory_and_psci() {
        let two = cells(&[2]);
        let uart0 = cells(&[0, 0x901_0000, 0, 0x1000]);
        let uart1 = cells(&[0, 0x900_0000, 0, 0x1000]);
        let ram = cells(&[0, 0x4000_0000, 0, 0x4000_0000, 1, 0, 0, 0]);
        let blob = build(&[
            Some(("", &[("#address-cells", &two), ("#size-cells", &two)])),
            Some(("chosen", &[("stdout-path", b"/pl011@9000000\0")])),
            None,
            Some((
                "pl011@9010000",
                &[("compatible", b"arm,pl011\0"), ("reg", &uart0)],
            )),
            None,
            Some((
                "pl011@9000000",
                &[
                    ("compatible", b"arm,pl011\0arm,primecell\0"),
                    ("reg", &uart1),
                ],
            )),
            None,
            Some((
                "memory@40000000",
                &[("device_type", b"memory\0"), ("reg", &ram)],
            )),
            None,
            Some(("psci", &[("method", b"hvc\0")])),
            None,
            None,
        ]);
        // SAFETY: `blob` is a valid device tree that outlives `fdt` and is not modified.
        #[allow(unsafe_code)]
        let fdt = unsafe { from_addr(blob.as_ptr() as usize) }.expect("a valid device tree");
        assert_eq!(
            console_pl011(&fdt),
            Some(0x900_0000),
            "the one stdout-path names"
        );
        let regions: Vec<_> = memory_regions(&fdt).collect();
        assert_eq!(
            regions,
            [(0x4000_0000, 0x4000_0000)],
            "the empty region is dropped"
        );
        assert_eq!(psci_method(&fdt), Some("hvc"));
        // SAFETY: an address of 0 or a misaligned one is refused before anything is read.
        #[allow(unsafe_code)]
        let refused = unsafe { (from_addr(0), from_addr(blob.as_ptr() as usize + 4)) };
        assert!(refused.0.is_none() && refused.1.is_none());
    }
}
