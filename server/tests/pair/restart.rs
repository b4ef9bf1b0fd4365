//! A single node (no pair) on loopback, killed with SIGKILL and restarted, and stopped with
//! SIGTERM and restarted, while the hard-mount client writes: the client rides through with
//! no error, and every acknowledged write reads back through the old handles (the NVRAM log
//! replays; the DRC answers retransmitted creates). Needs no root.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use twinfiler::lab::{self, process::NodeProc};

use crate::harness::*;

/// kill -9 / restart cycles.
const KILL_CYCLES: usize = 3;

#[test]
fn client_rides_through_kill9_and_clean_restarts_of_a_single_node() {
    let _serial = serial();
    let dir = temp_dir("twinfiler-pair-restart-");
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11));
    let spec = lab::single_node(dir.path(), ip, 128).expect("node config");
    let exe = exe();
    let mut node =
        Some(NodeProc::start(&exe, &spec, None, NODE_START_MS_MAX).expect("node starts"));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_client(None, || async {
            let w = Writer::start(ip, spec.ports.portmap, "restart").await;
            for cycle in 0..KILL_CYCLES {
                let t0 = Instant::now();
                node.take().expect("running").kill9();
                node = Some(
                    NodeProc::start(&exe, &spec, None, NODE_START_MS_MAX)
                        .expect("node restarts after kill -9"),
                );
                w.progress(&format!("kill -9 #{cycle}")).await;
                w.pause_since(&format!("kill -9 and restart #{cycle}"), t0);
            }
            let t0 = Instant::now();
            let st = node.take().expect("running").stop().expect("clean stop");
            assert!(st.success(), "clean stop exits 0: {st}");
            node = Some(
                NodeProc::start(&exe, &spec, None, NODE_START_MS_MAX)
                    .expect("node restarts after SIGTERM"),
            );
            w.progress("a clean restart").await;
            w.pause_since("clean stop and restart", t0);
            let stats = w.stats().clone();
            let report = w.finish_and_check().await;
            assert!(
                stats.reconnects.load(std::sync::atomic::Ordering::Relaxed) >= KILL_CYCLES as u64,
                "the client reconnected after each restart"
            );
            assert!(report.writes_acked > 0);
        })
    }));
    if result.is_err() {
        dump_log("s", &spec.log_path());
    }
    if let Some(n) = node.take() {
        let _ = n.stop();
    }
    let _ = std::fs::remove_file(&spec.region);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
