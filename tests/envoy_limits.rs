//! What a network peer can and cannot do to a group's proxy: a flood of
//! idle connections to an inbound port must not starve the apps' loopback
//! proxies (issue 22, the review's High finding), and stalled HTTP/2 streams
//! must not grow the proxy past its budget. Real Envoy on loopback.

mod common;
mod envoy_fixtures;

use common::wait_for;
use envoy_fixtures::*;
use k8s4r::api::Protocol;
use k8s4r::envoy::{self, GroupProxy, Inbound, ProxyExtras, ProxyOptions};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// More connections than the overload manager's global budget (1,024).
const FLOOD: usize = 1_100;

/// The test holds `FLOOD` sockets at once: raise the soft fd limit to what
/// it needs (within the hard limit); Envoy inherits it.
fn raise_fd_limit(want: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current.is_some_and(|c| c < want) {
        l.current = Some(l.maximum.map_or(want, |m| m.min(want)));
        setrlimit(Resource::Nofile, l).expect("raise RLIMIT_NOFILE");
    }
    let now = getrlimit(Resource::Nofile).current;
    assert!(
        now.is_none_or(|c| c >= want),
        "fd limit {now:?} < {want}: cannot run the flood"
    );
}

#[test]
fn an_inbound_flood_does_not_starve_the_apps_outbound_proxy() {
    let Some(bin) = envoy_or_skip("an_inbound_flood_does_not_starve_the_apps_outbound_proxy") else {
        return;
    };
    raise_fd_limit(4096);
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new(tmp.path(), "example.org");
    let leaf = ca.leaf("robot", "spiffe://example.org/robot", 1);
    let echo = Server::echo();
    let (out_port, in_port) = (free_port(), free_port());
    let mut network = plain_network(vec![upstream(
        "db",
        out_port,
        &format!("127.0.0.1:{}", echo.port),
        Protocol::Tcp,
        false,
    )]);
    network.tls_files = Some(ca.files(&leaf));
    let g = GroupProxy {
        envoy_bin: bin.clone(),
        ..proxy("flood", &tmp.path().join("flood"), network)
    };
    let options = ProxyOptions {
        // Short, so the test sees idle peers dropped within its deadline.
        inbound_handshake_timeout_s: 3,
        ..Default::default()
    };
    let limit = options.inbound_max_connections;
    let extras = ProxyExtras {
        inbound: vec![Inbound {
            name: "api".into(),
            port: in_port.into(),
            target_port: echo.port.into(),
            address: Some("127.0.0.1".into()),
            allowed_spiffe_ids: vec!["spiffe://example.org/peer".into()],
            spiffe: None,
        }],
        options,
    };
    let launch = envoy::prepare_with(&g, &extras).unwrap();
    let mut e = Envoy::start(&launch, g.dir.join("envoy.log"));
    e.wait_ready();

    // The app's long-lived connection, open before the flood.
    let mut app = connect(out_port).unwrap();
    assert_eq!(roundtrip(&mut app, b"before").unwrap(), b"before");

    let started = Instant::now();
    let mut flood: Vec<TcpStream> = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let s = TcpStream::connect_timeout(&([127, 0, 0, 1], in_port).into(), IO)
            .unwrap_or_else(|err| panic!("flood connection {i}: {err}"));
        flood.push(s);
    }
    // Envoy has taken every connect off the backlog: its own limit closed
    // the ones past it, the rest wait in their handshake.
    wait_for("the flood accepted by Envoy", READY, || {
        let seen =
            e.stat("listener.in-api.downstream_cx_total") + e.stat("listener.in-api.downstream_global_cx_overflow");
        (seen >= FLOOD as u64).then_some(())
    });
    // Meanwhile the app's proxy keeps forwarding: new connections and the
    // one it already had.
    for i in 0..50 {
        let msg = format!("during {i}");
        assert_eq!(echo_through(out_port, msg.as_bytes()).unwrap(), msg.as_bytes());
    }
    assert_eq!(roundtrip(&mut app, b"still").unwrap(), b"still");
    assert_eq!(e.stat("listener.out-db.downstream_global_cx_overflow"), 0);
    assert_eq!(e.stat("listener.in-api.downstream_global_cx_overflow"), 0);

    let active = e.stat("connection_limit.in-api.active_connections");
    assert!(
        active <= u64::from(limit),
        "{active} inbound connections held, limit {limit}"
    );
    assert!(
        e.stat("connection_limit.in-api.limited_connections") >= (FLOOD as u64).saturating_sub(limit.into()),
        "connections past the inbound limit are refused"
    );

    // Idle peers never finish a handshake: dropped after its timeout.
    wait_for("idle inbound peers dropped after the handshake timeout", READY, || {
        (e.stat("listener.in-api.downstream_cx_transport_socket_connect_timeout") >= 1
            && e.stat("connection_limit.in-api.active_connections") == 0)
            .then_some(())
    });
    // Refused peers are in the failures-only access log; the app's
    // connections (outbound, never refused) are not.
    let log = e.log_text();
    assert!(log.contains("inbound in-api: refused 127.0.0.1:"), "{log}");
    assert!(!log.contains("out-db"), "{log}");
    drop(flood);
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    e.wait_ready();
}

