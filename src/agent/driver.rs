//! The agent loop of a node: follows the leader's task stream, reconciles
//! it with the local container engine on every change, engine event and
//! tick, and reports task state changes to the leader in batches.
//!
//! It also owns the node's view of its engine. A pass that cannot list the
//! containers sets the node's engine error (sent with every heartbeat; the
//! leader records it and schedules nothing there) and switches the loop to
//! retrying with exponential backoff ([`ENGINE_RETRY_FIRST`] doubling up to
//! [`ENGINE_RETRY_CAP`]), deaf to task changes, so an engine that is gone
//! for minutes costs a handful of failed calls, not a busy loop. The event
//! watcher backs off the same way and wakes the loop as soon as it can
//! subscribe again, so recovery does not wait for the next retry.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
/// First wait after the engine failed (a pass could not list, or the event
/// stream could not be opened); doubled after each further failure.
pub const ENGINE_RETRY_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between two attempts while the engine stays unreachable:
/// also the longest a recovered engine waits to be noticed.
pub const ENGINE_RETRY_CAP: Duration = Duration::from_secs(5);
/// An event stream that ends sooner than this after it opened counts as a
/// failure: an engine (or a proxy in front of it) that accepts and drops
/// connections must not make the watcher resubscribe in a tight loop.
const EVENTS_MIN_LIFETIME: Duration = Duration::from_secs(5);

/// Exponential backoff with a cap: the wait before each next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        Backoff {
            first,
            cap,
            next: first.min(cap),
        }
    }

    /// The backoff the agent uses for its engine.
    pub fn engine() -> Self {
        Self::new(ENGINE_RETRY_FIRST, ENGINE_RETRY_CAP)
    }

    /// After a failure: how long to wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.cap);
        wait
    }

    /// After a success: the next failure waits the shortest time again.
    pub fn succeeded(&mut self) {
        self.next = self.first.min(self.cap);
    }
}

type Desired = Arc<Mutex<BTreeMap<TaskId, Task>>>;

pub async fn run(node: Arc<Node>, runtime: Arc<dyn ContainerRuntime>) {
    let scope = Scope::new(node.cluster_id.clone(), node.id.to_string());
    let desired: Desired = Arc::new(Mutex::new(BTreeMap::new()));
    let wake = Arc::new(Notify::new());
    let engine_back = Arc::new(Notify::new());
    let executor = Executor::new(runtime.clone(), scope.clone(), ExecutorConfig::default())
        .with_wake(wake.clone());
    // No pass before the first full set has arrived: an empty desired set
    // would stop every container this node runs.
    let synced = Arc::new(tokio::sync::Semaphore::new(0));
    tokio::spawn(follow_feed(
        node.clone(),
        desired.clone(),
        wake.clone(),
        synced.clone(),
    ));
    tokio::spawn(watch_engine(
        runtime,
        scope,
        Backoff::engine(),
        wake.clone(),
        engine_back.clone(),
    ));
    let _ = synced.acquire().await;

    let mut passes = Passes::new(executor, Backoff::engine());
    let mut unsent: Vec<TaskStatusUpdate> = Vec::new();
    loop {
        let tasks: Vec<Task> = desired.lock().unwrap().values().cloned().collect();
        let pass = passes.run(&tasks).await;
        node.set_engine_error(pass.engine_error);
        unsent.extend(pass.updates);
        if !unsent.is_empty() {
            send_reports(&node, &mut unsent).await;
        }
        passes.wait(&wake, &engine_back).await;
    }
}

/// What one pass leaves for the node to do.
#[derive(Debug, Default)]
struct PassResult {
    /// Task state changes not reported before.
    updates: Vec<TaskStatusUpdate>,
    /// The node's engine error after this pass (`None`: the engine answered).
    engine_error: Option<String>,
}

/// The engine side of the agent loop, apart from the node so that tests can
/// drive it against the fake engine: one reconciliation pass at a time, the
/// reports it makes, and how long to wait before the next one.
struct Passes {
    executor: Executor,
    /// What this agent last reported per task, so each change is sent once
    /// and the leader's older view does not make the plan repeat work.
    reported: BTreeMap<TaskId, TaskStatus>,
    /// Set while the engine is failing: the wait before the next attempt.
    engine_retry: Option<Duration>,
    backoff: Backoff,
}

impl Passes {
    fn new(executor: Executor, backoff: Backoff) -> Self {
        Passes {
            executor,
            reported: BTreeMap::new(),
            engine_retry: None,
            backoff,
        }
    }

