//! The `origin` binary: help, errors, `hash`, serving and graceful shutdown on SIGTERM.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::process::{Command, Stdio};

use common::*;
use test_support::process;

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
    let started = process::start(
        Command::new(BIN)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--live",
                "sample",
                "--synthetic",
                "s=100:1",
            ])
            .env("ORIGIN_MEDIA_DIR", media.path())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let url = started
        .line
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
    let status = process::stop(started.child).unwrap().status;
    assert!(status.success(), "graceful exit, got {status}");
}

/// `--log-format json`: every log line on stderr is one JSON object (level, target, fields),
/// from start to the graceful stop, while stdout keeps its plain "listening" line.
#[test]
fn json_logs_are_one_object_per_line() {
    let started = process::start(
        Command::new(BIN)
            .args(["--log-format", "json", "--listen", "127.0.0.1:0"])
            .stderr(Stdio::piped()),
    )
    .unwrap();
    let line = &started.line;
    assert!(line.starts_with("origin listening on http://"), "{line}");
    let out = process::stop(started.child).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{err}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{l}"
        );
    }
}

/// deploy/systemd/p2pcdn-origin.service works as written: its `ExecStart` flags start this
/// build of the origin (on a free port instead of 8080, with a media folder of this tree) and
/// it stops on SIGTERM. (systemd's own check of the unit: `tests/tests/deploy.rs`.)
#[test]
fn systemd_unit_starts_the_origin() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/p2pcdn-origin.service"
    );
    let unit = std::fs::read_to_string(path).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let mut args: Vec<String> = exec.split_whitespace().skip(1).map(String::from).collect();
    for (flag, from, to) in [
        ("--listen", "127.0.0.1:8080", "127.0.0.1:0".to_owned()),
        (
            "--media-dir",
            "/srv/media",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../media").to_owned(),
        ),
    ] {
        let i = args.iter().position(|a| a == flag).unwrap();
        assert_eq!(args[i + 1], from);
        args[i + 1] = to;
    }
    let started = process::start(Command::new(BIN).args(&args).stderr(Stdio::null())).unwrap();
    let line = &started.line;
    assert!(line.starts_with("origin listening on "), "{exec}: {line}");
    assert!(process::stop(started.child).unwrap().status.success());
}
