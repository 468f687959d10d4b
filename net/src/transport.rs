//! The QUIC transport: one UDP port per node carrying two kinds of connections,
//! told apart by ALPN.
//!
//! - `shoal/1` links two nodes of the cluster. Both sides present certificates
//!   issued by the cluster CA; the dialer names the node id it means to reach and
//!   TLS checks the server's certificate names it; the acceptor reads the dialer's
//!   node id from its certificate.
//! - `shoal-join/1` is for a node that is not a member yet. It has no certificate
//!   and does not know the CA, only the CA fingerprint from its join token; it
//!   accepts the server only if the server's chain contains a CA with that
//!   fingerprint and the server's certificate was issued by it.
//!
//! The server accepts both on the same TLS configuration, so it must let clients
//! without a certificate through the handshake; a `shoal/1` connection without a
//! client certificate is closed right after the handshake.
//!
//! Messages travel as one request and one response per bidirectional stream,
//! framed by [`crate::codec`], with a deadline on the whole exchange.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, TransportErrorCode, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::codec::{self, CodecError, MAX_FRAME_BYTES};
use crate::pki::{self, node_id_from_cert_der, node_server_name, NodeIdentity, PkiError};

/// ALPN of node-to-node connections.
pub const ALPN_NODE: &[u8] = b"shoal/1";
/// ALPN of connections from nodes that are joining.
pub const ALPN_JOIN: &[u8] = b"shoal-join/1";

/// Keep-alives, sent only by the side that dialed, keep a quiet connection
/// someone still holds (a proxied client connection of the mesh, say) from
/// reaching the idle timeout. The accepting side sends none: a leader
/// accepts a connection from every node of the cluster, and keep-alives
/// from its side too (at 1 s, both ways) were most of the datagrams a
/// 5,000-node cluster exchanged. A caller that must know whether a peer is
/// still there while it waits asks with [`probe`]; connections nobody uses
/// are let go by the pool ([`crate::pool`]) and then close at the idle
/// timeout.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(4);
/// A connection with no packets from the peer for this long is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent requests (bidirectional streams) a peer may have open on a
/// new connection. QUIC keeps a slot for every stream it grants (about
/// 70 bytes each, in two maps), so a leader with 5,000 connections
/// granting 256 + 64 apiece held 108 MB of slots; most connections (a worker's heartbeats,
/// task stream, endpoint stream and reports) use a handful.
pub const INITIAL_BIDI_STREAMS: u32 = 32;
/// Concurrent requests a peer may have open on a connection that has
/// been granted more with [`grant_all_streams`] (a manager forwarding its
/// clients' operations, a mesh link carrying client connections).
pub const MAX_BIDI_STREAMS: u32 = 256;
/// Unread bytes one connection may have in flight towards us, across all its
/// streams: QUIC flow control makes the peer wait beyond this.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 3 * MAX_FRAME_BYTES as u32;
/// The kernel buffer asked for each endpoint's UDP socket, each way. One
/// socket carries every connection of a node: a leader's receives the
/// heartbeats, reports and acknowledgements of thousands of nodes, and with
/// Linux's default (208 KiB) bursts overflowed it: in a simulated cluster of
/// 5,000 nodes about one datagram in six was dropped, and Raft's appends and
/// heartbeats, waiting on QUIC's loss recovery, missed their deadlines and
/// set off elections. Linux caps the request at `net.core.rmem_max` /
/// `wmem_max` (and reports twice what it grants); a smaller grant is logged.
pub const UDP_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// A UDP socket bound to `addr` with buffers of [`UDP_BUFFER_BYTES`] where
/// the kernel allows.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // The request is capped, not refused, beyond the system's limit.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    let granted = (socket.recv_buffer_size(), socket.send_buffer_size());
    if let (Ok(recv), Ok(send)) = granted {
        if recv < UDP_BUFFER_BYTES || send < UDP_BUFFER_BYTES {
            warn_small_buffers(recv, send);
        }
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Logs, once per process, that the kernel granted smaller UDP buffers.
fn warn_small_buffers(recv: usize, send: usize) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            recv_kib = recv / 1024,
            send_kib = send / 1024,
            wanted_kib = UDP_BUFFER_BYTES / 1024,
            "the kernel granted smaller UDP buffers than wanted; under load datagrams may be dropped (raise the sysctls net.core.rmem_max and net.core.wmem_max to {UDP_BUFFER_BYTES})"
        );
    });
}

/// Makes the peer answer at once if it is there: a one-byte QUIC datagram,
/// which the peer acknowledges (and otherwise ignores). A caller waiting on
/// a slow answer probes a connection that has gone quiet; a live peer's
/// acknowledgement arrives within a round trip, a dead one's never.
pub fn probe(conn: &quinn::Connection) {
    // Fails only where the peer takes no datagrams or the connection is
    // closed: the caller then hears nothing, which is what it checks for.
    let _ = conn.send_datagram(bytes::Bytes::from_static(b"?"));
}

/// Send priority of long-lived streams that carry bulk data (the task and
/// endpoint feeds). A connection sends from higher-priority streams first,
/// so a burst of feed frames never queues Raft's RPCs and heartbeats, whose
/// deadlines are a fraction of a second; other streams keep priority 0.
pub const BULK_STREAM_PRIORITY: i32 = -1;

/// Marks `send` as a bulk stream ([`BULK_STREAM_PRIORITY`]).
pub fn mark_bulk(send: &quinn::SendStream) {
    // Fails only on a stream already closed, which the next write reports.
    let _ = send.set_priority(BULK_STREAM_PRIORITY);
}

