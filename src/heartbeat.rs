//! Every node tells the leader it is alive, and learns from the reply where
//! the leader and the managers are (which is how a worker follows failovers).

use std::sync::Arc;
use std::time::Instant;

use crate::node::{managers_of, Node, VERSION};
use crate::wire::{Heartbeat, HeartbeatReply, OpError, OpErrorKind, PeerRequest, PeerResponse};

pub async fn run(node: Arc<Node>) {
    let mut ticker = tokio::time::interval(node.timing.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Index into the known managers, advanced whenever no leader is known,
    // so a worker asks each manager in turn.
    let mut next_manager = 0usize;
    loop {
        ticker.tick().await;
        if node.is_leader() {
            node.liveness
                .lock()
                .unwrap()
                .record(node.id, Instant::now());
            // The leader sends itself no heartbeat, so its own engine state
            // is recorded here, or a leader whose engine is gone would keep
            // being given tasks.
            let engine_error = node.engine_error.lock().unwrap().clone();
            node.note_engine(node.id, engine_error);
            continue;
        }
        let target = match node.leader() {
            Some(leader) if leader.0 != node.id => leader,
            _ => {
                let managers = node.known_managers.lock().unwrap().clone();
                let others: Vec<_> = managers.into_iter().filter(|m| m.0 != node.id).collect();
                if others.is_empty() {
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
        });
        // A beat not answered within one interval counts as lost: a worker
        // then asks the next manager where the leader is, instead of
        // waiting on a leader that may be dead.
        let timeout = node.timing.heartbeat_interval;
        match node.call_peer(target.0, &target.1, &beat, timeout).await {
            Ok(PeerResponse::Heartbeat(Ok(reply))) => learn(&node, target.0, reply),
            Ok(PeerResponse::Heartbeat(Err(e))) => {
                tracing::debug!(peer = target.0, error = %e, "heartbeat refused");
                node.leader_hint.lock().unwrap().take();
            }
            Ok(_) => tracing::warn!(peer = target.0, "unexpected reply to a heartbeat"),
            Err(e) => {
                tracing::debug!(peer = target.0, error = %e, "heartbeat failed");
                node.leader_hint.lock().unwrap().take();
            }
        }
    }
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
}

/// The leader's side: record the heartbeat. Another manager answers with
/// where the leader is, so the sender can go there.
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
    let managers = node.state.read(managers_of);
    let known = node.state.read(|s| s.nodes.contains_key(&from));
    if node.is_leader() {
        if !known {
            return Err(OpError::new(
                OpErrorKind::Forbidden,
                format!("node {from} is not a member of this cluster (it was removed)"),
            ));
        }
        node.liveness.lock().unwrap().record(from, Instant::now());
        node.note_engine(from, beat.engine_error);
        return Ok(HeartbeatReply {
            leader_id: node.id,
            managers,
        });
    }
    match node.leader() {
        Some((leader, _)) => Ok(HeartbeatReply {
            leader_id: leader,
            managers,
        }),
        None => Err(OpError::unavailable("no leader is known here")),
    }
}
