//! The virtual GIC's CPU interface, as the host's VMM hands it over in
//! [`pkvm_abi::guest::VgicState`]: read once per entry and validated here, loaded and saved by
//! the world switch, published back to the host's structure at every exit.
//!
//! EL2 owns none of the virtual GIC's policy (which interrupt, when): the host's VMM emulates
//! the distributor and decides what goes in the list registers, as with pKVM. What EL2 refuses
//! is what could reach beyond the guest: a list register with `HW` set would let the guest's
//! EOI deactivate a *physical* interrupt (the host's, or EL2's), so it is refused, with LPIs
//! (no ITS here), reserved INTIDs, two list registers naming one INTID (the architecture leaves
//! that UNPREDICTABLE), `ICH_HCR_EL2` bits outside [`vgic::HCR_ALLOWED`], and more list
//! registers than the CPU has. The priority mask, group enables and active priorities
//! (`ICH_VMCR_EL2`, `ICH_AP*R`) only shape the guest's own view: any value is accepted.

use pkvm_abi::Error;
use pkvm_abi::guest::{VgicState, vcpu_off, vgic};

use super::run::SharedVcpu;
use crate::platform::{PhysMem, Platform, VgicInfo, VgicRegs};

/// Word offsets of [`VgicState`]'s fields inside the vCPU structure.
mod off {
    use core::mem::offset_of;

    use super::{VgicState, vcpu_off};

    pub const NR_LRS: usize = vcpu_off::VGIC + offset_of!(VgicState, nr_lrs);
    pub const HCR: usize = vcpu_off::VGIC + offset_of!(VgicState, hcr);
    pub const VMCR: usize = vcpu_off::VGIC + offset_of!(VgicState, vmcr);
    pub const AP0R: usize = vcpu_off::VGIC + offset_of!(VgicState, ap0r);
    pub const AP1R: usize = vcpu_off::VGIC + offset_of!(VgicState, ap1r);
    pub const LR: usize = vcpu_off::VGIC + offset_of!(VgicState, lr);
    pub const MISR: usize = vcpu_off::VGIC + offset_of!(VgicState, misr);
    pub const EISR: usize = vcpu_off::VGIC + offset_of!(VgicState, eisr);
    pub const ELRSR: usize = vcpu_off::VGIC + offset_of!(VgicState, elrsr);
}

/// The first INTID that is not an SGI, PPI or SPI (1020..1024 are special, LPIs start at 8192).
const FIRST_SPECIAL_INTID: u64 = 1020;

/// Whether `lr` is a list register value a host may load (see the module documentation).
#[must_use]
pub fn lr_is_valid(lr: u64) -> bool {
    lr & !vgic::lr::ALLOWED == 0 && lr & vgic::lr::VINTID < FIRST_SPECIAL_INTID
}

/// The virtual CPU interface the host asks for in the structure `host` (read once), validated
/// against the CPU's virtual interface, into `out` (left as it is, `None`, when the host leaves the
/// interface off: `nr_lrs` and `hcr` both 0). An out-parameter: the structure is built in
/// place only when used.
///
/// # Errors
/// `EINVAL` (`out` untouched) for an interface on a CPU without one, more list registers than
/// the CPU has, an `ICH_HCR_EL2` bit outside [`vgic::HCR_ALLOWED`], a list register that fails
/// [`lr_is_valid`], or two valid list registers with one vINTID.
#[inline(always)]
pub(super) fn read<P: Platform>(
    host: SharedVcpu<'_, P>,
    plat: &P,
    out: &mut Option<VgicRegs>,
) -> Result<(), Error> {
    let (nr, hcr) = (host.read(off::NR_LRS), host.read(off::HCR));
    if nr == 0 && hcr == 0 {
        return Ok(());
    }
    read_on(host, plat.vgic_info(), (nr, hcr), out)
}

/// [`read`] of an interface the host turned on. Out of line: off the test guests' hot path.
#[inline(never)]
fn read_on<M: PhysMem>(
    host: SharedVcpu<'_, M>,
    info: Option<VgicInfo>,
    (nr, hcr): (u64, u64),
    out: &mut Option<VgicRegs>,
) -> Result<(), Error> {
    let info = info.ok_or(Error::Inval)?;
    if nr > u64::from(info.nr_lrs) || hcr & !vgic::HCR_ALLOWED != 0 {
        return Err(Error::Inval);
    }
    // Built in place (EL2's memset and memcpy are slow: no copy of the whole structure).
    let v = out.insert(VgicRegs::default());
    v.nr_lrs = nr as u8;
    v.hcr = hcr | vgic::HCR_EN;
    v.vmcr = host.read(off::VMCR);
    for i in 0..usize::from(info.nr_aprs) {
        v.ap0r[i] = host.read(off::AP0R + 8 * i);
        v.ap1r[i] = host.read(off::AP1R + 8 * i);
    }
    for i in 0..usize::from(v.nr_lrs) {
        let lr = host.read(off::LR + 8 * i);
        if !lr_is_valid(lr) {
            *out = None;
            return Err(Error::Inval);
        }
        let live = lr >> vgic::lr::STATE_SHIFT != 0;
        let intid = lr & vgic::lr::VINTID;
        if live
            && v.lr[..i]
                .iter()
                .any(|&o| o >> vgic::lr::STATE_SHIFT != 0 && o & vgic::lr::VINTID == intid)
        {
            *out = None;
            return Err(Error::Inval);
        }
        v.lr[i] = lr;
    }
    Ok(())
}

/// Publishes the interface as the exit left it to the host's structure `host`.
#[inline(never)]
pub(super) fn publish<P: Platform>(host: SharedVcpu<'_, P>, v: &VgicRegs, plat: &P) {
    // The interface was on, so the CPU has one (`read` checked).
    let Some(info) = plat.vgic_info() else {
        return;
    };
    host.write(off::HCR, v.hcr);
    host.write(off::VMCR, v.vmcr);
    for i in 0..usize::from(info.nr_aprs) {
        host.write(off::AP0R + 8 * i, v.ap0r[i]);
        host.write(off::AP1R + 8 * i, v.ap1r[i]);
    }
    for i in 0..usize::from(v.nr_lrs) {
        host.write(off::LR + 8 * i, v.lr[i]);
    }
    host.write(off::MISR, v.misr);
    host.write(off::EISR, v.eisr);
    host.write(off::ELRSR, v.elrsr);
}

#[cfg(test)]
mod tests {
    use super::*;
    use pkvm_abi::guest::vgic::lr;

    #[test]
    fn list_register_rules() {
        assert!(lr_is_valid(lr::pending_group1(27, 0xa0)));
        assert!(lr_is_valid(
            lr::pending_group1(1019, 0) | lr::ACTIVE | lr::EOI
        ));
        assert!(lr_is_valid(0), "an empty list register");
        assert!(
            !lr_is_valid(lr::pending_group1(27, 0) | lr::HW),
            "a physical interrupt"
        );
        assert!(!lr_is_valid(lr::pending_group1(1020, 0)), "a special INTID");
        assert!(!lr_is_valid(lr::pending_group1(8192, 0)), "an LPI");
        assert!(
            !lr_is_valid(lr::pending_group1(27, 0) | 1 << 32),
            "pINTID bits"
        );
        assert!(
            !lr_is_valid(lr::pending_group1(27, 0) | 1 << 56),
            "reserved bits"
        );
    }
}
