//! The NFSv3 program (RFC 1813): dispatch, credentials, handle resolution, the
//! duplicate-request cache around non-idempotent procedures.
//!
//! - [`attr`]: attribute/handle conversions and the `FsError` → `nfsstat3` mapping;
//! - [`perm`]: permission checks and ACCESS;
//! - [`read`]: procedures that do not change anything;
//! - [`modify`]: procedures that do, as far as building the logged op, and the executor
//!   that applies a logged op and formats its reply (live and in replay).

pub mod attr;
pub mod modify;
pub mod perm;
pub mod read;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use twinfiler_proto::drc::DrcKey;
use twinfiler_proto::fh::FileHandle;
use twinfiler_proto::nfs3::{Nfs3Call, Nfs3Proc, NfsFh3, NfsStat3, PostOpAttr, WccData, NFS_V3};
use twinfiler_proto::rpc::{AcceptStat, AuthStat, Credential, Rejected, ReplyHeader, ReplyStatus};
use twinfiler_proto::xdr::Xdr;
use twinfiler_rpc::{BoxFuture, Call, Outcome, Program, Reply};
use wafl::{Attr, Handle};

use crate::drc::Begin;
use crate::exports::{Export, Identity, Rule};
use crate::stats::bump;
use crate::NfsService;

pub(crate) use modify::Exec;

/// The NFS program of a service.
pub struct NfsProgram(pub Arc<NfsService>);

impl Program for NfsProgram {
    fn call(self: Arc<Self>, call: Call) -> BoxFuture<Outcome> {
        Box::pin(async move { self.0.nfs_call(call).await })
    }
}

/// Who is calling: address and credential.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub peer: SocketAddr,
    /// AUTH_SYS (uid, gid, gids); `None` for AUTH_NONE.
    pub cred: Option<(u32, u32, Vec<u32>)>,
    pub xid: u32,
    /// The call came over UDP: replies must fit one datagram.
    pub udp: bool,
}

/// A handle resolved for a caller: its export, the rule and identity that apply, the
/// object and its current attributes.
pub(crate) struct Resolved<'s> {
    pub export: &'s Export,
    pub rule: &'s Rule,
    pub ident: Identity,
    pub handle: Handle,
    pub attr: Attr,
}

/// A reply and its NFS status (for the counters).
pub(crate) struct Done {
    pub status: NfsStat3,
    pub reply: Reply,
}

/// Encodes a whole reply for an NFS result `stat` + body.
pub(crate) fn done<T: Xdr>(xid: u32, status: NfsStat3, body: &T) -> Done {
    let mut out = ReplyHeader::success(xid).to_vec_with_capacity(256);
    status.encode(&mut out);
    body.encode(&mut out);
    Done {
        status,
        reply: Reply::from_vec(out),
    }
}

/// The failure reply of procedure `p` with status `stat` and, where the procedure has
/// them, the object's attributes after (as wcc "after" for modifying procedures).
pub(crate) fn fail(xid: u32, p: Nfs3Proc, stat: NfsStat3, after: PostOpAttr) -> Done {
    assert_ne!(stat, NfsStat3::Ok);
    let mut out = ReplyHeader::success(xid).to_vec_with_capacity(128);
    stat.encode(&mut out);
    let wcc = attr::wcc_after(after.clone());
    match p {
        Nfs3Proc::Null | Nfs3Proc::Getattr => {}
        Nfs3Proc::Setattr
        | Nfs3Proc::Write
        | Nfs3Proc::Create
        | Nfs3Proc::Mkdir
        | Nfs3Proc::Symlink
        | Nfs3Proc::Mknod
        | Nfs3Proc::Remove
        | Nfs3Proc::Rmdir
        | Nfs3Proc::Commit => wcc.encode(&mut out),
        Nfs3Proc::Rename => {
            wcc.encode(&mut out);
            WccData::default().encode(&mut out);
        }
        Nfs3Proc::Link => {
            after.encode(&mut out);
            WccData::default().encode(&mut out);
        }
        Nfs3Proc::Lookup
        | Nfs3Proc::Access
        | Nfs3Proc::Readlink
        | Nfs3Proc::Read
        | Nfs3Proc::Readdir
        | Nfs3Proc::Readdirplus
        | Nfs3Proc::Fsstat
        | Nfs3Proc::Fsinfo
        | Nfs3Proc::Pathconf => after.encode(&mut out),
    }
    Done {
        status: stat,
        reply: Reply::from_vec(out),
    }
}

/// A reply with only an RPC header (errors before the procedure).
pub(crate) fn rpc_only(header: ReplyHeader) -> Reply {
    Reply::from_vec(header.to_vec_with_capacity(0))
}

