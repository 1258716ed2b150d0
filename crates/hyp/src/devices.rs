//! Devices that can read or write memory behind stage-2, and how EL2 keeps them from the host.
//!
//! A device that masters memory sees physical addresses: whatever the host programs it with,
//! it reaches without going through the host stage-2. On QEMU `virt` two such devices are
//! always present and are in scope (docs/SECURITY.md):
//!
//! - the **GICv3 ITS** (device, collection and command tables, ITTs) and QEMU's **fw_cfg** DMA
//!   interface: EL2 **hides** them ([`DeviceKind::Hidden`]): their frames are annotated as
//!   EL2's in the host stage-2, so the lazy fault path never maps them and every host access
//!   gets an injected abort; EL2 also removes their device-tree nodes for the host;
//! - the **redistributors' LPI tables** (`GICR_PROPBASER`, `GICR_PENDBASER`): the host needs
//!   its redistributors, so EL2 **traps and emulates** each `RD_base` frame
//!   ([`DeviceKind::GicrRdBase`]): host accesses fault to EL2, which forwards the harmless
//!   registers, hides LPI support (`GICR_TYPER.PLPIS`, `DirectLPI`; `VLPIS` stays, it tells
//!   the host the redistributor stride, and GICv4's `VLPI_base` frames are hidden), holds
//!   `GICR_CTLR.EnableLPIs` at 0 — so the redistributor never touches its tables — and accepts
//!   a table base only if the whole table lies in RAM the host owns. The `SGI_base` frames
//!   (SGI/PPI configuration, no memory access) stay identity-mapped for the host.
//!
//! Everything here is portable: the simulator runs it against a register file
//! ([`crate::platform::Platform::mmio_read`]), EL2 against the real GIC.

use pkvm_abi::{Error, PAGE_SIZE};

use pkvm_arch::addr::Ipa;

use crate::hyp::Hyp;
use crate::platform::Platform;
use crate::sync::Ordering;
use crate::vmemmap::PageState;

/// Most device ranges EL2 keeps from the host (two per redistributor with GICv4 for 8 CPUs,
/// the ITS, fw_cfg, an SMMU, and room for more).
pub const MAX_DEVICE_RANGES: usize = 32;
/// Size of a redistributor's `RD_base` frame.
pub const GICR_RD_FRAME: u64 = 0x1_0000;

/// What a redistributor's `GICR_TYPER` says about its frames, for the walk over a
/// redistributor region EL2 does at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedistFrames {
    /// The `VLPI_base` frame and the reserved frame after it (with virtual LPIs, GICv4), as an
    /// offset from `RD_base` and a size: memory the GIC uses is named there, so the host
    /// must not reach it.
    pub hidden: Option<(u64, u64)>,
    /// `GICR_TYPER.Last`: no redistributor follows in its region.
    pub last: bool,
    /// From this redistributor's `RD_base` to the next one's: `stride` if the device tree
    /// gives one, else 256 KiB with virtual LPIs and 128 KiB without.
    pub next: u64,
}

impl RedistFrames {
    /// The frames of the redistributor whose `GICR_TYPER` reads `typer`.
    #[must_use]
    pub fn of(typer: u64, stride: Option<u64>) -> Self {
        let vlpis = typer & gicr::TYPER_VLPIS != 0;
        RedistFrames {
            hidden: vlpis.then_some((2 * GICR_RD_FRAME, 2 * GICR_RD_FRAME)),
            last: typer & gicr::TYPER_LAST != 0,
            next: stride.unwrap_or(if vlpis { 4 } else { 2 } * GICR_RD_FRAME),
        }
    }
}

/// How EL2 treats a device's MMIO range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// Invisible to the host: every access gets an injected abort.
    Hidden,
    /// A GICv3 redistributor's `RD_base` frame: trapped and emulated (see the module docs).
    GicrRdBase,
}

/// One MMIO range EL2 keeps from the host: `[start, end)`, page aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// What EL2 does with host accesses.
    pub kind: DeviceKind,
}

impl DeviceRange {
    /// Whether `pa` lies in the range.
    #[must_use]
    pub const fn contains(&self, pa: u64) -> bool {
        pa >= self.start && pa < self.end
    }
}

