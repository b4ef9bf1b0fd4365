//! `twinfiler bench SUBSYSTEM [--quick]`: one `name value unit` line per figure on stdout.

use std::path::PathBuf;

mod fs;
mod nfs;
mod nvlog;
mod raid4;
mod takeover;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    subsystem: Subsystem,
    /// Smaller sizes: finishes in under 30 s on 2 cores.
    #[arg(long, global = true)]
    quick: bool,
    /// Where the benchmark's disk files go (removed afterwards): a file system that takes
    /// O_DIRECT, as the disks of a node would be — tmpfs measures memory, not disks.
    #[arg(long, global = true, default_value = "/var/tmp/twinfiler-bench")]
    dir: PathBuf,
}

#[derive(clap::Subcommand)]
enum Subsystem {
    /// Parity XOR, full-stripe writes, healthy/degraded reads and rebuild.
    Raid4,
    /// File-system operations in process, and consistency-point write rate.
    Fs,
    /// NVRAM log appends, local and mirrored over loopback.
    Nvlog,
    /// NFSv3 over loopback: a node with a mirroring partner (or --server), our client.
    Nfs(nfs::NfsArgs),
    /// HA pair: client-visible pauses of graceful, forced and hard takeovers and givebacks.
    Takeover(takeover::TakeoverArgs),
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.subsystem {
        Subsystem::Raid4 => raid4::run(args.quick, &args.dir),
        Subsystem::Fs => fs::run(args.quick, &args.dir),
        Subsystem::Nvlog => nvlog::run(args.quick),
        Subsystem::Nfs(a) => nfs::run(a, args.quick, &args.dir),
        Subsystem::Takeover(a) => takeover::run(a, args.quick, &args.dir),
    }
}

/// Prints one benchmark figure in the `name value unit` form that scripts parse.
pub fn report(name: &str, value: f64, unit: &str) {
    println!("{name} {value:.3} {unit}");
}
