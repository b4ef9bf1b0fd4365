//! The NVRAM log of a twinfiler node: region, records, group-committed append, mirror to
//! the partner, replay.
//!
//! - [`region`]: the mapping (device-DAX, fs-dax with MAP_SYNC, or plain file + msync) and
//!   its persistence barrier ([`persist`]: clwb/clflushopt/clflush + sfence via CPUID).
//! - [`format`]: byte layouts (also in `docs/format.md`); [`log`]: one two-half log area,
//!   commit and replay.
//! - [`mirror`]: the sans-IO mirror protocol; [`proto`]: its authenticated frames;
//!   [`transport`], [`tcp`] (and `rdma` behind the feature): how frames travel.
//! - [`engine`]: [`Nvlog`], what the node uses: `append` → durable future, `release_through`
//!   at CP, replay, status.
//!
//! The write path as the node uses it:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use nvlog::{kind, Config, Nvlog};
//! let log = Nvlog::open(Config::default())?; // /dev/shm plain file, standalone
//! // Journal the op: resolves once durable locally and in the partner's mirror.
//! let seq = log.append(kind::OP, b"fs op + client request identity").await?;
//! // ... apply the op to the file system, reply, and keep the reply for the
//! // duplicate-request cache (nobody needs to await that record):
//! drop(log.submit(kind::REPLY, &nvlog::encode_reply(seq, b"reply"))?);
//! // A CP covering everything through `seq` finished: release what it covered.
//! log.release_through(seq);
//! // Boot, crash recovery, takeover (`replay_mirror`): records newer than the CP.
//! let replay = log.replay_own(seq + 1)?;
//! assert!(replay.records.iter().all(|r| r.seq > seq));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod engine;
pub mod format;
pub mod log;
pub mod mirror;
pub mod persist;
pub mod proto;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod region;
pub mod tcp;
pub mod transport;

pub use engine::{
    AppendError, Config, Durable, Latencies, MirrorConfig, Nvlog, OpenError, Status,
    BUSY_POLL_US_DEFAULT,
};
pub use log::{Record, Replay, ReplayError, Tail};
pub use mirror::{DegradePolicy, MirrorState, SenderConfig, TAKEOVER_IMPOSSIBLE};
pub use proto::MirrorKey;
pub use region::{PersistMode, Region};

/// Record kinds. nvlog treats payloads as opaque; kinds let the node tell them apart.
pub mod kind {
    /// Never written (an all-zero header reads as "empty").
    pub const INVALID: u16 = 0;
    /// A file-system operation with the client's request identity.
    pub const OP: u16 = 1;
    /// "Reply recorded for request X": payload = op record seq (u64 LE) + opaque reply.
    /// Lets the duplicate-request cache live in the log.
    pub const REPLY: u16 = 2;
    /// Kinds from here up are free for the node's own use.
    pub const USER_MIN: u16 = 16;
}

/// Builds the payload of a [`kind::REPLY`] record for the op record `op_seq`.
pub fn encode_reply(op_seq: u64, reply: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + reply.len());
    v.extend_from_slice(&op_seq.to_le_bytes());
    v.extend_from_slice(reply);
    v
}

/// Splits a [`kind::REPLY`] payload into the op record seq and the reply; `None` if short.
pub fn decode_reply(payload: &[u8]) -> Option<(u64, &[u8])> {
    let (seq, reply) = payload.split_at_checked(8)?;
    Some((u64::from_le_bytes(seq.try_into().ok()?), reply))
}
