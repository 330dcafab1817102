//! `[server]`: the proxy listener, as written (`RawServer`), validated and
//! typed (`ServerConfig`). Its TLS settings (`[server.tls]`) are validated by
//! [`crate::tls`], its forwarding settings by [`crate::forwarding`].

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::{ConfigError, HumanDuration};

/// Default listen address of the proxy.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default time requests in flight get to finish at shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(25);
/// Longest `server.drain_timeout` accepted.
pub const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    listen: Option<String>,
    workers: Option<u32>,
    #[serde(default)]
    allow_encoded_slashes: bool,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    forwarded_header: bool,
    hide_response_headers: Option<Vec<String>>,
    request_id_header: Option<String>,
    #[serde(default)]
    proxy_protocol: bool,
    proxy_protocol_from: Option<Vec<String>>,
    drain_timeout: Option<HumanDuration>,
    tls: Option<crate::tls::RawTls>,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Address the proxy listens on.
    pub listen: SocketAddr,
    /// Worker threads serving requests; `None` = one per CPU.
    pub workers: Option<usize>,
    /// Keep `%2F`/`%5C` in paths instead of answering 400.
    pub allow_encoded_slashes: bool,
    /// Forwarding headers, trusted proxies, request ids.
    pub forwarding: crate::forwarding::ForwardingPolicy,
    /// TLS termination on the listener, if configured.
    pub tls: Option<crate::tls::TlsConfig>,
    /// Every connection starts with a PROXY protocol (v1 or v2) header.
    pub proxy_protocol: bool,
    /// The peers (load balancers) that may send one; a connection from
    /// any other is closed. Required with `proxy_protocol`.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// Time requests in flight get to finish after shutdown starts.
    pub drain_timeout: Duration,
}

/// Validates `[server]`; problems go to `errors` with their key paths.
pub(crate) fn validate(raw: RawServer, base: &Path, errors: &mut Vec<ConfigError>) -> ServerConfig {
    let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|e| {
        errors.push(ConfigError::new(
            "server.listen",
            format!("{listen_text:?} is not an address ({e}); write e.g. \"127.0.0.1:8080\""),
        ));
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });

    let workers = match raw.workers {
        Some(n) if n == 0 || n > 1024 => {
            errors.push(ConfigError::new(
                "server.workers",
                format!("must be between 1 and 1024, got {n}"),
            ));
            None
        }
        n => n.map(|n| n as usize),
    };
    let drain_timeout = match raw.drain_timeout {
        None => DEFAULT_DRAIN_TIMEOUT,
        Some(HumanDuration(d)) if d.is_zero() || d > MAX_DRAIN_TIMEOUT => {
            errors.push(ConfigError::new(
                "server.drain_timeout",
                format!(
                    "must be more than zero and at most {}, got {}",
                    humantime::format_duration(MAX_DRAIN_TIMEOUT),
                    humantime::format_duration(d)
                ),
            ));
            DEFAULT_DRAIN_TIMEOUT
        }
        Some(HumanDuration(d)) => d,
    };
    let tls = raw
        .tls
        .map(|t| crate::tls::validate("server.tls", t, base, errors));
    let forwarding = crate::forwarding::validate(
        "server",
        crate::forwarding::RawForwarding {
            trusted_proxies: &raw.trusted_proxies,
            forwarded_header: raw.forwarded_header,
            hide_response_headers: raw.hide_response_headers.as_deref(),
            request_id_header: raw.request_id_header.as_deref(),
        },
        errors,
    );
    let proxy_protocol_from = match (&raw.proxy_protocol_from, raw.proxy_protocol) {
        (Some(list), true) if !list.is_empty() => {
            crate::forwarding::networks("server.proxy_protocol_from", list, errors)
        }
        (_, true) => {
            errors.push(ConfigError::new(
                "server.proxy_protocol_from",
                "proxy_protocol needs the addresses of the load balancers that send the header \
                 (e.g. [\"10.0.0.0/8\"]): a header from anyone else would let a client claim any address",
            ));
            Vec::new()
        }
        (Some(_), false) => {
            errors.push(ConfigError::new(
                "server.proxy_protocol_from",
                "is set but server.proxy_protocol is false",
            ));
            Vec::new()
        }
        (None, false) => Vec::new(),
    };
    ServerConfig {
        listen,
        workers,
        allow_encoded_slashes: raw.allow_encoded_slashes,
        forwarding,
        tls,
        proxy_protocol: raw.proxy_protocol,
        proxy_protocol_from,
        drain_timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> (ServerConfig, Vec<ConfigError>) {
        let raw: RawServer = toml::from_str(text).unwrap();
        let mut errors = Vec::new();
        let server = validate(raw, Path::new("/etc/gw"), &mut errors);
        (server, errors)
    }

    #[test]
    fn defaults() {
        let (s, errors) = check("");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(s.workers, None);
        assert_eq!(s.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        assert!(s.tls.is_none());
        assert!(!s.proxy_protocol && !s.allow_encoded_slashes);
        assert_eq!(s.forwarding.request_id_header, "x-request-id");
        assert_eq!(s.forwarding.hide_response_headers.len(), 2);
    }

    #[test]
    fn every_bad_value_is_reported_with_its_key() {
        let (_, errors) = check(
            "listen = \"nowhere\"\nworkers = 0\ndrain_timeout = \"2h\"\n\
             trusted_proxies = [\"10.0.0.0/8\", \"ten\"]\n",
        );
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "server.listen",
                "server.workers",
                "server.drain_timeout",
                "server.trusted_proxies[1]"
            ]
        );
        assert_eq!(errors[1].message, "must be between 1 and 1024, got 0");
        assert_eq!(
            errors[2].message,
            "must be more than zero and at most 1h, got 2h"
        );
    }

    #[test]
    fn workers_and_drain_timeout_are_taken() {
        let (s, errors) = check(
            "workers = 3\ndrain_timeout = \"1m\"\nproxy_protocol = true\nproxy_protocol_from = [\"10.1.2.3\"]\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.workers, Some(3));
        assert_eq!(s.drain_timeout, Duration::from_secs(60));
        assert!(s.proxy_protocol);
        assert_eq!(
            s.proxy_protocol_from,
            ["10.1.2.3/32".parse::<ipnet::IpNet>().unwrap()]
        );
    }

    #[test]
    fn a_proxy_protocol_header_needs_its_senders() {
        let (_, errors) = check("proxy_protocol = true\n");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "server.proxy_protocol_from");
        assert!(
            errors[0].message.contains("load balancers"),
            "{}",
            errors[0].message
        );
        let (_, errors) = check("proxy_protocol = true\nproxy_protocol_from = [\"lb\"]\n");
        assert_eq!(errors[0].path, "server.proxy_protocol_from[0]");
        let (_, errors) = check("proxy_protocol_from = [\"10.0.0.0/8\"]\n");
        assert_eq!(
            errors,
            [ConfigError::new(
                "server.proxy_protocol_from",
                "is set but server.proxy_protocol is false"
            )]
        );
    }
}
