//! The transport over real sockets on 127.0.0.1: framing, concurrency and ordering, bounds,
//! protocol errors, UDP, timeouts and stop.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use twinfiler_proto::record::{record_mark, RECORD_BYTES_MAX};
use twinfiler_proto::rpc::{AcceptStat, AuthStat, Rejected, ReplyHeader, ReplyStatus};
use twinfiler_rpc::ServerConfig;

fn stat_of(header: &ReplyHeader) -> AcceptStat {
    match &header.status {
        ReplyStatus::Accepted { stat, .. } => *stat,
        other => panic!("expected an accepted reply, got {other:?}"),
    }
}

fn tag_of(results: &[u8]) -> u32 {
    u32::from_be_bytes(results[..4].try_into().unwrap())
}

#[tokio::test]
async fn null_and_echo_over_tcp() {
    let t = start(ServerConfig::default()).await;
    let mut c = TcpClient::connect(t.tcp).await;
    let (h, results) = c.call(&toy_call(1, PROC_NULL, &[])).await;
    assert_eq!((h.xid, stat_of(&h)), (1, AcceptStat::Success));
    assert!(results.is_empty());
    let payload: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
    let (h, results) = c.call(&toy_call(2, PROC_ECHO, &payload)).await;
    assert_eq!((h.xid, stat_of(&h)), (2, AcceptStat::Success));
    assert_eq!(results, payload);
    let stats = t.server.stats();
    assert_eq!(stats.calls, 2);
    assert_eq!(stats.replies, 2);
    assert!(stats.bytes_in > 4000 && stats.bytes_out > 4000, "{stats:?}");
}

#[tokio::test]
async fn replies_go_out_in_completion_order() {
    let t = start(ServerConfig::default()).await;
    let mut c = TcpClient::connect(t.tcp).await;
    const N: u32 = 32;
    for tag in 0..N {
        c.send(&toy_call(100 + tag, PROC_GATE, &word(tag))).await;
    }
    t.toy.wait_gated(N as usize).await;
    // A call sent after the blocked ones overtakes them.
    let (h, _) = c.call(&toy_call(7, PROC_NULL, &[])).await;
    assert_eq!(h.xid, 7);
    // Release in a scrambled order; each reply arrives as its call completes.
    let order: Vec<u32> = (0..N).map(|i| (i * 13 + 5) % N).collect();
    assert_eq!(order.iter().collect::<HashSet<_>>().len(), N as usize);
    for &tag in &order {
        t.toy.release(tag);
        let (h, results) = parse_reply(&c.recv().await);
        assert_eq!((h.xid, tag_of(&results)), (100 + tag, tag));
    }
    assert_eq!(t.toy.gated(), 0);
}

