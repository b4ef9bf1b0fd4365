//! The MOUNT v3 program (RFC 1813 appendix I): NULL, MNT, DUMP, UMNT, UMNTALL, EXPORT.
//!
//! MNT of an export path, or of a directory below one (the deepest export above it
//! applies), admits a client by the export's rules (address, and a privileged source port unless
//! the rule says `insecure`); refused → MNT3ERR_ACCES. The reply carries the export root's
//! handle and `[AUTH_SYS]`. The mount list (DUMP) is advisory, as on every NFS server: it
//! lives in memory, bounded, oldest entries forgotten first.

use std::collections::VecDeque;
use std::sync::Arc;

use twinfiler_proto::mount::{
    DirPath, ExportNode, Exports as MountExports, MountBody, MountCall, MountList, MountName,
    MountRes3, MountStat3, MOUNT_V3,
};
use twinfiler_proto::nfs3::{Nfs3Proc, NfsStat3};
use twinfiler_proto::rpc::{flavor, AcceptStat, ReplyHeader};
use twinfiler_proto::xdr::Xdr;
use twinfiler_rpc::{BoxFuture, Call, Outcome, Program, Reply};
use wafl::{Attr, FileType, FsError, FsOp, Handle, NewObj};

use crate::engine::Prepared;
use crate::exports::Export;
use crate::nfs::{caller_of, rpc_only};
use crate::record::RecordMeta;
use crate::stats::bump;
use crate::{NfsError, NfsService};

/// Mode of export directories the service creates.
const EXPORT_DIR_MODE: u32 = 0o755;

/// The MOUNT program of a service.
pub struct MountProgram(pub Arc<NfsService>);

impl Program for MountProgram {
    fn call(self: Arc<Self>, call: Call) -> BoxFuture<Outcome> {
        Box::pin(async move { Outcome::Reply(self.0.mount_call(call)) })
    }
}

/// The advisory list of (client host, path) mounts.
#[derive(Debug)]
pub struct MountTable {
    entries: VecDeque<(String, String)>,
    max: usize,
}

impl MountTable {
    /// An empty table of at most `max` entries.
    pub fn new(max: usize) -> MountTable {
        MountTable {
            entries: VecDeque::new(),
            max: max.max(1),
        }
    }

    fn add(&mut self, host: String, path: String) {
        if self.entries.iter().any(|(h, p)| *h == host && *p == path) {
            return;
        }
        if self.entries.len() >= self.max {
            self.entries.pop_front();
        }
        self.entries.push_back((host, path));
    }
}

fn success<T: Xdr>(xid: u32, body: &T) -> Reply {
    let mut out = ReplyHeader::success(xid).to_vec_with_capacity(128);
    body.encode(&mut out);
    Reply::from_vec(out)
}

impl NfsService {
    /// The root directory of an export (looked up component by component from the file
    /// system root).
    pub(crate) fn export_root(&self, export: &Export) -> Result<Attr, FsError> {
        let root = self.fs.getattr(&self.fs.root())?;
        self.walk_dirs(root, export.components())
    }

