//! Booting a Linux guest through `/dev/pkvm` and running it: one thread per vCPU, the
//! [`Machine`] (devices, interrupts, power states) behind one lock, a condition variable for
//! vCPUs waiting in `WFI` or for `CPU_ON`, and `SIGUSR1` to kick a vCPU out of the guest when
//! another one sends it an interrupt.

use std::io::{self, Write};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use pkvm_abi::guest::{PSTATE_EL1H_DAIF, VcpuState};
use pkvm_client::Exit;
use pkvm_vmm_core::dev::{CREATE_PROTECTED, Create};
use pkvm_vmm_core::fdt::GuestFdt;
use pkvm_vmm_core::image::{self, Header};
use pkvm_vmm_core::layout::Layout;
use pkvm_vmm_core::machine::{End, Exits, Machine, Power, Step, VcpuRegs, entry_state};

use crate::dev::{self, ConsolePage, VcpuPage, Vm};

/// What to boot.
#[derive(Debug)]
pub struct Config<'a> {
    /// The arm64 `Image`.
    pub kernel: &'a [u8],
    /// The initramfs, if any.
    pub initrd: Option<&'a [u8]>,
    /// RAM bytes.
    pub mem: u64,
    /// vCPUs.
    pub cpus: usize,
    /// A protected VM.
    pub protected: bool,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// `/dev/pkvm`.
    pub device: &'a std::path::Path,
    /// Report when a console line first contains this text (the boot benchmark's mark).
    pub time_to: Option<&'a str>,
    /// When the VMM started (what `time_to` is measured from).
    pub started: std::time::Instant,
}

/// How the run went.
#[derive(Debug)]
pub struct Report {
    /// How the guest ended.
    pub end: Result<End, String>,
    /// Exit counts.
    pub exits: Exits,
    /// The module's counts.
    pub counts: pkvm_vmm_core::dev::Counts,
    /// Counter ticks from the start of the first run to the end, and their frequency.
    pub ticks: (u64, u64),
}

/// The shared state of the vCPU threads.
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    machine: Machine,
    /// How the guest ended, once it has.
    end: Option<Result<End, String>>,
    /// Each vCPU thread's id, and whether it is inside `PKVM_RUN`.
    threads: Vec<Option<dev::Thread>>,
    running: Vec<bool>,
    /// Bytes of the console line being printed.
    line: Vec<u8>,
    /// Whether [`Config::time_to`] has been seen.
    marked: bool,
    /// vCPU threads that have returned.
    exited: usize,
}

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sets up the VM (RAM, images, device tree, vCPU pages) and starts it at EL2.
fn build(cfg: &Config<'_>) -> io::Result<(Vm, Vec<VcpuPage>, ConsolePage, Layout)> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
    let layout = Layout::new(cfg.cpus, cfg.mem).map_err(|e| bad(&format!("layout: {e}")))?;
    let header = Header::parse(cfg.kernel).map_err(|e| bad(&format!("kernel: {e}")))?;
    let initrd_len = cfg.initrd.map_or(0, |i| i.len() as u64);
    let place = image::place(&layout, &header, initrd_len).map_err(|e| bad(&format!("{e}")))?;
    let dtb = GuestFdt {
        layout: &layout,
        bootargs: cfg.cmdline,
        initrd: place.initrd,
    }
    .build()
    .map_err(|e| bad(&format!("device tree: {e}")))?;
    let (ram_ipa, _) = layout.ram();
    let vm = Vm::open(cfg.device)?;
    let t_create = cfg.started.elapsed();
    vm.create(&Create {
        mem_size: cfg.mem,
        mem_ipa: ram_ipa,
        nr_vcpus: cfg.cpus as u64,
        flags: if cfg.protected { CREATE_PROTECTED } else { 0 },
    })?;
    let t_load = cfg.started.elapsed();
    vm.load(place.kernel, cfg.kernel)?;
    if let (Some(i), Some((ipa, _))) = (cfg.initrd, place.initrd) {
        vm.load(ipa, i)?;
    }
    vm.load(place.dtb, &dtb)?;
    let pages = (0..cfg.cpus)
        .map(|i| vm.map_vcpu(i))
        .collect::<io::Result<Vec<_>>>()?;
    let console = vm.map_console()?;
    for (i, p) in pages.iter().enumerate() {
        let mut st = VcpuState {
            pstate: PSTATE_EL1H_DAIF,
            ..VcpuState::default()
        };
        if i == 0 {
            st.pc = place.kernel;
            st.regs[0] = place.dtb;
        }
        p.init(&st);
    }
    let t_start = cfg.started.elapsed();
    vm.start()?;
    eprintln!(
        "pkvm-vmm: set up in {} ms: files read by {} ms, RAM allocated by {} ms, images loaded \
         by {} ms, VM started at EL2 (RAM {}) by {} ms",
        cfg.started.elapsed().as_millis(),
        t_create.as_millis(),
        t_load.as_millis(),
        t_start.as_millis(),
        if cfg.protected { "donated" } else { "shared" },
        cfg.started.elapsed().as_millis(),
    );
    Ok((vm, pages, console, layout))
}

