//! Consistency points: freeze the live tree, write every dirty block to free whole stripes,
//! write the free map and snapshot table, then the new superblock. Also mount (loading a
//! root), snapshots (which pin a CP's root) and the CP driver thread.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::alloc::Alloc;
use crate::codec::{block_checksum, BlockPtr, Reader, Writer, PTR_BYTES};
use crate::error::FsError;
use crate::fs::{lock, Fs, Live, Snap, SnapInfo};
use crate::store::{StripeStore, BLOCK_SIZE};
use crate::superblock::{Blob, Superblock, FMAP_INDEX_PTRS_MAX, SNAPTABLE_PTRS_MAX};
use crate::tree::{encode_node, Content, Io, Node, Slot, Value, Written};

/// Most snapshots at once.
pub const SNAPSHOTS_MAX: usize = 200;
/// Longest snapshot name, bytes.
pub const SNAP_NAME_BYTES_MAX: usize = 64;
/// Snapshot-table encoding version.
const SNAPTABLE_VERSION: u8 = 1;

/// State owned by the CP (one CP at a time).
pub(crate) struct CpState {
    pub alloc: Alloc,
    pub gen: u64,
    pub fs_id: u64,
    pub fmap_index: Vec<BlockPtr>,
    pub snaptable: Vec<BlockPtr>,
    pub committed_root: Option<Arc<Slot>>,
    /// CP batch buffers, reused.
    pub buffers: Vec<Batch>,
}

impl CpState {
    pub fn new(alloc: Alloc, fs_id: u64) -> CpState {
        CpState {
            alloc,
            gen: 0,
            fs_id,
            fmap_index: Vec::new(),
            snaptable: Vec::new(),
            committed_root: None,
            buffers: Vec::new(),
        }
    }
}

/// Totals over all CPs since mount.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpStats {
    /// CPs completed.
    pub count: u64,
    /// Generation of the last CP.
    pub last_gen: u64,
    /// Duration of the last CP, µs.
    pub last_duration_us: u64,
    /// Bytes written by the last CP (whole stripes, superblock included).
    pub last_bytes: u64,
    /// Bytes written by all CPs.
    pub total_bytes: u64,
    /// Time spent in all CPs, µs.
    pub total_duration_us: u64,
}

/// What one CP did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpReport {
    /// New generation.
    pub gen: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Blocks of the tree written (nodes and data).
    pub tree_blocks: u64,
    /// Blocks freed.
    pub freed_blocks: u64,
    /// Duration, µs.
    pub duration_us: u64,
}

enum SnapReq {
    None,
    Create(String, u64),
    Delete(String),
}

/// Batches queued for the CP's IO thread, at most (each up to `cp_write_batch_bytes_max`).
const CP_BATCHES_QUEUED_MAX: usize = 2;

/// One CP batch: whole stripes packed in a 4 KiB-aligned buffer, so the RAID-4 group writes
/// its rows to the disks as they are (no copy into its registered buffers).
pub(crate) struct Batch {
    buf: raid4::AlignedBuf,
    /// Bytes filled, from the start.
    len: usize,
}

impl Batch {
    fn new(capacity_bytes: usize) -> Batch {
        Batch {
            buf: raid4::AlignedBuf::zeroed(capacity_bytes),
            len: 0,
        }
    }

