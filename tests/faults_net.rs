//! Network faults between managers, each in its own network namespace
//! (tests/common/netns.rs): partitions, a flapping link, delay with loss,
//! a one-way partition. Needs root and `ip netns`; skipped otherwise.

mod common;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::netns::{self, Net};

/// The reason to skip, printed, or `None` to run.
fn skip() -> Option<String> {
    let why = netns::unavailable()?;
    eprintln!("skipped: {why}");
    Some(why)
}

/// Sends `count` numbered probes from host 0 to an echo server on host 1,
/// waiting up to `wait` for each answer; returns the round trips answered.
fn probe(net: &Net, count: usize, wait: Duration) -> Vec<Duration> {
    let target = format!("{}:7000", net.ip(1));
    net.in_host(0, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(wait)).unwrap();
        let mut rtts = Vec::new();
        let mut buf = [0u8; 16];
        for i in 0..count as u32 {
            let sent = Instant::now();
            sock.send_to(&i.to_be_bytes(), &target).unwrap();
            // Late answers to earlier probes are skipped by their number.
            while let Ok((n, _)) = sock.recv_from(&mut buf) {
                if n == 4 && buf[..4] == i.to_be_bytes() {
                    rtts.push(sent.elapsed());
                    break;
                }
            }
        }
        rtts
    })
    .join()
    .unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn the_harness_cuts_delays_and_drops_per_direction() {
    if skip().is_some() {
        return;
    }
    let net = Net::create(2).expect("create hosts");
    // An echo server on host 1 that counts what reaches it.
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicUsize::new(0));
    let (s, r) = (stop.clone(), received.clone());
    let bind = format!("{}:7000", net.ip(1));
    let (bound_tx, bound) = std::sync::mpsc::channel();
    let server = net.in_host(1, move || {
        let sock = UdpSocket::bind(bind).unwrap();
        bound_tx.send(()).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = [0u8; 16];
        while !s.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                r.fetch_add(1, Ordering::Relaxed);
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    bound
        .recv_timeout(Duration::from_secs(5))
        .expect("echo server bound");
    let wait = Duration::from_millis(800);

    let base = probe(&net, 20, wait);
    assert_eq!(base.len(), 20, "an unimpaired link answers every probe");
    assert!(median(base.clone()) < Duration::from_millis(50), "{base:?}");

    // 200 ms on the way there only: the round trip grows by about that.
    net.impair(0, 1, Duration::from_millis(200), 0.0);
    let delayed = probe(&net, 10, wait);
    assert_eq!(delayed.len(), 10, "a delayed link loses nothing");
    let m = median(delayed.clone());
    assert!(
        m >= Duration::from_millis(195) && m < Duration::from_millis(400),
        "median round trip {m:?} with 200 ms one way: {delayed:?}"
    );

    // Half of what goes there is dropped: about half the probes answered.
    net.impair(0, 1, Duration::ZERO, 0.5);
    let lossy = probe(&net, 100, Duration::from_millis(60));
    assert!(
        (30..=70).contains(&lossy.len()),
        "{} of 100 answered with 50 % loss",
        lossy.len()
    );
    net.clear_impairment(0, 1);

    // A cut one way: requests still arrive when only the answers are cut.
    net.cut(1, 0);
    let before = received.load(Ordering::Relaxed);
    assert!(probe(&net, 5, Duration::from_millis(200)).is_empty());
    assert_eq!(
        received.load(Ordering::Relaxed) - before,
        5,
        "with 1 -> 0 cut, 0 -> 1 still carries every probe"
    );
    net.heal(1, 0);
    net.cut(0, 1);
    let before = received.load(Ordering::Relaxed);
    assert!(probe(&net, 5, Duration::from_millis(200)).is_empty());
    assert_eq!(received.load(Ordering::Relaxed), before, "0 -> 1 is cut");

    net.heal_all();
    assert_eq!(probe(&net, 10, wait).len(), 10, "healed");
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();

    // Dropping the net removes its namespaces.
    let names: Vec<String> = net.hosts.iter().map(|h| h.netns.clone()).collect();
    drop(net);
    let list = String::from_utf8(
        std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for name in names {
        assert!(!list.contains(&name), "{name} is left behind: {list}");
    }
}
