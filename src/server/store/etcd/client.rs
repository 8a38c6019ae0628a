//! A small etcd v3 client over etcd's JSON gateway (`/v3/kv/range`,
//! `/v3/kv/txn`, `/v3/watch`, `/v3/lease/*`): HTTP/1.1 POSTs of JSON with
//! base64 keys and values, on the hyper stack the server already has, plain
//! or over rustls as the [`Endpoints`] say.
//!
//! Requests go to one endpoint at a time; when it cannot be reached (a
//! member is down), the next one is tried. Only requests that never reached
//! a member are retried elsewhere, so a write is never applied twice.

use super::endpoints::Endpoints;
use super::tls;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client as HttpClient, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long one unary request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Unary requests in flight at once: bounds the connections to etcd (and
/// its load) however many robots poll at the same moment.
const MAX_IN_FLIGHT: usize = 128;
/// How long calls are retried while the cluster elects a raft leader.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq)]
pub enum EtcdError {
    /// A request could not be built for an endpoint.
    Endpoint(String),
    /// No member could be reached; the last failure.
    Unreachable(String),
    /// A member answered with an error status.
    Status { path: String, code: u16, body: String },
    /// The answer was not what the gateway sends.
    Decode { path: String, detail: String },
    /// A request took longer than its deadline.
    Timeout(String),
    /// A watch asked for revisions etcd has compacted away.
    Compacted { requested: u64, compact_revision: u64 },
    /// A watch stream broke.
    Stream(String),
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::Endpoint(e) => write!(f, "etcd request to {e}"),
            EtcdError::Unreachable(e) => write!(f, "no etcd member reachable: {e}"),
            EtcdError::Status { path, code, body } => write!(f, "etcd {path}: HTTP {code}: {body}"),
            EtcdError::Decode { path, detail } => write!(f, "etcd {path}: unexpected answer: {detail}"),
            EtcdError::Timeout(path) => write!(f, "etcd {path}: no answer within {REQUEST_TIMEOUT:?}"),
            EtcdError::Compacted {
                requested,
                compact_revision,
            } => write!(f, "etcd watch from {requested}: compacted up to {compact_revision}"),
            EtcdError::Stream(e) => write!(f, "etcd watch stream: {e}"),
        }
    }
}

impl std::error::Error for EtcdError {}

/// One key/value as etcd keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
}

/// One watch event.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub deleted: bool,
    pub kv: KeyValue,
    pub prev: Option<KeyValue>,
}

pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// The end of the range of every key starting with `prefix` (etcd's
/// `WithPrefix`): the prefix with its last byte incremented.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// An int64 as the gateway writes it: a string, absent when zero.
pub fn int(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn bytes_field(v: &Value, field: &str) -> Result<Vec<u8>, String> {
    match v.get(field).and_then(Value::as_str) {
        None => Ok(Vec::new()),
        Some(s) => B64.decode(s).map_err(|e| format!("{field}: {e}")),
    }
}

fn key_value(v: &Value) -> Result<KeyValue, String> {
    Ok(KeyValue {
        key: bytes_field(v, "key")?,
        value: bytes_field(v, "value")?,
        create_revision: int(&v["create_revision"]),
        mod_revision: int(&v["mod_revision"]),
    })
}

/// The `kvs` of a range answer.
pub fn kvs(v: &Value) -> Result<Vec<KeyValue>, String> {
    match v.get("kvs").and_then(Value::as_array) {
        None => Ok(Vec::new()),
        Some(a) => a.iter().map(key_value).collect(),
    }
}

/// The `prev_kvs` of a delete answer.
pub fn prev_kvs(v: &Value) -> Result<Vec<KeyValue>, String> {
    match v.get("prev_kvs").and_then(Value::as_array) {
        None => Ok(Vec::new()),
        Some(a) => a.iter().map(key_value).collect(),
    }
}

/// The revision in an answer's header.
pub fn header_revision(v: &Value) -> u64 {
    int(&v["header"]["revision"])
}

/// The connections to etcd: plain for http:// members, rustls for https://
/// ones (never both: [`Endpoints`] refuses a mixed list).
enum Transport {
    Plain(HttpClient<HttpConnector, Full<Bytes>>),
    Tls(HttpClient<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

impl Transport {
    fn new(endpoints: &Endpoints) -> Transport {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let mut builder = HttpClient::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(30));
        match endpoints.tls() {
            None => Transport::Plain(builder.build(connector)),
            Some(config) => {
                // The TLS layer gets the https:// URLs the TCP layer would refuse.
                connector.enforce_http(false);
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(config.as_ref().clone())
                    .https_only()
                    .enable_http1()
                    .wrap_connector(connector);
                Transport::Tls(builder.build(https))
            }
        }
    }

    fn request(&self, req: hyper::Request<Full<Bytes>>) -> ResponseFuture {
        match self {
            Transport::Plain(c) => c.request(req),
            Transport::Tls(c) => c.request(req),
        }
    }
}

/// `e` and its causes. rustls's error travels inside io::Errors, whose
/// source() skips what they wrap: they are looked through.
fn causes<'e>(e: &'e (dyn std::error::Error + 'static)) -> impl Iterator<Item = &'e (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |c| {
        match c.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        }
    })
}

/// `e` with its causes: hyper's own text ("client error (Connect)") hides
/// what went wrong (refused, a certificate, a TLS alert).
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    for c in causes(e) {
        let more = c.to_string();
        if !text.contains(&more) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&more);
        }
    }
    text
}

