//! Rolling updates, rollbacks and health checks, end to end: real daemons on
//! 127.0.0.1-3, the machine's Docker engine and the locally built test image.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::services::{deploy, docker_running, running_count, tasks, three_nodes, wait_running};
use common::{wait_for, Cluster};
use serde_json::Value;

/// The fewest running tasks and containers seen while sampling, and the
/// most containers.
#[derive(Debug, Clone, Copy)]
struct Minimum {
    tasks: usize,
    containers: usize,
    most_containers: usize,
    samples: usize,
}

/// Samples how many tasks of `service` run (as the cluster records them) and
/// how many of its containers Docker runs, until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    min: Arc<Mutex<Minimum>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(c: &Cluster, service: &str) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let min = Arc::new(Mutex::new(Minimum {
            tasks: usize::MAX,
            containers: usize::MAX,
            most_containers: 0,
            samples: 0,
        }));
        let (dir, id) = (c.nodes[0].dir.clone(), c.cluster_id.clone().unwrap());
        let (stop2, min2, service) = (stop.clone(), min.clone(), service.to_string());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Acquire) {
                let out = std::process::Command::new(common::BIN)
                    .arg("--data-dir")
                    .arg(&dir)
                    .args(["service", "ps", &service, "--json"])
                    .output()
                    .unwrap();
                let containers = docker_running_of(&id, &service);
                let Ok(Value::Array(all)) = serde_json::from_slice::<Value>(&out.stdout) else {
                    continue;
                };
                let running = all
                    .iter()
                    .filter(|t| t["state"] == "running" && t["desired_state"] == "running")
                    .count();
                let mut m = min2.lock().unwrap();
                m.tasks = m.tasks.min(running);
                m.containers = m.containers.min(containers);
                m.most_containers = m.most_containers.max(containers);
                m.samples += 1;
                drop(m);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Sampler {
            stop,
            min,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Minimum {
        self.stop.store(true, Ordering::Release);
        self.thread.take().unwrap().join().unwrap();
        *self.min.lock().unwrap()
    }
}

fn docker_running_of(cluster_id: &str, service: &str) -> usize {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=shoal.cluster={cluster_id}"),
            "--filter",
            &format!("label=shoal.service={service}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .count()
}

fn inspect(c: &Cluster, node: usize, service: &str) -> Value {
    c.nodes[node]
        .json(&["service", "inspect", service])
        .unwrap()
}

fn update_state(c: &Cluster, node: usize, service: &str) -> String {
    c.nodes[node]
        .json(&["service", "inspect", service])
        .ok()
        .and_then(|v| v["update"]["state"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Tasks per slot made from `version`.
fn tasks_of_version(c: &Cluster, node: usize, service: &str, version: u64) -> BTreeMap<u64, usize> {
    let all = c.nodes[node]
        .json(&["service", "ps", service])
        .unwrap()
        .as_array()
        .cloned()
        .unwrap();
    let mut per_slot = BTreeMap::new();
    for t in all.iter().filter(|t| t["spec_version"] == version) {
        *per_slot.entry(t["slot"].as_u64().unwrap()).or_insert(0) += 1;
    }
    per_slot
}

/// Every running task runs `version`, and the containers run `cmd`.
fn assert_all_on(c: &Cluster, service: &str, version: u64, cmd: &[&str]) {
    let running: Vec<Value> = tasks(c, service)
        .into_iter()
        .filter(|t| t["desired_state"] == "running")
        .collect();
    assert!(
        running
            .iter()
            .all(|t| t["spec_version"] == version && t["state"] == "running"),
        "{running:#?}"
    );
    for id in docker_running(c, service) {
        let out = std::process::Command::new("docker")
            .args(["inspect", "--format", "{{json .Config.Cmd}}", &id])
            .output()
            .unwrap();
        let got: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got, cmd, "container {id}");
    }
}

fn rolling_update(order: &str, fewest: usize, most: usize) {
    let c = three_nodes();
    deploy(&c, "web", &["--replicas", "6"]);
    wait_running(&c, "web", 6, Duration::from_secs(60));
    let sampler = Sampler::start(&c, "web");
    // Without --detach, deploy follows the update until it completes.
    let out = c.nodes[0].ok(&[
        "deploy",
        "web",
        "--image",
        common::services::IMAGE,
        "--replicas",
        "6",
        "--stop-grace-period",
        "1s",
        "--restart-delay",
        "0s",
        "--update-parallelism",
        "2",
        "--update-order",
        order,
        "--update-monitor",
        "1s",
        "--",
        "sleep",
        "200000",
    ]);
    let min = sampler.finish();
    println!("{order}: {min:?}\n{out}");
    assert!(min.samples > 10, "too few samples: {min:?}");
    assert!(min.tasks >= fewest, "{order}: {min:?}");
    assert!(min.containers >= fewest, "{order}: {min:?}");
    assert!(min.most_containers <= most, "{order}: {min:?}");
    assert_eq!(update_state(&c, 0, "web"), "completed");
    assert_all_on(&c, "web", 2, &["sleep", "200000"]);
    let per_slot = tasks_of_version(&c, 0, "web", 2);
    assert_eq!(
        per_slot,
        (1..=6).map(|s| (s, 1)).collect(),
        "one new task per slot"
    );
    assert_eq!(running_count(&c, "web"), 6);
}

#[test]
fn a_stop_first_update_keeps_all_but_parallelism_running() {
    // Stop-first: a new container starts only once the old one has stopped.
    rolling_update("stop-first", 4, 6);
}

#[test]
fn a_start_first_update_never_drops_below_the_replica_count() {
    rolling_update("start-first", 6, 8);
}

/// Deploys `web` with 4 healthy replicas (a passing health check).
fn healthy_web(c: &Cluster) -> Vec<String> {
    deploy(
        c,
        "web",
        &[
            "--replicas",
            "4",
            "--health-cmd",
            "true",
            "--health-interval",
            "1s",
        ],
    );
    wait_running(c, "web", 4, Duration::from_secs(60));
    let all = tasks(c, "web");
    assert!(
        all.iter().all(|t| t["health"] == "healthy"),
        "a task counts as running once healthy: {all:#?}"
    );
    docker_running(c, "web")
}

/// Redeploys `web` with a failing health check; returns the CLI's output.
fn failing_update(c: &Cluster, action: &str) -> std::process::Output {
    c.nodes[0].cli(&[
        "deploy",
        "web",
        "--image",
        common::services::IMAGE,
        "--replicas",
        "4",
        "--stop-grace-period",
        "1s",
        "--restart-delay",
        "0s",
        "--health-cmd",
        "exit 1",
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
        "--update-parallelism",
        "2",
        "--update-monitor",
        "3s",
        "--update-failure-action",
        action,
        "--",
        "sleep",
        "100000",
    ])
}

#[test]
fn a_failing_health_check_rolls_the_update_back() {
    let c = three_nodes();
    let before = healthy_web(&c);
    let out = failing_update(&c, "rollback");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a rolled-back update exits non-zero");
    assert!(
        stderr.contains("health check") && stderr.contains("roll"),
        "the error says why: {stderr}"
    );
    wait_for(Duration::from_secs(60), || {
        (update_state(&c, 0, "web") == "rolled-back").then_some(())
    })
    .unwrap_or_else(|| panic!("not rolled back: {:#}", inspect(&c, 0, "web")));
    wait_running(&c, "web", 4, Duration::from_secs(60));
    let svc = inspect(&c, 0, "web");
    assert_eq!(svc["spec"]["health_cmd"], "true", "{svc:#}");
    assert_eq!(svc["previous_spec"]["health_cmd"], "exit 1", "{svc:#}");
    // The slots the update never reached kept their containers.
    let after = docker_running(&c, "web");
    let kept = before.iter().filter(|id| after.contains(id)).count();
    assert!(kept >= 2, "kept {kept} of {before:?} in {after:?}");
    let failed: Vec<Value> = tasks(&c, "web")
        .into_iter()
        .filter(|t| t["state"] == "failed")
        .collect();
    assert!(!failed.is_empty());
    assert!(
        failed.iter().all(|t| t["health"] == "unhealthy"),
        "{failed:#?}"
    );
}

#[test]
fn a_failing_health_check_pauses_the_update_and_says_why() {
    let c = three_nodes();
    healthy_web(&c);
    let out = failing_update(&c, "pause");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a paused update exits non-zero");
    assert!(
        stderr.contains("paused") && stderr.contains("failed its health check"),
        "{stderr}"
    );
    let svc = inspect(&c, 0, "web");
    assert_eq!(svc["update"]["state"], "paused", "{svc:#}");
    let message = svc["update"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("update paused at 0/4: task web."),
        "{message}"
    );
    // The two slots not reached still run the old, healthy spec.
    let old_running = tasks(&c, "web")
        .into_iter()
        .filter(|t| t["spec_version"] == 1 && t["state"] == "running")
        .count();
    assert_eq!(old_running, 2);
}

#[test]
fn an_update_survives_a_leader_failover_without_restarting_a_slot_twice() {
    let mut c = Cluster::new();
    c.init("node-a", "127.0.0.1");
    c.join("node-b", "127.0.0.2", "manager");
    c.join("node-c", "127.0.0.3", "manager");
    // The first leader runs no tasks, so killing it loses none.
    c.nodes[0].ok(&["node", "update", "node-a", "--availability", "drain"]);
    deploy(&c, "web", &["--replicas", "4"]);
    wait_running(&c, "web", 4, Duration::from_secs(60));
    c.nodes[0].ok(&[
        "deploy",
        "web",
        "--image",
        common::services::IMAGE,
        "--replicas",
        "4",
        "--stop-grace-period",
        "1s",
        "--restart-delay",
        "0s",
        "--update-parallelism",
        "1",
        "--update-monitor",
        "2s",
        "--detach",
        "--",
        "sleep",
        "200000",
    ]);
    // Once the second slot is under way, the leader dies.
    wait_for(Duration::from_secs(60), || {
        (tasks_of_version(&c, 0, "web", 2).len() >= 2).then_some(())
    })
    .expect("the update reached a second slot");
    assert_eq!(c.leader(), Some(0));
    c.nodes[0].kill();
    wait_for(Duration::from_secs(90), || {
        (update_state(&c, 1, "web") == "completed").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the new leader did not finish the update: {:#}\n{}",
            inspect(&c, 1, "web"),
            c.nodes[1].log_text()
        )
    });
    let per_slot = tasks_of_version(&c, 1, "web", 2);
    assert_eq!(
        per_slot,
        (1..=4).map(|s| (s, 1)).collect(),
        "each slot updated once"
    );
    let running: Vec<Value> = c.nodes[1]
        .json(&["service", "ps", "web"])
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
        .into_iter()
        .filter(|t| t["state"] == "running" && t["desired_state"] == "running")
        .collect();
    assert_eq!(running.len(), 4);
    assert!(running.iter().all(|t| t["spec_version"] == 2));
}
