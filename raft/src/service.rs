//! Services and tasks as the cluster state holds them: the user's [`ServiceSpec`]
//! (validated here, at the edge, with errors naming the field and what is allowed),
//! the replicated [`Service`] record, the [`Task`]s the orchestrator creates for it,
//! and the [`TaskStatusUpdate`]s agents report.
//!
//! These are stored formats (log entries and snapshots): ordered maps only, and every
//! enum has a lowercase serde name.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::state::NodeRecord;
use crate::types::NodeId;

/// 16 lowercase hex characters, made deterministically in `apply()`.
pub type TaskId = String;

/// Most replicas a replicated service may ask for.
pub const MAX_REPLICAS: u64 = 100_000;
/// Most restart attempts a policy may allow (tasks counted against it are kept).
pub const MAX_RESTART_ATTEMPTS: u64 = 1_000;
/// Longest restart delay: one day.
pub const MAX_RESTART_DELAY_MS: u64 = 24 * 3_600_000;
/// Longest restart window: thirty days.
pub const MAX_RESTART_WINDOW_MS: u64 = 30 * 24 * 3_600_000;
/// Longest stop grace period: one hour.
pub const MAX_STOP_GRACE_PERIOD_MS: u64 = 3_600_000;
/// Docker refuses memory limits below 6 MiB.
pub const MIN_MEMORY_LIMIT_BYTES: u64 = 6 << 20;
/// At most this many CPUs may be limited or reserved.
pub const MAX_NANO_CPUS: u64 = 1_024 * 1_000_000_000;
/// Longest health check interval, timeout or start period: one day.
pub const MAX_HEALTH_DURATION_MS: u64 = 24 * 3_600_000;
/// Most consecutive failed health checks before a container counts as unhealthy.
pub const MAX_HEALTH_RETRIES: u64 = 100;
/// Longest update delay or monitor window: one day.
pub const MAX_UPDATE_DURATION_MS: u64 = 24 * 3_600_000;
/// A failure ratio of 1 (every task may fail), in millionths.
pub const RATIO_ONE_PPM: u32 = 1_000_000;
const MAX_NAME_LEN: usize = 63;
const MAX_IMAGE_LEN: usize = 1_024;
const MAX_LIST_LEN: usize = 1_024;
const MAX_STRING_LEN: usize = 64 * 1_024;
const MAX_KEY_LEN: usize = 256;
const MAX_CONSTRAINTS: usize = 64;
/// Container labels with this prefix are the agent's own.
pub const RESERVED_LABEL_PREFIX: &str = "shoal.";

const SIGNALS: [&str; 31] = [
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];

/// Why a service spec or a constraint is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("invalid constraint {input:?}: {reason}")]
    Constraint { input: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    Replicated { replicas: u64 },
    Global,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A published port. In ingress mode (the default) every node of the cluster
/// listens on `published` and forwards to a task's `target`; in host mode
/// only the nodes running a task bind it, through the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub published: u16,
    pub target: u16,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    #[serde(default)]
    pub mode: PublishMode,
    #[serde(default)]
    pub policy: BalancePolicy,
    /// Prepend a PROXY protocol v2 header carrying the client's address
    /// (ingress mode only).
    #[serde(default)]
    pub proxy_protocol: bool,
}

impl PortSpec {
    /// An ingress port with the default balancing and no PROXY header.
    pub fn ingress(published: u16, target: u16, protocol: Protocol) -> Self {
        PortSpec {
            published,
            target,
            protocol,
            mode: PublishMode::Ingress,
            policy: BalancePolicy::LeastConnections,
            proxy_protocol: false,
        }
    }

    /// A port bound only on the nodes that run a task.
    pub fn host(published: u16, target: u16, protocol: Protocol) -> Self {
        PortSpec {
            mode: PublishMode::Host,
            ..PortSpec::ingress(published, target, protocol)
        }
    }

    /// Whether the engine binds this port on the task's node.
    pub fn is_host(&self) -> bool {
        self.mode == PublishMode::Host
    }
}

/// Where a published port listens.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// On every node, forwarding to the service's tasks wherever they run.
    #[default]
    Ingress,
    /// Only on the nodes running a task (the engine binds the port).
    Host,
}

impl PublishMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PublishMode::Ingress => "ingress",
            PublishMode::Host => "host",
        }
    }
}

/// How an ingress port picks a task for a new connection.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum BalancePolicy {
    /// The task with the fewest connections from this node.
    #[default]
    LeastConnections,
    /// Each task in turn.
    RoundRobin,
    /// Tasks on this node when it runs any (fewest connections first),
    /// others only when it runs none.
    LocalFirst,
}

impl BalancePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            BalancePolicy::LeastConnections => "least-conn",
            BalancePolicy::RoundRobin => "round-robin",
            BalancePolicy::LocalFirst => "local-first",
        }
    }
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}

