//! A running twinfiler node: its aggregate, file system, NVRAM log, CP driver and NFS
//! service, started and stopped as one.
//!
//! Start order (each step needs the one before):
//! 1. lock the state dir (two nodes on one aggregate would corrupt it);
//! 2. assemble (or create) the RAID-4 group, mount (or make) the file system;
//! 3. open the NVRAM log, standalone or mirrored (the mirror key derives from the pair key);
//! 4. build the NFS service (file-handle key from the pair key) and replay the own log
//!    past the mounted CP: this re-applies the ops and rebuilds the duplicate-request cache;
//! 5. start the CP driver;
//! 6. start the RPC listeners and register the programs with the portmapper;
//! 7. start the operator console on its management address, when `[console]` is configured.
//!
//! Shutdown is the reverse: stop the console, stop accepting and finish the calls in flight, stop the CP
//! driver, take a final CP, release the log it covers, close the log.

mod aggregate;
pub mod console;
mod cp;
mod status;

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nvlog::{MirrorConfig, Nvlog, SenderConfig};
use raid4::Group;
use twinfiler_nfs::{Exports, NfsService, ServiceConfig};
use twinfiler_proto::fh::FhKey;
use twinfiler_proto::{mount, nfs3, portmap};
use twinfiler_rpc::{PortmapService, RpcServer};
use wafl::{Fs, FsConfig};

pub use cp::{CpInfo, CpReason, CpRecord};
pub use status::{Mode, NodeStatus};

use crate::config::{ConfigError, NodeConfig, PairKey};

/// Why a node cannot start or stop cleanly. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration or pair key is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A local file operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another process holds this node's state dir.
    #[error("{0}")]
    Locked(String),
    /// The aggregate or its file system cannot be opened.
    #[error("{0}")]
    Aggregate(String),
    /// The NVRAM log cannot be opened or replayed.
    #[error("NVRAM log: {0}")]
    Nvlog(String),
    /// The NFS service cannot start (exports, replay).
    #[error("NFS service: {0}")]
    Service(String),
    /// A listener cannot be bound.
    #[error("cannot listen on {addr} ({what}); is another server (rpcbind, nfsd) using the port?")]
    Listen {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A CP failed. Nothing acknowledged is lost: the NVRAM log keeps every op until a CP
    /// covers it, and the next start replays it.
    #[error("CP failed: {0}; nothing is lost: restart the node to replay the NVRAM log")]
    Cp(String),
}

/// What the start did, for status and tests.
#[derive(Clone, Debug, Default)]
pub struct StartReport {
    /// This start created the aggregate and made its file system.
    pub created: bool,
    /// Log records replayed past the mounted CP.
    pub replayed_records: u64,
    /// Time the replay took, ms.
    pub replay_ms: u64,
    /// The file system's `applied_seq` at mount (the last CP's).
    pub mounted_seq: u64,
}

/// A running node. Dropping it without [`Node::shutdown`] is like a crash without losing
/// anything: the log keeps what no CP covered, and the next start replays it.
pub struct Node {
    config: NodeConfig,
    group: Arc<Group>,
    fs: Arc<Fs>,
    log: Nvlog,
    cp: Option<cp::CpLoop>,
    cp_record: Arc<Mutex<CpRecord>>,
    start: StartReport,
    service: Arc<NfsService>,
    rpc: RpcServer,
    listeners: Listeners,
    console: Option<console::Console>,
    _lock: StateLock,
}

/// The bound listeners (ports as bound: a configured 0 becomes a real port).
#[derive(Clone, Copy, Debug)]
pub struct Listeners {
    /// Portmapper, TCP.
    pub portmap_tcp: SocketAddr,
    /// Portmapper, UDP.
    pub portmap_udp: SocketAddr,
    /// MOUNT, TCP.
    pub mount_tcp: SocketAddr,
    /// MOUNT, UDP.
    pub mount_udp: SocketAddr,
    /// NFS, TCP.
    pub nfs_tcp: SocketAddr,
    /// NFS, UDP (when configured).
    pub nfs_udp: Option<SocketAddr>,
}

