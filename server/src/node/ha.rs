//! The HA driver: runs the pure takeover machine (`cluster::Takeover`) against the real
//! world — the interconnect, the mailbox on the disks, the reservations, the identities —
//! and performs its actions in order.
//!
//! One task owns the machine. Everything that takes time runs elsewhere and comes back as
//! an event: each identity has its own worker (steps for one identity run one after the
//! other, in the order the machine asked), the mailbox has its own thread (O_DIRECT IO),
//! and the interconnect its own tasks. The loop itself never waits on IO except the small
//! synchronous write of the persisted state, which must be durable before anything the
//! machine does next.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cluster::health::{FailoverMonitor, Module, ModuleHealth};
use cluster::interconnect::{Interconnect, InterconnectEvent, RttStats};
use cluster::mailbox::MailboxRecord;
use cluster::mailbox_io::MailboxDisks;
use cluster::persist::Persisted;
use cluster::takeover::{MirrorMode, Note, OperatorRequest, Reasons, StateCode, Step};
use cluster::wire::{Heartbeat, Message};
use cluster::{Action, Event, NodeId, Takeover, Time};
use nvlog::{DegradePolicy, MirrorState, Nvlog};
use tokio::sync::{broadcast, mpsc};

use super::identity::Identity;
use crate::config::NodeConfig;

/// How often the machine gets a tick (it needs one at least every heartbeat interval; more
/// often makes countdowns and handoffs end closer to their bound).
const TICK_MS: u64 = 20;
/// How often module health is re-evaluated for the failover monitor.
const HEALTH_POLL_MS: u64 = 500;
/// Timestamped notes kept for status (the console keeps its own event log).
const NOTES_MAX: usize = 200;
/// Queued inputs per identity worker at most (the machine issues a few at a time).
const WORKER_QUEUE_MAX: usize = 64;
/// Notes buffered for slow console subscribers.
const NOTES_CHANNEL_MAX: usize = 256;
/// How often a mirror resync looks whether it is complete.
const RESYNC_POLL_MS: u64 = 10;

/// What reaches the driver loop.
pub enum Input {
    /// An event for the machine.
    Event(Event),
    /// An operator request (console, CLI).
    Operator(OperatorRequest),
}

/// One timestamped line of the takeover log, as the console shows it.
#[derive(Clone, Debug)]
pub struct NoteAt {
    /// Wall clock, ms since the epoch.
    pub at_unix_ms: u64,
    /// What happened.
    pub note: Note,
}

/// What status and the console read of the HA state (updated after every event).
#[derive(Clone, Debug)]
pub struct HaSnapshot {
    /// The machine's state.
    pub state: StateCode,
    /// Why a takeover of the partner is impossible now (empty = possible).
    pub takeover_impossible: Reasons,
    /// What blocks a hard takeover should the partner die now.
    pub hard_takeover_blockers: Reasons,
    /// The partner's last heartbeat.
    pub partner: Option<Heartbeat>,
    /// Interconnect alive (a heartbeat within the loss bound).
    pub interconnect_alive: bool,
    /// The partner's mailbox changes.
    pub partner_mailbox_alive: bool,
    /// Links up.
    pub links_up: usize,
    /// Links configured.
    pub links: usize,
    /// Ping round trips.
    pub rtt: RttStats,
    /// Identities served now, by node id.
    pub serving: [bool; 2],
    /// Acknowledgement mode.
    pub mirror_mode: MirrorMode,
    /// This node's failover-monitor health.
    pub health: cluster::health::Health,
    /// Auto-giveback disabled by the ping-pong guard.
    pub auto_giveback_disabled: bool,
    /// Heartbeat intervals that passed without a heartbeat from the partner, since start
    /// (counted once the partner was first heard; a heartbeat on any link counts).
    pub heartbeat_misses: u64,
}

/// Shared between the driver, status and the console.
pub struct HaShared {
    /// This node.
    pub me: NodeId,
    /// The names of node 0 and node 1.
    pub names: [String; 2],
    snapshot: Mutex<HaSnapshot>,
    notes: Mutex<VecDeque<NoteAt>>,
    live: broadcast::Sender<NoteAt>,
    input: mpsc::UnboundedSender<Input>,
}

