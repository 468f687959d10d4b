//! The scheduler: which node runs each pending task. [`schedule`] filters the nodes
//! (ready, engine up, active, constraints, reservations against the node's resources, host port
//! conflicts, the per-node maximum), then scores the survivors (spread: fewest tasks
//! of the service, then fewest tasks overall, then the lowest node id).
//!
//! Each filter has a `check` and an `explain`, so a task no node can take carries a
//! sentence naming the filter that eliminated the most nodes. The pass is pure and
//! deterministic, and counts its own earlier assignments.
//!
//! Cost: node usage is computed once per pass (one walk over the tasks, counting
//! per service only for the services with pending tasks), into a vector indexed
//! by the node's position. The nodes every spec may use (ready, engine up,
//! active) are kept in one ordered set by (live tasks, id) that follows every
//! assignment. A group of tasks of one service version walks that set in order
//! from a cursor, skipping nodes its constraints refuse and nodes that already
//! run the service (those come after every node that does not, and are placed
//! from a heap once the walk is done); a node that fails a filter for the group
//! is passed once and not seen again (usage only grows within a pass). So a
//! placement costs O(log nodes) plus the nodes its constraints refuse on the way,
//! and a pass about O(tasks·log nodes + classes·nodes), where classes is the
//! number of distinct constraint lists. A group whose constraints leave few
//! nodes uses a heap over just those instead, when that is cheaper; both ways
//! give the same decisions. The decisions come out in task id order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Bound;

use crate::service::{
    format_bytes, format_cpus, Constraint, DesiredState, PortSpec, Protocol, ServiceSpec, Task,
    TaskState,
};
use crate::state::{Availability, ClusterState, NodeRecord, NodeStatus, TaskChange};
use crate::types::NodeId;

/// What the tasks already on a node hold.
#[derive(Debug, Clone, Default)]
struct NodeUsage {
    nano_cpus: u64,
    memory_bytes: u64,
    ports: BTreeSet<(u16, Protocol)>,
    /// Live tasks (meant to run), for spreading.
    live_total: u64,
}

impl NodeUsage {
    fn add(&mut self, spec: &ServiceSpec, live: bool) {
        let r = &spec.resources;
        self.nano_cpus = self.nano_cpus.saturating_add(r.reserve_nano_cpus);
        self.memory_bytes = self.memory_bytes.saturating_add(r.reserve_memory_bytes);
        for port in spec.ports.iter().filter(|p| p.is_host()) {
            self.ports.insert((port.published, port.protocol));
        }
        if live {
            self.live_total += 1;
        }
    }
}

/// What one service's tasks hold on one node.
#[derive(Debug, Clone, Copy, Default)]
struct ServiceCount {
    /// Tasks that hold the node (including those stopping).
    held: u64,
    /// Live tasks (meant to run), for spreading.
    live: u64,
}

/// A service's counts by node index.
type Counts = HashMap<usize, ServiceCount, Fnv>;

/// FNV-1a, for the pass's lookup tables: cheaper than SipHash on short keys, and
/// the same on every run. The tables are only looked up, never iterated where
/// their order could reach a decision.
#[derive(Default)]
struct FnvHasher(u64);

impl Hasher for FnvHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = hash;
    }

    fn write_usize(&mut self, n: usize) {
        self.write(&n.to_le_bytes());
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Fnv = BuildHasherDefault<FnvHasher>;

/// What a filter sees of a node's usage, for the service being placed.
struct Used<'u> {
    node: &'u NodeUsage,
    /// Tasks of the service being placed that hold the node.
    held_of_service: u64,
}

/// One reason a node cannot take a task.
trait Filter {
    fn check(&self, node: &NodeRecord, used: &Used) -> bool;
    /// Why `eliminated` of `total` nodes were refused.
    fn explain(&self, eliminated: usize, total: usize) -> String;
}

fn nodes(n: usize) -> String {
    if n == 1 {
        "1 node".to_owned()
    } else {
        format!("{n} nodes")
    }
}

struct Ready;

impl Filter for Ready {
    fn check(&self, node: &NodeRecord, _: &Used) -> bool {
        node.status == NodeStatus::Ready
    }
    fn explain(&self, eliminated: usize, _: usize) -> String {
        format!("{} down", nodes(eliminated))
    }
}

struct EngineUp;

impl Filter for EngineUp {
    fn check(&self, node: &NodeRecord, _: &Used) -> bool {
        node.engine_error.is_none()
    }
    fn explain(&self, eliminated: usize, _: usize) -> String {
        format!("container engine unavailable on {}", nodes(eliminated))
    }
}

struct Active;

impl Filter for Active {
    fn check(&self, node: &NodeRecord, _: &Used) -> bool {
        node.availability == Availability::Active
    }
    fn explain(&self, eliminated: usize, _: usize) -> String {
        format!("{} paused or drained", nodes(eliminated))
    }
}

/// Whether a node passes the filters every spec shares (ready, engine up, active).
fn open(node: &NodeRecord) -> bool {
    let idle = NodeUsage::default();
    let used = Used {
        node: &idle,
        held_of_service: 0,
    };
    Ready.check(node, &used) && EngineUp.check(node, &used) && Active.check(node, &used)
}

