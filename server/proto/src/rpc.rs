//! ONC RPC v2 messages (RFC 5531): CALL headers with typed credentials, and REPLY headers.
//!
//! A server decodes a record with [`decode_call`], which returns the header and the offset of
//! the procedure arguments in the same record. Anything wrong in the header becomes a
//! [`CallError`], and [`CallError::reply`] says which reply (if any) the client should get.

use crate::xdr::{xdr_enum, Decoder, Xdr, XdrError, XdrResult, XdrWrite};

/// The only RPC protocol version (RFC 5531 §9).
pub const RPC_VERSION: u32 = 2;
/// `msg_type` CALL.
pub const MSG_CALL: u32 = 0;
/// `msg_type` REPLY.
pub const MSG_REPLY: u32 = 1;

/// Largest `opaque_auth` body (RFC 5531 §8.2: `opaque body<400>`).
pub const AUTH_BODY_BYTES_MAX: usize = 400;
/// Largest AUTH_SYS machine name (RFC 5531 appendix A: `string machinename<255>`).
pub const AUTH_SYS_MACHINENAME_BYTES_MAX: usize = 255;
/// Most supplementary groups in AUTH_SYS (RFC 5531 appendix A: `unsigned int gids<16>`).
pub const AUTH_SYS_GIDS_MAX: usize = 16;

/// Authentication flavor numbers (RFC 5531 §8.2 and the IANA registry).
pub mod flavor {
    /// No authentication.
    pub const AUTH_NONE: u32 = 0;
    /// UNIX-style uid/gid credentials (historically AUTH_UNIX).
    pub const AUTH_SYS: u32 = 1;
    /// Short-hand credential (unused here).
    pub const AUTH_SHORT: u32 = 2;
    /// Diffie-Hellman (obsolete).
    pub const AUTH_DH: u32 = 3;
    /// RPCSEC_GSS (Kerberos); not supported here.
    pub const RPCSEC_GSS: u32 = 6;
}

xdr_enum! {
    /// Why a call was rejected at authentication (RFC 5531 `auth_stat`).
    pub enum AuthStat {
        /// Success (never sent in a rejection).
        Ok = 0,
        /// Bad credential (seal broken, malformed).
        BadCred = 1,
        /// Client must begin a new session.
        RejectedCred = 2,
        /// Bad verifier.
        BadVerf = 3,
        /// Verifier expired or replayed.
        RejectedVerf = 4,
        /// Rejected for security reasons (flavor too weak or unsupported for this export).
        TooWeak = 5,
        /// Bogus response verifier.
        InvalidResp = 6,
        /// Reason unknown.
        Failed = 7,
    }
}

/// An `opaque_auth`: flavor plus an uninterpreted body of at most 400 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpaqueAuth {
    /// Authentication flavor.
    pub flavor: u32,
    /// Body bytes (≤ [`AUTH_BODY_BYTES_MAX`]).
    pub body: Vec<u8>,
}

impl OpaqueAuth {
    /// AUTH_NONE with an empty body: the verifier of every reply we send.
    pub fn none() -> Self {
        OpaqueAuth::default()
    }
}

impl Xdr for OpaqueAuth {
    fn encode(&self, out: &mut Vec<u8>) {
        assert!(self.body.len() <= AUTH_BODY_BYTES_MAX);
        out.put_u32(self.flavor);
        out.put_opaque(&self.body);
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        let flavor = dec.u32()?;
        let body = dec.opaque_vec("opaque_auth body", AUTH_BODY_BYTES_MAX)?;
        Ok(OpaqueAuth { flavor, body })
    }
}

/// AUTH_SYS parameters (RFC 5531 appendix A, `authsys_parms`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthSys {
    /// Arbitrary client stamp.
    pub stamp: u32,
    /// Client machine name (≤ 255 bytes, not necessarily UTF-8).
    pub machinename: Vec<u8>,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Supplementary groups (≤ 16).
    pub gids: Vec<u32>,
}

