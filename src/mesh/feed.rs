//! How the endpoint table reaches every node.
//!
//! While a node leads, one publisher ([`publish`]) derives the table from
//! the replicated state after each burst of applied entries, works out what
//! changed since the table it published before, and encodes those changes
//! once, as frames kept in a short log ([`Published`]). Each node's stream
//! ([`serve`]) sends the encoded frames that bring it from the table it was
//! last sent to the newest one, or the whole table (also encoded once per
//! table) when it has none or has fallen out of the log. So a change costs
//! one diff and one encoding however many nodes follow, and the bytes each
//! node receives are the changes themselves.
//!
//! With thousands of streams, each publication is a write on every stream:
//! the publisher waits longer between publications the more streams there
//! are ([`Published::pause`], [`Published::lazy_pause`]), so a burst of
//! changes travels in fewer, larger frames.
//!
//! A stream carries what every node needs (nodes, every service's ports,
//! and the backends and task nodes of services with published ports) and
//! the sections it asked for: the task nodes of services without ports,
//! which only DNS answers from. Each step of the log keeps the shared
//! frames and each section's frames apart, all encoded once.
//!
//! Tables are named ([`FeedVersion`]): a node names the one it holds when
//! it opens its stream, and a newly elected leader starts from the table
//! it followed ([`Published::seed`]), so nodes resume with the changes
//! instead of the whole table after a failover.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_net::codec;
use shoal_net::SendStream;
use shoal_raft::NodeId;
use tokio::sync::watch;

use super::table::{
    diff, for_workers, is_section, section_whole, split_sections, table_from_state, worker_view,
    EndpointTable, FeedVersion, Interest, ServiceChanges, TableChanges,
};
use super::Followed;
use crate::node::{resolve, Node};
use crate::wire::{EndpointFeed, PeerRequest};

/// With no change for this long an `Idle` frame is sent, so a dead
/// follower is noticed and released.
const IDLE_FRAME_EVERY: Duration = Duration::from_secs(5);
/// A follower that reads nothing for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A stream silent for this long (the leader sends `Idle` every 5 s) is dead.
const FEED_SILENCE: Duration = Duration::from_secs(12);
/// Most entries (nodes, backends, task nodes, services) in one frame:
/// keeps frames far below the frame limit.
pub const MAX_ENTRIES_PER_FRAME: usize = 5_000;
/// Publications kept as changes; a stream further behind is sent the
/// whole table again.
const MAX_LOG_STEPS: usize = 64;
/// Bytes of encoded changes kept, whatever their number.
const MAX_LOG_BYTES: usize = 32 * 1024 * 1024;
/// The shortest wait between publications, so a burst of entries (task
/// reports arrive in a steady flow in a large cluster) costs one build of
/// the table, not one per entry.
const COALESCE: Duration = Duration::from_millis(20);
/// What one publication costs per stream (a frame written, a QUIC packet
/// sealed and sent), as the wait between publications grows with streams.
const COST_PER_STREAM: Duration = Duration::from_micros(50);
/// The longest wait between publications: a task that stops must leave
/// every node's table within a second.
const MAX_PAUSE: Duration = Duration::from_millis(500);
/// The wait per stream between publications that change only what DNS
/// answers from (nodes, task nodes): 2 s at 5,000 nodes, which keeps the
/// feed near 2,500 frames a second. Each frame is a QUIC packet each way,
/// and at one per stream every 250 ms the packets alone kept a 5,000-node
/// leader busy (BENCHMARKS.md, "Simulated cluster").
const LAZY_COST_PER_STREAM: Duration = Duration::from_micros(400);
/// The longest wait for those: DNS answers are cached for 5 s anyway.
const MAX_LAZY_PAUSE: Duration = Duration::from_secs(5);

/// Whether `changes` change where published ports route: backends, or
/// services new, gone or with other ports. Nodes and the nodes a
/// service's tasks run on only feed DNS (a node going down takes its
/// backends with it, which is a routing change).
fn routes_change(changes: &TableChanges) -> bool {
    !changes.services_reset.is_empty()
        || !changes.services_removed.is_empty()
        || changes
            .services_changed
            .iter()
            .any(|(_, c)| !c.backends_set.is_empty() || !c.backends_removed.is_empty())
}

