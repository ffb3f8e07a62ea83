//! The signaling session: one WebSocket at a time, `welcome` → `join` → members and slots;
//! pings at half the server's heartbeat; on loss, reconnect with jittered exponential backoff
//! (or when the server's `reconnect` says) and join again. Peers keep their channels meanwhile.

use std::time::Duration;

use protocol::PeerId;
use protocol::signaling::{ClientMsg, MAX_ICE_SERVERS, ServerMsg};
use rand::Rng;

use crate::{DisconnectReason, Event, Output, PeerCore, Time};

/// Where the WebSocket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Link {
    /// Not used (HTTP-only viewer) or closed for good.
    #[default]
    Off,
    /// `SignalConnect` asked for at `since`; waiting for `welcome`.
    Connecting { since: Time },
    /// Welcomed.
    Up,
    /// Lost; `SignalConnect` again at `at`.
    Waiting { at: Time },
}

#[derive(Debug, Default)]
pub struct Session {
    pub link: Link,
    /// Our id from the latest `welcome` (a reconnect gives a new one).
    pub me: Option<PeerId>,
    pub joined: bool,
    pub slot: Option<(u32, u32)>,
    /// Connection failures in a row (reset by `welcome`).
    pub failures: u32,
    pub ping_every: Option<Duration>,
    pub ping_at: Option<Time>,
    /// When we may ask the server for more members next.
    pub want_peers_at: Time,
    /// Which signaling server to connect to when the driver has a list (the nodes of a
    /// cluster): the driver takes `urls[server % urls.len()]`. Starts at a point drawn from the
    /// seed (viewers spread over the nodes) and moves to the next one after every lost or
    /// failed connection and every `reconnect` (a node going away or dead sends its viewers to
    /// the others).
    pub server: u32,
}

/// Asking for members again is throttled to this.
pub(crate) const WANT_PEERS_INTERVAL: Duration = Duration::from_secs(5);

impl PeerCore {
    /// The signaling server to use for the connection asked for by the latest
    /// [`Output::SignalConnect`] (see [`Session::server`]).
    pub fn signal_server(&self) -> u32 {
        self.session.server
    }

    pub(crate) fn start_session(&mut self, now: Time) {
        // From the seed, not the rng: a driver with one URL sees the same random sequence.
        // Below 1024, so that counting up never wraps (which would skip a server).
        self.session.server = (splitmix(self.cfg.seed) >> 54) as u32;
        if self.cfg.p2p || self.cfg.upload {
            self.connect_signaling(now);
        }
    }

    fn connect_signaling(&mut self, now: Time) {
        self.session.link = Link::Connecting { since: now };
        self.out.push_back(Output::SignalConnect);
    }

    pub(crate) fn on_signal_opened(&mut self, _now: Time) {
        // Nothing to do until `welcome`; the connect timer keeps running.
    }

