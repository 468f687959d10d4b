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

use shoal_raft::{ClusterState, Command, NodeId, NodeStatus, RaftNode, Role, TaskChange};

use crate::node::{now_ms, Node};
use crate::pace;
use crate::wire::OpError;

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
    // After an applied entry: a short pause lets a burst land in one pass;
    // a large state's slow passes are paced (see `pace`).
    let mut pause = MIN_PASS_PAUSE;
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
                tokio::time::sleep(pause).await;
            }
            () = deadline => {}
        }
        wake_at = None;
        let (leading, term, caught_up) = {
            let metrics = node.raft.metrics();
            let m = metrics.borrow();
            (
                m.state == openraft::ServerState::Leader && m.current_leader == Some(node.id),
                m.current_term,
                // An applied entry of this term (the new leader's first) means
                // everything committed before it is applied too.
                m.last_applied
                    .is_some_and(|id| id.leader_id.term == m.current_term),
            )
        };
        if leading && !caught_up {
            // A new leader decides on the state only once it holds all that
            // was committed before it: membership and liveness decisions on an
            // older state would undo what those entries did (a removed manager
            // added back, for one).
            let _ = tokio::time::timeout(Duration::from_millis(100), applied.changed()).await;
            continue;
        }
        if !leading {
            node.liveness.lock().unwrap().stop_leading();
            // A follower has nothing to do here until Raft's view changes.
            let mut metrics = node.raft.server_metrics();
            let _ = tokio::time::timeout(Duration::from_secs(1), metrics.changed()).await;
            continue;
        }
        let now = Instant::now();
        // The down timeout grows with the cluster, as the beat period the
        // heartbeat replies name does.
        let timeout = crate::heartbeat::current_cadence(&node).timeout;
        let transitions = {
            let mut live = node.liveness.lock().unwrap();
            live.observe_term(term, now);
            live.record(node.id, now);
            node.state
                .read(|s| live.transitions(s.nodes.values(), now, timeout))
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
        let busy = orchestrate(&node).await;
        pause = crate::pace::pause_after(busy, MIN_PASS_PAUSE);
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
/// (scheduler): each a pure function of the state, each committed as
/// batched proposals of at most [`MAX_CHANGES_PER_ENTRY`] changes and about
/// [`MAX_CHANGE_BYTES_PER_ENTRY`] bytes (see [`split_changes`]).
///
/// Returns the time spent deciding (not waiting for commits), which paces
/// the next pass.
async fn orchestrate(node: &Node) -> Duration {
    let (changes, reconciling) =
        pace::timed_pass(|| node.state.read(|s| shoal_raft::reconcile(s, now_ms())));
    if !changes.is_empty() {
        tracing::debug!(count = changes.len(), "orchestrator changes");
        if let Err(e) = commit_changes(node, changes).await {
            tracing::warn!(error = %e, "cannot commit orchestrator changes");
            return reconciling;
        }
    }
    let (placements, scheduling) = pace::timed_pass(|| node.state.read(shoal_raft::schedule));
    if !placements.is_empty() {
        tracing::debug!(count = placements.len(), "scheduler decisions");
        if let Err(e) = commit_changes(node, placements).await {
            tracing::warn!(error = %e, "cannot commit scheduler decisions");
        }
    }
    reconciling + scheduling
}

/// The shortest pause between an applied entry and the pass it starts.
const MIN_PASS_PAUSE: Duration = Duration::from_millis(2);

/// Most task changes in one `ApplyTaskChanges` entry.
pub const MAX_CHANGES_PER_ENTRY: usize = 10_000;
/// Most bytes (by [`change_size_bound`]) of task changes in one entry.
/// An `AppendEntries` carries up to 64 entries and about 512 KiB of them
/// (`shoal_raft::store::MAX_REPLICATION_BYTES`), at least one whatever its
/// size, so entries this size go two at a time.
pub const MAX_CHANGE_BYTES_PER_ENTRY: usize = 256 * 1024;

/// Commits `changes` as consecutive entries, each awaited before the next:
/// a pass of a million placements encodes to about 20 MB, more than one
/// frame may carry, and queued all at once the proposer would pack the
/// pieces back into one entry. Every change is checked again when applied,
/// so other writes landing between the pieces are harmless.
async fn commit_changes(node: &Node, changes: Vec<TaskChange>) -> Result<(), OpError> {
    for chunk in split_changes(changes, MAX_CHANGES_PER_ENTRY, MAX_CHANGE_BYTES_PER_ENTRY) {
        node.write(Command::ApplyTaskChanges {
            changes: chunk,
            now_ms: now_ms(),
        })
        .await?;
    }
    Ok(())
}

/// Splits `changes`, in order, into pieces of at most `max_count` changes
/// and at most `max_bytes` by [`change_size_bound`]; a single change larger
/// than `max_bytes` travels alone.
pub fn split_changes(
    changes: Vec<TaskChange>,
    max_count: usize,
    max_bytes: usize,
) -> Vec<Vec<TaskChange>> {
    let max_count = max_count.max(1);
    let mut pieces: Vec<Vec<TaskChange>> = Vec::new();
    let mut current: Vec<TaskChange> = Vec::new();
    let mut bytes = 0;
    for change in changes {
        let size = change_size_bound(&change);
        if !current.is_empty() && (current.len() >= max_count || bytes + size > max_bytes) {
            pieces.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(change);
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

/// An upper bound of a change's encoded size in the log (postcard: a
/// varint length before each string, at most 10 bytes per integer, one per
/// enum tag), computed without encoding it.
pub fn change_size_bound(change: &TaskChange) -> usize {
    const TAG: usize = 1;
    const INT: usize = 10;
    const OPTION_INT: usize = 1 + INT;
    let text = |s: &str| INT + s.len();
    match change {
        TaskChange::Create { service, .. } => TAG + text(service) + INT + OPTION_INT + INT,
        TaskChange::Assign { task_id, .. } => TAG + text(task_id) + INT,
        TaskChange::Unassignable { task_id, reason } => TAG + text(task_id) + text(reason),
        TaskChange::SetDesired {
            task_id, reason, ..
        } => TAG + text(task_id) + TAG + text(reason),
        TaskChange::MarkState {
            task_id, message, ..
        } => TAG + text(task_id) + TAG + text(message),
        TaskChange::Delete { task_id } => TAG + text(task_id),
        TaskChange::UpdateSlotFailed { service, .. } => TAG + text(service) + 2 * INT + OPTION_INT,
        TaskChange::UpdateTransition {
            service, message, ..
        } => TAG + text(service) + INT + 2 * TAG + text(message),
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

    /// The encoded size of one `ApplyTaskChanges` log entry.
    fn entry_bytes(changes: &[TaskChange]) -> usize {
        let payload = shoal_raft::LogPayload::V1(Command::ApplyTaskChanges {
            changes: changes.to_vec(),
            now_ms: u64::MAX,
        });
        shoal_raft::codec::encode(&payload).unwrap().len()
    }

    #[test]
    fn a_million_placements_split_into_entries_that_fit_a_frame() {
        let changes: Vec<TaskChange> = (0..1_000_000u64)
            .map(|seq| TaskChange::Assign {
                task_id: shoal_raft::task_id("0123456789abcdef0123456789abcdef", seq),
                node_id: 1 + seq % 5_000,
            })
            .collect();
        // As one entry this pass could not be replicated at all.
        assert!(entry_bytes(&changes) > shoal_net::codec::MAX_FRAME_BYTES);
        let pieces = split_changes(
            changes.clone(),
            MAX_CHANGES_PER_ENTRY,
            MAX_CHANGE_BYTES_PER_ENTRY,
        );
        assert!(pieces.len() >= 100, "{} pieces", pieces.len());
        // openraft sends up to 64 entries in one AppendEntries frame.
        let per_frame = shoal_net::codec::MAX_FRAME_BYTES / 64;
        for piece in &pieces {
            assert!(!piece.is_empty() && piece.len() <= MAX_CHANGES_PER_ENTRY);
            let bound: usize = piece.iter().map(change_size_bound).sum();
            assert!(bound <= MAX_CHANGE_BYTES_PER_ENTRY);
            assert!(entry_bytes(piece) <= per_frame, "{}", entry_bytes(piece));
        }
        // Nothing lost, nothing reordered.
        assert_eq!(pieces.concat(), changes);
    }

    #[test]
    fn split_changes_bounds_count_and_bytes_and_keeps_order() {
        let assign = |i: u64| TaskChange::Assign {
            task_id: format!("{i:016x}"),
            node_id: i,
        };
        let big = TaskChange::Unassignable {
            task_id: "t".into(),
            reason: "x".repeat(5_000),
        };
        // By count.
        let pieces = split_changes((0..25).map(assign).collect(), 10, usize::MAX);
        assert_eq!(
            pieces.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        // By bytes: an Assign of a 16-character id is bounded by 37 bytes.
        assert_eq!(change_size_bound(&assign(0)), 37);
        let pieces = split_changes((0..10).map(assign).collect(), 100, 37 * 4);
        assert_eq!(
            pieces.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        // A change larger than the byte bound travels alone.
        let pieces = split_changes(vec![assign(1), big.clone(), assign(2)], 100, 1_000);
        assert_eq!(pieces, vec![vec![assign(1)], vec![big], vec![assign(2)]]);
        assert!(split_changes(Vec::new(), 10, 10).is_empty());
        // Every kind's bound is at least its encoded size.
        let kinds = vec![
            TaskChange::Create {
                service: "web".into(),
                slot: u64::MAX,
                node_id: Some(u64::MAX),
                restart_count: u64::MAX,
            },
            assign(u64::MAX),
            TaskChange::SetDesired {
                task_id: "t1".into(),
                desired: shoal_raft::DesiredState::Shutdown,
                reason: "scaled down".into(),
            },
            TaskChange::MarkState {
                task_id: "t1".into(),
                state: shoal_raft::TaskState::Orphaned,
                message: "node down".into(),
            },
            TaskChange::Delete {
                task_id: "t1".into(),
            },
            TaskChange::UpdateSlotFailed {
                service: "web".into(),
                run_version: u64::MAX,
                slot: u64::MAX,
                node_id: Some(u64::MAX),
            },
            TaskChange::UpdateTransition {
                service: "web".into(),
                run_version: u64::MAX,
                from: shoal_raft::UpdateState::Updating,
                to: shoal_raft::UpdateState::Paused,
                message: "paused".into(),
            },
        ];
        for change in kinds {
            let alone = shoal_raft::codec::encode(&change).unwrap().len();
            assert!(change_size_bound(&change) >= alone, "{change:?}: {alone}");
        }
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
