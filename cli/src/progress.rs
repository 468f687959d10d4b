//! Deploy and scale progress: from a service and its tasks to the lines
//! `shoal deploy` shows and the decision whether the service converged, failed,
//! or is still on its way; the same for a rolling update or rollback
//! ([`UpdateFollower`]); and the redrawing of those lines on a terminal.
//!
//! Everything here is pure: the polling loop in [`crate::run`] feeds it what the
//! control API returned and writes what it gives back.

use std::collections::BTreeMap;

use crate::api::{ServiceInspectView, TaskView, UpdateStatusView};

/// Characters inside the progress bar's brackets.
pub const BAR_WIDTH: usize = 35;
/// The bar's denominator: a running task fills all eight eighths.
pub const BAR_STEPS: u8 = 8;
/// Longest detail (node name, message or error) shown after a bar.
const MAX_DETAIL_CHARS: usize = 80;

/// How far along its lifecycle a task is, in eighths of the bar.
pub fn state_fraction(state: &str) -> u8 {
    match state {
        "new" | "pending" => 1,
        "assigned" => 3,
        "preparing" => 5,
        "starting" => 7,
        "running" => BAR_STEPS,
        _ => 0,
    }
}

/// `==========>      ` for `eighths` of [`BAR_WIDTH`].
pub fn bar(eighths: u8) -> String {
    bar_fraction(u64::from(eighths.min(BAR_STEPS)), u64::from(BAR_STEPS))
}

/// A bar filled to `part` of `whole` (empty when `whole` is 0).
pub fn bar_fraction(part: u64, whole: u64) -> String {
    let filled = if whole == 0 {
        0
    } else {
        (BAR_WIDTH as u128 * u128::from(part.min(whole)) / u128::from(whole)) as usize
    };
    if filled == 0 {
        return " ".repeat(BAR_WIDTH);
    }
    format!(
        "{}>{}",
        "=".repeat(filled - 1),
        " ".repeat(BAR_WIDTH - filled)
    )
}

/// `web.2` for a replicated task; `web.node-b` (or `web.<node id>`) for a global one.
pub fn task_name(task: &TaskView) -> String {
    if task.slot != 0 {
        return format!("{}.{}", task.service, task.slot);
    }
    match (&task.node_name, task.node_id) {
        (Some(name), _) => format!("{}.{name}", task.service),
        (None, Some(id)) => format!("{}.{id}", task.service),
        (None, None) => format!("{}.{}", task.service, short_id(&task.id)),
    }
}

/// The first 12 characters of a task id, as `service ps` shows it.
pub fn short_id(id: &str) -> &str {
    id.char_indices().nth(12).map_or(id, |(at, _)| &id[..at])
}

/// Not terminal and meant to run: the task fills its slot.
pub fn is_live(task: &TaskView) -> bool {
    task.desired_state == "running"
        && !matches!(
            task.state.as_str(),
            "complete" | "failed" | "shutdown" | "rejected" | "orphaned"
        )
}

/// One line under "overall progress": a slot, or a node for global services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotLine {
    /// `2/3` for replicated services, the node for global ones.
    pub label: String,
    /// The newest task of the slot, if it has one yet.
    pub task: Option<TaskView>,
}

impl SlotLine {
    fn state(&self) -> &str {
        self.task.as_ref().map_or("", |task| task.state.as_str())
    }

    /// Where the task is, or why it is not running.
    fn detail(&self) -> String {
        let Some(task) = &self.task else {
            return String::new();
        };
        let node = task
            .node_name
            .clone()
            .or_else(|| task.node_id.map(|id| format!("node {id}")));
        let detail = match (task.state.as_str(), node) {
            ("rejected" | "failed", _) if !task.error.is_empty() => task.error.clone(),
            (_, Some(node)) => node,
            (_, None) => task.message.clone(),
        };
        truncate(&detail, MAX_DETAIL_CHARS)
    }
}

/// Where a deploy or scale stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Still on its way; each entry says what one unfinished slot is waiting for.
    Waiting { pending: Vec<String> },
    /// Every desired task of the current version runs.
    Converged,
    /// A task of the current version was rejected; one sentence per task.
    Failed { errors: Vec<String> },
}

/// What `shoal deploy` shows at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Tasks of the current version that run, among the shown slots.
    pub running: u64,
    pub desired: u64,
    pub slots: Vec<SlotLine>,
    pub verdict: Verdict,
}

