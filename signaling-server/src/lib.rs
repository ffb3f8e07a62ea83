//! Signaling server: swarms, introductions and WebRTC handshake relay.
//!
//! [`registry`] is the IO-free heart (shared with the simulator).

pub mod registry;
