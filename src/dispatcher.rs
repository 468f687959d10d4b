//! The leader's side of the task stream: each agent holds one QUIC stream
//! open to the leader, gets the full set of its tasks first and then only
//! what changed, pushed as soon as a change is applied.
//!
//! One [`Hub`] per node finds what changed: after each burst of applied
//! entries it walks the task map once, beside its own record of what every
//! agent was last sent ([`scan`], pure), and queues each node's changes on
//! that node's streams. The cost of a change is one walk of the tasks, not
//! one per connected agent (with 5,000 agents and 100,000 tasks a walk per
//! agent was 5·10⁸ task visits per applied entry). A stream whose queue
//! is full is dropped; its agent reconnects and gets the full set again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_net::codec;
use shoal_net::SendStream;
use shoal_raft::{ClusterState, DesiredState, NodeId, Task, TaskId, TaskState};
use tokio::sync::{mpsc, Notify};

use crate::node::Node;
use crate::wire::TaskFeed;

/// With no change for this long, an `Idle` frame is sent, so a stream to a
/// node that died is noticed (its write fails) and released.
const IDLE_FRAME_EVERY: Duration = Duration::from_secs(5);

/// An agent that reads nothing for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most tasks in one frame: keeps frames far below the frame limit.
const MAX_TASKS_PER_FRAME: usize = 2_000;

/// Frames queued per stream; a stream this far behind is dropped (its agent
/// reconnects and starts again from a full set).
const STREAM_QUEUE: usize = 64;

/// After an applied entry the hub waits this long, so a burst of entries
/// costs one walk of the tasks.
const COALESCE: Duration = Duration::from_millis(10);

/// What an agent's work depends on in a task it was sent: a change of any
/// of these sends the task again. (Messages and timestamps change with
/// every report; sending them back would echo each report to its agent.
/// A task's spec never changes: a new template makes new tasks.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub node: NodeId,
    pub state: TaskState,
    pub desired: DesiredState,
    pub spec_version: u64,
}

impl Sent {
    /// `None` for a task no agent acts on (unassigned, or still pending).
    pub fn of(task: &Task) -> Option<Sent> {
        match task.node_id {
            Some(node) if task.state >= TaskState::Assigned => Some(Sent {
                node,
                state: task.state,
                desired: task.desired_state,
                spec_version: task.spec_version,
            }),
            _ => None,
        }
    }
}

/// One node's changes since the last scan.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NodeChanges {
    pub upserts: Vec<Task>,
    pub removed: Vec<TaskId>,
}

/// Walks `state`'s tasks beside `prev` (what agents were sent, sorted by
/// task id, as returned by the previous scan) and returns the new record
/// and each node's changes. One pass over both, in task id order.
pub fn scan(
    prev: Vec<(TaskId, Sent)>,
    state: &ClusterState,
) -> (Vec<(TaskId, Sent)>, BTreeMap<NodeId, NodeChanges>) {
    let mut next = Vec::with_capacity(prev.len());
    let mut changes: BTreeMap<NodeId, NodeChanges> = BTreeMap::new();
    let mut old = prev.into_iter().peekable();
    for (id, task) in &state.tasks {
        while let Some((gone, sent)) = old.next_if(|(o, _)| o < id) {
            changes.entry(sent.node).or_default().removed.push(gone);
        }
        let before = old.next_if(|(o, _)| o == id);
        let now = Sent::of(task);
        match (before, now) {
            (None, None) => {}
            (None, Some(now)) => {
                changes
                    .entry(now.node)
                    .or_default()
                    .upserts
                    .push(task.clone());
                next.push((id.clone(), now));
            }
            (Some((id, before)), None) => {
                changes.entry(before.node).or_default().removed.push(id);
            }
            (Some((id, before)), Some(now)) => {
                if before != now {
                    if before.node != now.node {
                        changes
                            .entry(before.node)
                            .or_default()
                            .removed
                            .push(id.clone());
                    }
                    changes
                        .entry(now.node)
                        .or_default()
                        .upserts
                        .push(task.clone());
                }
                next.push((id, now));
            }
        }
    }
    for (gone, sent) in old {
        changes.entry(sent.node).or_default().removed.push(gone);
    }
    (next, changes)
}

