use super::*;
use alloc::vec;

const RAM: (u64, u64) = (0x4000_0000, 0x4080_0000); // 8 MiB
const HYP: (u64, u64) = (0x4070_0000, 0x4080_0000); // last 1 MiB is EL2's

fn machine() -> Machine {
    Machine {
        memory: vec![RAM, (0x8000_0000, 0x8000_4000)],
        hyp_memory: vec![HYP],
        pa_bits: 40,
        hidden_mmio: vec![(0x0808_0000, 0x080a_0000)],
        max_count: MAX_COUNT,
        max_host_pins: MAX_HOST_PINS,
    }
}

const P: u64 = 0x4010_0000 >> 12;

fn ret(s: &mut Spec, c: Call) -> Result<(), Error> {
    match s.step(c) {
        Outcome::Ret(r) => r,
        o => panic!("unexpected {o:?}"),
    }
}

/// The transition script (share, donate, unshare, reclaim in order), one page, states as (host, hyp).
#[test]
fn transition_script() {
    use Call::*;
    let mut s = Spec::new(machine());
    let (pfn, nr) = (P, 1);
    // Start (NOPAGE, OWNED): reach it by a host donation.
    assert_eq!(ret(&mut s, DonateHyp { pfn, nr }), Ok(()));
    assert_eq!(s.page(P), Page::HYP_IDLE);
    let before = s.state().clone();
    for c in [
        DonateHyp { pfn, nr },
        ShareHyp { pfn, nr },
        UnshareHyp { pfn, nr },
        Pin { pfn, nr },
    ] {
        assert_eq!(ret(&mut s, c), Err(Error::Perm), "{c:?}");
        assert_eq!(s.state(), &before);
    }
    // 2.
    assert_eq!(ret(&mut s, HypDonateHost { pfn, nr }), Ok(()));
    assert_eq!(s.page(P), Page::HOST_OWNED);
    assert!(s.state().pages.is_empty() && s.state().hyp_maps.is_empty());
    for c in [
        HypDonateHost { pfn, nr },
        UnshareHyp { pfn, nr },
        Pin { pfn, nr },
    ] {
        assert_eq!(ret(&mut s, c), Err(Error::Perm), "{c:?}");
    }
    // 3.
    assert_eq!(ret(&mut s, ShareHyp { pfn, nr }), Ok(()));
    assert_eq!(
        s.page(P),
        Page {
            host: State::SharedOwned,
            hyp: State::SharedBorrowed,
            shares: 1,
            ..Page::HOST_OWNED
        }
    );
    for c in [DonateHyp { pfn, nr }, HypDonateHost { pfn, nr }] {
        assert_eq!(ret(&mut s, c), Err(Error::Perm), "{c:?}");
    }
    assert_eq!(ret(&mut s, ShareHyp { pfn, nr }), Ok(()));
    assert_eq!(s.page(P).shares, 2);
    assert_eq!(ret(&mut s, UnshareHyp { pfn, nr }), Ok(()));
    assert_eq!(s.page(P).shares, 1);
    assert!(s.state().hyp_maps.contains_key(&P), "still mapped at EL2");
    // 4.
    assert_eq!(ret(&mut s, Pin { pfn, nr }), Ok(()));
    assert_eq!(ret(&mut s, Pin { pfn, nr }), Ok(()));
    assert_eq!(ret(&mut s, Unpin { pfn, nr }), Ok(()));
    assert_eq!(s.page(P).host_pins, 1);
    let before = s.state().clone();
    assert_eq!(ret(&mut s, UnshareHyp { pfn, nr }), Err(Error::Busy));
    assert_eq!(s.state(), &before);
    // 5.
    assert_eq!(ret(&mut s, Unpin { pfn, nr }), Ok(()));
    assert_eq!(ret(&mut s, UnshareHyp { pfn, nr }), Ok(()));
    assert_eq!(s.page(P), Page::HOST_OWNED);
    assert!(!s.state().hyp_maps.contains_key(&P), "EL2 mapping gone");
    // 6.
    assert_eq!(ret(&mut s, UnshareHyp { pfn, nr }), Err(Error::Perm));
    assert_eq!(ret(&mut s, DonateHyp { pfn, nr }), Ok(()));
    assert_eq!(s.page(P), Page::HYP_IDLE);
}

