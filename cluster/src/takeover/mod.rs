//! The takeover/giveback state machine of one node, without IO.
//!
//! `on(now, event) -> Vec<Action>`: the driver (the node, or the simulation) feeds events with
//! its clock's `now` and performs the actions in order. Nothing in here reads a clock, touches
//! a socket or a disk, or draws a random number, so a seed replays a whole pair exactly.
//!
//! Safety rests on three rules, asserted here and checked by the simulation:
//! - a node serves an identity only after it asserted (or preempted) the identity's disks;
//! - a node acknowledges a write without the partner's mirror only after its mailbox says so
//!   durably (`unmirrored`), and a taker reads that flag *after* fencing, so a takeover never
//!   replays a mirror that lacks an acknowledged write;
//! - a node declares its partner dead only when the interconnect is silent for
//!   `heartbeat_loss_ms` *and* the partner's mailbox stayed unchanged over as many reads: a
//!   cut interconnect with a live mailbox never starts a takeover.
//!
//! See `docs/takeover.md` for the states, messages and transitions.

mod types;

pub use types::*;

use crate::config::TakeoverConfig;
use crate::health::Health;
use crate::mailbox::MailboxRecord;
use crate::persist::{Persisted, Role};
use crate::time::Time;
use crate::wire::{Heartbeat, Message};
use crate::NodeId;

/// An operator's takeover request as the taker runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Attempt {
    /// The epoch, assigned when PLEASE_SHUTDOWN / TAKEOVER is first sent (0 during the check).
    pub epoch: u64,
    /// The victim's PLEASE_TAKEOVER nonce (path 1), or 0 (path 2).
    pub nonce: u64,
    /// The countdown for the victim's drain.
    pub countdown_ms: u64,
    /// Skip the drain.
    pub immediate: bool,
    /// Check only.
    pub check_only: bool,
}

/// Steps of a takeover at the taker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TakeStep {
    /// Assert (graceful, resume) or preempt (forced, hard) the victim's reservations.
    Reserve,
    /// Forced/hard: read the victim's mailbox after fencing (the `unmirrored` flag is final).
    FenceRead {
        /// The read whose answer counts.
        read_id: u64,
    },
    /// Mount the victim's aggregate.
    Mount,
    /// Replay the victim's mirrored log.
    Replay,
    /// Graceful: asked the victim to release its addresses.
    AwaitAddresses {
        /// Since when.
        since: Time,
    },
    /// Raise the victim's addresses.
    Raise,
    /// Check the reservation is still ours, unchanged since the reserve.
    Verify,
    /// Aborting: releasing the reservations taken.
    AbortRelease(Reason),
}

/// Steps of a giveback at the taker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GiveStep {
    /// Draining the victim's identity.
    Drain,
    /// Final CP of the victim's aggregate.
    FinalCp,
    /// Releasing the victim's disks.
    Release,
    /// GIVEBACK sent; waiting for the victim to be ready for its addresses.
    AwaitVictim,
    /// Removing the victim's addresses.
    ReleasingAddresses,
    /// Waiting for GIVEBACK_DONE.
    AwaitDone,
}

/// Steps of a giveback at the victim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReceiveStep {
    /// Reserve its own disks again.
    Assert,
    /// Mount its aggregate.
    Mount,
    /// Replay its log.
    Replay,
    /// Asked the taker to release its addresses.
    AwaitAddresses {
        /// Since when.
        since: Time,
    },
    /// Raise its addresses.
    Raise,
    /// Check the reservation is still ours, unchanged since the assert.
    Verify,
}

/// The state of one node's takeover machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Restarted; listening to the partner before starting.
    Booting {
        /// Since when.
        since: Time,
        /// Restarted in (or while entering) takeover: take the partner's identity again after
        /// our own, this way.
        resume: Option<(u64, Mode)>,
    },
    /// Starting its own identity: assert, mount, replay, raise.
    Starting {
        /// The step in progress.
        step: Step,
        /// Restarted in takeover: take the partner's identity again afterwards.
        resume: Option<(u64, Mode)>,
        /// Reclaiming after a handoff that did not happen: on a lost reservation race, wait
        /// for giveback of this epoch.
        fallback: Option<u64>,
    },
    /// Serving its own identity.
    Normal,
    /// Taker: checking.
    TakeoverCheck {
        /// The request.
        attempt: Attempt,
        /// Since when.
        since: Time,
    },
    /// Victim (path 1): asked the partner.
    AskedPartner {
        /// The request's nonce.
        nonce: u64,
        /// The request.
        countdown_ms: u64,
        /// The request.
        immediate: bool,
        /// Since when.
        since: Time,
    },
    /// Taker: countdown running.
    WaitingForShutdown {
        /// The attempt.
        attempt: Attempt,
        /// When the countdown expires.
        deadline: Time,
    },
    /// Taker: taking the victim's identity.
    TakingOver {
        /// The attempt.
        epoch: u64,
        /// How.
        mode: Mode,
        /// The step in progress.
        step: TakeStep,
    },
    /// Taker: serving both identities.
    InTakeover {
        /// The takeover.
        epoch: u64,
        /// Since when.
        since: Time,
    },
    /// Victim: draining.
    Draining {
        /// The attempt.
        epoch: u64,
        /// Since when (with the countdown, bounds the drain on this side too).
        since: Time,
        /// The taker's countdown.
        countdown_ms: u64,
        /// The step in progress (Drain, FinalCp, ReleaseReservations).
        step: Step,
        /// Completed requests (from the drain).
        completed: u32,
        /// Requests kept in the log.
        kept: u32,
    },
    /// Victim: disks released, addresses still up until the taker is ready.
    HandingOff {
        /// The attempt.
        epoch: u64,
        /// Since when.
        since: Time,
        /// Removing its addresses.
        releasing: bool,
        /// Reported counts.
        completed: u32,
        /// Reported counts.
        kept: u32,
    },
    /// Victim: taken over; serves nothing.
    WaitingForGiveback {
        /// The takeover (0 if unknown, e.g. found by a lost reservation).
        epoch: u64,
    },
    /// Taker: giving the victim's identity back.
    GivingBack {
        /// The takeover.
        epoch: u64,
        /// The step.
        step: GiveStep,
        /// Since the step started (bounds the waits).
        since: Time,
    },
    /// Victim: taking its identity back.
    ReceivingGiveback {
        /// The takeover.
        epoch: u64,
        /// The step.
        step: ReceiveStep,
    },
}

impl State {
    /// The one-byte summary for heartbeats and mailbox.
    pub fn code(&self) -> StateCode {
        match self {
            State::Booting { .. } => StateCode::Booting,
            State::Starting { .. } => StateCode::Starting,
            State::Normal => StateCode::Normal,
            State::TakeoverCheck { .. } => StateCode::TakeoverCheck,
            State::AskedPartner { .. } => StateCode::AskedPartner,
            State::WaitingForShutdown { .. } => StateCode::WaitingForShutdown,
            State::TakingOver { .. } => StateCode::TakingOver,
            State::InTakeover { .. } => StateCode::InTakeover,
            State::Draining { .. } => StateCode::Draining,
            State::HandingOff { .. } => StateCode::HandingOff,
            State::WaitingForGiveback { .. } => StateCode::WaitingForGiveback,
            State::GivingBack { .. } => StateCode::GivingBack,
            State::ReceivingGiveback { .. } => StateCode::ReceivingGiveback,
        }
    }
}

/// One node's takeover machine.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Takeover {
    cfg: TakeoverConfig,
    me: NodeId,
    partner: NodeId,
    state: State,
    /// The machine's time: the driver's `now` plus `skew_ms`, so it never goes back.
    now: Time,
    /// The last `now` the driver passed.
    raw_last: Time,
    /// Sum of the backward steps of the driver's clock: after a step back, time continues from
    /// where it was instead of standing still (a stalled clock would stop heartbeats).
    skew_ms: u64,
    persisted: Persisted,
    health: Health,

    hb_last_at: Option<Time>,
    partner_hb: Option<Heartbeat>,
    partner_restarted_at: Option<Time>,
    interconnect_was_alive: bool,
    mbox_last: Option<MailboxRecord>,
    mbox_unchanged_reads: u32,
    mbox_readable: bool,
    /// When the last read answered: silence counts only if the reads are recent (a node that
    /// was itself hung holds stale reads).
    mbox_read_at: Option<Time>,
    read_id_next: u64,
    partner_disks: Option<bool>,
    probe_next_at: Time,
    partner_unmirrored_found: bool,

    tick_next_at: Time,
    please_die_next_at: Time,
    reclaim_next_at: Time,
    retry_at: Option<Time>,
    mailbox_counter: u64,

    mirror: MirrorMode,
    unmirrored_flag: bool,
    flag_counter: u64,
    /// Set at start: the local log may hold records acknowledged (degraded) before a crash
    /// that the partner's mirror lacks. Cleared by the first resync.
    needs_resync: bool,
    resyncing: bool,
    accepts_mirror: bool,

    serving: [bool; 2],
    /// Restarting our own identity while holding the partner's (our disks were preempted in a
    /// takeover race that the partner then aborted): the step, and whether it is in flight.
    own_restart: Option<(Step, bool)>,
    takeover_times: Vec<Time>,
    auto_giveback_disabled: bool,
    nonce_next: u64,

    out: Vec<Action>,
}

