//! Quorum loss, end to end: real `shoal` processes on 127.0.0.1-6, tasks in
//! the in-memory engine (`SHOAL_FAKE_RUNTIME`). Two of three managers are
//! SIGKILLed for good; `shoal run --force-new-cluster` on the survivor
//! rebuilds a one-manager cluster from its state, keeping the services and
//! their tasks, and new managers join it as usual.

mod common;

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{wait_for, Cluster, Daemon, BIN};
use serde_json::Value;

const FAKE: &[(&str, &str)] = &[("SHOAL_FAKE_RUNTIME", "web:1")];

/// Starts `shoal <args>` on `d`'s data dir, logging to its log file.
fn spawn(d: &Daemon, args: &[&str]) -> Child {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&d.log)
        .unwrap();
    Command::new(BIN)
        .arg("--data-dir")
        .arg(&d.dir)
        .arg("--log-level")
        .arg("info")
        .args(args)
        .envs(FAKE.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn shoal daemon")
}

/// `shoal run --force-new-cluster` on `d`, which must not be running.
fn force_new_cluster(d: &mut Daemon) {
    assert!(d.child.is_none(), "{} is still running", d.name);
    d.child = Some(spawn(d, &["run", "--force-new-cluster"]));
}

/// Runs `shoal run --force-new-cluster` on `d` and expects it to refuse:
/// the daemon exits with a failure, and its log says why.
fn force_is_refused(d: &Daemon, why: &str) {
    let before = d.log_text().len();
    let mut child = spawn(d, &["run", "--force-new-cluster"]);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let log = d.log_text()[before..].to_string();
    match status {
        Some(status) => assert!(!status.success(), "the recovery was not refused: {log}"),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the refused recovery did not exit: {log}");
        }
    }
    assert!(log.contains("--force-new-cluster refused"), "{log}");
    assert!(log.contains(why), "expected {why:?} in: {log}");
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    wait_for(within, || child.try_wait().unwrap())
}

fn nodes(d: &Daemon) -> Option<Vec<Value>> {
    d.json(&["node", "ls"]).ok()?.as_array().cloned()
}

fn names(nodes: &[Value]) -> BTreeSet<String> {
    nodes
        .iter()
        .filter_map(|n| n["name"].as_str().map(str::to_string))
        .collect()
}

fn node_id(d: &Daemon, name: &str) -> u64 {
    d.json(&["node", "inspect", name]).unwrap()["id"]
        .as_u64()
        .unwrap()
}

/// Node ids of the tasks of `service` that run and should.
fn running_on(d: &Daemon, service: &str) -> Option<Vec<u64>> {
    let tasks = d.json(&["service", "ps", service]).ok()?;
    let mut on: Vec<u64> = tasks
        .as_array()?
        .iter()
        .filter(|t| t["state"] == "running" && t["desired_state"] == "running")
        .filter_map(|t| t["node_id"].as_u64())
        .collect();
    on.sort_unstable();
    Some(on)
}

/// Waits until `service` has exactly `replicas` running tasks, none on
/// `avoid`; returns the nodes they run on.
fn wait_tasks(
    d: &Daemon,
    service: &str,
    replicas: usize,
    avoid: &[u64],
    within: Duration,
) -> Vec<u64> {
    wait_for(within, || {
        let on = running_on(d, service)?;
        (on.len() == replicas && !on.iter().any(|id| avoid.contains(id))).then_some(on)
    })
    .unwrap_or_else(|| {
        panic!(
            "{service}: expected {replicas} running tasks, none on {avoid:?}; tasks: {:#}\nlog of {}: {}",
            d.json(&["service", "ps", service]).unwrap_or_default(),
            d.name,
            d.log_text()
        )
    })
}

/// The leader's name and the term as `d` sees them.
fn leader_of(d: &Daemon) -> Option<(String, u64)> {
    let st = d.json(&["status"]).ok()?;
    Some((
        st["leader_name"].as_str()?.to_string(),
        st["term"].as_u64()?,
    ))
}

