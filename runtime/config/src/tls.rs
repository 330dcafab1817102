//! `[server.tls]`: certificates, SNI names and client authentication.

use std::path::PathBuf;
use std::time::Duration;

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// A valid client certificate is required.
    Required,
    /// A client certificate is verified if presented.
    Optional,
}

/// One certificate and the names it serves.
#[derive(Debug, Clone)]
pub struct CertConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// SNI names (`*.example.com` wildcards allowed); empty = the default.
    pub server_names: Vec<String>,
    /// CA bundle for client certificates (mTLS), overriding the listener's.
    pub client_ca: Option<PathBuf>,
    /// Client-auth policy with `client_ca`.
    pub client_auth: ClientAuth,
}

/// `[server.tls]`.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Certificates; the first is the default for clients without a
    /// matching SNI.
    pub certificates: Vec<CertConfig>,
    /// How often certificate files are checked for changes.
    pub reload_interval: Duration,
}
