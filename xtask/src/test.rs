//! `cargo xtask test`: every test, installing what they need first.

use anyhow::Result;

use crate::util::{cargo, run};

#[derive(clap::Args)]
pub struct Args {}

pub fn run_tests() -> Result<()> {
    // The IO-free crates must build for the browser.
    run(cargo().args([
        "build",
        "--target",
        "wasm32-unknown-unknown",
        "-p",
        "protocol",
        "-p",
        "peer-core",
    ]))?;
    run(cargo().args(["test", "--workspace", "--release"]))?;
    Ok(())
}

pub fn run(_args: Args) -> Result<()> {
    run_tests()
}
