//! A simulated machine: RAM, an MMIO window, the real portable hypervisor booted on it, a host
//! that issues hypercalls through the same dispatcher as EL2 and touches memory through the
//! real host stage-2 (with a TLB). The abstraction function that reads the concrete state
//! back into the spec's terms, and the invariants, are in [`crate::checks`].

use std::sync::Mutex;

use pkvm_abi::guest::MAX_VMS;
use pkvm_abi::{Error, HostHcall, PAGE_SHIFT, PAGE_SIZE, hvc_fid};
use pkvm_arch::addr::Ipa;
use pkvm_client::{Client, HcallError, Transport, VmHandle};
use pkvm_hyp::devices::{DeviceKind, DeviceRange, MmioAccess};
use pkvm_hyp::host_fault::{FaultClass, HostFault};
use pkvm_hyp::hyp::Hyp;
use pkvm_hyp::memory::{MemRegion, MemoryMap};
use pkvm_hyp::platform::PhysMem;
use pkvm_hyp::setup::{BootParams, HypMapping};
use pkvm_hyp::vmemmap::{HypPage, PageState, Vmemmap, VmemmapLayout};
use pkvm_pgtable::Prot;
use pkvm_spec::{GuestOp, Machine as SpecMachine, Outcome};

use crate::checks::TableCache;
use crate::mmu::{self, Regime, Translation};
use crate::platform::{SimGuestAction, SimPlatform};

/// Shape of a simulated machine.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// RAM regions `(base, size)`; the hypervisor's carve-out is taken from the top of the first.
    pub ram: Vec<(u64, u64)>,
    /// Host physical address space size in bits.
    pub pa_bits: u32,
    /// Pages of EL2's pool.
    pub hyp_pool_pages: u64,
    /// Pages of the host stage-2 table pool.
    pub host_pool_pages: u64,
    /// Device ranges EL2 keeps from the host (as on QEMU `virt`: the ITS and fw_cfg hidden,
    /// a redistributor's `RD_base` frame emulated).
    pub devices: Vec<DeviceRange>,
}

/// The device ranges of QEMU `virt` with one CPU, as EL2 sets them up there.
#[must_use]
pub fn virt_devices() -> Vec<DeviceRange> {
    vec![
        DeviceRange {
            start: VIRT_ITS.0,
            end: VIRT_ITS.1,
            kind: DeviceKind::Hidden,
        },
        DeviceRange {
            start: VIRT_GICR_RD.0,
            end: VIRT_GICR_RD.1,
            kind: DeviceKind::GicrRdBase,
        },
        DeviceRange {
            start: VIRT_FW_CFG.0,
            end: VIRT_FW_CFG.1,
            kind: DeviceKind::Hidden,
        },
    ]
}

/// QEMU `virt`'s GICv3 ITS frames.
pub const VIRT_ITS: (u64, u64) = (0x0808_0000, 0x080a_0000);
/// QEMU `virt`'s first redistributor's `RD_base` frame.
pub const VIRT_GICR_RD: (u64, u64) = (0x080a_0000, 0x080b_0000);
/// QEMU `virt`'s PL011 UART (the console), MMIO the host may use.
pub const VIRT_UART: u64 = 0x0900_0000;
/// QEMU `virt`'s fw_cfg page.
pub const VIRT_FW_CFG: (u64, u64) = (0x0902_0000, 0x0902_1000);

impl SimConfig {
    /// A small machine: 8 MiB of RAM at 1 GiB, 2 MiB at 4 GiB, 40-bit PA, MMIO everywhere else.
    #[must_use]
    pub fn small() -> Self {
        SimConfig {
            ram: vec![(0x4000_0000, 8 << 20), (0x1_0000_0000, 2 << 20)],
            pa_bits: 40,
            hyp_pool_pages: 64,
            host_pool_pages: 64,
            devices: virt_devices(),
        }
    }

    /// [`SimConfig::small`] with the smallest table pools it boots with and a few pages to
    /// spare: sharing, donating and VM creation run out of table memory after a few calls, so
    /// tests reach `ENOMEM` (and the model checks that nothing changed then).
    #[must_use]
    pub fn tight() -> Self {
        SimConfig {
            // 3 of them hold the window's tables (`pkvm_hyp::mm::HYP_WINDOW_VA`).
            hyp_pool_pages: 13,
            host_pool_pages: 10,
            ..Self::small()
        }
    }