struct Satisfies<'a>(&'a Constraint);

impl Filter for Satisfies<'_> {
    fn check(&self, node: &NodeRecord, _: &Used) -> bool {
        self.0.matches(node)
    }
    fn explain(&self, eliminated: usize, total: usize) -> String {
        if eliminated == total {
            format!("no node satisfies {}: 0 of {}", self.0, nodes(total))
        } else {
            format!("{} not satisfied on {}", self.0, nodes(eliminated))
        }
    }
}

struct MaxPerNode {
    max: u64,
}

impl Filter for MaxPerNode {
    fn check(&self, _: &NodeRecord, used: &Used) -> bool {
        self.max == 0 || used.held_of_service < self.max
    }
    fn explain(&self, eliminated: usize, _: usize) -> String {
        format!("max {} per node reached on {}", self.max, nodes(eliminated))
    }
}

struct Cpu(u64);

impl Filter for Cpu {
    fn check(&self, node: &NodeRecord, used: &Used) -> bool {
        self.0 == 0 || used.node.nano_cpus.saturating_add(self.0) <= node.resources.nano_cpus
    }
    fn explain(&self, eliminated: usize, _: usize) -> String {
        format!(
            "insufficient CPU on {} (needs {})",
            nodes(eliminated),
            format_cpus(self.0)
        )
    }
}

struct Memory(u64);

impl Filter for Memory {
    fn check(&self, node: &NodeRecord, used: &Used) -> bool {
        self.0 == 0 || used.node.memory_bytes.saturating_add(self.0) <= node.resources.memory_bytes
    }
    fn explain(&self, eliminated: usize, _: usize) -> String {
        format!(
            "insufficient memory on {} (needs {})",
            nodes(eliminated),
            format_bytes(self.0)
        )
    }
}

struct HostPort(PortSpec);

impl Filter for HostPort {
    fn check(&self, _: &NodeRecord, used: &Used) -> bool {
        !used
            .node
            .ports
            .contains(&(self.0.published, self.0.protocol))
    }
    fn explain(&self, eliminated: usize, _: usize) -> String {
        format!(
            "host port {}/{} in use on {}",
            self.0.published,
            self.0.protocol,
            nodes(eliminated)
        )
    }
}

/// The filters for one spec: those that depend only on the node, and those that
/// depend on what is already placed on it.
struct Filters<'a> {
    fixed: Vec<Box<dyn Filter + 'a>>,
    usage: Vec<Box<dyn Filter + 'a>>,
}

impl<'a> Filters<'a> {
    fn new(spec: &'a ServiceSpec) -> Self {
        let mut fixed: Vec<Box<dyn Filter + 'a>> =
            vec![Box::new(Ready), Box::new(EngineUp), Box::new(Active)];
        for constraint in &spec.constraints {
            fixed.push(Box::new(Satisfies(constraint)));
        }
        let mut usage: Vec<Box<dyn Filter + 'a>> = vec![Box::new(MaxPerNode {
            max: spec.max_per_node,
        })];
        // Reservations and ports are checked only when the spec has them.
        if spec.resources.reserve_nano_cpus > 0 {
            usage.push(Box::new(Cpu(spec.resources.reserve_nano_cpus)));
        }
        if spec.resources.reserve_memory_bytes > 0 {
            usage.push(Box::new(Memory(spec.resources.reserve_memory_bytes)));
        }
        for port in spec.ports.iter().filter(|p| p.is_host()) {
            usage.push(Box::new(HostPort(*port)));
        }
        Filters { fixed, usage }
    }

    fn fixed_ok(&self, node: &NodeRecord, used: &Used) -> bool {
        self.fixed.iter().all(|f| f.check(node, used))
    }

    fn usage_ok(&self, node: &NodeRecord, used: &Used) -> bool {
        self.usage.iter().all(|f| f.check(node, used))
    }

    /// Blames each refused node on the first filter it fails and explains, the filter
    /// that eliminated the most nodes first.
    fn explain<'n>(&self, candidates: impl Iterator<Item = (&'n NodeRecord, Used<'n>)>) -> String {
        let all: Vec<&dyn Filter> = self
            .fixed
            .iter()
            .chain(&self.usage)
            .map(|f| f.as_ref())
            .collect();
        let mut blamed = vec![0usize; all.len()];
        let mut total = 0;
        for (node, used) in candidates {
            total += 1;
            if let Some(i) = all.iter().position(|f| !f.check(node, &used)) {
                blamed[i] += 1;
            }
        }
        if total == 0 {
            return "no node in the cluster can run tasks".to_owned();
        }
        let mut order: Vec<usize> = (0..all.len()).filter(|&i| blamed[i] > 0).collect();
        // Most nodes first; among equals, the earlier filter.
        order.sort_by_key(|&i| (Reverse(blamed[i]), i));
        if order.is_empty() {
            return "no node can take this task now".to_owned();
        }
        order
            .iter()
            .map(|&i| all[i].explain(blamed[i], total))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// How a group of tasks finds its nodes; both ways decide the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// Whichever is cheaper for the group.
    Auto,
    /// The ordered set of open nodes, from a cursor.
    Cursor,
    /// A heap over the nodes the group's constraints allow.
    Heap,
}

