//! The portmapper/rpcbind program over real sockets, and against the `rpcinfo` tool.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use twinfiler_proto::portmap::{
    format_uaddr, Mapping, PmapList, Rpcb, RpcbList, IPPROTO_TCP, IPPROTO_UDP, PMAP_PROGRAM,
    PMAP_V2, RPCB_V3, RPCB_V4,
};
use twinfiler_proto::rpc::{decode_call, AcceptStat, ReplyStatus};
use twinfiler_proto::xdr::{from_slice, to_vec, Decoder};
use twinfiler_rpc::{Call, PortmapService, RpcServer, ServerConfig, Transport};

const NFS_PROGRAM: u32 = 100_003;
const MOUNT_PROGRAM: u32 = 100_005;

/// A server with the toy program and the portmapper, on `ip` (TCP and UDP, port 0, or
/// `port`), registering itself, NFS v3 on TCP 2049 and MOUNT v3 on TCP and UDP 20048.
async fn start_portmap(ip: &str, port: u16) -> std::io::Result<(TestServer, Arc<PortmapService>)> {
    let addr = SocketAddr::new(ip.parse().unwrap(), port);
    let server = RpcServer::new(ServerConfig::default()).unwrap();
    let toy = Toy::new();
    server.register(TOY_PROG, toy.clone());
    let portmap = Arc::new(PortmapService::new());
    server.register(PMAP_PROGRAM, portmap.clone());
    let tcp = server.listen_tcp(addr).await?;
    // Same port number as TCP only when asked for one (111); else any free port.
    let udp = server.listen_udp(addr).await?;
    assert!(portmap.set_self(Some(tcp.port()), Some(udp.port())));
    assert!(portmap.set_program(NFS_PROGRAM, &[3], Some(2049), None));
    assert!(portmap.set_program(MOUNT_PROGRAM, &[3], Some(20048), Some(20048)));
    assert!(portmap.set_program(TOY_PROG, &[TOY_VERS], Some(tcp.port()), Some(udp.port())));
    Ok((
        TestServer {
            server,
            tcp,
            udp,
            toy,
        },
        portmap,
    ))
}

fn getport_args(prog: u32, vers: u32, prot: u32) -> Vec<u8> {
    to_vec(&Mapping {
        prog,
        vers,
        prot,
        port: 0,
    })
}

fn getaddr_args(prog: u32, vers: u32, netid: &str) -> Vec<u8> {
    to_vec(&Rpcb {
        r_prog: prog,
        r_vers: vers,
        r_netid: netid.to_owned(),
        r_addr: String::new(),
        r_owner: String::new(),
    })
}

fn pmap_call(xid: u32, vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    call_record(xid, PMAP_PROGRAM, vers, proc_, args)
}

fn success_results(reply: (twinfiler_proto::rpc::ReplyHeader, Vec<u8>)) -> Vec<u8> {
    match reply.0.status {
        ReplyStatus::Accepted {
            stat: AcceptStat::Success,
            ..
        } => reply.1,
        other => panic!("expected SUCCESS, got {other:?}"),
    }
}

fn word_of(results: &[u8]) -> u32 {
    assert_eq!(results.len(), 4, "one word expected");
    u32::from_be_bytes(results.try_into().unwrap())
}

fn string_of(results: &[u8]) -> String {
    let mut dec = Decoder::new(results);
    let s = dec.string_utf8("uaddr", 256).unwrap();
    dec.finish().unwrap();
    s
}

