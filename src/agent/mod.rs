//! The node-side agent runtime layer: the tasks the leader assigns to this
//! node are reconciled with the local container engine.
//!
//! - [`runtime`]: the `ContainerRuntime` trait (the edge to the engine) and
//!   its types; object-safe, so `Arc<dyn ContainerRuntime>` holds any engine.
//! - [`docker`]: the Docker engine through bollard (the only bollard user).
//! - [`fake`]: an in-memory engine for tests and many-node simulation.
//! - [`plan`]: the pure decision `plan(desired, observed) -> Vec<Action>`.
//! - [`Executor`] (here): runs a plan against a runtime with bounded
//!   parallelism and a timeout per call, and returns the task states to report.
//!
//! One reconciliation pass is list (by the cluster and node labels) → plan →
//! execute. Only containers carrying both labels are ever touched. The caller
//! stamps the time on the returned statuses and sends them in a batch, and
//! reruns the pass on a tick and on engine events.

pub mod docker;
pub mod driver;
// The fake's controls (kill, images, availability) serve tests; the daemon
// itself uses it only when SHOAL_FAKE_RUNTIME is set.
#[allow(dead_code)]
pub mod fake;
pub mod plan;
pub mod runtime;

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};

pub use docker::DockerRuntime;
pub use plan::{
    container_spec, plan, Action, DesiredTask, PullPolicy, TaskSpec, TaskState, TaskStatus,
};
pub use runtime::{ContainerRuntime, Health, PortSpec, RuntimeError, Scope};

/// Limits for one executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutorConfig {
    /// Actions run at once; the engine serialises much of its work, so more
    /// mostly adds contention.
    pub parallelism: usize,
    /// Limit for one engine call; a stop gets its grace period on top.
    pub call_timeout: Duration,
    /// Limit for one image pull.
    pub pull_timeout: Duration,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            parallelism: 8,
            call_timeout: Duration::from_secs(30),
            pull_timeout: Duration::from_secs(300),
        }
    }
}

/// An action that did not complete; the next pass plans it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionError {
    /// The action, as one line.
    pub action: String,
    pub error: RuntimeError,
}

/// What one pass produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Task states to report, in action order.
    pub statuses: Vec<TaskStatus>,
    /// Failed actions. A failure that decides the task's fate (e.g. image
    /// missing) also has its status in `statuses`.
    pub errors: Vec<ActionError>,
}

/// The result of one action: a status to report and/or an error.
struct Step {
    status: Option<TaskStatus>,
    error: Option<RuntimeError>,
}

impl Step {
    fn status(status: TaskStatus) -> Self {
        Step {
            status: Some(status),
            error: None,
        }
    }

    fn error(error: RuntimeError) -> Self {
        Step {
            status: None,
            error: Some(error),
        }
    }

    fn both(status: TaskStatus, error: RuntimeError) -> Self {
        Step {
            status: Some(status),
            error: Some(error),
        }
    }

    fn nothing() -> Self {
        Step {
            status: None,
            error: None,
        }
    }
}

/// Stops waiting out their grace period at once, per executor: a stop is
/// mostly waiting, so more than the general parallelism may run.
const MAX_STOPS_IN_FLIGHT: usize = 64;

/// Runs plans against one runtime, in one label scope.
///
/// Stops run in the background: a grace period of one service must not hold
/// back the next pass (a killed container of another service is replaced
/// while the stop is still waiting). A container being stopped is left out
/// of later plans until its stop has finished, and the stop's status is
/// handed out by the first pass after it.
#[derive(Clone)]
pub struct Executor {
    runtime: Arc<dyn ContainerRuntime>,
    scope: Scope,
    config: ExecutorConfig,
    stopping: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    stopped: Arc<std::sync::Mutex<Vec<(String, Step)>>>,
    stop_slots: Arc<tokio::sync::Semaphore>,
    wake: Option<Arc<tokio::sync::Notify>>,
}

impl Executor {
    pub fn new(runtime: Arc<dyn ContainerRuntime>, scope: Scope, config: ExecutorConfig) -> Self {
        Executor {
            runtime,
            scope,
            config: ExecutorConfig {
                parallelism: config.parallelism.max(1),
                ..config
            },
            stopping: Default::default(),
            stopped: Default::default(),
            stop_slots: Arc::new(tokio::sync::Semaphore::new(MAX_STOPS_IN_FLIGHT)),
            wake: None,
        }
    }

