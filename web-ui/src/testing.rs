//! `FakeBackend`: a scripted two-node pair for this crate's own tests (feature `testing`).
//!
//! It is NOT a model of the real pair: operations walk a fixed list of steps, one per
//! `step_interval`, on a tokio timer. It exists so the console's HTTP, auth and SSE code can be
//! tested before the node implements [`ConsoleBackend`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::backend::*;
use crate::metrics::Metrics;

pub mod browser;

/// Steps of a fake graceful takeover, in order.
pub const TAKEOVER_STEPS: [&str; 8] = [
    "check",
    "PLEASE_SHUTDOWN sent",
    "draining requests",
    "final CP",
    "reservations asserted",
    "aggregate mounted, log replayed",
    "addresses raised",
    "serving",
];
/// Steps of an immediate takeover skip these.
const IMMEDIATE_SKIPS: [&str; 2] = ["draining requests", "final CP"];
/// Steps of a fake giveback, in order.
pub const GIVEBACK_STEPS: [&str; 5] = [
    "check",
    "draining partner identity",
    "reservations released",
    "partner mounted and replayed",
    "serving",
];
/// Most events the fake keeps.
const EVENTS_MAX: usize = 10_000;
/// Samples per node for the charts.
const SAMPLES_COUNT: u64 = 60;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Inner {
    states: HashMap<String, NodeState>,
    operations: HashMap<OperationId, watch::Sender<Progress>>,
    active: Option<OperationId>,
    next_id: u64,
    events: Vec<Event>,
}

/// A fake pair "a" + "b".
pub struct FakeBackend {
    inner: Mutex<Inner>,
    step_interval: Duration,
    /// Fail the operation at this step name, if set.
    fail_at: Mutex<Option<String>>,
    /// Number of operations started (tests assert unauthenticated calls never start one).
    pub operations_started: AtomicUsize,
    /// Metrics rendered at `/metrics`.
    pub metrics: Metrics,
}

impl FakeBackend {
    /// Two normal nodes; operations advance one step per `step_interval`.
    pub fn new(step_interval: Duration) -> Arc<Self> {
        let states = [("a", NodeState::Normal), ("b", NodeState::Normal)]
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect();
        let metrics = Metrics::new();
        metrics.observe_nfs_op("READ", "NFS3_OK", 0.000_2);
        metrics.set_disk_state("aggr_a", "d0", "ok");
        metrics.set_ha_state("a", "normal");
        Arc::new(FakeBackend {
            inner: Mutex::new(Inner {
                states,
                operations: HashMap::new(),
                active: None,
                next_id: 1,
                events: Vec::new(),
            }),
            step_interval,
            fail_at: Mutex::new(None),
            operations_started: AtomicUsize::new(0),
            metrics,
        })
    }

    /// Make the next operations fail when they reach step `name`.
    pub fn fail_at_step(&self, name: &str) {
        *self.fail_at.lock().expect("lock") = Some(name.to_string());
    }

