//! `twinfiler bench nvlog`: 4 KiB appends, local and mirrored to a partner over loopback
//! TCP (a thread pair in this process, regions under /dev/shm), with the loopback RTT and
//! memcpy bandwidth of the same run as references.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use nvlog::{
    kind, Config, MirrorConfig, MirrorKey, MirrorState, Nvlog, SenderConfig, BUSY_POLL_US_DEFAULT,
};

use super::report;

/// Record payload of the latency runs and the first throughput run.
const APPEND_BYTES: usize = 4096;
/// Record payload of the second throughput run: the size of a Linux client's NFS WRITE under
/// memory pressure, and a fraction of a 1 MiB one (whose record the node splits no further).
const LARGE_APPEND_BYTES: usize = 64 << 10;
/// Concurrent appenders of the throughput run.
const APPENDERS: usize = 16;
/// Half size of the benchmark regions (32 MiB: a CP every ~8k appends).
const HALF_BYTES: u64 = 32 << 20;
/// Bound on waiting for the mirror to come in sync.
const SYNC_WAIT_MS_MAX: u64 = 10_000;

struct Sizes {
    latency_appends: usize,
    throughput_secs: f64,
    rtt_rounds: usize,
    memcpy_mib: usize,
}

pub fn run(quick: bool) -> anyhow::Result<()> {
    let sizes = if quick {
        Sizes {
            latency_appends: 5_000,
            throughput_secs: 1.0,
            rtt_rounds: 5_000,
            memcpy_mib: 64,
        }
    } else {
        Sizes {
            latency_appends: 30_000,
            throughput_secs: 4.0,
            rtt_rounds: 30_000,
            memcpy_mib: 256,
        }
    };
    let dir = PathBuf::from(format!(
        "/dev/shm/twinfiler-bench-nvlog-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let result = run_in(&dir, &sizes);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(dir: &Path, sizes: &Sizes) -> anyhow::Result<()> {
    report("nvlog.memcpy_GBps", memcpy_gbps(sizes.memcpy_mib), "GB/s");
    report(
        "nvlog.loopback_rtt_us",
        loopback_rtt_us(sizes.rtt_rounds)?,
        "us",
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = Nvlog::open(Config {
        region_path: dir.join("local"),
        half_bytes: HALF_BYTES,
        ..Config::default()
    })?;
    eprintln!("nvlog bench: persistence {}", local.status().persist_mode);
    let lat = rt.block_on(latencies(&local, sizes.latency_appends))?;
    report("nvlog.local_append_p50_us", percentile(&lat, 50.0), "us");
    report("nvlog.local_append_p99_us", percentile(&lat, 99.0), "us");
    drop(local);

    // Reference: the same pair with busy polling off (every round trip pays its wake-ups).
    {
        let (a, _b) = mirrored_pair(dir, "nopoll", 0)?;
        let lat = rt.block_on(latencies(&a, sizes.latency_appends))?;
        report("nvlog.nopoll_append_p50_us", percentile(&lat, 50.0), "us");
        report("nvlog.nopoll_append_p99_us", percentile(&lat, 99.0), "us");
    }
    let (a, _b) = mirrored_pair(dir, "poll", BUSY_POLL_US_DEFAULT)?;
    let lat = rt.block_on(latencies(&a, sizes.latency_appends))?;
    report("nvlog.mirrored_append_p50_us", percentile(&lat, 50.0), "us");
    report("nvlog.mirrored_append_p99_us", percentile(&lat, 99.0), "us");

    let before = a.status();
    let cpu_before = cpu_secs();
    let switches_before = voluntary_switches();
    // Multi-threaded like the node's runtime.
    let mt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mbps = mt.block_on(throughput_mbps(&a, sizes.throughput_secs, APPEND_BYTES))?;
    report("nvlog.mirrored_MBps", mbps, "MB/s");
    let cpu = cpu_secs() - cpu_before;
    let switches = voluntary_switches() - switches_before;
    let st = a.status();
    let appends = (st.appends - before.appends).max(1) as f64;
    eprintln!(
        "nvlog bench: throughput run used {:.1} us of CPU (both nodes) per append",
        cpu * 1e6 / appends
    );
    // Thread hand-offs (a thread sleeping for a socket, a futex or the runtime's park):
    // less sensitive to a busy machine than CPU time.
    eprintln!(
        "nvlog bench: throughput run: {:.2} voluntary context switches per append",
        switches as f64 / appends
    );
    anyhow::ensure!(
        st.mirror == MirrorState::InSync,
        "mirror left sync during the run: {:?}",
        st.mirror
    );
    eprintln!(
        "nvlog bench: throughput run: {} appends in {} group commits, {} back-pressure waits",
        st.appends - before.appends,
        st.group_commits - before.group_commits,
        st.backpressure_waits - before.backpressure_waits
    );
    let mbps = mt.block_on(throughput_mbps(
        &a,
        sizes.throughput_secs,
        LARGE_APPEND_BYTES,
    ))?;
    report("nvlog.mirrored_64k_MBps", mbps, "MB/s");
    Ok(())
}

/// A writer `a` mirrored to a listening partner `b` on loopback, in sync.
fn mirrored_pair(dir: &Path, tag: &str, busy_poll_us: u64) -> anyhow::Result<(Nvlog, Nvlog)> {
    let mirror = |partner, listen| MirrorConfig {
        partner_addr: partner,
        listen_addr: listen,
        key: MirrorKey::from_passphrase("bench"),
        sender: SenderConfig::default(),
        busy_poll_us,
    };
    let b = Nvlog::open(Config {
        region_path: dir.join(format!("{tag}-b")),
        half_bytes: HALF_BYTES,
        mirror: Some(mirror(None, Some("127.0.0.1:0".parse()?))),
        ..Config::default()
    })?;
    let addr = b.mirror_listen_addr().context("partner listener address")?;
    let a = Nvlog::open(Config {
        region_path: dir.join(format!("{tag}-a")),
        half_bytes: HALF_BYTES,
        mirror: Some(mirror(Some(addr), None)),
        ..Config::default()
    })?;
    wait_in_sync(&a)?;
    Ok((a, b))
}

fn wait_in_sync(log: &Nvlog) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_millis(SYNC_WAIT_MS_MAX);
    while log.status().mirror != MirrorState::InSync {
        anyhow::ensure!(
            Instant::now() < deadline,
            "mirror not in sync: {:?}",
            log.status().mirror
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Releases the sealed half whenever one is wanted, as the FS's CP would.
fn cp_if_wanted(log: &Nvlog) {
    if log.cp_is_wanted() {
        log.release_through(log.durable_seq());
    }
}

/// One appender, one append at a time: per-append latency in microseconds.
async fn latencies(log: &Nvlog, n: usize) -> anyhow::Result<Vec<f64>> {
    let payload = vec![0x5au8; APPEND_BYTES];
    let warmup = n / 10;
    let mut out = Vec::with_capacity(n);
    for i in 0..n + warmup {
        cp_if_wanted(log);
        let t = Instant::now();
        log.append(kind::OP, &payload).await?;
        if i >= warmup {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(out)
}

async fn throughput_mbps(log: &Nvlog, secs: f64, append_bytes: usize) -> anyhow::Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let cp = {
        let (log, stop) = (log.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = tokio::time::timeout(Duration::from_millis(50), log.cp_wanted()).await;
                cp_if_wanted(&log);
            }
        })
    };
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..APPENDERS {
        let (log, stop) = (log.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let payload = vec![0xa5u8; append_bytes];
            let mut bytes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                log.append(kind::OP, &payload).await?;
                bytes += append_bytes as u64;
            }
            anyhow::Ok(bytes)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0u64;
    for t in tasks {
        total += t.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    cp.await?;
    Ok(total as f64 / elapsed / 1e6)
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let idx = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v.get(idx).copied().unwrap_or(f64::NAN)
}

fn memcpy_gbps(mib: usize) -> f64 {
    let src = vec![1u8; mib << 20];
    let mut dst = vec![0u8; mib << 20];
    dst.copy_from_slice(&src); // fault the pages in
    let rounds = 8;
    let t = Instant::now();
    for i in 0..rounds {
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst[i]);
    }
    (rounds * (mib << 20)) as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// Median round trip of a 64-byte ping-pong over loopback TCP (TCP_NODELAY).
fn loopback_rtt_us(rounds: usize) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        loop {
            if s.read_exact(&mut buf).is_err() {
                return Ok(());
            }
            s.write_all(&buf)?;
        }
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let mut buf = [7u8; 64];
    let mut rtts = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        c.write_all(&buf)?;
        c.read_exact(&mut buf)?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(c);
    let _ = echo.join();
    eprintln!(
        "nvlog bench: loopback rtt p99 {:.1} us",
        percentile(&rtts, 99.0)
    );
    Ok(percentile(&rtts, 50.0))
}

/// Voluntary context switches of this process so far (all threads).
fn voluntary_switches() -> u64 {
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF is always valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_nvcsw as u64
}

/// User + system CPU seconds of this process so far.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF is always valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
