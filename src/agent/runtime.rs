//! The edge between the agent and a container engine: the `ContainerRuntime`
//! trait, the engine-neutral types it speaks (what to create, what was found,
//! what happened) and its error type.
//!
//! The trait is object-safe (`Arc<dyn ContainerRuntime>` works): every
//! operation returns a boxed future, so one agent can hold the Docker engine
//! and a simulation can hold thousands of in-memory fakes behind one type.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

/// Label carrying the cluster id; with [`LABEL_NODE`] it scopes every container
/// the agent may touch.
pub const LABEL_CLUSTER: &str = "shoal.cluster";
/// Label carrying the node id of the agent that owns the container.
pub const LABEL_NODE: &str = "shoal.node";
/// Label carrying the service name.
pub const LABEL_SERVICE: &str = "shoal.service";
/// Label carrying the task slot (1-based; 0 for global services).
pub const LABEL_SLOT: &str = "shoal.slot";
/// Label carrying the task id; how an observed container maps back to its task.
pub const LABEL_TASK: &str = "shoal.task";
/// Label carrying the stack of the task's service, when it has one.
pub const LABEL_STACK: &str = "shoal.stack";

/// Transport protocol of a published port: the replicated model's own type
/// (its lowercase name is what the engine uses in port keys, `80/tcp`).
pub use shoal_raft::Protocol;

/// A port published on the node (host mode): `published` on every host
/// address forwards to `target` inside the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub published: u16,
    pub target: u16,
    pub protocol: Protocol,
}

/// Everything needed to create one container. Zero in a resource field means
/// "no limit".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// Entrypoint override; empty keeps the image's.
    pub entrypoint: Vec<String>,
    /// Command override; empty keeps the image's.
    pub cmd: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub nano_cpus: u64,
    pub memory_bytes: u64,
    pub memory_reservation_bytes: u64,
    pub ports: Vec<PortSpec>,
    /// Signal sent first on stop; `None` keeps the image's (SIGTERM by default).
    pub stop_signal: Option<String>,
    /// Time between the stop signal and SIGKILL.
    pub stop_grace: Duration,
    /// `None` keeps the image's health check.
    pub healthcheck: Option<HealthCheck>,
}

/// Lifecycle state of a container as the engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Exited,
    Dead,
    Removing,
}

impl ContainerState {
    /// Whether a process of the container may still be alive, so stopping it
    /// is needed before removal.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            ContainerState::Running | ContainerState::Paused | ContainerState::Restarting
        )
    }
}

/// Health check status of a container that has a health check: the
/// replicated model's own type, since agents report it as it is.
pub use shoal_raft::Health;

/// A container health check: the replicated model's own type (Docker's form).
pub use shoal_raft::HealthCheck;

/// What the engine knows about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    /// Name without the leading `/` the engine adds.
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub state: ContainerState,
    /// Set once the container has exited.
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub health: Option<Health>,
    /// The engine's error for the last start attempt, empty when none.
    pub error: String,
    /// RFC 3339 as the engine reports it; empty when never started.
    pub started_at: String,
    /// RFC 3339 as the engine reports it; empty when not finished.
    pub finished_at: String,
    /// Grace period configured at creation, when the engine reports one.
    pub stop_grace: Option<Duration>,
    /// Stop signal configured at creation, when one was set.
    pub stop_signal: Option<String>,
}

impl ContainerInfo {
    /// The task this container runs, from its `shoal.task` label.
    pub fn task_id(&self) -> Option<&str> {
        self.labels.get(LABEL_TASK).map(String::as_str)
    }
}

/// What happened to a container, as the engine's event stream reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEventKind {
    Start,
    /// The main process exited; `exit_code` when the engine reported one.
    Die {
        exit_code: Option<i64>,
    },
    Oom,
    HealthStatus(Health),
    Destroy,
}

/// One container event, already scoped to this cluster and node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEvent {
    pub container_id: String,
    /// From the container's `shoal.task` label, when it has one.
    pub task_id: Option<String>,
    pub kind: RuntimeEventKind,
}

/// Why a runtime operation failed. [`RuntimeError::is_retryable`] says
/// whether trying again later may succeed without anyone changing anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("the container engine is unreachable or did not answer in time ({detail}); check that dockerd is running and its socket is accessible")]
    Unavailable { detail: String },
    #[error("{what} does not exist on this node's container engine")]
    NotFound { what: String },
    #[error("image {image} is not available on this node and could not be pulled: {detail}")]
    ImageMissing { image: String, detail: String },
    #[error("the container engine refused because of a conflict: {detail}")]
    Conflict { detail: String },
    #[error("the container engine failed: {detail}")]
    Other { detail: String },
}

