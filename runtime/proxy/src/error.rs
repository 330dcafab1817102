//! The one error format for every response the gateway makes up itself.
//!
//! ```json
//! {"status":502,"code":"upstream_unavailable","message":"cluster \"search\" is unreachable","request_id":"..."}
//! ```
//! `code` is machine-readable and stable; `message` is for people. Later parts
//! (limits, rate limiting, circuit breaking) reuse [`GatewayError`].

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{self, ProxyBody};

/// An error the gateway answers itself.
#[derive(Debug, Clone)]
pub struct GatewayError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `route_not_found`.
    pub code: &'static str,
    /// Human-readable detail. Never names upstream addresses.
    pub message: Cow<'static, str>,
    /// More members of the body, where the error has them: `field` (the
    /// request field a transcoding failure is about), `grpc` (the gRPC
    /// status a transcoded call ended with).
    pub extra: Option<Box<serde_json::Map<String, serde_json::Value>>>,
}

impl GatewayError {
    /// A new error.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        GatewayError {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }

    /// With one more member in its body.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra
            .get_or_insert_default()
            .insert(key.to_owned(), value.into());
        self
    }

    /// 404: no route matches.
    pub fn route_not_found() -> Self {
        GatewayError::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            "no route matches this request",
        )
    }

    /// 400: the request cannot be handled as sent.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        GatewayError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// The response for this error, with the JSON body.
    pub fn into_response(self, request_id: Option<&str>) -> Response<ProxyBody> {
        let mut json = serde_json::json!({
            "status": self.status.as_u16(),
            "code": self.code,
            "message": self.message,
        });
        if let Some(id) = request_id {
            json["request_id"] = id.into();
        }
        if let (Some(extra), Some(obj)) = (self.extra, json.as_object_mut()) {
            obj.extend(*extra);
        }
        let bytes = Bytes::from(json.to_string());
        let mut resp = Response::new(body::full(bytes));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}
