//! The leader loop: on every tick, while this node leads, turn liveness and
//! role changes into Raft proposals.
//!
//! Decisions are pure (`liveness::transitions`, [`membership_step`]); this
//! module only reads the inputs, proposes, and applies membership changes one
//! at a time (openraft allows one in flight).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_raft::{ClusterState, Command, NodeId, NodeStatus, RaftNode, Role};

use crate::node::{now_ms, Node};

/// One change of the Raft membership towards what the cluster state says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipStep {
    /// Replicate to a new manager as a learner until it has caught up.
    AddLearner { id: NodeId, addr: String },
    /// Make caught-up learners voters.
    Promote(BTreeSet<NodeId>),
    /// Remove voters whose node was demoted or removed.
    RemoveVoters(BTreeSet<NodeId>),
    /// Stop replicating to learners that are no longer wanted.
    RemoveLearners(BTreeSet<NodeId>),
}

/// The next membership change, if any: demotions and removals first (they
/// never need the affected node to answer), then promotions. Only nodes that
/// are `ready` are added, so a change never waits on a dead node.
pub fn membership_step(
    state: &ClusterState,
    voters: &BTreeSet<NodeId>,
    learners: &BTreeSet<NodeId>,
) -> Option<MembershipStep> {
    let wanted: BTreeSet<NodeId> = state
        .nodes
        .values()
        .filter(|n| n.role == Role::Manager)
        .map(|n| n.id)
        .collect();
    let remove: BTreeSet<NodeId> = voters.difference(&wanted).copied().collect();
    // Never empty the voter set.
    if !remove.is_empty() && remove.len() < voters.len() {
        return Some(MembershipStep::RemoveVoters(remove));
    }
    let stale_learners: BTreeSet<NodeId> = learners.difference(&wanted).copied().collect();
    if !stale_learners.is_empty() {
        return Some(MembershipStep::RemoveLearners(stale_learners));
    }
    let promote: BTreeSet<NodeId> = wanted.intersection(learners).copied().collect();
    if !promote.is_empty() {
        return Some(MembershipStep::Promote(promote));
    }
    state
        .nodes
        .values()
        .filter(|n| n.role == Role::Manager && n.status == NodeStatus::Ready)
        .find(|n| !voters.contains(&n.id) && !learners.contains(&n.id))
        .map(|n| MembershipStep::AddLearner {
            id: n.id,
            addr: n.addr.clone(),
        })
}

