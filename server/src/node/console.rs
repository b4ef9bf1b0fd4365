//! The node's side of the operator console: [`ConsoleBackend`] over the node's real state,
//! the metrics the node feeds, the event log, and the console's HTTP listener.
//!
//! A poller samples the node once a second: it moves the NFS service's, the log's and the
//! CP driver's counters into the Prometheus [`Metrics`] (they expose totals, not events, so
//! the poller adds the deltas), keeps a bounded window of throughput samples for the charts,
//! and turns changes it sees (mirror state, CP failures) into events.
//!
//! In an HA pair, check, takeover and giveback requests go to the takeover machine and
//! become operations ([`super::operations`]) whose progress follows the machine's notes;
//! the notes also become events. Outside a pair they are refused with that reason. The
//! partner's card is what the partner's own console reports when `console.partner_url` is
//! configured (polled over HTTP with a token), else what its heartbeats say.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use nvlog::{MirrorState, Nvlog};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use twinfiler_nfs::stats::NFS3_PROC_NAMES;
use web_ui::metrics::DirectionLabels;
use web_ui::{
    Aggregate, BackendError, CheckResult, ConsoleBackend, CpStatus, Disk, DiskState, Event, Export,
    Health, MirrorStatus, ModuleHealth, NodeState, NodeStatus, NvramStatus, OperationId,
    PairStatus, Progress, Sample, TakeoverMode,
};

use super::ha::{HaShared, HaSnapshot};
use super::identity::Published;
use super::operations::{node_state, refuses_another_request, Operations};
use super::NodeError;
use crate::config::NodeConfig;
use cluster::takeover::StateCode;

/// How often the poller samples the node.
const POLL_INTERVAL_MS: u64 = 1_000;
/// Throughput samples kept for the charts (at one per poll: five minutes).
const SAMPLES_MAX: usize = 300;
/// Events kept; older ones are dropped (the log is for the operator, not an audit trail).
const EVENTS_MAX: usize = 1_000;
/// Why takeover and giveback are refused outside a pair.
pub const TAKEOVER_UNAVAILABLE: &str =
    "not part of an HA pair: this node has no [cluster] section (partner, interconnect), so \
     takeover and giveback are not possible";
/// A partner status older than this is not shown (the partner is "not connected").
const PARTNER_STALE_MS: u64 = 3_000;
/// One request to the partner's console, at most.
const PARTNER_REQUEST_MS_MAX: u64 = 800;
/// Longest partner token file read.
const PARTNER_TOKEN_BYTES_MAX: u64 = 4096;
/// Actor name of events the node raises by itself.
const SYSTEM_ACTOR: &str = "system";

/// The parts of a node the console reads (all cheap clones of shared handles).
#[derive(Clone)]
pub(super) struct NodeView {
    pub config: NodeConfig,
    pub log: Nvlog,
    /// What each identity publishes while mounted here, by node id (index 0 only outside
    /// a pair).
    pub published: Vec<Arc<Mutex<Option<Published>>>>,
    /// Which of `published` is this node's own identity.
    pub own_index: usize,
    /// The HA state, in a pair.
    pub ha: Option<Arc<HaShared>>,
    /// The node's metrics (the NFS program records calls into them from the start).
    pub metrics: Arc<web_ui::Metrics>,
}

