//! The state machine at 100,000 tasks: apply throughput of the commands a busy
//! leader commits (the orchestrator's creates, the scheduler's assignments, the
//! agents' status reports), and snapshot encode/decode time and size, both with
//! the codec alone and through the store (a temporary redb file: build =
//! encode + write + fsync, install = decode + write + fsync + swap).
//!
//! The state is built through the store's own `apply`, as a cluster would
//! build it: 1,000 registered nodes, 100 mixed services (the scheduler bench's
//! mix) of 100,000 tasks in all, created by `reconcile`, placed by `schedule`
//! and reported running by their nodes.
//!
//! `cargo bench -p shoal-raft --bench state` (release build). Knob:
//! `BENCH_SUMMARY_ONLY=1` (plain summary lines, no criterion runs).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload};
use shoal_raft::{
    apply, codec, reconcile, schedule, CaMaterial, ClusterState, Command, Entry, LogId, LogPayload,
    Membership, NewNode, Resources, Role, StateMachineStore, TaskChange, TaskState,
    TaskStatusUpdate,
};

use common::{count, heap, mib, rate, secs, timed, vm_hwm, CPU, GIB};

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

const NODES: u64 = 1_000;
const SERVICES: u64 = 100;
const TASKS: u64 = 100_000;
/// Changes per `ApplyTaskChanges` command, as the leader loop would batch a pass.
const BATCH: usize = 1_000;

struct Log {
    index: u64,
    now_ms: u64,
}

impl Log {
    fn entry(&mut self, payload: EntryPayload<shoal_raft::TypeConfig>) -> Entry {
        self.index += 1;
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload,
        }
    }

    fn commands(&mut self, commands: Vec<Command>) -> Entry {
        self.entry(EntryPayload::Normal(LogPayload::V1Batch(commands)))
    }

    fn command(&mut self, command: Command) -> Entry {
        self.entry(EntryPayload::Normal(LogPayload::V1(command)))
    }

    fn now(&mut self) -> u64 {
        self.now_ms += 10;
        self.now_ms
    }
}

fn new_node(id: u64) -> NewNode {
    NewNode {
        name: format!("node-{id:05}"),
        addr: format!("10.0.{}.{}:4240", id >> 8, id & 255),
        role: if id <= 3 { Role::Manager } else { Role::Worker },
        resources: Resources {
            nano_cpus: 64 * CPU,
            memory_bytes: 256 * GIB,
        },
        version: "0.1.0".to_owned(),
        key_fingerprint: format!("{id:064x}"),
    }
}

async fn apply_entries(sm: &mut StateMachineStore, entries: Vec<Entry>) {
    for response in sm.apply(entries).await.expect("apply") {
        assert!(!response.is_rejected(), "{response:?}");
    }
}

/// Per-node `ReportTaskStatus` commands moving every assigned task to running.
fn running_reports(state: &ClusterState, now_ms: u64) -> Vec<Command> {
    let mut by_node: BTreeMap<u64, Vec<TaskStatusUpdate>> = BTreeMap::new();
    for task in state.tasks.values() {
        if task.state == TaskState::Assigned {
            by_node
                .entry(task.node_id.expect("assigned"))
                .or_default()
                .push(TaskStatusUpdate {
                    task_id: task.id.clone(),
                    state: TaskState::Running,
                    message: "running".to_owned(),
                    error: String::new(),
                    exit_code: None,
                    container_id: Some(format!("{:064x}", task.id.len() as u64 ^ now_ms)),
                    health: None,
                    at_ms: now_ms,
                });
        }
    }
    by_node
        .into_iter()
        .map(|(node_id, updates)| Command::ReportTaskStatus {
            node_id,
            updates,
            now_ms,
        })
        .collect()
}

fn batches(changes: Vec<TaskChange>, now_ms: u64) -> Vec<Command> {
    changes
        .chunks(BATCH)
        .map(|chunk| Command::ApplyTaskChanges {
            changes: chunk.to_vec(),
            now_ms,
        })
        .collect()
}

/// One command per entry, timed; returns (changes, wall, CPU).
async fn timed_apply(
    sm: &mut StateMachineStore,
    log: &mut Log,
    commands: Vec<Command>,
    changes: usize,
) -> (usize, usize, Duration, Duration) {
    let entries: Vec<Entry> = commands.into_iter().map(|c| log.command(c)).collect();
    let n = entries.len();
    let wall = std::time::Instant::now();
    let cpu = common::thread_cpu();
    apply_entries(sm, entries).await;
    (
        n,
        changes,
        wall.elapsed(),
        common::thread_cpu().saturating_sub(cpu),
    )
}

fn report(what: &str, (commands, changes, wall, cpu): (usize, usize, Duration, Duration)) {
    println!(
        "state/build: {what}: {} commands, {} changes in {} wall ({} CPU) = {} changes/s, {} \
         commands/s",
        count(commands as u64),
        count(changes as u64),
        secs(wall),
        secs(cpu),
        rate(changes as u64, wall),
        rate(commands as u64, wall),
    );
}

