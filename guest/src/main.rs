//! pkvm-rs test guest: a small EL1 payload run by the host's `guests` scenario.
//!
//! The host shares [`GUEST_RAM_PAGES`] pages at IPA [`GUEST_RAM_IPA`], copies this image to
//! their start and enters it at EL1h with the MMU off (its data accesses are Device accesses:
//! no `HCR_EL2.DC`; the target's strict alignment keeps them aligned), `x0` = its cycle number, `x1` = loop count, `x2` = flags (bit 0: quiet — only
//! the pings, without FP; bit 1: pings use FP even when quiet). The image starts with the
//! shared entry of `pkvm_rt` (the bare-metal runtime of all three images: an arm64 `Image`
//! header, FP/SIMD enabled, `.bss` zeroed, the stack at the end of its RAM, `VBAR_EL1` set to
//! its own vectors: any exception it takes itself ends in PSCI SYSTEM_RESET with `x1` = its
//! `ESR_EL1`). The guest then:
//!
//! 1. prints `guest <n>: hello` through the emulated console: byte stores to
//!    [`GUEST_CONSOLE_IPA`], which is not guest memory, so each one is a stage-2 data abort
//!    that EL2 hands to the host as an MMIO exit;
//! 2. reads [`GUEST_ID_REG_IPA`] (an MMIO read the host answers with the cycle number);
//! 3. writes and checks a pattern over 8 KiB of its memory;
//! 4. `loops` times: puts a pattern in `d16`, makes a "ping" hypercall the host answers with
//!    `x1 + 1`, and checks both the answer and that `d16` survived the exit (the host's FP
//!    state is switched); quiet guests ping without touching FP;
//! 5. executes one `WFI` (trapped: an IDLE exit);
//! 6. powers off with PSCI SYSTEM_OFF over `HVC` — or SYSTEM_RESET if a check failed, which
//!    the host treats as a failure.
//!
//! # Protected mode
//!
//! With flags bit 2 the guest runs as a protected VM would (its RAM donated, unreadable by
//! the host), and first speaks the guest-side ABI of pKVM, as vmbase-style guests do:
//!
//! 1. the vendor-hypervisor Call UID must be KVM's, its features bitmap must offer MEMINFO,
//!    MEM_SHARE, MEM_UNSHARE, MMIO guard and MEM_RELINQUISH, and `HYP_MEMINFO` must report
//!    4 KiB; it enrolls in MMIO guard and maps the page of its console and id register (any
//!    other MMIO access would now be an abort it takes itself);
//! 2. it shares a page-aligned bounce buffer with `MEM_SHARE`, writes
//!    `guest <n>: hello through a shared page` into it and asks the host to print it
//!    ([`GUEST_HVC_PRINT`]: the host reads only that page), then unshares it;
//! 3. it fills a second page with a secret and gives it up with `MEM_RELINQUISH` (the host
//!    checks it reads zeros there), and checks that sharing that page now fails;
//!
//! then goes on as above (console, id register, memory test, pings, `WFI`, power-off).
//!
//! With flags bit 3 (a benchmark's), every ping is preceded by a `MEM_SHARE` and a
//! `MEM_UNSHARE` of the bounce buffer.
//!
//! # Which vCPU
//!
//! With flags bit 6 the guest first makes a ping with `x1` = its `MPIDR_EL1`.
//!
//! # Spinning
//!
//! With flags bit 5 the guest spins forever with its interrupts masked, never exiting (the
//! host's preemption check).
//!
//! # Virtual GIC
//!
//! With flags bit 4, before its pings the guest takes an interrupt through the GICv3 virtual
//! CPU interface the host loaded into EL2's list registers, with its interrupts masked (no
//! exception: it polls): `ICC_PMR_EL1` = 0xff and `ICC_IGRPEN1_EL1` = 1, then reads
//! `ICC_IAR1_EL1` (the INTID the host made pending; the list register goes active), writes it to
//! `ICC_EOIR1_EL1` (priority drop and deactivation: the list register empties), checks a second
//! `ICC_IAR1_EL1` read is spurious (1023), and reports the INTID with a ping (`x1`).
//!
//! # Hostile mode
//!
//! Flags bits 15:8 select a hostile test (0: none, the behaviour above). A hostile guest makes
//! one FP access (`fmov d0, xzr`, so EL2's lazy FP switch has run and cleared
//! `CPTR_EL2.TFP`), then performs **one** hostile action, with `x1` as its argument where it
//! writes a register. If EL2 traps it, the run ends there with a FAULT exit (the host checks
//! the EC). If it executes, the guest makes one ping and powers off with SYSTEM_OFF (or
//! SYSTEM_RESET with `x1` = 0 if a check of its own failed), so the host can tell "trapped"
//! from "executed"; an exception the guest takes itself ends in SYSTEM_RESET with its
//! `ESR_EL1` (above). For SVE and SME it first enables them in its own `CPACR_EL1`
//! (ZEN / SMEN = 0b11), as a malicious guest would, so that only EL2 can stop it.
//!
//! | test | action | expected exit |
//! |---|---|---|
//! | 1 | `CPACR_EL1.ZEN = 0b11`, `rdvl x0, #1` | FAULT, EC 0x19 (SVE) |
//! | 2 | `CPACR_EL1.ZEN = 0b11`, `pfalse p7.b` (would clobber the host's `p7`) | FAULT, EC 0x19 |
//! | 3 | `CPACR_EL1.SMEN = 0b11`, `smstart` (`smstop` right after, if it ran) | FAULT, EC 0x1D (SME) |
//! | 4 | `msr mdscr_el1` with KDE, MDE and SS | FAULT, EC 0x18 |
//! | 5 | `msr dbgbvr0_el1, x1` | FAULT, EC 0x18 |
//! | 6 | `msr dbgbcr0_el1, x1` | FAULT, EC 0x18 |
//! | 7 | `msr oslar_el1, x1` | FAULT, EC 0x18 |
//! | 8 | `mrs x0, pmcr_el0` | FAULT, EC 0x18 |
//! | 9 | `mrs x0, pmccntr_el0` | FAULT, EC 0x18 |
//! | 10 | `msr pmcr_el0, x1` | FAULT, EC 0x18 |
//! | 11 | `mrs x0, actlr_el1` | FAULT, EC 0x18 |
//! | 12 | `msr SCXTNUM_EL1, x1` | FAULT, EC 0x18 (with FEAT_CSV2_2) |
//! | 13 | `dc isw, xzr` (set/way maintenance) | FAULT, EC 0x18 |
//! | 14 | `mrs x0, LORID_EL1` | FAULT, EC 0x18 (with FEAT_LOR) |
//! | 15 | `CSSELR_EL1 = 2`, ping, read it back: must still be 2 | SYSTEM_OFF |
//! | 16 | `TPIDR2_EL0 = x1`, ping, read it back: must still be `x1` (SME only) | SYSTEM_OFF |
//!
//! On any other target it is an empty `main`, so that `cargo test --workspace` builds it.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

