//! The procedures that change the file system: SETATTR, WRITE, CREATE, MKDIR, SYMLINK,
//! MKNOD, REMOVE, RMDIR, RENAME, LINK.
//!
//! Each is split in two. `NfsService::modify_call` checks the handles, the export rule
//! (`ro` → NFS3ERR_ROFS) and the caller's permissions, then builds the logged op; errors
//! found there are answered at once and not logged. `Exec` runs under the sequencing lock
//! after the op is in the log, live and during replay: it captures the pre-op attributes,
//! checks the SETATTR guard, applies, and formats the reply with wcc data. It depends only
//! on the file-system state and the record, so replay regenerates the same reply.

use bytes::Bytes;
use twinfiler_proto::drc::DrcKey;
use twinfiler_proto::nfs3::{
    CreateArgs, CreateHow3, DirOpArgs3, DirOpResOk, LinkArgs, LinkResBody, MkdirArgs, MknodArgs,
    MknodData3, Nfs3Call, Nfs3Proc, NfsStat3, RemoveArgs, RenameArgs, RenameResBody, Sattr3,
    SetTime, SetattrArgs, SetattrResBody, StableHow, SymlinkArgs, WccData, WccFail, WriteArgs,
    WriteResOk,
};
use wafl::{
    Attr, CreateAttr, CreateHow, Fid, FileType, Fs, FsError, FsOp, Handle, NewObj, SetAttr,
    Special, FILE_SIZE_MAX,
};

use super::attr::{status_of, time_ns, wcc_attr};
use super::perm::{self, W, X};
use super::{done, fail, Caller, Done, Resolved};
use crate::engine::{EngineError, Executed, Executor, Prepared, SERVER_TIME};
use crate::record::RecordMeta;
use crate::stats::bump;
use crate::NfsService;

/// A refusal before logging: status and the object whose attributes go in the reply.
type Refusal = (NfsStat3, Option<Handle>);

/// Default modes of new objects when the client sends none.
const FILE_MODE_DEFAULT: u32 = 0o644;
const DIR_MODE_DEFAULT: u32 = 0o755;
const SYMLINK_MODE: u32 = 0o777;
const SETGID: u32 = 0o2000;

impl NfsService {
    /// Serves a modifying call; `None` means send no reply (the op may be in the log but
    /// the log closed or the file system went offline; the client retries).
    pub(crate) async fn modify_call(
        &self,
        c: &Caller,
        key: DrcKey,
        args: Nfs3Call,
        record: &Bytes,
    ) -> Option<Done> {
        let p = args.proc_();
        let prepared = match self.prepare(c, key, args, record) {
            Ok(p) => p,
            Err((stat, h)) => {
                let after = h.and_then(|h| self.post_attr(&h));
                return Some(fail(c.xid, p, stat, after));
            }
        };
        let exec = Exec { svc: self };
        match self.engine.run(prepared, &exec).await {
            Ok(e) => Some(Done {
                status: e.status,
                reply: twinfiler_rpc::Reply::from_vec(e.reply),
            }),
            Err(EngineError::LogFull(ms)) => {
                tracing::warn!(ms, "nfs: NVRAM log full, answering JUKEBOX");
                Some(fail(c.xid, p, NfsStat3::Jukebox, None))
            }
            Err(EngineError::Unavailable(why)) => {
                tracing::warn!(%why, "nfs: request not answered");
                None
            }
        }
    }

