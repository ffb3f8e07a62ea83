//! TLS for `wss://` signaling and `https://` origins: the public webpki roots plus the
//! certificates the operator trusts (`p2pcdn-load --ca-cert FILE`: a private CA, or the
//! self-signed certificate of a test deployment behind nginx). One rustls configuration for both
//! the WebSocket (through tokio-tungstenite) and the HTTP client (reqwest). There is no "accept
//! anything" mode.
//!
//! A `--ca-cert` certificate is trusted two ways: as a root (a private CA that signed the
//! server's certificate), and as the server's own certificate (pinned: byte for byte the one the
//! server presents, valid for the host name). The second is needed because webpki refuses a
//! certificate with `CA:TRUE` as a server's (`CaUsedAsEndEntity`), and `openssl req -x509`, the
//! usual way to make a self-signed certificate for nginx, marks it so.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_name};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, SignatureScheme};

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
        // The provider named explicitly (ring, as reqwest's): no process-wide default needed.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = self.verifier(provider.clone())?;
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Arc::new(cfg))
    }

    fn verifier(
        &self,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Arc<PinnedOrWebPki>, Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for c in &self.0 {
            roots
                .add(c.clone())
                .map_err(|e| Error::Tls(format!("trusted certificate: {e}")))?;
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(Arc::new(PinnedOrWebPki {
            pinned: self.0.clone(),
            webpki,
        }))
    }

    /// The HTTP client of the viewers (origin segments, playlists, manifests).
    pub fn http_client(&self) -> Result<reqwest::Client, Error> {
        // The same verification as the WebSocket's. reqwest is built without HTTP/2, so the
        // configuration needs no ALPN.
        let tls = (*self.client_config()?).clone();
        reqwest::Client::builder()
            .pool_max_idle_per_host(4)
            .connect_timeout(Duration::from_secs(5))
            .use_preconfigured_tls(tls)
            .build()
            .map_err(|e| Error::Tls(e.to_string()))
    }
}

/// The webpki verification (public roots + `--ca-cert` as roots), and, when it fails, a server
/// certificate that is byte for byte one of the `--ca-cert` certificates and names the host.
#[derive(Debug)]
struct PinnedOrWebPki {
    pinned: Vec<CertificateDer<'static>>,
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let err = match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if !self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Err(err);
        }
        // The operator handed us this very certificate; it must still be for this host. (Its
        // handshake signature is checked by the methods below, with its key.)
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_name(&cert, server_name)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for 127.0.0.1 as `openssl req -x509` makes it (`CA:TRUE`),
    /// in DER.
    fn self_signed(ca: bool) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("key: {e}"));
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap_or_else(|e| panic!("params: {e}"));
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let cert = params
            .self_signed(&key)
            .unwrap_or_else(|e| panic!("cert: {e}"));
        cert.der().clone()
    }

    fn verify(roots: &Roots, cert: &CertificateDer<'_>, host: &str) -> Result<(), rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let v = roots
            .verifier(provider)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        v.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn a_pinned_self_signed_certificate_is_trusted_for_its_host_only() {
        for ca in [true, false] {
            let cert = self_signed(ca);
            let roots = Roots(vec![cert.clone()]);
            assert_eq!(verify(&roots, &cert, "127.0.0.1"), Ok(()), "CA:{ca}");
            assert!(verify(&roots, &cert, "10.0.0.1").is_err(), "another host");
            // Not given with --ca-cert: refused.
            assert!(verify(&Roots::default(), &cert, "127.0.0.1").is_err());
            let other = Roots(vec![self_signed(ca)]);
            assert!(verify(&other, &cert, "127.0.0.1").is_err(), "another key");
        }
    }

    #[test]
    fn http_client_builds_with_extra_roots() {
        assert!(Roots(vec![self_signed(true)]).http_client().is_ok());
        assert!(Roots::default().http_client().is_ok());
    }
}