/// Builds the progress model of `service` from its `tasks` (history included).
///
/// Each slot (each node, for global services) is represented by its newest task.
/// The service has converged when the daemon counts as many running replicas as
/// it wants, every slot's newest task is of the current version and running,
/// and no task of an older version is still meant to run. It has failed when a
/// slot's newest task of the current version was rejected.
pub fn progress(service: &ServiceInspectView, tasks: &[TaskView]) -> Progress {
    let global = service.spec.mode.as_deref() == Some("global");
    let desired = service.replicas_desired;
    let mut newest: BTreeMap<SlotKey, &TaskView> = BTreeMap::new();
    for task in tasks {
        let key = if global {
            SlotKey::Node(task.node_id.unwrap_or(u64::MAX))
        } else {
            SlotKey::Slot(task.slot)
        };
        let entry = newest.entry(key).or_insert(task);
        if (task.created_at_ms, &task.id) > (entry.created_at_ms, &entry.id) {
            *entry = task;
        }
    }

    let slots: Vec<SlotLine> = if global {
        let mut lines: Vec<SlotLine> = newest
            .values()
            .filter(|task| task.desired_state == "running")
            .map(|task| SlotLine {
                label: task
                    .node_name
                    .clone()
                    .or_else(|| task.node_id.map(|id| id.to_string()))
                    .unwrap_or_else(|| "unassigned".to_owned()),
                task: Some((*task).clone()),
            })
            .collect();
        lines.sort_by(|a, b| a.label.cmp(&b.label));
        lines
    } else {
        (1..=desired)
            .map(|slot| SlotLine {
                label: format!("{slot}/{desired}"),
                task: newest.get(&SlotKey::Slot(slot)).map(|task| (*task).clone()),
            })
            .collect()
    };

    let current = |task: &TaskView| task.spec_version == service.version;
    let running = slots
        .iter()
        .filter_map(|line| line.task.as_ref())
        .filter(|task| current(task) && is_live(task) && task.state == "running")
        .count() as u64;

    let errors: Vec<String> = slots
        .iter()
        .filter_map(|line| line.task.as_ref())
        .filter(|task| current(task) && task.state == "rejected")
        .map(|task| {
            let why = if task.error.is_empty() {
                &task.message
            } else {
                &task.error
            };
            format!("task {} rejected: {why}", task_name(task))
        })
        .collect();

    let stale_live = tasks.iter().any(|task| is_live(task) && !current(task));
    let verdict = if !errors.is_empty() {
        Verdict::Failed { errors }
    } else if running == desired
        && service.replicas_running == desired
        && slots.len() as u64 == desired
        && !stale_live
    {
        Verdict::Converged
    } else {
        Verdict::Waiting {
            pending: pending_reasons(&service.spec.name, &slots, current, running, desired),
        }
    };
    Progress {
        running,
        desired,
        slots,
        verdict,
    }
}

fn pending_reasons(
    service: &str,
    slots: &[SlotLine],
    current: impl Fn(&TaskView) -> bool,
    running: u64,
    desired: u64,
) -> Vec<String> {
    let mut reasons = Vec::new();
    for line in slots {
        match &line.task {
            None => reasons.push(format!("slot {} of {service} has no task yet", line.label)),
            Some(task) if task.state != "running" || !current(task) => {
                let why = [&task.error, &task.message]
                    .into_iter()
                    .find(|text| !text.is_empty())
                    .map_or_else(|| "no message".to_owned(), |text| text.clone());
                let old = if current(task) {
                    ""
                } else {
                    " (older version)"
                };
                reasons.push(format!(
                    "task {} is {}{old}: {why}",
                    task_name(task),
                    task.state
                ));
            }
            Some(_) => {}
        }
    }
    if reasons.is_empty() {
        reasons.push(format!(
            "{running} of {desired} tasks of {service} run; waiting for the cluster to confirm"
        ));
    }
    reasons
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SlotKey {
    Slot(u64),
    Node(u64),
}

impl Progress {
    /// `overall progress: 2 out of 3 tasks`, then one line per slot:
    /// `1/3: running   [=====>   ]  node-b`.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "overall progress: {} out of {} tasks",
            self.running, self.desired
        )];
        let label_width = self
            .slots
            .iter()
            .map(|line| line.label.chars().count() + 1)
            .max()
            .unwrap_or(0);
        for line in &self.slots {
            let eighths = line
                .task
                .as_ref()
                .map_or(0, |task| state_fraction(&task.state));
            let text = format!(
                "{:<label_width$} {:<9} [{}]  {}",
                format!("{}:", line.label),
                line.state(),
                bar(eighths),
                line.detail()
            );
            lines.push(text.trim_end().to_owned());
        }
        lines
    }
}

