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
//! POST   /v1/services                      body ServiceSpecDoc -> DeployView (create or update)
//! GET    /v1/services                      -> Vec<ServiceView>
//! GET    /v1/services/{name}               -> ServiceInspectView
//! GET    /v1/services/{name}/tasks         -> Vec<TaskView>
//! POST   /v1/services/{name}/scale         body ScaleRequest -> ServiceView
//! POST   /v1/services/{name}/update        body ServiceUpdateRequest -> DeployView
//! POST   /v1/services/{name}/rollback      -> DeployView     (409 when there is nothing to roll back to)
//! DELETE /v1/services/{name}               -> RemovedServiceView
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
    pub const SERVICES: &str = "/v1/services";
    pub const SERVICE: &str = "/v1/services/{name}";
    pub const SERVICE_TASKS: &str = "/v1/services/{name}/tasks";
    pub const SERVICE_SCALE: &str = "/v1/services/{name}/scale";
    pub const SERVICE_UPDATE: &str = "/v1/services/{name}/update";
    pub const SERVICE_ROLLBACK: &str = "/v1/services/{name}/rollback";
    /// The diff and placement a deploy would make, changing nothing.
    pub const SERVICE_PLAN: &str = "/v1/plan/service";
    pub const STACKS: &str = "/v1/stacks";
    pub const STACK: &str = "/v1/stacks/{stack}";
    pub const STACK_SERVICES: &str = "/v1/stacks/{stack}/services";
    pub const STACK_TASKS: &str = "/v1/stacks/{stack}/tasks";
    /// The tasks taking connections, as the answering node's mesh sees them.
    pub const SERVICE_ENDPOINTS: &str = "/v1/services/{name}/endpoints";
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

    pub fn services() -> String {
        routes::SERVICES.to_owned()
    }

    pub fn service(name: &str) -> String {
        format!("{}/{}", routes::SERVICES, percent_encode_segment(name))
    }

    pub fn service_tasks(name: &str) -> String {
        format!("{}/tasks", service(name))
    }

    pub fn service_endpoints(name: &str) -> String {
        format!("{}/endpoints", service(name))
    }

    pub fn service_scale(name: &str) -> String {
        format!("{}/scale", service(name))
    }

    pub fn service_update(name: &str) -> String {
        format!("{}/update", service(name))
    }

    pub fn service_rollback(name: &str) -> String {
        format!("{}/rollback", service(name))
    }

    pub fn service_plan() -> String {
        routes::SERVICE_PLAN.to_owned()
    }

    pub fn stacks() -> String {
        routes::STACKS.to_owned()
    }

    pub fn stack(stack: &str) -> String {
        format!("{}/{}", routes::STACKS, percent_encode_segment(stack))
    }

    pub fn stack_services(stack: &str) -> String {
        format!("{}/services", self::stack(stack))
    }

    pub fn stack_tasks(stack: &str) -> String {
        format!("{}/tasks", self::stack(stack))
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
    /// Why the node's container engine cannot be used; `null` while it answers.
    pub engine_error: Option<String>,
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

/// Service modes, restart conditions, pull policies and port protocols as they
/// appear on the wire and in spec files.
pub const SERVICE_MODES: [&str; 2] = ["replicated", "global"];
pub const RESTART_CONDITIONS: [&str; 3] = ["any", "on-failure", "none"];
pub const PULL_POLICIES: [&str; 3] = ["missing", "always", "never"];
pub const PROTOCOLS: [&str; 2] = ["tcp", "udp"];
/// Task states in lifecycle order; the last five are terminal.
pub const TASK_STATES: [&str; 11] = [
    "new",
    "pending",
    "assigned",
    "preparing",
    "starting",
    "running",
    "complete",
    "failed",
    "shutdown",
    "rejected",
    "orphaned",
];
/// Task health as a container's health check reports it (`null`: no check).
pub const HEALTH_STATES: [&str; 3] = ["starting", "healthy", "unhealthy"];
/// Update orders: stop the old task first (the default), or start the new one first.
pub const UPDATE_ORDERS: [&str; 2] = ["stop-first", "start-first"];
/// What a rolling update does when too many new tasks fail.
pub const FAILURE_ACTIONS: [&str; 3] = ["pause", "continue", "rollback"];
/// What a rollback does when too many tasks fail (it cannot roll back).
pub const ROLLBACK_FAILURE_ACTIONS: [&str; 2] = ["pause", "continue"];
/// Where an update run stands. `updating` and `rolling-back` are running; the
/// others are final until the next change of the task template or rollback.
pub const UPDATE_STATES: [&str; 6] = [
    "updating",
    "paused",
    "completed",
    "rolling-back",
    "rollback-paused",
    "rolled-back",
];

/// What `None` in a [`ServiceSpecDoc`] means (Docker Swarm's defaults).
pub mod defaults {
    pub const MODE: &str = "replicated";
    pub const REPLICAS: u64 = 1;
    pub const PROTOCOL: &str = "tcp";
    pub const RESTART_CONDITION: &str = "any";
    pub const RESTART_DELAY: &str = "5s";
    pub const STOP_GRACE_PERIOD: &str = "10s";
    pub const PULL: &str = "missing";
    /// Update and rollback settings (Docker Swarm's).
    pub const UPDATE_PARALLELISM: u64 = 1;
    pub const UPDATE_DELAY: &str = "0s";
    pub const UPDATE_ORDER: &str = "stop-first";
    pub const UPDATE_MONITOR: &str = "5s";
    pub const UPDATE_FAILURE_ACTION: &str = "pause";
    pub const UPDATE_MAX_FAILURE_RATIO: f64 = 0.0;
}

/// Longest health check interval, timeout or start period, and longest update
/// delay or monitor window: one day.
pub const MAX_SPEC_WAIT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Most consecutive failed health checks before a container counts as unhealthy.
pub const MAX_HEALTH_RETRIES: u64 = 100;

/// Most replicas a service may ask for.
pub const MAX_REPLICAS: u64 = 100_000;
/// Longest service name (a DNS label).
pub const MAX_SERVICE_NAME_LEN: usize = 63;
/// Longest image reference.
pub const MAX_IMAGE_LEN: usize = 1024;
/// Most entries in any list or map of a spec (command, env, ports, ...).
pub const MAX_SPEC_LIST_LEN: usize = 1024;
/// Longest environment variable name or label key in a spec.
pub const MAX_SPEC_KEY_LEN: usize = 256;
/// Most placement constraints on one service.
pub const MAX_CONSTRAINTS: usize = 64;

/// A service as a user writes it: the body of `POST /v1/services` and the format
/// of `shoal deploy -f spec.json|spec.yaml`.
///
/// Every field but `name` and `image` may be left out; `None` means the default
/// in [`defaults`]. `name` and `image` default to empty only so that a spec file
/// may leave them to the command line; an empty one is rejected by
/// [`ServiceSpecDoc::validate`]. Unknown fields are errors naming the field.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSpecDoc {
    pub name: String,
    pub image: String,
    /// Replaces the image's entrypoint; empty keeps it.
    pub command: Vec<String>,
    /// Replaces the image's command (its arguments); empty keeps it.
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// `"replicated"` or `"global"`.
    pub mode: Option<String>,
    /// Replicated services only.
    pub replicas: Option<u64>,
    pub ports: Vec<PortDoc>,
    /// CPU limit, e.g. 0.5.
    pub cpus: Option<f64>,
    /// Memory limit, e.g. `"256m"` (see [`crate::units::parse_memory`]).
    pub memory: Option<String>,
    pub reserve_cpus: Option<f64>,
    pub reserve_memory: Option<String>,
    /// ANDed, e.g. `"node.labels.zone==eu"`.
    pub constraints: Vec<String>,
    /// Most tasks of this service on one node; replicated services only.
    pub max_per_node: Option<u64>,
    /// `"any"`, `"on-failure"` or `"none"`.
    pub restart_condition: Option<String>,
    /// A duration, e.g. `"5s"` (see [`crate::units::parse_duration`]).
    pub restart_delay: Option<String>,
    pub restart_max_attempts: Option<u64>,
    pub restart_window: Option<String>,
    pub stop_grace_period: Option<String>,
    /// e.g. `"SIGTERM"`, `"TERM"` or `"15"`.
    pub stop_signal: Option<String>,
    /// `"missing"`, `"always"` or `"never"`.
    pub pull: Option<String>,
    /// A shell command that checks a container's health (Docker's
    /// `["CMD-SHELL", cmd]`); exit 0 is healthy. Not with `health_test`.
    /// Without any health field, the image's own check (if any) applies.
    pub health_cmd: Option<String>,
    /// The check in Docker's list form: `["CMD-SHELL", cmd]`,
    /// `["CMD", program, args...]` or `["NONE"]`. Not with `health_cmd`.
    pub health_test: Option<Vec<String>>,
    /// Durations between checks, before a check counts as failed, and at
    /// start-up before failures count; absent or `"0s"` = Docker's default
    /// (30s, 30s, none). They need `health_cmd` or `health_test`.
    pub health_interval: Option<String>,
    pub health_timeout: Option<String>,
    pub health_start_period: Option<String>,
    /// Consecutive failed checks before unhealthy; absent or 0 = Docker's 3.
    pub health_retries: Option<u64>,
    /// Turns off the image's own health check; no other health field with it.
    pub no_healthcheck: bool,
    /// Tasks replaced at once by a rolling update; 0 = all at once.
    pub update_parallelism: Option<u64>,
    /// Wait between batches, e.g. `"5s"`.
    pub update_delay: Option<String>,
    /// One of [`UPDATE_ORDERS`].
    pub update_order: Option<String>,
    /// How long a new task must run (and stay healthy) to count as updated.
    pub update_monitor: Option<String>,
    /// One of [`FAILURE_ACTIONS`].
    pub update_failure_action: Option<String>,
    /// The share of tasks (0 to 1) that may fail before the failure action.
    pub update_max_failure_ratio: Option<f64>,
    /// The same settings for a rollback; the failure action is one of
    /// [`ROLLBACK_FAILURE_ACTIONS`].
    pub rollback_parallelism: Option<u64>,
    pub rollback_delay: Option<String>,
    pub rollback_order: Option<String>,
    pub rollback_monitor: Option<String>,
    pub rollback_failure_action: Option<String>,
    pub rollback_max_failure_ratio: Option<f64>,
    /// Changing it redeploys every task without another change (`--force`
    /// bumps it); absent keeps the service's current value (0 when created).
    pub force_update: Option<u64>,
}