/// Splits `changes` into frames of at most `max_entries` entries each.
/// Applied in order, the frames make the same change as `changes`: each
/// holds a run of the entries in the order [`TableChanges::apply`] applies
/// them, and a service's changes may continue in the next frame.
pub fn chunk(changes: TableChanges, max_entries: usize) -> Vec<TableChanges> {
    let mut chunks = Chunks {
        frames: vec![TableChanges::default()],
        room: max_entries.max(1),
        max: max_entries.max(1),
    };
    for node in changes.nodes_set {
        chunks.entry().nodes_set.push(node);
    }
    for id in changes.nodes_removed {
        chunks.entry().nodes_removed.push(id);
    }
    for name in changes.services_removed {
        chunks.entry().services_removed.push(name);
    }
    for reset in changes.services_reset {
        chunks.entry().services_reset.push(reset);
    }
    for (name, service) in changes.services_changed {
        let ServiceChanges {
            backends_set,
            backends_removed,
            task_nodes_added,
            task_nodes_removed,
        } = service;
        for b in backends_set {
            chunks.service(&name).backends_set.push(b);
        }
        for t in backends_removed {
            chunks.service(&name).backends_removed.push(t);
        }
        for n in task_nodes_added {
            chunks.service(&name).task_nodes_added.push(n);
        }
        for n in task_nodes_removed {
            chunks.service(&name).task_nodes_removed.push(n);
        }
    }
    chunks.frames
}

struct Chunks {
    frames: Vec<TableChanges>,
    room: usize,
    max: usize,
}

impl Chunks {
    /// The frame with room for one more entry.
    fn entry(&mut self) -> &mut TableChanges {
        if self.room == 0 {
            self.frames.push(TableChanges::default());
            self.room = self.max;
        }
        self.room -= 1;
        self.frames.last_mut().expect("one frame")
    }

    /// `name`'s changes in the frame with room for one more entry.
    fn service(&mut self, name: &str) -> &mut ServiceChanges {
        let frame = self.entry();
        if frame.services_changed.last().map(|(n, _)| n.as_str()) != Some(name) {
            frame
                .services_changed
                .push((name.to_string(), ServiceChanges::default()));
        }
        &mut frame.services_changed.last_mut().expect("pushed").1
    }
}

/// Encoded frames, shared by every stream that sends them.
type Frames = Arc<Vec<Arc<[u8]>>>;

/// Encodes `changes` as frames (none for no change); the first starts the
/// receiver's table over when `full`.
fn encode_frames(changes: TableChanges, full: bool) -> Frames {
    if changes.is_empty() && !full {
        return Arc::new(Vec::new());
    }
    let frames = chunk(changes, MAX_ENTRIES_PER_FRAME)
        .into_iter()
        .enumerate()
        .map(|(i, changes)| {
            let frame = if full && i == 0 {
                EndpointFeed::Full(changes)
            } else {
                EndpointFeed::Changes(changes)
            };
            encode_frame(&frame)
        })
        .collect();
    Arc::new(frames)
}

fn encode_frame(frame: &EndpointFeed) -> Arc<[u8]> {
    codec::encode(frame).expect("endpoint frames encode").into()
}

fn frames_len(frames: &Frames) -> usize {
    frames.iter().map(|f| f.len()).sum()
}

/// The tables this node published while leading, as encoded frames.
pub struct Published {
    inner: Mutex<PublishedInner>,
    /// Bumped at each publication, to wake the streams.
    version: watch::Sender<u64>,
    /// This process's name for its tables ([`FeedVersion::origin`]).
    origin: u64,
    /// Streams being served, which pace the publications.
    streams: AtomicUsize,
}

#[derive(Default)]
struct PublishedInner {
    /// The newest table: published by this node, or, until this node
    /// publishes, the last one it followed.
    table: Option<(FeedVersion, Arc<EndpointTable>)>,
    /// The sections a followed table (a seed) holds; a node's own tables
    /// hold all.
    seed_holds: Option<(FeedVersion, Interest)>,
    /// The newest table whole (without sections), encoded when a stream
    /// first asks, as managers and as workers get it.
    full: Option<(FeedVersion, Frames)>,
    full_workers: Option<(FeedVersion, Frames)>,
    /// Sections of the newest table whole, encoded when a stream first asks.
    whole_sections: BTreeMap<String, Frames>,
    /// The changes between consecutive tables, oldest first.
    log: VecDeque<Step>,
    log_bytes: usize,
    /// When the newest table was published.
    published_at: Option<Instant>,
    /// The number of the last publication, counted from 1 over the node's
    /// life (not reset when it stops leading), so a stream's table is
    /// never mistaken for another.
    last_seq: u64,
}

/// The frames from the table at `from` to the table at `to`: what every
/// node gets, and each changed section's.
struct Step {
    from: FeedVersion,
    shared: Frames,
    /// `shared` as workers get it ([`worker_view`]).
    workers: Frames,
    sections: BTreeMap<String, Frames>,
    bytes: usize,
}

impl Default for Published {
    fn default() -> Self {
        Published {
            inner: Mutex::new(PublishedInner::default()),
            version: watch::Sender::new(0),
            origin: rand::random(),
            streams: AtomicUsize::new(0),
        }
    }
}

