//! The rolling updater: which slots of a service move to its current task
//! template now, and where an update run stands.
//!
//! A change of the task template starts an update run ([`UpdateStatus`]); a
//! rollback starts one too, with the rollback settings. Each pass, for a
//! service whose run is in progress, [`plan_service`] sorts the wanted slots:
//!
//! - **done**: the slot has a live task of the current template that was not
//!   made by this run, or that has been running (and healthy) for the monitor
//!   window while the tasks it replaces have stopped (a task belongs to the run when it carries the service version the
//!   run started: every run starts with a new version, so no clock is compared);
//! - **in flight**: the slot's current task is newer than the run and has not
//!   yet run through its monitor window; a slot done less than `delay` ago
//!   counts as in flight too, which spaces the batches;
//! - **to update**: the slot has only live tasks of an older template and has
//!   had no task of this run (a slot is never restarted twice by one run);
//! - **failed**: a task of this run failed (or was rejected) before it had run
//!   through its monitor window. Each slot counts once;
//! - a slot with no live task at all is in flight while the orchestrator will
//!   fill it (a new slot, or a replacement under the restart policy).
//!
//! It then records new failures, applies the failure action once the failed
//! share exceeds `max_failure_ratio` (pause, continue, or roll back), starts up
//! to `parallelism` minus in-flight slots (stop-first: the old task is stopped
//! and the orchestrator creates the new one once it has; start-first: the new
//! one is created and the orchestrator stops the old once the new one runs), and
//! completes the run once nothing is in flight or left to update.
//!
//! Everything it needs is in the replicated state, so a new leader carries on
//! a run where the old one stopped. Pure: no clock (`now_ms` is an input), no I/O.

use std::collections::BTreeMap;

use crate::orchestrator::{wanted_slots, SlotKey, Want};
use crate::service::{
    DesiredState, FailureAction, RestartCondition, Service, Task, TaskState, UpdateConfig,
    UpdateOrder, UpdateState, RATIO_ONE_PPM,
};
use crate::state::{slot_key, ClusterState, TaskChange};

/// Where one slot stands in an update run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotStatus {
    /// Done at this time (0: before the run started).
    Done {
        at_ms: u64,
    },
    InFlight,
    ToUpdate,
    /// Its task of this run failed; nothing more is done to it in this run.
    Failed,
    /// Nothing for the updater: no live task yet (the orchestrator fills it).
    Empty,
}

/// Counts of a run's slots, for progress displays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateProgress {
    /// Slots the run must bring to the current template.
    pub total: u64,
    pub done: u64,
    pub in_flight: u64,
    pub failed: u64,
}

/// A task of this run that failed before it ran through its monitor window.
fn failed_in_window(task: &Task, config: &UpdateConfig) -> bool {
    let failed = matches!(task.state, TaskState::Failed | TaskState::Rejected);
    let in_window = match task.running_since_ms {
        None => true,
        Some(since) => task.state_changed_at_ms < since.saturating_add(config.monitor_ms),
    };
    failed && in_window
}

/// Where one slot stands. A task belongs to the run when it was made from the
/// service's current version: every run starts with a new version.
fn classify(service: &Service, config: &UpdateConfig, tasks: &[&Task], now_ms: u64) -> SlotStatus {
    let of_run = |t: &&&Task| t.spec_version == service.version;
    if tasks
        .iter()
        .filter(of_run)
        .any(|t| failed_in_window(t, config))
    {
        return SlotStatus::Failed;
    }
    let live = |t: &&&Task| t.is_live();
    let current = tasks
        .iter()
        .filter(live)
        .filter(|t| service.is_current(t))
        .max_by_key(|t| (t.created_at_ms, &t.id));
    if let Some(task) = current {
        if task.spec_version != service.version {
            return SlotStatus::Done { at_ms: 0 };
        }
        // Done only once the old tasks it replaces have stopped, too.
        let old_stopping = tasks
            .iter()
            .any(|t| !t.state.is_terminal() && !service.is_current(t));
        return match (task.state, task.running_since_ms) {
            (TaskState::Running, Some(since))
                if now_ms >= since.saturating_add(config.monitor_ms) && !old_stopping =>
            {
                SlotStatus::Done {
                    at_ms: since.saturating_add(config.monitor_ms),
                }
            }
            _ => SlotStatus::InFlight,
        };
    }
    let outdated_live = tasks.iter().filter(live).any(|t| !service.is_current(t));
    if holds_for_stop(service, tasks) {
        return SlotStatus::InFlight;
    }
    if !outdated_live {
        return if refilled(service, tasks) {
            // The orchestrator will fill it with a task of this run.
            SlotStatus::InFlight
        } else {
            SlotStatus::Empty
        };
    }
    if tasks.iter().any(|t| t.spec_version == service.version) {
        // A start-first attempt whose new task ended: the old one still runs.
        SlotStatus::Failed
    } else {
        SlotStatus::ToUpdate
    }
}

