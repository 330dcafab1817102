//! An HTTP/2 connection made with hyper's client (to the tonic server, or to
//! the gateway as a plain gRPC client), and the JSON ⇄ gRPC pipeline the
//! transcoding core makes without a gateway (`wasmgate-transcode`).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use wasmgate_transcode::status::{Code, GrpcStatus};
use wasmgate_transcode::{TranscodeError, Transcoder};

/// One HTTP/2 connection to the gRPC server.
pub struct Upstream {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
}

impl Upstream {
    pub async fn connect(addr: SocketAddr) -> Upstream {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        Upstream {
            sender,
            authority: addr.to_string(),
        }
    }

    /// Starts a gRPC call: `path` is `/package.Service/Method`, `body` the
    /// request frame(s).
    pub async fn call(&mut self, path: &str, body: Bytes) -> Response<Incoming> {
        let req = Request::post(format!("http://{}{path}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(body))
            .unwrap();
        self.sender.ready().await.unwrap();
        self.sender.send_request(req).await.unwrap()
    }
}

/// What the test gateway answered.
#[derive(Debug)]
pub struct JsonReply {
    pub status: StatusCode,
    /// The whole body (JSON, or a google.rpc.Status JSON on error).
    pub body: Vec<u8>,
    /// The non-empty pieces of body produced as upstream DATA frames came in.
    pub chunks: Vec<Vec<u8>>,
    pub grpc: Option<GrpcStatus>,
}

impl JsonReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

fn error_reply(e: TranscodeError) -> JsonReply {
    let grpc = GrpcStatus {
        code: if e.http_status() == StatusCode::NOT_FOUND {
            Code::NotFound
        } else {
            Code::InvalidArgument
        },
        message: e.to_string(),
    };
    JsonReply {
        status: e.http_status(),
        body: grpc.to_json(),
        chunks: Vec::new(),
        grpc: None,
    }
}

/// The gateway pipeline for one REST call.
pub async fn rest_call(
    t: &Transcoder,
    upstream: &mut Upstream,
    method: http::Method,
    path_and_query: &str,
    body: &[u8],
) -> JsonReply {
    let req = match t.request(&method, path_and_query, body) {
        Ok(req) => req,
        Err(e) => return error_reply(e),
    };
    let resp = upstream.call(req.path(), req.body()).await;
    assert_eq!(resp.status(), StatusCode::OK, "gRPC always answers 200");
    // A trailers-only response puts grpc-status in the headers.
    let mut grpc = GrpcStatus::from_headers(resp.headers());
    let mut transcoder = t.response(req.route);
    let mut chunks = Vec::new();
    let mut incoming = resp.into_body();
    while let Some(frame) = incoming.frame().await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            match transcoder.push(data) {
                Ok(out) if !out.is_empty() => chunks.push(out),
                Ok(_) => {}
                Err(e) => return error_reply(e),
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            grpc = GrpcStatus::from_headers(trailers);
        }
    }
    let grpc = grpc.unwrap_or(GrpcStatus {
        code: Code::Internal,
        message: "upstream sent no grpc-status".into(),
    });
    if grpc.code != Code::Ok && transcoder.messages() == 0 {
        return JsonReply {
            status: grpc.code.http_status(),
            body: grpc.to_json(),
            chunks,
            grpc: Some(grpc),
        };
    }
    match transcoder.finish() {
        Ok(tail) if !tail.is_empty() => chunks.push(tail),
        Ok(_) => {}
        Err(e) => return error_reply(e),
    }
    JsonReply {
        status: StatusCode::OK,
        body: chunks.concat(),
        chunks,
        grpc: Some(grpc),
    }
}