/// The frame limit for requests from joiners, who are not authenticated yet:
/// they send a public key and a secret, not bulk data.
pub const MAX_JOIN_FRAME_BYTES: usize = 64 * 1024;
/// Connections (of both kinds) one endpoint holds open by default; more are
/// refused. A leader holds one connection per node of the cluster (two where
/// the routing mesh links them), so this allows clusters of several
/// thousand nodes; [`Endpoint::set_max_connections`] changes it.
pub const MAX_CONNECTIONS: usize = 16_384;
/// Handshakes run concurrently; more are refused until some finish.
const MAX_HANDSHAKES_IN_FLIGHT: usize = 64;
/// Established connections waiting for [`Endpoint::accept`].
const ACCEPT_QUEUE: usize = 64;

/// Application close codes, so the peer learns why its connection ended.
pub const CLOSE_NORMAL: u32 = 0;
pub const CLOSE_UNAUTHENTICATED: u32 = 1;
pub const CLOSE_PROTOCOL: u32 = 2;
/// The peer's node id was removed from the cluster (`shoal node rm`).
pub const CLOSE_REVOKED: u32 = 3;

/// How often the refusal of one revoked node id is logged at most; the
/// refusals in between are counted into the next line, so a removed node
/// that keeps reconnecting cannot flood the log.
pub const REVOKED_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Node ids whose refusals are rate-limited separately; past this, refusals
/// of further ids share the limit of the oldest entries dropped.
const REVOKED_LOG_KEYS: usize = 1024;

/// TLS alert `no_application_protocol` as a QUIC transport error code.
fn alpn_mismatch_code() -> TransportErrorCode {
    TransportErrorCode::crypto(120)
}

fn is_crypto_code(code: TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

/// An error from the transport. [`NetError::is_retryable`] says whether trying
/// again later may succeed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("address {addr} is already in use: stop the program listening there or choose another --listen address")]
    AddressInUse { addr: SocketAddr },

    #[error("could not listen on UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("the node identity cannot be used for TLS: {detail}")]
    Tls { detail: String },

    #[error(transparent)]
    Identity(#[from] PkiError),

    #[error("cannot dial {addr}: {detail}")]
    Dial { addr: SocketAddr, detail: String },

    #[error("{what} {peer} did not complete within {after:?}; the peer may be down, unreachable or overloaded")]
    Timeout {
        peer: String,
        what: &'static str,
        after: Duration,
    },

    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },

    #[error("the connection to {peer} was lost: {detail}")]
    ConnectionLost { peer: String, detail: String },

    #[error("the node at {peer} is not node {expected}: {detail}")]
    WrongNode {
        peer: String,
        expected: u64,
        detail: String,
    },

    #[error("the peer at {peer} presented a certificate this cluster does not trust: {detail}")]
    UntrustedPeer { peer: String, detail: String },

    #[error("the peer at {peer} refused this node's certificate ({detail}); this node may belong to another cluster")]
    RejectedByPeer { peer: String, detail: String },

    #[error("the peer at {peer} speaks a different shoal protocol version (this node speaks shoal/1); upgrade the older node")]
    ProtocolMismatch { peer: String },

    #[error("the peer at {peer} closed the connection: {reason}")]
    ClosedByPeer { peer: String, reason: String },

    #[error("the peer at {peer} closed the stream without answering the request")]
    NoResponse { peer: String },

    #[error("bad message exchanged with {peer}: {source}")]
    Codec {
        peer: String,
        #[source]
        source: CodecError,
    },

    #[error(
        "node {node_id} was removed from the cluster (`shoal node rm`): this node does not dial it"
    )]
    DialRevoked { node_id: u64 },

    #[error("the peer at {peer} refused this node: {reason}")]
    RevokedByPeer { peer: String, reason: String },

    #[error(
        "not dialing node {node_id} for another {retry_in:?} after a failed attempt: {last_error}"
    )]
    BackingOff {
        node_id: u64,
        retry_in: Duration,
        last_error: String,
    },
}

