//! Illegal host accesses answered by the abort EL2 injects: a donated page (read, write,
//! instruction fetch; also one donated before its block was ever touched) and EL2's own memory.

use super::{read, write};
use crate::checks::Checks;
use crate::env::Env;
use crate::fault::{self, Abort, FSC_SEA};
use crate::pkvm::{self, PKVM};
use pkvm_abi::{PAGE_SHIFT, PAGE_SIZE, Stat};
use pkvm_arch::esr::Ec;

/// What an access probe did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Exec,
}

/// Checks that `r` is the abort EL2 injects for the probe access `kind` to `addr`: EC and FSC,
/// FAR = `addr`, ELR = the probe's instruction (for a fetch: `addr` itself), SPSR = the
/// interrupted EL1h state with its DAIF, and for data accesses WnR.
pub fn injected(
    c: &mut Checks,
    name: &'static str,
    r: Result<u64, Abort>,
    addr: u64,
    kind: Access,
) -> bool {
    let spsr_bits = fault::expected_spsr_mode_bits();
    let (ec, insn) = match kind {
        Access::Read => (Ec::DabtCur.bits(), fault::load_insn()),
        Access::Write => (Ec::DabtCur.bits(), fault::store_insn()),
        Access::Exec => (Ec::IabtCur.bits(), addr),
    };
    match r {
        Ok(v) => c.check(
            name,
            false,
            format_args!("no abort: the {kind:?} access to {addr:#x} succeeded ({v:#x})"),
        ),
        Err(a) => {
            let class_ok = match kind {
                Access::Exec => a.is_injected_instruction_abort(),
                Access::Read => a.is_injected_data_abort() && a.is_write() == Some(false),
                Access::Write => a.is_injected_data_abort() && a.is_write() == Some(true),
            };
            c.check(
                name,
                class_ok
                    && a.far == addr
                    && a.elr == insn
                    && a.spsr & fault::SPSR_MODE_MASK == spsr_bits,
                format_args!(
                    "{a}; want EC {ec:#x} FSC {:#x}{} FAR {addr:#x} ELR {insn:#x} SPSR \
                     mode/DAIF {spsr_bits:#x}",
                    FSC_SEA,
                    match kind {
                        Access::Read => " WnR 0",
                        Access::Write => " WnR 1",
                        Access::Exec => "",
                    }
                ),
            )
        }
    }
}

