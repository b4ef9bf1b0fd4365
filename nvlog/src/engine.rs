//! The node-facing log: group-committed append, back-pressure on a full half, release at
//! CP, mirror driver threads, status.
//!
//! Group commit: an appender copies its record into the region under the state lock; the
//! first appender that finds no commit running becomes the leader and persists everything
//! written so far with one barrier, then hands the range to the mirror sender; followers
//! just wait on their futures. A future resolves when its record is durable locally and
//! acknowledged by the partner (or the mirror is degraded / the node is standalone). An
//! appender that knows more appends are coming may submit without leading and start the
//! commit itself a moment later (`submit_parts_deferred`, `commit_pending`).

use crate::format::{self, PAYLOAD_BYTES_MAX};
use crate::log::{LogArea, Replay, ReplayError};
use crate::mirror::{
    DegradePolicy, LocalEvent, MirrorState, Receiver, Sender, SenderConfig, TAKEOVER_IMPOSSIBLE,
};
use crate::proto::{Frame, MirrorKey};
use crate::region::{Area, Region, RegionError, HALF_BYTES_DEFAULT, REGION_PATH_DEFAULT};
use crate::tcp::{AuthFailures, TcpAcceptor, TcpConnector};
use crate::transport::{Acceptor, Connector, FrameSink, FrameSource};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

/// Frames pulled from the sender per vectored write.
const TRANSMIT_BATCH_FRAMES_MAX: usize = 64;
/// Pause after a lost connection; doubles while attempts fail (a partner that refuses
/// us is not hammered, nor its log flooded), up to the max.
const RECONNECT_BACKOFF_MS: u64 = 50;
/// Upper bound of the reconnect backoff.
const RECONNECT_BACKOFF_MS_MAX: u64 = 1000;
/// Group commits sent to the partner and not yet acknowledged, at most. Appends arriving
/// meanwhile accumulate and go out as the next group (one persist, one frame, one round
/// trip): this is what makes concurrent appenders share the mirror round trip.
const MIRROR_BATCHES_INFLIGHT_MAX: usize = 3;
/// While a group is already in flight, the next one starts only once this many record
/// bytes are pending (or the in-flight group is acknowledged). Without it, the first
/// appender woken by an ack would lead a group of one and split the load into many tiny
/// round trips; with it, groups stay large under load while a lone appender (nothing in
/// flight) still commits at once.
const MIRROR_PIPELINE_BYTES_MIN: u64 = 32 << 10;

/// Configuration of one node's log.
#[derive(Clone, Debug)]
pub struct Config {
    /// Region path: a `/dev/daxX.Y` device, a file on fs-dax, or a plain file.
    pub region_path: PathBuf,
    /// Bytes per half when formatting (multiple of 2 MiB).
    pub half_bytes: u64,
    /// Mirroring; `None` = standalone (appends resolve on local durability).
    pub mirror: Option<MirrorConfig>,
    /// An appender waits at most this long for a CP to free a half.
    pub backpressure_wait_ms_max: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            region_path: PathBuf::from(REGION_PATH_DEFAULT),
            half_bytes: HALF_BYTES_DEFAULT,
            mirror: None,
            backpressure_wait_ms_max: 60_000,
        }
    }
}

/// Mirror configuration.
#[derive(Clone, Debug)]
pub struct MirrorConfig {
    /// Partner's mirror listener: our log is mirrored there. `None`: we do not mirror.
    pub partner_addr: Option<SocketAddr>,
    /// Where we accept the partner's log into our mirror area. `None`: we hold no mirror.
    pub listen_addr: Option<SocketAddr>,
    /// Pre-shared key of the pair.
    pub key: MirrorKey,
    /// Sender bounds and timers (degraded after 2 s by default).
    pub sender: SenderConfig,
    /// A busy mirror connection's reads poll this long before sleeping, µs (0: off; see
    /// [`crate::tcp`]). Costs CPU while appends flow, saves thread wake-ups per round trip.
    pub busy_poll_us: u64,
}

/// Default of [`MirrorConfig::busy_poll_us`]: several mirror round trips on a LAN or
/// loopback, so a frame on its way is caught by a poll rather than a wake-up.
pub const BUSY_POLL_US_DEFAULT: u64 = 200;

/// Why an append failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AppendError {
    /// Payload over the bound.
    #[error("record payload of {0} bytes exceeds the {PAYLOAD_BYTES_MAX}-byte bound")]
    TooLarge(usize),
    /// Both halves hold unreleased records (non-blocking submit only).
    #[error("log full: both halves await a CP")]
    Full,
    /// The CP did not free a half within the bound.
    #[error("log full for {0} ms: no CP released a half; is the CP stuck?")]
    FullTimeout(u64),
    /// The log was closed before the record resolved.
    #[error("nvlog closed")]
    Closed,
}

/// Errors opening the log.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Region.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// Own log or mirror damaged.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// Mirror listener.
    #[error("mirror listener: {0}")]
    Listen(#[from] crate::transport::TransportError),
}