impl NetError {
    /// Whether the same operation may succeed later without anyone changing
    /// configuration: timeouts, lost connections and back-off are; certificate,
    /// identity, protocol and local set-up errors are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            NetError::Timeout { .. }
            | NetError::Unreachable { .. }
            | NetError::ConnectionLost { .. }
            | NetError::ClosedByPeer { .. }
            | NetError::NoResponse { .. }
            | NetError::BackingOff { .. } => true,
            NetError::Codec { source, .. } => {
                matches!(source, CodecError::Io(_) | CodecError::Truncated { .. })
            }
            NetError::AddressInUse { .. }
            | NetError::Bind { .. }
            | NetError::Tls { .. }
            | NetError::Identity(_)
            | NetError::Dial { .. }
            | NetError::WrongNode { .. }
            | NetError::UntrustedPeer { .. }
            | NetError::RejectedByPeer { .. }
            | NetError::DialRevoked { .. }
            | NetError::RevokedByPeer { .. }
            | NetError::ProtocolMismatch { .. } => false,
        }
    }

    /// Says why a connection to or from `peer` ended, e.g. with what
    /// `quinn::Connection::closed` returned.
    pub fn connection_ended(peer: SocketAddr, e: ConnectionError) -> NetError {
        NetError::from_connection(peer.to_string(), None, e)
    }

    /// Classifies why a connection ended. `expected` is the node id we dialed, if
    /// we dialed.
    fn from_connection(peer: String, expected: Option<u64>, e: ConnectionError) -> NetError {
        match e {
            // Raised by our own TLS stack: the peer's certificate or protocol.
            ConnectionError::TransportError(te) if te.code == alpn_mismatch_code() => {
                NetError::ProtocolMismatch { peer }
            }
            ConnectionError::TransportError(te) if is_crypto_code(te.code) => match expected {
                Some(expected) if te.reason.contains("not valid for name") => NetError::WrongNode {
                    peer,
                    expected,
                    detail: te.reason,
                },
                _ => NetError::UntrustedPeer {
                    peer,
                    detail: te.reason,
                },
            },
            // Raised by the peer's TLS stack: our certificate or protocol.
            ConnectionError::ConnectionClosed(close)
                if close.error_code == alpn_mismatch_code() =>
            {
                NetError::ProtocolMismatch { peer }
            }
            ConnectionError::ConnectionClosed(close) if is_crypto_code(close.error_code) => {
                let reason = String::from_utf8_lossy(&close.reason).into_owned();
                let detail = if reason.is_empty() {
                    format!("TLS error code {}", close.error_code)
                } else {
                    reason
                };
                NetError::RejectedByPeer { peer, detail }
            }
            ConnectionError::ApplicationClosed(close) => {
                let reason = String::from_utf8_lossy(&close.reason).into_owned();
                if close.error_code == VarInt::from_u32(CLOSE_UNAUTHENTICATED) {
                    NetError::RejectedByPeer {
                        peer,
                        detail: reason,
                    }
                } else if close.error_code == VarInt::from_u32(CLOSE_PROTOCOL) {
                    NetError::ProtocolMismatch { peer }
                } else if close.error_code == VarInt::from_u32(CLOSE_REVOKED) {
                    NetError::RevokedByPeer { peer, reason }
                } else {
                    NetError::ClosedByPeer { peer, reason }
                }
            }
            ConnectionError::VersionMismatch => NetError::ProtocolMismatch { peer },
            ConnectionError::TimedOut => NetError::ConnectionLost {
                peer,
                detail: format!(
                    "no packets arrived from it for the idle timeout ({IDLE_TIMEOUT:?})"
                ),
            },
            other => NetError::ConnectionLost {
                peer,
                detail: other.to_string(),
            },
        }
    }

    /// Classifies a failed stream read or write on `conn`'s stream.
    fn from_stream(peer: String, conn: Option<&quinn::Connection>, e: CodecError) -> NetError {
        if let Some(lost) = connection_error_in(&e).or_else(|| conn.and_then(|c| c.close_reason()))
        {
            return NetError::from_connection(peer, None, lost);
        }
        if stream_abandoned_by_peer(&e) {
            return NetError::NoResponse { peer };
        }
        match e {
            CodecError::Closed => NetError::NoResponse { peer },
            CodecError::Io(io) => NetError::ConnectionLost {
                peer,
                detail: io.to_string(),
            },
            source => NetError::Codec { peer, source },
        }
    }
}

/// Whether the peer gave up on the stream (stopped reading it or reset it)
/// while the connection stays up: it refused or dropped the request.
fn stream_abandoned_by_peer(e: &CodecError) -> bool {
    let CodecError::Io(io) = e else { return false };
    let Some(inner) = io.get_ref() else {
        return false;
    };
    matches!(
        inner.downcast_ref::<quinn::WriteError>(),
        Some(quinn::WriteError::Stopped(_))
    ) || matches!(
        inner.downcast_ref::<quinn::ReadError>(),
        Some(quinn::ReadError::Reset(_))
    )
}

/// The connection error behind a stream I/O error, if the stream failed because
/// its connection ended.
fn connection_error_in(e: &CodecError) -> Option<ConnectionError> {
    let CodecError::Io(io) = e else { return None };
    let inner = io.get_ref()?;
    if let Some(quinn::ReadError::ConnectionLost(c)) = inner.downcast_ref::<quinn::ReadError>() {
        return Some(c.clone());
    }
    if let Some(quinn::WriteError::ConnectionLost(c)) = inner.downcast_ref::<quinn::WriteError>() {
        return Some(c.clone());
    }
    None
}

fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Which side of a connection a configuration is for: only the dialer
/// sends keep-alives.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Dialer,
    Acceptor,
}

/// Lets the peer open up to [`MAX_BIDI_STREAMS`] concurrent streams on
/// `conn` (it starts with [`INITIAL_BIDI_STREAMS`]). Idempotent.
pub fn grant_all_streams(conn: &quinn::Connection) {
    conn.set_max_concurrent_bi_streams(VarInt::from_u32(MAX_BIDI_STREAMS));
}

fn transport_config(side: Side) -> Arc<quinn::TransportConfig> {
    let mut config = quinn::TransportConfig::default();
    config.keep_alive_interval((side == Side::Dialer).then_some(KEEP_ALIVE_INTERVAL));
    config.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("the idle timeout fits in a QUIC varint"),
    ));
    config.max_concurrent_bidi_streams(VarInt::from_u32(INITIAL_BIDI_STREAMS));
    // shoal opens no unidirectional streams.
    config.max_concurrent_uni_streams(VarInt::from_u32(0));
    config.receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW));
    Arc::new(config)
}