/// A donated page: data and instruction accesses abort; after the give-back they work.
pub fn donated_page(c: &mut Checks, env: &mut Env) {
    println!("selftest: host access to a donated page");
    let pa = env.pages(2, 0);
    let next = pa + PAGE_SIZE;
    let w = write(pa, 1).and(write(next, 2));
    c.check(
        "donated: host touches two pages first",
        w.is_ok(),
        format_args!("{w:x?}"),
    );
    let aborts0 = pkvm::stat(Stat::InjectedAborts);
    let r = PKVM.donate_hyp(pa >> PAGE_SHIFT, 1);
    c.check(
        "donated: donate the first page",
        r.is_ok(),
        format_args!("{r:?}"),
    );
    injected(
        c,
        "donated: host read gets an injected synchronous external abort",
        read(pa + 8),
        pa + 8,
        Access::Read,
    );
    injected(
        c,
        "donated: host write gets an injected synchronous external abort",
        write(pa + 16, 3).map(|()| 0),
        pa + 16,
        Access::Write,
    );
    let v = read(next);
    let w = write(next, 4);
    c.check(
        "donated: the neighbouring page is still the host's",
        v == Ok(2) && w.is_ok(),
        format_args!("read {v:x?}, write {w:x?}"),
    );
    c.eq(
        "donated: EL2 counted two injected aborts",
        pkvm::stat(Stat::InjectedAborts).wrapping_sub(aborts0),
        2,
    );
    let ver = PKVM.version();
    c.check(
        "donated: EL2 still answers hypercalls",
        ver.is_ok(),
        format_args!("{ver:x?}"),
    );
    let r = PKVM.hyp_donate_host(pa >> PAGE_SHIFT, 1);
    c.check(
        "donated: reclaim with hyp_donate_host",
        r.is_ok(),
        format_args!("{r:?}"),
    );
    let w = write(pa + 8, 0xfeed);
    let v = read(pa + 8);
    c.check(
        "donated: the host writes the reclaimed page again",
        w.is_ok() && v == Ok(0xfeed),
        format_args!("write {w:x?}, read {v:x?}"),
    );

    // A page donated before the host ever touched its block: the lazy fault path must map the
    // rest of the block around it, never over it.
    let blk = env.pages(512, 2 << 20);
    let pfn = (blk >> PAGE_SHIFT) + 5;
    let r = PKVM.donate_hyp(pfn, 1);
    c.check(
        "donated (untouched block): donate a page",
        r.is_ok(),
        format_args!("{r:?}"),
    );
    injected(
        c,
        "donated (untouched block): first host touch aborts",
        read(pfn << PAGE_SHIFT),
        pfn << PAGE_SHIFT,
        Access::Read,
    );
    let around = [
        blk,
        (pfn - 1) << PAGE_SHIFT,
        (pfn + 1) << PAGE_SHIFT,
        blk + (2 << 20) - 8,
    ];
    let bad = around
        .iter()
        .map(|&a| (a, write(a, a).and_then(|()| read(a))))
        .find(|(a, r)| *r != Ok(*a));
    c.check(
        "donated (untouched block): the rest of the block is the host's",
        bad.is_none(),
        format_args!("{bad:x?}"),
    );
    let r = PKVM.hyp_donate_host(pfn, 1);
    c.check(
        "donated (untouched block): reclaim",
        r.is_ok(),
        format_args!("{r:?}"),
    );
    let w = write(pfn << PAGE_SHIFT, 7).and_then(|()| read(pfn << PAGE_SHIFT));
    c.check(
        "donated (untouched block): reclaimed page usable",
        w == Ok(7),
        format_args!("{w:x?}"),
    );

    // Instruction fetches: a page of host code donated to EL2.
    let code = fault::exec_page();
    let r = fault::probe_exec();
    c.check(
        "donated code: the host runs its exec probe page",
        r.is_ok(),
        format_args!("{r:x?}"),
    );
    let r = PKVM.donate_hyp(code >> PAGE_SHIFT, 1);
    c.check(
        "donated code: donate the page",
        r.is_ok(),
        format_args!("{r:?}"),
    );
    injected(
        c,
        "donated code: executing it gets an injected instruction abort",
        fault::probe_exec().map(|()| 0),
        code,
        Access::Exec,
    );
    let r = PKVM.hyp_donate_host(code >> PAGE_SHIFT, 1);
    c.check("donated code: reclaim", r.is_ok(), format_args!("{r:?}"));
    let r = fault::probe_exec();
    c.check(
        "donated code: the host runs the reclaimed page again",
        r.is_ok(),
        format_args!("{r:x?}"),
    );
}

/// EL2's carve-out and image: host reads abort.
pub fn el2_memory(c: &mut Checks, env: &mut Env) {
    println!("selftest: host access to EL2's memory");
    let aborts0 = pkvm::stat(Stat::InjectedAborts);
    let mut expected = 0;
    if let Some(co) = env.carveout() {
        for (name, addr) in [
            (
                "EL2 memory: host read of the carve-out's first page aborts",
                co.start,
            ),
            (
                "EL2 memory: host read of the carve-out's last word aborts",
                co.end - 8,
            ),
        ] {
            injected(c, name, read(addr), addr, Access::Read);
            expected += 1;
        }
    }
    let img = pkvm_abi::boot::EL2_LOAD_ADDR;
    injected(
        c,
        "EL2 memory: host read of EL2's image aborts",
        read(img),
        img,
        Access::Read,
    );
    expected += 1;
    c.eq(
        "EL2 memory: EL2 counted each injected abort",
        pkvm::stat(Stat::InjectedAborts).wrapping_sub(aborts0),
        expected,
    );
}
