//! The `signaling-server` binary's operator surface.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};

use test_support::process;

const BIN: &str = env!("CARGO_BIN_EXE_signaling-server");

/// `--log-format json`: every log line on stderr is one JSON object (level, target, fields),
/// from start to the graceful stop on SIGTERM, while stdout keeps its "listening on" line.
#[test]
fn json_logs_are_one_object_per_line() {
    let started = process::start(
        Command::new(BIN)
            .args(["--log-format", "json", "--listen", "127.0.0.1:0"])
            .stderr(Stdio::piped()),
    )
    .unwrap();
    let line = &started.line;
    assert!(line.starts_with("listening on "), "{line}");
    let out = process::stop(started.child).unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{err}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{l}"
        );
    }
    assert!(err.contains("\"stopped\""), "{err}");
}

/// deploy/systemd/p2pcdn-signaling.service works as written: its `ExecStart` flags start this
/// build of the server (on a free port instead of 8090) and it stops on SIGTERM. (systemd's own
/// check of the unit: `tests/tests/deploy.rs`.)
#[test]
fn systemd_unit_starts_the_server() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/p2pcdn-signaling.service"
    );
    let unit = std::fs::read_to_string(path).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let mut args: Vec<String> = exec.split_whitespace().skip(1).map(String::from).collect();
    let listen = args.iter().position(|a| a == "--listen").unwrap();
    assert_eq!(args[listen + 1], "127.0.0.1:8090");
    args[listen + 1] = "127.0.0.1:0".into();
    let started = process::start(Command::new(BIN).args(&args).stderr(Stdio::null())).unwrap();
    let line = &started.line;
    assert!(line.starts_with("listening on "), "{exec}: {line}");
    assert!(process::stop(started.child).unwrap().status.success());
}