/// The TLS material of an identity, parsed once.
struct TlsMaterial {
    /// [node certificate, CA certificate]: the CA goes along so joiners, who know
    /// only its fingerprint, can find it.
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<rustls::RootCertStore>,
}

impl TlsMaterial {
    fn new(identity: &NodeIdentity) -> Result<Self, NetError> {
        let tls_error = |detail: String| NetError::Tls { detail };
        let cert = pki::cert_der_from_pem(&identity.cert_pem, "node certificate")?;
        let ca = pki::cert_der_from_pem(&identity.ca_cert_pem, "CA certificate")?;
        let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
            .map_err(|e| tls_error(format!("the node private key is not valid PEM ({e})")))?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone())
            .map_err(|e| tls_error(format!("the CA certificate cannot be a trust anchor: {e}")))?;
        Ok(TlsMaterial {
            chain: vec![cert, ca],
            key,
            roots: Arc::new(roots),
        })
    }

    fn server_config(&self) -> Result<quinn::ServerConfig, NetError> {
        let tls_error = |e: &dyn fmt::Display| NetError::Tls {
            detail: e.to_string(),
        };
        let provider = crypto_provider();
        let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            provider.clone(),
        )
        // Joiners have no certificate yet; `shoal/1` connections without one
        // are closed after the handshake (see `identify`).
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls_error(&e))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error(&e))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| tls_error(&e))?;
        tls.alpn_protocols = vec![ALPN_NODE.to_vec(), ALPN_JOIN.to_vec()];
        let quic = QuicServerConfig::try_from(tls).map_err(|e| tls_error(&e))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(transport_config(Side::Acceptor));
        config.max_incoming(MAX_HANDSHAKES_IN_FLIGHT * 4);
        Ok(config)
    }

    fn client_config(&self, alpn: &[u8]) -> Result<quinn::ClientConfig, NetError> {
        let tls_error = |e: &dyn fmt::Display| NetError::Tls {
            detail: e.to_string(),
        };
        let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error(&e))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| tls_error(&e))?;
        tls.alpn_protocols = vec![alpn.to_vec()];
        let quic = QuicClientConfig::try_from(tls).map_err(|e| tls_error(&e))?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(transport_config(Side::Dialer));
        Ok(config)
    }
}

/// The TLS client configuration of one node identity, parsed once, for
/// [`Endpoint::connect_as`].
#[derive(Clone)]
pub struct Dialer {
    config: quinn::ClientConfig,
}

impl Dialer {
    pub fn new(identity: &NodeIdentity) -> Result<Dialer, NetError> {
        Ok(Dialer {
            config: TlsMaterial::new(identity)?.client_config(ALPN_NODE)?,
        })
    }
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialer").finish_non_exhaustive()
    }
}

/// A connection that completed its handshake and passed the identity check.
#[derive(Debug)]
pub enum Accepted {
    /// A cluster member, identified by the node id in its certificate.
    Node {
        node_id: u64,
        conn: quinn::Connection,
    },
    /// A node that wants to join; it is not authenticated yet.
    Joiner { conn: quinn::Connection },
}

impl Accepted {
    /// The node id of a member; `None` for a joiner.
    pub fn node_id(&self) -> Option<u64> {
        match self {
            Accepted::Node { node_id, .. } => Some(*node_id),
            Accepted::Joiner { .. } => None,
        }
    }

    pub fn connection(&self) -> &quinn::Connection {
        match self {
            Accepted::Node { conn, .. } | Accepted::Joiner { conn } => conn,
        }
    }
}

/// A node's QUIC endpoint: it accepts connections on its UDP port and dials
/// other nodes from the same port. Cloning gives another handle to the same
/// endpoint; the endpoint closes when [`Endpoint::close`] is called or the last
/// handle is dropped.
#[derive(Clone)]
pub struct Endpoint {
    shared: Arc<Shared>,
}

struct Shared {
    quinn: quinn::Endpoint,
    local_addr: SocketAddr,
    accepted: tokio::sync::Mutex<mpsc::Receiver<Accepted>>,
    /// Read by the accept loop for every incoming connection.
    max_connections: Arc<AtomicUsize>,
    /// Read by the accept loop for every incoming connection and by every dial.
    revoked: Arc<Revocations>,
}

/// The node ids this endpoint refuses, and the rate limit of the log line
/// each refusal writes.
///
/// Revocation is checked here, after the TLS handshake, rather than in the
/// TLS client-certificate verifier: a verifier's refusal reaches the peer
/// as a bare TLS alert and is logged without the node id, while a closed
/// connection carries [`CLOSE_REVOKED`] and a sentence the removed node
/// shows its operator. Every `shoal/1` connection passes here; the
/// serving side checks again on every stream ([`Endpoint::is_revoked`]) and
/// closes connections that were open when the id was revoked.
struct Revocations {
    ids: RwLock<BTreeSet<u64>>,
    /// Bumped on every change, so servers can close open connections.
    changed: watch::Sender<u64>,
    log: Mutex<RefusalLog<u64>>,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations {
            ids: RwLock::new(BTreeSet::new()),
            changed: watch::channel(0).0,
            log: Mutex::new(RefusalLog::new(1)),
        }
    }
}

impl Revocations {
    fn contains(&self, node_id: u64) -> bool {
        self.ids
            .read()
            .expect("revocation lock poisoned")
            .contains(&node_id)
    }

