//! Fixtures shared by the scale benchmarks: clusters built directly as
//! `ClusterState` values, a counting allocator for peak heap use, and the plain
//! summary lines the benches print beside criterion's output.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use shoal_raft::{
    task_id, Availability, ClusterState, Constraint, DesiredState, NodeRecord, NodeStatus,
    PortSpec, Protocol, Resources, Role, Service, ServiceMode, ServiceSpec, Task, TaskState,
};

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;
pub const CPU: u64 = 1_000_000_000;

/// The system allocator, counting the bytes in use and their peak.
pub struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        new
    }
}

/// Heap bytes in use now.
pub fn heap() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

/// Starts a new peak measurement; returns the bytes in use now.
pub fn reset_peak() -> usize {
    let now = heap();
    PEAK.store(now, Ordering::Relaxed);
    now
}

/// The highest heap use since the last [`reset_peak`].
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// The process's peak resident set (VmHWM), in bytes.
pub fn vm_hwm() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// CPU time this thread has run, from /proc/thread-self/schedstat (ns
/// resolution). On this shared machine it moves much less than wall time
/// when other processes compete for the cores.
pub fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// Wall and CPU time of `work`.
pub fn timed<T>(work: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let (wall, cpu) = (std::time::Instant::now(), thread_cpu());
    let out = work();
    (out, wall.elapsed(), thread_cpu().saturating_sub(cpu))
}

pub fn mib(bytes: usize) -> String {
    format!("{:.0} MiB", bytes as f64 / MIB as f64)
}

pub fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// `n` with thousands separators.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Per second, rounded.
pub fn rate(n: u64, d: Duration) -> String {
    count((n as f64 / d.as_secs_f64()).round() as u64)
}

/// Whether the scenario `name` was asked for in `BENCH_SCENARIOS` (a comma list;
/// all when unset).
pub fn wanted(name: &str) -> bool {
    match std::env::var("BENCH_SCENARIOS") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|s| s.trim() == name),
        _ => true,
    }
}

/// `BENCH_SUMMARY_ONLY=1` skips the criterion runs and prints the summary lines only.
pub fn summary_only() -> bool {
    std::env::var("BENCH_SUMMARY_ONLY").is_ok_and(|v| v == "1")
}

pub const CLUSTER_ID: &str = "bench";

/// Node `id` of a cluster of `count` nodes whose total capacity does not depend on
/// `count` (5,000 nodes of 100 CPUs and 200 GiB). Labels: `zone` z0..z4, `disk`
/// ssd on every third node, `rack` r0..r39. About 1% of nodes are down, 1%
/// drained, 1% paused and 0.4% have no container engine.
pub fn node(id: u64, count: u64) -> NodeRecord {
    let mut labels = BTreeMap::new();
    labels.insert("zone".to_owned(), format!("z{}", id % 5));
    labels.insert(
        "disk".to_owned(),
        if id.is_multiple_of(3) { "ssd" } else { "hdd" }.to_owned(),
    );
    labels.insert("rack".to_owned(), format!("r{}", id % 40));
    let (status, availability) = match id % 100 {
        1 => (NodeStatus::Down, Availability::Active),
        2 => (NodeStatus::Ready, Availability::Drain),
        3 => (NodeStatus::Ready, Availability::Pause),
        _ => (NodeStatus::Ready, Availability::Active),
    };
    NodeRecord {
        id,
        name: format!("node-{id:05}"),
        addr: format!("10.{}.{}.{}:4240", id >> 16, (id >> 8) & 255, id & 255),
        role: if id <= 3 { Role::Manager } else { Role::Worker },
        availability,
        status,
        status_message: String::new(),
        labels,
        resources: Resources {
            nano_cpus: 100 * CPU * 5_000 / count,
            memory_bytes: 200 * GIB * 5_000 / count,
        },
        version: "0.1.0".to_owned(),
        joined_at_ms: 0,
        status_changed_at_ms: 0,
        updated_at_ms: 0,
        engine_error: (id % 250 == 4).then(|| "cannot reach the engine".to_owned()),
    }
}

/// Whether the scheduler may place tasks on `node` at all.
pub fn usable(node: &NodeRecord) -> bool {
    node.status == NodeStatus::Ready
        && node.availability == Availability::Active
        && node.engine_error.is_none()
}

fn constraint(text: &str) -> Constraint {
    text.parse().expect("bench constraint")
}

/// The spec of the `i`th of the mixed services, with `replicas` replicas. Every
/// 20th publishes a host port, every 20th (another) allows 3 per node; of the
/// rest 40% are unconstrained, 30% pinned to a zone, 20% to ssd nodes and 10%
/// to ssd nodes outside zone z0. A third reserve nothing, a third 0.1 CPU and
/// 128 MiB, a third 0.25 CPU and 256 MiB.
pub fn mixed_spec(i: u64, replicas: u64) -> ServiceSpec {
    let mut spec = ServiceSpec::default_for(&format!("svc-{i:04}"), "registry.local/app:1");
    spec.mode = ServiceMode::Replicated { replicas };
    spec.env.insert("SERVICE".to_owned(), spec.name.clone());
    if i % 20 == 7 {
        spec.ports = vec![PortSpec::host(20_000 + i as u16, 80, Protocol::Tcp)];
    } else if i % 20 == 13 {
        spec.max_per_node = 3;
    } else {
        spec.constraints = match i % 10 {
            4..=6 => vec![constraint(&format!("node.labels.zone==z{}", i % 5))],
            7 | 8 => vec![constraint("node.labels.disk==ssd")],
            9 => vec![
                constraint("node.labels.disk==ssd"),
                constraint("node.labels.zone!=z0"),
            ],
            _ => Vec::new(),
        };
    }
    match i % 3 {
        1 => {
            spec.resources.reserve_nano_cpus = CPU / 10;
            spec.resources.reserve_memory_bytes = 128 * MIB;
        }
        2 => {
            spec.resources.reserve_nano_cpus = CPU / 4;
            spec.resources.reserve_memory_bytes = 256 * MIB;
        }
        _ => {}
    }
    spec.validate().expect("bench spec");
    spec
}

