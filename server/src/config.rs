//! The node's configuration: one TOML file (`twinfiler node --config node.toml`).
//!
//! Every field is documented in `server/node.example.toml`, which the tests parse, so the
//! example cannot drift from this code. Unknown keys are errors (a typo in a bound must not
//! silently run with the default), and every error names the file.
//!
//! Bounds carry their unit in the key (`cp_interval_ms`, `half_mib`); defaults are chosen
//! for a small node and are the constants below.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::Deserialize;
pub use twinfiler_nfs::ExportConfig;

/// Default CP timer: a CP at least this often while anything is dirty.
pub const CP_INTERVAL_MS_DEFAULT: u64 = 10_000;
/// Shortest CP timer accepted (a CP per few ms would only burn disk bandwidth).
pub const CP_INTERVAL_MS_MIN: u64 = 100;
/// Longest CP timer accepted (the log must be released well before it fills).
pub const CP_INTERVAL_MS_MAX: u64 = 600_000;
/// Default portmapper/rpcbind port (what `mount.nfs` asks without options).
pub const PORTMAP_PORT_DEFAULT: u16 = 111;
/// Default MOUNT v3 port.
pub const MOUNT_PORT_DEFAULT: u16 = 20048;
/// Default NFS port.
pub const NFS_PORT_DEFAULT: u16 = 2049;
/// Default of `[nfs] busy_poll_us`: longer than a client on the same LAN takes from our
/// reply to its next call, short enough that an idle connection costs little.
pub const NFS_BUSY_POLL_US_DEFAULT: u64 = 50;
/// Longest `[nfs] busy_poll_us` accepted: past a millisecond a poll no longer waits for a
/// client's quick next call, it spins a core per slow client.
pub const NFS_BUSY_POLL_US_MAX: u64 = 1_000;
/// Default time calls in flight get to finish at shutdown.
pub const STOP_GRACE_MS_DEFAULT: u64 = 5_000;
/// Shortest pair key accepted: the file handle and mirror keys are derived from it.
pub const PAIR_KEY_BYTES_MIN: usize = 32;
/// Longest pair key file read (a key, not a data file).
pub const PAIR_KEY_BYTES_MAX: usize = 4096;
/// Bytes of a generated pair key.
pub const PAIR_KEY_BYTES_GENERATED: usize = 32;
/// Smallest RPC record bound accepted: a 1 MiB WRITE, its handle and headers.
const RECORD_BYTES_MIN: usize = (1 << 20) + 512;
/// Largest configuration file read.
const CONFIG_BYTES_MAX: u64 = 1 << 20;
/// NVRAM halves are formatted in multiples of this (nvlog's region granularity).
const NVRAM_HALF_MIB_ALIGN: u64 = 2;
/// Data disks of a created aggregate: RAID-4 needs at least two (plus parity).
const CREATE_DATA_DISKS_MIN: usize = 2;
/// More data disks than this is a typo, not a RAID-4 group.
const CREATE_DATA_DISKS_MAX: usize = 28;
/// Smallest disk of a created aggregate (labels, superblocks and some stripes).
const CREATE_DISK_MIB_MIN: u64 = 16;
/// Spares of a created aggregate, at most.
const CREATE_SPARES_MAX: usize = 8;
/// Longest IPv4 network prefix.
const IPV4_PREFIX_LEN_MAX: u8 = 32;
/// A block cache larger than this (1 TiB) is a typo.
const DATA_CACHE_MIB_MAX: u64 = 1 << 20;

/// Why a configuration cannot be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the configuration {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TOML does not parse or does not match the schema.
    #[error("configuration {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What toml/serde said (line, column, key).
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("configuration {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// The pair key file is missing, unreadable or too short.
    #[error("pair key {path}: {message}")]
    PairKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
}

