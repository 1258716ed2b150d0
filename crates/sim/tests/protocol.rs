//! The page-table protocol checker (`pkvm_sim::protocol`) and the TLB's walk caches: each rule
//! broken on purpose — by a hand-made sequence of stores, barriers and TLBIs through the
//! simulator's platform, or by a hand-made trace fed to the monitor — must be caught, and the
//! same sequence done right must not be; the real hypervisor's calls must pass it with their
//! locks checked.

use pkvm_abi::{PAGE_SHIFT, PAGE_SIZE};
use pkvm_arch::regs::Vttbr;
use pkvm_hyp::hyp::LockState;
use pkvm_hyp::platform::{ArchOps, PhysMem, Platform};
use pkvm_sim::machine::Machine;
use pkvm_sim::mmu::{self, Regime};
use pkvm_sim::platform::SimPlatform;
use pkvm_sim::protocol::{Effect, Event, Monitor, Root, with_lock_probe};
use pkvm_sim::{SimConfig, with_machine};
use pkvm_spec::Outcome;

const RAM: u64 = 0x4000_0000;

/// Page `n` of the test RAM.
const fn page(n: u64) -> u64 {
    RAM + n * PAGE_SIZE
}

fn table(pa: u64) -> u64 {
    pa | 3
}

/// An EL2 page descriptor (normal memory, read/write, access flag).
fn el2_page(pa: u64) -> u64 {
    pa | (1 << 10) | 3
}

/// A stage-2 page descriptor (normal memory, read/write, access flag).
fn s2_page(pa: u64) -> u64 {
    pa | (1 << 10) | (3 << 6) | (0xf << 2) | 3
}

/// A stage-2 level-2 block descriptor.
fn s2_block(pa: u64) -> u64 {
    pa | (1 << 10) | (3 << 6) | (0xf << 2) | 1
}

fn ptep(table: u64, ia: u64, level: u8) -> u64 {
    table + ((ia >> mmu::level_shift(level)) & 511) * 8
}

/// The address a page of the tables below maps.
const VA: u64 = 0x4020_0000;
/// Another page in the same last-level table.
const VA2: u64 = 0x4020_1000;
/// The level-2 block of the guest tables.
const BLOCK: u64 = 0x4040_0000;

/// A platform without a hypervisor, with hand-built tables (written behind the monitor's
/// back), the monitor synchronised on them:
/// - EL2 stage-1: L0 page 1, L1 page 2, L2 page 3, L3 page 4; `VA` -> page 16, `VA2` -> page 17;
/// - a guest's stage-2 (VMID 1, start level 1): L1 page 5, L2 page 6, L3 page 7;
///   `VA` -> page 18, and a 2 MiB block at `BLOCK`.
///
/// Pages 8.. are free for the tests.
struct World {
    plat: SimPlatform,
}

const EL2_L0: u64 = page(1);
const EL2_L2: u64 = page(3);
const EL2_L3: u64 = page(4);
const G_L1: u64 = page(5);
const G_L2: u64 = page(6);
const G_L3: u64 = page(7);
const GUEST: Vttbr = Vttbr::new(G_L1, 1);

impl World {
    fn new() -> Self {
        let plat = SimPlatform::new(&[(RAM, 16 << 20)]);
        let m = &plat.mem;
        m.write_u64(ptep(EL2_L0, VA, 0), table(page(2)));
        m.write_u64(ptep(page(2), VA, 1), table(EL2_L2));
        m.write_u64(ptep(EL2_L2, VA, 2), table(EL2_L3));
        m.write_u64(ptep(EL2_L3, VA, 3), el2_page(page(16)));
        m.write_u64(ptep(EL2_L3, VA2, 3), el2_page(page(17)));
        m.write_u64(ptep(G_L1, VA, 1), table(G_L2));
        m.write_u64(ptep(G_L2, VA, 2), table(G_L3));
        m.write_u64(ptep(G_L3, VA, 3), s2_page(page(18)));
        m.write_u64(ptep(G_L2, BLOCK, 2), s2_block(0x8000_0000));
        let w = World { plat };
        w.plat.protocol_sync(&w.roots()).unwrap();
        w
    }

    fn roots(&self) -> [Root; 2] {
        [
            Root {
                regime: Regime::El2,
                pa: EL2_L0,
                start_level: 0,
            },
            Root {
                regime: Regime::Stage2(1),
                pa: G_L1,
                start_level: 1,
            },
        ]
    }

