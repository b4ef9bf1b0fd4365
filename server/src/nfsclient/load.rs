//! A load generator for takeover tests: writers that keep creating files under one directory
//! of an export, fill them with known patterns in FILE_SYNC writes, re-read and verify files
//! they wrote earlier, and remember every acknowledged byte — so that after a restart or a
//! takeover [`Load::finish`] can check that no acknowledged write is lost and that every handle
//! obtained before still works (read through the old handle, and LOOKUP gives the same one).
//!
//! A writer does not stop at an error: it counts it, keeps what was acknowledged before, and
//! goes on with the next file (bounded: it gives up after [`WRITER_ERRORS_MAX`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng as _, SeedableRng as _};
use twinfiler_proto::nfs3::{NfsFh3, StableHow};

use super::{ClientError, NfsClient};

/// A writer gives up after this many errors (a server that is gone for good).
pub const WRITER_ERRORS_MAX: u64 = 100;
/// Pause after an error before the next file, ms (no busy loop against a dead server).
const ERROR_PAUSE_MS: u64 = 100;
/// Bytes asked per READ while verifying.
const VERIFY_READ_BYTES: u32 = 256 * 1024;
/// READ calls allowed while verifying one file (a server that returns nothing).
const VERIFY_READS_MAX: usize = 10_000;
/// Error descriptions kept for the report.
const ERROR_SAMPLES_MAX: usize = 32;

/// What the writers do.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Concurrent writers (each its own sequence of files).
    pub writers: usize,
    /// Size of each file: at least this many bytes ...
    pub file_bytes_min: usize,
    /// ... and at most this many.
    pub file_bytes_max: usize,
    /// Bytes per WRITE call at most.
    pub write_bytes_max: usize,
    /// Files each writer keeps; older ones are verified, then removed (bounds the space used).
    pub files_kept_max: usize,
    /// After every this many files, a writer re-reads one of its earlier files and verifies it.
    pub verify_every_files: usize,
    /// Seed of the sizes, choices and patterns.
    pub seed: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            writers: 2,
            file_bytes_min: 64 * 1024,
            file_bytes_max: 1024 * 1024,
            write_bytes_max: 256 * 1024,
            files_kept_max: 32,
            verify_every_files: 4,
            seed: 1,
        }
    }
}

/// Counters of a running load (shared with its writers).
#[derive(Debug, Default)]
pub struct LoadCounters {
    /// Files created (CREATE acknowledged).
    pub files_created: AtomicU64,
    /// WRITE calls acknowledged FILE_SYNC.
    pub writes_acked: AtomicU64,
    /// Bytes acknowledged.
    pub bytes_acked: AtomicU64,
    /// Files re-read and verified.
    pub verified_files: AtomicU64,
    /// Acknowledged bytes that did not read back (lost or corrupt writes), by file.
    pub verify_failures: AtomicU64,
    /// Errors the writers saw (NFS error status, failed call, short or unstable write).
    pub errors: AtomicU64,
    /// Files removed after verification.
    pub files_removed: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl LoadCounters {
    fn note(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%what, "load generator");
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() < ERROR_SAMPLES_MAX {
            s.push(what);
        }
    }

    /// The first errors and verification failures, described.
    pub fn samples(&self) -> Vec<String> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// One file a writer made, and how much of it the server acknowledged.
#[derive(Debug, Clone)]
pub struct AckedFile {
    /// Its name in the load's directory.
    pub name: String,
    /// Its handle, from CREATE.
    pub fh: NfsFh3,
    /// Seed of its pattern.
    pub seed: u64,
    /// Bytes from offset 0 acknowledged FILE_SYNC.
    pub acked_bytes: u64,
}

/// The final account of a load.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Files created.
    pub files_created: u64,
    /// WRITE calls acknowledged.
    pub writes_acked: u64,
    /// Bytes acknowledged.
    pub bytes_acked: u64,
    /// Files verified (during the run and at the end).
    pub verified_files: u64,
    /// Files whose acknowledged bytes did not all read back.
    pub verify_failures: u64,
    /// Errors seen by the writers and the final verification.
    pub errors: u64,
    /// Files still present at the end, all verified through their old handles.
    pub files_checked_at_end: usize,
    /// The first problems, described.
    pub samples: Vec<String>,
}

/// Running writers.
pub struct Load {
    client: Arc<NfsClient>,
    dir: NfsFh3,
    stop: Arc<AtomicBool>,
    counters: Arc<LoadCounters>,
    writers: Vec<tokio::task::JoinHandle<VecDeque<AckedFile>>>,
}