pub struct Client {
    http: Transport,
    /// The TLS configuration of https:// members, for [`tls::probe`].
    tls: Option<Arc<rustls::ClientConfig>>,
    endpoints: Vec<String>,
    /// The endpoint that answered last.
    current: AtomicUsize,
    in_flight: tokio::sync::Semaphore,
}

impl Client {
    pub fn new(endpoints: &Endpoints) -> Self {
        Client {
            http: Transport::new(endpoints),
            tls: endpoints.tls().cloned(),
            endpoints: endpoints.urls().to_vec(),
            current: AtomicUsize::new(0),
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
        }
    }

    /// For a TLS member, what the operator can check about `e`;
    /// `connecting`: the connection was not made.
    fn hint(&self, e: &(dyn std::error::Error + 'static), connecting: bool) -> Option<&'static str> {
        self.tls.as_ref()?;
        causes(e).find_map(|c| tls::hint(c, connecting))
    }

    /// What went wrong with a request that did not reach etcd or got no
    /// answer, with the hint in parentheses.
    fn failure(&self, e: &(dyn std::error::Error + 'static), connecting: bool) -> String {
        match self.hint(e, connecting) {
            Some(hint) => format!("{} ({hint})", with_causes(e)),
            None => with_causes(e),
        }
    }

    /// Send one POST, to the current endpoint and then to the others while
    /// they cannot be reached. Returns the response of the first member
    /// that took the request.
    async fn send<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<hyper::Response<Incoming>, EtcdError> {
        self.send_with(path, body, &[]).await
    }

    async fn send_with<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
        headers: &[(&str, &str)],
    ) -> Result<hyper::Response<Incoming>, EtcdError> {
        let body = Bytes::from(serde_json::to_vec(body).map_err(|e| EtcdError::Endpoint(format!("{path}: {e}")))?);
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..self.endpoints.len() {
            let idx = (start + i) % self.endpoints.len();
            let uri = format!("{}{path}", self.endpoints[idx]);
            let mut req = hyper::Request::post(&uri).header("content-type", "application/json");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req
                .body(Full::new(body.clone()))
                .map_err(|e| EtcdError::Endpoint(format!("{uri}: {e}")))?;
            match self.http.request(req).await {
                Ok(resp) => {
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(e) if e.is_connect() => last = format!("{uri}: {}", self.failure(&e, true)),
                Err(e) => {
                    let mut text = format!("{uri}: {}", self.failure(&e, false));
                    // No reason given: under TLS a member's verdict on the
                    // handshake may have been lost in a race (tls::probe).
                    if let (Some(tls), None) = (&self.tls, self.hint(&e, false)) {
                        if let Some(why) = tls::probe(&self.endpoints[idx], tls).await {
                            text = format!("{text}; a new TLS connection shows why: {}", self.failure(&why, true));
                        }
                    }
                    return Err(EtcdError::Unreachable(text));
                }
            }
        }
        Err(EtcdError::Unreachable(last))
    }

    /// A unary call: POST `body` to `path`, the JSON answer. While the
    /// cluster has no raft leader (a member just died) the call is retried
    /// for a few seconds: always when `idempotent`, otherwise only when etcd
    /// says it did not take the request ("no leader").
    pub async fn call_retrying<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
        idempotent: bool,
    ) -> Result<Value, EtcdError> {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            match self.call(path, body).await {
                Err(EtcdError::Status {
                    code: 503, body: text, ..
                }) if (idempotent || text.contains("no leader"))
                    && started.elapsed().saturating_add(pause) < UNAVAILABLE_RETRY =>
                {
                    log::debug!("etcd {path}: unavailable ({text}); retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    /// A unary call: POST `body` to `path`, the JSON answer.
    pub async fn call<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<Value, EtcdError> {
        let fut = async {
            let _permit = self
                .in_flight
                .acquire()
                .await
                .map_err(|e| EtcdError::Unreachable(e.to_string()))?;
            let resp = self.send(path, body).await?;
            let code = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| EtcdError::Unreachable(format!("{path}: {e}")))?
                .to_bytes();
            if code != 200 {
                return Err(EtcdError::Status {
                    path: path.to_string(),
                    code,
                    body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
                });
            }
            serde_json::from_slice(&bytes).map_err(|e| EtcdError::Decode {
                path: path.to_string(),
                detail: e.to_string(),
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| EtcdError::Timeout(path.to_string()))?
    }

    /// Keys in `[key, end)` (or just `key`).
    pub async fn range(&self, key: &[u8], end: Option<&[u8]>) -> Result<Value, EtcdError> {
        let mut req = json!({"key": b64(key)});
        if let Some(end) = end {
            req["range_end"] = Value::String(b64(end));
        }
        self.call_retrying("/v3/kv/range", &req, true).await
    }

    /// A transaction: `txn` is a [`Txn`] or its JSON.
    pub async fn txn<B: Serialize + ?Sized>(&self, txn: &B) -> Result<Value, EtcdError> {
        self.call_retrying("/v3/kv/txn", txn, false).await
    }

    /// Drop the history at and below revision `rev`.
    pub async fn compact(&self, rev: u64) -> Result<(), EtcdError> {
        self.call("/v3/kv/compaction", &json!({"revision": rev.to_string()}))
            .await
            .map(|_| ())
    }

    /// A lease of `ttl` seconds; its id.
    pub async fn lease_grant(&self, ttl: u64) -> Result<u64, EtcdError> {
        let v = self.call("/v3/lease/grant", &json!({"TTL": ttl})).await?;
        match int(&v["ID"]) {
            0 => Err(EtcdError::Decode {
                path: "/v3/lease/grant".into(),
                detail: v.to_string(),
            }),
            id => Ok(id),
        }
    }

    /// Refresh a lease; its remaining TTL (0: it has expired).
    pub async fn lease_keepalive(&self, id: u64) -> Result<u64, EtcdError> {
        let v = self.call("/v3/lease/keepalive", &json!({"ID": id.to_string()})).await?;
        Ok(int(&v["result"]["TTL"]))
    }

    pub async fn lease_revoke(&self, id: u64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", &json!({"ID": id.to_string()}))
            .await
            .map(|_| ())
    }

    /// Watch `[key, end)` from revision `from` (inclusive), with previous
    /// values. The member ends the watch when it loses the raft leader
    /// (etcd's `WithRequireLeader`), so a member cut off from the cluster
    /// cannot leave the watch silently stale: the caller resumes elsewhere.
    pub async fn watch(&self, key: &[u8], end: &[u8], from: u64) -> Result<WatchStream, EtcdError> {
        let req = json!({"create_request": {
            "key": b64(key),
            "range_end": b64(end),
            "start_revision": from.to_string(),
            "prev_kv": true,
        }});
        let require_leader = [("grpc-metadata-hasleader", "true")];
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.send_with("/v3/watch", &req, &require_leader))
            .await
            .map_err(|_| EtcdError::Timeout("/v3/watch".into()))??;
        if resp.status().as_u16() != 200 {
            return Err(EtcdError::Status {
                path: "/v3/watch".into(),
                code: resp.status().as_u16(),
                body: String::new(),
            });
        }
        Ok(WatchStream {
            body: resp.into_body(),
            messages: Messages::default(),
            from,
        })
    }
}

/// A transaction request, serialized as etcd's gateway reads it (written
/// straight to bytes: a grouped create carries up to a MiB of base64, and
/// a JSON tree of it cost the leader more than the write's answer).
#[derive(Serialize, Default)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failure: Vec<Op>,
}

/// A transaction's condition on one key (base64).
#[derive(Serialize)]
#[serde(tag = "target", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compare {
    /// On the key's create revision: equal to 0, the key does not exist;
    /// greater than 0, it does.
    Create {
        key: String,
        result: CompareResult,
        #[serde(serialize_with = "as_decimal")]
        create_revision: u64,
    },
    /// The key is at `mod_revision`.
    Mod {
        key: String,
        result: CompareResult,
        #[serde(serialize_with = "as_decimal")]
        mod_revision: u64,
    },
}

#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompareResult {
    Equal,
    Greater,
}

/// One operation of a transaction; keys and values base64.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    RequestPut { key: String, value: String },
    RequestRange { key: String },
    RequestDeleteRange { key: String, prev_kv: bool },
}

/// etcd's gateway takes 64-bit integers as decimal strings.
fn as_decimal<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// The messages of one watch, as they arrive.
pub struct WatchStream {
    body: Incoming,
    messages: Messages,
    from: u64,
}

/// One watch message: its events (possibly none: the creation
/// acknowledgement or a progress notice) and the header revision.
pub struct WatchBatch {
    pub events: Vec<WatchEvent>,
    pub revision: u64,
}

impl WatchStream {
    /// The next message; `Stream` when the connection ends.
    pub async fn next(&mut self) -> Result<WatchBatch, EtcdError> {
        loop {
            if let Some(batch) = self.messages.take(self.from)? {
                return Ok(batch);
            }
            match self.body.frame().await {
                None => return Err(EtcdError::Stream("closed by the member".into())),
                Some(Err(e)) => return Err(EtcdError::Stream(e.to_string())),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.messages.push(data);
                    }
                }
            }
        }
    }
}

