//! The narrow interface between the console and the node.
//!
//! The node (server crate) implements [`ConsoleBackend`]; the console only ever reads the plain
//! serde structs below and asks for operations. Nothing here knows about sockets, disks or the
//! takeover state machine: the node translates its own state into these shapes.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Longest graceful countdown an operator may ask for, in seconds (the node may clamp lower).
pub const COUNTDOWN_S_MAX: u32 = 600;
/// Shortest graceful countdown, in seconds: a zero countdown is what "immediate" is for.
pub const COUNTDOWN_S_MIN: u32 = 1;

/// Identifies one takeover or giveback operation; unique for the life of the node process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OperationId(pub u64);

impl std::fmt::Display for OperationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The state of one node in the HA pair, as the takeover state machine sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Serving its own aggregates; partner healthy.
    Normal,
    /// Checking whether a takeover is possible (check-only or before a takeover).
    TakeoverCheck,
    /// Sent PLEASE_SHUTDOWN; waiting for the partner to drain (countdown running).
    WaitingForShutdown,
    /// Asserting reservations, mounting, replaying, raising addresses.
    TakingOver,
    /// Serving both identities.
    InTakeover,
    /// Refusing new requests and finishing in-flight ones before handing over.
    Draining,
    /// Taken over; waiting for the partner to give back.
    WaitingForGiveback,
    /// Handing the partner's identity back.
    GivingBack,
    /// Unreachable or stopped (as seen by the partner).
    Down,
}

impl NodeState {
    /// The operator-facing label.
    pub fn label(self) -> &'static str {
        match self {
            NodeState::Normal => "normal",
            NodeState::TakeoverCheck => "takeover check",
            NodeState::WaitingForShutdown => "waiting for shutdown",
            NodeState::TakingOver => "taking over",
            NodeState::InTakeover => "in takeover",
            NodeState::Draining => "draining",
            NodeState::WaitingForGiveback => "waiting for giveback",
            NodeState::GivingBack => "giving back",
            NodeState::Down => "down",
        }
    }
}

/// Health of one module as reported by the failover monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Working.
    Ok,
    /// Working with reduced redundancy or performance.
    Degraded,
    /// Not working.
    Failed,
    /// Not known (no report yet).
    Unknown,
}

/// One module's health line (e.g. "nvlog", "raid4", "nfs", "interconnect").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModuleHealth {
    /// Module name.
    pub name: String,
    /// Its health.
    pub health: Health,
    /// Free text for the operator ("disk 3 missing").
    pub detail: String,
}

/// One interconnect link between the nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// Link name ("ic0").
    pub name: String,
    /// Whether heartbeats currently arrive on it.
    pub up: bool,
    /// Last measured heartbeat round-trip time, in microseconds.
    pub heartbeat_rtt_us: Option<u64>,
    /// Heartbeats missed since the link came up.
    pub heartbeat_misses: u64,
}

/// State of the NVRAM log mirror to the partner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MirrorStatus {
    /// True when every acknowledged record is also in the partner's mirror.
    pub in_sync: bool,
    /// Bytes appended locally but not yet acknowledged by the partner.
    pub lag_bytes: u64,
    /// Why the mirror is degraded, if it is.
    pub degraded_reason: Option<String>,
}

/// State of one disk in a RAID-4 group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskState {
    /// In service.
    Ok,
    /// Missing or failed.
    Failed,
    /// Being reconstructed.
    Rebuilding,
    /// Hot spare.
    Spare,
}

/// One disk of an aggregate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    /// Disk name or path.
    pub name: String,
    /// Role in the group ("data", "parity", "spare").
    pub role: String,
    /// Its state.
    pub state: DiskState,
}

/// One aggregate (a RAID-4 group plus the file system on it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Aggregate name.
    pub name: String,
    /// Node that owns it (its home node).
    pub home: String,
    /// Node currently serving it (differs from `home` in takeover), if any.
    pub served_by: Option<String>,
    /// Its disks.
    pub disks: Vec<Disk>,
    /// Rebuild progress in [0, 1] when rebuilding.
    pub rebuild_progress: Option<f64>,
}

/// NVRAM log usage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NvramStatus {
    /// Bytes of the region in use by records not yet covered by a CP.
    pub used_bytes: u64,
    /// Size of the region, in bytes.
    pub capacity_bytes: u64,
}

/// The last consistency point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CpStatus {
    /// CP generation number.
    pub generation: u64,
    /// When it completed, Unix time in milliseconds.
    pub at_unix_ms: u64,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// Bytes it wrote.
    pub bytes: u64,
}

/// One export served by a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Export {
    /// Export path ("/a").
    pub path: String,
    /// Aggregate it lives on.
    pub aggregate: String,
    /// Address it is served on.
    pub address: String,
}

/// One connected client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Client {
    /// Client address.
    pub address: String,
    /// Protocol ("nfs3", "smb2").
    pub protocol: String,
}

/// One throughput sample for the charts (the backend keeps a bounded recent window).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Unix time in milliseconds.
    pub at_unix_ms: u64,
    /// Operations per second.
    pub ops_per_s: f64,
    /// Bytes per second, read plus written.
    pub bytes_per_s: f64,
}

/// Everything the console shows about one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node name ("a").
    pub name: String,
    /// HA state.
    pub state: NodeState,
    /// Failover-monitor health of each module.
    pub modules: Vec<ModuleHealth>,
    /// Interconnect links.
    pub links: Vec<Link>,
    /// NVRAM mirror state.
    pub mirror: MirrorStatus,
    /// True when this node can be taken over by its partner now.
    pub takeover_possible: bool,
    /// Why a takeover of this node is not possible (empty when it is).
    pub takeover_blockers: Vec<String>,
    /// Aggregates this node owns or serves.
    pub aggregates: Vec<Aggregate>,
    /// NVRAM usage.
    pub nvram: NvramStatus,
    /// Last CP, if any.
    pub last_cp: Option<CpStatus>,
    /// Exports it serves now.
    pub exports: Vec<Export>,
    /// Connected clients.
    pub clients: Vec<Client>,
    /// Recent throughput, oldest first.
    pub samples: Vec<Sample>,
}

