//! `shoal dev simulate`: three real managers and thousands of simulated
//! worker agents, to measure how the control plane scales.
//!
//! The managers are child processes of this binary (`init`, `join`, `run`
//! with their own data dirs: real Raft over real QUIC, real storage). Their
//! own agents use the in-memory engine and they are drained, so the tasks
//! go to the simulated workers. The workers live in this process. Each one
//! joins with the worker token through the real join handshake (its own key
//! and certificate), then holds a mutually authenticated QUIC connection to
//! the leader on which it sends what a real node sends: heartbeats, the
//! task stream (`WatchTasks`, `TaskFeed` frames back), batched task
//! reports (`ReportTasks`) and, unless `--no-endpoint-feed`, the endpoint
//! stream (`WatchEndpoints`; its frames are decoded and counted, and the
//! name of the last whole table kept, not the table). Its
//! containers run in its own `FakeRuntime`,
//! driven by the real executor and plan (`agent::Executor`), and take
//! `--start-delay` to start.
//!
//! Workers dial from a few UDP sockets (dial-only endpoints, one per
//! `WORKERS_PER_SOCKET` workers; each connection presents its own worker's
//! certificate). Each worker
//! advertises a distinct address in 127.2.0.0/16 that nothing dials:
//! workers are dialed only by the routing mesh, and the simulated services
//! publish no ports.
//!
//! Steps, each timed: the workers join (all joined and `ready`); services
//! are deployed and converge (every task running, in the leader's view and
//! in the workers' engines, with the leader killed by SIGKILL once half of
//! them run, unless `--no-failover`); a fraction of the workers is killed
//! and their tasks are rescheduled (the exact count running again). The
//! last line printed is one JSON object with the figures.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use shoal_cli::api::{NodeUpdate, ServiceSpecDoc};
use shoal_cli::args::SimulateArgs;
use shoal_cli::client::ApiClient;
use shoal_net::codec;
use shoal_net::pki::{NodeIdentity, NodeKey};
use shoal_net::token;
use shoal_net::transport::{self, Dialer, Endpoint, NetError};
use shoal_net::Connection;
use shoal_raft::{DesiredState, NodeId, Task, TaskId, TaskStatusUpdate};
use tokio::sync::{watch, Notify, Semaphore};

use crate::agent::driver::{desired_task, update_of};
use crate::agent::fake::FakeRuntime;
use crate::agent::runtime::{ContainerState, LABEL_TASK};
use crate::agent::{ContainerRuntime, DesiredTask, Executor, ExecutorConfig, Scope, TaskStatus};
use crate::heartbeat::{leaderless_period, BeatError};
use crate::mesh::table::{FeedVersion, Interest};
use crate::node::VERSION;
use crate::wire::{
    EndpointFeed, Heartbeat, JoinAccepted, JoinRequest, OpError, PeerRequest, PeerResponse,
    TaskFeed, TaskReport,
};

/// The image every simulated service runs; every worker's engine has it.
const IMAGE: &str = "sim:1";
/// Joins in flight at once.
const JOINS_IN_FLIGHT: usize = 16;
/// QUIC handshakes of workers in flight at once; with the joins' this
/// stays below the 64 a node runs at a time (more are refused).
const HANDSHAKES_IN_FLIGHT: usize = 24;
/// Deploy requests in flight at once.
const DEPLOYS_IN_FLIGHT: usize = 8;
/// Dialing a manager (a real node's connect timeout), and one join end to end.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A task report, as the real agent's request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A task stream silent this long is dead (the leader sends `Idle` every 5 s).
const FEED_SILENCE: Duration = Duration::from_secs(12);
/// A worker's pass runs at least this often, as the real agent's.
const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// Simulated workers that share one UDP socket. One socket for 5,000
/// workers (one quinn endpoint, whose driver reads every datagram on one
/// task) overflowed and dropped the managers' acknowledgements, so workers
/// took live leaders for dead; a real node has a socket of its own.
const WORKERS_PER_SOCKET: usize = 500;
/// Unsent reports kept while no leader answers, as the real agent.
const MAX_UNSENT_REPORTS: usize = 10_000;
/// How often progress is checked (counting 100,000 containers in the
/// workers' engines takes tens of milliseconds).
const POLL: Duration = Duration::from_millis(500);
/// Control API calls from this command.
const API_TIMEOUT: Duration = Duration::from_secs(30);

/// The figures of one run; printed as the last line, as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub agents: u32,
    pub tasks: u64,
    pub services: u32,
    /// All workers joined and `ready`, from the first join.
    pub join_s: f64,
    /// Every task running, from the first deploy request (including the
    /// leader failover, when there is one).
    pub converge_s: f64,
    /// SIGKILL of the leader until a write is accepted through a survivor;
    /// `null` without a failover.
    pub failover_s: Option<f64>,
    /// Tasks running in the workers' engines once converged.
    pub running_after_converge: u64,
    pub agents_killed: u32,
    /// Killing the workers until their tasks run elsewhere (this includes
    /// the heartbeat timeout that declares them down).
    pub reschedule_s: Option<f64>,
    /// Tasks running in the live workers' engines at the end.
    pub running_at_end: u64,
    /// Highest resident set size of the leading manager seen while polling.
    pub leader_rss_mb: f64,
    /// The final leader's peak resident set size (`VmHWM`).
    pub leader_peak_rss_mb: f64,
    /// CPU time of the leading manager in each step (the leader at the
    /// step's end, since the step's start or since it started).
    pub leader_cpu_s: BTreeMap<String, f64>,
    /// The final leader's Raft store (redb file: log, vote, snapshot).
    pub raft_file_mb: f64,
    /// A snapshot of the final state, built once the run is over (a run
    /// may take none: one is taken every 5,000 log entries).
    pub snapshot_mb: f64,
    /// How long building that snapshot took (encoding and writing it).
    pub snapshot_build_s: f64,
    /// The replicated state as a snapshot would encode it now.
    pub state_mb: f64,
    pub log_entries_kept: u64,
    pub last_log_index: u64,
    pub heartbeat_timeout_ms: u64,
    /// The managers' Raft election timeout (the minimum).
    pub election_timeout_ms: u64,
    /// The beat period and down timeout the leader decides for a cluster of
    /// this size (`liveness::cadence`).
    pub heartbeat_period_ms: u64,
    pub down_timeout_ms: u64,
    pub start_delay_ms: u64,
    /// Every worker has one QUIC connection of its own (not multiplexed).
    pub connections_per_agent: u32,
    /// UDP sockets the simulated workers' connections are spread over.
    pub worker_sockets: usize,
    /// Endpoint-table frames the workers received in all (each follows
    /// the leader's endpoint stream, as a real node does for its mesh
    /// and DNS, unless `--no-endpoint-feed`; the frames are counted, not
    /// decoded).
    pub endpoint_feed_mb: f64,
}

