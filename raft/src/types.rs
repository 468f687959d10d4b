//! The openraft type configuration for shoal and aliases of the openraft types
//! the rest of the daemon names.

use std::fmt;
// `declare_raft_types!` names the snapshot type as `Cursor` unqualified.
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::state::{LogPayload, Response};

/// A Raft member's id. Ids are assigned by the replicated state and never reused.
pub type NodeId = u64;

/// What openraft keeps about a member in the membership config: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftNode {
    /// Advertised `host:port` of the node's QUIC endpoint.
    pub addr: String,
}

impl fmt::Display for RaftNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

openraft::declare_raft_types!(
    /// The openraft type configuration of a shoal manager group.
    pub TypeConfig:
        D = LogPayload,
        R = Response,
        NodeId = NodeId,
        Node = RaftNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type EntryPayload = openraft::EntryPayload<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Membership = openraft::Membership<NodeId, RaftNode>;
pub type StoredMembership = openraft::StoredMembership<NodeId, RaftNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, RaftNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, RaftNode>;
/// openraft's storage error, as returned by the storage traits.
pub type RaftStorageError = openraft::StorageError<NodeId>;

pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<NodeId>;
pub type VoteRequest = openraft::raft::VoteRequest<NodeId>;
pub type VoteResponse = openraft::raft::VoteResponse<NodeId>;
pub type InstallSnapshotRequest = openraft::raft::InstallSnapshotRequest<TypeConfig>;
pub type InstallSnapshotResponse = openraft::raft::InstallSnapshotResponse<NodeId>;
pub type SnapshotResponse = openraft::raft::SnapshotResponse<NodeId>;
pub type ClientWriteResponse = openraft::raft::ClientWriteResponse<TypeConfig>;