#[cfg(target_os = "none")]
mod guest {
    use core::arch::{asm, global_asm};
    use pkvm_abi::guest::smccc;
    use pkvm_abi::guest::{GUEST_CONSOLE_IPA, GUEST_HVC_PING, GUEST_HVC_PRINT, GUEST_ID_REG_IPA};
    use pkvm_abi::psci;

    // The shared entry (`pkvm_rt::entry`) at EL1: FP/SIMD on, `.bss` zeroed, the stack at the
    // end of the guest's RAM, `VBAR_EL1` = `guest_vectors`, then `guest_main(x0, x1, x2)`.
    pkvm_rt::image_entry! {
        el: 1,
        text_offset: 0,
        stack_top: "__stack_top",
        vectors: "guest_vectors",
        main: guest_main,
    }

    // The guest's EL1 vectors: any exception the guest takes itself is reported as PSCI
    // SYSTEM_RESET with x1 = ESR_EL1 (the host fails the run, or for a hostile guest's test
    // reads the syndrome).
    global_asm!(
        r#"
        .section .text.vectors, "ax"
        .balign 2048
        .global guest_vectors
    guest_vectors:
        .rept 16
        .balign 128
        mrs     x1, esr_el1
        movz    x0, #{reset_lo}
        movk    x0, #{reset_hi}, lsl #16
    3:  hvc     #0
        b       3b
        .endr
    "#,
        reset_lo = const psci::SYSTEM_RESET & 0xffff,
        reset_hi = const psci::SYSTEM_RESET >> 16,
    );