/// Which final state a command that follows an update run waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateGoal {
    /// `deploy` or `service update`: the run must complete.
    Update,
    /// `service rollback`: the run must roll back.
    Rollback,
}

/// Where a followed update run stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateStep {
    /// Still running.
    Waiting,
    /// Final and what the command asked for; the run's message.
    Done(String),
    /// Final and not what the command asked for; the error to show.
    Failed(String),
}

/// Follows one update run through successive inspections of its service and
/// decides when the command is done, and whether it succeeded.
///
/// A deploy or update follows the run it started; when that run's failure
/// action rolls it back, the model starts a rollback run with the next
/// version, which the follower then follows too (remembering why the update
/// was rolled back). Any other newer run means someone changed the service
/// meanwhile, which ends the wait with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateFollower {
    service: String,
    goal: UpdateGoal,
    /// The run followed: the one started, then its rollback.
    version: u64,
    /// The version of the update that is being rolled back, once it is.
    rolled_back_from: Option<u64>,
    /// Why: the rollback run's message when first seen running (a final
    /// rollback run only says that it completed).
    rollback_reason: Option<String>,
}

fn is_rollback_state(state: &str) -> bool {
    matches!(state, "rolling-back" | "rollback-paused" | "rolled-back")
}

impl UpdateFollower {
    /// Follows the run `version` of `service` (from the answer that started it).
    pub fn new(service: &str, goal: UpdateGoal, version: u64) -> Self {
        Self {
            service: service.to_owned(),
            goal,
            version,
            rolled_back_from: None,
            rollback_reason: None,
        }
    }

    /// Takes in one inspection of the service and says where the run stands.
    pub fn observe(&mut self, view: &ServiceInspectView) -> UpdateStep {
        let Some(run) = &view.update else {
            return UpdateStep::Waiting;
        };
        if run.version < self.version {
            return UpdateStep::Waiting;
        }
        if run.version > self.version {
            let rolls_ours_back = self.goal == UpdateGoal::Update
                && self.rolled_back_from.is_none()
                && is_rollback_state(&run.state);
            if !rolls_ours_back {
                return UpdateStep::Failed(format!(
                    "service {name} was changed again while this command waited (now version {}, {}: {}); see `shoal service inspect {name}`",
                    run.version,
                    run.state,
                    run.message,
                    name = self.service
                ));
            }
            self.rolled_back_from = Some(self.version);
            self.version = run.version;
            self.rollback_reason = (!run.is_final()).then(|| run.message.clone());
        }
        if !run.is_final() {
            return UpdateStep::Waiting;
        }
        let rolled_back = self.rolled_back_from.is_some();
        match (
            self.goal,
            rolled_back,
            &self.rollback_reason,
            run.state.as_str(),
        ) {
            (UpdateGoal::Update, false, _, "completed") => UpdateStep::Done(run.message.clone()),
            (UpdateGoal::Update, true, Some(reason), "rolled-back") => {
                UpdateStep::Failed(format!("update rolled back: {reason}"))
            }
            (UpdateGoal::Update, true, None, "rolled-back") => {
                UpdateStep::Failed("update rolled back".to_owned())
            }
            (UpdateGoal::Update, true, Some(reason), _) if reason != &run.message => {
                UpdateStep::Failed(format!(
                    "{}; the update was being rolled back: {reason}",
                    run.message
                ))
            }
            (UpdateGoal::Rollback, _, _, "rolled-back") => UpdateStep::Done(run.message.clone()),
            _ => UpdateStep::Failed(run.message.clone()),
        }
    }

    /// When the update was rolled back before this follower saw why, the
    /// version whose failed tasks say it (see [`failure_hint`]).
    pub fn hint_version(&self) -> Option<u64> {
        self.rolled_back_from
            .filter(|_| self.rollback_reason.is_none())
    }
}