/// The pattern byte `i` of a file with `seed`: any range can be made on its own.
fn word(seed: u64, index: u64) -> u64 {
    // splitmix64 of (seed, word index).
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(0x94D0_49BB_1331_11EB);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `buf` with the pattern of `seed` starting at file offset `offset`.
pub fn pattern_fill(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let pos = offset + i as u64;
        *b = (word(seed, pos / 8) >> ((pos % 8) * 8)) as u8;
    }
}

/// The first offset where `data` (read at `offset`) differs from the pattern of `seed`.
fn pattern_mismatch(seed: u64, offset: u64, data: &[u8]) -> Option<u64> {
    let mut expect = vec![0u8; data.len()];
    pattern_fill(seed, offset, &mut expect);
    data.iter()
        .zip(&expect)
        .position(|(a, b)| a != b)
        .map(|i| offset + i as u64)
}

impl Load {
    /// Makes directory `dir_name` in the export root and starts the writers.
    pub async fn start(
        client: Arc<NfsClient>,
        dir_name: &str,
        opts: LoadOptions,
    ) -> Result<Load, ClientError> {
        assert!(opts.writers > 0 && opts.files_kept_max > 0 && opts.verify_every_files > 0);
        assert!(opts.file_bytes_min > 0 && opts.file_bytes_min <= opts.file_bytes_max);
        assert!(opts.write_bytes_max > 0);
        let dir = client.mkdir(client.root(), dir_name, 0o755).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(LoadCounters::default());
        let writers = (0..opts.writers)
            .map(|w| {
                let writer = Writer {
                    id: w,
                    client: client.clone(),
                    dir,
                    stop: stop.clone(),
                    counters: counters.clone(),
                    opts: opts.clone(),
                    rng: rand::rngs::StdRng::seed_from_u64(opts.seed ^ ((w as u64) << 32)),
                    files: VecDeque::new(),
                };
                tokio::spawn(writer.run())
            })
            .collect();
        Ok(Load {
            client,
            dir,
            stop,
            counters,
            writers,
        })
    }

    /// The live counters.
    pub fn counters(&self) -> &Arc<LoadCounters> {
        &self.counters
    }

    /// The load's directory.
    pub fn dir(&self) -> &NfsFh3 {
        &self.dir
    }