impl Xdr for AuthSys {
    fn encode(&self, out: &mut Vec<u8>) {
        assert!(self.machinename.len() <= AUTH_SYS_MACHINENAME_BYTES_MAX);
        assert!(self.gids.len() <= AUTH_SYS_GIDS_MAX);
        out.put_u32(self.stamp);
        out.put_opaque(&self.machinename);
        out.put_u32(self.uid);
        out.put_u32(self.gid);
        out.put_u32(self.gids.len() as u32);
        for g in &self.gids {
            out.put_u32(*g);
        }
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        Ok(AuthSys {
            stamp: dec.u32()?,
            machinename: dec.opaque_vec("machinename", AUTH_SYS_MACHINENAME_BYTES_MAX)?,
            uid: dec.u32()?,
            gid: dec.u32()?,
            gids: dec.array("gids", AUTH_SYS_GIDS_MAX, 4, |d| d.u32())?,
        })
    }
}

/// The caller's credential, interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// AUTH_NONE: anonymous.
    None,
    /// AUTH_SYS: uid, gid and groups as the client claims them.
    Sys(AuthSys),
    /// A flavor we do not interpret (e.g. RPCSEC_GSS); the service decides (usually
    /// AUTH_ERROR with [`AuthStat::TooWeak`] or [`AuthStat::BadCred`]).
    Other(OpaqueAuth),
}

impl Credential {
    /// The flavor number on the wire.
    pub fn flavor(&self) -> u32 {
        match self {
            Credential::None => flavor::AUTH_NONE,
            Credential::Sys(_) => flavor::AUTH_SYS,
            Credential::Other(a) => a.flavor,
        }
    }

    /// Re-encodes the credential as an `opaque_auth`.
    pub fn to_opaque(&self) -> OpaqueAuth {
        match self {
            Credential::None => OpaqueAuth::none(),
            Credential::Sys(sys) => OpaqueAuth {
                flavor: flavor::AUTH_SYS,
                body: crate::xdr::to_vec(sys),
            },
            Credential::Other(a) => a.clone(),
        }
    }

    /// Interprets an `opaque_auth` received as a credential.
    pub fn from_opaque(auth: OpaqueAuth) -> Result<Self, AuthStat> {
        match auth.flavor {
            flavor::AUTH_NONE => Ok(Credential::None),
            flavor::AUTH_SYS => {
                // The body must be exactly one authsys_parms.
                crate::xdr::from_slice::<AuthSys>(&auth.body)
                    .map(Credential::Sys)
                    .map_err(|_| AuthStat::BadCred)
            }
            _ => Ok(Credential::Other(auth)),
        }
    }
}

/// A decoded CALL header (everything before the procedure arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallHeader {
    /// Transaction id, echoed in the reply.
    pub xid: u32,
    /// Program number.
    pub prog: u32,
    /// Program version.
    pub vers: u32,
    /// Procedure number.
    pub proc_: u32,
    /// Caller credential.
    pub cred: Credential,
    /// Caller verifier.
    pub verf: OpaqueAuth,
}

impl CallHeader {
    /// Appends the encoding of this header (a client's view; used by tests and tools).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u32(self.xid);
        out.put_u32(MSG_CALL);
        out.put_u32(RPC_VERSION);
        out.put_u32(self.prog);
        out.put_u32(self.vers);
        out.put_u32(self.proc_);
        self.cred.to_opaque().encode(out);
        self.verf.encode(out);
    }
}

/// Why a record is not an acceptable CALL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Not even an xid: nothing can be replied.
    #[error("record too short for an RPC message ({len} bytes)")]
    NoXid {
        /// Record length.
        len: usize,
    },
    /// A REPLY or unknown message type sent to a server: dropped.
    #[error("xid {xid}: message type {msg_type} is not CALL")]
    NotACall {
        /// Transaction id.
        xid: u32,
        /// The `msg_type` received.
        msg_type: u32,
    },
    /// RPC version other than 2.
    #[error("xid {xid}: RPC version {rpcvers} unsupported")]
    RpcVersion {
        /// Transaction id.
        xid: u32,
        /// Version received.
        rpcvers: u32,
    },
    /// Credential or verifier malformed.
    #[error("xid {xid}: bad credential or verifier: {stat:?}")]
    Auth {
        /// Transaction id.
        xid: u32,
        /// What to tell the client.
        stat: AuthStat,
    },
    /// The header is truncated or malformed after the xid.
    #[error("xid {xid}: malformed call header: {source}")]
    Garbage {
        /// Transaction id.
        xid: u32,
        /// The decode failure.
        source: XdrError,
    },
}

