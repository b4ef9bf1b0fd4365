//! Tests of the service: a real file system (wafl on a `MemStore`), a real NVRAM log on a
//! file in a temp dir, calls encoded with `twinfiler_proto` and handed to `Program::call`.

mod bench;
mod fuzz;
mod libnfs;
mod procs;
mod replay;
mod rules;
mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use twinfiler_proto::fh::FhKey;
use twinfiler_proto::mount::{MountCall, MountRes3, MOUNT_PROGRAM};
use twinfiler_proto::nfs3::*;
use twinfiler_proto::rpc::{
    decode_call, decode_reply, AcceptStat, AuthSys, CallHeader, Credential, OpaqueAuth,
    ReplyHeader, ReplyStatus,
};
use twinfiler_proto::xdr::{Decoder, Xdr};
use twinfiler_rpc::{Call, Outcome, Program, Transport};
use wafl::{Fs, FsConfig, MemStore, StripeStore};

use crate::{ExportConfig, Exports, NfsService, ServiceConfig};

pub const UUID: [u8; 16] = [0x5a; 16];
pub const KEY: FhKey = FhKey([0x33; 32]);

/// Who calls: address (the rules match on it) and AUTH_SYS ids (`None`: AUTH_NONE).
#[derive(Clone, Debug)]
pub struct Who {
    pub peer: SocketAddr,
    pub cred: Option<(u32, u32, Vec<u32>)>,
}

pub fn who(addr: &str, uid: u32, gid: u32) -> Who {
    Who {
        peer: addr.parse().unwrap(),
        cred: Some((uid, gid, vec![gid])),
    }
}
/// Root from the `rw,no_root_squash` client.
pub fn root() -> Who {
    who("127.0.0.1:700", 0, 0)
}
/// A user from the same client.
pub fn user(uid: u32) -> Who {
    who("127.0.0.1:700", uid, uid)
}

pub fn export_configs() -> Vec<ExportConfig> {
    let rules = [
        "127.0.0.1(rw,no_root_squash,insecure)",
        "127.0.0.2(ro,no_root_squash,insecure)",
        "127.0.0.3(rw,insecure)",
        "127.0.0.4(rw,all_squash,anonuid=1000,anongid=1000,insecure)",
        "127.0.0.5(rw,no_root_squash)",
    ];
    vec![
        ExportConfig {
            path: "/".into(),
            id: Some(1),
            rules: rules.iter().map(|s| s.to_string()).collect(),
        },
        ExportConfig {
            path: "/sub".into(),
            id: None,
            rules: vec!["127.0.0.1(rw,no_root_squash,insecure)".into()],
        },
    ]
}

/// One service over a real file system and log, restartable from the same store and log.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub store: Arc<dyn StripeStore>,
    pub fs: Arc<Fs>,
    pub log: Arc<nvlog::Nvlog>,
    pub svc: Arc<NfsService>,
    pub nfs: Arc<dyn Program>,
    pub mnt: Arc<dyn Program>,
    xid: AtomicU32,
}

/// Bytes per NVRAM log half in tests (the bench uses more).
const TEST_LOG_HALF_BYTES: u64 = 8 << 20;

fn log_config(dir: &std::path::Path, half_bytes: u64) -> nvlog::Config {
    nvlog::Config {
        region_path: dir.join("nvram"),
        half_bytes,
        mirror: None,
        backpressure_wait_ms_max: 5_000,
    }
}

impl Env {
    pub fn new() -> Env {
        Self::build(
            tempfile::tempdir().unwrap(),
            2048,
            TEST_LOG_HALF_BYTES,
            5_000,
        )
    }

    /// A fresh file system of `stripes` 16 KiB stripes and a log with halves of
    /// `half_bytes`, in `dir`.
    pub fn build(
        dir: tempfile::TempDir,
        stripes: u64,
        half_bytes: u64,
        log_full_wait_ms: u64,
    ) -> Env {
        let store: Arc<dyn StripeStore> = Arc::new(MemStore::new(4, stripes));
        let fs = Arc::new(Fs::mkfs(store.clone(), 1, FsConfig::default()).unwrap());
        Self::start(dir, store, fs, 0x1000, half_bytes, log_full_wait_ms).0
    }

    fn start(
        dir: tempfile::TempDir,
        store: Arc<dyn StripeStore>,
        fs: Arc<Fs>,
        xid: u32,
        half_bytes: u64,
        log_full_wait_ms: u64,
    ) -> (Env, crate::ReplayReport) {
        let log = Arc::new(nvlog::Nvlog::open(log_config(dir.path(), half_bytes)).unwrap());
        let exports = Exports::from_config(&export_configs()).unwrap();
        let mut cfg = ServiceConfig::new(UUID, KEY, exports);
        cfg.log_full_wait_ms_max = log_full_wait_ms;
        let svc = NfsService::new(fs.clone(), log.clone(), cfg);
        let records = log.replay_own(1).unwrap().records;
        let report = svc.replay(records).unwrap();
        let env = Env {
            dir,
            store,
            fs,
            nfs: svc.nfs_program(),
            mnt: svc.mount_program(),
            log,
            svc,
            xid: AtomicU32::new(xid),
        };
        (env, report)
    }

