//! The orchestrator: which tasks must exist. [`reconcile`] compares the services with
//! their tasks and returns the [`TaskChange`]s that bring them together: missing
//! slots, extra slots after scaling down, ended tasks to replace under the restart
//! policy, tasks to move off lost or drained nodes, the tasks of removed services,
//! and a bounded history per slot. Which outdated tasks are replaced, and when, is
//! the rolling updater's decision ([`crate::updater`]), called from here; the
//! orchestrator only finishes a slot's replacement, stopping its old task once the
//! new one runs.
//!
//! It decides nothing about placement (that is the scheduler's) and reads no clock:
//! `now_ms` is an input. It is pure and converges: applying its output and calling
//! it again returns nothing until the state or the time moves.

use std::collections::BTreeMap;

use crate::service::{DesiredState, RestartCondition, Service, Task, TaskState};
use crate::state::{slot_key, Availability, ClusterState, NodeStatus, TaskChange};
use crate::types::NodeId;
use crate::updater;

/// Ended tasks kept per slot (global services: per node) for `service ps`.
pub const TASK_HISTORY_PER_SLOT: usize = 5;

/// The shortest wait before a slot whose newest task was rejected gets a
/// new one, whatever the restart delay. A rejected task never ran (its
/// node could not get the image, or could not create the container), so an
/// immediate retry would almost surely be rejected again: each further
/// rejection in a row doubles the wait, up to [`REJECTED_RETRY_CAP_MS`].
pub const REJECTED_RETRY_FIRST_MS: u64 = 1_000;
/// The longest wait between retries of a slot whose tasks keep being
/// rejected: reached at the fifth rejection in a row, which the slot's
/// history ([`TASK_HISTORY_PER_SLOT`]) still holds.
pub const REJECTED_RETRY_CAP_MS: u64 = 15_000;

/// Where a node stands for running tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeFit {
    /// Not a member any more.
    Removed,
    Down,
    Drained,
    /// Keeps its tasks but takes no new ones.
    Paused,
    Active,
}

pub(crate) fn node_fit(state: &ClusterState, node_id: NodeId) -> NodeFit {
    match state.nodes.get(&node_id) {
        None => NodeFit::Removed,
        Some(node) if node.status == NodeStatus::Down => NodeFit::Down,
        Some(node) => match node.availability {
            Availability::Drain => NodeFit::Drained,
            Availability::Pause => NodeFit::Paused,
            Availability::Active => NodeFit::Active,
        },
    }
}

/// What a slot should have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// A live task, created if missing.
    Run,
    /// Keep a live task if there is one, create none (a paused node).
    Keep,
    /// No task (scaled down, or a node no longer eligible).
    Nothing,
}

pub(crate) type SlotKey = (u64, Option<NodeId>);

/// The slots `service` should have now: its replicas, or one per node for a
/// global service.
pub(crate) fn wanted_slots(state: &ClusterState, service: &Service) -> BTreeMap<SlotKey, Want> {
    let mut wanted = BTreeMap::new();
    match service.spec.replicas() {
        Some(replicas) => {
            for slot in 1..=replicas {
                wanted.insert((slot, None), Want::Run);
            }
        }
        None => {
            for node in state.nodes.values() {
                let want = match node_fit(state, node.id) {
                    _ if !service.spec.allows(node) => Want::Nothing,
                    NodeFit::Active => Want::Run,
                    NodeFit::Paused => Want::Keep,
                    _ => Want::Nothing,
                };
                wanted.insert((0, Some(node.id)), want);
            }
        }
    }
    wanted
}

