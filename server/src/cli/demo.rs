//! `twinfiler demo`: the local demo.

#[derive(clap::Args)]
pub struct DemoArgs {}

pub fn run(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("demo: not implemented yet")
}