    /// Closes `conn` from revoked node `node_id` and logs it, rate-limited.
    fn refuse(&self, conn: &quinn::Connection, node_id: u64) {
        let reason = revoked_reason(node_id);
        conn.close(VarInt::from_u32(CLOSE_REVOKED), reason.as_bytes());
        let remote = conn.remote_address();
        let logged = self
            .log
            .lock()
            .expect("refusal log lock poisoned")
            .allow(node_id, std::time::Instant::now());
        if let Some(suppressed) = logged {
            tracing::warn!(
                node = node_id,
                %remote,
                suppressed,
                "refused a connection from node {node_id} at {remote}: it was removed from the cluster and its certificate is revoked"
            );
        }
    }
}

/// The close reason a removed node reads.
fn revoked_reason(node_id: u64) -> String {
    format!(
        "node {node_id} was removed from the cluster (`shoal node rm`) and its certificate is revoked; \
         wipe its data dir and join again"
    )
}

/// Decides which refusals are logged: at most `burst` lines per key (a node
/// id, a remote address) per [`REVOKED_LOG_INTERVAL`], the ones past it
/// counted into the next line, so a hostile peer cannot flood the log.
/// Bounded: at most [`REVOKED_LOG_KEYS`] keys are remembered.
#[derive(Debug)]
pub struct RefusalLog<K> {
    burst: u32,
    /// Per key: when its window began, lines written in it, refusals not
    /// logged since the last line.
    keys: BTreeMap<K, (std::time::Instant, u32, u64)>,
}

impl<K: Ord + Copy> RefusalLog<K> {
    /// A limit of `burst` lines per key per interval (at least one).
    pub fn new(burst: u32) -> RefusalLog<K> {
        RefusalLog {
            burst: burst.max(1),
            keys: BTreeMap::new(),
        }
    }

