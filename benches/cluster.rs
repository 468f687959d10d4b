//! Cluster-core benchmarks on real processes: the idle footprint of a fresh
//! daemon (and elections while idle), commit latency and throughput (through
//! the control API and through the leader's in-process Raft client), and
//! SIGKILL-the-leader failover.
//!
//! `cargo bench --bench cluster` (release build). Knobs, for quicker runs:
//! `BENCH_FAILOVER_ROUNDS` (20), `BENCH_IDLE_SECS` (60), `BENCH_WRITES` (20000).
//! Prints a table and, last, one JSON line with every figure.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{wait_for, Cluster};
use serde_json::json;
use shoal_cli::api::BenchCommitRequest;
use shoal_cli::ApiClient;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn client(c: &Cluster, i: usize) -> ApiClient {
    ApiClient::new(c.nodes[i].dir.join("shoal.sock")).with_timeout(Duration::from_secs(300))
}

/// Sequential or concurrent `POST /v1/dev/noop` through one node's socket.
async fn api_writes(api: &ApiClient, writers: usize, total: usize) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let per_writer = total / writers;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers {
        let api = api.clone();
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(per_writer);
            for _ in 0..per_writer {
                let t = Instant::now();
                api.noop().await.expect("noop write");
                lat.push(t.elapsed());
            }
            lat
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort();
    (all, elapsed)
}

/// CPU seconds (user + system) and resident memory of a process.
fn cpu_and_rss(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let after = stat.rsplit_once(") ").map(|x| x.1).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks as f64 / 100.0, rss_kb * 1024)
}

