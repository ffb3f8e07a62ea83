//! Edge hardening shared by the signaling server and the origin:
//!
//! * [`client_ip`]: the client's address behind trusted proxies only (`--trusted-proxy`), and
//!   the key per-IP limits count under (IPv4 address, IPv6 /64);
//! * [`admin`]: operator endpoints behind a token, or local-only without one;
//! * [`serve`]: an HTTP/1.1 accept loop with a header timeout, an idle timeout, and admission at
//!   accept (so per-IP limits count connections that never finish a request);
//! * [`logging`]: `--log-format text|json`;
//! * [`shutdown`]: the SIGINT/SIGTERM stop signal, listened for from the start.

pub mod admin;
pub mod client_ip;
pub mod logging;
pub mod serve;
pub mod shutdown;

pub use admin::AdminAccess;
pub use client_ip::{IpNet, TrustedProxies, canonical, ip_key, parse_cidr};
pub use logging::LogFormat;
pub use serve::{Admission, Timeouts, serve};
pub use shutdown::shutdown_signal;
