//! One agent connection's HTTP/1.1, written here (request heads and chunk
//! sizes are parsed by `httparse`, hyper's own parser).
//!
//! Why not hyper: every robot keeps one connection open to the agent
//! listener, most of the time inside a held poll (up to `--poll-hold`), so
//! what a connection keeps while its answer is pending is what a fleet
//! costs. hyper's HTTP/1.1 connection keeps an 8 KiB read buffer and an
//! 8 KiB write buffer for its whole life (`max_buf_size` cannot go below
//! 8 KiB; heaptrack with 2,000 idle robots: ≈ 18 KiB per robot) and has no
//! way to give them back between requests. Here a waiting connection holds
//! no buffer: a request is read into a buffer sized to it and handed to the
//! router whole, what was read past it is kept (a pipelined request) and
//! nothing else, and an answer is written from one buffer dropped once
//! written.
//!
//! What is served: HTTP/1.1 and 1.0 requests (1.0 without keep-alive),
//! keep-alive and pipelining, bodies framed by Content-Length or chunked
//! (trailers are read and dropped), `Expect: 100-continue`, HEAD. Answers
//! are written whole with their Content-Length: the robot channel signs
//! whole answers, so none streams. Refused, each answered and the
//! connection then closed: a head over [`MAX_HEAD`] bytes or
//! [`MAX_HEADERS`] fields (431), a body over [`Bounds::max_body`] (413,
//! before it is read), both Content-Length and Transfer-Encoding, a
//! repeated or malformed Content-Length, Transfer-Encoding on HTTP/1.0, a
//! malformed chunk (400: the ambiguous framings request smuggling plays
//! on), a transfer coding other than chunked (501), anything `httparse`
//! rejects (400), HTTP/2's preface included.
//!
//! Bounds on the peer: a request's head must be complete within
//! [`Bounds::head`] of its first byte (else 408), and a body or an answer
//! may not stall for longer than [`Bounds::stall`]; a connection idle
//! between requests has no timer (TCP keepalive reaps dead peers, see
//! `robot_channel::link`). A peer that closes its end while its answer is
//! pending (an agent that restarted) drops the request, as hyper does.
//!
//! A panic while a request is handled answers 500 and costs that request
//! only: the connection is the outermost panic container of the agent
//! listener (inline in its task, where a middleware layer would box one
//! more future per held poll; the robot channel's own container inside
//! makes a handler's panic a signed 500).

use crate::server::robot_channel::link::{AgentPeer, SharedTcp};
use crate::server::status::Status;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::FutureExt;
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

/// A panic's payload, as `catch_unwind` gives it.
type Panic = Box<dyn std::any::Any + Send>;

/// The largest request head (request line and fields), as hyper's buffer
/// floor allowed before: an agent's heads are under 1 KiB.
pub const MAX_HEAD: usize = 8192;

/// The most header fields in a request.
pub const MAX_HEADERS: usize = 64;

/// The first read of a request; a longer head grows the buffer.
const FIRST_READ: usize = 2048;

/// A chunk-size line longer than this is refused (the size and any
/// extensions the agent never sends).
const MAX_CHUNK_LINE: usize = 1024;

/// How long a closing connection reads (and drops) what the peer still
/// sends, so the kernel does not answer unread data with a reset that can
/// destroy the answer before the peer has read it.
const LINGER: Duration = Duration::from_secs(1);

/// What a connection allows its peer.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// From a request's first byte to its complete head.
    pub head: Duration,
    /// The longest a body being read or an answer being written may make
    /// no progress.
    pub stall: Duration,
    /// The largest request body (the robot channel's limit).
    pub max_body: usize,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            head: Duration::from_secs(30),
            stall: Duration::from_secs(30),
            max_body: super::MAX_BODY,
        }
    }
}

