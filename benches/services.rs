//! Service benchmarks side by side with Docker Swarm, on the same local
//! Docker engine and in the same run: a single-node Swarm, a shoal cluster of
//! three daemons on 127.0.0.1-3, and the engine's own limit (containers
//! started directly with `docker run -d`, 8 in parallel).
//!
//! `cargo bench --bench services` (release build), or
//! `scripts/bench-vs-swarm.sh`, which also builds the test image. Workloads:
//! deploy 50 replicas until 50 run; `docker kill` one of 3 until its
//! replacement runs (restart delay 0); scale 10 -> 30 until 30 run; remove a
//! 10-replica service (stop grace period 1 s) until `docker ps -a` shows none
//! of its containers; a rolling update of 10 replicas to a new command
//! (parallelism 2, delay 0, monitor 1 s, stop grace period 1 s) until the
//! orchestrator reports it completed and Docker runs only new containers. Every system is timed the same way: from just before the
//! command until `docker ps` with the system's label filters shows the goal.
//!
//! Knobs: `BENCH_ROUNDS` (3; the median is reported), `BENCH_WORKLOADS`
//! (comma list of deploy,replace,scale,remove,update; all by default),
//! `BENCH_JOIN_ROLE` (manager|worker, the role of the two joining daemons;
//! manager), `SHOAL_TEST_IMAGE` (shoal-test:latest).
//!
//! The bench joins the engine to a Swarm only if it is in none, marks the
//! swarm it created (a file in the temp dir holding the node id, which the
//! wrapper script also reads), and leaves it when it ends or panics. Every
//! container it creates carries `shoal-bench=1`; only those, and the
//! containers of its own shoal cluster, are ever removed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::Cluster;
use serde_json::json;

/// Label on every container this bench creates, whoever creates it.
const BENCH_LABEL: &str = "shoal-bench=1";
/// Label Swarm puts on the containers of a service.
const SWARM_SERVICE_LABEL: &str = "com.docker.swarm.service.name";
/// Longest any single wait may take before the bench gives up.
const WAIT_LIMIT: Duration = Duration::from_secs(120);
/// Longest any single CLI call may take.
const CALL_LIMIT: Duration = Duration::from_secs(120);
/// Pause between two `docker ps` polls (each poll itself takes tens of ms).
const POLL_EVERY: Duration = Duration::from_millis(20);
/// Containers the engine-limit runs start at once.
const ENGINE_PARALLELISM: usize = 8;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// --- running commands with a deadline ---------------------------------------

/// Runs `program args`, killing it after `limit`; panics (the guards clean up)
/// when it cannot be started or overruns.
fn run(program: &str, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`{program} {}` did not finish within {} s",
                    args.join(" "),
                    limit.as_secs()
                );
            }
        }
    }
    child.wait_with_output().expect("collect command output")
}

/// A command that must succeed; returns its trimmed stdout.
fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args, CALL_LIMIT);
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn docker(args: &[&str]) -> String {
    ok("docker", args)
}

/// `docker` for cleanup paths: never panics, errors are ignored.
fn docker_quiet(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

// --- observing containers ----------------------------------------------------

/// Container ids matching every `label` filter: running ones, or with `all`,
/// every container in any state.
fn container_ids(labels: &[String], all: bool) -> Vec<String> {
    let mut args = vec!["ps", "-q", "--no-trunc"];
    if all {
        args.push("-a");
    } else {
        args.extend(["--filter", "status=running"]);
    }
    let filters: Vec<String> = labels.iter().map(|l| format!("label={l}")).collect();
    for f in &filters {
        args.extend(["--filter", f.as_str()]);
    }
    let mut ids: Vec<String> = docker(&args)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    ids.sort();
    ids
}

/// Polls until `done` holds, or panics naming `what` after `WAIT_LIMIT`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_LIMIT;
    while !done() {
        if Instant::now() >= deadline {
            panic!(
                "timed out after {} s waiting for {what}",
                WAIT_LIMIT.as_secs()
            );
        }
        std::thread::sleep(POLL_EVERY);
    }
}

fn wait_running(what: &str, labels: &[String], n: usize) {
    wait_until(&format!("{what}: {n} containers running"), || {
        container_ids(labels, false).len() == n
    });
}

fn wait_gone(what: &str, labels: &[String]) {
    wait_until(&format!("{what}: no containers left"), || {
        container_ids(labels, true).is_empty()
    });
}

