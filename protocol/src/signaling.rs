//! Signaling messages between a viewer and the signaling server: JSON text WebSocket frames.
//!
//! Every message is an object with `"v": 1` and a `"type"`; see `docs/PROTOCOL.md`.
//! The server only introduces viewers and relays their WebRTC handshakes; media never flows here.

use serde::{Deserialize, Serialize};

use crate::PeerId;

/// Signaling protocol version carried in every message as `"v"`.
pub const SIGNALING_VERSION: u8 = 1;
/// Default largest signaling message (bytes of JSON) a server accepts.
pub const MAX_SIGNAL_LEN: usize = 64 * 1024;
/// Longest swarm id, in bytes. Equal to [`crate::frame::MAX_SWARM_LEN`] so that every swarm id
/// fits in a data-channel `Hello` frame (whose length prefix is one byte) without being cut: a
/// cut id would not match the receiver's and every connection in that swarm would fail.
pub const MAX_SWARM_ID_LEN: usize = crate::frame::MAX_SWARM_LEN;

/// Longest SDP (`offer`/`answer`) relayed, in bytes. A data-channel-only browser offer is
/// 1–3 KiB; with every ICE candidate inlined it stays well under 8 KiB.
pub const MAX_SDP_LEN: usize = 16 * 1024;
/// Longest ICE `candidate` line relayed, in bytes (real ones are under 200).
pub const MAX_CANDIDATE_LEN: usize = 1024;
/// Longest `sdp_mid` relayed, in bytes (browsers use `"0"`).
pub const MAX_SDP_MID_LEN: usize = 256;

/// WebRTC handshake payloads relayed verbatim between two members of a swarm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SignalData {
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Candidate {
        candidate: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_mid: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_m_line_index: Option<u16>,
    },
}

/// Why a server refuses to relay [`SignalData`] ([`SignalData::check`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalDataError {
    #[error("{field} of {len} bytes is over the limit of {max}")]
    TooLarge {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("empty sdp")]
    EmptySdp,
}

impl SignalDataError {
    pub fn code(&self) -> ErrorCode {
        match self {
            SignalDataError::TooLarge { .. } => ErrorCode::TooLarge,
            SignalDataError::EmptySdp => ErrorCode::BadMessage,
        }
    }
}

impl SignalData {
    /// The limits a server checks before relaying: SDP non-empty and at most [`MAX_SDP_LEN`],
    /// `candidate` at most [`MAX_CANDIDATE_LEN`] (empty = end of candidates), `sdp_mid` at most
    /// [`MAX_SDP_MID_LEN`] bytes.
    pub fn check(&self) -> Result<(), SignalDataError> {
        let bound = |field, len, max| {
            if len > max {
                Err(SignalDataError::TooLarge { field, len, max })
            } else {
                Ok(())
            }
        };
        match self {
            SignalData::Offer { sdp } | SignalData::Answer { sdp } => {
                if sdp.is_empty() {
                    return Err(SignalDataError::EmptySdp);
                }
                bound("sdp", sdp.len(), MAX_SDP_LEN)
            }
            SignalData::Candidate {
                candidate, sdp_mid, ..
            } => {
                bound("candidate", candidate.len(), MAX_CANDIDATE_LEN)?;
                bound(
                    "sdp_mid",
                    sdp_mid.as_ref().map_or(0, String::len),
                    MAX_SDP_MID_LEN,
                )
            }
        }
    }
}

/// Traffic totals a viewer reports for one swarm (cumulative since it joined).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    pub http_bytes: u64,
    pub p2p_bytes: u64,
    pub uploaded_bytes: u64,
    pub stalls: u32,
    pub peers: u32,
    #[serde(default)]
    pub integrity_failures: u32,
}