    async fn run(&mut self, tasks: &[Task]) -> PassResult {
        self.reported
            .retain(|id, _| tasks.iter().any(|t| &t.id == id));
        let list: Vec<DesiredTask> = tasks
            .iter()
            .map(|t| desired_task(t, self.reported.get(&t.id).map(|r| r.state)))
            .collect();
        let mut result = PassResult::default();
        match self.executor.reconcile(&list).await {
            Ok(outcome) => {
                if self.engine_retry.take().is_some() {
                    tracing::info!("the container engine answers again");
                }
                self.backoff.succeeded();
                for e in &outcome.errors {
                    tracing::warn!(action = %e.action, error = %e.error, "container action failed; retrying on the next pass");
                }
                for status in outcome.statuses {
                    if self.reported.get(&status.task_id) == Some(&status) {
                        continue;
                    }
                    result.updates.push(update_of(&status));
                    self.reported.insert(status.task_id.clone(), status);
                }
            }
            Err(e) => {
                let retry = self.backoff.failed();
                // Loud once per outage; each retry only at debug level.
                if self.engine_retry.is_none() {
                    tracing::error!(error = %e, retryable = e.is_retryable(), "cannot list this node's containers: the node takes no new tasks until its engine answers");
                } else {
                    tracing::debug!(error = %e, retry_in_ms = retry.as_millis() as u64, "container engine still failing");
                }
                self.engine_retry = Some(retry);
                result.engine_error = Some(e.to_string());
            }
        }
        result
    }