#[test]
fn range_validation_order() {
    use Call::*;
    let mut s = Spec::new(machine());
    assert_eq!(ret(&mut s, ShareHyp { pfn: P, nr: 0 }), Err(Error::Inval));
    assert_eq!(
        ret(
            &mut s,
            ShareHyp {
                pfn: u64::MAX,
                nr: 2
            }
        ),
        Err(Error::Inval)
    );
    assert_eq!(
        ret(
            &mut s,
            ShareHyp {
                pfn: 1 << 28,
                nr: 1
            }
        ),
        Err(Error::Range)
    );
    assert_eq!(
        ret(
            &mut s,
            ShareHyp {
                pfn: (1 << 28) - 1,
                nr: 2
            }
        ),
        Err(Error::Range)
    );
    // MMIO, a hole, straddling the end of RAM, straddling two regions.
    assert_eq!(
        ret(
            &mut s,
            ShareHyp {
                pfn: 0x0900_0000 >> 12,
                nr: 1
            }
        ),
        Err(Error::Inval)
    );
    assert_eq!(
        ret(
            &mut s,
            ShareHyp {
                pfn: (RAM.1 >> 12) - 1,
                nr: 2
            }
        ),
        Err(Error::Inval)
    );
    assert_eq!(
        ret(
            &mut s,
            ShareHyp {
                pfn: 0x8000_0000 >> 12,
                nr: 5
            }
        ),
        Err(Error::Inval)
    );
    // Hyp memory: EPERM (it is memory, in the wrong state).
    assert_eq!(
        ret(
            &mut s,
            ShareHyp {
                pfn: HYP.0 >> 12,
                nr: 1
            }
        ),
        Err(Error::Perm)
    );
    // Range whose last page is bad leaves everything unchanged.
    assert_eq!(
        ret(
            &mut s,
            ShareHyp {
                pfn: (HYP.0 >> 12) - 3,
                nr: 4
            }
        ),
        Err(Error::Perm)
    );
    assert!(s.state().pages.is_empty());
    // The hypervisor never gives its own memory away.
    assert_eq!(
        ret(
            &mut s,
            HypDonateHost {
                pfn: HYP.0 >> 12,
                nr: 1
            }
        ),
        Err(Error::Perm)
    );
}

#[test]
fn saturation_is_busy() {
    let mut s = Spec::new(machine());
    let mut p = Page {
        host: State::SharedOwned,
        hyp: State::SharedBorrowed,
        shares: MAX_COUNT,
        ..Page::HOST_OWNED
    };
    s.set_page(P, p);
    s.state.hyp_maps.insert(P, HypProt::ReadWrite);
    assert_eq!(
        ret(&mut s, Call::ShareHyp { pfn: P, nr: 1 }),
        Err(Error::Busy)
    );
    p.host_pins = MAX_HOST_PINS;
    s.set_page(P, p);
    assert_eq!(ret(&mut s, Call::Pin { pfn: P, nr: 1 }), Err(Error::Busy));
}