    /// Resolves a handle that is to be changed: the rule must be `rw` and the view live.
    fn writable(
        &self,
        fh: &twinfiler_proto::nfs3::NfsFh3,
        c: &Caller,
    ) -> Result<Resolved<'_>, Refusal> {
        let r = self.resolve(fh, c).map_err(|s| (s, None))?;
        if r.rule.read_only || r.handle.writable().is_err() {
            return Err((NfsStat3::Rofs, Some(r.handle)));
        }
        Ok(r)
    }

    /// Resolves a directory to change entries in: writable, a directory, w+x for the caller,
    /// and a name within NAME_MAX.
    fn dir_for_change(&self, d: &DirOpArgs3, c: &Caller) -> Result<Resolved<'_>, Refusal> {
        let r = self.writable(&d.dir, c)?;
        if r.attr.kind != FileType::Directory {
            return Err((NfsStat3::Notdir, Some(r.handle)));
        }
        if d.name.too_long() {
            return Err((NfsStat3::Nametoolong, Some(r.handle)));
        }
        if !perm::may(&r.attr, &r.ident, W | X) {
            return Err((NfsStat3::Acces, Some(r.handle)));
        }
        Ok(r)
    }

    fn meta(&self, key: DrcKey, p: Nfs3Proc, export_id: u32) -> RecordMeta {
        RecordMeta {
            drc_key: Some(key),
            proc_: p as u32,
            export_id,
            guard: None,
            truncate_existing: false,
        }
    }

    /// Owner, group and mode of a new object in `dir` (set-group-id directories pass their
    /// group on, and to subdirectories their set-group-id bit).
    fn new_obj(
        &self,
        dir: &Resolved<'_>,
        sattr: Option<&Sattr3>,
        mode: u32,
        is_dir: bool,
    ) -> NewObj {
        let id = &dir.ident;
        let mut mode = sattr.and_then(|s| s.mode).unwrap_or(mode) & 0o7777;
        let mut gid = id.gid;
        if dir.attr.mode & SETGID != 0 {
            gid = dir.attr.gid;
            if is_dir {
                mode |= SETGID;
            }
        }
        let mut uid = id.uid;
        if let Some(s) = sattr {
            if let Some(g) = s.gid {
                if id.is_root() || id.in_group(g) {
                    gid = g;
                }
            }
            if let Some(u) = s.uid {
                if id.is_root() {
                    uid = u;
                }
            }
        }
        let (ino, gen) = self.fs.reserve_inode();
        NewObj {
            ino,
            gen,
            mode,
            uid,
            gid,
        }
    }

    /// CREATE UNCHECKED with a size resizes a file that already exists: the caller needs
    /// write permission on that file, as for SETATTR of the size.
    fn may_resize_existing(&self, dir: &Resolved<'_>, name: &[u8]) -> Result<(), Refusal> {
        match self.fs.lookup(&dir.handle, name) {
            Ok(existing)
                if existing.kind == FileType::Regular
                    && !perm::may_io(&existing, &dir.ident, W) =>
            {
                Err((NfsStat3::Acces, Some(dir.handle)))
            }
            _ => Ok(()),
        }
    }

    /// Checks the sticky-directory rule for removing or replacing `name` in `dir`.
    fn sticky_check(&self, dir: &Resolved<'_>, name: &[u8]) -> Result<(), Refusal> {
        if dir.attr.mode & 0o1000 == 0 || dir.ident.is_root() {
            return Ok(());
        }
        match self.fs.lookup(&dir.handle, name) {
            Ok(victim) if !perm::sticky_allows(&dir.attr, &victim, &dir.ident) => {
                Err((NfsStat3::Acces, Some(dir.handle)))
            }
            _ => Ok(()),
        }
    }

    fn prepare(
        &self,
        c: &Caller,
        key: DrcKey,
        args: Nfs3Call,
        record: &Bytes,
    ) -> Result<Prepared, Refusal> {
        let p = args.proc_();
        let t = 0; // set by the engine under the lock
        let fid = |r: &Resolved<'_>| {
            r.handle
                .writable()
                .map_err(|e| (status_of(&e), Some(r.handle)))
        };
        let op = match args {
            Nfs3Call::Setattr(a) => return self.prepare_setattr(c, key, a),
            Nfs3Call::Write(a) => return self.prepare_write(c, key, a, record),
            Nfs3Call::Create(CreateArgs { where_, how }) => {
                let d = self.dir_for_change(&where_, c)?;
                let (sattr, how) = match &how {
                    CreateHow3::Unchecked(s) => (Some(s), CreateHow::Unchecked),
                    CreateHow3::Guarded(s) => (Some(s), CreateHow::Guarded),
                    CreateHow3::Exclusive(v) => {
                        (None, CreateHow::Exclusive(u64::from_be_bytes(*v)))
                    }
                };
                let attr = sattr.map(create_attr).unwrap_or_default();
                if let (CreateHow::Unchecked, Some(_)) = (how, attr.size) {
                    self.may_resize_existing(&d, where_.name.as_bytes())?;
                }
                let new = self.new_obj(&d, sattr, FILE_MODE_DEFAULT, false);
                let op = FsOp::Create {
                    dir: fid(&d)?,
                    name: where_.name.into_bytes(),
                    new,
                    how,
                    attr,
                    time_ns: t,
                };
                (d.export.id, op)
            }
            Nfs3Call::Mkdir(MkdirArgs { where_, attributes }) => {
                let d = self.dir_for_change(&where_, c)?;
                let new = self.new_obj(&d, Some(&attributes), DIR_MODE_DEFAULT, true);
                let op = FsOp::Mkdir {
                    dir: fid(&d)?,
                    name: where_.name.into_bytes(),
                    new,
                    time_ns: t,
                };
                (d.export.id, op)
            }
            Nfs3Call::Symlink(SymlinkArgs {
                where_,
                symlink_attributes,
                symlink_data,
            }) => {
                let d = self.dir_for_change(&where_, c)?;
                let mut new = self.new_obj(&d, Some(&symlink_attributes), SYMLINK_MODE, false);
                new.mode = SYMLINK_MODE;
                let op = FsOp::Symlink {
                    dir: fid(&d)?,
                    name: where_.name.into_bytes(),
                    new,
                    target: symlink_data.into_bytes(),
                    time_ns: t,
                };
                (d.export.id, op)
            }
            Nfs3Call::Mknod(MknodArgs { where_, what }) => {
                let d = self.dir_for_change(&where_, c)?;
                let (sattr, special) = match &what {
                    MknodData3::Chr(s, dev) => (s, Special::Char(dev.specdata1, dev.specdata2)),
                    MknodData3::Blk(s, dev) => (s, Special::Block(dev.specdata1, dev.specdata2)),
                    MknodData3::Sock(s) => (s, Special::Socket),
                    MknodData3::Fifo(s) => (s, Special::Fifo),
                    MknodData3::Other(_) => return Err((NfsStat3::Badtype, Some(d.handle))),
                };
                if matches!(special, Special::Char(..) | Special::Block(..)) && !d.ident.is_root() {
                    return Err((NfsStat3::Perm, Some(d.handle)));
                }
                let new = self.new_obj(&d, Some(sattr), FILE_MODE_DEFAULT, false);
                let op = FsOp::Mknod {
                    dir: fid(&d)?,
                    name: where_.name.into_bytes(),
                    new,
                    special,
                    time_ns: t,
                };
                (d.export.id, op)
            }
            Nfs3Call::Remove(RemoveArgs { object }) | Nfs3Call::Rmdir(RemoveArgs { object }) => {
                let d = self.dir_for_change(&object, c)?;
                self.sticky_check(&d, object.name.as_bytes())?;
                let dir = fid(&d)?;
                let name = object.name.into_bytes();
                let op = if p == Nfs3Proc::Remove {
                    FsOp::Remove {
                        dir,
                        name,
                        time_ns: t,
                    }
                } else {
                    FsOp::Rmdir {
                        dir,
                        name,
                        time_ns: t,
                    }
                };
                (d.export.id, op)
            }
            Nfs3Call::Rename(RenameArgs { from, to }) => {
                let fd = self.dir_for_change(&from, c)?;
                let td = self.dir_for_change(&to, c)?;
                if fd.export.id != td.export.id {
                    return Err((NfsStat3::Xdev, Some(fd.handle)));
                }
                self.sticky_check(&fd, from.name.as_bytes())?;
                self.sticky_check(&td, to.name.as_bytes())?;
                let op = FsOp::Rename {
                    from_dir: fid(&fd)?,
                    from_name: from.name.into_bytes(),
                    to_dir: fid(&td)?,
                    to_name: to.name.into_bytes(),
                    time_ns: t,
                };
                (fd.export.id, op)
            }
            Nfs3Call::Link(LinkArgs { file, link }) => {
                let f = self.writable(&file, c)?;
                let d = self.dir_for_change(&link, c)?;
                if f.export.id != d.export.id {
                    return Err((NfsStat3::Xdev, Some(f.handle)));
                }
                if f.attr.kind == FileType::Directory {
                    return Err((NfsStat3::Isdir, Some(f.handle)));
                }
                let op = FsOp::Link {
                    target: fid(&f)?,
                    dir: fid(&d)?,
                    name: link.name.into_bytes(),
                    time_ns: t,
                };
                (d.export.id, op)
            }
            _ => return Err((NfsStat3::Serverfault, None)),
        };
        let (export_id, op) = op;
        Ok(Prepared::Op {
            meta: self.meta(key, p, export_id),
            op,
        })
    }

    fn prepare_setattr(
        &self,
        c: &Caller,
        key: DrcKey,
        a: SetattrArgs,
    ) -> Result<Prepared, Refusal> {
        let r = self.writable(&a.object, c)?;
        let (id, at, h) = (&r.ident, &r.attr, Some(r.handle));
        let s = &a.new_attributes;
        let owner = id.is_root() || id.uid == at.uid;
        let mut mode = s.mode.map(|m| m & 0o7777);
        if mode.is_some() && !owner {
            return Err((NfsStat3::Perm, h));
        }
        if let Some(u) = s.uid {
            if u != at.uid && !id.is_root() {
                return Err((NfsStat3::Perm, h));
            }
        }
        if let Some(g) = s.gid {
            if g != at.gid && !(id.is_root() || (id.uid == at.uid && id.in_group(g))) {
                return Err((NfsStat3::Perm, h));
            }
        }
        // A non-member setting set-group-id on a file loses it (POSIX chmod).
        if let Some(m) = mode.as_mut() {
            let g = s.gid.unwrap_or(at.gid);
            if !id.is_root() && !id.in_group(g) && at.kind != FileType::Directory {
                *m &= !SETGID;
            }
        }
        if s.size.is_some() {
            match at.kind {
                FileType::Regular => {}
                FileType::Directory => return Err((NfsStat3::Isdir, h)),
                _ => return Err((NfsStat3::Inval, h)),
            }
            if !perm::may_io(at, id, W) {
                return Err((NfsStat3::Acces, h));
            }
        }
        let time = |t: &SetTime| -> Result<Option<u64>, Refusal> {
            match t {
                SetTime::DontChange => Ok(None),
                SetTime::ServerTime => {
                    if owner || perm::may(at, id, W) {
                        Ok(Some(SERVER_TIME))
                    } else {
                        Err((NfsStat3::Acces, h))
                    }
                }
                SetTime::ClientTime(t) => {
                    if owner {
                        Ok(Some(time_ns(t)))
                    } else {
                        Err((NfsStat3::Perm, h))
                    }
                }
            }
        };
        let attr = SetAttr {
            mode,
            uid: s.uid,
            gid: s.gid,
            size: s.size,
            atime_ns: time(&s.atime)?,
            mtime_ns: time(&s.mtime)?,
        };
        let target = r.handle.writable().map_err(|e| (status_of(&e), h))?;
        let mut meta = self.meta(key, Nfs3Proc::Setattr, r.export.id);
        meta.guard = a.guard;
        Ok(Prepared::Op {
            meta,
            op: FsOp::SetAttr {
                target,
                attr,
                time_ns: 0,
            },
        })
    }

    fn prepare_write(
        &self,
        c: &Caller,
        key: DrcKey,
        a: WriteArgs,
        record: &Bytes,
    ) -> Result<Prepared, Refusal> {
        let r = self.writable(&a.file, c)?;
        let h = Some(r.handle);
        match r.attr.kind {
            FileType::Regular => {}
            FileType::Directory => return Err((NfsStat3::Isdir, h)),
            _ => return Err((NfsStat3::Inval, h)),
        }
        if !perm::may_io(&r.attr, &r.ident, W) {
            return Err((NfsStat3::Acces, h));
        }
        if record.get(a.data.clone()).is_none() {
            return Err((NfsStat3::Serverfault, h));
        }
        // RFC 1813: `count` is the number of bytes to write; never more than were sent.
        let len = a.data.len().min(a.count as usize);
        let data = record.slice(a.data.start..a.data.start + len);
        if a.offset.saturating_add(data.len() as u64) > FILE_SIZE_MAX {
            return Err((NfsStat3::Fbig, h));
        }
        let target = r.handle.writable().map_err(|e| (status_of(&e), h))?;
        bump(&self.stats.bytes_written, data.len() as u64);
        let meta = self.meta(key, Nfs3Proc::Write, r.export.id);
        Ok(Prepared::Write {
            meta,
            target,
            offset: a.offset,
            data,
        })
    }
}

