//! The agent's decisions, as a pure function: given the tasks the leader
//! assigns to this node and the containers found by label, which containers
//! to create, start, stop or remove, and which task states to report.
//!
//! `plan` touches no engine, network or clock; the executor in `mod.rs` turns
//! its actions into runtime calls. The input types mirror the replicated
//! model's names (task, service spec, task states) so that mapping a
//! replicated task to a [`DesiredTask`] is field-by-field.
//!
//! Rules, per task the leader assigned here:
//! - desired running, no container, task not yet started: create it (the
//!   executor pulls per the pull policy, creates, starts, reports running);
//! - desired running, container created but not started: start it;
//! - desired running, container running: adopt it (how a daemon restart keeps
//!   containers running), reporting running if the leader does not know yet;
//!   unhealthy: report failed and stop it;
//! - desired running, container exited: report complete (exit 0) or failed
//!   and leave the container; the leader decides on a replacement task and
//!   later marks this one desired shutdown;
//! - desired running, no container although the task had started: report
//!   failed, since the container was removed behind the agent's back;
//! - desired shutdown: stop a live container (the executor removes it
//!   afterwards), remove a stopped one, report shutdown.
//!
//! Containers whose task is not assigned here any more (e.g. a node returning
//! after its tasks were rescheduled) are stopped and removed without a report.
//! A report is made only when it moves the task forward from the state the
//! leader recorded; terminal states are never left. The caller should overlay
//! the states it reported but the leader has not yet echoed back onto
//! [`DesiredTask::state`], so a rejected task is not retried in between.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

pub use shoal_raft::{DesiredState, HealthCheck, PullPolicy, ResourceSpec, TaskId, TaskState};

use super::runtime::{
    ContainerInfo, ContainerSpec, ContainerState, Health, PortSpec, LABEL_CLUSTER, LABEL_NODE,
    LABEL_SERVICE, LABEL_SLOT, LABEL_STACK, LABEL_TASK,
};

/// Grace period for containers whose task is unknown and whose engine record
/// carries none; Docker's own default.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// Whether a container may already exist for a task in this state.
fn has_started(state: TaskState) -> bool {
    state >= TaskState::Running
}

/// The fields of a service spec the agent needs to run one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    pub image: String,
    /// Entrypoint override; empty keeps the image's.
    pub command: Vec<String>,
    /// Command override; empty keeps the image's.
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<PortSpec>,
    pub resources: ResourceSpec,
    pub stop_grace_period_ms: u64,
    pub stop_signal: Option<String>,
    pub pull: PullPolicy,
    /// `None` keeps the image's health check.
    pub healthcheck: Option<HealthCheck>,
    /// The stack of the task's service, shown as a container label.
    pub stack: Option<String>,
}

impl TaskSpec {
    /// A spec with Docker Swarm's defaults for everything but the image.
    #[cfg(test)]
    pub fn new(image: impl Into<String>) -> Self {
        TaskSpec {
            image: image.into(),
            command: Vec::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            ports: Vec::new(),
            resources: ResourceSpec::default(),
            stop_grace_period_ms: 10_000,
            stop_signal: None,
            pull: PullPolicy::Missing,
            healthcheck: None,
            stack: None,
        }
    }

    pub fn stop_grace(&self) -> Duration {
        Duration::from_millis(self.stop_grace_period_ms)
    }
}

/// One task the leader assigned to this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTask {
    pub id: TaskId,
    pub service: String,
    /// 1-based for replicated services; 0 for global ones.
    pub slot: u64,
    pub desired_state: DesiredState,
    /// The state the leader last recorded for the task.
    pub state: TaskState,
    pub spec: TaskSpec,
}

/// A task state to report; the caller stamps the time when sending it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStatus {
    pub task_id: TaskId,
    pub state: TaskState,
    pub message: String,
    pub error: String,
    pub exit_code: Option<i64>,
    pub container_id: Option<String>,
    /// The container's health, when it has a health check.
    pub health: Option<Health>,
}

