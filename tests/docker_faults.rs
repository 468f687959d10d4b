//! Docker faults, end to end: real daemons on the machine's Docker engine
//! and the locally built test image (`scripts/test-image.sh`).
//!
//! - The engine's socket goes away for ten seconds: a node reaches the
//!   engine through a Unix-socket forwarder this test owns (`DOCKER_HOST`),
//!   never by touching the engine's own socket, which other tests use too.
//! - A task's container is killed by the kernel's OOM killer.
//! - The image of a running service is deleted (a tag of its own, made for
//!   the test: the shared test image is never removed).
//! - A task's container is removed behind shoal's back (`docker rm -f`).
//!
//! Run with `SHOAL_DOCKER_TESTS=1 cargo test --test docker_faults --
//! --test-threads=1 --nocapture` (the recovery times are printed).

mod common;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::services::{deploy, docker_running, running_count, running_per_node, tasks, IMAGE};
use common::{wait_for, Cluster};
use serde_json::Value;

fn docker_tests() -> bool {
    let on = std::env::var("SHOAL_DOCKER_TESTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("skipped: set SHOAL_DOCKER_TESTS=1 to run tests on the Docker engine");
    }
    on
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker is installed")
}

fn require_image() {
    assert!(
        docker(&["image", "inspect", IMAGE]).status.success(),
        "the test image {IMAGE} is missing: run scripts/test-image.sh"
    );
}

/// A one-node cluster (the leader runs the tasks).
fn one_node() -> Cluster {
    require_image();
    let mut c = Cluster::new();
    c.init("node-a", "127.0.0.1");
    c
}

/// The engine's socket on this machine: `DOCKER_HOST` when it names one.
fn engine_socket() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("unix://") => PathBuf::from(&host["unix://".len()..]),
        _ => PathBuf::from("/var/run/docker.sock"),
    }
}

/// A Unix-socket forwarder to the engine that a test can take away (the
/// socket file disappears and every forwarded connection is cut, as when
/// dockerd stops) and bring back at the same path.
struct EngineProxy {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl EngineProxy {
    fn start(path: &Path) -> EngineProxy {
        let mut proxy = EngineProxy {
            path: path.to_path_buf(),
            stop: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
            accept: None,
        };
        proxy.restore();
        proxy
    }

    fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Listens again at the same path.
    fn restore(&mut self) {
        assert!(self.accept.is_none(), "the proxy is already up");
        let listener = UnixListener::bind(&self.path).expect("bind the proxy socket");
        listener.set_nonblocking(true).unwrap();
        self.stop.store(false, Ordering::SeqCst);
        let stop = self.stop.clone();
        let conns = self.conns.clone();
        let upstream_path = engine_socket();
        self.accept = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(_) => continue,
                };
                client.set_nonblocking(false).unwrap();
                let Ok(upstream) = UnixStream::connect(&upstream_path) else {
                    continue;
                };
                {
                    let mut open = conns.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(upstream.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        }));
    }

    /// The engine "goes away": no socket file, every connection cut.
    fn cut(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            accept.join().unwrap();
        }
        let _ = std::fs::remove_file(&self.path);
        for conn in self.conns.lock().unwrap().drain(..) {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// CPU time (user + system) a process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the daemon runs");
    // The command name may hold spaces: fields are counted after its ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second: u64 = String::from_utf8(
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    Duration::from_millis(ticks * 1_000 / per_second)
}

fn node_engine_error(c: &Cluster, name: &str) -> Option<String> {
    let node = c.nodes[0].json(&["node", "inspect", name]).ok()?;
    node["engine_error"].as_str().map(str::to_string)
}