    fn hvc(x0: u64, x1: u64) -> u64 {
        let r: u64;
        // SAFETY: an HVC traps to EL2, which returns here with x0..x3 possibly changed by the
        // host's handling of the exit; no memory is affected.
        unsafe {
            asm!("hvc #0", inout("x0") x0 => r, inout("x1") x1 => _, out("x2") _, out("x3") _,
                 options(nostack))
        };
        r
    }

    /// `HVC #0` with `x0..x3`, returning `x0..x3`.
    fn hvc4(x: [u64; 4]) -> [u64; 4] {
        let mut r = x;
        // SAFETY: a hypercall: no memory effect on the guest's side; x0-x3 are its results.
        unsafe {
            asm!("hvc #0", inout("x0") r[0], inout("x1") r[1], inout("x2") r[2],
                 inout("x3") r[3], options(nostack))
        };
        r
    }

    /// A page of the guest's RAM (its IPA is its address: the MMU is off).
    #[repr(C, align(4096))]
    struct Page([u64; 512]);

    /// The bounce buffer the guest shares with the host to print through.
    static mut BOUNCE: Page = Page([0; 512]);
    /// The page the guest relinquishes.
    static mut GIVEN: Page = Page([0; 512]);

    /// The protected-mode steps (module documentation): whether every check passed.
    fn protected_abi(id: u64) -> bool {
        let mut ok = hvc4([smccc::VENDOR_HYP_CALL_UID, 0, 0, 0]) == smccc::KVM_UID;
        let want = smccc::KVM_FEATURES_BITMAP;
        ok &= hvc4([smccc::VENDOR_HYP_KVM_FEATURES, 0, 0, 0])[0] & want == want;
        ok &= hvc4([smccc::HYP_MEMINFO, 0, 0, 0])[0] == pkvm_abi::PAGE_SIZE;
        // MMIO guard: only the page of its console and id register may reach the host.
        ok &= hvc4([smccc::MMIO_GUARD_INFO, 0, 0, 0])[0] == pkvm_abi::PAGE_SIZE;
        ok &= hvc4([smccc::MMIO_GUARD_ENROLL, 0, 0, 0])[0] == smccc::SUCCESS;
        let mmio = GUEST_CONSOLE_IPA & !(pkvm_abi::PAGE_SIZE - 1);
        ok &= hvc4([smccc::MMIO_GUARD_MAP, mmio, 0, 0])[0] == smccc::SUCCESS;
        let bounce = (&raw mut BOUNCE).cast::<u8>();
        let ipa = bounce as u64;
        ok &= hvc4([smccc::MEM_SHARE, ipa, 0, 0])[..2] == [smccc::SUCCESS, 1];
        // The message, with the cycle number in decimal.
        let mut len = 0;
        let mut push = |b: u8| {
            // SAFETY: `len` stays below the 4 KiB of the bounce page; the guest is the only
            // writer of its own RAM.
            unsafe { core::ptr::write_volatile(bounce.add(len), b) };
            len += 1;
        };
        b"guest ".iter().for_each(|&b| push(b));
        let mut digits = [0u8; 20];
        let (mut n, mut i) = (id, digits.len());
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        digits[i..].iter().for_each(|&b| push(b));
        b": hello through a shared page"
            .iter()
            .for_each(|&b| push(b));
        ok &= hvc4([GUEST_HVC_PRINT, ipa, len as u64, 0])[0] == len as u64;
        ok &= hvc4([smccc::MEM_UNSHARE, ipa, 0, 0])[..2] == [smccc::SUCCESS, 1];
        // A secret, then the page goes: the host must find it zeroed.
        let given = &raw mut GIVEN;
        for i in 0..512 {
            // SAFETY: in bounds of the guest's own page.
            unsafe { core::ptr::write_volatile(&raw mut (*given).0[i], 0x5ec7_e700 | i as u64) };
        }
        let gipa = given as u64;
        ok &= hvc4([smccc::MEM_RELINQUISH, gipa, 0, 0])[0] == smccc::SUCCESS;
        ok &= hvc4([smccc::MEM_SHARE, gipa, 0, 0])[0] == smccc::INVALID_PARAMETER;
        ok
    }