    /// Waits until the next pass is due. Normally: a task change, an engine
    /// event or a finished stop (each wakes `wake`), or the resync tick.
    /// While the engine is failing: the backoff's wait, or `engine_back`
    /// (the event watcher subscribed again); task changes do not shorten it,
    /// since the pass would only fail again.
    async fn wait(&self, wake: &Notify, engine_back: &Notify) {
        match self.engine_retry {
            Some(retry) => {
                tokio::select! {
                    () = engine_back.notified() => {}
                    () = tokio::time::sleep(retry) => {}
                }
            }
            None => {
                tokio::select! {
                    () = wake.notified() => {
                        // Let a burst of events and changes settle into one pass.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    () = tokio::time::sleep(RESYNC_EVERY) => {}
                }
            }
        }
    }
}

/// The replicated task, as the agent's plan sees it; `reported` is this
/// agent's own newer report, which the leader may not have applied yet.
pub(crate) fn desired_task(task: &Task, reported: Option<TaskState>) -> DesiredTask {
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

pub(crate) fn update_of(status: &TaskStatus) -> TaskStatusUpdate {
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
    // A leader that dies leaves its connection silent until the QUIC idle
    // timeout, and this pass would wait the whole request timeout: give up
    // as soon as another leader (or none) is known. The new leader's full
    // task set wakes the next pass, which resends.
    let call = node.call_peer(leader, &addr, &report, node.timing.request_timeout);
    let reply = tokio::select! {
        r = call => r,
        () = leader_changes(node, leader) => {
            tracing::debug!(leader, "the leader changed while a task report was in flight; will resend");
            return;
        }
    };
    match reply {
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
                r = follow_own_state(&node, &desired, &wake, &synced, &mut first_sync) => r,
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

/// On the leader: its own tasks come from the dispatcher hub as every
/// other agent's do, over a channel instead of a QUIC stream. (Reading them
/// from the state after every applied entry cost the leader one more walk
/// of every task per entry.)
async fn follow_own_state(
    node: &Arc<Node>,
    desired: &Desired,
    wake: &Notify,
    synced: &tokio::sync::Semaphore,
    first_sync: &mut bool,
) -> Result<(), String> {
    let mut frames = node.dispatch.join(node, node.id);
    while let Some(frame) = frames.recv().await {
        if apply_frame(desired, frame, synced, first_sync) {
            wake.notify_one();
        }
    }
    Err("the dispatcher ended this node's own task stream".into())
}

/// Applies one task stream frame to `desired`; false for an `Idle` frame.
/// The first full set opens `synced`.
fn apply_frame(
    desired: &Desired,
    frame: TaskFeed,
    synced: &tokio::sync::Semaphore,
    first_sync: &mut bool,
) -> bool {
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
        TaskFeed::Idle => return false,
    }
    true
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
        if apply_frame(desired, frame, synced, first_sync) {
            wake.notify_one();
        }
    }
}

/// Wakes the agent on every engine event of this node's containers, and
/// resubscribes when the stream ends (the engine restarted, or its socket
/// went away), backing off while subscribing fails. `engine_back` is
/// notified when a subscription succeeds after a failure, so a loop waiting
/// out its backoff runs a pass at once.
async fn watch_engine(
    runtime: Arc<dyn ContainerRuntime>,
    scope: Scope,
    mut backoff: Backoff,
    wake: Arc<Notify>,
    engine_back: Arc<Notify>,
) {
    let mut failing = false;
    loop {
        match runtime.events(&scope.cluster_id, &scope.node_id).await {
            Ok(mut events) => {
                if std::mem::take(&mut failing) {
                    engine_back.notify_one();
                }
                let opened = Instant::now();
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
                if opened.elapsed() >= EVENTS_MIN_LIFETIME {
                    backoff.succeeded();
                }
            }
            Err(e) => {
                failing = true;
                tracing::debug!(error = %e, "cannot subscribe to engine events");
            }
        }
        tokio::time::sleep(backoff.failed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::fake::FakeRuntime;
    use crate::agent::runtime::{ContainerInfo, ContainerSpec, EventStream, RuntimeError};
    use futures::future::BoxFuture;
    use shoal_raft::{DesiredState, ServiceSpec};

    #[test]
    fn engine_backoff_doubles_to_its_cap_and_resets_on_success() {
        let mut backoff = Backoff::engine();
        let waits: Vec<u128> = (0..8).map(|_| backoff.failed().as_millis()).collect();
        assert_eq!(waits, [250, 500, 1_000, 2_000, 4_000, 5_000, 5_000, 5_000]);
        backoff.succeeded();
        assert_eq!(backoff.failed(), ENGINE_RETRY_FIRST);
        // A first wait above the cap is cut to the cap.
        let mut odd = Backoff::new(Duration::from_secs(9), Duration::from_secs(2));
        assert_eq!(odd.failed(), Duration::from_secs(2));
    }

    fn task(id: &str) -> Task {
        Task {
            id: id.to_string(),
            service: "web".to_string(),
            slot: 1,
            node_id: Some(1),
            spec_version: 1,
            spec: ServiceSpec::default_for("web", "shoal-test:latest").into(),
            desired_state: DesiredState::Running,
            state: TaskState::Assigned,
            message: String::new(),
            error: String::new(),
            exit_code: None,
            container_id: None,
            restart_count: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
            state_changed_at_ms: 0,
            running_since_ms: None,
            health: None,
        }
    }

    /// The agent loop of `run`, minus the node: passes over `tasks`, each
    /// result sent to `results`, waits as `run` waits. Task changes are
    /// simulated by waking the loop every millisecond, the worst a busy
    /// leader could do.
    fn spawn_loop(
        fake: Arc<FakeRuntime>,
        backoff: Backoff,
        tasks: Vec<Task>,
    ) -> tokio::sync::mpsc::UnboundedReceiver<PassResult> {
        let scope = Scope::new("cl", "1");
        let wake = Arc::new(Notify::new());
        let engine_back = Arc::new(Notify::new());
        let executor = Executor::new(fake.clone(), scope.clone(), ExecutorConfig::default())
            .with_wake(wake.clone());
        tokio::spawn(watch_engine(
            fake,
            scope,
            backoff,
            wake.clone(),
            engine_back.clone(),
        ));
        let chatter = wake.clone();
        tokio::spawn(async move {
            loop {
                chatter.notify_one();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let (send, results) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut passes = Passes::new(executor, backoff);
            loop {
                let result = passes.run(&tasks).await;
                if send.send(result).is_err() {
                    return;
                }
                passes.wait(&wake, &engine_back).await;
            }
        });
        results
    }

    /// Waits for the first pass whose engine state is `down`.
    async fn pass_with(
        results: &mut tokio::sync::mpsc::UnboundedReceiver<PassResult>,
        down: bool,
        within: Duration,
    ) -> PassResult {
        tokio::time::timeout(within, async {
            loop {
                let result = results.recv().await.expect("the loop runs");
                if result.engine_error.is_some() == down {
                    return result;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no pass with the engine down={down} within {within:?}"))
    }

    /// An engine whose event streams end as soon as they open (as behind a
    /// proxy that accepts and drops connections); the rest is the fake's.
    struct DroppedStreams {
        fake: FakeRuntime,
        opened: std::sync::atomic::AtomicU64,
    }

    impl ContainerRuntime for DroppedStreams {
        fn ping(&self) -> BoxFuture<'_, Result<(), RuntimeError>> {
            self.fake.ping()
        }
        fn list<'a>(
            &'a self,
            cluster_id: &'a str,
            node_id: &'a str,
        ) -> BoxFuture<'a, Result<Vec<ContainerInfo>, RuntimeError>> {
            self.fake.list(cluster_id, node_id)
        }
        fn image_present<'a>(
            &'a self,
            image: &'a str,
        ) -> BoxFuture<'a, Result<bool, RuntimeError>> {
            self.fake.image_present(image)
        }
        fn pull<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
            self.fake.pull(image)
        }
        fn create<'a>(
            &'a self,
            spec: &'a ContainerSpec,
        ) -> BoxFuture<'a, Result<String, RuntimeError>> {
            self.fake.create(spec)
        }
        fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
            self.fake.start(id)
        }
        fn stop<'a>(
            &'a self,
            id: &'a str,
            grace: Duration,
            signal: Option<&'a str>,
        ) -> BoxFuture<'a, Result<(), RuntimeError>> {
            self.fake.stop(id, grace, signal)
        }
        fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
            self.fake.remove(id)
        }
        fn inspect<'a>(
            &'a self,
            id: &'a str,
        ) -> BoxFuture<'a, Result<ContainerInfo, RuntimeError>> {
            self.fake.inspect(id)
        }
        fn address<'a>(
            &'a self,
            id: &'a str,
        ) -> BoxFuture<'a, Result<Option<std::net::IpAddr>, RuntimeError>> {
            self.fake.address(id)
        }
        fn events<'a>(
            &'a self,
            _cluster_id: &'a str,
            _node_id: &'a str,
        ) -> BoxFuture<'a, Result<EventStream, RuntimeError>> {
            self.opened
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async { Ok(futures::stream::empty().boxed()) })
        }
    }

    #[tokio::test]
    async fn event_streams_that_end_at_once_are_reopened_with_backoff() {
        let engine = Arc::new(DroppedStreams {
            fake: FakeRuntime::new(),
            opened: Default::default(),
        });
        let wake = Arc::new(Notify::new());
        let watcher = tokio::spawn(watch_engine(
            engine.clone(),
            Scope::new("cl", "1"),
            Backoff::new(Duration::from_millis(10), Duration::from_millis(200)),
            wake,
            Arc::new(Notify::new()),
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
        watcher.abort();
        // 10, 20, 40, 80, 160 ms, then every 200 ms: about 14 in 2 s; a
        // watcher that took every opened stream for a success would reopen
        // every 10 ms, 200 times.
        let opened = engine.opened.load(std::sync::atomic::Ordering::SeqCst);
        assert!((5..=30).contains(&opened), "{opened} subscriptions in 2 s");
    }

    #[tokio::test]
    async fn an_unreachable_engine_is_retried_with_backoff_not_in_a_busy_loop() {
        let fake = Arc::new(FakeRuntime::new());
        fake.add_image("shoal-test:latest");
        // The production backoff scaled down 25 times: 10 ms doubling to a
        // 200 ms cap, so the test sees the cap within its window.
        let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(200));
        let mut results = spawn_loop(fake.clone(), backoff, vec![task("t1")]);
        let first = pass_with(&mut results, false, Duration::from_secs(5)).await;
        assert_eq!(first.updates.len(), 1, "{:?}", first.updates);
        assert_eq!(first.updates[0].state, TaskState::Running);
        let container = fake.containers()[0].id.clone();

        fake.set_available(false);
        let down = pass_with(&mut results, true, Duration::from_secs(5)).await;
        let error = down.engine_error.unwrap();
        assert!(error.contains("unreachable"), "{error}");
        // Two seconds of outage: about ten tries each for the loop and the
        // event watcher at the cap (and five before it), where a loop
        // driven by the wake-ups would make thousands.
        let before = fake.calls().refused;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let refused = fake.calls().refused - before;
        assert!(
            (4..=60).contains(&refused),
            "{refused} engine calls in 2 s of outage"
        );

        // Back: the watcher subscribes again and wakes the loop, which
        // clears the error well before another full backoff would end.
        fake.set_available(true);
        let back = tokio::time::Instant::now();
        let up = pass_with(&mut results, false, Duration::from_secs(5)).await;
        assert!(
            back.elapsed() <= Duration::from_millis(600),
            "recovery noticed after {:?}",
            back.elapsed()
        );
        // The task's container ran through the outage and is adopted: no
        // new report, no second container.
        assert!(up.updates.is_empty(), "{:?}", up.updates);
        assert_eq!(fake.containers().len(), 1);
        assert_eq!(fake.containers()[0].id, container);
        assert_eq!(fake.calls().creates, 1);
    }
}