impl HaShared {
    /// The current snapshot.
    pub fn snapshot(&self) -> HaSnapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The last notes, oldest first.
    pub fn notes(&self) -> Vec<NoteAt> {
        self.notes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Notes as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<NoteAt> {
        self.live.subscribe()
    }

    /// Hands an operator request to the machine.
    pub fn request(&self, request: OperatorRequest) -> Result<(), String> {
        self.input
            .send(Input::Operator(request))
            .map_err(|_| "the HA driver is not running".to_string())
    }

    /// The node id of a node name ("a", "b"), or of "partner".
    pub fn node_named(&self, name: &str) -> Option<NodeId> {
        if name == "partner" {
            return Some(NodeId(1 - self.me.0));
        }
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| NodeId(i as u8))
    }
}

/// What the driver needs to start.
pub struct DriverParts {
    /// The machine's bounds.
    pub cfg: cluster::TakeoverConfig,
    /// This node.
    pub me: NodeId,
    /// The node's own log.
    pub node_log: Nvlog,
    /// The identities, by node id.
    pub identities: [Identity; 2],
    /// The interconnect and its events.
    pub interconnect: (Interconnect, mpsc::Receiver<InterconnectEvent>),
    /// Where the persisted state lives.
    pub persist_path: PathBuf,
    /// The configurations of node 0 and node 1.
    pub configs: [NodeConfig; 2],
    /// Links configured.
    pub links: usize,
    /// Inputs (also given to the hold monitors).
    pub input: (mpsc::UnboundedSender<Input>, mpsc::UnboundedReceiver<Input>),
}

/// The running driver (dropping it stops the loop).
pub struct Driver {
    shared: Arc<HaShared>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<[Arc<tokio::sync::Mutex<Identity>>; 2]>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Driver {
    /// Restores the machine from the persisted state and starts the loop.
    pub fn start(parts: DriverParts) -> Result<Driver, String> {
        let persisted = read_persisted(&parts.persist_path)?;
        let clock = Instant::now();
        let machine = Takeover::restore(parts.cfg.clone(), parts.me, persisted, Time::ZERO);
        let (input_tx, input_rx) = parts.input;
        let (live, _) = broadcast::channel(NOTES_CHANNEL_MAX);
        let names = [parts.configs[0].name.clone(), parts.configs[1].name.clone()];
        let shared = Arc::new(HaShared {
            me: parts.me,
            names,
            snapshot: Mutex::new(snapshot_of(
                &machine,
                0,
                parts.links,
                RttStats::default(),
                0,
            )),
            notes: Mutex::new(VecDeque::new()),
            live,
            input: input_tx.clone(),
        });
        parts.node_log.set_degrade_policy(DegradePolicy::Never);
        parts
            .node_log
            .set_accept_partner(machine.accepts_partner_mirror());
        let mailbox = MailboxWorker::start(parts.me, parts.configs.clone(), input_tx.clone());
        let [i0, i1] = parts.identities;
        let identities = [
            Arc::new(tokio::sync::Mutex::new(i0)),
            Arc::new(tokio::sync::Mutex::new(i1)),
        ];
        let workers = [
            IdentityWorker::start(
                identities[0].clone(),
                input_tx.clone(),
                parts.cfg.step_ms_max,
            ),
            IdentityWorker::start(
                identities[1].clone(),
                input_tx.clone(),
                parts.cfg.step_ms_max,
            ),
        ];
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (interconnect, ic_rx) = parts.interconnect;
        let looped = Loop {
            machine,
            clock,
            shared: shared.clone(),
            input: input_rx,
            input_tx,
            ic_rx,
            interconnect,
            mailbox,
            workers,
            node_log: parts.node_log,
            persist_path: parts.persist_path,
            monitor: FailoverMonitor::new(),
            links_up: 0,
            links: parts.links,
            step_ms_max: parts.cfg.step_ms_max,
            identities: identities.clone(),
            last_note: None,
            misses: MissCounter::default(),
            heartbeat_interval_ms: parts.cfg.heartbeat_interval_ms,
        };
        let task = tokio::spawn(async move {
            looped.run(stop_rx).await;
            identities
        });
        Ok(Driver { shared, stop, task })
    }

    /// The shared HA state.
    pub fn shared(&self) -> &Arc<HaShared> {
        &self.shared
    }

    /// Stops the loop (no more actions) and returns the identities for a clean shutdown.
    pub async fn stop(mut self) -> Option<[Arc<tokio::sync::Mutex<Identity>>; 2]> {
        let _ = self.stop.send(true);
        (&mut self.task).await.ok()
    }
}

struct Loop {
    machine: Takeover,
    clock: Instant,
    shared: Arc<HaShared>,
    input: mpsc::UnboundedReceiver<Input>,
    input_tx: mpsc::UnboundedSender<Input>,
    ic_rx: mpsc::Receiver<InterconnectEvent>,
    interconnect: Interconnect,
    mailbox: MailboxWorker,
    workers: [IdentityWorker; 2],
    node_log: Nvlog,
    persist_path: PathBuf,
    monitor: FailoverMonitor,
    links_up: usize,
    links: usize,
    step_ms_max: u64,
    identities: [Arc<tokio::sync::Mutex<Identity>>; 2],
    last_note: Option<Note>,
    misses: MissCounter,
    heartbeat_interval_ms: u64,
}

/// Counts heartbeat intervals without a heartbeat.
#[derive(Default)]
struct MissCounter {
    last_heard: Option<Instant>,
    counted_in_gap: u64,
    total: u64,
}

impl MissCounter {
    fn heard(&mut self) {
        self.last_heard = Some(Instant::now());
        self.counted_in_gap = 0;
    }