/// One host access to an emulated device register, decoded from the trap's syndrome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmioAccess {
    /// A store (else a load).
    pub write: bool,
    /// Access size in bytes (1, 2, 4 or 8).
    pub size: u8,
    /// The value stored (its low `size` bytes), for a store.
    pub value: u64,
}

/// Offsets and fields of the `RD_base` frame (GICv3 architecture specification, 12.11).
pub mod gicr {
    /// `GICR_CTLR`: bit 0 `EnableLPIs`, bit 3 `RWP` (read-only).
    pub const CTLR: u64 = 0x0000;
    /// `GICR_IIDR`.
    pub const IIDR: u64 = 0x0004;
    /// `GICR_TYPER` (64 bits; also read as two 32-bit halves).
    pub const TYPER: u64 = 0x0008;
    /// `GICR_STATUSR`.
    pub const STATUSR: u64 = 0x0010;
    /// `GICR_WAKER`.
    pub const WAKER: u64 = 0x0014;
    /// `GICR_MPAMIDR`.
    pub const MPAMIDR: u64 = 0x0018;
    /// `GICR_PARTIDR`.
    pub const PARTIDR: u64 = 0x001c;
    /// `GICR_PROPBASER`: LPI configuration table.
    pub const PROPBASER: u64 = 0x0070;
    /// `GICR_PENDBASER`: LPI pending table.
    pub const PENDBASER: u64 = 0x0078;
    /// `GICR_SYNCR` (bit 0 `Busy`).
    pub const SYNCR: u64 = 0x00c0;
    /// Start of the identification registers (`GICR_PIDR4` ... `GICR_CIDR3`).
    pub const ID_START: u64 = 0xffd0;
    /// `GICR_CTLR.EnableLPIs`.
    pub const CTLR_ENABLE_LPIS: u64 = 1 << 0;
    /// `GICR_TYPER.PLPIS`: physical LPIs supported.
    pub const TYPER_PLPIS: u64 = 1 << 0;
    /// `GICR_TYPER.VLPIS`: virtual LPIs supported.
    pub const TYPER_VLPIS: u64 = 1 << 1;
    /// `GICR_TYPER.DirectLPI`: `GICR_SETLPIR` and friends supported.
    pub const TYPER_DIRECT_LPI: u64 = 1 << 3;
    /// `GICR_TYPER.Last`: the last redistributor of its region.
    pub const TYPER_LAST: u64 = 1 << 4;
    /// `GICR_PROPBASER.IDbits` (bits 4:0): number of LPI ID bits - 1.
    pub const PROPBASER_IDBITS: u64 = 0x1f;
    /// Physical address field of `GICR_PROPBASER` (bits 51:12).
    pub const PROPBASER_PA: u64 = ((1 << 52) - 1) & !0xfff;
    /// Physical address field of `GICR_PENDBASER` (bits 51:16).
    pub const PENDBASER_PA: u64 = ((1 << 52) - 1) & !0xffff;
    /// Smallest LPI interrupt ID.
    pub const FIRST_LPI: u64 = 8192;
}

/// What EL2 does with one access to an `RD_base` register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Read the register and hand the host `value & mask`.
    Read { mask: u64 },
    /// Write `value` to the register.
    Write(u64),
    /// Validate a table base, write it only if valid.
    TableBase,
    /// Read as zero, or a write that is dropped.
    Ignore,
}

