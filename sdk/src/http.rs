//! Request, response, edit and decision types: thin, owned wrappers over the WIT
//! records so that filter code never names generated bindings.

use std::cell::OnceCell;

use crate::__private::bindings::wasmgate::filter::types as wit;

/// Facts about the exchange that the host fills in.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// The gateway's id for this request.
    pub request_id: String,
    /// The route's name in the gateway config.
    pub route: String,
    /// `ip:port` of the downstream peer.
    pub client_addr: String,
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// Unix epoch milliseconds when the gateway received the request head.
    pub received_at_ms: u64,
}

/// The request as the filter sees it: method, target, facts, and the headers the
/// filter declared in [`FilterInfo::request_headers`]. Each part is fetched
/// from the host the first time it is read, and only then: a filter pays for
/// what it reads.
#[derive(Clone)]
pub struct Request<'a> {
    handle: &'a wit::Request,
    declared: &'a HeaderInterest,
    method: OnceCell<String>,
    scheme: OnceCell<String>,
    authority: OnceCell<String>,
    path_with_query: OnceCell<String>,
    headers: OnceCell<Vec<(String, String)>>,
    body: OnceCell<Option<Vec<u8>>>,
    route: OnceCell<String>,
    request_id: OnceCell<String>,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method())
            .field("path_with_query", &self.path_with_query())
            .finish_non_exhaustive()
    }
}

impl<'a> Request<'a> {
    fn new(handle: &'a wit::Request, declared: &'a HeaderInterest) -> Self {
        Request {
            handle,
            declared,
            method: OnceCell::new(),
            scheme: OnceCell::new(),
            authority: OnceCell::new(),
            path_with_query: OnceCell::new(),
            headers: OnceCell::new(),
            body: OnceCell::new(),
            route: OnceCell::new(),
            request_id: OnceCell::new(),
        }
    }

    /// The method, e.g. `GET`.
    pub fn method(&self) -> &str {
        self.method.get_or_init(|| self.handle.method())
    }
    /// `http` or `https`.
    pub fn scheme(&self) -> &str {
        self.scheme.get_or_init(|| self.handle.scheme())
    }
    /// The host (and port, if the client sent one) the request is for.
    pub fn authority(&self) -> &str {
        self.authority.get_or_init(|| self.handle.authority())
    }
    /// Path and query, e.g. `/api/search?q=shoes`.
    pub fn path_with_query(&self) -> &str {
        self.path_with_query
            .get_or_init(|| self.handle.path_with_query())
    }
    /// The path without the query.
    pub fn path(&self) -> &str {
        let pq = self.path_with_query();
        pq.split_once('?').map_or(pq, |(p, _)| p)
    }
    /// The query string without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.path_with_query().split_once('?').map(|(_, q)| q)
    }
    /// The declared headers, fetched once.
    fn declared_headers(&self) -> &[(String, String)] {
        self.headers.get_or_init(|| match self.declared {
            HeaderInterest::None => Vec::new(),
            HeaderInterest::All => self.handle.headers(),
            HeaderInterest::Names(names) => self.handle.headers_named(names),
        })
    }
    /// The first value of a header (names compare case-insensitively). Only
    /// headers the filter declared interest in are present; see
    /// [`Request::fetch_header`] for any other.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(self.declared_headers(), name)
    }
    /// Every value of a header, in order.
    pub fn header_all<'b>(&'b self, name: &'b str) -> impl Iterator<Item = &'b str> + 'b {
        header_all(self.declared_headers(), name)
    }
    /// All declared headers as `(name, value)`, names lower-case.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.declared_headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
    }
    /// Every value of any header, declared or not, asked of the host now
    /// (one host call each time).
    pub fn fetch_header(&self, name: &str) -> Vec<String> {
        self.handle.header(name)
    }
    /// The buffered body, if the filter asked for it.
    pub fn body(&self) -> Option<&[u8]> {
        self.body.get_or_init(|| self.handle.body()).as_deref()
    }
    /// `ip:port` of the client (the one a trusted proxy named, if any),
    /// asked of the host now.
    pub fn client_addr(&self) -> String {
        self.handle.client_addr()
    }
    /// Whether the client's connection is TLS, asked of the host now.
    pub fn tls(&self) -> bool {
        self.handle.tls()
    }
    /// Unix epoch milliseconds when the gateway received the request head,
    /// asked of the host now.
    pub fn received_at_ms(&self) -> u64 {
        self.handle.received_at_ms()
    }
    /// Every fact the host keeps (request id, route, client address…), asked
    /// of the host now: five host calls. Prefer the accessor for the one a
    /// filter needs.
    pub fn meta(&self) -> RequestMeta {
        RequestMeta {
            request_id: self.request_id().to_owned(),
            route: self.route().to_owned(),
            client_addr: self.handle.client_addr(),
            tls: self.handle.tls(),
            received_at_ms: self.handle.received_at_ms(),
        }
    }
    /// The route's name in the gateway config.
    pub fn route(&self) -> &str {
        self.route.get_or_init(|| self.handle.route())
    }
    /// The gateway's request id.
    pub fn request_id(&self) -> &str {
        self.request_id.get_or_init(|| self.handle.id())
    }
}

