//! The node-to-node protocol spoken on `shoal/1` connections and on the join
//! handshake (`shoal-join/1`).
//!
//! These are wire types: they are versioned by the ALPN protocol name, so a
//! change that is not backwards compatible needs a new protocol name in
//! `shoal_net`. Every request travels on its own QUIC bidirectional stream as
//! one frame, and gets exactly one frame back.

use serde::{Deserialize, Serialize};
use shoal_cli::api::{
    BenchReport, DeployView, NodeUpdate, NodeView, PlanView, RemovedServiceView, RemovedStackView,
    RemovedView, ServiceInspectView, ServiceSpecDoc, ServiceUpdateRequest, ServiceView,
    StackDeployRequest, StackView, StatusView, TaskView, TokenView,
};
use shoal_raft::{NodeId, RequestId, Resources, Role, Task, TaskId, TaskStatusUpdate, TypeConfig};

use openraft::error::InstallSnapshotError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

// Wire messages live for one call and are moved straight into the codec;
// boxing their large variants would buy nothing.

/// A request from one cluster member to another over mutual TLS.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// "I am alive": sent by every node to the leader.
    Heartbeat(Heartbeat),
    /// An operation that only the leader may execute, forwarded by the node
    /// that received it from a client.
    Leader(LeaderOp),
    /// Opens the stream of this node's tasks: the leader answers with one
    /// [`TaskFeed::Full`] frame, then [`TaskFeed::Changes`] frames, on the
    /// same stream, for as long as it leads.
    WatchTasks {
        node_id: NodeId,
    },
    /// An agent's batch of task state changes.
    ReportTasks(TaskReport),
    /// Opens the stream of the endpoint table (every node, every service's
    /// published ports, tasks taking connections and their nodes): one
    /// [`EndpointFeed::Full`], then [`EndpointFeed::Changes`], for as long
    /// as the leader leads.
    WatchEndpoints {
        node_id: NodeId,
        /// The table the node holds, if any: a leader that knows it sends
        /// the changes since, not the whole table.
        have: Option<crate::mesh::table::FeedVersion>,
        /// The sections (task nodes of services without ports) to carry.
        interest: crate::mesh::table::Interest,
        /// Sections in `interest` the node does not hold in `have`: sent
        /// whole.
        fresh: Vec<String>,
    },
    /// Carries one client connection of the routing mesh to a task that
    /// runs on the receiving node: answered with one [`MeshReply`] frame,
    /// then the stream carries the connection's bytes both ways.
    MeshConnect(MeshConnect),
    /// A change forwarded with the request id the receiving node gave it;
    /// every attempt at the change carries the same id, which the leader
    /// writes into the log beside the command so apply() runs it once.
    /// (Added after [`PeerRequest::Leader`], which reads still use, so
    /// earlier variants keep their tags.)
    LeaderRequest {
        request: RequestId,
        op: LeaderOp,
    },
}

/// Frames of the endpoint stream from the leader to every node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum EndpointFeed {
    /// Starts the receiver's table over: an empty table, then these changes.
    Full(crate::mesh::table::TableChanges),
    Changes(crate::mesh::table::TableChanges),
    /// The frames before bring the receiver's table to the one named (a
    /// large change takes several frames): the table is whole, use it.
    Complete(crate::mesh::table::FeedVersion),
    /// Nothing changed; keeps the stream's liveness visible.
    Idle,
}

/// A mesh connection for `task` (on the receiving node) from `client`, who
/// reached the published port at `local`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeshConnect {
    pub service: String,
    pub task_id: TaskId,
    pub published: u16,
    pub protocol: shoal_raft::Protocol,
    pub client: std::net::SocketAddr,
    pub local: std::net::SocketAddr,
}

/// Whether the receiving node reached the task's container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MeshReply {
    Connected,
    /// The task is not on this node or its container refused; try another.
    Refused(String),
}

/// Frames of the task stream from the leader to an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TaskFeed {
    /// Every task this node should know about (sent first).
    Full { tasks: Vec<Task> },
    /// Tasks added or changed, and tasks this node no longer has.
    Changes {
        upserts: Vec<Task>,
        removed: Vec<TaskId>,
    },
    /// Nothing changed; keeps the stream's liveness visible.
    Idle,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskReport {
    pub node_id: NodeId,
    pub updates: Vec<TaskStatusUpdate>,
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RemoteError>),
    Vote(Result<VoteResponse<NodeId>, RemoteError>),
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, RemoteError>),
    Heartbeat(Result<HeartbeatReply, OpError>),
    Leader(Result<LeaderReply, OpError>),
    ReportTasks(Result<(), OpError>),
}

/// Why a Raft RPC failed on the receiving side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RemoteError {
    /// The receiver's Raft is shutting down or has failed.
    Fatal(String),
    /// The snapshot chunk did not continue the snapshot being received.
    SnapshotMismatch(openraft::error::SnapshotMismatch),
    /// The caller's certificate does not name the node the RPC claims to be from.
    WrongSender(String),
}

