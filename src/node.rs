//! A running node: its Raft instance, its QUIC endpoint and peer links, and
//! the two ways work reaches the leader (run here, or forward over QUIC).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

use openraft::error::{ClientWriteError, RaftError};
use shoal_net::pool::Peers;
use shoal_net::transport::{self, Endpoint};
use shoal_raft::{Command, LogPayload, NodeId, Proposed, Raft, RequestId, Response, StateHandle};

use crate::config::Timing;
use crate::datadir::DataDir;
use crate::liveness::Liveness;
use crate::wire::{LeaderOp, LeaderReply, OpError, OpErrorKind, PeerRequest, PeerResponse};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct Node {
    pub id: NodeId,
    pub cluster_id: String,
    pub name: String,
    pub advertise: String,
    pub timing: Timing,
    pub raft: Raft,
    pub state: StateHandle,
    pub endpoint: Endpoint,
    pub peers: Peers,
    pub data_dir: DataDir,
    /// Heartbeats received while this node leads (leader memory only).
    pub liveness: Mutex<Liveness>,
    /// Where a node that is not a voter (a worker) believes the leader is,
    /// learnt from heartbeat replies.
    pub leader_hint: Mutex<Option<(NodeId, String)>>,
    /// Last known managers, persisted in node.json for restarts.
    pub known_managers: Mutex<Vec<(NodeId, String)>>,
    /// Where writes queue for the proposer.
    pub proposer: mpsc::Sender<Proposal>,
    /// Why this node's container engine cannot be used, as the agent last
    /// found; sent to the leader with every heartbeat.
    pub engine_error: Mutex<Option<String>>,
    /// Held by the leader's operations that read a service spec and write a
    /// changed one (deploy, update, scale, rollback), so two of them never
    /// write over each other's change.
    pub service_writes: tokio::sync::Mutex<()>,
    /// The routing mesh and DNS: the endpoint table and connections.
    pub mesh: Arc<crate::mesh::Mesh>,
    /// The agents' task streams, while this node leads.
    pub dispatch: crate::dispatcher::Hub,
}

/// One command waiting to be proposed, and where its outcome goes.
pub struct Proposal {
    /// The client request the command belongs to; apply() runs it at most
    /// once per id.
    request: Option<RequestId>,
    cmd: Command,
    reply: oneshot::Sender<Result<Response, OpError>>,
}

/// Writes waiting for the proposer; a full queue makes writers wait.
pub const PROPOSAL_QUEUE: usize = 4096;
/// Most commands in one log entry.
const MAX_BATCH: usize = 256;

