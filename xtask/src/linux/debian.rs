//! The Debian side of `run --host linux`: the arm64 architecture in dpkg, which kernel ABI the
//! archive's `linux-image-arm64` metapackage names, the `.deb` files of that kernel, its
//! headers and kbuild and of `busybox-static` (downloaded once into `target/linux/debs/`), and
//! their extraction into `target/linux/<abi>/root/`.

use super::cache_dir;
use crate::{Error, failed, run_cmd};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Output of a command, or a failure naming it.
fn output(cmd: &mut Command) -> Result<String, Error> {
    let shown = format!("{cmd:?}");
    match cmd.stderr(Stdio::inherit()).output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => failed(format!("{shown} failed ({})", o.status)),
        Err(e) => failed(format!("cannot run {shown}: {e}")),
    }
}

pub(super) fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}

pub(super) fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Adds the arm64 foreign architecture (and refreshes the package lists) when missing.
fn ensure_arm64_arch() -> Result<(), Error> {
    let native = output(Command::new("dpkg").arg("--print-architecture"))?;
    let foreign = output(Command::new("dpkg").arg("--print-foreign-architectures"))?;
    if native.trim() == "arm64" || foreign.lines().any(|l| l.trim() == "arm64") {
        return Ok(());
    }
    if !is_root() {
        return failed(
            "the arm64 foreign architecture is missing: run `dpkg --add-architecture arm64 && \
             apt-get update` as root",
        );
    }
    run_cmd(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
    run_cmd(Command::new("apt-get").args(["update", "-q"]))
}

/// The first `Depends:` of `pkg` in `apt-cache depends` whose name starts with `prefix`.
fn depends_on(pkg: &str, prefix: &str) -> Result<Option<String>, Error> {
    let out = output(Command::new("apt-cache").args(["depends", pkg]))?;
    Ok(out.lines().find_map(|l| {
        let dep = l.trim().strip_prefix("Depends:")?.trim();
        let name = dep
            .split(':')
            .next()?
            .trim_start_matches('<')
            .trim_end_matches('>');
        name.starts_with(prefix).then(|| name.to_string())
    }))
}

fn apt_knows(pkg: &str) -> bool {
    Command::new("apt-cache")
        .args(["show", "-q", pkg])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The package set for one kernel ABI.
#[derive(Debug)]
struct Packages {
    abi: String,
    /// `(package[:arch] to download, file-name prefix)`.
    debs: Vec<(String, String)>,
}

/// Resolves what to download from the archive's metapackage.
fn resolve_packages() -> Result<Packages, Error> {
    let image_dep = match depends_on("linux-image-arm64:arm64", "linux-image-") {
        Ok(Some(d)) => d,
        Ok(None) => return failed("linux-image-arm64:arm64 depends on no linux-image-* package"),
        Err(_) if is_root() => {
            run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
            depends_on("linux-image-arm64:arm64", "linux-image-")?
                .ok_or_else(|| Error("cannot resolve linux-image-arm64:arm64".into()))?
        }
        Err(e) => return Err(e),
    };
    // linux-image-6.1.0-56-arm64 (or ...-arm64-unsigned) -> 6.1.0-56
    let abi = image_dep
        .strip_prefix("linux-image-")
        .and_then(|s| s.strip_suffix("-unsigned").or(Some(s)))
        .and_then(|s| s.strip_suffix("-arm64"))
        .ok_or_else(|| Error(format!("unexpected kernel package {image_dep}")))?
        .to_string();
    let unsigned = format!("linux-image-{abi}-arm64-unsigned");
    let image = if apt_knows(&format!("{unsigned}:arm64")) {
        unsigned
    } else {
        format!("linux-image-{abi}-arm64")
    };
    let headers = format!("linux-headers-{abi}-arm64");
    let kbuild = depends_on(&format!("{headers}:arm64"), "linux-kbuild-")?
        .ok_or_else(|| Error(format!("{headers} depends on no linux-kbuild-*")))?;
    let common = format!("linux-headers-{abi}-common");
    let debs = vec![
        (format!("{image}:arm64"), image),
        (format!("{headers}:arm64"), headers),
        (common.clone(), common),
        (kbuild.clone(), kbuild),
        ("busybox-static:arm64".into(), "busybox-static".into()),
    ];
    Ok(Packages { abi, debs })
}

/// The cached `.deb` whose file name starts with `prefix_`.
fn cached_deb(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let want = format!("{prefix}_");
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&want) && n.ends_with(".deb"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Downloads (or reuses) the Debian packages and extracts them; returns the ABI and the root
/// of the extracted tree.
pub(super) fn fetch() -> Result<(String, PathBuf), Error> {
    let cache = cache_dir();
    let debs_dir = cache.join("debs");
    fs::create_dir_all(&debs_dir).or_else(|e| failed(format!("{}: {e}", debs_dir.display())))?;
    ensure_arm64_arch()?;
    let pkgs = resolve_packages()?;
    println!("xtask: Debian arm64 kernel ABI {}", pkgs.abi);
    let root = cache.join(&pkgs.abi).join("root");
    let stamp = cache.join(&pkgs.abi).join("extracted");
    let mut files = Vec::new();
    for (pkg, prefix) in &pkgs.debs {
        if let Some(f) = cached_deb(&debs_dir, prefix) {
            files.push(f);
            continue;
        }
        run_cmd(
            Command::new("apt-get")
                .args(["download", "-q", pkg])
                .current_dir(&debs_dir),
        )?;
        match cached_deb(&debs_dir, prefix) {
            Some(f) => files.push(f),
            None => return failed(format!("apt-get download {pkg} left no {prefix}_*.deb")),
        }
    }
    if !stamp.is_file() {
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).or_else(|e| failed(format!("{}: {e}", root.display())))?;
        for f in &files {
            run_cmd(Command::new("dpkg-deb").arg("-x").arg(f).arg(&root))?;
        }
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        fs::write(&stamp, names.join("\n"))
            .or_else(|e| failed(format!("{}: {e}", stamp.display())))?;
    }
    // The headers' Makefile includes the common tree by its installed path.
    let hdr = root.join(format!("usr/src/linux-headers-{}-arm64", pkgs.abi));
    let mk = hdr.join("Makefile");
    let text = fs::read_to_string(&mk).or_else(|e| failed(format!("{}: {e}", mk.display())))?;
    if text.contains("include /usr/src/") {
        let fixed = text.replace(
            "include /usr/src/",
            &format!("include {}/usr/src/", root.display()),
        );
        fs::write(&mk, fixed).or_else(|e| failed(format!("{}: {e}", mk.display())))?;
    }
    Ok((pkgs.abi, root))
}
