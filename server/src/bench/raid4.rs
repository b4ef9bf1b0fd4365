//! `twinfiler bench raid4`: parity XOR against memcpy, full-stripe writes against raw writes
//! of the same bytes through the same engine, healthy and degraded reads, and rebuild.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures::executor::block_on;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use raid4::buf::BufPool;
use raid4::disk::Disk;
use raid4::engine::{Engine, Segment};
use raid4::{CreateConfig, Geometry, Group, Tuning, BLOCK_SIZE, DEPTH_DEFAULT};

use super::report;

/// Data disks of the benchmark group (plus one parity disk and one spare).
const DATA_DISKS: usize = 4;
/// Where the disk files go: ext4 on /work supports O_DIRECT (/tmp may be tmpfs).
const BENCH_DIR: &str = "/work/tmp-bench";

struct Sizes {
    disk_mib: u64,
    xor_source_mib: usize,
    xor_rounds: usize,
    io_batch_stripes: usize,
    rounds: usize,
}

pub fn run(quick: bool) -> anyhow::Result<()> {
    let sizes = if quick {
        Sizes {
            disk_mib: 256,
            xor_source_mib: 16,
            xor_rounds: 4,
            io_batch_stripes: 64,
            rounds: 2,
        }
    } else {
        Sizes {
            disk_mib: 1024,
            xor_source_mib: 32,
            xor_rounds: 8,
            io_batch_stripes: 64,
            rounds: 3,
        }
    };
    let mut sizes = sizes;
    if let Some(v) = std::env::var("RAID4_BENCH_BATCH_STRIPES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        sizes.io_batch_stripes = v;
    }
    bench_xor(&sizes);
    let dir = tempdir_on_work()?;
    let result = bench_disks(&dir, &sizes);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempdir_on_work() -> anyhow::Result<PathBuf> {
    let dir = Path::new(BENCH_DIR).join(format!("raid4-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// XOR of N sources into one destination versus memcpy of the same N sources: both are
/// reported as source bytes per second.
fn bench_xor(s: &Sizes) {
    let len = s.xor_source_mib << 20;
    let srcs: Vec<Vec<u8>> = (0..DATA_DISKS).map(|i| vec![i as u8 + 1; len]).collect();
    let refs: Vec<&[u8]> = srcs.iter().map(|v| v.as_slice()).collect();
    let mut parity = vec![0u8; len];
    let mut copies: Vec<Vec<u8>> = (0..DATA_DISKS).map(|_| vec![0u8; len]).collect();
    raid4::xor::xor_into(&mut parity, &refs); // fault the pages in
    for (c, s) in copies.iter_mut().zip(&srcs) {
        c.copy_from_slice(s);
    }
    let bytes = (len * DATA_DISKS * s.xor_rounds) as f64;
    let t = Instant::now();
    for _ in 0..s.xor_rounds {
        raid4::xor::xor_into(&mut parity, &refs);
    }
    let xor_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..s.xor_rounds {
        for (c, s) in copies.iter_mut().zip(&srcs) {
            c.copy_from_slice(std::hint::black_box(s));
        }
    }
    let copy_s = t.elapsed().as_secs_f64();
    std::hint::black_box(&parity);
    std::hint::black_box(&copies);
    tracing::info!(kernel = ?raid4::xor::kernel(), "xor kernel");
    report("raid4.parity_xor_GBps", bytes / xor_s / 1e9, "GB/s");
    report("raid4.memcpy_GBps", bytes / copy_s / 1e9, "GB/s");
}

fn make_files(dir: &Path, names: &[&str], bytes: u64) -> anyhow::Result<Vec<PathBuf>> {
    names
        .iter()
        .map(|n| {
            let p = dir.join(n);
            let f = std::fs::File::create(&p)?;
            // Allocate up front so that neither the raw nor the RAID run pays for allocation.
            // SAFETY: plain syscall on an open descriptor.
            let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, bytes as libc::off_t) };
            if rc != 0 {
                f.set_len(bytes)?;
            }
            f.sync_all()?;
            Ok(p)
        })
        .collect()
}

fn bench_disks(dir: &Path, s: &Sizes) -> anyhow::Result<()> {
    let disk_bytes = s.disk_mib << 20;
    let names: Vec<String> = (0..=DATA_DISKS).map(|i| format!("disk{i}.img")).collect();
    let name_refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let disks = make_files(dir, &name_refs, disk_bytes)?;
    let spare = make_files(dir, &["spare.img"], disk_bytes)?.remove(0);
    let mut tuning = Tuning::default();
    if let Some(v) = std::env::var("RAID4_BENCH_STRIPES_INFLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        tuning.stripes_inflight_max = v;
    }
    let geo = Geometry {
        data_disks: DATA_DISKS,
        depth: DEPTH_DEFAULT,
        stripe_count: Geometry::stripes_fitting(disk_bytes, DEPTH_DEFAULT),
    };

    // Raw: every chunk of every disk written once, same sizes, offsets and window.
    let raw_bytes = geo.stripe_count * (geo.chunk_bytes() * geo.positions()) as u64;
    let mut cfg = CreateConfig::new(disks.clone());
    cfg.depth = DEPTH_DEFAULT;
    cfg.force = true;
    cfg.tuning = tuning;
    let g = Arc::new(Group::create(cfg)?);
    assert_eq!(g.stripe_count(), geo.stripe_count);
    let sbytes = g.stripe_data_blocks() * BLOCK_SIZE;
    // A 4 KiB-aligned buffer, as a file system's stripe cache would use: the data rows go
    // to the disks without a copy (an unaligned buffer costs one copy into the IO slots).
    let mut batch = raid4::AlignedBuf::zeroed(s.io_batch_stripes * sbytes);
    for (i, b) in batch.iter_mut().enumerate() {
        *b = (i * 7 + i / 4096) as u8;
    }
    let user_bytes = g.stripe_count() * sbytes as u64;
    let n = DATA_DISKS as f64;

    // The disks are shared with whatever else runs on the machine: take the best of a few
    // alternating rounds, raw then RAID on the same files each round.
    let (mut raw_mbps, mut write_mbps) = (0f64, 0f64);
    for _ in 0..s.rounds {
        let raw_s = raw_io(&disks, &geo, &tuning, true)?;
        raw_mbps = raw_mbps.max(raw_bytes as f64 / raw_s / 1e6);
        let t = Instant::now();
        let cpu0 = thread_cpu_s();
        let mut stripe = 0u64;
        while stripe < g.stripe_count() {
            let k = (s.io_batch_stripes as u64).min(g.stripe_count() - stripe) as usize;
            block_on(g.write_stripes(stripe, &batch[..k * sbytes]))?;
            stripe += k as u64;
        }
        block_on(g.flush())?;
        let write_s = t.elapsed().as_secs_f64();
        tracing::info!(
            wall_s = write_s,
            caller_cpu_s = thread_cpu_s() - cpu0,
            "full-stripe writes"
        );
        write_mbps = write_mbps.max(user_bytes as f64 / write_s / 1e6);
    }
    report("raid4.full_stripe_write_MBps", write_mbps, "MB/s");
    report("raid4.raw_write_MBps", raw_mbps, "MB/s");
    report(
        "raid4.write_vs_raw",
        write_mbps / (raw_mbps * n / (n + 1.0)),
        "ratio",
    );

    let (mut read_mbps, mut raw_read_mbps) = (0f64, 0f64);
    for _ in 0..s.rounds {
        // The same chunks read through a bare engine: what the disks give without RAID.
        let raw_s = raw_io(&disks, &geo, &tuning, false)?;
        raw_read_mbps = raw_read_mbps.max(raw_bytes as f64 / raw_s / 1e6);
        read_mbps = read_mbps.max(read_all(&g, s.io_batch_stripes)?);
    }
    report("raid4.read_MBps", read_mbps, "MB/s");
    report("raid4.raw_read_MBps", raw_read_mbps, "MB/s");
    report(
        "raid4.read_vs_raw",
        read_mbps / (raw_read_mbps * n / (n + 1.0)),
        "ratio",
    );

    block_on(g.fail_disk(0, "benchmark"))?;
    let mut degraded_mbps = 0f64;
    for _ in 0..s.rounds {
        degraded_mbps = degraded_mbps.max(read_all(&g, s.io_batch_stripes)?);
    }
    report("raid4.degraded_read_MBps", degraded_mbps, "MB/s");
    report(
        "raid4.degraded_vs_healthy",
        degraded_mbps / read_mbps,
        "ratio",
    );

    let r = block_on(g.rebuild(Some(&spare)))?;
    anyhow::ensure!(r.lost_blocks == 0, "rebuild lost blocks");
    report("raid4.rebuild_MBps", r.rate_mbps, "MB/s");
    Ok(())
}

/// Reads the whole group in batches and checks the first block of each batch; returns MB/s
/// of user data.
fn read_all(g: &Group, batch_stripes: usize) -> anyhow::Result<f64> {
    let sdb = g.stripe_data_blocks() as u64;
    let mut buf = vec![0u8; batch_stripes * sdb as usize * BLOCK_SIZE];
    let t = Instant::now();
    let mut stripe = 0u64;
    while stripe < g.stripe_count() {
        let n = (batch_stripes as u64).min(g.stripe_count() - stripe) as usize;
        let len = n * sdb as usize * BLOCK_SIZE;
        block_on(g.read_blocks(stripe * sdb, &mut buf[..len]))?;
        anyhow::ensure!(buf[1] == 7, "read back wrong data");
        stripe += n as u64;
    }
    Ok((g.stripe_count() * sdb) as f64 * BLOCK_SIZE as f64 / t.elapsed().as_secs_f64() / 1e6)
}

/// Writes (or reads) every chunk position of every disk once through a bare engine (no
/// parity, no checksums, no copy) with the group's window; returns seconds including the
/// final flush.
fn raw_io(paths: &[PathBuf], geo: &Geometry, tuning: &Tuning, write: bool) -> anyhow::Result<f64> {
    let slots = tuning.stripes_window(geo) * geo.positions();
    let engine = Engine::new(
        BufPool::new(geo.chunk_bytes(), slots),
        tuning.inflight_sqes_max,
    )?;
    let disks: Vec<Arc<Disk>> = paths
        .iter()
        .map(|p| Disk::open(p).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let mut free = block_on(engine.pool().acquire(slots));
    for (i, s) in free.iter_mut().enumerate() {
        s.bytes_mut().fill(i as u8 + 1);
    }
    let t = Instant::now();
    block_on(async {
        let mut inflight = FuturesUnordered::new();
        let mut next = 0u64;
        let total = geo.stripe_count * geo.positions() as u64;
        loop {
            while next < total {
                let Some(slot) = free.pop() else { break };
                let (stripe, pos) = (
                    next / geo.positions() as u64,
                    (next % geo.positions() as u64) as usize,
                );
                let seg = [Segment {
                    disk_offset: geo.chunk_offset(stripe),
                    slot_offset: 0,
                    len: geo.chunk_bytes(),
                }];
                let (disk, engine) = (&disks[pos], &engine);
                inflight.push(async move {
                    if write {
                        engine.write(disk, slot, &seg).await
                    } else {
                        engine.read(disk, slot, &seg).await
                    }
                });
                next += 1;
            }
            match inflight.next().await {
                Some(done) => {
                    done.result?;
                    free.push(done.slot.expect("writes return their slot"));
                }
                None => break,
            }
        }
        for d in &disks {
            engine.flush(d).await?;
        }
        Ok::<(), std::io::Error>(())
    })?;
    Ok(t.elapsed().as_secs_f64())
}

/// CPU seconds used by the calling thread so far.
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