/// Runs the whole simulation and prints its report.
pub async fn run(args: SimulateArgs) -> Result<()> {
    let report = simulate(&args).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn simulate(args: &SimulateArgs) -> Result<Report> {
    if u64::from(args.services) > args.tasks {
        bail!(
            "--services {} is more than --tasks {}: every service needs at least one task",
            args.services,
            args.tasks
        );
    }
    let work = WorkDir::new(args.work_dir.clone())?;
    let port = match args.port {
        Some(p) => p,
        None => free_port()?,
    };
    let mut cluster = Managers::start(&work.path, port, args).await?;
    let outcome = scenario(args, &mut cluster).await;
    cluster.stop_all();
    let mut report = outcome?;
    let leader_dir = cluster.dir_of(cluster.last_leader.unwrap_or(0));
    store_figures(&leader_dir, &mut report).await?;
    drop(work);
    Ok(report)
}

async fn scenario(args: &SimulateArgs, cluster: &mut Managers) -> Result<Report> {
    let step_timeout = args.step_timeout;
    let heartbeat_interval = (args.heartbeat_timeout / 4).max(Duration::from_millis(50));
    let api = cluster.api()?;
    let token_text = api.token("worker").await?.token;
    let token = token::parse(&token_text).map_err(|e| anyhow!("the worker token: {e}"))?;
    let sockets = (args.agents as usize).div_ceil(WORKERS_PER_SOCKET).max(1);
    let endpoints = (0..sockets)
        .map(|_| Endpoint::client("127.0.0.1:0".parse().expect("an address")))
        .collect::<Result<Vec<_>, _>>()?;
    let shared = Arc::new(Shared {
        endpoints,
        handshakes: Semaphore::new(HANDSHAKES_IN_FLIGHT),
        heartbeat_interval,
        start_delay: args.start_delay,
        endpoint_feed: !args.no_endpoint_feed,
        endpoint_feed_bytes: AtomicU64::new(0),
    });
    let mut cpu: BTreeMap<String, f64> = BTreeMap::new();
    let rss = RssPeak::default();

    // 1. Join.
    say(format!("joining {} simulated workers", args.agents));
    let cpu_mark = cluster.leader_cpu(&api).await;
    let started = Instant::now();
    let agents = join_all(&shared, cluster, &token, args.agents, step_timeout).await?;
    let expected_ready = agents.len() + cluster.count();
    {
        let (api, cluster, rss) = (&api, &*cluster, &rss);
        wait_until(step_timeout, "all workers to be ready", || async move {
            let nodes = api.nodes().await?;
            let ready = nodes.iter().filter(|n| n.status == "ready").count();
            rss.sample(cluster, api).await;
            Ok((ready == expected_ready).then_some(()))
        })
        .await?;
    }
    let join_s = started.elapsed().as_secs_f64();
    cpu.insert(
        "join".into(),
        cluster.leader_cpu_since(&api, cpu_mark).await,
    );
    say(format!(
        "{} workers joined and ready in {join_s:.2} s",
        agents.len()
    ));

    // 2. Deploy and converge, with the leader killed halfway.
    say(format!(
        "deploying {} services, {} tasks",
        args.services, args.tasks
    ));
    let cpu_mark = cluster.leader_cpu(&api).await;
    let started = Instant::now();
    deploy(&api, args.services, args.tasks).await?;
    let mut failover_s = None;
    let mut api = api;
    if !args.no_failover {
        {
            let (api, cluster, rss, agents) = (&api, &*cluster, &rss, &agents);
            wait_until(step_timeout, "half of the tasks to run", || async move {
                rss.sample(cluster, api).await;
                Ok((running_in(agents) * 2 >= args.tasks).then_some(()))
            })
            .await?;
        }
        let killed_at = Instant::now();
        let old = cluster.kill_leader(&api).await?;
        api = cluster.api()?;
        {
            let api = &api;
            wait_until(
                step_timeout,
                "a new leader to accept a write",
                || async move { Ok(api.noop().await.is_ok().then_some(())) },
            )
            .await?;
        }
        let took = killed_at.elapsed().as_secs_f64();
        failover_s = Some(took);
        say(format!(
            "leader {} killed; a write was accepted after {took:.2} s",
            cluster.names[old]
        ));
        cluster.restart(old)?;
    }
    wait_converged(&api, cluster, &agents, args.tasks, step_timeout, &rss).await?;
    let converge_s = started.elapsed().as_secs_f64();
    let running_after_converge = running_in(&agents);
    cpu.insert(
        "deploy_converge".into(),
        cluster.leader_cpu_since(&api, cpu_mark).await,
    );
    say(format!(
        "{} tasks running after {converge_s:.2} s",
        args.tasks
    ));

    // 3. Kill a fraction of the workers; their tasks move.
    let to_kill = ((args.agents as f64) * args.kill_fraction).round() as usize;
    let to_kill = to_kill.min(agents.len().saturating_sub(1));
    let mut reschedule_s = None;
    if to_kill > 0 {
        let cpu_mark = cluster.leader_cpu(&api).await;
        let started = Instant::now();
        // Spread over the join order, so the victims are not all the
        // workers that joined first.
        let stride = agents.len() as f64 / to_kill as f64;
        for k in 0..to_kill {
            agents[(k as f64 * stride) as usize].kill();
        }
        say(format!("killed {to_kill} workers"));
        wait_converged(&api, cluster, &agents, args.tasks, step_timeout, &rss).await?;
        let took = started.elapsed().as_secs_f64();
        reschedule_s = Some(took);
        cpu.insert(
            "reschedule".into(),
            cluster.leader_cpu_since(&api, cpu_mark).await,
        );
        say(format!("their tasks run elsewhere after {took:.2} s"));
    }
    let running_at_end = running_in(&agents);
    let cadence = crate::liveness::cadence(
        agents.len() + cluster.count(),
        heartbeat_interval,
        args.heartbeat_timeout,
    );
    let leader = cluster.leader_index(&api).await?;
    cluster.last_leader = Some(leader);
    let peak = cluster.peak_rss_mb(leader);
    rss.sample(cluster, &api).await;
    for agent in &agents {
        agent.kill();
    }
    Ok(Report {
        agents: args.agents,
        tasks: args.tasks,
        services: args.services,
        join_s: round(join_s),
        converge_s: round(converge_s),
        failover_s: failover_s.map(round),
        running_after_converge,
        agents_killed: to_kill as u32,
        reschedule_s: reschedule_s.map(round),
        running_at_end,
        leader_rss_mb: round(rss.max_mb()),
        leader_peak_rss_mb: round(peak),
        leader_cpu_s: cpu.into_iter().map(|(k, v)| (k, round(v))).collect(),
        raft_file_mb: 0.0,
        snapshot_mb: 0.0,
        snapshot_build_s: 0.0,
        state_mb: 0.0,
        log_entries_kept: 0,
        last_log_index: 0,
        heartbeat_timeout_ms: args.heartbeat_timeout.as_millis() as u64,
        election_timeout_ms: args.election_timeout.as_millis() as u64,
        heartbeat_period_ms: cadence.period.as_millis() as u64,
        down_timeout_ms: cadence.timeout.as_millis() as u64,
        start_delay_ms: args.start_delay.as_millis() as u64,
        connections_per_agent: 1,
        worker_sockets: shared.endpoints.len(),
        endpoint_feed_mb: round(shared.endpoint_feed_bytes.load(Ordering::Relaxed) as f64 / 1e6),
    })
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn say(line: String) {
    eprintln!("simulate: {line}");
}

/// Waits until `check` answers `Some`, polling; errors name what was awaited.
async fn wait_until<T, F, Fut>(within: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    let mut last_error = String::new();
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = format!(" (last error: {e:#})"),
        }
        if Instant::now() >= deadline {
            bail!(
                "gave up waiting for {what} after {}s{last_error}",
                within.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Until exactly `expected` tasks run: in the leader's view (every service
/// at its replica count) and in the live workers' engines.
async fn wait_converged(
    api: &ApiClient,
    cluster: &Managers,
    agents: &[Arc<Agent>],
    expected: u64,
    within: Duration,
    rss: &RssPeak,
) -> Result<()> {
    let last = std::cell::Cell::new((0, 0));
    let seen = &last;
    let said = std::cell::Cell::new(Instant::now());
    let said = &said;
    let outcome = wait_until(within, "every task to run", || async move {
        rss.sample(cluster, api).await;
        let engines = running_in(agents);
        if said.get().elapsed() >= Duration::from_secs(5) {
            said.set(Instant::now());
            let w = waiting_in(agents);
            say(format!(
                "{engines} of {expected} tasks running in the workers' engines; {} streamed to workers and meant to run (not running yet: {}); {} workers know no leader",
                w.meant_to_run, w.not_running, w.without_leader
            ));
        }
        if engines != expected {
            seen.set((seen.get().0, engines));
            return Ok(None);
        }
        let asked = Instant::now();
        let services = api.services().await?;
        let running: u64 = services.iter().map(|s| s.replicas_running).sum();
        if asked.elapsed() >= Duration::from_secs(1) {
            say(format!(
                "the leader counted {running} running tasks; `service ls` took {:.2} s",
                asked.elapsed().as_secs_f64()
            ));
        }
        seen.set((running, engines));
        let all = services
            .iter()
            .all(|s| s.replicas_running == s.replicas_desired);
        Ok((all && running == expected).then_some(()))
    })
    .await;
    outcome.with_context(|| {
        let (leader, engines) = last.get();
        format!(
            "the leader counted {leader} running tasks, the workers' engines {engines}; expected {expected}"
        )
    })
}

/// Where the tasks not running yet are, across the live workers.
struct Waiting {
    /// Tasks the leader has streamed to a worker with desired state running.
    meant_to_run: u64,
    /// Of those, the ones whose container does not run (yet).
    not_running: u64,
    /// Workers that know no leader right now (their beats go round the
    /// managers until one names it).
    without_leader: u64,
}

fn waiting_in(agents: &[Arc<Agent>]) -> Waiting {
    let mut w = Waiting {
        meant_to_run: 0,
        not_running: 0,
        without_leader: 0,
    };
    for agent in agents.iter().filter(|a| !a.is_killed()) {
        if agent.leader.borrow().is_none() {
            w.without_leader += 1;
        }
        let running: BTreeSet<String> = agent
            .runtime
            .containers()
            .iter()
            .filter(|c| c.state == ContainerState::Running)
            .filter_map(|c| c.labels.get(LABEL_TASK).cloned())
            .collect();
        for task in agent.desired.lock().unwrap().values() {
            if task.desired_state == DesiredState::Running {
                w.meant_to_run += 1;
                if !running.contains(&task.id) {
                    w.not_running += 1;
                }
            }
        }
    }
    w
}

/// Running containers in the engines of the workers that are alive.
fn running_in(agents: &[Arc<Agent>]) -> u64 {
    agents
        .iter()
        .filter(|a| !a.is_killed())
        .map(|a| {
            a.runtime
                .containers()
                .iter()
                .filter(|c| c.state == ContainerState::Running)
                .count() as u64
        })
        .sum()
}

/// `services` services of `tasks` replicas in all (the first ones get one
/// more when it does not divide evenly).
pub fn replica_counts(services: u32, tasks: u64) -> Vec<u64> {
    let n = u64::from(services.max(1));
    (0..n)
        .map(|i| tasks / n + u64::from(i < tasks % n))
        .collect()
}

async fn deploy(api: &ApiClient, services: u32, tasks: u64) -> Result<()> {
    let slots = Arc::new(Semaphore::new(DEPLOYS_IN_FLIGHT));
    let mut set = tokio::task::JoinSet::new();
    for (i, replicas) in replica_counts(services, tasks).into_iter().enumerate() {
        let api = api.clone();
        let slots = slots.clone();
        set.spawn(async move {
            let _permit = slots.acquire().await;
            let spec = ServiceSpecDoc {
                name: format!("sim{i:04}"),
                image: IMAGE.to_string(),
                replicas: Some(replicas),
                ..Default::default()
            };
            // A deploy is create-or-update, so one refused for want of a
            // leader or a quorum is sent again.
            let deadline = Instant::now() + API_TIMEOUT * 4;
            let mut retried = false;
            loop {
                match api.deploy(&spec).await {
                    Ok(_) => return Ok(()),
                    // The refused attempt was committed after all and a
                    // second create raced it: the service is there.
                    Err(e) if retried && e.to_string().contains("already exists") => return Ok(()),
                    Err(e) if e.is_retryable() && Instant::now() < deadline => {
                        retried = true;
                        tokio::time::sleep(jitter(Duration::from_millis(200))).await;
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e))
                            .with_context(|| format!("cannot deploy {}", spec.name))
                    }
                }
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    Ok(())
}

/// What every simulated worker shares.
struct Shared {
    /// Dial-only endpoints, one per [`WORKERS_PER_SOCKET`] workers.
    endpoints: Vec<Endpoint>,
    handshakes: Semaphore,
    heartbeat_interval: Duration,
    start_delay: Duration,
    /// Whether workers follow the endpoint stream (`--no-endpoint-feed`).
    endpoint_feed: bool,
    /// Bytes of endpoint-table frames the workers received in all.
    endpoint_feed_bytes: AtomicU64,
}

/// One simulated worker.
struct Agent {
    id: NodeId,
    cluster_id: String,
    dialer: Dialer,
    runtime: Arc<FakeRuntime>,
    killed: watch::Sender<bool>,
    /// Connections to the managers, one slot each, so a dial of a dead
    /// manager holds up nothing else.
    links: Mutex<BTreeMap<NodeId, Arc<tokio::sync::Mutex<Option<Connection>>>>>,
    leader: watch::Sender<Option<(NodeId, SocketAddr)>>,
    managers: Mutex<Vec<(NodeId, String)>>,
    /// The tasks the leader streams to this worker.
    desired: Mutex<BTreeMap<TaskId, Task>>,
    wake: Notify,
    /// The name of the last whole endpoint table the leader sent.
    endpoint_table: Mutex<Option<FeedVersion>>,
}

impl Agent {
    fn kill(&self) {
        self.killed.send_replace(true);
    }

    fn is_killed(&self) -> bool {
        *self.killed.borrow()
    }

    async fn until_killed(&self) {
        let mut rx = self.killed.subscribe();
        let _ = rx.wait_for(|k| *k).await;
    }

    /// The connection to `target`, the cached one or a new one.
    async fn link(
        &self,
        shared: &Shared,
        target: (NodeId, SocketAddr),
    ) -> Result<Connection, NetError> {
        let slot = self
            .links
            .lock()
            .unwrap()
            .entry(target.0)
            .or_default()
            .clone();
        let mut link = slot.lock().await;
        if let Some(conn) = &*link {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        let _permit = shared.handshakes.acquire().await;
        let conn = shared.endpoints[self.id as usize % shared.endpoints.len()]
            .connect_as(&self.dialer, target.1, target.0, CONNECT_TIMEOUT)
            .await?;
        *link = Some(conn.clone());
        Ok(conn)
    }

    fn forget_link(&self, peer: NodeId) {
        self.links.lock().unwrap().remove(&peer);
    }

    fn set_leader(&self, leader: Option<(NodeId, SocketAddr)>) {
        let changed = self.leader.send_if_modified(|l| {
            let changed = *l != leader;
            *l = leader;
            changed
        });
        // As a node's connection pool does with connections it no longer
        // uses: links to former leaders are let go (calls in flight on them
        // finish), so they close instead of being kept alive.
        if let (true, Some((id, _))) = (changed, leader) {
            self.links.lock().unwrap().retain(|peer, _| *peer == id);
        }
    }
}

/// Joins `count` workers through the managers in turn, `JOINS_IN_FLIGHT`
/// at a time, and starts their loops.
async fn join_all(
    shared: &Arc<Shared>,
    cluster: &Managers,
    token: &token::JoinToken,
    count: u32,
    within: Duration,
) -> Result<Vec<Arc<Agent>>> {
    let slots = Arc::new(Semaphore::new(JOINS_IN_FLIGHT));
    let mut set = tokio::task::JoinSet::new();
    let deadline = Instant::now() + within;
    for index in 0..count as usize {
        let server = cluster.addr(index % cluster.count());
        let token = token.clone();
        let shared = shared.clone();
        let slots = slots.clone();
        set.spawn(async move {
            let _permit = slots.acquire().await;
            // A join refused because the leader changed under it may or
            // may not have registered the node: try again under another
            // name and address (a registration left behind stays `down`).
            let mut attempt = 0;
            let agent = loop {
                match join_one(&shared, index, attempt, server, &token, deadline).await {
                    Ok(agent) => break agent,
                    Err(e) if attempt < 3 && Instant::now() < deadline => {
                        say(format!("worker {index}: {e:#}; joining again"));
                        attempt += 1;
                    }
                    Err(e) => return Err(e),
                }
            };
            start_agent(shared.clone(), agent.clone());
            Ok::<_, anyhow::Error>((index, agent))
        });
    }
    let mut agents = Vec::with_capacity(count as usize);
    let mut done = 0usize;
    while let Some(joined) = set.join_next().await {
        agents.push(joined??);
        done += 1;
        if done.is_multiple_of(1_000) {
            say(format!("{done} workers joined"));
        }
    }
    agents.sort_by_key(|(i, _)| *i);
    Ok(agents.into_iter().map(|(_, a)| a).collect())
}

/// One worker's join: the real handshake (`shoal-join/1`, the CA checked
/// against the token's fingerprint), a key of its own, and the certificate
/// the leader signs. Dialing is retried until `deadline` (a node refuses
/// handshakes past its limit); the request itself is sent once.
async fn join_one(
    shared: &Arc<Shared>,
    index: usize,
    attempt: usize,
    server: SocketAddr,
    token: &token::JoinToken,
    deadline: Instant,
) -> Result<Arc<Agent>> {
    let key = NodeKey::generate().context("cannot create a worker key")?;
    let request = JoinRequest {
        secret: token.secret.clone(),
        name: if attempt == 0 {
            format!("sim-{index:05}")
        } else {
            format!("sim-{index:05}-{attempt}")
        },
        addr: advertised_addr(index + attempt * 20_000),
        public_key_der: key.public_key_der(),
        resources: crate::bootstrap::host_resources(),
        version: VERSION.to_string(),
    };
    let mut backoff = Duration::from_millis(50);
    let conn = loop {
        match transport::connect_for_join(server, &token.fingerprint, CONNECT_TIMEOUT).await {
            Ok(conn) => break conn,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => bail!("worker {index} cannot reach {server} to join: {e}"),
        }
    };
    let reply: Result<JoinAccepted, OpError> = transport::call(&conn, &request, JOIN_TIMEOUT)
        .await
        .with_context(|| format!("worker {index}: no answer to its join request"))?;
    conn.close(0u32.into(), b"joined");
    let accepted = reply.map_err(|e| anyhow!("worker {index}: join refused: {e}"))?;
    let identity = NodeIdentity::from_parts(&key, accepted.cert_pem, accepted.ca_cert_pem)
        .context("the cluster sent an unusable certificate")?;
    let runtime = Arc::new(FakeRuntime::new());
    runtime.add_image(IMAGE);
    runtime.set_start_delay(shared.start_delay);
    Ok(Arc::new(Agent {
        id: accepted.node_id,
        cluster_id: accepted.cluster_id,
        dialer: Dialer::new(&identity)?,
        runtime,
        killed: watch::channel(false).0,
        links: Mutex::new(BTreeMap::new()),
        leader: watch::channel(None).0,
        managers: Mutex::new(accepted.managers),
        desired: Mutex::new(BTreeMap::new()),
        wake: Notify::new(),
        endpoint_table: Mutex::new(None),
    }))
}

/// A distinct address per worker (and join attempt), from 127.2.0.1 on;
/// nothing dials it.
fn advertised_addr(index: usize) -> String {
    let (high, low) = (index / 250, index % 250 + 1);
    format!("127.{}.{}.{low}:4500", 2 + high / 250, high % 250)
}

/// `d` plus up to half of it again, so thousands of workers do not retry
/// in step.
fn jitter(d: Duration) -> Duration {
    d + d.mul_f64(rand::random::<f64>() / 2.0)
}

fn start_agent(shared: Arc<Shared>, agent: Arc<Agent>) {
    tokio::spawn(heartbeats(shared.clone(), agent.clone()));
    tokio::spawn(follow_feed(shared.clone(), agent.clone(), Feed::Tasks));
    if shared.endpoint_feed {
        tokio::spawn(follow_feed(shared.clone(), agent.clone(), Feed::Endpoints));
    }
    tokio::spawn(work(shared, agent));
}

/// As `heartbeat::run` on a worker: beat to the leader at the period its
/// last reply named (the configured interval until then, and after a
/// failed beat); with no leader known, ask each manager in turn; learn the
/// leader and the managers from the replies.
async fn heartbeats(shared: Arc<Shared>, agent: Arc<Agent>) {
    let base = shared.heartbeat_interval;
    let mut period = base;
    // Spread the workers' first beats over the interval.
    tokio::time::sleep(base.mul_f64(rand::random::<f64>())).await;
    let mut next_manager = 0usize;
    // Unanswered beats in a row (see `heartbeat::keeps_leader`), the
    // period the last leader named and the beats in a row that found no
    // leader (see `heartbeat::leaderless_period`).
    let mut unanswered = 0u32;
    let mut named = base;
    let mut misses = 0u32;
    loop {
        if agent.is_killed() {
            return;
        }
        let known = *agent.leader.borrow();
        let target = match known {
            Some(leader) => Some(leader),
            None => {
                let managers = agent.managers.lock().unwrap().clone();
                if managers.is_empty() {
                    None
                } else {
                    next_manager = (next_manager + 1) % managers.len();
                    let (id, addr) = &managers[next_manager];
                    addr.parse::<SocketAddr>().ok().map(|sock| (*id, sock))
                }
            }
        };
        if let Some(target) = target {
            period = match beat(&shared, &agent, target, period, &mut unanswered).await {
                Some(next) => {
                    named = next;
                    misses = 0;
                    next
                }
                None => {
                    misses += 1;
                    leaderless_period(base, named, misses - 1, rand::random())
                }
            };
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = agent.until_killed() => return,
        }
    }
}

/// One beat to `target`; returns the period to wait before the next, or
/// `None` when it found no leader.
async fn beat(
    shared: &Shared,
    agent: &Agent,
    target: (NodeId, SocketAddr),
    period: Duration,
    unanswered: &mut u32,
) -> Option<Duration> {
    let beat = PeerRequest::Heartbeat(Heartbeat {
        node_id: agent.id,
        version: VERSION.to_string(),
        engine_error: None,
        // Simulated workers accept no connections, so they need no list
        // of removed nodes (and none are removed in a run).
        revoked_known: 0,
    });
    // As on a real node: the dial has its own timeout (a handshake cut
    // short by the beat's would never complete under load, and every
    // beat would start another); a beat not answered within one period,
    // or on a connection silent for `BEAT_SILENCE`, is unanswered, and
    // only a slow leader that is still there is kept for one more period.
    let conn = match agent.link(shared, target).await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(node = agent.id, error = %e, "heartbeat failed");
            agent.set_leader(None);
            *unanswered = 0;
            return None;
        }
    };
    let reply = match crate::heartbeat::exchange(&conn, &beat, period).await {
        Ok(reply) => Ok(reply),
        Err(BeatError::Unanswered(how)) => {
            if crate::heartbeat::keeps_leader(how, *unanswered) {
                *unanswered += 1;
                return Some(period);
            }
            agent.set_leader(None);
            agent.forget_link(target.0);
            *unanswered = 0;
            return None;
        }
        Err(BeatError::Net(e)) => Err(e),
    };
    *unanswered = 0;
    match reply {
        Ok(PeerResponse::Heartbeat(Ok(reply))) => {
            let leader = reply
                .managers
                .iter()
                .find(|m| m.0 == reply.leader_id)
                .and_then(|m| m.1.parse().ok())
                .map(|sock| (reply.leader_id, sock));
            agent.set_leader(leader);
            if !reply.managers.is_empty() {
                *agent.managers.lock().unwrap() = reply.managers;
            }
            Some(crate::heartbeat::named_period(reply.period_ms))
        }
        Ok(_) => {
            agent.set_leader(None);
            None
        }
        Err(e) => {
            tracing::debug!(node = agent.id, error = %e, "heartbeat failed");
            agent.set_leader(None);
            if e.is_retryable() {
                agent.forget_link(target.0);
            }
            None
        }
    }
}

/// The two streams a node keeps open to the leader.
#[derive(Clone, Copy)]
enum Feed {
    /// Its tasks (`WatchTasks`), as the real agent's `follow_feed`.
    Tasks,
    /// The endpoint table (`WatchEndpoints`), as `mesh::feed::follow`.
    Endpoints,
}

/// Keeps `feed` open to whichever manager leads.
async fn follow_feed(shared: Arc<Shared>, agent: Arc<Agent>, feed: Feed) {
    let mut backoff = Duration::from_millis(50);
    let mut leader_rx = agent.leader.subscribe();
    loop {
        let target = tokio::select! {
            l = leader_rx.wait_for(|l| l.is_some()) => match l {
                Ok(l) => l.expect("waited for a leader"),
                Err(_) => return,
            },
            () = agent.until_killed() => return,
        };
        let mut moved = agent.leader.subscribe();
        let read = async {
            match feed {
                Feed::Tasks => read_feed(&shared, &agent, target).await,
                Feed::Endpoints => count_endpoint_feed(&shared, &agent, target).await,
            }
        };
        let outcome = tokio::select! {
            r = read => r,
            _ = moved.wait_for(|l| *l != Some(target)) => Ok(()),
            () = agent.until_killed() => return,
        };
        match outcome {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => {
                tracing::debug!(node = agent.id, error = %e, "task stream ended");
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Reads the endpoint stream, decoding each frame as a real node does and
/// counting its bytes. One process holds all the workers, so it does not
/// keep 5,000 copies of the table, only the name of the last whole one,
/// which it gives when it opens the stream again (as a real node does);
/// the leader's side, what the simulation is about, is the real one.
async fn count_endpoint_feed(
    shared: &Shared,
    agent: &Agent,
    target: (NodeId, SocketAddr),
) -> Result<(), String> {
    let have = *agent.endpoint_table.lock().unwrap();
    // A worker's containers ask DNS nothing, so it asks for no sections.
    let request = PeerRequest::WatchEndpoints {
        node_id: agent.id,
        have,
        interest: Interest::default(),
        fresh: Vec::new(),
    };
    let mut recv = open_watch(shared, agent, target, &request).await?;
    loop {
        let frame = tokio::time::timeout(
            FEED_SILENCE,
            codec::read_frame(&mut recv, codec::MAX_FRAME_BYTES),
        )
        .await
        .map_err(|_| format!("no endpoint frame for {FEED_SILENCE:?}"))?;
        let payload = match frame {
            Ok(payload) => payload,
            Err(codec::CodecError::Closed) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        shared
            .endpoint_feed_bytes
            .fetch_add(payload.len() as u64 + 4, Ordering::Relaxed);
        let frame = codec::decode::<EndpointFeed>(&payload).map_err(|e| e.to_string())?;
        if let EndpointFeed::Complete(version) = frame {
            *agent.endpoint_table.lock().unwrap() = Some(version);
        }
    }
}

/// Opens a long-lived stream to `target` with `request` (a `Watch…`)
/// and returns its receiving side.
async fn open_watch(
    shared: &Shared,
    agent: &Agent,
    target: (NodeId, SocketAddr),
    request: &PeerRequest,
) -> Result<shoal_net::RecvStream, String> {
    let conn = agent
        .link(shared, target)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    codec::send_msg(&mut send, request)
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    Ok(recv)
}

async fn read_feed(
    shared: &Shared,
    agent: &Agent,
    target: (NodeId, SocketAddr),
) -> Result<(), String> {
    let request = PeerRequest::WatchTasks { node_id: agent.id };
    let mut recv = open_watch(shared, agent, target, &request).await?;
    loop {
        let frame = tokio::time::timeout(
            FEED_SILENCE,
            codec::recv_msg::<TaskFeed, _>(&mut recv, codec::MAX_FRAME_BYTES),
        )
        .await
        .map_err(|_| format!("no frame for {FEED_SILENCE:?}"))?
        .map_err(|e| e.to_string())?;
        {
            let mut tasks = agent.desired.lock().unwrap();
            match frame {
                TaskFeed::Full { tasks: all } => {
                    *tasks = all.into_iter().map(|t| (t.id.clone(), t)).collect();
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
        agent.wake.notify_one();
    }
}

/// As the real agent loop (`agent::driver::run`): a pass of the executor
/// over the streamed tasks on every change and every resync interval, then
/// the state changes reported to the leader in one batch.
async fn work(shared: Arc<Shared>, agent: Arc<Agent>) {
    let runtime: Arc<dyn ContainerRuntime> = agent.runtime.clone();
    let scope = Scope::new(agent.cluster_id.clone(), agent.id.to_string());
    let executor = Executor::new(runtime, scope, ExecutorConfig::default());
    // No pass before the first frame: an empty set would stop everything.
    tokio::select! {
        () = agent.wake.notified() => {}
        () = agent.until_killed() => return,
    }
    let mut reported: BTreeMap<TaskId, TaskStatus> = BTreeMap::new();
    let mut unsent: Vec<TaskStatusUpdate> = Vec::new();
    loop {
        let tasks: Vec<Task> = agent.desired.lock().unwrap().values().cloned().collect();
        reported.retain(|id, _| tasks.iter().any(|t| &t.id == id));
        let list: Vec<DesiredTask> = tasks
            .iter()
            .map(|t| desired_task(t, reported.get(&t.id).map(|r| r.state)))
            .collect();
        match executor.reconcile(&list).await {
            Ok(outcome) => {
                for status in outcome.statuses {
                    if reported.get(&status.task_id) == Some(&status) {
                        continue;
                    }
                    unsent.push(update_of(&status));
                    reported.insert(status.task_id.clone(), status);
                }
            }
            Err(e) => tracing::warn!(node = agent.id, error = %e, "simulated engine failed"),
        }
        if !unsent.is_empty() {
            send_reports(&shared, &agent, &mut unsent).await;
        }
        tokio::select! {
            () = agent.wake.notified() => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            () = tokio::time::sleep(RESYNC_EVERY) => {}
            () = agent.until_killed() => return,
        }
    }
}

async fn send_reports(shared: &Shared, agent: &Agent, unsent: &mut Vec<TaskStatusUpdate>) {
    let known = *agent.leader.borrow();
    let Some(leader) = known else {
        return;
    };
    let report = PeerRequest::ReportTasks(TaskReport {
        node_id: agent.id,
        updates: unsent.clone(),
    });
    let exchange = async {
        let conn = agent.link(shared, leader).await?;
        transport::call::<_, PeerResponse>(&conn, &report, REQUEST_TIMEOUT).await
    };
    // A leader that dies leaves its connection silent until the QUIC idle
    // timeout: give up as soon as another leader (or none) is known; the
    // new leader's full task set wakes the next pass, which resends.
    let mut moved = agent.leader.subscribe();
    let reply = tokio::select! {
        r = exchange => r,
        _ = moved.wait_for(|l| *l != Some(leader)) => return,
    };
    match reply {
        Ok(PeerResponse::ReportTasks(Ok(()))) => unsent.clear(),
        Ok(other) => {
            tracing::debug!(node = agent.id, ?other, "task report refused; will resend")
        }
        Err(e) => tracing::debug!(node = agent.id, error = %e, "task report not delivered"),
    }
    if unsent.len() > MAX_UNSENT_REPORTS {
        let excess = unsent.len() - MAX_UNSENT_REPORTS;
        unsent.drain(..excess);
    }
}

/// The three manager processes.
struct Managers {
    names: Vec<String>,
    dirs: Vec<PathBuf>,
    ips: Vec<String>,
    port: u16,
    heartbeat_timeout: Duration,
    election_timeout: Duration,
    log_level: String,
    children: Vec<Option<Child>>,
    /// Node id of each manager.
    ids: Vec<NodeId>,
    /// The manager that led at the end, whose store is reported.
    last_leader: Option<usize>,
    /// Highest resident set size seen per manager, in MB.
    peak_rss: Mutex<Vec<f64>>,
}

impl Managers {
    async fn start(work: &Path, port: u16, args: &SimulateArgs) -> Result<Managers> {
        let mut m = Managers {
            names: (1..=3).map(|i| format!("m{i}")).collect(),
            dirs: (1..=3).map(|i| work.join(format!("m{i}"))).collect(),
            ips: (1..=3).map(|i| format!("127.0.0.{i}")).collect(),
            port,
            heartbeat_timeout: args.heartbeat_timeout,
            election_timeout: args.election_timeout,
            log_level: std::env::var("SHOAL_LOG").unwrap_or_else(|_| "warn".into()),
            children: vec![None, None, None],
            ids: vec![0; 3],
            last_leader: None,
            peak_rss: Mutex::new(vec![0.0; 3]),
        };
        say(format!(
            "starting 3 managers on 127.0.0.1-3:{port}, data in {}",
            work.display()
        ));
        m.spawn(0, &["init".into()])?;
        let first = m.api_of(0);
        wait_until(
            Duration::from_secs(30),
            "the first manager to lead",
            || async { Ok(first.status().await?.leader_id.map(|_| ())) },
        )
        .await?;
        let token = first.token("manager").await?.token;
        for i in 1..3 {
            m.spawn(
                i,
                &[
                    "join".into(),
                    m.addr(0).to_string(),
                    "--token".into(),
                    token.clone(),
                ],
            )?;
        }
        wait_until(Duration::from_secs(60), "three voting managers", || async {
            let status = first.status().await?;
            let voters = status.members.iter().filter(|v| v.voter).count();
            Ok((voters == 3 && status.quorum.healthy).then_some(()))
        })
        .await?;
        let nodes = first.nodes().await?;
        for i in 0..3 {
            m.ids[i] = nodes
                .iter()
                .find(|n| n.name == m.names[i])
                .map(|n| n.id)
                .ok_or_else(|| anyhow!("manager {} is not in the node list", m.names[i]))?;
            let drain = NodeUpdate {
                availability: Some("drain".into()),
                ..Default::default()
            };
            first.update_node(&m.names[i], &drain).await?;
        }
        Ok(m)
    }

    fn count(&self) -> usize {
        self.names.len()
    }

    fn addr(&self, i: usize) -> SocketAddr {
        format!("{}:{}", self.ips[i], self.port)
            .parse()
            .expect("a socket address")
    }

    fn dir_of(&self, i: usize) -> PathBuf {
        self.dirs[i].clone()
    }

    fn api_of(&self, i: usize) -> ApiClient {
        ApiClient::new(self.dirs[i].join("shoal.sock")).with_timeout(API_TIMEOUT)
    }

    /// A control client of a manager that runs.
    fn api(&mut self) -> Result<ApiClient> {
        (0..self.count())
            .find(|&i| self.is_running(i))
            .map(|i| self.api_of(i))
            .ok_or_else(|| anyhow!("no manager process is running"))
    }

    fn is_running(&mut self, i: usize) -> bool {
        match &mut self.children[i] {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts manager `i` with a daemon subcommand (`init`, `join ...` or `run`).
    fn spawn(&mut self, i: usize, command: &[String]) -> Result<()> {
        std::fs::create_dir_all(&self.dirs[i])?;
        let log_path = self.dirs[i].with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let exe = std::env::current_exe().context("cannot find this program")?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("--data-dir")
            .arg(&self.dirs[i])
            .arg("--log-level")
            .arg(&self.log_level)
            .args(command);
        // A restarted manager (`run`) keeps the timings too.
        let heartbeat = format!("{}ms", self.heartbeat_timeout.as_millis());
        let election = format!("{}ms", self.election_timeout.as_millis());
        cmd.args(["--heartbeat-timeout", &heartbeat]).args([
            "--election-timeout",
            &election,
            "--dns-addr",
            "none",
        ]);
        if command[0] != "run" {
            let listen = self.addr(i).to_string();
            cmd.args(["--listen", &listen, "--name", &self.names[i]]);
        }
        // The managers' own agents use the in-memory engine, with no image:
        // they are drained and run nothing.
        cmd.env("SHOAL_FAKE_RUNTIME", "")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start manager {}", self.names[i]))?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// Which manager leads, as a running one sees it.
    async fn leader_index(&self, api: &ApiClient) -> Result<usize> {
        let status = api.status().await?;
        let leader = status
            .leader_id
            .ok_or_else(|| anyhow!("no leader is known"))?;
        self.ids
            .iter()
            .position(|id| *id == leader)
            .ok_or_else(|| anyhow!("the leader {leader} is not one of the managers"))
    }

    /// SIGKILLs the leader's process; returns its index.
    async fn kill_leader(&mut self, api: &ApiClient) -> Result<usize> {
        let i = self.leader_index(api).await?;
        if let Some(mut child) = self.children[i].take() {
            child.kill().context("cannot kill the leader")?;
            let _ = child.wait();
        }
        Ok(i)
    }

    fn restart(&mut self, i: usize) -> Result<()> {
        self.spawn(i, &["run".into()])
    }

    fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().map(Child::id)
    }

    /// The leader's CPU seconds so far (0 when unknown).
    async fn leader_cpu(&self, api: &ApiClient) -> (Option<u32>, f64) {
        match self.leader_index(api).await {
            Ok(i) => {
                let pid = self.pid(i);
                (pid, pid.and_then(cpu_seconds).unwrap_or(0.0))
            }
            Err(_) => (None, 0.0),
        }
    }

    /// CPU seconds of the current leader since `mark` (or since it started,
    /// when the leader is another process now).
    async fn leader_cpu_since(&self, api: &ApiClient, mark: (Option<u32>, f64)) -> f64 {
        let (pid, now) = self.leader_cpu(api).await;
        if pid.is_some() && pid == mark.0 {
            now - mark.1
        } else {
            now
        }
    }

    fn peak_rss_mb(&self, i: usize) -> f64 {
        self.pid(i)
            .and_then(|pid| status_kb(pid, "VmHWM:"))
            .map_or(self.peak_rss.lock().unwrap()[i], |kb| kb as f64 / 1024.0)
    }

    /// SIGTERM to every manager (their stores close cleanly), SIGKILL after 10 s.
    fn stop_all(&mut self) {
        for child in self.children.iter().flatten() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for child in self.children.iter_mut().flatten() {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for slot in &mut self.children {
            *slot = None;
        }
    }
}

impl Drop for Managers {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The highest resident set size of the leader seen while polling, at
/// most once a second.
#[derive(Default)]
struct RssPeak {
    /// (highest MB, when last sampled)
    seen: Mutex<(f64, Option<Instant>)>,
}

impl RssPeak {
    fn max_mb(&self) -> f64 {
        self.seen.lock().unwrap().0
    }

    async fn sample(&self, cluster: &Managers, api: &ApiClient) {
        {
            let mut seen = self.seen.lock().unwrap();
            if seen.1.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return;
            }
            seen.1 = Some(Instant::now());
        }
        let Ok(i) = cluster.leader_index(api).await else {
            return;
        };
        if let Some(kb) = cluster.pid(i).and_then(|pid| status_kb(pid, "VmRSS:")) {
            let mb = kb as f64 / 1024.0;
            let mut seen = self.seen.lock().unwrap();
            seen.0 = seen.0.max(mb);
            let mut peaks = cluster.peak_rss.lock().unwrap();
            peaks[i] = peaks[i].max(mb);
        }
    }
}

/// User plus system CPU seconds of a process, from `/proc/<pid>/stat`
/// (in clock ticks of 1/100 s, as Linux reports them).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold
    // spaces): state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// A `kB` line of `/proc/<pid>/status`, e.g. `VmRSS:`.
fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Sizes of the final leader's store, read once its process has stopped:
/// the state is the latest snapshot's with the log after it applied, and
/// a snapshot of it is built (into that store, which is the run's own).
async fn store_figures(dir: &Path, report: &mut Report) -> Result<()> {
    use openraft::storage::{RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
    let path = dir.join("raft.redb");
    let bytes = std::fs::metadata(&path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let (mut log, mut sm) = shoal_raft::store::open(&path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let state = log
        .get_log_state()
        .await
        .map_err(|e| anyhow!("cannot read the log of {}: {e}", path.display()))?;
    let last = state.last_log_id.map_or(0, |id| id.index);
    let purged = state.last_purged_log_id.map_or(0, |id| id.index);
    let applied = sm
        .applied_state()
        .await
        .map_err(|e| anyhow!("cannot read the state of {}: {e}", path.display()))?
        .0
        .map_or(0, |id| id.index);
    let entries = log
        .try_get_log_entries(applied + 1..last + 1)
        .await
        .map_err(|e| anyhow!("cannot read the log of {}: {e}", path.display()))?;
    sm.apply(entries)
        .await
        .map_err(|e| anyhow!("cannot apply the log of {}: {e}", path.display()))?;
    report.raft_file_mb = round(bytes as f64 / 1e6);
    let started = Instant::now();
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .map_err(|e| anyhow!("cannot build a snapshot in {}: {e}", path.display()))?;
    report.snapshot_build_s = round(started.elapsed().as_secs_f64());
    report.snapshot_mb = round(snapshot.snapshot.get_ref().len() as f64 / 1e6);
    let state_bytes = sm
        .state()
        .read(|s| shoal_raft::codec::encode(s).map(|b| b.len()))
        .map_err(|e| anyhow!("cannot encode the state: {e}"))?;
    report.state_mb = round(state_bytes as f64 / 1e6);
    report.log_entries_kept = last - purged;
    report.last_log_index = last;
    Ok(())
}

/// A UDP port free on 127.0.0.1, .2 and .3.
fn free_port() -> Result<u16> {
    for _ in 0..100 {
        let probe = UdpSocket::bind("127.0.0.1:0")?;
        let port = probe.local_addr()?.port();
        if (2..=3).all(|i| UdpSocket::bind(format!("127.0.0.{i}:{port}")).is_ok()) {
            return Ok(port);
        }
    }
    bail!("no UDP port is free on 127.0.0.1-3; choose one with --port")
}

/// The directory for the managers' data and logs; a temporary one is
/// removed when dropped.
struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl WorkDir {
    fn new(given: Option<PathBuf>) -> Result<WorkDir> {
        let (path, remove) = match given {
            Some(p) => (p, false),
            None => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let p = std::env::temp_dir()
                    .join(format!("shoal-simulate-{}-{nanos}", std::process::id()));
                (p, true)
            }
        };
        if path.join("m1").exists() {
            bail!(
                "{} already holds a simulation (m1/); give an empty or new --work-dir",
                path.display()
            );
        }
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(WorkDir { path, remove })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_spread_evenly_and_add_up() {
        assert_eq!(replica_counts(3, 10), vec![4, 3, 3]);
        assert_eq!(replica_counts(100, 100_000), vec![1_000; 100]);
        let counts = replica_counts(7, 2_000);
        assert_eq!(counts.iter().sum::<u64>(), 2_000);
        assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
    }

    #[test]
    fn every_worker_advertises_its_own_address() {
        let addrs: std::collections::BTreeSet<String> = (0..80_000).map(advertised_addr).collect();
        assert_eq!(addrs.len(), 80_000);
        assert_eq!(advertised_addr(62_500), "127.3.0.1:4500");
        assert_eq!(advertised_addr(0), "127.2.0.1:4500");
        assert_eq!(advertised_addr(249), "127.2.0.250:4500");
        assert_eq!(advertised_addr(250), "127.2.1.1:4500");
    }

    #[test]
    fn cpu_and_memory_of_this_process_are_readable() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some());
        assert!(status_kb(me, "VmRSS:").is_some_and(|kb| kb > 0));
    }
}
