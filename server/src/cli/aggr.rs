//! `twinfiler aggr …`: RAID-4 aggregate administration on disks that no node holds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::executor::block_on;
use raid4::{AssembleConfig, CreateConfig, DiskSource, Group, GroupState};

#[derive(clap::Args)]
pub struct AggrArgs {
    #[command(subcommand)]
    command: AggrCommand,
}

/// Where the aggregate's disks are.
#[derive(clap::Args)]
struct Disks {
    /// Disk files or block devices, comma-separated, in any order.
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "dir",
        conflicts_with = "dir"
    )]
    disks: Vec<PathBuf>,
    /// A directory holding the disk files (other files in it are ignored).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Assemble even with one member disk missing (the group runs DEGRADED).
    #[arg(long)]
    degraded: bool,
    /// The aggregate to assemble when the directory holds several.
    #[arg(long)]
    uuid: Option<uuid::Uuid>,
}

#[derive(clap::Subcommand)]
enum AggrCommand {
    /// Create a new aggregate: data disks first, the last disk is parity.
    Create {
        /// Member disks, comma-separated: N data disks then the parity disk.
        #[arg(
            long,
            value_delimiter = ',',
            required_unless_present = "dir",
            conflicts_with = "dir"
        )]
        disks: Vec<PathBuf>,
        /// Use every file in this directory, sorted by name (the last is parity).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Hot spares, comma-separated.
        #[arg(long, value_delimiter = ',')]
        spare: Vec<PathBuf>,
        /// Blocks per disk per stripe (data rows + 1 checksum block).
        #[arg(long, default_value_t = raid4::DEPTH_DEFAULT)]
        depth: usize,
        /// Create missing disk files with this size (MiB).
        #[arg(long)]
        size_mib: Option<u64>,
        /// Overwrite disks that already carry a twinfiler label.
        #[arg(long)]
        force: bool,
    },
    /// Show the aggregate's state, disks, counters and any rebuild/scrub progress.
    Status(Disks),
    /// Verify every block's checksum and the parity; repair what can be repaired.
    Scrub(Disks),
    /// Fail a disk out of the aggregate (drills, or before replacing it).
    FailDisk {
        #[command(flatten)]
        disks: Disks,
        /// Position of the disk (0..N-1 data, N parity), as `aggr status` shows.
        #[arg(long)]
        position: usize,
    },
    /// Rebuild the failed position onto a spare, printing progress.
    Rebuild {
        #[command(flatten)]
        disks: Disks,
        /// The disk to rebuild onto (blank, or a spare of this aggregate).
        #[arg(long)]
        spare: Option<PathBuf>,
    },
}

pub fn run(args: AggrArgs) -> anyhow::Result<()> {
    match args.command {
        AggrCommand::Create {
            disks,
            dir,
            spare,
            depth,
            size_mib,
            force,
        } => create(disks, dir, spare, depth, size_mib, force),
        AggrCommand::Status(d) => {
            let g = assemble(&d)?;
            print!("{}", g.status());
            Ok(())
        }
        AggrCommand::Scrub(d) => {
            let g = assemble(&d)?;
            let report = block_on(g.scrub())?;
            print!("{report}");
            if report.unrepairable_blocks > 0 {
                anyhow::bail!(
                    "{} blocks are unrepairable; restore the affected files from a snapshot or backup",
                    report.unrepairable_blocks
                );
            }
            Ok(())
        }
        AggrCommand::FailDisk { disks, position } => {
            let g = assemble(&disks)?;
            block_on(g.fail_disk(position, "aggr fail-disk"))?;
            print!("{}", g.status());
            Ok(())
        }
        AggrCommand::Rebuild { disks, spare } => rebuild(&disks, spare),
    }
}

fn assemble(d: &Disks) -> anyhow::Result<Group> {
    let source = match &d.dir {
        Some(dir) => DiskSource::Dir(dir.clone()),
        None => DiskSource::List(d.disks.clone()),
    };
    let mut cfg = AssembleConfig::new(source);
    cfg.allow_degraded = d.degraded;
    cfg.aggregate = d.uuid;
    Ok(Group::assemble(cfg)?)
}

fn create(
    disks: Vec<PathBuf>,
    dir: Option<PathBuf>,
    spares: Vec<PathBuf>,
    depth: usize,
    size_mib: Option<u64>,
    force: bool,
) -> anyhow::Result<()> {
    let disks = match dir {
        Some(dir) => {
            let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
                .with_context(|| format!("read {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && !spares.contains(p))
                .collect();
            v.sort();
            v
        }
        None => disks,
    };
    if let Some(mib) = size_mib {
        for p in disks.iter().chain(spares.iter()) {
            if !p.exists() {
                let f =
                    std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?;
                f.set_len(mib << 20)
                    .with_context(|| format!("size {}", p.display()))?;
            }
        }
    }
    let mut cfg = CreateConfig::new(disks);
    cfg.spares = spares;
    cfg.depth = depth;
    cfg.force = force;
    let g = Group::create(cfg)?;
    print!("{}", g.status());
    Ok(())
}

/// Progress is printed at this interval while a rebuild runs.
const PROGRESS_INTERVAL_MS: u64 = 1000;

fn rebuild(d: &Disks, spare: Option<PathBuf>) -> anyhow::Result<()> {
    let g = Arc::new(assemble(d)?);
    let worker = {
        let g = g.clone();
        std::thread::spawn(move || block_on(g.rebuild(spare.as_deref())))
    };
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(PROGRESS_INTERVAL_MS));
        if let Some(p) = g.status().rebuild {
            eprintln!(
                "rebuild {:.1}% ({}/{} stripes) {:.1} MB/s ETA {:.0} s",
                p.percent, p.done_stripes, p.total_stripes, p.rate_mbps, p.eta_s
            );
        }
    }
    let report = worker
        .join()
        .map_err(|_| anyhow::anyhow!("rebuild thread panicked"))??;
    println!(
        "rebuilt position {} onto {}: {} stripes, {:.1} MB/s, {} lost blocks, {:.1} s",
        report.position,
        report.disk.display(),
        report.stripes,
        report.rate_mbps,
        report.lost_blocks,
        report.elapsed_s
    );
    let st = g.status();
    print!("{st}");
    if st.state != GroupState::Normal {
        anyhow::bail!("the aggregate is {} after the rebuild", st.state);
    }
    Ok(())
}
