//! A real openraft node on the redb store, the way the daemon drives it: initialise,
//! write commands, snapshot, restart from disk.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::Config;
use shoal_raft::types::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use shoal_raft::{
    open, CaMaterial, Command, LogPayload, LogStore, NewNode, NodeId, Raft, RaftNode, Resources,
    Response, Role, StateMachineStore, StoreError, TypeConfig,
};

const DEADLINE: Duration = Duration::from_secs(10);

/// A single-member group never sends an RPC; every call fails loudly if it does.
struct NoPeers;

fn no_peer(target: NodeId) -> NetworkError {
    let error = std::io::Error::other(format!("no network in this test (peer {target})"));
    NetworkError::new(&error)
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeer;
    async fn new_client(&mut self, target: NodeId, _node: &RaftNode) -> NoPeer {
        NoPeer(target)
    }
}

struct NoPeer(NodeId);

impl RaftNetwork<TypeConfig> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse, RPCError<NodeId, RaftNode, RaftError<NodeId>>> {
        Err(RPCError::Network(no_peer(self.0)))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse,
        RPCError<NodeId, RaftNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(RPCError::Network(no_peer(self.0)))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest,
        _option: RPCOption,
    ) -> Result<VoteResponse, RPCError<NodeId, RaftNode, RaftError<NodeId>>> {
        Err(RPCError::Network(no_peer(self.0)))
    }
}

fn config() -> Arc<Config> {
    let config = Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        // Purge the log up to every snapshot, so a restart must use the snapshot.
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    };
    Arc::new(config.validate().unwrap())
}

/// Opens the store again. openraft's tasks drop their clones of the store shortly
/// after `shutdown` returns, so the file stays locked for a moment.
async fn reopen(path: &Path) -> (LogStore, StateMachineStore) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match open(path).await {
            Ok(stores) => return stores,
            Err(StoreError::InUse { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => panic!("cannot reopen the store: {error}"),
        }
    }
}

fn command(cmd: Command) -> LogPayload {
    LogPayload::V1(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_a_restart_through_snapshot_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");

    let (log, sm) = open(&path).await.unwrap();
    let state = sm.state();
    let raft = Raft::new(1, config(), NoPeers, log, sm).await.unwrap();
    let members = BTreeMap::from([(
        1,
        RaftNode {
            addr: "127.0.0.1:4240".to_owned(),
        },
    )]);
    raft.initialize(members).await.unwrap();
    raft.wait(Some(DEADLINE))
        .current_leader(1, "the only member leads")
        .await
        .unwrap();

    let init = Command::InitCluster {
        cluster_id: "c1".to_owned(),
        ca: CaMaterial {
            cert_pem: "CERT".to_owned(),
            key_pem: "KEY".to_owned(),
        },
        manager_token_hash: "m".to_owned(),
        worker_token_hash: "w".to_owned(),
        first_node: NewNode {
            name: "m1".to_owned(),
            addr: "127.0.0.1:4240".to_owned(),
            role: Role::Manager,
            resources: Resources::default(),
            version: "0.1.0".to_owned(),
            key_fingerprint: "aa11".to_owned(),
        },
        now_ms: 1,
    };
    let written = raft.client_write(command(init)).await.unwrap();
    assert_eq!(written.data, Response::Ok);

    // Snapshot here, then write more: the restart must use both the snapshot and
    // the log after it.
    raft.trigger().snapshot().await.unwrap();
    raft.wait(Some(DEADLINE))
        .snapshot(written.log_id, "snapshot of the init entry")
        .await
        .unwrap();
    assert!(state.snapshot_len() > 0);
    raft.wait(Some(DEADLINE))
        .purged(Some(written.log_id), "log purged up to the snapshot")
        .await
        .unwrap();

    let register = Command::RegisterNode {
        node: NewNode {
            name: "w1".to_owned(),
            addr: "127.0.0.2:4240".to_owned(),
            role: Role::Worker,
            resources: Resources::default(),
            version: "0.1.0".to_owned(),
            key_fingerprint: "bb22".to_owned(),
        },
        now_ms: 2,
    };
    let written = raft.client_write(command(register)).await.unwrap();
    assert_eq!(written.data, Response::NodeRegistered { id: 2 });
    let expected = state.read(|s| s.clone());
    let last_index = written.log_id.index;
    assert_eq!(state.last_applied_index(), last_index);

    raft.shutdown().await.unwrap();
    drop(raft);

    let (log, sm) = reopen(&path).await;
    let state = sm.state();
    let mut applied = state.subscribe();
    let raft = Raft::new(1, config(), NoPeers, log, sm).await.unwrap();
    tokio::time::timeout(DEADLINE, applied.wait_for(|index| *index >= last_index))
        .await
        .expect("the restarted node re-applies its log in time")
        .unwrap();
    assert_eq!(state.read(|s| s.clone()), expected);
    raft.shutdown().await.unwrap();
}
