//! Local log: append / iterate / replay round trips, torn tails, CRC corruption, version
//! refusal, back-pressure. Real region files under /dev/shm.

use nvlog::format::{self, REGION_HEADER_BYTES};
use nvlog::log::LogArea;
use nvlog::region::{Area, Region};
use nvlog::{kind, Config, Nvlog, Tail};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const HALF_BYTES: u64 = 2 << 20;

fn shm_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("nvlog-test")
        .tempdir_in("/dev/shm")
        .expect("tempdir in /dev/shm")
}

fn standalone(path: &Path) -> Nvlog {
    Nvlog::open(Config {
        region_path: path.to_owned(),
        half_bytes: HALF_BYTES,
        mirror: None,
        backpressure_wait_ms_max: 5_000,
    })
    .expect("open standalone log")
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as usize * 31 + i * 7) as u8)
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn append_iterate_replay_round_trip_across_halves_and_reopen() {
    let dir = shm_dir();
    let path = dir.path().join("region");
    let rt = rt();
    let mut expected = Vec::new();
    {
        let log = standalone(&path);
        assert_eq!(log.status().persist_mode, "file+tmpfs");
        rt.block_on(async {
            for i in 0..1500u64 {
                let len = (i as usize * 97) % 3000;
                let k = if i % 2 == 0 { kind::OP } else { kind::REPLY };
                let seq = log.append(k, &payload(i + 1, len)).await.expect("append");
                assert_eq!(seq, i + 1);
                expected.push((seq, k, payload(i + 1, len)));
                if log.status().cp_wanted {
                    // The CP covered everything up to here except the last 10 records.
                    log.release_through(seq - 10);
                }
            }
        });
        let st = log.status();
        assert!(st.group_commits > 0 && st.appends == 1500);
    }
    // Reopen: replay from a few points, then continue appending.
    let log = standalone(&path);
    let all = log.replay_own(0).expect("replay");
    assert_eq!(all.tail, Tail::Clean);
    let first = all.records[0].seq;
    assert!(first > 1, "released halves are gone");
    for (r, (seq, k, p)) in all
        .records
        .iter()
        .zip(expected.iter().skip(first as usize - 1))
    {
        assert_eq!((r.seq, r.kind, &r.payload), (*seq, *k, p));
    }
    assert_eq!(all.records.last().map(|r| r.seq), Some(1500));
    let tail = log.replay_own(1400).expect("replay from 1400");
    assert_eq!(tail.records.len(), 101);
    assert!(
        log.replay_own(1).is_err(),
        "asking for released records is an error"
    );
    let seq = rt
        .block_on(log.append(kind::OP, b"after reopen"))
        .expect("append");
    assert_eq!(seq, 1501);
    let reply = nvlog::encode_reply(1501, b"ok");
    let durable = log.submit(kind::REPLY, &reply).expect("submit");
    assert_eq!(durable.seq(), 1502);
    drop(durable); // nobody waits for a reply record; it is still logged
    let back = log.replay_own(1501).expect("replay");
    assert_eq!(back.records.len(), 2);
    assert_eq!(
        nvlog::decode_reply(&back.records[1].payload),
        Some((1501, &b"ok"[..]))
    );
}

#[test]
fn deferred_submits_wait_for_commit_pending_and_share_one_group() {
    let dir = shm_dir();
    let log = standalone(&dir.path().join("region"));
    let rt = rt();
    let before = log.status().group_commits;
    let mut waiting: Vec<_> = (1..=3u64)
        .map(|i| {
            log.submit_parts_deferred(kind::OP, &[&payload(i, 50)])
                .expect("submit")
        })
        .collect();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for d in &mut waiting {
        let polled = std::future::Future::poll(std::pin::Pin::new(d), &mut cx);
        assert!(polled.is_pending(), "durable before any commit");
    }
    assert_eq!(log.status().durable_seq, 0);
    log.commit_pending();
    let seqs: Vec<u64> = rt.block_on(async {
        let mut seqs = Vec::new();
        for d in waiting {
            seqs.push(d.await.expect("durable"));
        }
        seqs
    });
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(
        log.status().group_commits - before,
        1,
        "one group for all three"
    );
}

