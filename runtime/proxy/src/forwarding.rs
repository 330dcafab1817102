//! What the gateway tells the upstream about the client, and what it hides
//! from the client about the upstream.
//!
//! - `X-Forwarded-For`: when the peer is a configured trusted proxy, the peer
//!   is appended to the list it sent; otherwise the list is replaced by the
//!   peer alone, so a client cannot forge its address.
//! - The client address filters (and later rate limits) see: the peer, or,
//!   behind trusted proxies, the right-most address in `X-Forwarded-For` that
//!   is not itself a trusted proxy.
//! - `X-Forwarded-Proto` / `X-Forwarded-Host`: kept from a trusted peer, set
//!   from this hop otherwise. RFC 7239 `Forwarded` likewise, when enabled.
//! - Request id (`x-request-id` by default): kept from a trusted peer if well
//!   formed, generated otherwise; sent upstream and back to the client.
//! - W3C `traceparent`: propagated when valid, removed (with `tracestate`)
//!   when malformed; its trace id is logged.
//! - Response headers that identify the upstream (`server`, `x-powered-by` by
//!   default) are removed.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use wasmgate_config::forwarding::ForwardingPolicy;

/// What forwarding decided about one request.
#[derive(Debug, Clone)]
pub struct ClientView {
    /// The direct peer.
    pub peer: SocketAddr,
    /// `http` or `https` on this hop.
    pub scheme: &'static str,
    /// The client from a trusted `X-Forwarded-For`, when there is one.
    pub forwarded_client: Option<IpAddr>,
    /// The W3C trace id, when a valid `traceparent` arrived.
    pub trace_id: Option<String>,
}

const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// Headers some upstreams believe about the request or the client, which
/// only a trusted hop may send: IIS and frameworks on it (Symfony, Zend)
/// take `X-Original-URL` / `X-Rewrite-URL` as the path, bypassing the
/// gateway's routing and path checks; nginx-style upstreams take
/// `X-Real-IP` as the client.
const CLIENT_CLAIMS: [HeaderName; 3] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-real-ip"),
];
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

impl ClientView {
    /// The client as filters see it: `ip:port` for a direct peer, `ip` when
    /// taken from a trusted `X-Forwarded-For`. Formatted only when asked for.
    pub fn client_addr(&self) -> String {
        match self.forwarded_client {
            Some(ip) => ip.to_string(),
            None => self.peer.to_string(),
        }
    }
}

/// [`ForwardingPolicy`] applied: what the request path calls.
#[derive(Debug, Clone)]
pub struct Forwarding(ForwardingPolicy);

impl std::ops::Deref for Forwarding {
    type Target = ForwardingPolicy;
    fn deref(&self) -> &ForwardingPolicy {
        &self.0
    }
}

impl Forwarding {
    /// Applies `policy`.
    pub fn new(policy: ForwardingPolicy) -> Forwarding {
        Forwarding(policy)
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The request's id: the one it carries when the peer is a trusted
    /// proxy and the id is well formed, else one `new_id` makes.
    pub fn request_id(
        &self,
        headers: &HeaderMap,
        peer: SocketAddr,
        new_id: impl FnOnce() -> HeaderValue,
    ) -> HeaderValue {
        headers
            .get(&self.request_id_header)
            .filter(|v| valid_request_id(v.as_bytes()) && self.trusted(peer.ip()))
            .cloned()
            .unwrap_or_else(new_id)
    }

    /// Rewrites the forwarding headers of a request from `peer` (with its
    /// settled `request_id`) and returns what filters should see.
    pub fn apply_request(
        &self,
        headers: &mut HeaderMap,
        peer: SocketAddr,
        scheme: &'static str,
        request_id: &HeaderValue,
    ) -> ClientView {
        let peer_ip = peer.ip().to_canonical();
        let trusted = self.trusted(peer_ip);

        // The client, as trusted hops report it.
        let mut forwarded_client = None;
        if trusted {
            let chain: Vec<&str> = headers
                .get_all(&XFF)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            for hop in chain.iter().rev() {
                match hop.trim_matches(['[', ']']).parse::<IpAddr>() {
                    Ok(ip) if self.trusted(ip) => continue,
                    Ok(ip) => {
                        forwarded_client = Some(ip.to_canonical());
                        break;
                    }
                    // An unparsable hop: believe nothing left of it.
                    Err(_) => break,
                }
            }
        }

        // X-Forwarded-For.
        // What an untrusted peer sent is replaced, so not even read.
        let existing = if trusted { joined(headers, &XFF) } else { None };
        let xff = match existing {
            Some(existing) => HeaderValue::from_str(&format!("{existing}, {peer_ip}")),
            None => HeaderValue::from_str(&peer_ip.to_string()),
        };
        if let Ok(v) = xff {
            headers.insert(XFF, v);
        }

        // X-Forwarded-Proto / -Host.
        let host = headers.get(http::header::HOST).cloned();
        if !(trusted && headers.contains_key(&XFP)) {
            headers.insert(XFP, HeaderValue::from_static(scheme));
        }
        if !(trusted && headers.contains_key(&XFH)) {
            match host.clone() {
                Some(h) => {
                    headers.insert(XFH, h);
                }
                None => {
                    headers.remove(&XFH);
                }
            }
        }

        // RFC 7239 Forwarded.
        if self.forwarded_header {
            let for_ = match peer_ip {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("\"[{ip}]\""),
            };
            let mut element = format!("for={for_};proto={scheme}");
            if let Some(h) = host.as_ref().and_then(|h| h.to_str().ok()) {
                element.push_str(&format!(";host=\"{}\"", h.replace(['"', '\\'], "")));
            }
            let existing = if trusted {
                joined(headers, &FORWARDED)
            } else {
                None
            };
            let value = match existing {
                Some(existing) => format!("{existing}, {element}"),
                None => element,
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(FORWARDED, v);
            }
        } else if !trusted {
            headers.remove(&FORWARDED);
        }

        if !trusted {
            for h in &CLIENT_CLAIMS {
                headers.remove(h);
            }
        }

        // Request id.
        headers.insert(self.request_id_header.clone(), request_id.clone());

        // traceparent.
        let trace_id = match headers.get(&TRACEPARENT).map(HeaderValue::as_bytes) {
            Some(tp) => match trace_id(tp) {
                Some(id) => Some(id),
                None => {
                    headers.remove(&TRACEPARENT);
                    headers.remove(&TRACESTATE);
                    None
                }
            },
            None => None,
        };

        ClientView {
            peer,
            scheme,
            forwarded_client,
            trace_id,
        }
    }

    /// Removes upstream-identifying headers and adds the request id.
    pub fn apply_response(&self, headers: &mut HeaderMap, request_id: &HeaderValue) {
        for h in &self.hide_response_headers {
            headers.remove(h);
        }
        headers.insert(self.request_id_header.clone(), request_id.clone());
    }
}

fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let parts: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if parts.is_empty() {
        None
    } else {
        Some(parts.join(", "))
    }
}

