//! Sans-IO wire protocols of the twinfiler node: ONC RPC record marking and messages, XDR,
//! portmap/rpcbind, MOUNT v3 and NFS v3, plus our file-handle codec and the
//! duplicate-request-cache key.
//!
//! Nothing here does I/O, spawns tasks or reads clocks: bytes and facts in, values and bytes
//! out. The node owns sockets, the file system, the DRC and the NVRAM log.
//!
//! # Why our own XDR codec
//!
//! Issue 5 asked us to consider `nfsserve`'s public `xdr`/`nfs` modules and the `nfs3_types`
//! crate. We read both (nfsserve 0.11.0, nfs3_types 0.5.3) and use neither:
//!
//! - **Unbounded allocation on hostile input.** `nfsserve::xdr` decodes `Vec<u8>` with
//!   `self.resize(length as usize, 0)` and `Vec<u32>` likewise, straight from the wire length:
//!   a 4-byte length of `0xFFFFFFFF` allocates 4 GiB (16 GiB for `Vec<u32>`) before the read
//!   fails. `nfs3_types`' `Opaque::unpack` does `vec![0u8; len]` and `Vec<u32>::unpack` does
//!   `with_capacity(len)` the same way. Neither has per-item maxima (names ≤ 255, handles ≤ 64,
//!   groups ≤ 16), so every caller would have to re-validate after the damage is done.
//! - **Copies.** Both decode from `impl Read`, so WRITE data is copied out of the record into
//!   a fresh `Vec`; we want a range into the record buffer that the file system consumes, and
//!   READ replies whose data goes out by vectored write.
//! - **Missing pieces.** `nfsserve` has no rpcbind v3/v4 types; the NFS types there are
//!   tied to its handler model. `nfs3_types` is close in coverage, but its borrow-or-own
//!   `Opaque<'a>` and reader-based traits would still need wrapping for bounds.
//!
//! The XDR needed by NFSv3, MOUNT and rpcbind is small (integers, fixed/variable opaque,
//! optional data, linked lists, discriminated unions), so [`xdr`] is a few hundred lines with every
//! bound an explicit constant and every length checked against the bytes left before use.
//!
//! # Decoding never panics
//!
//! All decoders work on a borrowed record and return errors; [`fuzz::decode_everything`] is
//! run by the `cargo fuzz` target in `fuzz/` and, on random inputs, by the normal test suite.

#![warn(missing_docs)]

pub mod drc;
pub mod fh;
pub mod fuzz;
pub mod mount;
pub mod nfs3;
pub mod portmap;
pub mod record;
pub mod rpc;
pub mod xdr;

#[cfg(test)]
mod arb;
#[cfg(test)]
mod tests;

use rpc::{AcceptStat, ReplyHeader};

/// Why the arguments of a call cannot be handed to a procedure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// Unknown procedure number for this program version.
    #[error("procedure {proc_} unavailable")]
    ProcUnavail {
        /// The procedure asked for.
        proc_: u32,
    },
    /// Program version not served; the range that is.
    #[error("program version mismatch (supported {low}..={high})")]
    ProgMismatch {
        /// Lowest version supported.
        low: u32,
        /// Highest version supported.
        high: u32,
    },
    /// The arguments do not decode.
    #[error("garbage arguments: {0}")]
    Garbage(#[from] xdr::XdrError),
}

impl ArgsError {
    /// The reply header telling the client.
    pub fn reply(&self, xid: u32) -> ReplyHeader {
        let stat = match *self {
            ArgsError::ProcUnavail { .. } => AcceptStat::ProcUnavail,
            ArgsError::ProgMismatch { low, high } => AcceptStat::ProgMismatch { low, high },
            ArgsError::Garbage(_) => AcceptStat::GarbageArgs,
        };
        ReplyHeader::accepted(xid, stat)
    }
}

/// The RPC programs the node serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// Portmapper v2 / rpcbind v3, v4.
    Portmap,
    /// MOUNT v3.
    Mount,
    /// NFS v3.
    Nfs3,
}

impl Program {
    /// Routes (prog, vers) to a program, or says which accept status to reply with.
    pub fn route(prog: u32, vers: u32) -> Result<Program, AcceptStat> {
        let (program, low, high) = match prog {
            portmap::PMAP_PROGRAM => (Program::Portmap, portmap::PMAP_V2, portmap::RPCB_V4),
            mount::MOUNT_PROGRAM => (Program::Mount, mount::MOUNT_V3, mount::MOUNT_V3),
            nfs3::NFS_PROGRAM => (Program::Nfs3, nfs3::NFS_V3, nfs3::NFS_V3),
            _ => return Err(AcceptStat::ProgUnavail),
        };
        if (low..=high).contains(&vers) {
            Ok(program)
        } else {
            Err(AcceptStat::ProgMismatch { low, high })
        }
    }
}