/// Whether a stop-first run is waiting for a slot's old task to stop before
/// the orchestrator starts its new one: the slot has no live task of the
/// current template and an older task that is still stopping.
pub(crate) fn holds_for_stop(service: &Service, tasks: &[&Task]) -> bool {
    let stop_first = service
        .active_update_config()
        .is_some_and(|c| c.order == UpdateOrder::StopFirst);
    stop_first
        && !tasks.iter().any(|t| t.is_live() && service.is_current(t))
        && tasks.iter().any(|t| {
            !t.state.is_terminal()
                && t.desired_state == DesiredState::Shutdown
                && !service.is_current(t)
        })
}

/// Whether the orchestrator will give a slot without a live task a new one: a
/// new slot, or one whose last task the restart policy replaces.
fn refilled(service: &Service, tasks: &[&Task]) -> bool {
    let Some(latest) = tasks
        .iter()
        .max_by_key(|t| (t.state_changed_at_ms, t.restart_count, &t.id))
    else {
        return true;
    };
    let policy = &service.spec.restart;
    let restarts = match policy.condition {
        RestartCondition::None => false,
        RestartCondition::OnFailure => latest.state != TaskState::Complete,
        RestartCondition::Any => true,
    };
    restarts && (policy.max_attempts == 0 || latest.restart_count < policy.max_attempts)
}

/// The slots the run covers: those the service wants running.
fn run_slots(wanted: &BTreeMap<SlotKey, Want>) -> impl Iterator<Item = SlotKey> + '_ {
    wanted
        .iter()
        .filter(|(_, want)| **want == Want::Run)
        .map(|(key, _)| *key)
}

/// The name of a slot as users see it: `web.3`, or `web` on node 2 for a global task.
fn slot_name(service: &str, key: SlotKey) -> String {
    match key {
        (0, Some(node)) => format!("{service} on node {node}"),
        (slot, _) => format!("{service}.{slot}"),
    }
}

/// Why the newest failed task of a slot failed, as one phrase.
fn failure_reason(tasks: &[&Task]) -> String {
    let Some(task) = tasks
        .iter()
        .filter(|t| matches!(t.state, TaskState::Failed | TaskState::Rejected))
        .max_by_key(|t| (t.state_changed_at_ms, &t.id))
    else {
        return "its new task stopped".to_owned();
    };
    let what = if task.message == "health check failed" {
        "failed its health check".to_owned()
    } else if task.state == TaskState::Rejected {
        "was rejected".to_owned()
    } else {
        "failed".to_owned()
    };
    let detail = match (task.exit_code, task.error.is_empty()) {
        (Some(code), _) if task.message != "health check failed" => format!(" (exit {code})"),
        (_, false) => format!(" ({})", task.error),
        _ => String::new(),
    };
    format!("{what}{detail}")
}