fn leader_term(c: &Cluster) -> Option<(usize, u64)> {
    let leader = c.leader()?;
    let term = c.nodes[leader].json(&["status"]).ok()?["term"].as_u64()?;
    Some((leader, term))
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let rounds = env_num("BENCH_FAILOVER_ROUNDS", 20) as usize;
    let idle_secs = env_num("BENCH_IDLE_SECS", 60);
    let writes = env_num("BENCH_WRITES", 20_000) as usize;
    let rt = tokio::runtime::Runtime::new().unwrap();

    let mut c = Cluster::new();
    c.init("node-a", "127.0.0.1");
    c.join("node-b", "127.0.0.2", "manager");
    c.join("node-c", "127.0.0.3", "manager");
    let leader = c.leader().expect("leader");
    let follower = (0..3).find(|i| *i != leader).unwrap();
    println!("3 managers on 127.0.0.1-3, leader {}", c.nodes[leader].name);

    let mut report = serde_json::Map::new();

    // --- idle, on the fresh cluster: spurious elections and footprint ---
    let (_, term_before) = leader_term(&c).expect("leader before idle");
    let before: Vec<(f64, u64)> = c
        .nodes
        .iter()
        .map(|d| cpu_and_rss(d.child.as_ref().unwrap().id()))
        .collect();
    std::thread::sleep(Duration::from_secs(idle_secs));
    let after: Vec<(f64, u64)> = c
        .nodes
        .iter()
        .map(|d| cpu_and_rss(d.child.as_ref().unwrap().id()))
        .collect();
    let (_, term_after) = leader_term(&c).expect("leader after idle");
    println!(
        "\nidle {idle_secs} s: term {term_before} -> {term_after} ({} elections)",
        term_after - term_before
    );
    let mut idle = Vec::new();
    for (i, d) in c.nodes.iter().enumerate() {
        let cpu_pct = (after[i].0 - before[i].0) / idle_secs as f64 * 100.0;
        let rss_mb = after[i].1 as f64 / 1024.0 / 1024.0;
        let role = if Some(i) == c.leader() {
            "leader"
        } else {
            "follower"
        };
        println!(
            "  {} ({role}): RSS {rss_mb:.1} MB, CPU {cpu_pct:.2}%",
            d.name
        );
        idle.push(json!({"node": d.name, "role": role, "rss_mb": rss_mb, "cpu_pct": cpu_pct}));
    }
    report.insert("idle_secs".into(), json!(idle_secs));
    report.insert("idle_elections".into(), json!(term_after - term_before));
    report.insert("idle".into(), json!(idle));

    // --- commit latency and throughput ---------------------------------
    println!(
        "\n{:<44} {:>10} {:>9} {:>9} {:>9}",
        "commit path", "commits/s", "p50 ms", "p99 ms", "max ms"
    );
    let single = (writes / 10).max(100);
    let rows: Vec<(&str, u32, usize)> = vec![
        ("raft client, 1 writer", 1, single),
        ("raft client, 64 writers", 64, writes),
        ("raft client, 256 writers", 256, writes),
    ];
    for (label, writers, count) in rows {
        let r = rt
            .block_on(client(&c, leader).bench_commit(&BenchCommitRequest {
                writers,
                count: count as u32,
            }))
            .expect("bench-commit");
        println!(
            "{label:<44} {:>10.0} {:>9.2} {:>9.2} {:>9.2}",
            r.commits_per_sec,
            r.p50_us as f64 / 1000.0,
            r.p99_us as f64 / 1000.0,
            r.max_us as f64 / 1000.0
        );
        report.insert(
            format!("raft_{writers}w"),
            json!({"commits_per_sec": r.commits_per_sec, "p50_ms": r.p50_us as f64 / 1000.0, "p99_ms": r.p99_us as f64 / 1000.0}),
        );
    }
    let api_rows: Vec<(&str, usize, usize, usize)> = vec![
        ("control API on the leader, 1 writer", leader, 1, single),
        ("control API on a follower, 1 writer", follower, 1, single),
        ("control API on the leader, 64 writers", leader, 64, writes),
    ];
    for (label, node, writers, count) in api_rows {
        let (lat, elapsed) = rt.block_on(api_writes(&client(&c, node), writers, count));
        let per_sec = lat.len() as f64 / elapsed.as_secs_f64();
        println!(
            "{label:<44} {per_sec:>10.0} {:>9.2} {:>9.2} {:>9.2}",
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(*lat.last().unwrap())
        );
        let key = if node == leader { "leader" } else { "follower" };
        report.insert(
            format!("api_{key}_{writers}w"),
            json!({"commits_per_sec": per_sec, "p50_ms": ms(percentile(&lat, 0.5)), "p99_ms": ms(percentile(&lat, 0.99))}),
        );
    }

    // --- failover -------------------------------------------------------
    let mut failovers = Vec::new();
    for round in 0..rounds {
        let (old, _) = leader_term(&c).expect("leader before kill");
        let survivors: Vec<ApiClient> = (0..3)
            .filter(|i| *i != old)
            .map(|i| client(&c, i).with_timeout(Duration::from_secs(2)))
            .collect();
        let killed_at = Instant::now();
        c.nodes[old].kill();
        let mut attempt = 0usize;
        let took = rt.block_on(async {
            loop {
                let api = &survivors[attempt % survivors.len()];
                attempt += 1;
                if api.noop().await.is_ok() {
                    return killed_at.elapsed();
                }
                if killed_at.elapsed() > Duration::from_secs(30) {
                    panic!("no write accepted within 30 s of killing the leader");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        failovers.push(took);
        println!(
            "failover {:>2}: killed {}, write accepted after {:.0} ms",
            round + 1,
            c.nodes[old].name,
            ms(took)
        );
        c.nodes[old].restart();
        // As the etcd baseline does: wait until the restarted node is a voter
        // again and every member's log matches the leader's (lag 0).
        wait_for(Duration::from_secs(60), || {
            let st = c.nodes[old].json(&["status"]).ok()?;
            let healthy = st["quorum"]["healthy"] == true && st["quorum"]["voters_ready"] == 3;
            let caught_up = st["members"]
                .as_array()?
                .iter()
                .all(|m| m["lag"].as_u64() == Some(0));
            (healthy && caught_up).then_some(())
        })
        .expect("cluster healthy again after restart");
    }
    if !failovers.is_empty() {
        failovers.sort();
        let (p50, p99, max) = (
            percentile(&failovers, 0.5),
            percentile(&failovers, 0.99),
            *failovers.last().unwrap(),
        );
        println!(
            "\nfailover over {rounds} rounds (SIGKILL leader -> write accepted): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            ms(p50),
            ms(p99),
            ms(max)
        );
        report.insert(
            "failover_ms".into(),
            json!({"rounds": rounds, "p50": ms(p50), "p99": ms(p99), "max": ms(max)}),
        );
    }
    println!("{}", serde_json::Value::Object(report));
}
