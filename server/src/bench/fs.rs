//! `twinfiler bench fs`: file-system operations in process, and the CP write rate compared
//! with full-stripe writes straight to the same store in the same run.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use wafl::{Attr, CpDriver, CreateHow, Fid, FileStore, Fs, FsConfig, FsOp, NewObj, StripeStore};

use super::report;

/// Sizes of one run.
struct Plan {
    files: u64,
    data_mib: u64,
    store_mib: u64,
}

/// Data disks of the benchmark group (plus one parity disk).
const DATA_DISKS: usize = 4;
/// Room per disk file for the group's labels and headers.
const DISK_HEADER_SLACK_BYTES: u64 = 16 << 20;
/// Data blocks per stripe of the file-backed store (`WAFL_BENCH_STORE=file`).
const FILE_STRIPE_DATA_BLOCKS: usize = 8;
/// Bytes per `write_stripes` call of the baseline (the CP batch bound by default).
const RAW_BATCH_BYTES: usize = 16 << 20;
/// 4 KiB random reads per MiB of the data file in the cached-read phase.
const RAND_READS_PER_MIB: u64 = 256;
/// Step between random reads, blocks: odd, so it visits every block of a power-of-two file.
const RAND_STRIDE_BLOCKS: u64 = 7919;
/// Dirty data that triggers a CP during the write phase.
const CP_DIRTY_BYTES_MAX: u64 = 64 << 20;

