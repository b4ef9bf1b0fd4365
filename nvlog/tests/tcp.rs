//! Real mirroring over loopback TCP: two processes with kill -9 of the writer, a peer
//! with the wrong key, degraded mode and recovery.
//!
//! The writer process is this test binary re-executed with `child_writer` (an ignored test
//! that only acts when `NVLOG_CHILD_REGION` is set).

use nvlog::{
    kind, Config, MirrorConfig, MirrorKey, MirrorState, Nvlog, SenderConfig, BUSY_POLL_US_DEFAULT,
};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HALF_BYTES: u64 = 8 << 20;
/// The parent kills the writer after this many resolved appends.
const RESOLVED_BEFORE_KILL: usize = 1500;
/// Appender tasks in the writer.
const CHILD_TASKS: u64 = 8;
/// Bound on every wait in these tests.
const WAIT_MS_MAX: u64 = 20_000;

fn shm_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("nvlog-tcp")
        .tempdir_in("/dev/shm")
        .expect("tempdir")
}

fn payload(task: u64, i: u64) -> Vec<u8> {
    let len = 100 + ((task * 131 + i * 17) % 900) as usize;
    (0..len)
        .map(|b| (task as usize * 7 + i as usize * 13 + b) as u8)
        .collect()
}

fn node(
    path: &Path,
    partner: Option<SocketAddr>,
    listen: Option<SocketAddr>,
    key: &str,
    degraded_after_ms: u64,
) -> Nvlog {
    Nvlog::open(Config {
        region_path: path.to_owned(),
        half_bytes: HALF_BYTES,
        mirror: Some(MirrorConfig {
            partner_addr: partner,
            listen_addr: listen,
            key: MirrorKey::from_passphrase(key),
            sender: SenderConfig {
                degraded_after_ms,
                ..SenderConfig::default()
            },
            busy_poll_us: BUSY_POLL_US_DEFAULT,
        }),
        backpressure_wait_ms_max: 10_000,
    })
    .expect("open node")
}

