//! `pkvm-sim`: run named scenarios on the simulated machine.
//!
//! ```text
//! cargo run -p pkvm-sim -- share-twice
//! cargo run -p pkvm-sim -- transitions
//! cargo run -p pkvm-sim -- list
//! ```

use std::process::ExitCode;

use pkvm_sim::{SimConfig, scenarios, with_machine};

type Scenario = fn(&pkvm_sim::Machine<'_>, &mut String) -> Result<(), String>;

const SCENARIOS: &[(&str, &str, Scenario)] = &[
    (
        "share-twice",
        "share one page twice and unshare it twice; EL2 maps it until the last unshare",
        scenarios::share_twice,
    ),
    (
        "transitions",
        "the transition script on one page",
        scenarios::transition_script,
    ),
];

fn main() -> ExitCode {
    let name = std::env::args().nth(1).unwrap_or_else(|| "list".into());
    if name == "list" {
        for (n, d, _) in SCENARIOS {
            println!("{n:<14} {d}");
        }
        return ExitCode::SUCCESS;
    }
    let Some((_, _, f)) = SCENARIOS.iter().find(|(n, _, _)| *n == name) else {
        eprintln!("unknown scenario {name:?}; `list` shows them");
        return ExitCode::FAILURE;
    };
    with_machine(&SimConfig::small(), |m| {
        let mut out = String::new();
        let r = f(m, &mut out);
        print!("{out}");
        match r {
            Ok(()) => {
                println!("scenario {name}: pass");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("scenario {name}: FAIL\n{e}");
                ExitCode::FAILURE
            }
        }
    })
}
