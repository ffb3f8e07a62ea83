//! `cargo xtask test`: every test, installing what they need first.

use anyhow::Result;

use crate::util::{self, cargo};

#[derive(clap::Args)]
pub struct Args {}

pub fn run_tests() -> Result<()> {
    // The IO-free crates must build for the browser.
    util::run(cargo().args([
        "build",
        "--target",
        "wasm32-unknown-unknown",
        "-p",
        "protocol",
        "-p",
        "peer-core",
    ]))?;
    util::run(cargo().args(["test", "--workspace", "--release"]))?;
    Ok(())
}

pub fn run(_args: Args) -> Result<()> {
    run_tests()
}
