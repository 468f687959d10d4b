//! Every node tells the leader it is alive, and learns from the reply where
//! the leader and the managers are (which is how a worker follows failovers)
//! and when to beat next: the leader names the period, longer in a large
//! cluster (`liveness::cadence`), so its beat rate stays bounded.
//!
//! The leader's handler is on the hot path of a large cluster (one call per
//! node per period), so it reads the state once per beat and keeps what
//! every reply shares ([`ReplyView`]) until an entry is applied.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_net::transport::NetError;
use shoal_raft::{ClusterState, NodeId};

use crate::liveness::{cadence, jittered, Cadence, ReplyView};
use crate::node::{managers_of, Node, VERSION};
use crate::wire::{Heartbeat, HeartbeatReply, OpError, OpErrorKind, PeerRequest, PeerResponse};

/// The shortest and the longest period a node accepts from a reply; a
/// value outside (a bug, or a reply from a newer leader) is clamped, so a
/// node never spins and never goes silent for good.
const MIN_PERIOD: Duration = Duration::from_millis(50);
const MAX_PERIOD: Duration = Duration::from_secs(300);

/// The wait before the next beat of a node that knows no leader, after
/// `misses` beats in a row that found none: the configured period `base`
/// at first, doubling up to the period the last leader named, jittered by
/// ±25 % (`unit` in 0..1). After a failover in a large cluster thousands
/// of nodes look for the new leader at once; at the configured pace (500
/// ms each) their beats were more than the new leader could answer in
/// time, which sent them looking again. A small cluster, whose leader
/// names the configured period, keeps it.
pub fn leaderless_period(base: Duration, last_named: Duration, misses: u32, unit: f64) -> Duration {
    let grown = base.saturating_mul(1u32 << misses.min(16));
    jittered(grown.min(last_named.max(base)), unit)
}

/// With a beat in flight, a connection that receives nothing for this long
/// (quiet connections are probed, see `node::until_silent`) means the
/// leader is gone: the node looks for the next one without waiting out
/// the period, which in a large cluster is several seconds.
pub const BEAT_SILENCE: Duration = Duration::from_millis(2_500);

/// How a beat that got no reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// The period ran out while the leader's side of the connection was
    /// still sending (it acknowledged the beat): a loaded leader.
    Slow,
    /// Nothing came back: a dead or unreachable leader, or any other error.
    Lost,
}

/// Whether a node keeps the leader it beats to after a beat went
/// unanswered, given how many unanswered beats came before it in a row.
/// A slow leader is given one more period (dropping it tears down the
/// node's task stream and sends the node round the managers, load a
/// loaded leader does not need); a lost beat, or a second slow one, and
/// the node looks for the leader elsewhere.
pub fn keeps_leader(unanswered: Unanswered, before_in_a_row: u32) -> bool {
    unanswered == Unanswered::Slow && before_in_a_row == 0
}