/// Force-removes every container matching the label filters (cleanup only).
fn force_remove(labels: &[String]) {
    let mut args = vec!["ps", "-aq"];
    let filters: Vec<String> = labels.iter().map(|l| format!("label={l}")).collect();
    for f in &filters {
        args.extend(["--filter", f.as_str()]);
    }
    let ids = docker_quiet(&args);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut rm = vec!["rm", "-f"];
        rm.extend(ids);
        docker_quiet(&rm);
    }
}

// --- the swarm, with a guard that always leaves it ---------------------------

/// The file naming the swarm node this bench created (read by the wrapper
/// script too, to leave a swarm a killed bench could not leave itself).
fn swarm_marker() -> PathBuf {
    std::env::temp_dir().join("shoal-bench-swarm")
}

fn swarm_state() -> (String, String) {
    let line = docker(&[
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.NodeID}}",
    ]);
    let mut parts = line.split_whitespace();
    let state = parts.next().unwrap_or("").to_string();
    let node = parts.next().unwrap_or("").to_string();
    (state, node)
}

/// Owns the single-node swarm: dropping it removes the bench's services and
/// containers and leaves the swarm, on success and on panic.
struct SwarmGuard;

impl SwarmGuard {
    fn init() -> SwarmGuard {
        let (state, node) = swarm_state();
        if state != "inactive" {
            let ours = std::fs::read_to_string(swarm_marker())
                .map(|m| m.trim() == node && !node.is_empty())
                .unwrap_or(false);
            if !ours {
                eprintln!(
                    "this Docker engine is already in a swarm (state {state:?}, node {node:?}) \
                     that this bench did not create; leave it first (`docker swarm leave --force`) \
                     if it is not needed, or run the bench on another engine"
                );
                std::process::exit(2);
            }
            println!("leaving the swarm a previous run of this bench left behind");
            SwarmGuard::leave();
        }
        docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
        let guard = SwarmGuard;
        let (_, node) = swarm_state();
        std::fs::write(swarm_marker(), &node).expect("write the swarm marker");
        guard
    }

    fn leave() {
        let services = docker_quiet(&[
            "service",
            "ls",
            "-q",
            "--filter",
            &format!("label={BENCH_LABEL}"),
        ]);
        let services: Vec<&str> = services.split_whitespace().collect();
        if !services.is_empty() {
            let mut rm = vec!["service", "rm"];
            rm.extend(services);
            docker_quiet(&rm);
        }
        docker_quiet(&["swarm", "leave", "--force"]);
        force_remove(&[BENCH_LABEL.to_string()]);
        let _ = std::fs::remove_file(swarm_marker());
    }
}

impl Drop for SwarmGuard {
    fn drop(&mut self) {
        SwarmGuard::leave();
        let (state, _) = swarm_state_quiet();
        if state != "inactive" {
            eprintln!("warning: the engine is still in a swarm ({state}); run `docker swarm leave --force`");
        }
    }
}

fn swarm_state_quiet() -> (String, String) {
    let line = docker_quiet(&[
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.NodeID}}",
    ]);
    let mut parts = line.split_whitespace();
    (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    )
}

/// Removes the bench's direct containers however the bench ends.
struct DirectContainersGuard;

impl Drop for DirectContainersGuard {
    fn drop(&mut self) {
        force_remove(&[BENCH_LABEL.to_string()]);
    }
}

// --- the two orchestrators ---------------------------------------------------

trait Orchestrator {
    fn name(&self) -> &'static str;
    /// Creates a service and returns at once (not waiting for its tasks).
    fn create(&self, service: &str, replicas: usize);
    /// Changes the replica count and returns at once.
    fn scale(&self, service: &str, replicas: usize);
    /// Removes the service and returns at once.
    fn remove(&self, service: &str);
    /// Starts a rolling update to the command `sleep 200000` and returns at once.
    fn update(&self, service: &str);
    /// Whether the orchestrator reports the service's update completed.
    fn update_completed(&self, service: &str) -> bool;
    /// `docker ps` label filters selecting the service's containers.
    fn labels(&self, service: &str) -> Vec<String>;
    /// Removes the service (if still there) and every container of it.
    fn clean(&self, service: &str);
}

struct Swarm {
    image_id: String,
}