#[test]
fn engine_socket_gone_for_ten_seconds_is_reported_then_recovered() {
    if !docker_tests() {
        return;
    }
    require_image();
    let scratch = tempfile::tempdir().unwrap();
    let mut proxy = EngineProxy::start(&scratch.path().join("docker.sock"));
    let mut c = Cluster::new();
    c.init("node-a", "127.0.0.1");
    c.join_with_env(
        "node-b",
        "127.0.0.2",
        "worker",
        &[("DOCKER_HOST", &proxy.docker_host())],
    );
    deploy(&c, "web", &["--replicas", "2"]);
    common::services::wait_running(&c, "web", 2, Duration::from_secs(60));
    let per = running_per_node(&c, "web");
    assert_eq!(per.get("node-b"), Some(&1), "{per:?}");
    let before: BTreeSet<String> = docker_running(&c, "web").into_iter().collect();
    let pid = c.nodes[1].child.as_ref().unwrap().id();

    let outage = Duration::from_secs(10);
    let cpu_before = cpu_time(pid);
    let cut = Instant::now();
    proxy.cut();
    let error = wait_for(Duration::from_secs(10), || node_engine_error(&c, "node-b"))
        .unwrap_or_else(|| {
            panic!(
                "node-b never reported its engine: {}",
                c.nodes[1].log_text()
            )
        });
    let reported_after = cut.elapsed();
    assert!(error.contains("unreachable"), "{error}");
    // `node ls` shows it too, and `node inspect` in its text form.
    let ls = c.nodes[0].json(&["node", "ls"]).unwrap();
    let b = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node-b")
        .unwrap();
    assert_eq!(b["engine_error"].as_str(), Some(error.as_str()));
    assert_eq!(b["status"], "ready", "the daemon itself is fine: {b}");
    let table = c.nodes[0].ok(&["node", "ls"]);
    let row = table.lines().find(|l| l.contains("node-b")).unwrap_or("");
    assert!(row.contains("ready (engine unavailable)"), "{table}");
    let text = c.nodes[0].ok(&["node", "inspect", "node-b"]);
    let engine_line = text
        .lines()
        .find(|l| l.starts_with("Engine:"))
        .unwrap_or("");
    assert!(engine_line.contains("unavailable ("), "{text}");

    // Meanwhile new tasks go to the node whose engine answers.
    c.nodes[0].ok(&["service", "scale", "web=4", "--detach"]);
    wait_for(Duration::from_secs(30), || {
        let per = running_per_node(&c, "web");
        (per.get("node-a") == Some(&3)).then_some(())
    })
    .unwrap_or_else(|| panic!("scale during the outage: {:#?}", tasks(&c, "web")));
    assert!(
        !tasks(&c, "web").iter().any(|t| t["node_name"] == "node-b"
            && t["desired_state"] == "running"
            && t["state"] != "running"),
        "a new task was given to node-b: {:#?}",
        tasks(&c, "web")
    );

    if let Some(rest) = outage.checked_sub(cut.elapsed()) {
        std::thread::sleep(rest);
    }
    let cpu = cpu_time(pid) - cpu_before;
    let window = cut.elapsed();
    assert!(c.nodes[1].is_running(), "node-b's daemon died");
    println!(
        "engine away {window:?}: reported after {reported_after:?}; node-b used {cpu:?} of CPU \
         ({:.1}% of one core)",
        cpu.as_secs_f64() * 100.0 / window.as_secs_f64()
    );
    // A busy loop would take a whole core; an idle debug daemon takes a
    // few percent.
    assert!(
        cpu < window / 5,
        "node-b used {cpu:?} of CPU in {window:?} of outage"
    );

    proxy.restore();
    let restored = Instant::now();
    wait_for(Duration::from_secs(20), || {
        node_engine_error(&c, "node-b").is_none().then_some(())
    })
    .unwrap_or_else(|| panic!("node-b's engine error stayed: {}", c.nodes[1].log_text()));
    println!(
        "engine error cleared {:?} after the socket returned",
        restored.elapsed()
    );
    // Node-b's task ran through the outage and is still its own: the same
    // containers, four running, none doubled.
    common::services::wait_running(&c, "web", 4, Duration::from_secs(30));
    let after: BTreeSet<String> = docker_running(&c, "web").into_iter().collect();
    assert!(
        before.is_subset(&after),
        "before {before:?}, after {after:?}"
    );
    assert_eq!(running_per_node(&c, "web").get("node-b"), Some(&1));
    assert!(c.nodes[1].is_running(), "node-b's daemon died");
}