/// Builds the 100k-task cluster through the store's `apply`.
async fn build(sm: &mut StateMachineStore, log: &mut Log) {
    let now_ms = log.now();
    let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], None);
    let first = log.entry(EntryPayload::Membership(membership));
    let init = log.command(Command::InitCluster {
        cluster_id: common::CLUSTER_ID.to_owned(),
        ca: CaMaterial {
            cert_pem: "-----BEGIN CERTIFICATE-----\n".repeat(12),
            key_pem: "-----BEGIN PRIVATE KEY-----\n".repeat(4),
        },
        manager_token_hash: "0".repeat(64),
        worker_token_hash: "1".repeat(64),
        first_node: new_node(1),
        now_ms,
    });
    apply_entries(sm, vec![first, init]).await;
    let registers: Vec<Command> = (2..=NODES)
        .map(|id| Command::RegisterNode {
            node: new_node(id),
            now_ms,
        })
        .collect();
    let entries = registers
        .chunks(256)
        .map(|c| log.commands(c.to_vec()))
        .collect();
    apply_entries(sm, entries).await;
    // The bench's labels: zone, disk and rack.
    let labels: Vec<Command> = (1..=NODES)
        .map(|id| Command::UpdateNode {
            id,
            availability: None,
            labels_add: common::node(id, NODES).labels,
            labels_rm: Vec::new(),
            name: None,
            now_ms,
        })
        .collect();
    let entries = labels
        .chunks(256)
        .map(|c| log.commands(c.to_vec()))
        .collect();
    apply_entries(sm, entries).await;
    let counts = common::replica_counts(SERVICES, TASKS);
    let creates: Vec<Command> = counts
        .iter()
        .enumerate()
        .map(|(i, &replicas)| Command::CreateService {
            spec: common::mixed_spec(i as u64, replicas),
            now_ms,
        })
        .collect();
    let entry = log.commands(creates);
    apply_entries(sm, vec![entry]).await;

    let now_ms = log.now();
    let creates = sm.state().read(|s| reconcile(s, now_ms));
    let n = creates.len();
    report(
        "ApplyTaskChanges, 1,000 creates each, 0 -> 100k tasks",
        timed_apply(sm, log, batches(creates, now_ms), n).await,
    );
    let now_ms = log.now();
    let assigns = sm.state().read(schedule);
    let n = assigns.len();
    report(
        "ApplyTaskChanges, 1,000 assignments each",
        timed_apply(sm, log, batches(assigns, now_ms), n).await,
    );
    let now_ms = log.now();
    let reports = sm.state().read(|s| running_reports(s, now_ms));
    report(
        "ReportTaskStatus, one per node, assigned -> running",
        timed_apply(sm, log, reports, TASKS as usize).await,
    );
}

/// The benchmarks' inputs on the 100k state: a scale-up's creates, their
/// assignments, and the reports of the new tasks running.
struct Steps {
    base: ClusterState,
    create: Command,
    created: ClusterState,
    assign: Command,
    assigned: ClusterState,
    reports: Vec<Command>,
}

fn steps(base: ClusterState) -> Steps {
    let now_ms = base.created_at_ms + 1_000_000;
    // Ten services each grow by 100: one pass's 1,000 creates.
    let mut scaled = base.clone();
    let names: Vec<String> = scaled.services.keys().take(10).cloned().collect();
    for name in names {
        let replicas = scaled.services[&name].spec.replicas().expect("replicated") + 100;
        let response = apply(
            &mut scaled,
            &Command::ScaleService {
                name,
                replicas,
                now_ms,
            },
        );
        assert!(!response.is_rejected(), "{response:?}");
    }
    let changes = reconcile(&scaled, now_ms);
    assert_eq!(changes.len(), BATCH, "one pass of creates");
    let create = Command::ApplyTaskChanges { changes, now_ms };
    let mut created = scaled.clone();
    apply(&mut created, &create);
    let changes = schedule(&created);
    assert_eq!(changes.len(), BATCH, "one pass of assignments");
    let assign = Command::ApplyTaskChanges { changes, now_ms };
    let mut assigned = created.clone();
    apply(&mut assigned, &assign);
    let reports = running_reports(&assigned, now_ms);
    Steps {
        base: scaled,
        create,
        created,
        assign,
        assigned,
        reports,
    }
}

fn apply_all(state: &mut ClusterState, commands: &[Command]) {
    for command in commands {
        apply(state, command);
    }
}

