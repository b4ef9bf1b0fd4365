//! One identity served by this node: an aggregate with its file system, its log, its CP
//! loop, its NFS service and the listeners on its data address.
//!
//! A node serves its own identity, and after a takeover also its partner's. Each step of
//! the takeover machine (`cluster::takeover::Step`) is one method here, called by the
//! driver in the machine's order: reserve the disks → mount → replay → raise the address →
//! verify the reservation → serve; and drain → final CP → stop serving → release the
//! reservation → release the address.
//!
//! The log of an identity: the own identity appends to the node's own NVRAM log (mirrored
//! to the partner). The partner's identity, once taken over, continues the partner's
//! sequence numbers in a separate local region (`[cluster] takeover_log`): its file system's
//! `applied_seq` stays one sequence space, so a CP releases only what it covers and a replay
//! after a crash of this node finds the mirror and then the continuation, in order.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::ipaddr::{self, Ipv4Cidr};
use cluster::reserve::disk_block::{DiskBlockReservation, DiskBlockTiming};
use cluster::reserve::{HoldLoss, HoldMonitor, ReservationKey, ReservationSet, Reservations};
use cluster::NodeId;
use nvlog::Nvlog;
use raid4::Group;
use twinfiler_nfs::{Exports, NfsService, ServiceConfig};
use twinfiler_proto::fh::FhKey;
use twinfiler_rpc::RpcServer;
use wafl::{Fs, FsConfig};

use super::cp::{self, CpInfo, CpLoop, CpReason, CpRecord};
use super::{aggregate, serve, Listeners, NodeError};
use crate::config::{NodeConfig, PairKey};

/// How often a holder re-reads its reservation blocks (a preempted holder stops writing
/// within this, plus one IO; the preempter's fence wait must exceed it).
pub const HOLD_CHECK_INTERVAL_MS: u64 = 200;
/// Bytes per half of a fresh takeover log region (the partner's identity while served here).
const TAKEOVER_LOG_HALF_BYTES: u64 = 64 << 20;
/// How often a drain looks at the calls still in flight.
const DRAIN_POLL_MS: u64 = 5;

/// The handles of a mounted, served identity that status and the console read.
#[derive(Clone)]
pub struct Published {
    /// The RAID-4 group.
    pub group: Arc<Group>,
    /// The file system.
    pub fs: Arc<Fs>,
    /// The log its requests are appended to.
    pub log: Nvlog,
    /// Its NFS service.
    pub service: Arc<NfsService>,
    /// Its CP outcomes.
    pub cp_record: Arc<Mutex<CpRecord>>,
    /// Its listeners, once raised.
    pub listeners: Option<Listeners>,
    /// Its RPC server, once raised (connected clients).
    pub rpc: Option<RpcServer>,
}

/// One identity (own or partner's) and what this node holds of it now.
pub struct Identity {
    /// Whose identity.
    pub id: NodeId,
    /// That node's configuration (aggregate, data address, ports, exports).
    pub config: NodeConfig,
    /// Whether it is this node's own identity.
    own: bool,
    me: NodeId,
    key: PairKey,
    /// The node's own NVRAM log: appended to for the own identity; its mirror area holds
    /// the partner's log for a takeover.
    node_log: Nvlog,
    /// Where the partner's identity is logged while served here.
    takeover_log_path: Option<PathBuf>,
    fs_config: FsConfig,
    cp_interval_ms: u64,
    reservation_timing: DiskBlockTiming,
    hold: Option<Hold>,
    storage: Option<aggregate::Storage>,
    log: Option<Nvlog>,
    service: Option<Arc<NfsService>>,
    cp: Option<CpLoop>,
    cp_record: Arc<Mutex<CpRecord>>,
    rpc: Option<(RpcServer, Listeners)>,
    raised: Option<(String, Ipv4Cidr)>,
    data_interface: Option<String>,
    metrics: Arc<web_ui::Metrics>,
    published: Arc<Mutex<Option<Published>>>,
    on_loss: Arc<dyn Fn(NodeId, HoldLoss) + Send + Sync>,
    reservations_required: bool,
    export_dirs_done: bool,
    /// The last final CP covers everything logged for the identity (a drain held new
    /// calls since): its takeover log is no longer needed once it stops being served.
    final_cp_covers_log: bool,
}

