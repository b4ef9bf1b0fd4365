//! Integration tests of RAID-4 groups on real files through real io_uring.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::executor::block_on;
use raid4::{
    AssembleConfig, DiskSource, DiskState, Fault, Group, GroupState, Raid4Error, BLOCK_SIZE,
};
use rand::seq::SliceRandom;
use rand::SeedableRng;

fn assemble_list(paths: &[PathBuf]) -> Result<Group, Raid4Error> {
    Group::assemble(AssembleConfig::new(DiskSource::List(paths.to_vec())))
}

fn assembly_problems(r: Result<Group, Raid4Error>) -> String {
    match r {
        Err(e @ Raid4Error::Assembly { .. }) => e.to_string(),
        Err(e) => panic!("expected an assembly error, got {e}"),
        Ok(_) => panic!("assembly should have failed"),
    }
}

#[test]
fn write_read_roundtrip_and_assemble_in_shuffled_order() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (g, disks, _) = new_group(dir.path(), 4, 0, 24, 8);
    assert_eq!(g.data_disks(), 4);
    assert_eq!(g.stripe_data_blocks(), 4 * 7);
    assert_eq!(g.stripe_count(), 24);
    let data = fill(&g, 1);
    assert_eq!(read_all(&g).expect("read"), data);
    // Unaligned ranges crossing disks and stripes.
    for (start, len) in [(0u64, 1usize), (5, 9), (27, 2), (30, 70), (100, 1)] {
        let mut buf = vec![0u8; len * BLOCK_SIZE];
        block_on(g.read_blocks(start, &mut buf)).expect("range read");
        let at = start as usize * BLOCK_SIZE;
        assert_eq!(buf, data[at..at + buf.len()], "blocks {start}+{len}");
    }
    let uuid = g.uuid();
    drop(g);
    let mut shuffled = disks.clone();
    shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(3));
    assert_ne!(shuffled, disks);
    let g = assemble_list(&shuffled).expect("assemble shuffled");
    assert_eq!(g.uuid(), uuid);
    assert_eq!(g.status().state, GroupState::Normal);
    assert_eq!(read_all(&g).expect("read"), data);
    drop(g);
    let g = Group::assemble(AssembleConfig::new(DiskSource::Dir(
        dir.path().to_path_buf(),
    )))
    .expect("assemble dir");
    assert_eq!(read_all(&g).expect("read"), data);
    // Out-of-range and misaligned requests are refused.
    assert!(block_on(g.write_stripes(24, &data[..g.stripe_data_blocks() * BLOCK_SIZE])).is_err());
    assert!(block_on(g.write_stripes(0, &data[..BLOCK_SIZE])).is_err());
    let mut one = vec![0u8; BLOCK_SIZE];
    assert!(block_on(g.read_blocks(g.total_blocks(), &mut one)).is_err());
}

