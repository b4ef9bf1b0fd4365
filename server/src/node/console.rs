//! The node's side of the operator console: [`ConsoleBackend`] over the node's real state,
//! the metrics the node feeds, the event log, and the console's HTTP listener.
//!
//! A poller samples the node once a second: it moves the NFS service's, the log's and the
//! CP driver's counters into the Prometheus [`Metrics`] (they expose totals, not events, so
//! the poller adds the deltas), keeps a bounded window of throughput samples for the charts,
//! and turns changes it sees (mirror state, CP failures) into events.
//!
//! The HA takeover driver does not exist yet: check, takeover and giveback requests are
//! refused with that reason, never faked. The partner's card is what the partner's own
//! console reports when `console.partner_url` is configured (polled over HTTP with a token),
//! else "unknown / not connected" (later the partner's state comes over the interconnect).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use nvlog::{MirrorState, Nvlog};
use raid4::Group;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use twinfiler_nfs::stats::NFS3_PROC_NAMES;
use twinfiler_nfs::NfsService;
use web_ui::metrics::DirectionLabels;
use web_ui::{
    Aggregate, BackendError, CheckResult, ConsoleBackend, CpStatus, Disk, DiskState, Event, Export,
    Health, MirrorStatus, ModuleHealth, NodeState, NodeStatus, NvramStatus, OperationId,
    PairStatus, Progress, Sample, TakeoverMode,
};

use super::cp::CpRecord;
use super::NodeError;
use crate::config::NodeConfig;

/// How often the poller samples the node.
const POLL_INTERVAL_MS: u64 = 1_000;
/// Throughput samples kept for the charts (at one per poll: five minutes).
const SAMPLES_MAX: usize = 300;
/// Events kept; older ones are dropped (the log is for the operator, not an audit trail).
const EVENTS_MAX: usize = 1_000;
/// Why takeover and giveback are refused until the HA driver lands.
pub const TAKEOVER_UNAVAILABLE: &str =
    "takeover driver not built yet: this node runs without the HA pair's takeover state machine \
     (interconnect, reservations); takeover and giveback are not possible";
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
    pub group: Arc<Group>,
    pub log: Nvlog,
    pub cp_record: Arc<Mutex<CpRecord>>,
    pub service: Arc<NfsService>,
    /// The node's metrics (the NFS program records calls into them from the start).
    pub metrics: Arc<web_ui::Metrics>,
}

/// The node's console backend.
pub struct NodeConsole {
    view: NodeView,
    metrics: Arc<web_ui::Metrics>,
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
}

