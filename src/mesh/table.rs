//! The endpoint table: for every service, its published ports, the tasks
//! that may take new connections (for services that publish ports: the
//! mesh routes to them) and the nodes those tasks run on (what DNS
//! answers from). Derived from the replicated state by a pure function on
//! the leader, and sent to every node (workers do not hold the state) as a
//! full table, then changes ([`diff`]).
//!
//! A service without published ports carries only its nodes: no node
//! routes to its tasks, and DNS names nodes, not tasks. Those nodes travel
//! only to the nodes that ask ([`Interest`]). In a cluster of thousands of
//! nodes this is what keeps the feed small: a task's state changes travel
//! to every node only when its service publishes ports.
//!
//! These are wire types (they travel in [`crate::wire::EndpointFeed`]).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use shoal_raft::{
    ClusterState, DesiredState, Health, NodeId, NodeStatus, PortSpec, Protocol, TaskId, TaskState,
};

/// Names one table a leader published: `origin` is drawn at random when
/// the publishing process starts, `seq` counts its publications. A node
/// names the table it holds when it opens its stream, and a leader that
/// knows that table (it published it, or followed it before it led) sends
/// only what changed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedVersion {
    pub origin: u64,
    pub seq: u64,
}

/// Which services' task nodes a node's endpoint stream carries, besides
/// what every node gets (see [`split_sections`]). The task nodes of a service
/// without published ports are a *section*: only DNS answers from them,
/// so a node gets them once it is asked about the service (managers,
/// which may lead next, get all of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Interest {
    All,
    Services(BTreeSet<String>),
}

impl Interest {
    pub fn covers(&self, service: &str) -> bool {
        match self {
            Interest::All => true,
            Interest::Services(names) => names.contains(service),
        }
    }
}

impl Default for Interest {
    fn default() -> Self {
        Interest::Services(BTreeSet::new())
    }
}

/// The table as a worker gets it: the records of the nodes it may route
/// to (those running a backend of a service with published ports), not of
/// every node. Every node receiving every node's record made a cluster's
/// join cost nodes² in the feed (25 million records at 5,000 nodes);
/// managers, which may lead next, still get all.
pub fn worker_view(table: &EndpointTable) -> EndpointTable {
    EndpointTable {
        nodes: routed_nodes(table)
            .into_iter()
            .map(|(id, n)| (id, n.clone()))
            .collect(),
        services: table.services.clone(),
    }
}

/// The records of the nodes running a backend of some service.
fn routed_nodes(table: &EndpointTable) -> BTreeMap<NodeId, &MeshNode> {
    let routed: BTreeSet<NodeId> = table
        .services
        .values()
        .flat_map(|s| s.backends.iter().map(|b| b.node_id))
        .collect();
    routed
        .into_iter()
        .filter_map(|id| Some((id, table.nodes.get(&id)?)))
        .collect()
}

/// `changes` (from `prev` to `now`) as a worker gets them: the node
/// records of [`worker_view`]s; the same as diffing the two views, without
/// copying every service twice.
pub fn for_workers(
    changes: &TableChanges,
    prev: &EndpointTable,
    now: &EndpointTable,
) -> TableChanges {
    let mut workers = TableChanges {
        nodes_set: Vec::new(),
        nodes_removed: Vec::new(),
        ..changes.clone()
    };
    let (prev, now) = (routed_nodes(prev), routed_nodes(now));
    merge_sorted(
        prev.values().copied(),
        now.values().copied(),
        |a, b| a.id.cmp(&b.id),
        |gone| workers.nodes_removed.push(gone.id),
        |new| workers.nodes_set.push(new.clone()),
    );
    workers
}

/// Whether a service's task nodes travel only to the nodes that ask.
pub fn is_section(service: &ServiceEndpoints) -> bool {
    service.ports.is_empty()
}

