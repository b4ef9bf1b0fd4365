//! Our NFS file handles: what they contain and how forged or garbled ones are told apart.
//!
//! A handle names the aggregate (uuid), the export, the view of the file system (live, a
//! directory's virtual `.snapshot` directory, or a snapshot), the inode (fileid) and its
//! generation — never the node or its start time — so it stays valid across restarts, takeover and
//! giveback. A keyed MAC (truncated BLAKE3) over the contents lets the server reject handles
//! a client made up or corrupted with NFS3ERR_BADHANDLE before touching the file system. The
//! key must be the same on both nodes of a pair (e.g. stored with the aggregate).
//!
//! Layout, 52 bytes, big-endian (version 2; version 1 had no view and was never released):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version = 2 |
//! | 1 | 1 | view: 0 live, 1 `.snapshot` directory, 2 snapshot |
//! | 2 | 2 | reserved, zero |
//! | 4 | 4 | export id |
//! | 8 | 16 | aggregate uuid |
//! | 24 | 8 | fileid |
//! | 32 | 8 | generation |
//! | 40 | 4 | snapshot id (view 2), zero otherwise |
//! | 44 | 8 | MAC: first 8 bytes of BLAKE3-keyed(key, bytes 0..44) |
//!
//! See also `docs/file-handles.md`.

use crate::nfs3::{NfsFh3, NfsStat3};

/// Handle format version written by this code.
pub const FH_VERSION: u8 = 2;
/// Encoded handle size.
pub const FH_BYTES: usize = 52;
/// Bytes covered by the MAC.
const FH_MAC_COVERED_BYTES: usize = 44;
/// MAC length: 64 bits make a blind forgery a 2^-64 guess per try.
const FH_MAC_BYTES: usize = 8;

/// The 32-byte secret key for handle MACs.
#[derive(Clone)]
pub struct FhKey(pub [u8; 32]);

impl std::fmt::Debug for FhKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FhKey(..)")
    }
}

/// Which tree of the file system a handle reads (the file system's own view, spelled
/// without depending on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FhView {
    /// The live file system.
    Live,
    /// The virtual `.snapshot` directory of the directory `fileid`.
    SnapDir,
    /// A snapshot, by id.
    Snap(u32),
}

/// What a handle names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileHandle {
    /// Export the handle was issued under (checked against the export rules).
    pub export_id: u32,
    /// Live, `.snapshot` directory, or snapshot.
    pub view: FhView,
    /// Aggregate uuid.
    pub aggregate: [u8; 16],
    /// Inode number.
    pub fileid: u64,
    /// Inode generation (a reused inode number gets a new one: old handles go STALE).
    pub generation: u64,
}

/// Why a handle was rejected (all map to NFS3ERR_BADHANDLE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FhError {
    /// Not one of our handles.
    #[error("malformed file handle: {reason}")]
    Malformed {
        /// What was wrong.
        reason: &'static str,
    },
}

impl FhError {
    /// The NFS status to answer with.
    pub fn nfsstat(&self) -> NfsStat3 {
        NfsStat3::Badhandle
    }
}

fn mac(key: &FhKey, covered: &[u8]) -> [u8; FH_MAC_BYTES] {
    let hash = blake3::keyed_hash(&key.0, covered);
    let mut out = [0u8; FH_MAC_BYTES];
    out.copy_from_slice(&hash.as_bytes()[..FH_MAC_BYTES]);
    out
}

impl FileHandle {
    /// Encodes and signs the handle.
    pub fn encode(&self, key: &FhKey) -> NfsFh3 {
        let mut b = [0u8; FH_BYTES];
        b[0] = FH_VERSION;
        let (tag, snap) = match self.view {
            FhView::Live => (0u8, 0u32),
            FhView::SnapDir => (1, 0),
            FhView::Snap(id) => (2, id),
        };
        b[1] = tag;
        b[40..44].copy_from_slice(&snap.to_be_bytes());
        b[4..8].copy_from_slice(&self.export_id.to_be_bytes());
        b[8..24].copy_from_slice(&self.aggregate);
        b[24..32].copy_from_slice(&self.fileid.to_be_bytes());
        b[32..40].copy_from_slice(&self.generation.to_be_bytes());
        let m = mac(key, &b[..FH_MAC_COVERED_BYTES]);
        b[FH_MAC_COVERED_BYTES..].copy_from_slice(&m);
        NfsFh3::new(&b).expect("52 bytes fit in a 64-byte handle")
    }

