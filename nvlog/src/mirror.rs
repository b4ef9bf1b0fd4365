//! The mirror protocol as two sans-IO state machines: [`Sender`] (runs on the log owner)
//! and [`Receiver`] (holds the partner's mirror area). Frames and `now_ms` in, frames out;
//! sockets, threads and clocks live in the transports and the engine.
//!
//! Sessions: every connect starts a session `(epoch, session)`; frames of other sessions
//! are ignored, and a Hello from an older epoch (a stale process of the partner) is
//! rejected. Within a session sequenced frames carry a frame number (`lsn`); the receiver
//! applies them strictly in order (go-back-N: out-of-order frames are dropped and
//! retransmitted on a timer), so any loss or reordering below is tolerated.
//! Resync: on Welcome the receiver says what each mirror half holds; the sender sends only
//! what is missing (or resets the half), then `Synced`.

use crate::format::{self, decode_record, decode_record_header};
use crate::log::{LogArea, ReplayError};
use crate::proto::{Frame, HalfState};
use bytes::Bytes;
use std::collections::VecDeque;

/// Bounds and timers of the sender.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// Partner unreachable (or not acking) this long → MIRROR_DEGRADED.
    pub degraded_after_ms: u64,
    /// Unacked frames are sent again after this long without ack progress.
    pub retransmit_ms: u64,
    /// Frames in flight at most.
    pub window_frames_max: usize,
    /// Record bytes in flight at most.
    pub window_bytes_max: usize,
    /// Largest record bytes per Append frame.
    pub append_chunk_bytes_max: usize,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            degraded_after_ms: 2000,
            retransmit_ms: 500,
            // Bounds the partner's outstanding acks (see the engine's driver thread).
            window_frames_max: 512,
            window_bytes_max: 32 << 20,
            append_chunk_bytes_max: 1 << 20,
        }
    }
}

/// Mirror state as reported in status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorState {
    /// No partner configured: appends resolve on local durability.
    Standalone,
    /// Partner configured, mirror not (yet) in sync, still within the degraded bound.
    Syncing,
    /// Every durable record is (or will be, before its append resolves) in the mirror.
    InSync,
    /// MIRROR_DEGRADED: local-only logging; takeover by the partner is impossible.
    Degraded {
        /// Why.
        reason: String,
    },
}

/// Who decides that acknowledgements stop waiting for the partner's mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DegradePolicy {
    /// The sender itself, after `degraded_after_ms` without the partner (a mirrored node
    /// that is not part of a cluster).
    Auto,
    /// Never on its own: appends wait for the partner until the cluster says otherwise
    /// (the cluster first records `unmirrored` on disk, where a taker reads it after fencing).
    Never,
    /// Local-only now, by order of the cluster (partner down, cut, or taken over by us).
    Local,
}

/// Why the mirror refuses the partner's frames while this node holds the partner's identity.
pub const MIRROR_CLOSED: &str = "mirror closed: this node holds (or is taking) your identity";

/// The message the partner gets when asking to take over while the mirror is not in sync.
pub const TAKEOVER_IMPOSSIBLE: &str = "takeover impossible: mirror not in sync";