    /// Ends the window ("the call returns").
    fn finish(&self) -> Result<(), String> {
        self.plat.protocol_finish()
    }

    /// Ends the window, which must report a violation mentioning `what`.
    #[track_caller]
    fn caught(&self, what: &str) {
        match self.finish() {
            Ok(()) => panic!("not caught: {what}"),
            Err(e) => assert!(e.contains(what), "expected {what:?} in:\n{e}"),
        }
    }

    #[track_caller]
    fn passes(&self) {
        if let Err(e) = self.finish() {
            panic!("a correct sequence was refused:\n{e}");
        }
    }

    /// The EL2 page at `VA` removed as it should be: clear, DSB, TLBI, DSB ISH.
    fn el2_unmap_page(&self) {
        let p = &self.plat;
        p.write_u64(ptep(EL2_L3, VA, 3), 0);
        p.dsb_ishst();
        p.tlbi_el2_va(VA, 3, true);
        p.dsb_ish();
        p.isb();
    }
}

// Rule 1: break-before-make.

#[test]
fn a_valid_entry_changed_directly_is_caught() {
    let w = World::new();
    w.plat.write_u64(ptep(EL2_L3, VA, 3), el2_page(page(20)));
    w.plat.dsb_ishst();
    w.caught("without break-before-make");
    // Software bits may change directly.
    w.plat
        .write_u64(ptep(EL2_L3, VA, 3), el2_page(page(20)) | (1 << 55));
    w.plat.dsb_ishst();
    w.passes();
}

#[test]
fn break_before_make_done_right_passes() {
    let w = World::new();
    w.el2_unmap_page();
    w.plat.write_u64(ptep(EL2_L3, VA, 3), el2_page(page(20)));
    w.plat.dsb_ishst();
    w.plat.isb();
    w.passes();
}

#[test]
fn an_entry_made_valid_before_its_invalidation_completed_is_caught() {
    let w = World::new();
    let p = &w.plat;
    p.write_u64(ptep(EL2_L3, VA, 3), 0);
    p.dsb_ishst();
    p.tlbi_el2_va(VA, 3, true);
    // No DSB ISH: the TLBI may not have completed.
    p.write_u64(ptep(EL2_L3, VA, 3), el2_page(page(20)));
    p.dsb_ish();
    w.caught("made valid");
}

// Rule 2: no table reused before its unlink is invalidated.

/// Unlinks the EL2 level-3 table (after clearing its two pages, with their TLBIs queued) with
/// `tlbi` as the table entry's invalidation, then frees the page as the pool does.
fn unlink_el2_l3(w: &World, tlbi: impl FnOnce(&SimPlatform)) {
    let p = &w.plat;
    p.write_u64(ptep(EL2_L3, VA, 3), 0);
    p.write_u64(ptep(EL2_L3, VA2, 3), 0);
    p.write_u64(ptep(EL2_L2, VA, 2), 0);
    p.dsb_ishst();
    p.tlbi_el2_va(VA, 3, true);
    p.tlbi_el2_va(VA2, 3, true);
    tlbi(p);
    p.dsb_ish();
    p.isb();
    // The buddy allocator's list node.
    p.write_u64(EL2_L3, u64::MAX);
    p.write_u64(EL2_L3 + 8, u64::MAX);
}

#[test]
fn a_table_freed_after_its_unlink_was_invalidated_passes() {
    let w = World::new();
    unlink_el2_l3(&w, |p| p.tlbi_el2_va(VA, 0, false));
    w.passes();
}

#[test]
fn a_table_freed_after_a_leaf_only_tlbi_is_caught() {
    let w = World::new();
    unlink_el2_l3(&w, |p| p.tlbi_el2_va(VA, 0, true));
    w.caught("written (0x40004000: 0x0 -> 0xffffffffffffffff) before its unlink was invalidated");
    let w = World::new();
    unlink_el2_l3(&w, |p| p.tlbi_el2_va(VA, 0, true));
    w.caught("last-level only (VALE2IS): it leaves the walk caches of a table entry");
}

