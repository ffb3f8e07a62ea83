//! Just enough HLS for the model player: a media playlist's sequence numbers, segment URIs,
//! segment duration and end marker. (The integrity sidecar is the core's: it asks for it with
//! `Output::FetchManifest`.)

use std::time::Duration;

use reqwest::Url;

use crate::Error;

/// Largest playlist or sidecar we read: a live window is a few kB, a long VOD sidecar a few MB.
const MAX_TEXT: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Playlist {
    pub first_seq: u64,
    /// Segment URIs in order (`first_seq` first), resolved against the playlist's URL by
    /// [`refresh`], as written by [`parse_playlist`].
    pub uris: Vec<String>,
    pub target_duration: Duration,
    pub vod: bool,
}

impl Playlist {
    pub fn last_seq(&self) -> Option<u64> {
        let n = self.uris.len() as u64;
        (n > 0).then(|| self.first_seq + n - 1)
    }
}

/// An error with its causes: reqwest's own message ("error sending request for url ...") hides
/// the reason an operator needs (an untrusted certificate, a refused connection).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    // Bounded: a cyclic chain would never end.
    for _ in 0..8 {
        let Some(c) = cause else { break };
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Parses a media playlist (never panics on hostile text).
pub fn parse_playlist(text: &str) -> Result<Playlist, Error> {
    if !text.trim_start().starts_with("#EXTM3U") {
        return Err(Error::Playlist("not an m3u8 playlist".into()));
    }
    let mut first_seq = 0u64;
    let mut uris = Vec::new();
    let mut target = 0f64;
    let mut first_extinf: Option<f64> = None;
    let mut vod = false;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            first_seq = v
                .trim()
                .parse()
                .map_err(|_| Error::Playlist("bad media sequence".into()))?;
        } else if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
            target = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("#EXTINF:") {
            if first_extinf.is_none() {
                first_extinf = v.split(',').next().and_then(|d| d.trim().parse().ok());
            }
        } else if line == "#EXT-X-ENDLIST" || line == "#EXT-X-PLAYLIST-TYPE:VOD" {
            vod = true;
        } else if !line.is_empty() && !line.starts_with('#') {
            uris.push(line.to_string());
        }
    }
    let secs = first_extinf.filter(|d| *d > 0.0).unwrap_or(target);
    if !(secs > 0.0 && secs < 3600.0) {
        return Err(Error::Playlist("no usable segment duration".into()));
    }
    Ok(Playlist {
        first_seq,
        uris,
        target_duration: Duration::from_secs_f64(secs),
        vod,
    })
}

/// GETs a small text document (playlist, manifest).
pub async fn get_text(client: &reqwest::Client, url: &str) -> Result<String, Error> {
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| Error::Http(error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(Error::Http(format!("{url}: HTTP {}", resp.status())));
    }
    if resp.content_length().is_some_and(|l| l > MAX_TEXT as u64) {
        return Err(Error::Http(format!("{url}: too large")));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| Error::Http(error_chain(&e)))?;
    if body.len() > MAX_TEXT {
        return Err(Error::Http(format!("{url}: too large")));
    }
    String::from_utf8(body.to_vec()).map_err(|_| Error::Http(format!("{url}: not UTF-8")))
}

/// Fetches the playlist (as hls.js refreshes it); segment URIs resolved. Also returns its size.
pub async fn refresh(
    client: &reqwest::Client,
    playlist_url: &Url,
) -> Result<(Playlist, u64), Error> {
    let text = get_text(client, playlist_url.as_str()).await?;
    let mut playlist = parse_playlist(&text)?;
    for uri in &mut playlist.uris {
        *uri = playlist_url
            .join(uri)
            .map_err(|e| Error::Playlist(format!("segment URI: {e}")))?
            .to_string();
    }
    Ok((playlist, text.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_live_and_vod() {
        let live = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:7\n#EXTINF:2.000,\nseg_7.bin\n#EXTINF:2.000,\nseg_8.bin\n";
        let p = parse_playlist(live).expect("live");
        assert_eq!(
            (p.first_seq, p.uris.len(), p.vod, p.last_seq()),
            (7, 2, false, Some(8))
        );
        let vod = format!("{live}#EXT-X-ENDLIST\n");
        assert!(parse_playlist(&vod).expect("vod").vod);
        assert!(parse_playlist("garbage").is_err());
        assert!(parse_playlist("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:x\n").is_err());
        assert!(parse_playlist("#EXTM3U\nseg.ts\n").is_err());
    }
}
