//! The npm package in a site built with a bundler, end to end.
//!
//! `cargo xtask pack` (or the tarball `P2P_CDN_TARBALL` names: `cargo xtask test` packs before
//! running the tests), then a scratch app in a temp dir: `npm install` of the tarball and
//! hls.js (pinned), `tsc` type-checks the app (`tests/package-app/app.ts`) against the
//! package's types, and `script-tag.ts` against the script-tag build's (`dist/p2p-cdn.d.ts`;
//! their `@ts-expect-error` lines prove the events are typed, not `any`),
//! esbuild (the repo's pinned devDependency) bundles it, and three headless Chromium pages of
//! the bundle play the harness's live stream (origin + signaling in-process) in one swarm:
//!
//! * `a`: the wasm found next to the bundle (`import.meta.url`), a site `fLoader` (P2P must
//!   wrap it: HTTP loads go through it), `debug: true` (console.debug lines), a listener
//!   removed with `off` after its first event;
//! * `b`: the wasm at an explicit `wasmUrl`, `upload: false` (download only: must upload
//!   nothing), `cacheBytes` 4 MiB;
//! * `c`: P2P turned off with `setP2P(false)` from 12 s to 20 s (no P2P fragment, no peer in
//!   that window) and on again (P2P bytes after).
//!
//! On every page the `chunk` (from peers) and `upload` events add up to the peer's counters.
//!
//! Skipped (with a message) only when `/usr/bin/chromium` is missing and `CI` is unset.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use test_support::browser::{self, Chromium, ChromiumOptions, PageReport, Reports, enc};
use test_support::harness::{self, root};

const CHROMIUM: &str = "/usr/bin/chromium";
/// hls.js as the demo site vendors it (and the root package.json pins for this test's cache).
const HLS_JS: &str = "hls.js@1.6.15";
/// How long the pages play after the last one opened.
const PLAY_SECS: u64 = 34;

/// Runs `cmd`, failing with its output when it fails.
fn run(cmd: &mut Command) -> Result<String> {
    let o = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !o.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The package tarball: `P2P_CDN_TARBALL`, else `cargo xtask pack` (its last line is JSON).
fn tarball() -> Result<PathBuf> {
    if let Some(t) = std::env::var_os("P2P_CDN_TARBALL") {
        return Ok(PathBuf::from(t));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = run(Command::new(cargo).current_dir(root()).args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "xtask",
        "--",
        "pack",
    ]))?;
    let line = out
        .lines()
        .last()
        .context("cargo xtask pack printed nothing")?;
    let v: Value = serde_json::from_str(line).context("cargo xtask pack's JSON line")?;
    let t = v["tarball"]
        .as_str()
        .context("no tarball in the JSON line")?;
    Ok(PathBuf::from(t))
}

/// The scratch app built into `<dir>/www`: installed, type-checked, bundled, the wasm copied
/// where the pages look for it.
fn build_app(dir: &Path, tarball: &Path) -> Result<PathBuf> {
    let bin = root().join("node_modules/.bin");
    for tool in ["esbuild", "tsc"] {
        ensure!(
            bin.join(tool).exists(),
            "{} missing: run `npm ci` in the repo (cargo xtask test does)",
            bin.join(tool).display()
        );
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("package.json"),
        r#"{"private": true, "type": "module"}"#,
    )?;
    let app = root().join("tests/package-app");
    for f in ["app.ts", "script-tag.ts", "index.html", "tsconfig.json"] {
        std::fs::copy(app.join(f), dir.join(f)).with_context(|| format!("copying {f}"))?;
    }
    // The script-tag build's types, checked beside the package's.
    let dts = root().join("dist/p2p-cdn.d.ts");
    std::fs::copy(&dts, dir.join("p2p-cdn.d.ts"))
        .with_context(|| format!("{} (run `cargo xtask wasm`)", dts.display()))?;
    let t = Instant::now();
    run(Command::new("npm")
        .current_dir(dir)
        .args(["install", "--no-audit", "--no-fund", "--prefer-offline"])
        .arg(tarball)
        .arg(HLS_JS))?;
    eprintln!("npm install: {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    run(Command::new(bin.join("tsc"))
        .current_dir(dir)
        .args(["-p", "tsconfig.json"]))?;
    eprintln!("tsc: {:.1} s", t.elapsed().as_secs_f64());
    let www = dir.join("www");
    std::fs::create_dir_all(www.join("alt"))?;
    run(Command::new(bin.join("esbuild")).current_dir(dir).args([
        "app.ts",
        "--bundle",
        "--format=esm",
        "--minify",
        "--log-level=warning",
        "--outfile=www/app.js",
    ]))?;
    std::fs::copy(dir.join("index.html"), www.join("index.html"))?;
    // Page `a` finds the wasm next to the bundle (`import.meta.url`), page `b` at `wasmUrl`.
    let wasm = dir.join("node_modules/p2p-cdn-hls/p2p-cdn_bg.wasm");
    std::fs::copy(&wasm, www.join("p2p-cdn_bg.wasm")).context("the package has no wasm")?;
    std::fs::copy(&wasm, www.join("alt/engine.wasm"))?;
    Ok(www)
}

fn launch(id: &str, url: &str) -> Result<Chromium> {
    let opts = ChromiumOptions {
        binary: CHROMIUM.into(),
        deadline: Duration::from_secs(300),
        log: Some(std::env::temp_dir().join(format!("p2p-cdn-package-{id}.log"))),
        ..ChromiumOptions::default()
    };
    Chromium::launch(&opts, url).context("starting chromium")
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut v = v;
    for k in path {
        v = &v[*k];
    }
    v.as_f64().unwrap_or(0.0)
}

