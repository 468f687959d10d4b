//! Helpers for tests of services on the real Docker engine: a three-node
//! cluster, deploys of the test image, and views of tasks and containers.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::{wait_for, Cluster};

pub const IMAGE: &str = "shoal-test:latest";

pub fn three_nodes() -> Cluster {
    let status = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .expect("docker is installed");
    assert!(
        status.status.success(),
        "the test image {IMAGE} is missing: run scripts/test-image.sh"
    );
    let mut c = Cluster::new();
    c.init("node-a", "127.0.0.1");
    c.join("node-b", "127.0.0.2", "worker");
    c.join("node-c", "127.0.0.3", "worker");
    c
}

pub fn deploy(c: &Cluster, name: &str, extra: &[&str]) {
    let mut args = vec![
        "deploy",
        name,
        "--image",
        IMAGE,
        "--stop-grace-period",
        "1s",
        "--restart-delay",
        "0s",
        "--detach",
    ];
    args.extend_from_slice(extra);
    if !extra.contains(&"--") {
        args.extend_from_slice(&["--", "sleep", "100000"]);
    }
    c.nodes[0].ok(&args);
}

pub fn tasks(c: &Cluster, service: &str) -> Vec<Value> {
    c.nodes[0]
        .json(&["service", "ps", service])
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// Running tasks (desired running) per node name.
pub fn running_per_node(c: &Cluster, service: &str) -> BTreeMap<String, usize> {
    let mut per = BTreeMap::new();
    for t in tasks(c, service) {
        if t["state"] == "running" && t["desired_state"] == "running" {
            let node = t["node_id"].as_u64().unwrap_or(0);
            let name = c.nodes[0]
                .json(&["node", "inspect", &node.to_string()])
                .ok()
                .and_then(|n| n["name"].as_str().map(str::to_string))
                .unwrap_or_default();
            *per.entry(name).or_insert(0) += 1;
        }
    }
    per
}

pub fn running_count(c: &Cluster, service: &str) -> usize {
    tasks(c, service)
        .iter()
        .filter(|t| t["state"] == "running" && t["desired_state"] == "running")
        .count()
}

/// Containers of this cluster and service that Docker reports running.
pub fn docker_running(c: &Cluster, service: &str) -> Vec<String> {
    let id = c.cluster_id.clone().unwrap();
    let out = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=shoal.cluster={id}"),
            "--filter",
            &format!("label=shoal.service={service}"),
        ])
        .output()
        .unwrap();
    let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    ids.sort();
    ids
}

pub fn wait_running(c: &Cluster, service: &str, n: usize, within: Duration) {
    wait_for(within, || {
        (running_count(c, service) == n && docker_running(c, service).len() == n).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{service}: expected {n} running; tasks: {:#?}\nlog a: {}",
            tasks(c, service),
            c.nodes[0].log_text()
        )
    });
}

/// A container's address on its Docker network (the default bridge first
/// when it has several, as `docker inspect` lists them).
pub fn container_ip(id: &str) -> String {
    let out = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            id,
        ])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `docker kill` of one container, which must succeed.
pub fn docker_kill(id: &str) {
    let out = Command::new("docker")
        .args(["kill", id])
        .output()
        .expect("docker kill");
    assert!(
        out.status.success(),
        "docker kill {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
