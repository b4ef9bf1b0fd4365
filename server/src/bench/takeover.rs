//! `twinfiler bench takeover`: an HA pair of `twinfiler node` processes (in network
//! namespaces when root, else on loopback 127.0.0.11/12) with a hard-mount client writing
//! and verifying files through a's data address, while the console API drives: graceful
//! takeovers of a (asked alternately at a and at b) each followed by a giveback; a forced
//! takeover (a hangs under SIGSTOP, the countdown expires); a hard takeover (kill -9 of a).
//! A restarted victim waits for giveback, and gets it.
//!
//! The figures are medians over the cycles of the longest client-visible pause (a call's wait
//! from its first send to its reply) in each event's window: from the request (graceful,
//! giveback), from the countdown's end (forced: countdown excluded), from the kill (hard:
//! detection included). Three counts must be 0: `takeover.client_errors` (errors the NFS
//! client handed to any caller), `takeover.workload_errors` (operations of the file workload
//! that failed; most would also be client errors, so they are not added together) and
//! `takeover.lost_writes` (acknowledged writes that did not read back at the end).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use twinfiler::lab::console::{Check, Console, Mode};
use twinfiler::lab::netns::{self, NetLab};
use twinfiler::lab::process::NodeProc;
use twinfiler::lab::{PairAddrs, PairOptions, PairSpec};
use twinfiler::nfsclient::load::{Load, LoadOptions};
use twinfiler::nfsclient::{auth_sys, HardOptions, NfsClient, ServerAddr};

use super::report;

/// Graceful takeover + giveback cycles (full, quick).
const GRACEFUL_CYCLES: (usize, usize) = (5, 2);
/// Forced and hard takeover cycles (full, quick).
const FAILURE_CYCLES: (usize, usize) = (3, 1);
/// Countdown of graceful takeovers, s (a responsive victim finishes long before).
const GRACEFUL_COUNTDOWN_S: u32 = 30;
/// Countdown of the forced takeover (the victim hangs), s. (With 1 s, equal to the
/// heartbeat-loss bound, the driver failed the takeover with "interconnect down" at 07:07.)
const FORCED_COUNTDOWN_S: u32 = 2;
/// Bounds: a node serving, an operation finishing, a state change, client progress.
const NODE_START_MS_MAX: u64 = 90_000;
const OPERATION_MS_MAX: u64 = 90_000;
const STATE_MS_MAX: u64 = 60_000;
const PROGRESS_MS_MAX: u64 = 60_000;
/// Writes the client must complete after an event before the next one.
const PROGRESS_WRITES: u64 = 10;
/// Disk files per aggregate and their size, MiB.
const DATA_DISKS: usize = 3;
const DISK_MIB: u64 = 256;

/// One run of the benchmark: the pair, its layout and the client's namespace.
struct Bench {
    exe: PathBuf,
    spec: PairSpec,
    procs: [Option<NodeProc>; 2],
    /// Clients of the two consoles (one connection pool each for the whole run).
    consoles: [Console; 2],
    /// Namespaces (root) or none (loopback); dropped after the processes.
    lab: Option<NetLab>,
}

impl Bench {
    fn netns_of(&self, i: usize) -> Option<String> {
        self.lab.as_ref().map(|l| l.ns(["a", "b"][i]))
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let ns = self.netns_of(i);
        self.procs[i] = Some(NodeProc::spawn(
            &self.exe,
            &self.spec.nodes[i],
            ns.as_deref(),
        )?);
        Ok(())
    }

    fn console(&self, i: usize) -> &Console {
        &self.consoles[i]
    }

    fn proc_(&mut self, i: usize) -> anyhow::Result<&mut NodeProc> {
        self.procs[i].as_mut().context("node not running")
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().filter_map(Option::take) {
            if let Err(e) = p.stop() {
                eprintln!("{e}");
            }
        }
        self.spec.remove_regions();
    }
}

/// The client: hard mount plus load.
struct Client {
    nfs: Arc<NfsClient>,
    load: Load,
}

impl Client {
    async fn progress(&self, after: &str) -> anyhow::Result<()> {
        if !self
            .load
            .wait_progress(PROGRESS_WRITES, Duration::from_millis(PROGRESS_MS_MAX))
            .await
        {
            bail!(
                "the client made no progress within {PROGRESS_MS_MAX} ms after {after}; errors: {:?}",
                self.load.counters().samples()
            );
        }
        Ok(())
    }

