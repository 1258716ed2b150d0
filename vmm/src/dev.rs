//! `/dev/pkvm` (`linux/pkvm.c`): the VM file, its ioctls and the vCPU pages mapped from it.
//! Every `unsafe` of `pkvm-vmm` is here: the system calls and the volatile accesses to the
//! pages EL2 shares with this process.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use core::sync::atomic::{Ordering, fence};
use pkvm_abi::guest::{VcpuExit, VcpuState, VgicState, vcpu_off};

use pkvm_vmm_core::dev::{
    self, CONSOLE_PAGE, CONSOLE_RING, Counts, Create, Load, StatArg, console_off,
};
use pkvm_vmm_core::machine::{ConsoleFastPath, VcpuRegs};

/// One VM: an open file of `/dev/pkvm`. Dropping it (with every [`VcpuPage`]) destroys the VM.
#[derive(Debug)]
pub struct Vm {
    file: File,
}

/// An `ioctl` whose result is an integer (`-1` and `errno` for an error).
fn check(r: libc::c_int) -> io::Result<u64> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

impl Vm {
    /// Opens `path` (`/dev/pkvm`): a new, empty VM.
    ///
    /// # Errors
    /// The file cannot be opened (no module loaded: `ENOENT`; not root: `EACCES`).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Vm { file })
    }

    fn ioctl_ptr<T>(&self, req: u32, arg: *mut T) -> io::Result<u64> {
        // SAFETY: `req` is one of /dev/pkvm's ioctls whose argument is a `T` (the numbers in
        // `pkvm_vmm_core::dev` encode its size); `arg` points to a live, writable `T` for the
        // duration of the call. The module reads or writes only that structure.
        check(unsafe { libc::ioctl(self.file.as_raw_fd(), req as _, arg) })
    }

    fn ioctl_val(&self, req: u32, arg: u64) -> io::Result<u64> {
        // SAFETY: `req` is one of /dev/pkvm's ioctls that take a plain integer (no memory),
        // or (`raw_ioctl`) an argument the kernel cannot write through into this process.
        check(unsafe { libc::ioctl(self.file.as_raw_fd(), req as _, arg as libc::c_ulong) })
    }

    /// An ioctl with a raw integer argument, for the refusal catalogue (`pkvm-vmm check`): an
    /// unknown number, or a pointer argument the module must refuse. `arg` is passed as it is:
    /// callers give only values the kernel cannot write through into this process (0, small
    /// addresses no mapping covers, kernel addresses).
    ///
    /// # Errors
    /// The module's answer.
    pub fn raw_ioctl(&self, req: u32, arg: u64) -> io::Result<u64> {
        self.ioctl_val(req, arg)
    }

    /// `mmap` of `len` bytes at `offset` with `flags`, unmapped again at once: what the module
    /// answers.
    ///
    /// # Errors
    /// The module's refusal.
    pub fn try_map(&self, offset: usize, len: usize, prot: i32, flags: i32) -> io::Result<()> {
        // SAFETY: a new mapping of the VM file at an address the kernel picks; nothing else
        // is affected, and it is unmapped below.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                prot,
                flags,
                self.file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: exactly the mapping made above, never referenced.
        unsafe { libc::munmap(p, len) };
        Ok(())
    }

    /// `PKVM_CREATE`.
    ///
    /// # Errors
    /// `EINVAL` for a shape the module refuses, `EEXIST` the second time, `ENOMEM`.
    pub fn create(&self, c: &Create) -> io::Result<()> {
        let mut c = *c;
        self.ioctl_ptr(dev::CREATE, &mut c).map(drop)
    }

    /// `PKVM_LOAD` of `bytes` at guest RAM `ipa`.
    ///
    /// # Errors
    /// `EINVAL` outside the RAM, `EBUSY` after [`Vm::start`].
    pub fn load(&self, ipa: u64, bytes: &[u8]) -> io::Result<()> {
        let mut l = Load {
            ipa,
            addr: bytes.as_ptr() as u64,
            len: bytes.len() as u64,
        };
        self.ioctl_ptr(dev::LOAD, &mut l).map(drop)
    }

    /// `PKVM_START`: the VM exists at EL2 and has its RAM.
    ///
    /// # Errors
    /// EL2's refusal (its errno), `EBUSY` the second time.
    pub fn start(&self) -> io::Result<()> {
        self.ioctl_val(dev::START, 0).map(drop)
    }

    /// `PKVM_RUN` of vCPU `idx`: the exit reason. `EINTR` when a signal kicked the thread.
    ///
    /// # Errors
    /// `EINTR`, `EPERM` (a protected vCPU not started by its guest yet), EL2's errors.
    pub fn run(&self, idx: usize) -> io::Result<u64> {
        self.ioctl_val(dev::RUN, idx as u64)
    }

    /// `PKVM_STAT`: one of EL2's statistics.
    ///
    /// # Errors
    /// An unknown selector (`EINVAL`).
    pub fn stat(&self, s: pkvm_abi::Stat) -> io::Result<u64> {
        let mut a = StatArg {
            selector: s as u64,
            value: 0,
        };
        self.ioctl_ptr(dev::STAT, &mut a)?;
        Ok(a.value)
    }

    /// `PKVM_COUNTS`.
    ///
    /// # Errors
    /// Only a broken module.
    pub fn counts(&self) -> io::Result<Counts> {
        let mut c = Counts::default();
        self.ioctl_ptr(dev::COUNTS, &mut c)?;
        Ok(c)
    }

    /// Maps the console page.
    ///
    /// # Errors
    /// `ENOEXEC` before [`Vm::create`].
    pub fn map_console(&self) -> io::Result<ConsolePage> {
        let p = self.map_page(CONSOLE_PAGE)?;
        Ok(ConsolePage { page: p })
    }

    /// Maps vCPU `idx`'s state page.
    ///
    /// # Errors
    /// `EINVAL` for an index the VM does not have, `ENOEXEC` before [`Vm::create`].
    pub fn map_vcpu(&self, idx: usize) -> io::Result<VcpuPage> {
        if idx >= CONSOLE_PAGE {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.map_page(idx)
    }

    fn map_page(&self, idx: usize) -> io::Result<VcpuPage> {
        // SAFETY: a new shared mapping of one page of the VM file at a page-aligned offset;
        // the kernel picks the address. Nothing else is affected.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                (idx * PAGE) as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(VcpuPage { base: p.cast() })
    }
}