/// Splits `changes` (towards `now`) into what every node gets and, per
/// service without published ports, the changes to its task nodes.
pub fn split_sections(
    mut changes: TableChanges,
    now: &EndpointTable,
) -> (TableChanges, BTreeMap<String, TableChanges>) {
    let mut sections = BTreeMap::new();
    let mut shared = Vec::new();
    for (name, change) in changes.services_changed.drain(..) {
        if now.services.get(&name).is_some_and(is_section) {
            let section = TableChanges {
                services_changed: vec![(name.clone(), change)],
                ..TableChanges::default()
            };
            sections.insert(name, section);
        } else {
            shared.push((name, change));
        }
    }
    changes.services_changed = shared;
    (changes, sections)
}

/// The changes that give a receiver `name`'s section whole, whatever it
/// held of it before: the service reset to its ports, then every task
/// node.
pub fn section_whole(name: &str, service: &ServiceEndpoints) -> TableChanges {
    TableChanges {
        services_reset: vec![(name.to_string(), service.ports.clone())],
        services_changed: vec![(
            name.to_string(),
            ServiceChanges {
                task_nodes_added: service.task_nodes.clone(),
                ..ServiceChanges::default()
            },
        )],
        ..TableChanges::default()
    }
}

/// A node as the mesh and DNS see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshNode {
    pub id: NodeId,
    pub name: String,
    /// Advertised `host:port` (the QUIC address).
    pub addr: String,
    pub ready: bool,
}

impl MeshNode {
    /// The node's IP, when its advertised address names one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.addr.parse::<SocketAddr>().ok().map(|a| a.ip())
    }
}

/// A task that takes new connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub task_id: TaskId,
    pub slot: u64,
    pub node_id: NodeId,
    pub container_id: Option<String>,
    pub health: Option<Health>,
    /// The task's own ports: during a rolling update, tasks of two versions
    /// may name different targets for the same published port.
    pub ports: Vec<PortSpec>,
}

impl Backend {
    /// The container port this task serves `published`/`protocol` on.
    pub fn target(&self, published: u16, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.published == published && p.protocol == protocol)
            .map(|p| p.target)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoints {
    /// The service's current published ports.
    pub ports: Vec<PortSpec>,
    /// Tasks that take new connections, sorted by task id; empty for a
    /// service without published ports.
    pub backends: Vec<Backend>,
    /// The nodes running a task that takes connections, sorted by id.
    pub task_nodes: Vec<TaskNode>,
}

/// A node running a task of a service, with its address: DNS answers from
/// these alone, so a node that holds a service's task nodes needs no
/// record of those nodes (a worker holds the records of the nodes it may
/// route to, see [`worker_view`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskNode {
    pub id: NodeId,
    /// Advertised `host:port`, as [`MeshNode::addr`].
    pub addr: String,
}

impl TaskNode {
    pub fn ip(&self) -> Option<IpAddr> {
        self.addr.parse::<SocketAddr>().ok().map(|a| a.ip())
    }
}