impl Takeover {
    /// A node starting for the first time (nothing persisted). Panics like [`Takeover::restore`].
    pub fn new(cfg: TakeoverConfig, me: NodeId, now: Time) -> Takeover {
        Takeover::restore(cfg, me, Persisted::default(), now)
    }

    /// A node restarting with its persisted state. Call [`Takeover::start`] for the first
    /// actions. Panics if `cfg` is invalid: check [`TakeoverConfig::validate`] when loading it.
    pub fn restore(cfg: TakeoverConfig, me: NodeId, persisted: Persisted, now: Time) -> Takeover {
        assert!(me.0 < 2, "a pair has nodes 0 and 1");
        assert!(cfg.validate().is_ok(), "invalid takeover config");
        let mut persisted = persisted;
        persisted.epoch_next = persisted.epoch_next.max(1);
        let state = match persisted.role {
            Role::TakenOver(epoch) if epoch > persisted.given_back_epoch => {
                State::WaitingForGiveback { epoch }
            }
            Role::InTakeover(epoch) => State::Booting {
                since: now,
                resume: Some((epoch, Mode::Resume)),
            },
            Role::Taking(epoch) => State::Booting {
                since: now,
                resume: Some((epoch, Mode::Recover)),
            },
            _ => State::Booting {
                since: now,
                resume: None,
            },
        };
        Takeover {
            partner: NodeId(1 - me.0),
            me,
            state,
            now,
            raw_last: now,
            skew_ms: 0,
            persisted,
            health: Health::ALL_OK,
            hb_last_at: None,
            partner_hb: None,
            partner_restarted_at: None,
            interconnect_was_alive: false,
            mbox_last: None,
            mbox_unchanged_reads: 0,
            mbox_readable: false,
            mbox_read_at: None,
            read_id_next: 1,
            partner_disks: None,
            probe_next_at: now,
            partner_unmirrored_found: false,
            tick_next_at: now,
            please_die_next_at: now,
            reclaim_next_at: now,
            retry_at: None,
            mailbox_counter: 0,
            mirror: MirrorMode::Mirrored,
            unmirrored_flag: true,
            flag_counter: 0,
            needs_resync: true,
            resyncing: false,
            accepts_mirror: false,
            serving: [false; 2],
            own_restart: None,
            takeover_times: Vec::new(),
            auto_giveback_disabled: false,
            nonce_next: 1,
            cfg,
            out: Vec::new(),
        }
    }

    /// The first actions after `new`/`restore`.
    pub fn start(&mut self, now: Time) -> Vec<Action> {
        self.advance(now);
        self.note(Note::State(self.state.code()));
        self.after_event();
        std::mem::take(&mut self.out)
    }

    /// Feeds one event; returns the actions to perform, in order.
    pub fn on(&mut self, now: Time, event: Event) -> Vec<Action> {
        self.advance(now);
        match event {
            Event::Tick => self.on_tick(),
            Event::Operator(request) => self.on_operator(request),
            Event::Received(message) => self.on_message(message),
            Event::PartnerMailbox { read_id, record } => self.on_partner_mailbox(read_id, record),
            Event::OwnMailboxWritten { counter, ok } => self.on_own_mailbox_written(counter, ok),
            Event::Health(health) => self.health = health,
            Event::Done { step, identity, ok } => self.on_done(step, identity, ok),
            Event::Drained {
                identity,
                completed,
                kept,
            } => self.on_drained(identity, completed, kept),
            Event::ReservationLost(identity) => self.on_reservation_lost(identity),
        }
        self.after_event();
        std::mem::take(&mut self.out)
    }

    fn advance(&mut self, raw: Time) {
        if raw < self.raw_last {
            self.skew_ms = self.skew_ms.saturating_add(self.raw_last.since_ms(raw));
        }
        self.raw_last = raw;
        self.now = self.now.max(raw.plus_ms(self.skew_ms));
    }

    // ----- queries -------------------------------------------------------------------------

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Whether this node serves `identity` (as far as its own actions go).
    pub fn serves(&self, identity: NodeId) -> bool {
        self.serving[usize::from(identity.0)]
    }

    /// The current acknowledgement mode.
    pub fn mirror_mode(&self) -> MirrorMode {
        self.mirror
    }

    /// Whether the partner's log records are accepted into this node's mirror.
    pub fn accepts_partner_mirror(&self) -> bool {
        self.accepts_mirror
    }

    /// The state to persist (also emitted as [`Action::Persist`] on every change).
    pub fn persisted(&self) -> Persisted {
        self.persisted
    }

    /// The failover-monitor health of this node.
    pub fn health(&self) -> Health {
        self.health
    }

    /// The partner's last heartbeat.
    pub fn partner_heartbeat(&self) -> Option<Heartbeat> {
        self.partner_hb
    }

    /// Whether automatic giveback was disabled by the ping-pong guard.
    pub fn auto_giveback_disabled(&self) -> bool {
        self.auto_giveback_disabled
    }

    /// Why a graceful takeover of the partner by this node is impossible now (empty: possible).
    /// Always current; the console shows it.
    pub fn takeover_impossible(&self) -> Reasons {
        let mut r = self.common_blockers();
        if !self.interconnect_alive() {
            r.add(Reason::InterconnectDown);
            if self.partner_mailbox_alive() {
                r.add(Reason::PartnerMailboxAlive);
            } else if self.partner_dead() {
                r.add(Reason::PartnerDown);
            }
        } else if self
            .partner_hb
            .is_some_and(|hb| hb.state != StateCode::Normal)
        {
            r.add(Reason::PartnerBusy);
        }
        if self.state != State::Normal {
            r.add(Reason::Busy);
        }
        r
    }

    /// Why a hard takeover (on heartbeat loss) would not happen now (empty: it would, if the
    /// partner were dead).
    pub fn hard_takeover_blockers(&self) -> Reasons {
        let mut r = self.common_blockers();
        if !self.cfg.hard_takeover_enabled {
            r.add(Reason::HardTakeoverDisabled);
        }
        if self.partner_mailbox_alive() {
            r.add(Reason::PartnerMailboxAlive);
        }
        if let Some(hb) = self.partner_hb {
            if hb.state.holds_partner() || hb.state == StateCode::WaitingForGiveback {
                r.add(Reason::PartnerBusy);
            }
        }
        r
    }

    /// Whether the interconnect delivered a heartbeat within `heartbeat_loss_ms`.
    pub fn interconnect_alive(&self) -> bool {
        self.hb_last_at
            .is_some_and(|t| self.now.since_ms(t) < self.cfg.heartbeat_loss_ms)
    }

    /// Whether the partner's mailbox changed within the last `mailbox_silent_reads_min` reads.
    pub fn partner_mailbox_alive(&self) -> bool {
        self.mbox_readable && self.mbox_unchanged_reads < self.cfg.mailbox_silent_reads_min()
    }

    /// Interconnect silent and mailbox readable but unchanged: the partner is dead (or hung).
    pub fn partner_dead(&self) -> bool {
        let fresh_ms = 2 * self.cfg.heartbeat_interval_ms;
        let reads_fresh = self
            .mbox_read_at
            .is_some_and(|t| self.now.since_ms(t) <= fresh_ms);
        !self.interconnect_alive()
            && reads_fresh
            && self.mbox_readable
            && self.mbox_unchanged_reads >= self.cfg.mailbox_silent_reads_min()
    }

    // ----- event handlers ------------------------------------------------------------------

