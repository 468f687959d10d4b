//! The mesh's I/O: a listener per ingress-published port, each connection
//! balanced to a task, spliced to the task's container directly (local
//! task) or over a QUIC stream to the task's node (remote task), and the
//! serving side of such streams.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_net::{codec, RecvStream, SendStream};
use shoal_raft::{NodeId, PortSpec, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::balance::{choose, Avoid, Candidate};
use super::table::{ingress_ports, Backend};
use super::{proxy, Mesh};
use crate::node::{resolve, Node};
use crate::wire::{MeshConnect, MeshReply, PeerRequest};

/// Most connections one published port carries at once on this node.
pub const MAX_CONNS_PER_PORT: usize = 10_000;
/// Most connections this node sends to one task at once.
pub const MAX_CONNS_PER_BACKEND: u32 = 2_000;
/// A connection with no bytes either way for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Connecting to a container (and the address lookup before it). Longer
/// than the kernel's first SYN retransmission (1 s), so a connection whose
/// first SYN a busy backend dropped (full accept backlog) still gets in.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Opening a QUIC link or stream to a peer, and its answer (which waits
/// for the peer's own connect to its container).
const REMOTE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the task's node waits for its own table to list a task a peer
/// already routes to (the two tables follow the leader independently).
const TABLE_CATCH_UP: Duration = Duration::from_millis(500);
/// Bytes buffered per direction of a connection: the bound on what a slow
/// reader makes the mesh hold.
const BUFFER_BYTES: usize = 32 * 1024;
/// Largest [`MeshReply`] frame accepted.
const MAX_REPLY_BYTES: usize = 4 * 1024;
/// How often ports that could not be bound are tried again.
const REBIND_EVERY: Duration = Duration::from_secs(2);

/// Keeps one listener per ingress port of the endpoint table.
pub async fn run_listeners(node: Arc<Node>) {
    let mut tables = node.mesh.subscribe();
    let mut open: BTreeMap<(u16, Protocol), (String, JoinHandle<()>)> = BTreeMap::new();
    let mut failed: BTreeSet<(u16, Protocol)> = BTreeSet::new();
    loop {
        let table = tables.borrow_and_update().clone();
        let (wanted, conflicts) = ingress_ports(&table);
        for (service, port) in conflicts {
            tracing::debug!(
                service,
                port = port.published,
                "port already published by another service; not served for this one"
            );
        }
        open.retain(|key, (service, handle)| {
            let keep = wanted.get(key).is_some_and(|(s, _)| s == service);
            if !keep {
                handle.abort();
                tracing::info!(port = key.0, protocol = %key.1, "stopped listening");
            }
            keep
        });
        failed.retain(|key| wanted.contains_key(key));
        for (key, (service, port)) in &wanted {
            if open.contains_key(key) {
                continue;
            }
            let addr = SocketAddr::new(node.mesh.config.bind_ip, key.0);
            let handle = match key.1 {
                Protocol::Tcp => TcpListener::bind(addr).await.map(|listener| {
                    tokio::spawn(accept_tcp(node.clone(), listener, service.clone(), *port))
                }),
                Protocol::Udp => tokio::net::UdpSocket::bind(addr).await.map(|socket| {
                    tokio::spawn(super::udp::serve(
                        node.clone(),
                        socket,
                        service.clone(),
                        *port,
                    ))
                }),
            };
            match handle {
                Ok(handle) => {
                    failed.remove(key);
                    tracing::info!(%addr, protocol = %key.1, service, "listening on a published port");
                    open.insert(*key, (service.clone(), handle));
                }
                Err(e) => {
                    if failed.insert(*key) {
                        tracing::warn!(%addr, protocol = %key.1, service, error = %e, "cannot listen on a published port; retrying");
                    }
                }
            }
        }
        if failed.is_empty() {
            if tables.changed().await.is_err() {
                return;
            }
        } else {
            let _ = tokio::time::timeout(REBIND_EVERY, tables.changed()).await;
        }
    }
}

async fn accept_tcp(node: Arc<Node>, listener: TcpListener, service: String, port: PortSpec) {
    let limit = Arc::new(Semaphore::new(MAX_CONNS_PER_PORT));
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: slow down, keep serving.
                tracing::warn!(port = port.published, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::debug!(port = port.published, "connection limit reached; refusing");
            reset(stream);
            continue;
        };
        tokio::spawn(handle_tcp(
            node.clone(),
            stream,
            client,
            service.clone(),
            port.published,
            permit,
        ));
    }
}

