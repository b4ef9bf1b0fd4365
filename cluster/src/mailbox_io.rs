//! Mailbox IO: each node writes its [`MailboxRecord`] into its own slot of the heartbeat
//! mailbox area of every disk of its aggregate, and reads the partner's slot from the
//! partner's disks (O_DIRECT, so both see the disk and not a page cache).
//!
//! Slots: block [`HEARTBEAT_MAILBOX_BLOCK`] + node id (one 4 KiB block per node, so the two
//! writers never share a block; the area has room for [`HEARTBEAT_MAILBOX_BLOCKS`] slots).
//! A write succeeds when it reached every disk still in service; a disk whose write fails is
//! taken out of service (no longer written or read). A read returns the valid record with the
//! highest counter over the disks, so a stale copy on a disk that missed writes loses —
//! writers must therefore count up (the driver seeds the counter from the wall clock at boot,
//! so it also grows across restarts).

use std::path::{Path, PathBuf};

use crate::direct_io::{AlignedBlock, DirectDisk};
use crate::mailbox::{MailboxRecord, MAILBOX_RECORD_BYTES};
use crate::NodeId;

/// First block (4 KiB units) of the heartbeat mailbox area (raid4 `layout`).
pub const HEARTBEAT_MAILBOX_BLOCK: u64 = 16;
/// Blocks in the area.
pub const HEARTBEAT_MAILBOX_BLOCKS: u64 = 64;

/// Why mailbox IO failed.
#[derive(Debug, thiserror::Error)]
pub enum MailboxIoError {
    /// A disk could not be opened.
    #[error("{path}: cannot open for mailbox IO: {source}")]
    Open {
        /// The disk.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No disk is left in service: the mailbox cannot be written.
    #[error("no disk of the aggregate accepted the mailbox write (last error: {last})")]
    NoDisk {
        /// The last error seen.
        last: String,
    },
    /// The record names another node than the slot's owner.
    #[error("record of {record} cannot go into the slot of {slot}")]
    WrongSlot {
        /// The record's node.
        record: NodeId,
        /// The slot's node.
        slot: NodeId,
    },
}

/// The block of `node`'s slot.
pub fn slot_block(node: NodeId) -> u64 {
    let block = HEARTBEAT_MAILBOX_BLOCK + u64::from(node.0);
    assert!(block < HEARTBEAT_MAILBOX_BLOCK + HEARTBEAT_MAILBOX_BLOCKS);
    block
}

/// The mailbox slots on the disks of one aggregate.
pub struct MailboxDisks {
    disks: Vec<(DirectDisk, bool)>,
}

impl MailboxDisks {
    /// Opens every disk (at least one).
    pub fn open(paths: &[PathBuf]) -> Result<MailboxDisks, MailboxIoError> {
        assert!(!paths.is_empty(), "an aggregate has at least one disk");
        let disks = paths
            .iter()
            .map(|p| {
                DirectDisk::open(p)
                    .map(|d| (d, true))
                    .map_err(|source| MailboxIoError::Open {
                        path: p.clone(),
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(MailboxDisks { disks })
    }

    /// Disks still in service.
    pub fn disks_in_service(&self) -> usize {
        self.disks.iter().filter(|(_, ok)| *ok).count()
    }

    /// Writes `record` into `slot`'s block of every disk in service; durable when it returns.
    pub fn write(&mut self, slot: NodeId, record: &MailboxRecord) -> Result<(), MailboxIoError> {
        if record.node != slot {
            return Err(MailboxIoError::WrongSlot {
                record: record.node,
                slot,
            });
        }
        let bytes = record.encode();
        assert_eq!(bytes.len(), MAILBOX_RECORD_BYTES);
        let block = AlignedBlock::with_prefix(&bytes);
        let mut last = String::from("no disk in service");
        for (disk, in_service) in self.disks.iter_mut().filter(|(_, s)| *s) {
            if let Err(e) = disk.write_block(slot_block(slot), &block) {
                tracing::error!(disk = %disk.path().display(), error = %e, "mailbox write failed; disk taken out of mailbox service");
                last = format!("{}: {e}", disk.path().display());
                *in_service = false;
            }
        }
        if self.disks_in_service() == 0 {
            return Err(MailboxIoError::NoDisk { last });
        }
        Ok(())
    }

    /// Reads `slot` from every disk in service: the valid record with the highest counter, or
    /// `None` when no disk holds one (blank, damaged or unreadable everywhere).
    pub fn read(&self, slot: NodeId) -> Option<MailboxRecord> {
        self.disks
            .iter()
            .filter(|(_, s)| *s)
            .filter_map(|(disk, _)| read_one(disk, slot))
            .max_by_key(|r| r.counter)
    }
}

fn read_one(disk: &DirectDisk, slot: NodeId) -> Option<MailboxRecord> {
    let block = disk
        .read_block(slot_block(slot))
        .map_err(
            |e| tracing::warn!(disk = %disk.path().display(), error = %e, "mailbox read failed"),
        )
        .ok()?;
    let bytes = block.as_ref().get(..MAILBOX_RECORD_BYTES)?;
    if bytes.iter().all(|&b| b == 0) {
        return None; // never written
    }
    match MailboxRecord::decode(bytes) {
        Ok(r) if r.node == slot => Some(r),
        Ok(r) => {
            tracing::warn!(disk = %disk.path().display(), record = %r.node, %slot, "mailbox slot holds another node's record");
            None
        }
        Err(e) => {
            tracing::warn!(disk = %disk.path().display(), error = %e, "mailbox record rejected");
            None
        }
    }
}

/// Opens the mailbox disks of one path (convenience for tools).
pub fn open_one(path: &Path) -> Result<MailboxDisks, MailboxIoError> {
    MailboxDisks::open(&[path.to_owned()])
}