/// Sleeps until vCPU `i` may run (on, probed, or idle with work) or the guest has ended
/// (`None`).
fn wait_turn<'a>(
    sh: &'a Shared,
    mut st: MutexGuard<'a, State>,
    i: usize,
    page: &VcpuPage,
) -> Option<MutexGuard<'a, State>> {
    loop {
        if st.end.is_some() {
            return None;
        }
        let (now, freq) = dev::counter();
        let timeout = match st.machine.power(i) {
            Power::On | Power::Probe => return Some(st),
            Power::Idle if st.machine.has_work(i, page, now) => {
                st.machine.set_power(i, Power::On);
                return Some(st);
            }
            // Idle: until the timer's deadline (and never longer than 100 ms: a lost wake-up
            // costs latency, never progress); off: until CPU_ON.
            Power::Idle => Machine::timer(page, now).1.map_or(100_000, |d| {
                (d.saturating_sub(now).saturating_mul(1_000_000) / freq.max(1)).min(100_000)
            }),
            Power::Off => 100_000,
        };
        st = sh
            .wake
            .wait_timeout(st, Duration::from_micros(timeout.max(1)))
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0;
    }
}

/// Ends the guest: records why, wakes every vCPU thread and kicks those in the guest.
fn finish(sh: &Shared, st: &mut State, end: Result<End, String>) {
    if st.end.is_none() {
        st.end = Some(end);
    }
    sh.wake.notify_all();
    kick_running(st, None);
}

/// Kicks every vCPU thread inside `PKVM_RUN` (but `except`) out of the guest.
fn kick_running(st: &State, except: Option<usize>) {
    for (k, (t, &r)) in st.threads.iter().zip(&st.running).enumerate() {
        if let (Some(t), true) = (t, r)
            && Some(k) != except
        {
            dev::kick(*t);
        }
    }
}

/// A byte of the guest's console: a whole line is printed (when `echo`) and checked for the
/// boot benchmark's mark.
fn putc(st: &mut State, c: u8, cfg: &Config<'_>, echo: bool) {
    if c == b'\n' {
        let line = core::mem::take(&mut st.line);
        if let Some(mark) = cfg.time_to
            && !st.marked
            && line.windows(mark.len()).any(|w| w == mark.as_bytes())
        {
            st.marked = true;
            eprintln!(
                "pkvm-vmm: '{mark}' after {} ms",
                cfg.started.elapsed().as_millis()
            );
        }
        if echo {
            let mut out = io::stdout().lock();
            let _ = out.write_all(&line);
            let _ = out.write_all(b"\n");
            let _ = out.flush();
        }
    } else if c != b'\r' && st.line.len() < 4096 {
        st.line.push(c);
    }
}