/// A response: one the filter builds to answer early or to replace the upstream's
/// ([`Response::new`]), or the one it is shown in [`crate::Filter::on_response`]
/// (its status, the headers the filter declared, and its body if buffered).
#[derive(Debug, Clone)]
pub struct Response {
    inner: Parts,
}

/// A response's parts, held by the guest.
#[derive(Debug, Clone)]
struct Parts {
    status: u16,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

impl Response {
    /// An empty response with this status.
    pub fn new(status: u16) -> Self {
        Response {
            inner: Parts {
                status,
                headers: Vec::new(),
                body: None,
            },
        }
    }
    /// Adds a header (builder style).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.inner
            .headers
            .push((name.into().to_ascii_lowercase(), value.into()));
        self
    }
    /// Sets the body (builder style).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.inner.body = Some(body.into());
        self
    }
    /// Sets a `text/plain` body.
    pub fn text(self, body: impl Into<String>) -> Self {
        self.with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into())
    }
    /// Sets an `application/json` body from JSON text.
    pub fn json(self, body: impl Into<String>) -> Self {
        self.with_header("content-type", "application/json")
            .with_body(body.into())
    }
    /// The status code.
    pub fn status(&self) -> u16 {
        self.inner.status
    }
    /// The first value of a header. In `on_response`, only headers the filter
    /// declared in [`FilterInfo::response_headers`] are present.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.inner.headers, name)
    }
    /// Every value of a header, in order.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        header_all(&self.inner.headers, name)
    }
    /// All headers present as `(name, value)`.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.inner
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
    }
    /// The body, if buffered or built by a filter.
    pub fn body(&self) -> Option<&[u8]> {
        self.inner.body.as_deref()
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn header_all<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[derive(Debug, Clone, Default)]
struct HeaderEdits {
    remove: Vec<String>,
    set: Vec<(String, String)>,
    append: Vec<(String, String)>,
}

impl HeaderEdits {
    /// Makes the edits through `remove` and `set`/`append` calls, in the
    /// order the host has always applied them: every remove, then every set
    /// (several for one name: the first replaces, the rest add), then
    /// every append.
    fn apply(self, remove: impl Fn(&str), set: impl Fn(&str, &str), append: impl Fn(&str, &str)) {
        for n in &self.remove {
            remove(n);
        }
        let mut seen: Vec<&str> = Vec::new();
        for (n, v) in &self.set {
            if seen.contains(&n.as_str()) {
                append(n, v);
            } else {
                seen.push(n);
                set(n, v);
            }
        }
        for (n, v) in &self.append {
            append(n, v);
        }
    }
}

/// Changes to the request before it moves on. The host applies header edits in
/// the order remove, set, append. Any header may be edited, declared or not.
#[derive(Debug, Clone, Default)]
pub struct RequestEdits {
    headers: HeaderEdits,
    method: Option<String>,
    path_with_query: Option<String>,
    cluster: Option<String>,
    body: Option<Vec<u8>>,
    context: Option<Vec<u8>>,
}

impl RequestEdits {
    /// Replaces every value of a header with this one.
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .set
            .push((name.into().to_ascii_lowercase(), value.into()));
        self
    }
    /// Adds a value to a header, keeping the ones it has.
    pub fn append_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .append
            .push((name.into().to_ascii_lowercase(), value.into()));
        self
    }
    /// Removes a header.
    pub fn remove_header(mut self, name: impl Into<String>) -> Self {
        self.headers.remove.push(name.into().to_ascii_lowercase());
        self
    }
    /// Changes the method sent upstream.
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }
    /// Changes the path (and query) sent upstream; must start with `/`.
    pub fn path_with_query(mut self, path_with_query: impl Into<String>) -> Self {
        self.path_with_query = Some(path_with_query.into());
        self
    }
    /// Sends the request to another cluster named in the gateway config.
    pub fn cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = Some(cluster.into());
        self
    }
    /// Replaces the body (requires `buffer_request_body`).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }
    /// Bytes handed back to this filter's `on_response` for the same exchange.
    pub fn context(mut self, context: impl Into<Vec<u8>>) -> Self {
        self.context = Some(context.into());
        self
    }
}