impl NodeView {
    fn identity(&self, index: usize) -> Option<Published> {
        self.published
            .get(index)?
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn own(&self) -> Option<Published> {
        self.identity(self.own_index)
    }
}

/// The node's console backend.
pub struct NodeConsole {
    view: NodeView,
    metrics: Arc<web_ui::Metrics>,
    ops: Option<Arc<Operations>>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    events: VecDeque<Event>,
    next_seq: u64,
    samples: VecDeque<Sample>,
    /// Totals at the last poll (the poller adds the difference to the metrics).
    last: Totals,
    last_mirror: Option<String>,
    last_cp_error: Option<String>,
    /// The partner's own card as its console last reported it, and when.
    partner: Option<(std::time::Instant, NodeStatus)>,
    /// Why the last partner poll failed, if it did.
    partner_error: Option<String>,
    /// Takeovers and givebacks, timed for the metrics.
    ops: OperationTimer,
}

/// Times takeovers and givebacks from the takeover machine's notes (sans-IO: the caller
/// passes the time of each note).
#[derive(Default)]
struct OperationTimer {
    /// Operations that ended since the last metrics poll.
    ended: Vec<web_ui::metrics::HaOperationEnded>,
    /// The operation in progress: kind, mode, since.
    running: Option<(
        web_ui::OperationKind,
        web_ui::metrics::HaMode,
        std::time::Instant,
    )>,
    /// The running attempt's countdown expired: a forced takeover that follows is the
    /// fallback, not an operator's `--immediate`.
    countdown_expired: bool,
}

impl OperationTimer {
    fn on_note(&mut self, note: &cluster::takeover::Note, now: std::time::Instant) {
        use cluster::takeover::{Mode, Note};
        use web_ui::metrics::{HaMode, HaOperationEnded};
        use web_ui::OperationKind;
        match *note {
            Note::CountdownExpired => self.countdown_expired = true,
            Note::TakeoverStarted { mode, .. } => {
                // The machine has one forced mode for both ways of getting there.
                let mode = match mode {
                    Mode::Graceful | Mode::Resume | Mode::Recover => HaMode::Graceful,
                    Mode::Forced if self.countdown_expired => HaMode::Forced,
                    Mode::Forced => HaMode::Immediate,
                    Mode::Hard => HaMode::Hard,
                };
                self.countdown_expired = false;
                self.running = Some((OperationKind::Takeover, mode, now));
            }
            Note::State(StateCode::GivingBack) => {
                self.running = Some((OperationKind::Giveback, HaMode::Graceful, now));
            }
            note if self.running.is_some() && refuses_another_request(&note) => {}
            Note::State(StateCode::InTakeover) | Note::GivebackComplete(_) | Note::Aborted(_) => {
                self.countdown_expired = false;
                if let Some((kind, mode, since)) = self.running.take() {
                    self.ended.push(HaOperationEnded {
                        kind,
                        mode,
                        succeeded: !matches!(note, Note::Aborted(_)),
                        seconds: now.saturating_duration_since(since).as_secs_f64(),
                    });
                }
            }
            _ => {}
        }
    }
}

/// Counter totals read at one poll.
#[derive(Clone, Copy, Default)]
struct Totals {
    ops_by_proc: [u64; NFS3_PROC_NAMES.len()],
    bytes_read: u64,
    bytes_written: u64,
    drc_hits: u64,
    cp_count: u64,
    /// Interconnect round trips measured, and their sum in microseconds.
    rtt_samples: u64,
    rtt_sum_us: u64,
}

/// The `link` label of the interconnect metrics (the machine counts for all links together).
const INTERCONNECT_LABEL: &str = "interconnect";

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The operator's words for a mirror state.
fn mirror_label(s: &MirrorState) -> String {
    match s {
        MirrorState::Standalone => "standalone".into(),
        MirrorState::Syncing => "syncing".into(),
        MirrorState::InSync => "in sync".into(),
        MirrorState::Degraded { reason } => format!("degraded: {reason}"),
    }
}

impl NodeConsole {
    pub(super) fn new(view: NodeView) -> Arc<NodeConsole> {
        // A node has an HA driver only with a [cluster] section.
        let ops = view
            .ha
            .as_ref()
            .zip(view.config.cluster.as_ref())
            .map(|(ha, c)| Operations::new(ha.clone(), c.takeover_config()));
        let console = Arc::new(NodeConsole {
            metrics: view.metrics.clone(),
            ops,
            view,
            inner: Mutex::new(Inner::default()),
        });
        let name = console.view.config.name.clone();
        console.metrics.set_ha_state(&name, "normal");
        console.push_event(SYSTEM_ACTOR, "node started".to_string());
        console.poll();
        console
    }

