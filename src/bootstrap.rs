//! Starting a node: `init` (a new cluster), `join` (an existing one) and
//! `run` (back from the data dir), and the shared start-up of a node's
//! Raft instance, QUIC endpoint, control API and background loops.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use shoal_net::pki::{self, ClusterCa, NodeIdentity, NodeKey};
use shoal_net::pool::Peers;
use shoal_net::token;
use shoal_net::transport::{self, Endpoint, JoinConnectError};
use shoal_raft::{
    CaMaterial, Command, LogStore, NewNode, NodeId, RaftNode, Resources, Role, StateMachineStore,
};

use crate::config::Timing;
use crate::datadir::{DataDir, NodeMeta};
use crate::node::{now_ms, Node, VERSION};
use crate::ops::{role_str, token_label};
use crate::raft_network::Network;
use crate::wire::{JoinAccepted, JoinRequest, LeaderOp, LeaderReply, OpError};

/// What every daemon subcommand is told on the command line.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub data_dir: PathBuf,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub name: Option<String>,
    pub timing: Timing,
    /// `--dns-addr`: `IP:PORT`s or `none`; empty means the default.
    pub dns: Vec<String>,
    /// `--mesh-forward`.
    pub forward: crate::mesh::Forward,
}

const DEFAULT_LISTEN: &str = "0.0.0.0:4500";

/// `shoal init`: a new cluster with this node as its first manager.
pub async fn init(opts: StartOptions) -> Result<()> {
    let dd = DataDir::open(&opts.data_dir)?;
    dd.ensure_fresh()?;
    let (listen, advertise) = addresses(&opts, None)?;
    check_forward(&opts, listen).await?;
    let name = opts.name.clone().unwrap_or_else(hostname);
    crate::ops::validate_name("--name", &name).map_err(|e| anyhow!(e.message))?;

    let cluster_id = format!("{:032x}", rand::random::<u128>());
    let ca = ClusterCa::generate(&cluster_id).context("cannot create the cluster CA")?;
    let key = NodeKey::generate().context("cannot create the node key")?;
    let node_id = 1;
    let cert_pem = ca.issue_node_cert(node_id, &key.public_key_der())?;
    let identity = NodeIdentity {
        node_id,
        cert_pem,
        key_pem: key.to_pem(),
        ca_cert_pem: ca.cert_pem.clone(),
    };
    // Bind first: a taken address must fail before anything is written.
    let endpoint = Endpoint::bind(listen, &identity)?;
    identity.save(&dd.identity_dir())?;
    let meta = NodeMeta::new(
        cluster_id.clone(),
        node_id,
        name.clone(),
        listen.to_string(),
        advertise.clone(),
        vec![(node_id, advertise.clone())],
    );
    let node = start(dd, meta.clone(), endpoint, &opts).await?;

    let members = [(
        node_id,
        RaftNode {
            addr: advertise.clone(),
        },
    )]
    .into_iter()
    .collect::<std::collections::BTreeMap<_, _>>();
    node.raft
        .initialize(members)
        .await
        .context("cannot initialise Raft")?;
    node.raft
        .wait(Some(Duration::from_secs(10)))
        .current_leader(node_id, "the first node to lead")
        .await
        .context("the first node did not become leader")?;
    let token_hash = |role| {
        token::hash_secret(&token::derive_secret(
            ca.key_pem.as_bytes(),
            &token_label(role, 1),
        ))
    };
    node.write(Command::InitCluster {
        cluster_id: cluster_id.clone(),
        ca: CaMaterial {
            cert_pem: ca.cert_pem.clone(),
            key_pem: ca.key_pem.clone(),
        },
        manager_token_hash: token_hash(Role::Manager),
        worker_token_hash: token_hash(Role::Worker),
        first_node: NewNode {
            name: name.clone(),
            addr: advertise.clone(),
            role: Role::Manager,
            resources: host_resources(),
            version: VERSION.to_string(),
            key_fingerprint: pki::key_fingerprint(&key.public_key_der()),
        },
        now_ms: now_ms(),
    })
    .await
    .map_err(|e| anyhow!("cannot record the new cluster: {e}"))?;
    // node.json last: a crash before this leaves a directory that `run`
    // refuses instead of a half-made node.
    node.data_dir.save_meta(&meta)?;

    println!("cluster {cluster_id} initialised; this node is {name} (id {node_id}), listening on {listen}, advertised as {advertise}");
    for role in [Role::Manager, Role::Worker] {
        match node.leader_call(LeaderOp::Token(role)).await {
            Ok(LeaderReply::Token(t)) => {
                println!(
                    "to add a {}, run on the new node:\n    {}",
                    role_str(role),
                    t.join_command
                )
            }
            other => tracing::warn!(?other, "cannot print the join command"),
        }
    }
    serve_until_signal(node).await
}

