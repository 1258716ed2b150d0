//! pkvm-rs host: a small EL1 "kernel" that EL2 enters the way it would enter Linux, and that
//! exercises the hypervisor from below.
//!
//! It is an arm64 `Image` (so EL2's entry path is the one a real Linux host will take), linked
//! at [`pkvm_abi::boot::HOST_LOAD_ADDR`]. [`boot`] (the shared entry of `pkvm_rt`, the
//! bare-metal runtime of all three images) sets up the stacks, `.bss`, FP and `VBAR_EL1`;
//! `host_main` finds the console, PSCI conduit, RAM and reserved memory in the device tree,
//! turns on its own stage-1 ([`mmu`]), reads the scenario from `/chosen/bootargs`
//! (`pkvm.scenario=NAME`, `pkvm.hang`), runs it, prints `N passed, M failed` and the
//! machine-readable `PKVM-RESULT pass|fail <reason>` line that `xtask` waits for, and powers
//! off through PSCI.
//!
//! On any other target only the pure, testable modules are built (plus an empty `main`).
#![cfg_attr(target_os = "none", no_std, no_main)]

// `print!`/`println!` (bare metal only) for every module.
#[cfg_attr(target_os = "none", macro_use)]
extern crate pkvm_rt;

// The heap of the VMM core (`vmm`): bare metal only.
#[cfg(target_os = "none")]
extern crate alloc;

pkvm_rt::image_mods! {
    testable: [cmdline, ranges],
    bare_metal: [
        // The library: entry and vectors, console, checks, CPU registers, device tree, memory,
        // probes, hypercalls (the typed client over HVC), stage-1, PMU, PSCI, the sandbox,
        // memory shared with EL2, guests.
        boot, console, checks, cpu, dt, env, fault, hvc, mmu, pkvm, pmu, psci, sandbox, shared,
        vm, vmm,
        // What runs on it.
        scenarios,
    ],
}

#[cfg(not(target_os = "none"))]
fn main() {}

/// Rust entry, called by [`boot`] with a stack, zeroed `.bss`, FP enabled and `VBAR_EL1` set.
#[cfg(target_os = "none")]
extern "C" fn host_main(dtb: usize) -> ! {
    let Some(dt) = dt::DeviceTree::probe(dtb) else {
        // No device tree, hence no console: power off (xtask reports the missing result).
        psci::system_off();
    };
    console::init(dt.uart_base);
    psci::set_conduit(dt.psci_conduit);

    println!(
        "pkvm-rs host {} at EL{}: {} CPU(s), {} MiB RAM, DTB {:#x}, PSCI via {}",
        env!("CARGO_PKG_VERSION"),
        boot::current_el(),
        dt.cpus,
        dt.ram_bytes >> 20,
        dtb,
        dt.psci_conduit.name()
    );
    println!("host: bootargs \"{}\"", dt.bootargs);

    let s1 = mmu::enable(&dt.ram, dt.uart_base as u64);
    println!(
        "host: stage-1 on: identity map of RAM and MMIO, {} table pages, {}-bit PA",
        s1.table_pages, s1.pa_bits
    );
    let Some(mut env) = env::Env::new(&dt, mmu::ImageLayout::get(), s1.pa_bits) else {
        println!("PKVM-RESULT fail host: free RAM too fragmented to describe");
        psci::system_off();
    };

    let args = cmdline::parse(dt.bootargs);
    for unknown in args.unknown_pkvm_options() {
        println!("host: warning: unknown option {unknown}");
    }
    if let Some(n) = args.guests {
        scenarios::guests::set_cycles(n);
        scenarios::linux_guest::set_boots(n);
    }
    if let Some(p) = args.parts {
        scenarios::hostile::set_parts(p);
        scenarios::linux_guest::set_parts(p);
    }
    let name = args.scenario.unwrap_or(scenarios::DEFAULT);
    let Some(scenario) = scenarios::find(name) else {
        println!("host: unknown scenario '{name}'; known scenarios:");
        for s in scenarios::SCENARIOS {
            println!("  {:<8} {}", s.name, s.about);
        }
        println!("PKVM-RESULT fail unknown scenario '{name}'");
        psci::system_off();
    };

    println!("host: scenario '{}': {}", scenario.name, scenario.about);
    let mut checks = checks::Checks::new();
    (scenario.run)(&mut checks, &mut env);
    println!(
        "host checks: {} passed, {} failed",
        checks.passed(),
        checks.failed()
    );

    if args.hang {
        println!("host: pkvm.hang: hanging instead of reporting a result");
        boot::hang();
    }
    if checks.failed() == 0 {
        println!("PKVM-RESULT pass");
    } else {
        println!(
            "PKVM-RESULT fail {} of {} host checks failed (first: {})",
            checks.failed(),
            checks.passed() + checks.failed(),
            checks.first_failure().unwrap_or("?")
        );
    }
    psci::system_off()
}
