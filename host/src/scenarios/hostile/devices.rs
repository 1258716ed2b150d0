//! The devices that write memory behind stage-2: the ITS and fw_cfg (hidden: gone from the
//! device tree, their registers abort), and the GIC redistributors' LPI tables (emulated: LPIs
//! hidden, `EnableLPIs` held at 0, table bases in EL2's memory refused).

use super::stat;
use crate::checks::Checks;
use crate::env::Env;
use crate::fault::{self, probe_read, probe_read32, probe_write, probe_write32};
use pkvm_abi::Stat;

/// QEMU `virt`'s GICv3 ITS and fw_cfg (the host no longer finds them in its device tree).
const VIRT_ITS: u64 = 0x0808_0000;
const VIRT_FW_CFG: u64 = 0x0902_0000;

/// The devices that write memory behind stage-2.
pub fn run(c: &mut Checks, env: &Env) {
    let Some(dt) = crate::dt::DeviceTree::probe(env.dtb.start as usize) else {
        c.check("devices: the device tree parses", false, format_args!(""));
        return;
    };
    c.check(
        "the host's device tree has no ITS and no fw_cfg node",
        !dt.has_compatible("arm,gic-v3-its") && !dt.has_compatible("qemu,fw-cfg-mmio"),
        format_args!("GIC redistributors at {:x?}", dt.gicr_base),
    );
    // An instruction fetch from MMIO (stage-1 lets it, the host stage-2 maps MMIO
    // execute-never): an injected instruction abort, not a fault the host retries forever.
    // SAFETY: the fetch is refused at stage 2 (checked); nothing runs there.
    let x = unsafe { fault::probe_exec_at(crate::mmu::EXEC_MMIO_PAGE) };
    c.check(
        "instruction fetch from MMIO: instruction abort injected (no livelock)",
        x.is_err_and(|a| a.is_injected_instruction_abort()),
        format_args!("{x:x?}"),
    );
    // The attack of the review: program the ITS device table into EL2's memory, enable it.
    let carveout_page = env.ram.ranges().last().map_or(0, |r| r.end - 4096);
    for (name, pa, v) in [
        (
            "GITS_BASER0 <- EL2's last page",
            VIRT_ITS + 0x100,
            carveout_page | (1 << 63),
        ),
        ("GITS_CTLR <- Enabled", VIRT_ITS, 1),
        (
            "fw_cfg DMA address <- EL2's last page",
            VIRT_FW_CFG + 0x10,
            carveout_page.swap_bytes(),
        ),
    ] {
        // SAFETY: a store to MMIO the host may not reach; it aborts (checked).
        let w = unsafe { probe_write(pa, v) };
        // SAFETY: as above, a load.
        let r = unsafe { probe_read(pa) };
        c.check(
            "hidden device: host write and read abort (injected)",
            w.is_err_and(|a| a.is_injected_data_abort())
                && r.is_err_and(|a| a.is_injected_data_abort()),
            format_args!("{name}: write {w:x?}, read {r:x?}"),
        );
    }

    let Some(first) = dt.gicr_base else {
        println!("hostile: no GICv3 redistributors: skipping the LPI checks");
        return;
    };
    let refused0 = stat(Stat::RefusedDeviceWrites);
    let emulated0 = stat(Stat::EmulatedMmio);
    // Every redistributor, as the GIC architecture lays them out (Linux's walk): the review's
    // exploit used a frame EL2 had not found (GICv4's 256 KiB stride).
    let mut frame = first;
    let mut frames = 0u64;
    let mut bad = 0u64;
    loop {
        // SAFETY: GICR_TYPER, a read-only 64-bit register (EL2 emulates it).
        let Ok(typer) = (unsafe { probe_read(frame + 0x8) }) else {
            bad += 1;
            break;
        };
        frames += 1;
        bad += u64::from(!redistributor_attack(c, env, frame, typer));
        if typer & (1 << 1) != 0 {
            // GICv4: the VLPI frame (GICR_VPROPBASER/VPENDBASER name memory) is hidden.
            // SAFETY: a store to a frame the host may not reach; it aborts (checked).
            let w = unsafe { probe_write(frame + 0x2_0000 + 0x70, carveout_page) };
            bad += u64::from(!w.is_err_and(|a| a.is_injected_data_abort()));
        }
        if typer & (1 << 4) != 0 || frames == 64 {
            break;
        }
        frame += if typer & (1 << 1) != 0 {
            0x4_0000
        } else {
            0x2_0000
        };
    }
    c.check(
        "every redistributor (one per CPU) found and defended",
        bad == 0 && frames == dt.cpus as u64,
        format_args!("{frames} redistributors for {} CPUs, {bad} failed", dt.cpus),
    );
    c.eq(
        "EL2 counted the refused table bases (two per redistributor)",
        stat(Stat::RefusedDeviceWrites) - refused0,
        2 * frames,
    );
    c.check(
        "EL2 emulated the redistributor accesses",
        stat(Stat::EmulatedMmio) - emulated0 >= 9 * frames,
        format_args!("{}", stat(Stat::EmulatedMmio) - emulated0),
    );
}

