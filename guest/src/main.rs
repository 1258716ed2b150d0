//! pkvm-rs test guest: a small EL1 payload run by the host's `guests` scenario.
//!
//! The host shares [`GUEST_RAM_PAGES`] pages at IPA [`GUEST_RAM_IPA`], copies this image to
//! their start and enters it at EL1h with the MMU off (`HCR_EL2.DC` makes that memory Normal
//! cacheable), `x0` = its cycle number, `x1` = loop count, `x2` = flags (bit 0: quiet — only
//! the pings, without FP; bit 1: pings use FP even when quiet). The guest then:
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
//! On any other target it is an empty `main`, so that `cargo test --workspace` builds it.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

#[cfg(target_os = "none")]
mod guest {
    use core::arch::{asm, global_asm};
    use pkvm_abi::guest::{GUEST_CONSOLE_IPA, GUEST_HVC_PING, GUEST_ID_REG_IPA};
    use pkvm_abi::psci;

    global_asm!(
        r#"
        .section .text.head, "ax"
        .global _start
    _start:
        mov     x19, x0
        mov     x20, x1
        mov     x21, x2
        mov     x3, #(3 << 20)          /* CPACR_EL1.FPEN: no FP/SIMD traps */
        msr     cpacr_el1, x3
        isb
        adrp    x3, __stack_top
        add     x3, x3, :lo12:__stack_top
        mov     sp, x3
        adrp    x3, __bss_start
        add     x3, x3, :lo12:__bss_start
        adrp    x4, __bss_end
        add     x4, x4, :lo12:__bss_end
    0:  cmp     x3, x4
        b.hs    1f
        stp     xzr, xzr, [x3], #16
        b       0b
    1:  mov     x0, x19
        mov     x1, x20
        mov     x2, x21
        bl      guest_main
    2:  b       2b
    "#
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
        // SAFETY: the HVC exits to the host and returns; d16 is declared clobbered.
        unsafe {
            asm!(
                "fmov d16, {p}",
                "hvc #0",
                "fmov {b}, d16",
                p = in(reg) pattern,
                b = out(reg) back,
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

    #[unsafe(no_mangle)]
    extern "C" fn guest_main(id: u64, loops: u64, flags: u64) -> ! {
        let mut ok = true;
        if flags & 1 == 0 {
            puts("guest ");
            putn(id);
            puts(": hello from EL1\n");
            ok &= read_id() == id & 0xffff_ffff;
            ok &= touch_memory(id);
        }
        for i in 0..loops {
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
        let f = if ok {
            psci::SYSTEM_OFF
        } else {
            psci::SYSTEM_RESET
        };
        loop {
            hvc(u64::from(f), 0);
        }
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