#[test]
fn a_lone_surviving_manager_rebuilds_the_cluster_and_new_managers_join_it() {
    let mut c = Cluster::new();
    c.init_with_env("node-a", "127.0.0.1", FAKE);
    c.join_with_env("node-b", "127.0.0.2", "manager", FAKE);
    c.join_with_env("node-c", "127.0.0.3", "manager", FAKE);
    c.join_with_env("node-w", "127.0.0.4", "worker", FAKE);
    let (a, b, cc, w) = (
        node_id(&c.nodes[0], "node-a"),
        node_id(&c.nodes[0], "node-b"),
        node_id(&c.nodes[0], "node-c"),
        node_id(&c.nodes[0], "node-w"),
    );
    c.nodes[0].ok(&[
        "deploy",
        "web",
        "--image",
        "web:1",
        "--replicas",
        "4",
        "--restart-delay",
        "0s",
        "--detach",
    ]);
    let on = wait_tasks(&c.nodes[0], "web", 4, &[], Duration::from_secs(60));
    // Spread: the managers about to be lost hold tasks that must move.
    assert!(
        on.contains(&b) && on.contains(&cc),
        "tasks on {on:?}, expected some on {b} and {cc}"
    );

    // Two managers lost for good.
    c.nodes[1].kill();
    c.nodes[2].kill();

    // Writes now fail, saying why (a leader that lost its quorum refuses
    // them; a follower finds no leader).
    let mut seen = Vec::new();
    let refused = wait_for(Duration::from_secs(60), || {
        let out = c.nodes[0].cli(&["node", "update", "node-w", "--label-add", "during=loss"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        seen.push(err.clone());
        (!out.status.success() && err.contains("quorum")).then_some(err)
    })
    .unwrap_or_else(|| {
        panic!("a write without quorum did not fail with a quorum error: {seen:#?}")
    });
    println!("a write without quorum: {}", refused.trim());
    wait_for(Duration::from_secs(30), || {
        let st = c.nodes[0].json(&["status"]).ok()?;
        (st["quorum"]["healthy"] == false && st["leader_id"].is_null()).then_some(())
    })
    .expect("status on the survivor shows no leader and no healthy quorum");

    // The recovery, on the survivor.
    c.nodes[0].kill();
    let started = Instant::now();
    force_new_cluster(&mut c.nodes[0]);
    let survivor = &c.nodes[0];
    wait_for(Duration::from_secs(60), || {
        let st = survivor.json(&["status"]).ok()?;
        let leads = st["leader_name"] == "node-a" && st["quorum"]["healthy"] == true;
        (leads && st["quorum"]["voters"] == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("node-a does not lead alone: {}", survivor.log_text()));
    let led_after = started.elapsed();
    let log = survivor.log_text();
    assert!(log.contains("FORCING A NEW CLUSTER"), "{log}");
    assert!(
        log.contains("node-b (id 2)") && log.contains("node-c (id 3)"),
        "the log names the removed managers: {log}"
    );

    // The lost managers are gone; the worker is still there and ready.
    let listed = wait_for(Duration::from_secs(30), || {
        let listed = nodes(survivor)?;
        let w_ready = listed
            .iter()
            .any(|n| n["name"] == "node-w" && n["status"] == "ready");
        w_ready.then_some(listed)
    })
    .expect("node ls on the recovered cluster");
    assert_eq!(
        names(&listed),
        ["node-a", "node-w"].map(String::from).into(),
        "{listed:?}"
    );
    let me = listed.iter().find(|n| n["name"] == "node-a").unwrap();
    assert_eq!(me["leader"], true, "{me}");
    assert_eq!(me["voter"], true, "{me}");

    // The service kept its replicas; the lost managers' tasks moved to live
    // nodes.
    let on = wait_tasks(survivor, "web", 4, &[b, cc], Duration::from_secs(60));
    assert!(on.iter().all(|id| *id == a || *id == w), "{on:?}");
    let recovered_in = started.elapsed();

    // Writes work again.
    survivor.ok(&["service", "scale", "web=6"]);
    wait_tasks(survivor, "web", 6, &[b, cc], Duration::from_secs(60));

    // New managers join with the manager token, as on any cluster.
    c.join_with_env("node-d", "127.0.0.5", "manager", FAKE);
    c.join_with_env("node-e", "127.0.0.6", "manager", FAKE);
    let st = wait_for(Duration::from_secs(30), || {
        let st = c.nodes[0].json(&["status"]).ok()?;
        (st["quorum"]["voters"] == 3 && st["quorum"]["healthy"] == true).then_some(st)
    })
    .unwrap_or_else(|| panic!("no three-voter cluster: {}", c.nodes[0].log_text()));
    let voters: BTreeSet<String> = st["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        voters,
        ["node-a", "node-d", "node-e"].map(String::from).into()
    );

    // That cluster survives the loss of its leader.
    let (old_leader, old_term) = leader_of(&c.nodes[0]).expect("a leader");
    let old_id = node_id(&c.nodes[0], &old_leader);
    let killed = c.nodes.iter().position(|n| n.name == old_leader).unwrap();
    c.nodes[killed].kill();
    let asked = ["node-a", "node-d", "node-e"]
        .into_iter()
        .find(|name| *name != old_leader)
        .unwrap();
    let other = &c.nodes[c.nodes.iter().position(|n| n.name == asked).unwrap()];
    let (new_leader, _) = wait_for(Duration::from_secs(30), || {
        let (name, term) = leader_of(other)?;
        (name != old_leader && term > old_term).then_some((name, term))
    })
    .unwrap_or_else(|| panic!("no new leader after {old_leader}: {}", other.log_text()));
    assert!(["node-a", "node-d", "node-e"].contains(&new_leader.as_str()));
    other.ok(&["service", "scale", "web=5"]);
    // The old leader's tasks move once it is marked down.
    wait_tasks(other, "web", 5, &[old_id, b, cc], Duration::from_secs(60));
    println!(
        "recovery: node-a led alone {:.2}s after `run --force-new-cluster`, all 4 tasks ran on live nodes after {:.2}s",
        led_after.as_secs_f64(),
        recovered_in.as_secs_f64()
    );
}

#[test]
fn force_new_cluster_refuses_where_it_makes_no_sense_and_changes_nothing() {
    let mut c = Cluster::new();
    c.init_with_env("node-a", "127.0.0.1", FAKE);
    c.join_with_env("node-w", "127.0.0.4", "worker", FAKE);

    // Not a cluster's data dir at all.
    let empty = Daemon {
        name: "empty".into(),
        ip: "127.0.0.9".into(),
        port: c.port,
        dir: c.root.path().join("empty"),
        child: None,
        log: c.root.path().join("empty.log"),
    };
    let mut child = spawn(&empty, &["run", "--force-new-cluster"]);
    let status = wait_exit(&mut child, Duration::from_secs(30)).expect("exits");
    assert!(!status.success());
    assert!(
        empty.log_text().contains("not a shoal data dir"),
        "{}",
        empty.log_text()
    );

    // While the daemon runs, its data dir is taken.
    let before = c.nodes[1].log_text().len();
    let mut second = spawn(&c.nodes[1], &["run", "--force-new-cluster"]);
    let status = wait_exit(&mut second, Duration::from_secs(30)).expect("exits");
    assert!(!status.success());
    let log = c.nodes[1].log_text()[before..].to_string();
    assert!(log.contains("another shoal daemon is using it"), "{log}");

    // A worker holds no cluster state.
    c.nodes[1].kill();
    force_is_refused(&c.nodes[1], "holds no cluster state");

    // A lone manager has no quorum to recover.
    c.nodes[0].kill();
    force_is_refused(&c.nodes[0], "already the only manager");

    // A manager that still answers is not lost.
    c.nodes[0].restart();
    c.nodes[1].restart();
    wait_for(Duration::from_secs(30), || {
        let listed = nodes(&c.nodes[0])?;
        listed.iter().all(|n| n["status"] == "ready").then_some(())
    })
    .unwrap_or_else(|| panic!("node-a is not back: {}", c.nodes[0].log_text()));
    c.join_with_env("node-b", "127.0.0.2", "manager", FAKE);
    c.nodes[0].kill();
    force_is_refused(&c.nodes[0], "node 3 at 127.0.0.2");

    // None of that changed anything: node-a comes back as one of two
    // managers, and writes commit.
    c.nodes[0].restart();
    wait_for(Duration::from_secs(30), || {
        let st = c.nodes[0].json(&["status"]).ok()?;
        (st["quorum"]["voters"] == 2 && st["quorum"]["healthy"] == true).then_some(())
    })
    .unwrap_or_else(|| panic!("node-a is not back: {}", c.nodes[0].log_text()));
    c.nodes[0].ok(&["node", "update", "node-w", "--label-add", "after=refusals"]);
    let listed = nodes(&c.nodes[0]).unwrap();
    assert_eq!(
        names(&listed),
        ["node-a", "node-b", "node-w"].map(String::from).into()
    );
}
