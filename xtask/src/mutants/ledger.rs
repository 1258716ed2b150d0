//! The mutation ledger, `docs/mutants.tsv`: the outcome of every mutant tested so far, so that
//! the whole run (hours) can be done a shard at a time, across sessions and machines, and its
//! score read at any point.
//!
//! A mutant is named by cargo-mutants as `file:line:col: description`. Line numbers move with
//! every edit, so the ledger keys a mutant by `file: description @ source line` (the text of
//! its line, trimmed), with ` #k` appended to the k-th (from 2) of several mutants with the
//! same key, counted in cargo-mutants' listing order. A key survives edits elsewhere; a mutant
//! whose line changes gets a new key (it must be tested again), and a record whose key no
//! longer names a mutant of the current tree is *stale* and left out of the score.
//!
//! One line per mutant, tab-separated: outcome (`caught`, `timeout`, `missed`, `unviable`), the
//! commit it was tested at, the key and, for a missed mutant, the verdict of its review
//! (`equivalent: why`, `performance: why`); a missed mutant without a verdict is unexplained.

use std::collections::{BTreeMap, HashMap};

/// What happened to one mutant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A test failed.
    Caught,
    /// The tests ran past the timeout (the mutant hangs them): counted as caught.
    Timeout,
    /// Every test passed.
    Missed,
    /// The mutant does not build.
    Unviable,
}

impl Outcome {
    /// The ledger's word for it.
    #[must_use]
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Caught => "caught",
            Outcome::Timeout => "timeout",
            Outcome::Missed => "missed",
            Outcome::Unviable => "unviable",
        }
    }

    fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.word() == s)
    }

    /// The cargo-mutants result file that lists mutants with this outcome.
    #[must_use]
    pub fn file(self) -> &'static str {
        match self {
            Outcome::Caught => "caught.txt",
            Outcome::Timeout => "timeout.txt",
            Outcome::Missed => "missed.txt",
            Outcome::Unviable => "unviable.txt",
        }
    }

    /// Every outcome.
    pub const ALL: [Outcome; 4] = [
        Outcome::Caught,
        Outcome::Timeout,
        Outcome::Missed,
        Outcome::Unviable,
    ];
}

/// How the verdict of a missed mutant that no test can tell from the original begins.
pub const EQUIVALENT: &str = "equivalent:";

/// One ledger line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// What happened.
    pub outcome: Outcome,
    /// The commit the mutant was tested at.
    pub commit: String,
    /// Why a missed mutant does not matter (empty: unexplained).
    pub verdict: String,
}

/// The ledger: records by key.
pub type Ledger = BTreeMap<String, Record>;

/// The file, line and description of a cargo-mutants name `file:line:col: description`.
fn parse_name(name: &str) -> Option<(&str, usize, &str)> {
    let mut parts = name.splitn(4, ':');
    let file = parts.next()?;
    let line = parts.next()?.parse().ok()?;
    let col = parts.next()?;
    let desc = parts.next()?.strip_prefix(' ')?;
    if file.is_empty() || col.is_empty() || !col.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((file, line, desc))
}

/// The key of every mutant in `listing` (cargo-mutants' names, in its order), by name;
/// `line_text(file, line)` is the text of a source line (1-based).
#[must_use]
pub fn keys(
    listing: &[String],
    line_text: &dyn Fn(&str, usize) -> Option<String>,
) -> HashMap<String, String> {
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut keys = HashMap::new();
    for name in listing {
        let Some((file, line, desc)) = parse_name(name) else {
            continue;
        };
        let base = match line_text(file, line) {
            Some(t) => format!("{file}: {desc} @ {}", t.trim().replace('\t', " ")),
            None => format!("{file}: {desc}"),
        };
        let n = seen.entry(base.clone()).or_insert(0);
        *n += 1;
        let key = if *n == 1 {
            base
        } else {
            format!("{base} #{n}")
        };
        keys.insert(name.clone(), key);
    }
    keys
}

/// Parses the ledger's text.
///
/// # Errors
/// The first line that is neither a comment nor a record, with its number.
pub fn parse(text: &str) -> Result<Ledger, String> {
    let mut ledger = Ledger::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let outcome = f.first().and_then(|w| Outcome::parse(w));
        match (outcome, f.len()) {
            (Some(outcome), 3 | 4) => {
                ledger.insert(
                    f[2].to_string(),
                    Record {
                        outcome,
                        commit: f[1].to_string(),
                        verdict: f.get(3).unwrap_or(&"").to_string(),
                    },
                );
            }
            _ => return Err(format!("line {}: not a ledger record: {line}", i + 1)),
        }
    }
    Ok(ledger)
}