/// What the node exposes (console, metrics, partner's takeover check).
#[derive(Clone, Debug)]
pub struct Status {
    /// How the region persists (e.g. `devdax+clwb+sfence`, `file+msync`).
    pub persist_mode: String,
    /// Region path.
    pub region_path: PathBuf,
    /// This node's writer epoch.
    pub epoch: u64,
    /// State of the mirror of our log on the partner.
    pub mirror: MirrorState,
    /// Whether our mirror area holds a live, full copy of the partner's log.
    pub partner_mirror_in_sync: bool,
    /// Next sequence number to be assigned.
    pub next_seq: u64,
    /// Highest sequence durable locally.
    pub durable_seq: u64,
    /// Highest sequence acknowledged by the partner.
    pub mirrored_seq: u64,
    /// Half being appended to.
    pub active_half: usize,
    /// Bytes written in each half.
    pub half_used_bytes: [u64; 2],
    /// Record capacity of a half.
    pub half_capacity_bytes: u64,
    /// A sealed half awaits a CP.
    pub cp_wanted: bool,
    /// Records appended.
    pub appends: u64,
    /// Group commits (persist barriers) done.
    pub group_commits: u64,
    /// Appends that had to wait for a CP.
    pub backpressure_waits: u64,
    /// Frames refused for a bad MAC.
    pub auth_failures: u64,
    /// Times MIRROR_DEGRADED was entered.
    pub degraded_entries: u64,
    /// Mirror sessions started by our sender.
    pub mirror_sessions: u64,
    /// Record bytes persisted locally whose group commit the partner has not acknowledged.
    pub mirror_lag_bytes: u64,
}

enum Pending {
    Records {
        half: usize,
        generation: u64,
        start: u64,
        end: u64,
        last_seq: u64,
    },
    Reset {
        half: usize,
        generation: u64,
        base_seq: u64,
    },
}

#[derive(Clone, Copy)]
struct UnmirroredBatch {
    seq: u64,
    persisted_at: Instant,
    bytes: u64,
}

/// Latency samples for the metrics, in seconds; each list keeps the first
/// [`LATENCY_SAMPLES_MAX`] since it was last taken.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    /// Local persist of one group commit (flush and fence, or msync).
    pub persist_seconds: Vec<f64>,
    /// From a group commit's local persist to the partner's acknowledgement.
    pub mirror_seconds: Vec<f64>,
}

/// Samples kept between two takes (a poll each second needs far fewer).
pub const LATENCY_SAMPLES_MAX: usize = 10_000;

fn sample(list: &mut Vec<f64>, seconds: f64) {
    if list.len() < LATENCY_SAMPLES_MAX {
        list.push(seconds);
    }
}

struct Writer {
    active: usize,
    generation: [u64; 2],
    base_seq: [u64; 2],
    write_end: [u64; 2],
    last_seq: [u64; 2],
    next_seq: u64,
}

struct State {
    writer: Writer,
    durable_seq: u64,
    committing: bool,
    pending: VecDeque<Pending>,
    waiters: VecDeque<(u64, oneshot::Sender<Result<u64, AppendError>>)>,
    sender: Option<Sender>,
    /// Group commits sent to the partner and not yet acknowledged: last seq, when
    /// persisted locally, record bytes.
    unmirrored_batches: VecDeque<UnmirroredBatch>,
    /// Latencies measured since the last [`Nvlog::take_latencies`].
    latencies: Latencies,
    cp_wanted: bool,
    closed: bool,
    appends: u64,
    group_commits: u64,
    backpressure_waits: u64,
}

struct Inner {
    own: LogArea,
    mirror: LogArea,
    epoch: u64,
    start: Instant,
    st: Mutex<State>,
    space: Notify,
    cp: Notify,
    wire: Mutex<Option<Box<dyn FrameSink>>>,
    receiver: Option<Arc<Mutex<Receiver>>>,
    auth_failures: AuthFailures,
    shutdown: AtomicBool,
    bytes_appended: AtomicU64,
    backpressure_wait_ms_max: u64,
}

/// A node's NVRAM log (cheap to clone).
#[derive(Clone)]
pub struct Nvlog {
    inner: Arc<Inner>,
    threads: Arc<Threads>,
}

struct Threads {
    inner: Arc<Inner>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    listen_addr: Option<SocketAddr>,
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::SeqCst);
        if let Some(w) = lock(&self.inner.wire).as_mut() {
            w.close();
        }
        let handles = std::mem::take(&mut *lock(&self.handles));
        for h in handles {
            let _ = h.join();
        }
        let mut st = lock(&self.inner.st);
        st.closed = true;
        for (_, tx) in st.waiters.drain(..) {
            let _ = tx.send(Err(AppendError::Closed));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock already failed an invariant assertion; keep going
    // with the data so shutdown paths still run.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves when the appended record is durable locally and in the partner's mirror (or
/// the mirror is degraded / standalone). Dropping it does not cancel the append.
pub struct Durable {
    seq: u64,
    rx: oneshot::Receiver<Result<u64, AppendError>>,
}

impl Durable {
    /// Sequence number assigned to the record.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl Future for Durable {
    type Output = Result<u64, AppendError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(AppendError::Closed)))
    }
}

