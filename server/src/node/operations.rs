//! Takeover and giveback operations as the console shows them: an operator request becomes
//! an operation whose steps follow the takeover machine's notes, published on a `watch`
//! channel (the console's live progress page and the CLI follow it).
//!
//! Steps are seen from this node: the taker's plan (check, countdown, the partner's
//! drain, reservations, mount, replay, addresses, serving) or the victim's (asking, drain,
//! final CP, release, handing off, kept down). An operation ends on the note that settles
//! it — the taker serving both identities, the victim kept down, both back in normal after
//! a giveback — or on an abort with the machine's reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::takeover::{Note, OperatorRequest, StateCode, Step as MStep};
use cluster::NodeId;
use tokio::sync::{broadcast, watch};
use web_ui::{
    BackendError, CheckItem, CheckResult, NodeState, OperationId, OperationKind, Outcome, Progress,
    Step, StepState,
};

use super::ha::{HaShared, NoteAt};

/// Finished operations kept watchable (a reloaded page still shows how they ended).
const FINISHED_KEPT_MAX: usize = 32;
/// Bound on a whole operation as followed here (countdown excluded: added per request).
const OPERATION_MS_MAX: u64 = 180_000;
/// How long a check waits for the machine's verdict beyond its own bound.
const CHECK_SLACK_MS: u64 = 1_000;
/// Bound on waiting for the partner's heartbeat to agree that a takeover is over.
const SETTLE_MS_MAX: u64 = 3_000;
const SETTLE_POLL_MS: u64 = 20;
/// How often a running operation refreshes its countdown detail.
const REFRESH_MS: u64 = 250;

/// The operations of this node.
pub struct Operations {
    ha: Arc<HaShared>,
    /// The machine's bounds (check wait, countdown default and limits).
    cfg: cluster::TakeoverConfig,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    ops: HashMap<u64, watch::Receiver<Progress>>,
    finished: Vec<u64>,
    active: Option<OperationId>,
}

