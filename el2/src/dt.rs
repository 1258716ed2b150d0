//! What EL2 learns from the device tree QEMU passes in `x0` (parsed with the `fdt` crate).

use fdt::Fdt;
use pkvm_rt::dt::is_compatible;

/// Maximum number of RAM regions EL2 keeps.
pub const MAX_MEMORY_REGIONS: usize = 8;

/// One RAM region `[base, base + size)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryRegion {
    /// Physical base.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Most GIC redistributor regions, ITS nodes and other masters EL2 records.
pub const MAX_DEVICE_NODES: usize = 4;

/// A device register range from the device tree: `[base, base + size)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reg {
    /// Physical base.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The GICv3 and the devices around it that can write memory behind stage-2.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gic {
    /// Redistributor regions (`reg` entries after the distributor's).
    pub redist: [Reg; MAX_DEVICE_NODES],
    /// How many entries of [`Gic::redist`] are valid.
    pub nr_redist: usize,
    /// Distance between two redistributors from the device tree (`redistributor-stride`), if
    /// it says; otherwise `GICR_TYPER.VLPIS` decides (EL2 reads it at boot).
    pub redist_stride: Option<u64>,
    /// The ITS frames (`arm,gic-v3-its` nodes).
    pub its: [Reg; MAX_DEVICE_NODES],
    /// How many entries of [`Gic::its`] are valid.
    pub nr_its: usize,
}

/// The platform as described by the device tree.
#[derive(Debug)]
pub struct Platform {
    /// DTB physical address and total size.
    pub dtb: (u64, u64),
    /// Machine model (`/model`).
    pub model: &'static str,
    /// Base of the console PL011.
    pub uart_base: usize,
    /// Number of CPU nodes under `/cpus`.
    pub cpus: usize,
    /// RAM regions, from the `/memory` nodes.
    pub memory: [MemoryRegion; MAX_MEMORY_REGIONS],
    /// How many entries of [`Platform::memory`] are valid.
    pub nr_memory: usize,
    /// Whether `/psci` says `method = "smc"`.
    pub psci_conduit_is_smc: bool,
    /// `[start, end)` of the initrd, from `/chosen` `linux,initrd-start/end`.
    pub initrd: Option<(u64, u64)>,
    /// The GICv3 (`arm,gic-v3`), if any.
    pub gic: Option<Gic>,
    /// QEMU's fw_cfg (`qemu,fw-cfg-mmio`), whose DMA interface writes memory.
    pub fw_cfg: Option<Reg>,
    /// Other devices that write memory and that EL2 hides (an SMMUv3, `arm,smmu-v3`: its
    /// queues and tables live in memory).
    pub hidden: [Reg; MAX_DEVICE_NODES],
    /// How many entries of [`Platform::hidden`] are valid.
    pub nr_hidden: usize,
}

