//! The signaling messages and the integrity manifest in the browser, without serde_json.
//!
//! `protocol`'s serde types stay the normative format (the server and the native peer use
//! them). This module is the browser's lean codec for the same bytes, which keeps serde_json
//! and core's float formatting out of the bundle:
//!
//! * [`client_msg`] writes a [`ClientMsg`] exactly as `ClientMsg::to_json` does (same keys,
//!   same order, serde_json's string escapes), with no formatting machinery.
//! * [`server_msg`] and [`manifest`] let the browser's `JSON.parse` do the parsing and walk the
//!   result with `Reflect`. The walk is generic over [`Tree`], so the tests run it over
//!   `serde_json::Value` natively and compare it with `protocol`'s own decoders; only the
//!   `JsValue` instance lands in the bundle. Checks follow `protocol`: the `v` field, known
//!   `type`/`kind`/`code` strings, required fields and their types, integer ranges, the slot
//!   rule; the manifest's own rules run in [`Manifest::from_encoded`].
//!
//! Integers: JavaScript numbers hold integers exactly up to 2^53 − 1, which bounds every `u64`
//! read here (peer ids are kept below it by the protocol). A number written `1.0` reads as 1
//! (serde_json would refuse it); that is the only input one side takes and the other refuses.

use protocol::manifest::{EncodedSegment, MAX_SEGMENTS, Manifest};
use protocol::signaling::{
    ClientMsg, ErrorCode, IceServer, MAX_SIGNAL_LEN, SIGNALING_VERSION, ServerMsg, SignalData,
    StatsReport,
};
use wasm_bindgen::JsValue;

// ------------------------------------------------------------------ writing

/// Decimal digits of `n`.
pub fn push_u64(w: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        w.push(char::from(b));
    }
}

/// A JSON string with serde_json's escapes: `"`, `\`, the short forms `\b \t \n \f \r`, and
/// `\u00xx` (lower-case hex) for the other control characters; nothing else is escaped.
fn push_str(w: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    w.push('"');
    for c in s.chars() {
        match c {
            '"' => w.push_str("\\\""),
            '\\' => w.push_str("\\\\"),
            '\u{8}' => w.push_str("\\b"),
            '\t' => w.push_str("\\t"),
            '\n' => w.push_str("\\n"),
            '\u{c}' => w.push_str("\\f"),
            '\r' => w.push_str("\\r"),
            c if c < ' ' => {
                w.push_str("\\u00");
                w.push(char::from(HEX[c as usize >> 4]));
                w.push(char::from(HEX[c as usize & 15]));
            }
            c => w.push(c),
        }
    }
    w.push('"');
}

/// `,"key":` — every field but an object's first.
fn key(w: &mut String, k: &str) {
    w.push_str(",\"");
    w.push_str(k);
    w.push_str("\":");
}

fn str_field(w: &mut String, k: &str, v: &str) {
    key(w, k);
    push_str(w, v);
}

fn num_field(w: &mut String, k: &str, v: u64) {
    key(w, k);
    push_u64(w, v);
}

fn signal_data(w: &mut String, d: &SignalData) {
    w.push_str("{\"kind\":");
    match d {
        SignalData::Offer { sdp } => {
            push_str(w, "offer");
            str_field(w, "sdp", sdp);
        }
        SignalData::Answer { sdp } => {
            push_str(w, "answer");
            str_field(w, "sdp", sdp);
        }
        SignalData::Candidate {
            candidate,
            sdp_mid,
            sdp_m_line_index,
        } => {
            push_str(w, "candidate");
            str_field(w, "candidate", candidate);
            if let Some(m) = sdp_mid {
                str_field(w, "sdp_mid", m);
            }
            if let Some(i) = sdp_m_line_index {
                num_field(w, "sdp_m_line_index", u64::from(*i));
            }
        }
    }
    w.push('}');
}

fn stats(w: &mut String, s: &StatsReport) {
    w.push_str("{\"http_bytes\":");
    push_u64(w, s.http_bytes);
    num_field(w, "p2p_bytes", s.p2p_bytes);
    num_field(w, "uploaded_bytes", s.uploaded_bytes);
    num_field(w, "stalls", u64::from(s.stalls));
    num_field(w, "peers", u64::from(s.peers));
    num_field(w, "integrity_failures", u64::from(s.integrity_failures));
    w.push('}');
}

