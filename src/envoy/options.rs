//! Tuning knobs for one group's Envoy. The defaults fit a small robot (see
//! `notes/envoy-spire.md`, "Memory on small devices").

/// How one Envoy is run and sized. `Default` is what the agent uses.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyOptions {
    /// Worker threads (`--concurrency`). A robot's proxy carries little
    /// traffic and each worker costs threads and per-worker state: one.
    pub concurrency: u32,
    /// `--log-level`.
    pub log_level: String,
    /// Per-connection read/write buffer limit on listeners and clusters.
    /// Envoy's default is 1 MiB; 32 KiB is the common small-device value.
    /// Measured (tests/envoy_bench.rs): 50 app connections pushing to an
    /// upstream that stopped reading took Envoy to ~143 MiB RSS with 1 MiB
    /// and ~68 MiB (its idle size) with 32 KiB.
    pub buffer_limit_bytes: u32,
    /// The overload manager's heap budget: above 90 % Envoy returns free
    /// memory to the system, above 98 % it stops accepting requests.
    pub max_heap_bytes: u64,
    /// Downstream connection limit (also silences Envoy's startup warning).
    pub max_downstream_connections: u32,
    /// `--drain-time-s`: how long a removed listener drains (Envoy: 600 s).
    pub drain_time_s: u32,
    /// Active TCP health check interval for upstreams, seconds; 0 = no
    /// active checks (outlier detection only).
    pub health_check_interval_s: u32,
    /// How long Envoy waits for an SDS secret before starting without it.
    /// 0 = wait for ever, so `/ready` stays 503 until the SVID arrives and the
    /// agent reports the missing identity instead of starting tasks that
    /// cannot connect.
    pub sds_initial_fetch_timeout_s: u32,
    /// Connections one inbound listener holds at once (its own budget,
    /// apart from `max_downstream_connections`, which the apps' loopback
    /// listeners share): a network peer cannot starve the apps.
    pub inbound_max_connections: u32,
    /// Seconds a network peer has to finish its TLS handshake.
    pub inbound_handshake_timeout_s: u32,
    /// Seconds a pooled HTTP/1 upstream connection may stay unused: below
    /// common servers' keep-alive (Node.js, Apache: 5 s).
    pub http1_idle_timeout_s: u32,
    /// The same for HTTP/2 (gRPC) upstreams, which close with GOAWAY
    /// instead of racing a request, so a connection may be kept longer.
    pub http2_idle_timeout_s: u32,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            concurrency: 1,
            log_level: "warn".into(),
            buffer_limit_bytes: 32 * 1024,
            max_heap_bytes: 64 * 1024 * 1024,
            max_downstream_connections: 1024,
            drain_time_s: 30,
            health_check_interval_s: 10,
            sds_initial_fetch_timeout_s: 0,
            inbound_max_connections: 256,
            inbound_handshake_timeout_s: 10,
            http1_idle_timeout_s: 4,
            http2_idle_timeout_s: 300,
        }
    }
}
