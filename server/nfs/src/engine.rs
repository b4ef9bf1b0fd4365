//! The log-then-apply sequencer, and replay.
//!
//! A modifying request becomes a [`Prepared`] (checks done, op built) outside any lock.
//! Then, under the sequencing lock: take the op's time (once; it is logged, so replay is
//! deterministic), `nvlog.submit` (assigns the seq and puts the record in log order),
//! execute (capture pre-op attributes, apply to the file system, build the reply), release
//! the lock, and wait until the record is durable (mirrored) before the reply leaves. The
//! lock covers submit + apply only, so the file system sees ops in log order; the wait for
//! durability is outside it, so concurrent requests share one group commit.
//!
//! Who starts that commit: a request alone leads it at submit, so its mirror round trip
//! overlaps the execution. A request with others in flight submits without leading, and
//! after the lock yields once to the runtime: the requests already runnable append theirs
//! meanwhile, and the first to resume commits them all. At 16 REMOVEs in flight this took
//! group commits from 2.2 to 3.2–4.0 records each (`bench nfs --quick`, 3 runs).
//!
//! Replay runs the same execution on each logged op above the file system's applied seq,
//! in order, and hands back each regenerated reply for the duplicate-request cache.
//!
//! One outcome does not follow from the log alone: a refusal for space (NFS3ERR_NOSPC)
//! depends on free space and dirty data at that moment, which a replay after a CP sees
//! differently. Its reply is logged as a REPLY record before it leaves, and replay answers
//! the op from that record instead of running it again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use nvlog::{kind, AppendError, Nvlog, Record};
use wafl::{Fid, Fs, FsOp};

use crate::record::{self, RecordMeta};
use twinfiler_proto::nfs3::NfsStat3;

/// Default bound on how long a request waits for a CP to free log space before it is
/// answered NFS3ERR_JUKEBOX (the client retries later).
pub const LOG_FULL_WAIT_MS_MAX_DEFAULT: u64 = 20_000;
/// Pause between attempts while the log is full.
const LOG_FULL_RETRY_MS: u64 = 2;

/// A modifying request ready to be logged.
#[derive(Debug)]
pub enum Prepared {
    /// Any op but a WRITE.
    Op {
        /// Request identity and reply context.
        meta: RecordMeta,
        /// The op; its time is set by the engine.
        op: FsOp,
    },
    /// A WRITE: its data goes into the log and the file system as is (see `record`).
    Write {
        /// Request identity and reply context.
        meta: RecordMeta,
        /// The file.
        target: Fid,
        /// Byte offset.
        offset: u64,
        /// The bytes, a slice of the RPC record they came in.
        data: Bytes,
    },
}

/// What executing an op produced.
#[derive(Debug, Clone)]
pub struct Executed {
    /// The complete RPC reply message.
    pub reply: Vec<u8>,
    /// The NFS status in the reply.
    pub status: NfsStat3,
    /// The file system went offline: the op is logged but not applied; it must not be
    /// answered (it is re-executed by replay after a remount).
    pub offline: bool,
}

/// Executes one op on the file system and builds its reply. Called under the sequencing
/// lock, live and during replay: it must depend only on the file-system state, the record
/// and the seq, so replay regenerates the same reply.
pub trait Executor: Send + Sync {
    /// Captures what the reply needs from before, applies, and formats the reply.
    fn execute(&self, fs: &Fs, seq: u64, meta: &RecordMeta, op: &FsOp) -> Executed;
}

/// Why a prepared request produced no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The log stayed full (no CP released space): answer NFS3ERR_JUKEBOX.
    #[error("NVRAM log full for {0} ms")]
    LogFull(u64),
    /// The log is closed (node stopping) or the file system went offline: send nothing.
    #[error("not served: {0}")]
    Unavailable(String),
}

