//! `twinfiler bench nvlog`.

pub fn run(_quick: bool) -> anyhow::Result<()> {
    anyhow::bail!("bench nvlog: not implemented yet")
}
