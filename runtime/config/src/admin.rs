//! `[admin]`: the admin listener, as written (`RawAdmin`), validated and
//! typed (`AdminConfig`). Its token is a secret (see [`crate::secret`]): a
//! `token_env` is read, and the checks on its value made, by
//! [`crate::Config::read_secrets`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ConfigError;
use crate::secret::{SecretSetting, SecretSource};

/// Default admin listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    listen: Option<String>,
    token: Option<String>,
    token_env: Option<String>,
    #[serde(default)]
    protect_metrics: bool,
    data_dir: Option<PathBuf>,
    allowed_hosts: Option<Vec<String>>,
    max_connections: Option<usize>,
    #[serde(default)]
    api_paths: Vec<PathBuf>,
    #[serde(default)]
    api_env: Vec<String>,
}

/// Default cap on open admin connections.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;

/// `[admin]`: the admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Its address (loopback by default).
    pub listen: SocketAddr,
    /// The bearer token protecting it, if any: where it comes from and,
    /// once [`crate::Config::read_secrets`] has run, its value.
    pub token: Option<SecretSetting>,
    /// Whether `/metrics` needs the token too.
    pub protect_metrics: bool,
    /// Where changes made through the API are kept across restarts.
    pub data_dir: Option<PathBuf>,
    /// The `Host` names (lower case, without a port) a request must carry.
    /// Empty: with no token, a loopback name (`localhost`, a `127.x` or
    /// `::1` literal) only, which keeps a browser tricked by DNS
    /// rebinding out; with a token, any.
    pub allowed_hosts: Vec<String>,
    /// Most admin connections open at once; more wait to be accepted.
    pub max_connections: usize,
    /// Folders whose files a config put through the API may name, besides
    /// the files the config file names (see [`crate::reach`]).
    pub api_paths: Vec<PathBuf>,
    /// Environment variables a config put through the API may name,
    /// besides those the config file names.
    pub api_env: Vec<String>,
}

impl AdminConfig {
    /// Whether a request's `Host` (`None`: it had none) may reach the
    /// admin API.
    pub fn host_allowed(&self, host: Option<&str>) -> bool {
        let Some(host) = host.map(host_name) else {
            return self.allowed_hosts.is_empty() && self.token.is_some();
        };
        if !self.allowed_hosts.is_empty() {
            return self
                .allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host));
        }
        self.token.is_some() || is_loopback_name(host)
    }
}

