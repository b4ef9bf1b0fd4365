//! Scripted scenarios of the takeover machine on a small synchronous harness: a perfect (or
//! cut) interconnect, instant local steps, shared reservations and mailboxes. Each test pins
//! one behaviour the seed describes (Fig. 4, Fig. 5, countdown, PLEASE_DIE, giveback) or one
//! rule of ours (cut interconnect, check-only, ping-pong guard, persisted state).

use std::collections::VecDeque;

use cluster::mailbox::MailboxRecord;
use cluster::persist::{Persisted, Role};
use cluster::takeover::{Action, Event, Mode, Note, OperatorRequest, Reason, State, Step};
use cluster::wire::{self, Message};
use cluster::{NodeId, Takeover, TakeoverConfig, Time};

const STEP_MS: u64 = 10;

struct Lab {
    m: [Takeover; 2],
    now_ms: u64,
    holder: [Option<u8>; 2],
    mailbox: [Option<MailboxRecord>; 2],
    inbox: VecDeque<(u8, Vec<u8>)>,
    pending: VecDeque<(u8, Event)>,
    log: Vec<(u8, Action)>,
    link_up: bool,
    hung: [bool; 2],
    /// Steps the driver does not complete (a slow victim), per node.
    stalled: [Option<Step>; 2],
}

impl Lab {
    fn new(cfg: TakeoverConfig) -> Lab {
        let mut lab = Lab {
            m: [
                Takeover::new(cfg.clone(), NodeId(0), Time::ZERO),
                Takeover::new(cfg, NodeId(1), Time::ZERO),
            ],
            now_ms: 0,
            holder: [None, None],
            mailbox: [None, None],
            inbox: VecDeque::new(),
            pending: VecDeque::new(),
            log: Vec::new(),
            link_up: true,
            hung: [false; 2],
            stalled: [None, None],
        };
        for n in 0..2u8 {
            let actions = lab.m[usize::from(n)].start(Time::ZERO);
            lab.perform(n, actions);
        }
        lab.run_ms(3_000);
        for n in 0..2u8 {
            assert_eq!(
                lab.m[usize::from(n)].state(),
                State::Normal,
                "node{n} booted"
            );
            assert!(lab.m[usize::from(n)].serves(NodeId(n)));
        }
        lab.log.clear();
        lab
    }

    fn feed(&mut self, n: u8, event: Event) {
        if self.hung[usize::from(n)] {
            return;
        }
        let actions = self.m[usize::from(n)].on(Time::from_ms(self.now_ms), event);
        self.perform(n, actions);
    }

    fn perform(&mut self, n: u8, actions: Vec<Action>) {
        let p = 1 - n;
        for action in actions {
            self.log.push((n, action));
            match action {
                Action::Send(message) if self.link_up => {
                    self.inbox.push_back((p, wire::encode(NodeId(n), &message)));
                }
                Action::WriteMailbox(record) => {
                    let ok = self.holder[usize::from(n)].is_none_or(|h| h == n);
                    if ok {
                        self.mailbox[usize::from(n)] = Some(record);
                    }
                    let counter = record.counter;
                    self.pending
                        .push_back((n, Event::OwnMailboxWritten { counter, ok }));
                }
                Action::ReadPartnerMailbox { read_id } => {
                    let record = self.mailbox[usize::from(p)];
                    self.pending
                        .push_back((n, Event::PartnerMailbox { read_id, record }));
                }
                Action::Start { step, identity } => {
                    if self.stalled[usize::from(n)] == Some(step) {
                        continue;
                    }
                    let event = self.complete(n, step, identity);
                    self.pending.push_back((n, event));
                }
                Action::Serve(identity) => {
                    assert_eq!(
                        self.holder[usize::from(identity.0)],
                        Some(n),
                        "node{n} serves {identity} without its reservation"
                    );
                }
                _ => {}
            }
        }
    }

