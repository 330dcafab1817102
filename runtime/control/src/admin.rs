//! The admin listener: health, readiness and Prometheus metrics, plus the
//! management API (routes, clusters with health, filters with versions;
//! uploading a filter module; getting, replacing and reloading the config;
//! listing and replacing descriptor sets),
//! on its own address, loopback by default. `docs/admin-api.yaml` is its
//! OpenAPI description.
//!
//! A bearer token from the config protects everything except `/health`,
//! `/ready` and `/metrics` (and `/metrics` too with `protect_metrics`). The
//! gateway refuses to start an admin listener on a non-loopback address
//! without a token; without one, every request must name a loopback `Host`
//! (or one in `admin.allowed_hosts`), so a web page that rebinds its own
//! name to 127.0.0.1 cannot drive the API from a browser. Connections are
//! capped (`admin.max_connections`) and get the listener's header-read
//! timeout. Errors use the standard error format.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::live::{DescriptorError, Live, MAX_MODULE_SIZE, SwapError};
use wasmgate_config::AdminConfig;
use wasmgate_proxy::body::{self, ProxyBody};
use wasmgate_proxy::error::GatewayError;
use wasmgate_proxy::response_cache::Purge;
use wasmgate_proxy::route::RouteTarget;

/// Largest config document accepted by `PUT /config`.
pub(crate) const MAX_CONFIG_SIZE: usize = 4 << 20;

/// What the admin endpoints read.
#[derive(Debug)]
pub struct AdminState {
    pub(crate) config: AdminConfig,
    /// How long a connection may take to send a request head (the
    /// listener's `limits.header_read_timeout` at start).
    pub(crate) header_read_timeout: Duration,
    pub(crate) live: Arc<Live>,
    /// False while starting and once draining: `/ready` answers 503.
    pub(crate) ready: AtomicBool,
}

