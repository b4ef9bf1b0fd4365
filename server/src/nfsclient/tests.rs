//! The client against small scripted servers on loopback, built from the proto crate's
//! server-side decoders: replies out of order, portmapper lookups, a server that hangs up.

use std::net::Ipv4Addr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use twinfiler_proto::nfs3::{
    Fattr3, Ftype3, GetattrResOk, Nfs3Call, NfsRes, NfsTime3, ReadRes, ReadResOk, Specdata3,
    WccData, WriteRes, WriteResOk,
};
use twinfiler_proto::portmap::{CallContext, Registration, Registry};
use twinfiler_proto::record::{frame, RecordDecoder};
use twinfiler_proto::rpc::{decode_call, success_reply, CallHeader};

use super::*;

/// Reads one call record from `s`.
async fn read_call(s: &mut TcpStream, dec: &mut RecordDecoder) -> Option<Vec<u8>> {
    let mut byte = [0u8; 1];
    for _ in 0..(2 << 20) {
        if s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        if let Some(rec) = dec.feed(&byte).ok()?.record {
            return Some(rec);
        }
    }
    None
}

/// Reads one call from `s` and decodes its header.
async fn next_call(s: &mut TcpStream, dec: &mut RecordDecoder) -> CallHeader {
    let record = read_call(s, dec).await.expect("a call record");
    decode_call(&record).expect("a well-formed call").0
}

fn attrs_for(fileid: u64) -> Fattr3 {
    let t = NfsTime3 {
        seconds: 0,
        nseconds: 0,
    };
    Fattr3 {
        ftype: Ftype3::Reg,
        mode: 0o644,
        nlink: 1,
        uid: 0,
        gid: 0,
        size: fileid * 10,
        used: 0,
        rdev: Specdata3 {
            specdata1: 0,
            specdata2: 0,
        },
        fsid: 1,
        fileid,
        atime: t,
        mtime: t,
        ctime: t,
    }
}

/// Answers `calls` GETATTRs only after all of them arrived, in reverse order; the fileid of
/// each answer is the first byte of the handle asked about.
async fn reverse_getattr_server(listener: TcpListener, calls: usize) {
    let (mut s, _) = listener.accept().await.unwrap();
    let mut dec = RecordDecoder::default();
    let mut replies = Vec::new();
    for _ in 0..calls {
        let rec = read_call(&mut s, &mut dec).await.unwrap();
        let (head, off): (CallHeader, usize) = decode_call(&rec).unwrap();
        let Nfs3Call::Getattr(args) = Nfs3Call::decode(head.proc_, &rec, off).unwrap() else {
            panic!("expected GETATTR");
        };
        let fileid = u64::from(args.object.as_bytes()[0]);
        let res: GetattrRes = NfsRes::Ok(GetattrResOk {
            obj_attributes: attrs_for(fileid),
        });
        replies.push(frame(&success_reply(head.xid, &res)));
    }
    for r in replies.iter().rev() {
        s.write_all(r).await.unwrap();
    }
}

async fn client_on(listener: &TcpListener) -> NfsClient {
    let conn = RpcConn::connect(listener.local_addr().unwrap(), auth_sys(1, 1))
        .await
        .unwrap();
    NfsClient {
        conn: Transport::Plain(conn),
        root: NfsFh3::new(&[0]).unwrap(),
    }
}

#[tokio::test]
async fn concurrent_calls_get_their_own_out_of_order_replies() {
    const CALLS: usize = 16;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let client = Arc::new(client_on(&listener).await);
    let server = tokio::spawn(reverse_getattr_server(listener, CALLS));
    let mut tasks = Vec::new();
    for i in 0..CALLS as u8 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let fh = NfsFh3::new(&[i + 1, 7, 7, 7]).unwrap();
            (i, c.getattr(&fh).await.unwrap())
        }));
    }
    for t in tasks {
        let (i, attrs) = t.await.unwrap();
        assert_eq!(attrs.fileid, u64::from(i) + 1);
        assert_eq!(attrs.size, (u64::from(i) + 1) * 10);
    }
    server.await.unwrap();
}

#[tokio::test]
async fn calls_in_flight_fail_when_the_server_hangs_up() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let client = Arc::new(client_on(&listener).await);
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut dec = RecordDecoder::default();
        read_call(&mut s, &mut dec).await.unwrap();
        // Hang up without answering.
    });
    let t0 = std::time::Instant::now();
    let err = client.null().await.unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err}");
    assert!(t0.elapsed().as_millis() < u128::from(CALL_TIMEOUT_MS));
    server.await.unwrap();
    // And later calls fail at once too.
    assert!(client.null().await.is_err());
}