#[test]
fn the_leaders_own_engine_outage_is_recorded_and_its_tasks_wait() {
    if !docker_tests() {
        return;
    }
    require_image();
    let scratch = tempfile::tempdir().unwrap();
    let mut proxy = EngineProxy::start(&scratch.path().join("docker.sock"));
    let mut c = Cluster::new();
    c.init_with_env(
        "node-a",
        "127.0.0.1",
        &[("DOCKER_HOST", &proxy.docker_host())],
    );
    proxy.cut();
    let error = wait_for(Duration::from_secs(10), || node_engine_error(&c, "node-a"))
        .unwrap_or_else(|| {
            panic!(
                "the leader never recorded its engine: {}",
                c.nodes[0].log_text()
            )
        });
    assert!(error.contains("unreachable"), "{error}");
    // A deploy now has nowhere to go, and says why (once the scheduler
    // has looked at it: a new task is pending with no message at first).
    deploy(&c, "web", &["--replicas", "1"]);
    wait_for(Duration::from_secs(10), || {
        let t = tasks(&c, "web").into_iter().next()?;
        let why = t["message"].as_str()?;
        (t["state"] == "pending" && why.contains("container engine unavailable")).then_some(())
    })
    .unwrap_or_else(|| panic!("no pending task saying why: {:#?}", tasks(&c, "web")));
    proxy.restore();
    common::services::wait_running(&c, "web", 1, Duration::from_secs(30));
    assert!(node_engine_error(&c, "node-a").is_none());
    assert!(c.nodes[0].is_running());
}

#[test]
fn an_oom_killed_task_fails_saying_so_and_is_replaced() {
    if !docker_tests() {
        return;
    }
    let mut c = one_node();
    // The default restart delay (5 s): each attempt is OOM killed again.
    c.nodes[0].ok(&[
        "deploy",
        "hog",
        "--image",
        IMAGE,
        "--memory",
        "16m",
        "--stop-grace-period",
        "1s",
        "--detach",
        "--",
        "sh",
        "-c",
        "head -c 200m /dev/zero | tail",
    ]);
    let started = Instant::now();
    let killed = wait_for(Duration::from_secs(60), || {
        tasks(&c, "hog")
            .into_iter()
            .find(|t| t["state"] == "failed")
    })
    .unwrap_or_else(|| panic!("no failed task: {:#?}", tasks(&c, "hog")));
    println!("OOM kill reported after {:?}", started.elapsed());
    assert_eq!(killed["message"], "OOM killed", "{killed}");
    assert_eq!(killed["exit_code"], 137, "{killed}");
    let error = killed["error"].as_str().unwrap();
    assert!(error.contains("OOM killed"), "{error}");
    assert!(error.contains("16MiB"), "{error}");
    assert!(error.contains("exit code 137"), "{error}");

    // Replaced under the restart policy, after its delay.
    let first = killed["id"].as_str().unwrap().to_string();
    let replacement = wait_for(Duration::from_secs(30), || {
        tasks(&c, "hog")
            .into_iter()
            .find(|t| t["id"] != first.as_str() && t["restart_count"].as_u64() >= Some(1))
    })
    .unwrap_or_else(|| panic!("not replaced: {:#?}", tasks(&c, "hog")));
    assert_eq!(replacement["slot"], 1, "{replacement}");
    assert!(c.nodes[0].is_running());
    c.nodes[0].ok(&["service", "rm", "hog"]);
}

/// A tag of the test image for one test; removed again when dropped.
struct DoomedTag(String);

impl DoomedTag {
    fn new() -> DoomedTag {
        let tag = format!("shoal-test-doomed:{}", std::process::id());
        assert!(docker(&["tag", IMAGE, &tag]).status.success());
        DoomedTag(tag)
    }
}

impl Drop for DoomedTag {
    fn drop(&mut self) {
        let _ = docker(&["rmi", &self.0]);
    }
}

/// Rejected tasks of `service` seen so far, by id.
fn note_rejected(c: &Cluster, service: &str, seen: &mut BTreeSet<String>) -> Option<Value> {
    let mut last = None;
    for t in tasks(c, service) {
        if t["state"] == "rejected" {
            seen.insert(t["id"].as_str().unwrap().to_string());
            last = Some(t);
        }
    }
    last
}

