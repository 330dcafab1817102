//! TLS termination with rustls (the `ring` provider only): certificates and
//! keys from PEM files, one chosen per connection by SNI, ALPN `h2` and
//! `http/1.1`, TLS 1.2 and 1.3 only, optional client-certificate verification
//! (mTLS) for the listener or per certificate, and certificate files reloaded
//! when they change on disk.
//!
//! The ClientHello is read first (`LazyConfigAcceptor`), so each server name
//! gets its own rustls `ServerConfig` (its certificate and its client-auth
//! policy). Reloading builds a complete new set of configs and swaps it in
//! atomically; if anything fails to load, the old set keeps serving and the
//! error is logged.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;
use wasmgate_config::tls::{CertConfig, ClientAuth, TlsConfig};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{Acceptor, WebPkiClientVerifier};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate found", path.display()));
    }
    Ok(certs)
}

fn build_one(c: &CertConfig) -> Result<Arc<ServerConfig>, String> {
    let chain = load_chain(&c.cert)?;
    let key =
        PrivateKeyDer::from_pem_file(&c.key).map_err(|e| format!("{}: {e}", c.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match &c.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_chain(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = match c.client_auth {
                ClientAuth::Required => verifier.build(),
                ClientAuth::Optional => verifier.allow_unauthenticated().build(),
            }
            .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{}: {e}", c.cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The configs for every server name, as indexes into `configs` (the
/// index of a certificate entry in config order).
#[derive(Debug)]
struct Certs {
    configs: Vec<Arc<ServerConfig>>,
    exact: HashMap<String, usize>,
    /// (".example.com", entry), longest suffix first.
    wildcard: Vec<(String, usize)>,
}

impl Certs {
    fn build(config: &TlsConfig) -> Result<Certs, String> {
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        let mut configs = Vec::new();
        for (i, c) in config.certificates.iter().enumerate() {
            let built = build_one(c).map_err(|e| format!("server.tls.certificates[{i}]: {e}"))?;
            configs.push(built);
            for name in &c.server_names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix('*') {
                    Some(suffix) => wildcard.push((suffix.to_owned(), i)),
                    None => {
                        exact.entry(name).or_insert(i);
                    }
                }
            }
        }
        if configs.is_empty() {
            return Err("server.tls.certificates: at least one certificate is needed".into());
        }
        wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Ok(Certs {
            configs,
            exact,
            wildcard,
        })
    }

    /// The entry serving `name`: exact name, then the longest wildcard, then
    /// the first entry.
    fn select(&self, name: Option<&str>) -> usize {
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return 0;
        };
        if let Some(&i) = self.exact.get(&name) {
            return i;
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map_or(0, |&(_, i)| i)
    }
}

/// What a TLS client that sends no server name (SNI) gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSni {
    /// The operator's first certificate (its own routes serve it).
    Operator,
    /// The certificate at this index among the tenants' (the first of the
    /// default tenant's).
    Tenant(usize),
    /// Nothing: the handshake fails (tenants only, none of them the
    /// default, and no routes of the operator's own).
    Refuse,
}

/// What a connection's handshake chose.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// The server name the client sent (SNI), lower-case.
    pub sni: Option<Box<str>>,
    /// The certificate entry that served it.
    pub entry: usize,
}

/// The listener's TLS state, swapped whole on reload.
#[derive(Debug)]
pub struct TlsTerminator {
    config: TlsConfig,
    /// The tenants' certificates, after the operator's.
    tenants: ArcSwap<Vec<CertConfig>>,
    /// What a client without SNI gets.
    no_sni: ArcSwap<NoSni>,
    certs: ArcSwap<Certs>,
    stamps: std::sync::Mutex<Vec<Option<SystemTime>>>,
}

impl TlsTerminator {
    /// Loads every certificate; fails with the key path and file of the first
    /// problem.
    pub fn new(config: TlsConfig) -> Result<Arc<TlsTerminator>, String> {
        let certs = Certs::build(&config)?;
        let stamps = stamps(&config);
        Ok(Arc::new(TlsTerminator {
            config,
            tenants: ArcSwap::default(),
            no_sni: ArcSwap::from_pointee(NoSni::Operator),
            certs: ArcSwap::from_pointee(certs),
            stamps: std::sync::Mutex::new(stamps),
        }))
    }

    /// The operator's certificates and the tenants'.
    fn all(&self) -> TlsConfig {
        let mut all = self.config.clone();
        all.certificates.extend(self.tenants.load().iter().cloned());
        all
    }

    /// Serves the tenants' certificates from now on, beside the operator's
    /// (chosen by SNI like them). When one cannot be loaded, the ones
    /// serving now stay, and the error says why.
    pub fn set_tenant_certs(&self, certs: Vec<CertConfig>, no_sni: NoSni) -> Result<(), String> {
        self.no_sni.store(Arc::new(no_sni));
        if **self.tenants.load() == certs {
            return Ok(());
        }
        let mut all = self.config.clone();
        all.certificates.extend(certs.iter().cloned());
        let built = Certs::build(&all)?;
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = stamps(&all);
        self.tenants.store(Arc::new(certs));
        self.certs.store(Arc::new(built));
        Ok(())
    }

    /// Completes a handshake, choosing the certificate by SNI.
    pub async fn accept<S>(&self, stream: S) -> std::io::Result<(TlsStream<S>, TlsInfo)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(Acceptor::default(), stream).await?;
        let sni = start
            .client_hello()
            .server_name()
            .map(str::to_ascii_lowercase);
        let certs = self.certs.load();
        let entry = match (&sni, &**self.no_sni.load()) {
            (Some(_), _) | (None, NoSni::Operator) => certs.select(sni.as_deref()),
            (None, NoSni::Tenant(i)) => {
                (self.config.certificates.len() + i).min(certs.configs.len() - 1)
            }
            (None, NoSni::Refuse) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a TLS connection without SNI, and no tenant serves those",
                ));
            }
        };
        let config = certs.configs[entry].clone();
        drop(certs);
        let stream = start.into_stream(config).await?;
        Ok((
            stream,
            TlsInfo {
                sni: sni.map(String::into_boxed_str),
                entry,
            },
        ))
    }

    /// Whether a request for `host` on a connection set up by `info` is
    /// misdirected (421): `host` would have been served by another
    /// certificate entry, with possibly other client-certificate rules. A
    /// connection without SNI got the first entry, and is judged as such.
    pub fn misdirected(&self, info: &TlsInfo, host: &str) -> bool {
        if info
            .sni
            .as_deref()
            .is_some_and(|sni| host.eq_ignore_ascii_case(sni))
        {
            return false;
        }
        self.certs.load().select(Some(host)) != info.entry
    }

    /// Reloads if any certificate, key or CA file changed. Returns whether a
    /// new set is now serving.
    pub fn reload_if_changed(&self) -> bool {
        let all = self.all();
        let now = stamps(&all);
        {
            let mut last = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
            if *last == now {
                return false;
            }
            *last = now;
        }
        match Certs::build(&all) {
            Ok(certs) => {
                self.certs.store(Arc::new(certs));
                tracing::info!("TLS certificates reloaded");
                true
            }
            Err(e) => {
                tracing::error!(
                    "TLS certificates not reloaded, the previous ones keep serving: {e}"
                );
                false
            }
        }
    }

    /// Watches the files until the terminator is dropped elsewhere.
    pub fn spawn_reloader(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let interval = self.config.reload_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(tls) = weak.upgrade() else { return };
                tls.reload_if_changed();
            }
        });
    }
}

