//! Real QUIC on 127.0.0.1.

use super::*;
use crate::pki::{ClusterCa, NodeKey};
use serde::Deserialize;

const T: Duration = Duration::from_secs(5);

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Request {
    Echo(String),
    WhoAreYou,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Response {
    Echo(String),
    IAm(u64),
}

/// Accepts node connections and answers requests; reports each peer's node id.
fn serve(endpoint: Endpoint, my_id: u64) -> mpsc::UnboundedReceiver<Accepted> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(accepted) = endpoint.accept().await {
            let conn = accepted.connection().clone();
            let _ = tx.send(accepted);
            tokio::spawn(async move {
                while let Ok((send, mut recv)) = conn.accept_bi().await {
                    let response = match read_request::<Request>(&mut recv).await {
                        Ok(Request::Echo(text)) => Response::Echo(text),
                        Ok(Request::WhoAreYou) => Response::IAm(my_id),
                        Err(_) => continue,
                    };
                    let _ = write_response(send, &response).await;
                }
            });
        }
    });
    rx
}

async fn next_accepted(rx: &mut mpsc::UnboundedReceiver<Accepted>) -> Accepted {
    tokio::time::timeout(T, rx.recv())
        .await
        .expect("nothing accepted in time")
        .expect("endpoint closed")
}

#[tokio::test]
async fn two_nodes_call_each_other_and_see_each_others_ids() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = Endpoint::bind(localhost(), &ca.issue_identity(10).unwrap()).unwrap();
    let b = Endpoint::bind(localhost(), &ca.issue_identity(20).unwrap()).unwrap();
    let mut a_accepted = serve(a.clone(), 10);
    let mut b_accepted = serve(b.clone(), 20);

    let a_to_b = a.connect(b.local_addr(), 20, T).await.unwrap();
    let reply: Response = call(&a_to_b, &Request::WhoAreYou, T).await.unwrap();
    assert_eq!(reply, Response::IAm(20));
    let reply: Response = call(&a_to_b, &Request::Echo("hello".into()), T)
        .await
        .unwrap();
    assert_eq!(reply, Response::Echo("hello".into()));
    assert_eq!(next_accepted(&mut b_accepted).await.node_id(), Some(10));

    let b_to_a = b.connect(a.local_addr(), 10, T).await.unwrap();
    let reply: Response = call(&b_to_a, &Request::WhoAreYou, T).await.unwrap();
    assert_eq!(reply, Response::IAm(10));
    assert_eq!(next_accepted(&mut a_accepted).await.node_id(), Some(20));
}

#[tokio::test]
async fn many_concurrent_calls_share_one_connection() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = Endpoint::bind(localhost(), &ca.issue_identity(1).unwrap()).unwrap();
    let b = Endpoint::bind(localhost(), &ca.issue_identity(2).unwrap()).unwrap();
    let _accepted = serve(b.clone(), 2);
    let conn = a.connect(b.local_addr(), 2, T).await.unwrap();
    let calls = (0..500).map(|i| {
        let conn = conn.clone();
        async move { call::<_, Response>(&conn, &Request::Echo(i.to_string()), T).await }
    });
    let replies = futures_join_all(calls).await;
    for (i, reply) in replies.into_iter().enumerate() {
        assert_eq!(reply.unwrap(), Response::Echo(i.to_string()));
    }
}

