//! The load tool against a production-shaped deployment: signaling at `wss://` and the origin at
//! `https://`, each behind a TLS terminator with a certificate from a private CA (what an nginx
//! TLS proxy with a self-signed certificate is to the viewers), join tokens required
//! (`--token-secret` on the signaling server), and the STUN server the signaling server hands
//! out in `welcome` used by the native viewers' peer connections.
//!
//! One case (real time, ≈ 25 s): viewers with the right token share P2P bytes; viewers with a
//! wrong one are refused; viewers that do not trust the CA cannot connect at all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use peer_native::swarm::{SwarmOptions, SwarmReport, run_swarm};
use peer_native::tls::Roots;
use peer_native::token::{self, TokenSource};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const SECRET: &str = "test-secret-0123456789abcdef";

fn init_logs() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| {
        "warn,rtc=error,rtc_ice=error,rtc_dtls=error,rtc_sctp=error,webrtc=error".into()
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// A private CA (its PEM, what `--ca-cert` gets) and a server certificate it signed for
/// `127.0.0.1` and `localhost`.
struct Pki {
    ca_pem: String,
    /// The CA's SubjectPublicKeyInfo (DER).
    ca_spki: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "p2pcdn test CA");
    let ca_spki = rcgen::PublicKeyData::subject_public_key_info(&ca_key);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("server key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("server params");
    let cert = params.signed_by(&key, &ca).expect("server certificate");
    Pki {
        ca_pem: ca.pem(),
        ca_spki,
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// A TLS terminator in front of `backend` (plain TCP after the handshake, as nginx's
/// `proxy_pass http://` with the WebSocket upgrade headers forwarded): returns its address.
async fn tls_proxy(pki: &Pki, backend: SocketAddr) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), pki.key.clone_key())
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that does not trust the certificate aborts the handshake here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut back) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut back).await;
            });
        }
    });
    addr
}

/// A minimal STUN server: answers every Binding request with the sender's address
/// (XOR-MAPPED-ADDRESS) and counts the requests.
async fn stun_server() -> (SocketAddr, Arc<AtomicU64>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    let addr = sock.local_addr().expect("addr");
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            // Binding request, magic cookie 0x2112A442.
            if n < 20 || buf[0..2] != [0, 1] || buf[4..8] != [0x21, 0x12, 0xA4, 0x42] {
                continue;
            }
            c.fetch_add(1, Ordering::Relaxed);
            let SocketAddr::V4(v4) = from else { continue };
            let mut r = Vec::with_capacity(32);
            r.extend_from_slice(&[0x01, 0x01, 0, 12]);
            r.extend_from_slice(&buf[4..20]);
            r.extend_from_slice(&[0, 0x20, 0, 8, 0, 1]);
            r.extend_from_slice(&(v4.port() ^ 0x2112).to_be_bytes());
            let ip = u32::from(*v4.ip()) ^ 0x2112_A442;
            r.extend_from_slice(&ip.to_be_bytes());
            let _ = sock.send_to(&r, from).await;
        }
    });
    (addr, count)
}

fn roots(pki: &Pki) -> Roots {
    // One folder per call: the cases run in parallel.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("p2pcdn-tls-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("ca.pem");
    std::fs::write(&path, &pki.ca_pem).expect("write CA");
    let mut r = Roots::default();
    r.load_pem(&path).expect("load CA");
    let _ = std::fs::remove_dir_all(&dir);
    r
}

#[test]
fn minted_tokens_match_the_servers() {
    for (scope, exp) in [("*", 1), ("https://cdn.example/live/*", 1_900_000_000)] {
        assert_eq!(
            token::sign(SECRET.as_bytes(), scope, exp),
            signaling_server::token::sign(SECRET.as_bytes(), scope, exp)
        );
    }
}

/// What the browser pages are told to trust (`--ignore-certificate-errors-spki-list`): the
/// `--ca-cert` certificate's key, base64(SHA-256(SPKI)).
#[test]
fn pages_trust_the_ca_certs_key() {
    use base64::Engine;
    use sha2::Digest;
    let pki = pki();
    let want = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&pki.ca_spki));
    assert_eq!(roots(&pki).spki_sha256(), vec![want]);
}

