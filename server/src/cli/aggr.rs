//! `twinfiler aggr …`: RAID-4 aggregate administration on disks that no node holds.

#[derive(clap::Args)]
pub struct AggrArgs {}

pub fn run(_args: AggrArgs) -> anyhow::Result<()> {
    anyhow::bail!("aggr: not implemented yet")
}
