//! UDP ingress: datagrams from one client address form a flow, bound to one
//! task for the flow's life. A local task gets the flow's datagrams from a
//! UDP socket of this node connected to its container; a remote task over
//! one QUIC stream per flow to its node, carrying each datagram with a
//! two-byte length in front, both ways. A flow ends after [`FLOW_IDLE`]
//! without a datagram either way.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_net::{codec, RecvStream, SendStream};
use shoal_raft::{NodeId, PortSpec, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::balance::{choose, Avoid, Candidate};
use super::ingress::{connect_remote, container_ip, find_own_backend, Activity};
use super::table::Backend;
use super::Mesh;
use crate::node::Node;
use crate::wire::{MeshConnect, MeshReply};

/// Most flows one published UDP port carries at once on this node; a
/// datagram that would start one more is dropped.
pub const MAX_FLOWS_PER_PORT: usize = 4_096;
/// Most flows this node sends to one task at once.
pub const MAX_FLOWS_PER_BACKEND: u32 = 1_024;
/// A flow with no datagram either way for this long ends.
pub const FLOW_IDLE: Duration = Duration::from_secs(60);
/// Datagrams queued for one flow while it connects or sends; more are
/// dropped (UDP's own answer to a full queue).
const FLOW_QUEUE: usize = 256;
/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

type Flows = Arc<Mutex<BTreeMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

/// Serves one published UDP port.
pub async fn serve(node: Arc<Node>, socket: UdpSocket, service: String, port: PortSpec) {
    let socket = Arc::new(socket);
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::new(node.mesh.config.bind_ip, port.published));
    let flows: Flows = Arc::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                // An ICMP error for an earlier answer, or out of buffers.
                tracing::debug!(port = port.published, error = %e, "UDP receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let mut datagram = buf[..n].to_vec();
        let existing = flows.lock().unwrap().get(&client).cloned();
        if let Some(tx) = existing {
            match tx.try_send(datagram) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => continue,
                Err(mpsc::error::TrySendError::Closed(d)) => {
                    // The flow just ended: this datagram starts a new one.
                    datagram = d;
                    flows.lock().unwrap().remove(&client);
                }
            }
        }
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        {
            let mut flows = flows.lock().unwrap();
            if flows.len() >= MAX_FLOWS_PER_PORT {
                tracing::debug!(port = port.published, "UDP flow limit reached; dropping");
                continue;
            }
            let _ = tx.try_send(datagram);
            flows.insert(client, tx);
        }
        tokio::spawn(flow(
            node.clone(),
            socket.clone(),
            flows.clone(),
            service.clone(),
            port.published,
            client,
            local,
            rx,
        ));
    }
}

/// One client's flow, from its first datagram until it goes idle.
#[allow(clippy::too_many_arguments)]
async fn flow(
    node: Arc<Node>,
    socket: Arc<UdpSocket>,
    flows: Flows,
    service: String,
    published: u16,
    client: SocketAddr,
    local: SocketAddr,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    if let Err(e) = run_flow(&node, &socket, &service, published, client, local, &mut rx).await {
        tracing::debug!(service, %client, error = %e, "UDP flow ended");
    }
    // Still holding `rx`, the entry is this flow's: a new one replaces it
    // only once a send finds `rx` gone.
    flows.lock().unwrap().remove(&client);
}

async fn run_flow(
    node: &Arc<Node>,
    socket: &UdpSocket,
    service: &str,
    published: u16,
    client: SocketAddr,
    local: SocketAddr,
    rx: &mut mpsc::Receiver<Vec<u8>>,
) -> Result<(), String> {
    let mesh = node.mesh.clone();
    let table = mesh.table();
    let entry = table
        .services
        .get(service)
        .ok_or_else(|| format!("service {service} has no endpoints"))?;
    let port = entry
        .ports
        .iter()
        .find(|p| p.published == published && p.protocol == Protocol::Udp && !p.is_host())
        .copied()
        .ok_or_else(|| format!("service {service} publishes no UDP port {published}"))?;
    let backends: Vec<&Backend> = entry
        .backends
        .iter()
        .filter(|b| b.target(published, Protocol::Udp).is_some())
        .collect();
    let mut avoid = Avoid {
        tried: BTreeSet::new(),
        suspect: mesh.suspects(),
        max_per_backend: MAX_FLOWS_PER_BACKEND,
    };
    let mut last = String::from("no task takes datagrams");
    // The first choice, and one retry on another task.
    for _ in 0..2 {
        let candidates: Vec<Candidate> = backends
            .iter()
            .map(|b| Candidate {
                node_id: b.node_id,
                active: mesh.active(&b.task_id),
            })
            .collect();
        let Some(i) = choose(port.policy, mesh.me, &candidates, &avoid, mesh.next_turn()) else {
            break;
        };
        avoid.tried.insert(i);
        let backend = backends[i];
        let _active = mesh.track(&backend.task_id);
        if backend.node_id == mesh.me {
            let target = backend.target(published, Protocol::Udp).expect("filtered");
            match connect_container(&mesh, backend, target).await {
                Ok(upstream) => return relay_local(socket, client, rx, &upstream).await,
                Err(e) => last = format!("task {}: {e}", backend.task_id),
            }
        } else {
            let request = MeshConnect {
                service: service.to_string(),
                task_id: backend.task_id.clone(),
                published,
                protocol: Protocol::Udp,
                client,
                local,
            };
            match connect_remote(node, &mesh, backend.node_id, &request).await {
                Ok((mut send, mut recv, _permit)) => {
                    let outcome = relay_remote(socket, client, rx, &mut send, &mut recv).await;
                    let _ = send.finish();
                    return outcome;
                }
                Err(e) => {
                    mesh.mark_suspect(backend.node_id);
                    last = format!("node {}: {e}", backend.node_id);
                }
            }
        }
    }
    Err(last)
}