/// The watch body cut into its messages. The gateway ends each message
/// with a newline (JSON text has none of its own), so a message is parsed
/// once, when its end is there: a batch's transaction is a message of
/// hundreds of KB arriving in many frames, and parsing the buffer from its
/// start at every frame built a tree of everything received so far each
/// time.
#[derive(Default)]
struct Messages {
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no message end.
    scanned: usize,
}

impl Messages {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, decoded, if one is there (blank lines
    /// skipped).
    fn take(&mut self, from: u64) -> Result<Option<WatchBatch>, EtcdError> {
        loop {
            let Some(end) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') else {
                self.scanned = self.buf.len();
                return Ok(None);
            };
            let end = self.scanned + end;
            let blank = self.buf[..end].iter().all(u8::is_ascii_whitespace);
            let parsed = (!blank).then(|| parse_watch(&self.buf[..end], from));
            self.buf.drain(..=end);
            self.scanned = 0;
            if let Some(batch) = parsed {
                return batch.map(Some);
            }
        }
    }
}

/// A watch message as the gateway writes it, read without a tree: its
/// keys and values are base64 strings borrowed from the message (decoded
/// once, into the event), int64s are strings.
#[derive(serde::Deserialize)]
struct RawMessage<'a> {
    #[serde(default)]
    error: Option<Value>,
    #[serde(default, borrow)]
    result: Option<RawResult<'a>>,
}

