//! The initramfs of `run --host linux`: a `newc` cpio ([`crate::cpio`]) holding busybox,
//! `/init` and the test driver, written to `target/linux/<abi>/initramfs.cpio`.
//!
//! `/init` is `xtask/templates/init.sh`, with `{{NAME}}` placeholders for what the Rust side
//! also knows: the result line's prefix, the boot benchmark's marker, the kernel parameters.

use super::{BENCH_PARAM, CPUS_PARAM, INIT_MARKER, MEASURE_PARAM, cache_dir};
use crate::cpio::Cpio;
use crate::qemu::RESULT_PREFIX;
use crate::{Error, failed};
use std::fs;
use std::path::{Path, PathBuf};

/// The `/init` script, before substitution.
const INIT_TEMPLATE: &str = include_str!("../../templates/init.sh");
/// The start every host `/init` shares (`{{PROLOGUE}}`): `PATH`, busybox, the mounts, `fail`,
/// the first marker. Its first line (a comment about itself) is not part of it.
const PROLOGUE: &str = include_str!("../../templates/init-prologue.sh");

/// `template` with `{{PROLOGUE}}` and then every `{{NAME}}` replaced by its value in `vars`;
/// panics on a placeholder left over (a template and its code out of step).
pub(super) fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let prologue = PROLOGUE.split_once('\n').map_or("", |(_, rest)| rest);
    let mut text = template.replace("{{PROLOGUE}}\n", prologue);
    for (name, value) in vars {
        text = text.replace(&format!("{{{{{name}}}}}"), value);
    }
    if let Some(at) = text.find("{{") {
        let rest = &text[at..];
        let placeholder = &rest[..rest.find("}}").map_or(rest.len(), |e| e + 2)];
        panic!("template placeholder {placeholder} has no value");
    }
    text
}

/// The `/init` of the initramfs.
pub(super) fn init_script() -> String {
    render(
        INIT_TEMPLATE,
        &[
            ("RESULT", RESULT_PREFIX),
            ("INIT_MARKER", INIT_MARKER),
            ("CPUS_PARAM", CPUS_PARAM),
            ("BENCH_PARAM", BENCH_PARAM),
            ("MEASURE_PARAM", MEASURE_PARAM),
        ],
    )
}

/// A cpio with the directories, `/dev/console`, busybox (from the extracted packages at
/// `root`) as `/bin/busybox` and `/bin/sh`, and `init` as `/init`: the base of the host's and
/// the guest's initramfs.
pub(super) fn busybox_cpio(root: &Path, init: &str) -> Result<Cpio, Error> {
    let busybox = root.join("bin/busybox");
    let bb = fs::read(&busybox).or_else(|e| failed(format!("{}: {e}", busybox.display())))?;
    let mut c = Cpio::new();
    for d in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp",
    ] {
        c.dir(d, 0o755);
    }
    c.char_dev("dev/console", 0o600, 5, 1);
    c.file("bin/busybox", 0o755, &bb);
    c.symlink("bin/sh", "busybox");
    c.file("init", 0o755, init.as_bytes());
    Ok(c)
}

/// Writes the initramfs `name`: busybox, `init` as `/init`, the modules, and `extra` files
/// (name, bytes) — the `vmm` scenario's VMM and guest.
pub(super) fn build(
    abi: &str,
    root: &Path,
    modules: &super::driver::Modules,
    init: &str,
    extra: &[(&str, Vec<u8>)],
    name: &str,
) -> Result<PathBuf, Error> {
    let mut c = busybox_cpio(root, init)?;
    for (file, path) in [("pkvm_test.ko", &modules.test), ("pkvm.ko", &modules.dev)] {
        let ko = fs::read(path).or_else(|e| failed(format!("{}: {e}", path.display())))?;
        c.file(file, 0o644, &ko);
    }
    let mut dirs: Vec<&str> = Vec::new();
    for (file, data) in extra {
        if let Some((dir, _)) = file.rsplit_once('/')
            && !dirs.contains(&dir)
        {
            c.dir(dir, 0o755);
            dirs.push(dir);
        }
        c.file(file, 0o755, data);
    }
    let out = cache_dir().join(abi).join(name);
    fs::write(&out, c.finish()).or_else(|e| failed(format!("{}: {e}", out.display())))?;
    println!("xtask: initramfs {}", out.display());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_is_complete() {
        let init = init_script();
        assert!(init.starts_with("#!/bin/sh\n"), "{init}");
        assert!(!init.contains("{{") && !init.contains("}}"), "{init}");
        assert!(
            init.contains(r#"fail() { echo "PKVM-RESULT fail $*";"#),
            "{init}"
        );
        assert!(init.contains(r#"echo "PKVM-INIT /init started"#), "{init}");
        assert!(init.contains("sed -n 's/^pkvm.cpus=//p'"), "{init}");
        assert!(init.contains("grep -q pkvm.bench /proc/cmdline"), "{init}");
        assert!(
            init.contains("grep -q pkvm.measure /proc/cmdline"),
            "{init}"
        );
        assert!(init.ends_with("echo \"PKVM-RESULT pass\"\npoweroff -f\nsleep 30\n"));
    }

    #[test]
    fn render_substitutes_and_checks() {
        assert_eq!(
            render("a {{X}} b {{X}}{{Y}}", &[("X", "1"), ("Y", "2")]),
            "a 1 b 12"
        );
        let r = std::panic::catch_unwind(|| render("a {{X}} {{Z}}", &[("X", "1")]));
        let msg = *r.unwrap_err().downcast::<String>().unwrap();
        assert_eq!(msg, "template placeholder {{Z}} has no value");
    }
}
