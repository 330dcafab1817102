//! The boundary between HTTP messages and the WIT records filters see, as
//! pure functions: which headers a call carries (what the filter declared
//! at `init`), and how a filter's decision is validated and applied.
//!
//! Nothing here does I/O or touches wasmtime, so the request path, an
//! offline filter runner and fuzz targets all use the same code. Every
//! decision is validated in full before anything is applied: a filter
//! cannot set framing headers (no smuggling), produce an invalid status, or
//! leave a message half-edited when one of its edits is refused.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode};

use crate::{FilterFailure, wit};

/// Why a filter's decision was refused. Nothing of a refused decision is
/// applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEdit {
    /// Not a header name.
    #[error("{0:?} is not a valid header name")]
    HeaderName(String),
    /// A framing or connection header, which only the gateway sets.
    #[error("the {0} header is managed by the gateway and cannot be edited")]
    Protected(HeaderName),
    /// A header value with control characters.
    #[error("header value {0:?} contains control characters")]
    HeaderValue(String),
    /// Not a method.
    #[error("{0:?} is not an HTTP method")]
    Method(String),
    /// A path that does not start with `/`.
    #[error("path {0:?} must start with '/'")]
    RelativePath(String),
    /// Not a path and query.
    #[error("{0:?} is not a valid path and query")]
    Path(String),
    /// Not a final status (200..=999).
    #[error("{0} is not a valid final status")]
    Status(u16),
    /// Header edits that leave several `Host` headers.
    #[error("the header edits leave several Host headers")]
    SeveralHosts,
    /// A cluster that does not exist (or that the filter may not name).
    #[error("cluster {0:?} does not exist")]
    UnknownCluster(String),
    /// A body edit on a side whose body the filter did not ask for.
    #[error("a {0} body edit needs buffer-{0}-body in filter-info")]
    BodyNotBuffered(&'static str),
}

impl From<InvalidEdit> for FilterFailure {
    fn from(e: InvalidEdit) -> FilterFailure {
        FilterFailure::InvalidDecision(e)
    }
}

/// Which headers the host copies into a call, resolved at load.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Header bytes to a WIT string: ASCII unchanged, other bytes as U+0080..U+00FF.
pub fn value_to_string(v: &HeaderValue) -> String {
    match v.to_str() {
        Ok(s) => s.to_owned(),
        Err(_) => v.as_bytes().iter().map(|&b| char::from(b)).collect(),
    }
}

/// A WIT string to header bytes: characters up to U+00FF become one byte;
/// anything above is written as UTF-8.
pub fn string_to_value(s: &str) -> Result<HeaderValue, InvalidEdit> {
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
    result.map_err(|()| InvalidEdit::HeaderValue(s.to_owned()))
}

