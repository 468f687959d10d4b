//! The control API contract shared by the daemon's HTTP server and [`crate::client`].
//!
//! This module owns the wire shape of the JSON control API (paths, request and
//! response bodies, the error body) and the validation rules for user-supplied
//! names and labels, so the server and the command line reject the same input
//! with the same sentence. Enum-like fields (`role`, `status`, `availability`)
//! are lowercase strings on the wire: an older client still reads a response
//! that carries a value it does not know yet.
//!
//! ```text
//! GET    /v1/nodes                         -> Vec<NodeView>
//! GET    /v1/nodes/{node}                  -> NodeView       ({node} = id number or name)
//! POST   /v1/nodes/{node}/update           body NodeUpdate -> NodeView
//! POST   /v1/nodes/{node}/promote          -> NodeView
//! POST   /v1/nodes/{node}/demote           -> NodeView
//! DELETE /v1/nodes/{node}?force=true|false -> RemovedView
//! GET    /v1/status                        -> StatusView
//! GET    /v1/tokens/{role}                 -> TokenView      (role = manager|worker)
//! POST   /v1/tokens/{role}/rotate          -> TokenView
//! POST   /v1/dev/noop                      -> {}             (commits an empty entry)
//! POST   /v1/dev/bench-commit              body BenchCommitRequest -> BenchReport
//! any non-2xx status                       -> ApiError
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Route templates in axum 0.8 syntax; the client fills them in with [`paths`].
pub mod routes {
    pub const NODES: &str = "/v1/nodes";
    pub const NODE: &str = "/v1/nodes/{node}";
    pub const NODE_UPDATE: &str = "/v1/nodes/{node}/update";
    pub const NODE_PROMOTE: &str = "/v1/nodes/{node}/promote";
    pub const NODE_DEMOTE: &str = "/v1/nodes/{node}/demote";
    pub const STATUS: &str = "/v1/status";
    pub const TOKEN: &str = "/v1/tokens/{role}";
    pub const TOKEN_ROTATE: &str = "/v1/tokens/{role}/rotate";
    /// Development endpoints: benchmarks of the write path.
    pub const DEV_NOOP: &str = "/v1/dev/noop";
    pub const DEV_BENCH_COMMIT: &str = "/v1/dev/bench-commit";
}

/// Concrete request paths (with percent-encoded segments) for the routes in [`routes`].
pub mod paths {
    use super::{percent_encode_segment, routes};

    pub fn nodes() -> String {
        routes::NODES.to_owned()
    }

    pub fn node(node: &str) -> String {
        node_path(node)
    }

    pub fn node_update(node: &str) -> String {
        format!("{}/update", node_path(node))
    }

    pub fn node_promote(node: &str) -> String {
        format!("{}/promote", node_path(node))
    }

    pub fn node_demote(node: &str) -> String {
        format!("{}/demote", node_path(node))
    }

    pub fn node_remove(node: &str, force: bool) -> String {
        format!("{}?force={force}", node_path(node))
    }

    pub fn status() -> String {
        routes::STATUS.to_owned()
    }

    pub fn token(role: &str) -> String {
        token_path(role)
    }

    pub fn token_rotate(role: &str) -> String {
        format!("{}/rotate", token_path(role))
    }

    fn node_path(node: &str) -> String {
        format!("{}/{}", routes::NODES, percent_encode_segment(node))
    }

    fn token_path(role: &str) -> String {
        format!("/v1/tokens/{}", percent_encode_segment(role))
    }
}

/// One node as the control API shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: u64,
    pub name: String,
    /// The address peers dial, `host:port`.
    pub addr: String,
    /// `"manager"` or `"worker"`.
    pub role: String,
    /// `"ready"` or `"down"`.
    pub status: String,
    /// `"active"`, `"pause"` or `"drain"`.
    pub availability: String,
    pub leader: bool,
    /// Whether the node votes in the Raft group (managers only).
    pub voter: bool,
    pub labels: BTreeMap<String, String>,
    pub nano_cpus: u64,
    pub memory_bytes: u64,
    pub version: String,
    /// Why the node has its status, e.g. "heartbeat missed for 2.1s"; empty when ready.
    pub status_message: String,
    pub joined_at_ms: u64,
    pub status_changed_at_ms: u64,
}

/// The body of `POST /v1/nodes/{node}/update`. Absent fields change nothing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(default)]
pub struct NodeUpdate {
    /// `"active"`, `"pause"` or `"drain"`.
    pub availability: Option<String>,
    pub labels_add: BTreeMap<String, String>,
    pub labels_rm: Vec<String>,
    pub name: Option<String>,
}