/// `shoal join`: get an identity from an existing cluster, then run.
pub async fn join(opts: StartOptions, server: String, token_text: String) -> Result<()> {
    let dd = DataDir::open(&opts.data_dir)?;
    dd.ensure_fresh()?;
    let token = token::parse(&token_text).map_err(|e| anyhow!("--token: {e}"))?;
    let (listen, advertise) = addresses(&opts, None)?;
    check_forward(&opts, listen).await?;
    let name = opts.name.clone().unwrap_or_else(hostname);
    crate::ops::validate_name("--name", &name).map_err(|e| anyhow!(e.message))?;
    // Fail on a taken port before the cluster registers this node.
    drop(std::net::UdpSocket::bind(listen).map_err(|e| listen_error(listen, e))?);

    let key = NodeKey::generate().context("cannot create the node key")?;
    let request = JoinRequest {
        secret: token.secret.clone(),
        name: name.clone(),
        addr: advertise.clone(),
        public_key_der: key.public_key_der(),
        resources: host_resources(),
        version: VERSION.to_string(),
    };
    let within = opts.timing.join_timeout;
    let accepted = tokio::time::timeout(within, ask_to_join(&server, &token, &request, within))
        .await
        .map_err(|_| {
            anyhow!(
                "join failed: no answer from {server} within {}s",
                within.as_secs()
            )
        })??;

    // Check what the cluster sent (id, key match, chain) before keeping it.
    let identity = NodeIdentity::from_parts(&key, accepted.cert_pem, accepted.ca_cert_pem)
        .context("the cluster sent an unusable certificate")?;
    if identity.node_id != accepted.node_id {
        bail!(
            "the cluster assigned node id {} but the certificate names node {}",
            accepted.node_id,
            identity.node_id
        );
    }
    let endpoint = Endpoint::bind(listen, &identity)?;
    identity.save(&dd.identity_dir())?;
    let meta = NodeMeta::new(
        accepted.cluster_id.clone(),
        accepted.node_id,
        name.clone(),
        listen.to_string(),
        advertise.clone(),
        accepted.managers.clone(),
    );
    dd.save_meta(&meta)?;
    println!(
        "joined cluster {} as node {} ({name}), a {}",
        accepted.cluster_id,
        accepted.node_id,
        role_str(accepted.role)
    );
    let node = start(dd, meta, endpoint, &opts).await?;
    serve_until_signal(node).await
}

async fn ask_to_join(
    server: &str,
    token: &token::JoinToken,
    request: &JoinRequest,
    within: Duration,
) -> Result<JoinAccepted> {
    let addr = crate::node::resolve(server)
        .await
        .map_err(|e| anyhow!("join failed: cannot resolve {server}: {e}"))?;
    let conn = transport::connect_for_join(addr, &token.fingerprint, within)
        .await
        .map_err(|e| match e {
            JoinConnectError::FingerprintMismatch => anyhow!(
                "join refused: the CA of {server} does not match the token's fingerprint (wrong token, or a man in the middle)"
            ),
            other => anyhow!("join failed: {other}"),
        })?;
    let reply: Result<JoinAccepted, OpError> = transport::call(&conn, request, within)
        .await
        .map_err(|e| anyhow!("join failed: {server} did not answer the join request: {e}"))?;
    conn.close(0u32.into(), b"joined");
    reply.map_err(|e| anyhow!("join refused: {e}"))
}