/// The same text as [`ClientMsg::to_json`].
pub fn client_msg(msg: &ClientMsg) -> String {
    let mut w = String::with_capacity(96);
    w.push_str("{\"v\":");
    push_u64(&mut w, u64::from(SIGNALING_VERSION));
    str_field(&mut w, "type", msg.kind());
    match msg {
        ClientMsg::Join { swarm, token } => {
            str_field(&mut w, "swarm", swarm);
            if let Some(t) = token {
                str_field(&mut w, "token", t);
            }
        }
        ClientMsg::WantPeers { swarm } | ClientMsg::Leave { swarm } => {
            str_field(&mut w, "swarm", swarm);
        }
        ClientMsg::Signal { swarm, to, data } => {
            str_field(&mut w, "swarm", swarm);
            num_field(&mut w, "to", *to);
            key(&mut w, "data");
            signal_data(&mut w, data);
        }
        ClientMsg::Stats { swarm, stats: s } => {
            str_field(&mut w, "swarm", swarm);
            key(&mut w, "stats");
            stats(&mut w, s);
        }
        ClientMsg::Ping => {}
    }
    w.push('}');
    w
}

// ------------------------------------------------------------------ reading

/// A parsed JSON value: what the decoders need of it.
pub trait Tree: Sized {
    /// Member `key` of an object; `None` when this is no object or has no such member.
    fn member(&self, key: &str) -> Option<Self>;
    fn string(&self) -> Option<String>;
    fn number(&self) -> Option<f64>;
    fn is_null(&self) -> bool;
    /// The elements of an array; `None` when this is no array.
    fn elements(&self) -> Option<Vec<Self>>;
}

impl Tree for JsValue {
    fn member(&self, key: &str) -> Option<Self> {
        if !self.is_object() {
            return None;
        }
        js_sys::Reflect::get(self, &JsValue::from_str(key))
            .ok()
            .filter(|v| !v.is_undefined())
    }
    fn string(&self) -> Option<String> {
        self.as_string()
    }
    fn number(&self) -> Option<f64> {
        self.as_f64()
    }
    fn is_null(&self) -> bool {
        JsValue::is_null(self)
    }
    fn elements(&self) -> Option<Vec<Self>> {
        js_sys::Array::is_array(self).then(|| js_sys::Array::from(self).iter().collect())
    }
}

/// Largest integer a JavaScript number holds exactly (2^53 − 1).
const MAX_SAFE: u64 = (1 << 53) - 1;

/// A non-negative integer no larger than `max`.
fn uint(v: &impl Tree, max: u64) -> Option<u64> {
    let n = v.number()?;
    (n >= 0.0 && n.trunc() == n && n <= max as f64).then_some(n as u64)
}

fn get_uint(o: &impl Tree, k: &str, max: u64) -> Option<u64> {
    uint(&o.member(k)?, max)
}

fn get_u32(o: &impl Tree, k: &str) -> Option<u32> {
    get_uint(o, k, u64::from(u32::MAX)).map(|n| n as u32)
}

fn get_str(o: &impl Tree, k: &str) -> Option<String> {
    o.member(k)?.string()
}

/// An optional string member: absent or `null` is `Some(None)`, another type `None`.
fn get_opt_str(o: &impl Tree, k: &str) -> Option<Option<String>> {
    match o.member(k) {
        None => Some(None),
        Some(v) if v.is_null() => Some(None),
        Some(v) => v.string().map(Some),
    }
}

fn get_peers(o: &impl Tree) -> Option<Vec<u64>> {
    o.member("peers")?
        .elements()?
        .iter()
        .map(|p| uint(p, MAX_SAFE))
        .collect()
}

