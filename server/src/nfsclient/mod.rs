//! A small async NFSv3-over-TCP client, for benchmarks and tools: portmapper lookup, MOUNT,
//! and the NFS procedures a benchmark needs, with any number of calls in flight on one
//! connection. Built on the sans-IO encoders and decoders of `twinfiler-proto`; it talks to
//! any NFSv3 server (ours, nfs-ganesha, the Linux kernel's), so one client measures them all.
//!
//! By default a lost reply is a timeout error and a lost connection fails the calls on it;
//! [`NfsClient::connect_hard`] gives a "hard mount" instead ([`hard`]: reconnects and
//! retransmits with the same xid, for takeover tests), and [`load`] is a writer that keeps
//! files coming and verifies every acknowledged byte. No attribute cache.

pub mod hard;
pub mod load;
mod rpc;

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use twinfiler_proto::mount::{DirPath, MountProc, MountRes3, MountStat3, MOUNT_PROGRAM, MOUNT_V3};
use twinfiler_proto::nfs3::{
    self, CommitArgs, CommitRes, CreateArgs, CreateHow3, DirOpArgs3, DirOpRes, Fattr3, Filename3,
    GetattrArgs, GetattrRes, LookupArgs, LookupRes, MkdirArgs, Nfs3Proc, NfsFh3, NfsRes, NfsStat3,
    ReadArgs, ReadResOkSpan, ReaddirArgs, ReaddirRes, RemoveArgs, RemoveRes, Sattr3, SetTime,
    StableHow, WriteArgs, WriteRes, NFS_PROGRAM, NFS_V3,
};
use twinfiler_proto::portmap::{Mapping, PmapProc, IPPROTO_TCP, PMAP_PROGRAM, PMAP_V2};
use twinfiler_proto::rpc::{AuthSys, Credential};
use twinfiler_proto::xdr::{Decoder, Xdr, XdrError};

pub use hard::{HardConn, HardOptions, HardStats, HardTarget, Stall};
pub use rpc::{Reply, RpcConn, CALL_TIMEOUT_MS};

/// The standard portmapper port.
pub const PORTMAP_PORT: u16 = 111;
/// Directory entries asked per READDIR reply (bytes).
const READDIR_COUNT_BYTES: u32 = 64 * 1024;
/// READDIR calls allowed for one directory listing (a server that never says eof).
const READDIR_CALLS_MAX: usize = 100_000;

