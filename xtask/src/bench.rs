//! `cargo xtask bench`: boots the host's `bench` scenario twice under `-icount shift=0`,
//! collects its `PKVM-BENCH <name> <count> samples=[...]` lines, fails unless both boots printed
//! exactly the same figures, and prints them as a table beside Linux 6.1 pKVM's figures and
//! pkvm-rs's targets.

use crate::images::build_image_set;
use crate::qemu::{self, Images, RunOptions};
use crate::{Error, failed, prereq};

/// Prefix of a figure line on the console.
pub const BENCH_PREFIX: &str = "PKVM-BENCH";

/// How many boots must agree.
pub const BOOTS: usize = 2;

/// One measured figure: `name`, EL2 instructions (minimum over the samples), and the samples
/// as printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Figure {
    /// Operation name, as the host prints it.
    pub name: String,
    /// EL2 instructions (the minimum sample).
    pub count: u64,
    /// The rest of the line (the samples).
    pub samples: String,
}

/// Parses the figure lines out of a console log.
pub fn parse(lines: &[String]) -> Result<Vec<Figure>, String> {
    let mut out = Vec::new();
    for l in lines {
        let Some(rest) = l.trim_end().strip_prefix(BENCH_PREFIX) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(count)) = (words.next(), words.next()) else {
            return Err(format!("malformed line {l:?}"));
        };
        let count = count.parse().map_err(|_| format!("bad count in {l:?}"))?;
        out.push(Figure {
            name: name.to_string(),
            count,
            samples: words.collect::<Vec<_>>().join(" "),
        });
    }
    Ok(out)
}

/// A row of the table.
struct Row {
    label: &'static str,
    name: &'static str,
    /// The figure covers this many pages (a per-page column is shown when > 1).
    pages: u64,
    /// Linux 6.1 pKVM on this QEMU (measured once, see docs/PERFORMANCE.md).
    linux: &'static str,
    /// Target: at most this many EL2 instructions (per page when `pages` > 1).
    target: Option<u64>,
}

const ROWS: &[Row] = &[
    Row {
        label: "empty hypercall (Version)",
        name: "hvc_version",
        pages: 1,
        linux: "96",
        target: Some(60),
    },
    Row {
        label: "unknown hypercall id",
        name: "hvc_unknown",
        pages: 1,
        linux: "-",
        target: None,
    },
    Row {
        label: "share_hyp, 1 page",
        name: "share_1",
        pages: 1,
        linux: "2,305",
        target: Some(500),
    },
    Row {
        label: "unshare_hyp, 1 page",
        name: "unshare_1",
        pages: 1,
        linux: "2,741",
        target: Some(600),
    },
    Row {
        label: "share_hyp, 512 pages in one call",
        name: "share_512",
        pages: 512,
        linux: "(no ranges)",
        target: Some(100),
    },
    Row {
        label: "unshare_hyp, 512 pages in one call",
        name: "unshare_512",
        pages: 512,
        linux: "(no ranges)",
        target: Some(100),
    },
    Row {
        label: "host stage-2 fault (first touch of a 2 MiB block)",
        name: "host_fault",
        pages: 1,
        linux: "≈1,361",
        target: Some(500),
    },
    Row {
        label: "whole VM lifecycle (create, share structures, run to power-off, destroy)",
        name: "vm_lifecycle",
        pages: 1,
        linux: "≈26k–32k",
        target: Some(8000),
    },
    Row {
        label: "guest HVC exit to the host and back (vcpu_run round trip)",
        name: "guest_hvc_roundtrip",
        pages: 1,
        linux: "≈432 + ≈627",
        target: Some(400),
    },
    Row {
        label: "the same, guest using FP between exits (lazy FP switch)",
        name: "guest_hvc_roundtrip_fp",
        pages: 1,
        linux: "-",
        target: None,
    },
    Row {
        label: "the same, the virtual GIC on (one list register loaded and saved)",
        name: "guest_hvc_roundtrip_vgic",
        pages: 1,
        linux: "-",
        target: None,
    },
    Row {
        label: "whole protected-VM lifecycle (RAM donated, reclaimed zeroed)",
        name: "pvm_lifecycle",
        pages: 1,
        linux: "-",
        target: None,
    },
    Row {
        label: "HostDonateGuest, 128 pages in one call",
        name: "donate_guest_128",
        pages: 128,
        linux: "-",
        target: None,
    },
    Row {
        label: "reclaim of a dying protected VM, one batch of 64 pages (zeroing included)",
        name: "reclaim_64",
        pages: 64,
        linux: "-",
        target: Some(150),
    },
    Row {
        label: "guest MEM_SHARE + MEM_UNSHARE (at EL2) plus a hypercall round trip",
        name: "guest_mem_share_roundtrip",
        pages: 1,
        linux: "-",
        target: None,
    },
    Row {
        label: "second share_hyp of a shared page",
        name: "share_again",
        pages: 1,
        linux: "(EPERM)",
        target: None,
    },
];

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The figures as a Markdown table (what docs/PERFORMANCE.md shows).
pub fn table(figs: &[Figure]) -> String {
    let mut t = String::from(
        "| operation | pkvm-rs | per page | Linux 6.1 pKVM | target | met |\n\
         |---|---:|---:|---:|---:|:---:|\n",
    );
    let mut known = Vec::new();
    for r in ROWS {
        known.push(r.name);
        let Some(f) = figs.iter().find(|f| f.name == r.name) else {
            t.push_str(&format!(
                "| {} | (missing) | | {} | | |\n",
                r.label, r.linux
            ));
            continue;
        };
        let per_page = f.count.div_ceil(r.pages);
        let (per, target, met) = match (r.pages, r.target) {
            (1, Some(x)) => (
                String::new(),
                format!("≤ {x}"),
                if f.count <= x { "yes" } else { "no" },
            ),
            (_, Some(x)) => (
                thousands(per_page),
                format!("≤ {x} per page"),
                if per_page <= x { "yes" } else { "no" },
            ),
            (1, None) => (String::new(), "-".into(), ""),
            (_, None) => (thousands(per_page), "-".into(), ""),
        };
        t.push_str(&format!(
            "| {} | {} | {per} | {} | {target} | {met} |\n",
            r.label,
            thousands(f.count),
            r.linux
        ));
    }
    for f in figs.iter().filter(|f| !known.contains(&f.name.as_str())) {
        t.push_str(&format!(
            "| `{}` | {} | | | | |\n",
            f.name,
            thousands(f.count)
        ));
    }
    t
}

