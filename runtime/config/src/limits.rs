//! `[limits]`: protection against slow, large and numerous requests, as
//! written (`RawLimits`), validated and typed (`LimitsConfig`).

use std::time::Duration;

use serde::Deserialize;

use crate::{ConfigError, HumanDuration, HumanSize};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    header_read_timeout: Option<HumanDuration>,
    request_timeout: Option<HumanDuration>,
    max_header_count: Option<u32>,
    max_header_size: Option<HumanSize>,
    max_request_body: Option<HumanSize>,
    max_connections: Option<u32>,
    h2_max_concurrent_streams: Option<u32>,
    idle_timeout: Option<HumanDuration>,
    tunnel_idle_timeout: Option<HumanDuration>,
    send_timeout: Option<HumanDuration>,
    max_buffered_body: Option<HumanSize>,
}

/// `[limits]`: protection against slow, large and numerous requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Time a client has to send a complete request head (slowloris).
    pub header_read_timeout: Duration,
    /// Time from request head to response head (504 past it).
    pub request_timeout: Duration,
    /// Most request headers (431 past it).
    pub max_header_count: usize,
    /// Largest request head in bytes (431 past it).
    pub max_header_size: usize,
    /// Largest request body in bytes (413 past it).
    pub max_request_body: usize,
    /// Most client connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Most concurrent streams on one HTTP/2 connection.
    pub h2_max_concurrent_streams: u32,
    /// A client connection with no request in flight for this long is closed
    /// (HTTP/2: GOAWAY).
    pub idle_timeout: Duration,
    /// An upgraded connection (WebSocket) with no bytes either way for this
    /// long is closed.
    pub tunnel_idle_timeout: Duration,
    /// A client connection whose writes stay blocked this long (the client
    /// reads nothing: a slow reader) is closed.
    pub send_timeout: Duration,
    /// Largest body buffered for filters that ask for one (413 for requests,
    /// 502 for responses past it).
    pub max_buffered_body: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            header_read_timeout: Duration::from_secs(15),
            request_timeout: Duration::from_secs(60),
            max_header_count: 100,
            max_header_size: 64 << 10,
            max_request_body: 10 << 20,
            max_connections: 10_000,
            h2_max_concurrent_streams: 100,
            idle_timeout: Duration::from_secs(60),
            tunnel_idle_timeout: Duration::from_secs(300),
            send_timeout: Duration::from_secs(60),
            max_buffered_body: 1 << 20,
        }
    }
}

impl LimitsConfig {
    /// The limits the listener applies to connections (as opposed to those
    /// the proxy applies per request): changing them needs a restart.
    pub fn listener(&self) -> LimitsConfig {
        LimitsConfig {
            request_timeout: Duration::ZERO,
            max_request_body: 0,
            tunnel_idle_timeout: Duration::ZERO,
            max_buffered_body: 0,
            ..*self
        }
    }
}

