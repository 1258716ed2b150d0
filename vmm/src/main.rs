//! `pkvm-vmm`: the user-space VMM of pkvm-rs's Linux host. It boots an arm64 Linux guest —
//! protected (RAM donated: the host cannot read it) or not — through `/dev/pkvm`
//! (`linux/pkvm.c`), with the VMM core of `crates/vmm` (guest layout, `Image` placement,
//! device tree, UART and GIC models, exit handling) and one thread per vCPU.
//!
//! ```text
//! pkvm-vmm run --kernel Image --initrd rootfs.cpio --mem 112M --cpus 2 --protected
//! pkvm-vmm stat      # EL2's leak counters
//! pkvm-vmm check     # the module's refusals, each errno checked
//! pkvm-vmm bench     # the cost of a vCPU run round trip through the module
//! ```
//!
//! Exit status of `run`: 0 the guest powered off (PSCI `SYSTEM_OFF`), 2 it reset (`SYSTEM_RESET`:
//! a `reboot`, or a kernel panic with `panic=-1`), 3 it faulted (an exit the VMM cannot handle),
//! 1 the VM could not be set up or run.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod bench;
mod check;
mod dev;
mod run;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pkvm_abi::{Stat, psci};
use pkvm_vmm_core::machine::End;

/// The default kernel command line: the guest's 16550 console.
const CMDLINE: &str = "console=ttyS0 earlycon=uart8250,mmio,0x9000000 rdinit=/init panic=-1 cma=0";

#[derive(Parser, Debug)]
#[command(
    name = "pkvm-vmm",
    version,
    about = "Runs Linux guests on pkvm-rs through /dev/pkvm"
)]
struct Cli {
    /// The device.
    #[arg(long, global = true, default_value = "/dev/pkvm")]
    device: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Boot a guest and run it until it powers off; its console on stdout.
    Run {
        /// The arm64 `Image` (uncompressed).
        #[arg(long)]
        kernel: PathBuf,
        /// The initramfs.
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// Guest RAM: bytes, or with a K/M/G suffix (a multiple of 2 MiB, at most 112M).
        #[arg(long, default_value = "112M", value_parser = parse_size)]
        mem: u64,
        /// vCPUs (1 to 4).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=4))]
        cpus: u8,
        /// A protected VM: its RAM is donated (the host cannot read it) and comes back zeroed.
        #[arg(long)]
        protected: bool,
        /// The kernel command line.
        #[arg(long, default_value = CMDLINE)]
        cmdline: String,
        /// Do not print the guest's console (only the summary).
        #[arg(long)]
        quiet: bool,
        /// Report, on stderr, when a console line first contains this text (milliseconds since
        /// the VMM started): a boot benchmark's mark.
        #[arg(long, value_name = "TEXT")]
        time_to: Option<String>,
    },
    /// Print EL2's statistics (the leak counters after guests are gone).
    Stat,
    /// Ask the module for everything it must refuse, and check each errno.
    Check,
    /// Measure a vCPU run round trip through the module (an MMIO-reading guest).
    Bench {
        /// Round trips measured.
        #[arg(long, default_value_t = 2000)]
        iterations: u64,
        /// A protected VM.
        #[arg(long)]
        protected: bool,
        /// The guest's virtual GIC interface on (as a Linux guest has it).
        #[arg(long)]
        vgic: bool,
    },
}