    /// The metrics the node updates.
    pub fn metrics(&self) -> &Arc<web_ui::Metrics> {
        &self.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an event (the oldest goes beyond [`EVENTS_MAX`]).
    pub fn push_event(&self, actor: &str, message: String) {
        tracing::info!(actor, event = %message, "console event");
        let mut inner = self.lock();
        inner.next_seq += 1;
        let event = Event {
            seq: inner.next_seq,
            at_unix_ms: now_unix_ms(),
            node: self.view.config.name.clone(),
            actor: actor.to_string(),
            message,
        };
        inner.events.push_back(event);
        while inner.events.len() > EVENTS_MAX {
            inner.events.pop_front();
        }
    }

    /// One sample: metrics deltas, a throughput sample, events for changes.
    fn poll(&self) {
        let own = self.view.own();
        let stats = own.as_ref().map(|p| p.service.stats()).unwrap_or_default();
        let log = self.view.log.status();
        let (cp_count, cp_last, cp_error) = match &own {
            Some(p) => {
                let r = p.cp_record.lock().unwrap_or_else(|e| e.into_inner());
                (r.count, r.last.clone(), r.last_error.clone())
            }
            None => (0, None, None),
        };
        let rtt = self.view.ha.as_ref().map(|ha| ha.snapshot().rtt);
        let now = Totals {
            rtt_samples: rtt.as_ref().map_or(0, |r| r.samples),
            rtt_sum_us: rtt.as_ref().map_or(0, |r| r.sum_us),
            ops_by_proc: stats.ops_by_proc,
            bytes_read: stats.bytes_read,
            bytes_written: stats.bytes_written,
            drc_hits: stats.drc_hits,
            cp_count,
        };
        let m = &self.metrics;
        let mirror = mirror_label(&log.mirror);
        let mut events = Vec::new();
        let mut inner = self.lock();
        let last = inner.last;
        let mut ops = 0u64;
        // Calls by procedure and status are counted by `MeteredProgram` as they finish; the
        // poller only needs the total for the throughput samples.
        for p in 0..NFS3_PROC_NAMES.len() {
            ops += now.ops_by_proc[p].saturating_sub(last.ops_by_proc[p]);
        }
        let read = now.bytes_read.saturating_sub(last.bytes_read);
        let written = now.bytes_written.saturating_sub(last.bytes_written);
        for (direction, d) in [("read", read), ("write", written)] {
            m.nfs_bytes
                .get_or_create(&DirectionLabels {
                    direction: direction.into(),
                })
                .inc_by(d);
        }
        m.nfs_drc_hits
            .inc_by(now.drc_hits.saturating_sub(last.drc_hits));
        // Latencies are per group commit (one persist and one mirror round trip serve
        // every append in it), not per append.
        let latencies = self.view.log.take_latencies();
        let mut sample = web_ui::metrics::PollSample {
            nvlog: Some(web_ui::metrics::NvlogSample {
                appends_total: log.appends,
                append_bytes_total: self.view.log.bytes_appended(),
                persist_seconds: latencies.persist_seconds,
                mirror_seconds: latencies.mirror_seconds,
                mirror_lag_bytes: log.mirror_lag_bytes,
                mirror_degraded: matches!(log.mirror, MirrorState::Degraded { .. }),
            }),
            ha_operations_ended: std::mem::take(&mut inner.ops.ended),
            ..Default::default()
        };
        if let Some(ha) = &self.view.ha {
            let snap = ha.snapshot();
            let me = usize::from(ha.me.0);
            sample
                .ha_states
                .push((ha.names[me].clone(), node_state(snap.state)));
            let partner_state = match (snap.interconnect_alive, snap.partner) {
                (true, Some(hb)) => node_state(hb.state),
                _ => NodeState::Down,
            };
            sample
                .ha_states
                .push((ha.names[1 - me].clone(), partner_state));
            // The machine counts misses and round trips for the pair, not per link: one
            // sample, with the mean round trip of this interval (none if none was measured).
            let samples = now.rtt_samples.saturating_sub(last.rtt_samples);
            let sum_us = now.rtt_sum_us.saturating_sub(last.rtt_sum_us);
            sample.links = vec![web_ui::metrics::LinkSample {
                name: INTERCONNECT_LABEL.into(),
                heartbeat_misses_total: snap.heartbeat_misses,
                heartbeat_rtt_seconds: if samples > 0 {
                    vec![sum_us as f64 / samples as f64 / 1e6]
                } else {
                    vec![]
                },
            }];
        }
        m.record_poll(&sample);
        let new_cps = now.cp_count.saturating_sub(last.cp_count);
        if new_cps > 0 {
            m.cp.inc_by(new_cps);
            // Only the last CP's figures are kept between polls; more CPs in one interval
            // are counted but only the last is measured.
            if let Some(cp) = &cp_last {
                m.cp_seconds.observe(cp.duration_us as f64 / 1e6);
                m.cp_bytes.inc_by(cp.bytes);
            }
        }
        for p in (0..self.view.published.len()).filter_map(|i| self.view.identity(i)) {
            let group = p.group.status();
            let aggr = group.uuid.to_string();
            for d in &group.disks {
                m.set_disk_state(&aggr, &disk_name(d), disk_state(d.state).0);
            }
            for s in &group.spares {
                m.set_disk_state(&aggr, &s.path.display().to_string(), "spare");
            }
            let ratio =
                |p: &Option<raid4::ProgressStatus>| p.as_ref().map_or(0.0, |p| p.percent / 100.0);
            m.raid_rebuild_progress_ratio
                .get_or_create(&web_ui::metrics::AggregateLabels {
                    aggregate: aggr.clone(),
                })
                .set(ratio(&group.rebuild));
            m.raid_scrub_progress_ratio
                .get_or_create(&web_ui::metrics::AggregateLabels { aggregate: aggr })
                .set(ratio(&group.scrub));
        }
        let interval_s = POLL_INTERVAL_MS as f64 / 1e3;
        inner.samples.push_back(Sample {
            at_unix_ms: now_unix_ms(),
            ops_per_s: ops as f64 / interval_s,
            bytes_per_s: (read + written) as f64 / interval_s,
        });
        while inner.samples.len() > SAMPLES_MAX {
            inner.samples.pop_front();
        }
        if inner.last_mirror.as_deref() != Some(mirror.as_str()) {
            events.push(format!("NVRAM mirror: {mirror}"));
            inner.last_mirror = Some(mirror);
        }
        if cp_error.is_some() && inner.last_cp_error != cp_error {
            events.push(format!("CP failed: {}", cp_error.as_deref().unwrap_or("")));
            inner.last_cp_error = cp_error;
        }
        inner.last = now;
        drop(inner);
        for e in events {
            self.push_event(SYSTEM_ACTOR, e);
        }
    }

    /// This node's card, from its real state.
    fn local_status(&self) -> NodeStatus {
        let v = &self.view;
        let name = v.config.name.clone();
        let log = v.log.status();
        let own = v.own();
        let snap = v.ha.as_ref().map(|ha| ha.snapshot());
        let in_flight = own.as_ref().map_or(0, |p| p.service.in_flight());
        let mut modules = vec![ModuleHealth {
            name: "nfs".into(),
            health: if own.is_some() {
                Health::Ok
            } else {
                Health::Unknown
            },
            detail: match &own {
                Some(_) => format!("{in_flight} calls in flight"),
                None => "own identity not served here now".into(),
            },
        }];
        let (mirror_health, mirror_detail) = match &log.mirror {
            MirrorState::Standalone => (Health::Ok, "standalone (not mirrored)".to_string()),
            MirrorState::InSync => (Health::Ok, "mirror in sync".to_string()),
            MirrorState::Syncing => (Health::Degraded, "mirror syncing".to_string()),
            MirrorState::Degraded { reason } => {
                (Health::Degraded, format!("mirror degraded: {reason}"))
            }
        };
        modules.push(ModuleHealth {
            name: "nvlog".into(),
            health: mirror_health,
            detail: format!("{mirror_detail}; {}", log.persist_mode),
        });
        if let Some(p) = &own {
            let group = p.group.status();
            let raid_health = match group.state {
                raid4::GroupState::Normal => Health::Ok,
                raid4::GroupState::Degraded | raid4::GroupState::Rebuilding => Health::Degraded,
                raid4::GroupState::Offline => Health::Failed,
            };
            modules.push(ModuleHealth {
                name: "raid4".into(),
                health: raid_health,
                detail: format!("{:?}", group.state),
            });
            let cp = p.cp_record.lock().unwrap_or_else(|e| e.into_inner());
            modules.push(ModuleHealth {
                name: "cp".into(),
                health: if cp.last_error.is_some() {
                    Health::Failed
                } else {
                    Health::Ok
                },
                detail: match (&cp.last_error, &cp.last) {
                    (Some(e), _) => format!("CP failed: {e}"),
                    (None, Some(c)) => {
                        format!("{} CPs since start, generation {}", cp.count, c.generation)
                    }
                    (None, None) => "no CP since start".into(),
                },
            });
        }
        modules.push(match &snap {
            Some(s) => ModuleHealth {
                name: "interconnect".into(),
                health: match (s.links_up, s.interconnect_alive) {
                    (0, _) | (_, false) => Health::Failed,
                    (up, _) if up < s.links => Health::Degraded,
                    _ => Health::Ok,
                },
                detail: format!(
                    "{}/{} links up; partner mailbox {}",
                    s.links_up,
                    s.links,
                    if s.partner_mailbox_alive {
                        "alive"
                    } else {
                        "silent"
                    }
                ),
            },
            None => ModuleHealth {
                name: "interconnect".into(),
                health: Health::Unknown,
                detail: "not part of an HA pair".into(),
            },
        });
        let links = snap.as_ref().map_or_else(Vec::new, |s| {
            (0..s.links)
                .map(|i| web_ui::Link {
                    name: format!("ic{i}"),
                    up: i < s.links_up,
                    heartbeat_rtt_us: (s.rtt.mean_us() > 0).then(|| s.rtt.mean_us()),
                    // Heartbeats go out on every link and the first copy counts: a miss
                    // is the pair's, shown on each link.
                    heartbeat_misses: s.heartbeat_misses,
                })
                .collect()
        });
        let mut aggregates = Vec::new();
        let mut exports = Vec::new();
        let mut clients = Vec::new();
        for i in 0..v.published.len() {
            let Some(p) = v.identity(i) else { continue };
            clients.extend(
                p.rpc
                    .iter()
                    .flat_map(|r| r.peers())
                    .map(|peer| web_ui::Client {
                        address: peer.addr.ip().to_string(),
                        protocol: "nfs3".into(),
                    }),
            );
            let group = p.group.status();
            let home = v.ha.as_ref().map_or(name.clone(), |ha| ha.names[i].clone());
            let aggregate = group.uuid.to_string();
            let mut disks: Vec<Disk> = group
                .disks
                .iter()
                .map(|d| Disk {
                    name: disk_name(d),
                    // raid4 does not export its role type; its Debug names are the words.
                    role: format!("{:?}", d.role).to_lowercase(),
                    state: disk_state(d.state).1,
                })
                .collect();
            disks.extend(group.spares.iter().map(|s| Disk {
                name: s.path.display().to_string(),
                role: "spare".into(),
                state: DiskState::Spare,
            }));
            let address = p
                .listeners
                .map_or("-".to_string(), |l| l.nfs_tcp.ip().to_string());
            exports.extend(p.service.exports().iter().map(|e| Export {
                path: e.path.clone(),
                aggregate: aggregate.clone(),
                address: address.clone(),
            }));
            aggregates.push(Aggregate {
                name: aggregate,
                home,
                served_by: Some(name.clone()),
                disks,
                rebuild_progress: group.rebuild.as_ref().map(|p| p.percent / 100.0),
            });
        }
        // One line per client, however many connections (portmap, MOUNT, NFS) it holds.
        clients.sort_by(|x, y| x.address.cmp(&y.address));
        clients.dedup();
        let cp_last = own.as_ref().and_then(|p| {
            p.cp_record
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .last
                .clone()
        });
        let in_sync = matches!(log.mirror, MirrorState::InSync);
        let (state, takeover_possible, takeover_blockers) = match &snap {
            Some(s) => {
                // "Takeover possible" on a card means: this node can be taken over by its
                // partner — what the partner's check needs from us: our log in its mirror.
                let mut blockers: Vec<String> = Vec::new();
                if !s.interconnect_alive {
                    blockers.push("interconnect down: no heartbeat from the partner".into());
                }
                if !in_sync {
                    blockers.push(nvlog::TAKEOVER_IMPOSSIBLE.into());
                }
                if s.state != StateCode::Normal {
                    blockers.push(format!("this node is {}", node_state(s.state).label()));
                }
                (node_state(s.state), blockers.is_empty(), blockers)
            }
            None => (
                NodeState::Normal,
                false,
                vec![TAKEOVER_UNAVAILABLE.to_string()],
            ),
        };
        NodeStatus {
            name: name.clone(),
            state,
            modules,
            links,
            mirror: MirrorStatus {
                in_sync,
                lag_bytes: log.mirror_lag_bytes,
                degraded_reason: match &log.mirror {
                    MirrorState::Degraded { reason } => Some(reason.clone()),
                    MirrorState::Standalone => Some("standalone: no partner configured".into()),
                    MirrorState::Syncing => Some("syncing".into()),
                    MirrorState::InSync => None,
                },
            },
            takeover_possible,
            takeover_blockers,
            aggregates,
            nvram: NvramStatus {
                used_bytes: log.half_used_bytes[0] + log.half_used_bytes[1],
                capacity_bytes: log.half_capacity_bytes * 2,
            },
            last_cp: cp_last.as_ref().map(|c| CpStatus {
                generation: c.generation,
                at_unix_ms: unix_ms(c.at),
                duration_ms: c.duration_us / 1_000,
                bytes: c.bytes,
            }),
            exports,
            clients,
            samples: self.lock().samples.iter().cloned().collect(),
        }
    }

    /// Records the outcome of one poll of the partner's console (events on changes).
    fn note_partner(&self, outcome: Result<NodeStatus, String>) {
        let mut inner = self.lock();
        let was_connected = inner.partner_error.is_none() && inner.partner.is_some();
        let message = match outcome {
            Ok(status) => {
                inner.partner = Some((std::time::Instant::now(), status));
                inner.partner_error = None;
                (!was_connected).then(|| "partner console reachable".to_string())
            }
            Err(e) => {
                let first = inner.partner_error.is_none();
                inner.partner_error = Some(e.clone());
                first.then(|| format!("partner console not reachable: {e}"))
            }
        };
        drop(inner);
        if let Some(m) = message {
            self.push_event(SYSTEM_ACTOR, m);
        }
    }

    /// The partner's card: what its console reported (fresh), else "unknown / not connected".
    ///
    /// In a pair whose machine hears no heartbeat, the card comes from the machine even when
    /// the partner's console answers: a restarted partner's console says "waiting for
    /// giveback" a moment before its first heartbeat arrives, and a giveback asked in that
    /// moment is refused ("interconnect down"). The card shows what this node can act on.
    fn partner_status(&self) -> Option<NodeStatus> {
        let console = self.view.config.console.as_ref();
        let polled = console.and_then(|c| c.partner_url.clone());
        let snap = self.view.ha.as_ref().map(|ha| (ha, ha.snapshot()));
        if snap.as_ref().is_none_or(|(_, s)| s.interconnect_alive) {
            let inner = self.lock();
            if let Some((at, status)) = &inner.partner {
                if at.elapsed() < Duration::from_millis(PARTNER_STALE_MS) {
                    return Some(status.clone());
                }
            }
        }
        if let Some((ha, snap)) = &snap {
            return Some(heartbeat_card(ha, snap));
        }
        let why = match (&polled, self.lock().partner_error.clone()) {
            (Some(url), Some(e)) => format!("its console {url}: {e}"),
            (Some(url), None) => format!("its console {url} has not answered yet"),
            (None, _) => "no `console.partner_url` configured".to_string(),
        };
        if polled.is_none() && self.view.config.mirror.is_none() {
            return None;
        }
        let mut card = empty_card("partner", NodeState::Down);
        card.modules[0].detail = format!("unknown / not connected ({why}; not part of an HA pair)");
        Some(card)
    }

    /// Times takeovers and givebacks from the machine's notes, for the metrics.
    fn track_operation(&self, note: &cluster::takeover::Note) {
        self.lock().ops.on_note(note, std::time::Instant::now());
    }

    fn operations(&self) -> Result<&Arc<Operations>, BackendError> {
        self.ops
            .as_ref()
            .ok_or_else(|| BackendError::Refused(TAKEOVER_UNAVAILABLE.to_string()))
    }

    fn known_node(&self, target: &str) -> Result<(), BackendError> {
        if let Some(ops) = &self.ops {
            return ops.node(target).map(|_| ());
        }
        let partner_name = self.lock().partner.as_ref().map(|(_, p)| p.name.clone());
        if target == self.view.config.name
            || target == "partner"
            || partner_name.as_deref() == Some(target)
        {
            Ok(())
        } else {
            Err(BackendError::UnknownNode(target.to_string()))
        }
    }
}

/// The partner's card from its heartbeats (when its console is not polled or stale).
fn heartbeat_card(ha: &HaShared, snap: &HaSnapshot) -> NodeStatus {
    let name = ha.names[usize::from(1 - ha.me.0)].clone();
    let Some(hb) = snap.partner.filter(|_| snap.interconnect_alive) else {
        let mut card = empty_card(&name, NodeState::Down);
        card.modules[0].detail = format!(
            "no heartbeat; partner mailbox {}",
            if snap.partner_mailbox_alive {
                "alive (interconnect cut?)"
            } else {
                "silent"
            }
        );
        card.takeover_blockers = std::iter::once("the partner is not connected".to_string())
            .chain(
                snap.hard_takeover_blockers
                    .iter()
                    .map(|r| format!("hard takeover blocked: {}", r.describe())),
            )
            .collect();
        return card;
    };
    let mut card = empty_card(&name, node_state(hb.state));
    card.modules = cluster::health::Module::ALL
        .iter()
        .map(|m| ModuleHealth {
            name: format!("{m:?}").to_lowercase(),
            health: match hb.health.get(*m) {
                cluster::health::ModuleHealth::Ok => Health::Ok,
                cluster::health::ModuleHealth::Degraded => Health::Degraded,
                cluster::health::ModuleHealth::Failed => Health::Failed,
            },
            detail: "from its heartbeat".into(),
        })
        .collect();
    card.mirror.in_sync = hb.mirror_in_sync;
    card.mirror.degraded_reason = (!hb.mirror_in_sync).then(|| "not in sync".to_string());
    let blockers: Vec<String> = snap
        .takeover_impossible
        .iter()
        .map(|r| r.describe().to_string())
        .collect();
    card.takeover_possible = blockers.is_empty();
    card.takeover_blockers = blockers;
    card
}

fn empty_card(name: &str, state: NodeState) -> NodeStatus {
    NodeStatus {
        name: name.to_string(),
        state,
        modules: vec![ModuleHealth {
            name: "interconnect".into(),
            health: Health::Unknown,
            detail: String::new(),
        }],
        links: Vec::new(),
        mirror: MirrorStatus {
            in_sync: false,
            lag_bytes: 0,
            degraded_reason: Some("unknown".into()),
        },
        takeover_possible: false,
        takeover_blockers: vec![TAKEOVER_UNAVAILABLE.to_string()],
        aggregates: Vec::new(),
        nvram: NvramStatus {
            used_bytes: 0,
            capacity_bytes: 0,
        },
        last_cp: None,
        exports: Vec::new(),
        clients: Vec::new(),
        samples: Vec::new(),
    }
}

fn disk_name(d: &raid4::DiskStatus) -> String {
    d.path.as_ref().map_or_else(
        || format!("position {}", d.position),
        |p| p.display().to_string(),
    )
}

/// A RAID disk state as the metric label and the console's state.
fn disk_state(s: raid4::DiskState) -> (&'static str, DiskState) {
    match s {
        raid4::DiskState::Ok => ("ok", DiskState::Ok),
        raid4::DiskState::Failed | raid4::DiskState::Missing => ("failed", DiskState::Failed),
        raid4::DiskState::Rebuilding => ("rebuilding", DiskState::Rebuilding),
    }
}

#[async_trait]
impl ConsoleBackend for NodeConsole {
    async fn status(&self) -> Result<PairStatus, BackendError> {
        let mut nodes = vec![self.local_status()];
        nodes.extend(self.partner_status());
        if let Some(ha) = &self.view.ha {
            // Stable order: node 0 first.
            if ha.me.0 == 1 {
                nodes.reverse();
            }
        }
        Ok(PairStatus {
            nodes,
            local: self.view.config.name.clone(),
            active_operation: self.ops.as_ref().and_then(|o| o.active()),
        })
    }