/// `upserts` then `removed`, in frames of at most [`MAX_TASKS_PER_FRAME`];
/// with `full`, the first frame is a [`TaskFeed::Full`] (possibly empty).
fn frames(upserts: Vec<Task>, removed: Vec<TaskId>, full: bool) -> Vec<TaskFeed> {
    let mut out = Vec::new();
    let mut upserts = upserts.into_iter().peekable();
    if full {
        out.push(TaskFeed::Full {
            tasks: upserts.by_ref().take(MAX_TASKS_PER_FRAME).collect(),
        });
    }
    while upserts.peek().is_some() {
        out.push(TaskFeed::Changes {
            upserts: upserts.by_ref().take(MAX_TASKS_PER_FRAME).collect(),
            removed: Vec::new(),
        });
    }
    for chunk in removed.chunks(MAX_TASKS_PER_FRAME) {
        out.push(TaskFeed::Changes {
            upserts: Vec::new(),
            removed: chunk.to_vec(),
        });
    }
    out
}

/// The task streams of one node (while it leads): streams waiting for
/// their full set, and the task that feeds them all.
#[derive(Default)]
pub struct Hub {
    joining: Mutex<Vec<Stream>>,
    wake: Notify,
    started: AtomicBool,
}

struct Stream {
    node: NodeId,
    frames: mpsc::Sender<TaskFeed>,
}

impl Hub {
    /// Adds a stream for `peer`; its full set follows within one hub pass.
    /// The leader's own agent joins too, with its own id, and reads the
    /// frames from the channel instead of a QUIC stream.
    pub fn join(&self, node: &Arc<Node>, peer: NodeId) -> mpsc::Receiver<TaskFeed> {
        let (frames, rx) = mpsc::channel(STREAM_QUEUE);
        self.joining
            .lock()
            .unwrap()
            .push(Stream { node: peer, frames });
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(run_hub(node.clone()));
        }
        self.wake.notify_one();
        rx
    }
}

/// Queues `frames` on `stream`; false if the stream is gone or too far
/// behind (then it is dropped, which ends it).
fn offer(stream: &Stream, frames: &[TaskFeed]) -> bool {
    frames
        .iter()
        .all(|f| stream.frames.try_send(f.clone()).is_ok())
}

async fn run_hub(node: Arc<Node>) {
    let hub = &node.dispatch;
    let mut applied = node.state.subscribe();
    let mut streams: HashMap<NodeId, Vec<Stream>> = HashMap::new();
    let mut prev: Vec<(TaskId, Sent)> = Vec::new();
    let mut by_node: HashMap<NodeId, BTreeSet<TaskId>> = HashMap::new();
    // A scan of a large state is paced (see `pace`).
    let mut pause = COALESCE;
    loop {
        tokio::select! {
            r = applied.changed() => if r.is_err() { return },
            () = hub.wake.notified() => {}
            () = tokio::time::sleep(IDLE_FRAME_EVERY) => {}
        }
        tokio::time::sleep(pause).await;
        let joining = std::mem::take(&mut *hub.joining.lock().unwrap());
        if !node.is_leader() {
            // Dropping the senders ends every stream: agents go and find
            // the new leader.
            streams.clear();
            continue;
        }
        streams.retain(|_, list| {
            list.retain(|s| !s.frames.is_closed());
            !list.is_empty()
        });
        if streams.is_empty() && joining.is_empty() {
            continue;
        }
        let ((), busy) = crate::pace::timed_pass(|| {
            node.state.read(|state| {
                let (next, changes) = scan(std::mem::take(&mut prev), state);
                prev = next;
                for (peer, change) in changes {
                    let ids = by_node.entry(peer).or_default();
                    for t in &change.upserts {
                        ids.insert(t.id.clone());
                    }
                    for id in &change.removed {
                        ids.remove(id);
                    }
                    if let Some(list) = streams.get_mut(&peer) {
                        let out = frames(change.upserts, change.removed, false);
                        list.retain(|s| offer(s, &out));
                    }
                }
                for stream in joining {
                    let tasks: Vec<Task> = by_node
                        .get(&stream.node)
                        .into_iter()
                        .flatten()
                        .filter_map(|id| state.tasks.get(id).cloned())
                        .collect();
                    if offer(&stream, &frames(tasks, Vec::new(), true)) {
                        streams.entry(stream.node).or_default().push(stream);
                    }
                }
            })
        });
        pause = crate::pace::pause_after(busy, COALESCE);
    }
}

