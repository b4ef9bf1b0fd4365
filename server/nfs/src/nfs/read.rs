//! The procedures that change nothing: NULL, GETATTR, LOOKUP, ACCESS, READLINK, READ,
//! READDIR, READDIRPLUS, FSSTAT, FSINFO, PATHCONF, COMMIT.
//!
//! READDIR cookies are the file system's directory entry ids: they never move, entries
//! added or removed later do not shift them, so a cookie stays valid while the directory
//! changes. The cookie verifier is therefore fixed per directory (its generation): a client
//! presenting a verifier of another directory incarnation gets NFS3ERR_BAD_COOKIE. Cookies
//! 1 and 2 are `.` and `..` (entry ids start at 3).

use bytes::Bytes;
use twinfiler_proto::nfs3::{
    encode_read_ok_head, fsf, AccessArgs, AccessResOk, CommitArgs, CommitResOk, CookieVerf3,
    EntryPlus3, Filename3, FsRootArgs, FsinfoResOk, FsstatResOk, GetattrArgs, GetattrResOk,
    LookupArgs, LookupResOk, Nfs3Call, NfsPath3, NfsStat3, NfsTime3, PathconfResOk, ReadArgs,
    ReaddirArgs, ReaddirEncoder, ReaddirplusArgs, ReaddirplusEncoder, ReadlinkArgs, ReadlinkResOk,
    IO_BYTES_MAX, NAME_BYTES_MAX,
};
use twinfiler_proto::rpc::ReplyHeader;
use twinfiler_proto::xdr::padding;
use twinfiler_rpc::Reply;
use wafl::{Attr, FileType, FsError, Handle, ReadData, View, FILE_SIZE_MAX};

use super::attr::{status_of, wcc_after};
use super::perm::{self, R, X};
use super::{done, fail, Caller, Done};
use crate::stats::bump;
use crate::NfsService;

/// Preferred READDIR reply size we advertise (FSINFO dtpref).
const DTPREF_BYTES: u32 = 64 * 1024;
/// Largest directory reply we build, whatever the client asks.
const READDIR_REPLY_BYTES_MAX: u32 = 1024 * 1024;
/// Entries fetched from the file system per batch while filling a READDIR reply.
const READDIR_BATCH_ENTRIES: usize = 512;
/// Largest READ data and READDIR reply over UDP: a reply must fit one datagram (64 KiB
/// minus headers); 32 KiB is what Linux clients use over UDP anyway.
const UDP_REPLY_BYTES_MAX: u32 = 32 * 1024;
/// Most hard links we admit to (PATHCONF linkmax).
const LINK_MAX: u32 = 65_000;
/// Block size hint for READ/WRITE multiples (FSINFO rtmult/wtmult).
const IO_MULT_BYTES: u32 = 4096;

/// Receives directory entries (cookie, name, handle, attributes if already known); returns
/// false to stop (reply full).
type EntrySink<'a> = dyn FnMut(u64, &[u8], &Handle, Option<&Attr>) -> bool + 'a;

/// The cookie verifier of a directory: its generation (see module docs).
fn cookie_verf(dir: &Attr) -> CookieVerf3 {
    dir.gen.to_be_bytes()
}

/// The largest directory reply for this caller's transport.
fn reply_cap(c: &Caller) -> u32 {
    if c.udp {
        UDP_REPLY_BYTES_MAX
    } else {
        READDIR_REPLY_BYTES_MAX
    }
}

impl NfsService {
    /// Serves an idempotent procedure.
    pub(crate) async fn read_call(&self, c: &Caller, args: Nfs3Call) -> Done {
        let p = args.proc_();
        let res = match args {
            Nfs3Call::Null => Ok(Done {
                status: NfsStat3::Ok,
                reply: Reply::from_vec(ReplyHeader::success(c.xid).to_vec_with_capacity(0)),
            }),
            Nfs3Call::Getattr(a) => self.getattr(c, a),
            Nfs3Call::Lookup(a) => self.lookup(c, a),
            Nfs3Call::Access(a) => self.access(c, a),
            Nfs3Call::Readlink(a) => self.readlink(c, a),
            Nfs3Call::Read(a) => self.read(c, a).await,
            Nfs3Call::Readdir(a) => self.readdir(c, a),
            Nfs3Call::Readdirplus(a) => self.readdirplus(c, a),
            Nfs3Call::Fsstat(a) => self.fsstat(c, a),
            Nfs3Call::Fsinfo(a) => self.fsinfo(c, a),
            Nfs3Call::Pathconf(a) => self.pathconf(c, a),
            Nfs3Call::Commit(a) => self.commit(c, a),
            _ => Err((NfsStat3::Serverfault, None)),
        };
        res.unwrap_or_else(|(stat, h)| {
            let after = h.and_then(|h| self.post_attr(&h));
            fail(c.xid, p, stat, after)
        })
    }