    async fn check_takeover(&self, target: &str) -> Result<CheckResult, BackendError> {
        self.known_node(target)?;
        let ops = self.operations()?;
        ops.check_takeover(ops.node(target)?).await
    }

    async fn start_takeover(
        &self,
        target: &str,
        mode: TakeoverMode,
        actor: &str,
    ) -> Result<OperationId, BackendError> {
        self.known_node(target)?;
        let ops = self.operations().inspect_err(|_| {
            self.push_event(
                actor,
                format!("takeover of {target} requested: refused ({TAKEOVER_UNAVAILABLE})"),
            );
        })?;
        let (countdown_ms, immediate) = match mode {
            TakeoverMode::Graceful { countdown_s } => (Some(u64::from(countdown_s) * 1_000), false),
            TakeoverMode::Immediate => (None, true),
        };
        let id = ops.start_takeover(target, ops.node(target)?, countdown_ms, immediate, actor)?;
        self.push_event(
            actor,
            format!(
                "takeover of {target} requested ({mode:?}): operation {}",
                id.0
            ),
        );
        Ok(id)
    }

    async fn check_giveback(&self, target: &str) -> Result<CheckResult, BackendError> {
        self.known_node(target)?;
        let ops = self.operations()?;
        Ok(ops.check_giveback(target, ops.node(target)?))
    }

