//! Test harness for `peer-core`: one `PeerCore` under test driven only through its
//! `Input`/`Output` API, with
//! * a fake signaling server (welcome, join, relayed handshakes),
//! * scripted fake remote peers that speak frames over core-numbered connections and answer the
//!   core's `Request` frames,
//! * an in-test origin that answers `HttpStart` with the right bytes and `FetchManifest` with
//!   the integrity manifest of the segments it lists,
//! * a virtual clock that jumps to the next scheduled event or to `poll_timeout()`.
//!
//! After every input the harness drains the core's outputs and checks the invariants that must
//! hold at every step (see [`Harness::check_step`], which starts with the core's own
//! `check_invariants()`); violations panic with a description, so proptest can shrink them.
//!
//! [`net`] wires several real cores together instead (signaling relay, data channels, origin).

#![allow(dead_code)]

pub mod net;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use peer_core::replay::{Record, Recorder};
use peer_core::{
    BanReason, Config, ConnId, DisconnectReason, Event, Input, Output, PeerCore, Time,
};
use protocol::signaling::{ClientMsg, ServerMsg, SignalData};
use protocol::{AbsentReason, CHUNK_SIZE, Frame, HaveEntry, Manifest, PeerId, SegmentManifest};

pub const SWARM: &str = "https://cdn.test/live/stream.m3u8#720p";
/// Where the core polls the integrity manifest; segment `seq` is listed as `seg{seq}.ts`,
/// which resolves to [`url_of`]`(seq)`.
pub const MANIFEST_URL: &str = "https://cdn.test/live/stream.integrity.json";
/// Our id, as given by the signaling server.
pub const ME: PeerId = 1;
/// Slot layout used by default: we are slot 999 of 1000 with one origin seeder per segment, so
/// we are never the designated (`seq % 1000 == 999`) nor the backup (`seq % 1000 == 998`)
/// seeder of the small sequence numbers the tests use, and fetch from the origin only as a
/// fallback.
pub const SLOT: u32 = 999;
pub const SLOTS: u32 = 1000;
/// Duration the wants give their segments.
pub const SEG_DURATION: Duration = Duration::from_secs(2);

/// The origin timing the harness assumes by default and that matches the core's initial
/// estimates before it has measured anything (first byte after 200 ms, then 1 MB/s).
pub const ORIGIN_RTT: Duration = Duration::from_millis(200);
pub const ORIGIN_RATE: f64 = 1_000_000.0;

pub fn config() -> Config {
    Config {
        swarm: SWARM.to_string(),
        manifest_url: Some(MANIFEST_URL.to_string()),
        seed: 42,
        origin_seeders: 1,
        peer_stall_timeout: Duration::from_millis(1500),
        http_margin: Duration::from_millis(500),
        backup_seed_delay: Duration::from_millis(1500),
        ..Config::default()
    }
}

/// Deterministic pseudo-random content of segment `seq`.
pub fn segment_data(seq: u64, len: usize) -> Bytes {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

pub fn url_of(seq: u64) -> String {
    format!("https://cdn.test/live/seg{seq}.ts")
}

/// The sequence number in a URL made by [`url_of`].
pub fn seq_of_url(url: &str) -> Option<u64> {
    url.strip_prefix("https://cdn.test/live/seg")?
        .strip_suffix(".ts")?
        .parse()
        .ok()
}

/// The manifest entry of segment `seq` holding `data` (relative URI, as a packager writes it).
pub fn manifest_entry(seq: u64, data: &[u8]) -> SegmentManifest {
    SegmentManifest::compute(seq, format!("seg{seq}.ts"), data)
}

/// A peer's `Hello` in our swarm (`instance` 0: a peer that sends none).
pub fn hello(max_inflight: u16, instance: u64) -> Frame {
    Frame::Hello {
        swarm: SWARM.to_string(),
        max_inflight,
        instance: (instance != 0).then_some(instance),
    }
}

pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

pub fn at_ms(v: u64) -> Time {
    Time::from_millis(v)
}

/// How a fake remote peer answers our `Request`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerBehaviour {
    /// Sends exactly the requested chunks.
    Honest,
    /// Flips one byte of every chunk.
    Corrupt,
    /// Appends one byte to every chunk.
    ExtraBytes,
    /// Drops the last byte of every chunk.
    Short,
    /// Never answers.
    Stall,
    /// Opens its channel and never sends anything, not even `Hello`.
    Mute,
    /// Answers this many chunks (over all requests), then never again.
    StallAfter(usize),
    /// Answers every request with `Absent`.
    Absent(AbsentReason),
    /// Answers with a (correct) chunk under a request id it was never given.
    Unsolicited,
    /// Sends every requested chunk twice.
    Duplicate,
    /// Answers with a frame that does not decode.
    Malformed,
}

impl PeerBehaviour {
    /// The ban a core must pronounce once it asked this peer for a chunk.
    pub fn expected_ban(&self) -> Option<BanReason> {
        match self {
            PeerBehaviour::Corrupt | PeerBehaviour::Short => Some(BanReason::BadChunk),
            PeerBehaviour::ExtraBytes => Some(BanReason::TooManyBytes),
            PeerBehaviour::Unsolicited | PeerBehaviour::Duplicate => Some(BanReason::Unsolicited),
            PeerBehaviour::Malformed => Some(BanReason::Malformed(String::new())),
            _ => None,
        }
    }
    pub fn is_bad(&self) -> bool {
        self.expected_ban().is_some()
    }
}

pub fn same_ban_kind(a: &BanReason, b: &BanReason) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

