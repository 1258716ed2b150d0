//! Running the images in QEMU with a wall-clock timeout and recognising the result line.
//!
//! The host (or EL2, when it refuses to boot or panics) prints one machine-readable line,
//! `PKVM-RESULT pass` or `PKVM-RESULT fail <reason>`, then powers the machine off with PSCI
//! SYSTEM_OFF, which makes QEMU exit. The first result line decides, except that a failure
//! printed after a pass (before QEMU exits) turns the run into a failure. The runner streams the console to stdout while it looks
//! for that line; it kills QEMU when the timeout expires, or a short grace period after the
//! result line if QEMU does not exit by itself. A hung image never hangs xtask.

use pkvm_abi::boot::HOST_LOAD_ADDR;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-aarch64";
/// The machine: `virt` with EL2 (`virtualization=on`), a GICv3, and no EL3 so that PSCI `SMC`s
/// from EL2 go to QEMU's built-in PSCI (`secure=off`).
pub const MACHINE: &str = "virt,virtualization=on,gic-version=3,secure=off";
/// The machine-readable result line prefix.
pub const RESULT_PREFIX: &str = "PKVM-RESULT";
/// How long QEMU may keep running after the result line before it is killed.
pub const GRACE: Duration = Duration::from_secs(3);

/// What to run and how.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// `-cpu` model; `max` becomes `max,pauth-impdef=on` (3x faster pointer auth).
    pub cpu: String,
    /// Number of CPUs.
    pub smp: u32,
    /// RAM size, as QEMU's `-m` takes it.
    pub mem: String,
    /// `-icount shift=0`: one instruction per ns, deterministic counts.
    pub icount: bool,
    /// Wall-clock timeout from QEMU's start.
    pub timeout: Duration,
    /// Scenario for the host (`pkvm.scenario=`).
    pub scenario: String,
    /// Tell the host to hang instead of finishing (`pkvm.hang`).
    pub hang: bool,
    /// Guest lifecycles for the `guests` scenario (`pkvm.guests=N`).
    pub guests: Option<u64>,
    /// Parts of the scenario to run (`pkvm.parts=a,b`; the `hostile` scenario has parts).
    pub parts: Option<String>,
    /// Leave the host image out (EL2 must refuse to boot).
    pub no_host: bool,
    /// Boot the test build of EL2 (`pkvm-el2-debug`, with the debug hypercalls).
    pub debug_el2: bool,
    /// Extra QEMU arguments.
    pub extra: Vec<String>,
    /// A file QEMU loads with `-initrd` (named in the host's `/chosen`): the Linux guest's
    /// bundle of `--scenario linux-guest`.
    pub initrd: Option<std::path::PathBuf>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            cpu: "max".into(),
            smp: 1,
            mem: "1G".into(),
            icount: false,
            timeout: Duration::from_secs(60),
            scenario: "selftest".into(),
            hang: false,
            guests: None,
            parts: None,
            no_host: false,
            debug_el2: false,
            extra: Vec::new(),
            initrd: None,
        }
    }
}

/// The two images QEMU boots.
#[derive(Clone, Debug)]
pub struct Images {
    /// EL2 image (arm64 `Image`), given to `-kernel`.
    pub el2: PathBuf,
    /// Host image (arm64 `Image`), placed at [`HOST_LOAD_ADDR`] by the generic loader.
    pub host: PathBuf,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `PKVM-RESULT pass`.
    Pass,
    /// `PKVM-RESULT fail <reason>`.
    Fail(String),
    /// No result line before the timeout; QEMU was killed.
    TimedOut,
    /// QEMU exited (or closed its console) without a result line.
    NoResult(String),
    /// QEMU could not be started.
    Error(String),
}

impl Outcome {
    /// Whether the scenario passed.
    pub fn passed(&self) -> bool {
        *self == Outcome::Pass
    }

    /// One-line description.
    pub fn describe(&self, timeout: Duration) -> String {
        match self {
            Outcome::Pass => "PASS".into(),
            Outcome::Fail(r) => format!("FAIL: {r}"),
            Outcome::TimedOut => {
                format!(
                    "FAIL: no result line within {} s; QEMU killed",
                    timeout.as_secs_f64()
                )
            }
            Outcome::NoResult(why) => format!("FAIL: {why} without a result line"),
            Outcome::Error(e) => format!("FAIL: {e}"),
        }
    }
}