/// Viewer → server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Join a swarm (stream URL without query + rendition). `token` is required when the operator
    /// enabled signed tokens.
    Join {
        swarm: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// Ask for more members to connect to (after peers left or refused).
    WantPeers {
        swarm: String,
    },
    Leave {
        swarm: String,
    },
    /// Relay `data` to member `to` of `swarm`.
    Signal {
        swarm: String,
        to: PeerId,
        data: SignalData,
    },
    Stats {
        swarm: String,
        stats: StatsReport,
    },
    Ping,
}

/// Why the server refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not a known message.
    BadMessage,
    UnsupportedVersion,
    TooLarge,
    /// Binary WebSocket frames are not part of the protocol.
    BinaryFrame,
    RateLimited,
    TooManySwarms,
    BadSwarm,
    NotInSwarm,
    UnknownPeer,
    Unauthorized,
    ServerFull,
    ShuttingDown,
}

impl ErrorCode {
    /// Every code, in declaration order (metrics label sets, decoders that map strings back).
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::BadMessage,
        ErrorCode::UnsupportedVersion,
        ErrorCode::TooLarge,
        ErrorCode::BinaryFrame,
        ErrorCode::RateLimited,
        ErrorCode::TooManySwarms,
        ErrorCode::BadSwarm,
        ErrorCode::NotInSwarm,
        ErrorCode::UnknownPeer,
        ErrorCode::Unauthorized,
        ErrorCode::ServerFull,
        ErrorCode::ShuttingDown,
    ];

    /// Never called: it stops compiling when a code is added, as a reminder to extend
    /// [`ErrorCode::ALL`].
    #[allow(dead_code)]
    fn all_is_complete(self) {
        match self {
            ErrorCode::BadMessage
            | ErrorCode::UnsupportedVersion
            | ErrorCode::TooLarge
            | ErrorCode::BinaryFrame
            | ErrorCode::RateLimited
            | ErrorCode::TooManySwarms
            | ErrorCode::BadSwarm
            | ErrorCode::NotInSwarm
            | ErrorCode::UnknownPeer
            | ErrorCode::Unauthorized
            | ErrorCode::ServerFull
            | ErrorCode::ShuttingDown => {}
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::BinaryFrame => "binary_frame",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManySwarms => "too_many_swarms",
            ErrorCode::BadSwarm => "bad_swarm",
            ErrorCode::NotInSwarm => "not_in_swarm",
            ErrorCode::UnknownPeer => "unknown_peer",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::ServerFull => "server_full",
            ErrorCode::ShuttingDown => "shutting_down",
        }
    }
}

/// Most ICE servers a `welcome` carries; a client uses the first ones only.
pub const MAX_ICE_SERVERS: usize = 8;

/// An ICE server for the viewers' peer connections (WebRTC's `RTCIceServer`). TURN entries
/// carry credentials in coturn's REST scheme (`use-auth-secret`): `username` is
/// `<expiry unix seconds>:<peer id>` and `credential` is base64(HMAC-SHA1(secret, username)),
/// so they expire and the TURN server checks them with the shared secret alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Server → viewer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// First message on a connection: the viewer's id, how often to ping, and the ICE servers
    /// the operator configured (STUN; TURN with short-lived credentials). Absent when none.
    Welcome {
        peer_id: PeerId,
        heartbeat_ms: u32,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServer>,
    },
    /// Answer to `join`: members to connect to, and this viewer's seeding slot.
    ///
    /// Slots coordinate the live edge: the member whose `slot == seq % slots` fetches segment
    /// `seq` from the origin first; everybody else waits for it to show up on peers.
    Joined {
        swarm: String,
        peers: Vec<PeerId>,
        slot: u32,
        slots: u32,
    },
    /// More members to connect to (answer to `want_peers`).
    Peers {
        swarm: String,
        peers: Vec<PeerId>,
    },
    /// This viewer's slot or the slot count changed.
    Slot {
        swarm: String,
        slot: u32,
        slots: u32,
    },
    /// Relayed handshake from member `from`.
    Signal {
        swarm: String,
        from: PeerId,
        data: SignalData,
    },
    PeerLeft {
        swarm: String,
        peer: PeerId,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        swarm: Option<String>,
    },
    Pong,
    /// The server is going away: reconnect after this many milliseconds (already jittered).
    Reconnect {
        after_ms: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalingError {
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("unsupported signaling version {0}")]
    Version(u64),
    #[error("missing version field \"v\"")]
    NoVersion,
    #[error("bad message: {0}")]
    Bad(String),
}