    fn partner(node: &str) -> &'static str {
        if node == "a" {
            "b"
        } else {
            "a"
        }
    }

    fn push_event(inner: &mut Inner, node: &str, actor: &str, message: String) {
        let seq = inner.events.last().map_or(1, |e| e.seq + 1);
        inner.events.push(Event {
            seq,
            at_unix_ms: now_ms(),
            node: node.to_string(),
            actor: actor.to_string(),
            message,
        });
        if inner.events.len() > EVENTS_MAX {
            inner.events.remove(0);
        }
    }

    fn node_status(name: &str, state: NodeState, partner_state: NodeState) -> NodeStatus {
        let serving_partner = state == NodeState::InTakeover;
        let mut exports = Vec::new();
        if state != NodeState::WaitingForGiveback {
            exports.push(Export {
                path: format!("/{name}"),
                aggregate: format!("aggr_{name}"),
                address: if name == "a" {
                    "127.0.0.11"
                } else {
                    "127.0.0.12"
                }
                .to_string(),
            });
        }
        if serving_partner {
            let p = Self::partner(name);
            exports.push(Export {
                path: format!("/{p}"),
                aggregate: format!("aggr_{p}"),
                address: if p == "a" { "127.0.0.11" } else { "127.0.0.12" }.to_string(),
            });
        }
        let t0 = now_ms();
        let samples = (0..SAMPLES_COUNT)
            .map(|i| Sample {
                at_unix_ms: t0.saturating_sub((SAMPLES_COUNT - i) * 1000),
                ops_per_s: 100.0 + (i % 10) as f64 * 10.0,
                bytes_per_s: 1e6 + (i % 7) as f64 * 1e5,
            })
            .collect();
        let takeover_possible = state == NodeState::Normal && partner_state == NodeState::Normal;
        NodeStatus {
            name: name.to_string(),
            state,
            modules: vec![ModuleHealth {
                name: "nvlog".into(),
                health: Health::Ok,
                detail: String::new(),
            }],
            links: vec![Link {
                name: "ic0".into(),
                up: true,
                heartbeat_rtt_us: Some(85),
                heartbeat_misses: 0,
            }],
            mirror: MirrorStatus {
                in_sync: true,
                lag_bytes: 0,
                degraded_reason: None,
            },
            takeover_possible,
            takeover_blockers: if takeover_possible {
                vec![]
            } else {
                vec!["pair not in normal state".into()]
            },
            aggregates: vec![Aggregate {
                name: format!("aggr_{name}"),
                home: name.to_string(),
                served_by: Some(if state == NodeState::WaitingForGiveback {
                    Self::partner(name).to_string()
                } else {
                    name.to_string()
                }),
                disks: vec![
                    Disk {
                        name: "d0".into(),
                        role: "data".into(),
                        state: DiskState::Ok,
                    },
                    Disk {
                        name: "p0".into(),
                        role: "parity".into(),
                        state: DiskState::Ok,
                    },
                ],
                rebuild_progress: None,
            }],
            nvram: NvramStatus {
                used_bytes: 4096,
                capacity_bytes: 64 << 20,
            },
            last_cp: Some(CpStatus {
                generation: 7,
                at_unix_ms: t0,
                duration_ms: 12,
                bytes: 1 << 20,
            }),
            exports,
            clients: vec![Client {
                address: "127.0.0.1".into(),
                protocol: "nfs3".into(),
            }],
            samples,
        }
    }

    fn check(&self, target: &str, kind: OperationKind) -> Result<CheckResult, BackendError> {
        let inner = self.inner.lock().expect("lock");
        let Some(&state) = inner.states.get(target) else {
            return Err(BackendError::UnknownNode(target.to_string()));
        };
        let wanted = match kind {
            OperationKind::Takeover => NodeState::Normal,
            OperationKind::Giveback => NodeState::WaitingForGiveback,
        };
        let ok = state == wanted && inner.active.is_none();
        Ok(CheckResult {
            possible: ok,
            checks: vec![
                CheckItem {
                    name: format!("{target} is {}", wanted.label()),
                    ok: state == wanted,
                    detail: format!("state: {}", state.label()),
                },
                CheckItem {
                    name: "no other operation running".into(),
                    ok: inner.active.is_none(),
                    detail: String::new(),
                },
                CheckItem {
                    name: "mirror in sync".into(),
                    ok: true,
                    detail: String::new(),
                },
            ],
        })
    }

    fn start(
        self: &Arc<Self>,
        target: &str,
        kind: OperationKind,
        mode: Option<TakeoverMode>,
        actor: &str,
    ) -> Result<OperationId, BackendError> {
        let check = self.check(target, kind)?;
        if !check.possible {
            return Err(BackendError::Refused(format!(
                "{} of {target} not possible now",
                match kind {
                    OperationKind::Takeover => "takeover",
                    OperationKind::Giveback => "giveback",
                }
            )));
        }
        let names: &[&str] = match kind {
            OperationKind::Takeover => &TAKEOVER_STEPS,
            OperationKind::Giveback => &GIVEBACK_STEPS,
        };
        let immediate = mode == Some(TakeoverMode::Immediate);
        let mut inner = self.inner.lock().expect("lock");
        let id = OperationId(inner.next_id);
        inner.next_id += 1;
        inner.active = Some(id);
        let progress = Progress {
            id,
            kind,
            target: target.to_string(),
            actor: actor.to_string(),
            steps: names
                .iter()
                .map(|n| Step {
                    name: n.to_string(),
                    state: if immediate && IMMEDIATE_SKIPS.contains(n) {
                        StepState::Skipped
                    } else {
                        StepState::Pending
                    },
                    detail: String::new(),
                    at_unix_ms: None,
                })
                .collect(),
            outcome: None,
        };
        let (tx, _) = watch::channel(progress);
        inner.operations.insert(id, tx);
        let partner = Self::partner(target);
        match kind {
            OperationKind::Takeover => {
                inner.states.insert(partner.into(), NodeState::TakingOver);
                inner.states.insert(target.into(), NodeState::Draining);
            }
            OperationKind::Giveback => {
                inner.states.insert(partner.into(), NodeState::GivingBack);
            }
        }
        Self::push_event(
            &mut inner,
            target,
            actor,
            format!("{kind:?} {id} started ({mode:?})"),
        );
        drop(inner);
        self.operations_started.fetch_add(1, Ordering::SeqCst);
        let me = Arc::clone(self);
        let target = target.to_string();
        tokio::spawn(async move { me.run(id, kind, target).await });
        Ok(id)
    }

    async fn run(self: Arc<Self>, id: OperationId, kind: OperationKind, target: String) {
        let tx = {
            let inner = self.inner.lock().expect("lock");
            inner.operations[&id].clone()
        };
        let steps_count = tx.borrow().steps.len();
        let fail_at = self.fail_at.lock().expect("lock").clone();
        let mut failed = None;
        for i in 0..steps_count {
            if tx.borrow().steps[i].state == StepState::Skipped {
                continue;
            }
            tx.send_modify(|p| {
                p.steps[i].state = StepState::Running;
                p.steps[i].at_unix_ms = Some(now_ms());
            });
            tokio::time::sleep(self.step_interval).await;
            let name = tx.borrow().steps[i].name.clone();
            let fail = fail_at.as_deref() == Some(name.as_str());
            tx.send_modify(|p| {
                p.steps[i].state = if fail {
                    StepState::Failed
                } else {
                    StepState::Done
                };
                p.steps[i].detail = if fail {
                    "fake failure".into()
                } else {
                    "ok".into()
                };
                p.steps[i].at_unix_ms = Some(now_ms());
            });
            if fail {
                failed = Some(format!("step {name:?} failed"));
                break;
            }
        }
        let mut inner = self.inner.lock().expect("lock");
        let partner = Self::partner(&target);
        let (t, p) = match (&failed, kind) {
            (None, OperationKind::Takeover) => {
                (NodeState::WaitingForGiveback, NodeState::InTakeover)
            }
            (None, OperationKind::Giveback) | (Some(_), OperationKind::Takeover) => {
                (NodeState::Normal, NodeState::Normal)
            }
            (Some(_), OperationKind::Giveback) => {
                (NodeState::WaitingForGiveback, NodeState::InTakeover)
            }
        };
        inner.states.insert(target.clone(), t);
        inner.states.insert(partner.to_string(), p);
        inner.active = None;
        let message = match &failed {
            None => format!("{kind:?} {id} succeeded"),
            Some(r) => format!("{kind:?} {id} failed: {r}"),
        };
        Self::push_event(&mut inner, &target, "system", message);
        drop(inner);
        tx.send_modify(|p| {
            p.outcome = Some(match failed {
                None => Outcome::Succeeded,
                Some(reason) => Outcome::Failed { reason },
            })
        });
    }
}