/// The reservation this node holds on the identity's disks.
struct Hold {
    monitor: HoldMonitor,
    /// Cleared before the reservation is released, so nothing writes past the release.
    gate: Arc<AtomicBool>,
}

/// What the driver hands every identity it builds.
pub struct IdentityContext {
    /// This node.
    pub me: NodeId,
    /// The pair's key.
    pub key: PairKey,
    /// The node's own NVRAM log.
    pub node_log: Nvlog,
    /// Where the partner's identity is logged while served here.
    pub takeover_log_path: Option<PathBuf>,
    /// CP timer of every identity this node serves.
    pub cp_interval_ms: u64,
    /// Interface for non-loopback data addresses.
    pub data_interface: Option<String>,
    /// The node's metrics (the NFS programs record calls into them).
    pub metrics: Arc<web_ui::Metrics>,
    /// In a pair: nothing is mounted without first reserving its disks.
    pub reservations_required: bool,
    /// Called (from a monitor thread) when a hold is lost.
    pub on_loss: Arc<dyn Fn(NodeId, HoldLoss) + Send + Sync>,
}

impl Identity {
    /// An identity nothing is held of yet.
    pub fn new(id: NodeId, config: NodeConfig, ctx: &IdentityContext) -> Identity {
        Identity {
            id,
            own: id == ctx.me,
            me: ctx.me,
            key: ctx.key.clone(),
            node_log: ctx.node_log.clone(),
            takeover_log_path: ctx.takeover_log_path.clone(),
            fs_config: FsConfig {
                cp_interval_ms: ctx.cp_interval_ms,
                data_cache_bytes_max: config.aggregate.data_cache_mib << 20,
                ..FsConfig::default()
            },
            cp_interval_ms: ctx.cp_interval_ms,
            reservation_timing: DiskBlockTiming::default(),
            hold: None,
            storage: None,
            log: None,
            service: None,
            cp: None,
            cp_record: Arc::new(Mutex::new(CpRecord::default())),
            rpc: None,
            raised: None,
            data_interface: ctx.data_interface.clone(),
            metrics: ctx.metrics.clone(),
            published: Arc::new(Mutex::new(None)),
            on_loss: ctx.on_loss.clone(),
            reservations_required: ctx.reservations_required,
            export_dirs_done: false,
            final_cp_covers_log: false,
            config,
        }
    }

    /// The handles status reads (None while not mounted and replayed).
    pub fn published(&self) -> Arc<Mutex<Option<Published>>> {
        self.published.clone()
    }

    /// The disk files of the identity's aggregate (members and spares), sorted.
    pub fn disk_paths(config: &NodeConfig) -> Result<Vec<PathBuf>, String> {
        let dir = &config.aggregate.disks_dir;
        let paths = raid4::assemble::scan_dir(dir).map_err(|e| e.to_string())?;
        if paths.is_empty() {
            return Err(format!("{} holds no disks", dir.display()));
        }
        Ok(paths)
    }

    // ----- steps -------------------------------------------------------------------------

    /// Checks that the identity's disks can be opened from here (the takeover check).
    pub fn probe_disks(&self) -> Result<(), String> {
        for p in Self::disk_paths(&self.config)? {
            cluster::direct_io::DirectDisk::open(&p)
                .map_err(|e| format!("open {}: {e}", p.display()))?;
        }
        Ok(())
    }