    fn on_tick(&mut self) {
        if self.now >= self.tick_next_at {
            // No catch-up burst after a clock jump: one heartbeat, then the normal cadence.
            self.tick_next_at = self.now.plus_ms(self.cfg.heartbeat_interval_ms);
            let hb = self.heartbeat();
            self.out.push(Action::Send(Message::Heartbeat(hb)));
            self.write_mailbox();
            self.read_partner_mailbox();
            if self.state == State::Normal && self.now >= self.probe_next_at {
                self.probe_next_at = self.now.plus_ms(self.cfg.disk_probe_interval_ms);
                self.start_step(Step::ProbeDisks, self.partner);
            }
            self.resend_for_state();
            let behind = self.mirror == MirrorMode::Degraded || self.needs_resync;
            if behind && !self.wants_degraded() && !self.resyncing {
                self.resyncing = true;
                self.start_step(Step::ResyncMirror, self.me);
            }
        }
        self.note_interconnect_change();
        if self.own_restart.is_some() {
            self.own_restart_tick();
        }
        self.timers_for_state();
    }

    fn on_operator(&mut self, request: OperatorRequest) {
        self.note(Note::Requested(request));
        match request {
            OperatorRequest::Takeover {
                of,
                countdown_ms,
                immediate,
                check_only,
            } => {
                let countdown_ms = self
                    .cfg
                    .clamp_countdown(countdown_ms.unwrap_or(self.cfg.countdown_ms));
                if of == self.me {
                    self.ask_partner(countdown_ms, immediate, check_only);
                } else if of == self.partner {
                    let attempt = Attempt {
                        epoch: 0,
                        nonce: 0,
                        countdown_ms,
                        immediate,
                        check_only,
                    };
                    self.begin_check(attempt);
                } else {
                    self.note(Note::Aborted(Reason::UnknownNode));
                }
            }
            OperatorRequest::Giveback { to } => {
                if to != self.partner && to != self.me {
                    self.note(Note::Aborted(Reason::UnknownNode));
                } else if to == self.me {
                    // Asked at the victim: forward to the taker.
                    self.send(Message::PleaseGiveback);
                } else {
                    self.auto_giveback_disabled = false;
                    self.begin_giveback();
                }
            }
        }
    }

    fn on_message(&mut self, message: Message) {
        if !matches!(message, Message::Heartbeat(_)) {
            self.note(Note::Received(message.name()));
        }
        match message {
            Message::Heartbeat(hb) => self.on_heartbeat(hb),
            Message::PleaseTakeover {
                nonce,
                countdown_ms,
                immediate,
            } => self.on_please_takeover(nonce, countdown_ms, immediate),
            Message::TakeoverRefused {
                nonce,
                epoch,
                reason,
            } => self.on_refused(nonce, epoch, reason),
            Message::PleaseShutdown {
                epoch,
                nonce,
                countdown_ms,
            } => self.on_please_shutdown(epoch, nonce, u64::from(countdown_ms)),
            Message::ShutdownComplete { epoch, .. } => self.on_shutdown_complete(epoch),
            Message::Takeover { epoch } | Message::PleaseDie { epoch } => self.on_kept_down(epoch),
            Message::ReleaseAddresses { epoch } => self.on_release_addresses(epoch),
            Message::AddressesReleased { epoch } => self.on_addresses_released(epoch),
            Message::PleaseGiveback => {
                if matches!(self.state, State::InTakeover { .. }) {
                    self.begin_giveback();
                }
            }
            Message::Giveback { epoch } => self.on_giveback(epoch),
            Message::GivebackDone { epoch } => self.on_giveback_done(epoch),
        }
    }

    fn on_heartbeat(&mut self, hb: Heartbeat) {
        self.hb_last_at = Some(self.now);
        // A restart shows as a heartbeat from Booting/Starting after one from another state
        // (not merely the last heartbeat being old news from a boot).
        let booting = |s: StateCode| matches!(s, StateCode::Booting | StateCode::Starting);
        if booting(hb.state) && self.partner_hb.is_some_and(|prev| !booting(prev.state)) {
            self.partner_restarted_at = Some(self.now);
        }
        if hb.mirror_in_sync {
            self.partner_unmirrored_found = false;
        }
        self.partner_hb = Some(hb);
        self.note_interconnect_change();
        match self.state {
            State::WaitingForShutdown { attempt, .. }
                if hb.epoch == attempt.epoch
                    && matches!(
                        hb.state,
                        StateCode::HandingOff | StateCode::WaitingForGiveback
                    ) =>
            {
                self.begin_taking_over(attempt.epoch, Mode::Graceful);
            }
            State::GivingBack {
                epoch,
                step: GiveStep::AwaitDone,
                ..
            } if hb.given_back_epoch >= epoch => self.finish_giveback(epoch),
            _ => {}
        }
        // The partner serves our identity (it may have taken us over while we were hung):
        // same as PLEASE_DIE.
        if hb.state == StateCode::InTakeover {
            self.on_kept_down(hb.epoch);
        }
    }

    fn on_partner_mailbox(&mut self, read_id: u64, record: Option<MailboxRecord>) {
        self.mbox_read_at = Some(self.now);
        match record {
            Some(rec) if rec.node == self.partner => {
                let unchanged = self
                    .mbox_last
                    .is_some_and(|last| last.counter == rec.counter);
                self.mbox_unchanged_reads = if unchanged {
                    self.mbox_unchanged_reads.saturating_add(1)
                } else {
                    0
                };
                self.mbox_readable = true;
                self.mbox_last = Some(rec);
            }
            // Unreadable is not silent: we cannot tell, so we never conclude "dead".
            _ => {
                self.mbox_readable = false;
                self.mbox_unchanged_reads = 0;
            }
        }
        match self.state {
            State::TakingOver {
                epoch,
                mode,
                step: TakeStep::FenceRead { read_id: wanted },
            } if read_id >= wanted => self.after_fence_read(epoch, mode, record),
            State::WaitingForShutdown { attempt, .. } => {
                let handed = record.is_some_and(|r| {
                    r.epoch == attempt.epoch
                        && matches!(
                            r.state,
                            StateCode::HandingOff | StateCode::WaitingForGiveback
                        )
                });
                if handed {
                    self.begin_taking_over(attempt.epoch, Mode::Graceful);
                }
            }
            _ => {}
        }
    }

    fn on_own_mailbox_written(&mut self, counter: u64, ok: bool) {
        let flag_durable = ok && self.unmirrored_flag && counter >= self.flag_counter;
        let serving = self.serving.iter().any(|s| *s);
        if flag_durable && self.mirror == MirrorMode::Mirrored && self.wants_degraded() && serving {
            self.mirror = MirrorMode::Degraded;
            self.out.push(Action::SetMirrorMode(MirrorMode::Degraded));
            self.note(Note::Mirror(MirrorMode::Degraded));
        }
    }

    fn on_done(&mut self, step: Step, identity: NodeId, ok: bool) {
        self.note(Note::StepDone(step, identity, ok));
        if identity == self.me && self.own_restart == Some((step, true)) {
            self.own_restart_done(step, ok);
            return;
        }
        match step {
            Step::ProbeDisks if identity == self.partner => {
                self.partner_disks = Some(ok);
                if let State::TakeoverCheck { attempt, .. } = self.state {
                    self.finish_check(attempt);
                }
                return;
            }
            Step::ResyncMirror => {
                self.resyncing = false;
                if ok && !self.wants_degraded() {
                    self.needs_resync = false;
                    self.unmirrored_flag = false;
                    if self.mirror == MirrorMode::Degraded {
                        self.mirror = MirrorMode::Mirrored;
                        self.out.push(Action::SetMirrorMode(MirrorMode::Mirrored));
                        self.note(Note::Mirror(MirrorMode::Mirrored));
                    }
                }
                return;
            }
            _ => {}
        }
        match self.state {
            State::Starting {
                step: expected,
                resume,
                fallback,
            } if expected == step && identity == self.me => {
                self.starting_done(step, ok, resume, fallback)
            }
            State::TakingOver {
                epoch,
                mode,
                step: s,
            } if identity == self.partner => self.taking_over_done(epoch, mode, s, step, ok),
            State::Draining { epoch, step: s, .. } if s == step && identity == self.me => {
                self.draining_done(epoch, step, ok)
            }
            State::HandingOff {
                epoch, releasing, ..
            } if releasing && step == Step::ReleaseAddresses && identity == self.me => {
                self.send(Message::AddressesReleased { epoch });
                self.enter_waiting_for_giveback(epoch);
            }
            State::GivingBack { epoch, step: s, .. } if identity == self.partner => {
                self.giving_back_done(epoch, s, step, ok)
            }
            State::ReceivingGiveback { epoch, step: s } if identity == self.me => {
                self.receiving_done(epoch, s, step, ok)
            }
            _ => {}
        }
    }