/// The update (or rollback) settings of a [`ServiceSpecDoc`], by field prefix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpdateSettingsDoc<'a> {
    /// `"update"` or `"rollback"`: field names are `{prefix}_parallelism`, ...
    pub prefix: &'static str,
    pub parallelism: Option<u64>,
    pub delay: Option<&'a str>,
    pub order: Option<&'a str>,
    pub monitor: Option<&'a str>,
    pub failure_action: Option<&'a str>,
    pub max_failure_ratio: Option<f64>,
}

impl UpdateSettingsDoc<'_> {
    /// The failure actions this prefix allows.
    pub fn failure_actions(&self) -> &'static [&'static str] {
        if self.prefix == "rollback" {
            &ROLLBACK_FAILURE_ACTIONS
        } else {
            &FAILURE_ACTIONS
        }
    }

    fn check(&self) -> Result<(), InvalidInput> {
        let name = |field: &str| format!("{}_{field}", self.prefix);
        if let Some(parallelism) = self.parallelism {
            if parallelism > MAX_REPLICAS {
                return Err(spec_field(
                    name("parallelism"),
                    format!("{parallelism} is too many; allowed 0 (all at once) to {MAX_REPLICAS}"),
                ));
            }
        }
        for (field, value) in [("delay", self.delay), ("monitor", self.monitor)] {
            if let Some(text) = value {
                check_wait(&name(field), text)?;
            }
        }
        let order = self.order.map(str::to_owned);
        check_choice(&name("order"), &order, &UPDATE_ORDERS)?;
        let action = self.failure_action.map(str::to_owned);
        check_choice(&name("failure_action"), &action, self.failure_actions())?;
        if let Some(ratio) = self.max_failure_ratio {
            check_ratio(ratio).map_err(|reason| spec_field(name("max_failure_ratio"), reason))?;
        }
        Ok(())
    }
}

/// A failure ratio: a number from 0 to 1.
pub fn check_ratio(ratio: f64) -> Result<(), String> {
    if ratio.is_finite() && (0.0..=1.0).contains(&ratio) {
        Ok(())
    } else {
        Err(format!(
            "{ratio} is not allowed; allowed a number from 0 to 1, e.g. 0.2 (a fifth of the tasks may fail)"
        ))
    }
}

/// A failure ratio in millionths, as the cluster stores it.
pub fn ratio_ppm(ratio: f64) -> u32 {
    (ratio.clamp(0.0, 1.0) * 1e6).round() as u32
}

/// A duration of at most [`MAX_SPEC_WAIT`] (zero allowed).
fn check_wait(field: &str, text: &str) -> Result<(), InvalidInput> {
    let duration =
        crate::units::parse_duration(text).map_err(|reason| spec_field(field, reason))?;
    if duration > MAX_SPEC_WAIT {
        return Err(spec_field(
            field,
            format!("{text} is too long; allowed 0s to 24h"),
        ));
    }
    Ok(())
}

/// Docker's list form of a health check: `["CMD-SHELL", cmd]`,
/// `["CMD", program, args...]` or `["NONE"]`.
pub fn validate_health_test(test: &[String]) -> Result<(), String> {
    let ok = match test.first().map(String::as_str) {
        Some("NONE") => test.len() == 1,
        Some("CMD-SHELL") => test.len() == 2 && !test[1].trim().is_empty(),
        Some("CMD") => test.len() >= 2 && !test[1].is_empty(),
        _ => false,
    };
    if !ok {
        return Err(format!(
            "{test:?} is not a health check; allowed: [\"CMD-SHELL\", COMMAND], [\"CMD\", PROGRAM, ARGS...] or [\"NONE\"]"
        ));
    }
    if test.len() > MAX_SPEC_LIST_LEN || test.iter().any(|item| item.contains('\0')) {
        return Err(format!(
            "at most {MAX_SPEC_LIST_LEN} entries, without NUL characters"
        ));
    }
    Ok(())
}

/// A shell command for a health check: not blank, no NUL characters.
pub fn validate_health_cmd(cmd: &str) -> Result<(), String> {
    if cmd.trim().is_empty() {
        return Err(
            "the command is empty; give a shell command such as \"curl -f http://localhost/\""
                .to_owned(),
        );
    }
    if cmd.contains('\0') {
        return Err("the command must not contain NUL characters".to_owned());
    }
    Ok(())
}