#[test]
fn never_written_stripes_read_as_zeros() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (g, _, _) = new_group(dir.path(), 2, 0, 4, 4);
    let mut buf = vec![1u8; g.stripe_data_blocks() * BLOCK_SIZE];
    block_on(g.read_blocks(0, &mut buf)).expect("read unwritten");
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn assembly_rejects_foreign_duplicate_blank_stale_and_missing_disks() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (g, disks, _) = new_group(dir.path(), 3, 0, 8, 4);
    let data = fill(&g, 2);
    drop(g);
    // Foreign: a disk of another aggregate.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    let (g2, other_disks, _) = new_group(&other, 2, 0, 8, 4);
    drop(g2);
    let mut list = disks.clone();
    list.push(other_disks[0].clone());
    let msg = assembly_problems(assemble_list(&list));
    assert!(
        msg.contains("is foreign") && msg.contains(&other_disks[0].display().to_string()),
        "{msg}"
    );
    // Duplicate: a copied disk image.
    let copy = dir.path().join("copy.img");
    std::fs::copy(&disks[1], &copy).expect("copy");
    let mut list = disks.clone();
    list.push(copy.clone());
    let msg = assembly_problems(assemble_list(&list));
    assert!(
        msg.contains("are the same disk") && msg.contains("copy.img"),
        "{msg}"
    );
    std::fs::remove_file(&copy).expect("rm");
    // Blank.
    let blank = disk_files(dir.path(), "blank", 1, 8, 4);
    let mut list = disks.clone();
    list.push(blank[0].clone());
    let msg = assembly_problems(assemble_list(&list));
    assert!(msg.contains("no twinfiler label"), "{msg}");
    // Missing: refused, unless degraded is allowed.
    let msg = assembly_problems(assemble_list(&disks[..3]));
    assert!(
        msg.contains("disk #3") && msg.contains("is missing") && msg.contains("--degraded"),
        "{msg}"
    );
    let mut cfg = AssembleConfig::new(DiskSource::List(disks[..3].to_vec()));
    cfg.allow_degraded = true;
    let g = Group::assemble(cfg).expect("degraded assembly");
    let st = g.status();
    assert_eq!(st.state, GroupState::Degraded);
    assert_eq!(st.disks[3].state, DiskState::Missing);
    assert_eq!(read_all(&g).expect("degraded read"), data);
    drop(g);
    // The missing disk came back, but the aggregate moved on without it: stale.
    let msg = assembly_problems(assemble_list(&disks));
    assert!(
        msg.contains("is stale")
            && msg.contains(&disks[3].display().to_string())
            && msg.contains("--spare"),
        "{msg}"
    );
    // In a directory scan the stale disk is skipped with a note instead.
    std::fs::remove_dir_all(&other).expect("rm other");
    std::fs::remove_file(&blank[0]).expect("rm blank");
    let g = Group::assemble(AssembleConfig::new(DiskSource::Dir(
        dir.path().to_path_buf(),
    )))
    .expect("dir assembly");
    let st = g.status();
    assert_eq!(st.state, GroupState::Degraded);
    assert!(
        st.notes.iter().any(|n| n.contains("is stale")),
        "{:?}",
        st.notes
    );
    // Two missing: refused even with --degraded.
    drop(g);
    let mut cfg = AssembleConfig::new(DiskSource::List(disks[..2].to_vec()));
    cfg.allow_degraded = true;
    let msg = assembly_problems(Group::assemble(cfg));
    assert!(msg.contains("RAID-4 survives one"), "{msg}");
}

#[test]
fn reads_survive_a_disk_killed_by_injected_error_truncation_or_deletion() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    // Injected IO error on a data disk.
    let (g, _, _) = new_group(dir.path(), 4, 0, 16, 8);
    let data = fill(&g, 3);
    g.inject_fault(1, Fault::All);
    assert_eq!(read_all(&g).expect("read with a failed disk"), data);
    let st = g.status();
    assert_eq!(st.state, GroupState::Degraded);
    assert_eq!(st.disks[1].state, DiskState::Failed);
    assert!(st.disks[1].read_errors >= 1);
    assert!(st.disks[1]
        .reason
        .as_deref()
        .unwrap_or("")
        .contains("injected"));
    // Writes continue degraded, and read back.
    let data2 = pattern(data.len(), 33);
    block_on(g.write_stripes(0, &data2)).expect("degraded write");
    assert_eq!(read_all(&g).expect("degraded read"), data2);
    drop(g);
    // Truncated parity... and data disk file: short reads fail the disk.
    for victim in [0usize, 4] {
        let sub = dir.path().join(format!("t{victim}"));
        std::fs::create_dir(&sub).expect("mkdir");
        let (g, disks, _) = new_group(&sub, 4, 0, 16, 8);
        let data = fill(&g, 4);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&disks[victim])
            .expect("open")
            .set_len(1 << 20)
            .expect("truncate");
        assert_eq!(read_all(&g).expect("read after truncation"), data);
        if victim < 4 {
            assert_eq!(g.status().disks[victim].state, DiskState::Failed);
        }
    }
    // Deleted file: the next assembly runs degraded without it.
    let sub = dir.path().join("deleted");
    std::fs::create_dir(&sub).expect("mkdir");
    let (g, disks, _) = new_group(&sub, 4, 0, 16, 8);
    let data = fill(&g, 9);
    drop(g);
    std::fs::remove_file(&disks[2]).expect("delete disk");
    let mut cfg = AssembleConfig::new(DiskSource::Dir(sub.clone()));
    cfg.allow_degraded = true;
    let g = Group::assemble(cfg).expect("assemble without the deleted disk");
    assert_eq!(g.status().disks[2].state, DiskState::Missing);
    assert_eq!(read_all(&g).expect("read"), data);
}

