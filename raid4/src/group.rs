//! A RAID-4 group: N data disks + 1 parity disk on one io_uring engine. Full-stripe writes
//! with in-memory parity, checksum-verified reads that reconstruct from parity, per-disk
//! failure handling and the group's state. Creation and assembly live in `assemble.rs`,
//! rebuild in `rebuild.rs`, scrub in `scrub.rs`.

use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::join_all;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use uuid::Uuid;

use crate::buf::Slot;
use crate::csum::{self, ChunkId, CsumState};
use crate::disk::{Disk, Fault};
use crate::engine::{Engine, Segment};
use crate::error::{DiskRef, Raid4Error};
use crate::label::{Label, MemberState, Role, POSITION_SPARE};
use crate::layout::{Geometry, BLOCK_SIZE, DATA_DISKS_MAX, LABEL_BLOCKS, POSITIONS_MAX};
use crate::locks::StripeLocks;
use crate::progress::Progress;
use crate::status::{Counters, DiskState, DiskStatus, GroupState, GroupStatus, SpareStatus};
use crate::xor::xor_into;

/// Performance bounds of a group.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Stripes one call (read, write, rebuild, scrub) keeps in flight at once, at most.
    pub stripes_inflight_max: usize,
    /// Bytes of registered IO buffers per group; wide groups with deep chunks get fewer
    /// stripes in flight (at least 2) rather than more memory.
    pub buffer_bytes_max: usize,
    /// Kernel requests (SQEs) in flight at once on the group's ring.
    pub inflight_sqes_max: usize,
}

/// Fewest stripes in flight, whatever the buffer budget: one filling while one is in IO.
const STRIPES_INFLIGHT_MIN: usize = 2;

impl Tuning {
    /// Stripes in flight for a group of `geo` under this tuning.
    pub fn stripes_window(&self, geo: &Geometry) -> usize {
        let fit = self.buffer_bytes_max / (geo.positions() * geo.chunk_bytes());
        fit.min(self.stripes_inflight_max).max(STRIPES_INFLIGHT_MIN)
    }
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            stripes_inflight_max: 16,
            buffer_bytes_max: 64 << 20,
            inflight_sqes_max: crate::engine::INFLIGHT_SQES_MAX_DEFAULT,
        }
    }
}

/// Read attempts of one stripe piece: each IO error fails a disk and re-plans the read.
const READ_ATTEMPTS_MAX: usize = 3;

pub(crate) struct Member {
    pub(crate) disk: Option<Arc<Disk>>,
    /// The labels say ok but the disk was not found at assembly.
    pub(crate) missing: bool,
    pub(crate) uuid: Uuid,
    pub(crate) state: MemberState,
    pub(crate) reason: Option<String>,
}

pub(crate) struct Spare {
    pub(crate) disk: Arc<Disk>,
    pub(crate) uuid: Uuid,
}

pub(crate) struct State {
    pub(crate) generation: u64,
    pub(crate) members: Vec<Member>,
    pub(crate) spares: Vec<Spare>,
    pub(crate) offline: Option<String>,
    pub(crate) notes: Vec<String>,
}

#[derive(Default)]
pub(crate) struct PerDisk {
    pub(crate) read_errors: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    pub(crate) checksum_errors: AtomicU64,
}

#[derive(Default)]
pub(crate) struct GroupCounters {
    pub(crate) stripes_written: AtomicU64,
    pub(crate) blocks_read: AtomicU64,
    pub(crate) checksum_errors: AtomicU64,
    pub(crate) reconstructed_blocks: AtomicU64,
}

/// A RAID-4 group. Shareable (`Send + Sync`), used behind `Arc`.
pub struct Group {
    pub(crate) uuid: Uuid,
    pub(crate) geo: Geometry,
    pub(crate) created_unix_s: u64,
    pub(crate) tuning: Tuning,
    pub(crate) engine: Engine,
    pub(crate) state: Mutex<State>,
    pub(crate) label_lock: futures::lock::Mutex<()>,
    /// While any is false, nothing is written (see [`Group::set_write_gate`]).
    pub(crate) write_gate: Mutex<Vec<Arc<std::sync::atomic::AtomicBool>>>,
    pub(crate) stripes: StripeLocks,
    pub(crate) stamp: AtomicU64,
    pub(crate) counters: GroupCounters,
    pub(crate) per_disk: Vec<PerDisk>,
    pub(crate) rebuild_progress: Mutex<Option<Arc<Progress>>>,
    pub(crate) scrub_progress: Mutex<Option<Arc<Progress>>>,
    pub(crate) last_scrub: Mutex<Option<crate::scrub::ScrubReport>>,
    pub(crate) last_rebuild: Mutex<Option<crate::rebuild::RebuildReport>>,
}

/// The disks usable right now, by position.
pub(crate) struct View {
    /// Disks whose data can be read (state Ok).
    pub(crate) read: Vec<Option<Arc<Disk>>>,
    /// Disks that receive writes (Ok or Rebuilding).
    pub(crate) write: Vec<Option<Arc<Disk>>>,
}

/// One chunk (or part of one) read from a disk, with its checksum block.
pub(crate) struct ChunkRead {
    pub(crate) slot: Slot,
    pub(crate) csum: CsumState,
    pub(crate) rows: Range<usize>,
}

