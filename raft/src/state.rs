//! The replicated cluster model: [`ClusterState`], the [`Command`]s that change it,
//! and [`apply`], the only way it changes.
//!
//! Everything here is deterministic: ordered maps only, no clock (the leader stamps
//! `now_ms` into every command), no randomness. Two managers that apply the same
//! commands hold byte-identical states.
//!
//! [`Command`] and [`ClusterState`] are stored formats (log entries and snapshots);
//! they are wrapped in versioned envelopes ([`LogPayload`] here, the snapshot
//! envelope in the store) so a later format can be added beside them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::service::{
    DesiredState, PublishMode, Service, ServiceMode, ServiceSpec, Task, TaskId, TaskState,
    TaskStatusUpdate, UpdateState, UpdateStatus, MAX_REPLICAS,
};
use crate::types::NodeId;

/// The log entry payload: a versioned envelope around commands. A later
/// format is added beside the existing variants (never in their place), so
/// old logs stay readable.
// Entries are built once and moved into the log; boxing `V1` would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogPayload {
    V1(Command),
    /// Commands proposed together by concurrent writers, applied in order as
    /// one entry: one log write and one fsync for the lot. Answered with
    /// [`Response::Batch`], one response per command.
    V1Batch(Vec<Command>),
    /// Like [`LogPayload::V1Batch`] (even for one command), each command with
    /// the id of the client request it belongs to, if any: a request id
    /// already applied is not applied again ([`apply_request`]). Answered
    /// with [`Response::Batch`].
    V2(Vec<Proposed>),
}

/// One command of a [`LogPayload::V2`] entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposed {
    /// The client request the command carries out; `None` for the leader's
    /// own proposals (leader loop, task reports), which apply() re-checks
    /// against the state anyway.
    pub request: Option<RequestId>,
    pub command: Command,
}

impl LogPayload {
    /// Applies every command of the entry in order.
    pub fn apply(&self, state: &mut ClusterState) -> Response {
        match self {
            LogPayload::V1(command) => apply(state, command),
            LogPayload::V1Batch(commands) => {
                Response::Batch(commands.iter().map(|c| apply(state, c)).collect())
            }
            LogPayload::V2(proposed) => Response::Batch(
                proposed
                    .iter()
                    .map(|p| apply_request(state, p.request, &p.command))
                    .collect(),
            ),
        }
    }
}

/// Names one write of one client change, so that apply() carries it out at
/// most once however many times it is proposed (a leader whose commit timed
/// out proposes it again; a forwarding node sends it to the next leader).
///
/// The node whose control API (or join handshake) received the change draws
/// `origin`/`nonce` once, and every attempt carries the same id. `write`
/// numbers the commands of an operation that commits more than one (a
/// forced removal of a manager demotes it, then removes it), so each has its
/// own id and an attempt that skips a write already made still matches the
/// others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// The node that received the request.
    pub origin: NodeId,
    /// Random: ids from one node never repeat in practice (64 bits, and only
    /// the last [`MAX_APPLIED_REQUESTS`] are compared).
    pub nonce: u64,
    /// Which write of the operation this is (0 for its main write).
    pub write: u8,
}

impl RequestId {
    pub fn new(origin: NodeId, nonce: u64) -> RequestId {
        RequestId {
            origin,
            nonce,
            write: 0,
        }
    }

    /// The id of the operation's `write`-th command.
    pub fn write(self, write: u8) -> RequestId {
        RequestId { write, ..self }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:016x}-{}", self.origin, self.nonce, self.write)
    }
}

/// How many applied request ids [`AppliedRequests`] keeps.
///
/// The node that received a request sends every attempt at it within the
/// request timeout (10 s) of the first, then gives up and never sends it
/// again; the leader proposes an attempt as soon as it has run the
/// operation's checks. So an id must outlive the ids of the client changes
/// applied in the following ten seconds or so. The control API's measured
/// ceiling is 8,624 writes/s (64 writers, the cheapest write,
/// BENCHMARKS.md), so 100,000 ids last 11.6 s at full load (a thin margin,
/// at a rate no real client sustains) and minutes to days at realistic
/// rates. Only client changes take ids. Full, the record holds about 10 MB
/// in memory and adds about 2 MB to a snapshot.
pub const MAX_APPLIED_REQUESTS: usize = 100_000;

/// The outcome of the last [`MAX_APPLIED_REQUESTS`] client requests applied,
/// by request id. Part of the replicated state (in snapshots beside
/// [`ClusterState`], see the store's `SnapshotData::V2`), so every manager
/// decides a repeated id the same way. Eviction is first in, first out in
/// log order: deterministic, whatever the clocks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRequests {
    outcomes: BTreeMap<RequestId, Response>,
    /// The same ids in the order they were applied, oldest first.
    order: VecDeque<RequestId>,
}

impl AppliedRequests {
    /// What applying `id` answered, if it was applied and is still kept.
    pub fn outcome(&self, id: RequestId) -> Option<&Response> {
        self.outcomes.get(&id)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The ids kept, oldest first.
    pub fn ids(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.order.iter().copied()
    }

    /// Records `id`'s outcome, forgetting the oldest ids beyond `limit`.
    fn record(&mut self, id: RequestId, outcome: Response, limit: usize) {
        if self.outcomes.insert(id, outcome).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > limit {
            let oldest = self.order.pop_front().expect("longer than the limit");
            self.outcomes.remove(&oldest);
        }
    }
}

/// Applies `cmd`, once per request id: a command whose `request` was applied
/// before (and is still in [`ClusterState::requests`]) changes nothing and
/// answers what the first application answered, refusals included. Without
/// an id it is [`apply`].
pub fn apply_request(
    state: &mut ClusterState,
    request: Option<RequestId>,
    cmd: &Command,
) -> Response {
    apply_request_within(state, request, cmd, MAX_APPLIED_REQUESTS)
}

fn apply_request_within(
    state: &mut ClusterState,
    request: Option<RequestId>,
    cmd: &Command,
    limit: usize,
) -> Response {
    let Some(id) = request else {
        return apply(state, cmd);
    };
    if let Some(outcome) = state.requests.outcome(id) {
        return outcome.clone();
    }
    let response = apply(state, cmd);
    state.requests.record(id, response.clone(), limit);
    response
}

/// The state every manager agrees on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Empty until [`Command::InitCluster`] is applied.
    pub cluster_id: String,
    pub created_at_ms: u64,
    /// The cluster CA; managers sign joiners' certificates with it.
    pub ca: Option<CaMaterial>,
    pub tokens: BTreeMap<Role, TokenRecord>,
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// The id the next registered node gets. Ids are never reused, so a removed or
    /// wiped node that comes back is a new node.
    pub next_node_id: NodeId,
    /// Services by name.
    pub services: BTreeMap<String, Service>,
    /// Every task still kept: live ones and a bounded history of ended ones.
    pub tasks: BTreeMap<TaskId, Task>,
    /// Feeds [`task_id`]; grows by one per created task.
    pub next_task_seq: u64,
    /// Node ids removed by `node rm`: every node refuses their connections,
    /// though their certificates are still the CA's. Ids are never reused,
    /// so this only grows (by one id per removal).
    pub revoked: BTreeSet<NodeId>,
    /// The node id each node key (hex SHA-256 of its public key) was
    /// registered under, kept after the node is removed: a key joins once,
    /// so a replayed join request and a removed node's old identity are
    /// refused.
    pub node_keys: BTreeMap<String, NodeId>,
    /// Client requests applied lately and their outcomes. Not in this type's
    /// own encoding, so snapshots written before it existed still decode:
    /// the store keeps it beside the state (`SnapshotData::V2`).
    #[serde(skip)]
    pub requests: AppliedRequests,
}

impl Default for ClusterState {
    fn default() -> Self {
        ClusterState {
            cluster_id: String::new(),
            created_at_ms: 0,
            ca: None,
            tokens: BTreeMap::new(),
            nodes: BTreeMap::new(),
            next_node_id: 1,
            services: BTreeMap::new(),
            tasks: BTreeMap::new(),
            next_task_seq: 0,
            revoked: BTreeSet::new(),
            node_keys: BTreeMap::new(),
            requests: AppliedRequests::default(),
        }
    }
}

/// The cluster CA certificate and private key, both PEM.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

// The key must not reach logs through a `{:?}` of a command or of the state.
impl fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaMaterial")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A join token's secret is never stored, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Hex SHA-256 of the token secret.
    pub secret_hash: String,
    /// Starts at 1 and grows by one per rotation. The secret is derived from
    /// the CA key and the generation, so the state never holds a secret and
    /// an older generation is recognisable as rotated.
    pub generation: u64,
    pub rotated_at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Ready,
    Down,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub nano_cpus: u64,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub name: String,
    /// Advertised `host:port`.
    pub addr: String,
    pub role: Role,
    pub availability: Availability,
    pub status: NodeStatus,
    pub status_message: String,
    pub labels: BTreeMap<String, String>,
    pub resources: Resources,
    pub version: String,
    pub joined_at_ms: u64,
    pub status_changed_at_ms: u64,
    pub updated_at_ms: u64,
    /// Why the node's container engine cannot be used, as its agent last
    /// reported; `None` while the engine answers. Such a node gets no new
    /// tasks.
    pub engine_error: Option<String>,
}

/// What a joining node tells about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewNode {
    pub name: String,
    pub addr: String,
    pub role: Role,
    pub resources: Resources,
    pub version: String,
    /// Hex SHA-256 of the node's public key (its certificate's key); empty
    /// when not known, which registers no key.
    pub key_fingerprint: String,
}

/// A change to the cluster state. Every command carries the leader's clock as
/// `now_ms`, so applying it never reads a clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Initialises an empty cluster and registers its first node as manager 1.
    /// Refused if the cluster is already initialised.
    InitCluster {
        cluster_id: String,
        ca: CaMaterial,
        manager_token_hash: String,
        worker_token_hash: String,
        first_node: NewNode,
        now_ms: u64,
    },
    /// Registers a joining node under the next node id, ready and active.
    RegisterNode {
        node: NewNode,
        now_ms: u64,
    },
    /// Batched liveness transitions. Unknown ids are ignored, unchanged nodes untouched.
    SetNodeStatus {
        updates: Vec<(NodeId, NodeStatus, String)>,
        now_ms: u64,
    },
    SetNodeRole {
        id: NodeId,
        role: Role,
        now_ms: u64,
    },
    /// Changes what an operator may change. Label removals apply before additions.
    UpdateNode {
        id: NodeId,
        availability: Option<Availability>,
        labels_add: BTreeMap<String, String>,
        labels_rm: Vec<String>,
        name: Option<String>,
        now_ms: u64,
    },
    /// A restarted node reports its current facts.
    RefreshNode {
        id: NodeId,
        addr: String,
        resources: Resources,
        version: String,
        now_ms: u64,
    },
    RemoveNode {
        id: NodeId,
        now_ms: u64,
    },
    RotateToken {
        role: Role,
        secret_hash: String,
        now_ms: u64,
    },
    /// Changes nothing; commits a leader's first entry and serves benchmarks.
    Noop {
        now_ms: u64,
    },
    /// Refused if the name is taken or the spec is invalid.
    CreateService {
        spec: ServiceSpec,
        now_ms: u64,
    },
    /// Replaces the spec of an existing service. A change of the task template
    /// bumps the version, keeps the old spec for a rollback and starts a rolling
    /// update; a spec that differs only in its replica count or update settings
    /// changes no task, and an identical one changes nothing.
    UpdateService {
        spec: ServiceSpec,
        now_ms: u64,
    },
    /// Sets the replica count of a replicated service. Running tasks are kept: the
    /// replica count is not part of the task template.
    ScaleService {
        name: String,
        replicas: u64,
        now_ms: u64,
    },
    /// Creates or updates every service of a stack in one step (all or none):
    /// each spec is named `STACK_SERVICE` and carries `stack`. With `prune`, the
    /// stack's services missing from `specs` are removed.
    DeployStack {
        stack: String,
        specs: Vec<ServiceSpec>,
        prune: bool,
        now_ms: u64,
    },
    /// Removes every service of the stack. Refused when the stack has none.
    RemoveStack {
        stack: String,
        now_ms: u64,
    },
    /// Returns the service to its previous spec by a rolling update with its
    /// rollback settings. Refused when there is no previous spec.
    RollbackService {
        name: String,
        now_ms: u64,
    },
    /// Removes the service; its tasks are asked to shut down and stay until they are
    /// terminal, when the orchestrator deletes them.
    RemoveService {
        name: String,
        now_ms: u64,
    },
    /// The leader loop's batch of orchestrator and scheduler decisions. A change that
    /// no longer applies (the batch was computed from a slightly older state) is skipped.
    ApplyTaskChanges {
        changes: Vec<TaskChange>,
        now_ms: u64,
    },
    /// An agent's batch of task status changes, relayed by the leader. Only tasks
    /// assigned to `node_id` are touched, and a task never moves backwards.
    ReportTaskStatus {
        node_id: NodeId,
        updates: Vec<TaskStatusUpdate>,
        now_ms: u64,
    },
    /// A node's agent reached its container engine again (`error` None) or
    /// lost it (`error` says why). A node without an engine gets no new tasks.
    SetNodeEngine {
        id: NodeId,
        error: Option<String>,
        now_ms: u64,
    },
}