    fn capacity(&self) -> usize {
        self.buf.len()
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Appends one block; the caller keeps `len + BLOCK_SIZE <= capacity`.
    fn push_block(&mut self, data: &[u8]) {
        assert!(
            self.len + BLOCK_SIZE <= self.capacity(),
            "CP batch overflow"
        );
        self.buf[self.len..self.len + BLOCK_SIZE].copy_from_slice(data);
        self.len += BLOCK_SIZE;
    }

    /// Zero-fills up to the next multiple of `unit` bytes (a reused buffer holds old bytes).
    fn pad_to(&mut self, unit: usize) {
        let end = self.len.div_ceil(unit) * unit;
        assert!(end <= self.capacity(), "CP batch overflow");
        self.buf[self.len..end].fill(0);
        self.len = end;
    }
}

/// Batch buffers a CP can use at once: the one being filled, the queued ones, the one being
/// written.
const CP_BATCH_BUFFERS_MAX: usize = CP_BATCHES_QUEUED_MAX + 2;

/// The first batch of a CP holds this fraction of a full batch, so the disks start early.
const CP_FIRST_BATCH_DIVISOR: usize = 8;

/// Stripes in one CP batch: the configured bound, but never more than the store holds.
fn batch_stripes(store: &dyn StripeStore, batch_bytes_max: usize) -> usize {
    let stripe_bytes = store.stripe_data_blocks() * BLOCK_SIZE;
    let stripes = usize::try_from(store.stripe_count()).unwrap_or(usize::MAX);
    (batch_bytes_max / stripe_bytes).clamp(1, stripes.max(1))
}

/// The CP's batch buffers, allocated and touched up front (at mount) so that no CP pays a
/// page fault per 4 KiB of batch; they are reused by every CP after.
pub(crate) fn prefaulted_batches(store: &dyn StripeStore, batch_bytes_max: usize) -> Vec<Batch> {
    let bytes = batch_stripes(store, batch_bytes_max) * store.stripe_data_blocks() * BLOCK_SIZE;
    (0..CP_BATCH_BUFFERS_MAX)
        .map(|_| {
            let mut b = Batch::new(bytes);
            // Fresh pages are mapped on first write: write them all now.
            b.buf.fill(0);
            b
        })
        .collect()
}

/// Appends blocks to runs of whole free stripes; each run goes to an IO thread as one
/// `write_stripes` call, so checksumming and encoding of batch k+1 overlap the write of
/// batch k.
struct StripeWriter {
    sdb: usize,
    batch_stripes_max: usize,
    /// Stripes in the run before it is handed over: small for the first batch of a CP (the
    /// disks are idle until it is written), doubling up to `batch_stripes_max`.
    run_stripes_limit: usize,
    run_first: u64,
    run: Batch,
    cur_stripe: u64,
    cur_idx: usize,
    bytes: u64,
    tx: Option<std::sync::mpsc::SyncSender<(u64, Batch)>>,
    recycled: std::sync::mpsc::Receiver<Batch>,
    io: Option<std::thread::JoinHandle<Result<(), FsError>>>,
    /// Batch buffers not in flight (kept across CPs: fresh pages cost a fault each).
    spare: Vec<Batch>,
    buffers: usize,
    /// Time spent waiting for the IO thread (queue full), µs.
    blocked_us: u64,
}

impl StripeWriter {
    fn new(
        store: Arc<dyn StripeStore>,
        batch_bytes_max: usize,
        spare: Vec<Batch>,
    ) -> Result<Self, FsError> {
        let sdb = store.stripe_data_blocks();
        let batch_stripes_max = batch_stripes(&*store, batch_bytes_max);
        let batch_bytes = batch_stripes_max * sdb * BLOCK_SIZE;
        // Buffers of another size (the geometry cannot change, but be safe) are dropped.
        let mut spare: Vec<Batch> = spare
            .into_iter()
            .filter(|b| b.capacity() == batch_bytes)
            .collect();
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, Batch)>(CP_BATCHES_QUEUED_MAX);
        let (back, recycled) = std::sync::mpsc::channel();
        let io = std::thread::Builder::new()
            .name("wafl-cp-io".into())
            .spawn(move || {
                for (first, batch) in rx {
                    store
                        .write_stripes(first, batch.bytes())
                        .map_err(|e| FsError::Io(format!("CP write at stripe {first}: {e}")))?;
                    let _ = back.send(batch);
                }
                Ok(())
            })
            .map_err(|e| FsError::Io(format!("CP IO thread: {e}")))?;
        let mut run = spare.pop().unwrap_or_else(|| Batch::new(batch_bytes));
        run.len = 0; // regression: a reused buffer kept its old length and shifted every block
        let buffers = spare.len() + 1;
        Ok(StripeWriter {
            blocked_us: 0,
            spare,
            buffers,
            sdb,
            batch_stripes_max,
            run_stripes_limit: (batch_stripes_max / CP_FIRST_BATCH_DIVISOR).max(1),
            run_first: 0,
            run,
            cur_stripe: 0,
            cur_idx: sdb,
            bytes: 0,
            tx: Some(tx),
            recycled,
            io: Some(io),
        })
    }

    fn stripe_bytes(&self) -> usize {
        self.sdb * BLOCK_SIZE
    }

    /// Places one block in the next free slot; returns its address.
    fn append(&mut self, alloc: &mut Alloc, data: &[u8], persist: bool) -> Result<u64, FsError> {
        assert_eq!(data.len(), BLOCK_SIZE);
        if self.cur_idx == self.sdb {
            let s = alloc.next_free_stripe()?;
            let run_stripes = self.run.len / self.stripe_bytes();
            if run_stripes > 0
                && (s != self.run_first + run_stripes as u64
                    || run_stripes >= self.run_stripes_limit)
            {
                self.flush_run()?;
            }
            if self.run.len == 0 {
                self.run_first = s;
            }
            self.cur_stripe = s;
            self.cur_idx = 0;
        }
        let addr = self.cur_stripe * self.sdb as u64 + self.cur_idx as u64;
        // Blocks arrive in address order within the run: append, no zero-fill first.
        self.run.push_block(data);
        alloc.mark_used(addr, persist);
        self.cur_idx += 1;
        Ok(addr)
    }

