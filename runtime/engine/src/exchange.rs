//! The exchange a filter call works on, in the host's own types, and the
//! host side of contract 0.2's `setup`, `request` and `response`
//! resources.
//!
//! The request path owns an [`Exchange`] for each request that has
//! filters. A 0.2 call moves it into the instance's store for the length of
//! the call (a move, not a copy), and the guest reads through resource
//! methods only what it asks for; its edits are checked as they are made
//! and collected in [`Pending`], then handed back as one decision that is
//! applied whole or not at all ([`crate::edits`]). A 0.1 call copies what
//! its filter declared into the 0.1 records instead (`contract_0_1.rs`).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use wasmtime::component::Resource;

use crate::bindings::v0_2::wasmgate::filter::types as wit;
use crate::edits::{self, HeaderOp, InvalidEdit, MadeResponse, Needs, RequestEdits, ResponseEdits};
use crate::host::HostState;

/// Facts about a request that do not change while filters run.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The gateway's id for the request.
    pub request_id: HeaderValue,
    /// The route's name.
    pub route: Arc<str>,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Who the client is.
    pub client: ClientAddr,
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// Unix epoch milliseconds when the request head arrived.
    pub received_at_ms: u64,
}

/// The client's address as filters see it.
#[derive(Debug, Clone, Copy)]
pub enum ClientAddr {
    /// Not known (a request that did not come over a socket).
    Unknown,
    /// The peer of the connection.
    Peer(SocketAddr),
    /// The client a trusted proxy named (no port).
    Forwarded(IpAddr),
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAddr::Unknown => Ok(()),
            ClientAddr::Peer(a) => a.fmt(f),
            ClientAddr::Forwarded(ip) => ip.fmt(f),
        }
    }
}

/// What a filter call works on. In `on-request`, the request as it
/// reaches the filter; in `on-response`, the request as it was forwarded
/// (its headers only if a filter declared it reads them there) and the
/// response so far.
#[derive(Debug)]
pub struct Exchange {
    /// Facts about the request, shared by every call.
    pub facts: Arc<Facts>,
    /// The request head.
    pub request: http::request::Parts,
    /// The buffered request body, if a filter asked for it.
    pub request_body: Option<Bytes>,
    /// The response head (`on-response` only).
    pub response: Option<http::response::Parts>,
    /// The buffered response body, if a filter asked for it.
    pub response_body: Option<Bytes>,
    /// Guest CPU time the request's filters used so far (against the
    /// tenant's `filter_cpu_per_request`); the host's, never a guest's.
    pub filter_cpu: std::time::Duration,
}

static NO_FACTS: LazyLock<Arc<Facts>> = LazyLock::new(|| {
    Arc::new(Facts {
        request_id: HeaderValue::from_static(""),
        route: Arc::from(""),
        scheme: "http",
        client: ClientAddr::Unknown,
        tls: false,
        received_at_ms: 0,
    })
});

impl Exchange {
    /// An exchange for a request head.
    pub fn new(facts: Arc<Facts>, request: http::request::Parts) -> Exchange {
        Exchange {
            facts,
            request,
            request_body: None,
            filter_cpu: std::time::Duration::ZERO,
            response: None,
            response_body: None,
        }
    }

    /// An empty exchange, left in the caller's place while a call holds
    /// the real one (allocates nothing).
    pub(crate) fn placeholder() -> Exchange {
        let (request, ()) = http::Request::new(()).into_parts();
        Exchange::new(NO_FACTS.clone(), request)
    }

    /// The host the request is for: the URI's authority, or `Host`.
    pub fn authority(&self) -> &str {
        edits::authority_of(&self.request).unwrap_or_default()
    }
}

/// One filter's own state across an exchange: what its `on-request` hands
/// its `on-response`, and the outbound calls it made (its budget spans
/// both phases).
#[derive(Debug, Default)]
pub struct FilterCarry {
    /// Set by `on-request` (`set-context`, or 0.1's `context`).
    pub context: Option<Vec<u8>>,
    /// Outbound calls so far.
    pub outbound_used: u32,
}