#[derive(serde::Deserialize)]
struct RawResult<'a> {
    #[serde(default)]
    header: RawHeader,
    #[serde(default, deserialize_with = "raw_int")]
    compact_revision: u64,
    #[serde(default)]
    canceled: bool,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default, borrow)]
    events: Vec<RawEvent<'a>>,
}

#[derive(serde::Deserialize, Default)]
struct RawHeader {
    #[serde(default, deserialize_with = "raw_int")]
    revision: u64,
}

#[derive(serde::Deserialize)]
struct RawEvent<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    kv: RawKeyValue<'a>,
    #[serde(default, borrow)]
    prev_kv: Option<RawKeyValue<'a>>,
}

#[derive(serde::Deserialize)]
struct RawKeyValue<'a> {
    #[serde(default, borrow)]
    key: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    value: std::borrow::Cow<'a, str>,
    #[serde(default, deserialize_with = "raw_int")]
    create_revision: u64,
    #[serde(default, deserialize_with = "raw_int")]
    mod_revision: u64,
}

/// An int64 as the gateway writes it (a string; a number read too).
fn raw_int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(int(&<Value as serde::Deserialize>::deserialize(d)?))
}

impl RawKeyValue<'_> {
    fn decode(&self) -> Result<KeyValue, String> {
        let bytes = |field: &str, s: &str| B64.decode(s).map_err(|e| format!("{field}: {e}"));
        Ok(KeyValue {
            key: bytes("key", &self.key)?,
            value: bytes("value", &self.value)?,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
        })
    }
}

