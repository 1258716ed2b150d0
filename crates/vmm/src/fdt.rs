//! The guest's device tree, written with `vm-fdt`: what an unmodified arm64 Linux needs to
//! boot in a [`Layout`] — RAM, the vCPUs with PSCI (over `HVC`) as their enable method, the
//! architected timer, the GICv3 (distributor, one redistributor region, maintenance
//! interrupt), the 16550A console (no interrupt: the 8250 driver polls it) and `/chosen`
//! (command line, console, initramfs).

use alloc::string::String;
use alloc::vec::Vec;
use alloc::{format, vec};

use vm_fdt::FdtWriter;

use crate::Error;
use crate::gic::GICD_SIZE;
use crate::image::MAX_DTB;
use crate::layout::{GICD_BASE, Layout, UART_BASE, UART_SIZE};

/// The GIC's phandle (every interrupt's parent).
pub const GIC_PHANDLE: u32 = 1;
/// Interrupt specifier types (first cell).
const PPI: u32 = 1;
/// Level-sensitive, active high.
const LEVEL_HIGH: u32 = 4;
/// The architected timer's PPIs, as device-tree PPI numbers (INTID − 16): secure physical,
/// non-secure physical, virtual (INTID 27, the one a guest uses), hypervisor.
pub const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];
/// The GIC maintenance interrupt's PPI (INTID 25).
pub const MAINTENANCE_PPI: u32 = 9;
/// The UART's input clock (the PC's 1.8432 MHz).
pub const UART_CLOCK: u32 = 1_843_200;

/// What the guest's device tree says beyond the layout.
#[derive(Clone, Copy, Debug)]
pub struct GuestFdt<'a> {
    /// The VM's shape.
    pub layout: &'a Layout,
    /// The kernel command line (`/chosen/bootargs`).
    pub bootargs: &'a str,
    /// The initramfs, `(start, end)` in guest RAM.
    pub initrd: Option<(u64, u64)>,
}

/// The UART node's path (`/chosen/stdout-path`).
#[must_use]
pub fn uart_path() -> String {
    format!("/uart@{UART_BASE:x}")
}

fn fdt_err(_: vm_fdt::Error) -> Error {
    Error::Fdt
}