/// The name part of a `Host` value: without its port, and without the
/// brackets of an IPv6 literal.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// `localhost` (and names under it) or a loopback address literal.
fn is_loopback_name(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Validates `[admin]`; problems go to `errors` with their key paths.
pub(crate) fn validate(a: RawAdmin, base: &Path, errors: &mut Vec<ConfigError>) -> AdminConfig {
    let text = a.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
    let listen = text.parse::<SocketAddr>().unwrap_or_else(|e| {
        errors.push(ConfigError::new(
            "admin.listen",
            format!("{text:?} is not an address ({e})"),
        ));
        SocketAddr::from(([127, 0, 0, 1], 9901))
    });
    // Only where the token comes from: an environment variable is read by
    // `read_secrets`, which also makes the checks that need its value.
    let token = match (a.token, a.token_env) {
        (Some(_), Some(_)) => {
            errors.push(ConfigError::new(
                "admin",
                "give `token` or `token_env`, not both",
            ));
            None
        }
        (Some(t), None) => Some(SecretSetting::literal(t)),
        (None, Some(var)) => Some(SecretSetting::unread(SecretSource::Env(var))),
        (None, None) => None,
    };
    check_token(listen, token.as_ref(), errors);
    let mut allowed_hosts = Vec::new();
    for (i, h) in a.allowed_hosts.unwrap_or_default().into_iter().enumerate() {
        let bad = h.is_empty()
            || h.contains(['/', ' ', '@', '*'])
            || (h.contains(':') && h.parse::<std::net::Ipv6Addr>().is_err());
        if bad {
            errors.push(ConfigError::new(
                format!("admin.allowed_hosts[{i}]"),
                format!("{h:?} is not a host name (give the name or address only, without a port or scheme)"),
            ));
        } else {
            allowed_hosts.push(h.to_ascii_lowercase());
        }
    }
    let max_connections = a.max_connections.unwrap_or(DEFAULT_ADMIN_MAX_CONNECTIONS);
    if max_connections == 0 {
        errors.push(ConfigError::new(
            "admin.max_connections",
            "must be more than 0",
        ));
    }
    AdminConfig {
        listen,
        token,
        protect_metrics: a.protect_metrics,
        data_dir: a.data_dir.as_ref().map(|d| base.join(d)),
        allowed_hosts,
        max_connections: max_connections.max(1),
        api_paths: a.api_paths.iter().map(|d| base.join(d)).collect(),
        api_env: a.api_env,
    }
}

/// The checks on the token that need its value: its length, and that a
/// listener others can reach has one. A token that is not read yet is left
/// for [`read_secrets`].
fn check_token(listen: SocketAddr, token: Option<&SecretSetting>, errors: &mut Vec<ConfigError>) {
    if token.is_some_and(|t| t.expose().is_none()) {
        return;
    }
    let token = token.and_then(SecretSetting::expose);
    if token.is_some_and(|t| t.len() < 16) {
        errors.push(ConfigError::new(
            "admin.token",
            "must be at least 16 characters",
        ));
    }
    if token.is_none() && !listen.ip().is_loopback() {
        errors.push(ConfigError::new(
            "admin.listen",
            format!("{listen} is not a loopback address; refusing to expose the admin API without a token (set admin.token or admin.token_env)"),
        ));
    }
}

/// Reads the token from its environment variable, if it comes from one, and
/// makes the checks that need its value; problems go to `errors` with their
/// key paths.
pub(crate) fn read_secrets(admin: &mut AdminConfig, errors: &mut Vec<ConfigError>) {
    let Some(token) = admin.token.as_mut() else {
        return;
    };
    if token.expose().is_some() {
        return;
    }
    match token.read() {
        Ok(()) => check_token(admin.listen, Some(token), errors),
        Err(m) => {
            errors.push(ConfigError::new("admin.token_env", m));
            check_token(admin.listen, None, errors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> (AdminConfig, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let admin = validate(
            toml::from_str(text).unwrap(),
            Path::new("/srv"),
            &mut errors,
        );
        (admin, errors)
    }

    #[test]
    fn loopback_without_a_token_is_fine() {
        let (a, errors) = check("data_dir = \"state\"");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(a.listen, DEFAULT_ADMIN_LISTEN.parse().unwrap());
        assert!(a.token.is_none());
        assert!(!a.protect_metrics);
        assert_eq!(a.data_dir.as_deref(), Some(Path::new("/srv/state")));
    }

    #[test]
    fn a_public_listener_needs_a_long_enough_token() {
        let (_, errors) = check("listen = \"0.0.0.0:9901\"");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "admin.listen");
        assert!(
            errors[0]
                .message
                .starts_with("0.0.0.0:9901 is not a loopback address")
        );
        let (_, errors) = check("listen = \"0.0.0.0:9901\"\ntoken = \"short\"");
        assert_eq!(
            errors,
            [ConfigError::new(
                "admin.token",
                "must be at least 16 characters"
            )]
        );
        let (a, errors) = check("listen = \"0.0.0.0:9901\"\ntoken = \"0123456789abcdef\"");
        assert!(errors.is_empty());
        assert_eq!(a.token, Some(SecretSetting::literal("0123456789abcdef")));
    }

    #[test]
    fn without_a_token_only_loopback_hosts_reach_it() {
        let (a, errors) = check("");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(a.max_connections, DEFAULT_ADMIN_MAX_CONNECTIONS);
        for ok in [
            "localhost",
            "LOCALHOST:9901",
            "127.0.0.1:9901",
            "[::1]:9901",
            "[::1]",
            "a.localhost",
        ] {
            assert!(a.host_allowed(Some(ok)), "{ok}");
        }
        // DNS rebinding: the attacker's name, resolved to 127.0.0.1.
        for bad in [
            "evil.example:9901",
            "evil.example",
            "10.0.0.1",
            "localhost.evil.example",
            "",
        ] {
            assert!(!a.host_allowed(Some(bad)), "{bad}");
        }
        assert!(!a.host_allowed(None), "no Host at all");
    }

    #[test]
    fn a_list_of_hosts_is_all_that_is_allowed() {
        let (a, errors) = check("allowed_hosts = [\"Admin.Internal\", \"10.0.0.5\", \"::1\"]");
        assert!(errors.is_empty(), "{errors:?}");
        assert!(a.host_allowed(Some("admin.internal:9901")));
        assert!(a.host_allowed(Some("10.0.0.5")));
        assert!(a.host_allowed(Some("[::1]:9901")));
        assert!(
            !a.host_allowed(Some("localhost")),
            "the list replaces the default"
        );
        assert!(!a.host_allowed(None));
        // With a token and no list, any Host (the token is what protects it).
        let (a, _) = check("token = \"0123456789abcdef\"");
        assert!(a.host_allowed(Some("gateway-admin.svc:9901")));
        assert!(a.host_allowed(None));
    }

    #[test]
    fn bad_hosts_and_caps_are_named() {
        let (_, errors) =
            check("allowed_hosts = [\"ok\", \"http://x\", \"x:80\", \"\"]\nmax_connections = 0");
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "admin.allowed_hosts[1]",
                "admin.allowed_hosts[2]",
                "admin.allowed_hosts[3]",
                "admin.max_connections"
            ]
        );
    }

    #[test]
    fn token_and_token_env_together_are_refused() {
        let (_, errors) = check("token = \"0123456789abcdef\"\ntoken_env = \"X\"");
        assert_eq!(
            errors,
            [ConfigError::new(
                "admin",
                "give `token` or `token_env`, not both"
            )]
        );
    }
}
