//! Protocol translation, a stage of a route (issue 21): what a route with
//! `transcode` or `grpc_web` does to the requests it sends its cluster and
//! the responses it gets back. The stage itself is
//! `request/translate.rs`, around the call to the cluster; this module
//! holds the route's settings and the body transforms it streams through.
//!
//! - **JSON/HTTP → gRPC** ([`Transcoder`]): the request (buffered, at most
//!   `limits.max_buffered_body`) becomes one gRPC message after the
//!   `google.api.http` rules; the answer becomes JSON: a unary one read
//!   whole (its status is in its trailers), a server stream message by
//!   message as it arrives ([`JsonStream`]).
//! - **gRPC-Web → gRPC** ([`WebMode`]): the body passes through (base64
//!   decoded for `grpc-web-text`), and the answer's trailers become the
//!   last frame of its body ([`WebResponse`]).
//!
//! Requests that are already gRPC (`application/grpc`) pass through.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, header};
use wasmgate_transcode::grpc_web::{RequestBody, ResponseEncoder, WebMode};
use wasmgate_transcode::response::{ResponseTranscoder, StreamFormat};
use wasmgate_transcode::status::{Code, GrpcStatus};
use wasmgate_transcode::{TranscodeError, Transcoder};

use crate::body::{BoxError, Transform};

/// A route's translation settings.
#[derive(Debug)]
pub struct Translation {
    /// JSON/HTTP → gRPC, with the route's options, when it transcodes.
    pub transcoder: Option<Transcoder>,
    /// The `[descriptors.NAME]` it transcodes with.
    pub descriptor: Option<Arc<str>>,
    /// gRPC-Web requests are translated.
    pub grpc_web: bool,
}

/// What the stage does with one request.
pub(crate) enum Mode<'t> {
    Transcode(&'t Transcoder),
    GrpcWeb(WebMode),
}

impl Translation {
    /// What to do with a request with these headers: gRPC-Web when the
    /// route takes it and the content type says so; nothing for a gRPC
    /// request; else transcoding, when the route does it.
    pub(crate) fn mode(&self, headers: &HeaderMap) -> Option<Mode<'_>> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if let Some(ct) = content_type {
            if self.grpc_web
                && let Some(web) = WebMode::from_content_type(ct)
            {
                return Some(Mode::GrpcWeb(web));
            }
            if is_grpc(ct) {
                return None;
            }
        }
        self.transcoder.as_ref().map(Mode::Transcode)
    }
}

/// `application/grpc`, `application/grpc+proto`, ... (not gRPC-Web).
pub(crate) fn is_grpc(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/grpc" || essence.starts_with("application/grpc+")
}

/// The gRPC status of a finished call, as the `grpc` member of the
/// gateway's standard error format.
pub(crate) fn grpc_json(status: &GrpcStatus, details: &[serde_json::Value]) -> serde_json::Value {
    serde_json::json!({
        "code": status.code.as_i32(),
        "status": status.code.name(),
        "message": status.message,
        "details": details,
    })
}

/// Turns a server stream's gRPC frames into JSON as they arrive; its
/// trailers end it: an OK status closes the JSON, another is written into
/// the stream where the format has room (a line, an SSE `error` event) or
/// cuts the response off (an array, which has none).
pub(crate) struct JsonStream {
    pub(crate) transcoder: ResponseTranscoder,
    pub(crate) format: StreamFormat,
    pub(crate) request_id: String,
    pub(crate) pool: prost_reflect::DescriptorPool,
}

impl Transform for JsonStream {
    fn data(&mut self, chunk: Bytes) -> Result<Bytes, BoxError> {
        Ok(Bytes::from(self.transcoder.push(&chunk)?))
    }

    fn end(&mut self, trailers: Option<HeaderMap>) -> Result<Bytes, BoxError> {
        let status = trailers.as_ref().and_then(GrpcStatus::from_headers);
        let failed = match status {
            Some(s) if s.code == Code::Ok => None,
            Some(s) => Some(s),
            None => Some(GrpcStatus {
                code: Code::Internal,
                message: "the upstream ended the stream without a grpc-status".into(),
            }),
        };
        let Some(failed) = failed else {
            return Ok(Bytes::from(self.transcoder.finish()?));
        };
        let details = trailers
            .as_ref()
            .and_then(|t| wasmgate_transcode::status::status_details(t, Some(&self.pool)))
            .and_then(Result::ok)
            .unwrap_or_default();
        let error = serde_json::json!({
            "status": failed.code.http_status().as_u16(),
            "code": crate::request::GRPC_ERROR_CODE,
            "message": failed.message,
            "request_id": self.request_id,
            "grpc": grpc_json(&failed, &details),
        });
        let json = serde_json::to_vec(&error).expect("a JSON value serializes");
        match self.format.error_record(&json) {
            Some(record) => Ok(Bytes::from(record)),
            None => Err(format!(
                "the stream failed after its first message ({} {}): {}",
                failed.code.as_i32(),
                failed.code.name(),
                failed.message
            )
            .into()),
        }
    }
}

/// A gRPC answer as gRPC-Web: its messages pass through (base64 in text
/// mode), its trailers become the body's last frame.
pub(crate) struct WebResponse(pub(crate) ResponseEncoder);

impl Transform for WebResponse {
    fn data(&mut self, chunk: Bytes) -> Result<Bytes, BoxError> {
        Ok(self.0.data(&chunk))
    }

    fn end(&mut self, trailers: Option<HeaderMap>) -> Result<Bytes, BoxError> {
        Ok(trailers.map_or_else(Bytes::new, |t| self.0.trailers(&t)))
    }
}

/// A `grpc-web-text` request body, base64-decoded into gRPC frames as it
/// streams.
pub(crate) struct WebTextRequest(pub(crate) RequestBody);

impl Transform for WebTextRequest {
    fn data(&mut self, chunk: Bytes) -> Result<Bytes, BoxError> {
        Ok(self.0.push(chunk)?)
    }

    fn end(&mut self, _trailers: Option<HeaderMap>) -> Result<Bytes, BoxError> {
        self.0.finish()?;
        Ok(Bytes::new())
    }
}

/// Why a transcoded call failed: the request could not be transcoded, or
/// the upstream's answer was not usable gRPC.
pub(crate) fn response_error(message: impl Into<String>) -> TranscodeError {
    TranscodeError::Response(message.into())
}
