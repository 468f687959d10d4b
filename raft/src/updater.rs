//! The rolling updater: which slots of a service move to its current task
//! template now, and where an update run stands.
//!
//! A change of the task template starts an update run ([`UpdateStatus`]); a
//! rollback starts one too, with the rollback settings. Each pass, for a
//! service whose run is in progress, [`plan_service`] sorts the wanted slots:
//!
//! - **done**: the slot has a live task of the current template that was not
//!   made by this run, or that has been running (and healthy) for the monitor
//!   window (a task belongs to the run when it carries the service version the
//!   run started: every run starts with a new version, so no clock is compared);
//! - **in flight**: the slot's current task is newer than the run and has not
//!   yet run through its monitor window; a slot done less than `delay` ago
//!   counts as in flight too, which spaces the batches;
//! - **to update**: the slot has only live tasks of an older template and has
//!   had no task of this run (a slot is never restarted twice by one run);
//! - **failed**: a task of this run failed (or was rejected) before it had run
//!   through its monitor window. Each slot counts once.
//!
//! It then records new failures, applies the failure action once the failed
//! share exceeds `max_failure_ratio` (pause, continue, or roll back), starts up
//! to `parallelism` minus in-flight slots (stop-first: the old task is stopped
//! and the new one created in the same batch; start-first: the new one is
//! created and the orchestrator stops the old once the new one runs), and
//! completes the run once nothing is in flight or left to update.
//!
//! Everything it needs is in the replicated state, so a new leader carries on
//! a run where the old one stopped. Pure: no clock (`now_ms` is an input), no I/O.

use std::collections::BTreeMap;

use crate::orchestrator::{wanted_slots, SlotKey, Want};
use crate::service::{
    DesiredState, FailureAction, Service, Task, TaskState, UpdateConfig, UpdateOrder, UpdateState,
    RATIO_ONE_PPM,
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
        return match (task.state, task.running_since_ms) {
            (TaskState::Running, Some(since))
                if now_ms >= since.saturating_add(config.monitor_ms) =>
            {
                SlotStatus::Done {
                    at_ms: since.saturating_add(config.monitor_ms),
                }
            }
            _ => SlotStatus::InFlight,
        };
    }
    let outdated_live = tasks.iter().filter(live).any(|t| !service.is_current(t));
    if !outdated_live {
        return SlotStatus::Empty;
    }
    if tasks.iter().any(|t| t.spec_version == service.version) {
        // A start-first attempt whose new task ended: the old one still runs.
        SlotStatus::Failed
    } else {
        SlotStatus::ToUpdate
    }
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
                    Some(previous) => previous.image.clone(),
                    None => "the previous spec".to_owned(),
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
        let message = if failed == 0 {
            format!("{what} completed")
        } else {
            format!("{what} completed; {failed} of {denominator} tasks failed")
        };
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
        if config.order == UpdateOrder::StopFirst {
            let tasks = slots.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            for task in tasks.iter().filter(|t| t.is_live()) {
                changes.push(TaskChange::SetDesired {
                    task_id: task.id.clone(),
                    desired: DesiredState::Shutdown,
                    reason: reason.clone(),
                });
            }
        }
        let (slot, node_id) = key;
        changes.push(TaskChange::Create {
            service: name.clone(),
            slot,
            node_id,
            restart_count: 0,
        });
    }
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