/// `123`, `64K`, `112M`, `1G`.
fn parse_size(s: &str) -> Result<u64, String> {
    let (num, shift) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = num.parse().map_err(|_| format!("not a size: {s}"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("too big: {s}"))
}

fn read(p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// The statistics `stat` prints: the leak counters first.
const STATS: [(Stat, &str); 8] = [
    (Stat::LiveVms, "live_vms"),
    (Stat::GuestOwnedPages, "guest_owned_pages"),
    (Stat::GuestSharedPages, "guest_shared_pages"),
    (Stat::DonatedPages, "donated_pages"),
    (Stat::HypMappedHostPages, "hyp_mapped_host_pages"),
    (Stat::SharedPages, "shared_pages"),
    (Stat::PinnedPages, "pinned_pages"),
    (Stat::PoolFreePages, "pool_free_pages"),
];

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            kernel,
            initrd,
            mem,
            cpus,
            protected,
            cmdline,
            quiet,
            time_to,
        } => {
            let kernel = match read(&kernel) {
                Ok(k) => k,
                Err(e) => return fail(&e),
            };
            let initrd = match initrd.as_deref().map(read).transpose() {
                Ok(i) => i,
                Err(e) => return fail(&e),
            };
            let cfg = run::Config {
                kernel: &kernel,
                initrd: initrd.as_deref(),
                mem,
                cpus: usize::from(cpus),
                protected,
                cmdline: &cmdline,
                device: &cli.device,
                time_to: time_to.as_deref().filter(|t| !t.is_empty()),
                started,
            };
            let r = match run::run(&cfg, !quiet) {
                Ok(r) => r,
                Err(e) => return fail(&format!("cannot run the guest: {e}")),
            };
            let ms = r.ticks.0.saturating_mul(1000) / r.ticks.1.max(1);
            let e = r.exits;
            eprintln!(
                "pkvm-vmm: {} guest, {cpus} vCPU(s), {} MiB: {} after {ms} ms; exits: mmio {} \
                 (uart {}), hvc {}, idle {}, irq {}, sgi {}, injected {}; module: {} runs, {} \
                 interrupt exits kept in the kernel, {} console writes buffered and {} reads \
                 answered there, {} returns",
                if protected {
                    "protected"
                } else {
                    "non-protected"
                },
                mem >> 20,
                match &r.end {
                    Ok(end) => end.to_string(),
                    Err(e) => e.clone(),
                },
                e.mmio,
                e.uart,
                e.hvc,
                e.idle,
                e.irq,
                e.sgi,
                e.injected,
                r.counts.runs,
                r.counts.irq_exits,
                r.counts.console_writes,
                r.counts.console_reads,
                r.counts.returns,
            );
            match r.end {
                Ok(End::PowerOff(f)) if f == u64::from(psci::SYSTEM_OFF) => ExitCode::SUCCESS,
                Ok(End::PowerOff(f)) if f == u64::from(psci::SYSTEM_RESET) => ExitCode::from(2),
                Ok(End::PowerOff(_)) => ExitCode::SUCCESS,
                Ok(End::Fault(..)) => ExitCode::from(3),
                Err(_) => ExitCode::from(1),
            }
        }
        Cmd::Stat => {
            let vm = match dev::Vm::open(&cli.device) {
                Ok(v) => v,
                Err(e) => return fail(&format!("{}: {e}", cli.device.display())),
            };
            for (s, name) in STATS {
                match vm.stat(s) {
                    Ok(v) => println!("{name} {v}"),
                    Err(e) => return fail(&format!("stat {name}: {e}")),
                }
            }
            ExitCode::SUCCESS
        }
        Cmd::Check => match check::run(&cli.device) {
            Ok((p, 0)) => {
                println!("pkvm-vmm check: {p} passed, 0 failed");
                ExitCode::SUCCESS
            }
            Ok((p, f)) => {
                println!("pkvm-vmm check: {p} passed, {f} failed");
                ExitCode::from(1)
            }
            Err(e) => fail(&format!("check: {e}")),
        },
        Cmd::Bench {
            iterations,
            protected,
            vgic,
        } => match bench::run(&cli.device, protected, vgic, 200, iterations) {
            Ok(f) => {
                let n = f.round_trips.max(1);
                // Under QEMU -icount shift=0 an instruction is one nanosecond of virtual time.
                let ns = f.ticks.0 as u128 * 1_000_000_000 / u128::from(f.ticks.1.max(1));
                println!(
                    "PKVM-VMM-BENCH protected={protected} vgic={vgic} round_trips={} \
                     ns_per_round_trip={} \
                     el2_instructions_per_round_trip={} runs={} irq_exits={}",
                    f.round_trips,
                    ns / u128::from(n),
                    f.counts.el2_instructions / n,
                    f.counts.runs,
                    f.counts.irq_exits
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("bench: {e}")),
        },
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("pkvm-vmm: {msg}");
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_size("112M"), Ok(112 << 20));
        assert_eq!(parse_size("2m"), Ok(2 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("M").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn the_command_line_parses() {
        let c = Cli::try_parse_from([
            "pkvm-vmm",
            "run",
            "--kernel",
            "k",
            "--initrd",
            "i",
            "--mem",
            "64M",
            "--cpus",
            "2",
            "--protected",
        ])
        .unwrap();
        let Cmd::Run {
            mem,
            cpus,
            protected,
            ..
        } = c.cmd
        else {
            panic!("{c:?}");
        };
        assert_eq!((mem, cpus, protected), (64 << 20, 2, true));
        assert!(Cli::try_parse_from(["pkvm-vmm", "run", "--kernel", "k", "--cpus", "5"]).is_err());
        assert!(
            Cli::try_parse_from(["pkvm-vmm", "run"]).is_err(),
            "a kernel is required"
        );
    }
}
