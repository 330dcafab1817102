//! The PROXY protocol (HAProxy's v1 text and v2 binary headers) on
//! listeners that enable it: a load balancer in front of the gateway sends
//! the client's address before the first byte of TLS or HTTP. Parsing is
//! the `ppp` crate's; this module reads just enough bytes for it and hands
//! the rest of the stream on untouched.
//!
//! A listener that enables it requires it: a connection without a valid
//! header is closed. `LOCAL` (v2) and `UNKNOWN` (v1) headers, which load
//! balancers send for their own health checks, keep the socket's peer
//! address.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use ppp::{HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The v2 maximum: 16 bytes of prefix and a 16-bit length.
const MAX_HEADER: usize = 16 + 65535;

/// A stream with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: Vec<u8>,
    at: usize,
    inner: T,
}

impl<T> Prefixed<T> {
    /// `inner` with nothing put back.
    pub fn plain(inner: T) -> Self {
        Prefixed {
            prefix: Vec::new(),
            at: 0,
            inner,
        }
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Reads a PROXY header from `stream`. Returns the client address it names
/// (or `peer` for `LOCAL`/`UNKNOWN`) and the stream positioned after it.
pub async fn accept<T: AsyncRead + Unpin>(
    mut stream: T,
    peer: SocketAddr,
) -> io::Result<(SocketAddr, Prefixed<T>)> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a complete PROXY protocol header",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let parsed = HeaderResult::parse(&buf);
        if parsed.is_incomplete() {
            // ppp calls a v1 line with missing fields incomplete even when
            // its CRLF has arrived; no more bytes can complete it.
            if buf.starts_with(b"PROXY") && buf.windows(2).any(|w| w == b"\r\n") {
                return Err(bad("invalid PROXY protocol header: missing fields"));
            }
            if buf.len() >= MAX_HEADER {
                return Err(bad("PROXY protocol header too long"));
            }
            continue;
        }
        let (len, client) = match parsed {
            HeaderResult::V1(Ok(h)) => (h.header.len(), v1_source(&h.addresses)),
            HeaderResult::V2(Ok(h)) => (h.len(), v2_source(&h)),
            HeaderResult::V1(Err(e)) => {
                return Err(bad(format!("invalid PROXY protocol header: {e}")));
            }
            HeaderResult::V2(Err(e)) => {
                return Err(bad(format!("invalid PROXY protocol v2 header: {e}")));
            }
        };
        buf.drain(..len);
        return Ok((
            client.unwrap_or(peer),
            Prefixed {
                prefix: buf,
                at: 0,
                inner: stream,
            },
        ));
    }
}

fn bad(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn v1_source(a: &ppp::v1::Addresses) -> Option<SocketAddr> {
    match a {
        ppp::v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
        ppp::v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
        ppp::v1::Addresses::Unknown => None,
    }
}

fn v2_source(h: &ppp::v2::Header<'_>) -> Option<SocketAddr> {
    if h.command == ppp::v2::Command::Local {
        return None;
    }
    match &h.addresses {
        ppp::v2::Addresses::IPv4(a) => Some((a.source_address, a.source_port).into()),
        ppp::v2::Addresses::IPv6(a) => Some((a.source_address, a.source_port).into()),
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> io::Result<(SocketAddr, Vec<u8>)> {
        let peer: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let (addr, mut rest) = accept(bytes, peer).await?;
        let mut tail = Vec::new();
        rest.read_to_end(&mut tail).await?;
        Ok((addr, tail))
    }

    #[tokio::test]
    async fn v1_and_v2_headers_name_the_client_and_leave_the_rest() {
        let (a, rest) = parse(b"PROXY TCP4 192.0.2.7 198.51.100.1 5555 443\r\nGET / HTTP/1.1\r\n")
            .await
            .unwrap();
        assert_eq!(a, "192.0.2.7:5555".parse().unwrap());
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");

        let (a, _) = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\n")
            .await
            .unwrap();
        assert_eq!(a, "[2001:db8::1]:4000".parse().unwrap());

        let (a, rest) = parse(b"PROXY UNKNOWN\r\nX").await.unwrap();
        assert_eq!(
            a,
            "10.0.0.1:1000".parse().unwrap(),
            "UNKNOWN keeps the peer"
        );
        assert_eq!(rest, b"X");

        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 192, 0, 2, 9, 198, 51, 100, 1, 0x1f, 0x90, 1, 187,
        ]);
        v2.extend_from_slice(b"rest");
        let (a, rest) = parse(&v2).await.unwrap();
        assert_eq!(a, "192.0.2.9:8080".parse().unwrap());
        assert_eq!(rest, b"rest");
    }

    #[tokio::test]
    async fn a_missing_or_broken_header_is_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"PROXY TCP4 not-an-ip 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7",
            b"PROXY TCP4 nope\r\nGET / HTTP/1.1\r\n",
            b"",
        ] {
            assert!(
                parse(bad).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
