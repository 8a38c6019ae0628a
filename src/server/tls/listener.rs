//! The HTTPS listener: TLS handshakes off the accept loop (each bounded in
//! time, at most `MAX_HANDSHAKES` at once), and the identity of a
//! verified client certificate handed to every request of its connection
//! as a [`CertUser`] extension, for authentication to read.
//!
//! It is an [`axum::serve::Listener`], so the server keeps axum's
//! connection handling and graceful shutdown on HTTPS as on plain HTTP.

use crate::server::auth::{CertUser, User};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::serve::IncomingStream;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client has this long to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; connections beyond are closed at once
/// (a flood of idle connections cannot hold a task each).
const MAX_HANDSHAKES: usize = 1024;
/// Connections handshaken but not yet taken by the server.
const READY_QUEUE: usize = 128;

/// Who is on the other end of a connection: its address and, when it
/// presented a certificate the client CA signed, that user.
#[derive(Clone, Debug)]
pub struct TlsPeer {
    pub addr: SocketAddr,
    pub user: Option<CertUser>,
}

impl Connected<IncomingStream<'_, TlsListener>> for TlsPeer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, TlsPeer)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accept on `tcp`, handshaking with `acceptor` in tasks of their own.
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        tokio::spawn(accept_loop(tcp, acceptor, tx));
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = TlsPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop ends only once this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<TlsPeer> {
        Ok(TlsPeer {
            addr: self.local,
            user: None,
        })
    }
}

async fn accept_loop(tcp: TcpListener, acceptor: TlsAcceptor, ready: mpsc::Sender<(TlsStream<TcpStream>, TlsPeer)>) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            _ = ready.closed() => return,
            a = tcp.accept() => a,
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                accept_error(e).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            log::warn!("closing a connection from {addr}: {MAX_HANDSHAKES} TLS handshakes already in progress");
            continue;
        };
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    log::debug!("TLS handshake with {addr} failed: {e}");
                    return;
                }
                Err(_) => {
                    log::debug!("TLS handshake with {addr} took longer than {HANDSHAKE_TIMEOUT:?}");
                    return;
                }
            };
            drop(slot);
            let user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| cert_user(leaf));
            let _ = ready.send((tls, TlsPeer { addr, user })).await;
        });
    }
}

/// As axum's own listener: errors of one connection are skipped, others
/// (out of file descriptors) wait a second so the loop does not spin.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) {
        return;
    }
    log::error!("accepting a connection: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The user a verified certificate names: CN is the name, each O a group
/// (kube-apiserver's reading). None without a usable CN.
pub fn cert_user(der: &[u8]) -> Option<CertUser> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    if name.is_empty() {
        return None;
    }
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(CertUser(User { name, groups }))
}

/// Put the connection's peer address and [`CertUser`] into each request's
/// extensions.
pub async fn insert_cert_user(mut req: axum::extract::Request) -> axum::extract::Request {
    let peer = req
        .extensions()
        .get::<ConnectInfo<TlsPeer>>()
        .map(|ConnectInfo(p)| p.clone());
    if let Some(peer) = peer {
        // The plain peer address too, as the plain listeners give it (the
        // audit log's sourceIPs reads it).
        req.extensions_mut().insert(ConnectInfo(peer.addr));
        if let Some(user) = peer.user {
            req.extensions_mut().insert(user);
        }
    }
    req
}

/// Whether `req` came through the TLS listener.
pub fn over_tls(req: &axum::extract::Request) -> bool {
    req.extensions().get::<ConnectInfo<TlsPeer>>().is_some()
}
