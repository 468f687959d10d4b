//! Network faults between three managers, each in its own network
//! namespace (tests/common/netns.rs): a minority partition, the leader cut
//! off from the majority, a flapping link, 200 ms delay with 5 % loss on one
//! link, a one-way partition. Needs root and `ip netns`; skipped otherwise.
//!
//! Every scenario measures how long until a single leader is agreed by a
//! majority and then holds (same leader, same term) for a settle window,
//! during the fault and after healing, and how far the term moved (each
//! election moves it). Writes are node label changes; each is recorded as
//! acknowledged, failed (on the side that cannot commit: it must never
//! appear) or unknown (failed where it might have committed). After healing,
//! every member holds the whole log, every acknowledged write is there, no
//! failed one is, and nothing else is. Figures print as `FIGURE ...` lines
//! (run with `--nocapture`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::netns::{self, Net, NsCluster};
use common::{wait_for, BIN};

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

// --- the cluster and what it reports -------------------------------------

/// Tasks would run in the in-memory engine: no Docker inside namespaces.
const ENV: &[(&str, &str)] = &[("SHOAL_FAKE_RUNTIME", "busybox:latest")];
/// A leader must hold this long (same leader, same term) to count as settled.
const WINDOW: Duration = Duration::from_secs(3);

struct Fixture {
    c: NsCluster,
    /// Raft node id of each node, by index (node i runs on host i).
    ids: Vec<u64>,
    writes: Writes,
}

fn three_managers() -> Option<Fixture> {
    if skip().is_some() {
        return None;
    }
    let net = Net::create(3).expect("create hosts");
    let mut c = NsCluster::new(net, ENV);
    c.init();
    c.join("manager");
    c.join("manager");
    let ids = c.node_ids();
    Some(Fixture {
        c,
        ids,
        writes: Writes::default(),
    })
}

/// (leader id, term) as one node reports it; `None` if it did not answer.
type View = Option<(Option<u64>, u64)>;

/// `status` of the given nodes, asked at the same time (a node without a
/// leader takes the status timeout to answer from its own view).
fn views(f: &Fixture, nodes: &[usize]) -> Vec<View> {
    let children: Vec<_> = nodes
        .iter()
        .map(|&i| {
            Command::new(BIN)
                .arg("--data-dir")
                .arg(&f.c.nodes[i].dir)
                .args(["status", "--json"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("run shoal status")
        })
        .collect();
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().ok()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            Some((v["leader_id"].as_u64(), v["term"].as_u64()?))
        })
        .collect()
}

fn index_of(f: &Fixture, id: u64) -> usize {
    f.ids
        .iter()
        .position(|i| *i == id)
        .expect("a known node id")
}

/// The (leader, term) that a majority of the cluster reports, the leader
/// being one of them.
fn agreed(f: &Fixture, nodes: &[usize], views: &[View]) -> Option<(usize, u64)> {
    let needed = f.c.nodes.len() / 2 + 1;
    let mut counts: BTreeMap<(u64, u64), Vec<usize>> = BTreeMap::new();
    for (&i, v) in nodes.iter().zip(views) {
        if let Some((Some(leader), term)) = v {
            counts.entry((*leader, *term)).or_default().push(i);
        }
    }
    counts.into_iter().find_map(|((leader, term), who)| {
        let l = index_of(f, leader);
        (who.len() >= needed && who.contains(&l)).then_some((l, term))
    })
}

#[derive(Debug)]
struct Settled {
    leader: usize,
    term: u64,
    /// From `since` until a majority first agreed on a leader.
    first_leader: Duration,
    /// From `since` until the leader that then held for the window.
    settled: Duration,
    /// Every term any of the asked nodes reported meanwhile.
    terms: BTreeSet<u64>,
}