/// The whole configuration of one node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name (logs, status).
    pub name: String,
    /// Where the node keeps its own small files (the pair key, the lock file).
    pub state_dir: PathBuf,
    /// The pair's shared secret; default `<state_dir>/pair.key`.
    #[serde(default)]
    pub pair_key_file: Option<PathBuf>,
    /// CP timer, ms.
    #[serde(default = "cp_interval_ms_default")]
    pub cp_interval_ms: u64,
    /// The node's aggregate.
    pub aggregate: AggregateConfig,
    /// The NVRAM log region.
    pub nvram: NvramConfig,
    /// Mirroring of the log to the partner; absent = standalone.
    #[serde(default)]
    pub mirror: Option<MirrorSection>,
    /// The NFS front-end.
    pub nfs: NfsSection,
    /// Exports (the TOML key is `[[export]]`, one table per export).
    #[serde(default, rename = "export")]
    pub exports: Vec<ExportConfig>,
    /// The operator console (web UI, JSON API, metrics); absent = no console.
    #[serde(default)]
    pub console: Option<ConsoleSection>,
    /// The HA pair (interconnect, takeover); absent = a node that is never taken over.
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
    /// Where this configuration came from (set by [`NodeConfig::load`], for messages).
    #[serde(skip)]
    pub source: PathBuf,
}

/// The aggregate: a RAID-4 group of disk files or devices in one directory.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// Directory holding the disks (every labelled disk in it is considered).
    pub disks_dir: PathBuf,
    /// Create the aggregate on first start when the directory holds no disk yet.
    #[serde(default)]
    pub create: Option<CreateSection>,
    /// Cache of the file system's data and metadata blocks, MiB (0: no cache).
    #[serde(default = "data_cache_mib_default")]
    pub data_cache_mib: u64,
}

/// How to create an aggregate on first start (sparse disk files in `disks_dir`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSection {
    /// Data disks (one more is created for parity).
    pub data_disks: usize,
    /// Size of each disk file, MiB.
    pub disk_mib: u64,
    /// Hot spares to create.
    #[serde(default)]
    pub spares: usize,
}

/// The NVRAM region.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvramConfig {
    /// A `/dev/daxX.Y` device, a file on fs-dax, or a plain file (e.g. under /dev/shm).
    pub region_path: PathBuf,
    /// Bytes per log half when formatting, MiB (multiple of 2).
    pub half_mib: u64,
}

/// Mirroring to the partner node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSection {
    /// Where we accept the partner's log into our mirror area.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The partner's mirror listener: our log is mirrored there.
    #[serde(default)]
    pub partner: Option<SocketAddr>,
    /// Partner silent this long → MIRROR_DEGRADED, ms.
    #[serde(default = "degraded_after_ms_default")]
    pub degraded_after_ms: u64,
    /// A busy mirror connection polls this long before sleeping, µs (0: off).
    #[serde(default = "busy_poll_us_default")]
    pub busy_poll_us: u64,
}

/// The operator console: where it listens and who may use it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSection {
    /// The management address the console binds (only this one); port 0 = any free port.
    pub listen: SocketAddr,
    /// Administrator login name.
    #[serde(default = "admin_user_default")]
    pub admin_user: String,
    /// Argon2 PHC string of the administrator password (`twinfiler demo` makes one); empty
    /// disables password login (API tokens still work).
    #[serde(default)]
    pub admin_password_argon2: String,
    /// API tokens: `{ name = "ci", blake3_hex = "..." }`, the BLAKE3 hash of each token.
    #[serde(default)]
    pub api_tokens: Vec<web_ui::ApiToken>,
    /// A file of more tokens, one `NAME BLAKE3_HEX` per line (`#` comments allowed).
    #[serde(default)]
    pub api_tokens_file: Option<PathBuf>,
    /// Require authentication for `/metrics` too.
    #[serde(default)]
    pub metrics_require_auth: bool,
    /// The partner's console URL (`http://127.0.0.12:8080`): the node polls its status for
    /// the partner's card. Needs `partner_token_file`.
    #[serde(default)]
    pub partner_url: Option<String>,
    /// A file holding an API token the partner's console accepts (the token itself, mode
    /// 0600).
    #[serde(default)]
    pub partner_token_file: Option<PathBuf>,
}

