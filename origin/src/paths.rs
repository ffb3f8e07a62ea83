//! Untrusted request paths → files inside a stream folder.
//!
//! Two checks: a lexical one on the (already percent-decoded) path, so `..`, `%2e%2e`, `.`,
//! empty components (`//`, absolute paths), backslashes and NULs are refused before touching the
//! file system; and a canonical one after resolving symlinks, so a link inside a stream folder
//! cannot point outside it.

use std::path::{Path, PathBuf};

use crate::error::OriginError;

/// Checks one path component (a stream name or a file name).
pub fn check_component(c: &str) -> Result<(), OriginError> {
    if c.is_empty() || c == "." || c == ".." || c.contains(['\\', '\0', '/']) || c.len() > 255 {
        return Err(OriginError::BadPath(format!("{c:?}")));
    }
    Ok(())
}

/// Checks a `/`-separated relative path; returns it unchanged.
pub fn check_rel(rel: &str) -> Result<&str, OriginError> {
    if rel.is_empty() || rel.len() > 4096 {
        return Err(OriginError::BadPath("empty or too long".into()));
    }
    for c in rel.split('/') {
        check_component(c)?;
    }
    Ok(rel)
}

/// Resolves `rel` (checked) under `base` (canonical) and refuses a result outside `base`.
pub async fn resolve(base: &Path, rel: &str) -> Result<PathBuf, OriginError> {
    check_rel(rel)?;
    let joined = base.join(rel);
    let canon = tokio::fs::canonicalize(&joined)
        .await
        .map_err(|_| OriginError::NotFound(rel.to_string()))?;
    if !canon.starts_with(base) {
        return Err(OriginError::Forbidden);
    }
    Ok(canon)
}

/// Blocking twin of [`resolve`] for startup and the `hash` subcommand.
pub fn resolve_blocking(base: &Path, rel: &str) -> Result<PathBuf, OriginError> {
    check_rel(rel)?;
    let canon =
        std::fs::canonicalize(base.join(rel)).map_err(|e| OriginError::io(base.join(rel), e))?;
    if !canon.starts_with(base) {
        return Err(OriginError::Forbidden);
    }
    Ok(canon)
}

/// Joins a URI written in a playlist (relative to the playlist's folder `dir`, itself relative
/// to the stream root) lexically: `..` may climb to the stream root but not above it. Returns the
/// path relative to the stream root, `/`-separated.
pub fn join_playlist_uri(dir: &str, uri: &str) -> Result<String, String> {
    let uri = uri.split(['?', '#']).next().unwrap_or_default();
    if uri.is_empty() || uri.starts_with('/') || uri.contains("://") || uri.contains('\\') {
        return Err(format!("segment URI {uri:?} is not a relative path"));
    }
    let mut parts: Vec<&str> = dir.split('/').filter(|c| !c.is_empty()).collect();
    for c in uri.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("segment URI {uri:?} leaves the stream folder"));
                }
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// `a/b/c.m3u8` → (`a/b/`, `c.m3u8`).
pub fn split_dir(rel: &str) -> (&str, &str) {
    match rel.rfind('/') {
        Some(i) => (&rel[..=i], &rel[i + 1..]),
        None => ("", rel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_checks() {
        assert!(check_rel("index.m3u8").is_ok());
        assert!(check_rel("v0/seg_001.ts").is_ok());
        for bad in [
            "",
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "./a",
            "a\\..\\b",
            "a\0b",
            "..",
        ] {
            assert!(check_rel(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn playlist_uris() {
        assert_eq!(
            join_playlist_uri("v0/", "seg.ts").as_deref(),
            Ok("v0/seg.ts")
        );
        assert_eq!(
            join_playlist_uri("v0/", "../seg.ts").as_deref(),
            Ok("seg.ts")
        );
        assert_eq!(join_playlist_uri("", "seg.ts?x=1").as_deref(), Ok("seg.ts"));
        assert!(join_playlist_uri("", "../seg.ts").is_err());
        assert!(join_playlist_uri("", "/abs.ts").is_err());
        assert!(join_playlist_uri("", "http://x/a.ts").is_err());
        assert_eq!(split_dir("a/b/c.m3u8"), ("a/b/", "c.m3u8"));
        assert_eq!(split_dir("c.m3u8"), ("", "c.m3u8"));
    }
}