/// A published port: `-p 8080:80/tcp` (ingress: every node listens),
/// `-p mode=host,published=8080,target=80` (only the task's node). No
/// field is skipped when empty: the type also travels in postcard frames.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortDoc {
    pub published: u16,
    pub target: u16,
    /// `"tcp"` or `"udp"`; `None` means tcp.
    #[serde(default)]
    pub protocol: Option<String>,
    /// `"ingress"` or `"host"`; `None` means ingress.
    #[serde(default)]
    pub mode: Option<String>,
    /// `"least-conn"`, `"round-robin"` or `"local-first"`; `None` means
    /// least-conn.
    #[serde(default)]
    pub policy: Option<String>,
    /// `"v2"`: prepend a PROXY protocol v2 header with the client's address.
    #[serde(default)]
    pub proxy_protocol: Option<String>,
}

/// Publish modes, balancing policies and PROXY protocol versions of a port.
pub const PUBLISH_MODES: [&str; 2] = ["ingress", "host"];
pub const BALANCE_POLICIES: [&str; 3] = ["least-conn", "round-robin", "local-first"];
pub const PROXY_PROTOCOLS: [&str; 1] = ["v2"];

impl std::fmt::Display for PortDoc {
    /// `8080:80/tcp`, the form `service ls` shows, with the options that
    /// differ from the defaults (`,mode=host`, `,policy=round-robin`, ...).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let protocol = self.protocol.as_deref().unwrap_or(defaults::PROTOCOL);
        write!(f, "{}:{}/{protocol}", self.published, self.target)?;
        if let Some(mode) = self.mode.as_deref().filter(|m| *m != "ingress") {
            write!(f, ",mode={mode}")?;
        }
        if let Some(policy) = self.policy.as_deref().filter(|p| *p != "least-conn") {
            write!(f, ",policy={policy}")?;
        }
        if let Some(version) = self.proxy_protocol.as_deref() {
            write!(f, ",proxy-protocol={version}")?;
        }
        Ok(())
    }
}

/// The body of `POST /v1/stacks/{stack}`: the stack's services as a Compose
/// file names them (the cluster names them `STACK_NAME`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct StackDeployRequest {
    pub services: Vec<ServiceSpecDoc>,
    /// Remove the stack's services that are not in `services`.
    pub prune: bool,
    /// Answer with the plan and change nothing.
    pub dry_run: bool,
}

/// Most services in one stack.
pub const MAX_STACK_SERVICES: usize = 1_000;

/// What a deploy does to one service, as [`PlanView`] shows it. `change` is one of
/// [`PLAN_CHANGES`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServicePlanView {
    pub name: String,
    pub change: String,
    pub image: String,
    /// The image before, for an update.
    pub from_image: Option<String>,
    /// Replicas after the deploy; `null` for a global service.
    pub replicas: Option<u64>,
    /// Replicas before, for a scale.
    pub from_replicas: Option<u64>,
    /// Tasks replaced at once, for an update.
    pub parallelism: Option<u64>,
    /// New tasks the deploy would place now, by node name.
    pub placed: BTreeMap<String, u64>,
    /// New tasks no node would take now, by the scheduler's reason.
    pub unplaced: BTreeMap<String, u64>,
}

/// The values of [`ServicePlanView::change`].
pub const PLAN_CHANGES: [&str; 7] = [
    "create",
    "update",
    "scale",
    "settings",
    "unchanged",
    "remove",
    "would-remove",
];

/// The answer to a deploy's plan (`POST /v1/plan/service`) and to
/// `POST /v1/stacks/{stack}` (with or without `dry_run`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PlanView {
    pub services: Vec<ServicePlanView>,
    /// Whether the change was made (false for a dry run).
    pub applied: bool,
}

/// One stack in `stack ls`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StackView {
    pub name: String,
    pub services: u64,
}

/// The answer to `DELETE /v1/stacks/{stack}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RemovedStackView {
    pub name: String,
    /// The services removed, by their full names.
    pub services: Vec<String>,
}

/// The answer to `POST /v1/services`, `POST /v1/services/{name}/update` and
/// `POST /v1/services/{name}/rollback`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DeployView {
    pub service: ServiceView,
    /// The service did not exist before.
    pub created: bool,
    /// The spec differs from the one stored (always true when created).
    pub changed: bool,
    /// The rolling update (or rollback) this request started; `null` when it
    /// started none (a create, or a change of replicas or update settings
    /// only). Follow it with `GET /v1/services/{name}` until its state is final.
    #[serde(default)]
    pub update: Option<UpdateStatusView>,
}

/// One run of a rolling update or rollback, and where it stands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct UpdateStatusView {
    /// One of [`UPDATE_STATES`].
    pub state: String,
    /// The service version this run rolls out; every run has its own. An
    /// automatic rollback is a new run with the next version.
    pub version: u64,
    /// Why the run is where it is, e.g. why it paused.
    pub message: String,
    pub started_at_ms: u64,
    /// When the run reached a final state; `null` while it runs.
    pub completed_at_ms: Option<u64>,
    /// Tasks (slots) the run brings to the service's current template.
    pub total: u64,
    /// Slots updated: their new task has run (and stayed healthy) through the
    /// monitor window.
    pub done: u64,
    /// Slots being updated now.
    pub in_flight: u64,
    /// Slots whose new task failed within the monitor window.
    pub failed: u64,
}

impl UpdateStatusView {
    /// Whether the run is over: anything but `updating` and `rolling-back`.
    pub fn is_final(&self) -> bool {
        !matches!(self.state.as_str(), "updating" | "rolling-back")
    }
}

/// One service in `service ls`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceView {
    pub name: String,
    /// `"replicated"` or `"global"`.
    pub mode: String,
    /// For global services: the number of nodes that should run a task.
    pub replicas_desired: u64,
    pub replicas_running: u64,
    pub image: String,
    /// `"8080:80/tcp"`.
    pub ports: Vec<String>,
    /// Bumped whenever the task template changes (not on scaling).
    pub version: u64,
    pub updated_at_ms: u64,
}

/// One task: one slot of a service placed (or to be placed) on one node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TaskView {
    pub id: String,
    pub service: String,
    /// 1-based for replicated services; 0 for global ones.
    pub slot: u64,
    pub node_id: Option<u64>,
    pub node_name: Option<String>,
    /// `"running"` or `"shutdown"`.
    pub desired_state: String,
    /// One of [`TASK_STATES`].
    pub state: String,
    /// Why the task is where it is, e.g. why it is still pending.
    pub message: String,
    pub error: String,
    pub exit_code: Option<i64>,
    pub container_id: Option<String>,
    pub restart_count: u64,
    /// The service version the task was made from.
    pub spec_version: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub state_changed_at_ms: u64,
    /// One of [`HEALTH_STATES`]; `null` when the container has no health check.
    #[serde(default)]
    pub health: Option<String>,
}

/// The answer to `GET /v1/services/{name}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ServiceInspectView {
    /// Normalised: every default filled in.
    pub spec: ServiceSpecDoc,
    pub version: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub replicas_running: u64,
    pub replicas_desired: u64,
    /// The last rolling update or rollback (the one running, if any).
    #[serde(default)]
    pub update: Option<UpdateStatusView>,
    /// The spec before the last change of the task template: what
    /// `service rollback` returns to.
    #[serde(default)]
    pub previous_spec: Option<ServiceSpecDoc>,
}

