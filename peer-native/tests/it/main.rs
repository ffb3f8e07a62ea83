//! The native driver's real-time tests, one module per former test file, in one test binary: each
//! integration-test binary links and monomorphises the crate's dependencies again (tokio, axum,
//! webrtc). Rebuilding the workspace's integration tests took 4 min 2 s as 33 binaries and
//! 1 min 54 s as 12 (2 cores), out of a ~30 min cold CI run.
//! Run one file's tests with `cargo test -p peer-native --test it <module>::`.

use std::sync::{Mutex, MutexGuard};

mod browser_interop;
mod record;
mod swarm;
mod tls_token;

/// The real-time cases (WebRTC swarms, Chromium) run one after the other, as they did when each
/// file was its own binary: on CI's two cores, two of them at once show up as stalls and
/// deadline fetches.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    // A failed case poisons the lock; the others still run.
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}