impl RuntimeError {
    /// Unavailable (engine down or slow) and Conflict (an operation still in
    /// progress on the same container, e.g. a removal) can succeed on a later
    /// attempt; a missing container or image, or a rejected request, cannot.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RuntimeError::Unavailable { .. } | RuntimeError::Conflict { .. }
        )
    }
}

/// The label scope an agent works in: only containers carrying both labels
/// are listed, watched, stopped or removed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    pub cluster_id: String,
    pub node_id: String,
}

impl Scope {
    pub fn new(cluster_id: impl Into<String>, node_id: impl Into<String>) -> Self {
        Scope {
            cluster_id: cluster_id.into(),
            node_id: node_id.into(),
        }
    }

    /// Whether a container's labels put it inside this scope.
    pub fn contains(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get(LABEL_CLUSTER) == Some(&self.cluster_id)
            && labels.get(LABEL_NODE) == Some(&self.node_id)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{LABEL_CLUSTER}={} {LABEL_NODE}={}",
            self.cluster_id, self.node_id
        )
    }
}

/// A stream of events; it ends when the engine connection ends (e.g. the
/// engine restarted): the consumer reconnects and lists again, since events
/// may have been missed.
pub type EventStream = BoxStream<'static, Result<RuntimeEvent, RuntimeError>>;

/// The operations the agent needs from a container engine. Every call is
/// bounded in time by the implementation.
pub trait ContainerRuntime: Send + Sync {
    /// Checks that the engine answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), RuntimeError>>;

    /// All containers (running or not) carrying both scope labels.
    fn list<'a>(
        &'a self,
        cluster_id: &'a str,
        node_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ContainerInfo>, RuntimeError>>;

    /// Whether the image exists locally (no registry is contacted).
    fn image_present<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<bool, RuntimeError>>;

    /// Pulls the image from its registry.
    fn pull<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Creates (does not start) a container; returns its id.
    fn create<'a>(&'a self, spec: &'a ContainerSpec)
        -> BoxFuture<'a, Result<String, RuntimeError>>;

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Sends `signal` (or the container's configured stop signal), waits up to
    /// `grace`, then kills. Stopping a stopped container succeeds.
    fn stop<'a>(
        &'a self,
        id: &'a str,
        grace: Duration,
        signal: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Removes the container by force, with its anonymous volumes.
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;

    fn inspect<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ContainerInfo, RuntimeError>>;

    /// The address this host reaches the container at (its IP on the
    /// engine's bridge network); `None` when it has none (not running, or
    /// on no network).
    fn address<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<std::net::IpAddr>, RuntimeError>>;

    /// This host's address on the engine's default bridge network (the
    /// containers' gateway); `None` when the engine has no such network.
    fn bridge_gateway(&self) -> BoxFuture<'_, Result<Option<std::net::IpAddr>, RuntimeError>> {
        Box::pin(async { Ok(None) })
    }

    /// Start, die, oom, health status and destroy events of the containers in
    /// the scope.
    fn events<'a>(
        &'a self,
        cluster_id: &'a str,
        node_id: &'a str,
    ) -> BoxFuture<'a, Result<EventStream, RuntimeError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors_are_the_transient_ones() {
        let cases = [
            (RuntimeError::Unavailable { detail: "x".into() }, true),
            (RuntimeError::Conflict { detail: "x".into() }, true),
            (RuntimeError::NotFound { what: "x".into() }, false),
            (
                RuntimeError::ImageMissing {
                    image: "x".into(),
                    detail: "y".into(),
                },
                false,
            ),
            (RuntimeError::Other { detail: "x".into() }, false),
        ];
        for (error, retryable) in cases {
            assert_eq!(error.is_retryable(), retryable, "{error}");
        }
    }

    #[test]
    fn scope_needs_both_labels() {
        let scope = Scope::new("c1", "7");
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(scope.contains(&labels(&[(LABEL_CLUSTER, "c1"), (LABEL_NODE, "7")])));
        assert!(!scope.contains(&labels(&[(LABEL_CLUSTER, "c1")])));
        assert!(!scope.contains(&labels(&[(LABEL_CLUSTER, "c2"), (LABEL_NODE, "7")])));
        assert!(!scope.contains(&labels(&[(LABEL_CLUSTER, "c1"), (LABEL_NODE, "8")])));
    }
}
