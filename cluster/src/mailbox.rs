//! The mailbox: a small record each node writes on its own disks every heartbeat interval and
//! the partner reads. It is the second heartbeat path: a partner whose interconnect is silent
//! but whose mailbox still changes is alive (cut interconnect), and must not be taken over.
//!
//! It also carries the `unmirrored` flag: a node writes it (and waits until it is durable)
//! before it acknowledges any write that is not in the partner's mirror. A taker reads the
//! mailbox again after fencing the victim's disks; if the flag is set, replaying its mirror would
//! lose acknowledged writes, so it aborts the takeover instead.
//!
//! Layout (little-endian, 28 bytes): magic `"TFMB"` (4) | version (1) | node (1) | state (1) |
//! flags (1, bit 0 = unmirrored) | counter (8) | epoch (8) | CRC-32C of the first 24 bytes (4).

use crate::codec::{unseal, Reader, Writer};
use crate::takeover::StateCode;
use crate::NodeId;

/// Magic of a mailbox record.
pub const MAILBOX_MAGIC: [u8; 4] = *b"TFMB";
/// Version of the mailbox layout.
pub const MAILBOX_VERSION: u8 = 1;
/// Size of an encoded record (the driver writes it in one sector).
pub const MAILBOX_RECORD_BYTES: usize = 28;

/// One node's mailbox content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MailboxRecord {
    /// The writer.
    pub node: NodeId,
    /// Changes on every write: the partner looks for change, not for increase.
    pub counter: u64,
    /// The writer's state.
    pub state: StateCode,
    /// The epoch the state refers to.
    pub epoch: u64,
    /// The writer may have acknowledged writes that are not in the partner's mirror.
    pub unmirrored: bool,
}

/// Why a mailbox block was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MailboxError {
    /// Wrong size, magic, version, checksum or field value: treat the mailbox as unreadable.
    #[error("mailbox record invalid ({0}); the partner's mailbox counts as unreadable")]
    Invalid(&'static str),
}

impl MailboxRecord {
    /// Encodes the record into its fixed 28-byte layout.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(MAILBOX_RECORD_BYTES));
        w.0.extend_from_slice(&MAILBOX_MAGIC);
        w.u8(MAILBOX_VERSION);
        w.u8(self.node.0);
        w.u8(self.state as u8);
        w.u8(u8::from(self.unmirrored));
        w.u64(self.counter);
        w.u64(self.epoch);
        let out = w.seal();
        assert_eq!(out.len(), MAILBOX_RECORD_BYTES);
        out
    }

    /// Decodes and checks a record.
    pub fn decode(buf: &[u8]) -> Result<MailboxRecord, MailboxError> {
        if buf.len() != MAILBOX_RECORD_BYTES {
            return Err(MailboxError::Invalid("size"));
        }
        if buf[0..4] != MAILBOX_MAGIC {
            return Err(MailboxError::Invalid("magic"));
        }
        if buf[4] != MAILBOX_VERSION {
            return Err(MailboxError::Invalid("version"));
        }
        let payload = unseal(buf).ok_or(MailboxError::Invalid("checksum"))?;
        let mut r = Reader::new(&payload[5..]);
        let fields = (|| Some((r.u8()?, r.u8()?, r.u8()?, r.u64()?, r.u64()?)))();
        let (node, state, flags, counter, epoch) = fields.ok_or(MailboxError::Invalid("size"))?;
        if flags > 1 {
            return Err(MailboxError::Invalid("flags"));
        }
        Ok(MailboxRecord {
            node: NodeId(node),
            counter,
            state: StateCode::from_byte(state).ok_or(MailboxError::Invalid("state"))?,
            epoch,
            unmirrored: flags == 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrips_and_damage_is_rejected() {
        let rec = MailboxRecord {
            node: NodeId(1),
            counter: 42,
            state: StateCode::Normal,
            epoch: 3,
            unmirrored: true,
        };
        let buf = rec.encode();
        assert_eq!(MailboxRecord::decode(&buf), Ok(rec));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert!(MailboxRecord::decode(&bad).is_err(), "byte {i}");
        }
        assert!(MailboxRecord::decode(&buf[..27]).is_err());
        assert!(MailboxRecord::decode(&[0u8; 28]).is_err());
    }
}