/// Serves the console over a fresh fake pair on 127.0.0.1 (any port): its base URL and the
/// fake.
pub async fn serve_fake(
    step_interval: Duration,
    config: crate::ConsoleConfig,
) -> (String, Arc<FakeBackend>) {
    let fake = FakeBackend::new(step_interval);
    let app = crate::router(Arc::new(FakeHandle(Arc::clone(&fake))), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let url = format!("http://{}", listener.local_addr().expect("bound address"));
    tokio::spawn(crate::serve(listener, app));
    (url, fake)
}

/// Wrapper so `Arc<FakeBackend>` methods that need `self: &Arc<Self>` can be called from the
/// trait (which only has `&self`).
pub struct FakeHandle(pub Arc<FakeBackend>);

#[async_trait]
impl ConsoleBackend for FakeHandle {
    async fn status(&self) -> Result<PairStatus, BackendError> {
        let inner = self.0.inner.lock().expect("lock");
        let a = inner.states["a"];
        let b = inner.states["b"];
        Ok(PairStatus {
            nodes: vec![
                FakeBackend::node_status("a", a, b),
                FakeBackend::node_status("b", b, a),
            ],
            local: "a".into(),
            active_operation: inner.active,
        })
    }

    async fn check_takeover(&self, target: &str) -> Result<CheckResult, BackendError> {
        self.0.check(target, OperationKind::Takeover)
    }

    async fn start_takeover(
        &self,
        target: &str,
        mode: TakeoverMode,
        actor: &str,
    ) -> Result<OperationId, BackendError> {
        self.0
            .start(target, OperationKind::Takeover, Some(mode), actor)
    }

    async fn check_giveback(&self, target: &str) -> Result<CheckResult, BackendError> {
        self.0.check(target, OperationKind::Giveback)
    }

    async fn start_giveback(&self, target: &str, actor: &str) -> Result<OperationId, BackendError> {
        self.0.start(target, OperationKind::Giveback, None, actor)
    }

    async fn events(&self, since: u64, limit: usize) -> Result<Vec<Event>, BackendError> {
        let inner = self.0.inner.lock().expect("lock");
        Ok(inner
            .events
            .iter()
            .filter(|e| e.seq > since)
            .take(limit)
            .cloned()
            .collect())
    }

    fn watch_operation(&self, id: OperationId) -> Option<watch::Receiver<Progress>> {
        let inner = self.0.inner.lock().expect("lock");
        inner.operations.get(&id).map(|tx| tx.subscribe())
    }

    fn render_metrics(&self, out: &mut String) -> std::fmt::Result {
        self.0.metrics.encode(out)
    }
}
