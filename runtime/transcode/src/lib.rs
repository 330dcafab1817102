//! REST/JSON ↔ gRPC transcoding, after Envoy's `grpc_json_transcoder`, and
//! gRPC-Web framing (issue 21): pure functions over a descriptor set, with
//! no I/O, so the request path (`wasmgate-proxy`'s translation stage),
//! tests and fuzz targets share them.
//!
//! - [`descriptor`]: load a FileDescriptorSet, read `google.api.http` rules.
//! - [`template`]: path templates (`/v1/{name=shelves/*/books/*}:publish`).
//! - [`router`]: (HTTP method, path) → gRPC method, most specific first.
//! - [`request`]: JSON body + path + query → request message.
//! - [`response`]: response frames → JSON (unary and server streams as an
//!   array, NDJSON or SSE).
//! - [`frame`]: gRPC length-prefixed framing.
//! - [`status`]: grpc-status → HTTP status, grpc-message decoding, error
//!   details.
//! - [`grpc_web`]: gRPC-Web (binary and text) framing helpers.
//! - [`Transcoder`]: the facade tying them together.

mod binding;
pub mod descriptor;
pub mod error;
pub mod frame;
pub mod grpc_web;
mod percent;
pub mod request;
pub mod response;
pub mod router;
pub mod status;
pub mod template;
mod transcoder;

pub use error::{ConfigError, TranscodeError};
pub use transcoder::{GrpcRequest, Transcoder, TranscoderOptions};

#[cfg(test)]
mod tests;
