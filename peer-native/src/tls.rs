//! TLS for `wss://` signaling and `https://` origins: the public webpki roots plus the roots the
//! operator trusts (`p2pcdn-load --ca-cert FILE`: a self-signed certificate or a private CA, as
//! a test deployment behind nginx has). One set of roots for both the WebSocket (rustls through
//! tokio-tungstenite) and the HTTP client (reqwest's rustls). There is no "accept anything" mode.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::Error;

/// Extra trusted roots (DER), on top of the webpki roots.
#[derive(Clone, Debug, Default)]
pub struct Roots(pub Vec<CertificateDer<'static>>);

impl Roots {
    /// Reads every certificate of a PEM file (a CA bundle or one self-signed certificate).
    pub fn load_pem(&mut self, path: &Path) -> Result<(), Error> {
        let bad = |e: String| Error::Tls(format!("{}: {e}", path.display()));
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no certificate in the file".into()));
        }
        self.0.extend(certs);
        Ok(())
    }

    /// base64(SHA-256(SubjectPublicKeyInfo)) of each trusted certificate: what Chromium's
    /// `--ignore-certificate-errors-spki-list` takes to trust exactly these keys. Chromium
    /// matches them against the chain the server sends, so this covers a self-signed server
    /// certificate, or a private CA that the server includes in its chain.
    pub fn spki_sha256(&self) -> Vec<String> {
        use base64::Engine;
        use sha2::Digest;
        self.0
            .iter()
            .filter_map(|c| {
                let (_, cert) = x509_parser::parse_x509_certificate(c.as_ref()).ok()?;
                let hash = sha2::Sha256::digest(cert.public_key().raw);
                Some(base64::engine::general_purpose::STANDARD.encode(hash))
            })
            .collect()
    }

    /// The rustls configuration of the signaling WebSocket (`wss://`).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for c in &self.0 {
            roots
                .add(c.clone())
                .map_err(|e| Error::Tls(format!("trusted certificate: {e}")))?;
        }
        // The provider named explicitly (ring, as reqwest's): no process-wide default needed.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(cfg))
    }

    /// The HTTP client of the viewers (origin segments, playlists, manifests).
    pub fn http_client(&self) -> Result<reqwest::Client, Error> {
        let mut b = reqwest::Client::builder()
            .pool_max_idle_per_host(4)
            .connect_timeout(Duration::from_secs(5));
        for c in &self.0 {
            let cert = reqwest::Certificate::from_der(c.as_ref())
                .map_err(|e| Error::Tls(format!("trusted certificate: {e}")))?;
            b = b.add_root_certificate(cert);
        }
        b.build().map_err(|e| Error::Tls(e.to_string()))
    }
}