    /// Hands the current run to the IO thread.
    fn flush_run(&mut self) -> Result<(), FsError> {
        if self.run.len == 0 {
            return Ok(());
        }
        // A spare buffer, else a new one while under the bound, else wait for the IO thread.
        let blocked = Instant::now();
        let mut next = match self.spare.pop() {
            Some(b) => b,
            None => match self.recycled.try_recv() {
                Ok(b) => b,
                Err(_) if self.buffers < CP_BATCH_BUFFERS_MAX => {
                    self.buffers += 1;
                    Batch::new(self.batch_stripes_max * self.stripe_bytes())
                }
                Err(_) => self.recycled.recv().map_err(|_| {
                    self.io_result()
                        .err()
                        .unwrap_or_else(|| FsError::Io("CP IO thread stopped".into()))
                })?,
            },
        };
        next.len = 0;
        self.run_stripes_limit = (self.run_stripes_limit * 2).min(self.batch_stripes_max);
        let batch = std::mem::replace(&mut self.run, next);
        self.bytes += batch.len as u64;
        let sent = self
            .tx
            .as_ref()
            .map(|tx| tx.send((self.run_first, batch)).is_ok());
        debug_assert_eq!(self.run.len, 0);
        self.blocked_us += blocked.elapsed().as_micros() as u64;
        if sent != Some(true) {
            return Err(self
                .io_result()
                .err()
                .unwrap_or_else(|| FsError::Io("CP IO thread stopped".into())));
        }
        Ok(())
    }

    fn io_result(&mut self) -> Result<(), FsError> {
        self.tx = None;
        match self.io.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(FsError::Io("CP IO thread panicked".into())),
            None => Ok(()),
        }
    }

    /// Writes the last run and waits for every write; the unused tail of the last stripe
    /// stays free. Returns the batch buffers for the next CP and the totals.
    fn finish(mut self) -> Result<Finished, FsError> {
        let stripe_bytes = self.stripe_bytes();
        self.run.pad_to(stripe_bytes);
        self.flush_run()?;
        self.io_result()?;
        let mut buffers = std::mem::take(&mut self.spare);
        buffers.extend(self.recycled.try_iter());
        buffers.push(self.run);
        Ok(Finished {
            buffers,
            bytes: self.bytes,
            blocked_us: self.blocked_us,
        })
    }
}

/// What a finished `StripeWriter` leaves.
struct Finished {
    buffers: Vec<Batch>,
    /// Bytes written (whole stripes).
    bytes: u64,
    /// Time spent waiting for the IO thread (queue full), µs.
    blocked_us: u64,
}

/// Writes a slot and everything below it that has no pointer yet (children first).
fn write_slot(
    w: &mut StripeWriter,
    alloc: &mut Alloc,
    slot: &Arc<Slot>,
    gen: u64,
    written: &mut Vec<Arc<Slot>>,
) -> Result<BlockPtr, FsError> {
    if let Some(p) = slot.ptr() {
        return Ok(p);
    }
    let bytes = match slot.content() {
        Some(Content::Data(d)) => d,
        Some(Content::Node(n)) => {
            match &*n {
                Node::Leaf(items) => {
                    for (_, v) in items {
                        if let Value::Data(s) = v {
                            write_slot(w, alloc, s, gen, written)?;
                        }
                    }
                }
                Node::Internal { kids, .. } => {
                    for (_, s) in kids {
                        write_slot(w, alloc, s, gen, written)?;
                    }
                }
            }
            Bytes::from(encode_node(&n, gen))
        }
        None => return Err(FsError::Corrupt("dirty slot without content".into())),
    };
    let addr = w.append(alloc, &bytes, true)?;
    let p = BlockPtr {
        addr,
        birth: gen,
        csum: block_checksum(addr, &bytes),
    };
    slot.set_ptr(p);
    written.push(slot.clone());
    Ok(p)
}

