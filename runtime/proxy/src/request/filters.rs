//! Phases 3 and 5, the route's filters: `on-request` in chain order, then
//! (after the upstream, or after a filter answered) `on-response` in
//! reverse, each only for the filters that declared that phase at `init`:
//! the others are not called at all.
//!
//! The chain works on one [`Exchange`], which each call borrows: a 0.2
//! filter reads from it what it asks for, a 0.1 filter gets the parts it
//! declared copied into records (the engine's business, not this
//! module's). Decisions come back as host-side outcomes and are applied by
//! the filter engine's pure functions ([`wasmgate_engine::edits`]), both
//! sides here. What a failure does is decided in one place, [`Proxy::on_failure`]:
//! fail the request, or, under `fail-open`, skip the filter.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Response};
use hyper::body::Incoming;
use smallvec::SmallVec;

use super::upstream::ForwardBody;
use super::{RequestError, Session};
use crate::body::{self, ProxyBody};
use crate::proxy::Proxy;
use crate::route::Route;
use crate::upstream::Cluster;
use wasmgate_engine::FilterFailure;
use wasmgate_engine::edits;
use wasmgate_engine::exchange::{
    ClientAddr, Exchange, Facts, FilterCarry, RequestOutcome, ResponseOutcome,
};

/// The chain's state for one request.
pub(super) struct ChainRun {
    /// Facts every call shares, made once.
    facts: Arc<Facts>,
    /// Each filter's own state across the exchange.
    carry: SmallVec<[FilterCarry; 4]>,
    /// Which filters get `on-response`: those that saw the request (all,
    /// or those before the one that answered), were not skipped, and
    /// declared the response phase.
    responds: SmallVec<[bool; 4]>,
    /// The request as forwarded, for the response side (only when a
    /// filter has one; its headers only when one reads them there).
    forwarded: Option<Parts>,
    /// Where the request goes: the route's cluster, or one a filter chose.
    pub(super) target: Option<Arc<Cluster>>,
}

/// What the request side decided.
pub(super) enum Next {
    /// Send the (edited) request upstream.
    Forward(Parts, ForwardBody),
    /// A filter answered; the upstream is not asked.
    Answer(Response<ProxyBody>),
}

