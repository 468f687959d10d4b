//! Fixtures shared by the orchestrator and scheduler tests: a small cluster built
//! by hand, task labels readable in expectations, and a simulated leader loop with
//! agents that do what they are told.

use std::collections::BTreeMap;

use crate::orchestrator::reconcile;
use crate::scheduler::schedule;
use crate::service::{DesiredState, Service, ServiceSpec, Task, TaskState, TaskStatusUpdate};
use crate::state::{
    apply, Availability, ClusterState, Command, NodeRecord, NodeStatus, Resources, Role, TaskChange,
};
use crate::types::NodeId;

pub const GIB: u64 = 1 << 30;
pub const CPU: u64 = 1_000_000_000;

pub fn node(id: NodeId, status: NodeStatus, availability: Availability) -> NodeRecord {
    NodeRecord {
        id,
        name: format!("n{id}"),
        addr: format!("127.0.0.{id}:4240"),
        role: if id == 1 { Role::Manager } else { Role::Worker },
        availability,
        status,
        status_message: String::new(),
        labels: BTreeMap::new(),
        resources: Resources {
            nano_cpus: 2 * CPU,
            memory_bytes: 2 * GIB,
        },
        version: "0.1.0".to_owned(),
        joined_at_ms: 0,
        status_changed_at_ms: 0,
        updated_at_ms: 0,
        engine_error: None,
    }
}

/// A cluster "c1" with `count` ready, active nodes 1..=count.
pub fn cluster(count: u64) -> ClusterState {
    let mut state = ClusterState {
        cluster_id: "c1".to_owned(),
        ..ClusterState::default()
    };
    for id in 1..=count {
        state
            .nodes
            .insert(id, node(id, NodeStatus::Ready, Availability::Active));
    }
    state.next_node_id = count + 1;
    state
}

pub fn add_service(state: &mut ClusterState, spec: ServiceSpec) {
    spec.validate().expect("fixture spec");
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

/// Inserts a task with id `t<n>` (n counts tasks inserted so far).
pub fn put_task(
    state: &mut ClusterState,
    service: &str,
    slot: u64,
    node_id: Option<NodeId>,
    task_state: TaskState,
    desired: DesiredState,
) -> String {
    let id = format!("t{}", state.tasks.len());
    let record = &state.services[service];
    let task = Task {
        id: id.clone(),
        service: service.to_owned(),
        slot,
        node_id,
        spec_version: record.version,
        spec: record.spec.clone(),
        desired_state: desired,
        state: task_state,
        message: String::new(),
        error: String::new(),
        exit_code: None,
        container_id: None,
        restart_count: 0,
        created_at_ms: 0,
        updated_at_ms: 0,
        state_changed_at_ms: 0,
        running_since_ms: (task_state == TaskState::Running).then_some(0),
        health: None,
    };
    state.tasks.insert(id.clone(), task);
    id
}

pub fn running(state: &mut ClusterState, service: &str, slot: u64, node: NodeId) -> String {
    put_task(
        state,
        service,
        slot,
        Some(node),
        TaskState::Running,
        DesiredState::Running,
    )
}

/// One line per change, naming tasks by their id.
pub fn render(changes: &[TaskChange]) -> Vec<String> {
    changes
        .iter()
        .map(|change| match change {
            TaskChange::Create {
                service,
                slot,
                node_id,
                restart_count,
            } => match node_id {
                Some(node) => format!("create {service}.{slot} on {node} attempt {restart_count}"),
                None => format!("create {service}.{slot} attempt {restart_count}"),
            },
            TaskChange::Assign { task_id, node_id } => format!("assign {task_id} to {node_id}"),
            TaskChange::Unassignable { task_id, reason } => {
                format!("unassignable {task_id}: {reason}")
            }
            TaskChange::SetDesired {
                task_id,
                desired,
                reason,
            } => format!("desire {desired} {task_id}: {reason}"),
            TaskChange::MarkState {
                task_id,
                state,
                message,
            } => format!("mark {state} {task_id}: {message}"),
            TaskChange::Delete { task_id } => format!("delete {task_id}"),
            TaskChange::UpdateSlotFailed {
                service,
                run_version,
                slot,
                node_id,
            } => match node_id {
                Some(node) => format!("update v{run_version} failed {service} on {node}"),
                None => format!("update v{run_version} failed {service}.{slot}"),
            },
            TaskChange::UpdateTransition {
                service,
                run_version,
                from,
                to,
                message,
            } => format!("update v{run_version} {service} {from} -> {to}: {message}"),
        })
        .collect()
}

fn commit(state: &mut ClusterState, command: Command) {
    let response = apply(state, &command);
    assert!(!response.is_rejected(), "{response:?} for {command:?}");
}

/// One leader tick: reconcile, commit, schedule, commit; then every ready node's
/// agent reports its tasks as running or shut down as asked. Returns whether
/// anything changed.
pub fn tick(state: &mut ClusterState, now_ms: u64) -> bool {
    let before = state.clone();
    let changes = reconcile(state, now_ms);
    commit(state, Command::ApplyTaskChanges { changes, now_ms });
    let changes = schedule(state);
    commit(state, Command::ApplyTaskChanges { changes, now_ms });
    let mut reports: BTreeMap<NodeId, Vec<TaskStatusUpdate>> = BTreeMap::new();
    for task in state.tasks.values() {
        let Some(node_id) = task.node_id else {
            continue;
        };
        let ready = state
            .nodes
            .get(&node_id)
            .is_some_and(|n| n.status == NodeStatus::Ready);
        if !ready || task.state < TaskState::Assigned || task.state.is_terminal() {
            continue;
        }
        let next = match task.desired_state {
            DesiredState::Running if task.state != TaskState::Running => TaskState::Running,
            DesiredState::Shutdown => TaskState::Shutdown,
            DesiredState::Running => continue,
        };
        reports.entry(node_id).or_default().push(TaskStatusUpdate {
            task_id: task.id.clone(),
            state: next,
            message: next.to_string(),
            error: String::new(),
            exit_code: None,
            container_id: Some(format!("ctr-{}", task.id)),
            health: None,
            at_ms: now_ms,
        });
    }
    for (node_id, updates) in reports {
        commit(
            state,
            Command::ReportTaskStatus {
                node_id,
                updates,
                now_ms,
            },
        );
    }
    *state != before
}