impl CallError {
    /// The reply the client should get, or `None` if the record must be dropped silently
    /// (no xid, or not a CALL: replying to a REPLY could start a loop).
    pub fn reply(&self) -> Option<ReplyHeader> {
        match *self {
            CallError::NoXid { .. } | CallError::NotACall { .. } => None,
            CallError::RpcVersion { xid, .. } => Some(ReplyHeader {
                xid,
                status: ReplyStatus::Denied(Rejected::RpcMismatch {
                    low: RPC_VERSION,
                    high: RPC_VERSION,
                }),
            }),
            CallError::Auth { xid, stat } => Some(ReplyHeader {
                xid,
                status: ReplyStatus::Denied(Rejected::AuthError(stat)),
            }),
            CallError::Garbage { xid, .. } => {
                Some(ReplyHeader::accepted(xid, AcceptStat::GarbageArgs))
            }
        }
    }
}

/// Decodes the CALL header at the start of `record`. Returns the header and the offset where
/// the procedure arguments begin.
pub fn decode_call(record: &[u8]) -> Result<(CallHeader, usize), CallError> {
    let mut dec = Decoder::new(record);
    let xid = dec
        .u32()
        .map_err(|_| CallError::NoXid { len: record.len() })?;
    let garbage = |source| CallError::Garbage { xid, source };
    let msg_type = dec.u32().map_err(garbage)?;
    if msg_type != MSG_CALL {
        return Err(CallError::NotACall { xid, msg_type });
    }
    let rpcvers = dec.u32().map_err(garbage)?;
    if rpcvers != RPC_VERSION {
        return Err(CallError::RpcVersion { xid, rpcvers });
    }
    let prog = dec.u32().map_err(garbage)?;
    let vers = dec.u32().map_err(garbage)?;
    let proc_ = dec.u32().map_err(garbage)?;
    let auth_err = |stat| CallError::Auth { xid, stat };
    let cred = OpaqueAuth::decode(&mut dec).map_err(|_| auth_err(AuthStat::BadCred))?;
    let cred = Credential::from_opaque(cred).map_err(auth_err)?;
    let verf = OpaqueAuth::decode(&mut dec).map_err(|_| auth_err(AuthStat::BadVerf))?;
    let header = CallHeader {
        xid,
        prog,
        vers,
        proc_,
        cred,
        verf,
    };
    Ok((header, dec.position()))
}

/// Outcome of an accepted call (RFC 5531 `accept_stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptStat {
    /// Executed; procedure results follow the header.
    Success,
    /// Program not exported here.
    ProgUnavail,
    /// Program version not supported; the supported range.
    ProgMismatch {
        /// Lowest version supported.
        low: u32,
        /// Highest version supported.
        high: u32,
    },
    /// Procedure number unknown.
    ProcUnavail,
    /// Arguments could not be decoded.
    GarbageArgs,
    /// Server-side failure (e.g. out of memory).
    SystemErr,
}

/// Why a call was denied (RFC 5531 `rejected_reply`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// RPC version unsupported; the supported range.
    RpcMismatch {
        /// Lowest version supported.
        low: u32,
        /// Highest version supported.
        high: u32,
    },
    /// Authentication failed.
    AuthError(AuthStat),
}

/// The body status of a REPLY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyStatus {
    /// MSG_ACCEPTED with the server verifier and the accept status.
    Accepted {
        /// Server verifier (AUTH_NONE for AUTH_SYS/AUTH_NONE calls).
        verf: OpaqueAuth,
        /// Outcome.
        stat: AcceptStat,
    },
    /// MSG_DENIED.
    Denied(Rejected),
}

/// A REPLY header. For `Accepted { stat: Success }` the procedure results follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyHeader {
    /// Transaction id of the call.
    pub xid: u32,
    /// Status.
    pub status: ReplyStatus,
}

impl ReplyHeader {
    /// An accepted reply with an AUTH_NONE verifier.
    pub fn accepted(xid: u32, stat: AcceptStat) -> Self {
        ReplyHeader {
            xid,
            status: ReplyStatus::Accepted {
                verf: OpaqueAuth::none(),
                stat,
            },
        }
    }

    /// SUCCESS with an AUTH_NONE verifier: the usual prefix of procedure results.
    pub fn success(xid: u32) -> Self {
        Self::accepted(xid, AcceptStat::Success)
    }

