//! `share_hyp(obj)` of objects smaller than a page (two in one page, one across two pages), and
//! host writes that EL2 reads through its own mapping.

use super::{hyp_maps, write};
use crate::checks::Checks;
use crate::env::Env;
use crate::pkvm::{self, HcallError, PKVM};
use core::sync::atomic::{AtomicU64, Ordering};
use pkvm_abi::{Error, PAGE_SHIFT, PAGE_SIZE, Stat};

/// Two objects sharing a page, shared independently.
#[repr(C, align(4096))]
struct TwoInOnePage {
    a: AtomicU64,
    b: AtomicU64,
}

static PAIR: TwoInOnePage = TwoInOnePage {
    a: AtomicU64::new(0),
    b: AtomicU64::new(0),
};

/// Checks that `r`, a call that must succeed, did.
fn done(c: &mut Checks, name: &'static str, r: Result<(), HcallError>) {
    c.check(name, r.is_ok(), format_args!("{r:?}"));
}

/// Checks that EL2 reads `want` at `pa` (DebugRead).
fn el2_reads(c: &mut Checks, name: &'static str, pa: u64, want: u64) {
    let r = PKVM.hyp_read(pa);
    let ok = r == Ok(want);
    c.check(name, ok, format_args!("DebugRead({pa:#x}) -> {r:x?}"));
}

/// Two objects in one page, each shared and unshared on its own; an object across two pages.
pub fn objects(c: &mut Checks, env: &mut Env) {
    println!("selftest: share_hyp(obj) of two objects in one page");
    let a_pa = core::ptr::from_ref(&PAIR.a) as u64;
    let b_pa = core::ptr::from_ref(&PAIR.b) as u64;
    PAIR.a.store(0xaaaa_0001, Ordering::SeqCst);
    PAIR.b.store(0xbbbb_0002, Ordering::SeqCst);
    let shared0 = pkvm::stat(Stat::SharedPages);
    done(c, "objects: share_hyp(&a)", pkvm::share_hyp(&PAIR.a));
    done(c, "objects: share_hyp(&b)", pkvm::share_hyp(&PAIR.b));
    c.eq(
        "objects: one page shared for both",
        pkvm::stat(Stat::SharedPages).wrapping_sub(shared0),
        1,
    );
    el2_reads(c, "objects: EL2 reads a", a_pa, 0xaaaa_0001);
    done(c, "objects: unshare_hyp(&a)", pkvm::unshare_hyp(&PAIR.a));
    PAIR.b.store(0xbbbb_0003, Ordering::SeqCst);
    let name = "objects: b still mapped at EL2 after a's unshare, new value seen";
    el2_reads(c, name, b_pa, 0xbbbb_0003);
    done(c, "objects: unshare_hyp(&b)", pkvm::unshare_hyp(&PAIR.b));
    hyp_maps(
        c,
        "objects: page unmapped at EL2 after the last unshare",
        b_pa,
        false,
    );
    let r = pkvm::unshare_hyp(&PAIR.a);
    c.check(
        "objects: unshare_hyp(&a) again -> EPERM",
        r == Err(HcallError::Errno(Error::Perm)),
        format_args!("{r:?}"),
    );

    // An object straddling a page boundary covers two pages.
    let two = env.pages(2, 0);
    let obj = two + PAGE_SIZE - 8;
    let r = pkvm::share_hyp_bytes(obj, 16);
    done(c, "objects: 16 bytes across a page boundary: one share call", r);
    c.eq(
        "objects: ... shares two pages",
        pkvm::stat(Stat::SharedPages).wrapping_sub(shared0),
        2,
    );
    done(c, "objects: ... and unshares them", pkvm::unshare_hyp_bytes(obj, 16));
    let r = pkvm::share_hyp_bytes(obj, 0);
    c.check(
        "objects: an empty object is refused without a hypercall",
        r == Err(HcallError::Errno(Error::Inval)),
        format_args!("{r:?}"),
    );
}

/// What the host writes to a shared page, EL2 reads.
pub fn host_writes_el2_reads(c: &mut Checks, env: &mut Env) {
    println!("selftest: host writes, EL2 reads");
    let pa = env.page();
    let w = write(pa + 0x80, 0x5eed_f00d_1234_5678);
    c.check(
        "write: host writes its page",
        w.is_ok(),
        format_args!("{w:x?}"),
    );
    done(c, "write: share the page", PKVM.share_hyp(pa >> PAGE_SHIFT, 1));
    let name = "write: EL2 reads the value the host wrote";
    el2_reads(c, name, pa + 0x80, 0x5eed_f00d_1234_5678);
    let w = write(pa + 0xff8, 0x0123_4567_89ab_cdef);
    let v = PKVM.hyp_read(pa + 0xff8);
    c.check(
        "write: a write while shared is seen by EL2",
        w.is_ok() && v == Ok(0x0123_4567_89ab_cdef),
        format_args!("write {w:x?}, DebugRead -> {v:x?}"),
    );
    done(c, "write: unshare the page", PKVM.unshare_hyp(pa >> PAGE_SHIFT, 1));
    hyp_maps(c, "write: EL2 no longer maps the page", pa, false);
}

