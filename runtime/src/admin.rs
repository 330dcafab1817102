//! The admin listener: health, readiness and Prometheus metrics, plus the
//! management endpoints (today: the route list), on its own address,
//! loopback by default.
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
use crate::proxy::Proxy;
use crate::proxy::RouteTarget;

/// What the admin endpoints read.
#[derive(Debug)]
pub struct AdminState {
    pub(crate) config: AdminConfig,
    pub(crate) proxy: Arc<Proxy>,
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

    /// Answers one admin request.
    pub fn handle(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
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
                let mut resp = Response::new(body::full(Bytes::from(self.proxy.metrics_text())));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                resp
            }
            "/routes" => {
                let routes: Vec<serde_json::Value> = self
                    .proxy
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
                let mut clusters: Vec<_> = self.proxy.clusters.values().collect();
                clusters.sort_by(|a, b| a.name().cmp(b.name()));
                let clusters: Vec<serde_json::Value> =
                    clusters.iter().map(|c| c.health_report()).collect();
                json(StatusCode::OK, serde_json::json!({ "clusters": clusters }))
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
                    let resp = state.handle(&req);
                    async move { Ok::<_, Infallible>(resp) }
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
