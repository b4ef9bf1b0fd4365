//! Over the real transport: H1's `RpcServer` on loopback TCP, a client speaking record
//! marking by hand.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twinfiler_proto::mount::{DirPath, MountCall, MountRes3, MOUNT_PROGRAM};
use twinfiler_proto::nfs3::*;
use twinfiler_proto::rpc::{AuthSys, CallHeader, Credential, OpaqueAuth};
use twinfiler_proto::xdr::to_vec;
use twinfiler_rpc::{RpcServer, ServerConfig};

use super::*;

/// Bound on waiting for one reply.
const REPLY_WAIT_MS_MAX: u64 = 10_000;

async fn rpc(conn: &mut TcpStream, xid: u32, prog: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    let header = CallHeader {
        xid,
        prog,
        vers: 3,
        proc_,
        cred: Credential::Sys(AuthSys {
            stamp: 0,
            machinename: b"t".to_vec(),
            uid: 0,
            gid: 0,
            gids: vec![],
        }),
        verf: OpaqueAuth::none(),
    };
    let mut msg = Vec::new();
    header.encode(&mut msg);
    msg.extend_from_slice(args);
    let mut framed = (0x8000_0000u32 | msg.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&msg);
    conn.write_all(&framed).await.unwrap();
    let read = async {
        let mut reply = Vec::new();
        loop {
            let mut mark = [0u8; 4];
            conn.read_exact(&mut mark).await.unwrap();
            let m = u32::from_be_bytes(mark);
            let mut frag = vec![0u8; (m & 0x7fff_ffff) as usize];
            conn.read_exact(&mut frag).await.unwrap();
            reply.extend_from_slice(&frag);
            if m & 0x8000_0000 != 0 {
                return reply;
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(REPLY_WAIT_MS_MAX), read)
        .await
        .expect("reply in time")
}

#[tokio::test]
async fn mount_write_read_over_tcp() {
    let env = Env::new();
    let server = RpcServer::new(ServerConfig::default()).unwrap();
    server.register(NFS_PROGRAM, env.svc.nfs_program());
    server.register(MOUNT_PROGRAM, env.svc.mount_program());
    let addr = server
        .listen_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut conn = TcpStream::connect(addr).await.unwrap();

    let mut args = Vec::new();
    MountCall::Mnt(DirPath::new(&b"/"[..]).unwrap()).encode_args(&mut args);
    let reply = rpc(&mut conn, 1, MOUNT_PROGRAM, 1, &args).await;
    let MountRes3::Ok { fhandle: dir, .. } = decode_result::<MountRes3>(&reply, 1) else {
        panic!("mount refused");
    };
    let create = CreateArgs {
        where_: dirop(&dir, "wire"),
        how: CreateHow3::Guarded(Sattr3::default()),
    };
    let reply = rpc(
        &mut conn,
        2,
        NFS_PROGRAM,
        Nfs3Proc::Create as u32,
        &to_vec(&create),
    )
    .await;
    let fh = ok(decode_result::<DirOpRes>(&reply, 2)).obj.unwrap();

    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();
    let w = WriteArgs {
        file: fh,
        offset: 0,
        count: data.len() as u32,
        stable: StableHow::Unstable,
        data: 0..0,
    };
    let mut args = Vec::new();
    w.encode_with_data(&data, &mut args);
    let reply = rpc(&mut conn, 3, NFS_PROGRAM, Nfs3Proc::Write as u32, &args).await;
    assert_eq!(ok(decode_result::<WriteRes>(&reply, 3)).count, 1 << 20);

    let rd = ReadArgs {
        file: fh,
        offset: 0,
        count: 1 << 20,
    };
    let reply = rpc(
        &mut conn,
        4,
        NFS_PROGRAM,
        Nfs3Proc::Read as u32,
        &to_vec(&rd),
    )
    .await;
    let res = ok(decode_result::<ReadRes>(&reply, 4));
    assert!(res.eof);
    assert!(res.data == data, "1 MiB read back over TCP");
    // An odd-length read: padding comes from `Reply.data`.
    let rd = ReadArgs {
        file: fh,
        offset: 1,
        count: 5,
    };
    let reply = rpc(
        &mut conn,
        5,
        NFS_PROGRAM,
        Nfs3Proc::Read as u32,
        &to_vec(&rd),
    )
    .await;
    assert_eq!(ok(decode_result::<ReadRes>(&reply, 5)).data, &data[1..6]);
    server.stop(Duration::from_secs(2)).await;
}
