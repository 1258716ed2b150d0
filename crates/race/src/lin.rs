//! Linearizability: a concurrent history is correct if some sequential order of its
//! operations' atomic steps — each thread's operations in program order, each operation's steps
//! in order, and an operation that returned before another started wholly before it (real-time
//! order) — makes the sequential [`Model`] produce every observed result and end in the observed
//! final state. Histories are small (2–3 threads × 2–4 operations), so the orders are searched
//! exhaustively (depth first, pruned at the first wrong result).

use std::fmt::Write as _;

use pkvm_spec::{AbsState, Outcome};

use crate::model::{Model, Op, StepResult};

/// One completed operation of a history.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    /// What was done.
    pub op: Op,
    /// What it returned.
    pub outcome: Outcome,
    /// Logical time just before the call (a clock shared by every thread of the execution).
    pub start: u64,
    /// Logical time just after it returned.
    pub end: u64,
}

/// A concurrent history: the events of each thread, in program order.
pub type History = Vec<Vec<Event>>;

/// A sequential order that explains the history: `(thread, op index, step)` in order.
pub type Witness = Vec<(usize, usize, usize)>;

/// Searches for a linearization of `history` from `init` that ends in `final_state` (read
/// back from the machine once every thread has finished, `Machine::abstract_state`).
///
/// # Errors
/// A description of the history (and of the closest attempt) if there is none.
pub fn check(init: &Model, history: &History, final_state: &AbsState) -> Result<Witness, String> {
    let mut search = Search {
        history,
        final_state,
        pos: vec![(0, 0); history.len()],
        path: Vec::new(),
        deepest: Vec::new(),
        nodes: 0,
    };
    if search.dfs(init.clone()) {
        Ok(search.path)
    } else {
        Err(format!(
            "no sequential order of the steps explains this history ({} orders tried):\n{}\
             longest consistent prefix: {:?}",
            search.nodes,
            describe(history),
            search.deepest
        ))
    }
}

/// The history, one line per event, for failure reports.
#[must_use]
pub fn describe(history: &History) -> String {
    let mut s = String::new();
    for (t, evs) in history.iter().enumerate() {
        for (i, e) in evs.iter().enumerate() {
            let _ = writeln!(
                s,
                "  cpu{t} op{i} [{:>3}, {:>3}] {:?} -> {}",
                e.start, e.end, e.op, e.outcome
            );
        }
    }
    s
}

struct Search<'h> {
    history: &'h History,
    final_state: &'h AbsState,
    /// Per thread: (index of its current operation, steps of it already taken).
    pos: Vec<(usize, usize)>,
    path: Witness,
    deepest: Witness,
    nodes: u64,
}

impl Search<'_> {
    fn dfs(&mut self, model: Model) -> bool {
        self.nodes += 1;
        let mut done = true;
        for t in 0..self.history.len() {
            let (i, s) = self.pos[t];
            let Some(ev) = self.history[t].get(i) else {
                continue;
            };
            done = false;
            if s == 0 && !self.may_start(t, ev) {
                continue;
            }
            let mut next = model.clone();
            let more = match next.step(ev.op, s, ev.outcome) {
                StepResult::Outcome(o, more) if o == ev.outcome => more,
                StepResult::Outcome(..) => continue,
                StepResult::Done => false,
            };
            self.pos[t] = if more { (i, s + 1) } else { (i + 1, 0) };
            self.path.push((t, i, s));
            if self.path.len() > self.deepest.len() {
                self.deepest.clone_from(&self.path);
            }
            if self.dfs(next) {
                return true;
            }
            self.path.pop();
            self.pos[t] = (i, s);
        }
        done && model.running.is_empty() && model.spec.state() == self.final_state
    }

    /// Whether `ev` (thread `t`'s next operation) may take its first step now: no other
    /// thread's unfinished operation returned before `ev` started.
    fn may_start(&self, t: usize, ev: &Event) -> bool {
        self.pos
            .iter()
            .enumerate()
            .all(|(u, &(i, _))| u == t || self.history[u].get(i).is_none_or(|d| d.end >= ev.start))
    }
}
