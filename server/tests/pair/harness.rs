//! The harness of the pair tests: a client (hard-mount NFS client + load generator) on its
//! own runtime, optionally inside a network namespace; node processes and namespaces come
//! from `twinfiler::lab` and clean up on drop (also when a test panics).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use twinfiler::nfsclient::load::{Load, LoadOptions, LoadReport};
use twinfiler::nfsclient::{auth_sys, HardOptions, HardStats, NfsClient, ServerAddr};

/// A node must serve within this bound (aggregate creation included).
pub const NODE_START_MS_MAX: u64 = 90_000;
/// The load must make progress within this bound after an event.
pub const PROGRESS_MS_MAX: u64 = 60_000;
/// Writes the load must complete to count as "flowing".
pub const PROGRESS_WRITES: u64 = 10;

/// The `twinfiler` binary under test.
pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_twinfiler"))
}

/// Pair tests run one at a time (each runs two nodes on a 2-core machine).
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A temp directory for disks and configs (not tmpfs: the disks use O_DIRECT).
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(std::env::var_os("TWINFILER_PAIR_DIR").unwrap_or_else(|| "/var/tmp".into()))
        .expect("temp dir")
}

/// Runs the future `make` returns to completion on a fresh runtime whose threads all live in network namespace
/// `netns` (host namespace if `None`): the runtime is built and driven by a thread that
/// entered it first, and threads inherit their creator's namespace, so every socket the
/// client makes (NFS, console) lives there. A panic inside is passed on.
pub fn run_client<T: Send, F: std::future::Future<Output = T>>(
    netns: Option<&str>,
    make: impl FnOnce() -> F + Send,
) -> T {
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            if let Some(ns) = netns {
                twinfiler::lab::netns::enter_netns(ns).expect("enter the client namespace");
            }
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("client runtime")
                .block_on(make())
        });
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// The load options of the tests: small files, a few kept, 2 writers.
pub fn load_options() -> LoadOptions {
    LoadOptions {
        writers: 2,
        file_bytes_min: 64 * 1024,
        file_bytes_max: 512 * 1024,
        write_bytes_max: 128 * 1024,
        files_kept_max: 12,
        verify_every_files: 3,
        seed: std::process::id() as u64,
    }
}

/// A hard-mount client and its load.
pub struct Writer {
    pub client: Arc<NfsClient>,
    pub load: Load,
}

impl Writer {
    /// Mounts "/" at `ip` (portmapper at `portmap_port`) and starts writing under `dir`.
    pub async fn start(ip: IpAddr, portmap_port: u16, dir: &str) -> Writer {
        let server = ServerAddr {
            ip,
            portmap_port,
            mount_port: None,
            nfs_port: None,
        };
        let client = NfsClient::connect_hard(&server, "/", auth_sys(0, 0), HardOptions::default())
            .await
            .expect("mount and connect");
        let client = Arc::new(client);
        let load = Load::start(client.clone(), dir, load_options())
            .await
            .expect("start the load");
        let w = Writer { client, load };
        w.progress("the start").await;
        w
    }

    /// The hard transport's counters.
    pub fn stats(&self) -> &Arc<HardStats> {
        self.client.hard_stats().expect("hard client")
    }

    /// Asserts that the load completes [`PROGRESS_WRITES`] more writes (bounded).
    pub async fn progress(&self, after: &str) {
        let ok = self
            .load
            .wait_progress(PROGRESS_WRITES, Duration::from_millis(PROGRESS_MS_MAX))
            .await;
        assert!(
            ok,
            "the client made no progress within {PROGRESS_MS_MAX} ms after {after}; errors so far: {:?}; {} reconnects, {} retransmits, {} calls done",
            self.load.counters().samples(),
            self.stats().reconnects.load(Ordering::Relaxed),
            self.stats().retransmits.load(Ordering::Relaxed),
            self.stats().calls.load(Ordering::Relaxed),
        );
    }

    /// The longest client-visible pause since `from`, printed with `what`.
    pub fn pause_since(&self, what: &str, from: Instant) -> Duration {
        let p = self.stats().longest_pause_within(from, Instant::now());
        eprintln!("client-visible pause, {what}: {} ms", p.as_millis());
        p
    }

    /// Stops the load, verifies everything, and asserts: no client errors, no lost
    /// acknowledged write, every old handle valid.
    pub async fn finish_and_check(self) -> LoadReport {
        let stats = self.stats().clone();
        let report = self.load.finish().await;
        eprintln!(
            "load: {} files, {} writes ({} MiB) acknowledged, {} files verified ({} at the end), {} reconnects, {} retransmits, {} jukebox",
            report.files_created,
            report.writes_acked,
            report.bytes_acked >> 20,
            report.verified_files,
            report.files_checked_at_end,
            stats.reconnects.load(Ordering::Relaxed),
            stats.retransmits.load(Ordering::Relaxed),
            stats.jukebox.load(Ordering::Relaxed),
        );
        assert_eq!(
            stats.errors.load(Ordering::Relaxed),
            0,
            "client-visible errors: {:?}",
            stats.error_samples()
        );
        assert_eq!(report.errors, 0, "load errors: {:?}", report.samples);
        assert_eq!(
            report.verify_failures, 0,
            "lost or corrupt acknowledged writes, or changed handles: {:?}",
            report.samples
        );
        assert!(report.files_checked_at_end > 0, "nothing was checked");
        report
    }
}

/// Prints a node's log tail (for a failing test's output).
pub fn dump_log(name: &str, path: &Path) {
    eprintln!(
        "--- log of node {name} ({}) ---\n{}",
        path.display(),
        twinfiler::lab::process::log_tail(path, 60)
    );
}