#[test]
fn two_failures_take_the_group_offline_and_nothing_is_written() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (g, disks, _) = new_group(dir.path(), 3, 0, 8, 4);
    let data = fill(&g, 5);
    block_on(g.fail_disk(0, "drill")).expect("fail 0");
    assert_eq!(g.status().state, GroupState::Degraded);
    g.inject_fault(2, Fault::Reads);
    // The read trips over the second failure.
    let err = read_all(&g).expect_err("two failures");
    assert!(matches!(err, Raid4Error::Offline { .. }), "{err}");
    let before: Vec<Vec<u8>> = disks
        .iter()
        .map(|p| std::fs::read(p).expect("read file"))
        .collect();
    let st = g.status();
    assert_eq!(st.state, GroupState::Offline);
    assert!(st
        .offline_reason
        .as_deref()
        .unwrap_or("")
        .contains("disk #0"));
    let err = block_on(g.write_stripes(0, &data)).expect_err("offline write");
    assert!(
        err.to_string().contains("OFFLINE") && err.to_string().contains("Nothing was written"),
        "{err}"
    );
    assert!(block_on(g.flush()).is_err());
    let after: Vec<Vec<u8>> = disks
        .iter()
        .map(|p| std::fs::read(p).expect("read file"))
        .collect();
    assert!(before == after, "an offline group changed a disk");
}

#[test]
fn rebuild_onto_a_spare_restores_every_block_with_progress_and_correct_reads() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (g, disks, spares) = new_group(dir.path(), 3, 1, 1024, 8);
    let g = Arc::new(g);
    let data = Arc::new(fill(&g, 6));
    block_on(g.fail_disk(1, "replace")).expect("fail");
    // Reads during the rebuild stay correct; status shows progress.
    let reader = {
        let (g, data) = (g.clone(), data.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut seen = Vec::new();
            let mut rounds = 0;
            while Instant::now() < deadline && rounds < 200 {
                if let Some(p) = g.status().rebuild {
                    seen.push(p);
                }
                let b = (rounds as u64 * 997) % (g.total_blocks() - 64);
                let mut buf = vec![0u8; 64 * BLOCK_SIZE];
                block_on(g.read_blocks(b, &mut buf)).expect("read during rebuild");
                let at = b as usize * BLOCK_SIZE;
                assert!(
                    buf == data[at..at + buf.len()],
                    "wrong data during rebuild at block {b}"
                );
                rounds += 1;
                if g.status().last_rebuild.is_some() {
                    break;
                }
            }
            seen
        })
    };
    let report = block_on(g.rebuild(None)).expect("rebuild");
    let seen = reader.join().expect("reader");
    assert!(!seen.is_empty(), "rebuild progress never showed in status");
    assert!(seen
        .windows(2)
        .all(|w| w[0].done_stripes <= w[1].done_stripes));
    assert_eq!(report.position, 1);
    assert_eq!(report.lost_blocks, 0);
    assert_eq!(report.stripes, g.stripe_count());
    assert!(report.rate_mbps > 0.0);
    for p in &seen {
        assert!(p.percent >= 0.0 && p.percent <= 100.0 && p.total_stripes == 1024);
    }
    let st = g.status();
    assert_eq!(st.state, GroupState::Normal);
    assert_eq!(st.disks[1].path.as_ref(), Some(&spares[0]));
    // Every block of the rebuilt disk equals the original disk's (same position, same stamps).
    let chunk_area = |p: &PathBuf| std::fs::read(p).expect("read")[(1 << 20)..].to_vec();
    assert!(
        chunk_area(&disks[1]) == chunk_area(&spares[0]),
        "rebuilt disk differs"
    );
    // It assembles with the spare in place of the failed disk, which is now stale.
    drop(g);
    let mut list = vec![
        disks[0].clone(),
        spares[0].clone(),
        disks[2].clone(),
        disks[3].clone(),
    ];
    list.reverse();
    let g = assemble_list(&list).expect("assemble after rebuild");
    assert_eq!(g.status().state, GroupState::Normal);
    assert_eq!(read_all(&g).expect("read"), *data);
    let mut with_old = list.clone();
    with_old.push(disks[1].clone());
    drop(g);
    assert!(assembly_problems(assemble_list(&with_old)).contains("is stale"));
    // The rebuilt disk carries the data: fail another one and read everything.
    let g = assemble_list(&list).expect("assemble after rebuild");
    g.inject_fault(0, Fault::All);
    assert_eq!(read_all(&g).expect("read"), *data);
}

