//! Glue between the portable core and `pkvm-pgtable`: the architecture-effects adapter and
//! error conversion.

use pkvm_abi::Error;

use crate::platform::Platform;

/// Forwards `pkvm-pgtable`'s barrier and TLB maintenance requests to the [`Platform`].
#[derive(Debug)]
pub struct Arch<'p, P: Platform>(pub &'p P);

impl<P: Platform> pkvm_pgtable::ArchOps for Arch<'_, P> {
    #[inline]
    fn dsb_ishst(&mut self) {
        self.0.dsb_ishst();
    }
    #[inline]
    fn dsb_ish(&mut self) {
        self.0.dsb_ish();
    }
    #[inline]
    fn isb(&mut self) {
        self.0.isb();
    }
    #[inline]
    fn tlbi_el2_va(&mut self, va: u64, level: u8, last_level_only: bool) {
        self.0.tlbi_el2_va(va, level, last_level_only);
    }
    #[inline]
    fn tlbi_s2_ipa(&mut self, vmid: u16, ipa: u64, level: u8) {
        self.0.tlbi_s2_ipa(vmid, ipa, level);
    }
    #[inline]
    fn tlbi_vmid(&mut self, vmid: u16) {
        self.0.tlbi_vmid(vmid);
    }
    #[inline]
    fn tlbi_el2_all(&mut self) {
        self.0.tlbi_el2_all();
    }
}

/// [`Arch`] for a guest stage-2: its stage-2 TLB maintenance runs with the guest's
/// `VTTBR_EL2` (root | VMID << 48) loaded.
#[derive(Debug)]
pub struct GuestArch<'p, P: Platform> {
    /// The platform.
    pub plat: &'p P,
    /// The guest's `VTTBR_EL2` value.
    pub vttbr: u64,
}

impl<P: Platform> pkvm_pgtable::ArchOps for GuestArch<'_, P> {
    #[inline]
    fn dsb_ishst(&mut self) {
        self.plat.dsb_ishst();
    }
    #[inline]
    fn dsb_ish(&mut self) {
        self.plat.dsb_ish();
    }
    #[inline]
    fn isb(&mut self) {
        self.plat.isb();
    }
    #[inline]
    fn tlbi_el2_va(&mut self, va: u64, level: u8, last_level_only: bool) {
        self.plat.tlbi_el2_va(va, level, last_level_only);
    }
    #[inline]
    fn tlbi_s2_ipa(&mut self, _vmid: u16, ipa: u64, level: u8) {
        self.plat.tlbi_guest_s2_ipa(self.vttbr, ipa, level);
    }
    #[inline]
    fn tlbi_vmid(&mut self, _vmid: u16) {
        self.plat.tlbi_guest_vmid(self.vttbr);
    }
    #[inline]
    fn tlbi_el2_all(&mut self) {
        self.plat.tlbi_el2_all();
    }
}

/// Maps a page-table error onto the ABI's error codes.
#[must_use]
pub fn pt_err(e: pkvm_pgtable::Error) -> Error {
    use pkvm_pgtable::Error as E;
    match e {
        E::NoMemory => Error::NoMem,
        E::OutOfRange => Error::Range,
        E::AlreadyMapped => Error::Perm,
        _ => Error::Inval,
    }
}
