//! `cargo xtask replay FILE`: re-runs a recorded peer session (`p2pcdn-load --record FILE`)
//! through a new core and checks it produces the recorded outputs, in order. Ends with one JSON
//! line.
//!
//! The file holds JSON lines, one `peer_core::replay::Record` each: the config first, then
//! every input with its time and every output as the core gave it.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use peer_core::replay::{Record, replay};

#[derive(clap::Args)]
pub struct Args {
    /// The recording.
    file: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let f =
        std::fs::File::open(&a.file).with_context(|| format!("opening {}", a.file.display()))?;
    let mut records = Vec::new();
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", a.file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let rec: Record = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a record", a.file.display(), n + 1))?;
        records.push(rec);
    }
    let lines = records.len();
    match replay(records) {
        Ok(r) => {
            eprintln!(
                "replayed {} inputs, {} outputs matched ({lines} records)",
                r.inputs, r.outputs
            );
            println!(
                "{}",
                serde_json::json!({"ok": true, "inputs": r.inputs, "outputs": r.outputs})
            );
            Ok(())
        }
        Err(e) => {
            println!(
                "{}",
                serde_json::json!({"ok": false, "error": e.to_string()})
            );
            bail!("replay of {} diverged: {e}", a.file.display())
        }
    }
}