/// Writes `n` committed records through the log, closes it, returns the tail offset.
fn prepare(path: &Path, n: u64) -> u64 {
    let log = standalone(path);
    rt().block_on(async {
        for s in 1..=n {
            log.append(kind::OP, &payload(s, 100))
                .await
                .expect("append");
        }
    });
    log.status().half_used_bytes[0]
}

#[test]
fn torn_write_at_every_byte_offset_of_the_last_record_ends_cleanly() {
    let dir = shm_dir();
    let path = dir.path().join("region");
    let tail_offset = prepare(&path, 5);
    let last = payload(6, 100);
    let mut full = vec![0u8; format::record_bytes(last.len())];
    format::encode_record(&mut full, kind::OP, 6, &last);
    let end = format::RECORD_HEADER_BYTES + last.len();
    for k in 0..=full.len() {
        {
            // Simulate the crash: only the first k bytes of record 6 reached the media, and
            // its committed-end update never happened.
            let region = Arc::new(Region::open(&path, HALF_BYTES).expect("open"));
            let own = LogArea::new(region.clone(), Area::Own);
            let mut torn = vec![0u8; full.len()];
            torn[..k].copy_from_slice(&full[..k]);
            // SAFETY: no other user of the region in this test.
            unsafe { own.write(0, tail_offset, &torn) };
            assert_eq!(own.committed_end(0), tail_offset);
        }
        let region = Arc::new(Region::open(&path, HALF_BYTES).expect("open"));
        let replay = LogArea::new(region, Area::Own)
            .replay(0)
            .expect("torn tail is not an error");
        let whole = k >= end;
        assert_eq!(replay.records.len(), if whole { 6 } else { 5 }, "k={k}");
        match (k, whole) {
            (0, _) | (_, true) => assert_eq!(replay.tail, Tail::Clean, "k={k}"),
            _ => assert!(
                matches!(&replay.tail, Tail::Torn { half: 0, offset, seq_expected: 6, .. } if *offset == tail_offset),
                "k={k}: {:?}",
                replay.tail
            ),
        }
    }
    // A writer reopening after a torn tail continues at seq 6, overwriting the torn bytes.
    {
        let region = Arc::new(Region::open(&path, HALF_BYTES).expect("open"));
        let own = LogArea::new(region, Area::Own);
        let mut torn = full.clone();
        torn[40..].fill(0);
        // SAFETY: as above.
        unsafe { own.write(0, tail_offset, &torn) };
    }
    let log = standalone(&path);
    let seq = rt()
        .block_on(log.append(kind::OP, b"next"))
        .expect("append");
    assert_eq!(seq, 6);
    let replay = log.replay_own(0).expect("replay");
    assert_eq!(replay.records.len(), 6);
    assert_eq!(replay.tail, Tail::Clean);
}

#[test]
fn crc_corruption_in_committed_records_is_a_hard_explained_error() {
    let dir = shm_dir();
    let path = dir.path().join("region");
    prepare(&path, 10);
    let region = Arc::new(Region::open(&path, HALF_BYTES).expect("open"));
    let rec = format::record_bytes(100);
    let own = LogArea::new(region.clone(), Area::Own);
    for victim in [4u64, 9] {
        // Flip one payload bit of record `victim + 1`.
        let at = (victim as usize) * rec + format::RECORD_HEADER_BYTES + 17;
        let b = own.read(0, at as u64, at as u64 + 1)[0];
        // SAFETY: single user.
        unsafe { own.write(0, at as u64, &[b ^ 0x10]) };
        let err = own
            .replay(0)
            .expect_err("corrupt committed record must fail replay");
        let msg = err.to_string();
        assert!(msg.contains(&format!("record seq {}", victim + 1)), "{msg}");
        assert!(
            msg.contains("CRC32C mismatch") && msg.contains("recover from the partner"),
            "{msg}"
        );
        // SAFETY: single user; restore.
        unsafe { own.write(0, at as u64, &[b]) };
        assert_eq!(own.replay(0).expect("restored").records.len(), 10);
    }
    // A corrupt record past the committed end (never acknowledged) ends the log cleanly.
    let tail = 10 * rec as u64;
    let mut extra = vec![0u8; rec];
    format::encode_record(&mut extra, kind::OP, 11, &payload(11, 100));
    extra[60] ^= 1;
    // SAFETY: single user.
    unsafe { own.write(0, tail, &extra) };
    let replay = own.replay(0).expect("corrupt tail is not an error");
    assert_eq!(replay.records.len(), 10);
    assert!(
        matches!(&replay.tail, Tail::Torn { fault, .. } if fault.contains("CRC32C")),
        "{:?}",
        replay.tail
    );
}