/// What [`Engine::replay`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records handed in.
    pub records: usize,
    /// OP records re-executed.
    pub ops_replayed: usize,
    /// OP records at or below the file system's applied seq (already in its last CP).
    pub ops_already_applied: usize,
    /// OP records answered from their logged refusal (REPLY record) without running.
    pub ops_refused: usize,
    /// Records of other kinds (REPLY, unknown), skipped.
    pub other_kinds: usize,
    /// Replies put back into the duplicate-request cache.
    pub drc_entries: usize,
    /// Highest seq replayed (0 if none).
    pub last_seq: u64,
}

/// Why replay stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// A record does not decode: refusing to skip it (later ops may depend on it).
    #[error("log record {seq}: {why}")]
    BadRecord {
        /// Its seq.
        seq: u64,
        /// Decoder message.
        why: String,
    },
    /// Records out of order.
    #[error("log record {seq} after {prev}: out of order")]
    OutOfOrder {
        /// Its seq.
        seq: u64,
        /// The previous one.
        prev: u64,
    },
    /// The file system went offline during replay.
    #[error("file system offline during replay at record {0}")]
    Offline(u64),
}

struct SeqState {
    /// Last op time handed out, ns: op times strictly increase in log order.
    last_time_ns: u64,
}

/// The sequencer of one service.
pub struct Engine {
    fs: Arc<Fs>,
    log: Arc<Nvlog>,
    seq: Mutex<SeqState>,
    log_full_wait_ms_max: u64,
    /// Requests inside [`Engine::run`] (from entry to reply).
    running: AtomicUsize,
}

/// Counts a request in [`Engine::running`] while it lives.
pub(crate) struct Running<'a>(&'a AtomicUsize);

impl<'a> Running<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Running(counter)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Commits the log's pending records when dropped: a deferred commit happens even if
/// the request's future is dropped while it waits, or its execution panics.
struct CommitOnDrop<'a>(&'a Nvlog);