    fn tick(&mut self, interval_ms: u64) {
        if let Some(at) = self.last_heard {
            // The first interval of a gap is the normal wait for the next heartbeat.
            let missed = (at.elapsed().as_millis() as u64 / interval_ms.max(1)).saturating_sub(1);
            if missed > self.counted_in_gap {
                self.total += missed - self.counted_in_gap;
                self.counted_in_gap = missed;
            }
        }
    }
}

impl Loop {
    fn now(&self) -> Time {
        Time::from_ms(self.clock.elapsed().as_millis() as u64)
    }

    async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let first = self.machine.start(self.now());
        self.perform(first);
        let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut health = tokio::time::interval(Duration::from_millis(HEALTH_POLL_MS));
        loop {
            let event = tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {
                    self.misses.tick(self.heartbeat_interval_ms);
                    Some(Event::Tick)
                }
                _ = health.tick() => self.health_event(),
                Some(input) = self.input.recv() => match input {
                    Input::Event(e) => Some(e),
                    Input::Operator(r) => Some(Event::Operator(r)),
                },
                Some(e) = self.ic_rx.recv() => self.on_interconnect(e),
            };
            if let Some(event) = event {
                let actions = self.machine.on(self.now(), event);
                self.perform(actions);
            }
        }
    }

    fn on_interconnect(&mut self, e: InterconnectEvent) -> Option<Event> {
        match e {
            InterconnectEvent::Message { message, .. } => {
                if matches!(message, Message::Heartbeat(_)) {
                    self.misses.heard();
                }
                Some(Event::Received(message))
            }
            InterconnectEvent::LinkUp { link } => {
                self.links_up += 1;
                tracing::info!(link, "interconnect link up");
                None
            }
            InterconnectEvent::LinkDown { link, reason } => {
                self.links_up = self.links_up.saturating_sub(1);
                tracing::warn!(link, %reason, "interconnect link down");
                None
            }
            InterconnectEvent::Connected => {
                tracing::info!("interconnect: connected to the partner");
                None
            }
            InterconnectEvent::Disconnected => {
                tracing::warn!("interconnect: no link to the partner");
                None
            }
            InterconnectEvent::Refused { link, error } => {
                tracing::warn!(link, %error, "interconnect: refused bytes from the peer");
                None
            }
        }
    }

    /// Module health for the failover monitor; an event only when it changed.
    fn health_event(&mut self) -> Option<Event> {
        let status = self.node_log.status();
        let nvlog = match status.mirror {
            MirrorState::Degraded { .. } | MirrorState::Syncing => ModuleHealth::Degraded,
            _ => ModuleHealth::Ok,
        };
        // Never "failed": a silent interconnect is what a dead partner looks like, and a
        // failed module would block the very takeover it calls for.
        let interconnect = match self.links_up < self.links {
            true => ModuleHealth::Degraded,
            false => ModuleHealth::Ok,
        };
        let mut changed = None;
        for (m, h) in [(Module::Nvlog, nvlog), (Module::Interconnect, interconnect)] {
            changed = self.monitor.report(m, h).or(changed);
        }
        // RAID and the file service: of the own identity, when mounted here.
        let raid = self.identities[usize::from(self.shared.me.0)]
            .try_lock()
            .ok()
            .and_then(|i| i.published().lock().ok().and_then(|p| p.clone()))
            .map(|p| match p.group.status().state {
                raid4::GroupState::Normal => ModuleHealth::Ok,
                raid4::GroupState::Offline => ModuleHealth::Failed,
                _ => ModuleHealth::Degraded,
            });
        if let Some(h) = raid {
            changed = self.monitor.report(Module::Raid, h).or(changed);
        }
        changed.map(Event::Health)
    }

    fn perform(&mut self, actions: Vec<Action>) {
        for action in actions {
            tracing::trace!(?action, "ha action");
            match action {
                Action::Send(m) => {
                    self.interconnect.send(&m);
                }
                Action::WriteMailbox(record) => self.mailbox.write(record),
                Action::ReadPartnerMailbox { read_id } => self.mailbox.read(read_id),
                Action::Start { step, identity } => self.start_step(step, identity),
                Action::Serve(identity) => self.worker(identity).send(Job::Serve),
                Action::StopServing(identity) => self.worker(identity).send(Job::StopServing),
                Action::SetMirrorMode(mode) => self.node_log.set_degrade_policy(match mode {
                    MirrorMode::Mirrored => DegradePolicy::Never,
                    MirrorMode::Degraded => DegradePolicy::Local,
                }),
                Action::AcceptPartnerMirror(accept) => self.node_log.set_accept_partner(accept),
                Action::Persist(p) => {
                    if let Err(e) = write_persisted(&self.persist_path, &p) {
                        // The machine's safety rests on this write; a node that cannot
                        // keep its state must not act on it.
                        tracing::error!(error = %e, "cannot persist the takeover state; stopping the node");
                        std::process::abort();
                    }
                }
                Action::Record(r) => self.record(r.note),
            }
        }
        let rtt = self.interconnect.rtt();
        let snap = snapshot_of(
            &self.machine,
            self.links_up,
            self.links,
            rtt,
            self.misses.total,
        );
        *self
            .shared
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = snap;
    }

    fn worker(&self, identity: NodeId) -> &IdentityWorker {
        &self.workers[usize::from(identity.0)]
    }

    fn start_step(&mut self, step: Step, identity: NodeId) {
        if step == Step::ResyncMirror {
            // Node-level, not an identity's: wait for the mirror to catch up.
            let (log, tx, bound) = (
                self.node_log.clone(),
                self.input_tx.clone(),
                self.step_ms_max,
            );
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_millis(bound);
                let ok = loop {
                    if log.mirror_synced() {
                        break true;
                    }
                    if Instant::now() >= deadline {
                        break false;
                    }
                    tokio::time::sleep(Duration::from_millis(RESYNC_POLL_MS)).await;
                };
                let _ = tx.send(Input::Event(Event::Done { step, identity, ok }));
            });
            return;
        }
        self.worker(identity).send(Job::Step(step));
    }

    fn record(&mut self, note: Note) {
        // Periodic resends (PLEASE_DIE every second, PLEASE_SHUTDOWN each interval) are
        // one line, not one per resend.
        if matches!(note, Note::Sent(_) | Note::Received(_)) && self.last_note == Some(note) {
            return;
        }
        self.last_note = Some(note);
        log_note(&self.shared, &note);
        let at = NoteAt {
            at_unix_ms: now_unix_ms(),
            note,
        };
        {
            let mut notes = self.shared.notes.lock().unwrap_or_else(|e| e.into_inner());
            notes.push_back(at.clone());
            while notes.len() > NOTES_MAX {
                notes.pop_front();
            }
        }
        let _ = self.shared.live.send(at);
    }
}