    /// A machine with `ram_mib` MiB at 1 GiB and pools sized by the hypervisor's own sizing
    /// functions.
    #[must_use]
    pub fn sized(ram_mib: u64) -> Self {
        let ram = vec![(0x4000_0000, ram_mib << 20)];
        let map = MemoryMap::new(&[MemRegion::new(ram[0].0, ram[0].1)]).expect("valid map");
        SimConfig {
            ram,
            pa_bits: 40,
            hyp_pool_pages: pkvm_hyp::sizing::hyp_s1_pgtable_pages(&map, 2 << 20),
            host_pool_pages: pkvm_hyp::sizing::host_s2_pgtable_pages(&map),
            devices: virt_devices(),
        }
    }
}

/// A booted simulated machine (see [`with_machine`]).
pub struct Machine<'a> {
    /// The platform (memory, TLB, recorded effects).
    pub plat: &'a SimPlatform,
    /// The hypervisor.
    pub hyp: Hyp<'a, SimPlatform>,
    /// Where EL2's memory is: `[start, end)`.
    pub carveout: (u64, u64),
    /// The handle last created in each VM slot and its vCPU state's address: the spec's VM
    /// calls name slots ([`pkvm_spec::Call::VmInit`] and friends). A slot whose VM was torn
    /// down keeps its stale handle, so calls on it test `ENOENT` for stale handles.
    pub vms: Mutex<[SlotVm; MAX_VMS]>,
    pub(crate) cfg: SimConfig,
    /// What the checks read of the table pages, while the pages do not change.
    pub(crate) table_cache: Mutex<TableCache>,
}

/// What the harness remembers of a VM slot.
#[derive(Clone, Copy, Debug, Default)]
pub struct SlotVm {
    /// The handle `VmInit` returned for the slot (0: never used, names no VM).
    pub handle: u64,
    /// The vCPU state's address once `VcpuInit` succeeded.
    pub vcpu_state: Option<u64>,
}

impl std::fmt::Debug for Machine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("cfg", &self.cfg)
            .field("carveout", &self.carveout)
            .finish_non_exhaustive()
    }
}

/// Boots a machine shaped by `cfg` and runs `f` on it.
///
/// # Panics
/// If the configuration cannot boot (a bug in the caller or in boot).
pub fn with_machine<R>(cfg: &SimConfig, f: impl FnOnce(&mut Machine<'_>) -> R) -> R {
    run_machine(cfg, true, f)
}

fn run_machine<R>(cfg: &SimConfig, finalise: bool, f: impl FnOnce(&mut Machine<'_>) -> R) -> R {
    let plat = SimPlatform::new(&cfg.ram);
    let map = memory_map(cfg);
    let layout = VmemmapLayout::for_map(&map).expect("vmemmap layout");
    let mut dir = vec![0u32; layout.dir_slots];
    let pages: Vec<HypPage> = (0..layout.entries()).map(|_| HypPage::new()).collect();
    let mut m = boot(cfg, &plat, &map, &mut dir, &pages, finalise);
    f(&mut m)
}

/// [`with_machine`] with a hypervisor that has not been finalised yet: the host's boot-only
/// calls (`Finalize`) are still open.
pub fn with_unfinalised_machine<R>(cfg: &SimConfig, f: impl FnOnce(&mut Machine<'_>) -> R) -> R {
    run_machine(cfg, false, f)
}

/// Boots a machine shaped by `cfg` that lives as long as the program (its platform, memory map
/// and vmemmap are leaked): for a harness that boots once and puts the machine back to a
/// snapshot between runs ([`Machine::snapshot`], [`Machine::reset`]), as the fuzz target does.
///
/// # Panics
/// If the configuration cannot boot.
#[must_use]
pub fn boot_static(cfg: &SimConfig) -> Machine<'static> {
    let plat = Box::leak(Box::new(SimPlatform::new(&cfg.ram)));
    let map = Box::leak(Box::new(memory_map(cfg)));
    let layout = VmemmapLayout::for_map(map).expect("vmemmap layout");
    let dir = vec![0u32; layout.dir_slots].leak();
    let pages: &[HypPage] = (0..layout.entries())
        .map(|_| HypPage::new())
        .collect::<Vec<_>>()
        .leak();
    boot(cfg, plat, map, dir, pages, true)
}

fn memory_map(cfg: &SimConfig) -> MemoryMap {
    let regions: Vec<MemRegion> = cfg.ram.iter().map(|&(b, s)| MemRegion::new(b, s)).collect();
    MemoryMap::new(&regions).expect("valid memory map")
}

/// Boots the hypervisor on `plat` with its vmemmap in `dir` and `pages`.
fn boot<'a>(
    cfg: &SimConfig,
    plat: &'a SimPlatform,
    map: &'a MemoryMap,
    dir: &'a mut [u32],
    pages: &'a [HypPage],
    finalise: bool,
) -> Machine<'a> {
    let vmemmap = Vmemmap::new(map, dir, pages).expect("vmemmap");

    // Carve-out at the top of the first region: [hyp pool][host pool]. (At EL2 the vmemmap
    // lives there too; here it is a Vec, so its pages are simply not part of the carve-out.)
    let (base, size) = cfg.ram[0];
    let total = (cfg.hyp_pool_pages + cfg.host_pool_pages) * PAGE_SIZE;
    assert!(total < size, "carve-out larger than the first RAM region");
    let co_start = base + size - total;
    let pool = (co_start, co_start + cfg.hyp_pool_pages * PAGE_SIZE);
    let host_pool = (pool.1, base + size);
    let hyp_ranges = [(co_start, base + size)];
    let maps = [HypMapping {
        va: co_start,
        pa: co_start,
        size: total,
        prot: Prot::R | Prot::W,
    }];
    let params = BootParams {
        hyp_ranges: &hyp_ranges,
        pool,
        host_pool,
        hyp_maps: &maps,
        pa_bits: cfg.pa_bits,
        devices: &cfg.devices,
    };
    let hyp = Hyp::new(plat, map, vmemmap, &params).expect("hypervisor boots");
    if finalise {
        hyp.finalise().expect("first finalise");
    }
    plat.set_el2_root(hyp.hyp_pgd());
    Machine {
        plat,
        hyp,
        carveout: (co_start, base + size),
        vms: Mutex::new([SlotVm::default(); MAX_VMS]),
        cfg: cfg.clone(),
        table_cache: Mutex::default(),
    }
}

