//! The vocabulary of the takeover machine: states, events, actions, reasons and console notes.

use crate::health::Health;
use crate::mailbox::MailboxRecord;
use crate::persist::Persisted;
use crate::time::Time;
use crate::wire::Message;
use crate::NodeId;

/// The state summary carried in heartbeats and mailbox records (one byte on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum StateCode {
    /// Restarted; listening for the partner before starting its own identity.
    Booting = 1,
    /// Asserting, mounting, replaying and raising its own identity.
    Starting = 2,
    /// Serving its own identity.
    Normal = 3,
    /// Taker: checking that it can take over.
    TakeoverCheck = 4,
    /// Victim (path 1): sent PLEASE_TAKEOVER, waiting for the answer.
    AskedPartner = 5,
    /// Taker: sent PLEASE_SHUTDOWN, countdown running.
    WaitingForShutdown = 6,
    /// Taker: reservations, mount, replay, addresses.
    TakingOver = 7,
    /// Taker: serving both identities.
    InTakeover = 8,
    /// Victim: refusing new requests, completing in-flight ones, final CP, releasing disks.
    Draining = 9,
    /// Victim: disks released, handing its addresses over.
    HandingOff = 10,
    /// Victim: taken over, kept down (PLEASE_DIE) until giveback.
    WaitingForGiveback = 11,
    /// Taker: draining and releasing the victim's identity.
    GivingBack = 12,
    /// Victim: asserting, mounting, replaying and raising its identity again.
    ReceivingGiveback = 13,
}

impl StateCode {
    /// Decodes the wire byte.
    pub fn from_byte(byte: u8) -> Option<StateCode> {
        use StateCode::*;
        Some(match byte {
            1 => Booting,
            2 => Starting,
            3 => Normal,
            4 => TakeoverCheck,
            5 => AskedPartner,
            6 => WaitingForShutdown,
            7 => TakingOver,
            8 => InTakeover,
            9 => Draining,
            10 => HandingOff,
            11 => WaitingForGiveback,
            12 => GivingBack,
            13 => ReceivingGiveback,
            _ => return None,
        })
    }

    /// A node in this state is taking or holding its partner's identity, so it does not accept
    /// the partner's log into its mirror (the partner must not acknowledge on its strength).
    pub fn holds_partner(self) -> bool {
        matches!(
            self,
            StateCode::TakingOver | StateCode::InTakeover | StateCode::GivingBack
        )
    }
}

/// Why a takeover is impossible, refused or aborted. Always queryable, shown in status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Reason {
    /// No heartbeat on the interconnect within `heartbeat_loss_ms`.
    InterconnectDown = 1,
    /// A module of this node failed (see the failover monitor).
    LocalUnhealthy = 2,
    /// The partner's log is not fully in this node's mirror.
    MirrorNotInSync = 3,
    /// Found after fencing: the partner acknowledged writes this node's mirror lacks.
    PartnerUnmirroredWrites = 4,
    /// This node cannot reach the partner's disks.
    PartnerDisksUnreachable = 5,
    /// The partner speaks another protocol version.
    VersionIncompatible = 6,
    /// This node is busy (not in Normal).
    Busy = 7,
    /// The partner is busy (not in Normal).
    PartnerBusy = 8,
    /// The partner is down: only a hard takeover is possible.
    PartnerDown = 9,
    /// Nothing heard from the partner since this node started.
    PartnerUnknown = 10,
    /// The check or the answer did not come within `check_ms_max`.
    CheckTimeout = 11,
    /// Hard takeover is disabled in the config.
    HardTakeoverDisabled = 12,
    /// Interconnect silent but the partner's mailbox is alive: the pair is cut, not dead.
    PartnerMailboxAlive = 13,
    /// The partner's disks have not been probed yet.
    PartnerDisksNotProbed = 14,
    /// The victim took its disks back (the takeover lost the reservation race).
    VictimReclaimed = 15,
    /// Giveback asked while not in takeover.
    NotInTakeover = 16,
    /// Giveback asked but the victim is not waiting for it.
    VictimNotWaiting = 17,
    /// A local step failed (reservation, mount, replay).
    StepFailed = 18,
    /// The request names a node that is not part of this pair.
    UnknownNode = 19,
    /// A module of the partner failed (its failover monitor says so): it cannot take over.
    PartnerUnhealthy = 20,
}

impl Reason {
    const ALL: [Reason; 20] = [
        Reason::InterconnectDown,
        Reason::LocalUnhealthy,
        Reason::MirrorNotInSync,
        Reason::PartnerUnmirroredWrites,
        Reason::PartnerDisksUnreachable,
        Reason::VersionIncompatible,
        Reason::Busy,
        Reason::PartnerBusy,
        Reason::PartnerDown,
        Reason::PartnerUnknown,
        Reason::CheckTimeout,
        Reason::HardTakeoverDisabled,
        Reason::PartnerMailboxAlive,
        Reason::PartnerDisksNotProbed,
        Reason::VictimReclaimed,
        Reason::NotInTakeover,
        Reason::VictimNotWaiting,
        Reason::StepFailed,
        Reason::UnknownNode,
        Reason::PartnerUnhealthy,
    ];

