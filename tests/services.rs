//! Services on Docker, end to end: three real daemons on 127.0.0.1-3 share
//! the machine's Docker engine and run the locally built test image
//! (`scripts/test-image.sh`). Each cluster labels its containers with its
//! own id, and the harness removes exactly those afterwards.

mod common;

use std::time::{Duration, Instant};

use common::services::{
    deploy, docker_kill, docker_running, running_count, running_per_node, tasks, three_nodes,
    wait_running, IMAGE,
};
use common::{wait_for, Cluster};

#[test]
fn replicas_spread_evenly_and_a_killed_container_is_replaced() {
    let c = three_nodes();
    deploy(&c, "web", &["--replicas", "6"]);
    wait_running(&c, "web", 6, Duration::from_secs(60));
    let per = running_per_node(&c, "web");
    assert_eq!(
        per.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "{per:?}"
    );

    // `service ls --json` shows it converged.
    let ls = c.nodes[1].json(&["service", "ls"]).unwrap();
    let web = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap();
    assert_eq!(web["replicas_running"], 6);
    assert_eq!(web["replicas_desired"], 6);
    assert_eq!(web["image"], IMAGE);

    // docker kill one container: it is replaced.
    let victim = docker_running(&c, "web")[0].clone();
    let killed = Instant::now();
    docker_kill(&victim);
    wait_for(Duration::from_secs(30), || {
        let now = docker_running(&c, "web");
        (now.len() == 6 && !now.contains(&victim)).then_some(())
    })
    .expect("killed container replaced");
    println!("replacement running after {:?}", killed.elapsed());
    let failed = tasks(&c, "web")
        .into_iter()
        .find(|t| t["container_id"] == victim.as_str())
        .expect("the killed task stays in history");
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["desired_state"], "shutdown", "{failed}");

    // Scale down, then remove: the containers go.
    c.nodes[0].ok(&["service", "scale", "web=2", "--detach"]);
    wait_running(&c, "web", 2, Duration::from_secs(30));
    c.nodes[0].ok(&["service", "rm", "web"]);
    assert!(docker_running(&c, "web").is_empty());
    let out = c.nodes[0].cli(&["service", "ps", "web"]);
    assert!(!out.status.success(), "ps of a removed service fails");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no service named"));
}

#[test]
fn a_lost_node_has_its_tasks_rescheduled_and_stops_the_extras_on_return() {
    let mut c = three_nodes();
    deploy(&c, "web", &["--replicas", "6"]);
    wait_running(&c, "web", 6, Duration::from_secs(60));

    // SIGKILL node-c's daemon: its containers keep running, but the leader
    // marks it down and starts its tasks elsewhere.
    let lost = Instant::now();
    c.nodes[2].kill();
    wait_for(Duration::from_secs(20), || {
        let per = running_per_node(&c, "web");
        (!per.contains_key("node-c") && per.values().sum::<usize>() == 6).then_some(())
    })
    .unwrap_or_else(|| panic!("tasks not rescheduled: {:#?}", tasks(&c, "web")));
    let took = lost.elapsed();
    println!("rescheduled after {took:?}");
    // Down period (2 s) plus a margin.
    assert!(took < Duration::from_secs(10), "rescheduling took {took:?}");
    // Its old containers still run (6 + 2 extras), as nobody stopped them.
    assert_eq!(docker_running(&c, "web").len(), 8);

    // When it returns, its agent stops what the leader no longer assigns.
    c.nodes[2].restart();
    wait_for(Duration::from_secs(30), || {
        (docker_running(&c, "web").len() == 6).then_some(())
    })
    .unwrap_or_else(|| panic!("extras not stopped: {}", c.nodes[2].log_text()));
    assert_eq!(running_count(&c, "web"), 6);
}

#[test]
fn drain_moves_tasks_and_a_daemon_restart_keeps_containers() {
    let mut c = three_nodes();
    deploy(&c, "web", &["--replicas", "3"]);
    wait_running(&c, "web", 3, Duration::from_secs(60));
    let before = docker_running(&c, "web");

    // Restart node-b's daemon (SIGKILL, then `shoal run`): the containers
    // are adopted, not restarted.
    c.nodes[1].kill();
    c.nodes[1].restart();
    wait_for(Duration::from_secs(20), || {
        let nodes = c.nodes[0].json(&["node", "ls"]).ok()?;
        let b = nodes
            .as_array()?
            .iter()
            .find(|n| n["name"] == "node-b")?
            .clone();
        (b["status"] == "ready").then_some(())
    })
    .expect("node-b ready again");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        docker_running(&c, "web"),
        before,
        "containers kept their ids"
    );
    assert_eq!(running_count(&c, "web"), 3);

    // Drain node-a: its task moves away.
    c.nodes[0].ok(&["node", "update", "node-a", "--availability", "drain"]);
    wait_for(Duration::from_secs(30), || {
        let per = running_per_node(&c, "web");
        (!per.contains_key("node-a") && per.values().sum::<usize>() == 3).then_some(())
    })
    .unwrap_or_else(|| panic!("drain did not move tasks: {:#?}", tasks(&c, "web")));
    wait_running(&c, "web", 3, Duration::from_secs(30));
}