/// Writes a byte string into whole blocks (not referenced by the persisted free map).
fn write_blob(
    w: &mut StripeWriter,
    alloc: &mut Alloc,
    bytes: &[u8],
    gen: u64,
) -> Result<Blob, FsError> {
    let mut ptrs = Vec::new();
    for chunk in bytes.chunks(BLOCK_SIZE) {
        let mut b = chunk.to_vec();
        b.resize(BLOCK_SIZE, 0);
        let addr = w.append(alloc, &b, false)?;
        ptrs.push(BlockPtr {
            addr,
            birth: gen,
            csum: block_checksum(addr, &b),
        });
    }
    Ok(Blob {
        len: bytes.len() as u32,
        ptrs,
    })
}

/// Reads a blob back, verifying every block.
pub(crate) fn read_blob(io: &Io, blob: &Blob, what: &str) -> Result<Vec<u8>, FsError> {
    let mut out = Vec::with_capacity(blob.ptrs.len() * BLOCK_SIZE);
    for p in &blob.ptrs {
        out.extend_from_slice(&io.read_verified(p, what)?);
    }
    if blob.len as usize > out.len() {
        return Err(FsError::Corrupt(format!(
            "{what}: length beyond its blocks"
        )));
    }
    out.truncate(blob.len as usize);
    Ok(out)
}

fn encode_snaptable(snaps: &[Snap]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(SNAPTABLE_VERSION);
    w.u16(snaps.len() as u16);
    for s in snaps {
        w.u32(s.id);
        w.u64(s.gen);
        w.u64(s.created_ns);
        w.ptr(&s.root.ptr().expect("snapshot roots are committed"));
        w.bytes16(s.name.as_bytes());
    }
    w.buf
}

/// A decoded snapshot-table entry.
pub(crate) struct SnapRecord {
    pub id: u32,
    pub gen: u64,
    pub created_ns: u64,
    pub root: BlockPtr,
    pub name: String,
}

pub(crate) fn decode_snaptable(b: &[u8]) -> Result<Vec<SnapRecord>, FsError> {
    let bad = |e: crate::codec::DecodeError| FsError::Corrupt(format!("snapshot table: {}", e.0));
    let mut r = Reader::new(b);
    let v = r.u8().map_err(bad)?;
    if v != SNAPTABLE_VERSION {
        return Err(FsError::Corrupt(format!("snapshot table version {v}")));
    }
    let n = r.u16().map_err(bad)? as usize;
    if n > SNAPSHOTS_MAX {
        return Err(FsError::Corrupt(format!("{n} snapshots")));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.u32().map_err(bad)?;
        let gen = r.u64().map_err(bad)?;
        let created_ns = r.u64().map_err(bad)?;
        let root = r.ptr().map_err(bad)?;
        let name = String::from_utf8(r.bytes16(SNAP_NAME_BYTES_MAX).map_err(bad)?)
            .map_err(|_| FsError::Corrupt("snapshot name not UTF-8".into()))?;
        out.push(SnapRecord {
            id,
            gen,
            created_ns,
            root,
            name,
        });
    }
    r.finish().map_err(bad)?;
    Ok(out)
}

/// Reads both superblocks; returns the newest valid one and, for each slot, why it is not.
pub(crate) fn read_superblocks(io: &Io) -> (Option<Superblock>, Vec<String>) {
    let sdb = io.store.stripe_data_blocks() as u64;
    let mut best: Option<Superblock> = None;
    let mut notes = Vec::new();
    for slot in 0..2u64 {
        let mut buf = vec![0u8; BLOCK_SIZE];
        if let Err(e) = io.store.read_blocks(slot * sdb, &mut buf) {
            notes.push(format!("superblock {slot}: read error: {e}"));
            continue;
        }
        match Superblock::decode(&buf) {
            Ok(sb) => {
                if sb.gen % 2 != slot {
                    notes.push(format!(
                        "superblock {slot}: generation {} in the wrong slot",
                        sb.gen
                    ));
                } else if best.as_ref().is_none_or(|b| b.gen < sb.gen) {
                    best = Some(sb);
                }
            }
            Err(e) => notes.push(format!("superblock {slot}: {e}")),
        }
    }
    (best, notes)
}

/// Loads the free-map chunk pointers from the superblock's index.
pub(crate) fn load_chunk_ptrs(io: &Io, sb: &Superblock) -> Result<Vec<Option<BlockPtr>>, FsError> {
    let idx = read_blob(io, &sb.fmap_index, "free-map index")?;
    if idx.len() != sb.fmap_chunks as usize * PTR_BYTES {
        return Err(FsError::Corrupt("free-map index length".into()));
    }
    let mut r = Reader::new(&idx);
    let mut out = Vec::new();
    for _ in 0..sb.fmap_chunks {
        let p = r.ptr().map_err(|e| FsError::Corrupt(e.0))?;
        out.push(if p.addr == 0 { None } else { Some(p) });
    }
    Ok(out)
}