/// Limits and reservations; 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceSpec {
    pub limit_nano_cpus: u64,
    pub limit_memory_bytes: u64,
    pub reserve_nano_cpus: u64,
    pub reserve_memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConstraintKey {
    NodeId,
    NodeName,
    NodeRole,
    NodeLabel(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConstraintOp {
    Eq,
    Ne,
}

/// A placement constraint such as `node.labels.zone==eu`. Stored and serialised as
/// that text, so spec files and API payloads read the way users write them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Constraint {
    pub key: ConstraintKey,
    pub op: ConstraintOp,
    pub value: String,
}

const CONSTRAINT_SYNTAX: &str = "allowed keys are node.id, node.name, node.role, node.labels.KEY; \
                                 operators == and !=";

impl Constraint {
    /// Whether `node` satisfies this constraint. A missing label is "not equal".
    pub fn matches(&self, node: &NodeRecord) -> bool {
        let equal = match &self.key {
            ConstraintKey::NodeId => node.id.to_string() == self.value,
            ConstraintKey::NodeName => node.name == self.value,
            ConstraintKey::NodeRole => node.role.as_str() == self.value,
            ConstraintKey::NodeLabel(key) => node.labels.get(key) == Some(&self.value),
        };
        equal == (self.op == ConstraintOp::Eq)
    }

    fn check(&self) -> Result<(), String> {
        let value = &self.value;
        if value.is_empty() {
            return Err(format!("the value must not be empty; {CONSTRAINT_SYNTAX}"));
        }
        if value.len() > MAX_KEY_LEN || value.chars().any(char::is_control) {
            return Err(format!(
                "the value must be at most {MAX_KEY_LEN} printable characters"
            ));
        }
        match &self.key {
            ConstraintKey::NodeId if value.parse::<NodeId>().is_err() => {
                Err("node.id takes a node id number, e.g. node.id==3".to_owned())
            }
            ConstraintKey::NodeRole if value != "manager" && value != "worker" => {
                Err("node.role is manager or worker".to_owned())
            }
            ConstraintKey::NodeLabel(key) if !valid_key(key) => Err(format!(
                "a label key must be 1-{MAX_KEY_LEN} characters without whitespace or '='; \
                 {CONSTRAINT_SYNTAX}"
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            ConstraintKey::NodeId => f.write_str("node.id")?,
            ConstraintKey::NodeName => f.write_str("node.name")?,
            ConstraintKey::NodeRole => f.write_str("node.role")?,
            ConstraintKey::NodeLabel(key) => write!(f, "node.labels.{key}")?,
        }
        let op = match self.op {
            ConstraintOp::Eq => "==",
            ConstraintOp::Ne => "!=",
        };
        write!(f, "{op}{}", self.value)
    }
}

impl FromStr for Constraint {
    type Err = SpecError;

    fn from_str(input: &str) -> Result<Self, SpecError> {
        let error = |reason: String| SpecError::Constraint {
            input: input.to_owned(),
            reason,
        };
        let (key, op, value) = if let Some((key, value)) = input.split_once("==") {
            (key, ConstraintOp::Eq, value)
        } else if let Some((key, value)) = input.split_once("!=") {
            (key, ConstraintOp::Ne, value)
        } else {
            return Err(error(CONSTRAINT_SYNTAX.to_owned()));
        };
        let key = match key.trim() {
            "node.id" => ConstraintKey::NodeId,
            "node.name" => ConstraintKey::NodeName,
            "node.role" => ConstraintKey::NodeRole,
            other => match other.strip_prefix("node.labels.") {
                Some(label) => ConstraintKey::NodeLabel(label.to_owned()),
                None => return Err(error(CONSTRAINT_SYNTAX.to_owned())),
            },
        };
        let constraint = Constraint {
            key,
            op,
            value: value.trim().to_owned(),
        };
        constraint.check().map_err(error)?;
        Ok(constraint)
    }
}

impl TryFrom<String> for Constraint {
    type Error = SpecError;

    fn try_from(text: String) -> Result<Self, SpecError> {
        text.parse()
    }
}

impl From<Constraint> for String {
    fn from(constraint: Constraint) -> String {
        constraint.to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartCondition {
    Any,
    #[serde(rename = "on-failure", alias = "onfailure")]
    OnFailure,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    pub delay_ms: u64,
    /// 0 = unlimited.
    pub max_attempts: u64,
    /// 0 = unbounded: attempts are counted over the slot's whole life.
    pub window_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay_ms: 5_000,
            max_attempts: 0,
            window_ms: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    #[default]
    Missing,
    Always,
    Never,
}

/// A container health check in Docker's terms. `test` is Docker's form:
/// `["CMD-SHELL", "command"]`, `["CMD", "program", "arg", ...]`, or `["NONE"]`,
/// which turns off a check the image defines. A zero duration or retry count
/// takes Docker's default (30 s interval, 30 s timeout, 3 retries, no start period).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheck {
    pub test: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u64,
    pub start_period_ms: u64,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            test: vec!["NONE".to_owned()],
            interval_ms: 0,
            timeout_ms: 0,
            retries: 0,
            start_period_ms: 0,
        }
    }
}

impl HealthCheck {
    /// Whether this check turns health checking off.
    pub fn is_disabled(&self) -> bool {
        self.test.first().map(String::as_str) == Some("NONE")
    }

    fn check(&self) -> Result<(), SpecError> {
        let field = "healthcheck.test";
        let allowed =
            "allowed: [\"CMD-SHELL\", COMMAND], [\"CMD\", PROGRAM, ARGS...] or [\"NONE\"]";
        match self.test.first().map(String::as_str) {
            Some("NONE") if self.test.len() == 1 => {}
            Some("CMD-SHELL") if self.test.len() == 2 && !self.test[1].trim().is_empty() => {}
            Some("CMD") if self.test.len() >= 2 && !self.test[1].is_empty() => {}
            _ => {
                return Err(invalid(
                    field,
                    format!("{:?} is not a health check; {allowed}", self.test),
                ))
            }
        }
        if self.test.len() > MAX_LIST_LEN
            || self
                .test
                .iter()
                .any(|s| s.len() > MAX_STRING_LEN || s.contains('\0'))
        {
            return Err(invalid(
                field,
                format!("at most {MAX_LIST_LEN} items of at most {MAX_STRING_LEN} bytes, without NUL characters"),
            ));
        }
        for (name, value) in [
            ("healthcheck.interval", self.interval_ms),
            ("healthcheck.timeout", self.timeout_ms),
            ("healthcheck.start_period", self.start_period_ms),
        ] {
            if value > MAX_HEALTH_DURATION_MS {
                return Err(invalid(
                    name,
                    format!("{value} ms is too long; allowed 0 (Docker's default) to {MAX_HEALTH_DURATION_MS} ms (one day)"),
                ));
            }
        }
        if self.retries > MAX_HEALTH_RETRIES {
            return Err(invalid(
                "healthcheck.retries",
                format!(
                    "{} is too many; allowed 0 (Docker's default of 3) to {MAX_HEALTH_RETRIES}",
                    self.retries
                ),
            ));
        }
        Ok(())
    }
}

/// Which task of a slot runs while the slot is updated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// The old task is stopped, then the new one started (Docker Swarm's default).
    #[default]
    StopFirst,
    /// The new task must be running (and healthy) before the old one is stopped.
    StartFirst,
}

impl UpdateOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateOrder::StopFirst => "stop-first",
            UpdateOrder::StartFirst => "start-first",
        }
    }
}

