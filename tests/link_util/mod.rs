//! A recording, lossy relay for the agent's link (the kernel here has no
//! netem): a userspace TCP proxy on loopback between a connected agent and
//! the server's agent listener. It counts the application bytes both ways,
//! per exchange (request and its answer, named by the request's path), and
//! can make the link bad: refuse a fraction of connections, stall or cut
//! one mid-answer, add latency and jitter, cap the bandwidth, or cut the
//! link for a while. The delays here simulate the link; tests still wait
//! for conditions with deadlines.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How bad the link is; change it at any time with [`Relay::set`].
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Share of new connections closed at once (the agent's request fails).
    pub drop: f64,
    /// Share of answers held `stall_for`, then the connection cut (the
    /// request reached the server).
    pub stall: f64,
    pub stall_for: Duration,
    /// Share of answers cut halfway through.
    pub reset: f64,
    /// The next this many answers are cut halfway through whatever the
    /// dice say, so a test knows the link failed while it mattered.
    pub reset_next: u64,
    /// Added to every chunk, each way, plus up to `jitter` more.
    pub latency: Duration,
    pub jitter: Duration,
    /// Bits per second each way; 0 = unlimited.
    pub bits_per_sec: u64,
}

/// One request and its answer, as relayed.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// What the request asked for: `assignments`, `status`, `logs`,
    /// `register` (the path after the robot's name), or `other`.
    pub kind: String,
    pub up: u64,
    pub down: u64,
    /// Index of the TCP connection it went over.
    pub connection: u64,
}

#[derive(Default)]
struct Counts {
    exchanges: Vec<Exchange>,
    connections: u64,
    dropped: u64,
    stalled: u64,
    reset: u64,
}

struct Shared {
    faults: Mutex<Faults>,
    counts: Mutex<Counts>,
    cut_until: Mutex<Option<Instant>>,
    stop: AtomicBool,
    rng: AtomicU64,
}

pub struct Relay {
    /// `http://127.0.0.1:PORT`: give this to the agent as its server.
    pub base: String,
    shared: Arc<Shared>,
    accept: Option<std::thread::JoinHandle<()>>,
    addr: std::net::SocketAddr,
}

/// What happens to a connection, decided when it is accepted.
#[derive(Clone, Copy, PartialEq)]
enum Fate {
    Pass,
    Stall,
    Reset,
}

const READ_TICK: Duration = Duration::from_millis(50);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// A uniform number in [0, 1) (xorshift; reproducible per seed).
    fn roll(&self) -> f64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    fn cut(&self) -> bool {
        lock(&self.cut_until).is_some_and(|t| Instant::now() < t)
    }

    fn done(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.cut()
    }
}

impl Relay {
    /// A relay to `upstream` (`http://host:port`), passing everything.
    pub fn start(upstream: &str) -> Relay {
        Relay::start_on("127.0.0.1", upstream)
    }