/// EL2's own pins (a live VM's structure) are not the host's to drop: the debug unpin call
/// refuses a page that only EL2 pins, and the page stays unshareable.
#[test]
fn host_cannot_drop_el2_pins() {
    let mut s = Spec::new(machine());
    let shared = Page {
        host: State::SharedOwned,
        hyp: State::SharedBorrowed,
        shares: 1,
        pins: 1,
        ..Page::HOST_OWNED
    };
    s.set_page(P, shared);
    s.state.hyp_maps.insert(P, HypProt::ReadWrite);
    assert_eq!(ret(&mut s, Call::Unpin { pfn: P, nr: 1 }), Err(Error::Perm));
    assert_eq!(
        ret(&mut s, Call::UnshareHyp { pfn: P, nr: 1 }),
        Err(Error::Busy)
    );
    // A host pin on top is the host's to drop, EL2's stays.
    assert_eq!(ret(&mut s, Call::Pin { pfn: P, nr: 1 }), Ok(()));
    assert_eq!(ret(&mut s, Call::Unpin { pfn: P, nr: 1 }), Ok(()));
    assert_eq!(s.page(P), shared);
    assert_eq!(ret(&mut s, Call::Unpin { pfn: P, nr: 1 }), Err(Error::Perm));
}

/// Only idle donated pages go back to the host: never a VM's memcache page.
#[test]
fn hyp_donate_host_needs_an_idle_page() {
    let mut s = Spec::new(machine());
    s.set_page(
        P,
        Page {
            hyp_use: Use::Vm,
            ..Page::HYP_IDLE
        },
    );
    s.state.hyp_maps.insert(P, HypProt::ReadWrite);
    let before = s.state().clone();
    assert_eq!(
        ret(&mut s, Call::HypDonateHost { pfn: P, nr: 1 }),
        Err(Error::Perm)
    );
    assert_eq!(s.state(), &before);
    assert_eq!(ret(&mut s, Call::DonateHyp { pfn: P + 1, nr: 1 }), Ok(()));
    assert_eq!(s.page(P + 1), Page::HYP_IDLE);
    assert_eq!(
        ret(&mut s, Call::HypDonateHost { pfn: P, nr: 2 }),
        Err(Error::Perm)
    );
    assert_eq!(
        ret(&mut s, Call::HypDonateHost { pfn: P + 1, nr: 1 }),
        Ok(())
    );
}

/// The debug read reads only pages the host shares with EL2.
#[test]
fn debug_read_only_of_shared_pages() {
    let mut s = Spec::new(machine());
    let pa = P << 12;
    assert_eq!(ret(&mut s, Call::DebugRead { pa }), Err(Error::Perm));
    assert_eq!(ret(&mut s, Call::DebugRead { pa: HYP.0 }), Err(Error::Perm));
    assert_eq!(
        ret(&mut s, Call::DebugRead { pa: 0x0900_0000 }),
        Err(Error::Perm)
    );
    assert_eq!(ret(&mut s, Call::ShareHyp { pfn: P, nr: 1 }), Ok(()));
    assert_eq!(ret(&mut s, Call::DebugRead { pa: pa + 8 }), Ok(()));
    assert_eq!(
        ret(&mut s, Call::DebugRead { pa: pa + 4 }),
        Err(Error::Inval)
    );
    assert_eq!(ret(&mut s, Call::UnshareHyp { pfn: P, nr: 1 }), Ok(()));
    assert_eq!(ret(&mut s, Call::DonateHyp { pfn: P, nr: 1 }), Ok(()));
    assert_eq!(ret(&mut s, Call::DebugRead { pa }), Err(Error::Perm));
}

#[test]
fn host_access_follows_ownership() {
    let mut s = Spec::new(machine());
    let pa = P << 12;
    assert_eq!(
        s.step(Call::HostAccess { pa, write: true }),
        Outcome::Access
    );
    assert_eq!(
        s.step(Call::HostAccess {
            pa: HYP.0,
            write: false
        }),
        Outcome::Abort
    );
    assert_eq!(
        s.step(Call::HostAccess {
            pa: 0x0900_0000,
            write: false
        }),
        Outcome::Access
    );
    assert_eq!(
        s.step(Call::HostAccess {
            pa: 1 << 40,
            write: false
        }),
        Outcome::Abort
    );
    // A device EL2 hides (the ITS): the host never reaches it.
    assert_eq!(
        s.step(Call::HostAccess {
            pa: 0x0808_0040,
            write: true
        }),
        Outcome::Abort
    );
    assert_eq!(s.step(Call::HypRead { pa }), Outcome::Abort);
    assert_eq!(ret(&mut s, Call::DonateHyp { pfn: P, nr: 1 }), Ok(()));
    assert_eq!(
        s.step(Call::HostAccess { pa, write: false }),
        Outcome::Abort
    );
    assert_eq!(s.step(Call::HypRead { pa }), Outcome::Access);
}