    fn complete(&mut self, n: u8, step: Step, identity: NodeId) -> Event {
        let x = usize::from(identity.0);
        let ok = match step {
            Step::Drain => {
                return Event::Drained {
                    identity,
                    completed: 3,
                    kept: 1,
                }
            }
            Step::AssertReservations => {
                let ok = self.holder[x].is_none_or(|h| h == n);
                if ok {
                    self.holder[x] = Some(n);
                }
                ok
            }
            Step::PreemptReservations => {
                self.holder[x] = Some(n);
                true
            }
            Step::ReleaseReservations => {
                if self.holder[x] == Some(n) {
                    self.holder[x] = None;
                }
                true
            }
            Step::FinalCp | Step::Mount | Step::Replay | Step::VerifyReservations => {
                self.holder[x] == Some(n)
            }
            Step::ResyncMirror => self.link_up,
            _ => true,
        };
        Event::Done { step, identity, ok }
    }

    fn settle(&mut self) {
        for _ in 0..10_000 {
            if let Some((to, frame)) = self.inbox.pop_front() {
                let (_, message) = wire::decode(&frame).expect("valid frame");
                self.feed(to, Event::Received(message));
            } else if let Some((n, event)) = self.pending.pop_front() {
                self.feed(n, event);
            } else {
                return;
            }
        }
        panic!("harness did not settle");
    }

    fn run_ms(&mut self, ms: u64) {
        let end = self.now_ms + ms;
        while self.now_ms < end {
            self.now_ms += STEP_MS;
            for n in 0..2u8 {
                self.feed(n, Event::Tick);
            }
            self.settle();
        }
    }

    fn operator(&mut self, at: u8, request: OperatorRequest) {
        self.feed(at, Event::Operator(request));
        self.settle();
    }

    fn sent(&self, from: u8, name: &str) -> usize {
        self.log
            .iter()
            .filter(|(n, a)| *n == from && matches!(a, Action::Send(m) if m.name() == name))
            .count()
    }

    fn started(&self, from: u8, step: Step) -> Option<usize> {
        self.log.iter().position(|(n, a)| {
            *n == from && matches!(a, Action::Start { step: s, .. } if *s == step)
        })
    }

    fn takeover_mode(&self, n: u8) -> Option<Mode> {
        self.log.iter().find_map(|(k, a)| match a {
            Action::Record(r) if *k == n => match r.note {
                Note::TakeoverStarted { mode, .. } => Some(mode),
                _ => None,
            },
            _ => None,
        })
    }
}

fn takeover(of: u8, countdown_ms: Option<u64>) -> OperatorRequest {
    OperatorRequest::Takeover {
        of: NodeId(of),
        countdown_ms,
        immediate: false,
        check_only: false,
    }
}

fn assert_taken_over(lab: &Lab, taker: u8) {
    let victim = 1 - taker;
    assert!(matches!(
        lab.m[usize::from(taker)].state(),
        State::InTakeover { .. }
    ));
    assert!(matches!(
        lab.m[usize::from(victim)].state(),
        State::WaitingForGiveback { .. }
    ));
    assert!(lab.m[usize::from(taker)].serves(NodeId(0)));
    assert!(lab.m[usize::from(taker)].serves(NodeId(1)));
    assert!(!lab.m[usize::from(victim)].serves(NodeId(victim)));
    assert_eq!(lab.holder, [Some(taker), Some(taker)]);
}

/// Fig. 5: asked at the partner; PLEASE_SHUTDOWN, drain, final CP, release, reserve, mount,
/// replay, addresses, serve — and never TAKEOVER.
#[test]
fn path_2_graceful_takeover_asked_at_the_partner() {
    let mut lab = Lab::new(TakeoverConfig::default());
    lab.operator(0, takeover(1, None));
    lab.run_ms(1_000);
    assert_taken_over(&lab, 0);
    assert_eq!(lab.takeover_mode(0), Some(Mode::Graceful));
    assert_eq!(lab.sent(0, "TAKEOVER"), 0);
    assert!(lab.sent(0, "PLEASE_SHUTDOWN") >= 1);
    assert_eq!(
        lab.sent(0, "PLEASE_TAKEOVER") + lab.sent(1, "PLEASE_TAKEOVER"),
        0
    );
    // The victim's drain, CP and release come before the taker touches the disks.
    let order = [
        lab.started(1, Step::Drain),
        lab.started(1, Step::FinalCp),
        lab.started(1, Step::ReleaseReservations),
        lab.started(0, Step::AssertReservations),
        lab.started(0, Step::Mount),
        lab.started(0, Step::Replay),
        lab.started(1, Step::ReleaseAddresses),
        lab.started(0, Step::RaiseAddresses),
    ];
    assert!(order.iter().all(Option::is_some), "{order:?}");
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    assert!(lab.started(0, Step::PreemptReservations).is_none());
    // PLEASE_DIE keeps coming while in takeover.
    let before = lab.sent(0, "PLEASE_DIE");
    lab.run_ms(3_000);
    assert!(lab.sent(0, "PLEASE_DIE") > before);
}