/// The update decisions for one service whose tasks, by slot, are `slots`.
pub(crate) fn plan_service(
    service: &Service,
    slots: &BTreeMap<SlotKey, Vec<&Task>>,
    wanted: &BTreeMap<SlotKey, Want>,
    now_ms: u64,
    changes: &mut Vec<TaskChange>,
) {
    let (Some(run), Some(config)) = (&service.update, service.active_update_config()) else {
        return;
    };
    let name = &service.spec.name;
    let rolling_back = run.state == UpdateState::RollingBack;
    let mut in_flight = 0u64;
    let mut done = 0u64;
    let mut to_update: Vec<SlotKey> = Vec::new();
    let mut new_failures: Vec<(SlotKey, String)> = Vec::new();
    let mut total = 0u64;
    for key in run_slots(wanted) {
        total += 1;
        let tasks = slots.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        match classify(service, config, tasks, now_ms) {
            SlotStatus::Done { at_ms } => {
                done += 1;
                if config.delay_ms > 0 && at_ms > 0 && now_ms < at_ms + config.delay_ms {
                    in_flight += 1;
                }
            }
            SlotStatus::InFlight => in_flight += 1,
            SlotStatus::ToUpdate => to_update.push(key),
            SlotStatus::Failed => {
                if !run.failed_slots.contains(&key) {
                    new_failures.push((key, failure_reason(tasks)));
                }
            }
            SlotStatus::Empty => {}
        }
    }
    for ((slot, node_id), _) in &new_failures {
        changes.push(TaskChange::UpdateSlotFailed {
            service: name.clone(),
            run_version: run.version,
            slot: *slot,
            node_id: *node_id,
        });
    }
    let failed = run.failed_slots.len() as u64 + new_failures.len() as u64;
    let denominator = run.total_slots.max(total).max(1);
    let over_ratio = failed > 0
        && u128::from(failed) * u128::from(RATIO_ONE_PPM)
            > u128::from(config.max_failure_ratio_ppm) * u128::from(denominator);
    let transition = |to: UpdateState, message: String| TaskChange::UpdateTransition {
        service: name.clone(),
        run_version: run.version,
        from: run.state,
        to,
        message,
    };
    if over_ratio && !new_failures.is_empty() {
        let ((slot, node), reason) = &new_failures[0];
        let what = format!("task {} {reason}", slot_name(name, (*slot, *node)));
        let at = format!("{done}/{denominator}");
        match (config.failure_action, rolling_back) {
            (FailureAction::Continue, _) => {}
            (FailureAction::Rollback, false) => {
                let to = match &service.previous_spec {
                    Some(previous) if previous.image != service.spec.image => {
                        previous.image.clone()
                    }
                    _ => "the previous spec".to_owned(),
                };
                changes.push(transition(
                    UpdateState::RollingBack,
                    format!("update failed at {at}: {what}; rolling back to {to}"),
                ));
                return;
            }
            (_, false) => {
                changes.push(transition(
                    UpdateState::Paused,
                    format!("update paused at {at}: {what}"),
                ));
                return;
            }
            (_, true) => {
                changes.push(transition(
                    UpdateState::RollbackPaused,
                    format!("rollback paused at {at}: {what}"),
                ));
                return;
            }
        }
    }
    if in_flight == 0 && to_update.is_empty() {
        let (to, what) = if rolling_back {
            (UpdateState::RolledBack, "rollback")
        } else {
            (UpdateState::Completed, "update")
        };
        let mut message = if failed == 0 {
            format!("{what} completed")
        } else {
            format!("{what} completed; {failed} of {denominator} tasks failed")
        };
        // A rollback the failure action started keeps saying why.
        if rolling_back && run.message.starts_with("update failed") {
            message = format!("{message} ({})", run.message);
        }
        changes.push(transition(to, message));
        return;
    }
    let budget = match config.parallelism {
        0 => u64::MAX,
        parallelism => parallelism.saturating_sub(in_flight),
    };
    let reason = format!(
        "replaced by version {} ({})",
        service.version,
        if rolling_back {
            "rollback"
        } else {
            "rolling update"
        }
    );
    for key in to_update
        .into_iter()
        .take(budget.min(usize::MAX as u64) as usize)
    {
        match config.order {
            // The orchestrator creates the new task once the old one has stopped.
            UpdateOrder::StopFirst => {
                let tasks = slots.get(&key).map(Vec::as_slice).unwrap_or(&[]);
                for task in tasks.iter().filter(|t| t.is_live()) {
                    changes.push(TaskChange::SetDesired {
                        task_id: task.id.clone(),
                        desired: DesiredState::Shutdown,
                        reason: reason.clone(),
                    });
                }
            }
            // The orchestrator stops the old task once the new one runs.
            UpdateOrder::StartFirst => {
                let (slot, node_id) = key;
                changes.push(TaskChange::Create {
                    service: name.clone(),
                    slot,
                    node_id,
                    restart_count: 0,
                });
            }
        }
    }
}