/// The query string of `DELETE /v1/nodes/{node}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(default)]
pub struct RemoveQuery {
    /// Remove the node even though it is still ready (or is a voting manager).
    pub force: bool,
}

/// The cluster as seen by the node that answered.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StatusView {
    pub cluster_id: String,
    /// The node that answered this request.
    pub node_id: u64,
    pub leader_id: Option<u64>,
    pub leader_name: Option<String>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub members: Vec<MemberView>,
    pub quorum: QuorumView,
}

/// One member of the cluster in [`StatusView`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub id: u64,
    pub name: String,
    pub addr: String,
    /// `"manager"` or `"worker"`.
    pub role: String,
    pub voter: bool,
    /// `"ready"` or `"down"`.
    pub status: String,
    /// The last log index known to be replicated on this member (known on the leader only).
    pub match_index: Option<u64>,
    /// How many entries this member is behind the leader's last log index.
    pub lag: Option<u64>,
}

/// Whether the voting managers can still commit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct QuorumView {
    pub voters: usize,
    pub voters_ready: usize,
    /// Votes needed for a majority: `voters / 2 + 1`.
    pub needed: usize,
    pub healthy: bool,
}

/// A join token and the command line that uses it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TokenView {
    /// `"manager"` or `"worker"`.
    pub role: String,
    pub token: String,
    pub join_command: String,
}

/// Asks the leader to commit `count` empty entries from `writers`
/// concurrent in-process Raft clients, and to report the latencies.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BenchCommitRequest {
    pub writers: u32,
    pub count: u32,
}

/// Limits of [`BenchCommitRequest`].
pub const MAX_BENCH_WRITERS: u32 = 1024;
pub const MAX_BENCH_COUNT: u32 = 1_000_000;

/// Commit latencies and throughput measured on the leader.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BenchReport {
    pub writers: u32,
    pub count: u32,
    pub elapsed_ms: f64,
    pub commits_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// The answer to `DELETE /v1/nodes/{node}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RemovedView {
    pub id: u64,
}

/// The body of every non-2xx response.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// A sentence the user can act on; the CLI prints it as it is.
    pub error: String,
    /// Whether the same request may succeed later (e.g. no leader yet).
    pub retryable: bool,
}

impl ApiError {
    pub fn new(error: impl Into<String>, retryable: bool) -> Self {
        Self {
            error: error.into(),
            retryable,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

impl std::error::Error for ApiError {}

/// The lowercase wire names of node roles, statuses and availabilities.
pub const ROLES: [&str; 2] = ["manager", "worker"];
pub const STATUSES: [&str; 2] = ["ready", "down"];
pub const AVAILABILITIES: [&str; 3] = ["active", "pause", "drain"];

/// Longest node name accepted (a DNS label).
pub const MAX_NODE_NAME_LEN: usize = 63;
/// Longest label key accepted.
pub const MAX_LABEL_KEY_LEN: usize = 128;
/// Longest label value accepted.
pub const MAX_LABEL_VALUE_LEN: usize = 256;

/// Why a name or label given by a user is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    #[error("node name must not be empty; use letters, digits, '.', '-' and '_'")]
    EmptyNodeName,
    #[error("node name {name:?} is longer than {MAX_NODE_NAME_LEN} characters")]
    NodeNameTooLong { name: String },
    #[error("node name {name:?} has {bad:?}; use letters, digits, '.', '-' and '_', starting with a letter or digit")]
    NodeNameCharacter { name: String, bad: char },
    #[error(
        "node name {name:?} is all digits, which would be read as a node id; include a letter"
    )]
    NodeNameNumeric { name: String },
    #[error("label key must not be empty; use letters, digits, '.', '-', '_' and '/'")]
    EmptyLabelKey,
    #[error("label key {key:?} is longer than {MAX_LABEL_KEY_LEN} characters")]
    LabelKeyTooLong { key: String },
    #[error("label key {key:?} has {bad:?}; use letters, digits, '.', '-', '_' and '/', starting with a letter or digit")]
    LabelKeyCharacter { key: String, bad: char },
    #[error("value of label {key:?} is longer than {MAX_LABEL_VALUE_LEN} characters")]
    LabelValueTooLong { key: String },
    #[error("value of label {key:?} contains a control character; use printable text")]
    LabelValueControl { key: String },
    #[error("availability {value:?} is unknown; use active, pause or drain")]
    Availability { value: String },
    #[error("role {value:?} is unknown; use manager or worker")]
    Role { value: String },
}