impl Published {
    /// Offers `table`, built at `now`: it is published unless it changes
    /// only what DNS answers from (nodes, task nodes) and the last
    /// publication was less than [`Published::lazy_pause`] ago; then the
    /// time it will be due is returned, and the caller offers again by
    /// then. Where ports route is never held back.
    pub fn offer(&self, table: Arc<EndpointTable>, now: Instant) -> Option<Instant> {
        let lazy_pause = self.lazy_pause();
        let inner = self.inner.lock().unwrap();
        let Some((prev_at, prev)) = inner.table.clone() else {
            self.publish_locked(inner, None, table, now);
            return None;
        };
        if prev == table {
            return None;
        }
        let changes = diff(&prev, &table);
        let due = inner.published_at.map_or(now, |at| at + lazy_pause);
        if !routes_change(&changes) && now < due {
            return Some(due);
        }
        self.publish_locked(inner, Some((prev_at, prev, changes)), table, now);
        None
    }

    /// Publishes `table` at once, whatever it changes.
    #[cfg(test)]
    fn publish(&self, table: Arc<EndpointTable>) {
        let inner = self.inner.lock().unwrap();
        let prev = inner.table.clone();
        if prev.as_ref().is_some_and(|(_, p)| *p == table) {
            return;
        }
        let step = prev.map(|(at, p)| {
            let changes = diff(&p, &table);
            (at, p, changes)
        });
        self.publish_locked(inner, step, table, Instant::now());
    }

    /// Makes `table` the newest, with the changes to it from the table
    /// before (none for the first): its name, itself, and the changes.
    fn publish_locked(
        &self,
        mut inner: std::sync::MutexGuard<'_, PublishedInner>,
        step: Option<(FeedVersion, Arc<EndpointTable>, TableChanges)>,
        table: Arc<EndpointTable>,
        now: Instant,
    ) {
        inner.last_seq += 1;
        let at = FeedVersion {
            origin: self.origin,
            seq: inner.last_seq,
        };
        if let Some((from, prev, changes)) = step {
            let (shared, sections) = split_sections(changes, &table);
            let workers = encode_frames(for_workers(&shared, &prev, &table), false);
            let shared = encode_frames(shared, false);
            let sections: BTreeMap<String, Frames> = sections
                .into_iter()
                .map(|(name, changes)| (name, encode_frames(changes, false)))
                .collect();
            let bytes = frames_len(&shared)
                + frames_len(&workers)
                + sections.values().map(frames_len).sum::<usize>();
            let step = Step {
                from,
                shared,
                workers,
                sections,
                bytes,
            };
            inner.log_bytes += step.bytes;
            inner.log.push_back(step);
            while inner.log.len() > MAX_LOG_STEPS || inner.log_bytes > MAX_LOG_BYTES {
                let dropped = inner.log.pop_front().expect("log is not empty");
                inner.log_bytes -= dropped.bytes;
            }
        }
        inner.table = Some((at, table));
        inner.published_at = Some(now);
        inner.full = None;
        inner.full_workers = None;
        inner.whole_sections.clear();
        let seq = inner.last_seq;
        drop(inner);
        self.version.send_replace(seq);
    }

    /// Starts from `table`, named `version`, which this node followed
    /// before it led, holding the sections `holds`: nodes that hold it get
    /// only the changes from it. Nothing happens once this node has a
    /// table of its own.
    pub fn seed(&self, version: FeedVersion, table: Arc<EndpointTable>, holds: Interest) {
        let mut inner = self.inner.lock().unwrap();
        if inner.table.is_none() {
            inner.table = Some((version, table));
            inner.seed_holds = Some((version, holds));
        }
    }

    /// Forgets everything published (this node stopped leading) and wakes
    /// the streams, which then end.
    pub fn clear(&self) {
        let mut inner = self.inner.lock().unwrap();
        *inner = PublishedInner {
            last_seq: inner.last_seq,
            ..PublishedInner::default()
        };
        drop(inner);
        self.version.send_replace(0);
    }

    /// The newest table, if one is published.
    #[cfg(test)]
    fn table(&self) -> Option<Arc<EndpointTable>> {
        let inner = self.inner.lock().unwrap();
        inner.table.as_ref().map(|(_, t)| t.clone())
    }

