//! The `origin` binary: help, errors, `hash`, serving and graceful shutdown on SIGTERM.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_origin");

#[test]
fn help_documents_flags_and_url_layout() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--listen",
        "--media-dir",
        "--live",
        "--synthetic",
        "--allow-origin",
        "--window",
        "ORIGIN_MEDIA_DIR",
        "/vod/<stream>/",
        "/live/<stream>/",
        "/synthetic/<name>/index.m3u8",
        "/healthz",
        "/metrics",
        "/stats",
        ".integrity.json",
        "hash",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

#[test]
fn bad_folder_is_a_clear_error() {
    let out = Command::new(BIN)
        .args([
            "--media-dir",
            "/nonexistent/media",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/media") && err.contains("does not exist"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["--synthetic", "oops", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME=RATE_KBPS:SEG_SECS"));
}

#[test]
fn hash_subcommand_writes_sidecars() {
    let media = Media::new();
    let out = Command::new(BIN)
        .arg("hash")
        .arg(media.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(media.path().join("sample/index.integrity.json")).unwrap();
    let m = protocol::Manifest::from_json(&text).unwrap();
    assert_eq!(m.segments.len(), 15);
    let seg = std::fs::read(media.path().join("sample/seg_007.m4s")).unwrap();
    assert!(m.segments[7].verify_segment(&seg));
}

#[cfg(unix)]
#[tokio::test]
async fn serves_and_stops_on_sigterm() {
    let media = Media::new();
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--live",
            "sample",
            "--synthetic",
            "s=100:1",
        ])
        .env("ORIGIN_MEDIA_DIR", media.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("origin listening on ")
        .unwrap()
        .to_string();
    let r = reqwest::get(format!("{url}/live/sample/index.m3u8"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("#EXT-X-MAP"));
    assert_eq!(
        reqwest::get(format!("{url}/synthetic/s/index.m3u8"))
            .await
            .unwrap()
            .status(),
        200
    );
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful exit, got {status}");
}