    /// Waits until `writes` more writes than now are acknowledged; false if `timeout` passed
    /// first (the load is stuck).
    pub async fn wait_progress(&self, writes: u64, timeout: Duration) -> bool {
        let target = self.counters.writes_acked.load(Ordering::Relaxed) + writes;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.counters.writes_acked.load(Ordering::Relaxed) >= target {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Stops the writers, then verifies every file they kept: through the handle from
    /// CREATE, every acknowledged byte; and LOOKUP of its name gives the same handle.
    pub async fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut files = Vec::new();
        for w in self.writers {
            match w.await {
                Ok(f) => files.extend(f),
                Err(e) => self
                    .counters
                    .note(&self.counters.errors, format!("writer task: {e}")),
            }
        }
        for f in &files {
            verify_file(&self.client, &self.counters, f).await;
            match self.client.lookup(&self.dir, &f.name).await {
                Ok((fh, _)) if fh == f.fh => {}
                Ok(_) => self.counters.note(
                    &self.counters.verify_failures,
                    format!("{}: LOOKUP gives another handle than CREATE did", f.name),
                ),
                Err(e) => self
                    .counters
                    .note(&self.counters.errors, format!("LOOKUP {}: {e}", f.name)),
            }
        }
        let c = &self.counters;
        LoadReport {
            files_created: c.files_created.load(Ordering::Relaxed),
            writes_acked: c.writes_acked.load(Ordering::Relaxed),
            bytes_acked: c.bytes_acked.load(Ordering::Relaxed),
            verified_files: c.verified_files.load(Ordering::Relaxed),
            verify_failures: c.verify_failures.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            files_checked_at_end: files.len(),
            samples: c.samples(),
        }
    }
}

/// Reads `f` through its handle and checks every acknowledged byte; counts the outcome.
async fn verify_file(client: &NfsClient, counters: &LoadCounters, f: &AckedFile) {
    let mut offset = 0u64;
    for _ in 0..VERIFY_READS_MAX {
        if offset >= f.acked_bytes {
            counters.verified_files.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let want = (f.acked_bytes - offset).min(u64::from(VERIFY_READ_BYTES)) as u32;
        match client.read(&f.fh, offset, want).await {
            Ok((data, eof)) => {
                if let Some(at) = pattern_mismatch(f.seed, offset, &data) {
                    counters.note(
                        &counters.verify_failures,
                        format!(
                            "{}: byte {at} differs from what was acknowledged ({} bytes acked)",
                            f.name, f.acked_bytes
                        ),
                    );
                    return;
                }
                offset += data.len() as u64;
                if (eof || data.is_empty()) && offset < f.acked_bytes {
                    counters.note(
                        &counters.verify_failures,
                        format!(
                            "{}: ends at {offset} but {} bytes were acknowledged",
                            f.name, f.acked_bytes
                        ),
                    );
                    return;
                }
            }
            Err(e) => {
                counters.note(&counters.errors, format!("READ {}: {e}", f.name));
                return;
            }
        }
    }
    counters.note(
        &counters.errors,
        format!("{}: too many READs to verify", f.name),
    );
}

/// One writer's loop and its files.
struct Writer {
    id: usize,
    client: Arc<NfsClient>,
    dir: NfsFh3,
    stop: Arc<AtomicBool>,
    counters: Arc<LoadCounters>,
    opts: LoadOptions,
    rng: rand::rngs::StdRng,
    files: VecDeque<AckedFile>,
}

impl Writer {
    async fn run(mut self) -> VecDeque<AckedFile> {
        let mut errors = 0u64;
        let mut n = 0u64;
        while !self.stop.load(Ordering::Relaxed) && errors < WRITER_ERRORS_MAX {
            let ok = self.one_file(n).await;
            n += 1;
            if !ok {
                errors += 1;
                tokio::time::sleep(Duration::from_millis(ERROR_PAUSE_MS)).await;
                continue;
            }
            if n.is_multiple_of(self.opts.verify_every_files as u64) && !self.files.is_empty() {
                let i = self.rng.gen_range(0..self.files.len());
                verify_file(&self.client, &self.counters, &self.files[i]).await;
            }
            while self.files.len() > self.opts.files_kept_max {
                let Some(old) = self.files.pop_front() else {
                    break;
                };
                verify_file(&self.client, &self.counters, &old).await;
                match self.client.remove(&self.dir, &old.name).await {
                    Ok(()) => {
                        self.counters.files_removed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.counters
                            .note(&self.counters.errors, format!("REMOVE {}: {e}", old.name));
                        // Still there (or state unknown): keep checking it at the end.
                        self.files.push_back(old);
                        break;
                    }
                }
            }
        }
        if errors >= WRITER_ERRORS_MAX {
            tracing::warn!(writer = self.id, "writer gave up after {errors} errors");
        }
        self.files
    }

    /// Creates file `n` and writes it whole; false after an error.
    async fn one_file(&mut self, n: u64) -> bool {
        let name = format!("w{}-{n:06}", self.id);
        let seed = self.rng.gen::<u64>();
        let size = self
            .rng
            .gen_range(self.opts.file_bytes_min..=self.opts.file_bytes_max);
        let fh = match self.client.create(&self.dir, &name, 0o644, false).await {
            Ok(fh) => fh,
            Err(e) => {
                self.counters
                    .note(&self.counters.errors, format!("CREATE {name}: {e}"));
                return false;
            }
        };
        self.counters.files_created.fetch_add(1, Ordering::Relaxed);
        self.files.push_back(AckedFile {
            name: name.clone(),
            fh,
            seed,
            acked_bytes: 0,
        });
        let idx = self.files.len() - 1;
        let mut buf = vec![0u8; self.opts.write_bytes_max.min(size)];
        let mut offset = 0usize;
        while offset < size {
            let len = (size - offset).min(buf.len());
            let chunk = &mut buf[..len];
            pattern_fill(seed, offset as u64, chunk);
            match self
                .client
                .write(&fh, offset as u64, chunk, StableHow::FileSync)
                .await
            {
                Ok((count, StableHow::FileSync)) if count > 0 && count as usize <= len => {
                    offset += count as usize;
                    self.files[idx].acked_bytes = offset as u64;
                    self.counters.writes_acked.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .bytes_acked
                        .fetch_add(u64::from(count), Ordering::Relaxed);
                }
                Ok((count, stable)) => {
                    self.counters.note(
                        &self.counters.errors,
                        format!("WRITE {name}@{offset}: {count} bytes {stable:?} (asked {len} FILE_SYNC)"),
                    );
                    return false;
                }
                Err(e) => {
                    self.counters
                        .note(&self.counters.errors, format!("WRITE {name}@{offset}: {e}"));
                    return false;
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_ranges_agree_with_the_whole() {
        let mut whole = vec![0u8; 1000];
        pattern_fill(7, 0, &mut whole);
        let mut part = vec![0u8; 333];
        pattern_fill(7, 101, &mut part);
        assert_eq!(&whole[101..434], &part[..]);
        assert_eq!(pattern_mismatch(7, 101, &part), None);
        part[5] ^= 1;
        assert_eq!(pattern_mismatch(7, 101, &part), Some(106));
        let mut other = vec![0u8; 1000];
        pattern_fill(8, 0, &mut other);
        assert_ne!(whole, other);
    }
}