    /// `Some(refusals not logged since the last line)` when this refusal is
    /// to be logged, `None` when it is only counted.
    pub fn allow(&mut self, key: K, now: std::time::Instant) -> Option<u64> {
        if let Some((since, lines, suppressed)) = self.keys.get_mut(&key) {
            if now.saturating_duration_since(*since) >= REVOKED_LOG_INTERVAL {
                *since = now;
                *lines = 0;
            }
            if *lines >= self.burst {
                *suppressed += 1;
                return None;
            }
            *lines += 1;
            return Some(std::mem::take(suppressed));
        }
        if self.keys.len() >= REVOKED_LOG_KEYS {
            // Forget the key whose window is the oldest.
            if let Some(oldest) = self
                .keys
                .iter()
                .min_by_key(|(_, (since, _, _))| *since)
                .map(|(k, _)| *k)
            {
                self.keys.remove(&oldest);
            }
        }
        self.keys.insert(key, (now, 1, 0));
        Some(0)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.quinn
            .close(VarInt::from_u32(CLOSE_NORMAL), b"the node is shutting down");
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Listens on UDP `listen` with `identity`. Must be called inside a tokio
    /// runtime: it starts the task that runs handshakes.
    pub fn bind(listen: SocketAddr, identity: &NodeIdentity) -> Result<Endpoint, NetError> {
        let material = TlsMaterial::new(identity)?;
        let server_config = material.server_config()?;
        let client_config = material.client_config(ALPN_NODE)?;
        let bind_error = |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                NetError::AddressInUse { addr: listen }
            } else {
                NetError::Bind {
                    addr: listen,
                    source,
                }
            }
        };
        let socket = udp_socket(listen).map_err(bind_error)?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_error)?;
        endpoint.set_default_client_config(client_config);
        let local_addr = endpoint.local_addr().map_err(|source| NetError::Bind {
            addr: listen,
            source,
        })?;
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let max_connections = Arc::new(AtomicUsize::new(MAX_CONNECTIONS));
        let revoked = Arc::new(Revocations::default());
        tokio::spawn(accept_loop(
            endpoint.clone(),
            tx,
            max_connections.clone(),
            revoked.clone(),
        ));
        Ok(Endpoint {
            shared: Arc::new(Shared {
                quinn: endpoint,
                local_addr,
                accepted: tokio::sync::Mutex::new(rx),
                max_connections,
                revoked,
            }),
        })
    }

    /// An endpoint that only dials: it accepts no connection, and each dial
    /// names the identity it presents ([`Endpoint::connect_as`]). One UDP
    /// socket then carries the connections of many node identities, which
    /// is how `shoal dev simulate` runs thousands of simulated nodes.
    pub fn client(local: SocketAddr) -> Result<Endpoint, NetError> {
        let bind_error = |source| NetError::Bind {
            addr: local,
            source,
        };
        let socket = udp_socket(local).map_err(bind_error)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_error)?;
        let local_addr = endpoint.local_addr().map_err(|source| NetError::Bind {
            addr: local,
            source,
        })?;
        // No sender: `accept` answers `None` at once.
        let (_, rx) = mpsc::channel(1);
        Ok(Endpoint {
            shared: Arc::new(Shared {
                quinn: endpoint,
                local_addr,
                accepted: tokio::sync::Mutex::new(rx),
                max_connections: Arc::new(AtomicUsize::new(0)),
                revoked: Arc::new(Revocations::default()),
            }),
        })
    }

    /// Adds node ids this endpoint refuses from now on: their incoming
    /// connections are closed with [`CLOSE_REVOKED`] and they are not dialed.
    /// Ids are only ever added (a removed node id is never reused). Returns
    /// the ids that were not revoked before.
    pub fn revoke(&self, ids: impl IntoIterator<Item = u64>) -> Vec<u64> {
        let added: Vec<u64> = {
            let mut revoked = self
                .shared
                .revoked
                .ids
                .write()
                .expect("revocation lock poisoned");
            ids.into_iter().filter(|id| revoked.insert(*id)).collect()
        };
        if !added.is_empty() {
            self.shared.revoked.changed.send_modify(|v| *v += 1);
        }
        added
    }

    /// Whether `node_id` was revoked ([`Endpoint::revoke`]).
    pub fn is_revoked(&self, node_id: u64) -> bool {
        self.shared.revoked.contains(node_id)
    }

    /// How many node ids are revoked; as ids are only added, a count is also
    /// a version of the set.
    pub fn revoked_count(&self) -> usize {
        self.shared
            .revoked
            .ids
            .read()
            .expect("revocation lock poisoned")
            .len()
    }

    /// The revoked node ids.
    pub fn revoked_ids(&self) -> Vec<u64> {
        self.shared
            .revoked
            .ids
            .read()
            .expect("revocation lock poisoned")
            .iter()
            .copied()
            .collect()
    }

    /// Changes whenever ids are revoked, so a server can close connections
    /// that were open before.
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.shared.revoked.changed.subscribe()
    }

    /// Closes `conn`, a connection from revoked node `node_id`, with
    /// [`CLOSE_REVOKED`], and logs it (at most one line per node id per
    /// [`REVOKED_LOG_INTERVAL`]).
    pub fn refuse_revoked(&self, conn: &quinn::Connection, node_id: u64) {
        self.shared.revoked.refuse(conn, node_id);
    }

    /// Changes how many connections this endpoint holds open at most (the
    /// default is [`MAX_CONNECTIONS`]); connections past it are refused.
    pub fn set_max_connections(&self, max: usize) {
        self.shared
            .max_connections
            .store(max, AtomicOrdering::Relaxed);
    }

    /// Dials node `expected` at `addr` like [`Endpoint::connect`], presenting
    /// `dialer`'s identity instead of this endpoint's own.
    pub async fn connect_as(
        &self,
        dialer: &Dialer,
        addr: SocketAddr,
        expected: u64,
        timeout: Duration,
    ) -> Result<quinn::Connection, NetError> {
        if self.is_revoked(expected) {
            return Err(NetError::DialRevoked { node_id: expected });
        }
        let connecting = self
            .shared
            .quinn
            .connect_with(dialer.config.clone(), addr, &node_server_name(expected))
            .map_err(|e| NetError::Dial {
                addr,
                detail: e.to_string(),
            })?;
        match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(NetError::from_connection(
                addr.to_string(),
                Some(expected),
                e,
            )),
            Err(_) => Err(NetError::Timeout {
                peer: addr.to_string(),
                what: "connecting to",
                after: timeout,
            }),
        }
    }

    /// The address actually bound (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The next connection that completed its handshake and identity check, or
    /// `None` once the endpoint is closed. Peers that fail are logged and dropped.
    pub async fn accept(&self) -> Option<Accepted> {
        self.shared.accepted.lock().await.recv().await
    }

    /// Dials node `expected` at `addr`. TLS checks that the server's certificate
    /// was issued by the cluster CA and names node `expected`.
    ///
    /// With TLS 1.3, a server that refuses this node's certificate does so after
    /// the client considers the handshake complete; that refusal then surfaces
    /// from the first [`call`] as [`NetError::RejectedByPeer`].
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected: u64,
        timeout: Duration,
    ) -> Result<quinn::Connection, NetError> {
        if self.is_revoked(expected) {
            return Err(NetError::DialRevoked { node_id: expected });
        }
        let connecting = self
            .shared
            .quinn
            .connect(addr, &node_server_name(expected))
            .map_err(|e| NetError::Dial {
                addr,
                detail: e.to_string(),
            })?;
        match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(NetError::from_connection(
                addr.to_string(),
                Some(expected),
                e,
            )),
            Err(_) => Err(NetError::Timeout {
                peer: addr.to_string(),
                what: "connecting to",
                after: timeout,
            }),
        }
    }

    /// Closes every connection and stops accepting; [`Endpoint::accept`] then
    /// returns `None`.
    pub fn close(&self) {
        self.shared
            .quinn
            .close(VarInt::from_u32(CLOSE_NORMAL), b"the node is shutting down");
    }

    /// Dials with a caller-chosen ALPN, to check how a server treats a peer of
    /// another protocol version.
    #[cfg(test)]
    async fn connect_with_alpn(
        &self,
        identity: &NodeIdentity,
        addr: SocketAddr,
        expected: u64,
        alpn: &[u8],
    ) -> Result<quinn::Connection, NetError> {
        let config = TlsMaterial::new(identity)?.client_config(alpn)?;
        let connecting = self
            .shared
            .quinn
            .connect_with(config, addr, &node_server_name(expected))
            .map_err(|e| NetError::Dial {
                addr,
                detail: e.to_string(),
            })?;
        connecting
            .await
            .map_err(|e| NetError::from_connection(addr.to_string(), Some(expected), e))
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    accepted: mpsc::Sender<Accepted>,
    max_connections: Arc<AtomicUsize>,
    revoked: Arc<Revocations>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES_IN_FLIGHT));
    // Failed handshakes are logged at most once per remote address per
    // interval: anyone can start a handshake.
    let failures = Arc::new(Mutex::new(RefusalLog::<IpAddr>::new(1)));
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let limit = max_connections.load(AtomicOrdering::Relaxed);
        if endpoint.open_connections() >= limit {
            tracing::warn!(%remote, limit, "refusing a connection: too many open connections");
            incoming.refuse();
            continue;
        }
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%remote, limit = MAX_HANDSHAKES_IN_FLIGHT, "refusing a connection: too many handshakes in progress");
            incoming.refuse();
            continue;
        };
        let accepted = accepted.clone();
        let revoked = revoked.clone();
        let failures = failures.clone();
        tokio::spawn(async move {
            let outcome = handshake(incoming).await;
            drop(permit);
            match outcome {
                Ok(Accepted::Node { node_id, conn }) if revoked.contains(node_id) => {
                    revoked.refuse(&conn, node_id);
                }
                Ok(conn) => {
                    if accepted.send(conn).await.is_err() {
                        tracing::debug!(%remote, "endpoint closed while a connection was being accepted");
                    }
                }
                Err(reason) => {
                    let logged = failures
                        .lock()
                        .expect("handshake log lock poisoned")
                        .allow(remote.ip(), std::time::Instant::now());
                    if let Some(suppressed) = logged {
                        tracing::warn!(%remote, suppressed, "dropped an incoming connection: {reason}");
                    }
                }
            }
        });
    }
}