    /// Decodes the wire byte.
    pub fn from_byte(byte: u8) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| *r as u8 == byte)
    }

    /// What the operator reads.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::InterconnectDown => "interconnect down: no heartbeat from the partner",
            Reason::LocalUnhealthy => "a module of this node failed (see health)",
            Reason::MirrorNotInSync => {
                "the partner's NVRAM log is not in sync in this node's mirror"
            }
            Reason::PartnerUnmirroredWrites => {
                "the partner acknowledged writes that are not in this node's mirror"
            }
            Reason::PartnerDisksUnreachable => "this node cannot reach the partner's disks",
            Reason::VersionIncompatible => "the partner runs an incompatible protocol version",
            Reason::Busy => "this node is busy with another takeover or giveback",
            Reason::PartnerBusy => "the partner is busy with another takeover or giveback",
            Reason::PartnerDown => "the partner is down: only a hard takeover is possible",
            Reason::PartnerUnknown => "nothing heard from the partner since start",
            Reason::CheckTimeout => "no answer within check_ms_max",
            Reason::HardTakeoverDisabled => "hard takeover disabled in config",
            Reason::PartnerMailboxAlive => {
                "interconnect cut but the partner's mailbox is alive: not taking over"
            }
            Reason::PartnerDisksNotProbed => "the partner's disks have not been probed yet",
            Reason::VictimReclaimed => "the victim took its disks back first",
            Reason::NotInTakeover => "not in takeover: nothing to give back",
            Reason::VictimNotWaiting => "the partner is not waiting for giveback",
            Reason::StepFailed => "a local step (reservation, mount, replay) failed",
            Reason::UnknownNode => "no such node in this pair",
            Reason::PartnerUnhealthy => "a module of the partner failed (see its health)",
        }
    }
}

/// A set of [`Reason`]s (a bit set, cheap to copy and compare).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Reasons(u32);

impl Reasons {
    /// Adds `reason`.
    pub fn add(&mut self, reason: Reason) {
        self.0 |= 1 << (reason as u8);
    }
    /// Whether `reason` is in the set.
    pub fn contains(self, reason: Reason) -> bool {
        self.0 & (1 << (reason as u8)) != 0
    }
    /// No reason: the takeover is possible.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The reasons, in code order.
    pub fn iter(self) -> impl Iterator<Item = Reason> {
        Reason::ALL.into_iter().filter(move |r| self.contains(*r))
    }
    /// The first reason, if any.
    pub fn first(self) -> Option<Reason> {
        self.iter().next()
    }
}

/// A request from the operator (CLI, console).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OperatorRequest {
    /// Take over `of`. At the partner of `of` this is path 2 (Fig. 5); at `of` itself it is
    /// path 1 (Fig. 4): the node asks its partner with PLEASE_TAKEOVER.
    Takeover {
        /// The node to be taken over.
        of: NodeId,
        /// Countdown for the graceful drain; `None` = config default.
        countdown_ms: Option<u64>,
        /// Skip the drain: TAKEOVER at once (forced).
        immediate: bool,
        /// Run every check, report, change nothing.
        check_only: bool,
    },
    /// Give `to` its identity back (asked at the taker, or at the victim: PLEASE_GIVEBACK).
    Giveback {
        /// The node receiving its identity back.
        to: NodeId,
    },
}

/// A local step the driver performs and answers with [`Event::Done`] (or [`Event::Drained`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Refuse new requests for the identity (clients retry), complete in-flight ones, keep
    /// unprocessed ones in the mirrored log. Answered by [`Event::Drained`].
    Drain,
    /// Write the final consistency point of the identity's aggregate.
    FinalCp,
    /// Release the reservations on the identity's disks.
    ReleaseReservations,
    /// Reserve the identity's disks; fails if another node holds them.
    AssertReservations,
    /// Preempt the other node's reservations (fencing).
    PreemptReservations,
    /// Mount the identity's aggregate (newest valid root).
    Mount,
    /// Replay the log records of the identity newer than the mounted CP (local and mirror).
    Replay,
    /// Raise the identity's data addresses (gratuitous ARP).
    RaiseAddresses,
    /// Remove the identity's data addresses.
    ReleaseAddresses,
    /// Check that the identity's disks are reachable from this node.
    ProbeDisks,
    /// Just before serving: check that this node still holds the reservation it asserted (or
    /// preempted) at the start of the sequence, with an unchanged generation — nobody held
    /// the disks in between, so what was mounted is still current.
    VerifyReservations,
    /// Copy the local log into the partner's mirror again after a degraded period.
    ResyncMirror,
}

