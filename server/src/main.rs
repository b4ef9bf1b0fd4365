//! The `twinfiler` command: node, operator CLI and benchmarks.

mod bench;
mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "twinfiler", version, about = "An HA pair of user-space filers")]
struct Args {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, inspect and repair a RAID-4 aggregate on disk files or block devices.
    Aggr(cli::aggr::AggrArgs),
    /// Check a file system on an aggregate: every tree, checksum, link count and the free map.
    Fsck(cli::fsck::FsckArgs),
    /// Print `name value unit` lines for one subsystem.
    Bench(bench::BenchArgs),
    /// Run an HA pair of two nodes on this machine (loopback addresses, file-backed disks).
    Demo(cli::demo::DemoArgs),
    /// Run a node: serve NFS from the aggregate named in the configuration until SIGTERM.
    Node(cli::node::NodeArgs),
    /// Print the pair's status from a node's console API (--url/--token or TWINFILER_URL/TWINFILER_TOKEN).
    Status(cli::status::StatusArgs),
    /// Take a node over by its partner through the console API, following every step.
    Takeover(cli::takeover::TakeoverArgs),
    /// Give a taken-over node its identity back through the console API.
    Giveback(cli::takeover::GivebackArgs),
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_json);
    match args.command {
        Command::Aggr(a) => cli::aggr::run(a),
        Command::Fsck(a) => cli::fsck::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Demo(a) => cli::demo::run(a),
        Command::Node(a) => cli::node::run(a),
        Command::Status(a) => cli::status::run(a),
        Command::Takeover(a) => cli::takeover::run_takeover(a),
        Command::Giveback(a) => cli::takeover::run_giveback(a),
    }
}

/// Logs go to stderr so that stdout stays parseable (bench lines, status output).
fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
