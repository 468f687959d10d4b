//! The routing mesh and service discovery.
//!
//! Every node listens on every ingress-published port and forwards each
//! connection to a task of the service that takes connections, wherever it
//! runs: to its own containers directly (at their bridge address), to other
//! nodes' containers over the cluster's mutual-TLS QUIC (one stream per
//! connection; that node connects to its container). Every node also
//! answers DNS for `*.shoal`.
//!
//! Decisions are pure: [`table`] (the endpoint table from the state),
//! [`balance`] (which task), [`proxy`] (the PROXY v2 header), [`dns`]'s
//! answers, [`nat`]'s kernel rules. [`feed`] carries the table to every
//! node, [`ingress`] and [`dns`] do the I/O; with `--mesh-forward kernel`
//! [`nat`] also keeps nftables rules that hand the node's own tasks their
//! share of new connections in the kernel.

pub mod balance;
pub mod dns;
pub mod feed;
pub mod ingress;
pub mod nat;
pub mod proxy;
pub mod table;
pub mod udp;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use shoal_net::Connection;
use shoal_raft::{NodeId, TaskId};
use tokio::sync::{watch, Semaphore};

use crate::agent::ContainerRuntime;
use crate::node::Node;
use table::{EndpointTable, FeedVersion, Interest};

/// A node that failed a mesh connection is avoided for this long (unless
/// nothing else is left).
const SUSPECT_FOR: Duration = Duration::from_secs(3);
/// Concurrent mesh streams to one peer (QUIC allows 256 per connection).
const MAX_STREAMS_PER_PEER: usize = 240;

/// Where the mesh and DNS listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// The address published ports are bound on (the node's listen address;
    /// unspecified means every address).
    pub bind_ip: IpAddr,
    /// DNS server addresses; empty disables DNS.
    pub dns: Vec<SocketAddr>,
    /// The DNS addresses are the default ones: where port 53 is taken, a
    /// high port ([`dns::FALLBACK_PORT`]) serves instead.
    pub dns_fallback: bool,
    /// How connections reach this node's own tasks.
    pub forward: Forward,
}

/// How the mesh hands a connection to a task on its own node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Forward {
    /// Through the daemon, which balances, caps and retries each connection.
    #[default]
    Proxy,
    /// By destination NAT in the kernel for the node's share ([`nat`]).
    Kernel,
}

/// The mesh's configuration from the listen IP and `--dns-addr` values
/// (already checked to be `IP:PORT` or `none`).
pub fn config(listen_ip: IpAddr, dns: &[String], forward: Forward) -> MeshConfig {
    let default_ip = if listen_ip.is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        listen_ip
    };
    let (dns, dns_fallback) = if dns.iter().any(|d| d == "none") {
        (Vec::new(), false)
    } else if dns.is_empty() {
        (vec![SocketAddr::new(default_ip, 53)], true)
    } else {
        (dns.iter().filter_map(|d| d.parse().ok()).collect(), false)
    };
    MeshConfig {
        bind_ip: listen_ip,
        dns,
        dns_fallback,
        forward,
    }
}

/// The mesh's state on one node.
pub struct Mesh {
    pub me: NodeId,
    pub config: MeshConfig,
    table: watch::Sender<Arc<EndpointTable>>,
    runtime: OnceLock<Arc<dyn ContainerRuntime>>,
    /// Connections this node has open to each task.
    active: Mutex<BTreeMap<TaskId, u32>>,
    /// Nodes that failed a connection, and when.
    suspect: Mutex<BTreeMap<NodeId, Instant>>,
    turn: AtomicU64,
    /// Bridge addresses of this node's containers, by container id.
    addresses: Mutex<BTreeMap<String, IpAddr>>,
    /// QUIC connections used for mesh streams (apart from the Raft ones,
    /// so client traffic never takes their streams or flow-control window).
    links: Mutex<BTreeMap<NodeId, Connection>>,
    link_streams: Mutex<BTreeMap<NodeId, Arc<Semaphore>>>,
    /// While this node leads: its endpoint tables, encoded once for all
    /// endpoint streams.
    pub published: feed::Published,
    /// The last whole table this node received from a leader.
    followed: Mutex<Option<Followed>>,
    /// The sections the table in use holds.
    holds: Mutex<Interest>,
    /// The sections DNS asked for (at most [`MAX_INTEREST`]); the endpoint
    /// stream is opened again when one is added.
    wanted: watch::Sender<BTreeSet<String>>,
    /// Ports whose connections to this node's own tasks the kernel
    /// forwards ([`nat`]): what reaches the listener is for other nodes.
    kernel_ports: Mutex<BTreeSet<u16>>,
}