/// Changes to the response on its way back.
#[derive(Debug, Clone, Default)]
pub struct ResponseEdits {
    headers: HeaderEdits,
    status: Option<u16>,
    body: Option<Vec<u8>>,
}

impl ResponseEdits {
    /// Replaces every value of a header with this one.
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .set
            .push((name.into().to_ascii_lowercase(), value.into()));
        self
    }
    /// Adds a value to a header, keeping the ones it has.
    pub fn append_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .append
            .push((name.into().to_ascii_lowercase(), value.into()));
        self
    }
    /// Removes a header.
    pub fn remove_header(mut self, name: impl Into<String>) -> Self {
        self.headers.remove.push(name.into().to_ascii_lowercase());
        self
    }
    /// Changes the status code.
    pub fn status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }
    /// Replaces the body (requires `buffer_response_body`).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }
}

/// What happens to the request after [`crate::Filter::on_request`].
#[derive(Debug, Clone)]
pub enum OnRequest {
    /// Apply the edits and pass the request on.
    Proceed(RequestEdits),
    /// Answer now: later filters and the upstream are skipped.
    Respond(Response),
}

impl OnRequest {
    /// Pass the request on unchanged.
    pub fn proceed() -> Self {
        OnRequest::Proceed(RequestEdits::default())
    }
    /// Pass the request on with these edits.
    pub fn proceed_with(edits: RequestEdits) -> Self {
        OnRequest::Proceed(edits)
    }
    /// Answer the client now with this response.
    pub fn respond(response: Response) -> Self {
        OnRequest::Respond(response)
    }
}

/// What happens to the response after [`crate::Filter::on_response`].
#[derive(Debug, Clone)]
pub enum OnResponse {
    /// Apply the edits and pass the response on.
    Proceed(ResponseEdits),
    /// Send this response instead.
    Replace(Response),
}

impl OnResponse {
    /// Pass the response on unchanged.
    pub fn proceed() -> Self {
        OnResponse::Proceed(ResponseEdits::default())
    }
    /// Pass the response on with these edits.
    pub fn proceed_with(edits: ResponseEdits) -> Self {
        OnResponse::Proceed(edits)
    }
    /// Replace the response.
    pub fn replace(response: Response) -> Self {
        OnResponse::Replace(response)
    }
}

/// Which headers the host copies into a call.
#[derive(Debug, Clone, Default)]
pub enum HeaderInterest {
    /// None (the cheapest).
    #[default]
    None,
    /// Only these (case-insensitive).
    Names(Vec<String>),
    /// All of them (costs a copy of every header on every call).
    All,
}

/// What a filter needs from the host, returned by [`crate::Filter::info`].
#[derive(Debug, Clone)]
pub struct FilterInfo {
    request_headers: HeaderInterest,
    response_headers: HeaderInterest,
    buffer_request_body: bool,
    buffer_response_body: bool,
    wants_request: bool,
    wants_response: bool,
    request_headers_on_response: bool,
}

impl Default for FilterInfo {
    fn default() -> Self {
        FilterInfo {
            request_headers: HeaderInterest::None,
            response_headers: HeaderInterest::None,
            buffer_request_body: false,
            buffer_response_body: false,
            wants_request: true,
            wants_response: false,
            request_headers_on_response: true,
        }
    }
}

impl FilterInfo {
    /// Reads nothing; runs the request phase and skips the response phase.
    pub fn new() -> Self {
        FilterInfo::default()
    }
    /// Copy these request headers into each `on_request` call.
    pub fn request_headers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.request_headers = HeaderInterest::Names(
            names
                .into_iter()
                .map(|n| n.as_ref().to_ascii_lowercase())
                .collect(),
        );
        self
    }
    /// Copy every request header (costly: prefer names).
    pub fn all_request_headers(mut self) -> Self {
        self.request_headers = HeaderInterest::All;
        self
    }
    /// Copy these response headers into each `on_response` call; also turns
    /// the response phase on.
    pub fn response_headers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.response_headers = HeaderInterest::Names(
            names
                .into_iter()
                .map(|n| n.as_ref().to_ascii_lowercase())
                .collect(),
        );
        self.wants_response = true;
        self
    }
    /// Copy every response header; also turns the response phase on.
    pub fn all_response_headers(mut self) -> Self {
        self.response_headers = HeaderInterest::All;
        self.wants_response = true;
        self
    }
    /// Whether `on_response` sees the request's declared headers (as they were
    /// forwarded). On by default; a filter that reads none of them there turns
    /// it off, and the host then keeps no copy of the request's headers for
    /// the response side.
    pub fn request_headers_on_response(mut self, yes: bool) -> Self {
        self.request_headers_on_response = yes;
        self
    }
    /// Call [`crate::Filter::on_request`] for every request (the default).
    /// A filter that only works on responses turns it off, and the host then
    /// makes no call on the way in at all.
    pub fn wants_request(mut self, yes: bool) -> Self {
        self.wants_request = yes;
        self
    }
    /// Call [`crate::Filter::on_response`] for every exchange.
    pub fn wants_response(mut self, yes: bool) -> Self {
        self.wants_response = yes;
        self
    }
    /// Buffer the request body and pass it to `on_request`.
    pub fn buffer_request_body(mut self, yes: bool) -> Self {
        self.buffer_request_body = yes;
        self
    }
    /// Buffer the response body and pass it to `on_response`.
    pub fn buffer_response_body(mut self, yes: bool) -> Self {
        self.buffer_response_body = yes;
        self
    }
}

