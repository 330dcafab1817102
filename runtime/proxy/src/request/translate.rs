//! Protocol translation around the call to the cluster (see
//! [`crate::translation`]): on a route with `transcode` or `grpc_web`, the
//! request the filters passed on is made a gRPC call here, just before it
//! goes to the cluster, and the answer is made JSON (or gRPC-Web) here, as
//! it comes back, before the cache and the response-side filters see it.
//! So filters see the client's JSON both ways, and the cache keys and
//! stores what the client sent and got.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode};
use wasmgate_transcode::Transcoder;
use wasmgate_transcode::grpc_web::{RequestBody, ResponseEncoder, UPSTREAM_CONTENT_TYPE, WebMode};
use wasmgate_transcode::status::{Code, GrpcStatus, status_details};

use super::upstream::ForwardBody;
use super::{RequestError, Session};
use crate::body::{self, ProxyBody};
use crate::proxy::Proxy;
use crate::route::Route;
use crate::translation::{self, JsonStream, Mode, WebResponse, WebTextRequest, response_error};
use crate::upstream::Cluster;

/// Headers of a gRPC answer that do not belong on the translated one.
const GRPC_HEADERS: [&str; 6] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "grpc-encoding",
    "grpc-accept-encoding",
    "trailer",
];

impl Proxy {
    /// The cluster's answer to a request on a translating route, or `None`
    /// when this request is not translated (the caller sends it as it is).
    pub(super) async fn translated(
        &self,
        s: &mut Session<'_>,
        route: &Route,
        target: Option<&Arc<Cluster>>,
        parts: Parts,
        body: ForwardBody,
    ) -> Result<Response<ProxyBody>, (Parts, ForwardBody)> {
        let Some(mode) = route
            .translation
            .as_deref()
            .and_then(|t| t.mode(&parts.headers))
        else {
            return Err((parts, body));
        };
        let answered = match mode {
            Mode::Transcode(t) => Box::pin(self.transcode(s, route, target, t, parts, body)).await,
            Mode::GrpcWeb(web) => Box::pin(self.grpc_web(s, route, target, web, parts, body)).await,
        };
        Ok(answered.unwrap_or_else(|e| self.error_response(s, e)))
    }

    /// JSON/HTTP → gRPC → JSON.
    async fn transcode(
        &self,
        s: &mut Session<'_>,
        route: &Route,
        target: Option<&Arc<Cluster>>,
        t: &Transcoder,
        mut parts: Parts,
        body: ForwardBody,
    ) -> Result<Response<ProxyBody>, RequestError> {
        let limits = &self.policy.limits;
        let limit = limits.max_buffered_body.min(limits.max_request_body);
        let data = match body {
            ForwardBody::Kept(k) => k.data,
            ForwardBody::Stream(b) => {
                Box::pin(body::collect(b, limit))
                    .await
                    .map_err(|e| RequestError::Body(e, limit))?
                    .data
            }
            ForwardBody::Made(b) => {
                Box::pin(body::collect(b, limit))
                    .await
                    .map_err(|e| RequestError::Body(e, limit))?
                    .data
            }
        };
        let target_uri = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let call = t
            .request(&parts.method, &target_uri, &data)
            .map_err(RequestError::Transcode)?;
        let method = call.route;
        let frame = call.body();
        parts.method = Method::POST;
        parts.uri = http::Uri::try_from(call.path()).map_err(|e| {
            RequestError::Transcode(response_error(format!("gRPC path {:?}: {e}", call.path())))
        })?;
        grpc_request_headers(&mut parts.headers);
        let resp = self
            .dispatch(
                s,
                route,
                target,
                parts,
                ForwardBody::Kept(body::Kept {
                    data: frame,
                    trailers: None,
                }),
            )
            .await?;
        let (mut head, mut rbody) = resp.into_parts();
        check_grpc_answer(head.status, &head.headers)?;
        let mut json = t.response(method);
        let pool = t.pool();
        // Trailers-only: the call ended before any message.
        if let Some(status) = GrpcStatus::from_headers(&head.headers) {
            check_status(status, &head.headers, pool)?;
            if !json.is_streaming() {
                return Err(RequestError::Transcode(response_error(
                    "the upstream answered OK without a message",
                )));
            }
            let out = json.finish().map_err(RequestError::Transcode)?;
            return Ok(json_response(head, Bytes::from(out), t, true));
        }
        if !json.is_streaming() {
            let limit = self.policy.limits.max_buffered_body;
            let kept = body::collect(rbody, limit)
                .await
                .map_err(|e| RequestError::UpstreamBody(e, limit))?;
            let trailers = kept.trailers.unwrap_or_default();
            let status = GrpcStatus::from_headers(&trailers).ok_or_else(|| {
                RequestError::Transcode(response_error(
                    "the upstream ended the call without a grpc-status",
                ))
            })?;
            check_status(status, &trailers, pool)?;
            let mut out = json.push(&kept.data).map_err(RequestError::Transcode)?;
            out.extend(json.finish().map_err(RequestError::Transcode)?);
            if json.messages() == 0 {
                return Err(RequestError::Transcode(response_error(
                    "the upstream answered OK without a message",
                )));
            }
            return Ok(json_response(head, Bytes::from(out), t, false));
        }
        // A server stream: its first frame decides the answer's status (a
        // failure before any message is answered like a unary one's);
        // after that, each message is passed on as it arrives.
        let first = body::peek(&mut rbody).await;
        let first_trailers = match first {
            None => {
                return Err(RequestError::Transcode(response_error(
                    "the upstream ended the stream without a grpc-status",
                )));
            }
            Some(Err(e)) => {
                return Err(RequestError::UpstreamBody(e, usize::MAX));
            }
            Some(Ok(f)) => f.trailers_ref().cloned(),
        };
        if let Some(trailers) = first_trailers {
            let status = GrpcStatus::from_headers(&trailers).ok_or_else(|| {
                RequestError::Transcode(response_error(
                    "the upstream ended the stream without a grpc-status",
                ))
            })?;
            check_status(status, &trailers, pool)?;
        }
        let format = t.options().response.stream;
        strip_grpc_headers(&mut head.headers);
        head.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        );
        head.headers
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let stream = JsonStream {
            transcoder: json,
            format,
            request_id: s.id().to_owned(),
            pool: pool.clone(),
        };
        let rbody = body::transform(rbody, Box::new(stream))
            .map_err(|e| RequestError::Transcode(response_error(e.to_string())))?;
        Ok(Response::from_parts(head, rbody))
    }

    /// gRPC-Web → gRPC → gRPC-Web.
    async fn grpc_web(
        &self,
        s: &mut Session<'_>,
        route: &Route,
        target: Option<&Arc<Cluster>>,
        web: WebMode,
        mut parts: Parts,
        body: ForwardBody,
    ) -> Result<Response<ProxyBody>, RequestError> {
        grpc_request_headers(&mut parts.headers);
        let limit = self.policy.limits.max_request_body;
        let body = match (web, body) {
            (WebMode::Binary, body) => body,
            (WebMode::Text, ForwardBody::Kept(k)) => {
                let mut decoder = RequestBody::new(WebMode::Text);
                let data = decoder.push(k.data).map_err(RequestError::Transcode)?;
                decoder.finish().map_err(RequestError::Transcode)?;
                ForwardBody::Kept(body::Kept {
                    data,
                    trailers: None,
                })
            }
            (WebMode::Text, ForwardBody::Stream(b)) => {
                let text = WebTextRequest(RequestBody::new(WebMode::Text));
                let decoded = body::transform(body::stream(b, limit), Box::new(text))
                    .map_err(|e| RequestError::Transcode(response_error(e.to_string())))?;
                ForwardBody::Made(decoded)
            }
            (WebMode::Text, ForwardBody::Made(b)) => {
                let text = WebTextRequest(RequestBody::new(WebMode::Text));
                let decoded = body::transform(b, Box::new(text))
                    .map_err(|e| RequestError::Transcode(response_error(e.to_string())))?;
                ForwardBody::Made(decoded)
            }
        };
        let resp = self.dispatch(s, route, target, parts, body).await?;
        let (mut head, rbody) = resp.into_parts();
        let is_grpc = head
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(translation::is_grpc);
        if !is_grpc {
            // Not a gRPC answer (an HTTP error from the server, say): the
            // client reads the HTTP status, as gRPC-Web clients do.
            return Ok(Response::from_parts(head, rbody));
        }
        head.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(web.response_content_type()),
        );
        head.headers.remove(header::CONTENT_LENGTH);
        head.headers.remove(header::TRAILER);
        let rbody = body::transform(rbody, Box::new(WebResponse(ResponseEncoder::new(web))))
            .map_err(|e| RequestError::Transcode(response_error(e.to_string())))?;
        Ok(Response::from_parts(head, rbody))
    }
}