/// Task nodes `ids`, each at `10.0.0.ID:4500`.
#[cfg(test)]
pub fn task_nodes_at(ids: &[NodeId]) -> Vec<TaskNode> {
    ids.iter()
        .map(|id| TaskNode {
            id: *id,
            addr: format!("10.0.0.{id}:4500"),
        })
        .collect()
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointTable {
    pub nodes: BTreeMap<NodeId, MeshNode>,
    pub services: BTreeMap<String, ServiceEndpoints>,
}

/// Whether a task takes new connections: running, meant to run, not
/// unhealthy, and on a node that is up. A task that begins shutting down
/// (desired state `shutdown`) leaves at once.
pub fn is_endpoint(state: &ClusterState, task: &shoal_raft::Task) -> bool {
    let node_up = task
        .node_id
        .and_then(|id| state.nodes.get(&id))
        .is_some_and(|n| n.status == NodeStatus::Ready);
    task.state == TaskState::Running
        && task.desired_state == DesiredState::Running
        && task.health != Some(Health::Unhealthy)
        && node_up
}

/// The endpoint table of `state`.
pub fn table_from_state(state: &ClusterState) -> EndpointTable {
    let nodes = state
        .nodes
        .values()
        .map(|n| {
            (
                n.id,
                MeshNode {
                    id: n.id,
                    name: n.name.clone(),
                    addr: n.addr.clone(),
                    ready: n.status == NodeStatus::Ready,
                },
            )
        })
        .collect();
    let mut services: BTreeMap<String, ServiceEndpoints> = state
        .services
        .iter()
        .map(|(name, s)| {
            (
                name.clone(),
                ServiceEndpoints {
                    ports: s.spec.ports.clone(),
                    ..ServiceEndpoints::default()
                },
            )
        })
        .collect();
    // Tasks are walked in task-id order, so backends come out sorted.
    for task in state.tasks.values() {
        let Some(node_id) = task.node_id else {
            continue;
        };
        if !is_endpoint(state, task) {
            continue;
        }
        let Some(entry) = services.get_mut(&task.service) else {
            continue;
        };
        if let Some(node) = state.nodes.get(&node_id) {
            entry.task_nodes.push(TaskNode {
                id: node_id,
                addr: node.addr.clone(),
            });
        }
        if !entry.ports.is_empty() {
            entry.backends.push(Backend {
                task_id: task.id.clone(),
                slot: task.slot,
                node_id,
                container_id: task.container_id.clone(),
                health: task.health,
                ports: task.spec.ports.clone(),
            });
        }
    }
    for entry in services.values_mut() {
        entry.task_nodes.sort_unstable();
        entry.task_nodes.dedup_by_key(|n| n.id);
    }
    EndpointTable { nodes, services }
}

/// Which service each ingress port belongs to, by (published, protocol). A
/// port claimed by two services goes to the first by name; the other is
/// reported in the second list.
#[allow(clippy::type_complexity)]
pub fn ingress_ports(
    table: &EndpointTable,
) -> (
    BTreeMap<(u16, Protocol), (String, PortSpec)>,
    Vec<(String, PortSpec)>,
) {
    let mut ports = BTreeMap::new();
    let mut conflicts = Vec::new();
    for (name, service) in &table.services {
        for port in service.ports.iter().filter(|p| !p.is_host()) {
            let key = (port.published, port.protocol);
            match ports.entry(key) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    conflicts.push((name.clone(), *port))
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert((name.clone(), *port));
                }
            }
        }
    }
    (ports, conflicts)
}

/// What changes a table: nodes one by one, services removed, services new
/// or with other ports (`reset`: they start empty), and per service the
/// backends and task nodes added, changed or gone. Everything travels as
/// the smallest change, never a whole list: in a large cluster a burst of
/// task reports touches a few entries of many services, and one node's
/// join is one entry, where a whole list would be sent to every node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableChanges {
    pub nodes_set: Vec<MeshNode>,
    pub nodes_removed: Vec<NodeId>,
    pub services_removed: Vec<String>,
    /// Services new to the receiver, or whose ports changed: they hold
    /// these ports and nothing else until `services_changed` fills them.
    pub services_reset: Vec<(String, Vec<PortSpec>)>,
    pub services_changed: Vec<(String, ServiceChanges)>,
}

/// The changes to one service's backends and task nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceChanges {
    /// Backends added or changed.
    pub backends_set: Vec<Backend>,
    /// Backends gone, by task id.
    pub backends_removed: Vec<TaskId>,
    /// Task nodes added or changed.
    pub task_nodes_added: Vec<TaskNode>,
    pub task_nodes_removed: Vec<NodeId>,
}

impl ServiceChanges {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many entries the changes carry.
    pub fn len(&self) -> usize {
        self.backends_set.len()
            + self.backends_removed.len()
            + self.task_nodes_added.len()
            + self.task_nodes_removed.len()
    }