/// Closes a client connection with a reset, so it sees the failure at once.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Serves one client connection: picks a task, retries once on another
/// when the first refuses, then splices.
async fn handle_tcp(
    node: Arc<Node>,
    mut client_stream: TcpStream,
    client: SocketAddr,
    service: String,
    published: u16,
    _permit: OwnedSemaphorePermit,
) {
    let mesh = node.mesh.clone();
    let _ = client_stream.set_nodelay(true);
    let local = client_stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::new(mesh.config.bind_ip, published));
    let table = mesh.table();
    let Some(entry) = table.services.get(&service) else {
        return reset(client_stream);
    };
    let Some(port) = entry
        .ports
        .iter()
        .find(|p| p.published == published && p.protocol == Protocol::Tcp && !p.is_host())
        .copied()
    else {
        return reset(client_stream);
    };
    let backends: Vec<&Backend> = entry
        .backends
        .iter()
        .filter(|b| b.target(published, Protocol::Tcp).is_some())
        .collect();
    let mut avoid = Avoid {
        tried: BTreeSet::new(),
        suspect: mesh.suspects(),
        max_per_backend: MAX_CONNS_PER_BACKEND,
    };
    let kernel_share = mesh.kernel_forwards(published, local.ip());
    // The first choice, and one retry on another task.
    for _ in 0..2 {
        let candidates: Vec<Candidate> = backends
            .iter()
            .map(|b| Candidate {
                node_id: b.node_id,
                active: mesh.active(&b.task_id),
            })
            .collect();
        let turn = mesh.next_turn();
        // Where the kernel forwards this node's share, what reaches the
        // listener is the other nodes' share: their tasks first.
        let remote_first = kernel_share.then(|| {
            let mut remote = avoid.clone();
            remote
                .tried
                .extend((0..backends.len()).filter(|i| backends[*i].node_id == mesh.me));
            remote
        });
        let Some(i) = remote_first
            .and_then(|remote| choose(port.policy, mesh.me, &candidates, &remote, turn))
            .or_else(|| choose(port.policy, mesh.me, &candidates, &avoid, turn))
        else {
            break;
        };
        avoid.tried.insert(i);
        let backend = backends[i];
        let _active = mesh.track(&backend.task_id);
        if backend.node_id == mesh.me {
            let target = backend.target(published, Protocol::Tcp).expect("filtered");
            match connect_local(&mesh, backend, target, port.proxy_protocol, client, local).await {
                Ok(mut upstream) => {
                    let _ = upstream.set_nodelay(true);
                    let outcome = {
                        let (cr, cw) = client_stream.split();
                        let (ur, uw) = upstream.split();
                        splice(cr, cw, ur, uw).await
                    };
                    if outcome.is_err() {
                        reset(upstream);
                        reset(client_stream);
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(task = %backend.task_id, error = %e, "local task refused a connection")
                }
            }
        } else {
            let request = MeshConnect {
                service: service.clone(),
                task_id: backend.task_id.clone(),
                published,
                protocol: Protocol::Tcp,
                client,
                local,
            };
            match connect_remote(&node, &mesh, backend.node_id, &request).await {
                Ok((mut send, mut recv, _stream_permit)) => {
                    let outcome = {
                        let (cr, cw) = client_stream.split();
                        splice(cr, cw, &mut recv, &mut send).await
                    };
                    if outcome.is_err() {
                        let _ = send.reset(0u32.into());
                        let _ = recv.stop(0u32.into());
                        reset(client_stream);
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(task = %backend.task_id, node = backend.node_id, error = %e, "remote task refused a connection");
                    mesh.mark_suspect(backend.node_id);
                }
            }
        }
    }
    reset(client_stream);
}

/// The container's bridge address, cached per container.
pub(super) async fn container_ip(mesh: &Mesh, container_id: &str) -> io::Result<IpAddr> {
    if let Some(ip) = mesh.addresses.lock().unwrap().get(container_id) {
        return Ok(*ip);
    }
    let runtime = mesh
        .runtime
        .get()
        .ok_or_else(|| io::Error::other("the container engine is not connected yet"))?;
    let ip = tokio::time::timeout(CONNECT_TIMEOUT, runtime.address(container_id))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the engine did not answer"))?
        .map_err(io::Error::other)?
        .ok_or_else(|| io::Error::other(format!("container {container_id} has no address")))?;
    mesh.addresses
        .lock()
        .unwrap()
        .insert(container_id.to_string(), ip);
    Ok(ip)
}

/// Connects to one of this node's tasks, and sends the PROXY header first
/// when the port asks for it.
async fn connect_local(
    mesh: &Mesh,
    backend: &Backend,
    target: u16,
    proxy_protocol: bool,
    client: SocketAddr,
    local: SocketAddr,
) -> io::Result<TcpStream> {
    let container = backend
        .container_id
        .as_deref()
        .ok_or_else(|| io::Error::other("the task has no container yet"))?;
    let ip = container_ip(mesh, container).await?;
    let addr = SocketAddr::new(ip, target);
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {addr}")))
        .and_then(|r| r);
    let mut stream = match connected {
        Ok(s) => s,
        Err(e) => {
            // The container may have been replaced under the same id
            // (restart): look its address up again next time.
            mesh.addresses.lock().unwrap().remove(container);
            return Err(e);
        }
    };
    if proxy_protocol {
        stream
            .write_all(&proxy::header_v2(client, local, true))
            .await?;
    }
    Ok(stream)
}

/// A QUIC connection to `peer` for mesh streams, dialed on first use.
async fn link(node: &Node, mesh: &Mesh, peer: NodeId) -> Result<shoal_net::Connection, String> {
    if let Some(conn) = mesh.links.lock().unwrap().get(&peer) {
        if conn.close_reason().is_none() {
            return Ok(conn.clone());
        }
    }
    let addr = mesh
        .table()
        .nodes
        .get(&peer)
        .map(|n| n.addr.clone())
        .ok_or_else(|| format!("node {peer} is not in the endpoint table"))?;
    let sock = resolve(&addr).await.map_err(|e| e.to_string())?;
    let conn = node
        .endpoint
        .connect(sock, peer, REMOTE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    mesh.links.lock().unwrap().insert(peer, conn.clone());
    Ok(conn)
}

/// Opens a mesh stream to the task's node and waits for it to reach the
/// container.
pub(super) async fn connect_remote(
    node: &Node,
    mesh: &Mesh,
    peer: NodeId,
    request: &MeshConnect,
) -> Result<(SendStream, RecvStream, OwnedSemaphorePermit), String> {
    let permit = mesh.stream_permits(peer).try_acquire_owned().map_err(|_| {
        format!(
            "{} mesh streams to node {peer} are open",
            super::MAX_STREAMS_PER_PEER
        )
    })?;
    let attempt = async {
        let conn = link(node, mesh, peer).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        codec::send_msg(&mut send, &PeerRequest::MeshConnect(request.clone()))
            .await
            .map_err(|e| e.to_string())?;
        let reply: MeshReply = codec::recv_msg(&mut recv, MAX_REPLY_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        match reply {
            MeshReply::Connected => Ok((send, recv)),
            MeshReply::Refused(reason) => Err(reason),
        }
    };
    let (send, recv) = tokio::time::timeout(REMOTE_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("node {peer} did not answer within {REMOTE_TIMEOUT:?}"))??;
    Ok((send, recv, permit))
}

/// The task's node: connects the stream a peer opened to the container.
pub async fn serve_remote(
    node: Arc<Node>,
    peer: NodeId,
    request: MeshConnect,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    if request.protocol == Protocol::Udp {
        return super::udp::serve_remote(node, peer, request, send, recv).await;
    }
    let mesh = node.mesh.clone();
    let outcome = async {
        let backend = find_own_backend(&mesh, &request).await?;
        let table = mesh.table();
        let port = table
            .services
            .get(&request.service)
            .and_then(|s| {
                s.ports
                    .iter()
                    .find(|p| p.published == request.published && p.protocol == request.protocol)
            })
            .copied()
            .ok_or_else(|| {
                format!(
                    "service {} publishes no port {}",
                    request.service, request.published
                )
            })?;
        let target = backend
            .target(request.published, request.protocol)
            .ok_or_else(|| {
                format!(
                    "task {} serves no port {}",
                    request.task_id, request.published
                )
            })?;
        connect_local(
            &mesh,
            &backend,
            target,
            port.proxy_protocol,
            request.client,
            request.local,
        )
        .await
        .map_err(|e| format!("task {} refused: {e}", request.task_id))
    }
    .await;
    let mut upstream = match outcome {
        Ok(upstream) => upstream,
        Err(reason) => {
            tracing::debug!(peer, task = %request.task_id, reason, "refusing a mesh stream");
            let _ = codec::send_msg(&mut send, &MeshReply::Refused(reason)).await;
            let _ = send.finish();
            return;
        }
    };
    if codec::send_msg(&mut send, &MeshReply::Connected)
        .await
        .is_err()
    {
        return;
    }
    let _ = upstream.set_nodelay(true);
    let outcome = {
        let (ur, uw) = upstream.split();
        splice(&mut recv, &mut send, ur, uw).await
    };
    if outcome.is_err() {
        let _ = send.reset(0u32.into());
        let _ = recv.stop(0u32.into());
        reset(upstream);
    }
}

/// The task as this node's table lists it, waiting briefly for the table
/// to catch up with the peer's.
pub(super) async fn find_own_backend(
    mesh: &Mesh,
    request: &MeshConnect,
) -> Result<Backend, String> {
    let mut tables = mesh.subscribe();
    let deadline = tokio::time::Instant::now() + TABLE_CATCH_UP;
    loop {
        let found = tables
            .borrow_and_update()
            .services
            .get(&request.service)
            .and_then(|s| {
                s.backends
                    .iter()
                    .find(|b| b.task_id == request.task_id && b.node_id == mesh.me)
                    .cloned()
            });
        if let Some(b) = found {
            return Ok(b);
        }
        if tokio::time::timeout_at(deadline, tables.changed())
            .await
            .is_err()
        {
            return Err(format!(
                "task {} is not taking connections on node {}",
                request.task_id, mesh.me
            ));
        }
    }
}

/// Why a splice ended other than both sides closing.
#[derive(Debug)]
enum SpliceEnd {
    Io(io::Error),
    Idle,
}

/// Time of the last byte moved, for the idle timeout.
pub(super) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub(super) fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub(super) async fn expired(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = self.start.elapsed().saturating_sub(last);
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    }
}

/// Copies both ways until both sides have closed (half-closes pass
/// through), either side fails, or nothing moves for [`IDLE_TIMEOUT`].
async fn splice<AR, AW, BR, BW>(a_read: AR, a_write: AW, b_read: BR, b_write: BW) -> Result<(), ()>
where
    AR: AsyncRead + Unpin,
    AW: AsyncWrite + Unpin,
    BR: AsyncRead + Unpin,
    BW: AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let both = async {
        tokio::try_join!(
            pump(a_read, b_write, &activity),
            pump(b_read, a_write, &activity)
        )
    };
    let end = tokio::select! {
        r = both => r.map(|_| ()).map_err(SpliceEnd::Io),
        () = activity.expired(IDLE_TIMEOUT) => Err(SpliceEnd::Idle),
    };
    end.map_err(|e| match e {
        SpliceEnd::Io(e) => tracing::debug!(error = %e, "mesh connection failed"),
        SpliceEnd::Idle => tracing::debug!("mesh connection closed: idle"),
    })
}

/// Copies `from` into `to` through one fixed buffer; a slow writer stops
/// the reading, so nothing queues beyond [`BUFFER_BYTES`].
async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut from: R,
    mut to: W,
    activity: &Activity,
) -> io::Result<()> {
    // Read into spare capacity: nothing to zero per connection.
    let mut buf = Vec::with_capacity(BUFFER_BYTES);
    loop {
        buf.clear();
        if from.read_buf(&mut buf).await? == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        activity.touch();
        to.write_all(&buf).await?;
        activity.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splice_passes_half_closes_and_bytes_both_ways() {
        let (mut client, proxy_a) = tokio::io::duplex(64);
        let (proxy_b, mut server) = tokio::io::duplex(64);
        let task = tokio::spawn(async move {
            let (ar, aw) = tokio::io::split(proxy_a);
            let (br, bw) = tokio::io::split(proxy_b);
            splice(ar, aw, br, bw).await
        });
        let request = vec![7u8; 100_000];
        let writer = {
            let request = request.clone();
            tokio::spawn(async move {
                client.write_all(&request).await.unwrap();
                client.shutdown().await.unwrap();
                let mut answer = Vec::new();
                client.read_to_end(&mut answer).await.unwrap();
                answer
            })
        };
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, request);
        server.write_all(b"done").await.unwrap();
        server.shutdown().await.unwrap();
        drop(server);
        assert_eq!(writer.await.unwrap(), b"done");
        assert!(task.await.unwrap().is_ok());
    }
}