/// Verdict on one data row of a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RowState {
    Good,
    Unwritten,
    Bad(String),
}

impl ChunkRead {
    pub(crate) fn row(&self, r: usize) -> &[u8] {
        &self.slot.bytes()[r * BLOCK_SIZE..(r + 1) * BLOCK_SIZE]
    }

    pub(crate) fn row_state(&self, r: usize) -> RowState {
        debug_assert!(self.rows.contains(&r));
        match &self.csum {
            CsumState::Valid(c) => {
                if crate::crc::crc32c(self.row(r)) == c.crcs[r] {
                    RowState::Good
                } else {
                    RowState::Bad("block crc32c mismatch".into())
                }
            }
            CsumState::Unwritten => RowState::Unwritten,
            CsumState::Bad(why) => RowState::Bad(why.clone()),
        }
    }
}

pub(crate) enum ReadFailure {
    /// An IO error failed a disk out: plan the read again.
    Retry,
    Fatal(Raid4Error),
}

impl From<Raid4Error> for ReadFailure {
    fn from(e: Raid4Error) -> ReadFailure {
        ReadFailure::Fatal(e)
    }
}

impl Group {
    /// Makes every later write depend on `flags` (e.g. the reservation monitor's "held" and
    /// the node's "not releasing"): while any is false, stripe and label writes fail with
    /// [`Raid4Error::Fenced`] and touch no disk. A node that lost its disks to the partner, or
    /// is handing them over, must not write them.
    pub fn set_write_gate(&self, flags: Vec<Arc<std::sync::atomic::AtomicBool>>) {
        *self.write_gate.lock().expect("gate") = flags;
    }

    pub(crate) fn check_write_gate(&self) -> Result<(), Raid4Error> {
        let flags = self.write_gate.lock().expect("gate");
        if flags.iter().all(|f| f.load(Ordering::Acquire)) {
            Ok(())
        } else {
            Err(Raid4Error::Fenced { uuid: self.uuid })
        }
    }

    /// The aggregate's uuid.
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// N, the number of data disks.
    pub fn data_disks(&self) -> usize {
        self.geo.data_disks
    }

    /// The group's geometry.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Data blocks per full stripe (N × data rows per chunk).
    pub fn stripe_data_blocks(&self) -> usize {
        self.geo.stripe_data_blocks()
    }

    /// Stripes usable for data.
    pub fn stripe_count(&self) -> u64 {
        self.geo.stripe_count
    }

    /// Logical data blocks in the group.
    pub fn total_blocks(&self) -> u64 {
        self.geo.total_blocks()
    }

    /// The label generation (bumped on every membership change).
    pub fn generation(&self) -> u64 {
        self.state.lock().expect("state").generation
    }

    pub(crate) fn view(&self) -> Result<View, Raid4Error> {
        let st = self.state.lock().expect("state");
        if let Some(reason) = &st.offline {
            return Err(Raid4Error::Offline {
                uuid: self.uuid,
                reason: reason.clone(),
            });
        }
        let read = st
            .members
            .iter()
            .map(|m| {
                if m.state == MemberState::Ok {
                    m.disk.clone()
                } else {
                    None
                }
            })
            .collect();
        let write = st
            .members
            .iter()
            .map(|m| {
                if m.state != MemberState::Failed {
                    m.disk.clone()
                } else {
                    None
                }
            })
            .collect();
        Ok(View { read, write })
    }

    pub(crate) fn disk_ref(&self, position: usize) -> DiskRef {
        let st = self.state.lock().expect("state");
        DiskRef {
            position: Some(position),
            path: st.members[position]
                .disk
                .as_ref()
                .map(|d| d.path().to_path_buf())
                .unwrap_or_else(|| PathBuf::from("<missing>")),
        }
    }

    pub(crate) fn chunk_id(&self, position: usize, stripe: u64) -> ChunkId {
        ChunkId {
            aggregate: self.uuid,
            position,
            stripe,
            depth: self.geo.depth,
        }
    }

    // ---------------------------------------------------------------- writes

