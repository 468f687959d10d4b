//! `shoal dev simulate` at a CI size: three real manager processes and 50
//! simulated workers on the in-memory engine. The command fails unless the
//! exact number of tasks runs, in the leader's view and in the workers'
//! engines, after the deploy (with the leader killed halfway) and again
//! after a tenth of the workers is killed; this test checks that it
//! succeeded and what its report says.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_shoal");

#[test]
fn fifty_workers_run_two_thousand_tasks_through_a_failover_and_an_agent_loss() {
    let work = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["--log-level", "warn", "dev", "simulate"])
        .args(["--agents", "50", "--tasks", "2000", "--services", "10"])
        .args(["--kill-fraction", "0.1", "--start-delay", "50ms"])
        // Generous for a loaded CI machine; a run takes seconds.
        .args(["--step-timeout", "90s"])
        .arg("--work-dir")
        .arg(work.path())
        .env("SHOAL_LOG", "info")
        .output()
        .expect("run shoal dev simulate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        for m in ["m1", "m2", "m3"] {
            let log =
                std::fs::read_to_string(work.path().join(format!("{m}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "--- {m}.log (last lines, newest first)\n{}",
                tail.join("\n")
            );
        }
        panic!("simulate failed ({}):\n{stderr}\n{stdout}", out.status);
    }
    let last = stdout.lines().last().expect("a report line");
    let report: Value = serde_json::from_str(last).expect("the last line is JSON");
    let num = |k: &str| {
        report[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing: {report}"))
    };
    assert_eq!(report["agents"], 50);
    assert_eq!(report["tasks"], 2000);
    assert_eq!(report["agents_killed"], 5);
    // Exactly the deployed count, after the failover and after the loss.
    assert_eq!(report["running_after_converge"], 2000, "{report}");
    assert_eq!(report["running_at_end"], 2000, "{report}");
    for key in ["join_s", "converge_s", "failover_s", "reschedule_s"] {
        assert!(num(key) > 0.0, "{key}: {report}");
    }
    // The lost workers are noticed after the heartbeat timeout (2 s), so
    // rescheduling cannot be faster than that.
    assert!(num("reschedule_s") >= 2.0, "{report}");
    // A cluster this small keeps the configured cadence: beats every
    // 500 ms, down after 2 s (the period grows only in large clusters).
    assert_eq!(report["heartbeat_period_ms"], 500, "{report}");
    assert_eq!(report["down_timeout_ms"], 2000, "{report}");
    assert!(num("leader_rss_mb") > 0.0, "{report}");
    assert!(num("last_log_index") > 0.0, "{report}");
    // The final state (snapshot plus the log after it) holds 2,000 tasks:
    // far more than the 0.01 MB the report rounds to.
    assert!(num("state_mb") > 0.1, "{report}");
    // The snapshot built from it holds that state (and the recent request
    // ids besides).
    assert!(num("snapshot_mb") >= num("state_mb"), "{report}");
    assert!(num("snapshot_build_s") < 30.0, "{report}");
    // Every worker follows the endpoint table, as a real node does. The
    // services publish no ports and no worker's DNS is asked anything, so
    // each gets the services' names and the tables' names, but neither
    // the tasks' nodes nor the node records (a worker gets the records of
    // the nodes it routes to): some frames, far less than the 19 MB the
    // whole table sent to every worker once came to.
    assert!(num("endpoint_feed_mb") > 0.0, "{report}");
    assert!(num("endpoint_feed_mb") < 0.5, "{report}");
    eprintln!(
        "simulate: {report} ({:.1} s in all)",
        started.elapsed().as_secs_f64()
    );
    assert!(started.elapsed() < Duration::from_secs(300));
}