    /// The frames that bring a stream from the table at `sent` (none yet:
    /// `None`) to the newest, with the sections in `interest`, `fresh`
    /// ones whole, and the newest table's name; `None` while nothing is
    /// published.
    fn frames_since(
        &self,
        sent: Option<FeedVersion>,
        interest: &Interest,
        fresh: &[String],
    ) -> Option<(FeedVersion, Vec<Frames>)> {
        let mut inner = self.inner.lock().unwrap();
        let (at, table) = inner.table.clone()?;
        let mut fresh: BTreeSet<&str> = fresh.iter().map(String::as_str).collect();
        let mut sent = sent;
        let manager = *interest == Interest::All;
        // From a seed, the sections it did not hold go whole; a seed a
        // worker followed lacks the records managers get: they start over.
        if let Some((seed, holds)) = &inner.seed_holds {
            if sent == Some(*seed) && manager && *holds != Interest::All {
                sent = None;
            }
            if sent == Some(*seed) {
                fresh.extend(
                    table
                        .services
                        .iter()
                        .filter(|(name, s)| is_section(s) && interest.covers(name))
                        .filter(|(name, _)| !holds.covers(name))
                        .map(|(name, _)| name.as_str()),
                );
            }
        }
        let first_step = sent.and_then(|sent| inner.log.iter().position(|s| s.from == sent));
        let mut out = Vec::new();
        if sent == Some(at) || first_step.is_some() {
            for step in inner.log.iter().skip(first_step.unwrap_or(inner.log.len())) {
                out.push(if manager {
                    step.shared.clone()
                } else {
                    step.workers.clone()
                });
                out.extend(
                    step.sections
                        .iter()
                        .filter(|(name, _)| interest.covers(name) && !fresh.contains(name.as_str()))
                        .map(|(_, frames)| frames.clone()),
                );
            }
        } else {
            let cached = if manager {
                &mut inner.full
            } else {
                &mut inner.full_workers
            };
            let full = match cached {
                Some((full_at, frames)) if *full_at == at => frames.clone(),
                _ => {
                    let view = if manager {
                        (*table).clone()
                    } else {
                        worker_view(&table)
                    };
                    let (shared, _) = split_sections(diff(&EndpointTable::default(), &view), &view);
                    let frames = encode_frames(shared, true);
                    *cached = Some((at, frames.clone()));
                    frames
                }
            };
            out.push(full);
            fresh = table
                .services
                .iter()
                .filter(|(name, s)| is_section(s) && interest.covers(name))
                .map(|(name, _)| name.as_str())
                .collect();
        }
        for name in fresh {
            let Some(service) = table.services.get(name).filter(|s| is_section(s)) else {
                continue;
            };
            let frames = inner
                .whole_sections
                .entry(name.to_string())
                .or_insert_with(|| encode_frames(section_whole(name, service), false))
                .clone();
            out.push(frames);
        }
        // A stream none of whose entries changed is sent nothing, not even
        // the table's name: with thousands of streams, every publication
        // would otherwise be a packet to each.
        if out.iter().any(|frames| !frames.is_empty()) {
            out.push(Arc::new(vec![encode_frame(&EndpointFeed::Complete(at))]));
        } else {
            out.clear();
        }
        Some((at, out))
    }

    /// How long the publisher waits between builds of the table, after
    /// one that took `busy`: at least [`COALESCE`], longer the more
    /// streams each publication is written to, and paced by its own cost
    /// (`pace`), up to [`MAX_PAUSE`]. A change to where ports route is
    /// published at the next build.
    pub fn pause(&self, busy: Duration) -> Duration {
        let per_streams = (COST_PER_STREAM * self.streams()).min(MAX_PAUSE);
        crate::pace::pause_after(busy, COALESCE.max(per_streams)).min(MAX_PAUSE)
    }

    /// The least time between publications that change only what DNS
    /// answers from: [`LAZY_COST_PER_STREAM`] per stream, so the frames
    /// written per second stay bounded however many nodes follow, within
    /// [`COALESCE`] and [`MAX_LAZY_PAUSE`].
    pub fn lazy_pause(&self) -> Duration {
        (LAZY_COST_PER_STREAM * self.streams()).clamp(COALESCE, MAX_LAZY_PAUSE)
    }

    fn streams(&self) -> u32 {
        u32::try_from(self.streams.load(Ordering::Relaxed)).unwrap_or(u32::MAX)
    }

    fn count_stream(&self) -> StreamGuard<'_> {
        self.streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(&self.streams)
    }
}

struct StreamGuard<'a>(&'a AtomicUsize);

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every node runs this; while the node leads, it publishes the endpoint
/// table after each burst of applied entries, and keeps the node's own
/// mesh on it.
pub async fn publish(node: Arc<Node>) {
    let published = &node.mesh.published;
    let mut applied = node.state.subscribe();
    let mut metrics = node.raft.server_metrics();
    loop {
        if !node.is_leader() {
            published.clear();
            let _ = tokio::time::timeout(Duration::from_millis(500), metrics.changed()).await;
            continue;
        }
        // Just elected: the table this node followed is one most nodes
        // hold, so they get only what changed since (a failover sends no
        // whole tables).
        if let Some(followed) = node.mesh.followed() {
            published.seed(followed.version, followed.table, followed.holds);
        }
        let (table, build) =
            crate::pace::timed_pass(|| Arc::new(node.state.read(table_from_state)));
        let (due, offer) =
            crate::pace::timed_pass(|| published.offer(table.clone(), Instant::now()));
        // The node's own mesh follows the newest table at once.
        node.mesh.set_shared_table(table, Interest::All);
        let pause = published.pause(build + offer);
        // Wait for an entry (or for a held-back table to fall due), looking
        // up now and then whether this node still leads.
        loop {
            let wait = due.map_or(Duration::from_millis(500), |due| {
                due.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(500))
            });
            match tokio::time::timeout(wait, applied.changed()).await {
                Ok(Ok(())) => {
                    tokio::time::sleep(pause).await;
                    break;
                }
                Ok(Err(_)) => return,
                Err(_) if !node.is_leader() => break,
                Err(_) if due.is_some_and(|due| Instant::now() >= due) => break,
                Err(_) => {}
            }
        }
    }
}

