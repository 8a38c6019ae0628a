//! `agent_http1` against raw bytes on real loopback sockets.

use super::{serve_connection, Bounds};
use crate::server::robot_channel::link::{accepted, Link};
use axum::extract::ConnectInfo;
use axum::routing::{get, post};
use axum::{Extension, Router};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Notify};

/// Long enough for anything that should happen; a test that waits this
/// long has failed.
const PATIENCE: Duration = Duration::from_secs(10);

/// What the test router lets a test see and steer.
#[derive(Default)]
struct Probe {
    /// Requests that reached `/echo`.
    echoed: AtomicUsize,
    /// Told when a held request's handler starts.
    held: Mutex<Option<oneshot::Sender<()>>>,
    /// Told when a held request's handler is dropped.
    dropped: Mutex<Option<oneshot::Sender<()>>>,
    /// Lets `/slow` answer.
    release: Notify,
}

/// Sends on drop.
struct Tell(Option<oneshot::Sender<()>>);

impl Drop for Tell {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

fn router(probe: Arc<Probe>) -> Router {
    let (echo, hold, slow) = (probe.clone(), probe.clone(), probe);
    Router::new()
        .route(
            "/echo",
            post(move |body: axum::body::Bytes| async move {
                echo.echoed.fetch_add(1, Ordering::SeqCst);
                body
            })
            .get(|| async { "hello" }),
        )
        .route(
            "/peer",
            get(
                |ConnectInfo(addr): ConnectInfo<SocketAddr>, link: Option<Extension<Link>>| async move {
                    format!("{addr} link={}", link.is_some())
                },
            ),
        )
        .route(
            "/panic",
            get(|| async {
                if probe_panics() {
                    panic!("a deliberate panic in a handler");
                }
                "no panic"
            }),
        )
        .route(
            "/hold",
            get(move || async move {
                let _dropped = Tell(hold.dropped.lock().unwrap().take());
                drop(Tell(hold.held.lock().unwrap().take()));
                std::future::pending::<()>().await;
                "never"
            }),
        )
        .route(
            "/slow",
            get(move || async move {
                drop(Tell(slow.held.lock().unwrap().take()));
                slow.release.notified().await;
                "late"
            }),
        )
}

/// Always true; the compiler cannot tell, so the handler has a type.
fn probe_panics() -> bool {
    std::hint::black_box(true)
}

/// One connection served with `bounds`: the client's end, the stop
/// signal's sender and the serving task.
async fn serve_one(probe: &Arc<Probe>, bounds: Bounds) -> (TcpStream, watch::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (tcp, addr) = listener.accept().await.unwrap();
    let (io, peer) = accepted(tcp, addr);
    let (stop, asked) = watch::channel(());
    let served = tokio::spawn(serve_connection(io, peer, router(probe.clone()), asked, bounds));
    (client, stop, served)
}

/// One answer as the client reads it.
#[derive(Debug)]
struct Answer {
    status: u16,
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Read one answer (its body as long as its Content-Length, none for
/// HEAD), keeping bytes past it in `carry`.
async fn read_answer(client: &mut TcpStream, carry: &mut Vec<u8>, head_only: bool) -> Answer {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(len) = r.parse(carry).expect("a well-formed answer") {
                let fields: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                let status = r.code.unwrap();
                carry.drain(..len);
                let mut answer = Answer {
                    status,
                    fields,
                    body: Vec::new(),
                };
                let length: usize = match (head_only, answer.field("content-length")) {
                    (false, Some(l)) => l.parse().unwrap(),
                    _ => 0,
                };
                while carry.len() < length {
                    assert_ne!(client.read_buf(carry).await.unwrap(), 0, "closed inside a body");
                }
                answer.body = carry.drain(..length).collect();
                return answer;
            }
            assert_ne!(
                client.read_buf(carry).await.unwrap(),
                0,
                "closed before an answer: {carry:?}"
            );
        }
    })
    .await
    .expect("an answer in time")
}

/// The server closes the connection (after what `carry` holds).
async fn assert_closed(client: &mut TcpStream, carry: &[u8]) {
    assert!(carry.is_empty(), "bytes after the answer: {carry:?}");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, client.read_to_end(&mut rest)).await;
    match read {
        Ok(Ok(_)) => assert!(rest.is_empty(), "bytes after the answer: {rest:?}"),
        // A reset after the answer is a close too.
        Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Err(_) => panic!("the connection stayed open"),
    }
}

#[tokio::test]
async fn pipelined_requests_on_a_kept_connection_are_answered_in_order() {
    let probe = Arc::new(Probe::default());
    let (mut client, _stop, _served) = serve_one(&probe, Bounds::default()).await;
    client
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: r\r\nContent-Length: 3\r\n\r\nabcGET /echo HTTP/1.1\r\nHost: r\r\n\r\n",
        )
        .await
        .unwrap();
    let mut carry = Vec::new();
    let first = read_answer(&mut client, &mut carry, false).await;
    assert_eq!((first.status, first.body.as_slice()), (200, &b"abc"[..]));
    assert!(first.field("date").is_some() && first.field("connection").is_none());
    let second = read_answer(&mut client, &mut carry, false).await;
    assert_eq!((second.status, second.body.as_slice()), (200, &b"hello"[..]));
    // Still open, and the peer's address and link reach the handler.
    client.write_all(b"GET /peer HTTP/1.1\r\n\r\n").await.unwrap();
    let peer = read_answer(&mut client, &mut carry, false).await;
    let me = client.local_addr().unwrap();
    assert_eq!(String::from_utf8(peer.body).unwrap(), format!("{me} link=true"));
}