#[test]
fn a_table_freed_before_the_dsb_after_its_tlbi_is_caught() {
    let w = World::new();
    let p = &w.plat;
    p.write_u64(ptep(EL2_L3, VA, 3), 0);
    p.write_u64(ptep(EL2_L3, VA2, 3), 0);
    p.write_u64(ptep(EL2_L2, VA, 2), 0);
    p.dsb_ishst();
    p.tlbi_el2_all();
    p.write_u64(EL2_L3, u64::MAX);
    p.dsb_ish();
    w.caught("before its unlink was invalidated");
}

#[test]
fn a_table_linked_again_before_its_unlink_was_invalidated_is_caught() {
    let w = World::new();
    let p = &w.plat;
    p.write_u64(ptep(EL2_L3, VA, 3), 0);
    p.write_u64(ptep(EL2_L3, VA2, 3), 0);
    p.write_u64(ptep(EL2_L2, VA, 2), 0);
    p.dsb_ishst();
    // Reused at once, for the next 2 MiB.
    p.write_u64(ptep(EL2_L2, VA + (2 << 20), 2), table(EL2_L3));
    w.caught("linked again");
}

#[test]
fn unlinking_a_table_that_still_maps_pages_leaves_them_pending() {
    let w = World::new();
    let p = &w.plat;
    // The level-3 table still maps two pages: one TLBI for the table entry misses them.
    p.write_u64(ptep(EL2_L2, VA, 2), 0);
    p.dsb_ishst();
    p.tlbi_el2_va(VA, 0, false);
    p.dsb_ish();
    w.caught("L3 leaf for [0x40201000, 0x40202000)");
    // A whole-regime invalidation covers everything.
    let w = World::new();
    let p = &w.plat;
    p.write_u64(ptep(EL2_L2, VA, 2), 0);
    p.dsb_ishst();
    p.tlbi_el2_all();
    p.dsb_ish();
    w.passes();
}

#[test]
fn a_table_linked_twice_or_outside_ram_is_caught() {
    let w = World::new();
    w.plat
        .write_u64(ptep(EL2_L2, VA + (2 << 20), 2), table(EL2_L3));
    w.plat.dsb_ishst();
    w.caught("while it is a live El2 L3 table");
    let w = World::new();
    w.plat
        .write_u64(ptep(EL2_L2, VA + (2 << 20), 2), table(0x8000_0000));
    w.plat.dsb_ishst();
    w.caught("not RAM");
}

// Rule 3: the right TLBI.

#[test]
fn a_wrong_level_hint_is_caught() {
    let w = World::new();
    let p = &w.plat;
    p.write_u64(ptep(EL2_L3, VA, 3), 0);
    p.dsb_ishst();
    p.tlbi_el2_va(VA, 2, true);
    p.dsb_ish();
    w.caught("level hint 2, the entry is a level-3 leaf");
    // A block with the page hint, on the guest's stage-2.
    let w = World::new();
    let p = &w.plat;
    p.write_u64(ptep(G_L2, BLOCK, 2), 0);
    p.dsb_ishst();
    p.tlbi_guest_s2_ipa(GUEST, BLOCK + 0x5000, 3);
    p.dsb_ish();
    w.caught("level hint 3, the entry is a level-2 leaf");
    // Hint 0 or the right one pass.
    let w = World::new();
    let p = &w.plat;
    p.write_u64(ptep(G_L2, BLOCK, 2), 0);
    p.write_u64(ptep(G_L3, VA, 3), 0);
    p.dsb_ishst();
    p.tlbi_guest_s2_ipa(GUEST, BLOCK + 0x5000, 2);
    p.tlbi_guest_s2_ipa(GUEST, VA, 0);
    p.dsb_ish();
    w.passes();
}

#[test]
fn a_hinted_tlbi_for_a_table_entry_is_caught() {
    let w = World::new();
    unlink_el2_l3(&w, |p| p.tlbi_el2_va(VA, 3, false));
    w.caught("had level hint 3: a hint names a leaf's level, a table entry needs hint 0");
}