/// Mount: the newest valid root, its free map and snapshots.
pub(crate) fn load(io: &Arc<Io>) -> Result<(Live, CpState), FsError> {
    let (sb, notes) = read_superblocks(io);
    for n in &notes {
        tracing::info!(note = %n, "mount");
    }
    let sb =
        sb.ok_or_else(|| FsError::Corrupt(format!("no valid superblock: {}", notes.join("; "))))?;
    let sdb = io.store.stripe_data_blocks() as u64;
    let stripes = io.store.stripe_count();
    if sb.total_blocks != sdb * stripes || sb.stripe_data_blocks as u64 != sdb {
        return Err(FsError::Corrupt(format!(
            "superblock geometry {} blocks / {} per stripe, store has {} / {sdb}",
            sb.total_blocks,
            sb.stripe_data_blocks,
            sdb * stripes
        )));
    }
    let mut alloc = Alloc::new(sdb, stripes);
    let chunk_ptrs = load_chunk_ptrs(io, &sb)?;
    if chunk_ptrs.len() as u64 != alloc.chunks() {
        return Err(FsError::Corrupt("free-map chunk count".into()));
    }
    for (c, p) in chunk_ptrs.iter().enumerate() {
        let bytes = match p {
            Some(p) => io.read_verified(p, "free-map chunk")?,
            None => vec![0u8; BLOCK_SIZE],
        };
        alloc.persisted.load_chunk(c as u64, &bytes)?;
    }
    if alloc.persisted.ones() != sb.used_blocks {
        return Err(FsError::Corrupt(format!(
            "free map has {} used blocks, superblock says {}",
            alloc.persisted.ones(),
            sb.used_blocks
        )));
    }
    alloc.inuse = alloc.persisted.clone();
    alloc.chunk_ptrs = chunk_ptrs;
    alloc.take_dirty_chunks();
    let meta: Vec<u64> = sb
        .fmap_index
        .ptrs
        .iter()
        .chain(sb.snaptable.ptrs.iter())
        .chain(alloc.chunk_ptrs.iter().flatten())
        .map(|p| p.addr)
        .collect();
    for b in meta {
        if b >= sdb * stripes {
            return Err(FsError::Corrupt(format!(
                "metadata block {b} beyond the store"
            )));
        }
        alloc.inuse.set(b);
    }
    let snaps = decode_snaptable(&read_blob(io, &sb.snaptable, "snapshot table")?)?
        .into_iter()
        .map(|r| Snap {
            id: r.id,
            name: r.name,
            gen: r.gen,
            created_ns: r.created_ns,
            root: Slot::clean(r.root),
        })
        .collect();
    let root = Slot::clean(sb.root);
    let free_blocks = alloc.free_blocks();
    let cp = CpState {
        alloc,
        gen: sb.gen,
        fs_id: sb.fs_id,
        fmap_index: sb.fmap_index.ptrs.clone(),
        snaptable: sb.snaptable.ptrs.clone(),
        committed_root: Some(root.clone()),
        buffers: Vec::new(),
    };
    let live = Live {
        root,
        freed: Vec::new(),
        next_ino: sb.next_ino,
        next_gen: sb.next_gen,
        applied_seq: sb.applied_seq,
        dirty_bytes: 0,
        snapshots: snaps,
        next_snap_id: sb.next_snap_id,
        offline: None,
        free_blocks,
    };
    tracing::info!(gen = sb.gen, applied_seq = sb.applied_seq, "mounted");
    Ok((live, cp))
}

/// Blocks in the tree under `slot` born after `min_birth` (older subtrees are skipped: a
/// child is never newer than its parent).
pub(crate) fn blocks_born_after(
    io: &Io,
    slot: &Arc<Slot>,
    min_birth: u64,
    out: &mut HashSet<u64>,
) -> Result<(), FsError> {
    let p = slot
        .ptr()
        .ok_or_else(|| FsError::Corrupt("unwritten slot in a committed tree".into()))?;
    if p.birth <= min_birth || !out.insert(p.addr) {
        return Ok(());
    }
    let n = slot.node(io)?;
    match &*n {
        Node::Leaf(items) => {
            for (_, v) in items {
                if let Value::Data(s) = v {
                    if let Some(dp) = s.ptr() {
                        if dp.birth > min_birth {
                            out.insert(dp.addr);
                        }
                    }
                }
            }
        }
        Node::Internal { kids, .. } => {
            for (_, s) in kids {
                blocks_born_after(io, s, min_birth, out)?;
            }
        }
    }
    Ok(())
}