/// The start level of a 4 KiB-granule table for `ia_bits` of input address.
#[must_use]
pub fn start_level(ia_bits: u32) -> u8 {
    if ia_bits > 39 {
        0
    } else if ia_bits > 30 {
        1
    } else {
        2
    }
}

impl Machine<'_> {
    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// The machine as the spec sees it.
    #[must_use]
    pub fn spec_machine(&self) -> SpecMachine {
        SpecMachine {
            memory: self.cfg.ram.iter().map(|&(b, s)| (b, b + s)).collect(),
            hyp_memory: vec![self.carveout],
            pa_bits: self.cfg.pa_bits,
            hidden_mmio: self
                .cfg
                .devices
                .iter()
                .filter(|d| d.kind == DeviceKind::Hidden)
                .map(|d| (d.start, d.end))
                .collect(),
            max_count: pkvm_hyp::mem_protect::MAX_COUNT,
            max_host_pins: pkvm_hyp::mem_protect::MAX_HOST_PINS,
        }
    }

    /// The typed hypercalls over this machine (see the [`Transport`] implementation).
    #[must_use]
    pub fn client(&self) -> Client<&Self> {
        Client::new(self)
    }

    /// Issues host hypercall `id` with `x1.. = args` (at most six) through the hypervisor's
    /// dispatcher; returns `x0..x3`.
    ///
    /// # Panics
    /// With more than six arguments (a bug in the test).
    pub fn hvc(&self, id: HostHcall, args: &[u64]) -> [u64; 4] {
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        self.smccc(hvc_fid(id), a)
    }

    /// Issues a host hypercall and decodes its result.
    ///
    /// # Errors
    /// The handler's error.
    ///
    /// # Panics
    /// If the call was not dispatched: the simulator only issues supported calls through this
    /// helper (use [`Machine::hvc`] to see `x0`).
    pub fn call(&self, id: HostHcall, args: &[u64]) -> Result<(), Error> {
        errno(pkvm_client::decode(self.hvc(id, args)).map(|_| ()), id)
    }

    fn translate(&self, regime: Regime, root: u64, ia_bits: u32, ia: u64) -> Option<Translation> {
        if let Some(t) = self.plat.tlb.lock().unwrap().lookup(regime, ia) {
            return Some(t);
        }
        let t = mmu::walk(&self.plat.mem, regime, root, start_level(ia_bits), ia).ok()?;
        self.plat.tlb.lock().unwrap().fill(regime, ia, t);
        Some(t)
    }

    /// The host touches the byte at `pa` (IPA == PA). Faults go to the hypervisor's real fault
    /// handler; an injected abort is reported as [`Outcome::Abort`].
    pub fn host_access(&self, pa: u64, write: bool) -> Outcome {
        let root = self.hyp.host_pgd();
        for _ in 0..4 {
            let t = if pa >> self.cfg.pa_bits == 0 {
                self.translate(Regime::Stage2(0), root, self.cfg.pa_bits, pa)
            } else {
                None
            };
            match t {
                Some(t) if t.read && (!write || t.write) => {
                    assert_eq!(t.pa, pa, "host stage-2 is not an identity map at {pa:#x}");
                    if write {
                        let old = self.plat.mem.try_read(pa).unwrap_or(0);
                        self.plat.mem.try_write(pa, old ^ 1);
                    } else {
                        let _ = self.plat.mem.try_read(pa);
                    }
                    return Outcome::Access;
                }
                _ => match self
                    .hyp
                    .handle_host_mem_abort(Ipa(pa), FaultClass::Translation)
                {
                    HostFault::Mapped => {}
                    HostFault::InjectAbort => return Outcome::Abort,
                    HostFault::Emulate => {
                        let acc = MmioAccess {
                            write,
                            size: 4,
                            value: 0,
                        };
                        return match self.hyp.host_mmio_access(Ipa(pa & !3), acc) {
                            Ok(_) => Outcome::Access,
                            Err(_) => Outcome::Abort,
                        };
                    }
                },
            }
        }
        panic!("host access to {pa:#x} keeps faulting after the handler mapped it");
    }

    /// EL2 reads `pa` through its own stage-1 (VA == PA).
    pub fn hyp_access(&self, pa: u64) -> Outcome {
        let root = self.hyp.hyp_pgd();
        match self.translate(Regime::El2, root, 48, pa) {
            Some(t) if t.read => Outcome::Access,
            _ => Outcome::Abort,
        }
    }

    /// Applies a spec call to the implementation, through the typed client.
    ///
    /// # Panics
    /// If a hypercall was not dispatched (the debug calls are built in).
    pub fn apply(&self, call: pkvm_spec::Call) -> Outcome {
        use pkvm_spec::Call;
        let c = self.client();
        let ret = |r: Result<(), HcallError>, id| Outcome::Ret(errno(r, id));
        match call {
            Call::ShareHyp { pfn, nr } => ret(c.share_hyp(pfn, nr), HostHcall::HostShareHyp),
            Call::UnshareHyp { pfn, nr } => ret(c.unshare_hyp(pfn, nr), HostHcall::HostUnshareHyp),
            Call::DonateHyp { pfn, nr } => ret(c.donate_hyp(pfn, nr), HostHcall::HostDonateHyp),
            Call::HypDonateHost { pfn, nr } => {
                ret(c.hyp_donate_host(pfn, nr), HostHcall::DebugHypDonateHost)
            }
            Call::Pin { pfn, nr } => ret(c.pin(pfn, nr), HostHcall::DebugPin),
            Call::Unpin { pfn, nr } => ret(c.unpin(pfn, nr), HostHcall::DebugUnpin),
            Call::DebugRead { pa } => ret(c.hyp_read(pa).map(|_| ()), HostHcall::DebugRead),
            Call::HostAccess { pa, write } => self.host_access(pa, write),
            Call::HypRead { pa } => self.hyp_access(pa),
            Call::VmInit {
                desc_pa,
                mc_pfn,
                mc_nr,
                ipa_bits,
                nr_vcpus,
                flags,
            } => {
                // The host fills in its descriptor where it may (a page it shares with EL2).
                // (No memory range: `mem_ipa`, `mem_size` = 0.)
                for (off, v) in [(0, ipa_bits), (8, nr_vcpus), (24, flags), (32, 0), (40, 0)] {
                    let pa = desc_pa.wrapping_add(off);
                    if self.host_may_write(pa) {
                        self.plat.write_u64(pa, v);
                    }
                }
                let r = c.vm_init(desc_pa, mc_pfn, mc_nr).map(|h| {
                    let slot = (h.raw() & 0xff) as usize - 1;
                    self.vms.lock().unwrap()[slot] = SlotVm {
                        handle: h.raw(),
                        vcpu_state: None,
                    };
                });
                ret(r, HostHcall::VmInit)
            }
            Call::VcpuInit {
                vm,
                state_pa,
                fp_pa,
            } => {
                // The host fills in a valid initial PSTATE where it may, as before a run: a
                // protected vCPU runs from the copy EL2 takes now, and an invalid one would
                // make every later run `EINVAL` (EL2 checks it on each entry; the spec does
                // not model register contents).
                self.write_pstate(state_pa);
                let r = c.vcpu_init(self.handle(vm), state_pa, fp_pa);
                if r.is_ok() {
                    self.vms.lock().unwrap()[vm].vcpu_state = Some(state_pa);
                }
                ret(r, HostHcall::VcpuInit)
            }
            Call::VcpuRun { vm } => {
                // The simulated guest powers off (its default action).
                self.prepare_run(vm);
                ret(c.vcpu_run(self.handle(vm)).map(|_| ()), HostHcall::VcpuRun)
            }
            Call::GuestMem { vm, op, ipa } => {
                use pkvm_abi::guest::smccc;
                let fid = match op {
                    GuestOp::Share => smccc::MEM_SHARE,
                    GuestOp::Unshare => smccc::MEM_UNSHARE,
                    GuestOp::Relinquish => smccc::MEM_RELINQUISH,
                };
                self.prepare_run(vm);
                let script = [SimGuestAction::Call([fid, ipa, 0, 0])];
                self.plat.guest_script.lock().unwrap().extend(script);
                let run = c.vcpu_run(self.handle(vm));
                // A run that did not start leaves its script unused.
                self.plat.guest_script.lock().unwrap().clear();
                match errno(run, HostHcall::VcpuRun) {
                    Err(e) => Outcome::Ret(Err(e)),
                    // The call's results are the vCPU's registers at the entry after it.
                    Ok(_) => Outcome::Ret(guest_call_result(
                        op,
                        self.plat.guest_x.lock().unwrap().last().copied(),
                    )),
                }
            }
            Call::VmTeardown { vm } => ret(
                c.vm_teardown(self.handle(vm)).map(|_| ()),
                HostHcall::VmTeardown,
            ),
            Call::VmReclaim { vm } => ret(
                c.vm_reclaim(self.handle(vm)).map(|_| ()),
                HostHcall::VmReclaim,
            ),
            Call::DonateGuest { vm, pfn, gfn, nr } => ret(
                c.donate_guest(self.handle(vm), pfn, gfn, nr),
                HostHcall::HostDonateGuest,
            ),
            Call::ShareGuest { vm, pfn, gfn, nr } => ret(
                c.share_guest(self.handle(vm), pfn, gfn, nr, pkvm_abi::guest::PROT_RWX),
                HostHcall::HostShareGuest,
            ),
            Call::UnshareGuest { vm, gfn, nr } => ret(
                c.unshare_guest(self.handle(vm), gfn, nr),
                HostHcall::HostUnshareGuest,
            ),
        }
    }

    /// Gives the vCPU of slot `vm` a valid entry state before a run. (The slot table's guard
    /// must not live across `host_may_write`, which reads vmemmap atomics: a scheduling point
    /// under Shuttle.)
    fn prepare_run(&self, vm: usize) {
        let state = self.vms.lock().unwrap().get(vm).and_then(|s| s.vcpu_state);
        if let Some(st) = state {
            self.write_pstate(st);
        }
    }

    /// Writes EL1h with DAIF masked as the PSTATE of the vCPU structure at `state_pa`, if the
    /// host may write there.
    fn write_pstate(&self, state_pa: u64) {
        let pstate = state_pa.wrapping_add(pkvm_abi::guest::vcpu_off::PSTATE as u64);
        if self.host_may_write(pstate) {
            self.plat
                .write_u64(pstate, pkvm_abi::guest::PSTATE_EL1H_DAIF);
        }
    }

    /// The handle of the VM in slot `vm` (stale or 0 when the slot holds no VM).
    #[must_use]
    pub fn vm_handle(&self, vm: usize) -> VmHandle {
        self.handle(vm)
    }

    /// The handle of the VM slot `vm` names (stale or 0 when the slot holds no VM).
    fn handle(&self, vm: usize) -> VmHandle {
        VmHandle::from_raw(self.vms.lock().unwrap().get(vm).map_or(0, |s| s.handle))
    }

    /// Whether the host may write the word at `pa`: RAM it owns or shares (never EL2's).
    fn host_may_write(&self, pa: u64) -> bool {
        pa.is_multiple_of(8)
            && self.plat.mem.is_ram(pa)
            && self.hyp.vmemmap().page(pa).is_some_and(|p| {
                matches!(p.host_state(), PageState::Owned | PageState::SharedOwned)
            })
    }

    /// Creates a VM (recorded in its slot, as [`pkvm_spec::Call::VmInit`] would): IPA space =
    /// the host's PA space, its descriptor in page `desc_pfn` (shared with EL2 and pinned
    /// by EL2 from now on), a 64-page memcache at `memcache_pfn` (donated), and, with
    /// `vcpu_pfn`, a vCPU whose state and FP structures share that page (shared, pinned twice).
    /// These pages are EL2's to pin: a test may aim calls at them to check the host cannot
    /// unpin, reclaim or read what EL2 uses. Read the abstract state afterwards to start a
    /// checker ([`pkvm_spec::Checker::with_state`]).
    ///
    /// # Panics
    /// If a hypercall fails.
    pub fn create_model_vm(
        &mut self,
        desc_pfn: u64,
        memcache_pfn: u64,
        vcpu_pfn: Option<u64>,
    ) -> VmHandle {
        self.create_model_vm_flags(desc_pfn, (memcache_pfn, 64), vcpu_pfn, 0)
    }

    /// [`Machine::create_model_vm`] with a memcache of `memcache_nr` pages and these
    /// [`pkvm_abi::guest::vm_flags`] (a protected VM, say).
    ///
    /// # Panics
    /// If a hypercall fails.
    pub fn create_model_vm_flags(
        &mut self,
        desc_pfn: u64,
        (memcache_pfn, memcache_nr): (u64, u64),
        vcpu_pfn: Option<u64>,
        flags: u64,
    ) -> VmHandle {
        let c = Client::new(&*self);
        let desc = desc_pfn << PAGE_SHIFT;
        c.share_hyp(desc_pfn, 1).expect("share the VM descriptor");
        self.plat.write_u64(desc, u64::from(self.cfg.pa_bits));
        self.plat.write_u64(desc + 8, 1);
        self.plat.write_u64(desc + 24, flags);
        self.plat.write_u64(desc + 32, 0);
        self.plat.write_u64(desc + 40, 0);
        let vm = c.vm_init(desc, memcache_pfn, memcache_nr).expect("VmInit");
        let slot = (vm.raw() & 0xff) as usize - 1;
        self.vms.lock().unwrap()[slot] = SlotVm {
            handle: vm.raw(),
            vcpu_state: None,
        };
        if let Some(vp) = vcpu_pfn {
            let st = vp << PAGE_SHIFT;
            c.share_hyp(vp, 1).expect("share the vCPU page");
            c.vcpu_init(vm, st, st + 0x400).expect("VcpuInit");
            self.vms.lock().unwrap()[slot].vcpu_state = Some(st);
        }
        vm
    }
}