impl RemoteError {
    pub fn install_snapshot(err: InstallSnapshotError) -> Self {
        match err {
            InstallSnapshotError::SnapshotMismatch(m) => RemoteError::SnapshotMismatch(m),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node_id: NodeId,
    /// The sender's software version, so the leader can report mixed versions.
    pub version: String,
    /// Why the sender's container engine cannot be used; `None` while it answers.
    pub engine_error: Option<String>,
    /// How many removed node ids the sender knows; the reply lists them all
    /// when the leader knows another number.
    pub revoked_known: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub leader_id: NodeId,
    /// Current managers (id, advertised address), so workers can find the
    /// next leader after a failover.
    pub managers: Vec<(NodeId, String)>,
    /// How long the sender waits before its next beat, in milliseconds:
    /// the leader lengthens it as the cluster grows (`liveness::cadence`)
    /// and jitters it, so its beat rate stays bounded.
    pub period_ms: u64,
    /// Every node id removed from the cluster, when the sender's
    /// `revoked_known` differs from the leader's count; empty otherwise.
    /// Workers hold no state, so this is how they learn whom to refuse.
    pub revoked: Vec<NodeId>,
}

/// Operations executed by the leader. Reads are linearizable: the leader
/// confirms its leadership with a quorum before answering.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderOp {
    Nodes,
    Node(String),
    UpdateNode(String, NodeUpdate),
    Promote(String),
    Demote(String),
    RemoveNode {
        node: String,
        force: bool,
    },
    Status,
    Token(Role),
    RotateToken(Role),
    Join(JoinRequest),
    /// Commit an empty command; used by benchmarks to measure the write path.
    Noop,
    /// Create the service, or replace its spec if it exists.
    Deploy(ServiceSpecDoc),
    Services,
    Service(String),
    Tasks(String),
    Scale {
        name: String,
        replicas: u64,
    },
    RemoveService(String),
    /// Commit `count` empty commands from `writers` concurrent in-process
    /// Raft clients on the leader, and report latencies.
    BenchCommit {
        writers: u32,
        count: u32,
    },
    /// Apply changes to the service's current spec (read on the leader) and
    /// store the result; answered with [`LeaderReply::Deployed`].
    UpdateService {
        name: String,
        update: ServiceUpdateRequest,
    },
    /// Return the service to its previous spec; answered with
    /// [`LeaderReply::Deployed`].
    RollbackService(String),
    /// What deploying the spec would change and where its tasks would go;
    /// changes nothing. Answered with [`LeaderReply::Plan`].
    PlanService(ServiceSpecDoc),
    /// Create, update (and with `prune`, remove) a stack's services in one
    /// Raft entry, or only plan it; answered with [`LeaderReply::Plan`].
    DeployStack {
        stack: String,
        request: StackDeployRequest,
    },
    Stacks,
    StackServices(String),
    StackTasks(String),
    RemoveStack(String),
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderReply {
    Nodes(Vec<NodeView>),
    Node(NodeView),
    Removed(RemovedView),
    Status(StatusView),
    Token(TokenView),
    Joined(JoinAccepted),
    Bench(BenchReport),
    Deployed(DeployView),
    Services(Vec<ServiceView>),
    Service(ServiceView),
    ServiceInspect(ServiceInspectView),
    Tasks(Vec<TaskView>),
    ServiceRemoved(RemovedServiceView),
    Done,
    Plan(PlanView),
    Stacks(Vec<StackView>),
    StackRemoved(RemovedStackView),
}

/// The first and only message a joiner sends, after it has checked the
/// server's CA against the token's fingerprint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub secret: String,
    pub name: String,
    /// The joiner's advertised `host:port`.
    pub addr: String,
    /// SubjectPublicKeyInfo (DER) of the joiner's own key; its private key
    /// never leaves the joiner.
    pub public_key_der: Vec<u8>,
    pub resources: Resources,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinAccepted {
    pub node_id: NodeId,
    pub role: Role,
    pub cluster_id: String,
    pub cert_pem: String,
    pub ca_cert_pem: String,
    pub managers: Vec<(NodeId, String)>,
}

/// An operation's failure, as the user sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpError {
    pub kind: OpErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpErrorKind {
    /// Input was invalid; the message names the field and what is allowed.
    BadRequest,
    NotFound,
    /// The request conflicts with the cluster's current state.
    Conflict,
    /// Refused for lack of authorisation (e.g. a wrong join token).
    Forbidden,
    /// This node is not the leader; `message` names the leader if known.
    NotLeader,
    /// No leader or no quorum right now; worth retrying.
    Unavailable,
    Internal,
}

impl OpError {
    pub fn new(kind: OpErrorKind, message: impl Into<String>) -> Self {
        OpError {
            kind,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(OpErrorKind::BadRequest, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(OpErrorKind::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(OpErrorKind::Conflict, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(OpErrorKind::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(OpErrorKind::Internal, message)
    }
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, OpErrorKind::NotLeader | OpErrorKind::Unavailable)
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for OpError {}