/// A change of the own log that the mirror must follow (emitted by the log writer in order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalEvent {
    /// Records `[start, end)` of `half` are durable locally; `end` is a record boundary.
    Records {
        /// Half.
        half: usize,
        /// Generation of the half.
        generation: u64,
        /// Start offset (record boundary).
        start: u64,
        /// End offset (record boundary).
        end: u64,
        /// Sequence number of the last record in the range.
        last_seq: u64,
    },
    /// `half` was reset (base 0 = released).
    Reset {
        /// Half.
        half: usize,
        /// New generation.
        generation: u64,
        /// New base sequence.
        base_seq: u64,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct View {
    generation: u64,
    base_seq: u64,
    end: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conn {
    Down,
    AwaitWelcome { hello_at_ms: Option<u64> },
    Streaming,
}

/// Sender counters (metrics).
#[derive(Clone, Copy, Debug, Default)]
pub struct SenderCounters {
    /// Sessions started.
    pub sessions: u64,
    /// Frames retransmitted after a timeout.
    pub retransmits: u64,
    /// Rejections received.
    pub rejects: u64,
    /// Times MIRROR_DEGRADED was entered.
    pub degraded_entries: u64,
}

/// The log owner's side of the mirror protocol.
pub struct Sender {
    cfg: SenderConfig,
    epoch: u64,
    session: u64,
    conn: Conn,
    next_lsn: u64,
    queue: VecDeque<Frame>,
    inflight: VecDeque<Frame>,
    inflight_bytes: usize,
    view: [View; 2],
    sync_lsn: Option<u64>,
    in_sync: bool,
    mirrored_seq: u64,
    unacked_since_ms: u64,
    healthy_at_ms: u64,
    degraded: Option<String>,
    policy: DegradePolicy,
    last_reject: Option<String>,
    counters: SenderCounters,
}

impl Sender {
    /// A sender for the owner's `epoch`, created at `now_ms` (the degraded bound counts from
    /// here, so a node that boots without its partner degrades after the bound).
    pub fn new(cfg: SenderConfig, epoch: u64, now_ms: u64) -> Sender {
        assert!(cfg.window_frames_max > 0 && cfg.window_bytes_max >= cfg.append_chunk_bytes_max);
        Sender {
            cfg,
            epoch,
            session: 0,
            conn: Conn::Down,
            next_lsn: 1,
            queue: VecDeque::new(),
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            view: [View::default(); 2],
            sync_lsn: None,
            in_sync: false,
            mirrored_seq: 0,
            unacked_since_ms: now_ms,
            healthy_at_ms: now_ms,
            degraded: None,
            policy: DegradePolicy::Auto,
            last_reject: None,
            counters: SenderCounters::default(),
        }
    }

    /// Sets who decides degradation (see [`DegradePolicy`]). `Never` also leaves a degraded
    /// state: from now on appends resolve only once mirrored.
    pub fn set_degrade_policy(&mut self, policy: DegradePolicy) {
        if policy == self.policy {
            return;
        }
        match policy {
            DegradePolicy::Local => {
                self.counters.degraded_entries += 1;
                tracing::warn!("nvlog mirror: local-only logging by order of the cluster ({TAKEOVER_IMPOSSIBLE})");
            }
            DegradePolicy::Never => {
                if self.is_degraded() {
                    tracing::info!("nvlog mirror: leaving local-only logging; appends wait for the partner again");
                }
                self.degraded = None;
            }
            DegradePolicy::Auto => {}
        }
        self.policy = policy;
    }

    /// Whether every record is in the partner's mirror and nothing is in flight (a resync
    /// after a degraded period is complete).
    pub fn synced(&self) -> bool {
        self.in_sync && self.all_acked()
    }

    /// The transport connected: start a new session (sends Hello).
    pub fn on_connected(&mut self, now_ms: u64) {
        self.reset_session();
        self.session += 1;
        self.counters.sessions += 1;
        self.conn = Conn::AwaitWelcome { hello_at_ms: None };
        self.unacked_since_ms = now_ms;
    }

    /// The transport lost the connection.
    pub fn on_disconnected(&mut self, now_ms: u64) {
        if self.in_sync {
            tracing::info!("nvlog mirror: connection to partner lost");
        }
        self.reset_session();
        self.conn = Conn::Down;
        self.on_tick(now_ms);
    }

    fn reset_session(&mut self) {
        self.queue.clear();
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.sync_lsn = None;
        self.in_sync = false;
        self.next_lsn = 1;
    }

    /// Whether the transport should be (re)connected.
    pub fn wants_connection(&self) -> bool {
        self.conn == Conn::Down
    }

    /// A frame arrived from the receiver. `log` is the own log (read for the resync).
    pub fn on_frame(&mut self, frame: Frame, now_ms: u64, log: &LogArea) {
        match frame {
            Frame::Welcome { session, halves } if session == self.session => {
                if matches!(self.conn, Conn::AwaitWelcome { .. }) {
                    self.conn = Conn::Streaming;
                    self.build_resync(&halves, log);
                    self.unacked_since_ms = now_ms;
                }
            }
            Frame::Ack { session, lsn, seq } if session == self.session => {
                self.on_ack(lsn, seq, now_ms)
            }
            Frame::Reject { reason } => {
                tracing::warn!(%reason, "nvlog mirror: partner rejected the session");
                self.counters.rejects += 1;
                self.last_reject = Some(reason);
                self.reset_session();
                self.conn = Conn::Down;
            }
            _ => {} // other sessions, or frames only a receiver handles
        }
        self.on_tick(now_ms);
    }

    fn on_ack(&mut self, lsn: u64, seq: u64, now_ms: u64) {
        let mut progressed = false;
        while self
            .inflight
            .front()
            .and_then(Frame::lsn)
            .is_some_and(|l| l <= lsn)
        {
            if let Some(f) = self.inflight.pop_front() {
                self.inflight_bytes -= f.payload_len();
                progressed = true;
            }
        }
        if progressed {
            self.unacked_since_ms = now_ms;
        }
        self.mirrored_seq = self.mirrored_seq.max(seq);
        if self.sync_lsn.is_some_and(|s| s <= lsn) && !self.in_sync {
            self.in_sync = true;
            if self.degraded.take().is_some() {
                tracing::info!("nvlog mirror: partner resynced, leaving MIRROR_DEGRADED");
            } else {
                tracing::info!("nvlog mirror: in sync with partner");
            }
        }
    }

    fn build_resync(&mut self, halves: &[HalfState; 2], log: &LogArea) {
        let mut order: Vec<usize> = vec![0, 1];
        // Releases first, then the older half, so the mirror never holds a newer half
        // without the older one it continues.
        order.sort_by_key(|h| log.header(*h).map_or(0, |hd| hd.base_seq));
        self.mirrored_seq = 0;
        for half in order {
            let mirror = halves[half];
            let Some(own) = log.header(half) else {
                if mirror.base_seq != 0 {
                    let generation = log.generation(half);
                    self.push_reset(half, generation, 0);
                }
                self.view[half] = View::default();
                continue;
            };
            let own_end = log.committed_end(half);
            let same = mirror.generation == own.generation
                && mirror.base_seq == own.base_seq
                && mirror.committed_end <= own_end;
            let start = if same {
                if mirror.last_seq != 0 {
                    self.mirrored_seq = self.mirrored_seq.max(mirror.last_seq);
                }
                mirror.committed_end
            } else {
                self.push_reset(half, own.generation, own.base_seq);
                0
            };
            self.view[half] = View {
                generation: own.generation,
                base_seq: own.base_seq,
                end: start,
            };
            self.push_records_from_log(half, own.generation, start, own_end, log, true);
        }
        let lsn = self.take_lsn();
        self.queue.push_back(Frame::Synced {
            session: self.session,
            lsn,
        });
        self.sync_lsn = Some(lsn);
    }

    /// Queues Append frames for `[start, end)` of `half`, cut at record boundaries.
    /// `verify_crc`: check each record's CRC too (resync reads what may predate a crash;
    /// records of a group commit just encoded by this node need only their headers).
    fn push_records_from_log(
        &mut self,
        half: usize,
        generation: u64,
        start: u64,
        end: u64,
        log: &LogArea,
        verify_crc: bool,
    ) {
        if start >= end {
            return;
        }
        let bytes = log.read(half, start, end);
        let mut chunk_start = 0usize;
        let mut at = 0usize;
        let mut last_seq = 0;
        while at < bytes.len() {
            let decoded = if verify_crc {
                decode_record(&bytes[at..])
            } else {
                decode_record_header(&bytes[at..])
            };
            let Ok(h) = decoded else {
                // Committed bytes always decode; a failure is local corruption that replay
                // will report. Stop mirroring this half rather than ship garbage.
                tracing::error!(
                    half,
                    offset = start + at as u64,
                    "nvlog mirror: committed record does not decode"
                );
                break;
            };
            let len = format::record_bytes(h.payload_len as usize);
            if at + len - chunk_start > self.cfg.append_chunk_bytes_max && at > chunk_start {
                self.push_append(
                    half,
                    generation,
                    start + chunk_start as u64,
                    &bytes[chunk_start..at],
                    last_seq,
                );
                chunk_start = at;
            }
            last_seq = h.seq;
            at += len;
        }
        if at > chunk_start {
            self.push_append(
                half,
                generation,
                start + chunk_start as u64,
                &bytes[chunk_start..at],
                last_seq,
            );
        }
        self.view[half].end = start + at as u64;
    }

    fn push_append(
        &mut self,
        half: usize,
        generation: u64,
        offset: u64,
        bytes: &[u8],
        last_seq: u64,
    ) {
        let lsn = self.take_lsn();
        self.queue.push_back(Frame::Append {
            session: self.session,
            lsn,
            half: half as u8,
            generation,
            offset,
            last_seq,
            bytes: Bytes::copy_from_slice(bytes),
        });
    }

    fn push_reset(&mut self, half: usize, generation: u64, base_seq: u64) {
        let lsn = self.take_lsn();
        self.queue.push_back(Frame::Reset {
            session: self.session,
            lsn,
            half: half as u8,
            generation,
            base_seq,
        });
    }

    fn take_lsn(&mut self) -> u64 {
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        lsn
    }

    /// The own log changed (in log order). Ignored while no session streams: the next
    /// session's resync reads the log itself, so nothing queues up while degraded.
    pub fn on_local(&mut self, event: LocalEvent, log: &LogArea) {
        if self.conn != Conn::Streaming {
            return;
        }
        match event {
            LocalEvent::Reset {
                half,
                generation,
                base_seq,
            } => {
                self.push_reset(half, generation, base_seq);
                self.view[half] = View {
                    generation,
                    base_seq,
                    end: 0,
                };
            }
            LocalEvent::Records {
                half,
                generation,
                start,
                end,
                ..
            } => {
                let view = self.view[half];
                assert_eq!(
                    view.generation, generation,
                    "records for a half the mirror view lacks"
                );
                assert!(
                    view.end >= start,
                    "gap in the mirrored stream: view {} start {start}",
                    view.end
                );
                if end > view.end {
                    // Fresh records this node just encoded: no second CRC pass (the partner's
                    // receiver still verifies every record's CRC).
                    self.push_records_from_log(half, generation, view.end, end, log, false);
                }
            }
        }
    }

    /// Next frame to put on the wire, within the window.
    pub fn poll_transmit(&mut self, now_ms: u64) -> Option<Frame> {
        match self.conn {
            Conn::Down => None,
            Conn::AwaitWelcome { hello_at_ms } => {
                let due = hello_at_ms.is_none_or(|t| now_ms >= t + self.cfg.retransmit_ms);
                if !due {
                    return None;
                }
                self.conn = Conn::AwaitWelcome {
                    hello_at_ms: Some(now_ms),
                };
                Some(Frame::Hello {
                    epoch: self.epoch,
                    session: self.session,
                })
            }
            Conn::Streaming => {
                let front_len = self.queue.front()?.payload_len();
                let window_full = self.inflight.len() >= self.cfg.window_frames_max
                    || (self.inflight_bytes + front_len > self.cfg.window_bytes_max
                        && !self.inflight.is_empty());
                if window_full {
                    return None;
                }
                let frame = self.queue.pop_front()?;
                if self.inflight.is_empty() {
                    self.unacked_since_ms = now_ms;
                }
                self.inflight_bytes += frame.payload_len();
                self.inflight.push_back(frame.clone());
                Some(frame)
            }
        }
    }

    /// Timers: retransmission and the degraded bound.
    pub fn on_tick(&mut self, now_ms: u64) {
        if self.conn == Conn::Streaming
            && !self.inflight.is_empty()
            && now_ms >= self.unacked_since_ms + self.cfg.retransmit_ms
        {
            // Go-back-N: everything unacked goes out again, in order.
            self.counters.retransmits += self.inflight.len() as u64;
            while let Some(f) = self.inflight.pop_back() {
                self.queue.push_front(f);
            }
            self.inflight_bytes = 0;
            self.unacked_since_ms = now_ms;
        }
        let idle = self.inflight.is_empty() && self.queue.is_empty();
        let healthy =
            self.in_sync && (idle || now_ms < self.unacked_since_ms + self.cfg.degraded_after_ms);
        if healthy || self.policy != DegradePolicy::Auto {
            self.healthy_at_ms = now_ms;
        } else if self.degraded.is_none()
            && now_ms >= self.healthy_at_ms + self.cfg.degraded_after_ms
        {
            let reason = match (&self.last_reject, self.conn) {
                (Some(r), Conn::Down) => format!("partner rejected the mirror session: {r}"),
                (_, Conn::Down) => {
                    format!("partner unreachable for {} ms", self.cfg.degraded_after_ms)
                }
                (_, Conn::AwaitWelcome { .. }) => {
                    "partner does not answer the mirror handshake".into()
                }
                (_, Conn::Streaming) => format!(
                    "partner has not acknowledged for {} ms",
                    self.cfg.degraded_after_ms
                ),
            };
            tracing::warn!(%reason, "nvlog mirror: entering MIRROR_DEGRADED, logging locally only ({TAKEOVER_IMPOSSIBLE})");
            self.counters.degraded_entries += 1;
            self.degraded = Some(reason);
        }
    }

    /// Records with `seq <= ` this may resolve, given the local durable sequence.
    pub fn resolvable_seq(&self, durable_seq: u64) -> u64 {
        if self.is_degraded() {
            durable_seq
        } else {
            durable_seq.min(self.mirrored_seq)
        }
    }

    /// Whether the mirror is in MIRROR_DEGRADED (appends resolve locally).
    pub fn is_degraded(&self) -> bool {
        self.degraded.is_some() || self.policy == DegradePolicy::Local
    }

    /// Highest sequence acknowledged durable by the partner.
    pub fn mirrored_seq(&self) -> u64 {
        self.mirrored_seq
    }

    /// Current state.
    pub fn state(&self) -> MirrorState {
        if self.policy == DegradePolicy::Local {
            MirrorState::Degraded {
                reason: "local-only logging: the partner is down, cut off, or taken over".into(),
            }
        } else if let Some(reason) = &self.degraded {
            MirrorState::Degraded {
                reason: reason.clone(),
            }
        } else if self.in_sync {
            MirrorState::InSync
        } else {
            MirrorState::Syncing
        }
    }

    /// Whether frames are waiting for the window or the wire.
    pub fn has_pending(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Whether every queued frame was sent and acknowledged.
    pub fn all_acked(&self) -> bool {
        self.queue.is_empty() && self.inflight.is_empty()
    }

    /// Counters.
    pub fn counters(&self) -> SenderCounters {
        self.counters
    }
}

/// Receiver counters (metrics).
#[derive(Clone, Copy, Debug, Default)]
pub struct ReceiverCounters {
    /// Sessions accepted.
    pub sessions: u64,
    /// Hellos refused as stale (older epoch or session).
    pub stale_rejects: u64,
    /// Sequenced frames dropped as out of order or of another session.
    pub dropped: u64,
    /// Frames refused for bad content (protocol violations).
    pub violations: u64,
    /// Bytes of records applied.
    pub bytes_applied: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct MirrorHalf {
    generation: u64,
    base_seq: u64,
    end: u64,
    last_seq: u64,
}

/// The mirror holder's side: applies the partner's log to the mirror area.
pub struct Receiver {
    log: LogArea,
    epoch_max: u64,
    session: Option<(u64, u64)>,
    next_lsn: u64,
    halves: [MirrorHalf; 2],
    session_last_seq: u64,
    ack_due: bool,
    in_sync: bool,
    accepting: bool,
    counters: ReceiverCounters,
}

impl Receiver {
    /// Opens the receiver over the mirror area `log`, reading what it holds.
    pub fn open(log: LogArea) -> Result<Receiver, ReplayError> {
        let mut halves = [MirrorHalf::default(); 2];
        for (i, h) in halves.iter_mut().enumerate() {
            let scan = match log.scan_half(i) {
                Ok(scan) => scan,
                Err(e) => {
                    // Keep the bytes (a takeover replay still reports the damage), but tell
                    // the partner we hold nothing here: its resync resets and resends the half.
                    tracing::error!(error = %e, half = i, "nvlog mirror: damaged mirror half; asking the partner for a full resend");
                    continue;
                }
            };
            if let Some(hd) = scan.header {
                // Only committed bytes count: anything past was never acknowledged, and the
                // sender resends from the committed end.
                let last = scan
                    .records
                    .iter()
                    .take_while(|(off, _)| *off < scan.committed_end)
                    .last()
                    .map_or(0, |(_, r)| r.seq);
                *h = MirrorHalf {
                    generation: hd.generation,
                    base_seq: hd.base_seq,
                    end: scan.committed_end,
                    last_seq: last,
                };
            }
        }
        let epoch_max = log.region().partner_epoch_max();
        Ok(Receiver {
            log,
            epoch_max,
            session: None,
            next_lsn: 1,
            halves,
            session_last_seq: 0,
            ack_due: false,
            in_sync: false,
            accepting: true,
            counters: ReceiverCounters::default(),
        })
    }

    /// A frame arrived; returns frames to send back at once (Welcome or Reject).
    /// Acks are coalesced: call [`Receiver::take_ack`] once the input is drained.
    pub fn on_frame(&mut self, frame: Frame) -> Option<Frame> {
        if !self.accepting
            && !matches!(
                frame,
                Frame::Welcome { .. } | Frame::Reject { .. } | Frame::Ack { .. }
            )
        {
            return Some(Frame::Reject {
                reason: MIRROR_CLOSED.into(),
            });
        }
        match frame {
            Frame::Hello { epoch, session } => self.on_hello(epoch, session),
            Frame::Reset { session, lsn, .. }
            | Frame::Append { session, lsn, .. }
            | Frame::Synced { session, lsn } => {
                if self.session.is_none() {
                    // Our side ended the session (the mirror was closed and reopened): the
                    // sender must start a new one, or it would retransmit into the void.
                    self.counters.dropped += 1;
                    return Some(Frame::Reject {
                        reason: "no session: send Hello again".into(),
                    });
                }
                if self.session.map(|s| s.1) != Some(session) || lsn != self.next_lsn {
                    self.counters.dropped += 1;
                    // A duplicate of something applied: re-ack so the sender moves on.
                    self.ack_due |= lsn < self.next_lsn;
                    return None;
                }
                self.apply(frame)
            }
            Frame::Welcome { .. } | Frame::Reject { .. } | Frame::Ack { .. } => {
                self.counters.violations += 1;
                None
            }
        }
    }

    fn on_hello(&mut self, epoch: u64, session: u64) -> Option<Frame> {
        if epoch < self.epoch_max {
            self.counters.stale_rejects += 1;
            let reason = format!(
                "stale peer: epoch {epoch} is older than epoch {} already seen",
                self.epoch_max
            );
            tracing::warn!(%reason, "nvlog mirror: refusing session");
            return Some(Frame::Reject { reason });
        }
        let current = self.session.unwrap_or((0, 0));
        if (epoch, session) < current {
            self.counters.stale_rejects += 1;
            return Some(Frame::Reject {
                reason: format!(
                    "stale session {epoch}/{session} (current {}/{})",
                    current.0, current.1
                ),
            });
        }
        if (epoch, session) != current || self.session.is_none() {
            if epoch > self.epoch_max {
                self.log.region().set_partner_epoch_max(epoch);
                self.epoch_max = epoch;
            }
            self.session = Some((epoch, session));
            self.next_lsn = 1;
            self.session_last_seq = 0;
            self.in_sync = false;
            self.ack_due = false;
            self.counters.sessions += 1;
        }
        let halves = self.halves.map(|h| HalfState {
            generation: h.generation,
            base_seq: h.base_seq,
            committed_end: h.end,
            last_seq: h.last_seq,
        });
        Some(Frame::Welcome { session, halves })
    }

    fn apply(&mut self, frame: Frame) -> Option<Frame> {
        match frame {
            Frame::Reset {
                half,
                generation,
                base_seq,
                ..
            } => {
                let half = half as usize;
                self.log.reset_half(half, generation, base_seq);
                self.halves[half] = MirrorHalf {
                    generation,
                    base_seq,
                    end: 0,
                    last_seq: 0,
                };
            }
            Frame::Append {
                half,
                generation,
                offset,
                last_seq,
                bytes,
                ..
            } => {
                let half = half as usize;
                if let Err(why) = self.check_append(half, generation, offset, last_seq, &bytes) {
                    self.counters.violations += 1;
                    tracing::error!(%why, "nvlog mirror: refusing append frame; closing session");
                    self.session = None;
                    self.in_sync = false;
                    return Some(Frame::Reject {
                        reason: format!("protocol violation: {why}"),
                    });
                }
                let end = offset + bytes.len() as u64;
                // SAFETY: the receiver is the only writer of the mirror area, and the range
                // lies past the committed end.
                unsafe { self.log.write(half, offset, &bytes) };
                self.log.commit(half, offset, end);
                let h = &mut self.halves[half];
                h.end = end;
                h.last_seq = last_seq;
                self.session_last_seq = last_seq;
                self.counters.bytes_applied += bytes.len() as u64;
            }
            Frame::Synced { .. } => {
                if !self.in_sync {
                    tracing::info!("nvlog mirror: partner's log mirrored in full (in sync)");
                }
                self.in_sync = true;
            }
            _ => unreachable!("only sequenced frames are applied"),
        }
        self.next_lsn += 1;
        self.ack_due = true;
        None
    }

    fn check_append(
        &self,
        half: usize,
        generation: u64,
        offset: u64,
        last_seq: u64,
        bytes: &[u8],
    ) -> Result<(), String> {
        let h = self.halves[half];
        if h.base_seq == 0 || h.generation != generation {
            return Err(format!(
                "append to half {half} generation {generation}, mirror holds generation {} base {}",
                h.generation, h.base_seq
            ));
        }
        if offset != h.end {
            return Err(format!(
                "append at offset {offset}, mirror half ends at {}",
                h.end
            ));
        }
        let end = offset
            .checked_add(bytes.len() as u64)
            .ok_or("length overflow")?;
        if end > self.log.capacity() || bytes.is_empty() {
            return Err(format!(
                "append [{offset},{end}) outside half capacity {}",
                self.log.capacity()
            ));
        }
        let mut expected = if h.last_seq == 0 {
            h.base_seq
        } else {
            h.last_seq + 1
        };
        let mut at = 0usize;
        while at < bytes.len() {
            let r = decode_record(&bytes[at..])
                .map_err(|f| format!("record at {}: {f}", offset + at as u64))?;
            if r.seq != expected {
                return Err(format!(
                    "record seq {} where {expected} was expected",
                    r.seq
                ));
            }
            expected += 1;
            at += format::record_bytes(r.payload_len as usize);
        }
        if expected - 1 != last_seq {
            return Err(format!(
                "frame says last seq {last_seq}, records end at {}",
                expected - 1
            ));
        }
        Ok(())
    }

    /// The coalesced acknowledgement for everything applied so far, if one is due.
    pub fn take_ack(&mut self) -> Option<Frame> {
        let (_, session) = self.session?;
        if !std::mem::take(&mut self.ack_due) {
            return None;
        }
        Some(Frame::Ack {
            session,
            lsn: self.next_lsn - 1,
            seq: self.session_last_seq,
        })
    }

    /// Opens or closes the mirror area to the partner. Closed while this node takes over or
    /// serves the partner's identity: the partner must not acknowledge writes on the
    /// strength of a mirror that is being replayed (or already was). Closing ends the
    /// session; the partner's next frame is rejected.
    pub fn set_accepting(&mut self, accepting: bool) {
        if !accepting && self.accepting {
            self.session = None;
            self.in_sync = false;
            self.ack_due = false;
        }
        self.accepting = accepting;
    }

    /// The connection carrying the session closed.
    pub fn on_disconnected(&mut self) {
        if self.in_sync {
            tracing::info!("nvlog mirror: partner disconnected; mirror no longer in sync");
        }
        self.session = None;
        self.in_sync = false;
        self.ack_due = false;
    }

    /// Whether the mirror is a full, live copy of the partner's log (takeover possible).
    pub fn in_sync(&self) -> bool {
        self.in_sync
    }

    /// `Ok` when a takeover of the partner may rely on the mirror, else the reason.
    pub fn takeover_readiness(&self) -> Result<(), &'static str> {
        if self.in_sync {
            Ok(())
        } else {
            Err(TAKEOVER_IMPOSSIBLE)
        }
    }

    /// Counters.
    pub fn counters(&self) -> ReceiverCounters {
        self.counters
    }

    /// The mirror area.
    pub fn log(&self) -> &LogArea {
        &self.log
    }
}