/// Counter totals read at one poll.
#[derive(Clone, Copy, Default)]
struct Totals {
    ops_by_proc: [u64; NFS3_PROC_NAMES.len()],
    bytes_read: u64,
    bytes_written: u64,
    drc_hits: u64,
    appends: u64,
    cp_count: u64,
}

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
        let console = Arc::new(NodeConsole {
            metrics: view.metrics.clone(),
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
        let stats = self.view.service.stats();
        let log = self.view.log.status();
        let (cp_count, cp_last, cp_error) = {
            let r = self
                .view
                .cp_record
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            (r.count, r.last.clone(), r.last_error.clone())
        };
        let now = Totals {
            ops_by_proc: stats.ops_by_proc,
            bytes_read: stats.bytes_read,
            bytes_written: stats.bytes_written,
            drc_hits: stats.drc_hits,
            appends: log.appends,
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
        m.nvlog_appends
            .inc_by(now.appends.saturating_sub(last.appends));
        // nvlog exposes the lag in records (durable_seq - mirrored_seq), not bytes: the
        // bytes gauge stays 0 until it does, rather than carry the wrong unit.
        m.nvlog_mirror_degraded.set(i64::from(matches!(
            log.mirror,
            MirrorState::Degraded { .. }
        )));
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
        let group = self.view.group.status();
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
        let group = v.group.status();
        let cp = v.cp_record.lock().unwrap_or_else(|e| e.into_inner());
        let mut modules = vec![ModuleHealth {
            name: "nfs".into(),
            health: Health::Ok,
            detail: format!("{} calls in flight", v.service.in_flight()),
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
        modules.push(ModuleHealth {
            name: "interconnect".into(),
            health: Health::Unknown,
            detail: "not built yet (HA takeover driver)".into(),
        });
        let mut disks: Vec<Disk> = group
            .disks
            .iter()
            .map(|d| {
                let (_, state) = disk_state(d.state);
                Disk {
                    name: disk_name(d),
                    // raid4 does not export its role type; its Debug names are the words.
                    role: format!("{:?}", d.role).to_lowercase(),
                    state,
                }
            })
            .collect();
        disks.extend(group.spares.iter().map(|s| Disk {
            name: s.path.display().to_string(),
            role: "spare".into(),
            state: DiskState::Spare,
        }));
        let address = v.config.nfs.bind.to_string();
        let aggregate = group.uuid.to_string();
        let in_sync = matches!(log.mirror, MirrorState::InSync);
        NodeStatus {
            name: name.clone(),
            state: NodeState::Normal,
            modules,
            links: Vec::new(),
            mirror: MirrorStatus {
                in_sync,
                lag_bytes: 0,
                degraded_reason: match &log.mirror {
                    MirrorState::Degraded { reason } => Some(reason.clone()),
                    MirrorState::Standalone => Some("standalone: no partner configured".into()),
                    MirrorState::Syncing => Some("syncing".into()),
                    MirrorState::InSync => None,
                },
            },
            takeover_possible: false,
            takeover_blockers: vec![TAKEOVER_UNAVAILABLE.to_string()],
            aggregates: vec![Aggregate {
                name: aggregate.clone(),
                home: name.clone(),
                served_by: Some(name),
                disks,
                rebuild_progress: group.rebuild.as_ref().map(|p| p.percent / 100.0),
            }],
            nvram: NvramStatus {
                used_bytes: log.half_used_bytes[0] + log.half_used_bytes[1],
                capacity_bytes: log.half_capacity_bytes * 2,
            },
            last_cp: cp.last.as_ref().map(|c| CpStatus {
                generation: c.generation,
                at_unix_ms: unix_ms(c.at),
                duration_ms: c.duration_us / 1_000,
                bytes: c.bytes,
            }),
            exports: v
                .config
                .exports
                .iter()
                .map(|e| Export {
                    path: e.path.clone(),
                    aggregate: aggregate.clone(),
                    address: address.clone(),
                })
                .collect(),
            // The RPC server does not list its connections yet.
            clients: Vec::new(),
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
    fn partner_status(&self) -> Option<NodeStatus> {
        let console = self.view.config.console.as_ref();
        let polled = console.and_then(|c| c.partner_url.clone());
        {
            let inner = self.lock();
            if let Some((at, status)) = &inner.partner {
                if at.elapsed() < Duration::from_millis(PARTNER_STALE_MS) {
                    return Some(status.clone());
                }
            }
        }
        let why = match (&polled, self.lock().partner_error.clone()) {
            (Some(url), Some(e)) => format!("its console {url}: {e}"),
            (Some(url), None) => format!("its console {url} has not answered yet"),
            (None, _) => "no `console.partner_url` configured".to_string(),
        };
        if polled.is_none() && self.view.config.mirror.is_none() {
            return None;
        }
        Some(NodeStatus {
            name: "partner".into(),
            state: NodeState::Down,
            modules: vec![ModuleHealth {
                name: "interconnect".into(),
                health: Health::Unknown,
                detail: format!(
                    "unknown / not connected ({why}; the interconnect is not built yet)"
                ),
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
        })
    }

    fn known_node(&self, target: &str) -> Result<(), BackendError> {
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

    fn refuse(&self, what: &str, target: &str, actor: &str) -> BackendError {
        self.push_event(
            actor,
            format!("{what} of {target} requested: refused ({TAKEOVER_UNAVAILABLE})"),
        );
        BackendError::Refused(TAKEOVER_UNAVAILABLE.to_string())
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
        Ok(PairStatus {
            nodes,
            local: self.view.config.name.clone(),
            active_operation: None,
        })
    }

    async fn check_takeover(&self, target: &str) -> Result<CheckResult, BackendError> {
        self.known_node(target)?;
        Err(BackendError::Unavailable(TAKEOVER_UNAVAILABLE.to_string()))
    }

    async fn start_takeover(
        &self,
        target: &str,
        _mode: TakeoverMode,
        actor: &str,
    ) -> Result<OperationId, BackendError> {
        self.known_node(target)?;
        Err(self.refuse("takeover", target, actor))
    }

    async fn check_giveback(&self, target: &str) -> Result<CheckResult, BackendError> {
        self.known_node(target)?;
        Err(BackendError::Unavailable(TAKEOVER_UNAVAILABLE.to_string()))
    }

    async fn start_giveback(&self, target: &str, actor: &str) -> Result<OperationId, BackendError> {
        self.known_node(target)?;
        Err(self.refuse("giveback", target, actor))
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

    fn watch_operation(&self, _id: OperationId) -> Option<watch::Receiver<Progress>> {
        // No operation can start without the takeover driver.
        None
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
        self.poller.abort();
        self.server.abort();
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop();
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