/// `ice_servers` of a `welcome`: absent is empty (serde's `default`).
fn get_ice_servers(o: &impl Tree) -> Option<Vec<IceServer>> {
    let Some(list) = o.member("ice_servers") else {
        return Some(Vec::new());
    };
    list.elements()?
        .iter()
        .map(|e| {
            Some(IceServer {
                urls: e
                    .member("urls")?
                    .elements()?
                    .iter()
                    .map(Tree::string)
                    .collect::<Option<_>>()?,
                username: get_opt_str(e, "username")?,
                credential: get_opt_str(e, "credential")?,
            })
        })
        .collect()
}

fn signal_data_from(d: &impl Tree) -> Option<SignalData> {
    Some(match get_str(d, "kind")?.as_str() {
        "offer" => SignalData::Offer {
            sdp: get_str(d, "sdp")?,
        },
        "answer" => SignalData::Answer {
            sdp: get_str(d, "sdp")?,
        },
        "candidate" => SignalData::Candidate {
            candidate: get_str(d, "candidate")?,
            sdp_mid: get_opt_str(d, "sdp_mid")?,
            sdp_m_line_index: match d.member("sdp_m_line_index") {
                None => None,
                Some(v) if v.is_null() => None,
                Some(v) => Some(uint(&v, u64::from(u16::MAX))? as u16),
            },
        },
        _ => return None,
    })
}

/// [`ServerMsg::from_json`] over a parsed tree (any error is `None`).
pub fn server_msg_from(o: &impl Tree) -> Option<ServerMsg> {
    if get_uint(o, "v", MAX_SAFE)? != u64::from(SIGNALING_VERSION) {
        return None;
    }
    let msg = match get_str(o, "type")?.as_str() {
        "welcome" => ServerMsg::Welcome {
            peer_id: get_uint(o, "peer_id", MAX_SAFE)?,
            heartbeat_ms: get_u32(o, "heartbeat_ms")?,
            ice_servers: get_ice_servers(o)?,
        },
        "joined" => ServerMsg::Joined {
            swarm: get_str(o, "swarm")?,
            peers: get_peers(o)?,
            slot: get_u32(o, "slot")?,
            slots: get_u32(o, "slots")?,
        },
        "peers" => ServerMsg::Peers {
            swarm: get_str(o, "swarm")?,
            peers: get_peers(o)?,
        },
        "slot" => ServerMsg::Slot {
            swarm: get_str(o, "swarm")?,
            slot: get_u32(o, "slot")?,
            slots: get_u32(o, "slots")?,
        },
        "signal" => ServerMsg::Signal {
            swarm: get_str(o, "swarm")?,
            from: get_uint(o, "from", MAX_SAFE)?,
            data: signal_data_from(&o.member("data")?)?,
        },
        "peer_left" => ServerMsg::PeerLeft {
            swarm: get_str(o, "swarm")?,
            peer: get_uint(o, "peer", MAX_SAFE)?,
        },
        "error" => {
            let code = get_str(o, "code")?;
            ServerMsg::Error {
                code: *ErrorCode::ALL.iter().find(|c| c.as_str() == code)?,
                message: get_str(o, "message")?,
                swarm: get_opt_str(o, "swarm")?,
            }
        }
        "pong" => ServerMsg::Pong,
        "reconnect" => ServerMsg::Reconnect {
            after_ms: get_u32(o, "after_ms")?,
        },
        _ => return None,
    };
    match msg {
        ServerMsg::Joined { slot, slots, .. } | ServerMsg::Slot { slot, slots, .. }
            if slots == 0 || slot >= slots =>
        {
            None
        }
        msg => Some(msg),
    }
}

/// [`Manifest::from_json`] over a parsed tree (any error is `None`).
pub fn manifest_from(o: &impl Tree) -> Option<Manifest> {
    let v = get_uint(o, "v", u64::from(u8::MAX))? as u8;
    let chunk_size = get_u32(o, "chunk_size")?;
    let items = o.member("segments")?.elements()?;
    if items.len() > MAX_SEGMENTS {
        return None;
    }
    let mut segments = Vec::with_capacity(items.len());
    for s in &items {
        segments.push(EncodedSegment {
            seq: get_uint(s, "seq", MAX_SAFE)?,
            uri: get_str(s, "uri")?,
            len: get_uint(s, "len", MAX_SAFE)?,
            sha256: get_str(s, "sha256")?,
            chunks: get_str(s, "chunks")?,
        });
    }
    Manifest::from_encoded(v, chunk_size, segments).ok()
}

