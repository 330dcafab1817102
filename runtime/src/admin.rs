//! The admin listener: health, readiness and Prometheus metrics, plus the
//! management API (routes, clusters with health, filters with versions;
//! uploading a filter module; getting, replacing and reloading the config),
//! on its own address, loopback by default. `docs/admin-api.yaml` is its
//! OpenAPI description.
//!
//! A bearer token from the config protects everything except `/health`,
//! `/ready` and `/metrics` (and `/metrics` too with `protect_metrics`). The
//! gateway refuses to start an admin listener on a non-loopback address
//! without a token. Errors use the standard error format.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{self, ProxyBody};
use crate::config::AdminConfig;
use crate::error::GatewayError;
use crate::live::{Live, MAX_MODULE_SIZE, SwapError};
use crate::proxy::RouteTarget;

/// Largest config document accepted by `PUT /config`.
const MAX_CONFIG_SIZE: usize = 4 << 20;

/// What the admin endpoints read.
#[derive(Debug)]
pub struct AdminState {
    pub(crate) config: AdminConfig,
    pub(crate) live: Arc<Live>,
    /// False while starting and once draining: `/ready` answers 503.
    pub(crate) ready: AtomicBool,
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Compares without an early exit, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

impl AdminState {
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.config.token else {
            return true;
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
        let path = req.uri().path().to_owned();
        let change = match (req.method(), path.as_str()) {
            (&Method::PUT, "/config") | (&Method::POST, "/config/reload") => true,
            (&Method::PUT, p) => module_target(p).is_some(),
            _ => false,
        };
        if !change || !self.authorized(&req) {
            return self.read(&req);
        }
        match (req.method().clone(), path.as_str()) {
            (Method::POST, _) => {
                self.apply(crate::config::Config::load(self.live.file()))
                    .await
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
                self.apply(crate::config::Config::parse(
                    text,
                    "PUT /config",
                    &current.base,
                ))
                .await
            }
            _ => {
                let Some(name) = module_target(&path).map(str::to_owned) else {
                    return self.read(&req);
                };
                let expected = req
                    .headers()
                    .get("x-wasmgate-sha256")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let bytes = match body::collect(req.into_body(), MAX_MODULE_SIZE).await {
                    Ok(k) => k.data.to_vec(),
                    Err(e) => return body_error(e, MAX_MODULE_SIZE),
                };
                match self
                    .live
                    .upload_module(&name, bytes, expected.as_deref())
                    .await
                {
                    Ok(entry) => json(
                        StatusCode::OK,
                        serde_json::json!({
                            "filter": name,
                            "version": entry.version,
                            "sha256": entry.module.sha256(),
                            "status": "active",
                        }),
                    ),
                    Err(e) => swap_error(e),
                }
            }
        }
    }

    async fn apply(
        &self,
        parsed: Result<crate::config::Config, crate::config::ConfigErrors>,
    ) -> Response<ProxyBody> {
        let summary = parsed.as_ref().ok().map(|config| {
            serde_json::json!({
                "status": "applied",
                "routes": config.routes.len(),
                "clusters": config.clusters.len(),
                "filters": config.filters.len(),
            })
        });
        match self.live.apply_parsed(parsed).await {
            Ok(()) => json(StatusCode::OK, summary.unwrap_or_default()),
            Err(e) => config_errors(e),
        }
    }

    /// The read-only endpoints (and the refusals).
    fn read(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        let path = req.uri().path();
        let public = matches!(path, "/health" | "/ready")
            || (path == "/metrics" && !self.config.protect_metrics);
        if !public && !self.authorized(req) {
            let mut resp = GatewayError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the admin API needs `Authorization: Bearer <token>`",
            )
            .into_response(None);
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
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
                                RouteTarget::Split(s) => serde_json::json!({ "split": s.describe() }),
                                RouteTarget::Redirect(rd) => serde_json::json!({ "redirect": rd.status }),
                                RouteTarget::Respond(rs) => serde_json::json!({ "respond": rs.status }),
                            },
                            "filters": r.chain.iter().map(|f| {
                                let stats = f.pool.stats();
                                serde_json::json!({
                                    "name": &**f.pool.module().name(),
                                    "sha256": f.pool.module().sha256(),
                                    "idle_instances": stats.idle,
                                    "instances_created": stats.created,
                                    "instances_discarded": stats.discarded,
                                })
                            }).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                json(StatusCode::OK, serde_json::json!({ "routes": routes }))
            }
            "/clusters" => {
                let mut clusters: Vec<_> = proxy.clusters.values().collect();
                clusters.sort_by(|a, b| a.name().cmp(b.name()));
                let clusters: Vec<serde_json::Value> =
                    clusters.iter().map(|c| c.health_report()).collect();
                json(StatusCode::OK, serde_json::json!({ "clusters": clusters }))
            }
            "/filters" => json(StatusCode::OK, self.live.filters_report()),
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

/// Serves the admin API until `shutdown` becomes true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(state.handle(req).await) }
                });
                tokio::spawn(async move {
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
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
fn config_errors(e: crate::config::ConfigErrors) -> Response<ProxyBody> {
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
    };
    let mut value = serde_json::json!({
        "status": status.as_u16(),
        "code": code,
        "message": format!("{e}; the current version stays active"),
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

fn body_error(e: body::FirstFrameError, limit: usize) -> Response<ProxyBody> {
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

/// The filter name in `/filters/NAME/module`.
fn module_target(path: &str) -> Option<&str> {
    path.strip_prefix("/filters/")?
        .strip_suffix("/module")
        .filter(|name| !name.is_empty() && !name.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::module_target;

    #[test]
    fn module_paths_name_one_filter() {
        assert_eq!(module_target("/filters/jwt/module"), Some("jwt"));
        for bad in [
            "/filters/module",
            "/filters//module",
            "/filters/a/b/module",
            "/filters/x",
        ] {
            assert_eq!(module_target(bad), None, "{bad}");
        }
    }
}