    fn putc(c: u8) {
        // SAFETY: a single byte store to the emulated console (not guest memory): it exits to
        // the host, which prints it; `strb` has a valid syndrome.
        unsafe {
            asm!("strb {c:w}, [{a}]", c = in(reg) u32::from(c), a = in(reg) GUEST_CONSOLE_IPA,
                 options(nostack))
        };
    }

    fn puts(s: &str) {
        for b in s.bytes() {
            putc(b);
        }
    }

    fn putn(mut n: u64) {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &b in &buf[i..] {
            putc(b);
        }
    }

    fn read_id() -> u64 {
        let v: u32;
        // SAFETY: a single 32-bit load from the emulated id register: an MMIO exit the host
        // answers; no memory is affected.
        unsafe {
            asm!("ldr {v:w}, [{a}]", v = out(reg) v, a = in(reg) GUEST_ID_REG_IPA,
                 options(nostack, readonly))
        };
        u64::from(v)
    }

    /// One ping with `d16` live across the exit; true if the answer and `d16` are right.
    fn ping(i: u64) -> bool {
        let pattern = 0x5a5a_0000_0000_0000 | i;
        let (r, back): (u64, u64);
        // SAFETY: the HVC exits to the host and returns; d16 is declared clobbered. The pattern
        // goes into d16 before the exit and comes back from it after, in the same register.
        unsafe {
            asm!(
                "fmov d16, {p}",
                "hvc #0",
                "fmov {p}, d16",
                p = inout(reg) pattern => back,
                inout("x0") GUEST_HVC_PING => r,
                inout("x1") i => _,
                out("x2") _, out("x3") _,
                out("v16") _,
                options(nostack)
            )
        };
        r == i + 1 && back == pattern
    }

    static mut BUF: [u64; 1024] = [0; 1024];

    fn touch_memory(id: u64) -> bool {
        let buf = &raw mut BUF;
        for i in 0..1024 {
            // SAFETY: one CPU, no other reference to BUF exists.
            unsafe { core::ptr::write_volatile(&raw mut (*buf)[i], id ^ (i as u64 * 0x9e37)) };
        }
        (0..1024).all(|i| {
            // SAFETY: as above.
            unsafe { core::ptr::read_volatile(&raw const (*buf)[i]) == id ^ (i as u64 * 0x9e37) }
        })
    }

    /// Hostile tests (flags bits 15:8; see the module documentation).
    use pkvm_abi::guest::hostile as test;

    /// `MDSCR_EL1`: KDE (bit 13), MDE (bit 15), SS (bit 0).
    const MDSCR_KDE_MDE_SS: u64 = (1 << 13) | (1 << 15) | 1;
    /// The cache level a hostile guest selects in `CSSELR_EL1` (level 2, data/unified).
    const GUEST_CSSELR: u64 = 2;