/// The body of `POST /v1/services/{name}/update`: changes to the service's
/// current spec, applied on the leader. Absent fields change nothing; the
/// fields mean what they mean in [`ServiceSpecDoc`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceUpdateRequest {
    pub image: Option<String>,
    /// Set (or replace) environment variables.
    pub env_add: BTreeMap<String, String>,
    /// Remove environment variables (before `env_add` is applied).
    pub env_rm: Vec<String>,
    pub labels_add: BTreeMap<String, String>,
    pub labels_rm: Vec<String>,
    pub replicas: Option<u64>,
    pub cpus: Option<f64>,
    pub memory: Option<String>,
    pub reserve_cpus: Option<f64>,
    pub reserve_memory: Option<String>,
    /// Replaces the health check's command (and `health_test`).
    pub health_cmd: Option<String>,
    pub health_test: Option<Vec<String>>,
    pub health_interval: Option<String>,
    pub health_timeout: Option<String>,
    pub health_start_period: Option<String>,
    pub health_retries: Option<u64>,
    /// Turns health checking off (clears the other health fields).
    pub no_healthcheck: bool,
    pub update_parallelism: Option<u64>,
    pub update_delay: Option<String>,
    pub update_order: Option<String>,
    pub update_monitor: Option<String>,
    pub update_failure_action: Option<String>,
    pub update_max_failure_ratio: Option<f64>,
    pub rollback_parallelism: Option<u64>,
    pub rollback_delay: Option<String>,
    pub rollback_order: Option<String>,
    pub rollback_monitor: Option<String>,
    pub rollback_failure_action: Option<String>,
    pub rollback_max_failure_ratio: Option<f64>,
    /// Redeploy every task even if nothing else changes.
    pub force: bool,
}

/// The body of `POST /v1/services/{name}/scale`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    pub replicas: u64,
}

/// The answer to `DELETE /v1/services/{name}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RemovedServiceView {
    pub name: String,
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
    #[error("service name {name:?} is not allowed; use 1-{MAX_SERVICE_NAME_LEN} characters of a-z, 0-9, '-' and '_', starting with a letter or digit")]
    ServiceName { name: String },
    /// A field of a service spec; `field` is its name in the spec file.
    #[error("invalid {field}: {reason}")]
    SpecField { field: String, reason: String },
}

fn spec_field(field: impl Into<String>, reason: impl Into<String>) -> InvalidInput {
    InvalidInput::SpecField {
        field: field.into(),
        reason: reason.into(),
    }
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

/// Service names: 1–63 of `[a-z0-9_-]`, starting with a letter or digit (they
/// become part of container names and of `web.2`-style task names).
pub fn validate_service_name(name: &str) -> Result<(), InvalidInput> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME_LEN
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::ServiceName {
            name: name.to_owned(),
        })
    }
}

const CONSTRAINT_FORMS: &str =
    "expected KEY==VALUE or KEY!=VALUE with KEY one of node.id, node.name, node.role, node.labels.LABEL, e.g. node.labels.zone==eu";

/// Placement constraints: `node.id|node.name|node.role|node.labels.KEY` then
/// `==` or `!=` then a non-empty value.
pub fn validate_constraint(input: &str) -> Result<(), String> {
    let Some((key, value)) = input.split_once("==").or_else(|| input.split_once("!=")) else {
        return Err(format!(
            "constraint {input:?} has no operator; {CONSTRAINT_FORMS}"
        ));
    };
    let (key, value) = (key.trim(), value.trim());
    let key_ok = match key {
        "node.id" | "node.name" | "node.role" => true,
        other => other
            .strip_prefix("node.labels.")
            .is_some_and(valid_spec_key),
    };
    if !key_ok {
        return Err(format!(
            "constraint {input:?} has key {key:?}; {CONSTRAINT_FORMS}"
        ));
    }
    if value.is_empty() || value.chars().any(char::is_control) {
        return Err(format!(
            "constraint {input:?} has no value; {CONSTRAINT_FORMS}"
        ));
    }
    if key == "node.role" && !ROLES.contains(&value) {
        return Err(format!(
            "constraint {input:?}: node.role is manager or worker"
        ));
    }
    if key == "node.id" && value.parse::<u64>().is_err() {
        return Err(format!(
            "constraint {input:?}: node.id takes a node id number, e.g. node.id==3"
        ));
    }
    Ok(())
}

const SIGNALS: [&str; 31] = [
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];

/// Stop signals: a name with or without `SIG` (`SIGTERM`, `TERM`) or a number 1–64.
pub fn validate_signal(signal: &str) -> Result<(), String> {
    let ok = match signal.parse::<u8>() {
        Ok(number) => (1..=64).contains(&number),
        Err(_) => SIGNALS.contains(&signal.strip_prefix("SIG").unwrap_or(signal)),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{signal:?} is not a signal; give a name like SIGTERM or TERM, or a number from 1 to 64"
        ))
    }
}

/// Environment variable names and service label keys: 1–256 characters without
/// whitespace, control characters or '='.
pub fn valid_spec_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_SPEC_KEY_LEN
        && !key
            .chars()
            .any(|c| c == '=' || c.is_whitespace() || c.is_control())
}

/// Checks `value` against the allowed lowercase wire names of `field`.
fn check_choice(field: &str, value: &Option<String>, allowed: &[&str]) -> Result<(), InvalidInput> {
    match value {
        Some(value) if !allowed.contains(&value.as_str()) => Err(spec_field(
            field,
            format!("{value:?} is not allowed; use {}", allowed.join(", ")),
        )),
        _ => Ok(()),
    }
}