/// `shoal run`: bring a node back from its data dir. With
/// `force_new_cluster`, first make this manager the only one of its cluster
/// (see [`recover`]).
pub async fn run(opts: StartOptions, force_new_cluster: bool) -> Result<()> {
    let dd = DataDir::open(&opts.data_dir)?;
    let mut meta = dd.load_meta()?;
    let identity = NodeIdentity::load(&dd.identity_dir()).with_context(|| {
        format!(
            "cannot load the node identity from {}",
            dd.identity_dir().display()
        )
    })?;
    if identity.node_id != meta.node_id {
        bail!(
            "{} is inconsistent: node.json says node {} but the certificate names node {}",
            dd.root().display(),
            meta.node_id,
            identity.node_id
        );
    }
    let (listen, advertise) = addresses(&opts, Some(&meta))?;
    check_forward(&opts, listen).await?;
    if listen.to_string() != meta.listen || advertise != meta.advertise {
        meta.listen = listen.to_string();
        meta.advertise = advertise;
        dd.save_meta(&meta)?;
    }
    let endpoint = Endpoint::bind(listen, &identity)?;
    if !force_new_cluster {
        let node = start(dd, meta, endpoint, &opts).await?;
        return serve_until_signal(node).await;
    }
    let stores = open_stores(&dd).await?;
    recover(&meta, &endpoint, &stores, opts.timing.connect_timeout).await?;
    meta.managers = vec![(meta.node_id, meta.advertise.clone())];
    dd.save_meta(&meta)?;
    let id = meta.node_id;
    let node = start_on(dd, meta, endpoint, &opts, stores).await?;
    // Leading, with an entry of its own term applied: the recovery is in the state.
    let leads = move |m: &shoal_raft::types::RaftMetrics| {
        m.current_leader == Some(id)
            && m.last_applied
                .is_some_and(|applied| applied.leader_id.term == m.current_term)
    };
    let raft = node.raft.clone();
    tokio::spawn(async move {
        let within = Some(Duration::from_secs(30));
        match raft.wait(within).metrics(leads, "leading").await {
            Ok(_) => tracing::warn!(
                node = id,
                "quorum-loss recovery done: this node leads a one-manager cluster; add managers with `shoal join` and the manager token (`shoal token show manager`)"
            ),
            Err(e) => tracing::error!(node = id, error = %e, "the recovered node has not become leader yet"),
        }
    });
    serve_until_signal(node).await
}

/// `--force-new-cluster`: the quorum is lost for good (a majority of the
/// managers are gone), and this manager's store is what is left. Checks that
/// recovering makes sense (see [`shoal_raft::store::plan_recovery`]) and that
/// none of the other managers answers (forcing a cluster that still has them
/// would make two), then writes the recovery into the log before Raft starts,
/// saying loudly what it does.
async fn recover(
    meta: &NodeMeta,
    endpoint: &Endpoint,
    (log, sm): &(LogStore, StateMachineStore),
    connect_timeout: Duration,
) -> Result<()> {
    let plan = shoal_raft::store::plan_recovery(log, sm, meta.node_id)
        .await
        .context("--force-new-cluster refused")?;
    let others: Vec<(NodeId, String)> = plan
        .previous
        .nodes()
        .filter(|(id, _)| **id != meta.node_id)
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect();
    let alive = futures::future::join_all(others.iter().map(|(id, addr)| async move {
        let answered = match crate::node::resolve(addr).await {
            Ok(sock) => endpoint.connect(sock, *id, connect_timeout).await.ok(),
            Err(_) => None,
        };
        answered.map(|conn| {
            conn.close(0u32.into(), b"recovery check");
            format!("node {id} at {addr}")
        })
    }))
    .await;
    let alive: Vec<String> = alive.into_iter().flatten().collect();
    if !alive.is_empty() {
        bail!(
            "--force-new-cluster refused: {} still answer{}, so the cluster has not lost them; a new cluster beside them would be a second one. Stop them for good (or run the recovery on one of them), or restart this node with `shoal run`",
            alive.join(", "),
            if alive.len() == 1 { "s" } else { "" }
        );
    }
    let voters: Vec<String> = plan.previous.voter_ids().map(|id| id.to_string()).collect();
    let lost: Vec<String> = plan
        .lost_managers
        .iter()
        .map(|(id, name)| format!("{name} (id {id})"))
        .collect();
    tracing::warn!(
        node = meta.node_id,
        previous_voters = %voters.join(", "),
        term = plan.term,
        uncommitted_entries = plan.uncommitted,
        "FORCING A NEW CLUSTER: this manager becomes the only voter, from the state in its own log; none of the other managers answered within {}s",
        connect_timeout.as_secs()
    );
    if plan.uncommitted > 0 {
        tracing::warn!(
            entries = plan.uncommitted,
            "the last {} log entries of this node were not known committed here (a quorum may or may not have taken them); the recovery commits them",
            plan.uncommitted
        );
    }
    let ids = shoal_raft::store::write_recovery(log, &plan, meta.advertise.clone(), now_ms())
        .await
        .context("--force-new-cluster: cannot write the recovery into the Raft log")?;
    tracing::warn!(
        membership_entry = %ids[0],
        removed = %if lost.is_empty() { "none".to_string() } else { lost.join(", ") },
        "recovery written: Raft membership is this node alone; the other managers are removed from the cluster state and their tasks will be placed on live nodes. Never restart the removed managers from their old data dirs: wipe them and join them again"
    );
    Ok(())
}

