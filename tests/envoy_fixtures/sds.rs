//! A SPIRE-agent stand-in for tests: the SDS v3 API
//! (`envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets`) over
//! gRPC on a unix socket, serving openssl-made SVIDs and trust bundles.
//!
//! Hand-written on std: just enough HTTP/2 (frames, a fixed HPACK response
//! header block; request headers are never decoded, which HPACK allows since
//! each direction has its own compression context) and protobuf (the few
//! fields of DiscoveryRequest/Response, Secret and friends) to be Envoy's
//! SDS server. Like SPIRE, bundles come with Envoy's SPIFFE certificate
//! validator (`envoy.tls.cert_validator.spiffe`), and a rotated SVID is
//! pushed on the open streams.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const SPIFFE_VALIDATOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig";

/// What the fixture serves, by SDS resource name.
#[derive(Default)]
struct State {
    version: u64,
    /// name → encoded `Secret`.
    secrets: HashMap<String, Vec<u8>>,
    /// Open streams: (writer, stream id, subscribed names).
    streams: Vec<(Arc<Mutex<UnixStream>>, u32, Vec<String>)>,
    /// Every resource name Envoy asked for, in order.
    requested: Vec<String>,
    /// NACKs (error_detail set) Envoy sent back.
    nacks: u32,
}

pub struct SdsServer {
    pub socket: PathBuf,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How bundles are served, as SPIRE's `disable_spiffe_cert_validation`
/// setting chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleForm {
    /// Envoy's SPIFFE certificate validator with the trust domain's bundle
    /// (SPIRE's default).
    SpiffeValidator,
    /// A plain `trusted_ca` (SPIRE with `disable_spiffe_cert_validation`).
    TrustedCa,
}

impl SdsServer {
    /// Serve on `socket`: `svid_name` → (cert PEM, key PEM), and one bundle
    /// per (trust domain, CA PEM), named `spiffe://<td>` as SPIRE does.
    pub fn start(socket: &Path, svid_name: &str, svid: (&[u8], &[u8]), bundles: &[(&str, &[u8])]) -> SdsServer {
        SdsServer::start_with(socket, svid_name, svid, bundles, BundleForm::SpiffeValidator)
    }

    /// SPIRE's agent as a group's Envoy asks it: the SVID `default` from
    /// `svid`, and `ca`'s trust domain bundle.
    pub fn spire(socket: &Path, svid: &super::Leaf, ca: &super::Ca) -> SdsServer {
        let read = |p: &Path| std::fs::read(p).expect("read a test certificate");
        SdsServer::start(
            socket,
            "default",
            (&read(&svid.cert), &read(&svid.key)),
            &[(&ca.trust_domain, &read(&ca.cert))],
        )
    }

    pub fn start_with(
        socket: &Path,
        svid_name: &str,
        svid: (&[u8], &[u8]),
        bundles: &[(&str, &[u8])],
        form: BundleForm,
    ) -> SdsServer {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).expect("bind SDS socket");
        // Open to every user, as SPIRE's agent makes its Workload API
        // socket: the proxy may run unprivileged (`--proxy-user`).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).expect("chmod SDS socket");
        }
        let mut state = State {
            version: 1,
            ..Default::default()
        };
        state
            .secrets
            .insert(svid_name.to_string(), tls_certificate(svid_name, svid.0, svid.1));
        for (td, ca) in bundles {
            let name = format!("spiffe://{td}");
            let secret = match form {
                BundleForm::SpiffeValidator => spiffe_validation_context(&name, td, ca),
                BundleForm::TrustedCa => trusted_ca_validation_context(&name, ca),
            };
            state.secrets.insert(name, secret);
        }
        let state = Arc::new(Mutex::new(state));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, flag) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(c) = conn {
                    let st = st.clone();
                    std::thread::spawn(move || {
                        let _ = serve(c, st);
                    });
                }
            }
        });
        SdsServer {
            socket: socket.to_path_buf(),
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Replace the SVID `name` and push it to every stream watching it, the
    /// way SPIRE rotates a workload's certificate.
    pub fn rotate(&self, name: &str, cert: &[u8], key: &[u8]) {
        let mut st = self.state.lock().unwrap();
        st.version += 1;
        st.secrets.insert(name.to_string(), tls_certificate(name, cert, key));
        let version = st.version;
        let secret = st.secrets[name].clone();
        for (writer, stream, names) in &st.streams {
            if names.iter().any(|n| n == name) {
                let _ = send_response(writer, *stream, version, std::slice::from_ref(&secret));
            }
        }
    }

    pub fn requested(&self) -> Vec<String> {
        self.state.lock().unwrap().requested.clone()
    }

    pub fn nacks(&self) -> u32 {
        self.state.lock().unwrap().nacks
    }
}

