//! Phases 3 and 5, the route's filters: `on-request` in chain order, then
//! (after the upstream, or after a filter answered) `on-response` in
//! reverse, for the filters that saw the request and asked for it.
//!
//! Each call carries only what its filter declared at `init` (headers by
//! name, bodies on request). Decisions are validated and applied by the
//! filter engine's pure functions ([`wasmgate_engine::edits`]), both sides
//! here. What a failure does is decided in one place, [`Proxy::on_failure`]:
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
use crate::route::{Route, authority_of};
use crate::upstream::Cluster;
use wasmgate_engine::{FilterFailure, edits, wit};

/// One filter's state for one request.
#[derive(Default)]
struct FilterVersions {
    /// What `on-request` handed on to `on-response`.
    context: Option<Vec<u8>>,
    /// Outbound calls it made for this request (its budget spans both
    /// phases).
    outbound_used: u32,
    /// The request as forwarded, for its `on-response`; none when it gets
    /// no response phase (it did not ask, failed open, or never ran).
    forwarded: Option<wit::Request>,
}

/// The chain's state for one request.
pub(super) struct ChainRun {
    /// The request record, built once; each call gets only the headers its
    /// filter declared, and the request line is refreshed after edits.
    wreq: wit::Request,
    filters: SmallVec<[FilterVersions; 4]>,
    /// Filters whose `on-response` may run: all of them, or those before
    /// the one that answered.
    seen_by: usize,
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
    /// on it) and builds the request record.
    pub(super) fn start(s: &mut Session<'_>, route: &Route, parts: &Parts) -> ChainRun {
        s.picks = route
            .chain
            .iter()
            .map(|f| f.pick(&parts.headers, s.request_id.to_str().unwrap_or_default()))
            .collect();
        let client = s.client.as_ref();
        let meta = wit::RequestMeta {
            request_id: s.id().to_owned(),
            route: route.name.to_string(),
            client_addr: client.map(|c| c.client_addr()).unwrap_or_default(),
            tls: client.is_some_and(|c| c.scheme == "https"),
            received_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let mut wreq = wit::Request {
            method: String::new(),
            scheme: client.map_or("http", |c| c.scheme).to_owned(),
            authority: String::new(),
            path_with_query: String::new(),
            headers: Vec::new(),
            body: None,
            meta,
        };
        sync_request_line(&mut wreq, parts);
        ChainRun {
            wreq,
            filters: route
                .chain
                .iter()
                .map(|_| FilterVersions::default())
                .collect(),
            seen_by: route.chain.len(),
            target: route.pick().cloned(),
        }
    }
}

impl Proxy {
    /// Phase 3: `on-request` of each filter in order.
    pub(super) async fn request_filters(
        &self,
        s: &mut Session<'_>,
        route: &Route,
        run: &mut ChainRun,
        mut parts: Parts,
        body: Incoming,
    ) -> Result<Next, RequestError> {
        // A filter that asked for the request body gets it whole, read just
        // before that filter runs: filters before it (authentication, say)
        // decide first, and no `100 Continue` goes out until then.
        let mut body = Some(body);
        let mut kept: Option<body::Kept> = None;
        let mut answer = None;
        let mut skipped: SmallVec<[bool; 4]> = SmallVec::from_elem(false, route.chain.len());
        for (i, f) in route.chain.iter().enumerate() {
            let arm = f.arm(&s.picks[i]);
            if arm.needs.request_body
                && let Some(b) = body.take()
            {
                let limits = &self.policy.limits;
                let limit = limits.max_buffered_body.min(limits.max_request_body);
                let collected = Box::pin(body::collect(b, limit)).await;
                kept = Some(collected.map_err(|e| RequestError::Body(e, limit))?);
            }
            run.wreq.headers = arm.needs.request_headers.copy(&parts.headers);
            run.wreq.body = match (&kept, arm.needs.request_body) {
                (Some(k), true) => Some(k.data.to_vec()),
                _ => None,
            };
            s.picks[i].ran = true;
            let state = &mut run.filters[i];
            let called = arm
                .pool
                .on_request(&run.wreq, &mut state.outbound_used)
                .await;
            let decision = match called {
                Ok(d) => d,
                Err(failure) => {
                    note(s, f.name(), failure.code());
                    self.on_failure(s, route, i, failure)?;
                    skipped[i] = true;
                    continue;
                }
            };
            let applied = match decision {
                wit::RequestDecision::Proceed(p) => {
                    note(s, f.name(), "proceed");
                    let to = |name: &str| self.clusters.get(name).cloned();
                    edits::apply_request_edits(&mut parts, p.edits, arm.needs.request_body, to).map(
                        |change| {
                            if let Some(c) = change.cluster {
                                run.target = Some(c);
                            }
                            if let (Some(b), Some(k)) = (change.body, kept.as_mut()) {
                                k.data = Bytes::from(b);
                            }
                            sync_request_line(&mut run.wreq, &parts);
                            run.filters[i].context = p.context;
                        },
                    )
                }
                wit::RequestDecision::Respond(r) => {
                    note(s, f.name(), "respond");
                    edits::made_response(r).map(|made| {
                        answer = Some(response(made));
                    })
                }
            };
            if let Err(failure) = applied {
                self.on_failure(s, route, i, failure.into())?;
                skipped[i] = true;
                continue;
            }
            if answer.is_some() {
                // The filters before this one see the answer.
                run.seen_by = i;
                break;
            }
        }
        // The request as forwarded, for the response side.
        run.wreq.headers.clear();
        run.wreq.body = None;
        for (i, f) in route.chain.iter().enumerate().take(run.seen_by) {
            let needs = &f.arm(&s.picks[i]).needs;
            if needs.wants_response && !skipped[i] {
                run.filters[i].forwarded = Some(wit::Request {
                    headers: needs.request_headers.copy(&parts.headers),
                    ..run.wreq.clone()
                });
            }
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
    /// request and asked for the response.
    pub(super) async fn response_filters(
        &self,
        s: &mut Session<'_>,
        route: &Route,
        run: &mut ChainRun,
        mut resp: Response<ProxyBody>,
    ) -> Result<Response<ProxyBody>, RequestError> {
        // A filter that asked for the response body gets it whole (not for
        // HEAD, whose response has none).
        let mut resp_body: Option<Bytes> = None;
        let mut resp_trailers: Option<HeaderMap> = None;
        let wants_body = (0..run.seen_by).any(|i| {
            run.filters[i].forwarded.is_some()
                && route.chain[i].arm(&s.picks[i]).needs.response_body
        });
        if run.wreq.method != "HEAD" && wants_body {
            let limit = self.policy.limits.max_buffered_body;
            let (rparts, rbody) = resp.into_parts();
            let kept = body::collect(rbody, limit)
                .await
                .map_err(|e| RequestError::UpstreamBody(e, limit))?;
            resp = Response::from_parts(rparts, body::empty());
            set_body(&mut resp, kept.data.clone());
            resp_body = Some(kept.data);
            resp_trailers = kept.trailers;
        }
        for i in (0..run.seen_by).rev() {
            let f = &route.chain[i];
            let arm = f.arm(&s.picks[i]);
            let state = &mut run.filters[i];
            let Some(wreq) = &state.forwarded else {
                continue;
            };
            let wresp = wit::Response {
                status: resp.status().as_u16(),
                headers: arm.needs.response_headers.copy(resp.headers()),
                body: match (&resp_body, arm.needs.response_body) {
                    (Some(b), true) => Some(b.to_vec()),
                    _ => None,
                },
            };
            let context = state.context.as_deref();
            let called = arm
                .pool
                .on_response(wreq, &wresp, context, &mut state.outbound_used)
                .await;
            let decision = match called {
                Ok(d) => d,
                Err(failure) => {
                    note(s, f.name(), failure.code());
                    self.on_failure(s, route, i, failure)?;
                    continue;
                }
            };
            let applied = match decision {
                wit::ResponseDecision::Proceed(changes) => {
                    note(s, f.name(), "response-proceed");
                    let (mut head, rbody) = resp.into_parts();
                    let edited = edits::apply_response_edits(
                        &mut head.status,
                        &mut head.headers,
                        changes,
                        arm.needs.response_body,
                    );
                    resp = Response::from_parts(head, rbody);
                    edited.map(|new_body| {
                        if let Some(b) = new_body {
                            let b = Bytes::from(b);
                            set_body(&mut resp, b.clone());
                            resp_body = Some(b);
                        }
                    })
                }
                wit::ResponseDecision::Replace(r) => {
                    note(s, f.name(), "response-replace");
                    edits::made_response(r).map(|made| {
                        let replaced = Bytes::from(made.body.clone());
                        resp = response(made);
                        // A filter-made response has no trailers.
                        resp_trailers = None;
                        if resp_body.is_some() {
                            resp_body = Some(replaced);
                        }
                    })
                }
            };
            if let Err(failure) = applied {
                self.on_failure(s, route, i, failure.into())?;
            }
        }
        // The upstream's trailers (gRPC status, say) follow the final body.
        if let (Some(data), Some(trailers)) = (resp_body, resp_trailers) {
            *resp.body_mut() = body::Kept {
                data,
                trailers: Some(trailers),
            }
            .to_body();
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
        s.picks[i].failed = true;
        let f = &route.chain[i];
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

/// Makes the WIT request's method, authority and path match `parts`,
/// allocating only for what changed.
fn sync_request_line(wreq: &mut wit::Request, parts: &Parts) {
    fn sync(field: &mut String, value: &str) {
        if field != value {
            value.clone_into(field);
        }
    }
    sync(&mut wreq.method, parts.method.as_str());
    sync(&mut wreq.authority, authority_of(parts).unwrap_or_default());
    sync(
        &mut wreq.path_with_query,
        parts.uri.path_and_query().map_or("/", |p| p.as_str()),
    );
}