/// Assigns pending tasks meant to run to nodes; tasks no node can take get an
/// explanation (written only when it changed).
pub fn schedule(state: &ClusterState) -> Vec<TaskChange> {
    schedule_with(state, Walk::Auto)
}

fn schedule_with(state: &ClusterState, walk: Walk) -> Vec<TaskChange> {
    // Pending tasks per service, then per version. The hash map only finds a
    // service's entry; the order of the pass is the services' name order.
    let mut index: HashMap<&str, usize, Fnv> = HashMap::default();
    let mut pending: Vec<(&str, BTreeMap<u64, Vec<Pending>>)> = Vec::new();
    let mut count = 0;
    for task in state.tasks.values() {
        if task.state == TaskState::Pending && task.desired_state == DesiredState::Running {
            let seq = count;
            let service = task.service.as_str();
            let at = *index.entry(service).or_insert_with(|| {
                pending.push((service, BTreeMap::new()));
                pending.len() - 1
            });
            pending[at]
                .1
                .entry(task.spec_version)
                .or_default()
                .push((seq, task));
            count += 1;
        }
    }
    if pending.is_empty() {
        return Vec::new();
    }
    pending.sort_unstable_by_key(|(service, _)| *service);
    let mut pass = Pass::new(state, pending.iter().map(|(service, _)| *service), walk);
    let mut changes: Changes = (0..count).map(|_| None).collect();
    for (service, versions) in pending.into_iter().enumerate() {
        for mut group in versions.1.into_values() {
            // Within a group by slot (then node, then id).
            group.sort_unstable_by(|(_, a), (_, b)| {
                (a.slot, a.node_id, &a.id).cmp(&(b.slot, b.node_id, &b.id))
            });
            pass.schedule_group(service, &group, &mut changes);
        }
    }
    // In the task map's order: applying them then walks the map in order, which
    // is several times faster than jumping about it service by service.
    // `filter_map` collects into the same allocation; `flatten` would not.
    #[allow(clippy::filter_map_identity)]
    let changes = changes.into_iter().filter_map(|change| change).collect();
    changes
}

/// Decisions by the position of their task among the pending tasks, in the task
/// map's order; `None` where a task needs no change.
type Changes = Vec<Option<TaskChange>>;

/// A pending task and its position among the pending tasks.
type Pending<'s> = (usize, &'s Task);

/// The nodes one constraint list allows among the open ones.
struct Class {
    allowed: Vec<bool>,
    /// Their indices, in id order.
    list: Vec<usize>,
}

/// One scheduling pass: what every node holds, updated as tasks are assigned.
struct Pass<'s> {
    /// Every node, in id order; a node is named by its index here.
    nodes: Vec<&'s NodeRecord>,
    usage: Vec<NodeUsage>,
    /// The open nodes (ready, engine up, active) by (live tasks, index).
    open: BTreeSet<(u64, usize)>,
    open_count: usize,
    /// Per service with pending tasks (in name order), what its tasks hold per node.
    services: Vec<Counts>,
    classes: BTreeMap<&'s [Constraint], Class>,
    walk: Walk,
}

impl<'s> Pass<'s> {
    fn new(state: &'s ClusterState, pending: impl Iterator<Item = &'s str>, walk: Walk) -> Self {
        let nodes: Vec<&NodeRecord> = state.nodes.values().collect();
        let mut usage = vec![NodeUsage::default(); nodes.len()];
        let index: HashMap<&str, usize, Fnv> = pending.enumerate().map(|(i, s)| (s, i)).collect();
        let mut services = vec![Counts::default(); index.len()];
        for task in state.tasks.values() {
            if !task.occupies_node() {
                continue;
            }
            let Some(i) = task.node_id.and_then(|id| index_of(&nodes, id)) else {
                continue;
            };
            let live = task.desired_state == DesiredState::Running;
            usage[i].add(&task.spec, live);
            if let Some(&service) = index.get(task.service.as_str()) {
                let count = services[service].entry(i).or_default();
                count.held += 1;
                count.live += u64::from(live);
            }
        }
        let open: BTreeSet<(u64, usize)> = (0..nodes.len())
            .filter(|&i| open(nodes[i]))
            .map(|i| (usage[i].live_total, i))
            .collect();
        Pass {
            open_count: open.len(),
            nodes,
            usage,
            open,
            services,
            classes: BTreeMap::new(),
            walk,
        }
    }

    fn index(&self, id: NodeId) -> Option<usize> {
        index_of(&self.nodes, id)
    }

    fn class(&mut self, constraints: &'s [Constraint]) -> &mut Class {
        let nodes = &self.nodes;
        self.classes.entry(constraints).or_insert_with(|| {
            let allowed: Vec<bool> = nodes
                .iter()
                .map(|node| open(node) && constraints.iter().all(|c| c.matches(node)))
                .collect();
            let list = (0..nodes.len()).filter(|&i| allowed[i]).collect();
            Class { allowed, list }
        })
    }

