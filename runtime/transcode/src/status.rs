//! gRPC status codes and their HTTP mapping (Google API design guide,
//! <https://cloud.google.com/apis/design/errors>).

use http::{HeaderMap, StatusCode};

use crate::percent;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// Unknown numbers are `UNKNOWN`, as the gRPC spec says.
    pub fn from_i32(n: i32) -> Code {
        Code::ALL
            .get(n as usize)
            .copied()
            .filter(|_| n >= 0)
            .unwrap_or(Code::Unknown)
    }

    /// From a `grpc-status` header value.
    pub fn from_header(value: &[u8]) -> Code {
        std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .map_or(Code::Unknown, Code::from_i32)
    }

    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// The canonical name, e.g. `NOT_FOUND`.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            Code::Ok => StatusCode::OK,
            // 499 "Client Closed Request" has no constant in `http`.
            Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status"),
            Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                StatusCode::BAD_REQUEST
            }
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A call's outcome, read from trailers (or trailers-only headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStatus {
    pub code: Code,
    /// `grpc-message`, percent-decoded.
    pub message: String,
}

impl GrpcStatus {
    /// `None` when there is no `grpc-status` header.
    pub fn from_headers(headers: &HeaderMap) -> Option<GrpcStatus> {
        let code = Code::from_header(headers.get("grpc-status")?.as_bytes());
        let message = headers
            .get("grpc-message")
            .map(|v| decode_grpc_message(v.as_bytes()))
            .unwrap_or_default();
        Some(GrpcStatus { code, message })
    }

    /// A `google.rpc.Status`-shaped JSON body, as Envoy's transcoder answers
    /// errors: `{"code":5,"message":"..."}`.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "code": self.code.as_i32(),
            "message": self.message,
        }))
        .expect("a JSON value serializes")
    }
}

/// `google.rpc.Status`, as a server sends it in `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<RpcAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// The error details a server attached (`grpc-status-details-bin`, a
/// base64 `google.rpc.Status`), as proto3 JSON `Any` values: each detail
/// whose type the descriptor pool knows is rendered field by field next to
/// its `@type`; any other keeps its bytes, base64, under `value`. `None`
/// when there is no such header; a header that does not decode is
/// reported as such rather than dropped silently.
pub fn status_details(
    headers: &HeaderMap,
    pool: Option<&prost_reflect::DescriptorPool>,
) -> Option<Result<Vec<serde_json::Value>, String>> {
    use base64::Engine as _;
    use prost::Message as _;
    let raw = headers.get("grpc-status-details-bin")?;
    // `-bin` metadata is base64 with or without padding.
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let decoded = engine
        .decode(raw.as_bytes())
        .map_err(|e| format!("grpc-status-details-bin is not base64: {e}"))
        .and_then(|bytes| {
            RpcStatus::decode(bytes.as_slice())
                .map_err(|e| format!("grpc-status-details-bin is not a google.rpc.Status: {e}"))
        });
    Some(decoded.map(|status| {
        status
            .details
            .iter()
            .map(|any| detail_json(any, pool, &engine))
            .collect()
    }))
}

fn detail_json(
    any: &RpcAny,
    pool: Option<&prost_reflect::DescriptorPool>,
    engine: &impl base64::Engine,
) -> serde_json::Value {
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    let known = pool
        .and_then(|p| p.get_message_by_name(type_name))
        .and_then(|desc| prost_reflect::DynamicMessage::decode(desc, any.value.as_slice()).ok())
        .and_then(|msg| serde_json::to_value(&msg).ok());
    match known {
        Some(serde_json::Value::Object(mut fields)) => {
            fields.insert("@type".into(), any.type_url.clone().into());
            // `@type` first, as proto3 JSON writes it.
            let mut out = serde_json::Map::new();
            out.insert("@type".into(), any.type_url.clone().into());
            out.extend(fields.into_iter().filter(|(k, _)| k != "@type"));
            serde_json::Value::Object(out)
        }
        _ => serde_json::json!({
            "@type": any.type_url,
            "value": engine.encode(&any.value),
        }),
    }
}

/// Decodes a `grpc-message` value (percent-encoded UTF-8; invalid UTF-8 is
/// replaced rather than refused).
pub fn decode_grpc_message(raw: &[u8]) -> String {
    percent::decode_lossy(&String::from_utf8_lossy(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_every_code() {
        let expected = [
            (Code::Ok, 200),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unauthenticated, 401),
        ];
        for (i, (code, http)) in expected.into_iter().enumerate() {
            assert_eq!(Code::from_i32(i as i32), code);
            assert_eq!(code.as_i32(), i as i32);
            assert_eq!(code.http_status().as_u16(), http, "{}", code.name());
        }
        assert_eq!(Code::from_i32(17), Code::Unknown);
        assert_eq!(Code::from_i32(-1), Code::Unknown);
        assert_eq!(Code::from_header(b"5"), Code::NotFound);
        assert_eq!(Code::from_header(b"x"), Code::Unknown);
    }

    #[test]
    fn reads_error_details() {
        use base64::Engine as _;
        use prost::Message as _;
        let mut h = HeaderMap::new();
        assert!(status_details(&h, None).is_none());
        let status = RpcStatus {
            code: 5,
            message: "gone".into(),
            details: vec![RpcAny {
                type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
                value: vec![10, 3, b'w', b'h', b'y'],
            }],
        };
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(status.encode_to_vec());
        h.insert("grpc-status-details-bin", b64.parse().unwrap());
        let details = status_details(&h, None).unwrap().unwrap();
        assert_eq!(
            details,
            [serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "value": "CgN3aHk=",
            })]
        );
        h.insert("grpc-status-details-bin", "!!".parse().unwrap());
        assert!(status_details(&h, None).unwrap().is_err());
    }

    #[test]
    fn reads_status_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(GrpcStatus::from_headers(&h), None);
        h.insert("grpc-status", "5".parse().unwrap());
        h.insert(
            "grpc-message",
            "book%20%22x%22%20not%20found%20%E2%80%94%20%C3%A9"
                .parse()
                .unwrap(),
        );
        let s = GrpcStatus::from_headers(&h).unwrap();
        assert_eq!(s.code, Code::NotFound);
        assert_eq!(s.message, "book \"x\" not found — é");
        assert_eq!(
            String::from_utf8(s.to_json()).unwrap(),
            r#"{"code":5,"message":"book \"x\" not found — é"}"#
        );
        assert_eq!(decode_grpc_message(b"50%25 done"), "50% done");
    }
}