impl Node {
    /// Starts a node (see the module docs for the order). Needs a multi-threaded tokio
    /// runtime: the file system blocks on disk IO.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let lock = StateLock::acquire(&config.state_dir).await?;
        let key = config.load_pair_key()?;
        let fs_config = FsConfig {
            cp_interval_ms: config.cp_interval_ms,
            ..FsConfig::default()
        };
        let storage = aggregate::open(&config.aggregate, fs_config).await?;
        let mounted_seq = storage.fs.applied_seq();
        let log = open_log(&config, &key).await?;
        let exports = Exports::from_config(&config.exports)
            .map_err(|e| NodeError::Service(format!("exports: {e}")))?;
        let uuid = storage.group.uuid();
        let service = NfsService::new(
            storage.fs.clone(),
            Arc::new(log.clone()),
            ServiceConfig::new(*uuid.as_bytes(), FhKey(key.fh_key_bytes()), exports),
        );
        let (replayed_records, replay_ms) = replay(&service, &log, &storage.fs).await?;
        if config.nfs.create_export_dirs {
            // Exports name directories inside the file system; make the missing ones
            // (logged like any request) so a fresh aggregate can be mounted at once.
            let created_dirs = service
                .create_export_dirs()
                .await
                .map_err(|e| NodeError::Service(format!("create the export directories: {e}")))?;
            if !created_dirs.is_empty() {
                tracing::info!(dirs = ?created_dirs, "created export directories");
            }
        }
        tracing::info!(
            node = %config.name,
            records = replayed_records,
            ms = replay_ms,
            from_seq = mounted_seq + 1,
            "replayed the NVRAM log past the last CP"
        );
        let start = StartReport {
            created: storage.created,
            replayed_records,
            replay_ms,
            mounted_seq,
        };
        let cp_record = Arc::new(Mutex::new(CpRecord::default()));
        let cp = cp::CpLoop::start(
            storage.fs.clone(),
            log.clone(),
            config.cp_interval_ms,
            cp_record.clone(),
        );
        // Made before the listeners: the NFS program records every call into it.
        let metrics = Arc::new(web_ui::Metrics::new());
        let (rpc, listeners) = match serve(&config, &service, &metrics).await {
            Ok(r) => r,
            Err(e) => {
                cp.stop().await;
                return Err(e);
            }
        };
        let console = match console::Console::start(console::NodeView {
            config: config.clone(),
            group: storage.group.clone(),
            log: log.clone(),
            cp_record: cp_record.clone(),
            service: service.clone(),
            metrics,
        })
        .await
        {
            Ok(c) => c,
            Err(e) => {
                rpc.stop(Duration::ZERO).await;
                cp.stop().await;
                return Err(e);
            }
        };
        let node = Node {
            config,
            group: storage.group,
            fs: storage.fs,
            log,
            cp: Some(cp),
            cp_record,
            start,
            service,
            rpc,
            listeners,
            console,
            _lock: lock,
        };
        tracing::info!("node started\n{}", node.status());
        Ok(node)
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// What the start did.
    pub fn start_report(&self) -> &StartReport {
        &self.start
    }

    /// The file system (tests and the console look inside).
    pub fn fs(&self) -> &Arc<Fs> {
        &self.fs
    }

    /// The NVRAM log.
    pub fn log(&self) -> &Nvlog {
        &self.log
    }

    /// Runs a CP now and releases the log it covers (operator command, tests).
    pub async fn cp_now(&self) -> Result<CpInfo, NodeError> {
        let outcome = cp::run_cp(&self.fs, &self.log, CpReason::Requested).await;
        cp::note(&self.cp_record, outcome.clone());
        outcome.map_err(NodeError::Cp)
    }

    /// Current status.
    pub fn status(&self) -> NodeStatus {
        status::collect(self)
    }

    /// The NFS service.
    pub fn service(&self) -> &Arc<NfsService> {
        &self.service
    }

