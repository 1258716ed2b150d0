//! The host's kernel command line (`/chosen/bootargs`, set by QEMU's `-append`).
//!
//! Recognised: `pkvm.scenario=NAME` (which scenario to run) and `pkvm.hang` (run the scenario,
//! then hang without a result line — used to prove that xtask's timeout works). Other words are
//! ignored, as a kernel ignores options it does not know.

/// Parsed boot arguments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootArgs<'a> {
    /// `pkvm.scenario=NAME`.
    pub scenario: Option<&'a str>,
    /// `pkvm.hang`.
    pub hang: bool,
    /// `pkvm.guests=N`: guest lifecycles the `guests` scenario runs.
    pub guests: Option<u64>,
    /// `pkvm.parts=a,b,...`: which parts of a scenario to run (the `hostile` scenario's:
    /// `sysregs`, `classes`, `random`, `el0`, `devices`, `guests`); all when absent.
    pub parts: Option<&'a str>,
    line: &'a str,
}

impl<'a> BootArgs<'a> {
    /// Words that start with `pkvm.` but are not options we know (likely typos).
    pub fn unknown_pkvm_options(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.line
            .split_ascii_whitespace()
            .filter(|w| w.starts_with("pkvm.") && parse_word(w).is_none())
    }
}

enum Word<'a> {
    Scenario(&'a str),
    Parts(&'a str),
    Hang(bool),
    Guests(u64),
}

fn parse_word(w: &str) -> Option<Word<'_>> {
    if let Some(name) = w.strip_prefix("pkvm.scenario=") {
        return (!name.is_empty()).then_some(Word::Scenario(name));
    }
    if let Some(p) = w.strip_prefix("pkvm.parts=") {
        return (!p.is_empty()).then_some(Word::Parts(p));
    }
    if let Some(n) = w.strip_prefix("pkvm.guests=") {
        return n.parse().ok().map(Word::Guests);
    }
    match w {
        "pkvm.hang" | "pkvm.hang=1" => Some(Word::Hang(true)),
        "pkvm.hang=0" => Some(Word::Hang(false)),
        _ => None,
    }
}

/// Parses a command line; the last occurrence of an option wins.
pub fn parse(line: &str) -> BootArgs<'_> {
    let mut args = BootArgs {
        line,
        ..BootArgs::default()
    };
    for w in line.split_ascii_whitespace() {
        match parse_word(w) {
            Some(Word::Scenario(s)) => args.scenario = Some(s),
            Some(Word::Hang(h)) => args.hang = h,
            Some(Word::Guests(n)) => args.guests = Some(n),
            Some(Word::Parts(p)) => args.parts = Some(p),
            None => {}
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty() {
        let a = parse("");
        assert_eq!((a.scenario, a.hang), (None, false));
        assert_eq!(a.unknown_pkvm_options().count(), 0);
    }

    #[test]
    fn scenario_and_hang() {
        let a = parse("console=ttyAMA0  pkvm.scenario=bench pkvm.hang pkvm.guests=20\n");
        assert_eq!((a.scenario, a.hang), (Some("bench"), true));
        assert_eq!(a.guests, Some(20));
        assert_eq!(parse("pkvm.parts=el0,devices").parts, Some("el0,devices"));
        assert_eq!(parse("pkvm.parts=").parts, None);
        let a = parse("pkvm.scenario=a pkvm.scenario=b pkvm.hang pkvm.hang=0");
        assert_eq!((a.scenario, a.hang), (Some("b"), false));
    }

    #[test]
    fn typos_are_reported() {
        let a = parse("pkvm.scenrio=x pkvm.scenario= pkvm.hang=yes quiet");
        assert_eq!(a.scenario, None);
        assert!(!a.hang);
        let unknown: Vec<_> = a.unknown_pkvm_options().collect();
        assert_eq!(
            unknown,
            ["pkvm.scenrio=x", "pkvm.scenario=", "pkvm.hang=yes"]
        );
    }
}
