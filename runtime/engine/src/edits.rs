//! What a filter asks of the host and what it decides, in the host's own
//! types, as pure functions: which parts of the exchange a call carries
//! (what the filter declared at `init`), and how its edits are validated
//! and applied. Both contract versions end here: a 0.2 guest's edit
//! methods and a 0.1 guest's edit records become the same [`HeaderOp`]s,
//! [`RequestEdits`] and [`ResponseEdits`].
//!
//! Nothing here does I/O or touches wasmtime, so the request path, an
//! offline filter runner and fuzz targets all use the same code. Every
//! edit is validated when it is made, and a decision is applied whole or
//! not at all: a filter cannot set framing headers (no smuggling), produce
//! an invalid status, or leave a message half-edited when one of its edits
//! is refused.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode};

use crate::FilterFailure;

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
    #[error("cluster {0:?} does not exist or is not in this filter's reroute_clusters")]
    UnknownCluster(String),
    /// A body edit on a side whose body the filter did not ask for.
    #[error("a {0} body edit needs buffer-{0}-body declared at init")]
    BodyNotBuffered(&'static str),
    /// An edit the phase does not allow (the request in `on-response`: it
    /// has gone upstream).
    #[error("{0}")]
    WrongPhase(&'static str),
    /// More edits in one call than the host keeps.
    #[error("more than {0} edits in one call")]
    TooMany(usize),
    /// More bytes handed back than the host keeps (see [`MAX_CONTEXT`],
    /// [`MAX_HEADER_BYTES`], [`MAX_BODY`]).
    #[error("the {what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What: `context`, `header edits`, `body`.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A header edit outside the filter's bound (`write_request_headers`,
    /// `write_response_headers`).
    #[error("the filter may not set or remove header {name:?} (not in its {key})")]
    NotPermitted {
        /// The header.
        name: String,
        /// The config key that bounds it.
        key: &'static str,
    },
    /// A header edit on a header an earlier filter of the route sealed.
    #[error("header {0:?} was sealed by an earlier filter on this route")]
    Sealed(String),
    /// A response handle from another call, or one already used.
    #[error("a response that is no longer valid (built in an earlier call, or already returned)")]
    StaleResponse,
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
    /// Parses declared header names; `what` names the list in errors.
    pub fn names(names: &[String], what: &str) -> Result<Interest, String> {
        Ok(Interest::Names(
            names
                .iter()
                .map(|n| {
                    HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
                        .map_err(|_| format!("{what}: {n:?} is not a header name"))
                })
                .collect::<Result<_, _>>()?,
        ))
    }

    /// Copies the declared headers as (name, value) strings.
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

/// What a filter declared at `init` for one route: which calls the host
/// makes and what each carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    /// `on-request` runs (always, for a 0.1 guest).
    pub on_request: bool,
    /// `on-response` runs.
    pub on_response: bool,
    /// The request body is buffered and handed to `on-request`.
    pub request_body: bool,
    /// The response body is buffered and handed to `on-response`.
    pub response_body: bool,
    /// `on-response` sees the forwarded request's headers, so the host
    /// keeps them for the exchange.
    pub request_headers_on_response: bool,
    /// The request headers copied into each call (0.1 guests; a 0.2
    /// guest reads the ones it wants).
    pub request_headers: Interest,
    /// The response headers copied into each call (0.1 guests).
    pub response_headers: Interest,
}

impl Needs {
    /// A filter that asked for nothing: no call is made.
    pub fn nothing() -> Needs {
        Needs {
            on_request: false,
            on_response: false,
            request_body: false,
            response_body: false,
            request_headers_on_response: false,
            request_headers: Interest::None,
            response_headers: Interest::None,
        }
    }

    /// Checks that the declarations fit together.
    pub fn check(self) -> Result<Needs, String> {
        if self.response_body && !self.on_response {
            return Err(
                "the response body is to be buffered but the response phase is not declared: \
                 the body would never be handed to the filter"
                    .into(),
            );
        }
        Ok(self)
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
    // `from_bytes` lowercases as it parses.
    let name =
        HeaderName::from_bytes(n.as_bytes()).map_err(|_| InvalidEdit::HeaderName(n.to_owned()))?;
    if is_protected(&name) {
        return Err(InvalidEdit::Protected(name));
    }
    Ok(name)
}

/// One header edit, validated. Applied in the order made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    /// Remove every value.
    Remove(HeaderName),
    /// Replace every value with this one.
    Set(HeaderName, HeaderValue),
    /// Add a value, keeping the others.
    Append(HeaderName, HeaderValue),
}

impl HeaderOp {
    /// The header it edits.
    pub fn name(&self) -> &HeaderName {
        match self {
            HeaderOp::Remove(n) | HeaderOp::Set(n, _) | HeaderOp::Append(n, _) => n,
        }
    }

    /// `remove-header`.
    pub fn remove(n: &str) -> Result<HeaderOp, InvalidEdit> {
        Ok(HeaderOp::Remove(header_name(n)?))
    }
    /// `set-header`.
    pub fn set(n: &str, v: &str) -> Result<HeaderOp, InvalidEdit> {
        Ok(HeaderOp::Set(header_name(n)?, string_to_value(v)?))
    }
    /// `append-header`.
    pub fn append(n: &str, v: &str) -> Result<HeaderOp, InvalidEdit> {
        Ok(HeaderOp::Append(header_name(n)?, string_to_value(v)?))
    }

    fn sets_host(&self) -> bool {
        matches!(self, HeaderOp::Set(n, _) | HeaderOp::Append(n, _) if n == header::HOST)
    }
}

/// Applies validated header edits in order.
pub fn apply_header_ops(headers: &mut HeaderMap, ops: Vec<HeaderOp>) {
    for op in ops {
        match op {
            HeaderOp::Remove(n) => {
                headers.remove(n);
            }
            HeaderOp::Set(n, v) => {
                headers.insert(n, v);
            }
            HeaderOp::Append(n, v) => {
                headers.append(n, v);
            }
        }
    }
}

/// The host a request is for: the URI's authority, or `Host`.
pub fn authority_of(parts: &Parts) -> Option<&str> {
    if let Some(a) = parts.uri.authority() {
        return Some(a.as_str());
    }
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
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
pub fn final_status(s: u16) -> Result<StatusCode, InvalidEdit> {
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

/// A `proceed` decision's changes to the request, each already valid on
/// its own.
#[derive(Debug, Default)]
pub struct RequestEdits {
    /// Header edits, in order.
    pub headers: Vec<HeaderOp>,
    /// A new method.
    pub method: Option<Method>,
    /// A new path and query.
    pub path: Option<http::uri::PathAndQuery>,
    /// Another cluster, by name.
    pub cluster: Option<String>,
    /// A new body.
    pub body: Option<Vec<u8>>,
}

/// A `proceed` decision's changes to the response, each already valid on
/// its own.
#[derive(Debug, Default)]
pub struct ResponseEdits {
    /// Header edits, in order.
    pub headers: Vec<HeaderOp>,
    /// A new status.
    pub status: Option<StatusCode>,
    /// A new body.
    pub body: Option<Vec<u8>>,
}

/// Largest `context` a filter may hand from `on-request` to `on-response`
/// (it is held for the whole upstream call).
pub const MAX_CONTEXT: usize = 64 << 10;
/// Largest total of header names and values one decision may set or
/// append (on the message, or in a response the filter makes).
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// Largest body one decision may set (on the message, or in a response
/// the filter makes).
pub const MAX_BODY: usize = 16 << 20;

fn header_bytes<'a>(ops: impl IntoIterator<Item = &'a HeaderOp>) -> usize {
    ops.into_iter()
        .map(|op| match op {
            HeaderOp::Remove(n) => n.as_str().len(),
            HeaderOp::Set(n, v) | HeaderOp::Append(n, v) => n.as_str().len() + v.len(),
        })
        .sum()
}

fn within(what: &'static str, size: usize, limit: usize) -> Result<(), InvalidEdit> {
    if size > limit {
        return Err(InvalidEdit::TooLarge { what, size, limit });
    }
    Ok(())
}

/// Checks a decision's sizes against [`MAX_HEADER_BYTES`] and
/// [`MAX_BODY`]: headers and body of the edits, or of a response made.
pub fn check_sizes(
    headers: &[HeaderOp],
    made_headers: Option<&HeaderMap>,
    body: Option<&[u8]>,
) -> Result<(), InvalidEdit> {
    let made = made_headers.map_or(0, |h| {
        h.iter().map(|(n, v)| n.as_str().len() + v.len()).sum()
    });
    within(
        "header edits",
        header_bytes(headers) + made,
        MAX_HEADER_BYTES,
    )?;
    within("body", body.map_or(0, <[u8]>::len), MAX_BODY)
}

/// Checks a `context` against [`MAX_CONTEXT`].
pub fn check_context(context: Option<&[u8]>) -> Result<(), InvalidEdit> {
    within("context", context.map_or(0, <[u8]>::len), MAX_CONTEXT)
}

/// Checks what only the whole decision shows, and applies it to the
/// request head. `cluster` resolves a new target cluster's name (`None`:
/// there is no such cluster, or the filter may not send there);
/// `body_buffered` says whether the filter asked for the body, which it
/// must have to replace it. On any error, `parts` is unchanged.
pub fn apply_request_edits<C>(
    parts: &mut Parts,
    edits: RequestEdits,
    body_buffered: bool,
    cluster: impl FnOnce(&str) -> Option<C>,
) -> Result<RequestChange<C>, InvalidEdit> {
    if edits.body.is_some() && !body_buffered {
        return Err(InvalidEdit::BodyNotBuffered("request"));
    }
    let new_cluster = match &edits.cluster {
        Some(name) => Some(cluster(name).ok_or_else(|| InvalidEdit::UnknownCluster(name.clone()))?),
        None => None,
    };
    if edits.headers.iter().any(HeaderOp::sets_host) {
        // Several `Host` headers would let the upstream and the gateway
        // disagree on the target (RFC 9112 §3.2): refused as a whole.
        let mut trial = parts.headers.clone();
        apply_header_ops(&mut trial, edits.headers);
        if trial.get_all(header::HOST).iter().count() > 1 {
            return Err(InvalidEdit::SeveralHosts);
        }
        parts.headers = trial;
    } else {
        apply_header_ops(&mut parts.headers, edits.headers);
    }
    if let Some(m) = edits.method {
        parts.method = m;
    }
    if let Some(p) = edits.path {
        parts.uri = http::Uri::from(p);
    }
    Ok(RequestChange {
        cluster: new_cluster,
        body: edits.body,
    })
}

/// Applies a `proceed` decision's response edits to the status and
/// headers; returns the body that replaces the buffered one, if any. On
/// any error, nothing is changed.
pub fn apply_response_edits(
    status: &mut StatusCode,
    headers: &mut HeaderMap,
    edits: ResponseEdits,
    body_buffered: bool,
) -> Result<Option<Vec<u8>>, InvalidEdit> {
    if edits.body.is_some() && !body_buffered {
        return Err(InvalidEdit::BodyNotBuffered("response"));
    }
    apply_header_ops(headers, edits.headers);
    if let Some(s) = edits.status {
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

/// Validates a filter-made response given as a status and header pairs.
pub fn made_response(
    status: u16,
    headers: &[(String, String)],
    body: Option<Vec<u8>>,
) -> Result<MadeResponse, InvalidEdit> {
    let status = final_status(status)?;
    let mut map = HeaderMap::new();
    for (n, v) in headers {
        map.append(header_name(n)?, string_to_value(v)?);
    }
    Ok(MadeResponse {
        status,
        headers: map,
        body: body.unwrap_or_default(),
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
    fn header_edits_are_validated_as_they_are_made() {
        assert!(matches!(
            HeaderOp::set("content-length", "0"),
            Err(InvalidEdit::Protected(_))
        ));
        assert!(matches!(
            HeaderOp::set("x-a", "a\r\nb"),
            Err(InvalidEdit::HeaderValue(_))
        ));
        assert!(matches!(
            HeaderOp::remove("bad name"),
            Err(InvalidEdit::HeaderName(_))
        ));
        assert_eq!(
            HeaderOp::remove("X-B").unwrap(),
            HeaderOp::Remove(HeaderName::from_static("x-b"))
        );
    }

    #[test]
    fn header_edits_apply_in_the_order_made() {
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("old1"));
        h.append("x-a", HeaderValue::from_static("old2"));
        h.insert("x-b", HeaderValue::from_static("gone"));
        let ops = vec![
            HeaderOp::remove("x-b").unwrap(),
            HeaderOp::set("x-a", "new").unwrap(),
            HeaderOp::append("x-a", "more").unwrap(),
            HeaderOp::set("x-c", "1").unwrap(),
            HeaderOp::remove("x-c").unwrap(),
        ];
        apply_header_ops(&mut h, ops);
        let a: Vec<_> = h
            .get_all("x-a")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(a, ["new", "more"]);
        assert!(!h.contains_key("x-b"));
        assert!(
            !h.contains_key("x-c"),
            "a later remove undoes an earlier set"
        );
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

    fn edits() -> RequestEdits {
        RequestEdits {
            headers: vec![HeaderOp::remove("x-keep").unwrap()],
            path: Some("/b".parse().unwrap()),
            ..RequestEdits::default()
        }
    }

    #[test]
    fn a_refused_request_decision_leaves_the_head_as_it_was() {
        let mut parts = head();
        let unknown = RequestEdits {
            cluster: Some("nowhere".into()),
            ..edits()
        };
        let e = apply_request_edits(&mut parts, unknown, false, |_| None::<()>).unwrap_err();
        assert!(e.to_string().contains("\"nowhere\" does not exist"), "{e}");
        let mut two_hosts = edits();
        two_hosts
            .headers
            .push(HeaderOp::append("host", "other.test").unwrap());
        assert_eq!(
            apply_request_edits(&mut parts, two_hosts, false, |_| Some(())).unwrap_err(),
            InvalidEdit::SeveralHosts
        );
        let body = RequestEdits {
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
        let mut all = RequestEdits {
            method: Some(Method::POST),
            path: Some("/b?q=1".parse().unwrap()),
            cluster: Some("c".into()),
            body: Some(b"new".to_vec()),
            ..edits()
        };
        all.headers
            .push(HeaderOp::set("host", "moved.test").unwrap());
        let change = apply_request_edits(&mut parts, all, true, |n| Some(n.to_owned())).unwrap();
        assert_eq!(change.cluster.as_deref(), Some("c"));
        assert_eq!(change.body.as_deref(), Some(&b"new"[..]));
        assert_eq!(parts.method, Method::POST);
        assert_eq!(parts.uri, "/b?q=1");
        assert_eq!(parts.headers["host"], "moved.test");
        assert!(!parts.headers.contains_key("x-keep"));
    }

    #[test]
    fn made_responses_and_response_edits_need_a_final_status() {
        assert_eq!(
            made_response(101, &[], None).unwrap_err(),
            InvalidEdit::Status(101)
        );
        assert!(
            made_response(200, &[("transfer-encoding".into(), "chunked".into())], None).is_err()
        );
        assert_eq!(final_status(99).unwrap_err(), InvalidEdit::Status(99));
        let (mut status, mut headers) = (StatusCode::OK, HeaderMap::new());
        let edits = ResponseEdits {
            headers: vec![HeaderOp::set("x-a", "1").unwrap()],
            body: Some(b"b".to_vec()),
            ..ResponseEdits::default()
        };
        assert!(apply_response_edits(&mut status, &mut headers, edits, false).is_err());
        assert!(headers.is_empty(), "nothing applied");
    }
}