#[tokio::test]
async fn a_chunked_body_is_read_whole_and_the_next_request_after_it() {
    let probe = Arc::new(Probe::default());
    let (mut client, _stop, _served) = serve_one(&probe, Bounds::default()).await;
    let mut carry = Vec::new();
    // Sent in pieces that split the framing everywhere it can be split.
    let request: &[u8] = b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\nGET /echo HTTP/1.1\r\n\r\n";
    for piece in request.chunks(7) {
        client.write_all(piece).await.unwrap();
        client.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    let a = read_answer(&mut client, &mut carry, false).await;
    assert_eq!((a.status, a.body.as_slice()), (200, &b"abc0123456789"[..]));
    let b = read_answer(&mut client, &mut carry, false).await;
    assert_eq!((b.status, b.body.as_slice()), (200, &b"hello"[..]));
}

#[tokio::test]
async fn expect_continue_gets_its_interim_answer_before_the_body_is_sent() {
    let probe = Arc::new(Probe::default());
    let (mut client, _stop, _served) = serve_one(&probe, Bounds::default()).await;
    client
        .write_all(b"POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    let mut carry = Vec::new();
    let interim = read_answer(&mut client, &mut carry, true).await;
    assert_eq!(interim.status, 100);
    client.write_all(b"fives").await.unwrap();
    let a = read_answer(&mut client, &mut carry, false).await;
    assert_eq!((a.status, a.body.as_slice()), (200, &b"fives"[..]));
}

#[tokio::test]
async fn head_answers_carry_the_length_but_no_body() {
    let probe = Arc::new(Probe::default());
    let (mut client, _stop, _served) = serve_one(&probe, Bounds::default()).await;
    client
        .write_all(b"HEAD /echo HTTP/1.1\r\n\r\nGET /echo HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut carry = Vec::new();
    let head = read_answer(&mut client, &mut carry, true).await;
    assert_eq!((head.status, head.field("content-length")), (200, Some("5")));
    // Had a body been written, this would read it as the next answer.
    let get = read_answer(&mut client, &mut carry, false).await;
    assert_eq!((get.status, get.body.as_slice()), (200, &b"hello"[..]));
}

#[tokio::test]
async fn http_1_0_and_connection_close_end_the_connection_after_the_answer() {
    for request in [
        &b"GET /echo HTTP/1.0\r\n\r\n"[..],
        b"GET /echo HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n",
    ] {
        let probe = Arc::new(Probe::default());
        let (mut client, _stop, served) = serve_one(&probe, Bounds::default()).await;
        client.write_all(request).await.unwrap();
        let mut carry = Vec::new();
        let a = read_answer(&mut client, &mut carry, false).await;
        assert_eq!((a.status, a.field("connection")), (200, Some("close")));
        assert_closed(&mut client, &carry).await;
        drop(client);
        tokio::time::timeout(PATIENCE, served).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn ambiguous_malformed_or_oversized_requests_are_refused_unread_and_closed() {
    let bounds = Bounds {
        max_body: 1024,
        ..Bounds::default()
    };
    let big_head = format!("GET /echo HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
    let many_fields = format!("GET /echo HTTP/1.1\r\n{}\r\n", "X-F: 1\r\n".repeat(65));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "Content-Length and Transfer-Encoding",
            b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "two Content-Lengths",
            b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            400,
        ),
        (
            "a signed Content-Length",
            b"POST /echo HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc".to_vec(),
            400,
        ),
        (
            "an unknown transfer coding",
            b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec(),
            501,
        ),
        (
            "chunked in HTTP/1.0",
            b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        ("a head over 8 KiB", big_head.into_bytes(), 431),
        ("65 fields", many_fields.into_bytes(), 431),
        (
            "a body over the limit",
            b"POST /echo HTTP/1.1\r\nContent-Length: 2048\r\n\r\n".to_vec(),
            413,
        ),
        (
            "chunks over the limit",
            format!(
                "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n{}\r\n1\r\n",
                "a".repeat(1024)
            )
            .into_bytes(),
            413,
        ),
        (
            "a malformed chunk size",
            b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n".to_vec(),
            400,
        ),
        (
            "a chunk longer than its size",
            b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        ("HTTP/2's preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), 505),
        (
            "not HTTP",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            400,
        ),
    ];
    for (what, request, status) in cases {
        let probe = Arc::new(Probe::default());
        let (mut client, _stop, served) = serve_one(&probe, bounds).await;
        client.write_all(&request).await.unwrap();
        let mut carry = Vec::new();
        let a = read_answer(&mut client, &mut carry, false).await;
        assert_eq!(a.status, status, "{what}: {a:?}");
        assert_eq!(a.field("connection"), Some("close"), "{what}");
        assert_closed(&mut client, &carry).await;
        drop(client);
        tokio::time::timeout(PATIENCE, served).await.unwrap().unwrap();
        assert_eq!(probe.echoed.load(Ordering::SeqCst), 0, "{what} reached the handler");
    }
}

#[tokio::test]
async fn a_slow_head_is_answered_408_and_a_stalled_body_is_dropped() {
    let probe = Arc::new(Probe::default());
    let bounds = Bounds {
        head: Duration::from_millis(300),
        stall: Duration::from_millis(300),
        ..Bounds::default()
    };
    let (mut client, _stop, served) = serve_one(&probe, bounds).await;
    client.write_all(b"GET /echo HTTP/1.1\r\nHost: r\r\n").await.unwrap();
    let mut carry = Vec::new();
    let a = read_answer(&mut client, &mut carry, false).await;
    assert_eq!((a.status, a.field("connection")), (408, Some("close")));
    assert_closed(&mut client, &carry).await;
    tokio::time::timeout(PATIENCE, served).await.unwrap().unwrap();

    let (mut client, _stop, served) = serve_one(&probe, bounds).await;
    client
        .write_all(b"POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    assert_closed(&mut client, &[]).await;
    tokio::time::timeout(PATIENCE, served).await.unwrap().unwrap();
    assert_eq!(probe.echoed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_peer_that_closes_while_its_answer_is_pending_drops_the_request() {
    let probe = Arc::new(Probe::default());
    let (held_tx, held) = oneshot::channel();
    let (dropped_tx, dropped) = oneshot::channel();
    *probe.held.lock().unwrap() = Some(held_tx);
    *probe.dropped.lock().unwrap() = Some(dropped_tx);
    let (mut client, _stop, served) = serve_one(&probe, Bounds::default()).await;
    client.write_all(b"GET /hold HTTP/1.1\r\n\r\n").await.unwrap();
    tokio::time::timeout(PATIENCE, held).await.unwrap().unwrap();
    drop(client);
    tokio::time::timeout(PATIENCE, dropped)
        .await
        .expect("the held request was dropped")
        .unwrap();
    tokio::time::timeout(PATIENCE, served).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_stop_closes_an_idle_connection_at_once_and_a_busy_one_after_its_answer() {
    let probe = Arc::new(Probe::default());
    let (mut idle, stop, served) = serve_one(&probe, Bounds::default()).await;
    drop(stop);
    assert_closed(&mut idle, &[]).await;
    tokio::time::timeout(PATIENCE, served).await.unwrap().unwrap();

    let (held_tx, held) = oneshot::channel();
    *probe.held.lock().unwrap() = Some(held_tx);
    let (mut busy, stop, served) = serve_one(&probe, Bounds::default()).await;
    busy.write_all(b"GET /slow HTTP/1.1\r\n\r\n").await.unwrap();
    tokio::time::timeout(PATIENCE, held).await.unwrap().unwrap();
    drop(stop);
    probe.release.notify_one();
    let mut carry = Vec::new();
    let a = read_answer(&mut busy, &mut carry, false).await;
    assert_eq!((a.status, a.body.as_slice()), (200, &b"late"[..]));
    assert_eq!(a.field("connection"), Some("close"));
    assert_closed(&mut busy, &carry).await;
    tokio::time::timeout(PATIENCE, served).await.unwrap().unwrap();
}

#[tokio::test]
async fn an_idle_kept_connection_outlives_the_head_deadline() {
    let probe = Arc::new(Probe::default());
    let bounds = Bounds {
        head: Duration::from_millis(100),
        ..Bounds::default()
    };
    let (mut client, _stop, _served) = serve_one(&probe, bounds).await;
    let mut carry = Vec::new();
    for _ in 0..2 {
        client.write_all(b"GET /echo HTTP/1.1\r\n\r\n").await.unwrap();
        let a = read_answer(&mut client, &mut carry, false).await;
        assert_eq!((a.status, a.body.as_slice()), (200, &b"hello"[..]));
        // What is tested is that nothing happens meanwhile: the deadline
        // runs from a request's first byte, not from the last answer.
        tokio::time::sleep(bounds.head * 5).await;
    }
}

#[tokio::test]
async fn a_panicking_handler_answers_500_and_the_connection_goes_on() {
    let probe = Arc::new(Probe::default());
    let (mut client, _stop, _served) = serve_one(&probe, Bounds::default()).await;
    client
        .write_all(b"GET /panic HTTP/1.1\r\n\r\nGET /echo HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut carry = Vec::new();
    let a = read_answer(&mut client, &mut carry, false).await;
    assert_eq!(a.status, 500, "{a:?}");
    assert!(String::from_utf8_lossy(&a.body).contains("GET /panic"), "{a:?}");
    let b = read_answer(&mut client, &mut carry, false).await;
    assert_eq!((b.status, b.body.as_slice()), (200, &b"hello"[..]));
}