/// The changes that bring the tasks in line with the services at `now_ms`.
pub fn reconcile(state: &ClusterState, now_ms: u64) -> Vec<TaskChange> {
    let mut by_service: BTreeMap<&str, BTreeMap<SlotKey, Vec<&Task>>> = BTreeMap::new();
    for task in state.tasks.values() {
        by_service
            .entry(task.service.as_str())
            .or_default()
            .entry(slot_key(task))
            .or_default()
            .push(task);
    }
    let mut changes = Vec::new();
    for (name, slots) in &by_service {
        if !state.services.contains_key(*name) {
            for task in slots.values().flatten() {
                if task.state.is_terminal() {
                    changes.push(TaskChange::Delete {
                        task_id: task.id.clone(),
                    });
                } else {
                    stop(state, task, "service removed", &mut changes);
                }
            }
        }
    }
    let empty = BTreeMap::new();
    for (name, service) in &state.services {
        let slots = by_service.get(name.as_str()).unwrap_or(&empty);
        let mut wanted = wanted_slots(state, service);
        updater::plan_service(service, slots, &wanted, now_ms, &mut changes);
        for key in slots.keys() {
            wanted.entry(*key).or_insert(Want::Nothing);
        }
        for (key, want) in wanted {
            let tasks = slots.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            let slot = Slot {
                state,
                service,
                key,
                tasks,
                now_ms,
            };
            slot.reconcile(want, &mut changes);
            slot.prune(&mut changes);
        }
    }
    changes
}

/// Asks a task to stop, and finishes the stop itself where no agent will: a task never
/// handed to an agent ends as shutdown, one on a lost node as orphaned.
fn stop(state: &ClusterState, task: &Task, reason: &str, changes: &mut Vec<TaskChange>) {
    if task.desired_state != DesiredState::Shutdown {
        changes.push(TaskChange::SetDesired {
            task_id: task.id.clone(),
            desired: DesiredState::Shutdown,
            reason: reason.to_owned(),
        });
    }
    let finished = match task.node_id {
        _ if task.state.is_terminal() => None,
        None => Some((
            TaskState::Shutdown,
            "stopped before it was assigned".to_owned(),
        )),
        Some(_) if task.state <= TaskState::Pending => Some((
            TaskState::Shutdown,
            "stopped before it was assigned".to_owned(),
        )),
        Some(node) => match node_fit(state, node) {
            NodeFit::Removed => Some((
                TaskState::Orphaned,
                format!("node {node} was removed from the cluster"),
            )),
            NodeFit::Down => Some((TaskState::Orphaned, format!("node {node} is down"))),
            _ => None,
        },
    };
    if let Some((state, message)) = finished {
        changes.push(TaskChange::MarkState {
            task_id: task.id.clone(),
            state,
            message,
        });
    }
}

/// The wait the rejections at the head of a slot's history (newest first)
/// impose on its next task: none without a rejection, else
/// [`REJECTED_RETRY_FIRST_MS`] doubled per further rejection, capped.
fn rejected_retry_ms(newest_first: &[&Task]) -> u64 {
    let rejected = newest_first
        .iter()
        .filter(|t| t.state.is_terminal())
        .take_while(|t| t.state == TaskState::Rejected)
        .count();
    if rejected == 0 {
        return 0;
    }
    let doublings = u32::try_from(rejected - 1).unwrap_or(u32::MAX).min(16);
    REJECTED_RETRY_FIRST_MS
        .saturating_mul(1 << doublings)
        .min(REJECTED_RETRY_CAP_MS)
}

/// Newest first: by when the task last changed state, then by attempt, then by id.
fn newest_first(a: &&Task, b: &&Task) -> std::cmp::Ordering {
    (b.state_changed_at_ms, b.restart_count, &b.id).cmp(&(
        a.state_changed_at_ms,
        a.restart_count,
        &a.id,
    ))
}

struct Slot<'a> {
    state: &'a ClusterState,
    service: &'a Service,
    key: SlotKey,
    tasks: &'a [&'a Task],
    now_ms: u64,
}