/// Blocks only snapshot `i` holds: born after the previous snapshot, absent from the next
/// snapshot (or from `newer_root`, the active file system, for the newest).
fn unique_blocks(
    io: &Io,
    snaps: &[Snap],
    i: usize,
    newer_root: &Arc<Slot>,
) -> Result<Vec<u64>, FsError> {
    let prev_gen = if i == 0 { 0 } else { snaps[i - 1].gen };
    let next = snaps.get(i + 1).map(|s| &s.root).unwrap_or(newer_root);
    let mut mine = HashSet::new();
    blocks_born_after(io, &snaps[i].root, prev_gen, &mut mine)?;
    let mut theirs = HashSet::new();
    blocks_born_after(io, next, prev_gen, &mut theirs)?;
    let mut v: Vec<u64> = mine.difference(&theirs).copied().collect();
    v.sort_unstable();
    Ok(v)
}

fn check_snap_name(name: &str) -> Result<(), FsError> {
    if name.is_empty()
        || name.len() > SNAP_NAME_BYTES_MAX
        || name.contains('/')
        || name.contains('\0')
        || name.starts_with('.')
    {
        return Err(FsError::BadName(format!("snapshot name {name:?}")));
    }
    Ok(())
}

impl Fs {
    /// Runs a consistency point now (returns when its superblock is durable).
    pub fn cp(&self) -> Result<CpReport, FsError> {
        self.cp_with(SnapReq::None)
    }

