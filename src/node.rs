//! A running node: its Raft instance, its QUIC endpoint and peer links, and
//! the two ways work reaches the leader (run here, or forward over QUIC).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use shoal_net::pool::Peers;
use shoal_net::transport::{self, Endpoint};
use shoal_raft::{Command, LogPayload, NodeId, Raft, Response, StateHandle};

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
}

impl Node {
    /// The leader as far as this node knows: from Raft on a manager, from the
    /// last heartbeat reply on a worker.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            if let Some(leader) = m.current_leader {
                if let Some(node) = m.membership_config.membership().get_node(&leader) {
                    return Some((leader, node.addr.clone()));
                }
            }
        }
        self.leader_hint.lock().unwrap().clone()
    }

    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.current_leader == Some(self.id) && m.state == openraft::ServerState::Leader
    }

    /// Runs `op` on the leader, here or over QUIC, retrying while the
    /// leader is unknown or moving, up to the request timeout.
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
        let mut last_error = OpError::unavailable(
            "no leader is known: the cluster may have lost its quorum (check `shoal status`)",
        );
        loop {
            let outcome = match self.leader() {
                Some((leader, _)) if leader == self.id => {
                    crate::ops::execute(self, op.clone()).await
                }
                Some((leader, addr)) => self.forward(leader, &addr, op.clone(), deadline).await,
                None => Err(last_error.clone()),
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

    async fn forward(
        &self,
        leader: NodeId,
        addr: &str,
        op: LeaderOp,
        deadline: Instant,
    ) -> Result<LeaderReply, OpError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let request = PeerRequest::Leader(op);
        let call = self.call_peer(leader, addr, &request, left);
        // A leader that dies leaves its connection silent until the QUIC
        // idle timeout; give up on it as soon as this node sees another
        // leader (or none), and retry there.
        let outcome = tokio::select! {
            r = call => r,
            () = self.leader_moves_from(leader) => {
                return Err(OpError::unavailable(format!(
                    "leader {leader} was replaced while the request was in flight"
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
                if !e.is_retryable() {
                    return Err(OpError::internal(format!(
                        "cannot reach leader {leader} at {addr}: {e}"
                    )));
                }
                // The leader we knew may be gone: forget a stale hint so the
                // heartbeat loop finds the new one.
                self.leader_hint.lock().unwrap().take();
                Err(OpError::unavailable(format!(
                    "cannot reach leader {leader} at {addr}: {e}"
                )))
            }
        }
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
            if e.is_retryable() {
                self.peers.forget(peer);
            }
        }
        result
    }

    /// Commits one command through Raft. Must run on the leader.
    pub async fn write(&self, cmd: Command) -> Result<Response, OpError> {
        let fut = self.raft.client_write(LogPayload::V1(cmd));
        match tokio::time::timeout(self.timing.commit_timeout, fut).await {
            Err(_) => Err(OpError::unavailable(format!(
                "the change was not committed within {:?}: the leader may have lost its quorum (it may still be applied later)",
                self.timing.commit_timeout
            ))),
            Ok(Ok(resp)) => match resp.data {
                Response::Rejected { reason } => Err(OpError::conflict(reason)),
                other => Ok(other),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(OpError::new(
                    OpErrorKind::NotLeader,
                    format!("this node is not the leader (leader: {:?})", f.leader_id),
                ))
            }
            Ok(Err(e)) => Err(OpError::unavailable(format!("write failed: {e}"))),
        }
    }

    /// Confirms leadership with a quorum, so a read of local state that
    /// follows is linearizable.
    pub async fn linearizable(&self) -> Result<(), OpError> {
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
