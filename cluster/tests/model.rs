//! Exhaustive model check (stateright) of two takeover machines, the shared disks'
//! reservations, the mailboxes and the interconnect, for small bounds.
//!
//! Each model starts from a pair that booted and serves its own identities, then explores
//! every interleaving up to a depth bound of: one operator request, message deliveries (and,
//! in the lossy models, drops), local step completions, and clock ticks of either node (a node
//! that does not tick while the other does is a hung node; its mailbox goes silent).
//!
//! Properties:
//! - a node starts serving an aggregate only while holding its reservation;
//! - at most one node serves an aggregate unless it was fenced (preempted) — a fenced node is
//!   the one the reservation already keeps off the disks;
//! - (fair models: the victim answers before time passes) a graceful takeover never becomes
//!   forced, and it does complete (reachability).

use std::collections::{BTreeSet, VecDeque};

use cluster::mailbox::MailboxRecord;
use cluster::takeover::{Action, Event, Mode, Note, OperatorRequest, State, Step};
use cluster::wire::{self, Message};
use cluster::{NodeId, Takeover, TakeoverConfig, Time};
use stateright::{Checker, Model, Property};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Pair {
    m: [Takeover; 2],
    clock_ms: [u64; 2],
    /// The newest heartbeat in flight to each node (a newer one replaces it).
    hb: [Option<Vec<u8>>; 2],
    /// Other frames in flight: (to, frame). A set: resends of the same frame merge.
    net: BTreeSet<(u8, Vec<u8>)>,
    /// Local steps started, per node, completed in order.
    pending: [Vec<Event>; 2],
    holder: [Option<u8>; 2],
    mailbox: [Option<MailboxRecord>; 2],
    /// `fenced[n][x]`: node n's reservation on aggregate x was preempted.
    fenced: [[bool; 2]; 2],
    forced: bool,
    bad: Option<String>,
    asked: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Act {
    Operator,
    Tick(u8),
    DeliverHeartbeat(u8),
    DropHeartbeat(u8),
    Deliver(u8, Vec<u8>),
    Drop(u8, Vec<u8>),
    Complete(u8),
}

struct PairModel {
    cfg: TakeoverConfig,
    request_at: u8,
    request: OperatorRequest,
    lossy: bool,
    /// Time passes only when no message or local step is outstanding: the victim is
    /// responsive by construction.
    fair_time: bool,
    taker: u8,
}

fn small_config() -> TakeoverConfig {
    TakeoverConfig {
        heartbeat_interval_ms: 100,
        heartbeat_loss_ms: 300,
        countdown_ms: 400,
        countdown_ms_max: 400,
        check_ms_max: 1_000,
        step_ms_max: 1_000,
        address_handoff_ms: 300,
        please_die_interval_ms: 1_000,
        disk_probe_interval_ms: 100_000,
        boot_listen_ms: 200,
        giveback_wait_ms_max: 1_000,
        ..TakeoverConfig::default()
    }
}

impl Pair {
    fn feed(&mut self, n: u8, event: Event) {
        let mut queue = VecDeque::from([(n, event)]);
        // Mailbox writes and reads answer at once; bounded because each answer produces no
        // further mailbox action except one flag write.
        let mut rounds = 0;
        while let Some((n, event)) = queue.pop_front() {
            rounds += 1;
            assert!(rounds < 64, "runaway feed loop");
            let now = Time::from_ms(self.clock_ms[usize::from(n)]);
            let actions = self.m[usize::from(n)].on(now, event);
            for action in actions {
                if let Some(next) = self.perform(n, action) {
                    queue.push_back((n, next));
                }
            }
        }
    }

    fn perform(&mut self, n: u8, action: Action) -> Option<Event> {
        let p = 1 - n;
        match action {
            Action::Send(message) => {
                let frame = wire::encode(NodeId(n), &message);
                if let Message::Heartbeat(_) = message {
                    self.hb[usize::from(p)] = Some(frame);
                } else {
                    self.net.insert((p, frame));
                }
                None
            }
            Action::WriteMailbox(record) => {
                let ok = self.holder[usize::from(n)].is_none_or(|h| h == n);
                if ok {
                    self.mailbox[usize::from(n)] = Some(record);
                }
                Some(Event::OwnMailboxWritten {
                    counter: record.counter,
                    ok,
                })
            }
            Action::ReadPartnerMailbox { read_id } => Some(Event::PartnerMailbox {
                read_id,
                record: self.mailbox[usize::from(p)],
            }),
            Action::Start { step, identity } => {
                self.pending[usize::from(n)].push(Event::Done {
                    step,
                    identity,
                    ok: true,
                });
                None
            }
            Action::Serve(identity) => {
                if self.holder[usize::from(identity.0)] != Some(n) {
                    self.bad = Some(format!("node{n} serves {} unheld", identity.0));
                }
                None
            }
            Action::Record(record) => {
                if let Note::TakeoverStarted {
                    mode: Mode::Forced, ..
                } = record.note
                {
                    self.forced = true;
                }
                None
            }
            _ => None,
        }
    }

    fn complete(&mut self, n: u8) {
        if self.pending[usize::from(n)].is_empty() {
            return;
        }
        let Event::Done { step, identity, .. } = self.pending[usize::from(n)].remove(0) else {
            return;
        };
        let x = usize::from(identity.0);
        let holder = self.holder[x];
        let event = match step {
            Step::Drain => Event::Drained {
                identity,
                completed: 1,
                kept: 0,
            },
            _ => {
                let ok = match step {
                    Step::AssertReservations => {
                        let ok = holder.is_none_or(|h| h == n);
                        if ok {
                            self.holder[x] = Some(n);
                            self.fenced[usize::from(n)][x] = false;
                        }
                        ok
                    }
                    Step::PreemptReservations => {
                        if let Some(h) = holder.filter(|&h| h != n) {
                            self.fenced[usize::from(h)][x] = true;
                        }
                        self.holder[x] = Some(n);
                        self.fenced[usize::from(n)][x] = false;
                        true
                    }
                    Step::ReleaseReservations => {
                        if holder == Some(n) {
                            self.holder[x] = None;
                        }
                        true
                    }
                    Step::FinalCp | Step::Mount | Step::Replay | Step::VerifyReservations => {
                        holder == Some(n)
                    }
                    _ => true,
                };
                Event::Done { step, identity, ok }
            }
        };
        self.feed(n, event);
    }

    fn quiet(&self) -> bool {
        self.net.is_empty() && self.pending.iter().all(|p| p.is_empty())
    }

    fn deliver(&mut self, to: u8, frame: &[u8]) {
        if let Ok((_, message)) = wire::decode(frame) {
            self.feed(to, Event::Received(message));
        }
    }

    fn tick(&mut self, n: u8, cfg: &TakeoverConfig) {
        self.clock_ms[usize::from(n)] += cfg.heartbeat_interval_ms;
        self.feed(n, Event::Tick);
    }
}

/// Boots both nodes over a perfect network until both serve their own identity.
fn booted_pair(cfg: &TakeoverConfig) -> Pair {
    let mut pair = Pair {
        m: [
            Takeover::new(cfg.clone(), NodeId(0), Time::ZERO),
            Takeover::new(cfg.clone(), NodeId(1), Time::ZERO),
        ],
        clock_ms: [0, 0],
        hb: [None, None],
        net: BTreeSet::new(),
        pending: [Vec::new(), Vec::new()],
        holder: [None, None],
        mailbox: [None, None],
        fenced: [[false; 2]; 2],
        forced: false,
        bad: None,
        asked: false,
    };
    for n in 0..2u8 {
        let actions = pair.m[usize::from(n)].start(Time::ZERO);
        for a in actions {
            if let Some(e) = pair.perform(n, a) {
                pair.feed(n, e);
            }
        }
    }
    for _ in 0..200 {
        for n in 0..2u8 {
            pair.tick(n, cfg);
            for to in 0..2u8 {
                if let Some(frame) = pair.hb[usize::from(to)].take() {
                    pair.deliver(to, &frame);
                }
            }
            while let Some((to, frame)) = pair.net.pop_first() {
                pair.deliver(to, &frame);
            }
            for k in 0..2u8 {
                while !pair.pending[usize::from(k)].is_empty() {
                    pair.complete(k);
                }
            }
        }
        let ready = (0..2u8).all(|n| {
            let m = &pair.m[usize::from(n)];
            m.state() == State::Normal
                && m.serves(NodeId(n))
                && m.takeover_impossible()
                    .iter()
                    .all(|r| r == cluster::takeover::Reason::Busy)
        });
        if ready && pair.quiet() {
            pair.hb = [None, None];
            return pair;
        }
    }
    panic!(
        "the pair did not boot: {:?} / {:?}",
        pair.m[0].state(),
        pair.m[1].state()
    );
}

impl Model for PairModel {
    type State = Pair;
    type Action = Act;

    fn init_states(&self) -> Vec<Pair> {
        vec![booted_pair(&self.cfg)]
    }

    fn actions(&self, s: &Pair, actions: &mut Vec<Act>) {
        if !s.asked {
            actions.push(Act::Operator);
        }
        if !self.fair_time || s.quiet() {
            actions.push(Act::Tick(0));
            actions.push(Act::Tick(1));
        }
        for n in 0..2u8 {
            if s.hb[usize::from(n)].is_some() {
                actions.push(Act::DeliverHeartbeat(n));
                if self.lossy {
                    actions.push(Act::DropHeartbeat(n));
                }
            }
            if !s.pending[usize::from(n)].is_empty() {
                actions.push(Act::Complete(n));
            }
        }
        for (to, frame) in &s.net {
            actions.push(Act::Deliver(*to, frame.clone()));
            if self.lossy {
                actions.push(Act::Drop(*to, frame.clone()));
            }
        }
    }

    fn next_state(&self, last: &Pair, action: Act) -> Option<Pair> {
        let mut s = last.clone();
        match action {
            Act::Operator => {
                s.asked = true;
                s.feed(self.request_at, Event::Operator(self.request));
            }
            Act::Tick(n) => s.tick(n, &self.cfg),
            Act::DeliverHeartbeat(n) => {
                if let Some(frame) = s.hb[usize::from(n)].take() {
                    s.deliver(n, &frame);
                }
            }
            Act::DropHeartbeat(n) => s.hb[usize::from(n)] = None,
            Act::Deliver(to, frame) => {
                s.net.remove(&(to, frame.clone()));
                s.deliver(to, &frame);
            }
            Act::Drop(to, frame) => {
                s.net.remove(&(to, frame));
            }
            Act::Complete(n) => s.complete(n),
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "serves only while holding the reservation",
                |_, s: &Pair| s.bad.is_none(),
            ),
            Property::always("one owner per aggregate", |_, s: &Pair| {
                (0..2usize).all(|x| {
                    let owners: Vec<usize> = (0..2usize)
                        .filter(|&n| s.m[n].serves(NodeId(x as u8)) && !s.fenced[n][x])
                        .collect();
                    owners.len() <= 1 && owners.iter().all(|&n| s.holder[x] == Some(n as u8))
                })
            }),
            Property::always(
                "graceful with a responsive victim never forced",
                |m: &PairModel, s: &Pair| !(m.fair_time && s.forced),
            ),
            Property::sometimes("the takeover completes", |m: &PairModel, s: &Pair| {
                matches!(s.m[usize::from(m.taker)].state(), State::InTakeover { .. })
            }),
        ]
    }
}