    /// Drops the service, the log and the file system (no CP: everything since the last CP
    /// exists only in the log), then mounts, reopens and replays.
    pub fn restart(self) -> (Env, crate::ReplayReport) {
        let Env {
            dir,
            store,
            xid,
            fs,
            log,
            svc,
            nfs,
            mnt,
        } = self;
        drop((nfs, mnt, svc));
        assert_eq!(
            Arc::strong_count(&log),
            1,
            "the old log must close before reopening"
        );
        drop((log, fs));
        let fs = Arc::new(Fs::mount(store.clone(), FsConfig::default()).unwrap());
        Self::start(
            dir,
            store,
            fs,
            xid.load(Ordering::SeqCst) + 1000,
            TEST_LOG_HALF_BYTES,
            5_000,
        )
    }

    pub fn next_xid(&self) -> u32 {
        self.xid.fetch_add(1, Ordering::SeqCst)
    }

    /// Builds a call record.
    pub fn call_msg(xid: u32, prog: u32, vers: u32, proc_: u32, w: &Who, args: &[u8]) -> Call {
        let cred = match &w.cred {
            Some((uid, gid, gids)) => Credential::Sys(AuthSys {
                stamp: 1,
                machinename: b"client".to_vec(),
                uid: *uid,
                gid: *gid,
                gids: gids.clone(),
            }),
            None => Credential::None,
        };
        Self::call_with_cred(xid, prog, vers, proc_, w.peer, cred, args)
    }

    pub fn call_with_cred(
        xid: u32,
        prog: u32,
        vers: u32,
        proc_: u32,
        peer: SocketAddr,
        cred: Credential,
        args: &[u8],
    ) -> Call {
        let header = CallHeader {
            xid,
            prog,
            vers,
            proc_,
            cred,
            verf: OpaqueAuth::none(),
        };
        let mut rec = Vec::new();
        header.encode(&mut rec);
        rec.extend_from_slice(args);
        let (header, args_offset) = decode_call(&rec).unwrap();
        Call {
            header,
            record: Bytes::from(rec),
            args_offset,
            peer,
            local: "127.0.0.1:2049".parse().unwrap(),
            transport: Transport::Tcp,
        }
    }

    /// Sends a call to a program; returns the reply bytes (`None`: dropped).
    pub async fn send(prog: &Arc<dyn Program>, call: Call) -> Option<Vec<u8>> {
        match prog.clone().call(call).await {
            Outcome::Reply(r) => Some(r.to_vec()),
            Outcome::Drop => None,
        }
    }

    /// An NFS call with a chosen xid; returns the raw reply.
    pub async fn nfs_raw(&self, xid: u32, w: &Who, p: Nfs3Proc, args: &[u8]) -> Option<Vec<u8>> {
        let call = Self::call_msg(xid, NFS_PROGRAM, NFS_V3, p as u32, w, args);
        Self::send(&self.nfs, call).await
    }

    /// An NFS call; decodes the accepted result.
    pub async fn nfs<A: Xdr, R: Xdr>(&self, w: &Who, p: Nfs3Proc, args: &A) -> R {
        let xid = self.next_xid();
        let reply = self
            .nfs_raw(xid, w, p, &twinfiler_proto::xdr::to_vec(args))
            .await
            .unwrap();
        decode_result(&reply, xid)
    }

    pub async fn mount_call(&self, w: &Who, c: &MountCall) -> Vec<u8> {
        let mut args = Vec::new();
        c.encode_args(&mut args);
        let xid = self.next_xid();
        let call = Self::call_msg(xid, MOUNT_PROGRAM, 3, c.proc_() as u32, w, &args);
        Self::send(&self.mnt, call).await.unwrap()
    }

    /// MNT; the root handle of the export.
    pub async fn mount(
        &self,
        w: &Who,
        path: &str,
    ) -> Result<NfsFh3, twinfiler_proto::mount::MountStat3> {
        let dp = twinfiler_proto::mount::DirPath::new(path.as_bytes()).unwrap();
        let reply = self.mount_call(w, &MountCall::Mnt(dp)).await;
        match decode_result::<MountRes3>(&reply, 0) {
            MountRes3::Ok {
                fhandle,
                auth_flavors,
            } => {
                assert_eq!(auth_flavors, vec![twinfiler_proto::rpc::flavor::AUTH_SYS]);
                Ok(fhandle)
            }
            MountRes3::Err(s) => Err(s),
        }
    }

    pub async fn root_fh(&self) -> NfsFh3 {
        self.mount(&root(), "/").await.unwrap()
    }

    // ---- typed helpers ----

    pub async fn getattr(&self, w: &Who, fh: &NfsFh3) -> GetattrRes {
        self.nfs(w, Nfs3Proc::Getattr, &GetattrArgs { object: *fh })
            .await
    }

