//! The body type that flows through the proxy in both directions: a streamed
//! hyper body passed through untouched, or bytes the gateway or a filter made.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Either, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// A body that is either streamed from a peer (with a size limit) or made by
/// the gateway.
pub type ProxyBody = Either<Streamed, Made>;

/// A body held in memory: bytes, then optional trailers.
#[derive(Debug, Default)]
pub struct Made {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Made {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// A peer's body with a size limit, possibly with its first frame already
/// read (see [`stream_checked`]).
#[derive(Debug)]
pub struct Streamed {
    first: Option<Frame<Bytes>>,
    inner: Limited<Incoming>,
    /// Keeps an upstream request counted while its response body streams
    /// (and its connection lent to it, handed back once the body ended).
    hold: Option<crate::upstream::RequestHold>,
    /// A copy of the body on its way into the response cache.
    tee: Option<Box<Tee>>,
    /// What the body is turned into on its way (protocol translation).
    transform: Option<Box<Transforming>>,
}

/// Turns a peer's body into another as it streams, frame by frame: gRPC
/// frames into JSON, gRPC-Web text into gRPC frames, trailers into a
/// gRPC-Web trailer frame. What it returns is passed on at once (nothing
/// is held back beyond what the transform itself keeps); an error ends the
/// body with that error.
pub trait Transform: Send + Sync {
    /// A chunk of data; the bytes to pass on (possibly none).
    fn data(&mut self, chunk: Bytes) -> Result<Bytes, BoxError>;
    /// The end of the body, with its trailers if it had any; the last
    /// bytes to pass on. Nothing is passed on after them (trailers are the
    /// transform's to turn into bytes or drop).
    fn end(&mut self, trailers: Option<HeaderMap>) -> Result<Bytes, BoxError>;
}

/// An error a body ends with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Transforming {
    transform: Box<dyn Transform>,
    /// `end` was called: nothing more comes.
    ended: bool,
}

impl std::fmt::Debug for Transforming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transforming")
            .field("ended", &self.ended)
            .finish()
    }
}

/// Makes a streamed body pass through `transform` from now on (a body the
/// gateway made is transformed at once). Frames already read are
/// transformed too.
pub fn transform(
    body: ProxyBody,
    mut transform: Box<dyn Transform>,
) -> Result<ProxyBody, BoxError> {
    match body {
        Either::Left(mut s) => {
            s.transform = Some(Box::new(Transforming {
                transform,
                ended: false,
            }));
            Ok(Either::Left(s))
        }
        Either::Right(made) => {
            let mut out = match made.data {
                Some(d) => transform.data(d)?.to_vec(),
                None => Vec::new(),
            };
            out.extend_from_slice(&transform.end(made.trailers)?);
            Ok(full(out))
        }
    }
}

/// Reads the next frame of a streamed body and keeps it to be read again
/// (a body the gateway made is not read): what a stage that must see how
/// a body starts before it answers uses. `None` at the end of the body.
pub async fn peek(body: &mut ProxyBody) -> Option<Result<&Frame<Bytes>, FirstFrameError>> {
    let Either::Left(s) = body else {
        return None;
    };
    if s.first.is_none() {
        match s.inner.frame().await? {
            Ok(f) => s.first = Some(f),
            Err(e) => return Some(Err(classify(e))),
        }
    }
    s.first.as_ref().map(Ok)
}

/// What is told the copy a [`Tee`] made: the whole body, or `None` when
/// it could not be kept (past its limit, trailers, an error, or the body
/// dropped before its end).
pub type TeeDone = Box<dyn FnOnce(Option<Bytes>) + Send + Sync>;

/// Copies a streamed body as it passes, up to a limit, and hands the copy
/// over once the body has ended.
pub struct Tee {
    buf: bytes::BytesMut,
    limit: usize,
    done: Option<TeeDone>,
}

impl std::fmt::Debug for Tee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tee")
            .field("kept", &self.buf.len())
            .field("limit", &self.limit)
            .finish()
    }
}

impl Tee {
    /// Adds a frame; false once the copy cannot be kept.
    fn frame(&mut self, frame: &Frame<Bytes>) -> bool {
        match frame.data_ref() {
            Some(d) if self.buf.len() + d.len() <= self.limit => {
                self.buf.extend_from_slice(d);
                true
            }
            _ => false,
        }
    }

    fn finish(mut self) {
        if let Some(done) = self.done.take() {
            done(Some(std::mem::take(&mut self.buf).freeze()));
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(None);
        }
    }
}

/// Tees `body` (an upstream's) into `done` when it ends, if it is no larger
/// than `limit`; a body the gateway made is handed over at once. False when
/// it cannot be kept.
pub fn tee(body: &mut ProxyBody, limit: usize, done: TeeDone) -> bool {
    match body {
        Either::Left(s) => {
            s.tee = Some(Box::new(Tee {
                buf: bytes::BytesMut::new(),
                limit,
                done: Some(done),
            }));
            true
        }
        Either::Right(made) => match (&made.data, &made.trailers) {
            (data, None) if data.as_ref().is_none_or(|d| d.len() <= limit) => {
                done(Some(data.clone().unwrap_or_default()));
                true
            }
            _ => false,
        },
    }
}