/// What `on-request` decided.
#[derive(Debug)]
pub enum RequestOutcome {
    /// Apply these edits and go on.
    Proceed(RequestEdits),
    /// Answer with this response.
    Respond(MadeResponse),
    /// The decision was refused: nothing of it applies.
    Invalid(InvalidEdit),
}

/// The checks on a decision's edits of the live message: their sizes, then
/// the filter's write bound for that side (a refusal there is counted under
/// `key`).
fn check_edits(
    headers: &[HeaderOp],
    body: Option<&[u8]>,
    bound: &crate::services::HeaderBound,
    key: &'static str,
    refused: &std::sync::atomic::AtomicU64,
) -> Result<(), InvalidEdit> {
    edits::check_sizes(headers, None, body)?;
    match headers.iter().find(|op| !bound.allows(op.name().as_str())) {
        None => Ok(()),
        Some(op) => {
            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(InvalidEdit::NotPermitted {
                name: op.name().as_str().to_owned(),
                key,
            })
        }
    }
}

/// The checks on a response the filter made.
fn check_made(m: &MadeResponse) -> Result<(), InvalidEdit> {
    edits::check_sizes(&[], Some(&m.headers), Some(&m.body))
}

/// Counts a decision refused for its size under `decision_size`.
fn count_size_refusal(e: &InvalidEdit, grants: &crate::services::Grants) {
    if matches!(e, InvalidEdit::TooLarge { .. } | InvalidEdit::TooMany(_)) {
        grants
            .refused
            .decision_size
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl RequestOutcome {
    /// Refuses a decision that hands back more than the host keeps, or
    /// edits a header the filter may not (and drops the context with it).
    pub(crate) fn bounded(
        self,
        context: &mut Option<Vec<u8>>,
        grants: &crate::services::Grants,
    ) -> RequestOutcome {
        let checked = match &self {
            RequestOutcome::Proceed(e) => edits::check_context(context.as_deref()).and_then(|()| {
                check_edits(
                    &e.headers,
                    e.body.as_deref(),
                    &grants.headers.write_request,
                    "write_request_headers",
                    &grants.refused.write_request_headers,
                )
            }),
            RequestOutcome::Respond(m) => check_made(m),
            RequestOutcome::Invalid(e) => Err(e.clone()),
        };
        match checked {
            Ok(()) => self,
            Err(e) => {
                count_size_refusal(&e, grants);
                *context = None;
                RequestOutcome::Invalid(e)
            }
        }
    }
}

impl ResponseOutcome {
    /// Refuses a decision that hands back more than the host keeps, or
    /// edits a header the filter may not.
    pub(crate) fn bounded(self, grants: &crate::services::Grants) -> ResponseOutcome {
        let checked = match &self {
            ResponseOutcome::Proceed(e) => check_edits(
                &e.headers,
                e.body.as_deref(),
                &grants.headers.write_response,
                "write_response_headers",
                &grants.refused.write_response_headers,
            ),
            ResponseOutcome::Replace(m) => check_made(m),
            ResponseOutcome::Invalid(e) => Err(e.clone()),
        };
        match checked {
            Ok(()) => self,
            Err(e) => {
                count_size_refusal(&e, grants);
                ResponseOutcome::Invalid(e)
            }
        }
    }
}

/// What `on-response` decided.
#[derive(Debug)]
pub enum ResponseOutcome {
    /// Apply these edits and go on.
    Proceed(ResponseEdits),
    /// Send this response instead.
    Replace(MadeResponse),
    /// The decision was refused: nothing of it applies.
    Invalid(InvalidEdit),
}

/// The `setup` resource: only ever borrowed, for `init`.
pub struct SetupHandle;
/// The `request` resource: only ever borrowed; the one in the store's
/// exchange.
pub struct RequestHandle;
/// The `response` resource: rep 0 is the exchange's response (borrowed in
/// `on-response`); others are responses the guest built.
pub struct ResponseHandle;

/// The phase a call runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Phase {
    /// `init`: no exchange.
    #[default]
    Init,
    /// `on-request`.
    Request,
    /// `on-response`.
    Response,
}

/// Edits a guest makes in one call stop being kept past this many.
pub const MAX_EDITS: usize = 1024;
/// Responses a guest may build in one call.
pub const MAX_BUILT: usize = 16;

/// A response a guest is building.
#[derive(Debug, Default)]
struct Built {
    status: u16,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
    error: Option<InvalidEdit>,
}

/// What a 0.2 call has done so far, reset at every call.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub(crate) phase: Phase,
    /// The exchange, moved in for the call.
    pub(crate) exchange: Option<Exchange>,
    /// What `on-request` handed on (`set-context`), and in `on-response`
    /// what it had handed on.
    pub(crate) context: Option<Vec<u8>>,
    request: RequestEdits,
    response: ResponseEdits,
    edits: usize,
    /// The first refused edit: the decision fails with it.
    error: Option<InvalidEdit>,
    built: Vec<Option<Built>>,
    /// Counts calls, to tell a built response's handle from one an earlier
    /// call built (a guest may keep an own handle past its call).
    call: u32,
    /// What `init` declared.
    pub(crate) declared: Option<Needs>,
}