impl SignalingError {
    pub fn code(&self) -> ErrorCode {
        match self {
            SignalingError::TooLarge(_) => ErrorCode::TooLarge,
            SignalingError::Version(_) => ErrorCode::UnsupportedVersion,
            SignalingError::NoVersion | SignalingError::Bad(_) => ErrorCode::BadMessage,
        }
    }
}

#[derive(Serialize)]
struct Out<'a, T> {
    v: u8,
    #[serde(flatten)]
    msg: &'a T,
}

fn to_json<T: Serialize>(msg: &T) -> String {
    // Our message types are plain data: serialization cannot fail.
    serde_json::to_string(&Out {
        v: SIGNALING_VERSION,
        msg,
    })
    .unwrap_or_default()
}

fn from_json<T: for<'de> Deserialize<'de>>(
    text: &str,
    max_len: usize,
) -> Result<T, SignalingError> {
    if text.len() > max_len {
        return Err(SignalingError::TooLarge(text.len()));
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| SignalingError::Bad(e.to_string()))?;
    let obj = value
        .as_object()
        .ok_or_else(|| SignalingError::Bad("not an object".into()))?;
    match obj.get("v").and_then(|v| v.as_u64()) {
        None => return Err(SignalingError::NoVersion),
        Some(v) if v != SIGNALING_VERSION as u64 => return Err(SignalingError::Version(v)),
        Some(_) => {}
    }
    serde_json::from_value(value).map_err(|e| SignalingError::Bad(e.to_string()))
}

impl ClientMsg {
    pub fn to_json(&self) -> String {
        to_json(self)
    }
    /// Parses untrusted text; `max_len` bounds the work done on it.
    pub fn from_json(text: &str, max_len: usize) -> Result<Self, SignalingError> {
        from_json(text, max_len)
    }
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMsg::Join { .. } => "join",
            ClientMsg::WantPeers { .. } => "want_peers",
            ClientMsg::Leave { .. } => "leave",
            ClientMsg::Signal { .. } => "signal",
            ClientMsg::Stats { .. } => "stats",
            ClientMsg::Ping => "ping",
        }
    }
}

impl ServerMsg {
    pub fn to_json(&self) -> String {
        to_json(self)
    }
    /// Parses untrusted text; `max_len` bounds the work done on it.
    ///
    /// Besides the JSON shape, it checks the slot fields of `joined` and `slot`: `slots >= 1` and
    /// `slot < slots`. A client computes `seq % slots`, so a zero slot count must never get
    /// past the decoder.
    pub fn from_json(text: &str, max_len: usize) -> Result<Self, SignalingError> {
        let msg: ServerMsg = from_json(text, max_len)?;
        match &msg {
            ServerMsg::Joined { slot, slots, .. } | ServerMsg::Slot { slot, slots, .. }
                if *slots == 0 || slot >= slots =>
            {
                Err(SignalingError::Bad(format!(
                    "slot {slot} out of range for {slots} slots"
                )))
            }
            _ => Ok(msg),
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMsg::Welcome { .. } => "welcome",
            ServerMsg::Joined { .. } => "joined",
            ServerMsg::Peers { .. } => "peers",
            ServerMsg::Slot { .. } => "slot",
            ServerMsg::Signal { .. } => "signal",
            ServerMsg::PeerLeft { .. } => "peer_left",
            ServerMsg::Error { .. } => "error",
            ServerMsg::Pong => "pong",
            ServerMsg::Reconnect { .. } => "reconnect",
        }
    }
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMsg::Error {
            code,
            message: message.into(),
            swarm: None,
        }
    }
}

