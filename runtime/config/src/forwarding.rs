//! The forwarding settings of `[server]`: trusted proxies, the request-id
//! header, `Forwarded`, hidden response headers; validated here from the
//! `[server]` keys that hold them into the typed `ForwardingPolicy`.

use http::header::HeaderName;
use ipnet::IpNet;

use crate::ConfigError;

/// The keys of `[server]` that make the forwarding policy, as written.
pub(crate) struct RawForwarding<'a> {
    pub trusted_proxies: &'a [String],
    pub forwarded_header: bool,
    pub hide_response_headers: Option<&'a [String]>,
    pub request_id_header: Option<&'a str>,
}

/// Forwarding settings, from `[server]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardingPolicy {
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Also maintain RFC 7239 `Forwarded`.
    pub forwarded_header: bool,
    /// Response headers removed before the client sees them.
    pub hide_response_headers: Vec<HeaderName>,
    /// The request-id header.
    pub request_id_header: HeaderName,
}

impl Default for ForwardingPolicy {
    fn default() -> Self {
        ForwardingPolicy {
            trusted_proxies: Vec::new(),
            forwarded_header: false,
            hide_response_headers: vec![
                HeaderName::from_static("server"),
                HeaderName::from_static("x-powered-by"),
            ],
            request_id_header: HeaderName::from_static("x-request-id"),
        }
    }
}

/// Parses a list of addresses and CIDR ranges at `key`; problems go to
/// `errors` with their key paths.
pub(crate) fn networks(key: &str, list: &[String], errors: &mut Vec<ConfigError>) -> Vec<IpNet> {
    let mut nets = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let parsed = t
            .parse::<IpNet>()
            .or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => nets.push(net),
            Err(_) => errors.push(ConfigError::new(
                format!("{key}[{i}]"),
                format!("{t:?} is not an IP address or CIDR range (e.g. \"10.0.0.0/8\")"),
            )),
        }
    }
    nets
}

/// Validates the forwarding keys of the section at `key`; problems go to
/// `errors` with their key paths.
pub(crate) fn validate(
    key: &str,
    raw: RawForwarding<'_>,
    errors: &mut Vec<ConfigError>,
) -> ForwardingPolicy {
    let mut forwarding = ForwardingPolicy {
        forwarded_header: raw.forwarded_header,
        ..Default::default()
    };
    forwarding.trusted_proxies = networks(
        &format!("{key}.trusted_proxies"),
        raw.trusted_proxies,
        errors,
    );
    if let Some(list) = raw.hide_response_headers {
        forwarding.hide_response_headers.clear();
        for (i, h) in list.iter().enumerate() {
            match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
                Ok(n) => forwarding.hide_response_headers.push(n),
                Err(_) => errors.push(ConfigError::new(
                    format!("{key}.hide_response_headers[{i}]"),
                    format!("{h:?} is not a header name"),
                )),
            }
        }
    }
    if let Some(h) = raw.request_id_header {
        match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
            Ok(n) => forwarding.request_id_header = n,
            Err(_) => errors.push(ConfigError::new(
                format!("{key}.request_id_header"),
                format!("{h:?} is not a header name"),
            )),
        }
    }
    forwarding
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_ranges_and_header_names() {
        let proxies = ["10.0.0.0/8".to_owned(), "192.0.2.7".to_owned()];
        let hide = ["X-Secret".to_owned()];
        let mut errors = Vec::new();
        let f = validate(
            "server",
            RawForwarding {
                trusted_proxies: &proxies,
                forwarded_header: true,
                hide_response_headers: Some(&hide),
                request_id_header: Some("X-Trace"),
            },
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            f.trusted_proxies,
            [
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "192.0.2.7/32".parse().unwrap()
            ]
        );
        assert!(f.forwarded_header);
        assert_eq!(f.hide_response_headers, ["x-secret"]);
        assert_eq!(f.request_id_header, "x-trace");
    }

    #[test]
    fn bad_entries_name_their_index() {
        let proxies = ["ten".to_owned()];
        let hide = ["ok".to_owned(), "no way".to_owned()];
        let mut errors = Vec::new();
        validate(
            "server",
            RawForwarding {
                trusted_proxies: &proxies,
                forwarded_header: false,
                hide_response_headers: Some(&hide),
                request_id_header: Some("x y"),
            },
            &mut errors,
        );
        assert_eq!(
            errors,
            [
                ConfigError::new(
                    "server.trusted_proxies[0]",
                    "\"ten\" is not an IP address or CIDR range (e.g. \"10.0.0.0/8\")"
                ),
                ConfigError::new(
                    "server.hide_response_headers[1]",
                    "\"no way\" is not a header name"
                ),
                ConfigError::new("server.request_id_header", "\"x y\" is not a header name"),
            ]
        );
    }
}
