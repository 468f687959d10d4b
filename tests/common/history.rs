//! Histories of concurrent client operations and their checker.
//!
//! A [`Recorder`] collects what clients did: each operation's register, what
//! it wrote or read, when it was invoked and when it completed (microseconds
//! since the recorder started), and its outcome. [`check`] is pure: it takes
//! the recorded operations and returns the anomalies it finds, per register
//! (a service's env variable, a service's replica count, one label of a node).
//!
//! The model is a read/write register per key, initially absent. A write's
//! outcome is `Ok` (acknowledged), `Fail` (known not to have been applied:
//! the request never reached a daemon) or `Unknown` (timed out or failed on
//! the way: it may have been applied, now or later). Only `Ok` reads carry a
//! value. When every value written to a register is distinct, the checker
//! decides linearizability exactly (Gibbons and Korach's zone test for
//! registers whose reads name their write), and names the common anomalies
//! first:
//!
//! - `Phantom`: a read returned a value nobody wrote;
//! - `FailedWriteVisible`: a write that never reached a daemon was read;
//! - `FutureRead`: a read completed before the write it returns was invoked;
//! - `StaleRead`: a read returned a value although a newer write was
//!   acknowledged after that value's write completed and before the read
//!   began;
//! - `LostWrite`: the same, seen by a read after the faults healed (the final
//!   state lacks an acknowledged write);
//! - `Reappeared`: a value was read, then another, then the first again, each
//!   read after the previous completed (a write applied twice);
//! - `NotLinearizable`: anything else the zone test rejects.
//!
//! Registers whose values repeat (replica counts) get the checks that hold
//! whatever write a read came from: a read is stale only if it is stale for
//! every write of its value.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

/// Microseconds since the recorder started.
pub type Time = u64;

/// An operation whose completion is unknown completes, for the checker, at
/// the end of time.
const NEVER: Time = Time::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Acknowledged by the cluster.
    Ok,
    /// Known not to have taken effect.
    Fail,
    /// May or may not have taken effect.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Sets the register to the value.
    Write(String),
    /// What the register held (`None`: absent). Meaningful for `Ok` only.
    Read(Option<String>),
}

/// One client operation on one register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub client: usize,
    pub register: String,
    pub action: Action,
    pub invoke: Time,
    pub complete: Time,
    pub outcome: Outcome,
}

impl Op {
    fn is_write(&self) -> bool {
        matches!(self.action, Action::Write(_))
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.action {
            Action::Write(v) => format!("write {v:?}"),
            Action::Read(Some(v)) => format!("read {v:?}"),
            Action::Read(None) => "read <absent>".to_string(),
        };
        write!(
            f,
            "client {} {what} [{:.3}s..{:.3}s] {:?}",
            self.client,
            self.invoke as f64 / 1e6,
            self.complete as f64 / 1e6,
            self.outcome
        )
    }
}

/// Collects operations from client threads.
pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// Now, on the history's clock.
    pub fn now(&self) -> Time {
        self.start.elapsed().as_micros() as Time
    }

    pub fn record(&self, op: Op) {
        self.ops.lock().unwrap().push(op);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap().clone()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AnomalyKind {
    Phantom,
    FailedWriteVisible,
    FutureRead,
    StaleRead,
    LostWrite,
    Reappeared,
    NotLinearizable,
}

#[derive(Clone, Debug)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub register: String,
    pub detail: String,
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} on {}: {}", self.kind, self.register, self.detail)
    }
}

/// What [`check`] found.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub registers: usize,
    pub writes_ok: usize,
    pub writes_unknown: usize,
    pub writes_failed: usize,
    pub reads_ok: usize,
    pub anomalies: Vec<Anomaly>,
}

impl CheckReport {
    pub fn count(&self, kind: AnomalyKind) -> usize {
        self.anomalies.iter().filter(|a| a.kind == kind).count()
    }
}

