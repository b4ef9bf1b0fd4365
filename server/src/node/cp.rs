//! The node's CP driver: runs consistency points and releases the NVRAM log they cover.
//!
//! wafl's own `CpDriver` knows nothing of the log, so the node runs its own loop. A CP is
//! started by whichever comes first:
//! - the timer (`cp_interval_ms`) while anything is dirty;
//! - the log: a half was sealed and can only be reused once a CP covers it;
//! - the file system: dirty bytes reached `cp_dirty_bytes_max` (polled: wafl signals its
//!   own driver only).
//!
//! After each CP the log is released through the file system's `applied_seq` read *before*
//! the CP started: every op at or below it was applied before the freeze, so the CP holds
//! it. Ops are applied in log order under the service's sequencing lock, so no record below
//! that mark is still waiting to be applied.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nvlog::Nvlog;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wafl::Fs;

/// How often the loop looks at the dirty byte count (wafl raises no event we can await).
const DIRTY_POLL_MS: u64 = 100;
/// When a log-triggered CP could not release the sealed half (its last records were not
/// applied or durable yet), the next attempt waits this long instead of spinning.
const LOG_RETRY_MS: u64 = 20;

/// Why a CP ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpReason {
    /// The CP timer.
    Timer,
    /// A sealed log half waits for a CP.
    LogHalf,
    /// Dirty data reached the file system's bound.
    Dirty,
    /// The node is shutting down.
    Shutdown,
    /// Asked for (operator command, tests).
    Requested,
    /// The last CP before an identity is handed to the other node (takeover, giveback).
    Handover,
}

/// The last CP, for status.
#[derive(Clone, Debug)]
pub struct CpInfo {
    /// When it finished.
    pub at: SystemTime,
    /// Why it ran.
    pub reason: CpReason,
    /// The file system generation it committed.
    pub generation: u64,
    /// Log records through this sequence are covered and were released.
    pub covered_seq: u64,
    /// How long it took, µs.
    pub duration_us: u64,
    /// Bytes it wrote.
    pub bytes: u64,
}

/// CP outcomes shared with status.
#[derive(Debug, Default)]
pub struct CpRecord {
    /// The last successful CP.
    pub last: Option<CpInfo>,
    /// CPs run by the node since start.
    pub count: u64,
    /// The last CP failure (the file system is offline after one).
    pub last_error: Option<String>,
}

/// The running loop.
pub(super) struct CpLoop {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl CpLoop {
    /// Starts the loop on the current tokio runtime.
    pub fn start(
        fs: Arc<Fs>,
        log: Nvlog,
        interval_ms: u64,
        record: Arc<Mutex<CpRecord>>,
    ) -> CpLoop {
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(fs, log, interval_ms, stop_rx, record));
        CpLoop { stop, task }
    }

    /// Stops the loop; a CP in progress completes first.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "CP loop task failed");
        }
    }

    /// Stops the loop without waiting (a CP in progress on its blocking thread completes).
    pub fn abort(self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

async fn run(
    fs: Arc<Fs>,
    log: Nvlog,
    interval_ms: u64,
    mut stop: watch::Receiver<bool>,
    record: Arc<Mutex<CpRecord>>,
) {
    let interval = Duration::from_millis(interval_ms);
    let mut timer = tokio::time::Instant::now() + interval;
    let dirty_max = fs.config().cp_dirty_bytes_max;
    let mut poll = tokio::time::interval(Duration::from_millis(DIRTY_POLL_MS));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let reason = tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep_until(timer) => CpReason::Timer,
            _ = log.cp_wanted() => CpReason::LogHalf,
            _ = poll.tick() => {
                if fs.dirty_bytes() < dirty_max {
                    continue;
                }
                CpReason::Dirty
            }
        };
        timer = tokio::time::Instant::now() + interval;
        if reason == CpReason::Timer && fs.dirty_bytes() == 0 && !log.cp_is_wanted() {
            continue;
        }
        let outcome = run_cp(&fs, &log, reason).await;
        let failed = outcome.is_err();
        note(&record, outcome);
        let pause_ms = match (failed, log.cp_is_wanted()) {
            // A failed CP fails again at once: retry at the timer's pace, not in a spin.
            (true, _) => interval_ms,
            // The sealed half's tail was not yet applied or durable: retry soon.
            (false, true) => LOG_RETRY_MS,
            (false, false) => 0,
        };
        if pause_ms > 0 {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(pause_ms)) => {}
            }
        }
    }
}

/// Runs one CP on a blocking thread and releases what it covers.
pub(super) async fn run_cp(fs: &Arc<Fs>, log: &Nvlog, reason: CpReason) -> Result<CpInfo, String> {
    let fs = fs.clone();
    let started = Instant::now();
    let covered_seq = fs.applied_seq();
    let report = tokio::task::spawn_blocking(move || fs.cp())
        .await
        .map_err(|e| format!("CP task: {e}"))?
        .map_err(|e| e.to_string())?;
    log.release_through(covered_seq);
    let info = CpInfo {
        at: SystemTime::now(),
        reason,
        generation: report.gen,
        covered_seq,
        duration_us: started.elapsed().as_micros() as u64,
        bytes: report.bytes,
    };
    tracing::debug!(
        ?reason,
        gen = info.generation,
        covered_seq,
        bytes = info.bytes,
        duration_us = info.duration_us,
        "CP done"
    );
    Ok(info)
}

/// Records a CP outcome for status (and logs failures loudly: the FS is offline after one).
pub(super) fn note(record: &Mutex<CpRecord>, outcome: Result<CpInfo, String>) {
    let mut r = record.lock().unwrap_or_else(|e| e.into_inner());
    match outcome {
        Ok(info) => {
            r.count += 1;
            r.last = Some(info);
        }
        Err(e) => {
            tracing::error!(error = %e, "CP failed: the file system refuses changes until the node restarts");
            r.last_error = Some(e);
        }
    }
}