impl ServiceSpecDoc {
    /// Checks every field's syntax and the rules that need no cluster state, with
    /// errors naming the spec field and what is allowed. The daemon checks the rest
    /// (e.g. that a reservation fits some node).
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if self.name.is_empty() {
            return Err(spec_field(
                "name",
                "a service name is required, e.g. web (give NAME or `name:` in the spec file)",
            ));
        }
        validate_service_name(&self.name)?;
        if self.image.is_empty() {
            return Err(spec_field(
                "image",
                "an image is required, e.g. nginx:1.27 (give --image or `image:` in the spec file)",
            ));
        }
        if self.image.len() > MAX_IMAGE_LEN
            || self
                .image
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(spec_field(
                "image",
                format!(
                    "{:?} is not an image reference: at most {MAX_IMAGE_LEN} characters without whitespace",
                    self.image
                ),
            ));
        }
        for (field, list) in [
            ("command", &self.command),
            ("args", &self.args),
            ("constraints", &self.constraints),
        ] {
            if list.len() > MAX_SPEC_LIST_LEN {
                return Err(spec_field(
                    field,
                    format!("at most {MAX_SPEC_LIST_LEN} entries"),
                ));
            }
            if list.iter().any(|item| item.contains('\0')) {
                return Err(spec_field(field, "entries must not contain NUL characters"));
            }
        }
        for (field, map) in [("env", &self.env), ("labels", &self.labels)] {
            if map.len() > MAX_SPEC_LIST_LEN {
                return Err(spec_field(
                    field,
                    format!("at most {MAX_SPEC_LIST_LEN} entries"),
                ));
            }
            for (key, value) in map {
                if !valid_spec_key(key) {
                    return Err(spec_field(
                        format!("{field} key {key:?}"),
                        format!(
                            "a key is 1-{MAX_SPEC_KEY_LEN} characters without whitespace or '='"
                        ),
                    ));
                }
                if value.contains('\0') {
                    return Err(spec_field(
                        format!("{field}[{key:?}]"),
                        "a value must not contain NUL characters",
                    ));
                }
            }
        }
        check_choice("mode", &self.mode, &SERVICE_MODES)?;
        let global = self.mode.as_deref() == Some("global");
        if global && self.replicas.is_some() {
            return Err(spec_field(
                "replicas",
                "a global service runs one task on every eligible node; leave replicas out or use mode replicated",
            ));
        }
        if global && self.max_per_node.is_some() {
            return Err(spec_field(
                "max_per_node",
                "only replicated services take a per-node maximum; a global service runs one task per node",
            ));
        }
        if let Some(replicas) = self.replicas {
            if replicas > MAX_REPLICAS {
                return Err(spec_field(
                    "replicas",
                    format!("{replicas} is too many; allowed 0 to {MAX_REPLICAS}"),
                ));
            }
        }
        if self.ports.len() > MAX_SPEC_LIST_LEN {
            return Err(spec_field(
                "ports",
                format!("at most {MAX_SPEC_LIST_LEN} ports"),
            ));
        }
        let mut published = std::collections::BTreeSet::new();
        for (i, port) in self.ports.iter().enumerate() {
            for (name, value) in [("published", port.published), ("target", port.target)] {
                if value == 0 {
                    return Err(spec_field(
                        format!("ports[{i}].{name}"),
                        "a port is a number from 1 to 65535",
                    ));
                }
            }
            check_choice(&format!("ports[{i}].protocol"), &port.protocol, &PROTOCOLS)?;
            check_choice(&format!("ports[{i}].mode"), &port.mode, &PUBLISH_MODES)?;
            check_choice(
                &format!("ports[{i}].policy"),
                &port.policy,
                &BALANCE_POLICIES,
            )?;
            check_choice(
                &format!("ports[{i}].proxy_protocol"),
                &port.proxy_protocol,
                &PROXY_PROTOCOLS,
            )?;
            let protocol = port.protocol.as_deref().unwrap_or(defaults::PROTOCOL);
            if !published.insert((port.published, protocol)) {
                return Err(spec_field(
                    format!("ports[{i}].published"),
                    format!(
                        "port {}/{protocol} is published twice; each published port and protocol may appear once",
                        port.published
                    ),
                ));
            }
        }
        let cpus = |field: &str, value: Option<f64>| -> Result<Option<u64>, InvalidInput> {
            value
                .map(|cpus| {
                    crate::units::nano_cpus(cpus).map_err(|reason| spec_field(field, reason))
                })
                .transpose()
        };
        let memory = |field: &str, value: &Option<String>| -> Result<Option<u64>, InvalidInput> {
            value
                .as_deref()
                .map(|size| {
                    crate::units::parse_memory(size).map_err(|reason| spec_field(field, reason))
                })
                .transpose()
        };
        let limit_cpus = cpus("cpus", self.cpus)?;
        let reserve_cpus = cpus("reserve_cpus", self.reserve_cpus)?;
        let limit_memory = memory("memory", &self.memory)?;
        let reserve_memory = memory("reserve_memory", &self.reserve_memory)?;
        if let Some(bytes) = limit_memory {
            if bytes < MIN_MEMORY_LIMIT_BYTES {
                return Err(spec_field(
                    "memory",
                    "a memory limit is at least 6m (Docker refuses less)",
                ));
            }
        }
        if let (Some(limit), Some(reserve)) = (limit_cpus, reserve_cpus) {
            if reserve > limit {
                return Err(spec_field(
                    "reserve_cpus",
                    "the CPU reservation must not exceed the CPU limit (cpus)",
                ));
            }
        }
        if let (Some(limit), Some(reserve)) = (limit_memory, reserve_memory) {
            if reserve > limit {
                return Err(spec_field(
                    "reserve_memory",
                    "the memory reservation must not exceed the memory limit (memory)",
                ));
            }
        }
        if self.constraints.len() > MAX_CONSTRAINTS {
            return Err(spec_field(
                "constraints",
                format!("at most {MAX_CONSTRAINTS} constraints"),
            ));
        }
        for constraint in &self.constraints {
            validate_constraint(constraint).map_err(|reason| spec_field("constraints", reason))?;
        }
        check_choice(
            "restart_condition",
            &self.restart_condition,
            &RESTART_CONDITIONS,
        )?;
        for (field, value) in [
            ("restart_delay", &self.restart_delay),
            ("restart_window", &self.restart_window),
            ("stop_grace_period", &self.stop_grace_period),
        ] {
            if let Some(text) = value {
                crate::units::parse_duration(text).map_err(|reason| spec_field(field, reason))?;
            }
        }
        if let Some(signal) = &self.stop_signal {
            validate_signal(signal).map_err(|reason| spec_field("stop_signal", reason))?;
        }
        check_choice("pull", &self.pull, &PULL_POLICIES)?;
        self.validate_health()?;
        for settings in self.update_settings() {
            settings.check()?;
        }
        Ok(())
    }

    /// The health fields that are set, by name (`no_healthcheck` aside).
    fn health_fields_given(&self) -> Vec<&'static str> {
        [
            ("health_cmd", self.health_cmd.is_some()),
            ("health_test", self.health_test.is_some()),
            ("health_interval", self.health_interval.is_some()),
            ("health_timeout", self.health_timeout.is_some()),
            ("health_start_period", self.health_start_period.is_some()),
            ("health_retries", self.health_retries.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect()
    }

    fn validate_health(&self) -> Result<(), InvalidInput> {
        let given = self.health_fields_given();
        if self.no_healthcheck {
            if let Some(other) = given.first() {
                return Err(spec_field(
                    "no_healthcheck",
                    format!("cannot be combined with {other}: a disabled check has nothing to run or time"),
                ));
            }
            return Ok(());
        }
        match (&self.health_cmd, &self.health_test) {
            (Some(_), Some(_)) => {
                return Err(spec_field(
                    "health_cmd",
                    "cannot be combined with health_test; give one of them",
                ))
            }
            (Some(cmd), None) => {
                validate_health_cmd(cmd).map_err(|reason| spec_field("health_cmd", reason))?
            }
            (None, Some(test)) => {
                validate_health_test(test).map_err(|reason| spec_field("health_test", reason))?
            }
            (None, None) => {
                if let Some(timing) = given.first() {
                    return Err(spec_field(
                        *timing,
                        "needs health_cmd or health_test: the image's own health check cannot be retimed",
                    ));
                }
            }
        }
        for (field, value) in [
            ("health_interval", &self.health_interval),
            ("health_timeout", &self.health_timeout),
            ("health_start_period", &self.health_start_period),
        ] {
            if let Some(text) = value {
                check_wait(field, text)?;
            }
        }
        if let Some(retries) = self.health_retries {
            if retries > MAX_HEALTH_RETRIES {
                return Err(spec_field(
                    "health_retries",
                    format!("{retries} is too many; allowed 0 (Docker's default of 3) to {MAX_HEALTH_RETRIES}"),
                ));
            }
        }
        Ok(())
    }

    /// The update settings, then the rollback settings.
    pub fn update_settings(&self) -> [UpdateSettingsDoc<'_>; 2] {
        [
            UpdateSettingsDoc {
                prefix: "update",
                parallelism: self.update_parallelism,
                delay: self.update_delay.as_deref(),
                order: self.update_order.as_deref(),
                monitor: self.update_monitor.as_deref(),
                failure_action: self.update_failure_action.as_deref(),
                max_failure_ratio: self.update_max_failure_ratio,
            },
            UpdateSettingsDoc {
                prefix: "rollback",
                parallelism: self.rollback_parallelism,
                delay: self.rollback_delay.as_deref(),
                order: self.rollback_order.as_deref(),
                monitor: self.rollback_monitor.as_deref(),
                failure_action: self.rollback_failure_action.as_deref(),
                max_failure_ratio: self.rollback_max_failure_ratio,
            },
        ]
    }

    /// The same spec with every `None` replaced by its default, as
    /// `service inspect` shows it. Replicas stay `None` for global services.
    pub fn with_defaults(&self) -> ServiceSpecDoc {
        let mut spec = self.clone();
        let or = |value: &mut Option<String>, default: &str| {
            value.get_or_insert_with(|| default.to_owned());
        };
        or(&mut spec.mode, defaults::MODE);
        if spec.mode.as_deref() != Some("global") {
            spec.replicas.get_or_insert(defaults::REPLICAS);
        }
        for port in &mut spec.ports {
            or(&mut port.protocol, defaults::PROTOCOL);
        }
        or(&mut spec.restart_condition, defaults::RESTART_CONDITION);
        or(&mut spec.restart_delay, defaults::RESTART_DELAY);
        or(&mut spec.stop_grace_period, defaults::STOP_GRACE_PERIOD);
        or(&mut spec.pull, defaults::PULL);
        for prefix in ["update", "rollback"] {
            let (parallelism, delay, order, monitor, action, ratio) = if prefix == "update" {
                (
                    &mut spec.update_parallelism,
                    &mut spec.update_delay,
                    &mut spec.update_order,
                    &mut spec.update_monitor,
                    &mut spec.update_failure_action,
                    &mut spec.update_max_failure_ratio,
                )
            } else {
                (
                    &mut spec.rollback_parallelism,
                    &mut spec.rollback_delay,
                    &mut spec.rollback_order,
                    &mut spec.rollback_monitor,
                    &mut spec.rollback_failure_action,
                    &mut spec.rollback_max_failure_ratio,
                )
            };
            parallelism.get_or_insert(defaults::UPDATE_PARALLELISM);
            or(delay, defaults::UPDATE_DELAY);
            or(order, defaults::UPDATE_ORDER);
            or(monitor, defaults::UPDATE_MONITOR);
            or(action, defaults::UPDATE_FAILURE_ACTION);
            ratio.get_or_insert(defaults::UPDATE_MAX_FAILURE_RATIO);
        }
        spec.force_update.get_or_insert(0);
        spec
    }
}