/// Boots the bench scenario [`BOOTS`] times; the figures if every boot passed and all agree.
pub fn bench_boots(images: &Images, opts: &RunOptions) -> Result<Vec<Figure>, Error> {
    let mut runs: Vec<Vec<Figure>> = Vec::new();
    for i in 1..=BOOTS {
        println!("xtask: bench boot {i} of {BOOTS}");
        let (outcome, ran, lines) = qemu::run_capture(images, opts);
        println!(
            "xtask: boot {i}: {} ({:.1} s in QEMU)",
            outcome.describe(opts.timeout),
            ran.as_secs_f64()
        );
        if !outcome.passed() {
            return failed(format!("bench boot {i} failed"));
        }
        let figs = parse(&lines).or_else(|e| failed(format!("bench boot {i}: {e}")))?;
        if figs.is_empty() {
            return failed(format!("bench boot {i} printed no {BENCH_PREFIX} lines"));
        }
        runs.push(figs);
    }
    let first = &runs[0];
    for (i, other) in runs.iter().enumerate().skip(1) {
        if other != first {
            for (a, b) in first.iter().zip(other) {
                if a != b {
                    eprintln!(
                        "xtask: {} differs: boot 1 {} {}, boot {} {} {}",
                        a.name,
                        a.count,
                        a.samples,
                        i + 1,
                        b.count,
                        b.samples
                    );
                }
            }
            return failed(format!(
                "bench boots 1 and {} measured different figures (is -icount on?)",
                i + 1
            ));
        }
    }
    Ok(runs.swap_remove(0))
}

/// Default options of `cargo xtask bench`: the `bench` scenario under `-icount`.
pub fn default_options() -> RunOptions {
    RunOptions {
        icount: true,
        scenario: "bench".into(),
        ..RunOptions::default()
    }
}

/// `cargo xtask bench`.
pub fn cmd_bench(opts: &RunOptions) -> Result<(), Error> {
    prereq::ensure_targets()?;
    prereq::ensure_qemu()?;
    if opts.scenario == crate::linux::vmm::SCENARIO {
        return crate::linux::vmm::bench(opts);
    }
    if opts.scenario == crate::LINUX_GUEST {
        return crate::linux::guest_bench::bench(opts);
    }
    if !opts.icount {
        println!("xtask: warning: without -icount the counts are not instruction counts");
    }
    let images = build_image_set(false)?;
    let figs = bench_boots(&images, opts)?;
    println!(
        "\nEL2 instructions per operation ({BOOTS} boots, identical; -cpu {}{}):\n",
        opts.cpu,
        if opts.icount { ", -icount shift=0" } else { "" }
    );
    print!("{}", table(&figs));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_table() {
        let lines: Vec<String> = [
            "host: hello",
            "PKVM-BENCH hvc_version 51 samples=[51, 51]",
            "  ok   hvc_version: 51 EL2 instructions",
            "PKVM-BENCH share_512 31404 samples=[31404]\r",
            "PKVM-BENCH extra 7 samples=[7]",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let f = parse(&lines).unwrap();
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].name, "hvc_version");
        assert_eq!(f[0].count, 51);
        assert_eq!(f[0].samples, "samples=[51, 51]");
        let t = table(&f);
        assert!(
            t.contains("| empty hypercall (Version) | 51 |  | 96 | ≤ 60 | yes |"),
            "{t}"
        );
        assert!(
            t.contains("| share_hyp, 512 pages in one call | 31,404 | 62 | (no ranges) | ≤ 100 per page | yes |"),
            "{t}"
        );
        assert!(t.contains("| share_hyp, 1 page | (missing) |"), "{t}");
        assert!(t.contains("| `extra` | 7 |"), "{t}");
        assert!(parse(&["PKVM-BENCH x".to_string()]).is_err());
        assert!(parse(&["PKVM-BENCH x y".to_string()]).is_err());
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }
}