/// Completes the handshake of one incoming connection and identifies the peer.
async fn handshake(incoming: quinn::Incoming) -> Result<Accepted, String> {
    let conn = incoming
        .accept()
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| match e {
            // The peer's TLS stack refused ours: for a joiner, that is a
            // token naming another CA fingerprint.
            ConnectionError::ConnectionClosed(close) if is_crypto_code(close.error_code) => format!(
                "handshake refused by the peer ({close}): this node's certificate is not the one it \
                 expects (a joiner whose token names another cluster's CA fingerprint, or a node of \
                 another cluster)"
            ),
            e => format!("handshake failed: {e}"),
        })?;
    identify(conn)
}

fn identify(conn: quinn::Connection) -> Result<Accepted, String> {
    let protocol = conn
        .handshake_data()
        .and_then(|data| data.downcast::<HandshakeData>().ok())
        .and_then(|data| data.protocol);
    match protocol.as_deref() {
        Some(ALPN_NODE) => {
            let Some(leaf) = peer_certificates(&conn).and_then(|certs| certs.into_iter().next())
            else {
                let reason =
                    "shoal/1 connections need a client certificate issued by the cluster CA";
                conn.close(VarInt::from_u32(CLOSE_UNAUTHENTICATED), reason.as_bytes());
                return Err(reason.into());
            };
            match node_id_from_cert_der(&leaf) {
                Ok(node_id) => Ok(Accepted::Node { node_id, conn }),
                Err(e) => {
                    let reason = format!("the client certificate names no node: {e}");
                    conn.close(VarInt::from_u32(CLOSE_UNAUTHENTICATED), reason.as_bytes());
                    Err(reason)
                }
            }
        }
        Some(ALPN_JOIN) => Ok(Accepted::Joiner { conn }),
        // rustls refuses a QUIC handshake without a common protocol, so this is
        // a defence against a future configuration change.
        _ => {
            let reason = "the peer speaks no shoal protocol this node knows";
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), reason.as_bytes());
            Err(reason.into())
        }
    }
}

fn peer_certificates(conn: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()
        .map(|certs| *certs)
}

/// An error from [`connect_for_join`].
#[derive(Debug, thiserror::Error)]
pub enum JoinConnectError {
    #[error("cannot reach {addr}: {detail}")]
    Unreachable { addr: SocketAddr, detail: String },

    #[error(
        "the server's CA does not match the token's fingerprint: the server belongs to another \
         cluster, or the token is wrong; get the token from a manager of the cluster"
    )]
    FingerprintMismatch,

    #[error(
        "the node at {addr} presented a certificate that is not valid for its cluster: {detail}"
    )]
    UntrustedServer { addr: SocketAddr, detail: String },

    #[error("the node at {addr} speaks a different shoal protocol version (this node speaks shoal-join/1); use matching shoal versions")]
    ProtocolMismatch { addr: SocketAddr },

    #[error("no shoal node answered at {addr} within {after:?}: check the address and port, and that UDP traffic to it is allowed")]
    Timeout { addr: SocketAddr, after: Duration },

    #[error("could not connect to {addr} to join: {detail}")]
    Other { addr: SocketAddr, detail: String },
}

impl JoinConnectError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            JoinConnectError::Unreachable { .. }
                | JoinConnectError::Timeout { .. }
                | JoinConnectError::Other { .. }
        )
    }
}

/// Why [`JoinServerVerifier`] refused a server; read back after a failed
/// handshake because the TLS error itself reaches us only as text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum JoinRefusal {
    FingerprintMismatch,
    Untrusted(String),
}

/// Authenticates a server for a joiner that knows only the CA fingerprint.
#[derive(Debug)]
struct JoinServerVerifier {
    fingerprint: String,
    algorithms: WebPkiSupportedAlgorithms,
    refusal: Mutex<Option<JoinRefusal>>,
}

impl JoinServerVerifier {
    fn refuse(&self, refusal: JoinRefusal) -> rustls::Error {
        let error = match &refusal {
            JoinRefusal::FingerprintMismatch => rustls::Error::General(
                "the server's CA does not match the token's fingerprint".into(),
            ),
            JoinRefusal::Untrusted(detail) => rustls::Error::General(format!(
                "the server's certificate was not issued by the CA matching the token's fingerprint: {detail}"
            )),
        };
        *self.refusal.lock().expect("refusal lock poisoned") = Some(refusal);
        error
    }