impl ChainRun {
    /// Picks each filter's version for this request (once: both phases run
    /// on it) and settles the facts filters may ask for.
    pub(super) fn start(s: &mut Session<'_>, route: &Route, parts: &Parts) -> ChainRun {
        s.picks = route
            .chain
            .iter()
            .map(|f| f.pick(&parts.headers, s.request_id.to_str().unwrap_or_default()))
            .collect();
        let client = s.client.as_ref();
        let facts = Facts {
            request_id: s.request_id.clone(),
            route: route.name.clone(),
            scheme: client.map_or("http", |c| c.scheme),
            client: match client {
                Some(c) => match c.forwarded_client {
                    Some(ip) => ClientAddr::Forwarded(ip),
                    None => ClientAddr::Peer(c.peer),
                },
                None => ClientAddr::Unknown,
            },
            tls: client.is_some_and(|c| c.scheme == "https"),
            received_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        ChainRun {
            facts: Arc::new(facts),
            carry: route.chain.iter().map(|_| FilterCarry::default()).collect(),
            responds: SmallVec::from_elem(false, route.chain.len()),
            forwarded: None,
            target: route.pick().cloned(),
        }
    }
}

impl ChainRun {
    /// What the route's filter `name` handed on with `set-context`.
    pub(super) fn context(&self, route: &Route, name: &str) -> Option<&[u8]> {
        let i = route.chain.iter().position(|f| &**f.name() == name)?;
        self.carry.get(i)?.context.as_deref()
    }
}

impl Proxy {
    /// Phase 3: `on-request` of each filter in order (those that declared
    /// it: the others are not called at all).
    pub(super) async fn request_filters(
        &self,
        s: &mut Session<'_>,
        route: &Route,
        run: &mut ChainRun,
        parts: Parts,
        body: Incoming,
    ) -> Result<Next, RequestError> {
        // A filter that asked for the request body gets it whole, read just
        // before that filter runs: filters before it (authentication, say)
        // decide first, and no `100 Continue` goes out until then.
        let mut body = Some(body);
        let mut kept: Option<body::Kept> = None;
        let mut answer = None;
        let mut ex = Exchange::new(run.facts.clone(), parts);
        let mut skipped: SmallVec<[bool; 4]> = SmallVec::from_elem(false, route.chain.len());
        let mut seen_by = route.chain.len();
        // Headers the filters before this one sealed (whether or not they
        // ran: a filter skipped under fail-open still vouches for nothing
        // the ones after it may forge).
        let mut sealed: SmallVec<[&http::HeaderName; 4]> = SmallVec::new();
        for (i, f) in route.chain.iter().enumerate() {
            let arm = f.arm(&s.picks[i]);
            let seal_before = sealed.len();
            sealed.extend(f.seal.iter());
            if !arm.needs.on_request {
                continue;
            }
            if arm.needs.request_body
                && let Some(b) = body.take()
            {
                let limits = &self.policy.limits;
                let limit = limits.max_buffered_body.min(limits.max_request_body);
                let collected = Box::pin(body::collect(b, limit)).await;
                let k = collected.map_err(|e| RequestError::Body(e, limit))?;
                ex.request_body = Some(k.data.clone());
                kept = Some(k);
            }
            s.picks[i].ran = true;
            let called = arm.pool.on_request(&mut ex, &mut run.carry[i]).await;
            let outcome = match called {
                Ok(o) => o,
                Err(failure) => {
                    note(s, f.name(), failure.code());
                    self.on_failure(s, route, i, failure)?;
                    skipped[i] = true;
                    continue;
                }
            };
            // An edit of a header an earlier filter sealed refuses the
            // decision whole.
            let sealed_edit = match &outcome {
                RequestOutcome::Proceed(changes) => changes
                    .headers
                    .iter()
                    .find(|op| sealed[..seal_before].contains(&op.name()))
                    .map(|op| op.name().as_str().to_owned()),
                _ => None,
            };
            let outcome = match sealed_edit {
                Some(name) => {
                    self.metrics
                        .filter_refusals
                        .get_or_create(&wasmgate_metrics::FilterRefusalLabels {
                            tenant: route.tenant.as_str().to_owned(),
                            filter: f.name().to_string(),
                            limit: "seal",
                        })
                        .inc();
                    RequestOutcome::Invalid(edits::InvalidEdit::Sealed(name))
                }
                None => outcome,
            };
            let applied = match outcome {
                RequestOutcome::Proceed(changes) => {
                    note(s, f.name(), "proceed");
                    // Only a cluster the operator granted this filter; one
                    // it may not use fails like one that does not exist.
                    let module = arm.pool.module();
                    let to = |name: &str| {
                        if !module.may_reroute(name) {
                            self.metrics
                                .filter_refusals
                                .get_or_create(&wasmgate_metrics::FilterRefusalLabels {
                                    tenant: route.tenant.as_str().to_owned(),
                                    filter: f.name().to_string(),
                                    limit: "reroute_clusters",
                                })
                                .inc();
                            return None;
                        }
                        self.clusters.get(&route.tenant)?.get(name).cloned()
                    };
                    edits::apply_request_edits(&mut ex.request, changes, arm.needs.request_body, to)
                        .map(|change| {
                            if let Some(c) = change.cluster {
                                run.target = Some(c);
                            }
                            if let (Some(b), Some(k)) = (change.body, kept.as_mut()) {
                                k.data = Bytes::from(b);
                                ex.request_body = Some(k.data.clone());
                            }
                        })
                }
                RequestOutcome::Respond(made) => {
                    note(s, f.name(), "respond");
                    answer = Some(response(made));
                    Ok(())
                }
                RequestOutcome::Invalid(e) => Err(e),
            };
            if let Err(invalid) = applied {
                run.carry[i].context = None;
                self.on_failure(s, route, i, invalid.into())?;
                skipped[i] = true;
                continue;
            }
            if answer.is_some() {
                // The filters before this one see the answer.
                seen_by = i;
                break;
            }
        }
        // Who gets the response side, and the request as forwarded for
        // them: its line always, its headers only if one of them reads
        // them there (otherwise just `Host`, for its authority).
        let mut keep_headers = false;
        for (i, f) in route.chain.iter().enumerate().take(seen_by) {
            let needs = &f.arm(&s.picks[i]).needs;
            run.responds[i] = needs.on_response && !skipped[i];
            keep_headers |= run.responds[i] && needs.request_headers_on_response;
        }
        let parts = ex.request;
        if run.responds.contains(&true) {
            let (mut head, ()) = http::Request::new(()).into_parts();
            head.method = parts.method.clone();
            head.uri = parts.uri.clone();
            head.version = parts.version;
            if keep_headers {
                head.headers = parts.headers.clone();
            } else if let Some(host) = parts.headers.get(http::header::HOST) {
                head.headers.insert(http::header::HOST, host.clone());
            }
            run.forwarded = Some(head);
        }
        if let Some(resp) = answer {
            return Ok(Next::Answer(resp));
        }
        let body = match (kept, body) {
            (Some(k), _) => ForwardBody::Kept(k),
            (None, Some(b)) => ForwardBody::Stream(b),
            (None, None) => unreachable!("the body is either kept or still streaming"),
        };
        Ok(Next::Forward(parts, body))
    }