/// The size and times of a CREATE's `sattr3` (owner and mode go to `NewObj`). The new
/// file's times are the op's time already, so SET_TO_SERVER_TIME needs nothing set.
fn create_attr(s: &Sattr3) -> CreateAttr {
    let client_time = |t: &SetTime| match t {
        SetTime::ClientTime(t) => Some(time_ns(t)),
        SetTime::DontChange | SetTime::ServerTime => None,
    };
    CreateAttr {
        size: s.size,
        atime_ns: client_time(&s.atime),
        mtime_ns: client_time(&s.mtime),
    }
}

/// Applies logged ops and formats their replies (see the module docs).
pub(crate) struct Exec<'s> {
    /// The service (for handles, attributes and the write verifier).
    pub svc: &'s NfsService,
}

fn pre(fs: &Fs, f: &Fid) -> Option<Attr> {
    fs.getattr(&Handle::live(f.ino, f.gen)).ok()
}

impl Exec<'_> {
    /// The reply of a creating op.
    fn created(
        &self,
        xid: u32,
        meta: &RecordMeta,
        r: &Result<Option<Attr>, FsError>,
        dir_wcc: WccData,
    ) -> Done {
        match r {
            Ok(a) => done(
                xid,
                NfsStat3::Ok,
                &DirOpResOk {
                    obj: a.as_ref().map(|a| self.svc.fh(meta.export_id, &a.handle)),
                    obj_attributes: a.as_ref().map(|a| self.svc.fattr(a)),
                    dir_wcc,
                },
            ),
            Err(e) => done(xid, status_of(e), &WccFail { wcc: dir_wcc }),
        }
    }

    fn wcc(&self, fs: &Fs, f: &Fid, before: &Option<Attr>) -> WccData {
        WccData {
            before: before.as_ref().map(wcc_attr),
            after: pre(fs, f).map(|a| self.svc.fattr(&a)),
        }
    }
}

