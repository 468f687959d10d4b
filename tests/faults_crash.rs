//! Crash faults under a concurrent workload, checked by a history.
//!
//! Four real `shoal` daemons (three managers, one worker) run tasks in the
//! in-memory engine (`SHOAL_FAKE_RUNTIME`, no Docker). Client threads run the
//! `shoal` CLI through different nodes: deploys (a unique env value per
//! write), scales, node label changes, and reads of each; every operation is
//! recorded with its invocation, completion and outcome. Meanwhile one fault
//! at a time: SIGKILL and restart of the leader or another node, SIGSTOP and
//! SIGCONT of the leader or another node for longer than the election
//! timeout, a kill of the leader during a rolling update, and a kill of a
//! follower while the leader sends it a snapshot (snapshots every
//! [`SNAPSHOT_EVERY`] entries through `SHOAL_SNAPSHOT_EVERY`). After healing,
//! the history is checked (`common/history.rs`: every acknowledged write in
//! the final state, reads linearizable per register, no write applied twice),
//! and the tasks: every replicated service has exactly `replicas` running
//! tasks, none on a down or drained node, never two running in one slot.
//!
//! CI size: `cargo test --test faults_crash -- --test-threads=1` (a few
//! minutes in a debug build). The soak, `scripts/soak.sh [MINUTES]`, runs the
//! ignored `soak` test for longer and writes a report.

mod common;
#[path = "common/history.rs"]
mod history;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::netns::{self, NsCluster};
use common::{wait_for, Cluster, Daemon};
use history::{Action, CheckReport, Op, Outcome, Recorder};
use serde_json::Value;

const NAMES: [&str; 4] = ["node-a", "node-b", "node-c", "node-d"];
const IPS: [&str; 4] = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"];
/// node-a..node-c are managers; node-d is a worker.
const MANAGERS: usize = 3;
/// The index of the one worker (the others are managers).
const WORKER: usize = 3;
const IMAGES: &str = "fake:1,fake:2";
/// Small, so that a follower down for a few hundred writes needs a snapshot.
const SNAPSHOT_EVERY: u64 = 100;
/// Services written by deploys (a unique env value each).
const DEPLOYED: [&str; 2] = ["dep-0", "dep-1"];
/// Services written by scales.
const SCALED: [&str; 2] = ["scl-0", "scl-1"];
/// The service a rolling update runs on when the leader is killed.
const ROLLED: &str = "roll-0";
/// Node label keys the clients write.
const LABEL_KEYS: [&str; 2] = ["k0", "k1"];
/// A client command gives up (outcome unknown) after this.
const OP_TIMEOUT: Duration = Duration::from_secs(20);
/// A recovery slower than this is listed in the report with the errors of
/// its failed probes.
const SLOW_RECOVERY: Duration = Duration::from_secs(3);
/// The client id of the fault injector's probe writes.
const PROBE: usize = 99;

const UP: u8 = 0;
const KILLED: u8 = 1;
const PAUSED: u8 = 2;

/// xorshift64*: choices reproducible from the seed (timing is not).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

