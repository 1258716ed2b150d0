//! What the host reads from the device tree (with the `fdt` crate).

use crate::psci::Conduit;
use crate::ranges::{Range, RangeSet};
use fdt::Fdt;

/// At most this many `/memreserve/` entries and `/reserved-memory` regions are kept.
pub const MAX_RESERVED: usize = 16;

/// The platform as the host sees it.
#[derive(Debug)]
pub struct DeviceTree {
    /// Base of the console PL011.
    pub uart_base: usize,
    /// How PSCI is called (`/psci` `method`).
    pub psci_conduit: Conduit,
    /// `/chosen/bootargs` (empty if absent).
    pub bootargs: &'static str,
    /// Number of CPUs.
    pub cpus: usize,
    /// Total RAM.
    pub ram_bytes: u64,
    /// RAM: the `reg` of every `device_type = "memory"` node.
    pub ram: RangeSet,
    /// The `/memreserve/` entries, then the `/reserved-memory` children's `reg`s, in DTB order.
    pub reserved: [Range; MAX_RESERVED],
    /// How many entries of `reserved` are used.
    pub nr_reserved: usize,
    /// Of those, how many came from `/memreserve/` (the first ones).
    pub nr_memreserve: usize,
    /// The device tree blob itself.
    pub blob: Range,
    /// The first GICv3 redistributor (the second `reg` of the `arm,gic-v3` node).
    pub gicr_base: Option<u64>,
    /// The GICv3 distributor (the first `reg` of the `arm,gic-v3` node).
    pub gicd_base: Option<u64>,
    /// `/chosen/linux,initrd-start` .. `linux,initrd-end`: what QEMU's `-initrd` loaded (the
    /// Linux guest's bundle).
    pub initrd: Option<Range>,
    fdt: Fdt<'static>,
}

impl DeviceTree {
    /// Whether some node is `compatible` with `c`.
    pub fn has_compatible(&self, c: &str) -> bool {
        self.fdt.find_compatible(&[c]).is_some()
    }

    /// Parses the DTB at `dtb`; `None` if it is not a valid device tree or names no PL011.
    pub fn probe(dtb: usize) -> Option<Self> {
        // SAFETY: EL2 passes on the device-tree address QEMU gave it in x0; the blob stays in
        // place and unmodified.
        let fdt: Fdt<'static> = unsafe { pkvm_rt::dt::from_addr(dtb) }?;
        let uart_base = pkvm_rt::dt::console_pl011(&fdt)?;
        let psci_conduit = match pkvm_rt::dt::psci_method(&fdt) {
            Some("hvc") => Conduit::Hvc,
            _ => Conduit::Smc,
        };

        let bootargs = fdt
            .find_node("/chosen")
            .and_then(|n| n.property("bootargs"))
            .map(|p| p.value.split(|&b| b == 0).next().unwrap_or(&[]))
            .and_then(|b| core::str::from_utf8(b).ok())
            .unwrap_or("");

        let mut ram = RangeSet::new();
        for (base, size) in pkvm_rt::dt::memory_regions(&fdt) {
            ram.add(Range::sized(base, size)).ok()?;
        }

        let mut reserved = [Range::default(); MAX_RESERVED];
        let mut nr_reserved = 0;
        for m in fdt.memory_reservations() {
            *reserved.get_mut(nr_reserved)? = Range::sized(m.address() as u64, m.size() as u64);
            nr_reserved += 1;
        }
        let nr_memreserve = nr_reserved;
        if let Some(rm) = fdt.find_node("/reserved-memory") {
            for r in rm.children().flat_map(|n| n.reg().into_iter().flatten()) {
                *reserved.get_mut(nr_reserved)? =
                    Range::sized(r.starting_address as u64, r.size.unwrap_or(0) as u64);
                nr_reserved += 1;
            }
        }

        let cell = |name: &str| {
            let v = fdt.find_node("/chosen")?.property(name)?.value;
            match v.len() {
                4 => Some(u64::from(u32::from_be_bytes(v.try_into().ok()?))),
                8 => Some(u64::from_be_bytes(v.try_into().ok()?)),
                _ => None,
            }
        };
        let initrd = match (cell("linux,initrd-start"), cell("linux,initrd-end")) {
            (Some(s), Some(e)) if s < e => Some(Range::new(s, e)),
            _ => None,
        };

        Some(DeviceTree {
            initrd,
            gicd_base: fdt
                .find_compatible(&["arm,gic-v3"])
                .and_then(|n| n.reg()?.next())
                .map(|r| r.starting_address as u64),
            gicr_base: fdt
                .find_compatible(&["arm,gic-v3"])
                .and_then(|n| n.reg()?.nth(1))
                .map(|r| r.starting_address as u64),
            fdt,
            uart_base,
            psci_conduit,
            bootargs,
            cpus: fdt.cpus().count(),
            ram_bytes: ram.total(),
            ram,
            reserved,
            nr_reserved,
            nr_memreserve,
            blob: Range::sized(dtb as u64, fdt.total_size() as u64),
        })
    }
}

impl DeviceTree {
    /// The reserved ranges (`/memreserve/` first).
    pub fn reserved(&self) -> &[Range] {
        &self.reserved[..self.nr_reserved]
    }
}