    /// The bound listeners.
    pub fn listeners(&self) -> Listeners {
        self.listeners
    }

    /// The console's bound address, when `[console]` is configured.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console.as_ref().map(|c| c.addr())
    }

    /// The console backend (its metrics and event log), when `[console]` is configured.
    pub fn console(&self) -> Option<&Arc<console::NodeConsole>> {
        self.console.as_ref().map(|c| c.backend())
    }

    /// Stops serving, takes a final CP and closes the log.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        tracing::info!(node = %self.config.name, "shutting down");
        if let Some(c) = self.console.take() {
            c.stop();
        }
        let grace = Duration::from_millis(self.config.nfs.stop_grace_ms);
        let stopped = self.rpc.stop(grace).await;
        if !stopped.drained {
            tracing::warn!(
                tasks_left = stopped.tasks_left,
                "calls still in flight after the grace period were abandoned (clients retry; \
                 their logged ops are replayed or covered by the final CP)"
            );
        }
        if let Some(cp) = self.cp.take() {
            cp.stop().await;
        }
        let outcome = cp::run_cp(&self.fs, &self.log, CpReason::Shutdown).await;
        cp::note(&self.cp_record, outcome.clone());
        let info = outcome.map_err(NodeError::Cp)?;
        tracing::info!(node = %self.config.name, gen = info.generation, covered_seq = info.covered_seq,
            "final CP done; log released");
        Ok(())
    }
}

impl Drop for Node {
    /// Without [`Node::shutdown`]: stop serving and stop CPs, take no final CP (like a
    /// crash: the next start replays the log).
    fn drop(&mut self) {
        if let Some(cp) = self.cp.take() {
            cp.abort();
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let rpc = self.rpc.clone();
            rt.spawn(async move { rpc.stop(Duration::ZERO).await });
        }
    }
}

/// Replays the own log past the mounted CP through the service (re-applies the ops and
/// rebuilds the duplicate-request cache). Returns (OP records re-executed, ms).
async fn replay(service: &Arc<NfsService>, log: &Nvlog, fs: &Fs) -> Result<(u64, u64), NodeError> {
    let started = Instant::now();
    let from = fs.applied_seq() + 1;
    let log = log.clone();
    let service = service.clone();
    let report = tokio::task::spawn_blocking(move || {
        let replay = log
            .replay_own(from)
            .map_err(|e| NodeError::Nvlog(format!("read the log from seq {from}: {e}")))?;
        service
            .replay(replay.records)
            .map_err(|e| NodeError::Service(format!("replay from seq {from}: {e}")))
    })
    .await
    .map_err(|e| NodeError::Service(format!("replay task: {e}")))??;
    Ok((
        report.ops_replayed as u64,
        started.elapsed().as_millis() as u64,
    ))
}