/// Fig. 4: asked at the victim; PLEASE_TAKEOVER, then the same sequence.
#[test]
fn path_1_graceful_takeover_asked_at_the_victim() {
    let mut lab = Lab::new(TakeoverConfig::default());
    lab.operator(1, takeover(1, Some(10_000)));
    lab.run_ms(1_000);
    assert!(lab.sent(1, "PLEASE_TAKEOVER") >= 1);
    assert_taken_over(&lab, 0);
    assert_eq!(lab.takeover_mode(0), Some(Mode::Graceful));
    assert_eq!(lab.sent(0, "TAKEOVER"), 0);
}

/// A victim that cannot finish its drain: countdown expiry sends TAKEOVER and preempts.
#[test]
fn countdown_expiry_forces_the_takeover() {
    let mut lab = Lab::new(TakeoverConfig::default());
    lab.stalled[1] = Some(Step::Drain);
    lab.operator(0, takeover(1, Some(2_000)));
    lab.run_ms(1_900);
    assert!(matches!(lab.m[0].state(), State::WaitingForShutdown { .. }));
    assert_eq!(lab.sent(0, "TAKEOVER"), 0);
    lab.run_ms(600);
    assert_eq!(lab.sent(0, "TAKEOVER"), 1);
    assert_eq!(lab.takeover_mode(0), Some(Mode::Forced));
    assert!(lab.started(0, Step::PreemptReservations).is_some());
    lab.run_ms(1_000);
    assert_taken_over(&lab, 0);
}

/// Cut interconnect, both alive (mailboxes written): never a takeover, and it says why.
#[test]
fn cut_interconnect_with_live_mailbox_never_takes_over() {
    let mut lab = Lab::new(TakeoverConfig::default());
    lab.link_up = false;
    lab.run_ms(10_000);
    for n in 0..2u8 {
        assert_eq!(lab.m[usize::from(n)].state(), State::Normal);
        assert!(lab.m[usize::from(n)].serves(NodeId(n)));
        let why = lab.m[usize::from(n)].takeover_impossible();
        assert!(why.contains(Reason::InterconnectDown), "{why:?}");
        assert!(why.contains(Reason::PartnerMailboxAlive), "{why:?}");
        let hard = lab.m[usize::from(n)].hard_takeover_blockers();
        assert!(hard.contains(Reason::PartnerMailboxAlive), "{hard:?}");
    }
    assert_eq!(lab.holder, [Some(0), Some(1)]);
    // An operator request is refused with the reason, visibly.
    lab.operator(0, takeover(1, None));
    assert_eq!(lab.m[0].state(), State::Normal);
}

/// Partner dead (interconnect and mailbox silent): hard takeover within the detection bound.
#[test]
fn dead_partner_is_taken_over_hard_within_the_bound() {
    let cfg = TakeoverConfig::default();
    let loss_ms = cfg.heartbeat_loss_ms;
    let mut lab = Lab::new(cfg);
    lab.hung[1] = true;
    lab.link_up = false;
    lab.run_ms(loss_ms + 300);
    assert_eq!(lab.takeover_mode(0), Some(Mode::Hard));
    assert!(lab.started(0, Step::PreemptReservations).is_some());
    assert!(lab.m[0].serves(NodeId(1)));
    assert_eq!(lab.holder, [Some(0), Some(0)]);
}