pub fn run(quick: bool, bench_dir: &Path) -> anyhow::Result<()> {
    let plan = if quick {
        Plan {
            files: 20_000,
            data_mib: 256,
            store_mib: 1024,
        }
    } else {
        Plan {
            files: 200_000,
            data_mib: 1024,
            store_mib: 4096,
        }
    };
    let (store, _dir) = open_store(&plan, bench_dir)?;

    // A first pass allocates every block of the backing files (as the CPs will find them),
    // the second one is the baseline, over the region the write phase's CPs will use.
    raw_stripe_rate(&*store, plan.store_mib)?;
    let raw_mbps = raw_stripe_rate(&*store, plan.data_mib)?;
    report("fs.raw_stripe_write_MBps", raw_mbps, "MB/s");

    // `WAFL_BENCH_DATA_CACHE_MIB` sets the data-block cache (0: off) to compare with and
    // without it in one build.
    let data_cache_bytes_max = match std::env::var("WAFL_BENCH_DATA_CACHE_MIB") {
        Ok(v) => v.parse::<u64>().context("WAFL_BENCH_DATA_CACHE_MIB")? << 20,
        Err(_) => FsConfig::default().data_cache_bytes_max,
    };
    let base = FsConfig {
        data_cache_bytes_max,
        ..FsConfig::default()
    };
    let config = FsConfig {
        cp_dirty_bytes_max: CP_DIRTY_BYTES_MAX,
        ..base.clone()
    };
    let fs = Arc::new(Fs::mkfs(store.clone(), now_ns(), config)?);
    let mut seq = 0u64;
    let mut apply = |fs: &Fs, op: FsOp| -> anyhow::Result<Option<Attr>> {
        seq += 1;
        Ok(fs.apply(seq, &op)?)
    };
    let root = Fid::ROOT;
    let create = |fs: &Fs, name: Vec<u8>, time_ns: u64| {
        let (ino, gen) = fs.reserve_inode();
        FsOp::Create {
            dir: root,
            name,
            new: NewObj {
                ino,
                gen,
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
            how: CreateHow::Guarded,
            attr: Default::default(),
            time_ns,
        }
    };

    // Metadata: create, lookup, getattr in one directory.
    let t = Instant::now();
    let mut handles = Vec::with_capacity(plan.files as usize);
    for i in 0..plan.files {
        let a = apply(&fs, create(&fs, format!("file-{i:08}").into_bytes(), i))?;
        handles.push(a.context("create returns attributes")?.handle);
    }
    report(
        "fs.create_per_s",
        plan.files as f64 / t.elapsed().as_secs_f64(),
        "ops/s",
    );
    fs.cp()?;
    let t = Instant::now();
    for i in 0..plan.files {
        fs.lookup(&fs.root(), format!("file-{i:08}").as_bytes())?;
    }
    report(
        "fs.lookup_per_s",
        plan.files as f64 / t.elapsed().as_secs_f64(),
        "ops/s",
    );
    let t = Instant::now();
    for h in &handles {
        fs.getattr(h)?;
    }
    report(
        "fs.getattr_per_s",
        plan.files as f64 / t.elapsed().as_secs_f64(),
        "ops/s",
    );

    // Data: 1 MiB writes with the CP driver running as in a node, then reads.
    let f = apply(&fs, create(&fs, b"data".to_vec(), 0))?
        .context("create returns attributes")?
        .handle;
    let target = Fid {
        ino: f.ino,
        gen: f.gen,
    };
    let chunk: bytes::Bytes = (0..1usize << 20)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let driver = CpDriver::start(fs.clone());
    let t = Instant::now();
    for i in 0..plan.data_mib {
        let op = FsOp::Write {
            target,
            offset: i << 20,
            data: chunk.clone(),
            time_ns: i,
        };
        apply(&fs, op)?;
    }
    let write_s = t.elapsed().as_secs_f64();
    driver.stop();
    fs.cp()?;
    report(
        "fs.write_MBps",
        plan.data_mib as f64 * 1.048576 / write_s,
        "MB/s",
    );

    // The CP alone: dirty the whole file again (no CP until asked), then one CP.
    drop(fs);
    let config = FsConfig {
        cp_dirty_bytes_max: u64::MAX / 4,
        ..base.clone()
    };
    let fs = Arc::new(Fs::mount(store.clone(), config)?);
    for i in 0..plan.data_mib {
        let op = FsOp::Write {
            target,
            offset: i << 20,
            data: chunk.clone(),
            time_ns: i,
        };
        apply(&fs, op)?;
    }
    let cp = fs.cp()?;
    let cp_mbps = cp.bytes as f64 / cp.duration_us.max(1) as f64;
    report("fs.cp_MBps", cp_mbps, "MB/s");
    report("fs.cp_vs_raid4", cp_mbps / raw_mbps, "ratio");

    let t = Instant::now();
    for i in 0..plan.data_mib {
        let d = fs.read_parts(&f, i << 20, 1 << 20)?;
        anyhow::ensure!(same(&d, &chunk), "read back differs at MiB {i}");
    }
    report(
        "fs.read_MBps",
        plan.data_mib as f64 * 1.048576 / t.elapsed().as_secs_f64(),
        "MB/s",
    );

    // Reads of a fresh mount (empty data-block cache): from the disks, then the same again
    // from memory, then 4 KiB random reads of the cached file.
    let cold = Fs::mount(store.clone(), base)?;
    for (name, pass) in [("fs.read_cold_MBps", 0), ("fs.read_again_MBps", 1)] {
        let t = Instant::now();
        for i in 0..plan.data_mib {
            let d = cold.read_parts(&f, i << 20, 1 << 20)?;
            anyhow::ensure!(same(&d, &chunk), "read pass {pass} differs at MiB {i}");
        }
        let mbps = plan.data_mib as f64 * 1.048576 / t.elapsed().as_secs_f64();
        report(name, mbps, "MB/s");
    }
    let reads = plan.data_mib * RAND_READS_PER_MIB;
    let blocks = plan.data_mib << 20 >> 12;
    let t = Instant::now();
    for n in 0..reads {
        let b = n.wrapping_mul(RAND_STRIDE_BLOCKS) % blocks;
        let d = cold.read_parts(&f, b << 12, 4096)?;
        anyhow::ensure!(d.len == 4096, "short 4 KiB read at block {b}");
    }
    report(
        "fs.rand_read_4k_cached_per_s",
        reads as f64 / t.elapsed().as_secs_f64(),
        "ops/s",
    );
    eprintln!("bench fs: data-block cache {:?}", cold.cache_stats());
    drop(cold);

    let t = Instant::now();
    for i in 0..plan.files {
        let name = format!("file-{i:08}").into_bytes();
        apply(
            &fs,
            FsOp::Remove {
                dir: root,
                name,
                time_ns: i,
            },
        )?;
    }
    report(
        "fs.remove_per_s",
        plan.files as f64 / t.elapsed().as_secs_f64(),
        "ops/s",
    );
    fs.cp()?;
    let check = wafl::fsck::check(store);
    anyhow::ensure!(check.is_clean(), "fsck after the benchmark: {check}");
    Ok(())
}

/// The store under test: a RAID-4 group of disk files (as in a node), or with
/// `WAFL_BENCH_STORE=file` one plain file.
fn open_store(
    plan: &Plan,
    bench_dir: &Path,
) -> anyhow::Result<(Arc<dyn StripeStore>, tempfile::TempDir)> {
    std::fs::create_dir_all(bench_dir)
        .with_context(|| format!("create {}", bench_dir.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("wafl-")
        .tempdir_in(bench_dir)
        .context("temporary directory")?;
    if std::env::var("WAFL_BENCH_STORE").as_deref() == Ok("file") {
        let stripe_bytes = (FILE_STRIPE_DATA_BLOCKS * wafl::BLOCK_SIZE) as u64;
        let stripes = (plan.store_mib << 20) / stripe_bytes;
        let path = dir.path().join("aggr.img");
        let store = FileStore::create(&path, FILE_STRIPE_DATA_BLOCKS, stripes)?;
        eprintln!("bench fs: file-backed store in {}: fs.cp_vs_raid4 compares with full-stripe writes to that file", path.display());
        return Ok((Arc::new(store), dir));
    }
    let disk_bytes = (plan.store_mib << 20) / DATA_DISKS as u64 + DISK_HEADER_SLACK_BYTES;
    let mut paths = Vec::new();
    for i in 0..=DATA_DISKS {
        let p = dir.path().join(format!("disk{i}"));
        let f = std::fs::File::create(&p).with_context(|| format!("create {}", p.display()))?;
        // Allocate up front so neither the baseline nor the CPs pay for allocation.
        // SAFETY: plain syscall on an open descriptor.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, disk_bytes as libc::off_t) };
        if rc != 0 {
            f.set_len(disk_bytes)?;
        }
        paths.push(p);
    }
    let group =
        raid4::Group::create(raid4::CreateConfig::new(paths)).context("create the RAID-4 group")?;
    eprintln!(
        "bench fs: RAID-4 group of {DATA_DISKS}+1 disk files in {} ({} data blocks per stripe, {} stripes)",
        dir.path().display(),
        group.stripe_data_blocks(),
        group.stripe_count()
    );
    Ok((Arc::new(group), dir))
}

/// Full-stripe writes straight to the store in CP-sized batches with a flush per CP's worth
/// of data, over the first `mib` MiB after the superblocks: the rate a CP could reach at best.
fn raw_stripe_rate(store: &dyn StripeStore, mib: u64) -> anyhow::Result<f64> {
    let stripe_bytes = store.stripe_data_blocks() * wafl::BLOCK_SIZE;
    let batch_stripes = (RAW_BATCH_BYTES / stripe_bytes).max(1) as u64;
    // 4 KiB-aligned like the CP's batches, so both take raid4's zero-copy path.
    let mut buf = raid4::AlignedBuf::zeroed(batch_stripes as usize * stripe_bytes);
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i % 253) as u8;
    }
    let end = (2 + (mib << 20) / stripe_bytes as u64).min(store.stripe_count());
    let t = Instant::now();
    let mut written = 0u64;
    let mut s = 2;
    while s < end {
        let n = batch_stripes.min(end - s);
        let bytes = n as usize * stripe_bytes;
        store.write_stripes(s, &buf[..bytes])?;
        written += bytes as u64;
        s += n;
        if written % CP_DIRTY_BYTES_MAX < bytes as u64 {
            store.flush()?; // as often as the CPs of the write phase flush
        }
    }
    store.flush()?;
    Ok(written as f64 / t.elapsed().as_micros().max(1) as f64)
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Whether the pieces of a read are `expect`, without gathering them into one buffer (the
/// NFS server sends them as they are).
fn same(d: &wafl::ReadData, expect: &[u8]) -> bool {
    let mut at = 0;
    for p in &d.parts {
        if expect.get(at..at + p.len()) != Some(&p[..]) {
            return false;
        }
        at += p.len();
    }
    at == expect.len()
}
