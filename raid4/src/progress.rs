//! Progress of long operations (rebuild, scrub): percent, rate and ETA, read while running.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A running operation's counters.
pub(crate) struct Progress {
    total_stripes: u64,
    bytes_per_stripe: u64,
    done_stripes: AtomicU64,
    started: Instant,
}

/// A snapshot of progress, for status displays.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgressStatus {
    /// Stripes done.
    pub done_stripes: u64,
    /// Stripes in all.
    pub total_stripes: u64,
    /// 0..=100.
    pub percent: f64,
    /// Disk bytes processed per second so far, in MB/s (10^6).
    pub rate_mbps: f64,
    /// Estimated seconds left at the current rate.
    pub eta_s: f64,
    /// Seconds since start.
    pub elapsed_s: f64,
}

impl Progress {
    pub(crate) fn new(total_stripes: u64, bytes_per_stripe: u64) -> Progress {
        Progress {
            total_stripes,
            bytes_per_stripe,
            done_stripes: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    pub(crate) fn step(&self) {
        self.done_stripes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn status(&self) -> ProgressStatus {
        let done = self
            .done_stripes
            .load(Ordering::Relaxed)
            .min(self.total_stripes);
        let elapsed_s = self.started.elapsed().as_secs_f64().max(1e-9);
        let per_s = done as f64 / elapsed_s;
        let left = (self.total_stripes - done) as f64;
        ProgressStatus {
            done_stripes: done,
            total_stripes: self.total_stripes,
            percent: if self.total_stripes == 0 {
                100.0
            } else {
                100.0 * done as f64 / self.total_stripes as f64
            },
            rate_mbps: per_s * self.bytes_per_stripe as f64 / 1e6,
            eta_s: if per_s > 0.0 {
                left / per_s
            } else {
                f64::INFINITY
            },
            elapsed_s,
        }
    }
}
