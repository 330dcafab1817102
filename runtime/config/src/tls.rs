//! `[server.tls]`: certificates, SNI names and client authentication, as
//! written (`RawTls`), validated and typed (`TlsConfig`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::{ConfigError, HumanDuration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    certificates: Vec<RawCert>,
    client_ca: Option<String>,
    client_auth: Option<ClientAuth>,
    reload_interval: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCert {
    cert: String,
    key: String,
    #[serde(default)]
    server_names: Vec<String>,
    client_ca: Option<String>,
    client_auth: Option<ClientAuth>,
}

/// Default of `reload_interval`.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

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
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Certificates; the first is the default for clients without a
    /// matching SNI.
    pub certificates: Vec<CertConfig>,
    /// How often certificate files are checked for changes.
    pub reload_interval: Duration,
}

/// Validates `[server.tls]` (at `key`); problems go to `errors` with their
/// key paths. Paths are resolved against `base`; the listener's `client_ca`
/// and `client_auth` are the defaults of each certificate's.
pub(crate) fn validate(
    key: &str,
    t: RawTls,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> TlsConfig {
    if t.certificates.is_empty() {
        errors.push(ConfigError::new(
            format!("{key}.certificates"),
            "must list at least one certificate",
        ));
    }
    let certificates = t
        .certificates
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            for (j, n) in c.server_names.iter().enumerate() {
                if let Err(m) = crate::parse_host_pattern(n) {
                    errors.push(ConfigError::new(
                        format!("{key}.certificates[{i}].server_names[{j}]"),
                        m,
                    ));
                }
            }
            CertConfig {
                cert: base.join(&c.cert),
                key: base.join(&c.key),
                server_names: c.server_names,
                client_ca: c
                    .client_ca
                    .as_ref()
                    .or(t.client_ca.as_ref())
                    .map(|p| base.join(p)),
                client_auth: c
                    .client_auth
                    .or(t.client_auth)
                    .unwrap_or(ClientAuth::Required),
            }
        })
        .collect();
    TlsConfig {
        certificates,
        reload_interval: t.reload_interval.map_or(DEFAULT_RELOAD_INTERVAL, |d| d.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> (TlsConfig, Vec<ConfigError>) {
        let raw: RawTls = toml::from_str(text).unwrap();
        let mut errors = Vec::new();
        let tls = validate("server.tls", raw, Path::new("/etc/gw"), &mut errors);
        (tls, errors)
    }

    #[test]
    fn certificates_inherit_the_listener_client_settings() {
        let (tls, errors) = check(
            "client_ca = \"ca.pem\"\nclient_auth = \"optional\"\ncertificates = [\n\
             { cert = \"a.pem\", key = \"a.key\", server_names = [\"a.example.com\"] },\n\
             { cert = \"b.pem\", key = \"b.key\", client_ca = \"/b-ca.pem\", client_auth = \"required\" },\n]\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(tls.reload_interval, DEFAULT_RELOAD_INTERVAL);
        let [a, b] = &tls.certificates[..] else {
            panic!("{tls:?}")
        };
        assert_eq!(a.cert, Path::new("/etc/gw/a.pem"));
        assert_eq!(a.client_ca.as_deref(), Some(Path::new("/etc/gw/ca.pem")));
        assert_eq!(a.client_auth, ClientAuth::Optional);
        assert_eq!(b.client_ca.as_deref(), Some(Path::new("/b-ca.pem")));
        assert_eq!(b.client_auth, ClientAuth::Required);
    }

    #[test]
    fn no_certificates_and_bad_names_are_refused() {
        let (_, errors) = check("certificates = []");
        assert_eq!(
            errors,
            [ConfigError::new(
                "server.tls.certificates",
                "must list at least one certificate"
            )]
        );
        let (_, errors) = check(
            "certificates = [{ cert = \"a\", key = \"k\", server_names = [\"ok.example\", \"a b\"] }]",
        );
        assert_eq!(
            errors,
            [ConfigError::new(
                "server.tls.certificates[0].server_names[1]",
                "\"a b\" is not a host name or a \"*.domain\" wildcard"
            )]
        );
    }
}
