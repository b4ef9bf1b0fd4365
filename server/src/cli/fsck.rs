//! `twinfiler fsck`: check a file system without changing it.

#[derive(clap::Args)]
pub struct FsckArgs {}

pub fn run(_args: FsckArgs) -> anyhow::Result<()> {
    anyhow::bail!("fsck: not implemented yet")
}