impl Pending {
    pub(crate) fn begin(
        &mut self,
        phase: Phase,
        exchange: Option<Exchange>,
        context: Option<Vec<u8>>,
    ) {
        *self = Pending {
            phase,
            exchange,
            context,
            declared: self.declared.take(),
            built: std::mem::take(&mut self.built),
            call: self.call.wrapping_add(1),
            ..Pending::default()
        };
        self.built.clear();
    }

    /// Counts one edit; past [`MAX_EDITS`], refuses it.
    fn admit(&mut self) -> bool {
        self.edits += 1;
        if self.edits > MAX_EDITS {
            self.refuse(InvalidEdit::TooMany(MAX_EDITS));
            return false;
        }
        true
    }

    fn refuse(&mut self, e: InvalidEdit) {
        self.error.get_or_insert(e);
    }

    /// Records a checked edit of the live message, or its refusal.
    fn edit(&mut self, op: Result<HeaderOp, InvalidEdit>, on_response: bool) {
        if !self.admit() {
            return;
        }
        match op {
            Ok(op) if on_response => self.response.headers.push(op),
            Ok(op) => self.request.headers.push(op),
            Err(e) => self.refuse(e),
        }
    }

    /// Whether request edits are allowed now; refuses them in `on-response`.
    fn request_editable(&mut self) -> bool {
        if self.phase != Phase::Request {
            self.refuse(InvalidEdit::WrongPhase(
                "the request cannot be edited in on-response: it has gone upstream",
            ));
            return false;
        }
        self.admit()
    }

    /// The request decision, consuming what the call collected.
    pub(crate) fn request_outcome(&mut self, decision: wit::RequestDecision) -> RequestOutcome {
        if let Some(e) = self.error.take() {
            return RequestOutcome::Invalid(e);
        }
        match decision {
            wit::RequestDecision::Proceed => {
                RequestOutcome::Proceed(std::mem::take(&mut self.request))
            }
            wit::RequestDecision::Respond(r) => match self.take_built(r) {
                Ok(made) => RequestOutcome::Respond(made),
                Err(e) => RequestOutcome::Invalid(e),
            },
        }
    }

    /// The response decision, consuming what the call collected.
    pub(crate) fn response_outcome(&mut self, decision: wit::ResponseDecision) -> ResponseOutcome {
        if let Some(e) = self.error.take() {
            return ResponseOutcome::Invalid(e);
        }
        match decision {
            wit::ResponseDecision::Proceed => {
                ResponseOutcome::Proceed(std::mem::take(&mut self.response))
            }
            wit::ResponseDecision::Replace(r) => match self.take_built(r) {
                Ok(made) => ResponseOutcome::Replace(made),
                Err(e) => ResponseOutcome::Invalid(e),
            },
        }
    }