/// What can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The connection closed (or its reader stopped) with the call in flight.
    #[error("connection closed")]
    Closed,
    /// No answer in time.
    #[error("{what} timed out after {ms} ms")]
    Timeout {
        /// What timed out.
        what: &'static str,
        /// The bound.
        ms: u64,
    },
    /// A call larger than a record may be, or WRITE data larger than NFSv3 allows.
    #[error("{bytes} bytes exceed the protocol's bound for a call or its data")]
    TooLarge {
        /// Size of the call.
        bytes: usize,
    },
    /// Why the reply reader stopped: bad record framing from the server, the connection
    /// closed inside a record, or a failed read. Logged by the reader; the calls in flight
    /// then fail with [`ClientError::Closed`].
    #[error("reply framing: {0}")]
    Framing(#[from] twinfiler_rpc::framing::FrameError),
    /// Bad reply bytes.
    #[error("undecodable reply: {0}")]
    Xdr(#[from] XdrError),
    /// The RPC layer refused the call (denied, or accepted with an error status).
    #[error("rpc call not executed: {0}")]
    Rpc(String),
    /// The portmapper knows no TCP port for the program.
    #[error("program {prog} version {vers} not registered with the portmapper")]
    NotRegistered {
        /// Program.
        prog: u32,
        /// Version.
        vers: u32,
    },
    /// MOUNT refused the path.
    #[error("MNT failed: {0:?}")]
    Mount(MountStat3),
    /// An NFS procedure returned an error status.
    #[error("{proc_:?} failed: {stat:?}")]
    Nfs {
        /// The procedure.
        proc_: Nfs3Proc,
        /// Its status.
        stat: NfsStat3,
    },
    /// A successful reply lacked something it should carry (e.g. CREATE without a handle).
    #[error("{0}")]
    Incomplete(&'static str),
}

/// Where a server listens. Ports left `None` are asked of its portmapper.
#[derive(Debug, Clone)]
pub struct ServerAddr {
    /// Server address.
    pub ip: IpAddr,
    /// Portmapper port (used only for ports not given).
    pub portmap_port: u16,
    /// MOUNT port, or ask the portmapper.
    pub mount_port: Option<u16>,
    /// NFS port, or ask the portmapper.
    pub nfs_port: Option<u16>,
}

/// An AUTH_SYS credential for uid/gid (no supplementary groups).
pub fn auth_sys(uid: u32, gid: u32) -> Credential {
    Credential::Sys(AuthSys {
        stamp: 0,
        machinename: b"twinfiler-bench".to_vec(),
        uid,
        gid,
        gids: Vec::new(),
    })
}

/// Decodes exactly one `T` from a reply's results.
fn results<T: Xdr>(reply: &rpc::Reply) -> Result<T, ClientError> {
    let mut dec = Decoder::new(reply.results());
    let v = T::decode(&mut dec)?;
    dec.finish()?;
    Ok(v)
}

/// Asks the portmapper (PMAP v2 GETPORT over TCP) for the TCP port of `prog`/`vers`.
pub async fn getport(
    ip: IpAddr,
    portmap_port: u16,
    prog: u32,
    vers: u32,
) -> Result<u16, ClientError> {
    let conn = RpcConn::connect(SocketAddr::new(ip, portmap_port), Credential::None).await?;
    let q = Mapping {
        prog,
        vers,
        prot: IPPROTO_TCP,
        port: 0,
    };
    let reply = conn
        .call(PMAP_PROGRAM, PMAP_V2, PmapProc::Getport as u32, |out| {
            q.encode(out)
        })
        .await?;
    let port: u32 = results(&reply)?;
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ClientError::NotRegistered { prog, vers }),
    }
}

/// MNT `path` on the server's MOUNT service; returns the export's root handle.
pub async fn mount(addr: SocketAddr, cred: Credential, path: &str) -> Result<NfsFh3, ClientError> {
    let conn = RpcConn::connect(addr, cred).await?;
    let dir =
        DirPath::new(path.as_bytes()).ok_or(ClientError::Incomplete("export path too long"))?;
    let reply = conn
        .call(MOUNT_PROGRAM, MOUNT_V3, MountProc::Mnt as u32, |out| {
            dir.encode(out)
        })
        .await?;
    match results::<MountRes3>(&reply)? {
        MountRes3::Ok { fhandle, .. } => Ok(fhandle),
        MountRes3::Err(stat) => Err(ClientError::Mount(stat)),
    }
}

/// How calls reach the server.
enum Transport {
    /// One connection; its loss fails the calls.
    Plain(RpcConn),
    /// Reconnects and retransmits ([`hard`]).
    Hard(HardConn),
}