#[test]
fn a_guest_entry_invalidated_under_the_hosts_vmid_is_caught() {
    let w = World::new();
    let p = &w.plat;
    p.write_u64(ptep(G_L3, VA, 3), 0);
    p.dsb_ishst();
    // The platform's own stage-2 TLBI acts on the loaded VMID: the host's.
    p.tlbi_s2_ipa(0, VA, 3);
    p.dsb_ish();
    w.caught("was for Stage2(0), the entry is Stage2(1)");
    // The EL2 TLBI is no better, a whole-VMID one for the host neither.
    let w = World::new();
    let p = &w.plat;
    p.write_u64(ptep(G_L3, VA, 3), 0);
    p.dsb_ishst();
    p.tlbi_el2_va(VA, 3, true);
    p.tlbi_vmid(0);
    p.dsb_ish();
    w.caught("was for El2, the entry is Stage2(1)");
    // Under the guest's VTTBR, by address or whole VMID, it passes.
    let w = World::new();
    let p = &w.plat;
    p.write_u64(ptep(G_L3, VA, 3), 0);
    p.write_u64(ptep(G_L2, BLOCK, 2), 0);
    p.dsb_ishst();
    p.tlbi_guest_s2_ipa(GUEST, VA, 3);
    p.tlbi_guest_vmid(GUEST);
    p.dsb_ish();
    w.passes();
}

#[test]
fn a_guest_vttbr_with_another_root_is_caught() {
    let w = World::new();
    w.plat.tlbi_guest_vmid(Vttbr::new(page(9), 1));
    w.caught("its stage-2 root is 0x40005000, not 0x40009000");
    let w = World::new();
    w.plat.tlbi_guest_vmid(Vttbr::new(EL2_L0, 2));
    w.caught("with the root of El2");
}

// Rule 7: hand-over.

/// EL2's page at `VA` (page 16) unmapped and invalidated, then — with or without the `DSB ISH`
/// that completes the TLBI — `then` maps memory in the guest's stage-2. (The platform's guest
/// TLBIs complete themselves before the host's VTTBR is back, so the EL2 side is the one that
/// can be left incomplete.)
fn el2_page_then(w: &World, complete: bool, then: impl FnOnce(&SimPlatform)) {
    let p = &w.plat;
    p.write_u64(ptep(EL2_L3, VA, 3), 0);
    p.dsb_ishst();
    p.tlbi_el2_va(VA, 3, true);
    if complete {
        p.dsb_ish();
    }
    then(p);
    p.dsb_ish();
}

#[test]
fn memory_handed_over_before_its_invalidation_completed_is_caught() {
    let to_guest = |p: &SimPlatform| p.write_u64(ptep(G_L3, VA2, 3), s2_page(page(16)));
    let w = World::new();
    el2_page_then(&w, false, to_guest);
    w.caught("handed over while a TLB may still reach it");
    let w = World::new();
    el2_page_then(&w, true, to_guest);
    w.passes();
    // Inside a 2 MiB block of the guest: caught too.
    let w = World::new();
    el2_page_then(&w, false, |p| {
        p.write_u64(ptep(G_L2, BLOCK + (2 << 20), 2), s2_block(RAM));
    });
    w.caught("maps [0x40000000, 0x40200000)");
    // Other memory may be mapped meanwhile.
    let w = World::new();
    el2_page_then(&w, false, |p| {
        p.write_u64(ptep(G_L3, VA2, 3), s2_page(page(20)));
        p.dsb_ish();
    });
    w.passes();
}

// Rule 4: DSBs around the TLBI.

#[test]
fn a_tlbi_before_the_dsb_is_caught() {
    let w = World::new();
    let p = &w.plat;
    p.write_u64(ptep(EL2_L3, VA, 3), 0);
    p.tlbi_el2_va(VA, 3, true);
    p.dsb_ish();
    w.caught("issued before a DSB made the write visible");
}

#[test]
fn a_tlbi_not_completed_by_a_dsb_ish_is_caught() {
    let w = World::new();
    let p = &w.plat;
    p.write_u64(ptep(EL2_L3, VA, 3), 0);
    p.dsb_ishst();
    p.tlbi_el2_va(VA, 3, true);
    p.dsb_ishst();
    p.isb();
    w.caught("its TLBI was not completed by a DSB ISH");
}

#[test]
fn a_removed_entry_never_invalidated_is_caught() {
    let w = World::new();
    w.plat.write_u64(ptep(EL2_L3, VA, 3), 0);
    w.caught("no DSB made the write visible");
    let w = World::new();
    w.plat.write_u64(ptep(EL2_L3, VA, 3), 0);
    w.plat.dsb_ish();
    w.caught("no TLBI covered it");
}

#[test]
fn a_valid_descriptor_left_without_a_dsb_is_caught() {
    let w = World::new();
    w.plat
        .write_u64(ptep(EL2_L3, VA + 0x5000, 3), el2_page(page(20)));
    w.caught("without a DSB after the valid descriptor");
}

