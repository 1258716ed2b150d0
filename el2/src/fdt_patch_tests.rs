//! Tests of the device-tree patching, run on the development machine.

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

/// A tiny device-tree builder: nodes and properties, then the blob.
#[derive(Default)]
struct Builder {
    st: Vec<u8>,
    strings: Vec<u8>,
}

impl Builder {
    fn tok(&mut self, t: u32) {
        self.st.extend_from_slice(&t.to_be_bytes());
    }
    fn begin(&mut self, name: &str) {
        self.tok(FDT_BEGIN_NODE);
        self.st.extend_from_slice(name.as_bytes());
        self.st.push(0);
        while !self.st.len().is_multiple_of(4) {
            self.st.push(0);
        }
    }
    fn end(&mut self) {
        self.tok(FDT_END_NODE);
    }
    fn prop(&mut self, name: &str, value: &[u8]) {
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        self.tok(FDT_PROP);
        self.tok(value.len() as u32);
        self.tok(off);
        self.st.extend_from_slice(value);
        while !self.st.len().is_multiple_of(4) {
            self.st.push(0);
        }
    }
    fn u32s(&mut self, name: &str, v: &[u32]) {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_be_bytes()).collect();
        self.prop(name, &b);
    }
    fn blob(mut self) -> Vec<u8> {
        self.tok(FDT_END);
        let rsv_off = 40u32;
        let struct_off = rsv_off + 16;
        let strings_off = struct_off + self.st.len() as u32;
        let total = strings_off + self.strings.len() as u32;
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
            self.strings.len() as u32,
            self.st.len() as u32,
        ] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&self.st);
        b.extend_from_slice(&self.strings);
        b
    }
}

/// A QEMU-virt-like tree: a GICv3 with an ITS subnode, a PCIe host whose `msi-parent`
/// points at the ITS, fw_cfg, and a UART.
fn virt_like() -> Vec<u8> {
    let mut t = Builder::default();
    t.begin("");
    t.u32s("#address-cells", &[2]);
    t.u32s("#size-cells", &[2]);
    t.begin("intc@8000000");
    t.prop("compatible", b"arm,gic-v3\0");
    t.u32s("#address-cells", &[2]);
    t.u32s("#size-cells", &[2]);
    t.u32s(
        "reg",
        &[0, 0x0800_0000, 0, 0x1_0000, 0, 0x080a_0000, 0, 0xf6_0000],
    );
    t.begin("its@8080000");
    t.prop("compatible", b"arm,gic-v3-its\0");
    t.u32s("reg", &[0, 0x0808_0000, 0, 0x2_0000]);
    t.u32s("phandle", &[0x8005]);
    t.end();
    t.end();
    t.begin("pcie@10000000");
    t.prop("compatible", b"pci-host-ecam-generic\0");
    t.u32s("msi-map", &[0, 0x8005, 0, 0x1_0000]);
    t.u32s("bus-range", &[0, 0xff]);
    t.end();
    t.begin("virtio@a000000");
    t.prop("compatible", b"virtio,mmio\0");
    t.u32s("msi-parent", &[0x8005]);
    t.end();
    t.begin("fw-cfg@9020000");
    t.prop("compatible", b"qemu,fw-cfg-mmio\0");
    t.u32s("reg", &[0, 0x0902_0000, 0, 0x18]);
    t.end();
    t.begin("pl011@9000000");
    t.prop("compatible", b"arm,pl011\0arm,primecell\0");
    t.u32s("reg", &[0, 0x0900_0000, 0, 0x1000]);
    t.end();
    t.end();
    t.blob()
}

#[test]
fn hides_the_its_and_fw_cfg() {
    let mut b = virt_like();
    let orig = b.clone();
    let before = fdt::Fdt::new(&orig).unwrap();
    assert!(before.find_compatible(&["arm,gic-v3-its"]).is_some());
    let n = hide_nodes(&mut b, &["arm,gic-v3-its", "qemu,fw-cfg-mmio"]).unwrap();
    assert_eq!(n, 2);
    let after = fdt::Fdt::new(&b).unwrap();
    assert!(after.find_compatible(&["arm,gic-v3-its"]).is_none());
    assert!(after.find_compatible(&["qemu,fw-cfg-mmio"]).is_none());
    // Everything else is still there, the GIC with its registers.
    let gic = after.find_compatible(&["arm,gic-v3"]).unwrap();
    assert_eq!(gic.reg().unwrap().count(), 2);
    assert!(after.find_compatible(&["arm,pl011"]).is_some());
    let pcie = after.find_compatible(&["pci-host-ecam-generic"]).unwrap();
    assert!(
        pcie.property("msi-map").is_none(),
        "dangling msi-map removed"
    );
    assert!(pcie.property("bus-range").is_some());
    let virtio = after.find_compatible(&["virtio,mmio"]).unwrap();
    assert!(
        virtio.property("msi-parent").is_none(),
        "dangling msi-parent removed"
    );
    assert_eq!(after.all_nodes().count(), before.all_nodes().count() - 2);
    // Nothing left to hide the second time.
    assert_eq!(hide_nodes(&mut b, &["arm,gic-v3-its"]).unwrap(), 0);
}

/// A removed node that references another removed node (the PCIe host's `msi-map` to the
/// ITS, both hidden): the reference goes with its node, nothing is cut twice.
#[test]
fn hides_nodes_that_reference_each_other() {
    let mut b = virt_like();
    let orig = b.clone();
    let n = hide_nodes(
        &mut b,
        &["arm,gic-v3-its", "pci-host-ecam-generic", "virtio,mmio"],
    )
    .unwrap();
    assert_eq!(n, 3);
    let after = fdt::Fdt::new(&b).unwrap();
    for c in ["arm,gic-v3-its", "pci-host-ecam-generic", "virtio,mmio"] {
        assert!(after.find_compatible(&[c]).is_none(), "{c}");
    }
    assert!(after.find_compatible(&["arm,pl011"]).is_some());
    let before = fdt::Fdt::new(&orig).unwrap();
    assert_eq!(after.all_nodes().count(), before.all_nodes().count() - 3);
}

#[test]
fn hide_nodes_rejects_garbage() {
    let mut junk = vec![0u8; 128];
    assert_eq!(hide_nodes(&mut junk, &["x"]), Err(FdtPatchError::BadHeader));
    let mut b = virt_like();
    // A structure block that runs past the buffer.
    let n = b.len();
    b[36..40].copy_from_slice(&(n as u32 * 2).to_be_bytes());
    let copy = b.clone();
    assert_eq!(
        hide_nodes(&mut b, &["arm,gic-v3-its"]),
        Err(FdtPatchError::BadHeader)
    );
    assert_eq!(b, copy, "nothing changed");
    // Cut in the middle of a node: no END token.
    let mut t = virt_like();
    let cut = t.len() - 40;
    t.truncate(cut);
    let total = t.len() as u32;
    t[4..8].copy_from_slice(&total.to_be_bytes());
    assert!(hide_nodes(&mut t, &["arm,gic-v3-its"]).is_err());
}