/// Starts the RPC server: every listener serves portmap, MOUNT and NFS; the portmapper
/// names the configured port of each program.
async fn serve(
    config: &NodeConfig,
    service: &Arc<NfsService>,
    metrics: &Arc<web_ui::Metrics>,
) -> Result<(RpcServer, Listeners), NodeError> {
    let n = &config.nfs;
    let rpc = RpcServer::new(n.server_config())
        .map_err(|e| NodeError::Service(format!("RPC server: {e}")))?;
    let pmap = Arc::new(PortmapService::new());
    rpc.register(portmap::PMAP_PROGRAM, pmap.clone());
    rpc.register(mount::MOUNT_PROGRAM, service.mount_program());
    rpc.register(
        nfs3::NFS_PROGRAM,
        console::MeteredProgram::wrap(service.nfs_program(), metrics.clone()),
    );
    let at = |port| SocketAddr::new(n.bind, port);
    let tcp = |what, addr| {
        let rpc = rpc.clone();
        async move {
            rpc.listen_tcp(addr)
                .await
                .map_err(|source| NodeError::Listen { what, addr, source })
        }
    };
    let udp = |what, addr| {
        let rpc = rpc.clone();
        async move {
            rpc.listen_udp(addr)
                .await
                .map_err(|source| NodeError::Listen { what, addr, source })
        }
    };
    let bound = async {
        let portmap_tcp = tcp("portmap/tcp", at(n.portmap_port)).await?;
        let portmap_udp = udp("portmap/udp", at(n.portmap_port)).await?;
        let mount_tcp = tcp("mount/tcp", at(n.mount_port)).await?;
        let mount_udp = udp("mount/udp", at(n.mount_port)).await?;
        let nfs_tcp = tcp("nfs/tcp", at(n.nfs_port)).await?;
        let nfs_udp = match n.nfs_udp {
            true => Some(udp("nfs/udp", at(n.nfs_port)).await?),
            false => None,
        };
        Ok::<_, NodeError>(Listeners {
            portmap_tcp,
            portmap_udp,
            mount_tcp,
            mount_udp,
            nfs_tcp,
            nfs_udp,
        })
    }
    .await;
    let l = match bound {
        Ok(l) => l,
        Err(e) => {
            rpc.stop(Duration::ZERO).await;
            return Err(e);
        }
    };
    let registered = pmap.set_self(Some(l.portmap_tcp.port()), Some(l.portmap_udp.port()))
        && pmap.set_program(
            mount::MOUNT_PROGRAM,
            &[mount::MOUNT_V3],
            Some(l.mount_tcp.port()),
            Some(l.mount_udp.port()),
        )
        && pmap.set_program(
            nfs3::NFS_PROGRAM,
            &[nfs3::NFS_V3],
            Some(l.nfs_tcp.port()),
            l.nfs_udp.map(|a| a.port()),
        );
    // A fresh registry refuses nothing; a refusal is a bug in the registrations above.
    assert!(registered, "portmap registration refused");
    Ok((rpc, l))
}

/// Opens the log: standalone without `[mirror]`, else mirrored with the pair's key.
async fn open_log(config: &NodeConfig, key: &PairKey) -> Result<Nvlog, NodeError> {
    let mirror = config.mirror.as_ref().map(|m| MirrorConfig {
        partner_addr: m.partner,
        listen_addr: m.listen,
        key: key.mirror_key(),
        sender: SenderConfig {
            degraded_after_ms: m.degraded_after_ms,
            ..SenderConfig::default()
        },
    });
    let cfg = nvlog::Config {
        region_path: config.nvram.region_path.clone(),
        half_bytes: config.nvram.half_mib << 20,
        mirror,
        ..nvlog::Config::default()
    };
    let path = cfg.region_path.clone();
    tokio::task::spawn_blocking(move || Nvlog::open(cfg))
        .await
        .map_err(|e| NodeError::Nvlog(format!("open task: {e}")))?
        .map_err(|e| NodeError::Nvlog(format!("open {}: {e}", path.display())))
}

/// An exclusive `flock` on `<state_dir>/node.lock`, held while the node runs.
struct StateLock {
    _file: File,
}

/// How long a start waits for a previous process on the same state dir to let go (a
/// restart right after a kill).
const STATE_LOCK_WAIT_MS_MAX: u64 = 2_000;
const STATE_LOCK_POLL_MS: u64 = 20;

impl StateLock {
    async fn acquire(dir: &Path) -> Result<StateLock, NodeError> {
        std::fs::create_dir_all(dir).map_err(|e| NodeError::Io {
            what: format!("create the state dir {}", dir.display()),
            source: e,
        })?;
        let path = dir.join("node.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| NodeError::Io {
                what: format!("open {}", path.display()),
                source: e,
            })?;
        let deadline = Instant::now() + Duration::from_millis(STATE_LOCK_WAIT_MS_MAX);
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(StateLock { _file: file });
            }
            if Instant::now() >= deadline {
                return Err(NodeError::Locked(format!(
                    "{} is locked: another twinfiler node runs on this state dir; stop it first",
                    path.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(STATE_LOCK_POLL_MS)).await;
        }
    }
}
