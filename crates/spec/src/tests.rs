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