/// The HA pair: who the partner is, how to reach it, and the takeover bounds.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// This node's number in the pair: 0 or 1 (node 1 listens on the interconnect, node 0
    /// dials).
    pub node_id: u8,
    /// The partner's node configuration: its aggregate, data address, ports and exports are
    /// what this node serves after taking it over. Relative to this file.
    pub partner_config: PathBuf,
    /// Interconnect links, in the same order on both nodes.
    pub links: Vec<LinkSection>,
    /// Interface on which non-loopback data addresses are raised (with
    /// `nfs.bind_prefix_len`); without it the addresses are expected to exist already.
    #[serde(default)]
    pub data_interface: Option<String>,
    /// The log of the partner's identity while this node serves it; default
    /// `<state_dir>/partner.nvram`.
    #[serde(default)]
    pub takeover_log: Option<PathBuf>,
    /// Heartbeat cadence, ms.
    #[serde(default = "heartbeat_interval_ms_default")]
    pub heartbeat_interval_ms: u64,
    /// Partner silent (interconnect and mailbox) this long = dead: hard takeover, ms.
    #[serde(default = "heartbeat_loss_ms_default")]
    pub heartbeat_loss_ms: u64,
    /// Default countdown of a graceful takeover, ms.
    #[serde(default = "countdown_ms_default")]
    pub countdown_ms: u64,
    /// Give back automatically once the partner waits and is healthy.
    #[serde(default)]
    pub auto_giveback: bool,
    /// Delay before an automatic giveback, ms.
    #[serde(default = "auto_giveback_delay_ms_default")]
    pub auto_giveback_delay_ms: u64,
    /// Take over a dead partner (heartbeat and mailbox silent).
    #[serde(default = "hard_takeover_default")]
    pub hard_takeover: bool,
}

/// One interconnect link.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSection {
    /// Our end (node 1 listens here; node 0 binds its source address to this IP).
    pub local: SocketAddr,
    /// The partner's end.
    pub peer: SocketAddr,
}

impl ClusterSection {
    /// The takeover machine's bounds: these keys over its defaults.
    pub fn takeover_config(&self) -> cluster::TakeoverConfig {
        cluster::TakeoverConfig {
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            heartbeat_loss_ms: self.heartbeat_loss_ms,
            countdown_ms: self.countdown_ms,
            auto_giveback: self.auto_giveback,
            auto_giveback_delay_ms: self.auto_giveback_delay_ms,
            hard_takeover_enabled: self.hard_takeover,
            ..cluster::TakeoverConfig::default()
        }
    }
}

fn heartbeat_interval_ms_default() -> u64 {
    cluster::TakeoverConfig::default().heartbeat_interval_ms
}
fn heartbeat_loss_ms_default() -> u64 {
    cluster::TakeoverConfig::default().heartbeat_loss_ms
}
fn countdown_ms_default() -> u64 {
    cluster::TakeoverConfig::default().countdown_ms
}
fn auto_giveback_delay_ms_default() -> u64 {
    cluster::TakeoverConfig::default().auto_giveback_delay_ms
}
fn hard_takeover_default() -> bool {
    true
}

/// Largest API token file read.
const API_TOKENS_FILE_BYTES_MAX: u64 = 1 << 20;
/// Length of a BLAKE3 hex digest.
const BLAKE3_HEX_CHARS: usize = 64;

impl ConsoleSection {
    /// The console's settings: this section plus the tokens of `api_tokens_file`.
    pub fn console_config(&self) -> Result<web_ui::ConsoleConfig, String> {
        let mut tokens = self.api_tokens.clone();
        if let Some(path) = &self.api_tokens_file {
            tokens.extend(read_token_file(path)?);
        }
        for t in &tokens {
            check_token_hash(t)?;
        }
        Ok(web_ui::ConsoleConfig {
            admin_user: self.admin_user.clone(),
            admin_password_argon2: self.admin_password_argon2.clone(),
            api_tokens: tokens,
            metrics_require_auth: self.metrics_require_auth,
            ..web_ui::ConsoleConfig::default()
        })
    }
}

fn check_token_hash(t: &web_ui::ApiToken) -> Result<(), String> {
    let hex_ok = t.blake3_hex.len() == BLAKE3_HEX_CHARS
        && t.blake3_hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if t.name.is_empty() || !hex_ok {
        return Err(format!(
            "API token {:?}: needs a name and `blake3_hex` = {BLAKE3_HEX_CHARS} lowercase hex \
             characters (the hash of the token, never the token itself)",
            t.name
        ));
    }
    Ok(())
}

/// Reads `NAME BLAKE3_HEX` lines.
fn read_token_file(path: &Path) -> Result<Vec<web_ui::ApiToken>, String> {
    let err = |e: String| format!("API token file {}: {e}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > API_TOKENS_FILE_BYTES_MAX {
        return Err(err(format!(
            "over the {API_TOKENS_FILE_BYTES_MAX}-byte bound"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), Some(hash), None) => tokens.push(web_ui::ApiToken {
                name: name.to_string(),
                blake3_hex: hash.to_string(),
            }),
            _ => return Err(err(format!("line {}: expected `NAME BLAKE3_HEX`", i + 1))),
        }
    }
    Ok(tokens)
}