/// The ledger's text (records sorted by key, after a header).
#[must_use]
pub fn render(ledger: &Ledger) -> String {
    let mut s = String::from(
        "# The mutation ledger: every mutant of pkvm-pgtable and pkvm-hyp tested so far.\n\
         # Written by `cargo xtask mutants --record`, read by `cargo xtask mutants --score`;\n\
         # the verdicts of missed mutants are written by hand. Format: xtask/src/mutants/ledger.rs.\n\
         # outcome\tcommit\tmutant\tverdict\n",
    );
    for (key, r) in ledger {
        s.push_str(r.outcome.word());
        s.push('\t');
        s.push_str(&r.commit);
        s.push('\t');
        s.push_str(key);
        if r.outcome == Outcome::Missed && !r.verdict.is_empty() {
            s.push('\t');
            s.push_str(&r.verdict);
        }
        s.push('\n');
    }
    s
}

/// Merges a run's results (`(name, outcome)` with cargo-mutants' names) into `ledger`, with
/// the current tree's [`keys`]; a missed mutant that was missed before keeps its verdict.
/// Returns the names that are not mutants of the current tree (the run was on another).
pub fn merge(
    ledger: &mut Ledger,
    keys: &HashMap<String, String>,
    results: &[(String, Outcome)],
    commit: &str,
) -> Vec<String> {
    let mut unknown = Vec::new();
    for (name, outcome) in results {
        let Some(key) = keys.get(name) else {
            unknown.push(name.clone());
            continue;
        };
        let verdict = match ledger.get(key) {
            Some(old) if old.outcome == Outcome::Missed && *outcome == Outcome::Missed => {
                old.verdict.clone()
            }
            _ => String::new(),
        };
        ledger.insert(
            key.clone(),
            Record {
                outcome: *outcome,
                commit: commit.to_string(),
                verdict,
            },
        );
    }
    unknown
}

/// Merges another ledger (one a run in another worktree recorded) into `ledger`: its records
/// replace the ones they differ from (in outcome or commit) unless ours was tested at a later
/// commit (`ancestor(theirs, ours)`: their commit is a strict ancestor of ours), and a missed
/// mutant still missed keeps the verdict it has here if `from` has none. Records of commits
/// that cannot be ordered (another branch, a dirty tree) are taken from `from`. Returns how
/// many records were added or changed.
pub fn absorb(
    ledger: &mut Ledger,
    from: Ledger,
    ancestor: &mut dyn FnMut(&str, &str) -> bool,
) -> usize {
    let mut changed = 0;
    for (key, mut r) in from {
        match ledger.get(&key) {
            Some(old) if old.commit != r.commit && ancestor(&r.commit, &old.commit) => {}
            Some(old) if old.outcome == r.outcome && old.commit == r.commit => {
                if old.verdict.is_empty() && !r.verdict.is_empty() {
                    ledger.insert(key, r);
                    changed += 1;
                }
            }
            old => {
                if let Some(old) = old
                    && old.outcome == Outcome::Missed
                    && r.outcome == Outcome::Missed
                    && r.verdict.is_empty()
                {
                    r.verdict.clone_from(&old.verdict);
                }
                ledger.insert(key, r);
                changed += 1;
            }
        }
    }
    changed
}

/// The ledger seen against the current tree.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Score {
    /// Mutants of the current tree.
    pub mutants: usize,
    /// Of those, how many have each outcome (indexed like [`Outcome::ALL`]).
    pub counts: [usize; 4],
    /// Records that name no mutant of the current tree.
    pub stale: usize,
    /// Missed mutants without a verdict (keys).
    pub unexplained: Vec<String>,
    /// Missed mutants with a verdict (key, verdict).
    pub explained: Vec<(String, String)>,
}

impl Score {
    /// Mutants not yet tested.
    #[must_use]
    pub fn untested(&self) -> usize {
        self.mutants - self.counts.iter().sum::<usize>()
    }

    /// Caught or timed out, of the viable ones tested: (killed, viable).
    #[must_use]
    pub fn killed(&self) -> (usize, usize) {
        let killed = self.counts[0] + self.counts[1];
        (killed, killed + self.counts[2])
    }