#[tokio::test]
async fn many_pipelined_calls_on_one_connection() {
    let t = start(ServerConfig::default()).await;
    let c = TcpClient::connect(t.tcp).await;
    let (mut rd, mut wr) = c.stream.into_split();
    const N: u32 = 2000;
    let payload_of = |xid: u32| -> Vec<u8> { vec![xid as u8; (xid as usize % 50) * 4] };
    let sender = tokio::spawn(async move {
        for xid in 0..N {
            let rec = toy_call(xid, PROC_ECHO, &payload_of(xid));
            wr.write_all(&twinfiler_proto::record::frame(&rec))
                .await
                .unwrap();
        }
        wr
    });
    let mut seen = HashSet::new();
    {
        use tokio::io::AsyncReadExt;
        let mut dec = twinfiler_proto::record::RecordDecoder::default();
        let mut buf = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while seen.len() < N as usize {
            assert!(tokio::time::Instant::now() < deadline, "timed out");
            let mut chunk = [0u8; 65536];
            let n = tokio::time::timeout(WAIT, rd.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "server closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            let mut input = &buf[..];
            while !input.is_empty() {
                let fed = dec.feed(input).unwrap();
                input = &input[fed.consumed..];
                if let Some(rec) = fed.record {
                    let (h, results) = parse_reply(&rec);
                    assert_eq!(results, payload_of(h.xid));
                    assert!(seen.insert(h.xid), "duplicate reply {}", h.xid);
                }
            }
            buf.clear();
        }
    }
    let _wr = sender.await.unwrap();
    assert_eq!(t.server.stats().calls, u64::from(N));
}

#[tokio::test]
async fn per_connection_inflight_bound_holds() {
    const PER_CONN: usize = 4;
    let t = start(ServerConfig {
        inflight_per_connection_max: PER_CONN,
        ..ServerConfig::default()
    })
    .await;
    let mut c = TcpClient::connect(t.tcp).await;
    for tag in 0..20u32 {
        c.send(&toy_call(tag, PROC_GATE, &word(tag))).await;
    }
    t.toy.wait_gated(PER_CONN).await;
    // Give the server every chance to overrun the bound (this proves an absence).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(t.toy.gated_max(), PER_CONN);
    let stats = t.server.stats();
    assert_eq!(stats.calls_inflight, PER_CONN as u64);
    assert!(stats.backpressure_waits >= 1, "{stats:?}");
    // Another connection is not held back by this one.
    let mut other = TcpClient::connect(t.tcp).await;
    let (h, _) = other.call(&toy_call(99, PROC_NULL, &[])).await;
    assert_eq!(h.xid, 99);
    t.toy.release_all();
    let mut xids = HashSet::new();
    for _ in 0..20 {
        let (h, _) = parse_reply(&c.recv().await);
        xids.insert(h.xid);
    }
    assert_eq!(xids, (0..20).collect());
    assert_eq!(t.toy.gated_max(), PER_CONN);
    eventually("in-flight gauge back to 0", || {
        t.server.stats().calls_inflight == 0
    })
    .await;
}

#[tokio::test]
async fn total_inflight_bound_holds_across_connections() {
    const TOTAL: usize = 10;
    let t = start(ServerConfig {
        inflight_per_connection_max: 8,
        inflight_total_max: TOTAL,
        ..ServerConfig::default()
    })
    .await;
    let mut clients = Vec::new();
    for c in 0..3u32 {
        let mut client = TcpClient::connect(t.tcp).await;
        for i in 0..8u32 {
            let tag = c * 100 + i;
            client.send(&toy_call(tag, PROC_GATE, &word(tag))).await;
        }
        clients.push(client);
    }
    t.toy.wait_gated(TOTAL).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(t.toy.gated_max(), TOTAL);
    assert_eq!(t.server.stats().calls_inflight, TOTAL as u64);
    t.toy.release_all();
    for client in &mut clients {
        for _ in 0..8 {
            let (h, results) = parse_reply(&client.recv().await);
            assert_eq!(h.xid, tag_of(&results));
        }
    }
    assert_eq!(t.toy.gated_max(), TOTAL);
}

#[tokio::test]
async fn oversized_fragment_closes_the_connection() {
    let t = start(ServerConfig::default()).await;
    let mut c = TcpClient::connect(t.tcp).await;
    let (h, _) = c.call(&toy_call(1, PROC_NULL, &[])).await;
    assert_eq!(h.xid, 1);
    // Claims 2 GiB - 1 bytes; must be refused on the header, without allocating.
    c.send_raw(&[0xff, 0xff, 0xff, 0xff]).await;
    c.send_raw(&[0u8; 1024]).await;
    c.expect_closed().await;
    // Just over the cap, as several fragments that add up.
    let mut c = TcpClient::connect(t.tcp).await;
    c.send_raw(&record_mark(RECORD_BYTES_MAX - 8, false)).await;
    c.send_raw(&vec![0u8; RECORD_BYTES_MAX - 8]).await;
    c.send_raw(&record_mark(16, true)).await;
    c.expect_closed().await;
    eventually("both protocol errors counted", || {
        t.server.stats().connections_protocol_errors == 2
    })
    .await;
    // The server still serves.
    let mut c = TcpClient::connect(t.tcp).await;
    let (h, _) = c.call(&toy_call(2, PROC_NULL, &[])).await;
    assert_eq!(h.xid, 2);
}

#[tokio::test]
async fn largest_record_fits_and_big_replies_are_whole() {
    let t = start(ServerConfig::default()).await;
    let mut c = TcpClient::connect(t.tcp).await;
    // A 1 MiB payload (a WRITE's worth), sent in 1000-byte pieces.
    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7) as u8).collect();
    let framed = twinfiler_proto::record::frame(&toy_call(5, PROC_ECHO, &payload));
    for piece in framed.chunks(1000) {
        c.send_raw(piece).await;
    }
    let (h, results) = parse_reply(&c.recv().await);
    assert_eq!((h.xid, stat_of(&h)), (5, AcceptStat::Success));
    assert!(results == payload, "echoed payload differs");
    let (h, results) = c
        .call(&toy_call(6, PROC_BIG, &word(1024 * 1024 + 12)))
        .await;
    assert_eq!(h.xid, 6);
    assert_eq!(results.len(), 1024 * 1024 + 12);
    assert!(results
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (i % 251) as u8));
}

