//! The body type that flows through the proxy in both directions: a streamed
//! hyper body passed through untouched, or bytes the gateway or a filter made.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Empty, Full, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// A body that is either streamed from a peer (with a size limit) or made by
/// the gateway.
pub type ProxyBody = Either<Streamed, Either<Full<Bytes>, Empty<Bytes>>>;

/// A peer's body with a size limit, possibly with its first frame already
/// read (see [`stream_checked`]).
#[derive(Debug)]
pub struct Streamed {
    first: Option<Frame<Bytes>>,
    inner: Limited<Incoming>,
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(frame) = self.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(len) = self
            .first
            .as_ref()
            .and_then(|f| f.data_ref())
            .map(|d| d.len() as u64)
        {
            hint.set_lower(hint.lower().saturating_add(len));
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper.saturating_add(len));
            }
        }
        hint
    }
}

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
    Either::Left(Streamed {
        first: None,
        inner: Limited::new(body, limit),
    })
}

/// Why a body's first frame could not be read.
#[derive(Debug)]
pub enum FirstFrameError {
    /// The first chunk alone is past the size limit.
    TooLarge,
    /// The framing is invalid (e.g. a chunk size that is not hex) or the
    /// peer went away.
    Invalid(String),
}

/// Like [`stream`], but reads the first frame before returning, so that a
/// chunked body whose framing is broken from the start (an invalid chunk
/// size) is refused before anything is forwarded.
pub async fn stream_checked(body: Incoming, limit: usize) -> Result<ProxyBody, FirstFrameError> {
    let mut inner = Limited::new(body, limit);
    let first = match inner.frame().await {
        None => None,
        Some(Ok(frame)) => Some(frame),
        Some(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(FirstFrameError::TooLarge);
        }
        Some(Err(e)) => return Err(FirstFrameError::Invalid(e.to_string())),
    };
    Ok(Either::Left(Streamed { first, inner }))
}