/// One decision of the orchestrator or the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskChange {
    /// A new pending task for `slot` (0 for global tasks, which name their node). Its
    /// id is assigned in apply and its spec copied from the service.
    Create {
        service: String,
        slot: u64,
        node_id: Option<NodeId>,
        restart_count: u64,
    },
    /// A pending task goes to `node_id`.
    Assign { task_id: TaskId, node_id: NodeId },
    /// A pending task stays pending; `reason` says why no node takes it.
    Unassignable { task_id: TaskId, reason: String },
    SetDesired {
        task_id: TaskId,
        desired: DesiredState,
        reason: String,
    },
    /// A transition decided by the leader (e.g. the tasks of a lost node are orphaned).
    /// The same state as the task's only updates its message.
    MarkState {
        task_id: TaskId,
        state: TaskState,
        message: String,
    },
    /// Forgets a terminal task.
    Delete { task_id: TaskId },
    /// The new task of `slot` failed within its monitor window during the update
    /// run of `run_version`.
    UpdateSlotFailed {
        service: String,
        run_version: u64,
        slot: u64,
        node_id: Option<NodeId>,
    },
    /// The update run of `run_version` moves from `from` to `to`. To
    /// [`UpdateState::RollingBack`] it also returns the service to its previous
    /// spec, which starts a rollback run.
    UpdateTransition {
        service: String,
        run_version: u64,
        from: UpdateState,
        to: UpdateState,
        message: String,
    },
}

impl Command {
    /// The leader's clock when the command was proposed.
    pub fn now_ms(&self) -> u64 {
        match self {
            Command::InitCluster { now_ms, .. }
            | Command::RegisterNode { now_ms, .. }
            | Command::SetNodeStatus { now_ms, .. }
            | Command::SetNodeRole { now_ms, .. }
            | Command::UpdateNode { now_ms, .. }
            | Command::RefreshNode { now_ms, .. }
            | Command::RemoveNode { now_ms, .. }
            | Command::RotateToken { now_ms, .. }
            | Command::Noop { now_ms }
            | Command::CreateService { now_ms, .. }
            | Command::UpdateService { now_ms, .. }
            | Command::ScaleService { now_ms, .. }
            | Command::RollbackService { now_ms, .. }
            | Command::DeployStack { now_ms, .. }
            | Command::RemoveStack { now_ms, .. }
            | Command::RemoveService { now_ms, .. }
            | Command::ApplyTaskChanges { now_ms, .. }
            | Command::ReportTaskStatus { now_ms, .. }
            | Command::SetNodeEngine { now_ms, .. } => *now_ms,
        }
    }
}

/// The outcome of applying one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok,
    NodeRegistered {
        id: NodeId,
    },
    /// The command was refused and changed nothing; `reason` is a sentence for the user.
    Rejected {
        reason: String,
    },
    /// The responses to a [`LogPayload::V1Batch`] or [`LogPayload::V2`], in
    /// command order.
    Batch(Vec<Response>),
}

impl Response {
    pub fn is_rejected(&self) -> bool {
        matches!(self, Response::Rejected { .. })
    }
}

impl ClusterState {
    pub fn is_initialised(&self) -> bool {
        !self.cluster_id.is_empty()
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeRecord> {
        self.nodes.get(&id)
    }

    pub fn node_by_name(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.values().find(|node| node.name == name)
    }

    pub fn node_by_addr(&self, addr: &str) -> Option<&NodeRecord> {
        self.nodes.values().find(|node| node.addr == addr)
    }

    pub fn managers(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes
            .values()
            .filter(|node| node.role == Role::Manager)
    }

    pub fn workers(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values().filter(|node| node.role == Role::Worker)
    }

    pub fn token(&self, role: Role) -> Option<&TokenRecord> {
        self.tokens.get(&role)
    }

    /// Finds a node the way a user names it: by its id number, else by its exact
    /// name, else by a prefix of its id number that matches exactly one node.
    pub fn resolve(&self, key: &str) -> Option<&NodeRecord> {
        if let Some(node) = key.parse::<NodeId>().ok().and_then(|id| self.node(id)) {
            return Some(node);
        }
        if let Some(node) = self.node_by_name(key) {
            return Some(node);
        }
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut matches = self
            .nodes
            .values()
            .filter(|node| node.id.to_string().starts_with(key));
        match (matches.next(), matches.next()) {
            (Some(node), None) => Some(node),
            _ => None,
        }
    }

    fn is_last_manager(&self, id: NodeId) -> bool {
        let managers: Vec<NodeId> = self.managers().map(|node| node.id).collect();
        managers == [id]
    }

    /// Checks that a node named `name` at `addr` can exist beside the other nodes
    /// (all except `except`).
    fn check_identity(&self, name: &str, addr: &str, except: Option<NodeId>) -> Result<(), String> {
        if name.is_empty() {
            return Err("a node name must not be empty".to_owned());
        }
        if addr.is_empty() {
            return Err("a node address must not be empty; give its host:port".to_owned());
        }
        let others = || self.nodes.values().filter(|node| Some(node.id) != except);
        if let Some(other) = others().find(|node| node.name == name) {
            return Err(format!(
                "the name {name:?} is already used by node {}; choose another name",
                other.id
            ));
        }
        if let Some(other) = others().find(|node| node.addr == addr) {
            return Err(format!(
                "the address {addr} is already used by node {} ({}); remove that node first if \
                 it was wiped or replaced",
                other.id, other.name
            ));
        }
        Ok(())
    }

    /// Checks that the node key `fingerprint` never joined: the same key
    /// again is a replayed join request, or a removed node's old identity.
    fn check_key(&self, fingerprint: &str) -> Result<(), String> {
        let Some(id) = self.node_keys.get(fingerprint) else {
            return Ok(());
        };
        Err(match self.nodes.get(id) {
            Some(node) => format!(
                "this node key already joined as node {id} ({}): a join is not repeated; \
                 start that node with `shoal run` on its data dir",
                node.name
            ),
            None => format!(
                "this node key belonged to node {id}, which was removed from the cluster: \
                 a removed node cannot come back with its old identity; wipe its data dir \
                 and join again"
            ),
        })
    }

    fn node_mut(&mut self, id: NodeId) -> Result<&mut NodeRecord, String> {
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| format!("node {id} is not a member of this cluster"))
    }

    fn insert_node(&mut self, node: &NewNode, role: Role, now_ms: u64) -> Result<NodeId, String> {
        let id = self.next_node_id;
        let next = id
            .checked_add(1)
            .ok_or_else(|| "this cluster has used every node id; no node can join".to_owned())?;
        self.nodes.insert(
            id,
            NodeRecord {
                id,
                name: node.name.clone(),
                addr: node.addr.clone(),
                role,
                availability: Availability::Active,
                status: NodeStatus::Ready,
                status_message: String::new(),
                labels: BTreeMap::new(),
                resources: node.resources,
                version: node.version.clone(),
                joined_at_ms: now_ms,
                status_changed_at_ms: now_ms,
                updated_at_ms: now_ms,
                engine_error: None,
            },
        );
        if !node.key_fingerprint.is_empty() {
            self.node_keys.insert(node.key_fingerprint.clone(), id);
        }
        self.next_node_id = next;
        Ok(id)
    }
}

/// Why `spec`'s published ports clash with another service's among `others`
/// (`spec`'s own entry, if there, is skipped). Every node listens on an
/// ingress port, so an ingress port clashes with the same port and protocol
/// published by any other service, in either mode; two host-mode ports may
/// share a number (the scheduler keeps their tasks on different nodes).
fn check_ports<'a>(
    spec: &ServiceSpec,
    others: impl IntoIterator<Item = &'a ServiceSpec>,
) -> Result<(), String> {
    for other in others {
        if other.name == spec.name {
            continue;
        }
        for (i, port) in spec.ports.iter().enumerate() {
            let Some(theirs) = other.ports.iter().find(|q| {
                q.published == port.published
                    && q.protocol == port.protocol
                    && (q.mode == PublishMode::Ingress || port.mode == PublishMode::Ingress)
            }) else {
                continue;
            };
            let which = if theirs.mode == PublishMode::Ingress {
                format!(
                    "service {:?} publishes it in ingress mode, so every node listens on it",
                    other.name
                )
            } else {
                format!(
                    "service {:?} publishes it in host mode and every node listens on an \
                     ingress port",
                    other.name
                )
            };
            return Err(format!(
                "ports[{i}].published: port {}/{} is taken: {which}; choose another published \
                 port or free it in {:?} first",
                port.published,
                port.protocol.as_str(),
                other.name
            ));
        }
    }
    Ok(())
}

/// Applies one command. A refused command changes nothing and returns
/// [`Response::Rejected`] with a sentence saying why.
pub fn apply(state: &mut ClusterState, cmd: &Command) -> Response {
    match apply_or_refuse(state, cmd) {
        Ok(response) => response,
        Err(reason) => Response::Rejected { reason },
    }
}