/// What a rolling update does when too many of its new tasks fail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    /// Roll back to the previous spec (update settings only).
    Rollback,
}

impl FailureAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureAction::Pause => "pause",
            FailureAction::Continue => "continue",
            FailureAction::Rollback => "rollback",
        }
    }
}

/// How a change of the task template rolls out (and, as `rollback`, how it is
/// undone): slot by slot, `parallelism` at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateConfig {
    /// Slots updated at once; 0 = all at once.
    pub parallelism: u64,
    /// Wait after a batch of slots is done before the next one starts.
    pub delay_ms: u64,
    pub order: UpdateOrder,
    /// How long a new task must stay running (and healthy) to count as a
    /// success; a failure within it counts against the update.
    pub monitor_ms: u64,
    pub failure_action: FailureAction,
    /// The share of the slots to update that may fail before the failure
    /// action is taken, in millionths (0: the first failure takes it).
    pub max_failure_ratio_ppm: u32,
}

impl Default for UpdateConfig {
    /// Docker Swarm's defaults: one at a time, no delay, stop-first, 5 s
    /// monitor, pause on the first failure.
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            order: UpdateOrder::StopFirst,
            monitor_ms: 5_000,
            failure_action: FailureAction::Pause,
            max_failure_ratio_ppm: 0,
        }
    }
}

impl UpdateConfig {
    fn check(&self, prefix: &str) -> Result<(), SpecError> {
        for (name, value) in [("delay", self.delay_ms), ("monitor", self.monitor_ms)] {
            if value > MAX_UPDATE_DURATION_MS {
                return Err(invalid(
                    format!("{prefix}.{name}"),
                    format!("{value} ms is too long; allowed 0 to {MAX_UPDATE_DURATION_MS} ms (one day)"),
                ));
            }
        }
        if self.parallelism > MAX_REPLICAS {
            return Err(invalid(
                format!("{prefix}.parallelism"),
                format!(
                    "{} is too many; allowed 0 (all at once) to {MAX_REPLICAS}",
                    self.parallelism
                ),
            ));
        }
        if self.max_failure_ratio_ppm > RATIO_ONE_PPM {
            return Err(invalid(
                format!("{prefix}.max_failure_ratio"),
                "a ratio is from 0 to 1",
            ));
        }
        if prefix == "rollback" && self.failure_action == FailureAction::Rollback {
            return Err(invalid(
                "rollback.failure_action",
                "a rollback cannot roll back; allowed: pause, continue",
            ));
        }
        Ok(())
    }
}

/// What a user asks for. Missing fields in a spec file take Docker Swarm's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    /// Entrypoint override; empty = the image's.
    pub command: Vec<String>,
    /// Cmd override; empty = the image's.
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub mode: ServiceMode,
    pub ports: Vec<PortSpec>,
    pub resources: ResourceSpec,
    pub constraints: Vec<Constraint>,
    /// 0 = unlimited.
    pub max_per_node: u64,
    pub restart: RestartPolicy,
    pub stop_grace_period_ms: u64,
    pub stop_signal: Option<String>,
    pub pull: PullPolicy,
    /// `None` keeps the image's own health check (if it has one).
    pub healthcheck: Option<HealthCheck>,
    pub update: UpdateConfig,
    pub rollback: UpdateConfig,
    /// Bumped by `--force`: a changed task template that redeploys every task.
    pub force_update: u64,
    /// The stack the service belongs to; its name is then `STACK_SERVICE`.
    pub stack: Option<String>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec::default_for("", "")
    }
}

