//! Join tokens for the viewers (`p2pcdn-load --token` / `--token-secret`).
//!
//! A deployment that sets the signaling server's `--token-secret` refuses a `join` without a
//! valid token. A site's backend mints them; the load tool either takes one such token as given
//! or mints its own with the shared secret, exactly as the server checks them
//! (`signaling_server::token`): `base64url(payload) "." base64url(HMAC-SHA256(secret,
//! base64url(payload)))`, both unpadded, `payload` = JSON `{"swarm": PATTERN, "exp": UNIX_SECONDS}`.
//! The format is written out here rather than linked: the tool does not link the server crate
//! (and its web stack); a test checks both agree.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Mints a token for swarms matching `pattern` (a swarm id, or a prefix followed by `*`), valid
/// until `exp` (unix seconds).
pub fn sign(secret: &[u8], pattern: &str, exp: u64) -> String {
    // Field order as the server's own `sign` writes it, so both mint the same bytes (the
    // server checks the MAC over the bytes it gets, so this is for comparing, not needed).
    #[derive(serde::Serialize)]
    struct Payload<'a> {
        swarm: &'a str,
        exp: u64,
    }
    let payload = serde_json::to_vec(&Payload {
        swarm: pattern,
        exp,
    })
    .unwrap_or_default();
    let body = URL_SAFE_NO_PAD.encode(payload);
    let mut m = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC takes keys of any length.
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    m.update(body.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{body}.{sig}")
}

/// Where the viewers' join tokens come from.
#[derive(Clone, Debug, Default)]
pub enum TokenSource {
    /// No token (a deployment without `--token-secret`).
    #[default]
    None,
    /// One token as a site's backend minted it, used by every viewer as is.
    Fixed(String),
    /// Minted by the tool: a fresh token for every signaling connection, valid `ttl` from then.
    Mint {
        secret: String,
        /// Swarm pattern (a swarm id, or a prefix followed by `*`).
        scope: String,
        ttl: Duration,
    },
}

impl TokenSource {
    /// The token to join with now (`None`: join without one).
    pub fn current(&self) -> Option<String> {
        match self {
            TokenSource::None => None,
            TokenSource::Fixed(t) => Some(t.clone()),
            TokenSource::Mint { secret, scope, ttl } => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                Some(sign(secret.as_bytes(), scope, (now + *ttl).as_secs()))
            }
        }
    }

    /// Tokens that expire are re-minted for each signaling connection (a reconnect after the
    /// first one expired would be refused otherwise); a fixed token is what it is.
    pub fn mints(&self) -> bool {
        matches!(self, TokenSource::Mint { .. })
    }
}

/// The default scope of minted tokens: every swarm under the playlist's folder (`<dir>/*`),
/// which covers its renditions and the swarm ids the browser pages compute (URL without query).
pub fn default_scope(playlist_url: &str) -> String {
    let base = playlist_url.split(['?', '#']).next().unwrap_or_default();
    match base.rfind('/') {
        Some(i) => format!("{}*", &base[..=i]),
        None => "*".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_is_the_playlist_folder() {
        assert_eq!(
            default_scope("https://cdn.example/live/a/index.m3u8?t=1"),
            "https://cdn.example/live/a/*"
        );
        assert_eq!(default_scope("index.m3u8"), "*");
    }

    #[test]
    fn token_shape() {
        let t = sign(b"0123456789abcdef", "s*", 100);
        let (body, sig) = t.split_once('.').unwrap_or_default();
        let payload = URL_SAFE_NO_PAD.decode(body).unwrap_or_default();
        assert_eq!(payload, br#"{"swarm":"s*","exp":100}"#.to_vec());
        assert_eq!(URL_SAFE_NO_PAD.decode(sig).map(|s| s.len()), Ok(32));
        assert!(TokenSource::None.current().is_none());
    }
}