/// Proposes queued commands, all that are waiting (up to [`MAX_BATCH`]) as
/// one log entry, one entry at a time.
///
/// openraft 0.9 waits for each entry's fsync before it takes the next client
/// write, so without this every concurrent write costs its own fsync; with
/// it, writers that arrive while an entry commits share the next one.
pub async fn run_proposer(
    raft: Raft,
    mut queue: mpsc::Receiver<Proposal>,
    commit_timeout: Duration,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let count = batch.len();
        let with_ids = batch.iter().any(|p| p.request.is_some());
        let (proposed, replies): (Vec<Proposed>, Vec<_>) = batch
            .into_iter()
            .map(|p| {
                let proposed = Proposed {
                    request: p.request,
                    command: p.cmd,
                };
                (proposed, p.reply)
            })
            .unzip();
        // The leader's own proposals keep the older, smaller entry formats.
        let payload = if with_ids {
            LogPayload::V2(proposed)
        } else if count == 1 {
            LogPayload::V1(proposed.into_iter().next().expect("one command").command)
        } else {
            LogPayload::V1Batch(proposed.into_iter().map(|p| p.command).collect())
        };
        let outcome = propose(&raft, payload, commit_timeout).await;
        match outcome {
            Ok(Response::Batch(responses)) if responses.len() == count => {
                for (reply, response) in replies.into_iter().zip(responses) {
                    let _ = reply.send(answer(response));
                }
            }
            Ok(response) if count == 1 => {
                let reply = replies.into_iter().next().expect("one reply");
                let _ = reply.send(answer(response));
            }
            Ok(other) => {
                let e =
                    OpError::internal(format!("a batch of {count} was answered with {other:?}"));
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

fn answer(response: Response) -> Result<Response, OpError> {
    match response {
        Response::Rejected { reason } => Err(OpError::conflict(reason)),
        other => Ok(other),
    }
}

async fn propose(
    raft: &Raft,
    payload: LogPayload,
    commit_timeout: Duration,
) -> Result<Response, OpError> {
    match tokio::time::timeout(commit_timeout, raft.client_write(payload)).await {
        Err(_) => Err(OpError::unavailable(format!(
            "the change was not committed within {commit_timeout:?}: the leader may have lost its quorum (it may still be applied later)"
        ))),
        Ok(Ok(resp)) => Ok(resp.data),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Err(OpError::new(
            OpErrorKind::NotLeader,
            format!("this node is not the leader (leader: {:?})", f.leader_id),
        )),
        Ok(Err(e)) => Err(OpError::unavailable(format!("write failed: {e}"))),
    }
}

impl Node {
    /// The leader as far as this node knows: from Raft on a manager, from the
    /// last heartbeat reply on a worker.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            // A leader cut off from its quorum does not call itself leader
            // (see `lost_quorum`): it answers as a node in an election.
            let lapsed = quorum_lapsed(m.state, m.millis_since_quorum_ack, self.quorum_window());
            if let Some(leader) = m.current_leader.filter(|l| *l != self.id || !lapsed) {
                if let Some(node) = membership.get_node(&leader) {
                    return Some((leader, node.addr.clone()));
                }
            }
            // A member of the Raft group trusts Raft alone: during an
            // election there is no leader, and an older hint would send
            // requests to the leader that just died.
            if membership.get_node(&self.id).is_some() {
                return None;
            }
        }
        self.leader_hint.lock().unwrap().clone()
    }

    /// Whether this node is in the Raft group (a manager).
    pub fn is_raft_member(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .get_node(&self.id)
            .is_some()
    }

    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.current_leader == Some(self.id) && m.state == openraft::ServerState::Leader
    }

    /// How long a leader may go without a quorum of voters acknowledging
    /// it before it stops acting as leader: twice the leader lease (the
    /// maximum election timeout), so a loaded machine's late heartbeat
    /// answers do not count as a lost quorum, while a cut-off leader still
    /// gives up well before the majority's new leader (which needs a lease
    /// and an election timeout) settles.
    pub fn quorum_window(&self) -> Duration {
        self.timing.election_timeout_max * 2
    }

    /// The error to answer with when this node is Raft leader but no quorum
    /// of voters has acknowledged it within [`Node::quorum_window`].
    ///
    /// openraft 0.9 never steps a leader down for want of a quorum: cut off
    /// from the majority, it goes on calling itself leader until it hears
    /// of a higher term, and a write proposed there waits for a commit that
    /// cannot come. Such a node refuses writes and linearizable reads at
    /// once (nothing it refuses is in its log, so nothing can surface
    /// later), and reports no leader.
    pub fn lost_quorum(&self) -> Option<OpError> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if !quorum_lapsed(m.state, m.millis_since_quorum_ack, self.quorum_window()) {
            return None;
        }
        let since = match m.millis_since_quorum_ack {
            Some(ms) => format!("for {ms} ms"),
            None => "yet in this term".to_string(),
        };
        Some(OpError::unavailable(format!(
            "no quorum: this node won term {} but no majority of managers has answered it {since}; \
             it accepts no writes until one does or a leader elsewhere takes over (check `shoal status` on the other managers)",
            m.current_term
        )))
    }

    /// Runs `op` on the leader, here or over QUIC, retrying while the
    /// leader is unknown or moving, up to the request timeout.
    ///
    /// A change gets its request id here, where it enters the cluster, and
    /// every attempt carries the same one: apply() runs a request id once, so
    /// an attempt whose predecessor was committed after all (a leader that
    /// died or stepped down before answering, a commit that timed out and
    /// landed later) changes nothing and is answered with the first outcome.
    pub async fn leader_call(self: &Arc<Self>, op: LeaderOp) -> Result<LeaderReply, OpError> {
        self.leader_call_within(op, self.timing.request_timeout)
            .await
    }

    pub async fn leader_call_within(
        self: &Arc<Self>,
        op: LeaderOp,
        within: Duration,
    ) -> Result<LeaderReply, OpError> {
        let deadline = Instant::now() + within;
        let request = changes_state(&op).then(|| RequestId::new(self.id, rand::random()));
        let mut last_error = OpError::unavailable(
            "no leader is known: the cluster may have lost its quorum (check `shoal status`)",
        );
        loop {
            let outcome = match self.leader() {
                Some((leader, _)) if leader == self.id => {
                    crate::ops::execute(self, op.clone(), request).await
                }
                // Safe to send again even if the lost leader committed it:
                // the request id makes a second run a no-op.
                Some((leader, addr)) => {
                    self.forward(leader, &addr, op.clone(), request, deadline)
                        .await
                }
                None => Err(self.lost_quorum().unwrap_or_else(|| last_error.clone())),
            };
            match outcome {
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    last_error = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// Forwards `op` (a change with its `request` id) to `leader`.
    async fn forward(
        &self,
        leader: NodeId,
        addr: &str,
        op: LeaderOp,
        request: Option<RequestId>,
        deadline: Instant,
    ) -> Result<LeaderReply, OpError> {
        let request = match request {
            Some(request) => PeerRequest::LeaderRequest { request, op },
            None => PeerRequest::Leader(op),
        };
        // A leader that dies leaves its connection silent until the QUIC
        // idle timeout; give up on it as soon as this node sees another
        // leader (or none), and retry there.
        let replaced = || {
            OpError::unavailable(format!(
                "leader {leader} was replaced while the request was in flight"
            ))
        };
        // Nothing is sent before the connection is up.
        let connect = async {
            let sock = resolve(addr).await?;
            self.peers.get(leader, sock).await
        };
        let conn = tokio::select! {
            r = connect => r,
            () = self.leader_moves_from(leader) => return Err(replaced()),
        };
        let conn = conn.map_err(|e| self.unreachable(leader, addr, e))?;
        let left = deadline.saturating_duration_since(Instant::now());
        let outcome = tokio::select! {
            r = transport::call(&conn, &request, left) => r,
            () = self.leader_moves_from(leader) => return Err(replaced()),
            () = until_silent(&conn, SILENT_PEER) => {
                self.peers.forget(leader);
                return Err(OpError::unavailable(format!(
                    "leader {leader} at {addr} sent nothing for {SILENT_PEER:?} with the request in flight (a connection from before it restarted, or a cut path); trying a new connection"
                )));
            }
        };
        match outcome {
            Ok(PeerResponse::Leader(result)) => result,
            Ok(other) => Err(OpError::internal(format!(
                "leader {leader} answered with an unexpected message: {}",
                variant_name(&other)
            ))),
            Err(e) => {
                if e.is_retryable() {
                    self.peers.forget(leader);
                }
                Err(self.unreachable(leader, addr, e))
            }
        }
    }

    /// The error for a leader that cannot be reached (or stopped answering).
    fn unreachable(&self, leader: NodeId, addr: &str, e: transport::NetError) -> OpError {
        if !e.is_retryable() {
            return OpError::internal(format!("cannot reach leader {leader} at {addr}: {e}"));
        }
        // The leader we knew may be gone: forget a stale hint so the
        // heartbeat loop finds the new one.
        self.leader_hint.lock().unwrap().take();
        OpError::unavailable(format!("cannot reach leader {leader} at {addr}: {e}"))
    }

    /// Completes when this node's view of the leader is no longer `leader`.
    async fn leader_moves_from(&self, leader: NodeId) {
        loop {
            if self.leader().map(|l| l.0) != Some(leader) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One request/response with a peer over the cached mTLS connection.
    pub async fn call_peer(
        &self,
        peer: NodeId,
        addr: &str,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, transport::NetError> {
        let sock = resolve(addr).await?;
        let conn = self.peers.get(peer, sock).await?;
        let result = transport::call(&conn, req, timeout).await;
        if let Err(e) = &result {
            // A request that timed out on a connection the peer still sends
            // on met a slow link, not a dead peer: keep the connection. A new
            // one costs a handshake, which over a link slower than openraft's
            // bound for an append (one Raft heartbeat) never completes before
            // the next append gives up, so forgetting it cut such a follower
            // off for good.
            let slow_not_dead =
                matches!(e, transport::NetError::Timeout { .. }) && heard_lately(&conn);
            if e.is_retryable() && !slow_not_dead {
                self.peers.forget(peer);
            }
        }
        result
    }

    /// Commits one command through Raft (via the proposer, which batches
    /// concurrent writes into one log entry). Must run on the leader.
    pub async fn write(&self, cmd: Command) -> Result<Response, OpError> {
        self.write_request(None, cmd).await
    }

    /// [`Node::write`] for a client change: apply() runs `request` once, and
    /// answers a repeat with the first run's outcome.
    pub async fn write_request(
        &self,
        request: Option<RequestId>,
        cmd: Command,
    ) -> Result<Response, OpError> {
        if let Some(e) = self.lost_quorum() {
            return Err(e);
        }
        let (reply, answer) = oneshot::channel();
        self.proposer
            .send(Proposal {
                request,
                cmd,
                reply,
            })
            .await
            .map_err(|_| OpError::unavailable("this node is shutting down"))?;
        answer
            .await
            .map_err(|_| OpError::unavailable("this node is shutting down"))?
    }

    /// Confirms leadership with a quorum, so a read of local state that
    /// follows is linearizable.
    pub async fn linearizable(&self) -> Result<(), OpError> {
        if let Some(e) = self.lost_quorum() {
            return Err(e);
        }
        let fut = self.raft.ensure_linearizable();
        match tokio::time::timeout(self.timing.commit_timeout, fut).await {
            Err(_) => Err(OpError::unavailable(
                "the leader could not confirm its quorum in time",
            )),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(_))) => Err(OpError::new(
                OpErrorKind::NotLeader,
                "this node is not the leader",
            )),
            Ok(Err(e)) => Err(OpError::unavailable(format!("read failed: {e}"))),
        }
    }

    /// Current voter ids, from this node's view of the membership.
    pub fn voters(&self) -> std::collections::BTreeSet<NodeId> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().voter_ids().collect()
    }

    /// Remembers the managers' addresses (for finding the leader after a
    /// restart), writing node.json only when they changed.
    pub fn remember_managers(&self, managers: Vec<(NodeId, String)>) {
        if managers.is_empty() {
            return;
        }
        let mut known = self.known_managers.lock().unwrap();
        if *known == managers {
            return;
        }
        *known = managers.clone();
        drop(known);
        match self.data_dir.load_meta() {
            Ok(mut meta) => {
                meta.managers = managers;
                if let Err(e) = self.data_dir.save_meta(&meta) {
                    tracing::warn!(error = %e, "cannot persist the manager list");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read node.json"),
        }
    }
}

impl Node {
    pub fn set_engine_error(&self, error: Option<String>) {
        *self.engine_error.lock().unwrap() = error;
    }

    /// On the leader: records a node's engine state when it differs from the
    /// replicated one (in the background, so a heartbeat is answered at once).
    pub fn note_engine(self: &Arc<Self>, id: NodeId, error: Option<String>) {
        let differs = self
            .state
            .read(|s| s.nodes.get(&id).is_some_and(|n| n.engine_error != error));
        if !differs {
            return;
        }
        let node = self.clone();
        tokio::spawn(async move {
            if let Some(e) = &error {
                tracing::warn!(node = id, error = %e, "container engine unavailable on a node: it gets no new tasks");
            }
            let cmd = Command::SetNodeEngine {
                id,
                error,
                now_ms: now_ms(),
            };
            if let Err(e) = node.write(cmd).await {
                tracing::debug!(error = %e, "cannot record a node's engine state");
            }
        });
    }
}

/// How long a connection may receive nothing before a timed-out request
/// on it counts as a sign that the peer is gone.
const QUIET_LIMIT: Duration = Duration::from_secs(1);

/// How long a forwarded request waits with nothing at all arriving on its
/// connection before the connection is given up. A live leader
/// acknowledges the request's packets within a round trip and, however
/// long the request takes, answers the probes sent every [`PROBE_QUIET`]
/// of quiet, so this much silence means the process at the other end is
/// gone — typically a connection cached from before the leader restarted,
/// which QUIC would only notice at the 10 s idle timeout — or the path is
/// cut. The request is then sent again on a new connection, under the same
/// request id.
const SILENT_PEER: Duration = Duration::from_millis(2_500);

/// Quiet on a connection with a request in flight after which
/// [`until_silent`] asks the peer whether it is there (`transport::probe`).
const PROBE_QUIET: Duration = Duration::from_millis(500);

/// Completes once `conn` has received nothing for `limit` (from now),
/// probing the peer every [`PROBE_QUIET`] of quiet so that a live one
/// always answers within that.
pub async fn until_silent(conn: &shoal_net::Connection, limit: Duration) {
    let mut received = conn.stats().udp_rx.datagrams;
    let mut since = Instant::now();
    let mut probed = since;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = conn.stats().udp_rx.datagrams;
        if now != received {
            received = now;
            since = Instant::now();
        } else if since.elapsed() >= limit {
            return;
        }
        if since.elapsed() >= PROBE_QUIET && probed.elapsed() >= PROBE_QUIET {
            transport::probe(conn);
            probed = Instant::now();
        }
    }
}

/// Whether `conn` received anything within [`QUIET_LIMIT`], judged from its
/// datagram count at earlier calls (the first call counts as hearing).
fn heard_lately(conn: &shoal_net::Connection) -> bool {
    // Per connection: (datagrams received, when that count last grew).
    static SEEN: Mutex<BTreeMap<usize, (u64, Instant)>> = Mutex::new(BTreeMap::new());
    let received = conn.stats().udp_rx.datagrams;
    let now = Instant::now();
    let mut seen = SEEN.lock().unwrap();
    // Bounded: connections not looked at for a minute are dropped.
    if seen.len() > 1024 {
        seen.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(60));
    }
    let entry = seen.entry(conn.stable_id()).or_insert((received, now));
    if entry.0 != received {
        *entry = (received, now);
    }
    now.duration_since(entry.1) < QUIET_LIMIT
}

/// Whether a node in Raft state `state` whose last quorum acknowledgement
/// was `millis_since_quorum_ack` ago (`None`: none in this term) has lost
/// its quorum, given the `window` it may go without one.
pub fn quorum_lapsed(
    state: openraft::ServerState,
    millis_since_quorum_ack: Option<u64>,
    window: Duration,
) -> bool {
    state == openraft::ServerState::Leader
        && millis_since_quorum_ack.is_none_or(|ms| ms > window.as_millis() as u64)
}

/// Milliseconds since the Unix epoch: the leader stamps this into commands.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Resolves an advertised `host:port` (an IP literal or a DNS name).
pub async fn resolve(addr: &str) -> Result<SocketAddr, transport::NetError> {
    if let Ok(sock) = addr.parse::<SocketAddr>() {
        return Ok(sock);
    }
    let mut found =
        tokio::net::lookup_host(addr)
            .await
            .map_err(|e| transport::NetError::Unreachable {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
    found
        .next()
        .ok_or_else(|| transport::NetError::Unreachable {
            addr: addr.to_string(),
            reason: "the name resolves to no address".to_string(),
        })
}

/// Whether `op` changes the replicated state, and so gets a request id
/// that apply() deduplicates. The others are repeatable as they are: reads,
/// the empty entry, and the commit benchmark (empty entries only; a second
/// run after a lost answer measures again and changes nothing).
fn changes_state(op: &LeaderOp) -> bool {
    match op {
        LeaderOp::UpdateNode(..)
        | LeaderOp::Promote(_)
        | LeaderOp::Demote(_)
        | LeaderOp::RemoveNode { .. }
        | LeaderOp::RotateToken(_)
        | LeaderOp::Join(_)
        | LeaderOp::Deploy(_)
        | LeaderOp::Scale { .. }
        | LeaderOp::RemoveService(_)
        | LeaderOp::UpdateService { .. }
        | LeaderOp::RollbackService(_)
        | LeaderOp::DeployStack { .. }
        | LeaderOp::RemoveStack(_) => true,
        LeaderOp::Nodes
        | LeaderOp::Node(_)
        | LeaderOp::Status
        | LeaderOp::Token(_)
        | LeaderOp::Noop
        | LeaderOp::BenchCommit { .. }
        | LeaderOp::Services
        | LeaderOp::Service(_)
        | LeaderOp::Tasks(_)
        | LeaderOp::PlanService(_)
        | LeaderOp::Stacks
        | LeaderOp::StackServices(_)
        | LeaderOp::StackTasks(_) => false,
    }
}

fn variant_name(resp: &PeerResponse) -> &'static str {
    match resp {
        PeerResponse::AppendEntries(_) => "AppendEntries",
        PeerResponse::Vote(_) => "Vote",
        PeerResponse::InstallSnapshot(_) => "InstallSnapshot",
        PeerResponse::Heartbeat(_) => "Heartbeat",
        PeerResponse::Leader(_) => "Leader",
        PeerResponse::ReportTasks(_) => "ReportTasks",
    }
}

/// Known managers from a state snapshot: (id, advertised address).
pub fn managers_of(state: &shoal_raft::ClusterState) -> Vec<(NodeId, String)> {
    state
        .nodes
        .values()
        .filter(|n| n.role == shoal_raft::Role::Manager)
        .map(|n| (n.id, n.addr.clone()))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::ServerState;

    fn check(state: ServerState, since_ack: Option<u64>, expected: bool) {
        let window = Duration::from_millis(600);
        assert_eq!(
            quorum_lapsed(state, since_ack, window),
            expected,
            "{state:?} with the last quorum ack {since_ack:?} ms ago"
        );
    }

    #[test]
    fn a_leader_without_a_recent_quorum_ack_has_lapsed() {
        check(ServerState::Leader, Some(0), false);
        check(ServerState::Leader, Some(600), false);
        check(ServerState::Leader, Some(601), true);
        check(ServerState::Leader, None, true);
        // Only a leader can lapse: the others never had a quorum to lose.
        check(ServerState::Follower, None, false);
        check(ServerState::Candidate, Some(5_000), false);
        check(ServerState::Learner, None, false);
    }
}
