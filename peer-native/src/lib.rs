//! Native driver (webrtc crate, tokio) around peer-core. Not built yet: see issue 6.
