//! What the page sees: events for its listeners and the `stats()` object, as plain JS objects
//! (no JSON or float formatting in the bundle).

use js_sys::Reflect;
use peer_core::{BanReason, DisconnectReason, Event};
use protocol::PeerId;
use wasm_bindgen::JsValue;

use crate::Inner;

/// A number for JavaScript (exact below 2^53).
pub(crate) fn num(n: u64) -> JsValue {
    JsValue::from_f64(n as f64)
}

fn set_all(o: &JsValue, fields: &[(&str, JsValue)]) {
    for (k, v) in fields {
        let _ = Reflect::set(o, &JsValue::from_str(k), v);
    }
}

/// A plain object with `fields` in this order.
pub(crate) fn obj(fields: &[(&str, JsValue)]) -> JsValue {
    let o: JsValue = js_sys::Object::new().into();
    set_all(&o, fields);
    o
}

impl Inner {
    /// Queues `arg()` for the listeners of `name` (built only when there is one).
    pub(crate) fn emit(&mut self, name: &str, arg: impl FnOnce() -> JsValue) {
        if self.listeners.iter().any(|(n, _)| n == name) {
            let arg = arg();
            for (n, f) in &self.listeners {
                if n == name {
                    self.deferred.push((f.clone(), arg.clone()));
                }
            }
        }
    }

    pub(crate) fn on_event(&mut self, ev: Event) {
        let peer_event = |peer: PeerId, state: &str, reason: &str| {
            obj(&[
                ("peer", num(peer)),
                ("state", state.into()),
                ("reason", reason.into()),
            ])
        };
        match ev {
            Event::PeerConnected { peer } => self.emit("peer", || {
                obj(&[("peer", num(peer)), ("state", "connected".into())])
            }),
            Event::PeerDisconnected { peer, reason } => {
                let r = match reason {
                    DisconnectReason::Banned => "banned",
                    DisconnectReason::Left => "left",
                    DisconnectReason::Timeout => "timeout",
                    DisconnectReason::WrongSwarm => "wrong_swarm",
                    DisconnectReason::Duplicate => "duplicate",
                    DisconnectReason::Reoffered => "reoffered",
                    DisconnectReason::Closing => "closing",
                };
                self.emit("peer", || peer_event(peer, "disconnected", r))
            }
            Event::PeerBanned { peer, reason } => {
                if self.banned.len() < 256 {
                    self.banned.push(peer);
                }
                let r = match reason {
                    BanReason::BadChunk => "bad_chunk",
                    BanReason::Unsolicited => "unsolicited",
                    BanReason::TooManyBytes => "too_many_bytes",
                    BanReason::Malformed(_) => "malformed",
                    BanReason::Flood => "flood",
                };
                self.emit("peer", || peer_event(peer, "banned", r))
            }
            Event::IntegrityFailure { peer, seq, chunk } => self.emit("integrity", || {
                obj(&[
                    ("peer", peer.map_or(JsValue::NULL, num)),
                    ("seq", num(seq)),
                    ("chunk", num(chunk as u64)),
                ])
            }),
            Event::SignalingError { code, .. } => {
                self.emit("error", || obj(&[("code", code.as_str().into())]))
            }
            // Our id is in `stats().peerId`.
            Event::Welcomed { ice_servers, .. } => {
                if !ice_servers.is_empty() {
                    let list = js_sys::Array::new();
                    for s in ice_servers {
                        let urls: js_sys::Array =
                            s.urls.iter().map(|u| JsValue::from_str(u)).collect();
                        let o = obj(&[("urls", urls.into())]);
                        if let Some(u) = s.username {
                            set_all(&o, &[("username", u.into())]);
                        }
                        if let Some(c) = s.credential {
                            set_all(&o, &[("credential", c.into())]);
                        }
                        list.push(&o);
                    }
                    self.welcome_ice = list.into();
                }
            }
            Event::ChunkReceived {
                peer,
                seq,
                chunk,
                bytes,
            } => self.emit("chunk", || {
                obj(&[
                    ("source", if peer.is_some() { "p2p" } else { "http" }.into()),
                    ("peer", peer.map_or(JsValue::NULL, num)),
                    ("seq", num(seq)),
                    ("chunk", num(chunk as u64)),
                    ("bytes", num(bytes as u64)),
                ])
            }),
            Event::ChunkUploaded {
                peer,
                seq,
                chunk,
                bytes,
            } => self.emit("upload", || {
                obj(&[
                    ("peer", num(peer)),
                    ("seq", num(seq)),
                    ("chunk", num(chunk as u64)),
                    ("bytes", num(bytes as u64)),
                ])
            }),
        }
    }

    pub(crate) fn stats_value(&self) -> JsValue {
        let peers = self.core.as_ref().map_or(0, |c| c.open_peers().count());
        let o = obj(&[
            ("peers", num(peers as u64)),
            ("connections", num(self.conns.len() as u64)),
        ]);
        if let Some(c) = &self.core {
            // The page's totals: this core's counters plus those of the cores it replaced.
            let mut st = self.past.clone();
            st.absorb(c.stats());
            let st = &st;
            set_all(
                &o,
                &[
                    ("peerId", c.peer_id().map_or(JsValue::NULL, num)),
                    ("httpBytes", num(st.http_bytes)),
                    ("p2pBytes", num(st.p2p_bytes)),
                    ("deliveredHttpBytes", num(st.delivered_http_bytes)),
                    ("deliveredP2pBytes", num(st.delivered_p2p_bytes)),
                    ("uploadedBytes", num(st.uploaded_bytes)),
                    ("segments", num(st.segments_delivered)),
                    ("integrityFailures", num(st.integrity_failures.into())),
                    ("peersBanned", num(st.peers_banned.into())),
                    ("stalls", num(st.stalls.into())),
                    ("httpRequests", num(st.http_requests)),
                    ("offload", JsValue::from_f64(st.offload())),
                    ("originBps", num((c.origin_throughput() * 8.0) as u64)),
                    // Where bytes go twice or late (`p2pcdn-load`'s waste figures, issue 17).
                    ("dupHttpBytes", num(st.dup_http_bytes)),
                    ("dupP2pBytes", num(st.dup_p2p_bytes)),
                    // A gauge of the current core (not summed over replaced ones).
                    ("uplinkBps", num(c.stats().uplink_bps)),
                    ("serveBusy", num(st.serve_busy)),
                    ("httpDesignated", num(st.http_designated)),
                    ("httpBackup", num(st.http_backup)),
                    ("httpLate", num(st.http_late)),
                    ("httpAlone", num(st.http_alone)),
                    ("httpShare", num(st.http_share)),
                    ("peerRequestTimeouts", num(st.peer_request_timeouts)),
                ],
            );
            // Chunks from peers by request → arrival time (`Stats::chunk_ms`, issue 17).
            let ms: js_sys::Array = st.chunk_ms.iter().map(|n| num(*n)).collect();
            set_all(&o, &[("chunkMs", ms.into())]);
        }
        let banned: js_sys::Array = self.banned.iter().map(|p| num(*p)).collect();
        set_all(&o, &[("banned", banned.into())]);
        o
    }

    pub(crate) fn on_tick(&mut self) {
        // Built only for a page that listens (the object costs a few dozen JS calls).
        if self.listeners.iter().any(|(n, _)| n == "stats") {
            let stats = self.stats_value();
            self.emit("stats", || stats);
        }
    }
}
