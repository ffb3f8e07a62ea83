//! `cargo xtask ...`: project tasks (tests, simulator, benchmarks, wasm bundle, demo).
//! Each subcommand lives in its own module.

mod bench_browser;
mod bench_bus;
mod bench_cluster;
mod bench_lab;
mod bench_origin;
mod bench_signaling;
mod bench_swarm;
mod demo;
mod pack;
mod preflight;
mod replay;
mod sim;
mod test;
mod util;
mod wasm;
mod wasm_names;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Project tasks for the P2P CDN")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs every test (installing what they need); README's test command and `.ci/run`.
    Test(test::Args),
    /// Seeded discrete-event swarm simulation of peer-core; ends with one JSON line.
    Sim(sim::Args),
    /// Issue 17's grid: uplinks × RTTs × losses × swarm sizes, each against HTTP only; ends
    /// with one JSON line.
    SimGrid(sim::GridArgs),
    /// Benchmarks; each ends with one JSON line.
    #[command(subcommand)]
    Bench(Bench),
    /// Builds the release wasm bundle (wasm-bindgen, wasm-opt) and prints its sizes.
    Wasm(wasm::Args),
    /// Prints the gzip sizes of the bundle; ends with one JSON line.
    BundleSize,
    /// Builds everything and serves the demo: origin (live), signaling server, demo page.
    Demo(demo::Args),
    /// Re-runs a recorded peer session (`p2pcdn-load --record FILE`) and checks its outputs.
    Replay(replay::Args),
    /// Builds the npm package (ES module, types, release wasm) and runs `npm pack`; ends with
    /// one JSON line naming the tarball.
    Pack,
}

#[derive(Subcommand)]
enum Bench {
    /// Origin segment throughput on loopback under concurrent clients.
    Origin(bench_origin::Args),
    /// Signaling server: connections, memory per connection, relay rate and latency.
    Signaling(bench_signaling::Args),
    /// Swarm of native peers (and browsers) vs an HTTP-only baseline.
    Swarm(bench_swarm::Args),
    /// Headless Chromium pages, each in its own network namespace with a tbf-shaped upload
    /// (as root), P2P against HTTP only.
    Lab(bench_lab::Args),
    /// What P2P costs a page: Chromium CPU per page-minute, startup, long tasks; P2P off vs on
    /// in one run (optionally a V8 profile of a P2P page).
    BrowserCpu(bench_browser::Args),
    /// Signaling cluster: N nodes sharing swarms through NATS, under C connections.
    Cluster(bench_cluster::Args),
    /// The cluster's traffic over NATS and over Redis pub/sub: engine CPU per message, latency.
    Bus(bench_bus::Args),
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Test(a) => test::run(a),
        Cmd::Sim(a) => sim::run(a),
        Cmd::SimGrid(a) => sim::grid(a),
        Cmd::Bench(Bench::Origin(a)) => bench_origin::run(a),
        Cmd::Bench(Bench::Signaling(a)) => bench_signaling::run(a),
        Cmd::Bench(Bench::Swarm(a)) => bench_swarm::run(a),
        Cmd::Bench(Bench::Lab(a)) => bench_lab::run(a),
        Cmd::Bench(Bench::BrowserCpu(a)) => bench_browser::run(a),
        Cmd::Bench(Bench::Cluster(a)) => bench_cluster::run(a),
        Cmd::Bench(Bench::Bus(a)) => bench_bus::run(a),
        Cmd::Wasm(a) => wasm::run(a),
        Cmd::BundleSize => wasm::bundle_size(),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Replay(a) => replay::run(a),
        Cmd::Pack => pack::run(),
    }
}