impl TaskStatus {
    pub fn new(task_id: &str, state: TaskState, message: impl Into<String>) -> Self {
        TaskStatus {
            task_id: task_id.to_string(),
            state,
            message: message.into(),
            error: String::new(),
            exit_code: None,
            container_id: None,
            health: None,
        }
    }

    pub fn with_health(mut self, health: Option<Health>) -> Self {
        self.health = health;
        self
    }

    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = error.into();
        self
    }

    pub fn with_container(mut self, container_id: &str) -> Self {
        self.container_id = Some(container_id.to_string());
        self
    }

    pub fn with_exit_code(mut self, exit_code: Option<i64>) -> Self {
        self.exit_code = exit_code;
        self
    }
}

/// One step for the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Pull per the pull policy, create, start; report running or the error.
    Create(Box<DesiredTask>),
    /// Start a created container of a desired-running task; report running.
    Start {
        task_id: TaskId,
        container_id: String,
    },
    /// Stop a live container, then remove it; report `report` once done.
    Stop {
        container_id: String,
        grace: Duration,
        signal: Option<String>,
        report: Option<TaskStatus>,
    },
    /// Remove a container that is not live.
    Remove { container_id: String },
    /// Report a task state to the leader.
    Report(TaskStatus),
}

/// Computes the actions that bring the observed containers to the desired
/// tasks. Deterministic: desired tasks in task id order, then containers of
/// unknown tasks in container id order.
pub fn plan(desired: &[DesiredTask], observed: &[ContainerInfo]) -> Vec<Action> {
    let mut by_task: BTreeMap<&str, Vec<&ContainerInfo>> = BTreeMap::new();
    let mut unknown: Vec<&ContainerInfo> = Vec::new();
    let desired_ids: BTreeSet<&str> = desired.iter().map(|task| task.id.as_str()).collect();
    for container in observed {
        match container.task_id() {
            Some(task_id) if desired_ids.contains(task_id) => {
                by_task.entry(task_id).or_default().push(container)
            }
            _ => unknown.push(container),
        }
    }

    let mut tasks: Vec<&DesiredTask> = desired.iter().collect();
    tasks.sort_by(|a, b| a.id.cmp(&b.id));
    let mut actions = Vec::new();
    for task in tasks {
        let mut containers = by_task.remove(task.id.as_str()).unwrap_or_default();
        containers.sort_by(|a, b| a.id.cmp(&b.id));
        match task.desired_state {
            DesiredState::Running => plan_running(task, &containers, &mut actions),
            DesiredState::Shutdown => plan_shutdown(task, &containers, &mut actions),
        }
    }

    unknown.sort_by(|a, b| a.id.cmp(&b.id));
    for container in unknown {
        if container.state.is_live() {
            actions.push(stop_action(container, None, None));
        } else if container.state != ContainerState::Removing {
            actions.push(Action::Remove {
                container_id: container.id.clone(),
            });
        }
    }
    actions
}

