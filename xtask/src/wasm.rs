//! Not built yet (issue 5).

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    bail!("not built yet: see issue 5")
}

pub fn bundle_size() -> Result<()> {
    bail!("not built yet: see issue 5")
}