/// Conversions used by the code that [`crate::export_filter!`] expands to.
#[doc(hidden)]
pub mod glue {
    use super::*;
    use crate::Filter;

    /// What the glue keeps beside the filter: which headers it reads.
    #[derive(Debug)]
    pub struct Declared {
        request_headers: HeaderInterest,
        response_headers: HeaderInterest,
        response_body: bool,
    }

    /// Declares the filter's needs on `setup`.
    pub fn declare<F: Filter>(filter: &F, setup: &wit::Setup) -> Declared {
        let i = filter.info();
        if i.wants_request {
            setup.on_request();
        }
        if i.wants_response {
            setup.on_response();
            if i.request_headers_on_response && !matches!(i.request_headers, HeaderInterest::None) {
                setup.request_headers_on_response();
            }
        }
        if i.buffer_request_body {
            setup.buffer_request_body();
        }
        if i.buffer_response_body {
            setup.buffer_response_body();
        }
        Declared {
            request_headers: i.request_headers,
            response_headers: i.response_headers,
            response_body: i.buffer_response_body,
        }
    }

    fn built(r: Response) -> wit::Response {
        let out = wit::Response::new(r.inner.status);
        for (n, v) in &r.inner.headers {
            out.append_header(n, v);
        }
        if let Some(b) = &r.inner.body {
            out.set_body(b);
        }
        out
    }

    pub fn on_request<F: Filter>(
        filter: &F,
        declared: &Declared,
        req: &wit::Request,
    ) -> wit::RequestDecision {
        let view = Request::new(req, &declared.request_headers);
        match filter.on_request(&view) {
            OnRequest::Proceed(e) => {
                e.headers.apply(
                    |n| req.remove_header(n),
                    |n, v| req.set_header(n, v),
                    |n, v| req.append_header(n, v),
                );
                if let Some(m) = &e.method {
                    req.set_method(m);
                }
                if let Some(p) = &e.path_with_query {
                    req.set_path_with_query(p);
                }
                if let Some(c) = &e.cluster {
                    req.set_cluster(c);
                }
                if let Some(b) = &e.body {
                    req.set_body(b);
                }
                if let Some(c) = &e.context {
                    req.set_context(c);
                }
                wit::RequestDecision::Proceed
            }
            OnRequest::Respond(r) => wit::RequestDecision::Respond(built(r)),
        }
    }

    pub fn on_response<F: Filter>(
        filter: &F,
        declared: &Declared,
        req: &wit::Request,
        resp: &wit::Response,
    ) -> wit::ResponseDecision {
        let view = Request::new(req, &declared.request_headers);
        let headers = match &declared.response_headers {
            HeaderInterest::None => Vec::new(),
            HeaderInterest::All => resp.headers(),
            HeaderInterest::Names(names) => resp.headers_named(names),
        };
        let seen = Response {
            inner: Parts {
                status: resp.status(),
                headers,
                body: if declared.response_body {
                    resp.body()
                } else {
                    None
                },
            },
        };
        let context = req.context();
        match filter.on_response(&view, &seen, context.as_deref()) {
            OnResponse::Proceed(e) => {
                e.headers.apply(
                    |n| resp.remove_header(n),
                    |n, v| resp.set_header(n, v),
                    |n, v| resp.append_header(n, v),
                );
                if let Some(s) = e.status {
                    resp.set_status(s);
                }
                if let Some(b) = &e.body {
                    resp.set_body(b);
                }
                wit::ResponseDecision::Proceed
            }
            OnResponse::Replace(r) => wit::ResponseDecision::Replace(built(r)),
        }
    }
}