impl Orchestrator for Swarm {
    fn name(&self) -> &'static str {
        "swarm"
    }
    fn create(&self, service: &str, replicas: usize) {
        docker(&[
            "service",
            "create",
            "--detach",
            "--quiet",
            "--no-resolve-image",
            "--name",
            service,
            "--label",
            BENCH_LABEL,
            "--container-label",
            BENCH_LABEL,
            "--replicas",
            &replicas.to_string(),
            "--restart-delay",
            "0s",
            "--stop-grace-period",
            "1s",
            "--update-parallelism",
            "2",
            "--update-delay",
            "0s",
            "--update-monitor",
            "1s",
            &self.image_id,
            "sleep",
            "100000",
        ]);
    }
    fn scale(&self, service: &str, replicas: usize) {
        docker(&[
            "service",
            "scale",
            "--detach",
            &format!("{service}={replicas}"),
        ]);
    }
    fn remove(&self, service: &str) {
        docker(&["service", "rm", service]);
    }
    fn update(&self, service: &str) {
        docker(&[
            "service",
            "update",
            "--detach",
            "--quiet",
            "--no-resolve-image",
            "--args",
            "sleep 200000",
            service,
        ]);
    }
    fn update_completed(&self, service: &str) -> bool {
        docker(&[
            "service",
            "inspect",
            "--format",
            "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
            service,
        ]) == "completed"
    }
    fn labels(&self, service: &str) -> Vec<String> {
        vec![format!("{SWARM_SERVICE_LABEL}={service}")]
    }
    fn clean(&self, service: &str) {
        docker_quiet(&["service", "rm", service]);
        let labels = self.labels(service);
        force_remove(&labels);
        wait_gone(&format!("swarm cleanup of {service}"), &labels);
    }
}

struct Shoal {
    cluster: Cluster,
    image: String,
}

impl Shoal {
    fn cli(&self, args: &[&str]) -> String {
        let mut full = vec!["--data-dir", self.cluster.nodes[0].dir.to_str().unwrap()];
        full.extend_from_slice(args);
        ok(common::BIN, &full)
    }
}

impl Orchestrator for Shoal {
    fn name(&self) -> &'static str {
        "shoal"
    }
    fn create(&self, service: &str, replicas: usize) {
        self.cli(&[
            "deploy",
            service,
            "--image",
            &self.image,
            "--label",
            BENCH_LABEL,
            "--replicas",
            &replicas.to_string(),
            "--restart-delay",
            "0s",
            "--stop-grace-period",
            "1s",
            "--update-parallelism",
            "2",
            "--update-delay",
            "0s",
            "--update-monitor",
            "1s",
            "--detach",
            "--",
            "sleep",
            "100000",
        ]);
    }
    fn scale(&self, service: &str, replicas: usize) {
        self.cli(&[
            "service",
            "scale",
            "--detach",
            &format!("{service}={replicas}"),
        ]);
    }
    fn remove(&self, service: &str) {
        self.cli(&["service", "rm", "--detach", service]);
    }
    fn update(&self, service: &str) {
        // The same spec as `create` but for the command: a template change.
        self.cli(&[
            "deploy",
            service,
            "--image",
            &self.image,
            "--label",
            BENCH_LABEL,
            "--replicas",
            "10",
            "--restart-delay",
            "0s",
            "--stop-grace-period",
            "1s",
            "--update-parallelism",
            "2",
            "--update-delay",
            "0s",
            "--update-monitor",
            "1s",
            "--detach",
            "--",
            "sleep",
            "200000",
        ]);
    }
    fn update_completed(&self, service: &str) -> bool {
        let mut args = vec!["--data-dir", self.cluster.nodes[0].dir.to_str().unwrap()];
        args.extend(["service", "inspect", service, "--json"]);
        let out = run(common::BIN, &args, CALL_LIMIT);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .is_ok_and(|v| v["update"]["state"] == "completed")
    }
    fn labels(&self, service: &str) -> Vec<String> {
        let id = self.cluster.cluster_id.as_deref().expect("cluster id");
        vec![
            format!("shoal.cluster={id}"),
            format!("shoal.service={service}"),
        ]
    }
    fn clean(&self, service: &str) {
        let mut args = vec!["--data-dir", self.cluster.nodes[0].dir.to_str().unwrap()];
        args.extend(["service", "rm", service]);
        // Waits until the agents removed the containers; an already removed
        // service is not an error worth stopping for.
        let _ = run(common::BIN, &args, CALL_LIMIT);
        let labels = self.labels(service);
        force_remove(&labels);
        wait_gone(&format!("shoal cleanup of {service}"), &labels);
    }
}