/// Swarm id for a stream: its URL without query or fragment, plus the rendition.
pub fn swarm_id(stream_url: &str, rendition: &str) -> String {
    let base = stream_url.split(['?', '#']).next().unwrap_or_default();
    // `concat`, not `format!`: no formatting code in the browser bundle (docs/BUNDLE.md).
    let mut id = [base, "|", rendition].concat();
    if id.len() > MAX_SWARM_ID_LEN {
        // Keep ids bounded: long URLs are replaced by their hash.
        id = [
            "sha256:",
            &hex::encode(crate::manifest::sha256(id.as_bytes())),
        ]
        .concat();
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_fixture() {
        let m = ClientMsg::Join {
            swarm: "s".into(),
            token: None,
        };
        assert_eq!(m.to_json(), r#"{"v":1,"type":"join","swarm":"s"}"#);
        assert_eq!(ClientMsg::from_json(&m.to_json(), MAX_SIGNAL_LEN), Ok(m));
    }

    #[test]
    fn signal_fixture() {
        let m = ServerMsg::Signal {
            swarm: "s".into(),
            from: 9,
            data: SignalData::Answer { sdp: "x".into() },
        };
        let text =
            r#"{"v":1,"type":"signal","swarm":"s","from":9,"data":{"kind":"answer","sdp":"x"}}"#;
        assert_eq!(m.to_json(), text);
        assert_eq!(ServerMsg::from_json(text, MAX_SIGNAL_LEN), Ok(m));
    }

    #[test]
    fn signal_data_limits() {
        let sdp = |n: usize| "s".repeat(n);
        assert_eq!(
            SignalData::Offer {
                sdp: sdp(MAX_SDP_LEN)
            }
            .check(),
            Ok(())
        );
        let e = SignalData::Answer {
            sdp: sdp(MAX_SDP_LEN + 1),
        }
        .check()
        .err();
        assert_eq!(e.map(|e| e.code()), Some(ErrorCode::TooLarge));
        let e = SignalData::Offer { sdp: sdp(0) }.check().err();
        assert_eq!(e.map(|e| e.code()), Some(ErrorCode::BadMessage));
        let cand = |c: usize, mid: usize| SignalData::Candidate {
            candidate: sdp(c),
            sdp_mid: Some(sdp(mid)),
            sdp_m_line_index: Some(0),
        };
        assert_eq!(cand(0, 1).check(), Ok(()));
        assert_eq!(cand(MAX_CANDIDATE_LEN, MAX_SDP_MID_LEN).check(), Ok(()));
        assert!(cand(MAX_CANDIDATE_LEN + 1, 1).check().is_err());
        assert!(cand(1, MAX_SDP_MID_LEN + 1).check().is_err());
    }

    #[test]
    fn rejects() {
        assert_eq!(
            ClientMsg::from_json(r#"{"type":"ping"}"#, 100),
            Err(SignalingError::NoVersion)
        );
        assert_eq!(
            ClientMsg::from_json(r#"{"v":2,"type":"ping"}"#, 100),
            Err(SignalingError::Version(2))
        );
        assert!(matches!(
            ClientMsg::from_json(r#"{"v":1,"type":"nope"}"#, 100),
            Err(SignalingError::Bad(_))
        ));
        assert_eq!(
            ClientMsg::from_json("[1,2,3,4]", 3),
            Err(SignalingError::TooLarge(9))
        );
        assert!(ClientMsg::from_json("\u{0}", 100).is_err());
    }

    #[test]
    fn swarm_ids() {
        assert_eq!(
            swarm_id("http://a/b.m3u8?t=1", "720p"),
            "http://a/b.m3u8|720p"
        );
        let long = "x".repeat(400);
        assert!(swarm_id(&long, "r").starts_with("sha256:"));
    }
}