/// The leader's side: serves one node's endpoint stream until this node
/// stops leading or the follower goes away.
pub async fn serve(
    node: Arc<Node>,
    peer: NodeId,
    (have, interest, mut fresh): (Option<FeedVersion>, Interest, Vec<String>),
    mut send: SendStream,
) {
    shoal_net::transport::mark_bulk(&send);
    let published = &node.mesh.published;
    let _counted = published.count_stream();
    let mut version = published.version.subscribe();
    let idle: Arc<[u8]> = codec::encode(&EndpointFeed::Idle)
        .expect("idle frame encodes")
        .into();
    let mut sent = have;
    loop {
        if !node.is_leader() {
            let _ = send.finish();
            return;
        }
        version.mark_unchanged();
        if let Some((at, steps)) = published.frames_since(sent, &interest, &fresh) {
            for frame in steps.iter().flat_map(|frames| frames.iter()) {
                if !write(&mut send, frame).await {
                    tracing::debug!(peer, "endpoint stream closed");
                    return;
                }
            }
            sent = Some(at);
            fresh.clear();
        }
        match tokio::time::timeout(IDLE_FRAME_EVERY, version.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                if !write(&mut send, &idle).await {
                    return;
                }
            }
        }
    }
}

async fn write(send: &mut SendStream, payload: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, codec::write_frame(send, payload)).await,
        Ok(Ok(()))
    )
}

