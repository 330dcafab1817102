//! The forwarding settings of `[server]`: trusted proxies, the request-id
//! header, `Forwarded`, hidden response headers.

use http::header::HeaderName;
use ipnet::IpNet;

/// Forwarding settings, from `[server]`.
#[derive(Debug, Clone)]
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