    fn apply(self, service: &mut ServiceEndpoints) {
        // Both lists stay sorted, as `table_from_state` makes them.
        for backend in self.backends_set {
            match service
                .backends
                .binary_search_by(|b| b.task_id.cmp(&backend.task_id))
            {
                Ok(at) => service.backends[at] = backend,
                Err(at) => service.backends.insert(at, backend),
            }
        }
        for task_id in self.backends_removed {
            if let Ok(at) = service
                .backends
                .binary_search_by(|b| b.task_id.cmp(&task_id))
            {
                service.backends.remove(at);
            }
        }
        for node in self.task_nodes_added {
            match service.task_nodes.binary_search_by_key(&node.id, |n| n.id) {
                Ok(at) => service.task_nodes[at] = node,
                Err(at) => service.task_nodes.insert(at, node),
            }
        }
        for id in self.task_nodes_removed {
            if let Ok(at) = service.task_nodes.binary_search_by_key(&id, |n| n.id) {
                service.task_nodes.remove(at);
            }
        }
    }
}

/// What changed from `sent` to `now`.
pub fn diff(sent: &EndpointTable, now: &EndpointTable) -> TableChanges {
    let mut changes = TableChanges::default();
    merge_sorted(
        sent.nodes.values(),
        now.nodes.values(),
        |a, b| a.id.cmp(&b.id),
        |gone| changes.nodes_removed.push(gone.id),
        |new| changes.nodes_set.push(new.clone()),
    );
    changes.services_removed = sent
        .services
        .keys()
        .filter(|name| !now.services.contains_key(*name))
        .cloned()
        .collect();
    let empty = ServiceEndpoints::default();
    for (name, service) in &now.services {
        let old = match sent.services.get(name) {
            Some(old) if old == service => continue,
            Some(old) if old.ports == service.ports => old,
            _ => {
                changes
                    .services_reset
                    .push((name.clone(), service.ports.clone()));
                &empty
            }
        };
        let mut one = ServiceChanges::default();
        merge_sorted(
            old.backends.iter(),
            service.backends.iter(),
            |a, b| a.task_id.cmp(&b.task_id),
            |gone| one.backends_removed.push(gone.task_id.clone()),
            |new| one.backends_set.push(new.clone()),
        );
        merge_sorted(
            old.task_nodes.iter(),
            service.task_nodes.iter(),
            |a, b| a.id.cmp(&b.id),
            |gone| one.task_nodes_removed.push(gone.id),
            |new| one.task_nodes_added.push(new.clone()),
        );
        if !one.is_empty() {
            changes.services_changed.push((name.clone(), one));
        }
    }
    changes
}

