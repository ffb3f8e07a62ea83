//! `cargo xtask pack`: the npm package `p2p-cdn-hls` (the ES module build of the browser
//! peer, see [`crate::wasm::build_esm`]) staged in `<target>/npm/package/` and packed by
//! `npm pack` into `<target>/npm/`. Ends with one JSON line: `{"tarball": <absolute path>,
//! "tarball_bytes", "unpacked_bytes", "wasm_gzip_bytes", "module_gzip_bytes"}`.
//!
//! The package's own files are `peer-wasm/npm/` (package.json, README.md); its version is the
//! workspace's.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::util::root;
use crate::wasm::{gzip_len, target_dir};

/// What `npm pack` made.
pub struct Packed {
    pub tarball: PathBuf,
    pub tarball_bytes: u64,
    pub unpacked_bytes: u64,
    pub wasm_gzip_bytes: u64,
    pub module_gzip_bytes: u64,
}

impl Packed {
    /// One JSON line, `tarball` first (serde_json's maps sort their keys).
    pub fn json_line(&self) -> String {
        format!(
            "{{\"tarball\":{},\"tarball_bytes\":{},\"unpacked_bytes\":{},\"wasm_gzip_bytes\":{},\"module_gzip_bytes\":{}}}",
            serde_json::Value::from(self.tarball.to_string_lossy()),
            self.tarball_bytes,
            self.unpacked_bytes,
            self.wasm_gzip_bytes,
            self.module_gzip_bytes,
        )
    }
}

pub fn run() -> Result<()> {
    let p = pack()?;
    println!("{}", p.json_line());
    Ok(())
}

/// Builds (release wasm), stages and packs the package.
pub fn pack() -> Result<Packed> {
    let out = target_dir().join("npm");
    let stage = out.join("package");
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    std::fs::create_dir_all(&stage)?;
    crate::wasm::build_esm(&stage)?;
    let src = root().join("peer-wasm/npm");
    // The version is the workspace's. Replaced as text: a round trip through serde_json would
    // sort the keys, and the order of an `exports` entry's conditions matters (`types` first).
    let manifest = std::fs::read_to_string(src.join("package.json"))?;
    let placeholder = "\"version\": \"0.0.0\"";
    ensure!(
        manifest.matches(placeholder).count() == 1,
        "peer-wasm/npm/package.json must say {placeholder} once (xtask fills in the version)"
    );
    let manifest = manifest.replacen(
        placeholder,
        &format!("\"version\": \"{}\"", env!("CARGO_PKG_VERSION")),
        1,
    );
    serde_json::from_str::<Value>(&manifest).context("peer-wasm/npm/package.json")?;
    std::fs::write(stage.join("package.json"), manifest)?;
    std::fs::copy(src.join("README.md"), stage.join("README.md"))?;
    let listed = npm_pack(&stage, &out)?;
    let name = listed["filename"]
        .as_str()
        .context("npm pack --json gave no filename")?;
    let tarball = out.join(name);
    ensure!(tarball.exists(), "npm pack made no {}", tarball.display());
    Ok(Packed {
        tarball_bytes: std::fs::metadata(&tarball)?.len(),
        tarball,
        unpacked_bytes: listed["unpackedSize"].as_u64().unwrap_or(0),
        wasm_gzip_bytes: gzip_len(&stage.join("p2p-cdn_bg.wasm"))?,
        module_gzip_bytes: gzip_len(&stage.join("p2p-cdn.mjs"))?,
    })
}

/// `npm pack --json` of `dir` into `dest`: its description of the tarball.
fn npm_pack(dir: &Path, dest: &Path) -> Result<Value> {
    let o = Command::new("npm")
        .args(["pack", "--json", "--pack-destination"])
        .arg(dest)
        .current_dir(dir)
        .output()
        .context("running npm pack")?;
    ensure!(
        o.status.success(),
        "npm pack failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).context("npm pack --json output")?;
    Ok(v.get(0).cloned().unwrap_or(Value::Null))
}