impl Transport {
    async fn call(
        &self,
        prog: u32,
        vers: u32,
        proc_: u32,
        encode_args: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Reply, ClientError> {
        match self {
            Transport::Plain(c) => c.call(prog, vers, proc_, encode_args).await,
            Transport::Hard(c) => c.call(prog, vers, proc_, encode_args).await,
        }
    }

    /// A call whose arguments end with `data` (see [`RpcConn::call_with_data`]). The hard
    /// transport keeps each call whole for retransmission, so it copies the data in.
    async fn call_with_data(
        &self,
        prog: u32,
        vers: u32,
        proc_: u32,
        encode_head: impl FnOnce(&mut Vec<u8>),
        data: &[&[u8]],
    ) -> Result<Reply, ClientError> {
        match self {
            Transport::Plain(c) => c.call_with_data(prog, vers, proc_, encode_head, data).await,
            Transport::Hard(c) => {
                let encode_args = |out: &mut Vec<u8>| {
                    encode_head(out);
                    let data_len: usize = data.iter().map(|d| d.len()).sum();
                    data.iter().for_each(|d| out.extend_from_slice(d));
                    out.extend_from_slice(twinfiler_proto::xdr::padding(data_len));
                };
                c.call(prog, vers, proc_, encode_args).await
            }
        }
    }
}

/// One NFSv3 connection plus the export's root handle. Share it (`Arc`) between tasks to
/// keep several calls in flight.
pub struct NfsClient {
    conn: Transport,
    root: NfsFh3,
}

/// Turns an `NfsRes` into the ok arm or a [`ClientError::Nfs`].
fn ok<T, F>(proc_: Nfs3Proc, res: NfsRes<T, F>) -> Result<T, ClientError> {
    match res {
        NfsRes::Ok(v) => Ok(v),
        NfsRes::Err(stat, _) => Err(ClientError::Nfs { proc_, stat }),
    }
}

/// Attributes set on creation: only the mode.
fn mode_only(mode: u32) -> Sattr3 {
    Sattr3 {
        mode: Some(mode),
        uid: None,
        gid: None,
        size: None,
        atime: SetTime::DontChange,
        mtime: SetTime::DontChange,
    }
}

fn dirop(dir: &NfsFh3, name: &str) -> Result<DirOpArgs3, ClientError> {
    Ok(DirOpArgs3 {
        dir: *dir,
        name: Filename3::new(name.as_bytes()).ok_or(ClientError::Incomplete("name too long"))?,
    })
}

impl NfsClient {
    /// Finds the ports (portmapper where not given), mounts `export` and connects to NFS.
    pub async fn connect(
        server: &ServerAddr,
        export: &str,
        cred: Credential,
    ) -> Result<Self, ClientError> {
        let mount_port = match server.mount_port {
            Some(p) => p,
            None => getport(server.ip, server.portmap_port, MOUNT_PROGRAM, MOUNT_V3).await?,
        };
        let nfs_port = match server.nfs_port {
            Some(p) => p,
            None => getport(server.ip, server.portmap_port, NFS_PROGRAM, NFS_V3).await?,
        };
        let root = mount(SocketAddr::new(server.ip, mount_port), cred.clone(), export).await?;
        let conn = RpcConn::connect(SocketAddr::new(server.ip, nfs_port), cred).await?;
        Ok(NfsClient {
            conn: Transport::Plain(conn),
            root,
        })
    }

    /// Like [`NfsClient::connect`], but NFS calls go through a [`HardConn`]: they ride
    /// through server restarts and takeovers. (MOUNT is asked once, here, without retries.)
    pub async fn connect_hard(
        server: &ServerAddr,
        export: &str,
        cred: Credential,
        opts: HardOptions,
    ) -> Result<Self, ClientError> {
        let mount_port = match server.mount_port {
            Some(p) => p,
            None => getport(server.ip, server.portmap_port, MOUNT_PROGRAM, MOUNT_V3).await?,
        };
        let root = mount(SocketAddr::new(server.ip, mount_port), cred.clone(), export).await?;
        let target = HardTarget {
            ip: server.ip,
            portmap_port: server.portmap_port,
            port: server.nfs_port,
            prog: NFS_PROGRAM,
            vers: NFS_V3,
        };
        let conn = HardConn::connect(target, cred, opts).await?;
        Ok(NfsClient {
            conn: Transport::Hard(conn),
            root,
        })
    }

    /// What the hard transport saw (`None` for a plain client).
    pub fn hard_stats(&self) -> Option<&std::sync::Arc<HardStats>> {
        match &self.conn {
            Transport::Plain(_) => None,
            Transport::Hard(h) => Some(h.stats()),
        }
    }

    /// The export's root handle.
    pub fn root(&self) -> &NfsFh3 {
        &self.root
    }

    async fn nfs<R: Xdr>(&self, proc_: Nfs3Proc, args: &impl Xdr) -> Result<R, ClientError> {
        let reply = self
            .conn
            .call(NFS_PROGRAM, NFS_V3, proc_ as u32, |out| args.encode(out))
            .await?;
        results(&reply)
    }

    /// NULL (a ping).
    pub async fn null(&self) -> Result<(), ClientError> {
        self.conn
            .call(NFS_PROGRAM, NFS_V3, Nfs3Proc::Null as u32, |_| {})
            .await?;
        Ok(())
    }