    /// Follows `components` from the directory `start`; every step, and the end, must be a
    /// directory.
    fn walk_dirs<'c>(
        &self,
        start: Attr,
        components: impl IntoIterator<Item = &'c str>,
    ) -> Result<Attr, FsError> {
        let mut a = start;
        for comp in components {
            if a.kind != FileType::Directory {
                return Err(FsError::NotDir);
            }
            a = self.fs.lookup(&a.handle, comp.as_bytes())?;
        }
        if a.kind != FileType::Directory {
            return Err(FsError::NotDir);
        }
        Ok(a)
    }

    /// Creates the missing directories of every export path (owner root, mode 0755),
    /// through the log like any request; call after [`NfsService::replay`]. Returns the
    /// directories created.
    pub async fn create_export_dirs(&self) -> Result<Vec<String>, NfsError> {
        let mut created = Vec::new();
        for export in self.cfg.exports.iter() {
            let mut dir = self.fs.getattr(&self.fs.root()).map_err(NfsError::Fs)?;
            let mut path = String::new();
            for comp in export.components() {
                path.push('/');
                path.push_str(comp);
                dir = match self.fs.lookup(&dir.handle, comp.as_bytes()) {
                    Ok(a) => a,
                    Err(FsError::NotFound) => {
                        self.mkdir_for_export(export.id, &dir, comp).await?;
                        created.push(path.clone());
                        self.fs
                            .lookup(&dir.handle, comp.as_bytes())
                            .map_err(NfsError::Fs)?
                    }
                    Err(e) => return Err(NfsError::Fs(e)),
                };
                if dir.kind != FileType::Directory {
                    return Err(NfsError::Fs(FsError::NotDir));
                }
            }
        }
        Ok(created)
    }

    async fn mkdir_for_export(
        &self,
        export_id: u32,
        parent: &Attr,
        name: &str,
    ) -> Result<(), NfsError> {
        let (ino, gen) = self.fs.reserve_inode();
        let dir = parent.handle.writable().map_err(NfsError::Fs)?;
        let meta = RecordMeta {
            drc_key: None,
            proc_: Nfs3Proc::Mkdir as u32,
            export_id,
            guard: None,
            truncate_existing: false,
        };
        let op = FsOp::Mkdir {
            dir,
            name: name.as_bytes().to_vec(),
            new: NewObj {
                ino,
                gen,
                mode: EXPORT_DIR_MODE,
                uid: 0,
                gid: 0,
            },
            time_ns: 0,
        };
        let exec = crate::nfs::Exec { svc: self };
        let done = self
            .engine
            .run(Prepared::Op { meta, op }, &exec)
            .await
            .map_err(|e| NfsError::Unavailable(e.to_string()))?;
        match done.status {
            NfsStat3::Ok | NfsStat3::Exist => Ok(()),
            s => Err(NfsError::Unavailable(format!("mkdir {name}: {s:?}"))),
        }
    }

    /// Whether `h` is the root directory of `export`.
    pub(crate) fn is_export_root(&self, export: &Export, h: &Handle) -> bool {
        if export.path == "/" {
            return *h == self.fs.root();
        }
        self.export_root(export).is_ok_and(|a| a.handle == *h)
    }

    fn mount_call(&self, call: Call) -> Reply {
        let xid = call.header.xid;
        bump(&self.stats.mount_calls, 1);
        if call.header.vers != MOUNT_V3 {
            return rpc_only(ReplyHeader::accepted(
                xid,
                AcceptStat::ProgMismatch {
                    low: MOUNT_V3,
                    high: MOUNT_V3,
                },
            ));
        }
        if let Err(r) = caller_of(&call) {
            return r;
        }
        let args = match MountCall::decode(call.header.proc_, &call.record, call.args_offset) {
            Ok(a) => a,
            Err(e) => return rpc_only(e.reply(xid)),
        };
        let host = call.peer.ip().to_string();
        match args {
            MountCall::Null => success(xid, &()),
            MountCall::Mnt(path) => success(xid, &self.mnt(&call, &host, &path)),
            MountCall::Dump => {
                let list: Vec<MountBody> = self
                    .mounts_lock()
                    .entries
                    .iter()
                    .filter_map(|(h, p)| {
                        Some(MountBody {
                            hostname: MountName::new(h.as_bytes())?,
                            directory: DirPath::new(p.as_bytes())?,
                        })
                    })
                    .collect();
                success(xid, &MountList(list))
            }
            MountCall::Umnt(path) => {
                let path = String::from_utf8_lossy(path.as_bytes()).into_owned();
                self.mounts_lock()
                    .entries
                    .retain(|(h, p)| !(*h == host && *p == path));
                success(xid, &())
            }
            MountCall::Umntall => {
                self.mounts_lock().entries.retain(|(h, _)| *h != host);
                success(xid, &())
            }
            MountCall::Export => {
                let nodes = self.cfg.exports.iter().filter_map(|e| {
                    Some(ExportNode {
                        dir: DirPath::new(e.path.as_bytes())?,
                        groups: e
                            .rules
                            .iter()
                            .filter_map(|r| MountName::new(r.client.to_string()))
                            .collect(),
                    })
                });
                success(xid, &MountExports(nodes.collect()))
            }
        }
    }

    fn mounts_lock(&self) -> std::sync::MutexGuard<'_, MountTable> {
        self.mounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mnt(&self, call: &Call, host: &str, path: &DirPath) -> MountRes3 {
        let Ok(path) = std::str::from_utf8(path.as_bytes()) else {
            return MountRes3::Err(MountStat3::Noent);
        };
        let Some((export, below)) = self.cfg.exports.for_mount(path) else {
            return MountRes3::Err(MountStat3::Noent);
        };
        if export.rule_for(call.peer).is_none() {
            tracing::info!(peer = %call.peer, path, "mount refused by the export rules");
            return MountRes3::Err(MountStat3::Acces);
        }
        let root = self
            .export_root(export)
            .and_then(|a| self.walk_dirs(a, below.iter().map(String::as_str)));
        let root = match root {
            Ok(a) => a,
            Err(FsError::NotFound) => return MountRes3::Err(MountStat3::Noent),
            Err(FsError::NotDir) => return MountRes3::Err(MountStat3::Notdir),
            Err(e) => {
                tracing::warn!(error = %e, path, "mount: export root unreadable");
                return MountRes3::Err(MountStat3::Io);
            }
        };
        let mounted = std::iter::once(export.path.trim_end_matches('/'))
            .chain(below.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join("/");
        let mounted = if mounted.is_empty() {
            "/".to_string()
        } else {
            mounted
        };
        self.mounts_lock().add(host.to_string(), mounted);
        MountRes3::Ok {
            fhandle: self.fh(export.id, &root.handle),
            auth_flavors: vec![flavor::AUTH_SYS],
        }
    }
}