pub(crate) fn json(status: StatusCode, value: serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Compares without an early exit, so timing does not reveal the token.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// The longest pause after failed accepts (out of descriptors, say); the
/// first is 5 ms, doubling.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

impl AdminState {
    fn refused(&self, reason: &'static str) {
        self.live
            .deps()
            .metrics
            .admin_refused
            .get_or_create(&wasmgate_metrics::AdminRefusalLabels { reason })
            .inc();
    }

    /// The request's `Host` (the header, or an absolute-form target's).
    fn host(req: &Request<Incoming>) -> Option<&str> {
        req.headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(http::uri::Authority::as_str))
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.config.token else {
            return true;
        };
        // A token never read (`Config::parse` reads it) lets no one in.
        let Some(token) = token.expose() else {
            return false;
        };
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes()))
    }

    /// Answers one admin request: the management API's changes first, the
    /// read-only endpoints below.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        if !self.config.host_allowed(Self::host(&req)) {
            self.refused("host_not_allowed");
            let shown = Self::host(&req).unwrap_or("(none)");
            let allowed = if self.config.allowed_hosts.is_empty() {
                "a loopback name (localhost, 127.0.0.1, [::1]; admin.allowed_hosts names others)"
                    .to_owned()
            } else {
                format!(
                    "one of admin.allowed_hosts ({})",
                    self.config.allowed_hosts.join(", ")
                )
            };
            return GatewayError::new(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                format!(
                    "the admin API answers only requests whose Host is {allowed}; this one's is {shown:?}"
                ),
            )
            .into_response(None);
        }
        let path = req.uri().path().to_owned();
        let caller = self.caller(&req);
        if path == "/tenants" || path.starts_with("/tenants/") {
            return self.tenants(req, caller).await;
        }
        // A tenant's token reaches its own tenant's endpoints and nothing
        // else: everything else is as if it did not exist.
        if matches!(caller, crate::tenant_admin::Caller::Tenant(_)) {
            return crate::tenant_admin::not_found(&path);
        }
        let change = match (req.method(), path.as_str()) {
            (&Method::PUT, "/config")
            | (&Method::POST, "/config/reload")
            | (&Method::POST, "/cache/purge") => true,
            (&Method::PUT, p) if descriptor_target(p).is_some() => true,
            (m, p) => filter_target(p).is_some_and(|(_, action)| {
                matches!(
                    (m, action),
                    (&Method::PUT, "module" | "canary")
                        | (&Method::POST, "activate" | "promote" | "rollback")
                )
            }),
        };
        if !change || !self.authorized(&req) {
            return self.read(&req);
        }
        match (req.method().clone(), path.as_str()) {
            (Method::POST, "/config/reload") => {
                self.apply(
                    wasmgate_config::Config::load_beside(self.live.file(), &self.live.config()),
                    crate::live::Origin::File,
                )
                .await
            }
            (Method::POST, "/cache/purge") => self.purge(None, req).await,
            (Method::PUT, p) if descriptor_target(p).is_some() => {
                let name = descriptor_target(p).unwrap_or_default().to_owned();
                self.put_descriptor(&name, req).await
            }
            (_, "/config") => {
                let current = self.live.config();
                let body = match body::collect(req.into_body(), MAX_CONFIG_SIZE).await {
                    Ok(k) => k.data,
                    Err(e) => return body_error(e, MAX_CONFIG_SIZE),
                };
                let Ok(text) = std::str::from_utf8(&body) else {
                    return GatewayError::bad_request("the config must be UTF-8 TOML")
                        .into_response(None);
                };
                // Nothing the document names is read before it is known
                // to be within what the config file allows.
                let parsed = wasmgate_config::Config::parse_without_secrets(
                    text,
                    "PUT /config",
                    &current.base,
                )
                .and_then(|mut config| {
                    let mut errors = config.api_reach_errors(&self.live.file_config());
                    if errors.is_empty()
                        && let Err(e) = config.read_secrets()
                    {
                        errors = e;
                    }
                    if errors.is_empty() {
                        // The tenants are not part of the main config: they
                        // stay as they run (with `[tenants]`).
                        if config.tenancy.is_some() {
                            config.tenants = current.tenants.clone();
                        }
                        Ok((config, Vec::new()))
                    } else {
                        Err(wasmgate_config::ConfigErrors {
                            source: "PUT /config".into(),
                            errors,
                        })
                    }
                });
                self.apply(parsed, crate::live::Origin::Api).await
            }
            _ => {
                let Some((name, action)) = filter_target(&path) else {
                    return self.read(&req);
                };
                let (name, action) = (name.to_owned(), action.to_owned());
                self.filter_change(&name, &action, req).await
            }
        }
    }

    /// A change to filter `name` (a store key: `tenant/name` for a
    /// tenant's): `module`, `activate`, `canary`, `promote` or `rollback`.
    pub(crate) async fn filter_change(
        &self,
        name: &str,
        action: &str,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let result = match action {
            "module" => {
                let activate = match activate_param(req.uri().query()) {
                    Ok(a) => a,
                    Err(m) => return GatewayError::bad_request(m).into_response(None),
                };
                let expected = req
                    .headers()
                    .get("x-wasmgate-sha256")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let bytes = match body::collect(req.into_body(), MAX_MODULE_SIZE).await {
                    Ok(k) => Vec::from(k.data),
                    Err(e) => return body_error(e, MAX_MODULE_SIZE),
                };
                self.live
                    .upload_module(name, bytes, expected.as_deref(), activate)
                    .await
            }
            "activate" => match read_json::<VersionBody>(req).await {
                Ok(b) => self.live.activate_version(name, b.version).await,
                Err(resp) => return resp,
            },
            "canary" => match read_json::<wasmgate_proxy::canary::CanarySpec>(req).await {
                Ok(spec) => self.live.start_canary(name, spec).await,
                Err(resp) => return resp,
            },
            "promote" => self.live.promote(name).await,
            _ => self.live.rollback(name).await,
        };
        match result {
            Ok(report) => json(StatusCode::OK, report),
            Err(e) => swap_error(e),
        }
    }

    async fn apply(
        &self,
        parsed: Result<
            (wasmgate_config::Config, wasmgate_config::tenant::Refused),
            wasmgate_config::ConfigErrors,
        >,
        origin: crate::live::Origin,
    ) -> Response<ProxyBody> {
        let summary = parsed.as_ref().ok().map(|(config, _)| {
            serde_json::json!({
                "status": "applied",
                "routes": config.routes.len(),
                "clusters": config.clusters.len(),
                "filters": config.filters.len(),
            })
        });
        match self.live.apply_parsed(parsed, origin).await {
            Ok(refused) => {
                let mut summary = summary.unwrap_or_default();
                if !refused.is_empty() {
                    summary["tenants_refused"] = refused
                        .iter()
                        .map(|(tenant, e)| {
                            serde_json::json!({
                                "tenant": tenant,
                                "source": e.source,
                                "errors": e.errors.iter().map(|e| serde_json::json!({
                                    "path": e.path, "message": e.message,
                                })).collect::<Vec<_>>(),
                            })
                        })
                        .collect();
                }
                json(StatusCode::OK, summary)
            }
            Err(e) => config_errors(e),
        }
    }

    /// The 401 for a request without a valid token (counted).
    pub(crate) fn unauthorized(&self) -> Response<ProxyBody> {
        self.refused("unauthorized");
        let mut resp = GatewayError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin API needs `Authorization: Bearer <token>`",
        )
        .into_response(None);
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        resp
    }

    /// Who is asking: a tenant by one of its tokens, else the operator (the
    /// admin token, or none configured), else nobody.
    fn caller(&self, req: &Request<Incoming>) -> crate::tenant_admin::Caller {
        use crate::tenant_admin::Caller;
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if let Some(t) = bearer.and_then(|b| self.live.tokens().tenant_of(b)) {
            return Caller::Tenant(t);
        }
        if self.authorized(req) {
            Caller::Operator
        } else {
            Caller::Nobody
        }
    }

    /// `PUT /descriptors/NAME`: the body is a binary FileDescriptorSet.
    async fn put_descriptor(&self, name: &str, req: Request<Incoming>) -> Response<ProxyBody> {
        let limit = crate::descriptors::MAX_DESCRIPTOR_SET;
        let bytes = match body::collect(req.into_body(), limit).await {
            Ok(k) => Vec::from(k.data),
            Err(body::FirstFrameError::TooLarge) => {
                return descriptor_error(DescriptorError::TooLarge);
            }
            Err(e) => return body_error(e, limit),
        };
        match self.live.put_descriptor(name, bytes).await {
            Ok(report) => json(StatusCode::OK, report),
            Err(e) => descriptor_error(e),
        }
    }

    /// The read-only endpoints (and the refusals).
    fn read(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        let path = req.uri().path();
        let public = matches!(path, "/health" | "/ready")
            || (path == "/metrics" && !self.config.protect_metrics);
        if !public && !self.authorized(req) {
            return self.unauthorized();
        }
        let proxy = self.live.proxy();
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return GatewayError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} is not allowed on {path}", req.method()),
            )
            .into_response(None);
        }
        match path {
            "/health" => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
            "/ready" => {
                if self.ready.load(Ordering::Relaxed) {
                    json(StatusCode::OK, serde_json::json!({"status": "ready"}))
                } else {
                    json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({"status": "not ready"}),
                    )
                }
            }
            "/metrics" => {
                self.live.sample_metrics();
                let mut resp = Response::new(body::full(Bytes::from(proxy.metrics_text())));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                resp
            }
            "/routes" => {
                let routes: Vec<serde_json::Value> = proxy
                    .routes()
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "name": &*r.name,
                            "target": match &r.target {
                                RouteTarget::Cluster(c) => serde_json::json!({ "cluster": &**c.name() }),
                                RouteTarget::Weighted(s) => serde_json::json!({ "split": s.describe() }),
                                RouteTarget::Redirect(rd) => serde_json::json!({ "redirect": rd.status }),
                                RouteTarget::Respond(rs) => serde_json::json!({ "respond": rs.status }),
                            },
                            "filters": r.chain.iter().map(|f| {
                                let arm = |a: &wasmgate_proxy::chain::RouteVersion| {
                                    let stats = a.pool.stats();
                                    serde_json::json!({
                                        "version": a.version,
                                        "sha256": a.pool.module().sha256(),
                                        "idle_instances": stats.idle,
                                        "instances_created": stats.created,
                                        "instances_discarded": stats.discarded,
                                    })
                                };
                                let mut v = arm(&f.stable);
                                v["name"] = serde_json::json!(&**f.name());
                                v["canary"] = f.canary.as_ref().map(|(_, a)| arm(a)).into();
                                v
                            }).collect::<Vec<_>>(),
                            "transcode": r.translation.as_ref().and_then(|t| t.descriptor.as_deref()),
                            "grpc_web": r.translation.as_ref().is_some_and(|t| t.grpc_web),
                        })
                    })
                    .collect();
                json(StatusCode::OK, serde_json::json!({ "routes": routes }))
            }
            "/clusters" => {
                let mut clusters: Vec<_> = proxy
                    .clusters
                    .get(&wasmgate_config::TenantId::default_tenant())
                    .map(|m| m.values().collect())
                    .unwrap_or_default();
                clusters.sort_by(|a, b| a.name().cmp(b.name()));
                let clusters: Vec<serde_json::Value> =
                    clusters.iter().map(|c| c.health_report()).collect();
                json(StatusCode::OK, serde_json::json!({ "clusters": clusters }))
            }
            "/filters" => json(StatusCode::OK, self.live.filters_report()),
            p if p
                .strip_prefix("/filters/")
                .is_some_and(|n| !n.contains('/')) =>
            {
                let name = &p["/filters/".len()..];
                match self.live.filter_report(name) {
                    serde_json::Value::Null => {
                        swap_error(SwapError::UnknownFilter(name.to_owned()))
                    }
                    report => json(StatusCode::OK, report),
                }
            }
            "/descriptors" => json(
                StatusCode::OK,
                serde_json::json!({ "descriptors": self.live.descriptors_report() }),
            ),
            p if descriptor_target(p).is_some() => {
                let name = descriptor_target(p).unwrap_or_default();
                match self.live.descriptor_report(name) {
                    serde_json::Value::Null => {
                        descriptor_error(DescriptorError::Unknown(name.to_owned()))
                    }
                    report => json(StatusCode::OK, report),
                }
            }
            "/config" => {
                let mut resp =
                    Response::new(body::full(Bytes::from(self.live.config().text.clone())));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/toml"),
                );
                resp
            }
            _ => GatewayError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no admin endpoint {path}"),
            )
            .into_response(None),
        }
    }
}