/// One vCPU's thread: wait for its turn, fill its list registers, run, handle the exit.
fn vcpu_thread(
    sh: &Shared,
    vm: &Vm,
    pages: &[VcpuPage],
    console: &ConsolePage,
    i: usize,
    cfg: &Config<'_>,
    echo: bool,
) {
    let page = &pages[i];
    lock(sh).threads[i] = Some(dev::this_thread());
    loop {
        let Some(mut st) = wait_turn(sh, lock(sh), i, page) else {
            return;
        };
        let now = dev::counter().0;
        st.machine.prepare(i, page, now);
        page.set_timer_sampled(now);
        st.running[i] = true;
        drop(st);
        let r = vm.run(i);
        let mut st = lock(sh);
        st.running[i] = false;
        let reason = match r {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e)
                if e.raw_os_error() == Some(libc::EPERM) && st.machine.power(i) == Power::Probe =>
            {
                // A protected vCPU its guest has not started yet (PSCI CPU_ON at EL2).
                drop(st);
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(e) => {
                finish(sh, &mut st, Err(format!("vCPU {i}: PKVM_RUN: {e}")));
                return;
            }
        };
        // What the module buffered came before this exit.
        let n = {
            let s = &mut *st;
            console.drain(|c| putc(s, c, cfg, echo))
        };
        st.machine.count_console_exits(n);
        let exit = Exit::decode(reason, &page.exit());
        let step = st.machine.handle(i, page, exit);
        console.set_fast_path(&st.machine.console_fast_path());
        match step {
            Step::Continue => {}
            Step::Console(c) => putc(&mut st, c, cfg, echo),
            Step::CpuOn {
                target,
                entry,
                context,
            } => {
                pages[target].init(&entry_state(entry, context));
                sh.wake.notify_all();
            }
            Step::End(e) => {
                finish(sh, &mut st, Ok(e));
                return;
            }
        }
        if let Exit::Sgi { .. } = exit {
            // Targets in WFI wake up; targets in the guest are kicked out to take the SGI.
            sh.wake.notify_all();
            kick_running(&st, Some(i));
        }
        if !st.machine.any_alive() {
            finish(
                sh,
                &mut st,
                Ok(End::PowerOff(u64::from(pkvm_abi::psci::CPU_OFF))),
            );
            return;
        }
    }
}

/// Boots and runs the guest to its end; the console goes to stdout when `echo`.
///
/// # Errors
/// Setting the VM up failed (bad image, a refused ioctl).
pub fn run(cfg: &Config<'_>, echo: bool) -> io::Result<Report> {
    dev::install_kick_handler()?;
    let (vm, pages, console, layout) = build(cfg)?;
    let nr_lrs = vm.stat(pkvm_abi::Stat::VgicListRegs)? as usize;
    let machine = Machine::new(layout, cfg.protected, nr_lrs)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    console.set_fast_path(&machine.console_fast_path());
    let sh = Shared {
        state: Mutex::new(State {
            machine,
            end: None,
            threads: vec![None; cfg.cpus],
            running: vec![false; cfg.cpus],
            line: Vec::new(),
            marked: false,
            exited: 0,
        }),
        wake: Condvar::new(),
    };
    let t0 = dev::counter();
    std::thread::scope(|s| {
        for i in 0..cfg.cpus {
            let (sh, vm, pages, console) = (&sh, &vm, &pages, &console);
            s.spawn(move || {
                vcpu_thread(sh, vm, pages, console, i, cfg, echo);
                lock(sh).exited += 1;
                sh.wake.notify_all();
            });
        }
        // Once the guest has ended, a vCPU thread still in the guest is kicked until it
        // leaves: a kick that landed just before its PKVM_RUN was taken in user space, and
        // a guest spinning with its interrupts masked may not exit for a long time.
        let mut st = lock(&sh);
        while st.exited < cfg.cpus {
            if st.end.is_some() {
                kick_running(&st, None);
            }
            st = sh
                .wake
                .wait_timeout(st, Duration::from_millis(10))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    });
    let t1 = dev::counter().0;
    let mut st = sh
        .state
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let counts = vm.counts()?;
    // The last bytes (a guest that powers off right after printing), and the reads the module
    // answered, as the exits they replaced.
    let n = console.drain(|c| putc(&mut st, c, cfg, echo));
    st.machine.count_console_exits(n + counts.console_reads);
    Ok(Report {
        end: st.end.unwrap_or_else(|| Err("no vCPU ran".into())),
        exits: st.machine.exits,
        counts,
        ticks: (t1 - t0.0, t0.1),
    })
}
