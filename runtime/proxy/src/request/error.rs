//! Why a request failed: one typed error for the whole request path. Each
//! phase returns it; [`RequestError::into_response`] is the one place it
//! becomes a response in the standard format ([`GatewayError`]), and
//! [`RequestError::log`] the one place it is logged.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::body::{FirstFrameError, ProxyBody};
use crate::error::GatewayError;
use crate::overload::Pressure;
use crate::upstream::UpstreamFailure;
use wasmgate_engine::FilterFailure;

/// Why a request got an answer the gateway made up itself.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The request's tenant used up one of its quotas: its own requests
    /// alone are refused (429 for its request rate, else 503).
    #[error("{0}")]
    TenantQuota(wasmgate_engine::QuotaRefusal),
    /// The overload guard is shedding load.
    #[error("the gateway is shedding load ({} pressure); retry shortly", .0.as_str())]
    Overloaded(Pressure),
    /// The request cannot be handled as sent (its path, its framing, a
    /// redirect it asks for).
    #[error("{0}")]
    BadRequest(String),
    /// The declared body is larger than `limits.max_request_body`.
    #[error("the request body of {declared} bytes exceeds the limit of {limit} bytes")]
    DeclaredBodyTooLarge {
        /// Its `Content-Length`.
        declared: u64,
        /// The limit.
        limit: usize,
    },
    /// The request body could not be read.
    #[error("{}", body_message(.0, *.1))]
    Body(FirstFrameError, usize),
    /// The connection's TLS name belongs to another certificate than the
    /// request's host.
    #[error("this connection was set up for {sni:?}; open a new one for {host:?}")]
    Misdirected {
        /// The name the connection was set up for.
        sni: String,
        /// The host asked for.
        host: String,
    },
    /// No route matches.
    #[error("no route matches this request")]
    RouteNotFound,
    /// A filter failed (and its policy is to fail the request).
    #[error("filter {filter:?} failed")]
    Filter {
        /// The filter's name.
        filter: Arc<str>,
        /// How it failed.
        #[source]
        failure: FilterFailure,
    },
    /// The cluster could not answer.
    #[error("cluster {cluster:?}: {failure}")]
    Upstream {
        /// The cluster.
        cluster: Arc<str>,
        /// How it failed (its text may name an endpoint: logs only).
        #[source]
        failure: UpstreamFailure,
    },
    /// The response body a filter asked for could not be read whole.
    #[error("{}", upstream_body_message(.0, *.1))]
    UpstreamBody(FirstFrameError, usize),
    /// The route's `timeout` passed before the cluster answered.
    #[error("cluster {cluster:?} did not answer within the route's timeout of {timeout:?}")]
    RouteTimeout {
        /// The cluster.
        cluster: Arc<str>,
        /// The route's timeout.
        timeout: Duration,
    },
    /// `limits.request_timeout` passed before the response head was ready.
    #[error("no response within the request timeout of {0:?}")]
    RequestTimeout(Duration),
    /// A route with nothing to do (a bug if it ever shows).
    #[error("no target")]
    NoTarget,
    /// A transcoded request could not be made into a gRPC call (a bad
    /// JSON body, a field of the wrong type, no method for the path), or
    /// the upstream's answer was not usable gRPC.
    #[error("{0}")]
    Transcode(wasmgate_transcode::TranscodeError),
    /// A transcoded call ended with a gRPC status other than OK.
    #[error("{}", .status.message)]
    Grpc {
        /// The status.
        status: wasmgate_transcode::status::GrpcStatus,
        /// Its details (`grpc-status-details-bin`), as JSON.
        details: Vec<serde_json::Value>,
    },
}

/// The `code` of a gRPC status other than OK, answered in the standard
/// format (its own code and name are in the `grpc` member).
pub const GRPC_ERROR_CODE: &str = "upstream_grpc_status";

fn body_message(e: &FirstFrameError, limit: usize) -> String {
    match e {
        FirstFrameError::TooLarge => format!("the request body exceeds the limit of {limit} bytes"),
        FirstFrameError::Invalid(detail) => format!("invalid request body: {detail}"),
    }
}

fn upstream_body_message(e: &FirstFrameError, limit: usize) -> String {
    match e {
        FirstFrameError::TooLarge => {
            format!("the response body exceeds the buffering limit of {limit} bytes")
        }
        FirstFrameError::Invalid(d) => format!("the response body could not be read: {d}"),
    }
}