impl ServiceUpdateRequest {
    /// Whether the request changes nothing at all.
    pub fn is_empty(&self) -> bool {
        *self == ServiceUpdateRequest::default()
    }

    /// Checks the syntax of every field with the spec document's rules (the
    /// result of the change is checked again as a whole spec).
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if let Some(image) = &self.image {
            let probe = ServiceSpecDoc {
                name: "probe".into(),
                image: image.clone(),
                ..ServiceSpecDoc::default()
            };
            probe.validate()?;
        }
        for (field, map, rm) in [
            ("env_add", &self.env_add, &self.env_rm),
            ("labels_add", &self.labels_add, &self.labels_rm),
        ] {
            if map.len() > MAX_SPEC_LIST_LEN || rm.len() > MAX_SPEC_LIST_LEN {
                return Err(spec_field(
                    field,
                    format!("at most {MAX_SPEC_LIST_LEN} entries"),
                ));
            }
            for key in map.keys().chain(rm.iter()) {
                if !valid_spec_key(key) {
                    return Err(spec_field(
                        format!("{field} key {key:?}"),
                        format!(
                            "a key is 1-{MAX_SPEC_KEY_LEN} characters without whitespace or '='"
                        ),
                    ));
                }
            }
            if let Some((key, _)) = map.iter().find(|(_, value)| value.contains('\0')) {
                return Err(spec_field(
                    format!("{field}[{key:?}]"),
                    "a value must not contain NUL characters",
                ));
            }
        }
        if let Some(key) = self.labels_add.keys().find(|key| key.starts_with("shoal.")) {
            return Err(spec_field(
                format!("labels_add key {key:?}"),
                "label keys starting with \"shoal.\" are reserved for shoal itself",
            ));
        }
        if self.no_healthcheck {
            let probe = ServiceSpecDoc {
                no_healthcheck: true,
                health_cmd: self.health_cmd.clone(),
                health_test: self.health_test.clone(),
                health_interval: self.health_interval.clone(),
                health_timeout: self.health_timeout.clone(),
                health_start_period: self.health_start_period.clone(),
                health_retries: self.health_retries,
                ..ServiceSpecDoc::default()
            };
            probe.validate_health()?;
        }
        // The remaining fields share the spec document's rules.
        let mut probe = ServiceSpecDoc {
            name: "probe".into(),
            image: "probe".into(),
            ..ServiceSpecDoc::default()
        };
        let mut patch = self.clone();
        patch.image = None;
        patch.env_add.clear();
        patch.labels_add.clear();
        patch.force = false;
        patch.apply_to(&mut probe);
        if self.health_cmd.is_none() && self.health_test.is_none() && !self.no_healthcheck {
            // Timing alone changes the service's current check, which the
            // probe lacks.
            probe.health_cmd = probe
                .health_fields_given()
                .first()
                .map(|_| "true".to_owned());
        }
        probe.validate()
    }

    /// Lays the changes over `doc`, a service's current spec.
    pub fn apply_to(&self, doc: &mut ServiceSpecDoc) {
        fn set<T: Clone>(target: &mut Option<T>, value: &Option<T>) {
            if let Some(value) = value {
                *target = Some(value.clone());
            }
        }
        set(&mut doc.replicas, &self.replicas);
        if let Some(image) = &self.image {
            doc.image = image.clone();
        }
        for key in &self.env_rm {
            doc.env.remove(key);
        }
        doc.env
            .extend(self.env_add.iter().map(|(k, v)| (k.clone(), v.clone())));
        for key in &self.labels_rm {
            doc.labels.remove(key);
        }
        doc.labels
            .extend(self.labels_add.iter().map(|(k, v)| (k.clone(), v.clone())));
        set(&mut doc.cpus, &self.cpus);
        set(&mut doc.memory, &self.memory);
        set(&mut doc.reserve_cpus, &self.reserve_cpus);
        set(&mut doc.reserve_memory, &self.reserve_memory);
        if self.no_healthcheck {
            doc.health_cmd = None;
            doc.health_test = None;
            doc.health_interval = None;
            doc.health_timeout = None;
            doc.health_start_period = None;
            doc.health_retries = None;
            doc.no_healthcheck = true;
        }
        if self.health_cmd.is_some() || self.health_test.is_some() {
            doc.no_healthcheck = false;
            doc.health_cmd = self.health_cmd.clone();
            doc.health_test = self.health_test.clone();
        }
        set(&mut doc.health_interval, &self.health_interval);
        set(&mut doc.health_timeout, &self.health_timeout);
        set(&mut doc.health_start_period, &self.health_start_period);
        set(&mut doc.health_retries, &self.health_retries);
        set(&mut doc.update_parallelism, &self.update_parallelism);
        set(&mut doc.update_delay, &self.update_delay);
        set(&mut doc.update_order, &self.update_order);
        set(&mut doc.update_monitor, &self.update_monitor);
        set(&mut doc.update_failure_action, &self.update_failure_action);
        set(
            &mut doc.update_max_failure_ratio,
            &self.update_max_failure_ratio,
        );
        set(&mut doc.rollback_parallelism, &self.rollback_parallelism);
        set(&mut doc.rollback_delay, &self.rollback_delay);
        set(&mut doc.rollback_order, &self.rollback_order);
        set(&mut doc.rollback_monitor, &self.rollback_monitor);
        set(
            &mut doc.rollback_failure_action,
            &self.rollback_failure_action,
        );
        set(
            &mut doc.rollback_max_failure_ratio,
            &self.rollback_max_failure_ratio,
        );
        if self.force {
            doc.force_update = Some(doc.force_update.unwrap_or(0).saturating_add(1));
        }
    }
}

/// Docker refuses memory limits below 6 MiB.
pub const MIN_MEMORY_LIMIT_BYTES: u64 = 6 << 20;

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

