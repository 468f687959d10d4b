//! `DockerRuntime`: the [`ContainerRuntime`] of the local Docker engine,
//! through bollard. This is the only module that imports bollard.
//!
//! Every call carries a timeout (stop: the grace period plus the call
//! timeout; pull: its own, longer one). The API version is negotiated at
//! connect time, so older and newer engines both work. Containers get restart
//! policy "no": shoal decides about restarts, not the engine. Published ports
//! bind on 0.0.0.0 (host mode).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, EventMessage,
    HealthConfig, HealthStatusEnum, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    InspectContainerOptions, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt, TryStreamExt};

use super::runtime::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ContainerState, EventStream, Health,
    HealthCheck, RuntimeError, RuntimeEvent, RuntimeEventKind, Scope, LABEL_CLUSTER, LABEL_NODE,
    LABEL_TASK,
};

/// Limit for one engine call that does not wait on a container or registry.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit for one image pull.
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(300);
/// Containers inspected at once while listing.
const LIST_INSPECT_PARALLELISM: usize = 8;
/// The engine's "never" timestamp.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The local Docker engine.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    call_timeout: Duration,
    pull_timeout: Duration,
}

impl DockerRuntime {
    /// Connects to the engine at `DOCKER_HOST` or the local socket and
    /// negotiates the API version.
    pub async fn connect() -> Result<Self, RuntimeError> {
        Self::connect_with_timeouts(DEFAULT_CALL_TIMEOUT, DEFAULT_PULL_TIMEOUT).await
    }

    pub async fn connect_with_timeouts(
        call_timeout: Duration,
        pull_timeout: Duration,
    ) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| RuntimeError::Unavailable {
                detail: e.to_string(),
            })?
            // Our own timeouts bound each call; bollard's must not cut a stop
            // that is waiting out a long grace period.
            .with_timeout(Duration::from_secs(3600));
        let docker = bounded(
            call_timeout,
            "version negotiation",
            docker.negotiate_version(),
        )
        .await?;
        Ok(DockerRuntime {
            docker,
            call_timeout,
            pull_timeout,
        })
    }

    /// The engine API version in use after negotiation, e.g. "1.41".
    pub fn api_version(&self) -> String {
        let version = self.docker.client_version();
        format!("{}.{}", version.major_version, version.minor_version)
    }

    async fn inspect_raw(&self, id: &str) -> Result<ContainerInspectResponse, RuntimeError> {
        bounded(
            self.call_timeout,
            "container inspect",
            self.docker
                .inspect_container(id, None::<InspectContainerOptions>),
        )
        .await
        .map_err(|e| not_found_as(e, || format!("container {id}")))
    }
}

/// The first host address of an IPv4 subnet (`172.17.0.0/16` → `172.17.0.1`).
fn first_host_v4(subnet: &str) -> Option<std::net::IpAddr> {
    let (net, bits) = subnet.split_once('/')?;
    let net: std::net::Ipv4Addr = net.parse().ok()?;
    let bits: u32 = bits.parse().ok()?;
    if !(1..=30).contains(&bits) {
        return None;
    }
    let mask = u32::MAX << (32 - bits);
    Some(std::net::Ipv4Addr::from((u32::from(net) & mask) + 1).into())
}

/// Runs an engine call under a timeout, classifying its error.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    call: impl Future<Output = Result<T, BollardError>>,
) -> Result<T, RuntimeError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(classify),
        Err(_) => Err(RuntimeError::Unavailable {
            detail: format!("{what} took longer than {} ms", limit.as_millis()),
        }),
    }
}

/// Maps a bollard error to a runtime error by what it means for a retry.
fn classify(error: BollardError) -> RuntimeError {
    match error {
        BollardError::DockerResponseServerError {
            status_code: 404,
            message,
        } => RuntimeError::NotFound { what: message },
        BollardError::DockerResponseServerError {
            status_code: 409,
            message,
        } => RuntimeError::Conflict { detail: message },
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => RuntimeError::Other {
            detail: format!("status {status_code}: {message}"),
        },
        BollardError::RequestTimeoutError
        | BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::HyperLegacyError { .. }
        | BollardError::SocketNotFoundError(_) => RuntimeError::Unavailable {
            detail: error.to_string(),
        },
        other => RuntimeError::Other {
            detail: other.to_string(),
        },
    }
}

/// Names the missing object precisely; other errors pass through.
fn not_found_as(error: RuntimeError, what: impl FnOnce() -> String) -> RuntimeError {
    match error {
        RuntimeError::NotFound { .. } => RuntimeError::NotFound { what: what() },
        other => other,
    }
}

/// Splits `repo[:tag]` for the pull API, which pulls every tag when the tag
/// is empty. A digest reference goes whole in `fromImage`.
fn split_image_reference(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    let name_start = image.rfind('/').map_or(0, |slash| slash + 1);
    match image[name_start..].rfind(':') {
        Some(colon) => (
            &image[..name_start + colon],
            &image[name_start + colon + 1..],
        ),
        None => (image, "latest"),
    }
}