/// Node names: 1–63 of `[A-Za-z0-9._-]`, starting with a letter or digit, not all
/// digits (a number in `/v1/nodes/{node}` means a node id).
pub fn validate_node_name(name: &str) -> Result<(), InvalidInput> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err(InvalidInput::EmptyNodeName);
    };
    if name.len() > MAX_NODE_NAME_LEN {
        return Err(InvalidInput::NodeNameTooLong {
            name: name.to_owned(),
        });
    }
    let bad = if first.is_ascii_alphanumeric() {
        chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    } else {
        Some(first)
    };
    if let Some(bad) = bad {
        return Err(InvalidInput::NodeNameCharacter {
            name: name.to_owned(),
            bad,
        });
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InvalidInput::NodeNameNumeric {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Label keys: 1–128 of `[A-Za-z0-9._/-]`, starting with a letter or digit.
pub fn validate_label_key(key: &str) -> Result<(), InvalidInput> {
    let mut chars = key.chars();
    let Some(first) = chars.next() else {
        return Err(InvalidInput::EmptyLabelKey);
    };
    if key.len() > MAX_LABEL_KEY_LEN {
        return Err(InvalidInput::LabelKeyTooLong {
            key: key.to_owned(),
        });
    }
    let bad = if first.is_ascii_alphanumeric() {
        chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/')))
    } else {
        Some(first)
    };
    match bad {
        Some(bad) => Err(InvalidInput::LabelKeyCharacter {
            key: key.to_owned(),
            bad,
        }),
        None => Ok(()),
    }
}

/// Label values: up to 256 bytes of text without control characters; may be empty.
pub fn validate_label_value(key: &str, value: &str) -> Result<(), InvalidInput> {
    if value.len() > MAX_LABEL_VALUE_LEN {
        return Err(InvalidInput::LabelValueTooLong {
            key: key.to_owned(),
        });
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidInput::LabelValueControl {
            key: key.to_owned(),
        });
    }
    Ok(())
}

pub fn validate_availability(value: &str) -> Result<(), InvalidInput> {
    if AVAILABILITIES.contains(&value) {
        Ok(())
    } else {
        Err(InvalidInput::Availability {
            value: value.to_owned(),
        })
    }
}

pub fn validate_role(value: &str) -> Result<(), InvalidInput> {
    if ROLES.contains(&value) {
        Ok(())
    } else {
        Err(InvalidInput::Role {
            value: value.to_owned(),
        })
    }
}

impl NodeUpdate {
    /// Checks every field with the same rules the command line applies.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if let Some(availability) = &self.availability {
            validate_availability(availability)?;
        }
        for (key, value) in &self.labels_add {
            validate_label_key(key)?;
            validate_label_value(key, value)?;
        }
        for key in &self.labels_rm {
            validate_label_key(key)?;
        }
        if let Some(name) = &self.name {
            validate_node_name(name)?;
        }
        Ok(())
    }
}