impl GuestFdt<'_> {
    /// The device tree blob.
    ///
    /// # Errors
    /// [`Error::TooBig`] if the blob exceeds [`MAX_DTB`] (a command line of megabytes);
    /// [`Error::Fdt`] if the writer refuses a node (a bug: every value is validated).
    pub fn build(&self) -> Result<Vec<u8>, Error> {
        let l = self.layout;
        let mut f = FdtWriter::new().map_err(fdt_err)?;
        let root = f.begin_node("").map_err(fdt_err)?;
        f.property_string("compatible", "linux,dummy-virt")
            .map_err(fdt_err)?;
        f.property_u32("#address-cells", 2).map_err(fdt_err)?;
        f.property_u32("#size-cells", 2).map_err(fdt_err)?;
        f.property_u32("interrupt-parent", GIC_PHANDLE)
            .map_err(fdt_err)?;

        let chosen = f.begin_node("chosen").map_err(fdt_err)?;
        f.property_string("bootargs", self.bootargs)
            .map_err(fdt_err)?;
        f.property_string("stdout-path", &uart_path())
            .map_err(fdt_err)?;
        if let Some((start, end)) = self.initrd {
            f.property_u64("linux,initrd-start", start)
                .map_err(fdt_err)?;
            f.property_u64("linux,initrd-end", end).map_err(fdt_err)?;
        }
        f.end_node(chosen).map_err(fdt_err)?;

        let (ram, ram_size) = l.ram();
        let mem = f.begin_node(&format!("memory@{ram:x}")).map_err(fdt_err)?;
        f.property_string("device_type", "memory")
            .map_err(fdt_err)?;
        f.property_array_u64("reg", &[ram, ram_size])
            .map_err(fdt_err)?;
        f.end_node(mem).map_err(fdt_err)?;

        let cpus = f.begin_node("cpus").map_err(fdt_err)?;
        f.property_u32("#address-cells", 1).map_err(fdt_err)?;
        f.property_u32("#size-cells", 0).map_err(fdt_err)?;
        for i in 0..l.nr_vcpus() {
            let cpu = f.begin_node(&format!("cpu@{i:x}")).map_err(fdt_err)?;
            f.property_string("device_type", "cpu").map_err(fdt_err)?;
            f.property_string("compatible", "arm,arm-v8")
                .map_err(fdt_err)?;
            f.property_string("enable-method", "psci")
                .map_err(fdt_err)?;
            // MPIDR affinity: Aff0 = the vCPU's index.
            f.property_u32("reg", i as u32).map_err(fdt_err)?;
            f.end_node(cpu).map_err(fdt_err)?;
        }
        f.end_node(cpus).map_err(fdt_err)?;

        let psci = f.begin_node("psci").map_err(fdt_err)?;
        f.property_string_list(
            "compatible",
            vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()],
        )
        .map_err(fdt_err)?;
        f.property_string("method", "hvc").map_err(fdt_err)?;
        f.end_node(psci).map_err(fdt_err)?;

        let (gicr, gicr_size) = l.gicr();
        let gic = f
            .begin_node(&format!("intc@{GICD_BASE:x}"))
            .map_err(fdt_err)?;
        f.property_string("compatible", "arm,gic-v3")
            .map_err(fdt_err)?;
        f.property_null("interrupt-controller").map_err(fdt_err)?;
        f.property_u32("#interrupt-cells", 3).map_err(fdt_err)?;
        f.property_u32("#address-cells", 2).map_err(fdt_err)?;
        f.property_u32("#size-cells", 2).map_err(fdt_err)?;
        f.property_null("ranges").map_err(fdt_err)?;
        f.property_array_u64("reg", &[GICD_BASE, GICD_SIZE, gicr, gicr_size])
            .map_err(fdt_err)?;
        f.property_array_u32("interrupts", &[PPI, MAINTENANCE_PPI, LEVEL_HIGH])
            .map_err(fdt_err)?;
        f.property_phandle(GIC_PHANDLE).map_err(fdt_err)?;
        f.end_node(gic).map_err(fdt_err)?;

        let timer = f.begin_node("timer").map_err(fdt_err)?;
        f.property_string("compatible", "arm,armv8-timer")
            .map_err(fdt_err)?;
        let irqs: Vec<u32> = TIMER_PPIS
            .iter()
            .flat_map(|&p| [PPI, p, LEVEL_HIGH])
            .collect();
        f.property_array_u32("interrupts", &irqs).map_err(fdt_err)?;
        f.property_null("always-on").map_err(fdt_err)?;
        f.end_node(timer).map_err(fdt_err)?;

        let uart = f
            .begin_node(&format!("uart@{UART_BASE:x}"))
            .map_err(fdt_err)?;
        f.property_string("compatible", "ns16550a")
            .map_err(fdt_err)?;
        f.property_array_u64("reg", &[UART_BASE, UART_SIZE])
            .map_err(fdt_err)?;
        f.property_u32("clock-frequency", UART_CLOCK)
            .map_err(fdt_err)?;
        f.end_node(uart).map_err(fdt_err)?;

        f.end_node(root).map_err(fdt_err)?;
        let blob = f.finish().map_err(fdt_err)?;
        if blob.len() as u64 > MAX_DTB {
            return Err(Error::TooBig);
        }
        Ok(blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gic::GICR_FRAME_SIZE;
    use crate::layout::{GICR_BASE, RAM_BASE};

    fn cells(p: &[u8]) -> Vec<u32> {
        p.chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn regs(p: &[u8]) -> Vec<u64> {
        p.chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn the_tree_describes_the_layout() {
        let l = Layout::new(2, 256 << 20).unwrap();
        let blob = GuestFdt {
            layout: &l,
            bootargs: "console=ttyS0 earlycon rdinit=/init",
            initrd: Some((0x8f00_0000, 0x8f12_3456)),
        }
        .build()
        .unwrap();
        let t = fdt::Fdt::new(&blob).unwrap();
        let chosen = t.find_node("/chosen").unwrap();
        let prop = |n: &fdt::node::FdtNode<'_, '_>, p: &str| n.property(p).unwrap().value.to_vec();
        assert_eq!(
            chosen.property("bootargs").unwrap().as_str(),
            Some("console=ttyS0 earlycon rdinit=/init")
        );
        assert_eq!(
            chosen.property("stdout-path").unwrap().as_str(),
            Some("/uart@9000000")
        );
        assert_eq!(regs(&prop(&chosen, "linux,initrd-start")), [0x8f00_0000]);
        assert_eq!(regs(&prop(&chosen, "linux,initrd-end")), [0x8f12_3456]);

        let mem = t.find_node("/memory@80000000").unwrap();
        assert_eq!(regs(&prop(&mem, "reg")), [RAM_BASE, 256 << 20]);

        let cpus: Vec<_> = t.find_node("/cpus").unwrap().children().collect();
        assert_eq!(cpus.len(), 2);
        for (i, c) in cpus.iter().enumerate() {
            assert_eq!(c.name, format!("cpu@{i:x}"));
            assert_eq!(cells(&prop(c, "reg")), [i as u32]);
            assert_eq!(c.property("enable-method").unwrap().as_str(), Some("psci"));
        }
        let psci = t.find_node("/psci").unwrap();
        assert_eq!(psci.property("method").unwrap().as_str(), Some("hvc"));

        let gic = t.find_node("/intc@8000000").unwrap();
        assert_eq!(
            regs(&prop(&gic, "reg")),
            [GICD_BASE, GICD_SIZE, GICR_BASE, 2 * GICR_FRAME_SIZE]
        );
        assert!(gic.property("interrupt-controller").is_some());
        assert_eq!(cells(&prop(&gic, "phandle")), [GIC_PHANDLE]);
        let root = t.find_node("/").unwrap();
        assert_eq!(cells(&prop(&root, "interrupt-parent")), [GIC_PHANDLE]);

        let timer = t.find_node("/timer").unwrap();
        // The virtual timer is INTID 27: PPI 11.
        assert_eq!(cells(&prop(&timer, "interrupts"))[6..9], [1, 11, 4]);

        let uart = t.find_node("/uart@9000000").unwrap();
        assert_eq!(uart.compatible().unwrap().first(), "ns16550a");
        assert_eq!(regs(&prop(&uart, "reg")), [UART_BASE, UART_SIZE]);
        assert!(uart.property("interrupts").is_none(), "polled");
    }

    #[test]
    fn no_initrd_no_initrd_properties_and_a_huge_command_line_is_refused() {
        let l = Layout::new(1, 64 << 20).unwrap();
        let blob = GuestFdt {
            layout: &l,
            bootargs: "",
            initrd: None,
        }
        .build()
        .unwrap();
        let t = fdt::Fdt::new(&blob).unwrap();
        assert!(
            t.find_node("/chosen")
                .unwrap()
                .property("linux,initrd-start")
                .is_none()
        );
        assert_eq!(t.find_node("/cpus").unwrap().children().count(), 1);
        let long = "x".repeat(MAX_DTB as usize);
        assert_eq!(
            GuestFdt {
                layout: &l,
                bootargs: &long,
                initrd: None
            }
            .build(),
            Err(Error::TooBig)
        );
    }
}