/// A UDP socket of this node connected to the task's container.
async fn connect_container(mesh: &Mesh, backend: &Backend, target: u16) -> io::Result<UdpSocket> {
    let container = backend
        .container_id
        .as_deref()
        .ok_or_else(|| io::Error::other("the task has no container yet"))?;
    let ip = container_ip(mesh, container).await?;
    let any = match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
    socket.connect(SocketAddr::new(ip, target)).await?;
    Ok(socket)
}

/// Datagrams from the flow's queue to the container, the container's
/// answers back to the client, until the flow goes idle.
async fn relay_local(
    socket: &UdpSocket,
    client: SocketAddr,
    rx: &mut mpsc::Receiver<Vec<u8>>,
    upstream: &UdpSocket,
) -> Result<(), String> {
    let activity = Activity::new();
    let up = async {
        while let Some(d) = rx.recv().await {
            activity.touch();
            // A refused send (nothing listening yet) loses this datagram only.
            let _ = upstream.send(&d).await;
        }
    };
    let down = async {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            match upstream.recv(&mut buf).await {
                Ok(n) => {
                    activity.touch();
                    let _ = socket.send_to(&buf[..n], client).await;
                }
                // ICMP port unreachable for an earlier datagram.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return e.to_string(),
            }
        }
    };
    tokio::select! {
        () = up => Ok(()),
        e = down => Err(e),
        () = activity.expired(FLOW_IDLE) => Ok(()),
    }
}

/// The flow over a mesh stream: each datagram framed with its length.
async fn relay_remote(
    socket: &UdpSocket,
    client: SocketAddr,
    rx: &mut mpsc::Receiver<Vec<u8>>,
    send: &mut SendStream,
    recv: &mut RecvStream,
) -> Result<(), String> {
    let activity = Activity::new();
    let up = async {
        let mut frame = Vec::with_capacity(MAX_DATAGRAM + 2);
        while let Some(d) = rx.recv().await {
            activity.touch();
            write_datagram(send, &mut frame, &d).await?;
        }
        Ok::<(), io::Error>(())
    };
    let down = async {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let n = read_datagram(recv, &mut buf).await?;
            activity.touch();
            let _ = socket.send_to(&buf[..n], client).await;
        }
    };
    let end: io::Result<()> = tokio::select! {
        r = up => r,
        r = down => r,
        () = activity.expired(FLOW_IDLE) => Ok(()),
    };
    end.map_err(|e| e.to_string())
}

async fn write_datagram<W: AsyncWrite + Unpin>(
    to: &mut W,
    frame: &mut Vec<u8>,
    datagram: &[u8],
) -> io::Result<()> {
    let len = u16::try_from(datagram.len()).map_err(|_| io::Error::other("datagram too long"))?;
    frame.clear();
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(datagram);
    to.write_all(frame).await
}

/// One framed datagram into `buf` (at least [`MAX_DATAGRAM`] long); its length.
async fn read_datagram<R: AsyncRead + Unpin>(from: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let len = from.read_u16().await? as usize;
    from.read_exact(&mut buf[..len]).await?;
    Ok(len)
}

/// The task's node: relays a peer's UDP flow to the container.
pub async fn serve_remote(
    node: Arc<Node>,
    peer: NodeId,
    request: MeshConnect,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let mesh = node.mesh.clone();
    let outcome = async {
        let backend = find_own_backend(&mesh, &request).await?;
        let target = backend
            .target(request.published, Protocol::Udp)
            .ok_or_else(|| {
                format!(
                    "task {} serves no UDP port {}",
                    request.task_id, request.published
                )
            })?;
        connect_container(&mesh, &backend, target)
            .await
            .map_err(|e| format!("task {}: {e}", request.task_id))
    }
    .await;
    let upstream = match outcome {
        Ok(upstream) => upstream,
        Err(reason) => {
            tracing::debug!(peer, task = %request.task_id, reason, "refusing a UDP mesh stream");
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
    let activity = Activity::new();
    let up = async {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let n = read_datagram(&mut recv, &mut buf).await?;
            activity.touch();
            let _ = upstream.send(&buf[..n]).await;
        }
    };
    let down = async {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut frame = Vec::with_capacity(MAX_DATAGRAM + 2);
        loop {
            match upstream.recv(&mut buf).await {
                Ok(n) => {
                    activity.touch();
                    write_datagram(&mut send, &mut frame, &buf[..n]).await?;
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err::<(), io::Error>(e),
            }
        }
    };
    let end: io::Result<()> = tokio::select! {
        r = up => r,
        r = down => r,
        () = activity.expired(FLOW_IDLE) => Ok(()),
    };
    if let Err(e) = end {
        tracing::debug!(peer, task = %request.task_id, error = %e, "UDP mesh stream ended");
    }
    let _ = send.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn datagrams_keep_their_bounds_through_the_framing() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let sent: Vec<Vec<u8>> = vec![b"one".to_vec(), Vec::new(), vec![9u8; 3000], b"x".to_vec()];
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut frame = Vec::new();
                for d in &sent {
                    write_datagram(&mut a, &mut frame, d).await.unwrap();
                }
            })
        };
        let mut buf = vec![0u8; MAX_DATAGRAM];
        for d in &sent {
            let n = read_datagram(&mut b, &mut buf).await.unwrap();
            assert_eq!(&buf[..n], &d[..]);
        }
        writer.await.unwrap();
        assert!(
            read_datagram(&mut b, &mut buf).await.is_err(),
            "EOF after the last"
        );
    }
}