fn plan_running(task: &DesiredTask, containers: &[&ContainerInfo], actions: &mut Vec<Action>) {
    // Two containers for one task cannot come from this agent (names are
    // unique per task); the first in id order is the task's, the others are
    // removed like those of unknown tasks.
    let Some((container, extra)) = containers.split_first() else {
        if !has_started(task.state) {
            actions.push(Action::Create(Box::new(task.clone())));
        } else {
            report(
                task,
                TaskStatus::new(&task.id, TaskState::Failed, "container disappeared").with_error(
                    "the task's container no longer exists; it was removed outside shoal",
                ),
                actions,
            );
        }
        return;
    };
    for other in extra {
        if other.state.is_live() {
            actions.push(stop_action(other, None, None));
        } else if other.state != ContainerState::Removing {
            actions.push(Action::Remove {
                container_id: other.id.clone(),
            });
        }
    }

    match container.state {
        ContainerState::Created => {
            if !task.state.is_terminal() {
                actions.push(Action::Start {
                    task_id: task.id.clone(),
                    container_id: container.id.clone(),
                });
            }
        }
        ContainerState::Running | ContainerState::Paused | ContainerState::Restarting => {
            match container.health {
                Some(Health::Unhealthy) => {
                    if !task.state.is_terminal() {
                        let status =
                            TaskStatus::new(&task.id, TaskState::Failed, "health check failed")
                                .with_error("the container's health check reported unhealthy")
                                .with_container(&container.id)
                                .with_health(Some(Health::Unhealthy));
                        actions.push(Action::Report(status));
                        actions.push(stop_action(container, Some(task), None));
                    }
                }
                Some(Health::Starting) => report(
                    task,
                    TaskStatus::new(&task.id, TaskState::Starting, "waiting for health check")
                        .with_container(&container.id)
                        .with_health(Some(Health::Starting)),
                    actions,
                ),
                health @ (Some(Health::Healthy) | None) => report(
                    task,
                    TaskStatus::new(&task.id, TaskState::Running, "running")
                        .with_container(&container.id)
                        .with_health(health),
                    actions,
                ),
            }
        }
        ContainerState::Exited | ContainerState::Dead => {
            report(task, exited_status(task, container), actions);
        }
        ContainerState::Removing => {}
    }
}

fn plan_shutdown(task: &DesiredTask, containers: &[&ContainerInfo], actions: &mut Vec<Action>) {
    let shutdown = |container: Option<&ContainerInfo>| {
        let status = TaskStatus::new(&task.id, TaskState::Shutdown, "shut down");
        match container {
            Some(container) => status.with_container(&container.id),
            None => status,
        }
    };
    if containers.is_empty() {
        report(task, shutdown(None), actions);
        return;
    }
    let mut stopping = false;
    for container in containers {
        if container.state.is_live() {
            stopping = true;
            let status = (!task.state.is_terminal()).then(|| shutdown(Some(container)));
            actions.push(stop_action(container, Some(task), status));
        } else if container.state != ContainerState::Removing {
            actions.push(Action::Remove {
                container_id: container.id.clone(),
            });
        }
    }
    if !stopping {
        report(task, shutdown(containers.first().copied()), actions);
    }
}

/// The status of a task whose container has exited.
fn exited_status(task: &DesiredTask, container: &ContainerInfo) -> TaskStatus {
    let base = |state, message: &str| {
        TaskStatus::new(&task.id, state, message)
            .with_container(&container.id)
            .with_exit_code(container.exit_code)
    };
    let engine_error = if container.error.is_empty() {
        String::new()
    } else {
        format!(": {}", container.error)
    };
    if container.oom_killed {
        return base(TaskState::Failed, "OOM killed").with_error(oom_error(
            task.spec.resources.limit_memory_bytes,
            container.exit_code,
        ));
    }
    if container.state == ContainerState::Dead {
        return base(TaskState::Failed, "container is dead").with_error(format!(
            "the container engine marked the container dead{engine_error}"
        ));
    }
    match container.exit_code {
        Some(0) => base(TaskState::Complete, "exit code 0"),
        Some(code) => {
            base(TaskState::Failed, "failed").with_error(format!("exit code {code}{engine_error}"))
        }
        None => base(TaskState::Failed, "failed").with_error(format!(
            "the container exited without an exit code{engine_error}"
        )),
    }
}

/// The error of a task whose container the kernel's OOM killer ended: the
/// limit it ran into (or the host's memory, without a limit) and the exit
/// code, so `service ps` tells this apart from a crash or a `docker kill`.
fn oom_error(limit_bytes: u64, exit_code: Option<i64>) -> String {
    let exit = exit_code.map_or(String::new(), |code| format!(" (exit code {code})"));
    if limit_bytes == 0 {
        format!(
            "OOM killed: the host ran out of memory and the kernel killed the container{exit}; \
             set a memory limit to keep one task from taking the node's memory"
        )
    } else {
        format!(
            "OOM killed: the container used more than its memory limit of {} and the kernel \
             killed it{exit}; raise the service's --memory or make the task use less",
            shoal_raft::service::format_bytes(limit_bytes)
        )
    }
}