    /// Hostile mode: one FP access, one hostile action with argument `arg`, then (if that was
    /// not trapped) a ping and a power-off. See the module documentation.
    fn hostile(t: u64, arg: u64) -> ! {
        // SAFETY: an FP register write (declared clobbered): EL2's lazy FP switch traps it
        // and resumes the guest with its own FP state loaded.
        unsafe { asm!("fmov d0, xzr", out("v0") _, options(nomem, nostack)) };
        let ok = match t {
            test::SVE_RDVL | test::SVE_PFALSE => {
                // SAFETY: the guest enables SVE for its own EL1 and runs one SVE instruction:
                // EL2 must trap it (the run then ends here for good); if it executes, it
                // changes x0 or p7 (declared clobbered / not used by compiled code) only.
                unsafe {
                    asm!(
                        "mrs {t}, cpacr_el1",
                        "orr {t}, {t}, #(3 << 16)",
                        "msr cpacr_el1, {t}",
                        "isb",
                        "cbnz {pf}, 1f",
                        ".inst 0x04bf5020", /* rdvl x0, #1 */
                        "b 2f",
                        "1: .inst 0x2518e407", /* pfalse p7.b */
                        "2:",
                        t = out(reg) _,
                        pf = in(reg) u64::from(t == test::SVE_PFALSE),
                        out("x0") _,
                        options(nomem, nostack)
                    )
                };
                true
            }
            test::SME_SMSTART => {
                // SAFETY: the guest enables SME for its own EL1 and enters streaming mode with
                // ZA on: EL2 must trap it; if it executes, `smstop` leaves both again at once
                // (no FP register is live across the block).
                unsafe {
                    asm!(
                        "mrs {t}, cpacr_el1",
                        "orr {t}, {t}, #(3 << 24)",
                        "msr cpacr_el1, {t}",
                        "isb",
                        ".inst 0xd503477f", /* smstart */
                        ".inst 0xd503467f", /* smstop */
                        t = out(reg) _,
                        options(nomem, nostack)
                    )
                };
                true
            }
            // Debug and PMU registers: EL2 traps them and answers itself (reads as zero,
            // writes ignored): each write is read back, and must read 0.
            test::MDSCR_WRITE => {
                let v: u64;
                // SAFETY: a debug control register write and read: EL2 traps and emulates
                // both; if the write executed, debug exceptions stay masked (PSTATE.D is set)
                // and nothing steps.
                unsafe {
                    asm!("msr mdscr_el1, {w}", "isb", "mrs {v}, mdscr_el1",
                         w = in(reg) MDSCR_KDE_MDE_SS, v = out(reg) v, options(nomem, nostack))
                };
                v == 0
            }
            test::DBGBVR0_WRITE => {
                let v: u64;
                // SAFETY: a breakpoint register write and read (emulated); no memory effect.
                unsafe {
                    asm!("msr dbgbvr0_el1, {w}", "isb", "mrs {v}, dbgbvr0_el1",
                         w = in(reg) arg, v = out(reg) v, options(nomem, nostack))
                };
                v == 0
            }
            test::DBGBCR0_WRITE => {
                let v: u64;
                // SAFETY: as above.
                unsafe {
                    asm!("msr dbgbcr0_el1, {w}", "isb", "mrs {v}, dbgbcr0_el1",
                         w = in(reg) arg, v = out(reg) v, options(nomem, nostack))
                };
                v == 0
            }
            test::OSLAR_WRITE => {
                let v: u64;
                // SAFETY: the OS lock, then its status (emulated); no memory effect.
                unsafe {
                    asm!("msr oslar_el1, {w}", "isb", "mrs {v}, oslsr_el1",
                         w = in(reg) arg, v = out(reg) v, options(nomem, nostack))
                };
                v == 0
            }
            test::PMCR_READ => {
                let v: u64;
                // SAFETY: a PMU register read (emulated); no side effect.
                unsafe { asm!("mrs {v}, pmcr_el0", v = out(reg) v, options(nomem, nostack)) };
                v == 0
            }
            test::PMCCNTR_READ => {
                let v: u64;
                // SAFETY: as above.
                unsafe { asm!("mrs {v}, pmccntr_el0", v = out(reg) v, options(nomem, nostack)) };
                v == 0
            }
            test::PMCR_WRITE => {
                let v: u64;
                // SAFETY: a PMU control write and read (emulated); no memory effect.
                unsafe {
                    asm!("msr pmcr_el0, {w}", "isb", "mrs {v}, pmcr_el0",
                         w = in(reg) arg, v = out(reg) v, options(nomem, nostack))
                };
                v == 0
            }
            test::ACTLR_READ => {
                // SAFETY: an implementation-defined control register read: EL2 must trap it.
                unsafe { asm!("mrs {v}, actlr_el1", v = out(reg) _, options(nomem, nostack)) };
                true
            }
            test::SCXTNUM_WRITE => {
                // SAFETY: SCXTNUM_EL1 (a speculation context number): EL2 must trap it.
                unsafe {
                    asm!("msr S3_0_C13_C0_7, {v}", "isb", v = in(reg) arg, options(nomem, nostack))
                };
                true
            }
            test::DC_ISW => {
                // SAFETY: set/way invalidation of the data cache: EL2 must trap it (executed,
                // it could discard dirty lines of the host's memory, as a hostile guest wants).
                unsafe { asm!("dc isw, xzr", options(nostack)) };
                true
            }
            test::LORID_READ => {
                // SAFETY: LORID_EL1 read: EL2 must trap it; no side effect.
                unsafe { asm!("mrs {v}, S3_0_C10_C4_7", v = out(reg) _, options(nomem, nostack)) };
                true
            }
            test::CSSELR_SWITCH => {
                // SAFETY: CSSELR_EL1 only selects what this guest's CCSIDR_EL1 reads describe.
                unsafe {
                    asm!("msr csselr_el1, {v}", "isb", v = in(reg) GUEST_CSSELR, options(nomem, nostack))
                };
                let pinged = hvc(GUEST_HVC_PING, t) == t + 1;
                let back: u64;
                // SAFETY: reading CSSELR_EL1 has no side effect.
                unsafe { asm!("mrs {v}, csselr_el1", v = out(reg) back, options(nomem, nostack)) };
                pinged && back == GUEST_CSSELR
            }
            test::ICC_PMR_WRITE => {
                // SAFETY: the GIC CPU interface's priority mask: with HCR_EL2.IMO the guest's
                // virtual one, which EL2 traps while the host leaves the interface off.
                unsafe {
                    asm!("msr S3_0_C4_C6_0, {v}", "isb", v = in(reg) arg, options(nomem, nostack))
                };
                true
            }
            test::TPIDR2_SWITCH => {
                // SAFETY: TPIDR2_EL0 is a software thread register (the CPU has SME: the host
                // only asks for this test then).
                unsafe {
                    asm!("msr S3_3_C13_C0_5, {v}", "isb", v = in(reg) arg, options(nomem, nostack))
                };
                let pinged = hvc(GUEST_HVC_PING, t) == t + 1;
                let back: u64;
                // SAFETY: reading TPIDR2_EL0 has no side effect.
                unsafe {
                    asm!("mrs {v}, S3_3_C13_C0_5", v = out(reg) back, options(nomem, nostack))
                };
                pinged && back == arg
            }
            _ => false,
        };
        // Not trapped: say so with a ping, then power off.
        let ok = hvc(GUEST_HVC_PING, t) == t + 1 && ok;
        power_off(ok)
    }