/// The LPI attack on one redistributor's `RD_base` frame at `rd`: LPI support must be hidden,
/// `EnableLPIs` must not stick, table bases in EL2's memory must be refused and one in the
/// host's RAM accepted. Returns whether every check passed.
fn redistributor_attack(c: &mut Checks, env: &Env, rd: u64, typer: u64) -> bool {
    let carveout_page = env.ram.ranges().last().map_or(0, |r| r.end - 4096);
    let mut ok = c.check(
        "GICR_TYPER: LPIs hidden (PLPIS = DirectLPI = 0)",
        typer & 0b1001 == 0,
        format_args!("{rd:#x}: {typer:#x}"),
    );
    // SAFETY: GICR_CTLR; LPIs are never enabled (EL2 holds EnableLPIs at 0).
    let w = unsafe { probe_write32(rd, 1) };
    // SAFETY: as above.
    let ctlr = unsafe { probe_read32(rd) };
    ok &= c.check(
        "GICR_CTLR.EnableLPIs stays 0 after the host sets it",
        w.is_ok() && ctlr.is_ok_and(|v| v & 1 == 0),
        format_args!("{rd:#x}: write {w:x?}, read {ctlr:x?}"),
    );
    for (name, off, v) in [
        (
            "GICR_PROPBASER <- EL2's memory",
            0x70u64,
            carveout_page | 15,
        ),
        (
            "GICR_PENDBASER <- EL2's memory",
            0x78,
            carveout_page & !0xffff,
        ),
    ] {
        // SAFETY: the redistributor's table-base registers; EL2 validates them.
        let before = unsafe { probe_read(rd + off) };
        // SAFETY: as above.
        let w = unsafe { probe_write(rd + off, v) };
        // SAFETY: as above.
        let after = unsafe { probe_read(rd + off) };
        ok &= c.check(
            "LPI table base in EL2's memory refused (register unchanged)",
            w.is_ok() && before.is_ok() && after == before && after != Ok(v),
            format_args!("{rd:#x} {name}: before {before:x?}, after {after:x?}"),
        );
    }
    // A table in the host's own RAM is accepted (EnableLPIs stays 0 regardless), then the
    // register goes back to 0 (no table: fewer than 14 ID bits).
    let own = env.image.sandbox.start;
    // SAFETY: as above; the value names a page of the host's image, never used as a table.
    let r = unsafe { probe_write(rd + 0x70, own | 13).and_then(|()| probe_read(rd + 0x70)) };
    // SAFETY: as above.
    let back = unsafe { probe_write(rd + 0x70, 0).and_then(|()| probe_read(rd + 0x70)) };
    ok &= c.check(
        "LPI table base in the host's RAM accepted (the emulation forwards legitimate writes)",
        r == Ok(own | 13) && back == Ok(0),
        format_args!("{rd:#x}: read back {r:x?}, then {back:x?}"),
    );
    ok
}