// --- the engine's own limit --------------------------------------------------

/// Starts `n` containers with `docker run -d`, `parallelism` at a time, each
/// labelled with `tag`; returns once every `docker run` returned.
fn run_direct(image_id: &str, tag: &str, n: usize, parallelism: usize) {
    let next = AtomicUsize::new(0);
    let label = format!("shoal-bench.direct={tag}");
    std::thread::scope(|scope| {
        for _ in 0..parallelism.min(n) {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::SeqCst) < n {
                    docker(&[
                        "run",
                        "-d",
                        "--label",
                        BENCH_LABEL,
                        "--label",
                        &label,
                        "--stop-timeout",
                        "1",
                        image_id,
                        "sleep",
                        "100000",
                    ]);
                }
            });
        }
    });
}

fn direct_labels(tag: &str) -> Vec<String> {
    vec![BENCH_LABEL.to_string(), format!("shoal-bench.direct={tag}")]
}

fn clean_direct(tag: &str) {
    let labels = direct_labels(tag);
    force_remove(&labels);
    wait_gone(&format!("direct cleanup of {tag}"), &labels);
}

/// Engine analogue of starting `n` containers: `docker run -d`, 8 at once,
/// until all `n` run.
fn engine_start(image_id: &str, tag: &str, n: usize) -> Duration {
    let labels = direct_labels(tag);
    let started = Instant::now();
    run_direct(image_id, tag, n, ENGINE_PARALLELISM);
    wait_running(&format!("engine {tag}"), &labels, n);
    let took = started.elapsed();
    clean_direct(tag);
    took
}

/// Engine analogue of removing `n` containers with a 1 s grace period: one
/// `docker stop -t 1` of all of them (the CLI stops them in parallel), then
/// `docker rm`, until `docker ps -a` shows none.
fn engine_remove(image_id: &str, tag: &str, n: usize) -> Duration {
    let labels = direct_labels(tag);
    run_direct(image_id, tag, n, ENGINE_PARALLELISM);
    wait_running(&format!("engine {tag}"), &labels, n);
    let ids = container_ids(&labels, true);
    let started = Instant::now();
    let mut stop = vec!["stop", "-t", "1"];
    stop.extend(ids.iter().map(String::as_str));
    docker(&stop);
    let mut rm = vec!["rm"];
    rm.extend(ids.iter().map(String::as_str));
    docker(&rm);
    wait_gone(&format!("engine {tag}"), &labels);
    let took = started.elapsed();
    clean_direct(tag);
    took
}

/// A rolling update done by hand: `n` containers replaced `batch` at a time,
/// each batch stopped (grace 1 s) and removed, its replacements started, then
/// watched for `monitor` before the next batch. The floor for an
/// orchestrator that honours the grace period and monitor window per batch.
fn engine_update(image_id: &str, tag: &str, n: usize, batch: usize, monitor: Duration) -> Duration {
    run_direct(image_id, tag, n, ENGINE_PARALLELISM);
    let labels = direct_labels(tag);
    wait_running(&format!("engine {tag}"), &labels, n);
    let old = container_ids(&labels, false);
    let started = Instant::now();
    for chunk in old.chunks(batch) {
        let mut stop = vec!["stop", "-t", "1"];
        stop.extend(chunk.iter().map(String::as_str));
        docker(&stop);
        let mut rm = vec!["rm"];
        rm.extend(chunk.iter().map(String::as_str));
        docker(&rm);
        run_direct(image_id, tag, chunk.len(), batch);
        wait_running(&format!("engine {tag}"), &labels, n);
        std::thread::sleep(monitor);
    }
    let took = started.elapsed();
    clean_direct(tag);
    took
}

// --- workloads -----------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Deploy,
    Replace,
    Scale,
    Remove,
    Update,
}