#[tokio::test]
async fn bad_headers_get_the_right_reply() {
    let t = start(ServerConfig::default()).await;
    let mut c = TcpClient::connect(t.tcp).await;

    // RPC version 3: RPC_MISMATCH 2..2.
    let mut rec = toy_call(10, PROC_NULL, &[]);
    rec[8..12].copy_from_slice(&3u32.to_be_bytes());
    let (h, _) = c.call(&rec).await;
    assert_eq!(h.xid, 10);
    assert_eq!(
        h.status,
        ReplyStatus::Denied(Rejected::RpcMismatch { low: 2, high: 2 })
    );

    // AUTH_SYS credential whose body is not an authsys_parms: AUTH_ERROR BADCRED.
    let mut rec = Vec::new();
    for w in [
        11u32,
        0,
        2,
        TOY_PROG,
        TOY_VERS,
        PROC_NULL,
        1,
        4,
        0xdead_beef,
        0,
        0,
    ] {
        rec.extend_from_slice(&w.to_be_bytes());
    }
    let (h, _) = c.call(&rec).await;
    assert_eq!(h.xid, 11);
    assert_eq!(
        h.status,
        ReplyStatus::Denied(Rejected::AuthError(AuthStat::BadCred))
    );

    // Truncated after the program number: GARBAGE_ARGS.
    let rec = toy_call(12, PROC_NULL, &[]);
    let (h, _) = c.call(&rec[..16]).await;
    assert_eq!((h.xid, stat_of(&h)), (12, AcceptStat::GarbageArgs));

    // Unknown program: PROG_UNAVAIL.
    let (h, _) = c.call(&call_record(13, 0x3fff_0000, 1, 0, &[])).await;
    assert_eq!((h.xid, stat_of(&h)), (13, AcceptStat::ProgUnavail));

    // A REPLY sent to us, and a record too short for an xid: dropped, connection kept.
    let mut reply_msg = Vec::new();
    for w in [14u32, 1, 0, 0, 0, 0] {
        reply_msg.extend_from_slice(&w.to_be_bytes());
    }
    c.send(&reply_msg).await;
    c.send(&[1, 2]).await;
    let (h, _) = c.call(&toy_call(15, PROC_NULL, &[])).await;
    assert_eq!(h.xid, 15, "dropped messages must not be answered");
    let stats = t.server.stats();
    assert_eq!(stats.calls_rejected, 6, "{stats:?}");
    assert_eq!(stats.connections_protocol_errors, 0);
}