pub async fn run(node: Arc<Node>) {
    let membership_busy = Arc::new(AtomicBool::new(false));
    let mut ticker = tokio::time::interval(node.timing.leader_tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut applied = node.state.subscribe();
    // When a rolling update can next move on by the clock alone (a monitor
    // window or a delay ends); waiting for the tick would add up to a tick per batch.
    let mut wake_at: Option<tokio::time::Instant> = None;
    loop {
        // On a tick, as soon as something was applied (a deploy, a task
        // report) — a short pause lets a burst land in one pass — and at an
        // update's deadline.
        let deadline = async {
            match wake_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ticker.tick() => {}
            Ok(()) = applied.changed() => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            () = deadline => {}
        }
        wake_at = None;
        let (leading, term) = {
            let metrics = node.raft.metrics();
            let m = metrics.borrow();
            (
                m.state == openraft::ServerState::Leader && m.current_leader == Some(node.id),
                m.current_term,
            )
        };
        if !leading {
            node.liveness.lock().unwrap().stop_leading();
            // A follower has nothing to do here until Raft's view changes.
            let mut metrics = node.raft.server_metrics();
            let _ = tokio::time::timeout(Duration::from_secs(1), metrics.changed()).await;
            continue;
        }
        let now = Instant::now();
        let transitions = {
            let mut live = node.liveness.lock().unwrap();
            live.observe_term(term, now);
            live.record(node.id, now);
            node.state
                .read(|s| live.transitions(s.nodes.values(), now, node.timing.heartbeat_timeout))
        };
        if !transitions.is_empty() {
            for (id, status, why) in &transitions {
                tracing::info!(node = id, status = ?status, reason = %why, "node status change");
            }
            let cmd = Command::SetNodeStatus {
                updates: transitions,
                now_ms: now_ms(),
            };
            if let Err(e) = node.write(cmd).await {
                tracing::warn!(error = %e, "cannot record node status changes");
            }
        }
        orchestrate(&node).await;
        let now_wall = now_ms();
        wake_at = node
            .state
            .read(|s| shoal_raft::updater::next_deadline(s, now_wall))
            .map(|at| tokio::time::Instant::now() + Duration::from_millis(at - now_wall));
        if !membership_busy.load(Ordering::Acquire) {
            let (voters, learners) = {
                let metrics = node.raft.metrics();
                let m = metrics.borrow();
                let membership = m.membership_config.membership();
                let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
                let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
                (voters, learners)
            };
            if let Some(step) = node.state.read(|s| membership_step(s, &voters, &learners)) {
                membership_busy.store(true, Ordering::Release);
                let node = node.clone();
                let busy = membership_busy.clone();
                tokio::spawn(async move {
                    apply_step(&node, step).await;
                    busy.store(false, Ordering::Release);
                });
            }
        }
    }
}

/// Which tasks must exist (orchestrator), then where pending ones run
/// (scheduler): each a pure function of the state, each committed as one
/// batched proposal.
async fn orchestrate(node: &Node) {
    let changes = node.state.read(|s| shoal_raft::reconcile(s, now_ms()));
    if !changes.is_empty() {
        tracing::debug!(count = changes.len(), "orchestrator changes");
        let cmd = Command::ApplyTaskChanges {
            changes,
            now_ms: now_ms(),
        };
        if let Err(e) = node.write(cmd).await {
            tracing::warn!(error = %e, "cannot commit orchestrator changes");
            return;
        }
    }
    let placements = node.state.read(shoal_raft::schedule);
    if !placements.is_empty() {
        tracing::debug!(count = placements.len(), "scheduler decisions");
        let cmd = Command::ApplyTaskChanges {
            changes: placements,
            now_ms: now_ms(),
        };
        if let Err(e) = node.write(cmd).await {
            tracing::warn!(error = %e, "cannot commit scheduler decisions");
        }
    }
}

/// A learner that has not caught up within this long is tried again on a
/// later tick.
const LEARNER_CATCH_UP: Duration = Duration::from_secs(30);

async fn apply_step(node: &Node, step: MembershipStep) {
    tracing::info!(?step, "membership change");
    let result = match step.clone() {
        MembershipStep::AddLearner { id, addr } => {
            let fut = node.raft.add_learner(id, RaftNode { addr }, true);
            match tokio::time::timeout(LEARNER_CATCH_UP, fut).await {
                Ok(r) => r.map(|_| ()).map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "learner {id} did not catch up within {}s",
                    LEARNER_CATCH_UP.as_secs()
                )),
            }
        }
        MembershipStep::Promote(ids) => node
            .raft
            .change_membership(openraft::ChangeMembers::AddVoterIds(ids), false)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        MembershipStep::RemoveVoters(ids) => node
            .raft
            .change_membership(openraft::ChangeMembers::RemoveVoters(ids), false)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        MembershipStep::RemoveLearners(ids) => node
            .raft
            .change_membership(openraft::ChangeMembers::RemoveNodes(ids), false)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    if let Err(e) = result {
        tracing::warn!(?step, error = %e, "membership change failed; will retry");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_raft::{Availability, NodeRecord, Resources};

    fn state(nodes: &[(NodeId, Role, NodeStatus)]) -> ClusterState {
        let mut s = ClusterState::default();
        for (id, role, status) in nodes {
            s.nodes.insert(
                *id,
                NodeRecord {
                    id: *id,
                    name: format!("n{id}"),
                    addr: format!("127.0.0.{id}:4500"),
                    role: *role,
                    availability: Availability::Active,
                    status: *status,
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
                },
            );
        }
        s
    }

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    fn check(
        nodes: &[(NodeId, Role, NodeStatus)],
        voters: &[NodeId],
        learners: &[NodeId],
        expected: Option<MembershipStep>,
    ) {
        let got = membership_step(&state(nodes), &set(voters), &set(learners));
        assert_eq!(got, expected);
    }

    #[test]
    fn membership_steps() {
        use MembershipStep::*;
        use NodeStatus::*;
        use Role::*;
        // Already as wanted.
        check(&[(1, Manager, Ready), (2, Worker, Ready)], &[1], &[], None);
        // A ready new manager is added as a learner first...
        check(
            &[(1, Manager, Ready), (2, Manager, Ready)],
            &[1],
            &[],
            Some(AddLearner {
                id: 2,
                addr: "127.0.0.2:4500".into(),
            }),
        );
        // ...but not while it is down.
        check(&[(1, Manager, Ready), (2, Manager, Down)], &[1], &[], None);
        // A caught-up learner is promoted.
        check(
            &[(1, Manager, Ready), (2, Manager, Ready)],
            &[1],
            &[2],
            Some(Promote(set(&[2]))),
        );
        // A demoted voter is removed, even when down.
        check(
            &[(1, Manager, Ready), (2, Worker, Down)],
            &[1, 2],
            &[],
            Some(RemoveVoters(set(&[2]))),
        );
        // A removed node's voter entry goes too.
        check(
            &[(1, Manager, Ready)],
            &[1, 9],
            &[],
            Some(RemoveVoters(set(&[9]))),
        );
        // The last voter is never removed.
        check(&[(1, Worker, Ready)], &[1], &[], None);
        // A learner no longer wanted is dropped.
        check(
            &[(1, Manager, Ready), (2, Worker, Ready)],
            &[1],
            &[2],
            Some(RemoveLearners(set(&[2]))),
        );
    }
}