fn check(model: PairModel, depth: usize) {
    let depth = std::env::var("TWINFILER_MODEL_DEPTH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(depth);
    let name = format!(
        "request at node{} {:?}, lossy {}, fair {}",
        model.request_at, model.request, model.lossy, model.fair_time
    );
    let started = std::time::Instant::now();
    let checker = model
        .checker()
        .threads(2)
        .target_max_depth(depth)
        .spawn_bfs()
        .join();
    println!(
        "model [{name}] depth {depth}: {} states ({} unique) in {:.2?}",
        checker.state_count(),
        checker.unique_state_count(),
        started.elapsed()
    );
    checker.assert_properties();
}

fn takeover_of(of: u8) -> OperatorRequest {
    OperatorRequest::Takeover {
        of: NodeId(of),
        countdown_ms: None,
        immediate: false,
        check_only: false,
    }
}

/// Path 2 (Fig. 5): asked at the taker; responsive victim, reliable network.
#[test]
fn graceful_path_2_never_forced() {
    check(
        PairModel {
            cfg: small_config(),
            request_at: 0,
            request: takeover_of(1),
            lossy: false,
            fair_time: true,
            taker: 0,
        },
        15,
    );
}

/// Path 1 (Fig. 4): asked at the victim, which sends PLEASE_TAKEOVER.
#[test]
fn graceful_path_1_never_forced() {
    check(
        PairModel {
            cfg: small_config(),
            request_at: 1,
            request: takeover_of(1),
            lossy: false,
            fair_time: true,
            taker: 0,
        },
        15,
    );
}

/// Lossy network, any timing (hung nodes, countdown expiry, hard takeover): one owner.
#[test]
fn lossy_any_timing_keeps_one_owner() {
    check(
        PairModel {
            cfg: small_config(),
            request_at: 0,
            request: takeover_of(1),
            lossy: true,
            fair_time: false,
            taker: 0,
        },
        12,
    );
}