    fn on_drained(&mut self, identity: NodeId, completed: u32, kept: u32) {
        self.note(Note::Drained { completed, kept });
        match self.state {
            State::Draining {
                epoch,
                since,
                countdown_ms,
                step: Step::Drain,
                ..
            } if identity == self.me => {
                self.state = State::Draining {
                    epoch,
                    since,
                    countdown_ms,
                    step: Step::FinalCp,
                    completed,
                    kept,
                };
                self.start_step(Step::FinalCp, self.me);
            }
            State::GivingBack {
                epoch,
                step: GiveStep::Drain,
                ..
            } if identity == self.partner => {
                self.set_giving_back(epoch, GiveStep::FinalCp);
                self.start_step(Step::FinalCp, self.partner);
            }
            _ => {}
        }
    }

    fn on_reservation_lost(&mut self, identity: NodeId) {
        self.note(Note::ReservationLost(identity));
        if identity == self.me && self.serves(self.me) && self.state.code().holds_partner() {
            // We hold the partner's identity; the partner preempted ours in a race it will
            // abort (our mailbox says `unmirrored`). Keep the partner's, restart ours.
            self.stop_serving(self.me);
            self.out.push(Action::Start {
                step: Step::ReleaseAddresses,
                identity: self.me,
            });
            self.own_restart = Some((Step::AssertReservations, false));
            self.reclaim_next_at = self.now.plus_ms(self.cfg.heartbeat_loss_ms);
        } else if identity == self.me && self.serves(self.me) {
            // Fenced: someone preempted our disks. Stop at once; wait for the partner to give
            // back (or, if it aborted, for it to be Normal again, then reclaim).
            self.stop_serving(self.me);
            self.out.push(Action::Start {
                step: Step::ReleaseAddresses,
                identity: self.me,
            });
            let epoch = self.partner_epoch_hint();
            self.enter_waiting_for_giveback(epoch);
        } else if identity == self.partner && self.serves(self.partner) {
            self.stop_serving(self.partner);
            self.out.push(Action::Start {
                step: Step::ReleaseAddresses,
                identity: self.partner,
            });
            self.set_state(State::Normal);
            self.persist_role(Role::Normal);
        }
    }

    // ----- path 1 at the victim, and the check at the taker ---------------------------------

    fn ask_partner(&mut self, countdown_ms: u64, immediate: bool, check_only: bool) {
        let mut r = Reasons::default();
        if !self.interconnect_alive() {
            r.add(Reason::InterconnectDown);
        }
        if self.state != State::Normal {
            r.add(Reason::Busy);
        }
        if let Some(hb) = self.partner_hb {
            if hb.state != StateCode::Normal {
                r.add(Reason::PartnerBusy);
            }
            if hb.health.first_failed().is_some() {
                r.add(Reason::PartnerUnhealthy);
            }
        } else {
            r.add(Reason::PartnerUnknown);
        }
        self.note(Note::Checked(r));
        if check_only {
            return;
        }
        if let Some(reason) = r.first() {
            self.note(Note::Aborted(reason));
            return;
        }
        let nonce = self.nonce_next;
        self.nonce_next += 1;
        self.send(Message::PleaseTakeover {
            nonce,
            countdown_ms: u32::try_from(countdown_ms).unwrap_or(u32::MAX),
            immediate,
        });
        self.set_state(State::AskedPartner {
            nonce,
            countdown_ms,
            immediate,
            since: self.now,
        });
    }

    fn on_please_takeover(&mut self, nonce: u64, countdown_ms: u32, immediate: bool) {
        match self.state {
            State::Normal => {
                let attempt = Attempt {
                    epoch: 0,
                    nonce,
                    countdown_ms: self.cfg.clamp_countdown(u64::from(countdown_ms)),
                    immediate,
                    check_only: false,
                };
                self.begin_check(attempt);
            }
            // A resend of the request we are already handling.
            State::TakeoverCheck { attempt, .. } | State::WaitingForShutdown { attempt, .. }
                if attempt.nonce == nonce => {}
            _ => self.send(Message::TakeoverRefused {
                nonce,
                epoch: 0,
                reason: Reason::Busy,
            }),
        }
    }

    fn begin_check(&mut self, attempt: Attempt) {
        if self.state != State::Normal {
            self.note(Note::Checked({
                let mut r = Reasons::default();
                r.add(Reason::Busy);
                r
            }));
            self.refuse(attempt, Reason::Busy);
            return;
        }
        self.set_state(State::TakeoverCheck {
            attempt,
            since: self.now,
        });
        // A fresh probe of the victim's disks; the rest of the check uses what we know.
        self.start_step(Step::ProbeDisks, self.partner);
    }

    fn finish_check(&mut self, mut attempt: Attempt) {
        let mut reasons = self.takeover_impossible();
        // We are in TakeoverCheck, not Normal: that is not a blocker here.
        reasons = Reasons::from_iter_except(reasons, Reason::Busy);
        self.note(Note::Checked(reasons));
        if attempt.check_only {
            self.set_state(State::Normal);
            return;
        }
        if let Some(reason) = reasons.first() {
            self.set_state(State::Normal);
            self.refuse(attempt, reason);
            return;
        }
        attempt.epoch = self.take_epoch();
        if attempt.immediate {
            self.send(Message::Takeover {
                epoch: attempt.epoch,
            });
            self.begin_taking_over(attempt.epoch, Mode::Forced);
            return;
        }
        self.send(Message::PleaseShutdown {
            epoch: attempt.epoch,
            nonce: attempt.nonce,
            countdown_ms: u32::try_from(attempt.countdown_ms).unwrap_or(u32::MAX),
        });
        self.set_state(State::WaitingForShutdown {
            attempt,
            deadline: self.now.plus_ms(attempt.countdown_ms),
        });
    }

    fn refuse(&mut self, attempt: Attempt, reason: Reason) {
        self.note(Note::Aborted(reason));
        if attempt.nonce != 0 {
            self.send(Message::TakeoverRefused {
                nonce: attempt.nonce,
                epoch: attempt.epoch,
                reason,
            });
        }
    }

    fn on_refused(&mut self, nonce: u64, epoch: u64, reason: Reason) {
        match self.state {
            State::AskedPartner { nonce: n, .. } if n == nonce => {
                self.note(Note::Aborted(reason));
                self.set_state(State::Normal);
            }
            State::WaitingForShutdown { attempt, .. } if attempt.epoch == epoch => {
                self.note(Note::Aborted(reason));
                self.set_state(State::Normal);
            }
            _ => {}
        }
    }

    // ----- the victim's graceful shutdown ---------------------------------------------------

    fn on_please_shutdown(&mut self, epoch: u64, nonce: u64, countdown_ms: u64) {
        let fresh = epoch > self.persisted.epoch_seen_max;
        match self.state {
            State::Normal if fresh => self.begin_draining(epoch, countdown_ms),
            State::AskedPartner { nonce: n, .. } if fresh && (n == nonce || nonce == 0) => {
                self.begin_draining(epoch, countdown_ms)
            }
            State::HandingOff {
                epoch: e,
                completed,
                kept,
                ..
            } if e == epoch => self.send(Message::ShutdownComplete {
                epoch,
                completed,
                kept,
            }),
            State::Draining { epoch: e, .. } | State::WaitingForGiveback { epoch: e }
                if e == epoch => {}
            _ if fresh => self.send(Message::TakeoverRefused {
                nonce,
                epoch,
                reason: Reason::PartnerBusy,
            }),
            _ => {}
        }
    }

    fn begin_draining(&mut self, epoch: u64, countdown_ms: u64) {
        self.persisted.epoch_seen_max = epoch;
        self.emit_persist();
        self.set_state(State::Draining {
            epoch,
            since: self.now,
            countdown_ms: self.cfg.clamp_countdown(countdown_ms),
            step: Step::Drain,
            completed: 0,
            kept: 0,
        });
        self.start_step(Step::Drain, self.me);
    }