impl Slot<'_> {
    fn reconcile(&self, want: Want, changes: &mut Vec<TaskChange>) {
        let mut ordered: Vec<&Task> = self.tasks.to_vec();
        ordered.sort_by(newest_first);
        // The newest live task of the current template and of an older one; a slot
        // being updated start-first holds one of each until the new one runs.
        let mut current: Option<&Task> = None;
        let mut outdated: Vec<&Task> = Vec::new();
        for task in &ordered {
            if task.state.is_terminal() {
                continue;
            }
            if task.desired_state == DesiredState::Shutdown {
                stop(self.state, task, "", changes);
                continue;
            }
            let is_current = self.service.is_current(task);
            let seen = if is_current {
                current.is_some()
            } else {
                !outdated.is_empty()
            };
            match self.reason_to_stop(task, want, seen) {
                Some(reason) => stop(self.state, task, &reason, changes),
                None if is_current => current = Some(task),
                None => outdated.push(task),
            }
        }
        if current.is_some_and(|t| t.state == TaskState::Running) {
            let reason = format!(
                "replaced by version {} (rolling update)",
                self.service.version
            );
            for task in outdated.drain(..) {
                stop(self.state, task, &reason, changes);
            }
        }
        let live = current.is_some() || !outdated.is_empty();
        // Ended by themselves and not yet replaced.
        let unreplaced: Vec<&Task> = ordered
            .iter()
            .copied()
            .filter(|t| t.state.is_terminal() && t.desired_state == DesiredState::Running)
            .collect();
        let retire = |changes: &mut Vec<TaskChange>| {
            for task in &unreplaced {
                changes.push(TaskChange::SetDesired {
                    task_id: task.id.clone(),
                    desired: DesiredState::Shutdown,
                    reason: String::new(),
                });
            }
        };
        if live || want != Want::Run {
            if want == Want::Nothing || live {
                retire(changes);
            }
            return;
        }
        let Some(latest) = unreplaced.first() else {
            // Stop-first: the new task waits until the old one has stopped.
            if !updater::holds_for_stop(self.service, self.tasks) {
                self.create(0, changes);
            }
            return;
        };
        if !self.service.is_current(latest) {
            retire(changes);
            self.create(0, changes);
            return;
        }
        let policy = &self.service.spec.restart;
        let restart = match policy.condition {
            RestartCondition::None => false,
            RestartCondition::OnFailure => latest.state != TaskState::Complete,
            RestartCondition::Any => true,
        };
        if !restart {
            return;
        }
        if policy.max_attempts > 0 {
            let attempts = if policy.window_ms == 0 {
                latest.restart_count
            } else {
                self.tasks
                    .iter()
                    .filter(|t| self.counts_in_window(t))
                    .count() as u64
            };
            if attempts >= policy.max_attempts {
                let within = if policy.window_ms == 0 {
                    String::new()
                } else {
                    format!(" within {} ms", policy.window_ms)
                };
                let message = format!(
                    "not restarted: the restart policy allows {} attempts{within} and all were \
                     used",
                    policy.max_attempts
                );
                if latest.message != message {
                    changes.push(TaskChange::MarkState {
                        task_id: latest.id.clone(),
                        state: latest.state,
                        message,
                    });
                }
                return;
            }
        }
        let delay_ms = policy.delay_ms.max(rejected_retry_ms(&ordered));
        if self.now_ms < latest.state_changed_at_ms.saturating_add(delay_ms) {
            return;
        }
        retire(changes);
        self.create(latest.restart_count + 1, changes);
    }

    /// Why a live task must stop, if it must.
    fn reason_to_stop(&self, task: &Task, want: Want, live_seen: bool) -> Option<String> {
        if want == Want::Nothing {
            return Some(if self.service.spec.is_global() {
                "node no longer eligible for this global service".to_owned()
            } else {
                "service scaled down".to_owned()
            });
        }
        if let Some(node) = task.node_id {
            match node_fit(self.state, node) {
                NodeFit::Removed => return Some(format!("node {node} was removed")),
                NodeFit::Down => return Some(format!("node {node} is down")),
                NodeFit::Drained => return Some(format!("node {node} is drained")),
                NodeFit::Paused | NodeFit::Active => {}
            }
            let satisfied = self
                .state
                .nodes
                .get(&node)
                .is_some_and(|n| self.service.spec.allows(n));
            if !satisfied {
                return Some(format!("node {node} no longer satisfies the constraints"));
            }
        }
        live_seen.then(|| "another task already fills this slot".to_owned())
    }

    fn counts_in_window(&self, task: &Task) -> bool {
        let policy = &self.service.spec.restart;
        policy.max_attempts > 0
            && policy.window_ms > 0
            && task.restart_count > 0
            && task.created_at_ms >= self.now_ms.saturating_sub(policy.window_ms)
    }

    fn create(&self, restart_count: u64, changes: &mut Vec<TaskChange>) {
        let (slot, node_id) = self.key;
        changes.push(TaskChange::Create {
            service: self.service.spec.name.clone(),
            slot,
            node_id,
            restart_count,
        });
    }

    /// Deletes the oldest ended tasks beyond the history bound, keeping those the
    /// restart policy still counts and those not yet replaced.
    fn prune(&self, changes: &mut Vec<TaskChange>) {
        let mut ended: Vec<&Task> = self
            .tasks
            .iter()
            .copied()
            .filter(|t| t.state.is_terminal())
            .collect();
        if ended.len() <= TASK_HISTORY_PER_SLOT {
            return;
        }
        ended.sort_by(newest_first);
        for task in &ended[TASK_HISTORY_PER_SLOT..] {
            if task.desired_state == DesiredState::Shutdown && !self.counts_in_window(task) {
                changes.push(TaskChange::Delete {
                    task_id: task.id.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{ServiceMode, ServiceSpec};
    use crate::testing::{add_service, cluster, put_task, render, running};
    use std::sync::Arc;

    const NOW: u64 = 100_000;

    fn web(replicas: u64) -> ServiceSpec {
        ServiceSpec {
            mode: ServiceMode::Replicated { replicas },
            ..ServiceSpec::default_for("web", "nginx")
        }
    }

    fn check(state: &ClusterState, now_ms: u64, expected: &[&str]) {
        let changes = reconcile(state, now_ms);
        assert_eq!(render(&changes), expected);
        assert_eq!(reconcile(state, now_ms), changes, "deterministic");
    }

    /// A three-node cluster with "web" at `replicas` and slots 1..=running running on
    /// nodes 1, 2, 3, 1, ...
    fn web_running(replicas: u64, running_slots: u64) -> ClusterState {
        let mut s = cluster(3);
        add_service(&mut s, web(replicas));
        for slot in 1..=running_slots {
            running(&mut s, "web", slot, (slot - 1) % 3 + 1);
        }
        s
    }

    /// Slot 1 of `web` failed at `NOW - ago` after `restart_count` restarts.
    fn failed(policy: impl Fn(&mut ServiceSpec), ago: u64, restart_count: u64) -> ClusterState {
        let mut s = cluster(1);
        let mut spec = web(1);
        policy(&mut spec);
        add_service(&mut s, spec);
        let id = put_task(
            &mut s,
            "web",
            1,
            Some(1),
            TaskState::Failed,
            DesiredState::Running,
        );
        let t = s.tasks.get_mut(&id).unwrap();
        t.state_changed_at_ms = NOW - ago;
        t.restart_count = restart_count;
        s
    }

    #[test]
    fn replicated_slots() {
        check(
            &web_running(3, 0),
            NOW,
            &[
                "create web.1 attempt 0",
                "create web.2 attempt 0",
                "create web.3 attempt 0",
            ],
        );
        check(&web_running(3, 3), NOW, &[]);
        check(
            &web_running(1, 3),
            NOW,
            &[
                "desire shutdown t1: service scaled down",
                "desire shutdown t2: service scaled down",
            ],
        );
        // A pending task that never reached a node is finished here.
        let mut s = web_running(0, 0);
        put_task(
            &mut s,
            "web",
            1,
            None,
            TaskState::Pending,
            DesiredState::Running,
        );
        check(
            &s,
            NOW,
            &[
                "desire shutdown t0: service scaled down",
                "mark shutdown t0: stopped before it was assigned",
            ],
        );
        // Two live tasks in one slot: the older one goes.
        let mut s = web_running(1, 1);
        running(&mut s, "web", 1, 2);
        s.tasks.get_mut("t1").unwrap().state_changed_at_ms = 5;
        check(
            &s,
            NOW,
            &["desire shutdown t0: another task already fills this slot"],
        );
    }

    #[test]
    fn restart_policy() {
        use RestartCondition::{Any, None as Never, OnFailure};
        let delay_5s = |s: &mut ServiceSpec| s.restart.delay_ms = 5_000;
        check(&failed(delay_5s, 1_000, 0), NOW, &[]);
        check(
            &failed(delay_5s, 5_000, 0),
            NOW,
            &["desire shutdown t0: ", "create web.1 attempt 1"],
        );
        check(
            &failed(|s| s.restart.condition = Never, 60_000, 0),
            NOW,
            &[],
        );
        let on_failure = |s: &mut ServiceSpec| s.restart.condition = OnFailure;
        check(
            &failed(on_failure, 60_000, 0),
            NOW,
            &["desire shutdown t0: ", "create web.1 attempt 1"],
        );
        let mut complete = failed(on_failure, 60_000, 0);
        complete.tasks.get_mut("t0").unwrap().state = TaskState::Complete;
        check(&complete, NOW, &[]);
        let mut complete_any = failed(|s| s.restart.condition = Any, 60_000, 0);
        complete_any.tasks.get_mut("t0").unwrap().state = TaskState::Complete;
        check(
            &complete_any,
            NOW,
            &["desire shutdown t0: ", "create web.1 attempt 1"],
        );
        // Attempts without a window: the failed task's attempt number counts.
        let three = |s: &mut ServiceSpec| s.restart.max_attempts = 3;
        check(
            &failed(three, 60_000, 2),
            NOW,
            &["desire shutdown t0: ", "create web.1 attempt 3"],
        );
        let mut spent = failed(three, 60_000, 3);
        let give_up = "not restarted: the restart policy allows 3 attempts and all were used";
        check(&spent, NOW, &[&format!("mark failed t0: {give_up}")]);
        spent.tasks.get_mut("t0").unwrap().message = give_up.to_owned();
        check(&spent, NOW, &[]);
    }

    #[test]
    fn rejected_tasks_are_retried_with_a_growing_delay() {
        let delay_0 = |s: &mut ServiceSpec| s.restart.delay_ms = 0;
        // The newest task was rejected 999 ms ago, after `earlier` rejected
        // (retired) tasks of the same slot.
        let rejected = |earlier: u64, ago: u64| {
            let mut s = failed(delay_0, ago, earlier);
            s.tasks.get_mut("t0").unwrap().state = TaskState::Rejected;
            for i in 0..earlier {
                let id = put_task(
                    &mut s,
                    "web",
                    1,
                    Some(1),
                    TaskState::Rejected,
                    DesiredState::Shutdown,
                );
                let t = s.tasks.get_mut(&id).unwrap();
                t.state_changed_at_ms = NOW - ago - 1_000 * (i + 1);
                t.restart_count = earlier - i - 1;
            }
            s
        };
        let retry = |earlier: u64| {
            [
                "desire shutdown t0: ".to_owned(),
                format!("create web.1 attempt {}", earlier + 1),
            ]
        };
        // One rejection: 1 s, although the policy says no delay.
        check(&rejected(0, 999), NOW, &[]);
        check(
            &rejected(0, 1_000),
            NOW,
            &retry(0).each_ref().map(String::as_str),
        );
        // Three in a row: 4 s.
        check(&rejected(2, 3_999), NOW, &[]);
        check(
            &rejected(2, 4_000),
            NOW,
            &retry(2).each_ref().map(String::as_str),
        );
        // Capped.
        check(&rejected(4, 14_999), NOW, &[]);
        check(
            &rejected(4, 15_000),
            NOW,
            &retry(4).each_ref().map(String::as_str),
        );
        // A longer restart delay still holds.
        let mut slow = rejected(0, 2_000);
        Arc::make_mut(&mut slow.services.get_mut("web").unwrap().spec)
            .restart
            .delay_ms = 5_000;
        check(&slow, NOW, &[]);
        // A failure after running is not a rejection: the policy's delay (0).
        check(
            &failed(delay_0, 0, 0),
            NOW,
            &retry(0).each_ref().map(String::as_str),
        );
        // Nor does an older rejection count once a task ran after it.
        let mut ran = rejected(1, 0);
        ran.tasks.get_mut("t0").unwrap().state = TaskState::Failed;
        check(&ran, NOW, &retry(1).each_ref().map(String::as_str));
    }

    #[test]
    fn restart_window_counts_recent_attempts() {
        let policy = |s: &mut ServiceSpec| {
            s.restart.max_attempts = 2;
            s.restart.window_ms = 10_000;
        };
        let with_attempts = |created: [u64; 2]| {
            let mut s = failed(policy, 60_000, 2);
            for (i, at) in created.into_iter().enumerate() {
                let id = put_task(
                    &mut s,
                    "web",
                    1,
                    Some(1),
                    TaskState::Failed,
                    DesiredState::Shutdown,
                );
                let t = s.tasks.get_mut(&id).unwrap();
                t.restart_count = i as u64 + 1;
                t.created_at_ms = at;
            }
            s.tasks.get_mut("t0").unwrap().created_at_ms = NOW - 1_000;
            s
        };
        // t0 (attempt 2) and t2 (attempt 2's predecessor) are inside the window.
        check(
            &with_attempts([0, NOW - 5_000]),
            NOW,
            &["mark failed t0: not restarted: the restart policy allows 2 attempts within 10000 ms and all were used"],
        );
        check(
            &with_attempts([0, 0]),
            NOW,
            &["desire shutdown t0: ", "create web.1 attempt 3"],
        );
    }

    #[test]
    fn lost_and_drained_tasks_move() {
        let mut s = web_running(3, 3);
        s.nodes.get_mut(&1).unwrap().status = NodeStatus::Down;
        s.nodes.get_mut(&2).unwrap().availability = Availability::Drain;
        s.nodes.remove(&3);
        check(
            &s,
            NOW,
            &[
                "desire shutdown t0: node 1 is down",
                "mark orphaned t0: node 1 is down",
                "create web.1 attempt 0",
                "desire shutdown t1: node 2 is drained",
                "create web.2 attempt 0",
                "desire shutdown t2: node 3 was removed",
                "mark orphaned t2: node 3 was removed from the cluster",
                "create web.3 attempt 0",
            ],
        );
        // Outdated tasks are the updater's: without an update run they stay.
        let mut s = web_running(2, 2);
        let web = s.services.get_mut("web").unwrap();
        web.version = 2;
        Arc::make_mut(&mut web.spec).image = "nginx:2".to_owned();
        check(&s, NOW, &[]);
        // A node that stops satisfying a constraint loses its tasks.
        let mut s = web_running(1, 1);
        Arc::make_mut(&mut s.services.get_mut("web").unwrap().spec).constraints =
            vec!["node.labels.zone==eu".parse().unwrap()];
        check(
            &s,
            NOW,
            &[
                "desire shutdown t0: node 1 no longer satisfies the constraints",
                "create web.1 attempt 0",
            ],
        );
    }

    #[test]
    fn removed_services_are_cleaned_up() {
        let mut s = web_running(4, 4);
        s.services.clear();
        s.tasks.get_mut("t0").unwrap().state = TaskState::Shutdown;
        s.tasks.get_mut("t2").unwrap().state = TaskState::Pending;
        s.tasks.get_mut("t2").unwrap().node_id = None;
        s.nodes.get_mut(&2).unwrap().status = NodeStatus::Down;
        for task in s.tasks.values_mut() {
            task.desired_state = DesiredState::Shutdown;
        }
        check(
            &s,
            NOW,
            &[
                "delete t0",
                "mark orphaned t1: node 2 is down",
                "mark shutdown t2: stopped before it was assigned",
            ],
        );
    }

    #[test]
    fn history_is_bounded_per_slot() {
        let mut s = web_running(1, 1);
        for at in 1..=7 {
            let id = put_task(
                &mut s,
                "web",
                1,
                Some(1),
                TaskState::Failed,
                DesiredState::Shutdown,
            );
            s.tasks.get_mut(&id).unwrap().state_changed_at_ms = at;
        }
        check(&s, NOW, &["delete t2", "delete t1"]);
    }

    #[test]
    fn global_services_follow_eligible_nodes() {
        let mut s = cluster(5);
        let mut spec = ServiceSpec::default_for("agent", "busybox");
        spec.mode = ServiceMode::Global;
        spec.constraints = vec!["node.id!=5".parse().unwrap()];
        add_service(&mut s, spec);
        s.nodes.get_mut(&2).unwrap().availability = Availability::Pause;
        s.nodes.get_mut(&3).unwrap().availability = Availability::Drain;
        s.nodes.get_mut(&4).unwrap().status = NodeStatus::Down;
        check(&s, NOW, &["create agent.0 on 1 attempt 0"]);
        for node in 1..=5 {
            put_task(
                &mut s,
                "agent",
                0,
                Some(node),
                TaskState::Running,
                DesiredState::Running,
            );
        }
        check(
            &s,
            NOW,
            &[
                "desire shutdown t2: node no longer eligible for this global service",
                "desire shutdown t3: node no longer eligible for this global service",
                "mark orphaned t3: node 4 is down",
                "desire shutdown t4: node no longer eligible for this global service",
            ],
        );
    }
}