    /// Reserves the identity's disks (`preempt`: take them from their owner, fencing it).
    /// A first start of the own identity creates the aggregate first (nobody else can hold
    /// disks that do not exist yet).
    pub async fn assert_reservations(&mut self, preempt: bool) -> Result<(), String> {
        if self.verify_reservations() {
            return Ok(());
        }
        if let Some(stale) = self.hold.take() {
            // Preempted (a forced takeover): that hold proves nothing any more. Its monitor
            // stops; nothing is released (the disks are someone else's now).
            stale.gate.store(false, Ordering::Release);
            tokio::task::spawn_blocking(move || drop(stale.monitor.stop()))
                .await
                .map_err(|e| format!("monitor task: {e}"))?;
        }
        if self.own && self.storage.is_none() && aggregate::needs_create(&self.config.aggregate) {
            let storage = aggregate::open(&self.config.aggregate, self.fs_config.clone())
                .await
                .map_err(|e| e.to_string())?;
            self.storage = Some(storage);
        }
        let paths = Self::disk_paths(&self.config)?;
        let key = ReservationKey::for_node(self.me);
        let victim = ReservationKey::for_node(self.id);
        let timing = self.reservation_timing;
        let set = tokio::task::spawn_blocking(move || -> Result<ReservationSet, String> {
            let mut disks: Vec<Box<dyn Reservations>> = Vec::new();
            for p in &paths {
                let r = DiskBlockReservation::open(p, key, timing).map_err(|e| e.to_string())?;
                disks.push(Box::new(r));
            }
            let mut set = ReservationSet::new(disks);
            if preempt {
                set.preempt_all(victim).map_err(|e| e.to_string())?;
            } else {
                set.reserve_all().map_err(|e| e.to_string())?;
            }
            Ok(set)
        })
        .await
        .map_err(|e| format!("reservation task: {e}"))??;
        let id = self.id;
        let on_loss = self.on_loss.clone();
        let monitor =
            HoldMonitor::start(set, HOLD_CHECK_INTERVAL_MS, move |loss| on_loss(id, loss));
        let gate = Arc::new(AtomicBool::new(true));
        self.hold = Some(Hold { monitor, gate });
        tracing::info!(identity = %self.config.name, preempt, "reserved the aggregate's disks");
        Ok(())
    }

    /// Whether this node still holds the reservation it took (no preemption since).
    pub fn verify_reservations(&self) -> bool {
        self.hold
            .as_ref()
            .is_some_and(|h| h.monitor.is_held() && h.gate.load(Ordering::Acquire))
    }

    /// Assembles the group and mounts the file system (newest valid CP).
    pub async fn mount(&mut self) -> Result<(), String> {
        if self.hold.is_none() && self.reservations_required {
            return Err("mount without the reservation".into());
        }
        if self.storage.is_none() {
            let storage = aggregate::open(&self.config.aggregate, self.fs_config.clone())
                .await
                .map_err(|e| e.to_string())?;
            self.storage = Some(storage);
        }
        let storage = self.storage.as_ref().expect("just set");
        if let Some(hold) = &self.hold {
            // Writes need both: the monitor still vouching, and no release begun.
            storage
                .group
                .set_write_gate(vec![hold.monitor.held_flag(), hold.gate.clone()]);
        }
        Ok(())
    }

    /// The mounted file system's `applied_seq` (its last CP's).
    pub fn published_fs_seq(&self) -> Option<u64> {
        self.storage.as_ref().map(|s| s.fs.applied_seq())
    }