impl Workload {
    const ALL: [Workload; 5] = [
        Workload::Deploy,
        Workload::Replace,
        Workload::Scale,
        Workload::Remove,
        Workload::Update,
    ];
    fn key(self) -> &'static str {
        match self {
            Workload::Deploy => "deploy",
            Workload::Replace => "replace",
            Workload::Scale => "scale",
            Workload::Remove => "remove",
            Workload::Update => "update",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Workload::Deploy => "deploy 50 replicas",
            Workload::Replace => "replace a killed container",
            Workload::Scale => "scale 10 -> 30",
            Workload::Remove => "remove 10 (grace 1 s)",
            Workload::Update => "rolling update of 10",
        }
    }
    fn engine_title(self) -> &'static str {
        match self {
            Workload::Deploy => "50 x docker run -d, 8 at once",
            Workload::Replace => "1 x docker run -d",
            Workload::Scale => "20 x docker run -d, 8 at once",
            Workload::Remove => "docker stop -t 1 + rm of 10",
            Workload::Update => "5 x (stop -t 1 + rm 2, run 2, 1 s monitor)",
        }
    }
    /// Most shoal may take relative to Swarm.
    fn target(self) -> f64 {
        match self {
            Workload::Deploy | Workload::Scale => 1.1,
            Workload::Replace => 1.0,
            Workload::Remove => 0.7,
            Workload::Update => 0.85,
        }
    }

    /// One timed run on an orchestrator; leaves nothing behind.
    fn measure(self, o: &dyn Orchestrator, service: &str) -> Duration {
        let labels = o.labels(service);
        let what = format!("{} {service}", o.name());
        let took = match self {
            Workload::Deploy => {
                let started = Instant::now();
                o.create(service, 50);
                wait_running(&what, &labels, 50);
                started.elapsed()
            }
            Workload::Replace => {
                o.create(service, 3);
                wait_running(&what, &labels, 3);
                let victim = container_ids(&labels, false).remove(0);
                let started = Instant::now();
                docker(&["kill", &victim]);
                wait_until(&format!("{what}: the killed container replaced"), || {
                    let running = container_ids(&labels, false);
                    running.len() == 3 && !running.contains(&victim)
                });
                started.elapsed()
            }
            Workload::Scale => {
                o.create(service, 10);
                wait_running(&what, &labels, 10);
                let started = Instant::now();
                o.scale(service, 30);
                wait_running(&what, &labels, 30);
                started.elapsed()
            }
            Workload::Remove => {
                o.create(service, 10);
                wait_running(&what, &labels, 10);
                let started = Instant::now();
                o.remove(service);
                wait_gone(&what, &labels);
                started.elapsed()
            }
            Workload::Update => {
                o.create(service, 10);
                wait_running(&what, &labels, 10);
                let old = container_ids(&labels, false);
                let started = Instant::now();
                o.update(service);
                // Complete: the orchestrator says so, and Docker runs 10
                // containers, none of them an old one.
                wait_until(&format!("{what}: update completed"), || {
                    let running = container_ids(&labels, false);
                    o.update_completed(service)
                        && running.len() == 10
                        && running.iter().all(|id| !old.contains(id))
                });
                started.elapsed()
            }
        };
        o.clean(service);
        took
    }

    fn measure_engine(self, image_id: &str, tag: &str) -> Duration {
        match self {
            Workload::Deploy => engine_start(image_id, tag, 50),
            Workload::Replace => engine_start(image_id, tag, 1),
            Workload::Scale => engine_start(image_id, tag, 20),
            Workload::Remove => engine_remove(image_id, tag, 10),
            Workload::Update => engine_update(image_id, tag, 10, 2, Duration::from_secs(1)),
        }
    }
}

fn median(values: &[Duration]) -> f64 {
    let mut secs: Vec<f64> = values.iter().map(Duration::as_secs_f64).collect();
    secs.sort_by(f64::total_cmp);
    let n = secs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        secs[n / 2]
    } else {
        (secs[n / 2 - 1] + secs[n / 2]) / 2.0
    }
}

