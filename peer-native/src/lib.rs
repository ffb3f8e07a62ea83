//! Native viewer for the P2P CDN: a tokio driver around [`peer_core::PeerCore`] using the
//! `webrtc` crate for data channels, tokio-tungstenite for signaling and reqwest for the origin,
//! a model player with the simulator's definitions, and the swarm harness behind `p2pcdn-load`.
//!
//! * [`peer::run_peer`]: one viewer (one task owning its core), a thin translator between the
//!   core's `Input`/`Output` and IO ([`rtc`], [`net`]); [`record`]: its session as JSON lines.
//! * [`player::Player`]: startup, stalls, live delay (same definitions as `sim`).
//! * [`swarm::run_swarm`]: N viewers against any deployment, with ramp, churn, tampered peers,
//!   and headless Chromium viewers ([`browser`]) in the same swarm.
//! * [`tls`]: trusted roots for `wss://` and `https://`; [`token`]: join tokens.

pub mod hls;
pub mod net;
pub mod peer;
pub mod player;
pub mod record;
pub mod rtc;
pub mod swarm;
pub mod tls;
pub mod token;

pub use test_support::browser;

pub use peer::{PeerOptions, PeerReport, run_peer};
pub use swarm::{BrowserSetup, SwarmOptions, SwarmReport, run_swarm, run_swarm_until};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("playlist: {0}")]
    Playlist(String),
    #[error("http: {0}")]
    Http(String),
    #[error("tls: {0}")]
    Tls(String),
}