fn admin_user_default() -> String {
    "admin".to_string()
}

/// The NFS front-end: listeners and transport bounds. Transport bounds default to
/// `twinfiler_rpc::ServerConfig::default()`, except busy polling, which is on by default
/// here ([`NFS_BUSY_POLL_US_DEFAULT`]) and off in the RPC crate.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NfsSection {
    /// The address every listener binds (portmap, MOUNT, NFS): the node's identity address.
    /// A specific address, not a wildcard: rpcbind answers name the address asked.
    pub bind: IpAddr,
    /// Prefix length of `bind` when the node raises it itself (`[cluster] data_interface`):
    /// added over netlink with gratuitous ARP when the identity starts being served here,
    /// removed when it stops. Loopback addresses are never raised (just bound).
    #[serde(default)]
    pub bind_prefix_len: Option<u8>,
    /// Portmapper/rpcbind port (TCP and UDP); 0 = any free port (tests).
    #[serde(default = "portmap_port_default")]
    pub portmap_port: u16,
    /// MOUNT port (TCP and UDP); 0 = any free port.
    #[serde(default = "mount_port_default")]
    pub mount_port: u16,
    /// NFS port (TCP, and UDP when `nfs_udp`); 0 = any free port.
    #[serde(default = "nfs_port_default")]
    pub nfs_port: u16,
    /// Also serve NFS on UDP (portmap and MOUNT always answer on UDP too).
    #[serde(default)]
    pub nfs_udp: bool,
    /// TCP connections at once, at most.
    #[serde(default)]
    pub connections_max: Option<usize>,
    /// Calls in flight per TCP connection, at most (then the connection is not read).
    #[serde(default)]
    pub inflight_per_connection_max: Option<usize>,
    /// Calls in flight over all connections and UDP, at most.
    #[serde(default)]
    pub inflight_total_max: Option<usize>,
    /// Calls from UDP executing at once, at most.
    #[serde(default)]
    pub udp_inflight_max: Option<usize>,
    /// Largest RPC record a client may send, bytes (a 1 MiB WRITE plus headers must fit).
    #[serde(default)]
    pub record_bytes_max: Option<usize>,
    /// An idle TCP connection is closed after this long, ms.
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// A reply write without progress for this long closes the connection, ms.
    #[serde(default)]
    pub write_timeout_ms: Option<u64>,
    /// A connection whose calls are all answered polls for the next one this long before
    /// it sleeps, µs (0: off).
    #[serde(default = "nfs_busy_poll_us_default")]
    pub busy_poll_us: u64,
    /// At shutdown, calls in flight get this long to finish, ms.
    #[serde(default = "stop_grace_ms_default")]
    pub stop_grace_ms: u64,
    /// At start, create the missing directories of every export path (root's, mode 0755).
    #[serde(default)]
    pub create_export_dirs: bool,
}

impl NfsSection {
    /// The RPC server's bounds: the configured ones over the transport's defaults.
    pub fn server_config(&self) -> twinfiler_rpc::ServerConfig {
        let d = twinfiler_rpc::ServerConfig::default();
        twinfiler_rpc::ServerConfig {
            connections_max: self.connections_max.unwrap_or(d.connections_max),
            inflight_per_connection_max: self
                .inflight_per_connection_max
                .unwrap_or(d.inflight_per_connection_max),
            inflight_total_max: self.inflight_total_max.unwrap_or(d.inflight_total_max),
            udp_inflight_max: self.udp_inflight_max.unwrap_or(d.udp_inflight_max),
            record_bytes_max: self.record_bytes_max.unwrap_or(d.record_bytes_max),
            read_buffer_bytes: d.read_buffer_bytes,
            idle_timeout_ms: self.idle_timeout_ms.unwrap_or(d.idle_timeout_ms),
            write_timeout_ms: self.write_timeout_ms.unwrap_or(d.write_timeout_ms),
            busy_poll_us: self.busy_poll_us,
        }
    }
}

