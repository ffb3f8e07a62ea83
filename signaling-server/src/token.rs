//! Signed join tokens.
//!
//! Format: `base64url(payload) "." base64url(HMAC-SHA256(secret, base64url(payload)))`, both
//! without padding, where `payload` is JSON `{"swarm": PATTERN, "exp": UNIX_SECONDS}`.
//! `PATTERN` is a swarm id, or a prefix followed by `*` (`"https://cdn.example/live/*"` allows
//! every swarm starting with `https://cdn.example/live/`; `"*"` allows all). The operator's web
//! page mints tokens with the shared secret (see [`sign`], or `signaling-server sign-token`) and
//! hands them to the player; the server checks the MAC (constant time), the expiry and the pattern.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted (bounds the work done on untrusted input).
pub const MAX_TOKEN_LEN: usize = 2048;

#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    swarm: String,
    exp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token does not cover this swarm")]
    WrongSwarm,
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

/// Mints a token for swarms matching `pattern`, valid until `exp` (unix seconds).
pub fn sign(secret: &[u8], pattern: &str, exp: u64) -> String {
    let payload = serde_json::to_vec(&Payload {
        swarm: pattern.to_owned(),
        exp,
    })
    .unwrap_or_default();
    let body = URL_SAFE_NO_PAD.encode(payload);
    let mut m = mac(secret);
    m.update(body.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{body}.{sig}")
}

/// Checks `token` for `swarm` at time `now` (unix seconds).
pub fn verify(secret: &[u8], token: &str, swarm: &str, now: u64) -> Result<(), TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let (body, sig) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| TokenError::Malformed)?;
    let mut m = mac(secret);
    m.update(body.as_bytes());
    m.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
    let payload = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| TokenError::Malformed)?;
    let p: Payload = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    if now >= p.exp {
        return Err(TokenError::Expired);
    }
    let covered = match p.swarm.strip_suffix('*') {
        Some(prefix) => swarm.starts_with(prefix),
        None => swarm == p.swarm,
    };
    if !covered {
        return Err(TokenError::WrongSwarm);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &[u8] = b"0123456789abcdef-secret";

    #[test]
    fn roundtrip_and_rejects() {
        let t = sign(K, "live/*", 100);
        assert_eq!(verify(K, &t, "live/a|720p", 99), Ok(()));
        assert_eq!(verify(K, &t, "vod/a", 99), Err(TokenError::WrongSwarm));
        assert_eq!(verify(K, &t, "live/a", 100), Err(TokenError::Expired));
        assert_eq!(
            verify(b"another-secret-key", &t, "live/a", 1),
            Err(TokenError::BadSignature)
        );
        let exact = sign(K, "s1", 100);
        assert_eq!(verify(K, &exact, "s1", 1), Ok(()));
        assert_eq!(verify(K, &exact, "s10", 1), Err(TokenError::WrongSwarm));
        assert_eq!(verify(K, "garbage", "s1", 1), Err(TokenError::Malformed));
        assert_eq!(verify(K, "a.b.c", "s1", 1), Err(TokenError::Malformed));
        // Tampering with the payload breaks the signature.
        let (_, sig) = t.split_once('.').unwrap_or_default();
        let forged = format!(
            "{}.{sig}",
            URL_SAFE_NO_PAD.encode(br#"{"swarm":"*","exp":999}"#)
        );
        assert_eq!(verify(K, &forged, "x", 1), Err(TokenError::BadSignature));
    }
}
