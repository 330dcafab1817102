//! A route's filter chain and the translation between HTTP messages and the
//! WIT records filters see: copying only the headers a filter declared, and
//! applying the edits and responses filters return, with validation (a filter
//! cannot smuggle framing headers or an invalid status past the host).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::body::{self, ProxyBody};
use crate::canary::{Canary, VersionStats};
use wasmgate_engine::{FilterFailure, InstancePool, wit};

/// Which headers the host copies into a call, resolved at load.
#[derive(Debug, Clone)]
pub enum Interest {
    /// None.
    None,
    /// These names.
    Names(Vec<HeaderName>),
    /// Every header.
    All,
}

impl Interest {
    fn from_wit(i: wit::HeaderInterest, what: &str) -> Result<Interest, String> {
        Ok(match i {
            wit::HeaderInterest::None => Interest::None,
            wit::HeaderInterest::All => Interest::All,
            wit::HeaderInterest::Names(names) => Interest::Names(
                names
                    .iter()
                    .map(|n| {
                        HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
                            .map_err(|_| format!("{what}: {n:?} is not a header name"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    /// Copies the declared headers into WIT form.
    pub fn copy(&self, headers: &HeaderMap) -> Vec<(String, String)> {
        match self {
            Interest::None => Vec::new(),
            Interest::All => headers
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), value_to_string(v)))
                .collect(),
            Interest::Names(names) => {
                let mut out = Vec::new();
                for n in names {
                    for v in headers.get_all(n) {
                        out.push((n.as_str().to_owned(), value_to_string(v)));
                    }
                }
                out
            }
        }
    }
}

/// What a filter declared at `init` for one route.
#[derive(Debug, Clone)]
pub struct Needs {
    /// Request headers to copy.
    pub request_headers: Interest,
    /// Response headers to copy.
    pub response_headers: Interest,
    /// Whether `on-response` runs.
    pub wants_response: bool,
    /// The request body is buffered and handed to `on-request`.
    pub request_body: bool,
    /// The response body is buffered and handed to `on-response`.
    pub response_body: bool,
}

impl Needs {
    /// Validates a filter's `filter-info`.
    pub fn from_wit(info: wit::FilterInfo) -> Result<Needs, String> {
        if info.buffer_response_body && !info.wants_response {
            return Err(
                "buffer-response-body is set but wants-response is not: the body would \
                 never be handed to the filter"
                    .into(),
            );
        }
        Ok(Needs {
            request_headers: Interest::from_wit(info.request_headers, "request-headers")?,
            response_headers: Interest::from_wit(info.response_headers, "response-headers")?,
            wants_response: info.wants_response,
            request_body: info.buffer_request_body,
            response_body: info.buffer_response_body,
        })
    }
}

/// One version of a filter, ready for one route.
#[derive(Debug)]
pub struct Arm {
    /// The instances of this version for this route's config.
    pub pool: InstancePool,
    /// What it declared at `init`.
    pub needs: Needs,
    /// Its version number.
    pub version: u64,
    /// Requests it handled, over every route.
    pub stats: Arc<VersionStats>,
}

/// One filter in a route's chain.
#[derive(Debug)]
pub struct ChainFilter {
    /// The current version.
    pub stable: Arm,
    /// A canary version and the requests it takes.
    pub canary: Option<(Arc<Canary>, Arm)>,
    /// Skip the filter when it fails, instead of failing the request.
    pub fail_open: bool,
}

impl ChainFilter {
    /// The filter's name.
    pub fn name(&self) -> &Arc<str> {
        self.stable.pool.module().name()
    }

    /// The version this request runs on (chosen once, when it enters the
    /// chain).
    pub fn pick(&self, headers: &HeaderMap, request_id: &str) -> Pick<'_> {
        let (arm, canary) = match &self.canary {
            Some((c, arm)) if c.takes(headers, request_id) => (arm, Some(&**c)),
            _ => (&self.stable, None),
        };
        Pick {
            arm,
            canary,
            ran: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        }
    }
}

/// The version of one filter a request runs on, and whether it failed.
#[derive(Debug)]
pub struct Pick<'a> {
    /// The version.
    pub arm: &'a Arm,
    /// The canary, when the request went to it.
    pub canary: Option<&'a Canary>,
    ran: AtomicBool,
    failed: AtomicBool,
}

impl Pick<'_> {
    /// Notes that the filter was called for this request (a filter that an
    /// earlier one's answer or failure kept from running is not counted).
    pub fn ran(&self) {
        self.ran.store(true, Ordering::Relaxed);
    }

    /// Notes that the filter failed on this request.
    pub fn failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    /// Counts the request for its version (and canary) once the response
    /// is known.
    pub fn finish(&self, status: u16) {
        if !self.ran.load(Ordering::Relaxed) {
            return;
        }
        let bad = self
            .arm
            .stats
            .record(status, self.failed.load(Ordering::Relaxed));
        if let Some(c) = self.canary {
            c.record(bad);
        }
    }
}

/// Header bytes to a WIT string: ASCII unchanged, other bytes as U+0080..U+00FF.
pub fn value_to_string(v: &HeaderValue) -> String {
    match v.to_str() {
        Ok(s) => s.to_owned(),
        Err(_) => v.as_bytes().iter().map(|&b| char::from(b)).collect(),
    }
}

/// A WIT string to header bytes: characters up to U+00FF become one byte;
/// anything above is written as UTF-8.
pub(crate) fn string_to_value(s: &str) -> Result<HeaderValue, String> {
    let result = if s.is_ascii() {
        HeaderValue::from_str(s).map_err(|_| ())
    } else {
        let mut bytes = Vec::with_capacity(s.len());
        for c in s.chars() {
            if (c as u32) <= 0xFF {
                bytes.push(c as u32 as u8);
            } else {
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
        HeaderValue::from_bytes(&bytes).map_err(|_| ())
    };
    result.map_err(|()| format!("header value {s:?} contains control characters"))
}

/// Headers a filter may not set: they decide message framing or belong to
/// one connection, and letting a filter set them would allow smuggling.
pub(crate) fn is_protected(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

pub(crate) fn header_name(n: &str) -> Result<HeaderName, String> {
    let name = HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("{n:?} is not a valid header name"))?;
    if is_protected(&name) {
        return Err(format!(
            "the {name} header is managed by the gateway and cannot be edited"
        ));
    }
    Ok(name)
}

/// Applies header edits: remove, then set, then append.
pub fn apply_header_edits(
    headers: &mut HeaderMap,
    edits: &wit::HeaderEdits,
) -> Result<(), FilterFailure> {
    let invalid = FilterFailure::InvalidDecision;
    // Validate everything before changing anything, so a bad edit leaves the
    // message as it was.
    let remove = edits
        .remove
        .iter()
        .map(|n| header_name(n))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let set = edits
        .set
        .iter()
        .map(|(n, v)| Ok((header_name(n)?, string_to_value(v)?)))
        .collect::<Result<Vec<_>, String>>()
        .map_err(invalid)?;
    let append = edits
        .append
        .iter()
        .map(|(n, v)| Ok((header_name(n)?, string_to_value(v)?)))
        .collect::<Result<Vec<_>, String>>()
        .map_err(invalid)?;
    for n in remove {
        headers.remove(n);
    }
    let mut first_set = std::collections::HashSet::new();
    for (n, v) in set {
        // Several `set` entries for one name: the first replaces, the rest add.
        if first_set.insert(n.clone()) {
            headers.insert(n, v);
        } else {
            headers.append(n, v);
        }
    }
    for (n, v) in append {
        headers.append(n, v);
    }
    Ok(())
}

/// Parses a method from a request edit.
pub fn parse_method(m: &str) -> Result<Method, FilterFailure> {
    Method::from_bytes(m.as_bytes())
        .map_err(|_| FilterFailure::InvalidDecision(format!("{m:?} is not an HTTP method")))
}

/// Parses a path-and-query from a request edit.
pub fn parse_path(p: &str) -> Result<http::uri::PathAndQuery, FilterFailure> {
    if !p.starts_with('/') {
        return Err(FilterFailure::InvalidDecision(format!(
            "path {p:?} must start with '/'"
        )));
    }
    p.parse()
        .map_err(|_| FilterFailure::InvalidDecision(format!("{p:?} is not a valid path and query")))
}

/// Builds the HTTP response for a filter's `respond` or `replace`.
pub fn build_response(r: wit::Response) -> Result<Response<ProxyBody>, FilterFailure> {
    let status = StatusCode::from_u16(r.status)
        .ok()
        .filter(|s| s.as_u16() >= 200)
        .ok_or_else(|| {
            FilterFailure::InvalidDecision(format!("{} is not a valid final status", r.status))
        })?;
    let mut headers = HeaderMap::new();
    let edits = wit::HeaderEdits {
        remove: Vec::new(),
        set: Vec::new(),
        append: r.headers,
    };
    apply_header_edits(&mut headers, &edits)?;
    let body = match r.body {
        Some(b) if !b.is_empty() => body::full(Bytes::from(b)),
        _ => body::empty(),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// Applies `response-edits` (status and headers).
pub fn apply_response_edits(
    resp: &mut Response<ProxyBody>,
    edits: &wit::ResponseEdits,
    body_buffered: bool,
) -> Result<(), FilterFailure> {
    if edits.body.is_some() && !body_buffered {
        return Err(FilterFailure::InvalidDecision(
            "a response body edit needs buffer-response-body in filter-info".into(),
        ));
    }
    let status = match edits.status {
        Some(s) => Some(
            StatusCode::from_u16(s)
                .ok()
                .filter(|s| s.as_u16() >= 200)
                .ok_or_else(|| {
                    FilterFailure::InvalidDecision(format!("{s} is not a valid final status"))
                })?,
        ),
        None => None,
    };
    apply_header_edits(resp.headers_mut(), &edits.headers)?;
    if let Some(s) = status {
        *resp.status_mut() = s;
    }
    if let Some(b) = &edits.body {
        set_body(resp, Bytes::from(b.clone()));
    }
    Ok(())
}

/// Replaces a response's body with bytes and makes `Content-Length` say so
/// (for statuses that carry a body).
pub fn set_body(resp: &mut Response<ProxyBody>, bytes: Bytes) {
    let len = bytes.len();
    *resp.body_mut() = body::full(bytes);
    let s = resp.status();
    if s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED || s.is_informational() {
        resp.headers_mut().remove(http::header::CONTENT_LENGTH);
    } else {
        resp.headers_mut()
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_round_trip() {
        let v = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        let s = value_to_string(&v);
        assert_eq!(s, "caf\u{e9}");
        assert_eq!(string_to_value(&s).unwrap().as_bytes(), b"caf\xe9");
    }

    #[test]
    fn edits_are_validated_before_applied() {
        let mut h = HeaderMap::new();
        h.insert("x-keep", HeaderValue::from_static("1"));
        let bad = wit::HeaderEdits {
            remove: vec!["x-keep".into()],
            set: vec![("content-length".into(), "0".into())],
            append: vec![],
        };
        assert!(apply_header_edits(&mut h, &bad).is_err());
        assert!(
            h.contains_key("x-keep"),
            "a rejected edit must change nothing"
        );
        let bad_value = wit::HeaderEdits {
            remove: vec![],
            set: vec![("x-a".into(), "a\r\nb".into())],
            append: vec![],
        };
        assert!(apply_header_edits(&mut h, &bad_value).is_err());
    }

    #[test]
    fn edit_order_is_remove_set_append() {
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("old1"));
        h.append("x-a", HeaderValue::from_static("old2"));
        h.insert("x-b", HeaderValue::from_static("gone"));
        let edits = wit::HeaderEdits {
            remove: vec!["X-B".into()],
            set: vec![("x-a".into(), "new".into())],
            append: vec![("x-a".into(), "more".into())],
        };
        apply_header_edits(&mut h, &edits).unwrap();
        let a: Vec<_> = h
            .get_all("x-a")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(a, ["new", "more"]);
        assert!(!h.contains_key("x-b"));
    }
}