fn nfs_busy_poll_us_default() -> u64 {
    NFS_BUSY_POLL_US_DEFAULT
}
fn stop_grace_ms_default() -> u64 {
    STOP_GRACE_MS_DEFAULT
}
fn cp_interval_ms_default() -> u64 {
    CP_INTERVAL_MS_DEFAULT
}
fn data_cache_mib_default() -> u64 {
    wafl::CACHE_BYTES_MAX_DEFAULT >> 20
}
fn busy_poll_us_default() -> u64 {
    nvlog::BUSY_POLL_US_DEFAULT
}
fn degraded_after_ms_default() -> u64 {
    nvlog::SenderConfig::default().degraded_after_ms
}
fn portmap_port_default() -> u16 {
    PORTMAP_PORT_DEFAULT
}
fn mount_port_default() -> u16 {
    MOUNT_PORT_DEFAULT
}
fn nfs_port_default() -> u16 {
    NFS_PORT_DEFAULT
}

impl NodeConfig {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if meta.len() > CONFIG_BYTES_MAX {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: format!(
                    "{} bytes is over the {CONFIG_BYTES_MAX}-byte bound: is this the right file?",
                    meta.len()
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let mut config = NodeConfig::parse(&text, path)?;
        if let Some(dir) = path.parent() {
            config.resolve_relative_to(dir);
        }
        Ok(config)
    }

    /// Makes relative paths relative to `dir` (the configuration file's directory), so a
    /// node does not depend on the directory it was started from.
    pub fn resolve_relative_to(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        fix(&mut self.state_dir);
        if let Some(k) = &mut self.pair_key_file {
            fix(k);
        }
        fix(&mut self.aggregate.disks_dir);
        fix(&mut self.nvram.region_path);
        if let Some(f) = self
            .console
            .as_mut()
            .and_then(|c| c.api_tokens_file.as_mut())
        {
            fix(f);
        }
        if let Some(c) = &mut self.cluster {
            fix(&mut c.partner_config);
            if let Some(l) = &mut c.takeover_log {
                fix(l);
            }
        }
    }

    /// The partner's configuration (`[cluster] partner_config`), loaded and checked against
    /// ours: same pair key file contents, the other node id, another data address.
    pub fn load_partner(&self) -> Result<Option<NodeConfig>, ConfigError> {
        let Some(c) = &self.cluster else {
            return Ok(None);
        };
        let partner = NodeConfig::load(&c.partner_config)?;
        let bad = |message: String| ConfigError::Invalid {
            path: self.source.clone(),
            message,
        };
        match &partner.cluster {
            Some(pc) if pc.node_id == 1 - c.node_id => {}
            _ => {
                return Err(bad(format!(
                    "the partner config {} must have a [cluster] section with node_id = {}",
                    c.partner_config.display(),
                    1 - c.node_id
                )))
            }
        }
        if partner.name == self.name {
            return Err(bad("the partner must have another `name`".into()));
        }
        if partner.nfs.bind == self.nfs.bind {
            return Err(bad(format!(
                "the partner's data address {} is ours too: each identity needs its own",
                self.nfs.bind
            )));
        }
        Ok(Some(partner))
    }

    /// Where this node keeps the log of the partner's identity while serving it.
    pub fn takeover_log_path(&self) -> Option<PathBuf> {
        let c = self.cluster.as_ref()?;
        Some(
            c.takeover_log
                .clone()
                .unwrap_or_else(|| self.state_dir.join("partner.nvram")),
        )
    }