/// Validates `[limits]`; problems go to `errors` with their key paths.
pub(crate) fn validate(rl: RawLimits, errors: &mut Vec<ConfigError>) -> LimitsConfig {
    let mut limits = LimitsConfig::default();
    if let Some(HumanDuration(d)) = rl.header_read_timeout {
        if d.is_zero() {
            errors.push(ConfigError::new(
                "limits.header_read_timeout",
                "must be more than 0",
            ));
        }
        limits.header_read_timeout = d;
    }
    for (key, given, field) in [
        (
            "limits.idle_timeout",
            rl.idle_timeout,
            &mut limits.idle_timeout,
        ),
        (
            "limits.tunnel_idle_timeout",
            rl.tunnel_idle_timeout,
            &mut limits.tunnel_idle_timeout,
        ),
        (
            "limits.send_timeout",
            rl.send_timeout,
            &mut limits.send_timeout,
        ),
    ] {
        if let Some(HumanDuration(d)) = given {
            if d.is_zero() {
                errors.push(ConfigError::new(key, "must be more than 0"));
            }
            *field = d;
        }
    }
    if let Some(HumanDuration(d)) = rl.request_timeout {
        if d.is_zero() {
            errors.push(ConfigError::new(
                "limits.request_timeout",
                "must be more than 0",
            ));
        }
        limits.request_timeout = d;
    }
    if let Some(n) = rl.max_header_count {
        if !(1..=10_000).contains(&n) {
            errors.push(ConfigError::new(
                "limits.max_header_count",
                format!("must be between 1 and 10000, got {n}"),
            ));
        }
        limits.max_header_count = n as usize;
    }
    if let Some(HumanSize(n)) = rl.max_header_size {
        if !(8192..=1 << 24).contains(&n) {
            errors.push(ConfigError::new(
                "limits.max_header_size",
                format!("must be between 8KiB and 16MiB, got {n} bytes"),
            ));
        }
        limits.max_header_size = n as usize;
    }
    if let Some(HumanSize(n)) = rl.max_buffered_body {
        limits.max_buffered_body = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(HumanSize(n)) = rl.max_request_body {
        limits.max_request_body = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(n) = rl.max_connections {
        if n == 0 {
            errors.push(ConfigError::new(
                "limits.max_connections",
                "must be at least 1",
            ));
        }
        limits.max_connections = n as usize;
    }
    if let Some(n) = rl.h2_max_concurrent_streams {
        if n == 0 {
            errors.push(ConfigError::new(
                "limits.h2_max_concurrent_streams",
                "must be at least 1",
            ));
        }
        limits.h2_max_concurrent_streams = n;
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> (LimitsConfig, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let limits = validate(toml::from_str(text).unwrap(), &mut errors);
        (limits, errors)
    }

    #[test]
    fn given_values_replace_the_defaults() {
        let (l, errors) = check(
            "header_read_timeout = \"2s\"\nrequest_timeout = \"3s\"\nmax_header_count = 7\n\
             max_header_size = \"8KiB\"\nmax_request_body = \"1KiB\"\nmax_connections = 5\n\
             h2_max_concurrent_streams = 6\nidle_timeout = \"4s\"\ntunnel_idle_timeout = \"9s\"\n\
             send_timeout = \"5s\"\nmax_buffered_body = 10\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(l.header_read_timeout, Duration::from_secs(2));
        assert_eq!(l.request_timeout, Duration::from_secs(3));
        assert_eq!(l.max_header_count, 7);
        assert_eq!(l.max_header_size, 8192);
        assert_eq!(l.max_request_body, 1024);
        assert_eq!(l.max_connections, 5);
        assert_eq!(l.h2_max_concurrent_streams, 6);
        assert_eq!(l.idle_timeout, Duration::from_secs(4));
        assert_eq!(l.tunnel_idle_timeout, Duration::from_secs(9));
        assert_eq!(l.send_timeout, Duration::from_secs(5));
        assert_eq!(l.max_buffered_body, 10);
        let listener = l.listener();
        assert_eq!(listener.request_timeout, Duration::ZERO);
        assert_eq!(listener.max_request_body, 0);
        assert_eq!(listener.header_read_timeout, Duration::from_secs(2));
        assert_eq!(listener.send_timeout, Duration::from_secs(5));
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let (_, errors) = check(
            "header_read_timeout = \"0s\"\nidle_timeout = \"0s\"\ntunnel_idle_timeout = \"0s\"\n\
             send_timeout = \"0s\"\nrequest_timeout = \"0s\"\nmax_header_count = 0\nmax_header_size = 100\n\
             max_connections = 0\nh2_max_concurrent_streams = 0\n",
        );
        let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "limits.header_read_timeout: must be more than 0",
                "limits.idle_timeout: must be more than 0",
                "limits.tunnel_idle_timeout: must be more than 0",
                "limits.send_timeout: must be more than 0",
                "limits.request_timeout: must be more than 0",
                "limits.max_header_count: must be between 1 and 10000, got 0",
                "limits.max_header_size: must be between 8KiB and 16MiB, got 100 bytes",
                "limits.max_connections: must be at least 1",
                "limits.h2_max_concurrent_streams: must be at least 1",
            ]
        );
    }
}
