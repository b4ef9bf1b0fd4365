//! Restarts of a node process: a clean stop (final CP) and a `kill -9` (no CP: the NVRAM log
//! is replayed). Handles obtained before keep working, data is intact, and a retransmitted
//! request after the crash still gets its original reply (the DRC is rebuilt by replay).

use std::net::SocketAddr;

use nfs3_client::nfs3_types::nfs3::{createhow3, nfsstat3, CREATE3args};
use nfs3_client::nfs3_types::portmap::IPPROTO_TCP;
use nfs3_client::tokio::TokioIo;
use nfs3_client::PortmapperClient;

use crate::client::*;
use crate::common::{pattern, Opts, Setup};

/// The `records=N` of the last "replayed the NVRAM log" line of a node's log.
fn last_replay_count(log: &str) -> u64 {
    let line = log
        .lines()
        .rfind(|l| l.contains("replayed the NVRAM log past the last CP"))
        .unwrap_or_else(|| panic!("no replay line in the log:\n{log}"));
    // Strip ANSI colour codes, then find `records=N`.
    let plain: String = {
        let mut out = String::new();
        let mut in_escape = false;
        for ch in line.chars() {
            match (in_escape, ch) {
                (false, '\u{1b}') => in_escape = true,
                (true, 'm') => in_escape = false,
                (true, _) => {}
                (false, c) => out.push(c),
            }
        }
        out
    };
    plain
        .split_whitespace()
        .find_map(|w| w.strip_prefix("records="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no records= in {plain:?}"))
}

fn opts() -> Opts {
    Opts {
        // No timer CP during the test: what the kill -9 loses from memory is only in the log.
        cp_interval_ms: 600_000,
        ..Opts::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_and_data_survive_a_clean_restart_and_a_kill_9() {
    let s = Setup::new();
    let o = opts();

    // Start, write, take handles.
    let p = s.spawn(&o);
    // The process's portmapper names its (kernel-chosen) ports, as `mount` would ask.
    let mut pm = PortmapperClient::new(TokioIo::new(tcp_from(LOCAL, p.portmap).await));
    assert_eq!(
        bounded(pm.getport(100_003, 3, IPPROTO_TCP)).await.unwrap(),
        p.nfs.port()
    );
    assert_eq!(
        bounded(pm.getport(100_005, 3, IPPROTO_TCP)).await.unwrap(),
        p.mount.port()
    );
    let root = mount(p.mount, LOCAL, "/", &Cred::root())
        .await
        .expect("MNT");
    let mut c = nfs(p.nfs, LOCAL, &Cred::root()).await;
    let dir = create_dir(&mut c, &root, "dir").await;
    let a = create(&mut c, &dir, "a", 0o644).await.unwrap();
    let data_a = pattern(1, 200_000);
    write_all(&mut c, &a, 0, &data_a).await.unwrap();
    drop(c);

    // Clean stop: final CP; nothing to replay afterwards.
    let st = p.stop();
    assert!(st.success(), "clean stop exits 0: {st}");
    let p = s.spawn(&o);
    assert!(p.log_text().contains("final CP done"), "{}", p.log_text());
    assert_eq!(
        last_replay_count(&p.log_text()),
        0,
        "a clean stop leaves nothing to replay"
    );
    let mut c = nfs(p.nfs, LOCAL, &Cred::root()).await;
    assert_eq!(
        read_all(&mut c, &a, 0, data_a.len()).await.unwrap(),
        data_a,
        "handle from before the restart"
    );
    let again = lookup(&mut c, &dir, "a").await.unwrap();
    assert_eq!(
        again, a,
        "the same file gets the same handle after a restart"
    );

    // Changes that only the log holds, and a request whose reply the client "lost".
    let b = create(&mut c, &dir, "b", 0o644).await.unwrap();
    let data_b = pattern(2, 300_000);
    write_all(&mut c, &b, 0, &data_b).await.unwrap();
    let mut data_a2 = data_a.clone();
    let patch = pattern(3, 5_000);
    data_a2[1000..6000].copy_from_slice(&patch);
    write_all(&mut c, &a, 1000, &patch).await.unwrap();
    let drc_call = raw_call(
        0x0dd_c0de,
        100_003,
        3,
        8,
        &Cred::root(),
        &CREATE3args {
            where_: dirop(&dir, "once"),
            how: createhow3::GUARDED(mode(0o644)),
        },
    );
    let mut raw = tcp_from(LOCAL, p.nfs).await;
    let client_addr: SocketAddr = raw.local_addr().unwrap();
    let first = raw_roundtrip(&mut raw, &drc_call).await;
    assert_eq!(raw_nfs_status(&first), 0);
    drop(c);

    // Crash: no shutdown, no final CP.
    p.kill9();
    drop(raw);
    let p = s.spawn(&o);
    let replayed = last_replay_count(&p.log_text());
    assert!(
        replayed >= 4,
        "kill -9 leaves the ops in the log: replayed {replayed}"
    );
    let mut c = nfs(p.nfs, LOCAL, &Cred::root()).await;
    assert_eq!(
        read_all(&mut c, &a, 0, data_a2.len()).await.unwrap(),
        data_a2,
        "a after replay"
    );
    assert_eq!(
        read_all(&mut c, &b, 0, data_b.len()).await.unwrap(),
        data_b,
        "b after replay"
    );
    assert!(
        lookup(&mut c, &root, "dir").await.is_ok(),
        "the root handle from the first start"
    );

    // The retransmission from the same client address and port: the original reply.
    let mut raw = tcp_from_port(client_addr, p.nfs).await;
    let retry = raw_roundtrip(&mut raw, &drc_call).await;
    assert_eq!(
        retry, first,
        "the DRC entry survived the crash (rebuilt by replay)"
    );
    let fresh = raw_call(
        0x0dd_c0df,
        100_003,
        3,
        8,
        &Cred::root(),
        &CREATE3args {
            where_: dirop(&dir, "once"),
            how: createhow3::GUARDED(mode(0o644)),
        },
    );
    assert_eq!(
        raw_nfs_status(&raw_roundtrip(&mut raw, &fresh).await),
        nfsstat3::NFS3ERR_EXIST as u32
    );
    let st = p.stop();
    assert!(st.success(), "clean stop exits 0: {st}");
}

async fn create_dir(
    c: &mut Nfs,
    root: &nfs3_client::nfs3_types::nfs3::nfs_fh3,
    n: &str,
) -> nfs3_client::nfs3_types::nfs3::nfs_fh3 {
    use nfs3_client::nfs3_types::nfs3::MKDIR3args;
    let args = MKDIR3args {
        where_: dirop(root, n),
        attributes: mode(0o755),
    };
    match bounded(c.mkdir(&args)).await.expect("MKDIR rpc") {
        nfs3_client::nfs3_types::nfs3::Nfs3Result::Ok(ok) => ok.obj.unwrap(),
        nfs3_client::nfs3_types::nfs3::Nfs3Result::Err((s, _)) => panic!("MKDIR {n}: {s}"),
    }
}