/// A VM's whole life in the model: what EL2 pins and owns, a guest mapping at gfn != pfn,
/// and teardown giving everything back.
#[test]
fn vm_lifecycle() {
    use Call::*;
    let mut s = Spec::new(machine());
    let (desc, mc, vcpu, page) = (P, P + 0x10, P + 1, P + 2);
    let boot = s.state().clone();
    let vm_init = |mc_nr| VmInit {
        desc_pa: desc << 12,
        mc_pfn: mc,
        mc_nr,
        ipa_bits: 32,
        nr_vcpus: 1,
        flags: 0,
    };
    // The descriptor must be shared with EL2 first; nothing changes when refused.
    assert_eq!(ret(&mut s, vm_init(4)), Err(Error::Perm));
    assert_eq!(s.state(), &boot);
    assert_eq!(ret(&mut s, ShareHyp { pfn: desc, nr: 1 }), Ok(()));
    assert_eq!(
        ret(&mut s, vm_init(1)),
        Err(Error::Inval),
        "memcache too small"
    );
    assert_eq!(ret(&mut s, vm_init(4)), Ok(()));
    assert_eq!(s.page(desc).pins, 1);
    assert_eq!(s.page(mc).hyp_use, Use::Vm);
    assert!(s.state().hyp_maps.contains_key(&(mc + 3)));
    assert_eq!(
        ret(&mut s, UnshareHyp { pfn: desc, nr: 1 }),
        Err(Error::Busy)
    );
    // The vCPU: both structures in one page, pinned twice.
    let vcpu_init = |vm| VcpuInit {
        vm,
        state_pa: vcpu << 12,
        fp_pa: (vcpu << 12) + 0x800,
    };
    assert_eq!(
        ret(&mut s, vcpu_init(1)),
        Err(Error::NoEnt),
        "no VM in slot 1"
    );
    assert_eq!(
        ret(&mut s, vcpu_init(0)),
        Err(Error::Perm),
        "not shared yet"
    );
    assert_eq!(
        ret(&mut s, VcpuRun { vm: 0 }),
        Err(Error::NoEnt),
        "no vCPU yet"
    );
    assert_eq!(ret(&mut s, ShareHyp { pfn: vcpu, nr: 1 }), Ok(()));
    assert_eq!(ret(&mut s, vcpu_init(0)), Ok(()));
    assert_eq!(s.page(vcpu).pins, 2);
    assert_eq!(ret(&mut s, vcpu_init(0)), Err(Error::Busy), "one vCPU");
    assert_eq!(ret(&mut s, VcpuRun { vm: 0 }), Ok(()));
    // A host page at a guest frame that is not its pfn.
    let share = |gfn| ShareGuest {
        vm: 0,
        pfn: page,
        gfn,
        nr: 1,
    };
    assert_eq!(
        ret(&mut s, share(1 << 20)),
        Err(Error::Range),
        "past 32 bits"
    );
    assert_eq!(ret(&mut s, share(0x10)), Ok(()));
    assert_eq!(s.page(page), Page::GUEST_SHARED);
    assert_eq!(s.state().vms[&0].guest.get(&0x10), Some(&page));
    assert_eq!(
        ret(&mut s, share(0x11)),
        Err(Error::Perm),
        "already in a guest"
    );
    assert_eq!(
        ret(
            &mut s,
            UnshareGuest {
                vm: 0,
                gfn: page,
                nr: 1
            }
        ),
        Err(Error::Perm),
        "the guest has it at 0x10, not at its pfn"
    );
    // Teardown: guest pages and the memcache back to the host, pins dropped.
    assert_eq!(ret(&mut s, VmTeardown { vm: 0 }), Ok(()));
    assert_eq!(ret(&mut s, VmTeardown { vm: 0 }), Err(Error::NoEnt));
    assert_eq!(s.page(page), Page::HOST_OWNED);
    assert_eq!(s.page(mc), Page::HOST_OWNED);
    assert_eq!((s.page(desc).pins, s.page(vcpu).pins), (0, 0));
    assert_eq!(ret(&mut s, UnshareHyp { pfn: desc, nr: 1 }), Ok(()));
    assert_eq!(ret(&mut s, UnshareHyp { pfn: vcpu, nr: 1 }), Ok(()));
    assert_eq!(s.state(), &boot);
}

