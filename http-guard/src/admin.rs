//! Access to operator endpoints (dashboards, listings, resets).
//!
//! * With a token (`--admin-token`): the request must carry `Authorization: Bearer <token>`, or
//!   HTTP Basic with the token as password (any user name), which lets a browser open a
//!   dashboard: the server's 401 offers both, and the browser prompts.
//! * Without a token (the default): only local requests are served: the client (see
//!   [`TrustedProxies::client_ip`]) is a loopback address, and a request from an untrusted
//!   loopback peer carries no forwarding header (a reverse proxy on the same host that is not
//!   declared with `--trusted-proxy` would otherwise make every remote client look local).
//!   Requests whose socket address is unknown are refused.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;

use crate::client_ip::{TrustedProxies, has_forwarding_headers};

/// Shortest accepted admin token.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone, Default)]
pub struct AdminAccess {
    token: Option<String>,
    proxies: TrustedProxies,
}

impl AdminAccess {
    pub fn new(token: Option<String>, proxies: TrustedProxies) -> Self {
        AdminAccess { token, proxies }
    }

    /// Checks a request from socket peer `peer` (None: unknown).
    pub fn check(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Result<(), Denied> {
        match &self.token {
            Some(token) => {
                if presented_token(headers).is_some_and(|t| same(t.as_bytes(), token.as_bytes())) {
                    Ok(())
                } else {
                    Err(Denied::Unauthorized)
                }
            }
            None => {
                let local = peer.is_some_and(|p| {
                    self.proxies.client_ip(p, headers).is_loopback()
                        && (self.proxies.contains(p) || !has_forwarding_headers(headers))
                });
                if local { Ok(()) } else { Err(Denied::NotLocal) }
            }
        }
    }
}

/// Why an admin request was refused; answers 401 (with both challenges, so a browser prompts)
/// or 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// A token is configured and the request did not present it.
    Unauthorized,
    /// No token is configured and the request is not local.
    NotLocal,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Unauthorized => {
                let mut r = (
                    StatusCode::UNAUTHORIZED,
                    "admin endpoint: send Authorization: Bearer <admin token>\n",
                )
                    .into_response();
                let h = r.headers_mut();
                h.append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"admin\""),
                );
                h.append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"admin\", charset=\"UTF-8\""),
                );
                r
            }
            Denied::NotLocal => (
                StatusCode::FORBIDDEN,
                "admin endpoint: local requests only (configure an admin token to reach it remotely)\n",
            )
                .into_response(),
        }
    }
}

/// The token of `Authorization: Bearer <t>` or the password of `Authorization: Basic`.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.to_owned())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (_, password) = text.split_once(':')?;
        Some(password.to_owned())
    } else {
        None
    }
}

/// Compares without stopping at the first difference (the length may leak; the bytes do not).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_ip::parse_cidr;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, v.parse().expect("header"));
        }
        m
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    #[test]
    fn token_mode() {
        let a = AdminAccess::new(Some("0123456789abcdef".into()), TrustedProxies::default());
        let ok = |hs: &HeaderMap, peer| a.check(peer, hs).is_ok();
        assert!(!ok(&HeaderMap::new(), ip("127.0.0.1")));
        assert!(!ok(
            &h(&[("authorization", "Bearer nope")]),
            ip("127.0.0.1")
        ));
        assert!(ok(
            &h(&[("authorization", "Bearer 0123456789abcdef")]),
            ip("203.0.113.1")
        ));
        assert!(ok(
            &h(&[("authorization", "Bearer 0123456789abcdef")]),
            None
        ));
        // Basic, any user: "admin:0123456789abcdef".
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("admin:0123456789abcdef")
        );
        assert!(ok(&h(&[("authorization", &basic)]), ip("203.0.113.1")));
        let r = a.check(ip("127.0.0.1"), &HeaderMap::new()).err();
        assert_eq!(r, Some(Denied::Unauthorized));
        let status = r.map(|r| r.into_response().status());
        assert_eq!(status, Some(StatusCode::UNAUTHORIZED));
    }

    #[test]
    fn local_only_mode() {
        let a = AdminAccess::new(None, TrustedProxies::default());
        assert!(a.check(ip("127.0.0.1"), &HeaderMap::new()).is_ok());
        assert!(a.check(ip("::1"), &HeaderMap::new()).is_ok());
        assert_eq!(
            a.check(ip("192.0.2.1"), &HeaderMap::new()),
            Err(Denied::NotLocal)
        );
        assert!(a.check(None, &HeaderMap::new()).is_err());
        // An undeclared proxy on this host forwards a remote client.
        let fwd = h(&[("x-forwarded-for", "203.0.113.9")]);
        assert!(a.check(ip("127.0.0.1"), &fwd).is_err());
        // A declared one: the forwarded client decides.
        let t = TrustedProxies::new([parse_cidr("127.0.0.1").expect("cidr")]);
        let a = AdminAccess::new(None, t);
        assert!(a.check(ip("127.0.0.1"), &fwd).is_err());
        assert!(
            a.check(ip("127.0.0.1"), &h(&[("x-forwarded-for", "127.0.0.1")]))
                .is_ok()
        );
        assert!(a.check(ip("127.0.0.1"), &HeaderMap::new()).is_ok());
    }
}