/// The request headers of a gRPC call made from an HTTP or gRPC-Web one:
/// the client's own headers go along (as metadata), except those that
/// described its body.
fn grpc_request_headers(headers: &mut HeaderMap) {
    for h in [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::ACCEPT_ENCODING,
        header::EXPECT,
    ] {
        headers.remove(h);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(UPSTREAM_CONTENT_TYPE),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    // The answer is decoded here: ask for it uncompressed.
    headers.insert("grpc-accept-encoding", HeaderValue::from_static("identity"));
}

/// An answer that is not gRPC (another HTTP status, another content type)
/// cannot be transcoded.
fn check_grpc_answer(status: StatusCode, headers: &HeaderMap) -> Result<(), RequestError> {
    if status != StatusCode::OK {
        return Err(RequestError::Transcode(response_error(format!(
            "the upstream answered HTTP {}, not a gRPC call's 200",
            status.as_u16()
        ))));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !translation::is_grpc(content_type) {
        return Err(RequestError::Transcode(response_error(format!(
            "the upstream answered {content_type:?}, not application/grpc"
        ))));
    }
    Ok(())
}

/// A status other than OK, as the request's error.
fn check_status(
    status: GrpcStatus,
    headers: &HeaderMap,
    pool: &prost_reflect::DescriptorPool,
) -> Result<(), RequestError> {
    if status.code == Code::Ok {
        return Ok(());
    }
    let details = match status_details(headers, Some(pool)) {
        None => Vec::new(),
        Some(Ok(d)) => d,
        Some(Err(why)) => vec![serde_json::json!({ "error": why })],
    };
    Err(RequestError::Grpc { status, details })
}

fn strip_grpc_headers(headers: &mut HeaderMap) {
    for h in GRPC_HEADERS {
        headers.remove(h);
    }
    headers.remove(header::CONTENT_LENGTH);
}

/// A whole JSON answer, with the upstream's own headers (its metadata).
fn json_response(
    mut head: http::response::Parts,
    json: Bytes,
    t: &Transcoder,
    streaming: bool,
) -> Response<ProxyBody> {
    strip_grpc_headers(&mut head.headers);
    let content_type = if streaming {
        t.options().response.stream.content_type()
    } else {
        "application/json"
    };
    head.headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    head.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(json.len()));
    Response::from_parts(head, body::full(json))
}
