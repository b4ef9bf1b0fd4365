//! Lifecycle plumbing: the server phase every task watches, a count of live tasks that
//! `stop` waits on, and the permit a call holds while it is in flight.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

use super::stats::{bump, drop_one, Counters};

/// Where the server is in its life. Ordered: a task waiting for `Draining` also wakes at
/// `Stopped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// Accepting connections and reading calls.
    Running,
    /// Not accepting, not reading new calls; calls in flight finish and their replies go out.
    Draining,
    /// Everything still running is abandoned (the grace period is over).
    Stopped,
}

/// Resolves once the server has reached `phase` (or its phase sender is gone, which only
/// happens when the server itself is gone).
pub(crate) async fn reached(mut rx: watch::Receiver<Phase>, phase: Phase) {
    let _ = rx.wait_for(|p| *p >= phase).await;
}

/// Counts the tasks the server spawned, so `stop` can wait until all are gone.
#[derive(Debug, Default)]
pub(crate) struct TaskCounter {
    live: AtomicUsize,
    idle: Notify,
}

/// Decrements the [`TaskCounter`] when the task owning it ends (normally, by abort or panic).
struct TaskGuard(Arc<TaskCounter>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl TaskCounter {
    /// Spawns `fut` on the current runtime as a counted task.
    pub(crate) fn spawn<F>(self: &Arc<Self>, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.live.fetch_add(1, Ordering::AcqRel);
        let guard = TaskGuard(self.clone());
        tokio::spawn(async move {
            let _guard = guard;
            fut.await;
        });
    }

    /// Tasks alive now.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Resolves when no counted task is alive.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Register before checking, so a wake-up between the check and the await is kept.
            notified.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Takes a permit, counting a back-pressure wait if none is free right away.
pub(crate) async fn acquire(sem: &Arc<Semaphore>, counters: &Counters) -> OwnedSemaphorePermit {
    if let Ok(permit) = sem.clone().try_acquire_owned() {
        return permit;
    }
    bump(&counters.backpressure_waits);
    sem.clone()
        .acquire_owned()
        .await
        .expect("server semaphores are never closed")
}

/// What a call holds from the moment it is read until its reply is written (or dropped):
/// its share of the per-connection and total in-flight bounds.
pub(crate) struct CallPermit {
    _local: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
    shared: Arc<super::Shared>,
}

impl CallPermit {
    /// Wraps permits already taken; counts the call as in flight.
    pub(crate) fn new(
        local: OwnedSemaphorePermit,
        total: OwnedSemaphorePermit,
        shared: Arc<super::Shared>,
    ) -> Self {
        bump(&shared.counters.calls_inflight);
        CallPermit {
            _local: local,
            _total: total,
            shared,
        }
    }
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        drop_one(&self.shared.counters.calls_inflight);
    }
}

/// Protocol warnings let through per second; the rest are logged at debug level.
const WARNINGS_PER_SECOND_MAX: u64 = 20;

/// A coarse per-second budget for warnings caused by clients (malformed calls, framing
/// violations, connection floods). Approximate under races, which is fine for logging.
#[derive(Debug)]
pub(crate) struct WarnLimiter {
    started: std::time::Instant,
    /// Second (since `started`) the count belongs to.
    second: std::sync::atomic::AtomicU64,
    count: std::sync::atomic::AtomicU64,
}

impl WarnLimiter {
    pub(crate) fn new() -> Self {
        WarnLimiter {
            started: std::time::Instant::now(),
            second: Default::default(),
            count: Default::default(),
        }
    }

    /// Whether one more warning may be logged now.
    pub(crate) fn allow(&self) -> bool {
        let now = self.started.elapsed().as_secs();
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < WARNINGS_PER_SECOND_MAX
    }
}
