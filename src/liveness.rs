//! Node liveness, decided by the leader from heartbeats it holds in memory.
//!
//! Heartbeats never go through the Raft log; only the transitions they imply
//! (`ready` → `down` and back) do, batched into one command per tick. The
//! decision is a pure function of the heartbeat times and the clock reading
//! passed in, so it is tested without waiting.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shoal_raft::{NodeId, NodeRecord, NodeStatus};

/// Heartbeat memory of the current leader. Reset whenever this node starts
/// to lead: a new leader has heard from nobody yet, so it gives every node a
/// full timeout of grace before calling it down.
#[derive(Debug, Default)]
pub struct Liveness {
    last_seen: BTreeMap<NodeId, Instant>,
    leading_since: Option<Instant>,
    term: u64,
}

impl Liveness {
    /// Called each leader tick with the current term; starts a new grace
    /// period when this node has just become leader.
    pub fn observe_term(&mut self, term: u64, now: Instant) {
        if self.leading_since.is_none() || self.term != term {
            self.last_seen.clear();
            self.leading_since = Some(now);
            self.term = term;
        }
    }

    /// Forgets everything when this node stops leading.
    pub fn stop_leading(&mut self) {
        self.leading_since = None;
        self.last_seen.clear();
    }

    pub fn record(&mut self, node: NodeId, now: Instant) {
        self.last_seen.insert(node, now);
    }

    pub fn transitions<'a>(
        &self,
        nodes: impl IntoIterator<Item = &'a NodeRecord>,
        now: Instant,
        timeout: Duration,
    ) -> Vec<(NodeId, NodeStatus, String)> {
        match self.leading_since {
            Some(since) => transitions(nodes, &self.last_seen, since, now, timeout),
            None => Vec::new(),
        }
    }
}

/// Which nodes change status now.
///
/// A node is alive when its last heartbeat is younger than `timeout`. A
/// `down` node that is alive becomes `ready`; a `ready` node that is not
/// becomes `down`, but only once the leader itself has led for `timeout`
/// (the grace period).
pub fn transitions<'a>(
    nodes: impl IntoIterator<Item = &'a NodeRecord>,
    last_seen: &BTreeMap<NodeId, Instant>,
    leading_since: Instant,
    now: Instant,
    timeout: Duration,
) -> Vec<(NodeId, NodeStatus, String)> {
    let grace_over = now.saturating_duration_since(leading_since) >= timeout;
    let mut out = Vec::new();
    for node in nodes {
        let heard = last_seen.get(&node.id);
        let alive = heard.is_some_and(|t| now.saturating_duration_since(*t) < timeout);
        match node.status {
            NodeStatus::Down if alive => {
                out.push((node.id, NodeStatus::Ready, "heartbeats resumed".to_string()));
            }
            NodeStatus::Ready if !alive && grace_over => {
                let silent = heard
                    .map(|t| now.saturating_duration_since(*t))
                    .unwrap_or_else(|| now.saturating_duration_since(leading_since));
                out.push((
                    node.id,
                    NodeStatus::Down,
                    format!("no heartbeat for {:.1}s", silent.as_secs_f64()),
                ));
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_raft::{Availability, Resources, Role};

    fn node(id: NodeId, status: NodeStatus) -> NodeRecord {
        NodeRecord {
            id,
            name: format!("n{id}"),
            addr: format!("127.0.0.{id}:4500"),
            role: Role::Manager,
            availability: Availability::Active,
            status,
            status_message: String::new(),
            labels: Default::default(),
            resources: Resources {
                nano_cpus: 0,
                memory_bytes: 0,
            },
            version: String::new(),
            joined_at_ms: 0,
            status_changed_at_ms: 0,
            updated_at_ms: 0,
            engine_error: None,
        }
    }

    /// `seen`: per node, milliseconds before `now` of its last heartbeat
    /// (None: never heard); `led_ms`: how long this leader has led.
    fn check(
        nodes: &[(NodeId, NodeStatus, Option<u64>)],
        led_ms: u64,
        expected: &[(NodeId, NodeStatus)],
    ) {
        let now = Instant::now() + Duration::from_secs(3600);
        let timeout = Duration::from_secs(2);
        let records: Vec<_> = nodes.iter().map(|(id, s, _)| node(*id, *s)).collect();
        let last_seen: BTreeMap<_, _> = nodes
            .iter()
            .filter_map(|(id, _, ago)| ago.map(|ms| (*id, now - Duration::from_millis(ms))))
            .collect();
        let since = now - Duration::from_millis(led_ms);
        let got: Vec<_> = transitions(&records, &last_seen, since, now, timeout)
            .into_iter()
            .map(|(id, s, _)| (id, s))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn liveness_table() {
        use NodeStatus::*;
        // Fresh heartbeat keeps a ready node ready.
        check(&[(1, Ready, Some(100))], 10_000, &[]);
        // Silent past the timeout after the grace period: down.
        check(&[(1, Ready, Some(2_500))], 10_000, &[(1, Down)]);
        // Never heard, but the leader is still in its grace period: no change.
        check(&[(1, Ready, None)], 1_000, &[]);
        // Never heard, grace over: down.
        check(&[(1, Ready, None)], 2_000, &[(1, Down)]);
        // A down node that heartbeats again is ready.
        check(&[(1, Down, Some(10))], 100, &[(1, Ready)]);
        // A down node that stays silent stays down, without a new write.
        check(&[(1, Down, None)], 10_000, &[]);
        // Several at once, in id order.
        check(
            &[
                (1, Ready, Some(10)),
                (2, Ready, Some(3_000)),
                (3, Down, Some(5)),
            ],
            10_000,
            &[(2, Down), (3, Ready)],
        );
    }

    #[test]
    fn new_term_resets_the_grace_period() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.observe_term(1, t0);
        l.record(7, t0);
        let n = node(7, NodeStatus::Ready);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(l.transitions([&n], later, Duration::from_secs(2)).len(), 1);
        l.observe_term(2, later);
        assert!(l
            .transitions([&n], later, Duration::from_secs(2))
            .is_empty());
    }
}
