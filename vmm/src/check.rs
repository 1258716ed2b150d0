//! `pkvm-vmm check`: the module's refusals, each asked for and its errno checked — bad shapes,
//! calls out of order, bad indices and pointers, mappings it must not give — and nothing left
//! behind (EL2's live VM count is unchanged). Every case opens its own VM file.

use std::io;
use std::path::Path;

use pkvm_abi::Stat;
use pkvm_vmm_core::dev::{self, CREATE_PROTECTED, Create, MAX_MEM, MEM_ALIGN};
use pkvm_vmm_core::layout::RAM_BASE;

use crate::dev::Vm;

/// A user address no mapping covers (the kernel cannot write through it into this process).
const UNMAPPED: u64 = 16;
/// A kernel address (refused by the user-copy checks).
const KERNEL: u64 = 0xffff_8000_0000_0000;

/// A VM of `mem` bytes and one vCPU, created (not started).
fn created(device: &Path, mem: u64) -> io::Result<Vm> {
    let vm = Vm::open(device)?;
    vm.create(&Create {
        mem_size: mem,
        mem_ipa: RAM_BASE,
        nr_vcpus: 1,
        flags: 0,
    })?;
    Ok(vm)
}

/// The errno of `r` (0 for success).
fn errno<T>(r: io::Result<T>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

/// Runs the catalogue; `(passed, failed)`. Each line printed is `ok` or `FAIL` and the case.
///
/// # Errors
/// The device cannot be opened at all.
pub fn run(device: &Path) -> io::Result<(u32, u32)> {
    let live0 = Vm::open(device)?.stat(Stat::LiveVms)?;
    let (mut passed, mut failed) = (0, 0);
    let mut check = |what: &str, got: i32, want: i32| {
        if got == want {
            passed += 1;
            println!("ok   {what}: errno {got}");
        } else {
            failed += 1;
            println!("FAIL {what}: errno {got}, want {want}");
        }
    };
    let shape = |mem_size: u64, mem_ipa: u64, nr_vcpus: u64, flags: u64| -> io::Result<()> {
        Vm::open(device)?.create(&Create {
            mem_size,
            mem_ipa,
            nr_vcpus,
            flags,
        })
    };
    use libc::{EBUSY, EEXIST, EFAULT, EINVAL, ENOEXEC, ENOTTY};
    check("CREATE of 0 bytes", errno(shape(0, RAM_BASE, 1, 0)), EINVAL);
    check(
        "CREATE of 1 MiB (not 2 MiB granular)",
        errno(shape(1 << 20, RAM_BASE, 1, 0)),
        EINVAL,
    );
    check(
        "CREATE above the largest RAM",
        errno(shape(MAX_MEM + MEM_ALIGN, RAM_BASE, 1, 0)),
        EINVAL,
    );
    check(
        "CREATE at an IPA not 2 MiB aligned",
        errno(shape(MEM_ALIGN, RAM_BASE + 4096, 1, 0)),
        EINVAL,
    );
    check(
        "CREATE wrapping the IPA space",
        errno(shape(MEM_ALIGN, u64::MAX - MEM_ALIGN + 1, 1, 0)),
        EINVAL,
    );
    check(
        "CREATE beyond the 40-bit IPA space",
        errno(shape(MEM_ALIGN, 1 << 40, 1, 0)),
        EINVAL,
    );
    check(
        "CREATE with 0 vCPUs",
        errno(shape(MEM_ALIGN, RAM_BASE, 0, 0)),
        EINVAL,
    );
    check(
        "CREATE with 5 vCPUs",
        errno(shape(MEM_ALIGN, RAM_BASE, 5, 0)),
        EINVAL,
    );
    check(
        "CREATE with an unknown flag",
        errno(shape(MEM_ALIGN, RAM_BASE, 1, CREATE_PROTECTED << 1)),
        EINVAL,
    );
    let vm = Vm::open(device)?;
    for (what, arg) in [
        ("CREATE from an unmapped address", UNMAPPED),
        ("CREATE from a kernel address", KERNEL),
    ] {
        check(what, errno(vm.raw_ioctl(dev::CREATE, arg)), EFAULT);
    }
    check(
        "LOAD before CREATE",
        errno(vm.load(RAM_BASE, &[0; 8])),
        ENOEXEC,
    );
    check("START before CREATE", errno(vm.start()), ENOEXEC);
    check("RUN before CREATE", errno(vm.run(0)), ENOEXEC);
    check(
        "mmap before CREATE",
        errno(vm.try_map(0, 4096, libc::PROT_READ, libc::MAP_SHARED)),
        ENOEXEC,
    );
    check(
        "an unknown ioctl",
        errno(vm.raw_ioctl(dev::ioc(0, 99, 0), 0)),
        ENOTTY,
    );
    let vm = created(device, MEM_ALIGN)?;
    let again = Create {
        mem_size: MEM_ALIGN,
        mem_ipa: RAM_BASE,
        nr_vcpus: 1,
        flags: 0,
    };
    check("CREATE twice", errno(vm.create(&again)), EEXIST);
    check(
        "LOAD below the RAM",
        errno(vm.load(RAM_BASE - 8, &[0; 8])),
        EINVAL,
    );
    check(
        "LOAD across the RAM's end",
        errno(vm.load(RAM_BASE + MEM_ALIGN - 4, &[0; 8])),
        EINVAL,
    );
    check(
        "LOAD at a wrapping IPA",
        errno(vm.load(u64::MAX - 3, &[0; 8])),
        EINVAL,
    );
    let mut l = dev::Load {
        ipa: RAM_BASE,
        addr: UNMAPPED,
        len: 8,
    };
    check(
        "LOAD from an unmapped address",
        errno(vm.raw_ioctl(dev::LOAD, (&raw mut l) as u64)),
        EFAULT,
    );
    l.addr = KERNEL;
    check(
        "LOAD from a kernel address",
        errno(vm.raw_ioctl(dev::LOAD, (&raw mut l) as u64)),
        EFAULT,
    );
    check("RUN before START", errno(vm.run(0)), ENOEXEC);
    check(
        "mmap of a vCPU the VM lacks",
        errno(vm.try_map(4096, 4096, libc::PROT_READ, libc::MAP_SHARED)),
        EINVAL,
    );
    check(
        "mmap private",
        errno(vm.try_map(0, 4096, libc::PROT_READ, libc::MAP_PRIVATE)),
        EINVAL,
    );
    check(
        "mmap of two pages",
        errno(vm.try_map(0, 8192, libc::PROT_READ, libc::MAP_SHARED)),
        EINVAL,
    );
    check(
        "mmap executable",
        errno(vm.try_map(0, 4096, libc::PROT_READ | libc::PROT_EXEC, libc::MAP_SHARED)),
        EINVAL,
    );
    check(
        "mmap of vCPU 0, shared",
        errno(vm.try_map(
            0,
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )),
        0,
    );
    let page = vm.map_vcpu(0)?;
    page_init(&page);
    check("START", errno(vm.start()), 0);
    check("START twice", errno(vm.start()), EBUSY);
    check("LOAD after START", errno(vm.load(RAM_BASE, &[0; 8])), EBUSY);
    check("RUN of a vCPU the VM lacks", errno(vm.run(1)), EINVAL);
    check("RUN of vCPU 2^32", errno(vm.run(1 << 32)), EINVAL);
    let mut s = dev::StatArg {
        selector: 1 << 40,
        value: 0,
    };
    check(
        "STAT of an unknown selector",
        errno(vm.raw_ioctl(dev::STAT, (&raw mut s) as u64)),
        EINVAL,
    );
    for (what, req) in [
        ("STAT into an unmapped address", dev::STAT),
        ("COUNTS into an unmapped address", dev::COUNTS),
    ] {
        check(what, errno(vm.raw_ioctl(req, UNMAPPED)), EFAULT);
    }
    // A protected VM refused half-way by EL2 (more RAM than its memcache maps cannot happen:
    // the module refuses it first), and one with a vCPU whose PSTATE EL2 refuses.
    let p = Vm::open(device)?;
    p.create(&Create {
        mem_size: MEM_ALIGN,
        mem_ipa: RAM_BASE,
        nr_vcpus: 1,
        flags: CREATE_PROTECTED,
    })?;
    let pp = p.map_vcpu(0)?;
    // PSTATE M = EL2h: no guest may run at EL2.
    pp_init(&pp, 0x3c9);
    check(
        "START of a protected vCPU with an EL2 PSTATE",
        errno(p.start()),
        EINVAL,
    );
    check("RUN after a refused START", errno(p.run(0)), ENOEXEC);
    check("START again after a refused START", errno(p.start()), EBUSY);
    drop((pp, p, page, vm));
    let live1 = Vm::open(device)?.stat(Stat::LiveVms)?;
    check(
        "EL2's live VMs after closing every file (difference)",
        (live1 as i64 - live0 as i64) as i32,
        0,
    );
    Ok((passed, failed))
}

fn page_init(p: &crate::dev::VcpuPage) {
    pp_init(p, pkvm_abi::guest::PSTATE_EL1H_DAIF);
}

fn pp_init(p: &crate::dev::VcpuPage, pstate: u64) {
    use pkvm_vmm_core::machine::VcpuRegs;
    p.init(&pkvm_abi::guest::VcpuState {
        pc: RAM_BASE,
        pstate,
        ..Default::default()
    });
}
