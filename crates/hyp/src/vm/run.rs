//! Running the vCPU: entry checks, the world switch, and the exit decoded for the host.

use pkvm_abi::guest::{VcpuExit, exit, sys, vcpu_off};
use pkvm_abi::{Error, PAGE_SIZE, psci};
use pkvm_arch::esr::{DataAbort, Ec, Esr, FaultClass, SysregAccess, fault_ipa};
use pkvm_arch::exception::PstateFeatures;

use super::guest_call::GuestCall;
use super::{PendingMmio, pstate_is_valid};
use crate::hyp::Hyp;
use crate::platform::{GuestEntry, GuestExit, PhysMem, Platform, VgicRegs};

/// `PSTATE.BTYPE` (SPSR bits 11:10).
const PSTATE_BTYPE: u64 = 3 << 10;

/// The host's `VcpuState` at `pa`, shared with EL2 and pinned while the vCPU exists. The host
/// may change it at any time: every field is read once, through these accessors, and the copy
/// is what EL2 validates and uses.
pub(super) struct SharedVcpu<'p, M: PhysMem> {
    mem: &'p M,
    pa: u64,
}

impl<M: PhysMem> Clone for SharedVcpu<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M: PhysMem> Copy for SharedVcpu<'_, M> {}

impl<M: PhysMem> SharedVcpu<'_, M> {
    #[inline(always)]
    pub(super) fn read(&self, off: usize) -> u64 {
        self.mem.read_u64(self.pa + off as u64)
    }

    #[inline(always)]
    pub(super) fn write(&self, off: usize, v: u64) {
        self.mem.write_u64(self.pa + off as u64, v);
    }

    #[inline(always)]
    fn pc(&self) -> u64 {
        self.read(vcpu_off::PC)
    }

    /// Moves the PC past the instruction that trapped, and clears `PSTATE.BTYPE` (the
    /// emulated instruction completed as any other would: a branch target it may have been
    /// is consumed).
    #[inline(always)]
    fn skip_instruction(&self) {
        self.write(vcpu_off::PC, self.pc().wrapping_add(4));
        self.write(vcpu_off::PSTATE, self.pstate() & !PSTATE_BTYPE);
    }

    #[inline(always)]
    pub(super) fn pstate(&self) -> u64 {
        self.read(vcpu_off::PSTATE)
    }

    /// `x<n>` (`n < 31`).
    #[inline(always)]
    pub(super) fn reg(&self, n: u8) -> u64 {
        self.read(vcpu_off::reg(n))
    }

    /// Sets `x<n>` (`n < 31`).
    #[inline(always)]
    pub(super) fn set_reg(&self, n: u8, v: u64) {
        self.write(vcpu_off::reg(n), v);
    }

    /// `exit.mmio_data`: the value the host supplies for an emulated read.
    #[inline(always)]
    fn mmio_data(&self) -> u64 {
        self.read(vcpu_off::EXIT_MMIO_DATA)
    }

    #[inline(always)]
    fn write_exit(&self, e: &VcpuExit) {
        self.mem.write_obj(self.pa + vcpu_off::EXIT as u64, e);
    }
}