/// The whole pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairStatus {
    /// Both nodes (normally two), in a stable order.
    pub nodes: Vec<NodeStatus>,
    /// The node answering this request.
    pub local: String,
    /// Operation in progress, if any (so the overview can link to it).
    pub active_operation: Option<OperationId>,
}

/// Result of a check-only run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// True when the operation may proceed.
    pub possible: bool,
    /// Each check with its outcome, for the dialog.
    pub checks: Vec<CheckItem>,
}

/// One line of a check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckItem {
    /// What was checked ("mirror in sync").
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Detail for the operator.
    pub detail: String,
}

/// How to take over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum TakeoverMode {
    /// Drain first; force after `countdown_s` seconds.
    Graceful {
        /// Countdown in seconds, within [`COUNTDOWN_S_MIN`, `COUNTDOWN_S_MAX`].
        countdown_s: u32,
    },
    /// Fence and take over at once (no drain).
    Immediate,
}

/// Kind of operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperationKind {
    /// Takeover of `target` by its partner.
    Takeover,
    /// Giveback of `target`'s identity to it.
    Giveback,
}

/// State of one step of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    /// Not started.
    Pending,
    /// Running now.
    Running,
    /// Finished.
    Done,
    /// Failed (the operation's outcome says why).
    Failed,
    /// Not needed (e.g. drain in an immediate takeover).
    Skipped,
}

/// One step ("PLEASE_SHUTDOWN sent", "draining", "reservations", "replay", "serving").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Step name.
    pub name: String,
    /// Its state.
    pub state: StepState,
    /// Live detail ("12 requests in flight, 25 s left").
    pub detail: String,
    /// When it last changed, Unix time in milliseconds.
    pub at_unix_ms: Option<u64>,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Outcome {
    /// It completed.
    Succeeded,
    /// It failed, with the reason for the operator.
    Failed {
        /// What went wrong and what to do.
        reason: String,
    },
}

/// Progress of one operation; the backend publishes a new value on every change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The operation.
    pub id: OperationId,
    /// Takeover or giveback.
    pub kind: OperationKind,
    /// The node taken over / given back to.
    pub target: String,
    /// Who asked for it.
    pub actor: String,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// `None` while running.
    pub outcome: Option<Outcome>,
}

impl Progress {
    /// True once the operation has ended (either way).
    pub fn is_finished(&self) -> bool {
        self.outcome.is_some()
    }
}

/// One entry of the event log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Monotonic sequence number (for `since`).
    pub seq: u64,
    /// Unix time in milliseconds.
    pub at_unix_ms: u64,
    /// Node it concerns.
    pub node: String,
    /// Who caused it ("admin", "token:ci", "system").
    pub actor: String,
    /// What happened.
    pub message: String,
}

/// Errors a backend returns to the console.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No such node.
    #[error("unknown node {0:?}")]
    UnknownNode(String),
    /// Refused (check failed, another operation running, wrong state); the text says why.
    #[error("refused: {0}")]
    Refused(String),
    /// The node could not answer (partner unreachable, internal error).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// What the node implements for the console.
///
/// All methods must return promptly (they are called from HTTP handlers): long work belongs in
/// the operation the `start_*` methods launch, whose progress is published on a
/// [`watch`] channel. Publish every step up front as `Pending` (so the operator sees the whole
/// plan), e.g. "PLEASE_SHUTDOWN sent", "draining requests" (detail: in-flight count and
/// countdown left), "final CP", "reservations asserted", "aggregate mounted, log replayed",
/// "addresses raised", "serving"; set `outcome` last. Keep finished operations watchable for a
/// while so a reloaded page still shows how they ended.
#[async_trait]
pub trait ConsoleBackend: Send + Sync + 'static {
    /// Current state of both nodes.
    async fn status(&self) -> Result<PairStatus, BackendError>;

    /// Check-only: could `target` be taken over by its partner now?
    async fn check_takeover(&self, target: &str) -> Result<CheckResult, BackendError>;

    /// Start taking over `target`; returns at once with the operation id.
    async fn start_takeover(
        &self,
        target: &str,
        mode: TakeoverMode,
        actor: &str,
    ) -> Result<OperationId, BackendError>;

    /// Check-only: could `target`'s identity be given back to it now?
    async fn check_giveback(&self, target: &str) -> Result<CheckResult, BackendError>;

    /// Start giving `target`'s identity back to it; returns at once with the operation id.
    async fn start_giveback(&self, target: &str, actor: &str) -> Result<OperationId, BackendError>;

    /// Events with `seq > since`, oldest first, at most `limit` of them.
    async fn events(&self, since: u64, limit: usize) -> Result<Vec<Event>, BackendError>;

    /// Progress of an operation (also finished ones, for a while), or `None` if unknown.
    /// The receiver's current value is the latest progress; it changes on every step.
    fn watch_operation(&self, id: OperationId) -> Option<watch::Receiver<Progress>>;

    /// Append the node's metrics as OpenMetrics text, i.e. what [`crate::Metrics::encode`]
    /// writes; `/metrics` converts it to classic Prometheus text for scrapers that do not ask
    /// for OpenMetrics.
    fn render_metrics(&self, out: &mut String) -> std::fmt::Result;
}
