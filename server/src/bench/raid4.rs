//! `twinfiler bench raid4`.

pub fn run(_quick: bool) -> anyhow::Result<()> {
    anyhow::bail!("bench raid4: not implemented yet")
}
