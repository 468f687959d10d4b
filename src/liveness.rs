//! Node liveness, decided by the leader from heartbeats it holds in memory.
//!
//! Heartbeats never go through the Raft log; only the transitions they imply
//! (`ready` → `down` and back) do, batched into one command per tick. The
//! decision is a pure function of the heartbeat times and the clock reading
//! passed in, so it is tested without waiting.
//!
//! The leader also decides how often nodes beat ([`cadence`]): every node
//! beats at the period the leader's last reply named, which grows with the
//! cluster so the leader's beat rate stays bounded, and the timeout after
//! which a node is written `down` grows with it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shoal_raft::{NodeId, NodeRecord, NodeStatus};

/// Most heartbeats a second the leader asks for. Each beat is a QUIC
/// stream served on the leader; at 5,000 nodes beating every 500 ms (10,000
/// a second) the leader spent most of a core on them and Raft starved. See
/// BENCHMARKS.md, "Simulated cluster", for the measurements behind it.
pub const MAX_BEATS_PER_SECOND: u64 = 1_000;

/// Heartbeat periods in one down timeout: a node is written `down` only
/// after about this many beats in a row were missed.
pub const BEATS_PER_TIMEOUT: u32 = 4;

/// How often nodes beat and when a silent one is `down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// The mean time between two beats of one node.
    pub period: Duration,
    /// A node silent this long is written `down`.
    pub timeout: Duration,
}

/// The cadence for a cluster of `nodes` node records, given the configured
/// period and down timeout (`--heartbeat-timeout` and a quarter of it).
///
/// Small clusters keep the configured values (fast failure detection);
/// above `MAX_BEATS_PER_SECOND × period` nodes, the period grows so that
/// the leader receives at most [`MAX_BEATS_PER_SECOND`] beats a second, and
/// the timeout stays [`BEATS_PER_TIMEOUT`] periods, so a large cluster does
/// not flap. Nodes that are `down` count too: they beat again when they
/// come back, and the count then does not shrink under them.
pub fn cadence(nodes: usize, base_period: Duration, base_timeout: Duration) -> Cadence {
    let spread = Duration::from_micros(nodes as u64 * 1_000_000 / MAX_BEATS_PER_SECOND);
    let period = base_period.max(spread);
    let timeout = base_timeout.max(period * BEATS_PER_TIMEOUT);
    Cadence { period, timeout }
}

/// The period to name in one reply: `period` moved by up to a quarter
/// either way, by `unit` (a random number in `[0, 1)`), so beats that
/// started in step spread out while their mean stays `period` (the longest,
/// 1.25 periods, still leaves about three beats in a timeout).
pub fn jittered(period: Duration, unit: f64) -> Duration {
    period.mul_f64(0.75 + 0.5 * unit.clamp(0.0, 1.0))
}

/// What every heartbeat reply shares, computed from the state as of one
/// applied index: listing the managers walks every node record, which is
/// too much to do per beat in a large cluster.
#[derive(Debug, Clone)]
pub struct ReplyView {
    /// The last applied log index the view was computed at (or before).
    pub applied: u64,
    pub managers: Vec<(NodeId, String)>,
    pub cadence: Cadence,
}

/// How many down timeouts a new leader waits before it calls a node it has
/// not heard from down. After a failover every node must find the new
/// leader (and a large cluster's nodes all at once, while the new leader
/// also sends each its full task set); with one timeout of grace, a
/// simulated 5,000-node cluster had hundreds of live nodes written down
/// and their tasks moved just as the grace ran out.
pub const NEW_LEADER_GRACE_TIMEOUTS: u32 = 2;

/// Heartbeat memory of the current leader. Reset whenever this node starts
/// to lead: a new leader has heard from nobody yet, so it gives every node
/// [`NEW_LEADER_GRACE_TIMEOUTS`] timeouts of grace before calling it down.
#[derive(Debug, Default)]
pub struct Liveness {
    last_seen: BTreeMap<NodeId, Instant>,
    leading_since: Option<Instant>,
    term: u64,
    /// Kept while no entry is applied (on any manager: followers answer
    /// beats too, with where the leader is).
    reply_view: Option<ReplyView>,
}

