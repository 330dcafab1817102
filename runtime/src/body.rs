//! The body type that flows through the proxy in both directions: a streamed
//! hyper body passed through untouched, or bytes the gateway or a filter made.

use bytes::Bytes;
use http_body_util::{Either, Empty, Full, Limited};
use hyper::body::Incoming;

/// A body that is either streamed from a peer (with a size limit) or made by
/// the gateway.
pub type ProxyBody = Either<Limited<Incoming>, Either<Full<Bytes>, Empty<Bytes>>>;

/// Bytes the gateway (or a filter) made.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Either::Right(Either::Left(Full::new(bytes.into())))
}

/// No body.
pub fn empty() -> ProxyBody {
    Either::Right(Either::Right(Empty::new()))
}

/// A peer's body, streamed through untouched; past `limit` bytes the stream
/// fails (the exchange is aborted rather than truncated silently).
pub fn stream(body: Incoming, limit: usize) -> ProxyBody {
    Either::Left(Limited::new(body, limit))
}