    fn refusal(&self) -> Option<JoinRefusal> {
        self.refusal.lock().expect("refusal lock poisoned").clone()
    }
}

impl ServerCertVerifier for JoinServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The joiner does not know the server's node id, so no name is checked:
        // any node certified by the token's CA may admit joiners.
        let ca = intermediates
            .iter()
            .find(|cert| pki::sha256_hex(cert) == self.fingerprint)
            .ok_or_else(|| self.refuse(JoinRefusal::FingerprintMismatch))?;
        pki::verify_issued_by(end_entity, ca, now)
            .map_err(|e| self.refuse(JoinRefusal::Untrusted(e.to_string())))?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server name a joiner sends; the server ignores it.
const JOIN_SERVER_NAME: &str = "join.shoal";

/// Connects to a cluster member to join, trusting it only if its CA has
/// `fingerprint` (from the join token). Uses its own short-lived client endpoint
/// on an ephemeral port; the endpoint lives as long as the connection.
pub async fn connect_for_join(
    addr: SocketAddr,
    fingerprint: &str,
    timeout: Duration,
) -> Result<quinn::Connection, JoinConnectError> {
    connect_for_join_with_alpn(addr, fingerprint, timeout, ALPN_JOIN).await
}

async fn connect_for_join_with_alpn(
    addr: SocketAddr,
    fingerprint: &str,
    timeout: Duration,
    alpn: &[u8],
) -> Result<quinn::Connection, JoinConnectError> {
    let other = |detail: String| JoinConnectError::Other { addr, detail };
    let provider = crypto_provider();
    let verifier = Arc::new(JoinServerVerifier {
        fingerprint: fingerprint.to_ascii_lowercase(),
        algorithms: provider.signature_verification_algorithms,
        refusal: Mutex::new(None),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| other(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| other(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config(Side::Dialer));

    let local: SocketAddr = match addr.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let endpoint = quinn::Endpoint::client(local).map_err(|e| JoinConnectError::Unreachable {
        addr,
        detail: format!("cannot open a local UDP socket: {e}"),
    })?;
    let connecting = endpoint
        .connect_with(config, addr, JOIN_SERVER_NAME)
        .map_err(|e| JoinConnectError::Unreachable {
            addr,
            detail: e.to_string(),
        })?;
    let outcome = tokio::time::timeout(timeout, connecting).await;
    match outcome {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(match verifier.refusal() {
            Some(JoinRefusal::FingerprintMismatch) => JoinConnectError::FingerprintMismatch,
            Some(JoinRefusal::Untrusted(detail)) => {
                JoinConnectError::UntrustedServer { addr, detail }
            }
            None if matches!(e, ConnectionError::TimedOut) => JoinConnectError::Timeout {
                addr,
                after: IDLE_TIMEOUT.min(timeout),
            },
            None => match NetError::from_connection(addr.to_string(), None, e) {
                NetError::ProtocolMismatch { .. } => JoinConnectError::ProtocolMismatch { addr },
                other => JoinConnectError::Other {
                    addr,
                    detail: other.to_string(),
                },
            },
        }),
        Err(_) => Err(JoinConnectError::Timeout {
            addr,
            after: timeout,
        }),
    }
}

/// Sends one request on a new bidirectional stream of `conn` and reads one
/// response; `timeout` bounds the whole exchange, including waiting for a free
/// stream.
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    conn: &quinn::Connection,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, NetError> {
    let peer = conn.remote_address().to_string();
    let exchange = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| NetError::from_connection(peer.clone(), None, e))?;
        codec::send_msg(&mut send, req)
            .await
            .map_err(|e| NetError::from_stream(peer.clone(), Some(conn), e))?;
        // Finishing tells the server the request is complete; an error means the
        // stream is already gone, which the read below reports better.
        let _ = send.finish();
        codec::recv_msg(&mut recv, MAX_FRAME_BYTES)
            .await
            .map_err(|e| NetError::from_stream(peer.clone(), Some(conn), e))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(NetError::Timeout {
            peer,
            what: "a request to",
            after: timeout,
        }),
    }
}

/// The peer named in errors of the serving side, where the stream does not know
/// its address.
const REQUESTING_PEER: &str = "the requesting peer";

/// Server side: reads the one request of an accepted bidirectional stream from
/// a cluster member, up to [`MAX_FRAME_BYTES`].
pub async fn read_request<Req: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<Req, NetError> {
    read_request_with_limit(recv, MAX_FRAME_BYTES).await
}

/// Server side: reads one request of at most `max` bytes; use
/// [`MAX_JOIN_FRAME_BYTES`] on joiner connections.
pub async fn read_request_with_limit<Req: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<Req, NetError> {
    codec::recv_msg(recv, max)
        .await
        .map_err(|e| NetError::from_stream(REQUESTING_PEER.into(), None, e))
}

/// Server side: writes the one response of a stream and finishes it.
pub async fn write_response<Resp: Serialize>(
    mut send: quinn::SendStream,
    resp: &Resp,
) -> Result<(), NetError> {
    codec::send_msg(&mut send, resp)
        .await
        .map_err(|e| NetError::from_stream(REQUESTING_PEER.into(), None, e))?;
    send.finish().map_err(|e| NetError::ConnectionLost {
        peer: REQUESTING_PEER.into(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests;