#[tokio::test]
async fn getport_asks_the_portmapper() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut reg = Registry::new();
        assert!(reg.set(Registration {
            prog: MOUNT_PROGRAM,
            vers: MOUNT_V3,
            netid: "tcp".into(),
            port: 20048,
            owner: "test".into(),
        }));
        let ctx = CallContext {
            local_ip: Ipv4Addr::LOCALHOST.into(),
            netid: "tcp",
            now_unix_s: 0,
            may_modify: false,
        };
        // Two connections: one question each.
        for _ in 0..2 {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut dec = RecordDecoder::default();
            let rec = read_call(&mut s, &mut dec).await.unwrap();
            let (head, off) = decode_call(&rec).unwrap();
            let results = reg.handle(&head, &rec, off, &ctx).unwrap();
            let mut reply =
                twinfiler_proto::rpc::ReplyHeader::success(head.xid).to_vec_with_capacity(0);
            reply.extend_from_slice(&results);
            s.write_all(&frame(&reply)).await.unwrap();
        }
    });
    let ip = Ipv4Addr::LOCALHOST.into();
    assert_eq!(
        getport(ip, port, MOUNT_PROGRAM, MOUNT_V3).await.unwrap(),
        20048
    );
    let err = getport(ip, port, NFS_PROGRAM, NFS_V3).await.unwrap_err();
    assert!(matches!(err, ClientError::NotRegistered { .. }), "{err}");
    server.await.unwrap();
}

/// A GETATTR reply for `xid` (fileid 1), framed.
fn getattr_reply(xid: u32) -> Vec<u8> {
    let res: GetattrRes = NfsRes::Ok(GetattrResOk {
        obj_attributes: attrs_for(1),
    });
    frame(&success_reply(xid, &res))
}

/// A hard client of `listener` with fast retransmissions.
async fn hard_client_on(listener: &TcpListener) -> NfsClient {
    let addr = listener.local_addr().unwrap();
    let target = HardTarget {
        ip: addr.ip(),
        portmap_port: 1,
        port: Some(addr.port()),
        prog: NFS_PROGRAM,
        vers: NFS_V3,
    };
    let opts = HardOptions {
        reconnect_wait_ms_max: 5_000,
        retransmit_ms_initial: 200,
        retransmit_ms_max: 400,
        call_ms_max: 10_000,
        jukebox_delay_ms: 10,
        stall_record_ms: 1,
        ..HardOptions::default()
    };
    NfsClient {
        conn: Transport::Hard(
            HardConn::connect(target, auth_sys(1, 1), opts)
                .await
                .unwrap(),
        ),
        root: NfsFh3::new(&[0]).unwrap(),
    }
}