/// Most services whose sections a node asks for: past that, DNS answers
/// for others from what every node gets (no task nodes).
pub const MAX_INTEREST: usize = 1_024;

/// A table received from the leader: its name and the sections it holds.
#[derive(Clone)]
pub struct Followed {
    pub version: FeedVersion,
    pub table: Arc<EndpointTable>,
    pub holds: Interest,
}

impl Mesh {
    pub fn new(me: NodeId, config: MeshConfig) -> Arc<Mesh> {
        Arc::new(Mesh {
            me,
            config,
            table: watch::Sender::new(Arc::new(EndpointTable::default())),
            runtime: OnceLock::new(),
            active: Mutex::new(BTreeMap::new()),
            suspect: Mutex::new(BTreeMap::new()),
            turn: AtomicU64::new(0),
            addresses: Mutex::new(BTreeMap::new()),
            links: Mutex::new(BTreeMap::new()),
            link_streams: Mutex::new(BTreeMap::new()),
            published: Default::default(),
            followed: Mutex::new(None),
            holds: Mutex::new(Interest::default()),
            wanted: watch::Sender::new(BTreeSet::new()),
            kernel_ports: Mutex::new(BTreeSet::new()),
        })
    }

    /// The container engine, once the agent has connected to it.
    pub fn set_runtime(&self, runtime: Arc<dyn ContainerRuntime>) {
        let _ = self.runtime.set(runtime);
    }

    pub fn table(&self) -> Arc<EndpointTable> {
        self.table.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<EndpointTable>> {
        self.table.subscribe()
    }

    /// Uses a table received from the leader, and keeps it to name when
    /// the stream is opened again.
    pub fn set_followed(&self, followed: Followed) {
        let table = followed.table.clone();
        let holds = followed.holds.clone();
        *self.followed.lock().unwrap() = Some(followed);
        self.set_shared_table(table, holds);
    }

    /// The last table received from a leader.
    pub fn followed(&self) -> Option<Followed> {
        self.followed.lock().unwrap().clone()
    }

    /// Whether the table in use holds `service`'s section (only services
    /// without published ports have one; the others' task nodes every
    /// node gets).
    pub fn holds(&self, service: &str) -> bool {
        self.holds.lock().unwrap().covers(service)
    }

    /// Asks for `service`'s section; false when [`MAX_INTEREST`] services
    /// are asked for already.
    pub fn want(&self, service: &str) -> bool {
        let mut added = true;
        self.wanted.send_if_modified(|wanted| {
            if wanted.contains(service) {
                return false;
            }
            added = wanted.len() < MAX_INTEREST;
            if added {
                wanted.insert(service.to_string());
            }
            added
        });
        added
    }

    /// The sections DNS asked for, and a receiver that sees new ones.
    pub fn wanted(&self) -> watch::Receiver<BTreeSet<String>> {
        self.wanted.subscribe()
    }

    /// Makes `table`, which holds the sections `holds`, the one the mesh
    /// and DNS work from (shared: the leader's publisher and the follower
    /// keep it too).
    pub fn set_shared_table(&self, table: Arc<EndpointTable>, holds: Interest) {
        let holds_changed = {
            let mut held = self.holds.lock().unwrap();
            let changed = *held != holds;
            *held = holds;
            changed
        };
        self.table.send_if_modified(|current| {
            // A table that now holds more sections wakes those waiting
            // for one, even if they were empty.
            if Arc::ptr_eq(current, &table) || **current == *table {
                return holds_changed;
            }
            // Forget cached addresses of containers that are no longer ours.
            let ours: BTreeSet<&str> = table
                .services
                .values()
                .flat_map(|s| s.backends.iter())
                .filter(|b| b.node_id == self.me)
                .filter_map(|b| b.container_id.as_deref())
                .collect();
            self.addresses
                .lock()
                .unwrap()
                .retain(|id, _| ours.contains(id.as_str()));
            *current = table;
            true
        });
    }

    /// Records the ports the kernel's rules now forward.
    pub fn set_kernel_ports(&self, ports: BTreeSet<u16>) {
        *self.kernel_ports.lock().unwrap() = ports;
    }

    /// Whether the kernel forwards this node's share of connections to
    /// `published` on `local` (the address the client reached): the
    /// connections the listener sees there are the other nodes' share.
    fn kernel_forwards(&self, published: u16, local: IpAddr) -> bool {
        !local.is_loopback() && self.kernel_ports.lock().unwrap().contains(&published)
    }

    fn next_turn(&self) -> u64 {
        self.turn.fetch_add(1, Ordering::Relaxed)
    }

    fn active(&self, task: &str) -> u32 {
        self.active.lock().unwrap().get(task).copied().unwrap_or(0)
    }

    /// Counts a connection to `task` until the guard drops.
    fn track(self: &Arc<Self>, task: &str) -> ActiveGuard {
        *self
            .active
            .lock()
            .unwrap()
            .entry(task.to_string())
            .or_default() += 1;
        ActiveGuard {
            mesh: self.clone(),
            task: task.to_string(),
        }
    }

    fn suspects(&self) -> BTreeSet<NodeId> {
        let mut suspect = self.suspect.lock().unwrap();
        suspect.retain(|_, at| at.elapsed() < SUSPECT_FOR);
        suspect.keys().copied().collect()
    }

    fn mark_suspect(&self, node: NodeId) {
        self.suspect.lock().unwrap().insert(node, Instant::now());
    }

    fn stream_permits(&self, peer: NodeId) -> Arc<Semaphore> {
        self.link_streams
            .lock()
            .unwrap()
            .entry(peer)
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_STREAMS_PER_PEER)))
            .clone()
    }
}