/// A request id we are willing to pass on: 1 to 200 visible characters from a
/// conservative set.
fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 200
        && v.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=')
        })
}

/// The trace id of a valid version-00 `traceparent`
/// (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero).
fn trace_id(tp: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(tp).ok()?;
    let mut parts = s.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = parts.next().is_none()
        && version == "00"
        && lower_hex(trace, 32)
        && lower_hex(span, 16)
        && lower_hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && span.bytes().any(|b| b != b'0');
    valid.then(|| trace.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(trusted: &[&str]) -> Forwarding {
        Forwarding::new(ForwardingPolicy {
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            forwarded_header: true,
            ..Default::default()
        })
    }

    /// Settles the request id (made ids are "gen"), then applies.
    fn apply(p: &Forwarding, h: &mut HeaderMap, peer: &str) -> (ClientView, HeaderValue) {
        let peer = peer.parse().unwrap();
        let id = p.request_id(h, peer, || HeaderValue::from_static("gen"));
        (p.apply_request(h, peer, "http", &id), id)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn untrusted_peers_cannot_forge_their_address() {
        let p = policy(&["10.0.0.0/8"]);
        let mut h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-request-id", "forged"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.2.3.4"),
        ]);
        let (view, id) = apply(&p, &mut h, "203.0.113.9:5000");
        assert_eq!(h["x-forwarded-for"], "203.0.113.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["forwarded"], "for=203.0.113.9;proto=http");
        assert_eq!(view.client_addr(), "203.0.113.9:5000");
        assert_eq!(id, "gen");
        assert_eq!(h["x-request-id"], "gen");
    }

    #[test]
    fn trusted_proxies_are_believed_and_appended_to() {
        let p = policy(&["10.0.0.0/8", "127.0.0.1/32"]);
        let mut h = headers(&[
            ("x-forwarded-for", "198.51.100.7, 10.1.1.1"),
            ("x-request-id", "abc-123"),
            ("host", "shop.example"),
        ]);
        let (view, id) = apply(&p, &mut h, "127.0.0.1:5000");
        assert_eq!(h["x-forwarded-for"], "198.51.100.7, 10.1.1.1, 127.0.0.1");
        assert_eq!(
            view.client_addr(),
            "198.51.100.7",
            "right-most untrusted hop"
        );
        assert_eq!(id, "abc-123");
        assert_eq!(h["x-forwarded-host"], "shop.example");
    }

    #[test]
    fn malformed_ids_and_traceparents_are_replaced() {
        let p = policy(&["127.0.0.0/8"]);
        let mut h = headers(&[
            ("x-request-id", "has space"),
            ("traceparent", "00-zz-1-01"),
            ("tracestate", "a=b"),
        ]);
        let (_, id) = apply(&p, &mut h, "127.0.0.1:1");
        assert_eq!(id, "gen");
        assert!(h.get("traceparent").is_none() && h.get("tracestate").is_none());
        let mut h = headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        let (view, _) = apply(&p, &mut h, "127.0.0.1:1");
        assert_eq!(
            view.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert!(h.get("traceparent").is_some());
    }
}