pub async fn run(node: Arc<Node>) {
    let base = node.timing.heartbeat_interval;
    // The period the leader last named; the configured one until a leader
    // has answered; after a beat that found no leader, the configured one
    // growing back to the named one (`leaderless_period`).
    let mut period = base;
    // Index into the known managers, advanced whenever no leader is known,
    // so a worker asks each manager in turn.
    let mut next_manager = 0usize;
    // Whether the warning that a peer refused this node as removed was
    // logged; once is enough.
    let mut told_removed = false;
    // Unanswered beats in a row to the current target.
    let mut unanswered = 0u32;
    // The period the last leader named, and the beats in a row since that
    // found no leader (see `leaderless_period`).
    let mut named = base;
    let mut misses = 0u32;
    loop {
        if node.is_leader() {
            period = base;
            node.liveness
                .lock()
                .unwrap()
                .record(node.id, Instant::now());
            // The leader sends itself no heartbeat, so its own engine state
            // is recorded here, or a leader whose engine is gone would keep
            // being given tasks.
            let engine_error = node.engine_error.lock().unwrap().clone();
            node.note_engine(node.id, engine_error);
            tokio::time::sleep(period).await;
            continue;
        }
        let target = match node.leader() {
            Some(leader) if leader.0 != node.id => leader,
            _ => {
                let managers = node.known_managers.lock().unwrap().clone();
                let others: Vec<_> = managers.into_iter().filter(|m| m.0 != node.id).collect();
                if others.is_empty() {
                    tokio::time::sleep(base).await;
                    continue;
                }
                next_manager = (next_manager + 1) % others.len();
                others[next_manager].clone()
            }
        };
        let beat = PeerRequest::Heartbeat(Heartbeat {
            node_id: node.id,
            version: VERSION.to_string(),
            engine_error: node.engine_error.lock().unwrap().clone(),
            revoked_known: node.endpoint.revoked_count() as u64,
        });
        // A beat not answered within one period (or sooner, on a silent
        // connection) is unanswered: a worker then asks the next manager
        // where the leader is, instead of waiting on a leader that may be
        // dead; one slow beat to a leader that is still there is let pass.
        let outcome = beat_once(&node, &target, &beat, period).await;
        if !matches!(outcome, Err(BeatError::Unanswered(_))) {
            unanswered = 0;
        }
        match outcome {
            Ok(PeerResponse::Heartbeat(Ok(reply))) => {
                period = named_period(reply.period_ms);
                named = period;
                misses = 0;
                learn(&node, target.0, reply);
            }
            Ok(PeerResponse::Heartbeat(Err(e))) => {
                tracing::debug!(peer = target.0, error = %e, "heartbeat refused");
                node.leader_hint.lock().unwrap().take();
                period = leaderless_period(base, named, misses, rand::random());
                misses += 1;
            }
            Ok(_) => tracing::warn!(peer = target.0, "unexpected reply to a heartbeat"),
            Err(BeatError::Net(e @ NetError::RevokedByPeer { .. })) => {
                // This node was removed: take the refusing node for the
                // leader, so what it forwards (`shoal status`) meets the
                // same refusal and the operator reads why.
                *node.leader_hint.lock().unwrap() = Some(target.clone());
                if !told_removed {
                    tracing::warn!(peer = target.0, error = %e, "this node was removed from the cluster");
                    told_removed = true;
                }
                period = base;
            }
            Err(BeatError::Unanswered(how)) => {
                if keeps_leader(how, unanswered) {
                    tracing::debug!(peer = target.0, "heartbeat unanswered within the period, but the leader is there; keeping it");
                    unanswered += 1;
                } else {
                    tracing::debug!(peer = target.0, ?how, "heartbeat unanswered");
                    node.leader_hint.lock().unwrap().take();
                    period = leaderless_period(base, named, misses, rand::random());
                    misses += 1;
                    unanswered = 0;
                }
            }
            Err(BeatError::Net(e)) => {
                tracing::debug!(peer = target.0, error = %e, "heartbeat failed");
                node.leader_hint.lock().unwrap().take();
                period = leaderless_period(base, named, misses, rand::random());
                misses += 1;
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// Why a beat got no reply.
pub enum BeatError {
    Unanswered(Unanswered),
    Net(NetError),
}

impl BeatError {
    /// Whether the connection the beat went on should be let go.
    pub fn drops_connection(&self) -> bool {
        match self {
            BeatError::Unanswered(how) => *how == Unanswered::Lost,
            BeatError::Net(e) => e.is_retryable(),
        }
    }
}

/// Sends one beat to `target` and waits for the reply, at most `period`,
/// and less if the connection goes silent for [`BEAT_SILENCE`].
async fn beat_once(
    node: &Node,
    target: &(NodeId, String),
    beat: &PeerRequest,
    period: Duration,
) -> Result<PeerResponse, BeatError> {
    let sock = crate::node::resolve(&target.1)
        .await
        .map_err(BeatError::Net)?;
    let conn = node
        .peers
        .get(target.0, sock)
        .await
        .map_err(BeatError::Net)?;
    let reply = exchange(&conn, beat, period).await;
    if reply.as_ref().is_err_and(BeatError::drops_connection) {
        node.peers.forget(target.0);
    }
    reply
}

/// One beat on `conn`: the reply, or how it went unanswered — within
/// `period`, or sooner when the connection is silent for
/// [`BEAT_SILENCE`]. Shared by nodes and `shoal dev simulate`.
pub async fn exchange(
    conn: &shoal_net::Connection,
    beat: &PeerRequest,
    period: Duration,
) -> Result<PeerResponse, BeatError> {
    let before = conn.stats().udp_rx.datagrams;
    let reply = tokio::select! {
        r = shoal_net::transport::call(conn, beat, period) => r,
        () = crate::node::until_silent(conn, BEAT_SILENCE) => {
            return Err(BeatError::Unanswered(Unanswered::Lost));
        }
    };
    match reply {
        Ok(r) => Ok(r),
        // Something arrived after the beat went out: the leader's QUIC
        // stack acknowledged it, so the process is there.
        Err(NetError::Timeout { .. }) if conn.stats().udp_rx.datagrams > before => {
            Err(BeatError::Unanswered(Unanswered::Slow))
        }
        Err(NetError::Timeout { .. }) => Err(BeatError::Unanswered(Unanswered::Lost)),
        Err(e) => Err(BeatError::Net(e)),
    }
}

/// The period a reply names, clamped to what a node accepts.
pub fn named_period(period_ms: u64) -> Duration {
    Duration::from_millis(period_ms).clamp(MIN_PERIOD, MAX_PERIOD)
}

fn learn(node: &Node, asked: u64, reply: HeartbeatReply) {
    let leader_addr = reply
        .managers
        .iter()
        .find(|m| m.0 == reply.leader_id)
        .map(|m| m.1.clone());
    *node.leader_hint.lock().unwrap() = leader_addr.map(|addr| (reply.leader_id, addr));
    if reply.leader_id != asked {
        tracing::debug!(asked, leader = reply.leader_id, "redirected to the leader");
    }
    node.remember_managers(reply.managers);
    // Workers hold no state: the leader's reply is how they learn which
    // nodes were removed, and refuse them too.
    let added = node.endpoint.revoke(reply.revoked);
    if !added.is_empty() {
        tracing::info!(nodes = ?added, "refusing connections from removed nodes");
    }
}

/// What the leader does with a heartbeat from a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaderAnswer {
    /// The node is not in the state: it was removed.
    Removed,
    /// Recorded, but refused with "no quorum", so the node looks for a
    /// leader elsewhere. Recorded all the same: the node is alive, and a
    /// leader whose quorum comes back must not then write it down for the
    /// beats it refused.
    RecordAndRefuse,
    /// Recorded and answered as the leader.
    RecordAndReply,
}

/// The leader's decision: `known`, whether the state has the node;
/// `lost_quorum`, whether this leader has lost its quorum
/// (`Node::lost_quorum`).
fn leader_answer(known: bool, lost_quorum: bool) -> LeaderAnswer {
    match (known, lost_quorum) {
        (false, _) => LeaderAnswer::Removed,
        (true, true) => LeaderAnswer::RecordAndRefuse,
        (true, false) => LeaderAnswer::RecordAndReply,
    }
}

/// The removed node ids to send a node that knows `known` of them: all of
/// them when its count differs (ids are only added, so a count is a
/// version), none otherwise.
fn revoked_for(node: &Node, known: u64) -> Vec<NodeId> {
    if known as usize == node.endpoint.revoked_count() {
        return Vec::new();
    }
    node.endpoint.revoked_ids()
}

/// The reply view as of `applied`: the kept one, or one computed from
/// `state` (read at or after `applied`).
fn reply_view(node: &Node, applied: u64, state: &ClusterState) -> ReplyView {
    ReplyView {
        applied,
        managers: managers_of(state),
        cadence: cadence(
            state.nodes.len(),
            node.timing.heartbeat_interval,
            node.timing.heartbeat_timeout,
        ),
    }
}

/// The cadence of this node's cluster as the leader applies it: the period
/// it names in replies and the timeout after which a silent node is `down`.
pub fn current_cadence(node: &Node) -> Cadence {
    let applied = node.state.last_applied_index();
    if let Some(view) = node.liveness.lock().unwrap().reply_view(applied) {
        return view.cadence;
    }
    let view = node.state.read(|s| reply_view(node, applied, s));
    let cadence = view.cadence;
    node.liveness.lock().unwrap().keep_reply_view(view);
    cadence
}

/// The leader's side: record the heartbeat. Another manager answers with
/// where the leader is, so the sender can go there.
///
/// One read of the state per beat; the liveness lock is never held while
/// the state is read (the leader loop takes them the other way round).
pub fn handle(node: &Arc<Node>, from: u64, beat: Heartbeat) -> Result<HeartbeatReply, OpError> {
    if beat.node_id != from {
        return Err(OpError::new(
            OpErrorKind::Forbidden,
            format!(
                "heartbeat claims node {} but the certificate names node {from}",
                beat.node_id
            ),
        ));
    }
    // Read before the state, so a view computed from this read is never
    // labelled newer than what it holds.
    let applied = node.state.last_applied_index();
    let kept = node.liveness.lock().unwrap().reply_view(applied);
    let (known, engine_changed, view) = node.state.read(|s| {
        let record = s.nodes.get(&from);
        (
            record.is_some(),
            record.is_some_and(|n| n.engine_error != beat.engine_error),
            kept.ok_or_else(|| reply_view(node, applied, s)),
        )
    });
    let view = match view {
        Ok(kept) => kept,
        Err(fresh) => {
            node.liveness.lock().unwrap().keep_reply_view(fresh.clone());
            fresh
        }
    };
    let revoked = revoked_for(node, beat.revoked_known);
    if node.is_leader() {
        let lost_quorum = node.lost_quorum();
        let answer = leader_answer(known, lost_quorum.is_some());
        if answer == LeaderAnswer::Removed {
            return Err(OpError::new(
                OpErrorKind::Forbidden,
                format!("node {from} is not a member of this cluster (it was removed)"),
            ));
        }
        node.liveness.lock().unwrap().record(from, Instant::now());
        if let Some(no_quorum) = lost_quorum {
            return Err(no_quorum);
        }
        if engine_changed {
            node.note_engine(from, beat.engine_error);
        }
        let period = jittered(view.cadence.period, rand::random::<f64>());
        return Ok(HeartbeatReply {
            leader_id: node.id,
            managers: view.managers,
            period_ms: period.as_millis() as u64,
            revoked,
        });
    }
    match node.leader() {
        // The sender should go to the leader at once, not after a period
        // of the leader's choosing.
        Some((leader, _)) => Ok(HeartbeatReply {
            leader_id: leader,
            managers: view.managers,
            period_ms: node.timing.heartbeat_interval.as_millis() as u64,
            revoked,
        }),
        None => Err(OpError::unavailable("no leader is known here")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_without_a_leader_backs_off_to_the_period_it_was_named() {
        let ms = Duration::from_millis;
        let mid = 0.5; // no jitter
                       // A large cluster's node (named 5 s): 0.5, 1, 2, 4, then 5 s.
        let waits: Vec<Duration> = (0..6)
            .map(|m| leaderless_period(ms(500), ms(5_000), m, mid))
            .collect();
        assert_eq!(
            waits,
            [
                ms(500),
                ms(1_000),
                ms(2_000),
                ms(4_000),
                ms(5_000),
                ms(5_000)
            ]
        );
        // A small cluster's node keeps the configured period.
        for misses in [0, 1, 7, 40] {
            assert_eq!(leaderless_period(ms(500), ms(500), misses, mid), ms(500));
        }
        // Jittered by a quarter either way.
        assert_eq!(leaderless_period(ms(400), ms(400), 0, 0.0), ms(300));
        assert_eq!(leaderless_period(ms(400), ms(400), 0, 1.0), ms(500));
    }

    #[test]
    fn a_slow_leader_gets_one_more_period_and_a_lost_one_none() {
        assert!(keeps_leader(Unanswered::Slow, 0));
        assert!(!keeps_leader(Unanswered::Slow, 1));
        assert!(!keeps_leader(Unanswered::Lost, 0));
        assert!(!keeps_leader(Unanswered::Lost, 3));
    }

    #[test]
    fn a_leader_without_its_quorum_records_beats_but_refuses_them() {
        assert_eq!(leader_answer(true, false), LeaderAnswer::RecordAndReply);
        assert_eq!(leader_answer(true, true), LeaderAnswer::RecordAndRefuse);
        assert_eq!(leader_answer(false, false), LeaderAnswer::Removed);
        assert_eq!(leader_answer(false, true), LeaderAnswer::Removed);
    }

    #[test]
    fn a_named_period_is_clamped_to_what_a_node_accepts() {
        assert_eq!(named_period(0), MIN_PERIOD);
        assert_eq!(named_period(3_750), Duration::from_millis(3_750));
        assert_eq!(named_period(u64::MAX), MAX_PERIOD);
    }
}
