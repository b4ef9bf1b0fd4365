//! The takeover state a node keeps across restarts (in NVRAM or a small state file).
//!
//! Like a fencing slot: a victim that reboots while taken over reads `TakenOver` and waits for
//! giveback instead of serving; a taker that restarts reads `InTakeover` and resumes serving
//! both identities (it still holds the victim's reservations).
//!
//! Layout (little-endian, 44 bytes): magic `"TFPS"` (4) | version (1) | role (1) | reserved (2) |
//! role epoch (8) | epoch_next (8) | epoch_seen_max (8) | given_back_epoch (8) | CRC-32C (4).

use crate::codec::{unseal, Reader, Writer};

/// Magic of the persisted state.
pub const PERSIST_MAGIC: [u8; 4] = *b"TFPS";
/// Version of the persisted layout.
pub const PERSIST_VERSION: u8 = 1;
/// Size of the encoded state.
pub const PERSIST_BYTES: usize = 44;

/// What this node was doing, as far as a restart must know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Role {
    /// Serving its own identity (or about to).
    #[default]
    Normal,
    /// Serving its own and the partner's identity, for this epoch.
    InTakeover(u64),
    /// Taken over by the partner in this epoch: wait for giveback, never serve on its own.
    TakenOver(u64),
    /// Taking the partner over in this epoch: this node may hold the partner's disks. A restart
    /// asserts them again and re-reads the partner's mailbox before serving, or releases them.
    Taking(u64),
}

/// The persisted takeover state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Persisted {
    /// The role at the last change.
    pub role: Role,
    /// The next epoch this node uses when it takes over (epochs only grow).
    pub epoch_next: u64,
    /// The newest epoch of the partner this node accepted as a victim (stale requests are older).
    pub epoch_seen_max: u64,
    /// The newest takeover of this node that was given back (older PLEASE_DIE are stale).
    pub given_back_epoch: u64,
}

/// Why persisted state was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PersistError {
    /// Damaged or foreign: the node must not guess; the operator restores or clears it.
    #[error("persisted takeover state invalid ({0}); refusing to guess the role — clear it explicitly only if the partner is not serving this node's identity")]
    Invalid(&'static str),
}

const ROLE_NORMAL: u8 = 0;
const ROLE_IN_TAKEOVER: u8 = 1;
const ROLE_TAKEN_OVER: u8 = 2;
const ROLE_TAKING: u8 = 3;

impl Persisted {
    /// Encodes into the fixed layout.
    pub fn encode(&self) -> Vec<u8> {
        let (role, epoch) = match self.role {
            Role::Normal => (ROLE_NORMAL, 0),
            Role::InTakeover(e) => (ROLE_IN_TAKEOVER, e),
            Role::TakenOver(e) => (ROLE_TAKEN_OVER, e),
            Role::Taking(e) => (ROLE_TAKING, e),
        };
        let mut w = Writer(Vec::with_capacity(PERSIST_BYTES));
        w.0.extend_from_slice(&PERSIST_MAGIC);
        w.u8(PERSIST_VERSION);
        w.u8(role);
        w.u16(0);
        w.u64(epoch);
        w.u64(self.epoch_next);
        w.u64(self.epoch_seen_max);
        w.u64(self.given_back_epoch);
        let out = w.seal();
        assert_eq!(out.len(), PERSIST_BYTES);
        out
    }

    /// Decodes and checks.
    pub fn decode(buf: &[u8]) -> Result<Persisted, PersistError> {
        if buf.len() != PERSIST_BYTES {
            return Err(PersistError::Invalid("size"));
        }
        if buf[0..4] != PERSIST_MAGIC || buf[4] != PERSIST_VERSION {
            return Err(PersistError::Invalid("magic or version"));
        }
        let payload = unseal(buf).ok_or(PersistError::Invalid("checksum"))?;
        let mut r = Reader::new(&payload[5..]);
        let fields = (|| Some((r.u8()?, r.u16()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?)))();
        let (role, _reserved, epoch, epoch_next, epoch_seen_max, given_back_epoch) =
            fields.ok_or(PersistError::Invalid("size"))?;
        let role = match role {
            ROLE_NORMAL => Role::Normal,
            ROLE_IN_TAKEOVER => Role::InTakeover(epoch),
            ROLE_TAKEN_OVER => Role::TakenOver(epoch),
            ROLE_TAKING => Role::Taking(epoch),
            _ => return Err(PersistError::Invalid("role")),
        };
        Ok(Persisted {
            role,
            epoch_next,
            epoch_seen_max,
            given_back_epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persisted_roundtrips_and_damage_is_rejected() {
        let p = Persisted {
            role: Role::TakenOver(5),
            epoch_next: 9,
            epoch_seen_max: 5,
            given_back_epoch: 4,
        };
        let buf = p.encode();
        assert_eq!(Persisted::decode(&buf), Ok(p));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x01;
            assert!(Persisted::decode(&bad).is_err(), "byte {i}");
        }
    }
}