    /// Parses and validates configuration text; `source` names it in errors.
    pub fn parse(text: &str, source: &Path) -> Result<NodeConfig, ConfigError> {
        let mut config: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: source.to_owned(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.source = source.to_owned();
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Invalid {
            path: self.source.clone(),
            message,
        };
        if self.name.is_empty() || self.name.len() > 64 {
            return Err(bad("`name` must be 1 to 64 characters".into()));
        }
        if !(CP_INTERVAL_MS_MIN..=CP_INTERVAL_MS_MAX).contains(&self.cp_interval_ms) {
            return Err(bad(format!(
                "`cp_interval_ms` = {} is outside {CP_INTERVAL_MS_MIN}..={CP_INTERVAL_MS_MAX}",
                self.cp_interval_ms
            )));
        }
        let half = self.nvram.half_mib;
        if half == 0 || !half.is_multiple_of(NVRAM_HALF_MIB_ALIGN) {
            return Err(bad(format!(
                "`nvram.half_mib` = {half} must be a positive multiple of {NVRAM_HALF_MIB_ALIGN}"
            )));
        }
        if self.aggregate.data_cache_mib > DATA_CACHE_MIB_MAX {
            return Err(bad(format!(
                "`aggregate.data_cache_mib` = {} is over {DATA_CACHE_MIB_MAX}",
                self.aggregate.data_cache_mib
            )));
        }
        if let Some(c) = &self.aggregate.create {
            if !(CREATE_DATA_DISKS_MIN..=CREATE_DATA_DISKS_MAX).contains(&c.data_disks) {
                return Err(bad(format!(
                    "`aggregate.create.data_disks` = {} is outside {CREATE_DATA_DISKS_MIN}..={CREATE_DATA_DISKS_MAX}",
                    c.data_disks
                )));
            }
            if c.disk_mib < CREATE_DISK_MIB_MIN {
                return Err(bad(format!(
                    "`aggregate.create.disk_mib` = {} is below {CREATE_DISK_MIB_MIN}",
                    c.disk_mib
                )));
            }
            if c.spares > CREATE_SPARES_MAX {
                return Err(bad(format!(
                    "`aggregate.create.spares` = {} is over {CREATE_SPARES_MAX}",
                    c.spares
                )));
            }
        }
        if let Some(m) = &self.mirror {
            if m.listen.is_none() && m.partner.is_none() {
                return Err(bad(
                    "`[mirror]` needs `listen`, `partner` or both; remove the section to run standalone"
                        .into(),
                ));
            }
            if m.degraded_after_ms == 0 {
                return Err(bad("`mirror.degraded_after_ms` must be positive".into()));
            }
        }
        let n = &self.nfs;
        let ports = [
            ("portmap_port", n.portmap_port),
            ("mount_port", n.mount_port),
            ("nfs_port", n.nfs_port),
        ];
        for (i, (a, pa)) in ports.iter().enumerate() {
            for (b, pb) in &ports[i + 1..] {
                if pa == pb && *pa != 0 {
                    return Err(bad(format!(
                        "`nfs.{a}` and `nfs.{b}` are both {pa}: every service needs its own port"
                    )));
                }
            }
        }
        if n.bind.is_unspecified() {
            return Err(bad(format!(
                "`nfs.bind` = {}: give the node's address (rpcbind replies name it), not a wildcard",
                n.bind
            )));
        }
        if n.busy_poll_us > NFS_BUSY_POLL_US_MAX {
            return Err(bad(format!(
                "`nfs.busy_poll_us` = {} is above {NFS_BUSY_POLL_US_MAX} µs",
                n.busy_poll_us
            )));
        }
        let server = n.server_config();
        server.validate().map_err(|e| bad(format!("[nfs]: {e}")))?;
        // A full 1 MiB WRITE must fit in one record, or clients with wsize=1M fail.
        if server.record_bytes_max < RECORD_BYTES_MIN {
            return Err(bad(format!(
                "`nfs.record_bytes_max` = {} cannot carry a 1 MiB WRITE; use at least {RECORD_BYTES_MIN}",
                server.record_bytes_max
            )));
        }
        if self.exports.is_empty() {
            return Err(bad(
                "no `[[export]]`: a node that exports nothing serves nothing".into(),
            ));
        }
        twinfiler_nfs::Exports::from_config(&self.exports).map_err(|e| bad(e.to_string()))?;
        if let Some(c) = &self.console {
            if c.admin_user.is_empty() {
                return Err(bad("`console.admin_user` must not be empty".into()));
            }
            for t in &c.api_tokens {
                check_token_hash(t).map_err(|e| bad(format!("[console]: {e}")))?;
            }
            if c.partner_url.is_some() != c.partner_token_file.is_some() {
                return Err(bad(
                    "`console.partner_url` and `console.partner_token_file` go together".into(),
                ));
            }
            if let Some(u) = &c.partner_url {
                // The client is built without TLS: the console serves plain HTTP on a
                // management address.
                if !u.starts_with("http://") {
                    return Err(bad(format!(
                        "`console.partner_url` = {u:?} must start with http://"
                    )));
                }
            }
        }
        if let Some(len) = self.nfs.bind_prefix_len {
            if len > IPV4_PREFIX_LEN_MAX {
                return Err(bad(format!(
                    "`nfs.bind_prefix_len` = {len} is over {IPV4_PREFIX_LEN_MAX}"
                )));
            }
        }
        if let Some(c) = &self.cluster {
            if c.node_id > 1 {
                return Err(bad(format!(
                    "`cluster.node_id` = {} must be 0 or 1",
                    c.node_id
                )));
            }
            if c.links.is_empty() {
                return Err(bad("`cluster.links` needs at least one link".into()));
            }
            c.takeover_config()
                .validate()
                .map_err(|e| bad(format!("[cluster] bounds: {e}")))?;
        }
        Ok(())
    }

    /// Whether the node mirrors its log (has a `[mirror]` section).
    pub fn is_standalone(&self) -> bool {
        self.mirror.is_none()
    }

    /// The pair key file's path.
    pub fn pair_key_path(&self) -> PathBuf {
        self.pair_key_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("pair.key"))
    }