/// Runs futures concurrently on this task, keeping their order.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn one_client_endpoint_dials_as_many_identities() {
    let ca = ClusterCa::generate("t").unwrap();
    let server = Endpoint::bind(localhost(), &ca.issue_identity(1).unwrap()).unwrap();
    let mut accepted = serve(server.clone(), 1);
    let client = Endpoint::client(localhost()).unwrap();
    for id in [7, 8] {
        let dialer = Dialer::new(&ca.issue_identity(id).unwrap()).unwrap();
        let conn = client
            .connect_as(&dialer, server.local_addr(), 1, T)
            .await
            .unwrap();
        let reply: Response = call(&conn, &Request::WhoAreYou, T).await.unwrap();
        assert_eq!(reply, Response::IAm(1));
        // The server reads each connection's own certificate.
        assert_eq!(next_accepted(&mut accepted).await.node_id(), Some(id));
    }
    // Dialing the wrong node id is refused as with `connect`.
    let dialer = Dialer::new(&ca.issue_identity(9).unwrap()).unwrap();
    let err = client
        .connect_as(&dialer, server.local_addr(), 2, T)
        .await
        .unwrap_err();
    assert!(
        matches!(err, NetError::WrongNode { expected: 2, .. }),
        "{err}"
    );
    // A client endpoint accepts nothing.
    assert!(client.accept().await.is_none());
}

#[tokio::test]
async fn connecting_with_the_wrong_expected_node_id_fails() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = Endpoint::bind(localhost(), &ca.issue_identity(1).unwrap()).unwrap();
    let b = Endpoint::bind(localhost(), &ca.issue_identity(2).unwrap()).unwrap();
    let _accepted = serve(b.clone(), 2);
    let err = a.connect(b.local_addr(), 3, T).await.unwrap_err();
    match &err {
        NetError::WrongNode {
            expected: 3,
            detail,
            ..
        } => {
            assert!(detail.contains(&node_server_name(2)), "{detail}")
        }
        other => panic!("expected WrongNode, got {other}"),
    }
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("is not node 3"), "{err}");
}