/// Pushes a report when it moves the task forward from its recorded state.
fn report(task: &DesiredTask, status: TaskStatus, actions: &mut Vec<Action>) {
    if !task.state.is_terminal() && status.state > task.state {
        actions.push(Action::Report(status));
    }
}

fn stop_action(
    container: &ContainerInfo,
    task: Option<&DesiredTask>,
    report: Option<TaskStatus>,
) -> Action {
    let (grace, signal) = match task {
        Some(task) => (task.spec.stop_grace(), task.spec.stop_signal.clone()),
        None => (
            container.stop_grace.unwrap_or(DEFAULT_STOP_GRACE),
            container.stop_signal.clone(),
        ),
    };
    Action::Stop {
        container_id: container.id.clone(),
        grace,
        signal,
        report,
    }
}

/// The container name for a task: `<service>.<slot>.<first 12 of task id>`,
/// or `<service>.<node id>.<12>` for global tasks (slot 0).
pub fn container_name(task: &DesiredTask, node_id: &str) -> String {
    let short: String = task.id.chars().take(12).collect();
    if task.slot == 0 {
        format!("{}.{}.{}", task.service, node_id, short)
    } else {
        format!("{}.{}.{}", task.service, task.slot, short)
    }
}

/// The container to create for a task on this node. The scope labels are
/// written last, so a user label cannot take a container out of the scope.
pub fn container_spec(task: &DesiredTask, cluster_id: &str, node_id: &str) -> ContainerSpec {
    let mut labels = task.spec.labels.clone();
    labels.insert(LABEL_SERVICE.to_string(), task.service.clone());
    labels.insert(LABEL_SLOT.to_string(), task.slot.to_string());
    labels.insert(LABEL_TASK.to_string(), task.id.clone());
    if let Some(stack) = &task.spec.stack {
        labels.insert(LABEL_STACK.to_string(), stack.clone());
    }
    labels.insert(LABEL_CLUSTER.to_string(), cluster_id.to_string());
    labels.insert(LABEL_NODE.to_string(), node_id.to_string());
    ContainerSpec {
        name: container_name(task, node_id),
        image: task.spec.image.clone(),
        entrypoint: task.spec.command.clone(),
        cmd: task.spec.args.clone(),
        env: task.spec.env.clone(),
        labels,
        nano_cpus: task.spec.resources.limit_nano_cpus,
        memory_bytes: task.spec.resources.limit_memory_bytes,
        memory_reservation_bytes: task.spec.resources.reserve_memory_bytes,
        ports: task.spec.ports.clone(),
        stop_signal: task.spec.stop_signal.clone(),
        stop_grace: task.spec.stop_grace(),
        healthcheck: task.spec.healthcheck.clone(),
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "report {} {}", self.task_id, self.state)?;
        if let Some(container_id) = &self.container_id {
            write!(f, " container={container_id}")?;
        }
        if let Some(exit_code) = self.exit_code {
            write!(f, " exit={exit_code}")?;
        }
        write!(f, " message={:?}", self.message)?;
        if !self.error.is_empty() {
            write!(f, " error={:?}", self.error)?;
        }
        Ok(())
    }
}