/// [`ServerMsg::from_json`] with [`MAX_SIGNAL_LEN`], parsed by the browser.
pub fn server_msg(text: &str) -> Option<ServerMsg> {
    if text.len() > MAX_SIGNAL_LEN {
        return None;
    }
    server_msg_from(&js_sys::JSON::parse(text).ok()?)
}

/// [`Manifest::from_json`], parsed by the browser.
pub fn manifest(text: &str) -> Option<Manifest> {
    manifest_from(&js_sys::JSON::parse(text).ok()?)
}

/// Server messages that both decoders must take or refuse alike (the tests below).
#[cfg(test)]
const SERVER_TEXTS: &[&str] = &[
    "",
    "[]",
    "null",
    "1",
    r#"{"type":"pong"}"#,
    r#"{"v":2,"type":"pong"}"#,
    r#"{"v":"1","type":"pong"}"#,
    r#"{"v":-1,"type":"pong"}"#,
    r#"{"v":1}"#,
    r#"{"v":1,"type":"nope"}"#,
    r#"{"v":1,"type":7}"#,
    r#"{"v":1,"type":"pong","extra":[1,{"a":null}]}"#,
    r#"{"v":1,"type":"welcome","peer_id":1}"#,
    r#"{"v":1,"type":"welcome","peer_id":-1,"heartbeat_ms":5}"#,
    r#"{"v":1,"type":"welcome","peer_id":1.5,"heartbeat_ms":5}"#,
    r#"{"v":1,"type":"welcome","peer_id":1,"heartbeat_ms":4294967296}"#,
    r#"{"v":1,"type":"welcome","peer_id":1,"heartbeat_ms":4294967295}"#,
    r#"{"v":1,"type":"joined","swarm":"s","peers":[1,2],"slot":0,"slots":0}"#,
    r#"{"v":1,"type":"joined","swarm":"s","peers":[1,2],"slot":2,"slots":2}"#,
    r#"{"v":1,"type":"joined","swarm":"s","peers":[1,2],"slot":1,"slots":2}"#,
    r#"{"v":1,"type":"joined","swarm":"s","peers":[1,"2"],"slot":1,"slots":2}"#,
    r#"{"v":1,"type":"joined","swarm":"s","peers":{},"slot":1,"slots":2}"#,
    r#"{"v":1,"type":"slot","swarm":"s","slot":1}"#,
    r#"{"v":1,"type":"peers","swarm":null,"peers":[]}"#,
    r#"{"v":1,"type":"peer_left","swarm":"s","peer":3}"#,
    r#"{"v":1,"type":"signal","swarm":"s","from":9,"data":{"kind":"offer"}}"#,
    r#"{"v":1,"type":"signal","swarm":"s","from":9,"data":{"kind":"bye","sdp":"x"}}"#,
    r#"{"v":1,"type":"signal","swarm":"s","from":9,"data":"x"}"#,
    r#"{"v":1,"type":"signal","swarm":"s","from":9,"data":{"kind":"candidate","candidate":"c"}}"#,
    r#"{"v":1,"type":"signal","swarm":"s","from":9,"data":{"kind":"candidate","candidate":"c","sdp_mid":null,"sdp_m_line_index":null}}"#,
    r#"{"v":1,"type":"signal","swarm":"s","from":9,"data":{"kind":"candidate","candidate":"c","sdp_mid":1}}"#,
    r#"{"v":1,"type":"signal","swarm":"s","from":9,"data":{"kind":"candidate","candidate":"c","sdp_m_line_index":65536}}"#,
    r#"{"v":1,"type":"error","code":"rate_limited","message":"m"}"#,
    r#"{"v":1,"type":"error","code":"rate_limited","message":"m","swarm":null}"#,
    r#"{"v":1,"type":"error","code":"rate_limited","message":"m","swarm":"s"}"#,
    r#"{"v":1,"type":"error","code":"nope","message":"m"}"#,
    r#"{"v":1,"type":"error","code":"rate_limited"}"#,
    r#"{"v":1,"type":"reconnect","after_ms":-5}"#,
    r#"{"v":1,"type":"reconnect","after_ms":100}"#,
];

