//! What the host reads from the device tree (with the `fdt` crate).

use crate::psci::Conduit;
use fdt::Fdt;

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
}

impl DeviceTree {
    /// Parses the DTB at `dtb`; `None` if it is not a valid device tree or names no PL011.
    pub fn probe(dtb: usize) -> Option<Self> {
        if dtb == 0 || !dtb.is_multiple_of(8) {
            return None;
        }
        // SAFETY: EL2 passes on the device-tree address QEMU gave it in x0; the blob stays in
        // place and unmodified. `from_ptr` reads the header to learn the size first.
        let fdt: Fdt<'static> = unsafe { Fdt::from_ptr(dtb as *const u8) }.ok()?;

        let uart = fdt
            .chosen()
            .stdout()
            .filter(|n| {
                n.compatible()
                    .is_some_and(|c| c.all().any(|s| s == "arm,pl011"))
            })
            .or_else(|| fdt.find_compatible(&["arm,pl011"]))?;
        let uart_base = uart.reg()?.next()?.starting_address as usize;

        let psci_conduit = match fdt
            .find_node("/psci")
            .and_then(|n| n.property("method"))
            .and_then(|p| p.as_str())
        {
            Some("hvc") => Conduit::Hvc,
            _ => Conduit::Smc,
        };

        let bootargs = fdt
            .find_node("/chosen")
            .and_then(|n| n.property("bootargs"))
            .map(|p| p.value.split(|&b| b == 0).next().unwrap_or(&[]))
            .and_then(|b| core::str::from_utf8(b).ok())
            .unwrap_or("");

        let ram_bytes = fdt
            .all_nodes()
            .filter(|n| {
                n.property("device_type")
                    .and_then(|p| p.as_str())
                    .is_some_and(|s| s == "memory")
            })
            .flat_map(|n| n.reg().into_iter().flatten())
            .map(|r| r.size.unwrap_or(0) as u64)
            .sum();

        Some(DeviceTree {
            uart_base,
            psci_conduit,
            bootargs,
            cpus: fdt.cpus().count(),
            ram_bytes,
        })
    }
}