impl ServiceSpec {
    /// A spec with Docker Swarm's defaults: one replica, restart on any exit after
    /// 5 s without an attempt limit, 10 s stop grace period, pull only if missing.
    pub fn default_for(name: &str, image: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.to_owned(),
            image: image.to_owned(),
            command: Vec::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            mode: ServiceMode::Replicated { replicas: 1 },
            ports: Vec::new(),
            resources: ResourceSpec::default(),
            constraints: Vec::new(),
            max_per_node: 0,
            restart: RestartPolicy::default(),
            stop_grace_period_ms: 10_000,
            stop_signal: None,
            pull: PullPolicy::Missing,
            healthcheck: None,
            update: UpdateConfig::default(),
            rollback: UpdateConfig::default(),
            force_update: 0,
            stack: None,
        }
    }

    /// Whether the two specs run the same tasks: equal in everything but the
    /// replica count and the update and rollback settings. A change of
    /// anything else (the task template) rolls out as an update.
    pub fn same_template(&self, other: &ServiceSpec) -> bool {
        let strip = |spec: &ServiceSpec| ServiceSpec {
            mode: match spec.mode {
                ServiceMode::Replicated { .. } => ServiceMode::Replicated { replicas: 0 },
                ServiceMode::Global => ServiceMode::Global,
            },
            update: UpdateConfig::default(),
            rollback: UpdateConfig::default(),
            stack: None,
            ..spec.clone()
        };
        // Cheap fields first: most differing specs differ in these.
        self.image == other.image
            && self.force_update == other.force_update
            && self.is_global() == other.is_global()
            && strip(self) == strip(other)
    }

    /// The replica count of a replicated service; `None` for a global one.
    pub fn replicas(&self) -> Option<u64> {
        match self.mode {
            ServiceMode::Replicated { replicas } => Some(replicas),
            ServiceMode::Global => None,
        }
    }

    pub fn is_global(&self) -> bool {
        self.mode == ServiceMode::Global
    }

    /// Whether `node` satisfies every constraint.
    pub fn allows(&self, node: &NodeRecord) -> bool {
        self.constraints.iter().all(|c| c.matches(node))
    }

    /// Checks every field; the error names the first wrong field and what is allowed.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name(&self.name)?;
        validate_image(&self.image)?;
        for (field, list) in [("command", &self.command), ("args", &self.args)] {
            if list.len() > MAX_LIST_LEN {
                return Err(invalid(field, format!("at most {MAX_LIST_LEN} items")));
            }
            if let Some(i) = list
                .iter()
                .position(|s| s.len() > MAX_STRING_LEN || s.contains('\0'))
            {
                return Err(invalid(
                    format!("{field}[{i}]"),
                    format!("at most {MAX_STRING_LEN} bytes, without NUL characters"),
                ));
            }
        }
        validate_map("env", &self.env, |key| {
            valid_key(key)
                .then_some(())
                .ok_or("a variable name is 1-256 characters without whitespace or '='")
        })?;
        validate_map("labels", &self.labels, |key| {
            if !valid_key(key) {
                return Err("a label key is 1-256 characters without whitespace or '='");
            }
            if key.starts_with(RESERVED_LABEL_PREFIX) {
                return Err("label keys starting with \"shoal.\" are reserved for shoal itself");
            }
            Ok(())
        })?;
        match self.mode {
            ServiceMode::Replicated { replicas } if replicas > MAX_REPLICAS => {
                return Err(invalid(
                    "replicas",
                    format!("{replicas} is too many; allowed 0 to {MAX_REPLICAS}"),
                ));
            }
            ServiceMode::Global if self.max_per_node != 0 => {
                return Err(invalid(
                    "max_per_node",
                    "only replicated services take a per-node maximum; a global service runs \
                     one task per node",
                ));
            }
            _ => {}
        }
        self.validate_ports()?;
        self.validate_resources()?;
        if self.constraints.len() > MAX_CONSTRAINTS {
            return Err(invalid(
                "constraints",
                format!("at most {MAX_CONSTRAINTS} constraints"),
            ));
        }
        for constraint in &self.constraints {
            constraint.check().map_err(|reason| SpecError::Constraint {
                input: constraint.to_string(),
                reason,
            })?;
        }
        self.validate_restart()?;
        if let Some(check) = &self.healthcheck {
            check.check()?;
        }
        self.update.check("update")?;
        self.rollback.check("rollback")?;
        if let Some(stack) = &self.stack {
            validate_name(stack).map_err(|_| {
                invalid(
                    "stack",
                    format!("{stack:?} is not allowed; use 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"),
                )
            })?;
            if !self.name.starts_with(&format!("{stack}_")) {
                return Err(invalid(
                    "name",
                    format!("a service of stack {stack:?} is named {stack}_SERVICE"),
                ));
            }
        }
        if self.stop_grace_period_ms > MAX_STOP_GRACE_PERIOD_MS {
            return Err(invalid(
                "stop_grace_period",
                format!(
                    "{} ms is too long; allowed 0 to {MAX_STOP_GRACE_PERIOD_MS} ms (one hour)",
                    self.stop_grace_period_ms
                ),
            ));
        }
        if let Some(signal) = &self.stop_signal {
            if !valid_signal(signal) {
                return Err(invalid(
                    "stop_signal",
                    format!(
                        "{signal:?} is not a signal; give a name like SIGTERM or TERM, or a \
                         number from 1 to 64"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_ports(&self) -> Result<(), SpecError> {
        if self.ports.len() > MAX_LIST_LEN {
            return Err(invalid("ports", format!("at most {MAX_LIST_LEN} ports")));
        }
        let mut published = BTreeSet::new();
        for (i, port) in self.ports.iter().enumerate() {
            for (name, value) in [("published", port.published), ("target", port.target)] {
                if value == 0 {
                    return Err(invalid(
                        format!("ports[{i}].{name}"),
                        "a port is a number from 1 to 65535",
                    ));
                }
            }
            if port.proxy_protocol && (port.is_host() || port.protocol == Protocol::Udp) {
                return Err(invalid(
                    format!("ports[{i}].proxy_protocol"),
                    "a PROXY protocol header is sent only on ingress TCP ports",
                ));
            }
            if !published.insert((port.published, port.protocol)) {
                return Err(invalid(
                    format!("ports[{i}].published"),
                    format!(
                        "port {}/{} is published twice; each published port and protocol may \
                         appear once",
                        port.published, port.protocol
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_resources(&self) -> Result<(), SpecError> {
        let r = &self.resources;
        for (field, value) in [
            ("resources.limit_nano_cpus", r.limit_nano_cpus),
            ("resources.reserve_nano_cpus", r.reserve_nano_cpus),
        ] {
            if value > MAX_NANO_CPUS {
                return Err(invalid(field, "at most 1024 CPUs"));
            }
        }
        if r.limit_memory_bytes != 0 && r.limit_memory_bytes < MIN_MEMORY_LIMIT_BYTES {
            return Err(invalid(
                "resources.limit_memory_bytes",
                "a memory limit is at least 6 MiB (or 0 for none)",
            ));
        }
        if r.limit_nano_cpus != 0 && r.reserve_nano_cpus > r.limit_nano_cpus {
            return Err(invalid(
                "resources.reserve_nano_cpus",
                "the CPU reservation must not exceed the CPU limit",
            ));
        }
        if r.limit_memory_bytes != 0 && r.reserve_memory_bytes > r.limit_memory_bytes {
            return Err(invalid(
                "resources.reserve_memory_bytes",
                "the memory reservation must not exceed the memory limit",
            ));
        }
        Ok(())
    }

    fn validate_restart(&self) -> Result<(), SpecError> {
        let p = &self.restart;
        let checks = [
            (
                "restart.delay",
                p.delay_ms,
                MAX_RESTART_DELAY_MS,
                "ms (one day)",
            ),
            (
                "restart.window",
                p.window_ms,
                MAX_RESTART_WINDOW_MS,
                "ms (thirty days)",
            ),
            (
                "restart.max_attempts",
                p.max_attempts,
                MAX_RESTART_ATTEMPTS,
                "(0 = unlimited)",
            ),
        ];
        for (field, value, max, unit) in checks {
            if value > max {
                return Err(invalid(
                    field,
                    format!("{value} is too large; allowed 0 to {max} {unit}"),
                ));
            }
        }
        Ok(())
    }
}

fn validate_name(name: &str) -> Result<(), SpecError> {
    let allowed = "1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit";
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            format!("{name:?} is not allowed; use {allowed}"),
        ))
    }
}

fn validate_image(image: &str) -> Result<(), SpecError> {
    if image.is_empty() {
        return Err(invalid("image", "an image is required, e.g. nginx:1.27"));
    }
    if image.len() > MAX_IMAGE_LEN || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "image",
            format!("{image:?} is not an image reference: at most {MAX_IMAGE_LEN} characters without whitespace"),
        ));
    }
    Ok(())
}

fn validate_map(
    field: &str,
    map: &BTreeMap<String, String>,
    check_key: impl Fn(&str) -> Result<(), &'static str>,
) -> Result<(), SpecError> {
    if map.len() > MAX_LIST_LEN {
        return Err(invalid(field, format!("at most {MAX_LIST_LEN} entries")));
    }
    for (key, value) in map {
        check_key(key).map_err(|reason| invalid(format!("{field} key {key:?}"), reason))?;
        if value.len() > MAX_STRING_LEN || value.contains('\0') {
            return Err(invalid(
                format!("{field}[{key:?}]"),
                format!("a value is at most {MAX_STRING_LEN} bytes, without NUL characters"),
            ));
        }
    }
    Ok(())
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && !key
            .chars()
            .any(|c| c == '=' || c.is_whitespace() || c.is_control())
}

fn valid_signal(signal: &str) -> bool {
    if let Ok(number) = signal.parse::<u8>() {
        return (1..=64).contains(&number);
    }
    let name = signal.strip_prefix("SIG").unwrap_or(signal);
    SIGNALS.contains(&name)
}

/// The replicated record of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Shared with the tasks made from it (a state of 100,000 tasks held
    /// a copy per task).
    pub spec: Arc<ServiceSpec>,
    /// Bumped on every change of the task template (not on scaling).
    pub version: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// The spec before the last change of the task template: what a rollback
    /// returns to.
    pub previous_spec: Option<Arc<ServiceSpec>>,
    /// The rolling update (or rollback) in progress, or the last one.
    pub update: Option<UpdateStatus>,
}

impl Service {
    /// Whether `task` runs this service's current task template. Tasks made
    /// from an identical template under another version (a rollback returns
    /// to an earlier template) are current too, so they are not restarted.
    pub fn is_current(&self, task: &Task) -> bool {
        task.spec_version == self.version || task.spec.same_template(&self.spec)
    }

    /// The update settings of the run in progress: `rollback` while rolling back.
    pub fn active_update_config(&self) -> Option<&UpdateConfig> {
        let status = self.update.as_ref()?;
        match status.state {
            UpdateState::Updating => Some(&self.spec.update),
            UpdateState::RollingBack => Some(&self.spec.rollback),
            _ => None,
        }
    }
}

/// Where a rolling update stands. `Updating` and `RollingBack` are running;
/// the others are final until the next change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateState {
    Updating,
    /// Stopped by its failure action; the service keeps its mix of old and new
    /// tasks until the next deploy, update or rollback.
    Paused,
    Completed,
    RollingBack,
    RollbackPaused,
    RolledBack,
}

impl UpdateState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollingBack => "rolling-back",
            UpdateState::RollbackPaused => "rollback-paused",
            UpdateState::RolledBack => "rolled-back",
        }
    }

    /// Updating or rolling back.
    pub fn is_running(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollingBack)
    }
}

