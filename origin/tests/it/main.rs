//! The origin's tests, one module per former test file, in one test binary: each
//! integration-test binary links and monomorphises the crate's dependencies again (tokio, axum,
//! webrtc). Rebuilding the workspace's integration tests took 4 min 2 s as 33 binaries and
//! 1 min 54 s as 12 (2 cores), out of a ~30 min cold CI run.
//! Run one file's tests with `cargo test -p origin --test it <module>::`.

mod attacks;
mod cli;
mod common;
mod integrity;
mod live;
mod stats;
mod vod;