#[test]
fn a_guest_vttbr_left_loaded_is_caught() {
    // A hand-made trace: the platform always restores it.
    let mem = pkvm_sim::mem::SimMemory::new(&[(RAM, 1 << 20)]);
    let mut m = Monitor::new();
    let root = Root {
        regime: Regime::Stage2(1),
        pa: page(5),
        start_level: 1,
    };
    m.sync(&mem, &[root]);
    let ev = |effect| Event { cpu: 0, effect };
    m.step(&mem, ev(Effect::LoadVttbr(Vttbr::new(page(5), 1))));
    m.step(&mem, ev(Effect::TlbiS2All));
    m.step(&mem, ev(Effect::DsbIsh));
    let e = m.finish().unwrap_err();
    assert!(e.contains("still loaded"), "{e}");
    m.step(&mem, ev(Effect::LoadVttbr(Vttbr::new(page(5), 1))));
    m.step(&mem, ev(Effect::RestoreVttbr));
    m.finish().unwrap();
}

// Rule 5: publication.

#[test]
fn a_table_linked_before_its_contents_are_visible_is_caught() {
    let w = World::new();
    let p = &w.plat;
    let new = page(8);
    p.write_u64(new, el2_page(page(21)));
    p.write_u64(ptep(EL2_L2, VA + (2 << 20), 2), table(new));
    p.dsb_ishst();
    w.caught("before a DSB made its contents visible");
    // With the DSB first, it passes, and the new table is followed.
    let w = World::new();
    let p = &w.plat;
    p.write_u64(new, el2_page(page(21)));
    p.dsb_ishst();
    p.write_u64(ptep(EL2_L2, VA + (2 << 20), 2), table(new));
    p.dsb_ishst();
    w.passes();
    p.write_u64(new, el2_page(page(22)));
    w.caught("without break-before-make");
}

// Rule 6: locks.

#[test]
fn a_table_written_without_its_owners_lock_is_caught() {
    let mem = pkvm_sim::mem::SimMemory::new(&[(RAM, 1 << 20)]);
    let roots = [
        (Regime::El2, page(1)),
        (Regime::Stage2(0), page(2)),
        (Regime::Stage2(3), page(3)),
    ];
    let all = LockState {
        host: true,
        hyp: true,
        vms: true,
    };
    for (i, &(regime, pa)) in roots.iter().enumerate() {
        let mut m = Monitor::new();
        let r: Vec<Root> = roots
            .iter()
            .map(|&(regime, pa)| Root {
                regime,
                pa,
                start_level: 1,
            })
            .collect();
        m.sync(&mem, &r);
        let write = |locks| Event {
            cpu: 0,
            effect: Effect::Write {
                pa: pa + 8,
                old: 0,
                new: 0,
                locks: Some(locks),
            },
        };
        // Every lock but the owner's.
        let mut locks = all;
        *[&mut locks.hyp, &mut locks.host, &mut locks.vms][i] = false;
        m.step(&mem, write(all));
        m.finish().unwrap();
        m.step(&mem, write(locks));
        let e = m.finish().unwrap_err();
        assert!(e.contains(&format!("{regime:?} table written")), "{e}");
    }
}

// The TLB: a table unlinked with a leaf-only TLBI leaves a walk-cache entry that
// `Machine::check_tlb` reports as stale, on the real hypervisor's tables.

/// The EL2 level-3 descriptor address of `va`.
fn el2_ptep(m: &Machine<'_>, va: u64, level: u8) -> u64 {
    let mut t = m.hyp.hyp_pgd();
    for l in 0..level {
        t = m.plat.read_u64(ptep(t, va, l)) & mmu::OA_MASK;
    }
    ptep(t, va, level)
}

