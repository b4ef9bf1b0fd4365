//! An independent NFSv3 client for the tests: the `nfs3_client` crate (crates.io), over TCP
//! sockets we open ourselves so a test can choose the client address (127.0.0.1 vs
//! 127.0.0.2 for export rules) and the credentials. Plus raw RPC records for the tests that
//! must control the exact bytes (DRC replay).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use nfs3_client::nfs3_types::mount::dirpath;
use nfs3_client::nfs3_types::nfs3::{
    createhow3, diropargs3, fattr3, filename3, nfs_fh3, nfsstat3, sattr3, set_mode3, stable_how,
    CREATE3args, GETATTR3args, LOOKUP3args, Nfs3Result, READ3args, WRITE3args,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, call_body, msg_body, opaque_auth, rpc_msg};
use nfs3_client::nfs3_types::xdr_codec::{Opaque, Pack};
use nfs3_client::tokio::TokioIo;
use nfs3_client::{MountClient, MountError, Nfs3Client};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

/// Every RPC of a test must answer within this bound.
pub const CALL_MS_MAX: u64 = 20_000;
/// Largest reply record a raw test reads.
const RAW_REPLY_BYTES_MAX: usize = 2 << 20;

pub type Io = TokioIo<TcpStream>;
pub type Nfs = Nfs3Client<Io>;

/// The usual client address.
pub const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
/// A loopback address outside rules that name 127.0.0.1 only.
pub const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// AUTH_SYS credentials.
#[derive(Clone, Debug)]
pub struct Cred {
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
}

impl Cred {
    pub fn root() -> Cred {
        Cred::user(0, 0)
    }
    pub fn user(uid: u32, gid: u32) -> Cred {
        Cred {
            uid,
            gid,
            gids: vec![gid],
        }
    }
    pub fn auth(&self) -> opaque_auth<'static> {
        opaque_auth::auth_unix(&auth_unix {
            stamp: 1,
            machinename: Opaque::owned(b"twinfiler-test".to_vec()),
            uid: self.uid,
            gid: self.gid,
            gids: self.gids.clone(),
        })
    }
}

/// A TCP connection from `local` (any port) to `to`.
pub async fn tcp_from(local: IpAddr, to: SocketAddr) -> TcpStream {
    tcp_from_port(SocketAddr::new(local, 0), to).await
}

/// A TCP connection from exactly `local` (address and port) to `to`.
pub async fn tcp_from_port(local: SocketAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(local).expect("bind client address");
    socket.connect(to).await.expect("connect")
}

/// MNT `path` from `local` as `cred`: the export's root handle.
pub async fn mount(
    mount_addr: SocketAddr,
    local: IpAddr,
    path: &str,
    cred: &Cred,
) -> Result<nfs_fh3, MountError> {
    let io = TokioIo::new(tcp_from(local, mount_addr).await);
    let mut m = MountClient::new_with_auth(io, cred.auth(), opaque_auth::default());
    let ok = bounded(m.mnt(dirpath(Opaque::borrowed(path.as_bytes())))).await?;
    Ok(nfs_fh3 {
        data: Opaque::owned(ok.fhandle.0.to_vec()),
    })
}

/// A MOUNT client (for NULL, DUMP, EXPORT, UMNT…).
pub async fn mount_client(mount_addr: SocketAddr, cred: &Cred) -> MountClient<Io> {
    let io = TokioIo::new(tcp_from(LOCAL, mount_addr).await);
    MountClient::new_with_auth(io, cred.auth(), opaque_auth::default())
}

/// An NFS client from `local` as `cred`.
pub async fn nfs(nfs_addr: SocketAddr, local: IpAddr, cred: &Cred) -> Nfs {
    let io = TokioIo::new(tcp_from(local, nfs_addr).await);
    Nfs3Client::new_with_auth(io, cred.auth(), opaque_auth::default())
}

/// Awaits `f` within [`CALL_MS_MAX`].
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_millis(CALL_MS_MAX), f)
        .await
        .unwrap_or_else(|_| panic!("RPC did not answer within {CALL_MS_MAX} ms"))
}

pub fn name(s: &str) -> filename3<'static> {
    filename3(Opaque::owned(s.as_bytes().to_vec()))
}

pub fn dirop(dir: &nfs_fh3, n: &str) -> diropargs3<'static> {
    diropargs3 {
        dir: dir.clone(),
        name: name(n),
    }
}

pub fn mode(m: u32) -> sattr3 {
    sattr3 {
        mode: set_mode3::Some(m),
        ..sattr3::default()
    }
}

