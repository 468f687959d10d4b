//! Cluster core, end to end: real `shoal` processes on 127.0.0.1-3, real
//! QUIC with mutual TLS, real redb storage, SIGKILL.

mod common;

use std::time::{Duration, Instant};

use common::{wait_for, Cluster};
use serde_json::Value;

fn nodes_of(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

#[test]
fn three_managers_elect_one_leader_and_survive_its_loss() {
    let mut c = Cluster::new();
    c.init("node-a", "127.0.0.1");
    c.join("node-b", "127.0.0.2", "manager");
    c.join("node-c", "127.0.0.3", "manager");

    // Every node answers `node ls` with the same three ready nodes and one leader.
    for d in &c.nodes {
        let nodes = nodes_of(&d.json(&["node", "ls"]).unwrap());
        assert_eq!(nodes.len(), 3, "on {}: {nodes:?}", d.name);
        assert!(nodes.iter().all(|n| n["status"] == "ready"), "{nodes:?}");
        assert!(nodes.iter().all(|n| n["role"] == "manager"), "{nodes:?}");
        assert_eq!(nodes.iter().filter(|n| n["leader"] == true).count(), 1);
        for key in [
            "id",
            "name",
            "addr",
            "role",
            "status",
            "leader",
            "availability",
        ] {
            assert!(nodes[0].get(key).is_some(), "node ls JSON lacks {key}");
        }
        let addrs: Vec<_> = nodes
            .iter()
            .map(|n| n["addr"].as_str().unwrap().to_string())
            .collect();
        assert!(
            addrs.contains(&"127.0.0.2".to_string())
                || addrs.iter().any(|a| a.starts_with("127.0.0.2:"))
        );
    }
    let st = c.nodes[1].json(&["status"]).unwrap();
    for key in ["cluster_id", "leader_id", "term", "commit_index", "members"] {
        assert!(st.get(key).is_some(), "status JSON lacks {key}: {st}");
    }
    assert_eq!(st["quorum"]["healthy"], true, "{st}");

    // SIGKILL the leader.
    let old = c.leader().expect("a leader");
    let old_name = c.nodes[old].name.clone();
    let old_term = c.nodes[old].json(&["status"]).unwrap()["term"]
        .as_u64()
        .unwrap();
    let killed_at = Instant::now();
    c.nodes[old].kill();
    let survivor = (0..3).find(|i| *i != old).unwrap();

    // A new leader within 2 s.
    let new_leader = wait_for(Duration::from_secs(10), || {
        let st = c.nodes[survivor].json(&["status"]).ok()?;
        let term = st["term"].as_u64()?;
        let leader = st["leader_id"].as_u64()?;
        let name = st["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == leader)?["name"]
            .as_str()?
            .to_string();
        (term > old_term && name != old_name).then_some(name)
    })
    .expect("a new leader is elected");
    let elected_in = killed_at.elapsed();
    assert!(
        elected_in < Duration::from_secs(2),
        "new leader {new_leader} after {elected_in:?}"
    );

    // Writes are still accepted.
    c.nodes[survivor].ok(&["node", "update", "node-a", "--label-add", "zone=eu"]);

    // The old leader is shown down within 5 s of the kill.
    wait_for(Duration::from_secs(10), || {
        let nodes = nodes_of(&c.nodes[survivor].json(&["node", "ls"]).ok()?);
        let old = nodes.iter().find(|n| n["name"] == old_name.as_str())?;
        (old["status"] == "down").then_some(())
    })
    .expect("old leader shown down");
    assert!(
        killed_at.elapsed() < Duration::from_secs(5),
        "down after {:?}",
        killed_at.elapsed()
    );

    // Restarted with `shoal run`, it catches up (sees the label written
    // while it was down) and is ready again.
    c.nodes[old].restart();
    wait_for(Duration::from_secs(20), || {
        let nodes = nodes_of(&c.nodes[old].json(&["node", "ls"]).ok()?);
        let me = nodes.iter().find(|n| n["name"] == old_name.as_str())?;
        let a = nodes.iter().find(|n| n["name"] == "node-a")?;
        (me["status"] == "ready" && a["labels"]["zone"] == "eu").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "restarted node did not catch up: {}",
            c.nodes[old].log_text()
        )
    });

    // Its own store caught up too: the applied index reaches the leader's.
    let applied =
        |i: usize| -> Option<u64> { c.nodes[i].json(&["status"]).ok()?["applied_index"].as_u64() };
    wait_for(Duration::from_secs(10), || {
        let leader = c.leader()?;
        (applied(old)? >= applied(leader)?.saturating_sub(2)).then_some(())
    })
    .expect("restarted node's applied index catches up");
}

#[test]
fn joins_with_bad_tokens_are_refused_and_change_nothing() {
    let mut c = Cluster::new();
    c.init("node-a", "127.0.0.1");
    let good = c.token("worker");
    let via = c.nodes[0].addr();

    let try_join = |name: &str, ip: &str, token: &str| -> (bool, String, Duration) {
        let dir = c.root.path().join(name);
        let started = Instant::now();
        let out = std::process::Command::new(common::BIN)
            .arg("--data-dir")
            .arg(&dir)
            .args([
                "join",
                &via,
                "--token",
                token,
                "--listen",
                &format!("{ip}:{}", c.port),
                "--name",
                name,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), stderr, started.elapsed())
    };

    // Wrong secret.
    let (fp, _secret) = good.rsplit_once('-').unwrap();
    let wrong_secret = format!("{fp}-{}", "0".repeat(32));
    let (ok, err, took) = try_join("bad1", "127.0.0.2", &wrong_secret);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("secret is not valid"), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Logged where it was served, with the address and the reason, and
    // without the secret.
    let refusal = |reason: &str| {
        let log = c.nodes[0].log_text();
        log.lines()
            .find(|l| l.contains("refused a join from 127.0.0.1") && l.contains(reason))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no refusal line with {reason:?}: {log}"))
    };
    let line = refusal("secret is not valid");
    assert!(line.contains("WARN"), "{line}");
    assert!(
        !c.nodes[0].log_text().contains(&"0".repeat(32)),
        "the secret reached the log"
    );

    // Tampered fingerprint: the joiner refuses the server's CA before
    // sending its secret.
    let mut chars: Vec<char> = good.chars().collect();
    let i = "SHOAL-1-".len();
    chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
    let tampered: String = chars.into_iter().collect();
    let (ok, err, took) = try_join("bad2", "127.0.0.3", &tampered);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("does not match the token's fingerprint"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    // The server sees only the joiner abort the handshake.
    wait_for(Duration::from_secs(5), || {
        c.nodes[0]
            .log_text()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("handshake refused by the peer"))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no handshake refusal logged: {}", c.nodes[0].log_text()));

    // Rotated token.
    let rotated = c.nodes[0]
        .ok(&["token", "rotate", "worker", "-q"])
        .trim()
        .to_string();
    assert_ne!(rotated, good);
    let (ok, err, took) = try_join("bad3", "127.0.0.4", &good);
    assert!(!ok);
    assert!(err.contains("rotated"), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    refusal("rotated");

    // Unreachable address.
    let dead = format!("127.0.0.9:{}", common::free_port());
    let dir = c.root.path().join("bad4");
    let started = Instant::now();
    let out = std::process::Command::new(common::BIN)
        .arg("--data-dir")
        .arg(&dir)
        .args([
            "join",
            &dead,
            "--token",
            &rotated,
            "--listen",
            &format!("127.0.0.5:{}", c.port),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("join failed"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(11),
        "{:?}",
        started.elapsed()
    );

    // The cluster is unchanged: one node.
    let nodes = nodes_of(&c.nodes[0].json(&["node", "ls"]).unwrap());
    assert_eq!(nodes.len(), 1, "{nodes:?}");

    // The current token works (`join` takes the token shown now).
    assert_eq!(c.token("worker"), rotated);
    c.join("good", "127.0.0.6", "worker");

    // Joining again under the same name is refused, naming the node, and
    // logged.
    let out = std::process::Command::new(common::BIN)
        .arg("--data-dir")
        .arg(c.root.path().join("good-again"))
        .args(["join", &via, "--token", &rotated, "--listen"])
        .arg(format!("127.0.0.7:{}", c.port))
        .args(["--name", "good"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("\"good\" is already used by node 2"), "{err}");
    let log = c.nodes[0].log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("refused a join from") && l.contains("is already used by node 2")),
        "{log}"
    );
}

#[test]
fn a_worker_joins_without_voting_and_can_be_promoted_and_demoted() {
    let mut c = Cluster::new();
    c.init("node-a", "127.0.0.1");
    let w = c.join("node-w", "127.0.0.2", "worker");

    let st = c.nodes[0].json(&["status"]).unwrap();
    let member = st["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "node-w")
        .unwrap()
        .clone();
    assert_eq!(member["voter"], false, "{st}");
    assert_eq!(member["role"], "worker");
    assert_eq!(st["quorum"]["voters"], 1);

    // The worker forwards reads to the leader.
    let nodes = nodes_of(&c.nodes[w].json(&["node", "ls"]).unwrap());
    assert_eq!(nodes.len(), 2);

    // Promote: it becomes a voter (after catching up as a learner).
    c.nodes[0].ok(&["node", "promote", "node-w"]);
    let st = c.nodes[0].json(&["status"]).unwrap();
    assert_eq!(st["quorum"]["voters"], 2, "{st}");

    // Demote: back to a worker, not a voter.
    c.nodes[w].ok(&["node", "demote", "node-w"]);
    let st = c.nodes[0].json(&["status"]).unwrap();
    assert_eq!(st["quorum"]["voters"], 1, "{st}");
    let nodes = nodes_of(&c.nodes[0].json(&["node", "ls"]).unwrap());
    let me = nodes.iter().find(|n| n["name"] == "node-w").unwrap();
    assert_eq!(me["role"], "worker");
    assert_eq!(me["voter"], false);

    // A live node is not removed without --force; a stopped one is.
    let out = c.nodes[0].cli(&["node", "rm", "node-w"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    c.nodes[w].kill();
    wait_for(Duration::from_secs(10), || {
        let nodes = nodes_of(&c.nodes[0].json(&["node", "ls"]).ok()?);
        nodes
            .iter()
            .any(|n| n["name"] == "node-w" && n["status"] == "down")
            .then_some(())
    })
    .expect("worker shown down");
    c.nodes[0].ok(&["node", "rm", "node-w"]);
    let nodes = nodes_of(&c.nodes[0].json(&["node", "ls"]).unwrap());
    assert_eq!(nodes.len(), 1);
}

#[test]
fn a_data_dir_is_used_by_one_daemon_and_a_taken_address_is_reported() {
    let mut c = Cluster::new();
    c.init("node-a", "127.0.0.1");

    // Second daemon on the same data dir.
    let out = std::process::Command::new(common::BIN)
        .arg("--data-dir")
        .arg(&c.nodes[0].dir)
        .args(["run"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked"), "{err}");

    // A new cluster on a taken address.
    let dir = c.root.path().join("other");
    let out = std::process::Command::new(common::BIN)
        .arg("--data-dir")
        .arg(&dir)
        .args(["init", "--listen", &c.nodes[0].addr()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already in use"), "{err}");

    // `run` on a directory that is not a shoal data dir.
    let empty = c.root.path().join("empty");
    let out = std::process::Command::new(common::BIN)
        .arg("--data-dir")
        .arg(&empty)
        .args(["run"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a shoal data dir"), "{err}");

    // A client pointed at a missing socket gets a message it can act on.
    let out = std::process::Command::new(common::BIN)
        .arg("--data-dir")
        .arg(&empty)
        .args(["node", "ls"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the shoal daemon"), "{err}");
}