    /// GETATTR.
    pub async fn getattr(&self, fh: &NfsFh3) -> Result<Fattr3, ClientError> {
        let args = GetattrArgs { object: *fh };
        let res: GetattrRes = self.nfs(Nfs3Proc::Getattr, &args).await?;
        Ok(ok(Nfs3Proc::Getattr, res)?.obj_attributes)
    }

    /// LOOKUP `name` in `dir`: the handle and (if the server sent them) its attributes.
    pub async fn lookup(
        &self,
        dir: &NfsFh3,
        name: &str,
    ) -> Result<(NfsFh3, Option<Fattr3>), ClientError> {
        let args = LookupArgs {
            what: dirop(dir, name)?,
        };
        let res: LookupRes = self.nfs(Nfs3Proc::Lookup, &args).await?;
        let r = ok(Nfs3Proc::Lookup, res)?;
        Ok((r.object, r.obj_attributes))
    }

    /// CREATE `name` in `dir` (GUARDED, or UNCHECKED when `truncate_existing`).
    pub async fn create(
        &self,
        dir: &NfsFh3,
        name: &str,
        mode: u32,
        truncate_existing: bool,
    ) -> Result<NfsFh3, ClientError> {
        let how = if truncate_existing {
            CreateHow3::Unchecked(mode_only(mode))
        } else {
            CreateHow3::Guarded(mode_only(mode))
        };
        let args = CreateArgs {
            where_: dirop(dir, name)?,
            how,
        };
        let res: DirOpRes = self.nfs(Nfs3Proc::Create, &args).await?;
        ok(Nfs3Proc::Create, res)?
            .obj
            .ok_or(ClientError::Incomplete("CREATE reply without a handle"))
    }

    /// MKDIR `name` in `dir`.
    pub async fn mkdir(&self, dir: &NfsFh3, name: &str, mode: u32) -> Result<NfsFh3, ClientError> {
        let args = MkdirArgs {
            where_: dirop(dir, name)?,
            attributes: mode_only(mode),
        };
        let res: DirOpRes = self.nfs(Nfs3Proc::Mkdir, &args).await?;
        ok(Nfs3Proc::Mkdir, res)?
            .obj
            .ok_or(ClientError::Incomplete("MKDIR reply without a handle"))
    }

    /// REMOVE `name` from `dir`.
    pub async fn remove(&self, dir: &NfsFh3, name: &str) -> Result<(), ClientError> {
        let args = RemoveArgs {
            object: dirop(dir, name)?,
        };
        let res: RemoveRes = self.nfs(Nfs3Proc::Remove, &args).await?;
        ok(Nfs3Proc::Remove, res).map(|_| ())
    }

    /// RMDIR `name` from `dir`.
    pub async fn rmdir(&self, dir: &NfsFh3, name: &str) -> Result<(), ClientError> {
        let args = RemoveArgs {
            object: dirop(dir, name)?,
        };
        let res: RemoveRes = self.nfs(Nfs3Proc::Rmdir, &args).await?;
        ok(Nfs3Proc::Rmdir, res).map(|_| ())
    }

    /// WRITE `data` (at most [`nfs3::IO_BYTES_MAX`] bytes) at `offset`; returns the bytes the
    /// server took and the stability it gave.
    pub async fn write(
        &self,
        fh: &NfsFh3,
        offset: u64,
        data: &[u8],
        stable: StableHow,
    ) -> Result<(u32, StableHow), ClientError> {
        self.write_parts(fh, offset, &[data], stable).await
    }

    /// WRITE the concatenation of `parts` at `offset`, sent from the parts themselves (no
    /// copy into a request buffer on a plain connection).
    pub async fn write_parts(
        &self,
        fh: &NfsFh3,
        offset: u64,
        parts: &[&[u8]],
        stable: StableHow,
    ) -> Result<(u32, StableHow), ClientError> {
        let data_len: usize = parts.iter().map(|p| p.len()).sum();
        if data_len > nfs3::IO_BYTES_MAX {
            return Err(ClientError::TooLarge { bytes: data_len });
        }
        let args = WriteArgs {
            file: *fh,
            offset,
            count: data_len as u32,
            stable,
            data: 0..0,
        };
        let reply = self
            .conn
            .call_with_data(
                NFS_PROGRAM,
                NFS_V3,
                Nfs3Proc::Write as u32,
                |out| args.encode_head(data_len, out),
                parts,
            )
            .await?;
        let r = ok(Nfs3Proc::Write, results::<WriteRes>(&reply)?)?;
        Ok((r.count, r.committed))
    }