const PAGE: usize = 4096;

/// A vCPU's state page ([`VcpuState`]), mapped from the VM file: where EL2 publishes each exit
/// and the VMM writes its answers. Shared with EL2 and, for `CPU_ON`, with the VMM's other
/// threads: every access is one volatile access of an aligned word or structure.
#[derive(Debug)]
pub struct VcpuPage {
    base: *mut u64,
}

// SAFETY: the page is process-wide shared memory; all accesses are volatile word or structure
// accesses through `&self` (no references into it are handed out), so sending the handle to
// another thread cannot create a data race the program relies on.
unsafe impl Send for VcpuPage {}
// SAFETY: as for `Send`: concurrent volatile accesses are at worst torn values, which the VMM
// tolerates (EL2 validates what it reads, and only one thread runs a vCPU).
unsafe impl Sync for VcpuPage {}

impl VcpuPage {
    fn get(&self, word: usize) -> u64 {
        debug_assert!(word < PAGE / 8);
        // SAFETY: `word` is inside the mapped page (every offset comes from `vcpu_off`, all
        // below size_of::<VcpuState>() <= PAGE), 8-byte aligned; the page stays mapped while
        // `self` lives.
        unsafe { self.base.add(word).read_volatile() }
    }

    fn set(&self, word: usize, v: u64) {
        debug_assert!(word < PAGE / 8);
        // SAFETY: as for `get`; the page is mapped writable.
        unsafe { self.base.add(word).write_volatile(v) }
    }

    fn read<T: Copy>(&self, off: usize) -> T {
        assert!(off + size_of::<T>() <= PAGE && off.is_multiple_of(8));
        // SAFETY: inside the mapped page (checked above), 8-byte aligned (every structure
        // here is made of u64s); any bit pattern is a valid `T` of u64 fields.
        unsafe { self.base.cast::<u8>().add(off).cast::<T>().read_volatile() }
    }

    fn write<T: Copy>(&self, off: usize, v: &T) {
        assert!(off + size_of::<T>() <= PAGE && off.is_multiple_of(8));
        // SAFETY: as for `read`; the page is mapped writable.
        unsafe {
            self.base
                .cast::<u8>()
                .add(off)
                .cast::<T>()
                .write_volatile(*v)
        }
    }

    /// The last exit record.
    pub fn exit(&self) -> VcpuExit {
        self.read(vcpu_off::EXIT)
    }

    /// Tells the module the counter value the guest's timer was sampled at before this run
    /// ([`dev::VCPU_TIMER_SAMPLED`]).
    pub fn set_timer_sampled(&self, now: u64) {
        self.set(dev::VCPU_TIMER_SAMPLED / 8, now);
    }
}

/// The console page (`struct pkvm_console`), mapped from the VM file: the ring of bytes the
/// module buffered and the two registers it may answer. Only the thread holding the VMM's lock
/// drains it.
#[derive(Debug)]
pub struct ConsolePage {
    page: VcpuPage,
}

impl ConsolePage {
    /// Tells the module which console accesses it may answer. The read register is turned
    /// off while its value changes, and on again after it (the module reads the address with
    /// acquire, then the value): no vCPU gets a value with the wrong address.
    pub fn set_fast_path(&self, f: &ConsoleFastPath) {
        self.page.set(console_off::WRITE_IPA / 8, f.write_ipa);
        self.page.set(console_off::READ_IPA / 8, 0);
        fence(Ordering::Release);
        self.page.set(console_off::READ_VALUE / 8, f.read_value);
        fence(Ordering::Release);
        self.page.set(console_off::READ_IPA / 8, f.read_ipa);
    }