#[tokio::test]
async fn pmap_v2_getport_over_tcp_and_udp() {
    let (t, _pm) = start_portmap("127.0.0.1", 0).await.unwrap();
    let mut c = TcpClient::connect(t.tcp).await;
    let port = |r| word_of(&success_results(r));
    let nfs_tcp = pmap_call(1, PMAP_V2, 3, &getport_args(NFS_PROGRAM, 3, IPPROTO_TCP));
    assert_eq!(port(c.call(&nfs_tcp).await), 2049);
    let mount_udp = pmap_call(2, PMAP_V2, 3, &getport_args(MOUNT_PROGRAM, 3, IPPROTO_UDP));
    assert_eq!(port(udp_call(t.udp, &mount_udp).await), 20048);
    let nfs_udp = pmap_call(3, PMAP_V2, 3, &getport_args(NFS_PROGRAM, 3, IPPROTO_UDP));
    assert_eq!(
        port(udp_call(t.udp, &nfs_udp).await),
        0,
        "NFS is not on UDP"
    );
    let self_udp = pmap_call(4, PMAP_V2, 3, &getport_args(PMAP_PROGRAM, 2, IPPROTO_UDP));
    assert_eq!(port(c.call(&self_udp).await), u32::from(t.udp.port()));
    // DUMP lists every registration with its protocol.
    let dump = success_results(c.call(&pmap_call(5, PMAP_V2, 4, &[])).await);
    let list: PmapList = from_slice(&dump).unwrap();
    assert!(list.0.contains(&Mapping {
        prog: MOUNT_PROGRAM,
        vers: 3,
        prot: IPPROTO_UDP,
        port: 20048
    }));
    assert_eq!(list.0.len(), 3 * 2 + 1 + 2 + 2);
    // An unknown version of the portmapper: PROG_MISMATCH 2..4.
    let (h, _) = c.call(&pmap_call(6, 5, 0, &[])).await;
    assert_eq!(
        h.status,
        ReplyStatus::Accepted {
            verf: Default::default(),
            stat: AcceptStat::ProgMismatch { low: 2, high: 4 }
        }
    );
}

#[tokio::test]
async fn rpcbind_getaddr_names_the_address_the_question_came_on() {
    // One server listening on two addresses, as a node serving two identities would.
    let (t, _pm) = start_portmap("127.0.0.11", 0).await.unwrap();
    let second: SocketAddr = "127.0.0.12:0".parse().unwrap();
    let second_udp = t.server.listen_udp(second).await.unwrap();
    let second = t.server.listen_tcp(second).await.unwrap();
    for (ip, tcp, udp) in [
        ("127.0.0.11", t.tcp, t.udp),
        ("127.0.0.12", second, second_udp),
    ] {
        let ip: IpAddr = ip.parse().unwrap();
        let mut c = TcpClient::connect(tcp).await;
        for vers in [RPCB_V3, RPCB_V4] {
            let q = pmap_call(10, vers, 3, &getaddr_args(NFS_PROGRAM, 3, "tcp"));
            let uaddr = string_of(&success_results(c.call(&q).await));
            assert_eq!(uaddr, format_uaddr(SocketAddr::new(ip, 2049)), "v{vers}");
        }
        // Empty netid means the transport of the question (UDP here).
        let q = pmap_call(11, RPCB_V4, 3, &getaddr_args(MOUNT_PROGRAM, 3, ""));
        let uaddr = string_of(&success_results(udp_call(udp, &q).await));
        assert_eq!(uaddr, format!("{ip}.78.80"));
        // Not registered: the empty string.
        let q = pmap_call(12, RPCB_V3, 3, &getaddr_args(NFS_PROGRAM, 3, "udp"));
        assert_eq!(string_of(&success_results(c.call(&q).await)), "");
        // rpcbind DUMP, with our address in every entry.
        let dump = success_results(c.call(&pmap_call(13, RPCB_V4, 4, &[])).await);
        let list: RpcbList = from_slice(&dump).unwrap();
        assert_eq!(list.0.len(), 11);
        assert!(list
            .0
            .iter()
            .all(|r| r.r_addr.starts_with(&format!("{ip}."))));
    }
}