/// The AUTH_ERROR reply for a credential flavor we do not accept.
pub(crate) fn too_weak(xid: u32) -> Reply {
    rpc_only(ReplyHeader {
        xid,
        status: ReplyStatus::Denied(Rejected::AuthError(AuthStat::TooWeak)),
    })
}

/// The caller of a call, or the reply refusing its credential.
pub(crate) fn caller_of(call: &Call) -> Result<Caller, Reply> {
    let cred = match &call.header.cred {
        Credential::None => None,
        Credential::Sys(s) => Some((s.uid, s.gid, s.gids.clone())),
        Credential::Other(_) => return Err(too_weak(call.header.xid)),
    };
    Ok(Caller {
        peer: call.peer,
        cred,
        xid: call.header.xid,
        udp: call.transport == twinfiler_rpc::Transport::Udp,
    })
}

impl NfsService {
    /// Resolves a client's handle: MAC, aggregate, export, rule, identity, object.
    pub(crate) fn resolve(&self, fh: &NfsFh3, c: &Caller) -> Result<Resolved<'_>, NfsStat3> {
        let h = FileHandle::decode(fh, &self.cfg.fh_key).map_err(|e| e.nfsstat())?;
        if h.aggregate != self.cfg.aggregate_uuid {
            return Err(NfsStat3::Stale);
        }
        let export = self.cfg.exports.by_id(h.export_id).ok_or(NfsStat3::Stale)?;
        let rule = export.rule_for(c.peer).ok_or(NfsStat3::Acces)?;
        let ident = rule.identity(c.cred.as_ref().map(|(u, g, gs)| (*u, *g, gs.as_slice())));
        let handle = Handle {
            view: attr::fs_view(h.view),
            ino: h.fileid,
            gen: h.generation,
        };
        let attr = self.fs.getattr(&handle).map_err(|e| attr::status_of(&e))?;
        Ok(Resolved {
            export,
            rule,
            ident,
            handle,
            attr,
        })
    }

    /// Serves one NFS call.
    pub(crate) async fn nfs_call(&self, call: Call) -> Outcome {
        /// Counts the call out even if its future is dropped.
        struct InFlight<'a>(&'a AtomicUsize);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        // Held, not answered, while draining: the client waits and retransmits (to the
        // partner, once it serves this identity). Held calls are not in flight.
        self.wait_while_draining().await;
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _guard = InFlight(&self.in_flight);
        self.nfs_call_counted(call).await
    }

    async fn nfs_call_counted(&self, call: Call) -> Outcome {
        let xid = call.header.xid;
        if call.header.vers != NFS_V3 {
            bump(&self.stats.rpc_errors, 1);
            return Outcome::Reply(rpc_only(ReplyHeader::accepted(
                xid,
                AcceptStat::ProgMismatch {
                    low: NFS_V3,
                    high: NFS_V3,
                },
            )));
        }
        let caller = match caller_of(&call) {
            Ok(c) => c,
            Err(r) => {
                bump(&self.stats.rpc_errors, 1);
                return Outcome::Reply(r);
            }
        };
        let args = match Nfs3Call::decode(call.header.proc_, &call.record, call.args_offset) {
            Ok(a) => a,
            Err(e) => {
                bump(&self.stats.rpc_errors, 1);
                return Outcome::Reply(rpc_only(e.reply(xid)));
            }
        };
        let p = args.proc_();
        self.stats.op(p as u32);
        if p.is_idempotent() {
            let d = self.read_call(&caller, args).await;
            self.count_status(d.status);
            return Outcome::Reply(d.reply);
        }
        let key = DrcKey::new(call.peer, &call.header, &call.record, call.args_offset);
        match self.drc.begin(&key) {
            Begin::Done(bytes) => {
                bump(&self.stats.drc_hits, 1);
                return Outcome::Reply(Reply::from_vec(bytes.to_vec()));
            }
            Begin::InProgress => {
                bump(&self.stats.drc_in_progress_drops, 1);
                return Outcome::Drop;
            }
            Begin::New => {}
        }
        match self.modify_call(&caller, key, args, &call.record).await {
            Some(d) => {
                self.count_status(d.status);
                if d.status == NfsStat3::Jukebox {
                    // "Try later" must not be what a retransmission gets forever.
                    self.drc.abort(&key);
                } else {
                    self.drc.finish(&key, Bytes::copy_from_slice(&d.reply.head));
                }
                Outcome::Reply(d.reply)
            }
            None => {
                self.drc.abort(&key);
                Outcome::Drop
            }
        }
    }

    fn count_status(&self, s: NfsStat3) {
        if s != NfsStat3::Ok {
            bump(&self.stats.errors, 1);
        }
    }
}
