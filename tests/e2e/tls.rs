//! TLS termination and HTTP/2 through the real gateway: SNI certificates,
//! ALPN h2, h2c, mTLS accepted and refused, a certificate replaced on disk.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use wasmgate_tests::pki::{Pki, client_config, dir, write};
use wasmgate_tests::{Upstream, capture_logs, metric, start_gateway, within};

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
    https_get_host(addr, sni, sni, config).await
}

/// An HTTPS GET with SNI `sni` and `Host` (or `:authority`) `host`.
async fn https_get_host(
    addr: std::net::SocketAddr,
    sni: &str,
    host: &str,
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
            .uri(format!("https://{host}/path"))
            .header("host", host)
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

/// The rustls error somewhere in `e`'s chain (an `io::Error` shows what it
/// wraps only through `get_ref`).
fn rustls_error(e: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r.clone());
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(r) = rustls_error(inner)
        {
            return Some(r);
        }
        next = err.source();
    }
    None
}

/// Connects with `config` and, if the client's side of the handshake
/// completes (in TLS 1.3 the server judges the client's certificate after
/// that), reads without sending anything: returns the TLS error that ended
/// the connection. Nothing is written after the handshake, so the server's
/// alert arrives intact rather than behind a reset.
async fn tls_refusal(
    addr: std::net::SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> rustls::Error {
    use tokio::io::AsyncReadExt;
    // A connection the gateway accepted would wait here for a request: the
    // hang guard then fails the test.
    within(
        "the TLS refusal (none came: was the connection accepted?)",
        async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let connected = tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
                .await;
            let err = match connected {
                Err(e) => e,
                Ok(mut tls) => match tls.read(&mut [0u8; 64]).await {
                    Err(e) => e,
                    Ok(n) => panic!("the connection was not refused: read {n} bytes"),
                },
            };
            rustls_error(&err).unwrap_or_else(|| panic!("not a TLS error: {err:?}"))
        },
    )
    .await
}