impl Operations {
    /// Operations driven through `ha`.
    pub fn new(ha: Arc<HaShared>, cfg: cluster::TakeoverConfig) -> Arc<Operations> {
        Arc::new(Operations {
            ha,
            cfg,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The operation running now, if any.
    pub fn active(&self) -> Option<OperationId> {
        self.lock().active
    }

    /// Follow an operation.
    pub fn watch(&self, id: OperationId) -> Option<watch::Receiver<Progress>> {
        self.lock().ops.get(&id.0).cloned()
    }

    /// The node id named `target`.
    pub fn node(&self, target: &str) -> Result<NodeId, BackendError> {
        self.ha
            .node_named(target)
            .ok_or_else(|| BackendError::UnknownNode(target.to_string()))
    }

    /// Runs the machine's check of a takeover of `of` (changes nothing) and waits for it.
    pub async fn check_takeover(&self, of: NodeId) -> Result<CheckResult, BackendError> {
        let mut notes = self.ha.subscribe();
        self.ha
            .request(OperatorRequest::Takeover {
                of,
                countdown_ms: None,
                immediate: false,
                check_only: true,
            })
            .map_err(BackendError::Unavailable)?;
        let wait = Duration::from_millis(self.cfg.check_ms_max + CHECK_SLACK_MS);
        let verdict = tokio::time::timeout(wait, async {
            loop {
                match notes.recv().await {
                    Ok(NoteAt {
                        note: Note::Checked(reasons),
                        ..
                    }) => return Ok(reasons),
                    Ok(NoteAt {
                        note: Note::Aborted(r),
                        ..
                    }) => {
                        let mut rs = cluster::takeover::Reasons::default();
                        rs.add(r);
                        return Ok(rs);
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(BackendError::Unavailable("the HA driver stopped".into()))
                    }
                }
            }
        })
        .await
        .map_err(|_| BackendError::Unavailable("the check did not answer in time".into()))??;
        let checks = if verdict.is_empty() {
            vec![CheckItem {
                name: "takeover possible".into(),
                ok: true,
                detail: "health, interconnect, mirror, disks and versions checked".into(),
            }]
        } else {
            verdict
                .iter()
                .map(|r| CheckItem {
                    name: r.describe().into(),
                    ok: false,
                    detail: String::new(),
                })
                .collect()
        };
        Ok(CheckResult {
            possible: verdict.is_empty(),
            checks,
        })
    }

    /// Whether `target` (node `to`) can get its identity back now: its partner holds it
    /// in takeover, and it waits for giveback, as the heartbeats say while the interconnect
    /// is up (a partner not heard from is "not connected"). Changes nothing.
    pub fn check_giveback(&self, target: &str, to: NodeId) -> CheckResult {
        let snap = self.ha.snapshot();
        // The partner's last heartbeat stays in the snapshot after the link goes down.
        let partner = snap
            .partner
            .filter(|_| snap.interconnect_alive)
            .map(|h| h.state);
        let (taker_state, victim_state) = if to == self.ha.me {
            (partner, Some(snap.state))
        } else {
            (Some(snap.state), partner)
        };
        let label = |s: Option<StateCode>| s.map_or("not connected", |s| node_state(s).label());
        let checks = vec![
            CheckItem {
                name: "identity taken over".into(),
                ok: taker_state == Some(StateCode::InTakeover),
                detail: format!("the taker is {}", label(taker_state)),
            },
            CheckItem {
                name: "waiting for giveback".into(),
                ok: victim_state == Some(StateCode::WaitingForGiveback),
                detail: format!("{target} is {}", label(victim_state)),
            },
        ];
        CheckResult {
            possible: checks.iter().all(|c| c.ok),
            checks,
        }
    }

    /// Starts a takeover of `of` and follows it.
    pub fn start_takeover(
        self: &Arc<Self>,
        target: &str,
        of: NodeId,
        countdown_ms: Option<u64>,
        immediate: bool,
        actor: &str,
    ) -> Result<OperationId, BackendError> {
        let victim = of == self.ha.me;
        let plan: &[&str] = match (victim, immediate) {
            (true, _) => &VICTIM_PLAN,
            (false, false) => &TAKER_PLAN,
            (false, true) => &TAKER_IMMEDIATE_PLAN,
        };
        let request = OperatorRequest::Takeover {
            of,
            countdown_ms,
            immediate,
            check_only: false,
        };
        // The countdown the machine will run (it applies the same limits).
        let countdown_ms = self
            .cfg
            .clamp_countdown(countdown_ms.unwrap_or(self.cfg.countdown_ms));
        let bound = OPERATION_MS_MAX + countdown_ms;
        self.start(
            OperationKind::Takeover,
            target,
            actor,
            plan,
            request,
            bound,
            countdown_ms,
        )
    }

    /// Starts a giveback to `to` and follows it.
    pub fn start_giveback(
        self: &Arc<Self>,
        target: &str,
        to: NodeId,
        actor: &str,
    ) -> Result<OperationId, BackendError> {
        let plan: &[&str] = match to == self.ha.me {
            true => &RECEIVER_PLAN,
            false => &GIVER_PLAN,
        };
        self.start(
            OperationKind::Giveback,
            target,
            actor,
            plan,
            OperatorRequest::Giveback { to },
            OPERATION_MS_MAX,
            0,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        self: &Arc<Self>,
        kind: OperationKind,
        target: &str,
        actor: &str,
        plan: &[&str],
        request: OperatorRequest,
        bound_ms: u64,
        countdown_ms: u64,
    ) -> Result<OperationId, BackendError> {
        let (id, tx) = {
            let mut inner = self.lock();
            if let Some(active) = inner.active {
                return Err(BackendError::Refused(format!(
                    "operation {} is still running",
                    active.0
                )));
            }
            inner.next += 1;
            let id = OperationId(inner.next);
            let progress = Progress {
                id,
                kind,
                target: target.to_string(),
                actor: actor.to_string(),
                steps: plan
                    .iter()
                    .map(|name| Step {
                        name: name.to_string(),
                        state: StepState::Pending,
                        detail: String::new(),
                        at_unix_ms: None,
                    })
                    .collect(),
                outcome: None,
            };
            let (tx, rx) = watch::channel(progress);
            inner.ops.insert(id.0, rx);
            inner.active = Some(id);
            (id, tx)
        };
        let notes = self.ha.subscribe();
        if let Err(e) = self.ha.request(request) {
            self.finish(id, &tx, Outcome::Failed { reason: e.clone() });
            return Err(BackendError::Unavailable(e));
        }
        let ops = self.clone();
        let kind_giveback = kind == OperationKind::Giveback;
        tokio::spawn(async move {
            let outcome = follow(&tx, notes, kind_giveback, bound_ms, countdown_ms).await;
            if outcome == Outcome::Succeeded && !kind_giveback {
                ops.wait_partner_settled().await;
            }
            ops.finish(id, &tx, outcome);
        });
        Ok(id)
    }

    /// A takeover has succeeded here; report it once the partner's heartbeat agrees (it
    /// waits for giveback, or went silent), so that a giveback asked right after is not
    /// refused for a partner still handing off. Bounded: a dead partner sends nothing.
    async fn wait_partner_settled(&self) {
        let deadline = Instant::now() + Duration::from_millis(SETTLE_MS_MAX);
        while Instant::now() < deadline {
            let snap = self.ha.snapshot();
            let settled = match snap.state {
                // We are the taker: the victim must say it waits.
                StateCode::InTakeover => {
                    !snap.interconnect_alive
                        || snap
                            .partner
                            .is_some_and(|hb| hb.state == StateCode::WaitingForGiveback)
                }
                // We are the victim: the taker must say it serves us.
                StateCode::WaitingForGiveback => snap
                    .partner
                    .is_some_and(|hb| hb.state == StateCode::InTakeover),
                _ => true,
            };
            if settled {
                return;
            }
            tokio::time::sleep(Duration::from_millis(SETTLE_POLL_MS)).await;
        }
    }

    fn finish(&self, id: OperationId, tx: &watch::Sender<Progress>, outcome: Outcome) {
        tx.send_modify(|p| {
            if matches!(outcome, Outcome::Failed { .. }) {
                for s in p.steps.iter_mut().filter(|s| s.state == StepState::Running) {
                    s.state = StepState::Failed;
                }
            }
            for s in p.steps.iter_mut().filter(|s| s.state == StepState::Pending) {
                s.state = StepState::Skipped;
            }
            p.outcome = Some(outcome);
        });
        let mut inner = self.lock();
        if inner.active == Some(id) {
            inner.active = None;
        }
        inner.finished.push(id.0);
        while inner.finished.len() > FINISHED_KEPT_MAX {
            let old = inner.finished.remove(0);
            inner.ops.remove(&old);
        }
    }
}

/// The taker's plan (graceful).
const TAKER_PLAN: [&str; 9] = [
    "takeover check",
    "PLEASE_SHUTDOWN sent, countdown running",
    "partner drained and shut down",
    "reservations asserted",
    "aggregate mounted",
    "log replayed",
    "addresses raised",
    "reservation verified",
    "serving both identities",
];
/// The taker's plan (immediate: fenced at once).
const TAKER_IMMEDIATE_PLAN: [&str; 8] = [
    "takeover check",
    "TAKEOVER sent, partner fenced",
    "aggregate mounted",
    "log replayed",
    "addresses raised",
    "reservation verified",
    "serving both identities",
    "partner kept down",
];
/// The victim's plan (the operator asked this node to be taken over).
const VICTIM_PLAN: [&str; 7] = [
    "PLEASE_TAKEOVER sent",
    "partner checked and accepted",
    "draining requests",
    "final CP",
    "reservations released",
    "addresses handed over",
    "waiting for giveback",
];
/// The giver's plan (the taker hands the identity back).
const GIVER_PLAN: [&str; 6] = [
    "draining the partner's requests",
    "final CP",
    "reservations released",
    "GIVEBACK sent",
    "addresses handed over",
    "partner serving again",
];
/// The receiver's plan (this node gets its identity back).
const RECEIVER_PLAN: [&str; 6] = [
    "PLEASE_GIVEBACK sent",
    "reservations asserted",
    "aggregate mounted",
    "log replayed",
    "addresses raised",
    "serving again",
];

/// Which plan step a note settles, with its new state.
fn step_of(note: &Note) -> Vec<(&'static str, StepState)> {
    use StepState::{Done, Failed, Running};
    let ok = |b: bool| if b { Done } else { Failed };
    match *note {
        Note::Checked(r) => vec![
            ("takeover check", ok(r.is_empty())),
            ("partner checked and accepted", ok(r.is_empty())),
        ],
        Note::Sent("PLEASE_TAKEOVER") => vec![("PLEASE_TAKEOVER sent", Done)],
        Note::Sent("PLEASE_SHUTDOWN") => vec![
            ("takeover check", Done),
            ("PLEASE_SHUTDOWN sent, countdown running", Running),
        ],
        Note::Sent("TAKEOVER") => vec![
            ("takeover check", Done),
            ("TAKEOVER sent, partner fenced", Done),
        ],
        Note::Sent("PLEASE_GIVEBACK") => vec![("PLEASE_GIVEBACK sent", Done)],
        Note::Sent("GIVEBACK") => vec![("GIVEBACK sent", Done)],
        Note::Sent("ADDRESSES_RELEASED") => vec![("addresses handed over", Done)],
        Note::Received("PLEASE_SHUTDOWN") => vec![
            ("partner checked and accepted", Done),
            ("draining requests", Running),
        ],
        Note::Received("SHUTDOWN_COMPLETE") => vec![
            ("PLEASE_SHUTDOWN sent, countdown running", Done),
            ("partner drained and shut down", Done),
        ],
        Note::Received("ADDRESSES_RELEASED") => vec![("addresses handed over", Done)],
        Note::CountdownExpired => vec![
            ("PLEASE_SHUTDOWN sent, countdown running", Failed),
            ("partner drained and shut down", StepState::Skipped),
        ],
        Note::Drained { .. } => vec![
            ("draining requests", Done),
            ("draining the partner's requests", Done),
        ],
        Note::StepDone(step, _, good) => match step {
            MStep::FinalCp => vec![("final CP", ok(good))],
            MStep::ReleaseReservations => vec![("reservations released", ok(good))],
            MStep::AssertReservations | MStep::PreemptReservations => vec![
                ("reservations asserted", ok(good)),
                ("TAKEOVER sent, partner fenced", ok(good)),
            ],
            MStep::Mount => vec![("aggregate mounted", ok(good))],
            MStep::Replay => vec![("log replayed", ok(good))],
            MStep::RaiseAddresses => vec![("addresses raised", ok(good))],
            MStep::VerifyReservations => vec![("reservation verified", ok(good))],
            _ => vec![],
        },
        Note::State(StateCode::InTakeover) => vec![("serving both identities", Done)],
        Note::KeptDown(_) => vec![("partner kept down", Done)],
        Note::State(StateCode::WaitingForGiveback) => vec![
            ("addresses handed over", Done),
            ("waiting for giveback", Done),
        ],
        Note::GivebackComplete(_) => vec![("partner serving again", Done), ("serving again", Done)],
        _ => vec![],
    }
}

/// Follows the notes until the operation settles.
async fn follow(
    tx: &watch::Sender<Progress>,
    mut notes: broadcast::Receiver<NoteAt>,
    giveback: bool,
    bound_ms: u64,
    countdown_ms: u64,
) -> Outcome {
    let deadline = Instant::now() + Duration::from_millis(bound_ms);
    let mut countdown_until: Option<Instant> = None;
    // The machine has moved for this operation: refusals from here on answer other
    // requests (a check clicked meanwhile), not this one.
    let mut accepted = false;
    let mut refresh = tokio::time::interval(Duration::from_millis(REFRESH_MS));
    loop {
        let at = tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {
                return Outcome::Failed { reason: format!("no outcome within {} s", bound_ms / 1000) };
            }
            _ = refresh.tick() => {
                if let Some(until) = countdown_until {
                    let left = until.saturating_duration_since(Instant::now()).as_secs();
                    tx.send_modify(|p| {
                        if let Some(s) = p.steps.iter_mut().find(|s| s.name.starts_with("PLEASE_SHUTDOWN") && s.state == StepState::Running) {
                            s.detail = format!("{left} s left before a forced takeover");
                        }
                    });
                }
                continue;
            }
            n = notes.recv() => match n {
                Ok(n) => n,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => {
                    return Outcome::Failed { reason: "the HA driver stopped".into() };
                }
            }
        };
        if accepted && refuses_another_request(&at.note) {
            continue;
        }
        if matches!(at.note, Note::State(s) if s != StateCode::Normal) {
            accepted = true;
        }
        if matches!(at.note, Note::Sent("PLEASE_SHUTDOWN")) && countdown_until.is_none() {
            countdown_until = Some(Instant::now() + Duration::from_millis(countdown_ms));
        }
        let updates = step_of(&at.note);
        if !updates.is_empty() {
            tx.send_modify(|p| {
                for (name, state) in &updates {
                    if let Some(s) = p.steps.iter_mut().find(|s| s.name == *name) {
                        s.state = *state;
                        s.at_unix_ms = Some(at.at_unix_ms);
                        if *state != StepState::Running {
                            s.detail.clear();
                        }
                    }
                }
                // Steps before the one just settled that never got a note ran implicitly.
                if let Some(last) = p.steps.iter().rposition(|s| s.state == StepState::Done) {
                    for s in p.steps[..last]
                        .iter_mut()
                        .filter(|s| s.state == StepState::Pending)
                    {
                        s.state = StepState::Done;
                    }
                }
            });
        }
        match at.note {
            Note::Aborted(r) => {
                return Outcome::Failed {
                    reason: r.describe().to_string(),
                }
            }
            Note::Checked(r) if !r.is_empty() => {
                let reasons: Vec<&str> = r.iter().map(|r| r.describe()).collect();
                return Outcome::Failed {
                    reason: format!("takeover impossible: {}", reasons.join("; ")),
                };
            }
            Note::State(StateCode::InTakeover) | Note::State(StateCode::WaitingForGiveback)
                if !giveback =>
            {
                return Outcome::Succeeded
            }
            Note::GivebackComplete(_) if giveback => return Outcome::Succeeded,
            Note::State(StateCode::Normal) if giveback => return Outcome::Succeeded,
            _ => {}
        }
    }
}

/// Whether `note` is the machine refusing a new operator request while it is busy with
/// another (or a giveback asked at the wrong time): it ends no operation already running.
/// An operation's own check never reports "busy" once the machine moved for it.
pub(super) fn refuses_another_request(note: &Note) -> bool {
    use cluster::takeover::Reason;
    match note {
        Note::Aborted(r) => matches!(
            r,
            Reason::Busy | Reason::UnknownNode | Reason::NotInTakeover | Reason::VictimNotWaiting
        ),
        Note::Checked(r) => r.contains(Reason::Busy),
        _ => false,
    }
}

/// The console's word for a machine state.
pub(super) fn node_state(s: StateCode) -> NodeState {
    match s {
        StateCode::Normal | StateCode::AskedPartner => NodeState::Normal,
        StateCode::TakeoverCheck => NodeState::TakeoverCheck,
        StateCode::WaitingForShutdown => NodeState::WaitingForShutdown,
        StateCode::TakingOver | StateCode::Starting | StateCode::ReceivingGiveback => {
            NodeState::TakingOver
        }
        StateCode::InTakeover => NodeState::InTakeover,
        StateCode::Draining | StateCode::HandingOff => NodeState::Draining,
        StateCode::WaitingForGiveback => NodeState::WaitingForGiveback,
        StateCode::GivingBack => NodeState::GivingBack,
        StateCode::Booting => NodeState::Down,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster::takeover::{Reason, Reasons};

    async fn outcome_of(notes: Vec<Note>) -> Outcome {
        let (tx, _rx) = watch::channel(Progress {
            id: OperationId(1),
            kind: OperationKind::Takeover,
            target: "a".into(),
            actor: "test".into(),
            steps: Vec::new(),
            outcome: None,
        });
        let (ntx, nrx) = broadcast::channel(64);
        for note in notes {
            ntx.send(NoteAt {
                at_unix_ms: 0,
                note,
            })
            .expect("receiver alive");
        }
        follow(&tx, nrx, false, 2_000, 0).await
    }

    fn busy() -> Reasons {
        let mut r = Reasons::default();
        r.add(Reason::Busy);
        r
    }

    #[tokio::test]
    async fn a_check_refused_meanwhile_does_not_end_a_running_takeover() {
        let outcome = outcome_of(vec![
            Note::State(StateCode::TakeoverCheck),
            Note::Checked(Reasons::default()),
            Note::State(StateCode::TakingOver),
            // An operator clicks "check" while the takeover runs.
            Note::Checked(busy()),
            Note::Aborted(Reason::Busy),
            Note::State(StateCode::InTakeover),
        ])
        .await;
        assert_eq!(outcome, Outcome::Succeeded);
    }

    #[tokio::test]
    async fn a_refusal_before_the_machine_moved_is_the_operations_own() {
        let outcome = outcome_of(vec![Note::Checked(busy()), Note::Aborted(Reason::Busy)]).await;
        assert!(
            matches!(outcome, Outcome::Failed { ref reason } if reason.contains("impossible")),
            "{outcome:?}"
        );
    }
}