impl Nvlog {
    /// Opens the region, recovers the own log's position, opens the mirror area and starts
    /// the mirror threads. Needs no async runtime.
    pub fn open(config: Config) -> Result<Nvlog, OpenError> {
        let region = Arc::new(Region::open(&config.region_path, config.half_bytes)?);
        Self::open_region(region, config.mirror, config.backpressure_wait_ms_max)
    }

    /// As [`Nvlog::open`] on an already opened region (tests use anonymous regions).
    pub fn open_region(
        region: Arc<Region>,
        mirror: Option<MirrorConfig>,
        backpressure_wait_ms_max: u64,
    ) -> Result<Nvlog, OpenError> {
        let own = LogArea::new(region.clone(), Area::Own);
        let mirror_area = LogArea::new(region.clone(), Area::Mirror);
        let writer = recover_writer(&own)?;
        let epoch = region.bump_epoch();
        tracing::info!(
            path = %region.path().display(), mode = %region.mode(), epoch,
            next_seq = writer.next_seq, "nvlog: region open"
        );
        let start = Instant::now();
        let sender = mirror
            .as_ref()
            .filter(|m| m.partner_addr.is_some())
            .map(|m| Sender::new(m.sender.clone(), epoch, 0));
        let receiver = match mirror.as_ref().and_then(|m| m.listen_addr) {
            Some(_) => Some(Arc::new(Mutex::new(Receiver::open(mirror_area.clone())?))),
            None => None,
        };
        let durable_seq = writer.next_seq - 1;
        let inner = Arc::new(Inner {
            own,
            mirror: mirror_area,
            epoch,
            start,
            st: Mutex::new(State {
                writer,
                durable_seq,
                committing: false,
                pending: VecDeque::new(),
                waiters: VecDeque::new(),
                sender,
                unmirrored_batches: VecDeque::new(),
                latencies: Latencies::default(),
                cp_wanted: false,
                closed: false,
                appends: 0,
                group_commits: 0,
                backpressure_waits: 0,
            }),
            space: Notify::new(),
            cp: Notify::new(),
            wire: Mutex::new(None),
            receiver,
            auth_failures: AuthFailures::default(),
            shutdown: AtomicBool::new(false),
            bytes_appended: AtomicU64::new(0),
            backpressure_wait_ms_max,
        });
        let mut handles = Vec::new();
        let mut listen_addr = None;
        if let Some(m) = &mirror {
            if let Some(addr) = m.partner_addr {
                let connector = TcpConnector::new(addr, m.key.clone(), inner.auth_failures.clone())
                    .with_busy_poll(m.busy_poll_us);
                handles.push(spawn_sender(inner.clone(), Box::new(connector)));
            }
            if let Some(addr) = m.listen_addr {
                let acceptor = TcpAcceptor::bind(addr, m.key.clone(), inner.auth_failures.clone())?
                    .with_busy_poll(m.busy_poll_us);
                listen_addr = acceptor.local_addr().ok();
                handles.push(spawn_acceptor(inner.clone(), Box::new(acceptor)));
            }
        }
        let threads = Arc::new(Threads {
            inner: inner.clone(),
            handles: Mutex::new(handles),
            listen_addr,
        });
        Ok(Nvlog { inner, threads })
    }

    /// Address our mirror listener is bound to (useful with port 0).
    pub fn mirror_listen_addr(&self) -> Option<SocketAddr> {
        self.threads.listen_addr
    }

