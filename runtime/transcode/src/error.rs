//! The two error kinds: [`ConfigError`] is found once, when descriptors and
//! HTTP rules are loaded; [`TranscodeError`] is per request and carries the
//! HTTP status to answer with.

use http::StatusCode;

/// A problem with the descriptor set or its `google.api.http` rules.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid FileDescriptorSet: {0}")]
    Descriptor(String),
    #[error("method {method}: {message}")]
    Rule { method: String, message: String },
    #[error("path template {template:?}: {message}")]
    Template { template: String, message: String },
    #[error("no service {service:?} in the descriptor set (it has: {known})")]
    UnknownService { service: String, known: String },
    #[error("{http_method} {template} is bound to both {first} and {second}")]
    Conflict {
        http_method: String,
        template: String,
        first: String,
        second: String,
    },
}

/// A request or response that cannot be transcoded.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    #[error("method {method} is not allowed for {path}")]
    MethodNotAllowed { method: String, path: String },
    /// A value that cannot be bound to a request field; `path` is the field
    /// path as the client wrote it (`shelf.id`, `book.publishTime`).
    #[error("field {path:?}: {message}")]
    Field { path: String, message: String },
    #[error("invalid JSON body: {0}")]
    Body(String),
    #[error("unknown query parameter {0:?}")]
    UnknownQueryParameter(String),
    #[error("invalid gRPC frame: {0}")]
    Frame(String),
    #[error("invalid gRPC-Web text body: {0}")]
    GrpcWebText(String),
    /// The upstream's answer could not be decoded or rendered as JSON.
    #[error("invalid upstream response: {0}")]
    Response(String),
}

impl TranscodeError {
    pub(crate) fn field(path: impl Into<String>, message: impl Into<String>) -> Self {
        TranscodeError::Field {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The HTTP status a gateway answers this error with.
    pub fn http_status(&self) -> StatusCode {
        match self {
            TranscodeError::NotFound { .. } => StatusCode::NOT_FOUND,
            TranscodeError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            TranscodeError::Field { .. }
            | TranscodeError::Body(_)
            | TranscodeError::UnknownQueryParameter(_)
            | TranscodeError::Frame(_)
            | TranscodeError::GrpcWebText(_) => StatusCode::BAD_REQUEST,
            TranscodeError::Response(_) => StatusCode::BAD_GATEWAY,
        }
    }
}