#[derive(Debug, Clone)]
pub struct FakePeer {
    pub behaviour: PeerBehaviour,
    /// One-way latency (data channel and signaling).
    pub latency: Duration,
    /// Uplink time per chunk.
    pub per_chunk: Duration,
    /// Segments held completely (announced in `Have` when the channel opens).
    pub holds: BTreeSet<u64>,
    /// The `instance` in its `Hello` (0: derived from its id at `connect`).
    pub instance: u64,
    /// Honour our `Cancel`s (drop chunks not sent yet). Off by default: late chunks for
    /// cancelled requests then reach the core, which must ignore them.
    pub honour_cancel: bool,
    /// `max_inflight` in its `Hello`.
    pub max_inflight: u16,
    /// It never reads its channel: the harness reports no `RtcBuffered` for it.
    pub stuck: bool,
    /// Segments it holds with its own bytes (e.g. under an older manifest), served instead of
    /// the origin's.
    pub own: BTreeMap<u64, Bytes>,
    /// Channel open (from the harness' point of view).
    pub open: bool,
    /// The connection it speaks on (the core's number for it).
    pub conn: Option<ConnId>,
    busy_until: Time,
    answered: usize,
    /// Requests received from the core: (time, req_id, seq, first, count).
    pub requests: Vec<(Time, u32, u64, u16, u16)>,
    /// Chunk frames received from the core: (time, req_id, seq, index, len).
    pub chunks_received: Vec<(Time, u32, u64, u16, usize)>,
    /// Other frames received from the core.
    pub frames_received: Vec<(Time, Frame)>,
    cancelled: BTreeSet<u32>,
}

impl FakePeer {
    pub fn new(behaviour: PeerBehaviour, holds: impl IntoIterator<Item = u64>) -> Self {
        FakePeer {
            behaviour,
            latency: ms(20),
            per_chunk: ms(5),
            holds: holds.into_iter().collect(),
            instance: 0,
            honour_cancel: false,
            max_inflight: 16,
            stuck: false,
            own: BTreeMap::new(),
            open: false,
            conn: None,
            busy_until: Time::ZERO,
            answered: 0,
            requests: Vec::new(),
            chunks_received: Vec::new(),
            frames_received: Vec::new(),
            cancelled: BTreeSet::new(),
        }
    }
    pub fn timing(mut self, latency: Duration, per_chunk: Duration) -> Self {
        self.latency = latency;
        self.per_chunk = per_chunk;
        self
    }
    pub fn instance(mut self, instance: u64) -> Self {
        self.instance = instance;
        self
    }
}

/// How the in-test origin answers one `HttpStart`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpBehaviour {
    Honest,
    /// Sends only this share (per mille) of the body, then `HttpDone`.
    Truncate(u16),
    /// Sends this share (per mille) of the body, then `HttpFailed`.
    Fail(u16),
    /// Sends the body followed by extra bytes, then `HttpDone`.
    Longer,
    /// Flips one byte in the body.
    Corrupt,
}

pub struct Origin {
    pub segs: BTreeMap<u64, Bytes>,
    /// Manifest entries of `segs` (computed once).
    pub entries: BTreeMap<u64, SegmentManifest>,
    /// Segments the manifest lists (`None`: all of `segs`).
    pub listed: Option<BTreeSet<u64>>,
    /// Time from `FetchManifest` to `ManifestLoaded`.
    pub manifest_latency: Duration,
    pub rtt: Duration,
    /// Bytes per second after the first byte.
    pub rate: f64,
    /// Bytes per `HttpData` input.
    pub piece: usize,
    /// Behaviours of the next requests, in order (then `Honest`).
    pub script: VecDeque<HttpBehaviour>,
}