impl RequestError {
    /// The error as the client sees it: status, stable code and message.
    pub fn gateway_error(&self) -> GatewayError {
        let (status, code) = match self {
            RequestError::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            RequestError::TenantQuota(r) => (
                StatusCode::from_u16(r.quota.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "tenant_quota",
            ),
            RequestError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            RequestError::DeclaredBodyTooLarge { .. }
            | RequestError::Body(FirstFrameError::TooLarge, _) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "request_body_too_large")
            }
            RequestError::Body(FirstFrameError::Invalid(_), _) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            RequestError::Misdirected { .. } => {
                (StatusCode::MISDIRECTED_REQUEST, "misdirected_request")
            }
            RequestError::RouteNotFound => return GatewayError::route_not_found(),
            RequestError::Filter { failure, .. } => (filter_status(failure), failure.code()),
            RequestError::Upstream { cluster, failure } => {
                return failure.to_gateway_error(cluster);
            }
            RequestError::UpstreamBody(FirstFrameError::TooLarge, _) => {
                (StatusCode::BAD_GATEWAY, "upstream_body_too_large")
            }
            RequestError::UpstreamBody(FirstFrameError::Invalid(_), _) => {
                (StatusCode::BAD_GATEWAY, "upstream_error")
            }
            RequestError::RouteTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            RequestError::RequestTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "request_timeout"),
            RequestError::NoTarget => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            RequestError::Transcode(e) => {
                use wasmgate_transcode::TranscodeError as T;
                let code = match e {
                    T::NotFound { .. } => "route_not_found",
                    T::MethodNotAllowed { .. } => "method_not_allowed",
                    T::Field { .. } => "invalid_field",
                    T::Body(_) => "invalid_json",
                    T::UnknownQueryParameter(_) => "unknown_query_parameter",
                    T::Frame(_) | T::GrpcWebText(_) => "bad_request",
                    T::Response(_) => "upstream_error",
                };
                let err = GatewayError::new(e.http_status(), code, self.to_string());
                return match e {
                    T::Field { path, .. } => err.with("field", path.as_str()),
                    T::UnknownQueryParameter(name) => err.with("field", name.as_str()),
                    _ => err,
                };
            }
            RequestError::Grpc { status, details } => {
                return GatewayError::new(
                    status.code.http_status(),
                    GRPC_ERROR_CODE,
                    status.message.clone(),
                )
                .with("grpc", crate::translation::grpc_json(status, details));
            }
        };
        GatewayError::new(status, code, self.to_string())
    }

    /// Whether the same request may succeed if the client sends it again
    /// later (the gateway, a filter's pool or the cluster was busy, slow or
    /// down), as opposed to a request that will fail the same way.
    pub fn retryable(&self) -> bool {
        match self {
            RequestError::Overloaded(_)
            | RequestError::TenantQuota(_)
            | RequestError::RouteTimeout { .. }
            | RequestError::RequestTimeout(_) => true,
            RequestError::Filter { failure, .. } => matches!(
                failure,
                FilterFailure::PoolExhausted { .. } | FilterFailure::Quarantined(_)
            ),
            RequestError::Upstream { failure, .. } => failure.retryable(),
            _ => false,
        }
    }

    /// Whether the connection is closed after this answer: a client that
    /// sent what a proxy must refuse, or whose body cannot be read, gets no
    /// second try on it, and shedding load frees the connection too.
    fn closes_connection(&self) -> bool {
        matches!(
            self,
            RequestError::Overloaded(_)
                | RequestError::BadRequest(_)
                | RequestError::DeclaredBodyTooLarge { .. }
                | RequestError::Body(..)
        )
    }

    /// Logs what the client is not told: which filter, on which route, failed
    /// how; which endpoint failed. Refusals of the client's own request are
    /// not logged (the access log has them).
    pub(crate) fn log(&self, route: Option<&str>, request_id: &str) {
        let route = route.unwrap_or_default();
        match self {
            RequestError::Filter { filter, failure } => tracing::error!(
                route,
                filter = &**filter,
                code = failure.code(),
                request_id,
                "filter {filter:?} on route {route:?} {failure}"
            ),
            RequestError::Upstream { cluster, failure } => tracing::warn!(
                route,
                cluster = &**cluster,
                request_id,
                "upstream: {failure}"
            ),
            RequestError::UpstreamBody(..)
            | RequestError::Transcode(wasmgate_transcode::TranscodeError::Response(_)) => {
                tracing::warn!(route, request_id, "{self}");
            }
            _ => {}
        }
    }

    /// The response: the standard error body with the request id, and the
    /// headers the error calls for (`Retry-After`, `Connection: close`).
    pub fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        let mut resp = self.gateway_error().into_response(Some(request_id));
        let h = resp.headers_mut();
        match &self {
            RequestError::Overloaded(_) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            RequestError::TenantQuota(r) => {
                if let Some(secs) = r.retry_after_secs() {
                    h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
            }
            _ => {}
        }
        if self.closes_connection() {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// The status a filter failure answers with: 503 when the filter could not
/// run (no instance, a busy pool, quarantine), 504 past its wall-clock
/// budget, 500 when it ran and failed.
fn filter_status(failure: &FilterFailure) -> StatusCode {
    match failure {
        FilterFailure::Instantiate(_)
        | FilterFailure::PoolExhausted { .. }
        | FilterFailure::Quarantined(_) => StatusCode::SERVICE_UNAVAILABLE,
        FilterFailure::WallClock(_) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