    async fn start_giveback(&self, target: &str, actor: &str) -> Result<OperationId, BackendError> {
        self.known_node(target)?;
        let ops = self.operations()?;
        let id = ops.start_giveback(target, ops.node(target)?, actor)?;
        self.push_event(
            actor,
            format!("giveback to {target} requested: operation {}", id.0),
        );
        Ok(id)
    }

    async fn events(&self, since: u64, limit: usize) -> Result<Vec<Event>, BackendError> {
        Ok(self
            .lock()
            .events
            .iter()
            .filter(|e| e.seq > since)
            .take(limit)
            .cloned()
            .collect())
    }

    fn watch_operation(&self, id: OperationId) -> Option<watch::Receiver<Progress>> {
        self.ops.as_ref()?.watch(id)
    }

    fn render_metrics(&self, out: &mut String) -> std::fmt::Result {
        self.metrics.encode(out)
    }
}

/// The running console: its HTTP server and the poller.
pub(super) struct Console {
    backend: Arc<NodeConsole>,
    addr: SocketAddr,
    server: JoinHandle<()>,
    poller: JoinHandle<()>,
    partner_poller: Option<JoinHandle<()>>,
    notes_forwarder: Option<JoinHandle<()>>,
}

impl Console {
    /// Binds the configured management address and starts serving and polling.
    pub async fn start(view: NodeView) -> Result<Option<Console>, NodeError> {
        let Some(section) = view.config.console.clone() else {
            return Ok(None);
        };
        let config = section
            .console_config()
            .map_err(|e| NodeError::Service(format!("console: {e}")))?;
        let listener = tokio::net::TcpListener::bind(section.listen)
            .await
            .map_err(|source| NodeError::Listen {
                what: "console",
                addr: section.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|e| NodeError::Io {
            what: "console listener address".into(),
            source: e,
        })?;
        let partner = match (&section.partner_url, &section.partner_token_file) {
            (Some(url), Some(file)) => Some((url.clone(), read_partner_token(file)?)),
            _ => None,
        };
        let backend = NodeConsole::new(view);
        let app = web_ui::router(backend.clone(), config);
        let partner_poller = partner.map(|(url, token)| {
            let backend = backend.clone();
            tokio::spawn(poll_partner(backend, url, token))
        });
        let notes_forwarder = backend.view.ha.clone().map(|ha| {
            let backend = backend.clone();
            tokio::spawn(forward_notes(backend, ha))
        });
        let server = tokio::spawn(async move {
            if let Err(e) = web_ui::serve(listener, app).await {
                tracing::error!(error = %e, "console server stopped");
            }
        });
        let poller = {
            let backend = backend.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(POLL_INTERVAL_MS));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    backend.poll();
                }
            })
        };
        tracing::info!(%addr, "console listening");
        Ok(Some(Console {
            backend,
            addr,
            server,
            poller,
            partner_poller,
            notes_forwarder,
        }))
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The backend (events from the node's own paths).
    pub fn backend(&self) -> &Arc<NodeConsole> {
        &self.backend
    }

    /// Stops serving and polling.
    pub fn stop(&self) {
        if let Some(p) = &self.partner_poller {
            p.abort();
        }
        if let Some(f) = &self.notes_forwarder {
            f.abort();
        }
        self.poller.abort();
        self.server.abort();
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Turns the takeover machine's notes into console events (heartbeat chatter and periodic
/// resends excluded).
async fn forward_notes(backend: Arc<NodeConsole>, ha: Arc<HaShared>) {
    use cluster::takeover::Note;
    let mut notes = ha.subscribe();
    let mut last_sent: Option<&'static str> = None;
    loop {
        let at = match notes.recv().await {
            Ok(at) => at,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        backend.track_operation(&at.note);
        let text = match at.note {
            Note::State(s) => format!("state: {}", node_state(s).label()),
            Note::Requested(r) => format!("request: {r:?}"),
            Note::Checked(r) if r.is_empty() => "takeover check: possible".into(),
            Note::Checked(r) => format!(
                "takeover check: impossible ({})",
                r.iter()
                    .map(|r| r.describe())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Note::Aborted(r) => format!("aborted: {}", r.describe()),
            // Resends (PLEASE_DIE, PLEASE_SHUTDOWN each interval) are logged once.
            Note::Sent(m) if last_sent == Some(m) => continue,
            Note::Sent(m) => {
                last_sent = Some(m);
                format!("sent {m}")
            }
            Note::Received(m) => format!("received {m}"),
            Note::StepDone(step, id, ok) => format!(
                "{step:?} for {}: {}",
                ha.names[usize::from(id.0)],
                if ok { "done" } else { "FAILED" }
            ),
            other => format!("{other:?}"),
        };
        backend.push_event(SYSTEM_ACTOR, text);
    }
}

/// Reads the token the partner's console accepts (the whole file, trimmed).
fn read_partner_token(path: &std::path::Path) -> Result<String, NodeError> {
    let err = |what: String| {
        NodeError::Service(format!("console partner token {}: {what}", path.display()))
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > PARTNER_TOKEN_BYTES_MAX {
        return Err(err(format!(
            "over the {PARTNER_TOKEN_BYTES_MAX}-byte bound"
        )));
    }
    let token = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(err("empty".into()));
    }
    Ok(token)
}

/// Polls the partner's console for its own card, once per [`POLL_INTERVAL_MS`].
async fn poll_partner(backend: Arc<NodeConsole>, url: String, token: String) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(PARTNER_REQUEST_MS_MAX))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            backend.note_partner(Err(format!("HTTP client: {e}")));
            return;
        }
    };
    let endpoint = format!("{}/api/v1/status", url.trim_end_matches('/'));
    let mut tick = tokio::time::interval(Duration::from_millis(POLL_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let outcome = fetch_partner(&client, &endpoint, &token).await;
        backend.note_partner(outcome);
    }
}

async fn fetch_partner(
    client: &reqwest::Client,
    endpoint: &str,
    token: &str,
) -> Result<NodeStatus, String> {
    let r = client
        .get(endpoint)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("no answer ({e})"))?;
    if !r.status().is_success() {
        return Err(format!("HTTP {}", r.status()));
    }
    let pair: PairStatus = r.json().await.map_err(|e| format!("bad status: {e}"))?;
    // Only the partner's own card: its view of us would echo our own state back.
    pair.nodes
        .into_iter()
        .find(|n| n.name == pair.local)
        .ok_or_else(|| "its status lacks its own node".to_string())
}

/// Wraps the NFS program: times every call and counts it by procedure and reply status.
pub(super) struct MeteredProgram {
    inner: Arc<dyn twinfiler_rpc::Program>,
    metrics: Arc<web_ui::Metrics>,
}

/// Longest verifier body in an RPC reply (RFC 5531: 400 bytes).
const RPC_VERIFIER_BYTES_MAX: usize = 400;

impl MeteredProgram {
    /// `inner`, metered into `metrics`.
    pub fn wrap(
        inner: Arc<dyn twinfiler_rpc::Program>,
        metrics: Arc<web_ui::Metrics>,
    ) -> Arc<dyn twinfiler_rpc::Program> {
        Arc::new(MeteredProgram { inner, metrics })
    }
}

impl twinfiler_rpc::Program for MeteredProgram {
    fn call(
        self: Arc<Self>,
        call: twinfiler_rpc::Call,
    ) -> twinfiler_rpc::BoxFuture<twinfiler_rpc::Outcome> {
        let procedure = NFS3_PROC_NAMES
            .get(call.header.proc_ as usize)
            .map_or_else(|| "UNKNOWN".to_string(), |n| n.to_uppercase());
        let started = std::time::Instant::now();
        let inner = self.inner.clone();
        Box::pin(async move {
            let outcome = inner.call(call).await;
            let status = match &outcome {
                twinfiler_rpc::Outcome::Reply(r) => reply_status(&r.head),
                twinfiler_rpc::Outcome::Drop => "DROPPED".to_string(),
            };
            self.metrics
                .observe_nfs_op(&procedure, &status, started.elapsed().as_secs_f64());
            outcome
        })
    }
}

/// The status label of an NFS reply: `NFS3_OK`, `NFS3ERR_<NAME>`, or `RPC_ERROR` for a
/// rejected call or an accept status other than SUCCESS. Never panics on short input.
fn reply_status(head: &[u8]) -> String {
    let word = |at: usize| -> Option<u32> {
        let b = head.get(at..at.checked_add(4)?)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let parse = || -> Option<String> {
        // xid, REPLY (1), MSG_ACCEPTED (0), verifier flavor, verifier length + body.
        if word(4)? != 1 || word(8)? != 0 {
            return None;
        }
        let verf_len = word(16)? as usize;
        if verf_len > RPC_VERIFIER_BYTES_MAX {
            return None;
        }
        let at = 20 + verf_len.div_ceil(4) * 4;
        if word(at)? != 0 {
            return None; // accept_stat other than SUCCESS
        }
        // NULL has no results: a successful NULL is "OK".
        let stat = word(at + 4).unwrap_or(0);
        Some(match twinfiler_proto::nfs3::NfsStat3::from_u32(stat) {
            Some(twinfiler_proto::nfs3::NfsStat3::Ok) => "NFS3_OK".to_string(),
            Some(s) => format!("NFS3ERR_{}", format!("{s:?}").to_uppercase()),
            None => format!("NFS3ERR_{stat}"),
        })
    };
    parse().unwrap_or_else(|| "RPC_ERROR".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster::takeover::{Mode, Note};
    use std::time::{Duration, Instant};
    use web_ui::metrics::HaMode;

    fn modes_of(notes: &[Note]) -> Vec<(HaMode, bool, f64)> {
        let mut timer = OperationTimer::default();
        let t0 = Instant::now();
        for (i, n) in notes.iter().enumerate() {
            timer.on_note(n, t0 + Duration::from_secs(i as u64));
        }
        timer
            .ended
            .iter()
            .map(|e| (e.mode, e.succeeded, e.seconds))
            .collect()
    }

    #[test]
    fn a_forced_takeover_is_labelled_by_how_it_came() {
        let forced = Note::TakeoverStarted {
            epoch: 1,
            mode: Mode::Forced,
        };
        let done = Note::State(StateCode::InTakeover);
        assert_eq!(
            modes_of(&[forced, done]),
            vec![(HaMode::Immediate, true, 1.0)],
            "no countdown expired: the operator asked for --immediate"
        );
        assert_eq!(
            modes_of(&[Note::CountdownExpired, forced, done]),
            vec![(HaMode::Forced, true, 1.0)]
        );
        // A request refused while a takeover runs does not end it.
        assert_eq!(
            modes_of(&[forced, Note::Aborted(cluster::takeover::Reason::Busy), done]),
            vec![(HaMode::Immediate, true, 2.0)]
        );
        // An expiry that ended in an abort does not mark the next attempt.
        assert_eq!(
            modes_of(&[
                Note::CountdownExpired,
                Note::Aborted(cluster::takeover::Reason::InterconnectDown),
                forced,
                done,
            ]),
            vec![(HaMode::Immediate, true, 1.0)]
        );
    }
}