fn parse_watch(msg: &[u8], from: u64) -> Result<WatchBatch, EtcdError> {
    let decode = |detail: String| EtcdError::Decode {
        path: "/v3/watch".into(),
        detail,
    };
    let msg: RawMessage = serde_json::from_slice(msg).map_err(|e| EtcdError::Stream(format!("bad message: {e}")))?;
    if let Some(err) = msg.error {
        return Err(EtcdError::Stream(err.to_string()));
    }
    let r = msg.result.ok_or_else(|| decode("no result in the message".into()))?;
    if r.compact_revision > 0 {
        return Err(EtcdError::Compacted {
            requested: from,
            compact_revision: r.compact_revision,
        });
    }
    if r.canceled {
        return Err(EtcdError::Stream(format!("canceled: {:?}", r.cancel_reason)));
    }
    let mut events = Vec::with_capacity(r.events.len());
    for e in &r.events {
        events.push(WatchEvent {
            deleted: e.kind.as_deref() == Some("DELETE"),
            kv: e.kv.decode().map_err(decode)?,
            prev: e
                .prev_kv
                .as_ref()
                .map(RawKeyValue::decode)
                .transpose()
                .map_err(decode)?,
        });
    }
    Ok(WatchBatch {
        events,
        revision: r.header.revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed request is the JSON etcd's gateway takes (as the
    /// `json!` trees it replaced wrote it).
    #[test]
    fn a_txn_serializes_as_the_gateway_reads_it() {
        let txn = Txn {
            compare: vec![
                Compare::Create {
                    key: "a2V5".into(),
                    result: CompareResult::Equal,
                    create_revision: 0,
                },
                Compare::Mod {
                    key: "a2V5".into(),
                    result: CompareResult::Equal,
                    mod_revision: u64::MAX,
                },
            ],
            success: vec![
                Op::RequestPut {
                    key: "a2V5".into(),
                    value: "dg==".into(),
                },
                Op::RequestDeleteRange {
                    key: "a2V5".into(),
                    prev_kv: true,
                },
            ],
            failure: vec![Op::RequestRange { key: "a2V5".into() }],
        };
        let got: Value = serde_json::from_slice(&serde_json::to_vec(&txn).unwrap()).unwrap();
        assert_eq!(
            got,
            json!({
                "compare": [
                    {"target": "CREATE", "key": "a2V5", "result": "EQUAL", "create_revision": "0"},
                    {"target": "MOD", "key": "a2V5", "result": "EQUAL", "mod_revision": "18446744073709551615"},
                ],
                "success": [
                    {"request_put": {"key": "a2V5", "value": "dg=="}},
                    {"request_delete_range": {"key": "a2V5", "prev_kv": true}},
                ],
                "failure": [{"request_range": {"key": "a2V5"}}],
            })
        );
        let bare = serde_json::to_value(Txn::default()).unwrap();
        assert_eq!(
            bare,
            json!({"compare": [], "success": []}),
            "no failure branch unless given"
        );
    }

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/k8s4r/"), b"/k8s4r0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn a_tls_reason_is_found_inside_io_errors() {
        use std::io::{Error, ErrorKind};
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate);
        let wrapped = Error::other(Error::new(ErrorKind::InvalidData, alert));
        let hint = causes(&wrapped).find_map(|c| tls::hint(c, false));
        assert!(hint.is_some_and(|h| h.contains("--etcd-certfile")), "{hint:?}");
        assert!(with_causes(&wrapped).contains("BadCertificate"));
        // An end of stream is a hint only while connecting.
        let eof = Error::new(ErrorKind::UnexpectedEof, "tls handshake eof");
        assert!(causes(&eof).find_map(|c| tls::hint(c, true)).is_some());
        assert!(causes(&eof).find_map(|c| tls::hint(c, false)).is_none());
        // So is a reset: a plain HTTP member resets a ClientHello it left unread.
        let reset = Error::new(ErrorKind::ConnectionReset, "reset by peer");
        assert!(causes(&reset).find_map(|c| tls::hint(c, true)).is_some());
        assert!(causes(&reset).find_map(|c| tls::hint(c, false)).is_none());
    }

    #[test]
    fn watch_messages_are_cut_at_their_newlines_whatever_the_frames() {
        let one = json!({"result": {"header": {"revision": "7"}, "note": "a\nb"}}).to_string();
        let two = json!({"result": {"header": {"revision": "8"}}}).to_string();
        let body = format!("{one}\n\n{two}\n{{\"result\":");
        for frame in [1, 7, 64, body.len()] {
            let mut m = Messages::default();
            let mut got = Vec::new();
            for piece in body.as_bytes().chunks(frame) {
                m.push(piece);
                while let Some(b) = m.take(1).unwrap() {
                    got.push(b.revision);
                }
            }
            assert_eq!(got, vec![7, 8], "frames of {frame} bytes");
            assert_eq!(m.buf, b"{\"result\":", "the unfinished message waits");
        }
        let mut bad = Messages::default();
        bad.push(b"{nope\n");
        assert!(matches!(bad.take(1), Err(EtcdError::Stream(_))));
    }

    #[test]
    fn watch_messages_decode() {
        let put = json!({"result": {"header": {"revision": "7"}, "events": [
            {"kv": {"key": b64(b"/k/a"), "value": b64(b"{}"), "create_revision": "7", "mod_revision": "7"}},
            {"type": "DELETE", "kv": {"key": b64(b"/k/b"), "mod_revision": "7"},
             "prev_kv": {"key": b64(b"/k/b"), "value": b64(b"1"), "create_revision": "3", "mod_revision": "5"}}
        ]}});
        let b = parse_watch(put.to_string().as_bytes(), 1).unwrap();
        assert_eq!(b.revision, 7);
        assert!(!b.events[0].deleted && b.events[0].prev.is_none());
        assert!(b.events[1].deleted);
        assert_eq!(b.events[1].prev.as_ref().unwrap().mod_revision, 5);
        let compacted = json!({"result": {"canceled": true, "compact_revision": "3"}});
        assert!(matches!(
            parse_watch(compacted.to_string().as_bytes(), 1),
            Err(EtcdError::Compacted {
                requested: 1,
                compact_revision: 3
            })
        ));
        assert!(parse_watch(json!({"nope": 1}).to_string().as_bytes(), 1).is_err());
        let escaped = br#"{"result": {"header": {"revision": 9}, "events": [{"kv": {"key": "L2sv\u0059Q==", "value": "e30=", "mod_revision": "9"}}]}}"#;
        let b = parse_watch(escaped, 1).unwrap();
        assert_eq!(
            (b.revision, b.events[0].kv.key.as_slice()),
            (9, &b"/k/a"[..]),
            "escapes and numbers read too"
        );
    }
}
