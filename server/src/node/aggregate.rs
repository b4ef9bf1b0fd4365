//! The node's storage at start: assemble (or, on first start, create) the RAID-4 group and
//! mount (or, on a group created just now, make) the file system on it.
//!
//! A new file system is made only on a group this start created: an existing group whose
//! file system does not mount is an error for the operator, never a reason to format.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use raid4::{AssembleConfig, CreateConfig, DiskSource, Group, GroupState};
use wafl::{Fs, FsConfig, StripeStore};

use super::NodeError;
use crate::config::{AggregateConfig, CreateSection};

/// What [`open`] found or made.
pub(super) struct Storage {
    /// The RAID-4 group.
    pub group: Arc<Group>,
    /// The file system on it.
    pub fs: Arc<Fs>,
}

/// Opens the aggregate in `cfg.disks_dir`, creating it when the directory holds no disk yet
/// and a `[aggregate.create]` section says how.
pub(super) async fn open(cfg: &AggregateConfig, fs_config: FsConfig) -> Result<Storage, NodeError> {
    let dir = &cfg.disks_dir;
    std::fs::create_dir_all(dir).map_err(|e| NodeError::Io {
        what: format!("create the disks directory {}", dir.display()),
        source: e,
    })?;
    let empty = dir_is_empty(dir)?;
    let (group, created) = match (&cfg.create, empty) {
        (Some(c), true) => (create_group(dir, c).await?, true),
        (None, true) => {
            return Err(NodeError::Aggregate(format!(
                "{} holds no disks and the configuration has no [aggregate.create] section: \
                 add one, or create the aggregate with `twinfiler aggr create`",
                dir.display()
            )))
        }
        (_, false) => (assemble_group(dir).await?, false),
    };
    let group = Arc::new(group);
    let st = group.status();
    if st.state != GroupState::Normal {
        tracing::warn!(aggregate = %st.uuid, state = %st.state, notes = ?st.notes,
            "aggregate is not NORMAL: serving anyway; replace the failed disk and run `twinfiler aggr rebuild`");
    }
    let store: Arc<dyn StripeStore> = group.clone();
    let fs = tokio::task::spawn_blocking(move || {
        if created {
            Fs::mkfs(store, now_ns(), fs_config)
        } else {
            Fs::mount(store, fs_config)
        }
    })
    .await
    .map_err(|e| NodeError::Aggregate(format!("file system task: {e}")))?
    .map_err(|e| {
        NodeError::Aggregate(if created {
            format!("make the file system on the new aggregate: {e}")
        } else {
            format!(
                "mount the file system of aggregate {}: {e}; run `twinfiler fsck --dir {}` \
                 (if the aggregate was being created when the node stopped, empty the directory \
                 and start again)",
                st.uuid,
                dir.display()
            )
        })
    })?;
    Ok(Storage {
        group,
        fs: Arc::new(fs),
    })
}

/// Whether a start would create the aggregate: the directory is missing or empty and the
/// configuration says how to create one.
pub(super) fn needs_create(cfg: &AggregateConfig) -> bool {
    cfg.create.is_some()
        && (!cfg.disks_dir.exists() || dir_is_empty(&cfg.disks_dir).unwrap_or(false))
}

fn dir_is_empty(dir: &Path) -> Result<bool, NodeError> {
    let mut entries = std::fs::read_dir(dir).map_err(|e| NodeError::Io {
        what: format!("read {}", dir.display()),
        source: e,
    })?;
    Ok(entries.next().is_none())
}

async fn assemble_group(dir: &Path) -> Result<Group, NodeError> {
    let mut cfg = AssembleConfig::new(DiskSource::Dir(dir.to_path_buf()));
    // A filer serves through one failed disk (RAID-4's purpose); status says DEGRADED.
    cfg.allow_degraded = true;
    Group::assemble_async(cfg)
        .await
        .map_err(|e| NodeError::Aggregate(format!("assemble {}: {e}", dir.display())))
}

/// Creates sparse disk files `disk0.img` … (the last is parity) and `spare0.img` …, then
/// the group on them.
async fn create_group(dir: &Path, c: &CreateSection) -> Result<Group, NodeError> {
    let members: Vec<PathBuf> = (0..=c.data_disks)
        .map(|i| dir.join(format!("disk{i}.img")))
        .collect();
    let spares: Vec<PathBuf> = (0..c.spares)
        .map(|i| dir.join(format!("spare{i}.img")))
        .collect();
    for path in members.iter().chain(&spares) {
        sparse_file(path, c.disk_mib << 20)?;
    }
    tracing::info!(dir = %dir.display(), data_disks = c.data_disks, disk_mib = c.disk_mib,
        spares = c.spares, "creating the aggregate (first start)");
    let mut cfg = CreateConfig::new(members);
    cfg.spares = spares;
    Group::create_async(cfg).await.map_err(|e| {
        NodeError::Aggregate(format!("create the aggregate in {}: {e}", dir.display()))
    })
}

fn sparse_file(path: &Path, bytes: u64) -> Result<(), NodeError> {
    let io = |e| NodeError::Io {
        what: format!("create disk file {}", path.display()),
        source: e,
    };
    let f = std::fs::File::create_new(path).map_err(io)?;
    f.set_len(bytes).map_err(io)
}

/// Wall-clock time in ns since the epoch (file times).
pub(super) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
