//! Online rebuild of the failed position onto a spare, stripe by stripe under the stripe
//! lock, while reads (which reconstruct the position until the rebuild ends) and writes
//! (which already go to the spare) continue.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::StreamExt;

use crate::csum;
use crate::disk::Disk;
use crate::error::Raid4Error;
use crate::group::{seg, Group, Member, ReadFailure, RowState};
use crate::label::MemberState;
use crate::layout::BLOCK_SIZE;
use crate::progress::Progress;
use crate::xor::xor_into;

/// What a finished rebuild did.
#[derive(Clone, Debug, PartialEq)]
pub struct RebuildReport {
    /// The rebuilt position.
    pub position: usize,
    /// The disk that now holds it.
    pub disk: PathBuf,
    /// Stripes rebuilt.
    pub stripes: u64,
    /// Bytes written to the new disk.
    pub bytes: u64,
    /// Blocks that could not be rebuilt because another disk's copy was bad too; they read
    /// back as errors, never as wrong data.
    pub lost_blocks: u64,
    /// Seconds taken.
    pub elapsed_s: f64,
    /// Bytes written per second, in MB/s (10^6).
    pub rate_mbps: f64,
}

/// Clears the progress slot however the rebuild ends.
struct ProgressGuard<'a>(&'a Group);

impl Drop for ProgressGuard<'_> {
    fn drop(&mut self) {
        *self.0.rebuild_progress.lock().expect("progress") = None;
    }
}

impl Group {
    /// Rebuilds the failed position onto `spare` (added first if given), or onto a hot spare
    /// of the group, or onto the disk an interrupted rebuild was using. Progress shows in
    /// [`Group::status`]; reads stay correct throughout.
    pub async fn rebuild(&self, spare: Option<&Path>) -> Result<RebuildReport, Raid4Error> {
        if let Some(p) = spare {
            let known = self
                .state
                .lock()
                .expect("state")
                .spares
                .iter()
                .any(|s| s.disk.path() == p);
            if !known {
                self.add_spare(p).await?;
            }
        }
        let (position, disk) = self.claim_spare(spare)?;
        self.write_labels().await;
        let progress = Arc::new(Progress::new(
            self.geo.stripe_count,
            self.geo.chunk_bytes() as u64,
        ));
        *self.rebuild_progress.lock().expect("progress") = Some(progress.clone());
        let _clear = ProgressGuard(self);
        tracing::info!(position, disk = %disk.path().display(), "rebuild started");
        let mut lost = 0u64;
        {
            let mut inflight = FuturesUnordered::new();
            let mut next = 0u64;
            loop {
                while inflight.len() < self.tuning.stripes_window(&self.geo)
                    && next < self.geo.stripe_count
                {
                    inflight.push(self.rebuild_stripe(next, position, &disk, &progress));
                    next += 1;
                }
                match inflight.next().await {
                    Some(r) => lost += r?,
                    None => break,
                }
            }
        }
        if let Err(e) = self.engine.flush(&disk).await {
            self.fail_position(position, format!("flush after rebuild failed: {e}"))
                .await;
            return Err(self.view().err().unwrap_or(Raid4Error::State(format!(
                "rebuild target {} failed: {e}; give another spare",
                disk.path().display()
            ))));
        }
        {
            let mut st = self.state.lock().expect("state");
            let m = &mut st.members[position];
            if m.state != MemberState::Rebuilding
                || !m.disk.as_ref().is_some_and(|d| Arc::ptr_eq(d, &disk))
            {
                return Err(Raid4Error::State(
                    "the rebuild target failed during the rebuild; give another spare".into(),
                ));
            }
            m.state = MemberState::Ok;
            m.reason = None;
            st.generation += 1;
        }
        self.write_labels().await;
        let p = progress.status();
        let report = RebuildReport {
            position,
            disk: disk.path().to_path_buf(),
            stripes: self.geo.stripe_count,
            bytes: self.geo.stripe_count * self.geo.chunk_bytes() as u64,
            lost_blocks: lost,
            elapsed_s: p.elapsed_s,
            rate_mbps: p.rate_mbps,
        };
        tracing::info!(?report, "rebuild finished");
        *self.last_rebuild.lock().expect("report") = Some(report.clone());
        Ok(report)
    }