/// A finished CLI run: exit code (`None`: killed at the timeout).
struct Cli {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Cli {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Ok; Fail only when the request cannot have reached a daemon (no
    /// socket, or nobody accepting on it); anything else may have applied.
    fn outcome(&self) -> Outcome {
        if self.ok() {
            Outcome::Ok
        } else if self.code.is_some()
            && (self.stderr.contains("no such socket")
                || self
                    .stderr
                    .contains("connection refused (the socket file exists"))
        {
            Outcome::Fail
        } else {
            Outcome::Unknown
        }
    }

    fn json(&self) -> Option<Value> {
        self.ok()
            .then(|| serde_json::from_str(&self.stdout).ok())
            .flatten()
    }
}

fn run_cli(dir: &Path, args: &[&str], timeout: Duration) -> Cli {
    let mut child = Command::new(common::BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shoal client");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let code = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status.code().unwrap_or(-1)),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    Cli {
        code,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn daemon_env() -> Vec<(&'static str, String)> {
    vec![
        ("SHOAL_FAKE_RUNTIME", IMAGES.to_string()),
        ("SHOAL_SNAPSHOT_EVERY", SNAPSHOT_EVERY.to_string()),
    ]
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Where the four daemons run: on loopback addresses, or each in its own
/// network namespace, where links between them can be cut and slowed.
enum Site {
    Loopback(Cluster),
    Namespaces(NsCluster),
}

impl Site {
    fn nodes(&self) -> &[Daemon] {
        match self {
            Site::Loopback(c) => &c.nodes,
            Site::Namespaces(c) => &c.nodes,
        }
    }

    fn node_mut(&mut self, i: usize) -> &mut Daemon {
        match self {
            Site::Loopback(c) => &mut c.nodes[i],
            Site::Namespaces(c) => &mut c.nodes[i],
        }
    }

    /// `shoal run` of a killed node, where it ran before.
    fn start(&mut self, i: usize, env: &[(&str, &str)]) {
        match self {
            Site::Loopback(c) => c.nodes[i].restart_with_env(env),
            Site::Namespaces(c) => c.restart(i),
        }
    }

    fn net(&self) -> Option<&netns::Net> {
        match self {
            Site::Loopback(_) => None,
            Site::Namespaces(c) => Some(&c.net),
        }
    }
}

fn four_nodes() -> Site {
    let env = daemon_env();
    let env = env_refs(&env);
    let mut c = Cluster::new();
    c.init_with_env(NAMES[0], IPS[0], &env);
    for i in 1..4 {
        let role = if i < MANAGERS { "manager" } else { "worker" };
        c.join_with_env(NAMES[i], IPS[i], role, &env);
    }
    Site::Loopback(c)
}

/// The same four nodes, each in its own network namespace.
fn four_nodes_in_namespaces() -> Site {
    let net = netns::Net::create(4).expect("create the hosts");
    let env = daemon_env();
    let mut c = NsCluster::new(net, &env_refs(&env)).with_names(&NAMES);
    c.init();
    for i in 1..4 {
        c.join(if i < MANAGERS { "manager" } else { "worker" });
    }
    Site::Namespaces(c)
}

/// What every thread shares: the history, node states, the value counter.
struct Shared {
    recorder: Recorder,
    dirs: Vec<PathBuf>,
    state: Vec<AtomicU8>,
    next_value: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn unique(&self, client: usize) -> String {
        format!(
            "c{client}n{}",
            self.next_value.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A node to send a client request through: any but a paused one (a
    /// killed one answers at once, which the history records as failed).
    fn pick(&self, rng: &mut Rng) -> usize {
        let usable: Vec<usize> = (0..self.dirs.len())
            .filter(|i| self.state[*i].load(Ordering::Relaxed) != PAUSED)
            .collect();
        usable[rng.below(usable.len())]
    }

    /// A node that is up, for the injector's own requests.
    fn up(&self, rng: &mut Rng, except: Option<usize>) -> usize {
        let up: Vec<usize> = (0..self.dirs.len())
            .filter(|i| Some(*i) != except && self.state[*i].load(Ordering::Relaxed) == UP)
            .collect();
        up[rng.below(up.len())]
    }

    /// Runs a write through `node` and records it on each register.
    fn write(
        &self,
        client: usize,
        node: usize,
        args: &[&str],
        registers: &[(String, String)],
    ) -> Cli {
        let invoke = self.recorder.now();
        let cli = run_cli(&self.dirs[node], args, OP_TIMEOUT);
        let complete = self.recorder.now();
        for (register, value) in registers {
            self.recorder.record(Op {
                client,
                register: register.clone(),
                action: Action::Write(value.clone()),
                invoke,
                complete,
                outcome: cli.outcome(),
            });
        }
        cli
    }

    /// Runs a read through `node`; `extract` maps its JSON to register
    /// values. A failed read is recorded without a value.
    fn read(
        &self,
        client: usize,
        node: usize,
        args: &[&str],
        extract: impl Fn(&Value) -> Vec<(String, Option<String>)>,
    ) -> Result<(), String> {
        let invoke = self.recorder.now();
        let cli = run_cli(&self.dirs[node], args, OP_TIMEOUT);
        let complete = self.recorder.now();
        let Some(json) = cli.json() else {
            return Err(format!("`shoal {}`: {}", args.join(" "), cli.stderr.trim()));
        };
        for (register, value) in extract(&json) {
            self.recorder.record(Op {
                client,
                register,
                action: Action::Read(value),
                invoke,
                complete,
                outcome: Outcome::Ok,
            });
        }
        Ok(())
    }
}

fn env_register(service: &str) -> String {
    format!("service {service} env")
}

fn replicas_register(service: &str) -> String {
    format!("service {service} replicas")
}

fn label_register(node: &str, key: &str) -> String {
    format!("node {node} label {key}")
}

fn read_service(shared: &Shared, client: usize, node: usize, service: &str) -> Result<(), String> {
    let args = ["service", "inspect", service, "--json"];
    shared.read(client, node, &args, |v| {
        let spec = &v["spec"];
        let env = spec["env"]
            .get(env_key(service))
            .and_then(Value::as_str)
            .map(str::to_string);
        let replicas = spec["replicas"].as_u64().map(|n| n.to_string());
        if SCALED.contains(&service) {
            vec![(replicas_register(service), replicas)]
        } else {
            vec![(env_register(service), env)]
        }
    })
}

fn read_node(shared: &Shared, client: usize, node: usize, target: &str) -> Result<(), String> {
    let args = ["node", "inspect", target, "--json"];
    shared.read(client, node, &args, |v| {
        LABEL_KEYS
            .iter()
            .chain(["probe"].iter())
            .map(|k| {
                let value = v["labels"].get(*k).and_then(Value::as_str);
                (label_register(target, k), value.map(str::to_string))
            })
            .collect()
    })
}

/// The env variable a service's register lives in.
fn env_key(service: &str) -> &'static str {
    if service == ROLLED {
        "R"
    } else {
        "V"
    }
}

fn deploy_args(service: &str, env: &str) -> Vec<String> {
    [
        "deploy",
        service,
        "--image",
        "fake:1",
        "--replicas",
        "2",
        "--env",
        env,
        "--update-monitor",
        "500ms",
        "--update-failure-action",
        "continue",
        "--detach",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// One client: random operations through random nodes until told to stop.
fn client(shared: Arc<Shared>, id: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    while !shared.stop.load(Ordering::Relaxed) {
        let node = shared.pick(&mut rng);
        match rng.below(20) {
            0..=2 => {
                let service = DEPLOYED[rng.below(DEPLOYED.len())];
                let value = shared.unique(id);
                let args = deploy_args(service, &format!("V={value}"));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                shared.write(id, node, &args, &[(env_register(service), value)]);
            }
            3..=5 => {
                let service = SCALED[rng.below(SCALED.len())];
                let n = 1 + rng.below(4);
                let target = format!("{service}={n}");
                let args = ["service", "scale", &target, "--detach"];
                shared.write(
                    id,
                    node,
                    &args,
                    &[(replicas_register(service), n.to_string())],
                );
            }
            6..=10 => {
                let target = NAMES[rng.below(NAMES.len())];
                let key = LABEL_KEYS[rng.below(LABEL_KEYS.len())];
                let value = shared.unique(id);
                let label = format!("{key}={value}");
                let args = ["node", "update", target, "--label-add", &label];
                shared.write(id, node, &args, &[(label_register(target, key), value)]);
            }
            11..=15 => {
                let all: Vec<&str> = DEPLOYED.iter().chain(SCALED.iter()).copied().collect();
                let service = all[rng.below(all.len())];
                let _ = read_service(&shared, id, node, service);
            }
            _ => {
                let target = NAMES[rng.below(NAMES.len())];
                let _ = read_node(&shared, id, node, target);
            }
        }
        thread::sleep(rng.millis(10, 80));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillLeader,
    KillOther,
    PauseLeader,
    PauseOther,
    KillLeaderDuringUpdate,
    KillDuringSnapshotInstall,
    /// The leader cut off from every other node (both ways).
    IsolateLeader,
    /// The leader and the worker on one side, the two other managers on
    /// the other: the majority partition with the leader on the minority.
    PartitionLeaderWithWorker,
    /// Both directions between two random nodes cut.
    CutLink,
    /// One direction between the leader and a follower cut, either way.
    OneWayLeaderLink,
    /// 200 ms delay and 5 % loss both ways on a link of the leader.
    SlowLossyLink,
    /// A link of the leader cut and healed every few hundred ms.
    FlappingLink,
}

const FAULTS: [Fault; 6] = [
    Fault::KillLeader,
    Fault::KillOther,
    Fault::PauseLeader,
    Fault::PauseOther,
    Fault::KillLeaderDuringUpdate,
    Fault::KillDuringSnapshotInstall,
];

/// Faults that need the nodes in network namespaces.
const NETWORK_FAULTS: [Fault; 6] = [
    Fault::IsolateLeader,
    Fault::PartitionLeaderWithWorker,
    Fault::CutLink,
    Fault::OneWayLeaderLink,
    Fault::SlowLossyLink,
    Fault::FlappingLink,
];

/// The figures of one run.
#[derive(Default)]
struct Figures {
    faults: BTreeMap<Fault, usize>,
    /// From a fault's start to the first acknowledged write invoked after it.
    recovery: BTreeMap<Fault, Vec<Duration>>,
    /// From a killed node's restart to its being ready and answering.
    rejoin: Vec<Duration>,
    /// Faults after which the cluster did not recover in time.
    stuck: Vec<String>,
    /// Recoveries slower than [`SLOW_RECOVERY`], with their failed probes.
    slow: Vec<String>,
    snapshot_installs: usize,
}

struct Chaos {
    c: Site,
    /// The kinds of fault this run injects.
    kinds: Vec<Fault>,
    shared: Arc<Shared>,
    rng: Rng,
    figures: Figures,
    env: Vec<(&'static str, String)>,
}

impl Chaos {
    fn new(seed: u64) -> Chaos {
        Chaos::on(four_nodes(), seed)
    }

    /// Crash faults and network faults, the nodes in network namespaces.
    fn with_network(seed: u64) -> Chaos {
        let mut chaos = Chaos::on(four_nodes_in_namespaces(), seed);
        chaos.kinds.extend(NETWORK_FAULTS);
        chaos
    }

    fn on(c: Site, seed: u64) -> Chaos {
        let shared = Arc::new(Shared {
            recorder: Recorder::new(),
            dirs: c.nodes().iter().map(|d| d.dir.clone()).collect(),
            state: (0..4).map(|_| AtomicU8::new(UP)).collect(),
            next_value: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        Chaos {
            c,
            kinds: FAULTS.to_vec(),
            shared,
            rng: Rng::new(seed ^ 0x5eed),
            figures: Figures::default(),
            env: daemon_env(),
        }
    }

    /// The services every client works on, created (and recorded) first.
    fn setup(&mut self) {
        for service in DEPLOYED {
            let value = self.shared.unique(PROBE);
            let args = deploy_args(service, &format!("V={value}"));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.must_write(&args, &[(env_register(service), value)]);
        }
        for service in SCALED {
            let args = deploy_args(service, "V=0");
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.must_write(&args, &[(replicas_register(service), "2".to_string())]);
        }
        let value = self.shared.unique(PROBE);
        let mut args = deploy_args(ROLLED, &format!("R={value}"));
        args[5] = "3".to_string();
        args.extend(["--update-parallelism".to_string(), "1".to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.must_write(&args, &[(env_register(ROLLED), value)]);
    }

    fn must_write(&mut self, args: &[&str], registers: &[(String, String)]) {
        let node = self.shared.up(&mut self.rng, None);
        let before = self.shared.recorder.ops().len();
        self.shared.write(PROBE, node, args, registers);
        let ops = self.shared.recorder.ops();
        assert!(
            ops[before..].iter().all(|o| o.outcome == Outcome::Ok),
            "setup write `shoal {}` failed",
            args.join(" ")
        );
    }

    fn leader(&self) -> Option<usize> {
        wait_for(Duration::from_secs(20), || {
            let i = (0..4).find(|i| self.shared.state[*i].load(Ordering::Relaxed) == UP)?;
            let st = run_cli(&self.shared.dirs[i], &["status", "--json"], OP_TIMEOUT).json()?;
            if st["quorum"]["healthy"] != true {
                return None;
            }
            let name = st["leader_name"].as_str()?;
            NAMES.iter().position(|n| *n == name)
        })
    }

    /// Retries `f` for up to 30 s (a request may meet an election right
    /// after healing); still failing, it is recorded as stuck.
    fn settle(&mut self, what: &str, mut f: impl FnMut() -> Result<(), String>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match f() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    self.figures
                        .stuck
                        .push(format!("{what} failed for 30 s: {e}"));
                    return;
                }
                Err(_) => thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn pid(&self, i: usize) -> u32 {
        self.c.nodes()[i].child.as_ref().expect("node runs").id()
    }

    fn kill(&mut self, i: usize) {
        self.shared.state[i].store(KILLED, Ordering::Relaxed);
        self.c.node_mut(i).kill();
    }

    fn signal(&self, i: usize, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid(i).to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {}", NAMES[i]);
    }

    fn pause(&mut self, i: usize) {
        self.shared.state[i].store(PAUSED, Ordering::Relaxed);
        self.signal(i, "-STOP");
    }

    fn resume(&mut self, i: usize) {
        self.signal(i, "-CONT");
        self.shared.state[i].store(UP, Ordering::Relaxed);
    }

    /// Restarts a killed node and waits until it is ready and answers.
    fn restart(&mut self, i: usize) {
        let env = env_refs(&self.env);
        let started = Instant::now();
        self.c.start(i, &env);
        let dir = self.shared.dirs[i].clone();
        let ready = wait_for(Duration::from_secs(60), || {
            let v = run_cli(&dir, &["node", "inspect", NAMES[i], "--json"], OP_TIMEOUT).json()?;
            (v["status"] == "ready").then_some(())
        });
        if ready.is_none() {
            self.figures
                .stuck
                .push(format!("{} not ready 60 s after its restart", NAMES[i]));
        }
        self.figures.rejoin.push(started.elapsed());
        self.shared.state[i].store(UP, Ordering::Relaxed);
    }

    /// Probes with recorded writes through nodes that are up until one is
    /// acknowledged; the time from `since` is the recovery time.
    fn recovery(&mut self, fault: Fault, since: Instant) {
        self.recovery_through(fault, since, &[]);
    }

    /// [`Chaos::recovery`], probing only through nodes outside `cut_off`
    /// (those a network fault separates: through them a write waits out
    /// its whole timeout, which says nothing about when the rest of the
    /// cluster took writes again).
    fn recovery_through(&mut self, fault: Fault, since: Instant, cut_off: &[usize]) {
        let deadline = since + Duration::from_secs(60);
        // The failed probes, for the report when recovery is slow.
        let mut trail = Vec::new();
        loop {
            let mut node = self.shared.up(&mut self.rng, None);
            for _ in 0..8 {
                if !cut_off.contains(&node) {
                    break;
                }
                node = self.shared.up(&mut self.rng, None);
            }
            let value = self.shared.unique(PROBE);
            let label = format!("probe={value}");
            let args = ["node", "update", NAMES[3], "--label-add", &label];
            let sent = since.elapsed();
            let cli = self.shared.write(
                PROBE,
                node,
                &args,
                &[(label_register(NAMES[3], "probe"), value)],
            );
            if cli.outcome() == Outcome::Ok {
                let took = since.elapsed();
                self.figures.recovery.entry(fault).or_default().push(took);
                if took > SLOW_RECOVERY {
                    self.figures.slow.push(format!(
                        "{fault:?}: {} ({})",
                        seconds(took),
                        trail.join("; ")
                    ));
                }
                return;
            }
            let error = cli.stderr.lines().next().unwrap_or("").to_string();
            trail.push(format!(
                "{:.2}-{:.2} s via {}: {error}",
                sent.as_secs_f64(),
                since.elapsed().as_secs_f64(),
                NAMES[node]
            ));
            if Instant::now() > deadline {
                self.figures
                    .stuck
                    .push(format!("no write accepted within 60 s of {fault:?}"));
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn net(&self) -> &netns::Net {
        self.c
            .net()
            .expect("network faults run with the nodes in namespaces")
    }

    /// A random node other than `not`, among the first `among`.
    fn other(&mut self, not: usize, among: usize) -> usize {
        (not + 1 + self.rng.below(among - 1)) % among
    }

    fn inject(&mut self, fault: Fault) {
        *self.figures.faults.entry(fault).or_default() += 1;
        let Some(leader) = self.leader() else {
            self.figures
                .stuck
                .push(format!("no leader before {fault:?}"));
            return;
        };
        match fault {
            Fault::KillLeader | Fault::KillOther => {
                let victim = if fault == Fault::KillLeader {
                    leader
                } else {
                    (leader + 1 + self.rng.below(3)) % 4
                };
                let down = self.rng.millis(300, 2_000);
                let since = Instant::now();
                self.kill(victim);
                self.recovery(fault, since);
                thread::sleep(down.saturating_sub(since.elapsed()));
                self.restart(victim);
            }
            Fault::PauseLeader | Fault::PauseOther => {
                let victim = if fault == Fault::PauseLeader {
                    leader
                } else {
                    (leader + 1 + self.rng.below(3)) % 4
                };
                // Longer than the election timeout (150-300 ms), sometimes
                // longer than the heartbeat timeout (2 s).
                let paused = self.rng.millis(600, 3_000);
                let since = Instant::now();
                self.pause(victim);
                self.recovery(fault, since);
                thread::sleep(paused.saturating_sub(since.elapsed()));
                self.resume(victim);
            }
            Fault::KillLeaderDuringUpdate => {
                let image = format!("fake:{}", 1 + self.rng.below(2));
                let value = self.shared.unique(PROBE);
                let env = format!("R={value}");
                let args = [
                    "service",
                    "update",
                    ROLLED,
                    "--image",
                    &image,
                    "--env-add",
                    &env,
                    "--update-parallelism",
                    "1",
                    "--detach",
                ];
                let node = self.shared.up(&mut self.rng, None);
                self.shared
                    .write(PROBE, node, &args, &[(env_register(ROLLED), value)]);
                // Mid-run: the first slots move within a second or two.
                thread::sleep(self.rng.millis(200, 2_500));
                let Some(leader) = self.leader() else {
                    self.figures
                        .stuck
                        .push("no leader during the rolling update".to_string());
                    return;
                };
                let down = self.rng.millis(300, 2_000);
                let since = Instant::now();
                self.kill(leader);
                self.recovery(fault, since);
                thread::sleep(down.saturating_sub(since.elapsed()));
                self.restart(leader);
            }
            Fault::KillDuringSnapshotInstall => {
                let followers: Vec<usize> = (0..MANAGERS).filter(|i| *i != leader).collect();
                let victim = followers[self.rng.below(followers.len())];
                let installs_before = installs(&self.c.nodes()[victim].log_text());
                let since = Instant::now();
                self.kill(victim);
                self.recovery(fault, since);
                // Enough entries that the log the victim needs is purged.
                bench_commit(&self.shared.dirs[leader], 4 * SNAPSHOT_EVERY);
                // Restarted, it is sent a snapshot at once; kill it again
                // while that is under way, then let it finish.
                let env = env_refs(&self.env);
                self.c.start(victim, &env);
                thread::sleep(self.rng.millis(50, 600));
                self.c.node_mut(victim).kill();
                self.restart(victim);
                let log = self.c.nodes()[victim].log.clone();
                // The snapshot arrives on either start; wait for it briefly.
                let seen = wait_for(Duration::from_secs(10), || {
                    let text = std::fs::read_to_string(&log).ok()?;
                    (installs(&text) > installs_before).then_some(())
                });
                if seen.is_some() {
                    self.figures.snapshot_installs += 1;
                }
            }
            Fault::IsolateLeader | Fault::PartitionLeaderWithWorker => {
                let mut minority = vec![leader];
                if fault == Fault::PartitionLeaderWithWorker {
                    minority.push(WORKER);
                }
                let majority: Vec<usize> = (0..4).filter(|i| !minority.contains(i)).collect();
                let lasting = self.rng.millis(1_000, 5_000);
                let since = Instant::now();
                self.net().partition(&minority, &majority);
                self.recovery_through(fault, since, &minority);
                thread::sleep(lasting.saturating_sub(since.elapsed()));
                self.net().heal_all();
            }
            Fault::CutLink => {
                let a = self.rng.below(4);
                let b = self.other(a, 4);
                let lasting = self.rng.millis(1_000, 4_000);
                let since = Instant::now();
                self.net().cut_link(a, b);
                self.recovery_through(fault, since, &[a, b]);
                thread::sleep(lasting.saturating_sub(since.elapsed()));
                self.net().heal_link(a, b);
            }
            Fault::OneWayLeaderLink => {
                let follower = self.other(leader, MANAGERS);
                let (from, to) = if self.rng.below(2) == 0 {
                    (leader, follower)
                } else {
                    (follower, leader)
                };
                let lasting = self.rng.millis(1_000, 5_000);
                let since = Instant::now();
                self.net().cut(from, to);
                self.recovery_through(fault, since, &[follower]);
                thread::sleep(lasting.saturating_sub(since.elapsed()));
                self.net().heal(from, to);
            }
            Fault::SlowLossyLink => {
                let other = self.other(leader, 4);
                let lasting = self.rng.millis(2_000, 6_000);
                let since = Instant::now();
                let delay = Duration::from_millis(200);
                self.net().impair(leader, other, delay, 0.05);
                self.net().impair(other, leader, delay, 0.05);
                self.recovery_through(fault, since, &[other]);
                thread::sleep(lasting.saturating_sub(since.elapsed()));
                self.net().clear_impairment(leader, other);
                self.net().clear_impairment(other, leader);
            }
            Fault::FlappingLink => {
                let other = self.other(leader, MANAGERS);
                let flapping = self.rng.millis(2_000, 5_000);
                let started = Instant::now();
                while started.elapsed() < flapping {
                    self.net().cut_link(leader, other);
                    thread::sleep(self.rng.millis(200, 800));
                    self.net().heal_link(leader, other);
                    thread::sleep(self.rng.millis(200, 800));
                }
                // Measured from the last heal: how soon writes flow once
                // the link stays up.
                self.recovery(fault, Instant::now());
            }
        }
    }

    /// Runs clients and faults for `duration`, heals, reads every
    /// register, checks the tasks and the history.
    fn run(&mut self, duration: Duration, clients: usize, seed: u64) -> RunOutcome {
        self.setup();
        let started = Instant::now();
        let handles: Vec<_> = (0..clients)
            .map(|id| {
                let shared = self.shared.clone();
                thread::spawn(move || client(shared, id, seed.wrapping_add(id as u64 * 7919)))
            })
            .collect();
        let mut round = Vec::new();
        // At least one round, so every kind runs even on a slow machine.
        let mut injected = 0;
        while started.elapsed() < duration || injected < self.kinds.len() {
            if round.is_empty() {
                round = self.kinds.clone();
                // Shuffled, so the kinds meet each other in every order.
                for i in (1..round.len()).rev() {
                    round.swap(i, self.rng.below(i + 1));
                }
            }
            let fault = round.pop().unwrap();
            self.inject(fault);
            injected += 1;
            thread::sleep(self.rng.millis(100, 600));
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().expect("client thread");
        }
        let workload = started.elapsed();

        // Heal: every link whole, every node up.
        if let Some(net) = self.c.net() {
            net.heal_all();
        }
        for (i, name) in NAMES.iter().enumerate() {
            match self.shared.state[i].load(Ordering::Relaxed) {
                PAUSED => self.resume(i),
                KILLED => self.restart(i),
                _ => {}
            }
            // A daemon that exited without being killed is a finding.
            if !self.c.node_mut(i).is_running() {
                let log = self.c.nodes()[i].log_text();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                self.figures
                    .stuck
                    .push(format!("{name} exited on its own: {tail:?}"));
                self.kill(i);
                self.restart(i);
            }
        }
        // Drained: its tasks must move.
        let dir = self.shared.dirs[0].clone();
        self.settle("drain node-d", || {
            let drain = run_cli(
                &dir,
                &["node", "update", NAMES[3], "--availability", "drain"],
                OP_TIMEOUT,
            );
            if drain.ok() {
                Ok(())
            } else {
                Err(drain.stderr)
            }
        });

        let final_from = self.shared.recorder.now();
        let shared = self.shared.clone();
        for (i, through) in NAMES.iter().enumerate() {
            for service in DEPLOYED.iter().chain(SCALED.iter()).chain([ROLLED].iter()) {
                self.settle(
                    &format!("final read of {service} through {through}"),
                    || read_service(&shared, 100 + i, i, service),
                );
            }
            for target in NAMES {
                self.settle(&format!("final read of {target} through {through}"), || {
                    read_node(&shared, 100 + i, i, target)
                });
            }
        }
        let history = self.shared.recorder.ops();
        let report = history::check(&history, final_from);
        let tasks = wait_for(Duration::from_secs(90), || {
            task_violations(&self.shared.dirs[0])
                .ok()
                .filter(Vec::is_empty)
        })
        .map(|_| Vec::new())
        .unwrap_or_else(|| task_violations(&self.shared.dirs[0]).unwrap_or_else(|e| vec![e]));
        RunOutcome {
            report,
            tasks,
            workload,
            ops: history.len(),
        }
    }
}

/// What a run found.
struct RunOutcome {
    report: CheckReport,
    tasks: Vec<String>,
    workload: Duration,
    ops: usize,
}

fn installs(log: &str) -> usize {
    log.matches("installed a snapshot from the leader").count()
}

/// Commits `count` empty entries through the development endpoint.
fn bench_commit(dir: &Path, count: u64) {
    let body = format!("{{\"writers\":1,\"count\":{count}}}");
    let request = format!(
        "POST /v1/dev/bench-commit HTTP/1.1\r\nHost: shoal\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let Ok(mut s) = UnixStream::connect(dir.join("shoal.sock")) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = s.write_all(request.as_bytes());
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
}

/// The task invariants, as the leader's state shows them: exactly
/// `replicas` running per service, none on a down or drained node, at
/// most one running per slot, and no update run left unfinished.
fn task_violations(dir: &Path) -> Result<Vec<String>, String> {
    let json = |args: &[&str]| {
        let cli = run_cli(dir, args, OP_TIMEOUT);
        cli.json()
            .ok_or_else(|| format!("`shoal {}` failed: {}", args.join(" "), cli.stderr))
    };
    let nodes = json(&["node", "ls", "--json"])?;
    let unusable: Vec<u64> = nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["status"] != "ready" || n["availability"] == "drain")
        .filter_map(|n| n["id"].as_u64())
        .collect();
    let mut found = Vec::new();
    for service in DEPLOYED.iter().chain(SCALED.iter()).chain([ROLLED].iter()) {
        let inspect = json(&["service", "inspect", service, "--json"])?;
        let replicas = inspect["spec"]["replicas"].as_u64().unwrap_or(0) as usize;
        let tasks = json(&["service", "ps", service, "--json"])?;
        let tasks = tasks.as_array().cloned().unwrap_or_default();
        let running: Vec<&Value> = tasks
            .iter()
            .filter(|t| t["state"] == "running" && t["desired_state"] == "running")
            .collect();
        if running.len() != replicas {
            found.push(format!(
                "{service}: {} running tasks, {replicas} replicas",
                running.len()
            ));
        }
        let mut slots: BTreeMap<u64, usize> = BTreeMap::new();
        for t in &tasks {
            let node = t["node_id"].as_u64();
            let active = t["state"] == "running" || t["desired_state"] == "running";
            if active && node.is_some_and(|n| unusable.contains(&n)) {
                found.push(format!(
                    "{service}: task {} ({}) on down or drained node {:?}",
                    t["id"], t["state"], t["node_name"]
                ));
            }
            if t["state"] == "running" {
                *slots.entry(t["slot"].as_u64().unwrap_or(0)).or_default() += 1;
            }
        }
        for (slot, n) in slots {
            if n > 1 {
                found.push(format!("{service}: {n} tasks running in slot {slot}"));
            }
        }
        let update = &inspect["update"];
        if !update.is_null() && update["state"] != "completed" {
            found.push(format!(
                "{service}: update run {} ({})",
                update["state"], update["message"]
            ));
        }
    }
    Ok(found)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The report of a run, as Markdown.
fn render(figures: &Figures, outcome: &RunOutcome, seed: u64, clients: usize) -> String {
    let r = &outcome.report;
    let mut s = String::new();
    let total: usize = figures.faults.values().sum();
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let _ = writeln!(
        s,
        "Workload {} with {clients} clients, seed {seed}; {total} faults, {} operations recorded ({build} build, {cores} cores).\n",
        seconds(outcome.workload),
        outcome.ops
    );
    let _ = writeln!(
        s,
        "| fault | count | recovery p50 | recovery p99 | recovery max |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- |");
    let mut all = Vec::new();
    for (fault, count) in &figures.faults {
        let mut times = figures.recovery.get(fault).cloned().unwrap_or_default();
        times.sort();
        all.extend(times.iter().copied());
        let _ = writeln!(
            s,
            "| {fault:?} | {count} | {} | {} | {} |",
            seconds(percentile(&times, 0.5)),
            seconds(percentile(&times, 0.99)),
            seconds(times.last().copied().unwrap_or_default())
        );
    }
    all.sort();
    let _ = writeln!(
        s,
        "| all | {total} | {} | {} | {} |\n",
        seconds(percentile(&all, 0.5)),
        seconds(percentile(&all, 0.99)),
        seconds(all.last().copied().unwrap_or_default())
    );
    let mut rejoin = figures.rejoin.clone();
    rejoin.sort();
    let _ = writeln!(
        s,
        "Restarted node ready again: p50 {}, p99 {}, max {} ({} restarts). KillDuringSnapshotInstall faults whose follower logged a snapshot install: {}.\n",
        seconds(percentile(&rejoin, 0.5)),
        seconds(percentile(&rejoin, 0.99)),
        seconds(rejoin.last().copied().unwrap_or_default()),
        rejoin.len(),
        figures.snapshot_installs
    );
    let _ = writeln!(
        s,
        "Operations: {} writes acknowledged, {} unknown, {} failed before reaching a daemon; {} reads acknowledged; {} registers.\n",
        r.writes_ok, r.writes_unknown, r.writes_failed, r.reads_ok, r.registers
    );
    let _ = writeln!(
        s,
        "Anomalies: {} in the history, {} in the tasks, {} stuck recoveries.",
        r.anomalies.len(),
        outcome.tasks.len(),
        figures.stuck.len()
    );
    for a in r.anomalies.iter().take(20) {
        let _ = writeln!(s, "- {a}");
    }
    for t in outcome.tasks.iter().chain(figures.stuck.iter()) {
        let _ = writeln!(s, "- {t}");
    }
    if !figures.slow.is_empty() {
        let _ = writeln!(
            s,
            "\n{} recoveries took longer than {}; the first 20, with their failed probes (start-end since the fault, node, error):",
            figures.slow.len(),
            seconds(SLOW_RECOVERY)
        );
        for slow in figures.slow.iter().take(20) {
            let _ = writeln!(s, "- {slow}");
        }
    }
    s
}

fn seed_from_env() -> u64 {
    std::env::var("SHOAL_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// Runs the workload with faults; returns the report and whether it found
/// nothing wrong.
fn chaos_run(duration: Duration, clients: usize, network: bool) -> (String, bool) {
    let seed = seed_from_env();
    eprintln!("seed {seed} (set SHOAL_FAULT_SEED to repeat the choices)");
    let mut chaos = if network {
        Chaos::with_network(seed)
    } else {
        Chaos::new(seed)
    };
    let outcome = chaos.run(duration, clients, seed);
    let mut report = render(&chaos.figures, &outcome, seed, clients);
    let site = if network {
        "Each node in its own network namespace; network faults included."
    } else {
        "Nodes on loopback addresses; crash faults only."
    };
    report.insert_str(0, &format!("{site}\n\n"));
    eprintln!("{report}");
    let clean = outcome.report.anomalies.is_empty()
        && outcome.tasks.is_empty()
        && chaos.figures.stuck.is_empty();
    (report, clean)
}

#[test]
fn crash_faults_under_load_lose_no_acknowledged_write() {
    let (report, clean) = chaos_run(Duration::from_secs(80), 3, false);
    assert!(clean, "{report}");
    // Every kind ran at least once.
    for fault in FAULTS {
        assert!(report.contains(&format!("| {fault:?} |")), "{report}");
    }
}

/// The same with the nodes in network namespaces and partitions, one-way
/// cuts, slow and lossy links and flapping links among the faults. Needs
/// root (CI runs as root); elsewhere it says why and does nothing.
#[test]
fn crash_and_network_faults_under_load_lose_no_acknowledged_write() {
    if let Some(why) = netns::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let (report, clean) = chaos_run(Duration::from_secs(80), 3, true);
    assert!(clean, "{report}");
    for fault in FAULTS.iter().chain(NETWORK_FAULTS.iter()) {
        assert!(report.contains(&format!("| {fault:?} |")), "{report}");
    }
}

/// The long run: `scripts/soak.sh [MINUTES]`.
#[test]
#[ignore = "long: run by scripts/soak.sh"]
fn soak() {
    let minutes: u64 = std::env::var("SHOAL_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(30);
    let clients = std::env::var("SHOAL_SOAK_CLIENTS")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(4);
    // Network faults unless turned off or impossible here (not root).
    let network = match std::env::var("SHOAL_SOAK_NETWORK").as_deref() {
        Ok("0") => false,
        _ => match netns::unavailable() {
            None => true,
            Some(why) => {
                eprintln!("crash faults only: {why}");
                false
            }
        },
    };
    let (report, clean) = chaos_run(Duration::from_secs(minutes * 60), clients, network);
    if let Ok(path) = std::env::var("SHOAL_SOAK_REPORT") {
        std::fs::write(&path, &report).expect("write the soak report");
    }
    assert!(clean, "{report}");
}

#[test]
fn a_follower_killed_during_a_snapshot_install_catches_up() {
    let mut chaos = Chaos::new(seed_from_env());
    chaos.setup();
    let leader = chaos.leader().expect("a leader");
    let victim = (0..MANAGERS).find(|i| *i != leader).unwrap();
    let installs_before = installs(&chaos.c.nodes()[victim].log_text());
    chaos.kill(victim);
    // While it is down: labels it must learn, and enough entries that the
    // log it needs is purged.
    let through = chaos.shared.up(&mut chaos.rng, None);
    let dir = chaos.shared.dirs[through].clone();
    for i in 0..5 {
        let label = format!("snap{i}=v{i}");
        let out = run_cli(
            &dir,
            &["node", "update", NAMES[3], "--label-add", &label],
            OP_TIMEOUT,
        );
        assert!(out.ok(), "{}", out.stderr);
    }
    bench_commit(&chaos.shared.dirs[leader], 5 * SNAPSHOT_EVERY);
    // Killed three times while catching up, then left alone.
    let env = env_refs(&chaos.env);
    for _ in 0..3 {
        chaos.c.start(victim, &env);
        let pause = chaos.rng.millis(50, 500);
        thread::sleep(pause);
        chaos.c.node_mut(victim).kill();
    }
    chaos.restart(victim);
    let log = chaos.c.nodes()[victim].log.clone();
    wait_for(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).ok()?;
        (installs(&text) > installs_before).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no snapshot installed: {}",
            chaos.c.nodes()[victim].log_text()
        )
    });
    // Caught up: the leader's replication to it is at most 2 entries behind.
    wait_for(Duration::from_secs(30), || {
        let st = run_cli(
            &chaos.shared.dirs[leader],
            &["status", "--json"],
            OP_TIMEOUT,
        )
        .json()?;
        let me = st["members"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == NAMES[victim])?
            .clone();
        (me["lag"].as_u64()? <= 2).then_some(())
    })
    .expect("the follower catches up");
    // Its own state holds what was written while it was down: make it the
    // leader (kill whoever leads until it wins an election) and read there.
    let mut won = false;
    for _ in 0..12 {
        let Some(now) = chaos.leader() else { continue };
        if now == victim {
            won = true;
            break;
        }
        chaos.kill(now);
        let elected = wait_for(Duration::from_secs(20), || {
            let st = run_cli(
                &chaos.shared.dirs[victim],
                &["status", "--json"],
                OP_TIMEOUT,
            )
            .json()?;
            st["leader_name"].as_str().map(str::to_string)
        });
        chaos.restart(now);
        if elected.as_deref() == Some(NAMES[victim]) {
            won = chaos.leader() == Some(victim);
            if won {
                break;
            }
        }
    }
    assert!(won, "{} never became leader", NAMES[victim]);
    let node = run_cli(
        &chaos.shared.dirs[victim],
        &["node", "inspect", NAMES[3], "--json"],
        OP_TIMEOUT,
    )
    .json()
    .expect("node inspect on the new leader");
    for i in 0..5 {
        assert_eq!(
            node["labels"][format!("snap{i}")],
            format!("v{i}"),
            "{node:#}"
        );
    }
}

/// A change forwarded to a leader that dies with it in flight is sent again
/// to the next leader under the same request id, which may already hold it:
/// apply() runs it once, so a rollback acknowledged to the client is in
/// effect once, never undone by a second run. Each round updates the image,
/// asks a follower for a rollback and kills the leader while the forward is
/// under way.
#[test]
fn a_change_forwarded_to_a_dying_leader_is_applied_at_most_once() {
    let mut chaos = Chaos::new(seed_from_env());
    let image = |chaos: &Chaos, i: usize| -> Option<String> {
        let v = run_cli(
            &chaos.shared.dirs[i],
            &["service", "inspect", ROLLED, "--json"],
            OP_TIMEOUT,
        )
        .json()?;
        v["spec"]["image"].as_str().map(str::to_string)
    };
    let value = chaos.shared.unique(PROBE);
    let args = deploy_args(ROLLED, &format!("R={value}"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    chaos.must_write(&args, &[(env_register(ROLLED), value)]);
    let (mut acked, mut uncertain) = (0, 0);
    for round in 0..25 {
        let leader = chaos.leader().expect("a leader");
        let before = image(&chaos, leader).expect("inspect");
        let target = if before == "fake:1" {
            "fake:2"
        } else {
            "fake:1"
        };
        let update = run_cli(
            &chaos.shared.dirs[leader],
            &["service", "update", ROLLED, "--image", target, "--detach"],
            OP_TIMEOUT,
        );
        assert!(update.ok(), "{}", update.stderr);
        let follower = (leader + 1) % MANAGERS;
        let dir = chaos.shared.dirs[follower].clone();
        let rollback = thread::spawn(move || {
            run_cli(
                &dir,
                &["service", "rollback", ROLLED, "--detach"],
                OP_TIMEOUT,
            )
        });
        // The client starts in tens of milliseconds; the kill lands around
        // the moment its request is forwarded.
        thread::sleep(chaos.rng.millis(0, 60));
        chaos.kill(leader);
        let rollback = rollback.join().unwrap();
        let now = chaos.leader().expect("a new leader");
        let after = image(&chaos, now).expect("inspect");
        if rollback.ok() {
            acked += 1;
            assert_eq!(
                after, before,
                "round {round}: the acknowledged rollback is not in effect (run twice?)"
            );
        } else {
            uncertain += 1;
        }
        chaos.restart(leader);
    }
    eprintln!("{acked} rollbacks acknowledged, {uncertain} answered as uncertain");
    assert!(chaos.figures.stuck.is_empty(), "{:?}", chaos.figures.stuck);
}
