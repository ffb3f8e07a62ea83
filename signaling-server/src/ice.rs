//! ICE servers handed to each viewer in `welcome` (`--ice-server`, `--turn-secret`).
//!
//! STUN URLs go out as configured. TURN URLs go out with credentials of the viewer's own, in
//! the REST scheme coturn implements with `use-auth-secret` (draft-uberti-behave-turn-rest):
//! `username = "<expiry unix seconds>:<peer id>"`, `credential =
//! base64(HMAC-SHA1(secret, username))`. The TURN server checks them with the shared secret
//! alone, they expire after `turn_ttl_s`, and a page never holds a long-lived password.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use protocol::PeerId;
use protocol::signaling::IceServer;
use sha1::Sha1;

use crate::config::Config;

/// Most ICE URLs configured (a `welcome` stays small).
pub const MAX_URLS: usize = 16;
/// Longest ICE URL.
pub const MAX_URL_LEN: usize = 256;

fn is_turn(url: &str) -> bool {
    url.starts_with("turn:") || url.starts_with("turns:")
}

/// What makes the ICE settings unusable.
pub fn check(cfg: &Config) -> Result<(), String> {
    if cfg.ice_servers.len() > MAX_URLS {
        return Err(format!("at most {MAX_URLS} ice servers"));
    }
    for u in &cfg.ice_servers {
        let known = ["stun:", "stuns:", "turn:", "turns:"]
            .iter()
            .any(|p| u.starts_with(p));
        if !known || u.len() > MAX_URL_LEN {
            return Err(format!(
                "ice server {u:?}: a stun:, stuns:, turn: or turns: URL of at most {MAX_URL_LEN} bytes"
            ));
        }
    }
    let turn = cfg.ice_servers.iter().any(|u| is_turn(u));
    match cfg.turn_secret.as_deref() {
        Some(s) if s.len() < 16 => Err("turn_secret must be at least 16 bytes".into()),
        None if turn => {
            Err("turn: URLs need --turn-secret (credentials are minted per viewer)".into())
        }
        _ if !(60..=7 * 86_400).contains(&cfg.turn_ttl_s) => {
            Err("turn_ttl_s must be in 60..=604800".into())
        }
        _ => Ok(()),
    }
}

/// The TURN REST credential for `username`.
pub fn turn_credential(secret: &[u8], username: &str) -> String {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let Ok(mut m) = Hmac::<Sha1>::new_from_slice(secret) else {
        unreachable!("HMAC accepts keys of any length")
    };
    m.update(username.as_bytes());
    STANDARD.encode(m.finalize().into_bytes())
}

/// The ICE servers for viewer `peer`, at unix time `now_s`: one entry for the STUN URLs, one for
/// the TURN URLs with this viewer's credentials. Empty when none are configured.
pub fn for_peer(cfg: &Config, peer: PeerId, now_s: u64) -> Vec<IceServer> {
    let (turn, stun): (Vec<String>, Vec<String>) =
        cfg.ice_servers.iter().cloned().partition(|u| is_turn(u));
    let mut out = Vec::new();
    if !stun.is_empty() {
        out.push(IceServer {
            urls: stun,
            username: None,
            credential: None,
        });
    }
    if let (false, Some(secret)) = (turn.is_empty(), cfg.turn_secret.as_deref()) {
        let username = format!("{}:{peer}", now_s.saturating_add(cfg.turn_ttl_s));
        let credential = turn_credential(secret.as_bytes(), &username);
        out.push(IceServer {
            urls: turn,
            username: Some(username),
            credential: Some(credential),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_rest_credential_matches_the_scheme() {
        // HMAC-SHA1("secret", "1700000000:42"), base64: computed independently with
        // `printf %s 1700000000:42 | openssl dgst -sha1 -hmac secret -binary | base64`.
        assert_eq!(
            turn_credential(b"secret", "1700000000:42"),
            "ZzfPuPkrzUOsnm5YISnTiKDnXWo="
        );
    }

    #[test]
    fn stun_and_turn_entries() {
        let cfg = Config {
            ice_servers: vec![
                "stun:s.example:3478".into(),
                "turn:t.example:3478?transport=udp".into(),
                "turns:t.example:5349".into(),
            ],
            turn_secret: Some("0123456789abcdef".into()),
            turn_ttl_s: 600,
            ..Config::default()
        };
        assert_eq!(check(&cfg), Ok(()));
        let s = for_peer(&cfg, 7, 1_000);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].urls, vec!["stun:s.example:3478".to_string()]);
        assert_eq!(s[0].username, None);
        assert_eq!(s[1].urls.len(), 2);
        assert_eq!(s[1].username.as_deref(), Some("1600:7"));
        assert_eq!(
            s[1].credential.as_deref(),
            Some(turn_credential(b"0123456789abcdef", "1600:7").as_str())
        );
        let no_secret = Config {
            turn_secret: None,
            ..cfg.clone()
        };
        assert!(check(&no_secret).is_err());
        let bad = Config {
            ice_servers: vec!["http://x".into()],
            ..Config::default()
        };
        assert!(check(&bad).is_err());
        assert!(for_peer(&Config::default(), 1, 0).is_empty());
    }
}