    /// After the own identity first serves: make the export directories a fresh aggregate
    /// lacks (logged like any request, so this runs in the background: in a pair the
    /// first appends may wait for the mirror).
    pub fn after_first_serve(&mut self) {
        if !self.own || self.export_dirs_done || !self.config.nfs.create_export_dirs {
            return;
        }
        self.export_dirs_done = true;
        let Some(service) = self.service.clone() else {
            return;
        };
        tokio::spawn(async move {
            match service.create_export_dirs().await {
                Ok(dirs) if !dirs.is_empty() => tracing::info!(?dirs, "created export directories"),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "cannot create the export directories"),
            }
        });
    }

    /// Replays the log past the mounted CP and builds the NFS service (held: it answers
    /// nothing until [`Identity::serve`]). Returns the OP records re-executed.
    pub async fn replay(&mut self) -> Result<u64, String> {
        let storage = self.storage.as_ref().ok_or("replay before mount")?;
        let fs = storage.fs.clone();
        let log = match self.own {
            true => self.node_log.clone(),
            false => {
                let path = self
                    .takeover_log_path
                    .clone()
                    .ok_or("no takeover log configured")?;
                let node_log = self.node_log.clone();
                tokio::task::spawn_blocking(move || open_takeover_log(&path, &node_log))
                    .await
                    .map_err(|e| format!("takeover log task: {e}"))??
            }
        };
        let exports = Exports::from_config(&self.config.exports)
            .map_err(|e| format!("exports of {}: {e}", self.config.name))?;
        let service = NfsService::new(
            fs.clone(),
            Arc::new(log.clone()),
            ServiceConfig::new(
                *storage.group.uuid().as_bytes(),
                FhKey(self.key.fh_key_bytes()),
                exports,
            ),
        );
        service.set_draining(true);
        let started = Instant::now();
        let from = fs.applied_seq() + 1;
        let (own, node_log, log2, svc, fs2) = (
            self.own,
            self.node_log.clone(),
            log.clone(),
            service.clone(),
            fs.clone(),
        );
        let replayed = tokio::task::spawn_blocking(move || -> Result<u64, String> {
            let mut replayed = 0u64;
            let sources: Vec<(&str, &Nvlog, bool)> = match own {
                true => vec![("own log", &node_log, false)],
                false => vec![
                    ("mirror of the partner's log", &node_log, true),
                    ("takeover log", &log2, false),
                ],
            };
            for (what, l, mirror) in sources {
                let from = fs2.applied_seq() + 1;
                let r = if mirror {
                    l.replay_mirror(from)
                } else {
                    l.replay_own(from)
                }
                .map_err(|e| format!("read the {what} from seq {from}: {e}"))?;
                let report = svc
                    .replay(r.records)
                    .map_err(|e| format!("replay the {what} from seq {from}: {e}"))?;
                replayed += report.ops_replayed as u64;
            }
            Ok(replayed)
        })
        .await
        .map_err(|e| format!("replay task: {e}"))??;
        // Our next records must sort after everything the file system applied, including
        // what the partner logged for us while it served our identity.
        let applied = fs.applied_seq();
        if log.status().next_seq <= applied {
            log.restart_at(applied + 1)
                .map_err(|e| format!("restart the log after seq {applied}: {e}"))?;
        }
        tracing::info!(identity = %self.config.name, from_seq = from, records = replayed,
            ms = started.elapsed().as_millis() as u64, "replayed the NVRAM log past the last CP");
        self.cp = Some(CpLoop::start(
            fs.clone(),
            log.clone(),
            self.cp_interval_ms,
            self.cp_record.clone(),
        ));
        self.log = Some(log);
        self.service = Some(service);
        self.publish();
        Ok(replayed)
    }

    /// Raises the data address (netlink + gratuitous ARP when configured) and binds the
    /// listeners there. Calls are held until [`Identity::serve`].
    pub async fn raise_addresses(&mut self) -> Result<(), NodeError> {
        if self.rpc.is_some() {
            return Ok(());
        }
        let service = self
            .service
            .clone()
            .ok_or_else(|| NodeError::Service("raise before replay".into()))?;
        if let (IpAddr::V4(addr), Some(prefix_len), Some(ifname)) = (
            self.config.nfs.bind,
            self.config.nfs.bind_prefix_len,
            self.data_interface.clone(),
        ) {
            if !addr.is_loopback() {
                let cidr = Ipv4Cidr { addr, prefix_len };
                let ifn = ifname.clone();
                tokio::task::spawn_blocking(move || ipaddr::raise(&ifn, cidr))
                    .await
                    .map_err(|e| NodeError::Service(format!("address task: {e}")))?
                    .map_err(|e| {
                        NodeError::Service(format!("raise {addr}/{prefix_len} on {ifname}: {e}"))
                    })?;
                self.raised = Some((ifname, cidr));
            }
        }
        // In a pair the previous holder of the address may still be closing its sockets.
        let retry_ms = if self.reservations_required {
            BIND_RETRY_MS_MAX
        } else {
            0
        };
        let (rpc, listeners) =
            bind_with_retry(&self.config, &service, &self.metrics, retry_ms).await?;
        tracing::info!(identity = %self.config.name, address = %self.config.nfs.bind,
            nfs = %listeners.nfs_tcp, "listening on the identity's data address");
        self.rpc = Some((rpc, listeners));
        self.publish();
        Ok(())
    }

    /// Stops listening on the data address (closing every connection: held calls are
    /// retransmitted by their clients to the next server) and removes the address.
    pub async fn release_addresses(&mut self) -> Result<(), String> {
        if let Some((rpc, _)) = self.rpc.take() {
            rpc.stop(Duration::ZERO).await;
        }
        if let Some((ifname, cidr)) = self.raised.take() {
            tokio::task::spawn_blocking(move || ipaddr::remove_address(&ifname, cidr))
                .await
                .map_err(|e| format!("address task: {e}"))?
                .map_err(|e| format!("remove the data address: {e}"))?;
        }
        self.publish();
        Ok(())
    }

    /// Starts answering calls (held ones included).
    pub fn serve(&mut self) -> Result<(), String> {
        let service = self.service.as_ref().ok_or("serve before replay")?;
        service.set_draining(false);
        self.final_cp_covers_log = false;
        Ok(())
    }

    /// Holds new calls and waits (bounded) for the ones in flight. Returns (completed,
    /// still in flight at the bound).
    pub async fn drain(&self, bound: Duration) -> (u32, u32) {
        let Some(service) = &self.service else {
            return (0, 0);
        };
        service.set_draining(true);
        let at_start = service.in_flight();
        let deadline = Instant::now() + bound;
        while service.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(DRAIN_POLL_MS)).await;
        }
        let left = service.in_flight();
        (at_start.saturating_sub(left) as u32, left as u32)
    }

    /// The final CP: everything logged for the identity is on its disks.
    pub async fn final_cp(&mut self) -> Result<CpInfo, String> {
        let (Some(storage), Some(log)) = (&self.storage, &self.log) else {
            return Err("final CP of an identity that is not mounted".into());
        };
        if let Some(c) = self.cp.take() {
            c.stop().await;
        }
        let outcome = cp::run_cp(&storage.fs, log, CpReason::Handover).await;
        cp::note(&self.cp_record, outcome.clone());
        self.final_cp_covers_log = outcome.is_ok();
        outcome
    }

    /// Stops serving at once: listeners stay (calls are held) until the addresses are
    /// released; the file system and its log are dropped (what no CP covered stays in
    /// the log for whoever mounts next).
    pub async fn stop_serving(&mut self) {
        if let Some(s) = &self.service {
            s.set_draining(true);
        }
        if let Some(c) = self.cp.take() {
            c.abort();
        }
        self.service = None;
        self.log = None;
        self.storage = None;
        *self.published.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if std::mem::take(&mut self.final_cp_covers_log) {
            self.discard_takeover_log();
        }
    }

    /// Releases the reservation (the gate closes first: nothing writes past this).
    pub async fn release_reservations(&mut self) -> Result<(), String> {
        let Some(hold) = self.hold.take() else {
            return Ok(());
        };
        hold.gate.store(false, Ordering::Release);
        tokio::task::spawn_blocking(move || {
            let mut set = hold.monitor.stop();
            set.release_all().map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("release task: {e}"))??;
        tracing::info!(identity = %self.config.name, "released the aggregate's disks");
        Ok(())
    }

    /// The partner identity's takeover log is covered by a final CP and handed back: remove
    /// it so a later takeover starts right after the mirror again.
    fn discard_takeover_log(&self) {
        if self.own {
            return;
        }
        if let Some(p) = &self.takeover_log_path {
            match std::fs::remove_file(p) {
                Ok(()) => {
                    tracing::info!(path = %p.display(), "takeover log discarded after giveback");
                    prepare_takeover_log(p);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "cannot remove the takeover log")
                }
            }
        }
    }

    /// Whether the identity is mounted.
    pub fn is_mounted(&self) -> bool {
        self.storage.is_some()
    }

    /// A CP now (operator, shutdown) when mounted.
    pub async fn cp_now(&self, reason: CpReason) -> Option<Result<CpInfo, String>> {
        let (storage, log) = (self.storage.as_ref()?, self.log.as_ref()?);
        let outcome = cp::run_cp(&storage.fs, log, reason).await;
        cp::note(&self.cp_record, outcome.clone());
        Some(outcome)
    }

    /// Clean stop: listeners, CP loop, a final CP when mounted and still held.
    pub async fn shutdown(&mut self, grace: Duration) -> Result<(), String> {
        if let Some((rpc, _)) = self.rpc.take() {
            let stopped = rpc.stop(grace).await;
            if !stopped.drained {
                tracing::warn!(
                    tasks_left = stopped.tasks_left,
                    "calls still in flight after the grace period were abandoned (clients retry)"
                );
            }
        }
        if let Some(c) = self.cp.take() {
            c.stop().await;
        }
        let held = self.hold.as_ref().is_none_or(|h| h.monitor.is_held());
        let result = match held {
            true => self.cp_now(CpReason::Shutdown).await.map(|r| r.map(|_| ())),
            false => None,
        };
        if let Err(e) = self.release_addresses().await {
            tracing::warn!(identity = %self.config.name, error = %e, "data address not removed at shutdown");
        }
        result.unwrap_or(Ok(()))
    }

    fn publish(&self) {
        let p = match (&self.storage, &self.log, &self.service) {
            (Some(st), Some(log), Some(service)) => Some(Published {
                group: st.group.clone(),
                fs: st.fs.clone(),
                log: log.clone(),
                service: service.clone(),
                cp_record: self.cp_record.clone(),
                listeners: self.rpc.as_ref().map(|(_, l)| *l),
                rpc: self.rpc.as_ref().map(|(r, _)| r.clone()),
            }),
            _ => None,
        };
        *self.published.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }
}