    /// Hands every byte the module buffered to `out`, in order; how many. A head the module
    /// never wrote (more than a ring ahead) is not trusted: only the last ring's worth is read.
    pub fn drain(&self, mut out: impl FnMut(u8)) -> u64 {
        let head = self.page.get(console_off::HEAD / 8);
        fence(Ordering::Acquire);
        let mut tail = self.page.get(console_off::TAIL / 8);
        if head.wrapping_sub(tail) > CONSOLE_RING as u64 {
            tail = head.wrapping_sub(CONSOLE_RING as u64);
        }
        let n = head.wrapping_sub(tail);
        while tail != head {
            let at = console_off::RING + (tail % CONSOLE_RING as u64) as usize;
            let word: u64 = self.page.get(at / 8);
            out((word >> (8 * (at % 8))) as u8);
            tail = tail.wrapping_add(1);
        }
        fence(Ordering::Release);
        self.page.set(console_off::TAIL / 8, tail);
        n
    }
}

impl Drop for VcpuPage {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the page `map_vcpu` mapped; no reference into it outlives
        // `self`.
        unsafe { libc::munmap(self.base.cast(), PAGE) };
    }
}

impl VcpuRegs for VcpuPage {
    fn reg(&self, n: u8) -> u64 {
        self.get(vcpu_off::reg(n) / 8)
    }
    fn set_reg(&self, n: u8, v: u64) {
        self.set(vcpu_off::reg(n) / 8, v);
    }
    fn sys(&self, i: usize) -> u64 {
        self.get(vcpu_off::sys(i) / 8)
    }
    fn vgic(&self) -> VgicState {
        self.read(vcpu_off::VGIC)
    }
    fn set_vgic(&self, v: &VgicState) {
        self.write(vcpu_off::VGIC, v);
    }
    fn set_mmio_data(&self, v: u64) {
        self.set(vcpu_off::EXIT_MMIO_DATA / 8, v);
    }
    fn init(&self, st: &VcpuState) {
        self.write(0, st);
    }
}

/// Installs a handler for `SIGUSR1` that does nothing, without `SA_RESTART`: the signal
/// another vCPU thread sends ([`kick`]) makes a blocked `PKVM_RUN` return `EINTR`.
///
/// # Errors
/// `sigaction` failed.
pub fn install_kick_handler() -> io::Result<()> {
    extern "C" fn nothing(_: libc::c_int) {}
    // SAFETY: a zeroed `sigaction` is a valid empty one; the handler is an `extern "C"`
    // function that touches nothing (async-signal-safe).
    let r = unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = nothing as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR1, &sa, core::ptr::null_mut())
    };
    check(r).map(drop)
}

/// A thread of this process, for [`kick`].
#[derive(Clone, Copy, Debug)]
pub struct Thread(libc::pthread_t);

// SAFETY: a pthread id is an opaque handle (a pointer on musl) that any thread of the process
// may pass to `pthread_kill`; nothing is dereferenced through it here.
unsafe impl Send for Thread {}
// SAFETY: as for `Send`: the handle is only copied and passed to `pthread_kill`.
unsafe impl Sync for Thread {}

/// The calling thread.
pub fn this_thread() -> Thread {
    // SAFETY: no preconditions.
    Thread(unsafe { libc::pthread_self() })
}

/// Sends `SIGUSR1` to thread `t`, which must not have been joined yet (the VMM joins its vCPU
/// threads only once all of them have returned).
pub fn kick(t: Thread) {
    // SAFETY: `t` is a thread of this process that has not been joined yet (the caller's
    // promise).
    unsafe { libc::pthread_kill(t.0, libc::SIGUSR1) };
}

/// The virtual counter (`CNTVCT_EL0`, readable at EL0 on Linux) and its frequency.
#[cfg(target_arch = "aarch64")]
pub fn counter() -> (u64, u64) {
    let (t, f): (u64, u64);
    // SAFETY: reads of EL0-accessible timer registers; no memory, no side effects.
    unsafe {
        core::arch::asm!("isb", "mrs {t}, cntvct_el0", "mrs {f}, cntfrq_el0", t = out(reg) t, f = out(reg) f, options(nomem, nostack, preserves_flags));
    }
    (t, f)
}

/// Elsewhere (builds of the workspace on the development machine): nanoseconds since the first
/// call. `/dev/pkvm` exists only on arm64.
#[cfg(not(target_arch = "aarch64"))]
pub fn counter() -> (u64, u64) {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    let s = START.get_or_init(Instant::now);
    (s.elapsed().as_nanos() as u64, 1_000_000_000)
}
