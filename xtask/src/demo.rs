//! `cargo xtask demo`: builds the wasm bundle, then runs the `p2p-demo` binary of the `tests`
//! crate: origin (live `media/sample`), signaling server and a static server for `demo-site/`
//! + `dist/`, all on localhost. Prints the page URL; Ctrl-C stops it.

use anyhow::Result;

use crate::util::{self, cargo};

#[derive(clap::Args)]
pub struct Args {
    /// Port of the demo page (origin and signaling get free ports).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Play this HLS URL (any origin or CDN allowing the page by CORS) instead of the bundled
    /// live sample; the signaling server then runs its integrity service for that origin.
    #[arg(long)]
    pub src: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    // The wasm target and the pinned wasm-opt (npm), so the demo serves the same bundle as the
    // tests; no browser needed.
    crate::preflight::ensure(crate::preflight::Needs { browser: false })?;
    crate::wasm::build(true)?;
    util::run(
        cargo()
            .args(["run", "-p", "tests", "--release", "--bin", "p2p-demo", "--"])
            .arg(args.port.to_string())
            .args(args.src.iter().flat_map(|s| ["--src", s.as_str()])),
    )
}
