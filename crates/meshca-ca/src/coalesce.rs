//! One write per response: a connection wrapper that holds what HTTP/2 writes until the next
//! scheduling round, so that a unary gRPC response goes out as one TLS record and one syscall.
//!
//! hyper hands a response to HTTP/2 in two steps: the headers and the message, then (after the
//! connection task has granted the stream send capacity) the trailers that carry `grpc-status`.
//! The connection task flushes after each step, so without this wrapper every response costs two
//! `writev` calls, two TLS records, and two wake-ups of the client. Here the first flush of a
//! batch yields once instead of writing; by the time the connection task runs again the stream
//! task has queued the trailers, and the second flush writes everything.
//!
//! Writes are never held longer than that one yield, and never beyond [`HOLD_LIMIT`] bytes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::Connected;

/// Bytes held before writing through without waiting for a flush.
pub const HOLD_LIMIT: usize = 64 * 1024;

/// A connection whose writes are gathered until a flush, and whose first flush of a batch yields
/// once to let other tasks add to it.
#[derive(Debug)]
pub struct Coalesce<IO> {
    inner: IO,
    held: Vec<u8>,
    /// How much of `held` the inner connection has taken.
    sent: usize,
    /// Whether this batch has already yielded once.
    yielded: bool,
}

impl<IO> Coalesce<IO> {
    /// Wraps a connection.
    pub fn new(inner: IO) -> Self {
        Self {
            inner,
            held: Vec::new(),
            sent: 0,
            yielded: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &IO {
        &self.inner
    }
}

impl<IO: AsyncWrite + Unpin> Coalesce<IO> {
    /// Hands everything held to the inner connection.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Coalesce<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Coalesce<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.held.len() >= HOLD_LIMIT {
            std::task::ready!(self.poll_drain(cx))?;
        }
        self.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.held.len() >= HOLD_LIMIT {
            std::task::ready!(self.poll_drain(cx))?;
        }
        let mut n = 0;
        for b in bufs {
            self.held.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held.is_empty() {
            self.yielded = false;
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        if !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        std::task::ready!(self.poll_drain(cx))?;
        self.yielded = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a request learns of its connection: the TLS client's certificate chain, if it sent one.
#[derive(Debug, Clone, Default)]
pub struct PeerCerts(pub Option<Arc<Vec<CertificateDer<'static>>>>);

impl Connected for Coalesce<tokio_rustls::server::TlsStream<TcpStream>> {
    type ConnectInfo = PeerCerts;

    fn connect_info(&self) -> PeerCerts {
        let (_, session) = self.inner.get_ref();
        PeerCerts(
            session
                .peer_certificates()
                .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// An in-memory connection that records each write it is given.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        /// Bytes taken per write at most, to exercise partial writes.
        max: Option<usize>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = self.max.map_or(buf.len(), |m| m.min(buf.len()));
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn poll_flush(c: &mut Coalesce<Recorder>) -> Poll<io::Result<()>> {
        let waker = std::task::Waker::noop();
        Pin::new(c).poll_flush(&mut Context::from_waker(waker))
    }

    #[tokio::test]
    async fn two_flushes_in_a_row_make_one_write() {
        let mut c = Coalesce::new(Recorder::default());
        c.write_all(b"headers+data").await.unwrap();
        assert!(poll_flush(&mut c).is_pending(), "the first flush yields");
        assert!(c.get_ref().writes.is_empty());
        c.write_all(b"+trailers").await.unwrap();
        assert!(poll_flush(&mut c).is_ready());
        assert_eq!(c.get_ref().writes, vec![b"headers+data+trailers".to_vec()]);
        // The next batch yields again.
        c.write_all(b"next").await.unwrap();
        assert!(poll_flush(&mut c).is_pending());
        assert!(poll_flush(&mut c).is_ready());
        assert_eq!(c.get_ref().writes.len(), 2);
    }

    #[tokio::test]
    async fn flush_completes_after_one_yield_and_nothing_is_lost() {
        let mut c = Coalesce::new(Recorder {
            max: Some(3),
            ..Default::default()
        });
        c.write_all(b"0123456789").await.unwrap();
        c.flush().await.unwrap();
        assert_eq!(c.get_ref().writes.concat(), b"0123456789");
        assert!(poll_flush(&mut c).is_ready(), "nothing held: no yield");
    }

    #[tokio::test]
    async fn large_writes_go_through_without_a_flush() {
        let mut c = Coalesce::new(Recorder::default());
        let chunk = vec![7u8; HOLD_LIMIT];
        c.write_all(&chunk).await.unwrap();
        assert!(c.get_ref().writes.is_empty());
        c.write_all(b"more").await.unwrap();
        assert_eq!(c.get_ref().writes.concat().len(), HOLD_LIMIT);
        c.shutdown().await.unwrap();
        assert_eq!(c.get_ref().writes.concat().len(), HOLD_LIMIT + 4);
    }
}