    /// Phase 5: `on-response` in reverse, for the filters that saw the
    /// request and declared the response phase.
    pub(super) async fn response_filters(
        &self,
        s: &mut Session<'_>,
        route: &Route,
        run: &mut ChainRun,
        resp: Response<ProxyBody>,
    ) -> Result<Response<ProxyBody>, RequestError> {
        let Some(forwarded) = run.forwarded.take() else {
            return Ok(resp);
        };
        let is_head = forwarded.method == http::Method::HEAD;
        let (head, mut stream) = resp.into_parts();
        let mut ex = Exchange::new(run.facts.clone(), forwarded);
        ex.response = Some(head);
        // A filter that asked for the response body gets it whole (not for
        // HEAD, whose response has none).
        let mut trailers: Option<HeaderMap> = None;
        let wants_body = (0..route.chain.len())
            .any(|i| run.responds[i] && route.chain[i].arm(&s.picks[i]).needs.response_body);
        if !is_head && wants_body {
            let limit = self.policy.limits.max_buffered_body;
            let kept = body::collect(std::mem::replace(&mut stream, body::empty()), limit)
                .await
                .map_err(|e| RequestError::UpstreamBody(e, limit))?;
            ex.response_body = Some(kept.data);
            trailers = kept.trailers;
        }
        for i in (0..route.chain.len()).rev() {
            if !run.responds[i] {
                continue;
            }
            let f = &route.chain[i];
            let arm = f.arm(&s.picks[i]);
            s.picks[i].ran = true;
            let called = arm.pool.on_response(&mut ex, &mut run.carry[i]).await;
            let outcome = match called {
                Ok(o) => o,
                Err(failure) => {
                    note(s, f.name(), failure.code());
                    self.on_failure(s, route, i, failure)?;
                    continue;
                }
            };
            let applied = match outcome {
                ResponseOutcome::Proceed(changes) => {
                    note(s, f.name(), "response-proceed");
                    let head = ex
                        .response
                        .as_mut()
                        .expect("the response is in the exchange");
                    edits::apply_response_edits(
                        &mut head.status,
                        &mut head.headers,
                        changes,
                        arm.needs.response_body,
                    )
                    .map(|new_body| {
                        if let Some(b) = new_body {
                            ex.response_body = Some(Bytes::from(b));
                        }
                    })
                }
                ResponseOutcome::Replace(made) => {
                    note(s, f.name(), "response-replace");
                    let (mut head, ()) = Response::new(()).into_parts();
                    head.status = made.status;
                    head.headers = made.headers;
                    ex.response = Some(head);
                    ex.response_body = Some(Bytes::from(made.body));
                    stream = body::empty();
                    // A filter-made response has no trailers.
                    trailers = None;
                    Ok(())
                }
                ResponseOutcome::Invalid(e) => Err(e),
            };
            if let Err(invalid) = applied {
                self.on_failure(s, route, i, invalid.into())?;
            }
        }
        let head = ex.response.take().expect("the response is in the exchange");
        let mut resp = Response::from_parts(head, stream);
        if let Some(data) = ex.response_body {
            set_body(&mut resp, data.clone());
            // The upstream's trailers (gRPC status, say) follow the final body.
            if trailers.is_some() {
                *resp.body_mut() = body::Kept { data, trailers }.to_body();
            }
        }
        Ok(resp)
    }

    /// What a filter failure does, decided here only: under `fail-closed`
    /// (the default) the request fails; under `fail-open` the failure is
    /// logged and counted and the filter is skipped (its edits are not
    /// applied, and it gets no `on-response`).
    fn on_failure(
        &self,
        s: &mut Session<'_>,
        route: &Route,
        i: usize,
        failure: FilterFailure,
    ) -> Result<(), RequestError> {
        let f = &route.chain[i];
        // A tenant's quota refused the call: the filter did not fail, and
        // fail-open does not skip it (skipping would escape the quota).
        if let FilterFailure::Quota(r) = failure {
            return Err(RequestError::TenantQuota(r));
        }
        s.picks[i].failed = true;
        if !f.fail_open {
            return Err(RequestError::Filter {
                filter: f.name().clone(),
                failure,
            });
        }
        let filter = &**f.name();
        tracing::warn!(
            route = &*route.name,
            filter,
            code = failure.code(),
            request_id = s.id(),
            "filter {filter:?} on route {:?} {failure}; skipped (fail-open)",
            route.name
        );
        self.metrics
            .filter_fail_open
            .get_or_create(&wasmgate_metrics::FilterLabels {
                tenant: route.tenant.as_str().to_owned(),
                filter: filter.to_owned(),
                route: route.name.to_string(),
            })
            .inc();
        Ok(())
    }
}

/// Adds `filter:outcome` to the access log line, if logging.
fn note(s: &mut Session<'_>, filter: &str, outcome: &str) {
    if let Some(e) = s.log.as_mut() {
        e.filters.push(format!("{filter}:{outcome}"));
    }
}

/// A filter-made response as an HTTP response.
fn response(made: edits::MadeResponse) -> Response<ProxyBody> {
    let body = if made.body.is_empty() {
        body::empty()
    } else {
        body::full(Bytes::from(made.body))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = made.status;
    *resp.headers_mut() = made.headers;
    resp
}

/// Replaces a response's body with bytes and makes `Content-Length` say so
/// (for statuses that carry a body).
fn set_body(resp: &mut Response<ProxyBody>, bytes: Bytes) {
    let len = bytes.len();
    *resp.body_mut() = body::full(bytes);
    let s = resp.status();
    if s == http::StatusCode::NO_CONTENT
        || s == http::StatusCode::NOT_MODIFIED
        || s.is_informational()
    {
        resp.headers_mut().remove(http::header::CONTENT_LENGTH);
    } else {
        resp.headers_mut()
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    }
}