/// Serves the admin API until `shutdown` becomes true: at most
/// `admin.max_connections` at once (more wait in the listen backlog), each
/// with a header-read timeout; failed accepts back off rather than spin.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(state.config.max_connections));
    let mut backoff = Duration::ZERO;
    loop {
        let accept = async {
            let slot = slots.clone().acquire_owned().await;
            (slot, listener.accept().await)
        };
        tokio::select! {
            (slot, accepted) = accept => {
                let Ok(slot) = slot else { return };
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        backoff = (backoff * 2).clamp(Duration::from_millis(5), MAX_ACCEPT_BACKOFF);
                        tracing::warn!("admin accept failed: {e}; pausing {backoff:?}");
                        drop(slot);
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                };
                backoff = Duration::ZERO;
                let timeout = state.header_read_timeout;
                let state = state.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(state.handle(req).await) }
                });
                tokio::spawn(async move {
                    let _slot = slot;
                    let _ = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(timeout)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

/// `400 invalid_config` with every error and its key path.
pub(crate) fn config_errors(e: wasmgate_config::ConfigErrors) -> Response<ProxyBody> {
    let errors: Vec<_> = e
        .errors
        .iter()
        .map(|e| serde_json::json!({ "path": e.path, "message": e.message }))
        .collect();
    let mut resp = json(
        StatusCode::BAD_REQUEST,
        serde_json::json!({
            "status": 400,
            "code": "invalid_config",
            "message": format!("{} error(s) in {}; the running config is unchanged", errors.len(), e.source),
            "errors": errors,
        }),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn swap_error(e: SwapError) -> Response<ProxyBody> {
    let (status, code) = match &e {
        SwapError::UnknownFilter(_) => (StatusCode::NOT_FOUND, "unknown_filter"),
        SwapError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "module_too_large"),
        SwapError::Digest { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "digest_mismatch"),
        SwapError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_module"),
        SwapError::UnknownVersion { .. } => (StatusCode::NOT_FOUND, "unknown_version"),
        SwapError::Conflict(_) => (StatusCode::CONFLICT, "nothing_to_do"),
        SwapError::BadCanary(_) => (StatusCode::BAD_REQUEST, "invalid_canary"),
        SwapError::Persist(_) => (StatusCode::INTERNAL_SERVER_ERROR, "data_dir_unwritable"),
        SwapError::Closed => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        SwapError::Pending => (StatusCode::SERVICE_UNAVAILABLE, "taking_over"),
    };
    let mut value = serde_json::json!({
        "status": status.as_u16(),
        "code": code,
        "message": format!("{e}; nothing changed"),
    });
    if let SwapError::Invalid(errors) = &e {
        value["errors"] = errors
            .errors
            .iter()
            .map(|e| serde_json::json!({ "path": e.path, "message": e.message }))
            .collect();
    }
    json(status, value)
}

pub(crate) fn body_error(e: body::FirstFrameError, limit: usize) -> Response<ProxyBody> {
    match e {
        body::FirstFrameError::TooLarge => GatewayError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_body_too_large",
            format!("the body is larger than {limit} bytes"),
        ),
        body::FirstFrameError::Invalid(why) => {
            GatewayError::bad_request(format!("the body could not be read: {why}"))
        }
    }
    .into_response(None)
}

/// The NAME of `/descriptors/NAME`.
fn descriptor_target(path: &str) -> Option<&str> {
    path.strip_prefix("/descriptors/")
        .filter(|n| !n.is_empty() && !n.contains('/'))
}

fn descriptor_error(e: DescriptorError) -> Response<ProxyBody> {
    let (status, code) = match &e {
        DescriptorError::Unknown(_) => (StatusCode::NOT_FOUND, "unknown_descriptor"),
        DescriptorError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "descriptor_too_large"),
        DescriptorError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_descriptor"),
        DescriptorError::Routes(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_descriptor"),
        DescriptorError::Persist(_) => (StatusCode::INTERNAL_SERVER_ERROR, "data_dir_unwritable"),
        DescriptorError::Closed => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        DescriptorError::Pending => (StatusCode::SERVICE_UNAVAILABLE, "taking_over"),
    };
    let message = match &e {
        DescriptorError::Routes(errors) => errors
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    };
    let mut err = GatewayError::new(status, code, message);
    if let DescriptorError::Routes(errors) = &e {
        let list: Vec<serde_json::Value> = errors
            .errors
            .iter()
            .map(|e| serde_json::json!({ "path": e.path, "message": e.message }))
            .collect();
        err = err.with("errors", list);
    }
    err.into_response(None)
}

/// The filter name and action in `/filters/NAME/ACTION`.
fn filter_target(path: &str) -> Option<(&str, &str)> {
    let (name, action) = path.strip_prefix("/filters/")?.split_once('/')?;
    (!name.is_empty() && !action.is_empty() && !action.contains('/')).then_some((name, action))
}

/// `?activate=false` on an upload: store the version without activating it.
fn activate_param(query: Option<&str>) -> Result<bool, String> {
    let mut activate = true;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match (&*k, &*v) {
            ("activate", "true") => activate = true,
            ("activate", "false") => activate = false,
            ("activate", other) => {
                return Err(format!("`activate` is true or false, not {other:?}"));
            }
            (other, _) => return Err(format!("unknown query parameter {other:?}")),
        }
    }
    Ok(activate)
}

/// `{"version": N}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionBody {
    version: u64,
}