/// The checks come in the documented order, and a call that fails half-way (the FP pin after
/// the state pin, the memcache after the descriptor pin) leaves nothing pinned.
#[test]
fn vm_calls_check_in_order_and_undo_partial_pins() {
    use Call::*;
    let mut s = Spec::new(machine());
    assert_eq!(ret(&mut s, ShareHyp { pfn: P, nr: 2 }), Ok(()));
    let shared = s.state().clone();
    // Misaligned descriptor beats a full VM table and a bad memcache.
    assert_eq!(
        ret(
            &mut s,
            VmInit {
                desc_pa: (P << 12) + 4,
                mc_pfn: P,
                mc_nr: 4,
                ipa_bits: 32,
                nr_vcpus: 1,
                flags: 0,
            }
        ),
        Err(Error::Inval)
    );
    // The memcache is shared (not the host's alone): EPERM, and the descriptor is unpinned.
    assert_eq!(
        ret(
            &mut s,
            VmInit {
                desc_pa: P << 12,
                mc_pfn: P + 1,
                mc_nr: 2,
                ipa_bits: 32,
                nr_vcpus: 1,
                flags: 0,
            }
        ),
        Err(Error::Perm)
    );
    assert_eq!(s.state(), &shared);
    // A bad descriptor is read after the pin and undoes it.
    for (ipa_bits, nr_vcpus) in [(31, 1), (41, 1), (32, 0), (32, 5)] {
        let c = VmInit {
            desc_pa: P << 12,
            mc_pfn: P + 0x20,
            mc_nr: 2,
            ipa_bits,
            nr_vcpus,
            flags: 0,
        };
        assert_eq!(ret(&mut s, c), Err(Error::Inval), "{c:?}");
        assert_eq!(s.state(), &shared);
    }
    let ok = VmInit {
        desc_pa: P << 12,
        mc_pfn: P + 0x20,
        mc_nr: 2,
        ipa_bits: 40,
        nr_vcpus: 1,
        flags: 0,
    };
    assert_eq!(ret(&mut s, ok), Ok(()));
    let created = s.state().clone();
    // State pinned, FP not shared: EPERM and the state's pin is dropped again.
    let c = VcpuInit {
        vm: 0,
        state_pa: (P + 1) << 12,
        fp_pa: (P + 2) << 12,
    };
    assert_eq!(ret(&mut s, c), Err(Error::Perm));
    assert_eq!(s.state(), &created);
    // Misaligned FP beats an unknown VM.
    let c = VcpuInit {
        vm: 5,
        state_pa: (P + 1) << 12,
        fp_pa: ((P + 1) << 12) + 8,
    };
    assert_eq!(ret(&mut s, c), Err(Error::Inval));
    // Unknown VM beats a guest range that is out of bounds.
    assert_eq!(
        ret(
            &mut s,
            UnshareGuest {
                vm: 5,
                gfn: u64::MAX,
                nr: 2
            }
        ),
        Err(Error::NoEnt)
    );
    assert_eq!(
        ret(
            &mut s,
            UnshareGuest {
                vm: 0,
                gfn: 0,
                nr: 0
            }
        ),
        Err(Error::Inval)
    );
}

