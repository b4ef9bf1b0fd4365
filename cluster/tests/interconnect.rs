//! The interconnect on loopback: two nodes, two links through cuttable TCP proxies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cluster::health::Health;
use cluster::interconnect::frame::PairKey;
use cluster::interconnect::{Interconnect, InterconnectConfig, InterconnectEvent, LinkAddrs};
use cluster::takeover::StateCode;
use cluster::wire::{Heartbeat, Message};
use cluster::NodeId;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::Receiver;

const EVENT_WAIT_MS: u64 = 5_000;

/// A TCP relay that can be cut (closes its connections and refuses new ones: the peer sees a
/// reset) or turned into a black hole (connections stay open, bytes vanish: a pulled cable).
struct Proxy {
    addr: SocketAddr,
    cut: Arc<tokio::sync::watch::Sender<bool>>,
    blackhole: Arc<tokio::sync::watch::Sender<bool>>,
}

/// Copies `from` to `to` until EOF or an error, dropping the bytes while `blackhole` is set.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    blackhole: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !*blackhole.borrow() && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let cut = Arc::new(tokio::sync::watch::channel(false).0);
        let blackhole = Arc::new(tokio::sync::watch::channel(false).0);
        let (cut2, bh2) = (cut.clone(), blackhole.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *cut2.borrow() {
                    continue; // dropped: the dialer sees a reset
                }
                let mut watch = cut2.subscribe();
                let bh = bh2.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pump(cr, sw, bh.clone()) => {}
                        _ = pump(sr, cw, bh) => {}
                        _ = watch.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            cut,
            blackhole,
        }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    fn set_blackhole(&self, on: bool) {
        self.blackhole.send_replace(on);
    }
}