/// One task taking connections on one published port: `GET
/// /v1/services/NAME/endpoints` and `service inspect`'s `endpoints`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EndpointView {
    pub task: String,
    pub slot: u64,
    pub node_id: u64,
    pub node: String,
    /// The task's node address (where its container is reached from).
    pub address: String,
    /// The published port and the task's container port behind it.
    pub port: u16,
    pub target: u16,
    pub protocol: String,
    /// `"ingress"` or `"host"`.
    pub mode: String,
    /// `"healthy"`, `"starting"`, `"unhealthy"` or `"none"` (no health check).
    pub health: String,
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
            engine_error: None,
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
                "joined_at_ms": 1_700_000_000_000u64, "status_changed_at_ms": 1_700_000_000_500u64,
                "engine_error": null
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
            (paths::services(), "/v1/services"),
            (paths::service("web"), "/v1/services/web"),
            (paths::service("a/b"), "/v1/services/a%2Fb"),
            (paths::service_tasks("web"), "/v1/services/web/tasks"),
            (paths::service_scale("web"), "/v1/services/web/scale"),
            (paths::service_update("web"), "/v1/services/web/update"),
            (paths::service_rollback("web"), "/v1/services/web/rollback"),
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

    #[test]
    fn service_view_json_shape() {
        let view = ServiceView {
            name: "web".into(),
            mode: "replicated".into(),
            replicas_desired: 3,
            replicas_running: 2,
            image: "nginx:1.27".into(),
            ports: vec!["8080:80/tcp".into()],
            version: 4,
            updated_at_ms: 5,
        };
        assert_eq!(
            serde_json::to_value(&view).unwrap(),
            json!({
                "name": "web", "mode": "replicated", "replicas_desired": 3,
                "replicas_running": 2, "image": "nginx:1.27", "ports": ["8080:80/tcp"],
                "version": 4, "updated_at_ms": 5
            })
        );
    }

    #[test]
    fn task_view_json_shape() {
        let task = TaskView {
            id: "0123456789abcdef".into(),
            service: "web".into(),
            slot: 2,
            node_id: Some(3),
            node_name: Some("node-c".into()),
            desired_state: "running".into(),
            state: "rejected".into(),
            message: "preparing".into(),
            error: "image \"nope:1\" not found".into(),
            exit_code: None,
            container_id: None,
            restart_count: 1,
            spec_version: 1,
            created_at_ms: 10,
            updated_at_ms: 11,
            state_changed_at_ms: 12,
            health: Some("healthy".into()),
        };
        let value = serde_json::to_value(&task).unwrap();
        assert_eq!(
            value,
            json!({
                "id": "0123456789abcdef", "service": "web", "slot": 2, "node_id": 3,
                "node_name": "node-c", "desired_state": "running", "state": "rejected",
                "message": "preparing", "error": "image \"nope:1\" not found",
                "exit_code": null, "container_id": null, "restart_count": 1,
                "spec_version": 1, "created_at_ms": 10, "updated_at_ms": 11,
                "state_changed_at_ms": 12, "health": "healthy"
            })
        );
        assert_eq!(serde_json::from_value::<TaskView>(value).unwrap(), task);
    }

    #[test]
    fn spec_doc_is_strict_and_sparse() {
        let spec: ServiceSpecDoc = serde_json::from_str(
            r#"{"name":"web","image":"x","ports":[{"published":80,"target":8080}]}"#,
        )
        .unwrap();
        assert_eq!(spec.ports[0].protocol, None);
        assert_eq!(spec.ports[0].to_string(), "80:8080/tcp");
        let error = serde_json::from_str::<ServiceSpecDoc>(r#"{"name":"web","replics":2}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `replics`"), "{error}");
        let error = serde_json::from_str::<ScaleRequest>(r#"{"replicas":2,"x":1}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `x`"), "{error}");

        let filled = spec.with_defaults();
        assert_eq!(filled.mode.as_deref(), Some("replicated"));
        assert_eq!(filled.replicas, Some(1));
        assert_eq!(filled.ports[0].protocol.as_deref(), Some("tcp"));
        assert_eq!(filled.restart_condition.as_deref(), Some("any"));
        assert_eq!(filled.restart_delay.as_deref(), Some("5s"));
        assert_eq!(filled.stop_grace_period.as_deref(), Some("10s"));
        assert_eq!(filled.pull.as_deref(), Some("missing"));
        let global = ServiceSpecDoc {
            mode: Some("global".into()),
            ..spec
        };
        assert_eq!(global.with_defaults().replicas, None);
    }

    #[test]
    fn spec_doc_validation() {
        let base = || ServiceSpecDoc {
            name: "web".into(),
            image: "nginx:1.27".into(),
            ..ServiceSpecDoc::default()
        };
        fn port(published: u16, target: u16, protocol: Option<&str>) -> PortDoc {
            PortDoc {
                published,
                target,
                protocol: protocol.map(str::to_owned),
                ..PortDoc::default()
            }
        }
        type Edit = Box<dyn Fn(&mut ServiceSpecDoc)>;
        let cases: Vec<(Edit, Option<&str>)> = vec![
            (Box::new(|_| {}), None),
            (
                Box::new(|s| s.name.clear()),
                Some("invalid name: a service name is required"),
            ),
            (
                Box::new(|s| s.name = "Web".into()),
                Some("service name \"Web\" is not allowed"),
            ),
            (
                Box::new(|s| s.image.clear()),
                Some("invalid image: an image is required"),
            ),
            (Box::new(|s| s.image = "a b".into()), Some("invalid image")),
            (
                Box::new(|s| s.mode = Some("both".into())),
                Some("invalid mode: \"both\" is not allowed; use replicated, global"),
            ),
            (
                Box::new(|s| {
                    s.mode = Some("global".into());
                    s.replicas = Some(2);
                }),
                Some("invalid replicas: a global service"),
            ),
            (
                Box::new(|s| s.replicas = Some(MAX_REPLICAS + 1)),
                Some("too many"),
            ),
            (
                Box::new(|s| s.ports = vec![port(0, 80, None)]),
                Some("invalid ports[0].published"),
            ),
            (
                Box::new(|s| s.ports = vec![port(80, 80, Some("sctp"))]),
                Some("invalid ports[0].protocol"),
            ),
            (
                Box::new(|s| s.ports = vec![port(80, 80, None), port(80, 81, Some("tcp"))]),
                Some("port 80/tcp is published twice"),
            ),
            (
                Box::new(|s| s.ports = vec![port(80, 80, None), port(80, 80, Some("udp"))]),
                None,
            ),
            (Box::new(|s| s.cpus = Some(-1.0)), Some("invalid cpus")),
            (
                Box::new(|s| s.memory = Some("12q".into())),
                Some("invalid memory: size \"12q\" has unit \"q\""),
            ),
            (
                Box::new(|s| s.memory = Some("1m".into())),
                Some("at least 6m"),
            ),
            (
                Box::new(|s| {
                    s.memory = Some("64m".into());
                    s.reserve_memory = Some("1g".into());
                }),
                Some("invalid reserve_memory"),
            ),
            (
                Box::new(|s| {
                    s.cpus = Some(0.5);
                    s.reserve_cpus = Some(1.0);
                }),
                Some("invalid reserve_cpus"),
            ),
            (
                Box::new(|s| s.constraints = vec!["zone==eu".into()]),
                Some("invalid constraints"),
            ),
            (
                Box::new(|s| s.constraints = vec!["node.id==abc".into()]),
                Some("node.id takes a node id number"),
            ),
            (
                Box::new(|s| s.constraints = vec!["node.labels.zone != eu".into()]),
                None,
            ),
            (
                Box::new(|s| s.restart_condition = Some("always".into())),
                Some("use any, on-failure, none"),
            ),
            (
                Box::new(|s| s.restart_delay = Some("5".into())),
                Some("invalid restart_delay"),
            ),
            (
                Box::new(|s| s.stop_grace_period = Some("1d".into())),
                Some("invalid stop_grace_period"),
            ),
            (
                Box::new(|s| s.stop_signal = Some("99".into())),
                Some("invalid stop_signal"),
            ),
            (Box::new(|s| s.stop_signal = Some("TERM".into())), None),
            (
                Box::new(|s| s.pull = Some("sometimes".into())),
                Some("use missing, always, never"),
            ),
            (
                Box::new(|s| {
                    s.env.insert("A B".into(), "1".into());
                }),
                Some("invalid env key \"A B\""),
            ),
        ];
        for (edit, expected) in cases {
            let mut spec = base();
            edit(&mut spec);
            check(spec.validate(), expected, &format!("{spec:?}"));
        }
    }

    #[test]
    fn update_request_is_strict_and_sparse() {
        let request: ServiceUpdateRequest =
            serde_json::from_str(r#"{"image":"app:2","force":true}"#).unwrap();
        assert_eq!(
            request,
            ServiceUpdateRequest {
                image: Some("app:2".into()),
                force: true,
                ..ServiceUpdateRequest::default()
            }
        );
        assert!(ServiceUpdateRequest::default().is_empty());
        let error = serde_json::from_str::<ServiceUpdateRequest>(r#"{"imgae":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `imgae`"), "{error}");
    }

    #[test]
    fn update_request_applies_over_the_current_spec() {
        let mut doc = ServiceSpecDoc {
            name: "web".into(),
            image: "app:1".into(),
            env: [("A".into(), "1".into()), ("B".into(), "2".into())].into(),
            labels: [("tier".into(), "front".into())].into(),
            replicas: Some(3),
            health_test: Some(vec!["CMD".into(), "/check".into()]),
            health_interval: Some("10s".into()),
            update_parallelism: Some(1),
            force_update: Some(4),
            ..ServiceSpecDoc::default()
        };
        let request = ServiceUpdateRequest {
            image: Some("app:2".into()),
            env_add: [("B".into(), "3".into()), ("C".into(), "4".into())].into(),
            env_rm: vec!["A".into(), "B".into()],
            labels_rm: vec!["tier".into()],
            health_cmd: Some("curl -f localhost".into()),
            health_retries: Some(2),
            update_parallelism: Some(2),
            update_failure_action: Some("rollback".into()),
            force: true,
            ..ServiceUpdateRequest::default()
        };
        assert_eq!(request.validate(), Ok(()));
        request.apply_to(&mut doc);
        assert_eq!(doc.image, "app:2");
        assert_eq!(
            doc.env,
            BTreeMap::from([("B".into(), "3".into()), ("C".into(), "4".into())])
        );
        assert!(doc.labels.is_empty());
        assert_eq!(doc.replicas, Some(3), "untouched");
        assert_eq!(doc.health_cmd.as_deref(), Some("curl -f localhost"));
        assert_eq!(doc.health_test, None, "health_cmd replaces the list form");
        assert_eq!(doc.health_interval.as_deref(), Some("10s"), "kept");
        assert_eq!(doc.health_retries, Some(2));
        assert_eq!(doc.update_parallelism, Some(2));
        assert_eq!(doc.update_failure_action.as_deref(), Some("rollback"));
        assert_eq!(doc.force_update, Some(5));
        assert_eq!(doc.validate(), Ok(()));

        let off = ServiceUpdateRequest {
            no_healthcheck: true,
            ..ServiceUpdateRequest::default()
        };
        off.apply_to(&mut doc);
        assert!(doc.no_healthcheck);
        assert_eq!(doc.health_fields_given(), Vec::<&str>::new());
        assert_eq!(doc.validate(), Ok(()));
    }

    #[test]
    fn update_request_validation() {
        type Edit = Box<dyn Fn(&mut ServiceUpdateRequest)>;
        let cases: Vec<(Edit, Option<&str>)> = vec![
            (Box::new(|_| {}), None),
            (Box::new(|r| r.health_interval = Some("5s".into())), None),
            (
                Box::new(|r| r.image = Some("a b".into())),
                Some("invalid image"),
            ),
            (
                Box::new(|r| {
                    r.env_add.insert("A B".into(), "1".into());
                }),
                Some("invalid env_add key \"A B\""),
            ),
            (
                Box::new(|r| r.labels_rm = vec!["".into()]),
                Some("invalid labels_add key \"\""),
            ),
            (
                Box::new(|r| {
                    r.labels_add.insert("shoal.x".into(), "1".into());
                }),
                Some("reserved for shoal"),
            ),
            (
                Box::new(|r| r.update_order = Some("random".into())),
                Some(
                    "invalid update_order: \"random\" is not allowed; use stop-first, start-first",
                ),
            ),
            (
                Box::new(|r| r.rollback_max_failure_ratio = Some(-0.1)),
                Some("invalid rollback_max_failure_ratio"),
            ),
            (
                Box::new(|r| {
                    r.no_healthcheck = true;
                    r.health_cmd = Some("true".into());
                }),
                Some("invalid no_healthcheck: cannot be combined with health_cmd"),
            ),
            (
                Box::new(|r| r.memory = Some("1m".into())),
                Some("at least 6m"),
            ),
            (
                Box::new(|r| r.replicas = Some(MAX_REPLICAS + 1)),
                Some("too many"),
            ),
        ];
        for (edit, expected) in cases {
            let mut request = ServiceUpdateRequest::default();
            edit(&mut request);
            check(request.validate(), expected, &format!("{request:?}"));
        }
    }

    #[test]
    fn update_status_and_inspect_json_shape() {
        let status = UpdateStatusView {
            state: "rolled-back".into(),
            version: 3,
            message: "rollback completed".into(),
            started_at_ms: 10,
            completed_at_ms: Some(20),
            total: 10,
            done: 10,
            in_flight: 0,
            failed: 0,
        };
        assert!(status.is_final());
        assert_eq!(
            serde_json::to_value(&status).unwrap(),
            json!({
                "state": "rolled-back", "version": 3, "message": "rollback completed",
                "started_at_ms": 10, "completed_at_ms": 20, "total": 10, "done": 10,
                "in_flight": 0, "failed": 0
            })
        );
        for state in UPDATE_STATES {
            let view = UpdateStatusView {
                state: state.into(),
                ..status.clone()
            };
            assert_eq!(
                view.is_final(),
                !matches!(state, "updating" | "rolling-back"),
                "{state}"
            );
        }
        // An answer from a daemon that predates update runs still reads.
        let old: ServiceInspectView = serde_json::from_value(json!({
            "spec": {"name": "web", "image": "x"}, "version": 1, "created_at_ms": 1,
            "updated_at_ms": 1, "replicas_running": 1, "replicas_desired": 1
        }))
        .unwrap();
        assert_eq!((old.update, old.previous_spec), (None, None));
    }

    #[test]
    fn with_defaults_fills_update_settings() {
        let filled = ServiceSpecDoc::default().with_defaults();
        for settings in filled.update_settings() {
            assert_eq!(settings.parallelism, Some(1), "{}", settings.prefix);
            assert_eq!(settings.order, Some("stop-first"));
            assert_eq!(settings.monitor, Some("5s"));
            assert_eq!(settings.failure_action, Some("pause"));
            assert_eq!(settings.max_failure_ratio, Some(0.0));
        }
        assert_eq!(filled.force_update, Some(0));
        assert_eq!(filled.health_cmd, None, "no check stays the image's own");
        assert_eq!(ratio_ppm(0.25), 250_000);
        assert_eq!(ratio_ppm(1.0), 1_000_000);
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
