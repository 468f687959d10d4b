//! How the endpoint table reaches every node: the leader derives it from
//! the replicated state and streams it (full table, then changes) to each
//! node that asks; the leader itself reads its own state. The leader
//! builds the table once per burst of applied entries and the changes once
//! for every stream that was sent the same table ([`Published`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_net::codec;
use shoal_net::SendStream;
use shoal_raft::NodeId;

use super::table::{diff, table_from_state, EndpointTable, TableChanges};
use crate::node::{resolve, Node};
use crate::wire::{EndpointFeed, PeerRequest};

/// With no change for this long an `Idle` frame is sent, so a dead
/// follower is noticed and released.
const IDLE_FRAME_EVERY: Duration = Duration::from_secs(5);
/// A follower that reads nothing for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A stream silent for this long (the leader sends `Idle` every 5 s) is dead.
const FEED_SILENCE: Duration = Duration::from_secs(12);
/// Most backends described in one frame: keeps frames far below the frame limit.
const MAX_BACKENDS_PER_FRAME: usize = 5_000;

/// Splits `changes` into frames of at most [`MAX_BACKENDS_PER_FRAME`]
/// backends each (a single larger service still travels alone). Applied in
/// order, the frames make the same change as `changes`.
pub fn chunk(changes: TableChanges) -> Vec<TableChanges> {
    let TableChanges {
        nodes,
        upserts,
        backends_set,
        backends_removed,
        removed,
    } = changes;
    let mut frames = vec![TableChanges {
        nodes,
        removed,
        ..TableChanges::default()
    }];
    let mut size = 0;
    // Starts a new frame when `n` more backends would overfill this one.
    let mut room_for = |frames: &mut Vec<TableChanges>, n: usize| {
        if size + n > MAX_BACKENDS_PER_FRAME && size > 0 {
            frames.push(TableChanges::default());
            size = 0;
        }
        size += n;
    };
    for (name, service) in upserts {
        room_for(&mut frames, service.backends.len() + 1);
        frames
            .last_mut()
            .expect("one frame")
            .upserts
            .push((name, service));
    }
    for change in backends_set {
        room_for(&mut frames, 1);
        frames
            .last_mut()
            .expect("one frame")
            .backends_set
            .push(change);
    }
    for change in backends_removed {
        room_for(&mut frames, 1);
        frames
            .last_mut()
            .expect("one frame")
            .backends_removed
            .push(change);
    }
    frames
}

/// After an applied entry, streams wait this long before they look at the
/// table again, so a burst of entries (task reports arrive in a steady
/// flow in a large cluster) costs one build of the table, not one per entry.
const COALESCE: Duration = Duration::from_millis(20);

/// The leader's endpoint table and the frames that bring a stream from the
/// previous table to it, built once however many streams ask: with every
/// stream building its own, each applied entry cost one walk of every task
/// and one compare of every backend per node (BENCHMARKS.md, "Simulated
/// cluster").
#[derive(Default)]
pub struct Published {
    inner: Mutex<PublishedInner>,
}

#[derive(Default)]
struct PublishedInner {
    /// The table and the applied index it was built at.
    table: Option<(u64, Arc<EndpointTable>)>,
    /// Frames from the table at one index to the table at another.
    changes: Option<(u64, u64, Arc<Vec<EndpointFeed>>)>,
    /// What the last build of the table took, which paces the next.
    last_build: Duration,
}

impl Published {
    /// The table as of the last applied entry (built now if it is older).
    pub fn table(&self, node: &Node) -> (u64, Arc<EndpointTable>) {
        let mut inner = self.inner.lock().unwrap();
        // Read before the state, so a table is never labelled newer than
        // what it holds.
        let applied = node.state.last_applied_index();
        match &inner.table {
            Some((at, table)) if *at == applied => (*at, table.clone()),
            _ => {
                let (table, took) =
                    crate::pace::timed_pass(|| Arc::new(node.state.read(table_from_state)));
                inner.table = Some((applied, table.clone()));
                inner.last_build = took;
                (applied, table)
            }
        }
    }

    /// How long a stream waits after an applied entry before it asks for
    /// the table again: [`COALESCE`], or longer once builds are slow.
    pub fn pause(&self) -> Duration {
        let last_build = self.inner.lock().unwrap().last_build;
        crate::pace::pause_after(last_build, COALESCE)
    }

    /// The frames from `prev` (the table at `from`) to `now` (at `to`).
    fn changes(
        &self,
        (from, prev): (u64, &EndpointTable),
        (to, now): (u64, &EndpointTable),
    ) -> Arc<Vec<EndpointFeed>> {
        let mut inner = self.inner.lock().unwrap();
        if let Some((f, t, frames)) = &inner.changes {
            if (*f, *t) == (from, to) {
                return frames.clone();
            }
        }
        let changes = diff(prev, now);
        let frames: Arc<Vec<EndpointFeed>> = Arc::new(if changes.is_empty() {
            Vec::new()
        } else {
            chunk(changes)
                .into_iter()
                .map(EndpointFeed::Changes)
                .collect()
        });
        inner.changes = Some((from, to, frames.clone()));
        frames
    }
}

/// The frames that carry a whole table to a stream that has none.
fn full_frames(now: &EndpointTable) -> Vec<EndpointFeed> {
    let mut parts = chunk(diff(&EndpointTable::default(), now)).into_iter();
    let mut first = EndpointTable::default();
    if let Some(part) = parts.next() {
        part.apply(&mut first);
    }
    std::iter::once(EndpointFeed::Full(first))
        .chain(parts.map(EndpointFeed::Changes))
        .collect()
}

