//! The node's Prometheus metrics: one registry, families named `twinfiler_*`.
//!
//! The node owns one [`Metrics`] (cheap to share behind an `Arc`), updates the families from
//! its hot paths (all are lock-free atomics after the first use of a label set), and calls
//! [`Metrics::encode`] from [`crate::ConsoleBackend::render_metrics`].
//!
//! Subsystems that expose totals rather than events (the NVRAM log, the HA driver, the
//! interconnect) are fed through one plain struct, [`PollSample`], which the node's poller
//! fills once per interval and hands to [`Metrics::record_poll`]: totals become counter
//! increments (the metrics remember the previous totals), new latency observations go into the
//! histograms, gauges are set.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use crate::backend::{NodeState, OperationKind};

/// Prefix of every metric name.
pub const METRIC_PREFIX: &str = "twinfiler";
/// Latency buckets start at 10 µs ...
const LATENCY_BUCKET_FIRST_S: f64 = 10e-6;
/// ... and double 20 times (up to ~10 s).
const LATENCY_BUCKETS_COUNT: u16 = 21;
/// Duration buckets for CPs and takeovers start at 1 ms ...
const DURATION_BUCKET_FIRST_S: f64 = 1e-3;
/// ... and double 18 times (up to ~4 min).
const DURATION_BUCKETS_COUNT: u16 = 19;

/// The RAID states a disk gauge is exported for (one series per state, 1 for the current).
pub const DISK_STATES: [&str; 4] = ["ok", "failed", "rebuilding", "spare"];
/// The HA states a node gauge is exported for (one series per state, 1 for the current).
pub const HA_STATES: [&str; 9] = [
    "normal",
    "takeover-check",
    "waiting-for-shutdown",
    "taking-over",
    "in-takeover",
    "draining",
    "waiting-for-giveback",
    "giving-back",
    "down",
];

/// Labels `procedure` + `status` of an NFS operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NfsOpLabels {
    /// NFSv3 procedure ("READ", "WRITE", …).
    pub procedure: String,
    /// Result ("NFS3_OK", "NFS3ERR_JUKEBOX", …).
    pub status: String,
}

/// Label `procedure`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcedureLabels {
    /// NFSv3 procedure.
    pub procedure: String,
}

/// Label `direction` ("read" / "write").
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// "read" or "write".
    pub direction: String,
}

/// Labels of a disk.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DiskLabels {
    /// Aggregate name.
    pub aggregate: String,
    /// Disk name.
    pub disk: String,
    /// One of [`DISK_STATES`].
    pub state: String,
}

/// Label `aggregate`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AggregateLabels {
    /// Aggregate name.
    pub aggregate: String,
}

/// Labels of a takeover/giveback operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// "takeover" or "giveback".
    pub kind: String,
    /// "graceful", "immediate", "forced" (countdown expired) or "hard" (heartbeat loss).
    pub mode: String,
    /// "success" or "failure".
    pub result: String,
}

/// Labels of a node's HA state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HaStateLabels {
    /// Node name.
    pub node: String,
    /// One of [`HA_STATES`].
    pub state: String,
}

/// Label `link`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkLabels {
    /// Interconnect link name.
    pub link: String,
}

/// Most latency observations one [`PollSample`] may carry per histogram: the poller drains a
/// bounded buffer; beyond this the excess is dropped (and counted as a warning) rather than
/// letting one sample grow without bound.
pub const POLL_OBSERVATIONS_MAX: usize = 100_000;

/// What the node's poller samples once per interval for the metrics (plain data, no
/// Prometheus types). Totals are cumulative since the subsystem started; a total that goes
/// down (the subsystem restarted, e.g. the log after a takeover) counts from zero again.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PollSample {
    /// The NVRAM log, if this node runs one.
    pub nvlog: Option<NvlogSample>,
    /// Each node's current HA state (this node and, when known, the partner).
    pub ha_states: Vec<(String, NodeState)>,
    /// Takeover and giveback operations that ended since the previous sample.
    pub ha_operations_ended: Vec<HaOperationEnded>,
    /// Interconnect links.
    pub links: Vec<LinkSample>,
}

/// The NVRAM log's figures for one [`PollSample`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NvlogSample {
    /// Records appended (total).
    pub appends_total: u64,
    /// Bytes appended, record headers included (total).
    pub append_bytes_total: u64,
    /// Local persist latencies observed since the previous sample, in seconds.
    pub persist_seconds: Vec<f64>,
    /// Mirror round trips (send to partner's ack) observed since the previous sample, seconds.
    pub mirror_seconds: Vec<f64>,
    /// Bytes appended locally and not yet acknowledged by the partner.
    pub mirror_lag_bytes: u64,
    /// True while the mirror is degraded (partner down, taken over, or out of sync).
    pub mirror_degraded: bool,
}

