//! `twinfiler node --config node.toml`: runs a node until SIGINT or SIGTERM, then shuts it
//! down cleanly (stop serving, final CP, release the log).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use twinfiler::config::NodeConfig;
use twinfiler::node::Node;

/// Worker threads of the node's runtime: the machine's cores, at least two (the file
/// system blocks runtime threads on disk IO inside `block_in_place`).
const WORKER_THREADS_MIN: usize = 2;

#[derive(clap::Args)]
pub struct NodeArgs {
    /// The node's configuration file (see server/node.example.toml).
    #[arg(long)]
    config: PathBuf,
    /// Check the configuration and exit without starting.
    #[arg(long)]
    check: bool,
}

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let config = NodeConfig::load(&args.config)?;
    if args.check {
        println!("{}: configuration is valid", args.config.display());
        return Ok(());
    }
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(WORKER_THREADS_MIN)
        .max(WORKER_THREADS_MIN);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("twinfiler-node")
        .enable_all()
        .build()
        .context("start the async runtime")?
        .block_on(serve(config))
}

/// How often a node in a pair looks whether its own identity serves yet (for the line).
const SERVING_POLL_MS: u64 = 20;

async fn serve(config: NodeConfig) -> anyhow::Result<()> {
    // Signal handlers first: a SIGTERM during a long start still ends in a clean shutdown.
    let mut sigterm = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    let name = config.name.clone();
    let node = Node::start(config)
        .await
        .with_context(|| format!("node {name} failed to start"))?;
    // Tests and scripts wait for this line on stdout (and read the bound ports from it). In
    // a pair the own identity serves once the takeover machine says so (or never, while the
    // partner holds it): the line comes when it does.
    let mut announced = false;
    let mut poll = tokio::time::interval(Duration::from_millis(SERVING_POLL_MS));
    let which = loop {
        if !announced {
            if let Some(l) = node.try_listeners() {
                println!(
                    "twinfiler node {name} serving portmap={} mount={} nfs={}",
                    l.portmap_tcp, l.mount_tcp, l.nfs_tcp
                );
                announced = true;
            }
        }
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = poll.tick(), if !announced => {}
        }
    };
    tracing::info!(signal = which, "stopping");
    node.shutdown()
        .await
        .with_context(|| format!("node {name}: shutdown"))?;
    println!("twinfiler node {name} stopped cleanly");
    Ok(())
}