/// The QEMU arguments for a run.
pub fn args(images: &Images, opts: &RunOptions) -> Vec<String> {
    let cpu = if opts.cpu == "max" {
        "max,pauth-impdef=on".to_string()
    } else {
        opts.cpu.clone()
    };
    let mut a: Vec<String> = vec![
        "-M".into(),
        MACHINE.into(),
        "-cpu".into(),
        cpu,
        "-smp".into(),
        opts.smp.to_string(),
        "-m".into(),
        opts.mem.clone(),
        "-nographic".into(),
        "-no-reboot".into(),
        // No network card: QEMU would otherwise add a virtio-net PCI device, a DMA master no
        // IOMMU guards (out of pkvm-rs's scope, docs/SECURITY.md).
        "-nic".into(),
        "none".into(),
    ];
    if opts.icount {
        a.extend(["-icount".into(), "shift=0".into()]);
    }
    a.extend(["-kernel".into(), images.el2.display().to_string()]);
    if !opts.no_host {
        a.extend([
            "-device".into(),
            format!(
                "loader,file={},addr={HOST_LOAD_ADDR:#x},force-raw=on",
                images.host.display()
            ),
        ]);
    }
    let mut cmdline = format!("pkvm.scenario={}", opts.scenario);
    if opts.hang {
        cmdline.push_str(" pkvm.hang");
    }
    if let Some(n) = opts.guests {
        cmdline.push_str(&format!(" pkvm.guests={n}"));
    }
    if let Some(p) = &opts.parts {
        cmdline.push_str(&format!(" pkvm.parts={p}"));
    }
    a.extend(["-append".into(), cmdline]);
    if let Some(i) = &opts.initrd {
        a.extend(["-initrd".into(), i.display().to_string()]);
    }
    a.extend(opts.extra.iter().cloned());
    a
}