    /// Writes `data.len() / (stripe_data_blocks × BLOCK_SIZE)` consecutive full stripes from
    /// `first_stripe`; `data` is a whole number of stripes. Parity is computed in memory; no
    /// disk is read. One failed disk is tolerated (the group goes DEGRADED); with two the
    /// group is OFFLINE and nothing more is written.
    ///
    /// If `data` starts on a 4 KiB boundary its rows go to the disks without being copied.
    /// Dropping the future before it completes leaves the stripes undefined, and the kernel
    /// may still be reading `data` for a few milliseconds: do not reuse the buffer for a
    /// write that was abandoned half way (a wrong block on disk is the only consequence).
    pub async fn write_stripes(&self, first_stripe: u64, data: &[u8]) -> Result<(), Raid4Error> {
        let sbytes = self.geo.stripe_data_bytes();
        if data.is_empty() || !data.len().is_multiple_of(sbytes) {
            return Err(Raid4Error::InvalidArgument(format!(
                "write of {} bytes is not a whole number of {sbytes}-byte stripes",
                data.len()
            )));
        }
        let n = (data.len() / sbytes) as u64;
        if first_stripe
            .checked_add(n)
            .is_none_or(|end| end > self.geo.stripe_count)
        {
            return Err(Raid4Error::InvalidArgument(format!(
                "stripes {first_stripe}..{} beyond the group's {} stripes",
                first_stripe.saturating_add(n),
                self.geo.stripe_count
            )));
        }
        self.view()?;
        self.check_write_gate()?;
        // A bounded window of stripes in flight: while stripe k's IO runs, k+1 is prepared.
        // (A plain loop over FuturesUnordered rather than stream combinators with closures,
        // whose futures would not be `Send` for tokio::spawn.)
        // Twice the slot budget in stripes: the extra ones wait in the pool's queue and start
        // the moment enough single chunk writes have completed.
        let mut inflight = FuturesUnordered::new();
        let mut chunks = data.chunks_exact(sbytes).zip(first_stripe..);
        let mut first_err = None;
        loop {
            while inflight.len() < 2 * self.tuning.stripes_window(&self.geo) {
                let Some((d, s)) = chunks.next() else { break };
                inflight.push(self.write_stripe(s, d));
            }
            match inflight.next().await {
                Some(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Some(Ok(())) => {}
                None => break,
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn write_stripe(&self, stripe: u64, data: &[u8]) -> Result<(), Raid4Error> {
        let _lock = self.stripes.lock(stripe).await;
        self.check_write_gate()?;
        let view = self.view()?;
        let g = self.geo;
        let mut slots = self.engine.pool().acquire(g.positions()).await;
        let stamp = self.stamp.fetch_add(1, Ordering::Relaxed);
        // A block-aligned caller buffer goes to the data disks as is (no copy); otherwise
        // the rows are copied into the registered slots.
        let zero_copy = (data.as_ptr() as usize).is_multiple_of(BLOCK_SIZE);
        self.fill_stripe(&mut slots, data, stripe, stamp, !zero_copy);
        let cdb = g.chunk_data_bytes();
        let writes = slots.into_iter().enumerate().filter_map(|(p, slot)| {
            let disk = view.write[p].clone()?;
            let off = g.chunk_offset(stripe);
            let rows = (zero_copy && p < g.data_disks).then(|| &data[p * cdb..(p + 1) * cdb]);
            Some(async move {
                let done = match rows {
                    // SAFETY: `rows` is aligned (checked above) and borrowed from the
                    // caller of `write_stripes` for as long as this future lives; the
                    // cancellation caveat is documented on `write_stripes`.
                    Some(rows) => unsafe {
                        self.engine.write_borrowed(&disk, slot, rows, off).await
                    },
                    None => {
                        let segs = [seg(off, 0, g.chunk_bytes())];
                        self.engine.write(&disk, slot, &segs).await
                    }
                };
                (p, done)
            })
        });
        // Each slot goes back to the pool as soon as its own write completes, so the next
        // stripe can start without waiting for this stripe's slowest disk.
        let mut writes: FuturesUnordered<_> = writes.collect();
        let mut failed = Vec::new();
        while let Some((p, done)) = writes.next().await {
            drop(done.slot);
            if let Err(e) = done.result {
                failed.push((p, e));
            }
        }
        for (p, e) in failed {
            self.per_disk[p]
                .write_errors
                .fetch_add(1, Ordering::Relaxed);
            self.fail_position(p, format!("write of stripe {stripe} failed: {e}"))
                .await;
        }
        self.view()?;
        self.counters
            .stripes_written
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Lays out one stripe in `slots` (one per position): data rows copied from `data`,
    /// parity, and every chunk's checksum block. One pass row by row, so each block is
    /// copied, checksummed and XORed into parity while it is hot in L1.
    ///
    /// With `copy == false` the data rows stay in the caller's buffer and each data slot
    /// only holds its chunk's checksum block, at offset 0.
    pub(crate) fn fill_stripe(
        &self,
        slots: &mut [Slot],
        data: &[u8],
        stripe: u64,
        stamp: u64,
        copy: bool,
    ) {
        let g = self.geo;
        let (n, rows, cdb) = (g.data_disks, g.rows(), g.chunk_data_bytes());
        assert_eq!(slots.len(), g.positions());
        assert_eq!(data.len(), n * cdb);
        // crcs[p * rows + r]: row r of position p.
        let mut crcs = vec![0u32; (n + 1) * rows];
        let (data_slots, parity_slot) = slots.split_at_mut(n);
        let parity = parity_slot[0].bytes_mut();
        for r in 0..rows {
            let row = r * BLOCK_SIZE..(r + 1) * BLOCK_SIZE;
            let mut srcs: [&[u8]; DATA_DISKS_MAX] = [&[]; DATA_DISKS_MAX];
            let mut row_crcs = [0u32; DATA_DISKS_MAX];
            for (d, src) in srcs.iter_mut().enumerate().take(n) {
                *src = &data[d * cdb + row.start..d * cdb + row.end];
                row_crcs[d] = crate::crc::crc32c(src);
                crcs[d * rows + r] = row_crcs[d];
            }
            // Parity from the caller's rows, which the crcs just pulled into L1; its crc
            // follows from theirs (crc32c is affine), so the parity block is never read.
            xor_into(&mut parity[row.clone()], &srcs[..n]);
            crcs[n * rows + r] = csum::xor_crc(&row_crcs[..n]);
            debug_assert_eq!(crcs[n * rows + r], crate::crc::crc32c(&parity[row.clone()]));
            if copy {
                for (slot, src) in data_slots.iter_mut().zip(srcs) {
                    copy_streaming(&mut slot.bytes_mut()[row.clone()], src);
                }
            }
        }
        copy_streaming_fence();
        for (p, slot) in slots.iter_mut().enumerate() {
            let b = slot.bytes_mut();
            let at = if copy || p == n { cdb } else { 0 };
            csum::encode(
                &mut b[at..at + BLOCK_SIZE],
                &self.chunk_id(p, stripe),
                stamp,
                &crcs[p * rows..(p + 1) * rows],
            );
        }
    }

    /// Makes everything written so far durable (fdatasync on every disk that takes writes).
    pub async fn flush(&self) -> Result<(), Raid4Error> {
        let view = self.view()?;
        let flushes = view
            .write
            .iter()
            .enumerate()
            .filter_map(|(p, d)| d.clone().map(|d| (p, d)))
            .map(|(p, d)| async move { (p, self.engine.flush(&d).await) });
        for (p, r) in join_all(flushes).await {
            if let Err(e) = r {
                self.per_disk[p]
                    .write_errors
                    .fetch_add(1, Ordering::Relaxed);
                self.fail_position(p, format!("flush failed: {e}")).await;
            }
        }
        self.view().map(|_| ())
    }

    // ---------------------------------------------------------------- reads

    /// Reads `buf.len() / BLOCK_SIZE` consecutive logical data blocks from `block`, verifying
    /// every block's checksum and reconstructing from parity where a disk failed or a block
    /// is bad. A block of a stripe that was never written reads as zeros.
    pub async fn read_blocks(&self, block: u64, buf: &mut [u8]) -> Result<(), Raid4Error> {
        if !buf.len().is_multiple_of(BLOCK_SIZE) {
            return Err(Raid4Error::InvalidArgument(format!(
                "read buffer of {} bytes is not a whole number of blocks",
                buf.len()
            )));
        }
        let count = (buf.len() / BLOCK_SIZE) as u64;
        if block
            .checked_add(count)
            .is_none_or(|end| end > self.geo.total_blocks())
        {
            return Err(Raid4Error::InvalidArgument(format!(
                "blocks {block}..{} beyond the group's {} blocks",
                block.saturating_add(count),
                self.geo.total_blocks()
            )));
        }
        self.view()?;
        let sdb = self.geo.stripe_data_blocks() as u64;
        let mut pieces = Vec::new();
        let mut rest = buf;
        let mut b = block;
        while !rest.is_empty() {
            let stripe = b / sdb;
            let idx0 = (b % sdb) as usize;
            let take = ((sdb - b % sdb) as usize).min(rest.len() / BLOCK_SIZE);
            let (piece, tail) = rest.split_at_mut(take * BLOCK_SIZE);
            pieces.push((stripe, idx0, piece));
            rest = tail;
            b += take as u64;
        }
        // As for writes: twice the slot budget, the extra pieces wait for slots.
        let mut inflight = FuturesUnordered::new();
        let mut pieces = pieces.into_iter();
        let mut first_err = None;
        loop {
            while inflight.len() < 2 * self.tuning.stripes_window(&self.geo) {
                let Some((stripe, idx0, piece)) = pieces.next() else {
                    break;
                };
                inflight.push(self.read_piece(stripe, idx0, piece));
            }
            match inflight.next().await {
                Some(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Some(Ok(())) => {}
                None => break,
            }
        }
        self.counters
            .blocks_read
            .fetch_add(count, Ordering::Relaxed);
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn read_piece(&self, stripe: u64, idx0: usize, out: &mut [u8]) -> Result<(), Raid4Error> {
        let g = self.geo;
        let r = g.rows();
        let end = idx0 + out.len() / BLOCK_SIZE;
        let want: Vec<Option<Range<usize>>> = (0..g.data_disks)
            .map(|d| {
                let lo = idx0.max(d * r);
                let hi = end.min((d + 1) * r);
                (lo < hi).then(|| lo - d * r..hi - d * r)
            })
            .collect();
        for _ in 0..READ_ATTEMPTS_MAX {
            let view = self.view()?;
            match self.read_piece_once(stripe, idx0, &want, out, &view).await {
                Ok(()) => return Ok(()),
                Err(ReadFailure::Retry) => continue,
                Err(ReadFailure::Fatal(e)) => return Err(e),
            }
        }
        self.view()?;
        Err(Raid4Error::State(format!(
            "stripe {stripe}: disks kept failing during the read ({READ_ATTEMPTS_MAX} attempts); see `twinfiler aggr status`"
        )))
    }

    async fn read_piece_once(
        &self,
        stripe: u64,
        idx0: usize,
        want: &[Option<Range<usize>>],
        out: &mut [u8],
        view: &View,
    ) -> Result<(), ReadFailure> {
        let g = self.geo;
        let failed: Vec<usize> = (0..g.positions())
            .filter(|&p| view.read[p].is_none())
            .collect();
        if failed.len() > 1 {
            return Err(self.offline_now().into());
        }
        // Rows of a failed data disk that this read wants: every other disk must supply them.
        let recon: Option<(usize, Range<usize>)> = failed
            .first()
            .and_then(|&f| want.get(f).cloned().flatten().map(|rg| (f, rg)));
        let spans: Vec<Option<Range<usize>>> = (0..g.positions())
            .map(|p| {
                view.read[p].as_ref()?;
                let mine = want.get(p).cloned().flatten();
                let other = recon.as_ref().map(|(_, rg)| rg.clone());
                hull(mine, other)
            })
            .collect();
        let out_at = |d: usize, row: usize| (d * g.rows() + row - idx0) * BLOCK_SIZE;
        if recon.is_none() {
            // Healthy: verify and deliver each disk's rows the moment they arrive.
            let mut bad: Vec<(usize, usize)> = Vec::new();
            let sink = &mut *out;
            self.read_spans_with(stripe, view, &spans, 0, false, |d, cr| {
                for row in cr.rows.clone() {
                    match cr.row_state(row) {
                        RowState::Good => sink[out_at(d, row)..out_at(d, row) + BLOCK_SIZE]
                            .copy_from_slice(cr.row(row)),
                        RowState::Bad(why) => {
                            self.note_checksum_error(d, stripe, row, &why);
                            bad.push((d, row));
                        }
                        RowState::Unwritten => bad.push((d, row)),
                    }
                }
            })
            .await?;
            if bad.is_empty() {
                return Ok(());
            }
            return self.repair_rows(stripe, &bad, view, out_at, out).await;
        }
        let (reads, _) = self.read_spans(stripe, view, &spans, 0).await?;
        // Every row's verdict once: rows wanted directly are also parity sources.
        let states: Vec<Vec<RowState>> = reads
            .iter()
            .map(|c| {
                c.as_ref()
                    .map(|c| c.rows.clone().map(|r| c.row_state(r)).collect())
                    .unwrap_or_default()
            })
            .collect();
        let state = |p: usize, row: usize| {
            let c = reads[p].as_ref().expect("state of a read chunk");
            &states[p][row - c.rows.start]
        };
        let mut bad: Vec<(usize, usize)> = Vec::new();
        for (d, w) in want.iter().enumerate() {
            let (Some(w), Some(cr)) = (w, reads[d].as_ref()) else {
                continue;
            };
            for row in w.clone() {
                match state(d, row) {
                    RowState::Good => out[out_at(d, row)..out_at(d, row) + BLOCK_SIZE]
                        .copy_from_slice(cr.row(row)),
                    RowState::Bad(why) => {
                        self.note_checksum_error(d, stripe, row, why);
                        bad.push((d, row));
                    }
                    RowState::Unwritten => bad.push((d, row)),
                }
            }
        }
        if let Some((f, rg)) = recon {
            let others: Vec<usize> = (0..g.positions()).filter(|&p| reads[p].is_some()).collect();
            let all_good = rg
                .clone()
                .all(|row| others.iter().all(|&p| *state(p, row) == RowState::Good));
            if all_good && others.len() == g.data_disks {
                let srcs: Vec<&[u8]> = others
                    .iter()
                    .map(|&p| {
                        let c = reads[p].as_ref().expect("read");
                        &c.slot.bytes()[rg.start * BLOCK_SIZE..rg.end * BLOCK_SIZE]
                    })
                    .collect();
                let at = out_at(f, rg.start);
                xor_into(&mut out[at..at + rg.len() * BLOCK_SIZE], &srcs);
                self.counters
                    .reconstructed_blocks
                    .fetch_add(rg.len() as u64, Ordering::Relaxed);
            } else {
                bad.extend(rg.map(|row| (f, row)));
            }
        }
        drop(reads);
        if bad.is_empty() {
            return Ok(());
        }
        self.repair_rows(stripe, &bad, view, out_at, out).await
    }

    /// Second pass for blocks that failed verification: read the same rows from every disk
    /// and rebuild each bad block from the others.
    async fn repair_rows(
        &self,
        stripe: u64,
        bad: &[(usize, usize)],
        view: &View,
        out_at: impl Fn(usize, usize) -> usize,
        out: &mut [u8],
    ) -> Result<(), ReadFailure> {
        let g = self.geo;
        let lo = bad.iter().map(|b| b.1).min().expect("non-empty");
        let hi = bad.iter().map(|b| b.1).max().expect("non-empty") + 1;
        let spans: Vec<Option<Range<usize>>> = (0..g.positions())
            .map(|p| view.read[p].as_ref().map(|_| lo..hi))
            .collect();
        let (reads, _) = self.read_spans(stripe, view, &spans, 0).await?;
        for &(d, row) in bad {
            let at = out_at(d, row);
            let block = &mut out[at..at + BLOCK_SIZE];
            if let Some(cr) = &reads[d] {
                if cr.row_state(row) == RowState::Good {
                    block.copy_from_slice(cr.row(row));
                    continue;
                }
            }
            let states: Vec<(usize, Option<RowState>)> = (0..g.positions())
                .filter(|&p| p != d)
                .map(|p| (p, reads[p].as_ref().map(|c| c.row_state(row))))
                .collect();
            let own_unwritten = reads[d]
                .as_ref()
                .is_none_or(|c| c.row_state(row) == RowState::Unwritten);
            if own_unwritten
                && states
                    .iter()
                    .all(|(_, s)| matches!(s, None | Some(RowState::Unwritten)))
            {
                // Never-written stripe: zeros are its content (and consistent parity).
                block.fill(0);
                continue;
            }
            let unusable: Vec<String> = states
                .iter()
                .filter(|(_, s)| *s != Some(RowState::Good))
                .map(|(p, s)| match s {
                    None => format!("disk #{p} failed"),
                    Some(s) => format!("disk #{p} row {row} {s:?}"),
                })
                .collect();
            if !unusable.is_empty() {
                return Err(ReadFailure::Fatal(Raid4Error::Unrecoverable {
                    block: stripe * g.stripe_data_blocks() as u64 + (d * g.rows() + row) as u64,
                    stripe,
                    disk: self.disk_ref(d),
                    row,
                    detail: format!("its own copy is bad and so is {}", unusable.join(", ")),
                }));
            }
            let srcs: Vec<&[u8]> = states
                .iter()
                .map(|(p, _)| reads[*p].as_ref().expect("good means read").row(row))
                .collect();
            xor_into(block, &srcs);
            self.counters
                .reconstructed_blocks
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Reads, for every position with a span, those rows plus the checksum block. An IO error
    /// fails the disk out and asks the caller to re-plan.
    pub(crate) async fn read_spans(
        &self,
        stripe: u64,
        view: &View,
        spans: &[Option<Range<usize>>],
        extra_slots: usize,
    ) -> Result<(Vec<Option<ChunkRead>>, Vec<Slot>), ReadFailure> {
        self.read_spans_with(stripe, view, spans, extra_slots, true, |_, _| {})
            .await
    }

    /// [`Group::read_spans`], calling `each` on every chunk as soon as it arrives; with
    /// `keep == false` the chunk's slot goes straight back to the pool afterwards (so the
    /// next stripe can use it) and the returned vector is empty.
    pub(crate) async fn read_spans_with<F: FnMut(usize, &ChunkRead) + Send>(
        &self,
        stripe: u64,
        view: &View,
        spans: &[Option<Range<usize>>],
        extra_slots: usize,
        keep: bool,
        mut each: F,
    ) -> Result<(Vec<Option<ChunkRead>>, Vec<Slot>), ReadFailure> {
        let g = self.geo;
        let k = spans.iter().filter(|s| s.is_some()).count();
        // One acquisition for everything (reads and extra): never wait while holding slots.
        let mut slots = self.engine.pool().acquire(k + extra_slots).await;
        let extra = slots.split_off(k);
        let base = g.chunk_offset(stripe);
        let csum_at = g.rows() * BLOCK_SIZE;
        let ios = spans.iter().enumerate().filter_map(|(p, span)| {
            let span = span.clone()?;
            let disk = view.read[p].clone().expect("spans only on readable disks");
            let slot = slots.pop().expect("one slot per span");
            let (a, b) = (span.start * BLOCK_SIZE, span.end * BLOCK_SIZE);
            let mut segs = vec![];
            if b == csum_at {
                segs.push(seg(base, a, b + BLOCK_SIZE - a));
            } else {
                segs.push(seg(base, a, b - a));
                segs.push(seg(base, csum_at, BLOCK_SIZE));
            }
            Some(async move { (p, span, self.engine.read(&disk, slot, &segs).await) })
        });
        let mut ios: FuturesUnordered<_> = ios.collect();
        let mut out: Vec<Option<ChunkRead>> = (0..g.positions()).map(|_| None).collect();
        let mut failed = Vec::new();
        while let Some((p, rows, io)) = ios.next().await {
            match (io.result, io.slot) {
                (Ok(()), Some(slot)) => {
                    let csum = csum::decode(
                        &slot.bytes()[csum_at..csum_at + BLOCK_SIZE],
                        &self.chunk_id(p, stripe),
                    );
                    let chunk = ChunkRead { slot, csum, rows };
                    each(p, &chunk);
                    if keep {
                        out[p] = Some(chunk);
                    }
                }
                (r, _) => {
                    failed.push((p, r.err().unwrap_or_else(|| io::Error::other("no buffer"))))
                }
            }
        }
        if failed.is_empty() {
            return Ok((out, extra));
        }
        drop(out);
        drop(extra);
        for (p, e) in failed {
            self.per_disk[p].read_errors.fetch_add(1, Ordering::Relaxed);
            self.fail_position(p, format!("read of stripe {stripe} failed: {e}"))
                .await;
        }
        Err(ReadFailure::Retry)
    }

    pub(crate) fn note_checksum_error(&self, position: usize, stripe: u64, row: usize, why: &str) {
        self.per_disk[position]
            .checksum_errors
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .checksum_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            disk = %self.disk_ref(position),
            stripe,
            row,
            "bad block: {why}; reconstructing from parity (run `twinfiler aggr scrub` to repair)"
        );
    }

    fn offline_now(&self) -> Raid4Error {
        let mut st = self.state.lock().expect("state");
        let reason = st
            .offline
            .get_or_insert_with(|| "two or more disks failed".into())
            .clone();
        Raid4Error::Offline {
            uuid: self.uuid,
            reason,
        }
    }

    // ---------------------------------------------------------------- failures

    /// Fails the disk at `position` out of the group (operator drill or replacement). With one
    /// failed disk the group runs DEGRADED; a second takes it OFFLINE.
    pub async fn fail_disk(&self, position: usize, reason: &str) -> Result<(), Raid4Error> {
        if position >= self.geo.positions() {
            return Err(Raid4Error::InvalidArgument(format!(
                "position {position}: the group has positions 0..={}",
                self.geo.parity()
            )));
        }
        self.fail_position(position, format!("failed by operator: {reason}"))
            .await;
        Ok(())
    }

    /// Injects (or clears, with [`Fault::None`]) an IO error on the disk at `position`.
    pub fn inject_fault(&self, position: usize, fault: Fault) {
        let st = self.state.lock().expect("state");
        if let Some(d) = st.members.get(position).and_then(|m| m.disk.as_ref()) {
            d.inject_fault(fault);
        }
    }

    /// Marks `position` failed; writes new labels unless that takes the group offline.
    pub(crate) async fn fail_position(&self, position: usize, reason: String) {
        let relabel = {
            let mut st = self.state.lock().expect("state");
            self.mark_failed(&mut st, position, reason)
        };
        if relabel {
            self.write_labels().await;
        }
    }

    /// Returns whether labels must be rewritten.
    pub(crate) fn mark_failed(&self, st: &mut State, position: usize, reason: String) -> bool {
        let m = &mut st.members[position];
        if m.state == MemberState::Failed || st.offline.is_some() {
            return false;
        }
        let path = m
            .disk
            .as_ref()
            .map(|d| d.path().display().to_string())
            .unwrap_or_default();
        tracing::error!(position, disk = %path, "disk failed out of the group: {reason}");
        let was_rebuilding = m.state == MemberState::Rebuilding;
        m.state = MemberState::Failed;
        m.reason = Some(reason);
        let unusable: Vec<usize> = (0..st.members.len())
            .filter(|&p| st.members[p].state != MemberState::Ok)
            .collect();
        if unusable.len() >= 2 && !was_rebuilding {
            let why: Vec<String> = unusable
                .iter()
                .map(|&p| {
                    let m = &st.members[p];
                    format!(
                        "disk #{p} ({}) {}",
                        m.disk
                            .as_ref()
                            .map(|d| d.path().display().to_string())
                            .unwrap_or("<missing>".into()),
                        m.reason.clone().unwrap_or_else(|| format!("{:?}", m.state))
                    )
                })
                .collect();
            let reason = format!("{} disks unusable: {}", unusable.len(), why.join("; "));
            tracing::error!(aggregate = %self.uuid, "group OFFLINE: {reason}");
            st.offline = Some(reason);
            return false;
        }
        st.generation += 1;
        true
    }

    // ---------------------------------------------------------------- labels

    pub(crate) fn label_for(&self, st: &State, role: Role, position: u32, disk: Uuid) -> Label {
        Label {
            aggregate: self.uuid,
            disk,
            generation: st.generation,
            group: 0,
            role,
            position,
            geometry: self.geo,
            created_unix_s: self.created_unix_s,
            labelled_unix_s: now_unix_s(),
            members: st.members.iter().map(|m| (m.uuid, m.state)).collect(),
        }
    }

    /// Writes the current labels to every member that takes writes and to the spares: copy A
    /// everywhere, flush, then copy B, flush — a torn update leaves one good copy per disk.
    /// A disk that fails its label write is failed out and the round repeats (bounded).
    pub(crate) async fn write_labels(&self) {
        let _serial = self.label_lock.lock().await;
        if let Err(e) = self.check_write_gate() {
            tracing::warn!("labels not written: {e}");
            return;
        }
        for _round in 0..=POSITIONS_MAX {
            let targets: Vec<(Option<usize>, Arc<Disk>, Vec<u8>)> = {
                let st = self.state.lock().expect("state");
                if st.offline.is_some() {
                    return;
                }
                let mut t = Vec::new();
                for (p, m) in st.members.iter().enumerate() {
                    if let (Some(d), true) = (&m.disk, m.state != MemberState::Failed) {
                        let role = if p == self.geo.parity() {
                            Role::Parity
                        } else {
                            Role::Data
                        };
                        t.push((
                            Some(p),
                            d.clone(),
                            self.label_for(&st, role, p as u32, m.uuid).encode(),
                        ));
                    }
                }
                for s in &st.spares {
                    t.push((
                        None,
                        s.disk.clone(),
                        self.label_for(&st, Role::Spare, POSITION_SPARE, s.uuid)
                            .encode(),
                    ));
                }
                t
            };
            let errors = self.write_label_set(&targets).await;
            if errors.is_empty() {
                return;
            }
            let mut st = self.state.lock().expect("state");
            for (i, e) in errors {
                let (pos, disk, _) = &targets[i];
                match pos {
                    Some(p) => {
                        self.per_disk[*p]
                            .write_errors
                            .fetch_add(1, Ordering::Relaxed);
                        self.mark_failed(&mut st, *p, format!("label write failed: {e}"));
                    }
                    None => {
                        tracing::error!(disk = %disk.path().display(), "spare label write failed: {e}; dropping the spare");
                        st.spares.retain(|s| !Arc::ptr_eq(&s.disk, disk));
                    }
                }
            }
        }
    }

    pub(crate) async fn write_label_set(
        &self,
        targets: &[(Option<usize>, Arc<Disk>, Vec<u8>)],
    ) -> Vec<(usize, io::Error)> {
        let mut errors: Vec<(usize, io::Error)> = Vec::new();
        for copy in LABEL_BLOCKS {
            let ios = targets
                .iter()
                .enumerate()
                .map(|(i, (_, disk, label))| async move {
                    let mut slot = self.engine.pool().acquire(1).await.pop().expect("one slot");
                    slot.bytes_mut()[..BLOCK_SIZE].copy_from_slice(label);
                    let seg = [seg(copy * BLOCK_SIZE as u64, 0, BLOCK_SIZE)];
                    let r = self.engine.write(disk, slot, &seg).await.result;
                    let r = match r {
                        Ok(()) => self.engine.flush(disk).await,
                        e => e,
                    };
                    (i, r)
                });
            for (i, r) in join_all(ios).await {
                if let Err(e) = r {
                    if !errors.iter().any(|(j, _)| *j == i) {
                        errors.push((i, e));
                    }
                }
            }
        }
        errors
    }

    // ---------------------------------------------------------------- status

    /// A snapshot of the group: state, disks, counters and progress of rebuild and scrub.
    pub fn status(&self) -> GroupStatus {
        let st = self.state.lock().expect("state");
        let rebuild = self
            .rebuild_progress
            .lock()
            .expect("progress")
            .as_ref()
            .map(|p| p.status());
        let scrub = self
            .scrub_progress
            .lock()
            .expect("progress")
            .as_ref()
            .map(|p| p.status());
        let unusable = st
            .members
            .iter()
            .filter(|m| m.state != MemberState::Ok)
            .count();
        let state = if st.offline.is_some() {
            GroupState::Offline
        } else if rebuild.is_some() {
            GroupState::Rebuilding
        } else if unusable > 0 {
            GroupState::Degraded
        } else {
            GroupState::Normal
        };
        let disks = st
            .members
            .iter()
            .enumerate()
            .map(|(p, m)| DiskStatus {
                position: p,
                role: if p == self.geo.parity() {
                    Role::Parity
                } else {
                    Role::Data
                },
                path: m.disk.as_ref().map(|d| d.path().to_path_buf()),
                uuid: m.uuid,
                state: match (m.state, m.disk.is_some()) {
                    (MemberState::Ok, _) => DiskState::Ok,
                    (MemberState::Rebuilding, _) => DiskState::Rebuilding,
                    (MemberState::Failed, _) if m.missing => DiskState::Missing,
                    (MemberState::Failed, _) => DiskState::Failed,
                },
                direct_io: m.disk.as_ref().is_some_and(|d| d.is_direct()),
                reason: m.reason.clone(),
                read_errors: self.per_disk[p].read_errors.load(Ordering::Relaxed),
                write_errors: self.per_disk[p].write_errors.load(Ordering::Relaxed),
                checksum_errors: self.per_disk[p].checksum_errors.load(Ordering::Relaxed),
            })
            .collect();
        GroupStatus {
            uuid: self.uuid,
            state,
            generation: st.generation,
            geometry: self.geo,
            disks,
            spares: st
                .spares
                .iter()
                .map(|s| SpareStatus {
                    path: s.disk.path().to_path_buf(),
                    uuid: s.uuid,
                })
                .collect(),
            counters: Counters {
                stripes_written: self.counters.stripes_written.load(Ordering::Relaxed),
                blocks_read: self.counters.blocks_read.load(Ordering::Relaxed),
                checksum_errors: self.counters.checksum_errors.load(Ordering::Relaxed),
                reconstructed_blocks: self.counters.reconstructed_blocks.load(Ordering::Relaxed),
            },
            rebuild,
            scrub,
            last_rebuild: self.last_rebuild.lock().expect("report").clone(),
            last_scrub: self.last_scrub.lock().expect("report").clone(),
            offline_reason: st.offline.clone(),
            notes: st.notes.clone(),
        }
    }
}

/// Copies a block into an IO slot with non-temporal stores: the slot goes to the device, not
/// back to this CPU, so there is no point reading its old contents into the cache first.
fn copy_streaming(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len());
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        if (dst.as_ptr() as usize).is_multiple_of(16) {
            let lanes = dst.len() / 16;
            let (d, s) = (
                dst.as_mut_ptr() as *mut __m128i,
                src.as_ptr() as *const __m128i,
            );
            for i in 0..lanes {
                // SAFETY: SSE2 is part of x86_64; i < lanes keeps both pointers in bounds;
                // dst is 16-byte aligned (checked above), src loads are unaligned.
                unsafe { _mm_stream_si128(d.add(i), _mm_loadu_si128(s.add(i))) };
            }
            let done = lanes * 16;
            dst[done..].copy_from_slice(&src[done..]);
            return;
        }
    }
    dst.copy_from_slice(src);
}

/// Orders the streaming stores before the buffers are handed to the kernel.
fn copy_streaming_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86_64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

pub(crate) fn seg(chunk_base: u64, slot_offset: usize, len: usize) -> Segment {
    Segment {
        disk_offset: chunk_base + slot_offset as u64,
        slot_offset,
        len,
    }
}

fn hull(a: Option<Range<usize>>, b: Option<Range<usize>>) -> Option<Range<usize>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.start.min(b.start)..a.end.max(b.end)),
        (a, b) => a.or(b),
    }
}

pub(crate) fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
