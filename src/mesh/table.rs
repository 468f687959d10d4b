//! The endpoint table: for every service, its published ports and the tasks
//! that may take new connections, with the nodes they run on. Derived from
//! the replicated state by a pure function on the leader, and sent to every
//! node (workers do not hold the state) as a full table, then changes.
//!
//! These are wire types (they travel in [`crate::wire::EndpointFeed`]).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use shoal_raft::{
    ClusterState, DesiredState, Health, NodeId, NodeStatus, PortSpec, Protocol, TaskId, TaskState,
};

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
    /// Tasks that take new connections, by task id.
    pub backends: Vec<Backend>,
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
                    backends: Vec::new(),
                },
            )
        })
        .collect();
    for task in state.tasks.values() {
        let Some(node_id) = task.node_id else {
            continue;
        };
        if !is_endpoint(state, task) {
            continue;
        }
        if let Some(entry) = services.get_mut(&task.service) {
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

/// What changed from `sent` to `now`: nodes (the whole list, when it
/// changed), services new or with other ports (whole), backends added,
/// changed or gone in the other services (one by one: in a large cluster a
/// burst of task reports touches a few backends of many services, and
/// resending those services whole sent megabytes per change to every node),
/// services removed.
pub fn diff(sent: &EndpointTable, now: &EndpointTable) -> TableChanges {
    let mut changes = TableChanges {
        nodes: (sent.nodes != now.nodes).then(|| now.nodes.clone()),
        removed: sent
            .services
            .keys()
            .filter(|name| !now.services.contains_key(*name))
            .cloned()
            .collect(),
        ..TableChanges::default()
    };
    for (name, service) in &now.services {
        match sent.services.get(name) {
            Some(old) if old == service => {}
            Some(old) if old.ports == service.ports => {
                diff_backends(name, &old.backends, &service.backends, &mut changes)
            }
            _ => changes.upserts.push((name.clone(), service.clone())),
        }
    }
    changes
}

/// The backend changes from `old` to `new`, both sorted by task id.
fn diff_backends(name: &str, old: &[Backend], new: &[Backend], changes: &mut TableChanges) {
    let (mut o, mut n) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (o.peek(), n.peek()) {
            (None, None) => return,
            (Some(gone), None) => {
                changes
                    .backends_removed
                    .push((name.to_owned(), gone.task_id.clone()));
                o.next();
            }
            (None, Some(added)) => {
                changes
                    .backends_set
                    .push((name.to_owned(), (*added).clone()));
                n.next();
            }
            (Some(a), Some(b)) => match a.task_id.cmp(&b.task_id) {
                Ordering::Less => {
                    changes
                        .backends_removed
                        .push((name.to_owned(), a.task_id.clone()));
                    o.next();
                }
                Ordering::Greater => {
                    changes.backends_set.push((name.to_owned(), (*b).clone()));
                    n.next();
                }
                Ordering::Equal => {
                    if a != b {
                        changes.backends_set.push((name.to_owned(), (*b).clone()));
                    }
                    o.next();
                    n.next();
                }
            },
        }
    }
}

/// The difference between two tables, as [`diff`] finds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableChanges {
    pub nodes: Option<BTreeMap<NodeId, MeshNode>>,
    /// Services new to the receiver, or whose ports changed: whole.
    pub upserts: Vec<(String, ServiceEndpoints)>,
    /// Backends added or changed in services the receiver holds.
    pub backends_set: Vec<(String, Backend)>,
    /// Backends gone from services the receiver holds, by task id.
    pub backends_removed: Vec<(String, TaskId)>,
    pub removed: Vec<String>,
}