impl Drop for SdsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for (w, _, _) in &self.state.lock().unwrap().streams {
            if let Ok(s) = w.lock() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

// ---------------------------------------------------------------- HTTP/2

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const MAX_FRAME: usize = 16_384;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn write_frame(w: &Arc<Mutex<UnixStream>>, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> io::Result<()> {
    let mut frame = Vec::with_capacity(9 + payload.len());
    let len = payload.len() as u32;
    frame.extend_from_slice(&len.to_be_bytes()[1..]);
    frame.push(kind);
    frame.push(flags);
    frame.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    frame.extend_from_slice(payload);
    w.lock().unwrap().write_all(&frame)
}

fn serve(conn: UnixStream, state: Arc<Mutex<State>>) -> io::Result<()> {
    let mut reader = conn.try_clone()?;
    let writer = Arc::new(Mutex::new(conn));
    let mut preface = [0u8; 24];
    reader.read_exact(&mut preface)?;
    if preface != PREFACE {
        return Err(io::Error::other("not an HTTP/2 client"));
    }
    write_frame(&writer, SETTINGS, 0, 0, &[])?;
    // Partial gRPC messages per stream.
    let mut buffers: HashMap<u32, Vec<u8>> = HashMap::new();
    loop {
        let mut head = [0u8; 9];
        reader.read_exact(&mut head)?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        reader.read_exact(&mut payload)?;
        match kind {
            SETTINGS if flags & FLAG_ACK == 0 => write_frame(&writer, SETTINGS, FLAG_ACK, 0, &[])?,
            PING if flags & FLAG_ACK == 0 => write_frame(&writer, PING, FLAG_ACK, 0, &payload)?,
            HEADERS => {
                // A new call: answer with `:status 200`, `content-type:
                // application/grpc` (HPACK: indexed :status 200, then a
                // literal without indexing on static name 31).
                let mut block = vec![0x88, 0x0f, 0x10, 16];
                block.extend_from_slice(b"application/grpc");
                write_frame(&writer, HEADERS, FLAG_END_HEADERS, stream, &block)?;
                buffers.entry(stream).or_default();
            }
            DATA => {
                let mut data: &[u8] = &payload;
                if flags & FLAG_PADDED != 0 && !data.is_empty() {
                    let pad = data[0] as usize;
                    data = &data[1..data.len().saturating_sub(pad)];
                }
                if len > 0 {
                    let inc = (len as u32).to_be_bytes();
                    write_frame(&writer, WINDOW_UPDATE, 0, 0, &inc)?;
                    write_frame(&writer, WINDOW_UPDATE, 0, stream, &inc)?;
                }
                let buf = buffers.entry(stream).or_default();
                buf.extend_from_slice(data);
                while buf.len() >= 5 {
                    let n = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                    if buf.len() < 5 + n {
                        break;
                    }
                    let msg: Vec<u8> = buf.drain(..5 + n).skip(5).collect();
                    on_request(&writer, stream, &msg, &state)?;
                }
            }
            RST_STREAM => {
                buffers.remove(&stream);
                state
                    .lock()
                    .unwrap()
                    .streams
                    .retain(|(w, s, _)| !(Arc::ptr_eq(w, &writer) && *s == stream));
            }
            GOAWAY => return Ok(()),
            _ => {}
        }
    }
}

fn on_request(writer: &Arc<Mutex<UnixStream>>, stream: u32, msg: &[u8], state: &Mutex<State>) -> io::Result<()> {
    let req = DiscoveryRequest::decode(msg).ok_or_else(|| io::Error::other("bad DiscoveryRequest"))?;
    let mut st = state.lock().unwrap();
    if req.nack {
        st.nacks += 1;
    }
    let known = st
        .streams
        .iter()
        .position(|(w, s, _)| Arc::ptr_eq(w, writer) && *s == stream);
    let is_new = match known {
        Some(i) if st.streams[i].2 == req.names => false,
        Some(i) => {
            st.streams[i].2 = req.names.clone();
            true
        }
        None => {
            st.streams.push((writer.clone(), stream, req.names.clone()));
            true
        }
    };
    // An ACK/NACK of what we sent needs no answer; a (re)subscription does.
    if is_new || req.nonce.is_empty() {
        st.requested.extend(req.names.iter().cloned());
        let resources: Vec<Vec<u8>> = req.names.iter().filter_map(|n| st.secrets.get(n).cloned()).collect();
        send_response(writer, stream, st.version, &resources)?;
    }
    Ok(())
}

fn send_response(writer: &Arc<Mutex<UnixStream>>, stream: u32, version: u64, secrets: &[Vec<u8>]) -> io::Result<()> {
    let mut resp = Vec::new();
    field_bytes(&mut resp, 1, version.to_string().as_bytes());
    for s in secrets {
        field_bytes(&mut resp, 2, &any(SECRET_TYPE, s));
    }
    field_bytes(&mut resp, 4, SECRET_TYPE.as_bytes());
    field_bytes(&mut resp, 5, version.to_string().as_bytes());
    let mut grpc = vec![0u8];
    grpc.extend_from_slice(&(resp.len() as u32).to_be_bytes());
    grpc.extend_from_slice(&resp);
    for chunk in grpc.chunks(MAX_FRAME) {
        write_frame(writer, DATA, 0, stream, chunk)?;
    }
    Ok(())
}

// ---------------------------------------------------------------- protobuf

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    varint(out, u64::from(field) << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// google.protobuf.Any { type_url = 1, value = 2 }
fn any(type_url: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    field_bytes(&mut out, 1, type_url.as_bytes());
    field_bytes(&mut out, 2, value);
    out
}

/// config.core.v3.DataSource { inline_bytes = 2 }
fn inline_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    field_bytes(&mut out, 2, bytes);
    out
}

/// Secret { name = 1, tls_certificate = 2 { certificate_chain = 1, private_key = 2 } }
fn tls_certificate(name: &str, cert: &[u8], key: &[u8]) -> Vec<u8> {
    let mut tls = Vec::new();
    field_bytes(&mut tls, 1, &inline_bytes(cert));
    field_bytes(&mut tls, 2, &inline_bytes(key));
    let mut secret = Vec::new();
    field_bytes(&mut secret, 1, name.as_bytes());
    field_bytes(&mut secret, 2, &tls);
    secret
}

/// Secret { name = 1, validation_context = 4 { custom_validator_config = 12
/// { name = 1, typed_config = 2: SPIFFECertValidatorConfig { trust_domains
/// = 1 { name = 1, trust_bundle = 2 } } } } }
fn spiffe_validation_context(name: &str, trust_domain: &str, ca: &[u8]) -> Vec<u8> {
    let mut td = Vec::new();
    field_bytes(&mut td, 1, trust_domain.as_bytes());
    field_bytes(&mut td, 2, &inline_bytes(ca));
    let mut validator = Vec::new();
    field_bytes(&mut validator, 1, &td);
    let mut ext = Vec::new();
    field_bytes(&mut ext, 1, b"envoy.tls.cert_validator.spiffe");
    field_bytes(&mut ext, 2, &any(SPIFFE_VALIDATOR_TYPE, &validator));
    let mut ctx = Vec::new();
    field_bytes(&mut ctx, 12, &ext);
    let mut secret = Vec::new();
    field_bytes(&mut secret, 1, name.as_bytes());
    field_bytes(&mut secret, 4, &ctx);
    secret
}

/// Secret { name = 1, validation_context = 4 { trusted_ca = 1 } }
fn trusted_ca_validation_context(name: &str, ca: &[u8]) -> Vec<u8> {
    let mut ctx = Vec::new();
    field_bytes(&mut ctx, 1, &inline_bytes(ca));
    let mut secret = Vec::new();
    field_bytes(&mut secret, 1, name.as_bytes());
    field_bytes(&mut secret, 4, &ctx);
    secret
}

/// The parts of envoy.service.discovery.v3.DiscoveryRequest we use:
/// resource_names = 3, response_nonce = 5, error_detail = 6.
struct DiscoveryRequest {
    names: Vec<String>,
    nonce: String,
    nack: bool,
}

impl DiscoveryRequest {
    fn decode(mut buf: &[u8]) -> Option<DiscoveryRequest> {
        let mut req = DiscoveryRequest {
            names: Vec::new(),
            nonce: String::new(),
            nack: false,
        };
        while !buf.is_empty() {
            let key = read_varint(&mut buf)?;
            let (field, wire) = (key >> 3, key & 7);
            match wire {
                0 => {
                    read_varint(&mut buf)?;
                }
                1 => buf = buf.get(8..)?,
                5 => buf = buf.get(4..)?,
                2 => {
                    let n = usize::try_from(read_varint(&mut buf)?).ok()?;
                    let value = buf.get(..n)?;
                    buf = &buf[n..];
                    match field {
                        3 => req.names.push(String::from_utf8_lossy(value).into_owned()),
                        5 => req.nonce = String::from_utf8_lossy(value).into_owned(),
                        6 => req.nack = true,
                        _ => {}
                    }
                }
                _ => return None,
            }
        }
        Some(req)
    }
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}
