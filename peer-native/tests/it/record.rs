//! A real native session recorded and replayed: 3 native viewers on loopback (real origin,
//! signaling server and WebRTC) for 12 s, the first one recording; its recording, read back,
//! must replay through a new core with the same outputs in the same order.

use peer_core::replay::{Record, replay};
use peer_core::{Input, Output};
use peer_native::swarm::{SwarmOptions, run_swarm};

#[test]
fn recorded_native_session_replays() {
    let _serial = crate::serial();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("RUST_LOG").unwrap_or_else(|_| {
                "warn,rtc=error,rtc_ice=error,rtc_dtls=error,rtc_sctp=error,webrtc=error".into()
            }),
        ))
        .with_test_writer()
        .try_init();
    let path = std::env::temp_dir().join(format!("p2p-cdn-record-{}.jsonl", std::process::id()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let r = rt.block_on(async {
        let (origin_addr, origin) = origin::spawn(origin::Config {
            synthetic: vec![origin::SyntheticSpec {
                name: "record".into(),
                rate_kbps: 1000,
                seg_ms: 2000,
            }],
            ..Default::default()
        })
        .await
        .expect("origin");
        let (sig_addr, sig) = signaling_server::spawn(signaling_server::Config::default()).await;
        let mut o = SwarmOptions::new(
            format!("ws://{sig_addr}/ws"),
            format!("http://{origin_addr}/synthetic/record/index.m3u8"),
            3,
            12.0,
        );
        o.ramp = 1.0;
        o.record = Some(path.clone());
        let r = run_swarm(o, |_, _| {}).await;
        eprintln!("[record]\n{}{}", r.table(), r.to_json());
        let _ = sig.shutdown().await;
        let _ = origin.shutdown().await;
        r
    });
    assert!(r.errors.is_empty(), "errors: {:?}", r.errors);
    let size = std::fs::metadata(&path).expect("recording").len();
    let records = peer_native::record::read(&path).expect("reading the recording");
    let _ = std::fs::remove_file(&path);
    let count = |f: &dyn Fn(&Record) -> bool| records.iter().filter(|r| f(r)).count();
    let opened = count(&|r| {
        matches!(
            r,
            Record::Input {
                input: Input::RtcOpen { .. },
                ..
            }
        )
    });
    let messages = count(&|r| {
        matches!(
            r,
            Record::Input {
                input: Input::RtcMessage { .. },
                ..
            }
        )
    });
    let segments = count(&|r| matches!(r, Record::Output(Output::SegmentReady { .. })));
    let closed = count(&|r| {
        matches!(
            r,
            Record::Input {
                input: Input::Close,
                ..
            }
        )
    });
    eprintln!(
        "recording: {size} bytes, {} records, {opened} channels opened, {messages} peer \
         messages, {segments} segments to the player",
        records.len()
    );
    let report = replay(records).expect("the recording replays");
    eprintln!(
        "replayed: {} inputs, {} outputs",
        report.inputs, report.outputs
    );
    assert!(report.inputs >= 200, "inputs: {}", report.inputs);
    assert!(report.outputs >= 200, "outputs: {}", report.outputs);
    assert!(opened >= 1, "the recorded viewer opened a data channel");
    assert!(messages >= 10, "the recorded viewer talked to peers");
    assert!(segments >= 3, "the recorded viewer played");
    assert_eq!(closed, 1, "the recording ends with the viewer leaving");
}
