//! Errors of the RAID-4 layer. Each says which disk (path and position) and what to do.

use std::io;
use std::path::PathBuf;

/// Names a disk in messages: its position in the group (if any) and its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskRef {
    /// Position in the group (0..N-1 data, N parity); `None` for spares and unknown disks.
    pub position: Option<usize>,
    /// Path the disk was opened with.
    pub path: PathBuf,
}

impl std::fmt::Display for DiskRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.position {
            Some(p) => write!(f, "disk #{p} ({})", self.path.display()),
            None => write!(f, "disk {}", self.path.display()),
        }
    }
}

/// Everything that can go wrong in the RAID-4 layer.
#[derive(Debug, thiserror::Error)]
pub enum Raid4Error {
    /// A disk could not be opened or sized.
    #[error("cannot open disk {path}: {source}; check that the path exists, is a file or block device, and is writable")]
    Open {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// An IO error on one disk. The group fails the disk out and keeps running if it can.
    #[error("{disk}: {op} failed: {source}; the disk is failed out of the group — replace it and run `twinfiler aggr rebuild --spare PATH`")]
    DiskIo {
        /// The disk.
        disk: DiskRef,
        /// What was being done ("read", "write", "flush", "label write").
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The disks given do not assemble into a group; one line per problem, each with advice.
    #[error("cannot assemble the aggregate:\n  - {}", problems.join("\n  - "))]
    Assembly {
        /// One message per problem disk.
        problems: Vec<String>,
    },
    /// Two or more disks are unusable: the group refuses all IO and writes nothing.
    #[error("aggregate {uuid} is OFFLINE: {reason}. Nothing was written. RAID-4 survives one failed disk only: bring a failed disk back (check cables, paths) and assemble again")]
    Offline {
        /// The aggregate.
        uuid: uuid::Uuid,
        /// Which disks failed and why.
        reason: String,
    },
    /// A block whose copy and reconstruction are both bad.
    #[error("block {block} (stripe {stripe}, {disk}, row {row}) is unrecoverable: {detail}; run `twinfiler aggr scrub` to list all damage and restore the affected files from a snapshot or backup")]
    Unrecoverable {
        /// Logical block number.
        block: u64,
        /// Stripe number.
        stripe: u64,
        /// The disk holding the block.
        disk: DiskRef,
        /// Row inside the chunk.
        row: usize,
        /// Why reconstruction failed.
        detail: String,
    },
    /// A caller error (range, sizes, configuration).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The operation does not fit the group's state (e.g. rebuild with nothing failed).
    #[error("{0}")]
    State(String),
    /// This node no longer holds the aggregate's disks (the partner preempted the
    /// reservation): nothing is written.
    #[error("aggregate {uuid} is fenced: this node no longer holds its disks (the partner took them over); nothing was written")]
    Fenced {
        /// The aggregate.
        uuid: uuid::Uuid,
    },
    /// The io_uring engine could not start.
    #[error("cannot start the io_uring engine: {0}; check that io_uring is enabled (sysctl kernel.io_uring_disabled=0) and RLIMIT_MEMLOCK")]
    Engine(io::Error),
}

impl Raid4Error {
    pub(crate) fn open(path: &std::path::Path, source: io::Error) -> Raid4Error {
        Raid4Error::Open {
            path: path.to_path_buf(),
            source,
        }
    }
}
