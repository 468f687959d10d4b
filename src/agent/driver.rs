//! The agent loop of a node: follows the leader's task stream, reconciles
//! it with the local container engine on every change, engine event and
//! tick, and reports task state changes to the leader in batches.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use shoal_net::codec;
use shoal_raft::{Task, TaskId, TaskState, TaskStatusUpdate};
use tokio::sync::Notify;

use super::{ContainerRuntime, DesiredTask, Executor, ExecutorConfig, Scope, TaskSpec, TaskStatus};
use crate::node::{now_ms, resolve, Node};
use crate::wire::{PeerRequest, PeerResponse, TaskFeed, TaskReport};

/// A pass runs at least this often, to catch anything an engine event or a
/// task change did not announce (they trigger passes at once).
const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// A task stream silent for this long (the leader sends `Idle` every 5 s)
/// is considered dead.
const FEED_SILENCE: Duration = Duration::from_secs(12);
/// Unsent reports kept while the leader is unreachable.
const MAX_UNSENT_REPORTS: usize = 10_000;

type Desired = Arc<Mutex<BTreeMap<TaskId, Task>>>;

pub async fn run(node: Arc<Node>, runtime: Arc<dyn ContainerRuntime>) {
    let scope = Scope::new(node.cluster_id.clone(), node.id.to_string());
    let desired: Desired = Arc::new(Mutex::new(BTreeMap::new()));
    let wake = Arc::new(Notify::new());
    let executor =
        Executor::new(runtime.clone(), scope, ExecutorConfig::default()).with_wake(wake.clone());
    // No pass before the first full set has arrived: an empty desired set
    // would stop every container this node runs.
    let synced = Arc::new(tokio::sync::Semaphore::new(0));
    tokio::spawn(follow_feed(
        node.clone(),
        desired.clone(),
        wake.clone(),
        synced.clone(),
    ));
    tokio::spawn(watch_engine(node.clone(), runtime, wake.clone()));
    let _ = synced.acquire().await;

    // What this agent last reported per task, so each change is sent once
    // and the leader's older view does not make the plan repeat work.
    let mut reported: BTreeMap<TaskId, TaskStatus> = BTreeMap::new();
    let mut unsent: Vec<TaskStatusUpdate> = Vec::new();
    loop {
        let tasks: Vec<Task> = desired.lock().unwrap().values().cloned().collect();
        reported.retain(|id, _| tasks.iter().any(|t| &t.id == id));
        let list: Vec<DesiredTask> = tasks
            .iter()
            .map(|t| desired_task(t, reported.get(&t.id).map(|r| r.state)))
            .collect();
        match executor.reconcile(&list).await {
            Ok(outcome) => {
                node.set_engine_error(None);
                for e in &outcome.errors {
                    tracing::warn!(action = %e.action, error = %e.error, "container action failed; retrying on the next pass");
                }
                for status in outcome.statuses {
                    if reported.get(&status.task_id) == Some(&status) {
                        continue;
                    }
                    unsent.push(update_of(&status));
                    reported.insert(status.task_id.clone(), status);
                }
            }
            Err(e) if e.is_retryable() => {
                node.set_engine_error(Some(e.to_string()));
                tracing::warn!(error = %e, "container engine unavailable; retrying")
            }
            Err(e) => tracing::error!(error = %e, "cannot list this node's containers"),
        }
        if !unsent.is_empty() {
            send_reports(&node, &mut unsent).await;
        }
        tokio::select! {
            () = wake.notified() => {
                // Let a burst of events and changes settle into one pass.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            () = tokio::time::sleep(RESYNC_EVERY) => {}
        }
    }
}

/// The replicated task, as the agent's plan sees it; `reported` is this
/// agent's own newer report, which the leader may not have applied yet.
fn desired_task(task: &Task, reported: Option<TaskState>) -> DesiredTask {
    let spec = &task.spec;
    DesiredTask {
        id: task.id.clone(),
        service: task.service.clone(),
        slot: task.slot,
        desired_state: task.desired_state,
        state: reported.map_or(task.state, |r| r.max(task.state)),
        spec: TaskSpec {
            image: spec.image.clone(),
            command: spec.command.clone(),
            args: spec.args.clone(),
            env: spec.env.clone(),
            labels: spec.labels.clone(),
            // Ingress ports are served by the mesh, not bound by the engine.
            ports: spec
                .ports
                .iter()
                .filter(|p| p.is_host())
                .map(|p| super::PortSpec {
                    published: p.published,
                    target: p.target,
                    protocol: p.protocol,
                })
                .collect(),
            resources: spec.resources,
            stop_grace_period_ms: spec.stop_grace_period_ms,
            stop_signal: spec.stop_signal.clone(),
            pull: spec.pull,
            healthcheck: spec.healthcheck.clone(),
            stack: spec.stack.clone(),
        },
    }
}

fn update_of(status: &TaskStatus) -> TaskStatusUpdate {
    TaskStatusUpdate {
        task_id: status.task_id.clone(),
        state: status.state,
        message: status.message.clone(),
        error: status.error.clone(),
        exit_code: status.exit_code,
        container_id: status.container_id.clone(),
        health: status.health,
        at_ms: now_ms(),
    }
}

async fn send_reports(node: &Arc<Node>, unsent: &mut Vec<TaskStatusUpdate>) {
    let Some((leader, addr)) = node.leader() else {
        return;
    };
    if leader == node.id {
        let report = TaskReport {
            node_id: node.id,
            updates: unsent.clone(),
        };
        match crate::ops::report_tasks(node, node.id, report).await {
            Ok(()) => unsent.clear(),
            Err(e) => tracing::debug!(error = %e, "task report not committed; will resend"),
        }
        return;
    }
    let report = PeerRequest::ReportTasks(TaskReport {
        node_id: node.id,
        updates: unsent.clone(),
    });
    match node
        .call_peer(leader, &addr, &report, node.timing.request_timeout)
        .await
    {
        Ok(PeerResponse::ReportTasks(Ok(()))) => unsent.clear(),
        Ok(PeerResponse::ReportTasks(Err(e))) => {
            tracing::debug!(error = %e, "task report refused; will resend")
        }
        Ok(_) => tracing::warn!("unexpected reply to a task report"),
        Err(e) => tracing::debug!(error = %e, "task report not delivered; will resend"),
    }
    if unsent.len() > MAX_UNSENT_REPORTS {
        // Oldest first out: later passes report the current state again.
        let excess = unsent.len() - MAX_UNSENT_REPORTS;
        unsent.drain(..excess);
    }
}

/// Keeps a task stream open to whichever node leads, applying its frames to
/// `desired`.
async fn follow_feed(
    node: Arc<Node>,
    desired: Desired,
    wake: Arc<Notify>,
    synced: Arc<tokio::sync::Semaphore>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut first_sync = true;
    loop {
        let Some((leader, addr)) = node.leader() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let outcome = if leader == node.id {
            // The leader's own agent reads the state directly: no QUIC
            // connection to itself.
            tokio::select! {
                () = follow_own_state(&node, &desired, &wake, &synced, &mut first_sync) => Ok(()),
                () = leader_changes(&node, leader) => Ok(()),
            }
        } else {
            tokio::select! {
                r = read_feed(&node, leader, &addr, &desired, &wake, &synced, &mut first_sync) => r,
                () = leader_changes(&node, leader) => Ok(()),
            }
        };
        match outcome {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => {
                tracing::debug!(leader, error = %e, "task stream ended");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// On the leader: the desired set is read from the applied state, again
/// after every applied change.
async fn follow_own_state(
    node: &Node,
    desired: &Desired,
    wake: &Notify,
    synced: &tokio::sync::Semaphore,
    first_sync: &mut bool,
) {
    let mut applied = node.state.subscribe();
    loop {
        let now = node
            .state
            .read(|s| crate::dispatcher::tasks_for(s, node.id));
        let changed = *desired.lock().unwrap() != now;
        if changed {
            *desired.lock().unwrap() = now;
        }
        if *first_sync {
            *first_sync = false;
            synced.add_permits(1);
        }
        if changed {
            wake.notify_one();
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}

/// Completes when this node no longer sees `leader` as the leader: woken by
/// Raft's server metrics on a manager (they change only with leadership and
/// membership, not with every heartbeat); a worker's view (from heartbeats)
/// is checked every half second.
async fn leader_changes(node: &Node, leader: u64) {
    let mut metrics = node.raft.server_metrics();
    loop {
        if node.leader().map(|l| l.0) != Some(leader) {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), metrics.changed()).await;
    }
}

async fn read_feed(
    node: &Node,
    leader: u64,
    addr: &str,
    desired: &Desired,
    wake: &Notify,
    synced: &tokio::sync::Semaphore,
    first_sync: &mut bool,
) -> Result<(), String> {
    let sock = resolve(addr).await.map_err(|e| e.to_string())?;
    let conn = node
        .peers
        .get(leader, sock)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    codec::send_msg(&mut send, &PeerRequest::WatchTasks { node_id: node.id })
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    loop {
        let frame = tokio::time::timeout(
            FEED_SILENCE,
            codec::recv_msg::<TaskFeed, _>(&mut recv, codec::MAX_FRAME_BYTES),
        )
        .await
        .map_err(|_| format!("no frame from leader {leader} for {FEED_SILENCE:?}"))?
        .map_err(|e| e.to_string())?;
        {
            let mut tasks = desired.lock().unwrap();
            match frame {
                TaskFeed::Full { tasks: all } => {
                    *tasks = all.into_iter().map(|t| (t.id.clone(), t)).collect();
                    if *first_sync {
                        *first_sync = false;
                        synced.add_permits(1);
                    }
                }
                TaskFeed::Changes { upserts, removed } => {
                    for t in upserts {
                        tasks.insert(t.id.clone(), t);
                    }
                    for id in removed {
                        tasks.remove(&id);
                    }
                }
                TaskFeed::Idle => continue,
            }
        }
        wake.notify_one();
    }
}

/// Wakes the agent on every engine event of this node's containers, and
/// resubscribes when the stream ends (the engine restarted).
async fn watch_engine(node: Arc<Node>, runtime: Arc<dyn ContainerRuntime>, wake: Arc<Notify>) {
    let cluster = node.cluster_id.clone();
    let me = node.id.to_string();
    let mut backoff = Duration::from_millis(100);
    loop {
        match runtime.events(&cluster, &me).await {
            Ok(mut events) => {
                backoff = Duration::from_millis(100);
                while let Some(event) = events.next().await {
                    match event {
                        Ok(_) => wake.notify_one(),
                        Err(e) => {
                            tracing::debug!(error = %e, "engine event stream failed");
                            break;
                        }
                    }
                }
                // The stream ended: the engine may have restarted; re-list.
                wake.notify_one();
            }
            Err(e) => tracing::debug!(error = %e, "cannot subscribe to engine events"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