/// Serve `router` on one agent connection until the peer closes it, a
/// request is refused, or `stop` changes or closes (then an idle
/// connection closes at once and a busy one after its answer, which says
/// `Connection: close`). Each request carries the peer's address (the audit
/// log's sourceIPs, as on the other listeners) and the connection's
/// [`Link`](crate::server::robot_channel::link::Link).
pub async fn serve_connection(
    mut tcp: SharedTcp,
    peer: AgentPeer,
    router: Router,
    mut stop: tokio::sync::watch::Receiver<()>,
    bounds: Bounds,
) {
    // Bytes read past the last request: the next one's start, if pipelined.
    let mut carry: Vec<u8> = Vec::new();
    loop {
        if carry.is_empty() {
            // A peek, not `readable()`: readiness can be a false positive,
            // and the head's deadline starts with a byte.
            let mut byte = [0u8; 1];
            tokio::select! {
                peeked = tcp.stream().peek(&mut byte) => if !matches!(peeked, Ok(1..)) { return },
                _ = stop.changed() => return,
            }
        }
        let head = match tokio::time::timeout(bounds.head, read_head(&mut tcp, &mut carry)).await {
            Ok(Ok(head)) => head,
            Ok(Err(unread)) => return refuse(tcp, unread, bounds.stall).await,
            Err(_) => {
                return refuse(
                    tcp,
                    Unread::Refused(StatusCode::REQUEST_TIMEOUT, "the request head"),
                    bounds.stall,
                )
                .await
            }
        };
        let framing = match head.framing() {
            Ok(framing) => framing,
            Err(unread) => return refuse(tcp, unread, bounds.stall).await,
        };
        if let Framing::Length(n) = framing {
            if n > bounds.max_body as u64 {
                return refuse(tcp, Unread::TooLarge(bounds.max_body), bounds.stall).await;
            }
            if head.expects_continue()
                && (carry.len() as u64) < n
                && write_all(&mut tcp, CONTINUE, bounds.stall).await.is_err()
            {
                return;
            }
        }
        let body = match read_body(&mut tcp, &mut carry, framing, bounds).await {
            Ok(body) => body,
            Err(unread) => return refuse(tcp, unread, bounds.stall).await,
        };
        // Nothing but a pipelined request's bytes stays while the answer
        // is pending (usually nothing at all).
        carry.shrink_to_fit();
        let close = !head.keep_alive();
        let head_only = head.method == Method::HEAD;
        // Kept for the answer to a panic (both share the request's bytes).
        let (method, uri) = (head.method.clone(), head.uri.clone());
        let answer = router.clone().oneshot(head.into_request(body, &peer));
        let answer = std::panic::AssertUnwindSafe(answer).catch_unwind();
        let Some(response) = await_answer(answer, tcp.stream(), carry.is_empty()).await else {
            return;
        };
        let response = response.unwrap_or_else(|_| super::panicked(&format!("{method} {}", uri.path())));
        // Asked to stop meanwhile (the sender is dropped, nothing is sent).
        let close = close || stop.has_changed().is_err();
        if write_response(&mut tcp, response, head_only, close, bounds.stall)
            .await
            .is_err()
        {
            return;
        }
        if close {
            return finish(tcp).await;
        }
    }
}

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Why a request was not read whole.
enum Unread {
    /// The peer closed, reset or stalled: nothing to answer.
    Gone,
    /// Refused with this status; the text says what was wrong.
    Refused(StatusCode, &'static str),
    /// A body over the limit (bytes).
    TooLarge(usize),
}

impl Unread {
    fn bad(what: &'static str) -> Unread {
        Unread::Refused(StatusCode::BAD_REQUEST, what)
    }
}

/// Answer `unread` (if there is anyone to answer), each write making
/// progress within `stall`, and close.
async fn refuse(mut tcp: SharedTcp, unread: Unread, stall: Duration) {
    let response = match unread {
        Unread::Gone => return,
        Unread::Refused(status, what) => {
            log::debug!("agent connection: {status}: {what}");
            let reason = status.canonical_reason().unwrap_or("refused");
            (status, format!("{reason}: {what}\n")).into_response()
        }
        Unread::TooLarge(max) => {
            Status::too_large(format!("the request body is larger than {max} bytes")).into_response()
        }
    };
    if write_response(&mut tcp, response, false, true, stall).await.is_ok() {
        finish(tcp).await;
    }
}

/// Close after the last answer: our end first, then what the peer still
/// sends is read for at most [`LINGER`].
async fn finish(mut tcp: SharedTcp) {
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 512];
    let drain = async { while let Ok(1..) = tcp.read(&mut sink).await {} };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// A request's head, parsed.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

/// How a request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Read until `carry` holds a whole head; return it, leaving what follows
/// it in `carry`.
async fn read_head(tcp: &mut SharedTcp, carry: &mut Vec<u8>) -> Result<Head, Unread> {
    loop {
        if !carry.is_empty() {
            if let Some((head, len)) = parse_head(carry)? {
                carry.drain(..len);
                return Ok(head);
            }
        }
        if carry.len() >= MAX_HEAD {
            return Err(Unread::Refused(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "the request head is over 8 KiB",
            ));
        }
        let most = FIRST_READ.min(MAX_HEAD - carry.len());
        // The head's own deadline bounds this read.
        read_some(tcp, carry, most, Duration::MAX).await?;
    }
}

/// The head at the start of `buf` and its length, or None when it is not
/// complete yet.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, Unread> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Unread::Refused(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "more than 64 header fields",
            ))
        }
        Err(httparse::Error::Version) => {
            return Err(Unread::Refused(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "only HTTP/1.1 and HTTP/1.0 are served",
            ))
        }
        Err(_) => return Err(Unread::bad("a malformed request head")),
    };
    let method = req
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or(Unread::bad("a malformed method"))?;
    let uri = req
        .path
        .and_then(|p| p.parse::<Uri>().ok())
        .ok_or(Unread::bad("a malformed request target"))?;
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for field in req.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| Unread::bad("a malformed field name"))?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| Unread::bad("a malformed field value"))?;
        headers.append(name, value);
    }
    Ok(Some((
        Head {
            method,
            uri,
            version,
            headers,
        },
        len,
    )))
}