impl Origin {
    /// Adds segment `seq` (not listed in the manifest until `list`ed when `listed` is set).
    pub fn add(&mut self, seq: u64, len: usize) {
        let data = segment_data(seq, len);
        self.entries.insert(seq, manifest_entry(seq, &data));
        self.segs.insert(seq, data);
    }
    pub fn list(&mut self, seq: u64) {
        if let Some(l) = &mut self.listed {
            l.insert(seq);
        }
    }
    /// The manifest as served now.
    pub fn manifest(&self) -> Manifest {
        Manifest {
            segments: self
                .entries
                .iter()
                .filter(|(s, _)| self.listed.as_ref().is_none_or(|l| l.contains(s)))
                .map(|(_, m)| m.clone())
                .collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HttpLog {
    pub at: Time,
    pub id: u64,
    pub seq: u64,
    pub range: Option<(u64, u64)>,
    pub behaviour: HttpBehaviour,
}

impl HttpLog {
    /// Byte range asked (the whole segment when no Range).
    pub fn bytes(&self, seg_len: u64) -> (u64, u64) {
        self.range.unwrap_or((0, seg_len))
    }
    pub fn covers_chunk(&self, seg_len: u64, idx: usize) -> bool {
        let (a, b) = self.bytes(seg_len);
        let (cs, ce) = protocol::manifest::chunk_range(seg_len, idx);
        a <= cs && ce <= b
    }
}

/// The fake signaling server the harness' core talks to.
#[derive(Debug, Clone)]
pub struct FakeServer {
    /// Answer `SignalConnect` with `SignalOpened` + `Welcome`, and `Join` with `Joined`.
    pub auto: bool,
    /// Id given in the next `Welcome`.
    pub me: PeerId,
    pub heartbeat_ms: u32,
    pub slot: u32,
    pub slots: u32,
    /// Members listed in the next `Joined`.
    pub join_peers: Vec<PeerId>,
    pub latency: Duration,
    /// Times of `SignalConnect`.
    pub connects: Vec<Time>,
    /// Messages the core sent.
    pub sent: Vec<(Time, ClientMsg)>,
}

#[derive(Debug, Clone)]
enum Ev {
    /// A frame from fake peer `peer` reaches the core on `conn`.
    Frame {
        conn: ConnId,
        peer: PeerId,
        data: Bytes,
    },
    /// `conn` to fake peer `peer` opens.
    Open {
        peer: PeerId,
        conn: ConnId,
    },
    /// The fake peer `peer` closes its current connection.
    Close {
        peer: PeerId,
    },
    HttpData {
        id: u64,
        data: Bytes,
    },
    HttpDone {
        id: u64,
    },
    HttpFailed {
        id: u64,
    },
    Want {
        url: String,
        seq: Option<u64>,
        deadline: Time,
    },
    Buffered {
        conn: ConnId,
    },
    /// Any other input (signaling, handshake, manifest), as is.
    Input(Input),
}

/// A frame the core sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub at: Time,
    pub conn: ConnId,
    pub peer: PeerId,
    pub frame: Frame,
}

pub struct Harness {
    pub core: PeerCore,
    pub cfg: Config,
    pub now: Time,
    pub origin: Origin,
    pub server: FakeServer,
    pub peers: BTreeMap<PeerId, FakePeer>,
    queue: BTreeMap<(Time, u64), Ev>,
    counter: u64,
    /// Connections the core created and has not closed (nor seen closed): conn -> peer.
    pub conns: BTreeMap<ConnId, PeerId>,
    /// Every output except `RtcSend`, with its time.
    pub outputs: Vec<(Time, Output)>,
    /// Every frame the core sent, decoded.
    pub sent: Vec<Sent>,
    pub http: Vec<HttpLog>,
    http_cancelled: BTreeSet<u64>,
    http_closed: BTreeSet<u64>,
    /// Times of `FetchManifest`.
    pub manifest_fetches: Vec<Time>,
    /// Segments delivered: seq -> times.
    pub delivered: BTreeMap<u64, Vec<Time>>,
    /// `WantFailed` answers: (time, url).
    pub want_failed: Vec<(Time, String)>,
    /// Deadlines of the wants issued (by seq).
    pub deadlines: BTreeMap<u64, Time>,
    /// Chunks the fake peers delivered to the core: (time, peer, req_id, seq, index, len).
    pub chunks_in: Vec<(Time, PeerId, u32, u64, u16, usize)>,
    /// Our request tracking: (peer, req_id) -> (seq, chunk indices not answered yet).
    pub outstanding: BTreeMap<(PeerId, u32), (u64, BTreeSet<u16>)>,
    /// Seqs whose HTTP fallback started (first HttpStart time).
    pub http_started: BTreeMap<u64, Time>,
    pub banned: BTreeMap<PeerId, BanReason>,
    /// Report `RtcBuffered { amount: 0 }` shortly after each send (the channel drains).
    pub drain_buffers: bool,
    /// Check `store_bytes <= store_cap` after every input.
    pub check_cap: bool,
    pub steps: u64,
    pub max_dup_seen: usize,
    /// Records every input and output when recording (see [`Harness::recording`]).
    pub recorder: Option<Recorder>,
    pub records: Vec<Record>,
}

impl Harness {
    /// A core that knows `segs` (seq, len) from its first manifest, joined as slot `SLOT` of
    /// `SLOTS`, at time zero.
    pub fn new(cfg: Config, segs: &[(u64, usize)]) -> Self {
        Self::with_slot(cfg, segs, SLOT, SLOTS)
    }

    pub fn with_slot(cfg: Config, segs: &[(u64, usize)], slot: u32, slots: u32) -> Self {
        Self::build(cfg, segs, slot, slots, false)
    }

    /// Like [`Harness::new`], with every input and output recorded in `records`.
    pub fn recording(cfg: Config, segs: &[(u64, usize)]) -> Self {
        Self::build(cfg, segs, SLOT, SLOTS, true)
    }

    /// A harness whose core has made its first outputs but nothing was answered yet (the
    /// fake server does not answer by itself; the origin lists nothing).
    pub fn unstarted(cfg: Config) -> Self {
        let mut h = Self::raw(cfg, &[], SLOT, SLOTS, false);
        h.server.auto = false;
        h.origin.listed = Some(BTreeSet::new());
        h.drain();
        h.check_step();
        h
    }

    fn raw(cfg: Config, segs: &[(u64, usize)], slot: u32, slots: u32, record: bool) -> Self {
        let recorder = record.then(|| Recorder::new(&cfg));
        let core = PeerCore::new(cfg.clone());
        let mut origin = Origin {
            segs: BTreeMap::new(),
            entries: BTreeMap::new(),
            listed: None,
            manifest_latency: Duration::ZERO,
            rtt: ORIGIN_RTT,
            rate: ORIGIN_RATE,
            piece: 5000,
            script: VecDeque::new(),
        };
        for &(s, l) in segs {
            origin.add(s, l);
        }
        Harness {
            core,
            cfg,
            now: Time::ZERO,
            origin,
            server: FakeServer {
                auto: true,
                me: ME,
                heartbeat_ms: 20_000,
                slot,
                slots,
                join_peers: Vec::new(),
                latency: Duration::ZERO,
                connects: Vec::new(),
                sent: Vec::new(),
            },
            peers: BTreeMap::new(),
            queue: BTreeMap::new(),
            counter: 0,
            conns: BTreeMap::new(),
            outputs: Vec::new(),
            sent: Vec::new(),
            http: Vec::new(),
            http_cancelled: BTreeSet::new(),
            http_closed: BTreeSet::new(),
            manifest_fetches: Vec::new(),
            delivered: BTreeMap::new(),
            want_failed: Vec::new(),
            deadlines: BTreeMap::new(),
            chunks_in: Vec::new(),
            outstanding: BTreeMap::new(),
            http_started: BTreeMap::new(),
            banned: BTreeMap::new(),
            drain_buffers: true,
            check_cap: true,
            steps: 0,
            max_dup_seen: 0,
            recorder,
            records: Vec::new(),
        }
    }

    /// Like [`Harness::with_slot`], with the origin holding `segs` but its manifest listing
    /// only `listed` at the start (list more with `origin.list`).
    pub fn listing(
        cfg: Config,
        segs: &[(u64, usize)],
        listed: &[u64],
        slot: u32,
        slots: u32,
    ) -> Self {
        Self::start(
            Self::raw(cfg, segs, slot, slots, false),
            Some(listed.iter().copied().collect()),
        )
    }

    fn build(cfg: Config, segs: &[(u64, usize)], slot: u32, slots: u32, record: bool) -> Self {
        Self::start(Self::raw(cfg, segs, slot, slots, record), None)
    }

    fn start(mut h: Self, listed: Option<BTreeSet<u64>>) -> Self {
        let (slot, slots) = (h.server.slot, h.server.slots);
        h.origin.listed = listed;
        // The core's first outputs (SignalConnect, FetchManifest) are answered at once.
        h.drain();
        h.check_step();
        h.run_until(Time::ZERO);
        assert!(h.core.joined(), "harness core not joined at start");
        assert_eq!(h.core.peer_id(), Some(ME));
        assert_eq!(h.core.slot(), Some((slot, slots.max(1))));
        h
    }

    pub fn seg_len(&self, seq: u64) -> u64 {
        self.origin.segs[&seq].len() as u64
    }

    fn schedule(&mut self, at: Time, ev: Ev) {
        self.counter += 1;
        self.queue.insert((at.max(self.now), self.counter), ev);
    }

    /// Feeds `input` to the core at `at` (not before the current time).
    pub fn input_at(&mut self, at: Time, input: Input) {
        self.schedule(at, Ev::Input(input));
    }

    /// Feeds one input to the core now, then drains and checks its outputs.
    pub fn input(&mut self, input: Input) {
        if let Some(r) = &mut self.recorder {
            r.input(self.now, &input);
            self.records.extend(r.take());
        }
        self.core.handle(self.now, input);
        self.steps += 1;
        self.drain();
        self.check_step();
    }

    /// Adds a fake peer; it offers, the core answers and the channel opens at once; the peer
    /// then sends `Hello` and its `Have` after its latency. Returns whether the core accepted
    /// the offer.
    pub fn connect(&mut self, id: PeerId, peer: FakePeer) -> bool {
        self.peers.insert(id, peer);
        match self.offer_from(id) {
            Some(conn) => {
                self.open_channel(id, conn);
                true
            }
            None => false,
        }
    }

    /// The fake peer `id` sends an offer through signaling. When the core makes a connection
    /// for it (`RtcCreate`, then `RtcRemote` with the offer), the harness reports the offer
    /// applied and the answer made, and returns the connection (not open yet: see
    /// [`Harness::open`]).
    pub fn offer_from(&mut self, id: PeerId) -> Option<ConnId> {
        let before = self.outputs.len();
        let sdp = format!("offer from {id} #{}", self.counter);
        self.input(Input::SignalMessage(ServerMsg::Signal {
            swarm: SWARM.into(),
            from: id,
            data: SignalData::Offer { sdp: sdp.clone() },
        }));
        let new = &self.outputs[before..];
        let conn = new.iter().find_map(|(_, o)| match o {
            Output::RtcCreate {
                conn,
                peer,
                offerer: false,
            } if *peer == id => Some(*conn),
            _ => None,
        })?;
        let remote = new.iter().any(|(_, o)| {
            *o == Output::RtcRemote {
                conn,
                data: SignalData::Offer { sdp: sdp.clone() },
            }
        });
        assert!(remote, "RtcCreate for an offer without RtcRemote(offer)");
        self.input(Input::RtcRemoteApplied { conn });
        self.input(Input::RtcLocal {
            conn,
            data: SignalData::Answer {
                sdp: format!("answer to {id}"),
            },
        });
        Some(conn)
    }

    /// Opens `conn` (to fake peer `id`) now.
    pub fn open(&mut self, id: PeerId, conn: ConnId) {
        self.open_channel(id, conn);
    }

    fn open_channel(&mut self, id: PeerId, conn: ConnId) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        p.open = true;
        p.conn = Some(conn);
        if p.instance == 0 {
            p.instance = 0xF00D_0000 + id;
        }
        let lat = p.latency;
        let mute = matches!(p.behaviour, PeerBehaviour::Mute);
        let mut frames = vec![hello(p.max_inflight, p.instance)];
        let entries: Vec<HaveEntry> = p
            .holds
            .iter()
            .filter_map(|s| {
                p.own.get(s).or_else(|| self.origin.segs.get(s)).map(|d| {
                    HaveEntry::complete(*s, protocol::manifest::chunk_count(d.len() as u64) as u16)
                })
            })
            .collect();
        if !entries.is_empty() {
            frames.push(Frame::Have { entries });
        }
        self.input(Input::RtcOpen { conn });
        if mute {
            return;
        }
        let t = self.now + lat;
        for f in frames {
            self.schedule(
                t,
                Ev::Frame {
                    conn,
                    peer: id,
                    data: f.encode(),
                },
            );
        }
    }

    /// The current connection of fake peer `peer`.
    pub fn conn_of(&self, peer: PeerId) -> Option<ConnId> {
        self.peers.get(&peer).and_then(|p| p.conn)
    }

    /// Delivers `data` as a frame from `peer` (on its current connection) at `at`.
    pub fn inject_at(&mut self, at: Time, peer: PeerId, data: Bytes) {
        let conn = self
            .conn_of(peer)
            .unwrap_or_else(|| panic!("peer {peer} has no connection"));
        self.schedule(at, Ev::Frame { conn, peer, data });
    }

    /// The player wants segment `seq` (by its URL and number) by `deadline`.
    pub fn want_at(&mut self, at: Time, seq: u64, deadline: Time) {
        self.want_url_at(at, url_of(seq), Some(seq), deadline);
    }

    pub fn want_url_at(&mut self, at: Time, url: String, seq: Option<u64>, deadline: Time) {
        self.schedule(at, Ev::Want { url, seq, deadline });
    }

    /// Reports `RtcBuffered { amount: 0 }` for `peer`'s connection at `at`.
    pub fn buffered_at(&mut self, at: Time, peer: PeerId) {
        if let Some(conn) = self.conn_of(peer) {
            self.schedule(at, Ev::Buffered { conn });
        }
    }

    /// Fake peer `peer` closes its connection at `at`.
    pub fn close_at(&mut self, at: Time, peer: PeerId) {
        self.schedule(at, Ev::Close { peer });
    }

    fn drain(&mut self) {
        while let Some(o) = self.core.poll_output() {
            if let Some(r) = &mut self.recorder {
                r.output(&o);
                self.records.extend(r.take());
            }
            self.on_output(o);
        }
    }

    fn on_output(&mut self, o: Output) {
        let now = self.now;
        match &o {
            Output::RtcSend { conn, frame } => {
                let peer = *self
                    .conns
                    .get(conn)
                    .unwrap_or_else(|| panic!("core sent on conn {conn}, not open: {o:?}"));
                let f = Frame::decode(frame)
                    .unwrap_or_else(|e| panic!("core sent an undecodable frame to {peer}: {e}"));
                self.sent.push(Sent {
                    at: now,
                    conn: *conn,
                    peer,
                    frame: f.clone(),
                });
                let stuck = self.peers.get(&peer).is_some_and(|p| p.stuck);
                if self.drain_buffers && !stuck {
                    self.schedule(now + ms(1), Ev::Buffered { conn: *conn });
                }
                if self.conn_of(peer) == Some(*conn) {
                    self.peer_receives(peer, f);
                }
                return;
            }
            Output::RtcCreate {
                conn,
                peer,
                offerer,
            } => {
                assert!(
                    !self.banned.contains_key(peer),
                    "core connects to banned peer {peer}"
                );
                assert!(
                    self.conns.insert(*conn, *peer).is_none(),
                    "conn {conn} created twice"
                );
                if *offerer && self.peers.contains_key(peer) {
                    self.schedule(
                        now,
                        Ev::Input(Input::RtcLocal {
                            conn: *conn,
                            data: SignalData::Offer {
                                sdp: format!("offer to {peer}"),
                            },
                        }),
                    );
                }
            }
            Output::RtcRemote { conn, data } => {
                if let (SignalData::Answer { .. }, Some(&peer)) = (data, self.conns.get(conn)) {
                    // Our offer answered: the channel opens a little later.
                    self.schedule(now, Ev::Input(Input::RtcRemoteApplied { conn: *conn }));
                    self.schedule(now + ms(30), Ev::Open { peer, conn: *conn });
                }
            }
            Output::RtcClose { conn } => {
                let peer = self.conns.remove(conn);
                assert!(peer.is_some(), "RtcClose for unknown conn {conn}");
                if let Some(peer) = peer
                    && let Some(p) = self.peers.get_mut(&peer)
                    && p.conn == Some(*conn)
                {
                    p.open = false;
                    p.conn = None;
                    self.outstanding.retain(|(q, _), _| *q != peer);
                }
            }
            Output::SignalConnect => {
                self.server.connects.push(now);
                if self.server.auto {
                    let t = now + self.server.latency;
                    self.schedule(t, Ev::Input(Input::SignalOpened));
                    let welcome = ServerMsg::Welcome {
                        peer_id: self.server.me,
                        heartbeat_ms: self.server.heartbeat_ms,
                        ice_servers: Vec::new(),
                    };
                    self.schedule(t, Ev::Input(Input::SignalMessage(welcome)));
                }
            }
            Output::SignalSend(msg) => {
                self.server.sent.push((now, msg.clone()));
                match msg {
                    ClientMsg::Join { swarm, .. } if self.server.auto => {
                        let joined = ServerMsg::Joined {
                            swarm: swarm.clone(),
                            peers: self.server.join_peers.clone(),
                            slot: self.server.slot,
                            slots: self.server.slots,
                        };
                        let t = now + self.server.latency;
                        self.schedule(t, Ev::Input(Input::SignalMessage(joined)));
                    }
                    ClientMsg::Signal {
                        to,
                        data: SignalData::Offer { .. },
                        ..
                    } => {
                        // A fake peer answers our offer.
                        if let Some(p) = self.peers.get(to) {
                            let answer = ServerMsg::Signal {
                                swarm: SWARM.into(),
                                from: *to,
                                data: SignalData::Answer {
                                    sdp: format!("answer from {to}"),
                                },
                            };
                            let t = now + p.latency;
                            self.schedule(t, Ev::Input(Input::SignalMessage(answer)));
                        }
                    }
                    _ => {}
                }
            }
            Output::HttpStart { id, url, range } => {
                let seq = seq_of_url(url).unwrap_or_else(|| panic!("HttpStart for url {url}"));
                assert!(
                    self.origin.segs.contains_key(&seq),
                    "HttpStart for a segment the origin lacks: {url}"
                );
                self.http_started.entry(seq).or_insert(now);
                self.origin_start(*id, seq, *range);
            }
            Output::HttpCancel { id } => {
                self.http_cancelled.insert(*id);
            }
            Output::FetchManifest { url } => {
                assert_eq!(Some(url), self.cfg.manifest_url.as_ref());
                self.manifest_fetches.push(now);
                let manifest = self.origin.manifest();
                let t = now + self.origin.manifest_latency;
                self.schedule(
                    t,
                    Ev::Input(Input::ManifestLoaded {
                        url: url.clone(),
                        manifest,
                    }),
                );
            }
            Output::SegmentReady {
                url,
                seq,
                data,
                http_bytes,
                p2p_bytes,
            } => {
                assert_eq!(url, &url_of(*seq), "SegmentReady url for {seq}");
                let want = self
                    .origin
                    .segs
                    .get(seq)
                    .unwrap_or_else(|| panic!("SegmentReady for unknown seq {seq}"));
                assert!(
                    data == want,
                    "SegmentReady({seq}) at {now:?} differs from the origin's bytes (len {} vs {})",
                    data.len(),
                    want.len()
                );
                assert_eq!(
                    http_bytes + p2p_bytes,
                    want.len() as u64,
                    "SegmentReady({seq}) byte accounting"
                );
                self.delivered.entry(*seq).or_default().push(now);
            }
            Output::WantFailed { url } => self.want_failed.push((now, url.clone())),
            Output::Event(Event::PeerBanned { peer, reason }) => {
                self.banned.insert(*peer, reason.clone());
            }
            _ => {}
        }
        self.outputs.push((now, o));
    }

    /// A frame sent by the core reaches fake peer `id`, which reacts per its behaviour.
    fn peer_receives(&mut self, id: PeerId, f: Frame) {
        let now = self.now;
        if let Frame::Request {
            req_id,
            seq,
            first,
            count,
        } = &f
        {
            self.outstanding
                .insert((id, *req_id), (*seq, (*first..*first + *count).collect()));
        }
        if let Frame::Cancel { req_id } = &f {
            self.outstanding.remove(&(id, *req_id));
        }
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(conn) = p.conn else { return };
        match f {
            Frame::Request {
                req_id,
                seq,
                first,
                count,
            } => {
                p.requests.push((now, req_id, seq, first, count));
                let data = p
                    .own
                    .get(&seq)
                    .or_else(|| self.origin.segs.get(&seq))
                    .cloned();
                let mut out: Vec<(Time, Frame)> = Vec::new();
                let mut t = (now + p.latency).max(p.busy_until);
                let chunk = |i: u16| -> Option<Bytes> {
                    let d = data.as_ref()?;
                    let (a, b) = protocol::manifest::chunk_range(d.len() as u64, i as usize);
                    Some(d.slice(a as usize..b as usize))
                };
                match p.behaviour.clone() {
                    PeerBehaviour::Stall | PeerBehaviour::Mute => {}
                    PeerBehaviour::Absent(reason) => out.push((
                        now + p.latency + p.latency,
                        Frame::Absent { req_id, reason },
                    )),
                    PeerBehaviour::Malformed => out.push((
                        now + p.latency + p.latency,
                        Frame::Cancel { req_id: 0 }, // replaced by garbage below
                    )),
                    b => {
                        if !p.holds.contains(&seq) || data.is_none() {
                            out.push((
                                now + p.latency + p.latency,
                                Frame::Absent {
                                    req_id,
                                    reason: AbsentReason::NotFound,
                                },
                            ));
                        } else {
                            for i in first..first + count {
                                if let PeerBehaviour::StallAfter(n) = b
                                    && p.answered >= n
                                {
                                    break;
                                }
                                let Some(mut c) = chunk(i) else { break };
                                p.answered += 1;
                                t = t + p.per_chunk;
                                match b {
                                    PeerBehaviour::Corrupt => {
                                        let mut v = c.to_vec();
                                        let k = v.len() / 2;
                                        v[k] ^= 0x5a;
                                        c = Bytes::from(v);
                                    }
                                    PeerBehaviour::ExtraBytes => {
                                        let mut v = c.to_vec();
                                        v.push(7);
                                        c = Bytes::from(v);
                                    }
                                    PeerBehaviour::Short => {
                                        let mut v = c.to_vec();
                                        v.pop();
                                        c = Bytes::from(v);
                                    }
                                    _ => {}
                                }
                                let rid = if b == PeerBehaviour::Unsolicited {
                                    req_id.wrapping_add(1_000_000)
                                } else {
                                    req_id
                                };
                                let frame = Frame::Chunk {
                                    req_id: rid,
                                    seq,
                                    index: i,
                                    data: c,
                                };
                                if b == PeerBehaviour::Duplicate {
                                    out.push((t + p.latency, frame.clone()));
                                }
                                out.push((t + p.latency, frame));
                            }
                            p.busy_until = t;
                        }
                    }
                }
                let malformed = p.behaviour == PeerBehaviour::Malformed;
                for (at, f) in out {
                    let data = if malformed {
                        Bytes::from_static(&[1, 0xee, 0, 0])
                    } else {
                        f.encode()
                    };
                    self.schedule(
                        at,
                        Ev::Frame {
                            conn,
                            peer: id,
                            data,
                        },
                    );
                }
            }
            Frame::Cancel { req_id } => {
                p.cancelled.insert(req_id);
                p.frames_received.push((now, Frame::Cancel { req_id }));
            }
            Frame::Chunk {
                req_id,
                seq,
                index,
                data,
            } => {
                p.chunks_received
                    .push((now, req_id, seq, index, data.len()));
            }
            other => p.frames_received.push((now, other)),
        }
    }

    fn origin_start(&mut self, id: u64, seq: u64, range: Option<(u64, u64)>) {
        let data = self.origin.segs[&seq].clone();
        let len = data.len() as u64;
        let (a, b) = range.unwrap_or((0, len));
        assert!(
            a < b && b <= len,
            "HttpStart range {range:?} invalid for segment {seq} of {len} bytes"
        );
        let behaviour = self
            .origin
            .script
            .pop_front()
            .unwrap_or(HttpBehaviour::Honest);
        self.http.push(HttpLog {
            at: self.now,
            id,
            seq,
            range,
            behaviour: behaviour.clone(),
        });
        let mut body = data.slice(a as usize..b as usize).to_vec();
        let full = body.len();
        let mut end_ev = Ev::HttpDone { id };
        match behaviour {
            HttpBehaviour::Honest => {}
            HttpBehaviour::Truncate(pm) => {
                body.truncate((full * pm as usize / 1000).min(full.saturating_sub(1)));
            }
            HttpBehaviour::Fail(pm) => {
                body.truncate(full * pm as usize / 1000);
                end_ev = Ev::HttpFailed { id };
            }
            HttpBehaviour::Longer => body.extend_from_slice(b"0123456789"),
            HttpBehaviour::Corrupt => {
                let k = body.len() / 2;
                body[k] ^= 0x11;
            }
        }
        let start = self.now + self.origin.rtt;
        let mut off = 0;
        let piece = self.origin.piece.max(1);
        while off < body.len() {
            let n = piece.min(body.len() - off);
            let t = start + Duration::from_secs_f64((off + n) as f64 / self.origin.rate);
            let d = Bytes::copy_from_slice(&body[off..off + n]);
            self.schedule(t, Ev::HttpData { id, data: d });
            off += n;
        }
        let t = start + Duration::from_secs_f64(body.len() as f64 / self.origin.rate);
        self.schedule(t, end_ev);
    }

    /// Processes the next event or timer if it is at or before `limit`. Returns false when
    /// nothing is left before `limit`.
    pub fn step_until(&mut self, limit: Time) -> bool {
        let next_ev = self.queue.keys().next().map(|k| k.0);
        // May be before `self.now` after `run_until` moved the clock past it: it fires late,
        // as with a driver that wakes up late.
        let next_to = self.core.poll_timeout();
        let t = match (next_ev, next_to) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => return false,
            },
        };
        if t > limit {
            return false;
        }
        assert!(self.steps < 400_000, "livelock: too many steps");
        self.now = self.now.max(t);
        if next_ev.is_some_and(|e| e <= t) {
            let Some((_, ev)) = self.queue.pop_first() else {
                return false;
            };
            self.process(ev);
        } else {
            self.input(Input::Timeout);
        }
        true
    }

    pub fn run_until(&mut self, limit: Time) {
        while self.step_until(limit) {}
        self.now = self.now.max(limit);
    }

    /// Runs while `go_on(self)`, until `limit` at most.
    pub fn run_while(&mut self, limit: Time, mut go_on: impl FnMut(&Self) -> bool) {
        while go_on(self) && self.step_until(limit) {}
    }

    fn process(&mut self, ev: Ev) {
        match ev {
            Ev::Frame { conn, peer, data } => {
                // A connection closed (by either side) delivers nothing more.
                if !self.conns.contains_key(&conn) {
                    return;
                }
                if let Ok(f) = Frame::decode(&data) {
                    match f {
                        Frame::Chunk {
                            req_id,
                            seq,
                            index,
                            data,
                        } => {
                            self.chunks_in
                                .push((self.now, peer, req_id, seq, index, data.len()));
                            if let Some((_, set)) = self.outstanding.get_mut(&(peer, req_id)) {
                                set.remove(&index);
                                if set.is_empty() {
                                    self.outstanding.remove(&(peer, req_id));
                                }
                            }
                        }
                        Frame::Absent { req_id, .. } => {
                            self.outstanding.remove(&(peer, req_id));
                        }
                        _ => {}
                    }
                }
                self.input(Input::RtcMessage { conn, data });
            }
            Ev::Open { peer, conn } => {
                if self.conns.contains_key(&conn) {
                    self.open_channel(peer, conn);
                }
            }
            Ev::Close { peer } => {
                let Some(conn) = self.conn_of(peer) else {
                    return;
                };
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.open = false;
                    p.conn = None;
                }
                self.outstanding.retain(|(p, _), _| *p != peer);
                if self.conns.remove(&conn).is_some() {
                    self.input(Input::RtcClosed { conn });
                }
            }
            Ev::HttpData { id, data } => {
                if self.http_cancelled.contains(&id) || self.http_closed.contains(&id) {
                    return;
                }
                self.input(Input::HttpData { id, data });
            }
            Ev::HttpDone { id } => {
                if self.http_cancelled.contains(&id) || !self.http_closed.insert(id) {
                    return;
                }
                self.input(Input::HttpDone { id });
            }
            Ev::HttpFailed { id } => {
                if self.http_cancelled.contains(&id) || !self.http_closed.insert(id) {
                    return;
                }
                self.input(Input::HttpFailed { id });
            }
            Ev::Want { url, seq, deadline } => {
                if let Some(s) = seq {
                    self.deadlines.insert(s, deadline);
                }
                self.input(Input::Want {
                    url,
                    seq,
                    deadline,
                    duration: SEG_DURATION,
                });
            }
            Ev::Buffered { conn } => {
                if self.conns.contains_key(&conn) {
                    self.input(Input::RtcBuffered { conn, amount: 0 });
                }
            }
            Ev::Input(input) => self.input(input),
        }
    }

    /// Invariants that hold after every input:
    /// * the core's own accounting is consistent (`check_invariants`);
    /// * the store is under its cap;
    /// * no chunk is outstanding at two peers at once unless the segment's HTTP fallback
    ///   started (requests tracked from the `Request` frames sent, minus the chunks and
    ///   `Absent`s delivered, the `Cancel`s sent and the connections closed);
    /// * the core never has more chunks of a segment in flight at peers than our tracking has
    ///   outstanding (so the tracking above is not vacuous; the core reports the count in
    ///   `describe_segment`);
    /// * `poll_timeout` is never in the past.
    pub fn check_step(&mut self) {
        if let Err(e) = self.core.check_invariants() {
            panic!("core invariant broken at {:?}: {e}", self.now);
        }
        if self.check_cap {
            assert!(
                self.core.store_bytes() <= self.cfg.store_cap,
                "store {} over cap {} at {:?}",
                self.core.store_bytes(),
                self.cfg.store_cap,
                self.now
            );
        }
        if let Some(t) = self.core.poll_timeout() {
            assert!(t > self.now, "poll_timeout {t:?} not after {:?}", self.now);
        }
        let mut count: BTreeMap<(u64, u16), usize> = BTreeMap::new();
        for (seq, set) in self.outstanding.values() {
            for i in set {
                *count.entry((*seq, *i)).or_default() += 1;
            }
        }
        for ((seq, i), n) in &count {
            self.max_dup_seen = self.max_dup_seen.max(*n);
            if *n > 1 {
                assert!(
                    self.http_started.contains_key(seq),
                    "chunk {seq}/{i} requested from {n} peers at once at {:?} without HTTP fallback: {:?}",
                    self.now,
                    self.outstanding
                );
            }
        }
        let seqs: Vec<u64> = self.origin.segs.keys().copied().collect();
        for seq in seqs {
            let desc = self.core.describe_segment(seq);
            let on_peer = chunks_on_peers(&desc);
            let tracked = count.keys().filter(|(s, _)| *s == seq).count();
            assert!(
                on_peer <= tracked,
                "core has {on_peer} chunks of {seq} in flight at peers, harness tracks {tracked}: {desc}"
            );
        }
    }

    // ------------------------------------------------------------ queries

    /// Why the core closed or lost its connections to `peer` (`PeerDisconnected` events).
    pub fn disconnects(&self, peer: PeerId) -> Vec<DisconnectReason> {
        self.outputs
            .iter()
            .filter_map(|(_, o)| match o {
                Output::Event(Event::PeerDisconnected { peer: p, reason }) if *p == peer => {
                    Some(reason.clone())
                }
                _ => None,
            })
            .collect()
    }

    pub fn ban_events(&self, peer: PeerId) -> Vec<(Time, BanReason)> {
        self.outputs
            .iter()
            .filter_map(|(t, o)| match o {
                Output::Event(Event::PeerBanned { peer: p, reason }) if *p == peer => {
                    Some((*t, reason.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// Times the core connected to `peer` itself (`RtcCreate` as the offerer).
    pub fn connects(&self, peer: PeerId) -> Vec<Time> {
        self.outputs
            .iter()
            .filter_map(|(t, o)| match o {
                Output::RtcCreate {
                    peer: p,
                    offerer: true,
                    ..
                } if *p == peer => Some(*t),
                _ => None,
            })
            .collect()
    }

    /// Connections the core created for `peer`, in order: (time, conn, offerer).
    pub fn creates(&self, peer: PeerId) -> Vec<(Time, ConnId, bool)> {
        self.outputs
            .iter()
            .filter_map(|(t, o)| match o {
                Output::RtcCreate {
                    conn,
                    peer: p,
                    offerer,
                } if *p == peer => Some((*t, *conn, *offerer)),
                _ => None,
            })
            .collect()
    }

    /// Connections the core closed (`RtcClose`), with the time.
    pub fn closes(&self) -> Vec<(Time, ConnId)> {
        self.outputs
            .iter()
            .filter_map(|(t, o)| match o {
                Output::RtcClose { conn } => Some((*t, *conn)),
                _ => None,
            })
            .collect()
    }

    /// Frames the core sent on `conn`.
    pub fn sent_on(&self, conn: ConnId) -> Vec<&Sent> {
        self.sent.iter().filter(|s| s.conn == conn).collect()
    }

    /// Signaling messages the core sent, with the time.
    pub fn signal_sent(&self) -> &[(Time, ClientMsg)] {
        &self.server.sent
    }

    pub fn http_for(&self, seq: u64) -> Vec<&HttpLog> {
        self.http.iter().filter(|h| h.seq == seq).collect()
    }

    pub fn http_cancels(&self) -> &BTreeSet<u64> {
        &self.http_cancelled
    }

    pub fn requests_to(&self, peer: PeerId) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.requests.len())
    }

    /// Number of chunks of `seq`.
    pub fn chunk_count(&self, seq: u64) -> usize {
        self.seg_len(seq).div_ceil(CHUNK_SIZE as u64) as usize
    }
}

/// The number of chunks in flight at peers in a `describe_segment` line
/// (`"…: have a/b (peer N, http M)…"`); 0 for an unknown segment.
pub fn chunks_on_peers(desc: &str) -> usize {
    desc.split_once("(peer ")
        .and_then(|(_, rest)| rest.split_once(','))
        .map_or(0, |(n, _)| {
            n.trim()
                .parse()
                .unwrap_or_else(|_| panic!("describe_segment format: {desc}"))
        })
}