/// Serves one agent's stream until this node stops leading or the agent
/// goes away.
pub async fn serve_watch(node: Arc<Node>, peer: NodeId, mut send: SendStream) {
    shoal_net::transport::mark_bulk(&send);
    let mut frames = node.dispatch.join(&node, peer);
    loop {
        let frame = match tokio::time::timeout(IDLE_FRAME_EVERY, frames.recv()).await {
            Ok(Some(frame)) => frame,
            // The hub let go: this node no longer leads, or the agent fell
            // too far behind.
            Ok(None) => {
                let _ = send.finish();
                return;
            }
            Err(_) if !node.is_leader() => {
                let _ = send.finish();
                return;
            }
            Err(_) => TaskFeed::Idle,
        };
        match tokio::time::timeout(WRITE_TIMEOUT, codec::send_msg(&mut send, &frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(peer, error = %e, "task stream closed");
                return;
            }
            Err(_) => {
                tracing::debug!(peer, "task stream dropped: the agent reads nothing");
                return;
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
            spec: shoal_raft::ServiceSpec::default_for("web", "img:1").into(),
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

    fn state(tasks: &[Task]) -> ClusterState {
        let mut s = ClusterState::default();
        for t in tasks {
            s.tasks.insert(t.id.clone(), t.clone());
        }
        s
    }

    fn on(mut t: Task, node: NodeId) -> Task {
        t.node_id = Some(node);
        t
    }

    #[test]
    fn scan_sends_each_node_only_what_changed_for_it() {
        let a = task("a", TaskState::Running);
        let b = task("b", TaskState::Assigned);
        let pending = {
            let mut t = task("p", TaskState::Pending);
            t.node_id = None;
            t
        };
        let other = on(task("o", TaskState::Assigned), 3);
        let s1 = state(&[a.clone(), b.clone(), pending.clone(), other.clone()]);
        let (sent, first) = scan(Vec::new(), &s1);
        assert_eq!(
            first,
            BTreeMap::from([
                (
                    2,
                    NodeChanges {
                        upserts: vec![a.clone(), b.clone()],
                        removed: vec![]
                    }
                ),
                (
                    3,
                    NodeChanges {
                        upserts: vec![other.clone()],
                        removed: vec![]
                    }
                ),
            ])
        );
        assert_eq!(sent.len(), 3, "the pending task is no agent's");
        // Nothing changed: nothing is sent.
        let (sent, none) = scan(sent, &s1);
        assert!(none.is_empty(), "{none:?}");

        // b runs, a is deleted, c is assigned, the pending task's message
        // changes, o's message changes (not sent: its agent does not use it).
        let mut b2 = b.clone();
        b2.state = TaskState::Running;
        let c = task("c", TaskState::Assigned);
        let mut pending2 = pending.clone();
        pending2.message = "no node has 4 CPUs free".into();
        let mut other2 = other.clone();
        other2.message = "started".into();
        other2.updated_at_ms = 99;
        let s2 = state(&[b2.clone(), c.clone(), pending2, other2]);
        let (sent, changes) = scan(sent, &s2);
        assert_eq!(
            changes,
            BTreeMap::from([(
                2,
                NodeChanges {
                    upserts: vec![b2.clone(), c.clone()],
                    removed: vec!["a".to_string()]
                }
            )])
        );
        // Shutting a task down is sent; a task moving nodes leaves the
        // first and reaches the second; the last task going is a removal.
        let mut c2 = c.clone();
        c2.desired_state = shoal_raft::DesiredState::Shutdown;
        let b3 = on(b2.clone(), 4);
        let (_, changes) = scan(sent, &state(&[b3.clone(), c2.clone()]));
        assert_eq!(
            changes,
            BTreeMap::from([
                (
                    2,
                    NodeChanges {
                        upserts: vec![c2],
                        removed: vec!["b".to_string()]
                    }
                ),
                (
                    3,
                    NodeChanges {
                        upserts: vec![],
                        removed: vec!["o".to_string()]
                    }
                ),
                (
                    4,
                    NodeChanges {
                        upserts: vec![b3],
                        removed: vec![]
                    }
                ),
            ])
        );
    }

    #[test]
    fn frames_are_bounded_and_a_full_set_comes_first() {
        let many: Vec<Task> = (0..4_500)
            .map(|i| task(&format!("t{i:05}"), TaskState::Assigned))
            .collect();
        let out = frames(many.clone(), vec!["x".to_string()], true);
        let sizes: Vec<(bool, usize, usize)> = out
            .iter()
            .map(|f| match f {
                TaskFeed::Full { tasks } => (true, tasks.len(), 0),
                TaskFeed::Changes { upserts, removed } => (false, upserts.len(), removed.len()),
                TaskFeed::Idle => unreachable!(),
            })
            .collect();
        assert_eq!(
            sizes,
            vec![
                (true, 2_000, 0),
                (false, 2_000, 0),
                (false, 500, 0),
                (false, 0, 1)
            ]
        );
        // An empty full set is still one frame; no change is no frame.
        assert!(
            matches!(&frames(vec![], vec![], true)[..], [TaskFeed::Full { tasks }] if tasks.is_empty())
        );
        assert!(frames(vec![], vec![], false).is_empty());
    }
}