async fn play(www: PathBuf) -> Result<std::collections::HashMap<String, Value>> {
    let env = harness::start(0).await?;
    let reports = Reports::default();
    let web = browser::serve_pages(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        vec![www],
        reports.clone(),
    )
    .await?;
    let src = format!("http://{}/live/sample/index.m3u8", env.origin);
    let signal = format!("ws://{}/ws", env.signal);
    let ids = ["a", "b", "c"];
    let mut pages = Vec::new();
    for id in ids {
        let url = format!(
            "http://{web}/index.html?src={}&signal={}&mode={id}&id={id}",
            enc(&src),
            enc(&signal)
        );
        pages.push(launch(id, &url)?);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(PLAY_SECS) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let r = reports.lock().map(|r| r.clone()).unwrap_or_default();
        let mut line = format!("t={:>3}s", start.elapsed().as_secs());
        for id in ids {
            if let Some(v) = r.get(id) {
                line += &format!(
                    " | {id} ct={:.0} p2p={}k http={}k up={}k peers={} site={} dbg={}",
                    num(v, &["currentTime"]),
                    num(v, &["stats", "deliveredP2pBytes"]) as u64 / 1000,
                    num(v, &["stats", "deliveredHttpBytes"]) as u64 / 1000,
                    num(v, &["stats", "uploadedBytes"]) as u64 / 1000,
                    num(v, &["stats", "peers"]),
                    num(v, &["siteLoads"]),
                    num(v, &["debugLines"]),
                );
            }
        }
        eprintln!("{line}");
    }
    // One more report round, then read.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = reports.lock().map(|r| r.clone()).unwrap_or_default();
    drop(pages);
    Ok(r)
}

#[test]
fn npm_package_plays_p2p_in_a_bundled_app() -> Result<()> {
    if !test_support::gate::chromium_available(CHROMIUM) {
        return Ok(());
    }
    let t0 = Instant::now();
    let tarball = tarball()?;
    eprintln!(
        "tarball {} ({:.1} s)",
        tarball.display(),
        t0.elapsed().as_secs_f64()
    );
    let dir = std::env::temp_dir().join(format!("p2p-cdn-package-app-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let www = build_app(&dir, &tarball)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let reports = rt.block_on(play(www))?;
    let _ = std::fs::remove_dir_all(&dir);
    let page = |id: &str| -> Result<(PageReport, &Value)> {
        let v = reports
            .get(id)
            .with_context(|| format!("page {id} never reported"))?;
        Ok((PageReport::parse(id, v), v))
    };
    for id in ["a", "b", "c"] {
        let (p, v) = page(id)?;
        eprintln!("{id}: {p:?} {}", v["offWindow"]);
        ensure!(
            p.started && p.current_time > 15.0,
            "{id}: did not play ({p:?})"
        );
        ensure!(
            p.fatal.is_empty(),
            "{id}: fatal hls.js errors {:?}",
            p.fatal
        );
        ensure!(p.errors.is_empty(), "{id}: page errors {:?}", p.errors);
        ensure!(p.delivered_p2p > 0, "{id}: no P2P bytes delivered");
        ensure!(
            p.integrity_failures == 0 && p.banned.is_empty(),
            "{id}: integrity failures or bans from honest peers ({p:?})"
        );
        // `chunk` and `upload` events add up to the counters (same report, same tick).
        ensure!(
            num(v, &["chunkP2pBytes"]) as u64 == p.p2p_bytes,
            "{id}: chunk events from peers add up to {} bytes, stats say {}",
            num(v, &["chunkP2pBytes"]),
            p.p2p_bytes
        );
        ensure!(
            num(v, &["uploadEventBytes"]) as u64 == p.uploaded,
            "{id}: upload events add up to {} bytes, stats say {}",
            num(v, &["uploadEventBytes"]),
            p.uploaded
        );
        ensure!(
            num(v, &["chunkHttpBytes"]) > 0.0,
            "{id}: no chunk event from the origin"
        );
    }
    let (a, va) = page("a")?;
    ensure!(
        num(va, &["siteLoads"]) >= 1.0,
        "a: the site's fLoader loaded nothing (replaced instead of wrapped)"
    );
    ensure!(
        num(va, &["debugLines"]) >= 1.0,
        "a: debug: true logged nothing"
    );
    ensure!(
        num(va, &["offListenerEvents"]) == 1.0 && num(va, &["segEvents"]) > 1.0,
        "a: a listener removed with off() after its first event heard {} of {} segment events",
        num(va, &["offListenerEvents"]),
        num(va, &["segEvents"])
    );
    let (b, vb) = page("b")?;
    ensure!(
        b.uploaded == 0,
        "b: download only, yet uploaded {} bytes",
        b.uploaded
    );
    ensure!(num(vb, &["debugLines"]) == 0.0, "b: logged without debug");
    ensure!(a.uploaded + page("c")?.0.uploaded > 0, "nobody uploaded");
    let (c, vc) = page("c")?;
    let off = &vc["offWindow"];
    ensure!(
        off["done"].as_bool() == Some(true),
        "c: P2P was never turned on again"
    );
    ensure!(
        num(off, &["loads"]) > 0.0 && num(off, &["p2pFrags"]) == 0.0 && num(off, &["peers"]) == 0.0,
        "c: P2P off, yet {off}"
    );
    let at_on = num(vc, &["p2pAtOn"]);
    ensure!(
        c.delivered_p2p as f64 > at_on,
        "c: no P2P bytes after P2P was turned on again ({at_on} then {})",
        c.delivered_p2p
    );
    eprintln!("total {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