    /// Notified whenever a background stop finishes, so the caller runs a
    /// pass and reports it.
    pub fn with_wake(mut self, wake: Arc<tokio::sync::Notify>) -> Self {
        self.wake = Some(wake);
        self
    }

    /// Whether an action touches a container whose stop is in flight.
    fn touches(action: &Action, busy: &std::collections::BTreeSet<String>) -> bool {
        match action {
            Action::Start { container_id, .. }
            | Action::Stop { container_id, .. }
            | Action::Remove { container_id } => busy.contains(container_id),
            Action::Report(status) => status
                .container_id
                .as_ref()
                .is_some_and(|id| busy.contains(id)),
            Action::Create(_) => false,
        }
    }

    fn spawn_stop(&self, action: Action) {
        let Action::Stop { container_id, .. } = &action else {
            return;
        };
        let id = container_id.clone();
        self.stopping.lock().unwrap().insert(id.clone());
        let this = self.clone();
        tokio::spawn(async move {
            let line = action.to_string();
            let step = match this.stop_slots.clone().acquire_owned().await {
                Ok(_permit) => this.execute(action).await,
                Err(_) => Step::nothing(),
            };
            this.stopped.lock().unwrap().push((line, step));
            this.stopping.lock().unwrap().remove(&id);
            if let Some(wake) = &this.wake {
                wake.notify_one();
            }
        });
    }

    /// One pass: list the scope's containers, plan, execute.
    pub async fn reconcile(&self, desired: &[DesiredTask]) -> Result<Outcome, RuntimeError> {
        let observed = self
            .limit(
                self.config.call_timeout,
                "list",
                self.runtime
                    .list(&self.scope.cluster_id, &self.scope.node_id),
            )
            .await?;
        // Stops that ended since the last pass: their reports stand for
        // those tasks in this pass.
        let finished = std::mem::take(&mut *self.stopped.lock().unwrap());
        let reported: std::collections::BTreeSet<String> = finished
            .iter()
            .filter_map(|(_, step)| step.status.as_ref().map(|s| s.task_id.clone()))
            .collect();
        let busy = self.stopping.lock().unwrap().clone();
        let mut now = Vec::new();
        for action in plan(desired, &observed) {
            if Self::touches(&action, &busy) {
                continue;
            }
            if let Action::Report(status) = &action {
                if reported.contains(&status.task_id) {
                    continue;
                }
            }
            if matches!(action, Action::Stop { .. }) {
                self.spawn_stop(action);
            } else {
                now.push(action);
            }
        }
        let mut outcome = self.run(now).await;
        for (action, step) in finished {
            Self::record(&mut outcome, action, step);
        }
        Ok(outcome)
    }

