//! [`PeerCore`]: the state sub-structs, the one input entry point and the output queue.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use protocol::PeerId;
use protocol::signaling::{ClientMsg, StatsReport};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::http::Http;
use crate::manifest::Manifests;
use crate::remotes::Remotes;
use crate::scheduler::Scheduler;
use crate::session::Session;
use crate::store::Store;
use crate::upload::Upload;
use crate::{Config, ConfigError, Input, Output, Stats, Time};

/// How often the core reports its counters to the signaling server.
const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// The sans-IO peer: see the crate docs.
pub struct PeerCore {
    pub(crate) cfg: Config,
    pub(crate) rng: SmallRng,
    /// Random, fixed for the life of the core: sent in `Hello` so that a viewer reached twice
    /// (under an old and a new peer id after a signaling restart) is recognised.
    pub(crate) instance: u64,
    /// Time of the latest input (timers at or before it have been handled).
    pub(crate) now: Time,
    pub(crate) out: VecDeque<Output>,
    pub(crate) session: Session,
    pub(crate) remotes: Remotes,
    pub(crate) store: Store,
    pub(crate) http: Http,
    pub(crate) sched: Scheduler,
    pub(crate) upload: Upload,
    pub(crate) share: crate::share::OriginShare,
    pub(crate) manifests: Manifests,
    pub(crate) stats: Stats,
    stats_at: Time,
    /// Our counters when we last joined: reports to the server count from there.
    joined_base: StatsReport,
    closed: bool,
}

impl PeerCore {
    /// A new peer whose clock starts at [`Time::ZERO`]. Its first outputs (connect to
    /// signaling, fetch the manifest) are queued already: drain [`PeerCore::poll_output`] right
    /// away. Never fails: what the core cannot run with is fixed first ([`Config::clamped`]);
    /// [`PeerCore::try_new`] refuses any config that makes no sense instead.
    pub fn new(cfg: Config) -> Self {
        Self::new_at(cfg, Time::ZERO)
    }

