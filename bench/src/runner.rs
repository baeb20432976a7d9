//! The load loop: N tasks running operations back to back, primed, then
//! warmed up, then measured, each into its own [`TaskRecord`].

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Barrier, watch};
use tokio::task::JoinSet;

use crate::error::{BenchError, Result};
use crate::recorder::TaskRecord;

/// One task's operations.
pub(crate) trait Step: Send + 'static {
    /// Runs one operation. Returns when the pooled connection was checked
    /// out, for workloads that check one out themselves.
    fn step(&mut self) -> impl Future<Output = Result<Option<Instant>>> + Send;
}

/// When measuring starts and ends, shared by every task.
#[derive(Debug, Clone, Copy)]
struct Window {
    measure_from: Instant,
    end: Instant,
}

/// Runs every step in a task of its own: one operation each to open and
/// prepare connections (untimed; a failure here ends the run with that
/// error), then `warmup`, then `duration` measured. Returns the merged
/// record of operations that completed within the measured window.
///
/// # Errors
///
/// The first error of the priming operations: nothing is measured then.
pub(crate) async fn drive<S: Step>(
    steps: Vec<S>,
    warmup: Duration,
    duration: Duration,
) -> Result<TaskRecord> {
    let (start, window) = watch::channel(None::<Window>);
    let shared = Arc::new(Priming {
        done: Barrier::new(steps.len() + 1),
        error: Mutex::new(None),
    });
    let mut tasks = JoinSet::new();
    for step in steps {
        tasks.spawn(task(step, shared.clone(), window.clone()));
    }
    drop(window);
    shared.done.wait().await;
    let priming_error = shared.error.lock().expect("priming error lock").take();
    if let Some(error) = priming_error {
        // Dropping the sender ends every task before it measures anything.
        drop(start);
        tasks.shutdown().await;
        return Err(error);
    }
    let measure_from = Instant::now() + warmup;
    start.send_replace(Some(Window {
        measure_from,
        end: measure_from + duration,
    }));
    let mut total = TaskRecord::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(record) => total.merge(record),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
    Ok(total)
}

/// Where the tasks meet once primed, and the first priming failure.
struct Priming {
    done: Barrier,
    error: Mutex<Option<BenchError>>,
}

async fn task<S: Step>(
    mut step: S,
    priming: Arc<Priming>,
    mut window: watch::Receiver<Option<Window>>,
) -> TaskRecord {
    if let Err(error) = step.step().await {
        priming
            .error
            .lock()
            .expect("priming error lock")
            .get_or_insert(error);
    }
    priming.done.wait().await;
    drop(priming);
    let window = match window.wait_for(Option::is_some).await {
        Ok(window) => window.expect("checked by wait_for"),
        Err(_) => return TaskRecord::new(),
    };
    let mut record = TaskRecord::new();
    // Operations run back to back: one clock reading ends one operation and
    // starts the next.
    let mut started = Instant::now();
    loop {
        let outcome = step.step().await;
        let finished = Instant::now();
        if finished >= window.end {
            break;
        }
        let failed = outcome.is_err();
        if finished >= window.measure_from {
            match outcome {
                Ok(acquired) => record.success(
                    finished.saturating_duration_since(started),
                    acquired.map(|at| at.saturating_duration_since(started)),
                ),
                Err(error) => record.failure(&error),
            }
        }
        if failed && finished.saturating_duration_since(started) < ERROR_BACKOFF {
            // A failure that returns at once (server gone) must not spin
            // this worker thread: give the other tasks a turn.
            tokio::task::yield_now().await;
            started = Instant::now();
        } else {
            started = finished;
        }
    }
    record.flush();
    record
}

/// Operations that fail faster than this yield to the scheduler.
const ERROR_BACKOFF: Duration = Duration::from_micros(50);

#[cfg(test)]
mod tests {
    use super::*;

    struct Sleeper {
        calls: u64,
        fail_every: u64,
    }

    impl Step for Sleeper {
        async fn step(&mut self) -> Result<Option<Instant>> {
            self.calls += 1;
            let started = Instant::now();
            tokio::time::sleep(Duration::from_millis(2)).await;
            if self.fail_every > 0 && self.calls.is_multiple_of(self.fail_every) {
                return Err(dbmanager::Error::Timeout {
                    what: "a test step",
                    after: Duration::from_millis(2),
                }
                .into());
            }
            Ok(Some(started + Duration::from_micros(100)))
        }
    }

    #[tokio::test]
    async fn every_task_is_measured_within_the_window_and_errors_are_counted() {
        let steps = (0..4)
            .map(|_| Sleeper {
                calls: 0,
                fail_every: 5,
            })
            .collect();
        let record = drive(steps, Duration::from_millis(50), Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(record.latency.len(), record.operations);
        // 4 tasks × ~300 ms / ~2 ms: far more than one operation each, and
        // no more than the window allows.
        assert!(record.operations >= 40, "{}", record.operations);
        assert!(record.operations <= 4 * 150, "{}", record.operations);
        assert!(record.errors > 0);
        assert!(record.latency.quantile_us(0.5) >= 2000.0);
        assert!(record.acquire_wait.quantile_us(0.5) >= 100.0);
    }

    struct FailsAtOnce;

    impl Step for FailsAtOnce {
        async fn step(&mut self) -> Result<Option<Instant>> {
            Err(BenchError::option("bench.test", "refused"))
        }
    }

    #[tokio::test]
    async fn a_failing_priming_operation_ends_the_run_with_its_error() {
        let error = drive(vec![FailsAtOnce], Duration::ZERO, Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("bench.test"), "{error}");
    }
}
