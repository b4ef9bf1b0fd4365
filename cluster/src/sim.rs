//! A deterministic simulation of a pair: two takeover machines, a seeded network and clock,
//! a model of the shared disks (reservations, aggregate contents, mailboxes), NVRAM logs and
//! their mirrors, and clients whose writes are acknowledged only when logged and mirrored.
//!
//! One seed = one schedule of operator requests and faults (drops, delays, interconnect cuts
//! with the mailbox alive, crashes and restarts from persisted state, hung nodes, clock jumps,
//! slow drains, broken disk paths). Invariants are checked after every event:
//!
//! - **one owner**: at most one running node serves an aggregate while holding its reservation,
//!   and a node never starts serving an aggregate it does not hold; a node that lost it stops
//!   within a bound;
//! - **no acknowledged write lost**: whoever serves an aggregate has every acknowledged write;
//! - **graceful stays graceful**: a takeover whose victim is responsive never becomes forced;
//! - **bounded**: a takeover finishes or aborts within its bound;
//! - **cut is not death**: no takeover on heartbeat loss while the partner's mailbox is alive.
//!
//! After the faulty phase everything heals, and the pair must settle with every aggregate
//! served by exactly one node holding every acknowledged write.
//!
//! Nothing here uses OS randomness or time: a seed replays exactly.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};

use crate::config::TakeoverConfig;
use crate::mailbox::MailboxRecord;
use crate::persist::Persisted;
use crate::takeover::{
    Action, Event, MirrorMode, Mode, Note, OperatorRequest, Record, State, Step, Takeover,
};
use crate::time::Time;
use crate::wire::{self, Message};
use crate::NodeId;

/// A small deterministic generator (SplitMix64): the simulation's only source of chance.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        lo + self.next_u64() % (hi - lo + 1)
    }
    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// Knobs of a simulation run.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Simulated time with faults and operator requests.
    pub faulty_ms: u64,
    /// Simulated time after healing everything, before the final checks.
    pub settle_ms: u64,
    /// Events processed at most (a bound on the loop; exceeding it is a failure).
    pub events_max: u64,
    /// The machines' config (countdowns are drawn per request).
    pub takeover: TakeoverConfig,
    /// Interval of the driver's reservation re-check (self-fencing bound).
    pub reservation_check_ms: u64,
    /// Keep this many console records for the failure report.
    pub trace_records_max: usize,
    /// Break the acknowledgement rule on purpose (acknowledge writes that are neither mirrored
    /// nor covered by the `unmirrored` flag), to show the invariants catch it.
    pub sabotage_ack_unmirrored: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            faulty_ms: 30_000,
            settle_ms: 40_000,
            events_max: 2_000_000,
            takeover: TakeoverConfig {
                check_ms_max: 3_000,
                step_ms_max: 5_000,
                giveback_wait_ms_max: 10_000,
                ..TakeoverConfig::default()
            },
            reservation_check_ms: 500,
            trace_records_max: 80,
            sabotage_ack_unmirrored: false,
        }
    }
}

/// What a run did (for the summary of many seeds).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Events processed.
    pub events: u64,
    /// Writes acknowledged to clients.
    pub writes_acked: u64,
    /// Takeovers completed by mode: graceful, forced, hard, resume.
    pub takeovers: [u64; 4],
    /// Gives back completed.
    pub givebacks: u64,
    /// Takeovers aborted or refused.
    pub aborts: u64,
    /// Faults injected.
    pub faults: u64,
}

/// A broken invariant, with what is needed to replay it.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The seed.
    pub seed: u64,
    /// Simulated time of the failure (ms).
    pub at_ms: u64,
    /// What broke.
    pub what: String,
    /// The last console records and sim notes before it.
    pub trace: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {} at {} ms: {}", self.seed, self.at_ms, self.what)?;
        writeln!(
            f,
            "replay: TWINFILER_SIM_SEED={} cargo test -p cluster --test sim replay_seed -- --nocapture",
            self.seed
        )?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Runs one seed.
pub fn run(seed: u64, options: &SimOptions) -> Result<SimStats, Violation> {
    let mut world = World::new(seed, options.clone());
    world.run()
}

// ----- the world ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Ev {
    Tick(u8),
    Deliver {
        to: u8,
        frame: Vec<u8>,
    },
    Complete {
        node: u8,
        incarnation: u64,
        event: Event,
    },
    ReservationCheck(u8),
    Client(u8),
    Plan,
    Restart(u8),
    Resume(u8),
    HealLink,
    HealPath(u8),
    Cp(u8),
}

/// A scheduled event; ordered by time, then by scheduling order (ties replay exactly).
struct Queued {
    at_ms: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.seq) == (other.at_ms, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_ms, self.seq).cmp(&(other.at_ms, other.seq))
    }
}