    fn take_built(&mut self, r: Resource<ResponseHandle>) -> Result<MadeResponse, InvalidEdit> {
        let built = self
            .built_index(&r)
            .and_then(|i| self.built.get_mut(i))
            .and_then(Option::take)
            .ok_or(InvalidEdit::StaleResponse)?;
        if let Some(e) = built.error {
            return Err(e);
        }
        Ok(MadeResponse {
            status: edits::final_status(built.status)?,
            headers: built.headers,
            body: built.body.unwrap_or_default(),
        })
    }
}

/// A built response's handle: the call that built it, and its index + 1
/// (never 0, the exchange's response).
const INDEX_BITS: u32 = 5;
const _: () = assert!(MAX_BUILT < 1 << INDEX_BITS);

impl Pending {
    /// The handle of built response `i` of this call.
    fn built_rep(&self, i: usize) -> u32 {
        (self.call << INDEX_BITS) | (i as u32 + 1)
    }

    /// The index of a built response in [`Pending::built`], if `r` is one
    /// this call built.
    fn built_index(&self, r: &Resource<ResponseHandle>) -> Option<usize> {
        let rep = r.rep();
        let index = (rep & ((1 << INDEX_BITS) - 1)) as usize;
        let same_call = rep >> INDEX_BITS == self.call & (u32::MAX >> INDEX_BITS);
        (index > 0 && same_call).then(|| index - 1)
    }
}

// Looked up by `&str`: `http` matches it case-insensitively without making
// a `HeaderName` (an invalid name finds nothing).
fn header_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(edits::value_to_string)
        .collect()
}

fn named_headers(headers: &HeaderMap, names: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in names {
        let mut values = headers.get_all(name.as_str()).iter().peekable();
        if values.peek().is_none() {
            continue;
        }
        let lower = name.to_ascii_lowercase();
        for v in values {
            out.push((lower.clone(), edits::value_to_string(v)));
        }
    }
    out
}

/// Keeps the pairs within `bound`, counting what it hides.
fn visible(
    mut pairs: Vec<(String, String)>,
    bound: &crate::services::HeaderBound,
    hidden: &std::sync::atomic::AtomicU64,
) -> Vec<(String, String)> {
    if bound.is_all() {
        return pairs;
    }
    let before = pairs.len();
    pairs.retain(|(n, _)| bound.allows(n));
    let gone = (before - pairs.len()) as u64;
    if gone > 0 {
        hidden.fetch_add(gone, std::sync::atomic::Ordering::Relaxed);
    }
    pairs
}

fn all_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), edits::value_to_string(v)))
        .collect()
}

impl HostState {
    fn needs(&self) -> &Needs {
        static NOTHING: LazyLock<Needs> = LazyLock::new(Needs::nothing);
        self.pending.declared.as_ref().unwrap_or(&NOTHING)
    }

    /// Whether the guest may see the request's headers now.
    fn request_headers_visible(&self) -> bool {
        self.pending.phase == Phase::Request || self.needs().request_headers_on_response
    }

    fn exchange(&self) -> Option<&Exchange> {
        self.pending.exchange.as_ref()
    }

    fn declare(&mut self, f: impl FnOnce(&mut Needs)) {
        if self.pending.phase == Phase::Init {
            f(self.pending.declared.get_or_insert_with(Needs::nothing));
        }
    }
}