    /// Like [`PeerCore::new`], for a config [`Config::validate`] accepts.
    pub fn try_new(cfg: Config) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self::new(cfg))
    }

    /// A new peer made at `now` (for drivers whose clock does not start with the peer, like the
    /// simulator's). The config is [`Config::clamped`], as in [`PeerCore::new`].
    pub fn new_at(cfg: Config, now: Time) -> Self {
        let cfg = cfg.clamped();
        let mut rng = SmallRng::seed_from_u64(cfg.seed);
        let instance = rng.r#gen::<u64>() | 1;
        let upload = Upload::new(&cfg);
        let manifests = Manifests::new(&cfg);
        let mut core = PeerCore {
            rng,
            instance,
            now: Time::ZERO,
            out: VecDeque::new(),
            session: Session::default(),
            remotes: Remotes::default(),
            store: Store::default(),
            http: Http::default(),
            sched: Scheduler::default(),
            upload,
            share: Default::default(),
            manifests,
            stats: Stats::default(),
            stats_at: Time::ZERO,
            joined_base: StatsReport::default(),
            closed: false,
            cfg,
        };
        core.now = now;
        core.remotes.next_conn = core.cfg.id_base;
        core.http.next = core.cfg.id_base.saturating_add(1);
        core.start_session(now);
        core.poll_manifest(now);
        core
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// Our id from the signaling server's latest `welcome`.
    pub fn peer_id(&self) -> Option<PeerId> {
        self.session.me
    }
    /// This viewer's seeding slot and the slot count, once joined.
    pub fn slot(&self) -> Option<(u32, u32)> {
        self.session.slot
    }
    /// Whether the signaling session is joined to the swarm now.
    pub fn joined(&self) -> bool {
        self.session.joined
    }
    /// The origin's throughput as measured on this peer's own origin requests (bytes/s, EWMA):
    /// what the player's bandwidth estimate should see for fragments that came from peers.
    pub fn origin_throughput(&self) -> f64 {
        self.http.rate
    }
    /// Bytes held in the segment store.
    pub fn store_bytes(&self) -> usize {
        self.store.bytes
    }
    pub fn is_banned(&self, peer: PeerId) -> bool {
        self.remotes.banned.contains(&peer)
    }
    /// Peers whose data channel is open and in use (past the open grace; their `Hello` may
    /// still be on its way).
    pub fn open_peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.remotes
            .peers
            .iter()
            .filter(|(_, r)| r.open)
            .map(|(p, _)| *p)
    }
    /// Peer connections in any state (connecting included).
    pub fn connections(&self) -> usize {
        self.remotes.peers.len()
    }
    /// What `peer` announced in its `Have`s and we keep (at most
    /// [`crate::remotes::MAX_REMOTE_HAVE`] entries and [`crate::remotes::MAX_REMOTE_HAVE_BYTES`]
    /// bitmap bytes), lowest sequence number first.
    pub fn peer_haves(&self, peer: PeerId) -> impl Iterator<Item = &protocol::HaveEntry> + '_ {
        self.remotes
            .peers
            .get(&peer)
            .into_iter()
            .flat_map(|r| r.have.values())
    }
    /// Bitmap bytes kept for all peers' `Have`s (each an own copy: see
    /// [`crate::remotes::Haves`]).
    pub fn retained_have_bytes(&self) -> usize {
        self.remotes.peers.values().map(|r| r.have.bytes()).sum()
    }
    /// Whether the store holds segment `seq` completely.
    pub fn has_segment(&self, seq: u64) -> bool {
        self.store.segments.get(&seq).is_some_and(|s| s.complete())
    }

    /// Next output for the driver to perform.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Feeds one input. `now` must not go backwards (an earlier time is taken as the latest).
    pub fn handle(&mut self, now: Time, input: Input) {
        let now = now.max(self.now);
        if self.closed {
            self.now = now;
            return;
        }
        // Whether a timer of the transfer machinery is due: housekeeping wake-ups (pings,
        // manifest polls) must not run a scheduling pass with nothing new to decide on, which
        // only re-rolls peer picks (measured: it costs offload).
        let work_due = self.next_work_timer().is_some_and(|t| t <= now);
        self.now = now;
        let changed = match input {
            Input::Timeout => {
                self.session_timers(now);
                self.manifest_timers(now);
                self.remote_timers(now);
                work_due
            }
            Input::SignalOpened => {
                self.on_signal_opened(now);
                false
            }
            Input::SignalMessage(msg) => {
                self.on_server_msg(now, msg);
                true
            }
            Input::SignalClosed => {
                self.on_signal_closed(now);
                false
            }
            Input::RtcLocal { conn, data } => {
                self.on_rtc_local(conn, data);
                false
            }
            Input::RtcRemoteApplied { conn } => {
                self.on_rtc_remote_applied(conn);
                false
            }
            Input::RtcOpen { conn } => {
                self.on_rtc_open(now, conn);
                true
            }
            Input::RtcMessage { conn, data } => self.on_rtc_message(now, conn, data),
            Input::RtcBuffered { conn, amount } => {
                self.on_rtc_buffered(now, conn, amount);
                true
            }
            Input::RtcClosed { conn } => {
                self.on_rtc_closed(now, conn);
                true
            }
            Input::HttpData { id, data } => {
                self.on_http_data(now, id, &data);
                true
            }
            Input::HttpDone { id } => {
                self.on_http_done(now, id);
                true
            }
            Input::HttpFailed { id } => {
                self.on_http_failed(now, id);
                true
            }
            Input::ManifestLoaded { url, manifest } => self.on_manifest(now, &url, Some(manifest)),
            Input::ManifestFailed { url } => self.on_manifest(now, &url, None),
            Input::Want {
                url,
                seq,
                deadline,
                duration,
            } => {
                self.on_want(now, url, seq, deadline, duration);
                true
            }
            Input::Cancel { url } => {
                self.on_cancel(url);
                true
            }
            Input::Stall => {
                self.stats.stalls += 1;
                false
            }
            Input::SetToken { token } => {
                self.cfg.token = token;
                false
            }
            Input::Close => {
                self.close(now);
                false
            }
        };
        if changed || work_due {
            self.step(now);
        }
    }

    /// The earliest timer after the latest input that needs a pass of [`PeerCore::step`]
    /// (everything but pings, reconnects and manifest polls).
    fn next_work_timer(&self) -> Option<Time> {
        let now = self.now;
        let mut t: Option<Time> = None;
        let mut at = |x: Time| {
            if x > now {
                t = Some(t.map_or(x, |y: Time| y.min(x)));
            }
        };
        if self.session.joined {
            at(self.stats_at);
        }
        if !self.store.dirty_have.is_empty() {
            at(self.store.have_sent_at + self.have_every());
        }
        self.scheduler_timeouts(&mut at);
        self.remote_timeouts(&mut at);
        self.upload_timeouts(&mut at);
        t
    }

    /// When the driver must call `handle(now, Input::Timeout)` next.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.closed {
            return None;
        }
        let now = self.now;
        let mut t: Option<Time> = None;
        let mut at = |x: Time| {
            if x > now {
                t = Some(t.map_or(x, |y: Time| y.min(x)));
            }
        };
        self.session_timeouts(&mut at);
        self.manifest_timeouts(&mut at);
        if let Some(w) = self.next_work_timer() {
            at(w);
        }
        t
    }

    /// Runs after every input: connections, timeouts, deliveries, requests, uploads, announces.
    fn step(&mut self, now: Time) {
        self.stats.passes += 1;
        self.manage_peers(now);
        self.expire_requests(now);
        self.deliver(now);
        self.schedule(now);
        self.pump_uploads(now);
        self.advertise_status(now);
        self.flush_have();
        if self.session.joined && now >= self.stats_at {
            self.stats_at = now + STATS_INTERVAL;
            // Totals since this join (PROTOCOL §1): a rejoin after a reconnect starts again
            // from zero, so the server never counts the same bytes twice.
            let (s, b) = (&self.stats, &self.joined_base);
            let report = StatsReport {
                http_bytes: s.delivered_http_bytes - b.http_bytes,
                p2p_bytes: s.delivered_p2p_bytes - b.p2p_bytes,
                uploaded_bytes: s.uploaded_bytes - b.uploaded_bytes,
                stalls: s.stalls - b.stalls,
                peers: self.remotes.peers.values().filter(|r| r.open).count() as u32,
                integrity_failures: s.integrity_failures - b.integrity_failures,
            };
            self.out.push_back(Output::SignalSend(ClientMsg::Stats {
                swarm: self.cfg.swarm.clone(),
                stats: report,
            }));
        }
    }

    pub(crate) fn joined_now(&mut self, now: Time) {
        self.stats_at = now + STATS_INTERVAL;
        let s = &self.stats;
        self.joined_base = StatsReport {
            http_bytes: s.delivered_http_bytes,
            p2p_bytes: s.delivered_p2p_bytes,
            uploaded_bytes: s.uploaded_bytes,
            stalls: s.stalls,
            peers: 0,
            integrity_failures: s.integrity_failures,
        };
    }

    /// Leaves: goodbye to the server, every connection and request closed, no more outputs.
    fn close(&mut self, now: Time) {
        self.leave_session();
        let peers: Vec<PeerId> = self.remotes.peers.keys().copied().collect();
        for p in peers {
            self.drop_peer(now, p, crate::DisconnectReason::Closing);
        }
        for id in self.http.ids() {
            self.out.push_back(Output::HttpCancel { id });
        }
        self.fail_all_wants();
        self.closed = true;
    }

    /// Sends a frame to `peer` (counted in its send buffer until the driver reports it).
    pub(crate) fn send(&mut self, peer: PeerId, frame: &protocol::Frame) {
        let bytes = frame.encode();
        self.send_bytes(peer, bytes);
    }

    pub(crate) fn send_bytes(&mut self, peer: PeerId, frame: Bytes) {
        let Some(r) = self.remotes.peers.get_mut(&peer) else {
            return;
        };
        r.sent(self.now, frame.len(), self.cfg.send_window_per_peer);
        self.out.push_back(Output::RtcSend {
            conn: r.conn,
            frame,
        });
    }

    /// Checks the core's internal accounting; `Err` describes the first broken invariant.
    /// Cheap enough to call after every input in tests and simulations.
    pub fn check_invariants(&self) -> Result<(), String> {
        let queued: usize = self
            .remotes
            .peers
            .values()
            .map(|r| crate::upload::queued_chunks(&r.serve))
            .sum();
        if queued != self.upload.serve_total {
            return Err(format!(
                "serve_total {} != queued chunks {queued}",
                self.upload.serve_total
            ));
        }
        self.store
            .check(self.cfg.store_cap, &self.sched, &self.http)?;
        for (p, r) in &self.remotes.peers {
            let inflight: usize = self
                .sched
                .requests
                .values()
                .filter(|q| q.peer == *p)
                .map(|q| q.remaining())
                .sum();
            if inflight != r.inflight {
                return Err(format!(
                    "peer {p}: inflight {} != outstanding {inflight}",
                    r.inflight
                ));
            }
            if self.remotes.by_conn.get(&r.conn) != Some(p) {
                return Err(format!("peer {p}: conn {} not indexed", r.conn));
            }
        }
        if self.remotes.by_conn.len() != self.remotes.peers.len() {
            return Err(format!(
                "{} conns indexed for {} peers",
                self.remotes.by_conn.len(),
                self.remotes.peers.len()
            ));
        }
        Ok(())
    }

    /// One line describing segment `seq` (for logs and debugging).
    pub fn describe_segment(&self, seq: u64) -> String {
        let Some(s) = self.store.segments.get(&seq) else {
            return format!("{seq}: unknown");
        };
        let on_peer = s.chunks.iter().filter(|c| c.peer_req.is_some()).count();
        let on_http = s.chunks.iter().filter(|c| c.http.is_some()).count();
        let holders = self
            .remotes
            .peers
            .values()
            .filter(|r| r.open && r.have.contains(seq))
            .count();
        format!(
            "{seq}: have {}/{} (peer {on_peer}, http {on_http}), discovered {:.2}, want {:?}, cutoff {:?}, holders {holders}, open peers {}, http est {:.0} kB/s",
            s.have,
            s.chunks.len(),
            s.discovered.as_secs_f64(),
            s.want.map(|t| t.as_secs_f64()),
            s.want.map(|d| self.cutoff(s, d).as_secs_f64()),
            self.open_peers().count(),
            self.http.rate / 1000.0,
        )
    }
}
