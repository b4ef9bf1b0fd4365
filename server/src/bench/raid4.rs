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

struct Sizes {
    disk_mib: u64,
    xor_source_mib: usize,
    xor_rounds: usize,
    io_batch_stripes: usize,
    rounds: usize,
    /// Alternating raw/RAID write rounds (odd, so the median is one of them).
    write_rounds: usize,
}

/// `write_stripes` calls kept in flight by the pipelined write run: while one call's last
/// stripes drain, the next call's stripes are already being encoded and submitted, so the
/// queue depth stays at the group's window as in the raw run (a file system whose CP thread
/// queues batches gets the same). The serial run (one call at a time) is reported as well.
const CALLS_PIPELINED: usize = 2;

pub fn run(quick: bool, bench_dir: &Path) -> anyhow::Result<()> {
    let sizes = if quick {
        Sizes {
            disk_mib: 256,
            xor_source_mib: 16,
            xor_rounds: 4,
            io_batch_stripes: 64,
            rounds: 2,
            write_rounds: 5,
        }
    } else {
        Sizes {
            disk_mib: 1024,
            xor_source_mib: 32,
            xor_rounds: 8,
            io_batch_stripes: 64,
            rounds: 3,
            write_rounds: 7,
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
    let dir = bench_dir.join(format!("raid4-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let result = bench_disks(&dir, &sizes);
    let _ = std::fs::remove_dir_all(&dir);
    result
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
    // RAID4_BENCH_MISALIGN_BYTES=64 measures the copy path instead (data copied into the
    // registered IO slots, as for a caller whose buffer is not 4 KiB-aligned).
    let misalign = std::env::var("RAID4_BENCH_MISALIGN_BYTES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0)
        % BLOCK_SIZE;
    let mut batch_buf = raid4::AlignedBuf::zeroed(s.io_batch_stripes * sbytes + BLOCK_SIZE);
    let batch = &mut batch_buf[misalign..misalign + s.io_batch_stripes * sbytes];
    for (i, b) in batch.iter_mut().enumerate() {
        *b = (i * 7 + i / 4096) as u8;
    }
    let batch = &*batch;
    let n = DATA_DISKS as f64;

    // The disks are shared with whatever else runs on the machine: raw and RAID runs
    // alternate on the same files (the order flips every round so drift favours neither),
    // and the medians are reported; each ratio is the median of the per-round ratios.
    //
    // The raw run writes from its `window × positions` registered slots (10 MiB at the
    // defaults), which stay in the CPU caches. The headline RAID run is given the same kind
    // of source: a batch of `window` stripes, rewritten over and over. The "cold" runs write
    // from the whole 64-stripe batch (31 MiB, beyond the caches), as a file system flushing
    // fresh data would: the difference between the two is memory traffic, not RAID work.
    //
    // One uncounted pass first: fallocate leaves unwritten extents, and whichever run wrote
    // them first would pay for converting them.
    raw_io(&disks, &geo, &tuning, true)?;
    let warm_stripes = tuning.stripes_window(&geo).min(s.io_batch_stripes);
    let warm = &batch[..warm_stripes * sbytes];
    let (mut raw, mut ratios, mut cold_ratios) = (vec![], vec![], vec![]);
    let (mut piped, mut cold, mut cold_serial) = (vec![], vec![], vec![]);
    for round in 0..s.write_rounds {
        let raw_round = |raw: &mut Vec<f64>| -> anyhow::Result<f64> {
            let raw_s = raw_io(&disks, &geo, &tuning, true)?;
            raw.push(raw_bytes as f64 / raw_s / 1e6);
            Ok(raw_bytes as f64 / raw_s / 1e6)
        };
        let raid_round = || -> anyhow::Result<(f64, f64)> {
            Ok((
                write_all(&g, warm, warm_stripes, CALLS_PIPELINED)?,
                write_all(&g, batch, s.io_batch_stripes, CALLS_PIPELINED)?,
            ))
        };
        let (raw_mbps, (piped_mbps, cold_mbps)) = if round % 2 == 0 {
            let r = raw_round(&mut raw)?;
            (r, raid_round()?)
        } else {
            let w = raid_round()?;
            (raw_round(&mut raw)?, w)
        };
        piped.push(piped_mbps);
        cold.push(cold_mbps);
        ratios.push(piped_mbps / (raw_mbps * n / (n + 1.0)));
        cold_ratios.push(cold_mbps / (raw_mbps * n / (n + 1.0)));
        cold_serial.push(write_all(&g, batch, s.io_batch_stripes, 1)?);
    }
    tracing::info!(?raw, ?piped, ?cold, ?cold_serial, "write rounds, MB/s");
    report("raid4.full_stripe_write_MBps", median(&mut piped), "MB/s");
    report("raid4.raw_write_MBps", median(&mut raw), "MB/s");
    report("raid4.write_vs_raw", median(&mut ratios), "ratio");
    report(
        "raid4.full_stripe_write_cold_MBps",
        median(&mut cold),
        "MB/s",
    );
    report("raid4.write_vs_raw_cold", median(&mut cold_ratios), "ratio");
    report(
        "raid4.full_stripe_write_cold_serial_MBps",
        median(&mut cold_serial),
        "MB/s",
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

/// Writes every stripe of the group from `batch` (reused for every call), keeping `calls`
/// `write_stripes` calls in flight, then flushes; returns MB/s of user data.
fn write_all(g: &Group, batch: &[u8], batch_stripes: usize, calls: usize) -> anyhow::Result<f64> {
    let sbytes = g.stripe_data_blocks() * BLOCK_SIZE;
    let t = Instant::now();
    let (cpu0, pcpu0) = (thread_cpu_s(), process_cpu_s());
    block_on(async {
        let mut inflight = FuturesUnordered::new();
        let mut stripe = 0u64;
        loop {
            while inflight.len() < calls && stripe < g.stripe_count() {
                let k = (batch_stripes as u64).min(g.stripe_count() - stripe) as usize;
                inflight.push(g.write_stripes(stripe, &batch[..k * sbytes]));
                stripe += k as u64;
            }
            match inflight.next().await {
                Some(r) => r?,
                None => break,
            }
        }
        g.flush().await
    })?;
    let wall_s = t.elapsed().as_secs_f64();
    tracing::info!(
        wall_s,
        caller_cpu_s = thread_cpu_s() - cpu0,
        process_cpu_s = process_cpu_s() - pcpu0,
        calls,
        "full-stripe writes"
    );
    Ok(g.stripe_count() as f64 * sbytes as f64 / wall_s / 1e6)
}

fn median(v: &mut [f64]) -> f64 {
    assert!(!v.is_empty(), "median of nothing");
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
    let (t, pcpu0) = (Instant::now(), process_cpu_s());
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
    let wall_s = t.elapsed().as_secs_f64();
    tracing::info!(
        wall_s,
        process_cpu_s = process_cpu_s() - pcpu0,
        write,
        "raw IO"
    );
    Ok(wall_s)
}

/// CPU seconds (user + system) used by the whole process so far: caller, ring threads and
/// the kernel work done on their behalf.
fn process_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
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