    fn used<'u>(&'u self, counts: &Counts, i: usize) -> Used<'u> {
        Used {
            node: &self.usage[i],
            held_of_service: counts.get(&i).map_or(0, |c| c.held),
        }
    }

    fn assign(
        &mut self,
        seq: usize,
        task: &Task,
        i: usize,
        counts: &mut Counts,
        changes: &mut Changes,
    ) {
        let before = self.usage[i].live_total;
        self.usage[i].add(&task.spec, true);
        if self.open.remove(&(before, i)) {
            self.open.insert((self.usage[i].live_total, i));
        }
        let count = counts.entry(i).or_default();
        count.held += 1;
        count.live += 1;
        let change = TaskChange::Assign {
            task_id: task.id.clone(),
            node_id: self.nodes[i].id,
        };
        changes[seq] = Some(change);
    }

    fn explain_all(&self, filters: &Filters, counts: &Counts) -> String {
        filters.explain((0..self.nodes.len()).map(|i| (self.nodes[i], self.used(counts, i))))
    }

    /// Places tasks of one service version, which share one spec for placement.
    fn schedule_group(&mut self, service: usize, group: &[Pending<'s>], changes: &mut Changes) {
        let first = group[0].1;
        let filters = Filters::new(&first.spec);
        // Taken out while the group is placed, put back for the service's next version.
        let mut counts = std::mem::take(&mut self.services[service]);
        let (preset, free): (Vec<Pending>, Vec<Pending>) = group
            .iter()
            .copied()
            .partition(|(_, t)| t.node_id.is_some());

        // Global tasks come with their node: check that node only.
        for (seq, task) in preset {
            let Some(i) = task.node_id.and_then(|id| self.index(id)) else {
                let reason = "its node is no longer a member".to_owned();
                unassignable(seq, task, reason, changes);
                continue;
            };
            let node = self.nodes[i];
            let used = self.used(&counts, i);
            if filters.fixed_ok(node, &used) && filters.usage_ok(node, &used) {
                self.assign(seq, task, i, &mut counts, changes);
            } else {
                let reason = filters.explain(std::iter::once((node, used)));
                unassignable(seq, task, reason, changes);
            }
        }
        if !free.is_empty() {
            let constraints = first.spec.constraints.as_slice();
            let allowed = self.class(constraints).list.len();
            let walk = match self.walk {
                Walk::Auto => {
                    // The cursor passes about open/allowed nodes per placement; the
                    // heap starts with every allowed node.
                    let passed = free.len().saturating_mul(self.open_count) / allowed.max(1);
                    if passed <= allowed {
                        Walk::Cursor
                    } else {
                        Walk::Heap
                    }
                }
                fixed => fixed,
            };
            match walk {
                Walk::Cursor => self.place_by_cursor(&free, &filters, &mut counts, changes),
                _ => self.place_by_heap(&free, &filters, &mut counts, changes),
            }
        }
        self.services[service] = counts;
    }

    /// Spread score, lowest first.
    fn score(&self, counts: &Counts, i: usize) -> Reverse<(u64, u64, usize)> {
        let live = counts.get(&i).map_or(0, |c| c.live);
        Reverse((live, self.usage[i].live_total, i))
    }

    fn place_by_heap(
        &mut self,
        free: &[Pending<'s>],
        filters: &Filters,
        counts: &mut Counts,
        changes: &mut Changes,
    ) {
        let constraints = free[0].1.spec.constraints.as_slice();
        let list = std::mem::take(&mut self.class(constraints).list);
        let heap: BinaryHeap<_> = list.iter().map(|&i| self.score(counts, i)).collect();
        self.class(constraints).list = list;
        self.place_from_heap(free, heap, filters, counts, changes);
    }

    /// Takes nodes from `heap` (best first) until `free` is placed or the heap is
    /// empty; the rest are unassignable.
    fn place_from_heap(
        &mut self,
        free: &[Pending<'s>],
        mut heap: BinaryHeap<Reverse<(u64, u64, usize)>>,
        filters: &Filters,
        counts: &mut Counts,
        changes: &mut Changes,
    ) {
        let mut exhausted: Option<String> = None;
        for &(seq, task) in free {
            let chosen = loop {
                let Some(Reverse((_, _, i))) = heap.pop() else {
                    break None;
                };
                if filters.usage_ok(self.nodes[i], &self.used(counts, i)) {
                    break Some(i);
                }
                // Usage only grows in a pass: this node is out for the rest of the group.
            };
            match chosen {
                Some(i) => {
                    self.assign(seq, task, i, counts, changes);
                    heap.push(self.score(counts, i));
                }
                None => {
                    let reason = exhausted
                        .get_or_insert_with(|| self.explain_all(filters, counts))
                        .clone();
                    unassignable(seq, task, reason, changes);
                }
            }
        }
    }

    /// Walks the open nodes by (live tasks, id) from a cursor: every node that does
    /// not run the service yet ranks before every node that does, so those are
    /// taken first, in order; the others follow from a heap.
    fn place_by_cursor(
        &mut self,
        free: &[Pending<'s>],
        filters: &Filters,
        counts: &mut Counts,
        changes: &mut Changes,
    ) {
        let constraints = free[0].1.spec.constraints.as_slice();
        let allowed = std::mem::take(&mut self.class(constraints).allowed);
        let mut cursor: Option<(u64, usize)> = None;
        let mut placed = 0;
        while placed < free.len() {
            let next = loop {
                let after = match cursor {
                    None => Bound::Unbounded,
                    Some(key) => Bound::Excluded(key),
                };
                let Some(&key) = self.open.range((after, Bound::Unbounded)).next() else {
                    break None;
                };
                cursor = Some(key);
                let i = key.1;
                // Nodes already running the service come later, from the heap; a
                // node assigned here moves behind the cursor's path with its new
                // count, so it is passed over too.
                let runs = counts.get(&i).is_some_and(|c| c.live > 0);
                if allowed[i] && !runs && filters.usage_ok(self.nodes[i], &self.used(counts, i)) {
                    break Some(i);
                }
            };
            let Some(i) = next else {
                break;
            };
            let (seq, task) = free[placed];
            self.assign(seq, task, i, counts, changes);
            placed += 1;
        }
        let rest = &free[placed..];
        if !rest.is_empty() {
            // The heap's keys are distinct, so the map's order cannot show.
            let heap: BinaryHeap<_> = counts
                .iter()
                .filter(|(&i, c)| c.live > 0 && allowed[i])
                .map(|(&i, _)| self.score(counts, i))
                .collect();
            self.place_from_heap(rest, heap, filters, counts, changes);
        }
        self.class(constraints).allowed = allowed;
    }
}

fn index_of(nodes: &[&NodeRecord], id: NodeId) -> Option<usize> {
    nodes.binary_search_by_key(&id, |node| node.id).ok()
}

fn unassignable(seq: usize, task: &Task, reason: String, changes: &mut Changes) {
    if task.message != reason {
        let change = TaskChange::Unassignable {
            task_id: task.id.clone(),
            reason,
        };
        changes[seq] = Some(change);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{ServiceMode, ServiceSpec};
    use crate::testing::{add_service, cluster, put_task, render, running, GIB};

    fn spec(replicas: u64, edit: impl Fn(&mut ServiceSpec)) -> ServiceSpec {
        let mut spec = ServiceSpec {
            mode: ServiceMode::Replicated { replicas },
            ..ServiceSpec::default_for("web", "nginx")
        };
        edit(&mut spec);
        spec
    }

    /// `nodes` ready nodes, "web" as `spec`, and `pending` unassigned tasks.
    fn pending(nodes: u64, spec: ServiceSpec, pending: u64) -> ClusterState {
        let mut s = cluster(nodes);
        add_service(&mut s, spec);
        for slot in 1..=pending {
            put_task(
                &mut s,
                "web",
                slot,
                None,
                TaskState::Pending,
                DesiredState::Running,
            );
        }
        s
    }

    fn check(state: &ClusterState, expected: &[&str]) {
        let changes = schedule(state);
        assert_eq!(render(&changes), expected);
        assert_eq!(schedule(&state.clone()), changes, "deterministic");
    }

    #[test]
    fn spreads_over_nodes() {
        check(
            &pending(3, spec(4, |_| {}), 4),
            &[
                "assign t0 to 1",
                "assign t1 to 2",
                "assign t2 to 3",
                "assign t3 to 1",
            ],
        );
        // Fewest tasks of the service first, then fewest tasks overall.
        let mut s = pending(3, spec(2, |_| {}), 2);
        add_service(&mut s, ServiceSpec::default_for("db", "postgres"));
        running(&mut s, "db", 1, 1);
        running(&mut s, "db", 1, 2);
        running(&mut s, "web", 3, 3);
        check(&s, &["assign t0 to 1", "assign t1 to 2"]);
    }

    #[test]
    fn skips_nodes_that_cannot_take_tasks() {
        let mut s = pending(4, spec(3, |_| {}), 3);
        s.nodes.get_mut(&1).unwrap().status = NodeStatus::Down;
        s.nodes.get_mut(&2).unwrap().availability = Availability::Drain;
        s.nodes.get_mut(&3).unwrap().availability = Availability::Pause;
        check(&s, &["assign t0 to 4", "assign t1 to 4", "assign t2 to 4"]);
        // A node whose agent cannot reach its container engine takes nothing.
        let mut s = pending(2, spec(1, |_| {}), 1);
        s.nodes.get_mut(&1).unwrap().engine_error = Some("connection refused".to_owned());
        check(&s, &["assign t0 to 2"]);
        s.nodes.get_mut(&2).unwrap().engine_error = Some("connection refused".to_owned());
        check(
            &s,
            &["unassignable t0: container engine unavailable on 2 nodes"],
        );
    }

    #[test]
    fn explains_unplaceable_tasks() {
        let zone =
            |s: &mut ServiceSpec| s.constraints = vec!["node.labels.zone==eu".parse().unwrap()];
        let mut s = pending(3, spec(1, zone), 1);
        check(
            &s,
            &["unassignable t0: no node satisfies node.labels.zone==eu: 0 of 3 nodes"],
        );
        // The same explanation is not written again.
        s.tasks.get_mut("t0").unwrap().message =
            "no node satisfies node.labels.zone==eu: 0 of 3 nodes".to_owned();
        check(&s, &[]);
        // A label on one node makes it the only candidate.
        s.nodes
            .get_mut(&2)
            .unwrap()
            .labels
            .insert("zone".to_owned(), "eu".to_owned());
        check(&s, &["assign t0 to 2"]);

        let memory = |s: &mut ServiceSpec| s.resources.reserve_memory_bytes = 3 * GIB;
        check(
            &pending(3, spec(1, memory), 1),
            &["unassignable t0: insufficient memory on 3 nodes (needs 3GiB)"],
        );
        // Reservations add up over the pass: two 1.5 GiB tasks do not share a node.
        let half = |s: &mut ServiceSpec| s.resources.reserve_memory_bytes = 3 * GIB / 2;
        check(
            &pending(2, spec(3, half), 3),
            &[
                "assign t0 to 1",
                "assign t1 to 2",
                "unassignable t2: insufficient memory on 2 nodes (needs 1.5GiB)",
            ],
        );
        let mut mixed = pending(3, spec(1, memory), 1);
        mixed.nodes.get_mut(&3).unwrap().status = NodeStatus::Down;
        check(
            &mixed,
            &["unassignable t0: insufficient memory on 2 nodes (needs 3GiB); 1 node down"],
        );
        check(
            &pending(0, spec(1, |_| {}), 1),
            &["unassignable t0: no node in the cluster can run tasks"],
        );
    }

    #[test]
    fn host_ports_and_max_per_node() {
        let port = |s: &mut ServiceSpec| s.ports = vec![PortSpec::host(8080, 80, Protocol::Tcp)];
        check(
            &pending(2, spec(3, port), 3),
            &[
                "assign t0 to 1",
                "assign t1 to 2",
                "unassignable t2: host port 8080/tcp in use on 2 nodes",
            ],
        );
        // A stopping task still holds its port.
        let mut s = pending(1, spec(1, port), 1);
        put_task(
            &mut s,
            "web",
            1,
            Some(1),
            TaskState::Running,
            DesiredState::Shutdown,
        );
        check(
            &s,
            &["unassignable t0: host port 8080/tcp in use on 1 node"],
        );
        let one = |s: &mut ServiceSpec| s.max_per_node = 1;
        check(
            &pending(2, spec(3, one), 3),
            &[
                "assign t0 to 1",
                "assign t1 to 2",
                "unassignable t2: max 1 per node reached on 2 nodes",
            ],
        );
    }

    #[test]
    fn global_tasks_are_checked_on_their_node() {
        let mut s = cluster(2);
        let mut global = ServiceSpec::default_for("agent", "busybox");
        global.mode = ServiceMode::Global;
        global.resources.reserve_nano_cpus = 3 * crate::testing::CPU;
        add_service(&mut s, global);
        s.nodes.get_mut(&2).unwrap().resources.nano_cpus = 4 * crate::testing::CPU;
        for node in 1..=2 {
            put_task(
                &mut s,
                "agent",
                0,
                Some(node),
                TaskState::Pending,
                DesiredState::Running,
            );
        }
        check(
            &s,
            &[
                "unassignable t0: insufficient CPU on 1 node (needs 3)",
                "assign t1 to 2",
            ],
        );
    }
}

#[cfg(test)]
mod properties {
    //! Random clusters and services driven to convergence through the simulated
    //! leader loop; the invariants must hold at every converged point.

    use proptest::prelude::*;

    use crate::service::{
        Constraint, DesiredState, PortSpec, Protocol, ServiceMode, ServiceSpec, TaskState,
        TaskStatusUpdate,
    };
    use crate::state::{apply, Availability, ClusterState, Command, NodeStatus};
    use crate::testing::{add_service, cluster, tick, CPU, GIB};
    use crate::{codec, orchestrator, scheduler};

    #[derive(Debug, Clone)]
    struct NodeSetup {
        down: bool,
        availability: Availability,
        zone: Option<&'static str>,
        cpus: u64,
        memory_gib: u64,
    }

    #[derive(Debug, Clone)]
    struct ServiceSetup {
        global: bool,
        replicas: u64,
        zone: Option<&'static str>,
        reserve_cpu_tenths: u64,
        reserve_memory_mib: u64,
        port: Option<u16>,
        max_per_node: u64,
    }

    #[derive(Debug, Clone)]
    enum Event {
        NodeDown(u64),
        NodeUp(u64),
        Drain(u64),
        Activate(u64),
        Scale(usize, u64),
        FailOne(usize),
    }

    fn node_setup() -> impl Strategy<Value = NodeSetup> {
        (
            prop::bool::weighted(0.15),
            prop_oneof![
                6 => Just(Availability::Active),
                1 => Just(Availability::Pause),
                1 => Just(Availability::Drain),
            ],
            prop_oneof![Just(None), Just(Some("eu")), Just(Some("us"))],
            1..4u64,
            1..4u64,
        )
            .prop_map(|(down, availability, zone, cpus, memory_gib)| NodeSetup {
                down,
                availability,
                zone,
                cpus,
                memory_gib,
            })
    }

    fn service_setup() -> impl Strategy<Value = ServiceSetup> {
        (
            prop::bool::weighted(0.25),
            0..8u64,
            prop_oneof![3 => Just(None), 1 => Just(Some("eu"))],
            prop_oneof![Just(0u64), 1..15u64],
            prop_oneof![Just(0u64), 256..2048u64],
            prop_oneof![3 => Just(None), 1 => Just(Some(8080u16))],
            0..3u64,
        )
            .prop_map(|(global, replicas, zone, cpu, mem, port, max_per_node)| {
                ServiceSetup {
                    global,
                    replicas,
                    zone,
                    reserve_cpu_tenths: cpu,
                    reserve_memory_mib: mem,
                    port,
                    max_per_node: if global { 0 } else { max_per_node },
                }
            })
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (1..7u64).prop_map(Event::NodeDown),
            (1..7u64).prop_map(Event::NodeUp),
            (1..7u64).prop_map(Event::Drain),
            (1..7u64).prop_map(Event::Activate),
            (0..3usize, 0..8u64).prop_map(|(s, r)| Event::Scale(s, r)),
            (0..3usize).prop_map(Event::FailOne),
        ]
    }

    fn build(nodes: &[NodeSetup], services: &[ServiceSetup]) -> ClusterState {
        let mut state = cluster(nodes.len() as u64);
        for (i, setup) in nodes.iter().enumerate() {
            let node = state.nodes.get_mut(&(i as u64 + 1)).unwrap();
            if setup.down {
                node.status = NodeStatus::Down;
            }
            node.availability = setup.availability;
            if let Some(zone) = setup.zone {
                node.labels.insert("zone".to_owned(), zone.to_owned());
            }
            node.resources.nano_cpus = setup.cpus * CPU;
            node.resources.memory_bytes = setup.memory_gib * GIB;
        }
        for (i, setup) in services.iter().enumerate() {
            let mut spec = ServiceSpec::default_for(&format!("s{i}"), "busybox");
            spec.mode = if setup.global {
                ServiceMode::Global
            } else {
                ServiceMode::Replicated {
                    replicas: setup.replicas,
                }
            };
            if let Some(zone) = setup.zone {
                spec.constraints = vec![format!("node.labels.zone=={zone}")
                    .parse::<Constraint>()
                    .unwrap()];
            }
            spec.resources.reserve_nano_cpus = setup.reserve_cpu_tenths * CPU / 10;
            spec.resources.reserve_memory_bytes = setup.reserve_memory_mib << 20;
            if let Some(published) = setup.port {
                spec.ports = vec![PortSpec::host(published, 80, Protocol::Tcp)];
            }
            spec.max_per_node = setup.max_per_node;
            spec.restart.delay_ms = 2_000;
            add_service(&mut state, spec);
        }
        state
    }

    fn perturb(state: &mut ClusterState, event: &Event, now_ms: u64) {
        let node_update = |id: u64, availability| Command::UpdateNode {
            id,
            availability: Some(availability),
            labels_add: Default::default(),
            labels_rm: Vec::new(),
            name: None,
            now_ms,
        };
        let status = |id: u64, status| Command::SetNodeStatus {
            updates: vec![(id, status, String::new())],
            now_ms,
        };
        let command = match *event {
            Event::NodeDown(id) => status(id, NodeStatus::Down),
            Event::NodeUp(id) => status(id, NodeStatus::Ready),
            Event::Drain(id) => node_update(id, Availability::Drain),
            Event::Activate(id) => node_update(id, Availability::Active),
            Event::Scale(service, replicas) => Command::ScaleService {
                name: format!("s{service}"),
                replicas,
                now_ms,
            },
            Event::FailOne(service) => {
                let name = format!("s{service}");
                let Some(task) = state
                    .tasks
                    .values()
                    .find(|t| t.service == name && t.state == TaskState::Running)
                else {
                    return;
                };
                Command::ReportTaskStatus {
                    node_id: task.node_id.unwrap(),
                    updates: vec![TaskStatusUpdate {
                        task_id: task.id.clone(),
                        state: TaskState::Failed,
                        message: "exited".to_owned(),
                        error: "exit status 1".to_owned(),
                        exit_code: Some(1),
                        container_id: None,
                        health: None,
                        at_ms: now_ms,
                    }],
                    now_ms,
                }
            }
        };
        // Refusals (unknown node, global scale) are part of the game.
        apply(state, &command);
    }

    /// Ticks once a second until a tick changes nothing after restart delays passed.
    fn converge(state: &mut ClusterState, now_ms: &mut u64) {
        let mut quiet = 0;
        for _ in 0..60 {
            *now_ms += 1_000;
            if tick(state, *now_ms) {
                quiet = 0;
            } else {
                quiet += 1;
                if quiet > 3 {
                    return;
                }
            }
        }
        panic!("no convergence within 60 ticks");
    }

    fn check_invariants(state: &ClusterState, now_ms: u64) {
        assert!(orchestrator::reconcile(state, now_ms).is_empty());
        for (name, service) in &state.services {
            let live = state.tasks_of(name).filter(|t| t.is_live()).count() as u64;
            let desired = state.desired_task_count(service);
            assert!(
                live <= desired,
                "{name}: {live} live tasks, {desired} desired"
            );
        }
        for node in state.nodes.values() {
            let on_node: Vec<_> = state
                .tasks
                .values()
                .filter(|t| t.node_id == Some(node.id) && !t.state.is_terminal())
                .collect();
            let lost = node.status == NodeStatus::Down || node.availability == Availability::Drain;
            assert!(
                !lost || on_node.is_empty(),
                "tasks left on down or drained node {}",
                node.id
            );
            let mut ports = std::collections::BTreeSet::new();
            let (mut cpu, mut memory) = (0, 0);
            for task in on_node.iter().filter(|t| t.state >= TaskState::Assigned) {
                assert!(task.spec.allows(node), "{} breaks its constraints", task.id);
                cpu += task.spec.resources.reserve_nano_cpus;
                memory += task.spec.resources.reserve_memory_bytes;
                for port in &task.spec.ports {
                    assert!(ports.insert((port.published, port.protocol)), "port clash");
                }
                let of_service = on_node.iter().filter(|t| t.service == task.service).count();
                let max = task.spec.max_per_node;
                assert!(max == 0 || of_service as u64 <= max, "max per node broken");
            }
            assert!(cpu <= node.resources.nano_cpus, "CPU overcommitted");
            assert!(
                memory <= node.resources.memory_bytes,
                "memory overcommitted"
            );
        }
        // Nothing runs without its spec's service, and everything meant to run runs
        // when placement is unconstrained.
        for task in state.tasks.values().filter(|t| t.is_live()) {
            let service = &state.services[&task.service];
            let spec = &service.spec;
            let free = spec.constraints.is_empty()
                && spec.ports.is_empty()
                && spec.max_per_node == 0
                && spec.resources.reserve_nano_cpus == 0
                && spec.resources.reserve_memory_bytes == 0;
            let any_node = state
                .nodes
                .values()
                .any(|n| n.status == NodeStatus::Ready && n.availability == Availability::Active);
            if free && any_node {
                assert_eq!(task.state, TaskState::Running, "{} not running", task.id);
            }
        }
    }

    fn run(
        nodes: &[NodeSetup],
        services: &[ServiceSetup],
        events: &[Event],
    ) -> (ClusterState, u64) {
        let mut state = build(nodes, services);
        let mut now_ms = 1_000_000;
        converge(&mut state, &mut now_ms);
        check_invariants(&state, now_ms);
        for event in events {
            perturb(&mut state, event, now_ms);
            converge(&mut state, &mut now_ms);
            check_invariants(&state, now_ms);
        }
        (state, now_ms)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// The cursor over the open nodes and the heap over a class's nodes must
        /// decide the same, at every tick of a perturbed cluster.
        #[test]
        fn both_walks_decide_the_same(
            nodes in prop::collection::vec(node_setup(), 1..9),
            services in prop::collection::vec(service_setup(), 1..4),
            events in prop::collection::vec(event(), 0..6),
        ) {
            let mut state = build(&nodes, &services);
            let mut now_ms = 1_000_000;
            for round in 0..=events.len() {
                for _ in 0..4 {
                    now_ms += 1_000;
                    let changes = orchestrator::reconcile(&state, now_ms);
                    apply(&mut state, &Command::ApplyTaskChanges { changes, now_ms });
                    let cursor = scheduler::schedule_with(&state, scheduler::Walk::Cursor);
                    let heap = scheduler::schedule_with(&state, scheduler::Walk::Heap);
                    prop_assert_eq!(&cursor, &heap);
                    prop_assert_eq!(&scheduler::schedule(&state), &heap);
                    tick(&mut state, now_ms);
                }
                if let Some(event) = events.get(round) {
                    perturb(&mut state, event, now_ms);
                }
            }
        }

        #[test]
        fn converged_clusters_keep_their_invariants(
            nodes in prop::collection::vec(node_setup(), 1..7),
            services in prop::collection::vec(service_setup(), 1..4),
            events in prop::collection::vec(event(), 0..6),
        ) {
            let (first, now_ms) = run(&nodes, &services, &events);
            let (second, _) = run(&nodes, &services, &events);
            prop_assert_eq!(codec::encode(&first).unwrap(), codec::encode(&second).unwrap());
            prop_assert_eq!(scheduler::schedule(&first), scheduler::schedule(&second));
            prop_assert_eq!(
                orchestrator::reconcile(&first, now_ms + 10_000),
                orchestrator::reconcile(&second, now_ms + 10_000)
            );
            // Desired shutdown means the task is gone or on its way out.
            for task in first.tasks.values() {
                if task.desired_state == DesiredState::Shutdown {
                    prop_assert!(task.state.is_terminal(), "{} still {}", task.id, task.state);
                }
            }
        }
    }
}