/// A valid manifest, then variants of it that both decoders must take or refuse alike.
#[cfg(test)]
fn manifest_texts() -> Vec<String> {
    let m = Manifest {
        segments: vec![protocol::manifest::SegmentManifest::compute(
            4,
            "a.ts",
            &[1u8; 20_000],
        )],
    };
    let good = m.to_json();
    vec![
        good.clone(),
        good.replace("\"v\":1", "\"v\":2"),
        good.replace("\"v\":1", "\"v\":257"),
        good.replace("\"chunk_size\":16384", "\"chunk_size\":1"),
        good.replace("\"len\":20000", "\"len\":40000"),
        good.replace("\"len\":20000", "\"len\":\"20000\""),
        good.replace("\"seq\":4", "\"seq\":-4"),
        good.replace("\"uri\":\"a.ts\"", "\"uri\":null"),
        good.replace("\"sha256\":\"", "\"sha256\":\"0"),
        good.replace("\"chunks\":\"", "\"chunks\":\"A"),
        "{}".to_string(),
    ]
}

/// One message of every kind, with strings that need escaping.
#[cfg(test)]
fn sample_server_msgs() -> Vec<ServerMsg> {
    let s = "sw\"a\\rm\u{0}\u{1f}\n\té€😀".to_string();
    let cand = |sdp_mid: Option<String>, sdp_m_line_index| SignalData::Candidate {
        candidate: "candidate:1 1 udp 2122260223 10.0.0.1 5000 typ host".into(),
        sdp_mid,
        sdp_m_line_index,
    };
    let mut v = vec![
        ServerMsg::Welcome {
            peer_id: MAX_SAFE,
            heartbeat_ms: u32::MAX,
            ice_servers: Vec::new(),
        },
        ServerMsg::Welcome {
            peer_id: 3,
            heartbeat_ms: 20_000,
            ice_servers: vec![
                IceServer {
                    urls: vec!["stun:s.example:3478".into(), s.clone()],
                    username: None,
                    credential: None,
                },
                IceServer {
                    urls: vec!["turn:t.example:3478?transport=udp".into()],
                    username: Some("1767225600:3".into()),
                    credential: Some(s.clone()),
                },
            ],
        },
        ServerMsg::Joined {
            swarm: s.clone(),
            peers: vec![0, 1, MAX_SAFE],
            slot: 2,
            slots: 3,
        },
        ServerMsg::Peers {
            swarm: s.clone(),
            peers: vec![],
        },
        ServerMsg::Slot {
            swarm: s.clone(),
            slot: 0,
            slots: 1,
        },
        ServerMsg::PeerLeft {
            swarm: s.clone(),
            peer: 7,
        },
        ServerMsg::Pong,
        ServerMsg::Reconnect { after_ms: 1500 },
    ];
    for data in [
        SignalData::Offer {
            sdp: "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n".into(),
        },
        SignalData::Answer { sdp: s.clone() },
        cand(None, None),
        cand(Some("0".into()), Some(u16::MAX)),
    ] {
        v.push(ServerMsg::Signal {
            swarm: s.clone(),
            from: 42,
            data,
        });
    }
    for (k, code) in ErrorCode::ALL.iter().enumerate() {
        v.push(ServerMsg::Error {
            code: *code,
            message: s.clone(),
            swarm: (k % 2 == 0).then(|| s.clone()),
        });
    }
    v
}

#[cfg(all(test, target_arch = "wasm32"))]
mod browser_tests {
    //! The browser path (`JSON.parse` + `Reflect`) against protocol's serde decoders, both
    //! running in the browser: `cargo xtask test` runs these with wasm-bindgen-test-runner.
    use super::*;
    use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

    wasm_bindgen_test_configure!(run_in_browser);