#[tokio::test]
async fn set_and_unset_from_loopback_work() {
    let (t, pm) = start_portmap("127.0.0.1", 0).await.unwrap();
    let mut c = TcpClient::connect(t.tcp).await;
    let mapping = to_vec(&Mapping {
        prog: 300_019,
        vers: 1,
        prot: IPPROTO_TCP,
        port: 4321,
    });
    let ok = |r| word_of(&success_results(r)) == 1;
    assert!(ok(c.call(&pmap_call(1, PMAP_V2, 1, &mapping)).await));
    assert!(
        !ok(c.call(&pmap_call(2, PMAP_V2, 1, &mapping)).await),
        "SET does not overwrite"
    );
    let q = pmap_call(3, PMAP_V2, 3, &getport_args(300_019, 1, IPPROTO_TCP));
    assert_eq!(word_of(&success_results(c.call(&q).await)), 4321);
    // rpcbind v3 SET over UDP with a universal address.
    let rpcb = to_vec(&Rpcb {
        r_prog: 300_019,
        r_vers: 2,
        r_netid: "udp".into(),
        r_addr: "127.0.0.1.16.225".into(),
        r_owner: "test".into(),
    });
    assert!(ok(udp_call(t.udp, &pmap_call(4, RPCB_V3, 1, &rpcb)).await));
    assert!(pm
        .registrations()
        .iter()
        .any(|r| r.prog == 300_019 && r.vers == 2 && r.port == 4321 && r.netid == "udp"));
    assert!(ok(c.call(&pmap_call(5, PMAP_V2, 2, &mapping)).await));
    assert_eq!(word_of(&success_results(c.call(&q).await)), 0);
}

/// A call as the transport would hand it over, from `peer`.
fn call_from(peer: &str, record: Vec<u8>) -> Call {
    let (header, args_offset) = decode_call(&record).unwrap();
    Call {
        header,
        record: Bytes::from(record),
        args_offset,
        peer: peer.parse().unwrap(),
        local: "192.0.2.10:111".parse().unwrap(),
        transport: Transport::Udp,
    }
}

#[test]
fn set_and_unset_from_a_remote_peer_are_refused() {
    let pm = PortmapService::new();
    assert!(pm.set_program(NFS_PROGRAM, &[3], Some(2049), None));
    let mapping = |prog| {
        to_vec(&Mapping {
            prog,
            vers: 3,
            prot: IPPROTO_TCP,
            port: 1,
        })
    };
    let answer = |peer: &str, proc_, args: Vec<u8>| {
        let reply = pm.answer(&call_from(peer, pmap_call(1, PMAP_V2, proc_, &args)));
        let (h, results) = parse_reply(&reply.head);
        success_results((h, results))
    };
    // A remote peer may neither add nor remove; nothing changes.
    assert_eq!(word_of(&answer("192.0.2.99:700", 1, mapping(400_000))), 0);
    assert_eq!(
        word_of(&answer("192.0.2.99:700", 2, mapping(NFS_PROGRAM))),
        0
    );
    assert_eq!(
        word_of(&answer("[2001:db8::1]:700", 2, mapping(NFS_PROGRAM))),
        0
    );
    assert_eq!(pm.registrations().len(), 1);
    // Reading is allowed, and the uaddr names our local address.
    let q = pmap_call(2, RPCB_V4, 3, &getaddr_args(NFS_PROGRAM, 3, "tcp"));
    let reply = pm.answer(&call_from("192.0.2.99:700", q));
    let uaddr = string_of(&success_results(parse_reply(&reply.head)));
    assert_eq!(uaddr, "192.0.2.10.8.1");
    // DUMP over UDP from a remote peer would amplify forged requests: refused.
    for vers in [PMAP_V2, RPCB_V3, RPCB_V4] {
        let reply = pm.answer(&call_from("192.0.2.99:700", pmap_call(3, vers, 4, &[])));
        let (h, results) = parse_reply(&reply.head);
        assert_eq!(
            h.status,
            ReplyStatus::Accepted {
                verf: Default::default(),
                stat: AcceptStat::ProcUnavail
            }
        );
        assert!(results.is_empty());
    }
    let reply = pm.answer(&call_from("127.0.0.1:700", pmap_call(4, PMAP_V2, 4, &[])));
    let list: PmapList = from_slice(&success_results(parse_reply(&reply.head))).unwrap();
    assert_eq!(list.0.len(), 1);
    // Loopback (also as a v4-mapped v6 address) may.
    assert_eq!(
        word_of(&answer("[::ffff:127.0.0.1]:700", 1, mapping(400_000))),
        1
    );
    assert_eq!(pm.registrations().len(), 2);
}

// ---------- against rpcinfo (Debian package `rpcbind`) ----------

const RPCINFO: &str = "/usr/sbin/rpcinfo";
const RPCINFO_WAIT: Duration = Duration::from_secs(30);