impl Drop for CommitOnDrop<'_> {
    fn drop(&mut self) {
        self.0.commit_pending();
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The time field of an op.
pub fn op_time_ns(op: &FsOp) -> u64 {
    match op {
        FsOp::Create { time_ns, .. }
        | FsOp::Mkdir { time_ns, .. }
        | FsOp::Symlink { time_ns, .. }
        | FsOp::Mknod { time_ns, .. }
        | FsOp::Link { time_ns, .. }
        | FsOp::Remove { time_ns, .. }
        | FsOp::Rmdir { time_ns, .. }
        | FsOp::Rename { time_ns, .. }
        | FsOp::SetAttr { time_ns, .. }
        | FsOp::Write { time_ns, .. } => *time_ns,
    }
}

fn set_op_time(op: &mut FsOp, t: u64) {
    match op {
        FsOp::Create { time_ns, .. }
        | FsOp::Mkdir { time_ns, .. }
        | FsOp::Symlink { time_ns, .. }
        | FsOp::Mknod { time_ns, .. }
        | FsOp::Link { time_ns, .. }
        | FsOp::Remove { time_ns, .. }
        | FsOp::Rmdir { time_ns, .. }
        | FsOp::Rename { time_ns, .. }
        | FsOp::Write { time_ns, .. } => *time_ns = t,
        FsOp::SetAttr { time_ns, attr, .. } => {
            // SET_TO_SERVER_TIME was prepared as u64::MAX: resolve it to this op's time.
            for slot in [&mut attr.atime_ns, &mut attr.mtime_ns] {
                if *slot == Some(SERVER_TIME) {
                    *slot = Some(t);
                }
            }
            *time_ns = t;
        }
    }
}

/// Placeholder for "set to the server's time" in a prepared SETATTR; replaced by the op's
/// logged time under the lock.
pub const SERVER_TIME: u64 = u64::MAX;

impl Engine {
    /// A sequencer over this file system and log; a request waits at most
    /// `log_full_wait_ms_max` for log space.
    pub fn new(fs: Arc<Fs>, log: Arc<Nvlog>, log_full_wait_ms_max: u64) -> Engine {
        Engine {
            fs,
            log,
            seq: Mutex::new(SeqState { last_time_ns: 0 }),
            log_full_wait_ms_max,
            running: AtomicUsize::new(0),
        }
    }

    /// Counts a request that is not there, as if one were in flight (tests of the
    /// deferred commit).
    #[cfg(test)]
    pub(crate) fn pretend_running(&self) -> Running<'_> {
        Running::enter(&self.running)
    }

    fn lock(&self) -> MutexGuard<'_, SeqState> {
        self.seq.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs, applies and answers one request; resolves once the record is durable.
    pub async fn run(&self, mut p: Prepared, exec: &dyn Executor) -> Result<Executed, EngineError> {
        let deadline = Instant::now() + Duration::from_millis(self.log_full_wait_ms_max);
        let _running = Running::enter(&self.running);
        loop {
            let deferred = self.running.load(Ordering::Relaxed) > 1;
            // Made before the submit: if the execution panics (the RPC layer survives
            // that), unwinding still commits the record it left pending.
            let commit = deferred.then(|| CommitOnDrop(&self.log));
            match self.try_run(&mut p, exec, deferred) {
                Ok((executed, durable)) => {
                    if let Some(commit) = commit {
                        // The requests already runnable append theirs before this one
                        // resumes and commits them all: one group, one mirror frame.
                        tokio::task::yield_now().await;
                        drop(commit);
                    }
                    let seq = durable.seq();
                    durable
                        .await
                        .map_err(|e| EngineError::Unavailable(e.to_string()))?;
                    if executed.offline {
                        return Err(EngineError::Unavailable("file system offline".into()));
                    }
                    if executed.status == NfsStat3::Nospc {
                        self.log_refusal(seq, &executed.reply).await?;
                    }
                    return Ok(executed);
                }
                Err(AppendError::Full) if Instant::now() < deadline => {
                    drop(commit);
                    tokio::time::sleep(Duration::from_millis(LOG_FULL_RETRY_MS)).await;
                }
                Err(AppendError::Full) => {
                    return Err(EngineError::LogFull(self.log_full_wait_ms_max))
                }
                Err(e) => return Err(EngineError::Unavailable(e.to_string())),
            }
        }
    }

    /// Logs the refusal of op `seq` (its reply) and waits until it is durable: a crash
    /// before then leaves the op unanswered, and replay's outcome is the one the client
    /// gets.
    async fn log_refusal(&self, seq: u64, reply: &[u8]) -> Result<(), EngineError> {
        self.log
            .append(kind::REPLY, &nvlog::encode_reply(seq, reply))
            .await
            .map(|_| ())
            .map_err(|e| EngineError::Unavailable(e.to_string()))
    }

    /// The locked part: time, submit, execute. Alone, a request leads its group commit at
    /// submit, so the mirror round trip overlaps the execution; `deferred` (other requests
    /// in flight) submits without leading, so those queued behind it can join.
    fn try_run(
        &self,
        p: &mut Prepared,
        exec: &dyn Executor,
        deferred: bool,
    ) -> Result<(Executed, nvlog::Durable), AppendError> {
        let submit = |parts: &[&[u8]]| {
            if deferred {
                self.log.submit_parts_deferred(kind::OP, parts)
            } else {
                self.log.submit_parts(kind::OP, parts)
            }
        };
        let mut st = self.lock();
        let t = now_ns().max(st.last_time_ns + 1);
        match p {
            Prepared::Op { meta, op } => {
                set_op_time(op, t);
                let payload = record::encode(meta, op);
                let durable = submit(&[&payload])?;
                st.last_time_ns = t;
                let executed = exec.execute(&self.fs, durable.seq(), meta, op);
                Ok((executed, durable))
            }
            Prepared::Write {
                meta,
                target,
                offset,
                data,
            } => {
                let trailer = record::write_trailer(meta, *target, *offset, data.len(), t);
                let durable = submit(&[data, &trailer])?;
                st.last_time_ns = t;
                let op = FsOp::Write {
                    target: *target,
                    offset: *offset,
                    data: data.clone(),
                    time_ns: t,
                };
                let executed = exec.execute(&self.fs, durable.seq(), meta, &op);
                Ok((executed, durable))
            }
        }
    }

    /// Re-executes the OP records above the file system's applied seq, in order, holding
    /// the sequencing lock; calls `replied` with each record's DRC key and reply.
    pub fn replay(
        &self,
        records: Vec<Record>,
        exec: &dyn Executor,
        replied: &mut dyn FnMut(&RecordMeta, Vec<u8>),
    ) -> Result<ReplayReport, ReplayError> {
        let mut st = self.lock();
        let applied = self.fs.applied_seq();
        let mut report = ReplayReport {
            records: records.len(),
            ..Default::default()
        };
        let mut refusals = logged_refusals(&records)?;
        let mut prev = 0;
        for r in records {
            if r.seq <= prev {
                return Err(ReplayError::OutOfOrder { seq: r.seq, prev });
            }
            prev = r.seq;
            if r.kind != kind::OP {
                report.other_kinds += 1;
                continue;
            }
            if r.seq <= applied {
                report.ops_already_applied += 1;
                continue;
            }
            let rec = record::decode(&r.payload).map_err(|e| ReplayError::BadRecord {
                seq: r.seq,
                why: e.0,
            })?;
            st.last_time_ns = st.last_time_ns.max(op_time_ns(&rec.op));
            let reply = match refusals.remove(&r.seq) {
                Some(reply) => {
                    self.fs.apply_refused(r.seq);
                    report.ops_refused += 1;
                    reply
                }
                None => {
                    let executed = exec.execute(&self.fs, r.seq, &rec.meta, &rec.op);
                    if executed.offline {
                        return Err(ReplayError::Offline(r.seq));
                    }
                    report.ops_replayed += 1;
                    executed.reply
                }
            };
            report.last_seq = r.seq;
            if rec.meta.drc_key.is_some() {
                report.drc_entries += 1;
            }
            replied(&rec.meta, reply);
        }
        Ok(report)
    }
}