    pub async fn lookup(&self, w: &Who, dir: &NfsFh3, name: &str) -> LookupRes {
        self.nfs(
            w,
            Nfs3Proc::Lookup,
            &LookupArgs {
                what: dirop(dir, name),
            },
        )
        .await
    }

    pub async fn create(&self, w: &Who, dir: &NfsFh3, name: &str, how: CreateHow3) -> DirOpRes {
        self.nfs(
            w,
            Nfs3Proc::Create,
            &CreateArgs {
                where_: dirop(dir, name),
                how,
            },
        )
        .await
    }

    /// CREATE GUARDED with a mode; the new handle.
    pub async fn create_file(&self, w: &Who, dir: &NfsFh3, name: &str, mode: u32) -> NfsFh3 {
        let s = Sattr3 {
            mode: Some(mode),
            ..Default::default()
        };
        match self.create(w, dir, name, CreateHow3::Guarded(s)).await {
            NfsRes::Ok(ok) => ok.obj.unwrap(),
            NfsRes::Err(e, _) => panic!("create {name}: {e:?}"),
        }
    }

    pub async fn mkdir(&self, w: &Who, dir: &NfsFh3, name: &str, mode: u32) -> DirOpRes {
        let attributes = Sattr3 {
            mode: Some(mode),
            ..Default::default()
        };
        self.nfs(
            w,
            Nfs3Proc::Mkdir,
            &MkdirArgs {
                where_: dirop(dir, name),
                attributes,
            },
        )
        .await
    }

    pub async fn write_args(
        &self,
        w: &Who,
        xid: u32,
        fh: &NfsFh3,
        offset: u64,
        data: &[u8],
    ) -> Vec<u8> {
        let args = WriteArgs {
            file: *fh,
            offset,
            count: data.len() as u32,
            stable: StableHow::Unstable,
            data: 0..0,
        };
        let mut out = Vec::new();
        args.encode_with_data(data, &mut out);
        self.nfs_raw(xid, w, Nfs3Proc::Write, &out).await.unwrap()
    }

    pub async fn write(&self, w: &Who, fh: &NfsFh3, offset: u64, data: &[u8]) -> WriteRes {
        let xid = self.next_xid();
        let reply = self.write_args(w, xid, fh, offset, data).await;
        decode_result(&reply, xid)
    }

    pub async fn read(&self, w: &Who, fh: &NfsFh3, offset: u64, count: u32) -> ReadRes {
        self.nfs(
            w,
            Nfs3Proc::Read,
            &ReadArgs {
                file: *fh,
                offset,
                count,
            },
        )
        .await
    }

    pub async fn remove(&self, w: &Who, dir: &NfsFh3, name: &str) -> RemoveRes {
        self.nfs(
            w,
            Nfs3Proc::Remove,
            &RemoveArgs {
                object: dirop(dir, name),
            },
        )
        .await
    }

    pub async fn setattr(
        &self,
        w: &Who,
        fh: &NfsFh3,
        s: Sattr3,
        guard: Option<NfsTime3>,
    ) -> SetattrRes {
        let args = SetattrArgs {
            object: *fh,
            new_attributes: s,
            guard,
        };
        self.nfs(w, Nfs3Proc::Setattr, &args).await
    }
}

pub fn dirop(dir: &NfsFh3, name: &str) -> DirOpArgs3 {
    DirOpArgs3 {
        dir: *dir,
        name: Filename3::new(name.as_bytes()).unwrap(),
    }
}

/// Decodes an accepted SUCCESS reply's results (checks the xid unless 0).
pub fn decode_result<R: Xdr>(reply: &[u8], xid: u32) -> R {
    let (h, off) = decode_reply(reply).unwrap();
    if xid != 0 {
        assert_eq!(h.xid, xid);
    }
    assert_eq!(
        h.status,
        ReplyStatus::Accepted {
            verf: OpaqueAuth::none(),
            stat: AcceptStat::Success
        },
        "reply header"
    );
    let mut d = Decoder::new_at(reply, off);
    let r = R::decode(&mut d).unwrap();
    d.finish().unwrap();
    r
}

/// The reply header of raw reply bytes.
pub fn header_of(reply: &[u8]) -> ReplyHeader {
    decode_reply(reply).unwrap().0
}

/// The status of an `NfsRes`.
pub fn stat<T, F>(r: &NfsRes<T, F>) -> NfsStat3 {
    match r {
        NfsRes::Ok(_) => NfsStat3::Ok,
        NfsRes::Err(s, _) => *s,
    }
}

/// The ok arm of an `NfsRes`, or a panic naming the status.
pub fn ok<T, F: std::fmt::Debug>(r: NfsRes<T, F>) -> T {
    match r {
        NfsRes::Ok(t) => t,
        NfsRes::Err(s, f) => panic!("expected OK, got {s:?} {f:?}"),
    }
}