struct ActiveGuard {
    mesh: Arc<Mesh>,
    task: String,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let mut active = self.mesh.active.lock().unwrap();
        if let Some(n) = active.get_mut(&self.task) {
            *n -= 1;
            if *n == 0 {
                active.remove(&self.task);
            }
        }
    }
}

/// The endpoints of `service` in `table`, one per task and published port;
/// `None` when the table has no such service.
pub fn endpoint_views(
    table: &EndpointTable,
    service: &str,
) -> Option<Vec<shoal_cli::api::EndpointView>> {
    let entry = table.services.get(service)?;
    let mut views = Vec::new();
    for backend in &entry.backends {
        let node = table.nodes.get(&backend.node_id);
        for port in &entry.ports {
            let Some(target) = backend.target(port.published, port.protocol) else {
                continue;
            };
            views.push(shoal_cli::api::EndpointView {
                task: backend.task_id.clone(),
                slot: backend.slot,
                node_id: backend.node_id,
                node: node.map(|n| n.name.clone()).unwrap_or_default(),
                address: node
                    .and_then(|n| n.ip())
                    .map(|ip| ip.to_string())
                    .unwrap_or_default(),
                port: port.published,
                target,
                protocol: port.protocol.as_str().to_string(),
                mode: port.mode.as_str().to_string(),
                health: match backend.health {
                    Some(h) => h.as_str().to_string(),
                    None => "none".to_string(),
                },
            });
        }
    }
    Some(views)
}

/// Starts the mesh's loops: the endpoint table's publisher (while this
/// node leads) and feed, the listeners of published ports, and the DNS
/// server.
pub fn start(node: Arc<Node>) {
    tokio::spawn(feed::publish(node.clone()));
    tokio::spawn(feed::follow(node.clone()));
    tokio::spawn(ingress::run_listeners(node.clone()));
    if node.mesh.config.forward == Forward::Kernel {
        tokio::spawn(nat::run(node.clone(), Arc::new(nat::Nft)));
    }
    if !node.mesh.config.dns.is_empty() {
        tokio::spawn(dns::run(node));
    }
}