    fn draining_done(&mut self, epoch: u64, step: Step, ok: bool) {
        let State::Draining {
            completed,
            kept,
            since,
            countdown_ms,
            ..
        } = self.state
        else {
            return;
        };
        match (step, ok) {
            (Step::FinalCp, true) => {
                // The final CP holds everything acknowledged; stop serving, and persist that we
                // are taken over *before* the disks go, so a reboot waits instead of serving.
                self.stop_serving(self.me);
                self.persist_role(Role::TakenOver(epoch));
                self.state = State::Draining {
                    epoch,
                    since,
                    countdown_ms,
                    step: Step::ReleaseReservations,
                    completed,
                    kept,
                };
                self.start_step(Step::ReleaseReservations, self.me);
            }
            (Step::ReleaseReservations, true) => {
                self.send(Message::ShutdownComplete {
                    epoch,
                    completed,
                    kept,
                });
                self.set_state(State::HandingOff {
                    epoch,
                    since: self.now,
                    releasing: false,
                    completed,
                    kept,
                });
            }
            // The CP or the release failed: our disks are fenced or broken. Stay down.
            _ => {
                self.stop_serving(self.me);
                self.enter_waiting_for_giveback(epoch);
            }
        }
    }

    fn on_release_addresses(&mut self, epoch: u64) {
        match self.state {
            State::HandingOff {
                epoch: e,
                releasing: false,
                completed,
                kept,
                since,
            } if e == epoch => {
                self.state = State::HandingOff {
                    epoch,
                    since,
                    releasing: true,
                    completed,
                    kept,
                };
                self.start_step(Step::ReleaseAddresses, self.me);
            }
            // Already released (we gave up waiting and found the disks taken).
            State::WaitingForGiveback { .. } => {
                self.send(Message::AddressesReleased { epoch });
            }
            State::GivingBack {
                epoch: e,
                step: GiveStep::AwaitVictim,
                ..
            } if e == epoch => {
                self.set_giving_back(epoch, GiveStep::ReleasingAddresses);
                self.start_step(Step::ReleaseAddresses, self.partner);
            }
            _ => {}
        }
    }

    fn on_kept_down(&mut self, epoch: u64) {
        if epoch <= self.persisted.given_back_epoch {
            return; // stale: that takeover was given back
        }
        match self.state {
            State::WaitingForGiveback { .. } | State::ReceivingGiveback { .. } => {}
            State::TakingOver { .. } | State::InTakeover { .. } | State::GivingBack { .. } => {}
            State::HandingOff { releasing, .. } => {
                if !releasing {
                    self.out.push(Action::Start {
                        step: Step::ReleaseAddresses,
                        identity: self.me,
                    });
                }
                self.enter_waiting_for_giveback(epoch);
            }
            _ => {
                self.note(Note::KeptDown(epoch));
                self.stop_serving(self.me);
                self.out.push(Action::Start {
                    step: Step::ReleaseAddresses,
                    identity: self.me,
                });
                self.enter_waiting_for_giveback(epoch);
            }
        }
    }

    fn enter_waiting_for_giveback(&mut self, epoch: u64) {
        debug_assert!(!self.serves(self.me));
        self.persisted.epoch_seen_max = self.persisted.epoch_seen_max.max(epoch);
        self.persist_role(Role::TakenOver(epoch));
        self.reclaim_next_at = self.now.plus_ms(self.cfg.heartbeat_loss_ms);
        self.set_state(State::WaitingForGiveback { epoch });
    }

    // ----- the taker ------------------------------------------------------------------------

    fn on_shutdown_complete(&mut self, epoch: u64) {
        if let State::WaitingForShutdown { attempt, .. } = self.state {
            if attempt.epoch == epoch {
                self.begin_taking_over(epoch, Mode::Graceful);
            }
        }
    }

    fn begin_taking_over(&mut self, epoch: u64, mode: Mode) {
        self.note(Note::TakeoverStarted { epoch, mode });
        if mode != Mode::Resume {
            // Before touching the victim's disks: a restart must know it may hold them.
            self.persist_role(Role::Taking(epoch));
        }
        self.set_state(State::TakingOver {
            epoch,
            mode,
            step: TakeStep::Reserve,
        });
        // Stop accepting the victim's log before fencing: every write it acknowledged through
        // our mirror is then in the mirror we replay.
        self.sync_accept_mirror();
        let step = match mode {
            Mode::Graceful | Mode::Resume | Mode::Recover => Step::AssertReservations,
            Mode::Forced | Mode::Hard => Step::PreemptReservations,
        };
        self.start_step(step, self.partner);
    }

    fn taking_over_done(&mut self, epoch: u64, mode: Mode, at: TakeStep, step: Step, ok: bool) {
        let set = |this: &mut Takeover, next: TakeStep| {
            this.state = State::TakingOver {
                epoch,
                mode,
                step: next,
            };
        };
        match (at, step) {
            (TakeStep::Reserve | TakeStep::Mount | TakeStep::Replay | TakeStep::Verify, _)
                if !ok && mode == Mode::Resume =>
            {
                // We served this identity before the restart: our log may hold acknowledged
                // writes of it that nobody else has. Never let it go unreplayed; retry (only
                // the victim could hold these disks, and a victim never preempts).
                set(self, TakeStep::Reserve);
                self.retry_at = Some(self.now.plus_ms(self.cfg.heartbeat_loss_ms));
            }
            (TakeStep::Reserve, Step::AssertReservations | Step::PreemptReservations) => {
                if !ok {
                    let reason = if mode == Mode::Graceful {
                        Reason::VictimReclaimed
                    } else {
                        Reason::StepFailed
                    };
                    self.abort_takeover(reason);
                } else if matches!(mode, Mode::Forced | Mode::Hard | Mode::Recover) {
                    // Fenced: the victim can no longer change its mailbox. Its flag is final.
                    let read_id = self.read_partner_mailbox();
                    set(self, TakeStep::FenceRead { read_id });
                } else {
                    set(self, TakeStep::Mount);
                    self.start_step(Step::Mount, self.partner);
                }
            }
            (TakeStep::Mount, Step::Mount) if ok => {
                set(self, TakeStep::Replay);
                self.start_step(Step::Replay, self.partner);
            }
            (TakeStep::Replay, Step::Replay) if ok => {
                if mode == Mode::Graceful {
                    // Addresses move only now, so clients reconnect to a ready node at once.
                    self.send(Message::ReleaseAddresses { epoch });
                    set(self, TakeStep::AwaitAddresses { since: self.now });
                } else {
                    set(self, TakeStep::Raise);
                    self.start_step(Step::RaiseAddresses, self.partner);
                }
            }
            (TakeStep::Raise, Step::RaiseAddresses) => {
                // Serving does not depend on the ARP having worked; a failed raise is logged.
                set(self, TakeStep::Verify);
                self.start_step(Step::VerifyReservations, self.partner);
            }
            (TakeStep::Verify, Step::VerifyReservations) if ok => {
                self.serve(self.partner);
                self.finish_takeover(epoch);
            }
            (TakeStep::AbortRelease(_), Step::ReleaseReservations) if !ok => {
                // We must not keep disks we do not serve: retry until released.
                self.retry_at = Some(self.now.plus_ms(self.cfg.heartbeat_loss_ms));
            }
            (TakeStep::AbortRelease(reason), Step::ReleaseReservations) => {
                self.retry_at = None;
                self.note(Note::Aborted(reason));
                self.persist_role(Role::Normal);
                self.set_state(State::Normal);
            }
            (TakeStep::Mount | TakeStep::Replay | TakeStep::Verify, _) if !ok => {
                self.abort_takeover(Reason::StepFailed)
            }
            _ => {}
        }
    }

    fn after_fence_read(&mut self, epoch: u64, mode: Mode, record: Option<MailboxRecord>) {
        match record {
            Some(rec) if !rec.unmirrored => {
                self.state = State::TakingOver {
                    epoch,
                    mode,
                    step: TakeStep::Mount,
                };
                self.start_step(Step::Mount, self.partner);
            }
            Some(_) => {
                // The victim acknowledged writes our mirror lacks: replaying it would lose them.
                self.partner_unmirrored_found = true;
                self.abort_takeover(Reason::PartnerUnmirroredWrites);
            }
            None => self.abort_takeover(Reason::PartnerDisksUnreachable),
        }
    }

    fn abort_takeover(&mut self, reason: Reason) {
        let State::TakingOver { epoch, mode, .. } = self.state else {
            return;
        };
        // Always release, even when the reserve "failed": a multi-disk preempt may have
        // half-succeeded, and a node restarted mid-takeover may hold the disks from before.
        // Releasing what another node holds is a no-op.
        self.state = State::TakingOver {
            epoch,
            mode,
            step: TakeStep::AbortRelease(reason),
        };
        self.start_step(Step::ReleaseReservations, self.partner);
    }

