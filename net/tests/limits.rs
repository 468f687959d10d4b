//! A peer cannot take more than its share: streams per connection and
//! connections per endpoint are capped. Real QUIC on 127.0.0.1.

use std::net::SocketAddr;
use std::time::Duration;

use shoal_net::transport::{INITIAL_BIDI_STREAMS, MAX_BIDI_STREAMS, MAX_CONNECTIONS};
use shoal_net::{ClusterCa, Endpoint};

const T: Duration = Duration::from_secs(5);

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Accepts connections and keeps them, never accepting a stream on them.
fn hold_connections(endpoint: Endpoint) {
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(accepted) = endpoint.accept().await {
            held.push(accepted);
        }
    });
}

/// Opens streams on `conn` until the peer grants no more (each is used, a
/// byte sent, and kept open in `open`); returns how many were granted.
async fn streams_granted(
    conn: &shoal_net::Connection,
    open: &mut Vec<(shoal_net::SendStream, shoal_net::RecvStream)>,
) -> u32 {
    for i in 0..4000u32 {
        match tokio::time::timeout(Duration::from_millis(500), conn.open_bi()).await {
            Ok(Ok((mut send, recv))) => {
                send.write_all(&[0]).await.unwrap();
                open.push((send, recv));
            }
            Ok(Err(e)) => panic!("opening stream {i} failed: {e}"),
            Err(_) => return open.len() as u32,
        }
    }
    panic!("4,000 streams granted");
}

#[tokio::test]
async fn a_peer_cannot_open_more_streams_than_the_cap() {
    let ca = ClusterCa::generate("t").unwrap();
    let server = Endpoint::bind(localhost(), &ca.issue_identity(1).unwrap()).unwrap();
    let client = Endpoint::bind(localhost(), &ca.issue_identity(2).unwrap()).unwrap();
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::channel(1);
    {
        let server = server.clone();
        tokio::spawn(async move {
            let accepted = server.accept().await.unwrap();
            let _ = accepted_tx.send(accepted).await;
            std::future::pending::<()>().await;
        });
    }
    let conn = client.connect(server.local_addr(), 1, T).await.unwrap();
    let accepted = accepted_rx.recv().await.unwrap();
    let shoal_net::Accepted::Node {
        conn: server_side, ..
    } = &accepted
    else {
        panic!("a member's connection was accepted as a joiner's");
    };

    let mut open = Vec::new();
    assert_eq!(
        streams_granted(&conn, &mut open).await,
        INITIAL_BIDI_STREAMS,
        "a new connection must grant exactly {INITIAL_BIDI_STREAMS} concurrent streams"
    );
    shoal_net::transport::grant_all_streams(server_side);
    assert_eq!(
        streams_granted(&conn, &mut open).await,
        MAX_BIDI_STREAMS,
        "after grant_all_streams exactly {MAX_BIDI_STREAMS} in all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_refuses_connections_past_the_cap() {
    let ca = ClusterCa::generate("t").unwrap();
    let server = Endpoint::bind(localhost(), &ca.issue_identity(1).unwrap()).unwrap();
    // The default cap allows thousands of nodes; a smaller one keeps this
    // test quick and checks the same refusal.
    let cap = 512;
    const { assert!(MAX_CONNECTIONS >= 5_000) };
    server.set_max_connections(cap);
    hold_connections(server.clone());
    let identity = ca.issue_identity(2).unwrap();
    // Several client endpoints, each opening many connections, in batches so
    // the server's handshake limit is not what refuses them.
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(Endpoint::bind(localhost(), &identity).unwrap());
    }
    let mut held = Vec::new();
    let target = cap + 16;
    let mut refused = 0;
    let mut k = 0;
    while held.len() + refused < target {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..32 {
            k += 1;
            let c = clients[k % clients.len()].clone();
            let addr = server.local_addr();
            batch.spawn(async move { c.connect(addr, 1, T).await });
        }
        while let Some(outcome) = batch.join_next().await {
            match outcome.unwrap() {
                Ok(conn) => held.push(conn),
                Err(_) => refused += 1,
            }
        }
    }
    assert!(
        held.len() <= cap,
        "{} connections were accepted, over the cap of {cap}",
        held.len()
    );
    assert!(
        refused >= 16,
        "connections past the cap must be refused (refused {refused})"
    );
    // Each accepted connection really is open: a fresh stream opens on the last.
    let last = held.last().unwrap();
    tokio::time::timeout(T, last.open_bi())
        .await
        .unwrap()
        .unwrap();
}