/// Walks two lists sorted by `cmp` and reports entries of `old` missing
/// from `new` (`gone`) and entries of `new` that are missing from `old`
/// or differ there (`set`).
fn merge_sorted<'a, T: PartialEq + 'a>(
    old: impl Iterator<Item = &'a T>,
    new: impl Iterator<Item = &'a T>,
    cmp: impl Fn(&T, &T) -> Ordering,
    mut gone: impl FnMut(&'a T),
    mut set: impl FnMut(&'a T),
) {
    let (mut o, mut n) = (old.peekable(), new.peekable());
    loop {
        match (o.peek(), n.peek()) {
            (None, None) => return,
            (Some(_), None) => gone(o.next().expect("peeked")),
            (None, Some(_)) => set(n.next().expect("peeked")),
            (Some(a), Some(b)) => match cmp(a, b) {
                Ordering::Less => gone(o.next().expect("peeked")),
                Ordering::Greater => set(n.next().expect("peeked")),
                Ordering::Equal => {
                    let (a, b) = (o.next().expect("peeked"), n.next().expect("peeked"));
                    if a != b {
                        set(b);
                    }
                }
            },
        }
    }
}

impl TableChanges {
    pub fn is_empty(&self) -> bool {
        self.nodes_set.is_empty()
            && self.nodes_removed.is_empty()
            && self.services_removed.is_empty()
            && self.services_reset.is_empty()
            && self.services_changed.is_empty()
    }

    /// Applies the changes to `table`, in the order the fields are listed.
    pub fn apply(self, table: &mut EndpointTable) {
        for node in self.nodes_set {
            table.nodes.insert(node.id, node);
        }
        for id in self.nodes_removed {
            table.nodes.remove(&id);
        }
        for name in self.services_removed {
            table.services.remove(&name);
        }
        for (name, ports) in self.services_reset {
            table.services.insert(
                name,
                ServiceEndpoints {
                    ports,
                    ..ServiceEndpoints::default()
                },
            );
        }
        for (name, changes) in self.services_changed {
            if let Some(service) = table.services.get_mut(&name) {
                changes.apply(service);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_raft::{
        Availability, NodeRecord, Resources, Role, Service, ServiceSpec, Task, TaskState,
    };

    fn ids(nodes: &[TaskNode]) -> Vec<NodeId> {
        nodes.iter().map(|n| n.id).collect()
    }

    fn node(id: NodeId, status: NodeStatus) -> NodeRecord {
        NodeRecord {
            id,
            name: format!("n{id}"),
            addr: format!("127.0.0.{id}:4500"),
            role: Role::Manager,
            availability: Availability::Active,
            status,
            status_message: String::new(),
            labels: BTreeMap::new(),
            resources: Resources::default(),
            version: String::new(),
            joined_at_ms: 0,
            status_changed_at_ms: 0,
            updated_at_ms: 0,
            engine_error: None,
        }
    }

    fn task(id: &str, node: NodeId, state: TaskState) -> Task {
        let mut spec = ServiceSpec::default_for("web", "img:1");
        spec.ports = vec![PortSpec::ingress(8080, 80, Protocol::Tcp)];
        Task {
            id: id.to_string(),
            service: "web".to_string(),
            slot: 1,
            node_id: Some(node),
            spec_version: 1,
            spec: spec.into(),
            desired_state: DesiredState::Running,
            state,
            message: String::new(),
            error: String::new(),
            exit_code: None,
            container_id: Some(format!("c-{id}")),
            restart_count: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
            state_changed_at_ms: 0,
            running_since_ms: None,
            health: None,
        }
    }

    fn state(tasks: Vec<Task>) -> ClusterState {
        let mut state = ClusterState::default();
        state.nodes.insert(1, node(1, NodeStatus::Ready));
        state.nodes.insert(2, node(2, NodeStatus::Ready));
        state.nodes.insert(3, node(3, NodeStatus::Down));
        let mut spec = ServiceSpec::default_for("web", "img:1");
        spec.ports = vec![PortSpec::ingress(8080, 80, Protocol::Tcp)];
        state.services.insert(
            "web".into(),
            Service {
                spec: spec.into(),
                version: 1,
                created_at_ms: 0,
                updated_at_ms: 0,
                previous_spec: None,
                update: None,
            },
        );
        for t in tasks {
            state.tasks.insert(t.id.clone(), t);
        }
        state
    }

    /// The task ids of `web`'s backends in the table built from `tasks`.
    fn check(tasks: Vec<Task>, expected: &[&str]) {
        let table = table_from_state(&state(tasks));
        let got: Vec<&str> = table.services["web"]
            .backends
            .iter()
            .map(|b| b.task_id.as_str())
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn only_running_healthy_tasks_meant_to_run_on_live_nodes_are_endpoints() {
        check(vec![task("a", 1, TaskState::Running)], &["a"]);
        check(vec![task("a", 1, TaskState::Starting)], &[]);
        check(vec![task("a", 1, TaskState::Failed)], &[]);
        let mut stopping = task("a", 1, TaskState::Running);
        stopping.desired_state = DesiredState::Shutdown;
        check(vec![stopping], &[]);
        let mut unhealthy = task("a", 1, TaskState::Running);
        unhealthy.health = Some(Health::Unhealthy);
        check(vec![unhealthy], &[]);
        let mut healthy = task("a", 1, TaskState::Running);
        healthy.health = Some(Health::Healthy);
        check(vec![healthy], &["a"]);
        check(vec![task("a", 3, TaskState::Running)], &[]);
        check(
            vec![
                task("a", 1, TaskState::Running),
                task("b", 2, TaskState::Running),
            ],
            &["a", "b"],
        );
    }

    #[test]
    fn ingress_ports_skip_host_mode_and_report_conflicts() {
        let mut table = table_from_state(&state(vec![]));
        let mut other = table.services["web"].clone();
        other.ports.push(PortSpec::host(9090, 90, Protocol::Tcp));
        other.ports.push(PortSpec::ingress(53, 53, Protocol::Udp));
        table.services.insert("zzz".into(), other);
        let (ports, conflicts) = ingress_ports(&table);
        let keys: Vec<_> = ports.iter().map(|(k, (s, _))| (*k, s.as_str())).collect();
        assert_eq!(
            keys,
            vec![((53, Protocol::Udp), "zzz"), ((8080, Protocol::Tcp), "web")]
        );
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].0, "zzz");
    }

    #[test]
    fn services_without_ports_carry_their_nodes_not_their_tasks() {
        let mut s = state(vec![
            task("a", 1, TaskState::Running),
            task("b", 2, TaskState::Running),
            task("c", 2, TaskState::Running),
            task("d", 3, TaskState::Running),
        ]);
        let table = table_from_state(&s);
        assert_eq!(table.services["web"].backends.len(), 3);
        assert_eq!(ids(&table.services["web"].task_nodes), vec![1, 2]);
        let mut spec = (*s.services["web"].spec).clone();
        spec.ports.clear();
        s.services.get_mut("web").unwrap().spec = spec.into();
        let table = table_from_state(&s);
        assert!(table.services["web"].backends.is_empty());
        assert_eq!(ids(&table.services["web"].task_nodes), vec![1, 2]);
    }

    #[test]
    fn diff_then_apply_reproduces_the_new_table() {
        let before = table_from_state(&state(vec![task("a", 1, TaskState::Running)]));
        let mut s = state(vec![task("b", 2, TaskState::Running)]);
        s.nodes.get_mut(&3).unwrap().status = NodeStatus::Ready;
        s.services.insert("api".into(), s.services["web"].clone());
        let after = table_from_state(&s);
        let changes = diff(&before, &after);
        // One node changed: only it travels.
        assert_eq!(changes.nodes_set.len(), 1);
        assert_eq!(changes.nodes_set[0].id, 3);
        // `api` is new (reset); `web` keeps its ports, so its backends travel.
        assert_eq!(changes.services_reset.len(), 1);
        assert_eq!(changes.services_reset[0].0, "api");
        let web = &changes
            .services_changed
            .iter()
            .find(|(n, _)| n == "web")
            .unwrap()
            .1;
        assert_eq!(web.backends_set.len(), 1);
        assert_eq!(web.backends_removed, vec!["a".to_string()]);
        assert_eq!(
            (ids(&web.task_nodes_added), web.task_nodes_removed.clone()),
            (vec![2], vec![1])
        );
        let mut applied = before.clone();
        changes.apply(&mut applied);
        assert_eq!(applied, after);
        assert!(diff(&after, &after).is_empty());

        let mut fewer = after.clone();
        fewer.services.remove("api");
        fewer.nodes.remove(&1);
        let changes = diff(&after, &fewer);
        assert_eq!(changes.services_removed, vec!["api".to_string()]);
        assert_eq!(changes.nodes_removed, vec![1]);
        assert!(changes.nodes_set.is_empty() && changes.services_changed.is_empty());
    }

    fn backend(task: u32, node_id: NodeId) -> Backend {
        Backend {
            task_id: format!("t{task:05}"),
            slot: u64::from(task),
            node_id,
            container_id: Some(format!("c{task}")),
            health: None,
            ports: Vec::new(),
        }
    }

    /// A table of `services` (name, port or none, backends) as
    /// `table_from_state` would build it.
    fn table_of(services: &[(&str, Option<u16>, Vec<Backend>)]) -> EndpointTable {
        EndpointTable {
            nodes: BTreeMap::new(),
            services: services
                .iter()
                .map(|(name, port, backends)| {
                    let ports: Vec<PortSpec> = port
                        .iter()
                        .map(|p| PortSpec::ingress(*p, 80, Protocol::Tcp))
                        .collect();
                    let mut backends = backends.clone();
                    backends.sort_by(|a, b| a.task_id.cmp(&b.task_id));
                    let mut ids: Vec<NodeId> = backends.iter().map(|b| b.node_id).collect();
                    ids.sort_unstable();
                    ids.dedup();
                    let task_nodes = task_nodes_at(&ids);
                    if ports.is_empty() {
                        backends.clear();
                    }
                    let service = ServiceEndpoints {
                        ports,
                        backends,
                        task_nodes,
                    };
                    (name.to_string(), service)
                })
                .collect(),
        }
    }

    #[test]
    fn a_changed_service_sends_only_its_changed_entries() {
        let many = |node: NodeId| (0..1_000).map(|t| backend(t, node)).collect::<Vec<_>>();
        let before = table_of(&[("web", Some(80), many(1)), ("api", Some(81), many(1))]);
        let mut web = many(1);
        web.retain(|b| b.slot != 7); // gone
        web[10].node_id = 2; // moved
        web.push(backend(5_000, 3)); // new
        let after = table_of(&[("web", Some(80), web), ("api", Some(81), many(1))]);
        let changes = diff(&before, &after);
        assert!(changes.services_reset.is_empty() && changes.services_removed.is_empty());
        assert_eq!(changes.services_changed.len(), 1);
        let (name, web) = &changes.services_changed[0];
        assert_eq!(name, "web");
        let set: Vec<&str> = web
            .backends_set
            .iter()
            .map(|b| b.task_id.as_str())
            .collect();
        assert_eq!(set, ["t00011", "t05000"]);
        assert_eq!(web.backends_removed, ["t00007".to_string()]);
        assert_eq!(ids(&web.task_nodes_added), [2, 3]);
        let mut applied = before.clone();
        changes.apply(&mut applied);
        assert_eq!(applied, after);

        // New ports reset the service, then fill it.
        let moved = table_of(&[("web", Some(8080), many(1)), ("api", Some(81), many(1))]);
        let changes = diff(&before, &moved);
        assert_eq!(changes.services_reset.len(), 1);
        assert_eq!(changes.services_changed[0].1.backends_set.len(), 1_000);

        // Without ports, a task that starts on a node already serving the
        // service changes nothing that travels.
        let quiet = table_of(&[("job", None, many(1))]);
        let mut more = many(1);
        more.push(backend(6_000, 1));
        assert!(diff(&quiet, &table_of(&[("job", None, more)])).is_empty());
    }

    #[test]
    fn diff_then_apply_reproduces_any_table() {
        // A small deterministic generator: tables of 0-3 services with
        // random ports (or none) and backends drawn from 40 task ids, and
        // 0-3 nodes.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut random_table = || {
            let mut services = Vec::new();
            for name in ["a", "b", "c"] {
                if next(4) == 0 {
                    continue;
                }
                let port = match next(3) {
                    0 => None,
                    p => Some(79 + p as u16),
                };
                let mut backends = Vec::new();
                for t in 0..40 {
                    if next(2) == 0 {
                        backends.push(backend(t, 1 + next(3)));
                    }
                }
                services.push((name, port, backends));
            }
            let mut table = table_of(&services);
            for id in 1..=3 {
                if next(3) != 0 {
                    let node = MeshNode {
                        id,
                        name: format!("n{id}"),
                        addr: format!("127.0.0.{id}:4500"),
                        ready: next(2) == 0,
                    };
                    table.nodes.insert(id, node);
                }
            }
            table
        };
        for _ in 0..500 {
            let (before, after) = (random_table(), random_table());
            let changes = diff(&before, &after);
            let mut applied = before.clone();
            changes.clone().apply(&mut applied);
            assert_eq!(applied, after, "{changes:?}");
            assert_eq!(
                for_workers(&changes, &before, &after),
                diff(&worker_view(&before), &worker_view(&after))
            );
            let mut pieces = before.clone();
            for frame in crate::mesh::feed::chunk(changes, 7) {
                frame.apply(&mut pieces);
            }
            assert_eq!(pieces, after);
        }
    }
}