    /// READ up to `count` bytes at `offset`; returns the data and the eof flag. The data
    /// shares the buffer the reply was read into: copy it if you keep it for long.
    pub async fn read(
        &self,
        fh: &NfsFh3,
        offset: u64,
        count: u32,
    ) -> Result<(Bytes, bool), ClientError> {
        let args = ReadArgs {
            file: *fh,
            offset,
            count,
        };
        let reply = self
            .conn
            .call(NFS_PROGRAM, NFS_V3, Nfs3Proc::Read as u32, |out| {
                args.encode(out)
            })
            .await?;
        // The data is handed out as a slice of the reply record, not copied out of it.
        let mut dec = Decoder::new_at(&reply.record, reply.results_offset);
        match NfsStat3::decode(&mut dec)? {
            NfsStat3::Ok => {
                let span = ReadResOkSpan::decode(&mut dec)?;
                dec.finish()?;
                Ok((reply.record.slice(span.data), span.eof))
            }
            stat => {
                nfs3::AttrFail::decode(&mut dec)?;
                dec.finish()?;
                Err(ClientError::Nfs {
                    proc_: Nfs3Proc::Read,
                    stat,
                })
            }
        }
    }

    /// COMMIT the whole file.
    pub async fn commit(&self, fh: &NfsFh3) -> Result<(), ClientError> {
        let args = CommitArgs {
            file: *fh,
            offset: 0,
            count: 0,
        };
        let res: CommitRes = self.nfs(Nfs3Proc::Commit, &args).await?;
        ok(Nfs3Proc::Commit, res).map(|_| ())
    }

    /// Walks `path` ('/'-separated, relative to the export root) with LOOKUPs.
    pub async fn lookup_path(&self, path: &str) -> Result<NfsFh3, ClientError> {
        let mut fh = self.root;
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            fh = self.lookup(&fh, comp).await?.0;
        }
        Ok(fh)
    }

    /// Reads the whole file in `chunk_bytes` requests, handing each piece to `sink` in order.
    /// Returns the bytes read.
    pub async fn read_all(
        &self,
        fh: &NfsFh3,
        chunk_bytes: u32,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64, ClientError> {
        assert!(chunk_bytes > 0);
        let mut offset = 0u64;
        loop {
            let (data, eof) = self.read(fh, offset, chunk_bytes).await?;
            sink(&data)?;
            offset += data.len() as u64;
            if eof {
                return Ok(offset);
            }
            if data.is_empty() {
                return Err(ClientError::Incomplete("READ returned no data and no eof"));
            }
        }
    }

    /// All names in `dir` (READDIR until eof), without "." and "..".
    pub async fn readdir_names(&self, dir: &NfsFh3) -> Result<Vec<Vec<u8>>, ClientError> {
        let mut names = Vec::new();
        let mut cookie = 0u64;
        let mut cookieverf = [0u8; nfs3::VERIFIER_BYTES];
        for _ in 0..READDIR_CALLS_MAX {
            let args = ReaddirArgs {
                dir: *dir,
                cookie,
                cookieverf,
                count: READDIR_COUNT_BYTES,
            };
            let res: ReaddirRes = self.nfs(Nfs3Proc::Readdir, &args).await?;
            let r = ok(Nfs3Proc::Readdir, res)?;
            cookieverf = r.cookieverf;
            for e in &r.entries {
                cookie = e.cookie;
                let n = e.name.as_bytes();
                if n != b"." && n != b".." {
                    names.push(n.to_vec());
                }
            }
            if r.eof {
                return Ok(names);
            }
            if r.entries.is_empty() {
                return Err(ClientError::Incomplete(
                    "READDIR returned no entries and no eof",
                ));
            }
        }
        Err(ClientError::Incomplete("READDIR never reached eof"))
    }
}

#[cfg(test)]
mod tests;