impl wit::HostSetup for HostState {
    fn on_request(&mut self, _: Resource<SetupHandle>) {
        self.declare(|n| n.on_request = true);
    }
    fn on_response(&mut self, _: Resource<SetupHandle>) {
        self.declare(|n| n.on_response = true);
    }
    fn buffer_request_body(&mut self, _: Resource<SetupHandle>) {
        self.declare(|n| n.request_body = true);
    }
    fn buffer_response_body(&mut self, _: Resource<SetupHandle>) {
        self.declare(|n| n.response_body = true);
    }
    fn request_headers_on_response(&mut self, _: Resource<SetupHandle>) {
        self.declare(|n| n.request_headers_on_response = true);
    }
    fn drop(&mut self, _: Resource<SetupHandle>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl wit::HostRequest for HostState {
    fn method(&mut self, _: Resource<RequestHandle>) -> String {
        self.exchange()
            .map(|e| e.request.method.as_str().to_owned())
            .unwrap_or_default()
    }
    fn scheme(&mut self, _: Resource<RequestHandle>) -> String {
        self.exchange()
            .map(|e| e.facts.scheme.to_owned())
            .unwrap_or_default()
    }
    fn authority(&mut self, _: Resource<RequestHandle>) -> String {
        self.exchange()
            .map(|e| e.authority().to_owned())
            .unwrap_or_default()
    }
    fn path_with_query(&mut self, _: Resource<RequestHandle>) -> String {
        self.exchange()
            .map(|e| {
                e.request
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned()
            })
            .unwrap_or_default()
    }
    fn header(&mut self, _: Resource<RequestHandle>, name: String) -> Vec<String> {
        let g = self.grants();
        if !g.headers.read_request.allows(&name) {
            g.refused
                .read_request_headers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Vec::new();
        }
        match self.exchange() {
            Some(e) if self.request_headers_visible() => header_values(&e.request.headers, &name),
            _ => Vec::new(),
        }
    }
    fn headers(&mut self, _: Resource<RequestHandle>) -> Vec<(String, String)> {
        let g = self.grants();
        match self.exchange() {
            Some(e) if self.request_headers_visible() => visible(
                all_headers(&e.request.headers),
                &g.headers.read_request,
                &g.refused.read_request_headers,
            ),
            _ => Vec::new(),
        }
    }
    fn headers_named(
        &mut self,
        _: Resource<RequestHandle>,
        names: Vec<String>,
    ) -> Vec<(String, String)> {
        let g = self.grants();
        match self.exchange() {
            Some(e) if self.request_headers_visible() => visible(
                named_headers(&e.request.headers, &names),
                &g.headers.read_request,
                &g.refused.read_request_headers,
            ),
            _ => Vec::new(),
        }
    }
    fn body(&mut self, _: Resource<RequestHandle>) -> Option<Vec<u8>> {
        if self.pending.phase != Phase::Request || !self.needs().request_body {
            return None;
        }
        self.exchange()?.request_body.as_ref().map(|b| b.to_vec())
    }
    fn id(&mut self, _: Resource<RequestHandle>) -> String {
        self.exchange()
            .and_then(|e| e.facts.request_id.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
    fn route(&mut self, _: Resource<RequestHandle>) -> String {
        self.exchange()
            .map(|e| e.facts.route.to_string())
            .unwrap_or_default()
    }
    fn client_addr(&mut self, _: Resource<RequestHandle>) -> String {
        self.exchange()
            .map(|e| e.facts.client.to_string())
            .unwrap_or_default()
    }
    fn tls(&mut self, _: Resource<RequestHandle>) -> bool {
        self.exchange().is_some_and(|e| e.facts.tls)
    }
    fn received_at_ms(&mut self, _: Resource<RequestHandle>) -> u64 {
        self.exchange().map_or(0, |e| e.facts.received_at_ms)
    }

    fn set_header(&mut self, _: Resource<RequestHandle>, name: String, value: String) {
        if self.pending.phase == Phase::Request {
            self.pending.edit(HeaderOp::set(&name, &value), false);
        } else {
            self.pending.request_editable();
        }
    }
    fn append_header(&mut self, _: Resource<RequestHandle>, name: String, value: String) {
        if self.pending.phase == Phase::Request {
            self.pending.edit(HeaderOp::append(&name, &value), false);
        } else {
            self.pending.request_editable();
        }
    }
    fn remove_header(&mut self, _: Resource<RequestHandle>, name: String) {
        if self.pending.phase == Phase::Request {
            self.pending.edit(HeaderOp::remove(&name), false);
        } else {
            self.pending.request_editable();
        }
    }
    fn set_method(&mut self, _: Resource<RequestHandle>, method: String) {
        if self.pending.request_editable() {
            match edits::parse_method(&method) {
                Ok(m) => self.pending.request.method = Some(m),
                Err(e) => self.pending.refuse(e),
            }
        }
    }
    fn set_path_with_query(&mut self, _: Resource<RequestHandle>, path: String) {
        if self.pending.request_editable() {
            match edits::parse_path(&path) {
                Ok(p) => self.pending.request.path = Some(p),
                Err(e) => self.pending.refuse(e),
            }
        }
    }
    fn set_cluster(&mut self, _: Resource<RequestHandle>, cluster: String) {
        if self.pending.request_editable() {
            self.pending.request.cluster = Some(cluster);
        }
    }
    fn set_body(&mut self, _: Resource<RequestHandle>, body: Vec<u8>) {
        if self.pending.request_editable() {
            if self.needs().request_body {
                self.pending.request.body = Some(body);
            } else {
                self.pending.refuse(InvalidEdit::BodyNotBuffered("request"));
            }
        }
    }
    fn set_context(&mut self, _: Resource<RequestHandle>, context: Vec<u8>) {
        if self.pending.request_editable() {
            self.pending.context = Some(context);
        }
    }
    fn context(&mut self, _: Resource<RequestHandle>) -> Option<Vec<u8>> {
        match self.pending.phase {
            Phase::Response => self.pending.context.clone(),
            _ => None,
        }
    }
    fn drop(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl HostState {
    /// The built response `r` names, if it is one and still valid.
    fn built(&mut self, r: &Resource<ResponseHandle>) -> Option<&mut Built> {
        let i = self.pending.built_index(r)?;
        self.pending.built.get_mut(i)?.as_mut()
    }

    /// Applies a header edit to the response `r` names.
    fn edit_response(&mut self, r: &Resource<ResponseHandle>, op: Result<HeaderOp, InvalidEdit>) {
        if r.rep() == 0 {
            if self.pending.phase == Phase::Response {
                self.pending.edit(op, true);
            }
            return;
        }
        if !self.pending.admit() {
            return;
        }
        let Some(b) = self.built(r) else {
            self.pending.refuse(InvalidEdit::StaleResponse);
            return;
        };
        match op {
            Ok(op) => edits::apply_header_ops(&mut b.headers, vec![op]),
            Err(e) => {
                b.error.get_or_insert(e);
            }
        }
    }

    fn live_response(&self) -> Option<&http::response::Parts> {
        match self.pending.phase {
            Phase::Response => self.exchange()?.response.as_ref(),
            _ => None,
        }
    }
}

impl wit::HostResponse for HostState {
    fn new(&mut self, status: u16) -> Resource<ResponseHandle> {
        let built = &mut self.pending.built;
        if self.pending.phase == Phase::Init || built.len() >= MAX_BUILT {
            // No room (or no call to answer): a handle that is never
            // valid, so the decision that returns it is refused.
            self.pending.refuse(InvalidEdit::TooMany(MAX_BUILT));
            return Resource::new_own(u32::MAX);
        }
        built.push(Some(Built {
            status,
            ..Built::default()
        }));
        Resource::new_own(self.pending.built_rep(self.pending.built.len() - 1))
    }
    fn status(&mut self, r: Resource<ResponseHandle>) -> u16 {
        if r.rep() == 0 {
            return self.live_response().map_or(0, |p| p.status.as_u16());
        }
        self.built(&r).map_or(0, |b| b.status)
    }
    fn header(&mut self, r: Resource<ResponseHandle>, name: String) -> Vec<String> {
        if r.rep() == 0 {
            let g = self.grants();
            if !g.headers.read_response.allows(&name) {
                g.refused
                    .read_response_headers
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Vec::new();
            }
            return self
                .live_response()
                .map(|p| header_values(&p.headers, &name))
                .unwrap_or_default();
        }
        self.built(&r)
            .map(|b| header_values(&b.headers, &name))
            .unwrap_or_default()
    }
    fn headers(&mut self, r: Resource<ResponseHandle>) -> Vec<(String, String)> {
        if r.rep() == 0 {
            let g = self.grants();
            return self
                .live_response()
                .map(|p| {
                    visible(
                        all_headers(&p.headers),
                        &g.headers.read_response,
                        &g.refused.read_response_headers,
                    )
                })
                .unwrap_or_default();
        }
        self.built(&r)
            .map(|b| all_headers(&b.headers))
            .unwrap_or_default()
    }
    fn headers_named(
        &mut self,
        r: Resource<ResponseHandle>,
        names: Vec<String>,
    ) -> Vec<(String, String)> {
        if r.rep() == 0 {
            let g = self.grants();
            return self
                .live_response()
                .map(|p| {
                    visible(
                        named_headers(&p.headers, &names),
                        &g.headers.read_response,
                        &g.refused.read_response_headers,
                    )
                })
                .unwrap_or_default();
        }
        self.built(&r)
            .map(|b| named_headers(&b.headers, &names))
            .unwrap_or_default()
    }
    fn body(&mut self, r: Resource<ResponseHandle>) -> Option<Vec<u8>> {
        if r.rep() == 0 {
            if self.live_response().is_none() || !self.needs().response_body {
                return None;
            }
            return self.exchange()?.response_body.as_ref().map(|b| b.to_vec());
        }
        self.built(&r)?.body.clone()
    }
    fn set_status(&mut self, r: Resource<ResponseHandle>, status: u16) {
        if !self.pending.admit() {
            return;
        }
        if r.rep() == 0 {
            if self.pending.phase == Phase::Response {
                match edits::final_status(status) {
                    Ok(s) => self.pending.response.status = Some(s),
                    Err(e) => self.pending.refuse(e),
                }
            }
            return;
        }
        match self.built(&r) {
            Some(b) => b.status = status,
            None => self.pending.refuse(InvalidEdit::StaleResponse),
        }
    }
    fn set_header(&mut self, r: Resource<ResponseHandle>, name: String, value: String) {
        self.edit_response(&r, HeaderOp::set(&name, &value));
    }
    fn append_header(&mut self, r: Resource<ResponseHandle>, name: String, value: String) {
        self.edit_response(&r, HeaderOp::append(&name, &value));
    }
    fn remove_header(&mut self, r: Resource<ResponseHandle>, name: String) {
        self.edit_response(&r, HeaderOp::remove(&name));
    }
    fn set_body(&mut self, r: Resource<ResponseHandle>, body: Vec<u8>) {
        if !self.pending.admit() {
            return;
        }
        if r.rep() == 0 {
            if self.pending.phase == Phase::Response {
                if self.needs().response_body {
                    self.pending.response.body = Some(body);
                } else {
                    self.pending
                        .refuse(InvalidEdit::BodyNotBuffered("response"));
                }
            }
            return;
        }
        match self.built(&r) {
            Some(b) => b.body = Some(body),
            None => self.pending.refuse(InvalidEdit::StaleResponse),
        }
    }
    fn drop(&mut self, r: Resource<ResponseHandle>) -> wasmtime::Result<()> {
        if let Some(slot) = self
            .pending
            .built_index(&r)
            .and_then(|i| self.pending.built.get_mut(i))
        {
            *slot = None;
        }
        Ok(())
    }
}

impl wit::Host for HostState {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_response_handle_names_only_the_call_that_built_it() {
        let mut p = Pending::default();
        p.begin(Phase::Request, None, None);
        let first = Resource::<ResponseHandle>::new_own(p.built_rep(0));
        assert_eq!(p.built_index(&first), Some(0));
        assert_ne!(first.rep(), 0, "rep 0 is the exchange's response");
        p.begin(Phase::Request, None, None);
        let second = Resource::<ResponseHandle>::new_own(p.built_rep(0));
        assert_eq!(p.built_index(&second), Some(0));
        assert_eq!(
            p.built_index(&first),
            None,
            "a handle kept from an earlier call names nothing"
        );
        assert_eq!(
            p.built_index(&Resource::new_own(u32::MAX)),
            None,
            "the refused handle names nothing"
        );
    }
}
