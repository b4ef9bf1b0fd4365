//! A running twinfiler node: its NVRAM log, the identities it serves (its own, and its
//! partner's after a takeover) and, in an HA pair, the driver of the takeover machine.
//!
//! A standalone or merely mirrored node (no `[cluster]`) starts its own identity at once:
//! 1. lock the state dir (two nodes on one aggregate would corrupt it);
//! 2. open the NVRAM log, standalone or mirrored (the mirror key derives from the pair key);
//! 3. assemble (or create) the RAID-4 group, mount (or make) the file system;
//! 4. replay the own log past the mounted CP through the NFS service (this re-applies the
//!    ops and rebuilds the duplicate-request cache), start the CP loop;
//! 5. bind the RPC listeners on the data address and serve;
//! 6. start the operator console on its management address, when `[console]` is configured.
//!
//! A node in a pair opens its log, starts the interconnect and the console, and hands the
//! rest to the takeover machine ([`ha`]): it reserves its disks, mounts, replays, raises
//! its address and serves when the machine says so — or waits for giveback when its
//! partner holds its identity.
//!
//! Shutdown: stop the console and the driver, then per identity served: stop accepting,
//! finish the calls in flight, stop the CP loop, take a final CP, release the log it covers.

mod aggregate;
pub mod console;
mod cp;
pub mod ha;
pub mod identity;
mod operations;
mod status;

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::interconnect::{Interconnect, InterconnectConfig, LinkAddrs};
use cluster::NodeId;
use nvlog::{MirrorConfig, Nvlog, SenderConfig};
use twinfiler_nfs::NfsService;
use twinfiler_proto::{mount, nfs3, portmap};
use twinfiler_rpc::{PortmapService, RpcServer};
use wafl::Fs;

pub use cp::{CpInfo, CpReason, CpRecord};
pub use status::{Mode, NodeStatus};

use crate::config::{ConfigError, NodeConfig, PairKey};
use identity::{Identity, IdentityContext, Published};

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
    /// The HA pair cannot start (interconnect, persisted state).
    #[error("HA pair: {0}")]
    Cluster(String),
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
    log: Nvlog,
    /// The own identity of a node outside a pair (in a pair the driver holds both).
    standalone: Option<Identity>,
    /// What each identity publishes once mounted here, by node id (index 0 = own outside
    /// a pair).
    published: Vec<Arc<Mutex<Option<Published>>>>,
    own_index: usize,
    driver: Option<ha::Driver>,
    start: StartReport,
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
        let partner = config.load_partner()?;
        let log = open_log(&config, &key).await?;
        // Made before the listeners: the NFS programs record every call into them.
        let metrics = Arc::new(web_ui::Metrics::new());
        let (input_tx, input_rx) = tokio::sync::mpsc::unbounded_channel();
        let me = NodeId(config.cluster.as_ref().map_or(0, |c| c.node_id));
        let loss_tx = input_tx.clone();
        let ctx = IdentityContext {
            me,
            key: key.clone(),
            node_log: log.clone(),
            takeover_log_path: config.takeover_log_path(),
            cp_interval_ms: config.cp_interval_ms,
            data_interface: config
                .cluster
                .as_ref()
                .and_then(|c| c.data_interface.clone()),
            metrics: metrics.clone(),
            reservations_required: partner.is_some(),
            on_loss: Arc::new(move |id, loss| {
                tracing::error!(identity = %id, ?loss, "reservation lost");
                let _ = loss_tx.send(ha::Input::Event(cluster::Event::ReservationLost(id)));
            }),
        };
        let (standalone, published, own_index, driver, start) = match partner {
            None => {
                let (identity, report) = start_standalone(&config, &ctx).await?;
                let p = vec![identity.published()];
                (Some(identity), p, 0, None, report)
            }
            Some(partner) => {
                let driver =
                    start_driver(&config, partner, &key, &log, &ctx, (input_tx, input_rx)).await?;
                (
                    None,
                    driver.1,
                    usize::from(me.0),
                    Some(driver.0),
                    StartReport::default(),
                )
            }
        };
        let console = console::Console::start(console::NodeView {
            config: config.clone(),
            log: log.clone(),
            published: published.clone(),
            own_index,
            ha: driver.as_ref().map(|d| d.shared().clone()),
            metrics,
        })
        .await?;
        let node = Node {
            config,
            log,
            standalone,
            published,
            own_index,
            driver,
            start,
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

    /// The own identity's handles, when it is mounted and served here.
    pub fn own_published(&self) -> Option<Published> {
        self.published[self.own_index]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The own file system. Panics when this node does not serve its own identity now
    /// (taken over, or still starting in a pair): tests and tools of a serving node.
    pub fn fs(&self) -> Arc<Fs> {
        self.own_published()
            .expect("the own identity is not served by this node now")
            .fs
    }

    /// The NVRAM log.
    pub fn log(&self) -> &Nvlog {
        &self.log
    }

    /// The HA state, in a pair.
    pub fn ha(&self) -> Option<&Arc<ha::HaShared>> {
        self.driver.as_ref().map(|d| d.shared())
    }

    /// Runs a CP of the own identity now and releases the log it covers (operator
    /// command, tests).
    pub async fn cp_now(&self) -> Result<CpInfo, NodeError> {
        let p = self
            .own_published()
            .ok_or_else(|| NodeError::Cp("the own identity is not served here now".into()))?;
        let outcome = cp::run_cp(&p.fs, &p.log, CpReason::Requested).await;
        cp::note(&p.cp_record, outcome.clone());
        outcome.map_err(NodeError::Cp)
    }

    /// Current status.
    pub fn status(&self) -> NodeStatus {
        status::collect(self)
    }

    /// The own NFS service. Panics like [`Node::fs`].
    pub fn service(&self) -> Arc<NfsService> {
        self.own_published()
            .expect("the own identity is not served by this node now")
            .service
    }

    /// The own identity's listeners. Panics when they are not bound here (see
    /// [`Node::try_listeners`]).
    pub fn listeners(&self) -> Listeners {
        self.try_listeners()
            .expect("the own identity is not listening on this node now")
    }

    /// The own identity's listeners, when bound here.
    pub fn try_listeners(&self) -> Option<Listeners> {
        self.own_published().and_then(|p| p.listeners)
    }

    /// The console's bound address, when `[console]` is configured.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console.as_ref().map(|c| c.addr())
    }

    /// The console backend (its metrics and event log), when `[console]` is configured.
    pub fn console(&self) -> Option<&Arc<console::NodeConsole>> {
        self.console.as_ref().map(|c| c.backend())
    }

    /// Stops serving, takes a final CP of every identity served and closes the log.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        tracing::info!(node = %self.config.name, "shutting down");
        if let Some(c) = self.console.take() {
            c.stop();
        }
        let grace = Duration::from_millis(self.config.nfs.stop_grace_ms);
        let mut result = Ok(());
        if let Some(mut identity) = self.standalone.take() {
            result = identity.shutdown(grace).await;
        }
        if let Some(driver) = self.driver.take() {
            for identity in driver.stop().await.into_iter().flatten() {
                let mut id = identity.lock().await;
                if id.is_mounted() {
                    let r = id.shutdown(grace).await;
                    result = result.and(r);
                }
            }
        }
        result.map_err(NodeError::Cp)?;
        tracing::info!(node = %self.config.name, "final CP done; log released");
        Ok(())
    }
}