    /// Appends a record, waiting (counted) for a CP while both halves are full.
    pub async fn append(&self, kind: u16, payload: &[u8]) -> Result<u64, AppendError> {
        let bound = Duration::from_millis(self.backpressure_wait_ms_max());
        let deadline = Instant::now() + bound;
        let mut counted = false;
        loop {
            // Fast path without registering for the space notification (a mutex in Notify).
            match self.submit(kind, payload) {
                Err(AppendError::Full) => {}
                Ok(durable) => return durable.await,
                Err(e) => return Err(e),
            }
            let notified = self.inner.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Retry once registered, so a release between the two calls is not missed.
            match self.submit(kind, payload) {
                Ok(durable) => return durable.await,
                Err(AppendError::Full) => {
                    if !counted {
                        lock(&self.inner.st).backpressure_waits += 1;
                        counted = true;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                        return Err(AppendError::FullTimeout(bound.as_millis() as u64));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn backpressure_wait_ms_max(&self) -> u64 {
        self.inner.backpressure_wait_ms_max
    }

    /// Appends without waiting for space: the record is in the log order from this call
    /// on; the returned future resolves when durable (and mirrored). For records whose
    /// durability nobody awaits (e.g. a reply record for the duplicate-request cache),
    /// drop the future.
    pub fn submit(&self, kind: u16, payload: &[u8]) -> Result<Durable, AppendError> {
        self.submit_parts(kind, &[payload])
    }

    /// [`Self::submit`] of one record whose payload is the concatenation of `parts`: they
    /// are copied straight into the log, so a caller with data and a trailer (a WRITE) need
    /// not join them first.
    pub fn submit_parts(&self, kind: u16, parts: &[&[u8]]) -> Result<Durable, AppendError> {
        self.append_parts(kind, parts, true)
    }

    /// [`Self::submit_parts`] that never leads a group commit: the record waits for the
    /// caller's [`Self::commit_pending`] (or an earlier commit by another appender or an
    /// acknowledgement). A caller that knows more appends are on their way lets them join
    /// the group instead of sending a group of one; it must call `commit_pending` soon,
    /// whatever happens.
    pub fn submit_parts_deferred(
        &self,
        kind: u16,
        parts: &[&[u8]],
    ) -> Result<Durable, AppendError> {
        self.append_parts(kind, parts, false)
    }

    /// Commits what is pending, if the mirror window allows (after
    /// [`Self::submit_parts_deferred`]).
    pub fn commit_pending(&self) {
        self.inner.try_lead();
    }

    fn append_parts(
        &self,
        kind: u16,
        parts: &[&[u8]],
        may_lead: bool,
    ) -> Result<Durable, AppendError> {
        let payload_len: usize = parts.iter().map(|p| p.len()).sum();
        if payload_len > PAYLOAD_BYTES_MAX {
            return Err(AppendError::TooLarge(payload_len));
        }
        let need = format::record_bytes(payload_len) as u64;
        let (tx, rx) = oneshot::channel();
        let inner = &self.inner;
        let (seq, leader) = {
            let mut st = lock(&inner.st);
            if st.closed {
                return Err(AppendError::Closed);
            }
            let active = st.writer.active;
            if st.writer.write_end[active] + need > inner.own.capacity() {
                self.switch_half(&mut st)?;
            }
            let w = &mut st.writer;
            let (half, start) = (w.active, w.write_end[w.active]);
            let seq = w.next_seq;
            w.next_seq += 1;
            // SAFETY: bytes past write_end belong to the writer, which we are under the lock.
            let slot = unsafe { inner.own.slot(half, start, need as usize) };
            format::encode_record_parts(slot, kind, seq, parts);
            w.write_end[half] = start + need;
            w.last_seq[half] = seq;
            let generation = w.generation[half];
            match st.pending.back_mut() {
                Some(Pending::Records {
                    half: h,
                    end,
                    last_seq,
                    ..
                }) if *h == half && *end == start => {
                    *end = start + need;
                    *last_seq = seq;
                }
                _ => st.pending.push_back(Pending::Records {
                    half,
                    generation,
                    start,
                    end: start + need,
                    last_seq: seq,
                }),
            }
            st.waiters.push_back((seq, tx));
            st.appends += 1;
            let leader = may_lead && !st.committing && may_commit(&st);
            st.committing |= leader;
            (seq, leader)
        };
        inner
            .bytes_appended
            .fetch_add(payload_len as u64, Ordering::Relaxed);
        if leader {
            inner.commit_loop();
        }
        Ok(Durable { seq, rx })
    }

    /// Seals the active half and opens the other one, if a CP released it.
    fn switch_half(&self, st: &mut State) -> Result<(), AppendError> {
        let other = 1 - st.writer.active;
        if st.writer.base_seq[other] != 0 {
            if !st.cp_wanted {
                st.cp_wanted = true;
                self.inner.cp.notify_waiters();
            }
            return Err(AppendError::Full);
        }
        let w = &mut st.writer;
        let generation = w.generation[other] + 1;
        let base_seq = w.next_seq;
        self.inner.own.reset_half(other, generation, base_seq);
        w.generation[other] = generation;
        w.base_seq[other] = base_seq;
        w.write_end[other] = 0;
        w.last_seq[other] = 0;
        w.active = other;
        st.pending.push_back(Pending::Reset {
            half: other,
            generation,
            base_seq,
        });
        // The sealed half can only be reused after a CP covers it: ask for one now.
        st.cp_wanted = true;
        self.inner.cp.notify_waiters();
        Ok(())
    }

    /// The FS finished a CP covering every record with `seq <= cp_seq`: sealed halves
    /// wholly covered (and durable) are released, locally and in the partner's mirror.
    pub fn release_through(&self, cp_seq: u64) {
        let inner = &self.inner;
        let mut released = false;
        let mut lead = false;
        {
            let mut st = lock(&inner.st);
            let limit = cp_seq.min(st.durable_seq);
            let sealed = 1 - st.writer.active;
            let (base, last, generation) = {
                let w = &st.writer;
                (
                    w.base_seq[sealed],
                    w.last_seq[sealed],
                    w.generation[sealed] + 1,
                )
            };
            let last = if last == 0 {
                base.saturating_sub(1)
            } else {
                last
            };
            if base != 0 && last <= limit {
                inner.own.reset_half(sealed, generation, 0);
                let w = &mut st.writer;
                w.generation[sealed] = generation;
                w.base_seq[sealed] = 0;
                w.write_end[sealed] = 0;
                w.last_seq[sealed] = 0;
                st.pending.push_back(Pending::Reset {
                    half: sealed,
                    generation,
                    base_seq: 0,
                });
                st.cp_wanted = false;
                released = true;
                lead = !st.committing && may_commit(&st);
                st.committing |= lead;
            }
        }
        if lead {
            inner.commit_loop();
        }
        if released {
            tracing::debug!(cp_seq, "nvlog: half released by CP");
            inner.space.notify_waiters();
        }
    }

    /// Waits until a sealed half wants a CP (the node's CP trigger).
    pub async fn cp_wanted(&self) {
        loop {
            let notified = self.inner.cp.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if lock(&self.inner.st).cp_wanted {
                return;
            }
            notified.await;
        }
    }

    /// Whether a sealed half awaits a CP (cheap poll for the node's CP trigger).
    pub fn cp_is_wanted(&self) -> bool {
        lock(&self.inner.st).cp_wanted
    }

    /// Highest sequence durable locally.
    pub fn durable_seq(&self) -> u64 {
        lock(&self.inner.st).durable_seq
    }

    /// Replays the own log from `from` (0 = everything).
    pub fn replay_own(&self, from: u64) -> Result<Replay, ReplayError> {
        self.inner.own.replay(from)
    }

    /// Replays the partner's log from our mirror area (takeover).
    pub fn replay_mirror(&self, from: u64) -> Result<Replay, ReplayError> {
        let _guard = self.inner.receiver.as_ref().map(|r| lock(r));
        self.inner.mirror.replay(from)
    }

    /// `Ok` when our mirror of the partner's log is in sync (takeover possible).
    pub fn partner_takeover_readiness(&self) -> Result<(), &'static str> {
        match &self.inner.receiver {
            Some(r) => lock(r).takeover_readiness(),
            None => Err(TAKEOVER_IMPOSSIBLE),
        }
    }

    /// Sets who decides that appends stop waiting for the partner (a clustered node hands
    /// the decision to its takeover machine: [`DegradePolicy::Never`] until the machine says
    /// [`DegradePolicy::Local`]). No effect without a partner.
    pub fn set_degrade_policy(&self, policy: DegradePolicy) {
        let resolved = {
            let mut st = lock(&self.inner.st);
            let Some(sender) = st.sender.as_mut() else {
                return;
            };
            sender.set_degrade_policy(policy);
            resolve(&mut st)
        };
        resolved.wake();
        self.inner.try_lead();
    }

    /// Whether every durable record is in the partner's mirror and acknowledged (true
    /// without a partner): a resync after a local-only period is complete.
    pub fn mirror_synced(&self) -> bool {
        let st = lock(&self.inner.st);
        match &st.sender {
            Some(s) => s.synced(),
            None => true,
        }
    }

    /// Opens (true) or closes our mirror area to the partner's log (closed while we take
    /// over or serve the partner's identity).
    pub fn set_accept_partner(&self, accept: bool) {
        if let Some(r) = &self.inner.receiver {
            lock(r).set_accepting(accept);
        }
    }

    /// Restarts the own log at `first_seq`: both halves are emptied, and the next record
    /// gets `first_seq`. For a log whose every record is covered by the file system (its
    /// `applied_seq` is at least `first_seq - 1`), e.g. after the partner served our
    /// identity and continued our sequence numbers: new records must sort after what the
    /// file system already applied, or a replay would skip them. Refused while appends are
    /// in flight or when it would move the sequence backwards.
    pub fn restart_at(&self, first_seq: u64) -> Result<(), String> {
        let inner = &self.inner;
        let lead = {
            let mut st = lock(&inner.st);
            if !st.waiters.is_empty() || !st.pending.is_empty() || st.committing {
                return Err("appends are in flight".into());
            }
            if first_seq < st.writer.next_seq {
                return Err(format!(
                    "the log already holds seq {}; cannot restart it at {first_seq}",
                    st.writer.next_seq - 1
                ));
            }
            if first_seq == st.writer.next_seq {
                return Ok(());
            }
            let active = st.writer.active;
            for half in [1 - active, active] {
                let generation = st.writer.generation[half] + 1;
                let base_seq = if half == active { first_seq } else { 0 };
                inner.own.reset_half(half, generation, base_seq);
                let w = &mut st.writer;
                w.generation[half] = generation;
                w.base_seq[half] = base_seq;
                w.write_end[half] = 0;
                w.last_seq[half] = 0;
                st.pending.push_back(Pending::Reset {
                    half,
                    generation,
                    base_seq,
                });
            }
            st.writer.next_seq = first_seq;
            st.durable_seq = first_seq - 1;
            st.cp_wanted = false;
            let lead = may_commit(&st);
            st.committing |= lead;
            lead
        };
        tracing::info!(
            first_seq,
            "nvlog: log restarted past the file system's applied seq"
        );
        if lead {
            inner.commit_loop();
        }
        inner.space.notify_waiters();
        Ok(())
    }

    /// Highest record sequence in our mirror of the partner's log (0 when empty).
    pub fn mirror_last_seq(&self) -> Result<u64, ReplayError> {
        let _guard = self.inner.receiver.as_ref().map(|r| lock(r));
        Ok(self
            .inner
            .mirror
            .scan()?
            .iter()
            .filter_map(|s| {
                s.last_seq()
                    .or(s.header.map(|h| h.base_seq.saturating_sub(1)))
            })
            .max()
            .unwrap_or(0))
    }

    /// Payload bytes appended since open.
    pub fn bytes_appended(&self) -> u64 {
        self.inner.bytes_appended.load(Ordering::Relaxed)
    }

    /// Current status.
    pub fn status(&self) -> Status {
        let inner = &self.inner;
        let st = lock(&inner.st);
        let (mirror, mirrored_seq, counters) = match &st.sender {
            Some(s) => (s.state(), s.mirrored_seq(), s.counters()),
            None => (MirrorState::Standalone, 0, Default::default()),
        };
        Status {
            persist_mode: inner.own.region().mode().to_string(),
            region_path: inner.own.region().path().to_owned(),
            epoch: inner.epoch,
            mirror,
            partner_mirror_in_sync: inner.receiver.as_ref().is_some_and(|r| lock(r).in_sync()),
            next_seq: st.writer.next_seq,
            durable_seq: st.durable_seq,
            mirrored_seq,
            active_half: st.writer.active,
            half_used_bytes: st.writer.write_end,
            half_capacity_bytes: inner.own.capacity(),
            cp_wanted: st.cp_wanted,
            appends: st.appends,
            group_commits: st.group_commits,
            backpressure_waits: st.backpressure_waits,
            auth_failures: inner.auth_failures.get(),
            degraded_entries: counters.degraded_entries,
            mirror_sessions: counters.sessions,
            mirror_lag_bytes: st.unmirrored_batches.iter().map(|b| b.bytes).sum(),
        }
    }

    /// The latencies measured since the last call (for the metrics poller).
    pub fn take_latencies(&self) -> Latencies {
        std::mem::take(&mut lock(&self.inner.st).latencies)
    }
}

/// Finds where the own log ends and prepares the writer to continue after it.
fn recover_writer(own: &LogArea) -> Result<Writer, ReplayError> {
    let scans = own.scan()?;
    let mut w = Writer {
        active: 0,
        generation: [own.generation(0), own.generation(1)],
        base_seq: [0; 2],
        write_end: [0; 2],
        last_seq: [0; 2],
        next_seq: 1,
    };
    for scan in &scans {
        let h = scan.half;
        let header = scan.header.expect("scan keeps only halves with a header");
        w.base_seq[h] = header.base_seq;
        w.write_end[h] = scan.valid_end;
        w.last_seq[h] = scan.last_seq().unwrap_or(0);
        w.active = h; // scans are oldest first: the last one is active
        w.next_seq = scan.last_seq().map_or(header.base_seq, |s| s + 1);
    }
    for h in 0..2 {
        let kept = scans.iter().any(|s| s.half == h);
        if !kept && own.header(h).is_some() {
            // A newer half that never received a committed record (crash while switching):
            // free it so the log continues in the older half.
            w.generation[h] += 1;
            own.reset_half(h, w.generation[h], 0);
        }
    }
    if scans.is_empty() {
        w.generation[0] += 1;
        own.reset_half(0, w.generation[0], 1);
        w.base_seq[0] = 1;
    } else {
        // Intact records past the committed end are kept: make them committed so the
        // mirror resync (which sends committed bytes) covers them.
        let a = w.active;
        let committed = own.committed_end(a);
        if w.write_end[a] > committed {
            own.commit(a, committed, w.write_end[a]);
        }
        if let Some(torn) = scans.iter().find_map(|s| match &s.tail {
            crate::log::Tail::Torn { offset, fault, .. } => Some((s.half, *offset, fault.clone())),
            _ => None,
        }) {
            tracing::warn!(half = torn.0, offset = torn.1, fault = %torn.2, "nvlog: torn tail record discarded at open");
        }
    }
    Ok(w)
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The group-commit leader: persist everything written, publish, send, repeat while
    /// more arrived meanwhile and the mirror window allows. Bounded: each round consumes
    /// what exists at its start.
    fn commit_loop(&self) {
        loop {
            let batch: Vec<Pending> = {
                let mut st = lock(&self.st);
                assert!(st.committing);
                if st.pending.is_empty() || !may_commit(&st) {
                    st.committing = false;
                    return;
                }
                st.pending.drain(..).collect()
            };
            // Persist outside the lock: appenders keep copying into the bytes after ours.
            let persist_started = Instant::now();
            let mut last = None;
            let mut batch_bytes = 0u64;
            for p in &batch {
                if let Pending::Records {
                    half,
                    start,
                    end,
                    last_seq,
                    ..
                } = p
                {
                    self.own.commit(*half, *start, *end);
                    last = Some(*last_seq);
                    batch_bytes += end - start;
                }
            }
            let persisted_at = Instant::now();
            let resolved = {
                let mut st = lock(&self.st);
                st.group_commits += 1;
                if last.is_some() {
                    let secs = persisted_at.duration_since(persist_started).as_secs_f64();
                    sample(&mut st.latencies.persist_seconds, secs);
                }
                if let Some(seq) = last {
                    assert!(seq > st.durable_seq, "durable sequence must grow");
                    st.durable_seq = seq;
                }
                let st = &mut *st;
                if let Some(sender) = st.sender.as_mut() {
                    for p in batch {
                        let event = match p {
                            Pending::Records {
                                half,
                                generation,
                                start,
                                end,
                                last_seq,
                            } => LocalEvent::Records {
                                half,
                                generation,
                                start,
                                end,
                                last_seq,
                            },
                            Pending::Reset {
                                half,
                                generation,
                                base_seq,
                            } => LocalEvent::Reset {
                                half,
                                generation,
                                base_seq,
                            },
                        };
                        sender.on_local(event, &self.own);
                    }
                    if let Some(seq) = last {
                        if !sender.is_degraded() {
                            st.unmirrored_batches.push_back(UnmirroredBatch {
                                seq,
                                persisted_at,
                                bytes: batch_bytes,
                            });
                        }
                    }
                }
                resolve(st)
            };
            resolved.wake();
            self.pump();
        }
    }

    /// Starts a group commit if one is due: from a non-appender thread (acks opened the
    /// window, or the mirror degraded), or for appenders that deferred theirs.
    fn try_lead(&self) {
        {
            let mut st = lock(&self.st);
            if st.committing || st.pending.is_empty() || !may_commit(&st) {
                return;
            }
            st.committing = true;
        }
        self.commit_loop();
    }

    /// Writes what the sender wants to transmit. Takes the wire lock first, so frames leave
    /// in the order the sender produced them.
    fn pump(&self) {
        let mut wire = lock(&self.wire);
        let Some(sink) = wire.as_mut() else { return };
        loop {
            let frames: Vec<Frame> = {
                let mut st = lock(&self.st);
                let now = self.now_ms();
                let Some(sender) = st.sender.as_mut() else {
                    return;
                };
                let mut v = Vec::new();
                while v.len() < TRANSMIT_BATCH_FRAMES_MAX {
                    match sender.poll_transmit(now) {
                        Some(f) => v.push(f),
                        None => break,
                    }
                }
                v
            };
            if frames.is_empty() {
                return;
            }
            if let Err(e) = sink.send(&frames) {
                tracing::debug!(error = %e, "nvlog mirror: send failed; reconnecting");
                sink.close();
                *wire = None;
                return;
            }
        }
    }
}

/// Whether a group commit may start now: always without a mirror or when degraded,
/// else when no group awaits the partner's ack, or fewer than
/// `MIRROR_BATCHES_INFLIGHT_MAX` do and at least `MIRROR_PIPELINE_BYTES_MIN` are pending.
fn may_commit(st: &State) -> bool {
    match &st.sender {
        None => true,
        Some(s) => {
            s.is_degraded()
                || st.unmirrored_batches.is_empty()
                || (st.unmirrored_batches.len() < MIRROR_BATCHES_INFLIGHT_MAX
                    && pending_bytes(st) >= MIRROR_PIPELINE_BYTES_MIN)
        }
    }
}

/// Record bytes waiting for the next group commit.
fn pending_bytes(st: &State) -> u64 {
    st.pending
        .iter()
        .map(|p| match p {
            Pending::Records { start, end, .. } => end - start,
            Pending::Reset { .. } => 0,
        })
        .sum()
}

/// Waiters taken off the queue by [`resolve`], woken once the state lock is released (a
/// woken appender goes straight for that lock: waking it under the lock made it sleep
/// on the mutex, one more context switch per append).
#[must_use = "the resolved appenders must be woken"]
struct Resolved(Vec<(u64, oneshot::Sender<Result<u64, AppendError>>)>);

impl Resolved {
    fn wake(self) {
        for (seq, tx) in self.0 {
            let _ = tx.send(Ok(seq));
        }
    }
}

/// Takes every waiter whose record is durable and mirrored (or the mirror is degraded).
fn resolve(st: &mut State) -> Resolved {
    let limit = match &st.sender {
        Some(s) => {
            let mirrored = if s.is_degraded() {
                u64::MAX
            } else {
                s.mirrored_seq()
            };
            let now = Instant::now();
            while let Some(b) = st.unmirrored_batches.front().copied() {
                if b.seq > mirrored {
                    break;
                }
                st.unmirrored_batches.pop_front();
                if mirrored != u64::MAX {
                    let secs = now.duration_since(b.persisted_at).as_secs_f64();
                    sample(&mut st.latencies.mirror_seconds, secs);
                }
            }
            s.resolvable_seq(st.durable_seq)
        }
        None => st.durable_seq,
    };
    let mut resolved = Vec::new();
    while st.waiters.front().is_some_and(|(seq, _)| *seq <= limit) {
        if let Some(w) = st.waiters.pop_front() {
            resolved.push(w);
        }
    }
    Resolved(resolved)
}

/// The sender's driver thread: connects, reads acks, runs timers, and sends what acks and
/// timers release.
///
/// Why the driver may block on a write without deadlocking the pair: the partner only
/// writes acks, at most one per frame, and at most `window_frames_max` frames are unacked,
/// so the acks it can have outstanding (≤ 512 × 72 bytes by default) fit in our socket
/// receive buffer: the partner never blocks on an ack write while we block on a send.
fn spawn_sender(inner: Arc<Inner>, connector: Box<dyn Connector>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("nvlog-mirror".into())
        .spawn(move || driver_thread(&inner, connector.as_ref()))
        .expect("spawning a thread")
}

fn driver_thread(inner: &Inner, connector: &dyn Connector) {
    let mut backoff_ms = RECONNECT_BACKOFF_MS;
    while !inner.shutdown.load(Ordering::SeqCst) {
        let conn = connector.connect();
        let mut source = match conn {
            Ok((sink, source)) => {
                *lock(&inner.wire) = Some(sink);
                if let Some(s) = lock(&inner.st).sender.as_mut() {
                    s.on_connected(inner.now_ms());
                }
                inner.pump();
                Some(source)
            }
            Err(e) => {
                tracing::debug!(error = %e, "nvlog mirror: connect failed");
                None
            }
        };
        let mut answered = false;
        if let Some(src) = source.as_mut() {
            answered = run_session(inner, src.as_mut());
            if let Some(mut w) = lock(&inner.wire).take() {
                w.close();
            }
            let mut st = lock(&inner.st);
            let now = inner.now_ms();
            if let Some(s) = st.sender.as_mut() {
                s.on_disconnected(now);
            }
            let resolved = resolve(&mut st);
            drop(st);
            resolved.wake();
            inner.try_lead();
        }
        // Back off, still running timers (the degraded bound must fire while disconnected).
        backoff_ms = if answered {
            RECONNECT_BACKOFF_MS
        } else {
            (backoff_ms * 2).min(RECONNECT_BACKOFF_MS_MAX)
        };
        let until = inner.now_ms() + backoff_ms;
        while inner.now_ms() < until && !inner.shutdown.load(Ordering::SeqCst) {
            tick(inner);
            std::thread::sleep(Duration::from_millis(crate::tcp::POLL_INTERVAL_MS));
        }
    }
}

fn tick(inner: &Inner) {
    let mut st = lock(&inner.st);
    let now = inner.now_ms();
    if let Some(s) = st.sender.as_mut() {
        s.on_tick(now);
    }
    let resolved = resolve(&mut st);
    drop(st);
    resolved.wake();
    inner.try_lead();
}

/// Runs one connection; returns whether the partner answered (a frame other than Reject).
fn run_session(inner: &Inner, source: &mut dyn FrameSource) -> bool {
    let mut answered = false;
    while !inner.shutdown.load(Ordering::SeqCst) {
        let frame = match source.recv() {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(error = %e, "nvlog mirror: session ended");
                return answered;
            }
        };
        let got_frame = frame.is_some();
        let (down, pending, resolved) = {
            let mut st = lock(&inner.st);
            let now = inner.now_ms();
            let st = &mut *st;
            let Some(sender) = st.sender.as_mut() else {
                return answered;
            };
            match frame {
                Some(f) => sender.on_frame(f, now, &inner.own),
                None => sender.on_tick(now),
            }
            let down = sender.wants_connection();
            let pending = sender.has_pending();
            (down, pending, resolve(st))
        };
        resolved.wake();
        if down {
            return false; // rejected
        }
        answered |= got_frame;
        inner.try_lead();
        if pending {
            inner.pump();
        }
        // Lock order is wire → st (see `pump`): the state lock is released above.
        if lock(&inner.wire).is_none() {
            return answered; // a send failed
        }
    }
    answered
}

fn spawn_acceptor(inner: Arc<Inner>, mut acceptor: Box<dyn Acceptor>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("nvlog-mirror-rx".into())
        .spawn(move || {
            let mut current: Option<(Arc<AtomicBool>, JoinHandle<()>)> = None;
            while !inner.shutdown.load(Ordering::SeqCst) {
                let conn = match acceptor.accept() {
                    Ok(Some(c)) => c,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "nvlog mirror: accept failed");
                        std::thread::sleep(Duration::from_millis(RECONNECT_BACKOFF_MS));
                        continue;
                    }
                };
                // One partner, one session: a new connection supersedes the old one.
                if let Some((stop, handle)) = current.take() {
                    stop.store(true, Ordering::SeqCst);
                    let _ = handle.join();
                }
                let stop = Arc::new(AtomicBool::new(false));
                let (i2, s2) = (inner.clone(), stop.clone());
                let handle = std::thread::Builder::new()
                    .name("nvlog-mirror-conn".into())
                    .spawn(move || receive_session(&i2, &s2, conn))
                    .expect("spawning a thread");
                current = Some((stop, handle));
            }
            if let Some((stop, handle)) = current.take() {
                stop.store(true, Ordering::SeqCst);
                let _ = handle.join();
            }
        })
        .expect("spawning a thread")
}

fn receive_session(inner: &Inner, stop: &AtomicBool, conn: crate::transport::Connection) {
    let (mut sink, mut source) = conn;
    let Some(receiver) = inner.receiver.as_ref() else {
        return;
    };
    let peer = source.peer();
    let result: Result<(), crate::transport::TransportError> = (|| {
        while !stop.load(Ordering::SeqCst) && !inner.shutdown.load(Ordering::SeqCst) {
            let frame = source.recv()?;
            let mut out = Vec::new();
            {
                let mut r = lock(receiver);
                if let Some(f) = frame {
                    if let Some(reply) = r.on_frame(f) {
                        out.push(reply);
                    }
                }
                // Coalesce: ack once the input buffer is drained (or on the poll timeout).
                if !source.has_buffered() {
                    out.extend(r.take_ack());
                }
            }
            if !out.is_empty() {
                let reject = out.iter().any(|f| matches!(f, Frame::Reject { .. }));
                sink.send(&out)?;
                if reject {
                    return Ok(());
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "nvlog mirror: partner session ended");
    }
    sink.close();
    lock(receiver).on_disconnected();
}