impl Drop for Identity {
    /// Like a crash: stop CPs and listeners, keep the log for the next mount.
    fn drop(&mut self) {
        if let Some(c) = self.cp.take() {
            c.abort();
        }
        if let Some((rpc, _)) = self.rpc.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { rpc.stop(Duration::ZERO).await });
            }
        }
    }
}

/// Serialises the opening of the takeover log region: its preparation in the background
/// and a takeover must not lay it out at the same time.
static TAKEOVER_LOG_OPEN: Mutex<()> = Mutex::new(());

/// Opens (laying out when missing) the takeover log region.
fn open_takeover_region(path: &Path) -> Result<Nvlog, nvlog::OpenError> {
    let _serial = TAKEOVER_LOG_OPEN.lock().unwrap_or_else(|e| e.into_inner());
    Nvlog::open(nvlog::Config {
        region_path: path.to_owned(),
        half_bytes: TAKEOVER_LOG_HALF_BYTES,
        mirror: None,
        ..nvlog::Config::default()
    })
}

/// Opens the partner identity's continuation log; a fresh one starts right after the
/// last record in our mirror of the partner's log. Blocking.
fn open_takeover_log(path: &Path, node_log: &Nvlog) -> Result<Nvlog, String> {
    let log = open_takeover_region(path)
        .map_err(|e| format!("open the takeover log {}: {e}", path.display()))?;
    let mirror_last = node_log
        .mirror_last_seq()
        .map_err(|e| format!("read the mirror of the partner's log: {e}"))?;
    if log.status().next_seq <= mirror_last {
        log.restart_at(mirror_last + 1)
            .map_err(|e| format!("start the takeover log after seq {mirror_last}: {e}"))?;
    }
    Ok(log)
}

