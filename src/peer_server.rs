//! Serves the QUIC endpoint: Raft RPCs, heartbeats and forwarded operations
//! from authenticated members, and the join handshake from joiners.
//!
//! Revoked node ids (removed by `shoal node rm`) are refused here as well as
//! in the transport: the transport closes their new connections after the
//! handshake; this module keeps the endpoint's revoked set in step with the
//! replicated state ([`follow_revocations`]), closes a connection that was
//! open when its node was removed, and checks every stream before serving
//! it, so a request that arrived just before the removal is refused too.

use std::sync::Arc;

use openraft::error::RaftError;
use shoal_net::transport::{self, Accepted, RefusalLog};
use shoal_raft::{NodeId, RequestId};

use crate::node::Node;
use crate::wire::{
    JoinRequest, LeaderOp, OpError, OpErrorKind, PeerRequest, PeerResponse, RemoteError,
};

/// Concurrent streams served per connection; more wait in QUIC flow control.
const MAX_STREAMS_IN_FLIGHT: usize = transport::MAX_BIDI_STREAMS as usize;

/// A connection starts with [`transport::INITIAL_BIDI_STREAMS`] streams
/// granted; once this many are in flight at once it is granted all
/// [`transport::MAX_BIDI_STREAMS`] (before the peer runs out of credit).
const GRANT_ALL_AT: usize = transport::INITIAL_BIDI_STREAMS as usize * 3 / 4;

pub async fn run(node: Arc<Node>) {
    tokio::spawn(follow_revocations(node.clone()));
    while let Some(accepted) = node.endpoint.accept().await {
        // Each connection's task holds only its own kind of future: a
        // leader keeps one per node for as long as the node is up.
        match accepted {
            Accepted::Node { node_id, conn } => {
                tokio::spawn(serve_member(node.clone(), node_id, conn))
            }
            Accepted::Joiner { conn } => tokio::spawn(serve_joiner(node.clone(), conn)),
        };
    }
}

/// On a manager: gives the endpoint every node id the replicated state
/// revokes, as entries are applied. (Workers hold no state: they learn the
/// revoked ids from heartbeat replies.)
async fn follow_revocations(node: Arc<Node>) {
    let mut applied = node.state.subscribe();
    loop {
        let count = node.state.read(|s| s.revoked.len());
        if count != node.endpoint.revoked_count() {
            let ids = node.state.read(|s| s.revoked.clone());
            let added = node.endpoint.revoke(ids);
            if !added.is_empty() {
                tracing::info!(nodes = ?added, "refusing connections from removed nodes");
            }
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}

async fn serve_member(node: Arc<Node>, peer: NodeId, conn: shoal_net::Connection) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS_IN_FLIGHT));
    let mut granted_all = false;
    let mut revocations = node.endpoint.revocations();
    loop {
        let accepted = tokio::select! {
            accepted = conn.accept_bi() => accepted,
            changed = revocations.changed() => {
                if changed.is_err() {
                    // The endpoint is gone: the node is shutting down.
                    return;
                }
                if node.endpoint.is_revoked(peer) {
                    // Closing ends the streams in flight too: their answers
                    // are never sent.
                    node.endpoint.refuse_revoked(&conn, peer);
                    return;
                }
                continue;
            }
        };
        let (send, mut recv) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer, error = %e, "peer connection closed");
                return;
            }
        };
        if node.endpoint.is_revoked(peer) {
            node.endpoint.refuse_revoked(&conn, peer);
            return;
        }
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        if !granted_all && MAX_STREAMS_IN_FLIGHT - limit.available_permits() >= GRANT_ALL_AT {
            transport::grant_all_streams(&conn);
            granted_all = true;
        }
        let node = node.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let req: PeerRequest = match transport::read_request(&mut recv).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(peer, error = %e, "bad request from peer");
                    return;
                }
            };
            // Revoked while the request was on its way: not served.
            if node.endpoint.is_revoked(peer) {
                node.endpoint.refuse_revoked(&conn, peer);
                return;
            }
            // Each kind of stream is served by its own boxed future, so a
            // long-lived stream (a leader holds two per node) holds only
            // what it needs, not the largest of all the handlers.
            match req {
                PeerRequest::WatchEndpoints {
                    node_id,
                    have,
                    interest,
                    fresh,
                } => {
                    if node_id == peer && node.is_leader() {
                        let asked = (have, interest, fresh);
                        Box::pin(crate::mesh::feed::serve(node, peer, asked, send)).await;
                    }
                }
                PeerRequest::MeshConnect(request) => {
                    // Client connections are capped by the mesh, not by the
                    // request limit: a long connection must not hold Raft
                    // back. A link carrying them may need every stream.
                    drop(_permit);
                    transport::grant_all_streams(&conn);
                    Box::pin(crate::mesh::ingress::serve_remote(
                        node, peer, request, send, recv,
                    ))
                    .await;
                }
                PeerRequest::WatchTasks { node_id } => {
                    // The leader pushes this node's tasks.
                    if node_id == peer && node.is_leader() {
                        Box::pin(crate::dispatcher::serve_watch(node, peer, send)).await;
                    }
                }
                req => {
                    let resp = Box::pin(handle(&node, peer, req)).await;
                    if let Err(e) = transport::write_response(send, &resp).await {
                        tracing::debug!(peer, error = %e, "cannot answer peer");
                    }
                }
            }
        });
    }
}

