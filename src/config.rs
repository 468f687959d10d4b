//! Timing and limits of a running node, in one place.

use std::time::Duration;

use anyhow::Result;

/// Environment variable for tests that need snapshots sent to lagging
/// nodes: a snapshot every N log entries (and at most N entries kept behind
/// it) instead of every [`DEFAULT_SNAPSHOT_EVERY`].
pub const SNAPSHOT_EVERY_ENV: &str = "SHOAL_SNAPSHOT_EVERY";
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 5_000;
const MAX_SNAPSHOT_EVERY: u64 = 1_000_000;

/// The snapshot interval from the environment variable's value, if set.
pub fn snapshot_every(value: Option<&str>) -> Result<u64> {
    let Some(text) = value else {
        return Ok(DEFAULT_SNAPSHOT_EVERY);
    };
    match text.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_SNAPSHOT_EVERY).contains(&n) => Ok(n),
        _ => anyhow::bail!(
            "{SNAPSHOT_EVERY_ENV}: {text:?} is not allowed; allowed: a whole number of log entries from 1 to {MAX_SNAPSHOT_EVERY} (default {DEFAULT_SNAPSHOT_EVERY})"
        ),
    }
}

/// How fast the cluster reacts. The defaults favour fast failover on a LAN.
///
/// openraft 0.9 makes a follower of a live leader wait the leader lease (the
/// maximum election timeout) plus a random election timeout before it
/// campaigns, and checks that on its tick (1.5 Raft heartbeats). With these
/// values a dead leader is replaced after 300 + 150..300 ms plus up to one
/// tick (measured: 0.57-0.73 s to the first accepted write); a follower whose
/// log is behind waits twice the maximum more, so the up-to-date one wins.
/// The 120 ms heartbeat keeps an idle cluster cheap while leaving several
/// heartbeats before anyone campaigns.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Raft leader heartbeat.
    pub raft_heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// How often every node tells the leader it is alive.
    pub heartbeat_interval: Duration,
    /// A node silent for this long is written `down`.
    pub heartbeat_timeout: Duration,
    /// How often the leader loop looks at liveness and membership.
    pub leader_tick: Duration,
    /// Dialing a peer.
    pub connect_timeout: Duration,
    /// A forwarded operation or a join, end to end.
    pub request_timeout: Duration,
    /// A single Raft write waiting to commit.
    pub commit_timeout: Duration,
    /// `status` asks the leader this long before answering from local state.
    pub status_timeout: Duration,
    /// Joining, end to end, as the joiner sees it.
    pub join_timeout: Duration,
}

impl Timing {
    pub fn with_heartbeat_timeout(heartbeat_timeout: Duration) -> Timing {
        // Four heartbeats per timeout window: one lost datagram burst does not
        // mark a node down.
        let heartbeat_interval = (heartbeat_timeout / 4).max(Duration::from_millis(50));
        Timing {
            raft_heartbeat: Duration::from_millis(120),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            heartbeat_interval,
            heartbeat_timeout,
            // Orchestration also runs on every applied change; the tick is
            // for what time alone changes (liveness, restart delays).
            leader_tick: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            commit_timeout: Duration::from_secs(5),
            status_timeout: Duration::from_secs(2),
            join_timeout: Duration::from_secs(10),
        }
    }

    /// The same, with the Raft election timeout `min` (campaigns after the leader
    /// lease of `2 * min` plus a random `min..2 * min`) and a Raft heartbeat of
    /// 4/5 of `min`. openraft also gives each AppendEntries one heartbeat to
    /// complete, so a longer timeout is also more slack for replication on a
    /// loaded machine.
    pub fn with_election_timeout(self, min: Duration) -> Timing {
        Timing {
            raft_heartbeat: min * 4 / 5,
            election_timeout_min: min,
            election_timeout_max: min * 2,
            ..self
        }
    }

    pub fn raft_config(&self, cluster_name: &str) -> Result<openraft::Config> {
        let snapshot_every = snapshot_every(std::env::var(SNAPSHOT_EVERY_ENV).ok().as_deref())?;
        let config = openraft::Config {
            cluster_name: cluster_name.to_string(),
            heartbeat_interval: self.raft_heartbeat.as_millis() as u64,
            election_timeout_min: self.election_timeout_min.as_millis() as u64,
            election_timeout_max: self.election_timeout_max.as_millis() as u64,
            install_snapshot_timeout: 10_000,
            // Bounded batches on the wire: an entry holds up to 256 commands
            // (see node::run_proposer), so 64 entries stay well below the
            // frame limit for ordinary commands.
            max_payload_entries: 64,
            snapshot_max_chunk_size: 4 * 1024 * 1024,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
            // The log kept behind a snapshot lets a briefly absent follower
            // catch up from the log; one behind by more gets the snapshot.
            max_in_snapshot_log_to_keep: snapshot_every.min(1_000),
            ..Default::default()
        };
        Ok(config.validate()?)
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing::with_heartbeat_timeout(Duration::from_secs(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_election_timeout_sets_the_raft_timings() {
        let default = Timing::default();
        let same = Timing::default().with_election_timeout(Duration::from_millis(150));
        assert_eq!(
            (
                same.raft_heartbeat,
                same.election_timeout_min,
                same.election_timeout_max
            ),
            (
                default.raft_heartbeat,
                default.election_timeout_min,
                default.election_timeout_max
            )
        );
        let slow = Timing::default().with_election_timeout(Duration::from_secs(1));
        assert_eq!(slow.raft_heartbeat, Duration::from_millis(800));
        assert_eq!(slow.election_timeout_max, Duration::from_secs(2));
        assert_eq!(slow.heartbeat_timeout, default.heartbeat_timeout);
        let config = slow.raft_config("c").unwrap();
        assert_eq!(
            (
                config.heartbeat_interval,
                config.election_timeout_min,
                config.election_timeout_max
            ),
            (800, 1000, 2000)
        );
    }

    #[test]
    fn the_snapshot_interval_is_a_bounded_whole_number() {
        assert_eq!(snapshot_every(None).unwrap(), DEFAULT_SNAPSHOT_EVERY);
        assert_eq!(snapshot_every(Some("64")).unwrap(), 64);
        for bad in ["0", "-3", "ten", "", "1000001"] {
            let e = snapshot_every(Some(bad)).unwrap_err().to_string();
            assert!(
                e.contains(SNAPSHOT_EVERY_ENV) && e.contains("allowed"),
                "{e}"
            );
        }
    }
}