/// The replies of refused ops, by op seq, from the REPLY records among `records`.
fn logged_refusals(records: &[Record]) -> Result<HashMap<u64, Vec<u8>>, ReplayError> {
    records
        .iter()
        .filter(|r| r.kind == kind::REPLY)
        .map(|r| match nvlog::decode_reply(&r.payload) {
            Some((op_seq, reply)) if op_seq < r.seq => Ok((op_seq, reply.to_vec())),
            _ => Err(ReplayError::BadRecord {
                seq: r.seq,
                why: "a REPLY record that names no earlier op".into(),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wafl::{FsConfig, MemStore, StripeStore};

    /// An execution that fails the way a bug would: by panicking.
    struct Panics;

    impl Executor for Panics {
        fn execute(&self, _: &Fs, _: u64, _: &RecordMeta, _: &FsOp) -> Executed {
            panic!("execution bug");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_deferred_record_is_committed_even_if_its_execution_panics() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn StripeStore> = Arc::new(MemStore::new(4, 256));
        let fs = Arc::new(Fs::mkfs(store, 1, FsConfig::default()).unwrap());
        let log = Arc::new(
            Nvlog::open(nvlog::Config {
                region_path: dir.path().join("nvram"),
                half_bytes: 2 << 20,
                mirror: None,
                backpressure_wait_ms_max: 1_000,
            })
            .unwrap(),
        );
        let engine = Arc::new(Engine::new(fs, log.clone(), 1_000));
        let _other = engine.pretend_running(); // so this request defers its commit
        let request = Prepared::Op {
            meta: RecordMeta {
                drc_key: None,
                proc_: 12, // REMOVE
                export_id: 1,
                guard: None,
                truncate_existing: false,
            },
            op: FsOp::Remove {
                dir: Fid::ROOT,
                name: b"x".to_vec(),
                time_ns: 0,
            },
        };
        let run = tokio::spawn({
            let engine = engine.clone();
            async move { engine.run(request, &Panics).await }
        });
        assert!(run.await.unwrap_err().is_panic());
        // Nobody appends after it: only the unwinding request itself can have committed.
        assert_eq!(
            log.status().durable_seq,
            1,
            "the record was left uncommitted"
        );
    }
}
