//! Service counters (lock-free; read by status and metrics).

use std::sync::atomic::{AtomicU64, Ordering};

/// Number of NFSv3 procedures.
pub const NFS3_PROCS: usize = 22;

/// Procedure names, by number (for status output).
pub const NFS3_PROC_NAMES: [&str; NFS3_PROCS] = [
    "null",
    "getattr",
    "setattr",
    "lookup",
    "access",
    "readlink",
    "read",
    "write",
    "create",
    "mkdir",
    "symlink",
    "mknod",
    "remove",
    "rmdir",
    "rename",
    "link",
    "readdir",
    "readdirplus",
    "fsstat",
    "fsinfo",
    "pathconf",
    "commit",
];

/// A snapshot of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// NFS calls by procedure number (names in [`NFS3_PROC_NAMES`]).
    pub ops_by_proc: [u64; NFS3_PROCS],
    /// NFS replies with a status other than NFS3_OK.
    pub errors: u64,
    /// Calls refused before the procedure (auth, garbage, version, unknown procedure).
    pub rpc_errors: u64,
    /// Retransmissions answered from the duplicate-request cache.
    pub drc_hits: u64,
    /// Retransmissions dropped because the original was still in progress.
    pub drc_in_progress_drops: u64,
    /// Requests in the cache now.
    pub drc_entries: u64,
    /// Bytes returned by READ.
    pub bytes_read: u64,
    /// Bytes written by WRITE.
    pub bytes_written: u64,
    /// MOUNT calls.
    pub mount_calls: u64,
}

/// The live counters.
#[derive(Debug, Default)]
pub struct Stats {
    ops: [AtomicU64; NFS3_PROCS],
    pub(crate) errors: AtomicU64,
    pub(crate) rpc_errors: AtomicU64,
    pub(crate) drc_hits: AtomicU64,
    pub(crate) drc_in_progress_drops: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) mount_calls: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    /// Counts a call of procedure `p` (< 22).
    pub(crate) fn op(&self, p: u32) {
        if let Some(c) = self.ops.get(p as usize) {
            bump(c, 1);
        }
    }

    /// Reads every counter.
    pub(crate) fn snapshot(&self, drc_entries: usize) -> ServiceStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut ops_by_proc = [0; NFS3_PROCS];
        for (o, c) in ops_by_proc.iter_mut().zip(&self.ops) {
            *o = get(c);
        }
        ServiceStats {
            ops_by_proc,
            errors: get(&self.errors),
            rpc_errors: get(&self.rpc_errors),
            drc_hits: get(&self.drc_hits),
            drc_in_progress_drops: get(&self.drc_in_progress_drops),
            drc_entries: drc_entries as u64,
            bytes_read: get(&self.bytes_read),
            bytes_written: get(&self.bytes_written),
            mount_calls: get(&self.mount_calls),
        }
    }
}
