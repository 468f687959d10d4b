//! openraft's network over shoal's QUIC links: each RPC is one request and
//! one response on a fresh stream of the cached mutual-TLS connection to the
//! target, bounded by the deadline openraft gives.

use std::sync::Weak;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError as RaftRemoteError,
    Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, RPCTypes};
use shoal_net::transport::NetError;
use shoal_raft::{NodeId, RaftNode, TypeConfig};

use crate::node::Node;
use crate::wire::{PeerRequest, PeerResponse, RemoteError};

/// Handed to openraft; holds the node weakly because the node owns the Raft
/// instance that owns this factory.
#[derive(Clone)]
pub struct Network {
    pub node: std::sync::Arc<std::sync::OnceLock<Weak<Node>>>,
}

pub struct PeerClient {
    node: std::sync::Arc<std::sync::OnceLock<Weak<Node>>>,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &RaftNode) -> PeerClient {
        PeerClient {
            node: self.node.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

type RpcErr<E> = RPCError<NodeId, RaftNode, RaftError<NodeId, E>>;

impl PeerClient {
    async fn send<E: std::error::Error>(
        &self,
        req: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, RpcErr<E>> {
        let Some(node) = self.node.get().and_then(|w| w.upgrade()) else {
            return Err(RPCError::Unreachable(Unreachable::new(&AnyError::error(
                "this node is shutting down",
            ))));
        };
        let action = match &req {
            PeerRequest::Vote(_) => RPCTypes::Vote,
            PeerRequest::InstallSnapshot(_) => RPCTypes::InstallSnapshot,
            _ => RPCTypes::AppendEntries,
        };
        node.call_peer(self.target, &self.addr, &req, timeout)
            .await
            .map_err(|e| {
                // A timeout is openraft's Timeout, not Unreachable: after an
                // Unreachable openraft backs off until a call succeeds, and
                // over a link slower than its append bound none ever does,
                // so the follower would hear the leader too rarely and start
                // elections.
                if let NetError::Timeout { after, .. } = e {
                    RPCError::Timeout(Timeout {
                        action,
                        id: node.id,
                        target: self.target,
                        timeout: after,
                    })
                } else if e.is_retryable() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })
    }

    fn remote<E: std::error::Error>(&self, err: RemoteError) -> RpcErr<E> {
        let text = match err {
            RemoteError::Fatal(s) | RemoteError::WrongSender(s) => s,
            RemoteError::SnapshotMismatch(m) => m.to_string(),
        };
        RPCError::Network(NetworkError::new(&AnyError::error(format!(
            "node {} refused the RPC: {text}",
            self.target
        ))))
    }

    fn unexpected<E: std::error::Error>(&self) -> RpcErr<E> {
        RPCError::Network(NetworkError::new(&AnyError::error(format!(
            "node {} answered with the wrong message type",
            self.target
        ))))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        match self
            .send(PeerRequest::AppendEntries(rpc), option.hard_ttl())
            .await?
        {
            PeerResponse::AppendEntries(Ok(r)) => Ok(r),
            PeerResponse::AppendEntries(Err(e)) => Err(self.remote(e)),
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        match self
            .send(PeerRequest::InstallSnapshot(rpc), option.hard_ttl())
            .await?
        {
            PeerResponse::InstallSnapshot(Ok(r)) => Ok(r),
            PeerResponse::InstallSnapshot(Err(RemoteError::SnapshotMismatch(m))) => {
                Err(RPCError::RemoteError(RaftRemoteError::new(
                    self.target,
                    RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m)),
                )))
            }
            PeerResponse::InstallSnapshot(Err(e)) => Err(self.remote(e)),
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        match self.send(PeerRequest::Vote(rpc), option.hard_ttl()).await? {
            PeerResponse::Vote(Ok(r)) => Ok(r),
            PeerResponse::Vote(Err(e)) => Err(self.remote(e)),
            _ => Err(self.unexpected()),
        }
    }

    /// After an unreachable peer, retry soon: a restarted node should be
    /// caught up quickly, and dialing a dead one is cheap (the pool backs off).
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