impl fmt::Display for UpdateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One run of a rolling update or rollback, as replicated. Which slots are
/// done is not stored: it follows from the tasks (a slot is updated once it
/// has a task of the current template that has run through the monitor
/// window), so a new leader carries on where the old one stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    /// The service version the run rolls out; identifies the run.
    pub version: u64,
    pub started_at_ms: u64,
    /// When it reached a final state; 0 while running.
    pub completed_at_ms: u64,
    /// Why it is where it is, e.g. why it paused.
    pub message: String,
    /// Slots to update when the run started (the denominator of the failure ratio).
    pub total_slots: u64,
    /// Slots whose new task failed in its monitor window, each counted once.
    pub failed_slots: BTreeSet<(u64, Option<NodeId>)>,
}

/// A task's lifecycle, in order: a task only ever moves forward, and a terminal
/// state is final. The derived ordering is the lifecycle order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    New,
    Pending,
    Assigned,
    Preparing,
    Starting,
    Running,
    Complete,
    Failed,
    Shutdown,
    Rejected,
    Orphaned,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Preparing => "preparing",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Failed => "failed",
            TaskState::Shutdown => "shutdown",
            TaskState::Rejected => "rejected",
            TaskState::Orphaned => "orphaned",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    Running,
    Shutdown,
}

impl DesiredState {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredState::Running => "running",
            DesiredState::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for DesiredState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One slot of a service placed (or to be placed) on one node.
///
/// An agent runs the tasks whose `node_id` is its own and whose state is at least
/// [`TaskState::Assigned`]; a pending task with a node (global services) waits for
/// the scheduler to confirm that the node can take it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    /// The service's name.
    pub service: String,
    /// 1-based for replicated services; 0 for global ones.
    pub slot: u64,
    /// Set when assigned; for global tasks set at creation.
    pub node_id: Option<NodeId>,
    pub spec_version: u64,
    /// The spec the task runs, shared with its service while it is the
    /// service's current (or previous) spec.
    pub spec: Arc<ServiceSpec>,
    pub desired_state: DesiredState,
    pub state: TaskState,
    /// Why the task is where it is, e.g. why it is still pending.
    pub message: String,
    pub error: String,
    pub exit_code: Option<i64>,
    pub container_id: Option<String>,
    /// Consecutive restart attempt within the slot: 0 for a fresh task, one more than
    /// the task it replaces under the restart policy.
    pub restart_count: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub state_changed_at_ms: u64,
    /// When the task was first reported running (and healthy, if checked).
    pub running_since_ms: Option<u64>,
    /// The container's health, when it has a health check.
    pub health: Option<Health>,
}

