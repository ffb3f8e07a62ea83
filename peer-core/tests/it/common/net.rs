//! Several real cores wired together, as a tiny driver of each: a signaling server that welcomes
//! them, lists members and relays their handshakes in order, data channels that carry frames
//! between paired connections, and an origin that serves segments and the manifest. One
//! virtual clock; every core's `check_invariants()` after each of its inputs.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use peer_core::{Config, ConnId, Input, Output, PeerCore, Time};
use protocol::signaling::{ClientMsg, ServerMsg, SignalData};
use protocol::{Manifest, PeerId};

use super::SWARM;

/// One end of a data connection as the wiring sees it.
#[derive(Debug, Clone)]
pub struct Wire {
    pub peer: PeerId,
    pub offerer: bool,
    /// The other side's connection, once the offer or answer named it.
    pub remote: Option<ConnId>,
}

pub struct Node {
    pub core: PeerCore,
    /// Id the server gives it.
    pub id: PeerId,
    pub slot: u32,
    /// Members the server lists in its `Joined`.
    pub introduce: Vec<PeerId>,
    /// One-way delay of everything sent to this node (signaling and data).
    pub latency: Duration,
    pub wires: BTreeMap<ConnId, Wire>,
    /// Every output, with its time.
    pub outputs: Vec<(Time, Output)>,
}

pub struct Net {
    pub nodes: BTreeMap<PeerId, Node>,
    pub now: Time,
    queue: BTreeMap<(Time, u64), (PeerId, Input)>,
    counter: u64,
    pub slots: u32,
    /// Segment bytes by URL, and the manifest the origin serves.
    pub origin: BTreeMap<String, Bytes>,
    pub manifest: Manifest,
    pub origin_rtt: Duration,
    pub steps: u64,
}

impl Net {
    pub fn new(slots: u32) -> Self {
        Net {
            nodes: BTreeMap::new(),
            now: Time::ZERO,
            queue: BTreeMap::new(),
            counter: 0,
            slots,
            origin: BTreeMap::new(),
            manifest: Manifest::default(),
            origin_rtt: Duration::from_millis(200),
            steps: 0,
        }
    }

    /// Adds a core that the server will know as `id` (its first outputs are performed now).
    pub fn add(&mut self, id: PeerId, cfg: Config, slot: u32, introduce: Vec<PeerId>) {
        let core = PeerCore::new(cfg);
        self.nodes.insert(
            id,
            Node {
                core,
                id,
                slot,
                introduce,
                latency: Duration::from_millis(10),
                wires: BTreeMap::new(),
                outputs: Vec::new(),
            },
        );
        self.drain(id);
    }

    fn schedule(&mut self, at: Time, to: PeerId, input: Input) {
        self.counter += 1;
        self.queue
            .insert((at.max(self.now), self.counter), (to, input));
    }

    fn latency(&self, to: PeerId) -> Duration {
        self.nodes[&to].latency
    }

    /// Feeds `input` to node `id` now.
    pub fn input(&mut self, id: PeerId, input: Input) {
        let now = self.now;
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        n.core.handle(now, input);
        self.steps += 1;
        if let Err(e) = n.core.check_invariants() {
            panic!("node {id}: core invariant broken at {now:?}: {e}");
        }
        self.drain(id);
    }

    fn drain(&mut self, id: PeerId) {
        loop {
            let now = self.now;
            let Some(n) = self.nodes.get_mut(&id) else {
                return;
            };
            let Some(o) = n.core.poll_output() else {
                return;
            };
            n.outputs.push((now, o.clone()));
            self.perform(id, o);
        }
    }

