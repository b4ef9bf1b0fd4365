//! Disk reservations: who may write an aggregate's disks.
//!
//! One trait, [`Reservations`], for one disk; two implementations:
//! - [`disk_block::DiskBlockReservation`]: a checksummed record in the reservation area of the
//!   disk's header, for disk files and block devices without SCSI. Cooperative: the holder
//!   re-reads it and fences itself when it finds itself preempted.
//! - [`scsi::ScsiReservation`]: SCSI-3 persistent reservations over SG_IO; the target enforces
//!   them (a preempted node's writes fail with RESERVATION CONFLICT).
//!
//! [`ReservationSet`] applies an operation to every disk of an aggregate, and
//! [`HoldMonitor`] re-checks the hold on a period and raises a flag the write path consults.
//!
//! Generations: every call that acquires (reserve, preempt) remembers the generation it saw
//! afterwards; [`Reservations::check_held`] reports the hold lost when the generation moved on,
//! which is what `Step::VerifyReservations` of the state machine needs (nobody held the disks
//! in between).

pub mod disk_block;
pub mod scsi;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A reservation key: one per node, never 0 (0 means "no key" in SCSI and on disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReservationKey(pub u64);

impl ReservationKey {
    /// The conventional key of a node: a constant prefix ("TF") plus the node id, so keys seen
    /// with `sg_persist` are recognisable.
    pub fn for_node(node: crate::NodeId) -> ReservationKey {
        ReservationKey(0x5446_0000_0000_0000 | (u64::from(node.0) + 1))
    }
}

impl std::fmt::Display for ReservationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

/// The registered keys of a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyList {
    /// Changes whenever registrations or the reservation change (SCSI PRgeneration changes on
    /// registrations and preemptions only).
    pub generation: u64,
    /// Registered keys.
    pub keys: Vec<ReservationKey>,
}

/// The reservation of a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservationState {
    /// As in [`KeyList::generation`].
    pub generation: u64,
    /// The holder's key, `None` when the disk is not reserved.
    pub holder: Option<ReservationKey>,
}

/// Whether this node still holds a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldStatus {
    /// Held, at the generation of our acquisition.
    Held {
        /// The generation.
        generation: u64,
    },
    /// Lost: another node preempted it, or it changed hands since we acquired it.
    Lost {
        /// The holder now, if any.
        holder: Option<ReservationKey>,
    },
}

/// Why a reservation operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// The disk could not be read or written.
    #[error("{path}: reservation IO failed: {source}")]
    Io {
        /// The disk.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The on-disk reservation record is damaged (torn write, foreign data).
    #[error("{path}: reservation record invalid ({reason}); re-initialise it only when neither node serves this aggregate")]
    Corrupt {
        /// The disk.
        path: String,
        /// What check failed.
        reason: &'static str,
    },
    /// Another node holds the disk.
    #[error("{path}: reserved by another node (key {holder})")]
    Conflict {
        /// The disk.
        path: String,
        /// The holder's key.
        holder: ReservationKey,
    },
    /// The operation needs our key registered first.
    #[error("{path}: our key {key} is not registered")]
    NotRegistered {
        /// The disk.
        path: String,
        /// Our key.
        key: ReservationKey,
    },
    /// Our own read-to-write of an on-disk acquisition took too long to be sure that no
    /// competitor won meanwhile; we gave up (retry later).
    #[error("{path}: acquisition abandoned: read-to-write took {elapsed_ms} ms, not under the settle time of {settle_ms} ms")]
    SlowIo {
        /// The disk.
        path: String,
        /// How long it took.
        elapsed_ms: u64,
        /// The bound.
        settle_ms: u64,
    },
    /// The target's registration table is full.
    #[error("{path}: too many registered keys (max {max})")]
    TooManyKeys {
        /// The disk.
        path: String,
        /// The bound.
        max: usize,
    },
    /// A SCSI command failed.
    #[error("{path}: {source}")]
    Scsi {
        /// The disk.
        path: String,
        /// The failure.
        source: scsi::ScsiError,
    },
}

/// Reservations of one disk, as one node sees them.
pub trait Reservations: Send {
    /// The disk, for messages.
    fn path(&self) -> &str;
    /// Our key.
    fn key(&self) -> ReservationKey;
    /// Registers our key (idempotent).
    fn register(&mut self) -> Result<(), ReserveError>;
    /// Reserves the disk for our key (registering it first); [`ReserveError::Conflict`] when
    /// another node holds it. Returns the generation of our hold. Idempotent when we hold it.
    fn reserve(&mut self) -> Result<u64, ReserveError>;
    /// Reads the registered keys.
    fn read_keys(&mut self) -> Result<KeyList, ReserveError>;
    /// Reads the reservation.
    fn read_reservation(&mut self) -> Result<ReservationState, ReserveError>;
    /// Takes the disk from `victim` (fencing): removes its registration and makes us the
    /// holder. Returns the generation of our hold.
    fn preempt(&mut self, victim: ReservationKey) -> Result<u64, ReserveError>;
    /// Releases our reservation and registration. Releasing a disk another node holds, or
    /// that nobody holds, is a no-op.
    fn release(&mut self) -> Result<(), ReserveError>;
    /// Whether we still hold the disk at the generation of our last reserve or preempt.
    fn check_held(&mut self) -> Result<HoldStatus, ReserveError>;
}

/// The reservations of every disk of one aggregate, taken and released together.
pub struct ReservationSet {
    disks: Vec<Box<dyn Reservations>>,
}

impl ReservationSet {
    /// A set over these disks (at least one).
    pub fn new(disks: Vec<Box<dyn Reservations>>) -> ReservationSet {
        assert!(!disks.is_empty(), "an aggregate has at least one disk");
        ReservationSet { disks }
    }

