//! Request, response, edit and decision types: thin, owned wrappers over the WIT
//! records so that filter code never names generated bindings.

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

/// The request as the filter sees it: method, target and the headers the filter
/// declared in [`FilterInfo::request_headers`].
#[derive(Debug, Clone)]
pub struct Request {
    inner: wit::Request,
}

impl Request {
    /// The method, e.g. `GET`.
    pub fn method(&self) -> &str {
        &self.inner.method
    }
    /// `http` or `https`.
    pub fn scheme(&self) -> &str {
        &self.inner.scheme
    }
    /// The host (and port, if the client sent one) the request is for.
    pub fn authority(&self) -> &str {
        &self.inner.authority
    }
    /// Path and query, e.g. `/api/search?q=shoes`.
    pub fn path_with_query(&self) -> &str {
        &self.inner.path_with_query
    }
    /// The path without the query.
    pub fn path(&self) -> &str {
        let pq = &self.inner.path_with_query;
        pq.split_once('?').map_or(pq.as_str(), |(p, _)| p)
    }
    /// The query string without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.inner.path_with_query.split_once('?').map(|(_, q)| q)
    }
    /// The first value of a header (names compare case-insensitively). Only
    /// headers the filter declared interest in are present.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.inner.headers, name)
    }
    /// Every value of a header, in order.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        header_all(&self.inner.headers, name)
    }
    /// All copied headers as `(name, value)`, names lower-case.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.inner
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
    }
    /// The buffered body, if the filter asked for it.
    pub fn body(&self) -> Option<&[u8]> {
        self.inner.body.as_deref()
    }
    /// Facts the host filled in (request id, route, client address…).
    pub fn meta(&self) -> RequestMeta {
        let m = &self.inner.meta;
        RequestMeta {
            request_id: m.request_id.clone(),
            route: m.route.clone(),
            client_addr: m.client_addr.clone(),
            tls: m.tls,
            received_at_ms: m.received_at_ms,
        }
    }
    /// The route's name in the gateway config.
    pub fn route(&self) -> &str {
        &self.inner.meta.route
    }
    /// The gateway's request id.
    pub fn request_id(&self) -> &str {
        &self.inner.meta.request_id
    }
}

/// A response: one the filter builds to answer early or to replace the upstream's
/// ([`Response::new`]), or the one it is shown in [`crate::Filter::on_response`].
#[derive(Debug, Clone)]
pub struct Response {
    inner: wit::Response,
}

impl Response {
    /// An empty response with this status.
    pub fn new(status: u16) -> Self {
        Response {
            inner: wit::Response {
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
    fn into_wit(self) -> wit::HeaderEdits {
        wit::HeaderEdits {
            remove: self.remove,
            set: self.set,
            append: self.append,
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

impl HeaderInterest {
    fn into_wit(self) -> wit::HeaderInterest {
        match self {
            HeaderInterest::None => wit::HeaderInterest::None,
            HeaderInterest::Names(n) => wit::HeaderInterest::Names(n),
            HeaderInterest::All => wit::HeaderInterest::All,
        }
    }
}

/// What a filter needs from the host, returned by [`crate::Filter::info`].
#[derive(Debug, Clone, Default)]
pub struct FilterInfo {
    request_headers: HeaderInterest,
    response_headers: HeaderInterest,
    buffer_request_body: bool,
    buffer_response_body: bool,
    wants_response: bool,
}

impl FilterInfo {
    /// Reads nothing, skips the response phase.
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

    pub fn info<F: Filter>(filter: &F) -> wit::FilterInfo {
        let i = filter.info();
        wit::FilterInfo {
            request_headers: i.request_headers.into_wit(),
            response_headers: i.response_headers.into_wit(),
            buffer_request_body: i.buffer_request_body,
            buffer_response_body: i.buffer_response_body,
            wants_response: i.wants_response,
        }
    }

    pub fn on_request<F: Filter>(filter: &F, req: wit::Request) -> wit::RequestDecision {
        match filter.on_request(&Request { inner: req }) {
            OnRequest::Proceed(e) => wit::RequestDecision::Proceed(wit::ProceedRequest {
                edits: wit::RequestEdits {
                    headers: e.headers.into_wit(),
                    method: e.method,
                    path_with_query: e.path_with_query,
                    cluster: e.cluster,
                    body: e.body,
                },
                context: e.context,
            }),
            OnRequest::Respond(r) => wit::RequestDecision::Respond(r.inner),
        }
    }

    pub fn on_response<F: Filter>(
        filter: &F,
        req: wit::Request,
        resp: wit::Response,
        context: Option<Vec<u8>>,
    ) -> wit::ResponseDecision {
        let req = Request { inner: req };
        let resp = Response { inner: resp };
        match filter.on_response(&req, &resp, context.as_deref()) {
            OnResponse::Proceed(e) => wit::ResponseDecision::Proceed(wit::ResponseEdits {
                headers: e.headers.into_wit(),
                status: e.status,
                body: e.body,
            }),
            OnResponse::Replace(r) => wit::ResponseDecision::Replace(r.inner),
        }
    }
}