#[test]
fn scrub_finds_and_repairs_flipped_bits_in_data_parity_and_checksums() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let depth = 8;
    let (g, disks, _) = new_group(dir.path(), 4, 0, 16, depth);
    let data = fill(&g, 7);
    let sdb = g.stripe_data_blocks() as u64;
    // Data block: disk 1, stripe 3, row 2.
    let data_off = disk_offset(depth, 3, 2) + 100;
    let orig = read_at(&disks[1], data_off, 1);
    flip_bit(&disks[1], data_off);
    // Parity block: stripe 5, row 0.
    flip_bit(&disks[4], disk_offset(depth, 5, 0) + 7);
    // Checksum block of disk 2, stripe 7.
    flip_bit(&disks[2], disk_offset(depth, 7, depth - 1) + 60);
    // A read of the corrupted data block returns the right data and counts the error.
    let block = 3 * sdb + 7 + 2;
    let mut buf = vec![0u8; BLOCK_SIZE];
    block_on(g.read_blocks(block, &mut buf)).expect("read bad block");
    let at = block as usize * BLOCK_SIZE;
    assert_eq!(buf, data[at..at + BLOCK_SIZE]);
    let st = g.status();
    assert_eq!(st.counters.checksum_errors, 1);
    assert_eq!(st.disks[1].checksum_errors, 1);
    assert!(st.counters.reconstructed_blocks >= 1);
    // Scrub finds all three and repairs them.
    let rep = block_on(g.scrub()).expect("scrub");
    assert_eq!(rep.stripes_checked, 16);
    assert_eq!(rep.unrepairable_blocks, 0, "{rep}");
    assert!(rep.checksum_errors >= 3, "{rep}");
    assert!(rep.repaired_blocks >= 2 + 7, "{rep}");
    assert!(
        rep.damage
            .iter()
            .any(|d| d.contains("stripe 3 disk #1 row 2")),
        "{rep}"
    );
    assert!(
        rep.damage
            .iter()
            .any(|d| d.contains("stripe 5 disk #4 row 0")),
        "{rep}"
    );
    assert!(
        rep.damage.iter().any(|d| d.contains("stripe 7 disk #2")),
        "{rep}"
    );
    assert_eq!(
        read_at(&disks[1], data_off, 1),
        orig,
        "scrub rewrote the block on disk"
    );
    let rep2 = block_on(g.scrub()).expect("second scrub");
    assert_eq!(
        (rep2.checksum_errors, rep2.repaired_blocks),
        (0, 0),
        "{rep2}"
    );
    assert_eq!(read_all(&g).expect("read"), data);
}

