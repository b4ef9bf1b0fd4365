//! Conversions between the file system's view and NFSv3 types: attributes, times, handles,
//! and the one place where `FsError` becomes an `nfsstat3`.

use twinfiler_proto::fh::{FhView, FileHandle};
use twinfiler_proto::nfs3::{
    Fattr3, Ftype3, NfsFh3, NfsStat3, NfsTime3, PostOpAttr, Specdata3, WccAttr, WccData,
};
use wafl::{Attr, FileType, FsError, Handle, View};

use crate::NfsService;

const NS_PER_SEC: u64 = 1_000_000_000;

/// Maps a file-system error to the NFS status (the only such mapping).
pub fn status_of(e: &FsError) -> NfsStat3 {
    match e {
        FsError::NotFound => NfsStat3::Noent,
        FsError::Exists => NfsStat3::Exist,
        FsError::NotDir => NfsStat3::Notdir,
        FsError::IsDir => NfsStat3::Isdir,
        FsError::NotEmpty => NfsStat3::Notempty,
        FsError::Stale => NfsStat3::Stale,
        FsError::ReadOnly => NfsStat3::Rofs,
        FsError::BadName(_) | FsError::Invalid(_) => NfsStat3::Inval,
        FsError::NoSpace => NfsStat3::Nospc,
        FsError::FileTooBig => NfsStat3::Fbig,
        FsError::Io(_) | FsError::Corrupt(_) => NfsStat3::Io,
        // Memory-only reads retry where they may block; should one leak out, the client
        // is told to try again.
        FsError::WouldBlock => NfsStat3::Jukebox,
        // The op is logged; it applies after a remount. Live requests are not answered
        // (the engine drops them), so the client retries.
        FsError::Offline(_) => NfsStat3::Jukebox,
    }
}

/// ns since the epoch → `nfstime3` (seconds saturate at the 32-bit end of 2106).
pub fn nfstime(ns: u64) -> NfsTime3 {
    NfsTime3 {
        seconds: (ns / NS_PER_SEC).min(u32::MAX as u64) as u32,
        nseconds: (ns % NS_PER_SEC) as u32,
    }
}

/// `nfstime3` → ns since the epoch.
pub fn time_ns(t: &NfsTime3) -> u64 {
    t.seconds as u64 * NS_PER_SEC + (t.nseconds as u64).min(NS_PER_SEC - 1)
}

fn ftype(k: FileType) -> Ftype3 {
    match k {
        FileType::Regular => Ftype3::Reg,
        FileType::Directory => Ftype3::Dir,
        FileType::Symlink => Ftype3::Lnk,
        FileType::Fifo => Ftype3::Fifo,
        FileType::Socket => Ftype3::Sock,
        FileType::CharDev => Ftype3::Chr,
        FileType::BlockDev => Ftype3::Blk,
    }
}

/// The wire view of a handle's view.
pub fn fh_view(v: View) -> FhView {
    match v {
        View::Live => FhView::Live,
        View::SnapDir => FhView::SnapDir,
        View::Snap(id) => FhView::Snap(id),
    }
}

/// The file system view of a wire view.
pub fn fs_view(v: FhView) -> View {
    match v {
        FhView::Live => View::Live,
        FhView::SnapDir => View::SnapDir,
        FhView::Snap(id) => View::Snap(id),
    }
}

/// The wcc subset of attributes.
pub fn wcc_attr(a: &Attr) -> WccAttr {
    WccAttr {
        size: a.size,
        mtime: nfstime(a.mtime_ns),
        ctime: nfstime(a.ctime_ns),
    }
}

/// wcc data with only the after part.
pub fn wcc_after(after: PostOpAttr) -> WccData {
    WccData {
        before: None,
        after,
    }
}

impl NfsService {
    /// Attributes as NFS sees them. Snapshots get their own `fsid` (clients treat them as
    /// separate file systems, as their files share fileids with the live ones).
    pub(crate) fn fattr(&self, a: &Attr) -> Fattr3 {
        let fsid = match a.handle.view {
            View::Snap(id) => self.fsid ^ ((id as u64 + 1) << 32),
            _ => self.fsid,
        };
        Fattr3 {
            ftype: ftype(a.kind),
            mode: a.mode & 0o7777,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            used: a.used,
            rdev: Specdata3 {
                specdata1: a.rdev.0,
                specdata2: a.rdev.1,
            },
            fsid,
            fileid: a.fileid,
            atime: nfstime(a.atime_ns),
            mtime: nfstime(a.mtime_ns),
            ctime: nfstime(a.ctime_ns),
        }
    }

    /// Attributes of a handle, if it still exists.
    pub(crate) fn post_attr(&self, h: &Handle) -> PostOpAttr {
        self.fs.getattr(h).ok().map(|a| self.fattr(&a))
    }

    /// The signed NFS handle of an object seen through `export_id`.
    pub(crate) fn fh(&self, export_id: u32, h: &Handle) -> NfsFh3 {
        FileHandle {
            export_id,
            view: fh_view(h.view),
            aggregate: self.cfg.aggregate_uuid,
            fileid: h.ino,
            generation: h.gen,
        }
        .encode(&self.cfg.fh_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        for ns in [0, 1, 999_999_999, 1_700_000_000_123_456_789] {
            assert_eq!(time_ns(&nfstime(ns)), ns);
        }
    }
}