#[test]
fn unplaceable_and_unrunnable_tasks_say_why() {
    let c = three_nodes();

    // A constraint no node satisfies: pending, with the explanation.
    deploy(
        &c,
        "eu",
        &["--replicas", "1", "--constraint", "node.labels.zone==eu"],
    );
    let pending = wait_for(Duration::from_secs(20), || {
        let t = tasks(&c, "eu").into_iter().next()?;
        (t["state"] == "pending" && t["message"].as_str()?.contains("zone")).then_some(t)
    })
    .unwrap_or_else(|| panic!("no pending explanation: {:#?}", tasks(&c, "eu")));
    let why = pending["message"].as_str().unwrap();
    assert!(why.contains("node.labels.zone==eu"), "{why}");
    assert!(why.contains("0 of 3"), "{why}");

    // Labelling a node makes it placeable.
    c.nodes[0].ok(&["node", "update", "node-b", "--label-add", "zone=eu"]);
    wait_running(&c, "eu", 1, Duration::from_secs(30));
    assert_eq!(
        running_per_node(&c, "eu").keys().collect::<Vec<_>>(),
        vec!["node-b"]
    );

    // An image that is not present and cannot be pulled: rejected with the
    // engine's error, and `deploy` (waiting) exits non-zero saying so.
    let out = c.nodes[0].cli(&[
        "deploy",
        "ghost",
        "--image",
        "shoal-missing:1",
        "--pull",
        "never",
        "--timeout",
        "30s",
    ]);
    assert!(!out.status.success());
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(err.contains("rejected"), "{err}");
    assert!(err.contains("shoal-missing:1"), "{err}");
    let rejected = tasks(&c, "ghost")
        .into_iter()
        .find(|t| t["state"] == "rejected")
        .expect("a rejected task");
    assert!(
        rejected["error"]
            .as_str()
            .unwrap()
            .contains("shoal-missing:1"),
        "{rejected}"
    );

    // Bad input is refused with one line naming the field.
    for (args, fragment) in [
        (vec!["service", "scale", "eu=many"], "eu=many"),
        (vec!["service", "scale", "nope=2"], "no service named"),
        (
            vec![
                "deploy",
                "bad",
                "--image",
                IMAGE,
                "--constraint",
                "node.foo==x",
            ],
            "node.foo==x",
        ),
    ] {
        let out = c.nodes[0].cli(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(fragment), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn a_node_without_a_container_engine_reports_it_and_gets_no_tasks() {
    let mut c = Cluster::new();
    c.init("node-a", "127.0.0.1");
    c.join_with_env(
        "node-x",
        "127.0.0.2",
        "worker",
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    let engine = wait_for(Duration::from_secs(20), || {
        let n = c.nodes[0].json(&["node", "inspect", "node-x"]).ok()?;
        n["engine_error"].as_str().map(str::to_string)
    })
    .expect("node-x reports its engine unavailable");
    assert!(engine.contains("nonexistent"), "{engine}");
    let a = c.nodes[0].json(&["node", "inspect", "node-a"]).unwrap();
    assert!(a["engine_error"].is_null(), "{a}");

    deploy(&c, "web", &["--replicas", "2"]);
    wait_running(&c, "web", 2, Duration::from_secs(60));
    let per = running_per_node(&c, "web");
    assert_eq!(per.keys().collect::<Vec<_>>(), vec!["node-a"], "{per:?}");
}

#[test]
fn a_new_leader_finishes_a_deploy_without_losing_or_duplicating_tasks() {
    let mut c = Cluster::new();
    c.init("node-a", "127.0.0.1");
    c.join("node-b", "127.0.0.2", "manager");
    c.join("node-c", "127.0.0.3", "manager");
    deploy(&c, "web", &["--replicas", "6"]);
    // Kill the leader right after the deploy was committed.
    let leader = c.leader().expect("a leader");
    c.nodes[leader].kill();
    let survivor = (0..3).find(|i| *i != leader).unwrap();

    // The new leader carries on from the replicated state: every slot ends
    // with exactly one running task, none lost and none doubled.
    let slots = wait_for(Duration::from_secs(60), || {
        let tasks = c.nodes[survivor].json(&["service", "ps", "web"]).ok()?;
        let mut slots: Vec<u64> = tasks
            .as_array()?
            .iter()
            .filter(|t| t["desired_state"] == "running" && t["state"] == "running")
            .map(|t| t["slot"].as_u64().unwrap_or(0))
            .collect();
        slots.sort_unstable();
        (slots.len() == 6).then_some(slots)
    })
    .unwrap_or_else(|| {
        panic!(
            "the deploy did not converge after the failover: {}",
            c.nodes[survivor].log_text()
        )
    });
    assert_eq!(slots, vec![1, 2, 3, 4, 5, 6]);
    // And it stays that way (no late duplicate from a stale batch).
    std::thread::sleep(Duration::from_secs(3));
    let tasks = c.nodes[survivor].json(&["service", "ps", "web"]).unwrap();
    let live = tasks
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["desired_state"] == "running")
        .count();
    assert_eq!(live, 6, "{tasks:#}");
}