/// The body length a response declares (`Content-Length`), if any.
pub fn declared_len<B>(resp: &http::Response<B>) -> Option<u64> {
    resp.headers()
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

impl Streamed {
    /// The next frame from the peer (the one kept by a peek first).
    fn poll_peer(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match self.first.take() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => Pin::new(&mut self.inner).poll_frame(cx),
        };
        if let Some(hold) = self.hold.as_mut() {
            let ended = match &polled {
                Poll::Ready(None) => true,
                Poll::Ready(Some(Ok(_))) => self.first.is_none() && self.inner.is_end_stream(),
                _ => false,
            };
            if ended {
                // Read to its end: its connection can serve another request.
                hold.complete();
            }
        }
        polled
    }

    /// The next frame to pass on: the peer's, or what the transform made
    /// of it.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(t) = self.transform.as_ref() else {
                return self.poll_peer(cx);
            };
            if t.ended {
                return Poll::Ready(None);
            }
            let polled = std::task::ready!(self.poll_peer(cx));
            let t = self.transform.as_mut().expect("checked above");
            let out = match polled {
                Some(Err(e)) => {
                    t.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => t.transform.data(data),
                    Err(frame) => {
                        t.ended = true;
                        t.transform.end(frame.into_trailers().ok())
                    }
                },
                None => {
                    t.ended = true;
                    t.transform.end(None)
                }
            };
            match out {
                Ok(bytes) if bytes.is_empty() => continue,
                Ok(bytes) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
                Err(e) => {
                    t.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    /// Whether the peer's body, or the transform, has nothing more.
    fn at_end(&self) -> bool {
        match &self.transform {
            Some(t) => t.ended,
            None => self.first.is_none() && self.inner.is_end_stream(),
        }
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = self.poll_next(cx);
        if self.tee.is_some() {
            let end = self.at_end();
            match &polled {
                Poll::Pending => {}
                Poll::Ready(Some(Ok(frame))) => {
                    let kept = self.tee.as_mut().is_some_and(|t| t.frame(frame));
                    if !kept {
                        self.tee = None;
                    } else if end && let Some(tee) = self.tee.take() {
                        tee.finish();
                    }
                }
                Poll::Ready(Some(Err(_))) => self.tee = None,
                Poll::Ready(None) => {
                    if let Some(tee) = self.tee.take() {
                        tee.finish();
                    }
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.at_end()
    }

    fn size_hint(&self) -> SizeHint {
        if self.transform.is_some() {
            // Its length is the transform's to decide.
            return SizeHint::default();
        }
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
    let bytes = bytes.into();
    Either::Right(Made {
        data: (!bytes.is_empty()).then_some(bytes),
        trailers: None,
    })
}

/// No body.
pub fn empty() -> ProxyBody {
    Either::Right(Made::default())
}

/// A body read whole, kept to be sent (again): its bytes and trailers.
#[derive(Debug, Clone, Default)]
pub struct Kept {
    /// The bytes.
    pub data: Bytes,
    /// The trailers, if any.
    pub trailers: Option<HeaderMap>,
}

impl Kept {
    /// A body to send.
    pub fn to_body(&self) -> ProxyBody {
        Either::Right(Made {
            data: (!self.data.is_empty()).then(|| self.data.clone()),
            trailers: self.trailers.clone(),
        })
    }
}

/// A peer's body, streamed through untouched; past `limit` bytes the stream
/// fails (the exchange is aborted rather than truncated silently).
pub fn stream(body: Incoming, limit: usize) -> ProxyBody {
    Either::Left(Streamed {
        first: None,
        inner: Limited::new(body, limit),
        hold: None,
        tee: None,
        transform: None,
    })
}

/// An upstream's response body, streamed, keeping `hold` until it is done.
pub fn stream_holding(body: Incoming, mut hold: crate::upstream::RequestHold) -> ProxyBody {
    if hyper::body::Body::is_end_stream(&body) {
        // No body at all (HEAD, 204, 304): the exchange is over already.
        hold.complete();
    }
    Either::Left(Streamed {
        first: None,
        inner: Limited::new(body, usize::MAX),
        hold: Some(hold),
        tee: None,
        transform: None,
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

/// Why reading a limited body failed.
fn classify(e: Box<dyn std::error::Error + Send + Sync>) -> FirstFrameError {
    if e.downcast_ref::<LengthLimitError>().is_some() {
        FirstFrameError::TooLarge
    } else {
        FirstFrameError::Invalid(e.to_string())
    }
}

/// Reads a whole body of at most `limit` bytes, trailers included: a
/// client's request body (for filters, or for a retry to send again) or an
/// upstream's response body (for filters).
pub async fn collect<B>(body: B, limit: usize) -> Result<Kept, FirstFrameError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let c = Limited::new(body, limit)
        .collect()
        .await
        .map_err(classify)?;
    let trailers = c.trailers().cloned();
    Ok(Kept {
        data: c.to_bytes(),
        trailers,
    })
}

/// Like [`stream`], but reads the first frame before returning, so that a
/// chunked body whose framing is broken from the start (an invalid chunk
/// size) is refused before anything is forwarded.
pub async fn stream_checked(body: Incoming, limit: usize) -> Result<ProxyBody, FirstFrameError> {
    let mut inner = Limited::new(body, limit);
    let first = inner.frame().await.transpose().map_err(classify)?;
    Ok(Either::Left(Streamed {
        first,
        inner,
        hold: None,
        tee: None,
        transform: None,
    }))
}
