//! A mirrored node: its NVRAM log goes to a partner over loopback (here a bare nvlog mirror
//! receiver in the test process, keyed with the same pair key). Writes are mirrored before
//! they are answered; when the partner disappears the node goes MIRROR_DEGRADED and keeps
//! serving.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use nvlog::{kind, MirrorConfig, MirrorState, Nvlog, SenderConfig};
use twinfiler::config::PairKey;
use twinfiler::node::{Mode, Node};

use crate::client::*;
use crate::common::{pattern, Opts, Setup};

/// The mirror must reach IN_SYNC (or DEGRADED after the partner is gone) within this bound.
const MIRROR_STATE_WAIT_MS_MAX: u64 = 10_000;
const POLL_MS: u64 = 10;

/// The partner: a log that only listens for our mirror.
fn partner(region: &std::path::Path, key: &PairKey) -> Nvlog {
    Nvlog::open(nvlog::Config {
        region_path: region.to_owned(),
        half_bytes: 16 << 20,
        mirror: Some(MirrorConfig {
            partner_addr: None,
            listen_addr: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
            key: key.mirror_key(),
            sender: SenderConfig::default(),
            busy_poll_us: nvlog::BUSY_POLL_US_DEFAULT,
        }),
        ..nvlog::Config::default()
    })
    .expect("partner mirror receiver")
}

async fn wait_mirror(node: &Node, want: impl Fn(&MirrorState) -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_millis(MIRROR_STATE_WAIT_MS_MAX);
    loop {
        match &node.status().mode {
            Mode::Mirrored { state, .. } if want(state) => return,
            Mode::Mirrored { .. } => {}
            Mode::Standalone => panic!("a node with [mirror] reports standalone"),
        }
        assert!(
            Instant::now() < deadline,
            "mirror not {what} within {MIRROR_STATE_WAIT_MS_MAX} ms: {}",
            node.status()
        );
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_node_mirrors_every_write_and_survives_losing_the_partner() {
    let s = Setup::new();
    // A mirrored node needs the pair key before its first start (it never makes one).
    let key = PairKey::generate();
    let state = s.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("pair.key"), key.as_bytes()).unwrap();
    let partner_region = s.path().join("partner.nvram");
    let b = partner(&partner_region, &key);
    let b_addr = b.mirror_listen_addr().expect("listening");

    let node = s
        .start(&Opts {
            mirror_partner: Some(b_addr),
            ..Opts::default()
        })
        .await;
    wait_mirror(&node, |m| *m == MirrorState::InSync, "in sync").await;
    assert!(
        node.status().to_string().contains("mode: mirrored"),
        "{}",
        node.status()
    );

    let l = node.listeners();
    let root = mount(l.mount_tcp, LOCAL, "/", &Cred::root()).await.unwrap();
    let mut c = nfs(l.nfs_tcp, LOCAL, &Cred::root()).await;
    let f = create(&mut c, &root, "mirrored", 0o644).await.unwrap();
    let data = pattern(9, 2 << 20);
    write_all(&mut c, &f, 0, &data).await.unwrap();

    // Every acknowledged op is in the partner's mirror area.
    let mirrored = b.replay_mirror(0).expect("partner reads its mirror");
    let ops = mirrored
        .records
        .iter()
        .filter(|r| r.kind == kind::OP)
        .count();
    assert!(
        ops >= 3,
        "create + two 1 MiB writes mirrored, found {ops} OP records"
    );
    let newest = mirrored.records.iter().map(|r| r.seq).max().unwrap_or(0);
    assert!(
        newest + 1 >= node.log().status().next_seq,
        "the mirror holds the newest record ({newest}; next {})",
        node.log().status().next_seq
    );

    // The partner goes away: after the degraded bound the node serves on, local-only.
    drop(b);
    let more = pattern(10, 100_000);
    write_all(&mut c, &f, 0, &more).await.unwrap();
    wait_mirror(
        &node,
        |m| matches!(m, MirrorState::Degraded { .. }),
        "degraded",
    )
    .await;
    let g = create(&mut c, &root, "while-degraded", 0o644)
        .await
        .unwrap();
    write_all(&mut c, &g, 0, b"still serving").await.unwrap();
    assert_eq!(
        read_all(&mut c, &g, 0, 100).await.unwrap(),
        b"still serving"
    );
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_node_without_the_pair_key_does_not_start() {
    let s = Setup::new();
    let cfg = s.config(&Opts {
        mirror_partner: Some("127.0.0.1:9".parse().unwrap()),
        ..Opts::default()
    });
    let err = match Node::start(cfg).await {
        Ok(_) => panic!("started without a pair key"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("pair.key") && err.contains("both nodes"),
        "{err}"
    );
}

/// A free loopback port (bound and released: the node binds it a moment later).
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Two full nodes mirroring each other, as a pair runs: each holds the other's log and
/// could take over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_of_nodes_mirror_each_other() {
    let key = PairKey::generate();
    let (sa, sb) = (Setup::new(), Setup::new());
    for s in [&sa, &sb] {
        let state = s.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("pair.key"), key.as_bytes()).unwrap();
    }
    let (pa, pb) = (free_port(), free_port());
    let a = sa
        .start(&Opts {
            name: "a".into(),
            mirror_listen: Some(pa),
            mirror_partner: Some(pb),
            ..Opts::default()
        })
        .await;
    let b = sb
        .start(&Opts {
            name: "b".into(),
            mirror_listen: Some(pb),
            mirror_partner: Some(pa),
            ..Opts::default()
        })
        .await;
    wait_mirror(&a, |m| *m == MirrorState::InSync, "in sync (a)").await;
    wait_mirror(&b, |m| *m == MirrorState::InSync, "in sync (b)").await;

    for (node, n) in [(&a, "from-a"), (&b, "from-b")] {
        let l = node.listeners();
        let root = mount(l.mount_tcp, LOCAL, "/", &Cred::root()).await.unwrap();
        let mut c = nfs(l.nfs_tcp, LOCAL, &Cred::root()).await;
        let f = create(&mut c, &root, n, 0o644).await.unwrap();
        write_all(&mut c, &f, 0, &pattern(7, 100_000))
            .await
            .unwrap();
    }
    for (holder, of) in [(&b, &a), (&a, &b)] {
        let st = holder.status();
        assert!(
            matches!(
                st.mode,
                Mode::Mirrored {
                    partner_mirror_in_sync: true,
                    ..
                }
            ),
            "{} holds {}'s log in sync: {st}",
            st.name,
            of.status().name
        );
        holder
            .log()
            .partner_takeover_readiness()
            .expect("takeover possible");
        let ops = holder
            .log()
            .replay_mirror(0)
            .unwrap()
            .records
            .iter()
            .filter(|r| r.kind == kind::OP)
            .count();
        assert!(
            ops >= 2,
            "{} holds {ops} OP records of its partner",
            st.name
        );
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
