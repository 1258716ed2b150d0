//! A writer for the `newc` cpio format (what Linux unpacks as an initramfs): every entry is a
//! 110-byte ASCII header (`070701` and thirteen 8-digit hex fields), the NUL-terminated name
//! padded to 4 bytes, then the data padded to 4 bytes; the archive ends with `TRAILER!!!`.

/// Mode bits of the entry types we write.
pub const S_IFDIR: u32 = 0o040000;
/// Regular file.
pub const S_IFREG: u32 = 0o100000;
/// Character device.
pub const S_IFCHR: u32 = 0o020000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120000;

/// An archive being built in memory.
#[derive(Debug, Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

fn pad4(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

impl Cpio {
    /// An empty archive.
    pub fn new() -> Self {
        Cpio::default()
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,                                              // uid
            0,                                              // gid
            if mode & 0o170000 == S_IFDIR { 2 } else { 1 }, // nlink
            0,                                              // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        pad4(&mut self.buf);
        self.buf.extend_from_slice(data);
        pad4(&mut self.buf);
    }

    /// A directory (`perm` e.g. 0o755).
    pub fn dir(&mut self, name: &str, perm: u32) {
        self.entry(name, S_IFDIR | perm, (0, 0), &[]);
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, S_IFREG | perm, (0, 0), data);
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, S_IFLNK | 0o777, (0, 0), target.as_bytes());
    }

    /// A character device node.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, S_IFCHR | perm, (major, minor), &[]);
    }

    /// Appends the trailer and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        // The kernel reads in 512-byte blocks happily either way; pad like cpio(1) does.
        while !self.buf.len().is_multiple_of(512) {
            self.buf.push(0);
        }
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let mut c = Cpio::new();
        c.dir("bin", 0o755);
        c.file("init", 0o755, b"#!/bin/sh\n");
        c.char_dev("dev/console", 0o600, 5, 1);
        let a = c.finish();
        assert!(a.len().is_multiple_of(512));
        // First header: magic, ino 1, mode 040755.
        assert_eq!(&a[..6], b"070701");
        assert_eq!(&a[6..14], b"00000001");
        assert_eq!(&a[14..22], b"000041ED");
        // Name right after the header, NUL-terminated, then padding to 4.
        assert_eq!(&a[110..114], b"bin\0");
        // Second header starts at 116 (110 + 4 rounded up to a multiple of 4).
        let h2 = 116;
        assert_eq!(&a[h2..h2 + 6], b"070701");
        // File size field of the second entry.
        assert_eq!(&a[h2 + 54..h2 + 62], b"0000000A");
        let s = String::from_utf8_lossy(&a);
        assert!(s.contains("TRAILER!!!"));
        assert!(s.contains("dev/console"));
    }
}