fn log_note(shared: &HaShared, note: &Note) {
    match note {
        Note::Aborted(r) => {
            tracing::warn!(node = %shared.names[usize::from(shared.me.0)], reason = r.describe(), "takeover aborted")
        }
        Note::StepDone(step, id, false) => {
            tracing::warn!(?step, identity = %shared.names[usize::from(id.0)], "step failed")
        }
        Note::State(s) => tracing::info!(state = ?s, "ha state"),
        other => tracing::info!(note = ?other, "ha"),
    }
}

fn snapshot_of(
    m: &Takeover,
    links_up: usize,
    links: usize,
    rtt: RttStats,
    heartbeat_misses: u64,
) -> HaSnapshot {
    HaSnapshot {
        state: m.state().code(),
        takeover_impossible: m.takeover_impossible(),
        hard_takeover_blockers: m.hard_takeover_blockers(),
        partner: m.partner_heartbeat(),
        interconnect_alive: m.interconnect_alive(),
        partner_mailbox_alive: m.partner_mailbox_alive(),
        links_up,
        links,
        rtt,
        serving: [m.serves(NodeId(0)), m.serves(NodeId(1))],
        mirror_mode: m.mirror_mode(),
        health: m.health(),
        auto_giveback_disabled: m.auto_giveback_disabled(),
        heartbeat_misses,
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ----- persisted state -----------------------------------------------------------------

fn read_persisted(path: &std::path::Path) -> Result<Persisted, String> {
    match std::fs::read(path) {
        Ok(bytes) => Persisted::decode(&bytes).map_err(|e| {
            format!(
                "{} is damaged ({e}); if this node is taken over by its partner, remove it only after the partner gave back",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Persisted::default()),
        Err(e) => Err(format!("read {}: {e}", path.display())),
    }
}

/// Writes a temporary file, syncs it, renames it over the old one and syncs the directory:
/// after a crash either the old or the new state is there, whole.
fn write_persisted(path: &std::path::Path, p: &Persisted) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&p.encode())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

// ----- identity workers ----------------------------------------------------------------

enum Job {
    Step(Step),
    Serve,
    StopServing,
}

/// Runs one identity's jobs in order on its own task.
struct IdentityWorker {
    tx: mpsc::Sender<Job>,
}

impl IdentityWorker {
    fn start(
        identity: Arc<tokio::sync::Mutex<Identity>>,
        events: mpsc::UnboundedSender<Input>,
        step_ms_max: u64,
    ) -> IdentityWorker {
        let (tx, mut rx) = mpsc::channel::<Job>(WORKER_QUEUE_MAX);
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let mut id = identity.lock().await;
                let event = match job {
                    Job::Serve => {
                        if let Err(e) = id.serve() {
                            tracing::error!(identity = %id.config.name, error = %e, "cannot serve");
                        } else {
                            tracing::info!(identity = %id.config.name, "serving");
                            id.after_first_serve();
                        }
                        None
                    }
                    Job::StopServing => {
                        id.stop_serving().await;
                        tracing::info!(identity = %id.config.name, "stopped serving");
                        None
                    }
                    Job::Step(step) => Some(run_step(&mut id, step, step_ms_max).await),
                };
                drop(id);
                if let Some(e) = event {
                    if events.send(Input::Event(e)).is_err() {
                        return;
                    }
                }
            }
        });
        IdentityWorker { tx }
    }

    fn send(&self, job: Job) {
        if self.tx.try_send(job).is_err() {
            tracing::error!("identity worker queue full or closed: a step was dropped");
        }
    }
}

