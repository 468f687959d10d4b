//! `FakeRuntime`: an in-memory container engine for fast tests and for
//! simulating many nodes in one process. Deterministic: container ids come
//! from a counter and timestamps from a logical clock; the only waiting is
//! the configurable start delay.
//!
//! Test controls: images present or pullable, the engine made unavailable
//! (calls fail and event streams end, like a dockerd restart), containers
//! killed, OOM-killed or given a health status, each emitting the events the
//! real engine would.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use tokio::sync::broadcast;

use super::runtime::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ContainerState, EventStream, Health,
    RuntimeError, RuntimeEvent, RuntimeEventKind, Scope, LABEL_TASK,
};

/// Events buffered per subscriber; a subscriber that falls further behind
/// sees its stream end and must list again, as after an engine restart.
const EVENT_BUFFER: usize = 1024;

/// Exit code of a process ended by SIGTERM (128 + 15).
const EXIT_SIGTERM: i64 = 143;
/// Exit code of a process ended by SIGKILL (128 + 9).
const EXIT_SIGKILL: i64 = 137;

/// How many times each operation was called; for assertions on what an
/// executor did (e.g. "no pull happened").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FakeCalls {
    pub lists: u64,
    pub pulls: u64,
    pub creates: u64,
    pub starts: u64,
    pub stops: u64,
    pub removes: u64,
    /// Event subscriptions opened (`events` calls that succeeded).
    pub subscriptions: u64,
    /// Calls of any kind refused because the engine was unavailable: how
    /// hard a client hammers an engine that is down.
    pub refused: u64,
}

struct FakeContainer {
    info: ContainerInfo,
    spec: ContainerSpec,
}

/// An event with the container's labels, so subscribers can filter by scope.
#[derive(Clone)]
struct ScopedEvent {
    labels: BTreeMap<String, String>,
    event: RuntimeEvent,
}

struct FakeState {
    containers: BTreeMap<String, FakeContainer>,
    images: BTreeSet<String>,
    pullable: BTreeSet<String>,
    available: bool,
    next_id: u64,
    clock: u64,
    start_delay: Duration,
    stop_delay: Duration,
    events: broadcast::Sender<ScopedEvent>,
    calls: FakeCalls,
    /// What `address` reports for running containers.
    address: Option<std::net::IpAddr>,
}

impl FakeState {
    fn check_available(&mut self) -> Result<(), RuntimeError> {
        if self.available {
            Ok(())
        } else {
            self.calls.refused += 1;
            Err(RuntimeError::Unavailable {
                detail: "the fake engine was made unavailable".to_string(),
            })
        }
    }

    fn tick(&mut self) -> String {
        self.clock += 1;
        format!("fake-t{}", self.clock)
    }

    fn container_mut(&mut self, id: &str) -> Result<&mut FakeContainer, RuntimeError> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound {
                what: format!("container {id}"),
            })
    }

    fn emit(&self, id: &str, kind: RuntimeEventKind) {
        let Some(container) = self.containers.get(id) else {
            return;
        };
        let labels = container.info.labels.clone();
        let event = RuntimeEvent {
            container_id: id.to_string(),
            task_id: labels.get(LABEL_TASK).cloned(),
            kind,
        };
        // No subscribers is not an error: nobody is watching yet.
        let _ = self.events.send(ScopedEvent { labels, event });
    }

    /// Ends a live container's process with `exit_code` and emits `die`.
    fn exit(&mut self, id: &str, exit_code: i64, oom: bool) -> Result<(), RuntimeError> {
        let finished_at = self.tick();
        let container = self.container_mut(id)?;
        if !container.info.state.is_live() {
            return Ok(());
        }
        container.info.state = ContainerState::Exited;
        container.info.exit_code = Some(exit_code);
        container.info.oom_killed = oom;
        container.info.health = None;
        container.info.finished_at = finished_at;
        if oom {
            self.emit(id, RuntimeEventKind::Oom);
        }
        self.emit(
            id,
            RuntimeEventKind::Die {
                exit_code: Some(exit_code),
            },
        );
        Ok(())
    }
}