#[test]
fn a_deleted_image_keeps_running_tasks_and_rejects_replacements_without_a_hot_loop() {
    if !docker_tests() {
        return;
    }
    let mut c = one_node();
    let doomed = DoomedTag::new();
    c.nodes[0].ok(&[
        "deploy",
        "doomed",
        "--image",
        &doomed.0,
        "--replicas",
        "2",
        "--stop-grace-period",
        "1s",
        // No delay of its own: the only brake on retries is shoal's.
        "--restart-delay",
        "0s",
        "--detach",
        "--",
        "sleep",
        "100000",
    ]);
    common::services::wait_running(&c, "doomed", 2, Duration::from_secs(60));

    // Untagged under the running service: its containers run on.
    assert!(docker(&["rmi", &doomed.0]).status.success());
    assert!(!docker(&["image", "inspect", &doomed.0]).status.success());
    std::thread::sleep(Duration::from_secs(2));
    let running = docker_running(&c, "doomed");
    assert_eq!(running.len(), 2);
    assert_eq!(running_count(&c, "doomed"), 2);

    // One container dies: its replacement cannot get the image (no
    // registry is reachable) and is rejected, saying why.
    let victim = running[0].clone();
    assert!(docker(&["kill", &victim]).status.success());
    let mut rejected = BTreeSet::new();
    let first = wait_for(Duration::from_secs(30), || {
        note_rejected(&c, "doomed", &mut rejected)
    })
    .unwrap_or_else(|| panic!("no rejected replacement: {:#?}", tasks(&c, "doomed")));
    let error = first["error"].as_str().unwrap();
    assert!(error.contains(&doomed.0), "{error}");
    assert!(error.contains("could not be pulled"), "{error}");
    assert_eq!(first["message"], "image unavailable", "{first}");

    // Retries slow down (1 s, 2 s, 4 s, 8 s after each rejection): at most
    // five in twelve seconds, where an unbraked loop makes dozens.
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(12) {
        note_rejected(&c, "doomed", &mut rejected);
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "{} rejected attempts in the 12 s after the first",
        rejected.len() - 1
    );
    assert!(
        (2..=6).contains(&rejected.len()),
        "{} rejections: {:#?}",
        rejected.len(),
        tasks(&c, "doomed")
    );
    // The other container ran throughout.
    assert!(docker_running(&c, "doomed").contains(&running[1]));
    assert!(c.nodes[0].is_running());

    // The image is back: the next retry runs.
    let back = Instant::now();
    assert!(docker(&["tag", IMAGE, &doomed.0]).status.success());
    common::services::wait_running(&c, "doomed", 2, Duration::from_secs(40));
    println!(
        "slot running again {:?} after the image returned",
        back.elapsed()
    );
    c.nodes[0].ok(&["service", "rm", "doomed"]);
}

#[test]
fn a_container_removed_behind_shoals_back_is_reported_and_replaced() {
    if !docker_tests() {
        return;
    }
    let mut c = one_node();
    deploy(&c, "web", &["--replicas", "2"]);
    common::services::wait_running(&c, "web", 2, Duration::from_secs(60));
    let victim = docker_running(&c, "web")[0].clone();
    let removed = Instant::now();
    assert!(docker(&["rm", "-f", &victim]).status.success());
    wait_for(Duration::from_secs(30), || {
        let now = docker_running(&c, "web");
        (now.len() == 2 && !now.contains(&victim) && running_count(&c, "web") == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("not replaced: {:#?}", tasks(&c, "web")));
    println!(
        "replacement running {:?} after docker rm -f",
        removed.elapsed()
    );
    let gone = tasks(&c, "web")
        .into_iter()
        .find(|t| t["message"] == "container disappeared")
        .unwrap_or_else(|| panic!("no task says so: {:#?}", tasks(&c, "web")));
    assert_eq!(gone["state"], "failed", "{gone}");
    assert!(
        gone["error"]
            .as_str()
            .unwrap()
            .contains("removed outside shoal"),
        "{gone}"
    );
    assert!(c.nodes[0].is_running());
}