/// How an HA operation was carried out (the `mode` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaMode {
    /// Graceful takeover that drained in time, or a giveback.
    Graceful,
    /// Operator-requested immediate takeover.
    Immediate,
    /// Graceful takeover whose countdown expired (forced).
    Forced,
    /// Hard takeover after heartbeat loss.
    Hard,
}

impl HaMode {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            HaMode::Graceful => "graceful",
            HaMode::Immediate => "immediate",
            HaMode::Forced => "forced",
            HaMode::Hard => "hard",
        }
    }
}

/// One takeover or giveback that ended.
#[derive(Clone, Debug, PartialEq)]
pub struct HaOperationEnded {
    /// Takeover or giveback.
    pub kind: OperationKind,
    /// How it was carried out.
    pub mode: HaMode,
    /// True when it succeeded.
    pub succeeded: bool,
    /// From request to outcome, in seconds.
    pub seconds: f64,
}

/// One interconnect link's figures for one [`PollSample`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkSample {
    /// Link name ("ic0"), or "interconnect" for figures the node keeps for all links.
    pub name: String,
    /// Heartbeats missed on this link (total).
    pub heartbeat_misses_total: u64,
    /// Heartbeat round trips measured since the previous sample, in seconds.
    pub heartbeat_rtt_seconds: Vec<f64>,
}

/// Totals of the previous poll.
#[derive(Debug, Default)]
struct PollTotals {
    nvlog_appends: u64,
    nvlog_append_bytes: u64,
    heartbeat_misses: std::collections::HashMap<String, u64>,
}

/// The increment of a cumulative total since `last`; a total below `last` was reset.
fn increment(last: u64, now: u64) -> u64 {
    if now >= last {
        now - last
    } else {
        now
    }
}

/// The kebab-case name of an HA state, as in [`HA_STATES`] and the JSON API.
pub fn ha_state_name(s: NodeState) -> &'static str {
    match s {
        NodeState::Normal => "normal",
        NodeState::TakeoverCheck => "takeover-check",
        NodeState::WaitingForShutdown => "waiting-for-shutdown",
        NodeState::TakingOver => "taking-over",
        NodeState::InTakeover => "in-takeover",
        NodeState::Draining => "draining",
        NodeState::WaitingForGiveback => "waiting-for-giveback",
        NodeState::GivingBack => "giving-back",
        NodeState::Down => "down",
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
type GaugeF64 = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(
        LATENCY_BUCKET_FIRST_S,
        2.0,
        LATENCY_BUCKETS_COUNT,
    ))
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(
        DURATION_BUCKET_FIRST_S,
        2.0,
        DURATION_BUCKETS_COUNT,
    ))
}

