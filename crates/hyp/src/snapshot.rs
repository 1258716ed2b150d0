//! Snapshot and restore of the hypervisor's own state (feature `snapshot`, host tooling only):
//! the simulator's fuzz target boots one machine and puts it back to its just-booted state
//! before each input instead of booting a new one.
//!
//! [`Hyp`] keeps most of its state in memory it borrows: page tables and the pools' free-list
//! nodes in physical memory (through the platform), per-page metadata in the vmemmap. Those are
//! the caller's to save and restore (it owns them). A [`HypSnapshot`] is the rest: the pools'
//! own fields, the VM table's handle generation, the finalised flag and the counters, and the
//! table roots (which never change after boot; checked on restore).

use pkvm_abi::Error;
use pkvm_pgtable::Config;

use crate::hyp::Hyp;
use crate::page_alloc::PoolState;
use crate::platform::Platform;
use crate::stats::Counters;
use crate::sync::Ordering::Relaxed;

/// What [`Hyp::snapshot`] keeps (see the [module documentation](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HypSnapshot {
    host_pgt: (u64, Config),
    hyp_pgt: (u64, Config),
    host_pool: PoolState,
    hyp_pool: PoolState,
    finalised: bool,
    counters: [u64; 5],
    vm_generation: u64,
}

impl<P: Platform> Hyp<'_, P> {
    /// The hypervisor's own state, with no VM alive (after boot, or once every VM is torn
    /// down). Takes the host, hyp and VM table locks in order.
    ///
    /// # Errors
    /// [`Error::Busy`] if a VM is alive (a snapshot does not keep VMs).
    pub fn snapshot(&self) -> Result<HypSnapshot, Error> {
        // Destructured, so that a field added to `Hyp` must be considered here.
        let Hyp {
            plat: _,
            map: _,
            vmemmap: _,
            hyp_ranges: _,
            nr_hyp_ranges: _,
            devices: _,
            nr_devices: _,
            pa_bits: _,
            host,
            hyp,
            finalised,
            counters,
            vms,
        } = self;
        let host = host.lock();
        let hyp = hyp.lock();
        let vms = vms.lock();
        if vms.live() != 0 {
            return Err(Error::Busy);
        }
        Ok(HypSnapshot {
            host_pgt: (host.pgt.root(), host.pgt.config()),
            hyp_pgt: (hyp.pgt.root(), hyp.pgt.config()),
            host_pool: host.pool.state(),
            hyp_pool: hyp.pool.state(),
            finalised: finalised.load(Relaxed),
            counters: counter_values(counters),
            vm_generation: vms.generation(),
        })
    }

    /// Puts the hypervisor's own state back to `s` (taken from this hypervisor): every VM is
    /// forgotten (nothing is freed or written: the caller restores memory and the vmemmap to
    /// what they were at the snapshot, before or after this call, and before the next
    /// hypercall). Takes the host, hyp and VM table locks in order.
    ///
    /// # Errors
    /// [`Error::Inval`] if `s` is another hypervisor's (other table roots or pools); nothing
    /// changes then.
    pub fn restore(&self, s: &HypSnapshot) -> Result<(), Error> {
        let mut host = self.host.lock();
        let mut hyp = self.hyp.lock();
        let mut vms = self.vms.lock();
        if (host.pgt.root(), host.pgt.config()) != s.host_pgt
            || (hyp.pgt.root(), hyp.pgt.config()) != s.hyp_pgt
            || host.pool.state().range() != s.host_pool.range()
            || hyp.pool.state().range() != s.hyp_pool.range()
        {
            return Err(Error::Inval);
        }
        host.pool.restore_state(&s.host_pool)?;
        hyp.pool.restore_state(&s.hyp_pool)?;
        vms.clear(s.vm_generation);
        self.finalised.store(s.finalised, Relaxed);
        let Counters {
            host_faults,
            injected_aborts,
            injected_undefs,
            emulated_mmio,
            refused_device_writes,
        } = &self.counters;
        for (c, &v) in [
            host_faults,
            injected_aborts,
            injected_undefs,
            emulated_mmio,
            refused_device_writes,
        ]
        .into_iter()
        .zip(&s.counters)
        {
            c.store(v, Relaxed);
        }
        Ok(())
    }
}

fn counter_values(c: &Counters) -> [u64; 5] {
    let Counters {
        host_faults,
        injected_aborts,
        injected_undefs,
        emulated_mmio,
        refused_device_writes,
    } = c;
    [
        host_faults,
        injected_aborts,
        injected_undefs,
        emulated_mmio,
        refused_device_writes,
    ]
    .map(|c| c.load(Relaxed))
}
