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

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// The log entry payload: one versioned envelope around a [`Command`]. A later
/// format is added as `V2` beside `V1`, so old logs stay readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogPayload {
    V1(Command),
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
}

/// What a joining node tells about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewNode {
    pub name: String,
    pub addr: String,
    pub role: Role,
    pub resources: Resources,
    pub version: String,
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
            | Command::Noop { now_ms } => *now_ms,
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
            },
        );
        self.next_node_id = next;
        Ok(id)
    }
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
        }
    }

    const ALL_VARIANTS: [&str; 9] = [
        "InitCluster",
        "RegisterNode",
        "SetNodeStatus",
        "SetNodeRole",
        "UpdateNode",
        "RefreshNode",
        "RemoveNode",
        "RotateToken",
        "Noop",
    ];

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
                },
            },
            Case {
                name: "remove one of two managers",
                before: two_managers,
                cmd: Command::RemoveNode { id: 1, now_ms: NOW },
                expect: Expect::Ok,
                change: |s| {
                    s.nodes.remove(&1);
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
        let cases = cases();
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
        commands
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
            .map(|LogPayload::V1(command)| command)
            .collect();
        assert_eq!(run(&replayed), first);

        let state: ClusterState = codec::decode(&first.0).unwrap();
        assert_eq!(state.nodes.len(), 19);
        assert!(first.1.last().unwrap().is_rejected());
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

    #[test]
    fn enums_use_lowercase_names() {
        let json =
            serde_json::to_string(&(Role::Manager, Availability::Drain, NodeStatus::Down)).unwrap();
        assert_eq!(json, r#"["manager","drain","down"]"#);
        assert_eq!(Role::Worker.to_string(), "worker");
    }
}
