//! Busy polling of TCP connections whose client waits for each reply (see
//! [`ServerConfig::busy_poll_us`](super::ServerConfig)).
//!
//! A client sending one call at a time sends the next right after our reply. If the reader
//! sleeps in the event loop meanwhile, that call's way in includes a wake-up from idle; a
//! reader that polls the socket for a few tens of microseconds finds it awake. Measured on
//! the 2-core bench machine against the same build without polling, one call at a time
//! (medians of 5 rounds): NULL 1.41×, GETATTR 1.42×, 4 KiB READ 1.36×, LOOKUP 1.18×, REMOVE
//! 1.12×, 4 KiB WRITE 1.09×.
//!
//! Polling takes CPU, so it is kept to where it pays:
//! - only a connection whose last [`BUSY_POLL_AFTER_LONE_CALLS`] calls each arrived with
//!   nothing of it unanswered polls: a client with calls in flight sends its next while we
//!   work (polling it cost 12 % of 4 KiB WRITEs at 16 in flight, CPU taken from the calls and
//!   the mirror);
//! - at most half the machine's cores poll at once ([`PollSlots`]);
//! - a poll ends at its budget, at end of stream, and when the server drains.
//!
//! [`BUSY_POLL_AFTER_LONE_CALLS`]: super::BUSY_POLL_AFTER_LONE_CALLS

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::Notify;

use super::tasks::Phase;
use super::Shared;
use crate::framing::{FrameError, Polled, RecordReader};

/// A poll spins this long between yields to the runtime. Yielding after every empty poll
/// cost more than it saved: each yield sends tokio through its work-stealing hand-off, which
/// wakes another, idle worker (4.7 % of all CPU during one-at-a-time 4 KiB READs, measured);
/// spinning in slices made those READs 1.2× faster. A slice is also the longest another task
/// on the polling worker waits.
const POLL_SLICE: Duration = Duration::from_micros(10);

/// The calls of one connection not yet answered (their reply not yet handed to the socket,
/// or they ended without one), and the signal that the last one was.
#[derive(Debug, Default)]
pub(super) struct Unanswered {
    count: AtomicUsize,
    none_left: Notify,
}

impl Unanswered {
    /// Calls unanswered now.
    pub(super) fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Resolves after the last unanswered call was answered (at most once per time it was).
    pub(super) async fn none_left(&self) {
        self.none_left.notified().await
    }
}

/// One call counted in [`Unanswered`] until dropped.
#[derive(Debug)]
pub(super) struct Pending(Arc<Unanswered>);

impl Pending {
    pub(super) fn new(unanswered: &Arc<Unanswered>) -> Pending {
        unanswered.count.fetch_add(1, Ordering::SeqCst);
        Pending(unanswered.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.none_left.notify_one();
        }
    }
}

/// Bounds how many connections poll at once: at most half the cores (at least one), so
/// polling never takes every core from the calls.
#[derive(Debug)]
pub(super) struct PollSlots {
    taken: AtomicUsize,
    max: usize,
}

impl PollSlots {
    pub(super) fn for_this_machine() -> PollSlots {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        PollSlots {
            taken: AtomicUsize::new(0),
            max: (cores / 2).max(1),
        }
    }

    fn try_take(&self) -> Option<PollSlot<'_>> {
        self.taken
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| PollSlot(self))
    }
}

/// A taken [`PollSlots`] slot, returned when dropped.
struct PollSlot<'a>(&'a PollSlots);

impl Drop for PollSlot<'_> {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Polls the socket for the next record for up to `budget`, spinning in [`POLL_SLICE`]s
/// between yields to this worker's other tasks. `Ok(None)`: nothing came in time, the
/// stream ended, the server drains, or every poll slot is taken; the caller then waits the
/// ordinary way (which also reports the end of the stream).
pub(super) async fn poll_for_record(
    shared: &Shared,
    reader: &mut RecordReader,
    read_half: &OwnedReadHalf,
    budget: Duration,
) -> Result<Option<Bytes>, FrameError> {
    let Some(_slot) = shared.poll_slots.try_take() else {
        return Ok(None);
    };
    let start = Instant::now();
    let mut slice_start = start;
    loop {
        match reader.poll_record(read_half.as_ref().as_fd(), &shared.counters.bytes_in)? {
            Polled::Record(record) => return Ok(Some(record)),
            Polled::Ended => return Ok(None),
            Polled::Nothing => {}
        }
        let now = Instant::now();
        if now - start >= budget {
            return Ok(None);
        }
        if now - slice_start < POLL_SLICE {
            std::hint::spin_loop();
            continue;
        }
        if *shared.phase.borrow() != Phase::Running {
            return Ok(None);
        }
        tokio::task::yield_now().await;
        slice_start = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_slots_are_bounded_and_come_back() {
        let slots = PollSlots {
            taken: AtomicUsize::new(0),
            max: 2,
        };
        let a = slots.try_take().expect("first slot");
        let b = slots.try_take().expect("second slot");
        assert!(
            slots.try_take().is_none(),
            "a third poller got a slot of two"
        );
        drop(a);
        let _c = slots.try_take().expect("a returned slot");
        drop(b);
        assert_eq!(slots.taken.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_last_answer_signals_and_only_the_last() {
        let unanswered = Arc::new(Unanswered::default());
        let first = Pending::new(&unanswered);
        let second = Pending::new(&unanswered);
        drop(first);
        assert_eq!(unanswered.count(), 1);
        let signalled = || {
            use futures::FutureExt;
            unanswered.none_left().now_or_never().is_some()
        };
        assert!(!signalled(), "signalled with a call still unanswered");
        drop(second);
        assert_eq!(unanswered.count(), 0);
        assert!(signalled(), "the last answer did not signal");
    }
}