impl Liveness {
    /// The kept reply view, if it was computed at `applied`.
    pub fn reply_view(&self, applied: u64) -> Option<ReplyView> {
        self.reply_view
            .as_ref()
            .filter(|v| v.applied == applied)
            .cloned()
    }

    pub fn keep_reply_view(&mut self, view: ReplyView) {
        self.reply_view = Some(view);
    }

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
/// becomes `down`, but only once the leader itself has led for
/// [`NEW_LEADER_GRACE_TIMEOUTS`] × `timeout` (the grace period).
pub fn transitions<'a>(
    nodes: impl IntoIterator<Item = &'a NodeRecord>,
    last_seen: &BTreeMap<NodeId, Instant>,
    leading_since: Instant,
    now: Instant,
    timeout: Duration,
) -> Vec<(NodeId, NodeStatus, String)> {
    let grace_over =
        now.saturating_duration_since(leading_since) >= timeout * NEW_LEADER_GRACE_TIMEOUTS;
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
        // Never heard, but the leader is still in its grace period (two
        // timeouts): no change.
        check(&[(1, Ready, None)], 1_000, &[]);
        check(&[(1, Ready, None)], 3_999, &[]);
        // Silent for longer than the timeout, but within the grace: kept.
        check(&[(1, Ready, Some(3_000))], 3_500, &[]);
        // Never heard, grace over: down.
        check(&[(1, Ready, None)], 4_000, &[(1, Down)]);
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
    fn the_beat_period_grows_with_the_cluster_and_the_timeout_with_it() {
        let ms = Duration::from_millis;
        let check = |nodes: usize, base: (u64, u64), expected: (u64, u64)| {
            let got = cadence(nodes, ms(base.0), ms(base.1));
            assert_eq!(
                (got.period, got.timeout),
                (ms(expected.0), ms(expected.1)),
                "{nodes} nodes, configured period and timeout {base:?} ms"
            );
        };
        // Small clusters (CI, demos): the configured 2 s detection.
        check(0, (500, 2_000), (500, 2_000));
        check(53, (500, 2_000), (500, 2_000));
        check(500, (500, 2_000), (500, 2_000));
        // Above MAX_BEATS_PER_SECOND x period, the period grows.
        check(1_000, (500, 2_000), (1_000, 4_000));
        check(5_003, (500, 2_000), (5_003, 20_012));
        // A longer configured timeout is kept while it is the larger.
        check(5_000, (2_500, 30_000), (5_000, 30_000));
        // The leader's beat rate stays bounded at any size.
        for nodes in [1usize, 10, 999, 1_001, 4_000, 16_384] {
            let c = cadence(nodes, ms(500), ms(2_000));
            let rate = nodes as f64 / c.period.as_secs_f64();
            assert!(
                rate <= MAX_BEATS_PER_SECOND as f64 + 1.0 || c.period == ms(500),
                "{nodes} nodes beat {rate}/s"
            );
            assert!(c.timeout >= c.period * BEATS_PER_TIMEOUT);
        }
    }

    #[test]
    fn jitter_keeps_the_mean_and_three_beats_in_a_timeout() {
        let period = Duration::from_secs(4);
        assert_eq!(jittered(period, 0.0), Duration::from_secs(3));
        assert_eq!(jittered(period, 0.5), period);
        assert_eq!(jittered(period, 0.999_999).as_millis(), 4_999);
        assert_eq!(jittered(period, 7.0), Duration::from_secs(5));
        let c = cadence(8_000, Duration::from_millis(500), Duration::from_secs(2));
        assert!(jittered(c.period, 1.0) * 3 < c.timeout);
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
