//! The operations endpoint of meshca's long-running commands (`meshca serve`, `meshca trust run`):
//! Prometheus' `/metrics` and whatever other pages a command serves, over HTTP/1 on hyper.
//!
//! What a command serves is a [`Site`]: a path in, a [`Page`] or nothing (404) out. The server
//! owns the hostile parts, within [`Limits`]:
//! - a client that sends its request head slowly, or not at all, is cut off after
//!   [`Limits::header_timeout`] (hyper's header read timeout, which also covers an idle
//!   keep-alive connection), and no connection lives past [`Limits::connection_lifetime`], so a
//!   client that never reads its answer cannot hold a connection either;
//! - at most [`Limits::max_connections`] connections are served at once; the next one waits in
//!   the kernel's backlog;
//! - an `accept` that fails for want of resources (descriptors exhausted: `EMFILE`, `ENFILE`;
//!   memory) is retried after a pause that doubles from 5 ms to 1 s, as Go's `net/http` does,
//!   instead of at once: the pending connection keeps the listener readable, and retrying at once
//!   would spin a core until a descriptor is freed.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The content type of Prometheus' text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The largest request head read: ample for a scrape or a browser's request.
const MAX_HEAD: usize = 16 * 1024;

/// One answer: its content type and body.
#[derive(Clone, Debug)]
pub struct Page {
    content_type: &'static str,
    body: Bytes,
}

impl Page {
    /// A page of `content_type`.
    pub fn new(content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Page {
            content_type,
            body: body.into(),
        }
    }

    /// Metrics in Prometheus' text exposition format.
    pub fn metrics(text: impl Into<Bytes>) -> Self {
        Page::new(PROMETHEUS_TEXT, text)
    }
}

/// What a server serves: the page at a path (without its query), or `None` for 404.
///
/// A closure is a site, so that adding a route is adding a `match` arm:
/// `move |path: &str| match path { "/metrics" => Some(Page::metrics(m.render())), _ => None }`.
pub trait Site: Send + Sync + 'static {
    /// The page at `path`. Called for `GET` and `HEAD` only.
    fn page(&self, path: &str) -> Option<Page>;
}

impl<F> Site for F
where
    F: Fn(&str) -> Option<Page> + Send + Sync + 'static,
{
    fn page(&self, path: &str) -> Option<Page> {
        self(path)
    }
}

/// What a server allows its clients.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a client may take to send a request head, counted from when the server starts
    /// waiting for it (a new connection, or the end of the previous answer).
    pub header_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long one connection may stay open, keep-alive included; then it is shut down
    /// gracefully (an answer in progress gets [`Limits::header_timeout`] more).
    pub connection_lifetime: Duration,
}

impl Default for Limits {
    /// 5 s for a request head, 64 connections, 60 s per connection: a scraper every 15 s reuses
    /// its connection a few times.
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(5),
            max_connections: 64,
            connection_lifetime: Duration::from_secs(60),
        }
    }
}

/// Serves `site` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, site: Arc<dyn Site>, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut backoff = AcceptBackoff::default();
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return; // The semaphore is never closed.
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff.succeeded();
                stream
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                let pause = backoff.failed();
                if pause == AcceptBackoff::FIRST {
                    tracing::warn!(error = %e, "accept failed; retrying with a backoff of up to 1s");
                }
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let site = Arc::clone(&site);
        tokio::spawn(async move {
            connection(TokioIo::new(stream), site, limits).await;
            drop(slot);
        });
    }
}

/// Serves `site` on `listener` from a thread of its own with its own small runtime, for a
/// program that has no tokio runtime to spare. The thread lives as long as the process.
pub fn spawn(
    listener: std::net::TcpListener,
    site: Arc<dyn Site>,
    limits: Limits,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("meshca-http".into())
        .spawn(move || {
            rt.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => serve(l, site, limits).await,
                    Err(e) => tracing::error!(error = %e, "the HTTP listener cannot be served"),
                }
            })
        })?;
    Ok(())
}

/// Errors of one connection, not of the listener: the next `accept` may well succeed.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// One connection, within its limits.
async fn connection<I>(io: I, site: Arc<dyn Site>, limits: Limits)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD);
    let service = service_fn(move |req: Request<Incoming>| {
        let answer = answer(site.as_ref(), &req);
        async move { Ok::<_, Infallible>(answer) }
    });
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        // A client that goes away or times out is no concern of the server's.
        _ = conn.as_mut() => {}
        _ = tokio::time::sleep(limits.connection_lifetime) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.header_timeout, conn).await;
        }
    }
}

/// The answer to one request.
fn answer(site: &dyn Site, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    if req.method() != Method::GET && req.method() != Method::HEAD {
        *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match site.page(req.uri().path()) {
        Some(page) => {
            *resp.body_mut() = Full::new(page.body);
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(page.content_type));
        }
        None => {
            *resp.status_mut() = StatusCode::NOT_FOUND;
            *resp.body_mut() = Full::new(Bytes::from_static(b"not found\n"));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
        }
    }
    resp
}

/// The pause after a failed `accept`: 5 ms, doubling to 1 s, back to nothing after a success.
#[derive(Debug, Default)]
struct AcceptBackoff {
    last: Option<Duration>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    fn failed(&mut self) -> Duration {
        let next = match self.last {
            None => Self::FIRST,
            Some(d) => (d * 2).min(Self::MAX),
        };
        self.last = Some(next);
        next
    }

    fn succeeded(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_backoff_doubles_from_5ms_to_1s_and_resets_on_success() {
        let mut b = AcceptBackoff::default();
        let pauses: Vec<u128> = (0..10).map(|_| b.failed().as_millis()).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(5));
    }

    #[test]
    fn descriptor_exhaustion_is_not_a_connection_error() {
        // EMFILE and ENFILE have no ErrorKind of their own: they are the listener's trouble.
        assert!(!is_connection_error(&io::Error::from_raw_os_error(24)));
        assert!(!is_connection_error(&io::Error::from_raw_os_error(23)));
        assert!(is_connection_error(&io::Error::from_raw_os_error(103)));
    }
}