#[test]
fn a_stale_walk_cache_entry_is_reported_by_check_tlb() {
    with_machine(&SimConfig::small(), |m| {
        // A page alone in its 2 MiB of EL2's VA space: its level-3 table holds only it.
        let pfn = (m.config().ram[0].0 >> PAGE_SHIFT) + 0x200;
        let va = pfn << PAGE_SHIFT;
        m.client().share_hyp(pfn, 1).unwrap();
        assert_eq!(m.hyp_access(va), Outcome::Access);
        m.check_tlb().unwrap();
        // Unlink its table by hand, invalidating with the last-level form only.
        let l2e = el2_ptep(m, va, 2);
        let p = m.plat;
        p.write_u64(el2_ptep(m, va, 3), 0);
        p.write_u64(l2e, 0);
        p.dsb_ishst();
        p.tlbi_el2_va(va, 3, true);
        p.tlbi_el2_va(va, 0, true);
        p.dsb_ish();
        let e = m.check_tlb().unwrap_err();
        assert!(e.contains("last-level only"), "{e}");
        assert!(e.contains("stale walk-cache entry El2 L2"), "{e}");
    });
}

// The real hypervisor, with its locks checked.

#[test]
fn the_hypervisors_calls_follow_the_protocol_under_their_locks() {
    with_machine(&SimConfig::small(), |m| {
        let r0 = m.config().ram[0].0 >> PAGE_SHIFT;
        m.check_tlb().unwrap();
        let before = m.plat.protocol_stats();
        let m = &*m;
        let check = || m.check_tlb().unwrap_or_else(|e| panic!("{e}"));
        with_lock_probe(m, || {
            let c = m.client();
            // EL2's stage-1: tables linked and freed.
            c.share_hyp(r0 + 0x200, 3).unwrap();
            check();
            assert_eq!(m.hyp_access((r0 + 0x201) << PAGE_SHIFT), Outcome::Access);
            c.unshare_hyp(r0 + 0x200, 3).unwrap();
            check();
            // The host's stage-2: faults map blocks, donation splits them.
            assert_eq!(
                m.host_access((r0 + 0x400) << PAGE_SHIFT, true),
                Outcome::Access
            );
            check();
            c.donate_hyp(r0 + 0x401, 1).unwrap();
            check();
            c.hyp_donate_host(r0 + 0x401, 1).unwrap();
            check();
            // A guest: created, pages shared in and out, torn down.
            let (desc, mc, vcpu) = (r0 + 0x140, r0 + 0x100, r0 + 0x141);
            c.share_hyp(desc, 1).unwrap();
            m.plat
                .write_u64(desc << PAGE_SHIFT, u64::from(m.config().pa_bits));
            m.plat.write_u64((desc << PAGE_SHIFT) + 8, 1);
            let vm = c.vm_init(desc << PAGE_SHIFT, mc, 64).unwrap();
            c.share_hyp(vcpu, 1).unwrap();
            c.vcpu_init(vm, vcpu << PAGE_SHIFT, (vcpu << PAGE_SHIFT) + 0x400)
                .unwrap();
            check();
            for (pfn, gfn, nr) in [(0x310, 0x10, 4), (0x320, 0x400, 1), (0x330, 0x9_0000, 2)] {
                c.share_guest(vm, r0 + pfn, gfn, nr, pkvm_abi::guest::PROT_RWX)
                    .unwrap();
                check();
            }
            c.unshare_guest(vm, 0x11, 2).unwrap();
            c.unshare_guest(vm, 0x9_0000, 2).unwrap();
            check();
            c.vm_teardown(vm).unwrap();
            check();
        });
        let s = m.plat.protocol_stats();
        assert_eq!(s.violations, 0);
        // Not vacuous: the monitor followed table writes and completed invalidations of
        // every regime.
        assert!(s.windows - before.windows >= 10, "{s:?}");
        assert!(
            s.descriptor_writes - before.descriptor_writes >= 40,
            "{s:?}"
        );
        assert!(s.invalidations - before.invalidations >= 10, "{s:?}");
    });
}

#[test]
fn a_table_written_outside_the_hypervisors_locks_is_caught() {
    with_machine(&SimConfig::small(), |m| {
        let pfn = (m.config().ram[0].0 >> PAGE_SHIFT) + 0x200;
        m.client().share_hyp(pfn, 1).unwrap();
        m.check_tlb().unwrap();
        let ptep = el2_ptep(m, pfn << PAGE_SHIFT, 3);
        let m = &*m;
        with_lock_probe(m, || {
            // The same value, written back without the hyp lock.
            m.plat.write_u64(ptep, m.plat.read_u64(ptep));
        });
        let e = m.check_tlb().unwrap_err();
        assert!(e.contains("El2 table written"), "{e}");
        assert!(e.contains("without the hyp lock"), "{e}");
    });
}