impl<P: Platform> Hyp<'_, P> {
    /// `vcpu_run(handle) -> exit reason`: validates the vCPU's PSTATE (read once), completes
    /// a pending MMIO access, runs the guest through the platform's world switch and decodes
    /// the exit into the vCPU structure's `exit`. Guest calls EL2 answers itself
    /// ([`GuestCall`]) are answered and the guest re-entered without an exit.
    ///
    /// # Errors
    /// `ENOENT` unknown handle or no vCPU; `EPERM` for a dying VM; `EBUSY` if it is already
    /// running; `EINVAL` for an invalid PSTATE (nothing runs, or — when the host changed it
    /// while EL2 answered a guest call — the run stops there) or a virtual CPU interface EL2
    /// refuses (see `vm/vgic.rs`; nothing runs).
    pub fn vcpu_run(&self, handle: u64, idx: u64) -> Result<u64, Error> {
        // Filled in place only when the host turns the interface on: the test guests' hot
        // path never copies or zeroes it (EL2's memcpy and memset are byte loops).
        let mut vgic: Option<VgicRegs> = None;
        let (mut entry, mem, protected, host) = {
            let mut vms = self.vms.lock();
            let vm = vms.get(handle)?.live()?;
            let vttbr = vm.vttbr().bits();
            let (mem, protected) = (vm.mem, vm.protected);
            let vcpu = vm
                .vcpus
                .get_mut(idx as usize)
                .ok_or(Error::Inval)?
                .as_mut()
                .ok_or(Error::NoEnt)?;
            if vcpu.running {
                return Err(Error::Busy);
            }
            if !vcpu.on {
                return Err(Error::Perm);
            }
            // The registers the guest runs from: the host's structure, or for a protected
            // vCPU EL2's private copy.
            let host = self.shared_vcpu(vcpu.state_pa.get());
            let (st, fp_pa) = match vcpu.private {
                Some(p) => (
                    self.shared_vcpu(p.get()),
                    p.get() + super::PRIVATE_FP_OFFSET,
                ),
                None => (host, vcpu.fp_pa.get()),
            };
            // Read once, validate the private copies.
            let pstate = st.pstate();
            let mut pc = st.pc();
            if !pstate_is_valid(pstate) {
                return Err(Error::Inval);
            }
            super::vgic::read(host, self.plat, &mut vgic)?;
            if core::mem::take(&mut vcpu.pending_hvc) {
                Self::take_hvc_answer(st, host);
            }
            if let Some(m) = vcpu.pending_mmio.take() {
                pc = pc.wrapping_add(4);
                Self::complete_mmio(st, host, m);
            }
            vcpu.running = true;
            let entry = GuestEntry {
                vcpu_pa: st.pa,
                fp_pa,
                pc,
                pstate,
                vttbr,
                vmpidr: pkvm_abi::guest::vcpu_mpidr(idx as usize),
            };
            (entry, mem, protected, host)
        };
        let (reason, pending) = loop {
            // The guest runs for as long as it likes, outside every lock: under Shuttle, other
            // CPUs get to run here (nothing in the default build).
            crate::sync::preemption_point();
            let ex = self.plat.run_guest(&entry, vgic.as_mut());
            let st = self.shared_vcpu(entry.vcpu_pa);
            if let Some(call) = Self::answered_call(&ex, st, protected) {
                self.guest_call(handle, call, st);
            } else {
                let (reason, pending) = self.decode_exit(&entry, &ex, mem);
                // MMIO guard (protected VMs, whose exit record is not the host's until it is
                // published): the guest gets the abort instead, the host sees nothing.
                if protected
                    && matches!(reason, exit::MMIO | exit::FAULT)
                    && self.guard_refuses(handle, &ex, mem)
                {
                    (entry.pc, entry.pstate) =
                        Self::inject_sea(st, &ex, self.plat.pstate_features());
                    continue;
                }
                // ID, debug and PMU registers: answered at EL2.
                if reason != exit::FAULT || !self.emulate_sysreg(st, &ex) {
                    break (reason, pending);
                }
            }
            // Back in: the PC and PSTATE the world switch saved, read once and checked again.
            let (pc, pstate) = (st.pc(), st.pstate());
            if !pstate_is_valid(pstate) {
                self.publish_vgic(host, vgic.as_ref());
                self.stop_running(handle, idx, None, None);
                return Err(Error::Inval);
            }
            (entry.pc, entry.pstate) = (pc, pstate);
        };
        self.publish_vgic(host, vgic.as_ref());
        self.stop_running(handle, idx, pending, Some(reason));
        Ok(reason)
    }

    /// The virtual CPU interface as the run left it, to the host's structure (if it was on).
    #[inline(always)]
    fn publish_vgic(&self, host: SharedVcpu<'_, P>, vgic: Option<&VgicRegs>) {
        if let Some(v) = vgic {
            super::vgic::publish(host, v, self.plat);
        }
    }

    /// The vCPU of `handle` is no longer running; `pending` is the MMIO access to complete.
    /// A protected vCPU's exit is published to the host's structure here ([`reason`] of the
    /// exit, `None` when the run stopped without one).
    #[inline(always)]
    fn stop_running(
        &self,
        handle: u64,
        idx: u64,
        pending: Option<PendingMmio>,
        reason: Option<u64>,
    ) {
        let mut vms = self.vms.lock();
        if let Ok(vm) = vms.get(handle)
            && let Some(Some(v)) = vm.vcpus.get_mut(idx as usize)
        {
            v.running = false;
            v.pending_mmio = pending;
            if let (Some(p), Some(reason)) = (v.private, reason) {
                let st = self.shared_vcpu(p.get());
                let host = self.shared_vcpu(v.state_pa.get());
                Self::publish_exit(st, host, reason);
                v.pending_hvc = reason == exit::HYPERCALL;
                // PSCI CPU_OFF: the vCPU is off until the guest starts it again.
                let code = st.read(vcpu_off::EXIT + core::mem::offset_of!(VcpuExit, code));
                if reason == exit::SYSTEM_EVENT && code == u64::from(psci::CPU_OFF) {
                    v.on = false;
                }
            }
        }
    }

    /// Whether MMIO guard refuses this exit: a stage-2 translation fault on a data access
    /// outside the guest's memory, at a page the guest did not map for MMIO, once it enrolled.
    /// Out of line: only MMIO and fault exits of protected VMs get here.
    #[inline(never)]
    fn guard_refuses(&self, handle: u64, ex: &GuestExit, (mem_start, mem_end): (u64, u64)) -> bool {
        let esr = Esr(ex.esr);
        if ex.vector != 0
            || esr.ec_bits() != Ec::DabtLow.bits()
            || esr.fault_class() != FaultClass::Translation
            || esr.data_abort().is_some_and(|d| d.s1ptw)
        {
            return false;
        }
        let ipa = fault_ipa(ex.hpfar, ex.far).get();
        if (mem_start..mem_end).contains(&ipa) {
            return false;
        }
        let mut vms = self.vms.lock();
        let Ok(vm) = vms.get(handle) else {
            return false;
        };
        vm.mmio_guard
            && !matches!(
                vm.pgt.leaf(&vm.pool, ipa & !(PAGE_SIZE - 1)),
                Ok(pkvm_pgtable::Leaf::Annotated {
                    owner: super::MMIO_GUARD_OWNER,
                    ..
                })
            )
    }

    /// Makes the guest take a synchronous external abort for the access `ex` describes (its
    /// EL1 registers written as the architecture's exception entry would); returns the PC and
    /// PSTATE it continues at. Out of line: rare.
    #[inline(never)]
    fn inject_sea(st: SharedVcpu<'_, P>, ex: &GuestExit, features: PstateFeatures) -> (u64, u64) {
        use pkvm_abi::guest::{sys, vcpu_off};
        use pkvm_arch::exception::{el1_sync, sea_esr};
        let (pc, pstate) = (st.pc(), st.pstate());
        let vbar = st.read(vcpu_off::sys(sys::VBAR_EL1));
        let sctlr = st.read(vcpu_off::sys(sys::SCTLR_EL1));
        // PAN, SSBS, TCO and ALLINT at the vector as this CPU's features say.
        let e = el1_sync(sea_esr(ex.esr, pstate), pc, pstate, vbar, sctlr, features);
        st.write(vcpu_off::sys(sys::ESR_EL1), e.esr);
        st.write(vcpu_off::sys(sys::FAR_EL1), ex.far);
        st.write(vcpu_off::sys(sys::ELR_EL1), e.elr);
        st.write(vcpu_off::sys(sys::SPSR_EL1), e.spsr);
        (e.vector, e.pstate)
    }

    /// Emulates the trapped system-register access of exit `ex` if it is one EL2 answers
    /// itself, and moves the guest's PC past the instruction: an ID register read
    /// (`HCR_EL2.TID3`) gives the CPU's value without the features guests do not get
    /// ([`super::idregs`]); a debug register (`Op0` = 2, trapped by `MDCR_EL2.TDA/TDOSA/TDRA`)
    /// or a PMUv3 register (`TPM`/`TPMCR`) reads as zero and ignores writes — the guest has no
    /// self-hosted debug and no PMU, as an OS that probes and resets them at boot can find
    /// out. False for anything else (the run ends with its `FAULT` exit). Out of line: not on
    /// the hot path.
    #[inline(never)]
    fn emulate_sysreg(&self, st: SharedVcpu<'_, P>, ex: &GuestExit) -> bool {
        let esr = Esr(ex.esr);
        if ex.vector != 0 || esr.ec() != Ec::Sysreg64 {
            return false;
        }
        let a = SysregAccess::from_iss(esr.iss());
        let value = if super::idregs::is_id_reg(a.op0, a.op1, a.crn, a.crm) && a.read {
            super::idregs::sanitize(a.crm, a.op2, self.plat.read_id_reg(a.crm, a.op2))
        } else if a.is_debug() || a.is_pmu() {
            0
        } else {
            return false;
        };
        if a.read && a.rt < 31 {
            st.set_reg(a.rt, value);
        }
        st.skip_instruction();
        true
    }

    /// The guest call EL2 answers that this exit is, if any: an `HVC` with a function id of
    /// [`GuestCall`] (PSCI's only for a protected VM).
    #[inline(always)]
    fn answered_call(ex: &GuestExit, st: SharedVcpu<'_, P>, protected: bool) -> Option<GuestCall> {
        if ex.vector != 0 || Esr(ex.esr).ec_bits() != Ec::Hvc64.bits() {
            return None;
        }
        GuestCall::decode(st.reg(0) as u32, protected)
    }

    #[inline(always)]
    pub(super) fn shared_vcpu(&self, pa: u64) -> SharedVcpu<'_, P> {
        SharedVcpu { mem: self.plat, pa }
    }

    /// Turns an exit into the vCPU structure's `exit` and a reason. Inlined into `vcpu_run`:
    /// the round trip is the hot path of a running guest (the rare MMIO work is out of line).
    #[inline(always)]
    fn decode_exit(
        &self,
        e: &GuestEntry,
        ex: &GuestExit,
        (mem_start, mem_end): (u64, u64),
    ) -> (u64, Option<PendingMmio>) {
        let st = self.shared_vcpu(e.vcpu_pa);
        let esr = Esr(ex.esr);
        // Matched on the raw class against the enum's values: the round trip is the hot path,
        // and the raw compare is what the compiler makes shortest.
        const HVC64: u8 = Ec::Hvc64.bits();
        const SMC64: u8 = Ec::Smc64.bits();
        const WFX: u8 = Ec::Wfx.bits();
        const DABT_LOW: u8 = Ec::DabtLow.bits();
        const IABT_LOW: u8 = Ec::IabtLow.bits();
        const SYSREG: u8 = Ec::Sysreg64.bits();
        // `ESR_EL2` means something only for a synchronous exit, `FAR_EL2` only for an abort:
        // otherwise they still hold an earlier exception's (an abort EL2 answered itself,
        // injecting it into the guest), which the host must not see.
        let sync = ex.vector == 0;
        let abort = sync && matches!(esr.ec_bits(), DABT_LOW | IABT_LOW);
        let mut out = VcpuExit {
            esr: if sync { ex.esr } else { 0 },
            far: if abort { ex.far } else { 0 },
            ..VcpuExit::default()
        };
        let mut pending = None;
        out.reason = match (ex.vector, esr.ec_bits()) {
            (1 | 2, _) => exit::IRQ,
            (0, ec @ (HVC64 | SMC64)) => {
                if ec == SMC64 {
                    // A trapped SMC reports its own address.
                    st.skip_instruction();
                }
                let x0 = st.reg(0) as u32;
                // One vCPU per VM: turning it off ends the VM's run as powering off does.
                if x0 == psci::SYSTEM_OFF || x0 == psci::SYSTEM_RESET || x0 == psci::CPU_OFF {
                    out.code = u64::from(x0);
                    exit::SYSTEM_EVENT
                } else {
                    exit::HYPERCALL
                }
            }
            (0, WFX) => {
                st.skip_instruction();
                exit::IDLE
            }
            (0, ec @ (DABT_LOW | IABT_LOW))
                if esr.fault_class() == FaultClass::Translation
                    && !esr.data_abort().is_some_and(|d| d.s1ptw)
                    && (mem_start..mem_end).contains(&fault_ipa(ex.hpfar, ex.far).get()) =>
            {
                // The guest's own memory, where it has no page: the host gives it one.
                out.ipa = fault_ipa(ex.hpfar, ex.far).get() & !(PAGE_SIZE - 1);
                out.mmio_write =
                    u64::from(ec == DABT_LOW && esr.data_abort().is_some_and(|d| d.wnr && !d.cm));
                exit::MEM_FAULT
            }
            (0, DABT_LOW)
                if esr.data_abort().is_some_and(|d| d.isv && !d.s1ptw && !d.cm)
                    && esr.fault_class() == FaultClass::Translation =>
            {
                // Translation fault with a valid syndrome: MMIO.
                out.ipa = fault_ipa(ex.hpfar, ex.far).get();
                pending = Some(Self::mmio_exit(st, esr, &mut out));
                exit::MMIO
            }
            (0, SYSREG) if Self::sgi_exit(st, esr, &mut out) => exit::SGI,
            _ => {
                // `HPFAR_EL2` holds the IPA only for a stage-2 translation, access-flag or
                // permission fault; it is UNKNOWN otherwise (an external abort, say): 0 then.
                if matches!(esr.ec(), Ec::IabtLow | Ec::DabtLow) && esr.fault_class().hpfar_valid()
                {
                    out.ipa = fault_ipa(ex.hpfar, ex.far).get();
                }
                exit::FAULT
            }
        };
        st.write_exit(&out);
        (out.reason, pending)
    }

    /// A trapped write of an SGI register (`ICC_SGI1R_EL1`, `ICC_ASGI1R_EL1`, `ICC_SGI0R_EL1`:
    /// `Op0` 3, `Op1` 0, `CRn` 12, `CRm` 11, `Op2` 5..=7): fills `out` (the value, the
    /// register) and moves the PC past it; false for anything else. The host's VMM delivers
    /// the SGIs (it manages the virtual GIC); this works for a protected vCPU too, whose
    /// registers the host cannot read. Out of line.
    #[inline(never)]
    fn sgi_exit(st: SharedVcpu<'_, P>, esr: Esr, out: &mut VcpuExit) -> bool {
        let a = SysregAccess::from_iss(esr.iss());
        if a.read || (a.op0, a.op1, a.crn, a.crm) != (3, 0, 12, 11) || !(5..=7).contains(&a.op2) {
            return false;
        }
        out.mmio_data = if a.rt == 31 { 0 } else { st.reg(a.rt) };
        out.code = u64::from(a.op2);
        st.skip_instruction();
        true
    }

    /// Completes the MMIO read `m` the host emulated: its value, as the load would have left
    /// it in the register (sized, sign-extended if `SSE`, 32 bits wide unless `SF`). Out of
    /// line, as [`Hyp::mmio_exit`].
    /// `host` is the host's structure, where the value is (for a non-protected vCPU the same
    /// as `st`).
    #[inline(never)]
    fn complete_mmio(st: SharedVcpu<'_, P>, host: SharedVcpu<'_, P>, m: PendingMmio) {
        let d = DataAbort::from_iss(m.iss);
        if !d.wnr && d.srt < 31 {
            st.set_reg(d.srt, d.load_value(host.mmio_data()));
        }
    }

    /// A protected vCPU's exit, told to the host: the exit record, its virtual timer
    /// (`CNTV_CTL_EL0`, `CNTV_CVAL_EL0`: the host's VMM delivers the timer's interrupt, as with
    /// pKVM) and, for a hypercall exit, `x0..x3` (its arguments) — nothing else of the private
    /// state.
    #[inline(never)]
    fn publish_exit(st: SharedVcpu<'_, P>, host: SharedVcpu<'_, P>, reason: u64) {
        let exit: VcpuExit = st.mem.read_obj(st.pa + vcpu_off::EXIT as u64);
        host.write_exit(&exit);
        for r in [sys::CNTV_CTL_EL0, sys::CNTV_CVAL_EL0] {
            host.write(vcpu_off::sys(r), st.read(vcpu_off::sys(r)));
        }
        if reason == exit::HYPERCALL {
            for n in 0..4 {
                host.set_reg(n, st.reg(n));
            }
        }
    }

    /// The host's answer to a protected vCPU's hypercall exit (`x0..x3`, read once) into its
    /// private registers.
    #[inline(never)]
    fn take_hvc_answer(st: SharedVcpu<'_, P>, host: SharedVcpu<'_, P>) {
        for n in 0..4 {
            st.set_reg(n, host.reg(n));
        }
    }

    /// Fills `out` for an MMIO exit (size, direction, the stored value) and returns the
    /// access to complete on the next run. Out of line: the hypercall exits stay short.
    #[inline(never)]
    fn mmio_exit(st: SharedVcpu<'_, P>, esr: Esr, out: &mut VcpuExit) -> PendingMmio {
        let d = DataAbort::from_iss(esr.iss());
        out.mmio_size = u64::from(d.size());
        out.mmio_write = u64::from(d.wnr);
        if d.wnr {
            let v = if d.srt == 31 { 0 } else { st.reg(d.srt) };
            out.mmio_data = d.store_value(v);
        }
        PendingMmio { iss: esr.iss() }
    }
}