#[tokio::test]
async fn partial_records_and_fragments_byte_by_byte() {
    let t = start(ServerConfig::default()).await;
    let mut c = TcpClient::connect(t.tcp).await;
    let echo = toy_call(20, PROC_ECHO, b"fragmented payload!!");
    let mut stream = Vec::new();
    // The echo call in three fragments, one of them empty.
    stream.extend_from_slice(&record_mark(10, false));
    stream.extend_from_slice(&echo[..10]);
    stream.extend_from_slice(&record_mark(0, false));
    stream.extend_from_slice(&record_mark(echo.len() - 10, true));
    stream.extend_from_slice(&echo[10..]);
    stream.extend_from_slice(&twinfiler_proto::record::frame(&toy_call(
        21,
        PROC_NULL,
        &[],
    )));
    for byte in &stream {
        c.send_raw(std::slice::from_ref(byte)).await;
        c.stream.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    let mut replies = Vec::new();
    for _ in 0..2 {
        replies.push(parse_reply(&c.recv().await));
    }
    replies.sort_by_key(|(h, _)| h.xid);
    assert_eq!(replies[0].0.xid, 20);
    assert_eq!(replies[0].1, b"fragmented payload!!");
    assert_eq!(replies[1].0.xid, 21);
}

#[tokio::test]
async fn drop_outcome_sends_nothing() {
    let t = start(ServerConfig::default()).await;
    let mut c = TcpClient::connect(t.tcp).await;
    c.send(&toy_call(30, PROC_DROP, &[])).await;
    let (h, _) = c.call(&toy_call(31, PROC_NULL, &[])).await;
    assert_eq!(h.xid, 31);
    eventually("drop counted", || t.server.stats().calls_dropped == 1).await;
    // Over UDP too: the next datagram's reply is the first one we get.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&toy_call(32, PROC_DROP, &[]), t.udp)
        .await
        .unwrap();
    socket
        .send_to(&toy_call(33, PROC_NULL, &[]), t.udp)
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let (n, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parse_reply(&buf[..n]).0.xid, 33);
}

#[tokio::test]
async fn udp_calls() {
    let t = start(ServerConfig::default()).await;
    let (h, results) = udp_call(t.udp, &toy_call(40, PROC_ECHO, b"over udp")).await;
    assert_eq!((h.xid, stat_of(&h)), (40, AcceptStat::Success));
    assert_eq!(results, b"over udp");
    // Bad header over UDP.
    let (h, _) = udp_call(t.udp, &toy_call(41, PROC_NULL, &[])[..16]).await;
    assert_eq!((h.xid, stat_of(&h)), (41, AcceptStat::GarbageArgs));
    // A reply that cannot fit a datagram becomes SYSTEM_ERR.
    let (h, results) = udp_call(t.udp, &toy_call(42, PROC_BIG, &word(70_000))).await;
    assert_eq!((h.xid, stat_of(&h)), (42, AcceptStat::SystemErr));
    assert!(results.is_empty());
    // The largest that fits goes out whole.
    let (h, results) = udp_call(t.udp, &toy_call(43, PROC_BIG, &word(65_000))).await;
    assert_eq!((h.xid, results.len()), (43, 65_000));
    let stats = t.server.stats();
    assert_eq!(stats.replies_too_large, 1);
    assert_eq!(stats.calls, 4);
}

#[tokio::test]
async fn udp_inflight_bound_holds() {
    let t = start(ServerConfig {
        udp_inflight_max: 3,
        ..ServerConfig::default()
    })
    .await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for tag in 0..6u32 {
        socket
            .send_to(&toy_call(tag, PROC_GATE, &word(tag)), t.udp)
            .await
            .unwrap();
    }
    t.toy.wait_gated(3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(t.toy.gated_max(), 3);
    t.toy.release_all();
    let mut xids = HashSet::new();
    let mut buf = [0u8; 1024];
    for _ in 0..6 {
        let (n, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        xids.insert(parse_reply(&buf[..n]).0.xid);
    }
    assert_eq!(xids, (0..6).collect());
}

#[tokio::test]
async fn idle_connections_are_closed_busy_ones_are_not() {
    let t = start(ServerConfig {
        idle_timeout_ms: 300,
        ..ServerConfig::default()
    })
    .await;
    let mut busy = TcpClient::connect(t.tcp).await;
    busy.send(&toy_call(1, PROC_GATE, &word(1))).await;
    t.toy.wait_gated(1).await;
    let mut idle = TcpClient::connect(t.tcp).await;
    let (h, _) = idle.call(&toy_call(2, PROC_NULL, &[])).await;
    assert_eq!(h.xid, 2);
    idle.expect_closed().await;
    assert_eq!(t.server.stats().connections_idle_closed, 1);
    // The busy connection outlived several idle periods and still gets its reply.
    tokio::time::sleep(Duration::from_millis(700)).await;
    t.toy.release(1);
    let (h, _) = parse_reply(&busy.recv().await);
    assert_eq!(h.xid, 1);
    // Once its call is done, it idles out too.
    busy.expect_closed().await;
    eventually("no connection open", || {
        t.server.stats().connections_open == 0
    })
    .await;
}

#[tokio::test]
async fn connections_beyond_the_bound_are_closed() {
    let t = start(ServerConfig {
        connections_max: 2,
        ..ServerConfig::default()
    })
    .await;
    let mut a = TcpClient::connect(t.tcp).await;
    let mut b = TcpClient::connect(t.tcp).await;
    assert_eq!(a.call(&toy_call(1, PROC_NULL, &[])).await.0.xid, 1);
    assert_eq!(b.call(&toy_call(2, PROC_NULL, &[])).await.0.xid, 2);
    let mut c = TcpClient::connect(t.tcp).await;
    c.expect_closed().await;
    assert_eq!(t.server.stats().connections_rejected, 1);
    drop(a);
    eventually("a slot is free", || t.server.stats().connections_open == 1).await;
    let mut d = TcpClient::connect(t.tcp).await;
    assert_eq!(d.call(&toy_call(3, PROC_NULL, &[])).await.0.xid, 3);
}

#[tokio::test]
async fn client_that_stops_reading_is_cut_off() {
    let t = start(ServerConfig {
        write_timeout_ms: 300,
        ..ServerConfig::default()
    })
    .await;
    let mut c = TcpClient::connect(t.tcp).await;
    // 64 MiB of replies; the client reads none of them.
    for xid in 0..64u32 {
        c.send(&toy_call(xid, PROC_BIG, &word(1024 * 1024))).await;
    }
    eventually("the stuck connection is closed", || {
        let s = t.server.stats();
        s.connections_open == 0 && s.calls_inflight == 0
    })
    .await;
}

#[tokio::test]
async fn stop_drains_calls_in_flight() {
    let t = start(ServerConfig::default()).await;
    let mut c = TcpClient::connect(t.tcp).await;
    c.send(&toy_call(1, PROC_GATE, &word(1))).await;
    t.toy.wait_gated(1).await;
    let server = t.server.clone();
    let stop = tokio::spawn(async move { server.stop(WAIT).await });
    // The listener goes away: new connections are refused.
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(t.tcp).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(t
        .server
        .listen_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .is_err());
    t.toy.release(1);
    let (h, results) = parse_reply(&c.recv().await);
    assert_eq!((h.xid, tag_of(&results)), (1, 1));
    c.expect_closed().await;
    let report = stop.await.unwrap();
    assert!(report.drained, "{report:?}");
    assert_eq!(report.tasks_left, 0);
}

#[tokio::test]
async fn stop_abandons_calls_after_the_grace_period() {
    let t = start(ServerConfig::default()).await;
    let mut c = TcpClient::connect(t.tcp).await;
    c.send(&toy_call(1, PROC_GATE, &word(1))).await;
    t.toy.wait_gated(1).await;
    let report = t.server.stop(Duration::from_millis(200)).await;
    assert!(!report.drained);
    assert_eq!(report.tasks_left, 0);
    c.expect_closed().await;
    assert_eq!(t.toy.gated(), 0, "the call future was dropped");
    assert_eq!(t.server.stats().calls_inflight, 0);
}

#[tokio::test]
async fn a_panicking_program_gets_system_err_and_the_connection_survives() {
    let t = start(ServerConfig::default()).await;
    let mut c = TcpClient::connect(t.tcp).await;
    for (xid, when) in [(50, 0u32), (51, 1)] {
        let (h, results) = c.call(&toy_call(xid, PROC_PANIC, &word(when))).await;
        assert_eq!((h.xid, stat_of(&h)), (xid, AcceptStat::SystemErr));
        assert!(results.is_empty());
    }
    let (h, _) = c.call(&toy_call(52, PROC_NULL, &[])).await;
    assert_eq!(h.xid, 52);
    let (h, _) = udp_call(t.udp, &toy_call(53, PROC_PANIC, &word(1))).await;
    assert_eq!((h.xid, stat_of(&h)), (53, AcceptStat::SystemErr));
    eventually("no call left in flight", || {
        t.server.stats().calls_inflight == 0
    })
    .await;
}

#[test]
fn unusable_bounds_are_refused() {
    use twinfiler_rpc::server::ConfigError;
    let bad = |c: ServerConfig| twinfiler_rpc::RpcServer::new(c).unwrap_err();
    assert_eq!(
        bad(ServerConfig {
            inflight_total_max: 0,
            ..ServerConfig::default()
        }),
        ConfigError::Zero {
            field: "inflight_total_max"
        }
    );
    assert!(matches!(
        bad(ServerConfig {
            inflight_per_connection_max: 100,
            inflight_total_max: 10,
            ..ServerConfig::default()
        }),
        ConfigError::PerConnectionAboveTotal { .. }
    ));
    assert!(matches!(
        bad(ServerConfig {
            record_bytes_max: 1 << 31,
            ..ServerConfig::default()
        }),
        ConfigError::RecordTooLarge(_)
    ));
    ServerConfig::default().validate().unwrap();
}

/// A small deterministic generator (xorshift64*), so a failing stream can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random records: plausible call headers with random words mixed in, framed as one or more
/// fragments, sometimes with a broken record mark.
fn garbage_stream(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(20) {
        // Every procedure but PROC_PANIC (tested on its own; its messages would clutter).
        let proc_ =
            [PROC_NULL, PROC_ECHO, PROC_DROP, PROC_BIG, PROC_GATE, 6][rng.below(6) as usize];
        let mut rec = toy_call(rng.next() as u32, proc_, &[]);
        for _ in 0..rng.below(12) {
            let at = rng.below(rec.len() as u64 + 1) as usize;
            let w = (rng.next() as u32).to_be_bytes();
            match rng.below(3) {
                0 if at + 4 <= rec.len() => rec[at..at + 4].copy_from_slice(&w),
                1 => rec.truncate(at),
                _ => rec.extend_from_slice(&w),
            }
        }
        match rng.below(10) {
            0 => out.extend_from_slice(&(rng.next() as u32).to_be_bytes()),
            1..=2 if rec.len() > 1 => {
                let cut = rec.len() / 2;
                out.extend_from_slice(&record_mark(cut, false));
                out.extend_from_slice(&rec[..cut]);
                out.extend_from_slice(&record_mark(rec.len() - cut, true));
                out.extend_from_slice(&rec[cut..]);
            }
            _ => out.extend_from_slice(&twinfiler_proto::record::frame(&rec)),
        }
    }
    out
}

#[tokio::test]
async fn random_garbage_never_takes_the_server_down() {
    let t = start(ServerConfig {
        // Records claiming more than this are violations; keeps random lengths cheap.
        record_bytes_max: 64 * 1024,
        ..ServerConfig::default()
    })
    .await;
    t.toy.release_all(); // gate calls in the garbage finish at once
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let stream = garbage_stream(&mut rng);
        let mut c = TcpClient::connect(t.tcp).await;
        // The server may close mid-stream; a failed write is fine.
        let _ = c.stream.write_all(&stream).await;
        let _ = c.stream.shutdown().await;
        c.expect_closed().await;
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for chunk in stream.chunks(1 + rng.below(200) as usize).take(5) {
            socket.send_to(chunk, t.udp).await.unwrap();
        }
    }
    let mut c = TcpClient::connect(t.tcp).await;
    let (h, _) = c.call(&toy_call(77, PROC_NULL, &[])).await;
    assert_eq!(h.xid, 77);
    drop(c);
    eventually("everything settled", || {
        let s = t.server.stats();
        s.calls_inflight == 0 && s.connections_open == 0
    })
    .await;
    let s = t.server.stats();
    assert!(s.calls_rejected > 0 && s.calls > 100, "{s:?}");
}

#[tokio::test]
async fn at_the_bound_the_socket_is_not_read() {
    let t = start(ServerConfig {
        inflight_per_connection_max: 2,
        ..ServerConfig::default()
    })
    .await;
    let c = TcpClient::connect(t.tcp).await;
    let (rd, mut wr) = c.stream.into_split();
    for tag in 0..2u32 {
        let rec = toy_call(tag, PROC_GATE, &word(tag));
        wr.write_all(&twinfiler_proto::record::frame(&rec))
            .await
            .unwrap();
    }
    t.toy.wait_gated(2).await;
    // 16 MiB of calls behind the two blocked ones: far more than socket buffers hold.
    let payload = vec![0x5au8; 256 * 1024];
    let writer = tokio::spawn(async move {
        for xid in 10..74u32 {
            let rec = toy_call(xid, PROC_ECHO, &payload);
            wr.write_all(&twinfiler_proto::record::frame(&rec))
                .await
                .unwrap();
        }
        wr
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bytes_in = t.server.stats().bytes_in;
    // Read: the two gate calls, at most one framed record waiting for a permit, and the
    // read-ahead buffer — nowhere near the 16 MiB sent.
    assert!(
        bytes_in < 1024 * 1024,
        "server kept reading: {bytes_in} bytes"
    );
    assert!(
        !writer.is_finished(),
        "client writes should be blocked by flow control"
    );
    assert_eq!(t.server.stats().calls, 2);
    t.toy.release_all();
    // Read the replies while the writer finishes (each side needs the other to progress).
    let mut rd = rd;
    let mut decoder = twinfiler_proto::record::RecordDecoder::default();
    let mut xids = HashSet::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    while xids.len() < 66 {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        use tokio::io::AsyncReadExt;
        let n = tokio::time::timeout(WAIT, rd.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "server closed the connection");
        let mut input = &chunk[..n];
        while !input.is_empty() {
            let fed = decoder.feed(input).unwrap();
            input = &input[fed.consumed..];
            if let Some(rec) = fed.record {
                let (h, _) = parse_reply(&rec);
                assert!(h.xid < 2 || (10..74).contains(&h.xid));
                assert!(xids.insert(h.xid));
            }
        }
    }
    tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
}

#[tokio::test]
async fn replies_still_flow_after_the_client_half_closes() {
    let t = start(ServerConfig::default()).await;
    let mut c = TcpClient::connect(t.tcp).await;
    for tag in 0..3u32 {
        c.send(&toy_call(tag, PROC_GATE, &word(tag))).await;
    }
    t.toy.wait_gated(3).await;
    c.stream.shutdown().await.unwrap();
    t.toy.release_all();
    let mut xids: Vec<u32> = Vec::new();
    for _ in 0..3 {
        xids.push(parse_reply(&c.recv().await).0.xid);
    }
    xids.sort();
    assert_eq!(xids, [0, 1, 2]);
    c.expect_closed().await;
}

#[tokio::test]
async fn replies_of_many_pieces_go_out_whole_and_in_several_writes() {
    let t = start(ServerConfig::default()).await;
    let mut c = TcpClient::connect(t.tcp).await;
    // Eight 1 MiB replies of 1000-byte pieces in flight together: one batch holds far more
    // pieces than one writev takes.
    let len = 1024 * 1024;
    assert!(len / BIG_PIECE_BYTES > twinfiler_rpc::server::IOVECS_PER_WRITE_MAX);
    for xid in 0..8u32 {
        c.send(&toy_call(xid, PROC_BIG, &word(len as u32))).await;
    }
    let mut seen = HashSet::new();
    for _ in 0..8 {
        let (h, results) = parse_reply(&c.recv().await);
        assert_eq!(stat_of(&h), AcceptStat::Success);
        assert_eq!(results.len(), len);
        assert!(results
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8));
        assert!(seen.insert(h.xid), "xid {} twice", h.xid);
    }
}

#[tokio::test]
async fn peers_lists_open_connections() {
    let t = start(ServerConfig::default()).await;
    assert!(t.server.peers().is_empty());
    let mut a = TcpClient::connect(t.tcp).await;
    let mut b = TcpClient::connect(t.tcp).await;
    // A reply proves the server accepted (and listed) each connection.
    a.call(&toy_call(1, PROC_NULL, &[])).await;
    b.call(&toy_call(2, PROC_NULL, &[])).await;
    let addrs = |s: &TestServer| -> Vec<_> { s.server.peers().iter().map(|p| p.addr).collect() };
    let (a_addr, b_addr) = (
        a.stream.local_addr().unwrap(),
        b.stream.local_addr().unwrap(),
    );
    assert_eq!(addrs(&t), vec![a_addr, b_addr], "oldest first");
    assert!(t.server.peers().iter().all(|p| p.local == t.tcp));
    drop(a);
    eventually("a closed connection leaves the list", || {
        addrs(&t) == vec![b_addr]
    })
    .await;
}

/// A poll budget no test's next call can miss.
const POLL_LONG_US: u64 = 2_000_000;

/// Calls `xids` one at a time, a little apart (the server has answered each before the next
/// is sent).
async fn one_at_a_time(c: &mut TcpClient, xids: std::ops::Range<u32>) {
    for xid in xids {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let (h, _) = c.call(&toy_call(xid, PROC_NULL, &[])).await;
        assert_eq!((h.xid, stat_of(&h)), (xid, AcceptStat::Success));
    }
}

/// A server polling for `POLL_LONG_US`, and a client whose lone calls made it poll.
async fn polled_for_client() -> (TestServer, TcpClient) {
    let t = start(ServerConfig {
        busy_poll_us: POLL_LONG_US,
        ..ServerConfig::default()
    })
    .await;
    let mut c = TcpClient::connect(t.tcp).await;
    one_at_a_time(&mut c, 0..twinfiler_rpc::BUSY_POLL_AFTER_LONE_CALLS).await;
    assert_eq!(t.server.stats().calls_polled, 0);
    (t, c)
}

#[tokio::test]
async fn a_client_waiting_for_each_reply_is_polled_for() {
    let t = start(ServerConfig {
        busy_poll_us: POLL_LONG_US,
        ..ServerConfig::default()
    })
    .await;
    let mut c = TcpClient::connect(t.tcp).await;
    const N: u32 = 20;
    one_at_a_time(&mut c, 0..N).await;
    // Every call after the first lone ones: the reader was polling when each came, which
    // also means the writer told it each time the answer had gone out.
    let stats = t.server.stats();
    let polled = u64::from(N - twinfiler_rpc::BUSY_POLL_AFTER_LONE_CALLS);
    assert_eq!(
        (stats.calls, stats.calls_polled),
        (u64::from(N), polled),
        "{stats:?}"
    );
}

#[tokio::test]
async fn without_polling_no_call_is_polled() {
    let t = start(ServerConfig::default()).await;
    let mut c = TcpClient::connect(t.tcp).await;
    one_at_a_time(&mut c, 0..20).await;
    let stats = t.server.stats();
    assert_eq!((stats.calls, stats.calls_polled), (20, 0), "{stats:?}");
}

#[tokio::test]
async fn a_poll_that_finds_nothing_gives_way_to_the_ordinary_wait() {
    let t = start(ServerConfig {
        busy_poll_us: 1_000,
        ..ServerConfig::default()
    })
    .await;
    let mut c = TcpClient::connect(t.tcp).await;
    one_at_a_time(&mut c, 0..20).await;
    let polled = t.server.stats().calls_polled;
    // Far beyond the budget: the reader sleeps in the event loop, and still gets the call.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (h, _) = c.call(&toy_call(20, PROC_NULL, &[])).await;
    assert_eq!((h.xid, stat_of(&h)), (20, AcceptStat::Success));
    assert_eq!(t.server.stats().calls_polled, polled);
}

#[tokio::test]
async fn a_client_with_calls_in_flight_is_not_polled_for() {
    let (t, mut c) = polled_for_client().await;
    let lone = twinfiler_rpc::BUSY_POLL_AFTER_LONE_CALLS;
    // The reader polls now; a call that blocks comes in that way.
    c.send(&toy_call(100, PROC_GATE, &word(1))).await;
    t.toy.wait_gated(1).await;
    assert_eq!(t.server.stats().calls_polled, 1);
    // Sent while that call is in flight: read the ordinary way, and the client now counts
    // as one that keeps calls in flight.
    let (h, _) = c.call(&toy_call(101, PROC_NULL, &[])).await;
    assert_eq!(h.xid, 101);
    t.toy.release(1);
    let (h, _) = parse_reply(&c.recv().await);
    assert_eq!(h.xid, 100);
    one_at_a_time(&mut c, 200..200 + lone).await;
    assert_eq!(t.server.stats().calls_polled, 1);
    // Lone calls again, as many as it takes: polled for once more.
    let (h, _) = c.call(&toy_call(300, PROC_NULL, &[])).await;
    assert_eq!(h.xid, 300);
    assert_eq!(t.server.stats().calls_polled, 2);
}

#[tokio::test]
async fn a_call_answered_without_a_reply_still_lets_the_connection_poll() {
    let (t, mut c) = polled_for_client().await;
    c.send(&toy_call(100, PROC_DROP, &[])).await;
    eventually("drop counted", || t.server.stats().calls_dropped == 1).await;
    assert_eq!(t.server.stats().calls_polled, 1);
    // The dropped call left nothing unanswered: the reader polls for the next one.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (h, _) = c.call(&toy_call(101, PROC_NULL, &[])).await;
    assert_eq!(h.xid, 101);
    assert_eq!(t.server.stats().calls_polled, 2);
}