/// All eight VM slots in use: the ninth `VmInit` is `ENOMEM`, whatever else it names.
#[test]
fn vm_slots_run_out() {
    use Call::*;
    let mut s = Spec::new(machine());
    assert_eq!(ret(&mut s, ShareHyp { pfn: P, nr: 1 }), Ok(()));
    for i in 0..8 {
        let c = VmInit {
            desc_pa: P << 12,
            mc_pfn: P + 0x10 + 2 * i,
            mc_nr: 2,
            ipa_bits: 32,
            nr_vcpus: 1,
            flags: 0,
        };
        assert_eq!(ret(&mut s, c), Ok(()), "VM {i}");
    }
    let full = s.state().clone();
    let c = VmInit {
        desc_pa: (P + 1) << 12,
        mc_pfn: P + 0x40,
        mc_nr: 2,
        ipa_bits: 32,
        nr_vcpus: 1,
        flags: 0,
    };
    assert_eq!(ret(&mut s, c), Err(Error::NoMem));
    assert_eq!(s.state(), &full);
    assert_eq!(s.page(P).pins, 8);
}

/// The checker accepts `ENOMEM` where the model succeeds and the call may need table memory,
/// only if nothing changed; never where the model refuses for another reason.
#[test]
fn checker_accepts_enomem_only_unchanged() {
    let m = machine();
    let boot = Spec::new(m.clone()).state().clone();
    let share = Call::ShareHyp { pfn: P, nr: 1 };
    let nomem = Outcome::Ret(Err(Error::NoMem));
    let mut c = Checker::new(m.clone());
    assert_eq!(c.check(share, nomem, &boot), Ok(()));
    // The same answer with a change is a divergence.
    let mut changed = boot.clone();
    changed.hyp_maps.insert(P, HypProt::ReadWrite);
    assert!(
        Checker::new(m.clone())
            .check(share, nomem, &changed)
            .is_err()
    );
    // Not for a call that needs no memory, nor where the model says EPERM.
    let mut c = Checker::new(m.clone());
    let unshare = Call::UnshareHyp { pfn: P, nr: 1 };
    assert!(c.check(unshare, nomem, &boot).is_err());
    let mut c = Checker::new(m);
    let donate_hyp_memory = Call::DonateHyp {
        pfn: HYP.0 >> 12,
        nr: 1,
    };
    assert!(c.check(donate_hyp_memory, nomem, &boot).is_err());
}

#[test]
fn checker_reports_divergence_with_trace() {
    let mut c = Checker::new(machine());
    let mut now = c.spec().state().clone();
    now.pages.insert(
        P,
        Page {
            host: State::SharedOwned,
            hyp: State::SharedBorrowed,
            shares: 1,
            ..Page::HOST_OWNED
        },
    );
    // Implementation "forgot" the EL2 mapping: must be reported.
    let err = c
        .check(Call::ShareHyp { pfn: P, nr: 1 }, Outcome::Ret(Ok(())), &now)
        .unwrap_err();
    assert!(err.report.contains("EL2 mapping"), "{err}");
    assert!(err.report.contains("ShareHyp"), "{err}");
    // A wrong return value is reported too.
    let mut c = Checker::new(machine());
    let now = c.spec().state().clone();
    let err = c
        .check(
            Call::UnshareHyp { pfn: P, nr: 1 },
            Outcome::Ret(Ok(())),
            &now,
        )
        .unwrap_err();
    assert!(err.report.contains("expected EPERM, got 0"), "{err}");
    // And agreement passes.
    let mut c = Checker::new(machine());
    let now = c.spec().state().clone();
    assert!(
        c.check(
            Call::UnshareHyp { pfn: P, nr: 1 },
            Outcome::Ret(Err(Error::Perm)),
            &now
        )
        .is_ok()
    );
}
