//! The NFSv3 and MOUNT v3 services of a twinfiler node.
//!
//! One [`NfsService`] serves one aggregate (one file system, one NVRAM log, one set of
//! exports). A node serves its own aggregate and, after a takeover, the partner's too: two
//! services, each behind its own addresses.
//!
//! The write path: decode → check the export rule and the caller's permissions → build an
//! `FsOp` → log it (mirrored NVRAM) under the sequencing lock, apply it to the file system in
//! log order → wait until the record is durable → reply. Replay after a restart or takeover
//! re-executes the logged ops in order and so rebuilds the duplicate-request cache.
//!
//! How a node uses it:
//!
//! ```ignore
//! let exports = Exports::from_config(&config.exports)?;
//! let svc = NfsService::new(fs.clone(), log.clone(), ServiceConfig::new(uuid, fh_key, exports));
//! let replay = log.replay_own(fs.applied_seq() + 1)?;
//! svc.replay(replay.records)?;              // before serving
//! svc.create_export_dirs().await?;          // optional: mkdir -p every export path
//! rpc_server.register(NFS_PROGRAM, svc.nfs_program());
//! rpc_server.register(MOUNT_PROGRAM, svc.mount_program());
//! ```
//!
//! Graceful takeover: [`NfsService::set_draining`] holds new calls unanswered (a Linux
//! client waits and retransmits; NFS3ERR_JUKEBOX would make it sleep ~5 s); wait for
//! [`NfsService::in_flight`] to reach zero before the final CP, then close the connections:
//! the held calls are retransmitted to whoever serves the identity next.
//!
//! Export rules default like Linux: `ro`, `root_squash`, `secure` (source port < 1024).
//! Test clients on unprivileged ports need `insecure` in their rule.
//!
//! Modules: [`exports`] (rules), [`engine`] (log-then-apply, replay), [`record`] (the
//! OP log record), [`drc`] (duplicate-request cache), [`mount`] (MOUNT v3), [`nfs`]
//! (the NFSv3 procedures).

#![warn(missing_docs)]

pub mod drc;
pub mod engine;
pub mod exports;
pub mod mount;
pub mod nfs;
pub mod record;
pub mod stats;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use twinfiler_proto::fh::FhKey;
use twinfiler_rpc::Program;
use wafl::Fs;

pub use engine::{ReplayError, ReplayReport};
pub use exports::{ExportConfig, ExportError, Exports, Identity};
pub use stats::ServiceStats;

/// Configuration of one service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The aggregate's uuid: in every file handle, so handles survive restarts and
    /// takeover but never name another aggregate.
    pub aggregate_uuid: [u8; 16],
    /// Key of the handle MACs (the same on both nodes of the pair).
    pub fh_key: FhKey,
    /// Exports and their rules.
    pub exports: Exports,
    /// Bound on cached requests in the duplicate-request cache.
    pub drc_entries_max: usize,
    /// Bound on the reply bytes in the duplicate-request cache.
    pub drc_bytes_max: usize,
    /// Bound on the MOUNT list (DUMP); older entries are forgotten first.
    pub mounts_max: usize,
    /// A modifying request waits at most this long for a CP to free NVRAM log space, then
    /// is answered NFS3ERR_JUKEBOX (the client retries).
    pub log_full_wait_ms_max: u64,
}

/// Default bound on the MOUNT list.
pub const MOUNTS_MAX_DEFAULT: usize = 1024;

impl ServiceConfig {
    /// A config with the default cache bounds.
    pub fn new(aggregate_uuid: [u8; 16], fh_key: FhKey, exports: Exports) -> ServiceConfig {
        ServiceConfig {
            aggregate_uuid,
            fh_key,
            exports,
            drc_entries_max: drc::DRC_ENTRIES_MAX_DEFAULT,
            drc_bytes_max: drc::DRC_BYTES_MAX_DEFAULT,
            mounts_max: MOUNTS_MAX_DEFAULT,
            log_full_wait_ms_max: engine::LOG_FULL_WAIT_MS_MAX_DEFAULT,
        }
    }
}

/// Errors of the service API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NfsError {
    /// Replay failed.
    #[error("replay: {0}")]
    Replay(#[from] ReplayError),
    /// A file-system call failed.
    #[error("file system: {0}")]
    Fs(wafl::FsError),
    /// A logged operation could not complete (log full or closed, file system offline).
    #[error("not completed: {0}")]
    Unavailable(String),
}