/// The simulated host's hypercall instruction: the registers go to the hypervisor's portable
/// dispatcher, exactly as EL2's trap handler hands them over.
impl Transport for Machine<'_> {
    fn smccc(&self, fid: u64, args: [u64; 6]) -> [u64; 4] {
        let mut x = [0u64; 8];
        x[0] = fid;
        x[1..7].copy_from_slice(&args);
        self.hyp.handle_host_hcall(&mut x);
        [x[0], x[1], x[2], x[3]]
    }
}

/// A guest memory call's result from the guest's `x0..x2` after it: `Ok` for SUCCESS, else
/// the reason EL2 put in `x2`.
fn guest_call_result(op: GuestOp, x: Option<[u64; 4]>) -> Result<(), Error> {
    // On success, x1 is the number of granules done (one) for share and unshare, 0 for
    // relinquish, and x2 is 0; anything else is a broken answer (`EFAULT`, which no spec
    // outcome has).
    let done = u64::from(op != GuestOp::Relinquish);
    match x {
        Some([pkvm_abi::guest::smccc::SUCCESS, x1, 0, _]) if x1 == done => Ok(()),
        Some([pkvm_abi::guest::smccc::SUCCESS, ..]) => Err(Error::Fault),
        Some([_, _, reason, _]) => Err(Error::from_errno(reason as i64).unwrap_or(Error::Fault)),
        None => Err(Error::Fault),
    }
}

/// The errno of a dispatched call.
///
/// # Panics
/// If it was not dispatched.
fn errno<T>(r: Result<T, HcallError>, id: HostHcall) -> Result<T, Error> {
    r.map_err(|e| match e {
        HcallError::Errno(e) => e,
        HcallError::NotSupported(x0) => panic!("{id:?} was not dispatched (x0 = {x0:#x})"),
    })
}
