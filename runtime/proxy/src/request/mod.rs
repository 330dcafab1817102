//! The request path, in named phases over one per-request `Session`:
//!
//! ```text
//!  early checks ─▶ route ─▶ request-side filters ─▶ [cache lookup] ─▶ upstream
//!   (early.rs)   (route)      (filters.rs)           (cache.rs)     (upstream.rs)
//!                                 │ respond                            │
//!                                 ▼                           [cache store]
//!                          response-side filters ◀────────────────────┘
//!                               (filters.rs)
//!                                 ▼
//!                              finish (finish.rs): exactly once, on every path
//! ```
//!
//! [`Proxy::handle`] reads top to bottom: each phase is a method of
//! [`Proxy`] in its own module, called directly (static dispatch, no
//! allocation of its own), and returns a [`RequestError`] to stop the
//! request. `finish` runs once whatever happened: every response carries
//! the request id, is counted, and is logged. A route without filters takes
//! the lean path: no WIT records are built and no filter state exists.
//!
//! The two bracketed slots are where the response cache plugs in
//! (`cache.rs`): a lookup after the request-side filters, whose hit skips
//! the upstream, and a store before the response-side filters, so filters
//! see cached and fresh responses alike.

mod cache;
mod early;
mod error;
mod filters;
mod finish;
mod id;
mod translate;
mod upstream;

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use smallvec::SmallVec;

pub use early::strip_hop_by_hop;
pub use error::{GRPC_ERROR_CODE, RequestError};
pub(crate) use id::RequestIds;

use crate::access_log::{Entry, LoggedBody};
use crate::body::ProxyBody;
use crate::chain::Pick;
use crate::forwarding::ClientView;
use crate::proxy::{ConnInfo, Proxy};
use crate::route::Route;
use crate::router::TenantId;
use crate::upstream::Cluster;

/// One request on its way through the gateway: what the phases share.
pub(crate) struct Session<'c> {
    /// The connection it came on.
    pub(crate) conn: &'c ConnInfo,
    /// When its head was received.
    pub(crate) started: Instant,
    /// Its id: a trusted incoming one, or one made here. Settled before any
    /// check, so every answer (a refusal too) carries it.
    pub(crate) request_id: HeaderValue,
    /// What forwarding decided about the client (set by the early checks).
    pub(crate) client: Option<ClientView>,
    /// The tenant it belongs to, once its host is known.
    pub(crate) tenant: Option<TenantId>,
    /// The route it matched.
    pub(crate) route: Option<Arc<Route>>,
    /// The cluster it was sent to, when that is not the route's own (a
    /// weighted split, or a filter's choice): the metrics label it.
    pub(crate) rerouted: Option<Arc<Cluster>>,
    /// The version of each of the route's filters it runs on, picked once
    /// as it enters the chain, and whether each ran and failed.
    pub(crate) picks: SmallVec<[Pick; 4]>,
    /// An HTTP/1.1 chunked body (hop-by-hop stripping removes the header):
    /// its first chunk is read before forwarding.
    pub(crate) chunked: bool,
    /// Its access log line, when the generation logs.
    pub(crate) log: Option<Entry>,
    /// Its place among its tenant's requests in flight, held until its
    /// response body ends.
    pub(crate) admitted: Option<wasmgate_engine::RequestGuard>,
}

impl Session<'_> {
    /// The request id as text (request ids are ASCII by construction).
    pub(crate) fn id(&self) -> &str {
        self.request_id.to_str().unwrap_or_default()
    }

    /// The route's name, once one matched.
    pub(crate) fn route_name(&self) -> Option<&str> {
        self.route.as_deref().map(|r| &*r.name)
    }
}