/// Checks a history. Reads invoked at or after `final_from` are the final
/// reads, taken once the faults have healed: a stale one is a lost write.
pub fn check(ops: &[Op], final_from: Time) -> CheckReport {
    let mut by_register: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_register
            .entry(op.register.as_str())
            .or_default()
            .push(op);
    }
    let mut report = CheckReport {
        registers: by_register.len(),
        ..CheckReport::default()
    };
    for op in ops {
        match (op.is_write(), op.outcome) {
            (true, Outcome::Ok) => report.writes_ok += 1,
            (true, Outcome::Unknown) => report.writes_unknown += 1,
            (true, Outcome::Fail) => report.writes_failed += 1,
            (false, Outcome::Ok) => report.reads_ok += 1,
            (false, _) => {}
        }
    }
    for (register, ops) in by_register {
        check_register(register, &ops, final_from, &mut report.anomalies);
    }
    report
}

/// A write as the checker sees it; index 0 is the initial (absent) value.
struct Write<'a> {
    value: Option<&'a str>,
    invoke: Time,
    /// `NEVER` for an unknown outcome.
    complete: Time,
    outcome: Outcome,
    op: Option<&'a Op>,
}

impl Write<'_> {
    fn describe(&self) -> String {
        match self.op {
            Some(op) => op.to_string(),
            None => "the initial (absent) value".to_string(),
        }
    }
}

struct Read<'a> {
    value: Option<&'a str>,
    invoke: Time,
    complete: Time,
    op: &'a Op,
}

