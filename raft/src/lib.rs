//! The replicated model of a shoal cluster and its durable storage.
//!
//! This crate owns what every manager agrees on through Raft: the cluster state
//! ([`ClusterState`]), the commands that change it ([`Command`]), the one function
//! that applies them ([`apply`]), the versioned log format ([`LogPayload`]), and the
//! openraft storage (log, vote and snapshots) on a single redb file ([`store`]).
//!
//! It deliberately knows nothing of the network, TLS, or Docker: the composition
//! root wires [`Raft`] to a transport and drives it. `apply()` reads no clock and no
//! randomness; the leader stamps the time into every command.

pub mod codec;
pub mod orchestrator;
pub mod plan;
pub mod scheduler;
pub mod service;
pub mod state;
pub mod store;
pub mod types;
pub mod updater;

#[cfg(test)]
mod testing;

pub use codec::CodecError;
pub use orchestrator::reconcile;
pub use scheduler::schedule;
pub use service::{
    BalancePolicy, Constraint, ConstraintKey, ConstraintOp, DesiredState, FailureAction, Health,
    HealthCheck, PortSpec, Protocol, PublishMode, PullPolicy, ResourceSpec, RestartCondition,
    RestartPolicy, Service, ServiceMode, ServiceSpec, SpecError, Task, TaskId, TaskState,
    TaskStatusUpdate, UpdateConfig, UpdateOrder, UpdateState, UpdateStatus,
};
pub use state::{
    apply, apply_request, task_id, AppliedRequests, Availability, CaMaterial, ClusterState,
    Command, LogPayload, NewNode, NodeRecord, NodeStatus, Proposed, RequestId, Resources, Response,
    Role, TaskChange, TokenRecord, MAX_APPLIED_REQUESTS,
};
pub use store::{open, LogStore, StateHandle, StateMachineStore, StoreError};
pub use types::{
    Entry, LogId, Membership, NodeId, Raft, RaftNode, Snapshot, SnapshotMeta, StoredMembership,
    TypeConfig, Vote,
};

#[cfg(test)]
mod invariants {
    //! What this crate must not know about, checked in its manifest and its sources.

    const FORBIDDEN: [&str; 7] = [
        "quinn",
        "rustls",
        "bollard",
        "rcgen",
        "shoal-net",
        "shoal-cli",
        "axum",
    ];

    #[test]
    fn the_model_knows_nothing_of_network_or_docker() {
        let root = env!("CARGO_MANIFEST_DIR");
        let manifest = std::fs::read_to_string(format!("{root}/Cargo.toml")).unwrap();
        let mut sources = Vec::new();
        for entry in std::fs::read_dir(format!("{root}/src")).unwrap() {
            let path = entry.unwrap().path();
            sources.push((path.clone(), std::fs::read_to_string(&path).unwrap()));
        }
        assert!(sources.len() >= 5, "sources not found under {root}/src");
        for name in FORBIDDEN {
            let dependency = format!("\n{name}");
            assert!(
                !manifest.contains(&dependency),
                "Cargo.toml depends on {name}"
            );
            let crate_name = name.replace('-', "_");
            for (path, text) in &sources {
                for line in text.lines().map(str::trim_start) {
                    let imports = line.starts_with(&format!("use {crate_name}"))
                        || line.contains(&format!(" {crate_name}::"));
                    assert!(!imports, "{} uses {crate_name}: {line}", path.display());
                }
            }
        }
    }
}