fn fatal<E: std::fmt::Display>(e: E) -> RemoteError {
    RemoteError::Fatal(e.to_string())
}

async fn handle(node: &Arc<Node>, peer: NodeId, req: PeerRequest) -> PeerResponse {
    match req {
        PeerRequest::AppendEntries(rpc) => {
            if rpc.vote.leader_id().voted_for() != Some(peer) {
                return PeerResponse::AppendEntries(Err(wrong_sender(peer)));
            }
            PeerResponse::AppendEntries(node.raft.append_entries(rpc).await.map_err(fatal))
        }
        PeerRequest::Vote(rpc) => {
            if rpc.vote.leader_id().voted_for() != Some(peer) {
                return PeerResponse::Vote(Err(wrong_sender(peer)));
            }
            PeerResponse::Vote(node.raft.vote(rpc).await.map_err(fatal))
        }
        PeerRequest::InstallSnapshot(rpc) => {
            if rpc.vote.leader_id().voted_for() != Some(peer) {
                return PeerResponse::InstallSnapshot(Err(wrong_sender(peer)));
            }
            let result = node.raft.install_snapshot(rpc).await;
            PeerResponse::InstallSnapshot(result.map_err(|e| match e {
                RaftError::APIError(api) => RemoteError::install_snapshot(api),
                RaftError::Fatal(f) => fatal(f),
            }))
        }
        PeerRequest::Heartbeat(beat) => {
            PeerResponse::Heartbeat(crate::heartbeat::handle(node, peer, beat))
        }
        PeerRequest::Leader(op) => leader_op(node, op, None).await,
        PeerRequest::LeaderRequest { request, op } => leader_op(node, op, Some(request)).await,
        PeerRequest::ReportTasks(report) => {
            PeerResponse::ReportTasks(crate::ops::report_tasks(node, peer, report).await)
        }
        PeerRequest::WatchTasks { .. }
        | PeerRequest::WatchEndpoints { .. }
        | PeerRequest::MeshConnect(_) => PeerResponse::ReportTasks(Err(OpError::internal(
            "a task stream is served on its own stream",
        ))),
    }
}

/// Runs a forwarded operation, if this node leads: forwarding is one hop,
/// never a chain.
async fn leader_op(node: &Arc<Node>, op: LeaderOp, request: Option<RequestId>) -> PeerResponse {
    if !node.is_leader() {
        return PeerResponse::Leader(Err(OpError::new(
            OpErrorKind::NotLeader,
            format!("node {} is not the leader", node.id),
        )));
    }
    PeerResponse::Leader(crate::ops::execute(node, op, request).await)
}

fn wrong_sender(peer: NodeId) -> RemoteError {
    RemoteError::WrongSender(format!(
        "the RPC claims another sender than node {peer}, which its certificate names"
    ))
}

/// A joiner has proved nothing yet but knowing the CA fingerprint: it gets
/// exactly one request, and nothing happens before its secret is checked by
/// the leader.
async fn serve_joiner(node: Arc<Node>, conn: shoal_net::Connection) {
    let timeout = node.timing.request_timeout;
    let remote = conn.remote_address();
    let served = tokio::time::timeout(timeout, async {
        let (send, mut recv) = conn.accept_bi().await.ok()?;
        let req: JoinRequest =
            match transport::read_request_with_limit(&mut recv, transport::MAX_JOIN_FRAME_BYTES)
                .await
            {
                Ok(req) => req,
                Err(e) => {
                    refused_join(remote, None, &format!("unreadable join request: {e}"));
                    return None;
                }
            };
        let name = req.name.clone();
        let result = node.leader_call(LeaderOp::Join(req)).await;
        let resp = match result {
            Ok(crate::wire::LeaderReply::Joined(accepted)) => Ok(accepted),
            Ok(_) => Err(OpError::internal("unexpected reply to a join")),
            Err(e) => Err(e),
        };
        if let Err(e) = &resp {
            refused_join(remote, Some(&name), &e.message);
        }
        transport::write_response(send, &resp).await.ok()
    })
    .await;
    if served.ok().flatten().is_none() {
        tracing::debug!(%remote, "join handshake did not complete");
    }
    // Let the reply drain before closing.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn.closed()).await;
}

/// Refused joins logged per remote address per interval; more are counted
/// into the next line.
const JOIN_REFUSALS_LOGGED: u32 = 5;

/// Logs a refused join on the node that served it, rate-limited per remote
/// address. `reason` is the leader's answer (a wrong secret, a rotated
/// token, a name or node key that already joined); the request's secret is
/// never logged.
fn refused_join(remote: std::net::SocketAddr, name: Option<&str>, reason: &str) {
    static LOG: std::sync::Mutex<Option<RefusalLog<std::net::IpAddr>>> =
        std::sync::Mutex::new(None);
    let logged = LOG
        .lock()
        .unwrap()
        .get_or_insert_with(|| RefusalLog::new(JOIN_REFUSALS_LOGGED))
        .allow(remote.ip(), std::time::Instant::now());
    if let Some(suppressed) = logged {
        tracing::warn!(
            %remote,
            name = name.unwrap_or("-"),
            suppressed,
            "refused a join from {remote}: {reason}"
        );
    }
}