/// `POST /cache/purge` (and a tenant's `POST /tenants/NAME/cache/purge`):
/// exactly one of `url`, `prefix` or `tag`; `host` narrows a prefix (a
/// `url` may be absolute instead); `tenant` narrows an operator's purge.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    url: Option<String>,
    prefix: Option<String>,
    host: Option<String>,
    tag: Option<String>,
    tenant: Option<String>,
}

impl PurgeRequest {
    /// The purge it asks for, and the tenant it names, or what is wrong.
    fn parse(self) -> Result<(Purge, Option<String>), String> {
        let host = |h: &str| {
            wasmgate_proxy::router::normalize_host(h)
                .map(|h| h.into_owned())
                .ok_or_else(|| format!("{h:?} is not a host"))
        };
        let given_host = self.host.as_deref().map(host).transpose()?;
        let purge = match (self.url, self.prefix, self.tag) {
            (Some(url), None, None) => {
                let uri: http::Uri = url
                    .parse()
                    .map_err(|e| format!("url {url:?} is not a URL: {e}"))?;
                let from_url = uri.authority().map(|a| host(a.as_str())).transpose()?;
                let path_and_query = uri
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .filter(|p| p.starts_with('/'))
                    .ok_or_else(|| format!("url {url:?} has no path (it starts with /)"))?;
                Purge::Url {
                    host: from_url.or(given_host),
                    path_and_query,
                }
            }
            (None, Some(prefix), None) if prefix.starts_with('/') => Purge::Prefix {
                host: given_host,
                prefix,
            },
            (None, Some(prefix), None) => {
                return Err(format!(
                    "prefix {prefix:?} is not a path (it starts with /)"
                ));
            }
            (None, None, Some(tag)) if !tag.is_empty() && self.host.is_none() => Purge::Tag(tag),
            (None, None, Some(_)) => {
                return Err("tag must not be empty, and takes no host".into());
            }
            _ => return Err("give exactly one of url, prefix or tag".into()),
        };
        Ok((purge, self.tenant))
    }
}