/// Lays the takeover log region out ahead of need (a fresh 128 MiB region takes most of a
/// second; a takeover should not wait for it). A region that exists is left as it is: it
/// may hold the continuation of a takeover this node is resuming.
pub fn prepare_takeover_log(path: &Path) {
    if path.exists() {
        return;
    }
    let path = path.to_owned();
    std::thread::Builder::new()
        .name("takeover-log-prep".into())
        .spawn(move || {
            if let Err(e) = open_takeover_region(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot prepare the takeover log");
            }
        })
        .expect("spawn the takeover log preparation");
}

/// Binds the listeners, retrying for up to `retry_ms`.
async fn bind_with_retry(
    config: &NodeConfig,
    service: &Arc<NfsService>,
    metrics: &Arc<web_ui::Metrics>,
    retry_ms: u64,
) -> Result<(RpcServer, Listeners), NodeError> {
    let deadline = Instant::now() + Duration::from_millis(retry_ms);
    loop {
        match serve(config, service, metrics).await {
            Ok(r) => return Ok(r),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "bind failed; retrying");
                tokio::time::sleep(Duration::from_millis(BIND_RETRY_POLL_MS)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Bound on retrying a bind of the data address.
const BIND_RETRY_MS_MAX: u64 = 3_000;
const BIND_RETRY_POLL_MS: u64 = 20;