    /// A relay listening on `ip` (e.g. the host end of a veth pair, for an
    /// agent in a network namespace).
    pub fn start_on(ip: &str, upstream: &str) -> Relay {
        let target = upstream.trim_start_matches("http://").trim_end_matches('/').to_string();
        let listener = TcpListener::bind((ip, 0)).expect("bind the relay");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            faults: Mutex::new(Faults::default()),
            counts: Mutex::new(Counts::default()),
            cut_until: Mutex::new(None),
            stop: AtomicBool::new(false),
            rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                let target = target.clone();
                std::thread::spawn(move || serve(s, conn, &target));
            }
        });
        Relay {
            base: format!("http://{addr}"),
            shared,
            accept: Some(accept),
            addr,
        }
    }

    pub fn set(&self, faults: Faults) {
        *lock(&self.shared.faults) = faults;
    }

    /// Cut the link for `d`: open connections end, new ones are refused.
    pub fn cut_for(&self, d: Duration) {
        *lock(&self.shared.cut_until) = Some(Instant::now() + d);
    }

    pub fn exchanges(&self) -> Vec<Exchange> {
        lock(&self.shared.counts).exchanges.clone()
    }

    /// Forget what was counted so far (connections already open keep
    /// counting into new exchanges).
    pub fn reset_counts(&self) {
        let mut c = lock(&self.shared.counts);
        c.exchanges.clear();
        c.connections = 0;
    }

    /// TCP connections accepted since the last [`Relay::reset_counts`].
    pub fn connections(&self) -> u64 {
        lock(&self.shared.counts).connections
    }

    /// (dropped, stalled, reset) connections so far.
    pub fn faults_fired(&self) -> (u64, u64, u64) {
        let c = lock(&self.shared.counts);
        (c.dropped, c.stalled, c.reset)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve(s: Arc<Shared>, client: TcpStream, target: &str) {
    if s.cut() || s.roll() < lock(&s.faults).drop {
        lock(&s.counts).dropped += u64::from(!s.cut());
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(server) = TcpStream::connect(target) else {
        return;
    };
    let connection = {
        let mut c = lock(&s.counts);
        c.connections += 1;
        c.connections
    };
    // The index of this connection's current exchange in `exchanges`
    // (None until its first request).
    let current: Arc<Mutex<Option<usize>>> = Arc::default();
    // What happens to the answer of the request in flight, rolled for each
    // request (a kept-alive connection meets the link's faults too).
    let fate: Arc<Mutex<Option<Fate>>> = Arc::default();
    let up = {
        let (s, current, fate) = (s.clone(), current.clone(), fate.clone());
        let (from, to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        std::thread::spawn(move || pump(&s, from, to, &current, connection, true, &fate))
    };
    pump(&s, server, client, &current, connection, false, &fate);
    let _ = up.join();
}

/// The fate of the next answer.
fn roll_fate(s: &Shared) -> Fate {
    let f = {
        let mut f = lock(&s.faults);
        if f.reset_next > 0 {
            f.reset_next -= 1;
            return Fate::Reset;
        }
        f.clone()
    };
    if s.roll() < f.stall {
        Fate::Stall
    } else if s.roll() < f.reset {
        Fate::Reset
    } else {
        Fate::Pass
    }
}

/// The request's kind from the start of its head, if `chunk` starts one.
fn request_kind(chunk: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(&chunk[..chunk.len().min(200)]);
    let path = text
        .strip_prefix("GET ")
        .or_else(|| text.strip_prefix("POST "))?
        .split([' ', '?'])
        .next()?
        .to_string();
    let kind = if path == "/agent/v1/register" {
        "register".to_string()
    } else if let Some(rest) = path.strip_prefix("/agent/v1/robots/") {
        rest.split('/').nth(1).unwrap_or("other").to_string()
    } else {
        "other".to_string()
    };
    Some(kind)
}

/// Copy `from` → `to` (`up`: agent to server) until either side ends,
/// counting, and applying the link's faults. A reader stamps each chunk
/// with when it is due at the far end (latency and jitter, never before
/// the chunk ahead of it: TCP keeps order); a writer delivers it then, at
/// the capped rate.
fn pump(
    s: &Arc<Shared>,
    mut from: TcpStream,
    to: TcpStream,
    current: &Mutex<Option<usize>>,
    connection: u64,
    up: bool,
    fate: &Arc<Mutex<Option<Fate>>>,
) {
    let _ = from.set_read_timeout(Some(READ_TICK));
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = {
        let s = s.clone();
        let fate = fate.clone();
        let to_close = from.try_clone().ok();
        let mut to = to.try_clone().unwrap();
        std::thread::spawn(move || {
            while let Ok((due, chunk)) = rx.recv() {
                if s.done() {
                    break;
                }
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let this = if up { None } else { lock(&fate).take() };
                if let Some(this) = this {
                    match this {
                        Fate::Stall => {
                            lock(&s.counts).stalled += 1;
                            let hold = lock(&s.faults).stall_for;
                            std::thread::sleep(hold);
                            break;
                        }
                        Fate::Reset => {
                            lock(&s.counts).reset += 1;
                            let _ = to.write_all(&chunk[..chunk.len() / 2]);
                            break;
                        }
                        Fate::Pass => {}
                    }
                }
                if to.write_all(&chunk).is_err() {
                    break;
                }
                let bps = lock(&s.faults).bits_per_sec;
                if bps > 0 {
                    std::thread::sleep(Duration::from_secs_f64(chunk.len() as f64 * 8.0 / bps as f64));
                }
            }
            let _ = to.shutdown(Shutdown::Both);
            if let Some(f) = to_close {
                let _ = f.shutdown(Shutdown::Both);
            }
        })
    };
    let mut buf = vec![0u8; 16 * 1024];
    let mut last_due = Instant::now();
    loop {
        if s.done() {
            break;
        }
        let faults = lock(&s.faults).clone();
        // Capped links move small chunks, so the delay follows the bytes.
        let want = if faults.bits_per_sec > 0 { 512 } else { buf.len() };
        let n = match from.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        let chunk = buf[..n].to_vec();
        {
            let mut counts = lock(&s.counts);
            let mut cur = lock(current);
            if up {
                if let Some(kind) = request_kind(&chunk) {
                    *lock(fate) = Some(roll_fate(s));
                    counts.exchanges.push(Exchange {
                        kind,
                        up: 0,
                        down: 0,
                        connection,
                    });
                    *cur = Some(counts.exchanges.len() - 1);
                }
            }
            if let Some(e) = cur.and_then(|i| counts.exchanges.get_mut(i)) {
                if up {
                    e.up += n as u64;
                } else {
                    e.down += n as u64;
                }
            }
        }
        let delay = faults.latency + faults.jitter.mul_f64(s.roll());
        last_due = last_due.max(Instant::now() + delay);
        if tx.send((last_due, chunk)).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.join();
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Bytes of TCP/IP headers an exchange costs on the wire, estimated (no
/// packet capture here): 52 bytes a segment (IPv4 20 + TCP 20 + the
/// timestamp option 12), one segment per 1448-byte MSS of data each way
/// plus one ACK each way; a new connection adds its handshake (3) and
/// teardown (4).
pub const SEGMENT_OVERHEAD: u64 = 52;
pub const MSS: u64 = 1448;
pub const CONNECTION_SEGMENTS: u64 = 7;

pub fn tcp_overhead(up: u64, down: u64, new_connections: u64) -> u64 {
    let data = up.div_ceil(MSS) + down.div_ceil(MSS) + 2;
    (data + new_connections * CONNECTION_SEGMENTS) * SEGMENT_OVERHEAD
}