/// In-memory [`ContainerRuntime`].
pub struct FakeRuntime {
    state: Mutex<FakeState>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeRuntime {
    /// An available engine with no images and no start delay.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        FakeRuntime {
            state: Mutex::new(FakeState {
                containers: BTreeMap::new(),
                images: BTreeSet::new(),
                pullable: BTreeSet::new(),
                available: true,
                next_id: 0,
                clock: 0,
                start_delay: Duration::ZERO,
                stop_delay: Duration::ZERO,
                events,
                calls: FakeCalls::default(),
                address: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A panic while holding the lock is a bug in a test; the state is
        // still usable for the assertions that follow.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes an image present locally.
    pub fn add_image(&self, image: &str) {
        self.lock().images.insert(normalize_image(image));
    }

    /// Makes an image missing locally (it stays pullable if it was).
    pub fn remove_image(&self, image: &str) {
        self.lock().images.remove(&normalize_image(image));
    }

    /// Makes an image available from the (simulated) registry.
    pub fn add_pullable(&self, image: &str) {
        self.lock().pullable.insert(normalize_image(image));
    }

    /// How long a stopped process takes to exit (a long grace period).
    pub fn set_stop_delay(&self, delay: Duration) {
        self.lock().stop_delay = delay;
    }

    /// The address every running container reports (e.g. a loopback address
    /// where a test serves the "container's" port); none by default.
    pub fn set_address(&self, address: Option<std::net::IpAddr>) {
        self.lock().address = address;
    }

    pub fn set_start_delay(&self, delay: Duration) {
        self.lock().start_delay = delay;
    }

    /// Unavailable: every call fails with `Unavailable` and open event
    /// streams end. Available again: new event streams can be opened.
    pub fn set_available(&self, available: bool) {
        let mut state = self.lock();
        state.available = available;
        if !available {
            // Dropping the sender ends every subscriber's stream.
            state.events = broadcast::channel(EVENT_BUFFER).0;
        }
    }

    /// Ends a live container's process with `exit_code`, as `docker kill`
    /// or a crash would; emits `die`.
    pub fn kill(&self, id: &str, exit_code: i64) -> Result<(), RuntimeError> {
        self.lock().exit(id, exit_code, false)
    }

    /// Kills a live container for exceeding its memory limit; emits `oom`
    /// then `die` with exit code 137.
    pub fn oom_kill(&self, id: &str) -> Result<(), RuntimeError> {
        self.lock().exit(id, EXIT_SIGKILL, true)
    }

    /// Sets a container's health status; emits `health_status`.
    pub fn set_health(&self, id: &str, health: Health) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        state.container_mut(id)?.info.health = Some(health);
        state.emit(id, RuntimeEventKind::HealthStatus(health));
        Ok(())
    }

    /// Every container, whatever its labels, in id order.
    pub fn containers(&self) -> Vec<ContainerInfo> {
        let state = self.lock();
        state.containers.values().map(|c| c.info.clone()).collect()
    }

    /// The spec a container was created from.
    pub fn spec(&self, id: &str) -> Option<ContainerSpec> {
        self.lock().containers.get(id).map(|c| c.spec.clone())
    }

    pub fn calls(&self) -> FakeCalls {
        self.lock().calls
    }
}

/// `name` and `name:latest` are the same image, as for the real engine.
fn normalize_image(image: &str) -> String {
    let last_segment = image.rsplit('/').next().unwrap_or(image);
    if last_segment.contains(':') || image.contains('@') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

impl ContainerRuntime for FakeRuntime {
    fn ping(&self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move { self.lock().check_available() })
    }

    fn list<'a>(
        &'a self,
        cluster_id: &'a str,
        node_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ContainerInfo>, RuntimeError>> {
        Box::pin(async move {
            let mut state = self.lock();
            state.check_available()?;
            state.calls.lists += 1;
            let scope = Scope::new(cluster_id, node_id);
            Ok(state
                .containers
                .values()
                .filter(|c| scope.contains(&c.info.labels))
                .map(|c| c.info.clone())
                .collect())
        })
    }

    fn image_present<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<bool, RuntimeError>> {
        Box::pin(async move {
            let mut state = self.lock();
            state.check_available()?;
            Ok(state.images.contains(&normalize_image(image)))
        })
    }

    fn pull<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let mut state = self.lock();
            state.check_available()?;
            state.calls.pulls += 1;
            let image = normalize_image(image);
            if state.pullable.contains(&image) {
                state.images.insert(image);
                Ok(())
            } else {
                Err(RuntimeError::ImageMissing {
                    detail: format!(
                        "pull access denied for {image}: the fake registry does not have it"
                    ),
                    image,
                })
            }
        })
    }

    fn create<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> BoxFuture<'a, Result<String, RuntimeError>> {
        Box::pin(async move {
            let mut state = self.lock();
            state.check_available()?;
            state.calls.creates += 1;
            let image = normalize_image(&spec.image);
            if !state.images.contains(&image) {
                return Err(RuntimeError::ImageMissing {
                    detail: format!("No such image: {image}"),
                    image: spec.image.clone(),
                });
            }
            if state.containers.values().any(|c| c.info.name == spec.name) {
                return Err(RuntimeError::Conflict {
                    detail: format!("the container name {:?} is already in use", spec.name),
                });
            }
            state.next_id += 1;
            let id = format!("{:064x}", state.next_id);
            let info = ContainerInfo {
                id: id.clone(),
                name: spec.name.clone(),
                image: spec.image.clone(),
                labels: spec.labels.clone(),
                state: ContainerState::Created,
                exit_code: None,
                oom_killed: false,
                health: None,
                error: String::new(),
                started_at: String::new(),
                finished_at: String::new(),
                stop_grace: Some(spec.stop_grace),
                stop_signal: spec.stop_signal.clone(),
            };
            state.containers.insert(
                id.clone(),
                FakeContainer {
                    info,
                    spec: spec.clone(),
                },
            );
            Ok(id)
        })
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let delay = {
                let mut state = self.lock();
                state.check_available()?;
                state.calls.starts += 1;
                state.container_mut(id)?;
                state.start_delay
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let mut state = self.lock();
            state.check_available()?;
            let container = state
                .containers
                .get(id)
                .ok_or_else(|| RuntimeError::NotFound {
                    what: format!("container {id}"),
                })?;
            if container.info.state == ContainerState::Running {
                return Ok(());
            }
            let wanted = container.spec.ports.clone();
            let taken = state.containers.values().any(|other| {
                other.info.id != id
                    && other.info.state.is_live()
                    && other.spec.ports.iter().any(|p| {
                        wanted
                            .iter()
                            .any(|w| w.published == p.published && w.protocol == p.protocol)
                    })
            });
            if taken {
                let detail =
                    "driver failed programming external connectivity: port is already allocated";
                state.container_mut(id)?.info.error = detail.to_string();
                return Err(RuntimeError::Other {
                    detail: detail.to_string(),
                });
            }
            let started_at = state.tick();
            let container = state.container_mut(id)?;
            container.info.state = ContainerState::Running;
            container.info.exit_code = None;
            container.info.error.clear();
            container.info.started_at = started_at;
            container.info.finished_at.clear();
            // A container with a health check starts unproven, as in Docker
            // (the fake has no images with checks of their own).
            let checked = container
                .spec
                .healthcheck
                .as_ref()
                .is_some_and(|check| !check.is_disabled());
            container.info.health = checked.then_some(Health::Starting);
            state.emit(id, RuntimeEventKind::Start);
            Ok(())
        })
    }

    fn stop<'a>(
        &'a self,
        id: &'a str,
        _grace: Duration,
        _signal: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let delay = {
                let mut state = self.lock();
                state.check_available()?;
                state.calls.stops += 1;
                state.stop_delay
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            // Fake processes honour the stop signal (after the delay).
            self.lock().exit(id, EXIT_SIGTERM, false)
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let mut state = self.lock();
            state.check_available()?;
            state.calls.removes += 1;
            // Force: a live container is killed first.
            state.exit(id, EXIT_SIGKILL, false)?;
            state.emit(id, RuntimeEventKind::Destroy);
            state.containers.remove(id);
            Ok(())
        })
    }

    fn inspect<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ContainerInfo, RuntimeError>> {
        Box::pin(async move {
            let mut state = self.lock();
            state.check_available()?;
            Ok(state.container_mut(id)?.info.clone())
        })
    }

    fn address<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<std::net::IpAddr>, RuntimeError>> {
        Box::pin(async move {
            let mut state = self.lock();
            state.check_available()?;
            let address = state.address;
            let container = state.container_mut(id)?;
            Ok(address.filter(|_| container.info.state == ContainerState::Running))
        })
    }

    fn events<'a>(
        &'a self,
        cluster_id: &'a str,
        node_id: &'a str,
    ) -> BoxFuture<'a, Result<EventStream, RuntimeError>> {
        Box::pin(async move {
            let receiver = {
                let mut state = self.lock();
                state.check_available()?;
                state.calls.subscriptions += 1;
                state.events.subscribe()
            };
            let scope = Scope::new(cluster_id, node_id);
            let events = stream::unfold(receiver, |mut receiver| async move {
                // Lagging or closed both end the stream: the consumer lists
                // again, which recovers whatever was missed.
                let event = receiver.recv().await.ok()?;
                Some((event, receiver))
            })
            .filter_map(move |scoped| {
                let inside = scope.contains(&scoped.labels);
                async move { inside.then_some(Ok(scoped.event)) }
            });
            Ok(events.boxed())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::runtime::{PortSpec, Protocol, LABEL_CLUSTER, LABEL_NODE};

    fn spec(name: &str, node: &str) -> ContainerSpec {
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_CLUSTER.to_string(), "c".to_string());
        labels.insert(LABEL_NODE.to_string(), node.to_string());
        labels.insert(LABEL_TASK.to_string(), format!("task-{name}"));
        ContainerSpec {
            name: name.to_string(),
            image: "img".to_string(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
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

    #[tokio::test]
    async fn lifecycle_and_scope() {
        let fake = FakeRuntime::new();
        fake.add_image("img:latest");
        let a = fake.create(&spec("a", "1")).await.unwrap();
        let b = fake.create(&spec("b", "2")).await.unwrap();
        fake.start(&a).await.unwrap();
        let listed = fake.list("c", "1").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, a);
        assert_eq!(listed[0].state, ContainerState::Running);
        assert!(fake.list("other", "1").await.unwrap().is_empty());
        assert_eq!(
            fake.inspect(&b).await.unwrap().state,
            ContainerState::Created
        );

        fake.stop(&a, Duration::from_secs(1), None).await.unwrap();
        let stopped = fake.inspect(&a).await.unwrap();
        assert_eq!(stopped.state, ContainerState::Exited);
        assert_eq!(stopped.exit_code, Some(EXIT_SIGTERM));
        fake.remove(&a).await.unwrap();
        assert!(matches!(
            fake.inspect(&a).await,
            Err(RuntimeError::NotFound { .. })
        ));
        let calls = fake.calls();
        assert_eq!(
            (calls.creates, calls.starts, calls.stops, calls.removes),
            (2, 1, 1, 1)
        );
    }

    #[tokio::test]
    async fn missing_images_and_names_in_use_are_refused() {
        let fake = FakeRuntime::new();
        assert!(!fake.image_present("img").await.unwrap());
        assert!(matches!(
            fake.create(&spec("a", "1")).await,
            Err(RuntimeError::ImageMissing { .. })
        ));
        assert!(matches!(
            fake.pull("img").await,
            Err(RuntimeError::ImageMissing { .. })
        ));
        fake.add_pullable("img");
        fake.pull("img").await.unwrap();
        assert!(fake.image_present("img:latest").await.unwrap());
        fake.create(&spec("a", "1")).await.unwrap();
        assert!(matches!(
            fake.create(&spec("a", "1")).await,
            Err(RuntimeError::Conflict { .. })
        ));
    }

    #[tokio::test]
    async fn published_port_in_use_fails_the_second_start() {
        let fake = FakeRuntime::new();
        fake.add_image("img");
        let port = PortSpec {
            published: 8080,
            target: 80,
            protocol: Protocol::Tcp,
        };
        let mut first = spec("a", "1");
        first.ports.push(port);
        let mut second = spec("b", "1");
        second.ports.push(port);
        let a = fake.create(&first).await.unwrap();
        let b = fake.create(&second).await.unwrap();
        fake.start(&a).await.unwrap();
        assert!(matches!(
            fake.start(&b).await,
            Err(RuntimeError::Other { .. })
        ));
        assert!(!fake.inspect(&b).await.unwrap().error.is_empty());
    }

    #[tokio::test]
    async fn events_report_scoped_lifecycle_and_end_when_unavailable() {
        let fake = FakeRuntime::new();
        fake.add_image("img");
        let mut events = fake.events("c", "1").await.unwrap();
        let other = fake.create(&spec("x", "2")).await.unwrap();
        fake.start(&other).await.unwrap();
        let a = fake.create(&spec("a", "1")).await.unwrap();
        fake.start(&a).await.unwrap();
        fake.set_health(&a, Health::Unhealthy).unwrap();
        fake.oom_kill(&a).unwrap();
        fake.remove(&a).await.unwrap();
        let mut kinds = Vec::new();
        for _ in 0..5 {
            let event = events.next().await.unwrap().unwrap();
            assert_eq!(event.container_id, a);
            assert_eq!(event.task_id.as_deref(), Some("task-a"));
            kinds.push(event.kind);
        }
        assert_eq!(
            kinds,
            [
                RuntimeEventKind::Start,
                RuntimeEventKind::HealthStatus(Health::Unhealthy),
                RuntimeEventKind::Oom,
                RuntimeEventKind::Die {
                    exit_code: Some(EXIT_SIGKILL)
                },
                RuntimeEventKind::Destroy,
            ]
        );
        fake.set_available(false);
        assert!(events.next().await.is_none());
        assert!(matches!(
            fake.list("c", "1").await,
            Err(RuntimeError::Unavailable { .. })
        ));
        fake.set_available(true);
        fake.ping().await.unwrap();
    }

    #[tokio::test]
    async fn start_waits_for_the_configured_delay() {
        let fake = FakeRuntime::new();
        fake.add_image("img");
        fake.set_start_delay(Duration::from_millis(50));
        let a = fake.create(&spec("a", "1")).await.unwrap();
        let before = std::time::Instant::now();
        fake.start(&a).await.unwrap();
        assert!(before.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn image_names_default_to_latest() {
        assert_eq!(normalize_image("img"), "img:latest");
        assert_eq!(normalize_image("img:1"), "img:1");
        assert_eq!(normalize_image("host:5000/img"), "host:5000/img:latest");
        assert_eq!(normalize_image("img@sha256:ab"), "img@sha256:ab");
    }
}