/// Starts the own identity of a node outside a pair: mount, replay, listen, serve.
async fn start_standalone(
    config: &NodeConfig,
    ctx: &IdentityContext,
) -> Result<(Identity, StartReport), NodeError> {
    let created = aggregate::needs_create(&config.aggregate);
    let mut identity = Identity::new(ctx.me, config.clone(), ctx);
    identity.mount().await.map_err(NodeError::Aggregate)?;
    let mounted_seq = identity.published_fs_seq().unwrap_or_default();
    let started = Instant::now();
    let replayed_records = identity.replay().await.map_err(NodeError::Service)?;
    let replay_ms = started.elapsed().as_millis() as u64;
    identity.raise_addresses().await?;
    identity.serve().map_err(NodeError::Service)?;
    identity.after_first_serve();
    Ok((
        identity,
        StartReport {
            created,
            replayed_records,
            replay_ms,
            mounted_seq,
        },
    ))
}

/// Starts the interconnect and the takeover driver of a node in a pair.
async fn start_driver(
    config: &NodeConfig,
    partner: NodeConfig,
    key: &PairKey,
    log: &Nvlog,
    ctx: &IdentityContext,
    input: (
        tokio::sync::mpsc::UnboundedSender<ha::Input>,
        tokio::sync::mpsc::UnboundedReceiver<ha::Input>,
    ),
) -> Result<(ha::Driver, Vec<Arc<Mutex<Option<Published>>>>), NodeError> {
    let c = config.cluster.as_ref().expect("a pair has [cluster]");
    let me = NodeId(c.node_id);
    let other = NodeId(1 - c.node_id);
    let tcfg = c.takeover_config();
    tcfg.validate()
        .map_err(|e| NodeError::Cluster(format!("[cluster] bounds: {e}")))?;
    let links: Vec<LinkAddrs> = c
        .links
        .iter()
        .map(|l| LinkAddrs {
            local: l.local,
            peer: l.peer,
        })
        .collect();
    if links.is_empty() {
        return Err(NodeError::Cluster(
            "[cluster] needs at least one link".into(),
        ));
    }
    let mut icfg = InterconnectConfig::new(me, other, links.clone(), key.interconnect_key());
    icfg.ping_interval_ms = c.heartbeat_interval_ms;
    icfg.link_silence_ms = c.heartbeat_loss_ms.max(2 * c.heartbeat_interval_ms) / 2;
    let interconnect = Interconnect::start(icfg)
        .await
        .map_err(|e| NodeError::Cluster(format!("interconnect: {e}")))?;
    let mut configs = [config.clone(), partner.clone()];
    if me.0 == 1 {
        configs.swap(0, 1);
    }
    let identities = [
        Identity::new(NodeId(0), configs[0].clone(), ctx),
        Identity::new(NodeId(1), configs[1].clone(), ctx),
    ];
    let published = vec![identities[0].published(), identities[1].published()];
    if let Some(path) = config.takeover_log_path() {
        identity::prepare_takeover_log(&path);
    }
    let driver = ha::Driver::start(ha::DriverParts {
        cfg: tcfg,
        me,
        node_log: log.clone(),
        identities,
        interconnect,
        persist_path: config.state_dir.join("takeover.state"),
        configs,
        links: links.len(),
        input,
    })
    .map_err(NodeError::Cluster)?;
    tracing::info!(node = %config.name, partner = %partner.name, "HA driver started");
    Ok((driver, published))
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
        busy_poll_us: m.busy_poll_us,
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
