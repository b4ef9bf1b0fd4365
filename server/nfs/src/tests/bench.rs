//! A rough service-level benchmark (no transport): `cargo test -p twinfiler-nfs --release
//! -- --ignored bench --nocapture`. Log on /dev/shm, file system on a `MemStore`.

use std::time::Instant;

use super::*;

/// 1 MiB writes (and reads) in the sequential test.
const SEQ_IO_COUNT: usize = 256;
/// Requests in flight in the sequential tests.
const SEQ_INFLIGHT: usize = 4;
/// 4 KiB random writes.
const RANDOM_WRITES: usize = 5_000;
/// Files created, stat'ed and removed.
const META_FILES: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run explicitly"]
async fn bench_service() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let env = Arc::new(Env::build(dir, 40_000, 512 << 20, 20_000));
    let r = root();
    let d = env.root_fh().await;
    let f = env.create_file(&r, &d, "seq", 0o644).await;
    let chunk: Arc<Vec<u8>> = Arc::new((0..1u32 << 20).map(|i| i as u8).collect());

    // The floors: the file system's apply and the log's submit alone.
    let (ino, gen) = env.fs.reserve_inode();
    let new = wafl::NewObj {
        ino,
        gen,
        mode: 0o644,
        uid: 0,
        gid: 0,
    };
    let dir = wafl::Fid::ROOT;
    let op = wafl::FsOp::Create {
        dir,
        name: b"raw".to_vec(),
        new,
        how: wafl::CreateHow::Guarded,
        attr: Default::default(),
        time_ns: 1,
    };
    let mut seq = env.log.submit(nvlog::kind::USER_MIN, b"x").unwrap().seq();
    env.fs.apply(seq, &op).unwrap();
    let t = Instant::now();
    for i in 0..SEQ_IO_COUNT / 4 {
        seq = env.log.submit(nvlog::kind::USER_MIN, b"x").unwrap().seq();
        let w = wafl::FsOp::Write {
            target: wafl::Fid { ino, gen },
            offset: (i as u64) << 20,
            data: chunk.to_vec().into(),
            time_ns: 2,
        };
        env.fs.apply(seq, &w).unwrap();
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "floor: wafl apply of 1 MiB writes: {:.0} MB/s",
        (SEQ_IO_COUNT / 4) as f64 * 1.048576 / s
    );
    let t = Instant::now();
    let mut last = None;
    for _ in 0..SEQ_IO_COUNT / 4 {
        last = Some(env.log.submit(nvlog::kind::USER_MIN, &chunk).unwrap());
    }
    last.unwrap().await.unwrap();
    let s = t.elapsed().as_secs_f64();
    println!(
        "floor: nvlog submit of 1 MiB records: {:.0} MB/s",
        (SEQ_IO_COUNT / 4) as f64 * 1.048576 / s
    );
    env.fs.cp().unwrap();
    env.log.release_through(env.fs.applied_seq());

    let t = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..SEQ_INFLIGHT {
        let (env, r, chunk) = (env.clone(), r.clone(), chunk.clone());
        tasks.push(tokio::spawn(async move {
            for i in (k..SEQ_IO_COUNT).step_by(SEQ_INFLIGHT) {
                ok(env.write(&r, &f, (i as u64) << 20, &chunk).await);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "seq write 1 MiB x {SEQ_IO_COUNT}, {SEQ_INFLIGHT} in flight: {:.0} MB/s",
        SEQ_IO_COUNT as f64 * 1.048576 / s
    );
    env.fs.cp().unwrap();
    env.log.release_through(env.fs.applied_seq());

    let t = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..SEQ_INFLIGHT {
        let (env, r) = (env.clone(), r.clone());
        tasks.push(tokio::spawn(async move {
            for i in (k..SEQ_IO_COUNT).step_by(SEQ_INFLIGHT) {
                let rd = ok(env.read(&r, &f, (i as u64) << 20, 1 << 20).await);
                assert_eq!(rd.data.len(), 1 << 20);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "seq read 1 MiB x {SEQ_IO_COUNT}, {SEQ_INFLIGHT} in flight: {:.0} MB/s",
        SEQ_IO_COUNT as f64 * 1.048576 / s
    );

    let block = vec![7u8; 4096];
    let mut x = 12345u64;
    let t = Instant::now();
    for _ in 0..RANDOM_WRITES {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 33) % (SEQ_IO_COUNT as u64 * 256) * 4096;
        ok(env.write(&r, &f, off, &block).await);
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "random 4 KiB write, 1 in flight: {:.0} IOPS",
        RANDOM_WRITES as f64 / s
    );
    let t = Instant::now();
    for _ in 0..RANDOM_WRITES {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 33) % (SEQ_IO_COUNT as u64 * 256) * 4096;
        ok(env.read(&r, &f, off, 4096).await);
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "random 4 KiB read, 1 in flight: {:.0} IOPS",
        RANDOM_WRITES as f64 / s
    );

    let m = ok(env.mkdir(&r, &d, "meta", 0o755).await).obj.unwrap();
    let t = Instant::now();
    let mut fhs = Vec::new();
    for i in 0..META_FILES {
        fhs.push(env.create_file(&r, &m, &format!("f{i}"), 0o644).await);
    }
    let c = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for fh in &fhs {
        ok(env.getattr(&r, fh).await);
    }
    let g = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..META_FILES {
        ok(env.remove(&r, &m, &format!("f{i}")).await);
    }
    let rm = t.elapsed().as_secs_f64();
    let n = META_FILES as f64;
    println!(
        "create {:.0}/s, getattr {:.0}/s, remove {:.0}/s (1 in flight)",
        n / c,
        n / g,
        n / rm
    );
}
