//! The Linux guest of `--scenario linux-guest`: Debian's kernel (the same `Image` as `--host
//! linux`) and a small initramfs (busybox, `/init` from `xtask/templates/guest-init.sh`), in one
//! **bundle** file QEMU loads with `-initrd`: the test host finds it through `/chosen` and its
//! VMM copies the kernel and initramfs into the guest's RAM.
//!
//! Bundle layout (little-endian): the magic `PKVMGST1` (8 bytes), then four `u64`s — kernel
//! offset, kernel length, initramfs offset, initramfs length — zero up to byte 4096, the
//! kernel at 4096, the initramfs at the next 4 KiB boundary. The host's reader is
//! `host/src/vmm/bundle.rs`.

use super::{cache_dir, debian};
use crate::{Error, failed};
use std::fs;
use std::path::{Path, PathBuf};

/// The bundle's magic.
pub const MAGIC: &[u8; 8] = b"PKVMGST1";
/// What the guest's `/init` prints first.
pub const GUEST_MARKER: &str = "PKVM-GUEST-INIT";
/// The guest's result line prefix (not the host's `PKVM-RESULT`: the host judges the run).
pub const GUEST_RESULT: &str = "PKVM-GUEST-RESULT";

const INIT_TEMPLATE: &str = include_str!("../../templates/guest-init.sh");

/// The guest's `/init`.
fn init_script() -> String {
    INIT_TEMPLATE
        .replace("{{GUEST_MARKER}}", GUEST_MARKER)
        .replace("{{GUEST_RESULT}}", GUEST_RESULT)
}

/// The guest's initramfs: busybox and `/init`.
fn initramfs(root: &Path) -> Result<Vec<u8>, Error> {
    Ok(super::initramfs::busybox_cpio(root, &init_script())?.finish())
}

fn align_up(n: usize) -> usize {
    n.div_ceil(4096) * 4096
}

/// The bundle's bytes for `kernel` and `initrd`.
pub fn bundle_bytes(kernel: &[u8], initrd: &[u8]) -> Vec<u8> {
    let k_off = 4096;
    let i_off = align_up(k_off + kernel.len());
    let mut b = vec![0u8; i_off + initrd.len()];
    b[..8].copy_from_slice(MAGIC);
    for (i, v) in [k_off, kernel.len(), i_off, initrd.len()]
        .into_iter()
        .enumerate()
    {
        b[8 + 8 * i..16 + 8 * i].copy_from_slice(&(v as u64).to_le_bytes());
    }
    b[k_off..k_off + kernel.len()].copy_from_slice(kernel);
    b[i_off..].copy_from_slice(initrd);
    b
}

/// The files of a guest: the bundle, and its parts apart (for the direct boot of the
/// benchmark).
#[derive(Clone, Debug)]
pub struct GuestFiles {
    /// The bundle QEMU loads with `-initrd` for the test host.
    pub bundle: PathBuf,
    /// The kernel `Image`.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
}

/// Fetches Debian's kernel and busybox (cached) and writes the bundle; its path.
pub fn bundle() -> Result<PathBuf, Error> {
    files().map(|f| f.bundle)
}

/// [`bundle`], and the kernel and initramfs apart.
pub fn files() -> Result<GuestFiles, Error> {
    let (abi, root) = debian::fetch()?;
    let kernel_path = root.join(format!("boot/vmlinuz-{abi}-arm64"));
    let kernel =
        fs::read(&kernel_path).or_else(|e| failed(format!("{}: {e}", kernel_path.display())))?;
    let initrd = initramfs(&root)?;
    let initramfs = cache_dir().join(&abi).join("guest-initramfs.cpio");
    fs::write(&initramfs, &initrd).or_else(|e| failed(format!("{}: {e}", initramfs.display())))?;
    let out = cache_dir().join(&abi).join("guest-bundle.bin");
    fs::write(&out, bundle_bytes(&kernel, &initrd))
        .or_else(|e| failed(format!("{}: {e}", out.display())))?;
    println!(
        "xtask: guest bundle {} (kernel {} bytes, initramfs {} bytes)",
        out.display(),
        kernel.len(),
        initrd.len()
    );
    Ok(GuestFiles {
        bundle: out,
        kernel: kernel_path,
        initramfs,
    })
}

/// Boots in the system test (`cargo xtask test`): a short version of the acceptance run's 50.
pub const CI_BOOTS: u64 = 3;

/// The system test: [`CI_BOOTS`] boots of the Linux guest (protected, non-protected,
/// protected) on `-cpu max` (whose SVE, SME, MTE and pointer authentication EL2 hides from the
/// guest), production EL2.
///
/// # Errors
/// A failed run, or a missing kernel or image.
pub fn system_test() -> Result<String, Error> {
    let o = crate::qemu::RunOptions {
        scenario: crate::LINUX_GUEST.into(),
        guests: Some(CI_BOOTS),
        timeout: std::time::Duration::from_secs(180),
        initrd: Some(bundle()?),
        ..crate::qemu::RunOptions::default()
    };
    let images = crate::images::build_image_set(false)?;
    let (outcome, ran) = crate::qemu::run(&images, &o);
    super::run::verdict(&outcome, ran, o.timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_header_names_both_parts() {
        let b = bundle_bytes(&[1; 5000], &[2; 10]);
        let word = |i: usize| u64::from_le_bytes(b[8 + 8 * i..16 + 8 * i].try_into().unwrap());
        assert_eq!(&b[..8], MAGIC);
        assert_eq!(
            [word(0), word(1), word(2), word(3)],
            [4096, 5000, 12288, 10]
        );
        assert_eq!(&b[4096..9096], &[1; 5000][..]);
        assert!(b[9096..12288].iter().all(|&x| x == 0));
        assert_eq!(&b[12288..], &[2; 10]);
    }

    #[test]
    fn init_script_is_complete() {
        let s = init_script();
        assert!(!s.contains("{{"), "{s}");
        assert!(s.contains("echo \"PKVM-GUEST-RESULT pass\"\n"), "{s}");
        assert!(s.ends_with("sleep 1\npoweroff -f\nsleep 30\n"), "{s}");
    }
}