impl TableChanges {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_none()
            && self.upserts.is_empty()
            && self.backends_set.is_empty()
            && self.backends_removed.is_empty()
            && self.removed.is_empty()
    }

    /// Applies the changes to `table`.
    pub fn apply(self, table: &mut EndpointTable) {
        if let Some(nodes) = self.nodes {
            table.nodes = nodes;
        }
        for (name, service) in self.upserts {
            table.services.insert(name, service);
        }
        // Backends stay sorted by task id, as `table_from_state` lists them.
        for (name, backend) in self.backends_set {
            if let Some(service) = table.services.get_mut(&name) {
                match service
                    .backends
                    .binary_search_by(|b| b.task_id.cmp(&backend.task_id))
                {
                    Ok(at) => service.backends[at] = backend,
                    Err(at) => service.backends.insert(at, backend),
                }
            }
        }
        for (name, task_id) in self.backends_removed {
            if let Some(service) = table.services.get_mut(&name) {
                if let Ok(at) = service
                    .backends
                    .binary_search_by(|b| b.task_id.cmp(&task_id))
                {
                    service.backends.remove(at);
                }
            }
        }
        for name in self.removed {
            table.services.remove(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_raft::{
        Availability, NodeRecord, Resources, Role, Service, ServiceSpec, Task, TaskState,
    };

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
    fn diff_then_apply_reproduces_the_new_table() {
        let before = table_from_state(&state(vec![task("a", 1, TaskState::Running)]));
        let mut s = state(vec![task("b", 2, TaskState::Running)]);
        s.nodes.get_mut(&3).unwrap().status = NodeStatus::Ready;
        s.services.insert("api".into(), s.services["web"].clone());
        let after = table_from_state(&s);
        let changes = diff(&before, &after);
        assert!(changes.nodes.is_some());
        // `api` is new (whole); `web` keeps its ports, so its backends travel.
        assert_eq!(changes.upserts.len(), 1);
        assert_eq!(changes.upserts[0].0, "api");
        assert_eq!(changes.backends_set.len(), 1);
        assert_eq!(changes.backends_removed.len(), 1);
        let mut applied = before.clone();
        changes.apply(&mut applied);
        assert_eq!(applied, after);
        assert!(diff(&after, &after).is_empty());

        let mut fewer = after.clone();
        fewer.services.remove("api");
        let changes = diff(&after, &fewer);
        assert_eq!(changes.removed, vec!["api".to_string()]);
        assert!(changes.nodes.is_none() && changes.upserts.is_empty());
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

    fn table_of(services: &[(&str, u16, Vec<Backend>)]) -> EndpointTable {
        EndpointTable {
            nodes: BTreeMap::new(),
            services: services
                .iter()
                .map(|(name, port, backends)| {
                    let ports = vec![PortSpec::ingress(*port, 80, Protocol::Tcp)];
                    let mut backends = backends.clone();
                    backends.sort_by(|a, b| a.task_id.cmp(&b.task_id));
                    (name.to_string(), ServiceEndpoints { ports, backends })
                })
                .collect(),
        }
    }

    #[test]
    fn a_changed_service_sends_only_its_changed_backends() {
        let many = |node: NodeId| (0..1_000).map(|t| backend(t, node)).collect::<Vec<_>>();
        let before = table_of(&[("web", 80, many(1)), ("api", 81, many(1))]);
        let mut web = many(1);
        web.retain(|b| b.slot != 7); // gone
        web[10].node_id = 2; // moved
        web.push(backend(5_000, 3)); // new
        let after = table_of(&[("web", 80, web), ("api", 81, many(1))]);
        let changes = diff(&before, &after);
        assert!(changes.upserts.is_empty() && changes.removed.is_empty());
        let set: Vec<(&str, &str)> = changes
            .backends_set
            .iter()
            .map(|(s, b)| (s.as_str(), b.task_id.as_str()))
            .collect();
        assert_eq!(set, [("web", "t00011"), ("web", "t05000")]);
        assert_eq!(
            changes.backends_removed,
            [("web".to_string(), "t00007".to_string())]
        );
        let mut applied = before.clone();
        changes.apply(&mut applied);
        assert_eq!(applied, after);

        // New ports send the service whole.
        let moved = table_of(&[("web", 8080, many(1)), ("api", 81, many(1))]);
        let changes = diff(&before, &moved);
        assert_eq!(changes.upserts.len(), 1);
        assert!(changes.backends_set.is_empty() && changes.backends_removed.is_empty());
    }

    #[test]
    fn diff_then_apply_reproduces_any_table() {
        // A small deterministic generator: tables of 0-3 services with
        // random ports and backends drawn from 40 task ids.
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
                let port = 80 + next(2) as u16;
                let mut backends = Vec::new();
                for t in 0..40 {
                    if next(2) == 0 {
                        backends.push(backend(t, 1 + next(3)));
                    }
                }
                services.push((name, port, backends));
            }
            table_of(&services)
        };
        for _ in 0..500 {
            let (before, after) = (random_table(), random_table());
            let changes = diff(&before, &after);
            let mut applied = before.clone();
            changes.clone().apply(&mut applied);
            assert_eq!(applied, after, "{changes:?}");
            let mut pieces = before.clone();
            for frame in crate::mesh::feed::chunk(changes) {
                frame.apply(&mut pieces);
            }
            assert_eq!(pieces, after);
        }
    }
}