// Every arm validates everything before its first mutation, so `Err` means untouched.
fn apply_or_refuse(state: &mut ClusterState, cmd: &Command) -> Result<Response, String> {
    let needs_cluster = !matches!(cmd, Command::InitCluster { .. } | Command::Noop { .. });
    if needs_cluster && !state.is_initialised() {
        return Err("the cluster is not initialised yet; initialise it first".to_owned());
    }
    match cmd {
        Command::InitCluster {
            cluster_id,
            ca,
            manager_token_hash,
            worker_token_hash,
            first_node,
            now_ms,
        } => {
            if state.is_initialised() {
                return Err(format!(
                    "the cluster is already initialised (cluster id {})",
                    state.cluster_id
                ));
            }
            if cluster_id.is_empty() {
                return Err("a cluster id must not be empty".to_owned());
            }
            if manager_token_hash.is_empty() || worker_token_hash.is_empty() {
                return Err("both join token hashes must be given".to_owned());
            }
            if !state.nodes.is_empty() {
                return Err("an uninitialised cluster must not have nodes".to_owned());
            }
            state.check_identity(&first_node.name, &first_node.addr, None)?;
            state.next_node_id = 1;
            state.insert_node(first_node, Role::Manager, *now_ms)?;
            state.cluster_id = cluster_id.clone();
            state.created_at_ms = *now_ms;
            state.ca = Some(ca.clone());
            for (role, hash) in [
                (Role::Manager, manager_token_hash),
                (Role::Worker, worker_token_hash),
            ] {
                state.tokens.insert(
                    role,
                    TokenRecord {
                        secret_hash: hash.clone(),
                        generation: 1,
                        rotated_at_ms: *now_ms,
                    },
                );
            }
            Ok(Response::Ok)
        }
        Command::RegisterNode { node, now_ms } => {
            state.check_key(&node.key_fingerprint)?;
            state.check_identity(&node.name, &node.addr, None)?;
            let id = state.insert_node(node, node.role, *now_ms)?;
            Ok(Response::NodeRegistered { id })
        }
        Command::SetNodeStatus { updates, now_ms } => {
            for (id, status, message) in updates {
                let Some(node) = state.nodes.get_mut(id) else {
                    continue;
                };
                if node.status == *status && node.status_message == *message {
                    continue;
                }
                if node.status != *status {
                    node.status = *status;
                    node.status_changed_at_ms = *now_ms;
                }
                node.status_message = message.clone();
                node.updated_at_ms = *now_ms;
            }
            Ok(Response::Ok)
        }
        Command::SetNodeRole { id, role, now_ms } => {
            let current = state.node_mut(*id)?.role;
            if current == *role {
                return Ok(Response::Ok);
            }
            if current == Role::Manager && state.is_last_manager(*id) {
                return Err(format!(
                    "node {id} is the last manager; promote another node before demoting it"
                ));
            }
            let node = state.node_mut(*id)?;
            node.role = *role;
            node.updated_at_ms = *now_ms;
            Ok(Response::Ok)
        }
        Command::UpdateNode {
            id,
            availability,
            labels_add,
            labels_rm,
            name,
            now_ms,
        } => {
            let mut updated = state.node_mut(*id)?.clone();
            if let Some(name) = name {
                state.check_identity(name, &updated.addr, Some(*id))?;
                updated.name = name.clone();
            }
            if let Some(availability) = availability {
                updated.availability = *availability;
            }
            for key in labels_rm {
                updated.labels.remove(key);
            }
            for (key, value) in labels_add {
                if key.is_empty() {
                    return Err("a label key must not be empty".to_owned());
                }
                updated.labels.insert(key.clone(), value.clone());
            }
            let node = state.node_mut(*id)?;
            if updated != *node {
                updated.updated_at_ms = *now_ms;
                *node = updated;
            }
            Ok(Response::Ok)
        }
        Command::RefreshNode {
            id,
            addr,
            resources,
            version,
            now_ms,
        } => {
            let name = state.node_mut(*id)?.name.clone();
            state.check_identity(&name, addr, Some(*id))?;
            let node = state.node_mut(*id)?;
            if node.addr != *addr || node.resources != *resources || node.version != *version {
                node.addr = addr.clone();
                node.resources = *resources;
                node.version = version.clone();
                node.updated_at_ms = *now_ms;
            }
            Ok(Response::Ok)
        }
        Command::RemoveNode { id, now_ms: _ } => {
            state.node_mut(*id)?;
            if state.is_last_manager(*id) {
                return Err(format!(
                    "node {id} is the last manager; a cluster cannot run without one"
                ));
            }
            state.nodes.remove(id);
            // Its certificate stays valid for the CA: the id is what every
            // node refuses from now on.
            state.revoked.insert(*id);
            Ok(Response::Ok)
        }
        Command::RotateToken {
            role,
            secret_hash,
            now_ms,
        } => {
            if secret_hash.is_empty() {
                return Err("a token hash must not be empty".to_owned());
            }
            let generation = state.tokens.get(role).map_or(0, |t| t.generation) + 1;
            state.tokens.insert(
                *role,
                TokenRecord {
                    secret_hash: secret_hash.clone(),
                    generation,
                    rotated_at_ms: *now_ms,
                },
            );
            Ok(Response::Ok)
        }
        Command::Noop { now_ms: _ } => Ok(Response::Ok),
        Command::CreateService { spec, now_ms } => {
            state.check_create(spec)?;
            state.create_service(spec, *now_ms);
            Ok(Response::Ok)
        }
        Command::UpdateService { spec, now_ms } => {
            state.check_update(spec)?;
            state.update_service(spec, *now_ms);
            Ok(Response::Ok)
        }
        Command::DeployStack {
            stack,
            specs,
            prune,
            now_ms,
        } => {
            let mut names = BTreeSet::new();
            for spec in specs {
                if spec.stack.as_deref() != Some(stack.as_str())
                    || !spec.name.starts_with(&format!("{stack}_"))
                {
                    return Err(format!(
                        "service {:?} is not named and labelled for stack {stack:?}",
                        spec.name
                    ));
                }
                if !names.insert(spec.name.as_str()) {
                    return Err(format!(
                        "service {:?} appears twice in the stack",
                        spec.name
                    ));
                }
                match state.services.get(&spec.name) {
                    None => state.check_create_alone(spec)?,
                    Some(existing) if existing.spec.stack.as_deref() != Some(stack.as_str()) => {
                        return Err(format!(
                            "a service named {:?} already exists outside stack {stack:?}; \
                             remove it or rename the stack",
                            spec.name
                        ))
                    }
                    Some(_) => state.check_update_alone(spec)?,
                }
            }
            // Ports are checked against the services as they will be after
            // the deploy: the stack's new specs, and every other service that
            // stays (a pruned one frees its ports).
            let staying = state
                .services
                .values()
                .filter(|s| {
                    let pruned = *prune && s.spec.stack.as_deref() == Some(stack.as_str());
                    !pruned && !names.contains(s.spec.name.as_str())
                })
                .map(|s| &*s.spec);
            let after: Vec<&ServiceSpec> = specs.iter().chain(staying).collect();
            for spec in specs {
                check_ports(spec, after.iter().copied())?;
            }
            if specs.is_empty()
                && !state
                    .services
                    .values()
                    .any(|s| s.spec.stack.as_deref() == Some(stack.as_str()))
            {
                return Err(format!("stack {stack:?} has no services to deploy"));
            }
            for spec in specs {
                if state.services.contains_key(&spec.name) {
                    state.update_service(spec, *now_ms);
                } else {
                    state.create_service(spec, *now_ms);
                }
            }
            if *prune {
                let gone: Vec<String> = state
                    .services
                    .values()
                    .filter(|s| {
                        s.spec.stack.as_deref() == Some(stack.as_str())
                            && !names.contains(s.spec.name.as_str())
                    })
                    .map(|s| s.spec.name.clone())
                    .collect();
                for name in gone {
                    state.remove_service(&name, *now_ms);
                }
            }
            Ok(Response::Ok)
        }
        Command::RemoveStack { stack, now_ms } => {
            let names: Vec<String> = state
                .services
                .values()
                .filter(|s| s.spec.stack.as_deref() == Some(stack.as_str()))
                .map(|s| s.spec.name.clone())
                .collect();
            if names.is_empty() {
                return Err(format!("there is no stack named {stack:?}"));
            }
            for name in names {
                state.remove_service(&name, *now_ms);
            }
            Ok(Response::Ok)
        }
        Command::RollbackService { name, now_ms } => {
            let service = state.service_mut(name)?;
            if service.previous_spec.is_none() {
                return Err(format!(
                    "service {name:?} has no previous spec to roll back to; it has not been \
                     updated since it was created"
                ));
            }
            state.start_rollback(name, "rollback requested".to_owned(), *now_ms);
            Ok(Response::Ok)
        }
        Command::ScaleService {
            name,
            replicas,
            now_ms,
        } => {
            let service = state.service_mut(name)?;
            let ServiceMode::Replicated { replicas: current } = service.spec.mode else {
                return Err(format!(
                    "service {name:?} is global: it runs one task per eligible node and \
                     cannot be scaled"
                ));
            };
            if *replicas > MAX_REPLICAS {
                return Err(format!(
                    "{replicas} replicas is too many; allowed 0 to {MAX_REPLICAS}"
                ));
            }
            if current != *replicas {
                Arc::make_mut(&mut service.spec).mode = ServiceMode::Replicated {
                    replicas: *replicas,
                };
                service.updated_at_ms = *now_ms;
            }
            Ok(Response::Ok)
        }
        Command::RemoveService { name, now_ms } => {
            state.service_mut(name)?;
            state.remove_service(name, *now_ms);
            Ok(Response::Ok)
        }
        Command::ApplyTaskChanges { changes, now_ms } => {
            state.apply_task_changes(changes, *now_ms)?;
            Ok(Response::Ok)
        }
        Command::ReportTaskStatus {
            node_id,
            updates,
            now_ms,
        } => {
            for update in updates {
                state.report_task_status(*node_id, update, *now_ms);
            }
            Ok(Response::Ok)
        }
        Command::SetNodeEngine { id, error, now_ms } => {
            let node = state.node_mut(*id)?;
            if node.engine_error != *error {
                node.engine_error = error.clone();
                node.updated_at_ms = *now_ms;
            }
            Ok(Response::Ok)
        }
    }
}