#[derive(Clone, Debug, Default)]
struct Disk {
    holder: Option<u8>,
    /// Changes whenever the holder changes (like a SCSI PR generation).
    generation: u64,
    durable: BTreeSet<u64>,
    mailbox: Option<MailboxRecord>,
}

struct Node {
    machine: Option<Takeover>,
    incarnation: u64,
    persisted: Persisted,
    hung_until: Option<u64>,
    clock_offset_ms: i64,
    // NVRAM: survives crashes.
    log: [BTreeSet<u64>; 2],
    mirror: [BTreeSet<u64>; 2],
    // Volatile.
    applied: [Option<BTreeSet<u64>>; 2],
    /// Applied since the last CP (what the next CP writes), so a CP costs what changed.
    dirty: [Vec<u64>; 2],
    serving: [bool; 2],
    draining: [bool; 2],
    mirror_mode: MirrorMode,
    accepts_mirror: bool,
    disk_path_ok: bool,
    /// The reservation generation when this node took each aggregate's disks.
    held_generation: [Option<u64>; 2],
    served_unheld_since: [Option<u64>; 2],
    /// Times of the last successful mailbox writes (newest last, bounded).
    mailbox_writes_ms: Vec<u64>,
}

struct Attempt {
    start_ms: u64,
    fault_seq: u64,
    countdown_ms: u64,
    faulty: bool,
}

struct World {
    seed: u64,
    opt: SimOptions,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    nodes: [Node; 2],
    disks: [Disk; 2],
    link_cut: bool,
    drop_percent: u64,
    delay_ms_max: u64,
    next_write: u64,
    acked: [BTreeSet<u64>; 2],
    stats: SimStats,
    fault_seq: u64,
    last_fault_ms: Option<u64>,
    healing: bool,
    // per taker: the takeover attempt being measured
    attempts: [Option<Attempt>; 2],
    backward_jump_ms: u64,
    /// Recent lines for the failure report; formatted only when a run fails.
    trace: VecDeque<(u64, Line)>,
}

enum Line {
    Note(u8, Note),
    Text(String),
}

const SIM_TICK_MS: u64 = 100;
const CLIENT_INTERVAL_MS_MAX: u64 = 80;
const PLAN_INTERVAL_MS_MAX: u64 = 4_000;
const PERIODIC_CP_MS: u64 = 1_500;
const MAILBOX_WRITES_KEPT: usize = 32;
const FAULT_SHADOW_MS: u64 = 3_000;

impl World {
    fn new(seed: u64, opt: SimOptions) -> World {
        let mk = |_id: u8| Node {
            machine: None,
            incarnation: 0,
            persisted: Persisted::default(),
            hung_until: None,
            clock_offset_ms: 0,
            log: Default::default(),
            mirror: Default::default(),
            applied: [None, None],
            dirty: Default::default(),
            serving: [false; 2],
            draining: [false; 2],
            mirror_mode: MirrorMode::Mirrored,
            accepts_mirror: false,
            disk_path_ok: true,
            held_generation: [None; 2],
            served_unheld_since: [None; 2],
            mailbox_writes_ms: Vec::new(),
        };
        World {
            seed,
            rng: Rng::new(seed),
            opt,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: [mk(0), mk(1)],
            disks: Default::default(),
            link_cut: false,
            drop_percent: 0,
            delay_ms_max: 5,
            next_write: 1,
            acked: Default::default(),
            stats: SimStats::default(),
            fault_seq: 0,
            last_fault_ms: None,
            healing: false,
            attempts: [None, None],
            backward_jump_ms: 0,
            trace: VecDeque::new(),
        }
    }

