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