    /// Decodes and verifies a handle received from a client.
    pub fn decode(fh: &NfsFh3, key: &FhKey) -> Result<Self, FhError> {
        let b = fh.as_bytes();
        let malformed = |reason| Err(FhError::Malformed { reason });
        if b.len() != FH_BYTES {
            return malformed("wrong length");
        }
        if b[0] != FH_VERSION {
            return malformed("unknown version");
        }
        if b[2..4] != [0, 0] {
            return malformed("reserved bytes set");
        }
        let snap = u32::from_be_bytes([b[40], b[41], b[42], b[43]]);
        let view = match (b[1], snap) {
            (0, 0) => FhView::Live,
            (1, 0) => FhView::SnapDir,
            (2, id) => FhView::Snap(id),
            _ => return malformed("bad view"),
        };
        let expected = mac(key, &b[..FH_MAC_COVERED_BYTES]);
        // Compare without early exit so the time taken says nothing about the MAC.
        let diff = expected
            .iter()
            .zip(&b[FH_MAC_COVERED_BYTES..])
            .fold(0u8, |acc, (x, y)| acc | (x ^ y));
        if diff != 0 {
            return malformed("MAC mismatch");
        }
        let u64_at = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_be_bytes(w)
        };
        let mut aggregate = [0u8; 16];
        aggregate.copy_from_slice(&b[8..24]);
        Ok(FileHandle {
            export_id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            view,
            aggregate,
            fileid: u64_at(24),
            generation: u64_at(32),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: FhKey = FhKey([7; 32]);

    fn sample() -> FileHandle {
        FileHandle {
            export_id: 3,
            view: FhView::Live,
            aggregate: [0xab; 16],
            fileid: 0x1122_3344_5566_7788,
            generation: 9,
        }
    }

    #[test]
    fn round_trip() {
        let fh = sample().encode(&KEY);
        assert_eq!(fh.as_bytes().len(), FH_BYTES);
        assert_eq!(FileHandle::decode(&fh, &KEY), Ok(sample()));
        for view in [FhView::SnapDir, FhView::Snap(0), FhView::Snap(u32::MAX)] {
            let h = FileHandle { view, ..sample() };
            assert_eq!(FileHandle::decode(&h.encode(&KEY), &KEY), Ok(h));
        }
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let fh = sample().encode(&KEY);
        for i in 0..FH_BYTES * 8 {
            let mut b = fh.as_bytes().to_vec();
            b[i / 8] ^= 1 << (i % 8);
            let bad = NfsFh3::new(&b).unwrap();
            assert!(FileHandle::decode(&bad, &KEY).is_err(), "bit {i}");
        }
    }

    #[test]
    fn other_key_truncation_and_extension_rejected() {
        let fh = sample().encode(&KEY);
        assert!(FileHandle::decode(&fh, &FhKey([8; 32])).is_err());
        for len in 0..FH_BYTES {
            let short = NfsFh3::new(&fh.as_bytes()[..len]).unwrap();
            assert!(FileHandle::decode(&short, &KEY).is_err());
        }
        let mut long = fh.as_bytes().to_vec();
        long.push(0);
        assert!(FileHandle::decode(&NfsFh3::new(&long).unwrap(), &KEY).is_err());
    }

    #[test]
    fn handle_is_stable_across_runs() {
        // Pins the byte layout: a change here invalidates every handle clients hold.
        let fh = sample().encode(&KEY);
        assert_eq!(
            &fh.as_bytes()[..44],
            &[
                2, 0, 0, 0, 0, 0, 0, 3, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab,
                0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,
                0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0
            ]
        );
    }
}