type Stores = (LogStore, StateMachineStore);

async fn open_stores(dd: &DataDir) -> Result<Stores> {
    shoal_raft::store::open(&dd.raft_path())
        .await
        .with_context(|| format!("cannot open {}", dd.raft_path().display()))
}

/// Builds the node and starts its loops: peer server, leader loop,
/// heartbeats, control API.
async fn start(
    dd: DataDir,
    meta: NodeMeta,
    endpoint: Endpoint,
    opts: &StartOptions,
) -> Result<Arc<Node>> {
    let stores = open_stores(&dd).await?;
    start_on(dd, meta, endpoint, opts, stores).await
}

/// [`start`] on stores already open.
async fn start_on(
    dd: DataDir,
    meta: NodeMeta,
    endpoint: Endpoint,
    opts: &StartOptions,
    (log_store, sm_store): Stores,
) -> Result<Arc<Node>> {
    let timing = opts.timing.clone();
    let mesh_config = crate::mesh::config(endpoint.local_addr().ip(), &opts.dns, opts.forward);
    let state = sm_store.state();
    let config = Arc::new(timing.raft_config(&meta.cluster_id)?);
    let network = Network {
        node: Arc::new(OnceLock::new()),
    };
    let raft = shoal_raft::Raft::new(meta.node_id, config, network.clone(), log_store, sm_store)
        .await
        .context("cannot start Raft")?;
    let peers = Peers::new(endpoint.clone(), timing.connect_timeout);
    let socket = dd.socket_path();
    let (proposer, proposals) = tokio::sync::mpsc::channel(crate::node::PROPOSAL_QUEUE);
    tokio::spawn(crate::node::run_proposer(
        raft.clone(),
        proposals,
        timing.commit_timeout,
    ));
    let node = Arc::new(Node {
        id: meta.node_id,
        cluster_id: meta.cluster_id.clone(),
        name: meta.name.clone(),
        advertise: meta.advertise.clone(),
        timing,
        raft,
        state,
        endpoint,
        peers,
        data_dir: dd,
        liveness: Mutex::new(Default::default()),
        leader_hint: Mutex::new(None),
        known_managers: Mutex::new(meta.managers.clone()),
        proposer,
        engine_error: Mutex::new(None),
        service_writes: tokio::sync::Mutex::new(()),
        mesh: crate::mesh::Mesh::new(meta.node_id, mesh_config),
        dispatch: Default::default(),
    });
    let _ = network.node.set(Arc::downgrade(&node));

    tokio::spawn(crate::peer_server::run(node.clone()));
    tokio::spawn(crate::leader::run(node.clone()));
    tokio::spawn(crate::heartbeat::run(node.clone()));
    tokio::spawn(run_agent(node.clone()));
    crate::mesh::start(node.clone());
    let listener = crate::api_server::bind(&socket).await?;
    let api_node = node.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::api_server::serve(api_node, listener).await {
            tracing::error!(error = %e, "control API stopped");
        }
    });
    tracing::info!(
        node = node.id,
        name = %node.name,
        cluster = %node.cluster_id,
        addr = %node.endpoint.local_addr(),
        socket = %socket.display(),
        "node started"
    );
    Ok(node)
}

