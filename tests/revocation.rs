//! Removed nodes and replayed joins, end to end: real `shoal` processes on
//! 127.0.0.1-4, real QUIC with mutual TLS.

mod common;

use std::time::Duration;

use common::{wait_for, Cluster};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_net::pki::NodeKey;
use shoal_net::{token, transport};
use shoal_raft::{Resources, Role};

fn node_names(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_removed_node_still_running_is_refused_at_the_connection_and_the_cluster_carries_on() {
    let mut c = Cluster::new();
    c.init("node-a", "127.0.0.1");
    let w = c.join("node-w", "127.0.0.2", "worker");
    let id = c.nodes[0].json(&["node", "inspect", "node-w"]).unwrap()["id"]
        .as_u64()
        .expect("node-w has an id");

    // Removed while its daemon runs: only --force allows that.
    c.nodes[0].ok(&["node", "rm", "--force", "node-w"]);

    // The leader refuses its connections and logs it with its id.
    let line = format!("refused a connection from node {id}");
    wait_for(Duration::from_secs(10), || {
        c.nodes[0].log_text().contains(&line).then_some(())
    })
    .unwrap_or_else(|| panic!("no refusal logged: {}", c.nodes[0].log_text()));
    let log = c.nodes[0].log_text();
    let refusal = log.lines().find(|l| l.contains(&line)).unwrap();
    assert!(refusal.contains("WARN"), "{refusal}");
    assert!(
        refusal.contains("127.0.0.2"),
        "the remote address: {refusal}"
    );

    // The removed node's heartbeats fail, and its status says it is out.
    wait_for(Duration::from_secs(10), || {
        c.nodes[w]
            .log_text()
            .contains("this node was removed from the cluster")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the removed node did not notice: {}", c.nodes[w].log_text()));
    let status = wait_for(Duration::from_secs(15), || {
        let out = c.nodes[w].cli(&["status"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (!out.status.success() && err.contains("was removed from the cluster")).then_some(err)
    })
    .expect("status on the removed node says it was removed");
    assert!(status.contains(&format!("node {id}")), "{status}");

    // The refusals are rate-limited: the removed node beats several times
    // a second, the leader logs one line per 10 s.
    std::thread::sleep(Duration::from_secs(2));
    let lines = c.nodes[0].log_text().matches(&line).count();
    assert!(lines <= 2, "{lines} refusal lines in 2 s");

    // The cluster carries on: writes, reads, a new node.
    c.nodes[0].ok(&["node", "update", "node-a", "--label-add", "zone=eu"]);
    let y = c.join("node-y", "127.0.0.3", "worker");
    let names = node_names(&c.nodes[0].json(&["node", "ls"]).unwrap());
    assert_eq!(names, vec!["node-a", "node-y"], "{names:?}");
    // The new worker holds no state: it learns whom to refuse from the
    // leader's heartbeat replies.
    wait_for(Duration::from_secs(10), || {
        c.nodes[y]
            .log_text()
            .contains("refusing connections from removed nodes")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the worker did not learn: {}", c.nodes[y].log_text()));
    // The removed node is still running, and still out.
    assert!(c.nodes[w].is_running());
    let names = node_names(&c.nodes[0].json(&["node", "ls"]).unwrap());
    assert!(!names.contains(&"node-w".to_string()), "{names:?}");
}

/// `JoinRequest` as the wire carries it (src/wire.rs): a test outside the
/// binary sends a request the way a hostile client could, key and all.
#[derive(Serialize)]
struct JoinRequest {
    secret: String,
    name: String,
    addr: String,
    public_key_der: Vec<u8>,
    resources: Resources,
    version: String,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct JoinAccepted {
    node_id: u64,
    role: Role,
    cluster_id: String,
    cert_pem: String,
    ca_cert_pem: String,
    managers: Vec<(u64, String)>,
}

#[derive(Debug, Deserialize)]
enum OpErrorKind {
    BadRequest,
    NotFound,
    Conflict,
    Forbidden,
    NotLeader,
    Unavailable,
    Internal,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct WireOpError {
    kind: OpErrorKind,
    message: String,
}

fn send_join(
    via: &str,
    tok: &token::JoinToken,
    name: &str,
    addr: &str,
    key: &NodeKey,
) -> Result<JoinAccepted, WireOpError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let t = Duration::from_secs(10);
        let conn = transport::connect_for_join(via.parse().unwrap(), &tok.fingerprint, t)
            .await
            .expect("join connection");
        let request = JoinRequest {
            secret: tok.secret.clone(),
            name: name.to_string(),
            addr: addr.to_string(),
            public_key_der: key.public_key_der(),
            resources: Resources::default(),
            version: "test".to_string(),
        };
        let reply: Result<JoinAccepted, WireOpError> = transport::call(&conn, &request, t)
            .await
            .expect("an answer");
        conn.close(0u32.into(), b"done");
        reply
    })
}

#[test]
fn a_replayed_join_is_refused_naming_the_node_and_a_removed_key_cannot_come_back() {
    let mut c = Cluster::new();
    c.init("node-a", "127.0.0.1");
    let tok = token::parse(&c.token("worker")).unwrap();
    let via = c.nodes[0].addr();
    let key = NodeKey::generate().unwrap();
    let addr = format!("127.0.0.2:{}", c.port);

    let joined = send_join(&via, &tok, "r1", &addr, &key).expect("the first join");
    let id = joined.node_id;

    // The same request again: refused, naming the node it made.
    let again = send_join(&via, &tok, "r1", &addr, &key).unwrap_err();
    assert!(matches!(again.kind, OpErrorKind::Conflict), "{again:?}");
    assert!(
        again
            .message
            .contains(&format!("already joined as node {id} (r1)")),
        "{again:?}"
    );
    // The same key under another name and address: still the same node.
    let other = format!("127.0.0.3:{}", c.port);
    let renamed = send_join(&via, &tok, "r2", &other, &key).unwrap_err();
    assert!(
        renamed
            .message
            .contains(&format!("already joined as node {id}")),
        "{renamed:?}"
    );
    // A new key under the taken name: refused by name, naming the node.
    let fresh = NodeKey::generate().unwrap();
    let by_name = send_join(&via, &tok, "r1", &other, &fresh).unwrap_err();
    assert!(
        by_name
            .message
            .contains(&format!("already used by node {id}")),
        "{by_name:?}"
    );
    // Each refusal is logged on the node that served it, without the secret.
    let log = c.nodes[0].log_text();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused a join from 127.0.0.1"))
        .collect();
    assert_eq!(refusals.len(), 3, "{log}");
    assert!(refusals.iter().all(|l| l.contains("WARN")), "{refusals:?}");
    // (`shoal init` prints the join command with the token once; no other
    // line may hold it.)
    let leaked: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&tok.secret) && !l.contains("shoal join"))
        .collect();
    assert!(leaked.is_empty(), "the secret reached the log: {leaked:?}");

    // Removed, its old identity cannot come back.
    c.nodes[0].ok(&["node", "rm", "--force", "r1"]);
    let back = send_join(&via, &tok, "r1", &addr, &key).unwrap_err();
    assert!(
        back.message
            .contains(&format!("belonged to node {id}, which was removed")),
        "{back:?}"
    );
    // A wiped node (a new key) joins, under a new id.
    let rejoined = send_join(&via, &tok, "r1", &addr, &fresh).expect("a fresh key joins");
    assert!(rejoined.node_id > id, "ids are not reused: {rejoined:?}");
}
