//! The leader's side of the task stream: each agent holds one QUIC stream
//! open to the leader, gets the full set of its tasks first and then only
//! what changed, pushed as soon as a change is applied.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_net::codec;
use shoal_net::SendStream;
use shoal_raft::{ClusterState, NodeId, Task, TaskId, TaskState};

use crate::node::Node;
use crate::wire::TaskFeed;

/// With no change for this long, an `Idle` frame is sent, so a stream to a
/// node that died is noticed (its write fails) and released.
const IDLE_FRAME_EVERY: Duration = Duration::from_secs(5);

/// Most tasks in one frame: keeps frames far below the frame limit.
const MAX_TASKS_PER_FRAME: usize = 2_000;

/// The tasks a node's agent acts on: assigned to it and past `pending`.
pub fn tasks_for(state: &ClusterState, node: NodeId) -> BTreeMap<TaskId, Task> {
    state
        .tasks
        .values()
        .filter(|t| t.node_id == Some(node) && t.state >= TaskState::Assigned)
        .map(|t| (t.id.clone(), t.clone()))
        .collect()
}

/// What changed between what the agent has and what it should have.
pub fn diff(
    sent: &BTreeMap<TaskId, Task>,
    now: &BTreeMap<TaskId, Task>,
) -> (Vec<Task>, Vec<TaskId>) {
    let upserts = now
        .iter()
        .filter(|(id, t)| sent.get(*id) != Some(*t))
        .map(|(_, t)| t.clone())
        .collect();
    let removed = sent
        .keys()
        .filter(|id| !now.contains_key(*id))
        .cloned()
        .collect();
    (upserts, removed)
}

/// Serves one agent's stream until this node stops leading or the agent
/// goes away.
pub async fn serve_watch(node: Arc<Node>, peer: NodeId, mut send: SendStream) {
    let mut applied = node.state.subscribe();
    let mut sent: BTreeMap<TaskId, Task> = BTreeMap::new();
    let mut first = true;
    loop {
        if !node.is_leader() {
            let _ = send.finish();
            return;
        }
        let now = node.state.read(|s| tasks_for(s, peer));
        let frames: Vec<TaskFeed> = if first {
            first = false;
            let all: Vec<Task> = now.values().cloned().collect();
            if all.is_empty() {
                vec![TaskFeed::Full { tasks: all }]
            } else {
                let mut frames: Vec<TaskFeed> = Vec::new();
                for (i, chunk) in all.chunks(MAX_TASKS_PER_FRAME).enumerate() {
                    frames.push(if i == 0 {
                        TaskFeed::Full {
                            tasks: chunk.to_vec(),
                        }
                    } else {
                        TaskFeed::Changes {
                            upserts: chunk.to_vec(),
                            removed: Vec::new(),
                        }
                    });
                }
                frames
            }
        } else {
            let (upserts, removed) = diff(&sent, &now);
            if upserts.is_empty() && removed.is_empty() {
                Vec::new()
            } else {
                upserts
                    .chunks(MAX_TASKS_PER_FRAME.max(1))
                    .map(|c| TaskFeed::Changes {
                        upserts: c.to_vec(),
                        removed: Vec::new(),
                    })
                    .chain(std::iter::once(TaskFeed::Changes {
                        upserts: Vec::new(),
                        removed,
                    }))
                    .collect()
            }
        };
        for frame in &frames {
            if let Err(e) = codec::send_msg(&mut send, frame).await {
                tracing::debug!(peer, error = %e, "task stream closed");
                return;
            }
        }
        sent = now;
        match tokio::time::timeout(IDLE_FRAME_EVERY, applied.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                if codec::send_msg(&mut send, &TaskFeed::Idle).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, state: TaskState) -> Task {
        Task {
            id: id.to_string(),
            service: "web".to_string(),
            slot: 1,
            node_id: Some(2),
            spec_version: 1,
            spec: shoal_raft::ServiceSpec::default_for("web", "img:1"),
            desired_state: shoal_raft::DesiredState::Running,
            state,
            message: String::new(),
            error: String::new(),
            exit_code: None,
            container_id: None,
            restart_count: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
            state_changed_at_ms: 0,
            running_since_ms: None,
            health: None,
        }
    }

    #[test]
    fn diff_sends_only_what_changed() {
        let a = task("a", TaskState::Running);
        let b = task("b", TaskState::Assigned);
        let sent: BTreeMap<_, _> =
            [("a".to_string(), a.clone()), ("b".to_string(), b.clone())].into();
        let mut b2 = b.clone();
        b2.state = TaskState::Running;
        let c = task("c", TaskState::Assigned);
        let now: BTreeMap<_, _> =
            [("b".to_string(), b2.clone()), ("c".to_string(), c.clone())].into();
        let (upserts, removed) = diff(&sent, &now);
        assert_eq!(upserts, vec![b2, c]);
        assert_eq!(removed, vec!["a".to_string()]);
        assert_eq!(diff(&now, &now), (vec![], vec![]));
    }
}