async fn run_step(id: &mut Identity, step: Step, step_ms_max: u64) -> Event {
    let identity = id.id;
    let bound = Duration::from_millis(step_ms_max);
    let started = Instant::now();
    if step == Step::Drain {
        let (completed, left) = id.drain(bound).await;
        tracing::info!(identity = %id.config.name, completed, left, ms = started.elapsed().as_millis() as u64, "drained");
        return Event::Drained {
            identity,
            completed,
            kept: left,
        };
    }
    let work = async {
        match step {
            Step::FinalCp => id.final_cp().await.map(|_| ()),
            Step::ReleaseReservations => id.release_reservations().await,
            Step::AssertReservations => id.assert_reservations(false).await,
            Step::PreemptReservations => id.assert_reservations(true).await,
            Step::Mount => id.mount().await,
            Step::Replay => id.replay().await.map(|_| ()),
            Step::RaiseAddresses => id.raise_addresses().await.map_err(|e| e.to_string()),
            Step::ReleaseAddresses => id.release_addresses().await,
            Step::ProbeDisks => id.probe_disks(),
            Step::VerifyReservations => match id.verify_reservations() {
                true => Ok(()),
                false => Err("the reservation is no longer held".into()),
            },
            Step::Drain | Step::ResyncMirror => unreachable!("handled elsewhere"),
        }
    };
    let result = match tokio::time::timeout(bound, work).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "did not finish within step_ms_max = {step_ms_max} ms"
        )),
    };
    let ms = started.elapsed().as_millis() as u64;
    let ok = match result {
        Ok(()) => {
            tracing::info!(identity = %id.config.name, ?step, ms, "step done");
            true
        }
        Err(e) => {
            tracing::warn!(identity = %id.config.name, ?step, ms, error = %e, "step failed");
            false
        }
    };
    Event::Done { step, identity, ok }
}