fn secs_list(values: &[Duration]) -> Vec<f64> {
    values
        .iter()
        .map(|d| (d.as_secs_f64() * 1000.0).round() / 1000.0)
        .collect()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let rounds = env_num("BENCH_ROUNDS", 3).max(1) as usize;
    let selected: Vec<Workload> = match std::env::var("BENCH_WORKLOADS") {
        Ok(list) if !list.trim().is_empty() => {
            let keys: Vec<&str> = list.split(',').map(str::trim).collect();
            for k in &keys {
                assert!(
                    Workload::ALL.iter().any(|w| w.key() == *k),
                    "BENCH_WORKLOADS: {k:?} is not a workload; use deploy, replace, scale, remove, update"
                );
            }
            Workload::ALL
                .into_iter()
                .filter(|w| keys.contains(&w.key()))
                .collect()
        }
        _ => Workload::ALL.to_vec(),
    };
    let join_role = std::env::var("BENCH_JOIN_ROLE").unwrap_or_else(|_| "manager".into());
    assert!(
        join_role == "manager" || join_role == "worker",
        "BENCH_JOIN_ROLE: {join_role:?} is not a role; use manager or worker"
    );
    let image = std::env::var("SHOAL_TEST_IMAGE").unwrap_or_else(|_| "shoal-test:latest".into());
    let inspect = run(
        "docker",
        &["image", "inspect", "--format", "{{.Id}}", &image],
        CALL_LIMIT,
    );
    if !inspect.status.success() {
        eprintln!("the test image {image} is missing: run scripts/test-image.sh");
        std::process::exit(2);
    }
    let image_id = String::from_utf8_lossy(&inspect.stdout).trim().to_string();
    let engine_version = docker(&["version", "--format", "{{.Server.Version}}"]);

    // Leftovers of a bench run that was killed are this bench's to remove.
    let _direct_guard = DirectContainersGuard;
    force_remove(&[BENCH_LABEL.to_string()]);

    let _swarm_guard = SwarmGuard::init();
    let swarm = Swarm {
        image_id: image_id.clone(),
    };

    let mut cluster = Cluster::new();
    cluster.init("node-a", "127.0.0.1");
    cluster.join("node-b", "127.0.0.2", &join_role);
    cluster.join("node-c", "127.0.0.3", &join_role);
    let shoal = Shoal {
        cluster,
        image: image.clone(),
    };
    println!(
        "Docker {engine_version}; image {image} ({}); single-node swarm on 127.0.0.1; \
         shoal: node-a + 2 {join_role}s on 127.0.0.1-3; {rounds} rounds, median reported",
        &image_id[..19.min(image_id.len())]
    );

    let run_tag = std::process::id();
    let mut rows = Vec::new();
    let mut report = serde_json::Map::new();
    for workload in selected {
        let (mut sw, mut sh, mut en) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=rounds {
            let service = format!("bench-{}-{run_tag}-{round}", workload.key());
            // Alternate who goes first so neither always runs on a warmer engine.
            let order: [&dyn Orchestrator; 2] = if round % 2 == 1 {
                [&swarm, &shoal]
            } else {
                [&shoal, &swarm]
            };
            for o in order {
                let took = workload.measure(o, &service);
                if o.name() == "swarm" {
                    sw.push(took);
                } else {
                    sh.push(took);
                }
            }
            en.push(workload.measure_engine(&image_id, &service));
            println!(
                "  {:<28} round {round}: swarm {:>6.2} s  shoal {:>6.2} s  engine {:>6.2} s",
                workload.title(),
                sw.last().unwrap().as_secs_f64(),
                sh.last().unwrap().as_secs_f64(),
                en.last().unwrap().as_secs_f64()
            );
            let leftovers = container_ids(&[BENCH_LABEL.to_string()], true).len()
                + container_ids(&shoal.labels(&service)[..1], true).len();
            assert_eq!(leftovers, 0, "containers left after round {round}");
        }
        let (swm, shm, enm) = (median(&sw), median(&sh), median(&en));
        let ratio = shm / swm;
        let met = ratio <= workload.target();
        rows.push((workload, swm, shm, ratio, met, enm));
        report.insert(
            workload.key().into(),
            json!({
                "workload": workload.title(),
                "swarm_s": swm, "shoal_s": shm, "engine_s": enm,
                "ratio": ratio, "target": workload.target(), "met": met,
                "engine_workload": workload.engine_title(),
                "rounds": {"swarm": secs_list(&sw), "shoal": secs_list(&sh), "engine": secs_list(&en)},
            }),
        );
    }

    println!(
        "\n{:<28} {:>8} {:>8} {:>12} {:>16} {:>15}  engine workload",
        "workload", "swarm s", "shoal s", "shoal/swarm", "target", "engine-limit s"
    );
    for (w, swm, shm, ratio, met, enm) in &rows {
        let target = format!(
            "<= {:.2} {}",
            w.target(),
            if *met { "met" } else { "MISSED" }
        );
        println!(
            "{:<28} {swm:>8.2} {shm:>8.2} {ratio:>12.2} {target:>16} {enm:>15.2}  {}",
            w.title(),
            w.engine_title()
        );
    }
    report.insert("rounds".into(), json!(rounds));
    report.insert("docker".into(), json!(engine_version));
    report.insert("shoal_join_role".into(), json!(join_role));
    // Print before the guards run so the figures are out even if cleanup is slow.
    println!("{}", serde_json::Value::Object(report));
    drop(shoal);
}
