//! `twinfiler bench SUBSYSTEM [--quick]`: one `name value unit` line per figure on stdout.

mod fs;
mod nvlog;
mod raid4;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    subsystem: Subsystem,
    /// Smaller sizes: finishes in under 30 s on 2 cores.
    #[arg(long, global = true)]
    quick: bool,
}

#[derive(clap::Subcommand)]
enum Subsystem {
    /// Parity XOR, full-stripe writes, healthy/degraded reads and rebuild.
    Raid4,
    /// File-system operations in process, and consistency-point write rate.
    Fs,
    /// NVRAM log appends, local and mirrored over loopback.
    Nvlog,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.subsystem {
        Subsystem::Raid4 => raid4::run(args.quick),
        Subsystem::Fs => fs::run(args.quick),
        Subsystem::Nvlog => nvlog::run(args.quick),
    }
}

/// Prints one benchmark figure in the `name value unit` form that scripts parse.
pub fn report(name: &str, value: f64, unit: &str) {
    println!("{name} {value:.3} {unit}");
}