/// Why an update run went wrong, from its tasks: the newest failed or
/// rejected task of `version`, e.g. `task web.3 failed: exit code 1`.
pub fn failure_hint(version: u64, tasks: &[TaskView]) -> Option<String> {
    let task = tasks
        .iter()
        .filter(|task| task.spec_version == version)
        .filter(|task| matches!(task.state.as_str(), "failed" | "rejected"))
        .max_by_key(|task| (task.state_changed_at_ms, &task.id))?;
    let why = [&task.error, &task.message]
        .into_iter()
        .find(|text| !text.is_empty())
        .map_or_else(|| "no message".to_owned(), |text| text.clone());
    Some(format!(
        "task {} {}: {}",
        task_name(task),
        task.state,
        truncate(&why, MAX_DETAIL_CHARS)
    ))
}

/// The lines showing an update run: its counts with a bar, then its message.
///
/// ```text
/// updating: 4 out of 10 tasks  [=============>                     ]  2 in flight, 1 failed
/// update paused at 4/10: task web.3 failed its health check
/// ```
pub fn update_lines(view: &ServiceInspectView) -> Vec<String> {
    let Some(run) = &view.update else {
        return vec![format!(
            "waiting for the update of {} to start",
            view.spec.name
        )];
    };
    let mut lines = vec![update_counts_line(run)];
    if !run.message.is_empty() {
        let message = truncate(&run.message, 4 * MAX_DETAIL_CHARS);
        if is_rollback_state(&run.state) && !message.starts_with("rollback") {
            lines.push(format!("rollback: {message}"));
        } else {
            lines.push(message);
        }
    }
    lines
}

fn update_counts_line(run: &UpdateStatusView) -> String {
    let label = match run.state.as_str() {
        "rolling-back" => "rollback",
        "rollback-paused" => "rollback paused",
        "rolled-back" => "rolled back",
        other => other,
    };
    let mut line = format!(
        "{label}: {} out of {} tasks  [{}]",
        run.done,
        run.total,
        bar_fraction(run.done, run.total)
    );
    let extras: Vec<String> = [(run.in_flight, "in flight"), (run.failed, "failed")]
        .into_iter()
        .filter(|(count, _)| *count > 0)
        .map(|(count, what)| format!("{count} {what}"))
        .collect();
    if !extras.is_empty() {
        line.push_str("  ");
        line.push_str(&extras.join(", "));
    }
    line
}

