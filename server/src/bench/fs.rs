//! `twinfiler bench fs`.

pub fn run(_quick: bool) -> anyhow::Result<()> {
    anyhow::bail!("bench fs: not implemented yet")
}
