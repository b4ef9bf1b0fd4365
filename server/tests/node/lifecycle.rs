//! The node's start, CP driver and stop, in process: what it refuses to do, and that CPs
//! run on the timer and release the log.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use twinfiler::node::{CpReason, Node, NodeError};

use crate::client::*;
use crate::common::{pattern, Opts, Setup};

/// A timer CP must show up within this bound (the timer is 200 ms in this test).
const TIMER_CP_WAIT_MS_MAX: u64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_disks_dir_without_a_create_section_is_an_error() {
    let s = Setup::new();
    let mut cfg = s.config(&Opts::default());
    cfg.aggregate.create = None;
    let err = Node::start(cfg).await.err().expect("must not start");
    let msg = err.to_string();
    assert!(matches!(err, NodeError::Aggregate(_)), "{msg}");
    assert!(msg.contains("[aggregate.create]"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_file_in_the_disks_dir_is_never_formatted() {
    let s = Setup::new();
    let cfg = s.config(&Opts::default());
    std::fs::create_dir_all(&cfg.aggregate.disks_dir).unwrap();
    let precious = cfg.aggregate.disks_dir.join("precious.img");
    std::fs::write(&precious, vec![0xab; 1 << 20]).unwrap();
    let err = Node::start(cfg).await.err().expect("must not start");
    assert!(matches!(err, NodeError::Aggregate(_)), "{err}");
    assert_eq!(std::fs::read(&precious).unwrap(), vec![0xab; 1 << 20]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_state_dir_and_a_taken_port_are_refused() {
    let s = Setup::new();
    let node = s.start(&Opts::default()).await;
    let err = Node::start(s.config(&Opts::default()))
        .await
        .err()
        .expect("second node");
    assert!(matches!(err, NodeError::Locked(_)), "{err}");
    node.shutdown().await.unwrap();

    // A port someone else holds: a clear error naming the address.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut cfg = s.config(&Opts::default());
    cfg.nfs.nfs_port = port;
    let err = Node::start(cfg).await.err().expect("port taken");
    let msg = err.to_string();
    assert!(matches!(err, NodeError::Listen { .. }), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    // The failed start released everything: the node starts again on free ports.
    let node = s.start(&Opts::default()).await;
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cp_timer_covers_every_applied_op() {
    let s = Setup::new();
    let node = s
        .start(&Opts {
            cp_interval_ms: 200,
            ..Opts::default()
        })
        .await;
    let l = node.listeners();
    let root = mount(l.mount_tcp, LOCAL, "/", &Cred::root()).await.unwrap();
    let mut c = nfs(l.nfs_tcp, LOCAL, &Cred::root()).await;
    let f = create(&mut c, &root, "timed", 0o644).await.unwrap();
    write_all(&mut c, &f, 0, &pattern(4, 70_000)).await.unwrap();
    let applied = node.fs().applied_seq();
    assert!(applied >= 2);
    let deadline = Instant::now() + Duration::from_millis(TIMER_CP_WAIT_MS_MAX);
    loop {
        let st = node.status();
        if let Some(cp) = st.last_cp.as_ref().filter(|cp| cp.covered_seq >= applied) {
            assert_eq!(cp.reason, CpReason::Timer);
            assert!(st.fs_generation >= cp.generation);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no timer CP covering seq {applied}: {st}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing dirty: the timer takes no further CPs.
    let count = node.status().cp_count;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(node.status().cp_count, count, "idle CPs: {}", node.status());
    node.shutdown().await.unwrap();
}
