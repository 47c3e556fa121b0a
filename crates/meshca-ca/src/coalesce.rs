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
//! Writes are never held longer than that one yield. Once [`HOLD_LIMIT`] bytes are held, what is
//! held is written through before more is taken, so at most the limit plus one write is held.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::Connected;

/// Bytes held before writing through without waiting for a flush.
pub const HOLD_LIMIT: usize = 64 * 1024;

/// A buffer that grew past this in a burst is given back once drained; a unary response is ~2 KiB.
const KEEP_CAPACITY: usize = 16 * 1024;

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
        if self.held.capacity() > KEEP_CAPACITY {
            self.held = Vec::new();
        } else {
            self.held.clear();
        }
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

/// Requests see the same connection info as on a bare TLS stream (the client's certificate chain
/// and the peer address), so `Request::peer_certs` works unchanged.
impl Connected for Coalesce<tokio_rustls::server::TlsStream<TcpStream>> {
    type ConnectInfo = <tokio_rustls::server::TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use tokio::io::AsyncWriteExt;

    /// An in-memory connection that records each write it is given.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        /// Bytes taken per write at most, to exercise partial writes.
        max: Option<usize>,
        /// Writes to refuse with `Pending` (waking the task at once) before taking any.
        stalls: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.stalls > 0 {
                self.stalls -= 1;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
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

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_flush(c: &mut Coalesce<Recorder>, count: &Arc<Count>) -> Poll<io::Result<()>> {
        let waker = std::task::Waker::from(count.clone());
        Pin::new(c).poll_flush(&mut Context::from_waker(&waker))
    }

    /// What h2 does: one vectored write of several frames.
    fn write_vectored(c: &mut Coalesce<Recorder>, parts: &[&[u8]]) -> Poll<io::Result<usize>> {
        let slices: Vec<io::IoSlice<'_>> = parts.iter().map(|p| io::IoSlice::new(p)).collect();
        Pin::new(c).poll_write_vectored(&mut Context::from_waker(std::task::Waker::noop()), &slices)
    }

    #[test]
    fn two_flushes_in_a_row_make_one_write_and_the_first_wakes_the_task() {
        let count = Arc::new(Count::default());
        let mut c = Coalesce::new(Recorder::default());
        assert!(matches!(
            write_vectored(&mut c, &[b"headers", b"+data"]),
            Poll::Ready(Ok(12))
        ));
        assert!(
            poll_flush(&mut c, &count).is_pending(),
            "the first flush yields"
        );
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "and wakes its task");
        assert!(c.get_ref().writes.is_empty());
        assert!(write_vectored(&mut c, &[b"+trailers"]).is_ready());
        assert!(poll_flush(&mut c, &count).is_ready());
        assert_eq!(c.get_ref().writes, vec![b"headers+data+trailers".to_vec()]);
        // Nothing held: no yield. The next batch yields again.
        assert!(poll_flush(&mut c, &count).is_ready());
        assert!(write_vectored(&mut c, &[b"next"]).is_ready());
        assert!(poll_flush(&mut c, &count).is_pending());
        assert!(poll_flush(&mut c, &count).is_ready());
        assert_eq!(c.get_ref().writes.len(), 2);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn partial_and_refused_inner_writes_lose_and_reorder_nothing() {
        let mut c = Coalesce::new(Recorder {
            max: Some(3),
            stalls: 2,
            ..Default::default()
        });
        c.write_all(b"0123456789").await.unwrap();
        c.write_all(b"abc").await.unwrap();
        c.flush().await.unwrap();
        assert_eq!(c.get_ref().writes.concat(), b"0123456789abc");
        assert_eq!(c.get_ref().stalls, 0, "the stalled writes were retried");
    }

    #[tokio::test]
    async fn a_full_buffer_is_written_through_before_more_is_taken() {
        let mut c = Coalesce::new(Recorder {
            stalls: 1,
            ..Default::default()
        });
        let chunk = vec![7u8; HOLD_LIMIT];
        c.write_all(&chunk).await.unwrap();
        assert!(c.get_ref().writes.is_empty(), "up to the limit is held");
        // The next write must first get the held bytes out; the inner stream stalls once.
        let p = write_vectored(&mut c, &[b"more"]);
        assert!(
            p.is_pending(),
            "backpressure while the inner stream is not ready"
        );
        c.write_all(b"more").await.unwrap();
        assert_eq!(c.get_ref().writes.concat().len(), HOLD_LIMIT);
        assert!(
            c.held.capacity() <= KEEP_CAPACITY,
            "a burst's buffer is given back"
        );
        c.shutdown().await.unwrap();
        assert_eq!(c.get_ref().writes.concat().len(), HOLD_LIMIT + 4);
    }
}