/// The NFS and MOUNT services of one aggregate.
pub struct NfsService {
    pub(crate) fs: Arc<Fs>,
    pub(crate) cfg: ServiceConfig,
    pub(crate) engine: engine::Engine,
    pub(crate) drc: drc::Drc,
    pub(crate) stats: stats::Stats,
    pub(crate) mounts: Mutex<mount::MountTable>,
    /// WRITE/COMMIT verifier: fixed per aggregate, since every reply is FILE_SYNC.
    pub(crate) write_verf: [u8; 8],
    /// `fsid` of the live file system in attributes.
    pub(crate) fsid: u64,
    /// Hold new NFS calls (graceful takeover drain).
    pub(crate) draining: tokio::sync::watch::Sender<bool>,
    /// NFS calls being served now.
    pub(crate) in_flight: AtomicUsize,
}

impl std::fmt::Debug for NfsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NfsService")
            .field("aggregate_uuid", &self.cfg.aggregate_uuid)
            .field("exports", &self.cfg.exports.len())
            .finish_non_exhaustive()
    }
}

impl NfsService {
    /// A service over a mounted file system and an open log. Call [`NfsService::replay`]
    /// with the log's records before serving.
    pub fn new(fs: Arc<Fs>, log: Arc<nvlog::Nvlog>, cfg: ServiceConfig) -> Arc<NfsService> {
        let v = blake3::derive_key("twinfiler write verifier v1", &cfg.aggregate_uuid);
        let mut write_verf = [0u8; 8];
        write_verf.copy_from_slice(&v[..8]);
        // A hash, not the uuid's bytes: stable per aggregate, never a degenerate 0.
        let f = blake3::derive_key("twinfiler fsid v1", &cfg.aggregate_uuid);
        let mut fsid_bytes = [0u8; 8];
        fsid_bytes.copy_from_slice(&f[..8]);
        let fsid = u64::from_be_bytes(fsid_bytes);
        Arc::new(NfsService {
            engine: engine::Engine::new(fs.clone(), log, cfg.log_full_wait_ms_max),
            drc: drc::Drc::new(cfg.drc_entries_max, cfg.drc_bytes_max),
            stats: stats::Stats::default(),
            mounts: Mutex::new(mount::MountTable::new(cfg.mounts_max)),
            fs,
            cfg,
            write_verf,
            fsid,
            draining: tokio::sync::watch::Sender::new(false),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// Re-executes the logged OP records with seq above the file system's applied seq, in
    /// order, and rebuilds the duplicate-request cache from their replies. REPLY and
    /// unknown kinds are skipped. Pass `log.replay_own(fs.applied_seq() + 1)?.records`
    /// (or `replay_mirror` on takeover).
    pub fn replay(&self, records: Vec<nvlog::Record>) -> Result<ReplayReport, NfsError> {
        let exec = nfs::Exec { svc: self };
        let report = self.engine.replay(records, &exec, &mut |meta, reply| {
            if let Some(k) = &meta.drc_key {
                self.drc.finish(k, reply.into());
            }
        })?;
        tracing::info!(?report, "nfs: log replayed");
        Ok(report)
    }

    /// The NFS program (100003 v3) to register with the RPC server.
    pub fn nfs_program(self: &Arc<Self>) -> Arc<dyn Program> {
        Arc::new(nfs::NfsProgram(self.clone()))
    }

    /// The MOUNT program (100005 v3) to register with the RPC server.
    pub fn mount_program(self: &Arc<Self>) -> Arc<dyn Program> {
        Arc::new(mount::MountProgram(self.clone()))
    }

    /// Counters since start.
    pub fn stats(&self) -> ServiceStats {
        self.stats.snapshot(self.drc.len())
    }

    /// Starts (true) or ends (false) a drain: new NFS calls are held unanswered until the
    /// drain ends (an aborted takeover) or their connection closes (the client retransmits,
    /// after a takeover to the partner). Calls already in flight complete; wait for
    /// [`NfsService::in_flight`] to reach zero.
    pub fn set_draining(&self, on: bool) {
        self.draining.send_replace(on);
    }

    /// Whether a drain is on.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    pub(crate) async fn wait_while_draining(&self) {
        let mut rx = self.draining.subscribe();
        // The sender lives as long as the service, so this only ends when the drain does.
        let _ = rx.wait_for(|draining| !draining).await;
    }

    /// NFS calls being served now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The exports served.
    pub fn exports(&self) -> &Exports {
        &self.cfg.exports
    }
}
