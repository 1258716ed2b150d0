//! The real [`Platform`] of the portable core: physical memory through EL2's identity map,
//! barriers and TLB maintenance as single instructions, and the console as the log.
//!
//! This and `hyp_init.rs` are where EL2's `unsafe` lives besides the assembly.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{Readable, VTTBR_EL2, Writeable};

use pkvm_arch::regs::Vttbr;
use pkvm_hyp::platform::{
    ArchOps, GuestEntry, GuestExit, GuestRunner, PhysMem, Platform, VgicInfo, VgicRegs,
};

/// The EL2 platform. EL2 maps everything it touches at VA == PA, before and after its MMU is on.
#[derive(Debug)]
pub struct El2Platform {
    /// FEAT_TTL: TLBI level hints are architected (otherwise the field is RES0 and stays 0).
    ttl: AtomicBool,
    /// The MMU is on: `DC ZVA` may be used to zero memory (it faults on Device memory).
    mmu_on: AtomicBool,
}

/// The one instance.
pub static PLATFORM: El2Platform = El2Platform {
    ttl: AtomicBool::new(false),
    mmu_on: AtomicBool::new(false),
};

impl El2Platform {
    /// Records the CPU features the TLB code depends on.
    pub fn probe_features(&self) {
        let mmfr2: u64;
        // SAFETY: ID_AA64MMFR2_EL1 (S3_0_C0_C7_2) is readable at EL2 on every ARMv8.2+ CPU and
        // reads as zero (all features absent) on older ones; reading has no side effect.
        unsafe {
            asm!("mrs {}, S3_0_C0_C7_2", out(reg) mmfr2, options(nomem, nostack, preserves_flags))
        };
        self.ttl.store((mmfr2 >> 48) & 0xf != 0, Ordering::Relaxed);
    }

    /// Tells the platform the EL2 MMU (and the data cache) is now on.
    pub fn set_mmu_on(&self) {
        self.mmu_on.store(true, Ordering::Relaxed);
    }

    /// TLBI operand: VA[55:12] in bits [43:0] and, with FEAT_TTL, the level hint in [47:44]
    /// (TG = 0b01 for 4 KiB pages, then the level).
    #[inline(always)]
    fn tlbi_operand(&self, addr: u64, level: u8) -> u64 {
        let mut op = (addr >> 12) & ((1 << 44) - 1);
        if level != 0 && self.ttl.load(Ordering::Relaxed) {
            op |= (0b0100 | u64::from(level & 3)) << 44;
        }
        op
    }
}

impl PhysMem for El2Platform {
    #[inline(always)]
    fn read_u64(&self, pa: u64) -> u64 {
        // SAFETY: `PhysMem` callers only pass 8-byte-aligned addresses of memory EL2 owns or was
        // given, all of which EL2's stage-1 maps at VA == PA (and with the MMU off VA == PA
        // anyway). A volatile access keeps the compiler from inventing or merging accesses to
        // memory that other CPUs and the host also use.
        unsafe { core::ptr::read_volatile(pa as *const u64) }
    }

    #[inline(always)]
    fn write_u64(&self, pa: u64, val: u64) {
        // SAFETY: as in `read_u64`.
        unsafe { core::ptr::write_volatile(pa as *mut u64, val) }
    }