    /// The spurious INTID: nothing pending.
    const SPURIOUS: u64 = 1023;

    /// Acknowledges and EOIs the highest-priority pending virtual interrupt (see the module
    /// documentation) and reports its INTID with a ping; true if all went as expected.
    fn vgic_ack() -> bool {
        let (intid, again): (u64, u64);
        // SAFETY: GICv3 CPU interface registers, which with HCR_EL2.IMO are the guest's virtual
        // interface (ICV_*): they change only the guest's own interrupt state. PSTATE.I stays
        // masked, so the pending interrupt is polled, never taken.
        unsafe {
            asm!(
                "mov {t}, #0xff",
                "msr S3_0_C4_C6_0, {t}",   // ICC_PMR_EL1
                "mov {t}, #1",
                "msr S3_0_C12_C12_7, {t}", // ICC_IGRPEN1_EL1
                "isb",
                "mrs {i}, S3_0_C12_C12_0", // ICC_IAR1_EL1
                "msr S3_0_C12_C12_1, {i}", // ICC_EOIR1_EL1
                "isb",
                "mrs {a}, S3_0_C12_C12_0",
                t = out(reg) _,
                i = out(reg) intid,
                a = out(reg) again,
                options(nomem, nostack),
            );
        }
        hvc(GUEST_HVC_PING, intid) == intid + 1 && intid != SPURIOUS && again == SPURIOUS
    }