/// Whether every certificate of `certs` loads (a tenant's, before it is
/// served); the error names the entry (`tls.certificates[i]`) and file.
pub fn check_certs(certs: &[CertConfig]) -> Result<(), String> {
    for (i, c) in certs.iter().enumerate() {
        build_one(c).map_err(|e| format!("tls.certificates[{i}]: {e}"))?;
    }
    Ok(())
}

fn stamps(config: &TlsConfig) -> Vec<Option<SystemTime>> {
    config
        .certificates
        .iter()
        .flat_map(|c| [Some(&c.cert), Some(&c.key), c.client_ca.as_ref()])
        .flatten()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use std::path::PathBuf;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    struct Issued {
        cert_pem: String,
        key_pem: String,
        cert_der: CertificateDer<'static>,
    }

    fn ca() -> (
        rcgen::Issuer<'static, rcgen::KeyPair>,
        CertificateDer<'static>,
        String,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().clone();
        let pem = cert.pem();
        (rcgen::Issuer::new(params, key), der, pem)
    }

    fn issue(issuer: &rcgen::Issuer<'static, rcgen::KeyPair>, names: &[&str]) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wasmgate-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Serves one connection through the terminator; answers with the
    /// negotiated ALPN protocol.
    async fn serve_once(tls: Arc<TlsTerminator>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let tls = tls.clone();
                tokio::spawn(async move {
                    if let Ok((mut s, _)) = tls.accept(tcp).await {
                        let alpn = s
                            .get_ref()
                            .1
                            .alpn_protocol()
                            .map(|p| String::from_utf8_lossy(p).into_owned());
                        let _ = s.write_all(alpn.unwrap_or_default().as_bytes()).await;
                        let _ = s.shutdown().await;
                    }
                });
            }
        });
        addr
    }

    /// Connects with SNI `name`, trusting `root`; returns the server's leaf
    /// certificate and what the server wrote.
    async fn connect(
        addr: std::net::SocketAddr,
        name: &str,
        root: &CertificateDer<'static>,
        client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> std::io::Result<(CertificateDer<'static>, String)> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await?;
        let mut s = connector
            .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
            .await?;
        let leaf = s.get_ref().1.peer_certificates().unwrap()[0].clone();
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok((leaf, out))
    }

    #[tokio::test]
    async fn certificates_are_chosen_by_sni_and_alpn_offers_h2() {
        let (issuer, root, _) = ca();
        let dir = temp_dir("sni");
        let a = issue(&issuer, &["a.example.com"]);
        let b = issue(&issuer, &["*.b.example.com"]);
        let config = TlsConfig {
            certificates: vec![
                CertConfig {
                    cert: write(&dir, "a.pem", &a.cert_pem),
                    key: write(&dir, "a.key", &a.key_pem),
                    server_names: vec!["a.example.com".into()],
                    client_ca: None,
                    client_auth: ClientAuth::Required,
                },
                CertConfig {
                    cert: write(&dir, "b.pem", &b.cert_pem),
                    key: write(&dir, "b.key", &b.key_pem),
                    server_names: vec!["*.b.example.com".into()],
                    client_ca: None,
                    client_auth: ClientAuth::Required,
                },
            ],
            reload_interval: Duration::from_secs(3600),
        };
        let addr = serve_once(TlsTerminator::new(config).unwrap()).await;
        let (leaf, alpn) = connect(addr, "a.example.com", &root, None).await.unwrap();
        assert_eq!(leaf, a.cert_der);
        assert_eq!(alpn, "h2");
        let (leaf, _) = connect(addr, "x.b.example.com", &root, None).await.unwrap();
        assert_eq!(leaf, b.cert_der);
    }

    #[tokio::test]
    async fn mtls_accepts_a_client_certificate_and_refuses_none() {
        let (issuer, root, ca_pem) = ca();
        let dir = temp_dir("mtls");
        let server = issue(&issuer, &["api.example.com"]);
        let client = issue(&issuer, &["client"]);
        let config = TlsConfig {
            certificates: vec![CertConfig {
                cert: write(&dir, "s.pem", &server.cert_pem),
                key: write(&dir, "s.key", &server.key_pem),
                server_names: vec![],
                client_ca: Some(write(&dir, "ca.pem", &ca_pem)),
                client_auth: ClientAuth::Required,
            }],
            reload_interval: Duration::from_secs(3600),
        };
        let addr = serve_once(TlsTerminator::new(config).unwrap()).await;
        let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).unwrap();
        assert!(
            connect(
                addr,
                "api.example.com",
                &root,
                Some((vec![client.cert_der.clone()], key))
            )
            .await
            .is_ok()
        );
        assert!(
            connect(addr, "api.example.com", &root, None).await.is_err(),
            "no client certificate: refused"
        );
    }

    #[tokio::test]
    async fn a_replaced_certificate_is_served_and_a_broken_one_is_not() {
        let (issuer, root, _) = ca();
        let dir = temp_dir("reload");
        let first = issue(&issuer, &["r.example.com"]);
        let config = TlsConfig {
            certificates: vec![CertConfig {
                cert: write(&dir, "r.pem", &first.cert_pem),
                key: write(&dir, "r.key", &first.key_pem),
                server_names: vec![],
                client_ca: None,
                client_auth: ClientAuth::Required,
            }],
            reload_interval: Duration::from_secs(3600),
        };
        let tls = TlsTerminator::new(config).unwrap();
        let addr = serve_once(tls.clone()).await;
        assert_eq!(
            connect(addr, "r.example.com", &root, None).await.unwrap().0,
            first.cert_der
        );

        // A half-written replacement is refused; the old certificate serves on.
        std::fs::write(dir.join("r.pem"), "-----BEGIN CERTIFICATE-----\ntruncated").unwrap();
        assert!(!tls.reload_if_changed());
        assert_eq!(
            connect(addr, "r.example.com", &root, None).await.unwrap().0,
            first.cert_der
        );

        let second = issue(&issuer, &["r.example.com"]);
        write(&dir, "r.key", &second.key_pem);
        write(&dir, "r.pem", &second.cert_pem);
        // File times can be equal within the clock's resolution; force a
        // change of the recorded stamps so the check is not timing-dependent.
        tls.stamps.lock().unwrap().clear();
        assert!(tls.reload_if_changed());
        assert_eq!(
            connect(addr, "r.example.com", &root, None).await.unwrap().0,
            second.cert_der
        );
    }
}
