#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design
//! The server against real sockets: routes, slow clients (silent, or a byte at a time) that are
//! cut off after the header timeout without holding up other scrapes, and the connection bound.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshca_http::{Limits, Page, Site};

const HEADER_TIMEOUT: Duration = Duration::from_millis(800);

fn start(max_connections: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let site: Arc<dyn Site> = Arc::new(|path: &str| match path {
        "/metrics" => Some(Page::metrics("up 1\n")),
        _ => None,
    });
    let limits = Limits {
        header_timeout: HEADER_TIMEOUT,
        max_connections,
        connection_lifetime: Duration::from_secs(30),
    };
    meshca_http::spawn(listener, site, limits).unwrap();
    addr
}

/// One request on a new connection; the whole answer, read until the server closes.
fn request(addr: SocketAddr, head: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn get(addr: SocketAddr, path: &str) -> String {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
    )
}

/// How long until the server closes `s`, reading (and dropping) whatever it sends.
fn time_to_close(mut s: TcpStream, since: Instant) -> Duration {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return since.elapsed(),
            Ok(_) => {}
        }
    }
}

#[test]
fn metrics_404_405_and_keep_alive() {
    let addr = start(8);
    let ok = get(addr, "/metrics");
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(
        ok.contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{ok}"
    );
    assert!(ok.ends_with("\r\n\r\nup 1\n"), "{ok}");
    // The query is not part of the path.
    assert!(get(addr, "/metrics?x=1").ends_with("up 1\n"));
    let missing = get(addr, "/nothing");
    assert!(
        missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
        "{missing}"
    );
    let post = request(
        addr,
        "POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    );
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    assert!(post.contains("allow: GET, HEAD\r\n"), "{post}");
    // Two requests on one connection.
    let both = request(
        addr,
        "GET /metrics HTTP/1.1\r\nhost: x\r\n\r\nGET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(both.matches("HTTP/1.1 200 OK").count(), 2, "{both}");
}

#[test]
fn slow_clients_are_cut_off_after_the_header_timeout_and_do_not_hold_up_a_scrape() {
    let addr = start(8);
    let started = Instant::now();
    // Two clients that connect and send nothing.
    let silent: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // One that sends its request a byte at a time, one byte every 200 ms: it would take 8 s.
    let trickle = TcpStream::connect(addr).unwrap();
    let mut writer = trickle.try_clone().unwrap();
    let dripping = std::thread::spawn(move || {
        for b in b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n" {
            if writer.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    // Meanwhile a scrape is answered at once.
    let scrape = Instant::now();
    assert!(get(addr, "/metrics").ends_with("up 1\n"));
    assert!(
        scrape.elapsed() < HEADER_TIMEOUT / 2,
        "a scrape beside slow clients took {:?}",
        scrape.elapsed()
    );
    // Each slow client is closed after the header timeout, the trickling one too.
    let mut closes = Vec::new();
    for s in silent.into_iter().chain([trickle]) {
        closes.push(time_to_close(s, started));
    }
    for c in &closes {
        assert!(
            *c >= HEADER_TIMEOUT.mul_f32(0.9) && *c < HEADER_TIMEOUT * 4,
            "closed after {c:?} (header timeout {HEADER_TIMEOUT:?}): {closes:?}"
        );
    }
    dripping.join().unwrap();
}

#[test]
fn connections_beyond_the_bound_wait_until_a_slot_frees() {
    let addr = start(2);
    let started = Instant::now();
    let holders: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // Let the server accept both before the third comes.
    std::thread::sleep(Duration::from_millis(100));
    let answer = get(addr, "/metrics");
    let waited = started.elapsed();
    assert!(answer.ends_with("up 1\n"), "{answer}");
    assert!(
        waited >= HEADER_TIMEOUT.mul_f32(0.9),
        "answered after {waited:?}, before a slot was free"
    );
    drop(holders);
}