    fn getattr(&self, c: &Caller, a: GetattrArgs) -> Result<Done, (NfsStat3, Option<Handle>)> {
        let r = self.resolve(&a.object, c).map_err(|s| (s, None))?;
        Ok(done(
            c.xid,
            NfsStat3::Ok,
            &GetattrResOk {
                obj_attributes: self.fattr(&r.attr),
            },
        ))
    }

    fn lookup(&self, c: &Caller, a: LookupArgs) -> Result<Done, (NfsStat3, Option<Handle>)> {
        let r = self.resolve(&a.what.dir, c).map_err(|s| (s, None))?;
        let dir = Some(r.handle);
        if r.attr.kind != FileType::Directory {
            return Err((NfsStat3::Notdir, dir));
        }
        if !perm::may(&r.attr, &r.ident, X) {
            return Err((NfsStat3::Acces, dir));
        }
        if a.what.name.too_long() {
            return Err((NfsStat3::Nametoolong, dir));
        }
        let name = a.what.name.as_bytes();
        // `..` of the export root stays at the export root: a client must not walk out.
        let found = if name == b".." && self.is_export_root(r.export, &r.handle) {
            r.attr.clone()
        } else {
            self.fs
                .lookup(&r.handle, name)
                .map_err(|e| (status_of(&e), dir))?
        };
        Ok(done(
            c.xid,
            NfsStat3::Ok,
            &LookupResOk {
                object: self.fh(r.export.id, &found.handle),
                obj_attributes: Some(self.fattr(&found)),
                dir_attributes: Some(self.fattr(&r.attr)),
            },
        ))
    }

    fn access(&self, c: &Caller, a: AccessArgs) -> Result<Done, (NfsStat3, Option<Handle>)> {
        let r = self.resolve(&a.object, c).map_err(|s| (s, None))?;
        let read_only = r.rule.read_only || r.handle.view != View::Live;
        Ok(done(
            c.xid,
            NfsStat3::Ok,
            &AccessResOk {
                obj_attributes: Some(self.fattr(&r.attr)),
                access: perm::access_bits(&r.attr, &r.ident, a.access, read_only),
            },
        ))
    }

    fn readlink(&self, c: &Caller, a: ReadlinkArgs) -> Result<Done, (NfsStat3, Option<Handle>)> {
        let r = self.resolve(&a.symlink, c).map_err(|s| (s, None))?;
        let h = Some(r.handle);
        if r.attr.kind != FileType::Symlink {
            return Err((NfsStat3::Inval, h));
        }
        let target = self
            .fs
            .readlink(&r.handle)
            .map_err(|e| (status_of(&e), h))?;
        let data = NfsPath3::new(target).ok_or((NfsStat3::Serverfault, h))?;
        Ok(done(
            c.xid,
            NfsStat3::Ok,
            &ReadlinkResOk {
                symlink_attributes: Some(self.fattr(&r.attr)),
                data,
            },
        ))
    }

    /// READ: the data goes out as the file system's own blocks (`Reply.data`), never
    /// copied. A read that memory can serve (dirty or cached blocks) runs right here; one
    /// that needs the disks moves to a blocking thread, so no runtime worker (and none of
    /// the other calls it runs) ever waits for a disk.
    async fn read(&self, c: &Caller, a: ReadArgs) -> Result<Done, (NfsStat3, Option<Handle>)> {
        let r = self.resolve(&a.file, c).map_err(|s| (s, None))?;
        let h = Some(r.handle);
        match r.attr.kind {
            FileType::Regular => {}
            FileType::Directory => return Err((NfsStat3::Isdir, h)),
            _ => return Err((NfsStat3::Inval, h)),
        }
        if !perm::may_io(&r.attr, &r.ident, R) {
            return Err((NfsStat3::Acces, h));
        }
        let cap = if c.udp {
            UDP_REPLY_BYTES_MAX as usize
        } else {
            IO_BYTES_MAX
        };
        let count = (a.count as usize).min(cap);
        let read = match self.fs.read_resident(&r.handle, a.offset, count) {
            Err(FsError::WouldBlock) => self.read_blocking(r.handle, a.offset, count).await,
            read => read,
        };
        let ReadData {
            parts: mut data,
            len,
            eof,
        } = read.map_err(|e| (status_of(&e), h))?;
        bump(&self.stats.bytes_read, len as u64);
        let mut head = ReplyHeader::success(c.xid).to_vec_with_capacity(128);
        encode_read_ok_head(&mut head, &Some(self.fattr(&r.attr)), eof, len);
        let pad = padding(len);
        if !pad.is_empty() {
            data.push(Bytes::from_static(pad));
        }
        Ok(Done {
            status: NfsStat3::Ok,
            reply: Reply { head, data },
        })
    }

