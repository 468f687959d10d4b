//! Scheduler at scale: one pass of `scheduler::schedule` over 1,000,000 pending
//! tasks of 1,000 mixed services (labels, constraints, reservations, host ports,
//! a per-node maximum, spread) on 5,000 nodes, from an empty cluster and from a
//! half-full one, and the same load on 500 and 50,000 nodes to show how the cost
//! grows with the node count. `apply` of the pass's `ApplyTaskChanges` is timed
//! separately. The scheduler places every placeable task in one pass (it has no
//! per-pass cap), so one pass is the whole job.
//!
//! `cargo bench -p shoal-raft --bench scheduler` (release build). Knobs:
//! `BENCH_SCENARIOS` (comma list of empty-5000, half-5000, empty-500,
//! empty-50000; all by default), `BENCH_SUMMARY_ONLY=1` (one timed pass per
//! scenario, no criterion runs). Every scenario prints one plain summary line.

mod common;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode};
use shoal_raft::{apply, schedule, ClusterState, Command, TaskChange};

use common::{build, count, heap, mib, peak, rate, reset_peak, secs, timed, vm_hwm, Shape};

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

const NOW_MS: u64 = 1_000_000;

struct Scenario {
    name: &'static str,
    shape: Shape,
    /// Whether criterion also times `apply` (a clone of the state per iteration).
    bench_apply: bool,
}

fn scenarios() -> Vec<Scenario> {
    let shape = |nodes, running| Shape {
        nodes,
        services: 1_000,
        pending: 1_000_000,
        stuck: 1_000,
        running,
    };
    vec![
        Scenario {
            name: "empty-5000",
            shape: shape(5_000, 0),
            bench_apply: true,
        },
        Scenario {
            name: "half-5000",
            shape: shape(5_000, 250_000),
            bench_apply: true,
        },
        Scenario {
            name: "empty-500",
            shape: shape(500, 0),
            bench_apply: false,
        },
        Scenario {
            name: "empty-50000",
            shape: shape(50_000, 0),
            bench_apply: false,
        },
    ]
}

/// A digest of the decisions in task id order, to compare passes across
/// scheduler changes (whatever order a version emits them in).
fn digest(changes: &[TaskChange]) -> u64 {
    let mut sorted: Vec<&TaskChange> = changes.iter().collect();
    sorted.sort_by(|a, b| id_of(a).cmp(id_of(b)));
    let mut hasher = DefaultHasher::new();
    for change in sorted {
        match change {
            TaskChange::Assign { task_id, node_id } => (0u8, task_id, node_id).hash(&mut hasher),
            TaskChange::Unassignable { task_id, reason } => {
                (1u8, task_id, reason).hash(&mut hasher)
            }
            other => format!("{other:?}").hash(&mut hasher),
        }
    }
    hasher.finish()
}

fn id_of(change: &TaskChange) -> &str {
    match change {
        TaskChange::Assign { task_id, .. } | TaskChange::Unassignable { task_id, .. } => task_id,
        _ => "",
    }
}

fn reserved_share(state: &ClusterState) -> f64 {
    let capacity: u64 = state
        .nodes
        .values()
        .filter(|n| common::usable(n))
        .map(|n| n.resources.nano_cpus)
        .sum();
    let used: u64 = state
        .tasks
        .values()
        .filter(|t| t.occupies_node())
        .map(|t| t.spec.resources.reserve_nano_cpus)
        .sum();
    used as f64 / capacity as f64
}

/// One timed pass and its apply, printed as plain lines.
fn summary(scenario: &Scenario, state: &ClusterState, built_in: Duration) -> Vec<TaskChange> {
    let state_heap = heap();
    let before = reset_peak();
    let (changes, scheduled, scheduled_cpu) = timed(|| schedule(state));
    let schedule_peak = peak() - before;
    let placed = changes
        .iter()
        .filter(|c| matches!(c, TaskChange::Assign { .. }))
        .count() as u64;
    let unassignable = changes.len() as u64 - placed;

    let mut applied = state.clone();
    let command = Command::ApplyTaskChanges {
        changes: changes.clone(),
        now_ms: NOW_MS,
    };
    let before = reset_peak();
    let (response, apply_time, apply_cpu) = timed(|| apply(&mut applied, &command));
    let apply_peak = peak() - before;
    assert!(!response.is_rejected(), "{response:?}");
    // The pass as the leader would commit it: one log entry.
    let entry_bytes = shoal_raft::codec::encode(&shoal_raft::LogPayload::V1(command))
        .expect("encode")
        .len();

    // The pass after: nothing left to place, the stuck tasks already explained.
    let (again, idle_pass, idle_cpu) = timed(|| schedule(&applied));
    assert!(again.is_empty(), "{} changes after the pass", again.len());

    let shape = scenario.shape;
    println!(
        "scheduler/{}: {} nodes, {} tasks ({} pending, {} running before), built in {}; \
         CPU reserved {:.0}% before, {:.0}% after",
        scenario.name,
        count(shape.nodes),
        count(state.tasks.len() as u64),
        count(shape.pending + shape.stuck),
        count(shape.running),
        secs(built_in),
        100.0 * reserved_share(state),
        100.0 * reserved_share(&applied),
    );
    println!(
        "scheduler/{}: schedule {} placed + {} unassignable in {} wall ({} CPU) = {} \
         placements/s wall ({} per CPU-second); apply {} wall ({} CPU) = {} changes/s wall; \
         next pass (nothing to place) {} wall ({} CPU); decisions digest {:016x}",
        scenario.name,
        count(placed),
        count(unassignable),
        secs(scheduled),
        secs(scheduled_cpu),
        rate(placed, scheduled),
        rate(placed, scheduled_cpu),
        secs(apply_time),
        secs(apply_cpu),
        rate(changes.len() as u64, apply_time),
        secs(idle_pass),
        secs(idle_cpu),
        digest(&changes),
    );
    println!(
        "scheduler/{}: heap: state {}, schedule peak +{}, apply peak +{}; process VmHWM {}; \
         the pass as one log entry: {} bytes",
        scenario.name,
        mib(state_heap),
        mib(schedule_peak),
        mib(apply_peak),
        mib(vm_hwm() as usize),
        count(entry_bytes as u64),
    );
    changes
}

fn bench(c: &mut Criterion) {
    for scenario in scenarios() {
        if !common::wanted(scenario.name) {
            continue;
        }
        let started = Instant::now();
        let state = build(scenario.shape);
        let built_in = started.elapsed();
        let changes = summary(&scenario, &state, built_in);
        if common::summary_only() {
            continue;
        }
        let mut group = c.benchmark_group(format!("scheduler/{}", scenario.name));
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5));
        group.bench_function("schedule", |b| b.iter_with_large_drop(|| schedule(&state)));
        if scenario.bench_apply {
            group.bench_function("apply", |b| {
                b.iter_batched(
                    || {
                        let command = Command::ApplyTaskChanges {
                            changes: changes.clone(),
                            now_ms: NOW_MS,
                        };
                        (state.clone(), command)
                    },
                    |(mut state, command)| {
                        apply(&mut state, &command);
                        (state, command)
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