fn check_register(register: &str, ops: &[&Op], final_from: Time, out: &mut Vec<Anomaly>) {
    let mut writes = vec![Write {
        value: None,
        invoke: 0,
        complete: 0,
        outcome: Outcome::Ok,
        op: None,
    }];
    let mut reads = Vec::new();
    for op in ops {
        match (&op.action, op.outcome) {
            (Action::Write(v), outcome) => writes.push(Write {
                value: Some(v.as_str()),
                invoke: op.invoke,
                complete: if outcome == Outcome::Ok {
                    op.complete
                } else {
                    NEVER
                },
                outcome,
                op: Some(op),
            }),
            (Action::Read(v), Outcome::Ok) => reads.push(Read {
                value: v.as_deref(),
                invoke: op.invoke,
                complete: op.complete,
                op,
            }),
            (Action::Read(_), _) => {}
        }
    }
    let mut anomaly = |kind, detail: String| {
        out.push(Anomaly {
            kind,
            register: register.to_string(),
            detail,
        })
    };
    let mut per_value: BTreeMap<Option<&str>, Vec<usize>> = BTreeMap::new();
    for (i, w) in writes.iter().enumerate() {
        per_value.entry(w.value).or_default().push(i);
    }
    let unique = per_value.values().all(|ws| ws.len() == 1);
    let acked: Vec<usize> = (0..writes.len())
        .filter(|i| writes[*i].outcome == Outcome::Ok)
        .collect();
    // A write acknowledged strictly between `w` completing and `r` starting.
    let newer_between = |w: usize, r: &Read| -> Option<usize> {
        acked.iter().copied().find(|x| {
            // Every write follows the initial value (index 0).
            let after = w == 0 || writes[*x].invoke > writes[w].complete;
            *x != w && after && writes[*x].complete < r.invoke
        })
    };

    // Which write each read returns (for a unique register: the only one).
    let mut sources: Vec<Option<usize>> = Vec::with_capacity(reads.len());
    let mut found = 0usize;
    for r in &reads {
        let all = per_value.get(&r.value).cloned().unwrap_or_default();
        let shown = r.value.unwrap_or("<absent>");
        if all.is_empty() {
            found += 1;
            anomaly(
                AnomalyKind::Phantom,
                format!("{} returned {shown:?}, which no client wrote", r.op),
            );
            sources.push(None);
            continue;
        }
        let possible: Vec<usize> = all
            .iter()
            .copied()
            .filter(|w| writes[*w].outcome != Outcome::Fail)
            .collect();
        if possible.is_empty() {
            found += 1;
            anomaly(
                AnomalyKind::FailedWriteVisible,
                format!(
                    "{} returned the value of {}, which never reached a daemon",
                    r.op,
                    writes[all[0]].describe()
                ),
            );
            sources.push(None);
            continue;
        }
        let started: Vec<usize> = possible
            .iter()
            .copied()
            .filter(|w| writes[*w].invoke < r.complete)
            .collect();
        if started.is_empty() {
            found += 1;
            anomaly(
                AnomalyKind::FutureRead,
                format!(
                    "{} returned the value of {}, invoked only after the read completed",
                    r.op,
                    writes[possible[0]].describe()
                ),
            );
            sources.push(None);
            continue;
        }
        // Stale only if stale whichever write of this value it returned;
        // the latest invoked is the likeliest to be fresh, so it goes first.
        let mut by_recency = started.clone();
        by_recency.sort_unstable_by_key(|w| std::cmp::Reverse(writes[*w].invoke));
        let mut witness = None;
        for w in &by_recency {
            match newer_between(*w, r) {
                None => {
                    witness = None;
                    break;
                }
                Some(x) if witness.is_none() => witness = Some((*w, x)),
                Some(_) => {}
            }
        }
        if let Some((w, x)) = witness {
            found += 1;
            let (kind, what) = if r.invoke >= final_from {
                (AnomalyKind::LostWrite, "the final state lacks")
            } else {
                (AnomalyKind::StaleRead, "missed")
            };
            anomaly(
                kind,
                format!(
                    "{} returned the value of {}; it {what} {}, acknowledged before the read began",
                    r.op,
                    writes[w].describe(),
                    writes[x].describe()
                ),
            );
        }
        // The least stale candidate: the last one invoked.
        sources.push(started.iter().copied().max_by_key(|w| writes[*w].invoke));
    }
    if !unique {
        return;
    }

    // A value read, overwritten (another value read after), read again.
    let mut reads_of: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (ri, s) in sources.iter().enumerate() {
        if let Some(s) = s {
            reads_of.entry(*s).or_default().push(ri);
        }
    }
    for (&s, rs) in &reads_of {
        let first_done = rs.iter().map(|r| reads[*r].complete).min().unwrap();
        let last_begun = rs.iter().map(|r| reads[*r].invoke).max().unwrap();
        let between = reads.iter().enumerate().find(|(ri, r)| {
            sources[*ri].is_some_and(|t| t != s) && r.invoke > first_done && r.complete < last_begun
        });
        if let Some((ri, r)) = between {
            found += 1;
            let again = rs
                .iter()
                .map(|x| &reads[*x])
                .find(|x| x.invoke > r.complete)
                .expect("a later read of the value");
            anomaly(
                AnomalyKind::Reappeared,
                format!(
                    "the value of {} was read, then overwritten ({} returned the value of {}), then read again ({}): applied twice?",
                    writes[s].describe(),
                    r.op,
                    writes[sources[ri].unwrap()].describe(),
                    again.op
                ),
            );
        }
    }
    if found > 0 {
        return;
    }

    // Gibbons and Korach: each write with the reads of its value is a
    // cluster; its zone runs from the earliest completion to the latest
    // invocation in it. A forward zone (earliest completion first) is a
    // stretch of time in which the register must hold that value. The
    // history is linearizable iff no two forward zones overlap and no
    // backward zone lies inside a forward one.
    let mut forward = Vec::new();
    let mut backward = Vec::new();
    for (w, write) in writes.iter().enumerate() {
        let rs = reads_of.get(&w).map(Vec::as_slice).unwrap_or(&[]);
        // A write of unknown outcome nobody read may never have happened.
        if rs.is_empty() && write.outcome != Outcome::Ok {
            continue;
        }
        let min_complete = rs
            .iter()
            .map(|r| reads[*r].complete)
            .chain([write.complete])
            .min()
            .unwrap();
        let max_invoke = rs
            .iter()
            .map(|r| reads[*r].invoke)
            .chain([write.invoke])
            .max()
            .unwrap();
        if min_complete < max_invoke {
            forward.push((min_complete, max_invoke, w));
        } else {
            backward.push((max_invoke, min_complete, w));
        }
    }
    forward.sort_unstable();
    for pair in forward.windows(2) {
        let ((_, end_a, a), (start_b, _, b)) = (pair[0], pair[1]);
        if start_b < end_a {
            anomaly(
                AnomalyKind::NotLinearizable,
                format!(
                    "the register must hold the value of {} and of {} at the same time",
                    writes[a].describe(),
                    writes[b].describe()
                ),
            );
            return;
        }
    }
    for (start, end, w) in backward {
        if let Some((_, _, f)) = forward.iter().find(|(fs, fe, _)| *fs < start && end < *fe) {
            anomaly(
                AnomalyKind::NotLinearizable,
                format!(
                    "{} happened entirely while the register must hold the value of {}",
                    writes[w].describe(),
                    writes[*f].describe()
                ),
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A history written as (client, action, invoke, complete, outcome) on
    /// one register, times in seconds for readability.
    fn ops(spec: &[(usize, &str, f64, f64, Outcome)]) -> Vec<Op> {
        spec.iter()
            .map(|(client, action, invoke, complete, outcome)| {
                let action = if let Some(v) = action.strip_prefix("w ") {
                    Action::Write(v.to_string())
                } else if *action == "r -" {
                    Action::Read(None)
                } else {
                    Action::Read(Some(action.strip_prefix("r ").unwrap().to_string()))
                };
                Op {
                    client: *client,
                    register: "x".to_string(),
                    action,
                    invoke: (invoke * 1e6) as Time,
                    complete: (complete * 1e6) as Time,
                    outcome: *outcome,
                }
            })
            .collect()
    }

    fn kinds(history: &[Op], final_from: f64) -> Vec<AnomalyKind> {
        let report = check(history, (final_from * 1e6) as Time);
        report.anomalies.iter().map(|a| a.kind).collect()
    }

    use Outcome::{Fail, Ok as Acked, Unknown};

    #[test]
    fn sequential_and_concurrent_histories_pass() {
        let h = ops(&[
            (0, "r -", 0.0, 0.5, Acked),
            (0, "w a", 1.0, 2.0, Acked),
            (1, "r a", 2.5, 3.0, Acked),
            // b and c overlap: reads may see them in either order, once.
            (0, "w b", 4.0, 6.0, Acked),
            (1, "w c", 4.5, 5.5, Acked),
            (2, "r c", 4.8, 5.0, Acked),
            (2, "r b", 6.5, 7.0, Acked),
            (1, "r b", 8.0, 9.0, Acked),
        ]);
        assert_eq!(kinds(&h, 8.0), vec![]);
        let report = check(&h, 8_000_000);
        assert_eq!(report.writes_ok, 3);
        assert_eq!(report.reads_ok, 5);
        assert_eq!(report.registers, 1);
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_return_either_value() {
        for seen in ["r a", "r b"] {
            let h = ops(&[
                (0, "w a", 0.0, 1.0, Acked),
                (0, "w b", 2.0, 4.0, Acked),
                (1, seen, 3.0, 3.5, Acked),
            ]);
            assert_eq!(kinds(&h, 10.0), vec![], "{seen}");
        }
    }

    #[test]
    fn unknown_writes_may_or_may_not_take_effect_but_only_once() {
        // Never seen: fine. Seen late: fine (it may commit after the client
        // gave up, the next read being the first to see it).
        let h = ops(&[
            (0, "w a", 0.0, 1.0, Acked),
            (1, "w lost", 1.5, 3.0, Unknown),
            (0, "r a", 4.0, 4.5, Acked),
            (2, "w late", 5.0, 6.0, Unknown),
            (0, "r a", 6.5, 7.0, Acked),
            (0, "r late", 8.0, 9.0, Acked),
        ]);
        assert_eq!(kinds(&h, 8.0), vec![]);
    }

    #[test]
    fn a_lost_acknowledged_write_is_flagged() {
        let h = ops(&[
            (0, "w a", 0.0, 1.0, Acked),
            (1, "w b", 2.0, 3.0, Acked),
            // Final read after healing still shows a.
            (2, "r a", 10.0, 10.5, Acked),
        ]);
        assert_eq!(kinds(&h, 10.0), vec![AnomalyKind::LostWrite]);
        // An acknowledged write nobody saw before the end, then absent.
        let h = ops(&[(1, "w b", 2.0, 3.0, Acked), (2, "r -", 10.0, 10.5, Acked)]);
        assert_eq!(kinds(&h, 10.0), vec![AnomalyKind::LostWrite]);
    }

    #[test]
    fn a_stale_read_after_a_newer_acknowledged_write_is_flagged() {
        let h = ops(&[
            (0, "w a", 0.0, 1.0, Acked),
            (0, "w b", 2.0, 3.0, Acked),
            (1, "r a", 3.5, 4.0, Acked),
            (1, "r b", 5.0, 5.5, Acked),
        ]);
        let report = check(&h, 100_000_000);
        assert_eq!(
            report.anomalies.iter().map(|a| a.kind).collect::<Vec<_>>(),
            vec![AnomalyKind::StaleRead]
        );
        let detail = &report.anomalies[0].detail;
        assert!(detail.contains("write \"b\""), "{detail}");
    }

    #[test]
    fn a_duplicated_write_is_flagged() {
        // a's write was applied, overwritten by b, and applied again (a
        // forwarded write retried on a new leader): a, b, a in real time.
        let h = ops(&[
            (0, "w a", 0.0, 9.0, Acked),
            (1, "r a", 1.0, 1.5, Acked),
            (2, "w b", 2.0, 3.0, Acked),
            (1, "r b", 3.5, 4.0, Acked),
            (1, "r a", 5.0, 5.5, Acked),
        ]);
        assert_eq!(kinds(&h, 100.0), vec![AnomalyKind::Reappeared]);
        // The same with a's outcome unknown.
        let mut h = h;
        h[0].outcome = Unknown;
        assert_eq!(kinds(&h, 100.0), vec![AnomalyKind::Reappeared]);
    }

    #[test]
    fn values_nobody_wrote_or_that_never_left_the_client_are_flagged() {
        let h = ops(&[(0, "w a", 0.0, 1.0, Acked), (1, "r z", 2.0, 3.0, Acked)]);
        assert_eq!(kinds(&h, 100.0), vec![AnomalyKind::Phantom]);
        let h = ops(&[(0, "w a", 0.0, 1.0, Fail), (1, "r a", 2.0, 3.0, Acked)]);
        assert_eq!(kinds(&h, 100.0), vec![AnomalyKind::FailedWriteVisible]);
        let h = ops(&[(1, "r a", 0.0, 1.0, Acked), (0, "w a", 2.0, 3.0, Acked)]);
        assert_eq!(kinds(&h, 100.0), vec![AnomalyKind::FutureRead]);
    }

    #[test]
    fn two_orders_of_the_same_writes_are_flagged_by_the_zone_test() {
        // Both writes end by 1 s and nothing is written after; one read
        // sees b last, a later one sees a last. No single pattern above
        // names it, the zone test does.
        let h = ops(&[
            (0, "w a", 0.0, 1.0, Acked),
            (1, "w b", 0.0, 1.0, Acked),
            (2, "r b", 2.0, 3.0, Acked),
            (2, "r a", 4.0, 5.0, Acked),
        ]);
        assert_eq!(kinds(&h, 100.0), vec![AnomalyKind::NotLinearizable]);
    }

    #[test]
    fn repeated_values_are_checked_against_every_write_of_the_value() {
        // 2, 3, 2 again: a read of 2 after the second 2 began is fine.
        let h = ops(&[
            (0, "w 2", 0.0, 1.0, Acked),
            (0, "w 3", 2.0, 3.0, Acked),
            (1, "w 2", 6.0, 7.0, Acked),
            (2, "r 2", 6.5, 8.0, Acked),
        ]);
        assert_eq!(kinds(&h, 100.0), vec![]);
        // Without the second 2, the read is stale.
        let h = ops(&[
            (0, "w 2", 0.0, 1.0, Acked),
            (0, "w 3", 2.0, 3.0, Acked),
            (1, "w 4", 6.0, 7.0, Unknown),
            (1, "w 2", 9.0, 9.5, Acked),
            (2, "r 2", 6.5, 8.0, Acked),
        ]);
        assert_eq!(kinds(&h, 100.0), vec![AnomalyKind::StaleRead]);
    }

    #[test]
    fn registers_are_checked_apart() {
        let mut h = ops(&[(0, "w a", 0.0, 1.0, Acked), (1, "r a", 2.0, 3.0, Acked)]);
        let mut other = ops(&[(0, "w b", 0.0, 1.0, Acked), (1, "r -", 2.0, 3.0, Acked)]);
        for op in &mut other {
            op.register = "y".to_string();
        }
        h.extend(other);
        let report = check(&h, 100_000_000);
        assert_eq!(report.registers, 2);
        assert_eq!(report.anomalies.len(), 1, "{:?}", report.anomalies);
        assert_eq!(report.anomalies[0].register, "y");
        assert_eq!(report.anomalies[0].kind, AnomalyKind::StaleRead);
    }
}