pub async fn getattr(c: &mut Nfs, fh: &nfs_fh3) -> Result<fattr3, nfsstat3> {
    let args = GETATTR3args { object: fh.clone() };
    match bounded(c.getattr(&args)).await.expect("GETATTR rpc") {
        Nfs3Result::Ok(ok) => Ok(ok.obj_attributes),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

pub async fn lookup(c: &mut Nfs, dir: &nfs_fh3, n: &str) -> Result<nfs_fh3, nfsstat3> {
    let args = LOOKUP3args {
        what: dirop(dir, n),
    };
    match bounded(c.lookup(&args)).await.expect("LOOKUP rpc") {
        Nfs3Result::Ok(ok) => Ok(ok.object),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

/// CREATE GUARDED with `mode`; the new handle.
pub async fn create(c: &mut Nfs, dir: &nfs_fh3, n: &str, m: u32) -> Result<nfs_fh3, nfsstat3> {
    let args = CREATE3args {
        where_: dirop(dir, n),
        how: createhow3::GUARDED(mode(m)),
    };
    match bounded(c.create(&args)).await.expect("CREATE rpc") {
        Nfs3Result::Ok(ok) => Ok(ok.obj.unwrap()),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

/// WRITE FILE_SYNC in chunks of at most `chunk` bytes.
pub async fn write_all(
    c: &mut Nfs,
    fh: &nfs_fh3,
    offset: u64,
    data: &[u8],
) -> Result<(), nfsstat3> {
    const CHUNK_BYTES: usize = 1 << 20;
    for (i, chunk) in data.chunks(CHUNK_BYTES).enumerate() {
        let args = WRITE3args {
            file: fh.clone(),
            offset: offset + (i * CHUNK_BYTES) as u64,
            count: chunk.len() as u32,
            stable: stable_how::FILE_SYNC,
            data: Opaque::borrowed(chunk),
        };
        match bounded(c.write(&args)).await.expect("WRITE rpc") {
            Nfs3Result::Ok(ok) => {
                assert_eq!(ok.count as usize, chunk.len(), "short write");
                assert_eq!(
                    ok.committed,
                    stable_how::FILE_SYNC,
                    "the NVRAM makes every write FILE_SYNC"
                );
            }
            Nfs3Result::Err((s, _)) => return Err(s),
        }
    }
    Ok(())
}

/// READs `len` bytes from `offset` (or up to EOF).
pub async fn read_all(
    c: &mut Nfs,
    fh: &nfs_fh3,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, nfsstat3> {
    const CHUNK_BYTES: u32 = 1 << 20;
    let mut out = Vec::with_capacity(len);
    // Bounded: every round reads at least one byte or ends.
    while out.len() < len {
        let want = CHUNK_BYTES.min((len - out.len()) as u32);
        let args = READ3args {
            file: fh.clone(),
            offset: offset + out.len() as u64,
            count: want,
        };
        match bounded(c.read(&args)).await.expect("READ rpc") {
            Nfs3Result::Ok(ok) => {
                out.extend_from_slice(ok.data.as_ref());
                if ok.eof || ok.data.is_empty() {
                    break;
                }
            }
            Nfs3Result::Err((s, _)) => return Err(s),
        }
    }
    Ok(out)
}

/// One RPC call record (record mark included) with AUTH_SYS `cred`.
pub fn raw_call(
    xid: u32,
    prog: u32,
    vers: u32,
    proc_: u32,
    cred: &Cred,
    args: &impl Pack,
) -> Vec<u8> {
    let auth = cred.auth();
    let msg = rpc_msg {
        xid,
        body: msg_body::CALL(call_body {
            rpcvers: 2,
            prog,
            vers,
            proc: proc_,
            cred: auth.borrow(),
            verf: opaque_auth::default(),
        }),
    };
    let mut body = Vec::new();
    msg.pack(&mut body).expect("pack call");
    args.pack(&mut body).expect("pack args");
    let mut out = (body.len() as u32 | 0x8000_0000).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Reads one reply record (all fragments) from a raw connection.
pub async fn raw_reply(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut mark = [0u8; 4];
        bounded(s.read_exact(&mut mark))
            .await
            .expect("reply record mark");
        let m = u32::from_be_bytes(mark);
        let len = (m & 0x7fff_ffff) as usize;
        assert!(
            out.len() + len <= RAW_REPLY_BYTES_MAX,
            "reply over {RAW_REPLY_BYTES_MAX} bytes"
        );
        let start = out.len();
        out.resize(start + len, 0);
        bounded(s.read_exact(&mut out[start..]))
            .await
            .expect("reply fragment");
        if m & 0x8000_0000 != 0 {
            return out;
        }
    }
}

/// Sends one raw call record and returns its reply.
pub async fn raw_roundtrip(s: &mut TcpStream, call: &[u8]) -> Vec<u8> {
    bounded(s.write_all(call)).await.expect("send call");
    raw_reply(s).await
}

/// The NFS status word of an accepted, successful RPC reply: after xid, REPLY,
/// MSG_ACCEPTED, the verifier and SUCCESS.
pub fn raw_nfs_status(reply: &[u8]) -> u32 {
    let word = |at: usize| u32::from_be_bytes(reply[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!(word(4), 1, "not a REPLY");
    assert_eq!(word(8), 0, "not MSG_ACCEPTED");
    let verf_len = word(16) as usize;
    let at = 20 + verf_len.div_ceil(4) * 4;
    assert_eq!(word(at), 0, "accept_stat is not SUCCESS");
    word(at + 4)
}