/// Replica counts for `services` mixed services adding up to `tasks`: host-port
/// services get 200 each, the others share the rest.
pub fn replica_counts(services: u64, tasks: u64) -> Vec<u64> {
    let ported = (0..services).filter(|i| i % 20 == 7).count() as u64;
    let rest = tasks - ported * 200;
    let others = services - ported;
    let (each, extra) = (rest / others, rest % others);
    let mut seen = 0;
    (0..services)
        .map(|i| {
            if i % 20 == 7 {
                200
            } else {
                seen += 1;
                each + u64::from(seen <= extra)
            }
        })
        .collect()
}

pub fn insert_service(state: &mut ClusterState, spec: ServiceSpec) {
    state.services.insert(
        spec.name.clone(),
        Service {
            spec: spec.into(),
            version: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
            previous_spec: None,
            update: None,
        },
    );
}

/// Adds a task of `service` in `slot` with the next task id.
pub fn insert_task(
    state: &mut ClusterState,
    service: &str,
    slot: u64,
    node_id: Option<u64>,
    task_state: TaskState,
) {
    let id = task_id(&state.cluster_id, state.next_task_seq);
    state.next_task_seq += 1;
    let record = &state.services[service];
    let task = Task {
        id: id.clone(),
        service: service.to_owned(),
        slot,
        node_id,
        spec_version: record.version,
        spec: record.spec.clone(),
        desired_state: DesiredState::Running,
        state: task_state,
        message: if task_state == TaskState::Pending {
            "created".to_owned()
        } else {
            task_state.to_string()
        },
        error: String::new(),
        exit_code: None,
        container_id: (task_state == TaskState::Running).then(|| format!("ctr-{id}")),
        restart_count: 0,
        created_at_ms: 1,
        updated_at_ms: 1,
        state_changed_at_ms: 1,
        running_since_ms: (task_state == TaskState::Running).then_some(1),
        health: None,
    };
    state.tasks.insert(id, task);
}

/// What to build.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub nodes: u64,
    /// Mixed services whose tasks are pending.
    pub services: u64,
    /// Pending tasks of those services, all placeable.
    pub pending: u64,
    /// Pending tasks of one more service no node satisfies.
    pub stuck: u64,
    /// Running tasks of 100 more services (1 CPU and 2 GiB each), placed round
    /// robin on the usable nodes before the pass.
    pub running: u64,
}

/// A cluster of `shape.nodes` nodes with the mixed services' tasks pending.
pub fn build(shape: Shape) -> ClusterState {
    let mut state = ClusterState {
        cluster_id: CLUSTER_ID.to_owned(),
        created_at_ms: 1,
        next_node_id: shape.nodes + 1,
        ..ClusterState::default()
    };
    for id in 1..=shape.nodes {
        state.nodes.insert(id, node(id, shape.nodes));
    }
    let usable_nodes: Vec<u64> = state
        .nodes
        .values()
        .filter(|n| usable(n))
        .map(|n| n.id)
        .collect();
    if shape.running > 0 {
        let base = 100;
        for b in 0..base {
            let mut spec =
                ServiceSpec::default_for(&format!("base-{b:03}"), "registry.local/base:1");
            spec.mode = ServiceMode::Replicated {
                replicas: shape.running / base,
            };
            spec.resources.reserve_nano_cpus = CPU;
            spec.resources.reserve_memory_bytes = 2 * GIB;
            insert_service(&mut state, spec);
        }
        for j in 0..shape.running {
            let service = format!("base-{:03}", j % base);
            let node = usable_nodes[(j as usize) % usable_nodes.len()];
            insert_task(
                &mut state,
                &service,
                j / base + 1,
                Some(node),
                TaskState::Running,
            );
        }
    }
    let counts = replica_counts(shape.services, shape.pending);
    for (i, &replicas) in counts.iter().enumerate() {
        insert_service(&mut state, mixed_spec(i as u64, replicas));
    }
    if shape.stuck > 0 {
        let mut spec = ServiceSpec::default_for("zz-stuck", "registry.local/app:1");
        spec.mode = ServiceMode::Replicated {
            replicas: shape.stuck,
        };
        spec.constraints = vec![constraint("node.labels.zone==nowhere")];
        insert_service(&mut state, spec);
    }
    // Tasks are created slot by slot across services, as the orchestrator's passes
    // interleave them; their ids (and so their order in the map) look random.
    let mut names: Vec<(String, u64)> = counts
        .iter()
        .enumerate()
        .map(|(i, &r)| (format!("svc-{i:04}"), r))
        .collect();
    if shape.stuck > 0 {
        names.push(("zz-stuck".to_owned(), shape.stuck));
    }
    let most = names.iter().map(|(_, r)| *r).max().unwrap_or(0);
    for slot in 1..=most {
        for (name, replicas) in &names {
            if slot <= *replicas {
                insert_task(&mut state, name, slot, None, TaskState::Pending);
            }
        }
    }
    state
}