    /// Picks the position to rebuild and the disk to rebuild it on; marks it REBUILDING.
    fn claim_spare(&self, spare: Option<&Path>) -> Result<(usize, Arc<Disk>), Raid4Error> {
        let mut st = self.state.lock().expect("state");
        if let Some(r) = &st.offline {
            return Err(Raid4Error::Offline {
                uuid: self.uuid,
                reason: r.clone(),
            });
        }
        if self.rebuild_progress.lock().expect("progress").is_some() {
            return Err(Raid4Error::State(
                "a rebuild is already running; watch `twinfiler aggr status`".into(),
            ));
        }
        let bad: Vec<usize> = (0..st.members.len())
            .filter(|&p| st.members[p].state != MemberState::Ok)
            .collect();
        let Some(&position) = bad.first() else {
            return Err(Raid4Error::State(
                "no failed disk: nothing to rebuild".into(),
            ));
        };
        assert_eq!(bad.len(), 1, "more than one unusable disk means offline");
        let m = &st.members[position];
        if spare.is_none() && m.state == MemberState::Rebuilding {
            if let Some(d) = &m.disk {
                return Ok((position, d.clone()));
            }
        }
        let idx = match spare {
            Some(p) => st.spares.iter().position(|s| s.disk.path() == p),
            None => (!st.spares.is_empty()).then_some(0),
        };
        let Some(idx) = idx else {
            return Err(Raid4Error::State(format!(
                "no spare disk to rebuild position {position} onto: give one with `twinfiler aggr rebuild --spare PATH`"
            )));
        };
        let s = st.spares.remove(idx);
        let disk = s.disk.clone();
        st.members[position] = Member {
            disk: Some(s.disk),
            missing: false,
            uuid: s.uuid,
            state: MemberState::Rebuilding,
            reason: None,
        };
        st.generation += 1;
        Ok((position, disk))
    }

    async fn rebuild_stripe(
        &self,
        stripe: u64,
        position: usize,
        target: &Arc<Disk>,
        progress: &Progress,
    ) -> Result<u64, Raid4Error> {
        let g = self.geo;
        let _lock = self.stripes.lock(stripe).await;
        let view = self.view()?;
        if !view.write[position]
            .as_ref()
            .is_some_and(|d| Arc::ptr_eq(d, target))
        {
            return Err(Raid4Error::State(
                "the rebuild target failed; give another spare".into(),
            ));
        }
        let spans: Vec<_> = (0..g.positions())
            .map(|p| (p != position).then_some(0..g.rows()))
            .collect();
        if (0..g.positions()).any(|p| p != position && view.read[p].is_none()) {
            return Err(self
                .view()
                .err()
                .unwrap_or(Raid4Error::State("a second disk failed".into())));
        }
        let (reads, mut extra) = match self.read_spans(stripe, &view, &spans, 1).await {
            Ok(r) => r,
            Err(ReadFailure::Fatal(e)) => return Err(e),
            Err(ReadFailure::Retry) => {
                return Err(self
                    .view()
                    .err()
                    .unwrap_or(Raid4Error::State("a disk failed during rebuild".into())))
            }
        };
        let mut out = extra.pop().expect("one extra slot");
        let others: Vec<&crate::group::ChunkRead> = reads.iter().flatten().collect();
        let cdb = g.chunk_data_bytes();
        let mut lost = 0u64;
        let buf = out.bytes_mut();
        if others.iter().all(|c| c.csum == csum::CsumState::Unwritten) {
            buf.fill(0);
        } else {
            let stamp = majority_stamp(&others);
            let srcs: Vec<&[u8]> = others.iter().map(|c| &c.slot.bytes()[..cdb]).collect();
            xor_into(&mut buf[..cdb], &srcs);
            let mut crcs = csum::row_crcs(&buf[..cdb]);
            for (r, crc) in crcs.iter_mut().enumerate() {
                if others.iter().any(|c| c.row_state(r) != RowState::Good) {
                    // Poison the checksum: the block reads back as an error, never as garbage.
                    *crc = !*crc;
                    lost += 1;
                    tracing::error!(
                        stripe,
                        row = r,
                        position,
                        "block lost during rebuild: another disk's copy is bad too"
                    );
                }
            }
            csum::encode(
                &mut buf[cdb..cdb + BLOCK_SIZE],
                &self.chunk_id(position, stripe),
                stamp,
                &crcs,
            );
        }
        drop(reads);
        self.check_write_gate()?;
        let done = self
            .engine
            .write(
                target,
                out,
                &[seg(g.chunk_offset(stripe), 0, g.chunk_bytes())],
            )
            .await;
        if let Err(e) = done.result {
            self.per_disk[position]
                .write_errors
                .fetch_add(1, Ordering::Relaxed);
            self.fail_position(position, format!("rebuild write failed: {e}"))
                .await;
            return Err(Raid4Error::State(format!(
                "rebuild target {} failed: {e}; give another spare",
                target.path().display()
            )));
        }
        progress.step();
        Ok(lost)
    }
}

/// The write stamp most valid chunks of a stripe carry (ties: the larger).
pub(crate) fn majority_stamp(chunks: &[&crate::group::ChunkRead]) -> u64 {
    let mut stamps: Vec<u64> = chunks
        .iter()
        .filter_map(|c| match &c.csum {
            csum::CsumState::Valid(b) => Some(b.write_stamp),
            _ => None,
        })
        .collect();
    stamps.sort_unstable();
    let mut best = (0usize, 0u64);
    let mut i = 0;
    while i < stamps.len() {
        let j = stamps[i..].iter().take_while(|&&x| x == stamps[i]).count();
        if j >= best.0 {
            best = (j, stamps[i]);
        }
        i += j;
    }
    best.1
}