/// One line per action; the unit tests compare against these lines.
impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Create(task) => write!(f, "create {}", task.id),
            Action::Start {
                task_id,
                container_id,
            } => write!(f, "start {container_id} task={task_id}"),
            Action::Stop {
                container_id,
                grace,
                signal,
                report,
            } => {
                write!(f, "stop {container_id} grace={}ms", grace.as_millis())?;
                if let Some(signal) = signal {
                    write!(f, " signal={signal}")?;
                }
                if let Some(report) = report {
                    write!(f, " then {report}")?;
                }
                Ok(())
            }
            Action::Remove { container_id } => write!(f, "remove {container_id}"),
            Action::Report(status) => write!(f, "{status}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A desired task `id` of service `web`; `desired` is "run" or "stop".
    fn task(id: &str, desired: &str, state: TaskState) -> DesiredTask {
        DesiredTask {
            id: id.to_string(),
            service: "web".to_string(),
            slot: 1,
            desired_state: match desired {
                "run" => DesiredState::Running,
                "stop" => DesiredState::Shutdown,
                other => panic!("test bug: desired must be run or stop, not {other}"),
            },
            state,
            spec: TaskSpec {
                stop_grace_period_ms: 2_000,
                ..TaskSpec::new("shoal-test:latest")
            },
        }
    }

    /// An observed container `id` of task `task` (empty: no task label).
    fn container(id: &str, task: &str, state: ContainerState) -> ContainerInfo {
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_CLUSTER.to_string(), "c".to_string());
        labels.insert(LABEL_NODE.to_string(), "1".to_string());
        if !task.is_empty() {
            labels.insert(LABEL_TASK.to_string(), task.to_string());
        }
        ContainerInfo {
            id: id.to_string(),
            name: format!("web.1.{task}"),
            image: "shoal-test:latest".to_string(),
            labels,
            state,
            exit_code: None,
            oom_killed: false,
            health: None,
            error: String::new(),
            started_at: String::new(),
            finished_at: String::new(),
            stop_grace: None,
            stop_signal: None,
        }
    }

    fn exited(id: &str, task: &str, code: i64) -> ContainerInfo {
        ContainerInfo {
            exit_code: Some(code),
            ..container(id, task, ContainerState::Exited)
        }
    }

    fn check(desired: &[DesiredTask], observed: &[ContainerInfo], expected: &[&str]) {
        let actual: Vec<String> = plan(desired, observed)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            actual, expected,
            "desired {desired:#?}\nobserved {observed:#?}"
        );
        // Same inputs in another order: same plan.
        let mut desired_rev = desired.to_vec();
        desired_rev.reverse();
        let mut observed_rev = observed.to_vec();
        observed_rev.reverse();
        let again: Vec<String> = plan(&desired_rev, &observed_rev)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(again, expected, "plan depends on input order");
    }

    use ContainerState::{Created, Dead, Removing, Running};
    use TaskState as S;

    #[test]
    fn desired_running_without_container_is_created() {
        check(&[task("t1", "run", S::Assigned)], &[], &["create t1"]);
        check(&[task("t1", "run", S::Pending)], &[], &["create t1"]);
        check(&[task("t1", "run", S::Starting)], &[], &["create t1"]);
    }

    #[test]
    fn started_task_whose_container_vanished_is_failed_not_recreated() {
        check(
            &[task("t1", "run", S::Running)],
            &[],
            &[
                r#"report t1 failed message="container disappeared" error="the task's container no longer exists; it was removed outside shoal""#,
            ],
        );
    }

    #[test]
    fn terminal_task_is_never_recreated() {
        for state in [
            S::Rejected,
            S::Failed,
            S::Complete,
            S::Shutdown,
            S::Orphaned,
        ] {
            check(&[task("t1", "run", state)], &[], &[]);
        }
    }

    #[test]
    fn created_container_is_started_unless_the_task_ended() {
        check(
            &[task("t1", "run", S::Assigned)],
            &[container("c1", "t1", Created)],
            &["start c1 task=t1"],
        );
        check(
            &[task("t1", "run", S::Failed)],
            &[container("c1", "t1", Created)],
            &[],
        );
    }

    #[test]
    fn running_container_is_adopted() {
        // After a daemon restart the leader already knows: nothing to do.
        check(
            &[task("t1", "run", S::Running)],
            &[container("c1", "t1", Running)],
            &[],
        );
        // The leader has not heard yet: report, never touch the container.
        check(
            &[task("t1", "run", S::Assigned)],
            &[container("c1", "t1", Running)],
            &[r#"report t1 running container=c1 message="running""#],
        );
        check(
            &[task("t1", "run", S::Running)],
            &[container("c1", "t1", ContainerState::Paused)],
            &[],
        );
    }

    #[test]
    fn health_drives_starting_and_failed() {
        let with_health = |health| ContainerInfo {
            health: Some(health),
            ..container("c1", "t1", Running)
        };
        check(
            &[task("t1", "run", S::Assigned)],
            &[with_health(Health::Starting)],
            &[r#"report t1 starting container=c1 message="waiting for health check""#],
        );
        // Never backwards: running stays running while health is re-checked.
        check(
            &[task("t1", "run", S::Running)],
            &[with_health(Health::Starting)],
            &[],
        );
        check(
            &[task("t1", "run", S::Running)],
            &[with_health(Health::Healthy)],
            &[],
        );
        check(
            &[task("t1", "run", S::Running)],
            &[with_health(Health::Unhealthy)],
            &[
                r#"report t1 failed container=c1 message="health check failed" error="the container's health check reported unhealthy""#,
                "stop c1 grace=2000ms",
            ],
        );
    }

    #[test]
    fn exited_container_of_running_task_is_reported_and_kept() {
        check(
            &[task("t1", "run", S::Running)],
            &[exited("c1", "t1", 1)],
            &[r#"report t1 failed container=c1 exit=1 message="failed" error="exit code 1""#],
        );
        check(
            &[task("t1", "run", S::Running)],
            &[exited("c1", "t1", 0)],
            &[r#"report t1 complete container=c1 exit=0 message="exit code 0""#],
        );
        // Already reported: the container waits for the leader's decision.
        check(
            &[task("t1", "run", S::Failed)],
            &[exited("c1", "t1", 1)],
            &[],
        );
        let oom = ContainerInfo {
            oom_killed: true,
            ..exited("c1", "t1", 137)
        };
        check(
            &[task("t1", "run", S::Running)],
            &[oom],
            &[
                r#"report t1 failed container=c1 exit=137 message="OOM killed" error="OOM killed: the host ran out of memory and the kernel killed the container (exit code 137); set a memory limit to keep one task from taking the node's memory""#,
            ],
        );
        let mut limited = task("t1", "run", S::Running);
        limited.spec.resources.limit_memory_bytes = 16 << 20;
        let oom = ContainerInfo {
            oom_killed: true,
            ..exited("c1", "t1", 137)
        };
        check(
            &[limited],
            &[oom],
            &[
                r#"report t1 failed container=c1 exit=137 message="OOM killed" error="OOM killed: the container used more than its memory limit of 16MiB and the kernel killed it (exit code 137); raise the service's --memory or make the task use less""#,
            ],
        );
        let dead = ContainerInfo {
            error: "driver failed".to_string(),
            ..container("c1", "t1", Dead)
        };
        check(
            &[task("t1", "run", S::Running)],
            &[dead],
            &[
                r#"report t1 failed container=c1 message="container is dead" error="the container engine marked the container dead: driver failed""#,
            ],
        );
    }

    #[test]
    fn desired_shutdown_stops_then_removes() {
        check(
            &[task("t1", "stop", S::Running)],
            &[container("c1", "t1", Running)],
            &[r#"stop c1 grace=2000ms then report t1 shutdown container=c1 message="shut down""#],
        );
        let mut with_signal = task("t1", "stop", S::Running);
        with_signal.spec.stop_signal = Some("SIGINT".to_string());
        check(
            &[with_signal],
            &[container("c1", "t1", Running)],
            &[
                r#"stop c1 grace=2000ms signal=SIGINT then report t1 shutdown container=c1 message="shut down""#,
            ],
        );
        check(
            &[task("t1", "stop", S::Running)],
            &[exited("c1", "t1", 137)],
            &[
                "remove c1",
                r#"report t1 shutdown container=c1 message="shut down""#,
            ],
        );
        // A failed task's container is removed without another report.
        check(
            &[task("t1", "stop", S::Failed)],
            &[exited("c1", "t1", 1)],
            &["remove c1"],
        );
        check(
            &[task("t1", "stop", S::Failed)],
            &[container("c1", "t1", Removing)],
            &[],
        );
    }

    #[test]
    fn desired_shutdown_without_container_is_reported_once() {
        check(
            &[task("t1", "stop", S::Assigned)],
            &[],
            &[r#"report t1 shutdown message="shut down""#],
        );
        check(&[task("t1", "stop", S::Shutdown)], &[], &[]);
        check(&[task("t1", "stop", S::Rejected)], &[], &[]);
    }

    #[test]
    fn containers_of_unknown_tasks_are_stopped_or_removed_silently() {
        let with_grace = ContainerInfo {
            stop_grace: Some(Duration::from_secs(3)),
            stop_signal: Some("SIGQUIT".to_string()),
            ..container("c3", "gone", Running)
        };
        check(
            &[],
            &[
                container("c2", "gone", Running),
                exited("c1", "gone", 0),
                with_grace,
                container("c4", "", Created),
                container("c5", "gone", Removing),
            ],
            &[
                "remove c1",
                "stop c2 grace=10000ms",
                "stop c3 grace=3000ms signal=SIGQUIT",
                "remove c4",
            ],
        );
    }

    #[test]
    fn duplicate_containers_of_one_task_keep_the_first() {
        check(
            &[task("t1", "run", S::Running)],
            &[
                container("c2", "t1", Running),
                container("c1", "t1", Running),
            ],
            &["stop c2 grace=10000ms"],
        );
    }

    #[test]
    fn several_tasks_are_planned_in_task_order() {
        check(
            &[
                task("t3", "stop", S::Running),
                task("t1", "run", S::Assigned),
                task("t2", "run", S::Running),
            ],
            &[
                container("c3", "t3", Running),
                container("c2", "t2", Running),
                container("c9", "old", Running),
            ],
            &[
                "create t1",
                r#"stop c3 grace=2000ms then report t3 shutdown container=c3 message="shut down""#,
                "stop c9 grace=10000ms",
            ],
        );
    }

    #[test]
    fn container_spec_carries_scope_labels_that_users_cannot_override() {
        let mut t = task("0123456789abcdef", "run", S::Assigned);
        t.slot = 2;
        t.spec
            .labels
            .insert(LABEL_NODE.to_string(), "other".to_string());
        t.spec.labels.insert("team".to_string(), "a".to_string());
        t.spec.resources.limit_nano_cpus = 500_000_000;
        t.spec.resources.limit_memory_bytes = 256 << 20;
        t.spec.resources.reserve_memory_bytes = 128 << 20;
        let spec = container_spec(&t, "cl", "7");
        assert_eq!(spec.name, "web.2.0123456789ab");
        let labels: Vec<String> = spec
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(
            labels,
            [
                "shoal.cluster=cl",
                "shoal.node=7",
                "shoal.service=web",
                "shoal.slot=2",
                "shoal.task=0123456789abcdef",
                "team=a"
            ]
        );
        assert_eq!(spec.nano_cpus, 500_000_000);
        assert_eq!(spec.memory_bytes, 256 << 20);
        assert_eq!(spec.memory_reservation_bytes, 128 << 20);
        assert_eq!(spec.stop_grace, Duration::from_secs(2));
        t.slot = 0;
        assert_eq!(container_name(&t, "7"), "web.7.0123456789ab");
    }

    #[test]
    fn task_states_order_by_lifecycle() {
        assert!(S::Assigned < S::Running && S::Running < S::Failed);
        assert!(!S::Running.is_terminal());
        assert!(S::Complete.is_terminal() && S::Orphaned.is_terminal());
    }
}
