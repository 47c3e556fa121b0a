//! A scripted fake Kubernetes API server on loopback, shared by the test crates: it answers
//! every connection the same way and records each request it read, so a test can tell which
//! API server was asked what.

// Each test crate that includes this module uses a different part of it.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What the fake API server does once it has read a request.
#[derive(Clone)]
pub enum Answer {
    /// Answers with this status line and body.
    Respond(&'static str, String),
    /// Closes the connection without a word.
    Close,
    /// Says nothing, keeping the connection open until the client leaves.
    Silent,
}

/// One request as the fake API server read it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub request_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// The token the request asks to review.
    pub fn reviewed_token(&self) -> String {
        self.json()["spec"]["token"].as_str().unwrap().to_owned()
    }
}

pub struct FakeApi {
    pub url: String,
    seen: Arc<Mutex<Vec<Recorded>>>,
    finished: mpsc::UnboundedReceiver<Recorded>,
    task: JoinHandle<()>,
}

impl FakeApi {
    /// Every request read so far, in order. A request is recorded before it is answered.
    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until the next connection is over (answered, closed, or left by the client).
    pub async fn next_request(&mut self) -> Recorded {
        self.finished
            .recv()
            .await
            .expect("the fake API server stopped")
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A fake API server answering every connection with `answer`, one connection at a time; with
/// `tls`, it serves that configuration (a failed handshake is not a request).
pub async fn fake_api(answer: Answer, tls: Option<rustls::ServerConfig>) -> FakeApi {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let acceptor = tls.map(|cfg| tokio_rustls::TlsAcceptor::from(Arc::new(cfg)));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (tx, finished) = mpsc::unbounded_channel();
    let task = tokio::spawn({
        let seen = seen.clone();
        async move {
            loop {
                let (sock, _) = listener.accept().await.unwrap();
                let recorded = match &acceptor {
                    None => serve_one(sock, answer.clone(), &seen).await,
                    Some(acceptor) => match acceptor.accept(sock).await {
                        Ok(tls) => serve_one(tls, answer.clone(), &seen).await,
                        Err(_) => continue,
                    },
                };
                let _ = tx.send(recorded);
            }
        }
    });
    FakeApi {
        url: format!("{scheme}://{addr}"),
        seen,
        finished,
        task,
    }
}

async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    mut sock: S,
    answer: Answer,
    seen: &Mutex<Vec<Recorded>>,
) -> Recorded {
    let recorded = read_request(&mut sock).await;
    seen.lock().unwrap().push(recorded.clone());
    match answer {
        Answer::Respond(status, body) => {
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            // A client that stops reading (an oversized answer) makes these fail; that is fine.
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        }
        Answer::Close => drop(sock),
        Answer::Silent => {
            let mut rest = [0u8; 64];
            while matches!(sock.read(&mut rest).await, Ok(n) if n > 0) {}
        }
    }
    recorded
}

/// Reads one HTTP/1.1 request: the head, then a `content-length` body.
async fn read_request<S: AsyncRead + Unpin>(sock: &mut S) -> Recorded {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await.unwrap();
        assert!(n > 0, "client closed before sending a whole request head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap().to_owned();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await.unwrap();
        assert!(n > 0, "client closed before sending the whole body");
        body.extend_from_slice(&chunk[..n]);
    }
    Recorded {
        request_line,
        headers,
        body,
    }
}

/// A TokenReview answer as the API server writes it.
pub fn review(
    authenticated: bool,
    username: &str,
    audiences: Option<&[&str]>,
    error: &str,
) -> String {
    let mut status = json!({ "authenticated": authenticated });
    if authenticated {
        status["user"] =
            json!({ "username": username, "uid": "1234", "groups": ["system:serviceaccounts"] });
    }
    if let Some(a) = audiences {
        status["audiences"] = json!(a);
    }
    if !error.is_empty() {
        status["error"] = json!(error);
    }
    json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": { "creationTimestamp": null },
        "spec": { "audiences": ["istio-ca"] },
        "status": status,
    })
    .to_string()
}

/// An authenticated review of `namespace`/`service_account` for the `istio-ca` audience.
pub fn review_of(namespace: &str, service_account: &str) -> String {
    review(
        true,
        &format!("system:serviceaccount:{namespace}:{service_account}"),
        Some(&["istio-ca"]),
        "",
    )
}
