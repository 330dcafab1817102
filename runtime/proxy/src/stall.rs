//! Slow readers: a client connection whose writes stay blocked for
//! `limits.send_timeout` is ended.
//!
//! A client that stops reading a large answer fills its socket's buffers;
//! the gateway's writes then wait, the answer's body waits with them, and so
//! does the upstream connection behind it. Without a bound, such a client
//! holds a connection, a place under `max_connections` and an upstream
//! connection for as long as it likes (the slow-read attack). As with
//! nginx's `send_timeout`, the bound is on the time between two writes that
//! make progress, not on the whole answer: a slow but reading client is
//! never cut off.
//!
//! The timer exists only while a write is blocked: a connection that is
//! never stalled never makes one, and one that stalls reuses its own.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The error a stalled write ends the connection with.
#[derive(Debug)]
pub struct SendStalled(pub Duration);

impl std::fmt::Display for SendStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the client read nothing for {:?} (limits.send_timeout)",
            self.0
        )
    }
}

impl std::error::Error for SendStalled {}

/// Whether `e` (or what it wraps) is a [`SendStalled`].
pub fn is_send_stalled(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.downcast_ref::<SendStalled>().is_some() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && io.get_ref().is_some_and(|inner| inner.is::<SendStalled>())
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// A stream whose writes fail once one has waited `timeout` without
/// progress.
pub struct SendTimeout<S> {
    inner: S,
    timeout: Duration,
    /// Armed while a write is blocked.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<S> SendTimeout<S> {
    pub fn new(inner: S, timeout: Duration) -> SendTimeout<S> {
        SendTimeout {
            inner,
            timeout,
            timer: None,
            armed: false,
        }
    }

    /// Called when a write could not go on: arms the timer if it is not,
    /// and fails once it has run out.
    fn blocked(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.armed {
            let deadline = Instant::now() + self.timeout;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let timer = self.timer.as_mut().expect("armed above");
        if timer.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                SendStalled(self.timeout),
            ));
        }
        Ok(())
    }

    fn outcome<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => match self.blocked(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => {
                self.armed = false;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.outcome(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.outcome(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.outcome(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.outcome(r, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_blocked_past_the_timeout_fails_and_a_reading_peer_is_never_cut_off() {
        let timeout = Duration::from_secs(10);
        let (near, mut far) = tokio::io::duplex(1024);
        let mut near = SendTimeout::new(near, timeout);

        // The peer reads 1 KiB every 9 s: slow, but every write makes
        // progress within the timeout.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(9)).await;
                far.read_exact(&mut buf).await.unwrap();
            }
            far
        });
        for _ in 0..5 {
            near.write_all(&[7u8; 1024]).await.unwrap();
        }
        let far = reader.await.unwrap();

        // Now the peer reads nothing: the buffer is full, and the next write
        // fails once it has waited the timeout.
        let began = Instant::now();
        let e = near.write_all(&[7u8; 1024]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(is_send_stalled(&e), "{e}");
        assert_eq!(began.elapsed(), timeout);
        drop(far);
    }
}
