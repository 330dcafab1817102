//! The body type that flows through the proxy in both directions: a streamed
//! hyper body passed through untouched, or bytes the gateway or a filter made.

use bytes::Bytes;
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;

/// A body that is either streamed from a peer or made by the gateway.
pub type ProxyBody = Either<Incoming, Either<Full<Bytes>, Empty<Bytes>>>;

/// Bytes the gateway (or a filter) made.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Either::Right(Either::Left(Full::new(bytes.into())))
}

/// No body.
pub fn empty() -> ProxyBody {
    Either::Right(Either::Right(Empty::new()))
}

/// A peer's body, streamed through untouched.
pub fn stream(body: Incoming) -> ProxyBody {
    Either::Left(body)
}
