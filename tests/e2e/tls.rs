//! TLS termination and HTTP/2 through the real gateway: SNI certificates,
//! ALPN h2, h2c, mTLS accepted and refused, a certificate replaced on disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use wasmgate_tests::{Upstream, start_gateway, within};

struct Pki {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    root: CertificateDer<'static>,
    root_pem: String,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Pki {
            root: cert.der().clone(),
            root_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn leaf(&self, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wasmgate-e2e-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(d: &Path, name: &str, text: &str) -> String {
    let p = d.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn client_config(pki: &Pki, alpn: &[&[u8]], client: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.root.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client {
        Some(c) => builder
            .with_client_auth_cert(
                vec![c.der.clone()],
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// What one HTTPS request saw.
struct Seen {
    leaf: CertificateDer<'static>,
    version: http::Version,
    status: u16,
}

async fn https_get(
    addr: std::net::SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<Seen> {
    within("https request", async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
            .await?;
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        let req = http::Request::builder()
            .uri(format!("https://{sni}/path"))
            .header("host", sni)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = if h2 {
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            let mut req = req;
            req.headers_mut().remove("host");
            send.send_request(req)
                .await
                .map_err(std::io::Error::other)?
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            let mut req = req;
            *req.uri_mut() = "/path".parse().unwrap();
            send.send_request(req)
                .await
                .map_err(std::io::Error::other)?
        };
        let (parts, body) = resp.into_parts();
        body.collect().await.map_err(std::io::Error::other)?;
        Ok(Seen {
            leaf,
            version: parts.version,
            status: parts.status.as_u16(),
        })
    })
    .await
}

fn config(up: &Upstream, tls: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{tls}\n[access_log]\nenabled = false\n[clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n",
        up.addr
    )
}

#[tokio::test]
async fn https_with_sni_certificates_and_alpn_h2() {
    let pki = Pki::new();
    let d = dir("sni");
    let (a, b) = (pki.leaf(&["a.test"]), pki.leaf(&["b.test"]));
    let tls = format!(
        "[server.tls]\ncertificates = [\n  {{ cert = {:?}, key = {:?}, server_names = [\"a.test\"] }},\n  {{ cert = {:?}, key = {:?}, server_names = [\"b.test\"] }},\n]\n",
        write(&d, "a.pem", &a.cert_pem),
        write(&d, "a.key", &a.key_pem),
        write(&d, "b.pem", &b.cert_pem),
        write(&d, "b.key", &b.key_pem),
    );
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, &tls)).await;

    let h1 = https_get(
        gw.addr(),
        "a.test",
        client_config(&pki, &[b"http/1.1"], None),
    )
    .await
    .unwrap();
    assert_eq!((h1.status, h1.version), (200, http::Version::HTTP_11));
    assert_eq!(h1.leaf, a.der, "SNI a.test gets a.test's certificate");

    let h2 = https_get(
        gw.addr(),
        "b.test",
        client_config(&pki, &[b"h2", b"http/1.1"], None),
    )
    .await
    .unwrap();
    assert_eq!(
        (h2.status, h2.version),
        (200, http::Version::HTTP_2),
        "ALPN h2"
    );
    assert_eq!(h2.leaf, b.der);

    // The upstream got HTTP/1.1 with the client's host and the scheme.
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].headers.get("host").unwrap(), "b.test");
    assert_eq!(seen[1].headers.get("x-forwarded-proto").unwrap(), "https");
    gw.shutdown().await;
}

#[tokio::test]
async fn cleartext_http2_with_prior_knowledge() {
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, "")).await;
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = http::Request::builder()
            .uri("http://h2c.test/x")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = within("h2c request", send.send_request(req)).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.headers().get("x-upstream").unwrap(), "u");
    }
    assert_eq!(up.seen()[0].headers.get("host").unwrap(), "h2c.test");
    gw.shutdown().await;
}

#[tokio::test]
async fn mtls_accepts_a_client_certificate_and_refuses_none() {
    let pki = Pki::new();
    let d = dir("mtls");
    let server = pki.leaf(&["secure.test"]);
    let client = pki.leaf(&["client"]);
    let tls = format!(
        "[server.tls]\nclient_ca = {:?}\ncertificates = [{{ cert = {:?}, key = {:?} }}]\n",
        write(&d, "ca.pem", &pki.root_pem),
        write(&d, "s.pem", &server.cert_pem),
        write(&d, "s.key", &server.key_pem),
    );
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, &tls)).await;
    let ok = https_get(
        gw.addr(),
        "secure.test",
        client_config(&pki, &[b"http/1.1"], Some(&client)),
    )
    .await;
    assert_eq!(ok.unwrap().status, 200);
    let refused = https_get(
        gw.addr(),
        "secure.test",
        client_config(&pki, &[b"http/1.1"], None),
    )
    .await;
    assert!(refused.is_err(), "no client certificate must be refused");
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_is_served_without_restart() {
    let pki = Pki::new();
    let d = dir("reload");
    let first = pki.leaf(&["r.test"]);
    let (cert, key) = (
        write(&d, "r.pem", &first.cert_pem),
        write(&d, "r.key", &first.key_pem),
    );
    let tls = format!(
        "[server.tls]\nreload_interval = \"100ms\"\ncertificates = [{{ cert = {cert:?}, key = {key:?} }}]\n"
    );
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, &tls)).await;
    let cfg = client_config(&pki, &[b"http/1.1"], None);
    assert_eq!(
        https_get(gw.addr(), "r.test", cfg.clone())
            .await
            .unwrap()
            .leaf,
        first.der
    );

    let second = pki.leaf(&["r.test"]);
    // Write the key first, then the certificate: in between, the pair does
    // not match and the gateway keeps the old one.
    write(&d, "r.key", &second.key_pem);
    tokio::time::sleep(Duration::from_millis(20)).await;
    write(&d, "r.pem", &second.cert_pem);
    let mut served = None;
    for _ in 0..300 {
        let leaf = https_get(gw.addr(), "r.test", cfg.clone())
            .await
            .unwrap()
            .leaf;
        if leaf == second.der {
            served = Some(leaf);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served.is_some(), "the new certificate was never served");
    gw.shutdown().await;
}