/// Quotes a command line for display (copy-pastable into a POSIX shell).
pub fn shell_line(program: &str, args: &[String]) -> String {
    let quote = |s: &str| {
        if !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_=,./:+@".contains(&b))
        {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    std::iter::once(quote(program))
        .chain(args.iter().map(|a| quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses a console line: `Some(outcome)` if it is a result line.
pub fn parse_result_line(line: &str) -> Option<Outcome> {
    let rest = line
        .trim_end_matches(['\r', '\n'])
        .strip_prefix(RESULT_PREFIX)?;
    let rest = rest.strip_prefix(' ').unwrap_or(rest).trim_end();
    Some(if rest == "pass" {
        Outcome::Pass
    } else if let Some(reason) = rest.strip_prefix("fail") {
        let reason = reason.trim();
        Outcome::Fail(if reason.is_empty() {
            "(no reason given)".into()
        } else {
            reason.into()
        })
    } else {
        Outcome::Fail(format!("malformed result line {line:?}"))
    })
}

enum Event {
    Result(Outcome),
    Eof,
}

/// Streams QEMU's console to stdout, sending every result line and end of file; returns the
/// console's lines.
fn console_reader(mut out: impl Read, tx: mpsc::Sender<Event>) -> Vec<String> {
    let mut buf = [0u8; 4096];
    let mut line = Vec::new();
    let mut lines = Vec::new();
    let stdout = io::stdout();
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut lock = stdout.lock();
            let _ = lock.write_all(&buf[..n]);
            let _ = lock.flush();
        }
        for &b in &buf[..n] {
            if b != b'\n' {
                line.push(b);
                continue;
            }
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            if let Some(r) = parse_result_line(&text) {
                let _ = tx.send(Event::Result(r));
            }
            lines.push(text);
            line.clear();
        }
    }
    let text = String::from_utf8_lossy(&line).to_string();
    if let Some(r) = parse_result_line(&text) {
        let _ = tx.send(Event::Result(r));
    }
    if !text.is_empty() {
        lines.push(text);
    }
    let _ = tx.send(Event::Eof);
    lines
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits up to `limit` for `child` to exit; kills it after that. Returns its status if it
/// exited by itself.
fn wait_or_kill(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(20)),
            _ => {
                kill(child);
                return None;
            }
        }
    }
}

/// Boots `images` in QEMU, streaming the console; returns the outcome and the time QEMU ran.
pub fn run(images: &Images, opts: &RunOptions) -> (Outcome, Duration) {
    let (outcome, ran, _) = run_capture(images, opts);
    (outcome, ran)
}

/// Like [`run`], also returning the console's lines.
pub fn run_capture(images: &Images, opts: &RunOptions) -> (Outcome, Duration, Vec<String>) {
    let args = args(images, opts);
    println!("xtask: {}", shell_line(QEMU, &args));
    for image in [Some(&images.el2), (!opts.no_host).then_some(&images.host)]
        .into_iter()
        .flatten()
    {
        if !Path::new(image).is_file() {
            return (
                Outcome::Error(format!("missing image {}", image.display())),
                Duration::ZERO,
                Vec::new(),
            );
        }
    }
    let start = Instant::now();
    let mut child = match Command::new(QEMU)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return (
                Outcome::Error(format!("cannot start {QEMU}: {e}")),
                Duration::ZERO,
                Vec::new(),
            );
        }
    };
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = thread::spawn(move || console_reader(stdout, tx));

    let deadline = start + opts.timeout;
    let mut result: Option<Outcome> = None;
    let mut grace_end: Option<Instant> = None;
    let mut note = None;
    loop {
        let until = grace_end.unwrap_or(deadline);
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Result(r)) => {
                // The first result line counts, except that a later failure (say, EL2 panicking
                // while it powers off) overrides a pass.
                match result {
                    None => {
                        result = Some(r);
                        grace_end = Some(Instant::now() + GRACE);
                    }
                    Some(Outcome::Pass) if r != Outcome::Pass => result = Some(r),
                    Some(_) => {}
                }
            }
            Ok(Event::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                kill(&mut child);
                if result.is_some() {
                    note = Some(format!(
                        "QEMU did not exit within {} s of the result line; killed",
                        GRACE.as_secs()
                    ));
                } else {
                    let lines = reader.join().unwrap_or_default();
                    println!();
                    return (Outcome::TimedOut, start.elapsed(), lines);
                }
                break;
            }
        }
    }
    // The console closed (QEMU is exiting) or we killed it: reap it.
    let status = wait_or_kill(&mut child, Duration::from_secs(5));
    let lines = reader.join().unwrap_or_default();
    let ran = start.elapsed();
    if let Some(n) = note {
        println!("\nxtask: {n}");
    }
    let outcome = match (result, status) {
        (Some(r), _) => r,
        (None, Some(s)) => Outcome::NoResult(format!("QEMU exited ({s})")),
        (None, None) => Outcome::NoResult("QEMU closed its console and had to be killed".into()),
    };
    (outcome, ran, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines() {
        assert_eq!(parse_result_line("PKVM-RESULT pass"), Some(Outcome::Pass));
        assert_eq!(parse_result_line("PKVM-RESULT pass\r"), Some(Outcome::Pass));
        assert_eq!(
            parse_result_line("PKVM-RESULT fail 2 of 9 checks failed"),
            Some(Outcome::Fail("2 of 9 checks failed".into()))
        );
        assert_eq!(
            parse_result_line("PKVM-RESULT fail"),
            Some(Outcome::Fail("(no reason given)".into()))
        );
        assert!(matches!(
            parse_result_line("PKVM-RESULT maybe"),
            Some(Outcome::Fail(_))
        ));
        assert_eq!(parse_result_line("  ok   PKVM-RESULT pass"), None);
        assert_eq!(parse_result_line("host: hello"), None);
    }

    #[test]
    fn command_line() {
        let images = Images {
            el2: "/t/el2.bin".into(),
            host: "/t/host.bin".into(),
        };
        let mut opts = RunOptions {
            hang: true,
            icount: true,
            ..RunOptions::default()
        };
        let a = args(&images, &opts).join(" ");
        assert!(a.contains("-cpu max,pauth-impdef=on"), "{a}");
        assert!(a.contains("-icount shift=0"), "{a}");
        assert!(
            a.contains("loader,file=/t/host.bin,addr=0x40200000,force-raw=on"),
            "{a}"
        );
        assert!(
            a.ends_with("-append pkvm.scenario=selftest pkvm.hang"),
            "{a}"
        );
        opts.cpu = "cortex-a72".into();
        opts.no_host = true;
        let a = args(&images, &opts).join(" ");
        assert!(a.contains("-cpu cortex-a72 "), "{a}");
        assert!(!a.contains("loader"), "{a}");
        assert_eq!(
            shell_line("q", &["a b".into(), "c,d=1".into(), "it's".into()]),
            r"q 'a b' c,d=1 'it'\''s'"
        );
    }
}