impl Head {
    /// The body's framing (RFC 9112 section 6.3), refusing every
    /// ambiguous one.
    fn framing(&self) -> Result<Framing, Unread> {
        let lengths = self.headers.get_all(header::CONTENT_LENGTH);
        let mut codings = self.headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
        if codings.peek().is_some() {
            if lengths.iter().next().is_some() {
                return Err(Unread::bad("both Content-Length and Transfer-Encoding"));
            }
            if self.version == Version::HTTP_10 {
                return Err(Unread::bad("Transfer-Encoding in an HTTP/1.0 request"));
            }
            let mut tokens = codings
                .flat_map(|v| v.as_bytes().split(|b| *b == b','))
                .map(<[u8]>::trim_ascii);
            return match (tokens.next(), tokens.next()) {
                (Some(only), None) if only.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
                _ => Err(Unread::Refused(
                    StatusCode::NOT_IMPLEMENTED,
                    "a transfer coding other than chunked",
                )),
            };
        }
        let mut lengths = lengths.iter();
        let Some(length) = lengths.next() else {
            return Ok(Framing::None);
        };
        if lengths.next().is_some() {
            return Err(Unread::bad("more than one Content-Length"));
        }
        let digits = length.as_bytes();
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(Unread::bad("a malformed Content-Length"));
        }
        let n = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        Ok(if n == 0 { Framing::None } else { Framing::Length(n) })
    }

    /// Whether the connection stays open after this request's answer.
    fn keep_alive(&self) -> bool {
        let close = self
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        self.version == Version::HTTP_11 && !close
    }

    fn expects_continue(&self) -> bool {
        self.version == Version::HTTP_11
            && self
                .headers
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    }

    fn into_request(self, body: Vec<u8>, peer: &AgentPeer) -> Request<Body> {
        let body = if body.is_empty() {
            Body::empty()
        } else {
            Body::from(body)
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req.extensions_mut().insert(ConnectInfo(peer.addr));
        if let Some(link) = &peer.link {
            req.extensions_mut().insert(link.clone());
        }
        req
    }
}

/// Read the body `framing` says follows, starting with what `carry`
/// holds; `carry` keeps what was read past it.
async fn read_body(
    tcp: &mut SharedTcp,
    carry: &mut Vec<u8>,
    framing: Framing,
    bounds: Bounds,
) -> Result<Vec<u8>, Unread> {
    match framing {
        Framing::None => Ok(Vec::new()),
        Framing::Length(n) => {
            // framing() bounded n by the caller's check against max_body.
            let n = usize::try_from(n).map_err(|_| Unread::TooLarge(bounds.max_body))?;
            if carry.len() >= n {
                let rest = carry.split_off(n);
                return Ok(std::mem::replace(carry, rest));
            }
            let mut body = Vec::with_capacity(n);
            body.append(carry);
            while body.len() < n {
                let left = n - body.len();
                read_some(tcp, &mut body, left, bounds.stall).await?;
            }
            Ok(body)
        }
        Framing::Chunked => read_chunked(tcp, carry, bounds).await,
    }
}

/// A chunked body (RFC 9112 section 7.1), its trailer fields dropped.
async fn read_chunked(tcp: &mut SharedTcp, carry: &mut Vec<u8>, bounds: Bounds) -> Result<Vec<u8>, Unread> {
    let mut body = Vec::new();
    loop {
        let (line, size) = loop {
            match httparse::parse_chunk_size(carry) {
                Ok(httparse::Status::Complete(sized)) => break sized,
                Ok(httparse::Status::Partial) if carry.len() < MAX_CHUNK_LINE => {
                    read_some(tcp, carry, MAX_CHUNK_LINE, bounds.stall).await?
                }
                _ => return Err(Unread::bad("a malformed chunk size")),
            }
        };
        carry.drain(..line);
        if size == 0 {
            skip_trailers(tcp, carry, bounds.stall).await?;
            return Ok(body);
        }
        let size = usize::try_from(size)
            .ok()
            .filter(|s| body.len().saturating_add(*s) <= bounds.max_body)
            .ok_or(Unread::TooLarge(bounds.max_body))?;
        let framed = size + 2;
        while carry.len() < framed {
            let left = framed - carry.len();
            read_some(tcp, carry, left, bounds.stall).await?;
        }
        if &carry[size..framed] != b"\r\n" {
            return Err(Unread::bad("a chunk not ended by CRLF"));
        }
        body.extend_from_slice(&carry[..size]);
        carry.drain(..framed);
    }
}