fn timestamp(value: Option<String>) -> String {
    match value {
        Some(value) if value != ZERO_TIME => value,
        _ => String::new(),
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The engine's create request for a spec.
fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for port in &spec.ports {
        let key = format!("{}/{}", port.target, port.protocol.as_str());
        port_bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: Some("0.0.0.0".to_string()),
                host_port: Some(port.published.to_string()),
            });
    }
    let mut exposed_ports: Vec<String> = port_bindings.keys().cloned().collect();
    exposed_ports.sort();
    let positive = |value: u64| (value > 0).then(|| to_i64(value));
    let non_empty = |values: &Vec<String>| (!values.is_empty()).then(|| values.clone());
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint: non_empty(&spec.entrypoint),
        cmd: non_empty(&spec.cmd),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        exposed_ports: (!exposed_ports.is_empty()).then_some(exposed_ports),
        stop_signal: spec.stop_signal.clone(),
        stop_timeout: Some(to_i64(grace_seconds(spec.stop_grace))),
        healthcheck: spec.healthcheck.as_ref().map(health_config),
        host_config: Some(HostConfig {
            nano_cpus: positive(spec.nano_cpus),
            memory: positive(spec.memory_bytes),
            memory_reservation: positive(spec.memory_reservation_bytes),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Docker's health check settings; durations in nanoseconds, 0 for the default.
fn health_config(check: &HealthCheck) -> HealthConfig {
    let nanos = |ms: u64| Some(to_i64(ms.saturating_mul(1_000_000)));
    HealthConfig {
        test: Some(check.test.clone()),
        interval: nanos(check.interval_ms),
        timeout: nanos(check.timeout_ms),
        retries: Some(to_i64(check.retries)),
        start_period: nanos(check.start_period_ms),
        start_interval: None,
    }
}

/// The engine counts the grace period in whole seconds; round up so a
/// container never gets less than asked.
fn grace_seconds(grace: Duration) -> u64 {
    grace.as_secs() + u64::from(grace.subsec_nanos() > 0)
}

fn container_info(response: ContainerInspectResponse) -> ContainerInfo {
    let config = response.config.unwrap_or_default();
    let state = response.state.unwrap_or_default();
    let status = match state.status {
        Some(ContainerStateStatusEnum::CREATED) => ContainerState::Created,
        Some(ContainerStateStatusEnum::PAUSED) => ContainerState::Paused,
        Some(ContainerStateStatusEnum::RESTARTING) => ContainerState::Restarting,
        Some(ContainerStateStatusEnum::REMOVING) => ContainerState::Removing,
        Some(ContainerStateStatusEnum::EXITED) => ContainerState::Exited,
        Some(ContainerStateStatusEnum::DEAD) => ContainerState::Dead,
        // A stopping container still has a live process.
        Some(ContainerStateStatusEnum::RUNNING) | Some(ContainerStateStatusEnum::STOPPING) => {
            ContainerState::Running
        }
        Some(ContainerStateStatusEnum::EMPTY) | None => {
            if state.running == Some(true) {
                ContainerState::Running
            } else {
                ContainerState::Exited
            }
        }
    };
    let exited = matches!(status, ContainerState::Exited | ContainerState::Dead);
    ContainerInfo {
        id: response.id.unwrap_or_default(),
        name: response
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        image: config.image.unwrap_or_default(),
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        state: status,
        // The engine reports 0 for containers that have not exited.
        exit_code: if exited { state.exit_code } else { None },
        oom_killed: state.oom_killed.unwrap_or(false),
        health: state
            .health
            .and_then(|health| health.status)
            .and_then(health_of),
        error: state.error.unwrap_or_default(),
        started_at: timestamp(state.started_at),
        finished_at: timestamp(state.finished_at),
        stop_grace: config
            .stop_timeout
            .and_then(|secs| u64::try_from(secs).ok())
            .map(Duration::from_secs),
        stop_signal: config.stop_signal.filter(|signal| !signal.is_empty()),
    }
}

fn health_of(status: HealthStatusEnum) -> Option<Health> {
    match status {
        HealthStatusEnum::STARTING => Some(Health::Starting),
        HealthStatusEnum::HEALTHY => Some(Health::Healthy),
        HealthStatusEnum::UNHEALTHY => Some(Health::Unhealthy),
        HealthStatusEnum::EMPTY | HealthStatusEnum::NONE => None,
    }
}

/// The runtime event for an engine event, when it is one the agent watches.
fn runtime_event(message: EventMessage) -> Option<(BTreeMap<String, String>, RuntimeEvent)> {
    let actor = message.actor?;
    let container_id = actor.id?;
    let attributes: BTreeMap<String, String> =
        actor.attributes.unwrap_or_default().into_iter().collect();
    let action = message.action?;
    let kind = match action.as_str() {
        "start" => RuntimeEventKind::Start,
        "die" => RuntimeEventKind::Die {
            exit_code: attributes
                .get("exitCode")
                .and_then(|code| code.parse().ok()),
        },
        "oom" => RuntimeEventKind::Oom,
        "destroy" => RuntimeEventKind::Destroy,
        other => {
            let status = other.strip_prefix("health_status:")?.trim();
            let health = match status {
                "starting" => Health::Starting,
                "healthy" => Health::Healthy,
                "unhealthy" => Health::Unhealthy,
                _ => return None,
            };
            RuntimeEventKind::HealthStatus(health)
        }
    };
    let task_id = attributes.get(LABEL_TASK).cloned();
    Some((
        attributes,
        RuntimeEvent {
            container_id,
            task_id,
            kind,
        },
    ))
}

impl ContainerRuntime for DockerRuntime {
    fn ping(&self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move {
            bounded(self.call_timeout, "ping", self.docker.ping()).await?;
            Ok(())
        })
    }

    fn list<'a>(
        &'a self,
        cluster_id: &'a str,
        node_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ContainerInfo>, RuntimeError>> {
        Box::pin(async move {
            let scope = Scope::new(cluster_id, node_id);
            let mut filters = HashMap::new();
            filters.insert(
                "label",
                vec![
                    format!("{LABEL_CLUSTER}={cluster_id}"),
                    format!("{LABEL_NODE}={node_id}"),
                ],
            );
            let options = ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build();
            let summaries = bounded(
                self.call_timeout,
                "container list",
                self.docker.list_containers(Some(options)),
            )
            .await?;
            // The summary lacks exit code, OOM flag and health: inspect each.
            let ids: Vec<String> = summaries.into_iter().filter_map(|s| s.id).collect();
            let inspected: Vec<Result<ContainerInspectResponse, RuntimeError>> = stream::iter(ids)
                .map(|id| async move { self.inspect_raw(&id).await })
                .buffer_unordered(LIST_INSPECT_PARALLELISM)
                .collect()
                .await;
            let mut containers = Vec::with_capacity(inspected.len());
            for result in inspected {
                match result {
                    Ok(response) => {
                        let info = container_info(response);
                        if scope.contains(&info.labels) {
                            containers.push(info);
                        }
                    }
                    // Removed between list and inspect: gone is what it is.
                    Err(RuntimeError::NotFound { .. }) => {}
                    Err(other) => return Err(other),
                }
            }
            containers.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(containers)
        })
    }

    fn image_present<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<bool, RuntimeError>> {
        Box::pin(async move {
            match bounded(
                self.call_timeout,
                "image inspect",
                self.docker.inspect_image(image),
            )
            .await
            {
                Ok(_) => Ok(true),
                Err(RuntimeError::NotFound { .. }) => Ok(false),
                Err(other) => Err(other),
            }
        })
    }

    fn pull<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let (repository, tag) = split_image_reference(image);
            let mut options = CreateImageOptionsBuilder::default().from_image(repository);
            if !tag.is_empty() {
                options = options.tag(tag);
            }
            let progress = self
                .docker
                .create_image(Some(options.build()), None, None)
                .try_for_each(|_| async { Ok(()) });
            match bounded(self.pull_timeout, "image pull", progress).await {
                Ok(()) => Ok(()),
                Err(unavailable @ RuntimeError::Unavailable { .. }) => Err(unavailable),
                Err(other) => Err(RuntimeError::ImageMissing {
                    image: image.to_string(),
                    detail: other.to_string(),
                }),
            }
        })
    }

    fn create<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> BoxFuture<'a, Result<String, RuntimeError>> {
        Box::pin(async move {
            let options = CreateContainerOptionsBuilder::default()
                .name(&spec.name)
                .build();
            let created = bounded(
                self.call_timeout,
                "container create",
                self.docker
                    .create_container(Some(options), create_body(spec)),
            )
            .await
            .map_err(|error| match error {
                // The only thing create can miss is the image.
                RuntimeError::NotFound { what } => RuntimeError::ImageMissing {
                    image: spec.image.clone(),
                    detail: what,
                },
                other => other,
            })?;
            Ok(created.id)
        })
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            bounded(
                self.call_timeout,
                "container start",
                self.docker.start_container(id, None),
            )
            .await
            .map_err(|e| not_found_as(e, || format!("container {id}")))
        })
    }

    fn stop<'a>(
        &'a self,
        id: &'a str,
        grace: Duration,
        signal: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let seconds = grace_seconds(grace);
            let mut options = StopContainerOptionsBuilder::default()
                .t(i32::try_from(seconds).unwrap_or(i32::MAX));
            // Engines before API 1.42 ignore the signal parameter and use
            // the stop signal set at creation, which is the same one.
            if let Some(signal) = signal {
                options = options.signal(signal);
            }
            bounded(
                Duration::from_secs(seconds) + self.call_timeout,
                "container stop",
                self.docker.stop_container(id, Some(options.build())),
            )
            .await
            .map_err(|e| not_found_as(e, || format!("container {id}")))
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let options = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            bounded(
                self.call_timeout,
                "container remove",
                self.docker.remove_container(id, Some(options)),
            )
            .await
            .map_err(|e| not_found_as(e, || format!("container {id}")))
        })
    }

    fn inspect<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ContainerInfo, RuntimeError>> {
        Box::pin(async move { Ok(container_info(self.inspect_raw(id).await?)) })
    }

    fn address<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<std::net::IpAddr>, RuntimeError>> {
        Box::pin(async move {
            let raw = self.inspect_raw(id).await?;
            let networks = raw.network_settings.and_then(|n| n.networks);
            // The default bridge first, then any other network, by name.
            let mut networks: Vec<_> = networks.into_iter().flatten().collect();
            networks.sort_by_key(|(name, _)| (name != "bridge", name.clone()));
            Ok(networks
                .into_iter()
                .filter_map(|(_, endpoint)| endpoint.ip_address)
                .find_map(|ip| ip.parse().ok()))
        })
    }

    fn bridge_gateway(&self) -> BoxFuture<'_, Result<Option<std::net::IpAddr>, RuntimeError>> {
        Box::pin(async move {
            let network = match bounded(
                self.call_timeout,
                "network inspect",
                self.docker.inspect_network("bridge", None),
            )
            .await
            {
                Ok(network) => network,
                Err(RuntimeError::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            let configs: Vec<_> = network
                .ipam
                .and_then(|ipam| ipam.config)
                .into_iter()
                .flatten()
                .collect();
            let named = configs
                .iter()
                .filter_map(|c| c.gateway.as_deref())
                .find_map(|gateway| gateway.parse().ok());
            // Older engines leave the default bridge's gateway out of its
            // IPAM config; the engine gives it the subnet's first address.
            Ok(named.or_else(|| {
                configs
                    .iter()
                    .filter_map(|c| c.subnet.as_deref())
                    .find_map(first_host_v4)
            }))
        })
    }

    fn events<'a>(
        &'a self,
        cluster_id: &'a str,
        node_id: &'a str,
    ) -> BoxFuture<'a, Result<EventStream, RuntimeError>> {
        Box::pin(async move {
            // Fail early when the engine is down; the stream itself connects
            // lazily on first poll.
            self.ping().await?;
            let scope = Scope::new(cluster_id, node_id);
            let mut filters = HashMap::new();
            filters.insert("type", vec!["container".to_string()]);
            filters.insert(
                "label",
                vec![
                    format!("{LABEL_CLUSTER}={cluster_id}"),
                    format!("{LABEL_NODE}={node_id}"),
                ],
            );
            filters.insert(
                "event",
                ["start", "die", "oom", "health_status", "destroy"]
                    .map(String::from)
                    .to_vec(),
            );
            // Replaying from a second ago closes the gap between this call
            // and the lazy connection; a replayed event only triggers another
            // reconciliation.
            let since = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |now| now.as_secs().saturating_sub(1));
            let options = EventsOptionsBuilder::default()
                .since(&since.to_string())
                .filters(&filters)
                .build();
            let events = self.docker.events(Some(options)).filter_map(move |item| {
                let mapped = match item {
                    Ok(message) => runtime_event(message)
                        .filter(|(attributes, _)| scope.contains(attributes))
                        .map(|(_, event)| Ok(event)),
                    Err(error) => Some(Err(classify(error))),
                };
                async move { mapped }
            });
            Ok(events.boxed())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::runtime::{PortSpec, Protocol, LABEL_SERVICE};

    #[test]
    fn a_subnets_first_host_is_its_default_gateway() {
        let check = |subnet: &str, expected: Option<&str>| {
            let got = first_host_v4(subnet);
            assert_eq!(got, expected.map(|e| e.parse().unwrap()), "{subnet}");
        };
        check("172.17.0.0/16", Some("172.17.0.1"));
        check("10.1.2.128/25", Some("10.1.2.129"));
        check("10.1.2.77/24", Some("10.1.2.1"));
        check("10.1.2.0/31", None);
        check("fd00::/64", None);
        check("nonsense", None);
    }

    #[test]
    fn image_references_split_into_repository_and_tag() {
        let cases = [
            ("nginx", ("nginx", "latest")),
            ("nginx:1.27", ("nginx", "1.27")),
            ("host:5000/team/app", ("host:5000/team/app", "latest")),
            ("host:5000/team/app:v2", ("host:5000/team/app", "v2")),
            ("app@sha256:abcd", ("app@sha256:abcd", "")),
        ];
        for (image, expected) in cases {
            assert_eq!(split_image_reference(image), expected, "{image}");
        }
    }

    #[test]
    fn grace_rounds_up_to_whole_seconds() {
        assert_eq!(grace_seconds(Duration::ZERO), 0);
        assert_eq!(grace_seconds(Duration::from_millis(1)), 1);
        assert_eq!(grace_seconds(Duration::from_millis(10_000)), 10);
        assert_eq!(grace_seconds(Duration::from_millis(10_500)), 11);
    }

    #[test]
    fn create_body_sets_limits_ports_and_no_restart() {
        let spec = ContainerSpec {
            name: "web.1.abc".to_string(),
            image: "shoal-test:latest".to_string(),
            entrypoint: Vec::new(),
            cmd: vec!["sleep".to_string(), "1".to_string()],
            env: [("A".to_string(), "1".to_string())].into(),
            labels: [(LABEL_SERVICE.to_string(), "web".to_string())].into(),
            nano_cpus: 500_000_000,
            memory_bytes: 64 << 20,
            memory_reservation_bytes: 0,
            ports: vec![
                PortSpec {
                    published: 8080,
                    target: 80,
                    protocol: Protocol::Tcp,
                },
                PortSpec {
                    published: 8081,
                    target: 80,
                    protocol: Protocol::Tcp,
                },
                PortSpec {
                    published: 5353,
                    target: 53,
                    protocol: Protocol::Udp,
                },
            ],
            stop_signal: Some("SIGINT".to_string()),
            stop_grace: Duration::from_millis(1_500),
            healthcheck: None,
        };
        let body = create_body(&spec);
        assert_eq!(body.entrypoint, None, "empty entrypoint keeps the image's");
        assert_eq!(body.cmd, Some(spec.cmd.clone()));
        assert_eq!(body.env, Some(vec!["A=1".to_string()]));
        assert_eq!(body.stop_timeout, Some(2));
        assert_eq!(body.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(
            body.exposed_ports,
            Some(vec!["53/udp".to_string(), "80/tcp".to_string()])
        );
        let host = body.host_config.unwrap();
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.memory_reservation, None);
        assert_eq!(
            host.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::NO)
        );
        let bindings = host.port_bindings.unwrap();
        let tcp: Vec<String> = bindings["80/tcp"]
            .as_ref()
            .unwrap()
            .iter()
            .map(|b| {
                format!(
                    "{}:{}",
                    b.host_ip.as_deref().unwrap(),
                    b.host_port.as_deref().unwrap()
                )
            })
            .collect();
        assert_eq!(tcp, ["0.0.0.0:8080", "0.0.0.0:8081"]);
    }

    #[test]
    fn engine_errors_are_classified_by_retryability() {
        let server = |status_code: u16| BollardError::DockerResponseServerError {
            status_code,
            message: "m".to_string(),
        };
        assert!(matches!(
            classify(server(404)),
            RuntimeError::NotFound { .. }
        ));
        assert!(matches!(
            classify(server(409)),
            RuntimeError::Conflict { .. }
        ));
        assert!(matches!(classify(server(500)), RuntimeError::Other { .. }));
        assert!(matches!(
            classify(BollardError::RequestTimeoutError),
            RuntimeError::Unavailable { .. }
        ));
        assert!(matches!(
            classify(BollardError::SocketNotFoundError("/x".to_string())),
            RuntimeError::Unavailable { .. }
        ));
    }

    #[test]
    fn engine_events_map_to_runtime_events() {
        let event = |action: &str, attributes: &[(&str, &str)]| EventMessage {
            action: Some(action.to_string()),
            actor: Some(bollard::models::EventActor {
                id: Some("c1".to_string()),
                attributes: Some(
                    attributes
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
            ..Default::default()
        };
        let kind = |message| runtime_event(message).map(|(_, e)| e.kind);
        assert_eq!(
            kind(event("die", &[("exitCode", "3")])),
            Some(RuntimeEventKind::Die { exit_code: Some(3) })
        );
        assert_eq!(
            kind(event("health_status: unhealthy", &[])),
            Some(RuntimeEventKind::HealthStatus(Health::Unhealthy))
        );
        assert_eq!(kind(event("oom", &[])), Some(RuntimeEventKind::Oom));
        assert_eq!(kind(event("exec_create: sh", &[])), None);
        let (_, with_task) = runtime_event(event("start", &[(LABEL_TASK, "t1")])).unwrap();
        assert_eq!(with_task.task_id.as_deref(), Some("t1"));
    }
}

/// Tests against the machine's Docker engine; they run only with
/// `SHOAL_DOCKER_TESTS=1` and need the image from `scripts/test-image.sh`.
#[cfg(test)]
mod engine_tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    use super::*;
    use crate::agent::runtime::{PortSpec, Protocol};

    const TEST_IMAGE: &str = "shoal-test:latest";
    const LABEL_TEST: &str = "shoal.test";

    fn enabled(test: &str) -> bool {
        let on = std::env::var("SHOAL_DOCKER_TESTS").is_ok_and(|v| v == "1");
        if !on {
            eprintln!("skipping {test}: set SHOAL_DOCKER_TESTS=1 to run it against the local Docker engine");
        }
        on
    }

    /// A scope of its own per test, so parallel tests never see each
    /// other's containers.
    fn test_scope() -> Scope {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Scope::new(format!("test-{}-{n}", std::process::id()), "1")
    }

    fn spec(scope: &Scope, name: &str, cmd: &[&str]) -> ContainerSpec {
        let labels = [
            (LABEL_CLUSTER, scope.cluster_id.as_str()),
            (LABEL_NODE, scope.node_id.as_str()),
            (LABEL_TASK, name),
            (LABEL_TEST, "1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        ContainerSpec {
            name: format!("shoal-test-{}-{name}", scope.cluster_id),
            image: TEST_IMAGE.to_string(),
            entrypoint: Vec::new(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            labels,
            nano_cpus: 0,
            memory_bytes: 0,
            memory_reservation_bytes: 0,
            ports: Vec::new(),
            stop_signal: None,
            stop_grace: Duration::from_secs(1),
            healthcheck: None,
        }
    }

    async fn connect() -> DockerRuntime {
        let runtime = DockerRuntime::connect()
            .await
            .expect("SHOAL_DOCKER_TESTS=1 needs a reachable Docker engine");
        assert!(
            runtime.image_present(TEST_IMAGE).await.unwrap(),
            "{TEST_IMAGE} is missing: run scripts/test-image.sh first"
        );
        runtime
    }

    /// Runs `body`, then removes the containers it left in its scope that
    /// carry the test label, whether the body passed or panicked.
    async fn with_scope<F, Fut>(body: F)
    where
        F: FnOnce(DockerRuntime, Scope) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let runtime = connect().await;
        let scope = test_scope();
        let outcome = tokio::spawn(body(runtime.clone(), scope.clone())).await;
        let leftovers = runtime
            .list(&scope.cluster_id, &scope.node_id)
            .await
            .unwrap_or_default();
        for container in leftovers {
            if container.labels.get(LABEL_TEST).map(String::as_str) == Some("1") {
                let _ = runtime.remove(&container.id).await;
            }
        }
        if let Err(error) = outcome {
            std::panic::resume_unwind(error.into_panic());
        }
    }

    async fn wait_for_state(
        runtime: &DockerRuntime,
        id: &str,
        wanted: ContainerState,
    ) -> ContainerInfo {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info = runtime.inspect(id).await.unwrap();
            if info.state == wanted {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never reached {wanted:?}: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn health_checks_come_from_the_spec_or_the_image() {
        if !enabled("health_checks_come_from_the_spec_or_the_image") {
            return;
        }
        with_scope(|runtime, scope| async move {
            let wait_health = |id: String, wanted: Option<Health>| {
                let runtime = runtime.clone();
                async move {
                    let deadline = Instant::now() + Duration::from_secs(20);
                    loop {
                        let info = runtime.inspect(&id).await.unwrap();
                        if info.health == wanted {
                            return;
                        }
                        assert!(
                            Instant::now() < deadline,
                            "{id}: {info:?}, wanted {wanted:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            let check = |test: &[&str]| HealthCheck {
                test: test.iter().map(|s| s.to_string()).collect(),
                interval_ms: 500,
                timeout_ms: 1_000,
                retries: 1,
                start_period_ms: 0,
            };
            // The spec's check: passing, then failing.
            let mut passing = spec(&scope, "passing", &["sleep", "300"]);
            passing.healthcheck = Some(check(&["CMD-SHELL", "test -d /www"]));
            let id = runtime.create(&passing).await.unwrap();
            runtime.start(&id).await.unwrap();
            assert_eq!(
                runtime.inspect(&id).await.unwrap().health,
                Some(Health::Starting)
            );
            wait_health(id, Some(Health::Healthy)).await;
            let mut failing = spec(&scope, "failing", &["sleep", "300"]);
            failing.healthcheck = Some(check(&["CMD", "false"]));
            let id = runtime.create(&failing).await.unwrap();
            runtime.start(&id).await.unwrap();
            wait_health(id, Some(Health::Unhealthy)).await;
            // No check in the spec: the image's own; ["NONE"] turns it off.
            let mut own = spec(&scope, "own", &["sleep", "300"]);
            own.image = "shoal-test:healthcheck".to_string();
            let id = runtime.create(&own).await.unwrap();
            runtime.start(&id).await.unwrap();
            wait_health(id, Some(Health::Healthy)).await;
            let mut off = own.clone();
            off.name = format!("{}-off", own.name);
            off.labels.insert(LABEL_TASK.to_string(), "off".to_string());
            off.healthcheck = Some(HealthCheck::default());
            let id = runtime.create(&off).await.unwrap();
            runtime.start(&id).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            assert_eq!(runtime.inspect(&id).await.unwrap().health, None);
        })
        .await;
    }

    #[tokio::test]
    async fn create_start_list_stop_remove() {
        if !enabled("create_start_list_stop_remove") {
            return;
        }
        with_scope(|runtime, scope| async move {
            // `sleep` as PID 1 ignores SIGTERM, so stop waits out the grace.
            let mut sleeper = spec(&scope, "sleeper", &["sleep", "300"]);
            sleeper.nano_cpus = 250_000_000;
            sleeper.memory_bytes = 64 << 20;
            let id = runtime.create(&sleeper).await.unwrap();
            let created = runtime.inspect(&id).await.unwrap();
            assert_eq!(created.state, ContainerState::Created);
            assert_eq!(created.name, sleeper.name);
            assert_eq!(created.exit_code, None);
            assert_eq!(created.stop_grace, Some(Duration::from_secs(1)));

            runtime.start(&id).await.unwrap();
            let listed = runtime
                .list(&scope.cluster_id, &scope.node_id)
                .await
                .unwrap();
            assert_eq!(listed.len(), 1, "{listed:?}");
            assert_eq!(listed[0].id, id);
            assert_eq!(listed[0].state, ContainerState::Running);
            assert!(!listed[0].started_at.is_empty());
            assert!(runtime
                .list(&scope.cluster_id, "other-node")
                .await
                .unwrap()
                .is_empty());

            let before = Instant::now();
            runtime
                .stop(&id, Duration::from_secs(1), None)
                .await
                .unwrap();
            let took = before.elapsed();
            assert!(
                took >= Duration::from_millis(900),
                "stop did not wait for the grace period: {took:?}"
            );
            assert!(took < Duration::from_secs(10), "stop took {took:?}");
            let stopped = runtime.inspect(&id).await.unwrap();
            assert_eq!(stopped.state, ContainerState::Exited);
            assert_eq!(
                stopped.exit_code,
                Some(137),
                "killed after the grace period"
            );
            assert!(!stopped.finished_at.is_empty());

            // Stopping a stopped container succeeds.
            runtime
                .stop(&id, Duration::from_secs(1), None)
                .await
                .unwrap();
            runtime.remove(&id).await.unwrap();
            assert!(matches!(
                runtime.inspect(&id).await,
                Err(RuntimeError::NotFound { .. })
            ));
            assert!(matches!(
                runtime.remove(&id).await,
                Err(RuntimeError::NotFound { .. })
            ));
        })
        .await;
    }

    #[tokio::test]
    async fn stop_signal_reaches_a_process_that_handles_it() {
        if !enabled("stop_signal_reaches_a_process_that_handles_it") {
            return;
        }
        with_scope(|runtime, scope| async move {
            let script = "trap 'exit 7' USR1; touch /tmp/trapped; while true; do sleep 0.1; done";
            let mut handler = spec(&scope, "handler", &["sh", "-c", script]);
            handler.stop_signal = Some("SIGUSR1".to_string());
            handler.stop_grace = Duration::from_secs(20);
            let id = runtime.create(&handler).await.unwrap();
            runtime.start(&id).await.unwrap();
            // PID 1 ignores a signal it has no handler for yet: wait for the trap.
            let deadline = Instant::now() + Duration::from_secs(20);
            while !std::process::Command::new("docker")
                .args(["exec", &id, "test", "-f", "/tmp/trapped"])
                .output()
                .is_ok_and(|o| o.status.success())
            {
                assert!(Instant::now() < deadline, "the trap was never installed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let before = Instant::now();
            runtime
                .stop(&id, handler.stop_grace, Some("SIGUSR1"))
                .await
                .unwrap();
            assert!(
                before.elapsed() < Duration::from_secs(10),
                "the signal was not delivered"
            );
            let stopped = runtime.inspect(&id).await.unwrap();
            assert_eq!(stopped.exit_code, Some(7));
        })
        .await;
    }

    #[tokio::test]
    async fn missing_image_is_reported_as_image_missing() {
        if !enabled("missing_image_is_reported_as_image_missing") {
            return;
        }
        with_scope(|runtime, scope| async move {
            let missing = "shoal-test-missing:never";
            assert!(!runtime.image_present(missing).await.unwrap());
            let mut no_image = spec(&scope, "noimage", &["true"]);
            no_image.image = missing.to_string();
            match runtime.create(&no_image).await {
                Err(RuntimeError::ImageMissing { image, detail }) => {
                    assert_eq!(image, missing);
                    assert!(!detail.is_empty());
                }
                other => panic!("expected ImageMissing, got {other:?}"),
            }
            // No registry is reachable here, and none has this image.
            match runtime.pull(missing).await {
                Err(RuntimeError::ImageMissing { image, .. }) => assert_eq!(image, missing),
                other => panic!("expected ImageMissing from the pull, got {other:?}"),
            }
            // Nothing was created.
            assert!(runtime
                .list(&scope.cluster_id, &scope.node_id)
                .await
                .unwrap()
                .is_empty());
        })
        .await;
    }

    #[tokio::test]
    async fn executor_runs_adopts_reports_and_removes() {
        use crate::agent::{DesiredTask, Executor, ExecutorConfig, TaskSpec, TaskState};
        use shoal_raft::DesiredState;
        use std::sync::Arc;

        if !enabled("executor_runs_adopts_reports_and_removes") {
            return;
        }
        with_scope(|runtime, scope| async move {
            let mut spec = TaskSpec::new(TEST_IMAGE);
            spec.args = vec!["sleep".to_string(), "300".to_string()];
            spec.stop_grace_period_ms = 1_000;
            spec.labels.insert(LABEL_TEST.to_string(), "1".to_string());
            let mut desired: Vec<DesiredTask> = (1..=3)
                .map(|slot| DesiredTask {
                    id: format!("{:012x}{slot:04x}", std::process::id()),
                    service: format!("svc-{}", scope.cluster_id),
                    slot,
                    desired_state: DesiredState::Running,
                    state: TaskState::Assigned,
                    spec: spec.clone(),
                })
                .collect();
            let executor = Executor::new(
                Arc::new(runtime.clone()),
                scope.clone(),
                ExecutorConfig::default(),
            );
            let echo = |desired: &mut Vec<DesiredTask>, statuses: &[crate::agent::TaskStatus]| {
                for status in statuses {
                    if let Some(task) = desired.iter_mut().find(|t| t.id == status.task_id) {
                        task.state = status.state;
                    }
                }
            };

            let outcome = executor.reconcile(&desired).await.unwrap();
            assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
            assert_eq!(outcome.statuses.len(), 3);
            assert!(outcome
                .statuses
                .iter()
                .all(|s| s.state == TaskState::Running));
            echo(&mut desired, &outcome.statuses);
            let ids: Vec<String> = runtime
                .list(&scope.cluster_id, &scope.node_id)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.id)
                .collect();
            assert_eq!(ids.len(), 3);

            // Adoption: a second pass changes nothing.
            let again = executor.reconcile(&desired).await.unwrap();
            assert_eq!(again, crate::agent::Outcome::default());
            let still: Vec<String> = runtime
                .list(&scope.cluster_id, &scope.node_id)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.id)
                .collect();
            assert_eq!(still, ids, "containers were replaced");

            // A killed container is reported failed with its exit code.
            let victim = ids[0].clone();
            let killed = tokio::process::Command::new("docker")
                .args(["kill", &victim])
                .output()
                .await
                .unwrap();
            assert!(killed.status.success());
            wait_for_state(&runtime, &victim, ContainerState::Exited).await;
            let outcome = executor.reconcile(&desired).await.unwrap();
            assert_eq!(outcome.statuses.len(), 1, "{:?}", outcome.statuses);
            assert_eq!(outcome.statuses[0].state, TaskState::Failed);
            assert_eq!(outcome.statuses[0].exit_code, Some(137));
            assert_eq!(
                outcome.statuses[0].container_id.as_deref(),
                Some(victim.as_str())
            );
            echo(&mut desired, &outcome.statuses);

            // Everything desired shutdown: stopped in parallel, removed.
            for task in &mut desired {
                task.desired_state = DesiredState::Shutdown;
            }
            let before = Instant::now();
            executor.reconcile(&desired).await.unwrap();
            executor.settle().await;
            let outcome = executor.reconcile(&desired).await.unwrap();
            let took = before.elapsed();
            assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
            let shut: Vec<TaskState> = outcome.statuses.iter().map(|s| s.state).collect();
            assert_eq!(shut, [TaskState::Shutdown, TaskState::Shutdown]);
            assert!(took < Duration::from_secs(8), "two 1 s stops took {took:?}");
            assert!(runtime
                .list(&scope.cluster_id, &scope.node_id)
                .await
                .unwrap()
                .is_empty());
        })
        .await;
    }

    #[tokio::test]
    async fn docker_kill_emits_die_with_exit_code() {
        if !enabled("docker_kill_emits_die_with_exit_code") {
            return;
        }
        with_scope(|runtime, scope| async move {
            let mut events = runtime
                .events(&scope.cluster_id, &scope.node_id)
                .await
                .unwrap();
            let id = runtime
                .create(&spec(&scope, "victim", &["sleep", "300"]))
                .await
                .unwrap();
            runtime.start(&id).await.unwrap();
            wait_for_state(&runtime, &id, ContainerState::Running).await;
            let status = tokio::process::Command::new("docker")
                .args(["kill", &id])
                .output()
                .await
                .unwrap();
            assert!(status.status.success(), "docker kill failed: {status:?}");
            let mut seen = Vec::new();
            let died = tokio::time::timeout(Duration::from_secs(20), async {
                while let Some(event) = events.next().await {
                    let event = event.unwrap();
                    assert_eq!(event.container_id, id, "an event from outside the scope");
                    seen.push(event.kind.clone());
                    if let RuntimeEventKind::Die { exit_code } = event.kind {
                        return exit_code;
                    }
                }
                None
            })
            .await
            .expect("no die event within 20 s");
            assert_eq!(died, Some(137), "events seen: {seen:?}");
            assert_eq!(seen.first(), Some(&RuntimeEventKind::Start));
            let info = wait_for_state(&runtime, &id, ContainerState::Exited).await;
            assert_eq!(info.exit_code, Some(137));
        })
        .await;
    }

    #[tokio::test]
    async fn published_port_serves_on_the_host() {
        if !enabled("published_port_serves_on_the_host") {
            return;
        }
        with_scope(|runtime, scope| async move {
            let published = {
                let probe = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
                probe.local_addr().unwrap().port()
            };
            let mut web = spec(&scope, "web", &["httpd", "-f", "-p", "8080", "-h", "/www"]);
            web.ports.push(PortSpec {
                published,
                target: 8080,
                protocol: Protocol::Tcp,
            });
            let id = runtime.create(&web).await.unwrap();
            runtime.start(&id).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            let body = loop {
                if let Ok(body) = http_get(published).await {
                    break body;
                }
                assert!(
                    Instant::now() < deadline,
                    "nothing answered on port {published}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert!(body.contains("shoal test image"), "{body}");
        })
        .await;
    }

    async fn http_get(port: u16) -> std::io::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
            .await?;
        let mut body = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut body))
            .await
            .map_err(|_| std::io::Error::other("read timed out"))??;
        if body.is_empty() {
            return Err(std::io::Error::other("empty answer"));
        }
        Ok(body)
    }
}