    fn perform(&mut self, id: PeerId, o: Output) {
        let now = self.now;
        let lat_in = self.latency(id);
        match o {
            Output::SignalConnect => {
                self.schedule(now + lat_in, id, Input::SignalOpened);
                let welcome = ServerMsg::Welcome {
                    peer_id: id,
                    heartbeat_ms: 20_000,
                    ice_servers: Vec::new(),
                };
                self.schedule(now + lat_in, id, Input::SignalMessage(welcome));
            }
            Output::SignalSend(ClientMsg::Join { swarm, .. }) => {
                let n = &self.nodes[&id];
                let joined = ServerMsg::Joined {
                    swarm,
                    peers: n.introduce.clone(),
                    slot: n.slot,
                    slots: self.slots,
                };
                self.schedule(now + lat_in, id, Input::SignalMessage(joined));
            }
            Output::SignalSend(ClientMsg::Signal { to, data, .. })
                if self.nodes.contains_key(&to) =>
            {
                let msg = ServerMsg::Signal {
                    swarm: SWARM.into(),
                    from: id,
                    data,
                };
                let t = now + self.latency(to);
                self.schedule(t, to, Input::SignalMessage(msg));
            }
            Output::RtcCreate {
                conn,
                peer,
                offerer,
            } => {
                let n = self.nodes.get_mut(&id).expect("node");
                let wire = Wire {
                    peer,
                    offerer,
                    remote: None,
                };
                assert!(n.wires.insert(conn, wire).is_none(), "conn {conn} reused");
                if offerer {
                    let sdp = format!("offer {id} {conn}");
                    let data = SignalData::Offer { sdp };
                    self.schedule(now, id, Input::RtcLocal { conn, data });
                }
            }
            Output::RtcRemote { conn, data } => {
                let Some(w) = self.nodes.get_mut(&id).and_then(|n| n.wires.get_mut(&conn)) else {
                    panic!("node {id}: RtcRemote for unknown conn {conn}");
                };
                match data {
                    SignalData::Offer { sdp } => {
                        w.remote = Some(parse_conn(&sdp));
                        self.schedule(now, id, Input::RtcRemoteApplied { conn });
                        let sdp = format!("answer {id} {conn}");
                        let data = SignalData::Answer { sdp };
                        self.schedule(now, id, Input::RtcLocal { conn, data });
                    }
                    SignalData::Answer { sdp } => {
                        let rc = parse_conn(&sdp);
                        w.remote = Some(rc);
                        let peer = w.peer;
                        self.schedule(now, id, Input::RtcRemoteApplied { conn });
                        // Both descriptions are set: the channel opens on both ends (when the
                        // answering end still has that connection).
                        let paired = self
                            .nodes
                            .get(&peer)
                            .and_then(|n| n.wires.get(&rc))
                            .is_some_and(|w| w.remote == Some(conn));
                        if paired {
                            let t = now + Duration::from_millis(5);
                            self.schedule(t, id, Input::RtcOpen { conn });
                            self.schedule(t, peer, Input::RtcOpen { conn: rc });
                        }
                    }
                    SignalData::Candidate { .. } => {}
                }
            }
            Output::RtcSend { conn, frame } => {
                let w = self.nodes[&id]
                    .wires
                    .get(&conn)
                    .unwrap_or_else(|| panic!("node {id} sent on unknown conn {conn}"))
                    .clone();
                if let Some(rc) = w.remote
                    && self
                        .nodes
                        .get(&w.peer)
                        .is_some_and(|n| n.wires.contains_key(&rc))
                {
                    let t = now + self.latency(w.peer);
                    self.schedule(
                        t,
                        w.peer,
                        Input::RtcMessage {
                            conn: rc,
                            data: frame,
                        },
                    );
                    self.schedule(t, id, Input::RtcBuffered { conn, amount: 0 });
                }
            }
            Output::RtcClose { conn } => {
                let w = self
                    .nodes
                    .get_mut(&id)
                    .and_then(|n| n.wires.remove(&conn))
                    .unwrap_or_else(|| panic!("node {id} closed unknown conn {conn}"));
                if let Some(rc) = w.remote
                    && self
                        .nodes
                        .get(&w.peer)
                        .is_some_and(|n| n.wires.contains_key(&rc))
                {
                    let t = now + self.latency(w.peer);
                    self.schedule(t, w.peer, Input::RtcClosed { conn: rc });
                }
            }
            Output::HttpStart {
                id: hid,
                url,
                range,
            } => {
                let data = self.origin.get(&url).cloned().expect("origin has the url");
                let (a, b) = range.unwrap_or((0, data.len() as u64));
                let t = now + self.origin_rtt;
                let body = data.slice(a as usize..b as usize);
                self.schedule(
                    t,
                    id,
                    Input::HttpData {
                        id: hid,
                        data: body,
                    },
                );
                self.schedule(t, id, Input::HttpDone { id: hid });
            }
            Output::FetchManifest { url } => {
                let manifest = self.manifest.clone();
                self.schedule(now + lat_in, id, Input::ManifestLoaded { url, manifest });
            }
            _ => {}
        }
    }

    /// Wire-level: closes node `id`'s connection `conn` from the outside (e.g. the network).
    pub fn deliver_closed(&mut self, id: PeerId, conn: ConnId) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.wires.remove(&conn);
        }
        self.input(id, Input::RtcClosed { conn });
    }

    /// Processes the next event or timer at or before `limit`; false when there is none.
    pub fn step_until(&mut self, limit: Time) -> bool {
        let next_ev = self.queue.keys().next().map(|k| k.0);
        let next_to = self
            .nodes
            .values()
            .filter_map(|n| n.core.poll_timeout())
            .min();
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
        assert!(self.steps < 1_000_000, "livelock");
        self.now = self.now.max(t);
        if next_ev.is_some_and(|e| e <= t) {
            if let Some((_, (to, input))) = self.queue.pop_first() {
                self.input(to, input);
            }
        } else {
            let due: Vec<PeerId> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.core.poll_timeout().is_some_and(|x| x <= t))
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                self.input(id, Input::Timeout);
            }
        }
        true
    }

    pub fn run_until(&mut self, limit: Time) {
        while self.step_until(limit) {}
        self.now = self.now.max(limit);
    }

    pub fn run_while(&mut self, limit: Time, mut go_on: impl FnMut(&Self) -> bool) {
        while go_on(self) && self.step_until(limit) {}
    }

    pub fn node(&self, id: PeerId) -> &Node {
        &self.nodes[&id]
    }
}

/// The connection number in a fake SDP (`"offer <node> <conn>"`, `"answer <node> <conn>"`).
fn parse_conn(sdp: &str) -> ConnId {
    sdp.rsplit(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("fake sdp {sdp}"))
}
