//! The node's Prometheus metrics: one registry, families named `twinfiler_*`.
//!
//! The node owns one [`Metrics`] (cheap to share behind an `Arc`), updates the families from
//! its hot paths (all are lock-free atomics after the first use of a label set), and calls
//! [`Metrics::encode`] from [`crate::ConsoleBackend::render_metrics`].

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

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

    /// Append the OpenMetrics text exposition (what Prometheus prefers to scrape) to `out`.
    pub fn encode(&self, out: &mut String) -> std::fmt::Result {
        encode(out, &self.registry)
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
    #[should_panic(expected = "unknown disk state")]
    fn disk_state_must_be_known() {
        Metrics::new().set_disk_state("aggr", "d0", "melted");
    }
}
