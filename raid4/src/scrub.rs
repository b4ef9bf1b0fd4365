//! Scrub: read every stripe from every disk, verify each block's checksum, the write stamps
//! and the parity, repair what one redundancy allows, and report what was found and done.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures::stream::FuturesUnordered;
use futures::StreamExt;

use crate::csum::{self, CsumState};
use crate::error::Raid4Error;
use crate::group::{seg, ChunkRead, Group, ReadFailure, RowState};
use crate::layout::BLOCK_SIZE;
use crate::progress::Progress;
use crate::rebuild::majority_stamp;
use crate::xor::xor_into;

/// Damage lines kept in a report (the counters count everything).
pub const DAMAGE_LINES_MAX: usize = 100;

/// What a scrub found and did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScrubReport {
    /// Stripes read and verified.
    pub stripes_checked: u64,
    /// Stripes never written (all checksum blocks zero), skipped.
    pub stripes_unwritten: u64,
    /// Data and parity blocks verified.
    pub blocks_checked: u64,
    /// Blocks whose checksum failed (including every block of a chunk with a bad checksum
    /// block).
    pub checksum_errors: u64,
    /// Chunks whose write stamp disagreed with the rest of their stripe (lost writes).
    pub stale_chunks: u64,
    /// Rows whose blocks all verified but whose parity did not match.
    pub parity_mismatches: u64,
    /// Blocks rewritten with correct contents.
    pub repaired_blocks: u64,
    /// Blocks that could not be repaired (two bad copies in one row).
    pub unrepairable_blocks: u64,
    /// What was found where, and what was done (first [`DAMAGE_LINES_MAX`]).
    pub damage: Vec<String>,
    /// Seconds taken.
    pub elapsed_s: f64,
}

impl ScrubReport {
    fn note(&mut self, line: String) {
        if self.damage.len() < DAMAGE_LINES_MAX {
            self.damage.push(line);
        }
    }

    fn merge(&mut self, o: ScrubReport) {
        self.stripes_checked += o.stripes_checked;
        self.stripes_unwritten += o.stripes_unwritten;
        self.blocks_checked += o.blocks_checked;
        self.checksum_errors += o.checksum_errors;
        self.stale_chunks += o.stale_chunks;
        self.parity_mismatches += o.parity_mismatches;
        self.repaired_blocks += o.repaired_blocks;
        self.unrepairable_blocks += o.unrepairable_blocks;
        for d in o.damage {
            self.note(d);
        }
    }
}

impl std::fmt::Display for ScrubReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "scrub: {} stripes checked ({} never written), {} blocks verified in {:.1} s",
            self.stripes_checked, self.stripes_unwritten, self.blocks_checked, self.elapsed_s
        )?;
        writeln!(
            f,
            "found: {} checksum errors, {} stale chunks, {} parity mismatches; repaired {} blocks; {} unrepairable",
            self.checksum_errors, self.stale_chunks, self.parity_mismatches, self.repaired_blocks, self.unrepairable_blocks
        )?;
        for d in &self.damage {
            writeln!(f, "  {d}")?;
        }
        Ok(())
    }
}

struct ProgressGuard<'a>(&'a Group);

impl Drop for ProgressGuard<'_> {
    fn drop(&mut self) {
        *self.0.scrub_progress.lock().expect("progress") = None;
    }
}

impl Group {
    /// Scrubs the whole group. Needs every disk healthy (a degraded group has nothing to
    /// check parity against: rebuild first).
    pub async fn scrub(&self) -> Result<ScrubReport, Raid4Error> {
        {
            let view = self.view()?;
            if let Some(p) = view.read.iter().position(|d| d.is_none()) {
                return Err(Raid4Error::State(format!(
                    "scrub needs every disk healthy, but disk #{p} is failed or rebuilding: rebuild first"
                )));
            }
            let mut slot = self.scrub_progress.lock().expect("progress");
            if slot.is_some() {
                return Err(Raid4Error::State("a scrub is already running".into()));
            }
            *slot = Some(Arc::new(Progress::new(
                self.geo.stripe_count,
                (self.geo.chunk_bytes() * self.geo.positions()) as u64,
            )));
        }
        let _clear = ProgressGuard(self);
        let progress = self
            .scrub_progress
            .lock()
            .expect("progress")
            .clone()
            .expect("set above");
        let report = Mutex::new(ScrubReport::default());
        {
            let mut inflight = FuturesUnordered::new();
            let mut next = 0u64;
            loop {
                while inflight.len() < self.tuning.stripes_window(&self.geo)
                    && next < self.geo.stripe_count
                {
                    inflight.push(self.scrub_stripe(next, &progress));
                    next += 1;
                }
                match inflight.next().await {
                    Some(r) => report.lock().expect("report").merge(r?),
                    None => break,
                }
            }
        }
        let mut report = report.into_inner().expect("report");
        report.elapsed_s = progress.status().elapsed_s;
        tracing::info!(
            checksum_errors = report.checksum_errors,
            repaired = report.repaired_blocks,
            unrepairable = report.unrepairable_blocks,
            "scrub finished"
        );
        *self.last_scrub.lock().expect("report") = Some(report.clone());
        Ok(report)
    }