impl Executor for Exec<'_> {
    fn execute(&self, fs: &Fs, seq: u64, meta: &RecordMeta, op: &FsOp) -> Executed {
        let xid = meta.drc_key.map_or(0, |k| k.xid);
        let apply = || fs.apply(seq, op);
        let status = |r: &Result<Option<Attr>, FsError>| match r {
            Ok(_) => NfsStat3::Ok,
            Err(e) => status_of(e),
        };
        let offline = |r: &Result<Option<Attr>, FsError>| matches!(r, Err(FsError::Offline(_)));
        let (d, off) = match op {
            FsOp::SetAttr { target, .. } => {
                let before = pre(fs, target);
                let guard_ok = match (&meta.guard, &before) {
                    (Some(g), Some(b)) => super::attr::nfstime(b.ctime_ns) == *g,
                    _ => true,
                };
                let (st, off) = if guard_ok {
                    let r = apply();
                    (status(&r), offline(&r))
                } else {
                    (NfsStat3::NotSync, false)
                };
                let body = SetattrResBody {
                    obj_wcc: self.wcc(fs, target, &before),
                };
                (done(xid, st, &body), off)
            }
            FsOp::Write { target, data, .. } => {
                let before = pre(fs, target);
                let r = apply();
                let wcc = self.wcc(fs, target, &before);
                let d = match status(&r) {
                    NfsStat3::Ok => done(
                        xid,
                        NfsStat3::Ok,
                        &WriteResOk {
                            file_wcc: wcc,
                            count: data.len() as u32,
                            committed: StableHow::FileSync,
                            verf: self.svc.write_verf,
                        },
                    ),
                    st => done(xid, st, &WccFail { wcc }),
                };
                (d, offline(&r))
            }
            FsOp::Create {
                dir, time_ns, new, ..
            } if meta.truncate_existing => {
                let before = pre(fs, dir);
                let mut r = apply();
                // Records of older nodes (new ones carry the size in the op's `attr` and
                // never set the flag): an existing file (not the one this op made) is
                // truncated, as one op: same seq, same time, replayed the same way.
                if let Ok(Some(a)) = &r {
                    if a.size > 0 && (a.fileid, a.gen) != (new.ino, new.gen) {
                        let target = Fid {
                            ino: a.fileid,
                            gen: a.gen,
                        };
                        let attr = SetAttr {
                            size: Some(0),
                            ..SetAttr::default()
                        };
                        let t = FsOp::SetAttr {
                            target,
                            attr,
                            time_ns: *time_ns,
                        };
                        r = fs.apply(seq, &t);
                    }
                }
                let dir_wcc = self.wcc(fs, dir, &before);
                (self.created(xid, meta, &r, dir_wcc), offline(&r))
            }
            FsOp::Create { dir, .. }
            | FsOp::Mkdir { dir, .. }
            | FsOp::Symlink { dir, .. }
            | FsOp::Mknod { dir, .. } => {
                let before = pre(fs, dir);
                let r = apply();
                let dir_wcc = self.wcc(fs, dir, &before);
                (self.created(xid, meta, &r, dir_wcc), offline(&r))
            }
            FsOp::Remove { dir, .. } | FsOp::Rmdir { dir, .. } => {
                let before = pre(fs, dir);
                let r = apply();
                let wcc = self.wcc(fs, dir, &before);
                (done(xid, status(&r), &WccFail { wcc }), offline(&r))
            }
            FsOp::Rename {
                from_dir, to_dir, ..
            } => {
                let (bf, bt) = (pre(fs, from_dir), pre(fs, to_dir));
                let r = apply();
                let body = RenameResBody {
                    fromdir_wcc: self.wcc(fs, from_dir, &bf),
                    todir_wcc: self.wcc(fs, to_dir, &bt),
                };
                (done(xid, status(&r), &body), offline(&r))
            }
            FsOp::Link { target, dir, .. } => {
                let before = pre(fs, dir);
                let r = apply();
                let body = LinkResBody {
                    file_attributes: pre(fs, target).map(|a| self.svc.fattr(&a)),
                    linkdir_wcc: self.wcc(fs, dir, &before),
                };
                (done(xid, status(&r), &body), offline(&r))
            }
        };
        Executed {
            status: d.status,
            reply: d.reply.head,
            offline: off,
        }
    }
}