    /// The reply for arguments that failed to decode.
    pub fn garbage_args(xid: u32) -> Self {
        Self::accepted(xid, AcceptStat::GarbageArgs)
    }

    /// Encodes into a fresh buffer with `extra_capacity` bytes reserved for results.
    pub fn to_vec_with_capacity(&self, extra_capacity: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + extra_capacity);
        self.encode(&mut out);
        out
    }
}

const MSG_ACCEPTED: u32 = 0;
const MSG_DENIED: u32 = 1;
const REJECT_RPC_MISMATCH: u32 = 0;
const REJECT_AUTH_ERROR: u32 = 1;

impl Xdr for ReplyHeader {
    fn encode(&self, out: &mut Vec<u8>) {
        out.put_u32(self.xid);
        out.put_u32(MSG_REPLY);
        match &self.status {
            ReplyStatus::Accepted { verf, stat } => {
                out.put_u32(MSG_ACCEPTED);
                verf.encode(out);
                match *stat {
                    AcceptStat::Success => out.put_u32(0),
                    AcceptStat::ProgUnavail => out.put_u32(1),
                    AcceptStat::ProgMismatch { low, high } => {
                        out.put_u32(2);
                        out.put_u32(low);
                        out.put_u32(high);
                    }
                    AcceptStat::ProcUnavail => out.put_u32(3),
                    AcceptStat::GarbageArgs => out.put_u32(4),
                    AcceptStat::SystemErr => out.put_u32(5),
                }
            }
            ReplyStatus::Denied(rejected) => {
                out.put_u32(MSG_DENIED);
                match *rejected {
                    Rejected::RpcMismatch { low, high } => {
                        out.put_u32(REJECT_RPC_MISMATCH);
                        out.put_u32(low);
                        out.put_u32(high);
                    }
                    Rejected::AuthError(stat) => {
                        out.put_u32(REJECT_AUTH_ERROR);
                        stat.encode(out);
                    }
                }
            }
        }
    }

    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        let xid = dec.u32()?;
        let msg_type = dec.u32()?;
        if msg_type != MSG_REPLY {
            return Err(XdrError::BadDiscriminant {
                what: "msg_type (expected REPLY)",
                value: msg_type,
            });
        }
        let status = match dec.u32()? {
            MSG_ACCEPTED => {
                let verf = OpaqueAuth::decode(dec)?;
                let stat = match dec.u32()? {
                    0 => AcceptStat::Success,
                    1 => AcceptStat::ProgUnavail,
                    2 => AcceptStat::ProgMismatch {
                        low: dec.u32()?,
                        high: dec.u32()?,
                    },
                    3 => AcceptStat::ProcUnavail,
                    4 => AcceptStat::GarbageArgs,
                    5 => AcceptStat::SystemErr,
                    value => {
                        return Err(XdrError::BadDiscriminant {
                            what: "accept_stat",
                            value,
                        })
                    }
                };
                ReplyStatus::Accepted { verf, stat }
            }
            MSG_DENIED => ReplyStatus::Denied(match dec.u32()? {
                REJECT_RPC_MISMATCH => Rejected::RpcMismatch {
                    low: dec.u32()?,
                    high: dec.u32()?,
                },
                REJECT_AUTH_ERROR => Rejected::AuthError(AuthStat::decode(dec)?),
                value => {
                    return Err(XdrError::BadDiscriminant {
                        what: "reject_stat",
                        value,
                    })
                }
            }),
            value => {
                return Err(XdrError::BadDiscriminant {
                    what: "reply_stat",
                    value,
                })
            }
        };
        Ok(ReplyHeader { xid, status })
    }
}

/// Decodes a REPLY header at the start of `record`; returns it and the offset of the results.
pub fn decode_reply(record: &[u8]) -> XdrResult<(ReplyHeader, usize)> {
    let mut dec = Decoder::new(record);
    let header = ReplyHeader::decode(&mut dec)?;
    Ok((header, dec.position()))
}

/// Builds a complete reply body (header + encoded results) for a successful call.
pub fn success_reply<T: Xdr>(xid: u32, results: &T) -> Vec<u8> {
    let mut out = ReplyHeader::success(xid).to_vec_with_capacity(128);
    results.encode(&mut out);
    out
}