    fn on_addresses_released(&mut self, epoch: u64) {
        match self.state {
            State::TakingOver {
                epoch: e,
                mode,
                step: TakeStep::AwaitAddresses { .. },
            } if e == epoch => {
                self.state = State::TakingOver {
                    epoch,
                    mode,
                    step: TakeStep::Raise,
                };
                self.start_step(Step::RaiseAddresses, self.partner);
            }
            State::ReceivingGiveback {
                epoch: e,
                step: ReceiveStep::AwaitAddresses { .. },
            } if e == epoch => {
                self.state = State::ReceivingGiveback {
                    epoch,
                    step: ReceiveStep::Raise,
                };
                self.start_step(Step::RaiseAddresses, self.me);
            }
            _ => {}
        }
    }

    fn finish_takeover(&mut self, epoch: u64) {
        self.persist_role(Role::InTakeover(epoch));
        self.set_state(State::InTakeover {
            epoch,
            since: self.now,
        });
        self.please_die_next_at = self.now;
        self.send(Message::PleaseDie { epoch });
        // Ping-pong guard: count takeovers in the window.
        let window_ms = self.cfg.pingpong_window_ms;
        let now = self.now;
        self.takeover_times.retain(|t| now.since_ms(*t) < window_ms);
        self.takeover_times.push(now);
        let max = usize::try_from(self.cfg.pingpong_takeovers_max).unwrap_or(usize::MAX);
        if self.takeover_times.len() >= max && !self.auto_giveback_disabled {
            self.auto_giveback_disabled = true;
            self.note(Note::AutoGivebackDisabled);
        }
        while self.takeover_times.len() > max {
            self.takeover_times.remove(0);
        }
    }

    // ----- giveback -------------------------------------------------------------------------

    fn begin_giveback(&mut self) {
        let State::InTakeover { epoch, .. } = self.state else {
            self.note(Note::Aborted(Reason::NotInTakeover));
            return;
        };
        let waiting = self
            .partner_hb
            .is_some_and(|hb| hb.state == StateCode::WaitingForGiveback);
        if !self.interconnect_alive() {
            self.note(Note::Aborted(Reason::InterconnectDown));
            return;
        }
        if !waiting {
            self.note(Note::Aborted(Reason::VictimNotWaiting));
            return;
        }
        self.set_state(State::GivingBack {
            epoch,
            step: GiveStep::Drain,
            since: self.now,
        });
        self.start_step(Step::Drain, self.partner);
    }

    fn set_giving_back(&mut self, epoch: u64, step: GiveStep) {
        self.state = State::GivingBack {
            epoch,
            step,
            since: self.now,
        };
    }

    fn giving_back_done(&mut self, epoch: u64, at: GiveStep, step: Step, ok: bool) {
        match (at, step, ok) {
            (GiveStep::FinalCp, Step::FinalCp, true) => {
                self.stop_serving(self.partner);
                self.set_giving_back(epoch, GiveStep::Release);
                self.start_step(Step::ReleaseReservations, self.partner);
            }
            (GiveStep::Release, Step::ReleaseReservations, true) => {
                self.persist_role(Role::Normal);
                self.set_giving_back(epoch, GiveStep::AwaitVictim);
                self.send(Message::Giveback { epoch });
            }
            (GiveStep::ReleasingAddresses, Step::ReleaseAddresses, _) => {
                self.send(Message::AddressesReleased { epoch });
                self.set_giving_back(epoch, GiveStep::AwaitDone);
            }
            // The CP or release failed: keep serving both (the giveback is refused).
            (GiveStep::FinalCp | GiveStep::Release, _, false) => {
                self.note(Note::Aborted(Reason::StepFailed));
                if !self.serves(self.partner) {
                    self.serve(self.partner);
                }
                self.set_state(State::InTakeover {
                    epoch,
                    since: self.now,
                });
            }
            _ => {}
        }
    }

    fn on_giveback(&mut self, epoch: u64) {
        if let State::WaitingForGiveback { .. } = self.state {
            if epoch > self.persisted.given_back_epoch {
                self.set_state(State::ReceivingGiveback {
                    epoch,
                    step: ReceiveStep::Assert,
                });
                self.start_step(Step::AssertReservations, self.me);
            }
        }
    }

    fn receiving_done(&mut self, epoch: u64, at: ReceiveStep, step: Step, ok: bool) {
        match (at, step, ok) {
            (ReceiveStep::Assert, Step::AssertReservations, true) => {
                self.state = State::ReceivingGiveback {
                    epoch,
                    step: ReceiveStep::Mount,
                };
                self.start_step(Step::Mount, self.me);
            }
            (ReceiveStep::Mount, Step::Mount, true) => {
                self.state = State::ReceivingGiveback {
                    epoch,
                    step: ReceiveStep::Replay,
                };
                self.start_step(Step::Replay, self.me);
            }
            (ReceiveStep::Replay, Step::Replay, true) => {
                self.send(Message::ReleaseAddresses { epoch });
                self.state = State::ReceivingGiveback {
                    epoch,
                    step: ReceiveStep::AwaitAddresses { since: self.now },
                };
            }
            (ReceiveStep::Raise, Step::RaiseAddresses, _) => {
                self.state = State::ReceivingGiveback {
                    epoch,
                    step: ReceiveStep::Verify,
                };
                self.start_step(Step::VerifyReservations, self.me);
            }
            (ReceiveStep::Verify, Step::VerifyReservations, true) => {
                self.serve(self.me);
                self.persisted.given_back_epoch = self.persisted.given_back_epoch.max(epoch);
                self.persist_role(Role::Normal);
                self.send(Message::GivebackDone { epoch });
                self.note(Note::GivebackComplete(epoch));
                self.set_state(State::Normal);
            }
            (ReceiveStep::Assert, _, false) => self.set_state(State::WaitingForGiveback { epoch }),
            (_, _, false) => {
                // Mount or replay failed after we took the disks: give them up again.
                self.out.push(Action::Start {
                    step: Step::ReleaseReservations,
                    identity: self.me,
                });
                self.note(Note::Aborted(Reason::StepFailed));
                self.set_state(State::WaitingForGiveback { epoch });
            }
            _ => {}
        }
    }

    fn on_giveback_done(&mut self, epoch: u64) {
        if let State::GivingBack { epoch: e, .. } = self.state {
            if e == epoch {
                self.finish_giveback(epoch);
            }
        }
    }

    fn finish_giveback(&mut self, epoch: u64) {
        debug_assert!(!self.serves(self.partner));
        self.note(Note::GivebackComplete(epoch));
        self.set_state(State::Normal);
    }

    // ----- start of the own identity --------------------------------------------------------

    fn starting_done(
        &mut self,
        step: Step,
        ok: bool,
        resume: Option<(u64, Mode)>,
        fallback: Option<u64>,
    ) {
        let next = match (step, ok) {
            (Step::AssertReservations, true) => Step::Mount,
            (Step::Mount, true) => Step::Replay,
            (Step::Replay, true) => Step::RaiseAddresses,
            (Step::RaiseAddresses, _) => Step::VerifyReservations,
            (Step::VerifyReservations, true) => {
                self.serve(self.me);
                match resume {
                    Some((epoch, mode)) => self.begin_taking_over(epoch, mode),
                    None => {
                        self.persist_role(Role::Normal);
                        self.set_state(State::Normal);
                    }
                }
                return;
            }
            (_, false) => {
                if step != Step::AssertReservations {
                    self.out.push(Action::Start {
                        step: Step::ReleaseReservations,
                        identity: self.me,
                    });
                }
                self.note(Note::Aborted(Reason::StepFailed));
                self.stop_serving(self.me);
                if let Some(epoch) = fallback {
                    // Reclaim after a handoff lost the race: the taker has our disks.
                    self.out.push(Action::Start {
                        step: Step::ReleaseAddresses,
                        identity: self.me,
                    });
                    self.enter_waiting_for_giveback(epoch);
                } else if self.partner_holds_us() && resume.is_none() {
                    let epoch = self.partner_epoch_hint();
                    self.enter_waiting_for_giveback(epoch);
                } else {
                    // A disk error, not a reservation conflict we can explain: listen and retry.
                    self.set_state(State::Booting {
                        since: self.now,
                        resume,
                    });
                }
                return;
            }
            _ => return,
        };
        self.state = State::Starting {
            step: next,
            resume,
            fallback,
        };
        self.start_step(next, self.me);
    }