    async fn scrub_stripe(
        &self,
        stripe: u64,
        progress: &Progress,
    ) -> Result<ScrubReport, Raid4Error> {
        let g = self.geo;
        let mut rep = ScrubReport::default();
        let _lock = self.stripes.lock(stripe).await;
        let view = self.view()?;
        let spans: Vec<_> = (0..g.positions())
            .map(|p| view.read[p].as_ref().map(|_| 0..g.rows()))
            .collect();
        if spans.iter().any(|s| s.is_none()) {
            return Err(Raid4Error::State(
                "a disk failed during the scrub: rebuild, then scrub again".into(),
            ));
        }
        let (mut reads, _) = match self.read_spans(stripe, &view, &spans, 0).await {
            Ok(r) => r,
            Err(ReadFailure::Fatal(e)) => return Err(e),
            Err(ReadFailure::Retry) => {
                return Err(self.view().err().unwrap_or(Raid4Error::State(
                    "a disk failed during the scrub: rebuild, then scrub again".into(),
                )))
            }
        };
        progress.step();
        let chunks: Vec<&ChunkRead> = reads.iter().flatten().collect();
        if chunks.iter().all(|c| c.csum == CsumState::Unwritten) {
            rep.stripes_unwritten = 1;
            return Ok(rep);
        }
        rep.stripes_checked = 1;
        rep.blocks_checked = (g.positions() * g.rows()) as u64;
        let stamp = majority_stamp(&chunks);
        // Whole chunks in doubt: bad checksum block, never written, or a lost write.
        let chunk_bad: Vec<Option<String>> = chunks
            .iter()
            .map(|c| match &c.csum {
                CsumState::Valid(b) if b.write_stamp == stamp => None,
                CsumState::Valid(_) => {
                    Some("stale chunk (write stamp differs: lost write)".to_string())
                }
                CsumState::Unwritten => Some("chunk never written".to_string()),
                CsumState::Bad(why) => Some(why.clone()),
            })
            .collect();
        for (p, why) in chunk_bad.iter().enumerate() {
            if let Some(why) = why {
                if why.starts_with("stale") {
                    rep.stale_chunks += 1;
                }
                rep.note(format!("stripe {stripe} disk #{p}: {why}"));
            }
        }
        let row_bad =
            |p: usize, r: usize| chunk_bad[p].is_some() || chunks[p].row_state(r) != RowState::Good;
        let mut fix: Vec<Vec<usize>> = vec![Vec::new(); g.positions()];
        let mut lost: Vec<Vec<usize>> = vec![Vec::new(); g.positions()];
        for r in 0..g.rows() {
            let bad: Vec<usize> = (0..g.positions()).filter(|&p| row_bad(p, r)).collect();
            rep.checksum_errors += bad.len() as u64;
            match bad.len() {
                0 => {
                    let mut x = vec![0u8; BLOCK_SIZE];
                    let srcs: Vec<&[u8]> =
                        chunks[..g.data_disks].iter().map(|c| c.row(r)).collect();
                    xor_into(&mut x, &srcs);
                    if x != chunks[g.parity()].row(r) {
                        rep.parity_mismatches += 1;
                        rep.note(format!("stripe {stripe} row {r}: parity mismatch with every block verified; parity recomputed"));
                        fix[g.parity()].push(r);
                    }
                }
                1 => {
                    let p = bad[0];
                    if chunk_bad[p].is_none() {
                        rep.note(format!("stripe {stripe} disk #{p} row {r}: checksum mismatch; reconstructed from parity"));
                    }
                    fix[p].push(r);
                }
                _ => {
                    rep.unrepairable_blocks += bad.len() as u64;
                    rep.note(format!(
                        "stripe {stripe} row {r}: disks {bad:?} all bad; UNREPAIRABLE"
                    ));
                    for p in bad {
                        lost[p].push(r);
                    }
                }
            }
        }
        drop(chunks);
        for p in 0..g.positions() {
            if fix[p].is_empty() && chunk_bad[p].is_none() {
                continue;
            }
            let mut mine = reads[p].take().expect("every position was read");
            {
                let others: Vec<&ChunkRead> = reads.iter().flatten().collect();
                let buf = mine.slot.bytes_mut();
                for &r in &fix[p] {
                    let srcs: Vec<&[u8]> = others.iter().map(|c| c.row(r)).collect();
                    xor_into(&mut buf[r * BLOCK_SIZE..(r + 1) * BLOCK_SIZE], &srcs);
                }
            }
            let cdb = g.chunk_data_bytes();
            let buf = mine.slot.bytes_mut();
            let mut crcs = csum::row_crcs(&buf[..cdb]);
            for &r in &lost[p] {
                crcs[r] = !crcs[r];
            }
            csum::encode(
                &mut buf[cdb..cdb + BLOCK_SIZE],
                &self.chunk_id(p, stripe),
                stamp,
                &crcs,
            );
            let disk = view.write[p].clone().expect("readable implies writable");
            self.check_write_gate()?;
            let done = self
                .engine
                .write(
                    &disk,
                    mine.slot,
                    &[seg(g.chunk_offset(stripe), 0, g.chunk_bytes())],
                )
                .await;
            if let Err(e) = done.result {
                self.per_disk[p]
                    .write_errors
                    .fetch_add(1, Ordering::Relaxed);
                self.fail_position(p, format!("scrub repair write failed: {e}"))
                    .await;
                return Err(Raid4Error::State(format!(
                    "disk #{p} failed while scrub repaired stripe {stripe}: rebuild, then scrub again"
                )));
            }
            rep.repaired_blocks += fix[p].len() as u64;
        }
        Ok(rep)
    }
}
