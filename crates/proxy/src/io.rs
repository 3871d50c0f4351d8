//! The client-side byte stream: replays the bytes read while sniffing the protocol and
//! records activity for the idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// When the connection last moved bytes, and how many requests wait for an upstream.
///
/// Every read and write records its time, so the time is one atomic store (microseconds
/// since the tracker was made), not a lock.
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    last_micros: AtomicU64,
    in_flight: AtomicUsize,
    /// A request head arrived on the connection.
    requested: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// A tracker that counts now as the last activity.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            last_micros: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            requested: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        let micros = u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_micros.store(micros, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_micros(self.last_micros.load(Ordering::Relaxed))
    }

    /// Records that a request head arrived.
    pub fn request_arrived(&self) {
        self.requested.store(true, Ordering::Relaxed);
    }

    /// Resolves at `deadline` if no request head arrived by then; never otherwise.
    pub async fn no_request_by(&self, deadline: Instant) {
        tokio::time::sleep_until(deadline).await;
        if self.requested.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    }

    /// Marks a request as waiting for its upstream until the guard is dropped; a connection
    /// with such a request is not idle even if no byte moves.
    pub fn request(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves once no byte moved for `timeout` and no request waits for its upstream.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let deadline = self.last() + timeout;
            if Instant::now() >= deadline {
                if self.in_flight.load(Ordering::Relaxed) == 0 {
                    return;
                }
                self.touch();
                continue;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// See [`Activity::request`].
#[derive(Debug)]
pub struct InFlight(std::sync::Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A stream with bytes already read from it put back in front: the sniffed prefix of a
/// client connection, or the HTTP/2 preface of an h2c upgrade followed by the replayed
/// upgrade request.
#[derive(Debug)]
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    /// Wraps `inner`, whose reads start with `prefix`.
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
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

/// The accepted client stream, with the sniffed prefix put back in front, recording its
/// activity for the idle timeout.
#[derive(Debug)]
pub struct ClientIo {
    inner: Rewind<TcpStream>,
    activity: std::sync::Arc<Activity>,
}

impl ClientIo {
    /// Wraps a stream whose first bytes (`prefix`) were already read.
    pub fn new(prefix: Bytes, inner: TcpStream, activity: std::sync::Arc<Activity>) -> Self {
        Self {
            inner: Rewind::new(prefix, inner),
            activity,
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
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

/// What the first bytes of a connection say about its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// An HTTP/1.x request line or the HTTP/2 connection preface.
    Http,
    /// Not HTTP.
    NotHttp,
    /// Too few bytes to tell.
    NeedMore,
}

/// Longest method token accepted while sniffing; real methods are far shorter.
const MAX_METHOD_LEN: usize = 24;

/// Classifies the first bytes of a connection: an HTTP/1 request starts with a method token
/// followed by a space, HTTP/2 with prior knowledge with `PRI * HTTP/2.0`.
pub fn sniff(data: &[u8]) -> Sniff {
    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let common = data.len().min(H2_PREFACE.len());
    if data[..common] == H2_PREFACE[..common] {
        return if common == H2_PREFACE.len() {
            Sniff::Http
        } else {
            Sniff::NeedMore
        };
    }
    for (index, byte) in data.iter().enumerate() {
        if *byte == b' ' {
            return if index == 0 {
                Sniff::NotHttp
            } else {
                Sniff::Http
            };
        }
        // RFC 9110 tchar; methods in practice are upper-case letters.
        let tchar = byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(byte);
        if !tchar || index >= MAX_METHOD_LEN {
            return Sniff::NotHttp;
        }
    }
    Sniff::NeedMore
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_http_and_rejects_the_rest() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::Http);
        assert_eq!(sniff(b"POST"), Sniff::NeedMore);
        assert_eq!(sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Sniff::Http);
        assert_eq!(sniff(b"PRI * HTTP/2"), Sniff::NeedMore);
        assert_eq!(sniff(b"\x16\x03\x01\x02\x00"), Sniff::NotHttp);
        assert_eq!(sniff(b"SSH-2.0-OpenSSH\r\n"), Sniff::NotHttp);
        assert_eq!(sniff(b" GET"), Sniff::NotHttp);
        assert_eq!(sniff(b""), Sniff::NeedMore);
        assert_eq!(sniff(&[b'A'; 40]), Sniff::NotHttp);
    }
}