    /// Missed mutants reviewed as equivalent (no test can tell them from the original).
    #[must_use]
    pub fn equivalent(&self) -> usize {
        self.explained
            .iter()
            .filter(|(_, v)| v.starts_with(EQUIVALENT))
            .count()
    }

    /// The mutation score as the literature defines it: killed / (viable - equivalent).
    #[must_use]
    pub fn score(&self) -> f64 {
        let (killed, viable) = self.killed();
        let d = viable - self.equivalent();
        if d == 0 {
            0.0
        } else {
            100.0 * killed as f64 / d as f64
        }
    }
}

/// Scores `ledger` against the current tree's [`keys`].
#[must_use]
pub fn score(ledger: &Ledger, keys: &HashMap<String, String>) -> Score {
    let mut s = Score {
        mutants: keys.len(),
        ..Score::default()
    };
    let current: std::collections::HashSet<&String> = keys.values().collect();
    for (key, r) in ledger {
        if !current.contains(key) {
            s.stale += 1;
            continue;
        }
        // `ALL` lists the variants in declaration order.
        s.counts[r.outcome as usize] += 1;
        if r.outcome == Outcome::Missed {
            if r.verdict.is_empty() {
                s.unexplained.push(key.clone());
            } else {
                s.explained.push((key.clone(), r.verdict.clone()));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_string()).collect()
    }

    /// Keys without source text (the other tests' names are of files that do not exist).
    fn k(l: &[String]) -> HashMap<String, String> {
        keys(l, &|_, _| None)
    }

    #[test]
    fn keys_drop_positions_keep_the_source_line_and_number_repeats() {
        let l = names(&[
            "crates/a.rs:10:5: replace == with != in f",
            "crates/a.rs:10:9: replace == with != in f",
            "crates/a.rs:12:7: replace == with != in f",
            "crates/b.rs:10:5: replace == with != in f",
            "crates/a.rs:30:1: replace g -> u64 with 0",
            "not a mutant name",
        ]);
        // Line 10 and 12 of a.rs, before and after an edit that moved them down by one.
        let text = |moved: usize| {
            move |f: &str, n: usize| match (f, n - moved) {
                ("crates/a.rs", 10) => Some("\t  x == y && z == w".to_string()),
                ("crates/a.rs", 12) => Some("p == q".to_string()),
                _ => None,
            }
        };
        let k = keys(&l, &text(0));
        assert_eq!(k.len(), 5);
        assert_eq!(
            k[&l[0]],
            "crates/a.rs: replace == with != in f @ x == y && z == w"
        );
        assert_eq!(
            k[&l[1]],
            "crates/a.rs: replace == with != in f @ x == y && z == w #2"
        );
        assert_eq!(k[&l[2]], "crates/a.rs: replace == with != in f @ p == q");
        assert_eq!(k[&l[3]], "crates/b.rs: replace == with != in f");
        assert_eq!(k[&l[4]], "crates/a.rs: replace g -> u64 with 0");
        // Edits that move lines keep the keys; removing a mutant elsewhere in the file does
        // not renumber the others.
        let moved = names(&[
            "crates/a.rs:13:7: replace == with != in f",
            "crates/a.rs:11:9: replace == with != in f",
        ]);
        let km = keys(&moved, &text(1));
        assert_eq!(km[&moved[0]], k[&l[2]]);
        assert_eq!(
            km[&moved[1]],
            "crates/a.rs: replace == with != in f @ x == y && z == w"
        );
    }

    #[test]
    fn merge_keeps_verdicts_only_of_mutants_still_missed() {
        let l = names(&["f.rs:1:1: replace a with b", "f.rs:2:1: replace c with d"]);
        let mut ledger = Ledger::new();
        let unknown = merge(
            &mut ledger,
            &k(&l),
            &[
                (l[0].clone(), Outcome::Missed),
                (l[1].clone(), Outcome::Missed),
                ("g.rs:1:1: gone".into(), Outcome::Caught),
            ],
            "abc",
        );
        assert_eq!(unknown, ["g.rs:1:1: gone"]);
        for r in ledger.values_mut() {
            r.verdict = "equivalent: why".into();
        }
        merge(
            &mut ledger,
            &k(&l),
            &[
                (l[0].clone(), Outcome::Missed),
                (l[1].clone(), Outcome::Caught),
            ],
            "def",
        );
        let a = &ledger["f.rs: replace a with b"];
        assert_eq!((a.outcome, a.commit.as_str()), (Outcome::Missed, "def"));
        assert_eq!(a.verdict, "equivalent: why");
        let c = &ledger["f.rs: replace c with d"];
        assert_eq!((c.outcome, c.verdict.as_str()), (Outcome::Caught, ""));
    }

    #[test]
    fn absorb_takes_new_records_and_keeps_verdicts() {
        let mut l = parse(
            "caught\tc1\ta\n\
             missed\tc1\tb\tequivalent: why\n\
             missed\tc1\tc\topen: how\n\
             missed\tc1\td\n",
        )
        .unwrap();
        let from = parse(
            "caught\tc1\ta\n\
             missed\tc2\tb\n\
             caught\tc2\tc\n\
             missed\tc1\td\tequivalent: seen there\n\
             unviable\tc2\te\n",
        )
        .unwrap();
        assert_eq!(absorb(&mut l, from, &mut |_, _| false), 4);
        let want = parse(
            "caught\tc1\ta\n\
             missed\tc2\tb\tequivalent: why\n\
             caught\tc2\tc\n\
             missed\tc1\td\tequivalent: seen there\n\
             unviable\tc2\te\n",
        )
        .unwrap();
        assert_eq!(l, want);
    }

    #[test]
    fn absorb_keeps_records_tested_at_a_later_commit() {
        // c1 is older than c2; c3 is on another branch.
        let mut ancestor = |a: &str, b: &str| a == "c1" && b == "c2";
        let mut l = parse(
            "caught\tc2\ta\n\
             missed\tc1\tb\n\
             caught\tc2\tc\n",
        )
        .unwrap();
        let from = parse(
            "missed\tc1\ta\topen: old\n\
             caught\tc2\tb\n\
             missed\tc3\tc\n",
        )
        .unwrap();
        assert_eq!(absorb(&mut l, from, &mut ancestor), 2);
        let want = parse(
            "caught\tc2\ta\n\
             caught\tc2\tb\n\
             missed\tc3\tc\n",
        )
        .unwrap();
        assert_eq!(l, want);
    }

    #[test]
    fn render_and_parse_round_trip_and_bad_lines_are_refused() {
        let l = names(&[
            "f.rs:1:1: replace a with b",
            "f.rs:2:1: replace c with d",
            "f.rs:3:1: replace e with f",
        ]);
        let mut ledger = Ledger::new();
        merge(
            &mut ledger,
            &k(&l),
            &[
                (l[0].clone(), Outcome::Missed),
                (l[1].clone(), Outcome::Timeout),
                (l[2].clone(), Outcome::Unviable),
            ],
            "abc",
        );
        ledger.get_mut("f.rs: replace a with b").unwrap().verdict = "equivalent: x".into();
        let text = render(&ledger);
        assert_eq!(parse(&text).unwrap(), ledger);
        assert!(parse("caught\tabc").is_err());
        assert!(
            parse("fine\tabc\tf.rs: x")
                .unwrap_err()
                .starts_with("line 1")
        );
    }

    #[test]
    fn score_counts_current_mutants_and_sets_stale_ones_apart() {
        let l = names(&[
            "f.rs:1:1: replace a with b",
            "f.rs:2:1: replace c with d",
            "f.rs:3:1: replace e with f",
            "f.rs:4:1: replace g with h",
            "f.rs:5:1: replace i with j",
        ]);
        let mut ledger = Ledger::new();
        merge(
            &mut ledger,
            &k(&l),
            &[
                (l[0].clone(), Outcome::Caught),
                (l[1].clone(), Outcome::Timeout),
                (l[2].clone(), Outcome::Missed),
                (l[3].clone(), Outcome::Missed),
            ],
            "abc",
        );
        ledger.get_mut("f.rs: replace e with f").unwrap().verdict = "equivalent: x".into();
        // The tree changes: the first mutant is gone.
        let s = score(&ledger, &k(&l[1..]));
        assert_eq!(s.mutants, 4);
        assert_eq!(s.counts, [0, 1, 2, 0]);
        assert_eq!(s.stale, 1);
        assert_eq!(s.untested(), 1);
        assert_eq!(s.killed(), (1, 3));
        assert_eq!(s.unexplained, ["f.rs: replace g with h"]);
        assert_eq!(s.explained.len(), 1);
        // One killed of three viable, one of them equivalent: 1 / 2.
        assert_eq!((s.equivalent(), s.score()), (1, 50.0));
        ledger.get_mut("f.rs: replace e with f").unwrap().verdict = "performance: y".into();
        assert_eq!(score(&ledger, &k(&l[1..])).score(), 100.0 / 3.0);
    }
}
