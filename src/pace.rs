//! Pacing of the leader's passes over the whole state.
//!
//! The orchestration pass (reconcile, then schedule), the task dispatcher's
//! scan and the build of the endpoint table each walk every task. Started
//! after every applied entry, they are cheap in a small cluster; with
//! 100,000 tasks each takes tens of milliseconds, task reports arrive in a
//! steady flow, and the passes ran back to back: together they kept the
//! leader's cores busy and its Raft heartbeats missed their 120 ms deadline,
//! so the followers called elections over and over (BENCHMARKS.md,
//! "Simulated cluster").
//!
//! So a pass that took `busy` is followed by a pause of at least
//! `busy * (100 - DUTY_PERCENT) / DUTY_PERCENT`: each kind of pass uses at
//! most [`DUTY_PERCENT`] of a core however large the state, and a small
//! cluster keeps its short pauses (the caller's minimum). A pass also runs
//! where it cannot hold up the runtime's other tasks ([`timed_pass`]).

use std::time::{Duration, Instant};

/// The most of a core one kind of pass may use, in percent.
pub const DUTY_PERCENT: u32 = 20;

/// The longest pause pacing adds: a pass slower than a quarter second is
/// still repeated at least this often.
pub const MAX_PAUSE: Duration = Duration::from_secs(1);

/// How long to wait after a pass that took `busy` before the next one,
/// never less than `min_pause`.
pub fn pause_after(busy: Duration, min_pause: Duration) -> Duration {
    let paced = busy * (100 - DUTY_PERCENT) / DUTY_PERCENT;
    paced.min(MAX_PAUSE).max(min_pause)
}

/// Runs `f`, a pass over the whole state, and returns what it took. On a
/// multi-threaded runtime it runs in place of a worker
/// (`block_in_place`): the worker's other tasks (Raft, QUIC connections)
/// move to another thread instead of waiting behind it.
pub fn timed_pass<R>(f: impl FnOnce() -> R) -> (R, Duration) {
    let start = Instant::now();
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    let result = if multi_thread {
        tokio::task::block_in_place(f)
    } else {
        f()
    };
    (result, start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_pass_is_followed_by_four_times_its_length_within_bounds() {
        let min = 2 * MS;
        for (busy, pause) in [
            (Duration::ZERO, min),
            (MS / 10, min),
            (MS, 4 * MS),
            (40 * MS, 160 * MS),
            (250 * MS, MAX_PAUSE),
            (Duration::from_secs(3), MAX_PAUSE),
        ] {
            assert_eq!(pause_after(busy, min), pause, "after {busy:?}");
        }
        // The caller's minimum wins over a short pace and over the cap.
        assert_eq!(pause_after(MS, 20 * MS), 20 * MS);
        assert_eq!(
            pause_after(Duration::from_secs(9), 2 * MAX_PAUSE),
            2 * MAX_PAUSE
        );
    }

    #[test]
    fn the_share_of_a_core_stays_at_the_duty_cycle() {
        for busy_ms in [5u64, 20, 50, 200] {
            let busy = Duration::from_millis(busy_ms);
            let pause = pause_after(busy, MS);
            let share = busy.as_secs_f64() / (busy + pause).as_secs_f64();
            assert!(
                (share - f64::from(DUTY_PERCENT) / 100.0).abs() < 1e-9,
                "{busy_ms} ms: {share}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timed_pass_returns_its_result_and_duration_on_either_runtime() {
        let (value, took) = timed_pass(|| {
            std::thread::sleep(5 * MS);
            7
        });
        assert_eq!(value, 7);
        assert!(took >= 5 * MS, "{took:?}");
        let on_current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let std_thread =
            std::thread::spawn(move || on_current.block_on(async { timed_pass(|| 3).0 }));
        assert_eq!(std_thread.join().unwrap(), 3);
    }
}