/// Read the trailer section after the last chunk, up to its empty line.
async fn skip_trailers(tcp: &mut SharedTcp, carry: &mut Vec<u8>, stall: Duration) -> Result<(), Unread> {
    let mut skipped = 0usize;
    loop {
        if let Some(end) = carry.windows(2).position(|w| w == b"\r\n") {
            carry.drain(..end + 2);
            if end == 0 {
                return Ok(());
            }
            skipped += end + 2;
        } else {
            read_some(tcp, carry, MAX_CHUNK_LINE, stall).await?;
        }
        if skipped + carry.len() > MAX_HEAD + MAX_CHUNK_LINE {
            return Err(Unread::Refused(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "the trailer section is over 8 KiB",
            ));
        }
    }
}

/// Read at most `most` more bytes onto `buf`, waiting at most `stall`.
async fn read_some(tcp: &mut SharedTcp, buf: &mut Vec<u8>, most: usize, stall: Duration) -> Result<(), Unread> {
    buf.reserve(most);
    let mut limited = (&mut *tcp).take(most as u64);
    let read = limited.read_buf(buf);
    let read = if stall == Duration::MAX {
        Ok(read.await)
    } else {
        tokio::time::timeout(stall, read).await
    };
    match read {
        Ok(Ok(1..)) => Ok(()),
        _ => Err(Unread::Gone),
    }
}

/// The router's answer (or its panic), or None when the peer closed its
/// end before it came (the request is dropped then). `watch_peer`: false
/// when bytes of the next request are waiting already (the peer is there).
async fn await_answer(
    answer: impl Future<Output = Result<Result<Response, Infallible>, Panic>>,
    tcp: &TcpStream,
    mut watch_peer: bool,
) -> Option<Result<Response, Panic>> {
    let mut answer = std::pin::pin!(answer);
    loop {
        tokio::select! {
            answered = answer.as_mut() => {
                return Some(answered.map(|r| r.unwrap_or_else(|never| match never {})));
            }
            gone = peer_gone(tcp), if watch_peer => {
                if gone {
                    return None;
                }
                // The next request's bytes: read once this one is answered.
                watch_peer = false;
            }
        }
    }
}

/// Whether the peer has closed or reset the connection (false once it
/// sends something instead).
async fn peer_gone(tcp: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    !matches!(tcp.peek(&mut byte).await, Ok(1..))
}

/// Write `response` whole: the status line, its fields (with the
/// Content-Length of its body, `Connection: close` when `close`) and its
/// body (none for HEAD).
async fn write_response(
    tcp: &mut SharedTcp,
    response: Response,
    head_only: bool,
    close: bool,
    stall: Duration,
) -> Result<(), ()> {
    let (parts, body) = response.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(e) => {
            log::debug!("agent connection: the answer's body failed: {e}");
            return Err(());
        }
    };
    let status = parts.status;
    let bodiless = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let mut out = Vec::with_capacity(256 + parts.headers.len() * 64 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // A HEAD answer's body is gone already (axum drops it): the length it
    // states is that of the GET answer.
    let stated = head_only && parts.headers.contains_key(header::CONTENT_LENGTH);
    for (name, value) in &parts.headers {
        let framing = name == header::CONTENT_LENGTH && !stated;
        if framing || name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !bodiless && !stated {
        field(&mut out, b"content-length", body.len().to_string().as_bytes());
    }
    if close {
        field(&mut out, b"connection", b"close");
    }
    field(
        &mut out,
        b"date",
        httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    if !head_only && !bodiless {
        out.extend_from_slice(&body);
    }
    drop(body);
    write_all(tcp, &out, stall).await
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Write all of `bytes`, each write making progress within `stall`.
async fn write_all(tcp: &mut SharedTcp, mut bytes: &[u8], stall: Duration) -> Result<(), ()> {
    while !bytes.is_empty() {
        match tokio::time::timeout(stall, tcp.write(bytes)).await {
            Ok(Ok(n @ 1..)) => bytes = &bytes[n..],
            _ => return Err(()),
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "agent_http1_tests.rs"]
mod tests;