    fn at(&mut self, delay_ms: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at_ms: self.now + delay_ms,
            seq: self.seq,
            ev,
        }));
    }

    fn fail(&self, what: String) -> Violation {
        Violation {
            seed: self.seed,
            at_ms: self.now,
            what,
            trace: self
                .trace
                .iter()
                .map(|(at, line)| match line {
                    Line::Note(n, note) => format!("{at:>7} node{n} {note:?}"),
                    Line::Text(text) => format!("{at:>7} {text}"),
                })
                .collect(),
        }
    }

    fn trace(&mut self, line: String) {
        self.trace_line(Line::Text(line));
    }

    fn trace_note(&mut self, n: u8, note: Note) {
        self.trace_line(Line::Note(n, note));
    }

    fn trace_line(&mut self, line: Line) {
        if self.trace.len() >= self.opt.trace_records_max {
            self.trace.pop_front();
        }
        self.trace.push_back((self.now, line));
    }

    fn run(&mut self) -> Result<SimStats, Violation> {
        for n in 0..2u8 {
            self.boot(n)?;
            self.at(u64::from(n) * 7, Ev::Tick(n));
            self.at(self.opt.reservation_check_ms, Ev::ReservationCheck(n));
            self.at(10, Ev::Client(n));
            self.at(PERIODIC_CP_MS, Ev::Cp(n));
        }
        self.at(2_000, Ev::Plan);
        let end_ms = self.opt.faulty_ms + self.opt.settle_ms;
        while let Some(Reverse(next)) = self.queue.pop() {
            if next.at_ms > end_ms {
                break;
            }
            let ev = next.ev;
            self.now = next.at_ms;
            if !self.healing && self.now >= self.opt.faulty_ms {
                self.heal();
            }
            self.stats.events += 1;
            if self.stats.events > self.opt.events_max {
                return Err(self.fail("events_max exceeded (runaway loop?)".into()));
            }
            self.step(ev)?;
            self.check_invariants()?;
        }
        self.check_settled()?;
        Ok(self.stats.clone())
    }

    // ----- machine plumbing ----------------------------------------------------------------

    fn local_now(&self, n: u8) -> Time {
        let node = &self.nodes[usize::from(n)];
        let t = i128::from(self.now) + i128::from(node.clock_offset_ms);
        Time::from_ms(u64::try_from(t.max(0)).unwrap_or(0))
    }

    fn running(&self, n: u8) -> bool {
        let node = &self.nodes[usize::from(n)];
        node.machine.is_some() && node.hung_until.is_none()
    }

    fn boot(&mut self, n: u8) -> Result<(), Violation> {
        let now = self.local_now(n);
        let node = &mut self.nodes[usize::from(n)];
        node.incarnation += 1;
        node.applied = [None, None];
        node.dirty = Default::default();
        node.held_generation = [None; 2];
        node.serving = [false; 2];
        node.draining = [false; 2];
        node.mirror_mode = MirrorMode::Mirrored;
        node.accepts_mirror = false;
        node.served_unheld_since = [None; 2];
        let mut m = Takeover::restore(self.opt.takeover.clone(), NodeId(n), node.persisted, now);
        let actions = m.start(now);
        node.machine = Some(m);
        self.trace(format!(
            "node{n} boots ({:?})",
            node_role(&self.nodes[usize::from(n)])
        ));
        self.perform(n, actions)
    }

    fn feed(&mut self, n: u8, event: Event) -> Result<(), Violation> {
        let now = self.local_now(n);
        let Some(machine) = self.nodes[usize::from(n)].machine.as_mut() else {
            return Ok(());
        };
        let before = machine.state();
        let actions = machine.on(now, event);
        let after = machine.state();
        self.track_attempt(n, before, after)?;
        self.perform(n, actions)
    }

    fn perform(&mut self, n: u8, actions: Vec<Action>) -> Result<(), Violation> {
        for action in actions {
            self.perform_one(n, action)?;
        }
        Ok(())
    }

    fn complete_after(&mut self, n: u8, delay_ms: u64, event: Event) {
        let incarnation = self.nodes[usize::from(n)].incarnation;
        self.at(
            delay_ms,
            Ev::Complete {
                node: n,
                incarnation,
                event,
            },
        );
    }

    fn perform_one(&mut self, n: u8, action: Action) -> Result<(), Violation> {
        let p = 1 - n;
        match action {
            Action::Send(message) => self.send(n, &message),
            Action::WriteMailbox(record) => {
                let ok = self.nodes[usize::from(n)].disk_path_ok
                    && self.disks[usize::from(n)].holder.is_none_or(|h| h == n);
                if ok {
                    self.disks[usize::from(n)].mailbox = Some(record);
                    let writes = &mut self.nodes[usize::from(n)].mailbox_writes_ms;
                    if writes.len() >= MAILBOX_WRITES_KEPT {
                        writes.remove(0);
                    }
                    writes.push(self.now);
                }
                let counter = record.counter;
                self.complete_after(n, 1, Event::OwnMailboxWritten { counter, ok });
            }
            Action::ReadPartnerMailbox { read_id } => {
                let record = if self.nodes[usize::from(n)].disk_path_ok {
                    self.disks[usize::from(p)].mailbox
                } else {
                    None
                };
                // Through the on-disk encoding, as the node will do it.
                let record = record.and_then(|r| MailboxRecord::decode(&r.encode()).ok());
                self.complete_after(n, 1, Event::PartnerMailbox { read_id, record });
            }
            Action::Start { step, identity } => self.start_step(n, step, identity.0),
            Action::Serve(identity) => {
                let x = identity.0;
                if self.disks[usize::from(x)].holder != Some(n) {
                    return Err(self.fail(format!(
                        "node{n} starts serving aggregate {x} without holding its reservation"
                    )));
                }
                let Some(applied) = self.nodes[usize::from(n)].applied[usize::from(x)].as_ref()
                else {
                    return Err(self.fail(format!("node{n} serves aggregate {x} unmounted")));
                };
                if let Some(lost) = self.acked[usize::from(x)].difference(applied).next() {
                    return Err(self.fail(format!(
                        "acknowledged write {lost} of aggregate {x} lost: node{n} serves without it"
                    )));
                }
                let node = &mut self.nodes[usize::from(n)];
                node.serving[usize::from(x)] = true;
                node.draining[usize::from(x)] = false;
                self.trace(format!("node{n} serves aggregate {x}"));
            }
            Action::StopServing(identity) => {
                let node = &mut self.nodes[usize::from(n)];
                node.serving[usize::from(identity.0)] = false;
                node.served_unheld_since[usize::from(identity.0)] = None;
                self.trace(format!("node{n} stops serving aggregate {}", identity.0));
            }
            Action::SetMirrorMode(mode) => self.nodes[usize::from(n)].mirror_mode = mode,
            Action::AcceptPartnerMirror(accept) => {
                self.nodes[usize::from(n)].accepts_mirror = accept
            }
            Action::Persist(p) => self.nodes[usize::from(n)].persisted = p,
            Action::Record(record) => self.on_record(n, record)?,
        }
        Ok(())
    }

    fn on_record(&mut self, n: u8, record: Record) -> Result<(), Violation> {
        match record.note {
            Note::TakeoverStarted { mode, .. } => {
                self.trace_note(n, record.note);
                match mode {
                    Mode::Forced => self.check_forced(n)?,
                    Mode::Hard => self.check_hard(n)?,
                    _ => {}
                }
            }
            Note::Aborted(_) => {
                self.stats.aborts += 1;
                self.trace_note(n, record.note);
            }
            Note::GivebackComplete(_) if self.nodes[usize::from(n)].serving[usize::from(n)] => {
                self.stats.givebacks += 1;
                self.trace_note(n, record.note);
            }
            Note::Sent("PLEASE_DIE") | Note::Received("PLEASE_DIE") | Note::StepDone(..) => {}
            other => self.trace_note(n, other),
        }
        Ok(())
    }

    // ----- the network ---------------------------------------------------------------------

    fn send(&mut self, from: u8, message: &Message) {
        if self.link_cut || self.rng.chance(self.drop_percent) {
            return;
        }
        let frame = wire::encode(NodeId(from), message);
        let delay = self.rng.range(0, self.delay_ms_max);
        self.at(
            delay,
            Ev::Deliver {
                to: 1 - from,
                frame,
            },
        );
    }

    fn deliver(&mut self, to: u8, frame: Vec<u8>) -> Result<(), Violation> {
        if self.link_cut {
            return Ok(());
        }
        let node = &self.nodes[usize::from(to)];
        if node.machine.is_none() {
            return Ok(());
        }
        if let Some(until) = node.hung_until {
            // A hung process's socket buffers the frame; it reads it when it runs again.
            self.at(
                until.saturating_sub(self.now) + 1,
                Ev::Deliver { to, frame },
            );
            return Ok(());
        }
        match wire::decode(&frame) {
            Ok((from, message)) if from.0 == 1 - to => self.feed(to, Event::Received(message)),
            Ok(_) => Err(self.fail("frame from the wrong sender".into())),
            Err(e) => Err(self.fail(format!("decode failed on a well-formed frame: {e}"))),
        }
    }

    // ----- local steps ---------------------------------------------------------------------

    fn start_step(&mut self, n: u8, step: Step, x: u8) {
        let delay = match step {
            Step::Drain => {
                if !self.healing && self.rng.chance(10) {
                    self.fault("slow drain");
                    self.rng.range(3_000, 12_000)
                } else {
                    self.rng.range(10, 500)
                }
            }
            Step::FinalCp => self.rng.range(10, 300),
            Step::Mount | Step::Replay => self.rng.range(10, 200),
            Step::ResyncMirror => self.rng.range(5, 100),
            _ => self.rng.range(1, 50),
        };
        if step == Step::Drain {
            self.nodes[usize::from(n)].draining[usize::from(x)] = true;
        }
        let event = Event::Done {
            step,
            identity: NodeId(x),
            ok: true,
        };
        self.complete_after(n, delay, event);
    }

    /// Computes a step's outcome when it completes (the disks' state at that moment).
    fn finish_step(&mut self, n: u8, step: Step, x: u8) -> Event {
        let identity = NodeId(x);
        let xi = usize::from(x);
        let ni = usize::from(n);
        let path = self.nodes[ni].disk_path_ok;
        let holder = self.disks[xi].holder;
        let ok = match step {
            Step::Drain => {
                let completed = u32::try_from(self.rng.range(0, 20)).unwrap_or(0);
                let kept = u32::try_from(self.rng.range(0, 3)).unwrap_or(0);
                return Event::Drained {
                    identity,
                    completed,
                    kept,
                };
            }
            Step::FinalCp => {
                let ok = path && holder == Some(n);
                if ok {
                    let dirty = std::mem::take(&mut self.nodes[ni].dirty[xi]);
                    self.disks[xi].durable.extend(dirty);
                }
                ok
            }
            Step::ReleaseReservations => {
                if path && holder == Some(n) {
                    self.set_holder(xi, None);
                }
                path
            }
            Step::AssertReservations => {
                let ok = path && holder.is_none_or(|h| h == n);
                if ok {
                    if holder != Some(n) {
                        self.set_holder(xi, Some(n));
                    }
                    let generation = self.disks[xi].generation;
                    let held = &mut self.nodes[ni].held_generation[xi];
                    if holder != Some(n) || held.is_none() {
                        *held = Some(generation);
                    }
                }
                ok
            }
            Step::PreemptReservations => {
                if path {
                    self.set_holder(xi, Some(n));
                    self.nodes[ni].held_generation[xi] = Some(self.disks[xi].generation);
                    self.trace(format!("node{n} preempts aggregate {x} (fencing)"));
                }
                path
            }
            Step::VerifyReservations => {
                path && holder == Some(n)
                    && self.nodes[ni].held_generation[xi] == Some(self.disks[xi].generation)
            }
            Step::Mount => {
                let ok = path && holder == Some(n);
                if ok {
                    self.nodes[ni].applied[xi] = Some(self.disks[xi].durable.clone());
                    self.nodes[ni].dirty[xi].clear();
                }
                ok
            }
            Step::Replay => {
                let node = &mut self.nodes[ni];
                let ok = path && holder == Some(n) && node.applied[xi].is_some();
                if ok {
                    let records: Vec<u64> = node.log[xi]
                        .iter()
                        .chain(node.mirror[xi].iter())
                        .copied()
                        .collect();
                    if let Some(applied) = node.applied[xi].as_mut() {
                        applied.extend(records.iter().copied());
                    }
                    node.dirty[xi].extend(records);
                }
                ok
            }
            Step::RaiseAddresses | Step::ReleaseAddresses => true,
            Step::ProbeDisks => path,
            Step::ResyncMirror => {
                let p = 1 - n;
                let ok =
                    !self.link_cut && self.running(p) && self.nodes[usize::from(p)].accepts_mirror;
                if ok {
                    let log = self.nodes[ni].log[ni].clone();
                    self.nodes[usize::from(p)].mirror[ni].extend(log);
                }
                ok
            }
        };
        Event::Done { step, identity, ok }
    }

    fn set_holder(&mut self, x: usize, holder: Option<u8>) {
        self.disks[x].holder = holder;
        self.disks[x].generation += 1;
    }

    // ----- clients -------------------------------------------------------------------------

    fn client_write(&mut self, x: u8) -> Result<(), Violation> {
        let xi = usize::from(x);
        let candidates: Vec<u8> = (0..2u8)
            .filter(|&n| {
                let node = &self.nodes[usize::from(n)];
                self.running(n) && node.serving[xi] && !node.draining[xi]
            })
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let n = candidates
            [usize::try_from(self.rng.range(0, candidates.len() as u64 - 1)).unwrap_or(0)];
        let ni = usize::from(n);
        let p = 1 - n;
        let w = self.next_write;
        self.next_write += 1;
        self.nodes[ni].log[xi].insert(w);
        if let Some(applied) = self.nodes[ni].applied[xi].as_mut() {
            applied.insert(w);
            self.nodes[ni].dirty[xi].push(w);
        }
        let mirrored = !self.link_cut
            && self.running(p)
            && self.nodes[usize::from(p)].accepts_mirror
            && !self.rng.chance(self.drop_percent);
        if mirrored {
            self.nodes[usize::from(p)].mirror[xi].insert(w);
        }
        let degraded = self.nodes[ni].mirror_mode == MirrorMode::Degraded;
        if degraded || mirrored || self.opt.sabotage_ack_unmirrored {
            // The write is acknowledged: it must never be lost from now on.
            for m in 0..2u8 {
                let holder_serves = self.disks[xi].holder == Some(m)
                    && self.nodes[usize::from(m)].serving[xi]
                    && self.running(m);
                if holder_serves && m != n {
                    return Err(self.fail(format!(
                        "node{n} acknowledged write {w} of aggregate {x} while node{m} owns it"
                    )));
                }
            }
            self.acked[xi].insert(w);
            self.stats.writes_acked += 1;
        }
        Ok(())
    }

    fn periodic_cp(&mut self, n: u8) {
        let ni = usize::from(n);
        for x in 0..2usize {
            let node = &self.nodes[ni];
            if self.running(n)
                && node.serving[x]
                && node.disk_path_ok
                && self.disks[x].holder == Some(n)
            {
                let dirty = std::mem::take(&mut self.nodes[ni].dirty[x]);
                self.disks[x].durable.extend(dirty);
            }
        }
    }

    // ----- the schedule: operator requests and faults ---------------------------------------

    fn fault(&mut self, what: &str) {
        self.fault_seq += 1;
        self.last_fault_ms = Some(self.now);
        self.stats.faults += 1;
        self.trace(format!("FAULT {what}"));
        for a in self.attempts.iter_mut().flatten() {
            a.faulty = true;
        }
    }

    // One arm per kind of disturbance: guards would shift the draw to the next kind.
    #[allow(clippy::collapsible_match)]
    fn plan(&mut self) -> Result<(), Violation> {
        if self.healing {
            return Ok(());
        }
        let roll = self.rng.range(0, 99);
        let n = u8::try_from(self.rng.range(0, 1)).unwrap_or(0);
        match roll {
            0..=29 => {
                let of = u8::try_from(self.rng.range(0, 1)).unwrap_or(0);
                let countdown_ms =
                    [2_000, 5_000, 30_000][usize::try_from(self.rng.range(0, 2)).unwrap_or(0)];
                let request = OperatorRequest::Takeover {
                    of: NodeId(of),
                    countdown_ms: Some(countdown_ms),
                    immediate: self.rng.chance(10),
                    check_only: self.rng.chance(10),
                };
                self.trace(format!("operator at node{n}: {request:?}"));
                if self.running(n) {
                    self.feed(n, Event::Operator(request))?;
                }
            }
            30..=49 => {
                let request = OperatorRequest::Giveback { to: NodeId(1 - n) };
                self.trace(format!("operator at node{n}: {request:?}"));
                if self.running(n) {
                    self.feed(n, Event::Operator(request))?;
                }
            }
            50..=57 => {
                if self.nodes[usize::from(n)].machine.is_some() {
                    self.fault(&format!("crash node{n}"));
                    self.crash(n);
                    let delay = self.rng.range(500, 15_000);
                    self.at(delay, Ev::Restart(n));
                }
            }
            58..=65 => {
                if self.running(n) {
                    let ms = self.rng.range(300, 6_000);
                    self.fault(&format!("hang node{n} for {ms} ms"));
                    self.nodes[usize::from(n)].hung_until = Some(self.now + ms);
                    self.at(ms, Ev::Resume(n));
                }
            }
            66..=75 => {
                if !self.link_cut {
                    let ms = self.rng.range(300, 8_000);
                    self.fault(&format!("interconnect cut for {ms} ms (mailboxes alive)"));
                    self.link_cut = true;
                    self.at(ms, Ev::HealLink);
                }
            }
            76..=81 => {
                self.drop_percent = self.rng.range(0, 30);
                self.delay_ms_max = self.rng.range(1, 80);
                self.trace(format!(
                    "network: drop {}%, delay <= {} ms",
                    self.drop_percent, self.delay_ms_max
                ));
            }
            82..=86 => {
                if self.nodes[usize::from(n)].disk_path_ok {
                    let ms = self.rng.range(300, 5_000);
                    self.fault(&format!("disk path of node{n} broken for {ms} ms"));
                    self.nodes[usize::from(n)].disk_path_ok = false;
                    self.at(ms, Ev::HealPath(n));
                }
            }
            87..=91 => {
                let jump = i64::try_from(self.rng.range(0, 20_000)).unwrap_or(0) - 5_000;
                self.fault(&format!("clock of node{n} jumps {jump} ms"));
                if jump < 0 {
                    self.backward_jump_ms += jump.unsigned_abs();
                }
                self.nodes[usize::from(n)].clock_offset_ms += jump;
            }
            _ => {}
        }
        let next = self.rng.range(200, PLAN_INTERVAL_MS_MAX);
        self.at(next, Ev::Plan);
        Ok(())
    }

    fn crash(&mut self, n: u8) {
        let node = &mut self.nodes[usize::from(n)];
        node.machine = None;
        node.hung_until = None;
        node.applied = [None, None];
        node.dirty = Default::default();
        node.held_generation = [None; 2];
        node.serving = [false; 2];
        node.draining = [false; 2];
        node.accepts_mirror = false;
        node.served_unheld_since = [None; 2];
        self.attempts[usize::from(n)] = None;
    }

    fn heal(&mut self) {
        self.healing = true;
        self.trace("HEAL: no more faults".into());
        self.link_cut = false;
        self.drop_percent = 0;
        self.delay_ms_max = 5;
        // Hung nodes resume and crashed nodes restart on their own schedule (both bounded).
        for node in &mut self.nodes {
            node.disk_path_ok = true;
        }
        // Let an operator give back whatever is still taken over, a bit later.
        self.at(5_000, Ev::Plan);
    }

    fn settle_giveback(&mut self) -> Result<(), Violation> {
        for n in 0..2u8 {
            let in_takeover = self.nodes[usize::from(n)]
                .machine
                .as_ref()
                .is_some_and(|m| matches!(m.state(), State::InTakeover { .. }));
            if in_takeover && self.running(n) {
                self.trace(format!("operator at node{n}: giveback (settle)"));
                self.feed(
                    n,
                    Event::Operator(OperatorRequest::Giveback { to: NodeId(1 - n) }),
                )?;
            }
        }
        Ok(())
    }

    // ----- dispatch ------------------------------------------------------------------------

    fn step(&mut self, ev: Ev) -> Result<(), Violation> {
        match ev {
            Ev::Tick(n) => {
                self.at(SIM_TICK_MS, Ev::Tick(n));
                if self.running(n) {
                    self.feed(n, Event::Tick)?;
                }
            }
            Ev::Deliver { to, frame } => self.deliver(to, frame)?,
            Ev::Complete {
                node,
                incarnation,
                event,
            } => {
                let nd = &self.nodes[usize::from(node)];
                if nd.incarnation != incarnation || nd.machine.is_none() {
                    return Ok(());
                }
                if let Some(until) = nd.hung_until {
                    let delay = until.saturating_sub(self.now) + 1;
                    self.at(
                        delay,
                        Ev::Complete {
                            node,
                            incarnation,
                            event,
                        },
                    );
                    return Ok(());
                }
                let event = match event {
                    Event::Done { step, identity, .. } => self.finish_step(node, step, identity.0),
                    other => other,
                };
                self.feed(node, event)?;
            }
            Ev::ReservationCheck(n) => {
                self.at(self.opt.reservation_check_ms, Ev::ReservationCheck(n));
                if self.running(n) && self.nodes[usize::from(n)].disk_path_ok {
                    for x in 0..2u8 {
                        let node = &self.nodes[usize::from(n)];
                        if node.serving[usize::from(x)]
                            && self.disks[usize::from(x)].holder != Some(n)
                        {
                            self.feed(n, Event::ReservationLost(NodeId(x)))?;
                        }
                    }
                }
            }
            Ev::Client(x) => {
                let next = self.rng.range(5, CLIENT_INTERVAL_MS_MAX);
                self.at(next, Ev::Client(x));
                self.client_write(x)?;
            }
            Ev::Plan => {
                if self.healing {
                    self.settle_giveback()?;
                    if self.now + 10_000 < self.opt.faulty_ms + self.opt.settle_ms {
                        self.at(10_000, Ev::Plan);
                    }
                } else {
                    self.plan()?;
                }
            }
            Ev::Restart(n) => {
                if self.nodes[usize::from(n)].machine.is_none() {
                    self.boot(n)?;
                }
            }
            Ev::Resume(n) => {
                self.nodes[usize::from(n)].hung_until = None;
                self.trace(format!("node{n} resumes"));
            }
            Ev::HealLink => {
                self.link_cut = false;
                self.trace("interconnect restored".into());
            }
            Ev::HealPath(n) => self.nodes[usize::from(n)].disk_path_ok = true,
            Ev::Cp(n) => {
                self.at(PERIODIC_CP_MS, Ev::Cp(n));
                self.periodic_cp(n);
            }
        }
        Ok(())
    }

    // ----- invariants ----------------------------------------------------------------------

    fn track_attempt(&mut self, n: u8, before: State, after: State) -> Result<(), Violation> {
        let ni = usize::from(n);
        let started = !matches!(
            before,
            State::TakeoverCheck { .. }
                | State::WaitingForShutdown { .. }
                | State::TakingOver { .. }
        ) && matches!(
            after,
            State::TakeoverCheck { .. } | State::TakingOver { .. }
        );
        if started {
            // A fault shortly before the attempt still disturbs it (e.g. a node whose clock
            // jumped is still catching up, a drop burst is still being retransmitted).
            let recent_fault = self
                .last_fault_ms
                .is_some_and(|t| self.now.saturating_sub(t) < FAULT_SHADOW_MS);
            self.attempts[ni] = Some(Attempt {
                start_ms: self.now,
                fault_seq: self.fault_seq,
                countdown_ms: 0,
                faulty: recent_fault,
            });
        }
        if let State::WaitingForShutdown { attempt, .. } = after {
            if let Some(a) = self.attempts[ni].as_mut() {
                a.countdown_ms = attempt.countdown_ms;
            }
        }
        let ended = matches!(after, State::Normal | State::InTakeover { .. })
            || matches!(after, State::WaitingForGiveback { .. });
        if ended {
            if let State::InTakeover { .. } = after {
                if let State::TakingOver { mode, .. } = before {
                    let i = match mode {
                        Mode::Graceful => 0,
                        Mode::Forced => 1,
                        Mode::Hard => 2,
                        Mode::Resume | Mode::Recover => 3,
                    };
                    self.stats.takeovers[i] += 1;
                }
            }
            self.attempts[ni] = None;
        }
        Ok(())
    }

    fn check_forced(&mut self, n: u8) -> Result<(), Violation> {
        let immediate = self.nodes[usize::from(n)]
            .machine
            .as_ref()
            .is_some_and(|m| matches!(m.state(), State::TakingOver { .. }))
            && self.attempts[usize::from(n)]
                .as_ref()
                .is_some_and(|a| a.countdown_ms == 0);
        if immediate {
            return Ok(()); // --immediate asks for it
        }
        if let Some(a) = &self.attempts[usize::from(n)] {
            let responsive = !a.faulty && a.fault_seq == self.fault_seq;
            if responsive {
                return Err(self.fail(format!(
                    "graceful takeover by node{n} (countdown {} ms) became forced with a responsive victim",
                    a.countdown_ms
                )));
            }
        }
        Ok(())
    }

    fn check_hard(&mut self, n: u8) -> Result<(), Violation> {
        let p = 1 - n;
        let loss_ms = self.opt.takeover.heartbeat_loss_ms;
        let partner = &self.nodes[usize::from(p)];
        // A write the taker must already have read (older than two read intervals) and newer
        // than half the loss bound means the mailbox was alive when the taker decided.
        let read_lag_ms = 2 * self.opt.takeover.heartbeat_interval_ms;
        let now = self.now;
        let mailbox_alive = self.running(p)
            && partner.mailbox_writes_ms.iter().any(|&t| {
                let age = now.saturating_sub(t);
                age < loss_ms / 2 && age >= read_lag_ms
            });
        if mailbox_alive {
            return Err(self.fail(format!(
                "node{n} started a hard takeover while node{p}'s mailbox is alive"
            )));
        }
        Ok(())
    }

    fn check_invariants(&mut self) -> Result<(), Violation> {
        for x in 0..2u8 {
            let xi = usize::from(x);
            let owners = (0..2u8)
                .filter(|&n| {
                    self.running(n)
                        && self.nodes[usize::from(n)].serving[xi]
                        && self.disks[xi].holder == Some(n)
                })
                .count();
            if owners > 1 {
                return Err(self.fail(format!("aggregate {x} has {owners} owners")));
            }
            // Self-fencing bound: a running node serving without the reservation stops soon.
            let bound_ms = 2 * self.opt.reservation_check_ms + 100;
            for n in 0..2u8 {
                let ni = usize::from(n);
                let unheld = self.running(n)
                    && self.nodes[ni].serving[xi]
                    && self.disks[xi].holder != Some(n)
                    && self.nodes[ni].disk_path_ok;
                match (unheld, self.nodes[ni].served_unheld_since[xi]) {
                    (true, None) => self.nodes[ni].served_unheld_since[xi] = Some(self.now),
                    (true, Some(since)) if self.now - since > bound_ms => {
                        return Err(self.fail(format!(
                            "node{n} still serves aggregate {x} {} ms after losing its reservation",
                            self.now - since
                        )));
                    }
                    (false, Some(_)) => self.nodes[ni].served_unheld_since[xi] = None,
                    _ => {}
                }
            }
        }
        // Bounded takeover.
        let cfg = &self.opt.takeover;
        for n in 0..2usize {
            if let Some(a) = &self.attempts[n] {
                let bound_ms = cfg.check_ms_max
                    + a.countdown_ms
                    + cfg.address_handoff_ms
                    + 5_000
                    + self.backward_jump_ms;
                let elapsed = self.now - a.start_ms;
                if !a.faulty && elapsed > bound_ms && self.nodes[n].hung_until.is_none() {
                    return Err(self.fail(format!(
                        "takeover by node{n} neither finished nor aborted within {bound_ms} ms"
                    )));
                }
            }
        }
        Ok(())
    }

    fn check_settled(&mut self) -> Result<(), Violation> {
        for x in 0..2u8 {
            let xi = usize::from(x);
            let servers: Vec<u8> = (0..2u8)
                .filter(|&n| self.running(n) && self.nodes[usize::from(n)].serving[xi])
                .collect();
            if servers.len() != 1 {
                return Err(self.fail(format!(
                    "after settling, aggregate {x} is served by {} nodes (states: {:?} / {:?})",
                    servers.len(),
                    self.nodes[0].machine.as_ref().map(|m| m.state()),
                    self.nodes[1].machine.as_ref().map(|m| m.state()),
                )));
            }
            let n = servers[0];
            if self.disks[xi].holder != Some(n) {
                return Err(self.fail(format!("after settling, node{n} serves {x} unheld")));
            }
            let applied = self.nodes[usize::from(n)].applied[xi]
                .as_ref()
                .expect("a serving node has its aggregate mounted");
            if let Some(lost) = self.acked[xi].difference(applied).next() {
                return Err(self.fail(format!("acknowledged write {lost} of aggregate {x} lost")));
            }
        }
        Ok(())
    }
}

fn node_role(node: &Node) -> crate::persist::Role {
    node.persisted.role
}
