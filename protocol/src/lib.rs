//! Wire types shared by every part of the P2P CDN.
//!
//! * [`signaling`]: JSON messages between a viewer and the signaling server.
//! * [`frame`]: binary frames on the WebRTC data channel between two viewers.
//! * [`manifest`]: the integrity manifest the origin publishes next to its playlists.
//!
//! No IO, no async, no clock. Decoding untrusted input never panics: every decoder returns a
//! typed [`DecodeError`] (frames, manifest) or [`signaling::SignalingError`] (JSON).
//! `docs/PROTOCOL.md` is the normative description.

pub mod frame;
pub mod manifest;
pub mod signaling;

/// Fuzz entry points (used by `protocol/fuzz` and the corpus replay test); not a stable API.
#[doc(hidden)]
pub mod fuzzing;

pub use frame::{AbsentReason, DecodeError, Frame, HaveEntry};
pub use manifest::{CHUNK_SIZE, Manifest, ManifestError, SegmentManifest};

/// A viewer's id inside the signaling server, assigned by the server when the WebSocket opens.
/// Kept below 2^53 so that JavaScript can hold it exactly.
pub type PeerId = u64;

/// A segment's id inside a swarm: its HLS media sequence number.
pub type SegmentSeq = u64;