    fn power_off(ok: bool) -> ! {
        let f = if ok {
            psci::SYSTEM_OFF
        } else {
            psci::SYSTEM_RESET
        };
        loop {
            hvc(u64::from(f), 0);
        }
    }

    #[unsafe(no_mangle)]
    extern "C" fn guest_main(id: u64, loops: u64, flags: u64) -> ! {
        if flags & 32 != 0 {
            // A guest that never exits, its interrupts masked (they are from entry): only the
            // host's deadline, through EL2's timer, gets the CPU back.
            loop {
                core::hint::spin_loop();
            }
        }
        if flags & 64 != 0 {
            // Which vCPU am I: the MPIDR EL2 gives this vCPU, in a first ping.
            let mpidr: u64;
            // SAFETY: reading MPIDR_EL1 has no side effect.
            unsafe { asm!("mrs {}, mpidr_el1", out(reg) mpidr, options(nomem, nostack)) };
            if hvc(GUEST_HVC_PING, mpidr) != mpidr + 1 {
                power_off(false);
            }
        }
        let hostile_test = (flags >> 8) & 0xff;
        if hostile_test != 0 {
            hostile(hostile_test, loops);
        }
        let mut ok = true;
        if flags & 4 != 0 {
            ok &= protected_abi(id);
        }
        if flags & 16 != 0 {
            ok &= vgic_ack();
        }
        if flags & 1 == 0 {
            puts("guest ");
            putn(id);
            puts(": hello from EL1\n");
            ok &= read_id() == id & 0xffff_ffff;
            ok &= touch_memory(id);
        }
        for i in 0..loops {
            if flags & 8 != 0 {
                // Share pings (protected benchmark): a MEM_SHARE and a MEM_UNSHARE of the
                // bounce buffer, answered at EL2, before each ping.
                let ipa = (&raw mut BOUNCE) as u64;
                ok &= hvc4([smccc::MEM_SHARE, ipa, 0, 0])[0] == smccc::SUCCESS;
                ok &= hvc4([smccc::MEM_UNSHARE, ipa, 0, 0])[0] == smccc::SUCCESS;
            }
            // Quiet guests (the benchmarks) ping without touching FP: the round trip then
            // measures the exit path without the lazy FP switch.
            ok &= if flags & 1 == 0 || flags & 2 != 0 {
                ping(i)
            } else {
                hvc(GUEST_HVC_PING, i) == i + 1
            };
        }
        if flags & 1 == 0 {
            // SAFETY: WFI has no memory effect; EL2 traps it (HCR_EL2.TWI) and the host
            // runs the guest again.
            unsafe { asm!("wfi", options(nomem, nostack)) };
        }
        if !ok && flags & 1 == 0 {
            puts("guest: a check FAILED\n");
        }
        power_off(ok)
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
        loop {
            hvc(u64::from(psci::SYSTEM_RESET), 0);
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
