//! Serves the QUIC endpoint: Raft RPCs, heartbeats and forwarded operations
//! from authenticated members, and the join handshake from joiners.

use std::sync::Arc;

use openraft::error::RaftError;
use shoal_net::transport::{self, Accepted};
use shoal_raft::NodeId;

use crate::node::Node;
use crate::wire::{
    JoinRequest, LeaderOp, OpError, OpErrorKind, PeerRequest, PeerResponse, RemoteError,
};

/// Concurrent streams served per connection; more wait in QUIC flow control.
const MAX_STREAMS_IN_FLIGHT: usize = 256;

pub async fn run(node: Arc<Node>) {
    while let Some(accepted) = node.endpoint.accept().await {
        let node = node.clone();
        tokio::spawn(async move {
            match accepted {
                Accepted::Node { node_id, conn } => serve_member(node, node_id, conn).await,
                Accepted::Joiner { conn } => serve_joiner(node, conn).await,
            }
        });
    }
}

async fn serve_member(node: Arc<Node>, peer: NodeId, conn: shoal_net::Connection) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS_IN_FLIGHT));
    loop {
        let (send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer, error = %e, "peer connection closed");
                return;
            }
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let req: PeerRequest = match transport::read_request(&mut recv).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(peer, error = %e, "bad request from peer");
                    return;
                }
            };
            if let PeerRequest::WatchEndpoints { node_id } = req {
                if node_id == peer && node.is_leader() {
                    crate::mesh::feed::serve(node, peer, send).await;
                }
                return;
            }
            if let PeerRequest::MeshConnect(request) = req {
                // Client connections are capped by the mesh, not by the
                // request limit: a long connection must not hold Raft back.
                drop(_permit);
                crate::mesh::ingress::serve_remote(node, peer, request, send, recv).await;
                return;
            }
            if let PeerRequest::WatchTasks { node_id } = req {
                // A long-lived stream: the leader pushes this node's tasks.
                if node_id == peer && node.is_leader() {
                    crate::dispatcher::serve_watch(node, peer, send).await;
                }
                return;
            }
            let resp = handle(&node, peer, req).await;
            if let Err(e) = transport::write_response(send, &resp).await {
                tracing::debug!(peer, error = %e, "cannot answer peer");
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
        PeerRequest::Leader(op) => {
            // Only the leader executes; forwarding is one hop, never a chain.
            if !node.is_leader() {
                return PeerResponse::Leader(Err(OpError::new(
                    OpErrorKind::NotLeader,
                    format!("node {} is not the leader", node.id),
                )));
            }
            PeerResponse::Leader(crate::ops::execute(node, op).await)
        }
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
    let served = tokio::time::timeout(timeout, async {
        let (send, mut recv) = conn.accept_bi().await.ok()?;
        let req: JoinRequest =
            transport::read_request_with_limit(&mut recv, transport::MAX_JOIN_FRAME_BYTES)
                .await
                .ok()?;
        let result = node.leader_call(LeaderOp::Join(req)).await;
        let resp = match result {
            Ok(crate::wire::LeaderReply::Joined(accepted)) => Ok(accepted),
            Ok(_) => Err(OpError::internal("unexpected reply to a join")),
            Err(e) => Err(e),
        };
        transport::write_response(send, &resp).await.ok()
    })
    .await;
    if served.ok().flatten().is_none() {
        tracing::debug!("join handshake did not complete");
    }
    // Let the reply drain before closing.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn.closed()).await;
}