    /// Reads the pair key; a standalone node generates one (mode 0600) when it is absent.
    /// A mirrored node never generates it: both nodes must hold the same key.
    pub fn load_pair_key(&self) -> Result<PairKey, ConfigError> {
        let path = self.pair_key_path();
        let err = |message: String| ConfigError::PairKey {
            path: path.clone(),
            message,
        };
        match std::fs::metadata(&path) {
            Ok(meta) => {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        "pair key is readable by group or others; chmod 600 it"
                    );
                }
                if meta.len() > PAIR_KEY_BYTES_MAX as u64 {
                    return Err(err(format!(
                        "{} bytes is over the {PAIR_KEY_BYTES_MAX}-byte bound: is this the right file?",
                        meta.len()
                    )));
                }
                let bytes = std::fs::read(&path).map_err(|e| err(e.to_string()))?;
                PairKey::from_bytes(bytes).map_err(err)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.is_standalone() => {
                let key = PairKey::generate();
                write_new_secret(&path, key.as_bytes()).map_err(|e| {
                    err(format!("cannot create it: {e}; check that the state dir exists and is writable"))
                })?;
                tracing::info!(path = %path.display(), "generated a new pair key (standalone node)");
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(err(format!(
                "missing; a mirrored node needs the pair's shared key: create it once with \
                 `head -c {PAIR_KEY_BYTES_GENERATED} /dev/urandom > KEY; chmod 600 KEY` and copy the same file to both nodes"
            ))),
            Err(e) => Err(err(e.to_string())),
        }
    }
}

/// The pair's shared secret: file handle MACs and the mirror's frame MACs derive from it,
/// so both nodes of a pair (and every restart) must use the same bytes.
#[derive(Clone)]
pub struct PairKey(Vec<u8>);

impl std::fmt::Debug for PairKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairKey(..)")
    }
}

impl PairKey {
    /// A key from raw bytes (at least [`PAIR_KEY_BYTES_MIN`]).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<PairKey, String> {
        if bytes.len() < PAIR_KEY_BYTES_MIN {
            return Err(format!(
                "{} bytes is shorter than {PAIR_KEY_BYTES_MIN}; make a new one with \
                 `head -c {PAIR_KEY_BYTES_GENERATED} /dev/urandom > KEY` (both nodes need the same file)",
                bytes.len()
            ));
        }
        Ok(PairKey(bytes))
    }

    /// A fresh random key.
    pub fn generate() -> PairKey {
        use rand::RngCore as _;
        let mut bytes = vec![0u8; PAIR_KEY_BYTES_GENERATED];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        PairKey(bytes)
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The file-handle MAC key (same on both nodes, stable across restarts).
    pub fn fh_key_bytes(&self) -> [u8; 32] {
        blake3::derive_key("twinfiler file handles v1", &self.0)
    }

    /// The interconnect's key (handshake and frame MACs).
    pub fn interconnect_key(&self) -> cluster::interconnect::frame::PairKey {
        cluster::interconnect::frame::PairKey(blake3::derive_key(
            "twinfiler interconnect key v1",
            &self.0,
        ))
    }

    /// The nvlog mirror's frame MAC key.
    pub fn mirror_key(&self) -> nvlog::MirrorKey {
        nvlog::MirrorKey(blake3::derive_key("twinfiler nvlog mirror key v1", &self.0))
    }
}

/// Creates `path` with mode 0600 (never replacing an existing file) and syncs it.
fn write_new_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    // The mode passed to open is filtered by the umask; make sure it is exactly 0600.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}