#[test]
fn wrong_version_region_is_refused_with_a_clear_message() {
    let dir = shm_dir();
    let path: PathBuf = dir.path().join("region");
    prepare(&path, 1);
    let mut bytes = std::fs::read(&path).expect("read region");
    assert_eq!(&bytes[0..8], b"TFNVRAM\0");
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(&path, &bytes).expect("write region");
    let err = Nvlog::open(Config {
        region_path: path.clone(),
        half_bytes: HALF_BYTES,
        ..Config::default()
    })
    .err()
    .expect("wrong version must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains("format version 2 is not supported by this build (expects 1)"),
        "{msg}"
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert_eq!(REGION_HEADER_BYTES, 4096);
}

#[test]
fn full_log_makes_appenders_wait_for_the_cp_and_counts_it() {
    let dir = shm_dir();
    let path = dir.path().join("region");
    let log = standalone(&path);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let big = vec![5u8; 256 << 10];
        // Two halves of ~2 MiB hold 7 such records each; the 15th must wait.
        let mut last = 0;
        for _ in 0..14 {
            last = log.append(kind::OP, &big).await.expect("append");
        }
        let cp = tokio::time::timeout(std::time::Duration::from_secs(2), log.cp_wanted());
        cp.await.expect("a CP is wanted once a half is sealed");
        let log2 = log.clone();
        let waiter =
            tokio::spawn(async move { log2.append(kind::OP, &vec![6u8; 256 << 10]).await });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while log.status().backpressure_waits == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "appender never waited"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(!waiter.is_finished());
        log.release_through(last);
        let seq = waiter.await.expect("join").expect("append after CP");
        assert_eq!(seq, last + 1);
    });
    assert_eq!(log.status().backpressure_waits, 1);
}

/// A region file on a disk file system is made durable with msync; on tmpfs (/dev/shm) a
/// store already is as durable as the medium allows, and the mode says so.
#[test]
fn persist_mode_follows_the_file_system_of_the_region() {
    let dir = shm_dir();
    let log = standalone(&dir.path().join("region"));
    assert_eq!(log.status().persist_mode, "file+tmpfs");
    drop(log);
    // /var/tmp is a disk file system on our CI machines; skip where it is not.
    let disk = tempfile::Builder::new()
        .prefix("nvlog-test")
        .tempdir_in("/var/tmp")
        .expect("tempdir in /var/tmp");
    let on_tmpfs = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(disk.path())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "tmpfs")
        .unwrap_or(true);
    if on_tmpfs {
        eprintln!("skipped the msync half: /var/tmp is tmpfs here");
        return;
    }
    let path = disk.path().join("region");
    let rt = rt();
    {
        let log = standalone(&path);
        assert_eq!(log.status().persist_mode, "file+msync");
        rt.block_on(async {
            for i in 0..50u64 {
                log.append(kind::OP, &payload(i + 1, 700))
                    .await
                    .expect("append");
            }
        });
    }
    let log = standalone(&path);
    let replay = log.replay_own(0).expect("replay");
    assert_eq!(replay.records.len(), 50);
    assert_eq!(replay.records[49].payload, payload(50, 700));
}