/// Every metric family of a node. Fields are public: the node updates them directly.
pub struct Metrics {
    registry: Registry,
    /// Totals of the previous [`PollSample`], to turn totals into counter increments.
    last_totals: Mutex<PollTotals>,
    /// NFS operations by procedure and status.
    pub nfs_ops: Family<NfsOpLabels, Counter>,
    /// NFS operation latency by procedure, seconds.
    pub nfs_op_seconds: HistogramFamily<ProcedureLabels>,
    /// NFS payload bytes by direction.
    pub nfs_bytes: Family<DirectionLabels, Counter>,
    /// Duplicate-request-cache hits (retransmissions answered from the cache).
    pub nfs_drc_hits: Counter,
    /// NVRAM log records appended.
    pub nvlog_appends: Counter,
    /// NVRAM log bytes appended.
    pub nvlog_append_bytes: Counter,
    /// Local persist latency (clwb+sfence or msync), seconds.
    pub nvlog_persist_seconds: Histogram,
    /// Mirror round trip (send to partner ack), seconds.
    pub nvlog_mirror_seconds: Histogram,
    /// Bytes appended locally not yet acknowledged by the partner.
    pub nvlog_mirror_lag_bytes: Gauge,
    /// 1 while the mirror is degraded (partner down or taken over), else 0.
    pub nvlog_mirror_degraded: Gauge,
    /// Consistency points completed.
    pub cp: Counter,
    /// CP duration, seconds.
    pub cp_seconds: Histogram,
    /// Bytes written by CPs.
    pub cp_bytes: Counter,
    /// 1 for the current state of each disk, 0 for the others.
    pub raid_disk_state: Family<DiskLabels, Gauge>,
    /// Rebuild progress in [0, 1] per aggregate.
    pub raid_rebuild_progress_ratio: Family<AggregateLabels, GaugeF64>,
    /// Scrub progress in [0, 1] per aggregate.
    pub raid_scrub_progress_ratio: Family<AggregateLabels, GaugeF64>,
    /// Takeover and giveback operations by kind, mode and result.
    pub ha_operations: Family<OperationLabels, Counter>,
    /// Takeover and giveback durations, seconds.
    pub ha_operation_seconds: HistogramFamily<OperationLabels>,
    /// 1 for each node's current HA state, 0 for the others.
    pub ha_state: Family<HaStateLabels, Gauge>,
    /// Heartbeat round-trip time per link, seconds.
    pub heartbeat_rtt_seconds: HistogramFamily<LinkLabels>,
    /// Heartbeats missed per link.
    pub heartbeat_misses: Family<LinkLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every family registered (no series until first use, except the
    /// unlabelled ones, which start at zero).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(METRIC_PREFIX);
        let m = Metrics {
            registry: Registry::default(),
            last_totals: Mutex::new(PollTotals::default()),
            nfs_ops: Family::default(),
            nfs_op_seconds: HistogramFamily::new_with_constructor(latency_histogram),
            nfs_bytes: Family::default(),
            nfs_drc_hits: Counter::default(),
            nvlog_appends: Counter::default(),
            nvlog_append_bytes: Counter::default(),
            nvlog_persist_seconds: latency_histogram(),
            nvlog_mirror_seconds: latency_histogram(),
            nvlog_mirror_lag_bytes: Gauge::default(),
            nvlog_mirror_degraded: Gauge::default(),
            cp: Counter::default(),
            cp_seconds: duration_histogram(),
            cp_bytes: Counter::default(),
            raid_disk_state: Family::default(),
            raid_rebuild_progress_ratio: Family::default(),
            raid_scrub_progress_ratio: Family::default(),
            ha_operations: Family::default(),
            ha_operation_seconds: HistogramFamily::new_with_constructor(duration_histogram),
            ha_state: Family::default(),
            heartbeat_rtt_seconds: HistogramFamily::new_with_constructor(latency_histogram),
            heartbeat_misses: Family::default(),
        };
        let r = &mut registry;
        r.register(
            "nfs_ops",
            "NFS operations by procedure and status",
            m.nfs_ops.clone(),
        );
        r.register(
            "nfs_op_seconds",
            "NFS operation latency in seconds",
            m.nfs_op_seconds.clone(),
        );
        r.register(
            "nfs_bytes",
            "NFS payload bytes by direction",
            m.nfs_bytes.clone(),
        );
        r.register(
            "nfs_drc_hits",
            "Duplicate request cache hits",
            m.nfs_drc_hits.clone(),
        );
        r.register(
            "nvlog_appends",
            "NVRAM log records appended",
            m.nvlog_appends.clone(),
        );
        r.register(
            "nvlog_append_bytes",
            "NVRAM log bytes appended",
            m.nvlog_append_bytes.clone(),
        );
        r.register(
            "nvlog_persist_seconds",
            "NVRAM local persist latency in seconds",
            m.nvlog_persist_seconds.clone(),
        );
        r.register(
            "nvlog_mirror_seconds",
            "NVRAM mirror round trip in seconds",
            m.nvlog_mirror_seconds.clone(),
        );
        r.register(
            "nvlog_mirror_lag_bytes",
            "Bytes appended locally not yet acknowledged by the partner",
            m.nvlog_mirror_lag_bytes.clone(),
        );
        r.register(
            "nvlog_mirror_degraded",
            "1 while the NVRAM mirror is degraded",
            m.nvlog_mirror_degraded.clone(),
        );
        r.register("cp", "Consistency points completed", m.cp.clone());
        r.register(
            "cp_seconds",
            "Consistency point duration in seconds",
            m.cp_seconds.clone(),
        );
        r.register(
            "cp_bytes",
            "Bytes written by consistency points",
            m.cp_bytes.clone(),
        );
        r.register(
            "raid_disk_state",
            "1 for the current RAID state of each disk",
            m.raid_disk_state.clone(),
        );
        r.register(
            "raid_rebuild_progress_ratio",
            "RAID rebuild progress (0 to 1)",
            m.raid_rebuild_progress_ratio.clone(),
        );
        r.register(
            "raid_scrub_progress_ratio",
            "RAID scrub progress (0 to 1)",
            m.raid_scrub_progress_ratio.clone(),
        );
        r.register(
            "ha_operations",
            "Takeover and giveback operations by kind, mode and result",
            m.ha_operations.clone(),
        );
        r.register(
            "ha_operation_seconds",
            "Takeover and giveback duration in seconds",
            m.ha_operation_seconds.clone(),
        );
        r.register(
            "ha_state",
            "1 for the current HA state of each node",
            m.ha_state.clone(),
        );
        r.register(
            "heartbeat_rtt_seconds",
            "Interconnect heartbeat round-trip time in seconds",
            m.heartbeat_rtt_seconds.clone(),
        );
        r.register(
            "heartbeat_misses",
            "Interconnect heartbeats missed",
            m.heartbeat_misses.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Record one NFS operation.
    pub fn observe_nfs_op(&self, procedure: &str, status: &str, seconds: f64) {
        self.nfs_ops
            .get_or_create(&NfsOpLabels {
                procedure: procedure.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.nfs_op_seconds
            .get_or_create(&ProcedureLabels {
                procedure: procedure.to_string(),
            })
            .observe(seconds);
    }

    /// Set a disk's state (one of [`DISK_STATES`]): its series is 1, the others 0.
    pub fn set_disk_state(&self, aggregate: &str, disk: &str, state: &str) {
        assert!(DISK_STATES.contains(&state), "unknown disk state {state:?}");
        for s in DISK_STATES {
            self.raid_disk_state
                .get_or_create(&DiskLabels {
                    aggregate: aggregate.to_string(),
                    disk: disk.to_string(),
                    state: s.to_string(),
                })
                .set(i64::from(s == state));
        }
    }

    /// Set a node's HA state (one of [`HA_STATES`]): its series is 1, the others 0.
    pub fn set_ha_state(&self, node: &str, state: &str) {
        assert!(HA_STATES.contains(&state), "unknown HA state {state:?}");
        for s in HA_STATES {
            self.ha_state
                .get_or_create(&HaStateLabels {
                    node: node.to_string(),
                    state: s.to_string(),
                })
                .set(i64::from(s == state));
        }
    }

    /// Fold one poll of the node's subsystems into the metrics (see [`PollSample`]).
    pub fn record_poll(&self, sample: &PollSample) {
        let mut last = self.last_totals.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = &sample.nvlog {
            self.nvlog_appends
                .inc_by(increment(last.nvlog_appends, n.appends_total));
            self.nvlog_append_bytes
                .inc_by(increment(last.nvlog_append_bytes, n.append_bytes_total));
            last.nvlog_appends = n.appends_total;
            last.nvlog_append_bytes = n.append_bytes_total;
            observe_all(&self.nvlog_persist_seconds, &n.persist_seconds);
            observe_all(&self.nvlog_mirror_seconds, &n.mirror_seconds);
            self.nvlog_mirror_lag_bytes
                .set(i64::try_from(n.mirror_lag_bytes).unwrap_or(i64::MAX));
            self.nvlog_mirror_degraded.set(i64::from(n.mirror_degraded));
        }
        for (node, state) in &sample.ha_states {
            self.set_ha_state(node, ha_state_name(*state));
        }
        for op in &sample.ha_operations_ended {
            let labels = OperationLabels {
                kind: match op.kind {
                    OperationKind::Takeover => "takeover",
                    OperationKind::Giveback => "giveback",
                }
                .to_string(),
                mode: op.mode.label().to_string(),
                result: if op.succeeded { "success" } else { "failure" }.to_string(),
            };
            self.ha_operations.get_or_create(&labels).inc();
            self.ha_operation_seconds
                .get_or_create(&labels)
                .observe(op.seconds);
        }
        for link in &sample.links {
            let labels = LinkLabels {
                link: link.name.clone(),
            };
            let previous = last
                .heartbeat_misses
                .insert(link.name.clone(), link.heartbeat_misses_total)
                .unwrap_or(0);
            self.heartbeat_misses
                .get_or_create(&labels)
                .inc_by(increment(previous, link.heartbeat_misses_total));
            let rtt = self.heartbeat_rtt_seconds.get_or_create(&labels);
            observe_all(&rtt, &link.heartbeat_rtt_seconds);
        }
    }

    /// Append the OpenMetrics text exposition (what Prometheus prefers to scrape) to `out`.
    pub fn encode(&self, out: &mut String) -> std::fmt::Result {
        encode(out, &self.registry)
    }
}

/// Observe at most [`POLL_OBSERVATIONS_MAX`] values (negative or NaN ones are skipped: a
/// latency cannot be).
fn observe_all(h: &Histogram, values: &[f64]) {
    if values.len() > POLL_OBSERVATIONS_MAX {
        tracing::warn!(
            count = values.len(),
            kept = POLL_OBSERVATIONS_MAX,
            "too many latency observations in one poll; dropping the excess"
        );
    }
    for &v in values.iter().take(POLL_OBSERVATIONS_MAX) {
        if v >= 0.0 {
            h.observe(v);
        }
    }
}

/// Rewrite OpenMetrics text into the classic Prometheus text format (version 0.0.4), for
/// scrapers and tools (`promtool check metrics`, curl users) that do not ask for OpenMetrics.
///
/// The two differ, for what our registry emits, only in that OpenMetrics names a counter
/// family without its `_total` suffix and adds `# UNIT` and `# EOF` lines. Exemplars and the
/// OpenMetrics-only types are not used by [`Metrics`].
pub fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None if line.starts_with("# TYPE ") && line.ends_with(" unknown") => {
                out.push_str(line.trim_end_matches(" unknown"));
                out.push_str(" untyped");
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_total_in_help_and_type_and_eof_goes() {
        let om = "# HELP x_ops Ops.\n# TYPE x_ops counter\nx_ops_total 3\n\
                  # HELP x_lag Lag.\n# TYPE x_lag gauge\n# UNIT x_lag bytes\nx_lag 1\n# EOF\n";
        let prom = openmetrics_to_prometheus_text(om);
        assert_eq!(
            prom,
            "# HELP x_ops_total Ops.\n# TYPE x_ops_total counter\nx_ops_total 3\n\
             # HELP x_lag Lag.\n# TYPE x_lag gauge\nx_lag 1\n"
        );
    }

    #[test]
    fn poll_samples_become_increments_observations_and_gauges() {
        let m = Metrics::new();
        let mut sample = PollSample {
            nvlog: Some(NvlogSample {
                appends_total: 10,
                append_bytes_total: 4096,
                persist_seconds: vec![0.000_02, 0.000_03, f64::NAN],
                mirror_seconds: vec![0.000_1],
                mirror_lag_bytes: 512,
                mirror_degraded: true,
            }),
            ha_states: vec![("a".into(), NodeState::InTakeover)],
            ha_operations_ended: vec![HaOperationEnded {
                kind: OperationKind::Takeover,
                mode: HaMode::Forced,
                succeeded: true,
                seconds: 31.5,
            }],
            links: vec![LinkSample {
                name: "ic0".into(),
                heartbeat_misses_total: 3,
                heartbeat_rtt_seconds: vec![0.000_08],
            }],
        };
        m.record_poll(&sample);
        // Second poll: totals advance; a log restart (total below the last) counts from zero.
        sample.nvlog.as_mut().unwrap().appends_total = 4;
        sample.nvlog.as_mut().unwrap().append_bytes_total = 8192;
        sample.ha_operations_ended.clear();
        sample.links[0].heartbeat_misses_total = 5;
        m.record_poll(&sample);
        assert_eq!(m.nvlog_appends.get(), 14);
        assert_eq!(m.nvlog_append_bytes.get(), 8192);
        assert_eq!(m.nvlog_mirror_lag_bytes.get(), 512);
        assert_eq!(m.nvlog_mirror_degraded.get(), 1);
        let link = LinkLabels { link: "ic0".into() };
        assert_eq!(m.heartbeat_misses.get_or_create(&link).get(), 5);
        let mut text = String::new();
        m.encode(&mut text).unwrap();
        assert!(
            text.contains("twinfiler_nvlog_persist_seconds_count 4\n"),
            "{text}"
        );
        assert!(text.contains("twinfiler_heartbeat_rtt_seconds_count{link=\"ic0\"} 2\n"));
        assert!(text.contains(
            "twinfiler_ha_operations_total{kind=\"takeover\",mode=\"forced\",result=\"success\"} 1\n"
        ));
        assert!(text.contains("twinfiler_ha_state{node=\"a\",state=\"in-takeover\"} 1\n"));
        assert!(text.contains("twinfiler_ha_state{node=\"a\",state=\"normal\"} 0\n"));
    }

    #[test]
    fn ha_state_names_match_the_api() {
        for s in [
            NodeState::Normal,
            NodeState::WaitingForGiveback,
            NodeState::TakeoverCheck,
        ] {
            let json = serde_json::to_value(s).unwrap();
            assert_eq!(json.as_str(), Some(ha_state_name(s)));
            assert!(HA_STATES.contains(&ha_state_name(s)));
        }
    }

    #[test]
    #[should_panic(expected = "unknown disk state")]
    fn disk_state_must_be_known() {
        Metrics::new().set_disk_state("aggr", "d0", "melted");
    }
}
