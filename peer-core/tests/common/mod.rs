//! Test harness for `peer-core`: one `PeerCore` under test, scripted fake remote peers that
//! answer its `Request` frames, an in-test origin that answers its `HttpStart`s, and a virtual
//! clock that jumps to the next scheduled event or to `poll_timeout()`.
//!
//! After every input the harness drains the core's outputs and checks the invariants that must
//! hold at every step (see [`Harness::check_step`]); violations panic with a description, so
//! proptest can shrink them.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use peer_core::{BanReason, Config, DisconnectReason, Event, Output, PeerCore, Time};
use protocol::signaling::ServerMsg;
use protocol::{AbsentReason, CHUNK_SIZE, Frame, HaveEntry, PeerId, SegmentManifest};

pub const SWARM: &str = "https://cdn.test/live/stream.m3u8#720p";
/// Our id, as given by the signaling server.
pub const ME: PeerId = 1;
/// Slot layout used by default: we are slot 999 of 1000 with one origin seeder per segment, so
/// we are never the designated (`seq % 1000 == 999`) nor the backup (`seq % 1000 == 998`)
/// seeder of the small sequence numbers the tests use, and fetch from the origin only as a
/// fallback.
pub const SLOT: u32 = 999;
pub const SLOTS: u32 = 1000;

/// The origin timing the harness assumes by default and that matches the core's initial
/// estimates before it has measured anything (first byte after 200 ms, then 1 MB/s).
pub const ORIGIN_RTT: Duration = Duration::from_millis(200);
pub const ORIGIN_RATE: f64 = 1_000_000.0;

pub fn config() -> Config {
    Config {
        swarm: SWARM.to_string(),
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
    /// One-way latency.
    pub latency: Duration,
    /// Uplink time per chunk.
    pub per_chunk: Duration,
    /// Segments held completely (announced in `Have` when the channel opens).
    pub holds: BTreeSet<u64>,
    /// Honour our `Cancel`s (drop chunks not sent yet). Off by default: late chunks for
    /// cancelled requests then reach the core, which must ignore them.
    pub honour_cancel: bool,
    /// Channel open (from the harness' point of view).
    pub open: bool,
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
            honour_cancel: false,
            open: false,
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
}

/// How the in-test origin answers one `HttpStart`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpBehaviour {
    Honest,
    /// Sends only this share (per mille) of the body, then `handle_http_done`.
    Truncate(u16),
    /// Sends this share (per mille) of the body, then `handle_http_failed`.
    Fail(u16),
    /// Sends the body followed by extra bytes, then `handle_http_done`.
    Longer,
    /// Flips one byte in the body.
    Corrupt,
}

pub struct Origin {
    pub segs: BTreeMap<u64, Bytes>,
    pub rtt: Duration,
    /// Bytes per second after the first byte.
    pub rate: f64,
    /// Bytes per `handle_http_data` call.
    pub piece: usize,
    /// Behaviours of the next requests, in order (then `Honest`).
    pub script: VecDeque<HttpBehaviour>,
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

#[derive(Debug, Clone)]
enum Ev {
    /// A frame from `peer` reaches the core.
    Frame {
        peer: PeerId,
        data: Bytes,
    },
    Open {
        peer: PeerId,
    },
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
        seq: u64,
        deadline: Time,
    },
    Buffered {
        peer: PeerId,
    },
}

pub struct Harness {
    pub core: PeerCore,
    pub cfg: Config,
    pub now: Time,
    pub origin: Origin,
    pub peers: BTreeMap<PeerId, FakePeer>,
    queue: BTreeMap<(Time, u64), Ev>,
    counter: u64,
    /// Every output except `Send`, with its time.
    pub outputs: Vec<(Time, Output)>,
    /// Every frame the core sent, decoded.
    pub sent: Vec<(Time, PeerId, Frame)>,
    pub http: Vec<HttpLog>,
    http_cancelled: BTreeSet<u64>,
    http_closed: BTreeSet<u64>,
    /// Segments delivered: seq -> times.
    pub delivered: BTreeMap<u64, Vec<Time>>,
    /// Deadlines of the wants issued.
    pub deadlines: BTreeMap<u64, Time>,
    /// Chunks the fake peers delivered to the core: (time, peer, req_id, seq, index, len).
    pub chunks_in: Vec<(Time, PeerId, u32, u64, u16, usize)>,
    /// Our request tracking: (peer, req_id) -> (seq, chunk indices not answered yet).
    pub outstanding: BTreeMap<(PeerId, u32), (u64, BTreeSet<u16>)>,
    /// Seqs whose HTTP fallback started (first HttpStart time).
    pub http_started: BTreeMap<u64, Time>,
    pub banned: BTreeMap<PeerId, BanReason>,
    /// Report `handle_buffered(peer, 0)` shortly after each send (the channel drains).
    pub drain_buffers: bool,
    /// Check `store_bytes <= store_cap` after every input.
    pub check_cap: bool,
    pub steps: u64,
    pub max_dup_seen: usize,
}