#[test]
fn wss_https_with_private_ca_and_tokens() {
    let _serial = crate::serial();
    init_logs();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let started = std::time::Instant::now();
    rt.block_on(async {
        let pki = pki();
        let (origin_addr, origin) = origin::spawn(origin::Config {
            synthetic: vec![origin::SyntheticSpec {
                name: "tls".into(),
                rate_kbps: 1000,
                seg_ms: 1000,
            }],
            ..Default::default()
        })
        .await
        .expect("origin");
        let (stun, stun_requests) = stun_server().await;
        let (sig_addr, sig) = signaling_server::spawn(signaling_server::Config {
            token_secret: Some(SECRET.into()),
            ice_servers: vec![format!("stun:{stun}")],
            ..Default::default()
        })
        .await;
        let origin_tls = tls_proxy(&pki, origin_addr).await;
        let sig_tls = tls_proxy(&pki, sig_addr).await;
        let playlist = format!("https://{origin_tls}/synthetic/tls/index.m3u8");
        let signal = format!("wss://{sig_tls}/ws");
        let run = |viewers: usize, seconds: f64, token: TokenSource, roots: Roots| {
            let mut o = SwarmOptions::new(signal.clone(), playlist.clone(), viewers, seconds);
            o.ramp = 1.0;
            o.seed = 7;
            o.token = token;
            o.roots = roots;
            run_swarm(o, |_, _| {})
        };
        let show =
            |name: &str, r: &SwarmReport| eprintln!("[{name}]\n{}{}", r.table(), r.to_json());

        // The right secret: every viewer joins and the swarm carries the stream.
        let good = run(
            3,
            14.0,
            TokenSource::Mint {
                secret: SECRET.into(),
                scope: token::default_scope(&playlist),
                ttl: Duration::from_secs(60),
            },
            roots(&pki),
        )
        .await;
        show("right token", &good);
        // A wrong secret: the server refuses every join; viewers play from the origin alone.
        let wrong = run(
            2,
            5.0,
            TokenSource::Fixed(token::sign(b"not-the-secret-0123456789", "*", u64::MAX)),
            roots(&pki),
        )
        .await;
        show("wrong token", &wrong);
        // The CA not trusted: neither the origin nor the signaling server is reachable.
        let untrusted = run(1, 3.0, TokenSource::None, Roots::default()).await;
        show("untrusted", &untrusted);
        let _ = sig.shutdown().await;
        let _ = origin.shutdown().await;

        assert!(good.errors.is_empty(), "errors: {:?}", good.errors);
        assert_eq!(
            good.origin_bytes_source, "origin",
            "origin /stats over https"
        );
        assert!(good.p2p_bytes > 0, "no P2P bytes with the right token");
        assert!(good.delivered_p2p > 0);
        assert_eq!(good.unauthorized_viewers, 0);
        assert_eq!(good.seed, 7);
        assert!(good.startup_ms_p95 >= good.startup_ms_p50);
        for p in &good.peers {
            assert!(p.id.is_some(), "viewer {} never welcomed", p.index);
            assert!(p.startup.is_some(), "viewer {} never played", p.index);
            assert_eq!(p.ice_servers, 1, "the welcome's STUN server in use");
        }
        assert!(
            stun_requests.load(Ordering::Relaxed) > 0,
            "native peer connections asked the welcome's STUN server"
        );

        assert_eq!(wrong.p2p_bytes, 0, "refused viewers shared bytes");
        assert_eq!(wrong.unauthorized_viewers, 2, "both refused");
        assert!(
            wrong.errors.iter().any(|e| e.contains("refused")),
            "errors: {:?}",
            wrong.errors
        );
        assert!(
            wrong.peers.iter().all(|p| p.startup.is_some()),
            "origin fallback"
        );

        assert_eq!(untrusted.delivered_http + untrusted.delivered_p2p, 0);
        assert!(
            untrusted.peers.iter().all(|p| p.connect_error.is_some()),
            "untrusted certificate: {:?}",
            untrusted.errors
        );
    });
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
}