    /// The WebSocket is gone: come back after a jittered, growing delay.
    pub(crate) fn on_signal_closed(&mut self, now: Time) {
        if matches!(self.session.link, Link::Off | Link::Waiting { .. }) {
            return;
        }
        let n = self.session.failures.min(16);
        self.session.failures += 1;
        let base = self
            .cfg
            .reconnect_min
            .saturating_mul(1u32 << n.min(16))
            .min(self.cfg.reconnect_max);
        // ±50 %: a restarted server is not stampeded by every viewer at once.
        let delay = base.mul_f64(0.5 + self.rng.r#gen::<f64>());
        self.lose_link(now + delay);
    }

    /// The next connection goes to the next server of the driver's list.
    fn next_server(&mut self) {
        self.session.server = self.session.server.wrapping_add(1);
    }

    fn lose_link(&mut self, at: Time) {
        self.next_server();
        if self.session.link == Link::Up || self.session.joined {
            self.stats.signal_reconnects += 1;
        }
        self.session.link = Link::Waiting { at };
        self.session.joined = false;
        self.session.ping_at = None;
    }

    pub(crate) fn on_server_msg(&mut self, now: Time, msg: ServerMsg) {
        let swarm = self.cfg.swarm.clone();
        match msg {
            ServerMsg::Welcome {
                peer_id,
                heartbeat_ms,
                mut ice_servers,
            } => {
                self.session.link = Link::Up;
                self.session.failures = 0;
                if self.session.me.is_some_and(|old| old != peer_id) {
                    // A new session (the server restarted, or we reconnected elsewhere): ids
                    // from the old one mean nothing here (the server would refuse to relay to
                    // them). The new `joined` introduces who is there now.
                    self.remotes.candidates.clear();
                }
                self.session.me = Some(peer_id);
                // Ping at half the heartbeat so one lost ping does not get us dropped.
                let every = Duration::from_millis(u64::from(heartbeat_ms.max(1000)) / 2);
                self.session.ping_every = Some(every);
                self.session.ping_at = Some(now + every);
                self.out.push_back(Output::Event(Event::Welcomed {
                    peer_id,
                    ice_servers: {
                        ice_servers.truncate(MAX_ICE_SERVERS);
                        ice_servers
                    },
                }));
                self.out.push_back(Output::SignalSend(ClientMsg::Join {
                    swarm,
                    token: self.cfg.token.clone(),
                }));
            }
            ServerMsg::Joined {
                swarm: s,
                peers,
                slot,
                slots,
            } if s == swarm => {
                self.session.joined = true;
                self.session.slot = Some((slot, slots.max(1)));
                self.add_candidates(peers);
                self.joined_now(now);
            }
            ServerMsg::Peers { swarm: s, peers } if s == swarm => self.add_candidates(peers),
            ServerMsg::Slot {
                swarm: s,
                slot,
                slots,
            } if s == swarm => {
                self.session.slot = Some((slot, slots.max(1)));
            }
            ServerMsg::PeerLeft { swarm: s, peer } if s == swarm => {
                if self.remotes.peers.contains_key(&peer) {
                    self.drop_peer(now, peer, DisconnectReason::Left);
                }
                self.remotes.candidates.retain(|p| *p != peer);
            }
            ServerMsg::Signal {
                swarm: s,
                from,
                data,
            } if s == swarm => self.on_remote_signal(now, from, data),
            ServerMsg::Error { code, message, .. } => {
                self.out
                    .push_back(Output::Event(Event::SignalingError { code, message }));
            }
            ServerMsg::Reconnect { after_ms } => {
                // The server is going away: close now, come back when it says.
                self.out.push_back(Output::SignalClose);
                self.lose_link(now + Duration::from_millis(u64::from(after_ms)));
            }
            _ => {}
        }
    }

    pub(crate) fn session_timers(&mut self, now: Time) {
        match self.session.link {
            Link::Connecting { since } if now >= since + self.cfg.signal_timeout => {
                self.out.push_back(Output::SignalClose);
                self.on_signal_closed(now);
            }
            Link::Waiting { at } if now >= at => self.connect_signaling(now),
            _ => {}
        }
        if let Some(t) = self.session.ping_at
            && now >= t
        {
            self.out.push_back(Output::SignalSend(ClientMsg::Ping));
            self.session.ping_at = self.session.ping_every.map(|e| now + e);
        }
    }

    pub(crate) fn session_timeouts(&self, at: &mut impl FnMut(Time)) {
        match self.session.link {
            Link::Connecting { since } => at(since + self.cfg.signal_timeout),
            Link::Waiting { at: t } => at(t),
            _ => {}
        }
        if let Some(t) = self.session.ping_at {
            at(t);
        }
    }

    /// Asks the server for more members when we have few and know of none.
    pub(crate) fn want_more_peers(&mut self, now: Time) {
        if self.session.joined
            && self.remotes.peers.len() < self.cfg.max_peers / 2
            && self.remotes.candidates.is_empty()
            && now >= self.session.want_peers_at
        {
            self.session.want_peers_at = now + WANT_PEERS_INTERVAL;
            self.out.push_back(Output::SignalSend(ClientMsg::WantPeers {
                swarm: self.cfg.swarm.clone(),
            }));
        }
    }

    pub(crate) fn leave_session(&mut self) {
        if self.session.link == Link::Up {
            self.out.push_back(Output::SignalSend(ClientMsg::Leave {
                swarm: self.cfg.swarm.clone(),
            }));
        }
        if self.session.link != Link::Off {
            self.out.push_back(Output::SignalClose);
        }
        self.session.link = Link::Off;
        self.session.joined = false;
        self.session.ping_at = None;
    }
}

/// splitmix64's finaliser (a fixed, well-mixed function of the seed).
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