    fn begin_starting(&mut self, resume: Option<(u64, Mode)>, fallback: Option<u64>) {
        self.set_state(State::Starting {
            step: Step::AssertReservations,
            resume,
            fallback,
        });
        self.start_step(Step::AssertReservations, self.me);
    }

    /// The partner died, or restarted after `since`: an attempt it ran is abandoned.
    fn partner_gone(&self, since: Time) -> bool {
        let restarted = self.partner_restarted_at.is_some_and(|t| t >= since);
        self.partner_dead() || restarted
    }

    fn partner_holds_us(&self) -> bool {
        let given_back = self.persisted.given_back_epoch;
        let holds = |state: StateCode, epoch: u64| {
            matches!(state, StateCode::InTakeover | StateCode::TakingOver) && epoch > given_back
        };
        self.partner_hb.is_some_and(|hb| holds(hb.state, hb.epoch))
            || self.mbox_last.is_some_and(|m| holds(m.state, m.epoch))
    }

    fn own_restart_tick(&mut self) {
        if self.own_restart == Some((Step::AssertReservations, false))
            && self.now >= self.reclaim_next_at
        {
            self.own_restart = Some((Step::AssertReservations, true));
            self.start_step(Step::AssertReservations, self.me);
        }
    }

    fn own_restart_done(&mut self, step: Step, ok: bool) {
        let next = match (step, ok) {
            (Step::AssertReservations, true) => Step::Mount,
            (Step::Mount, true) => Step::Replay,
            (Step::Replay, true) => Step::RaiseAddresses,
            (Step::RaiseAddresses, _) => Step::VerifyReservations,
            (Step::VerifyReservations, true) => {
                self.own_restart = None;
                self.serve(self.me);
                return;
            }
            _ => {
                self.own_restart = Some((Step::AssertReservations, false));
                self.reclaim_next_at = self.now.plus_ms(self.cfg.heartbeat_loss_ms);
                return;
            }
        };
        self.own_restart = Some((next, true));
        self.start_step(next, self.me);
    }

    fn partner_epoch_hint(&self) -> u64 {
        let from_hb = self.partner_hb.map_or(0, |hb| hb.epoch);
        let from_mbox = self.mbox_last.map_or(0, |m| m.epoch);
        from_hb.max(from_mbox).max(self.persisted.epoch_seen_max)
    }

    // ----- timers ---------------------------------------------------------------------------

    fn resend_for_state(&mut self) {
        match self.state {
            State::AskedPartner {
                nonce,
                countdown_ms,
                immediate,
                ..
            } => self.send_quiet(Message::PleaseTakeover {
                nonce,
                countdown_ms: u32::try_from(countdown_ms).unwrap_or(u32::MAX),
                immediate,
            }),
            State::WaitingForShutdown { attempt, .. } => self.send_quiet(Message::PleaseShutdown {
                epoch: attempt.epoch,
                nonce: attempt.nonce,
                countdown_ms: u32::try_from(attempt.countdown_ms).unwrap_or(u32::MAX),
            }),
            State::HandingOff {
                epoch,
                completed,
                kept,
                releasing: false,
                ..
            } => self.send_quiet(Message::ShutdownComplete {
                epoch,
                completed,
                kept,
            }),
            State::TakingOver {
                epoch,
                step: TakeStep::AwaitAddresses { .. },
                ..
            } => self.send_quiet(Message::ReleaseAddresses { epoch }),
            State::GivingBack {
                epoch,
                step: GiveStep::AwaitVictim,
                ..
            } => self.send_quiet(Message::Giveback { epoch }),
            State::ReceivingGiveback {
                epoch,
                step: ReceiveStep::AwaitAddresses { .. },
            } => self.send_quiet(Message::ReleaseAddresses { epoch }),
            _ => {}
        }
    }

    // One arm per state's timer: guards would let a state fall through to another arm.
    #[allow(clippy::collapsible_match)]
    fn timers_for_state(&mut self) {
        let now = self.now;
        match self.state {
            State::Booting { since, resume } => self.booting_tick(since, resume),
            State::Normal => self.maybe_hard_takeover(),
            State::TakeoverCheck { attempt, since } => {
                if now.since_ms(since) >= self.cfg.check_ms_max {
                    self.set_state(State::Normal);
                    self.refuse(attempt, Reason::CheckTimeout);
                }
            }
            State::AskedPartner { since, .. } => {
                if now.since_ms(since) >= self.cfg.check_ms_max {
                    self.note(Note::Aborted(Reason::CheckTimeout));
                    self.set_state(State::Normal);
                }
            }
            State::WaitingForShutdown { attempt, deadline } => {
                self.waiting_for_shutdown_tick(attempt, deadline)
            }
            State::TakingOver {
                epoch,
                mode,
                step: TakeStep::AwaitAddresses { since },
            } => {
                // The victim is gone or slow: raise anyway (its disks are ours already).
                if now.since_ms(since) >= self.cfg.address_handoff_ms {
                    self.state = State::TakingOver {
                        epoch,
                        mode,
                        step: TakeStep::Raise,
                    };
                    self.start_step(Step::RaiseAddresses, self.partner);
                }
            }
            State::InTakeover { epoch, since } => self.in_takeover_tick(epoch, since),
            State::TakingOver { step, .. } => {
                if self.retry_at.is_some_and(|at| now >= at) {
                    self.retry_at = None;
                    match step {
                        TakeStep::AbortRelease(_) => {
                            self.start_step(Step::ReleaseReservations, self.partner)
                        }
                        TakeStep::Reserve => {
                            self.start_step(Step::AssertReservations, self.partner)
                        }
                        _ => {}
                    }
                }
            }
            State::HandingOff {
                epoch,
                since,
                releasing: false,
                ..
            } => {
                // The taker never came for the disks (it aborted or died): take them back.
                // The reservation decides a race with a late taker.
                let waited_ms = now.since_ms(since);
                if self.partner_gone(since) || waited_ms >= self.handoff_wait_ms_max() {
                    self.begin_starting(None, Some(epoch));
                }
            }
            State::WaitingForGiveback { epoch } => self.waiting_for_giveback_tick(epoch),
            State::Draining {
                epoch,
                step: Step::Drain | Step::FinalCp,
                since,
                countdown_ms,
                ..
            } => {
                // The taker is gone (dead, restarted) or past its countdown without forcing:
                // nobody is coming for our disks. Serve again instead of draining forever —
                // after asserting our reservation, since a TAKEOVER may have been lost.
                let overdue_ms = countdown_ms.saturating_add(2 * self.cfg.heartbeat_loss_ms);
                if self.partner_gone(since) || now.since_ms(since) >= overdue_ms {
                    self.note(Note::Aborted(Reason::CheckTimeout));
                    self.begin_starting(None, Some(epoch));
                }
            }
            State::GivingBack { epoch, step, since } => {
                let waiting = matches!(step, GiveStep::AwaitVictim | GiveStep::AwaitDone);
                if waiting && now.since_ms(since) >= self.cfg.giveback_wait_ms_max {
                    // We released the disks; the victim has them or will reclaim them.
                    self.note(Note::Aborted(Reason::CheckTimeout));
                    self.finish_giveback(epoch);
                }
            }
            State::ReceivingGiveback {
                epoch,
                step: ReceiveStep::AwaitAddresses { since },
            } => {
                if now.since_ms(since) >= self.cfg.address_handoff_ms {
                    self.state = State::ReceivingGiveback {
                        epoch,
                        step: ReceiveStep::Raise,
                    };
                    self.start_step(Step::RaiseAddresses, self.me);
                }
            }
            _ => {}
        }
    }

    fn handoff_wait_ms_max(&self) -> u64 {
        self.cfg
            .address_handoff_ms
            .saturating_mul(2)
            .saturating_add(self.cfg.step_ms_max)
    }

    fn booting_tick(&mut self, since: Time, resume: Option<(u64, Mode)>) {
        let heard = self.partner_hb.is_some();
        let listened = self.now.since_ms(since) >= self.cfg.boot_listen_ms;
        if !heard && !listened && !self.partner_dead() {
            return;
        }
        if self.partner_holds_us() && resume.is_none() {
            let epoch = self.partner_epoch_hint();
            self.enter_waiting_for_giveback(epoch);
        } else {
            self.begin_starting(resume, None);
        }
    }