    /// A read that may wait for the disks, on tokio's blocking pool (or right here outside
    /// a runtime).
    async fn read_blocking(
        &self,
        handle: Handle,
        offset: u64,
        count: usize,
    ) -> Result<ReadData, FsError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.fs.read_parts(&handle, offset, count);
        }
        let fs = self.fs.clone();
        tokio::task::spawn_blocking(move || fs.read_parts(&handle, offset, count))
            .await
            .unwrap_or_else(|e| {
                // The read panicked (a bug): the dispatcher would answer SYSTEM_ERR; this
                // answers NFS3ERR_IO and keeps the message.
                tracing::error!(error = %e, "READ on the blocking pool failed");
                Err(FsError::Io(format!("read task failed: {e}")))
            })
    }

    /// `.` and `..` entries before the file system's own (not in `.snapshot` directories,
    /// whose cookies are snapshot ids).
    fn dot_entries(&self, r: &super::Resolved<'_>, cookie: u64) -> Vec<(u64, &'static [u8], Attr)> {
        let mut out = Vec::new();
        if r.handle.view == View::SnapDir {
            return out;
        }
        if cookie == 0 {
            out.push((1, &b"."[..], r.attr.clone()));
        }
        if cookie <= 1 {
            let parent = if self.is_export_root(r.export, &r.handle) {
                Ok(r.attr.clone())
            } else {
                self.fs.lookup(&r.handle, b"..")
            };
            if let Ok(p) = parent {
                out.push((2, &b".."[..], p));
            }
        }
        out
    }

    /// Checks a READDIR(PLUS) request; returns the resolved directory and our verifier.
    fn readdir_start(
        &self,
        c: &Caller,
        fh: &twinfiler_proto::nfs3::NfsFh3,
        cookie: u64,
        verf: &CookieVerf3,
    ) -> Result<(super::Resolved<'_>, CookieVerf3), (NfsStat3, Option<Handle>)> {
        let r = self.resolve(fh, c).map_err(|s| (s, None))?;
        let h = Some(r.handle);
        if r.attr.kind != FileType::Directory {
            return Err((NfsStat3::Notdir, h));
        }
        if !perm::may(&r.attr, &r.ident, R) {
            return Err((NfsStat3::Acces, h));
        }
        let ours = cookie_verf(&r.attr);
        if cookie != 0 && *verf != [0; 8] && *verf != ours {
            return Err((NfsStat3::BadCookie, h));
        }
        Ok((r, ours))
    }

    /// Walks the directory from `cookie`, calling `push` per entry until it refuses one;
    /// returns whether the end was reached.
    fn walk_dir(
        &self,
        r: &super::Resolved<'_>,
        cookie: u64,
        push: &mut EntrySink<'_>,
    ) -> Result<bool, (NfsStat3, Option<Handle>)> {
        let h = Some(r.handle);
        for (ck, name, a) in self.dot_entries(r, cookie) {
            if !push(ck, name, &a.handle, Some(&a)) {
                return Ok(false);
            }
        }
        let mut cookie = if r.handle.view == View::SnapDir {
            cookie
        } else {
            cookie.max(2)
        };
        loop {
            let (entries, eof) = self
                .fs
                .readdir(&r.handle, cookie, READDIR_BATCH_ENTRIES)
                .map_err(|e| (status_of(&e), h))?;
            for e in &entries {
                if !push(e.cookie, &e.name, &e.handle, None) {
                    return Ok(false);
                }
                cookie = e.cookie;
            }
            if eof || entries.is_empty() {
                return Ok(true);
            }
        }
    }

    fn readdir(&self, c: &Caller, a: ReaddirArgs) -> Result<Done, (NfsStat3, Option<Handle>)> {
        let (r, verf) = self.readdir_start(c, &a.dir, a.cookie, &a.cookieverf)?;
        let count = a.count.min(reply_cap(c));
        let out = ReplyHeader::success(c.xid).to_vec_with_capacity(count as usize);
        let mut enc = ReaddirEncoder::new(out, count, &Some(self.fattr(&r.attr)), &verf);
        let mut refused = false;
        let end = self.walk_dir(&r, a.cookie, &mut |ck, name, h, _| {
            let Some(n) = Filename3::new(name) else {
                return true;
            };
            let ok = enc.push(h.ino, &n, ck);
            refused |= !ok;
            ok
        })?;
        listing_done(refused, enc.entries(), r.handle, || enc.finish(end))
    }

    fn readdirplus(
        &self,
        c: &Caller,
        a: ReaddirplusArgs,
    ) -> Result<Done, (NfsStat3, Option<Handle>)> {
        let (r, verf) = self.readdir_start(c, &a.dir, a.cookie, &a.cookieverf)?;
        let maxcount = a.maxcount.min(reply_cap(c));
        let out = ReplyHeader::success(c.xid).to_vec_with_capacity(maxcount as usize);
        let mut enc =
            ReaddirplusEncoder::new(out, a.dircount, maxcount, &Some(self.fattr(&r.attr)), &verf)
                .without_dircount_limit();
        let mut refused = false;
        let export_id = r.export.id;
        let end = self.walk_dir(&r, a.cookie, &mut |ck, name, h, known| {
            let Some(n) = Filename3::new(name) else {
                return true;
            };
            let attr = match known {
                Some(a) => Some(a.clone()),
                None => self.fs.getattr(h).ok(),
            };
            let entry = EntryPlus3 {
                fileid: attr.as_ref().map_or(h.ino, |a| a.fileid),
                name: n,
                cookie: ck,
                name_attributes: attr.as_ref().map(|a| self.fattr(a)),
                name_handle: Some(self.fh(export_id, h)),
            };
            let ok = enc.push(&entry);
            refused |= !ok;
            ok
        })?;
        listing_done(refused, enc.entries(), r.handle, || enc.finish(end))
    }

    fn fsstat(&self, c: &Caller, a: FsRootArgs) -> Result<Done, (NfsStat3, Option<Handle>)> {
        let r = self.resolve(&a.object, c).map_err(|s| (s, None))?;
        let s = self.fs.statfs();
        Ok(done(
            c.xid,
            NfsStat3::Ok,
            &FsstatResOk {
                obj_attributes: Some(self.fattr(&r.attr)),
                tbytes: s.total_bytes,
                fbytes: s.free_bytes,
                abytes: s.free_bytes,
                tfiles: s.files_used.saturating_add(s.files_free),
                ffiles: s.files_free,
                afiles: s.files_free,
                invarsec: 0,
            },
        ))
    }

    fn fsinfo(&self, c: &Caller, a: FsRootArgs) -> Result<Done, (NfsStat3, Option<Handle>)> {
        let r = self.resolve(&a.object, c).map_err(|s| (s, None))?;
        let io = IO_BYTES_MAX as u32;
        Ok(done(
            c.xid,
            NfsStat3::Ok,
            &FsinfoResOk {
                obj_attributes: Some(self.fattr(&r.attr)),
                rtmax: io,
                rtpref: io,
                rtmult: IO_MULT_BYTES,
                wtmax: io,
                wtpref: io,
                wtmult: IO_MULT_BYTES,
                dtpref: DTPREF_BYTES,
                maxfilesize: FILE_SIZE_MAX,
                time_delta: NfsTime3 {
                    seconds: 0,
                    nseconds: 1,
                },
                properties: fsf::LINK | fsf::SYMLINK | fsf::HOMOGENEOUS | fsf::CANSETTIME,
            },
        ))
    }

    fn pathconf(&self, c: &Caller, a: FsRootArgs) -> Result<Done, (NfsStat3, Option<Handle>)> {
        let r = self.resolve(&a.object, c).map_err(|s| (s, None))?;
        Ok(done(
            c.xid,
            NfsStat3::Ok,
            &PathconfResOk {
                obj_attributes: Some(self.fattr(&r.attr)),
                linkmax: LINK_MAX,
                name_max: NAME_BYTES_MAX as u32,
                no_trunc: true,
                chown_restricted: true,
                case_insensitive: false,
                case_preserving: true,
            },
        ))
    }

    /// COMMIT: every WRITE was already FILE_SYNC (in mirrored NVRAM), so nothing to do but
    /// answer with the same verifier.
    fn commit(&self, c: &Caller, a: CommitArgs) -> Result<Done, (NfsStat3, Option<Handle>)> {
        let r = self.resolve(&a.file, c).map_err(|s| (s, None))?;
        if r.attr.kind != FileType::Regular {
            let s = if r.attr.kind == FileType::Directory {
                NfsStat3::Isdir
            } else {
                NfsStat3::Inval
            };
            return Err((s, Some(r.handle)));
        }
        Ok(done(
            c.xid,
            NfsStat3::Ok,
            &CommitResOk {
                file_wcc: wcc_after(Some(self.fattr(&r.attr))),
                verf: self.write_verf,
            },
        ))
    }
}

/// Ends a READDIR(PLUS): a reply too small for even one entry is NFS3ERR_TOOSMALL (RFC 1813),
/// else the encoded page.
fn listing_done(
    refused: bool,
    entries: usize,
    dir: Handle,
    finish: impl FnOnce() -> Vec<u8>,
) -> Result<Done, (NfsStat3, Option<Handle>)> {
    if refused && entries == 0 {
        return Err((NfsStat3::Toosmall, Some(dir)));
    }
    Ok(Done {
        status: NfsStat3::Ok,
        reply: Reply::from_vec(finish()),
    })
}