    fn zero(&self, pa: u64, len: u64) {
        if self.mmu_on.load(Ordering::Relaxed)
            && pa.is_multiple_of(4096)
            && len.is_multiple_of(4096)
        {
            // QEMU's DCZID_EL0.BS is 64 bytes for every CPU model we run; read it anyway.
            let dczid: u64;
            // SAFETY: DCZID_EL0 (not modelled by `aarch64-cpu`) is always readable; no side
            // effect.
            unsafe { asm!("mrs {}, dczid_el0", out(reg) dczid, options(nomem, nostack)) };
            if dczid & 0x10 == 0 {
                let block = 4u64 << (dczid & 0xf);
                if block <= 512 {
                    let mut a = pa;
                    while a < pa + len {
                        // SAFETY: `[pa, pa + len)` is page-aligned memory EL2 owns and maps as
                        // Normal memory (the MMU is on); each DC ZVA zeroes one block, and eight
                        // blocks of at most 512 bytes stay inside the current page.
                        unsafe {
                            asm!(
                                "dc zva, {a}",
                                "add {t}, {a}, {b}",
                                ".rept 6",
                                "dc zva, {t}",
                                "add {t}, {t}, {b}",
                                ".endr",
                                "dc zva, {t}",
                                a = in(reg) a,
                                b = in(reg) block,
                                t = out(reg) _,
                                options(nostack, preserves_flags)
                            );
                        }
                        a += block * 8;
                    }
                    return;
                }
            }
        }
        let mut a = pa;
        while a < pa + len {
            self.write_u64(a, 0);
            a += 8;
        }
    }
}

impl Platform for El2Platform {
    fn tlbi_guest_s2_ipa(&self, vttbr: Vttbr, ipa: u64, level: u8) {
        let old = load_vttbr(vttbr.bits());
        self.tlbi_s2_ipa(0, ipa, level);
        restore_vttbr(old);
    }

    fn tlbi_guest_vmid(&self, vttbr: Vttbr) {
        let old = load_vttbr(vttbr.bits());
        self.tlbi_vmid(0);
        restore_vttbr(old);
    }

    fn mmio_read(&self, pa: u64, size: u8) -> u64 {
        // SAFETY: the portable core only forwards accesses to the device ranges it emulates,
        // which `hyp_init` mapped at VA == PA as Device memory in EL2's stage-1, naturally
        // aligned (checked by its policy); a volatile access of the register's width is what
        // the device expects.
        unsafe {
            if size == 8 {
                core::ptr::read_volatile(pa as *const u64)
            } else {
                u64::from(core::ptr::read_volatile(pa as *const u32))
            }
        }
    }

    fn mmio_write(&self, pa: u64, size: u8, val: u64) {
        // SAFETY: as in `mmio_read`.
        unsafe {
            if size == 8 {
                core::ptr::write_volatile(pa as *mut u64, val);
            } else {
                core::ptr::write_volatile(pa as *mut u32, val as u32);
            }
        }
    }

    fn log(&self, args: core::fmt::Arguments<'_>) {
        crate::console::print(format_args!("{args}\n"));
    }

    fn pstate_features(&self) -> pkvm_arch::exception::PstateFeatures {
        crate::sysregs::pstate_features()
    }

    fn clean_dcache_to_poc(&self, va: u64, len: u64) {
        let ctr: u64;
        // SAFETY: CTR_EL0 is always readable at EL2; no side effect.
        unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
        // DminLine (bits 19:16): log2 of the smallest data cache line, in words.
        let line = 4u64 << ((ctr >> 16) & 0xf);
        let mut a = va & !(line - 1);
        let end = va + len;
        // Eight lines per iteration while eight fit (a page is 64 lines of 64 bytes on QEMU).
        while a + 8 * line <= end {
            // SAFETY: `[a, a + 8 * line)` lies in `[va, va + len)`, memory EL2 maps (its
            // identity map or its window); DC CIVAC writes dirty lines back and invalidates
            // them, changing no value.
            unsafe {
                asm!(
                    "dc civac, {a}",
                    "add {t}, {a}, {l}",
                    ".rept 6",
                    "dc civac, {t}",
                    "add {t}, {t}, {l}",
                    ".endr",
                    "dc civac, {t}",
                    a = in(reg) a,
                    l = in(reg) line,
                    t = out(reg) _,
                    options(nostack, preserves_flags)
                );
            }
            a += 8 * line;
        }
        while a < end {
            // SAFETY: as above, one line.
            unsafe { asm!("dc civac, {}", in(reg) a, options(nostack, preserves_flags)) };
            a += line;
        }
        // SAFETY: a barrier: completes the maintenance; no other effect.
        unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
    }
}

