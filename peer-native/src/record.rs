//! Recording one viewer's session ([`crate::PeerOptions::record`], `p2pcdn-load --record`), for
//! `cargo xtask replay FILE` or [`peer_core::replay::replay`].
//!
//! ## Format: JSON lines
//! One [`Record`] per line, written by `serde_json::to_string(&record)` (serde's external
//! tagging, variant names in snake_case):
//! * line 1: `{"config":{...}}`: the core's [`peer_core::Config`] as the viewer made it;
//! * `{"input":{"t":<µs since the viewer started>,"input":<Input>}}`: every input, in the order
//!   it was handled (`"Timeout"`, `{"SignalMessage":{...}}`, `{"RtcMessage":{"conn":3,"data":[..]}}`,
//!   ...);
//! * `{"output":<Output>}`: every output, in the order `poll_output` gave it, after the input
//!   that caused it.
//!
//! Read it back with `serde_json::from_str::<Record>(line)` per line. Byte payloads (HTTP
//! bodies, data-channel frames) are JSON arrays of numbers: a recording weighs several times
//! the media it moved.
//!
//! Records are written through a bounded buffer ([`BUFFER`]) and flushed at least every
//! [`FLUSH_EVERY`] and at the end, so a session cut short leaves a usable prefix (minus the
//! last partial line).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use peer_core::replay::{Record, Recorder};
use peer_core::{Config, Input, Output, Time};

/// Bytes buffered before they are written out.
pub const BUFFER: usize = 256 * 1024;
/// Longest a record stays in memory.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

pub struct Recording {
    rec: Recorder,
    file: BufWriter<File>,
    flushed: Instant,
    /// The first write error; nothing more is written after it.
    failed: bool,
}

impl Recording {
    /// Creates `path` and records the configuration (call before the core's first output).
    pub fn create(path: &Path, cfg: &Config) -> std::io::Result<Recording> {
        let file = BufWriter::with_capacity(BUFFER, File::create(path)?);
        Ok(Recording {
            rec: Recorder::new(cfg),
            file,
            flushed: Instant::now(),
            failed: false,
        })
    }

    pub fn input(&mut self, t: Time, input: &Input) {
        self.rec.input(t, input);
    }

    pub fn output(&mut self, output: &Output) {
        self.rec.output(output);
    }

    /// Writes what was recorded; flushes when [`FLUSH_EVERY`] has passed, or when `end`.
    pub fn write(&mut self, end: bool) {
        let records = self.rec.take();
        if self.failed {
            return;
        }
        let r = (|| -> std::io::Result<()> {
            for record in &records {
                serde_json::to_writer(&mut self.file, record)?;
                self.file.write_all(b"\n")?;
            }
            if end || self.flushed.elapsed() >= FLUSH_EVERY {
                self.flushed = Instant::now();
                self.file.flush()?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            tracing::warn!("recording stopped: {e}");
            self.failed = true;
        }
    }
}

/// Reads a recording back (a partial last line is ignored).
pub fn read(path: &Path) -> anyhow::Result<Vec<Record>> {
    let text = std::fs::read_to_string(path)?;
    let mut records = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        match serde_json::from_str(line) {
            Ok(r) => records.push(r),
            Err(_) if lines.peek().is_none() => break,
            Err(e) => anyhow::bail!("line {}: {e}", records.len() + 1),
        }
    }
    Ok(records)
}
