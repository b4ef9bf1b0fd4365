//! `twinfiler fsck`: check a file system without changing it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use raid4::{AssembleConfig, DiskSource, Group};
use wafl::{FileStore, StripeStore};

#[derive(clap::Args)]
pub struct FsckArgs {
    /// The aggregate's disk files or block devices, comma-separated, in any order.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["dir", "image"])]
    disks: Vec<PathBuf>,
    /// A directory holding the aggregate's disk files.
    #[arg(long, conflicts_with = "image")]
    dir: Option<PathBuf>,
    /// Check even with one member disk missing (reads reconstruct from parity).
    #[arg(long)]
    degraded: bool,
    /// The aggregate to check when the directory holds several.
    #[arg(long)]
    uuid: Option<uuid::Uuid>,
    /// A file-backed image instead of an aggregate (as tests and benchmarks make).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Data blocks per stripe of `--image`.
    #[arg(long, default_value_t = 8)]
    stripe_data_blocks: usize,
}

pub fn run(args: FsckArgs) -> anyhow::Result<()> {
    let store: Arc<dyn StripeStore> = if let Some(image) = &args.image {
        Arc::new(
            FileStore::open(image, args.stripe_data_blocks)
                .with_context(|| format!("open {}", image.display()))?,
        )
    } else {
        let source = match (&args.dir, args.disks.is_empty()) {
            (Some(d), _) => DiskSource::Dir(d.clone()),
            (None, false) => DiskSource::List(args.disks.clone()),
            (None, true) => anyhow::bail!("give --disks, --dir or --image"),
        };
        let mut cfg = AssembleConfig::new(source);
        cfg.allow_degraded = args.degraded;
        cfg.aggregate = args.uuid;
        Arc::new(Group::assemble(cfg).context("assemble the aggregate")?)
    };
    let report = wafl::fsck::check(store);
    print!("{report}");
    if !report.is_clean() {
        anyhow::bail!(
            "fsck found {} errors; nothing was changed",
            report.errors.len() as u64 + report.errors_not_listed
        );
    }
    Ok(())
}