/// Connects to the local Docker engine (retrying until it answers) and runs
/// the agent loop on it.
async fn run_agent(node: Arc<Node>) {
    // A test seam: an in-memory engine holding the listed images, for fast
    // tests of the control plane without Docker.
    if let Ok(images) = std::env::var("SHOAL_FAKE_RUNTIME") {
        let fake = crate::agent::fake::FakeRuntime::new();
        for image in images.split(',').filter(|i| !i.is_empty()) {
            fake.add_image(image);
        }
        // Where the fake's "containers" are reached by the mesh (a test
        // serves their ports there).
        if let Ok(ip) = std::env::var("SHOAL_FAKE_ADDRESS") {
            fake.set_address(ip.parse().ok());
        }
        tracing::warn!("SHOAL_FAKE_RUNTIME is set: tasks run in an in-memory fake engine");
        let fake: Arc<dyn crate::agent::ContainerRuntime> = Arc::new(fake);
        node.mesh.set_runtime(fake.clone());
        crate::agent::driver::run(node, fake).await;
        return;
    }
    let mut warned = false;
    let runtime = loop {
        match crate::agent::DockerRuntime::connect().await {
            Ok(rt) => break rt,
            Err(e) => {
                node.set_engine_error(Some(e.to_string()));
                if !warned {
                    tracing::error!(error = %e, "the Docker engine is unreachable: this node runs no tasks until it answers");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    node.set_engine_error(None);
    tracing::info!(api = %runtime.api_version(), "connected to the Docker engine");
    let runtime: Arc<dyn crate::agent::ContainerRuntime> = Arc::new(runtime);
    node.mesh.set_runtime(runtime.clone());
    crate::agent::driver::run(node, runtime).await;
}

async fn serve_until_signal(node: Arc<Node>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    if node.mesh.config.forward == crate::mesh::Forward::Kernel {
        crate::mesh::nat::clear(node.id, &crate::mesh::nat::Nft).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), node.raft.shutdown()).await;
    node.endpoint.close();
    let _ = std::fs::remove_file(node.data_dir.socket_path());
    Ok(())
}

/// Refuses `--mesh-forward kernel` where it cannot work, before anything
/// is written.
async fn check_forward(opts: &StartOptions, listen: SocketAddr) -> Result<()> {
    if opts.forward == crate::mesh::Forward::Kernel {
        crate::mesh::nat::check(listen.ip(), &crate::mesh::nat::Nft)
            .await
            .map_err(|e| anyhow!(e))?;
    }
    Ok(())
}

/// The listen socket address and the advertised `host:port`.
fn addresses(opts: &StartOptions, saved: Option<&NodeMeta>) -> Result<(SocketAddr, String)> {
    let listen_text = opts
        .listen
        .clone()
        .or_else(|| saved.map(|m| m.listen.clone()))
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        anyhow!("--listen: {listen_text:?} is not an address; allowed: IP:PORT, e.g. 10.0.0.1:4500")
    })?;
    if listen.port() == 0 {
        bail!(
            "--listen: port 0 is not allowed: peers must know the port; e.g. {}:4500",
            listen.ip()
        );
    }
    let advertise = match opts.advertise.clone().or_else(|| saved.map(|m| m.advertise.clone())) {
        Some(a) => a,
        None if listen.ip().is_unspecified() => bail!(
            "--advertise-addr is required when listening on {listen}: other nodes need an address they can reach, e.g. --advertise-addr 10.0.0.1:{}",
            listen.port()
        ),
        None => listen.to_string(),
    };
    Ok((listen, advertise))
}

fn listen_error(listen: SocketAddr, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        anyhow!("--listen: address {listen} is already in use (is another shoal running?)")
    } else {
        anyhow!("--listen: cannot bind {listen}: {e}")
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".to_string())
}

/// CPUs and memory of this host, as the scheduler will see them.
pub fn host_resources() -> Resources {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    Resources {
        nano_cpus: cpus * 1_000_000_000,
        memory_bytes,
    }
}