    /// Creates a read-only snapshot of the file system as of a CP taken now.
    pub fn snapshot_create(&self, name: &str, time_ns: u64) -> Result<SnapInfo, FsError> {
        check_snap_name(name)?;
        self.cp_with(SnapReq::Create(name.to_string(), time_ns))?;
        self.snapshot_list()
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| FsError::Corrupt("snapshot vanished".into()))
    }

    /// Deletes a snapshot; the blocks only it held are free after the CP this runs.
    pub fn snapshot_delete(&self, name: &str) -> Result<(), FsError> {
        self.cp_with(SnapReq::Delete(name.to_string())).map(|_| ())
    }

    /// Bytes held only by this snapshot (what deleting it would free).
    pub fn snapshot_unique_bytes(&self, name: &str) -> Result<u64, FsError> {
        let cps = lock(&self.cp);
        let snaps = lock(&self.live).snapshots.clone();
        let i = snaps
            .iter()
            .position(|s| s.name == name)
            .ok_or(FsError::NotFound)?;
        let newer = cps
            .committed_root
            .clone()
            .ok_or_else(|| FsError::Corrupt("no committed root".into()))?;
        Ok(unique_blocks(&self.io, &snaps, i, &newer)?.len() as u64 * BLOCK_SIZE as u64)
    }

    /// Totals of the CPs since mount.
    pub fn cp_stats(&self) -> CpStats {
        lock(&self.stats).clone()
    }

    /// Generation of the last committed CP.
    pub fn generation(&self) -> u64 {
        lock(&self.cp).gen
    }

    /// The file-system id chosen at mkfs (front-ends put it in file handles with the
    /// aggregate uuid).
    pub fn fs_id(&self) -> u64 {
        lock(&self.cp).fs_id
    }

    fn cp_with(&self, req: SnapReq) -> Result<CpReport, FsError> {
        let mut cps = lock(&self.cp);
        let start = Instant::now();
        // Freeze: the live tree goes on from the same root; this CP writes the frozen one.
        let (root, freed, next_ino, next_gen, applied_seq, snaps, next_snap_id) = {
            let mut l = lock(&self.live);
            if let Some(why) = &l.offline {
                return Err(FsError::Offline(why.clone()));
            }
            match &req {
                SnapReq::Create(name, _) => {
                    if l.snapshots.iter().any(|s| &s.name == name) {
                        return Err(FsError::Exists);
                    }
                    if l.snapshots.len() >= SNAPSHOTS_MAX {
                        return Err(FsError::NoSpace);
                    }
                }
                SnapReq::Delete(name) => {
                    if !l.snapshots.iter().any(|s| &s.name == name) {
                        return Err(FsError::NotFound);
                    }
                }
                SnapReq::None => {}
            }
            l.dirty_bytes = 0;
            (
                l.root.clone(),
                std::mem::take(&mut l.freed),
                l.next_ino,
                l.next_gen,
                l.applied_seq,
                l.snapshots.clone(),
                l.next_snap_id,
            )
        };
        let res = self.cp_write(
            &mut cps,
            root,
            freed,
            (next_ino, next_gen, applied_seq),
            snaps,
            next_snap_id,
            req,
            start,
        );
        if let Err(e) = &res {
            let why = format!("CP {} failed: {e}", cps.gen + 1);
            tracing::error!(%why, "file system offline");
            lock(&self.live).offline = Some(why);
        }
        res
    }

    #[allow(clippy::too_many_arguments)]
    fn cp_write(
        &self,
        cps: &mut CpState,
        root: Arc<Slot>,
        freed: Vec<Arc<Slot>>,
        (next_ino, next_gen, applied_seq): (u64, u64, u64),
        mut snaps: Vec<Snap>,
        mut next_snap_id: u32,
        req: SnapReq,
        start: Instant,
    ) -> Result<CpReport, FsError> {
        let freeze_us = start.elapsed().as_micros() as u64;
        let io = &self.io;
        let store: &dyn StripeStore = &*io.store;
        let gen = cps.gen + 1;
        let newest_snap_gen = snaps.iter().map(|s| s.gen).max().unwrap_or(0);
        let mut w = StripeWriter::new(
            io.store.clone(),
            self.config.cp_write_batch_bytes_max,
            std::mem::take(&mut cps.buffers),
        )?;
        let mut written = Vec::new();
        let root_ptr = write_slot(&mut w, &mut cps.alloc, &root, gen, &mut written)?;
        let tree_us = start.elapsed().as_micros() as u64;
        let tree_blocks = written.len() as u64;

        // Blocks the new root no longer references, unless a snapshot holds them.
        let mut to_free: Vec<u64> = Vec::new();
        for s in &freed {
            if let Some(p) = s.ptr() {
                assert!(
                    p.birth < gen,
                    "a dropped slot cannot be in the tree being written"
                );
                if p.birth > newest_snap_gen {
                    to_free.push(p.addr);
                }
            }
        }
        drop(freed);
        match req {
            SnapReq::None => {}
            SnapReq::Create(name, created_ns) => {
                snaps.push(Snap {
                    id: next_snap_id,
                    name,
                    gen,
                    created_ns,
                    root: root.clone(),
                });
                next_snap_id += 1;
            }
            SnapReq::Delete(name) => {
                let i = snaps
                    .iter()
                    .position(|s| s.name == name)
                    .ok_or(FsError::NotFound)?;
                to_free.extend(unique_blocks(io, &snaps, i, &root)?);
                snaps.remove(i);
            }
        }
        let mut freed_blocks = 0;
        for &b in &to_free {
            freed_blocks += cps.alloc.unreference(b) as u64;
        }

        // Snapshot table, free-map chunks and index: in `inuse` only, never in the map itself.
        let snaptable = write_blob(&mut w, &mut cps.alloc, &encode_snaptable(&snaps), gen)?;
        if snaptable.ptrs.len() > SNAPTABLE_PTRS_MAX {
            return Err(FsError::NoSpace);
        }
        let dirty = cps.alloc.take_dirty_chunks();
        let mut release: Vec<u64> = cps
            .fmap_index
            .iter()
            .chain(cps.snaptable.iter())
            .map(|p| p.addr)
            .collect();
        let mut new_chunk_ptrs = cps.alloc.chunk_ptrs.clone();
        for &c in &dirty {
            let bytes = cps.alloc.persisted.chunk_bytes(c);
            let addr = w.append(&mut cps.alloc, &bytes, false)?;
            if let Some(old) = new_chunk_ptrs[c as usize] {
                release.push(old.addr);
            }
            new_chunk_ptrs[c as usize] = Some(BlockPtr {
                addr,
                birth: gen,
                csum: block_checksum(addr, &bytes),
            });
        }
        let mut iw = Writer::new();
        for p in &new_chunk_ptrs {
            iw.ptr(&p.unwrap_or(BlockPtr {
                addr: 0,
                birth: 0,
                csum: 0,
            }));
        }
        let fmap_index = write_blob(&mut w, &mut cps.alloc, &iw.buf, gen)?;
        if fmap_index.ptrs.len() > FMAP_INDEX_PTRS_MAX {
            return Err(FsError::Invalid(
                "aggregate too large for the free-map index".into(),
            ));
        }
        let meta_us = start.elapsed().as_micros() as u64 - tree_us;
        let wait = Instant::now();
        let stripe_bytes = w.stripe_bytes();
        let done = w.finish()?;
        cps.buffers = done.buffers;
        let io_wait_us = wait.elapsed().as_micros() as u64;
        let flush = Instant::now();
        store
            .flush()
            .map_err(|e| FsError::Io(format!("CP flush: {e}")))?;

        // The commit: one superblock, in the slot the previous CP did not use.
        let sb = Superblock {
            gen,
            applied_seq,
            time_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            total_blocks: cps.alloc.sdb * cps.alloc.stripes,
            stripe_data_blocks: cps.alloc.sdb as u32,
            next_snap_id,
            next_ino,
            next_gen,
            used_blocks: cps.alloc.persisted.ones(),
            root: root_ptr,
            fmap_chunks: new_chunk_ptrs.len() as u32,
            fs_id: cps.fs_id,
            fmap_index: fmap_index.clone(),
            snaptable: snaptable.clone(),
        };
        let mut stripe = sb.encode();
        stripe.resize(stripe_bytes, 0);
        store
            .write_stripes(gen % 2, &stripe)
            .map_err(|e| FsError::Io(format!("superblock write: {e}")))?;
        store
            .flush()
            .map_err(|e| FsError::Io(format!("superblock flush: {e}")))?;
        let flush_us = flush.elapsed().as_micros() as u64;
        let commit = Instant::now();
        let bytes = done.bytes + stripe.len() as u64;

        // Committed: old metadata and freed blocks may be reused by the next CP.
        cps.gen = gen;
        cps.alloc.chunk_ptrs = new_chunk_ptrs;
        cps.fmap_index = fmap_index.ptrs;
        cps.snaptable = snaptable.ptrs;
        for b in release.into_iter().chain(to_free) {
            cps.alloc.release(b);
            io.cache.forget(b); // memory only: entries are checked against birth and checksum
        }
        cps.committed_root = Some(root);
        for s in &written {
            match s.evict_data() {
                Written::Node => io.note_cached(s),
                Written::Data(p, d) => io.cache.insert(&p, d),
                Written::Other => {}
            }
        }
        {
            let mut l = lock(&self.live);
            l.snapshots = snaps;
            l.next_snap_id = next_snap_id;
            l.free_blocks = cps.alloc.free_blocks();
        }
        let commit_us = commit.elapsed().as_micros() as u64;
        let duration_us = start.elapsed().as_micros() as u64;
        let mut st = lock(&self.stats);
        st.count += 1;
        st.last_gen = gen;
        st.last_duration_us = duration_us;
        st.last_bytes = bytes;
        st.total_bytes += bytes;
        st.total_duration_us += duration_us;
        tracing::debug!(
            gen,
            bytes,
            tree_blocks,
            freed_blocks,
            duration_us,
            freeze_us,
            tree_us,
            meta_us,
            commit_us,
            blocked_us = done.blocked_us,
            io_wait_us,
            flush_us,
            "CP done"
        );
        Ok(CpReport {
            gen,
            bytes,
            tree_blocks,
            freed_blocks,
            duration_us,
        })
    }
}

