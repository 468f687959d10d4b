//! Cached connections to other nodes, one per node id.
//!
//! A caller asks for node N at an address and gets the live connection if there
//! is one, or a new one. After a failed dial the pool waits before dialing that
//! node again (50 ms, doubling up to 2 s); until then it fails at once with a
//! retryable error, so a node that is down costs its callers nothing and is not
//! flooded with handshakes.
//!
//! A connection nobody has asked for in [`UNUSED_FOR`] is let go (its
//! holders, such as a long-lived stream, keep it open for as long as they
//! need it): otherwise every node would keep a connection, and its
//! keep-alives, to every leader it ever had.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::VarInt;
use tokio::time::Instant;

use crate::transport::{Endpoint, NetError, CLOSE_NORMAL};

/// Wait after the first failed dial.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between dials of a node that keeps failing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How long to wait before the next dial after `failures` consecutive failures.
pub fn backoff_after(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(16);
    INITIAL_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

/// A cached connection not asked for in this long is let go.
pub const UNUSED_FOR: Duration = Duration::from_secs(30);
/// How often [`Peers::get`] looks for unused connections.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Connections to other nodes, shared by everything in this node that talks to
/// peers.
#[derive(Debug)]
pub struct Peers {
    endpoint: Endpoint,
    connect_timeout: Duration,
    /// One slot per node; its async lock makes concurrent callers share one dial.
    slots: Mutex<BTreeMap<u64, Arc<tokio::sync::Mutex<Slot>>>>,
    /// When unused connections were last looked for.
    swept: Mutex<Instant>,
}

#[derive(Debug, Default)]
struct Slot {
    addr: Option<SocketAddr>,
    conn: Option<quinn::Connection>,
    /// When `conn` was last handed out.
    used: Option<Instant>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

impl Peers {
    /// Dials through `endpoint`, giving each dial `connect_timeout`.
    pub fn new(endpoint: Endpoint, connect_timeout: Duration) -> Peers {
        Peers {
            endpoint,
            connect_timeout,
            slots: Mutex::new(BTreeMap::new()),
            swept: Mutex::new(Instant::now()),
        }
    }

    /// Lets go of connections not handed out in [`UNUSED_FOR`], at most once
    /// per [`SWEEP_EVERY`]. A slot busy with a dial is skipped.
    fn sweep_unused(&self, now: Instant) {
        {
            let mut swept = self.swept.lock().expect("peer sweep lock poisoned");
            if now.duration_since(*swept) < SWEEP_EVERY {
                return;
            }
            *swept = now;
        }
        let slots: Vec<_> = self
            .slots
            .lock()
            .expect("peer table lock poisoned")
            .values()
            .cloned()
            .collect();
        for slot in slots {
            let Ok(mut slot) = slot.try_lock() else {
                continue;
            };
            if slot
                .used
                .is_some_and(|at| now.duration_since(at) >= UNUSED_FOR)
            {
                slot.conn = None;
                slot.used = None;
            }
        }
    }

    /// A live connection to `node_id` at `addr`: the cached one, or a new one.
    /// A changed address replaces the cached connection and clears the back-off.
    pub async fn get(&self, node_id: u64, addr: SocketAddr) -> Result<quinn::Connection, NetError> {
        self.sweep_unused(Instant::now());
        let slot = self
            .slots
            .lock()
            .expect("peer table lock poisoned")
            .entry(node_id)
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if slot.addr != Some(addr) {
            if let Some(old) = slot.conn.take() {
                old.close(
                    VarInt::from_u32(CLOSE_NORMAL),
                    b"the node moved to another address",
                );
            }
            *slot = Slot {
                addr: Some(addr),
                ..Slot::default()
            };
        }
        if self.endpoint.is_revoked(node_id) {
            // Removed from the cluster: the connection cached before that is
            // not used again either.
            if let Some(old) = slot.conn.take() {
                old.close(
                    VarInt::from_u32(crate::transport::CLOSE_REVOKED),
                    b"this node was removed from the cluster",
                );
            }
            return Err(NetError::DialRevoked { node_id });
        }
        if let Some(conn) = &slot.conn {
            if conn.close_reason().is_none() {
                let conn = conn.clone();
                slot.used = Some(Instant::now());
                return Ok(conn);
            }
            slot.conn = None;
        }
        if let Some(retry_at) = slot.retry_at {
            let now = Instant::now();
            if now < retry_at {
                return Err(NetError::BackingOff {
                    node_id,
                    retry_in: retry_at - now,
                    last_error: slot.last_error.clone(),
                });
            }
        }
        match self
            .endpoint
            .connect(addr, node_id, self.connect_timeout)
            .await
        {
            Ok(conn) => {
                slot.conn = Some(conn.clone());
                slot.used = Some(Instant::now());
                slot.failures = 0;
                slot.retry_at = None;
                slot.last_error.clear();
                Ok(conn)
            }
            Err(e) => {
                slot.failures = slot.failures.saturating_add(1);
                slot.retry_at = Some(Instant::now() + backoff_after(slot.failures));
                slot.last_error = e.to_string();
                Err(e)
            }
        }
    }

    /// Drops what is known about `node_id`: its cached connection and its
    /// back-off. The next [`Peers::get`] dials at once. The dropped connection is
    /// not closed here, so calls in flight on it can finish; it closes when its
    /// last holder lets go.
    pub fn forget(&self, node_id: u64) {
        self.slots
            .lock()
            .expect("peer table lock poisoned")
            .remove(&node_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ClusterCa;
    use crate::transport::{call, read_request, write_response, Accepted};

    #[test]
    fn backoff_doubles_from_50ms_to_a_2s_cap() {
        let cases = [
            (0, 0),
            (1, 50),
            (2, 100),
            (3, 200),
            (4, 400),
            (5, 800),
            (6, 1600),
            (7, 2000),
            (8, 2000),
            (100, 2000),
            (u32::MAX, 2000),
        ];
        for (failures, millis) in cases {
            assert_eq!(
                backoff_after(failures),
                Duration::from_millis(millis),
                "{failures} failures"
            );
        }
    }

    fn localhost() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// A UDP port on 127.0.0.1 where nothing listens.
    fn closed_port() -> SocketAddr {
        let socket = std::net::UdpSocket::bind(localhost()).unwrap();
        socket.local_addr().unwrap()
    }

    /// Answers every request on every connection with the request plus one.
    fn serve_increment(endpoint: Endpoint) {
        tokio::spawn(async move {
            while let Some(accepted) = endpoint.accept().await {
                let Accepted::Node { conn, .. } = accepted else {
                    continue;
                };
                tokio::spawn(async move {
                    while let Ok((send, mut recv)) = conn.accept_bi().await {
                        let n: u64 = read_request(&mut recv).await.unwrap();
                        write_response(send, &(n + 1)).await.unwrap();
                    }
                });
            }
        });
    }

    #[tokio::test]
    async fn a_connection_nobody_asks_for_is_let_go_and_one_in_use_is_kept() {
        let ca = ClusterCa::generate("pool").unwrap();
        let idle_server = Endpoint::bind(localhost(), &ca.issue_identity(2).unwrap()).unwrap();
        let busy_server = Endpoint::bind(localhost(), &ca.issue_identity(3).unwrap()).unwrap();
        let client = Endpoint::bind(localhost(), &ca.issue_identity(1).unwrap()).unwrap();
        serve_increment(idle_server.clone());
        serve_increment(busy_server.clone());
        let peers = Peers::new(client, Duration::from_secs(5));
        let idle = peers.get(2, idle_server.local_addr()).await.unwrap();
        let busy = peers.get(3, busy_server.local_addr()).await.unwrap();
        let idle_id = idle.stable_id();
        drop(idle);

        // Looked at too soon: nothing happens.
        peers.sweep_unused(Instant::now());
        assert_eq!(
            peers
                .get(2, idle_server.local_addr())
                .await
                .unwrap()
                .stable_id(),
            idle_id
        );

        // Later: node 3's connection was asked for since, node 2's was not.
        let later = Instant::now() + UNUSED_FOR + SWEEP_EVERY;
        {
            let slots = peers.slots.lock().unwrap();
            let mut slot = slots[&3].try_lock().unwrap();
            slot.used = Some(later);
        }
        peers.sweep_unused(later);
        let again = peers.get(2, idle_server.local_addr()).await.unwrap();
        assert_ne!(
            again.stable_id(),
            idle_id,
            "the unused connection was let go"
        );
        let n: u64 = call(&again, &1u64, Duration::from_secs(5)).await.unwrap();
        assert_eq!(n, 2);
        let same = peers.get(3, busy_server.local_addr()).await.unwrap();
        assert_eq!(same.stable_id(), busy.stable_id(), "the used one was kept");
        // A holder keeps a let-go connection open until it is done.
        let n: u64 = call(&busy, &5u64, Duration::from_secs(5)).await.unwrap();
        assert_eq!(n, 6);
    }

    #[tokio::test]
    async fn reuses_a_live_connection_and_replaces_a_closed_one() {
        let ca = ClusterCa::generate("pool").unwrap();
        let server = Endpoint::bind(localhost(), &ca.issue_identity(2).unwrap()).unwrap();
        let client = Endpoint::bind(localhost(), &ca.issue_identity(1).unwrap()).unwrap();
        serve_increment(server.clone());
        let peers = Peers::new(client, Duration::from_secs(5));

        let first = peers.get(2, server.local_addr()).await.unwrap();
        let again = peers.get(2, server.local_addr()).await.unwrap();
        assert_eq!(first.stable_id(), again.stable_id());
        let answer: u64 = call(&again, &41u64, Duration::from_secs(5)).await.unwrap();
        assert_eq!(answer, 42);

        first.close(VarInt::from_u32(CLOSE_NORMAL), b"test");
        let fresh = peers.get(2, server.local_addr()).await.unwrap();
        assert_ne!(fresh.stable_id(), first.stable_id());
        let answer: u64 = call(&fresh, &1u64, Duration::from_secs(5)).await.unwrap();
        assert_eq!(answer, 2);

        peers.forget(2);
        assert!(
            fresh.close_reason().is_none(),
            "forget leaves the connection to its holders"
        );
        let after_forget = peers.get(2, server.local_addr()).await.unwrap();
        assert_ne!(after_forget.stable_id(), fresh.stable_id());
    }

    #[tokio::test]
    async fn backs_off_after_a_failed_dial_and_fails_fast_meanwhile() {
        let ca = ClusterCa::generate("pool").unwrap();
        let client = Endpoint::bind(localhost(), &ca.issue_identity(1).unwrap()).unwrap();
        let connect_timeout = Duration::from_millis(200);
        let peers = Peers::new(client, connect_timeout);
        let dead = closed_port();

        let err = peers.get(9, dead).await.unwrap_err();
        assert!(matches!(err, NetError::Timeout { .. }), "{err}");
        assert!(err.is_retryable());

        let started = Instant::now();
        let err = peers.get(9, dead).await.unwrap_err();
        assert!(
            started.elapsed() < connect_timeout,
            "a node in back-off must not be dialed"
        );
        match &err {
            NetError::BackingOff {
                node_id,
                retry_in,
                last_error,
            } => {
                assert_eq!(*node_id, 9);
                assert!(*retry_in <= INITIAL_BACKOFF);
                assert!(last_error.contains("did not complete"), "{last_error}");
            }
            other => panic!("expected back-off, got {other}"),
        }
        assert!(err.is_retryable());

        // Once the back-off has passed, the pool dials again (and fails again).
        tokio::time::sleep(INITIAL_BACKOFF).await;
        let err = peers.get(9, dead).await.unwrap_err();
        assert!(matches!(err, NetError::Timeout { .. }), "{err}");

        // Forgetting the node clears its back-off.
        peers.forget(9);
        let err = peers.get(9, dead).await.unwrap_err();
        assert!(matches!(err, NetError::Timeout { .. }), "{err}");
    }
}
