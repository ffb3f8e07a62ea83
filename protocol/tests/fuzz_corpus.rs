//! Replays the committed fuzz corpus (`protocol/fuzz/corpus/<target>/`) through the same
//! functions as the cargo-fuzz targets, so `cargo test` exercises every input the fuzzer kept,
//! including past crashes.
//!
//! The seeds (valid encodings of every message plus malformed ones) are generated from the
//! fixtures: `cargo test -p protocol --test fuzz_corpus -- --ignored write_seed_corpus`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use protocol::fuzzing::{fuzz_frame, fuzz_manifest, fuzz_signaling};

type Target = (&'static str, fn(&[u8]));
const TARGETS: [Target; 3] = [
    ("frame_decode", fuzz_frame),
    ("signaling_decode", fuzz_signaling),
    ("manifest_decode", fuzz_manifest),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// File name of a corpus entry: its SHA-256 in hex (stable, content-addressed like libFuzzer's).
fn entry_name(data: &[u8]) -> String {
    hex::encode(protocol::manifest::sha256(data))
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "frame_decode" => {
            let mut v: Vec<Vec<u8>> = frame_fixtures().iter().map(|(_, h)| unhex(h)).collect();
            for bad in [
                "",
                "02 06 00000001",
                "01 09",
                "01 01 01 ff 0008",
                "01 02 0001 0000000000000009 0003 0a",
                "01 02 0201",
                "01 03 0002 0000000000000001",
                "01 04 00000007 000000000000012c 0fff 0002",
                "01 05 00000007 000000000000012c 1000 61",
                "01 07 00000007 03",
            ] {
                v.push(unhex(bad));
            }
            v
        }
        "signaling_decode" => {
            let mut v: Vec<Vec<u8>> = client_fixtures()
                .iter()
                .map(|(_, j)| j.as_bytes().to_vec())
                .collect();
            v.extend(server_fixtures().iter().map(|(_, j)| j.as_bytes().to_vec()));
            for bad in [
                r#"{"type":"ping"}"#,
                r#"{"v":2,"type":"ping"}"#,
                r#"{"v":1,"type":"slot","swarm":"s","slot":0,"slots":0}"#,
                r#"{"v":1,"type":"signal","swarm":"s","to":1.5,"data":{"kind":"offer","sdp":""}}"#,
                r#"{"v":1,"type":"join","swarm":"\ud800"}"#,
                "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
            ] {
                v.push(bad.as_bytes().to_vec());
            }
            v.push(vec![0xff, 0xfe, b'{']);
            v
        }
        "manifest_decode" => {
            let m = MANIFEST_JSON;
            vec![
                m.as_bytes().to_vec(),
                br#"{"v":1,"chunk_size":16384,"segments":[]}"#.to_vec(),
                m.replace(r#""v":1"#, r#""v":2"#).into_bytes(),
                m.replace("16384", "16385").into_bytes(),
                m.replace(r#""len":5"#, r#""len":16385"#).into_bytes(),
                m.replace(r#""seq":8"#, r#""seq":7"#).into_bytes(),
                m.replace("2cf24d", "2cf24").into_bytes(),
                m.replace("mCQ=", "mCQ").into_bytes(),
                m.replace(r#""len":0"#, r#""len":67108865"#).into_bytes(),
            ]
        }
        _ => unreachable!("unknown target {target}"),
    }
}

#[test]
fn replay_corpus() {
    let (mut files, mut bytes) = (0, 0);
    for (target, run) in TARGETS {
        let dir = corpus_dir(target);
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut n = 0;
        for entry in entries {
            let path = entry.expect("dir entry").path();
            let data = fs::read(&path).expect("corpus file");
            // A panic here names the file: it is a regression of a fuzz finding.
            eprintln!("{target}: {}", path.display());
            run(&data);
            n += 1;
            bytes += data.len();
        }
        assert!(n > 0, "empty corpus for {target}");
        files += n;
    }
    // Keep the committed corpus small (see protocol/fuzz/README.md).
    assert!(
        files < 200 && bytes < 1 << 20,
        "{files} files, {bytes} bytes"
    );
}

/// Every seed generated from the fixtures is committed, so the corpus cannot silently fall
/// behind the wire format.
#[test]
fn seed_corpus_is_committed() {
    for (target, _) in TARGETS {
        for seed in seeds(target) {
            let path = corpus_dir(target).join(entry_name(&seed));
            assert!(
                path.is_file(),
                "{} missing: run `cargo test -p protocol --test fuzz_corpus -- --ignored write_seed_corpus`",
                path.display()
            );
        }
    }
}

#[test]
#[ignore = "writes the seed corpus into the source tree"]
fn write_seed_corpus() {
    for (target, _) in TARGETS {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).expect("create corpus dir");
        for seed in seeds(target) {
            fs::write(dir.join(entry_name(&seed)), &seed).expect("write seed");
        }
    }
}