/// Runs CPs on a timer and when dirty memory passes its bound, on its own thread.
pub struct CpDriver {
    fs: Arc<Fs>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CpDriver {
    /// Starts the driver thread.
    pub fn start(fs: Arc<Fs>) -> CpDriver {
        lock(&fs.signal.0).stop = false;
        let f = fs.clone();
        let thread = std::thread::Builder::new()
            .name("wafl-cp".into())
            .spawn(move || Self::run(f))
            .expect("spawn CP thread");
        CpDriver {
            fs,
            thread: Some(thread),
        }
    }

    fn run(fs: Arc<Fs>) {
        let interval = Duration::from_millis(fs.config.cp_interval_ms);
        loop {
            {
                let (m, c) = &fs.signal;
                let g = lock(m);
                let (mut g, _) = c
                    .wait_timeout_while(g, interval, |s| !s.wanted && !s.stop)
                    .unwrap_or_else(|e| e.into_inner());
                if g.stop {
                    return;
                }
                g.wanted = false;
            }
            if fs.dirty_bytes() == 0 {
                continue;
            }
            if let Err(e) = fs.cp() {
                tracing::error!(error = %e, "CP driver stops");
                return;
            }
        }
    }

    /// Stops the thread (a CP in progress completes first).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let (m, c) = &self.fs.signal;
        lock(m).stop = true;
        c.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for CpDriver {
    fn drop(&mut self) {
        self.halt();
    }
}