/// Every node's side: keeps the mesh's table following whichever node
/// leads (the leader's own publisher keeps it while this node leads).
/// While no leader answers, the last table stays in use. The stream is
/// opened again when DNS asks for a section the table does not hold.
pub async fn follow(node: Arc<Node>) {
    let mut backoff = Duration::from_millis(50);
    let mut wanted = node.mesh.wanted();
    loop {
        let Some((leader, addr)) = node.leader() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        wanted.mark_unchanged();
        let outcome = if leader == node.id {
            leader_changes(&node, leader).await;
            Ok(())
        } else {
            tokio::select! {
                r = read_feed(&node, leader, &addr) => r,
                () = leader_changes(&node, leader) => Ok(()),
                _ = wanted.changed() => Ok(()),
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

/// What a node asks for: managers, which may lead next and then serve
/// every node from the table they followed, every section; others the
/// sections DNS asked for. Those the held table lacks come whole.
fn request(node: &Node, followed: Option<&Followed>) -> PeerRequest {
    let interest = if node.is_raft_member() {
        Interest::All
    } else {
        Interest::Services(node.mesh.wanted().borrow().clone())
    };
    let fresh = match (&interest, followed) {
        (Interest::Services(names), Some(f)) => names
            .iter()
            .filter(|name| !f.holds.covers(name))
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    PeerRequest::WatchEndpoints {
        node_id: node.id,
        have: followed.map(|f| f.version),
        interest,
        fresh,
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
    let followed = node.mesh.followed();
    let request = request(node, followed.as_ref());
    let PeerRequest::WatchEndpoints { interest, .. } = &request else {
        unreachable!("request() builds a WatchEndpoints");
    };
    // Once a table is complete it holds every section asked for.
    let holds = interest.clone();
    codec::send_msg(&mut send, &request)
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    let mut table: Option<EndpointTable> = followed.map(|f| (*f.table).clone());
    loop {
        let frame = tokio::time::timeout(
            FEED_SILENCE,
            codec::recv_msg::<EndpointFeed, _>(&mut recv, codec::MAX_FRAME_BYTES),
        )
        .await
        .map_err(|_| format!("no endpoint frame from leader {leader} for {FEED_SILENCE:?}"))?
        .map_err(|e| e.to_string())?;
        // A table split over frames is used once its last frame is in.
        if let (Some(version), Some(t)) = (apply_frame(&mut table, frame)?, &table) {
            node.mesh.set_followed(Followed {
                version,
                table: Arc::new(t.clone()),
                holds: holds.clone(),
            });
        }
    }
}

/// Applies one frame of the endpoint stream to the follower's `table`;
/// the name of the table it completes, if it is a `Complete`.
fn apply_frame(
    table: &mut Option<EndpointTable>,
    frame: EndpointFeed,
) -> Result<Option<FeedVersion>, String> {
    match frame {
        EndpointFeed::Full(changes) => {
            let mut fresh = EndpointTable::default();
            changes.apply(&mut fresh);
            *table = Some(fresh);
        }
        EndpointFeed::Changes(changes) => {
            let Some(t) = table.as_mut() else {
                return Err("the endpoint stream sent changes before the full table".into());
            };
            changes.apply(t);
        }
        EndpointFeed::Complete(version) => return Ok(Some(version)),
        EndpointFeed::Idle => {}
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::table::{task_nodes_at, Backend, MeshNode, ServiceEndpoints};
    use shoal_raft::{PortSpec, Protocol};

    fn backend(i: usize) -> Backend {
        Backend {
            task_id: format!("t{i:05}"),
            slot: i as u64,
            node_id: 1 + (i % 7) as u64,
            container_id: None,
            health: None,
            ports: Vec::new(),
        }
    }

    fn table(nodes: u64, backends: usize) -> EndpointTable {
        let mut t = EndpointTable::default();
        for id in 1..=nodes {
            let node = MeshNode {
                id,
                name: format!("n{id}"),
                addr: format!("127.0.0.1:{}", 4000 + id),
                ready: true,
            };
            t.nodes.insert(id, node);
        }
        let service = ServiceEndpoints {
            ports: vec![PortSpec::ingress(80, 80, Protocol::Tcp)],
            backends: (0..backends).map(backend).collect(),
            task_nodes: task_nodes_at(&(1..=nodes.min(7)).collect::<Vec<_>>()),
        };
        t.services.insert("web".into(), service);
        t
    }

    #[test]
    fn chunks_bound_the_entries_per_frame_and_keep_their_order() {
        let changes = diff(&EndpointTable::default(), &table(12_000, 9_000));
        let frames = chunk(changes.clone(), MAX_ENTRIES_PER_FRAME);
        let sizes: Vec<usize> = frames
            .iter()
            .map(|f| {
                f.nodes_set.len()
                    + f.services_reset.len()
                    + f.services_changed
                        .iter()
                        .map(|(_, c)| c.len())
                        .sum::<usize>()
            })
            .collect();
        // 12,000 nodes, one service reset, 9,000 backends and 7 task nodes.
        assert_eq!(sizes, vec![5_000, 5_000, 5_000, 5_000, 1_008]);
        // The service's changes continue over three frames.
        let parts: usize = frames.iter().map(|f| f.services_changed.len()).sum();
        assert_eq!(parts, 3);
        let mut pieces = EndpointTable::default();
        for f in frames {
            f.apply(&mut pieces);
        }
        assert_eq!(pieces, table(12_000, 9_000));
    }

    /// The name of `published`'s table number `seq`.
    fn v(published: &Published, seq: u64) -> FeedVersion {
        FeedVersion {
            origin: published.origin,
            seq,
        }
    }

    /// Applies `frames` as a follower does; the name of the table they
    /// complete.
    fn follow_frames(table: &mut Option<EndpointTable>, frames: &[Frames]) -> Option<FeedVersion> {
        let mut complete = None;
        for payload in frames.iter().flat_map(|f| f.iter()) {
            let frame = codec::decode::<EndpointFeed>(payload).unwrap();
            if let Some(version) = apply_frame(table, frame).unwrap() {
                complete = Some(version);
            }
        }
        complete
    }

    /// `table` as a node with `interest` holds it.
    fn view(table: &EndpointTable, interest: &Interest) -> EndpointTable {
        let mut t = match interest {
            Interest::All => table.clone(),
            Interest::Services(_) => worker_view(table),
        };
        for (name, s) in t.services.iter_mut() {
            if is_section(s) && !interest.covers(name) {
                s.task_nodes.clear();
            }
        }
        t
    }

    /// `table` with two services without ports, `a` and `b`, on the task
    /// nodes given.
    fn with_sections(mut t: EndpointTable, a: &[NodeId], b: &[NodeId]) -> EndpointTable {
        for (name, nodes) in [("a", a), ("b", b)] {
            let service = ServiceEndpoints {
                task_nodes: task_nodes_at(nodes),
                ..ServiceEndpoints::default()
            };
            t.services.insert(name.into(), service);
        }
        t
    }

    #[test]
    fn a_stream_carries_only_the_sections_it_asked_for() {
        let all = Interest::All;
        let only_a = Interest::Services(["a".to_string()].into());
        let both = Interest::Services(["a".to_string(), "b".to_string()].into());
        let published = Published::default();
        let first = with_sections(table(10, 20), &[1, 2], &[3, 4, 5]);
        published.publish(Arc::new(first.clone()));
        let mut node = None;
        let (at, frames) = published.frames_since(None, &only_a, &[]).unwrap();
        assert_eq!(follow_frames(&mut node, &frames), Some(at));
        assert_eq!(node.as_ref(), Some(&view(&first, &only_a)));
        assert!(node.as_ref().unwrap().services["b"].task_nodes.is_empty());
        let mut manager = None;
        follow_frames(
            &mut manager,
            &published.frames_since(None, &all, &[]).unwrap().1,
        );
        assert_eq!(manager.as_ref(), Some(&first));

        // Both sections change: the node gets a's change, not b's.
        let second = with_sections(table(10, 20), &[1, 2, 6], &[3, 4, 5, 7]);
        published.publish(Arc::new(second.clone()));
        let (at, frames) = published.frames_since(Some(at), &only_a, &[]).unwrap();
        let bytes: usize = frames.iter().map(frames_len).sum();
        follow_frames(&mut node, &frames);
        assert_eq!(node.as_ref(), Some(&view(&second, &only_a)));
        let (_, frames) = published.frames_since(Some(at), &all, &[]).unwrap();
        assert!(frames.is_empty());
        let (_, manager_frames) = published
            .frames_since(Some(v(&published, 1)), &all, &[])
            .unwrap();
        assert!(frames_len(&manager_frames[1]) > 0);
        assert!(bytes < manager_frames.iter().map(frames_len).sum::<usize>());

        // DNS asks for b: it comes whole, then its changes follow.
        let fresh = ["b".to_string()];
        let (at, frames) = published.frames_since(Some(at), &both, &fresh).unwrap();
        follow_frames(&mut node, &frames);
        assert_eq!(node, Some(view(&second, &both)));
        let third = with_sections(table(10, 20), &[1], &[4]);
        published.publish(Arc::new(third.clone()));
        let (_, frames) = published.frames_since(Some(at), &both, &[]).unwrap();
        follow_frames(&mut node, &frames);
        assert_eq!(node, Some(view(&third, &both)));

        // A new leader seeded by a worker's table (holding a only) sends b
        // whole to those resuming from it with b.
        let new = Published::default();
        let held = v(&published, 3);
        new.seed(held, Arc::new(view(&third, &only_a)), only_a.clone());
        let fourth = with_sections(table(10, 20), &[1], &[4, 8]);
        new.publish(Arc::new(fourth.clone()));
        let (_, frames) = new.frames_since(Some(held), &both, &[]).unwrap();
        follow_frames(&mut node, &frames);
        assert_eq!(node, Some(view(&fourth, &both)));
        // A worker's table holds the records of the nodes it routes to
        // only: the seven running a backend of `web`, not all ten.
        assert_eq!(node.unwrap().nodes.len(), 7);

        // A change only to a section a worker did not ask for sends it
        // nothing at all, not even the new table's name.
        let at = new.frames_since(None, &only_a, &[]).unwrap().0;
        new.publish(Arc::new(with_sections(table(10, 20), &[1], &[4, 8, 9])));
        let (newest, frames) = new.frames_since(Some(at), &only_a, &[]).unwrap();
        assert_ne!(newest, at);
        assert!(frames.is_empty());
        assert!(!new.frames_since(Some(at), &both, &[]).unwrap().1.is_empty());
    }

    #[test]
    fn streams_get_the_changes_since_their_table_or_the_whole_table() {
        let published = Published::default();
        assert!(published.frames_since(None, &Interest::All, &[]).is_none());
        published.publish(Arc::new(table(30, 100)));
        let (at, frames) = published.frames_since(None, &Interest::All, &[]).unwrap();
        assert_eq!(at, v(&published, 1));
        let mut follower = None;
        assert_eq!(follow_frames(&mut follower, &frames), Some(at));
        assert_eq!(follower.as_ref(), Some(&table(30, 100)));

        // Two publications later, a stream at the first gets both steps,
        // each only its change, then the name of the newest table.
        published.publish(Arc::new(table(31, 100)));
        published.publish(Arc::new(table(31, 101)));
        let (at, frames) = published
            .frames_since(Some(v(&published, 1)), &Interest::All, &[])
            .unwrap();
        assert_eq!((at.seq, frames.len()), (3, 3));
        let step: usize = frames.iter().flat_map(|f| f.iter()).map(|p| p.len()).sum();
        let (_, whole) = published.frames_since(None, &Interest::All, &[]).unwrap();
        let full: usize = whole.iter().flat_map(|f| f.iter()).map(|p| p.len()).sum();
        assert!(step * 5 < full, "changes {step} B, whole table {full} B");
        assert_eq!(follow_frames(&mut follower, &frames), Some(at));
        assert_eq!(follower.as_ref(), Some(&table(31, 101)));
        assert!(published
            .frames_since(Some(v(&published, 3)), &Interest::All, &[])
            .unwrap()
            .1
            .is_empty());

        // The same table again is no publication.
        published.publish(Arc::new(table(31, 101)));
        assert_eq!(
            published
                .frames_since(Some(v(&published, 3)), &Interest::All, &[])
                .unwrap()
                .0
                .seq,
            3
        );

        // A stream that fell out of the log gets the whole table again.
        for i in 0..MAX_LOG_STEPS + 1 {
            published.publish(Arc::new(table(31, 102 + i)));
        }
        let (_, frames) = published
            .frames_since(Some(v(&published, 3)), &Interest::All, &[])
            .unwrap();
        // The whole table, then its name.
        assert_eq!(frames.len(), 2);
        let mut stale = Some(table(1, 1));
        assert!(follow_frames(&mut stale, &frames).is_some());
        assert_eq!(stale, published.table().map(|t| (*t).clone()));

        published.clear();
        assert!(published
            .frames_since(Some(v(&published, 3)), &Interest::All, &[])
            .is_none());
        // Numbers go on after a clear: a stream from before never matches.
        published.publish(Arc::new(table(1, 1)));
        assert_eq!(
            published
                .frames_since(None, &Interest::All, &[])
                .unwrap()
                .0
                .seq,
            MAX_LOG_STEPS as u64 + 5
        );
    }

    #[test]
    fn publications_wait_longer_with_more_streams() {
        let published = Published::default();
        assert_eq!(published.pause(Duration::ZERO), COALESCE);
        let guards: Vec<_> = (0..2_000).map(|_| published.count_stream()).collect();
        assert_eq!(published.pause(Duration::ZERO), Duration::from_millis(100));
        let more: Vec<_> = (0..18_000).map(|_| published.count_stream()).collect();
        assert_eq!(published.pause(Duration::ZERO), MAX_PAUSE);
        assert_eq!(published.lazy_pause(), MAX_LAZY_PAUSE);
        drop(more);
        assert_eq!(published.lazy_pause(), Duration::from_millis(800));
        drop(guards);
        assert_eq!(published.pause(Duration::ZERO), COALESCE);
        assert_eq!(published.lazy_pause(), COALESCE);
    }

    #[test]
    fn route_changes_go_out_at_once_and_dns_changes_wait() {
        let ms = Duration::from_millis;
        let published = Published::default();
        let _streams: Vec<_> = (0..5_000).map(|_| published.count_stream()).collect();
        assert_eq!(published.lazy_pause(), ms(2_000));
        let t0 = Instant::now();
        assert_eq!(published.offer(Arc::new(table(3, 10)), t0), None);
        // A node joins (and serves a task node): held back.
        let due = published.offer(Arc::new(table(4, 10)), t0 + ms(100));
        assert_eq!(due, Some(t0 + ms(2_000)));
        assert_eq!(
            published
                .frames_since(None, &Interest::All, &[])
                .unwrap()
                .0
                .seq,
            1
        );
        // A backend changes: published at once, the held-back node with it.
        assert_eq!(published.offer(Arc::new(table(4, 11)), t0 + ms(200)), None);
        let mut follower = None;
        let (at, frames) = published.frames_since(None, &Interest::All, &[]).unwrap();
        assert_eq!(follow_frames(&mut follower, &frames), Some(at));
        assert_eq!((at.seq, follower), (2, Some(table(4, 11))));
        // The next node waits for 2 s after that publication.
        let due = published.offer(Arc::new(table(5, 11)), t0 + ms(300));
        assert_eq!(due, Some(t0 + ms(2_200)));
        assert_eq!(
            published.offer(Arc::new(table(5, 11)), t0 + ms(2_200)),
            None
        );
        assert_eq!(
            published
                .frames_since(Some(v(&published, 2)), &Interest::All, &[])
                .unwrap()
                .0
                .seq,
            3
        );
        // An unchanged table is neither published nor held.
        assert_eq!(
            published.offer(Arc::new(table(5, 11)), t0 + ms(2_300)),
            None
        );
        assert_eq!(
            published
                .frames_since(Some(v(&published, 3)), &Interest::All, &[])
                .unwrap()
                .1
                .len(),
            0
        );
    }

    #[test]
    fn a_new_leader_sends_nodes_holding_the_table_it_followed_only_the_changes() {
        let old = Published::default();
        old.publish(Arc::new(table(30, 100)));
        let (held, frames) = old.frames_since(None, &Interest::All, &[]).unwrap();
        let mut follower = None;
        follow_frames(&mut follower, &frames);

        let new = Published::default();
        new.seed(held, Arc::new(follower.clone().unwrap()), Interest::All);
        // Nothing to send to a node holding that table; the whole table
        // to one holding none or another.
        assert!(new
            .frames_since(Some(held), &Interest::All, &[])
            .unwrap()
            .1
            .is_empty());
        let other = FeedVersion {
            origin: held.origin,
            seq: 7,
        };
        let (_, whole) = new.frames_since(Some(other), &Interest::All, &[]).unwrap();
        let full: usize = whole.iter().flat_map(|f| f.iter()).map(|p| p.len()).sum();
        // Its first table travels as changes from the followed one.
        new.publish(Arc::new(table(31, 100)));
        let (at, frames) = new.frames_since(Some(held), &Interest::All, &[]).unwrap();
        let step: usize = frames.iter().flat_map(|f| f.iter()).map(|p| p.len()).sum();
        assert!(step * 5 < full, "changes {step} B, whole table {full} B");
        assert_eq!(follow_frames(&mut follower, &frames), Some(at));
        assert_eq!(follower, Some(table(31, 100)));
        // A seed comes too late once the node has published.
        new.seed(held, Arc::new(table(1, 1)), Interest::All);
        assert_eq!(new.frames_since(None, &Interest::All, &[]).unwrap().0, at);
    }
}