#[test]
fn scrub_catches_a_lost_write_and_reports_unrepairable_double_damage() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let depth = 4;
    let (g, disks, _) = new_group(dir.path(), 3, 0, 8, depth);
    let mut data = fill(&g, 8);
    let sbytes = g.stripe_data_blocks() * BLOCK_SIZE;
    // Lost write: disk 0 keeps its old chunk of stripe 4 while the others take the new one.
    let chunk_off = disk_offset(depth, 4, 0);
    let old_chunk = read_at(&disks[0], chunk_off, depth * BLOCK_SIZE);
    let new = pattern(sbytes, 88);
    block_on(g.write_stripes(4, &new)).expect("rewrite");
    block_on(g.flush()).expect("flush");
    data[4 * sbytes..5 * sbytes].copy_from_slice(&new);
    write_at(&disks[0], chunk_off, &old_chunk);
    let rep = block_on(g.scrub()).expect("scrub");
    assert_eq!(rep.stale_chunks, 1, "{rep}");
    assert_eq!(rep.unrepairable_blocks, 0, "{rep}");
    assert_eq!(read_all(&g).expect("read"), data);
    // Same row bad on two disks: the read fails clearly, scrub reports it.
    flip_bit(&disks[0], disk_offset(depth, 2, 1));
    flip_bit(&disks[1], disk_offset(depth, 2, 1));
    let mut buf = vec![0u8; BLOCK_SIZE];
    let block = 2 * g.stripe_data_blocks() as u64 + 1;
    let err = block_on(g.read_blocks(block, &mut buf)).expect_err("double damage");
    assert!(matches!(err, Raid4Error::Unrecoverable { .. }), "{err}");
    assert!(err.to_string().contains("disk #0"), "{err}");
    let rep = block_on(g.scrub()).expect("scrub");
    assert_eq!(rep.unrepairable_blocks, 2, "{rep}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_tasks_share_a_group() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (g, _, _) = new_group(dir.path(), 5, 0, 32, 16);
    let g = Arc::new(g);
    let sbytes = g.stripe_data_blocks() * BLOCK_SIZE;
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let g = g.clone();
        tasks.push(tokio::spawn(async move {
            for s in (t..32).step_by(4) {
                let d = pattern(sbytes, 1000 + s);
                g.write_stripes(s, &d).await.expect("write");
                let mut back = vec![0u8; sbytes];
                g.read_blocks(s * g.stripe_data_blocks() as u64, &mut back)
                    .await
                    .expect("read");
                assert!(back == d, "stripe {s}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    g.flush().await.expect("flush");
}

#[test]
fn rebuild_onto_a_blank_disk_added_later_then_scrub_is_clean() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (g, _, _) = new_group(dir.path(), 2, 0, 32, 4);
    let data = fill(&g, 10);
    let err = block_on(g.rebuild(None)).expect_err("nothing failed");
    assert!(err.to_string().contains("nothing to rebuild"), "{err}");
    block_on(g.fail_disk(2, "parity replaced")).expect("fail parity");
    let err = block_on(g.rebuild(None)).expect_err("no spare");
    assert!(err.to_string().contains("--spare"), "{err}");
    let err = block_on(g.scrub()).expect_err("degraded scrub");
    assert!(err.to_string().contains("rebuild first"), "{err}");
    let blank = disk_files(dir.path(), "blank", 1, 32, 4);
    let report = block_on(g.rebuild(Some(&blank[0]))).expect("rebuild onto blank");
    assert_eq!((report.position, report.lost_blocks), (2, 0));
    assert_eq!(g.status().state, GroupState::Normal);
    let rep = block_on(g.scrub()).expect("scrub");
    assert_eq!(
        (
            rep.checksum_errors,
            rep.parity_mismatches,
            rep.stripes_checked
        ),
        (0, 0, 32),
        "{rep}"
    );
    assert_eq!(read_all(&g).expect("read"), data);
}

#[test]
fn aligned_buffers_skip_the_copy_and_read_back_the_same() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (g, disks, _) = new_group(dir.path(), 3, 0, 16, 8);
    let data = pattern(16 * g.stripe_data_blocks() * BLOCK_SIZE, 11);
    let mut aligned = raid4::AlignedBuf::zeroed(data.len() + BLOCK_SIZE);
    aligned[..data.len()].copy_from_slice(&data);
    // Aligned: zero-copy writes; then a misaligned view of the same bytes: copied writes.
    block_on(g.write_stripes(0, &aligned[..data.len()])).expect("aligned write");
    block_on(g.flush()).expect("flush");
    assert_eq!(read_all(&g).expect("read"), data);
    let rep = block_on(g.scrub()).expect("scrub");
    assert_eq!(
        (rep.checksum_errors, rep.parity_mismatches),
        (0, 0),
        "{rep}"
    );
    let data2 = pattern(data.len(), 12);
    aligned[1..1 + data.len()].copy_from_slice(&data2);
    block_on(g.write_stripes(0, &aligned[1..1 + data.len()])).expect("misaligned write");
    assert!(
        read_all(&g).expect("read") == data2,
        "misaligned write read back"
    );
    // Degraded writes from an aligned buffer, then reconstruction.
    aligned[..data.len()].copy_from_slice(&data);
    g.inject_fault(1, Fault::Writes);
    block_on(g.write_stripes(0, &aligned[..data.len()])).expect("degraded aligned write");
    g.inject_fault(1, Fault::None);
    assert_eq!(g.status().disks[1].state, DiskState::Failed);
    assert!(
        read_all(&g).expect("read") == data,
        "degraded read after aligned write"
    );
    drop(g);
    let _ = disks;
}

/// A node that lost its reservation must not write: with the gate closed, stripe writes fail
/// with `Fenced` and the disks keep their old contents; reopened, writes go through again.
#[test]
fn a_closed_write_gate_fences_every_write() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (g, _disks, _) = new_group(dir.path(), 3, 0, 8, 8);
    let old = fill(&g, 7);
    let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
    g.set_write_gate(vec![held.clone()]);
    let new = pattern(old.len(), 8);
    match block_on(g.write_stripes(0, &new)) {
        Err(Raid4Error::Fenced { uuid }) => assert_eq!(uuid, g.uuid()),
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert_eq!(
        read_all(&g).expect("read"),
        old,
        "a fenced write changed the disks"
    );
    held.store(true, std::sync::atomic::Ordering::Release);
    block_on(g.write_stripes(0, &new)).expect("write with the gate open");
    assert_eq!(read_all(&g).expect("read"), new);
}