fn summary_steps(steps: &Steps) {
    let mut state = steps.base.clone();
    let (_, wall, cpu) = timed(|| apply(&mut state, &steps.create));
    println!(
        "state/apply: ApplyTaskChanges of 1,000 creates on {} tasks: {} wall ({} CPU) = {} \
         changes/s",
        count(steps.base.tasks.len() as u64),
        secs(wall),
        secs(cpu),
        rate(BATCH as u64, wall)
    );
    let mut state = steps.created.clone();
    let (_, wall, cpu) = timed(|| apply(&mut state, &steps.assign));
    println!(
        "state/apply: ApplyTaskChanges of 1,000 assignments on {} tasks: {} wall ({} CPU) = {} \
         changes/s",
        count(steps.created.tasks.len() as u64),
        secs(wall),
        secs(cpu),
        rate(BATCH as u64, wall)
    );
    let mut state = steps.assigned.clone();
    let (_, wall, cpu) = timed(|| apply_all(&mut state, &steps.reports));
    println!(
        "state/apply: ReportTaskStatus, {} commands with 1,000 updates in all, on {} tasks: {} \
         wall ({} CPU) = {} updates/s",
        count(steps.reports.len() as u64),
        count(steps.assigned.tasks.len() as u64),
        secs(wall),
        secs(cpu),
        rate(BATCH as u64, wall)
    );
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let (_log_store, mut sm) = rt
        .block_on(shoal_raft::open(&dir.path().join("leader.redb")))
        .expect("open store");
    let mut log = Log {
        index: 0,
        now_ms: 1_000,
    };
    let (_, wall, _) = timed(|| rt.block_on(build(&mut sm, &mut log)));
    let before = heap();
    let state = sm.state().read(|s| s.clone());
    let state_heap = heap() - before;
    println!(
        "state/build: {} nodes, {} services, {} tasks ({} running) in {}; state heap {}",
        count(state.nodes.len() as u64),
        count(state.services.len() as u64),
        count(state.tasks.len() as u64),
        count(
            state
                .tasks
                .values()
                .filter(|t| t.state == TaskState::Running)
                .count() as u64
        ),
        secs(wall),
        mib(state_heap),
    );

    // Snapshots: the codec alone, then through the store.
    let (bytes, enc_wall, enc_cpu) = timed(|| codec::encode(&state).expect("encode"));
    let (decoded, dec_wall, dec_cpu) =
        timed(|| codec::decode::<ClusterState>(&bytes).expect("decode"));
    assert!(decoded == state);
    drop(decoded);
    println!(
        "state/snapshot: codec: {} bytes ({} per task); encode {} wall ({} CPU), decode {} wall \
         ({} CPU)",
        count(bytes.len() as u64),
        count(bytes.len() as u64 / TASKS),
        secs(enc_wall),
        secs(enc_cpu),
        secs(dec_wall),
        secs(dec_cpu),
    );
    let (snapshot, build_wall, build_cpu) = timed(|| {
        rt.block_on(async {
            let mut builder = sm.get_snapshot_builder().await;
            builder.build_snapshot().await.expect("build snapshot")
        })
    });
    let data = snapshot.snapshot.into_inner();
    let meta = snapshot.meta;
    let (_follower_log, mut follower) = rt
        .block_on(shoal_raft::open(&dir.path().join("follower.redb")))
        .expect("open store");
    let install_data = data.clone();
    let (_, install_wall, install_cpu) = timed(|| {
        rt.block_on(async {
            follower
                .install_snapshot(&meta, Box::new(Cursor::new(install_data)))
                .await
                .expect("install snapshot")
        })
    });
    assert!(
        follower.state().read(|s| *s == state),
        "installed state differs"
    );
    // The store's build clones the state under its read lock before encoding.
    let (copy, clone_wall, clone_cpu) = timed(|| state.clone());
    drop(copy);
    println!(
        "state/snapshot: store: {} bytes; build (clone + encode + redb write + fsync) {} wall \
         ({} CPU on this thread, the write runs on tokio's blocking pool); install (decode + \
         write + fsync) {} wall ({} CPU on this thread); a clone of the state alone {} wall \
         ({} CPU); process VmHWM {}",
        count(data.len() as u64),
        secs(build_wall),
        secs(build_cpu),
        secs(install_wall),
        secs(install_cpu),
        secs(clone_wall),
        secs(clone_cpu),
        mib(vm_hwm() as usize),
    );

    let steps = steps(state.clone());
    summary_steps(&steps);
    if common::summary_only() {
        return;
    }

    let mut group = c.benchmark_group("state/100k");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    group.bench_function("apply 1,000 creates", |b| {
        b.iter_batched(
            || steps.base.clone(),
            |mut state| {
                apply(&mut state, &steps.create);
                state
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("apply 1,000 assignments", |b| {
        b.iter_batched(
            || steps.created.clone(),
            |mut state| {
                apply(&mut state, &steps.assign);
                state
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("apply reports of 1,000 tasks running", |b| {
        b.iter_batched(
            || steps.assigned.clone(),
            |mut state| {
                apply_all(&mut state, &steps.reports);
                state
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("snapshot encode (codec)", |b| {
        b.iter(|| codec::encode(&state).expect("encode"))
    });
    group.bench_function("snapshot decode (codec)", |b| {
        b.iter(|| codec::decode::<ClusterState>(&bytes).expect("decode"))
    });
    group.bench_function("snapshot build (store)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut builder = sm.get_snapshot_builder().await;
                builder.build_snapshot().await.expect("build snapshot")
            })
        })
    });
    group.bench_function("snapshot install (store)", |b| {
        b.iter_batched(
            || Box::new(Cursor::new(data.clone())),
            |cursor| {
                rt.block_on(follower.install_snapshot(&meta, cursor))
                    .expect("install snapshot")
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