impl Platform {
    /// Parses the DTB at `dtb`; `None` if it is not a valid device tree or lacks a console.
    pub fn probe(dtb: usize) -> Option<Self> {
        // SAFETY: QEMU's boot protocol passes the address of a valid flattened device tree in
        // x0; it stays in place and unmodified while EL2 runs.
        let fdt: Fdt<'static> = unsafe { pkvm_rt::dt::from_addr(dtb) }?;
        let uart_base = pkvm_rt::dt::console_pl011(&fdt)?;

        let mut memory = [MemoryRegion::default(); MAX_MEMORY_REGIONS];
        let mut nr_memory = 0;
        for (base, size) in pkvm_rt::dt::memory_regions(&fdt).take(MAX_MEMORY_REGIONS) {
            memory[nr_memory] = MemoryRegion { base, size };
            nr_memory += 1;
        }
        let psci_conduit_is_smc = pkvm_rt::dt::psci_method(&fdt) == Some("smc");

        let chosen_u64 = |name: &str| {
            let p = fdt.find_node("/chosen")?.property(name)?;
            match p.value.len() {
                4 => Some(u64::from(u32::from_be_bytes(p.value.try_into().ok()?))),
                8 => Some(u64::from_be_bytes(p.value.try_into().ok()?)),
                _ => None,
            }
        };
        let initrd = chosen_u64("linux,initrd-start")
            .zip(chosen_u64("linux,initrd-end"))
            .filter(|(s, e)| e > s);

        let regs = |node: fdt::node::FdtNode<'_, '_>, out: &mut [Reg]| -> usize {
            let mut n = 0;
            for r in node.reg().into_iter().flatten() {
                if n < out.len() {
                    out[n] = Reg {
                        base: r.starting_address as u64,
                        size: r.size.unwrap_or(0) as u64,
                    };
                    n += 1;
                }
            }
            n
        };
        let gic = fdt.find_compatible(&["arm,gic-v3"]).map(|node| {
            let mut all = [Reg::default(); MAX_DEVICE_NODES + 1];
            let n = regs(node, &mut all);
            let mut g = Gic {
                redist_stride: node
                    .property("redistributor-stride")
                    .and_then(|p| p.as_usize())
                    .map(|v| v as u64)
                    .filter(|&v| v >= 0x2_0000 && v.is_multiple_of(0x1_0000)),
                ..Gic::default()
            };
            for (d, r) in g.redist.iter_mut().zip(all.iter().take(n).skip(1)) {
                *d = *r;
                g.nr_redist += 1;
            }
            for its in fdt
                .all_nodes()
                .filter(|n| is_compatible(n, "arm,gic-v3-its"))
            {
                let mut one = [Reg::default(); 1];
                if regs(its, &mut one) == 1 && g.nr_its < MAX_DEVICE_NODES {
                    g.its[g.nr_its] = one[0];
                    g.nr_its += 1;
                }
            }
            g
        });
        let fw_cfg = fdt.find_compatible(&["qemu,fw-cfg-mmio"]).and_then(|node| {
            let mut one = [Reg::default(); 1];
            (regs(node, &mut one) == 1).then_some(one[0])
        });

        let mut hidden = [Reg::default(); MAX_DEVICE_NODES];
        let mut nr_hidden = 0;
        for node in fdt
            .all_nodes()
            .filter(|n| is_compatible(n, "arm,smmu-v3"))
        {
            nr_hidden += regs(node, &mut hidden[nr_hidden..]);
        }

        Some(Platform {
            gic,
            fw_cfg,
            hidden,
            nr_hidden,
            dtb: (dtb as u64, fdt.total_size() as u64),
            initrd,
            model: fdt.root().model(),
            uart_base,
            cpus: fdt.cpus().count(),
            memory,
            nr_memory,
            psci_conduit_is_smc,
        })
    }

    /// The RAM regions.
    pub fn memory(&self) -> &[MemoryRegion] {
        &self.memory[..self.nr_memory]
    }

    /// The RAM region that wholly contains `[base, base + size)`, if any.
    pub fn memory_containing(&self, base: u64, size: u64) -> Option<MemoryRegion> {
        let end = base.checked_add(size)?;
        self.memory()
            .iter()
            .copied()
            .find(|r| base >= r.base && end <= r.base + r.size)
    }

    /// Whether `[base, base + size)` overlaps the DTB.
    pub fn dtb_overlaps(&self, base: u64, size: u64) -> bool {
        let (dtb, dtb_size) = self.dtb;
        base < dtb + dtb_size && dtb < base.saturating_add(size)
    }

    /// Whether `[base, base + size)` overlaps the initrd.
    pub fn initrd_overlaps(&self, base: u64, size: u64) -> bool {
        self.initrd
            .is_some_and(|(s, e)| base < e && s < base.saturating_add(size))
    }

    /// What EL2 must not place anything over: the boot device tree and the initrd (empty
    /// when there is none), as `[start, end)` ranges.
    pub fn firmware_ranges(&self) -> [(u64, u64); 2] {
        let (dtb, dtb_size) = self.dtb;
        [(dtb, dtb + dtb_size), self.initrd.unwrap_or((0, 0))]
    }

    /// Prints what EL2 found.
    pub fn print_banner(&self) {
        println!("  machine: {}", self.model);
        println!("  DTB:     {:#x} ({} bytes)", self.dtb.0, self.dtb.1);
        println!("  console: PL011 at {:#x}", self.uart_base);
        println!("  CPUs:    {}", self.cpus);
        if let Some((s, e)) = self.initrd {
            println!("  initrd:  {s:#x}..{e:#x}");
        }
        if let Some(g) = &self.gic {
            for r in &g.redist[..g.nr_redist] {
                println!(
                    "  GICR:    {:#x} (+{:#x}, stride {})",
                    r.base,
                    r.size,
                    match g.redist_stride {
                        Some(_) => "from the device tree",
                        None => "from GICR_TYPER.VLPIS",
                    }
                );
            }
            for r in &g.its[..g.nr_its] {
                println!(
                    "  ITS:     {:#x} (+{:#x}): hidden from the host",
                    r.base, r.size
                );
            }
        }
        if let Some(r) = self.fw_cfg {
            println!(
                "  fw_cfg:  {:#x} (+{:#x}): hidden from the host",
                r.base, r.size
            );
        }
        for r in self.memory() {
            println!(
                "  memory:  {:#x}..{:#x} ({} MiB)",
                r.base,
                r.base + r.size,
                r.size >> 20
            );
        }
    }
}