impl Harness {
    /// A core with `segs` (seq, len) known, joined as slot `SLOT` of `SLOTS`.
    pub fn new(cfg: Config, segs: &[(u64, usize)]) -> Self {
        Self::with_slot(cfg, segs, SLOT, SLOTS)
    }

    pub fn with_slot(cfg: Config, segs: &[(u64, usize)], slot: u32, slots: u32) -> Self {
        let core = PeerCore::new(cfg.clone());
        let origin = Origin {
            segs: segs.iter().map(|&(s, l)| (s, segment_data(s, l))).collect(),
            rtt: ORIGIN_RTT,
            rate: ORIGIN_RATE,
            piece: 5000,
            script: VecDeque::new(),
        };
        let mut h = Harness {
            core,
            cfg,
            now: Time::ZERO,
            origin,
            peers: BTreeMap::new(),
            queue: BTreeMap::new(),
            counter: 0,
            outputs: Vec::new(),
            sent: Vec::new(),
            http: Vec::new(),
            http_cancelled: BTreeSet::new(),
            http_closed: BTreeSet::new(),
            delivered: BTreeMap::new(),
            deadlines: BTreeMap::new(),
            chunks_in: Vec::new(),
            outstanding: BTreeMap::new(),
            http_started: BTreeMap::new(),
            banned: BTreeMap::new(),
            drain_buffers: true,
            check_cap: true,
            steps: 0,
            max_dup_seen: 0,
        };
        h.input(|c, now| {
            c.handle_signal(
                now,
                ServerMsg::Welcome {
                    peer_id: ME,
                    heartbeat_ms: 20_000,
                },
            )
        });
        h.input(|c, now| {
            c.handle_signal(
                now,
                ServerMsg::Joined {
                    swarm: SWARM.to_string(),
                    peers: vec![],
                    slot,
                    slots,
                },
            )
        });
        let all: Vec<(u64, Bytes)> = h.origin.segs.iter().map(|(s, d)| (*s, d.clone())).collect();
        for (seq, data) in all {
            let m = SegmentManifest::compute(seq, format!("seg{seq}.ts"), &data);
            h.input(|c, now| c.add_segment(now, m, url_of(seq)));
        }
        h
    }

    pub fn seg_len(&self, seq: u64) -> u64 {
        self.origin.segs[&seq].len() as u64
    }

    fn schedule(&mut self, at: Time, ev: Ev) {
        self.counter += 1;
        self.queue.insert((at.max(self.now), self.counter), ev);
    }

    /// Feeds one input to the core, then drains and checks its outputs.
    pub fn input(&mut self, f: impl FnOnce(&mut PeerCore, Time)) {
        f(&mut self.core, self.now);
        self.steps += 1;
        self.drain();
        self.check_step();
    }

    /// Adds a fake peer and opens a channel with it (the peer offers, we accept), then the peer
    /// sends `Hello` and its `Have` after its latency. Returns whether the core accepted.
    pub fn connect(&mut self, id: PeerId, peer: FakePeer) -> bool {
        self.peers.insert(id, peer);
        let mut ok = false;
        self.input(|c, now| ok = c.accept_incoming(now, id));
        if ok {
            self.open_channel(id);
        }
        ok
    }