    fn waiting_for_shutdown_tick(&mut self, attempt: Attempt, deadline: Time) {
        if self.partner_dead() {
            self.note(Note::PartnerDead);
            self.begin_taking_over(attempt.epoch, Mode::Hard);
        } else if self.now >= deadline {
            self.note(Note::CountdownExpired);
            if self.interconnect_alive() {
                self.send(Message::Takeover {
                    epoch: attempt.epoch,
                });
                self.begin_taking_over(attempt.epoch, Mode::Forced);
            } else {
                // Cut interconnect, live mailbox: never take over a live partner we cannot
                // talk to. It reclaims its disks by itself if it had released them.
                self.note(Note::Aborted(Reason::InterconnectDown));
                self.set_state(State::Normal);
            }
        }
    }

    fn maybe_hard_takeover(&mut self) {
        if !self.partner_dead() || !self.hard_takeover_blockers().is_empty() {
            return;
        }
        self.note(Note::PartnerDead);
        let epoch = self.take_epoch();
        self.begin_taking_over(epoch, Mode::Hard);
    }

    fn in_takeover_tick(&mut self, epoch: u64, since: Time) {
        if self.now >= self.please_die_next_at {
            self.please_die_next_at = self.now.plus_ms(self.cfg.please_die_interval_ms);
            self.send_quiet(Message::PleaseDie { epoch });
        }
        let victim_ready = self.interconnect_alive()
            && self.partner_hb.is_some_and(|hb| {
                hb.state == StateCode::WaitingForGiveback && hb.health.first_failed().is_none()
            });
        let due = self.now.since_ms(since) >= self.cfg.auto_giveback_delay_ms;
        if self.cfg.auto_giveback && !self.auto_giveback_disabled && victim_ready && due {
            self.begin_giveback();
        }
    }

    fn waiting_for_giveback_tick(&mut self, epoch: u64) {
        // The partner is Normal and past our epoch: it aborted (or finished) without giving
        // back through the protocol. Try to take our disks back; the reservation arbitrates.
        // Or the partner waits too: nobody serves our identity.
        let partner_done = self.interconnect_alive()
            && self.partner_hb.is_some_and(|hb| {
                (hb.state == StateCode::Normal && hb.epoch >= epoch)
                    || hb.state == StateCode::WaitingForGiveback
            });
        if partner_done && self.now >= self.reclaim_next_at {
            self.reclaim_next_at = self.now.plus_ms(self.cfg.heartbeat_loss_ms);
            self.begin_starting(None, Some(epoch));
        }
    }

    // ----- helpers --------------------------------------------------------------------------

    fn common_blockers(&self) -> Reasons {
        let mut r = Reasons::default();
        if self.health.first_failed().is_some() {
            r.add(Reason::LocalUnhealthy);
        }
        match self.partner_hb {
            None => r.add(Reason::PartnerUnknown),
            Some(hb) => {
                if hb.version != self.cfg.protocol_version {
                    r.add(Reason::VersionIncompatible);
                }
                if !hb.mirror_in_sync {
                    r.add(Reason::MirrorNotInSync);
                }
            }
        }
        if self.mbox_last.is_some_and(|m| m.unmirrored) {
            r.add(Reason::MirrorNotInSync);
        }
        if self.partner_unmirrored_found {
            r.add(Reason::PartnerUnmirroredWrites);
        }
        match self.partner_disks {
            None => r.add(Reason::PartnerDisksNotProbed),
            Some(false) => r.add(Reason::PartnerDisksUnreachable),
            Some(true) => {}
        }
        r
    }

    fn take_epoch(&mut self) -> u64 {
        let epoch = self.persisted.epoch_next;
        self.persisted.epoch_next += 1;
        self.emit_persist();
        epoch
    }

    fn state_epoch(&self) -> u64 {
        match self.state {
            State::TakeoverCheck { attempt, .. } | State::WaitingForShutdown { attempt, .. } => {
                attempt.epoch
            }
            State::TakingOver { epoch, .. }
            | State::InTakeover { epoch, .. }
            | State::Draining { epoch, .. }
            | State::HandingOff { epoch, .. }
            | State::WaitingForGiveback { epoch }
            | State::GivingBack { epoch, .. }
            | State::ReceivingGiveback { epoch, .. } => epoch,
            _ => self.persisted.epoch_next.saturating_sub(1),
        }
    }

    fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            state: self.state.code(),
            epoch: self.state_epoch(),
            given_back_epoch: self.persisted.given_back_epoch,
            health: self.health,
            mirror_in_sync: self.mirror == MirrorMode::Mirrored
                && !self.unmirrored_flag
                && !self.needs_resync,
            version: self.cfg.protocol_version,
        }
    }

    fn write_mailbox(&mut self) {
        self.mailbox_counter += 1;
        let record = MailboxRecord {
            node: self.me,
            counter: self.mailbox_counter,
            state: self.state.code(),
            epoch: self.state_epoch(),
            unmirrored: self.unmirrored_flag,
        };
        self.out.push(Action::WriteMailbox(record));
    }

    fn read_partner_mailbox(&mut self) -> u64 {
        let read_id = self.read_id_next;
        self.read_id_next += 1;
        self.out.push(Action::ReadPartnerMailbox { read_id });
        read_id
    }

    fn wants_degraded(&self) -> bool {
        let partner_accepts = self.interconnect_alive()
            && self.partner_hb.is_some_and(|hb| !hb.state.holds_partner());
        !partner_accepts || self.state.code().holds_partner()
    }

    fn after_event(&mut self) {
        self.sync_accept_mirror();
        // Only a serving node acknowledges anything: only it needs (and raises) the flag.
        let want = self.wants_degraded() && self.serving.iter().any(|s| *s);
        if self.mirror == MirrorMode::Mirrored {
            if want && !self.unmirrored_flag {
                // Say it on disk first; degrade when that write is durable.
                self.unmirrored_flag = true;
                self.write_mailbox();
                self.flag_counter = self.mailbox_counter;
            } else if !want && self.unmirrored_flag && !self.needs_resync {
                self.unmirrored_flag = false; // never degraded: nothing unmirrored was acked
            }
        }
        // The invariant behind "no acknowledged write lost": degraded implies the flag.
        assert!(self.mirror == MirrorMode::Mirrored || self.unmirrored_flag);
    }

    fn sync_accept_mirror(&mut self) {
        let accept = !self.state.code().holds_partner();
        if accept != self.accepts_mirror {
            self.accepts_mirror = accept;
            self.out.push(Action::AcceptPartnerMirror(accept));
        }
    }

    fn note_interconnect_change(&mut self) {
        let alive = self.interconnect_alive();
        if alive != self.interconnect_was_alive {
            self.interconnect_was_alive = alive;
            let note = if alive {
                Note::InterconnectRestored
            } else if self.partner_mailbox_alive() {
                Note::InterconnectCut
            } else {
                Note::PartnerDead
            };
            self.note(note);
        }
    }

    fn start_step(&mut self, step: Step, identity: NodeId) {
        self.out.push(Action::Start { step, identity });
    }

    fn serve(&mut self, identity: NodeId) {
        self.serving[usize::from(identity.0)] = true;
        self.out.push(Action::Serve(identity));
    }

    fn stop_serving(&mut self, identity: NodeId) {
        if self.serves(identity) {
            self.serving[usize::from(identity.0)] = false;
            self.out.push(Action::StopServing(identity));
        }
    }

    fn send(&mut self, message: Message) {
        self.note(Note::Sent(message.name()));
        self.out.push(Action::Send(message));
    }

    fn send_quiet(&mut self, message: Message) {
        self.out.push(Action::Send(message));
    }

    fn set_state(&mut self, state: State) {
        let changed = state.code() != self.state.code();
        if !matches!(
            state.code(),
            StateCode::Normal
                | StateCode::TakingOver
                | StateCode::InTakeover
                | StateCode::GivingBack
        ) {
            // Our own identity is (re)started or given up by the new state itself.
            self.own_restart = None;
        }
        self.state = state;
        if changed {
            self.note(Note::State(state.code()));
        }
    }

    fn persist_role(&mut self, role: Role) {
        self.persisted.role = role;
        self.emit_persist();
    }

    fn emit_persist(&mut self) {
        self.out.push(Action::Persist(self.persisted));
    }

    fn note(&mut self, note: Note) {
        self.out.push(Action::Record(Record { at: self.now, note }));
    }
}

impl Reasons {
    fn from_iter_except(reasons: Reasons, except: Reason) -> Reasons {
        let mut out = Reasons::default();
        for r in reasons.iter().filter(|r| *r != except) {
            out.add(r);
        }
        out
    }
}
