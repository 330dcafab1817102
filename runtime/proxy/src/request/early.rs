//! Phase 1, the early checks: shed load, then refuse what a proxy must not
//! forward (a path that has no canonical form, ambiguous framing, a body
//! declared past the limit), strip hop-by-hop headers, settle the
//! forwarding headers, and refuse a request misdirected to a connection
//! set up for another certificate (421).

use std::borrow::Cow;

use http::Request;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use hyper::body::Incoming;

use super::{RequestError, Session};
use crate::normalize::{PathError, normalize_path};
use crate::overload::Pressure;
use crate::proxy::Proxy;
use crate::route::authority_of;

impl Proxy {
    /// Phase 1. Returns the request head, cleaned, and its body.
    pub(super) fn early_checks(
        &self,
        s: &mut Session<'_>,
        req: Request<Incoming>,
    ) -> Result<(Parts, Incoming), RequestError> {
        let pressure = self.policy.overload.pressure();
        if pressure != Pressure::None {
            self.metrics
                .overload_shed
                .get_or_create(&wasmgate_metrics::ConnErrorLabels {
                    kind: pressure.as_str(),
                })
                .inc();
            return Err(RequestError::Overloaded(pressure));
        }
        let (mut parts, body) = req.into_parts();
        self.precheck(&mut parts)?;
        let upgrade = websocket_upgrade(&parts);
        let te_trailers = wants_trailers(&parts.headers);
        s.chunked = parts.version == http::Version::HTTP_11
            && parts.headers.contains_key(header::TRANSFER_ENCODING);
        strip_hop_by_hop(&mut parts.headers);
        if te_trailers {
            parts
                .headers
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if let Some(protocol) = upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol);
        }
        // HTTP/2 carries the host in `:authority`, an absolute-form HTTP/1.1
        // request in its target; either wins over a `Host` header (RFC 9112
        // §3.2.2), so what is routed and judged is what the upstream sees.
        if let Some(authority) = parts.uri.authority()
            && let Ok(v) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, v);
        }
        let conn = s.conn;
        let client = self.policy.forwarding.apply_request(
            &mut parts.headers,
            conn.peer,
            if conn.tls.is_some() { "https" } else { "http" },
            &s.request_id,
        );
        if let Some(e) = s.log.as_mut() {
            e.path = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            e.client = client.client_addr();
            e.trace_id = client.trace_id.clone();
        }
        s.client = Some(client);
        if let (Some(info), Some(tls)) = (&conn.tls, &self.policy.tls)
            && let Some(host) = authority_of(&parts).and_then(crate::router::normalize_host)
            && tls.misdirected(info, &host)
        {
            return Err(RequestError::Misdirected {
                sni: info.sni.as_deref().unwrap_or_default().to_owned(),
                host: host.into_owned(),
            });
        }
        Ok((parts, body))
    }

    /// The checks before anything else: the canonical path, unambiguous
    /// framing, and a declared body within the limit.
    fn precheck(&self, parts: &mut Parts) -> Result<(), RequestError> {
        self.canonical_path(parts)
            .map_err(|e| RequestError::BadRequest(e.to_string()))?;
        check_framing(parts).map_err(|m| RequestError::BadRequest(m.into()))?;
        let limit = self.policy.limits.max_request_body;
        if let Some(declared) = declared_length(&parts.headers)
            && declared > limit as u64
        {
            // Refused before reading: hyper sends no `100 Continue` for a body
            // nobody polls.
            return Err(RequestError::DeclaredBodyTooLarge { declared, limit });
        }
        Ok(())
    }

    /// Replaces the request's path with its canonical form (see
    /// [`crate::normalize`]); the query is kept as sent.
    fn canonical_path(&self, parts: &mut Parts) -> Result<(), PathError> {
        let path = parts.uri.path();
        let normalized = match normalize_path(path, self.policy.path)? {
            Cow::Borrowed(_) => return Ok(()),
            Cow::Owned(p) => p,
        };
        let pq = match parts.uri.query() {
            Some(q) => format!("{normalized}?{q}"),
            None => normalized,
        };
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(pq.parse().map_err(|_| PathError::BadEscape)?);
        parts.uri = http::Uri::from_parts(uri).map_err(|_| PathError::BadEscape)?;
        Ok(())
    }
}

/// Rejects what the HTTP parser lets through but a proxy must not forward:
/// ambiguous framing (both `Transfer-Encoding` and `Content-Length`, several
/// `Content-Length` headers) and a missing or repeated `Host` on HTTP/1.1.
fn check_framing(parts: &Parts) -> Result<(), &'static str> {
    let h = &parts.headers;
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return Err("both Transfer-Encoding and Content-Length are present");
    }
    if h.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        return Err("more than one Content-Length header");
    }
    let hosts = h.get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err("more than one Host header");
    }
    if parts.version == http::Version::HTTP_11 && hosts == 0 && parts.uri.authority().is_none() {
        return Err("HTTP/1.1 request without a Host header");
    }
    Ok(())
}

/// The `Content-Length` a request declares, if any.
pub(super) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The protocol of an HTTP/1.1 WebSocket upgrade request (`Connection:
/// upgrade` and `Upgrade: websocket`), if it is one. Other upgrades (h2c,
/// anything unknown) are not passed on: their headers are hop-by-hop and
/// stripped, and the request goes upstream as a plain request.
fn websocket_upgrade(parts: &Parts) -> Option<HeaderValue> {
    if parts.version != http::Version::HTTP_11 {
        return None;
    }
    let asks = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let value = parts.headers.get(header::UPGRADE)?;
    (asks && value.as_bytes().eq_ignore_ascii_case(b"websocket")).then(|| value.clone())
}

/// Whether the client sent `TE: trailers` (gRPC needs it forwarded; every
/// other `TE` value is hop-by-hop and dropped).
fn wants_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the
/// `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    // Most messages carry none: one pass over the names says so, instead
    // of a removal (a hash and a probe) per hop-by-hop name.
    let hop_by_hop = |n: &HeaderName| {
        n == header::CONNECTION
            || n == header::TE
            || n == header::TRAILER
            || n == header::TRANSFER_ENCODING
            || n == header::UPGRADE
            || n == KEEP_ALIVE
            || n == PROXY_CONNECTION
    };
    if !headers.keys().any(hop_by_hop) {
        return;
    }
    // What `Connection` names besides the options every message may carry
    // (`HeaderName::from_bytes` lower-cases as it parses).
    let named: smallvec::SmallVec<[HeaderName; 2]> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| {
            !t.eq_ignore_ascii_case(b"keep-alive")
                && !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"upgrade")
        })
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(n);
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
}