    fn open_channel(&mut self, id: PeerId) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.open = true;
        }
        self.input(|c, now| c.handle_channel_open(now, id));
        let p = &self.peers[&id];
        let lat = p.latency;
        let mut frames = vec![Frame::Hello {
            swarm: SWARM.to_string(),
            max_inflight: 16,
        }];
        if matches!(p.behaviour, PeerBehaviour::Mute) {
            return;
        }
        let entries: Vec<HaveEntry> = p
            .holds
            .iter()
            .filter_map(|s| {
                self.origin.segs.get(s).map(|d| {
                    HaveEntry::complete(*s, protocol::manifest::chunk_count(d.len() as u64) as u16)
                })
            })
            .collect();
        if !entries.is_empty() {
            frames.push(Frame::Have { entries });
        }
        let t = self.now + lat;
        for f in frames {
            self.schedule(
                t,
                Ev::Frame {
                    peer: id,
                    data: f.encode(),
                },
            );
        }
    }

    /// Delivers `data` as a frame from `peer` at `at`.
    pub fn inject_at(&mut self, at: Time, peer: PeerId, data: Bytes) {
        self.schedule(at, Ev::Frame { peer, data });
    }

    pub fn want_at(&mut self, at: Time, seq: u64, deadline: Time) {
        self.schedule(at, Ev::Want { seq, deadline });
    }

    /// Reports `handle_buffered(peer, 0)` at `at`.
    pub fn buffered_at(&mut self, at: Time, peer: PeerId) {
        self.schedule(at, Ev::Buffered { peer });
    }

    pub fn close_at(&mut self, at: Time, peer: PeerId) {
        self.schedule(at, Ev::Close { peer });
    }

    fn drain(&mut self) {
        while let Some(o) = self.core.poll_output() {
            self.on_output(o);
        }
    }

    fn on_output(&mut self, o: Output) {
        let now = self.now;
        match &o {
            Output::Send { peer, frame } => {
                let f = Frame::decode(frame)
                    .unwrap_or_else(|e| panic!("core sent an undecodable frame to {peer}: {e}"));
                self.sent.push((now, *peer, f.clone()));
                if self.drain_buffers {
                    self.schedule(now + ms(1), Ev::Buffered { peer: *peer });
                }
                self.peer_receives(*peer, f);
                return;
            }
            Output::HttpStart {
                id,
                seq,
                url,
                range,
            } => {
                assert_eq!(url, &url_of(*seq), "HttpStart url for seq {seq}");
                self.http_started.entry(*seq).or_insert(now);
                self.origin_start(*id, *seq, *range);
            }
            Output::HttpCancel { id } => {
                self.http_cancelled.insert(*id);
            }
            Output::SegmentReady {
                seq,
                data,
                http_bytes,
                p2p_bytes,
            } => {
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
            Output::Connect { peer } => {
                assert!(
                    !self.banned.contains_key(peer),
                    "core connects to banned peer {peer}"
                );
                if self.peers.contains_key(peer) {
                    self.schedule(now + ms(30), Ev::Open { peer: *peer });
                }
            }
            Output::Disconnect { peer, .. } => {
                if let Some(p) = self.peers.get_mut(peer) {
                    p.open = false;
                }
                self.outstanding.retain(|(p, _), _| p != peer);
            }
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
        match f {
            Frame::Request {
                req_id,
                seq,
                first,
                count,
            } => {
                p.requests.push((now, req_id, seq, first, count));
                let data = self.origin.segs.get(&seq).cloned();
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
                    self.schedule(at, Ev::Frame { peer: id, data });
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
            self.input(|c, now| c.handle_timeout(now));
        }
        true
    }

    pub fn run_until(&mut self, limit: Time) {
        while self.step_until(limit) {}
        self.now = self.now.max(limit);
    }

    /// Runs until `done(self)` or `limit`.
    pub fn run_while(&mut self, limit: Time, mut go_on: impl FnMut(&Self) -> bool) {
        while go_on(self) && self.step_until(limit) {}
    }

    fn process(&mut self, ev: Ev) {
        match ev {
            Ev::Frame { peer, data } => {
                if !self.peers.get(&peer).is_none_or(|p| p.open) {
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
                self.input(|c, now| c.handle_frame(now, peer, data));
            }
            Ev::Open { peer } => self.open_channel(peer),
            Ev::Close { peer } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.open = false;
                }
                self.outstanding.retain(|(p, _), _| *p != peer);
                self.input(|c, now| c.handle_channel_closed(now, peer));
            }
            Ev::HttpData { id, data } => {
                if self.http_cancelled.contains(&id) || self.http_closed.contains(&id) {
                    return;
                }
                self.input(|c, now| c.handle_http_data(now, id, &data));
            }
            Ev::HttpDone { id } => {
                if self.http_cancelled.contains(&id) || !self.http_closed.insert(id) {
                    return;
                }
                self.input(|c, now| c.handle_http_done(now, id));
            }
            Ev::HttpFailed { id } => {
                if self.http_cancelled.contains(&id) || !self.http_closed.insert(id) {
                    return;
                }
                self.input(|c, now| c.handle_http_failed(now, id));
            }
            Ev::Want { seq, deadline } => {
                self.deadlines.insert(seq, deadline);
                self.input(|c, now| {
                    c.want_segment(now, seq, deadline)
                        .unwrap_or_else(|e| panic!("want_segment({seq}): {e}"))
                });
            }
            Ev::Buffered { peer } => {
                self.input(|c, now| c.handle_buffered(now, peer, 0));
            }
        }
    }

    /// Invariants that hold after every input:
    /// * the core's own accounting is consistent (`check_invariants`);
    /// * the store is under its cap;
    /// * no chunk is outstanding at two peers at once unless the segment's HTTP fallback
    ///   started (requests tracked from the `Request` frames sent, minus the chunks and
    ///   `Absent`s delivered, the `Cancel`s sent and the peers dropped);
    /// * every chunk the core says is in flight at a peer is outstanding there in our tracking
    ///   (so the tracking above is not vacuous).
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
            for (i, peer) in self.core.chunks_in_flight(seq) {
                let tracked = self
                    .outstanding
                    .iter()
                    .any(|((p, _), (s, set))| *p == peer && *s == seq && set.contains(&(i as u16)));
                assert!(
                    tracked,
                    "core says {seq}/{i} is in flight at {peer}, harness has no such request"
                );
            }
        }
    }

    // ------------------------------------------------------------ queries

    pub fn disconnects(&self, peer: PeerId) -> Vec<DisconnectReason> {
        self.outputs
            .iter()
            .filter_map(|(_, o)| match o {
                Output::Disconnect { peer: p, reason } if *p == peer => Some(reason.clone()),
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

    pub fn connects(&self, peer: PeerId) -> Vec<Time> {
        self.outputs
            .iter()
            .filter_map(|(t, o)| match o {
                Output::Connect { peer: p } if *p == peer => Some(*t),
                _ => None,
            })
            .collect()
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