/// A partner that accepts the owner's log into its mirror on an ephemeral loopback port.
fn listening_partner(path: &Path, key: &str) -> (Nvlog, SocketAddr) {
    let partner = node(
        path,
        None,
        Some("127.0.0.1:0".parse().expect("addr")),
        key,
        2000,
    );
    let addr = partner.mirror_listen_addr().expect("listening");
    (partner, addr)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The writer process: appends from several tasks and prints each seq once resolved.
#[test]
#[ignore = "child process of kill9_writer_resolved_appends_are_in_the_partner_mirror"]
fn child_writer() {
    let Ok(region) = std::env::var("NVLOG_CHILD_REGION") else {
        return;
    };
    let partner: SocketAddr = std::env::var("NVLOG_CHILD_PARTNER")
        .expect("partner")
        .parse()
        .expect("addr");
    let log = node(Path::new(&region), Some(partner), None, "pair", 10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let mut tasks = Vec::new();
        for task in 0..CHILD_TASKS {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                // Bounded: the parent kills us long before this ends.
                for i in 0..20_000u64 {
                    let seq = log
                        .append(kind::OP, &payload(task, i))
                        .await
                        .expect("append");
                    let degraded = matches!(log.status().mirror, MirrorState::Degraded { .. });
                    let mut out = std::io::stdout().lock();
                    writeln!(
                        out,
                        "RESOLVED {seq} {task} {i} {}",
                        if degraded { "degraded" } else { "mirrored" }
                    )
                    .expect("stdout");
                    out.flush().expect("flush");
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[test]
fn kill9_writer_resolved_appends_are_in_the_partner_mirror() {
    let dir = shm_dir();
    let (partner, addr) = listening_partner(&dir.path().join("b"), "pair");
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "child_writer",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("NVLOG_CHILD_REGION", dir.path().join("a"))
        .env("NVLOG_CHILD_PARTNER", addr.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut resolved: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    while resolved.len() < RESOLVED_BEFORE_KILL {
        assert!(
            Instant::now() < deadline,
            "writer too slow: {} resolved",
            resolved.len()
        );
        let line = lines
            .next()
            .expect("writer exited early")
            .expect("read line");
        if let Some(r) = parse(&line) {
            resolved.insert(r.0, (r.1, r.2));
        }
    }
    child.kill().expect("kill -9 the writer"); // SIGKILL: no destructor, no flush, mid-stream
    let _ = child.wait();
    // Lines already in the pipe were printed after resolution too: they count.
    for line in lines.map_while(Result::ok) {
        if let Some(r) = parse(&line) {
            resolved.insert(r.0, (r.1, r.2));
        }
    }
    let mirror = partner.replay_mirror(0).expect("mirror replays");
    let held: BTreeMap<u64, Vec<u8>> = mirror
        .records
        .into_iter()
        .map(|r| (r.seq, r.payload))
        .collect();
    for (seq, (task, i)) in &resolved {
        let got = held
            .get(seq)
            .unwrap_or_else(|| panic!("resolved seq {seq} is not in the partner's mirror"));
        assert_eq!(got, &payload(*task, *i), "seq {seq} differs in the mirror");
    }
    drop(partner);
    // The writer's own region replays too (it survived the kill in /dev/shm).
    let own = Nvlog::open(Config {
        region_path: dir.path().join("a"),
        half_bytes: HALF_BYTES,
        ..Config::default()
    })
    .expect("reopen writer region");
    let replay = own.replay_own(0).expect("own log replays");
    let own_held: BTreeMap<u64, Vec<u8>> = replay
        .records
        .into_iter()
        .map(|r| (r.seq, r.payload))
        .collect();
    for (seq, (task, i)) in &resolved {
        assert_eq!(
            own_held.get(seq),
            Some(&payload(*task, *i)),
            "seq {seq} not in the writer's own log"
        );
    }
    // Everything the mirror holds is also in the own log (the mirror never runs ahead).
    for (seq, p) in &held {
        assert_eq!(
            own_held.get(seq),
            Some(p),
            "mirror seq {seq} not in the own log"
        );
    }
}

fn parse(line: &str) -> Option<(u64, u64, u64)> {
    let mut it = line.split_whitespace();
    if it.next()? != "RESOLVED" {
        return None;
    }
    let r = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    assert_eq!(
        it.next(),
        Some("mirrored"),
        "writer resolved an append in degraded mode: {line}"
    );
    Some(r)
}

#[test]
fn peer_with_the_wrong_key_is_refused() {
    let dir = shm_dir();
    let (partner, addr) = listening_partner(&dir.path().join("b"), "right");
    let intruder = node(&dir.path().join("a"), Some(addr), None, "wrong", 300);
    wait_until("auth failure on the partner", || {
        partner.status().auth_failures >= 1
    });
    wait_until("intruder degraded", || {
        matches!(intruder.status().mirror, MirrorState::Degraded { .. })
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    // Degraded: the intruder still logs locally (explicitly), and nothing reached the mirror.
    let seq = rt
        .block_on(intruder.append(kind::OP, b"local only"))
        .expect("append");
    assert_eq!(seq, 1);
    assert!(partner.replay_mirror(0).expect("mirror").records.is_empty());
    assert_eq!(
        partner.partner_takeover_readiness(),
        Err(nvlog::TAKEOVER_IMPOSSIBLE)
    );
    assert_eq!(intruder.status().mirrored_seq, 0);
}

#[test]
fn partner_loss_degrades_after_the_bound_and_return_resyncs() {
    let dir = shm_dir();
    let b_path = dir.path().join("b");
    let (partner, addr) = listening_partner(&b_path, "pair");
    let owner = node(&dir.path().join("a"), Some(addr), None, "pair", 300);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        for i in 0..50u64 {
            owner
                .append(kind::OP, &payload(0, i))
                .await
                .expect("append");
        }
    });
    assert_eq!(owner.status().mirror, MirrorState::InSync);
    assert!(partner.partner_takeover_readiness().is_ok());
    let started = Instant::now();
    drop(partner); // the partner goes away
    let seq = rt
        .block_on(owner.append(kind::OP, &payload(0, 50)))
        .expect("append while partner gone");
    let waited = started.elapsed();
    assert_eq!(seq, 51);
    assert!(
        waited >= Duration::from_millis(200),
        "resolved without mirror after only {waited:?}"
    );
    assert!(
        matches!(&owner.status().mirror, MirrorState::Degraded { reason } if !reason.is_empty()),
        "{:?}",
        owner.status().mirror
    );
    rt.block_on(async {
        for i in 51..80u64 {
            owner
                .append(kind::OP, &payload(0, i))
                .await
                .expect("append degraded");
        }
    });
    // The partner returns on the same address: resync, and the state is left.
    let partner = node(&b_path, None, Some(addr), "pair", 2000);
    wait_until("owner back in sync", || {
        owner.status().mirror == MirrorState::InSync
    });
    wait_until("partner mirror in sync", || {
        partner.partner_takeover_readiness().is_ok()
    });
    let mirror = partner.replay_mirror(0).expect("mirror");
    assert_eq!(mirror.records.len(), 80);
    assert_eq!(mirror.records, owner.replay_own(0).expect("own").records);
    assert!(owner.status().degraded_entries >= 1);
}

#[test]
fn concurrent_mirrored_appenders_share_group_commits() {
    let dir = shm_dir();
    let (partner, addr) = listening_partner(&dir.path().join("b"), "pair");
    let owner = node(&dir.path().join("a"), Some(addr), None, "pair", 10_000);
    wait_until("in sync", || owner.status().mirror == MirrorState::InSync);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let tasks_n = 16u64;
    let per_task = 200u64;
    rt.block_on(async {
        let mut tasks = Vec::new();
        for task in 0..tasks_n {
            let owner = owner.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..per_task {
                    seqs.push(
                        owner
                            .append(kind::OP, &payload(task, i))
                            .await
                            .expect("append"),
                    );
                }
                seqs
            }));
        }
        for t in tasks {
            let seqs = t.await.expect("join");
            // Each resolved append was mirrored before it resolved.
            assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        }
    });
    let st = owner.status();
    assert_eq!(st.appends, tasks_n * per_task);
    assert!(
        st.group_commits < st.appends,
        "no group commit shared: {} commits for {} appends",
        st.group_commits,
        st.appends
    );
    assert_eq!(st.mirrored_seq, st.durable_seq);
    assert_eq!(
        partner.replay_mirror(0).expect("mirror").records,
        owner.replay_own(0).expect("own").records
    );
}

#[test]
fn damaged_mirror_is_resent_in_full_by_the_partner() {
    let dir = shm_dir();
    let b_path = dir.path().join("b");
    let (partner, addr) = listening_partner(&b_path, "pair");
    let owner = node(&dir.path().join("a"), Some(addr), None, "pair", 10_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        for i in 0..20u64 {
            owner
                .append(kind::OP, &payload(1, i))
                .await
                .expect("append");
        }
    });
    drop(partner);
    // Flip a payload byte of the first mirrored record (mirror half 0).
    let mut bytes = std::fs::read(&b_path).expect("read region");
    let at = 4096 + 2 * HALF_BYTES as usize + 4096 + nvlog::format::RECORD_HEADER_BYTES + 3;
    bytes[at] ^= 0xff;
    std::fs::write(&b_path, &bytes).expect("write region");
    let partner = node(&b_path, None, Some(addr), "pair", 2000);
    wait_until("partner mirror in sync again", || {
        partner.partner_takeover_readiness().is_ok()
    });
    let mirror = partner
        .replay_mirror(0)
        .expect("mirror replays after the full resend");
    assert_eq!(mirror.records, owner.replay_own(0).expect("own").records);
    assert_eq!(mirror.records.len(), 20);
}

/// The controls a clustered node uses: appends wait for the partner under `Never` (no
/// degradation on its own), resolve locally under `Local`; a closed mirror area refuses the
/// partner; a restarted log continues past a given seq and the partner's mirror follows.
#[test]
fn cluster_controls_degradation_mirror_acceptance_and_log_restart() {
    let dir = shm_dir();
    let (partner, addr) = listening_partner(&dir.path().join("b.nvram"), "pair");
    let owner = node(&dir.path().join("a.nvram"), Some(addr), None, "pair", 100);
    owner.set_degrade_policy(nvlog::DegradePolicy::Never);
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        owner.append(kind::OP, b"zero").await.expect("append");
        wait_until("mirror synced", || owner.mirror_synced());
        let l = owner.take_latencies();
        assert!(
            !l.persist_seconds.is_empty() && !l.mirror_seconds.is_empty(),
            "{l:?}"
        );
        assert!(
            owner.take_latencies().persist_seconds.is_empty(),
            "taken once"
        );
        assert_eq!(owner.status().mirror_lag_bytes, 0);
        // Closed and reopened before the sender sent anything: it must notice and resync.
        partner.set_accept_partner(false);
        partner.set_accept_partner(true);
        tokio::time::timeout(Duration::from_secs(10), owner.append(kind::OP, b"one"))
            .await
            .expect("resolves after the mirror reopened")
            .expect("append");
        wait_until("mirror synced", || owner.mirror_synced());

        // Closed mirror: an append neither resolves nor degrades on its own.
        partner.set_accept_partner(false);
        let pending = owner.submit(kind::OP, b"two").expect("submit");
        let waited = tokio::time::timeout(Duration::from_millis(600), pending).await;
        assert!(
            waited.is_err(),
            "an append resolved without the mirror under Never"
        );
        assert!(!matches!(
            owner.status().mirror,
            MirrorState::Degraded { .. }
        ));

        // The cluster orders local-only logging: appends resolve at once.
        owner.set_degrade_policy(nvlog::DegradePolicy::Local);
        let seq = tokio::time::timeout(Duration::from_secs(5), owner.append(kind::OP, b"three"))
            .await
            .expect("resolves when local-only")
            .expect("append");
        assert_eq!(seq, 4);
        assert!(matches!(
            owner.status().mirror,
            MirrorState::Degraded { .. }
        ));

        // Restart the log past seq 100; reopen the mirror; resync; the partner follows.
        owner.restart_at(101).expect("restart");
        assert!(
            owner.restart_at(50).is_err(),
            "a restart must not go backwards"
        );
        partner.set_accept_partner(true);
        owner.set_degrade_policy(nvlog::DegradePolicy::Never);
        assert_eq!(owner.append(kind::OP, b"four").await.expect("append"), 101);
        wait_until("mirror resynced", || owner.mirror_synced());
        assert_eq!(partner.mirror_last_seq().expect("mirror"), 101);
        let seqs: Vec<u64> = partner
            .replay_mirror(0)
            .expect("replay")
            .records
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, vec![101]);
    });
}