    /// Waits for progress, then the longest pause since `from` (ms).
    async fn pause_since(&self, what: &str, from: Instant) -> anyhow::Result<f64> {
        self.progress(what).await?;
        let stats = self.nfs.hard_stats().context("hard client")?;
        let p = stats.longest_pause_within(from, Instant::now());
        let ms = p.as_secs_f64() * 1e3;
        eprintln!("{what}: client-visible pause {ms:.0} ms");
        Ok(ms)
    }
}

/// Options of `twinfiler bench takeover`.
#[derive(clap::Args)]
pub struct TakeoverArgs {
    /// Run the pair on loopback addresses even as root (default: namespaces when root).
    #[arg(long)]
    loopback: bool,
}

pub fn run(args: TakeoverArgs, quick: bool, bench_dir: &Path) -> anyhow::Result<()> {
    let use_netns = !args.loopback && netns::is_root() && netns::ip(&["-V"]).is_ok();
    let dir = bench_dir.join(format!("takeover-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = run_in(quick, &dir, use_netns);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(quick: bool, dir: &Path, use_netns: bool) -> anyhow::Result<()> {
    let (lab, addrs) = if use_netns {
        (Some(NetLab::setup("bench")?), PairAddrs::netns())
    } else {
        (None, PairAddrs::loopback()?)
    };
    eprintln!(
        "bench takeover: pair in {}",
        if use_netns {
            "network namespaces"
        } else {
            "loopback addresses"
        }
    );
    let opts = PairOptions {
        data_disks: DATA_DISKS,
        disk_mib: DISK_MIB,
        ..PairOptions::default()
    };
    let spec = PairSpec::write(dir, &addrs, &opts)?;
    let consoles = [
        Console::new(&spec.urls[0], &spec.token)?,
        Console::new(&spec.urls[1], &spec.token)?,
    ];
    let mut bench = Bench {
        exe: std::env::current_exe().context("find the twinfiler binary")?,
        spec,
        procs: [None, None],
        consoles,
        lab,
    };
    for i in 0..2 {
        bench.spawn(i)?;
    }
    for i in 0..2 {
        bench.proc_(i)?.wait_serving(NODE_START_MS_MAX)?;
    }
    let client_ns = bench.lab.as_ref().map(|l| l.ns("c"));
    let data_a = addrs.data[0];
    let portmap = addrs.ports[0].portmap;
    let outcome = std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<()> {
            if let Some(ns) = &client_ns {
                netns::enter_netns(ns)?;
            }
            // Built on this thread: the runtime's threads share its namespace.
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(cycles(&mut bench, data_a, portmap, quick))
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the client thread panicked")))
    });
    if outcome.is_err() {
        for n in &bench.spec.nodes {
            eprintln!(
                "--- node {} log tail ---\n{}",
                n.name,
                twinfiler::lab::process::log_tail(&n.log_path(), 30)
            );
        }
    }
    outcome
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

async fn ready(b: &Bench) -> anyhow::Result<()> {
    for i in 0..2 {
        for n in ["a", "b"] {
            b.console(i).wait_state(n, "normal", STATE_MS_MAX).await?;
        }
    }
    b.console(1)
        .wait_possible(Check::Takeover, "a", STATE_MS_MAX)
        .await?;
    Ok(())
}

async fn giveback(b: &Bench, c: &Client) -> anyhow::Result<f64> {
    b.console(1)
        .wait_state("a", "waiting-for-giveback", NODE_START_MS_MAX)
        .await?;
    let t0 = Instant::now();
    let op = b.console(1).giveback("a").await?;
    b.console(1).wait_operation(op, OPERATION_MS_MAX).await?;
    let ms = c.pause_since("giveback", t0).await?;
    ready(b).await?;
    Ok(ms)
}

async fn cycles(b: &mut Bench, data_a: IpAddr, portmap: u16, quick: bool) -> anyhow::Result<()> {
    ready(b).await?;
    let server = ServerAddr {
        ip: data_a,
        portmap_port: portmap,
        mount_port: None,
        nfs_port: None,
    };
    let nfs = Arc::new(
        NfsClient::connect_hard(&server, "/", auth_sys(0, 0), HardOptions::default()).await?,
    );
    let load = Load::start(nfs.clone(), "bench", LoadOptions::default()).await?;
    let c = Client { nfs, load };
    c.progress("the start").await?;
    let pick = |(full, q): (usize, usize)| if quick { q } else { full };
    let (mut graceful, mut forced, mut hard, mut gb) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());

    for cycle in 0..pick(GRACEFUL_CYCLES) {
        let asked_at = cycle % 2;
        let t0 = Instant::now();
        let op = b
            .console(asked_at)
            .takeover(
                "a",
                Mode::Graceful {
                    countdown_s: GRACEFUL_COUNTDOWN_S,
                },
            )
            .await?;
        b.console(asked_at)
            .wait_operation(op, OPERATION_MS_MAX)
            .await?;
        graceful.push(
            c.pause_since(
                &format!(
                    "graceful takeover #{cycle} asked at {}",
                    ["a", "b"][asked_at]
                ),
                t0,
            )
            .await?,
        );
        gb.push(giveback(b, &c).await?);
    }
    for cycle in 0..pick(FAILURE_CYCLES) {
        // Forced: a hangs, the countdown expires. Not on loopback: a frozen process keeps its
        // listening sockets on the shared address, so the partner cannot bind them.
        if b.lab.is_none() {
            if cycle == 0 {
                eprintln!(
                    "forced takeover not measured on loopback (a frozen victim keeps its sockets)"
                );
            }
        } else {
            forced.push(forced_cycle(b, &c, cycle).await?);
            gb.push(giveback(b, &c).await?);
        }

        // Hard: kill -9, detected by heartbeat loss.
        b.procs[0].take().context("a running")?.kill9();
        let t0 = Instant::now();
        b.console(1)
            .wait_state("b", "in-takeover", STATE_MS_MAX)
            .await?;
        hard.push(
            c.pause_since(&format!("hard takeover #{cycle} (kill -9)"), t0)
                .await?,
        );
        b.spawn(0)?;
        gb.push(giveback(b, &c).await?);
    }

    let stats = c.nfs.hard_stats().context("hard client")?.clone();
    let r = c.load.finish().await;
    eprintln!(
        "client: {} files, {} writes ({} MiB) acknowledged, {} files verified, {} reconnects, {} retransmits, {} jukebox; problems: {:?} {:?}",
        r.files_created,
        r.writes_acked,
        r.bytes_acked >> 20,
        r.verified_files,
        stats.reconnects.load(Ordering::Relaxed),
        stats.retransmits.load(Ordering::Relaxed),
        stats.jukebox.load(Ordering::Relaxed),
        stats.error_samples(),
        r.samples,
    );
    report("takeover.graceful_pause_ms", median(&mut graceful), "ms");
    if !forced.is_empty() {
        report("takeover.forced_pause_ms", median(&mut forced), "ms");
    }
    report("takeover.hard_pause_ms", median(&mut hard), "ms");
    report("takeover.giveback_pause_ms", median(&mut gb), "ms");
    report(
        "takeover.client_errors",
        stats.errors.load(Ordering::Relaxed) as f64,
        "count",
    );
    report("takeover.workload_errors", r.errors as f64, "count");
    report("takeover.lost_writes", r.verify_failures as f64, "count");
    Ok(())
}

/// a hangs (SIGSTOP) and is taken over when the countdown expires; then it is killed and
/// restarted (it waits for giveback). Returns the pause after the countdown, ms.
async fn forced_cycle(b: &mut Bench, c: &Client, cycle: usize) -> anyhow::Result<f64> {
    b.proc_(0)?.freeze();
    let t0 = Instant::now();
    let op = b
        .console(1)
        .takeover(
            "a",
            Mode::Graceful {
                countdown_s: FORCED_COUNTDOWN_S,
            },
        )
        .await?;
    b.console(1).wait_operation(op, OPERATION_MS_MAX).await?;
    let ms = c
        .pause_since(
            &format!("forced takeover #{cycle} (countdown excluded)"),
            t0 + Duration::from_secs(FORCED_COUNTDOWN_S.into()),
        )
        .await?;
    b.procs[0].take().context("a running")?.kill9();
    b.spawn(0)?;
    Ok(ms)
}