    /// Waits until no stop is in flight.
    #[cfg(test)]
    pub async fn settle(&self) {
        while !self.stopping.lock().unwrap().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    fn record(outcome: &mut Outcome, action: String, step: Step) {
        if let Some(status) = step.status {
            outcome.statuses.push(status);
        }
        if let Some(error) = step.error {
            tracing::warn!(%action, %error, "container action failed");
            outcome.errors.push(ActionError { action, error });
        }
    }

    /// Executes actions, at most `parallelism` at once. The plan holds at
    /// most one engine action per container, so they may run in any order.
    pub async fn run(&self, actions: Vec<Action>) -> Outcome {
        // Unordered, so one slow action (a pull, a long grace period) does
        // not hold back the ones queued behind it; sorted back afterwards.
        let mut steps: Vec<(usize, String, Step)> = stream::iter(actions.into_iter().enumerate())
            .map(|(index, action)| async move {
                let line = action.to_string();
                let step = self.execute(action).await;
                (index, line, step)
            })
            .buffer_unordered(self.config.parallelism)
            .collect()
            .await;
        steps.sort_by_key(|(index, _, _)| *index);
        let mut outcome = Outcome::default();
        for (_, action, step) in steps {
            Self::record(&mut outcome, action, step);
        }
        outcome
    }

    async fn execute(&self, action: Action) -> Step {
        match action {
            Action::Report(status) => Step::status(status),
            Action::Create(task) => self.create(&task).await,
            Action::Start {
                task_id,
                container_id,
            } => self.start(&task_id, &container_id).await,
            Action::Stop {
                container_id,
                grace,
                signal,
                report,
            } => {
                let stopped = self
                    .limit(
                        grace + self.config.call_timeout,
                        "stop",
                        self.runtime.stop(&container_id, grace, signal.as_deref()),
                    )
                    .await;
                match stopped {
                    Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
                    Err(error) => return Step::error(error),
                }
                match self.remove(&container_id).await {
                    Ok(()) => report.map_or_else(Step::nothing, Step::status),
                    Err(error) => Step::error(error),
                }
            }
            Action::Remove { container_id } => match self.remove(&container_id).await {
                Ok(()) => Step::nothing(),
                Err(error) => Step::error(error),
            },
        }
    }

    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
        match self
            .limit(
                self.config.call_timeout,
                "remove",
                self.runtime.remove(container_id),
            )
            .await
        {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Makes the image available per the pull policy. `Ok(Some(status))`
    /// when the task must be rejected.
    async fn ensure_image(&self, task: &DesiredTask) -> Result<Option<TaskStatus>, RuntimeError> {
        let image = task.spec.image.as_str();
        let reject = |error: String| {
            Some(
                TaskStatus::new(&task.id, TaskState::Rejected, "image unavailable")
                    .with_error(error),
            )
        };
        let present = || {
            self.limit(
                self.config.call_timeout,
                "image check",
                self.runtime.image_present(image),
            )
        };
        let pull = || self.limit(self.config.pull_timeout, "pull", self.runtime.pull(image));
        match task.spec.pull {
            PullPolicy::Never => Ok(if present().await? {
                None
            } else {
                reject(format!(
                    "image {image} is not present on this node and the pull policy is never; load it on the node or use --pull missing"
                ))
            }),
            PullPolicy::Missing => {
                if present().await? {
                    return Ok(None);
                }
                match pull().await {
                    Ok(()) => Ok(None),
                    Err(error @ RuntimeError::Unavailable { .. }) => Err(error),
                    Err(error) => Ok(reject(error.to_string())),
                }
            }
            PullPolicy::Always => match pull().await {
                Ok(()) => Ok(None),
                Err(error @ RuntimeError::Unavailable { .. }) => Err(error),
                // The registry may be unreachable while a local copy exists.
                Err(error) => {
                    if present().await? {
                        tracing::warn!(%image, %error, "pull failed; using the local image");
                        Ok(None)
                    } else {
                        Ok(reject(error.to_string()))
                    }
                }
            },
        }
    }

    async fn create(&self, task: &DesiredTask) -> Step {
        match self.ensure_image(task).await {
            Ok(None) => {}
            Ok(Some(rejected)) => return Step::status(rejected),
            Err(error) => return Step::error(error),
        }
        let spec = container_spec(task, &self.scope.cluster_id, &self.scope.node_id);
        let created = self
            .limit(
                self.config.call_timeout,
                "create",
                self.runtime.create(&spec),
            )
            .await;
        let container_id = match created {
            Ok(id) => id,
            Err(error @ RuntimeError::Unavailable { .. }) => return Step::error(error),
            Err(RuntimeError::Conflict { detail }) => {
                // A create that timed out may have succeeded: the name is
                // then held by this task's own container, which is started.
                match self.own_container_named(&spec.name, &task.id).await {
                    Some(id) => id,
                    None => {
                        let status = TaskStatus::new(&task.id, TaskState::Rejected, "name in use")
                            .with_error(format!(
                                "the container name {} is taken by a container shoal does not manage: {detail}",
                                spec.name
                            ));
                        return Step::both(status, RuntimeError::Conflict { detail });
                    }
                }
            }
            Err(error) => {
                let status = TaskStatus::new(&task.id, TaskState::Rejected, "create failed")
                    .with_error(error.to_string());
                return Step::both(status, error);
            }
        };
        self.start(&task.id, &container_id).await
    }

    /// The id of the container named `name` when it belongs to this scope
    /// and task.
    async fn own_container_named(&self, name: &str, task_id: &str) -> Option<String> {
        let info = self
            .limit(
                self.config.call_timeout,
                "inspect",
                self.runtime.inspect(name),
            )
            .await
            .ok()?;
        (self.scope.contains(&info.labels) && info.task_id() == Some(task_id)).then_some(info.id)
    }

    async fn start(&self, task_id: &str, container_id: &str) -> Step {
        let started = self
            .limit(
                self.config.call_timeout,
                "start",
                self.runtime.start(container_id),
            )
            .await;
        match started {
            Ok(()) => self.started(task_id, container_id).await,
            // Engine down or container gone: the next pass sees the truth.
            Err(error @ (RuntimeError::Unavailable { .. } | RuntimeError::NotFound { .. })) => {
                Step::error(error)
            }
            Err(error) => {
                let status = TaskStatus::new(task_id, TaskState::Failed, "start failed")
                    .with_error(error.to_string())
                    .with_container(container_id);
                Step::both(status, error)
            }
        }
    }

    /// The status of a container that just started: running, or starting while
    /// a health check (the spec's or the image's) has not yet passed. When the
    /// engine cannot say, nothing is reported and the next pass looks again.
    async fn started(&self, task_id: &str, container_id: &str) -> Step {
        let inspected = self
            .limit(
                self.config.call_timeout,
                "inspect",
                self.runtime.inspect(container_id),
            )
            .await;
        match inspected {
            Ok(info) => match info.health {
                None | Some(Health::Healthy) => Step::status(
                    TaskStatus::new(task_id, TaskState::Running, "running")
                        .with_container(container_id)
                        .with_health(info.health),
                ),
                Some(health) => Step::status(
                    TaskStatus::new(task_id, TaskState::Starting, "waiting for health check")
                        .with_container(container_id)
                        .with_health(Some(health)),
                ),
            },
            Err(error) => Step::error(error),
        }
    }

    /// Bounds a runtime call in time, whatever the runtime does itself.
    async fn limit<T>(
        &self,
        limit: Duration,
        what: &str,
        call: impl std::future::Future<Output = Result<T, RuntimeError>>,
    ) -> Result<T, RuntimeError> {
        tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(RuntimeError::Unavailable {
                detail: format!("{what} took longer than {} ms", limit.as_millis()),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::agent::fake::FakeRuntime;
    use crate::agent::runtime::ContainerState;
    use shoal_raft::DesiredState;

    const IMAGE: &str = "shoal-test:latest";

    fn task(id: &str, slot: u64, state: TaskState) -> DesiredTask {
        DesiredTask {
            id: id.to_string(),
            service: "web".to_string(),
            slot,
            desired_state: DesiredState::Running,
            state,
            spec: TaskSpec::new(IMAGE),
        }
    }

    fn setup(config: ExecutorConfig) -> (Arc<FakeRuntime>, Executor) {
        let fake = Arc::new(FakeRuntime::new());
        fake.add_image(IMAGE);
        let executor = Executor::new(fake.clone(), Scope::new("cl", "1"), config);
        (fake, executor)
    }

    fn states(outcome: &Outcome) -> Vec<(String, TaskState)> {
        outcome
            .statuses
            .iter()
            .map(|s| (s.task_id.clone(), s.state))
            .collect()
    }

    /// Applies reported states to the desired tasks, as the leader would.
    fn echo(desired: &mut [DesiredTask], outcome: &Outcome) {
        for status in &outcome.statuses {
            if let Some(task) = desired.iter_mut().find(|t| t.id == status.task_id) {
                task.state = status.state;
            }
        }
    }

    #[tokio::test]
    async fn deploy_runs_tasks_then_adopts_them() {
        let (fake, executor) = setup(ExecutorConfig::default());
        let mut desired = vec![
            task("aaaa000000000001", 1, TaskState::Assigned),
            task("aaaa000000000002", 2, TaskState::Assigned),
            task("aaaa000000000003", 3, TaskState::Assigned),
        ];
        let outcome = executor.reconcile(&desired).await.unwrap();
        assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
        assert!(outcome
            .statuses
            .iter()
            .all(|s| s.state == TaskState::Running && s.container_id.is_some()));
        assert_eq!(outcome.statuses.len(), 3);
        let containers = fake.list("cl", "1").await.unwrap();
        let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "web.1.aaaa00000000",
                "web.2.aaaa00000000",
                "web.3.aaaa00000000"
            ]
        );
        assert_eq!(fake.calls().pulls, 0, "present images are never pulled");

        // A restarted agent finds the same containers: nothing changes.
        echo(&mut desired, &outcome);
        let before = fake.calls();
        let again = executor.reconcile(&desired).await.unwrap();
        assert_eq!(again, Outcome::default());
        let after = fake.calls();
        assert_eq!(
            (after.creates, after.starts, after.stops),
            (before.creates, before.starts, before.stops)
        );
    }

    #[tokio::test]
    async fn a_checked_task_starts_then_runs_once_healthy_and_fails_unhealthy() {
        let (fake, executor) = setup(ExecutorConfig::default());
        let mut checked = task("dddd000000000001", 1, TaskState::Assigned);
        checked.spec.healthcheck = Some(shoal_raft::HealthCheck {
            test: vec!["CMD-SHELL".to_string(), "true".to_string()],
            ..Default::default()
        });
        let mut desired = vec![checked];
        let outcome = executor.reconcile(&desired).await.unwrap();
        assert_eq!(
            states(&outcome),
            [("dddd000000000001".to_string(), TaskState::Starting)]
        );
        assert_eq!(outcome.statuses[0].health, Some(Health::Starting));
        echo(&mut desired, &outcome);
        let id = fake.containers()[0].id.clone();
        fake.set_health(&id, Health::Healthy).unwrap();
        let outcome = executor.reconcile(&desired).await.unwrap();
        assert_eq!(outcome.statuses[0].state, TaskState::Running);
        assert_eq!(outcome.statuses[0].health, Some(Health::Healthy));
        echo(&mut desired, &outcome);
        fake.set_health(&id, Health::Unhealthy).unwrap();
        let outcome = executor.reconcile(&desired).await.unwrap();
        assert_eq!(outcome.statuses[0].state, TaskState::Failed);
        assert_eq!(outcome.statuses[0].health, Some(Health::Unhealthy));
        assert_eq!(outcome.statuses[0].message, "health check failed");
        executor.settle().await;
        assert!(fake.calls().stops >= 1, "an unhealthy container is stopped");
    }

    #[tokio::test]
    async fn missing_image_rejects_the_task_with_the_engine_error() {
        let (fake, executor) = setup(ExecutorConfig::default());
        let mut missing = task("bbbb000000000001", 1, TaskState::Assigned);
        missing.spec.image = "nowhere:1".to_string();
        let outcome = executor.reconcile(&[missing.clone()]).await.unwrap();
        assert_eq!(
            states(&outcome),
            [("bbbb000000000001".to_string(), TaskState::Rejected)]
        );
        assert!(
            outcome.statuses[0].error.contains("nowhere:1"),
            "{:?}",
            outcome.statuses[0]
        );
        assert_eq!(fake.calls().pulls, 1);
        assert_eq!(fake.calls().creates, 0);

        missing.spec.pull = PullPolicy::Never;
        let outcome = executor.reconcile(&[missing.clone()]).await.unwrap();
        assert_eq!(outcome.statuses[0].state, TaskState::Rejected);
        assert!(outcome.statuses[0].error.contains("pull policy is never"));
        assert_eq!(fake.calls().pulls, 1, "never means never");

        // Pullable: pulled once, then run.
        fake.add_pullable("nowhere:1");
        missing.spec.pull = PullPolicy::Missing;
        let outcome = executor.reconcile(&[missing]).await.unwrap();
        assert_eq!(outcome.statuses[0].state, TaskState::Running);
        assert_eq!(fake.calls().pulls, 2);
    }

    #[tokio::test]
    async fn killed_container_is_reported_failed_and_removed_once_shut_down() {
        let (fake, executor) = setup(ExecutorConfig::default());
        let mut desired = vec![task("cccc000000000001", 1, TaskState::Assigned)];
        let outcome = executor.reconcile(&desired).await.unwrap();
        echo(&mut desired, &outcome);
        let id = outcome.statuses[0].container_id.clone().unwrap();

        fake.kill(&id, 1).unwrap();
        let outcome = executor.reconcile(&desired).await.unwrap();
        assert_eq!(outcome.statuses.len(), 1);
        let failed = &outcome.statuses[0];
        assert_eq!(
            (failed.state, failed.exit_code),
            (TaskState::Failed, Some(1))
        );
        assert_eq!(failed.error, "exit code 1");
        assert_eq!(fake.containers().len(), 1, "kept until the leader decides");

        echo(&mut desired, &outcome);
        desired[0].desired_state = DesiredState::Shutdown;
        let outcome = executor.reconcile(&desired).await.unwrap();
        assert_eq!(outcome, Outcome::default());
        assert!(fake.containers().is_empty());
    }

    #[tokio::test]
    async fn a_slow_stop_does_not_hold_back_other_work() {
        let (fake, executor) = setup(ExecutorConfig::default());
        let mut desired = vec![task("eeee000000000001", 1, TaskState::Assigned)];
        let outcome = executor.reconcile(&desired).await.unwrap();
        echo(&mut desired, &outcome);
        desired[0].desired_state = DesiredState::Shutdown;
        desired[0].spec.stop_grace_period_ms = 60_000;
        fake.set_stop_delay(Duration::from_secs(60));
        desired.push(task("eeee000000000002", 2, TaskState::Assigned));
        let started = Instant::now();
        let outcome = executor.reconcile(&desired).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the pass waited for the stop"
        );
        assert_eq!(
            states(&outcome),
            [("eeee000000000002".to_string(), TaskState::Running)]
        );
        // While it is being stopped, the container is left alone.
        let again = executor.reconcile(&desired).await.unwrap();
        assert!(again
            .statuses
            .iter()
            .all(|s| s.task_id != "eeee000000000001"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while fake.calls().stops == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        executor.reconcile(&desired).await.unwrap();
        assert_eq!(fake.calls().stops, 1, "one stop, not one per pass");
    }

    #[tokio::test]
    async fn shutdown_and_unassigned_containers_are_stopped_and_removed() {
        let (fake, executor) = setup(ExecutorConfig::default());
        let mut desired = vec![
            task("dddd000000000001", 1, TaskState::Assigned),
            task("dddd000000000002", 2, TaskState::Assigned),
        ];
        let outcome = executor.reconcile(&desired).await.unwrap();
        echo(&mut desired, &outcome);
        // The first task is shut down; the second was rescheduled elsewhere
        // while this node was away, so it is no longer assigned here.
        desired[0].desired_state = DesiredState::Shutdown;
        desired.truncate(1);
        // Stops run in the background; their outcome comes with the next pass.
        let outcome = executor.reconcile(&desired).await.unwrap();
        assert!(
            states(&outcome).is_empty(),
            "nothing reported before the stops end"
        );
        executor.settle().await;
        let outcome = executor.reconcile(&desired).await.unwrap();
        assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
        assert_eq!(
            states(&outcome),
            [("dddd000000000001".to_string(), TaskState::Shutdown)]
        );
        assert!(fake.containers().is_empty());
        assert_eq!(fake.calls().stops, 2);
    }

    #[tokio::test]
    async fn containers_outside_the_scope_are_never_touched() {
        let (fake, executor) = setup(ExecutorConfig::default());
        let other_node = Executor::new(
            fake.clone(),
            Scope::new("cl", "2"),
            ExecutorConfig::default(),
        );
        other_node
            .reconcile(&[task("eeee000000000001", 1, TaskState::Assigned)])
            .await
            .unwrap();
        let outcome = executor.reconcile(&[]).await.unwrap();
        assert_eq!(outcome, Outcome::default());
        assert_eq!(fake.containers().len(), 1);
        assert_eq!(fake.containers()[0].state, ContainerState::Running);
    }

    #[tokio::test]
    async fn unavailable_engine_fails_the_pass() {
        let (fake, executor) = setup(ExecutorConfig::default());
        fake.set_available(false);
        let error = executor
            .reconcile(&[task("ffff000000000001", 1, TaskState::Assigned)])
            .await
            .unwrap_err();
        assert!(error.is_retryable(), "{error}");
    }

    #[tokio::test]
    async fn actions_run_in_parallel_up_to_the_limit() {
        let (fake, executor) = setup(ExecutorConfig {
            parallelism: 8,
            ..ExecutorConfig::default()
        });
        let delay = Duration::from_millis(100);
        fake.set_start_delay(delay);
        let desired: Vec<DesiredTask> = (1..=16)
            .map(|slot| task(&format!("{slot:016x}"), slot, TaskState::Assigned))
            .collect();
        let before = Instant::now();
        let outcome = executor.reconcile(&desired).await.unwrap();
        let took = before.elapsed();
        assert_eq!(outcome.statuses.len(), 16);
        // 16 starts, 8 at a time: two rounds at least, far from 16 in series.
        assert!(took >= delay * 2, "more than 8 ran at once: {took:?}");
        assert!(took < delay * 12, "actions ran in series: {took:?}");
    }

    #[tokio::test]
    async fn a_slow_call_times_out_without_a_report() {
        let (fake, executor) = setup(ExecutorConfig {
            call_timeout: Duration::from_millis(50),
            ..ExecutorConfig::default()
        });
        fake.set_start_delay(Duration::from_secs(5));
        let outcome = executor
            .reconcile(&[task("abab000000000001", 1, TaskState::Assigned)])
            .await
            .unwrap();
        assert!(outcome.statuses.is_empty(), "{:?}", outcome.statuses);
        assert_eq!(outcome.errors.len(), 1);
        assert!(matches!(
            outcome.errors[0].error,
            RuntimeError::Unavailable { .. }
        ));
    }
}