impl AdminState {
    /// Removes cached answers: an operator's purge reaches every tenant's
    /// (or the one it names), a tenant's only its own.
    pub(crate) async fn purge(
        &self,
        tenant: Option<&str>,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let (purge, named) = match read_json::<PurgeRequest>(req)
            .await
            .map(PurgeRequest::parse)
        {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return GatewayError::bad_request(e).into_response(None),
            Err(resp) => return resp,
        };
        let tenant = match (tenant, named) {
            (Some(own), Some(named)) if named != own => {
                return GatewayError::bad_request(format!(
                    "this purge reaches tenant {own:?} only, not {named:?}"
                ))
                .into_response(None);
            }
            (Some(own), _) => Some(own.to_owned()),
            (None, named) => named,
        };
        let purged = self.live.response_cache().purge(tenant.as_deref(), &purge);
        tracing::info!(
            ?purge,
            tenant = tenant.as_deref().unwrap_or("(all)"),
            purged,
            "cache purge"
        );
        json(StatusCode::OK, serde_json::json!({ "purged": purged }))
    }
}

/// A small JSON body, or the `400` that says what is wrong with it.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, Response<ProxyBody>> {
    const LIMIT: usize = 64 << 10;
    let data = body::collect(req.into_body(), LIMIT)
        .await
        .map_err(|e| body_error(e, LIMIT))?
        .data;
    serde_json::from_slice(&data).map_err(|e| {
        GatewayError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not the JSON this endpoint takes: {e}"),
        )
        .into_response(None)
    })
}

#[cfg(test)]
mod tests {
    use super::{activate_param, filter_target};

    #[test]
    fn filter_paths_name_one_filter_and_one_action() {
        assert_eq!(
            filter_target("/filters/jwt/module"),
            Some(("jwt", "module"))
        );
        assert_eq!(
            filter_target("/filters/jwt/canary"),
            Some(("jwt", "canary"))
        );
        for bad in [
            "/filters/module",
            "/filters//module",
            "/filters/a/b/module",
            "/filters/x",
            "/filters/x/",
        ] {
            assert_eq!(filter_target(bad), None, "{bad}");
        }
    }

    #[test]
    fn upload_query_is_checked() {
        assert_eq!(activate_param(None), Ok(true));
        assert_eq!(activate_param(Some("activate=false")), Ok(false));
        assert!(activate_param(Some("activate=no")).is_err());
        assert!(activate_param(Some("canary=10")).is_err());
    }
}