/// Runs rpcinfo with `args`; `None` (with a message) if it is not installed.
fn rpcinfo(args: &[String]) -> Option<(bool, String)> {
    if !std::path::Path::new(RPCINFO).exists() {
        eprintln!("SKIP: {RPCINFO} missing (apt-get install rpcbind)");
        return None;
    }
    // Bounded: rpcinfo's own RPC timeouts are 25 s; a hung or looping rpcinfo is killed.
    let mut child = Command::new(RPCINFO)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rpcinfo");
    let deadline = Instant::now() + RPCINFO_WAIT;
    while child.try_wait().expect("wait for rpcinfo").is_none() {
        if Instant::now() > deadline {
            child.kill().expect("kill rpcinfo");
            panic!(
                "rpcinfo {} did not finish in {RPCINFO_WAIT:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("rpcinfo output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("rpcinfo {}:\n{text}", args.join(" "));
    Some((out.status.success(), text))
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Runs rpcinfo once per case off the runtime threads (the server keeps serving meanwhile).
async fn rpcinfo_all(cases: Vec<Vec<String>>) -> Option<Vec<(bool, String)>> {
    let run = tokio::task::spawn_blocking(move || cases.iter().map(|a| rpcinfo(a)).collect());
    run.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcinfo_pings_on_a_nonstandard_port() {
    let (t, _pm) = start_portmap("127.0.0.21", 0).await.unwrap();
    let uaddr = format_uaddr(t.tcp);
    let uaddr_udp = format_uaddr(t.udp);
    let toy = TOY_PROG.to_string();
    // `rpcinfo -n PORT -t HOST ...` still asks rpcbind on port 111 first (libtirpc), so
    // pings at a non-standard port use a universal address instead.
    let cases = vec![
        args(&["-a", &uaddr, "-T", "tcp", "100000"]),
        args(&["-a", &uaddr_udp, "-T", "udp", &toy]),
        args(&["-a", &uaddr_udp, "-T", "udp", "100000", "4"]),
    ];
    let Some(results) = rpcinfo_all(cases).await else {
        return;
    };
    for (ok, text) in &results {
        assert!(ok, "rpcinfo failed: {text}");
        assert!(text.contains("ready and waiting"), "{text}");
    }
    // Without a version, rpcinfo learns 2..4 from PROG_MISMATCH and pings each.
    for v in 2..=4 {
        assert!(results[0]
            .1
            .contains(&format!("program 100000 version {v} ready")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcinfo_queries_our_portmapper_on_port_111() {
    // Port 111 needs root (or CAP_NET_BIND_SERVICE) and a free 127.0.77.1:111.
    let (t, _pm) = match start_portmap("127.0.77.1", 111).await {
        Ok(started) => started,
        Err(err) => {
            eprintln!("SKIP: cannot bind 127.0.77.1:111 ({err}); needs root and a free port");
            return;
        }
    };
    let toy = TOY_PROG.to_string();
    let cases = vec![
        args(&["-p", "127.0.77.1"]),
        args(&["-s", "127.0.77.1"]),
        // GETADDR through rpcbind, then a ping at the returned universal address.
        args(&["-T", "tcp", "127.0.77.1", &toy, "1"]),
        args(&["-T", "udp", "127.0.77.1", &toy, "1"]),
        args(&["-l", "127.0.77.1", "100003", "3"]),
    ];
    let Some(results) = rpcinfo_all(cases).await else {
        return;
    };
    for (ok, text) in &results {
        assert!(ok, "rpcinfo failed: {text}");
    }
    let dump = &results[0].1;
    for line in [
        "100000    2   tcp    111  portmapper",
        "100003    3   tcp   2049  nfs",
        "100005    3   udp  20048  mountd",
    ] {
        let want: Vec<&str> = line.split_whitespace().collect();
        assert!(
            dump.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == want),
            "`{line}` not in:\n{dump}"
        );
    }
    assert!(results[1].1.contains("100000  4,3,2"), "{}", results[1].1);
    assert!(results[2].1.contains("ready and waiting"));
    assert!(results[3].1.contains("ready and waiting"));
    assert!(results[4].1.contains("127.0.77.1.8.1"), "{}", results[4].1);
    drop(t);
}