/// A certificate authority the gateway does not trust, with a name of its
/// own (a [`Pki`] root is named like every other one, so the gateway would
/// judge a leaf of another `Pki` by its trusted root's key: a bad signature,
/// not an unknown issuer).
fn stranger_ca() -> Pki {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "stranger CA");
    let cert = params.self_signed(&key).unwrap();
    Pki {
        root: cert.der().clone(),
        root_pem: cert.pem(),
        issuer: rcgen::Issuer::new(params, key),
    }
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
    // No client certificate: the gateway answers with the alert that says a
    // certificate is required.
    let refused = tls_refusal(
        gw.addr(),
        "secure.test",
        client_config(&pki, &[b"http/1.1"], None),
    )
    .await;
    assert_eq!(
        refused,
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
        "no client certificate must be refused as such"
    );
    // A certificate from another authority: refused as an unknown CA.
    let stranger = stranger_ca().leaf(&["client"]);
    let refused = tls_refusal(
        gw.addr(),
        "secure.test",
        client_config(&pki, &[b"http/1.1"], Some(&stranger)),
    )
    .await;
    assert_eq!(
        refused,
        rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
        "an untrusted client certificate must be refused as such"
    );
    // Both refusals are the gateway's: counted as failed handshakes.
    within("the refused handshakes to be counted", async {
        while metric(&gw.metrics_text(), "wasmgate_tls_handshake_errors_total") != Some(2.0) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        metric(&gw.metrics_text(), "wasmgate_tls_handshakes_total"),
        Some(1.0)
    );
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
    // not match and the gateway keeps the old one. The reloader's refusal
    // names the file (in this test's folder).
    let folder = d.display().to_string();
    let refusals = || {
        capture_logs()
            .lines_with(&["TLS certificates not reloaded", &folder])
            .len()
    };
    assert_eq!(refusals(), 0);
    write(&d, "r.key", &second.key_pem);
    within("the mismatched pair to be refused", async {
        while refusals() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        https_get(gw.addr(), "r.test", cfg.clone())
            .await
            .unwrap()
            .leaf,
        first.der,
        "the old pair keeps serving"
    );
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

#[tokio::test]
async fn a_host_served_by_another_certificate_than_the_sni_is_421() {
    let pki = Pki::new();
    let d = dir("misdirected");
    let (a, b) = (pki.leaf(&["a.test"]), pki.leaf(&["b.test"]));
    // b.test requires a client certificate, a.test does not: a request for
    // b.test on a connection set up for a.test would skip that check.
    let tls = format!(
        "[server.tls]\ncertificates = [\n  {{ cert = {:?}, key = {:?}, server_names = [\"a.test\", \"*.a.test\"] }},\n  {{ cert = {:?}, key = {:?}, server_names = [\"b.test\"], client_ca = {:?} }},\n]\n",
        write(&d, "a.pem", &a.cert_pem),
        write(&d, "a.key", &a.key_pem),
        write(&d, "b.pem", &b.cert_pem),
        write(&d, "b.key", &b.key_pem),
        write(&d, "ca.pem", &pki.root_pem),
    );
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, &tls)).await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let cfg = client_config(&pki, &[alpn], None);
        let r = https_get_host(gw.addr(), "a.test", "b.test", cfg.clone())
            .await
            .unwrap();
        assert_eq!(r.status, 421, "ALPN {}", String::from_utf8_lossy(alpn));
        // The same certificate entry (a wildcard of it, a port) is fine.
        let r = https_get_host(gw.addr(), "a.test", "x.a.test:443", cfg.clone())
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let r = https_get_host(gw.addr(), "a.test", "A.TEST", cfg)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        up.count(),
        4,
        "misdirected requests never reach the upstream"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_connection_without_sni_is_judged_as_the_first_certificates() {
    let pki = Pki::new();
    let d = dir("misdirected-nosni");
    // The first entry also serves clients that send no SNI (an IP address).
    let (a, b) = (pki.leaf(&["a.test", "127.0.0.1"]), pki.leaf(&["b.test"]));
    let tls = format!(
        "[server.tls]\ncertificates = [\n  {{ cert = {:?}, key = {:?}, server_names = [\"a.test\"] }},\n  {{ cert = {:?}, key = {:?}, server_names = [\"b.test\"], client_ca = {:?} }},\n]\n",
        write(&d, "a.pem", &a.cert_pem),
        write(&d, "a.key", &a.key_pem),
        write(&d, "b.pem", &b.cert_pem),
        write(&d, "b.key", &b.key_pem),
        write(&d, "ca.pem", &pki.root_pem),
    );
    let up = Upstream::start("u").await;
    let gw = start_gateway(&config(&up, &tls)).await;
    let cfg = client_config(&pki, &[b"http/1.1"], None);
    // No SNI, Host of the mTLS-protected name: refused.
    let r = https_get_host(gw.addr(), "127.0.0.1", "b.test", cfg.clone())
        .await
        .unwrap();
    assert_eq!(r.status, 421);
    // No SNI, a name of the first entry: served.
    let r = https_get_host(gw.addr(), "127.0.0.1", "a.test", cfg)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

/// On a shared edge, a TLS connection belongs to the tenant its SNI names:
/// a request on it for a host of another tenant is 421, even when one
/// certificate covers both names.
#[tokio::test]
async fn a_request_for_another_tenant_than_the_sni_is_421() {
    let pki = Pki::new();
    let d = dir("tenant-misdirected");
    let both = pki.leaf(&["a.test", "b.test"]);
    let (ua, ub) = (Upstream::start("a").await, Upstream::start("b").await);
    std::fs::create_dir_all(d.join("tenants")).unwrap();
    for (t, up) in [("a", &ua), ("b", &ub)] {
        std::fs::write(
            d.join("tenants").join(format!("{t}.toml")),
            format!(
                "hosts = [\"{t}.test\"]\n[clusters.c]\nendpoints = [\"{}\"]\n\
                 [[routes]]\nname = \"r\"\ncluster = \"c\"\n",
                up.addr
            ),
        )
        .unwrap();
    }
    let main = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncertificates = [{{ cert = {:?}, key = {:?}, server_names = [\"a.test\", \"b.test\"] }}]\n\
         [access_log]\nenabled = false\n[tenants]\ndir = \"tenants\"\nallow = [\"127.0.0.0/8\"]\n",
        write(&d, "both.pem", &both.cert_pem),
        write(&d, "both.key", &both.key_pem),
    );
    std::fs::write(d.join("gateway.toml"), main).unwrap();
    let gw = wasmgate_tests::start_gateway_from(&d.join("gateway.toml")).await;
    let cfg = client_config(&pki, &[b"http/1.1"], None);
    let r = https_get_host(gw.addr(), "a.test", "b.test", cfg.clone())
        .await
        .unwrap();
    assert_eq!(r.status, 421);
    let r = https_get_host(gw.addr(), "b.test", "b.test", cfg.clone())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = https_get_host(gw.addr(), "a.test", "a.test", cfg)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!((ua.count(), ub.count()), (1, 1), "the 421 reached no one");
    gw.shutdown().await;
}

/// Each tenant brings its own certificates, chosen by SNI among the names
/// it claims, beside the operator's; a tenant's certificate for a name it
/// does not claim is refused with the tenant.
#[tokio::test]
async fn tenants_serve_their_own_certificates_by_sni() {
    let pki = Pki::new();
    let d = dir("tenant-certs");
    let (op, a, b) = (
        pki.leaf(&["op.test"]),
        pki.leaf(&["a.test", "127.0.0.1"]),
        pki.leaf(&["b.test", "evil.test"]),
    );
    let up = Upstream::start("u").await;
    std::fs::create_dir_all(d.join("tenants")).unwrap();
    // One upstream for both, as an address the operator shares.
    let tenant = |t: &str, names: &str, leaf: &wasmgate_tests::pki::Leaf| {
        format!(
            "hosts = [\"{t}.test\"]\n[tls]\ncertificates = [{{ cert = {:?}, key = {:?}{names} }}]\n\
             [clusters.c]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n",
            write(&d, &format!("{t}.pem"), &leaf.cert_pem),
            write(&d, &format!("{t}.key"), &leaf.key_pem),
            up.addr
        )
    };
    std::fs::write(d.join("tenants").join("a.toml"), tenant("a", "", &a)).unwrap();
    std::fs::write(d.join("tenants").join("b.toml"), tenant("b", "", &b)).unwrap();
    let main = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncertificates = [{{ cert = {:?}, key = {:?}, server_names = [\"op.test\"] }}]\n\
         [access_log]\nenabled = false\n[tenants]\ndir = \"tenants\"\nallow = [\"127.0.0.0/8\"]\nshared = [\"{}\"]\n",
        write(&d, "op.pem", &op.cert_pem),
        write(&d, "op.key", &op.key_pem),
        up.addr,
    );
    std::fs::write(d.join("gateway.toml"), &main).unwrap();
    let gw = wasmgate_tests::start_gateway_from(&d.join("gateway.toml")).await;
    let cfg = client_config(&pki, &[b"http/1.1"], None);
    for (sni, leaf) in [("a.test", &a), ("b.test", &b)] {
        let r = https_get(gw.addr(), sni, cfg.clone()).await.unwrap();
        assert_eq!(r.status, 200, "{sni}");
        assert_eq!(r.leaf, leaf.der, "{sni} got its tenant's certificate");
    }
    // A certificate for a name the tenant does not claim refuses the tenant
    // (its running config stays).
    std::fs::write(
        d.join("tenants").join("b.toml"),
        tenant("b", ", server_names = [\"evil.test\"]", &b),
    )
    .unwrap();
    let refused = gw
        .live()
        .reload_from(&d.join("gateway.toml"))
        .await
        .unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].1.errors[0]
            .message
            .contains("is not among the tenant's hosts"),
        "{}",
        refused[0].1
    );
    let r = https_get(gw.addr(), "b.test", cfg.clone()).await.unwrap();
    assert_eq!(r.leaf, b.der);

    // Without SNI (an IP address), with no default tenant and no routes of
    // the operator's own, there is nothing to serve: the handshake fails.
    assert!(
        https_get_host(gw.addr(), "127.0.0.1", "a.test", cfg.clone())
            .await
            .is_err()
    );
    // With a default tenant, its certificate and routes serve it.
    std::fs::write(
        d.join("gateway.toml"),
        main.replace("[tenants]\n", "[tenants]\ndefault = \"a\"\n"),
    )
    .unwrap();
    let refused = gw
        .live()
        .reload_from(&d.join("gateway.toml"))
        .await
        .unwrap();
    assert_eq!(refused.len(), 1, "b is still refused: {refused:?}");
    let r = https_get_host(gw.addr(), "127.0.0.1", "a.test", cfg)
        .await
        .unwrap();
    assert_eq!((r.status, r.leaf.clone()), (200, a.der.clone()));
    gw.shutdown().await;
}