/// The leader's side: serves one node's endpoint stream until this node
/// stops leading or the follower goes away.
pub async fn serve(node: Arc<Node>, peer: NodeId, mut send: SendStream) {
    shoal_net::transport::mark_bulk(&send);
    let mut applied = node.state.subscribe();
    let mut sent: Option<(u64, Arc<EndpointTable>)> = None;
    loop {
        if !node.is_leader() {
            let _ = send.finish();
            return;
        }
        let (index, now) = node.mesh.published.table(&node);
        let frames: Arc<Vec<EndpointFeed>> = match &sent {
            None => Arc::new(full_frames(&now)),
            Some((at, _)) if *at == index => Arc::new(Vec::new()),
            Some((at, prev)) => node.mesh.published.changes((*at, prev), (index, &now)),
        };
        for frame in frames.iter() {
            if !write(&mut send, frame).await {
                tracing::debug!(peer, "endpoint stream closed");
                return;
            }
        }
        sent = Some((index, now));
        match tokio::time::timeout(IDLE_FRAME_EVERY, applied.changed()).await {
            Ok(Ok(())) => tokio::time::sleep(node.mesh.published.pause()).await,
            Ok(Err(_)) => return,
            Err(_) => {
                if !write(&mut send, &EndpointFeed::Idle).await {
                    return;
                }
            }
        }
    }
}

async fn write(send: &mut SendStream, frame: &EndpointFeed) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, codec::send_msg(send, frame)).await,
        Ok(Ok(()))
    )
}

/// Every node's side: keeps the mesh's table following whichever node
/// leads. While no leader answers, the last table stays in use.
pub async fn follow(node: Arc<Node>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some((leader, addr)) = node.leader() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let outcome = if leader == node.id {
            tokio::select! {
                () = follow_own_state(&node) => Ok(()),
                () = leader_changes(&node, leader) => Ok(()),
            }
        } else {
            tokio::select! {
                r = read_feed(&node, leader, &addr) => r,
                () = leader_changes(&node, leader) => Ok(()),
            }
        };
        match outcome {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => {
                tracing::debug!(leader, error = %e, "endpoint stream ended");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn follow_own_state(node: &Node) {
    let mut applied = node.state.subscribe();
    loop {
        let (_, now) = node.mesh.published.table(node);
        node.mesh.set_shared_table(now);
        if applied.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(node.mesh.published.pause()).await;
    }
}

/// Completes when this node no longer sees `leader` as the leader.
async fn leader_changes(node: &Node, leader: NodeId) {
    let mut metrics = node.raft.server_metrics();
    loop {
        if node.leader().map(|l| l.0) != Some(leader) {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), metrics.changed()).await;
    }
}

async fn read_feed(node: &Node, leader: NodeId, addr: &str) -> Result<(), String> {
    let sock = resolve(addr).await.map_err(|e| e.to_string())?;
    let conn = node
        .peers
        .get(leader, sock)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    codec::send_msg(&mut send, &PeerRequest::WatchEndpoints { node_id: node.id })
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    let mut table: Option<EndpointTable> = None;
    loop {
        let frame = tokio::time::timeout(
            FEED_SILENCE,
            codec::recv_msg::<EndpointFeed, _>(&mut recv, codec::MAX_FRAME_BYTES),
        )
        .await
        .map_err(|_| format!("no endpoint frame from leader {leader} for {FEED_SILENCE:?}"))?
        .map_err(|e| e.to_string())?;
        match frame {
            EndpointFeed::Full(full) => table = Some(full),
            EndpointFeed::Changes(changes) => {
                let Some(t) = table.as_mut() else {
                    return Err("the endpoint stream sent changes before the full table".into());
                };
                changes.apply(t);
            }
            EndpointFeed::Idle => continue,
        }
        if let Some(t) = &table {
            node.mesh.set_table(t.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::table::{Backend, ServiceEndpoints};

    #[test]
    fn chunks_bound_the_backends_per_frame() {
        let service = |n: usize| ServiceEndpoints {
            ports: Vec::new(),
            backends: (0..n)
                .map(|i| Backend {
                    task_id: format!("t{i}"),
                    slot: i as u64,
                    node_id: 1,
                    container_id: None,
                    health: None,
                    ports: Vec::new(),
                })
                .collect(),
        };
        let changes = TableChanges {
            nodes: None,
            upserts: vec![
                ("a".into(), service(3_000)),
                ("b".into(), service(3_000)),
                ("c".into(), service(9_000)),
                ("d".into(), service(1)),
            ],
            // Backend changes fill frames too, one backend each.
            backends_set: service(6_000)
                .backends
                .into_iter()
                .map(|b| ("e".to_string(), b))
                .collect(),
            backends_removed: vec![("e".into(), "gone".into())],
            removed: vec!["z".into()],
        };
        let frames = chunk(changes.clone());
        let names: Vec<Vec<&str>> = frames
            .iter()
            .map(|f| f.upserts.iter().map(|(n, _)| n.as_str()).collect())
            .collect();
        assert_eq!(
            names,
            vec![vec!["a"], vec!["b"], vec!["c"], vec!["d"], vec![]]
        );
        assert_eq!(frames[0].removed, vec!["z".to_string()]);
        let backends: Vec<usize> = frames
            .iter()
            .map(|f| f.backends_set.len() + f.backends_removed.len())
            .collect();
        // "d" (one backend, one for the service) leaves room for 4,998 more.
        assert_eq!(backends, vec![0, 0, 0, 4_998, 1_003]);
        let mut whole = EndpointTable::default();
        changes.clone().apply(&mut whole);
        let mut pieces = EndpointTable::default();
        for f in frames {
            f.apply(&mut pieces);
        }
        assert_eq!(whole, pieces);
    }
}