    #[wasm_bindgen_test]
    fn server_msgs_are_read_like_protocol() {
        for m in sample_server_msgs() {
            let text = m.to_json();
            assert_eq!(server_msg(&text), Some(m), "{text}");
        }
        for text in SERVER_TEXTS {
            assert_eq!(
                server_msg(text),
                ServerMsg::from_json(text, MAX_SIGNAL_LEN).ok(),
                "{text}"
            );
        }
        let long = format!(
            "{{\"v\":1,\"type\":\"pong\",\"x\":\"{}\"}}",
            "a".repeat(MAX_SIGNAL_LEN)
        );
        assert_eq!(server_msg(&long), None);
    }

    #[wasm_bindgen_test]
    fn manifests_are_read_like_protocol() {
        let texts = manifest_texts();
        assert!(manifest(&texts[0]).is_some());
        for text in &texts {
            assert_eq!(manifest(text), Manifest::from_json(text).ok(), "{text}");
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    //! The codec against `protocol`'s serde implementation, natively: `serde_json::Value`
    //! stands in for what `JSON.parse` returns.
    use super::*;
    use proptest::prelude::*;
    use protocol::manifest::SegmentManifest;
    use serde_json::Value;

    impl Tree for Value {
        fn member(&self, key: &str) -> Option<Self> {
            self.as_object()?.get(key).cloned()
        }
        fn string(&self) -> Option<String> {
            self.as_str().map(String::from)
        }
        fn number(&self) -> Option<f64> {
            self.as_f64()
        }
        fn is_null(&self) -> bool {
            Value::is_null(self)
        }
        fn elements(&self) -> Option<Vec<Self>> {
            self.as_array().cloned()
        }
    }

    fn parse(text: &str) -> Option<Value> {
        serde_json::from_str(text).ok()
    }

    /// Ours and protocol's agree on `text`: both refuse it or both give the same message.
    fn same_server_msg(text: &str) -> Option<ServerMsg> {
        let ours = parse(text).and_then(|v| server_msg_from(&v));
        assert_eq!(
            ours,
            ServerMsg::from_json(text, MAX_SIGNAL_LEN).ok(),
            "{text}"
        );
        ours
    }

    fn id() -> impl Strategy<Value = u64> {
        0..=MAX_SAFE
    }

    fn signal_data() -> impl Strategy<Value = SignalData> {
        prop_oneof![
            any::<String>().prop_map(|sdp| SignalData::Offer { sdp }),
            any::<String>().prop_map(|sdp| SignalData::Answer { sdp }),
            (
                any::<String>(),
                any::<Option<String>>(),
                any::<Option<u16>>()
            )
                .prop_map(|(candidate, sdp_mid, sdp_m_line_index)| {
                    SignalData::Candidate {
                        candidate,
                        sdp_mid,
                        sdp_m_line_index,
                    }
                }),
        ]
    }

    fn client_msg_s() -> impl Strategy<Value = ClientMsg> {
        prop_oneof![
            (any::<String>(), any::<Option<String>>())
                .prop_map(|(swarm, token)| ClientMsg::Join { swarm, token }),
            any::<String>().prop_map(|swarm| ClientMsg::WantPeers { swarm }),
            any::<String>().prop_map(|swarm| ClientMsg::Leave { swarm }),
            (any::<String>(), any::<u64>(), signal_data())
                .prop_map(|(swarm, to, data)| ClientMsg::Signal { swarm, to, data }),
            (any::<String>(), any::<(u64, u64, u64, u32, u32, u32)>()).prop_map(
                |(swarm, (h, p, u, s, n, i))| ClientMsg::Stats {
                    swarm,
                    stats: StatsReport {
                        http_bytes: h,
                        p2p_bytes: p,
                        uploaded_bytes: u,
                        stalls: s,
                        peers: n,
                        integrity_failures: i,
                    },
                }
            ),
            Just(ClientMsg::Ping),
        ]
    }

    fn error_code() -> impl Strategy<Value = ErrorCode> {
        proptest::sample::select(ErrorCode::ALL.to_vec())
    }

    fn server_msg_s() -> impl Strategy<Value = ServerMsg> {
        let slots = (1..=u32::MAX).prop_flat_map(|slots| (0..slots, Just(slots)));
        prop_oneof![
            (
                id(),
                any::<u32>(),
                prop::collection::vec(
                    (
                        prop::collection::vec(any::<String>(), 0..3),
                        proptest::option::of(any::<String>()),
                        proptest::option::of(any::<String>()),
                    ),
                    0..3
                )
            )
                .prop_map(|(peer_id, heartbeat_ms, ice)| ServerMsg::Welcome {
                    peer_id,
                    heartbeat_ms,
                    ice_servers: ice
                        .into_iter()
                        .map(|(urls, username, credential)| IceServer {
                            urls,
                            username,
                            credential,
                        })
                        .collect(),
                }),
            (
                any::<String>(),
                prop::collection::vec(id(), 0..8),
                slots.clone()
            )
                .prop_map(|(swarm, peers, (slot, slots))| ServerMsg::Joined {
                    swarm,
                    peers,
                    slot,
                    slots
                }),
            (any::<String>(), prop::collection::vec(id(), 0..8))
                .prop_map(|(swarm, peers)| ServerMsg::Peers { swarm, peers }),
            (any::<String>(), slots).prop_map(|(swarm, (slot, slots))| ServerMsg::Slot {
                swarm,
                slot,
                slots
            }),
            (any::<String>(), id(), signal_data())
                .prop_map(|(swarm, from, data)| ServerMsg::Signal { swarm, from, data }),
            (any::<String>(), id()).prop_map(|(swarm, peer)| ServerMsg::PeerLeft { swarm, peer }),
            (error_code(), any::<String>(), any::<Option<String>>()).prop_map(
                |(code, message, swarm)| ServerMsg::Error {
                    code,
                    message,
                    swarm
                }
            ),
            Just(ServerMsg::Pong),
            any::<u32>().prop_map(|after_ms| ServerMsg::Reconnect { after_ms }),
        ]
    }

    proptest! {
        #[test]
        fn client_msgs_are_written_like_protocol(m in client_msg_s()) {
            prop_assert_eq!(client_msg(&m), m.to_json());
        }

        #[test]
        fn server_msgs_are_read_like_protocol(m in server_msg_s()) {
            let text = m.to_json();
            prop_assert_eq!(same_server_msg(&text), Some(m));
        }

        #[test]
        fn manifests_are_read_like_protocol(
            segs in prop::collection::vec((0..1000u64, "[a-z/._-]{0,20}", 0..70_000usize), 0..5)
        ) {
            let m = Manifest {
                segments: segs
                    .iter()
                    .map(|(seq, uri, len)| SegmentManifest::compute(*seq, uri.as_str(), &vec![7; *len]))
                    .collect(),
            };
            let text = m.to_json();
            let ours = parse(&text).and_then(|v| manifest_from(&v));
            // Random seqs may repeat: then both refuse.
            prop_assert_eq!(ours, Manifest::from_json(&text).ok());
        }
    }

    #[test]
    fn samples_are_read_like_protocol() {
        for m in sample_server_msgs() {
            assert_eq!(same_server_msg(&m.to_json()), Some(m));
        }
    }

    #[test]
    fn fixtures() {
        assert_eq!(
            client_msg(&ClientMsg::Join {
                swarm: "s\"\\\u{1}\u{7f}é\n".into(),
                token: None
            }),
            "{\"v\":1,\"type\":\"join\",\"swarm\":\"s\\\"\\\\\\u0001\u{7f}é\\n\"}"
        );
        assert_eq!(
            same_server_msg(
                r#"{"v":1,"type":"signal","swarm":"s","from":9,"data":{"kind":"answer","sdp":"x"}}"#
            ),
            Some(ServerMsg::Signal {
                swarm: "s".into(),
                from: 9,
                data: SignalData::Answer { sdp: "x".into() }
            })
        );
    }

    #[test]
    fn refuses_what_protocol_refuses() {
        for text in SERVER_TEXTS {
            same_server_msg(text);
        }
    }

    #[test]
    fn manifest_refusals() {
        let texts = manifest_texts();
        for text in &texts {
            let ours = parse(text).and_then(|v| manifest_from(&v));
            assert_eq!(ours, Manifest::from_json(text).ok(), "{text}");
        }
        assert!(parse(&texts[0]).and_then(|v| manifest_from(&v)).is_some());
    }
}