fn config(me: u8, links: Vec<LinkAddrs>, key: &str) -> InterconnectConfig {
    let mut c = InterconnectConfig::new(
        NodeId(me),
        NodeId(1 - me),
        links,
        PairKey::from_passphrase(key),
    );
    c.ping_interval_ms = 20;
    c.link_silence_ms = 200;
    c.reconnect_ms = 20;
    c
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Starts node 1 (acceptor) with `n` links, and node 0 (dialer) through one proxy per link.
async fn pair(
    n: usize,
    key0: &str,
    key1: &str,
) -> (
    Interconnect,
    Receiver<InterconnectEvent>,
    Interconnect,
    Receiver<InterconnectEvent>,
    Vec<Proxy>,
) {
    let acc_links = (0..n)
        .map(|_| LinkAddrs {
            local: local(0),
            peer: local(0),
        })
        .collect();
    let (b, brx) = Interconnect::start(config(1, acc_links, key1))
        .await
        .expect("start b");
    let mut proxies = Vec::new();
    for addr in b.listening() {
        proxies.push(Proxy::start(*addr).await);
    }
    let dial_links = proxies
        .iter()
        .map(|p| LinkAddrs {
            local: local(0),
            peer: p.addr,
        })
        .collect();
    let (a, arx) = Interconnect::start(config(0, dial_links, key0))
        .await
        .expect("start a");
    (a, arx, b, brx, proxies)
}

/// Waits for the first event matching `want`, skipping others; panics after the bound.
async fn expect_event(
    rx: &mut Receiver<InterconnectEvent>,
    what: &str,
    want: impl Fn(&InterconnectEvent) -> bool,
) -> InterconnectEvent {
    let wait = async {
        loop {
            match rx.recv().await {
                Some(e) if want(&e) => return e,
                Some(_) => {}
                None => panic!("event channel closed waiting for {what}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(EVENT_WAIT_MS), wait)
        .await
        .unwrap_or_else(|_| panic!("no {what} within {EVENT_WAIT_MS} ms"))
}

async fn links_up(ic: &Interconnect, n: usize) {
    for _ in 0..(EVENT_WAIT_MS / 10) {
        if ic.links_up().await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("links up never reached {n}");
}

fn heartbeat(epoch: u64) -> Message {
    Message::Heartbeat(Heartbeat {
        state: StateCode::Normal,
        epoch,
        given_back_epoch: 0,
        health: Health::ALL_OK,
        mirror_in_sync: true,
        version: 1,
    })
}

/// Sends `m` until the receiver gets it (a send while a link is still coming up is dropped by
/// design; the state machine resends).
async fn deliver(from: &Interconnect, to: &mut Receiver<InterconnectEvent>, m: Message) {
    let wait = async {
        loop {
            from.send(&m);
            let got = tokio::time::timeout(Duration::from_millis(50), async {
                loop {
                    match to.recv().await {
                        Some(InterconnectEvent::Message { message, .. }) if message == m => return,
                        Some(_) => {}
                        None => panic!("closed"),
                    }
                }
            })
            .await;
            if got.is_ok() {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(EVENT_WAIT_MS), wait)
        .await
        .unwrap_or_else(|_| panic!("{m:?} never delivered"));
}

#[tokio::test]
async fn messages_flow_both_ways_once_each_over_two_links() {
    let (a, mut arx, b, mut brx, _proxies) = pair(2, "k", "k").await;
    expect_event(&mut arx, "a connected", |e| {
        *e == InterconnectEvent::Connected
    })
    .await;
    expect_event(&mut brx, "b connected", |e| {
        *e == InterconnectEvent::Connected
    })
    .await;
    links_up(&a, 2).await;
    links_up(&b, 2).await;
    // Every message is sent on both links; each arrives exactly once, in order.
    let count = 50u64;
    for i in 1..=count {
        assert!(a.send(&heartbeat(i)));
        assert!(b.send(&Message::PleaseDie { epoch: i }));
    }
    for (rx, name) in [(&mut brx, "b"), (&mut arx, "a")] {
        let mut got = Vec::new();
        while (got.len() as u64) < count {
            let e =
                expect_event(rx, name, |e| matches!(e, InterconnectEvent::Message { .. })).await;
            if let InterconnectEvent::Message { message, .. } = e {
                got.push(match message {
                    Message::Heartbeat(h) => h.epoch,
                    Message::PleaseDie { epoch } => epoch,
                    other => panic!("unexpected {other:?}"),
                });
            }
        }
        assert_eq!(
            got,
            (1..=count).collect::<Vec<_>>(),
            "{name}: once each, in order"
        );
        // No duplicate trails behind.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok(e) = rx.try_recv() {
            assert!(
                !matches!(e, InterconnectEvent::Message { .. }),
                "{name}: duplicate {e:?}"
            );
        }
    }
    // Pings measured the round trip.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rtt = a.rtt();
    assert!(rtt.samples > 0, "no RTT samples");
    println!(
        "interconnect.ping_rtt_us samples={} min={} mean={} max={}",
        rtt.samples,
        rtt.min_us,
        rtt.mean_us(),
        rtt.max_us
    );
}

#[tokio::test]
async fn one_link_cut_keeps_the_pair_connected_both_cut_disconnects() {
    let (a, mut arx, _b, mut brx, proxies) = pair(2, "k", "k").await;
    expect_event(&mut arx, "connected", |e| {
        *e == InterconnectEvent::Connected
    })
    .await;
    links_up(&a, 2).await;
    proxies[0].set_cut(true);
    expect_event(&mut arx, "link 0 down", |e| {
        matches!(e, InterconnectEvent::LinkDown { link: 0, .. })
    })
    .await;
    assert_eq!(a.links_up().await, 1);
    deliver(&a, &mut brx, heartbeat(7)).await;
    proxies[1].set_cut(true);
    expect_event(&mut arx, "disconnected", |e| {
        *e == InterconnectEvent::Disconnected
    })
    .await;
    expect_event(&mut brx, "b disconnected", |e| {
        *e == InterconnectEvent::Disconnected
    })
    .await;
    assert!(!a.send(&heartbeat(8)) || a.links_up().await == 0);
    // Healing one link reconnects the pair.
    proxies[1].set_cut(false);
    expect_event(&mut arx, "reconnected", |e| {
        *e == InterconnectEvent::Connected
    })
    .await;
    deliver(&a, &mut brx, heartbeat(9)).await;
}

#[tokio::test]
async fn a_peer_with_the_wrong_key_is_refused() {
    let (a, _arx, _b, mut brx, _proxies) = pair(1, "right", "wrong").await;
    let e = expect_event(&mut brx, "refused", |e| {
        matches!(e, InterconnectEvent::Refused { .. })
    })
    .await;
    assert!(format!("{e:?}").contains("MAC"), "{e:?}");
    assert_eq!(a.links_up().await, 0);
    // It never connects, however long it retries.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(e) = brx.try_recv() {
        assert!(
            !matches!(
                e,
                InterconnectEvent::Connected | InterconnectEvent::Message { .. }
            ),
            "{e:?}"
        );
    }
}

#[tokio::test]
async fn garbage_is_refused_without_harm() {
    let (a, mut arx, b, mut brx, _proxies) = pair(1, "k", "k").await;
    expect_event(&mut arx, "connected", |e| {
        *e == InterconnectEvent::Connected
    })
    .await;
    let target = b.listening()[0];
    // Garbage of several shapes: random bytes, a valid-looking magic, a short handshake.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..20 {
        let mut s = TcpStream::connect(target).await.expect("connect");
        let len = 1 + (round * 13) % 200;
        let mut bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        if round % 3 == 0 && bytes.len() >= 5 {
            bytes[..5].copy_from_slice(b"TFIC\x01");
        }
        if round % 2 == 0 {
            bytes.resize(64, 0);
        }
        let _ = s.write_all(&bytes).await;
        drop(s);
    }
    expect_event(&mut brx, "refused", |e| {
        matches!(e, InterconnectEvent::Refused { .. })
    })
    .await;
    // The real link is unaffected.
    deliver(&a, &mut brx, heartbeat(3)).await;
    assert_eq!(a.links_up().await, 1);
}

/// A client that knows the key does the handshake by hand, then misbehaves.
async fn rogue_session(target: SocketAddr, key: &PairKey) -> (TcpStream, [u8; 32]) {
    use cluster::interconnect::frame::{session_key, Hello, HELLO_BYTES};
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(target).await.expect("connect");
    let hello = Hello {
        node: NodeId(0),
        link: 0,
        boot_id: 1,
        nonce: [7; 16],
    };
    s.write_all(&hello.encode(key)).await.expect("hello");
    let mut buf = [0u8; HELLO_BYTES];
    s.read_exact(&mut buf).await.expect("peer hello");
    let peer = Hello::decode(&buf, key).expect("peer hello valid");
    (s, session_key(key, &hello.nonce, &peer.nonce))
}

#[tokio::test]
async fn frames_with_a_bad_mac_or_a_replayed_sequence_are_refused() {
    use cluster::interconnect::frame::{encode_frame, Kind};
    let key = PairKey::from_passphrase("k");
    let (b, mut brx) = Interconnect::start(config(
        1,
        vec![LinkAddrs {
            local: local(0),
            peer: local(0),
        }],
        "k",
    ))
    .await
    .expect("start b");
    let target = b.listening()[0];

    let (mut s, session) = rogue_session(target, &key).await;
    expect_event(&mut brx, "connected", |e| {
        *e == InterconnectEvent::Connected
    })
    .await;
    let mut frame = encode_frame(&session, NodeId(0), Kind::Ping, 1, &1u64.to_le_bytes());
    let last = frame.len() - 1;
    frame[last] ^= 1;
    s.write_all(&frame).await.expect("write");
    let e = expect_event(&mut brx, "bad MAC refused", |e| {
        matches!(e, InterconnectEvent::Refused { .. })
    })
    .await;
    assert!(format!("{e:?}").contains("MAC"), "{e:?}");
    expect_event(&mut brx, "link down", |e| {
        matches!(e, InterconnectEvent::LinkDown { .. })
    })
    .await;

    let (mut s, session) = rogue_session(target, &key).await;
    let ping = encode_frame(&session, NodeId(0), Kind::Ping, 1, &1u64.to_le_bytes());
    s.write_all(&ping).await.expect("write");
    s.write_all(&ping).await.expect("replay");
    let e = expect_event(&mut brx, "replay refused", |e| {
        matches!(e, InterconnectEvent::Refused { .. })
    })
    .await;
    assert!(format!("{e:?}").contains("sequence"), "{e:?}");
}

#[tokio::test]
async fn a_silent_link_is_declared_down_after_the_silence_bound() {
    let (a, mut arx, _b, mut brx, proxies) = pair(1, "k", "k").await;
    expect_event(&mut arx, "connected", |e| {
        *e == InterconnectEvent::Connected
    })
    .await;
    deliver(&a, &mut brx, heartbeat(1)).await;
    let t0 = std::time::Instant::now();
    proxies[0].set_blackhole(true);
    expect_event(&mut arx, "disconnected", |e| {
        *e == InterconnectEvent::Disconnected
    })
    .await;
    let detected_ms = t0.elapsed().as_millis();
    println!("interconnect.silent_cut_detected_ms {detected_ms} (link_silence_ms 200)");
    assert!(
        detected_ms >= 150,
        "declared down before the silence bound: {detected_ms} ms"
    );
    assert!(
        detected_ms < 1_000,
        "silence bound overrun: {detected_ms} ms"
    );
    proxies[0].set_blackhole(false);
    expect_event(&mut arx, "reconnected", |e| {
        *e == InterconnectEvent::Connected
    })
    .await;
    deliver(&a, &mut brx, heartbeat(2)).await;
}