/// The earliest time after `now_ms` at which a running update can move on by
/// the clock alone: a new task leaving its monitor window, or a delay ending.
/// The leader wakes then instead of waiting for its next tick.
pub fn next_deadline(state: &ClusterState, now_ms: u64) -> Option<u64> {
    let mut next: Option<u64> = None;
    for task in state.tasks.values() {
        let Some(since) = task.running_since_ms else {
            continue;
        };
        let Some(service) = state.services.get(&task.service) else {
            continue;
        };
        let Some(config) = service.active_update_config() else {
            continue;
        };
        if task.spec_version != service.version || !task.is_live() {
            continue;
        }
        let done = since.saturating_add(config.monitor_ms);
        for at in [done, done.saturating_add(config.delay_ms)] {
            if at > now_ms {
                next = Some(next.map_or(at, |n| n.min(at)));
                break;
            }
        }
    }
    next
}

/// Where the current run of `name` stands, if it has had one.
pub fn progress(state: &ClusterState, name: &str, now_ms: u64) -> Option<UpdateProgress> {
    let service = state.services.get(name)?;
    let run = service.update.as_ref()?;
    let config = match run.state {
        UpdateState::RollingBack | UpdateState::RollbackPaused | UpdateState::RolledBack => {
            &service.spec.rollback
        }
        _ => &service.spec.update,
    };
    let mut slots: BTreeMap<SlotKey, Vec<&Task>> = BTreeMap::new();
    for task in state.tasks_of(name) {
        slots.entry(slot_key(task)).or_default().push(task);
    }
    let wanted = wanted_slots(state, service);
    let mut progress = UpdateProgress::default();
    for key in run_slots(&wanted) {
        progress.total += 1;
        let tasks = slots.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        match classify(service, config, tasks, now_ms) {
            SlotStatus::Done { .. } => progress.done += 1,
            SlotStatus::InFlight => progress.in_flight += 1,
            SlotStatus::Failed => progress.failed += 1,
            SlotStatus::ToUpdate | SlotStatus::Empty => {}
        }
    }
    Some(progress)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use super::*;
    use crate::orchestrator::reconcile;
    use crate::scheduler::schedule;
    use crate::service::{ServiceMode, ServiceSpec, TaskStatusUpdate, RATIO_ONE_PPM};
    use crate::state::{apply, Command};
    use crate::testing::{add_service, cluster, render};
    use crate::types::NodeId;

    const TICK: u64 = 100;

    /// A leader and agents on a clock: every step reconciles, schedules, and moves
    /// tasks forward after fixed delays. Tasks of `bad_image` fail once started.
    struct Sim {
        state: ClusterState,
        now: u64,
        start_ms: u64,
        stop_ms: u64,
        bad_image: &'static str,
        /// Fewest tasks that were running and meant to, over every step.
        min_running: u64,
        /// Task ids by slot, in creation order.
        created: BTreeMap<u64, Vec<String>>,
    }

    impl Sim {
        fn new(replicas: u64, config: UpdateConfig) -> Sim {
            let mut state = cluster(3);
            add_service(
                &mut state,
                ServiceSpec {
                    mode: ServiceMode::Replicated { replicas },
                    update: config,
                    rollback: UpdateConfig {
                        failure_action: FailureAction::Pause,
                        ..config
                    },
                    ..ServiceSpec::default_for("web", "app:1")
                },
            );
            let mut sim = Sim {
                state,
                now: 1_000,
                start_ms: 300,
                stop_ms: 200,
                bad_image: "app:bad",
                min_running: u64::MAX,
                created: BTreeMap::new(),
            };
            sim.run_until(|s| s.running() == replicas, 100);
            sim.min_running = u64::MAX;
            sim
        }

        fn commit(&mut self, command: Command) {
            let response = apply(&mut self.state, &command);
            assert!(!response.is_rejected(), "{response:?}");
        }

        fn service(&self) -> &Service {
            &self.state.services["web"]
        }

        fn run(&self) -> &crate::service::UpdateStatus {
            self.service().update.as_ref().expect("an update run")
        }

        fn running(&self) -> u64 {
            self.state
                .tasks
                .values()
                .filter(|t| {
                    t.state == TaskState::Running && t.desired_state == DesiredState::Running
                })
                .count() as u64
        }

        fn update(&mut self, edit: impl FnOnce(&mut ServiceSpec)) {
            let mut spec = (*self.service().spec).clone();
            edit(&mut spec);
            let now_ms = self.now;
            self.commit(Command::UpdateService { spec, now_ms });
        }

        fn step(&mut self) {
            let now_ms = self.now;
            let changes = reconcile(&self.state, now_ms);
            assert_eq!(reconcile(&self.state, now_ms), changes, "deterministic");
            self.commit(Command::ApplyTaskChanges { changes, now_ms });
            let changes = schedule(&self.state);
            self.commit(Command::ApplyTaskChanges { changes, now_ms });
            for task in self.state.tasks.values() {
                let ids = self.created.entry(task.slot).or_default();
                if !ids.contains(&task.id) {
                    ids.push(task.id.clone());
                }
            }
            let mut reports: BTreeMap<NodeId, Vec<TaskStatusUpdate>> = BTreeMap::new();
            for task in self.state.tasks.values() {
                let (Some(node), false) = (task.node_id, task.state.is_terminal()) else {
                    continue;
                };
                let waited = now_ms - task.updated_at_ms.max(task.state_changed_at_ms);
                let next = match task.desired_state {
                    DesiredState::Shutdown if waited >= self.stop_ms => TaskState::Shutdown,
                    DesiredState::Running
                        if task.state == TaskState::Assigned && waited >= self.start_ms =>
                    {
                        if task.spec.image == self.bad_image {
                            TaskState::Failed
                        } else {
                            TaskState::Running
                        }
                    }
                    _ => continue,
                };
                reports.entry(node).or_default().push(TaskStatusUpdate {
                    task_id: task.id.clone(),
                    state: next,
                    message: if next == TaskState::Failed {
                        "failed".to_owned()
                    } else {
                        next.to_string()
                    },
                    error: String::new(),
                    exit_code: (next == TaskState::Failed).then_some(1),
                    container_id: None,
                    health: None,
                    at_ms: now_ms,
                });
            }
            for (node_id, updates) in reports {
                self.commit(Command::ReportTaskStatus {
                    node_id,
                    updates,
                    now_ms,
                });
            }
            self.min_running = self.min_running.min(self.running());
            self.now += TICK;
        }

        fn run_until(&mut self, done: impl Fn(&Sim) -> bool, max_steps: u32) {
            for _ in 0..max_steps {
                if done(self) {
                    return;
                }
                self.step();
            }
            panic!(
                "not done after {max_steps} steps: {:?}\n{:#?}",
                self.service().update,
                self.state
                    .tasks
                    .values()
                    .map(|t| (&t.id, t.slot, &t.spec.image, t.state, t.desired_state))
                    .collect::<Vec<_>>()
            );
        }

        fn until_final(&mut self) {
            self.run_until(|s| !s.run().state.is_running(), 1_000);
        }

        /// Slot by slot, the images of its live tasks.
        fn live_images(&self) -> BTreeMap<u64, Vec<String>> {
            let mut images: BTreeMap<u64, Vec<String>> = BTreeMap::new();
            for task in self.state.tasks.values().filter(|t| t.is_live()) {
                images
                    .entry(task.slot)
                    .or_default()
                    .push(task.spec.image.clone());
            }
            images
        }

        /// How many tasks each slot had created since `since` (by slot).
        fn created_per_slot(&self, before: &BTreeMap<u64, Vec<String>>) -> BTreeMap<u64, usize> {
            self.created
                .iter()
                .map(|(slot, ids)| (*slot, ids.len() - before.get(slot).map_or(0, Vec::len)))
                .collect()
        }
    }

    fn config(parallelism: u64, order: UpdateOrder, monitor_ms: u64) -> UpdateConfig {
        UpdateConfig {
            parallelism,
            order,
            monitor_ms,
            ..UpdateConfig::default()
        }
    }

    fn all(slots: u64, image: &str) -> BTreeMap<u64, Vec<String>> {
        (1..=slots).map(|s| (s, vec![image.to_owned()])).collect()
    }

    #[test]
    fn stop_first_keeps_all_but_parallelism_running_and_updates_each_slot_once() {
        let mut sim = Sim::new(6, config(2, UpdateOrder::StopFirst, 500));
        let before = sim.created.clone();
        sim.update(|s| s.image = "app:2".to_owned());
        sim.until_final();
        assert_eq!(sim.run().state, UpdateState::Completed);
        assert_eq!(sim.run().message, "update completed");
        assert_eq!(sim.live_images(), all(6, "app:2"));
        assert_eq!(
            sim.min_running, 4,
            "never fewer than replicas - parallelism"
        );
        assert!(sim.created_per_slot(&before).values().all(|n| *n == 1));
        // Stop-first: each new task was created only once the old one had stopped.
        for slot in 1..=6 {
            let tasks: Vec<&Task> = sim
                .state
                .tasks
                .values()
                .filter(|t| t.slot == slot)
                .collect();
            let old = tasks.iter().find(|t| t.spec.image == "app:1").unwrap();
            let new = tasks.iter().find(|t| t.spec.image == "app:2").unwrap();
            assert_eq!(old.state, TaskState::Shutdown);
            assert!(
                new.created_at_ms >= old.state_changed_at_ms,
                "slot {slot}: new task created at {} before the old one stopped at {}",
                new.created_at_ms,
                old.state_changed_at_ms
            );
        }
    }

    #[test]
    fn start_first_never_drops_below_the_replica_count() {
        let mut sim = Sim::new(6, config(2, UpdateOrder::StartFirst, 500));
        let before = sim.created.clone();
        sim.update(|s| s.args = vec!["serve".to_owned()]);
        sim.until_final();
        assert_eq!(sim.run().state, UpdateState::Completed);
        assert_eq!(sim.min_running, 6);
        assert!(sim.created_per_slot(&before).values().all(|n| *n == 1));
        assert!(sim
            .state
            .tasks
            .values()
            .filter(|t| t.is_live())
            .all(|t| t.spec.args == ["serve"]));
    }

    #[test]
    fn parallelism_bounds_slots_in_flight_and_zero_means_all() {
        for (parallelism, most) in [(1, 1), (3, 3), (0, 6)] {
            let mut sim = Sim::new(6, config(parallelism, UpdateOrder::StopFirst, 300));
            sim.update(|s| s.image = "app:2".to_owned());
            let mut seen = 0;
            while sim.run().state.is_running() {
                let progress = progress(&sim.state, "web", sim.now).unwrap();
                seen = seen.max(progress.in_flight);
                sim.step();
            }
            assert_eq!(seen, most, "parallelism {parallelism}");
        }
    }

    #[test]
    fn the_next_batch_waits_for_the_monitor_window_and_the_delay() {
        for (monitor, delay) in [(1_000, 0), (200, 1_500)] {
            let mut sim = Sim::new(2, config(1, UpdateOrder::StopFirst, monitor));
            Arc::make_mut(&mut sim.state.services.get_mut("web").unwrap().spec)
                .update
                .delay_ms = delay;
            sim.update(|s| s.image = "app:2".to_owned());
            sim.until_final();
            let new: Vec<&Task> = sim.state.tasks.values().filter(|t| t.is_live()).collect();
            let first = new.iter().find(|t| t.slot == 1).unwrap();
            let second = new.iter().find(|t| t.slot == 2).unwrap();
            let first_done = first.running_since_ms.unwrap() + monitor;
            assert!(
                second.created_at_ms >= first_done + delay,
                "monitor {monitor} delay {delay}: slot 2 created at {}, slot 1 done at {first_done}",
                second.created_at_ms
            );
            // Stop-first: its old task's stop comes between.
            assert!(second.created_at_ms < first_done + delay + sim.stop_ms + 3 * TICK);
        }
    }

    #[test]
    fn a_failed_update_pauses_and_says_why() {
        let mut sim = Sim::new(6, config(2, UpdateOrder::StopFirst, 500));
        sim.update(|s| s.image = "app:bad".to_owned());
        sim.until_final();
        let run = sim.run().clone();
        assert_eq!(run.state, UpdateState::Paused);
        assert!(
            run.message
                .starts_with("update paused at 0/6: task web.1 failed (exit 1)"),
            "{}",
            run.message
        );
        assert!(run.completed_at_ms > 0);
        // The slots not reached keep the old image and nothing more starts.
        let images = sim.live_images();
        let old = images.values().flatten().filter(|i| *i == "app:1").count();
        assert!(old >= 4, "{images:?}");
        let tasks = sim.state.tasks.len();
        for _ in 0..20 {
            sim.step();
        }
        let untouched = (3..=6).all(|slot| sim.live_images()[&slot] == ["app:1"]);
        assert!(untouched, "{:?}", sim.live_images());
        assert!(
            sim.state.tasks.len() <= tasks + 2 * 5,
            "only restarts of the failed slots"
        );
    }

    #[test]
    fn a_failed_update_rolls_back_without_touching_slots_it_never_reached() {
        let mut cfg = config(2, UpdateOrder::StopFirst, 500);
        cfg.failure_action = FailureAction::Rollback;
        let mut sim = Sim::new(6, cfg);
        let untouched: Vec<String> = sim
            .state
            .tasks
            .values()
            .filter(|t| t.is_live() && t.slot > 2)
            .map(|t| t.id.clone())
            .collect();
        sim.update(|s| s.image = "app:bad".to_owned());
        sim.run_until(|s| s.run().state != UpdateState::Updating, 200);
        assert_eq!(sim.run().state, UpdateState::RollingBack);
        assert!(
            sim.run().message.contains("rolling back to app:1"),
            "{}",
            sim.run().message
        );
        sim.until_final();
        assert_eq!(sim.run().state, UpdateState::RolledBack);
        assert_eq!(
            sim.running(),
            6,
            "a rollback completes once every slot runs again"
        );
        assert!(
            sim.run()
                .message
                .starts_with("rollback completed (update failed at 0/6: task web.1 failed"),
            "{}",
            sim.run().message
        );
        assert_eq!(sim.service().spec.image, "app:1");
        assert_eq!(
            sim.service().previous_spec.as_ref().unwrap().image,
            "app:bad"
        );
        assert_eq!(sim.live_images(), all(6, "app:1"));
        for id in untouched {
            assert!(sim.state.tasks[&id].is_live(), "{id} was restarted");
        }
    }

    #[test]
    fn the_failure_ratio_and_continue_let_an_update_go_on() {
        // Half may fail: the first failure (1 of 4) does not pause.
        let mut cfg = config(1, UpdateOrder::StartFirst, 300);
        cfg.max_failure_ratio_ppm = RATIO_ONE_PPM / 2;
        let mut sim = Sim::new(4, cfg);
        sim.update(|s| s.image = "app:bad".to_owned());
        sim.run_until(|s| !s.run().failed_slots.is_empty(), 200);
        sim.step();
        assert_eq!(sim.run().state, UpdateState::Updating);
        sim.until_final();
        // 3 of 4 failed > 1/2: paused once the third failed.
        assert_eq!(sim.run().state, UpdateState::Paused);
        assert_eq!(sim.run().failed_slots.len(), 3);

        let mut cfg = config(2, UpdateOrder::StartFirst, 300);
        cfg.failure_action = FailureAction::Continue;
        let mut sim = Sim::new(4, cfg);
        sim.update(|s| s.image = "app:bad".to_owned());
        sim.until_final();
        assert_eq!(sim.run().state, UpdateState::Completed);
        assert_eq!(sim.run().message, "update completed; 4 of 4 tasks failed");
        // Start-first: the old tasks still serve.
        assert_eq!(sim.live_images(), all(4, "app:1"));
    }

    #[test]
    fn a_manual_rollback_rolls_out_with_the_rollback_settings() {
        let mut sim = Sim::new(4, config(0, UpdateOrder::StopFirst, 200));
        sim.update(|s| s.image = "app:2".to_owned());
        sim.until_final();
        Arc::make_mut(&mut sim.state.services.get_mut("web").unwrap().spec).rollback =
            config(1, UpdateOrder::StartFirst, 200);
        sim.min_running = u64::MAX;
        let now_ms = sim.now;
        sim.commit(Command::RollbackService {
            name: "web".to_owned(),
            now_ms,
        });
        let mut seen = 0;
        while sim.run().state.is_running() {
            seen = seen.max(progress(&sim.state, "web", sim.now).unwrap().in_flight);
            sim.step();
        }
        assert_eq!(sim.run().state, UpdateState::RolledBack);
        assert_eq!(sim.run().message, "rollback completed");
        assert_eq!(seen, 1);
        assert_eq!(sim.min_running, 4);
        assert_eq!(sim.live_images(), all(4, "app:1"));
    }

    #[test]
    fn scaling_or_new_settings_restart_nothing_and_force_restarts_everything() {
        let mut sim = Sim::new(3, config(1, UpdateOrder::StopFirst, 200));
        let ids = |sim: &Sim| -> BTreeSet<String> {
            sim.state
                .tasks
                .values()
                .filter(|t| t.is_live())
                .map(|t| t.id.clone())
                .collect()
        };
        let before = ids(&sim);
        sim.update(|s| {
            s.mode = ServiceMode::Replicated { replicas: 4 };
            s.update.parallelism = 2;
        });
        assert!(sim.service().update.is_none());
        sim.run_until(|s| s.running() == 4, 100);
        assert!(before.is_subset(&ids(&sim)));
        let before = ids(&sim);
        sim.update(|s| s.force_update += 1);
        sim.until_final();
        assert_eq!(sim.run().state, UpdateState::Completed);
        assert!(before.is_disjoint(&ids(&sim)));
        assert_eq!(ids(&sim).len(), 4);
    }

    #[test]
    fn the_leader_wakes_when_a_monitor_window_or_delay_ends() {
        let mut sim = Sim::new(2, config(1, UpdateOrder::StopFirst, 1_000));
        Arc::make_mut(&mut sim.state.services.get_mut("web").unwrap().spec)
            .update
            .delay_ms = 500;
        assert_eq!(next_deadline(&sim.state, sim.now), None, "no run");
        sim.update(|s| s.image = "app:2".to_owned());
        let new_running = |s: &Sim| {
            s.state
                .tasks
                .values()
                .any(|t| t.state == TaskState::Running && t.spec.image == "app:2")
        };
        sim.run_until(new_running, 100);
        let since = sim
            .state
            .tasks
            .values()
            .find(|t| t.is_live() && t.spec.image == "app:2")
            .and_then(|t| t.running_since_ms)
            .unwrap();
        assert_eq!(next_deadline(&sim.state, since), Some(since + 1_000));
        assert_eq!(
            next_deadline(&sim.state, since + 1_000),
            Some(since + 1_500)
        );
        assert_eq!(next_deadline(&sim.state, since + 1_500), None);
    }

    #[test]
    fn a_stale_transition_or_failure_changes_nothing() {
        let mut sim = Sim::new(2, config(1, UpdateOrder::StopFirst, 200));
        sim.update(|s| s.image = "app:2".to_owned());
        sim.update(|s| s.image = "app:3".to_owned());
        let before = sim.state.clone();
        let now_ms = sim.now;
        let old_run = sim.run().version - 1;
        sim.commit(Command::ApplyTaskChanges {
            changes: vec![
                TaskChange::UpdateSlotFailed {
                    service: "web".to_owned(),
                    run_version: old_run,
                    slot: 1,
                    node_id: None,
                },
                TaskChange::UpdateTransition {
                    service: "web".to_owned(),
                    run_version: old_run,
                    from: UpdateState::Updating,
                    to: UpdateState::Paused,
                    message: "stale".to_owned(),
                },
            ],
            now_ms,
        });
        assert_eq!(sim.state, before);
        // The first step starts slot 1 of the newest run only: stop-first, so
        // its old task stops first and no new task is created yet.
        let changes = reconcile(&sim.state, sim.now);
        assert_eq!(
            render(&changes),
            ["desire shutdown t0: replaced by version 3 (rolling update)"]
                .map(|s| s.replace("t0", &sim.created[&1][0]))
        );
    }
}