/// Headers a filter may not set: they decide message framing or belong to
/// one connection, and letting a filter set them would allow smuggling.
pub fn is_protected(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// A header name a filter may set.
pub fn header_name(n: &str) -> Result<HeaderName, InvalidEdit> {
    let name = HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
        .map_err(|_| InvalidEdit::HeaderName(n.to_owned()))?;
    if is_protected(&name) {
        return Err(InvalidEdit::Protected(name));
    }
    Ok(name)
}

/// Applies header edits: remove, then set, then append.
pub fn apply_header_edits(
    headers: &mut HeaderMap,
    edits: &wit::HeaderEdits,
) -> Result<(), InvalidEdit> {
    // Validate everything before changing anything, so a bad edit leaves the
    // message as it was.
    let remove = edits
        .remove
        .iter()
        .map(|n| header_name(n))
        .collect::<Result<Vec<_>, _>>()?;
    let pair = |(n, v): &(String, String)| Ok((header_name(n)?, string_to_value(v)?));
    let set = edits
        .set
        .iter()
        .map(pair)
        .collect::<Result<Vec<_>, InvalidEdit>>()?;
    let append = edits
        .append
        .iter()
        .map(pair)
        .collect::<Result<Vec<_>, InvalidEdit>>()?;
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
pub fn parse_method(m: &str) -> Result<Method, InvalidEdit> {
    Method::from_bytes(m.as_bytes()).map_err(|_| InvalidEdit::Method(m.to_owned()))
}

/// Parses a path-and-query from a request edit.
pub fn parse_path(p: &str) -> Result<http::uri::PathAndQuery, InvalidEdit> {
    if !p.starts_with('/') {
        return Err(InvalidEdit::RelativePath(p.to_owned()));
    }
    p.parse().map_err(|_| InvalidEdit::Path(p.to_owned()))
}

/// A final status (200..=999) a filter may answer with.
fn final_status(s: u16) -> Result<StatusCode, InvalidEdit> {
    StatusCode::from_u16(s)
        .ok()
        .filter(|s| s.as_u16() >= 200)
        .ok_or(InvalidEdit::Status(s))
}

/// What a request decision changed besides the head it edited in place.
#[derive(Debug)]
pub struct RequestChange<C> {
    /// The cluster the request now goes to, resolved by the caller.
    pub cluster: Option<C>,
    /// The request body that replaces the one buffered.
    pub body: Option<Vec<u8>>,
}

/// Validates a `proceed` decision's edits and applies them to the request
/// head. `cluster` resolves a new target cluster's name (`None`: there is no
/// such cluster, or the filter may not send there); `body_buffered` says
/// whether the filter asked for the body, which it must have to replace it.
/// On any error, `parts` is unchanged.
pub fn apply_request_edits<C>(
    parts: &mut Parts,
    edits: wit::RequestEdits,
    body_buffered: bool,
    cluster: impl FnOnce(&str) -> Option<C>,
) -> Result<RequestChange<C>, InvalidEdit> {
    if edits.body.is_some() && !body_buffered {
        return Err(InvalidEdit::BodyNotBuffered("request"));
    }
    // Validate everything first, so a rejected decision changes nothing.
    let method = edits.method.as_deref().map(parse_method).transpose()?;
    let path = edits
        .path_with_query
        .as_deref()
        .map(parse_path)
        .transpose()?;
    let new_cluster = match &edits.cluster {
        Some(name) => Some(cluster(name).ok_or_else(|| InvalidEdit::UnknownCluster(name.clone()))?),
        None => None,
    };
    let edits_host = edits
        .headers
        .set
        .iter()
        .chain(&edits.headers.append)
        .any(|(n, _)| n.eq_ignore_ascii_case("host"));
    if edits_host {
        // Several `Host` headers would let the upstream and the gateway
        // disagree on the target (RFC 9112 §3.2): refused as a whole.
        let mut trial = parts.headers.clone();
        apply_header_edits(&mut trial, &edits.headers)?;
        if trial.get_all(header::HOST).iter().count() > 1 {
            return Err(InvalidEdit::SeveralHosts);
        }
        parts.headers = trial;
    } else {
        apply_header_edits(&mut parts.headers, &edits.headers)?;
    }
    if let Some(m) = method {
        parts.method = m;
    }
    if let Some(p) = path {
        parts.uri = http::Uri::from(p);
    }
    Ok(RequestChange {
        cluster: new_cluster,
        body: edits.body,
    })
}

/// Validates a `proceed` decision's response edits and applies the status
/// and headers; returns the body that replaces the buffered one, if any.
/// On any error, nothing is changed.
pub fn apply_response_edits(
    status: &mut StatusCode,
    headers: &mut HeaderMap,
    edits: wit::ResponseEdits,
    body_buffered: bool,
) -> Result<Option<Vec<u8>>, InvalidEdit> {
    if edits.body.is_some() && !body_buffered {
        return Err(InvalidEdit::BodyNotBuffered("response"));
    }
    let new_status = edits.status.map(final_status).transpose()?;
    apply_header_edits(headers, &edits.headers)?;
    if let Some(s) = new_status {
        *status = s;
    }
    Ok(edits.body)
}

/// A response a filter made (`respond` on the request side, `replace` on
/// the response side), validated: its status, headers and body.
#[derive(Debug)]
pub struct MadeResponse {
    /// A final status.
    pub status: StatusCode,
    /// Its headers (no framing headers).
    pub headers: HeaderMap,
    /// Its body; empty when the filter gave none.
    pub body: Vec<u8>,
}

/// Validates a filter-made response.
pub fn made_response(r: wit::Response) -> Result<MadeResponse, InvalidEdit> {
    let status = final_status(r.status)?;
    let mut headers = HeaderMap::new();
    let edits = wit::HeaderEdits {
        remove: Vec::new(),
        set: Vec::new(),
        append: r.headers,
    };
    apply_header_edits(&mut headers, &edits)?;
    Ok(MadeResponse {
        status,
        headers,
        body: r.body.unwrap_or_default(),
    })
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

    fn head() -> Parts {
        let (parts, ()) = http::Request::builder()
            .uri("/a")
            .header("host", "h.test")
            .header("x-keep", "1")
            .body(())
            .unwrap()
            .into_parts();
        parts
    }

    fn edits() -> wit::RequestEdits {
        wit::RequestEdits {
            headers: wit::HeaderEdits {
                remove: vec!["x-keep".into()],
                set: vec![],
                append: vec![],
            },
            method: None,
            path_with_query: None,
            cluster: None,
            body: None,
        }
    }

    #[test]
    fn a_refused_request_decision_leaves_the_head_as_it_was() {
        let mut parts = head();
        let unknown = wit::RequestEdits {
            path_with_query: Some("/b".into()),
            cluster: Some("nowhere".into()),
            ..edits()
        };
        let e = apply_request_edits(&mut parts, unknown, false, |_| None::<()>).unwrap_err();
        assert!(e.to_string().contains("\"nowhere\" does not exist"), "{e}");
        let two_hosts = wit::RequestEdits {
            headers: wit::HeaderEdits {
                remove: vec!["x-keep".into()],
                set: vec![],
                append: vec![("host".into(), "other.test".into())],
            },
            ..edits()
        };
        assert!(apply_request_edits(&mut parts, two_hosts, false, |_| Some(())).is_err());
        let body = wit::RequestEdits {
            body: Some(b"x".to_vec()),
            ..edits()
        };
        assert!(apply_request_edits(&mut parts, body, false, |_| Some(())).is_err());
        assert_eq!(parts.uri, "/a");
        assert!(parts.headers.contains_key("x-keep"));
    }

    #[test]
    fn an_accepted_request_decision_is_applied_whole() {
        let mut parts = head();
        let all = wit::RequestEdits {
            method: Some("POST".into()),
            path_with_query: Some("/b?q=1".into()),
            cluster: Some("c".into()),
            body: Some(b"new".to_vec()),
            ..edits()
        };
        let change = apply_request_edits(&mut parts, all, true, |n| Some(n.to_owned())).unwrap();
        assert_eq!(change.cluster.as_deref(), Some("c"));
        assert_eq!(change.body.as_deref(), Some(&b"new"[..]));
        assert_eq!(parts.method, Method::POST);
        assert_eq!(parts.uri, "/b?q=1");
        assert!(!parts.headers.contains_key("x-keep"));
    }

    #[test]
    fn made_responses_and_response_edits_need_a_final_status() {
        let r = wit::Response {
            status: 101,
            headers: vec![],
            body: None,
        };
        assert!(made_response(r).is_err());
        let (mut status, mut headers) = (StatusCode::OK, HeaderMap::new());
        let edits = wit::ResponseEdits {
            status: Some(99),
            headers: wit::HeaderEdits {
                remove: vec![],
                set: vec![("x-a".into(), "1".into())],
                append: vec![],
            },
            body: None,
        };
        assert!(apply_response_edits(&mut status, &mut headers, edits, false).is_err());
        assert_eq!(status, StatusCode::OK);
        assert!(headers.is_empty(), "nothing applied");
    }
}
