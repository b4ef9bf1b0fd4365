//! What `Group::status` reports, and its human-readable form.

use std::fmt;
use std::path::PathBuf;

use uuid::Uuid;

use crate::label::Role;
use crate::layout::Geometry;
use crate::progress::ProgressStatus;
use crate::rebuild::RebuildReport;
use crate::scrub::ScrubReport;

/// The group as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    /// Every disk healthy.
    Normal,
    /// One disk failed or missing: reads reconstruct from parity, no redundancy left.
    Degraded,
    /// A spare is being rebuilt into the failed position (still no redundancy).
    Rebuilding,
    /// Two or more disks unusable: all IO refused.
    Offline,
}

/// One position of the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskState {
    /// Healthy.
    Ok,
    /// Failed out (IO error or operator); its data come from parity.
    Failed,
    /// Not present at assembly.
    Missing,
    /// Being rebuilt from the other disks.
    Rebuilding,
}

/// One member disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskStatus {
    /// Position (0..N-1 data, N parity).
    pub position: usize,
    /// Data or parity.
    pub role: Role,
    /// Path, if the disk is present.
    pub path: Option<PathBuf>,
    /// Disk uuid from the label.
    pub uuid: Uuid,
    /// State.
    pub state: DiskState,
    /// Whether IO bypasses the page cache (O_DIRECT).
    pub direct_io: bool,
    /// Why the disk failed, if it did.
    pub reason: Option<String>,
    /// Read IO errors seen.
    pub read_errors: u64,
    /// Write/flush IO errors seen.
    pub write_errors: u64,
    /// Blocks that failed checksum verification.
    pub checksum_errors: u64,
}

/// A hot spare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpareStatus {
    /// Path.
    pub path: PathBuf,
    /// Disk uuid.
    pub uuid: Uuid,
}

/// Group-wide counters since assembly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Full stripes written.
    pub stripes_written: u64,
    /// Logical blocks read.
    pub blocks_read: u64,
    /// Blocks that failed checksum verification on read.
    pub checksum_errors: u64,
    /// Blocks rebuilt from parity for a read.
    pub reconstructed_blocks: u64,
}

/// Everything about a group at one instant.
#[derive(Clone, Debug)]
pub struct GroupStatus {
    /// Aggregate uuid.
    pub uuid: Uuid,
    /// Overall state.
    pub state: GroupState,
    /// Label generation.
    pub generation: u64,
    /// Shape.
    pub geometry: Geometry,
    /// Members by position.
    pub disks: Vec<DiskStatus>,
    /// Hot spares.
    pub spares: Vec<SpareStatus>,
    /// Counters.
    pub counters: Counters,
    /// Rebuild in progress.
    pub rebuild: Option<ProgressStatus>,
    /// Scrub in progress.
    pub scrub: Option<ProgressStatus>,
    /// The last finished rebuild.
    pub last_rebuild: Option<RebuildReport>,
    /// The last finished scrub.
    pub last_scrub: Option<ScrubReport>,
    /// Why the group is offline.
    pub offline_reason: Option<String>,
    /// Things assembly noticed (ignored stale disks, degraded start…).
    pub notes: Vec<String>,
}

impl fmt::Display for GroupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GroupState::Normal => "NORMAL",
            GroupState::Degraded => "DEGRADED",
            GroupState::Rebuilding => "REBUILDING",
            GroupState::Offline => "OFFLINE",
        })
    }
}

fn progress_line(f: &mut fmt::Formatter<'_>, what: &str, p: &ProgressStatus) -> fmt::Result {
    writeln!(
        f,
        "{what}: {:.1}% ({}/{} stripes), {:.1} MB/s, ETA {:.0} s",
        p.percent, p.done_stripes, p.total_stripes, p.rate_mbps, p.eta_s
    )
}

impl fmt::Display for GroupStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.geometry;
        writeln!(
            f,
            "aggregate {}  state {}  generation {}",
            self.uuid, self.state, self.generation
        )?;
        writeln!(
            f,
            "geometry: {} data + 1 parity, depth {} blocks, {} stripes, {} data blocks ({:.1} GiB)",
            g.data_disks,
            g.depth,
            g.stripe_count,
            g.total_blocks(),
            g.total_blocks() as f64 * 4096.0 / (1u64 << 30) as f64
        )?;
        for d in &self.disks {
            writeln!(
                f,
                "  #{:<2} {:<6} {:<10} {}  io_err r{}/w{} csum_err {}{}{}",
                d.position,
                format!("{:?}", d.role).to_lowercase(),
                format!("{:?}", d.state).to_uppercase(),
                d.path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or("<missing>".into()),
                d.read_errors,
                d.write_errors,
                d.checksum_errors,
                if d.direct_io || d.path.is_none() {
                    ""
                } else {
                    "  (buffered IO)"
                },
                d.reason
                    .as_ref()
                    .map(|r| format!("  — {r}"))
                    .unwrap_or_default()
            )?;
        }
        for s in &self.spares {
            writeln!(f, "  spare     {}", s.path.display())?;
        }
        let c = &self.counters;
        writeln!(
            f,
            "counters: {} stripes written, {} blocks read, {} checksum errors, {} blocks reconstructed",
            c.stripes_written, c.blocks_read, c.checksum_errors, c.reconstructed_blocks
        )?;
        if let Some(p) = &self.rebuild {
            progress_line(f, "rebuild", p)?;
        }
        if let Some(p) = &self.scrub {
            progress_line(f, "scrub", p)?;
        }
        if let Some(r) = &self.offline_reason {
            writeln!(f, "offline: {r}")?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}