/// The emulation policy of one `RD_base` register access (pure).
fn gicr_policy(offset: u64, acc: &MmioAccess) -> Action {
    use gicr::*;
    // Only naturally aligned 32- and 64-bit accesses reach a register; everything else is
    // reserved (RAZ/WI), as it is on the hardware.
    let ok_size = matches!(acc.size, 4 | 8) && offset.is_multiple_of(u64::from(acc.size));
    if !ok_size {
        return Action::Ignore;
    }
    let is64 = acc.size == 8;
    match (offset, acc.write) {
        (CTLR, false) if !is64 => Action::Read {
            mask: !CTLR_ENABLE_LPIS,
        },
        // LPIs stay off: the redistributor never reads or writes its tables.
        (CTLR, true) if !is64 => Action::Write(acc.value & !CTLR_ENABLE_LPIS),
        (IIDR, false) if !is64 => Action::Read { mask: u64::MAX },
        // VLPIS stays: it gives the redistributor stride (the VLPI frame itself is hidden).
        (TYPER, false) => Action::Read {
            mask: !(TYPER_PLPIS | TYPER_DIRECT_LPI),
        },
        // The upper half of GICR_TYPER (affinity) as a 32-bit read.
        (0x000c, false) if !is64 => Action::Read { mask: u64::MAX },
        (STATUSR | WAKER | MPAMIDR | PARTIDR, false) if !is64 => Action::Read { mask: u64::MAX },
        (STATUSR | WAKER | PARTIDR, true) if !is64 => Action::Write(acc.value),
        // The table bases as whole 64-bit registers only (the 32-bit halves the GIC also
        // accepts are ignored: a base is validated as one value).
        (PROPBASER | PENDBASER, false) if is64 => Action::Read { mask: u64::MAX },
        (PROPBASER | PENDBASER, true) if is64 => Action::TableBase,
        (o, false) if o >= ID_START && !is64 => Action::Read { mask: u64::MAX },
        // GICR_SETLPIR, CLRLPIR, INVLPIR, INVALLR (LPIs are off), SYNCR (never busy), the
        // ID registers (read-only), and everything reserved.
        _ => Action::Ignore,
    }
}

/// Most LPI ID bits EL2 accepts in `GICR_PROPBASER.IDbits + 1`: what a 64 KiB pending table
/// covers (QEMU's GIC and Linux use 16).
pub const MAX_LPI_ID_BITS: u64 = 19;
/// Size of the pending table EL2 validates a `GICR_PENDBASER` for: 64 KiB, one bit per ID of
/// [`MAX_LPI_ID_BITS`].
pub const PENDING_TABLE_BYTES: u64 = (1 << MAX_LPI_ID_BITS) / 8;

/// The LPI table a `GICR_PROPBASER`/`GICR_PENDBASER` value describes, `(base, size)`, or
/// `None` for a configuration EL2 refuses (more LPI ID bits than [`MAX_LPI_ID_BITS`]). A
/// configuration table with fewer than 14 ID bits has no LPI, hence no table (size 0).
fn lpi_table(reg: u64, value: u64) -> Option<(u64, u64)> {
    if reg == gicr::PROPBASER {
        let bits = (value & gicr::PROPBASER_IDBITS) + 1;
        if bits > MAX_LPI_ID_BITS {
            return None;
        }
        // One configuration byte per LPI (IDs 8192 and up).
        let size = (1u64 << bits).saturating_sub(gicr::FIRST_LPI);
        Some((value & gicr::PROPBASER_PA, if bits < 14 { 0 } else { size }))
    } else {
        Some((value & gicr::PENDBASER_PA, PENDING_TABLE_BYTES))
    }
}