/// A container's health as its health check reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

impl Task {
    /// Not terminal and meant to run: the task fills its slot.
    pub fn is_live(&self) -> bool {
        !self.state.is_terminal() && self.desired_state == DesiredState::Running
    }

    /// Holds resources and host ports on its node: handed to the node's agent and not
    /// yet terminal, whatever its desired state (a stopping container still holds them).
    pub fn occupies_node(&self) -> bool {
        self.node_id.is_some() && self.state > TaskState::Pending && !self.state.is_terminal()
    }
}

/// An agent's report of one task's change, sent in batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatusUpdate {
    pub task_id: TaskId,
    pub state: TaskState,
    pub message: String,
    pub error: String,
    pub exit_code: Option<i64>,
    pub container_id: Option<String>,
    /// The container's health, when it has a health check.
    pub health: Option<Health>,
    /// The agent's clock; informational only (the leader's `now_ms` stamps the task).
    pub at_ms: u64,
}

/// Formats a byte count the way users write it (`512MiB`, `1.5GiB`, `300B`).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            return if bytes.is_multiple_of(size) {
                format!("{}{unit}", bytes / size)
            } else {
                format!("{:.1}{unit}", bytes as f64 / size as f64)
            };
        }
    }
    format!("{bytes}B")
}

/// Formats nano-CPUs as a CPU count (`0.5`, `2`).
pub fn format_cpus(nano_cpus: u64) -> String {
    let whole = nano_cpus / 1_000_000_000;
    let fraction = nano_cpus % 1_000_000_000;
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{fraction:09}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec::default_for("web", "nginx:1.27")
    }

    #[test]
    fn validate_table() {
        type Edit = fn(&mut ServiceSpec);
        let cases: Vec<(Edit, Option<&str>)> = vec![
            (|_| {}, None),
            (|s| s.name = "a-b_c9".to_owned(), None),
            (|s| s.name = String::new(), Some("invalid name")),
            (|s| s.name = "Web".to_owned(), Some("a-z")),
            (|s| s.name = "-web".to_owned(), Some("starting with")),
            (|s| s.name = "w.b".to_owned(), Some("invalid name")),
            (|s| s.name = "a".repeat(64), Some("1-63")),
            (|s| s.image = String::new(), Some("invalid image")),
            (
                |s| s.image = "ng inx".to_owned(),
                Some("without whitespace"),
            ),
            (
                |s| s.mode = ServiceMode::Replicated { replicas: 100_001 },
                Some("invalid replicas"),
            ),
            (|s| s.mode = ServiceMode::Replicated { replicas: 0 }, None),
            (
                |s| {
                    s.mode = ServiceMode::Global;
                    s.max_per_node = 1;
                },
                Some("invalid max_per_node"),
            ),
            (
                |s| s.ports = vec![PortSpec::ingress(0, 80, Protocol::Tcp)],
                Some("ports[0].published"),
            ),
            (
                |s| {
                    let port = PortSpec::ingress(8080, 80, Protocol::Tcp);
                    s.ports = vec![
                        port,
                        PortSpec {
                            protocol: Protocol::Udp,
                            ..port
                        },
                        PortSpec { target: 81, ..port },
                    ];
                },
                Some("ports[2].published: port 8080/tcp is published twice"),
            ),
            (
                |s| {
                    s.resources.limit_nano_cpus = 500_000_000;
                    s.resources.reserve_nano_cpus = 600_000_000;
                },
                Some("resources.reserve_nano_cpus"),
            ),
            (
                |s| {
                    s.resources.limit_memory_bytes = 256 << 20;
                    s.resources.reserve_memory_bytes = 512 << 20;
                },
                Some("resources.reserve_memory_bytes"),
            ),
            (
                |s| s.resources.reserve_memory_bytes = 512 << 20,
                None, // a reservation without a limit is fine
            ),
            (
                |s| s.resources.limit_memory_bytes = 1 << 20,
                Some("at least 6 MiB"),
            ),
            (
                |s| {
                    s.constraints = vec![Constraint {
                        key: ConstraintKey::NodeRole,
                        op: ConstraintOp::Eq,
                        value: "boss".to_owned(),
                    }]
                },
                Some("invalid constraint \"node.role==boss\""),
            ),
            (
                |s| s.restart.delay_ms = MAX_RESTART_DELAY_MS + 1,
                Some("invalid restart.delay"),
            ),
            (
                |s| s.restart.max_attempts = 1_001,
                Some("invalid restart.max_attempts"),
            ),
            (
                |s| s.stop_grace_period_ms = 3_600_001,
                Some("invalid stop_grace_period"),
            ),
            (|s| s.stop_signal = Some("SIGTERM".to_owned()), None),
            (|s| s.stop_signal = Some("TERM".to_owned()), None),
            (|s| s.stop_signal = Some("15".to_owned()), None),
            (
                |s| s.stop_signal = Some("SIGNOPE".to_owned()),
                Some("invalid stop_signal"),
            ),
            (
                |s| s.stop_signal = Some("0".to_owned()),
                Some("invalid stop_signal"),
            ),
            (
                |s| {
                    s.env.insert("A B".to_owned(), "x".to_owned());
                },
                Some("invalid env key \"A B\""),
            ),
            (
                |s| {
                    s.env.insert("PATH".to_owned(), "/bin".to_owned());
                },
                None,
            ),
            (
                |s| {
                    s.labels.insert("shoal.task".to_owned(), "x".to_owned());
                },
                Some("reserved"),
            ),
            (
                |s| s.args = vec!["ok".to_owned(), "nul\0".to_owned()],
                Some("args[1]"),
            ),
            (
                |s| {
                    s.healthcheck = Some(HealthCheck {
                        test: vec!["CMD-SHELL".to_owned(), "wget -q localhost".to_owned()],
                        interval_ms: 1_000,
                        ..HealthCheck::default()
                    })
                },
                None,
            ),
            (|s| s.healthcheck = Some(HealthCheck::default()), None),
            (
                |s| {
                    s.healthcheck = Some(HealthCheck {
                        test: vec!["CMD".to_owned(), "/bin/check".to_owned(), "-q".to_owned()],
                        ..HealthCheck::default()
                    })
                },
                None,
            ),
            (
                |s| {
                    s.healthcheck = Some(HealthCheck {
                        test: vec!["SHELL".to_owned(), "x".to_owned()],
                        ..HealthCheck::default()
                    })
                },
                Some("invalid healthcheck.test: [\"SHELL\", \"x\"] is not a health check"),
            ),
            (
                |s| {
                    s.healthcheck = Some(HealthCheck {
                        test: vec!["CMD-SHELL".to_owned()],
                        ..HealthCheck::default()
                    })
                },
                Some("invalid healthcheck.test"),
            ),
            (
                |s| {
                    s.healthcheck = Some(HealthCheck {
                        retries: 101,
                        ..HealthCheck::default()
                    })
                },
                Some("invalid healthcheck.retries"),
            ),
            (
                |s| {
                    s.healthcheck = Some(HealthCheck {
                        timeout_ms: MAX_HEALTH_DURATION_MS + 1,
                        ..HealthCheck::default()
                    })
                },
                Some("invalid healthcheck.timeout"),
            ),
            (
                |s| s.update.max_failure_ratio_ppm = RATIO_ONE_PPM + 1,
                Some("invalid update.max_failure_ratio: a ratio is from 0 to 1"),
            ),
            (
                |s| s.update.monitor_ms = MAX_UPDATE_DURATION_MS + 1,
                Some("invalid update.monitor"),
            ),
            (
                |s| s.rollback.failure_action = FailureAction::Rollback,
                Some("invalid rollback.failure_action: a rollback cannot roll back"),
            ),
            (|s| s.update.failure_action = FailureAction::Rollback, None),
            (
                |s| s.stack = Some("shop".to_owned()),
                Some("invalid name: a service of stack \"shop\" is named shop_SERVICE"),
            ),
            (
                |s| {
                    s.stack = Some("Shop".to_owned());
                    s.name = "Shop_web".to_owned();
                },
                Some("invalid name"),
            ),
            (
                |s| {
                    s.stack = Some("shop".to_owned());
                    s.name = "shop_web".to_owned();
                },
                None,
            ),
        ];
        for (i, (edit, want)) in cases.into_iter().enumerate() {
            let mut s = spec();
            edit(&mut s);
            match (s.validate(), want) {
                (Ok(()), None) => {}
                (Err(e), Some(text)) => {
                    let message = e.to_string();
                    assert!(
                        message.contains(text),
                        "case {i}: {message:?} lacks {text:?}"
                    );
                }
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_task_template_is_all_but_replicas_and_update_settings() {
        let base = spec();
        let same: [fn(&mut ServiceSpec); 3] = [
            |s| s.mode = ServiceMode::Replicated { replicas: 9 },
            |s| s.update.parallelism = 4,
            |s| s.rollback.order = UpdateOrder::StartFirst,
        ];
        for edit in same {
            let mut other = base.clone();
            edit(&mut other);
            assert!(base.same_template(&other), "{other:?}");
        }
        let changed: [fn(&mut ServiceSpec); 6] = [
            |s| s.image = "nginx:2".to_owned(),
            |s| s.force_update = 1,
            |s| s.mode = ServiceMode::Global,
            |s| s.healthcheck = Some(HealthCheck::default()),
            |s| s.stop_grace_period_ms = 1,
            |s| {
                s.labels.insert("a".to_owned(), "b".to_owned());
            },
        ];
        for edit in changed {
            let mut other = base.clone();
            edit(&mut other);
            assert!(!base.same_template(&other), "{other:?}");
        }
    }

    #[test]
    fn constraints_parse_and_print() {
        let ok = [
            ("node.id==3", "node.id==3"),
            ("node.name!=a", "node.name!=a"),
            ("node.role==manager", "node.role==manager"),
            ("node.labels.zone==eu", "node.labels.zone==eu"),
            (" node.labels.zone != eu ", "node.labels.zone!=eu"),
        ];
        for (input, shown) in ok {
            let c: Constraint = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(c.to_string(), shown);
            assert_eq!(c.to_string().parse::<Constraint>().unwrap(), c);
        }
        let bad = [
            (
                "node.foo==x",
                "invalid constraint \"node.foo==x\": allowed keys are node.id, node.name, \
                 node.role, node.labels.KEY; operators == and !=",
            ),
            ("node.name=x", "operators == and !="),
            ("node.id==abc", "node.id takes a node id number"),
            ("node.role!=king", "manager or worker"),
            ("node.labels.==x", "label key"),
            ("node.name==", "must not be empty"),
        ];
        for (input, want) in bad {
            let error = input.parse::<Constraint>().unwrap_err().to_string();
            assert!(error.contains(want), "{input}: {error:?} lacks {want:?}");
        }
        let json =
            serde_json::to_string(&vec!["node.labels.zone==eu".parse::<Constraint>().unwrap()])
                .unwrap();
        assert_eq!(json, r#"["node.labels.zone==eu"]"#);
        assert!(serde_json::from_str::<Constraint>(r#""node.x==1""#).is_err());
    }

    #[test]
    fn spec_files_take_defaults_and_reject_unknown_fields() {
        let spec: ServiceSpec = serde_json::from_str(
            r#"{"name":"web","image":"nginx","mode":{"replicated":{"replicas":3}},
                "restart":{"condition":"on-failure"},"ports":[{"published":8080,"target":80}]}"#,
        )
        .unwrap();
        assert_eq!(spec.replicas(), Some(3));
        assert_eq!(spec.restart.condition, RestartCondition::OnFailure);
        assert_eq!(spec.restart.delay_ms, 5_000);
        assert_eq!(spec.ports[0].protocol, Protocol::Tcp);
        assert_eq!(spec.stop_grace_period_ms, 10_000);
        assert!(serde_json::from_str::<ServiceSpec>(r#"{"name":"web","imag":"x"}"#).is_err());
        let json = serde_json::to_string(&(TaskState::Orphaned, DesiredState::Shutdown)).unwrap();
        assert_eq!(json, r#"["orphaned","shutdown"]"#);
    }

    #[test]
    fn lifecycle_order_and_formats() {
        assert!(TaskState::Running > TaskState::Starting);
        assert!(TaskState::Complete.is_terminal() && !TaskState::Running.is_terminal());
        assert_eq!(format_bytes(512 << 20), "512MiB");
        assert_eq!(format_bytes(1536 << 20), "1.5GiB");
        assert_eq!(format_bytes(100), "100B");
        assert_eq!(format_cpus(500_000_000), "0.5");
        assert_eq!(format_cpus(2_000_000_000), "2");
    }
}