/// Check-only runs the check and changes nothing.
#[test]
fn check_only_changes_nothing() {
    let mut lab = Lab::new(TakeoverConfig::default());
    lab.operator(
        0,
        OperatorRequest::Takeover {
            of: NodeId(1),
            countdown_ms: None,
            immediate: false,
            check_only: true,
        },
    );
    lab.run_ms(500);
    assert_eq!(lab.m[0].state(), State::Normal);
    assert_eq!(lab.m[1].state(), State::Normal);
    assert_eq!(lab.sent(0, "PLEASE_SHUTDOWN"), 0);
    let checked = lab.log.iter().any(|(n, a)| {
        *n == 0 && matches!(a, Action::Record(r) if matches!(r.note, Note::Checked(reasons) if reasons.is_empty()))
    });
    assert!(checked, "the check result is reported");
}

/// Giveback: the taker drains and releases the victim's identity; the victim serves again.
#[test]
fn giveback_returns_the_identity() {
    let mut lab = Lab::new(TakeoverConfig::default());
    lab.operator(0, takeover(1, None));
    lab.run_ms(1_000);
    assert_taken_over(&lab, 0);
    lab.operator(0, OperatorRequest::Giveback { to: NodeId(1) });
    lab.run_ms(2_000);
    assert_eq!(lab.m[0].state(), State::Normal);
    assert_eq!(lab.m[1].state(), State::Normal);
    assert!(!lab.m[0].serves(NodeId(1)));
    assert!(lab.m[1].serves(NodeId(1)));
    assert_eq!(lab.holder, [Some(0), Some(1)]);
    // A stale PLEASE_DIE of the given-back takeover does not take the victim down again.
    let epoch = lab.m[1].persisted().given_back_epoch;
    lab.feed(1, Event::Received(Message::PleaseDie { epoch }));
    lab.settle();
    assert!(lab.m[1].serves(NodeId(1)));
}

/// A victim restarting while taken over waits for giveback and never asserts its disks.
#[test]
fn restarted_victim_waits_for_giveback() {
    let persisted = Persisted {
        role: Role::TakenOver(4),
        epoch_next: 1,
        epoch_seen_max: 4,
        given_back_epoch: 3,
    };
    let mut m = Takeover::restore(TakeoverConfig::default(), NodeId(1), persisted, Time::ZERO);
    let mut actions = m.start(Time::ZERO);
    for t in 1..100u64 {
        actions.extend(m.on(Time::from_ms(t * 100), Event::Tick));
    }
    assert_eq!(m.state(), State::WaitingForGiveback { epoch: 4 });
    assert!(!actions.iter().any(|a| matches!(
        a,
        Action::Start {
            step: Step::AssertReservations | Step::PreemptReservations,
            ..
        } | Action::Serve(_)
    )));
}

/// Auto-giveback after the delay, disabled by the ping-pong guard after 3 takeovers in the
/// window.
#[test]
fn auto_giveback_and_ping_pong_guard() {
    let cfg = TakeoverConfig {
        auto_giveback: true,
        auto_giveback_delay_ms: 2_000,
        ..TakeoverConfig::default()
    };
    let mut lab = Lab::new(cfg);
    for round in 0..3 {
        lab.operator(0, takeover(1, None));
        lab.run_ms(1_000);
        assert_taken_over(&lab, 0);
        lab.run_ms(3_000);
        if round < 2 {
            assert_eq!(
                lab.m[1].state(),
                State::Normal,
                "round {round}: auto-giveback"
            );
            assert!(!lab.m[0].auto_giveback_disabled());
        }
    }
    assert!(lab.m[0].auto_giveback_disabled());
    assert!(matches!(lab.m[0].state(), State::InTakeover { .. }));
    // The operator can still give back, which re-enables it.
    lab.operator(0, OperatorRequest::Giveback { to: NodeId(1) });
    lab.run_ms(2_000);
    assert_eq!(lab.m[1].state(), State::Normal);
    assert!(!lab.m[0].auto_giveback_disabled());
}