/// Waits until a majority among `nodes` agrees on one leader that then
/// holds for [`WINDOW`]; panics after `within`.
fn settle(f: &Fixture, nodes: &[usize], since: Instant, within: Duration) -> Settled {
    let mut holding: Option<((usize, u64), Instant)> = None;
    let mut first_leader = None;
    let mut terms = BTreeSet::new();
    let mut seen = Vec::new();
    loop {
        let vs = views(f, nodes);
        terms.extend(vs.iter().flatten().map(|v| v.1));
        let now = agreed(f, nodes, &vs);
        if seen.last() != Some(&vs) {
            seen.push(vs.clone());
        }
        if now.is_some() && first_leader.is_none() {
            first_leader = Some(since.elapsed());
        }
        match (now, holding) {
            (Some(lt), Some((held, _))) if lt == held => {}
            (Some(lt), _) => holding = Some((lt, Instant::now())),
            (None, _) => holding = None,
        }
        if let Some(((leader, term), from)) = holding {
            if from.elapsed() >= WINDOW {
                return Settled {
                    leader,
                    term,
                    first_leader: first_leader.unwrap(),
                    settled: from.duration_since(since),
                    terms,
                };
            }
        }
        assert!(
            since.elapsed() < within,
            "no leader held for {WINDOW:?} among nodes {nodes:?} within {within:?}; \
             (leader id, term) seen, node by node: {seen:?}; ids {:?}",
            f.ids
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// --- writes and their outcomes --------------------------------------------

#[derive(Default, Debug)]
struct Writes {
    next: usize,
    acked: BTreeSet<String>,
    /// Failed on a side that cannot commit: must never appear.
    failed: BTreeSet<String>,
    /// Failed where it might still have committed: may appear or not.
    unknown: BTreeSet<String>,
    /// Durations of acknowledged writes.
    latencies: Vec<Duration>,
}

impl Writes {
    /// Adds a label to node-0's record through node `via`: the label key,
    /// and on failure the error text and how long it took.
    fn write(&mut self, c: &NsCluster, via: usize) -> (String, Result<(), (String, Duration)>) {
        self.next += 1;
        let key = format!("w{}", self.next);
        let started = Instant::now();
        let label = format!("{key}=1");
        let out = c.nodes[via].cli(&["node", "update", "node-0", "--label-add", &label]);
        let took = started.elapsed();
        if out.status.success() {
            self.acked.insert(key.clone());
            self.latencies.push(took);
            (key, Ok(()))
        } else {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            (key, Err((err, took)))
        }
    }

    /// A write that may fail (recorded as unknown if it does).
    fn write_any(&mut self, c: &NsCluster, via: usize) -> bool {
        let (key, r) = self.write(c, via);
        if r.is_err() {
            self.unknown.insert(key);
        }
        r.is_ok()
    }
}

fn write(f: &mut Fixture, via: usize) -> (String, Result<(), (String, Duration)>) {
    f.writes.write(&f.c, via)
}

/// A write that must be acknowledged.
fn write_ok(f: &mut Fixture, via: usize) {
    let (key, r) = write(f, via);
    if let Err((e, took)) = r {
        panic!("write {key} through node {via} failed after {took:?}: {e}");
    }
}

/// A write that must fail and never appear; returns its error and duration.
fn write_fails(f: &mut Fixture, via: usize) -> (String, Duration) {
    let (key, r) = write(f, via);
    match r {
        Ok(()) => panic!("write {key} through node {via} was acknowledged on the minority side"),
        Err((e, took)) => {
            f.writes.failed.insert(key);
            (e, took)
        }
    }
}

/// A write that may fail (recorded as unknown if it does).
fn write_any(f: &mut Fixture, via: usize) -> bool {
    f.writes.write_any(&f.c, via)
}

/// After healing: every member holds the leader's whole log, and the labels
/// read through every node are exactly the acknowledged writes plus some of
/// the unknown ones, never a failed one.
fn check_writes(f: &Fixture) {
    wait_for(Duration::from_secs(20), || {
        let st = f.c.nodes[0].json(&["status"]).ok()?;
        let members = st["members"].as_array()?;
        (members.len() == 3 && members.iter().all(|m| m["lag"] == 0)).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "members did not catch up with the leader's log: {:?}",
            f.c.nodes[0].json(&["status"])
        )
    });
    for (i, d) in f.c.nodes.iter().enumerate() {
        let nodes = d.json(&["node", "ls"]).expect("node ls");
        let labels: BTreeSet<String> = nodes
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["name"] == "node-0")
            .flat_map(|n| n["labels"].as_object().unwrap().keys().cloned())
            .filter(|k| k.starts_with('w'))
            .collect();
        let lost: Vec<_> = f.writes.acked.difference(&labels).collect();
        assert!(
            lost.is_empty(),
            "acknowledged writes lost (read through node {i}): {lost:?}"
        );
        let surfaced: Vec<_> = f.writes.failed.intersection(&labels).collect();
        assert!(
            surfaced.is_empty(),
            "writes that failed on the minority side appeared (read through node {i}): {surfaced:?}"
        );
        let stray: Vec<_> = labels
            .iter()
            .filter(|k| !f.writes.acked.contains(*k) && !f.writes.unknown.contains(*k))
            .collect();
        assert!(stray.is_empty(), "labels nobody wrote: {stray:?}");
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn figure(scenario: &str, what: &str, value: impl std::fmt::Display) {
    eprintln!("FIGURE {scenario}: {what} = {value}");
}

/// The settled leader before a fault, and its term.
fn initial(f: &Fixture) -> Settled {
    settle(f, &[0, 1, 2], Instant::now(), Duration::from_secs(20))
}

// --- scenarios ---------------------------------------------------------------

#[test]
fn a_cut_off_follower_changes_nothing_for_the_majority_and_cannot_write() {
    let Some(mut f) = three_managers() else {
        return;
    };
    let before = initial(&f);
    let leader = before.leader;
    let cut = (0..3).find(|i| *i != leader).unwrap();
    let other = (0..3).find(|i| *i != leader && *i != cut).unwrap();
    write_ok(&mut f, other);

    let t0 = Instant::now();
    f.c.net.partition(&[cut], &[leader, other]);
    let during = settle(&f, &[leader, other], t0, Duration::from_secs(20));
    assert_eq!(
        (during.leader, during.term),
        (leader, before.term),
        "the majority keeps its leader and term while a follower is cut off"
    );
    write_ok(&mut f, leader);
    write_ok(&mut f, other);
    let (err, took) = write_fails(&mut f, cut);
    assert!(err.contains("no leader"), "the cut-off node's error: {err}");
    assert!(
        took < Duration::from_secs(20),
        "the failing write took {took:?}"
    );
    let view = views(&f, &[cut])[0];
    assert_eq!(
        view.map(|v| v.0),
        Some(None),
        "the cut-off node knows no leader"
    );
    let cut_term = view.unwrap().1;

    let t1 = Instant::now();
    f.c.net.heal_all();
    let after = settle(&f, &[0, 1, 2], t1, Duration::from_secs(30));
    write_ok(&mut f, cut);
    check_writes(&f);
    let s = "minority partition";
    figure(
        s,
        "majority term moved while cut",
        during.term - before.term,
    );
    figure(
        s,
        "cut-off follower's term when healed",
        cut_term - before.term,
    );
    figure(s, "failing write took (ms)", ms(took));
    figure(
        s,
        "after heal: first agreed leader (ms)",
        ms(after.first_leader),
    );
    figure(s, "after heal: settled leader (ms)", ms(after.settled));
    figure(s, "after heal: term moved", after.term - before.term);
}

#[test]
fn a_leader_cut_off_from_the_majority_steps_aside_and_its_writes_never_appear() {
    let Some(mut f) = three_managers() else {
        return;
    };
    let before = initial(&f);
    let old = before.leader;
    let rest: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    write_ok(&mut f, rest[0]);

    let t0 = Instant::now();
    f.c.net.partition(&[old], &rest);
    // A write through the old leader at once, before it can know: proposed
    // there, it cannot commit and must fail. It runs while the majority
    // elects.
    f.writes.next += 1;
    let early_key = format!("w{}", f.writes.next);
    let (early, during, stepped_aside) = std::thread::scope(|scope| {
        let d = &f.c.nodes[old];
        let label = format!("{early_key}=1");
        let early = scope.spawn(move || {
            let started = Instant::now();
            let out = d.cli(&["node", "update", "node-0", "--label-add", &label]);
            (out, started.elapsed())
        });
        let during = settle(&f, &rest, t0, Duration::from_secs(20));
        // The old leader stops reporting itself as leader.
        let stepped_aside = wait_for(Duration::from_secs(10), || {
            let v = views(&f, &[old])[0]?;
            (v.0 != Some(f.ids[old])).then_some(t0.elapsed())
        })
        .expect("the cut-off leader still reports itself as leader");
        (early.join().unwrap(), during, stepped_aside)
    });
    let (early_out, early_took) = early;
    assert!(
        !early_out.status.success(),
        "a write through the cut-off leader was acknowledged"
    );
    f.writes.failed.insert(early_key);
    let early_err = String::from_utf8_lossy(&early_out.stderr).to_string();
    assert!(
        rest.contains(&during.leader) && during.term > before.term,
        "{during:?}"
    );
    let (err, took) = write_fails(&mut f, old);
    assert!(
        err.contains("no quorum"),
        "the cut-off leader's error: {err}"
    );
    assert!(
        early_took < Duration::from_secs(20),
        "{early_took:?}: {early_err}"
    );
    write_ok(&mut f, rest[0]);
    write_ok(&mut f, rest[1]);

    let t1 = Instant::now();
    f.c.net.heal_all();
    let after = settle(&f, &[0, 1, 2], t1, Duration::from_secs(30));
    write_ok(&mut f, old);
    check_writes(&f);
    let s = "leader cut off from the majority";
    figure(
        s,
        "majority: first agreed new leader (ms)",
        ms(during.first_leader),
    );
    figure(s, "majority: settled new leader (ms)", ms(during.settled));
    figure(s, "majority term moved", during.term - before.term);
    figure(
        s,
        "old leader reports no leadership by (ms, status answers after 2 s)",
        ms(stepped_aside),
    );
    figure(
        s,
        "write on the old leader at the cut failed after (ms)",
        ms(early_took),
    );
    figure(
        s,
        "write on the old leader later failed after (ms)",
        ms(took),
    );
    figure(s, "after heal: settled leader (ms)", ms(after.settled));
    figure(
        s,
        "after heal: term moved (from the majority's)",
        after.term - during.term,
    );
}

#[test]
fn a_flapping_link_settles_once_it_stops_and_keeps_acknowledged_writes() {
    let Some(mut f) = three_managers() else {
        return;
    };
    let before = initial(&f);
    let leader = before.leader;
    let peer = (0..3).find(|i| *i != leader).unwrap();
    let writer = (0..3).find(|i| *i != leader && *i != peer).unwrap();

    // The leader's link to one follower: cut 700 ms, up 500 ms, for 10 s,
    // while a node that keeps both its links writes.
    let stop = AtomicBool::new(false);
    let flaps = std::thread::scope(|scope| {
        let (c, writes) = (&f.c, &mut f.writes);
        let net = &c.net;
        let stop = &stop;
        let flapper = scope.spawn(move || {
            let started = Instant::now();
            let mut flaps = 0;
            while started.elapsed() < Duration::from_secs(10) {
                net.cut_link(leader, peer);
                std::thread::sleep(Duration::from_millis(700));
                net.heal_link(leader, peer);
                flaps += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            stop.store(true, Ordering::Relaxed);
            flaps
        });
        let mut ok = 0;
        let mut failed = 0;
        while !stop.load(Ordering::Relaxed) {
            if writes.write_any(c, writer) {
                ok += 1;
            } else {
                failed += 1;
            }
        }
        (flapper.join().unwrap(), ok, failed)
    });
    let (flaps, ok, failed) = flaps;
    let during_terms = views(&f, &[0, 1, 2]);
    let t1 = Instant::now();
    f.c.net.heal_all();
    let after = settle(&f, &[0, 1, 2], t1, Duration::from_secs(30));
    assert!(
        ok > 0,
        "no write was acknowledged through the node that kept its links"
    );
    write_ok(&mut f, peer);
    write_ok(&mut f, leader);
    check_writes(&f);
    let s = "flapping link";
    figure(s, "flaps (700 ms cut, 500 ms up)", flaps);
    figure(
        s,
        "writes acknowledged / failed during flapping",
        format!("{ok} / {failed}"),
    );
    figure(
        s,
        "terms when flapping stopped",
        format!("{during_terms:?}"),
    );
    figure(s, "after: settled leader (ms)", ms(after.settled));
    figure(s, "term moved overall", after.term - before.term);
}

#[test]
fn a_slow_lossy_link_keeps_the_cluster_available() {
    let Some(mut f) = three_managers() else {
        return;
    };
    let before = initial(&f);
    let leader = before.leader;
    let peer = (0..3).find(|i| *i != leader).unwrap();

    // 200 ms each way and 5 % loss each way between the leader and one
    // follower, for as long as the writes take.
    let t0 = Instant::now();
    f.c.net
        .impair(leader, peer, Duration::from_millis(200), 0.05);
    f.c.net
        .impair(peer, leader, Duration::from_millis(200), 0.05);
    for round in 0..5 {
        for via in 0..3 {
            let (key, r) = write(&mut f, via);
            if let Err((e, took)) = r {
                panic!("round {round}: write {key} through node {via} failed after {took:?}: {e}");
            }
        }
    }
    let written_in = t0.elapsed();
    let during = settle(&f, &[0, 1, 2], t0, Duration::from_secs(30));
    let lat = {
        let mut v = f.writes.latencies.clone();
        v.sort();
        v
    };
    f.c.net.heal_all();
    check_writes(&f);
    let s = "200 ms + 5 % loss on the leader's link to one follower";
    figure(s, "15 writes through all nodes took (ms)", ms(written_in));
    figure(
        s,
        "write latency median / max (ms)",
        format!("{} / {}", ms(lat[lat.len() / 2]), ms(lat[lat.len() - 1])),
    );
    figure(s, "term moved", during.term - before.term);
    figure(s, "leader changed", during.leader != leader);
}

#[test]
fn a_one_way_partition_settles_on_a_leader_the_majority_can_reach() {
    let Some(mut f) = three_managers() else {
        return;
    };
    let before = initial(&f);
    let leader = before.leader;
    let deaf = (0..3).find(|i| *i != leader).unwrap();
    let other = (0..3).find(|i| *i != leader && *i != deaf).unwrap();

    // The follower no longer hears the leader; it can still send to it.
    let t0 = Instant::now();
    f.c.net.cut(leader, deaf);
    let during = settle(&f, &[0, 1, 2], t0, Duration::from_secs(30));
    // Writes through the node with both links work.
    write_ok(&mut f, other);
    write_ok(&mut f, during.leader);
    // The deaf node's own writes may or may not get through.
    let deaf_ok = write_any(&mut f, deaf);
    let still = views(&f, &[0, 1, 2]);
    let t1 = Instant::now();
    f.c.net.heal_all();
    let after = settle(&f, &[0, 1, 2], t1, Duration::from_secs(30));
    write_ok(&mut f, deaf);
    check_writes(&f);
    let s = "one-way partition (leader -> follower dropped)";
    figure(s, "first agreed leader (ms)", ms(during.first_leader));
    figure(s, "settled leader (ms)", ms(during.settled));
    figure(s, "term moved while cut", during.term - before.term);
    figure(
        s,
        "settled on",
        if during.leader == leader {
            "the old leader"
        } else if during.leader == deaf {
            "the follower that could not hear it"
        } else {
            "the other follower"
        },
    );
    figure(s, "terms seen while cut", format!("{:?}", during.terms));
    figure(s, "views before healing", format!("{still:?}"));
    figure(
        s,
        "write through the deaf follower while cut succeeded",
        deaf_ok,
    );
    figure(s, "after heal: settled leader (ms)", ms(after.settled));
    figure(s, "after heal: term moved", after.term - during.term);
}