#[tokio::test]
async fn a_node_certified_by_another_ca_is_refused_both_ways() {
    let ca = ClusterCa::generate("ours").unwrap();
    let other_ca = ClusterCa::generate("theirs").unwrap();
    let ours = Endpoint::bind(localhost(), &ca.issue_identity(1).unwrap()).unwrap();
    let stranger = Endpoint::bind(localhost(), &other_ca.issue_identity(2).unwrap()).unwrap();
    let mut ours_accepted = serve(ours.clone(), 1);
    let mut stranger_accepted = serve(stranger.clone(), 2);

    // Our node dialing the stranger refuses the stranger's server certificate.
    let err = ours.connect(stranger.local_addr(), 2, T).await.unwrap_err();
    assert!(matches!(err, NetError::UntrustedPeer { .. }), "{err}");
    assert!(!err.is_retryable());
    // The stranger dialing us refuses ours.
    let err = stranger.connect(ours.local_addr(), 1, T).await.unwrap_err();
    assert!(matches!(err, NetError::UntrustedPeer { .. }), "{err}");

    // A stranger that trusts our CA but presents its own certificate: our server
    // refuses the client certificate, which the client sees on its first call.
    let stranger_key = NodeKey::generate().unwrap();
    let impostor = NodeIdentity {
        node_id: 3,
        cert_pem: other_ca
            .issue_node_cert(3, &stranger_key.public_key_der())
            .unwrap(),
        key_pem: stranger_key.to_pem(),
        ca_cert_pem: ca.cert_pem.clone(),
    };
    let impostor_endpoint = Endpoint::bind(localhost(), &impostor).unwrap();
    let err = match impostor_endpoint.connect(ours.local_addr(), 1, T).await {
        Ok(conn) => call::<_, Response>(&conn, &Request::WhoAreYou, T)
            .await
            .unwrap_err(),
        Err(e) => e,
    };
    assert!(matches!(err, NetError::RejectedByPeer { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(
        err.to_string().contains("refused this node's certificate"),
        "{err}"
    );

    // None of these reached either side's accept().
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(ours_accepted.try_recv().is_err());
    assert!(stranger_accepted.try_recv().is_err());
}

#[tokio::test]
async fn a_node_connection_without_a_client_certificate_is_closed() {
    let ca = ClusterCa::generate("t").unwrap();
    let server = Endpoint::bind(localhost(), &ca.issue_identity(1).unwrap()).unwrap();
    let mut accepted = serve(server.clone(), 1);

    let material = TlsMaterial::new(&ca.issue_identity(2).unwrap()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(material.roots.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_NODE.to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let client = quinn::Endpoint::client(localhost()).unwrap();
    let conn = client
        .connect_with(config, server.local_addr(), &node_server_name(1))
        .unwrap()
        .await
        .unwrap();
    let err = call::<_, Response>(&conn, &Request::WhoAreYou, T)
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::RejectedByPeer { .. }), "{err}");
    assert!(
        err.to_string().contains("need a client certificate"),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(accepted.try_recv().is_err());
}

#[tokio::test]
async fn a_peer_speaking_another_protocol_version_is_reported_as_such() {
    let ca = ClusterCa::generate("t").unwrap();
    let identity = ca.issue_identity(1).unwrap();
    let server = Endpoint::bind(localhost(), &ca.issue_identity(2).unwrap()).unwrap();
    let _accepted = serve(server.clone(), 2);
    let client = Endpoint::bind(localhost(), &identity).unwrap();

    let err = client
        .connect_with_alpn(&identity, server.local_addr(), 2, b"shoal/2")
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::ProtocolMismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("speaks a different shoal protocol version"),
        "{err}"
    );
    assert!(!err.is_retryable());

    let fingerprint = ca.fingerprint().unwrap();
    let err = connect_for_join_with_alpn(server.local_addr(), &fingerprint, T, b"shoal-join/2")
        .await
        .unwrap_err();
    assert!(
        matches!(err, JoinConnectError::ProtocolMismatch { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("different shoal protocol version"),
        "{err}"
    );
}

#[tokio::test]
async fn a_joiner_with_the_right_fingerprint_is_accepted_as_a_joiner() {
    let ca = ClusterCa::generate("t").unwrap();
    let server = Endpoint::bind(localhost(), &ca.issue_identity(1).unwrap()).unwrap();
    let mut accepted = serve(server.clone(), 1);

    let conn = connect_for_join(server.local_addr(), &ca.fingerprint().unwrap(), T)
        .await
        .unwrap();
    let reply: Response = call(&conn, &Request::Echo("let me in".into()), T)
        .await
        .unwrap();
    assert_eq!(reply, Response::Echo("let me in".into()));
    let seen = next_accepted(&mut accepted).await;
    assert!(matches!(seen, Accepted::Joiner { .. }), "{seen:?}");

    // Upper-case fingerprints (hand-copied tokens) work too.
    connect_for_join(
        server.local_addr(),
        &ca.fingerprint().unwrap().to_uppercase(),
        T,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_joiner_with_a_wrong_fingerprint_fails_before_sending_anything() {
    let ca = ClusterCa::generate("t").unwrap();
    let other_ca = ClusterCa::generate("other").unwrap();
    let server = Endpoint::bind(localhost(), &ca.issue_identity(1).unwrap()).unwrap();
    let mut accepted = serve(server.clone(), 1);

    let err = connect_for_join(server.local_addr(), &other_ca.fingerprint().unwrap(), T)
        .await
        .unwrap_err();
    assert!(
        matches!(err, JoinConnectError::FingerprintMismatch),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("the server's CA does not match the token's fingerprint"),
        "{err}"
    );
    assert!(!err.is_retryable());

    // The handshake failed, so the joiner got no connection to send on, and the
    // server never saw it: after a good joiner, exactly one joiner was accepted.
    let good = connect_for_join(server.local_addr(), &ca.fingerprint().unwrap(), T)
        .await
        .unwrap();
    let reply: Response = call(&good, &Request::WhoAreYou, T).await.unwrap();
    assert_eq!(reply, Response::IAm(1));
    let seen = next_accepted(&mut accepted).await;
    assert!(matches!(seen, Accepted::Joiner { .. }), "{seen:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        accepted.try_recv().is_err(),
        "the refused joiner must not be accepted"
    );
}

#[tokio::test]
async fn a_server_whose_certificate_was_not_issued_by_the_fingerprinted_ca_is_refused() {
    // The server sends the real CA alongside a certificate from another CA: the
    // fingerprint matches but the chain does not.
    let ca = ClusterCa::generate("t").unwrap();
    let other_ca = ClusterCa::generate("other").unwrap();
    let key = NodeKey::generate().unwrap();
    let forged = NodeIdentity {
        node_id: 1,
        cert_pem: other_ca.issue_node_cert(1, &key.public_key_der()).unwrap(),
        key_pem: key.to_pem(),
        ca_cert_pem: ca.cert_pem.clone(),
    };
    let server = Endpoint::bind(localhost(), &forged).unwrap();
    let _accepted = serve(server.clone(), 1);
    let err = connect_for_join(server.local_addr(), &ca.fingerprint().unwrap(), T)
        .await
        .unwrap_err();
    assert!(
        matches!(err, JoinConnectError::UntrustedServer { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn joining_a_closed_port_times_out() {
    let dead = std::net::UdpSocket::bind(localhost())
        .unwrap()
        .local_addr()
        .unwrap();
    let timeout = Duration::from_millis(300);
    let started = tokio::time::Instant::now();
    let err = connect_for_join(dead, &"0".repeat(64), timeout)
        .await
        .unwrap_err();
    assert!(matches!(err, JoinConnectError::Timeout { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < timeout + Duration::from_secs(2));
}

#[tokio::test]
async fn connecting_to_a_closed_port_fails_within_the_timeout() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = Endpoint::bind(localhost(), &ca.issue_identity(1).unwrap()).unwrap();
    let dead = std::net::UdpSocket::bind(localhost())
        .unwrap()
        .local_addr()
        .unwrap();
    let timeout = Duration::from_millis(300);
    let started = tokio::time::Instant::now();
    let err = a.connect(dead, 2, timeout).await.unwrap_err();
    assert!(matches!(err, NetError::Timeout { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < timeout + Duration::from_secs(2));
}

#[tokio::test]
async fn a_call_that_gets_no_answer_fails_within_its_timeout() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = Endpoint::bind(localhost(), &ca.issue_identity(1).unwrap()).unwrap();
    let b = Endpoint::bind(localhost(), &ca.issue_identity(2).unwrap()).unwrap();
    // b accepts streams but never answers.
    let silent = b.clone();
    tokio::spawn(async move {
        while let Some(accepted) = silent.accept().await {
            let conn = accepted.connection().clone();
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok(stream) = conn.accept_bi().await {
                    held.push(stream);
                }
            });
        }
    });
    let conn = a.connect(b.local_addr(), 2, T).await.unwrap();
    let timeout = Duration::from_millis(300);
    let started = tokio::time::Instant::now();
    let err = call::<_, Response>(&conn, &Request::WhoAreYou, timeout)
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Timeout { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < timeout + Duration::from_secs(2));
}

#[tokio::test]
async fn an_oversized_frame_is_rejected_by_the_receiver() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = Endpoint::bind(localhost(), &ca.issue_identity(1).unwrap()).unwrap();
    let b = Endpoint::bind(localhost(), &ca.issue_identity(2).unwrap()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = b.clone();
    tokio::spawn(async move {
        let accepted = server.accept().await.unwrap();
        let (_send, mut recv) = accepted.connection().accept_bi().await.unwrap();
        let _ = tx.send(read_request::<Request>(&mut recv).await);
    });
    let conn = a.connect(b.local_addr(), 2, T).await.unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    // Announce one byte more than the limit, and send no payload.
    let announced = (MAX_FRAME_BYTES as u32 + 1).to_be_bytes();
    tokio::io::AsyncWriteExt::write_all(&mut send, &announced)
        .await
        .unwrap();
    let result = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Codec {
                source: CodecError::FrameTooLarge { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert!(
        err.to_string()
            .contains("exceeds the limit of 16777216 bytes"),
        "{err}"
    );
}

#[tokio::test]
async fn a_joiner_request_over_the_join_limit_is_rejected() {
    let ca = ClusterCa::generate("t").unwrap();
    let server = Endpoint::bind(localhost(), &ca.issue_identity(1).unwrap()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let serving = server.clone();
    tokio::spawn(async move {
        let accepted = serving.accept().await.unwrap();
        assert!(matches!(accepted, Accepted::Joiner { .. }));
        loop {
            let Ok((send, mut recv)) = accepted.connection().accept_bi().await else {
                break;
            };
            let request = read_request_with_limit::<Request>(&mut recv, MAX_JOIN_FRAME_BYTES).await;
            let ok = request.is_ok();
            let _ = tx.send(request);
            if ok {
                let _ = write_response(send, &Response::IAm(1)).await;
            }
        }
    });
    let conn = connect_for_join(server.local_addr(), &ca.fingerprint().unwrap(), T)
        .await
        .unwrap();
    let small: Response = call(&conn, &Request::Echo("x".repeat(1000)), T)
        .await
        .unwrap();
    assert_eq!(small, Response::IAm(1));
    assert!(rx.recv().await.unwrap().is_ok());

    let err = call::<_, Response>(&conn, &Request::Echo("x".repeat(MAX_JOIN_FRAME_BYTES)), T)
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::NoResponse { .. }), "{err}");
    let server_err = rx.recv().await.unwrap().unwrap_err();
    assert!(
        matches!(
            server_err,
            NetError::Codec {
                source: CodecError::FrameTooLarge { .. },
                ..
            }
        ),
        "{server_err}"
    );
}

#[tokio::test]
async fn binding_an_address_in_use_says_so() {
    let ca = ClusterCa::generate("t").unwrap();
    let identity = ca.issue_identity(1).unwrap();
    let first = Endpoint::bind(localhost(), &identity).unwrap();
    let err = Endpoint::bind(first.local_addr(), &identity).unwrap_err();
    assert!(matches!(err, NetError::AddressInUse { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("address {} is already in use", first.local_addr())),
        "{err}"
    );
}

#[tokio::test]
async fn closing_the_endpoint_ends_accept_and_tells_peers() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = Endpoint::bind(localhost(), &ca.issue_identity(1).unwrap()).unwrap();
    let b = Endpoint::bind(localhost(), &ca.issue_identity(2).unwrap()).unwrap();
    let mut b_accepted = serve(b.clone(), 2);
    let conn = a.connect(b.local_addr(), 2, T).await.unwrap();
    let _: Response = call(&conn, &Request::WhoAreYou, T).await.unwrap();
    let _ = next_accepted(&mut b_accepted).await;

    b.close();
    let err = tokio::time::timeout(T, conn.closed()).await.unwrap();
    let err = NetError::connection_ended(b.local_addr(), err);
    assert!(matches!(err, NetError::ClosedByPeer { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(tokio::time::timeout(T, b_accepted.recv())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_revoked_node_is_refused_on_connect_and_on_its_open_connection_and_not_dialed() {
    let ca = ClusterCa::generate("t").unwrap();
    let server = Endpoint::bind(localhost(), &ca.issue_identity(1).unwrap()).unwrap();
    let removed = Endpoint::bind(localhost(), &ca.issue_identity(7).unwrap()).unwrap();
    let mut accepted = serve(server.clone(), 1);

    // Open before the revocation: the server closes it when told, as a
    // member server does (peer_server watches `revocations`).
    let open = removed.connect(server.local_addr(), 1, T).await.unwrap();
    let reply: Response = call(&open, &Request::WhoAreYou, T).await.unwrap();
    assert_eq!(reply, Response::IAm(1));
    let seen = next_accepted(&mut accepted).await;
    let mut changes = server.revocations();
    assert_eq!(server.revoke([7, 9]), vec![7, 9]);
    assert_eq!(
        server.revoke([7]),
        Vec::<u64>::new(),
        "revoking twice adds nothing"
    );
    assert_eq!(server.revoked_count(), 2);
    assert_eq!(server.revoked_ids(), vec![7, 9]);
    assert!(server.is_revoked(7) && !server.is_revoked(1));
    tokio::time::timeout(T, changes.changed())
        .await
        .unwrap()
        .unwrap();
    server.refuse_revoked(seen.connection(), 7);
    let err = call::<_, Response>(&open, &Request::WhoAreYou, T)
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::RevokedByPeer { .. }), "{err}");
    assert!(err.to_string().contains("node 7 was removed"), "{err}");

    // A new connection is closed right after its handshake and never
    // reaches accept().
    let err = match removed.connect(server.local_addr(), 1, T).await {
        Ok(conn) => call::<_, Response>(&conn, &Request::WhoAreYou, T)
            .await
            .unwrap_err(),
        Err(e) => e,
    };
    assert!(matches!(err, NetError::RevokedByPeer { .. }), "{err}");
    assert!(!err.is_retryable());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(accepted.try_recv().is_err());

    // The server does not dial it either.
    let err = server
        .connect(removed.local_addr(), 7, T)
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::DialRevoked { node_id: 7 }), "{err}");
    // Other members are unaffected.
    let member = Endpoint::bind(localhost(), &ca.issue_identity(2).unwrap()).unwrap();
    let conn = member.connect(server.local_addr(), 1, T).await.unwrap();
    let reply: Response = call(&conn, &Request::WhoAreYou, T).await.unwrap();
    assert_eq!(reply, Response::IAm(1));
}

#[test]
fn refusals_are_logged_once_per_key_per_interval_with_a_count() {
    let t0 = std::time::Instant::now();
    let later = |ms: u64| t0 + Duration::from_millis(ms);
    let mut log = RefusalLog::<u64>::new(1);
    assert_eq!(log.allow(7, t0), Some(0));
    assert_eq!(log.allow(7, later(1)), None);
    assert_eq!(log.allow(7, later(9_999)), None);
    // Another key has its own limit.
    assert_eq!(log.allow(8, later(2)), Some(0));
    // The next line counts the refusals it stood for.
    let interval = REVOKED_LOG_INTERVAL.as_millis() as u64;
    assert_eq!(log.allow(7, later(interval)), Some(2));
    assert_eq!(log.allow(7, later(interval + 1)), None);

    // A burst of three lines per interval, then counted.
    let mut log = RefusalLog::<u64>::new(3);
    assert_eq!(log.allow(1, t0), Some(0));
    assert_eq!(log.allow(1, later(1)), Some(0));
    assert_eq!(log.allow(1, later(2)), Some(0));
    assert_eq!(log.allow(1, later(3)), None);
    assert_eq!(log.allow(1, later(interval)), Some(1));

    // Bounded: a flood of distinct keys keeps at most REVOKED_LOG_KEYS.
    let mut log = RefusalLog::<u64>::new(1);
    for key in 0..(REVOKED_LOG_KEYS as u64 * 2) {
        assert_eq!(log.allow(key, later(key)), Some(0));
    }
    assert_eq!(log.keys.len(), REVOKED_LOG_KEYS);
}

/// The socket under every endpoint asks for large buffers; Linux grants up
/// to twice `net.core.rmem_max` / `wmem_max` (it reports double what it
/// keeps for bookkeeping).
#[test]
fn endpoint_sockets_get_large_buffers_where_the_kernel_allows() {
    let sysctl = |name: &str| -> usize {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let socket = socket2::Socket::from(udp_socket(localhost()).unwrap());
    let recv = socket.recv_buffer_size().unwrap();
    let send = socket.send_buffer_size().unwrap();
    assert!(
        recv >= UDP_BUFFER_BYTES.min(2 * sysctl("rmem_max")),
        "receive buffer {recv}"
    );
    assert!(
        send >= UDP_BUFFER_BYTES.min(2 * sysctl("wmem_max")),
        "send buffer {send}"
    );
}