// ----- mailbox -------------------------------------------------------------------------

enum MailboxJob {
    Write(MailboxRecord),
    Read(u64),
}

/// The disk heartbeat: writes our slot on our disks, reads the partner's slot on its disks,
/// on a thread of its own (O_DIRECT IO). Disks that cannot be opened yet (a first start
/// before the aggregate exists) are opened again at the next job.
struct MailboxWorker {
    tx: std::sync::mpsc::SyncSender<MailboxJob>,
}

/// Mailbox jobs queued at most (the machine issues one write and one read per interval).
const MAILBOX_QUEUE_MAX: usize = 64;

impl MailboxWorker {
    fn start(
        me: NodeId,
        configs: [NodeConfig; 2],
        events: mpsc::UnboundedSender<Input>,
    ) -> MailboxWorker {
        let (tx, rx) = std::sync::mpsc::sync_channel::<MailboxJob>(MAILBOX_QUEUE_MAX);
        let partner = NodeId(1 - me.0);
        std::thread::Builder::new()
            .name("mailbox".into())
            .spawn(move || {
                let mut own: Option<MailboxDisks> = None;
                let mut theirs: Option<MailboxDisks> = None;
                let open = |c: &NodeConfig| {
                    Identity::disk_paths(c)
                        .ok()
                        .and_then(|p| MailboxDisks::open(&p).ok())
                };
                while let Ok(job) = rx.recv() {
                    let event = match job {
                        MailboxJob::Write(record) => {
                            if own.is_none() {
                                own = open(&configs[usize::from(me.0)]);
                            }
                            let ok = own.as_mut().is_some_and(|d| d.write(me, &record).is_ok());
                            Event::OwnMailboxWritten {
                                counter: record.counter,
                                ok,
                            }
                        }
                        MailboxJob::Read(read_id) => {
                            if theirs.is_none() {
                                theirs = open(&configs[usize::from(partner.0)]);
                            }
                            Event::PartnerMailbox {
                                read_id,
                                record: theirs.as_ref().and_then(|d| d.read(partner)),
                            }
                        }
                    };
                    if events.send(Input::Event(event)).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn the mailbox thread");
        MailboxWorker { tx }
    }

    fn write(&self, record: MailboxRecord) {
        if let Err(e) = self.tx.try_send(MailboxJob::Write(record)) {
            tracing::warn!(error = %e, "a mailbox write was skipped (the disks are slow, or the mailbox thread ended)");
        }
    }

    fn read(&self, read_id: u64) {
        if let Err(e) = self.tx.try_send(MailboxJob::Read(read_id)) {
            tracing::warn!(error = %e, "a mailbox read was skipped (the disks are slow, or the mailbox thread ended)");
        }
    }
}