fn truncate(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

/// Turns successive frames of lines into what to write: on a terminal, the
/// previous frame is redrawn in place; elsewhere (a log, a pipe) only the lines
/// that changed are printed, each on a new line.
#[derive(Debug, Default)]
pub struct Redraw {
    terminal: bool,
    previous: Vec<String>,
}

impl Redraw {
    pub fn new(terminal: bool) -> Self {
        Self {
            terminal,
            previous: Vec::new(),
        }
    }

    /// The text that shows `lines` after the previous frame; empty when nothing changed.
    pub fn frame(&mut self, lines: &[String]) -> String {
        if lines == self.previous.as_slice() {
            return String::new();
        }
        let mut text = String::new();
        if self.terminal {
            if !self.previous.is_empty() {
                // Cursor up to the first line of the previous frame.
                text.push_str(&format!("\x1b[{}A", self.previous.len()));
            }
            for line in lines {
                text.push_str("\r\x1b[2K");
                text.push_str(line);
                text.push('\n');
            }
            let leftover = self.previous.len().saturating_sub(lines.len());
            if leftover > 0 {
                for _ in 0..leftover {
                    text.push_str("\r\x1b[2K\n");
                }
                text.push_str(&format!("\x1b[{leftover}A"));
            }
        } else {
            for (at, line) in lines.iter().enumerate() {
                if self.previous.get(at) != Some(line) {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        self.previous = lines.to_vec();
        text
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::ServiceSpecDoc;

    pub(crate) fn task(slot: u64, state: &str, node: Option<u64>, version: u64) -> TaskView {
        TaskView {
            id: format!("{slot:04}{state:0>8}{version:04}"),
            service: "web".into(),
            slot,
            node_id: node,
            node_name: node.map(|id| format!("node-{}", char::from(b'a' + id as u8 - 1))),
            desired_state: "running".into(),
            state: state.into(),
            message: String::new(),
            error: String::new(),
            exit_code: None,
            container_id: None,
            restart_count: 0,
            spec_version: version,
            created_at_ms: 1_000,
            updated_at_ms: 1_000,
            state_changed_at_ms: 1_000,
            health: None,
        }
    }

    pub(crate) fn service(
        mode: &str,
        desired: u64,
        running: u64,
        version: u64,
    ) -> ServiceInspectView {
        ServiceInspectView {
            spec: ServiceSpecDoc {
                name: "web".into(),
                image: "nginx:1.27".into(),
                mode: Some(mode.into()),
                ..ServiceSpecDoc::default()
            },
            version,
            created_at_ms: 1_000,
            updated_at_ms: 1_000,
            replicas_running: running,
            replicas_desired: desired,
            update: None,
            previous_spec: None,
        }
    }

    #[test]
    fn fractions_and_bars() {
        let cases = [
            ("new", 1),
            ("pending", 1),
            ("assigned", 3),
            ("preparing", 5),
            ("starting", 7),
            ("running", 8),
            ("failed", 0),
            ("rejected", 0),
            ("bogus", 0),
        ];
        for (state, eighths) in cases {
            assert_eq!(state_fraction(state), eighths, "{state}");
        }
        assert_eq!(bar(8), format!("{}>", "=".repeat(34)));
        assert_eq!(bar(0), " ".repeat(35));
        assert_eq!(bar(1).trim_end(), "===>");
        assert!(bar(4).starts_with(&format!("{}>", "=".repeat(16))));
        assert_eq!(bar(4).len(), BAR_WIDTH);
    }

    #[derive(Debug)]
    enum Want {
        Waiting(&'static str),
        Converged,
        Failed(&'static str),
    }

    /// One progress case: the service and its tasks, the expected running count,
    /// the slot lines' labels and states, and the verdict.
    fn check(
        name: &str,
        service: ServiceInspectView,
        tasks: Vec<TaskView>,
        running: u64,
        slots: &[(&str, &str)],
        want: Want,
    ) {
        let progress = progress(&service, &tasks);
        assert_eq!(progress.running, running, "{name}: running");
        let got: Vec<(&str, &str)> = progress
            .slots
            .iter()
            .map(|line| (line.label.as_str(), line.state()))
            .collect();
        assert_eq!(got, slots, "{name}: slots");
        match (&progress.verdict, &want) {
            (Verdict::Converged, Want::Converged) => {}
            (Verdict::Waiting { pending }, Want::Waiting(fragment))
                if pending.iter().any(|reason| reason.contains(fragment)) => {}
            (Verdict::Failed { errors }, Want::Failed(fragment))
                if errors.iter().any(|error| error.contains(fragment)) => {}
            (got, want) => panic!("{name}: verdict {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn progress_table() {
        let with = |mut task: TaskView, edit: &dyn Fn(&mut TaskView)| {
            edit(&mut task);
            task
        };
        check(
            "nothing scheduled yet",
            service("replicated", 3, 0, 1),
            vec![],
            0,
            &[("1/3", ""), ("2/3", ""), ("3/3", "")],
            Want::Waiting("slot 1/3 of web has no task yet"),
        );
        check(
            "part way",
            service("replicated", 3, 1, 1),
            vec![
                task(1, "running", Some(2), 1),
                with(task(2, "pending", None, 1), &|t| {
                    t.message = "no node satisfies node.labels.zone==eu: 0 of 3 nodes".into()
                }),
                task(3, "starting", Some(1), 1),
            ],
            1,
            &[("1/3", "running"), ("2/3", "pending"), ("3/3", "starting")],
            Want::Waiting("task web.2 is pending: no node satisfies node.labels.zone==eu"),
        );
        check(
            "all running",
            service("replicated", 3, 3, 1),
            vec![
                task(1, "running", Some(2), 1),
                task(2, "running", Some(3), 1),
                task(3, "running", Some(1), 1),
            ],
            3,
            &[("1/3", "running"), ("2/3", "running"), ("3/3", "running")],
            Want::Converged,
        );
        check(
            "running tasks but the daemon's count lags",
            service("replicated", 1, 0, 1),
            vec![task(1, "running", Some(1), 1)],
            1,
            &[("1/1", "running")],
            Want::Waiting("waiting for the cluster to confirm"),
        );
        check(
            "an update: old version still running",
            service("replicated", 1, 1, 2),
            vec![task(1, "running", Some(1), 1)],
            0,
            &[("1/1", "running")],
            Want::Waiting("task web.1 is running (older version)"),
        );
        check(
            "an update: replacement running, old one shutting down",
            service("replicated", 1, 1, 2),
            vec![
                with(task(1, "running", Some(1), 1), &|t| {
                    t.desired_state = "shutdown".into()
                }),
                with(task(1, "running", Some(1), 2), &|t| t.created_at_ms = 2_000),
            ],
            1,
            &[("1/1", "running")],
            Want::Converged,
        );
        check(
            "rejected task of the current version fails the deploy",
            service("replicated", 2, 1, 1),
            vec![
                task(1, "running", Some(1), 1),
                with(task(2, "rejected", Some(2), 1), &|t| {
                    t.error = "image \"nope:1\" not found locally and pull is \"never\"".into()
                }),
            ],
            1,
            &[("1/2", "running"), ("2/2", "rejected")],
            Want::Failed(
                "task web.2 rejected: image \"nope:1\" not found locally and pull is \"never\"",
            ),
        );
        check(
            "a rejected task already replaced is history",
            service("replicated", 1, 0, 1),
            vec![
                task(1, "rejected", Some(1), 1),
                with(task(1, "pending", None, 1), &|t| t.created_at_ms = 2_000),
            ],
            0,
            &[("1/1", "pending")],
            Want::Waiting("task web.1 is pending"),
        );
        check(
            "scale down: extra slots are not shown",
            service("replicated", 1, 1, 1),
            vec![
                task(1, "running", Some(1), 1),
                with(task(2, "running", Some(2), 1), &|t| {
                    t.desired_state = "shutdown".into()
                }),
            ],
            1,
            &[("1/1", "running")],
            Want::Converged,
        );
        check(
            "scale to zero",
            service("replicated", 0, 0, 1),
            vec![with(task(1, "shutdown", Some(1), 1), &|t| {
                t.desired_state = "shutdown".into()
            })],
            0,
            &[],
            Want::Converged,
        );
        check(
            "global: one line per node",
            service("global", 2, 1, 1),
            vec![
                task(0, "running", Some(2), 1),
                task(0, "preparing", Some(1), 1),
            ],
            1,
            &[("node-a", "preparing"), ("node-b", "running")],
            Want::Waiting("task web.node-a is preparing"),
        );
        check(
            "global: converged; a drained node's task is not shown",
            service("global", 2, 2, 1),
            vec![
                task(0, "running", Some(1), 1),
                task(0, "running", Some(2), 1),
                with(task(0, "shutdown", Some(3), 1), &|t| {
                    t.desired_state = "shutdown".into()
                }),
            ],
            2,
            &[("node-a", "running"), ("node-b", "running")],
            Want::Converged,
        );
    }

    #[test]
    fn lines_look_like_swarm() {
        let service = service("replicated", 3, 1, 1);
        let mut pending = task(2, "pending", None, 1);
        pending.message = "no node satisfies node.labels.zone==eu: 0 of 3 nodes".into();
        let tasks = vec![task(1, "running", Some(2), 1), pending];
        let lines = progress(&service, &tasks).lines();
        assert_eq!(
            lines,
            [
                "overall progress: 1 out of 3 tasks".to_owned(),
                format!("1/3: running   [{}>]  node-b", "=".repeat(34)),
                format!(
                    "2/3: pending   [===>{}]  no node satisfies node.labels.zone==eu: 0 of 3 nodes",
                    " ".repeat(31)
                ),
                format!("3/3:           [{}]", " ".repeat(35)),
            ]
        );
    }

    #[test]
    fn redraw_in_place_or_print_changes() {
        let frame = |lines: &[&str]| lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        let mut plain = Redraw::new(false);
        assert_eq!(plain.frame(&frame(&["a", "b"])), "a\nb\n");
        assert_eq!(plain.frame(&frame(&["a", "b"])), "");
        assert_eq!(plain.frame(&frame(&["a", "c"])), "c\n");

        let mut tty = Redraw::new(true);
        assert_eq!(tty.frame(&frame(&["a", "b"])), "\r\x1b[2Ka\n\r\x1b[2Kb\n");
        assert_eq!(tty.frame(&frame(&["a", "b"])), "");
        assert_eq!(
            tty.frame(&frame(&["c"])),
            "\x1b[2A\r\x1b[2Kc\n\r\x1b[2K\n\x1b[1A"
        );
    }

    pub(crate) fn run(
        state: &str,
        version: u64,
        counts: [u64; 4],
        message: &str,
    ) -> UpdateStatusView {
        let [total, done, in_flight, failed] = counts;
        UpdateStatusView {
            state: state.into(),
            version,
            message: message.into(),
            started_at_ms: 1_000,
            completed_at_ms: None,
            total,
            done,
            in_flight,
            failed,
        }
    }

    pub(crate) fn updating(run: UpdateStatusView) -> ServiceInspectView {
        ServiceInspectView {
            update: Some(run),
            ..service("replicated", 10, 10, 2)
        }
    }

    /// One follower case: the goal, the version started, the inspections seen
    /// in turn, and the step after each.
    fn follow(name: &str, goal: UpdateGoal, runs: &[(UpdateStatusView, UpdateStep)]) {
        let mut follower = UpdateFollower::new("web", goal, 2);
        for (at, (run, want)) in runs.iter().enumerate() {
            let step = follower.observe(&updating(run.clone()));
            assert_eq!(&step, want, "{name}: step {at}");
        }
    }

    #[test]
    fn update_follower_table() {
        use UpdateStep::{Done, Failed, Waiting};
        let failed_at_4 =
            "update failed at 4/10: task web.3 failed its health check; rolling back to app:1";
        follow(
            "an update completes",
            UpdateGoal::Update,
            &[
                (
                    run("updating", 2, [10, 0, 2, 0], "updating to version 2"),
                    Waiting,
                ),
                (
                    run("updating", 2, [10, 8, 2, 0], "updating to version 2"),
                    Waiting,
                ),
                (
                    run("completed", 2, [10, 10, 0, 0], "update completed"),
                    Done("update completed".into()),
                ),
            ],
        );
        follow(
            "an update that tolerates failures still completes",
            UpdateGoal::Update,
            &[(
                run(
                    "completed",
                    2,
                    [10, 9, 0, 1],
                    "update completed; 1 of 10 tasks failed",
                ),
                Done("update completed; 1 of 10 tasks failed".into()),
            )],
        );
        follow(
            "a paused update fails with the run's message",
            UpdateGoal::Update,
            &[(
                run(
                    "paused",
                    2,
                    [10, 4, 0, 1],
                    "update paused at 4/10: task web.3 failed (exit 1)",
                ),
                Failed("update paused at 4/10: task web.3 failed (exit 1)".into()),
            )],
        );
        follow(
            "an automatic rollback is followed to its end and fails the update",
            UpdateGoal::Update,
            &[
                (
                    run("updating", 2, [10, 3, 1, 0], "updating to version 2"),
                    Waiting,
                ),
                (run("rolling-back", 3, [10, 6, 1, 0], failed_at_4), Waiting),
                (run("rolling-back", 3, [10, 9, 1, 0], failed_at_4), Waiting),
                (
                    run("rolled-back", 3, [10, 10, 0, 0], "rollback completed"),
                    Failed(format!("update rolled back: {failed_at_4}")),
                ),
            ],
        );
        follow(
            "a rollback that pauses names both reasons",
            UpdateGoal::Update,
            &[
                (run("rolling-back", 3, [10, 6, 1, 0], failed_at_4), Waiting),
                (
                    run("rollback-paused", 3, [10, 6, 0, 1], "rollback paused at 6/10: task web.1 failed"),
                    Failed(format!(
                        "rollback paused at 6/10: task web.1 failed; the update was being rolled back: {failed_at_4}"
                    )),
                ),
            ],
        );
        follow(
            "a newer update by someone else ends the wait",
            UpdateGoal::Update,
            &[(
                run("updating", 3, [10, 0, 1, 0], "updating to version 3"),
                Failed("service web was changed again while this command waited (now version 3, updating: updating to version 3); see `shoal service inspect web`".into()),
            )],
        );
        follow(
            "an older run is a stale answer",
            UpdateGoal::Update,
            &[(
                run("completed", 1, [10, 10, 0, 0], "update completed"),
                Waiting,
            )],
        );
        follow(
            "service rollback succeeds when rolled back",
            UpdateGoal::Rollback,
            &[
                (
                    run("rolling-back", 2, [10, 4, 2, 0], "rollback requested"),
                    Waiting,
                ),
                (
                    run("rolled-back", 2, [10, 10, 0, 0], "rollback completed"),
                    Done("rollback completed".into()),
                ),
            ],
        );
        follow(
            "service rollback fails when its rollback pauses",
            UpdateGoal::Rollback,
            &[(
                run(
                    "rollback-paused",
                    2,
                    [10, 4, 0, 1],
                    "rollback paused at 4/10: task web.2 was rejected",
                ),
                Failed("rollback paused at 4/10: task web.2 was rejected".into()),
            )],
        );
        follow(
            "service rollback superseded by a newer rollback",
            UpdateGoal::Rollback,
            &[(
                run("rolling-back", 3, [10, 0, 1, 0], "rollback requested"),
                Failed("service web was changed again while this command waited (now version 3, rolling-back: rollback requested); see `shoal service inspect web`".into()),
            )],
        );
        follow(
            "a rollback first seen finished has no reason of its own",
            UpdateGoal::Update,
            &[(
                run("rolled-back", 3, [10, 10, 0, 0], "rollback completed"),
                Failed("update rolled back".into()),
            )],
        );
        let mut follower = UpdateFollower::new("web", UpdateGoal::Update, 2);
        follower.observe(&updating(run(
            "rolled-back",
            3,
            [1, 1, 0, 0],
            "rollback completed",
        )));
        assert_eq!(follower.hint_version(), Some(2));
        let mut follower = UpdateFollower::new("web", UpdateGoal::Update, 2);
        follower.observe(&updating(run("rolling-back", 3, [1, 0, 1, 0], failed_at_4)));
        assert_eq!(follower.hint_version(), None, "the reason was seen");

        let mut follower = UpdateFollower::new("web", UpdateGoal::Update, 2);
        let no_run = service("replicated", 1, 1, 2);
        assert_eq!(follower.observe(&no_run), Waiting, "no run yet");
    }

    #[test]
    fn failure_hints_name_the_newest_failed_task_of_the_run() {
        let mut old = task(1, "failed", Some(1), 1);
        old.error = "exit code 2".into();
        let mut first = task(3, "failed", Some(1), 2);
        first.message = "health check failed".into();
        first.error = "the container's health check reported unhealthy".into();
        first.state_changed_at_ms = 5_000;
        let mut earlier = task(2, "rejected", Some(1), 2);
        earlier.error = "no such image".into();
        let tasks = vec![old, task(1, "running", Some(1), 2), first, earlier];
        assert_eq!(
            failure_hint(2, &tasks).as_deref(),
            Some("task web.3 failed: the container's health check reported unhealthy")
        );
        assert_eq!(failure_hint(3, &tasks), None);
    }

    #[test]
    fn update_lines_look_like_the_issue() {
        let view = updating(run("updating", 2, [10, 4, 2, 1], "updating to version 2"));
        assert_eq!(
            update_lines(&view),
            [
                format!(
                    "updating: 4 out of 10 tasks  [{}>{}]  2 in flight, 1 failed",
                    "=".repeat(13),
                    " ".repeat(21)
                ),
                "updating to version 2".to_owned(),
            ]
        );
        let view = updating(run(
            "rolling-back",
            3,
            [10, 0, 0, 0],
            "update paused at 4/10: task web.3 failed its health check (exit 1); restoring app:1",
        ));
        let lines = update_lines(&view);
        assert_eq!(
            lines[0],
            format!("rollback: 0 out of 10 tasks  [{}]", " ".repeat(35))
        );
        assert_eq!(
            lines[1],
            "rollback: update paused at 4/10: task web.3 failed its health check (exit 1); restoring app:1"
        );
        let done = updating(run("rolled-back", 3, [10, 10, 0, 0], "rollback completed"));
        assert_eq!(
            update_lines(&done),
            [
                format!("rolled back: 10 out of 10 tasks  [{}>]", "=".repeat(34)),
                "rollback completed".to_owned()
            ]
        );
        assert_eq!(bar_fraction(0, 0), " ".repeat(35));
        assert_eq!(bar_fraction(20, 10), format!("{}>", "=".repeat(34)));
        assert_eq!(
            update_lines(&service("replicated", 1, 1, 1)),
            ["waiting for the update of web to start"]
        );
    }

    #[test]
    fn names_and_ids() {
        assert_eq!(task_name(&task(2, "running", Some(1), 1)), "web.2");
        assert_eq!(task_name(&task(0, "running", Some(1), 1)), "web.node-a");
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(truncate("a\nb", 10), "a b");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