/// Percent-encodes everything outside RFC 3986 "unreserved" so a node name can
/// never add a path segment or a query.
fn percent_encode_segment(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn sample_node() -> NodeView {
        NodeView {
            id: 7,
            name: "node-a".into(),
            addr: "127.0.0.1:4500".into(),
            role: "manager".into(),
            status: "ready".into(),
            availability: "active".into(),
            leader: true,
            voter: true,
            labels: BTreeMap::from([("zone".into(), "eu".into())]),
            nano_cpus: 2_000_000_000,
            memory_bytes: 1 << 30,
            version: "0.1.0".into(),
            status_message: String::new(),
            joined_at_ms: 1_700_000_000_000,
            status_changed_at_ms: 1_700_000_000_500,
        }
    }

    fn sample_status() -> StatusView {
        StatusView {
            cluster_id: "c-1".into(),
            node_id: 7,
            leader_id: Some(7),
            leader_name: Some("node-a".into()),
            term: 3,
            commit_index: 42,
            applied_index: 41,
            members: vec![MemberView {
                id: 7,
                name: "node-a".into(),
                addr: "127.0.0.1:4500".into(),
                role: "manager".into(),
                voter: true,
                status: "ready".into(),
                match_index: Some(42),
                lag: None,
            }],
            quorum: QuorumView {
                voters: 1,
                voters_ready: 1,
                needed: 1,
                healthy: true,
            },
        }
    }

    #[test]
    fn node_view_json_shape() {
        let value = serde_json::to_value(sample_node()).unwrap();
        assert_eq!(
            value,
            json!({
                "id": 7, "name": "node-a", "addr": "127.0.0.1:4500", "role": "manager",
                "status": "ready", "availability": "active", "leader": true, "voter": true,
                "labels": {"zone": "eu"}, "nano_cpus": 2_000_000_000u64,
                "memory_bytes": 1u64 << 30, "version": "0.1.0", "status_message": "",
                "joined_at_ms": 1_700_000_000_000u64, "status_changed_at_ms": 1_700_000_000_500u64
            })
        );
        let back: NodeView = serde_json::from_value(value).unwrap();
        assert_eq!(back, sample_node());
    }

    #[test]
    fn status_view_json_shape() {
        let value = serde_json::to_value(sample_status()).unwrap();
        for field in [
            "cluster_id",
            "node_id",
            "leader_id",
            "leader_name",
            "term",
            "commit_index",
            "applied_index",
            "members",
            "quorum",
        ] {
            assert!(value.get(field).is_some(), "StatusView lacks {field}");
        }
        assert_eq!(value["leader_id"], json!(7));
        assert_eq!(value["members"][0]["id"], json!(7));
        assert_eq!(value["members"][0]["match_index"], json!(42));
        assert_eq!(value["members"][0]["lag"], Value::Null);
        assert_eq!(
            value["quorum"],
            json!({"voters": 1, "voters_ready": 1, "needed": 1, "healthy": true})
        );
        let back: StatusView = serde_json::from_value(value).unwrap();
        assert_eq!(back, sample_status());
    }

    #[test]
    fn node_update_accepts_partial_bodies() {
        let update: NodeUpdate = serde_json::from_str(r#"{"availability":"drain"}"#).unwrap();
        assert_eq!(
            update,
            NodeUpdate {
                availability: Some("drain".into()),
                ..NodeUpdate::default()
            }
        );
        let update: NodeUpdate = serde_json::from_str("{}").unwrap();
        assert_eq!(update, NodeUpdate::default());
    }

    #[test]
    fn api_error_shape_and_display() {
        let error = ApiError::new("no leader elected yet; retry in a moment", true);
        assert_eq!(
            serde_json::to_value(&error).unwrap(),
            json!({"error": "no leader elected yet; retry in a moment", "retryable": true})
        );
        assert_eq!(
            error.to_string(),
            "no leader elected yet; retry in a moment"
        );
    }

    #[test]
    fn paths_encode_segments() {
        let cases = [
            (paths::nodes(), "/v1/nodes"),
            (paths::node("3"), "/v1/nodes/3"),
            (paths::node("a b/c?d"), "/v1/nodes/a%20b%2Fc%3Fd"),
            (paths::node_update("n1"), "/v1/nodes/n1/update"),
            (paths::node_promote("n1"), "/v1/nodes/n1/promote"),
            (paths::node_demote("n1"), "/v1/nodes/n1/demote"),
            (paths::node_remove("n1", true), "/v1/nodes/n1?force=true"),
            (paths::node_remove("n1", false), "/v1/nodes/n1?force=false"),
            (paths::status(), "/v1/status"),
            (paths::token("worker"), "/v1/tokens/worker"),
            (paths::token_rotate("manager"), "/v1/tokens/manager/rotate"),
        ];
        for (got, expected) in cases {
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn node_names() {
        let long = "a".repeat(MAX_NODE_NAME_LEN + 1);
        let cases: &[(&str, Option<&str>)] = &[
            ("node-1", None),
            ("a", None),
            ("web.eu_1", None),
            ("1a", None),
            ("", Some("must not be empty")),
            ("-a", Some("has '-'")),
            ("a b", Some("has ' '")),
            ("a/b", Some("has '/'")),
            ("123", Some("all digits")),
            (&long, Some("longer than 63")),
        ];
        for (name, expected) in cases {
            check(validate_node_name(name), *expected, name);
        }
    }

    #[test]
    fn label_keys_and_values() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("zone", "eu", None),
            ("com.example/tier", "", None),
            ("", "x", Some("label key must not be empty")),
            ("_k", "x", Some("has '_'")),
            ("k=v", "x", Some("has '='")),
            ("k", "a\nb", Some("control character")),
        ];
        for (key, value, expected) in cases {
            let got = validate_label_key(key).and_then(|()| validate_label_value(key, value));
            check(got, *expected, key);
        }
    }

    #[test]
    fn node_update_validation() {
        let mut update = NodeUpdate {
            availability: Some("drain".into()),
            labels_add: BTreeMap::from([("zone".into(), "eu".into())]),
            labels_rm: vec!["old".into()],
            name: Some("renamed".into()),
        };
        assert_eq!(update.validate(), Ok(()));
        update.availability = Some("paused".into());
        check(
            update.validate(),
            Some("use active, pause or drain"),
            "paused",
        );
    }

    fn check(got: Result<(), InvalidInput>, expected: Option<&str>, input: &str) {
        match (got, expected) {
            (Ok(()), None) => {}
            (Err(error), Some(fragment)) => assert!(
                error.to_string().contains(fragment),
                "{input:?}: error {error:?} lacks {fragment:?}"
            ),
            (got, expected) => panic!("{input:?}: got {got:?}, expected error {expected:?}"),
        }
    }
}