impl Proxy {
    /// Handles one request. Never fails: every error becomes a response in
    /// the standard format.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Response<LoggedBody<ProxyBody>> {
        let mut s = self.session(&req, conn);
        let timeout = self.policy.limits.request_timeout;
        let outcome = match tokio::time::timeout(timeout, self.process(&mut s, req)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(RequestError::RequestTimeout(timeout)),
        };
        self.finish(s, outcome)
    }

    fn session<'c>(&self, req: &Request<Incoming>, conn: &'c ConnInfo) -> Session<'c> {
        let started = Instant::now();
        let request_id = self
            .policy
            .forwarding
            .request_id(req.headers(), conn.peer, || {
                HeaderValue::from_bytes(&self.ids.next().hex())
                    .unwrap_or_else(|_| HeaderValue::from_static("invalid-request-id"))
            });
        let log = self.access_log.as_ref().map(|_| Entry {
            tenant: TenantId::default_tenant(),
            method: req.method().as_str().to_owned(),
            request_id: request_id.to_str().unwrap_or_default().to_owned(),
            ..Entry::default()
        });
        Session {
            conn,
            started,
            request_id,
            client: None,
            tenant: None,
            route: None,
            rerouted: None,
            picks: SmallVec::new(),
            chunked: false,
            log,
            admitted: None,
        }
    }

    /// The phases, in order. Errors stop the request and are answered by
    /// `finish`.
    async fn process(
        &self,
        s: &mut Session<'_>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, RequestError> {
        let (parts, body) = self.early_checks(s, req)?;
        let route = self.route(s, &parts)?;
        if route.chain.is_empty() {
            // The lean path: nothing to copy, nothing to call.
            let target = route.pick();
            return Ok(self
                .upstream(s, &route, target, parts, body.into(), None)
                .await);
        }
        // Boxed: the filter path's state is large, and keeping it out of
        // this future keeps the lean path's future small (hyper moves it
        // into place for every request).
        Box::pin(self.through_filters(s, route, parts, body)).await
    }

    /// The request side of the route's filters, the upstream (unless a
    /// filter answered), and the response side in reverse.
    async fn through_filters(
        &self,
        s: &mut Session<'_>,
        route: Arc<Route>,
        parts: http::request::Parts,
        body: Incoming,
    ) -> Result<Response<ProxyBody>, RequestError> {
        let mut chain = filters::ChainRun::start(s, &route, &parts);
        let resp = match self
            .request_filters(s, &route, &mut chain, parts, body)
            .await?
        {
            filters::Next::Forward(parts, body) => {
                let target = chain.target.clone();
                self.upstream(s, &route, target.as_ref(), parts, body, Some(&chain))
                    .await
            }
            filters::Next::Answer(resp) => resp,
        };
        self.response_filters(s, &route, &mut chain, resp).await
    }

    /// Routing: the route this request matches, or 404.
    fn route(
        &self,
        s: &mut Session<'_>,
        parts: &http::request::Parts,
    ) -> Result<Arc<Route>, RequestError> {
        let host = crate::route::authority_of(parts).and_then(crate::router::normalize_host);
        let tenant = self
            .routes
            .tenant_of(host.as_deref())
            .ok_or(RequestError::RouteNotFound)?;
        // On TLS, the connection's server name must lead to the same tenant
        // as the request's host: one tenant's connection never carries
        // another's requests (its certificate and client-certificate rules
        // were chosen for the first).
        if let Some(tls) = &s.conn.tls
            && self.routes.tenant_of(tls.sni.as_deref()) != Some(tenant)
        {
            return Err(RequestError::Misdirected {
                sni: tls.sni.as_deref().unwrap_or_default().to_owned(),
                host: host.as_deref().unwrap_or_default().to_owned(),
            });
        }
        let id = self.routes.tenant(tenant);
        if let Some(e) = s.log.as_mut() {
            e.tenant = id.clone();
        }
        s.tenant = Some(id.clone());
        let route = self
            .routes
            .find(
                tenant,
                host.as_deref(),
                &parts.method,
                parts.uri.path(),
                crate::router::RequestView {
                    headers: &parts.headers,
                    query: parts.uri.query(),
                },
            )
            .cloned()
            .ok_or(RequestError::RouteNotFound)?;
        if let Some(e) = s.log.as_mut() {
            e.route = Some(route.name.clone());
        }
        s.route = Some(route.clone());
        if let Some(q) = &route.quota {
            s.admitted = Some(q.admit_request().map_err(RequestError::TenantQuota)?);
        }
        if route.reject_path_parameters && parts.uri.path().contains(';') {
            return Err(RequestError::BadRequest(
                "`;` path parameters are not accepted here".into(),
            ));
        }
        Ok(route)
    }
}
