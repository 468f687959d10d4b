//! Bytes on the wire for shoal.
//!
//! This crate owns everything between a typed message and a UDP datagram:
//!
//! - [`codec`]: serialization of wire messages and length-prefixed framing with
//!   size limits checked before allocating;
//! - [`pki`]: the cluster CA, node keys and certificates (which carry node ids),
//!   and the node identity on disk;
//! - [`token`]: join tokens and their secrets;
//! - [`transport`]: the QUIC endpoint with mutual TLS between nodes, the join
//!   handshake for nodes that have only a token, and request/response calls;
//! - [`pool`]: cached connections to peers with back-off.
//!
//! It knows nothing of Raft or Docker: messages are any serde types chosen by the
//! caller, and peers are node ids and socket addresses. It never depends on
//! openraft or bollard.

pub mod codec;
pub mod pki;
pub mod pool;
pub mod token;
pub mod transport;

pub use codec::{CodecError, MAX_FRAME_BYTES};
pub use pki::{node_server_name, ClusterCa, NodeIdentity, NodeKey, PkiError};
pub use pool::Peers;
/// A QUIC connection to a peer; the composition root holds these without
/// depending on quinn itself.
pub use quinn::{Connection, RecvStream, SendStream};
pub use token::{JoinToken, TokenError};
pub use transport::{
    call, connect_for_join, read_request, write_response, Accepted, Endpoint, JoinConnectError,
    NetError,
};