/// HTTP/2 streams that stall against a group's proxy (needs tokio for the
/// real HTTP/2 client and server: server builds only).
#[cfg(feature = "server")]
mod stalled_h2 {
    use super::*;

    /// Envoy's resident memory (VmRSS), in bytes.
    fn rss(pid: u32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    /// What each stalled stream tries to send: far more than Envoy's windows
    /// admit (with Envoy's default 256 MiB stream window it would all be
    /// taken, and held, by Envoy).
    const PER_STREAM: u64 = 16 * 1024 * 1024;
    /// Most Envoy may grow for four stalled HTTP/2 streams (issue 22).
    const STALL_BUDGET: u64 = 2 * 1024 * 1024;

    /// One stalled stream's progress, as the client sees it.
    #[derive(Default)]
    struct Progress {
        /// Bytes Envoy's flow-control windows have let the client send.
        sent: std::sync::atomic::AtomicU64,
        /// Waiting for Envoy to open its window.
        blocked: std::sync::atomic::AtomicBool,
    }

    /// An HTTP/2 server that answers each request's headers and never reads a
    /// request body (its windows never reopen); its port, and how many
    /// streams it was opened.
    fn never_reading_h2_upstream(
        rt: &tokio::runtime::Runtime,
    ) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = opened.clone();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        rt.spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(sock).await else {
                        return;
                    };
                    let mut held = Vec::new();
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        let head = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap();
                        let open = respond.send_response(head, false);
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        // Held, never polled: the body's bytes are never released.
                        held.push((req.into_body(), open));
                    }
                });
            }
        });
        (port, opened)
    }

    /// Open four gRPC streams through Envoy on `port` and push `PER_STREAM`
    /// bytes on each as fast as Envoy's windows allow; responses are never read.
    fn push_four_streams(rt: &tokio::runtime::Runtime, port: u16) -> Vec<std::sync::Arc<Progress>> {
        use std::sync::atomic::Ordering::SeqCst;
        let progress: Vec<_> = (0..4).map(|_| std::sync::Arc::new(Progress::default())).collect();
        let mine = progress.clone();
        rt.spawn(async move {
            let sock = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let (client, conn) = h2::client::handshake(sock).await.unwrap();
            tokio::spawn(conn);
            let mut client = client.ready().await.unwrap();
            let mut unread = Vec::new();
            for p in mine {
                let req = http::Request::post(format!("http://127.0.0.1:{port}/stall.Sink/Push"))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(())
                    .unwrap();
                let (response, mut body) = client.send_request(req, false).unwrap();
                unread.push(response);
                client = client.ready().await.unwrap();
                tokio::spawn(async move {
                    while p.sent.load(SeqCst) < PER_STREAM {
                        body.reserve_capacity(64 * 1024);
                        p.blocked.store(true, SeqCst);
                        let granted = std::future::poll_fn(|cx| body.poll_capacity(cx)).await;
                        p.blocked.store(false, SeqCst);
                        let Some(Ok(n)) = granted else { return };
                        if body.send_data(bytes::Bytes::from(vec![0u8; n]), false).is_err() {
                            return;
                        }
                        p.sent.fetch_add(n as u64, SeqCst);
                    }
                });
            }
            // Responses stay unread for as long as the runtime lives.
            std::future::pending::<()>().await;
            drop(unread);
        });
        progress
    }

    /// Four gRPC streams to an upstream that never reads: the group's Envoy
    /// holds only what its HTTP/2 stream and connection windows admit
    /// (src/envoy/templates/http2_options.json), so they add at most 2 MiB of
    /// its resident memory, where Envoy's defaults let them add 23 MiB.
    #[test]
    fn four_stalled_grpc_streams_add_at_most_2_mib_to_the_proxy() {
        use std::sync::atomic::Ordering::SeqCst;
        let Some(bin) = envoy_or_skip("four_stalled_grpc_streams_add_at_most_2_mib_to_the_proxy") else {
            return;
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (up, opened) = never_reading_h2_upstream(&rt);
        let tmp = tempfile::tempdir().unwrap();
        let port = free_port();
        let network = plain_network(vec![upstream(
            "events",
            port,
            &format!("127.0.0.1:{up}"),
            Protocol::Grpc,
            false,
        )]);
        let g = GroupProxy {
            envoy_bin: bin,
            ..proxy("stall", &tmp.path().join("stall"), network)
        };
        let mut e = Envoy::run(&g);
        e.wait_ready();
        let before = rss(e.pid());

        let streams = push_four_streams(&rt, port);
        let sent = || streams.iter().map(|p| p.sent.load(SeqCst)).collect::<Vec<_>>();
        // Stalled: every stream has sent what the windows allowed and waits
        // for Envoy to open them again, which it does not while the
        // upstream holds its bytes (no change for a while); or one stream
        // got everything through, which Envoy's defaults allow.
        let (mut last, mut since) = (Vec::new(), Instant::now());
        let stalled = wait_for("four streams stalled on Envoy's windows", READY, || {
            let now = sent();
            if now != last {
                (last, since) = (now.clone(), Instant::now());
            }
            let all_blocked = streams.iter().all(|p| p.blocked.load(SeqCst));
            let quiet = since.elapsed() >= Duration::from_millis(300);
            let through = now.iter().any(|n| *n >= PER_STREAM);
            ((all_blocked && quiet && now.iter().all(|n| *n > 0)) || through).then_some(now)
        });
        let bounded = |sent: &[u64]| sent.iter().all(|n| *n < PER_STREAM / 16);
        assert!(bounded(&stalled), "Envoy's windows bound each stream: {stalled:?}");
        assert_eq!(opened.load(SeqCst), 4, "every stream reached the upstream");
        // What they cost stays within budget while they stay open.
        let mut grew = 0;
        common::throughout(
            "Envoy within budget with four stalled streams",
            Duration::from_secs(2),
            || {
                grew = grew.max(rss(e.pid()).saturating_sub(before));
                if grew > STALL_BUDGET {
                    return Err(format!("Envoy grew {grew} bytes for four stalled streams"));
                }
                Ok(())
            },
        );
        assert!(bounded(&sent()), "still bounded: {:?}", sent());
        eprintln!(
            "four stalled HTTP/2 streams: {stalled:?} bytes admitted; Envoy RSS {} KiB, +{} KiB at most",
            before / 1024,
            grew / 1024
        );
    }
}