/// The id of the task created as number `seq` in cluster `cluster_id`: unique per
/// cluster (splitmix64 is a bijection) and random-looking, so prefixes are short.
pub fn task_id(cluster_id: &str, seq: u64) -> TaskId {
    format!("{:016x}", splitmix64(seq ^ fnv1a(cluster_id.as_bytes())))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Which slot a task fills: its slot number, or for global tasks its node.
pub(crate) fn slot_key(task: &Task) -> (u64, Option<NodeId>) {
    if task.slot == 0 {
        (0, task.node_id)
    } else {
        (task.slot, None)
    }
}

impl ClusterState {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }

    /// The tasks of one service, in id order.
    pub fn tasks_of<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks
            .values()
            .filter(move |task| task.service == service)
    }

    /// How many tasks a service should run now: its replicas, or for a
    /// global service the ready, undrained nodes its constraints allow.
    pub fn desired_task_count(&self, service: &Service) -> u64 {
        match service.spec.replicas() {
            Some(replicas) => replicas,
            None => self
                .nodes
                .values()
                .filter(|n| {
                    n.status == NodeStatus::Ready
                        && n.availability != Availability::Drain
                        && service.spec.allows(n)
                })
                .count() as u64,
        }
    }

    fn service_mut(&mut self, name: &str) -> Result<&mut Service, String> {
        self.services
            .get_mut(name)
            .ok_or_else(|| format!("there is no service named {name:?}"))
    }

    fn apply_task_changes(&mut self, changes: &[TaskChange], now_ms: u64) -> Result<(), String> {
        let creates = changes
            .iter()
            .filter(|c| matches!(c, TaskChange::Create { .. }))
            .count() as u64;
        if self.next_task_seq.checked_add(creates).is_none() {
            return Err("this cluster has used every task id; no task can be created".to_owned());
        }
        // Slots that already have a live task of the current version: a Create for one
        // of them comes from a batch computed before that task existed. Only the
        // services this batch creates tasks for are looked at, and the keys borrow
        // their names from the batch.
        let mut filled: BTreeSet<(&str, u64, Option<NodeId>)> = BTreeSet::new();
        if creates > 0 {
            let named: BTreeSet<&str> = changes
                .iter()
                .filter_map(|change| match change {
                    TaskChange::Create { service, .. } => Some(service.as_str()),
                    _ => None,
                })
                .collect();
            for task in self.tasks.values().filter(|task| task.is_live()) {
                let Some(&service) = named.get(task.service.as_str()) else {
                    continue;
                };
                let current = self
                    .services
                    .get(service)
                    .is_some_and(|s| s.is_current(task));
                if current {
                    let (slot, node) = slot_key(task);
                    filled.insert((service, slot, node));
                }
            }
        }
        for change in changes {
            match change {
                TaskChange::Create {
                    service,
                    slot,
                    node_id,
                    restart_count,
                } => {
                    let Some(record) = self.services.get(service) else {
                        continue;
                    };
                    let key = (
                        service.as_str(),
                        *slot,
                        if *slot == 0 { *node_id } else { None },
                    );
                    if (*slot == 0) != record.spec.is_global()
                        || (*slot == 0 && node_id.is_none())
                        || !filled.insert(key)
                    {
                        continue;
                    }
                    let id = task_id(&self.cluster_id, self.next_task_seq);
                    self.next_task_seq += 1;
                    let task = Task {
                        id: id.clone(),
                        service: service.clone(),
                        slot: *slot,
                        node_id: *node_id,
                        spec_version: record.version,
                        spec: record.spec.clone(),
                        desired_state: DesiredState::Running,
                        state: TaskState::Pending,
                        message: "created".to_owned(),
                        error: String::new(),
                        exit_code: None,
                        container_id: None,
                        restart_count: *restart_count,
                        created_at_ms: now_ms,
                        updated_at_ms: now_ms,
                        state_changed_at_ms: now_ms,
                        running_since_ms: None,
                        health: None,
                    };
                    self.tasks.insert(id, task);
                }
                TaskChange::Assign { task_id, node_id } => {
                    if !self.nodes.contains_key(node_id) {
                        continue;
                    }
                    let Some(task) = self.tasks.get_mut(task_id) else {
                        continue;
                    };
                    if task.state != TaskState::Pending
                        || task.desired_state != DesiredState::Running
                        || task.node_id.is_some_and(|n| n != *node_id)
                    {
                        continue;
                    }
                    task.node_id = Some(*node_id);
                    task.state = TaskState::Assigned;
                    task.message = "assigned".to_owned();
                    task.updated_at_ms = now_ms;
                    task.state_changed_at_ms = now_ms;
                }
                TaskChange::Unassignable { task_id, reason } => {
                    let Some(task) = self.tasks.get_mut(task_id) else {
                        continue;
                    };
                    if task.state == TaskState::Pending && task.message != *reason {
                        task.message = reason.clone();
                        task.updated_at_ms = now_ms;
                    }
                }
                TaskChange::SetDesired {
                    task_id,
                    desired,
                    reason,
                } => {
                    let Some(task) = self.tasks.get_mut(task_id) else {
                        continue;
                    };
                    let revive = *desired == DesiredState::Running && task.state.is_terminal();
                    let unchanged = task.desired_state == *desired
                        && (reason.is_empty() || task.message == *reason);
                    if revive || unchanged {
                        continue;
                    }
                    task.desired_state = *desired;
                    if !reason.is_empty() {
                        task.message = reason.clone();
                    }
                    task.updated_at_ms = now_ms;
                }
                TaskChange::MarkState {
                    task_id,
                    state,
                    message,
                } => {
                    let Some(task) = self.tasks.get_mut(task_id) else {
                        continue;
                    };
                    if task.state == *state {
                        if task.message != *message {
                            task.message = message.clone();
                            task.updated_at_ms = now_ms;
                        }
                    } else if !task.state.is_terminal() && *state > task.state {
                        task.state = *state;
                        task.message = message.clone();
                        task.updated_at_ms = now_ms;
                        task.state_changed_at_ms = now_ms;
                    }
                }
                TaskChange::Delete { task_id } => {
                    if self
                        .tasks
                        .get(task_id)
                        .is_some_and(|t| t.state.is_terminal())
                    {
                        self.tasks.remove(task_id);
                    }
                }
                TaskChange::UpdateSlotFailed {
                    service,
                    run_version,
                    slot,
                    node_id,
                } => {
                    if let Some(run) = self.update_run_mut(service, *run_version) {
                        run.failed_slots.insert((*slot, *node_id));
                    }
                }
                TaskChange::UpdateTransition {
                    service,
                    run_version,
                    from,
                    to,
                    message,
                } => {
                    let applies = self
                        .update_run_mut(service, *run_version)
                        .is_some_and(|run| run.state == *from && from != to);
                    if !applies {
                        continue;
                    }
                    if *to == UpdateState::RollingBack {
                        if self.services[service].previous_spec.is_some() {
                            self.start_rollback(service, message.clone(), now_ms);
                        }
                        continue;
                    }
                    let run = self
                        .update_run_mut(service, *run_version)
                        .expect("checked above");
                    run.state = *to;
                    run.message = message.clone();
                    if !to.is_running() {
                        run.completed_at_ms = now_ms;
                    }
                }
            }
        }
        Ok(())
    }

    /// Why `spec` cannot be created, if it cannot.
    fn check_create(&self, spec: &ServiceSpec) -> Result<(), String> {
        self.check_create_alone(spec)?;
        check_ports(spec, self.services.values().map(|s| &*s.spec))
    }

    /// [`Self::check_create`] without the published ports.
    fn check_create_alone(&self, spec: &ServiceSpec) -> Result<(), String> {
        spec.validate().map_err(|e| e.to_string())?;
        if self.services.contains_key(&spec.name) {
            return Err(format!(
                "a service named {:?} already exists; update it or choose another name",
                spec.name
            ));
        }
        Ok(())
    }

    /// Points every task whose spec equals its service's current or
    /// previous spec at the service's copy. Tasks created by `apply` share
    /// it already; a decoded state (a snapshot) holds one copy per task.
    pub fn share_task_specs(&mut self) {
        let ClusterState {
            services, tasks, ..
        } = self;
        for task in tasks.values_mut() {
            let Some(service) = services.get(&task.service) else {
                continue;
            };
            let shared = std::iter::once(&service.spec)
                .chain(service.previous_spec.as_ref())
                .find(|spec| **spec == task.spec);
            if let Some(spec) = shared {
                task.spec = Arc::clone(spec);
            }
        }
    }

    fn create_service(&mut self, spec: &ServiceSpec, now_ms: u64) {
        self.services.insert(
            spec.name.clone(),
            Service {
                spec: Arc::new(spec.clone()),
                version: 1,
                created_at_ms: now_ms,
                updated_at_ms: now_ms,
                previous_spec: None,
                update: None,
            },
        );
    }

    /// Why the existing service cannot take `spec`, if it cannot.
    fn check_update(&self, spec: &ServiceSpec) -> Result<(), String> {
        self.check_update_alone(spec)?;
        check_ports(spec, self.services.values().map(|s| &*s.spec))
    }

    /// [`Self::check_update`] without the published ports.
    fn check_update_alone(&self, spec: &ServiceSpec) -> Result<(), String> {
        spec.validate().map_err(|e| e.to_string())?;
        let service = self
            .services
            .get(&spec.name)
            .ok_or_else(|| format!("there is no service named {:?}", spec.name))?;
        if service.spec.is_global() != spec.is_global() {
            return Err(format!(
                "service {:?} is {}; its mode cannot change (remove it and deploy it again)",
                spec.name,
                if service.spec.is_global() {
                    "global"
                } else {
                    "replicated"
                }
            ));
        }
        Ok(())
    }

    /// Stores `spec` (checked by [`Self::check_update`]); a change of the task
    /// template bumps the version, keeps the old spec for a rollback and starts
    /// a rolling update.
    fn update_service(&mut self, spec: &ServiceSpec, now_ms: u64) {
        let service = self.services.get_mut(&spec.name).expect("checked");
        if *service.spec == *spec {
            return;
        }
        let template_changed = !service.spec.same_template(spec);
        let old = std::mem::replace(&mut service.spec, Arc::new(spec.clone()));
        service.updated_at_ms = now_ms;
        if template_changed {
            service.version += 1;
            service.previous_spec = Some(old);
            let message = format!("updating to version {}", service.version);
            self.start_update_run(&spec.name, UpdateState::Updating, message, now_ms);
        }
    }

    /// Removes the service; its tasks are asked to shut down.
    fn remove_service(&mut self, name: &str, now_ms: u64) {
        self.services.remove(name);
        for task in self.tasks.values_mut() {
            if task.service == name && task.desired_state != DesiredState::Shutdown {
                task.desired_state = DesiredState::Shutdown;
                task.message = "service removed".to_owned();
                task.updated_at_ms = now_ms;
            }
        }
    }

    /// The update run of `service` for `version`, if it is still the service's latest.
    fn update_run_mut(&mut self, service: &str, version: u64) -> Option<&mut UpdateStatus> {
        self.services
            .get_mut(service)?
            .update
            .as_mut()
            .filter(|run| run.version == version)
    }

    /// Starts a new update run of `name` (which exists) in `state`.
    fn start_update_run(&mut self, name: &str, state: UpdateState, message: String, now_ms: u64) {
        let total_slots = self.desired_task_count(&self.services[name]);
        let service = self.services.get_mut(name).expect("the caller checked");
        service.update = Some(UpdateStatus {
            state,
            version: service.version,
            started_at_ms: now_ms,
            completed_at_ms: 0,
            message,
            total_slots,
            failed_slots: BTreeSet::new(),
        });
    }

    /// Returns `name` (which has a previous spec) to its previous task template and
    /// starts a rollback run, paced by the current rollback settings. The replica
    /// count and the update and rollback settings stay as they are; the spec rolled
    /// back from becomes the previous one, so a rollback can be undone.
    fn start_rollback(&mut self, name: &str, message: String, now_ms: u64) {
        let service = self.services.get_mut(name).expect("the caller checked");
        let previous = service.previous_spec.take().expect("the caller checked");
        let restored = ServiceSpec {
            mode: service.spec.mode,
            update: service.spec.update,
            rollback: service.spec.rollback,
            ..Arc::unwrap_or_clone(previous)
        };
        let old = std::mem::replace(&mut service.spec, Arc::new(restored));
        service.previous_spec = Some(old);
        service.version += 1;
        service.updated_at_ms = now_ms;
        self.start_update_run(name, UpdateState::RollingBack, message, now_ms);
    }

    fn report_task_status(&mut self, node_id: NodeId, update: &TaskStatusUpdate, now_ms: u64) {
        let Some(task) = self.tasks.get_mut(&update.task_id) else {
            return;
        };
        if task.node_id != Some(node_id) || task.state.is_terminal() || update.state < task.state {
            return;
        }
        let container_id = update.container_id.clone().or(task.container_id.clone());
        if update.state == task.state
            && update.message == task.message
            && update.error == task.error
            && update.exit_code == task.exit_code
            && update.health == task.health
            && container_id == task.container_id
        {
            return;
        }
        if update.state != task.state {
            task.state = update.state;
            task.state_changed_at_ms = now_ms;
            if update.state == TaskState::Running {
                task.running_since_ms = Some(now_ms);
            }
        }
        task.health = update.health;
        task.message = update.message.clone();
        task.error = update.error.clone();
        task.exit_code = update.exit_code;
        task.container_id = container_id;
        task.updated_at_ms = now_ms;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::codec;

    const T0: u64 = 1_000;
    const NOW: u64 = 5_000;

    fn new_node(name: &str, addr: &str, role: Role) -> NewNode {
        NewNode {
            name: name.to_owned(),
            addr: addr.to_owned(),
            role,
            resources: Resources {
                nano_cpus: 2_000_000_000,
                memory_bytes: 1 << 30,
            },
            version: "0.1.0".to_owned(),
            key_fingerprint: String::new(),
        }
    }

    fn ca() -> CaMaterial {
        CaMaterial {
            cert_pem: "CERT".to_owned(),
            key_pem: "KEY".to_owned(),
        }
    }

    fn init(cluster_id: &str, first_role: Role, now_ms: u64) -> Command {
        Command::InitCluster {
            cluster_id: cluster_id.to_owned(),
            ca: ca(),
            manager_token_hash: "mhash".to_owned(),
            worker_token_hash: "whash".to_owned(),
            first_node: new_node("m1", "10.0.0.1:4240", first_role),
            now_ms,
        }
    }

    fn init_cmd(now_ms: u64) -> Command {
        init("c1", Role::Manager, now_ms)
    }

    fn applied(mut state: ClusterState, cmd: Command) -> ClusterState {
        let response = apply(&mut state, &cmd);
        assert!(
            !response.is_rejected(),
            "fixture command refused: {response:?}"
        );
        state
    }

    fn empty() -> ClusterState {
        ClusterState::default()
    }

    /// Manager 1 "m1".
    fn one_manager() -> ClusterState {
        applied(empty(), init_cmd(T0))
    }

    /// Manager 1 "m1" and worker 2 "w1".
    fn manager_and_worker() -> ClusterState {
        applied(
            one_manager(),
            Command::RegisterNode {
                node: new_node("w1", "10.0.0.2:4240", Role::Worker),
                now_ms: T0,
            },
        )
    }

    /// Managers 1 "m1" and 2 "m2".
    fn two_managers() -> ClusterState {
        applied(
            one_manager(),
            Command::RegisterNode {
                node: new_node("m2", "10.0.0.3:4240", Role::Manager),
                now_ms: T0,
            },
        )
    }

    fn node(state: &mut ClusterState, id: NodeId) -> &mut NodeRecord {
        state.nodes.get_mut(&id).expect("fixture node")
    }

    enum Expect {
        Ok,
        Registered(NodeId),
        /// A refusal whose reason contains this text; the state must be untouched.
        Rejected(&'static str),
    }

    struct Case {
        name: &'static str,
        before: fn() -> ClusterState,
        cmd: Command,
        expect: Expect,
        /// Turns the state before into the expected state after.
        change: fn(&mut ClusterState),
    }

    fn unchanged(_: &mut ClusterState) {}

    fn check(case: &Case) {
        let mut state = (case.before)();
        let mut expected = state.clone();
        (case.change)(&mut expected);
        let response = apply(&mut state, &case.cmd);
        match (&case.expect, &response) {
            (Expect::Ok, Response::Ok) => {}
            (Expect::Registered(want), Response::NodeRegistered { id }) if want == id => {}
            (Expect::Rejected(text), Response::Rejected { reason }) => {
                assert!(
                    reason.contains(text),
                    "{}: reason {reason:?} lacks {text:?}",
                    case.name
                );
                assert_eq!(
                    state,
                    (case.before)(),
                    "{}: a refusal changed state",
                    case.name
                );
            }
            (_, other) => panic!("{}: unexpected response {other:?}", case.name),
        }
        assert_eq!(state, expected, "{}: state after", case.name);
    }

    fn variant(cmd: &Command) -> &'static str {
        match cmd {
            Command::InitCluster { .. } => "InitCluster",
            Command::RegisterNode { .. } => "RegisterNode",
            Command::SetNodeStatus { .. } => "SetNodeStatus",
            Command::SetNodeRole { .. } => "SetNodeRole",
            Command::UpdateNode { .. } => "UpdateNode",
            Command::RefreshNode { .. } => "RefreshNode",
            Command::RemoveNode { .. } => "RemoveNode",
            Command::RotateToken { .. } => "RotateToken",
            Command::Noop { .. } => "Noop",
            Command::CreateService { .. } => "CreateService",
            Command::UpdateService { .. } => "UpdateService",
            Command::ScaleService { .. } => "ScaleService",
            Command::RollbackService { .. } => "RollbackService",
            Command::DeployStack { .. } => "DeployStack",
            Command::RemoveStack { .. } => "RemoveStack",
            Command::RemoveService { .. } => "RemoveService",
            Command::ApplyTaskChanges { .. } => "ApplyTaskChanges",
            Command::ReportTaskStatus { .. } => "ReportTaskStatus",
            Command::SetNodeEngine { .. } => "SetNodeEngine",
        }
    }

    const ALL_VARIANTS: [&str; 19] = [
        "InitCluster",
        "RegisterNode",
        "SetNodeStatus",
        "SetNodeRole",
        "UpdateNode",
        "RefreshNode",
        "RemoveNode",
        "RotateToken",
        "Noop",
        "CreateService",
        "UpdateService",
        "ScaleService",
        "RollbackService",
        "DeployStack",
        "RemoveStack",
        "RemoveService",
        "ApplyTaskChanges",
        "ReportTaskStatus",
        "SetNodeEngine",
    ];

    fn web_spec() -> ServiceSpec {
        ServiceSpec {
            mode: ServiceMode::Replicated { replicas: 3 },
            ..ServiceSpec::default_for("web", "nginx:1.27")
        }
    }

    /// `spec` publishing `ports`.
    fn with_ports(spec: ServiceSpec, ports: &[crate::service::PortSpec]) -> ServiceSpec {
        ServiceSpec {
            ports: ports.to_vec(),
            ..spec
        }
    }

    fn tcp(published: u16) -> crate::service::PortSpec {
        crate::service::PortSpec::ingress(published, 80, crate::service::Protocol::Tcp)
    }

    fn host_tcp(published: u16) -> crate::service::PortSpec {
        crate::service::PortSpec::host(published, 80, crate::service::Protocol::Tcp)
    }

    /// `with_web`, where "web" publishes 8080/tcp (ingress) and 9090/tcp (host).
    fn with_web_ports() -> ClusterState {
        let mut s = manager_and_worker();
        s.create_service(&with_ports(web_spec(), &[tcp(8080), host_tcp(9090)]), T0);
        s
    }

    /// Service `shop_NAME` of stack "shop".
    fn stack_spec(name: &str, image: &str) -> ServiceSpec {
        ServiceSpec {
            stack: Some("shop".to_owned()),
            ..ServiceSpec::default_for(&format!("shop_{name}"), image)
        }
    }

    /// Manager 1, worker 2 and service "web" (3 replicas, no tasks yet).
    fn with_web() -> ClusterState {
        applied(
            manager_and_worker(),
            Command::CreateService {
                spec: web_spec(),
                now_ms: T0,
            },
        )
    }

    /// `with_web` and the first task, slot 1, assigned to node 2.
    fn with_task() -> ClusterState {
        applied(
            with_web(),
            Command::ApplyTaskChanges {
                changes: vec![
                    TaskChange::Create {
                        service: "web".to_owned(),
                        slot: 1,
                        node_id: None,
                        restart_count: 0,
                    },
                    TaskChange::Assign {
                        task_id: first_task(),
                        node_id: 2,
                    },
                ],
                now_ms: T0,
            },
        )
    }

    fn first_task() -> TaskId {
        task_id("c1", 0)
    }

    /// The task `with_task` creates, as created at `now_ms` and still pending.
    fn pending_task(now_ms: u64) -> Task {
        Task {
            id: first_task(),
            service: "web".to_owned(),
            slot: 1,
            node_id: None,
            spec_version: 1,
            spec: web_spec().into(),
            desired_state: DesiredState::Running,
            state: TaskState::Pending,
            message: "created".to_owned(),
            error: String::new(),
            exit_code: None,
            container_id: None,
            restart_count: 0,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            state_changed_at_ms: now_ms,
            running_since_ms: None,
            health: None,
        }
    }

    fn task(state: &mut ClusterState) -> &mut Task {
        state.tasks.get_mut(&first_task()).expect("fixture task")
    }

    fn report(node_id: NodeId, state: TaskState) -> Command {
        Command::ReportTaskStatus {
            node_id,
            updates: vec![TaskStatusUpdate {
                task_id: first_task(),
                state,
                message: format!("now {state}"),
                error: String::new(),
                exit_code: None,
                container_id: Some("c0ffee".to_owned()),
                health: None,
                at_ms: 1,
            }],
            now_ms: NOW,
        }
    }

    fn changes(changes: Vec<TaskChange>) -> Command {
        Command::ApplyTaskChanges {
            changes,
            now_ms: NOW,
        }
    }

    fn service_cases() -> Vec<Case> {
        vec![
            // CreateService
            Case {
                name: "create a service at version 1",
                before: manager_and_worker,
                cmd: Command::CreateService {
                    spec: web_spec(),
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: |s| {
                    s.services.insert(
                        "web".to_owned(),
                        Service {
                            spec: web_spec().into(),
                            version: 1,
                            created_at_ms: NOW,
                            updated_at_ms: NOW,
                            previous_spec: None,
                            update: None,
                        },
                    );
                },
            },
            Case {
                name: "a taken service name is refused",
                before: with_web,
                cmd: Command::CreateService {
                    spec: web_spec(),
                    now_ms: NOW,
                },
                expect: Expect::Rejected("\"web\" already exists"),
                change: unchanged,
            },
            Case {
                name: "an invalid spec is refused",
                before: manager_and_worker,
                cmd: Command::CreateService {
                    spec: ServiceSpec::default_for("Web", "nginx"),
                    now_ms: NOW,
                },
                expect: Expect::Rejected("invalid name"),
                change: unchanged,
            },
            Case {
                name: "creating before init is refused",
                before: empty,
                cmd: Command::CreateService {
                    spec: web_spec(),
                    now_ms: NOW,
                },
                expect: Expect::Rejected("not initialised"),
                change: unchanged,
            },
            Case {
                name: "an ingress port another service publishes is refused",
                before: with_web_ports,
                cmd: Command::CreateService {
                    spec: with_ports(ServiceSpec::default_for("api", "api:1"), &[tcp(8080)]),
                    now_ms: NOW,
                },
                expect: Expect::Rejected(
                    "ports[0].published: port 8080/tcp is taken: service \"web\" publishes it \
                     in ingress mode",
                ),
                change: unchanged,
            },
            Case {
                name: "a host-mode port cannot take another service's ingress port",
                before: with_web_ports,
                cmd: Command::CreateService {
                    spec: with_ports(
                        ServiceSpec::default_for("api", "api:1"),
                        &[tcp(7000), host_tcp(8080)],
                    ),
                    now_ms: NOW,
                },
                expect: Expect::Rejected("ports[1].published: port 8080/tcp is taken"),
                change: unchanged,
            },
            Case {
                name: "an ingress port cannot take another service's host-mode port",
                before: with_web_ports,
                cmd: Command::CreateService {
                    spec: with_ports(ServiceSpec::default_for("api", "api:1"), &[tcp(9090)]),
                    now_ms: NOW,
                },
                expect: Expect::Rejected("service \"web\" publishes it in host mode"),
                change: unchanged,
            },
            Case {
                name: "two host-mode ports, or the same number over UDP, may share a number",
                before: with_web_ports,
                cmd: Command::CreateService {
                    spec: with_ports(
                        ServiceSpec::default_for("api", "api:1"),
                        &[
                            host_tcp(9090),
                            crate::service::PortSpec::ingress(
                                8080,
                                53,
                                crate::service::Protocol::Udp,
                            ),
                        ],
                    ),
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: |s| {
                    let spec = with_ports(
                        ServiceSpec::default_for("api", "api:1"),
                        &[
                            host_tcp(9090),
                            crate::service::PortSpec::ingress(
                                8080,
                                53,
                                crate::service::Protocol::Udp,
                            ),
                        ],
                    );
                    s.create_service(&spec, NOW);
                },
            },
            // UpdateService
            Case {
                name: "an update may keep the service's own ports",
                before: with_web_ports,
                cmd: Command::UpdateService {
                    spec: with_ports(
                        ServiceSpec {
                            labels: [("tier".to_owned(), "front".to_owned())].into(),
                            ..web_spec()
                        },
                        &[tcp(8080), host_tcp(9090)],
                    ),
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: |s| {
                    let spec = with_ports(
                        ServiceSpec {
                            labels: [("tier".to_owned(), "front".to_owned())].into(),
                            ..web_spec()
                        },
                        &[tcp(8080), host_tcp(9090)],
                    );
                    s.update_service(&spec, NOW);
                },
            },
            Case {
                name: "an update cannot take another service's ingress port",
                before: || {
                    let mut s = with_web_ports();
                    s.create_service(&ServiceSpec::default_for("api", "api:1"), T0);
                    s
                },
                cmd: Command::UpdateService {
                    spec: with_ports(ServiceSpec::default_for("api", "api:1"), &[tcp(8080)]),
                    now_ms: NOW,
                },
                expect: Expect::Rejected("port 8080/tcp is taken: service \"web\""),
                change: unchanged,
            },
            Case {
                name: "a new image bumps the version",
                before: with_web,
                cmd: Command::UpdateService {
                    spec: ServiceSpec {
                        image: "nginx:1.28".to_owned(),
                        ..web_spec()
                    },
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: |s| {
                    let web = s.services.get_mut("web").unwrap();
                    web.previous_spec = Some(web.spec.clone());
                    Arc::make_mut(&mut web.spec).image = "nginx:1.28".to_owned();
                    web.version = 2;
                    web.updated_at_ms = NOW;
                    web.update = Some(UpdateStatus {
                        state: UpdateState::Updating,
                        version: 2,
                        started_at_ms: NOW,
                        completed_at_ms: 0,
                        message: "updating to version 2".to_owned(),
                        total_slots: 3,
                        failed_slots: BTreeSet::new(),
                    });
                },
            },
            Case {
                name: "new update settings change no task and start no update",
                before: with_web,
                cmd: Command::UpdateService {
                    spec: ServiceSpec {
                        update: crate::service::UpdateConfig {
                            parallelism: 3,
                            ..Default::default()
                        },
                        ..web_spec()
                    },
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: |s| {
                    let web = s.services.get_mut("web").unwrap();
                    Arc::make_mut(&mut web.spec).update.parallelism = 3;
                    web.updated_at_ms = NOW;
                },
            },
            Case {
                name: "a service's mode cannot change",
                before: with_web,
                cmd: Command::UpdateService {
                    spec: ServiceSpec {
                        mode: ServiceMode::Global,
                        ..web_spec()
                    },
                    now_ms: NOW,
                },
                expect: Expect::Rejected("its mode cannot change"),
                change: unchanged,
            },
            // DeployStack
            Case {
                name: "a stack deploy creates its services in one step",
                before: with_web,
                cmd: Command::DeployStack {
                    stack: "shop".to_owned(),
                    specs: vec![stack_spec("web", "app:1"), stack_spec("api", "api:1")],
                    prune: false,
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: |s| {
                    for spec in [stack_spec("web", "app:1"), stack_spec("api", "api:1")] {
                        s.create_service(&spec, NOW);
                    }
                },
            },
            Case {
                name: "a stack deploy updates, creates and prunes together",
                before: || {
                    applied(
                        with_web(),
                        Command::DeployStack {
                            stack: "shop".to_owned(),
                            specs: vec![stack_spec("web", "app:1"), stack_spec("old", "old:1")],
                            prune: false,
                            now_ms: T0,
                        },
                    )
                },
                cmd: Command::DeployStack {
                    stack: "shop".to_owned(),
                    specs: vec![stack_spec("web", "app:2"), stack_spec("api", "api:1")],
                    prune: true,
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: |s| {
                    s.update_service(&stack_spec("web", "app:2"), NOW);
                    s.create_service(&stack_spec("api", "api:1"), NOW);
                    s.services.remove("shop_old");
                    assert_eq!(s.services["shop_web"].version, 2);
                },
            },
            Case {
                name: "a stack deploy with one bad spec changes nothing",
                before: with_web,
                cmd: Command::DeployStack {
                    stack: "shop".to_owned(),
                    specs: vec![stack_spec("web", "app:1"), stack_spec("api", "")],
                    prune: false,
                    now_ms: NOW,
                },
                expect: Expect::Rejected("invalid image"),
                change: unchanged,
            },
            Case {
                name: "a stack cannot take over a service outside it",
                before: || {
                    applied(
                        with_web(),
                        Command::CreateService {
                            spec: ServiceSpec {
                                stack: None,
                                ..stack_spec("web", "app:1")
                            },
                            now_ms: T0,
                        },
                    )
                },
                cmd: Command::DeployStack {
                    stack: "shop".to_owned(),
                    specs: vec![stack_spec("web", "app:1")],
                    prune: false,
                    now_ms: NOW,
                },
                expect: Expect::Rejected("already exists outside stack \"shop\""),
                change: unchanged,
            },
            Case {
                name: "a stack cannot take a port another service publishes",
                before: with_web_ports,
                cmd: Command::DeployStack {
                    stack: "shop".to_owned(),
                    specs: vec![
                        stack_spec("web", "app:1"),
                        with_ports(stack_spec("api", "api:1"), &[host_tcp(8080)]),
                    ],
                    prune: false,
                    now_ms: NOW,
                },
                expect: Expect::Rejected("port 8080/tcp is taken: service \"web\""),
                change: unchanged,
            },
            Case {
                name: "two services of one stack cannot share an ingress port",
                before: with_web,
                cmd: Command::DeployStack {
                    stack: "shop".to_owned(),
                    specs: vec![
                        with_ports(stack_spec("web", "app:1"), &[tcp(8080)]),
                        with_ports(stack_spec("api", "api:1"), &[tcp(8080)]),
                    ],
                    prune: false,
                    now_ms: NOW,
                },
                expect: Expect::Rejected("service \"shop_api\" publishes it in ingress mode"),
                change: unchanged,
            },
            Case {
                name: "a stack may move a port between its services, and pruning frees ports",
                before: || {
                    let mut s = with_web();
                    s.create_service(&with_ports(stack_spec("web", "app:1"), &[tcp(8080)]), T0);
                    s.create_service(&with_ports(stack_spec("old", "old:1"), &[tcp(8081)]), T0);
                    s
                },
                cmd: Command::DeployStack {
                    stack: "shop".to_owned(),
                    specs: vec![
                        stack_spec("web", "app:1"),
                        with_ports(stack_spec("api", "api:1"), &[tcp(8080), tcp(8081)]),
                    ],
                    prune: true,
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: |s| {
                    s.update_service(&stack_spec("web", "app:1"), NOW);
                    s.create_service(
                        &with_ports(stack_spec("api", "api:1"), &[tcp(8080), tcp(8081)]),
                        NOW,
                    );
                    s.services.remove("shop_old");
                },
            },
            // RemoveStack
            Case {
                name: "removing a stack removes its services",
                before: || {
                    applied(
                        with_web(),
                        Command::DeployStack {
                            stack: "shop".to_owned(),
                            specs: vec![stack_spec("web", "app:1"), stack_spec("api", "api:1")],
                            prune: false,
                            now_ms: T0,
                        },
                    )
                },
                cmd: Command::RemoveStack {
                    stack: "shop".to_owned(),
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: |s| {
                    s.services.remove("shop_web");
                    s.services.remove("shop_api");
                },
            },
            Case {
                name: "removing an unknown stack is refused",
                before: with_web,
                cmd: Command::RemoveStack {
                    stack: "shop".to_owned(),
                    now_ms: NOW,
                },
                expect: Expect::Rejected("no stack named \"shop\""),
                change: unchanged,
            },
            // RollbackService
            Case {
                name: "a rollback restores the previous template, keeps the replicas",
                before: || {
                    let s = applied(
                        with_web(),
                        Command::UpdateService {
                            spec: ServiceSpec {
                                image: "nginx:1.28".to_owned(),
                                ..web_spec()
                            },
                            now_ms: T0,
                        },
                    );
                    applied(
                        s,
                        Command::ScaleService {
                            name: "web".to_owned(),
                            replicas: 5,
                            now_ms: T0,
                        },
                    )
                },
                cmd: Command::RollbackService {
                    name: "web".to_owned(),
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: |s| {
                    let web = s.services.get_mut("web").unwrap();
                    web.previous_spec = Some(web.spec.clone());
                    Arc::make_mut(&mut web.spec).image = web_spec().image;
                    web.version = 3;
                    web.updated_at_ms = NOW;
                    web.update = Some(UpdateStatus {
                        state: UpdateState::RollingBack,
                        version: 3,
                        started_at_ms: NOW,
                        completed_at_ms: 0,
                        message: "rollback requested".to_owned(),
                        total_slots: 5,
                        failed_slots: BTreeSet::new(),
                    });
                },
            },
            Case {
                name: "a service never updated has nothing to roll back to",
                before: with_web,
                cmd: Command::RollbackService {
                    name: "web".to_owned(),
                    now_ms: NOW,
                },
                expect: Expect::Rejected("no previous spec"),
                change: unchanged,
            },
            Case {
                name: "an update of the replica count alone is a scale",
                before: with_web,
                cmd: Command::UpdateService {
                    spec: ServiceSpec {
                        mode: ServiceMode::Replicated { replicas: 7 },
                        ..web_spec()
                    },
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: |s| {
                    let web = s.services.get_mut("web").unwrap();
                    Arc::make_mut(&mut web.spec).mode = ServiceMode::Replicated { replicas: 7 };
                    web.updated_at_ms = NOW;
                },
            },
            Case {
                name: "an identical spec changes nothing",
                before: with_web,
                cmd: Command::UpdateService {
                    spec: web_spec(),
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: unchanged,
            },
            Case {
                name: "updating an unknown service is refused",
                before: with_web,
                cmd: Command::UpdateService {
                    spec: ServiceSpec::default_for("api", "nginx"),
                    now_ms: NOW,
                },
                expect: Expect::Rejected("no service named \"api\""),
                change: unchanged,
            },
            Case {
                name: "an update to an invalid spec is refused",
                before: with_web,
                cmd: Command::UpdateService {
                    spec: ServiceSpec::default_for("web", ""),
                    now_ms: NOW,
                },
                expect: Expect::Rejected("invalid image"),
                change: unchanged,
            },
            // ScaleService
            Case {
                name: "scale keeps the version",
                before: with_task,
                cmd: Command::ScaleService {
                    name: "web".to_owned(),
                    replicas: 10,
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: |s| {
                    let web = s.services.get_mut("web").unwrap();
                    Arc::make_mut(&mut web.spec).mode = ServiceMode::Replicated { replicas: 10 };
                    web.updated_at_ms = NOW;
                },
            },
            Case {
                name: "scaling a global service is refused",
                before: || {
                    applied(
                        manager_and_worker(),
                        Command::CreateService {
                            spec: ServiceSpec {
                                mode: ServiceMode::Global,
                                ..web_spec()
                            },
                            now_ms: T0,
                        },
                    )
                },
                cmd: Command::ScaleService {
                    name: "web".to_owned(),
                    replicas: 2,
                    now_ms: NOW,
                },
                expect: Expect::Rejected("is global"),
                change: unchanged,
            },
            Case {
                name: "scaling an unknown service is refused",
                before: with_web,
                cmd: Command::ScaleService {
                    name: "api".to_owned(),
                    replicas: 2,
                    now_ms: NOW,
                },
                expect: Expect::Rejected("no service named \"api\""),
                change: unchanged,
            },
            Case {
                name: "scaling beyond the limit is refused",
                before: with_web,
                cmd: Command::ScaleService {
                    name: "web".to_owned(),
                    replicas: MAX_REPLICAS + 1,
                    now_ms: NOW,
                },
                expect: Expect::Rejected("allowed 0 to 100000"),
                change: unchanged,
            },
            // RemoveService
            Case {
                name: "remove a service: its tasks are asked to shut down and stay",
                before: with_task,
                cmd: Command::RemoveService {
                    name: "web".to_owned(),
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: |s| {
                    s.services.remove("web");
                    let t = task(s);
                    t.desired_state = DesiredState::Shutdown;
                    t.message = "service removed".to_owned();
                    t.updated_at_ms = NOW;
                },
            },
            Case {
                name: "removing an unknown service is refused",
                before: with_web,
                cmd: Command::RemoveService {
                    name: "api".to_owned(),
                    now_ms: NOW,
                },
                expect: Expect::Rejected("no service named \"api\""),
                change: unchanged,
            },
            // ApplyTaskChanges
            Case {
                name: "create takes the next id and copies the spec; assign moves it on",
                before: with_web,
                cmd: changes(vec![
                    TaskChange::Create {
                        service: "web".to_owned(),
                        slot: 1,
                        node_id: None,
                        restart_count: 0,
                    },
                    TaskChange::Assign {
                        task_id: first_task(),
                        node_id: 2,
                    },
                ]),
                expect: Expect::Ok,
                change: |s| {
                    let mut t = pending_task(NOW);
                    t.node_id = Some(2);
                    t.state = TaskState::Assigned;
                    t.message = "assigned".to_owned();
                    s.tasks.insert(t.id.clone(), t);
                    s.next_task_seq = 1;
                },
            },
            Case {
                name: "changes that no longer apply are skipped",
                before: with_task,
                cmd: changes(vec![
                    // Slot 1 already has a live task of this version.
                    TaskChange::Create {
                        service: "web".to_owned(),
                        slot: 1,
                        node_id: None,
                        restart_count: 0,
                    },
                    TaskChange::Create {
                        service: "gone".to_owned(),
                        slot: 1,
                        node_id: None,
                        restart_count: 0,
                    },
                    // A replicated service has no global slot.
                    TaskChange::Create {
                        service: "web".to_owned(),
                        slot: 0,
                        node_id: Some(2),
                        restart_count: 0,
                    },
                    TaskChange::Assign {
                        task_id: first_task(),
                        node_id: 1,
                    },
                    TaskChange::Assign {
                        task_id: "nope".to_owned(),
                        node_id: 1,
                    },
                    TaskChange::Unassignable {
                        task_id: first_task(),
                        reason: "not pending any more".to_owned(),
                    },
                    TaskChange::MarkState {
                        task_id: first_task(),
                        state: TaskState::Pending,
                        message: "backwards".to_owned(),
                    },
                    TaskChange::SetDesired {
                        task_id: first_task(),
                        desired: DesiredState::Running,
                        reason: String::new(),
                    },
                    TaskChange::Delete {
                        task_id: first_task(),
                    },
                ]),
                expect: Expect::Ok,
                change: unchanged,
            },
            Case {
                name: "the leader shuts down and orphans a task, then deletes it",
                before: with_task,
                cmd: changes(vec![
                    TaskChange::SetDesired {
                        task_id: first_task(),
                        desired: DesiredState::Shutdown,
                        reason: "node 2 is down".to_owned(),
                    },
                    TaskChange::MarkState {
                        task_id: first_task(),
                        state: TaskState::Orphaned,
                        message: "node 2 is down".to_owned(),
                    },
                    TaskChange::MarkState {
                        task_id: first_task(),
                        state: TaskState::Shutdown,
                        message: "terminal is final".to_owned(),
                    },
                    TaskChange::Delete {
                        task_id: first_task(),
                    },
                ]),
                expect: Expect::Ok,
                change: |s| {
                    s.tasks.clear();
                },
            },
            Case {
                name: "an unplaceable task keeps its state and carries the reason",
                before: || {
                    applied(
                        with_web(),
                        Command::ApplyTaskChanges {
                            changes: vec![TaskChange::Create {
                                service: "web".to_owned(),
                                slot: 1,
                                node_id: None,
                                restart_count: 0,
                            }],
                            now_ms: T0,
                        },
                    )
                },
                cmd: changes(vec![TaskChange::Unassignable {
                    task_id: first_task(),
                    reason: "insufficient memory on 2 nodes (needs 1GiB)".to_owned(),
                }]),
                expect: Expect::Ok,
                change: |s| {
                    let t = task(s);
                    t.message = "insufficient memory on 2 nodes (needs 1GiB)".to_owned();
                    t.updated_at_ms = NOW;
                },
            },
            Case {
                name: "task changes before init are refused",
                before: empty,
                cmd: changes(vec![]),
                expect: Expect::Rejected("not initialised"),
                change: unchanged,
            },
            // SetNodeEngine
            Case {
                name: "a node reports its engine unreachable",
                before: manager_and_worker,
                cmd: Command::SetNodeEngine {
                    id: 2,
                    error: Some("docker: connection refused".to_owned()),
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: |s| {
                    let n = s.nodes.get_mut(&2).unwrap();
                    n.engine_error = Some("docker: connection refused".to_owned());
                    n.updated_at_ms = NOW;
                },
            },
            Case {
                name: "an unknown node's engine report is refused",
                before: manager_and_worker,
                cmd: Command::SetNodeEngine {
                    id: 9,
                    error: None,
                    now_ms: NOW,
                },
                expect: Expect::Rejected("node 9 is not a member"),
                change: unchanged,
            },
            // ReportTaskStatus
            Case {
                name: "an agent reports its task running",
                before: with_task,
                cmd: report(2, TaskState::Running),
                expect: Expect::Ok,
                change: |s| {
                    let t = task(s);
                    t.state = TaskState::Running;
                    t.message = "now running".to_owned();
                    t.container_id = Some("c0ffee".to_owned());
                    t.updated_at_ms = NOW;
                    t.state_changed_at_ms = NOW;
                    t.running_since_ms = Some(NOW);
                },
            },
            Case {
                name: "another node's report is ignored",
                before: with_task,
                cmd: report(1, TaskState::Running),
                expect: Expect::Ok,
                change: unchanged,
            },
            Case {
                name: "a task never moves backwards",
                before: || applied(with_task(), report(2, TaskState::Running)),
                cmd: report(2, TaskState::Starting),
                expect: Expect::Ok,
                change: unchanged,
            },
            Case {
                name: "a terminal state is final",
                before: || applied(with_task(), report(2, TaskState::Failed)),
                cmd: report(2, TaskState::Orphaned),
                expect: Expect::Ok,
                change: unchanged,
            },
            Case {
                name: "reports before init are refused",
                before: empty,
                cmd: report(2, TaskState::Running),
                expect: Expect::Rejected("not initialised"),
                change: unchanged,
            },
        ]
    }

    #[derive(Default)]
    struct Update {
        availability: Option<Availability>,
        labels_add: BTreeMap<String, String>,
        labels_rm: Vec<String>,
        name: Option<String>,
    }

    fn update(id: NodeId, update: Update) -> Command {
        Command::UpdateNode {
            id,
            availability: update.availability,
            labels_add: update.labels_add,
            labels_rm: update.labels_rm,
            name: update.name,
            now_ms: NOW,
        }
    }

    fn cases() -> Vec<Case> {
        vec![
            // InitCluster
            Case {
                name: "init registers manager 1 and stores CA and tokens",
                before: empty,
                cmd: init_cmd(NOW),
                expect: Expect::Ok,
                change: |s| {
                    s.cluster_id = "c1".to_owned();
                    s.created_at_ms = NOW;
                    s.ca = Some(ca());
                    for (role, hash) in [(Role::Manager, "mhash"), (Role::Worker, "whash")] {
                        s.tokens.insert(
                            role,
                            TokenRecord {
                                secret_hash: hash.to_owned(),
                                generation: 1,
                                rotated_at_ms: NOW,
                            },
                        );
                    }
                    s.nodes.insert(
                        1,
                        NodeRecord {
                            id: 1,
                            name: "m1".to_owned(),
                            addr: "10.0.0.1:4240".to_owned(),
                            role: Role::Manager,
                            availability: Availability::Active,
                            status: NodeStatus::Ready,
                            status_message: String::new(),
                            labels: BTreeMap::new(),
                            resources: new_node("", "", Role::Manager).resources,
                            version: "0.1.0".to_owned(),
                            joined_at_ms: NOW,
                            status_changed_at_ms: NOW,
                            updated_at_ms: NOW,
                            engine_error: None,
                        },
                    );
                    s.next_node_id = 2;
                },
            },
            Case {
                name: "init makes the first node a manager even if it asked to be a worker",
                before: empty,
                cmd: init("c1", Role::Worker, NOW),
                expect: Expect::Ok,
                change: |s| {
                    *s = applied(empty(), init_cmd(NOW));
                },
            },
            Case {
                name: "init twice is refused",
                before: one_manager,
                cmd: init_cmd(NOW),
                expect: Expect::Rejected("already initialised"),
                change: unchanged,
            },
            Case {
                name: "init without a cluster id is refused",
                before: empty,
                cmd: init("", Role::Manager, NOW),
                expect: Expect::Rejected("cluster id"),
                change: unchanged,
            },
            // RegisterNode
            Case {
                name: "register assigns the next id, ready and active",
                before: one_manager,
                cmd: Command::RegisterNode {
                    node: new_node("w1", "10.0.0.2:4240", Role::Worker),
                    now_ms: NOW,
                },
                expect: Expect::Registered(2),
                change: |s| {
                    let mut record = s.nodes[&1].clone();
                    record.id = 2;
                    record.name = "w1".to_owned();
                    record.addr = "10.0.0.2:4240".to_owned();
                    record.role = Role::Worker;
                    record.joined_at_ms = NOW;
                    record.status_changed_at_ms = NOW;
                    record.updated_at_ms = NOW;
                    s.nodes.insert(2, record);
                    s.next_node_id = 3;
                },
            },
            Case {
                name: "register never reuses a removed node's id",
                before: || {
                    applied(
                        manager_and_worker(),
                        Command::RemoveNode { id: 2, now_ms: T0 },
                    )
                },
                cmd: Command::RegisterNode {
                    node: new_node("w1", "10.0.0.2:4240", Role::Worker),
                    now_ms: NOW,
                },
                expect: Expect::Registered(3),
                change: |s| {
                    let mut record = manager_and_worker().nodes[&2].clone();
                    record.id = 3;
                    record.joined_at_ms = NOW;
                    record.status_changed_at_ms = NOW;
                    record.updated_at_ms = NOW;
                    s.nodes.insert(3, record);
                    s.next_node_id = 4;
                },
            },
            Case {
                name: "register with a taken name is refused",
                before: manager_and_worker,
                cmd: Command::RegisterNode {
                    node: new_node("w1", "10.0.0.9:4240", Role::Worker),
                    now_ms: NOW,
                },
                expect: Expect::Rejected("already used by node 2"),
                change: unchanged,
            },
            Case {
                name: "register with a taken address is refused",
                before: manager_and_worker,
                cmd: Command::RegisterNode {
                    node: new_node("w9", "10.0.0.2:4240", Role::Worker),
                    now_ms: NOW,
                },
                expect: Expect::Rejected("address 10.0.0.2:4240 is already used by node 2"),
                change: unchanged,
            },
            Case {
                name: "register before init is refused",
                before: empty,
                cmd: Command::RegisterNode {
                    node: new_node("w1", "10.0.0.2:4240", Role::Worker),
                    now_ms: NOW,
                },
                expect: Expect::Rejected("not initialised"),
                change: unchanged,
            },
            Case {
                name: "register with an empty name is refused",
                before: one_manager,
                cmd: Command::RegisterNode {
                    node: new_node("", "10.0.0.2:4240", Role::Worker),
                    now_ms: NOW,
                },
                expect: Expect::Rejected("name must not be empty"),
                change: unchanged,
            },
            // SetNodeStatus
            Case {
                name: "status change stamps both times and ignores unknown ids",
                before: manager_and_worker,
                cmd: Command::SetNodeStatus {
                    updates: vec![
                        (2, NodeStatus::Down, "heartbeat missed".to_owned()),
                        (99, NodeStatus::Down, String::new()),
                    ],
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: |s| {
                    let w = node(s, 2);
                    w.status = NodeStatus::Down;
                    w.status_message = "heartbeat missed".to_owned();
                    w.status_changed_at_ms = NOW;
                    w.updated_at_ms = NOW;
                },
            },
            Case {
                name: "unchanged status bumps nothing",
                before: manager_and_worker,
                cmd: Command::SetNodeStatus {
                    updates: vec![(2, NodeStatus::Ready, String::new())],
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: unchanged,
            },
            Case {
                name: "a new message alone keeps the status time",
                before: manager_and_worker,
                cmd: Command::SetNodeStatus {
                    updates: vec![(2, NodeStatus::Ready, "disk almost full".to_owned())],
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: |s| {
                    let w = node(s, 2);
                    w.status_message = "disk almost full".to_owned();
                    w.updated_at_ms = NOW;
                },
            },
            // SetNodeRole
            Case {
                name: "promote a worker",
                before: manager_and_worker,
                cmd: Command::SetNodeRole {
                    id: 2,
                    role: Role::Manager,
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: |s| {
                    let w = node(s, 2);
                    w.role = Role::Manager;
                    w.updated_at_ms = NOW;
                },
            },
            Case {
                name: "demote one of two managers",
                before: two_managers,
                cmd: Command::SetNodeRole {
                    id: 1,
                    role: Role::Worker,
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: |s| {
                    let m = node(s, 1);
                    m.role = Role::Worker;
                    m.updated_at_ms = NOW;
                },
            },
            Case {
                name: "demoting the last manager is refused",
                before: manager_and_worker,
                cmd: Command::SetNodeRole {
                    id: 1,
                    role: Role::Worker,
                    now_ms: NOW,
                },
                expect: Expect::Rejected("last manager"),
                change: unchanged,
            },
            Case {
                name: "setting the current role bumps nothing",
                before: manager_and_worker,
                cmd: Command::SetNodeRole {
                    id: 2,
                    role: Role::Worker,
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: unchanged,
            },
            Case {
                name: "role of an unknown node is refused",
                before: manager_and_worker,
                cmd: Command::SetNodeRole {
                    id: 7,
                    role: Role::Manager,
                    now_ms: NOW,
                },
                expect: Expect::Rejected("node 7 is not a member"),
                change: unchanged,
            },
            // UpdateNode
            Case {
                name: "update availability, labels and name together",
                before: || {
                    let mut s = manager_and_worker();
                    node(&mut s, 2)
                        .labels
                        .insert("zone".to_owned(), "eu".to_owned());
                    node(&mut s, 2)
                        .labels
                        .insert("old".to_owned(), "x".to_owned());
                    s
                },
                cmd: update(
                    2,
                    Update {
                        availability: Some(Availability::Drain),
                        labels_add: BTreeMap::from([("zone".to_owned(), "us".to_owned())]),
                        labels_rm: vec!["old".to_owned(), "zone".to_owned(), "absent".to_owned()],
                        name: Some("w-renamed".to_owned()),
                    },
                ),
                expect: Expect::Ok,
                change: |s| {
                    let w = node(s, 2);
                    w.availability = Availability::Drain;
                    w.labels = BTreeMap::from([("zone".to_owned(), "us".to_owned())]);
                    w.name = "w-renamed".to_owned();
                    w.updated_at_ms = NOW;
                },
            },
            Case {
                name: "an update that changes nothing bumps nothing",
                before: manager_and_worker,
                cmd: update(
                    2,
                    Update {
                        availability: Some(Availability::Active),
                        name: Some("w1".to_owned()),
                        ..Default::default()
                    },
                ),
                expect: Expect::Ok,
                change: unchanged,
            },
            Case {
                name: "renaming to a taken name is refused",
                before: manager_and_worker,
                cmd: update(
                    2,
                    Update {
                        availability: Some(Availability::Pause),
                        name: Some("m1".to_owned()),
                        ..Default::default()
                    },
                ),
                expect: Expect::Rejected("already used by node 1"),
                change: unchanged,
            },
            Case {
                name: "an empty label key is refused",
                before: manager_and_worker,
                cmd: update(
                    2,
                    Update {
                        availability: Some(Availability::Pause),
                        labels_add: BTreeMap::from([(String::new(), "v".to_owned())]),
                        ..Default::default()
                    },
                ),
                expect: Expect::Rejected("label key"),
                change: unchanged,
            },
            Case {
                name: "updating an unknown node is refused",
                before: manager_and_worker,
                cmd: update(9, Update::default()),
                expect: Expect::Rejected("node 9 is not a member"),
                change: unchanged,
            },
            // RefreshNode
            Case {
                name: "refresh records new facts",
                before: manager_and_worker,
                cmd: Command::RefreshNode {
                    id: 2,
                    addr: "10.0.0.5:4240".to_owned(),
                    resources: Resources {
                        nano_cpus: 4_000_000_000,
                        memory_bytes: 2 << 30,
                    },
                    version: "0.2.0".to_owned(),
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: |s| {
                    let w = node(s, 2);
                    w.addr = "10.0.0.5:4240".to_owned();
                    w.resources = Resources {
                        nano_cpus: 4_000_000_000,
                        memory_bytes: 2 << 30,
                    };
                    w.version = "0.2.0".to_owned();
                    w.updated_at_ms = NOW;
                },
            },
            Case {
                name: "refresh with the same facts bumps nothing",
                before: manager_and_worker,
                cmd: Command::RefreshNode {
                    id: 2,
                    addr: "10.0.0.2:4240".to_owned(),
                    resources: new_node("", "", Role::Worker).resources,
                    version: "0.1.0".to_owned(),
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: unchanged,
            },
            Case {
                name: "refresh onto another node's address is refused",
                before: manager_and_worker,
                cmd: Command::RefreshNode {
                    id: 2,
                    addr: "10.0.0.1:4240".to_owned(),
                    resources: Resources::default(),
                    version: "0.2.0".to_owned(),
                    now_ms: NOW,
                },
                expect: Expect::Rejected("already used by node 1"),
                change: unchanged,
            },
            Case {
                name: "refresh of an unknown node is refused",
                before: manager_and_worker,
                cmd: Command::RefreshNode {
                    id: 3,
                    addr: "10.0.0.3:4240".to_owned(),
                    resources: Resources::default(),
                    version: "0.2.0".to_owned(),
                    now_ms: NOW,
                },
                expect: Expect::Rejected("node 3 is not a member"),
                change: unchanged,
            },
            // RemoveNode
            Case {
                name: "remove a worker",
                before: manager_and_worker,
                cmd: Command::RemoveNode { id: 2, now_ms: NOW },
                expect: Expect::Ok,
                change: |s| {
                    s.nodes.remove(&2);
                    s.revoked.insert(2);
                },
            },
            Case {
                name: "remove one of two managers",
                before: two_managers,
                cmd: Command::RemoveNode { id: 1, now_ms: NOW },
                expect: Expect::Ok,
                change: |s| {
                    s.nodes.remove(&1);
                    s.revoked.insert(1);
                },
            },
            Case {
                name: "removing the last manager is refused",
                before: manager_and_worker,
                cmd: Command::RemoveNode { id: 1, now_ms: NOW },
                expect: Expect::Rejected("last manager"),
                change: unchanged,
            },
            Case {
                name: "removing an unknown node is refused",
                before: manager_and_worker,
                cmd: Command::RemoveNode { id: 5, now_ms: NOW },
                expect: Expect::Rejected("node 5 is not a member"),
                change: unchanged,
            },
            // RotateToken
            Case {
                name: "rotate the worker token",
                before: one_manager,
                cmd: Command::RotateToken {
                    role: Role::Worker,
                    secret_hash: "new".to_owned(),
                    now_ms: NOW,
                },
                expect: Expect::Ok,
                change: |s| {
                    s.tokens.insert(
                        Role::Worker,
                        TokenRecord {
                            secret_hash: "new".to_owned(),
                            generation: 2,
                            rotated_at_ms: NOW,
                        },
                    );
                },
            },
            Case {
                name: "rotating to an empty hash is refused",
                before: one_manager,
                cmd: Command::RotateToken {
                    role: Role::Manager,
                    secret_hash: String::new(),
                    now_ms: NOW,
                },
                expect: Expect::Rejected("hash must not be empty"),
                change: unchanged,
            },
            Case {
                name: "rotating before init is refused",
                before: empty,
                cmd: Command::RotateToken {
                    role: Role::Manager,
                    secret_hash: "h".to_owned(),
                    now_ms: NOW,
                },
                expect: Expect::Rejected("not initialised"),
                change: unchanged,
            },
            // Noop
            Case {
                name: "noop on an empty cluster",
                before: empty,
                cmd: Command::Noop { now_ms: NOW },
                expect: Expect::Ok,
                change: unchanged,
            },
            Case {
                name: "noop on a cluster",
                before: manager_and_worker,
                cmd: Command::Noop { now_ms: NOW },
                expect: Expect::Ok,
                change: unchanged,
            },
        ]
    }

    #[test]
    fn apply_table() {
        let mut cases = cases();
        cases.extend(service_cases());
        for case in &cases {
            check(case);
        }
        let covered: BTreeSet<&str> = cases.iter().map(|case| variant(&case.cmd)).collect();
        let rejected: BTreeSet<&str> = cases
            .iter()
            .filter(|case| matches!(case.expect, Expect::Rejected(_)))
            .map(|case| variant(&case.cmd))
            .collect();
        let all = BTreeSet::from(ALL_VARIANTS);
        assert_eq!(covered, all, "every command variant has a case");
        let never_refused = BTreeSet::from(["SetNodeStatus", "Noop"]);
        assert_eq!(
            rejected,
            &all - &never_refused,
            "every refusable variant has a refusal case"
        );
    }

    fn history() -> Vec<Command> {
        let mut commands = vec![init_cmd(T0)];
        for i in 0..20u64 {
            commands.push(Command::RegisterNode {
                node: new_node(
                    &format!("n{i}"),
                    &format!("10.0.1.{i}:4240"),
                    if i % 3 == 0 {
                        Role::Manager
                    } else {
                        Role::Worker
                    },
                ),
                now_ms: T0 + i,
            });
        }
        commands.push(Command::SetNodeStatus {
            updates: (2..12)
                .map(|id| (id, NodeStatus::Down, format!("lost {id}")))
                .collect(),
            now_ms: NOW,
        });
        commands.push(update(
            5,
            Update {
                labels_add: BTreeMap::from([
                    ("b".to_owned(), "2".to_owned()),
                    ("a".to_owned(), "1".to_owned()),
                ]),
                ..Default::default()
            },
        ));
        commands.push(Command::RemoveNode { id: 7, now_ms: NOW });
        commands.push(Command::RemoveNode { id: 1, now_ms: NOW });
        commands.push(Command::RotateToken {
            role: Role::Worker,
            secret_hash: "w2".to_owned(),
            now_ms: NOW,
        });
        // A refused command is part of a history too.
        commands.push(Command::RemoveNode { id: 7, now_ms: NOW });
        commands.push(Command::CreateService {
            spec: web_spec(),
            now_ms: NOW,
        });
        let created = (1..=3).map(|slot| TaskChange::Create {
            service: "web".to_owned(),
            slot,
            node_id: None,
            restart_count: 0,
        });
        commands.push(changes(created.collect()));
        commands.push(changes(vec![TaskChange::Assign {
            task_id: first_task(),
            node_id: 13,
        }]));
        commands.push(report(13, TaskState::Running));
        commands.push(Command::ScaleService {
            name: "web".to_owned(),
            replicas: 1,
            now_ms: NOW,
        });
        commands.push(Command::RemoveService {
            name: "web".to_owned(),
            now_ms: NOW,
        });
        commands
    }

    #[test]
    fn a_batch_entry_applies_like_its_commands_one_by_one() {
        let commands = history();
        let mut one_by_one = ClusterState::default();
        let singles: Vec<Response> = commands
            .iter()
            .map(|c| LogPayload::V1(c.clone()).apply(&mut one_by_one))
            .collect();
        assert!(
            singles.iter().any(Response::is_rejected),
            "the history has a refusal"
        );
        let mut batched = ClusterState::default();
        let batch = LogPayload::V1Batch(commands);
        let batch: LogPayload = codec::decode(&codec::encode(&batch).unwrap()).unwrap();
        assert_eq!(batch.apply(&mut batched), Response::Batch(singles));
        assert_eq!(batched, one_by_one);
    }

    #[test]
    fn apply_is_deterministic() {
        let run = |commands: &[Command]| {
            let mut state = ClusterState::default();
            let responses: Vec<Response> = commands.iter().map(|c| apply(&mut state, c)).collect();
            (codec::encode(&state).unwrap(), responses)
        };
        let commands = history();
        let first = run(&commands);
        let second = run(&commands);
        assert_eq!(first, second);

        // The same history read back from the log format gives the same state.
        let logged: Vec<LogPayload> = commands.iter().cloned().map(LogPayload::V1).collect();
        let decoded: Vec<LogPayload> = codec::decode(&codec::encode(&logged).unwrap()).unwrap();
        let replayed: Vec<Command> = decoded
            .into_iter()
            .flat_map(|payload| match payload {
                LogPayload::V1(command) => vec![command],
                LogPayload::V1Batch(commands) => commands,
                LogPayload::V2(proposed) => proposed.into_iter().map(|p| p.command).collect(),
            })
            .collect();
        assert_eq!(run(&replayed), first);

        let state: ClusterState = codec::decode(&first.0).unwrap();
        assert_eq!(state.nodes.len(), 19);
        assert_eq!(state.tasks.len(), 3);
        assert_eq!(state.tasks[&first_task()].state, TaskState::Running);
        assert!(state
            .tasks
            .values()
            .all(|t| t.desired_state == DesiredState::Shutdown));
        assert!(first.1.iter().filter(|r| r.is_rejected()).count() == 1);
    }

    #[test]
    fn resolve_by_id_name_and_unique_prefix() {
        let mut state = one_manager();
        for (name, id) in [("w2", 2), ("3", 3)] {
            let cmd = Command::RegisterNode {
                node: new_node(name, &format!("10.0.0.{id}:1"), Role::Worker),
                now_ms: T0,
            };
            assert_eq!(apply(&mut state, &cmd), Response::NodeRegistered { id });
        }
        state.next_node_id = 12;
        let cmd = Command::RegisterNode {
            node: new_node("w12", "10.0.0.12:1", Role::Worker),
            now_ms: T0,
        };
        assert_eq!(apply(&mut state, &cmd), Response::NodeRegistered { id: 12 });

        let cases: [(&str, Option<NodeId>); 8] = [
            ("1", Some(1)),   // an exact id beats the prefix of 12
            ("12", Some(12)), // exact id
            ("3", Some(3)),   // the id 3 beats the name "3" (which is node 3 anyway)
            ("m1", Some(1)),  // exact name
            ("w2", Some(2)),  // exact name
            ("w", None),      // names do not match by prefix
            ("", None),       // nothing
            ("4", None),      // no id starts with 4
        ];
        for (key, want) in cases {
            assert_eq!(state.resolve(key).map(|n| n.id), want, "resolve({key:?})");
        }

        // A prefix matching one node resolves; one matching two does not.
        let cmd = Command::RemoveNode { id: 1, now_ms: T0 };
        let mut without_one = state.clone();
        without_one.nodes.get_mut(&2).unwrap().role = Role::Manager;
        assert_eq!(apply(&mut without_one, &cmd), Response::Ok);
        assert_eq!(without_one.resolve("1").map(|n| n.id), Some(12));
        let cmd = Command::RegisterNode {
            node: new_node("w13", "10.0.0.13:1", Role::Worker),
            now_ms: T0,
        };
        assert_eq!(
            apply(&mut without_one, &cmd),
            Response::NodeRegistered { id: 13 }
        );
        assert_eq!(without_one.resolve("1").map(|n| n.id), None);
    }

    #[test]
    fn helpers_list_managers_and_names() {
        let state = two_managers();
        let managers: Vec<NodeId> = state.managers().map(|n| n.id).collect();
        assert_eq!(managers, [1, 2]);
        assert_eq!(
            manager_and_worker()
                .workers()
                .map(|n| n.id)
                .collect::<Vec<_>>(),
            [2]
        );
        assert_eq!(state.node_by_name("m2").map(|n| n.id), Some(2));
        assert_eq!(state.node_by_addr("10.0.0.1:4240").map(|n| n.id), Some(1));
        assert_eq!(state.token(Role::Worker).unwrap().secret_hash, "whash");
        assert_eq!(init_cmd(42).now_ms(), 42);
    }

    #[test]
    fn ca_key_stays_out_of_debug_output() {
        let text = format!("{:?}", init_cmd(1));
        assert!(!text.contains("KEY"), "{text}");
        assert!(text.contains("redacted"));
    }

    /// "web" updated to nginx:1.28, so a rollback has somewhere to go.
    fn with_web_updated() -> ClusterState {
        applied(
            with_web(),
            Command::UpdateService {
                spec: ServiceSpec {
                    image: "nginx:1.28".to_owned(),
                    ..web_spec()
                },
                now_ms: T0,
            },
        )
    }

    fn rollback(now_ms: u64) -> Command {
        Command::RollbackService {
            name: "web".to_owned(),
            now_ms,
        }
    }

    fn request(nonce: u64) -> Option<RequestId> {
        Some(RequestId::new(7, nonce))
    }

    #[test]
    fn a_request_applied_twice_changes_the_state_once_and_answers_the_first_outcome() {
        // A rollback run twice undoes itself: the case that made ids necessary.
        let mut state = with_web_updated();
        let first = apply_request(&mut state, request(1), &rollback(NOW));
        assert_eq!(first, Response::Ok);
        assert_eq!(state.services["web"].spec.image, "nginx:1.27");
        let once = state.clone();
        let again = apply_request(&mut state, request(1), &rollback(NOW + 5));
        assert_eq!(again, first);
        assert_eq!(state, once, "the second proposal changed the state");

        // The recorded outcome is the first one, refusals included: a node
        // registered under a request answers with its id, not with "taken".
        let register = Command::RegisterNode {
            node: new_node("w9", "10.0.0.9:4240", Role::Worker),
            now_ms: NOW,
        };
        let registered = apply_request(&mut state, request(2), &register);
        assert_eq!(registered, Response::NodeRegistered { id: 3 });
        assert_eq!(apply_request(&mut state, request(2), &register), registered);
        assert_eq!(state.nodes.len(), 3);

        // A refusal is an outcome too: the retry does not get a second chance
        // at a change the first attempt was refused.
        let mut state = with_web();
        let no_previous = apply_request(&mut state, request(4), &rollback(NOW));
        assert!(no_previous.is_rejected(), "{no_previous:?}");
        state.services.get_mut("web").unwrap().previous_spec =
            Some(with_web_updated().services["web"].spec.clone());
        assert_eq!(
            apply_request(&mut state, request(4), &rollback(NOW)),
            no_previous
        );
        assert_eq!(state.services["web"].spec.image, "nginx:1.27");
    }

    #[test]
    fn different_request_ids_and_no_id_apply_every_time() {
        let mut state = with_web_updated();
        assert_eq!(
            apply_request(&mut state, request(1), &rollback(NOW)),
            Response::Ok
        );
        assert_eq!(state.services["web"].spec.image, "nginx:1.27");
        assert_eq!(
            apply_request(&mut state, request(2), &rollback(NOW)),
            Response::Ok
        );
        assert_eq!(state.services["web"].spec.image, "nginx:1.28");
        assert_eq!(
            apply_request(&mut state, None, &rollback(NOW)),
            Response::Ok
        );
        assert_eq!(state.services["web"].spec.image, "nginx:1.27");
        assert_eq!(
            apply_request(&mut state, None, &rollback(NOW)),
            Response::Ok
        );
        assert_eq!(state.services["web"].spec.image, "nginx:1.28");
        // Another write of the same operation is another id.
        let second_write = request(1).map(|id| id.write(1));
        assert_eq!(
            apply_request(&mut state, second_write, &rollback(NOW)),
            Response::Ok
        );
        assert_eq!(state.services["web"].spec.image, "nginx:1.27");
        assert_eq!(
            state.requests.len(),
            3,
            "commands without an id are not kept"
        );
    }

    #[test]
    fn a_v2_entry_deduplicates_within_and_across_entries() {
        let proposed = |nonce: Option<u64>| Proposed {
            request: nonce.and_then(request),
            command: rollback(NOW),
        };
        let entry = LogPayload::V2(vec![proposed(Some(1)), proposed(Some(1)), proposed(None)]);
        let entry: LogPayload = codec::decode(&codec::encode(&entry).unwrap()).unwrap();
        let mut state = with_web_updated();
        assert_eq!(
            entry.apply(&mut state),
            Response::Batch(vec![Response::Ok, Response::Ok, Response::Ok])
        );
        // Applied twice in all (the first and the id-less one), not three times.
        assert_eq!(state.services["web"].spec.image, "nginx:1.28");
        assert_eq!(state.services["web"].version, 4);
        // The same entry proposed again (a retry after a commit timeout):
        // only the id-less command runs.
        entry.apply(&mut state);
        assert_eq!(state.services["web"].spec.image, "nginx:1.27");
        assert_eq!(state.services["web"].version, 5);
    }

    #[test]
    fn the_request_record_is_bounded_and_evicts_the_oldest_first() {
        let run = || {
            let mut state = one_manager();
            for nonce in 0..10 {
                let cmd = Command::Noop { now_ms: NOW };
                apply_request_within(&mut state, request(nonce), &cmd, 4);
            }
            state
        };
        let state = run();
        let kept: Vec<u64> = state.requests.ids().map(|id| id.nonce).collect();
        assert_eq!(kept, [6, 7, 8, 9]);
        assert!(state.requests.outcome(RequestId::new(7, 5)).is_none());
        assert_eq!(
            state.requests.outcome(RequestId::new(7, 9)),
            Some(&Response::Ok)
        );
        assert_eq!(run().requests, state.requests, "eviction is deterministic");

        // An evicted id is a new request again: what the bound must make
        // impossible for a retry, which is why it outlasts the request timeout.
        let mut state = with_web_updated();
        apply_request_within(&mut state, request(100), &rollback(NOW), 2);
        for nonce in 0..2 {
            apply_request_within(
                &mut state,
                request(nonce),
                &Command::Noop { now_ms: NOW },
                2,
            );
        }
        apply_request_within(&mut state, request(100), &rollback(NOW), 2);
        assert_eq!(state.services["web"].spec.image, "nginx:1.28");

        // The real bound holds too.
        let mut state = one_manager();
        for nonce in 0..(MAX_APPLIED_REQUESTS as u64 + 3) {
            apply_request(&mut state, request(nonce), &Command::Noop { now_ms: NOW });
        }
        assert_eq!(state.requests.len(), MAX_APPLIED_REQUESTS);
        assert_eq!(state.requests.ids().next().map(|id| id.nonce), Some(3));
    }

    #[test]
    fn enums_use_lowercase_names() {
        let json =
            serde_json::to_string(&(Role::Manager, Availability::Drain, NodeStatus::Down)).unwrap();
        assert_eq!(json, r#"["manager","drain","down"]"#);
        assert_eq!(Role::Worker.to_string(), "worker");
    }

    #[test]
    fn a_removed_node_is_revoked_and_its_key_never_joins_again() {
        let keyed = |name: &str, addr: &str, key: &str| NewNode {
            key_fingerprint: key.to_owned(),
            ..new_node(name, addr, Role::Worker)
        };
        let register = |node: NewNode| Command::RegisterNode { node, now_ms: T0 };
        let mut state = applied(one_manager(), register(keyed("w1", "10.0.0.2:4240", "k2")));
        assert_eq!(state.node_keys.get("k2"), Some(&2));
        assert!(state.revoked.is_empty());

        // The same request again (same key, and same name): refused, naming
        // the node that joined.
        let again = apply(&mut state, &register(keyed("w1", "10.0.0.2:4240", "k2")));
        let Response::Rejected { reason } = again else {
            panic!("a repeated join was accepted: {again:?}")
        };
        assert!(reason.contains("already joined as node 2 (w1)"), "{reason}");
        // The same key under another name and address: still refused.
        let Response::Rejected { reason } =
            apply(&mut state, &register(keyed("w9", "10.0.0.9:4240", "k2")))
        else {
            panic!("a replayed key was accepted")
        };
        assert!(reason.contains("node 2"), "{reason}");
        // The same name with a fresh key: refused by name.
        let Response::Rejected { reason } =
            apply(&mut state, &register(keyed("w1", "10.0.0.9:4240", "k9")))
        else {
            panic!("a taken name was accepted")
        };
        assert!(reason.contains("already used by node 2"), "{reason}");

        let state = applied(state, Command::RemoveNode { id: 2, now_ms: T0 });
        assert!(!state.nodes.contains_key(&2));
        assert_eq!(state.revoked, BTreeSet::from([2]));
        // The removed node's old key cannot come back, even under a new name.
        let mut after = state.clone();
        let Response::Rejected { reason } =
            apply(&mut after, &register(keyed("w1", "10.0.0.2:4240", "k2")))
        else {
            panic!("a removed node's key joined again")
        };
        assert!(reason.contains("node 2, which was removed"), "{reason}");
        assert!(reason.contains("wipe its data dir"), "{reason}");
        // A wiped node (a new key) joins under a new id: ids are not reused.
        let after = applied(after, register(keyed("w1", "10.0.0.2:4240", "k3")));
        assert_eq!(after.node_keys.get("k3"), Some(&3));
        assert_eq!(after.revoked, BTreeSet::from([2]));
        // An unknown key (older callers, tests) registers nothing.
        let after = applied(after, register(keyed("w4", "10.0.0.4:4240", "")));
        assert!(!after.node_keys.contains_key(""));

        // Both survive the snapshot format.
        let decoded: ClusterState = codec::decode(&codec::encode(&after).unwrap()).unwrap();
        assert_eq!(decoded.revoked, after.revoked);
        assert_eq!(decoded.node_keys, after.node_keys);

        // A refused removal (the last manager) revokes nothing.
        let mut last = one_manager();
        assert!(apply(&mut last, &Command::RemoveNode { id: 1, now_ms: T0 }).is_rejected());
        assert!(last.revoked.is_empty());
    }
}