#[tokio::test]
async fn hard_client_reconnects_from_the_same_port_and_resends_the_same_xid() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let client = hard_client_on(&listener).await;
    let server = tokio::spawn(async move {
        // First connection: read the call, hang up without answering.
        let (mut s, peer1) = listener.accept().await.unwrap();
        let mut dec = RecordDecoder::default();
        let rec = read_call(&mut s, &mut dec).await.unwrap();
        let (first, _) = decode_call(&rec).unwrap();
        drop(s);
        // Second connection: the same call again, from the same address and port.
        let (mut s, peer2) = listener.accept().await.unwrap();
        let mut dec = RecordDecoder::default();
        let rec = read_call(&mut s, &mut dec).await.unwrap();
        let (again, _) = decode_call(&rec).unwrap();
        s.write_all(&getattr_reply(again.xid)).await.unwrap();
        (peer1, peer2, first.xid, again.xid)
    });
    let attrs = client.getattr(&NfsFh3::new(&[1]).unwrap()).await.unwrap();
    assert_eq!(attrs.fileid, 1);
    let (peer1, peer2, xid1, xid2) = server.await.unwrap();
    assert_eq!(peer1, peer2, "the reconnection keeps the client's port");
    assert_eq!(xid1, xid2, "the retransmission keeps the xid");
    let stats = client.hard_stats().unwrap();
    assert_eq!(
        stats.reconnects.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(stats.errors.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(
        stats
            .max_reconnect_pause_us
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}

#[tokio::test]
async fn hard_client_retransmits_on_a_silent_connection_and_retries_jukebox() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let client = hard_client_on(&listener).await;
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut dec = RecordDecoder::default();
        // Ignore the first transmission; the retransmission (same xid) gets JUKEBOX.
        let a = next_call(&mut s, &mut dec).await;
        let b = next_call(&mut s, &mut dec).await;
        assert_eq!(a.xid, b.xid);
        let jukebox: GetattrRes = NfsRes::Err(NfsStat3::Jukebox, ());
        s.write_all(&frame(&success_reply(b.xid, &jukebox)))
            .await
            .unwrap();
        // After JUKEBOX: a new xid.
        let c = next_call(&mut s, &mut dec).await;
        assert_ne!(c.xid, b.xid);
        s.write_all(&getattr_reply(c.xid)).await.unwrap();
    });
    let attrs = client.getattr(&NfsFh3::new(&[1]).unwrap()).await.unwrap();
    assert_eq!(attrs.fileid, 1);
    server.await.unwrap();
    let stats = client.hard_stats().unwrap();
    assert_eq!(stats.jukebox.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(stats.retransmits.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert_eq!(stats.errors.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test]
async fn hard_client_counts_an_error_status_and_gives_up_after_its_bound() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let client = hard_client_on(&listener).await;
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut dec = RecordDecoder::default();
        let a = next_call(&mut s, &mut dec).await;
        let stale: GetattrRes = NfsRes::Err(NfsStat3::Stale, ());
        s.write_all(&frame(&success_reply(a.xid, &stale)))
            .await
            .unwrap();
        // Then the server goes away for good.
        drop(s);
        drop(listener);
    });
    let err = client
        .getattr(&NfsFh3::new(&[1]).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Nfs {
                stat: NfsStat3::Stale,
                ..
            }
        ),
        "{err}"
    );
    server.await.unwrap();
    let t0 = std::time::Instant::now();
    let err = client.null().await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(8),
        "bounded by the reconnect wait"
    );
    let stats = client.hard_stats().unwrap();
    assert_eq!(stats.errors.load(std::sync::atomic::Ordering::Relaxed), 2);
}

/// A WRITE given in parts (sent as iovecs) arrives whole, in order and padded (the server's
/// decoder refuses a record without the padding), and a READ's data comes back as sent
/// (sliced out of the reply record).
#[tokio::test]
async fn a_write_in_parts_and_a_read_round_trip_the_data() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    // The connection waits in the backlog until the server task accepts it.
    let client = client_on(&listener).await;
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut dec = RecordDecoder::default();
        let rec = read_call(&mut s, &mut dec).await.unwrap();
        let (head, off) = decode_call(&rec).unwrap();
        let Nfs3Call::Write(args) = Nfs3Call::decode(head.proc_, &rec, off).unwrap() else {
            panic!("expected WRITE");
        };
        let written = args.data(&rec).to_vec();
        assert_eq!((args.offset, args.count as usize), (4096, written.len()));
        let res: WriteRes = NfsRes::Ok(WriteResOk {
            file_wcc: WccData::default(),
            count: args.count,
            committed: StableHow::FileSync,
            verf: [3; 8],
        });
        s.write_all(&frame(&success_reply(head.xid, &res)))
            .await
            .unwrap();
        let rec = read_call(&mut s, &mut dec).await.unwrap();
        let (head, off) = decode_call(&rec).unwrap();
        let Nfs3Call::Read(args) = Nfs3Call::decode(head.proc_, &rec, off).unwrap() else {
            panic!("expected READ");
        };
        assert_eq!(args.count as usize, written.len());
        let res: ReadRes = NfsRes::Ok(ReadResOk {
            file_attributes: None,
            count: written.len() as u32,
            eof: true,
            data: written.clone(),
        });
        s.write_all(&frame(&success_reply(head.xid, &res)))
            .await
            .unwrap();
        written
    });
    let fh = NfsFh3::new(&[9]).unwrap();
    // An odd total length, so the call carries XDR padding after the last part.
    let tail = vec![7u8; 4093];
    let parts: [&[u8]; 2] = [b"head!", &tail];
    let (count, committed) = client
        .write_parts(&fh, 4096, &parts, StableHow::Unstable)
        .await
        .unwrap();
    assert_eq!((count, committed), (4098, StableHow::FileSync));
    let (data, eof) = client.read(&fh, 4096, 4098).await.unwrap();
    assert!(eof);
    let written = server.await.unwrap();
    assert_eq!(written, parts.concat(), "the server got the parts in order");
    assert_eq!(&data[..], &written[..], "READ returned what was written");
}
