//! Shared test harness: a node's directories and config, in-process nodes and node
//! processes (`twinfiler node --config`), all on 127.0.0.1 with ports the kernel picks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, Ordering};

use twinfiler::config::NodeConfig;
use twinfiler::lab::process::NodeProc;
use twinfiler::node::Node;

/// A node process must print its serving line within this bound (aggregate creation and
/// mkfs included). It must exit within `lab::process::STOP_MS_MAX` of SIGTERM.
const PROCESS_START_MS_MAX: u64 = 60_000;

/// Export rules used by most tests: everything from 127.0.0.1, root not squashed.
pub const EXPORT_ROOT_OPEN: &str = r#"
[[export]]
path = "/"
rules = ["127.0.0.1(rw,no_root_squash,insecure)"]
"#;

/// How a test node is set up.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Node name.
    pub name: String,
    /// CP timer, ms.
    pub cp_interval_ms: u64,
    /// `[mirror]` partner address (None and no listen = standalone).
    pub mirror_partner: Option<SocketAddr>,
    /// `[mirror]` listen address (the partner's log comes here).
    pub mirror_listen: Option<SocketAddr>,
    /// `[[export]]` tables (TOML).
    pub exports: String,
    /// Data disks of the aggregate.
    pub data_disks: usize,
    /// MiB per disk file.
    pub disk_mib: u64,
    /// NVRAM half, MiB.
    pub half_mib: u64,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            name: "t".into(),
            cp_interval_ms: 10_000,
            mirror_partner: None,
            mirror_listen: None,
            exports: EXPORT_ROOT_OPEN.into(),
            data_disks: 3,
            disk_mib: 64,
            half_mib: 16,
        }
    }
}

/// A node's directories: a temp dir (state, disks) and an NVRAM region file in /dev/shm
/// (removed on drop). The same `Setup` restarted keeps its aggregate and log.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub region: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.region);
    }
}

impl Setup {
    pub fn new() -> Setup {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = tempfile::Builder::new()
            .prefix("twinfiler-node-test-")
            .tempdir()
            .expect("temp dir");
        let region = PathBuf::from(format!(
            "/dev/shm/twinfiler-node-test-{}-{}.nvram",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&region);
        Setup { dir, region }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The configuration text for these options.
    pub fn config_text(&self, o: &Opts) -> String {
        let d = self.path();
        let mut mirror = String::new();
        if o.mirror_partner.is_some() || o.mirror_listen.is_some() {
            mirror.push_str("[mirror]\ndegraded_after_ms = 2000\n");
        }
        if let Some(p) = o.mirror_partner {
            mirror.push_str(&format!("partner = \"{p}\"\n"));
        }
        if let Some(l) = o.mirror_listen {
            mirror.push_str(&format!("listen = \"{l}\"\n"));
        }
        format!(
            r#"
name = "{name}"
state_dir = "{state}"
cp_interval_ms = {cp}

[aggregate]
disks_dir = "{disks}"
[aggregate.create]
data_disks = {dd}
disk_mib = {mib}
spares = 0

[nvram]
region_path = "{region}"
half_mib = {half}

{mirror}
[nfs]
bind = "127.0.0.1"
portmap_port = 0
mount_port = 0
nfs_port = 0
stop_grace_ms = 5000

{exports}
"#,
            name = o.name,
            state = d.join("state").display(),
            cp = o.cp_interval_ms,
            disks = d.join("disks").display(),
            dd = o.data_disks,
            mib = o.disk_mib,
            region = self.region.display(),
            half = o.half_mib,
            exports = o.exports,
        )
    }

    /// Writes the config file and returns its path.
    pub fn write_config(&self, o: &Opts) -> PathBuf {
        let path = self.path().join("node.toml");
        std::fs::write(&path, self.config_text(o)).expect("write config");
        path
    }

    /// Parses the config for these options.
    pub fn config(&self, o: &Opts) -> NodeConfig {
        let path = self.write_config(o);
        NodeConfig::load(&path).expect("test config is valid")
    }

    /// Starts an in-process node.
    pub async fn start(&self, o: &Opts) -> Node {
        Node::start(self.config(o)).await.expect("node starts")
    }

    /// Starts a node process.
    pub fn spawn(&self, o: &Opts) -> NodeProcess {
        NodeProcess::spawn(&self.write_config(o), &self.path().join("node.log"))
    }
}

/// A `twinfiler node` process (the lab's [`NodeProc`]) and the ports its serving line names.
pub struct NodeProcess {
    proc_: NodeProc,
    /// Portmapper (TCP).
    pub portmap: SocketAddr,
    /// MOUNT (TCP).
    pub mount: SocketAddr,
    /// NFS (TCP).
    pub nfs: SocketAddr,
    log: PathBuf,
}

impl NodeProcess {
    /// Starts `twinfiler node --config CONFIG` (stderr to `log`) and waits for its serving
    /// line.
    pub fn spawn(config: &Path, log: &Path) -> NodeProcess {
        let exe = Path::new(env!("CARGO_BIN_EXE_twinfiler"));
        let mut proc_ = NodeProc::spawn_config(exe, "under test", config, log.to_owned(), None)
            .expect("spawn twinfiler node");
        let line = proc_
            .wait_serving(PROCESS_START_MS_MAX)
            .unwrap_or_else(|e| panic!("{e}"));
        let field = |k: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {k} in {line:?}"))
        };
        NodeProcess {
            portmap: field("portmap="),
            mount: field("mount="),
            nfs: field("nfs="),
            proc_,
            log: log.to_owned(),
        }
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub fn stop(self) -> ExitStatus {
        let log = self.log.clone();
        self.proc_.stop().unwrap_or_else(|e| {
            panic!(
                "{e}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
    }

    /// SIGKILL: no shutdown, no final CP.
    pub fn kill9(self) {
        self.proc_.kill9();
    }

    /// The node's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Content that differs per file and per 4-byte word, so a misplaced block cannot pass.
pub fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len.div_ceil(4))
        .flat_map(|i| (seed.wrapping_mul(2_654_435_761) ^ i as u32).to_le_bytes())
        .collect();
    v.truncate(len);
    v
}