    /// Number of disks.
    pub fn len(&self) -> usize {
        self.disks.len()
    }

    /// Always false (a set has at least one disk).
    pub fn is_empty(&self) -> bool {
        self.disks.is_empty()
    }

    /// Reserves every disk; on the first failure releases the ones already reserved (a half
    /// reservation would block the partner for nothing) and returns the error.
    pub fn reserve_all(&mut self) -> Result<(), ReserveError> {
        self.acquire_all(|d| d.reserve().map(drop))
    }

    /// Preempts `victim` on every disk; on failure releases what was taken.
    pub fn preempt_all(&mut self, victim: ReservationKey) -> Result<(), ReserveError> {
        self.acquire_all(|d| d.preempt(victim).map(drop))
    }

    /// Runs `op` on every disk at once (one thread per disk: the on-disk protocol's settle
    /// and fence waits then overlap instead of adding up), then undoes every success if
    /// any disk failed.
    fn acquire_all(
        &mut self,
        op: impl Fn(&mut dyn Reservations) -> Result<(), ReserveError> + Sync,
    ) -> Result<(), ReserveError> {
        let results: Vec<Result<(), ReserveError>> = std::thread::scope(|scope| {
            let op = &op;
            let handles: Vec<_> = self
                .disks
                .iter_mut()
                .map(|d| scope.spawn(move || op(d.as_mut())))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("reservation thread panicked"))
                .collect()
        });
        let Some(first) = results.iter().position(|r| r.is_err()) else {
            return Ok(());
        };
        for (d, r) in self.disks.iter_mut().zip(&results) {
            if r.is_ok() {
                if let Err(undo) = d.release() {
                    tracing::warn!(disk = d.path(), error = %undo, "release after a failed acquisition failed");
                }
            }
        }
        let mut results = results;
        Err(results
            .swap_remove(first)
            .expect_err("position found an error"))
    }

    /// Releases every disk; tries all of them and returns the first error.
    pub fn release_all(&mut self) -> Result<(), ReserveError> {
        let mut first = None;
        for d in self.disks.iter_mut() {
            if let Err(e) = d.release() {
                tracing::warn!(disk = d.path(), error = %e, "release failed");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Held only when every disk is held at its acquisition generation.
    pub fn check_held(&mut self) -> Result<HoldStatus, ReserveError> {
        let mut generation_max = 0;
        for d in self.disks.iter_mut() {
            match d.check_held()? {
                HoldStatus::Held { generation } => generation_max = generation_max.max(generation),
                lost @ HoldStatus::Lost { .. } => return Ok(lost),
            }
        }
        Ok(HoldStatus::Held {
            generation: generation_max,
        })
    }
}

/// Why a [`HoldMonitor`] stopped vouching for the hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldLoss {
    /// Another node holds (or held) the disks since we acquired them.
    Preempted {
        /// The holder now, if any.
        holder: Option<ReservationKey>,
    },
    /// The check itself failed this many times in a row (disk unreachable, record damaged):
    /// without proof of the hold the node must not write.
    CheckFailed {
        /// The last error, as text.
        error: String,
    },
}

/// Re-checks a hold every `check_interval_ms` on its own thread. The write path consults
/// [`HoldMonitor::is_held`] (an atomic load) before every write batch; a node serving an
/// aggregate stops within one interval (plus one check's IO) after a preemption.
pub struct HoldMonitor {
    held: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<ReservationSet>>,
}

/// Consecutive failed checks (IO errors) before the monitor declares the hold lost.
pub const HOLD_CHECK_FAILURES_MAX: u32 = 3;

impl HoldMonitor {
    /// Starts watching `set` (already reserved or preempted). `on_loss` is called once, from
    /// the monitor thread, when the hold is lost; the flag is cleared before it is called.
    pub fn start(
        mut set: ReservationSet,
        check_interval_ms: u64,
        on_loss: impl FnOnce(HoldLoss) + Send + 'static,
    ) -> HoldMonitor {
        assert!(check_interval_ms > 0, "check interval must be positive");
        let held = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (held2, stop2) = (held.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("hold-monitor".into())
            .spawn(move || {
                let mut failures = 0u32;
                while !stop2.load(Ordering::Acquire) {
                    let loss = match set.check_held() {
                        Ok(HoldStatus::Held { .. }) => {
                            failures = 0;
                            None
                        }
                        Ok(HoldStatus::Lost { holder }) => Some(HoldLoss::Preempted { holder }),
                        Err(e) => {
                            failures += 1;
                            tracing::warn!(error = %e, failures, "reservation check failed");
                            (failures >= HOLD_CHECK_FAILURES_MAX).then(|| HoldLoss::CheckFailed {
                                error: e.to_string(),
                            })
                        }
                    };
                    if let Some(loss) = loss {
                        held2.store(false, Ordering::Release);
                        tracing::error!(
                            ?loss,
                            "reservation lost: this node must stop writing the aggregate"
                        );
                        on_loss(loss);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(check_interval_ms));
                }
                set
            })
            .expect("spawn hold monitor thread");
        HoldMonitor {
            held,
            stop,
            thread: Some(thread),
        }
    }

    /// Whether the hold was still proven at the last check.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// A flag the write path can keep (cheaper than a reference to the monitor).
    pub fn held_flag(&self) -> Arc<AtomicBool> {
        self.held.clone()
    }

    /// Stops the monitor (within one interval) and returns the set, e.g. to release it.
    pub fn stop(mut self) -> ReservationSet {
        self.stop.store(true, Ordering::Release);
        let thread = self
            .thread
            .take()
            .expect("monitor thread present until stop");
        thread.join().expect("hold monitor thread panicked")
    }
}

impl Drop for HoldMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}