impl ArchOps for El2Platform {
    #[inline(always)]
    fn dsb_ishst(&self) {
        // SAFETY: a barrier has no memory-safety effect.
        unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
    }

    #[inline(always)]
    fn dsb_ish(&self) {
        // SAFETY: a barrier has no memory-safety effect.
        unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
    }

    #[inline(always)]
    fn isb(&self) {
        // SAFETY: a barrier has no memory-safety effect.
        unsafe { asm!("isb", options(nostack, preserves_flags)) };
    }

    #[inline(always)]
    fn tlbi_el2_va(&self, va: u64, level: u8, last_level_only: bool) {
        let op = self.tlbi_operand(va, level);
        if last_level_only {
            // SAFETY: TLB invalidation only drops cached translations.
            unsafe { asm!("tlbi vale2is, {}", in(reg) op, options(nostack, preserves_flags)) };
        } else {
            // SAFETY: as above.
            unsafe { asm!("tlbi vae2is, {}", in(reg) op, options(nostack, preserves_flags)) };
        }
    }

    #[inline(always)]
    fn tlbi_s2_ipa(&self, vmid: u16, ipa: u64, level: u8) {
        // Stage-2 TLBIs act on the VMID in VTTBR_EL2: the host's (VMID 0) is loaded whenever
        // EL2 runs on behalf of the host. Guests' go through `tlbi_guest_s2_ipa`.
        debug_assert_eq!(vmid, 0);
        let op = self.tlbi_operand(ipa, level);
        // SAFETY: TLB invalidation only drops cached translations. The stage-1 entries of the
        // VMID may combine the dropped stage-2 entry, so they go too.
        unsafe {
            asm!(
                "tlbi ipas2e1is, {op}",
                "dsb ish",
                "tlbi vmalle1is",
                op = in(reg) op,
                options(nostack, preserves_flags)
            );
        }
    }

    #[inline(always)]
    fn tlbi_vmid(&self, vmid: u16) {
        debug_assert_eq!(vmid, 0);
        // SAFETY: TLB invalidation only drops cached translations.
        unsafe { asm!("tlbi vmalls12e1is", options(nostack, preserves_flags)) };
    }

    #[inline(always)]
    fn tlbi_el2_all(&self) {
        // SAFETY: TLB invalidation only drops cached translations.
        unsafe { asm!("tlbi alle2is", options(nostack, preserves_flags)) };
    }
}

/// Loads a guest's `VTTBR_EL2` (its stage-2 root and VMID) for a stage-2 TLB invalidation of
/// that VMID; returns the host's value. No lower EL runs until [`restore_vttbr`]: the EL1&0
/// regime is not used meanwhile, and the loaded root is the guest's own table, so even a
/// speculative walk under its VMID sees only the guest's mappings. TLBIs issued meanwhile act
/// on its VMID.
fn load_vttbr(vttbr: u64) -> u64 {
    let old = VTTBR_EL2.get();
    VTTBR_EL2.set(vttbr);
    barrier::isb(barrier::SY);
    old
}

/// Completes the invalidations issued under another VMID (`dsb ish`) and puts the host's
/// VTTBR back.
fn restore_vttbr(old: u64) {
    barrier::dsb(barrier::ISH);
    VTTBR_EL2.set(old);
    barrier::isb(barrier::SY);
}

impl GuestRunner for El2Platform {
    #[inline(always)]
    fn run_guest(&self, entry: &GuestEntry, vgic: Option<&mut VgicRegs>) -> GuestExit {
        // The core turns the interface on only if the CPU has one.
        match vgic {
            Some(v) => crate::vgic::run_with(v, || crate::world::run_guest(entry)),
            None => crate::vgic::run_off(|| crate::world::run_guest(entry)),
        }
    }

    fn vgic_info(&self) -> Option<VgicInfo> {
        crate::vgic::info()
    }

    fn read_id_reg(&self, crm: u8, op2: u8) -> u64 {
        crate::idregs::read(crm, op2)
    }
}