/// Whether acknowledgements need the partner's mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MirrorMode {
    /// A write is acknowledged only when logged locally and in the partner's mirror.
    Mirrored,
    /// Acknowledged when logged locally (partner down, cut or taken over). Entered only after
    /// the mailbox says `unmirrored` durably.
    Degraded,
}

/// An input to the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// Time passed: the driver calls this at least every `heartbeat_interval_ms`.
    Tick,
    /// An operator request.
    Operator(OperatorRequest),
    /// A message from the partner (authenticated and decoded by the transport).
    Received(Message),
    /// The answer to [`Action::ReadPartnerMailbox`]; `None` = unreadable.
    PartnerMailbox {
        /// The read this answers.
        read_id: u64,
        /// The record, if readable and valid.
        record: Option<MailboxRecord>,
    },
    /// The answer to [`Action::WriteMailbox`].
    OwnMailboxWritten {
        /// The counter of the record written.
        counter: u64,
        /// The write is durable (false: our disks are fenced or failed).
        ok: bool,
    },
    /// The failover monitor's health changed.
    Health(Health),
    /// A local step finished.
    Done {
        /// The step.
        step: Step,
        /// The identity it was for.
        identity: NodeId,
        /// It succeeded.
        ok: bool,
    },
    /// The drain of an identity finished.
    Drained {
        /// The identity drained.
        identity: NodeId,
        /// In-flight requests completed.
        completed: u32,
        /// Unprocessed requests kept in the (mirrored) log.
        kept: u32,
    },
    /// The periodic reservation check found that this node no longer holds the identity's disks.
    ReservationLost(NodeId),
}

/// An output of the machine: the driver performs them in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send a message to the partner over the interconnect.
    Send(Message),
    /// Write this record into our mailbox; answer with [`Event::OwnMailboxWritten`].
    WriteMailbox(MailboxRecord),
    /// Read the partner's mailbox; answer with [`Event::PartnerMailbox`].
    ReadPartnerMailbox {
        /// Echoed in the answer.
        read_id: u64,
    },
    /// Perform a local step for an identity; answer with [`Event::Done`] / [`Event::Drained`].
    Start {
        /// The step.
        step: Step,
        /// The identity.
        identity: NodeId,
    },
    /// Start serving the identity (its aggregate is mounted and replayed, its addresses up).
    Serve(NodeId),
    /// Stop serving the identity at once.
    StopServing(NodeId),
    /// Switch acknowledgements between mirrored and degraded.
    SetMirrorMode(MirrorMode),
    /// Accept (or refuse) the partner's log records into our mirror.
    AcceptPartnerMirror(bool),
    /// Persist this state before acting further.
    Persist(Persisted),
    /// A step for the console's timestamped log.
    Record(Record),
}

/// One timestamped line of the console's takeover log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Record {
    /// When.
    pub at: Time,
    /// What.
    pub note: Note,
}

/// What happened, for the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Note {
    /// The machine entered a state.
    State(StateCode),
    /// The operator asked.
    Requested(OperatorRequest),
    /// The takeover check ran: empty = possible.
    Checked(Reasons),
    /// The takeover was refused or aborted.
    Aborted(Reason),
    /// Took over: how.
    TakeoverStarted {
        /// Attempt.
        epoch: u64,
        /// How.
        mode: Mode,
    },
    /// A message was sent that the console shows (not heartbeats).
    Sent(&'static str),
    /// A message was received that the console shows (not heartbeats).
    Received(&'static str),
    /// A local step finished.
    StepDone(Step, NodeId, bool),
    /// The victim drained.
    Drained {
        /// Completed in-flight requests.
        completed: u32,
        /// Requests kept in the log.
        kept: u32,
    },
    /// Countdown expired without SHUTDOWN_COMPLETE.
    CountdownExpired,
    /// Partner dead: interconnect and mailbox silent.
    PartnerDead,
    /// Interconnect silent but mailbox alive.
    InterconnectCut,
    /// Interconnect heartbeats again.
    InterconnectRestored,
    /// Acknowledgements switched mode.
    Mirror(MirrorMode),
    /// The reservation check found the identity's disks held by another node.
    ReservationLost(NodeId),
    /// Obeyed PLEASE_DIE / TAKEOVER: stopped serving.
    KeptDown(u64),
    /// Auto-giveback disabled by the ping-pong guard.
    AutoGivebackDisabled,
    /// Given back.
    GivebackComplete(u64),
}

/// How a takeover proceeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The victim shut down cleanly: reserve (not preempt) its released disks.
    Graceful,
    /// Countdown expired or `--immediate`: TAKEOVER sent, disks preempted.
    Forced,
    /// Partner dead (interconnect and mailbox silent): disks preempted.
    Hard,
    /// Restarted while in takeover: take the identity again (still holding its disks).
    Resume,
    /// Restarted in the middle of a takeover: assert the disks, re-read the victim's mailbox
    /// (as after fencing), then continue, or release and abort.
    Recover,
}