impl<P: Platform> Hyp<'_, P> {
    /// The device ranges EL2 keeps from the host.
    pub fn devices(&self) -> &[DeviceRange] {
        &self.devices[..self.nr_devices]
    }

    /// The device range holding `pa`, if any.
    pub fn device_at(&self, pa: u64) -> Option<&DeviceRange> {
        self.devices().iter().find(|d| d.contains(pa))
    }

    /// Whether every page of `[start, start + len)` is RAM the host owns (OWNED or
    /// SHARED_OWNED: not donated, not EL2's, not a hole); an empty range is (no table).
    /// Host lock held by the caller.
    fn is_host_ram(&self, start: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        if !self.map.range_is_memory(start, end) {
            return false;
        }
        let first = start & !(PAGE_SIZE - 1);
        (first..end).step_by(PAGE_SIZE as usize).all(|pa| {
            self.vmemmap.page(pa).is_some_and(|p| {
                matches!(p.host_state(), PageState::Owned | PageState::SharedOwned)
            })
        })
    }

    /// Emulates one host access to an emulated device register at `ipa` (the host stage-2
    /// fault path answered [`crate::host_fault::HostFault::Emulate`]). Returns the value a
    /// load gives the host (0 for a store).
    ///
    /// # Errors
    /// `EPERM` if `ipa` is not in an emulated range (the caller injects an abort).
    pub fn host_mmio_access(&self, ipa: Ipa, acc: MmioAccess) -> Result<u64, Error> {
        let ipa = ipa.get();
        let Some(dev) = self.device_at(ipa).copied() else {
            return Err(Error::Perm);
        };
        if dev.kind != DeviceKind::GicrRdBase {
            return Err(Error::Perm);
        }
        self.counters.emulated_mmio.fetch_add(1, Ordering::Relaxed);
        let frame = dev.start + ((ipa - dev.start) & !(GICR_RD_FRAME - 1));
        let offset = ipa - frame;
        Ok(match gicr_policy(offset, &acc) {
            Action::Read { mask } => self.plat.mmio_read(ipa, acc.size) & mask,
            Action::Write(v) => {
                self.plat.mmio_write(ipa, acc.size, v);
                0
            }
            Action::TableBase => {
                let _host = self.host.lock();
                let valid = lpi_table(offset, acc.value)
                    .is_some_and(|(base, len)| self.is_host_ram(base, len));
                if valid {
                    self.plat.mmio_write(ipa, 8, acc.value);
                } else {
                    self.counters
                        .refused_device_writes
                        .fetch_add(1, Ordering::Relaxed);
                }
                0
            }
            Action::Ignore => 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::RedistFrames;

    /// GICv3 (`VLPIS` 0): `RD_base` and `SGI_base`, 128 KiB; GICv4 (`VLPIS`, bit 1): two more
    /// frames, hidden, 256 KiB; `Last` is bit 4; a device-tree stride wins.
    #[test]
    fn redistributor_frames_follow_gicr_typer() {
        let v3 = RedistFrames::of(0x0000_0001_0000_0000, None);
        assert_eq!(
            v3,
            RedistFrames {
                hidden: None,
                last: false,
                next: 0x2_0000
            }
        );
        let v4 = RedistFrames::of(0b10, None);
        assert_eq!(v4.hidden, Some((0x2_0000, 0x2_0000)));
        assert_eq!((v4.last, v4.next), (false, 0x4_0000));
        assert!(RedistFrames::of(0b1_0000, None).last);
        // PLPIS, DirectLPI and the other low bits say nothing about the frames.
        assert_eq!(RedistFrames::of(0b0_1101, None), v3);
        assert_eq!(RedistFrames::of(0b10, Some(0x8_0000)).next, 0x8_0000);
        assert_eq!(RedistFrames::of(0, Some(0x8_0000)).hidden, None);
    }
    use super::*;

    fn rd(offset: u64, size: u8) -> Action {
        gicr_policy(
            offset,
            &MmioAccess {
                write: false,
                size,
                value: 0,
            },
        )
    }

    fn wr(offset: u64, size: u8, value: u64) -> Action {
        gicr_policy(
            offset,
            &MmioAccess {
                write: true,
                size,
                value,
            },
        )
    }

    #[test]
    fn lpis_stay_off_and_hidden() {
        assert_eq!(wr(gicr::CTLR, 4, 0b1001), Action::Write(0b1000));
        assert_eq!(wr(gicr::CTLR, 8, 0b1), Action::Ignore);
        assert_eq!(rd(gicr::CTLR, 8), Action::Ignore);
        assert_eq!(rd(gicr::TYPER, 8), Action::Read { mask: !0b1001 });
        assert_eq!(wr(gicr::PROPBASER, 8, 0x4000_0000), Action::TableBase);
        assert_eq!(wr(gicr::PENDBASER, 8, 0x4000_0000), Action::TableBase);
        // SETLPIR and friends: dropped.
        for off in [0x40, 0x48, 0xa0, 0xb0] {
            assert_eq!(wr(off, 8, 1), Action::Ignore);
        }
        // Odd sizes and misaligned accesses: RAZ/WI.
        assert_eq!(rd(gicr::CTLR, 1), Action::Ignore);
        assert_eq!(wr(gicr::PROPBASER, 4, 0x4000_0000), Action::Ignore);
        assert_eq!(rd(gicr::TYPER + 2, 4), Action::Ignore);
        assert_eq!(rd(0xffe8, 4), Action::Read { mask: u64::MAX });
        assert_eq!(wr(0xffe8, 4, 0), Action::Ignore);
    }

    /// The whole policy, register by register, from the GIC architecture's offsets written as
    /// numbers (not through the constants the policy uses): for each access size and
    /// direction, what EL2 does.
    #[test]
    fn every_register_size_and_direction() {
        const RAW: Action = Action::Read { mask: u64::MAX };
        const IGN: Action = Action::Ignore;
        // (offset, [read 4, read 8, write 4, write 8]); writes store 0x1f.
        let table: [(u64, [Action; 4]); 13] = [
            // GICR_CTLR: EnableLPIs (bit 0) hidden and forced off, 32-bit only.
            (
                0x00,
                [Action::Read { mask: !1 }, IGN, Action::Write(0x1e), IGN],
            ),
            // GICR_IIDR: read-only.
            (0x04, [RAW, IGN, IGN, IGN]),
            // GICR_TYPER: PLPIS (bit 0) and DirectLPI (bit 3) hidden, VLPIS (bit 1) kept.
            (
                0x08,
                [
                    Action::Read { mask: !0b1001 },
                    Action::Read { mask: !0b1001 },
                    IGN,
                    IGN,
                ],
            ),
            // The upper half of GICR_TYPER.
            (0x0c, [RAW, IGN, IGN, IGN]),
            // GICR_STATUSR, GICR_WAKER: read and written as they are, 32-bit only.
            (0x10, [RAW, IGN, Action::Write(0x1f), IGN]),
            (0x14, [RAW, IGN, Action::Write(0x1f), IGN]),
            // GICR_MPAMIDR: read-only.
            (0x18, [RAW, IGN, IGN, IGN]),
            // GICR_PARTIDR.
            (0x1c, [RAW, IGN, Action::Write(0x1f), IGN]),
            // GICR_PROPBASER, GICR_PENDBASER: whole 64-bit registers, writes validated.
            (0x70, [IGN, RAW, IGN, Action::TableBase]),
            (0x78, [IGN, RAW, IGN, Action::TableBase]),
            // GICR_SYNCR: never busy; GICR_SETLPIR: dropped (LPIs are off).
            (0xc0, [IGN, IGN, IGN, IGN]),
            (0x40, [IGN, IGN, IGN, IGN]),
            // The identification registers: 32-bit reads only.
            (0xffd0, [RAW, IGN, IGN, IGN]),
        ];
        for (off, want) in table {
            let got = [rd(off, 4), rd(off, 8), wr(off, 4, 0x1f), wr(off, 8, 0x1f)];
            assert_eq!(got, want, "GICR offset {off:#x}");
        }
        // 64-bit accesses to a 32-bit-aligned offset are misaligned: ignored.
        assert_eq!(rd(0x0c, 8), IGN);
        assert_eq!(rd(0x74, 8), IGN);
        // The last ID register, and a reserved offset below them.
        assert_eq!(rd(0xfffc, 4), RAW);
        assert_eq!(rd(0xffcc, 4), IGN);
        // 1- and 2-byte accesses: ignored everywhere.
        for off in [0x00, 0x08, 0x10, 0x70, 0xffd0] {
            for size in [1, 2] {
                assert_eq!(
                    (rd(off, size), wr(off, size, 1)),
                    (IGN, IGN),
                    "{off:#x}/{size}"
                );
            }
        }
    }

    #[test]
    fn table_sizes() {
        // IDbits = 15: 64 Ki IDs, 56 Ki LPI config bytes; the pending table is 64 KiB.
        assert_eq!(
            lpi_table(gicr::PROPBASER, 0x4000_0000 | 15),
            Some((0x4000_0000, 65536 - 8192))
        );
        assert_eq!(
            lpi_table(gicr::PENDBASER, 0x4001_0000 | 0x7),
            Some((0x4001_0000, 0x1_0000))
        );
        // More ID bits than a 64 KiB pending table covers: refused.
        assert_eq!(lpi_table(gicr::PROPBASER, 19), None);
        assert_eq!(lpi_table(gicr::PROPBASER, 31), None);
        assert_eq!(lpi_table(gicr::PROPBASER, 18), Some((0, (1 << 19) - 8192)));
        // Fewer than 14 ID bits: no LPI, no table.
        assert_eq!(lpi_table(gicr::PROPBASER, 12), Some((0, 0)));
    }
}
